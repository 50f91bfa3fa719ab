/* cuda_rows.cuh: the row reductions of the fused row kernels
 * (cuda_softmax.cu, cuda_layernorm.cu): one warp per row, 8 rows per block
 * of 256 threads, a grid-stride loop over rows with int64 indices.
 *
 * Note [CPU order on the GPU]
 *   The row max does not depend on the order (NaN is skipped by `z > m`, as
 *   on the CPU; clamped to [-BIG, BIG] after). The row sum does, so it is the
 *   CPU's (NDL_SUM8_OF, cpu_rows.h): eight partial sums acc[k] of the
 *   elements i < n8 (n8 = n rounded down to a multiple of 8) with i % 8 == k,
 *   in increasing i, then the tail i >= n8 added to acc[0] in order, then
 *   NDL_SUM8. Here the 32 lanes compute the terms of 256 consecutive
 *   elements into a per-warp shared buffer, and lanes 0..7 add them up in
 *   that order (lane k reads buf[k + 8 j]: eight banks, no conflict); the
 *   tail (< 8 terms) is added by every lane, so each lane ends with the same
 *   sum. The terms are the CPU's too, each rounded on its own: the products
 *   and sums of a term use Lim's __f*_rn / __d*_rn, which nvcc never
 *   contracts into an fma (it contracts a * b + c by default; the CPU is
 *   built without fma). What remains different: nvcc's contraction inside
 *   ndl_exp (within an ulp per term), the device's pow and log (an ulp or
 *   two). */
#ifndef NDL_CUDA_ROWS_CUH
#define NDL_CUDA_ROWS_CUH

#include <float.h>

#include "cuda_common.cuh"
#include "row_reduce.h"
#include "scalar_ops.h"

#define WARPS (NDL_CU_THREADS / 32)
#define CHUNK 256 /* terms per warp and round of the ordered sum */

template <typename T> struct Lim;
/* NOTE: __f*_rn / __d*_rn are never contracted into an fma with a
 * neighbouring operation, so a term ends rounded, as the CPU has it. */
template <> struct Lim<float> {
    __device__ static float add(float a, float b) { return __fadd_rn(a, b); }
    __device__ static float sub(float a, float b) { return __fsub_rn(a, b); }
    __device__ static float pw(float a, float b) { return ndl_pow_f32(a, b); }
    __device__ static float mul(float a, float b) { return __fmul_rn(a, b); }
    __device__ static float big() { return FLT_MAX; }
    __device__ static float ex(float x) { return ndl_exp_f32(x); }
};
template <> struct Lim<double> {
    __device__ static double add(double a, double b) { return __dadd_rn(a, b); }
    __device__ static double sub(double a, double b) { return __dsub_rn(a, b); }
    __device__ static double pw(double a, double b) { return ndl_pow_f64(a, b); }
    __device__ static double mul(double a, double b) { return __dmul_rn(a, b); }
    __device__ static double big() { return DBL_MAX; }
    __device__ static double ex(double x) { return ndl_exp_f64(x); }
};

/* The terms of the row reductions: z[i], exp(z[i] - m), g[i] * y[i]. */
template <typename T> struct Elem {
    const T *z;
    __device__ T operator()(int64_t i) const { return z[i]; }
};
template <typename T> struct ExpShift {
    const T *z;
    T m;
    __device__ T operator()(int64_t i) const { return Lim<T>::ex(z[i] - m); }
};
template <typename T> struct Prod {
    const T *g, *y;
    __device__ T operator()(int64_t i) const { return Lim<T>::mul(g[i], y[i]); }
};

/* The max of term(i), i in [0, n), clamped to [-BIG, BIG]; -BIG when n = 0.
 * Every lane of the warp returns it. */
template <typename T, typename F>
__device__ T warp_row_max(int64_t n, F term, int lane)
{
    T m = -Lim<T>::big();
    for (int64_t i = lane; i < n; i += 32) {
        T z = term(i);
        m = z > m ? z : m;
    }
    for (int s = 16; s > 0; s >>= 1) {
        T o = __shfl_xor_sync(0xffffffffu, m, s);
        m = o > m ? o : m;
    }
    return m < Lim<T>::big() ? m : Lim<T>::big();
}

/* The sum of term(i), i in [0, n), in the CPU's order (Note [CPU order on the
 * GPU]); buf is this warp's CHUNK shared elements. Every lane returns it. */
template <typename T, typename F>
__device__ T warp_row_sum8(int64_t n, F term, T *buf, int lane)
{
    const int64_t n8 = n - n % 8;
    T acc = 0, a[8];
    for (int64_t c0 = 0; c0 < n8; c0 += CHUNK) {
        const int64_t lim = n8 - c0 < CHUNK ? n8 - c0 : CHUNK;
        for (int j = lane; j < lim; j += 32)
            buf[j] = term(c0 + j);
        __syncwarp();
        if (lane < 8)
            for (int j = lane; j < lim; j += 8)
                acc += buf[j];
        __syncwarp(); /* buf is rewritten by the next round */
    }
    for (int k = 0; k < 8; k++)
        a[k] = __shfl_sync(0xffffffffu, acc, k);
    for (int64_t i = n8; i < n; i++)
        a[0] = Lim<T>::add(a[0], term(i));
    __syncwarp(); /* every lane has read the tail before anyone writes it */
    return NDL_SUM8(a);
}

/* Blocks for a grid-stride loop over rows, one warp each (rows > 0). */
static inline unsigned row_blocks(int64_t rows)
{
    return ndl_cu_grid((rows + WARPS - 1) / WARPS, 65536);
}

/* The loop over this warp's rows: for (NDL_WARP_ROWS(r, rows)) { ... } */
#define NDL_WARP_ROWS(r, rows)                                                                     \
    int64_t r = blockIdx.x * (int64_t)WARPS + threadIdx.x / 32; r < (rows);                       \
    r += (int64_t)gridDim.x * WARPS

#endif /* NDL_CUDA_ROWS_CUH */
