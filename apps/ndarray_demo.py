"""A short tour of needle's NDArray: views, broadcasting, reductions, matmul.

Run with `make demo`.
"""
import time

import numpy as np

import needle.backend_ndarray as nd


def main() -> None:
    a = nd.array(np.arange(12, dtype=np.float32).reshape(3, 4))
    print("a =", a)
    t = a.permute((1, 0))
    print("a.permute((1, 0)) is a view:", t._handle.ptr() == a._handle.ptr(),
          "compact:", t.is_compact())
    print("a[1:, ::2] =", a[1:, ::2].numpy().tolist())
    print("a + a.sum(axis=0) broadcast:", (a + a.sum(axis=0)).shape)
    print("a.max(axis=1) =", a.max(axis=1))
    print("np.asarray(a) shares memory:", np.shares_memory(np.asarray(a), np.asarray(a)))

    n = 1024
    x = np.random.randn(n, n).astype(np.float32)
    y = np.random.randn(n, n).astype(np.float32)
    ax, ay = nd.array(x), nd.array(y)
    ax @ ay  # warm-up
    t0 = time.perf_counter()
    c = ax @ ay
    dt = time.perf_counter() - t0
    err = np.abs(c.numpy() - x @ y).max()
    print(f"{n}x{n} matmul: {2 * n**3 / dt / 1e9:.1f} GFLOP/s on {nd.get_num_threads()} threads "
          f"({nd.matmul_kernel_name()} kernel), max |error| vs NumPy {err:.2e}")


if __name__ == "__main__":
    main()
