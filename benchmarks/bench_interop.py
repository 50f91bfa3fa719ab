"""Checkpoints and DLPack: needle beside PyTorch and NumPy.

    python benchmarks/bench_interop.py [--quick]

(a) Saving and loading a state dict of float32 weights (about 64 MB, a few
    dozen tensors): needle.save / needle.load (safetensors) beside torch.save /
    torch.load (pickle + zip) of the same weights as torch tensors. The
    figures are seconds and MB/s; the file is in the system's temp folder, so
    the page cache makes this mostly a memory-copy and format benchmark.
(b) One DLPack hand-over, in microseconds: needle -> NumPy (np.from_dlpack),
    NumPy -> needle (needle.from_dlpack) and torch -> needle, beside
    torch -> NumPy and NumPy -> torch. Zero-copy, so the time does not grow
    with the array (checked at two sizes).

Each figure is the best of several repeats, the libraries' runs interleaved.
"""
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import needle as ndl  # noqa: E402
from needle.backend_ndarray import NDArray  # noqa: E402

QUICK = "--quick" in sys.argv
REPEATS = 3 if QUICK else 7


def best(fns, repeats=REPEATS, number=1):
    """Best time per call of each function, the functions' runs interleaved."""
    times = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            times[i] = min(times[i], (time.perf_counter() - t0) / number)
    return times


def checkpoints():
    rng = np.random.default_rng(0)
    shapes = [(1024, 1024)] * 12 + [(1024,)] * 12 + [(256, 1024)] * 16
    arrays = {f"layer{i}.weight": rng.standard_normal(s, dtype=np.float32)
              for i, s in enumerate(shapes)}
    mb = sum(a.nbytes for a in arrays.values()) / 1e6
    needle_sd = {k: ndl.Tensor(v, requires_grad=False) for k, v in arrays.items()}
    torch_sd = {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}
    with tempfile.TemporaryDirectory() as d:
        pn, pt = os.path.join(d, "n.safetensors"), os.path.join(d, "t.pt")
        save = best([lambda: ndl.save(needle_sd, pn), lambda: torch.save(torch_sd, pt)])
        load = best([lambda: ndl.load(pn), lambda: torch.load(pt, weights_only=True)])
        back = ndl.load(pn)
        assert all(back[k].numpy().tobytes() == a.tobytes() for k, a in arrays.items())
    print(f"(a) state dict of {len(arrays)} tensors, {mb:.0f} MB (best of {REPEATS})")
    print(f"    {'':6} {'needle':>16} {'torch':>16} {'needle/torch':>13}")
    for name, (n, t) in (("save", save), ("load", load)):
        print(f"    {name:6} {n:7.3f} s {mb / n:5.0f} MB/s {t:7.3f} s {mb / t:5.0f} MB/s "
              f"{n / t:12.2f}x")


def dlpack():
    print(f"(b) one DLPack hand-over, microseconds (best of {REPEATS} x 2000 calls)")
    print(f"    {'elements':>10} {'nd->np':>8} {'np->nd':>8} {'torch->nd':>9} "
          f"{'torch->np':>9} {'np->torch':>9}   needle / torch (nd->np / torch->np, "
          "np->nd / np->torch)")
    for n in (1_000, 4_000_000):
        x = np.random.randn(n).astype(np.float32)
        a, t = NDArray(x), torch.from_numpy(x.copy())
        fns = [lambda: np.from_dlpack(a), lambda: ndl.from_dlpack(x),
               lambda: ndl.from_dlpack(t), lambda: np.from_dlpack(t),
               lambda: torch.from_dlpack(x)]
        us = [s * 1e6 for s in best(fns, number=2000)]
        print(f"    {n:10d} " + " ".join(f"{u:8.2f}" if i < 2 else f"{u:9.2f}"
                                         for i, u in enumerate(us))
              + f"   export {us[0] / us[3]:.2f}x torch's, import {us[1] / us[4]:.2f}x torch's")


if __name__ == "__main__":
    checkpoints()
    dlpack()
