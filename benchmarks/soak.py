"""Soak: long training runs that must not grow in memory (issue 13, item 4).

    python benchmarks/soak.py              # MLP 10,000 steps, LSTM LM 1,000, Transformer 500
    python benchmarks/soak.py --scale 0.1  # a tenth of each (a quick look)

Each run samples the process's resident memory (psutil) and the live-tensor
count (needle.autograd.TENSOR_COUNTER, after gc.collect()) every `--every`
steps, fits a line to the samples after the first quarter (warm-up: allocator
pools, first-touch pages), and prints the slopes. It fails loudly (exit 1)
when the live-tensor count grows at all, or the RSS fit grows by more than
`--rss-mb` over the measured window. The language models are apps/models.py's
LanguageModel with seq_model='lstm' and 'transformer' (needle.nn.Transformer).
Synthetic data (seeded), so the figures depend on nothing but the code.
"""
import argparse
import gc
import sys
import time

import numpy as np
import psutil

import needle as ndl
from needle import nn

PROC = psutil.Process()


def rss_mb() -> float:
    return PROC.memory_info().rss / 2**20


def live_tensors() -> int:
    gc.collect()
    return ndl.autograd.TENSOR_COUNTER


def mlp_step_fn(seed: int):
    rng = np.random.default_rng(seed)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.BatchNorm1d(128), nn.Dropout(0.1),
                          nn.Linear(128, 10))
    opt = ndl.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.SoftmaxLoss()
    X = rng.standard_normal((512, 64)).astype(np.float32)
    y = rng.integers(0, 10, 512)

    def step(i: int) -> float:
        j = (i * 32) % 512
        opt.reset_grad()
        loss = loss_fn(model(ndl.Tensor(X[j:j + 32])), ndl.Tensor(y[j:j + 32]))
        loss.backward()
        opt.step()
        return float(loss.numpy())
    return step


def lm_step_fn(seed: int, seq_model: str):
    sys.path.insert(0, "apps")
    from models import LanguageModel
    rng = np.random.default_rng(seed)
    vocab, T, bs = 200, 12, 8
    kw = dict(seq_len=T) if seq_model == "transformer" else {}
    model = LanguageModel(32, vocab, 48, num_layers=2, seq_model=seq_model, **kw)
    opt = ndl.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = nn.SoftmaxLoss()
    data = rng.integers(0, vocab, 4096)

    def step(i: int) -> float:
        j = (i * T * bs) % (data.size - T * bs - 1)
        x = data[j:j + T * bs].reshape(T, bs)
        y = data[j + 1:j + 1 + T * bs]
        opt.reset_grad()
        logits, _ = model(ndl.Tensor(x.astype(np.float32)))
        loss = loss_fn(logits, ndl.Tensor(y))
        loss.backward()
        opt.step()
        return float(loss.numpy())
    return step


def slope(xs, ys) -> float:
    """Least-squares slope of ys over xs."""
    return float(np.polyfit(np.asarray(xs, float), np.asarray(ys, float), 1)[0])


def soak(name: str, step, steps: int, every: int, rss_limit: float) -> bool:
    xs, rss, live = [], [], []
    t0 = time.perf_counter()
    loss = float("nan")
    for i in range(steps):
        loss = step(i)
        if (i + 1) % every == 0 or i + 1 == steps:
            xs.append(i + 1)
            live.append(live_tensors())
            rss.append(rss_mb())
    secs = time.perf_counter() - t0
    k = max(len(xs) // 4, 1)  # warm-up samples left out of the fit
    mx, mr, ml = xs[k:], rss[k:], live[k:]
    if len(mx) < 2:
        mx, mr, ml = xs, rss, live
    rss_slope = slope(mx, mr) * 1000 if len(mx) > 1 else 0.0
    live_slope = slope(mx, ml) * 1000 if len(mx) > 1 else 0.0
    rss_growth = rss_slope * (mx[-1] - mx[0]) / 1000
    ok = max(ml) <= ml[0] and rss_growth <= rss_limit
    print(f"{name:12s} {steps:6d} steps {secs:7.1f} s  loss {loss:7.3f}  "
          f"RSS {rss[0]:7.1f} -> {rss[-1]:7.1f} MB (slope {rss_slope:+7.3f} MB/1k steps, "
          f"fit growth {rss_growth:+6.2f} MB)  live tensors {live[0]} -> {live[-1]} "
          f"(slope {live_slope:+.3f}/1k steps)  {'ok' if ok else 'GROWS'}", flush=True)
    if not ok:
        print(f"FAIL: {name} memory grows: live tensors {ml[0]} -> {max(ml)} after warm-up, "
              f"RSS fit +{rss_growth:.2f} MB over {mx[-1] - mx[0]} steps "
              f"(limit {rss_limit} MB); samples: {list(zip(xs, rss, live))}", file=sys.stderr)
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of each run's steps")
    ap.add_argument("--samples", type=int, default=20, help="samples per run")
    ap.add_argument("--rss-mb", type=float, default=8.0,
                    help="most RSS growth (of the fitted line, after warm-up) allowed per run")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    np.random.seed(args.seed)
    runs = [("MLP", lambda: mlp_step_fn(args.seed), 10_000),
            ("LSTM LM", lambda: lm_step_fn(args.seed, "lstm"), 1_000),
            ("Transformer", lambda: lm_step_fn(args.seed, "transformer"), 500)]
    ok = True
    for name, make, steps in runs:
        n = max(int(steps * args.scale), 4)
        ok &= soak(name, make(), n, max(n // args.samples, 1), args.rss_mb)
    print("soak: OK" if ok else "soak: FAILED (memory grows)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
