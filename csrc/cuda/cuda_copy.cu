/* cuda_copy.cu: fill and the strided, dtype-converting copy (compact,
 * setitem, astype). One thread per element in a grid-stride loop. The two
 * sides' axes are merged first (Note [Merged axes], cuda_common.cuh); then
 * a contiguous side takes a flat index instead of the per-axis divisions
 * of ndl_cu_offset, and two contiguous sides the flat kernel. */
#include "cuda_common.cuh"

// dst is the view ld (any strides; flat: contiguous), n = prod(ld.shape)
template <typename T>
__global__ void fill_kernel(T *dst, ndl_layout ld, int64_t n, T value, int flat)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[flat ? ld.offset + i : ndl_cu_offset(ld, i)] = value;
}

// dst is the view ld, src the view ls, both of one shape; n elements; flat_d
// (flat_s): ld (ls) is contiguous, element i at offset + i (compact: dst
// contiguous, src strided; setitem of a compact value: the other way round)
template <typename D, typename S>
__global__ void copy_kernel(D *dst, ndl_layout ld, const S *src, ndl_layout ls, int64_t n,
                            int flat_d, int flat_s)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[flat_d ? ld.offset + i : ndl_cu_offset(ld, i)] =
            (D)src[flat_s ? ls.offset + i : ndl_cu_offset(ls, i)];
}

// dst, src contiguous, n elements
template <typename D, typename S>
__global__ void copy_flat_kernel(D *dst, const S *src, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[i] = (D)src[i];
}

int ndl_cuda_fill(ndl_dtype dt, void *dst, const ndl_layout *ld, double value)
{
    int64_t n = ndl_cu_size(ld);
    ndl_layout l = *ld;
    if (n == 0)
        return NDL_OK;
    ndl_cu_merge_axes(&l, 1);
    NDL_CU_DTYPE(dt, T,
                 NDL_LAUNCH(ndl_cu_blocks(n), NDL_CU_THREADS, fill_kernel<T>)(
                     (T *)dst, l, n, (T)value, ndl_cu_contiguous(&l)));
    NDL_CUDA_LAUNCHED();
    return NDL_OK;
}

// ld, ls merged (Note [Merged axes]), n > 0 elements
template <typename D, typename S>
static void launch_copy(void *dst, const ndl_layout *ld, const void *src, const ndl_layout *ls,
                        int64_t n)
{
    const int flat_d = ndl_cu_contiguous(ld), flat_s = ndl_cu_contiguous(ls);
    if (flat_d && flat_s)
        NDL_LAUNCH(ndl_cu_blocks(n), NDL_CU_THREADS, copy_flat_kernel<D, S>)(
            (D *)dst + ld->offset, (const S *)src + ls->offset, n);
    else
        NDL_LAUNCH(ndl_cu_blocks(n), NDL_CU_THREADS, copy_kernel<D, S>)(
            (D *)dst, *ld, (const S *)src, *ls, n, flat_d, flat_s);
}

int ndl_cuda_copy(ndl_dtype dst_dt, void *dst, const ndl_layout *ld, ndl_dtype src_dt,
                  const void *src, const ndl_layout *ls)
{
    int64_t n = ndl_cu_size(ld);
    ndl_layout l[2] = {*ld, *ls};
    if (ld->ndim != ls->ndim || n != ndl_cu_size(ls))
        return NDL_EINVAL;
    if (n == 0)
        return NDL_OK;
    ndl_cu_merge_axes(l, 2);
    if (dst_dt == NDL_FLOAT64)
        src_dt == NDL_FLOAT64 ? launch_copy<double, double>(dst, &l[0], src, &l[1], n)
                              : launch_copy<double, float>(dst, &l[0], src, &l[1], n);
    else
        src_dt == NDL_FLOAT64 ? launch_copy<float, double>(dst, &l[0], src, &l[1], n)
                              : launch_copy<float, float>(dst, &l[0], src, &l[1], n);
    NDL_CUDA_LAUNCHED();
    return NDL_OK;
}

/* For tests (needle._cuda._merged_offsets), host only: merges l[0..n) as the
 * ewise and copy slots do (Note [Merged axes], cuda_common.cuh) and writes
 * ndl_cu_offset of element i of merged layout k to offsets[k * count + i],
 * count = prod(shape) elements. */
extern "C" void ndl_cuda_merged_offsets(int n, ndl_layout *l, int64_t count, int64_t *offsets)
{
    ndl_cu_merge_axes(l, n);
    for (int k = 0; k < n; k++)
        for (int64_t i = 0; i < count; i++)
            offsets[k * count + i] = ndl_cu_offset(l[k], i);
}
