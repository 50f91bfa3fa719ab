/* emu/emu_selftest.cc: the emulator's own test kernels, written as CUDA
 * (tests/test_cuda_emu.py checks them against what CUDA documents; only
 * needle._cuda_emu has them). Every kernel writes one double per thread of
 * the grid, at its linear index (blocks x fastest, then threads x fastest). */
#include <string.h>

#include <mma.h> /* the emulator's (Note [Emulated WMMA]) */

#include "cuda_common.cuh"
#include "emu_internal.h"

namespace {
__device__ int64_t linear_id(void)
{
    const int64_t b = blockIdx.x + (int64_t)gridDim.x * (blockIdx.y + (int64_t)gridDim.y *
                                                                          blockIdx.z);
    const int64_t t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    return b * blockDim.x * blockDim.y * blockDim.z + t;
}

__device__ int order_counter; /* the host-side "device" global of the order kernel */

// out is (threads of the grid): each thread's own linear index
__global__ void index_kernel(double *out) { out[linear_id()] = (double)linear_id(); }

// out has one element per thread of the grid; at most 64 threads a block
__global__ void __launch_bounds__(64) bounded_kernel(double *out)
{
    out[linear_id()] = (double)linear_id();
}

// out is (steps * warps of the block): out[w * steps + k] = when warp w's lane 0
// took its k-th step (a count over the block), steps = args[0] <= 8. The warps'
// counter is a race on a GPU (no barrier orders them): it only shows the emulator's
// order, and TSan reports it.
__global__ void ahead_kernel(int steps, double *out)
{
    const unsigned lane = threadIdx.x % 32, w = threadIdx.x / 32;
    if (threadIdx.x == 0)
        order_counter = 0;
    __syncthreads();
    for (int k = 0; k < steps; k++) {
        if (lane == 0)
            out[w * steps + k] = order_counter++;
        __syncwarp();
    }
}

// out is (threads of the grid): which block ran k-th, for k = its block's first thread
__global__ void order_kernel(double *out)
{
    if (threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0)
        out[linear_id()] = order_counter++;
}

// out is (threads): lane value 100 + thread index, shuffled with (mode, b, width,
// mask); -1 for lanes the mask leaves out
__global__ void shfl_kernel(int mode, int b, int width, unsigned mask, double *out)
{
    const unsigned t = threadIdx.x, lane = t % 32;
    const double v = 100.0 + t;
    double r = -1;
    if (mask >> lane & 1) {
        switch (mode) {
        case 0: r = __shfl_sync(mask, v, b, width); break;
        case 1: r = __shfl_up_sync(mask, v, (unsigned)b, width); break;
        case 2: r = __shfl_down_sync(mask, v, (unsigned)b, width); break;
        default: r = __shfl_xor_sync(mask, v, b, width); break;
        }
    }
    out[linear_id()] = r;
}

// out is (threads): the block reversed through shared memory across a barrier
__global__ void reverse_kernel(double *out)
{
    __shared__ double s[1024];
    const unsigned t = threadIdx.x;
    s[t] = t;
    __syncthreads();
    out[linear_id()] = s[blockDim.x - 1 - t];
}

// threads >= keep exit before the barrier (undefined unless keep >= blockDim.x)
__global__ void exit_before_barrier_kernel(int keep, double *out)
{
    if ((int)threadIdx.x >= keep)
        return;
    __syncthreads();
    out[linear_id()] = 1;
}

// odd and even threads at two different barriers
__global__ void two_barriers_kernel(double *out)
{
    if (threadIdx.x % 2)
        __syncthreads();
    else
        __syncthreads();
    out[linear_id()] = 1;
}

// lanes >= keep of each warp exit before a full-mask __syncwarp
__global__ void syncwarp_exit_kernel(int keep, double *out)
{
    if ((int)(threadIdx.x % 32) >= keep)
        return;
    __syncwarp();
    out[linear_id()] = 1;
}

// a __syncthreads inside a loop whose trip count differs by thread
__global__ void barrier_in_divergent_loop_kernel(double *out)
{
    for (unsigned i = 0; i <= threadIdx.x % 2; i++)
        __syncthreads();
    out[linear_id()] = 1;
}

// out is (threads): 1 when this is the ThreadSanitizer build (make cuda-emu-tsan)
__global__ void tsan_kernel(double *out)
{
#ifdef NDL_EMU_TSAN
    out[linear_id()] = 1;
#else
    out[linear_id()] = 0;
#endif
}

/* Deliberate races for make cuda-emu-tsan (Note [Races under ThreadSanitizer],
 * emu_exec.cc): a "// race:" comment marks each access that a report must
 * name (tests/test_cuda_emu.py finds the lines by it). */

// thread w writes s[0], thread r reads it: with barrier 1 a __syncthreads
// orders them, with 0 nothing does (a race)
__global__ void shared_pair_kernel(int w, int r, int barrier, double *out)
{
    __shared__ double s[1];
    const int t = (int)threadIdx.x;
    if (t == w)
        s[0] = 42; // race: shared write
    if (barrier)
        __syncthreads();
    if (t == r)
        out[linear_id()] = s[0]; // race: shared read
}

// every warp at a full-mask __syncwarp between thread w's write and thread
// r's read: ordered when w and r share a warp, a race when they do not
__global__ void syncwarp_pair_kernel(int w, int r, double *out)
{
    __shared__ double s[1];
    const int t = (int)threadIdx.x;
    if (t == w)
        s[0] = 7; // race: syncwarp write
    __syncwarp();
    if (t == r)
        out[linear_id()] = s[0]; // race: syncwarp read
}

// thread 0 of every block writes out[0]: blocks are unordered, a race
__global__ void blocks_pair_kernel(double *out)
{
    if (threadIdx.x == 0)
        out[0] = blockIdx.x; // race: blocks write
}

// 64 threads: warp 1 writes a 16 x 8 tile t[i] = i, warp 0 loads it with
// load_matrix_sync (emu_wmma.cc reads it for the lanes: tsan_read), and each
// of its lanes writes the sum of its elements (the 32 sum to 8128); with
// barrier 1 a __syncthreads orders the write before the load
__global__ void wmma_pair_kernel(int barrier, double *out)
{
    __shared__ __align__(32) float t[16 * 8];
    const int tid = (int)threadIdx.x;
    if (tid >= 32)
        for (int i = tid - 32; i < 16 * 8; i += 32)
            t[i] = (float)i; // race: wmma tile write
    if (barrier)
        __syncthreads();
    if (tid < 32) {
        nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 8, nvcuda::wmma::precision::tf32,
                               nvcuda::wmma::row_major> fa;
        nvcuda::wmma::load_matrix_sync(fa, t, 8); /* read in emu_wmma.cc's wmma_load */
        double sum = 0;
        for (int e = 0; e < fa.num_elements; e++)
            sum += fa.x[e];
        out[linear_id()] = sum;
    }
}
} // namespace

bool ndl_cuda_emu_selftest_mma(const char *, dim3, dim3, const int[4], double *); /* WMMA's */

extern "C" int ndl_cuda_emu_selftest(const char *name, const unsigned g[3], const unsigned b[3],
                                     const int args[4], double *out, int64_t n)
{
    const dim3 grid(g[0], g[1], g[2]), block(b[0], b[1], b[2]);
    double *d = NULL;
    char why[300];
    int st;
    /* one double per thread: a grid the hardware would run must fit in n */
    if (ndl_emu::config_error(grid, block, why, sizeof why) == nullptr &&
        (double)g[0] * g[1] * g[2] * b[0] * b[1] * b[2] > (double)n) {
        ndl_cuda_set_error("_selftest: more threads than the output holds (2^20 at most)");
        return NDL_EINVAL;
    }
    NDL_CUDA_TRY(cudaMalloc(&d, sizeof(double) * (size_t)n));
    if (cudaMemset(d, 0, sizeof(double) * (size_t)n) != cudaSuccess) {
        st = ndl_cuda_fail(cudaGetLastError(), __FILE__, __LINE__, "cudaMemset");
        cudaFree(d);
        return st;
    }
    if (strcmp(name, "ahead") == 0)
        NDL_LAUNCH(grid, block, ahead_kernel)(args[0], d);
    else if (strcmp(name, "bounded") == 0)
        NDL_LAUNCH(grid, block, bounded_kernel)(d);
    else if (strcmp(name, "index") == 0)
        NDL_LAUNCH(grid, block, index_kernel)(d);
    else if (strcmp(name, "order") == 0) {
        order_counter = 0;
        NDL_LAUNCH(grid, block, order_kernel)(d);
    } else if (strcmp(name, "shfl") == 0)
        NDL_LAUNCH(grid, block, shfl_kernel)(args[0], args[1], args[2], (unsigned)args[3], d);
    else if (strcmp(name, "reverse") == 0)
        NDL_LAUNCH(grid, block, reverse_kernel)(d);
    else if (strcmp(name, "exit_before_barrier") == 0)
        NDL_LAUNCH(grid, block, exit_before_barrier_kernel)(args[0], d);
    else if (strcmp(name, "two_barriers") == 0)
        NDL_LAUNCH(grid, block, two_barriers_kernel)(d);
    else if (strcmp(name, "syncwarp_exit") == 0)
        NDL_LAUNCH(grid, block, syncwarp_exit_kernel)(args[0], d);
    else if (strcmp(name, "barrier_in_divergent_loop") == 0)
        NDL_LAUNCH(grid, block, barrier_in_divergent_loop_kernel)(d);
    else if (strcmp(name, "tsan") == 0)
        NDL_LAUNCH(grid, block, tsan_kernel)(d);
    else if (strcmp(name, "shared_pair") == 0)
        NDL_LAUNCH(grid, block, shared_pair_kernel)(args[0], args[1], args[2], d);
    else if (strcmp(name, "syncwarp_pair") == 0)
        NDL_LAUNCH(grid, block, syncwarp_pair_kernel)(args[0], args[1], d);
    else if (strcmp(name, "blocks_pair") == 0)
        NDL_LAUNCH(grid, block, blocks_pair_kernel)(d);
    else if (strcmp(name, "wmma_pair") == 0)
        NDL_LAUNCH(grid, block, wmma_pair_kernel)(args[0], d);
    else if (ndl_cuda_emu_selftest_mma(name, grid, block, args, d)) {
    } else {
        cudaFree(d);
        ndl_cuda_set_error("_selftest: no such kernel");
        return NDL_EINVAL;
    }
    st = NDL_CUDA_LAUNCH_STATUS(name);
    if (st == NDL_OK && cudaMemcpy(out, d, sizeof(double) * (size_t)n,
                                   cudaMemcpyDeviceToHost) != cudaSuccess)
        st = ndl_cuda_fail(cudaGetLastError(), __FILE__, __LINE__, "cudaMemcpy");
    cudaFree(d);
    return st;
}
