"""needle.gradcheck, detect_anomaly, profile and the print options, against known cases."""
import re

import numpy as np
import pytest
import torch

import needle as ndl
from needle import tools

import autograd_cases as ac


class BadSquare(ndl.TensorOp):
    """x * x with a deliberately wrong gradient (x instead of 2 x)."""

    def compute(self, a):
        return a * a

    def gradient(self, out_grad, node):
        return out_grad * node.inputs[0]


class GoodSquare(BadSquare):
    def gradient(self, out_grad, node):
        return out_grad * node.inputs[0] * 2.0


# -- gradcheck ---------------------------------------------------------------

def test_gradcheck_catches_a_wrong_python_gradient_and_names_the_op():
    rng = np.random.default_rng(0)
    x, w = rng.random((3, 4)) * 0.5, rng.random((4, 2))
    with pytest.raises(tools.GradcheckError) as e:
        ndl.gradcheck(lambda x, w: BadSquare()(x @ w).exp().sum(), [x, w])
    msg = str(e.value)
    assert "The op it came from: BadSquare" in msg
    m = re.search(r"worst at input (\d) \(shape \((\d), (\d)\)\), element \((\d), (\d)\): "
                  r"analytic (\S+), numeric (\S+) ", msg)
    assert m, msg
    # The numbers reported are the ones PyTorch gives for the wrong and the right rule.
    i, r, c = int(m.group(1)), int(m.group(4)), int(m.group(5))
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    y = tx @ tw
    out = (y * y).exp().sum()
    out.backward()
    right = (tx, tw)[i].grad[r, c].item()
    assert float(m.group(7)) == pytest.approx(right, rel=1e-4)
    assert float(m.group(6)) == pytest.approx(right / 2, rel=1e-4)


def test_gradcheck_passes_a_right_python_gradient():
    assert ndl.gradcheck(lambda x: GoodSquare()(x).sum(), [np.array([0.5, -1.0, 2.0])])


def test_gradcheck_returns_false_without_raising():
    assert ndl.gradcheck(lambda x: BadSquare()(x), [np.ones(3)], raise_exception=False) is False


def test_gradcheck_rejects_a_non_tensor_result():
    with pytest.raises(TypeError, match="must return a Tensor"):
        ndl.gradcheck(lambda x: 3.0, [np.ones(2)])


FD_CASES = [c for c in ac.CASES if c.fd]


@pytest.mark.parametrize("case", FD_CASES, ids=[c.id for c in FD_CASES])
def test_gradcheck_passes_every_builtin_op(case):
    np.random.seed(0)
    arrays = ac.make_leaf_arrays(case, "plain")
    assert ndl.gradcheck(case.nf, arrays, max_checks=50)


# -- detect_anomaly ------------------------------------------------------------

def test_detect_anomaly_names_the_forward_op_its_shapes_and_line():
    x = ndl.Tensor([1.0, -1.0, 4.0], requires_grad=True)
    y = ndl.Tensor([[2.0, 3.0, 1.0]])
    with pytest.raises(ndl.tools.AnomalyError) as e:
        with ndl.detect_anomaly():
            z = (x * y).exp()
            bad = (z - 1.0).log()  # log of a negative: NaN   # LINE-MARK
            bad.sum()
    msg = str(e.value)
    line = [k for k, s in enumerate(open(__file__), 1) if "LINE-MARK" in s and "bad =" in s][0]
    assert "Log made 1 NaN" in msg, msg
    assert "inputs of shapes (1, 3)" in msg
    assert f"test_tools.py:{line}" in msg


def test_detect_anomaly_names_the_op_whose_gradient_is_nan():
    x = ndl.Tensor([4.0, 0.0], requires_grad=True)
    with ndl.detect_anomaly():
        y = (x ** 0.5).sum()  # finite forward; gradient 0.5 / sqrt(0) = inf   # GRAD-MARK
        with pytest.raises(ndl.tools.AnomalyError) as e:
            y.backward()
    msg = str(e.value)
    line = [k for k, s in enumerate(open(__file__), 1) if "GRAD-MARK" in s and "y =" in s][0]
    assert "gradient of PowerScalar for its input 0 has 1 inf" in msg, msg
    assert f"test_tools.py:{line}" in msg


def test_detect_anomaly_is_off_outside_and_passes_clean_graphs():
    x = ndl.Tensor([1.0, 2.0], requires_grad=True)
    with ndl.detect_anomaly():
        (x.exp() * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.exp([1, 2]) * (1 + np.array([1, 2])),
                               rtol=1e-6)
    ndl.Tensor([0.0]).log()  # no error outside the block


# -- profile -------------------------------------------------------------------

def _rows(prof):
    return {(r["op"], r["phase"]): r for r in prof.table_rows()}


def test_profile_flops_of_matmul_equal_the_formula():
    m, k, n = 6, 7, 5
    a = ndl.init.randn(m, k, requires_grad=True)
    b = ndl.init.randn(k, n, requires_grad=True)
    with ndl.profile(peak=False) as prof:
        (a @ b).sum().backward()
    rows = _rows(prof)
    assert rows[("MatMul", "forward")]["calls"] == 1
    assert rows[("MatMul", "forward")]["MFLOP"] * 1e6 == pytest.approx(2 * m * k * n)
    # the gradient rule: g @ b^T and a^T @ g, two products of the same size
    assert rows[("MatMul", "backward")]["MFLOP"] * 1e6 == pytest.approx(4 * m * k * n)
    assert rows[("MatMul", "forward")]["MB"] * 1e6 == 4 * (m * k + k * n + m * n)


def test_profile_flops_of_fused_linear_and_attention_probs_count_the_product():
    m, k, n = 6, 7, 5
    x = ndl.init.randn(m, k, requires_grad=True)
    layer = ndl.nn.Linear(k, n)
    with ndl.profile(peak=False) as prof:
        layer(x).sum().backward()
    rows = _rows(prof)
    assert rows[("Linear", "forward")]["calls"] == 1
    # x @ W (2 m k n) and the bias add (m n), as MatMul and EWiseAdd would count them
    assert rows[("Linear", "forward")]["MFLOP"] * 1e6 == pytest.approx(2 * m * k * n + m * n)
    B, T, S, D = 2, 3, 4, 5
    q, kk = ndl.init.randn(B, T, D), ndl.init.randn(B, S, D)
    with ndl.profile(peak=False) as prof:
        ndl.ops.attention_probs(q, kk, 1.0, 0.0)
    assert _rows(prof)[("AttentionProbs", "forward")]["MFLOP"] * 1e6 == pytest.approx(
        (2 * D + 1) * B * T * S)


def test_profile_flops_of_conv_equal_the_formula():
    N, H, W, C, O, K, stride, pad = 2, 9, 8, 3, 4, 3, 2, 1
    x = ndl.init.randn(N, H, W, C)
    w = ndl.init.randn(K, K, C, O)
    x.requires_grad = w.requires_grad = True
    with ndl.profile(peak=False) as prof:
        y = ndl.conv(x, w, stride=stride, padding=pad)
        y.sum().backward()
    ho, wo = (H + 2 * pad - K) // stride + 1, (W + 2 * pad - K) // stride + 1
    assert y.shape == (N, ho, wo, O)
    assert _rows(prof)[("Conv", "forward")]["MFLOP"] * 1e6 == pytest.approx(
        2 * N * ho * wo * O * K * K * C)
    # the input's gradient (a transposed conv, Note [Transposed conv]) and the
    # weight's (taps `stride` apart) each do the forward's multiply-adds
    assert _rows(prof)[("Conv", "backward")]["MFLOP"] * 1e6 == pytest.approx(
        4 * N * ho * wo * O * K * K * C)


def test_profile_table_text_and_html():
    a = ndl.init.randn(4, 4, requires_grad=True)
    with ndl.profile() as prof:
        (a.relu() @ a).sum().backward()
    text = str(prof)
    assert text.splitlines()[0].split()[:3] == ["op", "phase", "calls"]
    assert "ReLU" in text and "backward" in text and "GFLOP/s" in text
    assert prof.peak[0] > 0 and prof.peak[1] > 0
    assert prof._repr_html_().startswith("<table>")


def test_profile_hook_is_removed_after_the_block():
    with ndl.profile(peak=False) as prof:
        ndl.init.ones(2) + 1
    before = dict(prof.rows)
    ndl.init.ones(2) * 3
    assert prof.rows == before


# -- print options ---------------------------------------------------------------

def test_course_repr_is_the_default():
    x = ndl.Tensor([1.0, 2.0], requires_grad=True)
    assert repr(x) == "needle.Tensor([1. 2.])"
    assert repr(x.cached_data) == "NDArray([1. 2.], device=cpu())"


def test_torch_style_repr():
    x = ndl.Tensor([[1.0, 2.0]], requires_grad=True)
    with ndl.printoptions(style="torch"):
        assert repr(x + x) == "tensor([[2., 4.]], requires_grad=True, grad_fn=<EWiseAdd>)"
        assert repr(ndl.Tensor([1.5], dtype="float64", requires_grad=False)) == (
            "tensor([1.5], dtype=float64)")
    assert repr(x) == "needle.Tensor([[1. 2.]])"


def test_summary_style_counts_nan_and_inf():
    x = ndl.Tensor([np.nan, 1.0, np.inf, 3.0], requires_grad=False)
    with ndl.printoptions(style="summary"):
        assert repr(x) == ("Tensor(shape=(4,), dtype=float32, device=cpu(), min=1, max=3, "
                           "mean=2, nan=1, inf=1)")


def test_precision_option():
    with ndl.printoptions(precision=2):
        assert repr(ndl.Tensor([1 / 3])) == "needle.Tensor([0.33])"


def test_bad_printoptions_raise():
    with pytest.raises(ValueError, match="style must be one of"):
        ndl.set_printoptions(style="fancy")
    with pytest.raises(ValueError, match="precision must be an int"):
        ndl.set_printoptions(precision=-1)
    assert ndl.get_printoptions()["style"] == "course"


def test_repr_html_shows_shape_dtype_device_and_a_truncated_table():
    x = ndl.Tensor(np.arange(200.0).reshape(2, 10, 10), requires_grad=True)
    h = x._repr_html_()
    assert "shape=(2, 10, 10)" in h and "dtype=float32" in h and "device=cpu()" in h
    assert h.count("<tr>") == 9  # 8 rows and the ellipsis row
    assert "showing [0, :, :]" in h
    assert "shape=(3,)" in ndl.init.ones(3).cached_data._repr_html_()


# -- the hooks hold no references ------------------------------------------------

def test_hooks_leak_nothing():
    import gc
    import sys
    a = ndl.Tensor(np.ones((3, 3)), requires_grad=True)
    op = ndl.ops.EWiseMul()

    def run():
        with ndl.profile(peak=False), ndl.detect_anomaly():
            for _ in range(50):
                op(a, a).sum().backward()
        a.grad = None

    run()
    gc.collect()
    refs, count = sys.getrefcount(op), ndl.autograd.TENSOR_COUNTER
    for _ in range(3):
        run()
    gc.collect()
    assert sys.getrefcount(op) == refs
    assert ndl.autograd.TENSOR_COUNTER == count
