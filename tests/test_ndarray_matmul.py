"""NDArray matmul (API.md 2.10): every size 1..67 for m, n and p, large odd
sizes, non-compact operands, batched and broadcast (numpy.matmul) batches,
both dtypes.

Reference: float64 NumPy on the same (already rounded) inputs. Any
accumulation order is allowed, so the tolerance is a rounding bound
(2 sqrt(n) + 2) * eps * (|A| @ |B|) elementwise, with eps of the array dtype.
"""
import numpy as np
import pytest

import needle.backend_ndarray as nd

DTYPES = ["float32", "float64"]
NP_DTYPE = {"float32": np.float32, "float64": np.float64}
EPS = {"float32": float(np.finfo(np.float32).eps), "float64": float(np.finfo(np.float64).eps)}


def compact_strides(shape):
    out, s = [], 1
    for d in reversed(shape):
        out.append(s)
        s *= d
    return tuple(reversed(out))


def check_matmul(c, x, y, dtype):
    """`c` (NDArray) == x @ y within float rounding; x, y NumPy arrays of `dtype`."""
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    ref = np.matmul(x64, y64)
    assert isinstance(c, nd.NDArray)
    assert c.shape == ref.shape
    assert c.dtype == dtype
    assert c.is_compact() and c.strides == compact_strides(ref.shape)
    got = c.numpy()
    assert got.dtype == NP_DTYPE[dtype]
    n = x.shape[-1]
    bound = (2 * np.sqrt(n) + 2) * EPS[dtype] * np.matmul(np.abs(x64), np.abs(y64))
    err = np.abs(got.astype(np.float64) - ref)
    assert np.all(err <= bound), f"max err {err.max()} vs bound {bound.max()}"


def rand(shape, dtype):
    return np.asarray(np.random.randn(*shape)).astype(NP_DTYPE[dtype])


SQUARE = [(k, k, k) for k in range(1, 68)]
# m, n and p each run through 1..67 (7 and 13 are coprime with 67)
DIAGONAL = [(k, (7 * k) % 67 + 1, (13 * k) % 67 + 1) for k in range(1, 68)]
TILE_MULTIPLES = [(8, 16, 24), (64, 8, 32), (16, 64, 8), (24, 8, 8), (8, 8, 64)]
SIZES = SQUARE + DIAGONAL + TILE_MULTIPLES


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, n, p", SIZES, ids=[f"{m}x{n}x{p}" for m, n, p in SIZES])
def test_matmul_sizes(m, n, p, dtype):
    x, y = rand((m, n), dtype), rand((n, p), dtype)
    a, b = nd.array(x, dtype=dtype), nd.array(y, dtype=dtype)
    c = a @ b
    check_matmul(c, x, y, dtype)
    assert c._handle.ptr() not in (a._handle.ptr(), b._handle.ptr())
    # inputs are untouched
    np.testing.assert_array_equal(a.numpy(), x)
    np.testing.assert_array_equal(b.numpy(), y)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m, n, p", [(257, 513, 129), (128, 256, 64), (67, 300, 5)])
def test_matmul_large(m, n, p, dtype):
    x, y = rand((m, n), dtype), rand((n, p), dtype)
    check_matmul(nd.array(x, dtype=dtype) @ nd.array(y, dtype=dtype), x, y, dtype)


def test_matmul_very_large_float32():
    x, y = rand((1000, 1001), "float32"), rand((1001, 999), "float32")
    check_matmul(nd.array(x) @ nd.array(y), x, y, "float32")


def test_matmul_exact_small_integers():
    # small integers multiply and add exactly in any order
    x = np.random.randint(-8, 9, size=(33, 40)).astype(np.float32)
    y = np.random.randint(-8, 9, size=(40, 17)).astype(np.float32)
    np.testing.assert_array_equal((nd.array(x) @ nd.array(y)).numpy(), x @ y)


def layout(kind, shape, dtype):
    """(NDArray with `shape` laid out as `kind`, NumPy array with its values)."""
    t = NP_DTYPE[dtype]
    r, c = shape
    if kind == "compact":
        x = rand(shape, dtype)
        return nd.array(x, dtype=dtype), x
    if kind == "transposed":
        x = rand((c, r), dtype)
        return nd.array(x, dtype=dtype).permute((1, 0)), x.T
    if kind == "sliced":
        x = rand((2 * r + 1, c + 3), dtype)
        return nd.array(x, dtype=dtype)[1::2, 2:c + 2], x[1::2, 2:c + 2]
    if kind == "broadcast_rows":
        x = rand((1, c), dtype)
        return nd.array(x, dtype=dtype).broadcast_to(shape), np.broadcast_to(x, shape).astype(t)
    raise AssertionError(kind)


LAYOUTS = ["compact", "transposed", "sliced", "broadcast_rows"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mnp", [(13, 17, 11), (32, 64, 48)], ids=str)
@pytest.mark.parametrize("kind_b", LAYOUTS)
@pytest.mark.parametrize("kind_a", LAYOUTS)
def test_matmul_non_compact_operands(kind_a, kind_b, mnp, dtype):
    m, n, p = mnp
    a, x = layout(kind_a, (m, n), dtype)
    b, y = layout(kind_b, (n, p), dtype)
    if kind_a != "compact":
        assert not a.is_compact()
    check_matmul(a @ b, x, y, dtype)


BATCHED = [
    ((5, 7, 9), (5, 9, 4)),
    ((2, 3, 4, 5), (2, 3, 5, 6)),
    ((2, 1, 4, 5), (3, 5, 6)),
    ((7, 4, 5), (5, 6)),
    ((4, 5), (3, 5, 6)),
    ((1, 4, 5), (3, 5, 2)),
    ((2, 1, 3, 4), (1, 5, 4, 2)),
    ((3, 1, 1, 16, 16), (1, 2, 1, 16, 8)),
    ((0, 2, 3), (0, 3, 4)),
    ((2, 3, 0), (2, 0, 4)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sa, sb", BATCHED, ids=[f"{a}@{b}" for a, b in BATCHED])
def test_matmul_batched_and_broadcast(sa, sb, dtype):
    x, y = rand(sa, dtype), rand(sb, dtype)
    check_matmul(nd.array(x, dtype=dtype) @ nd.array(y, dtype=dtype), x, y, dtype)


def test_matmul_batched_non_compact():
    x = rand((3, 6, 5), "float32")            # used as (3, 5, 6)
    y = rand((1, 6, 4), "float32")            # broadcast batch
    a = nd.array(x).permute((0, 2, 1))
    b = nd.array(y).broadcast_to((3, 6, 4))
    check_matmul(a @ b, x.transpose(0, 2, 1), np.broadcast_to(y, (3, 6, 4)), "float32")
    s = nd.array(x)[::2, 1:, :]                  # (2, 5, 5) strided batch
    check_matmul(s @ s, x[::2, 1:, :], x[::2, 1:, :], "float32")


@pytest.mark.parametrize("shapes", [((0, 3), (3, 4)), ((3, 0), (0, 4)), ((3, 4), (4, 0))],
                         ids=str)
def test_matmul_size_zero(shapes):
    sa, sb = shapes
    x, y = rand(sa, "float32"), rand(sb, "float32")
    c = nd.array(x) @ nd.array(y)
    assert c.shape == (sa[0], sb[1])
    np.testing.assert_array_equal(c.numpy(), np.zeros((sa[0], sb[1]), np.float32))


def test_matmul_mixed_dtypes_give_float64():
    x = rand((6, 7), "float32")
    y = np.random.randn(7, 3)
    for c in (nd.array(x) @ nd.array(y, dtype="float64"),):
        check_matmul(c, x.astype(np.float64), y, "float64")
    c2 = nd.array(y.T.copy(), dtype="float64") @ nd.array(x.T.copy())
    check_matmul(c2, y.T, x.T.astype(np.float64), "float64")


def test_matmul_tiled_path_matches_plain_path():
    # all of m, n, p multiples of the tile size (8) vs the same product with one
    # extra column sliced away afterwards (plain kernel)
    x, y = rand((64, 72), "float32"), rand((72, 80), "float32")
    c_tiled = (nd.array(x) @ nd.array(y)).numpy()
    yp = np.concatenate([y, np.zeros((72, 1), np.float32)], axis=1)
    c_plain = (nd.array(x) @ nd.array(yp)).numpy()[:, :80]
    check_matmul(nd.array(x) @ nd.array(y), x, y, "float32")
    np.testing.assert_allclose(c_tiled, c_plain, rtol=1e-5, atol=1e-4)
