"""NDArray views and in-place writes (API.md 2.5, 2.6, 2.7; section 10 item 14).

Every view is checked against the NumPy view built the same way: shape,
strides (NumPy's byte strides / itemsize), offset (NumPy's data pointer
difference / itemsize), shared handle and values.
"""
import numpy as np
import pytest

import needle.backend_ndarray as nd

DTYPES = ["float32", "float64"]
NP_DTYPE = {"float32": np.float32, "float64": np.float64}


def compact_strides(shape):
    out, s = [], 1
    for d in reversed(shape):
        out.append(s)
        s *= d
    return tuple(reversed(out))


def np_offset(view, base):
    return (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) \
        // base.itemsize


def assert_view(v, ref, a, base):
    """NDArray view `v` of NDArray `a` matches NumPy view `ref` of contiguous `base`."""
    assert isinstance(v, nd.NDArray)
    assert v.shape == ref.shape
    if ref.size > 0:  # NumPy reports arbitrary strides for size-0 arrays
        assert v.strides == tuple(s // base.itemsize for s in ref.strides)
        assert v._offset == np_offset(ref, base)
    assert v._handle.ptr() == a._handle.ptr()
    assert v.device == a.device
    assert v.dtype == a.dtype
    np.testing.assert_array_equal(v.numpy(), ref)


def np_index(idx, shape):
    """NumPy index equivalent to needle's dims-keeping getitem."""
    if not isinstance(idx, tuple):
        idx = (idx,)
    out = []
    for d, s in enumerate(idx):
        if isinstance(s, slice):
            out.append(s)
        else:
            i = s + shape[d] if s < 0 else s
            out.append(slice(i, i + 1))
    return tuple(out)


def make(shape, dtype, device=None):
    base = np.asarray(np.random.randn(*shape)).astype(NP_DTYPE[dtype])
    return nd.array(base, dtype=dtype, device=device), base


# --------------------------------------------------------------------------
# reshape
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, new_shape, np_shape", [
    ((2, 3, 4), (6, 4), (6, 4)),
    ((2, 3, 4), (24,), (24,)),
    ((2, 3, 4), (-1,), (24,)),
    ((2, 3, 4), [4, -1], (4, 6)),
    ((2, 3, 4), (2, -1, 3), (2, 4, 3)),
    ((2, 3, 4), [1, 2, 1, 3, 4, 1], (1, 2, 1, 3, 4, 1)),
    ((24,), (2, 3, 4), (2, 3, 4)),
    ((), (1, 1), (1, 1)),
    ((1,), (), ()),
    ((1, 1), (-1,), (1,)),
    ((0, 3), (3, 0), (3, 0)),
    ((3, 0, 2), (-1, 3), (0, 3)),
    ((2, 1, 2, 3, 1, 2, 2), (4, 3, 4), (4, 3, 4)),
    ((96,), (1, 2, 2, 1, 2, 3, 1, 4), (1, 2, 2, 1, 2, 3, 1, 4)),
])
def test_reshape(shape, new_shape, np_shape, dtype, device):
    a, base = make(shape, dtype, device)
    r = a.reshape(new_shape)
    ref = base.reshape(np_shape)
    assert r.shape == np_shape
    assert r.strides == compact_strides(np_shape)
    assert r._offset == a._offset
    assert r._handle.ptr() == a._handle.ptr()
    np.testing.assert_array_equal(r.numpy(), ref)
    assert r.is_compact()


# --------------------------------------------------------------------------
# permute
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, axes", [
    ((3, 4), (1, 0)),
    ((3, 4), (0, 1)),
    ((2, 3, 4), (2, 0, 1)),
    ((2, 3, 4), (1, 2, 0)),
    ((2, 3, 4), [0, 2, 1]),
    ((), ()),
    ((0, 3), (1, 0)),
    ((3, 0, 2), (2, 1, 0)),
    ((2, 1, 2, 3, 1, 2, 2), (6, 5, 4, 3, 2, 1, 0)),
    ((1, 2, 2, 1, 2, 3, 1, 2), (7, 0, 6, 1, 5, 2, 4, 3)),
])
def test_permute(shape, axes, dtype, device):
    a, base = make(shape, dtype, device)
    assert_view(a.permute(axes), base.transpose(tuple(axes)), a, base)


# --------------------------------------------------------------------------
# broadcast_to
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, new_shape", [
    ((3, 1), (3, 4)),
    ((1,), (5,)),
    ((4,), (2, 3, 4)),
    ((1, 3), (2, 5, 3)),
    ((2, 1, 3), (2, 4, 3)),
    ((), (2, 3)),
    ((2, 3), (2, 3)),
    ((2, 3), [4, 2, 3]),
    ((1, 3), (0, 3)),
    ((3, 1), (2, 3, 0)),
    ((2, 1, 2, 1, 1, 2, 2), (2, 3, 2, 3, 4, 2, 2)),
    ((1, 2, 1), (2, 2, 2, 2, 1, 2, 2, 2)),
])
def test_broadcast_to(shape, new_shape, dtype, device):
    a, base = make(shape, dtype, device)
    b = a.broadcast_to(new_shape)
    assert_view(b, np.broadcast_to(base, tuple(new_shape)), a, base)
    if int(np.prod(new_shape)) != int(np.prod(shape)):
        assert not b.is_compact()


def test_broadcast_to_of_views(device):
    x = np.random.randn(4, 6).astype(np.float32)
    a = nd.array(x, device=device)
    v = a.permute((1, 0))[1:6:2, 2]          # shape (3, 1), strides (2, 6)
    ref = x.T[1:6:2, 2:3]
    assert_view(v, ref, a, x)
    assert_view(v.broadcast_to((2, 3, 5)), np.broadcast_to(ref, (2, 3, 5)), a, x)


# --------------------------------------------------------------------------
# as_strided
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, strides", [
    ((3, 4), (4, 1)),
    ((2, 3), (1, 2)),
    ((4, 3), (0, 1)),
    ((3, 3), (3, 0)),
    ((2, 2, 2), (4, 2, 1)),
    ((5,), (2,)),
])
def test_as_strided(shape, strides, dtype, device):
    a, base = make((12,), dtype, device)
    s = a.as_strided(shape, strides)
    ref = np.lib.stride_tricks.as_strided(base, shape, [st * base.itemsize for st in strides])
    assert_view(s, ref, a, base)


def test_as_strided_keeps_offset(device):
    x = np.arange(12.0, dtype=np.float32)
    a = nd.array(x, device=device)
    v = a[2:10]
    s = v.as_strided((2, 3), (3, 1))
    assert s._offset == 2
    assert s._handle.ptr() == a._handle.ptr()
    np.testing.assert_array_equal(s.numpy(), x[2:8].reshape(2, 3))


# --------------------------------------------------------------------------
# getitem (2.5)
# --------------------------------------------------------------------------

GETITEM_3D = [
    (1, 2, 3),
    (0, 0, 0),
    (slice(None), 2, slice(None)),
    slice(1, 4, 2),
    (slice(1, 4, 2), slice(0, 6, 3), slice(2, 7, 4)),
    (slice(-3, None), slice(None), slice(-7, -1)),
    (slice(-4, -1, 2), -1, slice(None, None, 2)),
    (-1, -2, -3),
    (-5, -6, -7),
    (4, 5, 6),
    (slice(1, None, 3),),
    2,
    -1,
    (slice(0, 100), slice(2, 60), slice(5, 1000, 2)),
    (slice(None, -1), slice(2, -2, 2), slice(None, None, 3)),
    (slice(4, 5, 10), slice(1, 6, 7), 3),
    (slice(None), slice(None), slice(None)),
    (3, slice(None, -1)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("idx", GETITEM_3D, ids=[repr(i) for i in GETITEM_3D])
def test_getitem_3d(idx, dtype, device):
    a, base = make((5, 6, 7), dtype, device)
    v = a[idx]
    ref = base[np_index(idx, base.shape)]
    assert v.ndim == 3  # dimensions are never dropped
    assert_view(v, ref, a, base)


@pytest.mark.parametrize("idx, shape", [
    ((2, 2), (1, 1)),
    ((slice(None, 4), 2), (4, 1)),
    ((slice(1, 4, 2), slice(0, 5)), (2, 5)),
    (slice(None, -2), (3, 5)),
    ((-1, slice(None, None, 4)), (1, 2)),
])
def test_getitem_2d_keeps_dims(idx, shape, device):
    a, base = make((5, 5), "float32", device)
    v = a[idx]
    assert v.shape == shape
    assert_view(v, base[np_index(idx, base.shape)], a, base)


def test_getitem_1d_and_high_rank(device):
    a, base = make((10,), "float32", device)
    assert_view(a[3], base[3:4], a, base)
    assert_view(a[-2], base[8:9], a, base)
    assert_view(a[2:9:3], base[2:9:3], a, base)
    b, bbase = make((2, 1, 2, 3, 1, 2, 2), "float64", device)
    idx = (1, 0, slice(None), slice(1, 3), 0, -1, slice(None, None, 2))
    assert_view(b[idx], bbase[np_index(idx, bbase.shape)], b, bbase)
    c, cbase = make((1, 2, 2, 1, 2, 3, 1, 2), "float32", device)
    idx = (0, -1, slice(0, 2), 0, 1, slice(None, None, 2))
    assert_view(c[idx], cbase[np_index(idx, cbase.shape)], c, cbase)


def test_views_of_views(device):
    x = np.random.randn(6, 7, 8).astype(np.float32)
    a = nd.array(x, device=device)
    v1, r1 = a.permute((2, 0, 1)), x.transpose(2, 0, 1)            # (8, 6, 7)
    assert_view(v1, r1, a, x)
    v2, r2 = v1[1:7:2, slice(-5, None), 3], r1[1:7:2, -5:, 3:4]       # (3, 5, 1)
    assert_view(v2, r2, a, x)
    v3, r3 = v2.broadcast_to((2, 3, 5, 4)), np.broadcast_to(r2, (2, 3, 5, 4))
    assert_view(v3, r3, a, x)
    v4, r4 = v3[1, 1:, ::2, -2:], r3[1:2, 1:, ::2, -2:]
    assert_view(v4, r4, a, x)
    v5, r5 = v4.permute((3, 1, 0, 2)), r4.transpose(3, 1, 0, 2)
    assert_view(v5, r5, a, x)
    c = v5.compact()
    assert c.is_compact() and c._handle.ptr() != a._handle.ptr()
    np.testing.assert_array_equal(c.numpy(), r5)


# --------------------------------------------------------------------------
# compactness (2.6)
# --------------------------------------------------------------------------

def _compactness_cases():
    x = np.random.RandomState(3).randn(4, 3).astype(np.float32)
    a = nd.array(x)
    return [
        ("fresh", a, True, x),
        ("transposed", a.permute((1, 0)), False, x.T),
        ("identity_permute", a.permute((0, 1)), True, x),
        ("broadcast", a[0].broadcast_to((4, 3)), False, np.broadcast_to(x[0:1], (4, 3))),
        ("row_slice_compact_strides", a[1:3], False, x[1:3]),
        ("first_row", a[0], False, x[0:1]),
        ("full_slice", a[0:4, 0:3], True, x),
        ("col_slice", a[:, 1:], False, x[:, 1:]),
        ("strided", a[::2], False, x[::2]),
        ("reshape", a.reshape((3, 4)), True, x.reshape(3, 4)),
        ("zero_d", nd.array(np.float32(2.0)), True, np.float32(2.0)),
        ("size0", nd.array(np.zeros((0, 3))), True, np.zeros((0, 3), np.float32)),
    ]


CASES = _compactness_cases()


@pytest.mark.parametrize("name, arr, compact, ref", CASES, ids=[c[0] for c in CASES])
def test_is_compact_and_compact(name, arr, compact, ref):
    assert arr.is_compact() is compact
    c = arr.compact()
    if compact:
        assert c is arr
    else:
        assert c._handle.ptr() != arr._handle.ptr()
        assert c._handle.size == int(np.prod(ref.shape))
        assert c._offset == 0
    assert c.is_compact()
    assert c.strides == compact_strides(np.shape(ref))
    assert c.dtype == arr.dtype
    np.testing.assert_array_equal(c.numpy(), ref)


def test_compact_float64_view(device):
    x = np.random.randn(5, 4)
    a = nd.array(x, dtype="float64", device=device)
    c = a.permute((1, 0))[1:3].compact()
    assert c.dtype == "float64" and c.is_compact()
    np.testing.assert_array_equal(c.numpy(), x.T[1:3])


def test_compact_does_not_alias_base(device):
    x = np.random.randn(3, 3).astype(np.float32)
    a = nd.array(x, device=device)
    c = a.permute((1, 0)).compact()
    a[0, 1] = 100.0
    np.testing.assert_array_equal(c.numpy(), x.T)


# --------------------------------------------------------------------------
# setitem (2.7)
# --------------------------------------------------------------------------

SETITEM = [
    # (base shape, index, value kind)
    ((5, 6), (slice(1, 3), slice(2, 5)), "array"),
    ((5, 6), (slice(1, 3), slice(2, 5)), "flat"),
    ((5, 6), (slice(None, None, 2), slice(1, None, 3)), "array"),
    ((5, 6), (slice(None, None, 2), 1), "scalar"),
    ((5, 6), (2, 3), "scalar"),
    ((5, 6), (-1, -1), "array"),
    ((5, 6), 2, "flat"),
    ((5, 6), slice(-2, None), "scalar"),
    ((5, 6), (slice(None), slice(None)), "array"),
    ((4, 5, 6), (slice(1, 3), 2, slice(0, 6, 2)), "array"),
    ((4, 5, 6), (slice(1, 3), 2, slice(0, 6, 2)), "transposed"),
    ((4, 5, 6), (slice(None), slice(1, 4), -1), "broadcast"),
    ((4, 5, 6), (0, slice(0, 100)), "scalar"),
    ((2, 1, 2, 3, 1, 2, 2), (1, 0, slice(None), slice(1, 3), 0, -1, slice(None)), "array"),
    ((12,), slice(3, 11, 4), "array"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, idx, kind", SETITEM, ids=[f"{s}-{i}-{k}" for s, i, k in SETITEM])
def test_setitem(shape, idx, kind, dtype, device):
    t = NP_DTYPE[dtype]
    a, x = make(shape, dtype, device)
    ptr, strides = a._handle.ptr(), a.strides
    ni = np_index(idx, shape)
    vshape = x[ni].shape
    if kind == "scalar":
        value = 0.1
        x[ni] = t(value)
        a[idx] = value
    else:
        y = np.asarray(np.random.randn(*vshape))
        if kind == "array":
            src = nd.array(y, dtype=dtype, device=device)
        elif kind == "flat":
            src = nd.array(y.reshape(-1), dtype=dtype, device=device)
        elif kind == "transposed":
            src = nd.array(y.T, dtype=dtype, device=device)
            src = src.permute(tuple(reversed(range(len(vshape)))))
            assert not src.is_compact()
        else:  # broadcast along the first axis
            y = np.broadcast_to(y[:1], vshape)
            src = nd.array(y[:1], dtype=dtype, device=device).broadcast_to(vshape)
        x[ni] = y.astype(t).reshape(vshape)
        a[idx] = src
    assert a._handle.ptr() == ptr
    assert a.shape == shape and a.strides == strides
    np.testing.assert_array_equal(a.numpy(), x)


@pytest.mark.parametrize("value", [3, 2.5, 0.1, np.float64(0.1), np.float32(-4.25), np.int64(-7),
                                   np.array(1.75)])
def test_setitem_scalar_kinds(value, device):
    a, x = make((3, 4), "float32", device)
    a[1, 1:3] = value
    x[1, 1:3] = np.float32(float(value))
    np.testing.assert_array_equal(a.numpy(), x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_setitem_through_views_reaches_base(dtype, device):
    t = NP_DTYPE[dtype]
    a, x = make((6, 8), dtype, device)
    v = a.permute((1, 0))[1:7, ::2]                 # (6, 3) view of the base
    xv = x.T[1:7, ::2]
    y = np.random.randn(2, 3)
    v[0:2, :] = nd.array(y, dtype=dtype, device=device)
    xv[0:2, :] = y.astype(t)
    v[-1, 1] = 9.0
    xv[-1:, 1:2] = 9.0
    w = v[3:5]                                       # view of a view
    w[:, 2] = -3.5
    xv[3:5, 2:3] = -3.5
    np.testing.assert_array_equal(a.numpy(), x)
    np.testing.assert_array_equal(v.numpy(), xv)


@pytest.mark.parametrize("dtype", DTYPES)
def test_flat_writes_are_visible(dtype):
    t = NP_DTYPE[dtype]
    a, x = make((3, 4), dtype)
    a.flat[5] = 3.0
    x.flat[5] = 3.0
    eps = 1e-3
    a.flat[7] += eps
    x.flat[7] = x.flat[7] + t(eps)
    a.flat[-1] -= eps
    x.flat[11] = x.flat[11] - t(eps)
    for j in (0, 2):
        a.flat[j] = a.flat[j] * 2.0
        x.flat[j] = x.flat[j] * t(2.0)
    np.testing.assert_array_equal(a.numpy(), x)
    # later computations see the writes
    np.testing.assert_allclose((a + 0.0).numpy(), x)
    np.testing.assert_allclose(a.sum().numpy(), [x.astype(np.float64).sum()], rtol=1e-5)


def test_setitem_row_copy_within_array(device):
    a, x = make((4, 5), "float32", device)
    a[0] = a[3]
    x[0] = x[3]
    a[1:3] = a[2:4]          # overlapping rows: NumPy semantics (source read first)
    x[1:3] = x[2:4].copy()
    np.testing.assert_array_equal(a.numpy(), x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_setitem_in_place_transpose(dtype, device):
    a, x = make((5, 5), dtype, device)
    a[:, :] = a.permute((1, 0))
    np.testing.assert_array_equal(a.numpy(), x.T)


def test_setitem_on_other_device():
    x = np.random.randn(3, 4).astype(np.float32)
    a = nd.array(x, device=nd.cpu_numpy())
    a[1:3, ::2] = 5.0
    a[0] = nd.array(np.arange(4.0), device=nd.cpu_numpy())
    x[1:3, ::2] = 5.0
    x[0] = np.arange(4.0)
    np.testing.assert_array_equal(a.numpy(), x)


def test_np_asarray_writes_visible_to_later_ops():
    a, x = make((4, 3), "float32")
    np.asarray(a)[2, 1] = 11.0
    x[2, 1] = 11.0
    np.testing.assert_array_equal((a * 1.0).numpy(), x)


def test_negative_strides_through_as_strided(device):
    # strides may be negative transiently (flip is built this way, 2.11)
    x = np.arange(12.0, dtype=np.float32)
    a = nd.array(x, device=device)
    r = a[11].as_strided((3, 4), (-4, -1))
    assert r._offset == 11 and r.strides == (-4, -1)
    np.testing.assert_array_equal(r.numpy(), x[::-1].reshape(3, 4))
    c = r.compact()
    assert c.is_compact()
    np.testing.assert_array_equal(c.numpy(), x[::-1].reshape(3, 4))
    np.testing.assert_array_equal((r + 0.0).numpy(), x[::-1].reshape(3, 4))
    r[0, 0:2] = -1.0     # writes through negative strides land in the base
    x[11], x[10] = -1.0, -1.0
    np.testing.assert_array_equal(a.numpy(), x)


def test_numpy_integer_indices(device):
    a, base = make((4, 5), "float32", device)
    idx = (np.int64(2), np.int32(-1))
    assert_view(a[idx], base[2:3, 4:5], a, base)
    a[np.int64(1), 0] = 6.0
    base[1, 0] = 6.0
    np.testing.assert_array_equal(a.numpy(), base)


def test_views_keep_the_buffer_alive():
    import gc
    x = np.random.randn(1000).astype(np.float32)
    a = nd.array(x)
    v = a[10:20]
    flat = np.asarray(nd.array(x))   # only the NumPy view holds that buffer now
    del a
    gc.collect()
    junk = [nd.full((1000,), 7.0) for _ in range(50)]
    np.testing.assert_array_equal(v.numpy(), x[10:20])
    np.testing.assert_array_equal(flat, x)
    del junk


@pytest.mark.parametrize("seed", range(4))
def test_random_view_chains(seed, device):
    """Random chains of getitem / permute / broadcast_to / reshape, each step
    checked against the same NumPy chain; then a write through the final view
    (when it has no broadcast dims) must land in the base as in NumPy."""
    import random

    rng = random.Random(seed)
    for trial in range(150):
        shape = tuple(rng.randint(1, 4) for _ in range(rng.randint(1, 4)))
        dtype = rng.choice(DTYPES)
        a, base = make(shape, dtype, device)
        v, r = a, base
        writable = True
        for _ in range(rng.randint(1, 4)):
            k = rng.random()
            if k < 0.4:
                idx = []
                for n in v.shape:
                    start = rng.randrange(n)
                    stop = rng.randrange(start + 1, n + 1)
                    if rng.random() < 0.25:
                        idx.append(rng.randrange(-n, n))
                    else:
                        idx.append(slice(start - n if rng.random() < 0.3 else start, stop,
                                         rng.randint(1, 3)))
                idx = tuple(idx[:rng.randint(1, len(idx))])
                v, r = v[idx], r[np_index(idx, r.shape)]
            elif k < 0.7:
                p = list(range(v.ndim))
                rng.shuffle(p)
                v, r = v.permute(tuple(p)), r.transpose(p)
            elif k < 0.85:
                new = tuple(3 if n == 1 and rng.random() < 0.5 else n for n in v.shape)
                if new != v.shape:
                    v, r = v.broadcast_to(new), np.broadcast_to(r, new)
                    writable = False
            elif v.is_compact():
                v, r = v.reshape((v.size,)), r.reshape(-1)
            assert v.shape == r.shape
            assert v._handle.ptr() == a._handle.ptr()
            # strides of length-1 dims are free in NumPy's broadcast_to; compare the rest
            assert all(n == 1 or s == rs // r.itemsize
                       for n, s, rs in zip(r.shape, v.strides, r.strides)), (v.strides, r.strides)
            np.testing.assert_array_equal(v.numpy(), r)
        if writable:
            y = np.random.randn(*r.shape).astype(NP_DTYPE[dtype])
            v[tuple(slice(None) for _ in v.shape)] = nd.array(y, dtype=dtype, device=device)
            r[...] = y
            np.testing.assert_array_equal(a.numpy(), base)
