"""needle on the GPU beside PyTorch (issue 10): matmul GFLOP/s against cuBLAS
through torch (float32, float64, and float32 with TF32 tensor cores on both
sides), elementwise and fused-softmax GB/s against the GPU's memory bandwidth,
and one training step of an MLP. Needs a usable needle.cuda(); torch's columns are
printed where torch sees a GPU. Best of N; the ratio is needle / torch.

    python benchmarks/bench_cuda.py [--quick]
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import needle as ndl  # noqa: E402  (this checkout's build)
import needle.backend_ndarray as nd  # noqa: E402


def sync():
    import needle._cuda as cu
    cu.synchronize()


def best(fn, reps, sync_fn):
    fn()
    sync_fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync_fn()
        times.append(time.perf_counter() - t)
    return min(times)


def torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


def bench_matmul(reps, torch):
    print(f"{'matmul':<24}{'needle GFLOP/s':>16}{'torch GFLOP/s':>16}{'ratio':>8}")
    for dt in ("float32", "float64"):
        for n in (256, 1024, 4096):
            x = np.random.randn(n, n).astype(dt)
            a, b = nd.array(x, dtype=dt, device=nd.cuda()), nd.array(x, dtype=dt,
                                                                      device=nd.cuda())
            t = best(lambda: a @ b, reps, sync)
            ours = 2 * n ** 3 / t / 1e9
            theirs = float("nan")
            if torch is not None:
                ta = torch.tensor(x, device="cuda")
                theirs = 2 * n ** 3 / best(lambda: ta @ ta, reps, torch.cuda.synchronize) / 1e9
            print(f"{dt + f' {n}^3':<24}{ours:>16.1f}{theirs:>16.1f}{ours / theirs:>8.2f}")


def bench_tf32(reps, torch):
    import needle._cuda as cu
    print(f"{'matmul, TF32 on':<24}{'needle GFLOP/s':>16}{'torch GFLOP/s':>16}{'ratio':>8}")
    prev = cu.set_tf32(True)
    if torch is not None:
        prev_t, torch.backends.cuda.matmul.allow_tf32 = torch.backends.cuda.matmul.allow_tf32, True
    try:
        for n in (1024, 4096):
            x = np.random.randn(n, n).astype("float32")
            a = nd.array(x, device=nd.cuda())
            ours = 2 * n ** 3 / best(lambda: a @ a, reps, sync) / 1e9
            theirs = float("nan")
            if torch is not None:
                ta = torch.tensor(x, device="cuda")
                theirs = 2 * n ** 3 / best(lambda: ta @ ta, reps, torch.cuda.synchronize) / 1e9
            print(f"{f'float32 {n}^3':<24}{ours:>16.1f}{theirs:>16.1f}{ours / theirs:>8.2f}")
    finally:
        cu.set_tf32(prev)
        if torch is not None:
            torch.backends.cuda.matmul.allow_tf32 = prev_t


def bench_softmax(reps, torch):
    print(f"{'fused softmax':<24}{'needle GB/s':>16}{'torch GB/s':>16}{'ratio':>8}")
    for rows, n in ((32768, 512), (1024, 32000)):
        x = np.random.randn(rows, n).astype("float32")
        t = ndl.Tensor(x, device=ndl.cuda())
        ours = 8 * x.size / best(lambda: ndl.ops.softmax(t), reps, sync) / 1e9
        theirs = float("nan")
        if torch is not None:
            tt = torch.tensor(x, device="cuda")
            theirs = 8 * x.size / best(lambda: torch.softmax(tt, -1), reps,
                                       torch.cuda.synchronize) / 1e9
        print(f"{f'({rows}, {n})':<24}{ours:>16.1f}{theirs:>16.1f}{ours / theirs:>8.2f}")


def bench_ewise(reps, torch):
    import needle._cuda as cu
    print(f"{'elementwise (1<<26)':<24}{'needle GB/s':>16}{'torch GB/s':>16}{'ratio':>8}"
          f"   on {cu.device_name()}")
    n = 1 << 26
    x = np.random.randn(n).astype("float32")
    a = nd.array(x, device=nd.cuda())
    ta = torch.tensor(x, device="cuda") if torch is not None else None
    for name, ours_fn, theirs_fn, bytes_per in (
            ("add", lambda: a + a, lambda: ta + ta, 12), ("exp", lambda: a.exp(),
                                                          lambda: ta.exp(), 8),
            ("sum", lambda: a.sum(), lambda: ta.sum(), 4)):
        ours = bytes_per * n / best(ours_fn, reps, sync) / 1e9
        theirs = (bytes_per * n / best(theirs_fn, reps, torch.cuda.synchronize) / 1e9
                  if torch is not None else float("nan"))
        print(f"{name:<24}{ours:>16.1f}{theirs:>16.1f}{ours / theirs:>8.2f}")


def bench_mlp_step(reps):
    dev = ndl.cuda()
    model = ndl.nn.Sequential(ndl.nn.Linear(784, 1024, device=dev), ndl.nn.ReLU(),
                              ndl.nn.Linear(1024, 10, device=dev))
    opt = ndl.optim.Adam(model.parameters(), lr=1e-3)
    x = ndl.Tensor(np.random.randn(256, 784).astype("float32"), device=dev)
    y = ndl.Tensor(np.random.randint(0, 10, 256), device=dev)

    def step():
        loss = ndl.nn.SoftmaxLoss()(model(x), y)
        opt.reset_grad()
        loss.backward()
        opt.step()
    print(f"MLP 784-1024-10, batch 256, Adam: {best(step, reps, sync) * 1e3:.2f} ms/step")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = ap.parse_args()
    if not ndl.cuda().enabled():
        try:
            ndl.cuda().empty((1,))
        except RuntimeError as e:
            raise SystemExit(f"bench_cuda: {e}")
    reps = 3 if args.quick else 10
    torch = torch_cuda()
    bench_matmul(reps, torch)
    bench_tf32(reps, torch)
    bench_ewise(reps, torch)
    bench_softmax(reps, torch)
    bench_mlp_step(reps)


if __name__ == "__main__":
    main()
