/* cuda_rows_index.cu: the take_rows and scatter_add_rows slots (backend.h):
 * Embedding's row lookup and its gradient in one kernel each (Note [Rows by
 * index], ops_rnn.c), where the composite path launched one copy (or one add
 * and one copy) per index. The host indices are checked here, then go up
 * through ndl_cuda_upload (Note [Staged uploads], cuda_memory.cu: the pinned
 * staging buffer, reused as the softmax labels reuse it; no wait for earlier
 * kernels) into a device scratch freed stream-ordered after the kernel.
 *
 * take: one grid-stride loop over the n * row elements of dst (int64 flat
 * index, so > 2^31 elements are covered). scatter: deterministic, one thread
 * per output column j (a grid-stride loop over the row columns), after a
 * cudaMemsetAsync zeroed out: it walks k = 0 .. n-1 IN ORDER adding g[k, j] into
 * out[idx[k], j] — the CPU's and the composite path's sums, bit for bit
 * (ndl_add_*, scalar_ops.h: a plain add, nothing to contract). Column
 * threads of one warp touch neighbouring addresses of one row, so the
 * loads and stores coalesce; no atomics, no two threads on one element.
 * A narrow row (Embedding's width is hundreds of columns) leaves most of
 * the GPU idle, but the step then runs 1 launch instead of n.
 */
#include "cuda_common.cuh"
#include "scalar_ops.h"

__device__ __forceinline__ float rows_add(float a, float b) { return ndl_add_f32(a, b); }
__device__ __forceinline__ double rows_add(double a, double b) { return ndl_add_f64(a, b); }

// src (rows_src, row), dst (n, row) compact; idx (n) on the device, checked
template <typename T>
__global__ void __launch_bounds__(NDL_CU_THREADS)
    take_rows_kernel(const T *__restrict__ src, int64_t row, const int64_t *__restrict__ idx,
                     int64_t n, T *__restrict__ dst)
{
    const int64_t total = n * row;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t k = i / row, j = i - k * row;
        dst[i] = src[idx[k] * row + j];
    }
}

// g (n, row), out (rows_out, row) compact and already zeroed; idx (n) on the
// device, checked
template <typename T>
__global__ void __launch_bounds__(NDL_CU_THREADS)
    scatter_add_rows_kernel(const T *__restrict__ g, int64_t n, int64_t row,
                            const int64_t *__restrict__ idx, T *__restrict__ out)
{
    for (int64_t j = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; j < row;
         j += (int64_t)gridDim.x * blockDim.x) {
        for (int64_t k = 0; k < n; k++) {
            T *o = out + idx[k] * row + j;
            *o = rows_add(*o, g[k * row + j]);
        }
    }
}

/* The n host indices checked against bound and copied to a device scratch.
 * NULL with *st NDL_OK when n = 0; else NULL with the failure's status. Free
 * it with ndl_cuda_free (stream-ordered). */
static int64_t *device_indices(const int64_t *idx, int64_t n, int64_t bound, int *st)
{
    int64_t *d;
    *st = NDL_OK;
    if (n == 0)
        return NULL;
    for (int64_t k = 0; k < n; k++)
        if (idx[k] < 0 || idx[k] >= bound) {
            *st = NDL_EINVAL;
            return NULL;
        }
    if ((d = (int64_t *)ndl_cuda_alloc((size_t)n * sizeof(int64_t))) == NULL) {
        *st = NDL_ENOMEM_DEVICE;
        return NULL;
    }
    /* asynchronous (Note [Staged uploads], cuda_memory.cu) */
    if ((*st = ndl_cuda_upload(d, idx, (size_t)n * sizeof(int64_t), NULL, 0)) != NDL_OK) {
        ndl_cuda_free(d);
        return NULL;
    }
    return d;
}

int ndl_cuda_take_rows(ndl_dtype dt, const void *src, int64_t rows_src, int64_t row,
                       const int64_t *idx, int64_t n, void *dst)
{
    int st;
    if (n < 0 || row < 0 || rows_src < 0)
        return NDL_EINVAL;
    int64_t *d = device_indices(idx, n, rows_src, &st);
    if (d == NULL || row == 0) { /* n = 0, a bad index, or nothing to move */
        if (d != NULL)
            ndl_cuda_free(d);
        return st;
    }
    NDL_CU_DTYPE(dt, T,
                 NDL_LAUNCH(ndl_cu_blocks(n * row), NDL_CU_THREADS, take_rows_kernel<T>)(
                     (const T *)src, row, d, n, (T *)dst));
    st = NDL_CUDA_LAUNCH_STATUS("take_rows_kernel<<<...>>>");
    ndl_cuda_free(d); /* stream-ordered: reused only after this kernel */
    return st;
}

int ndl_cuda_scatter_add_rows(ndl_dtype dt, const void *g, int64_t n, int64_t row,
                              const int64_t *idx, int64_t rows_out, void *out)
{
    int st;
    if (n < 0 || row < 0 || rows_out < 0)
        return NDL_EINVAL;
    int64_t *d = device_indices(idx, n, rows_out, &st);
    if (st != NDL_OK)
        return st;
    /* all-zero bits are +0.0, the composite path's fill; on the legacy
     * stream, so ordered before the kernel as every launch here is */
    if (row > 0 && rows_out > 0) {
        cudaError_t err = cudaMemsetAsync(out, 0, (size_t)rows_out * (size_t)row *
                                                      ndl_itemsize(dt), 0);
        if (err != cudaSuccess)
            st = ndl_cuda_fail(err, __FILE__, __LINE__, "cudaMemsetAsync(out)");
    }
    if (st == NDL_OK && d != NULL && row > 0) { /* d NULL: n = 0, zeros only */
        NDL_CU_DTYPE(dt, T,
                     NDL_LAUNCH(ndl_cu_blocks(row), NDL_CU_THREADS, scatter_add_rows_kernel<T>)(
                         (const T *)g, n, row, d, (T *)out));
        st = NDL_CUDA_LAUNCH_STATUS("scatter_add_rows_kernel<<<...>>>");
    }
    if (d != NULL)
        ndl_cuda_free(d); /* stream-ordered: reused only after this kernel */
    return st;
}
