/* cpu_softmax.c: the CPU kernels of the fused softmax slots (backend.h):
 * softmax rows (plain, or attention's x / c + causal mask first), the rows of
 * softmax's gradient, and the rows of the softmax cross-entropy loss and of
 * its gradient.
 *
 * Moved unchanged from ops_attention.c and ops_softmax.c, which now call them
 * through the backend table (Note [Fused softmax] there, Note [Fused softmax
 * loss]); the CUDA backend's cuda_softmax.cu follows the same formulas. One
 * row per call of the row loops, rows split over the thread pool; each row's
 * reductions have a fixed order (row_reduce.h), so results do not depend on
 * the threads.
 */
#include <float.h>
#include <math.h>

#include "backend.h"
#include "row_reduce.h"
#include "scalar_ops.h"
#include "threadpool.h"

/* ---- the row loops ------------------------------------------------------- */

/* Eight partial maxima / sums so that gcc vectorizes the reductions without
 * -ffast-math; the results do not depend on the threads. */
#define NDL_SOFTMAX_ROWS(T, sfx, BIG)                                                              \
    static void softmax_row_##sfx(const T *z, T *y, int64_t n) /* y may be z */                  \
    {                                                                                              \
        T acc[8] = {0}, m = row_max_##sfx(z, n), s;                                                \
        int64_t i;                                                                                 \
        for (i = 0; i < n; i++)                                                                    \
            y[i] = ndl_exp_##sfx(z[i] - m);                                                        \
        for (i = 0; i + 8 <= n; i += 8)                                                            \
            for (int k = 0; k < 8; k++)                                                            \
                acc[k] += y[i + k];                                                                \
        for (; i < n; i++)                                                                         \
            acc[0] += y[i];                                                                        \
        s = NDL_SUM8(acc);                                                                         \
        for (i = 0; i < n; i++)                                                                    \
            y[i] = y[i] / s;                                                                       \
    }                                                                                              \
    static void softmax_grad_row_##sfx(const T *restrict y, const T *restrict g, T *restrict o,    \
                                       int64_t n)                                                  \
    {                                                                                              \
        T acc[8] = {0}, s;                                                                         \
        int64_t i = 0;                                                                             \
        for (; i + 8 <= n; i += 8)                                                                 \
            for (int k = 0; k < 8; k++)                                                            \
                acc[k] += g[i + k] * y[i + k];                                                     \
        for (; i < n; i++)                                                                         \
            acc[0] += g[i] * y[i];                                                                 \
        s = NDL_SUM8(acc);                                                                         \
        for (i = 0; i < n; i++)                                                                    \
            o[i] = y[i] * (g[i] - s);                                                              \
    }
/* x / c + (-FLT_MAX where j >= keep): the logits of one attention row */
#define NDL_LOGITS_ROW(T, sfx)                                                                     \
    static void logits_row_##sfx(const T *restrict x, T *restrict z, int64_t n, T c,            \
                                 int64_t keep)                                                     \
    {                                                                                              \
        for (int64_t i = 0; i < n; i++)                                                            \
            z[i] = x[i] / c;                                                                       \
        for (int64_t i = keep < 0 ? 0 : keep; i < n; i++)                                          \
            z[i] = z[i] + (T)(-FLT_MAX);                                                           \
    }
NDL_LOGITS_ROW(float, f32)
NDL_LOGITS_ROW(double, f64)
NDL_SOFTMAX_ROWS(float, f32, FLT_MAX)
NDL_SOFTMAX_ROWS(double, f64, DBL_MAX)

/* m + log(sum(exp(z - m))) - z[y] of one row, the sum in T, the rest in double */
#define NDL_XENT_ROW(T, sfx, BIG)                                                                 \
    static double xent_row_##sfx(const T *z, int64_t n, int64_t y)                                 \
    {                                                                                              \
        T acc[8] = {0}, m = row_max_##sfx(z, n), s;                                                \
        int64_t i;                                                                                 \
        for (i = 0; i + 8 <= n; i += 8)                                                            \
            for (int k = 0; k < 8; k++)                                                            \
                acc[k] += ndl_exp_##sfx(z[i + k] - m);                                             \
        for (; i < n; i++)                                                                         \
            acc[0] += ndl_exp_##sfx(z[i] - m);                                                     \
        s = NDL_SUM8(acc);                                                                         \
        return ((double)m - (double)z[y]) + log((double)s);                                        \
    }
NDL_XENT_ROW(float, f32, FLT_MAX)
NDL_XENT_ROW(double, f64, DBL_MAX)

/* (softmax(z) + (-1 at y, 0 elsewhere)) * gb of one row: the loss's gradient
 * (Note [Fused loss backward], ops_softmax.c), the composition's numbers */
#define NDL_XENT_GRAD_ROW(T, sfx)                                                                  \
    static void xent_grad_row_##sfx(const T *z, T *o, int64_t n, int64_t y, T gb)                  \
    {                                                                                              \
        softmax_row_##sfx(z, o, n);                                                                \
        o[y] = o[y] + (T)-1.0;                                                                     \
        for (int64_t i = 0; i < n; i++)                                                            \
            o[i] = o[i] * gb;                                                                      \
    }
NDL_XENT_GRAD_ROW(float, f32)
NDL_XENT_GRAD_ROW(double, f64)

/* ---- the jobs over the thread pool ---------------------------------------- */

typedef struct {
    ndl_dtype dt;
    const void *a, *b; /* z (softmax) or y, g (softmax_grad) */
    void *out;
    int64_t n;         /* row length */
    /* attention: divide by scale; if causal, row r (query r % rows of a
     * (rows, n) matrix) keeps columns j <= r % rows + n - rows */
    double scale;
    int causal;
    int64_t rows;
} rows_job;

static void attention_softmax_rows(void *ctx, int64_t r0, int64_t r1)
{
    const rows_job *j = ctx;
    for (int64_t r = r0; r < r1; r++) {
        int64_t keep = j->causal ? r % j->rows + j->n - j->rows + 1 : j->n;
        if (j->dt == NDL_FLOAT32) {
            float *y = (float *)j->out + r * j->n;
            logits_row_f32((const float *)j->a + r * j->n, y, j->n, (float)j->scale, keep);
            softmax_row_f32(y, y, j->n);
        } else {
            double *y = (double *)j->out + r * j->n;
            logits_row_f64((const double *)j->a + r * j->n, y, j->n, j->scale, keep);
            softmax_row_f64(y, y, j->n);
        }
    }
}

static void softmax_rows(void *ctx, int64_t r0, int64_t r1)
{
    const rows_job *j = ctx;
    for (int64_t r = r0; r < r1; r++) {
        if (j->dt == NDL_FLOAT32)
            softmax_row_f32((const float *)j->a + r * j->n, (float *)j->out + r * j->n, j->n);
        else
            softmax_row_f64((const double *)j->a + r * j->n, (double *)j->out + r * j->n, j->n);
    }
}

static void softmax_grad_rows(void *ctx, int64_t r0, int64_t r1)
{
    const rows_job *j = ctx;
    for (int64_t r = r0; r < r1; r++) {
        if (j->dt == NDL_FLOAT32)
            softmax_grad_row_f32((const float *)j->a + r * j->n, (const float *)j->b + r * j->n,
                                 (float *)j->out + r * j->n, j->n);
        else
            softmax_grad_row_f64((const double *)j->a + r * j->n, (const double *)j->b + r * j->n,
                                 (double *)j->out + r * j->n, j->n);
    }
}

typedef struct {
    ndl_dtype dt;
    const void *z;
    const int64_t *y;
    double *loss; /* one per row */
    int64_t k;
} xent_job;

static void xent_rows(void *ctx, int64_t r0, int64_t r1)
{
    const xent_job *j = ctx;
    for (int64_t r = r0; r < r1; r++) {
        if (j->dt == NDL_FLOAT32)
            j->loss[r] = xent_row_f32((const float *)j->z + r * j->k, j->k, j->y[r]);
        else
            j->loss[r] = xent_row_f64((const double *)j->z + r * j->k, j->k, j->y[r]);
    }
}

typedef struct {
    ndl_dtype dt;
    const void *z;
    const int64_t *y;
    void *out; /* (rows, k) */
    double gb;
    int64_t k;
} xent_grad_job;

static void xent_grad_rows(void *ctx, int64_t r0, int64_t r1)
{
    const xent_grad_job *j = ctx;
    for (int64_t r = r0; r < r1; r++) {
        if (j->dt == NDL_FLOAT32)
            xent_grad_row_f32((const float *)j->z + r * j->k, (float *)j->out + r * j->k, j->k,
                              j->y[r], (float)j->gb);
        else
            xent_grad_row_f64((const double *)j->z + r * j->k, (double *)j->out + r * j->k,
                              j->k, j->y[r], j->gb);
    }
}

/* about 16k elements per task: below that waking the pool costs more */
static int64_t grain_of(int64_t n) { return n < 16384 ? 16384 / n : 1; }

/* ---- the slots ------------------------------------------------------------ */

int ndl_cpu_softmax(ndl_dtype dt, int64_t rows, int64_t n, const void *z,
                    const ndl_attention_mask *mask, void *out)
{
    rows_job job = {dt, z, NULL, out, n, 1.0, 0, 1};
    if (rows < 0 || n < 0 || (mask != NULL && mask->causal && mask->rows < 1))
        return NDL_EINVAL;
    if (rows == 0 || n == 0)
        return NDL_OK;
    if (mask != NULL)
        job.scale = mask->scale, job.causal = mask->causal != 0, job.rows = mask->rows;
    ndl_parallel_for(rows, grain_of(n), mask != NULL ? attention_softmax_rows : softmax_rows, &job);
    return NDL_OK;
}

int ndl_cpu_softmax_grad(ndl_dtype dt, int64_t rows, int64_t n, const void *y, const void *g,
                         void *out)
{
    rows_job job = {dt, y, g, out, n, 1.0, 0, 1};
    if (rows < 0 || n < 0)
        return NDL_EINVAL;
    if (rows == 0 || n == 0)
        return NDL_OK;
    ndl_parallel_for(rows, grain_of(n), softmax_grad_rows, &job);
    return NDL_OK;
}

int ndl_cpu_softmax_xent(ndl_dtype dt, int64_t rows, int64_t n, const void *z,
                         const int64_t *labels, double *loss)
{
    xent_job job = {dt, z, labels, loss, n};
    if (rows < 0 || n < 1)
        return rows == 0 ? NDL_OK : NDL_EINVAL;
    for (int64_t r = 0; r < rows; r++)
        if (labels[r] < 0 || labels[r] >= n)
            return NDL_EINVAL;
    ndl_parallel_for(rows, grain_of(n), xent_rows, &job);
    return NDL_OK;
}

int ndl_cpu_softmax_xent_grad(ndl_dtype dt, int64_t rows, int64_t n, const void *z,
                              const int64_t *labels, double gb, void *out)
{
    xent_grad_job job = {dt, z, labels, out, gb, n};
    if (rows < 0 || n < 1)
        return rows == 0 ? NDL_OK : NDL_EINVAL;
    for (int64_t r = 0; r < rows; r++)
        if (labels[r] < 0 || labels[r] >= n)
            return NDL_EINVAL;
    ndl_parallel_for(rows, grain_of(n), xent_grad_rows, &job);
    return NDL_OK;
}
