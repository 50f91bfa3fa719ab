"""Where a training step's time goes on the GPU (issue 10): for each of
bench_cuda.py's models, the step's wall time (synchronized), the time the host
takes to issue it (not synchronized), and the GPU time of its kernels, summed
per kernel name (PyTorch's profiler, CUPTI, records every kernel of the process,
needle's too). Needs a GPU and torch.

    python benchmarks/profile_cuda.py [--rows 12] [MODEL-PREFIX ...]
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_cuda as bc  # noqa: E402
import needle as ndl  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", help="name prefixes (default: all)")
    ap.add_argument("--rows", type=int, default=12, help="kernels listed per model")
    ap.add_argument("--plain", action="store_true",
                    help="three steps, no profiler (to run under ncu or nsys)")
    args = ap.parse_args()
    import torch
    from torch.profiler import ProfilerActivity, profile
    dev = ndl.cuda()
    for name, model, x, y, _ in bc._models(None, dev):
        if args.models and not any(name.startswith(p) for p in args.models):
            continue
        opt = ndl.optim.Adam(model.parameters(), lr=1e-3)
        step = bc._ndl_step(model, opt, ndl.Tensor(x.astype("float32"), device=dev),
                            ndl.Tensor(y.astype("float32"), device=dev))
        for _ in range(2 if not args.plain else 3):
            step()
        bc.sync()
        if args.plain:
            continue
        t = time.perf_counter()
        step()
        issue = time.perf_counter() - t
        bc.sync()
        wall = time.perf_counter() - t
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            step()
            bc.sync()
        events = [e for e in prof.key_averages() if e.device_time_total > 0]
        gpu = sum(e.device_time_total for e in events) / 1e3
        launches = sum(e.count for e in events)
        print(f"\n{name}: wall {wall * 1e3:.2f} ms, host issue {issue * 1e3:.2f} ms, "
              f"GPU kernels {gpu:.2f} ms in {launches} launches")
        events.sort(key=lambda e: -e.device_time_total)
        for e in events[:args.rows]:
            print(f"  {e.device_time_total / 1e3:9.3f} ms {e.count:6d}x  {e.key[:110]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
