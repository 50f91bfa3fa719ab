"""The per-element math headers compile and link under nvcc, so the CUDA
kernels can share the exact math the CPU tests check (DESIGN.md layer 2).
Every elementwise row of csrc/ops.def is instantiated in a __global__ kernel
by including the op rows themselves, as the CUDA backend will. No GPU is
needed: this only compiles and links. Skipped where nvcc is absent."""
import os
import re
import shutil
import subprocess

import pytest

CSRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
ND = os.path.join(CSRC, "ndarray")


def kernel_rows(kind):
    """The kernel names of the NDL_<kind>[_KERNEL] rows of ops.def."""
    with open(os.path.join(CSRC, "ops.def")) as f:
        text = f.read()
    ops = re.findall(rf"^NDL_{kind}\(\s*\w+,\s*\w+,\s*\w+,\s*(\w+),", text, re.M)
    kernels = re.findall(rf"^NDL_{kind}_KERNEL\(\s*\w+,\s*(\w+),", text, re.M)
    return ops + kernels


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_scalar_and_optim_math_compile_under_nvcc(tmp_path):
    unary, binary = kernel_rows("UNARY"), kernel_rows("BINARY")
    assert {"neg", "exp", "sin", "cos", "sqrt"} <= set(unary), unary
    assert {"add", "mul", "pow", "maximum", "le"} <= set(binary), binary
    src = f"""
#include "scalar_ops.h"
#include "optim_ops.h"
__global__ void every_op(const double *in, double *out, int n) {{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    double x = in[i], y = in[(i + 1) % n], acc = 0, p, m, v;
#define NDL_UNARY_KERNEL(K, k, numpy, method) acc += ndl_##k##_f32(x) + ndl_##k##_f64(x);
#define NDL_BINARY_KERNEL(K, k, numpy, method) acc += ndl_##k##_f32(x, y) + ndl_##k##_f64(x, y);
#include "ops.def"
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
    res = subprocess.run(["nvcc", "-I", ND, "-I", CSRC, "-o", str(tmp_path / "every_op"), str(cu)],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-4000:]
