"""Property tests: NDArray ops on random views against NumPy (issue 13, item 1).

Random shapes (0-d, size 0, size-1 dims, rank up to 6), random views of views
(property_strategies.views), float32 and float64: every view reads as NumPy's,
and every elementwise, scalar, comparison, reduction, shape op, setitem and
matmul gives NumPy's values on it.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import needle.backend_ndarray as nd
from property_strategies import DTYPES, apply_step, shapes, tol, values, view_steps, views

UNARY = {
    "exp": (lambda a: a.exp(), np.exp, "normal"),
    "log": (lambda a: a.log(), np.log, "pos"),
    "tanh": (lambda a: a.tanh(), np.tanh, "normal"),
    "sin": (lambda a: a.sin(), np.sin, "normal"),
    "cos": (lambda a: a.cos(), np.cos, "normal"),
    "sqrt": (lambda a: a.sqrt(), np.sqrt, "pos"),
    "abs": (lambda a: a.abs(), np.abs, "normal"),
    "relu": (lambda a: a.relu(), lambda x: np.maximum(x, 0), "normal"),
    "sigmoid": (lambda a: a.sigmoid(), lambda x: 1 / (1 + np.exp(-x)), "normal"),
    "neg": (lambda a: -a, np.negative, "normal"),
}

BINARY = {
    "add": (lambda a, b: a + b, np.add),
    "sub": (lambda a, b: a - b, np.subtract),
    "mul": (lambda a, b: a * b, np.multiply),
    "div": (lambda a, b: a / b, np.divide),
    "pow": (lambda a, b: a ** b, np.power),
    "maximum": (lambda a, b: a.maximum(b), np.maximum),
    "minimum": (lambda a, b: a.minimum(b), np.minimum),
    "eq": (lambda a, b: a == b, np.equal),
    "ge": (lambda a, b: a >= b, np.greater_equal),
    "lt": (lambda a, b: a < b, np.less),
}


def check(got, want, dtype):
    got = np.asarray(got.numpy() if hasattr(got, "numpy") else got)
    assert got.shape == np.shape(want)
    np.testing.assert_allclose(got, np.asarray(want, dtype=np.float64), **tol(dtype))


@given(views())
def test_view_reads_as_numpy(vx):
    v, x = vx
    assert v.shape == x.shape
    np.testing.assert_array_equal(v.numpy(), x)
    np.testing.assert_array_equal(v.compact().numpy(), x)
    np.testing.assert_array_equal(np.asarray(v), x)  # zero-copy buffer of the view


@pytest.mark.parametrize("name", sorted(UNARY))
@given(data=st.data())
def test_unary_on_views(name, data):
    fn, ref, kind = UNARY[name]
    dtype = data.draw(st.sampled_from(DTYPES))
    v, x = data.draw(views(dtype=dtype, kind=kind))
    check(fn(v), ref(x.astype(np.float64)).astype(dtype), dtype)


@pytest.mark.parametrize("name", sorted(BINARY))
@given(data=st.data())
def test_binary_on_views(name, data):
    fn, ref = BINARY[name]
    dtype = data.draw(st.sampled_from(DTYPES))
    kind = "pos" if name == "pow" else "normal"
    va, xa = data.draw(views(dtype=dtype, kind=kind))
    vb, xb = data.draw(views(dtype=dtype, shape=xa.shape, kind=kind, max_steps=0))
    if data.draw(st.booleans()):  # b as a view of the same shape: a permuted leaf
        perm = data.draw(st.permutations(range(xa.ndim)))
        inv = np.argsort(perm)
        vb = nd.array(np.transpose(xb, perm).copy(), dtype=dtype).permute(tuple(inv))
    with np.errstate(all="ignore"):
        want = ref(xa.astype(np.float64), xb.astype(np.float64))
    check(fn(va, vb), np.asarray(want).astype(dtype), dtype)


@pytest.mark.parametrize("name", ["add", "sub", "mul", "div", "pow", "maximum", "eq", "ge"])
@given(data=st.data(), scalar=st.sampled_from([0.0, 1.5, -2.0, 3, 0.25]))
def test_scalar_on_views(name, data, scalar):
    fn, ref = BINARY[name]
    dtype = data.draw(st.sampled_from(DTYPES))
    v, x = data.draw(views(dtype=dtype, kind="pos" if name == "pow" else "normal"))
    with np.errstate(all="ignore"):
        want = ref(x.astype(np.float64), np.float64(np.asarray(scalar, dtype)))
    check(fn(v, scalar), want.astype(dtype), dtype)


@st.composite
def axis_args(draw, ndim):
    if ndim == 0 or draw(st.integers(0, 3)) == 0:
        return None
    if draw(st.booleans()):
        return draw(st.integers(-ndim, ndim - 1))
    return tuple(draw(st.sets(st.integers(0, ndim - 1), min_size=1, max_size=ndim)))


@pytest.mark.parametrize("op", ["sum", "max"])
@given(data=st.data())
def test_reductions_on_views(op, data):
    dtype = data.draw(st.sampled_from(DTYPES))
    v, x = data.draw(views(dtype=dtype))
    axis = data.draw(axis_args(x.ndim))
    keepdims = data.draw(st.booleans())
    x64 = x.astype(np.float64)
    try:
        want = getattr(np, op)(x64, axis=axis, keepdims=keepdims)
    except ValueError:  # max over an empty axis: an error in both
        with pytest.raises(ValueError):
            getattr(v, op)(axis=axis, keepdims=keepdims)
        return
    got = getattr(v, op)(axis=axis, keepdims=keepdims).numpy()
    if axis is None and (not keepdims or x.ndim == 0):  # API.md 2.9: the course's (1,)
        want = np.reshape(want, (1,))
    # float32 sums: error bound from the magnitudes summed
    scale = np.sum(np.abs(x64), axis=axis, keepdims=keepdims) if op == "sum" else 0
    scale = np.reshape(scale, np.shape(want)) if op == "sum" else 0
    assert got.shape == np.shape(want)
    np.testing.assert_array_less(np.abs(got - want), 1e-5 * np.asarray(scale) + 1e-6
                                 if dtype == "float32" else 1e-12 * np.asarray(scale) + 1e-13)


def writable_view(a, kind, args):
    """NumPy's view of a for a permute or slice step (writes go through)."""
    if kind == "permute":
        return np.transpose(a, args)
    if not args:
        return a
    return a[tuple(slice(i % n, i % n + 1) if isinstance(i, int) else i
                   for i, n in zip(args, a.shape))]


@given(data=st.data())
def test_setitem_through_views_of_views(data):
    v, x = data.draw(views())
    dst, expect = v.compact(), x.copy()  # dst: its own storage, compact
    kind, args, xv = data.draw(view_steps(expect))
    if kind in ("broadcast", "reshape", "flip"):  # no view to write through (flip copies)
        kind, args = "permute", tuple(range(expect.ndim))[::-1]
    w = apply_step(dst, kind, args)
    ev = writable_view(expect, kind, args)
    src = values(ev.shape, dst.dtype, data.draw(st.integers(0, 2**32 - 1)))
    if data.draw(st.booleans()):
        w[tuple(slice(None) for _ in ev.shape)] = nd.array(src, dtype=dst.dtype)
        ev[...] = src
    else:
        w[tuple(slice(None) for _ in ev.shape)] = 0.5
        ev[...] = 0.5
    np.testing.assert_array_equal(dst.numpy(), expect)


@st.composite
def matmul_pairs(draw):
    dtype = draw(st.sampled_from(DTYPES))
    m, n, p = (draw(st.integers(0, 9)) for _ in range(3))
    batch = draw(shapes(max_rank=2, max_dim=3))
    ba = tuple(d if draw(st.booleans()) else 1 for d in batch)
    bb = tuple(d if draw(st.booleans()) else 1 for d in batch)[draw(st.integers(0, len(batch))):]
    seed = draw(st.integers(0, 2**32 - 1))
    xa, xb = values(ba + (m, n), dtype, seed), values(bb + (n, p), dtype, seed + 1)
    va, vb = nd.array(xa, dtype=dtype), nd.array(xb, dtype=dtype)
    if draw(st.booleans()) and xa.ndim >= 2:  # a transposed view
        perm = tuple(range(xa.ndim - 2)) + (xa.ndim - 1, xa.ndim - 2)
        va = nd.array(np.transpose(xa, perm).copy(), dtype=dtype).permute(perm)
    return dtype, va, xa, vb, xb


@given(matmul_pairs())
def test_matmul_on_views(pair):
    dtype, va, xa, vb, xb = pair
    want = np.matmul(xa.astype(np.float64), xb.astype(np.float64))
    got = (va @ vb).numpy()
    assert got.shape == want.shape
    bound = (xa.shape[-1] + 2) * np.finfo(dtype).eps * np.matmul(np.abs(xa).astype(np.float64),
                                                                 np.abs(xb).astype(np.float64))
    assert np.all(np.abs(got - want) <= bound + np.finfo(dtype).tiny)


@given(data=st.data())
def test_reshape_permute_broadcast_roundtrip(data):
    v, x = data.draw(views(max_steps=2))
    for _ in range(3):
        kind, args, x = data.draw(view_steps(x))
        v = apply_step(v, kind, args)
        assert v.shape == x.shape
    np.testing.assert_array_equal(v.numpy(), x)
