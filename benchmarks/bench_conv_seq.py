"""Convolution and sequence models: needle vs PyTorch, side by side.

    python benchmarks/bench_conv_seq.py [--quick] [--threads N]

Every case runs in its own process per library (the two thread pools spin and
would disturb each other on 2 cores) and reports the best of several timed
repetitions after a warm-up, in ms, and the ratio needle / torch (target at
most 1.5x):
  - conv forward+backward, batch 32, 32x32, 3x3, padding 1: 16->32 and
    64->128 channels (needle NHWC/KKIO, torch NCHW/OIHW: each library's own
    layout, the same arithmetic);
  - a ResNet9 training step at batch 64 on CIFAR-shaped input (Adam);
  - an LSTM language-model step: 2 layers, hidden 256, sequence 40, batch 32,
    vocabulary 10,000 (Embedding 256 -> LSTM -> Linear -> softmax loss, SGD).
Memory, per case and library: "peak MB", the process's peak resident set
from the warm-up step on (model, data and the steps' working memory), and
"train MB", that peak less the resident set just before the warm-up (what
training takes beyond the model and data), with the ratios needle / torch
(target: at most 1.0x). --json writes the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import real_openblas  # noqa: E402,F401  (restarts without the OPENBLAS_* overrides)

import numpy as np  # noqa: E402
import _common  # noqa: E402
from _common import run_child, thread_env, use_repo, write_json  # noqa: E402

TARGET = 1.5


def measure(step, reps: int) -> dict:
    """_common.measure with the warm-up counted; "train_mb" is its "peak_mb"."""
    r = _common.measure(step, reps, warmup_counts=True)
    return {"ms": r["ms"], "rss_mb": r["rss_mb"], "train_mb": r["peak_mb"]}


CASES = ["conv 16->32", "conv 64->128", "resnet9 step", "lstm lm step"]


def needle_case(case: str, reps: int) -> dict:
    use_repo()
    import needle as ndl
    import needle.nn as nn

    rng = np.random.default_rng(0)
    if case.startswith("conv"):
        cin, cout = (16, 32) if "16" in case else (64, 128)
        x = ndl.Tensor(rng.standard_normal((32, 32, 32, cin)).astype("float32"))
        w = ndl.Tensor(rng.standard_normal((3, 3, cin, cout)).astype("float32"))

        def step():
            ndl.conv(x, w, stride=1, padding=1).sum().backward(create_graph=False)
        return measure(step, reps)
    if case == "resnet9 step":
        from models import ResNet9

        model = ResNet9()
        opt = ndl.optim.Adam(model.parameters(), lr=1e-3)
        x = ndl.Tensor(rng.random((64, 3, 32, 32)).astype("float32"), requires_grad=False)
        y = ndl.Tensor(rng.integers(0, 10, 64).astype("float32"), requires_grad=False)
        loss_fn = nn.SoftmaxLoss()

        def step():
            opt.reset_grad()
            loss_fn(model(x), y).backward(create_graph=False)
            opt.step()
        return measure(step, reps)
    from models import LanguageModel

    vocab, T, bs = 10000, 40, 32
    model = LanguageModel(256, vocab, 256, num_layers=2, seq_model="lstm")
    opt = ndl.optim.SGD(model.parameters(), lr=0.1)
    x = ndl.Tensor(rng.integers(0, vocab, (T, bs)).astype("float32"), requires_grad=False)
    y = ndl.Tensor(rng.integers(0, vocab, T * bs).astype("float32"), requires_grad=False)
    loss_fn = nn.SoftmaxLoss()

    def step():
        opt.reset_grad()
        out, _ = model(x)
        loss_fn(out, y).backward(create_graph=False)
        opt.step()
    return measure(step, reps)


def torch_case(case: str, reps: int) -> dict:
    import torch
    import torch.nn as tnn

    torch.manual_seed(0)
    if case.startswith("conv"):
        cin, cout = (16, 32) if "16" in case else (64, 128)
        x = torch.randn(32, cin, 32, 32, requires_grad=True)
        w = torch.randn(cout, cin, 3, 3, requires_grad=True)

        def step():
            torch.nn.functional.conv2d(x, w, padding=1).sum().backward()
            x.grad = w.grad = None
        return measure(step, reps)
    if case == "resnet9 step":
        def cbn(a, b, k, s):
            return tnn.Sequential(tnn.Conv2d(a, b, k, s, k // 2), tnn.BatchNorm2d(b), tnn.ReLU())

        class Res(tnn.Module):
            def __init__(self, f):
                super().__init__()
                self.f = f

            def forward(self, x):
                return self.f(x) + x
        model = tnn.Sequential(cbn(3, 16, 7, 4), cbn(16, 32, 3, 2),
                               Res(tnn.Sequential(cbn(32, 32, 3, 1), cbn(32, 32, 3, 1))),
                               cbn(32, 64, 3, 2), cbn(64, 128, 3, 2),
                               Res(tnn.Sequential(cbn(128, 128, 3, 1), cbn(128, 128, 3, 1))),
                               tnn.Flatten(), tnn.Linear(128, 128), tnn.ReLU(),
                               tnn.Linear(128, 10))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        x = torch.rand(64, 3, 32, 32)
        y = torch.randint(0, 10, (64,))
        loss_fn = tnn.CrossEntropyLoss()

        def step():
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        return measure(step, reps)

    vocab, T, bs = 10000, 40, 32

    class LM(tnn.Module):
        def __init__(self):
            super().__init__()
            self.emb = tnn.Embedding(vocab, 256)
            self.lstm = tnn.LSTM(256, 256, 2)
            self.lin = tnn.Linear(256, vocab)

        def forward(self, x):
            out, _ = self.lstm(self.emb(x))
            return self.lin(out.reshape(T * bs, 256))
    model = LM()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randint(0, vocab, (T, bs))
    y = torch.randint(0, vocab, (T * bs,))
    loss_fn = tnn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        opt.step()
    return measure(step, reps)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--threads", type=int, default=None, help="threads for both libraries")
    ap.add_argument("--cases", nargs="+", default=CASES, choices=CASES)
    ap.add_argument("--json", default=None, help="write the figures to this file")
    ap.add_argument("--child", nargs=3, metavar=("IMPL", "CASE", "REPS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        impl, case, reps = args.child[0], args.child[1], int(args.child[2])
        print(json.dumps((needle_case if impl == "needle" else torch_case)(case, reps)))
        return
    env = thread_env(args.threads)
    reps = 3 if args.quick else 8
    print(f"NumPy BLAS: {real_openblas.describe()}; best of {reps} after a warm-up, "
          f"each library in its own process; peak = the process's peak RSS over the "
          f"steps, train = that peak less the RSS before the first step (MB)")
    print(f"  {'case':<14}{'needle ms':>10}{'torch ms':>10}{'ratio':>7}   "
          f"{'peak MB n/t':>15}{'ratio':>7}{'train MB n/t':>15}{'ratio':>7}")
    missed = 0
    rows = {}
    for case in args.cases:
        r = {impl: run_child([__file__, "--child", impl, case, str(reps)], env,
                             f"{impl} {case}")
             for impl in ("needle", "torch")}
        n, t = r["needle"], r["torch"]
        ratio = n["ms"] / t["ms"]
        pk, tr = n["rss_mb"] / t["rss_mb"], n["train_mb"] / max(t["train_mb"], 1e-9)
        ok = ratio <= TARGET
        missed += not ok
        rows[case] = {"needle": n, "torch": t, "ratio": {"ms": ratio, "peak_mb": pk,
                                                         "train_mb": tr}}
        print(f"  {case:<14}{n['ms']:>10.1f}{t['ms']:>10.1f}{ratio:>6.2f}x   "
              f"{n['rss_mb']:>7.0f}/{t['rss_mb']:<7.0f}{pk:>6.2f}x"
              f"{n['train_mb']:>7.1f}/{t['train_mb']:<7.1f}{tr:>6.2f}x  "
              f"{'ok' if ok else 'MISSED'} (time target <= {TARGET}x)")
    print(f"summary: {missed} time target(s) missed")
    if args.json:
        write_json(args.json, "bench_conv_seq", {"reps": reps, "threads": args.threads,
                                                 "cases": rows})


if __name__ == "__main__":
    main()
