/* cuda_rows_index.cu: the take_rows and scatter_add_rows slots (backend.h):
 * Embedding's row lookup and its gradient in one kernel each (Note [Rows by
 * index], ops_rnn.c), where the composite path launched one copy (or one add
 * and one copy) per index. The host indices are checked here, then go up
 * through ndl_cuda_upload (Note [Staged uploads], cuda_memory.cu: the pinned
 * staging buffer, reused as the softmax labels reuse it; no wait for earlier
 * kernels) into a device scratch freed stream-ordered after the kernel.
 *
 * take: one grid-stride loop over the n * row elements of dst (int64 flat
 * index, so > 2^31 elements are covered). scatter: deterministic, after a
 * cudaMemsetAsync zeroed out, one thread per (distinct index, column) adds
 * its g[k, j] in k order (Note [Scatter by segments]) — the CPU's and the
 * composite path's sums, bit for bit (ndl_add_*, scalar_ops.h: a plain add,
 * nothing to contract); no atomics, no two threads on one element.
 */
#include <stdlib.h>

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

// g (n, row) compact; out (rows_out, row) compact and already zeroed; on the
// device, plan = order (n) | seg (nseg + 1) | seg_row (nseg): segment s adds
// g's rows order[seg[s]] .. order[seg[s + 1] - 1] (k ascending) into out's row
// seg_row[s] (Note [Scatter by segments])
template <typename T>
__global__ void __launch_bounds__(NDL_CU_THREADS)
    scatter_add_rows_kernel(const T *__restrict__ g, int64_t row, const int64_t *__restrict__ plan,
                            int64_t n, int64_t nseg, T *__restrict__ out)
{
    const int64_t *order = plan, *seg = plan + n, *seg_row = plan + n + nseg + 1;
    const int64_t total = nseg * row;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        const int64_t s = i / row, j = i - s * row;
        T acc = (T)0; /* +0.0, the zeroed output's value: the first add is 0 + g */
        for (int64_t p = seg[s]; p < seg[s + 1]; p++)
            acc = rows_add(acc, g[order[p] * row + j]);
        out[seg_row[s] * row + j] = acc;
    }
}

/* Every one of the n host indices in [0, bound). */
static bool indices_ok(const int64_t *idx, int64_t n, int64_t bound)
{
    for (int64_t k = 0; k < n; k++)
        if (idx[k] < 0 || idx[k] >= bound)
            return false;
    return true;
}

/* The n host indices checked against bound and copied to a device scratch.
 * NULL with *st NDL_OK when n = 0; else NULL with the failure's status. Free
 * it with ndl_cuda_free (stream-ordered). */
static int64_t *device_indices(const int64_t *idx, int64_t n, int64_t bound, int *st)
{
    int64_t *d;
    *st = indices_ok(idx, n, bound) ? NDL_OK : NDL_EINVAL;
    if (n == 0 || *st != NDL_OK)
        return NULL;
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

/* Note [Scatter by segments]
 *   scatter_add_rows must add each output element's terms in k order (the
 *   CPU's and the composite path's bits: ((0 + g[k1]) + g[k2]) + ... for
 *   the k with idx[k] equal to that row). The pairs (idx[k], k) sorted on
 *   the host (n is an Embedding batch: small) give each distinct row its
 *   segment of k in ascending order; one thread per (segment, column) sums
 *   its segment in that order into a register and stores once. So every
 *   element is still one thread's fixed chain (no atomics, the same bits
 *   every run), with nseg * row threads where one per column walked all n
 *   indices before; neighbouring threads take neighbouring columns of one
 *   row, so loads and stores coalesce. Rows no index names keep the
 *   memset's zeros. */
typedef struct {
    int64_t idx, k;
} rows_pair;

static int rows_pair_cmp(const void *a, const void *b)
{
    const rows_pair *x = (const rows_pair *)a, *y = (const rows_pair *)b;
    if (x->idx != y->idx)
        return x->idx < y->idx ? -1 : 1;
    return x->k < y->k ? -1 : x->k > y->k;
}

/* The plan of Note [Scatter by segments] for n >= 1 checked indices, on the
 * device (freed with ndl_cuda_free); NULL with *st set on failure. */
static int64_t *device_plan(const int64_t *idx, int64_t n, int64_t *nseg, int *st)
{
    int64_t *d = NULL, *h = NULL, ns = 0;
    rows_pair *pairs = (rows_pair *)malloc((size_t)n * sizeof(rows_pair));
    *st = NDL_ENOMEM;
    if (pairs == NULL || (h = (int64_t *)malloc((size_t)(3 * n + 1) * sizeof(int64_t))) == NULL)
        goto fail;
    for (int64_t k = 0; k < n; k++)
        pairs[k] = rows_pair{idx[k], k};
    qsort(pairs, (size_t)n, sizeof(rows_pair), rows_pair_cmp);
    for (int64_t p = 0; p < n; p++) {
        h[p] = pairs[p].k;                         /* order */
        if (p == 0 || pairs[p].idx != pairs[p - 1].idx)
            h[n + ns++] = p;                       /* seg[s], the segment's start */
    }
    h[n + ns] = n;                                 /* seg[nseg], the end */
    for (int64_t s = 0; s < ns; s++)
        h[n + ns + 1 + s] = pairs[h[n + s]].idx;   /* seg_row */
    *nseg = ns;
    if ((d = (int64_t *)ndl_cuda_alloc((size_t)(n + 2 * ns + 1) * sizeof(int64_t))) == NULL) {
        *st = NDL_ENOMEM_DEVICE;
        goto fail;
    }
    /* asynchronous (Note [Staged uploads], cuda_memory.cu) */
    if ((*st = ndl_cuda_upload(d, h, (size_t)(n + 2 * ns + 1) * sizeof(int64_t), NULL, 0)) !=
        NDL_OK) {
        ndl_cuda_free(d);
        d = NULL;
    }
fail:
    free(pairs);
    free(h);
    return d;
}

int ndl_cuda_take_rows(ndl_dtype dt, const void *src, int64_t rows_src, int64_t row,
                       const int64_t *idx, int64_t n, void *dst)
{
    int st;
    if (n < 0 || row < 0 || rows_src < 0)
        return NDL_EINVAL;
    if (row == 0) /* nothing to move, but a bad index is still one */
        return indices_ok(idx, n, rows_src) ? NDL_OK : NDL_EINVAL;
    int64_t *d = device_indices(idx, n, rows_src, &st);
    if (d == NULL) /* n = 0 or a bad index */
        return st;
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
    int st = NDL_OK;
    int64_t *d = NULL, nseg = 0;
    if (n < 0 || row < 0 || rows_out < 0)
        return NDL_EINVAL;
    if (!indices_ok(idx, n, rows_out)) /* before anything is written */
        return NDL_EINVAL;
    if (row == 0 || rows_out == 0) /* nothing to write (rows_out = 0: then n = 0) */
        return NDL_OK;
    if (n > 0 && (d = device_plan(idx, n, &nseg, &st)) == NULL)
        return st;
    /* all-zero bits are +0.0, the composite path's fill; on the legacy
     * stream, so ordered before the kernel as every launch here is */
    cudaError_t err = cudaMemsetAsync(out, 0, (size_t)rows_out * (size_t)row * ndl_itemsize(dt), 0);
    if (err != cudaSuccess)
        st = ndl_cuda_fail(err, __FILE__, __LINE__, "cudaMemsetAsync(out)");
    if (st == NDL_OK && d != NULL) { /* d NULL: n = 0, zeros only */
        NDL_CU_DTYPE(dt, T,
                     NDL_LAUNCH(ndl_cu_blocks(nseg * row), NDL_CU_THREADS,
                                scatter_add_rows_kernel<T>)((const T *)g, row, d, n, nseg,
                                                            (T *)out));
        st = NDL_CUDA_LAUNCH_STATUS("scatter_add_rows_kernel<<<...>>>");
    }
    if (d != NULL)
        ndl_cuda_free(d); /* stream-ordered: reused only after this kernel */
    return st;
}
