/* emu/emu_selftest_mma.cc: test kernels of the emulated WMMA (Note [Emulated
 * WMMA], mma.h), written as CUDA and run through _selftest (emu_selftest.cc
 * hands it the names it does not know); tests/test_cuda_emu_mma.py checks
 * them against what CUDA documents. As there, every kernel writes one double
 * per thread of the grid, at its linear index. */
#include <mma.h>
#include <string.h>

#include "cuda_common.cuh"

namespace {
using namespace nvcuda;

__device__ int64_t linear_id(void)
{
    const int64_t b = blockIdx.x + (int64_t)gridDim.x * (blockIdx.y + (int64_t)gridDim.y *
                                                                          blockIdx.z);
    const int64_t t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    return b * blockDim.x * blockDim.y * blockDim.z + t;
}

__device__ float bits_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

__device__ uint32_t float_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

/* Operand `which` (0 A, 1 B, 2 C), element e (row-major), of test `seed`:
 * in [-2, 2) with all 24 bits of the significand used (the test's gen()). */
__device__ float gen(unsigned which, unsigned e, unsigned seed)
{
    const uint32_t h = e * 2654435761u + seed * 40503u + which * 0x9e3779b9u;
    return (float)((double)h / 4294967296.0 * 4.0 - 2.0);
}

// out is (threads): the bits of __float_to_tf32(bits first + t * step) (wrapping, uint32)
__global__ void tf32_round_kernel(int first, int step, double *out)
{
    const int64_t t = linear_id();
    const uint32_t u = (uint32_t)first + (uint32_t)t * (uint32_t)step;
    out[t] = (double)float_bits(wmma::__float_to_tf32(bits_float(u)));
}

template <typename LA, typename LB>
__device__ void mma_tile(const float *Am, const float *Bm, const float *Cm, float *Dm,
                         bool a_col, bool b_col, wmma::layout_t cl, bool round)
{
    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, LA> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, LB> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> fc;
    wmma::load_matrix_sync(fa, Am, a_col ? 16 : 8);
    wmma::load_matrix_sync(fb, Bm, b_col ? 8 : 16);
    wmma::load_matrix_sync(fc, Cm, 16, cl);
    if (round) { /* the programming guide's pattern: convert the loaded elements */
        for (int t = 0; t < fa.num_elements; t++)
            fa.x[t] = wmma::__float_to_tf32(fa.x[t]);
        for (int t = 0; t < fb.num_elements; t++)
            fb.x[t] = wmma::__float_to_tf32(fb.x[t]);
    }
    wmma::mma_sync(fc, fa, fb, fc); /* d is c */
    wmma::store_matrix_sync(Dm, fc, 20, cl);
}

// 256 threads (8 warps, each the same product); out is (256,): D = A @ B + C (16 x 16,
// row-major) with A (16 x 8), B (8 x 16), C from gen(0|1|2, e, seed), stored in shared
// memory with the layouts a_col, b_col, c_col (C loaded and D stored with c_col's)
__global__ void mma_tile_kernel(int a_col, int b_col, int c_col, int seed_round, double *out)
{
    __shared__ __align__(32) float Am[16 * 8];
    __shared__ __align__(32) float Bm[8 * 16];
    __shared__ __align__(32) float Cm[16 * 16];
    __shared__ __align__(32) float Dm[8][16 * 20];
    const unsigned tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const unsigned seed = (unsigned)seed_round >> 1;
    for (unsigned e = tid; e < 256; e += blockDim.x) {
        if (e < 128) {
            const unsigned i = e / 8, k = e % 8, kb = e / 16, j = e % 16;
            Am[a_col ? k * 16 + i : e] = gen(0, e, seed);
            Bm[b_col ? j * 8 + kb : e] = gen(1, e, seed);
        }
        Cm[c_col ? (e % 16) * 16 + e / 16 : e] = gen(2, e, seed);
    }
    __syncthreads();
    const wmma::layout_t cl = c_col ? wmma::mem_col_major : wmma::mem_row_major;
    const bool round = seed_round & 1;
    if (a_col && b_col)
        mma_tile<wmma::col_major, wmma::col_major>(Am, Bm, Cm, Dm[warp], true, true, cl, round);
    else if (a_col)
        mma_tile<wmma::col_major, wmma::row_major>(Am, Bm, Cm, Dm[warp], true, false, cl, round);
    else if (b_col)
        mma_tile<wmma::row_major, wmma::col_major>(Am, Bm, Cm, Dm[warp], false, true, cl, round);
    else
        mma_tile<wmma::row_major, wmma::row_major>(Am, Bm, Cm, Dm[warp], false, false, cl, round);
    __syncwarp();
    const unsigned e = warp * 32 + lane, i = e / 16, j = e % 16;
    out[linear_id()] = Dm[warp][c_col ? j * 20 + i : i * 20 + j];
}

// grid (8), block (32); out is (256,): the 16 x 16 tile stored row-major from an
// accumulator whose slot e holds 100 * e + lane (the lane mapping, made visible)
__global__ void mma_layout_kernel(double *out)
{
    __shared__ __align__(32) float Dm[16 * 16];
    const unsigned lane = threadIdx.x % 32;
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> fc;
    for (int e = 0; e < fc.num_elements; e++)
        fc.x[e] = (float)(100 * e + lane);
    wmma::store_matrix_sync(Dm, fc, 16, wmma::mem_row_major);
    __syncwarp();
    out[linear_id()] = Dm[linear_id()];
}

// A WMMA call that breaks a documented rule, by mode (lane `who`, value v):
// 0 lane who exits before a load; 1 lane who skips it and waits at a __syncwarp;
// 2 lane who loads from another pointer; 3 a load from Am + v; 4 a load with ldm v;
// 5 a store to Dm + v; 6 a store with ldm v; 7 an accumulator load with layout v;
// 8 lanes < 16 call mma_sync at one line, the others at another; 9 a plain load
// (for blocks whose last warp is partial). out is (threads): 1 where a thread got through.
__global__ void mma_misuse_kernel(int mode, int who, int v, double *out)
{
    __shared__ __align__(32) float Am[16 * 16 + 64];
    __shared__ __align__(32) float Dm[16 * 16 + 64];
    const int lane = (int)(threadIdx.x % 32);
    for (unsigned e = threadIdx.x; e < 16 * 16 + 64; e += blockDim.x)
        Am[e] = 1.0f;
    __syncthreads();
    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, wmma::row_major> fb;
    wmma::fragment<wmma::accumulator, 16, 16, 8, float> fc;
    wmma::fill_fragment(fc, 0.0f);
    switch (mode) {
    case 0:
        if (lane == who)
            return;
        wmma::load_matrix_sync(fa, Am, 8);
        break;
    case 1:
        if (lane != who)
            wmma::load_matrix_sync(fa, Am, 8);
        __syncwarp();
        break;
    case 2:
        wmma::load_matrix_sync(fa, lane == who ? Am + 8 : Am, 8);
        break;
    case 3: wmma::load_matrix_sync(fa, Am + v, 8); break;
    case 4: wmma::load_matrix_sync(fa, Am, (unsigned)v); break;
    case 5: wmma::store_matrix_sync(Dm + v, fc, 16, wmma::mem_row_major); break;
    case 6: wmma::store_matrix_sync(Dm, fc, (unsigned)v, wmma::mem_row_major); break;
    case 7: wmma::load_matrix_sync(fc, Am, 16, (wmma::layout_t)v); break;
    case 8:
        wmma::load_matrix_sync(fa, Am, 8);
        wmma::load_matrix_sync(fb, Am, 16);
        if (lane < 16)
            wmma::mma_sync(fc, fa, fb, fc);
        else
            wmma::mma_sync(fc, fa, fb, fc);
        break;
    case 10:
        if (lane == who)
            wmma::store_matrix_sync(Dm, fc, 16, wmma::mem_row_major);
        else
            wmma::load_matrix_sync(fa, Am, 8);
        break;
    default: wmma::load_matrix_sync(fa, Am, 8); break;
    }
    out[linear_id()] = 1;
}
} // namespace

/* The WMMA test kernel called name, launched (true), or false if there is none
 * (emu_selftest.cc's _selftest hook). */
bool ndl_cuda_emu_selftest_mma(const char *name, dim3 grid, dim3 block, const int args[4],
                               double *d)
{
    if (strcmp(name, "tf32_round") == 0)
        NDL_LAUNCH(grid, block, tf32_round_kernel)(args[0], args[1], d);
    else if (strcmp(name, "mma_tile") == 0)
        NDL_LAUNCH(grid, block, mma_tile_kernel)(args[0], args[1], args[2], args[3], d);
    else if (strcmp(name, "mma_layout") == 0)
        NDL_LAUNCH(grid, block, mma_layout_kernel)(d);
    else if (strcmp(name, "mma_misuse") == 0)
        NDL_LAUNCH(grid, block, mma_misuse_kernel)(args[0], args[1], args[2], d);
    else
        return false;
    return true;
}
