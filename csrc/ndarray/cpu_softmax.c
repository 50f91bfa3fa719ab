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
#include <stdlib.h>

#include "backend.h"
#include "cpu_rows.h"
#include "scalar_ops.h"
#include "threadpool.h"

/* ---- the row loops (each built twice: Note [Row loops for AVX2], cpu_rows.h) */

/* Eight partial maxima / sums so that gcc vectorizes the reductions without
 * -ffast-math; the results do not depend on the threads. */
#define NDL_SOFTMAX_ROWS(T, sfx, BIG)                                                              \
    NDL_ROW_CLONES static void softmax_row_##sfx(const T *z, T *y, int64_t n) /* y may be z */   \
    {                                                                                              \
        T m = row_max_##sfx(z, n), s;                                                              \
        for (int64_t i = 0; i < n; i++)                                                            \
            y[i] = ndl_exp_##sfx(z[i] - m);                                                        \
        NDL_SUM8_OF(T, n, i, y[i], s);                                                             \
        for (int64_t i = 0; i < n; i++)                                                            \
            y[i] = y[i] / s;                                                                       \
    }                                                                                              \
    NDL_ROW_CLONES static void softmax_grad_row_##sfx(const T *restrict y, const T *restrict g,    \
                                                      T *restrict o, int64_t n)                   \
    {                                                                                              \
        T s;                                                                                       \
        NDL_SUM8_OF(T, n, i, g[i] * y[i], s);                                                      \
        for (int64_t i = 0; i < n; i++)                                                            \
            o[i] = y[i] * (g[i] - s);                                                              \
    }
/* x / c + (-FLT_MAX where j >= keep): the logits of one attention row */
#define NDL_LOGITS_ROW(T, sfx)                                                                     \
    NDL_ROW_CLONES static void logits_row_##sfx(const T *restrict x, T *restrict z, int64_t n,     \
                                                T c, int64_t keep)                                 \
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
    NDL_ROW_CLONES static double xent_row_##sfx(const T *z, int64_t n, int64_t y)                  \
    {                                                                                              \
        T m = row_max_##sfx(z, n), s;                                                              \
        NDL_SUM8_OF(T, n, i, ndl_exp_##sfx(z[i] - m), s);                                          \
        return ((double)m - (double)z[y]) + log((double)s);                                        \
    }
NDL_XENT_ROW(float, f32, FLT_MAX)
NDL_XENT_ROW(double, f64, DBL_MAX)

/* (softmax(z) + (-1 at y, 0 elsewhere)) * gb of one row: the loss's gradient
 * (Note [Fused loss backward], ops_softmax.c), the composition's numbers */
#define NDL_XENT_GRAD_ROW(T, sfx)                                                                  \
    NDL_ROW_CLONES static void xent_grad_row_##sfx(const T *z, T *o, int64_t n, int64_t y, T gb)   \
    {                                                                                              \
        softmax_row_##sfx(z, o, n);                                                                \
        o[y] = o[y] + (T)-1.0;                                                                     \
        for (int64_t i = 0; i < n; i++)                                                            \
            o[i] = o[i] * gb;                                                                      \
    }
NDL_XENT_GRAD_ROW(float, f32)
NDL_XENT_GRAD_ROW(double, f64)

/* ---- the jobs over the thread pool (cpu_rows.h) --------------------------- */

/* attention: x / scale, then -FLT_MAX at the columns j >= keep when causal
 * (row r is query r % mrows of a (mrows, n) matrix), then softmax in place */
#define ATTENTION_ROW(T, sfx, j, r)                                                                \
    do {                                                                                           \
        T *y_ = NDL_ROW(T, (j)->out, j, r);                                                        \
        int64_t keep_ = (j)->causal ? (r) % (j)->mrows + (j)->n - (j)->mrows + 1 : (j)->n;        \
        logits_row_##sfx(NDL_CROW(T, (j)->a, j, r), y_, (j)->n, (T)(j)->s, keep_);                 \
        softmax_row_##sfx(y_, y_, (j)->n);                                                         \
    } while (0)
#define SOFTMAX_ROW(T, sfx, j, r)                                                                  \
    softmax_row_##sfx(NDL_CROW(T, (j)->a, j, r), NDL_ROW(T, (j)->out, j, r), (j)->n)
#define SOFTMAX_GRAD_ROW(T, sfx, j, r)                                                             \
    softmax_grad_row_##sfx(NDL_CROW(T, (j)->a, j, r), NDL_CROW(T, (j)->b, j, r),                  \
                           NDL_ROW(T, (j)->out, j, r), (j)->n)
#define XENT_ROW(T, sfx, j, r)                                                                     \
    ((j)->loss[r] = xent_row_##sfx(NDL_CROW(T, (j)->a, j, r), (j)->n, (j)->labels[r]))
#define XENT_GRAD_ROW(T, sfx, j, r)                                                                \
    xent_grad_row_##sfx(NDL_CROW(T, (j)->a, j, r), NDL_ROW(T, (j)->out, j, r), (j)->n,            \
                        (j)->labels[r], (T)(j)->s)
NDL_ROWS_TASK(attention_softmax_rows, ATTENTION_ROW)
NDL_ROWS_TASK(softmax_rows, SOFTMAX_ROW)
NDL_ROWS_TASK(softmax_grad_rows, SOFTMAX_GRAD_ROW)
NDL_ROWS_TASK(xent_rows, XENT_ROW)
NDL_ROWS_TASK(xent_grad_rows, XENT_GRAD_ROW)

/* 0 when every label is in [0, n) */
static int bad_labels(int64_t rows, int64_t n, const int64_t *labels)
{
    for (int64_t r = 0; r < rows; r++)
        if (labels[r] < 0 || labels[r] >= n)
            return 1;
    return 0;
}

/* ---- the slots ------------------------------------------------------------ */

int ndl_cpu_softmax(ndl_dtype dt, int64_t rows, int64_t n, const void *z,
                    const ndl_attention_mask *mask, void *out)
{
    ndl_rows_job job = {.dt = dt, .n = n, .a = z, .out = out, .s = 1.0, .mrows = 1};
    if (rows < 0 || n < 0 || (mask != NULL && mask->causal && mask->rows < 1))
        return NDL_EINVAL;
    if (rows == 0 || n == 0)
        return NDL_OK;
    if (mask != NULL)
        job.s = mask->scale, job.causal = mask->causal != 0, job.mrows = mask->rows;
    ndl_parallel_for(rows, ndl_rows_grain(n), mask != NULL ? attention_softmax_rows : softmax_rows,
                     &job);
    return NDL_OK;
}

int ndl_cpu_softmax_grad(ndl_dtype dt, int64_t rows, int64_t n, const void *y, const void *g,
                         void *out)
{
    ndl_rows_job job = {.dt = dt, .n = n, .a = y, .b = g, .out = out};
    if (rows < 0 || n < 0)
        return NDL_EINVAL;
    if (rows == 0 || n == 0)
        return NDL_OK;
    ndl_parallel_for(rows, ndl_rows_grain(n), softmax_grad_rows, &job);
    return NDL_OK;
}

/* the rows' losses into a scratch array, summed in row order in double (the
 * value does not depend on the threads), divided by rows, rounded to dt into
 * *loss; 0 rows give 0 / 0 as before (NaN) */
int ndl_cpu_softmax_xent(ndl_dtype dt, int64_t rows, int64_t n, const void *z,
                         const int64_t *labels, void *loss)
{
    ndl_rows_job job = {.dt = dt, .n = n, .a = z, .labels = labels};
    double total = 0, mean;
    if (rows < 0 || (rows > 0 && n < 1) || (dt != NDL_FLOAT32 && dt != NDL_FLOAT64))
        return NDL_EINVAL;
    if (rows > 0) {
        if (bad_labels(rows, n, labels))
            return NDL_EINVAL;
        if ((job.loss = malloc((size_t)rows * sizeof(double))) == NULL)
            return NDL_ENOMEM;
        ndl_parallel_for(rows, ndl_rows_grain(n), xent_rows, &job);
        for (int64_t r = 0; r < rows; r++)
            total += job.loss[r];
        free(job.loss);
    }
    mean = total / (double)rows;
    if (dt == NDL_FLOAT32)
        *(float *)loss = (float)mean;
    else
        *(double *)loss = mean;
    return NDL_OK;
}

/* gb = g / rows in g's dtype (DivScalar's numbers), rounded to dt by the row loop */
int ndl_cpu_softmax_xent_grad(ndl_dtype dt, int64_t rows, int64_t n, const void *z,
                              const int64_t *labels, ndl_dtype gdt, const void *g, void *out)
{
    ndl_rows_job job = {.dt = dt, .n = n, .a = z, .labels = labels, .out = out};
    if (rows < 0 || n < 1)
        return rows == 0 ? NDL_OK : NDL_EINVAL;
    if (bad_labels(rows, n, labels) || (gdt != NDL_FLOAT32 && gdt != NDL_FLOAT64))
        return NDL_EINVAL;
    job.s = gdt == NDL_FLOAT32 ? (double)(*(const float *)g / (float)rows)
                               : *(const double *)g / (double)rows;
    ndl_parallel_for(rows, ndl_rows_grain(n), xent_grad_rows, &job);
    return NDL_OK;
}
