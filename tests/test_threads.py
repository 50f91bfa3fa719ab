"""Threads and processes (issue 13, item 5).

- ops from several Python threads at once give the same results as serial runs
  (kernels release the GIL, so the threads do run inside kernels together);
- the thread pool survives fork: a forked child (os.fork, multiprocessing's fork
  context) computes with it and gets the parent's numbers;
- NEEDLE_NUM_THREADS=1 and =2 give the same numbers (bitwise) for matmul, reductions,
  conv and a few training steps.
DataLoader(num_workers > 0) is tested with the DataLoader (tests/test_data*.py).
"""
import multiprocessing as mp
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import needle as ndl
import needle.backend_ndarray as nd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def workload(seed: int) -> list:
    """A mix of big kernels (threaded, GIL released) and autograd, as arrays."""
    rng = np.random.default_rng(seed)
    a = nd.array(rng.standard_normal((160, 200)).astype(np.float32))
    b = nd.array(rng.standard_normal((200, 96)).astype(np.float32))
    out = [(a @ b).numpy(), a.sum(axis=0).numpy(), (a.exp() * a).max(axis=1).numpy()]
    x = ndl.Tensor(rng.standard_normal((2, 9, 9, 3)), dtype="float32")
    w = ndl.Tensor(rng.standard_normal((3, 3, 3, 4)), dtype="float32")
    y = ndl.ops.conv(x, w, stride=2, padding=1)
    (y * y).sum().backward()
    out += [y.numpy(), x.grad.numpy(), w.grad.numpy()]
    model = ndl.nn.Sequential(ndl.nn.Linear(20, 16), ndl.nn.ReLU(), ndl.nn.Linear(16, 3))
    for p in model.parameters():  # deterministic weights, independent of the global RNG
        p.data = ndl.Tensor(rng.standard_normal(p.shape).astype(np.float32) * 0.1)
    loss = ndl.nn.SoftmaxLoss()(model(ndl.Tensor(rng.standard_normal((8, 20)),
                                                 dtype="float32")),
                                ndl.Tensor(rng.integers(0, 3, 8)))
    loss.backward()
    out += [loss.numpy()] + [p.grad.numpy() for p in model.parameters()]
    return out


def assert_same(xs, ys):
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("num_threads", [2, 4])
def test_python_threads_match_serial(num_threads):
    seeds = list(range(3 * num_threads))
    serial = {s: workload(s) for s in seeds}
    results, errors = {}, []
    barrier = threading.Barrier(num_threads)

    def run(mine):
        try:
            barrier.wait()
            for s in mine:
                results[s] = workload(s)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(seeds[i::num_threads],))
               for i in range(num_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for s in seeds:
        assert_same(results[s], serial[s])


def test_gil_is_released_inside_kernels():
    """With a switch interval of 100 s the interpreter never takes the GIL from a
    thread: the spinning thread below only runs when the main thread gives the
    GIL up on its own, which it does nowhere in the loop but inside the kernels.
    So the spinner moves during the loop if and only if kernels release the GIL."""
    a = nd.array(np.random.randn(400, 400).astype(np.float32))
    ticks = [0]
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            ticks[0] += 1
            time.sleep(0)  # gives the GIL back, so the main thread can go on

    old = sys.getswitchinterval()
    t = threading.Thread(target=spin)
    t.start()
    sys.setswitchinterval(100.0)
    try:
        before = ticks[0]
        for _ in range(20):
            a @ a
        moved = ticks[0] - before
    finally:
        sys.setswitchinterval(old)
        stop.set()
        t.join()
    assert moved > 0


def _child_result(seed, q):
    q.put([x.tolist() for x in workload(seed)])


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_pool_survives_os_fork():
    nd.set_num_threads(2)
    want = workload(7)  # the pool is started (and busy) before the fork
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: compute with the inherited pool state, report, exit
        os.close(r)
        code = 1
        try:
            got = workload(7)
            same = all(np.array_equal(a, b) for a, b in zip(got, want))
            os.write(w, b"same" if same else b"differ")
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        answer = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, status
    assert answer == b"same"


@pytest.mark.skipif("fork" not in mp.get_all_start_methods(), reason="needs fork")
def test_pool_survives_multiprocessing_fork():
    nd.set_num_threads(2)
    want = workload(11)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_child_result, args=(11, q)) for _ in range(2)]
    for p in procs:
        p.start()
    got = [q.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=300)
        assert p.exitcode == 0
    for g in got:
        assert_same([np.asarray(x, dtype=y.dtype) for x, y in zip(g, want)], want)


DIGEST = r'''
import hashlib, numpy as np, needle as ndl, needle.backend_ndarray as nd
print(nd.get_num_threads())
import sys
sys.path.insert(0, "tests")
from test_threads import workload
h = hashlib.sha256()
for x in workload(3):
    h.update(np.ascontiguousarray(x).tobytes())
a = nd.array(np.random.default_rng(0).standard_normal((1000, 1000)))
for x in [(a @ a).numpy(), a.sum(axis=1).numpy(), a.sum().numpy(), (a * a).max(axis=0).numpy()]:
    h.update(x.tobytes())
print(h.hexdigest())
'''


def digest_with(threads: str) -> list:
    env = dict(os.environ, NEEDLE_NUM_THREADS=threads,
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("NEEDLE_BACKEND", None)
    r = subprocess.run([sys.executable, "-c", DIGEST], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.split()


def test_num_threads_env_1_and_2_give_the_same_numbers():
    one, two = digest_with("1"), digest_with("2")
    assert one[0] == "1" and two[0] == "2"
    assert one[1] == two[1]  # sha256 of every result, bit for bit
