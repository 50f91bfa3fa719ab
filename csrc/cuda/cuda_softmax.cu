/* cuda_softmax.cu: the fused softmax slots (backend.h): softmax rows (plain,
 * or attention's x / c + causal mask first), softmax's gradient rows, and the
 * softmax cross-entropy rows. The formulas are cpu_softmax.c's.
 *
 * One warp per row (8 rows per block of 256 threads, a grid-stride loop over
 * rows, int64 indices; cuda_rows.cuh), so any number of rows of any length
 * is covered, the row sums in the CPU's order (Note [CPU order on the GPU]). */
#include "cuda_rows.cuh"

// z, out are (rows, n) compact; with mask, row r is first z / scale plus
// -FLT_MAX at columns j >= r % mrows + n - mrows + 1 when causal
template <typename T>
__global__ void __launch_bounds__(NDL_CU_THREADS)
    softmax_kernel(int64_t rows, int64_t n, const T *z, int has_mask, T scale, int causal,
                   int64_t mrows, T *out)
{
    __shared__ T bufs[WARPS][CHUNK];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (NDL_WARP_ROWS(r, rows)) {
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
    for (NDL_WARP_ROWS(r, rows)) {
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
    for (NDL_WARP_ROWS(r, rows)) {
        const T *zr = z + r * n;
        const T m = warp_row_max<T>(n, Elem<T>{zr}, lane);
        const T s = warp_row_sum8<T>(n, ExpShift<T>{zr, m}, bufs[warp], lane);
        const int64_t y = labels[r]; /* checked on the host: in [0, n) */
        if (lane == 0)
            loss[r] = ((double)m - (double)zr[y]) + log((double)s);
    }
}

// loss (rows) doubles, out one T: the rows' losses summed in row order in
// double by ONE thread (cpu_softmax.c's order, so the CPU's bits), divided by
// rows, rounded to T. Note [Loss summed on the device]
template <typename T>
__global__ void xent_mean_kernel(int64_t rows, const double *loss, T *out)
{
    if (blockIdx.x != 0 || threadIdx.x != 0)
        return;
    double total = 0;
    for (int64_t r = 0; r < rows; r++)
        total += loss[r];
    *out = (T)(total / (double)rows); /* rows = 0: 0 / 0, NaN, as on the CPU */
}

// g the upstream gradient's one element (dtype float32 when gf32, else
// float64): g / rows computed in g's dtype (DivScalar's numbers), rounded to T
template <typename T> __device__ __forceinline__ T xent_gb(int gf32, const void *g, int64_t rows)
{
    return gf32 ? (T)(*(const float *)g / (float)rows) : (T)(*(const double *)g / (double)rows);
}


// z, out are (rows, n) compact, labels (rows) in [0, n), g one element: row r
// of out is (softmax(z[r]) + (-1 at labels[r])) * gb, gb = g / rows rounded
// to T, cpu_softmax.c's xent_grad_row
template <typename T>
__global__ void __launch_bounds__(NDL_CU_THREADS)
    xent_grad_kernel(int64_t rows, int64_t n, const T *z, const int64_t *labels, int gf32,
                     const void *g, T *out)
{
    __shared__ T bufs[WARPS][CHUNK];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const T gb = xent_gb<T>(gf32, g, rows); /* every thread reads the same element */
    for (NDL_WARP_ROWS(r, rows)) {
        const T *zr = z + r * n;
        T *o = out + r * n;
        const T m = warp_row_max<T>(n, Elem<T>{zr}, lane);
        for (int64_t i = lane; i < n; i += 32)
            o[i] = Lim<T>::ex(zr[i] - m);
        __syncwarp(); /* the tail of the sum reads other lanes' o */
        const T s = warp_row_sum8<T>(n, Elem<T>{o}, bufs[warp], lane);
        const int64_t y = labels[r]; /* checked on the host: in [0, n) */
        for (int64_t i = lane; i < n; i += 32) { /* lane's own elements only */
            T v = o[i] / s;
            if (i == y)
                v = Lim<T>::add(v, (T)-1.0);
            o[i] = Lim<T>::mul(v, gb);
        }
    }
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
    NDL_CU_DTYPE(dt, T,
                 NDL_LAUNCH(row_blocks(rows), NDL_CU_THREADS, softmax_kernel<T>)(
                     rows, n, (const T *)z, has, (T)scale, causal, mrows, (T *)out));
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
    NDL_CU_DTYPE(dt, T,
                 NDL_LAUNCH(row_blocks(rows), NDL_CU_THREADS, softmax_grad_kernel<T>)(
                     rows, n, (const T *)y, (const T *)g, (T *)out));
    NDL_CUDA_LAUNCHED();
    return NDL_OK;
}

/* The labels (a HOST array, backend.h) checked on the host (in [0, n)) and
 * copied to a device scratch of rows int64 plus `extra` bytes. NULL with *st
 * NDL_OK when there is nothing to do (rows = 0), else with the failure's
 * status. Free it with ndl_cuda_free (stream-ordered, as in cuda_matmul.cu). */
static int64_t *device_labels(int64_t rows, int64_t n, const int64_t *labels, size_t extra,
                              int *st)
{
    int64_t *dlab;
    *st = rows < 0 || (rows > 0 && n < 1) ? NDL_EINVAL : NDL_OK;
    if (rows <= 0 || *st != NDL_OK)
        return NULL;
    for (int64_t r = 0; r < rows; r++)
        if (labels[r] < 0 || labels[r] >= n) {
            *st = NDL_EINVAL;
            return NULL;
        }
    if ((dlab = (int64_t *)ndl_cuda_alloc((size_t)rows * sizeof(int64_t) + extra)) == NULL) {
        *st = NDL_ENOMEM_DEVICE;
        return NULL;
    }
    /* asynchronous (Note [Staged uploads], cuda_memory.cu): no wait for earlier kernels */
    if ((*st = ndl_cuda_upload(dlab, labels, (size_t)rows * sizeof(int64_t), NULL, 0)) !=
        NDL_OK) {
        ndl_cuda_free(dlab);
        return NULL;
    }
    return dlab;
}

/* labels a host array, loss one element of dt on the device (backend.h): the
 * labels go up, the rows' losses stay in the scratch buffer and one thread
 * sums them into *loss; nothing comes back, nothing waits. */
int ndl_cuda_softmax_xent(ndl_dtype dt, int64_t rows, int64_t n, const void *z,
                          const int64_t *labels, void *loss)
{
    int st;
    int64_t *dlab = device_labels(rows, n, labels, (size_t)rows * sizeof(double), &st);
    if (st != NDL_OK)
        return st;
    double *dloss = dlab != NULL ? (double *)(dlab + rows) : NULL; /* NULL: rows = 0 */
    if (dlab != NULL) {
        NDL_CU_DTYPE(dt, T,
                     NDL_LAUNCH(row_blocks(rows), NDL_CU_THREADS, xent_kernel<T>)(
                         rows, n, (const T *)z, dlab, dloss));
        st = NDL_CUDA_LAUNCH_STATUS("xent_kernel<<<...>>>");
    }
    if (st == NDL_OK) {
        NDL_CU_DTYPE(dt, T, NDL_LAUNCH(1, 1, xent_mean_kernel<T>)(rows, dloss, (T *)loss));
        st = NDL_CUDA_LAUNCH_STATUS("xent_mean_kernel<<<...>>>");
    }
    if (dlab != NULL)
        ndl_cuda_free(dlab); /* stream-ordered: reused only after these kernels */
    return st;
}

/* labels a host array; g the upstream gradient's element on the device, read
 * by the kernel (backend.h) */
int ndl_cuda_softmax_xent_grad(ndl_dtype dt, int64_t rows, int64_t n, const void *z,
                               const int64_t *labels, ndl_dtype gdt, const void *g, void *out)
{
    int st;
    if (gdt != NDL_FLOAT32 && gdt != NDL_FLOAT64)
        return NDL_EINVAL;
    int64_t *dlab = device_labels(rows, n, labels, 0, &st);
    if (dlab == NULL)
        return st;
    NDL_CU_DTYPE(dt, T,
                 NDL_LAUNCH(row_blocks(rows), NDL_CU_THREADS, xent_grad_kernel<T>)(
                     rows, n, (const T *)z, dlab, gdt == NDL_FLOAT32, g, (T *)out));
    st = NDL_CUDA_LAUNCH_STATUS("xent_grad_kernel<<<...>>>");
    ndl_cuda_free(dlab); /* stream-ordered: reused only after this kernel */
    return st;
}
