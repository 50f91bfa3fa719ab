"""One Fashion-MNIST training epoch: needle vs PyTorch, side by side.

    python benchmarks/bench_train_mlp.py [--hidden 100 512] [--natural-hidden 256]
        [--batch-size 128] [--threads N] [--repeat N] [--json FILE]

Two loops. "resnet": MLPResNet (Linear, ReLU, 3 residual blocks with
BatchNorm and Dropout 0.1) at each --hidden, both libraries fed the same
shuffled batches of pre-stacked arrays, needle with backward(create_graph=False).
"natural" (issue 14 item 2): a 784-H-H-10 MLP at each --natural-hidden,
needle written as a user writes it (DataLoader over MNISTDataset with
shuffle=True, opt.reset_grad(), loss.backward(), opt.step()), PyTorch over
pre-stacked tensors as its users write it (zero_grad, backward, step).
"nograph": the same with needle's loss.backward(create_graph=False). The
default backward records the gradients' graph (API.md 3.7), whose reference
cycles wait for Python's cyclic GC (API.md 3.1 requires them); their arrays
are freed at the next backward (Note [Reclaiming garbage graphs' data],
csrc/autograd/tensor_reclaim.c), so both loops' "train MB" is one step's. Adam
lr 1e-3, batch 128, float32, on Debian's dataset-fashion-mnist.

Each (loop, library, size) runs in its own process so that peak memory is
its own: seconds per epoch, samples/s, the peak RSS during the epoch and the
memory the training itself added (that peak minus the RSS just before the
epoch, with data and model loaded; the kernel's peak counter is reset
there), and the ratios needle / torch (lower is better for both). With
--repeat N the runs of the two libraries alternate N times and each figure
is the best (lowest) of its N: the machine may be shared. --json writes the
rows.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import real_openblas  # noqa: E402,F401  (restarts without the OPENBLAS_* overrides)
from _common import peak_mb, reset_peak, run_child as run_json, write_json  # noqa: E402

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = "/usr/share/datasets/fashion-mnist"


def load(kind: str):
    with gzip.open(os.path.join(DATA, f"{kind}-images-idx3-ubyte.gz")) as f:
        X = np.frombuffer(f.read()[16:], np.uint8).reshape(-1, 784).astype(np.float32) / 255
    with gzip.open(os.path.join(DATA, f"{kind}-labels-idx1-ubyte.gz")) as f:
        y = np.frombuffer(f.read()[8:], np.uint8).copy()
    return X, y


def timed(epoch, threads: int) -> dict:
    """Run epoch() once, from a reset peak-RSS count: seconds, RSS before, last loss."""
    base = reset_peak()
    start = time.perf_counter()
    loss = epoch()
    return {"seconds": time.perf_counter() - start, "base_mb": base, "threads": threads,
            "loss": float(loss)}


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

    def epoch():
        for xb, yb in loader:
            loss = loss_fn(model(xb), yb)
            opt.reset_grad()
            loss.backward(create_graph=False)
            opt.step()
        return loss.numpy()
    return timed(epoch, ndl.backend_ndarray.get_num_threads())


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

    def epoch():
        perm = torch.from_numpy(np.random.permutation(len(X)))
        for i in range(0, len(X), batch):
            idx = perm[i:i + batch]
            loss = loss_fn(model(Xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        return loss.detach()
    return timed(epoch, torch.get_num_threads())


def run_natural_needle(hidden: int, batch: int, create_graph: bool = True) -> dict:
    """The loop as a user writes it: DataLoader over MNISTDataset, reset_grad, backward, step.

    create_graph=False: the same with ``loss.backward(create_graph=False)``."""
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

    def epoch():
        for xb, yb in loader:
            opt.reset_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward(create_graph=create_graph)
            opt.step()
        return loss.numpy()
    return timed(epoch, ndl.backend_ndarray.get_num_threads())


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

    def epoch():
        perm = torch.randperm(len(Xt))
        for i in range(0, len(Xt), batch):
            idx = perm[i:i + batch]
            opt.zero_grad()
            loss = loss_fn(model(Xt[idx]), yt[idx])
            loss.backward()
            opt.step()
        return loss.detach()
    return timed(epoch, torch.get_num_threads())


RUNNERS = {"needle": run_needle, "torch": run_torch,
           "natural-needle": run_natural_needle, "natural-torch": run_natural_torch,
           "nograph-needle": lambda h, b: run_natural_needle(h, b, create_graph=False),
           "nograph-torch": run_natural_torch}


def child(impl: str, hidden: int, batch: int) -> None:
    res = RUNNERS[impl](hidden, batch)
    res["peak_mb"] = peak_mb()
    res["train_mb"] = res["peak_mb"] - res["base_mb"]
    res["samples_per_s"] = 60000 / res["seconds"]
    print(json.dumps(res))


def run_child(impl: str, hidden: int, batch: int, env: dict) -> dict:
    return run_json([__file__, "--child", impl, str(hidden), str(batch)], env, f"{impl} run")


def compare(loop: str, hidden: int, args, env: dict) -> dict:
    """Both libraries' best-of-N figures for one loop and size, printed."""
    impls = ("needle", "torch") if loop == "resnet" else (f"{loop}-needle", f"{loop}-torch")
    runs = {impl: [] for impl in impls}
    for _ in range(args.repeat):
        for impl in impls:
            runs[impl].append(run_child(impl, hidden, args.batch_size, env))
    rows = {}
    for impl in impls:
        best = {k: min(r[k] for r in runs[impl]) for k in ("seconds", "peak_mb", "train_mb")}
        best.update(threads=runs[impl][0]["threads"], samples_per_s=60000 / best["seconds"],
                    all_seconds=[r["seconds"] for r in runs[impl]])
        lib = impl.split("-")[-1]
        rows[lib] = best
        print(f"{loop:>8} {hidden:>6} {lib:>8} {best['seconds']:>8.2f} "
              f"{best['samples_per_s']:>10,.0f} {best['peak_mb']:>8.0f} {best['train_mb']:>8.1f} "
              f"{best['threads']:>7}")
    n, t = rows["needle"], rows["torch"]
    ratio = {"seconds": n["seconds"] / t["seconds"], "peak_mb": n["peak_mb"] / t["peak_mb"],
             "train_mb": n["train_mb"] / max(t["train_mb"], 1e-9)}
    print(f"{loop:>8} {hidden:>6} {'ratio':>8} {ratio['seconds']:>7.2f}x {'':>10} "
          f"{ratio['peak_mb']:>7.2f}x {ratio['train_mb']:>7.2f}x"
          f"   (needle / torch; target <= 1.0x time, no more memory)")
    return {"loop": loop, "hidden": hidden, "batch_size": args.batch_size, "needle": n,
            "torch": t, "ratio": ratio}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, nargs="*", default=[100, 512],
                    help="MLPResNet hidden sizes")
    ap.add_argument("--natural-hidden", type=int, nargs="*", default=[256],
                    help="hidden sizes of the natural-loop 784-H-H-10 MLP")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="threads for both libraries")
    ap.add_argument("--repeat", type=int, default=1, help="alternating runs; best of N")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    ap.add_argument("--child", nargs=3, metavar=("IMPL", "HIDDEN", "BATCH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), int(args.child[2]))
        return
    env = dict(os.environ)
    if args.threads:
        env.update(NEEDLE_NUM_THREADS=str(args.threads), OMP_NUM_THREADS=str(args.threads))
    print(f"NumPy BLAS: {real_openblas.describe()}; one epoch = 60,000 images, "
          f"batch {args.batch_size}, Adam; best of {args.repeat}")
    print(f"{'loop':>8} {'hidden':>6} {'library':>8} {'s/epoch':>8} {'samples/s':>10} "
          f"{'peak MB':>8} {'train MB':>8} {'threads':>7}")
    results = [compare("resnet", h, args, env) for h in args.hidden]
    results += [compare(loop, h, args, env) for loop in ("natural", "nograph")
                for h in args.natural_hidden]
    if args.json:
        write_json(args.json, "bench_train_mlp", {"threads": args.threads,
                                                  "blas": real_openblas.describe(),
                                                  "results": results})


if __name__ == "__main__":
    main()
