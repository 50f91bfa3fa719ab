"""needle on the GPU beside PyTorch (issue 10): matmul GFLOP/s against cuBLAS
through torch (float32, float64, and float32 with TF32 tensor cores on both
sides), elementwise and fused-softmax GB/s beside torch's, and elementwise as a
fraction of the GPU's memory bandwidth (what torch's device-to-device copy_ moves),
and one training step of each model (MLP 784-256-256-10 with Adam, ResNet9 on a
CIFAR-shaped batch of 64, an LSTM language model 2x256 over seq 40, batch 32,
vocabulary 10000, and apps/models.py's Transformer language model), ms per step
beside the same model in PyTorch on the same GPU. Without a usable needle.cuda()
it says why and exits 0; torch's columns are printed where torch sees a GPU
(NaN otherwise). Best of N; the ratio is needle / torch.

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


def cu_module():
    """The module behind cuda(): needle._cuda, or under NEEDLE_CUDA_EMU=1 the
    emulator's (a dry run on the CPU, no timings worth reading)."""
    import importlib
    return importlib.import_module("needle._cuda_emu" if os.environ.get("NEEDLE_CUDA_EMU") == "1"
                                   else "needle._cuda")


def sync():
    cu_module().synchronize()


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
    cu = cu_module()
    n = 1 << 26
    x = np.random.randn(n).astype("float32")
    a = nd.array(x, device=nd.cuda())
    ta = torch.tensor(x, device="cuda") if torch is not None else None
    # the GPU's memory bandwidth, as a device-to-device copy reaches it (bytes read + written)
    bw = float("nan")
    if torch is not None:
        tb = torch.empty_like(ta)
        bw = 8 * n / best(lambda: tb.copy_(ta), reps, torch.cuda.synchronize) / 1e9
    print(f"{'elementwise (1<<26)':<24}{'needle GB/s':>16}{'torch GB/s':>16}{'ratio':>8}"
          f"{'of copy':>9}   on {cu.device_name()}, torch's copy_ {bw:.0f} GB/s")
    for name, ours_fn, theirs_fn, bytes_per in (
            ("add", lambda: a + a, lambda: ta + ta, 12), ("exp", lambda: a.exp(),
                                                          lambda: ta.exp(), 8),
            ("sum", lambda: a.sum(), lambda: ta.sum(), 4)):
        ours = bytes_per * n / best(ours_fn, reps, sync) / 1e9
        theirs = (bytes_per * n / best(theirs_fn, reps, torch.cuda.synchronize) / 1e9
                  if torch is not None else float("nan"))
        print(f"{name:<24}{ours:>16.1f}{theirs:>16.1f}{ours / theirs:>8.2f}{ours / bw:>9.2f}")


# ---- one training step of each model (issue 10, item 7) ----------------------
# Each model is built on the device, the step (forward, loss, backward, optimizer)
# runs once to warm up (the caching allocator, torch's autotuning), then best of N.
# The torch models have the same layer sizes; their weights are torch's own (the
# time of a step does not depend on the values).

def _ndl_step(model, opt, x, y):
    def step():
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        loss = ndl.nn.SoftmaxLoss()(logits, y)
        opt.reset_grad()
        loss.backward(create_graph=False)  # as apps/ train, and as torch records no graph
        opt.step()
        return loss
    return step


def _torch_step(torch, model, opt, x, y):
    def step():
        out = model(x)
        logits = out[0] if isinstance(out, tuple) else out
        loss = torch.nn.functional.cross_entropy(logits, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss
    return step


def _torch_resnet9(torch):
    nn = torch.nn

    def cbr(a, b, k, s):
        return nn.Sequential(nn.Conv2d(a, b, k, s, padding=k // 2), nn.BatchNorm2d(b),
                             nn.ReLU())

    class Res(nn.Module):
        def __init__(self, f):
            super().__init__()
            self.f = f

        def forward(self, x):
            return self.f(x) + x
    return nn.Sequential(cbr(3, 16, 7, 4), cbr(16, 32, 3, 2),
                         Res(nn.Sequential(cbr(32, 32, 3, 1), cbr(32, 32, 3, 1))),
                         cbr(32, 64, 3, 2), cbr(64, 128, 3, 2),
                         Res(nn.Sequential(cbr(128, 128, 3, 1), cbr(128, 128, 3, 1))),
                         nn.Flatten(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 10))


def _torch_lm(torch, kind, emb, hidden, layers, vocab, seq):
    nn = torch.nn

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = nn.Embedding(vocab, emb)
            if kind == "lstm":
                self.seq = nn.LSTM(emb, hidden, layers)
                out_in = hidden
            else:  # pre-norm blocks with a causal mask and learned positions, as needle's
                self.pos = nn.Embedding(seq, emb)
                layer = nn.TransformerEncoderLayer(emb, 8, hidden, dropout=0.0,
                                                   norm_first=True)
                self.seq = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
                self.mask = nn.Transformer.generate_square_subsequent_mask(seq)
                out_in = emb
            self.linear = nn.Linear(out_in, vocab)

        def forward(self, x):
            e = self.embedding(x)
            if kind == "lstm":
                out, _ = self.seq(e)
            else:
                pos = self.pos(torch.arange(x.shape[0], device=x.device))[:, None, :]
                out = self.seq(e + pos, mask=self.mask.to(x.device), is_causal=True)
            return self.linear(out.reshape(-1, out.shape[-1]))
    return LM()


def _models(torch, dev):
    """(name, needle model on dev, x, y, torch model or None) for each model"""
    from apps.models import LanguageModel, ResNet9
    rows = []
    x, y = np.random.randn(128, 784).astype("float32"), np.random.randint(0, 10, 128)
    mlp = ndl.nn.Sequential(ndl.nn.Linear(784, 256, device=dev), ndl.nn.ReLU(),
                            ndl.nn.Linear(256, 256, device=dev), ndl.nn.ReLU(),
                            ndl.nn.Linear(256, 10, device=dev))
    tmlp = None if torch is None else torch.nn.Sequential(
        torch.nn.Linear(784, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256),
        torch.nn.ReLU(), torch.nn.Linear(256, 10))
    rows.append(("MLP 784-256-256-10, batch 128", mlp, x, y, tmlp))
    x, y = np.random.randn(64, 3, 32, 32).astype("float32"), np.random.randint(0, 10, 64)
    rows.append(("ResNet9, CIFAR batch 64", ResNet9(device=dev), x, y,
                 None if torch is None else _torch_resnet9(torch)))
    V, T, B = 10000, 40, 32
    x, y = np.random.randint(0, V, (T, B)), np.random.randint(0, V, T * B)
    rows.append(("LSTM LM 2x256, seq 40, batch 32", LanguageModel(256, V, 256, 2, "lstm",
                                                                  T, device=dev), x, y,
                 None if torch is None else _torch_lm(torch, "lstm", 256, 256, 2, V, T)))
    rows.append(("Transformer LM 2x256, seq 40", LanguageModel(256, V, 512, 2, "transformer",
                                                               T, device=dev), x, y,
                 None if torch is None else _torch_lm(torch, "transformer", 256, 512, 2, V,
                                                      T)))
    return rows


def bench_model_steps(reps, torch, dev=None, tdev="cuda", sync_fn=sync):
    """dev / tdev: needle's and torch's device (cuda; the tests' dry run uses the cpu)"""
    print(f"{'training step (Adam)':<36}{'needle ms':>12}{'torch ms':>12}{'ratio':>8}")
    dev = dev or ndl.cuda()
    tsync = torch.cuda.synchronize if tdev == "cuda" and torch is not None else (lambda: None)
    for name, model, x, y, tmodel in _models(torch, dev):
        opt = ndl.optim.Adam(model.parameters(), lr=1e-3)
        step = _ndl_step(model, opt, ndl.Tensor(x.astype("float32"), device=dev),
                         ndl.Tensor(y.astype("float32"), device=dev))
        ours = best(step, reps, sync_fn) * 1e3
        theirs = float("nan")
        if tmodel is not None:
            tmodel = tmodel.to(tdev)
            tx = torch.tensor(x, device=tdev)
            tstep = _torch_step(torch, tmodel, torch.optim.Adam(tmodel.parameters(), lr=1e-3),
                                tx if x.dtype.kind == "f" else tx.long(),
                                torch.tensor(y, device=tdev).long())
            theirs = best(tstep, reps, tsync) * 1e3
        print(f"{name:<36}{ours:>12.2f}{theirs:>12.2f}{ours / theirs:>8.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = ap.parse_args()
    if not ndl.cuda().enabled():
        try:
            ndl.cuda().empty((1,))
            why = "cuda() is not enabled"
        except RuntimeError as e:
            why = str(e)
        print(f"bench_cuda: skipped, no usable GPU: {why}")
        return 0
    reps = 3 if args.quick else 10
    torch = torch_cuda()
    bench_matmul(reps, torch)
    bench_tf32(reps, torch)
    bench_ewise(reps, torch)
    bench_softmax(reps, torch)
    bench_model_steps(reps, torch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
