"""The backend's convolution slots (pad, flip, dilate, im2col) and the
optional-slot fallbacks (backend.h, Note [Optional backend slots]).

Every case runs twice: through the CPU backend's slots, and through the
composed fallbacks a backend without those slots gets (`_C._skip_optional_slots`,
a test-only switch). Data movement must match NumPy exactly; the composed
optimizer updates must match the fused ones within float rounding.
Inputs come compact, transposed, sliced, broadcast and reversed (negative
strides), in float32 and float64; special shapes cover 0-d and size-0 dims.
"""
import gc
import os
import sys

import numpy as np
import pytest

import needle as ndl
import needle.backend_ndarray as nd
from needle import _C, nn, optim

DTYPES = ["float32", "float64"]
NP_DTYPE = {"float32": np.float32, "float64": np.float64}
KINDS = ["compact", "transposed", "sliced", "broadcast", "reversed"]


@pytest.fixture(params=["slots", "fallback"])
def path(request):
    """Run the test through the backend's slots, then through the fallbacks."""
    prev = _C._skip_optional_slots(request.param == "fallback")
    yield request.param
    _C._skip_optional_slots(prev)


def make_input(kind, shape, dtype):
    """(NDArray of `shape` laid out as `kind`, NumPy array with the same values)."""
    t = NP_DTYPE[dtype]
    shape = tuple(shape)
    if kind == "compact":
        x = np.asarray(np.random.randn(*shape)).astype(t)
        return nd.array(x, dtype=dtype), x
    if kind == "transposed":
        perm = tuple(reversed(range(len(shape))))
        x = np.asarray(np.random.randn(*reversed(shape))).astype(t)
        return nd.array(x, dtype=dtype).permute(perm), x.transpose(perm)
    if kind == "sliced":
        # every other element; a size-0 axis is the full slice of a size-0 axis
        x = np.asarray(np.random.randn(*(2 * s + 1 if s else 0 for s in shape))).astype(t)
        idx = tuple(slice(1, 1 + 2 * s, 2) if s else slice(None) for s in shape)
        return nd.array(x, dtype=dtype)[idx], x[idx]
    if kind == "broadcast":
        x = np.random.randn(*((1,) + shape[1:])).astype(t)
        return nd.array(x, dtype=dtype).broadcast_to(shape), np.broadcast_to(x, shape)
    if kind == "reversed":
        x = np.asarray(np.random.randn(*shape)).astype(t)
        a = nd.array(x, dtype=dtype)
        st = nd.NDArray.compact_strides(shape)
        off = sum((n - 1) * s for n, s in zip(shape, st))
        v = nd.NDArray.make(shape, strides=tuple(-s for s in st), device=a.device,
                            handle=a._handle, offset=off)
        return v, x[(slice(None, None, -1),) * len(shape)]
    raise AssertionError(kind)


def check(result, expected, dtype, source=None):
    """`result` is a fresh compact NDArray exactly equal to `expected`."""
    expected = np.asarray(expected)
    assert isinstance(result, nd.NDArray)
    assert result.dtype == dtype
    assert result.shape == expected.shape
    assert result.is_compact()
    assert result.strides == nd.NDArray.compact_strides(expected.shape)
    if source is not None:
        assert result._handle.ptr() != source._handle.ptr()
    got = result.numpy()
    assert got.dtype == NP_DTYPE[dtype]
    np.testing.assert_array_equal(got, expected.astype(NP_DTYPE[dtype]))


# --------------------------------------------------------------------------
# pad
# --------------------------------------------------------------------------

PADS = [
    # shape, one (left, right) pair per axis
    ((3, 4), ((1, 2), (0, 3))),
    ((3, 4, 5), ((1, 2), (0, 3), (2, 0))),
    ((3, 4, 5), ((0, 0), (0, 0), (0, 0))),
    ((2, 5, 6, 3), ((0, 0), (1, 1), (2, 2), (0, 0))),        # NHWC, H and W
    ((2, 3, 2, 2, 3), ((1, 0), (0, 1), (1, 1), (0, 0), (2, 1))),
    ((2, 2, 2, 2, 2, 2, 2), ((1, 0),) * 7),
]

PAD_SPECIAL = [
    ((), ()),
    ((5,), ((3, 0),)),
    ((0,), ((1, 2),)),
    ((0, 3), ((1, 1), (0, 2))),
    ((3, 0, 2), ((0, 0), (1, 1), (0, 0))),
    ((2, 0), ((0, 0), (0, 0))),
    ((1, 1, 1), ((0, 1), (1, 0), (2, 2))),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape, pads", PADS, ids=[str(p[1]) for p in PADS])
def test_pad(shape, pads, kind, dtype, path):
    a, x = make_input(kind, shape, dtype)
    before = a.numpy()
    check(a.pad(pads), np.pad(x, pads), dtype, a)
    np.testing.assert_array_equal(a.numpy(), before)


@pytest.mark.parametrize("kind", ["compact", "sliced"])
@pytest.mark.parametrize("shape, pads", PAD_SPECIAL, ids=[str(p) for p in PAD_SPECIAL])
def test_pad_special_shapes(shape, pads, kind, path):
    a, x = make_input(kind, shape, "float64")
    check(a.pad(pads), np.pad(x, pads) if pads else x, "float64")


def test_pad_accepts_lists_and_numpy_ints(path):
    a, x = make_input("compact", (2, 3), "float32")
    pads = [[np.int64(1), 0], (0, np.int32(2))]
    check(a.pad(pads), np.pad(x, ((1, 0), (0, 2))), "float32")


@pytest.mark.parametrize("kind", ["compact", "transposed"])
def test_pad_large(kind, path):
    """Big enough for the fill and copy kernels to split over the thread pool."""
    a, x = make_input(kind, (4, 48, 48, 32), "float32")
    pads = ((0, 0), (1, 2), (2, 1), (0, 0))
    check(a.pad(pads), np.pad(x, pads), "float32")


# --------------------------------------------------------------------------
# flip
# --------------------------------------------------------------------------

FLIPS = [
    # shape, axes
    ((3, 4), (0,)),
    ((3, 4), (1,)),
    ((3, 4), (0, 1)),
    ((3, 4, 5), (2, 0)),
    ((3, 4, 5), (-1,)),
    ((3, 4, 5), ()),
    ((2, 5, 6, 3), (1, 2)),                     # a conv kernel's K, K
    ((2, 3, 2, 2, 3, 2), (0, 2, 5)),
]

FLIP_SPECIAL = [((), ()), ((0,), (0,)), ((0, 3), (1,)), ((3, 0, 2), (0, 2)),
                ((1, 5), (0, 1)), ((2, 1, 2, 3, 1, 2, 2), (0, 3, 6))]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape, axes", FLIPS, ids=[str(f) for f in FLIPS])
def test_flip(shape, axes, kind, dtype, path):
    a, x = make_input(kind, shape, dtype)
    before = a.numpy()
    check(a.flip(axes), np.flip(x, axes) if axes else x, dtype, a)
    np.testing.assert_array_equal(a.numpy(), before)


@pytest.mark.parametrize("shape, axes", FLIP_SPECIAL, ids=[str(f) for f in FLIP_SPECIAL])
def test_flip_special_shapes(shape, axes, path):
    a, x = make_input("compact", shape, "float32")
    check(a.flip(axes), np.flip(x, axes) if axes else x, "float32")


def test_flip_none_reverses_every_axis(path):
    a, x = make_input("sliced", (3, 4, 2), "float64")
    check(a.flip(None), np.flip(x), "float64")


def test_flip_large_transposed(path):
    a, x = make_input("transposed", (256, 384), "float32")
    check(a.flip((0, 1)), np.flip(x), "float32")


# --------------------------------------------------------------------------
# dilate (API.md 4.5)
# --------------------------------------------------------------------------

def dilate_ref(x, axes, d):
    axes = {ax % x.ndim for ax in axes if ax < x.ndim}
    shape = tuple(n * (d + 1) if i in axes else n for i, n in enumerate(x.shape))
    out = np.zeros(shape, x.dtype)
    out[tuple(slice(None, None, d + 1) if i in axes else slice(None)
              for i in range(x.ndim))] = x
    return out


DILATES = [
    # shape, axes, d
    ((3, 4), (0,), 1),
    ((3, 4), (1,), 2),
    ((3, 4), (0, 1), 1),
    ((3, 4), (0, 1), 0),                        # identity
    ((2, 5, 6, 3), (1, 2), 1),                  # a gradient dilated on H, W
    ((2, 5, 6, 3), (1, 2), 3),
    ((2, 3, 4), (-1, 0), 2),
    ((2, 3), (0, 5, 9), 1),                     # axes >= ndim are ignored
    ((2, 3, 2, 2, 2), (0, 1, 2, 3, 4), 1),
]

DILATE_SPECIAL = [
    ((), (), 1),
    ((0,), (0,), 2),
    ((3, 0), (0, 1), 1),
    ((0, 2), (1,), 3),
    ((1,), (0,), 4),
    # more dims than fit once a unit axis is added per dilated axis (the CPU
    # kernel then zeroes and copies)
    ((1, 2, 1, 2, 1, 2, 1, 2, 2), tuple(range(9)), 1),
    ((2,) * 16, (0, 15), 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape, axes, d", DILATES, ids=[str(c) for c in DILATES])
def test_dilate(shape, axes, d, kind, dtype, path):
    a, x = make_input(kind, shape, dtype)
    check(_C._dilate(a, axes, d), dilate_ref(x, axes, d), dtype, a)


@pytest.mark.parametrize("shape, axes, d", DILATE_SPECIAL, ids=[str(c) for c in DILATE_SPECIAL])
def test_dilate_special_shapes(shape, axes, d, path):
    a, x = make_input("compact", shape, "float64")
    check(_C._dilate(a, axes, d), dilate_ref(x, axes, d), "float64")


def test_dilate_int_axis_and_large(path):
    a, x = make_input("sliced", (4, 40, 40, 16), "float32")
    check(_C._dilate(a, 2, 1), dilate_ref(x, (2,), 1), "float32")
    check(_C._dilate(a, (1, 2), 1), dilate_ref(x, (1, 2), 1), "float32")


# --------------------------------------------------------------------------
# im2col (API.md 4.6)
# --------------------------------------------------------------------------

def im2col_ref(x, k, s):
    """The course's im2col: an as_strided view (N, Ho, Wo, k, k, C) of x."""
    n, h, w, c = x.shape
    sn, sh, sw, sc = x.strides
    shape = (n, (h - k) // s + 1, (w - k) // s + 1, k, k, c)
    return np.lib.stride_tricks.as_strided(x, shape, (sn, sh * s, sw * s, sh, sw, sc))


IM2COLS = [
    # (N, H, W, C), k, stride
    ((2, 5, 5, 3), 3, 1),
    ((2, 6, 7, 4), 3, 2),
    ((1, 8, 8, 2), 1, 1),                       # 1x1
    ((3, 7, 9, 5), 2, 3),
    ((2, 4, 4, 3), 4, 1),                       # one output pixel
    ((1, 9, 6, 1), 5, 2),
    ((2, 6, 6, 8), 3, 5),                       # stride larger than k
]

IM2COL_SPECIAL = [((0, 5, 5, 3), 3, 1), ((2, 5, 5, 0), 3, 2), ((1, 1, 1, 1), 1, 1),
                  ((2, 3, 3, 2), 3, 7)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape, k, s", IM2COLS, ids=[str(c) for c in IM2COLS])
def test_im2col(shape, k, s, kind, dtype, path):
    a, x = make_input(kind, shape, dtype)
    check(_C._im2col(a, k, s), im2col_ref(x, k, s), dtype, a)


def row_ranges(rows, wo):
    """(row0, nrows) pairs: everything, edges, runs crossing output rows."""
    out = [(0, rows), (0, 1), (rows - 1, 1), (rows, 0), (0, 0), (1, rows - 1)]
    out += [(wo - 1, min(wo + 2, rows - wo + 1)), (max(rows - wo - 1, 0), min(wo + 1, rows))]
    r0 = np.random.randint(0, rows)
    out.append((r0, np.random.randint(0, rows - r0 + 1)))
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["compact", "transposed", "broadcast"])
@pytest.mark.parametrize("shape, k, s", IM2COLS, ids=[str(c) for c in IM2COLS])
def test_im2col_row_ranges(shape, k, s, kind, dtype, path):
    a, x = make_input(kind, shape, dtype)
    ref = im2col_ref(x, k, s)
    rows, kkc = int(np.prod(ref.shape[:3])), k * k * shape[3]
    mat = ref.reshape(rows, kkc)
    for r0, n in row_ranges(rows, ref.shape[2]):
        check(_C._im2col(a, k, s, r0, n), mat[r0:r0 + n], dtype)


@pytest.mark.parametrize("shape, k, s", IM2COL_SPECIAL, ids=[str(c) for c in IM2COL_SPECIAL])
def test_im2col_special_shapes(shape, k, s, path):
    a, x = make_input("compact", shape, "float32")
    ref = im2col_ref(x, k, s)
    check(_C._im2col(a, k, s), ref, "float32")
    rows = int(np.prod(ref.shape[:3]))
    check(_C._im2col(a, k, s, 0, rows), ref.reshape(rows, k * k * shape[3]), "float32")


def test_im2col_one_channel_with_odd_channel_stride(path):
    """C == 1: a length-1 axis may carry any stride; W-runs are still contiguous."""
    x = np.random.randn(2, 7, 8).astype(np.float32)
    a = nd.array(x).as_strided((2, 7, 8, 1), (56, 8, 1, 5))
    ref = im2col_ref(x.reshape(2, 7, 8, 1), 3, 2)
    check(_C._im2col(a, 3, 2), ref, "float32")
    check(_C._im2col(a, 3, 2, 3, 9), ref.reshape(-1, 9)[3:12], "float32")


@pytest.mark.parametrize("kind", ["compact", "sliced"])
def test_im2col_large(kind, path):
    """Rows split over the thread pool; a sliced input takes the gather loop."""
    a, x = make_input(kind, (2, 34, 34, 32), "float32")
    ref = im2col_ref(x, 3, 1)
    check(_C._im2col(a, 3, 1), ref, "float32")
    mat = ref.reshape(-1, 3 * 3 * 32)
    check(_C._im2col(a, 3, 1, 517, 1500), mat[517:2017], "float32")


def test_im2col_matmul_is_a_convolution(path):
    """im2col @ weights is the cross-correlation of API.md 4.6 (padding done first)."""
    x = np.random.randn(2, 6, 5, 3)
    w = np.random.randn(3, 3, 3, 4)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = _C._im2col(nd.array(x, dtype="float64").pad(((0, 0), (1, 1), (1, 1), (0, 0))), 3, 2)
    out = cols.reshape((-1, 27)) @ nd.array(w.reshape(27, 4), dtype="float64")
    ref = np.einsum("nyxijc,ijco->nyxo", im2col_ref(xp, 3, 2), w)
    np.testing.assert_allclose(out.numpy().reshape(ref.shape), ref, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------
# optimizer fallbacks: the composed formula against the fused pass
# --------------------------------------------------------------------------

def tol(dtype):
    return dict(rtol=4e-6, atol=1e-7) if dtype == "float32" else dict(rtol=1e-14, atol=1e-16)


def run_steps(update, skip, arrays, steps, *hp):
    """`steps` steps of `update` with the slot or the fallback; returns all outputs."""
    prev = _C._skip_optional_slots(skip)
    try:
        p, g = arrays[0], arrays[1]
        states = [None] * (len(arrays) - 2)
        outs = []
        for t in range(1, steps + 1):
            extra = (t,) if update is _C.adam_update else ()
            res = update(p, g, *states, *hp, *extra)
            # a compact private state comes back as the same array, updated in place
            for old, new in zip(states, res[1:]):
                if old is not None and new is not None:
                    assert new is old
            outs.append([None if r is None else r.numpy().copy() for r in res])
            p, states = res[0], list(res[1:])
        return outs
    finally:
        _C._skip_optional_slots(prev)


ADAM_CASES = [
    # lr, beta1, beta2, eps, weight_decay
    (0.01, 0.9, 0.999, 1e-8, 0.0),
    (0.1, 0.5, 0.9, 1e-3, 0.25),
    (1.0, 0.0, 0.0, 1e-8, 0.0),
]
SGD_CASES = [
    # lr, momentum, weight_decay
    (0.1, 0.0, 0.0),
    (0.1, 0.9, 0.0),
    (0.5, 0.5, 0.1),
    (0.01, 0.0, 1e-3),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hp", ADAM_CASES, ids=str)
def test_adam_fallback_matches_fused(hp, dtype):
    t = NP_DTYPE[dtype]
    p = nd.array(np.random.randn(7, 5).astype(t), dtype=dtype)
    g = nd.array(np.random.randn(7, 5).astype(t), dtype=dtype)
    fused = run_steps(_C.adam_update, False, [p, g, None, None], 4, *hp)
    composed = run_steps(_C.adam_update, True, [p, g, None, None], 4, *hp)
    for f, c in zip(fused, composed):
        for x, y in zip(f, c):
            np.testing.assert_allclose(y, x, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hp", SGD_CASES, ids=str)
def test_sgd_fallback_matches_fused(hp, dtype):
    t = NP_DTYPE[dtype]
    p = nd.array(np.random.randn(4, 6).astype(t), dtype=dtype)
    g = nd.array(np.random.randn(4, 6).astype(t), dtype=dtype)
    fused = run_steps(_C.sgd_update, False, [p, g, None], 3, *hp)
    composed = run_steps(_C.sgd_update, True, [p, g, None], 3, *hp)
    for f, c in zip(fused, composed):
        assert (f[1] is None) == (c[1] is None) == (hp[1] == 0)
        for x, y in zip(f, c):
            if x is not None:
                np.testing.assert_allclose(y, x, **tol(dtype))


@pytest.mark.parametrize("update, nstates", [(_C.adam_update, 2), (_C.sgd_update, 1)])
def test_optimizer_fallback_with_noncompact_states(update, nstates, path):
    """Non-compact states are read as views and replaced by fresh arrays."""
    p, x = make_input("compact", (3, 4), "float32")
    g, gx = make_input("transposed", (3, 4), "float32")
    states = [make_input("sliced", (3, 4), "float32") for _ in range(nstates)]
    hp = (0.1, 0.9, 0.99, 1e-8, 0.1, 3) if update is _C.adam_update else (0.1, 0.9, 0.1)
    res = update(p, g, *[s for s, _ in states], *hp)
    for (s, _), new in zip(states, res[1:]):
        assert new is not s and new.is_compact()
    if update is _C.sgd_update:
        gt = gx + 0.1 * x
        u = 0.9 * states[0][1] + 0.1 * gt
        np.testing.assert_allclose(res[1].numpy(), u, rtol=1e-5)
        np.testing.assert_allclose(res[0].numpy(), x - 0.1 * u, rtol=1e-5)


@pytest.mark.parametrize("make_opt", [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
    lambda ps: optim.Adam(ps, lr=0.01, weight_decay=0.01),
], ids=["sgd", "adam"])
def test_optimizer_classes_with_fallback(make_opt):
    """needle.optim gives the same parameters through the fused and composed updates."""
    np.random.seed(0)
    x = np.random.randn(8, 5).astype(np.float32)
    y = np.random.randn(8, 3).astype(np.float32)
    results = []
    for skip in (False, True):
        np.random.seed(1)
        model = nn.Linear(5, 3)
        opt = make_opt(model.parameters())
        prev = _C._skip_optional_slots(skip)
        try:
            for _ in range(4):
                opt.reset_grad()
                out = model(ndl.Tensor(x))
                loss = ((out - ndl.Tensor(y)) ** 2).sum()
                loss.backward()
                opt.step()
        finally:
            _C._skip_optional_slots(prev)
        results.append([p.numpy() for p in model.parameters()])
    for f, c in zip(*results):
        assert c.dtype == np.float32
        np.testing.assert_allclose(c, f, rtol=1e-5, atol=1e-6)


def test_skip_optional_slots_switch():
    prev = _C._skip_optional_slots(True)
    try:
        assert _C._skip_optional_slots(True) is True
        assert _C._skip_optional_slots(False) is True
        assert _C._skip_optional_slots(False) is False
    finally:
        _C._skip_optional_slots(prev)


# --------------------------------------------------------------------------
# references and memory stay flat, error paths included
# --------------------------------------------------------------------------

X4 = np.random.RandomState(0).randn(4, 20, 20, 16).astype(np.float32)   # 100 kB
LEAK_OPS = {
    "pad": lambda a, g, m: a.pad(((0, 0), (1, 1), (1, 1), (0, 0))),
    "flip": lambda a, g, m: a.flip((1, 2)),
    "dilate": lambda a, g, m: _C._dilate(a, (1, 2), 1),
    "im2col": lambda a, g, m: _C._im2col(a, 3, 1),
    "im2col_rows": lambda a, g, m: _C._im2col(a, 3, 1, 5, 300),
    "adam": lambda a, g, m: _C.adam_update(a, g, m, m + 0, 0.1, 0.9, 0.99, 1e-8, 0.1, 2),
    "sgd": lambda a, g, m: _C.sgd_update(a, g, m, 0.1, 0.9, 0.1),
    "err_pad": lambda a, g, m: a.pad(((0, 0), (1, -1), (0, 0), (0, 0))),
    "err_im2col": lambda a, g, m: _C._im2col(a, 3, 1, 0, 10 ** 6),
    "err_dilate": lambda a, g, m: _C._dilate(a, (1, 1), 1),
    "err_adam": lambda a, g, m: _C.adam_update(a, g, m, m, 0.1, 0.9, 0.99, 1e-8, 0.1, 2),
}


@pytest.mark.parametrize("name", sorted(LEAK_OPS))
def test_no_leak(name, path):
    a, g, m = nd.array(X4), nd.array(X4), nd.array(X4)
    op = LEAK_OPS[name]

    def run(n):
        for _ in range(n):
            try:
                op(a, g, m)
            except ValueError:
                pass
        gc.collect()

    run(10)
    before = [sys.getrefcount(o) for o in (a, g, m)] + [len(gc.get_objects())]
    mem = rss_mb()
    run(100)  # a leaked result would add at least 10 MB
    after = [sys.getrefcount(o) for o in (a, g, m)] + [len(gc.get_objects())]
    assert after[:3] == before[:3]
    assert after[3] - before[3] < 50
    # Under AddressSanitizer freed memory sits in a quarantine: RSS grows.
    if not os.environ.get("NEEDLE_ASAN_RUN") and not os.environ.get("LD_PRELOAD"):
        assert rss_mb() - mem < 8


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


# --------------------------------------------------------------------------
# bad input: a clear exception, never a crash
# --------------------------------------------------------------------------

A3 = lambda: nd.array(np.zeros((2, 3, 4)))            # noqa: E731
B4 = lambda: nd.array(np.zeros((2, 5, 6, 3)))         # noqa: E731

BAD = [
    # id, call, exception, text in the message
    ("pad-few-pairs", lambda: A3().pad(((1, 1),)), ValueError, "pair per dimension"),
    ("pad-negative", lambda: A3().pad(((0, 0), (-1, 0), (0, 0))), ValueError,
     "negative padding (-1, 0) on axis 1"),
    ("pad-not-a-pair", lambda: A3().pad(((0, 0), (1,), (0, 0))), ValueError, "entry 1"),
    ("pad-not-ints", lambda: A3().pad(((0, 0), (1.5, 0), (0, 0))), ValueError, "entry 1"),
    ("pad-not-a-sequence", lambda: A3().pad(3), TypeError, "pairs"),
    ("pad-overflow", lambda: A3().pad(((0, 0), (2 ** 62, 2 ** 62), (0, 0))), ValueError,
     "too large"),
    ("pad-too-big", lambda: A3().pad(((0, 0), (2 ** 55, 0), (0, 0))), ValueError,
     "too many elements"),
    ("flip-axis", lambda: A3().flip((3,)), ValueError, "3"),
    ("flip-negative-axis", lambda: A3().flip((-4,)), ValueError, "-4"),
    ("flip-repeated", lambda: A3().flip((0, -3)), ValueError, "repeated"),
    ("flip-not-ints", lambda: A3().flip(("a",)), TypeError, "ints"),
    ("dilate-negative-d", lambda: _C._dilate(A3(), (0,), -1), ValueError, "dilation"),
    ("dilate-overflow", lambda: _C._dilate(A3(), (0,), 2 ** 62), ValueError, "too long"),
    ("dilate-max-d", lambda: _C._dilate(A3(), (1,), 2 ** 63 - 1), ValueError, "too long"),
    ("dilate-too-big", lambda: _C._dilate(A3(), (0, 1, 2), 2 ** 18), ValueError,
     "too many elements"),
    ("dilate-axis", lambda: _C._dilate(A3(), (-4,), 1), ValueError, "-4"),
    ("dilate-repeated", lambda: _C._dilate(A3(), (0, -3), 1), ValueError, "repeated"),
    ("dilate-not-array", lambda: _C._dilate(np.zeros(3), (0,), 1), TypeError, "NDArray"),
    ("im2col-ndim", lambda: _C._im2col(A3(), 1, 1), ValueError, "(N, H, W, C)"),
    ("im2col-k0", lambda: _C._im2col(B4(), 0, 1), ValueError, "kernel size 0"),
    ("im2col-stride0", lambda: _C._im2col(B4(), 3, 0), ValueError, "stride 0"),
    ("im2col-k-too-big", lambda: _C._im2col(B4(), 6, 1), ValueError, "larger than H=5"),
    ("im2col-rows-past-end", lambda: _C._im2col(B4(), 3, 1, 20, 20), ValueError, "24 rows"),
    ("im2col-row0-negative", lambda: _C._im2col(B4(), 3, 1, -1, 2), ValueError, "row0=-1"),
    ("im2col-nrows-negative", lambda: _C._im2col(B4(), 3, 1, 0, -2), ValueError, "nrows=-2"),
    ("im2col-row0-only", lambda: _C._im2col(B4(), 3, 1, 0), TypeError, "row0 and nrows"),
    ("im2col-not-array", lambda: _C._im2col(np.zeros((1, 3, 3, 1)), 1, 1), TypeError,
     "NDArray"),
]


@pytest.mark.parametrize("call, exc, text", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_raises(call, exc, text, path):
    with pytest.raises(exc) as e:
        call()
    assert text in str(e.value), str(e.value)


# --------------------------------------------------------------------------
# conv with the padding read on the fly (Note [im2col with implicit padding])
# --------------------------------------------------------------------------

# (N, H, W, C_in), K, C_out, stride, padding: odd sizes, stride 2, padding 0,
# padding beyond the kernel (windows wholly in the zeros), batch 1, 1 channel
IMPLICIT_PAD = [
    ((2, 7, 5, 3), 3, 4, 1, 1),
    ((1, 6, 9, 1), 3, 1, 2, 1),
    ((3, 5, 5, 2), 3, 2, 2, 0),
    ((1, 4, 3, 2), 1, 3, 1, 2),
    ((2, 5, 6, 1), 3, 2, 3, 3),
    ((1, 9, 7, 4), 5, 3, 2, 2),
]


def conv_input(kind, shape):
    """make_input's kinds, and "w-sliced": every other column, channels contiguous
    (the implicit padding's path that copies one run of C per kernel column)."""
    if kind != "w-sliced":
        return make_input(kind, shape, "float64")
    n, h, w, c = shape
    x = np.random.randn(n, h, 2 * w, c)
    return nd.array(x, dtype="float64")[:, :, ::2, :], x[:, :, ::2, :]


@pytest.mark.parametrize("kind", ["compact", "w-sliced", "transposed", "sliced"])
@pytest.mark.parametrize("shape, k, co, s, p", IMPLICIT_PAD, ids=[str(c) for c in IMPLICIT_PAD])
def test_conv_with_padding_matches_torch(shape, k, co, s, p, kind, path, device):
    """ops.conv forward and both gradients (themselves padded, cropped and
    dual-form convs) against torch, float64: the slots path reads the padding
    on the fly on the CPU where the channels are contiguous, the fallback (and
    other layouts) pads a copy first."""
    import torch

    a, x = conv_input(kind, shape)
    w = np.random.randn(k, k, shape[3], co)
    X = (ndl.Tensor(a, device=device) if device == ndl.cpu()
         else ndl.Tensor(x, device=device, dtype="float64"))
    W = ndl.Tensor(w, device=device, dtype="float64")
    y = ndl.conv(X, W, stride=s, padding=p)
    G = np.random.randn(*y.shape)
    (y * ndl.Tensor(G, device=device, dtype="float64", requires_grad=False)).sum().backward()
    xt = torch.tensor(np.ascontiguousarray(x.transpose(0, 3, 1, 2)), requires_grad=True)
    wt = torch.tensor(w.transpose(3, 2, 0, 1).copy(), requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, wt, stride=s, padding=p)
    (yt * torch.tensor(G.transpose(0, 3, 1, 2))).sum().backward()
    t = dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(y.numpy(), yt.detach().numpy().transpose(0, 2, 3, 1), **t)
    np.testing.assert_allclose(X.grad.numpy(), xt.grad.numpy().transpose(0, 2, 3, 1), **t)
    np.testing.assert_allclose(W.grad.numpy(), wt.grad.numpy().transpose(2, 3, 1, 0), **t)


def on_threads(fn, counts):
    """[fn() on each thread count in counts], the pool's count put back after."""
    prev = nd.get_num_threads()
    try:
        out = []
        for threads in counts:
            nd.set_num_threads(threads)
            out.append(fn())
        return out
    finally:
        nd.set_num_threads(prev)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("xs, ws", [
    ((2, 15, 17, 80), (3, 3, 80, 5)),   # rows long enough for the smallest blocks, six of them
    ((4, 16, 16, 16), (3, 3, 16, 8)),   # three blocks of 455 rows, cut to four of 256
])
def test_conv_blocks_in_parallel_match_one_thread_and_torch(xs, ws, dtype):
    """Note [Conv blocks in parallel] (ndarray_conv.c): more than four blocks
    and a partial last one, or few blocks cut smaller; two threads take whole
    blocks. The same numbers as one thread, and torch's."""
    import torch

    x = np.random.randn(*xs).astype(NP_DTYPE[dtype])
    w = np.random.randn(*ws).astype(NP_DTYPE[dtype])
    outs = on_threads(lambda: _C._conv(nd.array(x, dtype=dtype), nd.array(w, dtype=dtype), 1,
                                       1).numpy(), (1, 2))
    np.testing.assert_array_equal(outs[1], outs[0])
    ref = torch.nn.functional.conv2d(torch.tensor(x.transpose(0, 3, 1, 2)),
                                     torch.tensor(w.transpose(3, 2, 0, 1).copy()), padding=1)
    t = dict(rtol=1e-4, atol=1e-4) if dtype == "float32" else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(outs[1], ref.numpy().transpose(0, 2, 3, 1), **t)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, hw, ci, co, k, s", [
    (8, 24, 16, 8, 3, 1),    # many blocks: eight groups of several blocks each
    (16, 64, 4, 6, 7, 4),    # a strided conv's weight gradient (dilation 4): 13 blocks
    (2, 9, 3, 2, 3, 1),      # one block: one group
])
def test_weight_gradient_groups_keep_their_bits_on_any_thread_count(n, hw, ci, co, k, s, dtype):
    """Note [Dual blocks in groups] (ndarray_conv.c): the weight gradient's
    blocks of rows are summed in groups fixed by the block count, whichever
    thread takes them: the same bits on 1, 2 and 3 threads, and torch's
    numbers."""
    import torch

    x = np.random.randn(n, hw, hw, ci).astype(NP_DTYPE[dtype])
    w = np.random.randn(k, k, ci, co).astype(NP_DTYPE[dtype])
    p = k // 2

    def weight_grad():
        X = ndl.Tensor(x, dtype=dtype, requires_grad=False)
        W = ndl.Tensor(w, dtype=dtype)
        ndl.conv(X, W, stride=s, padding=p).sum().backward()
        return W.grad.numpy()
    grads = on_threads(weight_grad, (1, 2, 3))
    np.testing.assert_array_equal(grads[1], grads[0])
    np.testing.assert_array_equal(grads[2], grads[0])
    wt = torch.tensor(w.transpose(3, 2, 0, 1).astype(np.float64), requires_grad=True)
    torch.nn.functional.conv2d(torch.tensor(x.transpose(0, 3, 1, 2).astype(np.float64)), wt,
                               stride=s, padding=p).sum().backward()
    t = dict(rtol=2e-4, atol=2e-3) if dtype == "float32" else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(grads[0], wt.grad.numpy().transpose(2, 3, 1, 0), **t)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, hw, ci, co, k, s", [
    (8, 16, 16, 8, 3, 2),    # whole images a block, several blocks: threads take images
    (1, 64, 8, 4, 5, 2),     # one image longer than a block: its blocks in order
    (16, 6, 3, 5, 7, 4),     # taps past the padded input's edges
])
def test_transposed_conv_keeps_its_bits_on_any_thread_count(n, hw, ci, co, k, s, dtype):
    """Note [Transposed conv] (ndarray_conv.c): a strided conv's input
    gradient by col2im, whose blocks are whole images: the same bits on 1, 2
    and 3 threads, and torch's numbers."""
    import torch

    x = np.random.randn(n, hw, hw, ci).astype(NP_DTYPE[dtype])
    w = np.random.randn(k, k, ci, co).astype(NP_DTYPE[dtype])
    g = np.random.randn(*torch.nn.functional.conv2d(
        torch.zeros(n, ci, hw, hw), torch.zeros(co, ci, k, k), stride=s,
        padding=k // 2).permute(0, 2, 3, 1).shape).astype(NP_DTYPE[dtype])
    def input_grad():
        X = ndl.Tensor(x, dtype=dtype)
        W = ndl.Tensor(w, dtype=dtype, requires_grad=False)
        ndl.conv(X, W, stride=s, padding=k // 2).backward(ndl.Tensor(g, dtype=dtype))
        return X.grad.numpy()
    grads = on_threads(input_grad, (1, 2, 3))
    np.testing.assert_array_equal(grads[1], grads[0])
    np.testing.assert_array_equal(grads[2], grads[0])
    xt = torch.tensor(x.transpose(0, 3, 1, 2).astype(np.float64), requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, torch.tensor(w.transpose(3, 2, 0, 1).astype(np.float64)),
                                    stride=s, padding=k // 2)
    yt.backward(torch.tensor(g.transpose(0, 3, 1, 2).astype(np.float64)))
    t = dict(rtol=2e-4, atol=2e-3) if dtype == "float32" else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(grads[0], xt.grad.numpy().transpose(0, 2, 3, 1), **t)
