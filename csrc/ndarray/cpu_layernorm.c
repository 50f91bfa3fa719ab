/* cpu_layernorm.c: the CPU kernels of the LayerNorm slots (backend.h):
 * layer_norm rows and their gradients (Note [Fused LayerNorm],
 * ops_layernorm.c, which calls them through the backend table).
 *
 * Python equivalent (x (rows, n), w and b (n,), g like x):
 *     mean = x.mean(-1, keepdims=True); xc = x - mean
 *     var = (xc ** 2).mean(-1, keepdims=True)
 *     y = w * (xc / (var + eps) ** 0.5) + b                       # layer_norm
 *     r = (var + eps) ** -0.5; xh = xc * r; h = g * w             # layer_norm_grad
 *     gx = r * ((h - h.mean(-1, keepdims=True)) - xh * (h * xh).mean(-1, keepdims=True))
 *     gw = (g * xh).sum(0); gb = g.sum(0)
 *
 * The row sums have the rows' fixed order (NDL_SUM8_OF, cpu_rows.h), the
 * column sums of gw and gb add the rows in increasing order: results do not
 * depend on the threads. The arithmetic is in the array's type, eps rounded
 * to it as AddScalar does and the root by ndl_pow as PowerScalar does, so the
 * forward is the composed formula's numbers up to the order of the two sums
 * (the Sum kernel sums pairwise). cuda_layernorm.cu computes the same.
 */
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cpu_rows.h"
#include "scalar_ops.h"
#include "threadpool.h"

/* ---- the row loops (each built twice: Note [Row loops for AVX2], cpu_rows.h) */

#define NDL_LAYER_NORM_ROWS(T, sfx)                                                                \
    /* mean and var of one row */                                                                  \
    static void moments_##sfx(const T *x, int64_t n, T *mean, T *var)                              \
    {                                                                                              \
        T m, v;                                                                                    \
        NDL_SUM8_OF(T, n, i, x[i], m);                                                             \
        m = m / (T)n;                                                                              \
        NDL_SUM8_OF(T, n, i, (x[i] - m) * (x[i] - m), v);                                          \
        *mean = m;                                                                                 \
        *var = v / (T)n;                                                                           \
    }                                                                                              \
    NDL_ROW_CLONES static void layer_norm_row_##sfx(const T *restrict x, const T *restrict w,     \
                                                    const T *restrict b, T *restrict y, int64_t n, \
                                                    T eps)                                         \
    {                                                                                              \
        T mean, var, den;                                                                          \
        moments_##sfx(x, n, &mean, &var);                                                          \
        den = ndl_pow_##sfx(var + eps, (T)0.5);                                                    \
        for (int64_t i = 0; i < n; i++)                                                            \
            y[i] = w[i] * ((x[i] - mean) / den) + b[i];                                            \
    }                                                                                              \
    /* gx of one row (unless gx is NULL); stats <- mean, r for the column sums */                  \
    NDL_ROW_CLONES static void layer_norm_grad_row_##sfx(                                         \
        const T *restrict x, const T *restrict w, const T *restrict g, T *restrict gx, int64_t n,  \
        T eps, T *restrict stats)                                                                  \
    {                                                                                              \
        T mean, var, r, mh, mhx;                                                                   \
        moments_##sfx(x, n, &mean, &var);                                                          \
        r = ndl_pow_##sfx(var + eps, (T)-0.5);                                                     \
        stats[0] = mean;                                                                           \
        stats[1] = r;                                                                              \
        if (gx == NULL)                                                                            \
            return;                                                                                \
        NDL_SUM8_OF(T, n, i, g[i] * w[i], mh);                                                     \
        NDL_SUM8_OF(T, n, i, (g[i] * w[i]) * ((x[i] - mean) * r), mhx);                            \
        mh = mh / (T)n;                                                                            \
        mhx = mhx / (T)n;                                                                          \
        for (int64_t i = 0; i < n; i++)                                                            \
            gx[i] = r * ((g[i] * w[i] - mh) - ((x[i] - mean) * r) * mhx);                          \
    }                                                                                              \
    /* gw, gb over the columns [c0, c1): the rows added in order */                                \
    NDL_ROW_CLONES static void layer_norm_cols_##sfx(                                             \
        const T *restrict x, const T *restrict g, const T *restrict stats, T *restrict gw,         \
        T *restrict gb, int64_t rows, int64_t n, int64_t c0, int64_t c1)                           \
    {                                                                                              \
        for (int64_t c = c0; c < c1; c++) {                                                        \
            if (gw != NULL)                                                                        \
                gw[c] = 0;                                                                         \
            if (gb != NULL)                                                                        \
                gb[c] = 0;                                                                         \
        }                                                                                          \
        for (int64_t r = 0; r < rows; r++) {                                                       \
            const T *xr = x + r * n, *gr = g + r * n, mean = stats[2 * r], rr = stats[2 * r + 1];  \
            if (gw != NULL)                                                                        \
                for (int64_t c = c0; c < c1; c++)                                                  \
                    gw[c] = gw[c] + gr[c] * ((xr[c] - mean) * rr);                                 \
            if (gb != NULL)                                                                        \
                for (int64_t c = c0; c < c1; c++)                                                  \
                    gb[c] = gb[c] + gr[c];                                                         \
        }                                                                                          \
    }
NDL_LAYER_NORM_ROWS(float, f32)
NDL_LAYER_NORM_ROWS(double, f64)

/* ---- the jobs over the thread pool (cpu_rows.h) ---------------------------- */

/* a = x, b = w, c = b (forward) or g (backward); out = y or gx; out2 = stats */
#define LAYER_NORM_ROW(T, sfx, j, r)                                                               \
    layer_norm_row_##sfx(NDL_CROW(T, (j)->a, j, r), (const T *)(j)->b, (const T *)(j)->c,        \
                         NDL_ROW(T, (j)->out, j, r), (j)->n, (T)(j)->s)
#define LAYER_NORM_GRAD_ROW(T, sfx, j, r)                                                          \
    layer_norm_grad_row_##sfx(NDL_CROW(T, (j)->a, j, r), (const T *)(j)->b,                       \
                              NDL_CROW(T, (j)->c, j, r),                                           \
                              (j)->out ? NDL_ROW(T, (j)->out, j, r) : NULL, (j)->n, (T)(j)->s,     \
                              (T *)(j)->out2 + 2 * (r))
NDL_ROWS_TASK(layer_norm_rows, LAYER_NORM_ROW)
NDL_ROWS_TASK(layer_norm_grad_rows, LAYER_NORM_GRAD_ROW)

typedef struct {
    const ndl_rows_job *j;
    int64_t rows;
    void *gw, *gb;
} cols_job;

static void layer_norm_cols(void *ctx, int64_t c0, int64_t c1)
{
    const cols_job *cj = ctx;
    const ndl_rows_job *j = cj->j;
    if (j->dt == NDL_FLOAT32)
        layer_norm_cols_f32(j->a, j->c, j->out2, cj->gw, cj->gb, cj->rows, j->n, c0, c1);
    else
        layer_norm_cols_f64(j->a, j->c, j->out2, cj->gw, cj->gb, cj->rows, j->n, c0, c1);
}

/* ---- the slots ------------------------------------------------------------- */

int ndl_cpu_layer_norm(ndl_dtype dt, int64_t rows, int64_t n, const void *x, const void *w,
                       const void *b, double eps, void *y)
{
    ndl_rows_job job = {.dt = dt, .n = n, .a = x, .b = w, .c = b, .out = y, .s = eps};
    if (rows < 0 || n < 0)
        return NDL_EINVAL;
    if (rows == 0 || n == 0)
        return NDL_OK;
    ndl_parallel_for(rows, ndl_rows_grain(n), layer_norm_rows, &job);
    return NDL_OK;
}

int ndl_cpu_layer_norm_grad(ndl_dtype dt, int64_t rows, int64_t n, const void *x, const void *w,
                            const void *g, double eps, void *gx, void *gw, void *gb)
{
    size_t item = dt == NDL_FLOAT64 ? sizeof(double) : sizeof(float);
    ndl_rows_job job = {.dt = dt, .n = n, .a = x, .b = w, .c = g, .out = gx, .s = eps};
    cols_job cj = {&job, rows, gw, gb};
    if (rows < 0 || n < 0)
        return NDL_EINVAL;
    if (n == 0)
        return NDL_OK;
    /* NOTE: the scratch of per-row (mean, r): 2 * rows elements */
    if ((job.out2 = malloc(item * 2 * (size_t)(rows > 0 ? rows : 1))) == NULL)
        return NDL_ENOMEM;
    if (rows > 0)
        ndl_parallel_for(rows, ndl_rows_grain(n), layer_norm_grad_rows, &job);
    /* columns per task: about 16k elements of g each, at least a cache line */
    if (gw != NULL || gb != NULL)
        ndl_parallel_for(n, rows < 1024 ? 16384 / (rows > 0 ? rows : 1) : 16, layer_norm_cols,
                         &cj);
    free(job.out2);
    return NDL_OK;
}
