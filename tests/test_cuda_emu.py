"""The CUDA emulator's own semantics (csrc/cuda/emu, Note [The CUDA emulator]):
indices, shuffles, barriers, launch checks and the memory cap against what CUDA
documents, so that the harness running the kernels on the CPU can be trusted.
Skipped unless needle._cuda_emu is built (NEEDLE_CUDA_EMU=1 python setup.py
build_ext --inplace, or `make cuda-emu`)."""
import os
import subprocess
import sys

import numpy as np
import pytest

cu = pytest.importorskip("needle._cuda_emu", reason="needle._cuda_emu is not built "
                         "(NEEDLE_CUDA_EMU=1 python setup.py build_ext --inplace)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDX, UP, DOWN, XOR = range(4)
FULL = 0xffffffff


def run(name, grid=(1, 1, 1), block=(32, 1, 1), args=(0, 0, 0, 0)):
    return np.array(cu._selftest(name, grid, block, tuple(args)))


def as_int_mask(mask):
    return mask - (1 << 32) if mask >= 1 << 31 else mask  # the C int of the mask's bits


def shfl(mode, b, width=32, mask=FULL, threads=32):
    return run("shfl", block=(threads, 1, 1), args=(mode, b, width, as_int_mask(mask)))


def want_shfl(mode, b, width, mask=FULL, threads=32):
    """CUDA's documented results (PTX shfl.sync) for values 100 + thread index."""
    out = []
    for t in range(threads):
        lane = t % 32
        if not mask >> lane & 1:
            out.append(-1.0)
            continue
        first = lane - lane % width
        if mode == IDX:
            src = first + b % width
        elif mode == UP:
            src = lane - b if lane - b >= first else lane
        elif mode == DOWN:
            src = lane + b if lane + b < first + width else lane
        else:
            src = lane ^ b if (lane ^ b) < first + width else lane
        out.append(100.0 + t - lane + src)
    return np.array(out)


def test_indices_of_a_3d_grid_of_3d_blocks():
    grid, block = (3, 2, 2), (4, 3, 2)
    np.testing.assert_array_equal(run("index", grid, block), np.arange(12 * 24))


@pytest.mark.parametrize("mode", [IDX, UP, DOWN, XOR], ids=["idx", "up", "down", "xor"])
@pytest.mark.parametrize("width", [32, 16, 8, 4, 2, 1])
@pytest.mark.parametrize("b", [0, 1, 3, 5, 16, 31])
def test_shuffles_follow_cuda(mode, width, b):
    np.testing.assert_array_equal(shfl(mode, b, width), want_shfl(mode, b, width))


def test_shuffles_of_two_warps_and_of_half_masks():
    np.testing.assert_array_equal(shfl(DOWN, 1, threads=64), want_shfl(DOWN, 1, 32, threads=64))
    # the two halves of each warp shuffle on their own, with disjoint masks
    lo, hi = 0x0000ffff, 0xffff0000
    got_lo = shfl(XOR, 1, 16, lo)
    np.testing.assert_array_equal(got_lo, want_shfl(XOR, 1, 16, lo))
    np.testing.assert_array_equal(shfl(XOR, 1, 16, hi), want_shfl(XOR, 1, 16, hi))


@pytest.mark.parametrize("mode, b, width, mask, what", [
    (IDX, 0, 32, 0xfffffffe, "reads lane 0, which is not in the mask"),
    (DOWN, 1, 32, 0x0000ffff, "reads lane 16, which is not in the mask"),
    (XOR, 1, 12, FULL, "width 12 is not a power of 2"),
])
def test_undefined_shuffles_are_errors(mode, b, width, mask, what):
    with pytest.raises(RuntimeError, match=what) as e:
        shfl(mode, b, width, mask)
    assert "shfl_kernel" in str(e.value) and "cudaErrorLaunchFailure" in str(e.value)


def test_full_mask_in_a_partial_warp_is_an_error():
    """48 threads: warp 1 has 16 lanes; a full mask names 16 that do not exist."""
    with pytest.raises(RuntimeError, match="names lanes that do not exist"):
        shfl(DOWN, 1, threads=48)
    # the 16 lanes that exist, width 16: lane 15 keeps its own value
    np.testing.assert_array_equal(shfl(DOWN, 1, 16, 0xffff, threads=48),
                                  want_shfl(DOWN, 1, 16, 0xffff, threads=48))


def test_barrier_orders_shared_memory():
    for n in (1, 31, 256, 1024):
        np.testing.assert_array_equal(run("reverse", block=(n, 1, 1)), np.arange(n)[::-1])


@pytest.mark.parametrize("keep", [0, 1, 100, 255])
def test_threads_exiting_before_a_barrier_are_an_error(keep):
    if keep == 0:  # every thread exits: nothing waits, nothing is wrong
        np.testing.assert_array_equal(run("exit_before_barrier", block=(256, 1, 1)),
                                      np.zeros(256))
        return
    with pytest.raises(RuntimeError, match=rf"reached by {keep} of the block's 256 threads: "
                       rf"{256 - keep} exited"):
        run("exit_before_barrier", block=(256, 1, 1), args=(keep, 0, 0, 0))
    full = run("exit_before_barrier", block=(256, 1, 1), args=(256, 0, 0, 0))
    np.testing.assert_array_equal(full, np.ones(256))


def test_threads_at_different_barriers_are_an_error():
    with pytest.raises(RuntimeError, match=r"while \d+ threads? wait at the one at"):
        run("two_barriers", block=(64, 1, 1))
    with pytest.raises(RuntimeError, match="__syncthreads"):
        run("barrier_in_divergent_loop", block=(64, 1, 1))


def test_syncwarp_with_exited_lanes_is_an_error():
    with pytest.raises(RuntimeError, match=r"__syncwarp .*mask 0xffffffff in warp 0: lanes "
                       r"0x0000ffff arrived"):
        run("syncwarp_exit", block=(64, 1, 1), args=(16, 0, 0, 0))
    np.testing.assert_array_equal(run("syncwarp_exit", block=(64, 1, 1), args=(32, 0, 0, 0)),
                                  np.ones(64))


@pytest.mark.parametrize("grid, block", [
    ((1, 1, 1), (0, 1, 1)), ((1, 1, 1), (1025, 1, 1)), ((1, 1, 1), (32, 32, 2)),
    ((1, 1, 1), (1, 1, 65)), ((1, 1, 1), (1, 1025, 1)), ((0, 1, 1), (32, 1, 1)),
    ((2 ** 31, 1, 1), (32, 1, 1)), ((1, 65536, 1), (32, 1, 1)), ((1, 1, 65536), (32, 1, 1)),
    ((1, 0, 1), (32, 1, 1)),
])
def test_launch_configurations_the_hardware_refuses(grid, block):
    with pytest.raises(RuntimeError, match="cudaErrorInvalidConfiguration"):
        run("index", grid, block)


def test_largest_legal_configurations_run():
    assert run("index", (1, 1, 1), (1024, 1, 1)).shape == (1024,)
    assert run("index", (1, 1, 1), (1, 1, 64)).shape == (64,)
    assert run("index", (1, 1, 1), (16, 1, 64)).shape == (1024,)


def test_a_legal_grid_larger_than_the_output_is_refused():
    # one double per thread, at most 2^20: a grid the hardware runs must fit
    with pytest.raises(Exception, match="more threads than the output holds"):
        run("index", (2048, 1, 1), (1024, 1, 1))
    with pytest.raises(Exception, match="more threads than the output holds"):
        run("index", (2 ** 31 - 1, 65535, 65535), (1024, 1, 1))  # 2^73: no overflow


def test_errors_are_not_sticky():
    """An emulated fault is reported once (at the launch); the device keeps working."""
    with pytest.raises(RuntimeError):
        run("two_barriers", block=(64, 1, 1))
    assert cu.last_error() != ""
    np.testing.assert_array_equal(run("index", block=(8, 1, 1)), np.arange(8))


def test_device_memory_cap_and_out_of_memory_report():
    """cudaMemGetInfo reports the cap; an allocation past it fails as on a full GPU,
    after the caching allocator released its cache and retried."""
    import needle.backend_ndarray as nd
    if not nd.cuda().enabled() or os.environ.get("NEEDLE_CUDA_EMU") != "1":
        pytest.skip("cuda() is not the emulator here (NEEDLE_CUDA_EMU=1)")
    if os.environ.get("NDL_CUDA_EMU_EXACT", "0") != "0":
        pytest.skip("NDL_CUDA_EMU_EXACT=1: the allocator caches nothing")
    cu.empty_cache()
    base = cu.memory_stats()["allocated"]  # what earlier tests still hold
    prev = cu._set_memory(base + (64 << 20))
    try:
        keep = nd.NDArray.make((10 << 20,), device=nd.cuda())  # 40 MiB of 64
        cached = nd.NDArray.make((4 << 20,), device=nd.cuda())  # 16 MiB, then cached
        del cached
        assert cu.memory_stats()["cached"] == 16 << 20
        # 32 MiB: 8 free, 24 once the cache is released: still too few
        with pytest.raises(MemoryError, match=rf"asked 33554432 bytes .* 25165824 of "
                           rf"{base + (64 << 20)} bytes free"):
            nd.NDArray.make((8 << 20,), device=nd.cuda())
        assert cu.memory_stats()["cached"] == 0  # released before the retry
        del keep
        nd.NDArray.make((8 << 20,), device=nd.cuda())  # fits now
    finally:
        cu.empty_cache()
        cu._set_memory(prev)


def test_launch_bounds_are_checked_as_on_a_gpu():
    """Note [Launch bounds under the emulator]: a kernel declaring __launch_bounds__(64)
    runs with 64 threads a block in any shape, and a bigger block is refused as a GPU
    refuses it (cudaErrorLaunchOutOfResources), naming the kernel, block and bound."""
    np.testing.assert_array_equal(run("bounded", grid=(2, 1, 1), block=(64, 1, 1)),
                                  np.arange(128))
    np.testing.assert_array_equal(run("bounded", block=(8, 8, 1)), np.arange(64))
    for block in [(65, 1, 1), (8, 9, 1), (4, 4, 8)]:
        with pytest.raises(RuntimeError, match=r"bounded_kernel \(emu_selftest.cc:\d+\): too "
                           rf"many resources requested for launch: a block of "
                           rf"{np.prod(block)} threads, and the kernel declares "
                           r"__launch_bounds__\(64\).*cudaErrorLaunchOutOfResources"):
            run("bounded", block=block)


def test_launch_bounds_table_has_every_kernel_of_the_sources():
    """setup.py's table (emu_bounds.inc) holds each __launch_bounds__ of csrc/cuda's .cu
    files with nvcc's value: counted here from the text, the constants read from
    cuda_common.cuh."""
    import glob
    import re
    table = cu._launch_bounds()
    common = open(os.path.join(ROOT, "csrc", "cuda", "cuda_common.cuh")).read()
    consts = dict(re.findall(r"#define (NDL_\w+) (\d+)\n", common))
    want = {}
    for path in glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")):
        lines = open(path).read().splitlines()
        for i, line in enumerate(lines):
            if line.lstrip().startswith(("*", "/*", "//")) or "__launch_bounds__(" not in line:
                continue
            arg = line.split("__launch_bounds__(")[1].split(")")[0]
            rest = line.split("__launch_bounds__(")[1].split(")", 1)[1] + lines[i + 1]
            name = re.match(r"\s*(\w+)\(", rest).group(1)
            want[name] = int(consts.get(arg, arg))
    assert len(want) >= 17 and want["matmul_tf32_kernel"] == 128
    assert {k: v for k, v in table.items() if k != "bounded_kernel"} == want
    assert table["bounded_kernel"] == 64


def test_grid_cap_lowers_the_caps_and_the_kernels_cover_the_rest():
    """Note [Grid caps]: _set_grid_cap(g) lowers every cap the host code applies (here
    the number of chunks a long sum is cut into: g, each longer), 0 restores the GPU's;
    the kernels' loops then cover what the capped grid does not reach (an elementwise
    op over 10,001 elements from one block, a sum over chunks from three)."""
    import needle.backend_ndarray as nd
    if not nd.cuda().enabled() or os.environ.get("NEEDLE_CUDA_EMU") != "1":
        pytest.skip("cuda() is not the emulator here (NEEDLE_CUDA_EMU=1)")
    nred = 1 << 20
    prev = cu._set_grid_cap(0)
    try:
        path, chunks, length = cu._reduce_plan((4, nred), (nred, 1), (1,))
        assert path == "blocks" and chunks > 3  # the GPU's plan fills 1024 blocks
        assert cu._set_grid_cap(3) == 0
        assert cu._reduce_plan((4, nred), (nred, 1), (1,)) == (path, 3, -(-nred // 3))
        rng = np.random.default_rng(0)
        x = rng.standard_normal((4, nred)).astype(np.float32)
        got = nd.array(x, device=nd.cuda()).sum(axis=1).numpy()
        np.testing.assert_allclose(got.ravel(), x.astype(np.float64).sum(axis=1),
                                   rtol=1e-4, atol=1e-2)
        cu._set_grid_cap(1)
        v = rng.standard_normal(10_001).astype(np.float32)
        np.testing.assert_array_equal(nd.array(v, device=nd.cuda()).exp().numpy(),
                                      nd.array(v).exp().numpy())
    finally:
        assert cu._set_grid_cap(prev) in (1, 3)
    assert cu._reduce_plan((4, nred), (nred, 1), (1,)) == (path, chunks, length)


def test_run_ahead_lets_a_warp_run_to_its_next_barrier():
    """Note [Emulated execution]: after a __syncthreads the warps take their
    __syncwarp-separated steps in turn; with NDL_CUDA_EMU_AHEAD=1 each runs all of its
    steps before the next warp moves."""
    if TSAN:
        pytest.skip("the warps' counter is a race by design, which TSan reports")
    code = ("import needle._cuda_emu as c\n"
            "print(c._selftest('ahead', (1, 1, 1), (96, 1, 1), (4, 0, 0, 0))[:12])\n")
    got = {}
    for ahead in ("0", "1"):
        env = dict(os.environ, NDL_CUDA_EMU_AHEAD=ahead)
        env.pop("NDL_CUDA_EMU_SHUFFLE", None)
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        got[ahead] = np.array(eval(res.stdout)).reshape(3, 4)  # (warp, step)
    np.testing.assert_array_equal(got["0"], np.arange(12).reshape(4, 3).T)
    np.testing.assert_array_equal(got["1"], np.arange(12).reshape(3, 4))


def test_shuffled_block_order_is_seeded():
    """NDL_CUDA_EMU_SHUFFLE=<seed> runs the blocks in a seeded permutation (and starts
    each block's threads in one), to expose code that depends on the order."""
    code = ("import needle._cuda_emu as c\n"
            "print(c._selftest('order', (64, 1, 1), (1, 1, 1), (0, 0, 0, 0)))\n"
            "print(c._selftest('index', (4, 1, 1), (64, 1, 1), (0, 0, 0, 0)))\n")

    def order(seed):
        env = dict(os.environ)
        env.pop("NDL_CUDA_EMU_SHUFFLE", None)
        if seed is not None:
            env["NDL_CUDA_EMU_SHUFFLE"] = str(seed)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=ROOT, env=env, timeout=120)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.split("\n")
        np.testing.assert_array_equal(eval(lines[1]), np.arange(256))  # same results
        return eval(lines[0])

    plain, a, a2, b = order(None), order(7), order(7), order(8)
    assert plain == list(range(64))
    assert sorted(a) == plain and a == a2 and a != plain and b != a


# ---- races under ThreadSanitizer (make cuda-emu-tsan) ------------------------
# Note [Races under ThreadSanitizer] (csrc/cuda/emu/emu_exec.cc): emulated GPU
# threads are TSan fibers ordered only by what CUDA orders (a launch, a barrier,
# a __syncwarp among its lanes). Each case runs in a subprocess: a report stops
# the process (halt_on_error), and the test reads it.
TSAN = bool(run("tsan", block=(1, 1, 1))[0])
needs_tsan = pytest.mark.skipif(not TSAN, reason="needs needle._cuda_emu built with "
                                "ThreadSanitizer (make cuda-emu-tsan)")
SELFTEST = os.path.join(ROOT, "csrc", "cuda", "emu", "emu_selftest.cc")


def marked_line(tag):
    """The line of emu_selftest.cc whose comment is `// race: <tag>`."""
    with open(SELFTEST) as f:
        lines = [i for i, text in enumerate(f, 1) if text.rstrip().endswith(f"// race: {tag}")]
    assert len(lines) == 1, tag
    return lines[0]


def run_alone(name, grid, block, args=(0, 0, 0, 0)):
    code = ("import needle._cuda_emu as c\n"
            f"print(c._selftest({name!r}, {grid}, {block}, {tuple(args)}))\n")
    env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1:exitcode=66")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


@needs_tsan
@pytest.mark.parametrize("name, grid, block, args, kernel, write, read", [
    # a write and a read of shared memory by two threads with no barrier between
    ("shared_pair", (1, 1, 1), (64, 1, 1), (0, 1, 0, 0), "shared_pair_kernel",
     "shared write", "shared read"),
    # the same across warps: a __syncwarp orders only its own warp's lanes
    ("syncwarp_pair", (1, 1, 1), (64, 1, 1), (0, 32, 0, 0), "syncwarp_pair_kernel",
     "syncwarp write", "syncwarp read"),
    # two blocks writing one global element: blocks are unordered
    ("blocks_pair", (2, 1, 1), (32, 1, 1), (0, 0, 0, 0), "blocks_pair_kernel",
     "blocks write", "blocks write"),
    # a warp's load_matrix_sync of a tile another warp wrote, no barrier between (the
    # emulator reads the tile for the lanes and reports those reads as theirs)
    ("wmma_pair", (1, 1, 1), (64, 1, 1), (0, 0, 0, 0), "wmma_pair_kernel",
     "wmma tile write", "emu_wmma.cc"),
], ids=["shared-no-barrier", "syncwarp-across-warps", "two-blocks-one-element",
        "wmma-load-no-barrier"])
def test_races_are_reported(name, grid, block, args, kernel, write, read):
    out = run_alone(name, grid, block, args)
    assert out.returncode == 66, out.stdout + out.stderr
    report = out.stderr
    assert "WARNING: ThreadSanitizer: data race" in report, report
    assert kernel in report, report
    for tag in (write, read):  # a marked line, or the emulator file that read for the lanes
        where = tag if tag.endswith(".cc") else f"emu_selftest.cc:{marked_line(tag)}"
        assert where in report, report


@needs_tsan
@pytest.mark.parametrize("name, grid, block, args, want", [
    # the same pair with a __syncthreads between the write and the read
    ("shared_pair", (1, 1, 1), (64, 1, 1), (0, 1, 1, 0), {1: 42.0}),
    # a __syncwarp-ordered pair within one warp
    ("syncwarp_pair", (1, 1, 1), (64, 1, 1), (3, 17, 0, 0), {17: 7.0}),
    # shared memory through a barrier, in blocks that reuse the same __shared__ array
    ("reverse", (3, 1, 1), (256, 1, 1), (0, 0, 0, 0), None),
    # the tile written, a __syncthreads, then loaded by the other warp
    ("wmma_pair", (1, 1, 1), (64, 1, 1), (1, 0, 0, 0), "wmma"),
], ids=["shared-barrier", "syncwarp-one-warp", "reverse-three-blocks", "wmma-load-barrier"])
def test_ordered_accesses_are_not_reported(name, grid, block, args, want):
    out = run_alone(name, grid, block, args)
    assert out.returncode == 0 and "ThreadSanitizer" not in out.stderr, out.stderr
    got = np.array(eval(out.stdout))
    if want == "wmma":  # the 32 lanes' sums of their elements: all 128 of 0..127
        assert got[:32].sum() == 127 * 128 / 2 and not got[32:].any()
        return
    if want is None:
        want_all = np.tile(np.arange(256)[::-1], 3).astype(float)
    else:
        want_all = np.zeros(grid[0] * block[0])
        for i, v in want.items():
            want_all[i] = v
    np.testing.assert_array_equal(got, want_all)


def test_the_racy_kernels_run_as_written_without_tsan():
    """Outside TSan the emulator runs threads in order, so the racy kernels give the
    sequential answer (a race is not an emulator error: only TSan finds it)."""
    if TSAN:
        pytest.skip("under TSan these report (test_races_are_reported)")
    if os.environ.get("NDL_CUDA_EMU_SHUFFLE"):
        pytest.skip("NDL_CUDA_EMU_SHUFFLE reorders the threads and blocks these races depend on")
    np.testing.assert_array_equal(run("shared_pair", block=(64, 1, 1), args=(0, 1, 0, 0))[:2],
                                  [0.0, 42.0])
    # the tile through a barrier: the warp's 32 lanes hold its 128 elements between them
    assert run("wmma_pair", block=(64, 1, 1), args=(1, 0, 0, 0))[:32].sum() == 127 * 128 / 2
    assert run("blocks_pair", grid=(2, 1, 1))[0] == 1.0
