/* cuda_copy.cu: fill and the strided, dtype-converting copy (compact,
 * setitem, astype). One thread per element in a grid-stride loop. */
#include "cuda_common.cuh"

// dst is the view ld (any strides), n = prod(ld.shape)
template <typename T> __global__ void fill_kernel(T *dst, ndl_layout ld, int64_t n, T value)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[ndl_cu_offset(ld, i)] = value;
}

// dst is the view ld, src the view ls, both of one shape; n elements
template <typename D, typename S>
__global__ void copy_kernel(D *dst, ndl_layout ld, const S *src, ndl_layout ls, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        dst[ndl_cu_offset(ld, i)] = (D)src[ndl_cu_offset(ls, i)];
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
                 fill_kernel<T><<<ndl_cu_blocks(n), NDL_CU_THREADS>>>((T *)dst, *ld, n,
                                                                      (T)value));
    NDL_CUDA_LAUNCHED();
    return NDL_OK;
}

template <typename D, typename S>
static void launch_copy(void *dst, const ndl_layout *ld, const void *src, const ndl_layout *ls,
                        int64_t n)
{
    if (ndl_cu_contiguous(ld) && ndl_cu_contiguous(ls))
        copy_flat_kernel<D, S><<<ndl_cu_blocks(n), NDL_CU_THREADS>>>(
            (D *)dst + ld->offset, (const S *)src + ls->offset, n);
    else
        copy_kernel<D, S><<<ndl_cu_blocks(n), NDL_CU_THREADS>>>((D *)dst, *ld, (const S *)src,
                                                                 *ls, n);
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
