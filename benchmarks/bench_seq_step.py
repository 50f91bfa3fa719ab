"""One training step of an LSTM language model: needle vs PyTorch, side by side.

    python benchmarks/bench_seq_step.py [--layers 2] [--hidden 256] [--embed 256]
        [--seq-len 40] [--batch 32] [--vocab 10000] [--steps 5] [--repeats 2] [--threads N]
        [--model lstm|rnn] [--create-graph] [--profile] [--fast-one-hot] [--json PATH]

Embedding -> LSTM (or RNN) -> Linear -> softmax cross-entropy, then
backward and one SGD step, on random token ids (float32, initial state
zeros). Each library runs in its own process, --repeats times, alternated
(the machine's load changes); the median and best seconds per step over
--steps steps (after one warm-up step) and the ratios needle / torch are
printed (target: at most 1.5x). needle's backward is backward(create_graph=
False) unless --create-graph (the course's plain backward(), which also
records the gradient graph). --profile prints needle's top functions
(cProfile, with the time spent inside C ops attributed to their Python
callers). --fast-one-hot replaces needle's init.one_hot (which SoftmaxLoss
calls, and which builds np.eye(vocab)) by a same-valued scatter, to show the
step without that cost. Memory: the peak resident set during the steps
("peak MB") and what the steps added to it ("train MB": that peak minus the
RSS before the first step, with model and data loaded), best of the runs.
--json writes the figures to PATH (`make bench`: benchmarks/results/).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import real_openblas  # noqa: E402,F401  (restarts without the OPENBLAS_* overrides)
from _common import peak_mb, reset_peak, run_child, write_json  # noqa: E402

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data(a):
    rng = np.random.default_rng(0)
    x = rng.integers(0, a.vocab, size=(a.seq_len, a.batch))
    y = rng.integers(0, a.vocab, size=(a.seq_len * a.batch,))
    return x, y


def timed_steps(step, steps: int) -> dict:
    """steps + 1 calls of step() (the first a warm-up): seconds of the rest, the last
    loss, and the memory the steps took."""
    base = reset_peak()
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    peak = peak_mb()
    return {"times": times[1:], "loss": loss, "peak_mb": peak, "train_mb": peak - base}


def run_needle(a) -> dict:
    sys.path.insert(0, ROOT)
    import needle as ndl
    import needle.nn as nn

    if a.fast_one_hot:
        # NOTE: the device's one_hot is np.eye(n)[i] (n x n float64, 800 MB for
        # n = 10,000) and dominates SoftmaxLoss; this stand-in gives the same
        # values, to show the step without that cost.
        def one_hot(n, i, device=None, dtype="float32", requires_grad=False):
            labels = i.numpy().astype("int64").reshape(-1)
            rows = np.zeros((labels.size, n), dtype=dtype)
            rows[np.arange(labels.size), labels] = 1
            return ndl.Tensor(rows.reshape(tuple(i.shape) + (n,)), device=device,
                              dtype=dtype, requires_grad=requires_grad)
        ndl.init.one_hot = one_hot

    np.random.seed(0)
    emb = nn.Embedding(a.vocab, a.embed)
    if a.model == "lstm":
        seq = nn.LSTM(a.embed, a.hidden, num_layers=a.layers)
    else:
        seq = nn.RNN(a.embed, a.hidden, num_layers=a.layers)
    lin = nn.Linear(a.hidden, a.vocab)
    params = emb.parameters() + seq.parameters() + lin.parameters()
    opt = ndl.optim.SGD(params, lr=0.1)
    loss_fn = nn.SoftmaxLoss()
    xn, yn = data(a)
    x = ndl.Tensor(xn, requires_grad=False)
    y = ndl.Tensor(yn, requires_grad=False)

    def step():
        out, _ = seq(emb(x))
        loss = loss_fn(lin(out.reshape((a.seq_len * a.batch, a.hidden))), y)
        opt.reset_grad()
        loss.backward(create_graph=a.create_graph)
        opt.step()
        return loss

    res = timed_steps(step, a.steps)
    if a.profile:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.runcall(step)
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(15)
    return dict(res, loss=float(res["loss"].numpy()),
                threads=ndl.backend_ndarray.get_num_threads())


def run_torch(a) -> dict:
    import torch
    import torch.nn as tnn

    torch.manual_seed(0)
    emb = tnn.Embedding(a.vocab, a.embed)
    seq = (tnn.LSTM if a.model == "lstm" else tnn.RNN)(a.embed, a.hidden, num_layers=a.layers)
    lin = tnn.Linear(a.hidden, a.vocab)
    params = list(emb.parameters()) + list(seq.parameters()) + list(lin.parameters())
    opt = torch.optim.SGD(params, lr=0.1)
    loss_fn = tnn.CrossEntropyLoss()
    xn, yn = data(a)
    x, y = torch.from_numpy(xn), torch.from_numpy(yn)

    def step():
        out, _ = seq(emb(x))
        loss = loss_fn(lin(out.reshape(a.seq_len * a.batch, a.hidden)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    res = timed_steps(step, a.steps)
    return dict(res, loss=float(res["loss"]), threads=torch.get_num_threads())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=("lstm", "rnn"), default="lstm")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--embed", type=int, default=256)
    ap.add_argument("--seq-len", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=10000)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each library, alternated")
    ap.add_argument("--threads", type=int, default=None, help="threads for both libraries")
    ap.add_argument("--create-graph", action="store_true")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--fast-one-hot", action="store_true",
                    help="needle: SoftmaxLoss's one_hot without np.eye(vocab) (same values)")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    ap.add_argument("--child", choices=("needle", "torch"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps((run_needle if a.child == "needle" else run_torch)(a)))
        return
    env = dict(os.environ)
    if a.threads:
        env.update(NEEDLE_NUM_THREADS=str(a.threads), OMP_NUM_THREADS=str(a.threads))
    print(f"{a.model.upper()} language model step: vocab {a.vocab}, embed {a.embed}, "
          f"hidden {a.hidden}, {a.layers} layers, seq {a.seq_len}, batch {a.batch}; "
          f"{a.steps} steps per run, {a.repeats} runs each")
    res = {"needle": [], "torch": []}
    mem = {"needle": [], "torch": []}
    for _ in range(a.repeats):  # alternate, so that both see the same machine load
        for impl in ("needle", "torch"):
            argv = [__file__, *[x for x in sys.argv[1:] if x != "--json" and x != a.json],
                    "--child", impl]
            r = run_child(argv, env, f"{impl} run", echo_stderr=a.profile and impl == "needle")
            res[impl] += r["times"]
            mem[impl].append((r["peak_mb"], r["train_mb"]))
            print(f"{impl:>7}: {statistics.median(r['times']) * 1e3:8.1f} ms/step median, "
                  f"{min(r['times']) * 1e3:8.1f} min, loss {r['loss']:.3f}, "
                  f"{r['threads']} threads, peak {r['peak_mb']:.0f} MB, "
                  f"train {r['train_mb']:.1f} MB")
    n, t = res["needle"], res["torch"]
    (npk, ntr), (tpk, ttr) = (tuple(min(m[i] for m in mem[k]) for i in (0, 1))
                              for k in ("needle", "torch"))
    ratio = {"median": statistics.median(n) / statistics.median(t), "best": min(n) / min(t),
             "peak_mb": npk / tpk, "train_mb": ntr / max(ttr, 1e-9)}
    print(f"  ratio needle / torch: {ratio['median']:.2f}x median, {ratio['best']:.2f}x best "
          f"step (target <= 1.5x); memory {ratio['peak_mb']:.2f}x peak, "
          f"{ratio['train_mb']:.2f}x train (best of runs)")
    if a.json:
        write_json(a.json, "bench_seq_step", {
            "config": {k: v for k, v in vars(a).items() if k not in ("child", "json")},
            "needle": {"median_s": statistics.median(n), "best_s": min(n), "peak_mb": npk,
                       "train_mb": ntr},
            "torch": {"median_s": statistics.median(t), "best_s": min(t), "peak_mb": tpk,
                      "train_mb": ttr},
            "ratio": ratio})


if __name__ == "__main__":
    main()
