/* cuda_softmax.cu: the fused softmax slots (backend.h): softmax rows (plain,
 * or attention's x / c + causal mask first), softmax's gradient rows, and the
 * softmax cross-entropy rows. The formulas are cpu_softmax.c's.
 *
 * One warp per row (8 rows per block of 256 threads, a grid-stride loop over
 * rows, int64 indices), so any number of rows of any length is covered.
 *
 * Note [CPU order on the GPU]
 *   The row max does not depend on the order (NaN is skipped by `z > m`, as
 *   on the CPU; clamped to [-BIG, BIG] after). The row sum does, so it is the
 *   CPU's (row_reduce.h): eight partial sums acc[k] of the elements i < n8
 *   (n8 = n rounded down to a multiple of 8) with i % 8 == k, in increasing
 *   i, then the tail i >= n8 added to acc[0] in order, then NDL_SUM8. Here
 *   the 32 lanes compute the terms of 256 consecutive elements into a
 *   per-warp shared buffer, and lanes 0..7 add them up in that order (lane k
 *   reads buf[k + 8 j]: eight banks, no conflict); the tail (< 8 terms) is
 *   added by every lane, so each lane ends with the same sum. The terms
 *   are the CPU's too (exp via scalar_ops.h's ndl_exp, g * y rounded before
 *   the sum), so results match the CPU's up to nvcc's contraction of
 *   a * b + c into one fma inside ndl_exp (within an ulp per term) and, for
 *   the cross-entropy, the device's double log (1 ulp). */
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
    __device__ static float mul(float a, float b) { return __fmul_rn(a, b); }
    __device__ static float big() { return FLT_MAX; }
    __device__ static float ex(float x) { return ndl_exp_f32(x); }
};
template <> struct Lim<double> {
    __device__ static double add(double a, double b) { return __dadd_rn(a, b); }
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

// z, out are (rows, n) compact; with mask, row r is first z / scale plus
// -FLT_MAX at columns j >= r % mrows + n - mrows + 1 when causal
template <typename T>
__global__ void __launch_bounds__(NDL_CU_THREADS)
    softmax_kernel(int64_t rows, int64_t n, const T *z, int has_mask, T scale, int causal,
                   int64_t mrows, T *out)
{
    __shared__ T bufs[WARPS][CHUNK];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int64_t r = blockIdx.x * (int64_t)WARPS + warp; r < rows;
         r += (int64_t)gridDim.x * WARPS) {
        const T *zr = z + r * n;
        T *y = out + r * n;
        if (has_mask) { /* the logits into y first, as the CPU does */
            const int64_t keep = causal ? r % mrows + n - mrows + 1 : n;
            for (int64_t i = lane; i < n; i += 32) {
                T v = zr[i] / scale;
                y[i] = i >= keep ? v + (T)(-FLT_MAX) : v;
            }
            zr = y; /* each lane reads back only its own elements before the sum */
        }
        const T m = warp_row_max<T>(n, Elem<T>{zr}, lane);
        for (int64_t i = lane; i < n; i += 32) /* lane's own elements: zr[i] read before */
            y[i] = Lim<T>::ex(zr[i] - m);
        __syncwarp(); /* the tail of the sum reads other lanes' y */
        const T s = warp_row_sum8<T>(n, Elem<T>{y}, bufs[warp], lane);
        for (int64_t i = lane; i < n; i += 32)
            y[i] = y[i] / s;
    }
}

// y, g, out are (rows, n) compact
template <typename T>
__global__ void __launch_bounds__(NDL_CU_THREADS)
    softmax_grad_kernel(int64_t rows, int64_t n, const T *y, const T *g, T *out)
{
    __shared__ T bufs[WARPS][CHUNK];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int64_t r = blockIdx.x * (int64_t)WARPS + warp; r < rows;
         r += (int64_t)gridDim.x * WARPS) {
        const T *yr = y + r * n, *gr = g + r * n;
        T *o = out + r * n;
        const T s = warp_row_sum8<T>(n, Prod<T>{gr, yr}, bufs[warp], lane);
        for (int64_t i = lane; i < n; i += 32)
            o[i] = yr[i] * (gr[i] - s);
    }
}

// z is (rows, n) compact, labels (rows) in [0, n), loss (rows) doubles
template <typename T>
__global__ void __launch_bounds__(NDL_CU_THREADS)
    xent_kernel(int64_t rows, int64_t n, const T *z, const int64_t *labels, double *loss)
{
    __shared__ T bufs[WARPS][CHUNK];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int64_t r = blockIdx.x * (int64_t)WARPS + warp; r < rows;
         r += (int64_t)gridDim.x * WARPS) {
        const T *zr = z + r * n;
        const T m = warp_row_max<T>(n, Elem<T>{zr}, lane);
        const T s = warp_row_sum8<T>(n, ExpShift<T>{zr, m}, bufs[warp], lane);
        const int64_t y = labels[r]; /* checked on the host: in [0, n) */
        if (lane == 0)
            loss[r] = ((double)m - (double)zr[y]) + log((double)s);
    }
}

static unsigned row_blocks(int64_t rows)
{
    int64_t b = (rows + WARPS - 1) / WARPS;
    return (unsigned)(b < 1 ? 1 : (b > 65536 ? 65536 : b));
}

int ndl_cuda_softmax(ndl_dtype dt, int64_t rows, int64_t n, const void *z,
                     const ndl_attention_mask *mask, void *out)
{
    const int has = mask != NULL, causal = has && mask->causal;
    const int64_t mrows = has ? mask->rows : 1;
    const double scale = has ? mask->scale : 1.0;
    if (rows < 0 || n < 0 || (causal && mrows < 1))
        return NDL_EINVAL;
    if (rows == 0 || n == 0)
        return NDL_OK;
    if (dt == NDL_FLOAT64)
        softmax_kernel<double><<<row_blocks(rows), NDL_CU_THREADS>>>(
            rows, n, (const double *)z, has, scale, causal, mrows, (double *)out);
    else
        softmax_kernel<float><<<row_blocks(rows), NDL_CU_THREADS>>>(
            rows, n, (const float *)z, has, (float)scale, causal, mrows, (float *)out);
    NDL_CUDA_LAUNCHED();
    return NDL_OK;
}

int ndl_cuda_softmax_grad(ndl_dtype dt, int64_t rows, int64_t n, const void *y, const void *g,
                          void *out)
{
    if (rows < 0 || n < 0)
        return NDL_EINVAL;
    if (rows == 0 || n == 0)
        return NDL_OK;
    if (dt == NDL_FLOAT64)
        softmax_grad_kernel<double><<<row_blocks(rows), NDL_CU_THREADS>>>(
            rows, n, (const double *)y, (const double *)g, (double *)out);
    else
        softmax_grad_kernel<float><<<row_blocks(rows), NDL_CU_THREADS>>>(
            rows, n, (const float *)y, (const float *)g, (float *)out);
    NDL_CUDA_LAUNCHED();
    return NDL_OK;
}

/* labels and loss are host arrays (backend.h): the labels go to the device
 * and the losses come back through one scratch buffer. */
int ndl_cuda_softmax_xent(ndl_dtype dt, int64_t rows, int64_t n, const void *z,
                          const int64_t *labels, double *loss)
{
    size_t bytes = (size_t)rows * (sizeof(int64_t) + sizeof(double));
    int64_t *dlab;
    int st;
    if (rows < 0 || (rows > 0 && n < 1))
        return NDL_EINVAL;
    if (rows == 0)
        return NDL_OK;
    for (int64_t r = 0; r < rows; r++)
        if (labels[r] < 0 || labels[r] >= n)
            return NDL_EINVAL;
    if ((dlab = (int64_t *)ndl_cuda_alloc(bytes)) == NULL)
        return NDL_ENOMEM;
    double *dloss = (double *)(dlab + rows);
    st = ndl_cuda_from_host(dlab, labels, (size_t)rows * sizeof(int64_t));
    if (st == NDL_OK) {
        if (dt == NDL_FLOAT64)
            xent_kernel<double><<<row_blocks(rows), NDL_CU_THREADS>>>(
                rows, n, (const double *)z, dlab, dloss);
        else
            xent_kernel<float><<<row_blocks(rows), NDL_CU_THREADS>>>(rows, n, (const float *)z,
                                                                     dlab, dloss);
        cudaError_t err = cudaGetLastError();
        if (err != cudaSuccess)
            st = ndl_cuda_fail(err, __FILE__, __LINE__, "xent_kernel<<<...>>>");
    }
    if (st == NDL_OK) /* synchronizes: a fault in the kernel surfaces here */
        st = ndl_cuda_to_host(loss, dloss, (size_t)rows * sizeof(double));
    ndl_cuda_free(dlab); /* stream-ordered, as in cuda_matmul.cu */
    return st;
}
