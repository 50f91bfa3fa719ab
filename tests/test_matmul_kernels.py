"""Every matmul micro-kernel this CPU can run (NEEDLE_MATMUL_KERNEL picks one at
import), against NumPy on edge-heavy shapes, in a child process each."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import numpy as np, needle.backend_ndarray as nd
assert nd.matmul_kernel_name() == KERNEL, nd.matmul_kernel_name()
rng = np.random.default_rng(0)
for dt in ("float32", "float64"):
    tol = 1e-4 if dt == "float32" else 1e-10
    for m, n, p in [(1, 1, 1), (5, 7, 3), (13, 17, 31), (67, 65, 66), (130, 257, 129), (1, 300, 1)]:
        a = rng.standard_normal((m, n)).astype(dt)
        b = rng.standard_normal((n, p)).astype(dt)
        for A, B in [(a, b), (a, b[::-1])]:
            got = (nd.array(A, dtype=dt) @ nd.array(B, dtype=dt)).numpy()
            ref = A.astype(np.float64) @ B.astype(np.float64)
            np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.sqrt(n))
        at = nd.array(a.T.copy(), dtype=dt).permute((1, 0))  # transposed view, no copy
        np.testing.assert_allclose((at @ nd.array(b, dtype=dt)).numpy(), a.astype(np.float64) @ b,
                                   rtol=tol, atol=tol * np.sqrt(n))
    x = rng.standard_normal((3, 1, 20, 9)).astype(dt)
    y = rng.standard_normal((4, 9, 11)).astype(dt)
    np.testing.assert_allclose((nd.array(x, dtype=dt) @ nd.array(y, dtype=dt)).numpy(), x @ y,
                               rtol=tol, atol=tol * 3)
print("ok")
"""


def supported():
    out = ["generic"]
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    if " avx2" in flags and " fma" in flags:
        out.append("avx2")
    if " avx512f" in flags:
        out.append("avx512")
    return out


@pytest.mark.parametrize("kernel", ["generic", "avx2", "avx512"])
def test_kernel_matches_numpy(kernel):
    if kernel not in supported():
        pytest.skip(f"this CPU cannot run the {kernel} kernel")
    env = dict(os.environ, NEEDLE_MATMUL_KERNEL=kernel, PYTHONPATH=ROOT)
    res = subprocess.run([sys.executable, "-c", f"KERNEL = {kernel!r}\n" + CHILD], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]
