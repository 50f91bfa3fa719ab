"""The op rows of csrc/ops.def are the only list of ops: everything a row
promises exists (class, function, methods, kernel-module entries, np mode),
and the hand-kept type stub has not drifted from them."""
import os
import re

import numpy as np
import pytest

import needle as ndl
from needle import _C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(ROOT, "csrc", "ops.def")) as f:
    DEF = f.read()
with open(os.path.join(ROOT, "needle", "_C.pyi")) as f:
    STUB = f.read()


def rows(kind):
    """The argument lists of the NDL_<kind>( ... ) rows."""
    return [[a.strip() for a in m.split(",")]
            for m in re.findall(rf"^NDL_{kind}\(([^)]*)\)", DEF, re.M)]


def stub_methods(cls):
    body = STUB.split(f"\nclass {cls}")[1].split("\nclass ")[0]
    return set(re.findall(r"def (\w+)\(", body))


def test_every_row_is_an_op_class_and_function():
    classes = [r[0] for k in ("UNARY", "BINARY", "SCALAR", "REDUCE", "OP", "TUPLE_OP")
               for r in rows(k)]
    assert sorted(classes) == sorted(_C.OP_CLASSES)
    assert len(_C.OP_CLASSES) == len(_C.OP_FUNCTIONS)
    for cls, func in zip(_C.OP_CLASSES, _C.OP_FUNCTIONS):
        assert issubclass(getattr(ndl.ops, cls), ndl.ops.TensorOp) or \
            issubclass(getattr(ndl.ops, cls), ndl.ops.TensorTupleOp)
        assert callable(getattr(ndl.ops, func)) and getattr(ndl, func) is getattr(ndl.ops, func)
        assert cls in ndl.ops.__all__ and func in ndl.ops.__all__


def test_row_methods_exist_on_tensor_and_ndarray_and_in_the_stub():
    t_methods = [r[5] for r in rows("UNARY")] + [r[4] for r in rows("REDUCE")] + \
        [r[5] for r in rows("OP")]
    nd_methods = [r[5] for r in rows("UNARY")] + [r[3] for r in rows("UNARY_KERNEL")] + \
        [r[3] for r in rows("BINARY_KERNEL")] + [r[4] for r in rows("REDUCE")]
    t_methods = [m.strip('"') for m in t_methods if m != "NULL"]
    nd_methods = [m.strip('"') for m in nd_methods if m != "NULL"]
    assert {"sin", "cos", "sigmoid", "max", "permute"} <= set(t_methods)
    for m in t_methods:
        assert callable(getattr(ndl.Tensor, m)), m
        assert m in stub_methods("Tensor"), f"Tensor.{m} missing from needle/_C.pyi"
    for m in nd_methods:
        assert callable(getattr(ndl.backend_ndarray.NDArray, m)), m
        assert m in stub_methods("NDArray"), f"NDArray.{m} missing from needle/_C.pyi"


def test_kernel_rows_reach_the_kernel_module():
    km = ndl.cpu()
    for r in rows("UNARY"):
        assert callable(getattr(km, "ewise_" + r[3])), r
    for r in rows("UNARY_KERNEL"):
        assert callable(getattr(km, "ewise_" + r[1])), r
    a = ndl.cpu().Array(3)
    out = ndl.cpu().Array(3)
    km.from_numpy(np.array([0.0, 1.0, 2.0], dtype=np.float32), a)
    km.ewise_sin(a, out)
    np.testing.assert_allclose(km.to_numpy(out, (3,), (1,), 0), np.sin([0.0, 1.0, 2.0]),
                               rtol=1e-6)


@pytest.mark.parametrize("name", ["sin", "cos", "sigmoid"])
def test_new_unary_ndarray_methods_match_numpy(name):
    x = np.random.randn(5, 7).astype(np.float32) * 4
    ref = {"sin": np.sin, "cos": np.cos, "sigmoid": lambda v: 1 / (1 + np.exp(-v))}[name](
        x.astype(np.float64))
    for view in (x, x.T):
        a = ndl.backend_ndarray.array(view)
        np.testing.assert_allclose(getattr(a, name)().numpy(), ref if view is x else ref.T,
                                   rtol=2e-6, atol=1e-7)


def test_op_parameters_are_attributes_of_the_same_names():
    assert ndl.ops.Max(axes=(1,)).axes == (1,)
    assert ndl.ops.Max().axes is None
    assert ndl.ops.Permute((2, 0, 1)).axes == (2, 0, 1)
    x = ndl.Tensor(np.ones((2, 3)))
    assert ndl.permute(x, (1, 0)).op.axes == (1, 0)
    assert ndl.max(x, (0,)).op.axes == (0,)
    assert (ndl.ops.Conv().stride, ndl.ops.Conv().padding) == (1, 0)
    assert (ndl.ops.Conv(2, padding=3).stride, ndl.ops.Conv(2, padding=3).padding) == (2, 3)


def test_bad_arguments_raise_clear_errors():
    x = ndl.Tensor(np.ones((2, 3, 4)))
    with pytest.raises(ValueError, match="Permute"):
        ndl.permute(x, (0, 1))
    with pytest.raises(ValueError, match="repeated"):
        ndl.permute(x, (0, 0, 1))
    with pytest.raises(ValueError, match="out of bounds"):
        ndl.max(x, (3,))
    with pytest.raises(ValueError, match="repeated"):
        ndl.max(x, (1, -2))
    with pytest.raises(ValueError, match="zero-size"):
        ndl.max(ndl.Tensor(np.ones((0, 3))), (0,))
    with pytest.raises(TypeError):
        ndl.sin(x, 2.0)


def test_sigmoid_is_one_node_and_stable():
    x = ndl.Tensor(np.array([-100.0, -1.0, 0.0, 1.0, 100.0]), dtype="float64")
    y = ndl.nn.Sigmoid()(x)
    assert isinstance(y.op, ndl.ops.Sigmoid)
    assert y.inputs[0] is x
    np.testing.assert_allclose(y.numpy(), 1 / (1 + np.exp(-x.numpy())), rtol=1e-15)
    # float32: the composed 1 / (1 + exp(100)) overflows to 1/inf = 0; the op keeps 3.7e-44
    assert ndl.sigmoid(ndl.Tensor([-100.0], dtype="float32")).numpy()[0] > 0
    y.sum().backward()
    s = y.numpy()
    np.testing.assert_allclose(x.grad.numpy(), s * (1 - s), rtol=1e-12)


def test_max_second_derivative_through_the_graph():
    """max(x * x) over axis 1: grad 2x at the maximum, and its own gradient 2 there."""
    x = ndl.Tensor(np.array([[1.0, -3.0, 2.0], [0.5, 0.25, -0.75]]), dtype="float64")
    ndl.max(x * x, (1,)).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [[0, -6, 0], [0, 0, -1.5]])
    x.grad.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), [[0, 2, 0], [0, 0, 2]])
