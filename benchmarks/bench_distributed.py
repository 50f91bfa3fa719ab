"""Data-parallel training over MPI (issue 15): 1 rank vs 2 ranks, and the all-reduce.

    python benchmarks/bench_distributed.py [--samples 60000] [--hidden 512] [--batch 128]

Starts `mpirun -np 1` and `mpirun -np 2` of itself (every rank single-threaded,
NEEDLE_NUM_THREADS=1, so both runs use the same cores: 2 ranks on 2 cores)
and prints:

1. one epoch of MLPResNet on Fashion-MNIST (global batch 128: 128 on one
   rank, 64 per rank on two), samples/s and the speed-up of 2 ranks;
2. the all-reduce of a float32 buffer the size of the model's gradients on
   loopback: needle's `all_reduce` (in place on an NDArray), DDP's buckets
   (blocking `Allreduce` each, as after the walk; `Iallreduce` each, as
   during it), and mpi4py's own `Allreduce` of the same buffer (algorithm
   bandwidth = bytes / time; best and median of N, interleaved);
3. the communication hidden behind backward, for a few bucket sizes: steps
   alternate between overlap on and off; the time spent waiting for the
   reductions after the walk, and hidden = 1 - that wait with overlap / the
   wait without (when every reduction starts after the walk).

Timings on a shared machine are noisy: best-of-N and medians, interleaved.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "apps")]


def load_data(samples: int):
    """Fashion-MNIST's first `samples` training images (random data if it is missing)."""
    import needle as ndl
    from train_fashion_mnist import DEFAULT_DIRS, FILES

    for d in DEFAULT_DIRS:
        paths = [os.path.join(d, FILES[k] + ".gz") for k in ("train_images", "train_labels")]
        if all(os.path.exists(p) for p in paths):
            ds = ndl.data.MNISTDataset(*paths)
            ds.X, ds.y = ds.X[:samples], ds.y[:samples]
            return ds, "Fashion-MNIST"
    rng = np.random.RandomState(0)
    return (ndl.data.NDArrayDataset(rng.rand(samples, 784).astype(np.float32),
                                    rng.randint(0, 10, samples)), "random data")


def worker(args) -> None:
    import needle as ndl
    import needle.distributed as dist
    from mlp_resnet import MLPResNet
    from mpi4py import MPI

    dist.init()
    rank, world = dist.rank(), dist.world_size()
    train, source = load_data(args.samples)
    np.random.seed(0)
    ddp = dist.DistributedDataParallel(MLPResNet(784, args.hidden, num_blocks=3, drop_prob=0.1))
    params = ddp.parameters()
    opt = ndl.optim.Adam(params, lr=1e-3)
    sampler = dist.DistributedSampler(train, shuffle=True, seed=0)
    loader = ndl.data.DataLoader(train, args.batch // world, sampler=sampler)
    loss_fn = ndl.nn.SoftmaxLoss()

    def step(model, X, y):
        opt.reset_grad()
        loss_fn(model(X), y).backward(create_graph=False)
        opt.step()

    batches = iter(loader)
    for _ in range(3):  # warm-up
        step(ddp, *next(batches))
    dist.barrier()
    start = time.perf_counter()
    for X, y in loader:
        step(ddp, X, y)
    dist.barrier()
    epoch_s = time.perf_counter() - start
    res = {"world": world, "epoch_s": epoch_s, "samples": len(sampler) * world,
           "source": source, "nparams": int(sum(np.prod(p.shape) for p in params))}
    if world > 1:
        res.update(measure_comm(args, dist, ddp, step, loader, MPI, res["nparams"]))
    if rank == 0:
        with open(args.out, "w") as f:
            json.dump(res, f)


def measure_comm(args, dist, ddp, step, loader, MPI, nparams) -> dict:
    import needle as ndl

    comm = MPI.COMM_WORLD
    nd = ndl.backend_ndarray.array(np.ones(nparams, np.float32))
    buf = np.ones(nparams, np.float32)
    buckets = ddp._state.buckets

    def blocking():  # DDP's path for the buckets left when the walk ends
        for b in buckets:
            comm.Allreduce(MPI.IN_PLACE, b.view, op=MPI.SUM)

    def nonblocking():  # DDP's path for the buckets started during the walk
        MPI.Request.Waitall([comm.Iallreduce(MPI.IN_PLACE, b.view, op=MPI.SUM)
                             for b in buckets])

    runs = {"needle all_reduce": lambda: dist.all_reduce(nd),
            "DDP buckets, Allreduce": blocking,
            "DDP buckets, Iallreduce": nonblocking,
            "mpi4py Allreduce": lambda: comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)}
    times = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():  # interleaved
            comm.Barrier()
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {"allreduce_s": {k: (min(v), float(np.median(v))) for k, v in times.items()},
            "bytes": 4 * nparams,
            "overlap": [measure_overlap(args, dist, ddp.module, step, loader, comm, mb)
                        for mb in args.bucket_mb]}


def measure_overlap(args, dist, module, step, loader, comm, bucket_mb) -> dict:
    """Steps alternating DDP(overlap=True) and (overlap=False), buckets of bucket_mb."""
    ddp = dist.DistributedDataParallel(module, bucket_mb=bucket_mb,
                                       first_bucket_mb=min(1.0, bucket_mb))
    waits = {True: [], False: []}
    steps = {True: [], False: []}
    batches = iter(loader)
    for i in range(2 * args.overlap_steps):
        mode = i % 2 == 0
        ddp.overlap = mode
        X, y = next(batches, None) or next(iter(loader))
        comm.Barrier()
        t = time.perf_counter()
        step(ddp, X, y)
        steps[mode].append(time.perf_counter() - t)
        waits[mode].append(ddp.comm_wait_s)
    return {"bucket_mb": bucket_mb, "buckets": ddp.num_buckets,
            "wait_overlap_s": float(np.median(waits[True])),
            "wait_after_s": float(np.median(waits[False])),
            "step_overlap_s": float(np.median(steps[True])),
            "step_after_s": float(np.median(steps[False]))}


def launch(ranks: int, args, out: str) -> dict:
    env = dict(os.environ, NEEDLE_NUM_THREADS="1", PYTHONPATH=ROOT, OMP_NUM_THREADS="1",
               OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd = [shutil.which("mpirun"), "--oversubscribe", "--bind-to", "none", "-np", str(ranks),
           sys.executable, os.path.abspath(__file__), "--worker", "--out", out,
           "--samples", str(args.samples), "--hidden", str(args.hidden),
           "--batch", str(args.batch), "--repeats", str(args.repeats),
           "--overlap-steps", str(args.overlap_steps),
           "--bucket-mb", *map(str, args.bucket_mb)]
    subprocess.run(cmd, env=env, check=True, timeout=3600)
    with open(out) as f:
        return json.load(f)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=60000, help="samples in the epoch")
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--batch", type=int, default=128, help="global batch (split over ranks)")
    ap.add_argument("--repeats", type=int, default=20, help="all-reduce timings (best of)")
    ap.add_argument("--overlap-steps", type=int, default=20, help="steps per overlap mode")
    ap.add_argument("--bucket-mb", type=float, nargs="+", default=[25.0, 1.0, 0.25],
                    help="DDP bucket sizes to measure the overlap with")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)
    if shutil.which("mpirun") is None:
        sys.exit("bench_distributed: needs OpenMPI's mpirun and mpi4py (`make mpi`)")
    with tempfile.TemporaryDirectory() as tmp:
        one = launch(1, args, os.path.join(tmp, "one.json"))
        two = launch(2, args, os.path.join(tmp, "two.json"))
    print(f"MLPResNet(784, {args.hidden}, 3 blocks): {one['nparams']:,} parameters; "
          f"{one['samples']} samples of {one['source']}, global batch {args.batch}, "
          f"1 thread per rank")
    print(f"{'ranks':>5} {'epoch s':>9} {'samples/s':>10}")
    for r in (one, two):
        print(f"{r['world']:>5} {r['epoch_s']:>9.2f} {r['samples'] / r['epoch_s']:>10,.0f}")
    rate = [r["samples"] / r["epoch_s"] for r in (one, two)]
    print(f"speed-up of 2 ranks: {rate[1] / rate[0]:.2f}x")
    mb = two["bytes"] / 2**20
    base = two["allreduce_s"]["mpi4py Allreduce"]
    print(f"\nall-reduce of {mb:.1f} MB float32 on 2 ranks (loopback), {args.repeats} runs "
          f"interleaved: best (GB/s), median; needle / mpi4py time ratios")
    for name, (best, med) in two["allreduce_s"].items():
        print(f"  {name:<26} best {1e3 * best:7.2f} ms ({mb / 1024 / best:5.2f} GB/s, "
              f"{best / base[0]:5.2f}x)  median {1e3 * med:7.2f} ms ({med / base[1]:5.2f}x)")
    print(f"\nDDP on 2 ranks, steps alternating overlap on/off, median of "
          f"{args.overlap_steps} each: the wait for the reductions after backward")
    print(f"{'bucket MB':>9} {'buckets':>7} {'wait, overlap':>14} {'wait, after':>12} "
          f"{'hidden':>7} {'step, overlap':>14} {'step, after':>12}")
    for o in two["overlap"]:
        hidden = 1 - o["wait_overlap_s"] / max(o["wait_after_s"], 1e-12)
        print(f"{o['bucket_mb']:>9g} {o['buckets']:>7} {1e3 * o['wait_overlap_s']:>11.2f} ms "
              f"{1e3 * o['wait_after_s']:>9.2f} ms {100 * hidden:>6.0f}% "
              f"{1e3 * o['step_overlap_s']:>11.1f} ms {1e3 * o['step_after_s']:>9.1f} ms")


if __name__ == "__main__":
    main()
