"""Autograd overhead and a small MLP training step: needle beside PyTorch.

    python benchmarks/bench_autograd.py [--quick] [--threads N] [--json PATH]

--threads N sets both libraries' thread counts (default: each library's own);
--json writes the figures to PATH (`make bench`: benchmarks/results/).

(a) Cost of one op on 1-element tensors that require grad: a chain of 1000
    ops (`y = y * b`, `y = y + 1.0`, `y = y.exp()`), forward only and forward
    plus one backward, in microseconds per op. needle's default backward
    records the gradient graph (create_graph=True, as the course needs);
    PyTorch's does not, so the like-for-like figure is needle with
    create_graph=False. Target: needle at most 0.5x PyTorch's time.
(b) A 784-256-10 MLP, `relu(X @ W1 + b1) @ W2 + b2`, softmax cross-entropy
    via logsumexp and one-hot labels, forward + backward + SGD step, at batch
    64 and 512, float32. Target: needle at most 1.2x PyTorch's time.

Each figure is the best of several timed repeats (after a warm-up).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import real_openblas  # noqa: E402,F401  (restarts without the OPENBLAS_* overrides)
from _common import best_time, write_json  # noqa: E402

import time  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

import needle as ndl  # noqa: E402
import needle.backend_ndarray as nd  # noqa: E402

QUICK = "--quick" in sys.argv
THREADS = int(sys.argv[sys.argv.index("--threads") + 1]) if "--threads" in sys.argv else None
JSON = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
OP_CHAIN = 1000
OP_TARGET = 0.5
MLP_TARGET = 1.2


def verdict(ratio, target):
    return "ok" if ratio <= target else "MISSED"


# --------------------------------------------------------------------------
# (a) per-op overhead
# --------------------------------------------------------------------------

OPS = {
    "a * b": (lambda y, b: y * b, lambda y, b: y * b),
    "a + 1.0": (lambda y, b: y + 1.0, lambda y, b: y + 1.0),
    "a.exp()": (lambda y, b: y.exp(), lambda y, b: y.exp()),
}


def needle_chain(op, backward, create_graph=True):
    a = ndl.Tensor([0.5])
    b = ndl.Tensor([1.0])
    seed = ndl.Tensor([1.0], requires_grad=False)

    def run():
        y = a
        for _ in range(OP_CHAIN):
            y = op(y, b)
        if backward:
            y.backward(seed, create_graph=create_graph)
    return run


def torch_chain(op, backward):
    a = torch.full((1,), 0.5, requires_grad=True)
    b = torch.ones(1, requires_grad=True)
    seed = torch.ones(1)

    def run():
        y = a
        for _ in range(OP_CHAIN):
            y = op(y, b)
        if backward:
            y.backward(seed)
            a.grad = None
            b.grad = None
    return run


def bench_ops():
    repeats = 5 if QUICK else 15
    print(f"(a) one op on 1-element tensors requiring grad, chain of {OP_CHAIN} ops "
          f"[us/op; target needle <= {OP_TARGET}x torch]")
    print(f"  {'op':<10}{'mode':<26}{'needle':>10}{'torch':>10}{'ratio':>8}")
    rows = []
    with np.errstate(all="ignore"):
        for name, (nop, top) in OPS.items():
            cases = [("forward", needle_chain(nop, False), torch_chain(top, False)),
                     ("fwd+bwd (no grad graph)", needle_chain(nop, True, False),
                      torch_chain(top, True)),
                     ("fwd+bwd (create_graph)", needle_chain(nop, True, True),
                      torch_chain(top, True))]
            for mode, nf, tf in cases:
                nf(), tf()  # warm-up
                tn = best_time(nf, repeats, 1) / OP_CHAIN * 1e6
                tt = best_time(tf, repeats, 1) / OP_CHAIN * 1e6
                r = tn / tt
                judged = mode != "fwd+bwd (create_graph)"
                mark = verdict(r, OP_TARGET) if judged else "(info: torch builds no grad graph)"
                print(f"  {name:<10}{mode:<26}{tn:>10.3f}{tt:>10.3f}{r:>7.2f}x  {mark}")
                rows.append((name, mode, tn, tt, r, judged))
    return rows


# --------------------------------------------------------------------------
# (b) MLP training step
# --------------------------------------------------------------------------

def mlp_data(batch, seed=0):
    rng = np.random.RandomState(seed)
    X = rng.rand(batch, 784).astype(np.float32)
    y = rng.randint(0, 10, batch)
    Y = np.eye(10, dtype=np.float32)[y]
    W1 = (rng.randn(784, 256) * np.sqrt(2 / 784)).astype(np.float32)
    b1 = np.zeros(256, np.float32)
    W2 = (rng.randn(256, 10) * np.sqrt(2 / 256)).astype(np.float32)
    b2 = np.zeros(10, np.float32)
    return X, Y, [W1, b1, W2, b2]


def needle_step_fn(batch, lr=0.05, create_graph=True):
    X, Y, params = mlp_data(batch)
    Xt = ndl.Tensor(X, requires_grad=False)
    Yt = ndl.Tensor(Y, requires_grad=False)
    W1, b1, W2, b2 = [ndl.Tensor(p) for p in params]
    losses = []

    def step():
        Z = ndl.relu(Xt @ W1 + b1) @ W2 + b2
        loss = (ndl.logsumexp(Z, (1,)) - (Z * Yt).sum((1,))).sum() / batch
        loss.backward(create_graph=create_graph)
        for p in (W1, b1, W2, b2):
            p.data = p.data - lr * p.grad.data
        losses.append(loss)
    return step, losses


def torch_step_fn(batch, lr=0.05):
    X, Y, params = mlp_data(batch)
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
    W1, b1, W2, b2 = [torch.tensor(p, requires_grad=True) for p in params]
    losses = []

    def step():
        Z = torch.relu(Xt @ W1 + b1) @ W2 + b2
        loss = (torch.logsumexp(Z, 1) - (Z * Yt).sum(1)).sum() / batch
        loss.backward()
        with torch.no_grad():
            for p in (W1, b1, W2, b2):
                p -= lr * p.grad
                p.grad = None
        losses.append(loss.detach())
    return step, losses


def bench_mlp():
    print(f"(b) MLP 784-256-10 float32, forward + backward + SGD step "
          f"[ms/step; target needle <= {MLP_TARGET}x torch]")
    # the two implementations agree (same data, same initial weights)
    ns, nl = needle_step_fn(64)
    ts, tl = torch_step_fn(64)
    for _ in range(5):
        ns(), ts()
    diff = max(abs(float(a.numpy()) - float(b)) for a, b in zip(nl, tl))
    print(f"  check: 5 SGD steps, |loss_needle - loss_torch| max {diff:.2e} "
          f"({'ok' if diff < 1e-4 else 'MISMATCH'})")
    print(f"  {'batch':<7}{'mode':<26}{'needle':>10}{'torch':>10}{'ratio':>8}")
    rows = []
    for batch in (64, 512):
        number = (20 if batch == 64 else 5) if QUICK else (100 if batch == 64 else 20)
        repeats = 3 if QUICK else 7
        tstep, _ = torch_step_fn(batch)
        for _ in range(3):
            tstep()
        tt = best_time(tstep, repeats, number) * 1e3
        for mode, cg in (("default backward", True), ("backward(create_graph=False)", False)):
            nstep, _ = needle_step_fn(batch, create_graph=cg)
            for _ in range(3):
                nstep()
            tn = best_time(nstep, repeats, number) * 1e3
            r = tn / tt
            print(f"  {batch:<7}{mode:<26}{tn:>10.3f}{tt:>10.3f}{r:>7.2f}x  "
                  f"{verdict(r, MLP_TARGET)}")
            rows.append((batch, mode, tn, tt, r))
    return rows


def main():
    if THREADS is not None:
        torch.set_num_threads(THREADS)
        nd.set_num_threads(THREADS)
    print(f"needle threads: {nd.get_num_threads()}   torch threads: {torch.get_num_threads()}   "
          f"matmul kernel: {nd.matmul_kernel_name()}   torch {torch.__version__}   "
          f"numpy {np.__version__}")
    ops_rows = bench_ops()
    mlp_rows = bench_mlp()
    missed = [r for r in ops_rows if r[5] and r[4] > OP_TARGET]
    missed += [r for r in mlp_rows if r[4] > MLP_TARGET]
    print(f"summary: {len(missed)} target(s) missed")
    if JSON:
        write_json(JSON, "bench_autograd", {
            "threads": {"needle": nd.get_num_threads(), "torch": torch.get_num_threads()},
            "ops_us": [dict(op=r[0], mode=r[1], needle=r[2], torch=r[3], ratio=r[4])
                       for r in ops_rows],
            "mlp_ms": [dict(batch=r[0], mode=r[1], needle=r[2], torch=r[3], ratio=r[4])
                       for r in mlp_rows]})


if __name__ == "__main__":
    main()
