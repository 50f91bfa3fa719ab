"""nn.SoftmaxLoss over 2-D logits: the fused op SoftmaxCrossEntropy (ops_softmax.c)
against torch.nn.functional.cross_entropy, float64 finite differences and the
contract's composite formula (API.md 6.2)."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import needle as ndl

DTYPES = ["float32", "float64"]
TOL = {"float32": dict(rtol=1e-5, atol=1e-6), "float64": dict(rtol=1e-12, atol=1e-13)}


@pytest.fixture(params=[False, True], ids=["fused", "composed"])
def skip_slots(request):
    prev = ndl._C._skip_optional_slots(request.param)
    yield request.param
    ndl._C._skip_optional_slots(prev)


def _needle(z: np.ndarray, y: np.ndarray, dtype: str, device=None):
    t = ndl.Tensor(z, dtype=dtype, device=device)
    loss = ndl.nn.SoftmaxLoss()(t, ndl.Tensor(y, dtype=dtype, device=device))
    loss.backward()
    assert loss.device == t.device and t.grad.device == t.device
    return loss.numpy(), t.grad.numpy()


def _torch(z: np.ndarray, y: np.ndarray, dtype: str):
    t = torch.tensor(z.astype(dtype), requires_grad=True)
    loss = torch.nn.functional.cross_entropy(t, torch.tensor(y).long())
    loss.backward()
    return loss.detach().numpy(), t.grad.numpy()


def _composite(z: np.ndarray, y: np.ndarray, dtype: str):
    """The contract's formula built from needle ops (LogSumExp, one_hot, product)."""
    t = ndl.Tensor(z, dtype=dtype)
    k = z.shape[1]
    oh = ndl.init.one_hot(k, ndl.Tensor(y, dtype=dtype), dtype=dtype)
    lse = ndl.ops.summation(ndl.ops.logsumexp(t, axes=(1,)))
    loss = (lse - ndl.ops.summation(t * oh)) / z.shape[0]
    loss.backward()
    return loss.numpy(), t.grad.numpy()


CASES = [(16, 10, 1.0), (1, 7, 1.0), (5, 1, 1.0), (33, 300, 30.0), (4, 9, 1e4), (3, 1000, 1e-3)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,k,scale", CASES)
def test_against_torch(B, k, scale, dtype, skip_slots, device):
    rng = np.random.default_rng(B * 1000 + k)
    z = (rng.standard_normal((B, k)) * scale).astype(dtype)
    y = rng.integers(0, k, B).astype(dtype)
    got, got_g = _needle(z, y, dtype, device)
    want, want_g = _torch(z, y, dtype)
    assert got.shape == () and got.dtype == np.dtype(dtype)
    assert got_g.dtype == np.dtype(dtype)
    tol = TOL[dtype]
    np.testing.assert_allclose(got, want, rtol=tol["rtol"], atol=tol["atol"] * max(scale, 1))
    np.testing.assert_allclose(got_g, want_g, **tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,k,scale", CASES)
def test_backward_without_graph_is_fused_with_the_same_numbers(B, k, scale, dtype, device):
    """backward(create_graph=False) runs one fused pass per row; its gradient is the
    composed backward's (create_graph=True) bit for bit on the CPU (within an ulp or
    two on cuda, where nvcc may contract the two kernels' exp differently), and
    torch's, for an upstream gradient other than 1."""
    rng = np.random.default_rng(B * k)
    z = rng.standard_normal((B, k)) * scale
    y = rng.integers(0, k, B).astype(np.float64)
    grads = []
    for create_graph in (True, False):
        t = ndl.Tensor(z, dtype=dtype, device=device)
        loss = ndl.nn.SoftmaxLoss()(t, ndl.Tensor(y, dtype=dtype, device=device))
        (loss * 2.5).backward(create_graph=create_graph)
        grads.append(t.grad.numpy())
    if device == ndl.cpu():
        np.testing.assert_array_equal(grads[1], grads[0])
    else:
        eps = np.finfo(dtype).eps
        np.testing.assert_allclose(grads[1], grads[0], rtol=4 * eps, atol=4 * eps)
    tz = torch.tensor(z.astype(dtype), requires_grad=True)
    (torch.nn.functional.cross_entropy(tz, torch.tensor(y).long()) * 2.5).backward()
    np.testing.assert_allclose(grads[1], tz.grad.numpy(), **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_large_logits(dtype, skip_slots, device):
    """Logits near 1e8 (float32 keeps no fraction there): no overflow, no doubled gradient."""
    z = np.array([[1e8, 1e8 - 64, 0.0], [-1e8, 1e8, 1e8]], dtype=dtype)
    y = np.array([0, 2], dtype=dtype)
    got, got_g = _needle(z, y, dtype, device)
    want, want_g = _torch(z, y, dtype)
    assert np.isfinite(got) and np.all(np.isfinite(got_g))
    # the composite formula's logsumexp rounds to float32 at 1e8 (a spacing of 8), the
    # fused loss does not
    atol = float(np.spacing(np.float32(1e8))) if skip_slots and dtype == "float32" else 1e-6
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=atol)
    np.testing.assert_allclose(got_g, want_g, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_same_as_composite_formula(dtype, skip_slots, device):
    rng = np.random.default_rng(3)
    z = rng.standard_normal((64, 50)).astype(dtype) * 3
    y = rng.integers(0, 50, 64).astype(dtype)
    got, got_g = _needle(z, y, dtype, device)
    want, want_g = _composite(z, y, dtype)
    np.testing.assert_allclose(got, want, **TOL[dtype])
    np.testing.assert_allclose(got_g, want_g, **TOL[dtype])


def test_finite_differences(skip_slots):
    rng = np.random.default_rng(4)
    z = rng.standard_normal((6, 5))
    y = rng.integers(0, 5, 6).astype("float64")
    _, grad = _needle(z, y, "float64")

    def f(a):
        return float(ndl.nn.SoftmaxLoss()(ndl.Tensor(a, dtype="float64"),
                                          ndl.Tensor(y, dtype="float64")).numpy())

    eps, num = 1e-6, np.zeros_like(z)
    for idx in np.ndindex(*z.shape):
        d = np.zeros_like(z)
        d[idx] = eps
        num[idx] = (f(z + d) - f(z - d)) / (2 * eps)
    np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-8)


def test_second_derivative(skip_slots):
    """d/dz of sum(dL/dz * V) (backward builds a graph by default): needle against torch."""
    rng = np.random.default_rng(5)
    z = rng.standard_normal((4, 6))
    y = rng.integers(0, 6, 4).astype("float64")
    v = rng.standard_normal((4, 6))
    t = ndl.Tensor(z, dtype="float64")
    ndl.nn.SoftmaxLoss()(t, ndl.Tensor(y, dtype="float64")).backward()
    g1 = t.grad.numpy()
    (t.grad * ndl.Tensor(v, dtype="float64", requires_grad=False)).sum().backward()
    tz = torch.tensor(z, requires_grad=True)
    (tg,) = torch.autograd.grad(torch.nn.functional.cross_entropy(tz, torch.tensor(y).long()),
                                tz, create_graph=True)
    np.testing.assert_allclose(g1, tg.detach().numpy(), rtol=1e-12, atol=1e-14)
    (tg * torch.tensor(v)).sum().backward()
    np.testing.assert_allclose(t.grad.numpy(), tz.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bad,match", [(5.0, r"label 5(\.0)? is out of range for 5 classes"),
                                       (-1.0, r"label -1(\.0)? is out of range for 5 classes"),
                                       (1.5, "1.5"), (np.nan, "nan"), (np.inf, "inf")])
def test_bad_labels(bad, match, skip_slots, device):
    z = ndl.Tensor(np.zeros((3, 5), dtype="float32"), device=device)
    y = ndl.Tensor(np.array([0.0, bad, 1.0], dtype="float32"), device=device)
    with pytest.raises(ValueError, match=match):
        ndl.nn.SoftmaxLoss()(z, y)
    with pytest.raises(ValueError, match=match):
        ndl.ops.softmax_cross_entropy(z, y).numpy()


def test_op_out_of_range_names_k():
    z = ndl.Tensor(np.zeros((2, 4), dtype="float32"))
    with pytest.raises(ValueError, match="label 4 is out of range for 4 classes"):
        ndl.ops.softmax_cross_entropy(z, ndl.Tensor([0.0, 4.0])).numpy()


def test_bad_shapes():
    z = ndl.Tensor(np.zeros((3, 5), dtype="float32"))
    with pytest.raises(ValueError, match=r"\(3, 5\) and \(2,\)"):
        ndl.ops.softmax_cross_entropy(z, ndl.Tensor([0.0, 1.0])).numpy()


NP_MODE = """
import numpy as np, torch, needle as ndl
assert ndl.backend_selection.BACKEND == "np"
rng = np.random.default_rng(0)
for dtype in ["float32", "float64"]:
    z = rng.standard_normal((8, 11)).astype(dtype)
    y = rng.integers(0, 11, 8).astype(dtype)
    t = ndl.Tensor(z, dtype=dtype)
    loss = ndl.nn.SoftmaxLoss()(t, ndl.Tensor(y, dtype=dtype))
    loss.backward()
    tz = torch.tensor(z, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(tz, torch.tensor(y).long())
    tl.backward()
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(loss.numpy(), tl.item(), rtol=tol)
    np.testing.assert_allclose(t.grad.numpy(), tz.grad.numpy(), rtol=tol, atol=tol)
try:
    ndl.ops.softmax_cross_entropy(ndl.Tensor(np.zeros((2, 3))), ndl.Tensor([0.0, 3.0])).numpy()
except ValueError as e:
    assert "label 3 is out of range for 3 classes" in str(e), e
else:
    raise AssertionError("no error for label 3 of 3 classes")
print("ok")
"""


def test_np_mode():
    env = dict(os.environ, NEEDLE_BACKEND="np")
    out = subprocess.run([sys.executable, "-c", NP_MODE], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
