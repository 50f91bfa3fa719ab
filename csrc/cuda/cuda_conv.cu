/* cuda_conv.cu: the convolution's data movement (pad, flip, dilate, im2col),
 * one thread per output element in a grid-stride loop; each thread finds
 * its source element (or a zero) from its output coordinates. Contracts as
 * the slots of backend.h; pure data movement, so results are exact. */
#include "cuda_common.cuh"

struct Dims {
    int64_t v[NDL_MAX_DIMS];
};

// a is the view la; out is compact with shape la.shape + lo + hi (n elements)
template <typename T>
__global__ void pad_kernel(const T *a, ndl_layout la, Dims lo, Dims oshape, T *out, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t rest = i, off = la.offset;
        bool inside = true;
        for (int d = la.ndim - 1; d >= 0; --d) {
            int64_t q = rest / oshape.v[d], c = rest - q * oshape.v[d] - lo.v[d];
            rest = q;
            inside = inside && c >= 0 && c < la.shape[d];
            off += c * la.strides[d];
        }
        out[i] = inside ? a[off] : (T)0;
    }
}

// a is the view la; out compact, a's shape, axes in mask reversed (n elements)
template <typename T>
__global__ void flip_kernel(const T *a, ndl_layout la, uint64_t mask, T *out, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t rest = i, off = la.offset;
        for (int d = la.ndim - 1; d >= 0; --d) {
            int64_t q = rest / la.shape[d], c = rest - q * la.shape[d];
            rest = q;
            off += ((mask >> d) & 1 ? la.shape[d] - 1 - c : c) * la.strides[d];
        }
        out[i] = a[off];
    }
}

// a is the view la; out compact with shape la.shape * (d+1) on masked axes
template <typename T>
__global__ void dilate_kernel(const T *a, ndl_layout la, uint64_t mask, int64_t step,
                              Dims oshape, T *out, int64_t n)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t rest = i, off = la.offset;
        bool hit = true;
        for (int d = la.ndim - 1; d >= 0; --d) {
            int64_t q = rest / oshape.v[d], c = rest - q * oshape.v[d];
            rest = q;
            if ((mask >> d) & 1) {
                hit = hit && c % step == 0;
                c /= step;
            }
            off += c * la.strides[d];
        }
        out[i] = hit ? a[off] : (T)0;
    }
}

// a is (N, H, W, C) as the view la; out is (nrows, k*k*C) compact, rows from
// row0 of the (N*Ho*Wo, k*k*C) im2col matrix
template <typename T>
__global__ void im2col_kernel(const T *a, ndl_layout la, int64_t k, int64_t s, int64_t ho,
                              int64_t wo, int64_t row0, int64_t nrows, T *out)
{
    const int64_t C = la.shape[3], cols = k * k * C, n = nrows * cols;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n;
         e += (int64_t)gridDim.x * blockDim.x) {
        int64_t r = row0 + e / cols, col = e % cols;
        int64_t x = r % wo, y = (r / wo) % ho, b = r / (wo * ho);
        int64_t c = col % C, j = (col / C) % k, i = col / (C * k);
        out[e] = a[la.offset + b * la.strides[0] + (y * s + i) * la.strides[1] +
                   (x * s + j) * la.strides[2] + c * la.strides[3]];
    }
}

template <typename T> static const T *in(const void *p) { return (const T *)p; }

int ndl_cuda_pad(ndl_dtype dt, const void *a, const ndl_layout *la, const int64_t *lo,
                 const int64_t *hi, void *out)
{
    Dims l = {}, os = {};
    int64_t n = 1;
    for (int d = 0; d < la->ndim; d++) {
        if (lo[d] < 0 || hi[d] < 0)
            return NDL_EINVAL;
        l.v[d] = lo[d];
        os.v[d] = la->shape[d] + lo[d] + hi[d];
        n *= os.v[d];
    }
    if (n == 0)
        return NDL_OK;
    NDL_CU_DTYPE(dt, T,
                 NDL_LAUNCH(ndl_cu_blocks(n), NDL_CU_THREADS, pad_kernel<T>)(
                     in<T>(a), *la, l, os, (T *)out, n));
    NDL_CUDA_LAUNCHED();
    return NDL_OK;
}

int ndl_cuda_flip(ndl_dtype dt, const void *a, const ndl_layout *la, uint64_t axes_mask,
                  void *out)
{
    int64_t n = ndl_cu_size(la);
    if (n == 0)
        return NDL_OK;
    NDL_CU_DTYPE(dt, T,
                 NDL_LAUNCH(ndl_cu_blocks(n), NDL_CU_THREADS, flip_kernel<T>)(
                     in<T>(a), *la, axes_mask, (T *)out, n));
    NDL_CUDA_LAUNCHED();
    return NDL_OK;
}

int ndl_cuda_dilate(ndl_dtype dt, const void *a, const ndl_layout *la, uint64_t axes_mask,
                    int64_t d, void *out)
{
    Dims os = {};
    int64_t n = 1;
    if (d < 0)
        return NDL_EINVAL;
    for (int j = 0; j < la->ndim; j++) {
        os.v[j] = (axes_mask >> j) & 1 ? la->shape[j] * (d + 1) : la->shape[j];
        n *= os.v[j];
    }
    if (n == 0)
        return NDL_OK;
    NDL_CU_DTYPE(dt, T,
                 NDL_LAUNCH(ndl_cu_blocks(n), NDL_CU_THREADS, dilate_kernel<T>)(
                     in<T>(a), *la, axes_mask, d + 1, os, (T *)out, n));
    NDL_CUDA_LAUNCHED();
    return NDL_OK;
}

int ndl_cuda_im2col(ndl_dtype dt, const void *a, const ndl_layout *la, int64_t k, int64_t s,
                    int64_t row0, int64_t nrows, void *out)
{
    if (la->ndim != 4 || k < 1 || s < 1 || k > la->shape[1] || k > la->shape[2] || row0 < 0 ||
        nrows < 0)
        return NDL_EINVAL;
    int64_t ho = (la->shape[1] - k) / s + 1, wo = (la->shape[2] - k) / s + 1;
    int64_t n = nrows * k * k * la->shape[3];
    if (row0 + nrows > la->shape[0] * ho * wo)
        return NDL_EINVAL;
    if (n == 0)
        return NDL_OK;
    NDL_CU_DTYPE(dt, T,
                 NDL_LAUNCH(ndl_cu_blocks(n), NDL_CU_THREADS, im2col_kernel<T>)(
                     in<T>(a), *la, k, s, ho, wo, row0, nrows, (T *)out));
    NDL_CUDA_LAUNCHED();
    return NDL_OK;
}
