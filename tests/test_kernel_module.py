"""The course's kernel-module interface (API.md 2.3), reached through
`BackendDevice.__getattr__`, on the native cpu device and on cpu_numpy.

Buffers are float32, functions write into a preallocated `out` and return
None; `shape`/`strides` are sequences of ints (strides in elements, signed).
"""
import numpy as np
import pytest

import needle.backend_ndarray as nd

DEVICES = ["cpu", "cpu_numpy"]


@pytest.fixture(params=DEVICES)
def dev(request):
    return getattr(nd, request.param)()


def upload(dev, x):
    x = np.ascontiguousarray(x, dtype=np.float32)
    h = dev.Array(x.size)
    assert dev.from_numpy(x, h) is None
    return h


def download(dev, h, shape=None):
    shape = (h.size,) if shape is None else tuple(shape)
    strides = tuple(int(s) for s in np.cumprod((1,) + shape[::-1])[:-1][::-1]) if shape else ()
    out = dev.to_numpy(h, shape, strides, 0)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == shape
    return np.array(out)


def test_array_size_and_ptr(dev):
    a, b = dev.Array(10), dev.Array(10)
    assert a.size == 10
    assert isinstance(a.ptr(), int) and a.ptr() != 0
    assert a.ptr() == a.ptr()
    assert a.ptr() != b.ptr()
    assert dev.Array(1).size == 1


def test_device_name_and_tile_size():
    assert nd.cpu().__device_name__ == "cpu"
    assert nd.cpu().__tile_size__ == 8
    assert isinstance(nd.cpu_numpy().__device_name__, str)


def test_from_numpy_to_numpy_roundtrip(dev):
    x = np.random.randn(3, 4).astype(np.float32)
    h = upload(dev, x)
    np.testing.assert_array_equal(download(dev, h, (3, 4)), x)
    # to_numpy of a strided view: transposed and offset
    t = dev.to_numpy(h, (4, 3), (1, 4), 0)
    np.testing.assert_array_equal(t, x.T)
    s = dev.to_numpy(h, (2, 2), (4, 2), 5)
    np.testing.assert_array_equal(s, x.reshape(-1)[[[5, 7], [9, 11]]])
    bc = dev.to_numpy(h, (2, 4), (0, 1), 4)
    np.testing.assert_array_equal(bc, np.broadcast_to(x[1], (2, 4)))


def test_to_numpy_is_a_copy_on_cpu():
    dev = nd.cpu()
    x = np.arange(6, dtype=np.float32)
    h = upload(dev, x)
    out = dev.to_numpy(h, (6,), (1,), 0)
    out[...] = -1.0
    np.testing.assert_array_equal(download(dev, h), x)


def test_fill(dev):
    h = dev.Array(7)
    assert dev.fill(h, 2.5) is None
    np.testing.assert_array_equal(download(dev, h), np.full(7, 2.5, np.float32))
    dev.fill(h, 0.1)
    np.testing.assert_array_equal(download(dev, h), np.full(7, 0.1, np.float32))


@pytest.mark.parametrize("shape, strides, offset", [
    ((3, 4), (4, 1), 0),
    ((4, 3), (1, 4), 0),
    ((2, 3), (6, 2), 1),
    ((2, 3), (-4, 1), 4),
    ((3, 2), (-4, -2), 11),
    ((2, 2, 3), (0, 4, 1), 0),
    ((), (), 5),
    ((1, 1, 1, 2, 1, 2, 1), (12, 12, 12, 6, 6, 1, 1), 3),
])
def test_compact(dev, shape, strides, offset):
    x = np.random.randn(12).astype(np.float32)
    a = upload(dev, x)
    n = int(np.prod(shape))
    out = dev.Array(n)
    assert dev.compact(a, out, shape, strides, offset) is None
    ref = np.empty(shape, np.float32)
    for idx in np.ndindex(*shape):
        ref[idx] = x[offset + sum(i * s for i, s in zip(idx, strides))]
    np.testing.assert_array_equal(download(dev, out, shape), ref)
    # lists are accepted as well
    out2 = dev.Array(n)
    dev.compact(a, out2, list(shape), list(strides), offset)
    np.testing.assert_array_equal(download(dev, out2, shape), ref)


@pytest.mark.parametrize("shape, strides, offset", [
    ((3, 4), (4, 1), 0),
    ((4, 3), (1, 4), 0),
    ((2, 3), (6, 2), 1),
    ((2, 3), (-4, 1), 4),
])
def test_ewise_setitem(dev, shape, strides, offset):
    base = np.random.randn(12).astype(np.float32)
    out = upload(dev, base)
    y = np.asarray(np.random.randn(*shape)).astype(np.float32)
    a = upload(dev, y)
    assert dev.ewise_setitem(a, out, shape, strides, offset) is None
    ref = base.copy()
    for idx in np.ndindex(*shape):
        ref[offset + sum(i * s for i, s in zip(idx, strides))] = y[idx]
    np.testing.assert_array_equal(download(dev, out), ref)


@pytest.mark.parametrize("shape, strides, offset", [
    ((3, 4), (4, 1), 0),
    ((2, 3), (6, 2), 1),
    ((2, 2), (-4, -1), 11),
    ((1,), (1,), 6),
])
def test_scalar_setitem(dev, shape, strides, offset):
    base = np.random.randn(12).astype(np.float32)
    out = upload(dev, base)
    size = int(np.prod(shape))
    assert dev.scalar_setitem(size, 0.1, out, shape, strides, offset) is None
    ref = base.copy()
    for idx in np.ndindex(*shape):
        ref[offset + sum(i * s for i, s in zip(idx, strides))] = np.float32(0.1)
    np.testing.assert_array_equal(download(dev, out), ref)


def f32(fn):
    return lambda *args: fn(*args).astype(np.float32)


EWISE = {
    "ewise_add": np.add,
    "ewise_mul": np.multiply,
    "ewise_div": np.divide,
    "ewise_maximum": np.maximum,
    "ewise_eq": f32(np.equal),
    "ewise_ge": f32(np.greater_equal),
}


@pytest.mark.parametrize("name", sorted(EWISE))
def test_ewise_binary(dev, name):
    n = 37
    x = np.random.randint(-3, 4, n).astype(np.float32)
    x[x == 0] = 1.0
    y = np.random.randint(1, 4, n).astype(np.float32) * np.where(np.random.rand(n) < .5, -1, 1)
    y = y.astype(np.float32)
    y[:5] = x[:5]  # some ties for eq/ge
    a, b, out = upload(dev, x), upload(dev, y), dev.Array(n)
    assert getattr(dev, name)(a, b, out) is None
    np.testing.assert_array_equal(download(dev, out), EWISE[name](x, y))


SCALAR = {
    "scalar_add": np.add,
    "scalar_mul": np.multiply,
    "scalar_div": np.divide,
    "scalar_power": np.power,
    "scalar_maximum": np.maximum,
    "scalar_eq": f32(np.equal),
    "scalar_ge": f32(np.greater_equal),
}


@pytest.mark.parametrize("val", [2.0, 0.1, -1.5, 3])
@pytest.mark.parametrize("name", sorted(SCALAR))
def test_scalar_ops(dev, name, val):
    n = 29
    x = (np.random.rand(n) * 4 + 0.25).astype(np.float32)
    x[:3] = np.float32(val)
    a, out = upload(dev, x), dev.Array(n)
    with np.errstate(invalid="ignore"):  # (-1.5) ** -1.5 is NaN
        assert getattr(dev, name)(a, val, out) is None
        expected = SCALAR[name](x, np.float32(val))
    if name == "scalar_power":
        np.testing.assert_allclose(download(dev, out), expected, rtol=2e-6)
    else:
        np.testing.assert_array_equal(download(dev, out), expected)


@pytest.mark.parametrize("name, fn", [("ewise_log", np.log), ("ewise_exp", np.exp),
                                      ("ewise_tanh", np.tanh)])
def test_ewise_unary(dev, name, fn):
    x = (np.random.rand(41) * 3 + 0.1).astype(np.float32)
    if name != "ewise_log":
        x -= 1.5
    a, out = upload(dev, x), dev.Array(41)
    assert getattr(dev, name)(a, out) is None
    np.testing.assert_allclose(download(dev, out), fn(x), rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("m, n, p", [(1, 1, 1), (3, 4, 5), (16, 8, 24), (17, 33, 9)])
def test_matmul(dev, m, n, p):
    x = np.random.randn(m, n).astype(np.float32)
    y = np.random.randn(n, p).astype(np.float32)
    a, b, out = upload(dev, x), upload(dev, y), dev.Array(m * p)
    dev.fill(out, 123.0)
    assert dev.matmul(a, b, out, m, n, p) is None
    np.testing.assert_allclose(download(dev, out, (m, p)), x.astype(np.float64) @ y,
                               rtol=1e-5, atol=1e-5)


def to_tiles(x, t):
    r, c = x.shape
    return np.ascontiguousarray(x.reshape(r // t, t, c // t, t).transpose(0, 2, 1, 3))


def from_tiles(x):
    a, b, t, _ = x.shape
    return x.transpose(0, 2, 1, 3).reshape(a * t, b * t)


@pytest.mark.parametrize("m, n, p", [(8, 8, 8), (16, 24, 8), (8, 32, 40), (64, 64, 64)])
def test_matmul_tiled(m, n, p):
    dev = nd.cpu()
    t = dev.__tile_size__
    assert t == 8
    x = np.random.randn(m, n).astype(np.float32)
    y = np.random.randn(n, p).astype(np.float32)
    a, b = upload(dev, to_tiles(x, t)), upload(dev, to_tiles(y, t))
    out = dev.Array(m * p)
    dev.fill(out, np.nan)  # uninitialised memory: the kernel must zero `out` itself
    assert dev.matmul_tiled(a, b, out, m, n, p) is None
    got = from_tiles(download(dev, out, (m // t, p // t, t, t)))
    np.testing.assert_allclose(got, x.astype(np.float64) @ y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("rows, k", [(1, 1), (4, 6), (7, 1), (3, 1000), (1, 4097)])
def test_reduce(dev, rows, k):
    x = np.random.randn(rows * k).astype(np.float32)
    a = upload(dev, x)
    out = dev.Array(rows)
    assert dev.reduce_sum(a, out, k) is None
    np.testing.assert_allclose(download(dev, out), x.reshape(rows, k).astype(np.float64)
                               .sum(axis=1), rtol=1e-5, atol=1e-5 * np.sqrt(k))
    out2 = dev.Array(rows)
    assert dev.reduce_max(a, out2, k) is None
    np.testing.assert_array_equal(download(dev, out2), x.reshape(rows, k).max(axis=1))


def test_ndarray_handles_work_with_kernels():
    dev = nd.cpu()
    x = np.random.randn(2, 3).astype(np.float32)
    a = nd.array(x)
    out = nd.empty((3, 2))
    dev.compact(a._handle, out._handle, (3, 2), (1, 3), 0)
    np.testing.assert_array_equal(out.numpy(), x.T)
    s = nd.empty((2, 3))
    dev.ewise_add(a._handle, a._handle, s._handle)
    np.testing.assert_array_equal(s.numpy(), x + x)
