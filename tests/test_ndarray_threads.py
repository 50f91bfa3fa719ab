"""Thread-count independence: matmul, large elementwise ops and large
reductions give bitwise-equal results with 1 and with several threads
(`nd.set_num_threads` / `nd.get_num_threads`), and agree with NumPy.
"""
import numpy as np
import pytest

import needle.backend_ndarray as nd


@pytest.fixture
def restore_threads():
    original = nd.get_num_threads()
    assert isinstance(original, int) and original >= 1
    yield
    nd.set_num_threads(original)
    assert nd.get_num_threads() == original


def run_with_threads(fn, counts=(1, 2, 4)):
    results = []
    for k in counts:
        nd.set_num_threads(k)
        assert nd.get_num_threads() == k
        results.append(fn())
    return results


def assert_all_equal(results):
    for r in results[1:]:
        assert r.shape == results[0].shape
        np.testing.assert_array_equal(r, results[0])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mnp", [(512, 384, 256), (257, 513, 129), (3, 1000, 2000)], ids=str)
def test_matmul_thread_count_independent(restore_threads, mnp, dtype):
    m, n, p = mnp
    x = np.random.randn(m, n).astype(dtype)
    y = np.random.randn(n, p).astype(dtype)
    a, b = nd.array(x, dtype=dtype), nd.array(y, dtype=dtype)
    results = run_with_threads(lambda: (a @ b).numpy())
    assert_all_equal(results)
    ref = x.astype(np.float64) @ y.astype(np.float64)
    eps = np.finfo(dtype).eps
    bound = (2 * np.sqrt(n) + 2) * eps * (np.abs(x).astype(np.float64) @ np.abs(y))
    assert np.all(np.abs(results[0] - ref) <= bound)


def test_batched_matmul_thread_count_independent(restore_threads):
    x = np.random.randn(16, 64, 96).astype(np.float32)
    y = np.random.randn(96, 80).astype(np.float32)
    a, b = nd.array(x), nd.array(y)
    results = run_with_threads(lambda: (a @ b).numpy())
    assert_all_equal(results)
    np.testing.assert_allclose(results[0], x.astype(np.float64) @ y, rtol=1e-4, atol=1e-4)


def test_elementwise_thread_count_independent(restore_threads):
    n = 1 << 20
    x = np.random.randn(n).astype(np.float32)
    y = np.random.rand(n).astype(np.float32) + 0.5
    a, b = nd.array(x), nd.array(y)
    at = nd.array(x.reshape(1024, 1024)).permute((1, 0))

    def compute():
        return [
            (a * b + 1.5).numpy(),
            (a / b).numpy(),
            a.exp().numpy(),
            a.tanh().numpy(),
            b.log().numpy(),
            (a >= 0.25).numpy(),
            (b ** 1.5).numpy(),
            a.maximum(b).numpy(),
            (at + 1.0).numpy(),
            at.compact().numpy(),
        ]

    results = run_with_threads(compute)
    for outs in zip(*results):
        assert_all_equal(list(outs))
    first = results[0]
    np.testing.assert_array_equal(first[0], x * y + np.float32(1.5))
    np.testing.assert_array_equal(first[1], x / y)
    np.testing.assert_allclose(first[2], np.exp(x), rtol=2e-6)
    np.testing.assert_array_equal(first[5], (x >= np.float32(0.25)).astype(np.float32))
    np.testing.assert_array_equal(first[8], x.reshape(1024, 1024).T + np.float32(1))
    np.testing.assert_array_equal(first[9], x.reshape(1024, 1024).T)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reductions_thread_count_independent(restore_threads, dtype):
    x = np.random.randn(1024, 2048).astype(dtype)
    a = nd.array(x, dtype=dtype)
    at = a.permute((1, 0))

    def compute():
        return [
            a.sum().numpy(),
            a.sum(axis=0).numpy(),
            a.sum(axis=1).numpy(),
            at.sum(axis=1).numpy(),
            a.max().numpy(),
            a.max(axis=0).numpy(),
            a.max(axis=1, keepdims=True).numpy(),
        ]

    results = run_with_threads(compute)
    for outs in zip(*results):
        assert_all_equal(list(outs))
    first = results[0]
    x64 = x.astype(np.float64)
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(first[0], [x64.sum()], atol=x.size * eps * np.abs(x64).sum())
    np.testing.assert_allclose(first[1], x64.sum(axis=0), atol=1024 * eps * 4 * 1024)
    np.testing.assert_allclose(first[2], x64.sum(axis=1), atol=2048 * eps * 4 * 2048)
    np.testing.assert_allclose(first[3], x64.sum(axis=0), atol=1024 * eps * 4 * 1024)
    np.testing.assert_array_equal(first[4], [x.max()])
    np.testing.assert_array_equal(first[5], x.max(axis=0))
    np.testing.assert_array_equal(first[6], x.max(axis=1, keepdims=True))


def test_concurrent_python_threads():
    # kernels release the GIL and share one worker pool: calls from several
    # Python threads at once must neither deadlock nor mix up results
    import threading

    x = np.random.randn(300, 300).astype(np.float32)
    big = nd.array(np.random.randn(1 << 20).astype(np.float32))
    a = nd.array(x)
    jobs = [
        lambda: (a @ a).numpy(),
        lambda: a.sum(axis=0).numpy(),
        lambda: (a * 2.0 + a.permute((1, 0))).exp().numpy(),
        lambda: (big * big).sum().numpy(),
    ]
    refs = [job() for job in jobs]
    failures = []

    def work():
        for _ in range(20):
            for i, job in enumerate(jobs):
                if not np.array_equal(job(), refs[i]):
                    failures.append(i)

    threads = [threading.Thread(target=work, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "deadlock"
    assert failures == []
