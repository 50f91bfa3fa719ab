"""One training step of an LSTM language model: needle vs PyTorch, side by side.

    python benchmarks/bench_seq_step.py [--layers 2] [--hidden 256] [--embed 256]
        [--seq-len 40] [--batch 32] [--vocab 10000] [--steps 5] [--repeats 2] [--threads N]
        [--model lstm|rnn] [--create-graph] [--profile] [--fast-one-hot]

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
step without that cost.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import real_openblas  # noqa: E402,F401  (restarts without the OPENBLAS_* overrides)

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def data(a):
    rng = np.random.default_rng(0)
    x = rng.integers(0, a.vocab, size=(a.seq_len, a.batch))
    y = rng.integers(0, a.vocab, size=(a.seq_len * a.batch,))
    return x, y


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

    times = []
    for _ in range(a.steps + 1):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    if a.profile:
        import cProfile
        import pstats
        prof = cProfile.Profile()
        prof.runcall(step)
        pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(15)
    return {"times": times[1:], "loss": float(loss.numpy()),
            "threads": ndl.backend_ndarray.get_num_threads()}


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

    times = []
    for _ in range(a.steps + 1):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    return {"times": times[1:], "loss": float(loss), "threads": torch.get_num_threads()}


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
    for _ in range(a.repeats):  # alternate, so that both see the same machine load
        for impl in ("needle", "torch"):
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--child", impl],
                                 env=env, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"{impl} run failed:\n{out.stderr}")
            if a.profile and impl == "needle":
                print(out.stderr)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            res[impl] += r["times"]
            print(f"{impl:>7}: {statistics.median(r['times']) * 1e3:8.1f} ms/step median, "
                  f"{min(r['times']) * 1e3:8.1f} min, loss {r['loss']:.3f}, "
                  f"{r['threads']} threads")
    n, t = res["needle"], res["torch"]
    print(f"  ratio needle / torch: {statistics.median(n) / statistics.median(t):.2f}x median, "
          f"{min(n) / min(t):.2f}x best step (target <= 1.5x)")


if __name__ == "__main__":
    main()
