"""Bad input to NDArray raises a Python exception of the documented type and
never crashes the process (API.md 2.5-2.10, DESIGN "Reliability rules").
"""
import re

import numpy as np
import pytest

import needle.backend_ndarray as nd


def shape_in(shape, msg):
    """`shape` appears in `msg`, written as a tuple or a list, spaces ignored."""
    m = re.sub(r"\s+", "", msg)
    inner = ",".join(str(d) for d in shape)
    if len(shape) == 1:
        forms = [f"({inner},)", f"({inner})", f"[{inner}]"]
    else:
        forms = [f"({inner})", f"[{inner}]"]
    return any(f in m for f in forms)


def arr(shape):
    return nd.array(np.asarray(np.random.randn(*shape)))


# --------------------------------------------------------------------------
# shapes
# --------------------------------------------------------------------------

BINARY_OPS = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
    "pow": lambda a, b: a ** b,
    "maximum": lambda a, b: a.maximum(b),
    "eq": lambda a, b: a == b,
    "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "ne": lambda a, b: a != b,
}


@pytest.mark.parametrize("sa, sb", [((2, 3), (4, 5)), ((3,), (4,)), ((2, 3), (3, 2)),
                                    ((2, 1, 5), (3, 4)), ((0, 3), (2, 3))], ids=str)
@pytest.mark.parametrize("op", sorted(BINARY_OPS))
def test_binary_shape_mismatch(op, sa, sb):
    with pytest.raises(ValueError) as e:
        BINARY_OPS[op](arr(sa), arr(sb))
    assert shape_in(sa, str(e.value)) and shape_in(sb, str(e.value)), str(e.value)


@pytest.mark.parametrize("shape, new_shape", [((2, 3), (2, 4)), ((3,), (2, 2)), ((2, 3), (3,)),
                                              ((2, 3), (3, 2)), ((2, 3), (2, 3, 4))], ids=str)
def test_broadcast_to_incompatible(shape, new_shape):
    with pytest.raises(ValueError) as e:
        arr(shape).broadcast_to(new_shape)
    assert shape_in(shape, str(e.value)) and shape_in(new_shape, str(e.value)), str(e.value)


@pytest.mark.parametrize("sa, sb", [((2, 3), (4, 5)), ((3, 4), (3, 4)), ((5, 2, 3), (4, 3, 2)),
                                    ((2, 3, 4), (2, 5, 6))], ids=str)
def test_matmul_inner_dim_mismatch(sa, sb):
    with pytest.raises(ValueError) as e:
        arr(sa) @ arr(sb)
    assert shape_in(sa, str(e.value)) and shape_in(sb, str(e.value)), str(e.value)


def test_matmul_of_0d_or_1d_is_an_error():
    with pytest.raises((ValueError, AssertionError)):
        arr(()) @ arr((3, 3))


@pytest.mark.parametrize("shape, new_shape", [((2, 3), (4,)), ((2, 3), (7, -1)),
                                              ((2, 3), (-1, -1)), ((2, 3), (-2, -3)),
                                              ((2, 3), (2, 3, 2)), ((0, 3), (1,))], ids=str)
def test_reshape_wrong_size(shape, new_shape):
    with pytest.raises(ValueError):
        arr(shape).reshape(new_shape)


@pytest.mark.parametrize("make_view", [
    lambda a: a.permute((1, 0)),
    lambda a: a[1:3],
    lambda a: a[:, ::2],
    lambda a: a[0].broadcast_to((3, 4)),
], ids=["transposed", "row_slice", "strided", "broadcast"])
def test_reshape_non_compact(make_view):
    v = make_view(arr((4, 4)))
    with pytest.raises(ValueError):
        v.reshape((v.size,))
    with pytest.raises(ValueError):
        v.flat


@pytest.mark.parametrize("shape, src_shape, idx", [
    ((4, 5), (3,), (slice(0, 2), slice(0, 2))),
    ((4, 5), (2, 3), (slice(0, 2), slice(0, 2))),
    ((4, 5), (21,), (slice(None), slice(None))),
    ((4, 5), (1,), (slice(0, 2), 1)),
])
def test_setitem_wrong_number_of_elements(shape, src_shape, idx):
    a = arr(shape)
    before = a.numpy()
    with pytest.raises(ValueError):
        a[idx] = arr(src_shape)
    np.testing.assert_array_equal(a.numpy(), before)


def test_pad_wrong_number_of_pairs():
    with pytest.raises(ValueError):
        arr((2, 3)).pad(((1, 1),))
    with pytest.raises(ValueError):
        arr((2, 3)).pad(((1, 1), (0, 0), (0, 0)))


# --------------------------------------------------------------------------
# axes
# --------------------------------------------------------------------------

@pytest.mark.parametrize("op", ["sum", "max"])
@pytest.mark.parametrize("axis", [2, -3, 7, (0, 2), (-3,)], ids=str)
def test_reduce_axis_out_of_range(op, axis):
    with pytest.raises(ValueError) as e:
        getattr(arr((2, 3)), op)(axis=axis)
    assert isinstance(e.value, ValueError)
    bad = axis if isinstance(axis, int) else [a for a in axis if not -2 <= a < 2][0]
    assert str(bad) in str(e.value), str(e.value)


@pytest.mark.parametrize("op", ["sum", "max"])
def test_reduce_empty_or_repeated_axes(op):
    with pytest.raises(ValueError):
        getattr(arr((2, 3)), op)(axis=())
    with pytest.raises(ValueError):
        getattr(arr((2, 3)), op)(axis=(1, -1))


@pytest.mark.parametrize("axes", [(0, 2), (0, 0), (1,), (0, 1, 2), (0, -5)], ids=str)
def test_permute_bad_axes(axes):
    with pytest.raises(ValueError):
        arr((2, 3)).permute(axes)


@pytest.mark.parametrize("axes", [(2,), (-3,), (0, 5)], ids=str)
def test_flip_axis_out_of_range(axes):
    with pytest.raises(ValueError) as e:
        arr((2, 3)).flip(axes)
    bad = [a for a in axes if not -2 <= a < 2][0]
    assert str(bad) in str(e.value), str(e.value)


@pytest.mark.parametrize("shape, axis", [((0, 3), 0), ((3, 0, 2), 1), ((3, 0), None),
                                         ((0,), None), ((2, 0), (0, 1))], ids=str)
def test_max_over_size_zero_axis(shape, axis):
    with pytest.raises(ValueError):
        arr(shape).max(axis=axis)


# --------------------------------------------------------------------------
# indexing
# --------------------------------------------------------------------------

@pytest.mark.parametrize("idx", [5, -6, (0, 7), (1, -8), (5, 0), (0, 0, 0, 0)], ids=str)
def test_int_index_out_of_range(idx):
    a = arr((5, 7, 2))
    if idx == (0, 0, 0, 0):  # too many indices
        with pytest.raises((IndexError, AssertionError, ValueError)):
            a[idx]
        return
    with pytest.raises(IndexError):
        a[idx]
    with pytest.raises(IndexError):
        a[idx] = 1.0


@pytest.mark.parametrize("idx", [slice(None, None, -1), slice(None, None, 0),
                                 (slice(0, 2), slice(0, 4, -2)), slice(1, 4, -1)], ids=str)
def test_non_positive_step(idx):
    a = arr((5, 7))
    for action in (lambda: a[idx], lambda: a.__setitem__(idx, 1.0)):
        with pytest.raises(AssertionError) as e:
            action()
        assert isinstance(e.value, IndexError), type(e.value)


@pytest.mark.parametrize("idx", [slice(3, 1), slice(2, 2), (slice(None), slice(5, 5))], ids=str)
def test_empty_slice_asserts(idx):
    with pytest.raises(AssertionError):
        arr((5, 7))[idx]


def test_process_slice_rejects_non_positive_step():
    a = arr((5, 7))
    for step in (-1, 0):
        with pytest.raises(AssertionError) as e:
            a.process_slice(slice(None, None, step), 0)
        assert isinstance(e.value, IndexError)


def test_process_slice_rejects_empty_range():
    with pytest.raises(AssertionError):
        arr((5, 7)).process_slice(slice(4, 2), 1)


# --------------------------------------------------------------------------
# dtypes, devices, bad values
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["foo", "float16", "int32", "complex64", "uint8"])
def test_unknown_dtype(dtype):
    x = np.ones((2, 2))
    with pytest.raises(TypeError):
        nd.array(x, dtype=dtype)
    with pytest.raises(TypeError):
        nd.empty((2,), dtype=dtype)
    with pytest.raises(TypeError):
        nd.full((2,), 1.0, dtype=dtype)


def test_unknown_dtype_on_device_factories():
    with pytest.raises(TypeError):
        nd.cpu().empty((2,), dtype="foo")
    with pytest.raises(TypeError):
        nd.cpu().full((2,), 1.0, dtype="int32")


@pytest.mark.parametrize("op", ["add", "mul", "eq", "maximum"])
def test_mixed_devices_binary(op):
    x = np.random.randn(2, 3)
    a, b = nd.array(x, device=nd.cpu()), nd.array(x, device=nd.cpu_numpy())
    with pytest.raises(RuntimeError):
        BINARY_OPS[op](a, b)
    with pytest.raises(RuntimeError):
        BINARY_OPS[op](b, a)


def test_mixed_devices_matmul():
    x = np.random.randn(3, 3)
    with pytest.raises(RuntimeError):
        nd.array(x) @ nd.array(x, device=nd.cpu_numpy())


CUDA_USES = {
    "array": lambda: nd.array(np.ones(3), device=nd.cuda()),
    "NDArray": lambda: nd.NDArray(np.ones(3), device=nd.cuda()),
    "empty": lambda: nd.empty((2,), device=nd.cuda()),
    "full": lambda: nd.full((2,), 1.0, device=nd.cuda()),
    "make": lambda: nd.NDArray.make((2,), device=nd.cuda()),
    "to": lambda: nd.array(np.ones(3)).to(nd.cuda()),
    "copy_to": lambda: nd.NDArray(nd.array(np.ones(3)), device=nd.cuda()),
    "randn": lambda: nd.cuda().randn(2, 3),
    "rand": lambda: nd.cuda().rand(2),
    "one_hot": lambda: nd.cuda().one_hot(3, 1),
    "dev_empty": lambda: nd.cuda().empty((2,)),
    "dev_full": lambda: nd.cuda().full((2,), 0.0),
}


@pytest.mark.parametrize("use", sorted(CUDA_USES))
def test_disabled_cuda_raises_runtime_error(use):
    with pytest.raises(RuntimeError) as e:
        CUDA_USES[use]()
    assert "cuda" in str(e.value).lower(), str(e.value)


@pytest.mark.parametrize("value", [["a", "b"], np.array(["x"]), np.array([object()]),
                                   {"a": 1}, [[1, 2], [3]]], ids=str)
def test_non_numeric_input(value):
    with pytest.raises((TypeError, ValueError)):
        nd.array(value)


@pytest.mark.parametrize("value", ["x", None, object(), {"k": 1}], ids=str)
def test_bad_scalar_operands(value):
    a = arr((2,))
    with pytest.raises((TypeError, ValueError)):
        a + value
    with pytest.raises((TypeError, ValueError)):
        a * value
    with pytest.raises((TypeError, ValueError)):
        a[0] = value


@pytest.mark.parametrize("shape", [(-1,), (2, -3)], ids=str)
def test_negative_shapes(shape):
    with pytest.raises(ValueError):
        nd.empty(shape)
    with pytest.raises(ValueError):
        nd.NDArray.make(shape)


def test_views_outside_the_buffer_are_rejected():
    a = arr((2, 3))
    with pytest.raises((ValueError, IndexError)):
        a.as_strided((100,), (1,)).numpy()
    with pytest.raises((ValueError, IndexError)):
        a.as_strided((2, 3), (3, 2)).numpy()
    with pytest.raises((ValueError, IndexError)):
        nd.NDArray.make((4, 4), handle=a._handle).numpy()
    with pytest.raises((ValueError, IndexError)):
        nd.NDArray.make((6,), handle=a._handle, offset=1).numpy()


def test_kernel_functions_reject_short_buffers():
    dev = nd.cpu()
    small, big = dev.Array(2), dev.Array(1000)
    dev.fill(small, 1.0)
    errors = (ValueError, IndexError, TypeError, RuntimeError)
    with pytest.raises(errors):
        dev.ewise_add(small, small, big)
    with pytest.raises(errors):
        dev.compact(small, big, (10, 10), (10, 1), 0)
    with pytest.raises(errors):
        dev.matmul(small, small, big, 10, 10, 10)
    with pytest.raises(errors):
        dev.reduce_sum(small, big, 3)
    with pytest.raises(errors):
        dev.to_numpy(small, (5,), (1,), 0)


# --------------------------------------------------------------------------
# integer overflow in sizes and slices
# --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2 ** 40, 2 ** 40), (2 ** 62, 4), (2 ** 32, 2 ** 32, 2 ** 32)],
                         ids=str)
def test_shape_product_overflow(shape):
    # prod(shape) does not fit in 64 bits: must not wrap around to a small buffer
    with pytest.raises((ValueError, MemoryError, OverflowError)):
        nd.empty(shape)
    with pytest.raises((ValueError, MemoryError, OverflowError)):
        nd.NDArray.make(shape)


@pytest.mark.parametrize("step", [2 ** 62, 2 ** 63 - 1, 2 ** 70])
def test_huge_slice_step(step):
    x = np.arange(3.0, dtype=np.float32)
    v = nd.array(x)[::step]
    assert v.shape == (1,)
    np.testing.assert_array_equal(v.numpy(), x[::step])
    w = nd.array(x)[1::step]
    assert w.shape == (1,)
    np.testing.assert_array_equal(w.numpy(), x[1::step])

