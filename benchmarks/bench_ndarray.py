"""CPU array kernels: needle beside NumPy and PyTorch.

    python benchmarks/bench_ndarray.py [--quick]

(a) float32 matmul, n x n @ n x n for n = 64, 256, 1024, 2048, in GFLOP/s
    (2 n^3 flops). Target: needle at least 0.8x NumPy's speed at n >= 1024.
(b) elementwise add and exp on 16M float32 values, in GB/s counting the bytes
    read and written (add: 3 x 4 bytes per element, exp: 2 x 4).
(c) sum over axis 0 and over axis 1 of a 4096 x 4096 float32 array, in GB/s
    (input read + output written).
Ratios are speed ratios: above 1 means needle is faster.

Each figure is the best of several timed repeats after a warm-up, taken
over two interleaved passes over the three libraries; every
result is checked against NumPy once before it is timed. NumPy runs on its
bundled OpenBLAS, whose kernel and thread count are printed at the top.

NOTE: all three libraries keep worker threads that spin for a while after a
parallel call before they sleep (OpenBLAS ~0.1 s, PyTorch's OpenMP ~0.2 s,
needle ~0.1 ms). On a machine with few cores a library timed right after
another one competes with those spinning threads and looks several times
slower than it is, so each measurement starts with a short pause.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import real_openblas  # noqa: E402,F401  (restarts without the OPENBLAS_* overrides)

import time  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import needle.backend_ndarray as nd  # noqa: E402

QUICK = "--quick" in sys.argv
MATMUL_SIZES = (64, 256, 1024, 2048)
MATMUL_TARGET = 0.8  # needle / NumPy speed at n >= 1024
EWISE_N = 16 * 1024 * 1024
REDUCE_N = 4096
REPEATS = 3 if QUICK else 5
ROUNDS = 1 if QUICK else 2  # passes over the three libraries, best kept
MIN_TIME = 0.05 if QUICK else 0.2  # seconds per timed repeat
SETTLE = 0.5  # seconds for the previous library's spinning threads to sleep


def best_time(fn):
    """Best seconds per call of fn(): warm up, pick a call count that takes
    about MIN_TIME, then keep the best of REPEATS such runs."""
    time.sleep(SETTLE)
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    number = max(1, int(MIN_TIME / once))
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - t0) / number)
    return best


def best_of_rounds(*fns):
    """best_time of each fn, measured in ROUNDS interleaved passes so that a
    burst of load from elsewhere does not land on one library only."""
    best = [float("inf")] * len(fns)
    for _ in range(ROUNDS):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], best_time(fn))
    return best


def check(name, got, want, rtol):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    scale = np.abs(want).max() + 1e-30
    err = np.abs(got - want).max() / scale
    if not err <= rtol:
        raise SystemExit(f"{name}: needle differs from NumPy (max error {err:.2e} of max |value|)")


def openblas_info():
    return real_openblas.describe()


def row(label, unit, ours, numpy_v, torch_v):
    print(f"  {label:<22} {ours:9.1f} {numpy_v:9.1f} {torch_v:9.1f}   {ours / numpy_v:6.2f}x {ours / torch_v:6.2f}x  {unit}")


def header(title, unit):
    print(f"\n{title}")
    print(f"  {'':<22} {'needle':>9} {'numpy':>9} {'torch':>9}   {'/numpy':>7} {'/torch':>7}  ({unit})")


def bench_matmul():
    header("(a) float32 matmul (n x n) @ (n x n)", "GFLOP/s")
    verdicts = []
    rng = np.random.default_rng(0)
    for n in MATMUL_SIZES:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        na, nb = nd.array(a), nd.array(b)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        check(f"matmul {n}", (na @ nb).numpy(), a @ b, 1e-4)
        flops = 2.0 * n ** 3
        ours, theirs, torch_v = (flops / t / 1e9 for t in best_of_rounds(
            lambda: na @ nb, lambda: a @ b, lambda: ta @ tb))
        row(f"n = {n}", "", ours, theirs, torch_v)
        if n >= 1024:
            verdicts.append((n, ours / theirs))
    return verdicts


def bench_ewise():
    header(f"(b) elementwise, {EWISE_N // (1024 * 1024)}M float32", "GB/s, bytes read + written")
    rng = np.random.default_rng(1)
    a = rng.standard_normal(EWISE_N, dtype=np.float32)
    b = rng.standard_normal(EWISE_N, dtype=np.float32)
    na, nb = nd.array(a), nd.array(b)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    check("add", (na + nb).numpy(), a + b, 1e-6)
    check("exp", na.exp().numpy(), np.exp(a), 1e-6)
    gb = 3 * 4 * EWISE_N / 1e9
    row("add  a + b", "", *(gb / t for t in best_of_rounds(
        lambda: na + nb, lambda: a + b, lambda: ta + tb)))
    gb = 2 * 4 * EWISE_N / 1e9
    row("exp  a.exp()", "", *(gb / t for t in best_of_rounds(
        lambda: na.exp(), lambda: np.exp(a), lambda: torch.exp(ta))))


def bench_reduce():
    n = REDUCE_N
    header(f"(c) sum of a {n} x {n} float32 array", "GB/s, bytes read + written")
    a = np.random.default_rng(2).standard_normal((n, n), dtype=np.float32)
    na, ta = nd.array(a), torch.from_numpy(a)
    gb = 4 * (n * n + n) / 1e9
    for axis in (0, 1):
        check(f"sum axis {axis}", na.sum(axis=axis).numpy().reshape(-1), a.sum(axis=axis, dtype=np.float64), 1e-4)
        row(f"sum(axis={axis})", "", *(gb / t for t in best_of_rounds(
            lambda: na.sum(axis=axis), lambda: a.sum(axis=axis), lambda: ta.sum(dim=axis))))


def main():
    kernel = nd.matmul_kernel_name() if hasattr(nd, "matmul_kernel_name") else "unknown"
    threads = nd.get_num_threads() if hasattr(nd, "get_num_threads") else "unknown"
    print("needle CPU kernels beside NumPy and PyTorch" + (" (quick)" if QUICK else ""))
    print(f"  numpy {np.__version__}: {openblas_info()}")
    print(f"  torch {torch.__version__}: {torch.get_num_threads()} threads")
    print(f"  needle: {threads} threads, matmul kernel {kernel}")
    verdicts = bench_matmul()
    bench_ewise()
    bench_reduce()
    print()
    for n, ratio in verdicts:
        status = "ok" if ratio >= MATMUL_TARGET else "MISSED"
        print(f"matmul n={n}: needle at {ratio:.2f}x NumPy's speed (target >= {MATMUL_TARGET}x): {status}")


if __name__ == "__main__":
    main()
