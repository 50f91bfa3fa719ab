"""Every op of API.md 4.1 (except Conv): forward vs NumPy, values and gradients
vs PyTorch autograd, gradients vs float64 finite differences; plus the exact
cases the table cannot express (relu at 0, stable log-sum-exp in float32, tuple
folding, op parameters).

The table lives in autograd_cases.py (shared with the np-mode run).
"""
import numpy as np
import pytest

import needle as ndl
from needle import ops

from autograd_cases import (CASES, case_params, check_against_references,
                            check_finite_differences, np_logsoftmax, np_lse)


# --------------------------------------------------------------------------
# the table: every row, every layout
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("case, layout", case_params())
def test_op_vs_numpy_and_torch(case, layout, dtype, device):
    check_against_references(case, layout, dtype, device=device)


@pytest.mark.parametrize("case, layout", case_params(layouts=False))
def test_op_on_cpu_numpy_device(case, layout):
    """The same rows on the second host device: results and gradients stay there."""
    check_against_references(case, layout, "float32", device=ndl.cpu_numpy())


@pytest.mark.parametrize("case, layout", case_params([c for c in CASES if c.fd]))
def test_op_gradient_finite_differences(case, layout):
    check_finite_differences(case, layout)


def test_table_covers_every_op():
    """Each op function of API.md 4.1 (Conv aside) appears in some row."""
    names = ["add", "add_scalar", "multiply", "mul_scalar", "power", "power_scalar", "divide",
             "divide_scalar", "negate", "log", "exp", "relu", "tanh", "transpose", "reshape",
             "broadcast_to", "summation", "matmul", "logsoftmax", "logsumexp", "stack", "split",
             "flip", "dilate", "undilate", "make_tuple", "fused_add_scalars"]
    ids = " ".join(c.id for c in CASES)
    for n in names:
        assert callable(getattr(ndl, n)), n
        assert n in ids, n


# --------------------------------------------------------------------------
# exact boundary behaviour
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_relu_gradient_is_zero_at_zero(dtype, device):
    x = ndl.Tensor(np.array([-2.0, -0.0, 0.0, 1e-30, 3.0]), dtype=dtype, device=device)
    y = ndl.relu(x)
    np.testing.assert_array_equal(y.numpy(), [0.0, 0.0, 0.0, 1e-30 if dtype == "float64"
                                              else np.float32(1e-30), 3.0])
    y.backward(ndl.Tensor(np.array([5.0, 7.0, 11.0, 13.0, 17.0]), dtype=dtype, device=device))
    assert y.device == device and x.grad.device == device
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0, 0.0, 13.0, 17.0])


def test_relu_second_derivative_is_zero(device):
    x = ndl.Tensor(np.array([-1.0, 0.0, 2.0]), dtype="float64", device=device)
    (ndl.relu(x) * ndl.relu(x)).sum().backward()  # d/dx relu(x)^2 = 2 relu(x)
    np.testing.assert_allclose(x.grad.numpy(), [0.0, 0.0, 4.0])
    x.grad.sum().backward()  # d/dx 2 relu(x) = 2·1[x>0]
    np.testing.assert_allclose(x.grad.numpy(), [0.0, 0.0, 2.0])


def test_power_scalar_zero_exponent_is_one_with_zero_gradient(device):
    x = ndl.Tensor(np.array([0.5, 2.0, -3.0]), dtype="float64", device=device)
    y = ndl.power_scalar(x, 0)
    np.testing.assert_array_equal(y.numpy(), [1.0, 1.0, 1.0])
    y.backward()
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0, 0.0])


@pytest.mark.parametrize("s, grad_at_0", [(0, 0.0), (0.0, 0.0), (1, 1.0), (2, 0.0), (3, 0.0),
                                         (1.5, 0.0)])
def test_power_scalar_gradient_at_zero_base(s, grad_at_0, device):
    """s·a^(s−1) at a = 0 (0^0 = 1); s = 0 has derivative 0 everywhere, not 0·inf."""
    x = ndl.Tensor(np.array([0.0, 2.0]), dtype="float64", device=device)
    y = ndl.power_scalar(x, s)
    np.testing.assert_array_equal(y.numpy(), [0.0 ** float(s), 2.0 ** float(s)])
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), [grad_at_0, s * 2.0 ** (s - 1)], rtol=1e-15)


def test_power_scalar_negative_base_integral_exponent_keeps_sign(device):
    x = ndl.Tensor(np.array([-2.0, -0.5]), dtype="float32", device=device)
    y = ndl.power_scalar(x, 3)
    np.testing.assert_allclose(y.numpy(), [-8.0, -0.125], rtol=1e-6)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), [12.0, 0.75], rtol=1e-6)


# --------------------------------------------------------------------------
# LogSumExp / LogSoftmax stability in float32 (API.md 4.4)
# --------------------------------------------------------------------------

def ulp32(x):
    """Elementwise float32 ulp of |x| (the gap below it; 0 at 0)."""
    x = np.abs(np.asarray(x, dtype=np.float32))
    return (x - np.nextafter(x, np.float32(0))).astype(np.float64)


def assert_within_ulps(got, ref, scale, what):
    """|got - ref| <= 2 ulp(scale) + 1e-6 elementwise: float32 rounding at that scale."""
    err = np.abs(got.astype(np.float64) - ref)
    bound = 2 * ulp32(scale) + 1e-6
    assert np.all(err <= bound), f"{what}: got {got}, want {ref}, bound {bound}"


# float32-representable inputs whose exact softmax is known; (name, rows)
HUGE = {
    "1e8_pair": [[1e8, 1e8], [1e8, 1e8 - 8.0]],
    "1e10_pair": [[1e10, 1e10], [1e10, 1e10 - 2048.0]],
    "1e10_vs_0": [[1e10, 0.0], [0.0, 1e10]],
    "neg_1e10": [[-1e10, -1e10], [-1e10, -1e10 + 1024.0]],
    "mixed_rows": [[1e8, 1e8], [-1e10, -1e10]],
    "1e8_triple": [[1e8, 1e8, 1e8], [1e8 - 16.0, 1e8, 1e8 - 8.0]],
    # attention-style masking with -(float32 max) (item 10.22)
    "masked": [[0.0, -3.4028235e38, 1.0], [-3.4028235e38, -3.4028235e38, -3.4028235e38]],
}


def softmax64(z, axes):
    m = np.max(z, axis=axes, keepdims=True)
    e = np.exp(z - m)
    return e / np.sum(e, axis=axes, keepdims=True)


def seed_like(shape):
    return np.linspace(0.5, 1.5, int(np.prod(shape))).reshape(shape).astype(np.float32)


# NOTE: the references are computed here in float64 with the max shift, not with
# PyTorch: torch.logsumexp's backward uses exp(z - y) with the stored result y,
# which in float64 is already wrong for |z| ~ 3e38 (the trap API 4.4 describes).

@pytest.mark.parametrize("axes", [None, 1, (1,), 0, (0, 1)], ids=str)
@pytest.mark.parametrize("name", sorted(HUGE))
def test_logsumexp_float32_huge_inputs(name, axes, device):
    z = np.array(HUGE[name], dtype=np.float32)
    z64 = z.astype(np.float64)
    ref = np_lse(z64, axes)
    g = seed_like(ref.shape)
    gk = g.astype(np.float64)
    red = tuple(range(z.ndim)) if axes is None else (axes if isinstance(axes, tuple) else (axes,))
    ref_grad = np.expand_dims(gk, red) * softmax64(z64, red)
    x = ndl.Tensor(z, device=device)
    y = ndl.logsumexp(x, axes=axes)
    assert y.shape == ref.shape
    got = y.numpy()
    assert np.all(np.isfinite(got)), got
    # exact up to float32 rounding at the scale of the max (or of the result)
    m = np.max(z64, axis=axes)
    assert_within_ulps(got, ref, np.maximum(np.abs(ref), np.abs(m)), "logsumexp")
    y.backward(ndl.Tensor(g, device=device))
    assert x.grad.device == device and np.all(np.isfinite(x.grad.numpy()))
    # softmax weights are exact in float32 here: exp(z - max) with small offsets
    np.testing.assert_allclose(x.grad.numpy(), ref_grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", sorted(HUGE))
def test_logsoftmax_float32_huge_inputs(name, device):
    z = np.array(HUGE[name], dtype=np.float32)
    z64 = z.astype(np.float64)
    ref = np_logsoftmax(z64)
    g = seed_like(z.shape)
    s = softmax64(z64, (1,))
    ref_grad = g - s * g.astype(np.float64).sum(1, keepdims=True)
    x = ndl.Tensor(z, device=device)
    y = ndl.logsoftmax(x)
    assert y.shape == z.shape
    got = y.numpy()
    assert np.all(np.isfinite(got)), got
    # z − lse(z) in float32 may carry the rounding of z and of lse(z)
    lse = np_lse(z64, (1,))[:, None]
    assert_within_ulps(got, ref, np.maximum(np.abs(z64), np.abs(lse)), "logsoftmax")
    y.backward(ndl.Tensor(g, device=device))
    assert x.grad.device == device and np.all(np.isfinite(x.grad.numpy()))
    np.testing.assert_allclose(x.grad.numpy(), ref_grad, rtol=1e-5, atol=1e-6)


def test_logsumexp_1e8_gradient_not_doubled(device):
    """API 4.4's trap: exp(z − y) with the stored float32 y gives 1 instead of 1/2."""
    x = ndl.Tensor(np.array([1e8, 1e8], dtype=np.float32), device=device)
    ndl.logsumexp(x).backward()
    np.testing.assert_allclose(x.grad.numpy(), [0.5, 0.5], rtol=1e-7)


def test_logsumexp_moderately_large_float32_value(device):
    z = np.array([[100.0, 100.0, 99.0], [-100.0, -101.0, -100.5]], dtype=np.float32)
    y = ndl.logsumexp(ndl.Tensor(z, device=device), axes=(1,)).numpy()
    m = z.astype(np.float64).max(1)
    ref = np.log(np.exp(z.astype(np.float64) - m[:, None]).sum(1)) + m
    np.testing.assert_allclose(y, ref, rtol=2e-7)


# --------------------------------------------------------------------------
# tuples (API.md 3.6, 4.2)
# --------------------------------------------------------------------------

def t32(*shape, device=None):
    return ndl.Tensor(np.random.randn(*shape).astype(np.float32), device=device)


def test_tuple_get_item_folds_make_tuple():
    a, b = t32(2, 3), t32(4)
    t = ndl.make_tuple(a, b)
    assert isinstance(t, ndl.TensorTuple)
    assert isinstance(t.op, ops.MakeTensorTuple)
    assert ndl.tuple_get_item(t, 0) is a
    assert ndl.tuple_get_item(t, 1) is b
    assert ops.TupleGetItem(1)(t) is b
    assert ops.TupleGetItem(1)(t, fold_const=True) is b
    assert t[0] is a and t[1] is b


def test_tuple_get_item_without_folding_makes_a_node():
    a, b = t32(2, 3), t32(4)
    t = ndl.make_tuple(a, b)
    n = ops.TupleGetItem(1)(t, fold_const=False)
    assert n is not b
    assert isinstance(n.op, ops.TupleGetItem) and n.op.index == 1
    assert len(n.inputs) == 1 and n.inputs[0] is t
    np.testing.assert_array_equal(n.numpy(), b.numpy())


def test_tuple_get_item_on_non_make_tuple_makes_a_node():
    a = t32(3, 2)
    parts = ndl.split(a, 0)
    assert isinstance(parts, ndl.TensorTuple)
    assert isinstance(parts.op, ops.Split) and parts.op.axis == 0
    p = parts[2]
    assert isinstance(p.op, ops.TupleGetItem) and p.inputs[0] is parts
    np.testing.assert_array_equal(p.numpy(), a.numpy()[2])


@pytest.mark.parametrize("index", [2, 5, -3])
def test_tuple_get_item_out_of_range(index):
    t = ndl.make_tuple(t32(2), t32(2))
    with pytest.raises(IndexError):
        ndl.tuple_get_item(t, index)
    with pytest.raises(IndexError):
        ops.TupleGetItem(index)(t, fold_const=False)


def test_tensor_tuple_protocol():
    a, b, c = t32(2), t32(2, 2), t32(3)
    t = ndl.make_tuple(a, b, c)
    assert len(t) == 3
    items = list(t)
    assert items[0] is a and items[1] is b and items[2] is c
    tup = t.tuple()
    assert isinstance(tup, tuple) and len(tup) == 3 and tup[2] is c
    assert repr(t) == "needle.TensorTuple" + str(tup)
    d = t.detach()
    assert isinstance(d, ndl.TensorTuple) and d.is_leaf() and not d.requires_grad
    assert len(d) == 3
    np.testing.assert_array_equal(d[1].numpy(), b.numpy())


def test_tensor_tuple_add():
    a, b, c, d = t32(2), t32(3), t32(2), t32(3)
    s = ndl.make_tuple(a, b) + ndl.make_tuple(c, d)
    assert isinstance(s, ndl.TensorTuple) and len(s) == 2
    np.testing.assert_allclose(s[0].numpy(), a.numpy() + c.numpy(), rtol=1e-6)
    np.testing.assert_allclose(s[1].numpy(), b.numpy() + d.numpy(), rtol=1e-6)
    (s[0].sum() + s[1].sum() * 2.0).backward()
    np.testing.assert_array_equal(a.grad.numpy(), np.ones(2))
    np.testing.assert_array_equal(d.grad.numpy(), np.full(3, 2.0))


def test_stack_node_structure():
    a, b = t32(2, 3), t32(2, 3)
    s = ndl.stack([a, b], 1)
    assert isinstance(s.op, ops.Stack) and s.op.axis == 1
    assert isinstance(s.inputs[0], ndl.TensorTuple)
    assert isinstance(s.inputs[0].op, ops.MakeTensorTuple)
    assert s.inputs[0].inputs[0] is a and s.inputs[0].inputs[1] is b


def test_stack_gradient_is_split_and_split_gradient_is_stack(device):
    a, b = t32(2, 3, device=device), t32(2, 3, device=device)
    s = ndl.stack([a, b], 0)
    gs = s.op.gradient_as_tuple(ndl.Tensor(np.ones((2, 2, 3), np.float32), device=device), s)
    assert len(gs) == 1 and isinstance(gs[0], ndl.TensorTuple) and len(gs[0]) == 2
    np.testing.assert_array_equal(gs[0][1].numpy(), np.ones((2, 3), np.float32))
    x = t32(3, 2, device=device)
    parts = ndl.split(x, 1)
    g = ndl.make_tuple(t32(3, device=device), t32(3, device=device))
    gx = parts.op.gradient_as_tuple(g, parts)
    assert len(gx) == 1 and isinstance(gx[0], ndl.Tensor) and gx[0].shape == (3, 2)
    assert gx[0].device == device
    np.testing.assert_array_equal(gx[0].numpy(), np.stack([g[0].numpy(), g[1].numpy()], 1))


def test_fused_add_scalars_values_and_gradient(device):
    a = t32(3, device=device)
    t = ndl.fused_add_scalars(a, 2.0, -1.0)
    assert isinstance(t, ndl.TensorTuple) and len(t) == 2
    assert isinstance(t.op, ops.FusedAddScalars) and t.op.c0 == 2.0 and t.op.c1 == -1.0
    np.testing.assert_allclose(t[0].numpy(), a.numpy() + 2.0, rtol=1e-6)
    np.testing.assert_allclose(t[1].numpy(), a.numpy() - 1.0, rtol=1e-6)
    (t[0] * 2.0 + t[1] * 5.0).sum().backward()
    assert a.grad.device == device
    np.testing.assert_allclose(a.grad.numpy(), np.full(3, 7.0))


# --------------------------------------------------------------------------
# op parameters are stored as attributes (API.md 4.1)
# --------------------------------------------------------------------------

OP_PARAMS = [
    (lambda: ops.AddScalar(2.5), {"scalar": 2.5}),
    (lambda: ops.MulScalar(-3), {"scalar": -3}),
    (lambda: ops.PowerScalar(0.5), {"scalar": 0.5}),
    (lambda: ops.DivScalar(4.0), {"scalar": 4.0}),
    (lambda: ops.Transpose((0, 2)), {"axes": (0, 2)}),
    (lambda: ops.Transpose(), {"axes": None}),
    (lambda: ops.Reshape((2, 3)), {"shape": (2, 3)}),
    (lambda: ops.BroadcastTo((4, 3)), {"shape": (4, 3)}),
    (lambda: ops.Summation((0, 1)), {"axes": (0, 1)}),
    (lambda: ops.Summation(), {"axes": None}),
    (lambda: ops.LogSumExp((1,)), {"axes": (1,)}),
    (lambda: ops.LogSumExp(), {"axes": None}),
    (lambda: ops.Stack(2), {"axis": 2}),
    (lambda: ops.Split(1), {"axis": 1}),
    (lambda: ops.TupleGetItem(3), {"index": 3}),
    (lambda: ops.FusedAddScalars(1.0, 2.0), {"c0": 1.0, "c1": 2.0}),
    (lambda: ops.Flip((0, 1)), {"axes": (0, 1)}),
    (lambda: ops.Dilate((0,), 2), {"axes": (0,), "dilation": 2}),
    (lambda: ops.UnDilate((1,), 3), {"axes": (1,), "dilation": 3}),
]


@pytest.mark.parametrize("make, attrs", OP_PARAMS, ids=[str(a) for _, a in OP_PARAMS])
def test_op_parameters_are_attributes(make, attrs):
    op = make()
    assert isinstance(op, ops.TensorOp) or isinstance(op, ops.TensorTupleOp)
    for k, v in attrs.items():
        assert getattr(op, k) == v, (k, getattr(op, k), v)


@pytest.mark.parametrize("cls", ["EWiseAdd", "AddScalar", "EWiseMul", "MulScalar", "EWisePow",
                                 "PowerScalar", "EWiseDiv", "DivScalar", "Negate", "Log", "Exp",
                                 "ReLU", "Tanh", "Transpose", "Reshape", "BroadcastTo",
                                 "Summation", "MatMul", "LogSoftmax", "LogSumExp", "Stack",
                                 "TupleGetItem", "Flip", "Dilate", "UnDilate"])
def test_tensor_op_classes(cls):
    c = getattr(ops, cls)
    assert issubclass(c, ops.TensorOp) and issubclass(c, ops.Op)
    assert getattr(ndl, cls) is c


@pytest.mark.parametrize("cls", ["MakeTensorTuple", "Split", "FusedAddScalars"])
def test_tensor_tuple_op_classes(cls):
    c = getattr(ops, cls)
    assert issubclass(c, ops.TensorTupleOp) and issubclass(c, ops.Op)
    assert not issubclass(c, ops.TensorOp)


def test_op_results_are_plain_tensors_for_subclass_inputs():
    class Sub(ndl.Tensor):
        pass

    p = Sub(np.ones((2, 2), np.float32))
    assert isinstance(p, Sub)
    for r in [p * 2.0, p + p, p.exp(), p @ p, p.sum(), ndl.relu(p)]:
        assert type(r) is ndl.Tensor


def test_mixed_float32_float64_operands_give_float64(device):
    a = ndl.Tensor(np.ones(3), dtype="float32", device=device)
    b = ndl.Tensor(np.ones(3), dtype="float64", device=device)
    assert (a + b).dtype == "float64" and (b * a).dtype == "float64"
    assert (a + b).device == device
    np.testing.assert_array_equal((a + b).numpy(), np.full(3, 2.0))


@pytest.mark.parametrize("s", [2.5, np.float64(1e-3), np.float64(0.1), 3, np.array(0.7)],
                         ids=repr)
def test_scalar_ops_keep_float32(s, device):
    a = ndl.Tensor(np.random.randn(4), dtype="float32", device=device)
    for r in [a + s, a * s, a / s, a - s, ndl.power_scalar(ndl.relu(a) + 1.0, s)]:
        assert r.dtype == "float32"
        assert r.cached_data.dtype == "float32"


def test_scalar_parameter_size1_array(device):
    """API 4.1: scalar parameters include size-1 NumPy arrays (not only 0-d ones)."""
    a = ndl.Tensor(np.array([1.0, 2.0]), dtype="float64", device=device)
    s = np.array([0.5])
    for r, ref in [(ndl.add_scalar(a, s), [1.5, 2.5]), (ndl.mul_scalar(a, s), [0.5, 1.0]),
                   (ndl.divide_scalar(a, s), [2.0, 4.0]), (a * s, [0.5, 1.0])]:
        assert r.shape == (2,)
        np.testing.assert_allclose(r.numpy(), ref)
