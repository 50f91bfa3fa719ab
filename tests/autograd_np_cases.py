"""Autograd checks for np mode (API.md 1.3, 3.4; items 10.27). Not collected on
its own: test_np_mode.py runs this file in a child process with
NEEDLE_BACKEND=np set before `import needle`.

cached_data are genuine numpy.ndarray with NumPy's dtypes; float64 stays
float64; integer tensors stay integer (backward seeds too); gradients match
PyTorch and finite differences, including the course's homework-1 style check
that perturbs realize_cached_data() in place.
"""
import os

import numpy as np
import pytest

if os.environ.get("NEEDLE_BACKEND") != "np":  # pragma: no cover
    pytest.skip("run by test_np_mode.py with NEEDLE_BACKEND=np", allow_module_level=True)

import needle as ndl  # noqa: E402
import needle.autograd as ag  # noqa: E402
from needle import backend_numpy, ops  # noqa: E402

from autograd_cases import (CASES, case_params, check_against_references,  # noqa: E402
                            check_finite_differences)


def test_backend_is_numpy():
    assert ndl.BACKEND == "np"
    assert ndl.array_api is np and ndl.NDArray is np.ndarray
    assert ops.array_api is np and ag.array_api is np
    assert ndl.cpu() == backend_numpy.cpu() and repr(ndl.cpu()) == "needle.cpu()"
    assert not hasattr(ndl, "cpu_numpy") and not hasattr(ndl, "cuda")


# --------------------------------------------------------------------------
# the op table in float64 (plain layouts; non-compactness is an nd-mode notion)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("case, layout", case_params(layouts=False))
def test_op_vs_numpy_and_torch(case, layout):
    check_against_references(case, layout, "float64")


@pytest.mark.parametrize("case, layout", case_params([c for c in CASES if c.fd], layouts=False))
def test_op_gradient_finite_differences(case, layout):
    check_finite_differences(case, layout)


# --------------------------------------------------------------------------
# dtypes and data
# --------------------------------------------------------------------------

def test_cached_data_are_numpy_arrays():
    x = ndl.Tensor(np.random.randn(3, 4))
    w = ndl.Tensor(np.random.randn(4, 2))
    y = ndl.logsumexp(ndl.relu(x @ w), (1,)).sum()
    y.backward()
    for t in (x, w, y, x.grad, w.grad):
        assert type(t.cached_data) is np.ndarray, type(t.cached_data)
        assert t.cached_data.dtype == np.float64
        assert t.dtype == np.float64 and t.dtype == "float64"
    assert x.device == backend_numpy.cpu()


def test_float64_stays_float64_and_float32_stays_float32():
    x = ndl.Tensor(np.random.randn(3))
    assert x.dtype == np.float64
    assert ndl.Tensor([1.5, 2.0]).dtype == np.float64
    f = ndl.Tensor(np.random.randn(3).astype(np.float32))
    assert f.dtype == np.float32 and f.dtype == "float32"
    assert ndl.Tensor(np.random.randn(3), dtype="float32").dtype == np.float32
    for r in [x * 2.0, x + 1.0, x / 3.0, ndl.exp(x), x.sum(), ndl.power_scalar(x, 2)]:
        assert r.dtype == np.float64
    for r in [f * 2.0, f + 1.0, f / 3.0, ndl.exp(f), f.sum(), ndl.power_scalar(f, 2)]:
        assert r.dtype == np.float32
    (f * f).sum().backward()
    assert f.grad.dtype == np.float32


def test_integer_tensor_and_integer_seed():
    x = ndl.Tensor([6])
    assert x.dtype == np.int64 and x.cached_data.dtype == np.int64
    x.backward()
    assert np.issubdtype(x.grad.dtype, np.integer), x.grad.dtype
    np.testing.assert_array_equal(x.grad.numpy(), [1])
    y = x * 3
    assert y.dtype == np.int64
    y.backward()
    assert np.issubdtype(x.grad.dtype, np.integer), x.grad.dtype
    np.testing.assert_array_equal(x.grad.numpy(), [3])


def test_numpy_returns_a_copy():
    t = ndl.Tensor(np.array([1.0, 2.0]))
    a = t.numpy()
    a[0] = 100.0
    assert t.numpy()[0] == 1.0


def test_repr():
    t = ndl.Tensor(np.array([[1.5, 2.0]]))
    assert repr(t) == "needle.Tensor(" + str(t.cached_data) + ")"
    assert str(t) == str(t.cached_data)


def test_detach_and_data_share_numpy_memory():
    x = ndl.Tensor(np.random.randn(3, 2))
    for d in (x.detach(), x.data, ndl.Tensor(x)):
        assert np.shares_memory(d.realize_cached_data(), x.realize_cached_data())
    u = ndl.Tensor(np.random.randn(3, 2))
    x.data = u
    assert np.shares_memory(x.realize_cached_data(), u.realize_cached_data())
    with pytest.raises(AssertionError):
        x.data = ndl.Tensor(np.ones((3, 2), np.float32))


def test_tensor_of_numpy_copies():
    a = np.random.randn(3)
    t = ndl.Tensor(a)
    a[0] = 99.0
    assert t.numpy()[0] != 99.0


# --------------------------------------------------------------------------
# engine in np mode
# --------------------------------------------------------------------------

def test_topo_sort_course_example():
    a1, b1 = ndl.Tensor(np.asarray([[0.88282157]])), ndl.Tensor(np.asarray([[0.90170084]]))
    c1 = 3 * a1 * a1 + 4 * b1 * a1 - a1
    order = ag.find_topo_sort([c1])
    n5, n6 = c1.inputs
    n2, n4 = n5.inputs
    want = [a1, n2.inputs[0], n2, b1, n4.inputs[0], n4, n5, n6, c1]
    assert [id(n) for n in order] == [id(n) for n in want]


def test_second_derivative_and_no_graph_backward():
    xn = np.random.randn(4)
    x = ndl.Tensor(xn)
    (ndl.exp(x) * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.exp(xn) * (1 + xn), rtol=1e-12)
    x.grad.backward()
    np.testing.assert_allclose(x.grad.numpy(), np.exp(xn) * (2 + xn), rtol=1e-12)
    (ndl.exp(x) * x).sum().backward(create_graph=False)
    assert x.grad.is_leaf() and not x.grad.requires_grad
    assert type(x.grad.cached_data) is np.ndarray
    np.testing.assert_allclose(x.grad.numpy(), np.exp(xn) * (1 + xn), rtol=1e-12)


def test_no_grad():
    x = ndl.Tensor(np.random.randn(3))
    with ndl.no_grad():
        y = x * 2.0
    assert y.is_leaf() and not y.requires_grad


def test_python_op_gets_numpy_arrays():
    seen = []

    class Sq(ag.TensorOp):
        def compute(self, a):
            seen.append(type(a))
            return a * a

        def gradient(self, out_grad, node):
            return out_grad * node.inputs[0] * 2.0

    xn = np.random.randn(3)
    x = ndl.Tensor(xn)
    (Sq()(x) + x).sum().backward()
    assert seen == [np.ndarray]
    np.testing.assert_allclose(x.grad.numpy(), 2 * xn + 1, rtol=1e-12)


def test_lazy_mode():
    old = ag.LAZY_MODE
    ag.LAZY_MODE = True
    try:
        x = ndl.Tensor(np.random.randn(3))
        y = x * 2.0
        assert y.cached_data is None
        np.testing.assert_allclose(y.numpy(), 2 * x.numpy())
    finally:
        ag.LAZY_MODE = old


def test_implicit_broadcasting_follows_numpy():
    """np-mode code may lean on NumPy broadcasting: a (1,3) base, a (3,) exponent."""
    an, bn = np.random.rand(1, 3) + 0.5, np.random.randn(3)
    a, b = ndl.Tensor(an), ndl.Tensor(bn)
    y = a ** b
    assert y.shape == (1, 3)
    y.sum().backward()
    np.testing.assert_allclose(a.grad.numpy(), bn * an ** (bn - 1), rtol=1e-12)
    np.testing.assert_allclose(b.grad.numpy(), (an ** bn * np.log(an)).reshape(3), rtol=1e-12)


# --------------------------------------------------------------------------
# homework-1 style gradient check: in-place perturbation, gradient_as_tuple
# --------------------------------------------------------------------------

def course_gradient_check(f, *args, tol=1e-6, backward=False, **kwargs):
    eps = 1e-4
    numerical_grads = [np.zeros(a.shape) for a in args]
    for i in range(len(args)):
        for j in range(args[i].realize_cached_data().size):
            args[i].realize_cached_data().flat[j] += eps
            f1 = float(f(*args, **kwargs).numpy().sum())
            args[i].realize_cached_data().flat[j] -= 2 * eps
            f2 = float(f(*args, **kwargs).numpy().sum())
            args[i].realize_cached_data().flat[j] += eps
            numerical_grads[i].flat[j] = (f1 - f2) / (2 * eps)
    if not backward:
        out = f(*args, **kwargs)
        computed = [x.numpy() for x in
                    out.op.gradient_as_tuple(ndl.Tensor(np.ones(out.shape)), out)]
    else:
        out = f(*args, **kwargs).sum()
        out.backward()
        computed = [a.grad.numpy() for a in args]
    error = sum(np.linalg.norm(computed[i] - numerical_grads[i]) for i in range(len(args)))
    assert error < tol, error
    return computed


def _r(*shape):
    return ndl.Tensor(np.random.randn(*shape))


def _p(*shape):
    return ndl.Tensor(np.random.rand(*shape) + 0.5)


HW1 = [
    ("divide", ndl.divide, lambda: (_r(5, 4), _p(5, 4)), {}),
    ("divide_scalar", ndl.divide_scalar, lambda: (_r(5, 4),), {"scalar": 3.7}),
    ("matmul", ndl.matmul, lambda: (_r(5, 4), _r(4, 3)), {}),
    ("matmul_batched", ndl.matmul, lambda: (_r(6, 5, 4), _r(6, 4, 3)), {}),
    ("summation", ndl.summation, lambda: (_r(5, 4),), {"axes": (1,)}),
    ("summation_none", ndl.summation, lambda: (_r(5, 4),), {"axes": None}),
    ("broadcast_to", ndl.broadcast_to, lambda: (_r(3, 1),), {"shape": (3, 3)}),
    ("reshape", ndl.reshape, lambda: (_r(5, 4),), {"shape": (4, 5)}),
    ("negate", ndl.negate, lambda: (_r(5, 4),), {}),
    ("transpose", ndl.transpose, lambda: (_r(3, 5, 4),), {"axes": (1, 2)}),
    ("transpose_02", ndl.transpose, lambda: (_r(3, 5, 4),), {"axes": (0, 2)}),
    ("log", ndl.log, lambda: (_p(5, 4),), {}),
    ("exp", ndl.exp, lambda: (_r(5, 4),), {}),
    ("relu", ndl.relu, lambda: (ndl.Tensor((np.random.rand(5, 4) + 0.1)
                                           * np.sign(np.random.randn(5, 4))),), {}),
    ("power_scalar", ndl.power_scalar, lambda: (_p(5, 4),), {"scalar": 3}),
    ("power", ndl.power, lambda: (_p(5, 4), _r(5, 4)), {}),
    ("logsumexp", ndl.logsumexp, lambda: (_r(3, 5, 4),), {"axes": (1, 2)}),
    ("logsoftmax", ndl.logsoftmax, lambda: (_r(3, 5),), {}),
    ("tanh", ndl.tanh, lambda: (_r(5, 4),), {}),
]


@pytest.mark.parametrize("name, f, make, kw", HW1, ids=[h[0] for h in HW1])
@pytest.mark.parametrize("backward", [False, True])
def test_course_gradient_check(name, f, make, kw, backward):
    course_gradient_check(f, *make(), backward=backward, **kw)
