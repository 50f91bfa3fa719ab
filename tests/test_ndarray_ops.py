"""NDArray operators, reductions, flip and pad (API.md 2.8, 2.9, 2.11, 2.14;
section 10 items 11 and 29).

Every operator is run on compact, transposed, sliced and broadcast inputs and
on both dtypes, and compared with the same NumPy expression evaluated in the
array's own dtype (float32 inputs give float32 NumPy references). IEEE basic
operations (+ - * / max, comparisons) must match exactly; transcendental
functions and powers within a few ulps.
"""
import numpy as np
import pytest

import needle.backend_ndarray as nd

DTYPES = ["float32", "float64"]
NP_DTYPE = {"float32": np.float32, "float64": np.float64}
KINDS = ["compact", "transposed", "sliced", "broadcast"]
EPS = {"float32": float(np.finfo(np.float32).eps), "float64": float(np.finfo(np.float64).eps)}


def compact_strides(shape):
    out, s = [], 1
    for d in reversed(shape):
        out.append(s)
        s *= d
    return tuple(reversed(out))


def tol(dtype, kind):
    if kind == "exact":
        return dict(rtol=0, atol=0)
    if dtype == "float32":
        return dict(rtol=2e-6, atol=1e-7)
    return dict(rtol=1e-13, atol=1e-15)


# value generators (float64 NumPy arrays)
def normal(shape):
    return np.asarray(np.random.randn(*shape))


def positive(shape):
    return np.asarray(np.random.rand(*shape)) + 0.5


def nonzero(shape):
    sign = np.where(np.asarray(np.random.rand(*shape)) < 0.5, -1.0, 1.0)
    return sign * (np.asarray(np.random.rand(*shape)) + 0.25)


def small_ints(shape):
    """Integer-valued floats in [-2, 2]: comparisons see plenty of ties."""
    return np.random.randint(-2, 3, size=shape).astype(np.float64)


def exponents(shape):
    return np.asarray(np.random.rand(*shape)) * 4 - 2


def make_input(kind, shape, dtype, gen=normal, device=None):
    """(NDArray of `shape` laid out as `kind` on `device`, NumPy array with the same values)."""
    t = NP_DTYPE[dtype]
    if kind == "compact":
        x = gen(shape).astype(t)
        return nd.array(x, dtype=dtype, device=device), x
    if kind == "transposed":
        perm = tuple(reversed(range(len(shape))))
        x = gen(tuple(reversed(shape))).astype(t)
        a = nd.array(x, dtype=dtype, device=device).permute(perm)
        ref = x.transpose(perm)
    elif kind == "sliced":
        x = gen(tuple(2 * s + 1 for s in shape)).astype(t)
        idx = tuple(slice(1, 1 + 2 * s, 2) for s in shape)
        a, ref = nd.array(x, dtype=dtype, device=device)[idx], x[idx]
    elif kind == "broadcast":
        x = gen((1,) + tuple(shape[1:])).astype(t)
        a = nd.array(x, dtype=dtype, device=device).broadcast_to(shape)
        ref = np.broadcast_to(x, shape)
    else:
        raise AssertionError(kind)
    assert not a.is_compact()
    return a, ref


def check(result, expected, dtype, tkind, device=None):
    """`result` is a fresh compact NDArray equal to `expected` (computed by NumPy)."""
    expected = np.asarray(expected)
    assert isinstance(result, nd.NDArray)
    assert result.dtype == dtype
    assert result.shape == expected.shape
    assert result.is_compact()
    assert result.strides == compact_strides(expected.shape)
    assert result.device == (device or nd.cpu())
    got = result.numpy()
    assert got.dtype == NP_DTYPE[dtype]
    np.testing.assert_allclose(got, expected.astype(NP_DTYPE[dtype]), **tol(dtype, tkind))


def cmp(f):
    return lambda x, y: f(x, y).astype(np.result_type(x, y))


# name: (needle op, NumPy op, generator for a, generator for b, tolerance kind)
BINARY = {
    "add": (lambda a, b: a + b, np.add, normal, normal, "exact"),
    "sub": (lambda a, b: a - b, np.subtract, normal, normal, "exact"),
    "mul": (lambda a, b: a * b, np.multiply, normal, normal, "exact"),
    "div": (lambda a, b: a / b, np.divide, normal, nonzero, "exact"),
    "pow": (lambda a, b: a ** b, np.power, positive, exponents, "ulps"),
    "maximum": (lambda a, b: a.maximum(b), np.maximum, small_ints, normal, "exact"),
    "nd.maximum": (nd.maximum, np.maximum, normal, small_ints, "exact"),
    "eq": (lambda a, b: a == b, cmp(np.equal), small_ints, small_ints, "exact"),
    "ne": (lambda a, b: a != b, cmp(np.not_equal), small_ints, small_ints, "exact"),
    "ge": (lambda a, b: a >= b, cmp(np.greater_equal), small_ints, small_ints, "exact"),
    "gt": (lambda a, b: a > b, cmp(np.greater), small_ints, small_ints, "exact"),
    "lt": (lambda a, b: a < b, cmp(np.less), small_ints, small_ints, "exact"),
    "le": (lambda a, b: a <= b, cmp(np.less_equal), small_ints, small_ints, "exact"),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind_b", KINDS)
@pytest.mark.parametrize("kind_a", KINDS)
@pytest.mark.parametrize("op", sorted(BINARY))
def test_binary_ops(op, kind_a, kind_b, dtype, device):
    f, npf, ga, gb, tk = BINARY[op]
    shape = (4, 5)
    a, x = make_input(kind_a, shape, dtype, ga, device)
    b, y = make_input(kind_b, shape, dtype, gb, device)
    a_before, b_before = a.numpy(), b.numpy()
    check(f(a, b), npf(x, y), dtype, tk, device)
    # inputs are not modified
    np.testing.assert_array_equal(a.numpy(), a_before)
    np.testing.assert_array_equal(b.numpy(), b_before)


def specials(shape):
    # NaN, infinities, signed zeros and ordinary values, in random places
    vals = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 2.5])
    return vals[np.random.randint(0, len(vals), shape)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", ["eq", "ne", "ge", "gt", "lt", "le"])
def test_comparisons_of_nans_and_zeros(op, kind, dtype, device):
    # Note [Comparisons without branches] (scalar_ops.h): every comparison
    # with NaN is false but ne; -0 == 0; on every layout (the strided loops
    # and the vectorized ones), against an array and a scalar
    f, npf = BINARY[op][:2]
    a, x = make_input(kind, (3, 17), dtype, specials, device)
    b, y = make_input("compact", (3, 17), dtype, specials, device)
    check(f(a, b), npf(x, y), dtype, "exact", device)
    for s in (0.0, -0.0, float("nan"), float("inf"), 1.0):
        check(f(a, s), npf(x, NP_DTYPE[dtype](s)), dtype, "exact", device)


SCALARS = [1.7, 3, np.float64(0.3), np.float32(-1.25), np.int64(-2), np.array(2.5)]
CMP_SCALARS = [1.0, 1, np.float64(-1.0), np.float32(0.0), np.array(2.0), 0.1]

# name: (needle op with scalar s, NumPy op on (x, s_rounded), generator, scalars, tolerance)
SCALAR = {
    "add": (lambda a, s: a + s, lambda x, s: x + s, normal, SCALARS, "exact"),
    "radd": (lambda a, s: s + a, lambda x, s: s + x, normal, SCALARS, "exact"),
    "sub": (lambda a, s: a - s, lambda x, s: x - s, normal, SCALARS, "exact"),
    "rsub": (lambda a, s: s - a, lambda x, s: s - x, normal, SCALARS, "exact"),
    "mul": (lambda a, s: a * s, lambda x, s: x * s, normal, SCALARS, "exact"),
    "rmul": (lambda a, s: s * a, lambda x, s: s * x, normal, SCALARS, "exact"),
    "div": (lambda a, s: a / s, lambda x, s: x / s, normal, SCALARS, "exact"),
    "rdiv": (lambda a, s: s / a, lambda x, s: s / x, nonzero, SCALARS, "exact"),
    "maximum": (lambda a, s: a.maximum(s), np.maximum, small_ints, CMP_SCALARS, "exact"),
    "nd.maximum": (nd.maximum, np.maximum, small_ints, CMP_SCALARS, "exact"),
    "eq": (lambda a, s: a == s, cmp(np.equal), small_ints, CMP_SCALARS, "exact"),
    "ne": (lambda a, s: a != s, cmp(np.not_equal), small_ints, CMP_SCALARS, "exact"),
    "ge": (lambda a, s: a >= s, cmp(np.greater_equal), small_ints, CMP_SCALARS, "exact"),
    "gt": (lambda a, s: a > s, cmp(np.greater), small_ints, CMP_SCALARS, "exact"),
    "lt": (lambda a, s: a < s, cmp(np.less), small_ints, CMP_SCALARS, "exact"),
    "le": (lambda a, s: a <= s, cmp(np.less_equal), small_ints, CMP_SCALARS, "exact"),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", sorted(SCALAR))
def test_scalar_ops(op, kind, dtype, device):
    f, npf, gen, scalars, tk = SCALAR[op]
    t = NP_DTYPE[dtype]
    a, x = make_input(kind, (3, 4, 5), dtype, gen, device)
    for s in scalars:
        expected = npf(x, t(float(s)))  # the scalar is rounded to the array's type first
        check(f(a, s), expected, dtype, tk, device)


POW_EXPONENTS = [2.0, 3, 0.5, -1.0, 0, 5.0, np.float32(1.5), -2, 0.1]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_scalar_power(kind, dtype, device):
    t = NP_DTYPE[dtype]
    a, x = make_input(kind, (4, 5), dtype, normal, device)
    base = nd.array(np.array([0.0, -2.0, 2.0, -0.5, 1.0, -1.0, 3.0]), dtype=dtype, device=device)
    xb = np.array([0.0, -2.0, 2.0, -0.5, 1.0, -1.0, 3.0]).astype(t)
    with np.errstate(all="ignore"):
        for s in POW_EXPONENTS:
            check(a ** s, np.power(x, t(float(s))), dtype, "ulps", device)
            check(base ** s, np.power(xb, t(float(s))), dtype, "ulps", device)
    # C powf: negative base with non-integral exponent is NaN, integral keeps the sign
    assert np.isnan((base ** 0.5).numpy()[1])
    assert (base ** 5.0).numpy()[1] == -32.0
    np.testing.assert_array_equal((a ** 0).numpy(), np.ones((4, 5), t))


UNARY = {
    "neg": (lambda a: -a, np.negative, normal, "exact"),
    "log": (lambda a: a.log(), np.log, positive, "ulps"),
    "exp": (lambda a: a.exp(), np.exp, normal, "ulps"),
    "tanh": (lambda a: a.tanh(), np.tanh, normal, "ulps"),
    "nd.log": (nd.log, np.log, positive, "ulps"),
    "nd.exp": (nd.exp, np.exp, normal, "ulps"),
    "nd.tanh": (nd.tanh, np.tanh, normal, "ulps"),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("op", sorted(UNARY))
def test_unary_ops(op, kind, dtype, device):
    f, npf, gen, tk = UNARY[op]
    a, x = make_input(kind, (3, 4, 5), dtype, gen, device)
    check(f(a), npf(x), dtype, tk, device)


def test_unary_special_values():
    x = np.array([0.0, 1.0, -0.0, 20.0, -20.0, 88.0, -80.0, 1e-30], dtype=np.float32)
    a = nd.array(x)
    with np.errstate(all="ignore"):
        np.testing.assert_allclose(a.tanh().numpy(), np.tanh(x), rtol=2e-6, atol=0)
        np.testing.assert_allclose(a.exp().numpy(), np.exp(x), rtol=2e-6, atol=0)
        np.testing.assert_allclose(nd.array(np.abs(x)).log().numpy(), np.log(np.abs(x)),
                                   rtol=2e-6, atol=0)
    assert np.isnan(nd.array([-1.0]).log().numpy()[0])
    assert nd.array([0.0]).log().numpy()[0] == -np.inf
    assert nd.array([1000.0]).exp().numpy()[0] == np.inf


# --------------------------------------------------------------------------
# dtype rules (2.14) and scalar rounding (item 29)
# --------------------------------------------------------------------------

def test_scalar_is_rounded_to_float32():
    x = np.random.randn(3, 4)          # float64 values, not representable in float32
    a = nd.array(x)
    for i in range(3):
        for j in range(4):
            s = float(x[i, j])
            eq = (a == s).numpy()
            ge = (a >= s).numpy()
            assert eq[i, j] == 1.0 and ge[i, j] == 1.0
            assert (a != s).numpy()[i, j] == 0.0
            assert (a <= x[i, j].item()).numpy()[i, j] == 1.0
            assert eq.sum() == 1.0
    np.testing.assert_array_equal((a + 0.1).numpy(), x.astype(np.float32) + np.float32(0.1))
    np.testing.assert_array_equal((a * 0.1).numpy(), x.astype(np.float32) * np.float32(0.1))


def test_scalar_is_exact_for_float64():
    x = np.random.randn(3, 4)
    a = nd.array(x, dtype="float64")
    for i in range(3):
        for j in range(4):
            eq = (a == float(x[i, j])).numpy()
            assert eq[i, j] == 1.0 and eq.sum() == 1.0
    np.testing.assert_array_equal((a + 0.1).numpy(), x + 0.1)
    np.testing.assert_array_equal((0.1 - a).numpy(), 0.1 - x)


@pytest.mark.parametrize("s", [2.5, 3, np.float64(0.1), np.float32(0.1), np.int64(4)])
def test_scalars_never_change_dtype(s):
    x = np.random.randn(2, 3)
    a32, a64 = nd.array(x), nd.array(x, dtype="float64")
    for r in (a32 + s, s + a32, a32 * s, s * a32, a32 / s, s - a32, a32 ** 2, a32.maximum(s),
              a32 == s, a32 >= s, a32 < s):
        assert r.dtype == "float32" and r.numpy().dtype == np.float32
    for r in (a64 + s, s + a64, a64 * s, s * a64, a64 / s, s - a64, a64.maximum(s), a64 == s):
        assert r.dtype == "float64" and r.numpy().dtype == np.float64
    np.testing.assert_array_equal((a64 * s).numpy(), x * np.float64(s))
    np.testing.assert_array_equal((a32 * s).numpy(), x.astype(np.float32) * np.float32(s))


@pytest.mark.parametrize("op", sorted(BINARY))
def test_mixed_dtypes_give_float64(op):
    f, npf, ga, gb, tk = BINARY[op]
    x = ga((3, 4)).astype(np.float32)
    y = gb((3, 4))
    for a, b, xx, yy in ((nd.array(x), nd.array(y, dtype="float64"), x, y),
                         (nd.array(y, dtype="float64"), nd.array(x), y, x)):
        if op in ("pow", "div") and a.dtype == "float64":
            continue  # generators are asymmetric
        expected = npf(xx.astype(np.float64), yy.astype(np.float64))
        check(f(a, b), expected, "float64", tk)


# --------------------------------------------------------------------------
# broadcasting between arrays (EXT)
# --------------------------------------------------------------------------

BROADCAST_PAIRS = [
    ((3, 1), (1, 4)),
    ((4,), (3, 4)),
    ((3, 4), (4,)),
    ((2, 1, 5), (3, 1)),
    ((), (2, 3)),
    ((2, 3), ()),
    ((1,), (0, 3)),
    ((3, 0, 2), (1, 2)),
    ((5, 1, 1, 2, 1, 1, 3), (4, 1, 2, 1, 1, 1)),
    ((1, 2, 1, 3, 1, 2, 1, 2), (2, 1, 2, 1, 2, 1, 2, 1)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "maximum", "eq", "ge", "lt", "pow"])
@pytest.mark.parametrize("sa, sb", BROADCAST_PAIRS, ids=[f"{a}-{b}" for a, b in BROADCAST_PAIRS])
def test_broadcasting_binary(sa, sb, op, dtype, device):
    f, npf, ga, gb, tk = BINARY[op]
    t = NP_DTYPE[dtype]
    x, y = ga(sa).astype(t), gb(sb).astype(t)
    check(f(nd.array(x, dtype=dtype, device=device), nd.array(y, dtype=dtype, device=device)),
          npf(x, y), dtype, tk, device)


def test_broadcasting_non_compact_operands():
    x = np.random.randn(5, 3).astype(np.float32)
    y = np.random.randn(4, 1, 6).astype(np.float32)
    a = nd.array(x).permute((1, 0))                    # (3, 5)
    b = nd.array(y)[:, :, 1::2]                        # (4, 1, 3)
    check(a.broadcast_to((1, 3, 5)) + b.permute((0, 2, 1)), x.T[None] + y[:, :, 1::2]
          .transpose(0, 2, 1), "float32", "exact")


# --------------------------------------------------------------------------
# special shapes: 0-d, size-0, rank 7 and 8
# --------------------------------------------------------------------------

SPECIAL_SHAPES = [(), (0, 3), (3, 0, 2), (2, 1, 2, 3, 1, 2, 2), (1, 2, 2, 1, 2, 3, 1, 2)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SPECIAL_SHAPES, ids=str)
def test_ops_on_special_shapes(shape, dtype):
    for op, (f, npf, ga, gb, tk) in BINARY.items():
        a, x = make_input("compact", shape, dtype, ga)
        b, y = make_input("compact", shape, dtype, gb)
        check(f(a, b), npf(x, y), dtype, tk)
    for op, (f, npf, gen, scalars, tk) in SCALAR.items():
        a, x = make_input("compact", shape, dtype, gen)
        check(f(a, scalars[0]), npf(x, NP_DTYPE[dtype](scalars[0])), dtype, tk)
    for op, (f, npf, gen, tk) in UNARY.items():
        a, x = make_input("compact", shape, dtype, gen)
        check(f(a), npf(x), dtype, tk)
    if len(shape) >= 7:
        perm = tuple(reversed(range(len(shape))))
        a, x = make_input("transposed", shape, dtype, normal)
        check((a * 2.0 + a).permute(perm).compact(), (x * 2 + x).transpose(perm), dtype, "exact")


# --------------------------------------------------------------------------
# ops on the cpu_numpy device
# --------------------------------------------------------------------------

def test_ops_on_cpu_numpy_device():
    dev = nd.cpu_numpy()
    x = small_ints((3, 4)).astype(np.float32)
    y = nonzero((3, 4)).astype(np.float32)
    a, b = nd.array(x, device=dev), nd.array(y, device=dev)
    check(a + b, x + y, "float32", "exact", dev)
    check(a.permute((1, 0)) * b.permute((1, 0)), (x * y).T, "float32", "exact", dev)
    check(a / b, x / y, "float32", "exact", dev)
    check(2.0 - a, np.float32(2) - x, "float32", "exact", dev)
    check(a == b, (x == y).astype(np.float32), "float32", "exact", dev)
    check(a >= 1.0, (x >= 1).astype(np.float32), "float32", "exact", dev)
    check(b.exp(), np.exp(y), "float32", "ulps", dev)
    check(a.maximum(b), np.maximum(x, y), "float32", "exact", dev)
    check(a.sum(axis=1), x.sum(axis=1), "float32", "ulps", dev)
    check(a.max(axis=0, keepdims=True), x.max(axis=0, keepdims=True), "float32", "exact", dev)
    m = a @ b.permute((1, 0))
    assert m.device == dev and m.shape == (3, 3)
    np.testing.assert_allclose(m.numpy(), x.astype(np.float64) @ y.T.astype(np.float64),
                               rtol=1e-5, atol=1e-5)
    check(a[1:3, ::2].compact(), x[1:3, ::2], "float32", "exact", dev)


# --------------------------------------------------------------------------
# reductions (2.9)
# --------------------------------------------------------------------------

AXES = [None, 0, 1, 2, -1, -3, (1,), [2], (0, 2), (-1, 0), (0, 1, 2), [2, 1]]


def np_reduce(op, x, axis, keepdims):
    """NumPy reference with needle's conventions (axis=None gives shape (1,))."""
    if op == "sum":
        x = x.astype(np.float64)
    f = np.sum if op == "sum" else np.max
    if axis is None:
        r = f(x)
        return np.full((1,) * x.ndim if keepdims else (1,), r)
    ax = axis if isinstance(axis, int) else tuple(axis)
    return f(x, axis=ax, keepdims=keepdims)


def reduced_count(shape, axis):
    if axis is None:
        return int(np.prod(shape))
    axes = [axis] if isinstance(axis, int) else list(axis)
    return int(np.prod([shape[a] for a in axes]))


def check_reduction(r, op, x, axis, keepdims, dtype, device=None):
    expected = np_reduce(op, x, axis, keepdims)
    assert isinstance(r, nd.NDArray)
    assert r.shape == expected.shape
    assert r.dtype == dtype
    assert r.device == (device or nd.cpu())
    assert r.is_compact()
    got = r.numpy()
    assert got.dtype == NP_DTYPE[dtype]
    if op == "max":
        np.testing.assert_array_equal(got, expected)
    else:
        # any summation order is allowed: worst-case rounding bound n * eps * sum|x|
        n = reduced_count(x.shape, axis)
        bound = np_reduce("sum", np.abs(x), axis, keepdims) * n * EPS[dtype] + 1e-30
        assert np.all(np.abs(got - expected) <= bound), (got, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("axis", AXES, ids=str)
@pytest.mark.parametrize("op", ["sum", "max"])
def test_reductions(op, axis, keepdims, kind, dtype, device):
    a, x = make_input(kind, (4, 5, 6), dtype, normal, device)
    r = getattr(a, op)(axis=axis, keepdims=keepdims)
    check_reduction(r, op, x, axis, keepdims, dtype, device)
    if op == "sum":
        r2 = nd.sum(a, axis=axis, keepdims=keepdims)
        check_reduction(r2, op, x, axis, keepdims, dtype, device)


def test_reduction_default_arguments():
    x = np.random.randn(3, 4).astype(np.float32)
    a = nd.array(x)
    assert a.sum().shape == (1,)
    assert a.max().shape == (1,)
    assert a.max().numpy()[0] == x.max()
    assert a.sum(1).shape == (3,)
    assert a.max(0).shape == (4,)
    np.testing.assert_array_equal(a.max(0).numpy(), x.max(0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, axis", [
    ((0, 3), None),
    ((0, 3), 0),
    ((0, 3), 1),
    ((3, 0, 2), 1),
    ((3, 0, 2), (0, 2)),
    ((2, 1, 2, 3, 1, 2, 2), (0, 3, 6)),
    ((2, 1, 2, 3, 1, 2, 2), -2),
    ((1, 2, 2, 1, 2, 3, 1, 2), (1, 2, 4, 5, 7)),
    ((1, 2, 2, 1, 2, 3, 1, 2), None),
])
@pytest.mark.parametrize("keepdims", [False, True])
def test_reductions_special_shapes(shape, axis, keepdims, dtype):
    a, x = make_input("compact", shape, dtype, normal)
    check_reduction(a.sum(axis=axis, keepdims=keepdims), "sum", x, axis, keepdims, dtype)
    n = reduced_count(shape, axis)
    if n > 0:
        check_reduction(a.max(axis=axis, keepdims=keepdims), "max", x, axis, keepdims, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reductions_0d(dtype):
    x = np.array(-1.25, dtype=NP_DTYPE[dtype])
    a = nd.array(x, dtype=dtype)
    for op in ("sum", "max"):
        r = getattr(a, op)()
        assert r.shape == (1,) and r.dtype == dtype
        np.testing.assert_array_equal(r.numpy(), [x])


def test_large_sum_keeps_float32_precision():
    # a single float accumulator would be ~10% off here (item 25)
    a = nd.full((10_000_000,), 0.1)
    expected = 10_000_000 * float(np.float32(0.1))
    assert abs(float(a.sum().numpy()[0]) - expected) <= 1e-5 * expected
    b = nd.full((4, 2_500_000), 0.1)
    np.testing.assert_allclose(b.sum(axis=1).numpy(), np.full(4, expected / 4), rtol=1e-5)
    c = nd.full((2_500_000, 4), 0.1)
    np.testing.assert_allclose(c.sum(axis=0).numpy(), np.full(4, expected / 4), rtol=1e-5)


def test_max_with_infinities_and_negative_values():
    x = np.array([[-np.inf, -5.0, -7.0], [-3.0, np.inf, -1e30]], dtype=np.float32)
    a = nd.array(x)
    np.testing.assert_array_equal(a.max(axis=1).numpy(), x.max(axis=1))
    np.testing.assert_array_equal(a.max(axis=0).numpy(), x.max(axis=0))
    np.testing.assert_array_equal(nd.array(-np.ones((2, 3)) * 4).max().numpy(), [-4.0])


# --------------------------------------------------------------------------
# flip and pad (2.11)
# --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("axes", [(0,), (1,), (2,), (0, 1), (2, 0), (0, 1, 2), ()], ids=str)
def test_flip(axes, kind, dtype, device):
    a, x = make_input(kind, (3, 4, 5), dtype, normal, device)
    before = a.numpy()
    r = a.flip(axes)
    check(r, np.flip(x, axes) if axes else x, dtype, "exact", device)
    assert r._handle.ptr() != a._handle.ptr()
    np.testing.assert_array_equal(a.numpy(), before)
    check(nd.flip(a, axes), np.flip(x, axes) if axes else x, dtype, "exact", device)


@pytest.mark.parametrize("shape, axes", [((), ()), ((0, 3), (1,)), ((3, 0, 2), (0, 2)),
                                         ((2, 1, 2, 3, 1, 2, 2), (0, 3, 6)),
                                         ((1, 2, 2, 1, 2, 3, 1, 2), (1, 5, 7))])
def test_flip_special_shapes(shape, axes):
    a, x = make_input("compact", shape, "float32", normal)
    check(a.flip(axes), np.flip(x, axes) if axes else x, "float32", "exact")


PADS = [
    ((3, 4, 5), ((1, 2), (0, 3), (2, 0))),
    ((3, 4, 5), ((0, 0), (0, 0), (0, 0))),
    ((3, 4, 5), ((0, 0), (1, 1), (1, 1))),
    ((3, 4, 5), [(2, 2), (0, 0), (0, 1)]),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape, axes", PADS, ids=[str(p[1]) for p in PADS])
def test_pad(shape, axes, kind, dtype, device):
    a, x = make_input(kind, shape, dtype, positive, device)
    r = a.pad(tuple(tuple(p) for p in axes))
    check(r, np.pad(x, axes), dtype, "exact", device)
    assert r._handle.ptr() != a._handle.ptr()


@pytest.mark.parametrize("shape, axes", [((0, 3), ((1, 1), (0, 2))), ((), ()),
                                         ((2,), ((3, 0),)),
                                         ((2, 1, 2, 1, 1, 2, 1), ((1, 0),) * 7)])
def test_pad_special_shapes(shape, axes):
    a, x = make_input("compact", shape, "float32", positive)
    check(a.pad(axes), np.pad(x, axes) if axes else x, "float32", "exact")


# Note [AVX-512 elementwise] (csrc/ndarray/cpu_ewise.c): the elementwise loops
# are built for the x86-64 baseline, AVX2 and AVX-512F, and every build must
# give the same bits (no fused multiply-add anywhere). Each runs in its own
# process (NEEDLE_EWISE_KERNEL is read once) over float32 inputs spread over
# every bit pattern (NaNs, infinities and subnormals among them) and float64
# ones over every exponent, on contiguous, strided and broadcast operands.
ISA_SCRIPT = r"""
import sys
import numpy as np
import needle.backend_ndarray as nd
from needle import _C

UNARY = {"neg": lambda x: -x, "log": lambda x: x.log(), "exp": lambda x: x.exp(),
         "tanh": lambda x: x.tanh(), "relu": lambda x: x.relu(),
         "sigmoid": lambda x: x.sigmoid(), "sin": lambda x: x.sin(), "cos": lambda x: x.cos(),
         "sqrt": lambda x: x.sqrt(), "abs": lambda x: x.abs()}
BINARY = {"add": lambda x, y: x + y, "sub": lambda x, y: x - y, "mul": lambda x, y: x * y,
          "div": lambda x, y: x / y, "pow": lambda x, y: x ** y,
          "maximum": lambda x, y: x.maximum(y), "minimum": lambda x, y: x.minimum(y),
          "eq": lambda x, y: x == y, "ne": lambda x, y: x != y, "gt": lambda x, y: x > y,
          "ge": lambda x, y: x >= y, "lt": lambda x, y: x < y, "le": lambda x, y: x <= y}
rng = np.random.default_rng(0)
vals = {"float32": np.arange(0, 2**32, 4099, dtype=np.uint64).astype(np.uint32).view(np.float32),
        "float64": rng.integers(0, 2**64, 2**18, dtype=np.uint64, endpoint=False).view(np.float64)}
out = {}
for dt, v in vals.items():
    x = nd.array(v, dtype=dt)
    y = nd.array(rng.permutation(v), dtype=dt)
    s = nd.array(v[7:8], dtype=dt).broadcast_to(x.shape)
    m = (v.size - 1) // 3
    for name, f in UNARY.items():
        out[f"{dt} {name}"] = f(x).numpy()
        out[f"{dt} {name} strided"] = f(x[::3]).numpy()
    for name, f in BINARY.items():
        out[f"{dt} {name}"] = f(x, y).numpy()
        out[f"{dt} {name} strided"] = f(x[0:3 * m:3], y[1:3 * m + 1:3]).numpy()
        out[f"{dt} {name} scalar"] = f(x, s).numpy()
np.savez(sys.argv[1], isa=_C.ewise_kernel_name(), **out)
"""


def test_every_instruction_set_gives_the_same_bits(tmp_path):
    import os
    import subprocess
    import sys

    runs = {}
    for isa in ("generic", "avx2", "avx512"):
        path = tmp_path / f"{isa}.npz"
        env = dict(os.environ, NEEDLE_EWISE_KERNEL=isa)
        subprocess.run([sys.executable, "-c", ISA_SCRIPT, str(path)], env=env, check=True)
        got = np.load(path)
        if str(got["isa"]) == isa:  # else this CPU does not run it
            runs[isa] = got
    assert "generic" in runs
    if len(runs) < 2:
        pytest.skip("this CPU runs the baseline loops only")
    ref = runs["generic"]
    for isa, got in runs.items():
        for key in ref.files:
            if key == "isa":
                continue
            a, b = ref[key], got[key]
            bits = np.uint32 if a.dtype == np.float32 else np.uint64
            diff = np.flatnonzero(a.view(bits) != b.view(bits))
            assert diff.size == 0, (f"{key}: {isa} differs from generic at {diff.size} "
                                    f"elements, first {a[diff[0]]!r} vs {b[diff[0]]!r}")
