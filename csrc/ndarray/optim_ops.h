/* optim_ops.h: the per-element math of the fused optimizer updates (API.md 7),
 * written once for the CPU loops (cpu_optim.c) and, later, the CUDA kernels.
 *
 * Each step computes, in the parameter's dtype and in the order of the
 * op-by-op formula (so the result matches needle.optim's tensor path to the
 * last bit or two; gcc may fuse a*b+c):
 *   Adam: gt = g + wd*p;  m = b1*m + (1-b1)*gt;  v = b2*v + (1-b2)*gt^2
 *         p = p - lr * (m / c1) / (sqrt(v / c2) + eps)      c_i = 1 - b_i^t
 *   SGD:  gt = g + wd*p;  u = mom*u + (1-mom)*gt;  p = p - lr*u
 * A missing state (first step) is zero.
 */
#ifndef NDL_OPTIM_OPS_H
#define NDL_OPTIM_OPS_H

#include <math.h>

#ifndef NDL_HD
#ifdef __CUDACC__
#define NDL_HD __host__ __device__ __forceinline__
#else
#define NDL_HD static inline
#endif
#endif

/* Hyperparameters are rounded to the element type first, as a scalar op
 * rounds its scalar, and passed by value so that a loop over these
 * vectorizes. wd == 0 skips the decay term (as the tensor path does). */
#define NDL_DEFINE_OPTIM_STEPS(T, SFX, SQRT)                                                       \
    NDL_HD void ndl_adam_##SFX(T p, T g, T m, T v, T lr, T b1, T omb1, T b2, T omb2, T eps, T wd,  \
                               T c1, T c2, T *po, T *mo, T *vo)                                    \
    {                                                                                              \
        T gt = wd != (T)0 ? g + p * wd : g;                                                        \
        T mn = m * b1 + gt * omb1;                                                                 \
        T vn = v * b2 + (gt * gt) * omb2;                                                          \
        *po = p - ((mn / c1) / (SQRT(vn / c2) + eps)) * lr;                                        \
        *mo = mn;                                                                                  \
        *vo = vn;                                                                                  \
    }                                                                                              \
    NDL_HD void ndl_sgd_##SFX(T p, T g, T u, T lr, T mom, T omm, T wd, int has_mom, T *po, T *uo)  \
    {                                                                                              \
        T gt = wd != (T)0 ? g + p * wd : g;                                                        \
        T un = has_mom ? u * mom + gt * omm : gt;                                                  \
        *po = p - un * lr;                                                                         \
        *uo = un;                                                                                  \
    }

NDL_DEFINE_OPTIM_STEPS(float, f32, sqrtf)
NDL_DEFINE_OPTIM_STEPS(double, f64, sqrt)

#endif
