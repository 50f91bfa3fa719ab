"""Every matmul micro-kernel this CPU can run (NEEDLE_MATMUL_KERNEL picks one at
import), against NumPy on edge-heavy shapes, in a child process each. In the
NDL_AVX512_EMU test build (Note [AVX-512 without AVX-512], avx512_emu.h; `make
avx512-emu`) that includes the AVX-512 kernels on a CPU without AVX-512, and
the tests at the end prove that their code is what runs."""
import ctypes
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import numpy as np, needle.backend_ndarray as nd
assert nd.matmul_kernel_name() == KERNEL, nd.matmul_kernel_name()
rng = np.random.default_rng(0)
for dt in ("float32", "float64"):
    tol = 1e-4 if dt == "float32" else 1e-10
    for m, n, p in [(1, 1, 1), (5, 7, 3), (13, 17, 31), (67, 65, 66), (130, 257, 129), (1, 300, 1)]:
        a = rng.standard_normal((m, n)).astype(dt)
        b = rng.standard_normal((n, p)).astype(dt)
        for A, B in [(a, b), (a, b[::-1])]:
            got = (nd.array(A, dtype=dt) @ nd.array(B, dtype=dt)).numpy()
            ref = A.astype(np.float64) @ B.astype(np.float64)
            np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.sqrt(n))
        at = nd.array(a.T.copy(), dtype=dt).permute((1, 0))  # transposed view, no copy
        np.testing.assert_allclose((at @ nd.array(b, dtype=dt)).numpy(), a.astype(np.float64) @ b,
                                   rtol=tol, atol=tol * np.sqrt(n))
    x = rng.standard_normal((3, 1, 20, 9)).astype(dt)
    y = rng.standard_normal((4, 9, 11)).astype(dt)
    np.testing.assert_allclose((nd.array(x, dtype=dt) @ nd.array(y, dtype=dt)).numpy(), x @ y,
                               rtol=tol, atol=tol * 3)
print("ok")
"""


def avx512_emulated():
    """The NDL_AVX512_EMU build: the only one exporting ndl_avx512_emu_counts."""
    from needle import _C

    try:
        ctypes.c_int64.in_dll(ctypes.CDLL(_C.__file__), "ndl_avx512_emu_counts")
    except ValueError:
        return False
    return True


def supported():
    out = ["generic"]
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    if " avx2" in flags and " fma" in flags:
        out.append("avx2")
        if avx512_emulated():  # AVX-512 kernels compiled as AVX2 code
            out.append("avx512")
    if " avx512f" in flags and "avx512" not in out:
        out.append("avx512")
    return out


@pytest.mark.parametrize("kernel", ["generic", "avx2", "avx512"])
def test_kernel_matches_numpy(kernel):
    if kernel not in supported():
        pytest.skip(f"this CPU cannot run the {kernel} kernel")
    env = dict(os.environ, NEEDLE_MATMUL_KERNEL=kernel, PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-c", f"KERNEL = {kernel!r}\n" + CHILD], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_pack_bt_pads_with_zeros(dtype):
    # cpu_matmul_pack_avx2.c, called through ctypes: panels of nr columns of
    # B = W.T (W's rows cs apart), transposed, the last narrower one padded
    # with zeros to nr (Note [Zeros by the vector]); dst starts as NaN, so a
    # lane left unwritten shows. nr = 14: an A panel of 3, 8 or 13 rows (a
    # group of zeros past them, the 6-lane edge); nr = 32: W.T's last panel
    # of 5 or 20 columns (a partial group with a full group of zeros after
    # it); nr = 6 and 16: the AVX2 tiles; kc with and without a tail
    if "avx2" not in supported():
        pytest.skip("the packing transposes need AVX2")
    from needle import _C

    fn = getattr(ctypes.CDLL(_C.__file__), "ndl_pack_bt_" + ("f32" if dtype == "float32" else "f64"))
    fn.argtypes = [ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_int,
                   ctypes.c_void_p]
    fn.restype = None
    rng = np.random.default_rng(0)
    for nr, nc, kc in [(14, 3, 37), (14, 8, 16), (14, 13, 9), (32, 20, 19), (32, 5, 8),
                       (32, 45, 24), (6, 4, 10), (16, 11, 9)]:
        cs = kc + 3
        w = rng.standard_normal((nc, cs)).astype(dtype)
        panels = -(-nc // nr)
        dst = np.full((panels, kc, nr), np.nan, dtype=dtype)
        fn(w.ctypes.data, cs, kc, nc, nr, dst.ctypes.data)
        want = np.zeros((panels * nr, kc), dtype=dtype)
        want[:nc] = w[:, :kc]
        want = want.reshape(panels, nr, kc).transpose(0, 2, 1)
        np.testing.assert_array_equal(dst, want, err_msg=f"nr={nr} nc={nc} kc={kc}")


# ---- the emulated AVX-512 kernels (Note [AVX-512 without AVX-512]) ---------
# A child with NEEDLE_MATMUL_KERNEL=avx512 runs each case (dtype, m, k, p, A's
# and B's layout), checks it against float64 NumPy within the rounding bound
# (2 sqrt(k) + 2) eps (|A| @ |B|), and prints what the AVX-512 entry points
# counted meanwhile (cpu_matmul_avx512.c): micro-kernel calls by tile rows,
# the packed-A kernels', emulated 512-bit FMAs, skinny axpy and dot calls,
# the calls of the kernel that packs its B panel (Note [Packing B in the
# kernel]), the calls and FMAs of the one-row kernel (Note [One row in
# registers]), the calls of the kernel that packs A on the way (Note [Packing
# A in the kernel]), and the calls and FMAs of the register transposes of W
# (cpu_matmul_bt_avx512.c).
EMU_CHILD = r"""
import ctypes, json, sys
import numpy as np
import needle._C as C, needle.backend_ndarray as nd
assert nd.matmul_kernel_name() == "avx512", nd.matmul_kernel_name()
F = 15 + 9  # ndl_avx512_emu_count: tiles[0..14], packed, fmas, half_fmas, axpy, dot, filled,
#             row, row_fmas, fused
lib = ctypes.CDLL(C.__file__)
raw = (ctypes.c_int64 * (2 * F)).in_dll(lib, "ndl_avx512_emu_counts")
bt = (ctypes.c_int64 * 4).in_dll(lib, "ndl_avx512_emu_bt_counts")  # [dtype][calls, FMAs]
rng = np.random.default_rng(0)
def operand(r, c, dt, kind):
    if kind == "rows":
        x = rng.standard_normal((r, c)).astype(dt)
        return nd.array(x, dtype=dt), x
    if kind == "cols":  # a transposed view: columns contiguous
        x = rng.standard_normal((c, r)).astype(dt)
        return nd.array(x, dtype=dt).permute((1, 0)), x.T
    w = -(-c // 256) * 256  # "wide": rows a multiple of 1 KiB apart
    x = rng.standard_normal((r, w)).astype(dt)
    return nd.array(x, dtype=dt)[:, :c], x[:, :c]
out = []
for dt, m, k, p, ka, kb in json.loads(sys.argv[1]):
    a, x = operand(m, k, dt, ka)
    b, y = operand(k, p, dt, kb)
    d = 0 if dt == "float32" else 1
    before = list(raw[d * F:(d + 1) * F]) + list(bt[2 * d:2 * d + 2])
    got = (a @ b).numpy()
    after = list(raw[d * F:(d + 1) * F]) + list(bt[2 * d:2 * d + 2])
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    bound = (2 * np.sqrt(k) + 2) * np.finfo(dt).eps * (np.abs(x64) @ np.abs(y64))
    err = np.abs(got.astype(np.float64) - x64 @ y64)
    assert got.dtype == np.dtype(dt) and np.all(err <= bound), (dt, m, k, p, err.max())
    delta = [q - r for q, r in zip(after, before)]
    out.append({"tiles": {str(r): n for r, n in enumerate(delta[:15]) if n},
                "packed": delta[15], "fmas": delta[16:18], "axpy": delta[18], "dot": delta[19],
                "filled": delta[20], "row": delta[21], "row_fmas": delta[22],
                "fused": delta[23], "bt": delta[24], "bt_fmas": delta[25]})
print(json.dumps(out))
"""
NR = {"float32": 32, "float64": 16}  # the AVX-512 tiles: 14 x NR
KC = 504  # 36 MR (Note [Block sizes]) on any L1d up to 128 KiB; NEEDLE_CACHE_SIZES pins it
BT_M = {"float32": 8, "float64": 6}  # Note [Transposing W in zmm registers]
VW = {"float32": 16, "float64": 8}  # W's rows per transposed group: a vector
NO_FMAS = [0, 0]  # no 512-bit FMA, no 256-bit one


def packs_a():
    """Note [Packing A in the kernel]: whether the chosen AVX-512 tiles pack A
    (AMD's cores only: test_matmul_paths.py's config test checks that rule)."""
    from needle import _C
    return _C.matmul_config()["float32"]["pack_a"] == 1


def run_emu(cases, threads=1):
    if not avx512_emulated() or "avx2" not in supported():
        pytest.skip("not the NDL_AVX512_EMU build (on a CPU with AVX2)")
    env = dict(os.environ, NEEDLE_MATMUL_KERNEL="avx512", PYTHONPATH=ROOT,
               NEEDLE_NUM_THREADS=str(threads), NEEDLE_CACHE_SIZES="32K,512K,4M")
    env.pop("NEEDLE_MATMUL_BLOCKS", None)
    res = subprocess.run([sys.executable, "-c", EMU_CHILD, json.dumps(cases)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout)


# Note [Balanced last tiles] (cpu_matmul.c): m = 14 q + r (q >= 1) ends with
# these two tiles instead of 14 and r rows (loop rows 15, 16, 17, 20, 20
# where 14 + 4, 14 + 4, 14 + 4, 14 + 7, 14 + 7 ran)
CUT_LAST_TILES = {1: [8, 7], 2: [8, 8], 3: [10, 7], 5: [10, 9], 6: [10, 10]}


def set_rows():
    """The rows of a tile reading A in place with rows a multiple of 1 KiB
    apart (Note [A rows that alias] in cpu_matmul.c): 14, or the most of the
    loops' rows within L1d's ways (the CPU's: NEEDLE_CACHE_SIZES does not
    set them)."""
    from needle import _C

    ways = _C.matmul_config()["l1d_ways"]
    return max([r for r in (4, 7, 8, 10, 14) if r <= ways] or [4])


def row_tiles(m, cut=True, step=14):
    """The tiles' rows: `step` (14) each, the last m % step, but the last
    two cut as CUT_LAST_TILES says where `cut` (at most MC rows:
    gemm_block_few; 14-row tiles only)."""
    rows = [step] * (m // step) + ([m % step] if m % step else [])
    if cut and step == 14 and m > 14 and m % 14 in CUT_LAST_TILES:
        rows[-2:] = CUT_LAST_TILES[m % 14]
    return rows


def round_up(x, to):
    return -(-x // to) * to


def loop_rows(mr):
    """The rows of the loop that a tile of mr rows runs (Note [Half tiles])."""
    return next(r for r in (4, 7, 8, 10, 14) if mr <= r)


def down(mr, w, nr):
    """The 512-bit FMAs per k step of a packed-A tile of mr rows and w < NR
    columns that runs down the rows (Note [Narrow tiles down the rows]): one
    vector of its rows (two past NR / 2 rows, float64), an FMA per column
    and vector, taken where that beats the rows' FMAs (a 256-bit one as
    3 / 4, and at least 4 chains) up to 24 columns (13 with two vectors);
    None where the tile runs by rows."""
    vw = nr // 2
    av = 2 if mr > vw else 1
    if w >= nr or w > (24 if av == 1 else 13):
        return None
    rows = loop_rows(mr) * -(-w // vw) * (3 if w <= vw // 2 else 4)
    return av * w if 4 * max(av * w, 4) < rows else None


def tile_fmas(mr, w, k, nr, rows_side_by_side):
    """[512-bit, 256-bit] FMAs of one tile of mr rows and w columns over k
    steps: its loop's rows (Note [Half tiles]) of 2 vectors, 1 at most NR / 2
    columns (Note [Narrow tiles]), or 1 of half the width at most NR / 4
    (Note [Narrow tiles in half registers]); with A's rows side by side (A
    packed, or A.T @ B read in place: a row stride of 1), down the rows where
    `down` says so."""
    d = down(mr, w, nr) if rows_side_by_side else None
    if d is not None:
        return [d * k, 0]
    if w <= nr // 4:
        return [0, loop_rows(mr) * k]
    return [(1 if w <= nr // 2 else 2) * loop_rows(mr) * k, 0]


def expected(m, k, p, nr, cut=True, packed=False, step=14):
    """Calls and FMAs of the 14-row kernels for an m x k x p product: one
    call per tile and KC block, FMAs as tile_fmas says (`packed`: A's rows
    side by side, packed or A.T read in place), tiles of `step` rows (14, or
    set_rows where A's rows alias). FMAs as [512-bit, 256-bit]."""
    tiles, fmas = {}, [0, 0]
    blocks = -(-k // KC)
    widths = [min(nr, p - j) for j in range(0, p, nr)]  # the column tiles
    for mr in row_tiles(m, cut, step):
        tiles[str(mr)] = tiles.get(str(mr), 0) + len(widths) * blocks
        for w in widths:
            f = tile_fmas(mr, w, k, nr, packed)
            fmas = [fmas[0] + f[0], fmas[1] + f[1]]
    return tiles, fmas


def swapped(m, k, nr, size):
    """Whether x @ W.T (m x k by W's k x p) is computed as (W @ x.T).T
    (Note [x @ W.T by W @ x.T] in cpu_matmul.c): past the register
    transposes' rows (BT_M), up to 4 NR rows (W read in place), K >= 512
    (256 up to NR rows)."""
    bt_m = BT_M["float32" if size == 4 else "float64"]
    return bt_m < m <= 4 * nr and k >= 256 and (m <= nr or k >= 512)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_emulated_avx512_runs_the_14_row_tiles(dtype):
    # the honest signal: the tile rows the entry points saw (14, and the
    # quarter/half/mid/full partial loops: 18 = 14 + 4, 21 = 14 + 7, 24 =
    # 14 + 10, 27 = 14 + 13)
    # and exactly 28 k emulated 512-bit FMAs per full tile, which no AVX2
    # path (6-row tiles, ymm) makes; columns past NR and under a vector
    # (p = NR + 5, NR + NR / 2 + 3) take the masked stores. Under ASan: CPU
    # buffers are rounded up to a size class (Note [Size-class free list],
    # storage.c), so a mask one lane too wide writes past C visibly only
    # where C fills its class: 14 x NR / 4 and 16 x 3 NR / 4 are 448 and
    # 1536 bytes, classes, with the last row's first and second vectors
    # masked (checked: such a mutant kernel is reported there); tiles of at
    # most NR / 4 columns (NR / 4, NR / 8, 5 in float32) accumulate in 256-bit
    # vectors, NR / 4 + 1 in a 512-bit one (Note [Narrow tiles in half
    # registers])
    nr = NR[dtype]
    shapes = [(14, 100, nr), (18, 50, nr), (21, 100, nr), (24, 37, nr), (27, 9, nr),
              (14, 100, nr + 5),
              (27, 50, nr + nr // 2 + 3), (3 * 14, 2 * KC + 5, nr), (23, 1, 5),
              (14, 10, nr // 4), (16, 10, 3 * nr // 4), (9, 40, nr // 4 + 1), (22, 40, nr // 8)]
    got = run_emu([[dtype, m, k, p, "rows", "cols"] for m, k, p in shapes])
    size = np.dtype(dtype).itemsize
    for (m, k, p), g in zip(shapes, got):
        # 42 x 1013: W @ x.T, NR x 1013 by 1013 x 42 (test_emulated_avx512_swaps_w_t)
        swap = swapped(m, k, nr, size)
        assert swap == (m == 3 * 14)
        # A's rows side by side: packed, or one column (k = 1: a row stride of 1)
        tiles, fmas = (expected(p, k, m, nr) if swap else
                       expected(m, k, p, nr, packed=g["packed"] > 0 or k == 1))
        assert (g["tiles"], g["fmas"]) == (tiles, fmas), (m, k, p, g)
        # B = W.T: pack_bt; but a 1 x 5 B (k = 1) has its row contiguous too, and
        # its one 5-column panel is read by the filling kernel where the tile has
        # fewer rows than columns (float32: 28 < 32; float64: 28 > 16)
        filled = k == 1 and round_up(m, 14) < round_up(p, nr)
        assert g["axpy"] == g["dot"] == 0 and g["filled"] == filled, (m, k, p, g)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_emulated_avx512_packed_a_and_skinny_loops(dtype):
    # A packed (columns contiguous, or rows 1 KiB apart, p > 2 NR): every
    # call is a packed kernel's, with B by rows one per panel (4: the last,
    # 5 columns, by masked loads) and KC block the one that packs the panel
    # (Note [Packing B in the kernel]); m = 2 with B by rows: the axpy loops;
    # m = 1 with B = W.T: the dot loops; m = 2 with B = W.T: W transposed in
    # zmm registers (Note [Transposing W in zmm registers]), one call and
    # an FMA per k and row of A for each group of a vector's rows of W
    nr = NR[dtype]
    cases = [[dtype, 30, 100, 3 * nr + 5, "cols", "rows"],
             [dtype, 30, 400, 3 * nr + 5, "wide", "rows"],
             [dtype, 2, 700, 300, "rows", "rows"],
             [dtype, 1, 700, 300, "rows", "cols"],
             [dtype, 2, 700, 300, "rows", "cols"]]
    packed_cols, packed_rows, axpy, dot, bt = run_emu(cases)
    for g, (_, m, k, p, _, _) in zip((packed_cols, packed_rows), cases):
        tiles, fmas = expected(m, k, p, nr, packed=True)
        assert (g["tiles"], g["fmas"]) == (tiles, fmas), g
        assert g["packed"] == sum(tiles.values()) and g["filled"] == 4 * -(-k // KC), g
    assert axpy["axpy"] > 0 and axpy["fmas"] == NO_FMAS and not axpy["tiles"]
    assert dot["dot"] > 0 and dot["fmas"] == NO_FMAS and not dot["tiles"]
    assert bt["fmas"] == NO_FMAS and bt["axpy"] == bt["dot"] == 0 and not bt["tiles"]
    assert (bt["bt"], bt["bt_fmas"]) == (1, -(-300 // VW[dtype]) * 700 * 2), bt
    assert packed_cols["bt"] == axpy["bt"] == dot["bt"] == 0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_emulated_avx512_one_row_in_registers(dtype):
    # Note [One row: which products] (cpu_matmul.c): one row of A with B by
    # rows in cache (here: NEEDLE_CACHE_SIZES' 4 MiB LLC, half of it) and at
    # most 4 KiB of columns runs the one-row kernel: per KC block, strips of
    # at most 12 whole vectors, the partial one masked in the last (Note
    # [One row in registers]), an FMA per k and vector; wider rows, B from
    # memory, and rows a multiple of 4 KiB apart of which the product takes
    # more than half (Note [One row: rows a page apart]) take the axpy loops
    vw, size = VW[dtype], np.dtype(dtype).itemsize
    widths = [5, vw, 12 * vw + 5, 13 * vw, 25 * vw + 1]
    cases = [[dtype, 1, 700, p, "rows", "rows"] for p in widths]  # two KC blocks
    cases += [[dtype, 1, 300, 4096 // size - vw, "rows", "rows"]]  # rows just under 4 KiB
    widths += [4096 // size - vw]
    cases += [[dtype, 1, 300, 4096 // size + vw, "rows", "rows"],  # wider than 4 KiB
              [dtype, 1, 3000, 200 * 4 // size, "rows", "rows"],  # 2.4 MB, from memory
              [dtype, 1, 300, 4096 // size, "rows", "rows"]]  # rows of 4 KiB
    got = run_emu(cases)
    for (_, m, k, p, _, _), g in zip(cases, got[:len(widths)]):
        full, tail = divmod(p, vw)
        strips = max(1, -(-full // 12))
        assert g["row"] == strips * -(-k // KC), (p, g)
        assert g["row_fmas"] == k * -(-p // vw), (p, g)
        assert not g["tiles"] and g["fmas"] == NO_FMAS, (p, g)
        assert g["axpy"] == g["dot"] == g["bt"] == 0, (p, g)
    for g in got[len(widths):]:
        assert g["axpy"] > 0 and g["row"] == g["row_fmas"] == 0 and not g["tiles"], g


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_emulated_avx512_axpy_limits(dtype):
    # Note [Axpy rows per tile] (cpu_matmul.c): with B by rows the AVX-512
    # configuration runs m <= 2 (float32) or m <= 3 (float64: from 4 rows the
    # filling kernels, Note [Few rows on the filling kernel]) by the axpy
    # loops, and more rows by the 14-row kernels (m = 17: a 10-row and a
    # 7-row tile per block, not 14 + 3; m = 16: 8 + 8, not 14 + 2: Note
    # [Balanced last tiles]; m = 8: the 8-row loop, Note [Half tiles]); A is
    # then packed, A's rows contiguous or not (p > 4 NR), and the first tile
    # of each panel, the last 5 columns' too, packs it (or, the panel's only
    # tile, reads it in place), once per KC block (k = 700: two) (Note
    # [Packing B in the kernel]); but from 15 rows, A's rows contiguous and
    # not 1 KiB apart, the first panel's tiles pack A instead (Note [Packing
    # A in the kernel])
    nr, limit = NR[dtype], {"float32": 2, "float64": 3}[dtype]
    cases = [[dtype, m, 700, 4 * nr + 5, kind, "rows"]
             for m in (2, 3, 4, 8, 9, 12, 16, 17) for kind in ("rows", "wide")]
    for g, (_, m, k, p, kind, _) in zip(run_emu(cases), cases):
        if m <= limit:
            assert g["axpy"] > 0 and g["fmas"] == NO_FMAS and not g["tiles"], (m, g)
            continue
        tiles, fmas = expected(m, k, p, nr, packed=True)
        assert (g["tiles"], g["fmas"], g["axpy"]) == (tiles, fmas, 0), (m, kind, g)
        fused = len(row_tiles(m)) * 2 if packs_a() and kind == "rows" and m > 14 else 0
        assert g["fused"] == fused, (m, kind, g)
        assert g["packed"] == sum(tiles.values()) - fused, (m, kind, g)
        assert g["filled"] == (4 if fused else 5) * 2, (m, kind, g)
    assert expected(17, 700, 4 * nr + 5, nr)[0].keys() == {"10", "7"}
    assert expected(16, 700, 4 * nr + 5, nr)[0].keys() == {"8"}
    assert expected(8, 700, 4 * nr + 5, nr)[0].keys() == {"8"}
    # Note [Few rows of B from memory]: a B past half the LLC (2.4 MB; run_emu
    # pins 4 MiB) takes the axpy loops up to 16 rows in both dtypes, the
    # kernels from 17; there the filling kernel's tile is a whole 14 rows,
    # not cut (Note [Filling from memory in whole tiles]: 17 = 14 + 3 on the
    # 4-row loop, 20 = 14 + 6 on the 7-row one), up to 2 MR rows, and from 28
    # B is copied ahead (Note [B from memory]) and nothing fills
    cases = [[dtype, m, 3000, 200 * 4 // np.dtype(dtype).itemsize, "rows", "rows"]
             for m in (3, 8, 9, 16, 17, 20, 23, 28, 31)]
    for g, (_, m, k, p, _, _) in zip(run_emu(cases), cases):
        if m <= 16:
            assert g["axpy"] > 0 and g["fmas"] == NO_FMAS and not g["tiles"], (m, g)
            continue
        tiles, fmas = expected(m, k, p, nr, cut=m >= 28, packed=g["packed"] > 0)
        assert (g["tiles"], g["fmas"], g["axpy"]) == (tiles, fmas, 0), (m, g)
        # the filling kernel packs A; B copied ahead, A is read in place (p < 512)
        assert (g["filled"] > 0) == (g["packed"] > 0) == (m < 28), (m, g)
    assert expected(17, 3000, 200, nr, cut=False)[0].keys() == {"14", "3"}
    assert expected(31, 3000, 200, nr, cut=True)[0].keys() == {"14", "10", "7"}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_emulated_avx512_last_panel_by_masked_loads(dtype):
    # Note [Packing B in the kernel]: the last panel, narrower than NR, is
    # read from B by the filling kernel too (masked loads: lane by lane in the
    # emulation, so ASan sees any read past B's rows), one vector a row (5
    # columns) or two (NR / 2 + 3), each tile of at most 4 rows in the 4-row
    # loop (Note [Half tiles]); with A packed for it whenever the tile has
    # fewer rows than columns (m = 20: 28 < 2 NR), its one tile reading B in
    # place, or its first of two (m = 20) storing the panel for the second;
    # three KC blocks; m past the axpy limit. m = 20: the first panel's two
    # tiles pack A (Note [Packing A in the kernel]), and fill nothing
    nr, limit = NR[dtype], {"float32": 2, "float64": 3}[dtype]
    k = 2 * KC + 7
    cases = [[dtype, m, k, p, "rows", "rows"]
             for m in (3, 4, 12, 20) if m > limit for p in (nr + 5, nr + nr // 2 + 3)]
    for g, (_, m, k, p, _, _) in zip(run_emu(cases), cases):
        tiles, fmas = expected(m, k, p, nr, packed=True)
        assert (g["tiles"], g["fmas"], g["axpy"]) == (tiles, fmas, 0), (m, p, g)
        fused = 2 * 3 if packs_a() and m == 20 else 0
        assert g["fused"] == fused and g["packed"] == sum(tiles.values()) - fused, (m, p, g)
        assert g["filled"] == (1 if fused else 2) * 3, (m, p, g)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_emulated_avx512_first_panel_packs_a(dtype):
    # Note [Packing A in the kernel]: A's rows contiguous (not 1 KiB apart),
    # B by rows, more than one tile of rows and more than one panel: the
    # first panel's tiles (at most MC rows on the 512 KiB L2 that run_emu
    # pins: float32 72 = 4 x 14 + 8 + 8, float64 30 = 14 + 8 + 8) read A in
    # place and pack it, once per KC block (k = 700: two), for every block
    # of columns (p = 300: more than one NC1 block), and the other panels'
    # first tiles pack B; A by columns or with rows 1 KiB apart is packed
    # ahead, and no tile packs it; the same tiles and FMAs
    nr, m = NR[dtype], {"float32": 72, "float64": 30}[dtype]
    cases = [[dtype, m, 700, p, kind, "rows"]
             for p in (100, 300) for kind in ("rows", "cols", "wide")]
    for g, (_, m, k, p, kind, _) in zip(run_emu(cases), cases):
        tiles, fmas = expected(m, k, p, nr, packed=True)
        assert (g["tiles"], g["fmas"], g["axpy"]) == (tiles, fmas, 0), (p, kind, g)
        fused = len(row_tiles(m)) * 2 if packs_a() and kind == "rows" else 0
        assert g["fused"] == fused and g["packed"] == sum(tiles.values()) - fused, (p, kind, g)
        panels = -(-p // nr)
        assert g["filled"] == (panels - (1 if fused else 0)) * 2, (p, kind, g)
    assert row_tiles(m)[-3:] == [14, 8, 8]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_emulated_avx512_rows_that_alias_run_set_rows(dtype):
    # Note [A rows that alias] (cpu_matmul.c): A read in place (rows
    # contiguous, p < 512) with rows a multiple of 1 KiB apart runs tiles of
    # set_rows rows, none packed: with more rows than MC (gemm_block: each
    # MC-row block in such tiles) and fewer (gemm_block_few: no cut last
    # tiles); the same product with rows 2400 / 4800 bytes apart runs 14-row
    # tiles, its last two cut (Note [Balanced last tiles])
    nr, mc = NR[dtype], {"float32": 84, "float64": 42}[dtype]
    step = set_rows()
    cut = step == 14  # an L1d of 14 ways or more: no alias
    cases = [[dtype, 200, 1100, 3 * nr + 5, "wide", "rows"],
             [dtype, mc - 11, 600, nr + 5, "wide", "rows"],
             [dtype, mc - 11, 600, nr + 5, "rows", "rows"]]
    big, few, plain = run_emu(cases)
    tiles, fmas = {}, [0, 0]
    for i in range(0, 200, mc):
        t, f = expected(min(mc, 200 - i), 1100, 3 * nr + 5, nr, cut=False, step=step)
        tiles = {r: tiles.get(r, 0) + t.get(r, 0) for r in set(tiles) | set(t)}
        fmas = [fmas[0] + f[0], fmas[1] + f[1]]
    assert (big["tiles"], big["fmas"]) == (tiles, fmas), big
    assert (few["tiles"], few["fmas"]) == expected(mc - 11, 600, nr + 5, nr, cut=cut, step=step)
    assert (plain["tiles"], plain["fmas"]) == expected(mc - 11, 600, nr + 5, nr)
    assert set(plain["tiles"]) == {"14", "10", "7"}, plain  # m = 14 q + 3
    for g in (big, few, plain):
        assert g["packed"] == g["filled"] == g["axpy"] == 0, g


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_emulated_avx512_first_a_block_packs_b(dtype):
    # Note [Packing B in the kernel]: with more rows than MC (84 float32, 42
    # float64 on the 512 KiB L2 that run_emu pins) the B block is packed once
    # for every A block: by the first A block's first tile of each panel
    # (4 panels, the last of 5 columns; k = 1100: three KC blocks), read by
    # all the others; A by columns, packed (p > 2 NR)
    nr, mc = NR[dtype], {"float32": 84, "float64": 42}[dtype]
    m, k, p = 200, 1100, 3 * nr + 5
    g = run_emu([[dtype, m, k, p, "cols", "rows"]])[0]
    rows = []  # MC-row blocks of 14-row tiles, no cut last tiles there
    for i in range(0, m, mc):
        blk = min(mc, m - i)
        rows += [14] * (blk // 14) + ([blk % 14] if blk % 14 else [])
    assert rows[-2:] == [14, 4]
    panels, blocks = 4, 3
    assert g["tiles"] == {"14": (len(rows) - 1) * panels * blocks, "4": panels * blocks}, g
    # 3 full panels, 2 vectors a row; the last, 5 columns, down the rows in
    # the 14-row tiles (Note [Narrow tiles down the rows]: 5 FMAs a k step,
    # 10 in float64's two vectors of rows), by rows in the 4-row one: a
    # 256-bit FMA a row in float32 (Note [Narrow tiles in half registers]), a
    # 512-bit one in float64
    steps = sum(loop_rows(r) for r in rows) * k
    down_fmas = (len(rows) - 1) * k * (5 if dtype == "float32" else 10)
    by_rows = loop_rows(rows[-1]) * k
    assert down(14, 5, nr) and not down(4, 5, nr)
    want = ([3 * 2 * steps + down_fmas, by_rows] if dtype == "float32" else
            [3 * 2 * steps + down_fmas + by_rows, 0])
    assert g["fmas"] == want, g
    assert g["packed"] == sum(g["tiles"].values()) and g["filled"] == panels * blocks, g


def test_emulated_avx512_on_two_threads():
    # the work split in MR = 14 row units: the same tiles on two threads (more
    # rows than MC: no cut last tiles, which gemm_block_few makes)
    cases = [["float32", 300, 700, 200, "rows", "rows"], ["float64", 150, 400, 90, "cols", "rows"]]
    for g, (dt, m, k, p, _, _) in zip(run_emu(cases, threads=2), cases):
        tiles, fmas = expected(m, k, p, NR[dt], cut=False, packed=g["packed"] > 0)
        assert (g["tiles"], g["fmas"]) == (tiles, fmas), g


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_emulated_avx512_swaps_w_t(dtype):
    # Note [x @ W.T by W @ x.T] (cpu_matmul.c): with B = W.T, m <= BT_M take
    # the register transposes (no kernel calls: one call of theirs, an FMA
    # per k and row of A for each group of a vector's rows of W: 40 rows,
    # the last group partial); from BT_M + 1 rows up to 4 NR, the kernels run
    # W @ x.T, W read in place (no packed calls; with K = 1024, W's rows 1
    # KiB apart or more, in tiles of set_rows rows: Note [A rows that
    # alias]), x.T's m columns a narrow tile up to NR / 2 (Note [Narrow
    # tiles]: one vector a row); K = 300 swaps only up to NR rows; 4 NR + 1
    # is not swapped
    nr, mc, bt_m = NR[dtype], {"float32": 84, "float64": 42}[dtype], BT_M[dtype]
    size = np.dtype(dtype).itemsize
    shapes = [(m, k, 40) for m, k in  # W: 40 rows, fewer than MC (no cut last tiles)
              [(3, 700), (bt_m, 700), (bt_m + 1, 700), (nr // 2, 700), (nr // 2 + 1, 700),
               (nr, 300), (nr + 1, 300), (2 * nr, 1024), (2 * nr + 1, 1024), (4 * nr, 1000),
               (4 * nr + 1, 1000)]]
    got = run_emu([[dtype, m, k, p, "rows", "cols"] for m, k, p in shapes])
    swaps = [swapped(m, k, nr, size) for m, k, _ in shapes]
    assert swaps == [False, False, True, True, True, True, False, True, True, True, False]
    for (m, k, p), swap, g in zip(shapes, swaps, got):
        if m <= bt_m:
            assert not g["tiles"] and g["fmas"] == NO_FMAS and g["axpy"] == g["dot"] == 0, (m, g)
            assert (g["bt"], g["bt_fmas"]) == (1, -(-p // VW[dtype]) * k * m), (m, g)
            continue
        assert g["bt"] == 0, (m, g)
        if not swap and m > mc:  # gemm_block's tiles: 14 rows, no cut last ones
            assert sum(g["tiles"].values()) == -(-m // 14) * -(-p // nr) * -(-k // KC), g
            continue
        alias = k * size % 1024 == 0
        tiles, fmas = (expected(p, k, m, nr, cut=not alias, step=set_rows() if alias else 14)
                       if swap else expected(m, k, p, nr, packed=g["packed"] > 0))
        assert (g["tiles"], g["fmas"]) == (tiles, fmas), (m, k, g)
        if swap:
            assert g["packed"] == 0, (m, k, g)
