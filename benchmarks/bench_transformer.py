"""A Transformer language-model training step: needle vs PyTorch, side by side.

    python benchmarks/bench_transformer.py [--quick] [--threads N] [--dropout P]

The model (both libraries): Embedding(10,000, 256) -> Transformer of API.md 6.6
(a learned positional embedding, 4 layers of width 256 with 8 causal heads of
32, pre-norm attention without projection biases, MLP 256 -> 1024 -> 256
with a pre-norm, dropout at the contract's four places) -> Linear(256,
10,000); sequence 128, batch 16; one step is forward, softmax cross-entropy,
backward and Adam. PyTorch runs the same model built from torch primitives
(matmul, softmax, layer_norm, dropout: the contract's formulation, not
torch.nn.TransformerEncoder, whose post-norm layers and biased projections
compute something else).

Each library runs in its own process (the two thread pools spin and would
disturb each other on 2 cores) and reports the best of several timed steps
after a warm-up, in ms, the ratio needle / torch (target at most 1.5x), and
the step's peak memory: the process's peak resident set size during the
timed steps (VmHWM, reset after set-up through /proc/self/clear_refs) less
its resident size before them, i.e. what the steps add on top of the
model, the optimizer state and the data.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import real_openblas  # noqa: E402,F401  (restarts without the OPENBLAS_* overrides)

import numpy as np  # noqa: E402
from _common import measure, run_child, thread_env, use_repo  # noqa: E402

TARGET = 1.5
VOCAB, WIDTH, LAYERS, HEADS, HIDDEN, SEQ, BATCH = 10000, 256, 4, 8, 1024, 128, 16


def needle_case(reps: int, dropout: float) -> dict:
    use_repo()
    import needle as ndl
    import needle.nn as nn
    from models import LanguageModel

    rng = np.random.default_rng(0)
    model = LanguageModel(WIDTH, VOCAB, HIDDEN, num_layers=LAYERS, seq_model="transformer",
                          seq_len=SEQ, num_head=HEADS, dropout=dropout)
    opt = ndl.optim.Adam(model.parameters(), lr=1e-3)
    x = ndl.Tensor(rng.integers(0, VOCAB, (SEQ, BATCH)).astype("float32"), requires_grad=False)
    y = ndl.Tensor(rng.integers(0, VOCAB, SEQ * BATCH).astype("float32"), requires_grad=False)
    loss_fn = nn.SoftmaxLoss()

    def step():
        opt.reset_grad()
        out, _ = model(x)
        loss_fn(out, y).backward(create_graph=False)
        opt.step()
    return measure(step, reps, warmup_counts=True)


def torch_case(reps: int, dropout: float) -> dict:
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F

    torch.manual_seed(0)
    D = WIDTH // HEADS

    class Layer(tnn.Module):
        def __init__(self):
            super().__init__()
            self.norm_q, self.norm_k, self.norm_v = (tnn.LayerNorm(WIDTH) for _ in range(3))
            self.wq, self.wk, self.wv, self.wo = (tnn.Linear(WIDTH, WIDTH, bias=False)
                                                  for _ in range(4))
            self.lin1, self.lin2 = tnn.Linear(WIDTH, HIDDEN), tnn.Linear(HIDDEN, WIDTH)
            self.norm = tnn.LayerNorm(WIDTH)

        def heads(self, x, norm, w):
            return w(norm(x)).reshape(BATCH, SEQ, HEADS, D).transpose(1, 2)

        def forward(self, x, mask):
            q, k, v = (self.heads(x, n, w) for n, w in ((self.norm_q, self.wq),
                                                        (self.norm_k, self.wk),
                                                        (self.norm_v, self.wv)))
            probs = F.dropout(torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D) + mask, -1),
                              dropout, self.training)
            a = self.wo((probs @ v).transpose(1, 2).reshape(BATCH, SEQ, WIDTH))
            x = x + F.dropout(a, dropout, self.training)
            h = F.dropout(F.relu(self.lin1(self.norm(x))), dropout, self.training)
            return x + F.dropout(self.lin2(h), dropout, self.training)

    class LM(tnn.Module):
        def __init__(self):
            super().__init__()
            self.emb = tnn.Embedding(VOCAB, WIDTH)
            self.pos = tnn.Embedding(SEQ, WIDTH)
            self.layers = tnn.ModuleList(Layer() for _ in range(LAYERS))
            self.lin = tnn.Linear(WIDTH, VOCAB)
            big = float(np.finfo(np.float32).max)
            self.register_buffer("mask", torch.triu(torch.full((SEQ, SEQ), -big), 1))

        def forward(self, x):  # x (T, B) as needle's LanguageModel
            h = self.emb(x).transpose(0, 1) + self.pos.weight[:SEQ]
            for layer in self.layers:
                h = layer(h, self.mask)
            return self.lin(h.transpose(0, 1).reshape(SEQ * BATCH, WIDTH))

    model = LM()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randint(0, VOCAB, (SEQ, BATCH))
    y = torch.randint(0, VOCAB, (SEQ * BATCH,))
    loss_fn = tnn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return measure(step, reps, warmup_counts=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--threads", type=int, default=None, help="threads for both libraries")
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--child", nargs=2, metavar=("IMPL", "REPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        impl, reps = args.child[0], int(args.child[1])
        res = (needle_case if impl == "needle" else torch_case)(reps, args.dropout)
        print(json.dumps(res))
        return
    env = thread_env(args.threads)
    reps = 2 if args.quick else 5
    print(f"NumPy BLAS: {real_openblas.describe()}; best of {reps} after a warm-up, each "
          f"library in its own process; torch: the same model from torch primitives")
    print(f"Transformer LM training step (Adam): {LAYERS} layers, width {WIDTH}, {HEADS} heads, "
          f"MLP {HIDDEN}, sequence {SEQ}, batch {BATCH}, vocabulary {VOCAB:,}, "
          f"dropout {args.dropout}")
    res = {impl: run_child([__file__, "--child", impl, str(reps), "--dropout",
                            str(args.dropout)], env, impl)
           for impl in ("needle", "torch")}
    n, t = res["needle"], res["torch"]
    r, m = n["ms"] / t["ms"], n["peak_mb"] / max(t["peak_mb"], 1e-9)
    print(f"  {'':<22}{'needle':>10}{'torch':>10}{'ratio':>8}")
    print(f"  {'step time (ms)':<22}{n['ms']:>10.1f}{t['ms']:>10.1f}{r:>7.2f}x  "
          f"{'ok' if r <= TARGET else 'MISSED'} (target <= {TARGET}x)")
    print(f"  {'step peak memory (MB)':<22}{n['peak_mb']:>10.1f}{t['peak_mb']:>10.1f}{m:>7.2f}x  "
          f"{'ok' if m <= 1.0 else 'MISSED'} (target <= 1.0x)")
    print(f"  {'process peak RSS (MB)':<22}{n['rss_mb']:>10.1f}{t['rss_mb']:>10.1f}")


if __name__ == "__main__":
    main()
