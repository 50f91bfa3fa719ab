/* cpu_optim.c: fused optimizer updates on the CPU: one pass reads p, g and
 * the state and writes the new p and state (out of place), where the
 * op-by-op formula makes about a dozen passes. The math is optim_ops.h.
 * Buffers are compact, n elements, of one dtype; m/v/u may be NULL (zero).
 */
#include <stddef.h>

#include "ndl_core.h"
#include "optim_ops.h"
#include "threadpool.h"

#define OPTIM_GRAIN 65536

typedef struct {
    const void *p, *g, *m, *v;
    void *po, *mo, *vo;
    const void *h; /* ndl_adam_hparams or ndl_sgd_hparams */
} optim_job;

/* The state pointers are tested once per chunk, not per element, and every
 * constant is a local scalar, so gcc vectorizes each loop. A state updated
 * in place (m == mo) is read and written through one restrict pointer: each
 * element is read before it is written, at the same index. */
#define OPTIM_RANGES(T, SFX)                                                                       \
    static void adam_range_##SFX(void *ctx, int64_t b, int64_t e)                                  \
    {                                                                                              \
        const optim_job *j = ctx;                                                                  \
        const ndl_adam_hparams *h = j->h;                                                          \
        const T lr = (T)h->lr, b1 = (T)h->beta1, omb1 = (T)(1 - h->beta1), b2 = (T)h->beta2;       \
        const T omb2 = (T)(1 - h->beta2), eps = (T)h->eps, wd = (T)h->weight_decay;                \
        const T c1 = (T)h->bias1, c2 = (T)h->bias2;                                                \
        const T *restrict p = j->p, *restrict g = j->g;                                            \
        T *restrict po = j->po;                                                                    \
        const T *m = j->m, *v = j->v; /* may be mo, vo themselves (in place) */                    \
        T *mo = j->mo, *vo = j->vo;                                                                \
        if (m != NULL && m == mo) { /* in place: m[i], v[i] read, then written */                \
            T *restrict ms = mo, *restrict vs = vo;                                                \
            for (int64_t i = b; i < e; i++)                                                        \
                ndl_adam_##SFX(p[i], g[i], ms[i], vs[i], lr, b1, omb1, b2, omb2, eps, wd, c1, c2,  \
                               &po[i], &ms[i], &vs[i]);                                            \
        } else if (m != NULL) {                                                                    \
            for (int64_t i = b; i < e; i++)                                                        \
                ndl_adam_##SFX(p[i], g[i], m[i], v[i], lr, b1, omb1, b2, omb2, eps, wd, c1, c2,    \
                               &po[i], &mo[i], &vo[i]);                                            \
        } else {                                                                                   \
            for (int64_t i = b; i < e; i++)                                                        \
                ndl_adam_##SFX(p[i], g[i], (T)0, (T)0, lr, b1, omb1, b2, omb2, eps, wd, c1, c2,    \
                               &po[i], &mo[i], &vo[i]);                                            \
        }                                                                                          \
    }                                                                                              \
    static void sgd_range_##SFX(void *ctx, int64_t b, int64_t e)                                   \
    {                                                                                              \
        const optim_job *j = ctx;                                                                  \
        const ndl_sgd_hparams *h = j->h;                                                           \
        const T lr = (T)h->lr, mom = (T)h->momentum, omm = (T)(1 - h->momentum);                   \
        const T wd = (T)h->weight_decay;                                                           \
        const T *restrict p = j->p, *restrict g = j->g, *u = j->m;                                 \
        T *restrict po = j->po, *uo = j->mo, scratch;                                              \
        /* NOTE: with momentum, a missing u means u_prev = 0: u = (1 - mom) * gt. */               \
        if (u != NULL && u == uo) { /* in place */                                                 \
            T *restrict us = uo;                                                                   \
            for (int64_t i = b; i < e; i++)                                                        \
                ndl_sgd_##SFX(p[i], g[i], us[i], lr, mom, omm, wd, 1, &po[i], &us[i]);             \
        } else if (u != NULL && uo != NULL) {                                                      \
            const T *restrict ur = u;                                                              \
            T *restrict uw = uo;                                                                   \
            for (int64_t i = b; i < e; i++)                                                        \
                ndl_sgd_##SFX(p[i], g[i], ur[i], lr, mom, omm, wd, 1, &po[i], &uw[i]);             \
        } else if (uo != NULL) {                                                                   \
            T *restrict uw = uo;                                                                   \
            for (int64_t i = b; i < e; i++)                                                        \
                ndl_sgd_##SFX(p[i], g[i], (T)0, lr, mom, omm, wd, 1, &po[i], &uw[i]);              \
        } else {                                                                                   \
            for (int64_t i = b; i < e; i++)                                                        \
                ndl_sgd_##SFX(p[i], g[i], (T)0, lr, mom, omm, wd, 0, &po[i], &scratch);            \
        }                                                                                          \
    }
OPTIM_RANGES(float, f32)
OPTIM_RANGES(double, f64)

int ndl_cpu_adam(ndl_dtype dt, int64_t n, const void *p, const void *g, const void *m,
                 const void *v, void *po, void *mo, void *vo, const ndl_adam_hparams *h)
{
    optim_job j = {p, g, m, v, po, mo, vo, h};
    ndl_parallel_for(n, OPTIM_GRAIN, dt == NDL_FLOAT64 ? adam_range_f64 : adam_range_f32, &j);
    return NDL_OK;
}

int ndl_cpu_sgd(ndl_dtype dt, int64_t n, const void *p, const void *g, const void *u, void *po,
                void *uo, const ndl_sgd_hparams *h)
{
    optim_job j = {p, g, u, NULL, po, uo, NULL, h};
    ndl_parallel_for(n, OPTIM_GRAIN, dt == NDL_FLOAT64 ? sgd_range_f64 : sgd_range_f32, &j);
    return NDL_OK;
}
