/* cuda_layernorm.cu: the LayerNorm slots (backend.h): layer_norm rows and
 * their gradients. The formulas and the order of every sum are
 * cpu_layernorm.c's (Note [CPU order on the GPU], cuda_rows.cuh).
 *
 * Forward and the rows of the backward: one warp per row (cuda_rows.cuh),
 * grid-stride over rows, int64 indices. The column sums of the backward (gw,
 * gb): a blocked reduction (Note [LayerNorm column sums]).
 *
 * Note [LayerNorm column sums]
 *   gw[c] = sum_r g[r, c] * xhat[r, c] and gb[c] = sum_r g[r, c] over every
 *   row. The rows are cut into chunks of ln_chunk(rows) rows (a function of
 *   rows only: LN_ROWS, more when there would be over 65535 chunks, the grid's
 *   y limit); block (tile, chunk) owns 32 columns of one chunk: its 8 warps
 *   each add every 8th row of the chunk (warp w: rows w, w + 8, ... in
 *   increasing order; lane = column, so a warp reads 32 consecutive elements
 *   of a row: coalesced), then warp 0 adds the 8 partial sums in warp order
 *   (shared sw[8][32]: a warp writes one row of 32 consecutive words, lane c
 *   reads column c of each row: no bank conflict). One chunk writes gw, gb
 *   directly; more write a partial row each into a scratch (chunks, n), and a
 *   second kernel adds the chunks of each column in increasing order. Every
 *   order is fixed by rows and n alone, never by the schedule: the results are
 *   deterministic, the same on every GPU. It is not the CPU's order (rows in
 *   increasing order), so the sums agree with the CPU's within summation
 *   rounding (a few ulps of the sum of |terms|), not bit for bit. Column tiles
 *   are a block-uniform grid-stride loop (at most 65535 blocks in x), so any n
 *   is covered; rows = 0 never launches (the caller zeroes gw, gb).
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

#define LN_ROWS 256         /* rows a chunk of the column sums, at least */
#define LN_MAX_CHUNKS 65535 /* the grid's y limit */
#define LN_MAX_TILES 65535  /* blocks in x; the tile loop covers the rest */

/* Rows of a chunk (Note [LayerNorm column sums]): rows > 0. */
static inline int64_t ln_chunk(int64_t rows)
{
    const int64_t most = ndl_cu_grid_limit(LN_MAX_CHUNKS), least = (rows + most - 1) / most;
    return least > LN_ROWS ? least : LN_ROWS;
}

/* The per-element term of gw: g * ((x - mean) * r), rounded as the CPU does. */
template <typename T>
__device__ __forceinline__ T ln_gw_term(T gv, T xv, const T *stats, int64_t r)
{
    return Lim<T>::mul(gv, Lim<T>::mul(Lim<T>::sub(xv, stats[2 * r]), stats[2 * r + 1]));
}

// x, g are (rows, n) compact, stats (rows, 2); blockDim 256 = 8 warps x 32 columns.
// With pw == NULL (one chunk): gw, gb (n), either may be NULL, get the sums; else
// pw, pb (gridDim.y, n) get chunk blockIdx.y's partial sums.
template <typename T>
__global__ void __launch_bounds__(NDL_CU_THREADS)
    layer_norm_grad_cols_kernel(int64_t rows, int64_t n, int64_t chunk, const T *x, const T *g,
                                const T *stats, T *gw, T *gb, T *pw, T *pb)
{
    __shared__ T sw[WARPS][32], sb[WARPS][32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int64_t k = blockIdx.y, r0 = k * chunk;
    const int64_t r1 = rows - r0 < chunk ? rows : r0 + chunk; /* r0 < rows */
    const int64_t tiles = (n + 31) / 32;
    for (int64_t t = blockIdx.x; t < tiles; t += gridDim.x) { /* block-uniform */
        const int64_t c = t * 32 + lane;
        T aw = 0, ab = 0;
        if (c < n)
            for (int64_t r = r0 + warp; r < r1; r += WARPS) {
                const T gv = g[r * n + c];
                ab = Lim<T>::add(ab, gv);
                aw = Lim<T>::add(aw, ln_gw_term<T>(gv, x[r * n + c], stats, r));
            }
        sw[warp][lane] = aw, sb[warp][lane] = ab;
        __syncthreads();
        if (warp == 0 && c < n) {
            aw = sw[0][lane], ab = sb[0][lane];
            for (int w = 1; w < WARPS; w++)
                aw = Lim<T>::add(aw, sw[w][lane]), ab = Lim<T>::add(ab, sb[w][lane]);
            if (pw != NULL) {
                pw[k * n + c] = aw, pb[k * n + c] = ab;
            } else {
                if (gw != NULL)
                    gw[c] = aw;
                if (gb != NULL)
                    gb[c] = ab;
            }
        }
        __syncthreads(); /* sw, sb are rewritten by the next tile */
    }
}

// pw, pb are (chunks, n); gw, gb (n), either may be NULL: column c's chunks in order
template <typename T>
__global__ void __launch_bounds__(NDL_CU_THREADS)
    layer_norm_grad_chunks_kernel(int64_t chunks, int64_t n, const T *pw, const T *pb, T *gw,
                                  T *gb)
{
    for (int64_t c = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; c < n;
         c += (int64_t)gridDim.x * blockDim.x) {
        T aw = 0, ab = 0;
        for (int64_t k = 0; k < chunks; k++)
            aw = Lim<T>::add(aw, pw[k * n + c]), ab = Lim<T>::add(ab, pb[k * n + c]);
        if (gw != NULL)
            gw[c] = aw;
        if (gb != NULL)
            gb[c] = ab;
    }
}

/* The column sums (Note [LayerNorm column sums]) of rows > 0, n > 0. */
static int layer_norm_grad_cols(ndl_dtype dt, int64_t rows, int64_t n, const void *x,
                                const void *g, const void *stats, void *gw, void *gb)
{
    const size_t item = dt == NDL_FLOAT64 ? sizeof(double) : sizeof(float);
    const int64_t chunk = ln_chunk(rows), chunks = (rows + chunk - 1) / chunk;
    const int64_t tiles = (n + 31) / 32;
    const dim3 grid(ndl_cu_grid(tiles, LN_MAX_TILES), (unsigned)chunks);
    char *part = NULL;
    int st;
    if (chunks > 1) {
        /* 2 * chunks * n items <= 2 * (rows / 256 + 1) * n: under the inputs' size */
        if ((part = (char *)ndl_cuda_alloc(item * 2 * (size_t)chunks * (size_t)n)) == NULL)
            return NDL_ENOMEM_DEVICE;
    }
    NDL_CU_DTYPE(dt, T,
                 NDL_LAUNCH(grid, NDL_CU_THREADS, layer_norm_grad_cols_kernel<T>)(
                     rows, n, chunk, (const T *)x, (const T *)g, (const T *)stats, (T *)gw,
                     (T *)gb, (T *)part,
                     part == NULL ? NULL : (T *)(part + item * (size_t)chunks * (size_t)n)));
    st = NDL_CUDA_LAUNCH_STATUS("layer_norm_grad_cols_kernel<<<...>>>");
    if (st == NDL_OK && part != NULL) {
        NDL_CU_DTYPE(dt, T,
                     NDL_LAUNCH(ndl_cu_blocks(n), NDL_CU_THREADS, layer_norm_grad_chunks_kernel<T>)(
                         chunks, n, (const T *)part,
                         (const T *)(part + item * (size_t)chunks * (size_t)n), (T *)gw,
                         (T *)gb));
        st = NDL_CUDA_LAUNCH_STATUS("layer_norm_grad_chunks_kernel<<<...>>>");
    }
    if (part != NULL)
        ndl_cuda_free(part); /* stream-ordered: reused only after these kernels */
    return st;
}

int ndl_cuda_layer_norm(ndl_dtype dt, int64_t rows, int64_t n, const void *x, const void *w,
                        const void *b, double eps, void *y)
{
    if (rows < 0 || n < 0)
        return NDL_EINVAL;
    if (rows == 0 || n == 0)
        return NDL_OK;
    NDL_CU_DTYPE(dt, T,
                 NDL_LAUNCH(row_blocks(rows), NDL_CU_THREADS, layer_norm_kernel<T>)(
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
        return NDL_ENOMEM_DEVICE;
    NDL_CU_DTYPE(dt, T,
                 NDL_LAUNCH(row_blocks(rows), NDL_CU_THREADS, layer_norm_grad_rows_kernel<T>)(
                     rows, n, (const T *)x, (const T *)w, (const T *)g, (T)eps, (T *)gx,
                     (T *)stats));
    st = NDL_CUDA_LAUNCH_STATUS("layer_norm_grad_rows_kernel<<<...>>>");
    if (st == NDL_OK && (gw != NULL || gb != NULL))
        st = layer_norm_grad_cols(dt, rows, n, x, g, stats, gw, gb);
    ndl_cuda_free(stats); /* stream-ordered: reused only after these kernels */
    return st;
}
