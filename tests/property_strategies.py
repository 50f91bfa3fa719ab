"""hypothesis strategies and profiles for tests/test_property_*.py (issue 13).

Profiles (HYPOTHESIS_PROFILE, default "ci"):
- ci: deterministic (derandomize) and bounded (max_examples=25 per test), so the default
  suite stays well inside its time; the same examples on every run and machine.
- big: 500 examples per test, random: `make proptest`.

`views()` draws an NDArray view beside the NumPy array it must equal: a base of rank 0
to 6 (size-0 and size-1 dims included), float32 or float64, then up to three views of
views (permutes, slices with steps, integer indices, broadcasts, reshapes of compact
arrays, flips). Each draw keeps the two in step, so a test compares needle's result on
the view with NumPy's on the array.
"""
import os

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

import needle.backend_ndarray as nd

settings.register_profile("ci", max_examples=25, derandomize=True, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
settings.register_profile("big", max_examples=500, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow,
                                                 HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DTYPES = ["float32", "float64"]
MAX_RANK = 6
MAX_SIZE = 256


@st.composite
def shapes(draw, min_rank=0, max_rank=MAX_RANK, min_dim=0, max_dim=4):
    rank = draw(st.integers(min_rank, max_rank))
    shape = []
    for _ in range(rank):
        size = int(np.prod(shape)) if shape else 1
        hi = max(min_dim, min(max_dim, MAX_SIZE // max(size, 1)))
        shape.append(draw(st.integers(min_dim, hi)))
    return tuple(shape)


def values(shape, dtype, seed, kind="normal"):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    if kind == "pos":
        x = np.abs(x) + 0.5
    return np.asarray(x, dtype=dtype)


@st.composite
def view_steps(draw, a: np.ndarray):
    """One random view of a: (name, args, the NumPy result)."""
    kinds = ["permute", "slice", "broadcast", "flip"] + (["reshape"] if a.size else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "permute":
        axes = tuple(draw(st.permutations(range(a.ndim))))
        return kind, axes, np.transpose(a, axes)
    if kind == "slice":
        idx = []
        for n in a.shape:
            if n == 0 or draw(st.booleans()):
                idx.append(slice(None))
                continue
            if draw(st.integers(0, 3)) == 0:
                i = draw(st.integers(-n, n - 1))
                idx.append(i)
                continue
            start = draw(st.integers(0, n - 1))
            stop = draw(st.integers(start + 1, n))
            idx.append(slice(start, stop, draw(st.integers(1, 3))))
        # an int index keeps its dimension (API.md 2.5)
        np_idx = tuple(slice(i % n, i % n + 1) if isinstance(i, int) else i
                       for i, n in zip(idx, a.shape))
        return kind, tuple(idx), a[np_idx] if np_idx else a
    if kind == "broadcast":
        lead = draw(st.lists(st.integers(1, 3), max_size=max(0, min(2, MAX_RANK - a.ndim))))
        tail = [draw(st.integers(0, 3)) if d == 1 else d for d in a.shape]
        shape = tuple(lead) + tuple(tail)
        if int(np.prod(shape)) > 4 * MAX_SIZE:
            shape = a.shape
        return kind, shape, np.broadcast_to(a, shape)
    if kind == "flip":
        axes = tuple(sorted(draw(st.sets(st.integers(0, max(a.ndim - 1, 0)), max_size=a.ndim))))
        axes = axes if a.ndim else ()
        return kind, axes, np.flip(a, axes) if axes else a
    # reshape (of the compact copy: NDArray.reshape needs a compact array)
    dims = []
    rest = a.size
    for d in range(2, rest + 1):
        while rest % d == 0 and len(dims) < MAX_RANK - 1 and draw(st.booleans()):
            dims.append(d)
            rest //= d
    dims.append(rest)
    shape = tuple(draw(st.permutations(dims)))
    return kind, shape, np.ascontiguousarray(a).reshape(shape)


def apply_step(v, kind, args):
    if kind == "permute":
        return v.permute(args)
    if kind == "slice":
        return v[args] if args else v
    if kind == "broadcast":
        return v.broadcast_to(args)
    if kind == "flip":
        return v.flip(args) if args else v
    return v.compact().reshape(args)


@st.composite
def views(draw, dtype=None, shape=None, kind="normal", max_steps=3):
    """(NDArray view, equal NumPy array)."""
    dtype = dtype or draw(st.sampled_from(DTYPES))
    shape = draw(shapes()) if shape is None else shape
    x = values(shape, dtype, draw(st.integers(0, 2**32 - 1)), kind)
    v = nd.array(x, dtype=dtype)
    for _ in range(draw(st.integers(0, max_steps))):
        step, args, x = draw(view_steps(x))
        v = apply_step(v, step, args)
    return v, x


def tol(dtype):
    return {"float32": dict(rtol=2e-5, atol=2e-6), "float64": dict(rtol=1e-12, atol=1e-13)}[
        str(np.dtype(dtype))]
