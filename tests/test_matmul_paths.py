"""The paths of the CPU matmul that tests/test_ndarray_matmul.py's sizes do
not reach: skinny products (m = 1..64 with K and N in the thousands, the rows
or the columns of B read in place), the power-of-two row strides for which A
runs shorter tiles, transposed operands at those sizes, and the block sizes the
driver derives from the cache sizes the CPU reports (`_C.matmul_config()`).

Reference: float64 NumPy on the same inputs, with the rounding bound
(2 sqrt(n) + 2) * eps * (|A| @ |B|) of test_ndarray_matmul.py.
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import needle.backend_ndarray as nd
from needle import _C

from conftest import each_thread_count

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPS = {"float32": float(np.finfo(np.float32).eps), "float64": float(np.finfo(np.float64).eps)}


def check(c, x, y, dtype):
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    ref = x64 @ y64
    got = c.numpy()
    assert got.shape == ref.shape and got.dtype == np.dtype(dtype)
    bound = (2 * np.sqrt(x.shape[-1]) + 2) * EPS[dtype] * (np.abs(x64) @ np.abs(y64))
    err = np.abs(got.astype(np.float64) - ref)
    assert np.all(err <= bound), f"max err {err.max()} vs bound {bound.max()}"


def operand(shape, dtype, kind):
    """(NDArray, NumPy values): 'rows' compact, 'cols' a transposed view of a
    compact array (columns contiguous), 'strided' every other column."""
    r, c = shape
    if kind == "rows":
        x = np.random.randn(r, c).astype(dtype)
        return nd.array(x, dtype=dtype), x
    if kind == "cols":
        x = np.random.randn(c, r).astype(dtype)
        return nd.array(x, dtype=dtype).permute((1, 0)), x.T
    x = np.random.randn(r, 2 * c).astype(dtype)
    return nd.array(x, dtype=dtype)[:, ::2], x[:, ::2]


SKINNY = [(m, k, n) for m in (1, 2, 3, 5, 8, 15, 16, 17, 31, 64)
          for k, n in ((1031, 517), (64, 1000), (9, 2053))]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind_b", ["rows", "cols", "strided"])
@pytest.mark.parametrize("kind_a", ["rows", "cols"])
@pytest.mark.parametrize("mkn", SKINNY, ids=[f"{m}x{k}x{n}" for m, k, n in SKINNY])
def test_skinny(mkn, kind_a, kind_b, dtype):
    m, k, n = mkn
    a, x = operand((m, k), dtype, kind_a)
    b, y = operand((k, n), dtype, kind_b)
    check(a @ b, x, y, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("m", [1, 8, 64])
def test_skinny_large_b(m, dtype):
    # K = N = 4096 as in the benchmark: several L2-sized column blocks
    x = np.random.randn(m, 4096).astype(dtype)
    y = np.random.randn(4096, 4096).astype(dtype)
    check(nd.array(x, dtype=dtype) @ nd.array(y, dtype=dtype), x, y, dtype)
    wt = nd.array(y.T.copy(), dtype=dtype).permute((1, 0))  # x @ W.T, read in place
    check(nd.array(x, dtype=dtype) @ wt, x, y, dtype)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("kind_b", ["rows", "cols"])
def test_skinny_thread_count_independent(threads, kind_b):
    a, x = operand((8, 700), "float32", "rows")
    b, y = operand((700, 3001), "float32", kind_b)
    same_bits_on_threads(a, b, threads)
    check(a @ b, x, y, "float32")



@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 8])
def test_few_rows_thread_count_independent(m, dtype):
    # m = 1: a row in registers, each thread's columns in strips (Note [One
    # row: which products] in cpu_matmul.c);
    # Note [Axpy and two threads] (cpu_matmul.c): on several threads, m >= 5
    # with a B short of memory takes the packed kernels' split, m = 3, 4 with
    # B in two L2s the axpy loops on one thread, m = 2 their column split;
    # on one thread the axpy loops (m <= 8 on AVX2), but AVX2 float32 from
    # m = 4 the filling kernels (Note [Few rows on the filling kernel]),
    # also on two: same bits
    for k, n in ((400, 400), (256, 1000), (1100, 700)):
        a, x = operand((m, k), dtype, "rows")
        b, y = operand((k, n), dtype, "rows")
        same_bits_on_threads(a, b, 2)
        check(a @ b, x, y, dtype)

def same_bits_on_threads(a, b, threads):
    """a @ b on `threads` threads has the bits of the one-thread product."""
    before = nd.get_num_threads()
    try:
        nd.set_num_threads(1)
        one = (a @ b).numpy()
        nd.set_num_threads(threads)
        many = (a @ b).numpy()
    finally:
        nd.set_num_threads(before)
    np.testing.assert_array_equal(one, many)


def test_skinny_batched_broadcast():
    x = np.random.randn(3, 1, 4, 300).astype(np.float32)
    y = np.random.randn(5, 300, 70).astype(np.float32)
    check(nd.array(x) @ nd.array(y), x, y, "float32")
    yt = np.random.randn(5, 70, 300).astype(np.float32)
    check(nd.array(x) @ nd.array(yt).permute((0, 2, 1)), x, yt.transpose(0, 2, 1), "float32")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind_a", ["rows", "cols"])
@pytest.mark.parametrize("mkn", [(300, 1024, 600), (100, 512, 40), (70, 2048, 513),
                                 (200, 1024, 64), (180, 2048, 300)], ids=str)
def test_power_of_two_strides(mkn, kind_a, dtype):
    # row strides that are multiples of 1 KiB: A read in place for p < 512 in
    # tiles of set_rows rows where MR rows exceed an L1 set's ways (Note [A
    # rows that alias]), packed from p = 512
    m, k, n = mkn
    a, x = operand((m, k), dtype, kind_a)
    b, y = operand((k, n), dtype, "rows")
    check(a @ b, x, y, dtype)


ALIAS = [(100, 1024, 16), (300, 512, 40), (50, 256, 64), (1000, 1024, 33), (20, 2048, 300)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mkn", ALIAS, ids=str)
def test_rows_that_alias_get_the_bits_of_padded_rows(mkn, dtype):
    # Note [A rows that alias]: A read in place with rows a multiple of 1 KiB
    # apart runs tiles of set_rows rows where MR rows exceed L1d's ways; the
    # same values with rows a line further apart run MR-row tiles. Each C
    # element keeps its chain (Note [One chain per element]): the same bits.
    # x @ W.T takes the path through C.T = W @ x.T, with W as A.
    m, k, n = mkn
    x = np.random.randn(m, k).astype(dtype)
    y = np.random.randn(k, n).astype(dtype)
    pad = np.zeros((m, k + 64 // x.itemsize), dtype)
    pad[:, :k] = x
    b = nd.array(y, dtype=dtype)
    tight = nd.array(x, dtype=dtype) @ b
    loose = nd.array(pad, dtype=dtype)[:, :k] @ b
    np.testing.assert_array_equal(tight.numpy(), loose.numpy())
    check(tight, x, y, dtype)
    # x.T @ ... with W = x as the wide operand: W rows 1 KiB apart
    v = np.random.randn(n, k).astype(dtype)
    wt_tight = nd.array(x, dtype=dtype).permute((1, 0))
    wt_loose = nd.array(pad, dtype=dtype)[:, :k].permute((1, 0))
    xv = nd.array(v, dtype=dtype)
    np.testing.assert_array_equal((xv @ wt_tight).numpy(), (xv @ wt_loose).numpy())
    check(xv @ wt_tight, v, x.T, dtype)


def test_config_reports_the_chosen_blocks():
    cfg = _C.matmul_config()
    assert cfg["kernel"] == nd.matmul_kernel_name()
    assert cfg["cache_source"] in ("cpuid", "sysfs", "default", "env")
    for dt, size in (("float32", 4), ("float64", 8)):
        b = cfg[dt]
        assert b["mc"] % b["mr"] == 0 and b["nc"] % b["nr"] == 0
        # Note [Block sizes]: a packed B micro-panel fits half of L1d, or KC is
        # the 36 MR that amortise the C tile; an A block fits a third of L2
        kc_l1 = max(64, cfg["l1d"] // 2 // (b["nr"] * size) // 8 * 8)
        kc_tile = (36 * b["mr"] + 7) // 8 * 8
        assert b["kc"] == min(1024, max(kc_l1, kc_tile))
        assert b["mc"] * b["kc"] * size <= cfg["l2"] // 3 or b["mc"] == b["mr"]
        # the skinny paths' limits: the filling kernels from 4 rows (AVX2 float32
        # and AVX-512 float64: AVX-512 float32 takes the kernels from 3 rows
        # anyway), one row in registers on the SIMD kernels, B from memory past
        # half the last-level cache (Note [B from memory])
        simd = cfg["kernel"] != "generic"
        few_rows_fill = (cfg["kernel"], dt) in (("avx2", "float32"), ("avx512", "float64"))
        assert b["fill_m"] == (4 if few_rows_fill else 0)
        assert b["row_bytes"] == (4096 if simd else 0)
        assert b["fill_max_b"] == cfg["llc"] // 2
        # Note [A rows that alias]: MR, or the most rows of a kernel loop that
        # fit one L1d set
        loops = {"avx512": (4, 7, 8, 10, 14), "avx2": (3, 4, 6)}.get(cfg["kernel"])
        ways = cfg["l1d_ways"]
        if b["mr"] <= ways:
            assert b["set_rows"] == b["mr"]
        elif loops is None:
            assert b["set_rows"] == ways
        else:
            assert b["set_rows"] == max([r for r in loops if r <= ways] or [loops[0]])
        # Note [Packing A in the kernel]: the AVX-512 kernels on AMD's cores
        amd = cfg["vendor"] in ("AuthenticAMD", "HygonGenuine")
        assert b["pack_a"] == (cfg["kernel"] == "avx512" and amd)
    assert cfg["flush_denormals"] in (0, 1)


def sysfs_cache(level, kind):
    base = "/sys/devices/system/cpu/cpu0/cache"
    for idx in sorted(os.listdir(base)):
        d = os.path.join(base, idx)
        with open(os.path.join(d, "level")) as f:
            lv = int(f.read())
        with open(os.path.join(d, "type")) as f:
            ty = f.read().strip()
        if lv == level and ty == kind:
            with open(os.path.join(d, "size")) as f:
                s = f.read().strip()
            return int(s[:-1]) * 1024 if s.endswith("K") else int(s)
    return None


@pytest.mark.skipif(not os.path.isdir("/sys/devices/system/cpu/cpu0/cache"),
                    reason="no sysfs cache description on this machine")
def test_cache_sizes_match_the_kernel():
    # cpuid and the kernel's sysfs description of the same caches agree
    cfg = _C.matmul_config()
    if cfg["cache_source"] == "env":
        pytest.skip("NEEDLE_CACHE_SIZES is set")
    assert cfg["l1d"] == sysfs_cache(1, "Data")
    assert cfg["l2"] == sysfs_cache(2, "Unified")


def run_child(code, **env):
    full = dict(os.environ, PYTHONPATH=ROOT, **env)
    res = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout.strip()


CONFIG_CHILD = (
    "import json, needle._C as C, needle.backend_ndarray as nd, numpy as np\n"
    "x = np.random.randn(130, 300).astype('float32'); y = np.random.randn(300, 200)"
    ".astype('float32')\n"
    "err = np.abs((nd.array(x) @ nd.array(y)).numpy() - x.astype('f8') @ y).max()\n"
    "assert err < 1e-3, err\n"
    "print(json.dumps(C.matmul_config()))"
)


@pytest.mark.parametrize("kernel", ["generic", "avx2", "avx512"])
def test_blocks_follow_the_reported_caches(kernel):
    # another machine's caches (Ice Lake: 48 KiB L1d, 1.25 MiB L2) give that
    # machine's blocks, for every kernel this CPU can run
    import json

    out = json.loads(run_child(CONFIG_CHILD, NEEDLE_MATMUL_KERNEL=kernel,
                               NEEDLE_CACHE_SIZES="48K,1280K,2M"))
    if out["kernel"] != kernel:
        pytest.skip(f"this CPU cannot run the {kernel} kernel")
    assert out["cache_source"] == "env" and out["l1d"] == 48 << 10
    nr, mr = {"generic": (8, 4), "avx2": (16, 6), "avx512": (32, 14)}[kernel]
    b = out["float32"]
    assert (b["nr"], b["mr"]) == (nr, mr)
    # Note [Block sizes]: half of L1d for the B micro-panel, at least 36 MR
    assert b["kc"] == max((48 << 10) // 2 // (nr * 4) // 8 * 8, (36 * mr + 7) // 8 * 8)
    assert b["kc"] == {"generic": 768, "avx2": 384, "avx512": 504}[kernel]
    assert b["mc"] == (1280 << 10) // 3 // (b["kc"] * 4) // b["mr"] * b["mr"]


def test_blocks_override():
    import json

    out = json.loads(run_child(CONFIG_CHILD, NEEDLE_MATMUL_BLOCKS="100,128,1000"))
    b = out["float32"]
    assert b["kc"] == 128 and b["mc"] % b["mr"] == 0 and 100 <= b["mc"] < 100 + b["mr"]
    assert b["nc"] % b["nr"] == 0 and 1000 <= b["nc"] < 1000 + b["nr"]


def test_best_kernel_is_what_the_os_allows():
    # /proc/cpuinfo lists avx512f only when the kernel enabled its state in XCR0
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    # (with AVX-512, the faster of it and AVX2: Note [Timing the kernels])
    want = ({"avx512", "avx2"} if " avx512f" in flags else
            {"avx2"} if " avx2" in flags and " fma" in flags else {"generic"})
    env = {k: v for k, v in os.environ.items()
           if k not in ("NEEDLE_MATMUL_KERNEL", "NEEDLE_MATMUL_TIME")}
    res = subprocess.run([sys.executable, "-c", "import needle.backend_ndarray as nd;"
                          "print(nd.matmul_kernel_name())"],
                         env=dict(env, PYTHONPATH=ROOT), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() in want


TIMED_CHILD = """
import numpy as np
import needle.backend_ndarray as nd
x = np.random.randn(300, 200).astype(np.float32)
y = np.random.randn(200, 100).astype(np.float32)
got = (nd.array(x) @ nd.array(y)).numpy()
assert np.allclose(got, x.astype(np.float64) @ y, rtol=1e-4, atol=1e-4)
print(nd.matmul_kernel_name())
"""


@pytest.mark.parametrize("forced", ["", "generic"])
def test_timed_kernel_choice(forced):
    # Note [Timing the kernels]: NEEDLE_MATMUL_TIME=1 times the two widest
    # kernels on any CPU (the choice is one of them; which one is a matter
    # of speed, not asserted here); NEEDLE_MATMUL_KERNEL still forces one
    env = {k: v for k, v in os.environ.items() if k != "NEEDLE_MATMUL_KERNEL"}
    env.update(PYTHONPATH=ROOT, NEEDLE_MATMUL_TIME="1")
    if forced:
        env["NEEDLE_MATMUL_KERNEL"] = forced
    res = subprocess.run([sys.executable, "-c", TIMED_CHILD], env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    simd = [k for k, has in (("avx512", " avx512f" in flags),
                             ("avx2", " avx2" in flags and " fma" in flags)) if has]
    allowed = {forced} if forced else set((simd + ["generic"])[:2])
    assert res.stdout.strip() in allowed


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("k", [5, 300, 1000, 1024], ids=lambda k: f"k{k}")
def test_a_row_gets_the_same_bits_whatever_the_batch(k, dtype):
    # Note [One chain per element] (cpu_matmul.h): B read by rows, the skinny
    # path (m <= small_m: 8, 2 for AVX-512 float32) and the packed one (KC blocks)
    # sum alike, so the first rows of a product do not depend on how many rows
    # follow them; 13..17, 19 and 31 rows end in the cut last tiles of Note
    # [Balanced last tiles] (AVX2: 13, 14, 19, 31; AVX-512: 15..17, 31), read in place
    # or, with rows a multiple of 1 KiB apart (k = 1024), packed
    x = np.random.randn(70, k).astype(dtype)
    y = np.random.randn(k, 90).astype(dtype)
    b = nd.array(y, dtype=dtype)
    full = (nd.array(x, dtype=dtype) @ b).numpy()
    np.testing.assert_allclose(full, x.astype(np.float64) @ y, rtol=1e-4, atol=1e-4)
    # m = 4..8: the axpy loops, or the filling kernels where Note [Few rows
    # on the filling kernel] takes them (AVX2 float32, AVX-512 float64); up
    # to MR rows on the filling kernels, A packed in a panel of the rows of
    # the loop m runs (Note [One narrow A panel] in cpu_matmul.c), from A's
    # rows, its columns (A.T @ B) or every other column (element by element)
    xt = nd.array(x.T.copy(), dtype=dtype).permute((1, 0))
    spread = np.zeros((70, 2 * k), dtype=dtype)
    spread[:, ::2] = x
    xs = nd.array(spread, dtype=dtype)[:, ::2]
    for m in (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 31, 40):
        part = (nd.array(x[:m], dtype=dtype) @ b).numpy()
        assert np.array_equal(part, full[:m]), f"rows of a {m}-row product differ"
        assert np.array_equal((xt[:m] @ b).numpy(), full[:m]), f"{m} rows of A.T differ"
        assert np.array_equal((xs[:m] @ b).numpy(), full[:m]), f"{m} strided rows differ"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind_b", ["rows", "cols"])
@pytest.mark.parametrize("k", [5, 300, 1000], ids=lambda k: f"k{k}")
def test_narrow_tiles_get_the_bits_of_wide_ones(k, kind_b, dtype):
    # Note [Narrow tiles] and Note [Narrow tiles in half registers]
    # (cpu_matmul_simd_impl.h): a last tile of at most a vector's columns runs
    # one vector a row, and on AVX-512 one of half the width up to NR / 4
    # columns; the first p columns of a product are the product with the
    # first p columns of B, bit for bit, for p around both limits, with
    # several row tiles (the 14-, 10-, 8- and 4-row loops on AVX-512) and B
    # by rows (in place, or packed by the filling kernel) or by columns
    # (p = 1, a matrix-vector product, has its own chains: Note [One chain per
    # element])
    nr = _C.matmul_config()[dtype]["nr"]
    widths = sorted({w for w in (2, 3, nr // 4 - 1, nr // 4, nr // 4 + 1, nr // 2, nr // 2 + 1,
                                 nr + 4) if w > 1})
    for m in (18, 30, 36):
        x = np.random.randn(m, k).astype(dtype)
        b, y = operand((k, 3 * nr), dtype, kind_b)
        full = (nd.array(x, dtype=dtype) @ b).numpy()
        check(nd.array(x, dtype=dtype) @ b, x, y, dtype)
        for p in widths:
            bp = nd.array(np.ascontiguousarray(y[:, :p]), dtype=dtype)
            if kind_b == "cols":
                bp = nd.array(np.ascontiguousarray(y[:, :p].T), dtype=dtype).permute((1, 0))
            part = (nd.array(x, dtype=dtype) @ bp).numpy()
            assert np.array_equal(part, full[:, :p]), f"the first {p} columns differ (m = {m})"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("k", [5, 600], ids=lambda k: f"k{k}")
def test_tiles_down_the_rows_get_the_bits_of_rows(k, dtype):
    # Note [Narrow tiles down the rows] (cpu_matmul_simd_impl.h): with A
    # packed (p > 4 NR) a last panel of few columns runs down the rows on
    # AVX-512 (a vector of A's rows a k step, an FMA per column; float64's 14
    # rows two vectors); its columns are, bit for bit, those of the product
    # whose last panel is whole (run by rows), for every width under NR, with
    # tiles of each loop's rows (m = 4..14: one tile, B read in place; 17,
    # 30, 44: the first tile fills the panel, the others read it), over one
    # KC block or several (k = 600: C added to after the first); A by rows or
    # by columns (A.T @ B), and products of 2 to NR - 1 columns, where A by
    # columns is read in place and runs down the rows too (ars = 1; p = 1 is
    # a matrix-vector product, with chains of its own). AVX2
    # runs every tile by rows: the same check.
    nr = _C.matmul_config()[dtype]["nr"]
    y = np.random.randn(k, 5 * nr).astype(dtype)
    for kind_a in ("rows", "cols"):
        for m in (4, 7, 8, 9, 10, 14, 17, 30, 44):
            a, x = operand((m, k), dtype, kind_a)
            full = (a @ nd.array(y, dtype=dtype)).numpy()
            check(a @ nd.array(y, dtype=dtype), x, y, dtype)
            for p in [4 * nr + w for w in range(1, nr)] + list(range(2, nr)):
                part = (a @ nd.array(np.ascontiguousarray(y[:, :p]), dtype=dtype)).numpy()
                assert np.array_equal(part, full[:, :p]), f"{m} x {p} ({kind_a}) differs"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("k", [5, 600], ids=lambda k: f"k{k}")
def test_one_row_in_registers_gets_the_bits_of_the_packed_kernels(k, dtype):
    # Note [One row in registers] (cpu_matmul_row_impl.h): x @ W with one row
    # and W by rows in cache, strips of up to 12 vectors and a masked one
    # (AVX2: 8 float32, 4 float64 lanes; AVX-512 twice), cut as evenly as
    # they go, over KC blocks (k = 600: several); widths around the strip
    # limits and up to the 4 KiB a task may have (4 KiB contiguous rows go to
    # the axpy loops: below), the row of A contiguous or
    # a column of a matrix (strided); the 70-row product is packed (but for
    # p = 1, a matrix-vector product: Note [One chain per element])
    lanes = _C.matmul_config()[dtype]["nr"] // 2  # the tile is two vectors wide
    widths = sorted({2, 3, lanes - 1, lanes, lanes + 1, 12 * lanes, 12 * lanes + 1,
                     13 * lanes - 1, 13 * lanes, 13 * lanes + 3, 25 * lanes + 1, 100, 300,
                     4096 // np.dtype(dtype).itemsize, 4096 // np.dtype(dtype).itemsize + 1})
    x = np.random.randn(70, k).astype(dtype)
    y = np.random.randn(k, max(widths)).astype(dtype)
    for p in widths:
        b = nd.array(y[:, :p], dtype=dtype)
        full = (nd.array(x, dtype=dtype) @ b).numpy()
        check(nd.array(x[:1], dtype=dtype) @ b, x[:1], y[:, :p], dtype)
        row = (nd.array(x[:1], dtype=dtype) @ b).numpy()
        col = (nd.array(x.T.copy(), dtype=dtype).permute((1, 0))[:1] @ b).numpy()
        assert np.array_equal(row, full[:1]), f"one row differs at p = {p}"
        assert np.array_equal(col, full[:1]), f"a strided row differs at p = {p}"
    # rows a multiple of 4 KiB apart (Note [One row: rows a page apart] in
    # cpu_matmul.c): windows of up to half such a row keep the strips (here
    # the widest a task may have), wider ones run the axpy loops; the same
    # bits either way
    page = 4096 // np.dtype(dtype).itemsize
    wide = nd.array(np.random.randn(k, 2 * page).astype(dtype), dtype=dtype)
    for p in (100, page, page + 8, 2 * page):
        b = wide[:, :p]
        full = (nd.array(x, dtype=dtype) @ b).numpy()
        check(nd.array(x[:1], dtype=dtype) @ b, x[:1], b.numpy(), dtype)
        row = (nd.array(x[:1], dtype=dtype) @ b).numpy()
        assert np.array_equal(row, full[:1]), f"one row of a page-strided W differs at p = {p}"
    # a batch of single rows (each product its own strips)
    xs = np.random.randn(3, 1, k).astype(dtype)
    ys = np.random.randn(3, k, 100).astype(dtype)
    got = (nd.array(xs, dtype=dtype) @ nd.array(ys, dtype=dtype)).numpy()
    for i in range(3):
        one = (nd.array(xs[i], dtype=dtype) @ nd.array(ys[i], dtype=dtype)).numpy()
        assert np.array_equal(got[i], one), f"batch item {i} differs"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("m", [2, 8])
def test_axpy_rows_near_b_get_the_same_bits(m, dtype):
    # Note [Axpy rows away from B's] (cpu_matmul.h): with C's rows near B's
    # modulo 4 KiB the axpy loops sum in scratch half a page away, then copy
    # the first KC block's chains and add the others' (k = 600: three blocks):
    # B placed at every 256 bytes of a page, rows 4 KiB apart, gives both
    # cases; every result has the bits of the first and NumPy's values
    es = np.dtype(dtype).itemsize
    k, p = 600, 4096 // es
    x = np.random.randn(m, k).astype(dtype)
    y = np.random.randn(k, p).astype(dtype)
    a = nd.array(x, dtype=dtype)
    first = None
    for off in range(0, 4096 // es, 256 // es):
        buf = np.zeros(k * p + 4096 // es, dtype=dtype)
        buf[off:off + k * p] = y.ravel()
        big = nd.array(buf, dtype=dtype)
        b = nd.NDArray.make((k, p), strides=(p, 1), device=big.device, handle=big._handle,
                            offset=off)
        got = (a @ b).numpy()
        if first is None:
            first = got
            check(a @ b, x, y, dtype)
        assert np.array_equal(got, first), f"B at byte {off * es} of a page differs"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind_b", ["rows", "cols"])
def test_rows_get_the_same_bits_across_the_block_paths(kind_b, dtype):
    # Note [Narrow B blocks for few rows] (cpu_matmul.c): products whose rows
    # fit one A block (m <= MC) visit B's blocks in another order and width
    # than those with more rows; both sum each element in KC blocks alike, so
    # the first rows of a 200-row product (over MC for both dtypes on every
    # kernel) are those of a 2-, 9- or 64-row one, for B by rows and B = W.T;
    # K = 600 spans three KC blocks, N = 700 several narrow B blocks
    mc = _C.matmul_config()[dtype]["mc"]
    m_full = max(200, mc + 1)
    x = np.random.randn(m_full, 600).astype(dtype)
    b, y = operand((600, 700), dtype, kind_b)
    full = (nd.array(x, dtype=dtype) @ b).numpy()
    check(nd.array(x, dtype=dtype) @ b, x, y, dtype)
    for m in (2, 9, 17, 64, mc):
        part = (nd.array(x[:m], dtype=dtype) @ b).numpy()
        assert np.array_equal(part, full[:m]), f"rows of a {m}-row product differ ({kind_b})"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind_b", ["rows", "cols"])
@pytest.mark.parametrize("k", [100, 37])
def test_short_rows_take_taller_a_blocks_with_the_same_bits(k, kind_b, dtype):
    # Note [A blocks of short rows] (cpu_matmul.c): with K < KC an A block has
    # MC KC / K rows (MR multiples, at most 2048), so products of MC + 1 to
    # that many rows run as one block (gemm_block_few, A packed once) and
    # taller ones in blocks that tall (gemm_block); an element's sum is the
    # same whatever the block, so every row is that of a 9-row product and
    # of the MC rows product, on 1 and 2 threads
    cfg = _C.matmul_config()[dtype]
    mc, kc, mr = cfg["mc"], cfg["kc"], cfg["mr"]
    tall = min(mc * kc // k // mr * mr, 2048 // mr * mr)
    assert tall > mc, (mc, kc, k)
    x = np.random.randn(tall + 2 * mr + 3, k).astype(dtype)
    b, y = operand((k, 130), dtype, kind_b)
    first = (nd.array(x[:9], dtype=dtype) @ b).numpy()
    block = (nd.array(x[:mc], dtype=dtype) @ b).numpy()
    for threads in each_thread_count():
        for m in (mc + 1, mc + mr + 2, tall, tall + 2 * mr + 3):
            c = nd.array(x[:m], dtype=dtype) @ b
            check(c, x[:m], y, dtype)
            got = c.numpy()
            where = f"m={m} threads={threads} ({kind_b})"
            assert np.array_equal(got[:9], first), f"{where}: rows of a 9-row product differ"
            assert np.array_equal(got[:mc], block), f"{where}: rows of the MC-row product differ"


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("m", [5, 40])
def test_packed_skinny_thread_count_independent(m, threads):
    # m = 5 with B = W.T and m = 40 (the few-row blocks) split by columns
    a, x = operand((m, 900), "float64", "rows")
    b, y = operand((900, 1500), "float64", "cols")
    same_bits_on_threads(a, b, threads)
    check(a @ b, x, y, "float64")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("k", [7, 1031])
def test_matrix_vector_columns_get_the_same_bits_alone(k, dtype):
    # the dot loops (m = 1, B = W.T) take four columns per pass and the last
    # n % 4 one at a time; each column's sum is the same either way
    x = np.random.randn(1, k).astype(dtype)
    w = np.random.randn(11, k).astype(dtype)
    a, wt = nd.array(x, dtype=dtype), nd.array(w, dtype=dtype).permute((1, 0))
    full = (a @ wt).numpy()
    check(a @ wt, x, w.T, dtype)
    for j in range(11):
        np.testing.assert_array_equal((a @ wt[:, j:j + 1]).numpy(), full[:, j:j + 1])
    # and p = 1: A @ v is computed as v^T @ A^T, four rows of A per pass
    v = np.random.randn(k, 1).astype(dtype)
    check(nd.array(w, dtype=dtype) @ nd.array(v, dtype=dtype), w, v, dtype)


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch", [1, 3])
def test_balance_tiles_thread_count_independent(batch, dtype, threads):
    # Note [Matmul work split]: products this large are cut into several
    # tiles per thread, taken from a counter in any order; the bits are
    # those of one thread
    x = np.random.randn(batch, 700, 600).astype(dtype)
    y = np.random.randn(600, 900).astype(dtype)
    a, b = nd.array(x, dtype=dtype), nd.array(y, dtype=dtype)
    same_bits_on_threads(a, b, threads)
    check(a @ b, x, y, dtype)


@pytest.mark.parametrize("threads", [2, 3, 4])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_square_tiles_thread_count_independent(dtype, threads):
    # Note [Balanced grids] (cpu_matmul.c): a square product's tiles cut by
    # rows or by columns, whichever balances, the bits of one thread
    for n in (100, 150, 300):
        a, x = operand((n, n), dtype, "rows")
        b, y = operand((n, n), dtype, "rows")
        same_bits_on_threads(a, b, threads)
        check(a @ b, x, y, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("k", [7, 300, 600], ids=lambda k: f"k{k}")
def test_w_transposed_in_registers_gets_the_bits_of_the_packed_kernels(k, dtype):
    # Note [Transposing W in registers] (cpu_matmul_bt_avx2.c): m <= 4 with
    # B = W.T transposes 8 rows of W at a time in registers (once for up to
    # 4 rows of A), the last n % 8 columns in narrower groups or one by one,
    # the k past the last whole cache line element by element; the AVX-512
    # configuration's (Note [Transposing W in zmm registers]) 16 (float32) or
    # 8 rows of W for up to 8 rows of A, the last columns by the former;
    # every element is still the one chain per KC block of the packed
    # kernels, so its rows are those of a 70-row product (packed), whatever
    # the width; A by rows, by columns or strided
    # (m = 1 with A's row contiguous takes the dot loops instead, which do
    # not share the chains: test_matrix_vector_columns_get_the_same_bits_alone)
    w = np.random.randn(37, k).astype(dtype)
    wt = nd.array(w, dtype=dtype).permute((1, 0))
    swap_m = _C.matmul_config()[dtype]["swap_m"]
    bt_m = swap_m - 1 if swap_m else 4  # the register transposes' last m
    for kind_a in ("rows", "cols", "strided"):
        a, x = operand((70, k), dtype, kind_a)
        full = (a @ wt).numpy()
        check(a @ wt, x, w.T, dtype)
        for m in range(1 if kind_a != "rows" else 2, bt_m + 1):
            for n in (37, 33, 17, 16, 8, 3):
                part = (a[:m, :] @ wt[:, :n]).numpy()
                assert np.array_equal(part, full[:m, :n]), f"m={m} n={n} ({kind_a})"


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("m", [2, 3, 7])
def test_w_transposed_in_registers_thread_count_independent(m, threads):
    a, x = operand((m, 1500), "float32", "rows")
    b, y = operand((1500, 1001), "float32", "cols")
    same_bits_on_threads(a, b, threads)
    check(a @ b, x, y, "float32")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind_b", ["rows", "cols"])
@pytest.mark.parametrize("m", [4, 8, 9, 10, 11, 15, 16, 21, 22, 24, 27, 64, 200])
def test_packed_and_in_place_a_get_the_same_bits(m, kind_b, dtype):
    # Note [Packed A kernel] (cpu_matmul_simd_impl.h): A packed is read by
    # other kernels (k unrolled by 4, a remainder loop) than A read in place;
    # Note [Packing A by transposes] (cpu_matmul.c): A's rows are packed in
    # registers, A's columns as the panels of a row-major B (pack_b, rows of
    # A.T in batches). All give the same bits, for k around the unrolled
    # steps, the batches and the KC blocks, and every partial tile of Note
    # [Half tiles] (AVX2, 6 rows: m = 9 ends in the half-row loop, 4 and 10
    # in the mid-row one, 11 in the full one; AVX-512, 14 rows: 21, 24, 27,
    # and 8, 22 and 64 in the 8-row loop; 15 and 16 cut 8 + 7 and 8 + 8 by
    # Note [Balanced last tiles]);
    # m = 4 with B by rows takes the axpy loops on AVX2 float64 and the
    # filling kernels on AVX2 float32 (Note [Few rows on the filling
    # kernel]), by columns the kernels; m = 200: more than one MC block of
    # A). With B by rows and at most MC rows the driver packs even the "in
    # place" A, for the kernels that pack B (Note [Packing B in the
    # kernel]): there all three agree.
    kc = _C.matmul_config()[dtype]["kc"]
    size = np.dtype(dtype).itemsize
    for k in (1, 3, 4, 5, 7, 9, 13, kc + 5, 2 * kc + 3):
        x = np.random.randn(m, k).astype(dtype)
        b, y = operand((k, 100), dtype, kind_b)
        # rows contiguous, byte stride not a multiple of 1 KiB: read in place
        # (p = 100 < 512); a multiple of 1 KiB: packed where the tile's rows
        # exceed an L1 set's ways (AVX-512; Note [Reading A in place])
        width = -(-k // (1024 // size)) * (1024 // size)
        if k * size % 1024 == 0:
            continue
        wide = np.zeros((m, width), dtype=dtype)
        wide[:, :k] = x
        in_place = (nd.array(x, dtype=dtype) @ b).numpy()
        check(nd.array(x, dtype=dtype) @ b, x, y, dtype)
        packed_rows = (nd.array(wide, dtype=dtype)[:, :k] @ b).numpy()
        packed_cols = (nd.array(x.T.copy(), dtype=dtype).permute((1, 0)) @ b).numpy()
        assert np.array_equal(packed_rows, in_place), f"k={k}: A's rows packed"
        assert np.array_equal(packed_cols, in_place), f"k={k}: A's columns packed"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("p", [33, 100, 300, 700])
@pytest.mark.parametrize("m", [15, 29, 50, 100, 168])
def test_a_packed_in_the_kernel_gets_the_bits_of_packing_ahead(m, p, dtype):
    # Note [Packing A in the kernel] (cpu_matmul_simd_impl.h): on AVX-512,
    # with A's rows contiguous (not a multiple of 1 KiB apart) and B by rows,
    # the tiles of the first panel of B read A in place and store its packed
    # panels, which the other panels' tiles read. A by columns (packed ahead
    # by pack_b) and A's rows 1 KiB apart (packed ahead by the transposes)
    # give the bits of that product: every split of the rows (15 = 8 + 7,
    # 29 = 14 + 8 + 7, 100 = 6 x 14 + 8 + 8, 168 = MC), the first panel
    # whole and the last one narrow (33, 100: down the rows) or whole, more
    # than one block of columns (300, 700 > NC1 on AVX-512), k in one KC
    # block or three, 1 and 2 threads (a tile of rows each: their own
    # first panels). Elsewhere (AVX2, generic) the three take the paths they
    # took before (and so do Intel's AVX-512 cores), with the same bits.
    kc = _C.matmul_config()[dtype]["kc"]
    step = 1024 // np.dtype(dtype).itemsize
    for k in (1, 5, 37, 100, 2 * kc + 3):
        if k % step == 0:
            continue
        x = np.random.randn(m, k).astype(dtype)
        y = np.random.randn(k, p).astype(dtype)
        wide = np.zeros((m, -(-k // step) * step), dtype=dtype)
        wide[:, :k] = x
        b = nd.array(y, dtype=dtype)
        for threads in each_thread_count():
            fused = nd.array(x, dtype=dtype) @ b
            check(fused, x, y, dtype)
            by_cols = (nd.array(x.T.copy(), dtype=dtype).permute((1, 0)) @ b).numpy()
            by_rows = (nd.array(wide, dtype=dtype)[:, :k] @ b).numpy()
            where = f"k={k} threads={threads}"
            assert np.array_equal(fused.numpy(), by_cols), f"{where}: A by columns"
            assert np.array_equal(fused.numpy(), by_rows), f"{where}: A's rows 1 KiB apart"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind_b", ["slice", "broadcast"])
@pytest.mark.parametrize("m", [9, 17, 40, 200])
def test_b_packed_in_the_kernel_gets_the_bits_of_pack_b(m, kind_b, dtype):
    # Note [Packing B in the kernel] (cpu_matmul_simd_impl.h): with B's rows
    # contiguous and A packed (the driver packs it for tiles of at most MC
    # rows), the first tile of each full panel reads B where it lies and
    # stores the packed panel for the others (or, the panel's only tile,
    # stores nothing); B with every other column (pack_b's element copies)
    # holds the same values. The bits agree, for B's rows a slice of wider
    # ones (a row stride that is no multiple of 64 bytes) or one row
    # broadcast (row stride 0), a narrower last panel (p = 333), one to three
    # KC blocks, one row tile or several (m = 200: more than MC rows on
    # AVX-512 with 2 MiB of L2, where only the first A block fills), A's
    # rows or columns contiguous
    kc = _C.matmul_config()[dtype]["kc"]
    p = 333
    for k in (1, 5, 13, kc + 5, 2 * kc + 3):
        x = np.random.randn(m, k).astype(dtype)
        if kind_b == "slice":
            wide = np.random.randn(k, p + 7).astype(dtype)
            b, y = nd.array(wide, dtype=dtype)[:, 3:3 + p], wide[:, 3:3 + p]
        else:
            row = np.random.randn(1, p).astype(dtype)
            b, y = nd.array(row, dtype=dtype).broadcast_to((k, p)), np.broadcast_to(row, (k, p))
        spread = np.zeros((k, 2 * p), dtype=dtype)
        spread[:, ::2] = y
        reference = (nd.array(x, dtype=dtype) @ nd.array(spread, dtype=dtype)[:, ::2]).numpy()
        for a in (nd.array(x, dtype=dtype), nd.array(x.T.copy(), dtype=dtype).permute((1, 0))):
            got = a @ b
            check(got, x, y, dtype)
            assert np.array_equal(got.numpy(), reference), f"k={k}"



@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("m", [2, 3, 9, 40, 200])
def test_b_with_broadcast_columns(m, dtype):
    # Note [Broadcast B rows] (cpu_matmul.c): a B whose columns are 0 apart
    # (one value per row, or one value in all) is packed by repeating each
    # row's value; the same bits as B materialised, and NumPy's values, for
    # a narrower last panel (p = 333) and one to three KC blocks (m >= 2:
    # a matrix-vector product's dot loops keep no bits, Note [One chain per
    # element] in cpu_matmul.h)
    kc = _C.matmul_config()[dtype]["kc"]
    p = 333
    for k in (1, 5, kc + 5, 2 * kc + 3):
        x = np.random.randn(m, k).astype(dtype)
        col = np.random.randn(k, 1).astype(dtype)
        one = np.random.randn(1, 1).astype(dtype)
        for b, y in ((nd.array(col, dtype=dtype).broadcast_to((k, p)), np.broadcast_to(col, (k, p))),
                     (nd.array(one, dtype=dtype).broadcast_to((k, p)), np.broadcast_to(one, (k, p)))):
            reference = (nd.array(x, dtype=dtype) @ nd.array(np.ascontiguousarray(y), dtype=dtype)).numpy()
            got = nd.array(x, dtype=dtype) @ b
            check(got, x, y, dtype)
            assert np.array_equal(got.numpy(), reference), f"k={k}"


B_FROM_MEMORY_CHILD = (
    "import sys, numpy as np, needle.backend_ndarray as nd\n"
    "d = sys.argv[1]; z = np.load(d + '/in.npz')\n"
    "for name in ('f4', 'f8'):\n"
    "    x, wide = z['x' + name], z['w' + name]\n"
    "    dt = str(x.dtype)\n"
    "    b = nd.array(wide, dtype=dt)[:, 3:-4]\n"
    "    for m in (12, 13, 40, 200):\n"
    "        np.save(f'{d}/{name}_{m}.npy', (nd.array(x[:m], dtype=dt) @ b).numpy())\n"
)


@pytest.mark.parametrize("threads", [1, 2])
def test_b_from_memory_gets_the_bits_of_the_filling_kernel(threads, tmp_path):
    # Note [B from memory] (cpu_matmul.c): a B larger than half the
    # last-level cache is copied ahead by pack_b for tiles of two row panels
    # or more; here a child told of a 256 KiB L3 (the same L1d and L2, so
    # the same KC) takes that path for a 600 x 333 B that this process,
    # with the CPU's own L3, packs in the kernel. Same bits, a narrower last
    # panel, three KC blocks, m = 12, 13 (the axpy loops there: Note [Few
    # rows of B from memory]), 40 (few rows) and 200 (more than MC rows with
    # 2 MiB of L2), B's rows a slice of wider ones.
    cfg = _C.matmul_config()
    if cfg["cache_source"] == "env":
        pytest.skip("NEEDLE_CACHE_SIZES is set")
    if cfg["llc"] < (8 << 20):
        pytest.skip("this CPU's last-level cache is too small for the filling path")
    k = 2 * cfg["float32"]["kc"] + 88
    inputs = {}
    for name, dtype in (("f4", "float32"), ("f8", "float64")):
        inputs["x" + name] = np.random.randn(200, k).astype(dtype)
        inputs["w" + name] = np.random.randn(k, 340).astype(dtype)
    np.savez(tmp_path / "in.npz", **inputs)
    caches = f"{cfg['l1d']},{cfg['l2']},{256 << 10}"
    res = subprocess.run([sys.executable, "-c", B_FROM_MEMORY_CHILD, str(tmp_path)],
                         env=dict(os.environ, PYTHONPATH=ROOT, NEEDLE_CACHE_SIZES=caches,
                                  NEEDLE_NUM_THREADS=str(threads)),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    for name, dtype in (("f4", "float32"), ("f8", "float64")):
        x, wide = inputs["x" + name], inputs["w" + name]
        y = wide[:, 3:-4]
        b = nd.array(wide, dtype=dtype)[:, 3:-4]
        for m in (12, 13, 40, 200):
            got = nd.array(x[:m], dtype=dtype) @ b
            check(got, x[:m], y, dtype)
            child = np.load(tmp_path / f"{name}_{m}.npy")
            assert np.array_equal(child, got.numpy()), f"{dtype} m={m}"

def swap_rows(dtype):
    """The row counts around the limits of Note [x @ W.T by W @ x.T]
    (cpu_matmul.c) for dtype's kernels, or None when they never swap."""
    c = _C.matmul_config()[dtype]
    nr, swap_m = c["nr"], c["swap_m"]
    if swap_m == 0:
        return None
    return sorted({swap_m - 1, swap_m, nr, nr + 1, 2 * nr, 2 * nr + 1, 4 * nr} - {0, 1, 2})


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("k", [256, 300, 600, 1000, 1024], ids=lambda k: f"k{k}")
def test_swapped_w_transposed_gets_the_bits_of_the_packed_path(k, dtype):
    # Note [x @ W.T by W @ x.T] (cpu_matmul.c): with B = W.T and from
    # swap_m rows (up to 2 NR, or 4 NR when W's rows can be read in place:
    # Note [Reading A in place]; K >= 512, or 256 up to NR rows) the driver computes C.T = W @
    # x.T into scratch and copies it into C transposed; a multiplication
    # commutes, so every element keeps its chains and the rows are those of
    # a product too tall to swap (4 NR + 7 rows), on both sides of each limit
    rows = swap_rows(dtype)
    if rows is None:
        pytest.skip("the generic kernels do not swap")
    w = np.random.randn(301, k).astype(dtype)
    wt = nd.array(w, dtype=dtype).permute((1, 0))
    x = np.random.randn(4 * _C.matmul_config()[dtype]["nr"] + 7, k).astype(dtype)
    full = (nd.array(x, dtype=dtype) @ wt).numpy()
    check(nd.array(x, dtype=dtype) @ wt, x, w.T, dtype)
    for m in rows:
        part = nd.array(x[:m], dtype=dtype) @ wt
        check(part, x[:m], w.T, dtype)
        assert np.array_equal(part.numpy(), full[:m]), f"rows of a {m}-row product differ"


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_swapped_w_transposed_batched(dtype, threads):
    # a batch of swapped products whose C.T outgrow one chunk of scratch
    # (NDL_SWAP_CHUNK, 1 MiB: 96-192 KiB a product here), each W its own
    # or one W broadcast; every product has the bits of itself alone
    rows = swap_rows(dtype)
    if rows is None:
        pytest.skip("the generic kernels do not swap")
    m = max(rows[1], 16)
    x = np.random.randn(13, m, 600).astype(dtype)
    w = np.random.randn(13, 1500, 600).astype(dtype)
    before = nd.get_num_threads()
    try:
        nd.set_num_threads(threads)
        a = nd.array(x, dtype=dtype)
        for shared in (False, True):
            ws = [w[0]] * 13 if shared else list(w)
            wt = (nd.array(w[0], dtype=dtype).permute((1, 0)) if shared else
                  nd.array(w, dtype=dtype).permute((0, 2, 1)))
            got = a @ wt
            check(got, x, np.stack(ws).transpose(0, 2, 1), dtype)
            for i in (0, 7, 12):
                alone = nd.array(x[i], dtype=dtype) @ nd.array(ws[i], dtype=dtype).permute((1, 0))
                assert np.array_equal(got.numpy()[i], alone.numpy()), f"product {i} differs"
    finally:
        nd.set_num_threads(before)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_swapped_w_transposed_wide_c(dtype):
    # one product whose C.T outgrows NDL_SWAP_CHUNK (1 MiB): W's 8200 rows
    # go through scratch in chunks of 1 MiB / (m * itemsize) (4096 or 8192
    # here), the last one narrower; the rows are those of an unswapped product
    rows = swap_rows(dtype)
    if rows is None:
        pytest.skip("the generic kernels do not swap")
    w = np.random.randn(8200, 600).astype(dtype)
    wt = nd.array(w, dtype=dtype).permute((1, 0))
    x = np.random.randn(4 * _C.matmul_config()[dtype]["nr"] + 7, 600).astype(dtype)
    full = (nd.array(x, dtype=dtype) @ wt).numpy()
    part = nd.array(x[:32], dtype=dtype) @ wt
    check(part, x[:32], w.T, dtype)
    assert np.array_equal(part.numpy(), full[:32])
