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
 *   - warps (reduce_warp_kernel): the reduced axis innermost and short
 *     (RED_SHORT <= nred <= RED_WARP_MAX) with many outputs (nout >=
 *     RED_WARP_OUTPUTS): the rows of softmax, LayerNorm and the losses,
 *     e.g. (65536, 128) over axis 1. A warp owns an output (a block, 8 of
 *     them): lane l folds r = l, l + 32, ... in order, then a shuffle tree
 *     (offsets 16, 8, 4, 2, 1) folds the 32 lanes into lane 0, which
 *     writes it. A 256-thread block per output left most of its threads
 *     idle there (128 of 256 for nred = 128) and paid a __syncthreads and
 *     a shared-memory pass per output; a warp reads 32 consecutive
 *     elements per step and needs neither. Never chunked (nred is short).
 *   - blocks (reduce_block_kernel): otherwise (the reduced axis innermost
 *     and long, few outputs, a full reduction). A block owns an output:
 *     thread t folds r = t, t + 256, ... in order, a warp-shuffle tree
 *     folds the 32 lanes, warp 0 the 8 warp results in warp order.
 *   The columns and blocks paths split the reduced range into `chunks`
 *   consecutive ranges of `len` elements (grid y = the chunk) when there
 *   are too few outputs to fill the GPU: each (output, chunk) writes a
 *   partial into a scratch (chunks, nout), and reduce_fold_kernel folds
 *   each output's partials in chunk order. The path, chunks and len are
 *   functions of the shape and strides only (red_split), never of the GPU
 *   or the schedule, and every fold above has a fixed order: the same bits
 *   on every run and every GPU. The order is not the CPU's, so sums agree
 *   with the CPU within float summation rounding (a few ulps of the sum of
 *   |terms| times log2 of the extent), not bit for bit; MAX is exact
 *   (order does not matter, NaN included).
 *   Sizes: every index is int64; outputs are a grid-stride loop in x (at
 *   most 65535 blocks; warps: o steps by 8 x the blocks, warp-uniform, so
 *   every shuffle runs with all 32 lanes), chunks at most 65535 (the
 *   grid's y limit: len grows instead), so any nout and nred up to 2^63
 *   are covered. nout = 0 launches nothing; nred = 0 writes the identity
 *   (0 for SUM; MAX over an empty axis is refused by the array layer
 *   before the slot). The scratch (chunks * nout < 2 * RED_COL_THREADS or
 *   RED_BLOCKS + nout elements) comes from the caching allocator and goes
 *   back on every path; the warps path needs none. */
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

// a: element (o, r) at a[ndl_cu_offset(kept, o) + ndl_cu_offset(red, r)]; chunk
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
            acc = R::combine(acc, base[ndl_cu_offset(red, r)]);
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
            acc = R::combine(acc, base[ndl_cu_offset(red, r)]);
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

// a: element (o, r) as above; nred <= RED_WARP_MAX; out is (nout). Warp w
// of block b owns outputs o = 8b + w, o + 8 * gridDim.x, ... (the loop is
// warp-uniform: every shuffle runs with the whole warp); lane l folds
// r = l, l + 32, ... in order, the shuffle tree folds the lanes into lane 0
template <typename R, typename T>
__global__ void __launch_bounds__(NDL_CU_THREADS)
    reduce_warp_kernel(const T *a, ndl_layout kept, ndl_layout red, int64_t nout, int64_t nred,
                       T *out)
{
    const int lane = threadIdx.x % 32;
    const int64_t per_block = blockDim.x / 32, warps = (int64_t)gridDim.x * per_block;
    for (int64_t o = blockIdx.x * per_block + threadIdx.x / 32; o < nout; o += warps) {
        const T *base = a + ndl_cu_offset(kept, o);
        T acc = R::identity();
#pragma unroll 4 /* the loads issue ahead; the fold keeps its order */
        for (int64_t r = lane; r < nred; r += 32)
            acc = R::combine(acc, base[ndl_cu_offset(red, r)]);
        for (int s = 16; s > 0; s >>= 1)
            acc = R::combine(acc, __shfl_down_sync(0xffffffffu, acc, s));
        if (lane == 0)
            out[o] = acc;
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
#define RED_WARP_MAX 1024                  /* the warps path: nred at most this, */
#define RED_WARP_OUTPUTS 1024              /* and at least this many outputs */
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
    const int64_t most_chunks = ndl_cu_grid_limit(RED_MAX_CHUNKS);
    if (l < cdiv(nred, most_chunks))
        l = cdiv(nred, most_chunks);
    *len = l;
    *chunks = nred < 1 ? 1 : cdiv(nred, l);
}

static inline int64_t iabs64(int64_t v) { return v < 0 ? -v : v; }

enum { RED_PATH_COLS, RED_PATH_WARPS, RED_PATH_BLOCKS };

/* The path of Note [Reduction paths] for merged kept and red layouts, and
 * its chunking (1 chunk of nred for the warps path). */
static int red_plan(const ndl_layout *kept, const ndl_layout *red, int64_t nout, int64_t nred,
                    int64_t *chunks, int64_t *len)
{
    /* columns when outputs are the closer axis in memory, or each is short */
    const int cols = nred < RED_SHORT || red->ndim == 0 ||
                     (kept->ndim > 0 && iabs64(kept->strides[kept->ndim - 1]) <=
                                            iabs64(red->strides[red->ndim - 1]));
    if (cols) {
        red_split(nout, nred, RED_COL_THREADS, RED_COL_MIN, chunks, len);
        return RED_PATH_COLS;
    }
    if (nred <= RED_WARP_MAX && nout >= RED_WARP_OUTPUTS) { /* short rows, many of them */
        *chunks = 1;
        *len = nred;
        return RED_PATH_WARPS;
    }
    red_split(nout, nred, RED_BLOCKS, RED_BLOCK_MIN, chunks, len);
    return RED_PATH_BLOCKS;
}

template <typename R, typename T>
static int launch_reduce(const T *a, const ndl_layout *kept, const ndl_layout *red, int64_t nout,
                         int64_t nred, T *out)
{
    int64_t chunks, len;
    const int path = red_plan(kept, red, nout, nred, &chunks, &len);
    const int cols = path == RED_PATH_COLS;
    T *part = NULL;
    int st;
    if (path == RED_PATH_WARPS) { /* 8 outputs a block; no chunks, no scratch */
        const unsigned blocks = ndl_cu_grid(cdiv(nout, NDL_CU_THREADS / 32), RED_MAX_X);
        NDL_LAUNCH(blocks, NDL_CU_THREADS, reduce_warp_kernel<R, T>)(
            a, *kept, *red, nout, nred, out);
        return NDL_CUDA_LAUNCH_STATUS("reduce_warp_kernel<<<...>>>");
    }
    if (chunks > 1 && (part = (T *)ndl_cuda_alloc(sizeof(T) * (size_t)chunks *
                                                   (size_t)nout)) == NULL)
        return NDL_ENOMEM_DEVICE;
    T *dst = part != NULL ? part : out;
    if (cols) {
        const dim3 grid(ndl_cu_grid(cdiv(nout, NDL_CU_THREADS), RED_MAX_X), (unsigned)chunks);
        NDL_LAUNCH(grid, NDL_CU_THREADS, reduce_cols_kernel<R, T>)(
            a, *kept, *red, nout, nred, len, dst);
        st = NDL_CUDA_LAUNCH_STATUS("reduce_cols_kernel<<<...>>>");
    } else {
        const dim3 grid(ndl_cu_grid(nout, RED_MAX_X), (unsigned)chunks);
        NDL_LAUNCH(grid, NDL_CU_THREADS, reduce_block_kernel<R, T>)(
            a, *kept, *red, nout, nred, len, dst);
        st = NDL_CUDA_LAUNCH_STATUS("reduce_block_kernel<<<...>>>");
    }
    if (st == NDL_OK && part != NULL) {
        NDL_LAUNCH(ndl_cu_blocks(nout), NDL_CU_THREADS, reduce_fold_kernel<R, T>)(
            part, chunks, nout, out);
        st = NDL_CUDA_LAUNCH_STATUS("reduce_fold_kernel<<<...>>>");
    }
    ndl_cuda_free(part); /* NULL-safe; stream-ordered: reused only after these kernels */
    return st;
}

/* la split into kept (offset la's) and red (offset 0) by axes_mask, each
 * merged (Note [Merged axes], cuda_common.cuh); NDL_EINVAL when la or the
 * mask is not a reduction's. */
static int red_layouts(const ndl_layout *la, uint64_t axes_mask, ndl_layout *kept,
                       ndl_layout *red, int64_t *nout, int64_t *nred)
{
    *kept = ndl_layout{};
    *red = ndl_layout{};
    if (la->ndim < 0 || la->ndim > NDL_MAX_DIMS || (la->ndim < 64 && (axes_mask >> la->ndim)))
        return NDL_EINVAL;
    kept->offset = la->offset;
    for (int d = 0; d < la->ndim; d++) {
        ndl_layout *to = (axes_mask >> d) & 1 ? red : kept;
        to->shape[to->ndim] = la->shape[d];
        to->strides[to->ndim] = la->strides[d];
        to->ndim++;
    }
    if (red->ndim == 0)
        return NDL_EINVAL;
    *nout = ndl_cu_size(kept);
    *nred = ndl_cu_size(red);
    ndl_cu_merge_axes(kept, 1);
    ndl_cu_merge_axes(red, 1);
    return NDL_OK;
}

/* For tests (needle._cuda._reduce_plan), host only: the path the reduction
 * of la over axes_mask takes (0 columns, 1 warps, 2 blocks; -1 for none:
 * no outputs; -2 for a bad layout or mask) and its chunking. */
extern "C" int ndl_cuda_reduce_plan(const ndl_layout *la, uint64_t axes_mask, int64_t *chunks,
                                    int64_t *len)
{
    ndl_layout kept, red;
    int64_t nout, nred;
    if (red_layouts(la, axes_mask, &kept, &red, &nout, &nred) != NDL_OK)
        return -2;
    return nout == 0 ? -1 : red_plan(&kept, &red, nout, nred, chunks, len);
}

int ndl_cuda_reduce(ndl_redop op, ndl_dtype dt, const void *a, const ndl_layout *la,
                    uint64_t axes_mask, void *out)
{
    ndl_layout kept, red;
    int64_t nout, nred;
    if ((op != NDL_RED_SUM && op != NDL_RED_MAX) ||
        red_layouts(la, axes_mask, &kept, &red, &nout, &nred) != NDL_OK)
        return NDL_EINVAL;
    if (nout == 0)
        return NDL_OK;
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
