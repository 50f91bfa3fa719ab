"""NDArray contract (API.md section 2): devices, construction, fields, dtypes,
conversion to and from NumPy, and the module-level helpers.

Views and setitem are in test_ndarray_views.py, operators and reductions in
test_ndarray_ops.py, matmul in test_ndarray_matmul.py, threads in
test_ndarray_threads.py, error paths in test_ndarray_errors.py and the raw
kernel-module interface in test_kernel_module.py. Every expected value is
computed with NumPy, never with needle.
"""
import numpy as np
import pytest

import needle.backend_ndarray as nd

DTYPES = ["float32", "float64"]
NP_DTYPE = {"float32": np.float32, "float64": np.float64}


def compact_strides(shape):
    """Row-major strides in elements, computed independently of needle."""
    out, s = [], 1
    for d in reversed(shape):
        out.append(s)
        s *= d
    return tuple(reversed(out))


def assert_nd_equal(a, expected, dtype="float32"):
    """`a` is an NDArray holding exactly `expected` (cast to `dtype`)."""
    expected = np.asarray(expected).astype(NP_DTYPE[dtype])
    assert isinstance(a, nd.NDArray)
    assert a.dtype == dtype
    assert a.shape == expected.shape
    got = a.numpy()
    assert isinstance(got, np.ndarray)
    assert got.dtype == NP_DTYPE[dtype]
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


# --------------------------------------------------------------------------
# Devices (2.1)
# --------------------------------------------------------------------------

def test_device_factories_names_and_str():
    assert nd.cpu().name == "cpu"
    assert nd.cuda().name == "cuda"
    assert nd.cpu_numpy().name == "cpu_numpy"
    assert str(nd.cpu()) == "cpu()"
    assert repr(nd.cpu()) == "cpu()"
    assert str(nd.cuda()) == "cuda()"
    assert str(nd.cpu_numpy()) == "cpu_numpy()"
    assert isinstance(nd.cpu(), nd.BackendDevice)


def test_cuda_disabled_but_creatable():
    dev = nd.cuda()  # must never raise
    try:  # enabled() is True only where needle._cuda loads and finds a GPU (test_cuda.py)
        import needle._cuda as cu
        usable = cu.probe() is None
    except ImportError:
        usable = False
    assert dev.enabled() is usable
    assert dev.mod is None
    assert nd.cpu().enabled() is True
    assert nd.cpu_numpy().enabled() is True
    assert nd.cpu().mod is not None


def test_default_and_all_devices():
    assert nd.default_device() == nd.cpu()
    assert nd.default_device() != nd.cpu_numpy()
    devs = nd.all_devices()
    assert [d.name for d in devs] == ["cpu", "cuda", "cpu_numpy"]
    assert devs == [nd.cpu(), nd.cuda(), nd.cpu_numpy()]


def test_device_equality_and_hash():
    assert nd.cpu() == nd.cpu()
    assert not (nd.cpu() != nd.cpu())
    assert nd.cpu() != nd.cpu_numpy()
    assert nd.cpu() != nd.cuda()
    assert nd.cpu() != "cpu"
    assert nd.BackendDevice("cpu", None) == nd.cpu()
    assert hash(nd.cpu()) == hash(nd.cpu()) == hash("cpu")
    assert hash(nd.cpu_numpy()) == hash("cpu_numpy")
    table = {nd.cpu(): 1, nd.cpu_numpy(): 2, nd.cuda(): 3}
    assert table[nd.cpu()] == 1 and table[nd.cpu_numpy()] == 2 and table[nd.cuda()] == 3
    assert len({nd.cpu(), nd.cpu(), nd.cpu_numpy()}) == 2


def test_device_getattr_forwards_to_kernel_module():
    dev = nd.cpu()
    assert dev.__tile_size__ == 8
    assert dev.__tile_size__ == dev.mod.__tile_size__
    assert dev.mod.__device_name__ == "cpu"
    for name in ["Array", "to_numpy", "from_numpy", "fill", "compact", "ewise_setitem",
                 "scalar_setitem", "ewise_add", "scalar_add", "matmul", "matmul_tiled",
                 "reduce_sum", "reduce_max", "ewise_tanh"]:
        assert getattr(dev, name) == getattr(dev.mod, name), name
        assert callable(getattr(dev, name)), name
    assert dev.Array(3).size == 3
    with pytest.raises(AttributeError):
        dev.no_such_kernel_function
    assert nd.cpu_numpy().ewise_add == nd.cpu_numpy().mod.ewise_add


def test_backend_modules_importable():
    import needle.backend_ndarray.ndarray as ndarray_mod
    import needle.backend_ndarray.ndarray_backend_cpu as cpu_mod
    import needle.backend_ndarray.ndarray_backend_numpy as np_mod

    assert ndarray_mod.NDArray is nd.NDArray
    assert ndarray_mod.array is nd.array or ndarray_mod.array == nd.array
    assert nd.cpu().mod.__device_name__ == cpu_mod.__device_name__ == "cpu"
    assert callable(np_mod.ewise_add) and callable(np_mod.Array)
    a = ndarray_mod.array(np.arange(3.0))
    assert isinstance(a, nd.NDArray)


# float64 is an extension of the native cpu device only
@pytest.mark.parametrize("dev_name, dtype", [("cpu", "float32"), ("cpu", "float64"),
                                             ("cpu_numpy", "float32")])
@pytest.mark.parametrize("kind", ["randn", "rand"])
def test_device_random_draws_match_numpy(dev_name, dtype, kind):
    dev = getattr(nd, dev_name)()
    np.random.seed(123)
    a = getattr(dev, kind)(3, 4, 2, dtype=dtype)
    after = np.random.rand()
    np.random.seed(123)
    ref = getattr(np.random, kind)(3, 4, 2).astype(dtype)
    ref_after = np.random.rand()
    assert a.device == dev
    assert_nd_equal(a, ref, dtype)
    assert after == ref_after  # exactly one draw of the full shape


def test_device_random_draws_default_dtype():
    np.random.seed(7)
    a = nd.cpu().randn(1)
    b = nd.cpu().rand(5)
    np.random.seed(7)
    assert_nd_equal(a, np.random.randn(1).astype(np.float32))
    assert_nd_equal(b, np.random.rand(5).astype(np.float32))


@pytest.mark.parametrize("dev_name", ["cpu", "cpu_numpy"])
def test_device_one_hot(dev_name):
    dev = getattr(nd, dev_name)()
    assert_nd_equal(dev.one_hot(5, 3), np.eye(5, dtype=np.float32)[3])
    idx = np.array([[0, 3], [2, 1], [3, 3]])
    oh = dev.one_hot(4, idx)
    assert oh.device == dev
    assert_nd_equal(oh, np.eye(4, dtype=np.float32)[idx])
    assert oh.shape == (3, 2, 4)


def test_device_one_hot_float64():
    assert_nd_equal(nd.cpu().one_hot(3, np.array([2, 0]), dtype="float64"),
                    np.eye(3)[[2, 0]], "float64")


@pytest.mark.parametrize("dev_name", ["cpu", "cpu_numpy"])
def test_device_empty_and_full(dev_name):
    dev = getattr(nd, dev_name)()
    e = dev.empty((2, 3))
    assert e.shape == (2, 3) and e.dtype == "float32" and e.device == dev
    assert e.is_compact() and e._handle.size == 6
    assert dev.empty((4,), dtype=None).dtype == "float32"
    f = dev.full((2, 3), 0.1)
    assert f.device == dev
    assert_nd_equal(f, np.full((2, 3), 0.1, dtype=np.float32))
    assert_nd_equal(dev.full((), -2.5), np.float32(-2.5))


def test_device_full_float64():
    dev = nd.cpu()
    assert dev.empty((3,), dtype="float64").dtype == "float64"
    assert_nd_equal(dev.full((2, 2), 0.1, dtype="float64"), np.full((2, 2), 0.1), "float64")


# --------------------------------------------------------------------------
# Construction (2.2)
# --------------------------------------------------------------------------

def _layouts():
    x = np.random.RandomState(0).randn(4, 6) * 10
    i = np.arange(24, dtype=np.int64).reshape(4, 6) - 7
    return {
        "f64": x,
        "f32": x.astype(np.float32),
        "f16": x.astype(np.float16),
        "int64": i,
        "int32": i.astype(np.int32),
        "int8": i.astype(np.int8),
        "uint8": (i + 7).astype(np.uint8),
        "uint16": (i + 7).astype(np.uint16),
        "bool": i % 3 == 0,
        "object": np.array([[1, 2.5, -3], [4, 5, 6.25]], dtype=object),
        "transposed": x.T,
        "fortran": np.asfortranarray(x),
        "neg_stride_rows": x[::-1],
        "neg_stride_cols": x[:, ::-2],
        "strided": x[1::2, ::3],
        "int_transposed": i.T[::-1],
        "zero_d": np.array(3.5),
        "zero_d_int": np.array(-4),
        "size0": np.zeros((0, 3)),
        "size0_b": np.ones((3, 0, 2)),
        "rank7": np.random.RandomState(1).randn(2, 1, 2, 3, 1, 2, 2),
        "rank8": np.random.RandomState(2).randn(1, 2, 2, 1, 2, 3, 1, 2),
        "broadcast_view": np.broadcast_to(np.arange(3.0), (4, 3)),
    }


LAYOUTS = _layouts()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_construct_from_numpy(name, dtype):
    x = LAYOUTS[name]
    copy_before = np.array(x, copy=True)
    a = nd.array(x, dtype=dtype)
    expected = np.array(x, dtype=NP_DTYPE[dtype])
    assert_nd_equal(a, expected, dtype)
    assert a.device == nd.cpu()
    assert a.strides == compact_strides(expected.shape)
    assert a._offset == 0
    assert a.is_compact()
    np.testing.assert_array_equal(x, copy_before)  # input untouched


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_ndarray_constructor_from_numpy_is_float32(name):
    x = LAYOUTS[name]
    a = nd.NDArray(x)
    assert_nd_equal(a, np.array(x, dtype=np.float32))
    assert a.device == nd.default_device()


def test_float64_numpy_input_without_dtype_is_float32():
    x = np.array([0.1, 1e-50, 1.0 / 3.0])
    for a in (nd.NDArray(x), nd.array(x), nd.array(x, dtype=None),
              nd.array(x, dtype="float32"), nd.array(x, dtype=np.float32)):
        assert a.dtype == "float32"
        assert a.numpy().dtype == np.float32
        np.testing.assert_array_equal(a.numpy(), x.astype(np.float32))


def test_float64_keeps_full_precision():
    x = np.array([0.1, 1e-300, 1.0 / 3.0, 1e300, -2.0 ** -1070])
    a = nd.array(x, dtype="float64")
    assert a.dtype == "float64"
    got = a.numpy()
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, x)


def test_dtype_bool_stored_as_float32():
    a = nd.array(np.array([True, False, True]), dtype="bool")
    assert_nd_equal(a, [1.0, 0.0, 1.0])


@pytest.mark.parametrize("value, shape", [
    ([[1, 2, 3], [4, 5, 6]], (2, 3)),
    ([1.5, -2.0], (2,)),
    ([], (0,)),
    (3, ()),
    (2.75, ()),
    (True, ()),
    (np.float64(0.1), ()),
    (np.float32(-1.5), ()),
    (np.int64(9), ()),
    ([[[1.0]]], (1, 1, 1)),
])
def test_construct_from_python_values(value, shape):
    a = nd.array(value)
    assert a.shape == shape
    assert_nd_equal(a, np.array(value, dtype=np.float32))
    b = nd.NDArray(value)
    assert_nd_equal(b, np.array(value, dtype=np.float32))


@pytest.mark.parametrize("dtype", DTYPES)
def test_construct_from_ndarray_copies(dtype):
    x = np.random.randn(3, 4)
    a = nd.array(x, dtype=dtype)
    b = nd.NDArray(a)
    c = nd.array(a, dtype=dtype)
    for copy in (b, c):
        assert copy._handle.ptr() != a._handle.ptr()
        assert copy.device == a.device
        assert_nd_equal(copy, x, dtype)
    a[0, 0] = 100.0
    assert b.numpy()[0, 0] == NP_DTYPE[dtype](x[0, 0])
    assert c.numpy()[0, 0] == NP_DTYPE[dtype](x[0, 0])


def test_construct_from_noncompact_ndarray_and_other_device():
    x = np.random.randn(3, 4).astype(np.float32)
    t = nd.array(x).permute((1, 0))
    b = nd.NDArray(t)
    assert_nd_equal(b, x.T)
    c = nd.NDArray(t, device=nd.cpu_numpy())
    assert c.device == nd.cpu_numpy()
    assert_nd_equal(c, x.T)
    d = nd.array(x, device=nd.cpu_numpy())
    assert d.device == nd.cpu_numpy()
    assert_nd_equal(d, x)


# --------------------------------------------------------------------------
# Subclassing
# --------------------------------------------------------------------------

SUB_CALLS = []


class Sub(nd.NDArray):
    """Course-style subclass whose __getitem__ processes slices itself."""

    def __getitem__(self, idxs):
        if not isinstance(idxs, tuple):
            idxs = (idxs,)
        shape = self.shape
        full = []
        for i, s in enumerate(idxs):
            if isinstance(s, slice):
                full.append(self.process_slice(s, i))
            else:
                full.append(slice(s, s + 1, 1))
        full += [slice(0, shape[i], 1) for i in range(len(full), len(shape))]
        SUB_CALLS.append(tuple(full))
        return super().__getitem__(tuple(full))


def test_subclass_from_python():
    x = np.random.randn(5, 6)
    s = Sub(x)
    assert type(s) is Sub
    assert isinstance(s, nd.NDArray)
    assert_nd_equal(s, x.astype(np.float32))
    SUB_CALLS.clear()
    v = s[1:4, 2]
    assert SUB_CALLS == [(slice(1, 4, 1), slice(2, 3, 1))]
    assert isinstance(v, nd.NDArray)
    assert v.shape == (3, 1)
    np.testing.assert_array_equal(v.numpy(), x.astype(np.float32)[1:4, 2:3])
    w = s[-2:]
    assert SUB_CALLS[-1] == (slice(3, 5, 1), slice(0, 6, 1))
    np.testing.assert_array_equal(w.numpy(), x.astype(np.float32)[3:5])
    # the subclass still takes part in arithmetic
    np.testing.assert_allclose((s + 1.0).numpy(), x.astype(np.float32) + np.float32(1))


def test_subclass_with_device_keyword():
    s = Sub(np.arange(4.0), device=nd.cpu_numpy())
    assert type(s) is Sub and s.device == nd.cpu_numpy()
    assert_nd_equal(s, np.arange(4.0))


@pytest.mark.parametrize("sl, dim, expected", [
    (slice(None), 0, slice(0, 5, 1)),
    (slice(None, None, None), 1, slice(0, 7, 1)),
    (slice(1, 4, 2), 0, slice(1, 4, 2)),
    (slice(None, -1), 0, slice(0, 4, 1)),
    (slice(-3, None), 1, slice(4, 7, 1)),
    (slice(2, None, 3), 1, slice(2, 7, 3)),
    (slice(-4, -1, 2), 1, slice(3, 6, 2)),
])
def test_process_slice(sl, dim, expected):
    a = nd.array(np.zeros((5, 7)))
    got = a.process_slice(sl, dim)
    assert isinstance(got, slice)
    assert (got.start, got.stop, got.step) == (expected.start, expected.stop, expected.step)
    assert all(type(v) is int for v in (got.start, got.stop, got.step))


# --------------------------------------------------------------------------
# Fields, make, compact_strides, _init (2.2, 2.4)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(), (5,), (2, 3), (3, 0, 2), (0, 3), (2, 1, 2, 3, 1, 2, 2),
                                   (1, 2, 2, 1, 2, 3, 1, 2)])
def test_compact_strides(shape):
    assert nd.NDArray.compact_strides(shape) == compact_strides(shape)
    assert isinstance(nd.NDArray.compact_strides(shape), tuple)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (5,), (2, 3), (3, 0, 2), (2, 1, 2, 3, 1, 2, 2)])
def test_properties_and_underscore_fields(shape, dtype):
    x = np.asarray(np.random.randn(*shape))
    a = nd.array(x, dtype=dtype)
    assert a.shape == shape and a._shape == shape
    assert isinstance(a._shape, tuple) and isinstance(a._strides, tuple)
    assert a.strides == compact_strides(shape) and a._strides == compact_strides(shape)
    assert a._offset == 0 and isinstance(a._offset, int)
    assert a.device == nd.cpu() and a._device == nd.cpu()
    assert isinstance(a._device, nd.BackendDevice)
    assert a.ndim == len(shape)
    assert a.size == int(np.prod(shape))
    assert a._handle.size == int(np.prod(shape))
    assert isinstance(a._handle.ptr(), int)
    assert a.dtype == dtype
    assert str(a.dtype) == dtype


def test_size_of_0d_is_1():
    a = nd.array(np.float64(2.0))
    assert a.shape == () and a.size == 1 and a.ndim == 0 and a.strides == ()


def test_flat_is_a_view():
    x = np.random.randn(3, 4).astype(np.float32)
    a = nd.array(x)
    f = a.flat
    assert f.shape == (12,)
    assert f._handle.ptr() == a._handle.ptr()
    np.testing.assert_array_equal(f.numpy(), x.reshape(-1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_make_shares_memory(dtype):
    x = np.arange(12.0).reshape(3, 4)
    a = nd.array(x, dtype=dtype)
    b = nd.NDArray.make((2, 3), strides=(1, 4), device=a.device, handle=a._handle, offset=1)
    assert b._handle.ptr() == a._handle.ptr()
    assert b.shape == (2, 3) and b.strides == (1, 4) and b._offset == 1
    flat = x.reshape(-1)
    expected = np.array([[flat[1 + i + 4 * j] for j in range(3)] for i in range(2)])
    np.testing.assert_array_equal(b.numpy(), expected.astype(NP_DTYPE[dtype]))
    assert b.dtype == dtype
    # a write through a is visible through b
    a[0, 1] = 50.0
    assert b.numpy()[0, 0] == 50.0


def test_make_fresh_buffer_and_defaults():
    b = nd.NDArray.make((2, 3, 4))
    assert b.shape == (2, 3, 4)
    assert b.strides == (12, 4, 1)
    assert b._offset == 0
    assert b.device == nd.default_device()
    assert b._handle.size == 24
    assert b.is_compact()
    c = nd.NDArray.make((2, 3, 4))
    assert c._handle.ptr() != b._handle.ptr()
    d = nd.NDArray.make((3,), device=nd.cpu_numpy())
    assert d.device == nd.cpu_numpy() and d._handle.size == 3
    # a fresh buffer is usable
    b.fill(1.5)
    np.testing.assert_array_equal(b.numpy(), np.full((2, 3, 4), 1.5, np.float32))


def test_make_with_handle_and_compact_strides():
    a = nd.array(np.arange(6.0))
    b = nd.NDArray.make((3, 2), handle=a._handle)
    assert b.strides == (2, 1)
    assert b._handle.ptr() == a._handle.ptr()
    np.testing.assert_array_equal(b.numpy(), np.arange(6.0, dtype=np.float32).reshape(3, 2))


def test_init_copies_fields():
    x = np.random.randn(4, 5)
    a = nd.array(x).permute((1, 0))[1:4, ::2]
    b = nd.array([0.0])
    b._init(a)
    assert b.shape == a.shape
    assert b.strides == a.strides
    assert b._offset == a._offset
    assert b.device == a.device
    assert b._handle.ptr() == a._handle.ptr()
    np.testing.assert_array_equal(b.numpy(), x.astype(np.float32).T[1:4, ::2])


# --------------------------------------------------------------------------
# Conversion and misc (2.8 EXT, 2.12)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_numpy_is_a_copy(dtype):
    x = np.random.randn(3, 4)
    a = nd.array(x, dtype=dtype)
    n = a.numpy()
    assert n.dtype == NP_DTYPE[dtype]
    n[...] = 7.0
    np.testing.assert_array_equal(a.numpy(), x.astype(NP_DTYPE[dtype]))
    assert n.ctypes.data != a._handle.ptr()


@pytest.mark.parametrize("dtype", DTYPES)
def test_np_asarray_is_zero_copy_for_compact_cpu(dtype):
    x = np.random.randn(3, 4)
    a = nd.array(x, dtype=dtype)
    v = np.asarray(a)
    assert v.dtype == NP_DTYPE[dtype]
    assert v.shape == (3, 4)
    np.testing.assert_array_equal(v, x.astype(NP_DTYPE[dtype]))
    assert v.ctypes.data == a._handle.ptr()
    v[1, 2] = 42.0
    assert a.numpy()[1, 2] == 42.0


@pytest.mark.parametrize("view", ["transposed", "sliced", "broadcast"])
def test_np_asarray_of_views_has_logical_contents(view):
    x = np.random.randn(4, 6).astype(np.float32)
    a = nd.array(x)
    if view == "transposed":
        v, ref = a.permute((1, 0)), x.T
    elif view == "sliced":
        v, ref = a[1:4, ::2], x[1:4, ::2]
    else:
        v, ref = a[0].broadcast_to((3, 4, 6)), np.broadcast_to(x[0:1], (3, 4, 6))
    np.testing.assert_array_equal(np.asarray(v), ref)
    np.testing.assert_array_equal(np.array(v), ref)


def test_np_array_is_a_copy_and_numpy_helpers_accept_ndarray():
    x = np.random.randn(6, 3).astype(np.float32)
    a = nd.array(x)
    c = np.array(a)
    assert c.dtype == np.float32
    c[0, 0] = 99.0
    assert a.numpy()[0, 0] == x[0, 0]
    np.testing.assert_allclose(a, x)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(a, x + 1.0)
    parts = np.array_split(a, 2)
    assert len(parts) == 2
    np.testing.assert_array_equal(np.asarray(parts[0]), x[:3])
    np.testing.assert_array_equal(np.asarray(parts[1]), x[3:])
    assert np.linalg.norm(a) == pytest.approx(np.linalg.norm(x), rel=1e-6)
    assert np.asarray(a, dtype=np.float64).dtype == np.float64


def test_np_scalar_times_ndarray_dispatches_to_ndarray():
    x = np.random.randn(2, 3).astype(np.float32)
    a = nd.array(x)
    for s in (np.float32(2.5), np.float64(2.5), np.int64(3)):
        r = s * a
        assert isinstance(r, nd.NDArray), type(s)
        assert r.dtype == "float32"
        np.testing.assert_array_equal(r.numpy(), x * np.float32(s))


@pytest.mark.parametrize("dtype", DTYPES)
def test_to_device(dtype):
    x = np.random.randn(3, 2)
    a = nd.array(x, dtype=dtype)
    assert a.to(nd.cpu()) is a
    if dtype == "float32":
        b = a.to(nd.cpu_numpy())
        assert b.device == nd.cpu_numpy()
        assert_nd_equal(b, x, dtype)
        c = b.to(nd.cpu())
        assert c.device == nd.cpu()
        assert_nd_equal(c, x, dtype)


def test_to_device_of_view():
    x = np.random.randn(3, 4).astype(np.float32)
    v = nd.array(x).permute((1, 0))[1:3]
    b = v.to(nd.cpu_numpy())
    assert_nd_equal(b, x.T[1:3])


@pytest.mark.parametrize("dtype", DTYPES)
def test_fill(dtype):
    a = nd.empty((3, 4), dtype=dtype)
    a.fill(0.1)
    assert_nd_equal(a, np.full((3, 4), 0.1), dtype)
    # fill writes the whole underlying buffer, also through a view
    v = a[0:1, 0:2]
    v.fill(2.0)
    assert_nd_equal(a, np.full((3, 4), 2.0), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_astype_returns_numpy(dtype):
    x = np.array([[0.0, 3.0, 255.0], [7.9, 1.0, 2.0]])
    a = nd.array(x, dtype=dtype)
    u = a.astype(np.uint8)
    assert isinstance(u, np.ndarray) and u.dtype == np.uint8
    np.testing.assert_array_equal(u, x.astype(NP_DTYPE[dtype]).astype(np.uint8))
    f = a.astype("float64")
    assert isinstance(f, np.ndarray) and f.dtype == np.float64
    np.testing.assert_array_equal(f, x.astype(NP_DTYPE[dtype]).astype(np.float64))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (3,), (2, 3), (0, 3)])
def test_repr_and_str(shape, dtype):
    x = np.asarray(np.random.randn(*shape)).astype(NP_DTYPE[dtype])
    a = nd.array(x, dtype=dtype)
    assert str(a) == str(x)
    assert repr(a) == "NDArray(" + str(x) + ", device=cpu())"
    b = nd.array(x.astype(np.float32), device=nd.cpu_numpy())
    assert repr(b) == "NDArray(" + str(x.astype(np.float32)) + ", device=cpu_numpy())"


def test_ndarray_is_unhashable():
    with pytest.raises(TypeError):
        hash(nd.array([1.0]))


# --------------------------------------------------------------------------
# Module-level helpers (2.13)
# --------------------------------------------------------------------------

def test_module_exports():
    for name in ["NDArray", "BackendDevice", "cpu", "cuda", "cpu_numpy", "default_device",
                 "all_devices", "array", "empty", "full", "broadcast_to", "reshape", "maximum",
                 "log", "exp", "tanh", "sum", "flip", "prod", "set_num_threads",
                 "get_num_threads"]:
        assert hasattr(nd, name), name


@pytest.mark.parametrize("dtype", DTYPES)
def test_module_array_empty_full(dtype):
    x = np.random.randn(2, 5)
    assert_nd_equal(nd.array(x, dtype=dtype), x, dtype)
    e = nd.empty((2, 5), dtype=dtype)
    assert e.shape == (2, 5) and e.dtype == dtype and e.device == nd.cpu() and e.is_compact()
    e2 = nd.empty([4, 1], dtype=dtype, device=nd.cpu())
    assert e2.shape == (4, 1)
    assert_nd_equal(nd.full((3, 2), -0.3, dtype=dtype), np.full((3, 2), -0.3), dtype)
    f = nd.full((2,), 1.0, dtype=dtype, device=nd.cpu())
    assert f.device == nd.cpu()
    assert_nd_equal(f, np.ones(2), dtype)
    if dtype == "float32":
        g = nd.full((2,), 4.0, device=nd.cpu_numpy())
        assert g.device == nd.cpu_numpy()
        assert_nd_equal(g, np.full(2, 4.0), dtype)
        assert nd.empty((3,), device=nd.cpu_numpy()).device == nd.cpu_numpy()


def test_module_empty_full_default_dtype():
    assert nd.empty((2,)).dtype == "float32"
    assert nd.empty((2,), dtype=None).dtype == "float32"
    assert nd.full((2,), 1.0).dtype == "float32"
    assert nd.full((2,), 1.0, dtype=None).dtype == "float32"
    assert nd.array([1.0], dtype=None).dtype == "float32"


@pytest.mark.parametrize("dtype", DTYPES)
def test_module_functions(dtype):
    t = NP_DTYPE[dtype]
    x = np.random.rand(2, 1, 3) + 0.5
    y = np.random.randn(4, 1)
    a, b = nd.array(x, dtype=dtype), nd.array(y, dtype=dtype)
    xt, yt = x.astype(t), y.astype(t)
    tol = dict(rtol=2e-6, atol=1e-7) if dtype == "float32" else dict(rtol=1e-13, atol=1e-15)
    bc = nd.broadcast_to(a, (2, 4, 3))
    np.testing.assert_array_equal(bc.numpy(), np.broadcast_to(xt, (2, 4, 3)))
    np.testing.assert_array_equal(nd.reshape(a, (3, 2)).numpy(), xt.reshape(3, 2))
    np.testing.assert_array_equal(nd.maximum(a, b).numpy(), np.maximum(xt, yt))
    np.testing.assert_array_equal(nd.maximum(a, 1.0).numpy(), np.maximum(xt, t(1.0)))
    np.testing.assert_allclose(nd.log(a).numpy(), np.log(xt), **tol)
    np.testing.assert_allclose(nd.exp(b).numpy(), np.exp(yt), **tol)
    np.testing.assert_allclose(nd.tanh(b).numpy(), np.tanh(yt), **tol)
    s = nd.sum(a, axis=2)
    assert s.shape == (2, 1)
    np.testing.assert_allclose(s.numpy(), xt.astype(np.float64).sum(axis=2), **tol)
    sk = nd.sum(a, axis=0, keepdims=True)
    assert sk.shape == (1, 1, 3)
    np.testing.assert_allclose(sk.numpy(), xt.astype(np.float64).sum(axis=0, keepdims=True),
                               **tol)
    sn = nd.sum(a)
    assert sn.shape == (1,)
    np.testing.assert_allclose(sn.numpy(), [xt.astype(np.float64).sum()], **tol)
    np.testing.assert_array_equal(nd.flip(a, (0, 2)).numpy(), xt[::-1, :, ::-1])
    for r in (bc, nd.maximum(a, b), nd.log(a), s, nd.flip(a, (0,))):
        assert r.dtype == dtype


@pytest.mark.parametrize("seq", [(2, 3, 4), [5], (), [3, 0, 2], (7, 1)])
def test_module_prod(seq):
    assert nd.prod(seq) == int(np.prod(seq, dtype=np.int64))
