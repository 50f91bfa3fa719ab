/* cuda_dropout.cu: the masked_scale slot (backend.h): Dropout's
 * x * mask / c, the mask 0s and 1s or packed 16 bits to an element, on the
 * device (Note [Dropout mask on the device], ops_dropout.c). Per element the
 * Mul kernel's product, then the DivScalar kernel's quotient (scalar_ops.h),
 * as cpu_dropout.c: the CPU's numbers exactly (no sum, no contraction: a
 * product then a division is never fused). Grid-stride, int64 indices.
 */
#include "cuda_common.cuh"
#include "scalar_ops.h"

template <typename T> struct Ops;
template <> struct Ops<float> {
    __device__ static float mul(float a, float b) { return ndl_mul_f32(a, b); }
    __device__ static float div(float a, float b) { return ndl_div_f32(a, b); }
};
template <> struct Ops<double> {
    __device__ static double mul(double a, double b) { return ndl_mul_f64(a, b); }
    __device__ static double div(double a, double b) { return ndl_div_f64(a, b); }
};

// x, out are (n) compact; mask (n), or (ceil(n / 16)) when packed
template <typename T>
__global__ void __launch_bounds__(NDL_CU_THREADS)
    masked_scale_kernel(int64_t n, const T *x, const T *mask, int packed, T c, T *out)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        T m;
        if (packed) { /* warp-uniform: one branch per launch */
            const unsigned w = (unsigned)mask[i >> 4];
            m = (T)((w >> (i & 15)) & 1u);
        } else {
            m = mask[i];
        }
        out[i] = Ops<T>::div(Ops<T>::mul(x[i], m), c);
    }
}

int ndl_cuda_masked_scale(ndl_dtype dt, int64_t n, const void *x, const void *mask, int packed,
                          double c, void *out)
{
    if (n < 0)
        return NDL_EINVAL;
    if (n == 0)
        return NDL_OK;
    NDL_CU_DTYPE(dt, T,
                 NDL_LAUNCH(ndl_cu_blocks(n), NDL_CU_THREADS, masked_scale_kernel<T>)(
                     n, (const T *)x, (const T *)mask, packed != 0, (T)c, (T *)out));
    NDL_CUDA_LAUNCHED();
    return NDL_OK;
}
