"""Paths of the CPU sum over the last axis that the other reduction tests do
not single out: unit-stride rows, whose leaves keep their lanes in vectors
(Note [One row at a time] in csrc/ndarray/cpu_reduce_impl.h), short ones
in a loop of their own and, below 32 elements, side by side (Note [Short rows
side by side]), against strided rows, whose leaves keep them in an
array: the same sequence of operations, so the same bits; a row summed alone
has the bits it has among many rows. The max over the last axis, whose fast
loop must give the exact loop's bits (Note [A max without NaN]). And the
column sums of an input from memory, in tiles of whole rows (Note [Whole
rows of columns] in csrc/ndarray/cpu_reduce.c).

Reference: float64 NumPy on the same inputs, with the bound n * eps * sum|x|
(pairwise summation is far tighter; this only catches wrong terms).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import needle.backend_ndarray as nd

from conftest import each_thread_count

EPS = {"float32": float(np.finfo(np.float32).eps), "float64": float(np.finfo(np.float64).eps)}


def check_rows(got, x, dtype):
    x64 = x.astype(np.float64)
    bound = x.shape[-1] * EPS[dtype] * np.abs(x64).sum(axis=-1) + 1e-300
    assert got.dtype == np.dtype(dtype)
    assert np.all(np.abs(got.astype(np.float64) - x64.sum(axis=-1)) <= bound)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [1, 4, 5, 8, 9, 16, 23, 31, 32, 33, 64, 100, 1023, 1024, 1025, 2049,
                               3000])
def test_unit_stride_rows_have_the_bits_of_strided_rows(n, dtype):
    # the same values every other element of a wider array: the strided
    # leaf (rd_row_sum_leaf), against the unit-stride one (rd_row_sum_leaf1)
    # and, up to RD_LEAF = 1024, the short rows' loop; 2 threads and 1
    # 19 rows: short ones (n < 32) run side by side in blocks of 8 (float64: 4)
    # and one at a time after the last block (Note [Short rows side by side])
    x = (np.random.randn(19, n) * np.exp(np.random.randn(19, n) * 4)).astype(dtype)
    wide = np.random.randn(19, 2 * n).astype(dtype)
    wide[:, ::2] = x
    for threads in each_thread_count():
        unit = nd.array(x, dtype=dtype).sum(axis=1).numpy()
        strided = nd.array(wide, dtype=dtype)[:, ::2].sum(axis=1).numpy().reshape(-1)
        assert np.array_equal(unit, strided), f"n = {n}, {threads} threads"
        check_rows(unit, x, dtype)


def bits(a):
    return a.view(np.uint32 if a.dtype == np.float32 else np.uint64)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [1, 7, 8, 15, 20, 32, 33, 40, 64, 100, 1025, 3000])
def test_unit_stride_row_max_has_the_bits_of_strided_rows(n, dtype):
    # rd_row_max1 (a max without NaN, Note [A max without NaN], and its exact
    # loop for rows with NaN, a zero max or an alarm) against rd_row_max
    # (the exact select, lanes in an array): the same bits, NaN payloads and
    # signed zeros included, wherever they fall (the lanes, the vectors of
    # the tail, its last elements); NumPy's max for the values
    rng = np.random.default_rng(n)
    x = rng.standard_normal((16, n)).astype(dtype)
    x[1] = np.where(x[1] > 0, 0.0, -0.0)                   # a zero max: +0 and -0
    x[2, rng.integers(0, n, 2)] = np.nan
    x[3, rng.integers(0, n, 2)] = -np.inf
    x[4] = -np.inf
    x[5, 0] = np.nan
    x[6] = -np.abs(x[6])                                   # negatives and zeros
    x[6, rng.integers(0, n, 3)] = 0.0
    x[6, rng.integers(0, n, 3)] = -0.0
    x[7, -1] = np.nan                                      # NaN in the last element
    x[8] = -np.abs(x[8])
    x[8, -1] = -0.0                                        # the max is the last, -0
    x[8, 0] = 0.0
    x[9, n // 3] = -np.nan                                 # NaNs of two sign bits
    payload = bits(np.array([np.nan], dtype=dtype)) | 5    # and a payload
    x[9, n // 2] = payload.view(dtype)[0]
    x[10, rng.integers(0, n)] = np.inf                     # +inf and -inf: an alarm
    x[10, rng.integers(0, n)] = -np.inf
    big = np.finfo(dtype).max
    x[11] = np.where(np.arange(n) % 2, big, -big)          # sums overflow both ways
    x[12] = -np.abs(x[12])                                 # an all-negative row
    wide = rng.standard_normal((16, 2 * n)).astype(dtype)
    wide[:, ::2] = x
    for threads in each_thread_count():
        unit = nd.array(x, dtype=dtype).max(axis=1).numpy()
        strided = nd.array(wide, dtype=dtype)[:, ::2].max(axis=1).numpy().reshape(-1)
        assert np.array_equal(bits(unit), bits(strided)), (n, threads)
        np.testing.assert_array_equal(unit, x.max(axis=1))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("n", [1, 5, 8, 13, 31, 32, 33, 1024, 1025, 3000, 4100])
@pytest.mark.parametrize("rows", [1, 3, 4, 5, 9, 17])
def test_a_row_alone_has_its_bits_among_many(rows, n, dtype):
    # a row alone runs one at a time; among 4 or more short ones, side by side
    x = np.random.randn(rows, n).astype(dtype)
    if rows > 4:
        x[rows // 2, n // 2] = np.nan
    x[-1] = np.where(x[-1] > 0, 0.0, -0.0)
    a = nd.array(x, dtype=dtype)
    full, top = a.sum(axis=1).numpy(), a.max(axis=1).numpy()
    check_rows(full[np.isfinite(full)], x[np.isfinite(full)], dtype)
    for r in range(rows):
        alone = nd.array(x[r:r + 1], dtype=dtype)
        assert np.array_equal(bits(alone.sum(axis=1).numpy()), bits(full[r:r + 1])), \
            f"sum: row {r} of {rows}, n = {n}"
        assert np.array_equal(bits(alone.max(axis=1).numpy()), bits(top[r:r + 1])), \
            f"max: row {r} of {rows}, n = {n}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_rows_of_a_view(dtype):
    # rows that are not adjacent in memory (a slice of the columns) and a
    # 3-d array whose last axis is summed
    x = np.random.randn(7, 1500).astype(dtype)
    got = nd.array(x, dtype=dtype)[:, 3:1300].sum(axis=1).numpy().reshape(-1)
    check_rows(got, x[:, 3:1300], dtype)
    x = np.random.randn(21, 40).astype(dtype)  # short rows, side by side, 40 apart
    got = nd.array(x, dtype=dtype)[:, 3:20].sum(axis=1).numpy().reshape(-1)
    check_rows(got, x[:, 3:20], dtype)
    np.testing.assert_array_equal(nd.array(x, dtype=dtype)[:, 3:20].max(axis=1).numpy()
                                  .reshape(-1), x[:, 3:20].max(axis=1))
    y = np.random.randn(3, 5, 700).astype(dtype)
    got = nd.array(y, dtype=dtype).sum(axis=2).numpy()
    check_rows(got.reshape(-1), y.reshape(15, 700), dtype)


@pytest.mark.parametrize("threads", [2, 3])
def test_row_sums_thread_count_independent(threads):
    x = np.random.randn(1003, 517).astype(np.float32)
    a = nd.array(x)
    before = nd.get_num_threads()
    try:
        nd.set_num_threads(1)
        one = a.sum(axis=1).numpy()
        nd.set_num_threads(threads)
        many = a.sum(axis=1).numpy()
    finally:
        nd.set_num_threads(before)
    np.testing.assert_array_equal(one, many)
    check_rows(one.reshape(-1), x, "float32")


# Note [Whole rows of columns] (cpu_reduce.c): a column sum over an input
# larger than half the last-level cache runs tiles of whole rows (up to 4096
# columns) instead of 1024 columns. A child with NEEDLE_CACHE_SIZES' 1 MiB
# last-level cache takes the wide tiles for inputs of 0.5 MiB or more (here,
# under 8 MiB, the narrow ones on most CPUs); each column's sum is the same
# sequence of operations: the same bits.
WIDE_CHILD = r"""
import sys, numpy as np, needle.backend_ndarray as nd
x = np.load(sys.argv[1])
np.save(sys.argv[2], nd.array(x, dtype=x.dtype).sum(axis=int(sys.argv[3])).numpy())
"""


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape, axis", [((300, 3000), 0), ((70, 4100), 0), ((2, 40, 5000), 1),
                                         ((600, 1500), 0)], ids=str)
def test_column_tiles_from_memory_have_the_bits_of_narrow_ones(shape, axis, dtype, tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    x = np.random.default_rng(5).standard_normal(shape).astype(dtype)
    np.save(tmp_path / "x.npy", x)
    env = dict(os.environ, PYTHONPATH=root, NEEDLE_CACHE_SIZES="32K,512K,1M")
    for threads in ("1", "2"):
        env["NEEDLE_NUM_THREADS"] = threads
        res = subprocess.run([sys.executable, "-c", WIDE_CHILD, str(tmp_path / "x.npy"),
                              str(tmp_path / "y.npy"), str(axis)], env=env,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        got = nd.array(x, dtype=dtype).sum(axis=axis).numpy()
        np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), got)
    x64 = x.astype(np.float64)
    bound = x.shape[axis] * EPS[dtype] * np.abs(x64).sum(axis=axis) + 1e-300
    assert np.all(np.abs(got.astype(np.float64) - x64.sum(axis=axis)) <= bound)
