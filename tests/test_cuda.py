"""The cuda device (issue 10): its build, when it is enabled and what it says
when it is not, and every kernel slot against NumPy. The kernel tests are
parametrized over devices: the cpu cases run everywhere (they check the tests
themselves), the cuda cases only where a GPU is usable, and say why not."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import needle as ndl
import needle.backend_ndarray as nd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# NEEDLE_CUDA_EMU=1: cuda() is needle._cuda_emu, the kernels on the CPU under the
# CUDA emulator (csrc/cuda/emu; `make cuda-emu`), and these tests use that module.
EMU = os.environ.get("NEEDLE_CUDA_EMU") == "1"
CU_NAME = "needle._cuda_emu" if EMU else "needle._cuda"


# Inputs of 2^24 to 2^31 elements are a GPU's work: the emulator would take hours.
GPU_SCALE = pytest.mark.skipif(EMU, reason="GPU-scale input (2^24 to 2^31 elements): too slow "
                               "under the CUDA emulator")


def _cu():
    """The module behind cuda(): needle._cuda, or needle._cuda_emu under NEEDLE_CUDA_EMU=1."""
    import importlib
    return importlib.import_module(CU_NAME)


def _cuda_unusable():
    """None when the cuda device can run kernels here, else why not."""
    try:
        cu = _cu()
    except ImportError as e:
        return f"{CU_NAME} is not built ({e})"
    return cu.probe()


WHY = _cuda_unusable()
DEVICES = [pytest.param(nd.cpu(), id="cpu"),
           pytest.param(nd.cuda(), id="cuda",
                        marks=pytest.mark.skipif(WHY is not None, reason=f"no GPU: {WHY}"))]
DTYPES = ["float32", "float64"]
RNG = np.random.default_rng(0)


def rand(*shape, dtype="float32"):
    return RNG.standard_normal(shape).astype(dtype)


def tol(dtype):
    return dict(rtol=1e-5, atol=1e-5) if dtype == "float32" else dict(rtol=1e-12, atol=1e-12)


# ---- build and device semantics (run without a GPU) ----------------------

def test_enabled_iff_module_loads_and_gpu_present():
    assert nd.cuda().enabled() is (WHY is None)


def test_disabled_cuda_names_the_reason():
    if WHY is None:
        pytest.skip("a GPU is usable here")
    for use in (lambda: nd.array(np.ones(3), device=nd.cuda()),
                lambda: nd.cuda().randn(2, 3),
                lambda: ndl.Tensor([1.0, 2.0], device=ndl.cuda())):
        with pytest.raises(RuntimeError, match=r"cuda\(\) is not available") as e:
            use()
        assert WHY.split(" (")[0] in str(e.value)


def test_without_the_module_says_it_was_not_built():
    code = ("import sys; sys.modules['needle._cuda'] = None\n"
            "import needle as ndl\n"
            "assert ndl.cuda().enabled() is False\n"
            "try:\n    ndl.cuda().empty((2,))\nexcept RuntimeError as e:\n    print(e)\n")
    env = {k: v for k, v in os.environ.items() if k != "NEEDLE_CUDA_EMU"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "built without CUDA" in out.stdout, out.stdout


@pytest.mark.skipif(shutil.which("nvcc") is None or os.environ.get("NEEDLE_CUDA") == "0",
                    reason="nvcc not installed (or NEEDLE_CUDA=0): needle._cuda is not built")
def test_module_is_built_where_nvcc_is():
    cu = _cu()
    assert type(cu.backend).__name__ == "PyCapsule"
    why = cu.probe()
    assert why is None or isinstance(why, str) and why
    assert set(cu.memory_stats()) == {"allocated", "cached"}


def test_default_device_can_be_cuda():
    """NEEDLE_DEFAULT_DEVICE=cuda (make cuda-check) puts device-less tensors on cuda()."""
    code = ("import needle as ndl, needle.init as init\n"
            "assert ndl.default_device() == ndl.cuda(), ndl.default_device()\n"
            "try:\n    t = init.rand(2)\nexcept RuntimeError as e:\n    print('refused', e)\n"
            "else:\n    print('on', t.device)\n")
    env = dict(os.environ, NEEDLE_DEFAULT_DEVICE="cuda")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("on cuda()" if WHY is None else "refused"), out.stdout
    assert nd.default_device() == nd.cpu()  # unset here


def test_cuda_check_runs_every_device_parametrized_file():
    """`make cuda-check` runs the cuda cases of every test file that takes the
    `device` fixture (tests/conftest.py): DEVICE_SUITE in the Makefile names them all."""
    import re
    with open(os.path.join(ROOT, "Makefile")) as f:
        text = f.read().replace("\\\n", " ")
    suite = set(re.search(r"^DEVICE_SUITE\s*=(.*)$", text, re.M).group(1).split())
    uses = set()
    for name in sorted(os.listdir(os.path.join(ROOT, "tests"))):
        if name.startswith("test_") and name.endswith(".py") and name != "test_cuda.py":
            with open(os.path.join(ROOT, "tests", name)) as f:
                if re.search(r"def test_\w+\([^)]*\bdevice\b", f.read()):
                    uses.add("tests/" + name)
    assert uses <= suite, sorted(uses - suite)
    assert all(os.path.exists(os.path.join(ROOT, p)) for p in suite), sorted(suite)


@pytest.mark.skipif(WHY is None, reason="a GPU is usable here (the benchmark would run)")
def test_benchmark_on_cuda_says_why_it_skips_without_a_gpu():
    """bench_ndarray.py --device cuda (bench_cuda.py) without a usable GPU: one line
    that says why, exit status 0, so `make bench` runs anywhere."""
    out = subprocess.run([sys.executable, "benchmarks/bench_ndarray.py", "--device", "cuda"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={k: v for k, v in os.environ.items() if k != "NEEDLE_CUDA_EMU"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("bench_cuda: skipped, no usable GPU: "), out.stdout


def test_forced_cuda_without_nvcc_fails_the_build():
    env = dict(os.environ, NEEDLE_CUDA="1", CUDA_HOME="/nonexistent-cuda")
    out = subprocess.run([sys.executable, "setup.py", "--name"], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=120)
    assert out.returncode != 0
    assert "NEEDLE_CUDA=1 but nvcc was not found" in out.stderr


def test_skipped_cuda_build_is_clean():
    env = dict(os.environ, NEEDLE_CUDA="0", CUDA_HOME="/nonexistent-cuda")
    out = subprocess.run([sys.executable, "setup.py", "--name"], capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=120)
    assert out.returncode == 0, out.stderr


# ---- every kernel slot against NumPy -------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0,), (1,), (7, 33), (2, 3, 300)])
def test_roundtrip_fill_and_astype(device, dtype, shape):
    x = rand(*shape, dtype=dtype)
    a = nd.array(x, dtype=dtype, device=device)
    np.testing.assert_array_equal(a.numpy(), x)
    other = "float64" if dtype == "float32" else "float32"
    np.testing.assert_array_equal(nd.array(a, dtype=other).numpy(), x.astype(other))
    np.testing.assert_array_equal(device.full(shape, 2.5, dtype=dtype).numpy(),
                                  np.full(shape, 2.5, dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_compact_and_setitem_of_views(device, dtype):
    x = rand(4, 5, 6, dtype=dtype)
    a = nd.array(x, dtype=dtype, device=device)
    np.testing.assert_array_equal(a.permute((2, 0, 1)).compact().numpy(), x.transpose(2, 0, 1))
    np.testing.assert_array_equal(a[1:4:2, 1:, 3].compact().numpy(), x[1:4:2, 1:, 3:4])
    # flip: the cuda backend leaves the slot NULL, so this copies from negative strides
    np.testing.assert_array_equal(a.flip((0, 2)).numpy(), x[::-1, :, ::-1])
    np.testing.assert_array_equal(a.pad(((1, 0), (0, 2), (0, 0))).numpy(),
                                  np.pad(x, ((1, 0), (0, 2), (0, 0))))
    b = nd.array(x[:1], dtype=dtype, device=device).broadcast_to((4, 5, 6))
    np.testing.assert_array_equal(b.compact().numpy(), np.broadcast_to(x[:1], (4, 5, 6)))
    y = rand(2, 5, 3, dtype=dtype)
    a[::2, :, 1::2] = nd.array(y, dtype=dtype, device=device)
    a[3, 1:3, :] = 7.0
    x[::2, :, 1::2] = y
    x[3, 1:3, :] = 7.0
    np.testing.assert_array_equal(a.numpy(), x)


UNARY = {"exp": np.exp, "log": np.log, "tanh": np.tanh, "sin": np.sin, "cos": np.cos,
         "sqrt": np.sqrt, "abs": np.abs, "relu": lambda v: np.maximum(v, 0),
         "sigmoid": lambda v: 1 / (1 + np.exp(-v))}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", sorted(UNARY))
def test_unary_kernels(device, dtype, name):
    x = rand(37, 41, dtype=dtype)
    if name in ("log", "sqrt"):
        x = np.abs(x) + 0.1
    a = nd.array(x, dtype=dtype, device=device)
    np.testing.assert_allclose(getattr(a, name)().numpy(), UNARY[name](x), **tol(dtype))
    # a strided input takes the strided loop
    np.testing.assert_allclose(getattr(a.permute((1, 0)), name)().numpy(), UNARY[name](x.T),
                               **tol(dtype))
    np.testing.assert_allclose((-a).numpy(), -x, **tol(dtype))


BINARY = ["add", "sub", "mul", "truediv", "pow", "maximum", "minimum", "eq", "ne", "gt", "ge",
          "lt", "le"]


def _binary(a, b, name):
    if name in ("maximum", "minimum"):
        return getattr(a, name)(b)
    import operator
    return getattr(operator, name)(a, b)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", BINARY)
def test_binary_and_scalar_kernels(device, dtype, name):
    x, y = rand(13, 70, dtype=dtype), rand(13, 70, dtype=dtype)
    if name == "pow":
        x = np.abs(x) + 0.5
    y[0, :5] = x[0, :5]  # equal elements for the comparisons
    a, b = (nd.array(v, dtype=dtype, device=device) for v in (x, y))
    npf = {"maximum": np.maximum, "minimum": np.minimum}.get(name)
    ref = (lambda u, v: npf(u, v)) if npf else (lambda u, v: _binary(u, v, name))
    np.testing.assert_allclose(_binary(a, b, name).numpy(), ref(x, y).astype(dtype),
                               **tol(dtype))
    # broadcast (stride 0) and transposed operands
    row = nd.array(y[:1], dtype=dtype, device=device).broadcast_to((13, 70))
    np.testing.assert_allclose(_binary(a, row, name).numpy(), ref(x, np.broadcast_to(y[:1],
                               (13, 70))).astype(dtype), **tol(dtype))
    if name not in ("maximum", "minimum"):
        np.testing.assert_allclose(_binary(a, 1.5, name).numpy(),
                                   ref(x, dtype == "float32" and np.float32(1.5) or 1.5)
                                   .astype(dtype), **tol(dtype))
    if name in ("sub", "truediv", "add", "mul"):  # reflected: the scalar on the left
        np.testing.assert_allclose(_binary(1.5, a, name).numpy(),
                                   _binary(np.asarray(1.5, dtype), x, name), **tol(dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axis", [None, 0, 1, 2, (0, 2), (1, 2)])
@pytest.mark.parametrize("op", ["sum", "max"])
def test_reductions(device, dtype, axis, op):
    x = rand(5, 300, 7, dtype=dtype)
    a = nd.array(x, dtype=dtype, device=device)
    ref = getattr(x, op)(axis=axis, keepdims=True)
    np.testing.assert_allclose(getattr(a, op)(axis=axis, keepdims=True).numpy(), ref,
                               rtol=1e-4 if dtype == "float32" else 1e-12, atol=1e-4)
    t = a.permute((2, 1, 0))
    np.testing.assert_allclose(getattr(t, op)(axis=0).numpy(),
                               getattr(x.transpose(2, 1, 0), op)(axis=0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
def test_max_propagates_nan(device):
    x = np.ones((3, 4), "float32")
    x[1, 2] = np.nan
    np.testing.assert_array_equal(nd.array(x, device=device).max(axis=1).numpy(), x.max(axis=1))


# ---- the reduction paths (Note [Reduction paths], cuda_reduce.cu) ----------
# Each (shape, axis) names the path it takes on a GPU: "cols" (outputs along
# the kept inner axis), "blocks" (reduced axis innermost, or a full reduction),
# with the chunked second pass where there are few outputs for a long extent.
# The cpu cases check the same expectations on the CPU backend.
REDUCE_CASES = [
    ((0, 7), 0),            # cols: 0 rows, every output the empty sum
    ((1, 7), 0),            # cols: 1 row
    ((31, 7), 0),           # cols, short extent
    ((33, 257), 0),         # cols
    ((1000, 257), 0),       # cols, chunked (16 chunks of 63 rows)
    ((65537, 3), 0),        # cols, chunked (1025 chunks of 64 rows): Linear's bias gradient
    ((65537, 1), 0),        # a size-1 kept axis dropped: a full reduction (blocks, chunked)
    ((5, 1), 1),            # size-1 reduced axis
    ((33, 31), 1),          # short last axis: cols
    ((31, 1000), 1),        # blocks
    ((3, 65537), 1),        # blocks, chunked (17 chunks)
    ((5, 300, 7), 1),       # middle axis: cols, chunked
    ((4, 1000, 33), 1),     # middle axis: cols, chunked
    ((3, 33, 31, 5), (1, 2)),  # two middle axes merged into one
    ((5, 300, 7), (0, 2)),  # non-adjacent reduced axes (strided red offsets)
    ((1,), None),           # full, 1 element
    ((31, 33), None),       # full, blocks
    ((65537,), None),       # full, blocks, chunked
    ((1000, 257), None),    # full, blocks, chunked (63 chunks)
]


def _reduce_bound(x64, axis, dtype):
    """|float sum - exact| <= (extent + 1) * eps * sum |x| for any order of the adds."""
    n = x64.size if axis is None else int(np.prod([x64.shape[a] for a in np.atleast_1d(axis)]))
    return (n + 1) * np.finfo(dtype).eps * np.abs(x64).sum(axis=axis) + 1e-300


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", REDUCE_CASES)
@pytest.mark.parametrize("transposed", [False, True], ids=["compact", "transposed"])
def test_reduction_paths_against_float64(device, dtype, shape, axis, transposed):
    x = rand(*shape, dtype=dtype)
    a = nd.array(x, dtype=dtype, device=device)
    if transposed:  # the same values through reversed strides: the other path
        rev = tuple(reversed(range(len(shape))))
        a = nd.array(np.ascontiguousarray(x.transpose(rev)), dtype=dtype,
                     device=device).permute(rev)
    x64 = x.astype(np.float64)
    got = a.sum(axis=axis).numpy()
    want = x64.sum(axis=axis)
    assert got.shape == np.shape(want) or got.size == np.size(want)
    got = got.reshape(np.shape(want))
    assert np.all(np.abs(got - want) <= _reduce_bound(x64, axis, dtype)), \
        np.max(np.abs(got - want))
    if x.size and all(x.shape[d] for d in (range(x.ndim) if axis is None
                                            else np.atleast_1d(axis))):
        np.testing.assert_array_equal(a.max(axis=axis).numpy().reshape(np.shape(want)),
                                      x.max(axis=axis))  # exact in any order


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", [((65537, 3), 0), ((3, 65537), 1), ((4, 1000, 33), 1),
                                        ((65537,), None), ((31, 33), 0)])
def test_max_propagates_nan_on_every_reduction_path(device, dtype, shape, axis):
    x = rand(*shape, dtype=dtype)
    flat = x.reshape(-1)
    flat[[0, flat.size // 2, flat.size - 1]] = np.nan  # first, middle and last chunks
    got = nd.array(x, dtype=dtype, device=device).max(axis=axis).numpy()
    np.testing.assert_array_equal(got.reshape(np.shape(x.max(axis=axis))), x.max(axis=axis))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", [((65537, 3), 0), ((3, 65537), 1), ((1000, 257), None),
                                        ((4, 1000, 33), 1)])
def test_reductions_are_deterministic(device, dtype, shape, axis):
    """Chunking by shape only and every fold in a fixed order: the same bits twice."""
    a = nd.array(rand(*shape, dtype=dtype) * 1e3 + 0.1, dtype=dtype, device=device)
    first = a.sum(axis=axis).numpy()
    for _ in range(2):
        np.testing.assert_array_equal(a.sum(axis=axis).numpy(), first)


@pytest.mark.skipif(WHY is not None, reason=f"no GPU: {WHY}")
@pytest.mark.parametrize("dtype", DTYPES)
def test_reductions_match_the_cpu_within_summation_rounding(dtype):
    """Not bit for bit (the GPU's order is not the CPU's, Note [Reduction paths]):
    within the summation bound of both against float64."""
    for shape, axis in REDUCE_CASES:
        x = rand(*shape, dtype=dtype)
        c, g = (nd.array(x, dtype=dtype, device=d).sum(axis=axis).numpy()
                for d in (nd.cpu(), nd.cuda()))
        bound = 2 * _reduce_bound(x.astype(np.float64), axis, dtype)
        assert np.all(np.abs(g.astype(np.float64) - c.reshape(g.shape)) <=
                      np.reshape(bound, g.shape)), (shape, axis)


@GPU_SCALE
@pytest.mark.skipif(WHY is not None, reason=f"no GPU: {WHY}")
def test_full_sum_over_two_to_the_31_elements():
    """Both chunked paths past 2^31 elements (17 GB of float64 ones, every index
    int64): the full sum (blocks, 1024 chunks) and the column sums of (2^25 + 1, 64)
    (cols, 2048 chunks); float64 counts ones exactly, in any order."""
    n = 2 ** 31 + 64
    try:
        x = ndl.init.ones(n, device=nd.cuda(), dtype="float64").cached_data
    except MemoryError as e:
        pytest.skip(f"not enough GPU memory: {e}")
    cu = _cu()
    try:
        total = x.sum(axis=0).numpy()
        col = x.reshape((n // 64, 64)).sum(axis=0).numpy()  # cols path, chunked
    finally:
        del x
        cu.empty_cache()
    assert float(total.reshape(-1)[0]) == float(n)
    np.testing.assert_array_equal(col, np.full(64, n // 64, dtype=np.float64))


# ---- the warps path: short innermost rows, many of them (fifth review) ------

def _cuda_module():
    """needle._cuda (or _cuda_emu) where it is built (its host-side launch logic runs
    without a GPU)."""
    try:
        cu = _cu()
    except ImportError as e:
        pytest.skip(f"{CU_NAME} is not built ({e})")
    return cu


WARP_EXTENTS = [1, 31, 32, 33, 64, 65, 127, 128, 255, 256, 257, 1000]
WARP_ROWS = 4097  # 512 blocks of 8 warps and one output more


def test_reduction_plan_picks_a_warp_per_short_row():
    """Note [Reduction paths], computed by the module's host code on any machine: a
    reduced innermost axis of 64 .. 1024 elements with >= 1024 outputs takes the
    warps path (never chunked); shorter rows stay on the columns path, longer ones
    or fewer outputs on the blocks path, the transposed layout on the columns path."""
    cu = _cuda_module()
    for n in WARP_EXTENTS + [1024, 1025]:
        want = "cols" if n < 64 else "warps" if n <= 1024 else "blocks"
        assert cu._reduce_plan((WARP_ROWS, n), (n, 1), (1,))[0] == want, n
        if n > 1:
            assert cu._reduce_plan((WARP_ROWS, n), (1, WARP_ROWS), (1,))[0] == "cols", n
    assert cu._reduce_plan((65536, 128), (128, 1), (1,)) == ("warps", 1, 128)
    assert cu._reduce_plan((1023, 128), (128, 1), (1,))[0] == "blocks"
    assert cu._reduce_plan((1024, 128), (128, 1), (1,))[0] == "warps"
    # a row of two reduced axes (merged or not) and kept axes around it
    assert cu._reduce_plan((64, 32, 4, 50), (6400, 200, 50, 1), (2, 3)) == ("warps", 1, 200)
    assert cu._reduce_plan((64, 32, 4, 50), (50, 3200, 12800, 1), (2, 3))[0] == "warps"
    assert cu._reduce_plan((64, 32, 50, 4), (6400, 200, 1, 50), (2, 3))[0] == "warps"
    assert cu._reduce_plan((8, 130, 48), (12480, 96, 2), (2,))[0] == "cols"  # 48 < 64
    # past 2^31 elements and 65535 x 8 outputs: still one launch, no chunks
    assert cu._reduce_plan((2 ** 24 + 1, 128), (128, 1), (1,)) == ("warps", 1, 128)
    assert cu._reduce_plan((0, 128), (128, 1), (1,))[0] is None


def _warp_input(n, dtype):
    x = rand(WARP_ROWS, n, dtype=dtype)
    x[7] = np.abs(x[7]) * 1e3  # a row of large terms of one sign
    return x


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", WARP_EXTENTS)
def test_warp_path_sums_and_maxes_rows(device, dtype, n):
    """Each row's sum within (n + 1) eps sum|x| of float64 (any order of the adds),
    its max exactly, the same bits twice (the lanes' order is fixed)."""
    x = _warp_input(n, dtype)
    a = nd.array(x, dtype=dtype, device=device)
    x64 = x.astype(np.float64)
    got = a.sum(axis=1).numpy().reshape(-1)
    assert np.all(np.abs(got - x64.sum(axis=1)) <= _reduce_bound(x64, 1, dtype)), \
        np.max(np.abs(got - x64.sum(axis=1)))
    np.testing.assert_array_equal(a.sum(axis=1).numpy().reshape(-1), got)
    np.testing.assert_array_equal(a.max(axis=1).numpy().reshape(-1), x.max(axis=1))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [33, 64, 65, 128, 257, 1000])
def test_warp_path_propagates_nan(device, dtype, n):
    """NaN in the first, a middle and the last element of a row (lanes 0, n // 2 % 32
    and (n - 1) % 32), and in the last row: that row's max and sum are NaN
    (ndl_maximum in every lane and in the shuffle tree), the others untouched."""
    x = _warp_input(n, dtype)
    x[1, 0] = x[2, n // 2] = x[3, n - 1] = x[WARP_ROWS - 1, n - 1] = np.nan
    x[4, :] = -np.inf  # a row of -inf: max -inf, never NaN
    a = nd.array(x, dtype=dtype, device=device)
    np.testing.assert_array_equal(a.max(axis=1).numpy().reshape(-1), x.max(axis=1))
    s = a.sum(axis=1).numpy().reshape(-1)
    np.testing.assert_array_equal(np.isnan(s), np.isnan(x.sum(axis=1)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_warp_path_of_views_and_of_two_reduced_axes(device, dtype):
    """The softmax / LayerNorm shapes through views: (B, T, n) over the last axis, a
    sliced row (stride-2 elements), two reduced axes of a 4-d array (adjacent, apart
    but contiguous in memory, and a transposed pair that does not merge: a division
    per element)."""
    x = rand(8, 130, 192, dtype=dtype)
    a = nd.array(x, dtype=dtype, device=device)
    x64 = x.astype(np.float64)
    cases = [(a, x64, (2,)), (a[:, :, ::2], x64[:, :, ::2], (2,))]  # 192 and 96 a row
    y = rand(64, 32, 4, 50, dtype=dtype)
    b = nd.array(y, dtype=dtype, device=device)
    y64 = y.astype(np.float64)
    cases += [(b, y64, (2, 3)), (b.permute((2, 0, 1, 3)), y64.transpose(2, 0, 1, 3), (0, 3)),
              (b.permute((0, 1, 3, 2)), y64.transpose(0, 1, 3, 2), (2, 3))]
    for v, v64, axes in cases:
        want = v64.sum(axis=axes)
        got = v.sum(axis=axes).numpy().reshape(want.shape)
        assert np.all(np.abs(got - want) <= _reduce_bound(v64, axes, dtype)), axes
        np.testing.assert_array_equal(v.max(axis=axes).numpy().reshape(want.shape),
                                      v64.max(axis=axes).astype(dtype))


@GPU_SCALE
@pytest.mark.skipif(WHY is not None, reason=f"no GPU: {WHY}")
def test_warp_path_over_two_to_the_31_elements():
    """(2^24 + 1, 128) float32 ones (8.6 GB): element indices past 2^31, and
    2^24 + 1 outputs, 32 turns of the warps' grid-stride loop; every row sums to 128
    exactly and the maxes are 1."""
    rows = 2 ** 24 + 1
    try:
        x = ndl.init.ones(rows * 128, device=nd.cuda()).cached_data.reshape((rows, 128))
    except MemoryError as e:
        pytest.skip(f"not enough GPU memory: {e}")
    cu = _cu()
    try:
        s = x.sum(axis=1).numpy().reshape(-1)
        m = x.max(axis=1).numpy().reshape(-1)
    finally:
        del x
        cu.empty_cache()
    np.testing.assert_array_equal(s, np.full(rows, 128.0, np.float32))
    np.testing.assert_array_equal(m, np.ones(rows, np.float32))


# ---- merged axes of ewise and copy (Note [Merged axes], cuda_common.cuh) ----

def _layout(base, view):
    """(shape, strides, offset) of a NumPy view of base, in elements."""
    item = base.itemsize
    return (view.shape, tuple(s // item for s in view.strides),
            (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // item)


def _offsets(shape, strides, offset):
    """Every element's offset in row-major order, from NumPy's index grid."""
    if not shape:
        return [offset]
    idx = np.indices(shape).reshape(len(shape), -1)
    return (offset + (np.asarray(strides)[:, None] * idx).sum(axis=0)).tolist()


_B4 = np.zeros((4, 5, 6, 7), np.float32)
_B3 = np.zeros((6, 7, 8), np.float32)
MERGE_CASES = [  # (views of one shape, the merged ndim)
    ([_B4, np.zeros((4, 5, 6, 7), np.float32)], 1),                         # both contiguous
    ([_B4.transpose(1, 0, 2, 3)[:, :, 1:3], np.zeros((5, 4, 2, 7))], 3),    # the Note's case
    ([_B4.transpose(1, 0, 2, 3), np.zeros((5, 4, 6, 7))], 3),               # (5, 4, 42)
    ([_B4[:, :, ::2, :], np.zeros((4, 5, 3, 7))], 2),                        # step 2: (20, 3, 7)
    ([_B4[:, 1:4, :, :], np.zeros((4, 3, 6, 7))], 2),                        # (4, 126)
    ([_B4[1:2, :, 2:3, :], np.zeros((1, 5, 1, 7))], 2),                      # size-1 dropped
    ([_B4[:, :, :, :1], np.zeros((4, 5, 6, 1))], 1),                         # (120,) stride 7
    ([np.broadcast_to(_B4[:, :1, :1], (4, 5, 6, 7)), _B4], 3),               # (4, 30, 7)
    ([np.broadcast_to(_B3[:1], (6, 7, 8)), _B3], 2),                         # (6, 56)
    ([_B3.transpose(2, 1, 0), np.zeros((8, 7, 6))], 3),
    ([_B3[::-1, :, ::-1], _B3.transpose(0, 1, 2)], 3),                       # negative strides
    ([_B3[:, ::-1, :], np.zeros((6, 7, 8))], 3),
    ([_B3[2:3, 3:4, 4:5], np.zeros((1, 1, 1))], 0),                          # one element
    ([_B4.transpose(1, 0, 2, 3), _B4.transpose(1, 0, 2, 3)], 3),
    ([_B4.transpose(0, 1, 3, 2), _B4.transpose(0, 1, 3, 2)], 3),             # copy, same perm
    ([_B4.transpose(0, 1, 3, 2)[:, :, :, 1:], np.zeros((4, 5, 7, 5)),
      np.broadcast_to(_B3[:1, :1, :5], (4, 5, 7, 5))], 3),                   # three operands
]


@pytest.mark.parametrize("case", range(len(MERGE_CASES)))
def test_merged_axes_keep_every_offset(case):
    """The module's own merge and ndl_cu_offset, run on the host: for every layout,
    every element's offset after merging equals NumPy's before merging, and the
    layouts merge to the expected number of axes (one for contiguous ones: the
    flat path; two divisions at most for the 4-d transposed-then-sliced view)."""
    cu = _cuda_module()
    views, ndim = MERGE_CASES[case]
    bases = [v.base if v.base is not None else v for v in views]
    while any(getattr(b, "base", None) is not None for b in bases):
        bases = [b.base if b.base is not None else b for b in bases]
    lays = [_layout(b, v) for b, v in zip(bases, views)]
    shape = lays[0][0]
    got_ndim, got = cu._merged_offsets(shape, [(st, off) for _, st, off in lays])
    assert got_ndim == ndim
    for (sh, st, off), offs in zip(lays, got):
        assert offs == _offsets(sh, st, off)


def test_merged_axes_leave_layouts_of_different_shapes_alone():
    """Layouts whose shapes differ (a caller's bug) are not merged: same offsets."""
    cu = _cuda_module()
    got_ndim, got = cu._merged_offsets((2, 3), [((3, 1), 0)])
    assert (got_ndim, got) == (1, [[0, 1, 2, 3, 4, 5]])
    assert cu._merged_offsets((), [((), 4)]) == (0, [[4]])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ewise_and_copy_of_merged_views(device, dtype):
    """Transposed, sliced and broadcast views of 3-d and 4-d arrays through compact,
    setitem, astype, a unary, a scalar and a binary op: NumPy's numbers exactly (one
    rounding each, the same on every device)."""
    x = rand(4, 5, 6, 7, dtype=dtype)
    y = rand(6, 7, 8, dtype=dtype)
    a, b = (nd.array(v, dtype=dtype, device=device) for v in (x, y))
    views = [
        (a.permute((1, 0, 2, 3))[:, :, 1:3], x.transpose(1, 0, 2, 3)[:, :, 1:3]),
        (a[:, :, ::2, :], x[:, :, ::2, :]),
        (a.permute((0, 1, 3, 2))[:, 1:4], x.transpose(0, 1, 3, 2)[:, 1:4]),
        (a[:, :1, :1].broadcast_to((4, 5, 6, 7)), np.broadcast_to(x[:, :1, :1], (4, 5, 6, 7))),
        (b.permute((2, 1, 0)), y.transpose(2, 1, 0)),
        (b[:1].broadcast_to((6, 7, 8)), np.broadcast_to(y[:1], (6, 7, 8))),
        (b[1:5, 2:3, ::3], y[1:5, 2:3, ::3]),
    ]
    other = "float64" if dtype == "float32" else "float32"
    for v, w in views:
        np.testing.assert_array_equal(v.compact().numpy(), w)
        np.testing.assert_array_equal(nd.array(v, dtype=other).numpy(), w.astype(other))
        np.testing.assert_array_equal((-v).numpy(), -w)
        np.testing.assert_array_equal(v.abs().numpy(), np.abs(w))
        np.testing.assert_array_equal((v * 3.0).numpy(), w * np.asarray(3.0, dtype))
        np.testing.assert_array_equal((v + v).numpy(), w + w)
    # two strided operands of one shape: a transposed view plus a broadcast one
    t, u = views[0][0], a[:1, :1, 1:3, :].broadcast_to((5, 4, 2, 7))
    np.testing.assert_array_equal((t + u).numpy(), views[0][1] +
                                  np.broadcast_to(x[:1, :1, 1:3, :], (5, 4, 2, 7)))
    # setitem: a view of a receives a transposed view of another array
    z = rand(7, 5, 3, 4, dtype=dtype)
    c = nd.array(z, dtype=dtype, device=device)
    a[:, :, ::2, :] = c.permute((3, 1, 2, 0))
    x[:, :, ::2, :] = z.transpose(3, 1, 2, 0)
    np.testing.assert_array_equal(a.numpy(), x)
    b[:, 2:4, :] = 1.5
    y[:, 2:4, :] = 1.5
    np.testing.assert_array_equal(b.numpy(), y)


# ---- cross-entropy labels through the staging buffer (Note [Staged uploads],
# cuda_memory.cu) -------------------------------------------------------------

def _xent_reference(z, y):
    z = z.astype(np.float64)
    m = z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(z - m).sum(axis=1, keepdims=True)) + m
    p = np.exp(z - lse)
    p[np.arange(len(y)), y] -= 1.0
    return float(np.mean(lse[:, 0] - z[np.arange(len(y)), y])), p / len(y)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_steps_with_changing_labels(device, dtype):
    """Several steps, each with new labels (and batch sizes that grow the staging
    buffer past its first 4096 bytes, then shrink): every step's loss and gradient
    use that step's labels, never the previous step's; a bad label in between
    raises and leaves the next step right."""
    rng = np.random.default_rng(7)
    k = 37
    for step, B in enumerate([5, 3, 700, 2000, 9, 2000, 1]):
        z = (rng.standard_normal((B, k)) * 3).astype(dtype)
        y = rng.integers(0, k, size=B)
        if step == 4:
            bad = y.astype(dtype)
            bad[B // 2] = k
            with pytest.raises(ValueError, match=f"label {k} is out of range for {k} classes"):
                ndl.ops.softmax_cross_entropy(ndl.Tensor(z, device=device, dtype=dtype),
                                              ndl.Tensor(bad, device=device, dtype=dtype))
        Z = ndl.Tensor(z, device=device, dtype=dtype, requires_grad=True)
        loss = ndl.ops.softmax_cross_entropy(Z, ndl.Tensor(y.astype(dtype), device=device,
                                                           dtype=dtype))
        loss.backward(create_graph=False)  # the softmax_xent_grad slot
        want_loss, want_grad = _xent_reference(z, y)
        t = 2e-5 if dtype == "float32" else 1e-12
        np.testing.assert_allclose(loss.numpy(), want_loss, rtol=t, atol=t)
        np.testing.assert_allclose(Z.grad.numpy(), want_grad, rtol=10 * t, atol=t / B)


def test_cpu_out_of_memory_never_carries_a_cuda_record():
    """Note [Out of memory detail] (ndl_args.c): only a device slot's
    NDL_ENOMEM_DEVICE reads the allocator's record; a CPU slot's scratch failing is
    "<what>: out of memory", also right after a failed device allocation left an
    out-of-memory record on this thread (the stale case of the fourth review). The
    CPU scratch here: reduce copies a broadcast view of 9 * 2^48 elements (36 PiB,
    beyond any address space) to reduce it."""
    if WHY is None:  # a GPU: leave a record first (128 TiB asked)
        with pytest.raises(MemoryError, match="CUDA out of memory"):
            nd.NDArray.make((2 ** 45,), device=nd.cuda())
        cu = _cu()
        assert cu.last_error().startswith("CUDA out of memory")
    a = nd.array(np.ones((3, 1, 3), np.float32), device=nd.cpu()).broadcast_to((3, 2 ** 48, 3))
    with pytest.raises(MemoryError) as e:
        a.sum(axis=(0, 1))
    assert str(e.value) == "sum: out of memory"


@pytest.mark.skipif(WHY is not None, reason=f"no GPU: {WHY}")
def test_out_of_memory_record_is_dropped_by_the_next_allocation():
    """Note [Out of memory detail] (ndl_args.c): a slot's own scratch failing says
    what the allocator recorded, so the record must be about the last request only.
    (The slot's failure itself cannot be provoked deterministically: it needs the
    device filled to just under a slot's scratch.) Checked: a storage
    out-of-memory names the bytes asked, and the next allocation drops its record."""
    with pytest.raises(MemoryError, match=r"asked 140737488355328 bytes"):
        nd.NDArray.make((2 ** 45,), device=nd.cuda())
    cu = _cu()
    nd.array([1.0], device=nd.cuda())  # any allocation drops the record
    assert not cu.last_error().startswith("CUDA out of memory")

MATMUL_SHAPES = [(1, 1, 1), (2, 3, 4), (63, 65, 67), (128, 16, 130), (1, 300, 1), (3, 0, 4),
                 (0, 5, 2), (200, 129, 64)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,p", MATMUL_SHAPES)
def test_matmul(device, dtype, m, n, p):
    x, y = rand(m, n, dtype=dtype), rand(n, p, dtype=dtype)
    a, b = (nd.array(v, dtype=dtype, device=device) for v in (x, y))
    t = dict(rtol=1e-4, atol=1e-4) if dtype == "float32" else dict(rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose((a @ b).numpy(), x @ y, **t)
    # transposed operands are read through their strides
    at = nd.array(x.T.copy(), dtype=dtype, device=device).permute((1, 0))
    bt = nd.array(y.T.copy(), dtype=dtype, device=device).permute((1, 0))
    np.testing.assert_allclose((at @ bt).numpy(), x @ y, **t)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_batched_and_broadcast_matmul(device, dtype):
    x, y = rand(3, 17, 33, dtype=dtype), rand(3, 33, 70, dtype=dtype)
    a, b = (nd.array(v, dtype=dtype, device=device) for v in (x, y))
    t = dict(rtol=1e-4, atol=1e-4) if dtype == "float32" else dict(rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose((a @ b).numpy(), x @ y, **t)
    w = rand(33, 5, dtype=dtype)
    np.testing.assert_allclose((a @ nd.array(w, dtype=dtype, device=device)).numpy(), x @ w, **t)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_matmul_batch_offsets_by_value_and_by_table(device, dtype):
    """Note [Batch offsets by value] (cuda_matmul.cu): batch axes permuted (offsets
    0, 3, 1, 4, 2, 5 times the matrix size: no step, so a device table), of A or of
    B; a broadcast batch (step 0), a compact one (a step), a batch of 1."""
    t = dict(rtol=1e-4, atol=1e-4) if dtype == "float32" else dict(rtol=1e-11, atol=1e-11)

    def arr(v):
        return nd.array(v, dtype=dtype, device=device)

    x, y = rand(2, 3, 9, 33, dtype=dtype), rand(3, 2, 33, 20, dtype=dtype)
    yt = y.transpose(1, 0, 2, 3)  # (2, 3, 33, 20)
    np.testing.assert_allclose((arr(x).permute((1, 0, 2, 3)) @ arr(y)).numpy(),
                               x.transpose(1, 0, 2, 3) @ y, **t)
    np.testing.assert_allclose((arr(x) @ arr(y).permute((1, 0, 2, 3))).numpy(), x @ yt, **t)
    z, w = rand(1, 9, 33, dtype=dtype), rand(6, 33, 20, dtype=dtype)
    np.testing.assert_allclose((arr(z).broadcast_to((6, 9, 33)) @ arr(w)).numpy(), z @ w, **t)
    np.testing.assert_allclose((arr(np.repeat(z, 6, 0)) @ arr(w)).numpy(), z @ w, **t)
    np.testing.assert_allclose((arr(z) @ arr(w[:1])).numpy(), z @ w[:1], **t)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,m,n,p", [(1, 5, 5000, 7), (3, 70, 1100, 65), (2, 1, 2048, 1),
                                         (1, 64, 1024, 64)])
def test_matmul_split_along_n(device, dtype, batch, m, n, p):
    """Few output tiles and a long n (a weight gradient's shape): on the GPU the
    product is cut into 2 to 9 slices of n whose sums are added in order (Note
    [Split K], cuda_matmul.cu), here with a compact batch, A read transposed, and
    B's matrices interleaved (its batch axis strided inside each row)."""
    t = dict(rtol=1e-4, atol=1e-3) if dtype == "float32" else dict(rtol=1e-11, atol=1e-10)
    x, y = rand(batch, m, n, dtype=dtype), rand(batch, n, p, dtype=dtype)
    a, b = (nd.array(v, dtype=dtype, device=device) for v in (x, y))
    np.testing.assert_allclose((a @ b).numpy(), x @ y, **t)
    at = nd.array(x.transpose(0, 2, 1).copy(), dtype=dtype, device=device).permute((0, 2, 1))
    np.testing.assert_allclose((at @ b).numpy(), x @ y, **t)
    if batch > 1:
        yp = np.ascontiguousarray(y.transpose(1, 0, 2))  # (n, batch, p): the batch axis permuted
        bp = nd.array(yp, dtype=dtype, device=device).permute((1, 0, 2))
        np.testing.assert_allclose((a @ bp).numpy(), x @ y, **t)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("opt", ["sgd", "sgd_momentum", "adam"])
def test_optimizer_step_matches_cpu(device, opt):
    """A few steps of a small model on the device land where the CPU's do."""
    def run(dev):
        np.random.seed(3)
        model = ndl.nn.Sequential(ndl.nn.Linear(8, 16, device=dev), ndl.nn.ReLU(),
                                  ndl.nn.Linear(16, 3, device=dev))
        o = {"sgd": lambda p: ndl.optim.SGD(p, lr=0.1, weight_decay=0.01),
             "sgd_momentum": lambda p: ndl.optim.SGD(p, lr=0.1, momentum=0.9),
             "adam": lambda p: ndl.optim.Adam(p, lr=0.01, weight_decay=0.01)}[opt](
                 model.parameters())
        xs = np.random.default_rng(1).standard_normal((6, 10, 8)).astype("float32")
        ys = np.random.default_rng(2).integers(0, 3, (6, 10))
        for xb, yb in zip(xs, ys):
            loss = ndl.nn.SoftmaxLoss()(model(ndl.Tensor(xb, device=dev)),
                                        ndl.Tensor(yb, device=dev))
            o.reset_grad()
            loss.backward()
            o.step()
        return [p.numpy() for p in model.parameters()]
    for got, want in zip(run(device), run(nd.cpu())):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_convolution_data_movement(device, dtype):
    """pad, flip, dilate and im2col, on compact and transposed inputs."""
    from needle import _C
    x = rand(2, 7, 6, 3, dtype=dtype)
    for a, v in ((nd.array(x, dtype=dtype, device=device), x),
                 (nd.array(x.transpose(0, 2, 1, 3).copy(), dtype=dtype,
                           device=device).permute((0, 2, 1, 3)), x)):
        np.testing.assert_array_equal(a.pad(((0, 0), (1, 2), (2, 1), (0, 0))).numpy(),
                                      np.pad(v, ((0, 0), (1, 2), (2, 1), (0, 0))))
        np.testing.assert_array_equal(a.flip((1, 2)).numpy(), v[:, ::-1, ::-1])
        got = _C._dilate(a, (1,), 1).numpy()
        want = np.zeros((2, 14, 6, 3), dtype)
        want[:, ::2] = v
        np.testing.assert_array_equal(got, want)
        want = np.zeros((2, 21, 18, 3), dtype)
        want[:, ::3, ::3] = v
        np.testing.assert_array_equal(_C._dilate(a, (1, 2), 2).numpy(), want)
        for k, s in ((3, 1), (2, 2), (1, 3)):
            ho, wo = (7 - k) // s + 1, (6 - k) // s + 1
            ref = np.lib.stride_tricks.as_strided(
                v, (2, ho, wo, k, k, 3),
                (v.strides[0], v.strides[1] * s, v.strides[2] * s, v.strides[1], v.strides[2],
                 v.strides[3])).reshape(2 * ho * wo, k * k * 3)
            np.testing.assert_array_equal(_C._im2col(a, k, s).numpy().reshape(ref.shape), ref)
            np.testing.assert_array_equal(
                _C._im2col(a, k, s, 3, 5).numpy().reshape(5, -1), ref[3:8])


@GPU_SCALE
@pytest.mark.skipif(WHY is not None, reason=f"no GPU: {WHY}")
def test_conv_in_several_scratch_blocks_matches_the_cpu():
    """A conv whose im2col (302 MB of float64) is several of the GPU's 64 MB
    scratch blocks (Note [Conv in blocks of rows], ndarray_conv.c), and its
    weight gradient, whose dual form sums three blocks' products on the device:
    the cpu's numbers (its blocks are other sizes, so the sums' order differs)."""
    x, w = rand(16, 64, 64, 64, dtype="float64"), rand(3, 3, 64, 64, dtype="float64")
    g = rand(16, 64, 64, 64, dtype="float64")
    got, want = [], []
    for dev, out in ((ndl.cuda(), got), (ndl.cpu(), want)):
        tx = ndl.Tensor(x, device=dev, dtype="float64", requires_grad=True)
        tw = ndl.Tensor(w, device=dev, dtype="float64", requires_grad=True)
        y = ndl.ops.conv(tx, tw, stride=1, padding=1)
        (y * ndl.Tensor(g, device=dev, dtype="float64")).sum().backward()
        out += [y.numpy(), tx.grad.numpy(), tw.grad.numpy()]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("device", DEVICES)
def test_moves_between_devices_and_refuses_mixing(device):
    x = rand(3, 4)
    a = nd.array(x, device=nd.cpu()).to(device)
    assert a.device == device
    np.testing.assert_array_equal(a.to(nd.cpu()).numpy(), x)
    np.testing.assert_array_equal(nd.array(a.permute((1, 0)), device=nd.cpu()).numpy(), x.T)
    if device != nd.cpu():
        with pytest.raises(RuntimeError, match="different devices"):
            a + nd.array(x, device=nd.cpu())


# ---- the fused softmax slots (cpu_softmax.c / cuda_softmax.cu) --------------
# Shapes cross the warp (32), the 8-way sum and the 256-element rounds of the
# ordered row sum (Note [CPU order on the GPU]), and empty rows and arrays.
SOFTMAX_SHAPES = [(0, 5), (3, 0), (1, 1), (4, 7), (2, 3, 33), (3, 300), (2, 1029)]
STOL = {"float32": dict(rtol=1e-5, atol=1e-7), "float64": dict(rtol=1e-12, atol=1e-15)}
SGTOL = {"float32": dict(rtol=1e-4, atol=1e-6), "float64": dict(rtol=1e-10, atol=1e-13)}


def _torch(a, dtype, grad=False):
    import torch
    return torch.tensor(a, dtype=getattr(torch, dtype), requires_grad=grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SOFTMAX_SHAPES)
def test_fused_softmax_and_its_gradient(device, dtype, shape):
    import torch
    z = (np.random.randn(*shape) * np.random.choice([0.1, 1, 30], size=shape)).astype(dtype)
    g = np.random.randn(*shape).astype(dtype)
    if z.size:
        z.reshape(-1, shape[-1])[0, -1] = -np.inf      # a -inf entry
        z.reshape(-1, shape[-1])[-1, :] += 1e30 if dtype == "float64" else 1e20
    Z = ndl.Tensor(z, device=device, dtype=dtype, requires_grad=True)
    y = ndl.ops.softmax(Z)
    (y * ndl.Tensor(g, device=device, dtype=dtype)).sum().backward()
    TZ = _torch(z, dtype, True)
    ty = torch.softmax(TZ, -1)
    (ty * _torch(g, dtype)).sum().backward()
    assert y.device == device and Z.grad.device == device
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), **STOL[dtype])
    np.testing.assert_allclose(Z.grad.numpy(), TZ.grad.numpy(), **SGTOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("T,S", [(5, 5), (3, 40), (1, 300)])
def test_fused_attention_softmax(device, dtype, causal, T, S):
    import torch
    x = np.random.randn(2, 3, T, S).astype(dtype) * 4
    c0 = 1.7
    y = ndl.ops.attention_softmax(ndl.Tensor(x, device=device, dtype=dtype), c0,
                                  1.0 if causal else 0.0)
    tx = _torch(x, dtype) / torch.tensor(c0, dtype=getattr(torch, dtype))
    if causal:
        tx = tx.masked_fill(torch.ones(T, S, dtype=torch.bool).triu(S - T + 1),
                            float(-np.finfo(np.float32).max))
    np.testing.assert_allclose(y.numpy(), torch.softmax(tx, -1).numpy(), **STOL[dtype])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,k", [(0, 4), (1, 1), (5, 7), (9, 300), (3, 1029)])
@pytest.mark.parametrize("create_graph", [False, True], ids=["slot", "graph"])
def test_fused_softmax_cross_entropy(device, dtype, B, k, create_graph):
    import torch
    z = (np.random.randn(B, k) * 5).astype(dtype)
    y = np.random.randint(0, k, size=B).astype(dtype)
    Z = ndl.Tensor(z, device=device, dtype=dtype, requires_grad=True)
    loss = ndl.ops.softmax_cross_entropy(Z, ndl.Tensor(y, device=device, dtype=dtype))
    loss.backward(create_graph=create_graph)  # False: the softmax_xent_grad slot
    TZ = _torch(z, dtype, True)
    tl = torch.nn.functional.cross_entropy(TZ, torch.tensor(y).long())
    if B == 0:
        assert np.isnan(loss.numpy()) and np.isnan(tl.item())
        return
    tl.backward()
    np.testing.assert_allclose(loss.numpy(), tl.item(), **STOL[dtype])
    np.testing.assert_allclose(Z.grad.numpy(), TZ.grad.numpy(), **SGTOL[dtype])


@pytest.mark.skipif(WHY is not None, reason=f"no GPU: {WHY}")
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_softmax_slots_match_the_cpu(dtype):
    """Same formulation and sum order on both devices: within an ulp or two
    (nvcc's fma inside exp is the difference). Inputs from NumPy; the CPU
    results are themselves checked against torch above."""
    z = np.random.randn(6, 1029).astype(dtype) * 3
    g = np.random.randn(6, 1029).astype(dtype)
    lab = np.random.randint(0, 1029, size=6).astype(dtype)
    res = []
    for dev in (nd.cpu(), nd.cuda()):
        Z = ndl.Tensor(z, device=dev, dtype=dtype)
        res.append((ndl.ops.softmax(Z).numpy(),
                    ndl.ops.softmax_grad(ndl.ops.softmax(Z),
                                         ndl.Tensor(g, device=dev, dtype=dtype)).numpy(),
                    ndl.ops.softmax_cross_entropy(Z, ndl.Tensor(lab, device=dev,
                                                                dtype=dtype)).numpy()))
    eps = np.finfo(dtype).eps
    for a, b in zip(*res):  # atol: the gradient's g - s cancels
        np.testing.assert_allclose(b, a, rtol=4 * eps, atol=4 * eps * np.abs(a).max())


# ---- the fused LayerNorm and dropout slots (cpu_layernorm.c / cuda_layernorm.cu,
# cpu_dropout.c / cuda_dropout.cu) and the loss's gradient slot --------------
# Rows cross the warp (32), the 8-way sum and the 256-element rounds; (0, 5) has
# no rows (the weight's and bias's gradients are empty sums: zeros).
LN_SHAPES = [(0, 5), (1, 3), (4, 7), (2, 3, 33), (3, 300), (2, 1029), (300, 8)]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", LN_SHAPES)
@pytest.mark.parametrize("create_graph", [False, True], ids=["slot", "graph"])
def test_fused_layer_norm_and_its_gradients(device, dtype, shape, create_graph):
    """backward(create_graph=False) runs the layer_norm_grad slot; with a graph, the
    gradients are built from ops (Note [Fused LayerNorm])."""
    import torch
    n = shape[-1]
    x = np.random.randn(*shape) * 3 + 1
    w, b, g = np.random.randn(n), np.random.randn(n), np.random.randn(*shape)
    X, W, B = (ndl.Tensor(a, device=device, dtype=dtype, requires_grad=True) for a in (x, w, b))
    y = ndl.ops.layer_norm(X, W, B, 1e-5)
    (y * ndl.Tensor(g, device=device, dtype=dtype)).sum().backward(create_graph=create_graph)
    TX, TW, TB = (_torch(a.astype(dtype), dtype, True) for a in (x, w, b))
    ty = torch.nn.functional.layer_norm(TX, (n,), TW, TB, 1e-5)
    (ty * _torch(g.astype(dtype), dtype)).sum().backward()
    assert y.device == device and X.grad.device == device and W.grad.device == device
    np.testing.assert_allclose(y.numpy(), ty.detach().numpy(), **SGTOL[dtype])
    np.testing.assert_allclose(X.grad.numpy(), TX.grad.numpy(), **SGTOL[dtype])
    # W's and B's gradients are column sums over the rows, whose order on the GPU is not
    # the CPU's nor torch's (Note [LayerNorm column sums]): within the summation bound of
    # the float64 sums (a fixed tolerance failed for (300, 8) under the CUDA emulator: a
    # column of 300 terms ~1 summing to -0.015, 3.3e-6 off in float32)
    x2, g2 = x.reshape(-1, n), g.reshape(-1, n)
    xhat = (x2 - x2.mean(1, keepdims=True)) / np.sqrt(x2.var(1, keepdims=True) + 1e-5)
    for a, terms in ((W, g2 * xhat), (B, g2)):
        bound = 2 * _reduce_bound(terms, 0, dtype) + SGTOL[dtype]["atol"]
        err = np.abs(a.grad.numpy().astype(np.float64) - terms.sum(axis=0))
        assert np.all(err <= bound), np.max(err / bound)


def _layer_norm_grads(x, w, g, dtype, device):
    """LayerNorm's x, w, b gradients through the slot (backward without a graph)."""
    X, W, B = (ndl.Tensor(a, device=device, dtype=dtype, requires_grad=True)
               for a in (x, w, np.zeros_like(w)))
    y = ndl.ops.layer_norm(X, W, B, 1e-5)
    (y * ndl.Tensor(g, device=device, dtype=dtype)).sum().backward(create_graph=False)
    return X.grad.numpy(), W.grad.numpy(), B.grad.numpy()


# Rows cross the column sums' chunks of 256 rows (Note [LayerNorm column sums],
# cuda_layernorm.cu) and its 8 row lanes; columns cross its tiles of 32.
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows, n", [(1, 2), (9, 31), (255, 3), (257, 33), (1000, 5),
                                     (2 * 256 + 7, 64), (3001, 70)])
def test_layer_norm_weight_and_bias_gradients_sum_every_row(device, dtype, rows, n):
    """gw = sum_r g * xhat and gb = sum_r g against float64 NumPy, within the rounding
    any summation order allows ((rows + 20) eps of the sum of |terms|: a row missed or
    added is off by a whole term); the same numbers on a second run (fixed order)."""
    x = np.random.randn(rows, n) * 2 + 0.5
    w, g = np.random.randn(n), np.random.randn(rows, n)
    x, w, g = (a.astype(dtype).astype(np.float64) for a in (x, w, g))
    mean = x.mean(1, keepdims=True)
    xhat = (x - mean) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
    eps = np.finfo(dtype).eps
    gx, gw, gb = _layer_norm_grads(x, w, g, dtype, device)
    for got, terms in ((gw, g * xhat), (gb, g)):
        bound = (rows + 20) * eps * np.abs(terms).sum(0) + 1e-30
        err = np.abs(got - terms.sum(0))
        assert np.all(err <= bound), (np.max(err / bound), np.argmax(err / bound))
    h = g * w
    want = (h - h.mean(1, keepdims=True) - xhat * (h * xhat).mean(1, keepdims=True)) \
        / np.sqrt(x.var(1, keepdims=True) + 1e-5)
    scale = np.abs(h).max(1, keepdims=True) / np.sqrt(x.var(1, keepdims=True) + 1e-5)
    assert np.all(np.abs(gx - want) <= 64 * n * eps * scale)
    again = _layer_norm_grads(x, w, g, dtype, device)
    for a, b in zip((gx, gw, gb), again):
        np.testing.assert_array_equal(a, b)


@GPU_SCALE
@pytest.mark.skipif(WHY is not None, reason=f"no GPU: {WHY}")
def test_layer_norm_column_sums_of_more_than_65535_chunks():
    """2^24 + 300 rows: the chunk grows past 256 rows so that the chunks fit the grid's
    y limit (65535). float64, rows of (0, 1): gb of ones counts the rows exactly, gw adds
    -xh and +xh once a row (268 MB an array)."""
    rows, n = 2 ** 24 + 300, 2
    x = np.tile(np.array([[0.0, 1.0]]), (rows, 1))
    try:
        gx, gw, gb = _layer_norm_grads(x, np.ones(n), np.ones((rows, n)), "float64",
                                       nd.cuda())
    except MemoryError as e:
        pytest.skip(f"not enough GPU memory: {e}")
    np.testing.assert_array_equal(gb, [rows, rows])  # integers < 2^53: exact
    xh = 0.5 / np.sqrt(0.25 + 1e-5)
    np.testing.assert_allclose(gw, [-rows * xh, rows * xh], rtol=1e-9)
    np.testing.assert_allclose(gx[[0, -1]], np.zeros((2, n)), atol=1e-12)


@GPU_SCALE
@pytest.mark.skipif(WHY is not None, reason=f"no GPU: {WHY}")
def test_layer_norm_gradient_over_two_to_the_31_elements():
    """rows * n = 2^31 + 1024: the int64 indices of the rows and the column sums. x of
    ones (xhat = 0: gx = gw = 0) and g of ones, so gb counts the rows exactly; all made
    on the device (8.6 GB an array, about 60 GB in all)."""
    rows, n = 2 ** 21 + 1, 1024
    cu = nd.cuda()
    try:
        X = ndl.init.ones(rows, n, device=cu, requires_grad=True)
        W = ndl.init.ones(n, device=cu, requires_grad=True)
        B = ndl.init.zeros(n, device=cu, requires_grad=True)
        y = ndl.ops.layer_norm(X, W, B, 1e-5)
        (y * ndl.init.ones(rows, n, device=cu)).sum().backward(create_graph=False)
        gb, gw = B.grad.numpy(), W.grad.numpy()
        tail = X.grad.cached_data[rows - 2:, :].numpy()
    except MemoryError as e:
        pytest.skip(f"not enough GPU memory: {e}")
    finally:
        cmod = _cu()
        X = W = B = y = None
        cmod.empty_cache()
    np.testing.assert_array_equal(gb, np.full(n, rows, "float32"))  # 2^21 + 1 < 2^24: exact
    np.testing.assert_array_equal(gw, np.zeros(n, "float32"))
    np.testing.assert_array_equal(tail, np.zeros((2, n), "float32"))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(0,), (1,), (3, 7), (2, 3, 16), (5, 33), (4099,)])
def test_masked_scale_plain_and_packed_are_numpys_numbers(device, dtype, shape):
    """x * m / c, the product then the quotient in the dtype: NumPy's numbers bit for
    bit on every device (no sum, nothing to contract)."""
    x, g = np.random.randn(*shape).astype(dtype), np.random.randn(*shape).astype(dtype)
    m = np.random.rand(*shape) < 0.6
    flat = np.concatenate([m.reshape(-1), np.zeros((-m.size) % 16, dtype=bool)])
    bits = np.packbits(flat, bitorder="little").view("<u2").astype(dtype)
    c = np.dtype(dtype).type(0.6)
    want, gwant = (x * m.astype(dtype)) / c, (g * m.astype(dtype)) / c
    for mask, packed in ((m.astype(dtype), 0.0), (bits, 1.0)):
        X = ndl.Tensor(x, device=device, dtype=dtype, requires_grad=True)
        y = ndl.ops.masked_scale(X, ndl.Tensor(mask, device=device, dtype=dtype), 0.6, packed)
        (y * ndl.Tensor(g, device=device, dtype=dtype)).sum().backward()
        assert y.device == device and X.grad.device == device
        np.testing.assert_array_equal(y.numpy(), want)
        np.testing.assert_array_equal(X.grad.numpy(), gwant)


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_draws_and_packs_its_mask_on_every_device(device):
    """nn.Dropout packs its mask on any device (Note [Dropout mask on the device]):
    seeded, the cuda case drops the elements the cpu case drops."""
    x = np.random.randn(37, 19).astype("float32")
    np.random.seed(5)
    y = ndl.nn.Dropout(0.3)(ndl.Tensor(x, device=device)).numpy()
    np.random.seed(5)
    keep = (np.random.rand(37, 19) <= 0.7).astype("float32")
    np.testing.assert_array_equal(y, x * keep / np.float32(0.7))


@pytest.mark.skipif(WHY is not None, reason=f"no GPU: {WHY}")
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_layer_norm_and_loss_gradient_slots_match_the_cpu(dtype):
    """Same formulas and sum orders on both devices: within a few ulps (the device's
    pow and exp are the difference). The CPU results are checked against torch above."""
    x = np.random.randn(70, 1029) * 2 + 1
    w, b, g = np.random.randn(1029), np.random.randn(1029), np.random.randn(70, 1029)
    lab = np.random.randint(0, 1029, size=70).astype(dtype)
    res = []
    for dev in (nd.cpu(), nd.cuda()):
        X, W, B = (ndl.Tensor(a, device=dev, dtype=dtype, requires_grad=True) for a in (x, w, b))
        (ndl.ops.layer_norm(X, W, B, 1e-5) * ndl.Tensor(g, device=dev, dtype=dtype)).sum() \
            .backward(create_graph=False)  # the slots: no graph
        Z = ndl.Tensor(x, device=dev, dtype=dtype, requires_grad=True)
        ndl.ops.softmax_cross_entropy(Z, ndl.Tensor(lab, device=dev, dtype=dtype)) \
            .backward(create_graph=False)
        res.append((ndl.ops.layer_norm(X, W, B, 1e-5).numpy(), X.grad.numpy(), W.grad.numpy(),
                    B.grad.numpy(), Z.grad.numpy()))
    eps = np.finfo(dtype).eps
    for a, b_ in zip(*res):
        np.testing.assert_allclose(b_, a, rtol=16 * eps, atol=16 * eps * np.abs(a).max())


@pytest.mark.skipif(WHY is not None, reason=f"no GPU: {WHY}")
def test_out_of_memory_says_how_much_was_asked_and_is_free():
    """Issue 10 item 3: MemoryError naming the bytes asked and free (128 TiB here); the
    device keeps working after it (the failed cudaMalloc's error is cleared)."""
    with pytest.raises(MemoryError, match=r"asked 140737488355328 bytes .* bytes free"):
        nd.NDArray.make((2 ** 45,), device=nd.cuda())
    np.testing.assert_array_equal((nd.array([1.0, 2.0], device=nd.cuda()) + 1.0).numpy(),
                                  [2.0, 3.0])


@GPU_SCALE
@pytest.mark.skipif(WHY is not None, reason=f"no GPU: {WHY}")
def test_masked_scale_over_two_to_the_31_elements():
    """The grid-stride loop's int64 index reaches past 2^31: 17 GB of float32 (x, the
    output) and the packed mask's 0.5 GB, all filled on the device."""
    n = 2 ** 31 + 40
    try:
        x = ndl.init.ones(n, device=nd.cuda())
        bits = ndl.init.constant((n + 15) // 16, c=2.0 ** 16 - 1 - 2.0 ** 7, device=nd.cuda())
        y = ndl.ops.masked_scale(x, bits, 0.5, 1.0).cached_data
    except MemoryError as e:
        pytest.skip(f"not enough GPU memory: {e}")
    cu = _cu()
    try:
        tail = y[n - 40:].numpy()  # every 16th element from bit 7 is dropped
        head = y[:16].numpy()
    finally:
        del x, bits, y
        cu.empty_cache()  # the 26 GB back to the driver for the tests after this one
    want = np.where((np.arange(n - 40, n) % 16) == 7, 0.0, 2.0).astype("float32")
    np.testing.assert_array_equal(tail, want)
    np.testing.assert_array_equal(head, want[:16])  # n - 40 = 2^31: 16 divides it


# ---- the TF32 switch (Note [TF32 switch], cuda_matmul.cu) -------------------

@pytest.mark.skipif(shutil.which("nvcc") is None or os.environ.get("NEEDLE_CUDA") == "0",
                    reason="nvcc not installed (or NEEDLE_CUDA=0): needle._cuda is not built")
def test_tf32_is_off_by_default_and_switched_by_env_or_call():
    cu = _cu()
    code = f"import {CU_NAME} as c; print(c.tf32())"
    for value, want in ((None, "False"), ("1", "True"), ("0", "False"), ("yes", "False")):
        env = {k: v for k, v in os.environ.items() if k != "NEEDLE_CUDA_TF32"}
        if value is not None:
            env["NEEDLE_CUDA_TF32"] = value
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=ROOT, env=env, timeout=120)
        assert out.returncode == 0 and out.stdout.strip() == want, (value, out)
    prev = cu.set_tf32(True)
    try:
        assert cu.tf32() is True and cu.set_tf32(False) is True and cu.tf32() is False
    finally:
        cu.set_tf32(prev)


@pytest.mark.skipif(WHY is not None, reason=f"no GPU: {WHY}")
@pytest.mark.parametrize("m,n,p", [(1, 1, 1), (17, 33, 65), (64, 16, 64), (130, 300, 70),
                                   (3, 1, 200), (65, 513, 129)])
def test_tf32_matmul_within_tf32_rounding(m, n, p):
    """On a GPU (sm_80+) or under the emulator (its mma.h, Note [Emulated WMMA];
    tests/test_cuda_emu_mma.py checks its arithmetic bit by bit)."""
    cu = _cu()
    x, y = rand(2, m, n), rand(n, p)
    ref = x.astype(np.float64) @ y.astype(np.float64)
    # each input rounded to a 10-bit mantissa (2^-11 relative), sums in float32
    bound = 2.0 ** -9 * (np.abs(x).astype(np.float64) @ np.abs(y)) + 1e-30
    prev = cu.set_tf32(True)
    try:
        a = nd.array(x, device=nd.cuda())
        bt = nd.array(y.T.copy(), device=nd.cuda()).permute((1, 0))  # strided B
        c1, c2 = (a @ nd.array(y, device=nd.cuda())).numpy(), (a @ bt).numpy()
        c64 = (nd.array(x, dtype="float64", device=nd.cuda()) @
               nd.array(y, dtype="float64", device=nd.cuda())).numpy()
    finally:
        cu.set_tf32(prev)
    for c in (c1, c2):
        assert np.all(np.abs(c - ref) <= bound), np.max(np.abs(c - ref) / bound)
    np.testing.assert_allclose(c64, ref, rtol=1e-11, atol=1e-11)  # float64 never uses it
    if n >= 300:  # the tensor cores did run: float32 FMA would be ~1e-6 off
        assert np.max(np.abs(c1 - ref)) > 1e-5 * np.max(np.abs(ref))
        c32 = (a @ nd.array(y, device=nd.cuda())).numpy()  # the switch off: float32's error
        assert np.max(np.abs(c1 - ref)) > 30 * np.max(np.abs(c32 - ref))
    c_off = (nd.array(x, device=nd.cuda()) @ nd.array(y, device=nd.cuda())).numpy()
    np.testing.assert_allclose(c_off, ref, rtol=1e-4, atol=1e-4)  # off again


# ---- no host round trips in a training step (csrc/cuda/README.md, sixth review;
# tests/test_softmax_loss.py runs the same checks on every device) ----------------

@pytest.mark.skipif(WHY is not None, reason=f"no GPU: {WHY}")
@pytest.mark.parametrize("shape", [(17,), (37, 19), (3, 5, 33)])
def test_dropout_bits_drawn_on_the_host_are_device_independent(shape):
    from needle.nn.nn_basic import _packed_bits
    bits = []
    for dev in (nd.cpu(), nd.cuda()):
        np.random.seed(9)
        bits.append(_packed_bits(ndl.init.ones(*shape, device=dev), 0.7).numpy())
    np.testing.assert_array_equal(bits[1], bits[0])


@pytest.mark.skipif(WHY is not None, reason=f"no GPU: {WHY}")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("B,k", [(0, 3), (1, 5), (70000, 3), (33, 1029)])
def test_loss_summed_on_the_device_and_g_read_there_match_the_cpu(dtype, B, k):
    """The mean loss written by xent_mean_kernel (one thread, row order) and the
    gradient for an upstream g read by the kernel: the cpu's within a few ulps (the
    device's exp and log), for B up to 70000 rows."""
    rng = np.random.default_rng(B + k)
    z = (rng.standard_normal((B, k)) * 3).astype(dtype)
    y = rng.integers(0, k, size=B).astype(dtype)
    res = []
    for dev in (nd.cpu(), nd.cuda()):
        Z = ndl.Tensor(z, device=dev, dtype=dtype, requires_grad=True)
        loss = ndl.nn.SoftmaxLoss()(Z, ndl.Tensor(y, device=dev, dtype=dtype))
        assert loss.device == dev and loss.shape == ()
        loss.backward(ndl.Tensor(0.1, device=dev, dtype=dtype), create_graph=False)
        res.append((loss.numpy(), Z.grad.numpy()))
    if B == 0:
        assert np.isnan(res[0][0]) and np.isnan(res[1][0])
        return
    eps = np.finfo(dtype).eps
    for a, b in zip(*res):
        np.testing.assert_allclose(b, a, rtol=16 * eps, atol=16 * eps * np.abs(a).max())


@pytest.mark.skipif(WHY is not None, reason=f"no GPU: {WHY}")
def test_training_step_without_host_reads_matches_the_cpu():
    """Linear-ReLU-Dropout-LayerNorm1d-Linear, SoftmaxLoss, backward(create_graph=False),
    clip_grad_norm and Adam for 3 steps, same seeds on both devices: the same dropout
    masks, the cpu's losses and weights within float32 rounding."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((64, 20)).astype("float32")
    y = rng.integers(0, 10, size=64).astype("float32")
    out = []
    for dev in (nd.cpu(), nd.cuda()):
        np.random.seed(0)
        nn = ndl.nn
        model = nn.Sequential(nn.Linear(20, 32, device=dev), nn.ReLU(), nn.Dropout(0.2),
                              nn.LayerNorm1d(32, device=dev), nn.Linear(32, 10, device=dev))
        opt = ndl.optim.Adam(model.parameters(), lr=0.01)
        losses = []
        for _ in range(3):
            opt.reset_grad()
            loss = nn.SoftmaxLoss()(model(ndl.Tensor(x, device=dev)), ndl.Tensor(y, device=dev))
            loss.backward(create_graph=False)
            opt.clip_grad_norm(1.0)
            opt.step()
            losses.append(float(loss.numpy()))
        out.append((losses, [p.numpy() for p in model.parameters()]))
    np.testing.assert_allclose(out[1][0], out[0][0], rtol=1e-5)
    for a, b in zip(out[0][1], out[1][1]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
