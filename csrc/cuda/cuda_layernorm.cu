/* cuda_layernorm.cu: the LayerNorm slots (backend.h): layer_norm rows and
 * their gradients. The formulas and the order of every sum are
 * cpu_layernorm.c's (Note [CPU order on the GPU], cuda_rows.cuh).
 *
 * Forward and the rows of the backward: one warp per row (cuda_rows.cuh),
 * grid-stride over rows, int64 indices. The column sums of the backward (gw,
 * gb): one thread per column, grid-stride over columns, each adding the rows
 * in increasing order as the CPU does (consecutive threads read consecutive
 * columns: coalesced). NOTE: a long column is one thread's loop; for the
 * Transformer's shapes (a few thousand rows of 256-1024) that is short.
 */
#include "cuda_rows.cuh"

/* The terms of the row sums: (x - mean)^2, g * w, (g * w) * ((x - mean) * r),
 * each rounded as the CPU rounds it. */
template <typename T> struct SqDev {
    const T *x;
    T mean;
    __device__ T operator()(int64_t i) const
    {
        const T d = Lim<T>::sub(x[i], mean);
        return Lim<T>::mul(d, d);
    }
};
template <typename T> struct GW {
    const T *g, *w;
    __device__ T operator()(int64_t i) const { return Lim<T>::mul(g[i], w[i]); }
};
template <typename T> struct GWXh {
    const T *g, *w, *x;
    T mean, r;
    __device__ T operator()(int64_t i) const
    {
        return Lim<T>::mul(Lim<T>::mul(g[i], w[i]), Lim<T>::mul(Lim<T>::sub(x[i], mean), r));
    }
};

/* mean and var of a row of n (every lane gets them) */
template <typename T>
__device__ void warp_moments(const T *x, int64_t n, T *buf, int lane, T *mean, T *var)
{
    const T m = warp_row_sum8<T>(n, Elem<T>{x}, buf, lane) / (T)n;
    *mean = m;
    *var = warp_row_sum8<T>(n, SqDev<T>{x, m}, buf, lane) / (T)n;
}

// x, y are (rows, n) compact, w, b (n)
template <typename T>
__global__ void __launch_bounds__(NDL_CU_THREADS)
    layer_norm_kernel(int64_t rows, int64_t n, const T *x, const T *w, const T *b, T eps, T *y)
{
    __shared__ T bufs[WARPS][CHUNK];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (NDL_WARP_ROWS(r, rows)) {
        const T *xr = x + r * n;
        T *yr = y + r * n, mean, var;
        warp_moments<T>(xr, n, bufs[warp], lane, &mean, &var);
        const T den = Lim<T>::pw(Lim<T>::add(var, eps), (T)0.5);
        for (int64_t i = lane; i < n; i += 32)
            yr[i] = Lim<T>::add(Lim<T>::mul(w[i], Lim<T>::sub(xr[i], mean) / den), b[i]);
    }
}

// x, g, gx are (rows, n) compact, w (n), stats (rows, 2) <- (mean, r) per row;
// gx may be NULL (then only the stats)
template <typename T>
__global__ void __launch_bounds__(NDL_CU_THREADS)
    layer_norm_grad_rows_kernel(int64_t rows, int64_t n, const T *x, const T *w, const T *g,
                                T eps, T *gx, T *stats)
{
    __shared__ T bufs[WARPS][CHUNK];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (NDL_WARP_ROWS(r, rows)) {
        const T *xr = x + r * n, *gr = g + r * n;
        T mean, var;
        warp_moments<T>(xr, n, bufs[warp], lane, &mean, &var);
        const T rs = Lim<T>::pw(Lim<T>::add(var, eps), (T)-0.5);
        if (lane == 0)
            stats[2 * r] = mean, stats[2 * r + 1] = rs;
        if (gx == NULL) /* warp-uniform */
            continue;
        const T mh = warp_row_sum8<T>(n, GW<T>{gr, w}, bufs[warp], lane) / (T)n;
        const T mhx = warp_row_sum8<T>(n, GWXh<T>{gr, w, xr, mean, rs}, bufs[warp], lane) / (T)n;
        T *o = gx + r * n;
        for (int64_t i = lane; i < n; i += 32) {
            const T h = Lim<T>::mul(gr[i], w[i]);
            const T xh = Lim<T>::mul(Lim<T>::sub(xr[i], mean), rs);
            o[i] = Lim<T>::mul(rs, Lim<T>::sub(Lim<T>::sub(h, mh), Lim<T>::mul(xh, mhx)));
        }
    }
}

// x, g are (rows, n) compact, stats (rows, 2); gw, gb (n), either may be NULL
template <typename T>
__global__ void __launch_bounds__(NDL_CU_THREADS)
    layer_norm_grad_cols_kernel(int64_t rows, int64_t n, const T *x, const T *g,
                                const T *stats, T *gw, T *gb)
{
    for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < n;
         c += (int64_t)gridDim.x * blockDim.x) {
        T sw = 0, sb = 0;
        for (int64_t r = 0; r < rows; r++) {
            const T gv = g[r * n + c];
            sb = Lim<T>::add(sb, gv);
            sw = Lim<T>::add(sw, Lim<T>::mul(gv, Lim<T>::mul(Lim<T>::sub(x[r * n + c],
                                                                         stats[2 * r]),
                                                             stats[2 * r + 1])));
        }
        if (gw != NULL)
            gw[c] = sw;
        if (gb != NULL)
            gb[c] = sb;
    }
}

int ndl_cuda_layer_norm(ndl_dtype dt, int64_t rows, int64_t n, const void *x, const void *w,
                        const void *b, double eps, void *y)
{
    if (rows < 0 || n < 0)
        return NDL_EINVAL;
    if (rows == 0 || n == 0)
        return NDL_OK;
    NDL_CU_DTYPE(dt, T,
                 layer_norm_kernel<T><<<row_blocks(rows), NDL_CU_THREADS>>>(
                     rows, n, (const T *)x, (const T *)w, (const T *)b, (T)eps, (T *)y));
    NDL_CUDA_LAUNCHED();
    return NDL_OK;
}

int ndl_cuda_layer_norm_grad(ndl_dtype dt, int64_t rows, int64_t n, const void *x, const void *w,
                             const void *g, double eps, void *gx, void *gw, void *gb)
{
    const size_t item = dt == NDL_FLOAT64 ? sizeof(double) : sizeof(float);
    void *stats;
    int st = NDL_OK;
    if (rows < 0 || n < 0)
        return NDL_EINVAL;
    if (n == 0)
        return NDL_OK;
    if (rows == 0) { /* empty sums */
        if (gw != NULL)
            NDL_CUDA_TRY(cudaMemset(gw, 0, item * (size_t)n));
        if (gb != NULL)
            NDL_CUDA_TRY(cudaMemset(gb, 0, item * (size_t)n));
        return NDL_OK;
    }
    if ((stats = ndl_cuda_alloc(item * 2 * (size_t)rows)) == NULL)
        return NDL_ENOMEM;
    NDL_CU_DTYPE(dt, T,
                 layer_norm_grad_rows_kernel<T><<<row_blocks(rows), NDL_CU_THREADS>>>(
                     rows, n, (const T *)x, (const T *)w, (const T *)g, (T)eps, (T *)gx,
                     (T *)stats));
    st = NDL_CUDA_LAUNCH_STATUS("layer_norm_grad_rows_kernel<<<...>>>");
    if (st == NDL_OK && (gw != NULL || gb != NULL)) {
        NDL_CU_DTYPE(dt, T,
                     layer_norm_grad_cols_kernel<T><<<ndl_cu_blocks(n), NDL_CU_THREADS>>>(
                         rows, n, (const T *)x, (const T *)g, (const T *)stats, (T *)gw,
                         (T *)gb));
        st = NDL_CUDA_LAUNCH_STATUS("layer_norm_grad_cols_kernel<<<...>>>");
    }
    ndl_cuda_free(stats); /* stream-ordered: reused only after these kernels */
    return st;
}
