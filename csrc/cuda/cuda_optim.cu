/* cuda_optim.cu: the fused Adam and SGD updates, one thread per element,
 * with the per-element math of optim_ops.h (shared with the CPU). A NULL
 * state means zeros; a state may be updated in place (read, then written,
 * by the same thread). */
#include "cuda_common.cuh"
#include "optim_ops.h"

__device__ __forceinline__ void adam_el(float p, float g, float m, float v, float lr, float b1,
                                        float omb1, float b2, float omb2, float eps, float wd,
                                        float c1, float c2, float *po, float *mo, float *vo)
{
    ndl_adam_f32(p, g, m, v, lr, b1, omb1, b2, omb2, eps, wd, c1, c2, po, mo, vo);
}
__device__ __forceinline__ void adam_el(double p, double g, double m, double v, double lr,
                                        double b1, double omb1, double b2, double omb2,
                                        double eps, double wd, double c1, double c2, double *po,
                                        double *mo, double *vo)
{
    ndl_adam_f64(p, g, m, v, lr, b1, omb1, b2, omb2, eps, wd, c1, c2, po, mo, vo);
}
__device__ __forceinline__ void sgd_el(float p, float g, float u, float lr, float mom, float omm,
                                       float wd, int has, float *po, float *uo)
{
    ndl_sgd_f32(p, g, u, lr, mom, omm, wd, has, po, uo);
}
__device__ __forceinline__ void sgd_el(double p, double g, double u, double lr, double mom,
                                       double omm, double wd, int has, double *po, double *uo)
{
    ndl_sgd_f64(p, g, u, lr, mom, omm, wd, has, po, uo);
}

// p, g, po, mo, vo are (n); m, v are (n) or NULL (zeros)
template <typename T>
__global__ void adam_kernel(int64_t n, const T *p, const T *g, const T *m, const T *v, T *po,
                            T *mo, T *vo, ndl_adam_hparams h)
{
    const T lr = (T)h.lr, b1 = (T)h.beta1, omb1 = (T)(1 - h.beta1), b2 = (T)h.beta2;
    const T omb2 = (T)(1 - h.beta2), eps = (T)h.eps, wd = (T)h.weight_decay;
    const T c1 = (T)h.bias1, c2 = (T)h.bias2;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        T mi = m ? m[i] : (T)0, vi = v ? v[i] : (T)0, pn, mn, vn;
        adam_el(p[i], g[i], mi, vi, lr, b1, omb1, b2, omb2, eps, wd, c1, c2, &pn, &mn, &vn);
        po[i] = pn;
        mo[i] = mn;
        vo[i] = vn;
    }
}

// p, g, po are (n); u (n) or NULL (zeros); uo (n) or NULL (no momentum)
template <typename T>
__global__ void sgd_kernel(int64_t n, const T *p, const T *g, const T *u, T *po, T *uo,
                           ndl_sgd_hparams h)
{
    const T lr = (T)h.lr, mom = (T)h.momentum, omm = (T)(1 - h.momentum);
    const T wd = (T)h.weight_decay;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        T ui = u ? u[i] : (T)0, pn, un;
        sgd_el(p[i], g[i], ui, lr, mom, omm, wd, uo != NULL, &pn, &un);
        po[i] = pn;
        if (uo)
            uo[i] = un;
    }
}

int ndl_cuda_adam(ndl_dtype dt, int64_t n, const void *p, const void *g, const void *m,
                  const void *v, void *po, void *mo, void *vo, const ndl_adam_hparams *h)
{
    if (n <= 0)
        return n == 0 ? NDL_OK : NDL_EINVAL;
    NDL_CU_DTYPE(dt, T,
                 NDL_LAUNCH(ndl_cu_blocks(n), NDL_CU_THREADS, adam_kernel<T>)(
                     n, (const T *)p, (const T *)g, (const T *)m, (const T *)v, (T *)po,
                     (T *)mo, (T *)vo, *h));
    NDL_CUDA_LAUNCHED();
    return NDL_OK;
}

int ndl_cuda_sgd(ndl_dtype dt, int64_t n, const void *p, const void *g, const void *u, void *po,
                 void *uo, const ndl_sgd_hparams *h)
{
    if (n <= 0)
        return n == 0 ? NDL_OK : NDL_EINVAL;
    NDL_CU_DTYPE(dt, T,
                 NDL_LAUNCH(ndl_cu_blocks(n), NDL_CU_THREADS, sgd_kernel<T>)(
                     n, (const T *)p, (const T *)g, (const T *)u, (T *)po, (T *)uo, *h));
    NDL_CUDA_LAUNCHED();
    return NDL_OK;
}
