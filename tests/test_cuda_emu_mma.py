"""The CUDA emulator's WMMA (csrc/cuda/emu/mma.h, Note [Emulated WMMA]) against what
CUDA documents for it, and the TF32 tensor-core matmul (matmul_tf32_kernel, Note
[TF32 switch], cuda_matmul.cu) run under it. The references are NumPy's: TF32
rounding from float64 arithmetic (PTX cvt.rna.tf32.f32), products and sums in
float32 in the order the emulator documents. Skipped unless needle._cuda_emu is
built (NEEDLE_CUDA_EMU=1 python setup.py build_ext --inplace, or `make cuda-emu`);
the matmul cases also need cuda() to be the emulator (NEEDLE_CUDA_EMU=1 at run
time)."""
import os

import numpy as np
import pytest

cu = pytest.importorskip("needle._cuda_emu", reason="needle._cuda_emu is not built "
                         "(NEEDLE_CUDA_EMU=1 python setup.py build_ext --inplace)")

import needle.backend_ndarray as nd  # noqa: E402

ON_EMU = os.environ.get("NEEDLE_CUDA_EMU") == "1" and nd.cuda().enabled()
needs_emu = pytest.mark.skipif(not ON_EMU, reason="cuda() is not the emulator here "
                               "(NEEDLE_CUDA_EMU=1)")
RNG = np.random.default_rng(10)


def run(name, grid=(1, 1, 1), block=(32, 1, 1), args=(0, 0, 0, 0)):
    return np.array(cu._selftest(name, grid, block, tuple(args)))


def as_int(u):
    return u - (1 << 32) if u >= 1 << 31 else u  # the C int of a uint32's bits


def tf32_rna(x):
    """PTX cvt.rna.tf32.f32 from float64 arithmetic: |x| rounded to a multiple of
    2^(E - 10) (E its float32 exponent, -126 for subnormals), ties away from zero;
    NaN and Inf kept, past the largest TF32 value Inf."""
    x = np.asarray(x, np.float32)
    with np.errstate(invalid="ignore"):  # NaN payloads
        v = x.astype(np.float64)
    out = v.copy()
    fin = np.isfinite(v) & (v != 0)
    _, ex = np.frexp(np.abs(v[fin]))  # |v| = f * 2^ex, f in [0.5, 1)
    ulp = np.ldexp(1.0, np.maximum(ex - 1, -126) - 10)
    out[fin] = np.sign(v[fin]) * np.floor(np.abs(v[fin]) / ulp + 0.5) * ulp
    with np.errstate(over="ignore"):
        return out.astype(np.float32)


def tf32_bits(x):
    """What the tensor core reads of a float: the low 13 mantissa bits as zero."""
    u = np.asarray(x, np.float32).view(np.uint32)
    t = np.where(np.isnan(x), u, u & np.uint32(0xffffe000))
    return t.view(np.float32)


def mma_ref(a, b, c):
    """D = A @ B + C as the emulator documents it: d = c, then d += a[:, k] * b[k, :]
    for k in order, each product exact and each sum rounded to float32."""
    d = np.array(c, np.float32)
    for k in range(a.shape[-1]):
        d = d + a[..., :, k:k + 1] * b[..., k:k + 1, :]  # float32 throughout
    return d


# ---- __float_to_tf32 -------------------------------------------------------

@pytest.mark.parametrize("first, step, count", [
    (0x3f800000 - 0x8000, 0x400, 4096),  # around 1.0 in eighths of a TF32 ulp: ties
    (0xbf800000 - 0x8000, 0x400, 4096),  # the same, negative
    (0x00000000, 0x1ff, 8192),  # subnormals and the smallest normals
    (0x7f7f0000, 0x1000, 4096),  # the largest finite values, Inf, NaN
    (0x00000000, 4099, 1 << 20),  # across all 2^32 patterns: both signs, NaNs
])
def test_float_to_tf32_rounds_to_nearest_ties_away(first, step, count):
    grid, block = (max(count // 1024, 1), 1, 1), (min(count, 1024), 1, 1)
    got = run("tf32_round", grid, block, (as_int(first), as_int(step), 0, 0))
    u = (np.uint64(first) + np.arange(count, dtype=np.uint64) * np.uint64(step)) % (1 << 32)
    x = u.astype(np.uint32).view(np.float32)
    want = tf32_rna(x)
    gotf = got.astype(np.uint32).view(np.float32)
    nan = np.isnan(x)
    assert np.array_equal(np.isnan(gotf), nan)
    np.testing.assert_array_equal(gotf[~nan].view(np.uint32), want[~nan].view(np.uint32))
    np.testing.assert_array_equal(got.astype(np.uint32)[~nan] & 0x1fff, 0)  # low 13 bits


def test_float_to_tf32_ties_and_specials_by_hand():
    one = np.float32(1.0)
    half_ulp = np.float32(2.0 ** -11)  # half of TF32's ulp at 1
    x = np.array([one + half_ulp, -(one + half_ulp), one + half_ulp * np.float32(0.75),
                  one + 3 * half_ulp, np.inf, -np.inf, np.finfo(np.float32).max,
                  np.float32(2.0 ** -140), np.float32(-3 * 2.0 ** -137)], np.float32)
    want = np.array([1 + 2.0 ** -10, -(1 + 2.0 ** -10), 1.0, 1 + 2.0 ** -9, np.inf, -np.inf,
                     np.inf, 0.0, -2.0 ** -135], np.float64)
    np.testing.assert_array_equal(tf32_rna(x).astype(np.float64), want)  # the reference itself
    for i, v in enumerate(x):
        u = int(v.view(np.uint32))
        got = run("tf32_round", block=(1, 1, 1), args=(as_int(u), 0, 0, 0))
        assert np.uint32(got[0]).view(np.float32) == np.float32(want[i]), (v, got)


# ---- fragments and mma_sync --------------------------------------------------

def test_fragment_lane_mapping_is_the_documented_one_and_not_naive():
    """An accumulator whose slot e of lane l holds 100 e + l, stored row-major: every
    (lane, slot) once, at (45 (32 e + l) + 11) mod 256 (Note [Emulated WMMA])."""
    d = run("mma_layout", grid=(8, 1, 1)).astype(int)
    lane, slot = d % 100, d // 100
    assert sorted(zip(lane, slot)) == [(l, e) for l in range(32) for e in range(8)]
    np.testing.assert_array_equal((45 * (32 * slot + lane) + 11) % 256, np.arange(256))
    rows0 = np.nonzero(lane == 0)[0] // 16
    assert len(set(rows0)) > 1 and not np.array_equal(np.nonzero(lane == 0)[0], np.arange(8))


def gen(which, n, seed):
    """The test kernels' operands (emu_selftest_mma.cc's gen)."""
    e = np.arange(n, dtype=np.uint64)
    h = (e * 2654435761 + seed * 40503 + which * 0x9e3779b9) % (1 << 32)
    return (h / 2.0 ** 32 * 4.0 - 2.0).astype(np.float32)


@pytest.mark.parametrize("a_col", [0, 1])
@pytest.mark.parametrize("b_col", [0, 1])
@pytest.mark.parametrize("c_col", [0, 1])
@pytest.mark.parametrize("rounded", [0, 1], ids=["raw", "rounded"])
def test_mma_sync_of_one_tile_in_every_layout(a_col, b_col, c_col, rounded):
    """8 warps each load A (16x8), B (8x16) and C from shared memory in the given
    layouts, mma_sync(c, a, b, c) (d is c), store with ldm 20; raw inputs are read
    as their TF32 bits (truncated), rounded ones went through __float_to_tf32."""
    seed = 7 + 4 * a_col + 2 * b_col + c_col
    got = run("mma_tile", block=(256, 1, 1), args=(a_col, b_col, c_col, seed * 2 + rounded))
    a, b, c = gen(0, 128, seed).reshape(16, 8), gen(1, 128, seed).reshape(8, 16), \
        gen(2, 256, seed).reshape(16, 16)
    conv = tf32_rna if rounded else tf32_bits
    want = mma_ref(conv(a), conv(b), c)
    np.testing.assert_array_equal(got.reshape(16, 16), want.astype(np.float64))
    # and within TF32's documented error of the exact product
    exact = a.astype(np.float64) @ b + c
    bound = 2.0 ** -10 * (np.abs(a).astype(np.float64) @ np.abs(b) + np.abs(c)) + 1e-30
    assert np.all(np.abs(got.reshape(16, 16) - exact) <= bound)
    if not rounded:  # truncation is not rounding: some results differ
        assert not np.array_equal(want, mma_ref(tf32_rna(a), tf32_rna(b), c))


# ---- misuse: launch errors naming kernel, block, thread, file and line ------

@pytest.mark.parametrize("mode, who, v, block, what", [
    (0, 5, 0, 64, r"wmma::load_matrix_sync at emu_selftest_mma.cc:\d+ with mask 0xffffffff in "
                  r"warp 0: lanes 0xffffffdf arrived"),
    (1, 7, 0, 32, r"lane 7 calls __syncwarp at emu_selftest_mma.cc:\d+ with mask 0xffffffff "
                  r"while lanes 0x[0-9a-f]+ wait at wmma::load_matrix_sync at "
                  r"emu_selftest_mma.cc:\d+"),
    (2, 3, 0, 32, r"wmma::load_matrix_sync is a warp collective: lane \d+ calls "
                  r"load_matrix_sync of a matrix_a 16x8 at 0x[0-9a-f]+, ldm 8, row-major, lane "
                  r"\d+ calls load_matrix_sync of a matrix_a 16x8 at 0x[0-9a-f]+"),
    (3, 0, 4, 32, r"load_matrix_sync: the pointer 0x[0-9a-f]+ is not 256-bit \(32-byte\) "
                  r"aligned"),
    (4, 0, 6, 32, r"load_matrix_sync: ldm 6 is not a multiple of 16 bytes \(4 floats\)"),
    (5, 0, 2, 32, r"store_matrix_sync: the pointer 0x[0-9a-f]+ is not 256-bit"),
    (6, 0, 18, 32, r"store_matrix_sync: ldm 18 is not a multiple of 16 bytes"),
    (7, 0, 2, 32, r"load_matrix_sync: layout 2 is neither mem_row_major nor mem_col_major"),
    (8, 0, 0, 32, r"wmma::mma_sync is a warp collective: lane \d+ calls mma_sync 16x16x8, "
                  r"a row_major, b row_major, lane \d+ calls .* at emu_selftest_mma.cc:\d+"),
    (9, 0, 0, 48, r"wmma::load_matrix_sync needs all 32 lanes of the warp, and the block's 48 "
                  r"threads leave warp 1 with 16"),
    (10, 9, 0, 32, r"lane \d+ calls wmma::(load|store)_matrix_sync at emu_selftest_mma.cc:\d+ "
                   r"with mask 0xffffffff while lanes 0x[0-9a-f]+ wait at "
                   r"wmma::(store|load)_matrix_sync at emu_selftest_mma.cc:\d+"),
], ids=["lane-exited", "lane-skipped", "lane-other-pointer", "load-misaligned", "load-ldm",
        "store-misaligned", "store-ldm", "bad-layout", "mma-other-line", "partial-warp",
        "lane-other-call"])
def test_wmma_misuse_is_a_launch_error(mode, who, v, block, what):
    with pytest.raises(RuntimeError, match=what) as e:
        run("mma_misuse", block=(block, 1, 1), args=(mode, who, v, 0))
    msg = str(e.value)
    assert "mma_misuse_kernel" in msg and "cudaErrorLaunchFailure" in msg, msg
    assert "block (0,0,0)" in msg, msg
    if mode != 0:  # a deadlock names no thread: every lane waits
        assert "thread (" in msg and "emu_selftest_mma.cc:" in msg, msg


@pytest.mark.parametrize("mode, v", [(3, 8), (4, 12), (5, 8), (6, 20), (7, 1)])
def test_wmma_legal_pointers_ldm_and_layouts_run(mode, v):
    """The same calls with a 32-byte aligned pointer, ldm a multiple of 4 floats and
    mem_col_major: every thread gets through."""
    np.testing.assert_array_equal(run("mma_misuse", args=(mode, 0, v, 0)), np.ones(32))


# ---- the TF32 matmul kernel under the emulator ---------------------------------

def tf32_matmul_ref(x, y):
    """matmul_tf32_kernel as emulated: inputs rounded (__float_to_tf32 as they are
    staged), C = 0 + sum over k in order of exact products, float32 sums."""
    return mma_ref(tf32_rna(x), tf32_rna(y), np.zeros(x.shape[:-1] + y.shape[-1:], np.float32))


def on_device(v):
    return nd.array(v, device=nd.cuda())


def tf32_matmul(fn):
    prev = cu.set_tf32(True)
    try:
        return fn()
    finally:
        cu.set_tf32(prev)


@needs_emu
@pytest.mark.parametrize("m, n, p", [
    (1, 1, 1), (1, 37, 1), (1, 300, 1), (5, 1, 7), (64, 1, 64), (1, 8, 65), (63, 17, 65),
    (64, 64, 64), (65, 8, 129), (7, 9, 3), (33, 16, 31), (130, 300, 70), (72, 24, 136)])
def test_tf32_matmul_is_the_documented_arithmetic(m, n, p):
    """Sizes that are and are not multiples of 64 (the block tile), 16 (its depth) and
    8 (the fragment's k), and m, n or p = 1 (the bounds paths): the result has the
    bits of the emulated arithmetic, and is within TF32's error of float64."""
    x, y = RNG.standard_normal((m, n)).astype(np.float32), \
        RNG.standard_normal((n, p)).astype(np.float32)
    got = tf32_matmul(lambda: (on_device(x) @ on_device(y)).numpy())
    np.testing.assert_array_equal(got, tf32_matmul_ref(x, y))
    ref = x.astype(np.float64) @ y
    bound = 2.0 ** -9 * (np.abs(x).astype(np.float64) @ np.abs(y)) + 1e-30
    assert np.all(np.abs(got - ref) <= bound)


@needs_emu
def test_tf32_matmul_batched_broadcast_and_strided_operands():
    """A compact batch, a broadcast one (step 0), batch axes permuted (a device
    table of offsets), transposed operands (strides other than (n, 1))."""
    x, y = RNG.standard_normal((2, 3, 9, 33)).astype(np.float32), \
        RNG.standard_normal((3, 2, 33, 20)).astype(np.float32)
    cases = [
        (lambda: on_device(x[0]) @ on_device(y[:, 0]), x[0], y[:, 0]),
        (lambda: on_device(x).permute((1, 0, 2, 3)) @ on_device(y),
         x.transpose(1, 0, 2, 3), y),
        (lambda: on_device(x[:1, :1]).broadcast_to((3, 2, 9, 33)) @ on_device(y),
         np.broadcast_to(x[:1, :1], (3, 2, 9, 33)), y),
        (lambda: on_device(x[1, 2].T.copy()).permute((1, 0)) @
         on_device(y[0, 1].T.copy()).permute((1, 0)), x[1, 2], y[0, 1]),
        (lambda: on_device(x[0]) @ on_device(y[0, 0]), x[0], y[0, 0]),
    ]
    for fn, xa, ya in cases:
        got = tf32_matmul(lambda: fn().numpy())
        np.testing.assert_array_equal(got, tf32_matmul_ref(np.ascontiguousarray(xa), ya))


@needs_emu
def test_tf32_matmul_rounds_its_inputs_with_cvt_rna():
    """x (k, 1) @ [[1]]: every product is tf32(x) * 1, exact: the kernel's rounding,
    seen through the matmul (ties, negative, subnormal, Inf, NaN)."""
    half = 2.0 ** -11
    x = np.array([1 + half, -(1 + half), 1 + 0.75 * half, 1 + 3 * half, 2.0 ** -140,
                  -3 * 2.0 ** -137, np.inf, -np.inf, np.nan, 3.0e38, 1.0 + 2.0 ** -20],
                 np.float32).reshape(-1, 1)
    got = tf32_matmul(lambda: (on_device(x) @ on_device(np.ones((1, 1), np.float32))).numpy())
    np.testing.assert_array_equal(got, tf32_rna(x))  # NaN at NaN, -0 as 0 both equal


@needs_emu
def test_tf32_result_differs_from_the_float32_path_where_it_should():
    """Inputs with bits below TF32's mantissa: the TF32 path loses them (the float32
    path keeps them); inputs that are TF32 values already: the same products, and
    only the summation order may differ."""
    x = (1 + np.arange(1, 65, dtype=np.float32) * np.float32(2.0 ** -20)).reshape(8, 8)
    y = np.eye(8, dtype=np.float32)
    t = tf32_matmul(lambda: (on_device(x) @ on_device(y)).numpy())
    f = (on_device(x) @ on_device(y)).numpy()
    np.testing.assert_array_equal(f, x)  # float32: exact (a permutation)
    np.testing.assert_array_equal(t, np.ones((8, 8), np.float32))  # 2^-20 < half a TF32 ulp
    xs, ys = tf32_rna(RNG.standard_normal((20, 40)).astype(np.float32)), \
        tf32_rna(RNG.standard_normal((40, 12)).astype(np.float32))
    t = tf32_matmul(lambda: (on_device(xs) @ on_device(ys)).numpy())
    np.testing.assert_allclose(t, (on_device(xs) @ on_device(ys)).numpy(), rtol=1e-5,
                               atol=1e-5)
    big = RNG.standard_normal((16, 512)).astype(np.float32), \
        RNG.standard_normal((512, 16)).astype(np.float32)
    ref = big[0].astype(np.float64) @ big[1]
    t = tf32_matmul(lambda: (on_device(big[0]) @ on_device(big[1])).numpy())
    f = (on_device(big[0]) @ on_device(big[1])).numpy()
    assert np.max(np.abs(t - ref)) > 30 * np.max(np.abs(f - ref))  # TF32's 2^-11 vs 2^-24
