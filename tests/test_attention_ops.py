"""The fused ops behind attention (csrc/autograd/ops_attention.c).

- `ops.softmax` (over the last axis) against torch.softmax: values and
  gradients, any rank, non-compact inputs, the causal mask's -FLT_MAX,
  -inf entries, large values, float32 and float64; the fused host loop and
  the nda_* composition (np mode, other devices) alike.
- `ops.softmax_grad(y, g)` against its formula y * (g - sum(g * y)).
- float64 central finite differences of both ops (every input), and
  gradients of gradients against torch's double backward.
- np mode (a child process: NEEDLE_BACKEND is read once per process).
- Bad input: a 0-d input, y and g of different shapes.
"""
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import needle as ndl
from needle import _C, ops

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_DT = {"float32": torch.float32, "float64": torch.float64}
TOL = {"float32": dict(rtol=1e-5, atol=1e-7), "float64": dict(rtol=1e-12, atol=1e-15)}
# gradients y * (g - sum(g * y)) cancel where y ~ 1: absolute error ~ eps * |g|
GTOL = {"float32": dict(rtol=1e-4, atol=1e-6), "float64": dict(rtol=1e-10, atol=1e-13)}
F32_MAX = float(np.finfo(np.float32).max)


@pytest.fixture(params=["fused", "composed"])
def path(request):
    """The fused host loop, or the nda_* composition np mode and other devices use."""
    prev = _C._skip_optional_slots(request.param == "composed")
    yield request.param
    _C._skip_optional_slots(prev)


def nd(a, dtype="float64", requires_grad=True, device=None):
    return ndl.Tensor(np.asarray(a), dtype=dtype, requires_grad=requires_grad, device=device)


def assert_same(got, want, device):
    """Bit for bit on the cpu; within 2 ulps on cuda, where nvcc may contract the
    per-element math (scalar_ops.h) of two kernels differently."""
    if device == ndl.cpu():
        np.testing.assert_array_equal(got, want)
    else:
        eps = np.finfo(got.dtype).eps
        np.testing.assert_allclose(got, want, rtol=2 * eps, atol=2 * eps * np.abs(want).max())


def th(a, dtype="float64", requires_grad=True):
    return torch.tensor(np.asarray(a), dtype=TORCH_DT[dtype], requires_grad=requires_grad)


SHAPES = [(7,), (3, 1), (4, 9), (2, 3, 5, 17), (2, 2, 64, 64), (1, 1, 3, 300)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_against_torch(path, dtype, shape, device):
    z = np.random.randn(*shape) * np.random.choice([0.1, 1, 30], size=shape)
    g = np.random.randn(*shape)
    Z, TZ = nd(z, dtype, device=device), th(z, dtype)
    y, ty = ops.softmax(Z), torch.softmax(TZ, -1)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), **TOL[dtype])
    assert y.dtype == dtype and y.shape == shape
    (y * nd(g, dtype, False, device=device)).sum().backward()
    (ty * th(g, dtype, False)).sum().backward()
    np.testing.assert_allclose(Z.grad.numpy(), TZ.grad.numpy(), **GTOL[dtype])


def test_softmax_of_a_transposed_view(path):
    z = np.random.randn(3, 5, 6)
    Z = nd(z, "float32")
    y = ops.softmax(ops.transpose(Z, (1, 2)))
    ref = torch.softmax(th(z, "float32", False).transpose(1, 2), -1)
    np.testing.assert_allclose(y.numpy(), ref.numpy(), **TOL["float32"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_masked_and_extreme_rows(path, dtype, device):
    z = np.random.randn(5, 6)
    z[0, 3:] = -F32_MAX                      # the causal mask's value
    z[1, :5] = -np.inf                       # only one finite entry
    z[2] += 1e30                             # huge: uniform in float32
    z[3, :] = -F32_MAX                       # a fully masked row: uniform, as torch
    z[4, 0] = 80.0                           # exp would overflow float32 unshifted
    y = ops.softmax(nd(z, dtype, device=device)).numpy()
    ref = torch.softmax(th(z, dtype, False), -1).numpy()
    np.testing.assert_allclose(y, ref, **TOL[dtype])
    assert np.all(y[0, 3:] == 0) and y[1, 5] == 1.0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_grad_is_its_formula(path, dtype, device):
    y = torch.softmax(torch.randn(3, 4, 11, dtype=torch.float64), -1).numpy()
    g = np.random.randn(3, 4, 11)
    out = ops.softmax_grad(nd(y, dtype, device=device), nd(g, dtype, device=device)).numpy()
    ref = y * (g - (g * y).sum(-1, keepdims=True))
    np.testing.assert_allclose(out, ref, **(TOL[dtype] if dtype == "float64" else
                                            dict(rtol=1e-5, atol=1e-6)))


def fd_check(f, arrays, eps=1e-6):
    """Gradient of sum(f(*arrays) * G) by needle against central differences (float64)."""
    ins = [nd(a) for a in arrays]
    out = f(*ins)
    G = np.random.randn(*out.shape)
    (out * nd(G, requires_grad=False)).sum().backward()
    for k, a in enumerate(arrays):
        num = np.zeros_like(a)
        for idx in np.ndindex(*a.shape):
            hi, lo = [x.copy() for x in arrays], [x.copy() for x in arrays]
            hi[k][idx] += eps
            lo[k][idx] -= eps
            fh = (f(*[nd(x, requires_grad=False) for x in hi]).numpy() * G).sum()
            fl = (f(*[nd(x, requires_grad=False) for x in lo]).numpy() * G).sum()
            num[idx] = (fh - fl) / (2 * eps)
        np.testing.assert_allclose(ins[k].grad.numpy(), num, rtol=1e-6, atol=1e-7)


def test_softmax_finite_differences(path):
    fd_check(ops.softmax, [np.random.randn(2, 3, 5)])


def test_softmax_grad_finite_differences(path):
    y = torch.softmax(torch.randn(2, 2, 4, dtype=torch.float64), -1).numpy()
    fd_check(ops.softmax_grad, [y, np.random.randn(2, 2, 4)])


def test_softmax_gradient_of_gradient(path):
    """d/dz of sum(dL/dz * V), L = sum(softmax(z) * G): needle against torch."""
    z, G, V = (np.random.randn(3, 6) for _ in range(3))
    Z = nd(z)
    (ops.softmax(Z) * nd(G, requires_grad=False)).sum().backward()
    (Z.grad * nd(V, requires_grad=False)).sum().backward()
    TZ = th(z)
    (gz,) = torch.autograd.grad((torch.softmax(TZ, -1) * th(G, requires_grad=False)).sum(), TZ,
                                create_graph=True)
    (gz * th(V, requires_grad=False)).sum().backward()
    np.testing.assert_allclose(Z.grad.numpy(), TZ.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_bad_input_names_the_shapes():
    with pytest.raises(ValueError, match="at least 1 dimension"):
        ops.softmax(ndl.Tensor(np.float32(1.0)))
    with pytest.raises(ValueError, match=r"\(2, 3\) and \(3, 2\)"):
        ops.softmax_grad(nd(np.ones((2, 3))), nd(np.ones((3, 2))))


def test_np_mode():
    code = textwrap.dedent("""
        import numpy as np, torch, needle as ndl
        from needle import ops
        z = np.random.randn(2, 3, 7)
        Z = ndl.Tensor(z)
        y = ops.softmax(Z)
        assert isinstance(y.realize_cached_data(), np.ndarray)
        ref = torch.softmax(torch.tensor(z, requires_grad=True), -1)
        np.testing.assert_allclose(y.numpy(), ref.detach().numpy(), rtol=1e-12)
        g = np.random.randn(2, 3, 7)
        (y * ndl.Tensor(g, requires_grad=False)).sum().backward()
        tz = torch.tensor(z, requires_grad=True)
        (torch.softmax(tz, -1) * torch.tensor(g)).sum().backward()
        np.testing.assert_allclose(Z.grad.numpy(), tz.grad.numpy(), rtol=1e-10, atol=1e-14)
        print("ok")
    """)
    env = dict(os.environ, NEEDLE_BACKEND="np")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr


# ---- AttentionSoftmax: softmax(x / c0 + causal mask) ----------------------------

def causal_mask(T, S):
    return -F32_MAX * np.triu(np.ones((T, S)), S - T + 1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [(2, 3, 5, 5), (1, 2, 4, 9), (2, 1, 6, 3), (7, 7), (3, 1, 1)])
def test_attention_softmax_is_the_contracts_three_steps(path, dtype, causal, shape, device):
    """Bit for bit the nodes it replaces: x / c0, + mask, softmax; and torch's values."""
    x = np.random.randn(*shape) * 4
    c0 = math.sqrt(8)
    X = nd(x, dtype, device=device)
    y = ops.attention_softmax(X, c0, 1.0 if causal else 0.0)
    z = X / c0
    if causal:
        z = z + nd(causal_mask(*shape[-2:]), dtype, False, device=device).broadcast_to(shape)
    assert_same(y.numpy(), ops.softmax(z).numpy(), device)
    tx = th(x, dtype)
    tz = tx / c0 + (th(causal_mask(*shape[-2:]), dtype, False) if causal else 0)
    ty = torch.softmax(tz, -1)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), **TOL[dtype])
    g = np.random.randn(*shape)
    (y * nd(g, dtype, False, device=device)).sum().backward()
    (ty * th(g, dtype, False)).sum().backward()
    np.testing.assert_allclose(X.grad.numpy(), tx.grad.numpy(), **GTOL[dtype])


@pytest.mark.parametrize("causal", [0.0, 1.0])
def test_attention_softmax_finite_differences(path, causal):
    fd_check(lambda a: ops.attention_softmax(a, 1.7, causal), [np.random.randn(2, 4, 5)])


def test_attention_softmax_bad_input():
    with pytest.raises(ValueError, match="at least 2 dimensions, got 1"):
        ops.attention_softmax(nd(np.ones(3)), 1.0, 1.0)


# ---- AttentionProbs: attention_softmax(q @ k^T) ----------------------------------

@pytest.mark.parametrize("causal", [0.0, 1.0])
@pytest.mark.parametrize("qs,ks", [((2, 3, 5, 4), (2, 3, 5, 4)), ((1, 2, 3, 8), (1, 2, 6, 8)),
                                   ((4, 6, 2), (4, 3, 2))])
def test_attention_probs_is_matmul_then_attention_softmax(path, causal, qs, ks, device):
    q, k = np.random.randn(*qs), np.random.randn(*ks)
    Q, K = nd(q, "float32", device=device), nd(k, "float32", device=device)
    y = ops.attention_probs(Q, K, 2.0, causal)
    n = len(ks)
    kt = ops.transpose(nd(k, "float32", device=device), (n - 2, n - 1))
    ref = ops.attention_softmax(nd(q, "float32", device=device) @ kt, 2.0, causal)
    assert_same(y.numpy(), ref.numpy(), device)
    tq, tk = th(q, "float32"), th(k, "float32")
    tz = tq @ tk.transpose(-1, -2) / 2.0
    if causal:
        tz = tz + th(causal_mask(qs[-2], ks[-2]), "float32", False)
    ty = torch.softmax(tz, -1)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    g = np.random.randn(*y.shape)
    (y * nd(g, "float32", False, device=device)).sum().backward()
    (ty * th(g, "float32", False)).sum().backward()
    np.testing.assert_allclose(Q.grad.numpy(), tq.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(K.grad.numpy(), tk.grad.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("causal", [0.0, 1.0])
def test_attention_probs_finite_differences(path, causal):
    fd_check(lambda a, b: ops.attention_probs(a, b, 1.3, causal),
             [np.random.randn(2, 3, 2), np.random.randn(2, 4, 2)])


def test_attention_probs_gradient_of_gradient():
    """d/d(q, k) of sum(dL/dq * V): needle against torch's double backward."""
    q, k = np.random.randn(2, 3, 4), np.random.randn(2, 3, 4)
    G, V = np.random.randn(2, 3, 3), np.random.randn(2, 3, 4)
    Q, K = nd(q), nd(k)
    (ops.attention_probs(Q, K, 2.0, 1.0) * nd(G, requires_grad=False)).sum().backward()
    (Q.grad * nd(V, requires_grad=False)).sum().backward()
    tq, tk = th(q), th(k)
    tz = tq @ tk.transpose(-1, -2) / 2.0 + th(causal_mask(3, 3), requires_grad=False)
    (gq,) = torch.autograd.grad((torch.softmax(tz, -1) * th(G, requires_grad=False)).sum(), tq,
                                create_graph=True)
    (gq * th(V, requires_grad=False)).sum().backward()
    np.testing.assert_allclose(Q.grad.numpy(), tq.grad.numpy(), rtol=1e-9, atol=1e-11)
    np.testing.assert_allclose(K.grad.numpy(), tk.grad.numpy(), rtol=1e-9, atol=1e-11)


def test_attention_probs_bad_shapes():
    with pytest.raises(ValueError, match=r"\(2, 3, 4\) and \(2, 3, 5\)"):
        ops.attention_probs(nd(np.ones((2, 3, 4))), nd(np.ones((2, 3, 5))), 1.0, 0.0)
    with pytest.raises(ValueError, match=r"\(2, 3, 4\) and \(3, 3, 4\)"):
        ops.attention_probs(nd(np.ones((2, 3, 4))), nd(np.ones((3, 3, 4))), 1.0, 0.0)


# ---- LayerNorm, Linear and MaskedScale: the Transformer's other fused nodes -----

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(9,), (5, 16), (2, 3, 7), (64, 256)])
def test_layer_norm_against_torch(path, dtype, shape, device):
    x = np.random.randn(*shape) * 3 + 1
    w, b, g = np.random.randn(shape[-1]), np.random.randn(shape[-1]), np.random.randn(*shape)
    X, W, B = nd(x, dtype, device=device), nd(w, dtype, device=device), nd(b, dtype, device=device)
    y = ops.layer_norm(X, W, B, 1e-5)
    # no graph: the layer_norm_grad slot (the graph's backward: the tests below)
    (y * nd(g, dtype, False, device=device)).sum().backward(create_graph=False)
    TX, TW, TB = th(x, dtype), th(w, dtype), th(b, dtype)
    ty = torch.nn.functional.layer_norm(TX, (shape[-1],), TW, TB, 1e-5)
    (ty * th(g, dtype, False)).sum().backward()
    assert y.dtype == dtype
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), **GTOL[dtype])
    for a, t in ((X, TX), (W, TW), (B, TB)):
        np.testing.assert_allclose(a.grad.numpy(), t.grad.numpy(), **GTOL[dtype])


def test_layer_norm_is_layernorm1d(path):
    """The same numbers as the module's own formula: bit for bit where the composition
    runs (it is that formula), to rounding in the fused loop (eight-lane sums)."""
    x = np.random.randn(6, 5, 12).astype(np.float32)
    ln = ndl.nn.LayerNorm1d(12)
    ln.weight.data = nd(np.random.randn(12), "float32")
    ln.bias.data = nd(np.random.randn(12), "float32")
    want = ln(nd(x, "float32")).numpy()
    got = ops.layer_norm(nd(x, "float32"), ln.weight, ln.bias, ln.eps).numpy()
    if path == "composed":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_layer_norm_finite_differences(path):
    fd_check(lambda x, w, b: ops.layer_norm(x, w, b, 1e-3),
             [np.random.randn(3, 5), np.random.randn(5), np.random.randn(5)])


def test_layer_norm_gradient_of_gradient(path):
    x, w, b, G, V = (np.random.randn(4, 6), np.random.randn(6), np.random.randn(6),
                     np.random.randn(4, 6), np.random.randn(4, 6))
    X, W = nd(x), nd(w)
    (ops.layer_norm(X, W, nd(b), 1e-5) * nd(G, requires_grad=False)).sum().backward()
    (X.grad * nd(V, requires_grad=False)).sum().backward()
    TX, TW = th(x), th(w)
    ty = torch.nn.functional.layer_norm(TX, (6,), TW, th(b), 1e-5)
    (gx,) = torch.autograd.grad((ty * th(G, requires_grad=False)).sum(), TX, create_graph=True)
    (gx * th(V, requires_grad=False)).sum().backward()
    np.testing.assert_allclose(X.grad.numpy(), TX.grad.numpy(), rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(W.grad.numpy(), TW.grad.numpy(), rtol=1e-8, atol=1e-10)


def test_linear_and_masked_scale_are_their_compositions_bit_for_bit(path, device):
    x, w, b, g = (np.random.randn(7, 5), np.random.randn(5, 3), np.random.randn(1, 3),
                  np.random.randn(7, 3))
    m = (np.random.rand(7, 3) < 0.7).astype(np.float64)
    for dtype in ("float32", "float64"):
        fused = [nd(a, dtype, device=device) for a in (x, w, b)]
        plain = [nd(a, dtype, device=device) for a in (x, w, b)]
        y1 = ops.masked_scale(ops.linear(*fused), nd(m, dtype, False, device=device), 0.7, 0.0)
        mask = nd(m, dtype, False, device=device)
        y2 = (plain[0] @ plain[1] + plain[2].broadcast_to((7, 3))) * mask / 0.7
        assert_same(y1.numpy(), y2.numpy(), device)
        (y1 * nd(g, dtype, False, device=device)).sum().backward()
        (y2 * nd(g, dtype, False, device=device)).sum().backward()
        for a, c in zip(fused, plain):
            assert_same(a.grad.numpy(), c.grad.numpy(), device)
    tx, tw, tb = th(x), th(w), th(b)
    ((tx @ tw + tb) * th(m, requires_grad=False) / 0.7 * th(g, requires_grad=False)).sum() \
        .backward()
    X, W, B = nd(x, device=device), nd(w, device=device), nd(b, device=device)
    (ops.masked_scale(ops.linear(X, W, B), nd(m, requires_grad=False, device=device), 0.7, 0.0)
     * nd(g, requires_grad=False, device=device)).sum().backward()
    for a, t in ((X, tx), (W, tw), (B, tb)):
        np.testing.assert_allclose(a.grad.numpy(), t.grad.numpy(), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("bshape", [(1, 3), (3,), (7, 3)])
@pytest.mark.parametrize("dtypes", [("float32", "float32"), ("float64", "float64"),
                                    ("float32", "float64"), ("float64", "float32")])
def test_linear_sum_over_its_product_leaves_inputs_alone(bshape, dtypes, device):
    # Note [Sums over a temporary] (ndarray_ops.c): Linear adds the bias over
    # its own product when nothing else holds it; the bits of x @ w + b, a
    # new array each call, and x, w, b unchanged, for every bias shape, for
    # a bias of a wider dtype (a new float64 result), for W.T read in place
    xdt, bdt = dtypes
    x, w, b = np.random.randn(7, 5), np.random.randn(5, 3), np.random.randn(*bshape)
    for wt in (False, True):
        X = nd(x, xdt, False, device=device)
        W = nd(w.T.copy(), xdt, False, device=device).transpose() if wt else \
            nd(w, xdt, False, device=device)
        B = nd(b, bdt, False, device=device)
        before = [t.numpy().copy() for t in (X, W, B)]
        y1, y2 = ops.linear(X, W, B), ops.linear(X, W, B)
        bias = B.realize_cached_data()
        bias = bias.reshape((1, 3)) if bias.ndim == 1 else bias
        want = X.realize_cached_data() @ W.realize_cached_data() + bias.broadcast_to((7, 3))
        assert y1.dtype == want.dtype
        assert_same(y1.numpy(), want.numpy(), device)
        assert_same(y2.numpy(), want.numpy(), device)
        np.testing.assert_allclose(y1.numpy(), x @ w + b, rtol=1e-5, atol=1e-5)
        for t, v in zip((X, W, B), before):
            np.testing.assert_array_equal(t.numpy(), v)
        y1.realize_cached_data()[0, 0] = 1e3  # results share nothing
        assert y2.numpy()[0, 0] == want.numpy()[0, 0]


def test_linear_and_masked_scale_finite_differences(path):
    fd_check(ops.linear, [np.random.randn(4, 3), np.random.randn(3, 2), np.random.randn(2)])
    m = (np.random.rand(3, 4) < 0.5).astype(np.float64)
    fd_check(lambda x: ops.masked_scale(x, nd(m, requires_grad=False), 0.5, 0.0),
             [np.random.randn(3, 4)])


def test_fused_nodes_bad_input_names_the_shapes():
    with pytest.raises(ValueError, match=r"LayerNorm.*\(2, 5\).*\(4,\).*\(5,\)"):
        ops.layer_norm(nd(np.ones((2, 5))), nd(np.ones(4)), nd(np.ones(5)), 1e-5)
    with pytest.raises(ValueError, match=r"Linear.*\(2, 5\).*\(4, 3\).*\(1, 3\)"):
        ops.linear(nd(np.ones((2, 5))), nd(np.ones((4, 3))), nd(np.ones((1, 3))))
    with pytest.raises(ValueError, match=r"MaskedScale.*\(2, 5\) and \(5, 2\)"):
        ops.masked_scale(nd(np.ones((2, 5))), nd(np.ones((5, 2))), 0.5, 0.0)
    with pytest.raises(ValueError, match=r"packed mask must be a 1-d array .* with 2 elements"):
        ops.masked_scale(nd(np.ones((3, 7))), nd(np.ones(1)), 0.5, 1.0)


@pytest.mark.parametrize("shape", [(1,), (3, 7), (2, 3, 16), (5, 33)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_masked_scale_with_a_packed_mask(path, shape, dtype, device):
    """nn.Dropout's packed mask (16 bits to an element): the numbers of the float mask,
    through the masked_scale slot or the fallback that unpacks it (via the host)."""
    x, g = np.random.randn(*shape), np.random.randn(*shape)
    m = np.random.rand(*shape) < 0.6
    flat = np.concatenate([m.reshape(-1), np.zeros((-m.size) % 16, dtype=bool)])
    bits = np.packbits(flat, bitorder="little").view("<u2").astype(dtype)
    outs = []
    for mask, packed in ((m.astype(dtype), 0.0), (bits, 1.0)):
        X = nd(x, dtype, device=device)
        y = ops.masked_scale(X, nd(mask, dtype, False, device=device), 0.6, packed)
        (y * nd(g, dtype, False, device=device)).sum().backward()
        outs.append((y.numpy(), X.grad.numpy()))
    assert_same(outs[1][0], outs[0][0], device)
    assert_same(outs[1][1], outs[0][1], device)
    np.testing.assert_allclose(outs[1][0], x * m / 0.6, **TOL[dtype])
