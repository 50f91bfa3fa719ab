"""The autograd engine (API.md 3; section 10 items 7-9, 15-17; DESIGN 3):
graph structure of the operator overloads, topological order, gradient
accumulation, higher-order gradients, no-graph modes, Tensor construction and
data sharing, LAZY_MODE, Python-defined ops, identity semantics.
"""
import numpy as np
import pytest
import torch

import needle as ndl
import needle.autograd as ag
import needle.backend_ndarray as nd
from needle import ops

from autograd_cases import t_dilate


def T(x, dtype="float64", requires_grad=True, **kw):
    return ndl.Tensor(np.asarray(x, dtype=np.float64), dtype=dtype,
                      requires_grad=requires_grad, **kw)


def R(*shape, dtype="float64", requires_grad=True, device=None):
    return T(np.random.randn(*shape), dtype=dtype, requires_grad=requires_grad, device=device)


def shares_memory(a, b):
    """Two NDArrays (or numpy arrays) view the same buffer."""
    if a is b:
        return True
    if isinstance(a, np.ndarray):
        return np.shares_memory(a, b)
    return a._handle.ptr() == b._handle.ptr()


def ref_topo(node_list):
    """The course's recursive definition (API 3.7)."""
    visited, order = set(), []

    def visit(n):
        if id(n) in visited:
            return
        visited.add(id(n))
        for i in n.inputs:
            visit(i)
        order.append(n)

    for n in node_list:
        visit(n)
    return order


def ids(nodes):
    return [id(n) for n in nodes]


# --------------------------------------------------------------------------
# node structure of the operator overloads (3.5, item 10.7)
# --------------------------------------------------------------------------

def test_subtraction_is_add_of_negate():
    a, b = R(2, 3), R(2, 3)
    c = a - b
    assert isinstance(c.op, ops.EWiseAdd)
    assert len(c.inputs) == 2 and c.inputs[0] is a
    n = c.inputs[1]
    assert isinstance(n.op, ops.Negate) and len(n.inputs) == 1 and n.inputs[0] is b
    assert ids(ag.find_topo_sort([c])) == ids([a, b, n, c])


def test_scalar_times_tensor_is_one_node():
    x = R(3)
    y = 3 * x
    assert isinstance(y.op, ops.MulScalar) and y.op.scalar == 3
    assert len(y.inputs) == 1 and y.inputs[0] is x
    assert ids(ag.find_topo_sort([y])) == ids([x, y])


# expression -> (op class, {attr: value}, which inputs (by name) in order)
STRUCTURE = [
    ("a + b", lambda a, b: a + b, ops.EWiseAdd, {}, "ab"),
    ("a + 2.0", lambda a, b: a + 2.0, ops.AddScalar, {"scalar": 2.0}, "a"),
    ("2.0 + a", lambda a, b: 2.0 + a, ops.AddScalar, {"scalar": 2.0}, "a"),
    ("a - 2.0", lambda a, b: a - 2.0, ops.AddScalar, {"scalar": -2.0}, "a"),
    ("a * b", lambda a, b: a * b, ops.EWiseMul, {}, "ab"),
    ("a * 3", lambda a, b: a * 3, ops.MulScalar, {"scalar": 3}, "a"),
    ("0.5 * a", lambda a, b: 0.5 * a, ops.MulScalar, {"scalar": 0.5}, "a"),
    ("a ** b", lambda a, b: a ** b, ops.EWisePow, {}, "ab"),
    ("a ** 2", lambda a, b: a ** 2, ops.PowerScalar, {"scalar": 2}, "a"),
    ("a / b", lambda a, b: a / b, ops.EWiseDiv, {}, "ab"),
    ("a / 2", lambda a, b: a / 2, ops.DivScalar, {"scalar": 2}, "a"),
    ("a @ b", lambda a, b: a @ b, ops.MatMul, {}, "ab"),
    ("a.matmul(b)", lambda a, b: a.matmul(b), ops.MatMul, {}, "ab"),
    ("-a", lambda a, b: -a, ops.Negate, {}, "a"),
    ("a.sum()", lambda a, b: a.sum(), ops.Summation, {"axes": None}, "a"),
    ("a.sum(axes=(0,))", lambda a, b: a.sum(axes=(0,)), ops.Summation, {"axes": (0,)}, "a"),
    ("a.broadcast_to", lambda a, b: a.broadcast_to((2, 3, 3)), ops.BroadcastTo,
     {"shape": (2, 3, 3)}, "a"),
    ("a.reshape", lambda a, b: a.reshape((9,)), ops.Reshape, {"shape": (9,)}, "a"),
    ("a.transpose()", lambda a, b: a.transpose(), ops.Transpose, {"axes": None}, "a"),
    ("a.transpose((0,1))", lambda a, b: a.transpose((0, 1)), ops.Transpose, {"axes": (0, 1)},
     "a"),
]


@pytest.mark.parametrize("name, f, cls, attrs, which", STRUCTURE, ids=[s[0] for s in STRUCTURE])
def test_operator_node_structure(name, f, cls, attrs, which):
    a, b = T(np.random.rand(3, 3) + 0.5), T(np.random.rand(3, 3) + 0.5)
    y = f(a, b)
    assert type(y) is ndl.Tensor
    assert isinstance(y.op, cls), type(y.op)
    for k, v in attrs.items():
        assert getattr(y.op, k) == v, (k, getattr(y.op, k))
    want = [{"a": a, "b": b}[c] for c in which]
    assert len(y.inputs) == len(want)
    assert all(i is w for i, w in zip(y.inputs, want))
    assert not y.is_leaf() and y.requires_grad


def test_sum_positional_axes():
    a = R(3, 4)
    y = a.sum(1)
    assert isinstance(y.op, ops.Summation) and y.op.axes in (1, (1,))
    np.testing.assert_allclose(y.numpy(), a.numpy().sum(1))


def test_reflected_operators_values():
    a = T(np.random.rand(2, 3) + 0.5)
    x = a.numpy()
    np.testing.assert_allclose((1.5 - a).numpy(), 1.5 - x)
    np.testing.assert_allclose((1.5 / a).numpy(), 1.5 / x)
    np.testing.assert_allclose((1.5 * a).numpy(), 1.5 * x)
    np.testing.assert_allclose((1.5 + a).numpy(), 1.5 + x)
    ((1.5 - a) * (1.5 / a)).sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), -(1.5 / x) - (1.5 - x) * 1.5 / x ** 2)


# --------------------------------------------------------------------------
# topological sort (3.7, item 10.8)
# --------------------------------------------------------------------------

def test_topo_sort_course_example_explicit_order():
    a1, b1 = T([[0.88282157]]), T([[0.90170084]])
    c1 = 3 * a1 * a1 + 4 * b1 * a1 - a1
    order = ag.find_topo_sort([c1])
    # hand-derived: a1, 3a1, 3a1*a1, b1, 4b1, 4b1*a1, sum, -a1, c1
    n7 = c1
    n5, n6 = n7.inputs
    n2, n4 = n5.inputs
    n1 = n2.inputs[0]
    n3 = n4.inputs[0]
    assert ids(order) == ids([a1, n1, n2, b1, n3, n4, n5, n6, n7])
    assert ids(order) == ids(ref_topo([c1]))


def _graphs():
    out = {}
    a, b, c = R(2, 3), R(2, 3), R(3, 2)
    h = a * b
    out["shared_subexpression"] = [(h + h.exp()) * h - a]
    out["diamond"] = [((a + b) * (a - b)).sum()]
    y1 = (a @ c).exp().sum((1,))
    y2 = ((a @ c) * 2.0).sum()
    out["two_outputs_shared_leaves"] = [y1, y2]
    out["intermediate_first"] = [h, (h + h.exp()) * h - a]
    k = T(np.ones((2, 3)), requires_grad=False)
    out["constants"] = [((a * k + k) / (b * b + 1.0)).sum()]
    x = R(4, 5)
    z = x @ R(5, 3) + R(3).broadcast_to((4, 3))
    out["softmax_loss"] = [(ndl.logsumexp(z, (1,)) - z.sum((1,))).sum()]
    s = ndl.stack([a, b, a * b], 1)
    parts = ndl.split(s, 1)
    out["tuples"] = [parts[0] * parts[2] + parts[1]]
    out["same_node_twice"] = [h, h]
    out["leaf_only"] = [a]
    t = a
    for i in range(30):
        t = t * b + a if i % 2 else t + t
    out["deep_reuse"] = [t.sum()]
    return out


GRAPH_NAMES = ["constants", "deep_reuse", "diamond", "intermediate_first", "leaf_only",
               "same_node_twice", "shared_subexpression", "softmax_loss", "tuples",
               "two_outputs_shared_leaves"]


def test_graph_names_complete():
    assert sorted(_graphs()) == GRAPH_NAMES


@pytest.mark.parametrize("name", GRAPH_NAMES)
def test_find_topo_sort_matches_recursive_definition(name):
    roots = _graphs()[name]
    order = ag.find_topo_sort(roots)
    assert isinstance(order, list)
    ref = ref_topo(roots)
    assert ids(order) == ids(ref)
    assert len(set(ids(order))) == len(order)


@pytest.mark.parametrize("name", GRAPH_NAMES)
def test_topo_sort_dfs_matches_recursive_definition(name):
    roots = _graphs()[name]
    visited, order = set(), []
    for r in roots:
        ag.topo_sort_dfs(r, visited, order)
    assert ids(order) == ids(ref_topo(roots))


# --------------------------------------------------------------------------
# reverse mode (3.7)
# --------------------------------------------------------------------------

def test_compute_gradient_of_variables_direct_call():
    xn, wn = np.random.randn(3, 4), np.random.randn(4, 2)
    gn = np.random.randn(3, 2)
    x, w = T(xn), T(wn)
    y = (x @ w).exp() * 0.5
    ag.compute_gradient_of_variables(y, T(gn, requires_grad=False))
    xt = torch.tensor(xn, requires_grad=True)
    wt = torch.tensor(wn, requires_grad=True)
    ((xt @ wt).exp() * 0.5).backward(torch.tensor(gn))
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-12)
    np.testing.assert_allclose(w.grad.numpy(), wt.grad.numpy(), rtol=1e-12)


def test_every_node_requiring_grad_gets_grad():
    x, w = R(3, 4), R(4, 2)
    k = R(3, 2, requires_grad=False)
    h = x @ w
    e = h.exp()
    y = (e * k).sum()
    y.backward()
    kn, hn = k.numpy(), h.numpy()
    np.testing.assert_allclose(e.grad.numpy(), kn)
    np.testing.assert_allclose(h.grad.numpy(), kn * np.exp(hn))
    np.testing.assert_allclose(y.grad.numpy(), 1.0)
    assert y.grad.shape == ()
    for n in ag.find_topo_sort([y]):
        if n.requires_grad:
            assert n.grad is not None and n.grad.shape == n.shape


def test_sum_node_list_is_left_fold():
    a, b, c = R(3), R(3), R(3)
    r = ag.sum_node_list([a, b, c])
    assert isinstance(r.op, ops.EWiseAdd)
    assert r.inputs[1] is c
    inner = r.inputs[0]
    assert isinstance(inner.op, ops.EWiseAdd)
    assert inner.inputs[0] is a and inner.inputs[1] is b
    np.testing.assert_allclose(r.numpy(), a.numpy() + b.numpy() + c.numpy())
    assert ag.sum_node_list([a]) is a


def test_partials_are_summed_with_add(device):
    x = R(3, device=device)
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy())
    assert isinstance(x.grad.op, ops.EWiseAdd)


def test_grad_is_overwritten_not_accumulated(device):
    x = R(4, device=device)
    y = (x * x).sum()
    y.backward()
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy())
    (x * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.full(4, 3.0))


def test_grad_is_none_before_backward():
    x = R(2)
    assert x.grad is None
    assert (x * 2.0).grad is None


@pytest.mark.parametrize("shape", [(), (1,), (2, 3)])
def test_backward_default_seed_is_ones(shape, device):
    x = R(*shape, device=device)
    y = x * 2.5
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), np.full(shape, 2.5))
    x.backward()  # a leaf is its own output
    np.testing.assert_allclose(x.grad.numpy(), np.ones(shape))


def test_backward_seed_dtype_follows_tensor(device):
    x = R(2, 2, dtype="float32", device=device)
    (x * 2.0).backward()
    assert x.grad.dtype == "float32"
    y = R(2, 2, dtype="float64", device=device)
    (y * 2.0).backward()
    assert y.grad.dtype == "float64"


# --------------------------------------------------------------------------
# higher-order gradients (item 10.9)
# --------------------------------------------------------------------------

POS = "pos"
SECOND = [
    # name, f, first derivative, second derivative (of sum(first)), input kind
    ("cube", lambda x: (x ** 3).sum(), lambda x: 3 * x ** 2, lambda x: 6 * x, None),
    ("x_exp_x", lambda x: (ndl.exp(x) * x).sum(), lambda x: np.exp(x) * (1 + x),
     lambda x: np.exp(x) * (2 + x), None),
    ("tanh", lambda x: ndl.tanh(x).sum(), lambda x: 1 - np.tanh(x) ** 2,
     lambda x: -2 * np.tanh(x) * (1 - np.tanh(x) ** 2), None),
    ("log", lambda x: ndl.log(x).sum(), lambda x: 1 / x, lambda x: -1 / x ** 2, POS),
    ("reciprocal", lambda x: ndl.power_scalar(x, -1).sum(), lambda x: -x ** -2.0,
     lambda x: 2 * x ** -3.0, POS),
    ("divide", lambda x: (1.0 / x).sum(), lambda x: -x ** -2.0, lambda x: 2 * x ** -3.0, POS),
    ("sqrt", lambda x: (x ** 0.5).sum(), lambda x: 0.5 * x ** -0.5, lambda x: -0.25 * x ** -1.5,
     POS),
    ("ewise_pow", lambda x: (x ** x).sum(), lambda x: x ** x * (np.log(x) + 1),
     lambda x: x ** x * ((np.log(x) + 1) ** 2 + 1 / x), POS),
    ("sum_of_squares_mean", lambda x: (x * x).sum() / 3.0, lambda x: 2 * x / 3.0,
     lambda x: np.full(x.shape, 2 / 3.0), None),
]


@pytest.mark.parametrize("name, f, d1, d2, kind", SECOND, ids=[s[0] for s in SECOND])
def test_second_derivative_analytic(name, f, d1, d2, kind, device):
    xn = np.random.rand(5) + 0.5 if kind == POS else np.random.randn(5)
    x = T(xn, device=device)
    f(x).backward()
    g = x.grad
    assert g.requires_grad and not g.is_leaf()
    np.testing.assert_allclose(g.numpy(), d1(xn), rtol=1e-10)
    g.backward()
    np.testing.assert_allclose(x.grad.numpy(), d2(xn), rtol=1e-10, atol=1e-12)


def test_third_derivative(device):
    xn = np.random.randn(4)
    x = T(xn, device=device)
    (x ** 4).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 4 * xn ** 3, rtol=1e-12)
    x.grad.backward()
    np.testing.assert_allclose(x.grad.numpy(), 12 * xn ** 2, rtol=1e-12)
    x.grad.backward()
    np.testing.assert_allclose(x.grad.numpy(), 24 * xn, rtol=1e-12)


def test_mixed_second_derivative_two_variables(device):
    xn, wn = np.random.randn(3), np.random.randn(3)
    x, w = T(xn, device=device), T(wn, device=device)
    (x * x * w).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * xn * wn)
    np.testing.assert_allclose(w.grad.numpy(), xn * xn)
    x.grad.backward()  # d/dx, d/dw of sum(2 x w)
    np.testing.assert_allclose(x.grad.numpy(), 2 * wn)
    np.testing.assert_allclose(w.grad.numpy(), 2 * xn)


def test_logsumexp_hessian_vector_product(device):
    zn = np.random.randn(6)
    vn = np.random.randn(6)
    z = T(zn, device=device)
    ndl.logsumexp(z).backward()
    s = np.exp(zn - zn.max())
    s /= s.sum()
    np.testing.assert_allclose(z.grad.numpy(), s, rtol=1e-12)
    z.grad.backward(T(vn, requires_grad=False, device=device))
    np.testing.assert_allclose(z.grad.numpy(), s * vn - s * (s @ vn), rtol=1e-9, atol=1e-12)


# compound expressions: second derivative vs PyTorch double backward
DOUBLE = [
    ("mlp", lambda x, w, tl: (tl.tanh(x @ w) ** 2).sum(), [(3, 4), (4, 2)]),
    ("softmax_ce", lambda x, w, tl: (tl.lse(x @ w) - (x @ w).sum((1,)) * 0.3).sum(),
     [(3, 4), (4, 5)]),
    ("logsoftmax", lambda x, w, tl: (tl.logsoftmax(x @ w) * (x @ w)).sum(), [(3, 4), (4, 5)]),
    ("broadcast_div", lambda x, w, tl: (x * x / (tl.bcast(w * w, (3, 4)) * (w * w).sum()
                                                 + 1.0)).sum(),
     [(3, 4), (1, 4)]),
    ("matmul_batched", lambda x, w, tl: ((x @ w) * (x @ w)).sum(), [(2, 3, 4), (4, 2)]),
    ("stack_split", lambda x, w, tl: _stack_split(x @ w, tl), [(3, 4), (4, 2)]),
    ("shape_ops", lambda x, w, tl: _shape_ops(x @ w, tl), [(3, 4), (4, 2)]),
]


def _stack_split(h, tl):
    s = tl.stack([tl.tanh(h), h * h], 0)
    parts = tl.split(s * s, 0)
    return (parts[0] * parts[1]).sum()


def _shape_ops(h, tl):
    r = tl.reshape(tl.transpose(h), (6,))
    b = tl.bcast(r, (2, 6))
    d = tl.dilate(h, 1)
    return (tl.flip(b) * b * b).sum() + (d * d * d).sum() / 3.0


class _N:
    tanh = staticmethod(ndl.tanh)
    lse = staticmethod(lambda z: ndl.logsumexp(z, (1,)))
    logsoftmax = staticmethod(ndl.logsoftmax)
    bcast = staticmethod(ndl.broadcast_to)
    stack = staticmethod(ndl.stack)
    split = staticmethod(ndl.split)
    transpose = staticmethod(ndl.transpose)
    reshape = staticmethod(ndl.reshape)
    flip = staticmethod(lambda t: ndl.flip(t, (1,)))
    dilate = staticmethod(lambda t, d: ndl.dilate(t, (0,), d))


class _T:
    tanh = staticmethod(torch.tanh)
    lse = staticmethod(lambda z: torch.logsumexp(z, 1))
    logsoftmax = staticmethod(lambda z: torch.log_softmax(z, 1))
    bcast = staticmethod(lambda t, s: t.expand(*s))
    stack = staticmethod(torch.stack)
    split = staticmethod(torch.unbind)
    transpose = staticmethod(lambda t: t.transpose(-1, -2))
    reshape = staticmethod(torch.reshape)
    flip = staticmethod(lambda t: torch.flip(t, (1,)))
    dilate = staticmethod(lambda t, d: t_dilate(t, (0,), d))


@pytest.mark.parametrize("name, f, shapes", DOUBLE, ids=[d[0] for d in DOUBLE])
def test_second_derivative_vs_torch(name, f, shapes, device):
    xn, wn = [np.random.randn(*s) for s in shapes]
    x, w = T(xn, device=device), T(wn, device=device)
    f(x, w, _N).backward()
    gx = x.grad
    gx.backward()
    xt = torch.tensor(xn, requires_grad=True)
    wt = torch.tensor(wn, requires_grad=True)
    (gxt,) = torch.autograd.grad(f(xt, wt, _T), xt, create_graph=True)
    np.testing.assert_allclose(gx.numpy(), gxt.detach().numpy(), rtol=1e-10, atol=1e-12)
    hx, hw = torch.autograd.grad(gxt.sum(), (xt, wt), allow_unused=True)
    np.testing.assert_allclose(x.grad.numpy(), hx.numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(w.grad.numpy(), hw.numpy(), rtol=1e-9, atol=1e-12)


# --------------------------------------------------------------------------
# no-graph modes: backward(create_graph=False), no_grad()
# --------------------------------------------------------------------------

@pytest.mark.parametrize("call", ["kw", "positional"])
def test_backward_without_graph(call, device):
    xn, wn = np.random.randn(3, 4), np.random.randn(4, 2)
    x, w = T(xn, device=device), T(wn, device=device)
    h = x @ w
    y = (h.exp() * h).sum()
    if call == "kw":
        y.backward(create_graph=False)
    else:
        y.backward(None, False)
    x2, w2 = T(xn, device=device), T(wn, device=device)
    h2 = x2 @ w2
    (h2.exp() * h2).sum().backward()
    for t, ref in [(x, x2), (w, w2)]:
        np.testing.assert_allclose(t.grad.numpy(), ref.grad.numpy(), rtol=1e-14)
        assert t.grad.is_leaf() and t.grad.op is None
        assert t.grad.requires_grad is False
        assert t.grad.dtype == "float64"
    # the no-graph backward keeps .grad on leaves only (as PyTorch does): the
    # intermediate h has its gradient in the graph-recording run alone
    assert h.grad is None and y.grad is None
    assert h2.grad is not None


def test_backward_without_graph_with_seed(device):
    x = R(3, device=device)
    g = R(3, requires_grad=False, device=device)
    (x * x).backward(g, create_graph=False)
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy() * g.numpy())
    assert x.grad.is_leaf() and not x.grad.requires_grad


def test_no_grad_records_nothing(device):
    x, w = R(3, 4, device=device), R(4, 2, device=device)
    with ndl.no_grad():
        y = ndl.relu(x @ w) + 1.0
        z = y.sum()
    for t in (y, z):
        assert t.is_leaf() and t.op is None and t.requires_grad is False
    np.testing.assert_allclose(y.numpy(), np.maximum(x.numpy() @ w.numpy(), 0) + 1.0)
    after = x @ w
    assert not after.is_leaf() and after.requires_grad


def test_no_grad_nested_and_exception_restore():
    x = R(2)
    with ndl.no_grad():
        with ndl.no_grad():
            a = x * 2.0
        b = x * 2.0
    assert a.is_leaf() and b.is_leaf()
    assert not (x * 2.0).is_leaf()
    with pytest.raises(ZeroDivisionError):
        with ndl.no_grad():
            1 / 0
    c = x * 2.0
    assert not c.is_leaf() and c.requires_grad


def test_no_grad_is_local_to_its_thread():
    """Code outside the `with` block, here another thread, still records graphs."""
    import threading
    inside, release = threading.Event(), threading.Event()

    def worker():
        with ndl.no_grad():
            inside.set()
            release.wait(10)

    t = threading.Thread(target=worker)
    t.start()
    try:
        assert inside.wait(10)
        y = R(2) * 2.0
    finally:
        release.set()
        t.join()
    assert not y.is_leaf() and y.requires_grad


def test_backward_inside_no_grad_still_computes_gradients(device):
    x = R(3, device=device)
    y = (x * x).sum()
    with ndl.no_grad():
        y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * x.numpy())


def test_sgd_step_under_no_grad_keeps_parameter_a_leaf(device):
    w = R(4, 3, device=device)
    x = R(5, 4, requires_grad=False, device=device)
    w0 = w.numpy()
    (x @ w).sum().backward()
    with ndl.no_grad():
        w.data = w - w.grad * 0.1
    assert w.is_leaf() and w.requires_grad
    np.testing.assert_allclose(w.numpy(), w0 - 0.1 * x.numpy().sum(0)[:, None] * np.ones(3))


# --------------------------------------------------------------------------
# detach, data, requires_grad, construction and sharing (3.3, 3.4, 10.16-18)
# --------------------------------------------------------------------------

def test_detach_shares_data_and_is_a_leaf():
    x = R(2, 3)
    y = x * 2.0
    for src in (x, y):
        d = src.detach()
        assert d is not src and d.is_leaf() and d.op is None
        assert d.requires_grad is False
        assert shares_memory(d.realize_cached_data(), src.realize_cached_data())
        np.testing.assert_array_equal(d.numpy(), src.numpy())
    d = x.detach()
    d.realize_cached_data().flat[0] = 42.0  # in-place write through the shared array
    assert x.numpy()[0, 0] == 42.0


def test_data_getter_is_detached_view():
    x = R(2, 2)
    d = x.data
    assert d is not x and d.is_leaf() and not d.requires_grad
    assert shares_memory(d.realize_cached_data(), x.realize_cached_data())


def test_data_setter_keeps_object_and_replaces_array(device):
    x = R(2, 2, device=device)
    obj_id = id(x)
    new = R(2, 2, requires_grad=False, device=device)
    x.data = new
    assert id(x) == obj_id
    assert x.is_leaf() and x.requires_grad
    assert shares_memory(x.realize_cached_data(), new.realize_cached_data())
    np.testing.assert_array_equal(x.numpy(), new.numpy())
    # shape is not checked
    x.data = R(3, requires_grad=False, device=device)
    assert x.shape == (3,)


def test_data_setter_from_graph_result_adds_no_edge(device):
    x = R(2, 2, device=device)
    y = x * 3.0 + 1.0
    x.data = y
    assert x.op is None and len(x.inputs) == 0 and x.is_leaf()
    np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_data_setter_asserts_dtype():
    x = R(2, 2, dtype="float32")
    with pytest.raises(AssertionError):
        x.data = R(2, 2, dtype="float64")


def test_requires_grad_is_assignable(device):
    x = R(3, requires_grad=False, device=device)
    assert not (x * 2.0).requires_grad
    x.requires_grad = True
    assert x.requires_grad is True
    y = (x * 2.0).sum()
    assert y.requires_grad and not y.is_leaf()
    y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), np.full(3, 2.0))
    x.requires_grad = False
    assert (x * 2.0).is_leaf()


def test_results_of_constants_are_detached_leaves():
    a, b = R(2, requires_grad=False), R(2, requires_grad=False)
    for r in [a + b, a * 2.0, a.exp(), a.reshape((1, 2)) @ b.reshape((2, 1)), ndl.relu(a)]:
        assert r.is_leaf() and r.op is None and not r.requires_grad
    c = a + R(2)
    assert not c.is_leaf() and c.requires_grad


def test_tensor_defaults():
    t = ndl.Tensor([1.0, 2.0])
    assert t.requires_grad is True
    assert t.device == ndl.default_device() and t.device == ndl.cpu()
    assert t.dtype == "float32"
    assert t.shape == (2,) and isinstance(t.shape, tuple)
    assert t.is_leaf() and t.op is None and len(t.inputs) == 0
    assert t.grad is None
    assert isinstance(t.cached_data, ndl.NDArray)
    assert ndl.Tensor(np.float64(3.5)).shape == ()
    assert ndl.Tensor(np.random.randn(2, 2)).dtype == "float32"
    assert ndl.Tensor([1.0], foo=1, bar="x").shape == (1,)  # extra kwargs ignored


def test_tensor_of_tensor_shares_data():
    t = R(2, 3, dtype="float32")
    u = ndl.Tensor(t)
    assert u is not t and u.is_leaf() and u.requires_grad
    assert shares_memory(u.realize_cached_data(), t.realize_cached_data())
    v = ndl.Tensor(t, device=ndl.cpu(), dtype="float32")
    assert shares_memory(v.realize_cached_data(), t.realize_cached_data())
    u.realize_cached_data().flat[1] = -7.0
    assert t.numpy().flat[1] == -7.0


def test_tensor_of_tensor_with_other_dtype_copies(device):
    t = R(2, 3, dtype="float32", device=device)
    u = ndl.Tensor(t, dtype="float64")
    assert u.dtype == "float64"
    assert not shares_memory(u.realize_cached_data(), t.realize_cached_data())
    np.testing.assert_array_equal(u.numpy(), t.numpy().astype(np.float64))


def test_tensor_of_numpy_copies():
    x = np.random.randn(2, 3).astype(np.float32)
    t = ndl.Tensor(x)
    x[0, 0] = 100.0
    assert t.numpy()[0, 0] != 100.0


def test_tensor_of_ndarray_copies_and_keeps_device(device):
    for dev in (device, nd.cpu_numpy()):
        a = nd.array(np.arange(6.0).reshape(2, 3), device=dev)
        t = ndl.Tensor(a)
        assert t.device == dev
        assert not shares_memory(t.realize_cached_data(), a)
        a[0, 0] = 50.0
        assert t.numpy()[0, 0] == 0.0


def test_numpy_returns_a_copy(device):
    t = R(2, dtype="float32", device=device)
    before = t.numpy().copy()
    arr = t.numpy()
    arr[0] = 1e6
    np.testing.assert_array_equal(t.numpy(), before)


def test_make_const():
    arr = nd.array(np.ones((2, 2)))
    c = ndl.Tensor.make_const(arr)
    assert type(c) is ndl.Tensor and c.is_leaf() and c.requires_grad is False
    assert shares_memory(c.realize_cached_data(), arr)
    t = R(3)
    c2 = ndl.Tensor.make_const(t)
    assert c2 is not t and shares_memory(c2.realize_cached_data(), t.realize_cached_data())
    assert not c2.requires_grad
    c3 = ndl.Tensor.make_const(arr, requires_grad=True)
    assert c3.requires_grad is True


def test_make_from_op(device):
    a, b = R(2, 2, device=device), R(2, 2, device=device)
    n = ndl.Tensor.make_from_op(ops.EWiseMul(), [a, b])
    assert type(n) is ndl.Tensor and isinstance(n.op, ops.EWiseMul)
    assert [id(i) for i in n.inputs] == [id(a), id(b)]
    assert n.requires_grad and n.cached_data is not None
    np.testing.assert_allclose(n.numpy(), a.numpy() * b.numpy())
    c, d = R(2, requires_grad=False, device=device), R(2, requires_grad=False, device=device)
    m = ndl.Tensor.make_from_op(ops.EWiseAdd(), [c, d])
    assert m.is_leaf() and not m.requires_grad
    np.testing.assert_allclose(m.numpy(), c.numpy() + d.numpy())


def test_value_init_protocol():
    """Values may be built by __new__ followed by _init (3.3)."""
    a = R(2)
    v = ndl.Tensor.__new__(ndl.Tensor)
    v._init(ops.MulScalar(2.0), [a])
    assert v.requires_grad is True and v.num_outputs == 1
    np.testing.assert_allclose(v.realize_cached_data().numpy(), 2 * a.numpy())
    w = ndl.Tensor.__new__(ndl.Tensor)
    w._init(None, [], cached_data=a.realize_cached_data(), requires_grad=False)
    assert w.is_leaf() and not w.requires_grad


def test_realize_cached_data_returns_same_object():
    x = R(2, 2)
    y = x.exp()
    for t in (x, y):
        r1 = t.realize_cached_data()
        assert r1 is t.realize_cached_data() and r1 is t.cached_data
        assert isinstance(r1, ndl.NDArray)


# --------------------------------------------------------------------------
# LAZY_MODE (3.1, 3.3)
# --------------------------------------------------------------------------

@pytest.fixture
def lazy():
    old = ag.LAZY_MODE
    ag.LAZY_MODE = True
    try:
        yield
    finally:
        ag.LAZY_MODE = old


def test_lazy_mode_defers_computation(lazy):
    xn = np.random.randn(3)
    x = T(xn)
    h = x * 2.0
    y = h + 1.0
    assert y.cached_data is None and h.cached_data is None
    r = y.realize_cached_data()
    assert r is y.realize_cached_data()
    np.testing.assert_allclose(r.numpy(), 2 * xn + 1)
    assert h.cached_data is not None  # inputs were realized on the way


def test_lazy_mode_does_not_detach_constant_results(lazy):
    c = R(3, requires_grad=False)
    z = c + 1.0
    assert z.op is not None and not z.requires_grad and z.cached_data is None
    np.testing.assert_allclose(z.numpy(), c.numpy() + 1.0)


def test_lazy_mode_backward(lazy):
    xn = np.random.randn(4)
    x = T(xn)
    y = (x * x).sum()
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 2 * xn)


def test_lazy_mode_python_op_not_called_until_realized(lazy):
    calls = []

    class Twice(ag.TensorOp):
        def compute(self, a):
            calls.append(1)
            return a * 2.0

        def gradient(self, out_grad, node):
            return out_grad * 2.0

    x = R(2)
    y = Twice()(x)
    assert calls == []
    y.numpy()
    assert calls == [1]
    y.numpy()
    assert calls == [1]


def test_lazy_mode_flag_restored():
    assert ag.LAZY_MODE is False
    y = R(2) * 2.0
    assert y.cached_data is not None


# --------------------------------------------------------------------------
# ops defined in Python (3.2)
# --------------------------------------------------------------------------

class Cube(ag.TensorOp):
    def __init__(self, scale=1.0):
        self.scale = scale

    def compute(self, a):
        assert isinstance(a, ndl.NDArray), type(a)
        return a * a * a * self.scale

    def gradient(self, out_grad, node):
        (a,) = node.inputs
        return out_grad * a * a * (3.0 * self.scale)


class Hypot2(ag.TensorOp):
    """a² + b², gradient returned as a list."""

    def compute(self, a, b):
        return a * a + b * b

    def gradient(self, out_grad, node):
        a, b = node.inputs
        return [out_grad * a * 2.0, out_grad * b * 2.0]


class TanhPy(ag.TensorOp):
    """Uses array_api functions, and the node's own value in the gradient."""

    def compute(self, a):
        return ndl.array_api.tanh(a)

    def gradient(self, out_grad, node):
        y = ndl.Tensor.make_const(node.realize_cached_data())
        return out_grad * (-(y * y) + 1.0)


class SumDiff(ag.TensorTupleOp):
    def compute(self, a, b):
        return (a + b, a - b)

    def gradient(self, out_grad, node):
        g0, g1 = out_grad[0], out_grad[1]
        return g0 + g1, g0 - g1


def test_python_op_forward_backward_with_builtins(device):
    xn = np.random.randn(3, 2)
    x = T(xn, device=device)
    c = Cube(0.5)(ndl.exp(x))
    assert type(c) is ndl.Tensor and isinstance(c.op, Cube) and c.inputs[0].inputs[0] is x
    ones = T(np.ones((2, 1)), requires_grad=False, device=device)
    y = (c @ ones + x.sum((1,)).reshape((3, 1))).sum()
    y.backward()
    xt = torch.tensor(xn, requires_grad=True)
    yt = ((torch.exp(xt) ** 3 * 0.5) @ torch.ones(2, 1, dtype=torch.float64)
          + xt.sum(1).reshape(3, 1)).sum()
    yt.backward()
    np.testing.assert_allclose(y.numpy(), yt.item(), rtol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), xt.grad.numpy(), rtol=1e-12)


def test_python_op_second_derivative(device):
    xn = np.random.randn(4)
    x = T(xn, device=device)
    Cube()(x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 3 * xn ** 2, rtol=1e-12)
    x.grad.backward()
    np.testing.assert_allclose(x.grad.numpy(), 6 * xn, rtol=1e-12)


def test_python_op_list_gradient_and_gradient_as_tuple(device):
    a, b = R(3, device=device), R(3, device=device)
    h = Hypot2()(a, b)
    gs = h.op.gradient_as_tuple(T(np.ones(3), requires_grad=False, device=device), h)
    assert isinstance(gs, tuple) and len(gs) == 2
    np.testing.assert_allclose(gs[0].numpy(), 2 * a.numpy())
    (h * 2.0).sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), 4 * a.numpy())
    np.testing.assert_allclose(b.grad.numpy(), 4 * b.numpy())


def test_python_op_using_array_api_and_node_value(device):
    xn = np.random.randn(5)
    x = T(xn, device=device)
    (TanhPy()(x) * 3.0).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 3 * (1 - np.tanh(xn) ** 2), rtol=1e-12)


def test_python_tuple_op(device):
    an, bn = np.random.randn(3), np.random.randn(3)
    a, b = T(an, device=device), T(bn, device=device)
    t = SumDiff()(a, b)
    assert isinstance(t, ndl.TensorTuple) and isinstance(t.op, SumDiff) and len(t) == 2
    data = t.realize_cached_data()
    assert isinstance(data, tuple) and len(data) == 2
    np.testing.assert_allclose(t[0].numpy(), an + bn)
    np.testing.assert_allclose(t[1].numpy(), an - bn)
    (t[0] * t[1]).sum().backward()  # a² − b²
    np.testing.assert_allclose(a.grad.numpy(), 2 * an, rtol=1e-12)
    np.testing.assert_allclose(b.grad.numpy(), -2 * bn, rtol=1e-12)
    t2 = SumDiff()(a, b)
    (t2[0] * 2.0).sum().backward()  # the unused output gets a zero adjoint
    np.testing.assert_allclose(a.grad.numpy(), np.full(3, 2.0))
    np.testing.assert_allclose(b.grad.numpy(), np.full(3, 2.0))


def test_python_tuple_op_make_from_op(device):
    a, b = R(2, device=device), R(2, device=device)
    t = ndl.TensorTuple.make_from_op(SumDiff(), [a, b])
    assert isinstance(t, ndl.TensorTuple) and len(t) == 2
    np.testing.assert_allclose(t[1].numpy(), a.numpy() - b.numpy())


def test_builtin_compute_and_gradient_callable(device):
    a, b = R(2, 3, device=device), R(2, 3, device=device)
    r = ops.EWiseMul().compute(a.realize_cached_data(), b.realize_cached_data())
    assert isinstance(r, ndl.NDArray)
    np.testing.assert_allclose(r.numpy(), a.numpy() * b.numpy())
    n = a * b
    g = R(2, 3, requires_grad=False, device=device)
    ga, gb = n.op.gradient(g, n)
    np.testing.assert_allclose(ga.numpy(), g.numpy() * b.numpy())
    np.testing.assert_allclose(gb.numpy(), g.numpy() * a.numpy())
    e = a.exp()
    ge = e.op.gradient_as_tuple(g, e)
    assert isinstance(ge, tuple) and len(ge) == 1
    np.testing.assert_allclose(ge[0].numpy(), g.numpy() * np.exp(a.numpy()))
    np.testing.assert_allclose(ops.Summation((1,)).compute(a.realize_cached_data()).numpy(),
                               a.numpy().sum(1))
    # Reshape.compute compacts a non-compact input itself (item 10.13)
    p = a.realize_cached_data().permute((1, 0))
    assert not p.is_compact()
    np.testing.assert_array_equal(ops.Reshape((6,)).compute(p).numpy(), a.numpy().T.reshape(6))
    bc = nd.array(np.arange(3.0).reshape(3, 1), device=device).broadcast_to((3, 2))
    np.testing.assert_array_equal(ops.Reshape((2, 3)).compute(bc).numpy(),
                                  np.broadcast_to(np.arange(3.0).reshape(3, 1), (3, 2))
                                  .reshape(2, 3))


def test_gradient_as_tuple_with_python_float_seed_for_0d_output():
    """Course finite-difference helpers pass Tensor(c) with c a Python float."""
    x = R(3, 2, dtype="float32")
    y = x.sum()
    (gx,) = y.op.gradient_as_tuple(ndl.Tensor(1.5, device=ndl.cpu()), y)
    assert gx.shape == (3, 2)
    np.testing.assert_array_equal(gx.numpy(), np.full((3, 2), 1.5))


def test_course_style_inplace_finite_differences():
    """Perturb realize_cached_data().flat[j] in place, recompute (API 1.3, 2.7)."""
    a, b = R(2, 3), R(3, 2)

    def f():
        return (ndl.exp(a @ b) * 0.5).sum()

    f().backward()
    eps = 1e-6
    for t in (a, b):
        num = np.zeros(t.shape)
        for j in range(num.size):
            t.realize_cached_data().flat[j] += eps
            f1 = float(f().numpy())
            t.realize_cached_data().flat[j] -= 2 * eps
            f2 = float(f().numpy())
            t.realize_cached_data().flat[j] += eps
            num.flat[j] = (f1 - f2) / (2 * eps)
        np.testing.assert_allclose(t.grad.numpy(), num, rtol=1e-6, atol=1e-7)


# --------------------------------------------------------------------------
# identity semantics, repr (3.4, item 10.15)
# --------------------------------------------------------------------------

def test_identity_semantics():
    t1 = ndl.Tensor([1.0, 2.0])
    t2 = ndl.Tensor([1.0, 2.0])
    assert (t1 != t2) is True and (t1 == t2) is False
    assert (t1 == t1) is True and (t1 != t1) is False
    assert (t1,) != (t2,)
    d = {t1: "a", t2: "b"}
    assert d[t1] == "a" and d[t2] == "b" and len(d) == 2
    assert hash(t1) == hash(t1)
    assert t1 in [t2, t1] and t2 not in [t1]
    assert len({t1, t2, t1}) == 2


def test_no_len_or_bool():
    assert not hasattr(ndl.Tensor, "__len__")
    assert not hasattr(ndl.Tensor, "__bool__")
    z = ndl.Tensor([0.0])
    assert bool(z) is True
    with pytest.raises(TypeError):
        len(z)


def test_repr_and_str():
    t = ndl.Tensor(np.array([[1.5, -2.0], [3.25, 0.0]]))
    assert repr(t) == "needle.Tensor(" + str(t.numpy()) + ")"
    assert str(t) == str(t.numpy())
    y = t * 2.0
    assert repr(y) == "needle.Tensor(" + str(y.numpy()) + ")"


def test_tensor_subclass_and_value_hierarchy():
    assert issubclass(ndl.Tensor, ag.Value) and issubclass(ndl.TensorTuple, ag.Value)
    assert ag.Tensor is ndl.Tensor and ag.TensorTuple is ndl.TensorTuple
    assert issubclass(ag.TensorOp, ag.Op) and issubclass(ag.TensorTupleOp, ag.Op)
    assert ndl.TensorOp is ag.TensorOp and ops.TensorOp is ag.TensorOp

    class P(ndl.Tensor):
        pass

    p = P([1.0, 2.0])
    assert isinstance(p, ndl.Tensor) and p.requires_grad
    (p * p).sum().backward()
    np.testing.assert_array_equal(p.grad.numpy(), [2.0, 4.0])


def test_module_surface():
    for name in ["Value", "Tensor", "TensorTuple", "Op", "TensorOp", "TensorTupleOp",
                 "find_topo_sort", "topo_sort_dfs", "compute_gradient_of_variables",
                 "sum_node_list", "LAZY_MODE", "TENSOR_COUNTER", "NDArray", "array_api",
                 "Device", "cpu", "all_devices", "default_device"]:
        assert hasattr(ag, name), name
    for name in ["Tensor", "TensorTuple", "Value", "Op", "TensorOp", "TensorTupleOp",
                 "NDArray", "array_api", "BACKEND"]:
        assert hasattr(ops, name), name
    for name in ["ops", "Tensor", "TensorTuple", "cpu", "cuda", "cpu_numpy", "default_device",
                 "all_devices", "no_grad", "BACKEND", "array_api", "NDArray", "Device"]:
        assert hasattr(ndl, name), name
    assert ndl.array_api is nd and ndl.NDArray is nd.NDArray
    assert isinstance(ag.TENSOR_COUNTER, int)
