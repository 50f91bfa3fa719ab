"""Property tests: every Tensor op's value against PyTorch and its gradient
against PyTorch and float64 central finite differences (issue 13, item 1).

Shapes are drawn (0-d, size-1 and, where the op allows, size-0 dims; rank up to
6 for elementwise and shape ops), inputs are float64 leaves or views of leaves
(transposed or broadcast, so an op sees non-compact inputs), and the loss is
sum(op(x) * w) with a random w, so every output element's adjoint differs.
"""
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import needle as ndl
from property_strategies import shapes

EPS = 1e-6


def draw_values(data, shape, kind="n"):
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    if kind == "pos":
        x = np.abs(x) + 0.5
    elif kind == "nz":  # away from kinks and zero denominators
        x = np.sign(x + 1e-300) * (np.abs(x) + 0.25)
    elif kind == "distinct":  # no ties for max
        x = rng.permutation(np.arange(x.size, dtype=np.float64)).reshape(shape) * 0.37
    return np.array(x, dtype=np.float64)


def leaf(data, x):
    """A needle tensor equal to x, maybe through a transposed view of a leaf: the
    leaf (for gradients), the tensor used, and whether the leaf is transposed."""
    if x.ndim >= 2 and data.draw(st.booleans()):
        perm = tuple(range(x.ndim - 2)) + (x.ndim - 1, x.ndim - 2)
        t = ndl.Tensor(np.ascontiguousarray(np.transpose(x, perm)), dtype="float64")
        return t, ndl.ops.transpose(t), True
    t = ndl.Tensor(x, dtype="float64")
    return t, t, False


def check_op(data, nf, tf, xs, fd=True, rtol=1e-6, atol=1e-7):
    """nf on needle tensors, tf on torch tensors, inputs xs (float64 arrays)."""
    pairs = [leaf(data, x) for x in xs]
    leaves = [p[0] for p in pairs]
    out = nf(*[p[1] for p in pairs])
    tx = [torch.tensor(x, requires_grad=True) for x in xs]
    tout = tf(*tx)
    np.testing.assert_allclose(out.numpy(), tout.detach().numpy(), rtol=rtol, atol=atol)
    w = draw_values(data, tuple(out.shape))
    (out * ndl.Tensor(w, dtype="float64")).sum().backward()
    (tout * torch.tensor(w)).sum().backward()
    for i, (lf, t) in enumerate(zip(leaves, tx)):
        g = lf.grad.numpy()
        if pairs[i][2]:  # a transposed leaf: its gradient transposed back
            g = np.swapaxes(g, -1, -2)
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=rtol, atol=atol)
        if fd:
            np.testing.assert_allclose(g, finite_diff(nf, xs, i, w), rtol=1e-5, atol=1e-6)


def finite_diff(nf, xs, i, w):
    def loss(xi):
        args = [ndl.Tensor(x, dtype="float64", requires_grad=False) for x in xs]
        args[i] = ndl.Tensor(xi, dtype="float64", requires_grad=False)
        return float(np.sum(nf(*args).numpy() * w))
    x = xs[i].copy()
    g = np.zeros_like(x)
    for k in np.ndindex(x.shape):
        old = x[k]
        x[k] = old + EPS
        up = loss(x)
        x[k] = old - EPS
        down = loss(x)
        x[k] = old
        g[k] = (up - down) / (2 * EPS)
    return g


SMALL = dict(max_rank=4, max_dim=3)

UNARY = {
    "negate": (ndl.ops.negate, torch.neg, "n"),
    "exp": (ndl.ops.exp, torch.exp, "n"),
    "log": (ndl.ops.log, torch.log, "pos"),
    "tanh": (ndl.ops.tanh, torch.tanh, "n"),
    "sigmoid": (ndl.ops.sigmoid, torch.sigmoid, "n"),
    "relu": (ndl.ops.relu, torch.relu, "nz"),
    "sin": (ndl.ops.sin, torch.sin, "n"),
    "cos": (ndl.ops.cos, torch.cos, "n"),
}


@pytest.mark.parametrize("name", sorted(UNARY))
@given(data=st.data())
def test_unary_gradients(name, data):
    nf, tf, kind = UNARY[name]
    shape = data.draw(shapes(**SMALL))
    check_op(data, nf, tf, [draw_values(data, shape, kind)])


BINARY = {
    "add": (ndl.ops.add, torch.add, "n", "n"),
    "multiply": (ndl.ops.multiply, torch.mul, "n", "n"),
    "divide": (ndl.ops.divide, torch.div, "n", "nz"),
    "power": (ndl.ops.power, torch.pow, "pos", "n"),
}


@st.composite
def broadcast_pair(draw):
    out = draw(shapes(**SMALL))
    b = tuple(1 if draw(st.integers(0, 2)) == 0 else d for d in out)
    b = b[draw(st.integers(0, len(b))):]
    return (out, b) if draw(st.booleans()) else (b, out)


@pytest.mark.parametrize("name", sorted(BINARY))
@given(data=st.data())
def test_binary_gradients_with_broadcasting(name, data):
    nf, tf, ka, kb = BINARY[name]
    sa, sb = data.draw(broadcast_pair())
    check_op(data, nf, tf, [draw_values(data, sa, ka), draw_values(data, sb, kb)])


@pytest.mark.parametrize("name", ["add_scalar", "mul_scalar", "divide_scalar", "power_scalar"])
@given(data=st.data(), c=st.sampled_from([2.0, -1.5, 0.5, 3.0]))
def test_scalar_gradients(name, data, c):
    tf = {"add_scalar": lambda a: a + c, "mul_scalar": lambda a: a * c,
          "divide_scalar": lambda a: a / c, "power_scalar": lambda a: a ** c}[name]
    shape = data.draw(shapes(**SMALL))
    kind = "pos" if name == "power_scalar" else "n"
    check_op(data, lambda a: getattr(ndl.ops, name)(a, c), tf, [draw_values(data, shape, kind)])


@st.composite
def axes_of(draw, ndim, allow_none=True):
    if ndim == 0 or (allow_none and draw(st.integers(0, 3)) == 0):
        return None
    return tuple(sorted(draw(st.sets(st.integers(0, ndim - 1), min_size=1, max_size=ndim))))


@pytest.mark.parametrize("name", ["summation", "max", "logsumexp"])
@given(data=st.data())
def test_reduction_gradients(name, data):
    shape = data.draw(shapes(min_dim=1, **SMALL))
    axes = data.draw(axes_of(len(shape)))
    dims = tuple(range(len(shape))) if axes is None else axes
    if name == "summation":
        tf = lambda a: torch.sum(a, dim=dims) if dims else a  # noqa: E731
    elif name == "max":
        tf = lambda a: torch.amax(a, dim=dims) if dims else a  # noqa: E731
    else:
        tf = lambda a: torch.logsumexp(a, dim=dims) if dims else a  # noqa: E731
    kind = "distinct" if name == "max" else "n"
    check_op(data, lambda a: getattr(ndl.ops, name)(a, axes), tf, [draw_values(data, shape, kind)])


@given(data=st.data())
def test_logsoftmax_gradient(data):
    shape = (data.draw(st.integers(1, 4)), data.draw(st.integers(1, 5)))
    check_op(data, ndl.ops.logsoftmax, lambda a: torch.log_softmax(a, 1),
             [draw_values(data, shape)])


@given(data=st.data())
def test_shape_op_gradients(data):
    shape = data.draw(shapes(max_rank=6, max_dim=3))
    x = draw_values(data, shape)
    kind = data.draw(st.sampled_from(["reshape", "permute", "transpose", "broadcast_to",
                                      "flip"]))
    nd_ = len(shape)
    if kind == "reshape":
        new = (-1,) if data.draw(st.booleans()) else (int(np.prod(shape)),)
        nf, tf = (lambda a: ndl.ops.reshape(a, new)), (lambda a: a.reshape(new))
    elif kind == "permute":
        axes = tuple(data.draw(st.permutations(range(nd_))))
        nf, tf = (lambda a: ndl.ops.permute(a, axes)), (lambda a: a.permute(axes))
    elif kind == "transpose" and nd_ >= 2:
        i, j = data.draw(st.permutations(range(nd_)))[:2]
        nf, tf = (lambda a: ndl.ops.transpose(a, (i, j))), (lambda a: a.transpose(i, j))
    elif kind == "broadcast_to":
        lead = tuple(data.draw(st.lists(st.integers(1, 2), max_size=6 - nd_)))
        new = lead + tuple(data.draw(st.integers(1, 3)) if d == 1 else d for d in shape)
        nf, tf = (lambda a: ndl.ops.broadcast_to(a, new)), (lambda a: a.broadcast_to(new))
    else:
        axes = data.draw(axes_of(nd_, allow_none=False)) or ()
        nf, tf = (lambda a: ndl.ops.flip(a, axes)), (lambda a: torch.flip(a, axes))
    check_op(data, nf, tf, [x], fd=int(np.prod(shape)) <= 64)


@given(data=st.data())
def test_dilate_undilate_gradients(data):
    shape = data.draw(shapes(min_rank=1, max_rank=3, max_dim=3))
    axes = data.draw(axes_of(len(shape), allow_none=False))
    d = data.draw(st.integers(0, 2))
    x = draw_values(data, shape)

    def t_dilate(a):
        new = list(a.shape)
        for ax in axes:
            new[ax] *= d + 1
        out = a.new_zeros(new)
        idx = tuple(slice(None, None, d + 1) if k in axes else slice(None)
                    for k in range(a.ndim))
        out[idx] = a
        return out
    check_op(data, lambda a: ndl.ops.dilate(a, axes, d), t_dilate, [x])
    y = draw_values(data, tuple(n * (d + 1) if k in axes else n for k, n in enumerate(shape)))
    idx = tuple(slice(None, None, d + 1) if k in axes else slice(None) for k in range(len(shape)))
    check_op(data, lambda a: ndl.ops.undilate(a, axes, d), lambda a: a[idx], [y])


@given(data=st.data())
def test_matmul_gradients(data):
    m, n, p = (data.draw(st.integers(1, 4)) for _ in range(3))
    batch = data.draw(shapes(max_rank=2, min_dim=1, max_dim=2))
    ba = tuple(d if data.draw(st.booleans()) else 1 for d in batch)
    bb = batch[data.draw(st.integers(0, len(batch))):]
    xs = [draw_values(data, ba + (m, n)), draw_values(data, bb + (n, p))]
    check_op(data, ndl.ops.matmul, torch.matmul, xs)


@given(data=st.data())
def test_conv_gradients(data):
    n, h, c, co = (data.draw(st.integers(1, 3)) for _ in range(4))
    h = data.draw(st.integers(1, 5))
    k = data.draw(st.integers(1, 3))
    stride, padding = data.draw(st.integers(1, 6)), data.draw(st.integers(0, 3))
    if h + 2 * padding < k:
        padding = k
    xs = [draw_values(data, (n, h, h, c)), draw_values(data, (k, k, c, co))]

    def tf(a, b):
        y = torch.nn.functional.conv2d(a.permute(0, 3, 1, 2).contiguous(),
                                       b.permute(3, 2, 0, 1).contiguous(),
                                       stride=stride, padding=padding)
        return y.permute(0, 2, 3, 1)
    check_op(data, lambda a, b: ndl.ops.conv(a, b, stride=stride, padding=padding), tf, xs,
             fd=n * h * h * c <= 48)


@given(data=st.data())
def test_stack_split_gradients(data):
    shape = data.draw(shapes(max_rank=3, min_dim=1, max_dim=3))
    count = data.draw(st.integers(1, 3))
    axis = data.draw(st.integers(0, len(shape)))
    xs = [draw_values(data, shape) for _ in range(count)]
    check_op(data, lambda *a: ndl.ops.stack(list(a), axis), lambda *a: torch.stack(a, axis), xs)
    y = draw_values(data, shape[:axis] + (count,) + shape[axis:])

    def nf(a):
        parts = ndl.ops.split(a, axis)
        return ndl.ops.stack([parts[i] * float(i + 1) for i in range(count)], 0)

    def tf(a):
        return torch.stack([t * float(i + 1) for i, t in enumerate(torch.unbind(a, axis))], 0)
    check_op(data, nf, tf, [y])


@given(data=st.data())
def test_fused_add_scalars_gradient(data):
    shape = data.draw(shapes(**SMALL))
    a, b = data.draw(st.sampled_from([(1.5, -2.0), (0.0, 3.0)]))

    def nf(x):
        t = ndl.ops.fused_add_scalars(x, a, b)
        return t[0] * t[1]
    check_op(data, nf, lambda x: (x + a) * (x + b), [draw_values(data, shape)])


@given(data=st.data())
def test_lstm_gates_gradient(data):
    bs, hid = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))

    def nf(z, c):
        h, c2 = ndl.ops.lstm_gates(z, c)
        return h * 2.0 + c2

    def tf(z, c):
        i, f, g, o = torch.split(z, hid, dim=1)
        c2 = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c2) * 2.0 + c2
    check_op(data, nf, tf, [draw_values(data, (bs, 4 * hid)), draw_values(data, (bs, hid))])
