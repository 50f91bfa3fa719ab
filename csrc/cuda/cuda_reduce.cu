/* cuda_reduce.cu: SUM and MAX over any set of axes.
 *
 * The layout is split in two: the kept axes (in order) index the outputs,
 * the reduced axes the elements folded into each (Note [Reduction paths]).
 * MAX combines with ndl_maximum (NaN propagates, as on the CPU).
 *
 * Note [Reduction paths]
 *   The host splits a's layout into kept (nout outputs) and red (nred
 *   elements each), merges the axes of each list that are contiguous with
 *   one another (fewer divisions per element; a single reduced axis then
 *   costs a multiply), and picks a path from the strides:
 *   - columns (reduce_cols_kernel): when the kept innermost axis is at
 *     least as close in memory as the reduced innermost one (sum over axis
 *     0 of (rows, n): the Linear bias gradient), or when nred is short.
 *     Thread o owns output o and folds its elements in increasing r, so
 *     the threads of a warp read consecutive outputs (coalesced along the
 *     kept inner axis).
 *   - blocks (reduce_block_kernel): otherwise (the reduced axis innermost
 *     and long, a full reduction). A block owns an output: thread t folds
 *     r = t, t + 256, ... in order, a warp-shuffle tree folds the 32 lanes,
 *     warp 0 the 8 warp results in warp order.
 *   Either path splits the reduced range into `chunks` consecutive ranges
 *   of `len` elements (grid y = the chunk) when there are too few outputs
 *   to fill the GPU: each (output, chunk) writes a partial into a scratch
 *   (chunks, nout), and reduce_fold_kernel folds each output's partials in
 *   chunk order. chunks and len are functions of (path, nout, nred) only
 *   (red_split), never of the GPU or the schedule, and every fold above has
 *   a fixed order: the same bits on every run and every GPU. The order is
 *   not the CPU's, so sums agree with the CPU within float summation
 *   rounding (a few ulps of the sum of |terms| times log2 of the extent),
 *   not bit for bit; MAX is exact (order does not matter, NaN included).
 *   Sizes: every index is int64; outputs are a grid-stride loop in x (at
 *   most 65535 blocks), chunks at most 65535 (the grid's y limit: len
 *   grows instead), so any nout and nred up to 2^63 are covered. nout = 0
 *   launches nothing; nred = 0 writes the identity (0 for SUM; MAX over an
 *   empty axis is refused by the array layer before the slot). The scratch
 *   (chunks * nout < 2 * RED_COL_THREADS or RED_BLOCKS + nout elements)
 *   comes from the caching allocator and goes back on every path. */
#include "cuda_common.cuh"
#include "scalar_ops.h"

template <typename T> struct RedSum {
    __device__ static T identity() { return (T)0; }
    __device__ static T combine(T a, T b) { return a + b; }
};
template <typename T> struct RedMax {
    __device__ static T identity() { return (T)-INFINITY; }
    __device__ static T combine(T a, T b)
    {
        if constexpr (sizeof(T) == 8)
            return ndl_maximum_f64(a, b);
        else
            return ndl_maximum_f32(a, b);
    }
};

/* Offset of reduced element r (red has offset 0): no division when one axis. */
__device__ __forceinline__ int64_t red_offset(const ndl_layout &red, int64_t r)
{
    if (red.ndim == 1)
        return r * red.strides[0];
    return red.ndim == 0 ? 0 : ndl_cu_offset(red, r);
}

// a: element (o, r) at a[ndl_cu_offset(kept, o) + red_offset(red, r)]; chunk
// k = blockIdx.y folds r in [k * len, min(nred, (k + 1) * len)); dst is (gridDim.y, nout)
template <typename R, typename T>
__global__ void __launch_bounds__(NDL_CU_THREADS)
    reduce_cols_kernel(const T *a, ndl_layout kept, ndl_layout red, int64_t nout, int64_t nred,
                       int64_t len, T *dst)
{
    const int64_t k = blockIdx.y, r0 = k * len; /* r0 < nred, or 0 when nred = 0 */
    const int64_t r1 = nred - r0 < len ? nred : r0 + len;
    for (int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; o < nout;
         o += (int64_t)gridDim.x * blockDim.x) {
        const T *base = a + ndl_cu_offset(kept, o);
        T acc = R::identity();
        for (int64_t r = r0; r < r1; r++)
            acc = R::combine(acc, base[red_offset(red, r)]);
        dst[k * nout + o] = acc;
    }
}

// as reduce_cols_kernel, one block per (output, chunk)
template <typename R, typename T>
__global__ void __launch_bounds__(NDL_CU_THREADS)
    reduce_block_kernel(const T *a, ndl_layout kept, ndl_layout red, int64_t nout, int64_t nred,
                        int64_t len, T *dst)
{
    __shared__ T partial[NDL_CU_THREADS / 32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int64_t k = blockIdx.y, r0 = k * len;
    const int64_t r1 = nred - r0 < len ? nred : r0 + len;
    for (int64_t o = blockIdx.x; o < nout; o += gridDim.x) { /* block-uniform */
        const T *base = a + ndl_cu_offset(kept, o);
        T acc = R::identity();
        for (int64_t r = r0 + threadIdx.x; r < r1; r += blockDim.x)
            acc = R::combine(acc, base[red_offset(red, r)]);
        for (int s = 16; s > 0; s >>= 1)
            acc = R::combine(acc, __shfl_down_sync(0xffffffffu, acc, s));
        if (lane == 0)
            partial[warp] = acc;
        __syncthreads();
        if (warp == 0) {
            acc = lane < NDL_CU_THREADS / 32 ? partial[lane] : R::identity();
            for (int s = 16; s > 0; s >>= 1)
                acc = R::combine(acc, __shfl_down_sync(0xffffffffu, acc, s));
            if (lane == 0)
                dst[k * nout + o] = acc;
        }
        __syncthreads(); /* partial is reused by the next output */
    }
}

// part is (chunks, nout): out[o] = the fold of part[0][o], part[1][o], ... in order
template <typename R, typename T>
__global__ void __launch_bounds__(NDL_CU_THREADS)
    reduce_fold_kernel(const T *part, int64_t chunks, int64_t nout, T *out)
{
    for (int64_t o = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; o < nout;
         o += (int64_t)gridDim.x * blockDim.x) {
        T acc = part[o];
        for (int64_t k = 1; k < chunks; k++)
            acc = R::combine(acc, part[k * nout + o]);
        out[o] = acc;
    }
}

#define RED_COL_THREADS ((int64_t)1 << 17) /* outputs x chunks to fill a GPU (columns) */
#define RED_COL_MIN 64                     /* elements a thread folds, at least */
#define RED_BLOCKS 1024                    /* outputs x chunks to fill a GPU (blocks) */
#define RED_BLOCK_MIN 4096                 /* elements a block folds, at least */
#define RED_SHORT 64                       /* a shorter nred takes the columns path */
#define RED_MAX_CHUNKS 65535               /* the grid's y limit */
#define RED_MAX_X 65535                    /* blocks in x; the loops cover the rest */

static inline int64_t cdiv(int64_t a, int64_t b) { return a / b + (a % b != 0); }

/* The chunking of Note [Reduction paths]: *chunks ranges of *len elements
 * (the last may be shorter, none empty), from the shape alone; fill is the
 * outputs x chunks that fill a GPU, least the elements a chunk folds. */
static void red_split(int64_t nout, int64_t nred, int64_t fill, int64_t least, int64_t *chunks,
                      int64_t *len)
{
    int64_t c = 1;
    if (nout < fill && nred > least) {
        const int64_t want = cdiv(fill, nout), most = cdiv(nred, least);
        c = want < most ? want : most;
    }
    int64_t l = nred < 1 ? 1 : cdiv(nred, c);
    if (l < cdiv(nred, RED_MAX_CHUNKS))
        l = cdiv(nred, RED_MAX_CHUNKS);
    *len = l;
    *chunks = nred < 1 ? 1 : cdiv(nred, l);
}

/* Merges axes d, d + 1 of l where d's stride steps over all of d + 1 (the
 * offsets of l's elements, in order, are unchanged); drops size-1 axes. */
static void red_collapse(ndl_layout *l)
{
    int nd = 0;
    for (int d = 0; d < l->ndim; d++) {
        if (l->shape[d] == 1)
            continue;
        if (nd > 0 && l->strides[nd - 1] == l->shape[d] * l->strides[d]) {
            l->shape[nd - 1] *= l->shape[d];
            l->strides[nd - 1] = l->strides[d];
        } else {
            l->shape[nd] = l->shape[d];
            l->strides[nd] = l->strides[d];
            nd++;
        }
    }
    l->ndim = nd;
}

static inline int64_t iabs64(int64_t v) { return v < 0 ? -v : v; }

template <typename R, typename T>
static int launch_reduce(const T *a, const ndl_layout *kept, const ndl_layout *red, int64_t nout,
                         int64_t nred, T *out)
{
    /* columns when outputs are the closer axis in memory, or each is short */
    const int cols = nred < RED_SHORT || red->ndim == 0 ||
                     (kept->ndim > 0 && iabs64(kept->strides[kept->ndim - 1]) <=
                                            iabs64(red->strides[red->ndim - 1]));
    int64_t chunks, len;
    T *part = NULL;
    int st;
    if (cols)
        red_split(nout, nred, RED_COL_THREADS, RED_COL_MIN, &chunks, &len);
    else
        red_split(nout, nred, RED_BLOCKS, RED_BLOCK_MIN, &chunks, &len);
    if (chunks > 1 && (part = (T *)ndl_cuda_alloc(sizeof(T) * (size_t)chunks *
                                                   (size_t)nout)) == NULL)
        return NDL_ENOMEM;
    T *dst = part != NULL ? part : out;
    if (cols) {
        const int64_t b = cdiv(nout, NDL_CU_THREADS);
        const dim3 grid((unsigned)(b < RED_MAX_X ? b : RED_MAX_X), (unsigned)chunks);
        reduce_cols_kernel<R, T><<<grid, NDL_CU_THREADS>>>(a, *kept, *red, nout, nred, len, dst);
        st = NDL_CUDA_LAUNCH_STATUS("reduce_cols_kernel<<<...>>>");
    } else {
        const dim3 grid((unsigned)(nout < RED_MAX_X ? nout : RED_MAX_X), (unsigned)chunks);
        reduce_block_kernel<R, T><<<grid, NDL_CU_THREADS>>>(a, *kept, *red, nout, nred, len,
                                                             dst);
        st = NDL_CUDA_LAUNCH_STATUS("reduce_block_kernel<<<...>>>");
    }
    if (st == NDL_OK && part != NULL) {
        reduce_fold_kernel<R, T><<<ndl_cu_blocks(nout), NDL_CU_THREADS>>>(part, chunks, nout,
                                                                          out);
        st = NDL_CUDA_LAUNCH_STATUS("reduce_fold_kernel<<<...>>>");
    }
    ndl_cuda_free(part); /* NULL-safe; stream-ordered: reused only after these kernels */
    return st;
}

int ndl_cuda_reduce(ndl_redop op, ndl_dtype dt, const void *a, const ndl_layout *la,
                    uint64_t axes_mask, void *out)
{
    ndl_layout kept = {}, red = {};
    if ((op != NDL_RED_SUM && op != NDL_RED_MAX) || la->ndim < 0 || la->ndim > NDL_MAX_DIMS ||
        (la->ndim < 64 && (axes_mask >> la->ndim)))
        return NDL_EINVAL;
    kept.offset = la->offset;
    for (int d = 0; d < la->ndim; d++) {
        ndl_layout *to = (axes_mask >> d) & 1 ? &red : &kept;
        to->shape[to->ndim] = la->shape[d];
        to->strides[to->ndim] = la->strides[d];
        to->ndim++;
    }
    if (red.ndim == 0)
        return NDL_EINVAL;
    const int64_t nout = ndl_cu_size(&kept), nred = ndl_cu_size(&red);
    if (nout == 0)
        return NDL_OK;
    red_collapse(&kept);
    red_collapse(&red);
    if (dt == NDL_FLOAT64)
        return op == NDL_RED_MAX
                   ? launch_reduce<RedMax<double>, double>((const double *)a, &kept, &red, nout,
                                                           nred, (double *)out)
                   : launch_reduce<RedSum<double>, double>((const double *)a, &kept, &red, nout,
                                                           nred, (double *)out);
    return op == NDL_RED_MAX
               ? launch_reduce<RedMax<float>, float>((const float *)a, &kept, &red, nout, nred,
                                                     (float *)out)
               : launch_reduce<RedSum<float>, float>((const float *)a, &kept, &red, nout, nred,
                                                     (float *)out);
}
