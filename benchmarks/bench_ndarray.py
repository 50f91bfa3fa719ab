"""CPU array kernels: needle beside NumPy (OpenBLAS) and PyTorch.

    python benchmarks/bench_ndarray.py [--quick] [--threads 1,2] [--json PATH]
    python benchmarks/bench_ndarray.py --device cuda [--quick]   (bench_cuda.py)

(a) matmul in GFLOP/s (2 m k n flops), float32 and float64:
    square n x n @ n x n, n = 64 .. 4096 (2048 with --quick), and 100;
    skinny m x K @ K x N, m = 1 .. 64 (each side of the path limits: the axpy
    loops up to m = 8, 2 for AVX-512 float32, one A block of few rows beyond),
    K = N = 1024 and 4096, and a layer's m x 784 @ 784 x 100, m = 1 .. 8;
    transposed operands read in place: x @ W.T (skinny, K = N = 4096 and 1024,
    each side of W transposed in registers, m <= 4, and W @ x.T; square),
    A.T @ B;
    matrix @ vector, n x n @ n x 1, n = 512 (256, 512, 2048 without --quick).
(b) elementwise add and exp on 16M float32 values, GB/s (bytes read + written).
(c) sum over each axis of a 4096 x 4096 float32 array, GB/s.
Ratios are speed ratios: above 1 means needle is faster.

Each library runs in its own process (its thread pool cannot slow the others
down by spinning) with the thread count set for all three (NEEDLE_NUM_THREADS,
OPENBLAS_NUM_THREADS, torch.set_num_threads); the children are run in
interleaved rounds (needle, numpy, torch, needle, ...) and each figure is the
best of its rounds, itself the best of several timed repeats after a warm-up,
so that a burst of load from elsewhere does not land on one library only.
Matmul also gets the median of all those repeats, and its ratio to
PyTorch's median (column "med/torch"): on a guest whose clock wanders, one
library's best can be a lucky burst (PyTorch's 1024^3 best ran 15-20% above
its median on a Xeon guest, needle's 3-5%), and the medians compare the
typical call.
Every needle result is checked against a float64 NumPy product first.

OpenBLAS: each child is started without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE
(set on some machines to hold it back), so NumPy runs the kernel OpenBLAS
picks for this CPU; the kernel is printed. Needle prints the micro-kernel,
tile and cache blocks it chose and the cache sizes they come from.

--json writes every figure (and the machine description) to PATH;
`python benchmarks/plot.py PATH` plots it. `make bench` does both.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (best_time, cpu_model, repeat_times, run_child as run_json,  # noqa: E402
                     write_json)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBS = ("needle", "numpy", "torch")
BAD_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

EWISE_N = 16 * 1024 * 1024
REDUCE_N = 4096


def matmul_cases(quick: bool) -> list[dict]:
    """Each case: name, m, k, n, layout ('nn': A @ B, 'nt': A @ B.T view of a
    contiguous (n, k) array, 'tn': A.T view @ B), dtype."""
    cases = []
    squares = (64, 100, 256, 1024, 2048) if quick else (64, 100, 128, 256, 512, 1024, 2048,
                                                         4096)
    skinny_m = (1, 8, 16, 17, 64) if quick else (1, 4, 8, 9, 12, 16, 17, 32, 64)
    dtypes = ("float32", "float64")
    for dt in dtypes:
        for s in squares:
            cases.append(dict(name=f"square {s}", m=s, k=s, n=s, layout="nn", dtype=dt))
        for kn in (1024, 4096):
            for m in skinny_m:
                cases.append(dict(name=f"m={m} K=N={kn}", m=m, k=kn, n=kn, layout="nn", dtype=dt))
        for m in ((2, 8, 64) if quick else (1, 2, 4, 8, 16, 64)):
            cases.append(dict(name=f"m={m} @ W.T 4096", m=m, k=4096, n=4096, layout="nt",
                              dtype=dt))
        # each side of the W.T paths: registers up to m = 4, W @ x.T from 5
        for m in ((4, 5, 32) if quick else (3, 4, 5, 12, 32, 64, 128)):
            cases.append(dict(name=f"m={m} @ W.T 1024", m=m, k=1024, n=1024, layout="nt",
                              dtype=dt))
        # a layer's x @ W at a small batch, W not a multiple of the tile wide
        for m in ((1, 4, 8) if quick else (1, 4, 6, 8)):
            cases.append(dict(name=f"m={m} K=784 N=100", m=m, k=784, n=100, layout="nn",
                              dtype=dt))
        for s in ((512,) if quick else (256, 512, 2048)):  # matrix @ vector (p = 1)
            cases.append(dict(name=f"A @ v {s}", m=s, k=s, n=1, layout="nn", dtype=dt))
        cases.append(dict(name="square 1024 A @ B.T", m=1024, k=1024, n=1024, layout="nt",
                          dtype=dt))
        cases.append(dict(name="square 1024 A.T @ B", m=1024, k=1024, n=1024, layout="tn",
                          dtype=dt))
    return cases


# ---- child: one library, one thread count -----------------------------------

def operands(case: dict, np):
    rng = np.random.default_rng(0)
    m, k, n, dt = case["m"], case["k"], case["n"], case["dtype"]
    a = rng.standard_normal((k, m) if case["layout"] == "tn" else (m, k)).astype(dt)
    b = rng.standard_normal((n, k) if case["layout"] == "nt" else (k, n)).astype(dt)
    return a, b


def child(lib: str, threads: int, quick: bool) -> dict:
    import numpy as np

    min_time, repeats, settle = (0.05, 3, 0.2) if quick else (0.2, 5, 0.3)
    info: dict = {"lib": lib, "threads": threads}
    # Per library: wrap (a NumPy array as the library's array), t (the
    # transposed view, no copy), exp and total (sum over an axis); matmul is
    # `a @ b` and add `a + b` in all three.
    if lib == "needle":
        sys.path.insert(0, ROOT)
        import needle.backend_ndarray as nd
        from needle import _C

        info["config"] = _C.matmul_config()
        info["threads_used"] = nd.get_num_threads()
        wrap, t = (lambda x: nd.array(x, dtype=str(x.dtype))), (lambda x: x.permute((1, 0)))
        exp, total = (lambda x: x.exp()), (lambda x, axis: x.sum(axis=axis))
        top = (lambda x, axis: x.max(axis=axis))
    elif lib == "numpy":
        import real_openblas

        info["blas"] = real_openblas.describe()
        wrap, t, exp = (lambda x: x), (lambda x: x.T), np.exp
        total, top = (lambda x, axis: x.sum(axis=axis)), (lambda x, axis: x.max(axis=axis))
    else:
        import torch

        torch.set_num_threads(threads)
        info["torch"] = f"{torch.__version__}, {torch.get_num_threads()} threads"
        wrap, t, exp = torch.from_numpy, (lambda x: x.t()), torch.exp
        total, top = (lambda x, axis: x.sum(dim=axis)), (lambda x, axis: x.amax(dim=axis))

    def view(x, layout_t):
        return t(x) if layout_t else x

    results, repeats_gflops = {}, {}
    for case in matmul_cases(quick):
        a, b = operands(case, np)
        x, y = view(wrap(a), case["layout"] == "tn"), view(wrap(b), case["layout"] == "nt")
        fn = (lambda x=x, y=y: x @ y)
        if lib == "needle":
            got = np.asarray(fn().numpy(), dtype=np.float64)
            aa = a.T if case["layout"] == "tn" else a
            bb = b.T if case["layout"] == "nt" else b
            want = aa.astype(np.float64) @ bb.astype(np.float64)
            err = np.abs(got - want).max() / (np.abs(want).max() + 1e-30)
            if not err <= (1e-4 if case["dtype"] == "float32" else 1e-10):
                raise SystemExit(f"{case['name']} {case['dtype']}: needle differs from NumPy "
                                 f"(max error {err:.2e} of max |value|)")
        times = repeat_times(fn, repeats, min_time=min_time, settle=settle)
        key = f"matmul|{case['name']}|{case['dtype']}"
        repeats_gflops[key] = [2.0 * case["m"] * case["k"] * case["n"] / t / 1e9 for t in times]
        results[key] = max(repeats_gflops[key])

    rng = np.random.default_rng(1)
    a = rng.standard_normal(EWISE_N, dtype=np.float32)
    b = rng.standard_normal(EWISE_N, dtype=np.float32)
    x, y = wrap(a), wrap(b)
    results["ewise|add a + b|float32"] = 3 * 4 * EWISE_N / 1e9 / best_time(
        lambda: x + y, repeats, min_time=min_time, settle=settle)
    results["ewise|exp a.exp()|float32"] = 2 * 4 * EWISE_N / 1e9 / best_time(
        lambda: exp(x), repeats, min_time=min_time, settle=settle)
    a = rng.standard_normal((REDUCE_N, REDUCE_N), dtype=np.float32)
    # from memory (64 MiB), and rows of 256 that the last-level cache holds
    for (rows, cols), name, fn, axis in (((REDUCE_N, REDUCE_N), "sum", total, 0),
                                         ((REDUCE_N, REDUCE_N), "sum", total, 1),
                                         ((REDUCE_N, REDUCE_N), "max", top, 1),
                                         ((REDUCE_N, 256), "sum", total, 1),
                                         ((REDUCE_N, 256), "max", top, 1)):
        x = wrap(np.ascontiguousarray(a[:rows, :cols]))
        out = cols if axis == 0 else rows
        results[f"reduce|{name}(axis={axis}) {rows}x{cols}|float32"] = (
            4 * (rows * cols + out) / 1e9
            / best_time(lambda: fn(x, axis), repeats, min_time=min_time, settle=settle))
    info["results"] = results
    info["repeats"] = repeats_gflops  # matmul: every repeat's GFLOP/s
    return info


# ---- parent: run the children, print, write JSON ----------------------------

def run_child(lib: str, threads: int, quick: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in BAD_ENV}
    t = str(threads)
    env.update(NEEDLE_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t, OMP_NUM_THREADS=t,
               MKL_NUM_THREADS=t, PYTHONPATH=ROOT)
    argv = [os.path.abspath(__file__), "--child", lib, "--threads", t] + ["--quick"] * quick
    return run_json(argv, env, f"{lib} child ({threads} threads)")


def print_tables(threads: int, best: dict[str, dict[str, float]],
                 med: dict[str, dict[str, float]]) -> None:
    sections = {"matmul": "GFLOP/s", "ewise": "GB/s, read + written",
                "reduce": "GB/s, read + written"}
    for section, unit in sections.items():
        keys = [k for k in best["needle"] if k.startswith(section + "|")]
        print(f"\n{section}, {threads} thread(s) ({unit})")
        print(f"  {'case':<26} {'dtype':<8} {'needle':>8} {'numpy':>8} {'torch':>8}"
              f"   {'/numpy':>6} {'/torch':>6}" + ("  med/torch" if section == "matmul" else ""))
        for k in keys:
            _, name, dt = k.split("|")
            ours, theirs, tv = (best[lib][k] for lib in LIBS)
            line = (f"  {name:<26} {dt:<8} {ours:8.1f} {theirs:8.1f} {tv:8.1f}"
                    f"   {ours / theirs:6.2f} {ours / tv:6.2f}")
            if k in med["needle"]:
                line += f"  {med['needle'][k] / med['torch'][k]:9.2f}"
            print(line)


def parent(args) -> None:
    thread_counts = [int(t) for t in args.threads.split(",")]
    rounds = args.rounds or (1 if args.quick else 2)
    report: dict = {"quick": args.quick, "rounds": rounds,
                    "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                    "cpu": cpu_model(), "runs": []}
    print("needle CPU kernels beside NumPy and PyTorch, each library in its own process"
          + (" (quick)" if args.quick else ""))
    print(f"  cpu: {report['cpu']}; load average {os.getloadavg()[0]:.1f} at the start")
    for threads in thread_counts:
        best: dict[str, dict[str, float]] = {}
        repeats: dict[str, dict[str, list[float]]] = {lib: {} for lib in LIBS}
        infos: dict[str, dict] = {}
        for _ in range(rounds):
            for lib in LIBS:
                info = run_child(lib, threads, args.quick)
                infos[lib] = info
                prev = best.setdefault(lib, {})
                for k, v in info["results"].items():
                    prev[k] = max(prev.get(k, 0.0), v)
                for k, rates in info["repeats"].items():
                    repeats[lib].setdefault(k, []).extend(rates)
        # the median repeat over all rounds
        med = {lib: {k: statistics.median(rates) for k, rates in repeats[lib].items()}
               for lib in LIBS}
        if threads == thread_counts[0]:
            cfg = infos["needle"]["config"]
            print(f"  numpy: {infos['numpy']['blas']}")
            print(f"  torch: {infos['torch']['torch']}")
            blocks = ", ".join(f"{dt} MRxNR {c['mr']}x{c['nr']} MC {c['mc']} KC {c['kc']} "
                               f"NC {c['nc']} axpy m<={c['small_m']}"
                               + (f" (filling kernels from m={c['fill_m']})" if c["fill_m"]
                                  else "")
                               + (f" one row in registers up to {c['row_bytes']} B"
                                  if c["row_bytes"] else "")
                               + f" W.T swapped m>={c['swap_m']}"
                               for dt in ("float32", "float64") for c in [cfg[dt]])
            print(f"  needle: matmul kernel {cfg['kernel']} ({blocks}); caches from "
                  f"{cfg['cache_source']}: L1d {cfg['l1d'] >> 10} KiB, L2 {cfg['l2'] >> 10} KiB, "
                  f"L3 {cfg['l3'] >> 10} KiB per core "
                  f"of {cfg['llc'] >> 10} KiB; flush denormals {cfg['flush_denormals']}")
            report["needle_config"] = cfg
            report["numpy_blas"] = infos["numpy"]["blas"]
            report["torch"] = infos["torch"]["torch"]
        print_tables(threads, best, med)
        for k in best["needle"]:
            section, name, dt = k.split("|")
            run = dict(section=section, case=name, dtype=dt, threads=threads,
                       **{lib: best[lib][k] for lib in LIBS})
            if k in med["needle"]:
                run["median"] = {lib: med[lib][k] for lib in LIBS}
            report["runs"].append(run)
    if args.json:
        write_json(args.json, "bench_ndarray", report)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer sizes and repeats (minutes)")
    ap.add_argument("--threads", default="1,2", help="thread counts, e.g. 1,2")
    ap.add_argument("--rounds", type=int, default=0, help="interleaved rounds (default 2, 1 quick)")
    ap.add_argument("--json", default="", help="write the figures to this JSON file")
    ap.add_argument("--child", choices=LIBS, help=argparse.SUPPRESS)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: the same comparisons on the GPU against PyTorch there "
                         "(bench_cuda.py: matmul, elementwise, softmax, a step of each model)")
    args = ap.parse_args()
    if args.device == "cuda":
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import bench_cuda
        sys.argv = [bench_cuda.__file__] + ["--quick"] * args.quick
        sys.exit(bench_cuda.main())
    if args.child:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        print(json.dumps(child(args.child, int(args.threads), args.quick)))
    else:
        parent(args)


if __name__ == "__main__":
    main()
