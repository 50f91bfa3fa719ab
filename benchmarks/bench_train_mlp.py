"""One Fashion-MNIST training epoch of MLPResNet: needle vs PyTorch, side by side.

    python benchmarks/bench_train_mlp.py [--hidden 100 512] [--batch-size 128] [--threads N]

Each (library, hidden size) runs in its own process so that peak memory is
its own: seconds per epoch, samples/s, the peak RSS during the epoch and the
memory the training itself added (that peak minus the RSS just before the
epoch, with data and model loaded; the kernel's peak counter is reset
there), and the ratios
needle / torch (lower is better for both). Same model (Linear, ReLU, 3
residual blocks with BatchNorm and Dropout 0.1), Adam lr 1e-3, batch 128,
shuffled, float32, on Debian's dataset-fashion-mnist.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import real_openblas  # noqa: E402,F401  (restarts without the OPENBLAS_* overrides)

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = "/usr/share/datasets/fashion-mnist"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def reset_peak() -> float:
    """Restart the kernel's peak-RSS count (VmHWM) here; returns the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return rss_mb()


def peak_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load(kind: str):
    with gzip.open(os.path.join(DATA, f"{kind}-images-idx3-ubyte.gz")) as f:
        X = np.frombuffer(f.read()[16:], np.uint8).reshape(-1, 784).astype(np.float32) / 255
    with gzip.open(os.path.join(DATA, f"{kind}-labels-idx1-ubyte.gz")) as f:
        y = np.frombuffer(f.read()[8:], np.uint8).copy()
    return X, y


def run_needle(hidden: int, batch: int) -> dict:
    sys.path[:0] = [ROOT, os.path.join(ROOT, "apps")]
    import needle as ndl
    from mlp_resnet import MLPResNet

    X, y = load("train")
    loader = ndl.data.DataLoader(ndl.data.NDArrayDataset(X, y), batch, shuffle=True)
    model = MLPResNet(784, hidden)
    opt = ndl.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = ndl.nn.SoftmaxLoss()
    model.train()
    base = reset_peak()
    start = time.perf_counter()
    for xb, yb in loader:
        loss = loss_fn(model(xb), yb)
        opt.reset_grad()
        loss.backward(create_graph=False)
        opt.step()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "base_mb": base, "threads": ndl.backend_ndarray.get_num_threads(),
            "loss": float(loss.numpy())}


def run_torch(hidden: int, batch: int) -> dict:
    import torch
    import torch.nn as tnn

    class Residual(tnn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, x):
            return self.fn(x) + x

    def block(dim, h):
        return tnn.Sequential(Residual(tnn.Sequential(
            tnn.Linear(dim, h), tnn.BatchNorm1d(h), tnn.ReLU(), tnn.Dropout(0.1),
            tnn.Linear(h, dim), tnn.BatchNorm1d(dim))), tnn.ReLU())

    X, y = load("train")
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    model = tnn.Sequential(tnn.Linear(784, hidden), tnn.ReLU(),
                           *[block(hidden, hidden // 2) for _ in range(3)],
                           tnn.Linear(hidden, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = tnn.CrossEntropyLoss()
    model.train()
    base = reset_peak()
    start = time.perf_counter()
    perm = torch.from_numpy(np.random.permutation(len(X)))
    for i in range(0, len(X), batch):
        idx = perm[i:i + batch]
        loss = loss_fn(model(Xt[idx]), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "base_mb": base, "threads": torch.get_num_threads(),
            "loss": float(loss)}


def run_natural_needle(hidden: int, batch: int) -> dict:
    """The loop as a user writes it: DataLoader over MNISTDataset, reset_grad, backward, step."""
    sys.path.insert(0, ROOT)
    import needle as ndl

    ds = ndl.data.MNISTDataset(os.path.join(DATA, "train-images-idx3-ubyte.gz"),
                               os.path.join(DATA, "train-labels-idx1-ubyte.gz"))
    loader = ndl.data.DataLoader(ds, batch_size=batch, shuffle=True)
    nn = ndl.nn
    model = nn.Sequential(nn.Linear(784, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                          nn.Linear(hidden, 10))
    opt = ndl.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.SoftmaxLoss()
    base = reset_peak()
    start = time.perf_counter()
    for xb, yb in loader:
        opt.reset_grad()
        loss = loss_fn(model(xb), yb)
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "base_mb": base, "threads": ndl.backend_ndarray.get_num_threads(),
            "loss": float(loss.numpy())}


def run_natural_torch(hidden: int, batch: int) -> dict:
    """The same MLP in PyTorch over pre-stacked tensors (as its users write it)."""
    import torch
    import torch.nn as tnn

    X, y = load("train")
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y.astype(np.int64))
    model = tnn.Sequential(tnn.Linear(784, hidden), tnn.ReLU(), tnn.Linear(hidden, hidden),
                           tnn.ReLU(), tnn.Linear(hidden, 10))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = tnn.CrossEntropyLoss()
    base = reset_peak()
    start = time.perf_counter()
    perm = torch.randperm(len(Xt))
    for i in range(0, len(Xt), batch):
        idx = perm[i:i + batch]
        opt.zero_grad()
        loss = loss_fn(model(Xt[idx]), yt[idx])
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "base_mb": base, "threads": torch.get_num_threads(),
            "loss": float(loss)}


RUNNERS = {"needle": run_needle, "torch": run_torch,
           "natural-needle": run_natural_needle, "natural-torch": run_natural_torch}


def child(impl: str, hidden: int, batch: int) -> None:
    res = RUNNERS[impl](hidden, batch)
    res["peak_mb"] = peak_mb()
    res["train_mb"] = res["peak_mb"] - res["base_mb"]
    res["samples_per_s"] = 60000 / res["seconds"]
    print(json.dumps(res))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, nargs="+", default=[100, 512])
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="threads for both libraries")
    ap.add_argument("--child", nargs=3, metavar=("IMPL", "HIDDEN", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return
    env = dict(os.environ)
    if args.threads:
        env.update(NEEDLE_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    print(f"NumPy BLAS: {real_openblas.describe()}; one epoch = 60,000 images, "
          f"batch {args.batch_size}, Adam")
    print(f"{'hidden':>6} {'library':>8} {'s/epoch':>8} {'samples/s':>10} {'peak MB':>8} "
          f"{'train MB':>8} {'threads':>7}")
    for hidden in args.hidden:
        rows = {}
        for impl in ("needle", "torch"):
            out = subprocess.run([sys.executable, __file__, "--child", impl, str(hidden),
                                  str(args.batch_size)], env=env, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{impl} run failed:\n{out.stderr}")
            r = rows[impl] = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"{hidden:>6} {impl:>8} {r['seconds']:>8.2f} {r['samples_per_s']:>10,.0f} "
                  f"{r['peak_mb']:>8.0f} {r['train_mb']:>8.1f} {r['threads']:>7}")
        n, t = rows["needle"], rows["torch"]
        print(f"{hidden:>6} {'ratio':>8} {n['seconds'] / t['seconds']:>7.2f}x {'':>10} "
              f"{n['peak_mb'] / t['peak_mb']:>7.2f}x {n['train_mb'] / max(t['train_mb'], 1e-9):>7.2f}x"
              f"   (needle / torch; target <= 1.0x time, no more memory)")


if __name__ == "__main__":
    main()
