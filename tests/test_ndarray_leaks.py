"""Refcount and leak checks for NDArray (STYLE.md "Tests and tooling"): run
each operation, including its error paths, many times; the operands'
reference counts, the number of GC-tracked objects and the process RSS stay
flat.
"""
import gc
import os
import sys

import numpy as np
import pytest

import needle.backend_ndarray as nd

X = np.random.RandomState(0).randn(200, 300).astype(np.float32)


def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


def _ops():
    a, b = nd.array(X), nd.array(X)
    dev = nd.cpu()
    ops = {
        "add": lambda: a + b,
        "rsub_scalar": lambda: 2.0 - a,
        "compare": lambda: a < b,
        "broadcast_add": lambda: a + b[0],
        "matmul": lambda: a @ b.permute((1, 0)),
        "sum": lambda: a.sum(axis=1),
        "max": lambda: a.max(),
        "exp": lambda: a.exp(),
        "getitem": lambda: a[1:5, ::2],
        "setitem_scalar": lambda: a.__setitem__((slice(0, 2),), 1.0),
        "setitem_array": lambda: a.__setitem__((slice(0, 2),), b[3:5]),
        "numpy": lambda: a.numpy(),
        "asarray": lambda: np.asarray(a),
        "compact": lambda: a.permute((1, 0)).compact(),
        "flip": lambda: a.flip((0,)),
        "pad": lambda: a.pad(((1, 1), (0, 0))),
        "reshape": lambda: a.reshape((300, 200)),
        "broadcast_to": lambda: a[0].broadcast_to((5, 200, 300)),
        "repr": lambda: repr(a[0:1, 0:3]),
        "construct": lambda: nd.array(X),
        "construct_f64": lambda: nd.array(X, dtype="float64"),
        "copy": lambda: nd.NDArray(a),
        "to_other_device": lambda: a.to(nd.cpu_numpy()),
        "randn": lambda: dev.randn(20, 30),
        "kernel_add": lambda: dev.ewise_add(a._handle, b._handle, dev.Array(X.size)),
        "fields": lambda: (a._shape, a._strides, a._offset, a._device, a._handle.ptr()),
        "err_shape": lambda: a + nd.array(np.ones((3, 3))),
        "err_axis": lambda: a.sum(axis=5),
        "err_index": lambda: a[500],
        "err_step": lambda: a[::-1],
        "err_reshape": lambda: a.permute((1, 0)).reshape((60000,)),
        "err_dtype": lambda: nd.array(X, dtype="foo"),
        "err_device": lambda: a + nd.array(X, device=nd.cpu_numpy()),
        "err_cuda": lambda: nd.array(X, device=nd.cuda()),
        "err_matmul": lambda: a @ b,
        "err_setitem": lambda: a.__setitem__((slice(0, 2),), b),
        "err_scalar": lambda: a + "x",
    }
    return a, b, ops


A, B, OPS = _ops()


@pytest.mark.parametrize("name", sorted(OPS))
def test_no_leak(name):
    op = OPS[name]

    def run(n):
        for _ in range(n):
            try:
                op()
            except Exception:
                pass
        gc.collect()

    run(20)  # warm up caches, pools and lazily created objects
    before = (sys.getrefcount(A), sys.getrefcount(B), sys.getrefcount(X), len(gc.get_objects()))
    mem = rss_mb()
    run(200)  # each result is 240 kB: a leak would add ~48 MB
    after = (sys.getrefcount(A), sys.getrefcount(B), sys.getrefcount(X), len(gc.get_objects()))
    assert after[:3] == before[:3]
    assert after[3] - before[3] < 50
    # Under AddressSanitizer (make asan) freed memory sits in a quarantine: RSS grows.
    if not os.environ.get("NEEDLE_ASAN_RUN"):
        assert rss_mb() - mem < 10
