"""nn.SoftmaxLoss over 2-D logits: the fused op SoftmaxCrossEntropy (ops_softmax.c)
against torch.nn.functional.cross_entropy, float64 finite differences and the
contract's composite formula (API.md 6.2). The last section: the host copies of a
training step (issue 10: dropout's mask, the labels, the loss's g and sum,
clip_grad_norm)."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import needle as ndl
from needle.nn.nn_basic import _packed_bits

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


# ---- no host round trips in an ordinary training step (issue 10, csrc/cuda/README.md's
# sixth review): dropout's mask drawn and packed on the host, the loss's labels read
# once, the loss's upstream gradient and sum kept on the device, one read for
# clip_grad_norm. Each keeps the CPU's numbers: checked against the old path's
# definition (init.randb, the host row-order sum) and NumPy / PyTorch. The cpu
# device runs the same Python and C paths as the cuda device.

# 0.3 and 1/3 are not float32 numbers: 1 - p is rounded to float32 for the comparison
PS = [0.0, 0.1, 0.5, 0.9, 1.0, 0.3, 1 / 3]
SHAPES = [(), (1,), (15,), (16,), (17,), (3, 5), (4, 33), (2, 3, 7), (0, 4), (64, 48)]


def _old_bits(shape, keep, device, dtype):
    """The mask as the old path made it: init.randb on the device (device.rand, then
    the NDArray comparison `<= keep`), read back and packed 16 to an element."""
    mask = ndl.init.randb(*shape, p=keep, device=device, dtype=dtype)
    flat = mask.numpy().reshape(-1) != 0
    flat = np.concatenate([flat, np.zeros((-flat.size) % 16, dtype=bool)])
    return np.packbits(flat, bitorder="little").view("<u2").astype(dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("p", PS)
def test_dropout_bits_are_the_old_masks(p, shape, dtype, device):
    """Same seed, same mask bits, and the random stream left where the old path left it."""
    x = ndl.init.ones(*shape, device=device, dtype=dtype)
    for seed in (0, 1, 12345):
        np.random.seed(seed)
        want = _old_bits(shape, 1 - p, device, dtype)
        after_old = np.random.rand()
        np.random.seed(seed)
        bits = _packed_bits(x, 1 - p)
        after_new = np.random.rand()
        assert bits.device == x.device and bits.dtype == dtype
        np.testing.assert_array_equal(bits.numpy(), want)
        assert after_new == after_old


@pytest.mark.parametrize("keep", [0.7, 1 / 3, 0.1, 0.9, 0.5, 0.0, 1.0])
def test_dropout_comparison_rounds_keep_to_float32(keep, monkeypatch, device):
    """Draws on either side of keep and of float32(keep): the new mask is the old one,
    and both are `float32(draw) <= float32(keep)` (NumPy's float32, API.md 2.8)."""
    k32 = np.float32(keep)
    up, down = np.nextafter(k32, np.float32(2)), np.nextafter(k32, np.float32(-1))
    draws = np.array([keep, float(k32), float(up), float(down), np.nextafter(keep, 2.0),
                      np.nextafter(keep, -1.0), (float(k32) + float(up)) / 2,
                      (float(k32) + float(down)) / 2, 0.0, 0.999999], dtype=np.float64)
    draws = np.clip(draws, 0.0, np.nextafter(1.0, 0.0))
    monkeypatch.setattr(np.random, "rand", lambda *shape: draws.reshape(shape).copy())
    x = ndl.init.ones(draws.size, device=device)
    got = _packed_bits(x, keep).numpy()
    old = _old_bits((draws.size,), keep, device, "float32")
    want = draws.astype(np.float32) <= k32
    want = np.packbits(np.concatenate([want, np.zeros(6, bool)]), bitorder="little")
    np.testing.assert_array_equal(got, old)
    np.testing.assert_array_equal(got, want.view("<u2").astype("float32"))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_dropout_forward_and_backward_with_the_old_mask(p, dtype, device):
    """Dropout(p)(x) == x * mask / (1 - p) with the old path's mask for the same seed,
    and the gradient mask / (1 - p) (NumPy)."""
    rng = np.random.default_rng(7)
    xv = rng.standard_normal((33, 17)).astype(dtype)
    np.random.seed(3)
    mask = ndl.init.randb(33, 17, p=1 - p, device=device, dtype=dtype).numpy()
    np.random.seed(3)
    x = ndl.Tensor(xv, device=device, dtype=dtype, requires_grad=True)
    y = ndl.nn.Dropout(p)(x)
    y.sum().backward()
    c = np.array(1 - p, dtype=dtype)
    want = np.zeros_like(xv) if p >= 1 else (xv * mask) / c
    np.testing.assert_array_equal(y.numpy(), want)
    want_g = np.zeros_like(xv) if p >= 1 else (np.ones_like(xv) * mask) / c
    np.testing.assert_array_equal(x.grad.numpy(), want_g)


def test_softmax_loss_passes_its_host_labels(device):
    """SoftmaxLoss reads y once and gives the op those values on the cpu device, so the
    op's forward and backward read host memory (Note [Labels read once], ops_softmax.c)."""
    z = ndl.Tensor(np.arange(12.0).reshape(4, 3), device=device, requires_grad=True)
    y = ndl.Tensor([0, 2, 1, 2], device=device)
    loss = ndl.nn.SoftmaxLoss()(z, y)
    lab = loss.inputs[1]
    assert lab is not y and lab.device == ndl.cpu() and not lab.requires_grad
    assert lab.dtype == y.dtype
    np.testing.assert_array_equal(lab.numpy(), [0, 2, 1, 2])
    loss.backward(create_graph=False)
    tz = torch.tensor(np.arange(12.0).reshape(4, 3).astype("float32"), requires_grad=True)
    tl = torch.nn.functional.cross_entropy(tz, torch.tensor([0, 2, 1, 2]))
    tl.backward()
    np.testing.assert_allclose(loss.numpy(), tl.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(z.grad.numpy(), tz.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_direct_op_keeps_host_labels(device):
    """Called directly with labels on a device, the op copies them to the cpu device
    once, when applied, and its node keeps the copy, so the forward and backward read
    host memory (Note [Inputs read on the host], op.c); on the cpu it keeps y itself."""
    zv = np.arange(12.0).reshape(4, 3).astype("float32")
    z = ndl.Tensor(zv, device=device, requires_grad=True)
    y = ndl.Tensor([0, 2, 1, 2], device=device, requires_grad=False)
    loss = ndl.ops.softmax_cross_entropy(z, y)
    lab = loss.inputs[1]
    if device == ndl.cpu():
        assert lab is y
    else:
        assert lab is not y and lab.device == ndl.cpu() and not lab.requires_grad
        assert lab.dtype == y.dtype
    np.testing.assert_array_equal(lab.numpy(), [0, 2, 1, 2])
    # labels made with the default requires_grad=True: kept detached, no gradient
    y2 = ndl.Tensor([0, 2, 1, 2], device=device)
    loss2 = ndl.ops.softmax_cross_entropy(z, y2)
    assert loss2.inputs[1] is not y2 and loss2.inputs[1].device == ndl.cpu()
    loss2.backward()
    assert y2.grad is None
    loss.backward(create_graph=False)
    tz = torch.tensor(zv, requires_grad=True)
    tl = torch.nn.functional.cross_entropy(tz, torch.tensor([0, 2, 1, 2]))
    tl.backward()
    np.testing.assert_allclose(loss.numpy(), tl.detach().numpy(), rtol=1e-6)
    np.testing.assert_allclose(z.grad.numpy(), tz.grad.numpy(), rtol=1e-5, atol=1e-7)
    assert z.grad.device == device


def test_softmax_loss_labels_get_no_gradient(device):
    """As in the contract's formula, where one_hot(k, y) is a constant."""
    z = ndl.Tensor(np.ones((2, 3)), device=device, requires_grad=True)
    y = ndl.Tensor([0.0, 1.0], device=device, requires_grad=True)
    loss = ndl.nn.SoftmaxLoss()(z, y)
    assert loss.inputs[1] is not y
    loss.backward()
    assert y.grad is None and z.grad is not None


@pytest.mark.parametrize("bad,msg", [(7.0, "label 7 is out of range for 5 classes"),
                                     (1.5, "label 1.5 is not an integer")])
def test_direct_op_still_checks_labels(bad, msg, device):
    z = ndl.Tensor(np.zeros((2, 5)), device=device)
    y = ndl.Tensor([0.0, bad], device=device)
    with pytest.raises(ValueError, match=msg):
        ndl.ops.softmax_cross_entropy(z, y)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("counts", [[1, 2, 3, 4, 5, 6, 7], list(range(1, 200)), [3]])
def test_loss_is_the_row_order_double_sum(counts, dtype, device):
    """Rows of c zeros and -inf elsewhere have the loss log(c) exactly (max 0, a sum
    of ones): the loss is their sum in row order in double, / B, rounded to dtype."""
    B, k = len(counts), max(counts) + 1
    z = np.full((B, k), -np.inf)
    for r, c in enumerate(counts):
        z[r, :c] = 0.0
    y = np.zeros(B)
    total = 0.0
    for c in counts:
        total += math.log(c)
    want = np.array(total / B).astype(dtype)
    loss = ndl.nn.SoftmaxLoss()(ndl.Tensor(z, device=device, dtype=dtype),
                                ndl.Tensor(y, device=device, dtype=dtype))
    assert loss.shape == () and loss.dtype == dtype and loss.device == device
    got = loss.numpy()
    assert got.tobytes() == want.tobytes(), (got, want)


def test_loss_of_zero_rows_is_nan(device):
    loss = ndl.ops.softmax_cross_entropy(ndl.Tensor(np.zeros((0, 3)), device=device),
                                         ndl.Tensor(np.zeros(0), device=device))
    assert loss.shape == () and np.isnan(loss.numpy())


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("g", [0.1, 3.7, -2.0, 1e-30])
def test_fused_backward_reads_g_on_the_device(g, dtype, device):
    """backward(g, create_graph=False): the fused slot computes g / B from the device's
    g in its dtype; the gradient is the composed backward's (bit for bit on the CPU) and
    torch's."""
    rng = np.random.default_rng(11)
    B, k = 37, 19
    z = rng.standard_normal((B, k))
    y = rng.integers(0, k, B).astype(np.float64)
    grads = []
    for create_graph in (True, False):
        t = ndl.Tensor(z, dtype=dtype, device=device, requires_grad=True)
        loss = ndl.nn.SoftmaxLoss()(t, ndl.Tensor(y, dtype=dtype, device=device))
        loss.backward(ndl.Tensor(g, dtype=dtype, device=device), create_graph=create_graph)
        grads.append(t.grad.numpy())
    if device == ndl.cpu():
        np.testing.assert_array_equal(grads[1], grads[0])
    tz = torch.tensor(z.astype(dtype), requires_grad=True)
    torch.nn.functional.cross_entropy(tz, torch.tensor(y).long()).backward(
        torch.tensor(g, dtype=tz.dtype))
    tol = dict(rtol=1e-5, atol=1e-6 * abs(g)) if dtype == "float32" else dict(rtol=1e-12,
                                                                              atol=0)
    np.testing.assert_allclose(grads[1], tz.grad.numpy(), **tol)


def test_clip_grad_norm_one_sum_mixed_dtypes(device):
    """The norm over float32 and float64 gradients, against NumPy in float64 and torch's
    clip_grad_norm_; the gradients scaled as torch scales them."""
    rng = np.random.default_rng(5)
    vals = [rng.standard_normal((7, 5)), rng.standard_normal(5), rng.standard_normal((3, 3))]
    dts = ["float32", "float64", "float32"]
    params = [ndl.nn.Parameter(ndl.Tensor(v, device=device, dtype=d)) for v, d in zip(vals, dts)]
    for p, v, d in zip(params, vals, dts):
        p.grad = ndl.Tensor(v * 3, device=device, dtype=d)
    opt = ndl.optim.SGD(params, lr=0.1)
    total = opt.clip_grad_norm(max_norm=0.5)
    want = math.sqrt(sum(float(np.sum((v * 3).astype(d).astype(np.float64) ** 2))
                         for v, d in zip(vals, dts)))
    assert total == pytest.approx(want, rel=1e-6)
    tps = [torch.nn.Parameter(torch.tensor(v.astype(d))) for v, d in zip(vals, dts)]
    for tp, v, d in zip(tps, vals, dts):
        tp.grad = torch.tensor((v * 3).astype(d))
    torch.nn.utils.clip_grad_norm_(tps, 0.5)
    for p, tp in zip(params, tps):
        np.testing.assert_allclose(p.grad.numpy(), tp.grad.numpy(), rtol=1e-5)
    assert all(p.grad.device == device for p in params)


def test_clip_grad_norm_without_grads():
    p = ndl.nn.Parameter(ndl.Tensor([1.0, 2.0]))
    assert ndl.optim.SGD([p]).clip_grad_norm() == 0.0
