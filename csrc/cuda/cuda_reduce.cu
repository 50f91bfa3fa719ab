/* cuda_reduce.cu: SUM and MAX over any set of axes.
 *
 * The layout is split in two: the kept axes (in order) index the outputs,
 * the reduced axes the elements folded into each. One block per output (a
 * grid-stride loop over outputs): each thread folds a strided share, then
 * a warp-shuffle tree folds the 32 lanes, and shared memory the 8 warps.
 * MAX combines with ndl_maximum (NaN propagates, as on the CPU). */
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

// a: element (o, r) at a[ndl_cu_offset(kept, o) + ndl_cu_offset(red, r)];
// kept has nout elements (offset = a's offset), red nred (offset 0); out is (nout)
template <typename R, typename T>
__global__ void reduce_kernel(const T *a, ndl_layout kept, ndl_layout red, int64_t nout,
                              int64_t nred, T *out)
{
    __shared__ T partial[NDL_CU_THREADS / 32];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    for (int64_t o = blockIdx.x; o < nout; o += gridDim.x) {
        const T *base = a + ndl_cu_offset(kept, o);
        T acc = R::identity();
        for (int64_t r = threadIdx.x; r < nred; r += blockDim.x)
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
                out[o] = acc;
        }
        __syncthreads(); /* partial is reused by the next output */
    }
}

template <typename T>
static void launch_reduce(ndl_redop op, const T *a, const ndl_layout *kept,
                          const ndl_layout *red, int64_t nout, int64_t nred, T *out)
{
    unsigned blocks = (unsigned)(nout < 65536 ? nout : 65536);
    if (op == NDL_RED_MAX)
        reduce_kernel<RedMax<T>, T><<<blocks, NDL_CU_THREADS>>>(a, *kept, *red, nout, nred, out);
    else
        reduce_kernel<RedSum<T>, T><<<blocks, NDL_CU_THREADS>>>(a, *kept, *red, nout, nred, out);
}

int ndl_cuda_reduce(ndl_redop op, ndl_dtype dt, const void *a, const ndl_layout *la,
                    uint64_t axes_mask, void *out)
{
    ndl_layout kept = {}, red = {};
    kept.offset = la->offset;
    for (int d = 0; d < la->ndim; d++) {
        ndl_layout *to = (axes_mask >> d) & 1 ? &red : &kept;
        to->shape[to->ndim] = la->shape[d];
        to->strides[to->ndim] = la->strides[d];
        to->ndim++;
    }
    if ((op != NDL_RED_SUM && op != NDL_RED_MAX) || red.ndim == 0 || (axes_mask >> la->ndim))
        return NDL_EINVAL;
    int64_t nout = ndl_cu_size(&kept), nred = ndl_cu_size(&red);
    if (nout == 0)
        return NDL_OK;
    if (dt == NDL_FLOAT64)
        launch_reduce<double>(op, (const double *)a, &kept, &red, nout, nred, (double *)out);
    else
        launch_reduce<float>(op, (const float *)a, &kept, &red, nout, nred, (float *)out);
    NDL_CUDA_LAUNCHED();
    return NDL_OK;
}
