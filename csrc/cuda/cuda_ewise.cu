/* cuda_ewise.cu: the elementwise kernels, generated from the op rows.
 *
 * One functor per NDL_UNARY_KERNEL / NDL_BINARY_KERNEL row of ops.def
 * (Note [One op, one row]), calling the same ndl_<kernel>_f32/_f64 of
 * scalar_ops.h the CPU loops call; the slot dispatches on the kernel code.
 * The operands' axes are merged first (Note [Merged axes],
 * cuda_common.cuh); then a contiguous input takes a flat index, anything
 * else the strided offset (each operand of binary on its own). The
 * scalar of `a + 2.0` comes by value through the scalar slot (backend.h) and
 * goes to the kernel as an argument; both operands of binary are device
 * buffers. */
#include "cuda_common.cuh"
#include "scalar_ops.h"

#define NDL_UNARY_KERNEL(KERNEL, kernel, numpy, method)                                            \
    struct Un_##KERNEL {                                                                           \
        __device__ float operator()(float x) const { return ndl_##kernel##_f32(x); }              \
        __device__ double operator()(double x) const { return ndl_##kernel##_f64(x); }            \
    };
#define NDL_BINARY_KERNEL(KERNEL, kernel, numpy, method)                                           \
    struct Bin_##KERNEL {                                                                          \
        __device__ float operator()(float x, float y) const { return ndl_##kernel##_f32(x, y); }  \
        __device__ double operator()(double x, double y) const                                     \
        {                                                                                          \
            return ndl_##kernel##_f64(x, y);                                                       \
        }                                                                                          \
    };
#include "ops.def"

// a is the view la (n elements), out compact (n)
template <typename F, typename T>
__global__ void unary_kernel(const T *a, ndl_layout la, T *out, int64_t n, int flat)
{
    F f;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        out[i] = f(a[flat ? la.offset + i : ndl_cu_offset(la, i)]);
}

// a, b are views la, lb of one shape (n elements), out compact (n); flat_a
// (flat_b): la (lb) is contiguous, so element i is at offset + i
template <typename F, typename T>
__global__ void binary_kernel(const T *a, ndl_layout la, const T *b, ndl_layout lb, T *out,
                              int64_t n, int flat_a, int flat_b)
{
    F f;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        int64_t ia = flat_a ? la.offset + i : ndl_cu_offset(la, i);
        int64_t ib = flat_b ? lb.offset + i : ndl_cu_offset(lb, i);
        out[i] = f(a[ia], b[ib]);
    }
}

template <typename F>
static int launch_unary(ndl_dtype dt, const void *a, const ndl_layout *la, void *out)
{
    int64_t n = ndl_cu_size(la);
    ndl_layout l = *la;
    if (n == 0)
        return NDL_OK;
    ndl_cu_merge_axes(&l, 1);
    const int flat = ndl_cu_contiguous(&l);
    NDL_CU_DTYPE(dt, T,
                 NDL_LAUNCH(ndl_cu_blocks(n), NDL_CU_THREADS, unary_kernel<F, T>)(
                     (const T *)a, l, (T *)out, n, flat));
    NDL_CUDA_LAUNCHED();
    return NDL_OK;
}

// a is the view la (n elements); s the other operand, on the left when s_left
template <typename F, typename T>
__global__ void binary_scalar_kernel(const T *a, ndl_layout la, T s, int s_left, T *out,
                                     int64_t n, int flat)
{
    F f;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        T x = a[flat ? la.offset + i : ndl_cu_offset(la, i)];
        out[i] = s_left ? f(s, x) : f(x, s);
    }
}

template <typename F>
static int launch_scalar(ndl_dtype dt, const void *a, const ndl_layout *la, double s, int s_left,
                         void *out)
{
    int64_t n = ndl_cu_size(la);
    ndl_layout l = *la;
    if (n == 0)
        return NDL_OK;
    ndl_cu_merge_axes(&l, 1);
    const int flat = ndl_cu_contiguous(&l);
    NDL_CU_DTYPE(dt, T,
                 NDL_LAUNCH(ndl_cu_blocks(n), NDL_CU_THREADS, binary_scalar_kernel<F, T>)(
                     (const T *)a, l, (T)s, s_left, (T *)out, n, flat));
    NDL_CUDA_LAUNCHED();
    return NDL_OK;
}

template <typename F>
static int launch_binary(ndl_dtype dt, const void *a, const ndl_layout *la, const void *b,
                         const ndl_layout *lb, void *out)
{
    int64_t n = ndl_cu_size(la);
    ndl_layout l[2] = {*la, *lb};
    if (la->ndim != lb->ndim || n != ndl_cu_size(lb))
        return NDL_EINVAL;
    if (n == 0)
        return NDL_OK;
    ndl_cu_merge_axes(l, 2);
    /* each operand on its own: a broadcast b does not slow a contiguous a */
    const int flat_a = ndl_cu_contiguous(&l[0]), flat_b = ndl_cu_contiguous(&l[1]);
    NDL_CU_DTYPE(dt, T,
                 NDL_LAUNCH(ndl_cu_blocks(n), NDL_CU_THREADS, binary_kernel<F, T>)(
                     (const T *)a, l[0], (const T *)b, l[1], (T *)out, n, flat_a, flat_b));
    NDL_CUDA_LAUNCHED();
    return NDL_OK;
}

int ndl_cuda_unary(ndl_unop op, ndl_dtype dt, const void *a, const ndl_layout *la, void *out)
{
    switch (op) {
#define NDL_UNARY_KERNEL(KERNEL, kernel, numpy, method)                                            \
    case NDL_UN_##KERNEL:                                                                          \
        return launch_unary<Un_##KERNEL>(dt, a, la, out);
#include "ops.def"
    default:
        return NDL_EINVAL;
    }
}

int ndl_cuda_scalar(ndl_binop op, ndl_dtype dt, const void *a, const ndl_layout *la, double s,
                    int reflected, void *out)
{
    switch (op) {
#define NDL_BINARY_KERNEL(KERNEL, kernel, numpy, method)                                           \
    case NDL_BIN_##KERNEL:                                                                         \
        return launch_scalar<Bin_##KERNEL>(dt, a, la, s, reflected, out);
#include "ops.def"
    default:
        return NDL_EINVAL;
    }
}

int ndl_cuda_binary(ndl_binop op, ndl_dtype dt, const void *a, const ndl_layout *la,
                    const void *b, const ndl_layout *lb, void *out)
{
    switch (op) {
#define NDL_BINARY_KERNEL(KERNEL, kernel, numpy, method)                                           \
    case NDL_BIN_##KERNEL:                                                                         \
        return launch_binary<Bin_##KERNEL>(dt, a, la, b, lb, out);
#include "ops.def"
    default:
        return NDL_EINVAL;
    }
}
