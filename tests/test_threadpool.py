"""The CPU thread pool's manners (threadpool.c): workers sleep soon after a
kernel instead of spinning, and matmul kernels run with denormals flushed
(NEEDLE_FLUSH_DENORMALS=0 turns that off) without changing the caller's
floating-point mode or the other kernels' IEEE results."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

import needle.backend_ndarray as nd
from needle import _C

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY32 = np.float32(1e-39)  # a float32 denormal
assert 0 < TINY32 < np.finfo(np.float32).tiny


def thread_states():
    """{tid: state letter} of this process's threads other than the caller."""
    me = str(threading_native_id())
    out = {}
    for tid in os.listdir("/proc/self/task"):
        if tid == me:
            continue
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                out[tid] = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            pass
    return out


def threading_native_id():
    import threading

    return threading.get_native_id()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
def test_workers_sleep_after_a_kernel():
    before = nd.get_num_threads()
    try:
        nd.set_num_threads(2)
        a = nd.array(np.random.randn(256, 256).astype(np.float32))
        for _ in range(20):
            a @ a
        # the spin is bounded (50 us): long after the last kernel, every thread
        # is asleep ('S'); one that kept spinning would stay runnable ('R').
        # Several looks, so that a thread seen briefly running counts only if
        # it never sleeps.
        asleep = set()
        for _ in range(20):
            time.sleep(0.05)
            asleep |= {t for t, s in thread_states().items() if s in "SD"}
        assert set(thread_states()) <= asleep, thread_states()
    finally:
        nd.set_num_threads(before)


def test_denormal_inputs_are_flushed_in_kernels():
    assert _C.matmul_config()["flush_denormals"] == (
        0 if os.environ.get("NEEDLE_FLUSH_DENORMALS") == "0" else 1)
    if os.environ.get("NEEDLE_FLUSH_DENORMALS") == "0":
        pytest.skip("NEEDLE_FLUSH_DENORMALS=0 in this environment")
    x = np.full((4, 300), TINY32, np.float32)
    y = np.ones((300, 70), np.float32)
    # NumPy keeps gradual underflow: 300 * 1e-39 = 3e-37
    assert np.all((x @ y) > 0)
    np.testing.assert_array_equal((nd.array(x) @ nd.array(y)).numpy(), 0)
    big = np.full((70, 300), TINY32, np.float32)
    np.testing.assert_array_equal((nd.array(big) @ nd.array(y)).numpy(), 0)
    # the caller's mode is restored: NumPy in this thread still sees denormals
    assert np.float32(TINY32) * np.float32(1.5) > 0
    # and so do the elementwise kernels, on 1 or several threads
    before = nd.get_num_threads()
    try:
        v = np.full(1 << 20, TINY32, np.float32)
        for threads in (1, 2):
            nd.set_num_threads(threads)
            np.testing.assert_array_equal((nd.array(v) * 1.5).numpy(), v * np.float32(1.5))
    finally:
        nd.set_num_threads(before)


def test_flush_switch_off():
    code = (
        "import numpy as np, needle.backend_ndarray as nd, needle._C as C\n"
        "assert C.matmul_config()['flush_denormals'] == 0\n"
        "x = np.full((4, 300), np.float32(1e-39)); y = np.ones((300, 70), np.float32)\n"
        "x = x.astype(np.float32)\n"
        "got = (nd.array(x) @ nd.array(y)).numpy()\n"
        "want = x.astype(np.float64) @ y\n"
        "np.testing.assert_allclose(got, want, rtol=1e-3)\n"
        "print('ok')\n")
    env = dict(os.environ, PYTHONPATH=ROOT, NEEDLE_FLUSH_DENORMALS="0")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-2000:]
