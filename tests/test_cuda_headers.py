"""The per-element math headers compile and link under nvcc, so the CUDA
kernels can share the exact math the CPU tests check (DESIGN.md layer 2).
Every op row of the .def tables is instantiated in a __global__ kernel. No GPU
is needed: this only compiles and links. Skipped where nvcc is absent."""
import os
import re
import shutil
import subprocess

import pytest

ND = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc", "ndarray")


def rows(name):
    with open(os.path.join(ND, name)) as f:
        return re.findall(r"^X\(\w+, (\w+)\)", f.read(), re.M)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_scalar_and_optim_math_compile_under_nvcc(tmp_path):
    unary, binary = rows("unary_ops.def"), rows("binary_ops.def")
    assert unary and binary
    body = []
    for t in ("f32", "f64"):
        body += [f"acc += ndl_{op}_{t}(x);" for op in unary]
        body += [f"acc += ndl_{op}_{t}(x, y);" for op in binary]
    src = f"""
#include "scalar_ops.h"
#include "optim_ops.h"
__global__ void every_op(const double *in, double *out, int n) {{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    double x = in[i], y = in[(i + 1) % n], acc = 0, p, m, v;
    {' '.join(body)}
    ndl_adam_f64(x, y, 0, 0, 1e-3, 0.9, 0.1, 0.999, 1e-3, 1e-8, 0, 0.1, 1e-3, &p, &m, &v);
    ndl_sgd_f64(x, y, 0, 1e-2, 0.9, 0.1, 0, 1, &p, &m);
    out[i] = acc + p + m + v;
}}
int main() {{ return 0; }}
"""
    cu = tmp_path / "every_op.cu"
    cu.write_text(src)
    # NOTE: under `make asan` the sanitizer runtime is preloaded; nvcc must not inherit it
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    res = subprocess.run(["nvcc", "-I", ND, "-o", str(tmp_path / "every_op"), str(cu)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
