/* cuda_copy.cu: fill and the strided, dtype-converting copy (compact,
 * setitem, astype). One thread per element in a grid-stride loop; a
 * contiguous side takes a flat index instead of the per-axis divisions of
 * ndl_cu_offset. */
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
    if (n == 0)
        return NDL_OK;
    NDL_CU_DTYPE(dt, T,
                 fill_kernel<T><<<ndl_cu_blocks(n), NDL_CU_THREADS>>>(
                     (T *)dst, *ld, n, (T)value, ndl_cu_contiguous(ld)));
    NDL_CUDA_LAUNCHED();
    return NDL_OK;
}

template <typename D, typename S>
static void launch_copy(void *dst, const ndl_layout *ld, const void *src, const ndl_layout *ls,
                        int64_t n)
{
    const int flat_d = ndl_cu_contiguous(ld), flat_s = ndl_cu_contiguous(ls);
    if (flat_d && flat_s)
        copy_flat_kernel<D, S><<<ndl_cu_blocks(n), NDL_CU_THREADS>>>(
            (D *)dst + ld->offset, (const S *)src + ls->offset, n);
    else
        copy_kernel<D, S><<<ndl_cu_blocks(n), NDL_CU_THREADS>>>((D *)dst, *ld, (const S *)src,
                                                                 *ls, n, flat_d, flat_s);
}

int ndl_cuda_copy(ndl_dtype dst_dt, void *dst, const ndl_layout *ld, ndl_dtype src_dt,
                  const void *src, const ndl_layout *ls)
{
    int64_t n = ndl_cu_size(ld);
    if (ld->ndim != ls->ndim || n != ndl_cu_size(ls))
        return NDL_EINVAL;
    if (n == 0)
        return NDL_OK;
    if (dst_dt == NDL_FLOAT64)
        src_dt == NDL_FLOAT64 ? launch_copy<double, double>(dst, ld, src, ls, n)
                              : launch_copy<double, float>(dst, ld, src, ls, n);
    else
        src_dt == NDL_FLOAT64 ? launch_copy<float, double>(dst, ld, src, ls, n)
                              : launch_copy<float, float>(dst, ld, src, ls, n);
    NDL_CUDA_LAUNCHED();
    return NDL_OK;
}
