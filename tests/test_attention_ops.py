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


def nd(a, dtype="float64", requires_grad=True):
    return ndl.Tensor(np.asarray(a), dtype=dtype, requires_grad=requires_grad)


def th(a, dtype="float64", requires_grad=True):
    return torch.tensor(np.asarray(a), dtype=TORCH_DT[dtype], requires_grad=requires_grad)


SHAPES = [(7,), (3, 1), (4, 9), (2, 3, 5, 17), (2, 2, 64, 64), (1, 1, 3, 300)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_against_torch(path, dtype, shape):
    z = np.random.randn(*shape) * np.random.choice([0.1, 1, 30], size=shape)
    g = np.random.randn(*shape)
    Z, TZ = nd(z, dtype), th(z, dtype)
    y, ty = ops.softmax(Z), torch.softmax(TZ, -1)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), **TOL[dtype])
    assert y.dtype == dtype and y.shape == shape
    (y * nd(g, dtype, False)).sum().backward()
    (ty * th(g, dtype, False)).sum().backward()
    np.testing.assert_allclose(Z.grad.numpy(), TZ.grad.numpy(), **GTOL[dtype])


def test_softmax_of_a_transposed_view(path):
    z = np.random.randn(3, 5, 6)
    Z = nd(z, "float32")
    y = ops.softmax(ops.transpose(Z, (1, 2)))
    ref = torch.softmax(th(z, "float32", False).transpose(1, 2), -1)
    np.testing.assert_allclose(y.numpy(), ref.numpy(), **TOL["float32"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_masked_and_extreme_rows(path, dtype):
    z = np.random.randn(5, 6)
    z[0, 3:] = -F32_MAX                      # the causal mask's value
    z[1, :5] = -np.inf                       # only one finite entry
    z[2] += 1e30                             # huge: uniform in float32
    z[3, :] = -F32_MAX                       # a fully masked row: uniform, as torch
    z[4, 0] = 80.0                           # exp would overflow float32 unshifted
    y = ops.softmax(nd(z, dtype)).numpy()
    ref = torch.softmax(th(z, dtype, False), -1).numpy()
    np.testing.assert_allclose(y, ref, **TOL[dtype])
    assert np.all(y[0, 3:] == 0) and y[1, 5] == 1.0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_softmax_grad_is_its_formula(path, dtype):
    y = torch.softmax(torch.randn(3, 4, 11, dtype=torch.float64), -1).numpy()
    g = np.random.randn(3, 4, 11)
    out = ops.softmax_grad(nd(y, dtype), nd(g, dtype)).numpy()
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
def test_attention_softmax_is_the_contracts_three_steps(path, dtype, causal, shape):
    """Bit for bit the nodes it replaces: x / c0, + mask, softmax; and torch's values."""
    x = np.random.randn(*shape) * 4
    c0 = math.sqrt(8)
    X = nd(x, dtype)
    y = ops.attention_softmax(X, c0, 1.0 if causal else 0.0)
    z = X / c0
    if causal:
        z = z + nd(causal_mask(*shape[-2:]), dtype, False).broadcast_to(shape)
    np.testing.assert_array_equal(y.numpy(), ops.softmax(z).numpy())
    tx = th(x, dtype)
    tz = tx / c0 + (th(causal_mask(*shape[-2:]), dtype, False) if causal else 0)
    ty = torch.softmax(tz, -1)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), **TOL[dtype])
    g = np.random.randn(*shape)
    (y * nd(g, dtype, False)).sum().backward()
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
def test_attention_probs_is_matmul_then_attention_softmax(path, causal, qs, ks):
    q, k = np.random.randn(*qs), np.random.randn(*ks)
    Q, K = nd(q, "float32"), nd(k, "float32")
    y = ops.attention_probs(Q, K, 2.0, causal)
    n = len(ks)
    ref = ops.attention_softmax(nd(q, "float32") @ ops.transpose(nd(k, "float32"), (n - 2, n - 1)),
                                2.0, causal)
    np.testing.assert_array_equal(y.numpy(), ref.numpy())
    tq, tk = th(q, "float32"), th(k, "float32")
    tz = tq @ tk.transpose(-1, -2) / 2.0
    if causal:
        tz = tz + th(causal_mask(qs[-2], ks[-2]), "float32", False)
    ty = torch.softmax(tz, -1)
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    g = np.random.randn(*y.shape)
    (y * nd(g, "float32", False)).sum().backward()
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
