"""Bad input to ops and to backward raises a clear Python exception naming the
offending shapes or axis, and never crashes the process (DESIGN "Reliability
rules"; API.md 4.1, 4.2, 3.4).
"""
import re

import numpy as np
import pytest

import needle as ndl
import needle.autograd as ag
from needle import ops

from autograd_isolation import run_forked


def shape_in(shape, msg):
    """`shape` appears in `msg`, written as a tuple or a list, spaces ignored."""
    m = re.sub(r"\s+", "", msg)
    inner = ",".join(str(d) for d in shape)
    if len(shape) == 1:
        forms = [f"({inner},)", f"({inner})", f"[{inner}]"]
    elif len(shape) == 0:
        forms = ["()", "[]"]
    else:
        forms = [f"({inner})", f"[{inner}]"]
    return any(f in m for f in forms)


def R(*shape, **kw):
    return ndl.Tensor(np.random.randn(*shape), **kw)


# --------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------

@pytest.mark.parametrize("sa, sb", [((2, 3), (4, 5)), ((3, 4), (3, 4)), ((2, 3, 4), (2, 5, 6)),
                                    ((2, 3, 4), (3, 4, 5)), ((4, 2, 3), (3, 3, 2))], ids=str)
def test_matmul_shape_mismatch(sa, sb):
    with pytest.raises(ValueError) as e:
        ndl.matmul(R(*sa), R(*sb))
    msg = str(e.value)
    assert shape_in(sa, msg) and shape_in(sb, msg), msg


def test_matmul_shape_mismatch_operator():
    with pytest.raises(ValueError) as e:
        R(2, 3) @ R(2, 3)
    assert shape_in((2, 3), str(e.value)), str(e.value)


@pytest.mark.parametrize("name, f", [
    ("add", lambda a, b: a + b), ("mul", lambda a, b: a * b), ("div", lambda a, b: a / b),
    ("pow", lambda a, b: a ** b), ("sub", lambda a, b: a - b),
    ("add_fn", ndl.add), ("multiply_fn", ndl.multiply), ("divide_fn", ndl.divide),
    ("power_fn", ndl.power)])
@pytest.mark.parametrize("sa, sb", [((2, 3), (4, 3)), ((3,), (4,)), ((2, 3, 4), (3, 3))],
                         ids=str)
def test_elementwise_not_broadcastable(name, f, sa, sb):
    with pytest.raises(ValueError) as e:
        f(R(*sa), R(*sb))
    msg = str(e.value)
    assert shape_in(sa, msg) and shape_in(sb, msg), msg


@pytest.mark.parametrize("shape, axes", [((2, 3), 2), ((2, 3), (0, 2)), ((2, 3), -3),
                                         ((4,), 1), ((2, 3, 4), (1, 5))], ids=str)
@pytest.mark.parametrize("fn", ["summation", "logsumexp"])
def test_reduction_axis_out_of_range(fn, shape, axes):
    with pytest.raises((ValueError, IndexError)) as e:
        getattr(ndl, fn)(R(*shape), axes=axes).numpy()
    bad = [a for a in (axes if isinstance(axes, tuple) else (axes,))
           if not -len(shape) <= a < len(shape)]
    msg = str(e.value)
    assert any(str(a) in msg for a in bad), msg


def test_summation_of_0d_with_axis():
    with pytest.raises((ValueError, IndexError)) as e:
        ndl.summation(ndl.Tensor(np.float64(1.0)), axes=0)
    assert "0" in str(e.value)


@pytest.mark.parametrize("shape, axes", [((2, 3), (0, 2)), ((2, 3, 4), (3, 0)),
                                         ((2, 3), (5, 7))], ids=str)
def test_transpose_axes_out_of_range(shape, axes):
    with pytest.raises((ValueError, IndexError)) as e:
        ndl.transpose(R(*shape), axes)
    msg = str(e.value)
    bad = [a for a in axes if a >= len(shape)]
    assert any(str(a) in msg for a in bad), msg


@pytest.mark.parametrize("axes", [(0, 1, 2), (1,), ()], ids=str)
def test_transpose_axes_not_a_pair(axes):
    with pytest.raises((ValueError, TypeError)) as e:
        ndl.transpose(R(2, 3, 4), axes)
    assert str(len(axes)) in str(e.value) or shape_in(axes, str(e.value)), str(e.value)


def test_transpose_default_axes_of_1d():
    with pytest.raises((ValueError, IndexError)):
        ndl.transpose(R(4))


@pytest.mark.parametrize("shape, new", [((2, 3), (4, 2)), ((6,), (5,)), ((2, 3), (2, 3, 2)),
                                        ((2, 2), ())], ids=str)
def test_reshape_size_mismatch(shape, new):
    with pytest.raises(ValueError) as e:
        ndl.reshape(R(*shape), new)
    msg = str(e.value)
    assert shape_in(shape, msg) and shape_in(new, msg), msg


def test_reshape_size_mismatch_of_noncompact_input():
    with pytest.raises(ValueError) as e:
        ndl.reshape(ndl.transpose(R(2, 3)), (5,))
    assert shape_in((3, 2), str(e.value)) and shape_in((5,), str(e.value)), str(e.value)


@pytest.mark.parametrize("shape, new", [((2, 3), (4, 3)), ((3,), (3, 2)), ((2, 3), (3,))],
                         ids=str)
def test_broadcast_to_incompatible(shape, new):
    with pytest.raises(ValueError) as e:
        ndl.broadcast_to(R(*shape), new)
    msg = str(e.value)
    assert shape_in(shape, msg) and shape_in(new, msg), msg


def test_stack_shape_mismatch():
    with pytest.raises(ValueError) as e:
        ndl.stack([R(2, 3), R(3, 2)], 0)
    msg = str(e.value)
    assert shape_in((2, 3), msg) and shape_in((3, 2), msg), msg


@pytest.mark.parametrize("axis", [3, -4])
def test_stack_axis_out_of_range(axis):
    with pytest.raises((ValueError, IndexError)) as e:
        ndl.stack([R(2, 3), R(2, 3)], axis)
    assert str(axis) in str(e.value)


def test_split_axis_out_of_range():
    with pytest.raises((ValueError, IndexError)) as e:
        ndl.split(R(2, 3), 2)
    assert "2" in str(e.value)


def test_tuple_get_item_out_of_range():
    with pytest.raises(IndexError):
        ndl.tuple_get_item(ndl.make_tuple(R(2)), 1)
    with pytest.raises(IndexError):
        ndl.split(R(3, 2), 0)[3]


# --------------------------------------------------------------------------
# devices
# --------------------------------------------------------------------------

@pytest.mark.parametrize("name, f", [("add", lambda a, b: a + b), ("mul", lambda a, b: a * b),
                                     ("matmul", lambda a, b: a @ b),
                                     ("div", lambda a, b: a / b)])
def test_mixed_devices(name, f):
    a = ndl.Tensor(np.random.randn(3, 3), device=ndl.cpu())
    b = ndl.Tensor(np.random.randn(3, 3), device=ndl.cpu_numpy())
    assert a.device == ndl.cpu() and b.device == ndl.cpu_numpy()
    for x, y in [(a, b), (b, a)]:
        with pytest.raises((ValueError, RuntimeError)) as e:
            f(x, y)
        msg = str(e.value)
        assert "cpu_numpy" in msg and re.search(r"\bcpu\b(?!_)", msg), msg


def test_mixed_devices_backward_seed():
    a = ndl.Tensor(np.random.randn(3), device=ndl.cpu())
    y = a * 2.0
    with pytest.raises((ValueError, RuntimeError)):
        y.backward(ndl.Tensor(np.ones(3), device=ndl.cpu_numpy()))


def test_disabled_cuda_raises_clearly():
    if ndl.cuda().enabled():
        pytest.skip("a GPU is present")
    with pytest.raises((RuntimeError, ValueError)):
        ndl.Tensor([1.0, 2.0], device=ndl.cuda()).numpy()


# --------------------------------------------------------------------------
# backward
# --------------------------------------------------------------------------

@pytest.mark.parametrize("out_shape, g_shape", [((2, 3), (3, 2)), ((2, 3), (6,)),
                                                ((), (1,)), ((3,), (4,)), ((2, 3), (2, 3, 1))],
                         ids=str)
def test_backward_wrong_seed_shape(out_shape, g_shape):
    x = R(*out_shape)
    y = x * 2.0
    with pytest.raises(ValueError) as e:
        y.backward(ndl.Tensor(np.ones(g_shape)))
    msg = str(e.value)
    assert shape_in(out_shape, msg) and shape_in(g_shape, msg), msg


def test_compute_gradient_of_variables_wrong_seed_shape():
    x = R(2, 3)
    y = x.exp()
    with pytest.raises(ValueError) as e:
        ag.compute_gradient_of_variables(y, ndl.Tensor(np.ones((3, 3))))
    assert shape_in((2, 3), str(e.value)) and shape_in((3, 3), str(e.value)), str(e.value)


def test_backward_non_tensor_seed():
    y = R(2) * 2.0
    with pytest.raises((TypeError, ValueError)):
        y.backward("not a tensor")


# --------------------------------------------------------------------------
# Python ops that fail
# --------------------------------------------------------------------------

class Boom(Exception):
    pass


class FailingCompute(ag.TensorOp):
    def compute(self, a):
        raise Boom("compute failed")

    def gradient(self, out_grad, node):
        return out_grad


class FailingGradient(ag.TensorOp):
    def compute(self, a):
        return a * 2.0

    def gradient(self, out_grad, node):
        raise Boom("gradient failed")


class WrongArity(ag.TensorOp):
    def compute(self, a, b):
        return a + b

    def gradient(self, out_grad, node):
        return (out_grad,)  # one gradient for two inputs


class ReturnsGarbage(ag.TensorOp):
    def compute(self, a):
        return "not an array"

    def gradient(self, out_grad, node):
        return out_grad


class NoGradient(ag.TensorOp):
    def compute(self, a):
        return a * 1.0


def test_python_compute_exception_propagates():
    x = R(2)
    with pytest.raises(Boom):
        FailingCompute()(x)
    # the engine still works afterwards
    (x * 2.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0])


def test_python_gradient_exception_propagates():
    x = R(2)
    y = (FailingGradient()(x) + 1.0).sum()
    with pytest.raises(Boom):
        y.backward()
    (x * 3.0).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 3.0])


def test_python_gradient_wrong_number_of_gradients():
    a, b = R(2), R(2)
    y = WrongArity()(a, b).sum()
    with pytest.raises((ValueError, IndexError, TypeError, RuntimeError)):
        y.backward()


def test_python_compute_returning_garbage():
    """No crash; the error may surface where the bad data is used."""
    with pytest.raises(Exception):
        ReturnsGarbage()(R(2)).sum().backward()


def test_python_op_without_gradient():
    y = NoGradient()(R(2)).sum()
    with pytest.raises(NotImplementedError):
        y.backward()


def test_abstract_op_call():
    with pytest.raises(NotImplementedError):
        ag.Op()(R(2))


# --------------------------------------------------------------------------
# data setter
# --------------------------------------------------------------------------

def test_data_setter_dtype_mismatch():
    x = ndl.Tensor(np.ones(2), dtype="float32")
    with pytest.raises(AssertionError):
        x.data = ndl.Tensor(np.ones(2), dtype="float64")
    np.testing.assert_array_equal(x.numpy(), [1.0, 1.0])


def test_data_setter_non_tensor():
    x = ndl.Tensor(np.ones(2))
    with pytest.raises((AssertionError, TypeError)):
        x.data = np.zeros(2)


# --------------------------------------------------------------------------
# misuse of op objects: an exception, never a crash (DESIGN "Reliability rules")
# --------------------------------------------------------------------------

OP_ARGS = {"AddScalar": (1.0,), "MulScalar": (1.0,), "PowerScalar": (2,), "DivScalar": (2.0,),
           "Reshape": ((4,),), "BroadcastTo": ((2, 2),), "Stack": (0,), "Split": (0,),
           "TupleGetItem": (0,), "FusedAddScalars": (1.0, 2.0), "Flip": ((0,),),
           "Dilate": ((0,), 1), "UnDilate": ((0,), 1), "Summation": ((0,),),
           "LogSumExp": ((0,),), "Transpose": ((0, 1),)}
BINARY = ["EWiseAdd", "EWiseMul", "EWisePow", "EWiseDiv", "MatMul"]
UNARY = ["AddScalar", "MulScalar", "PowerScalar", "DivScalar", "Negate", "Log", "Exp", "ReLU",
         "Tanh", "Transpose", "Reshape", "BroadcastTo", "Summation", "Flip", "Dilate",
         "UnDilate", "LogSoftmax", "LogSumExp", "FusedAddScalars", "Split"]
ON_TUPLE = ["TupleGetItem", "Stack"]
ALL_OPS = BINARY + UNARY + ON_TUPLE
ERRORS = ("TypeError", "ValueError", "IndexError", "RuntimeError")


def make_op(name):
    return getattr(ops, name)(*OP_ARGS.get(name, ()))


def arg_for(name):
    x = ndl.Tensor(np.ones((2, 2)) + 1.0)
    return ndl.make_tuple(x, x) if name in ON_TUPLE else x


def outcome_ok(res):
    return not res.startswith("signal") and not res.startswith("exit")


def misuse_outcomes(make_call):
    """{op name: outcome} of make_call(name)() run in a forked child, for every op."""
    return {name: run_forked(make_call(name)) for name in ALL_OPS}


def test_op_called_without_arguments():
    out = misuse_outcomes(lambda name: lambda: make_op(name)())
    crashed = {k: v for k, v in out.items() if not outcome_ok(v)}
    accepted = {k: v for k, v in out.items() if outcome_ok(v) and v.split(":")[0] not in ERRORS}
    assert not crashed and not accepted, f"crashed: {crashed}\nno error: {accepted}"


def test_op_called_with_too_many_arguments():
    """An extra input is an error, not silently ignored (nor kept in .inputs)."""
    def make_call(name):
        def call():
            a = arg_for(name)
            make_op(name)(*([a] * (3 if name in BINARY else 2)))
        return call
    out = misuse_outcomes(make_call)
    crashed = {k: v for k, v in out.items() if not outcome_ok(v)}
    accepted = sorted(k for k, v in out.items() if outcome_ok(v) and v.split(":")[0] not in ERRORS)
    assert not crashed and not accepted, f"crashed: {crashed}\naccepted extra inputs: {accepted}"


@pytest.mark.parametrize("node_kind", ["leaf", "unary_node", "binary_node", "tuple_node"])
def test_builtin_gradient_with_foreign_node(node_kind):
    """op.gradient(g, node) with a node this op did not make: an exception or a
    result, never a crash."""
    def make_call(name):
        def call():
            x = ndl.Tensor(np.ones((2, 2)) + 1.0)
            node = {"leaf": x, "unary_node": x * 2.0, "binary_node": x + x,
                    "tuple_node": ndl.make_tuple(x, x)}[node_kind]
            make_op(name).gradient(ndl.Tensor(np.ones((2, 2))), node)
        return call
    out = misuse_outcomes(make_call)
    crashed = {k: v for k, v in out.items() if not outcome_ok(v)}
    assert not crashed, f"crashed: {crashed}"


def test_self_referencing_node_does_not_crash():
    def call():
        t = ndl.Tensor.__new__(ndl.Tensor)
        t._init(ops.Exp(), [t])
        t.numpy()
    res = run_forked(call)
    assert outcome_ok(res), res
    assert res != "ok"


def test_op_assigned_to_uninitialised_tensor_does_not_crash():
    """Tensor.__new__ then attribute assignments (no _init): inputs is () not NULL."""
    def call():
        t = ndl.Tensor.__new__(ndl.Tensor)
        assert t.inputs == ()
        t.op = ops.Exp()
        t.cached_data = ndl.Tensor([1.0]).cached_data
        t.requires_grad = True
        t.backward()
        find = ndl.autograd.find_topo_sort([t])
        assert find == [t]
    res = run_forked(call)
    assert res == "ok", res


@pytest.mark.parametrize("new_inputs", ["empty", "longer", "not_a_tuple"])
def test_python_gradient_that_reassigns_node_inputs_does_not_crash(new_inputs):
    """The walk keeps the inputs the node had: a Python op's gradient may
    rebind node.inputs (to fewer, more or other values) without harm."""
    class Rebinds(ndl.ops.TensorOp):
        def compute(self, a, b):
            return a + b

        def gradient(self, g, node):
            extra = ndl.Tensor([0.0, 0.0])
            node.inputs = {"empty": (), "longer": (extra, extra, extra),
                           "not_a_tuple": [extra]}[new_inputs]
            return g, g * 2.0

    x, y = ndl.Tensor([1.0, 2.0]), ndl.Tensor([3.0, 4.0])
    Rebinds()(x, y).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [1.0, 1.0])
    np.testing.assert_array_equal(y.grad.numpy(), [2.0, 2.0])
