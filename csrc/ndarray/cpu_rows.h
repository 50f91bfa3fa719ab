/* cpu_rows.h: what the CPU's fused row kernels share (cpu_softmax.c,
 * cpu_layernorm.c): one struct of arguments for every row job, the per-dtype
 * dispatch over a range of rows, and the row sum in its fixed order.
 *
 * A row kernel is a pair of functions <name>_f32 / <name>_f64 of one row; a
 * job runs it over rows [r0, r1) from the thread pool:
 *     #define SOFTMAX_ROW(T, sfx, j, r) \
 *         softmax_row_##sfx(NDL_CROW(T, (j)->a, j, r), NDL_ROW(T, (j)->out, j, r), (j)->n)
 *     NDL_ROWS_TASK(softmax_rows, SOFTMAX_ROW)
 *     ndl_parallel_for(rows, ndl_rows_grain(n), softmax_rows, &job);
 */
#ifndef NDL_CPU_ROWS_H
#define NDL_CPU_ROWS_H

#include <stdint.h>

#include "ndl_core.h"
#include "row_reduce.h"

/* Note [Row loops for AVX2]
 *   The row loops are plain C that gcc vectorizes (exp's polynomial, the
 *   eight partial sums, the divisions); built for the x86-64 baseline they
 *   run four floats at a time. NDL_ROW_CLONES compiles a row loop twice,
 *   for the baseline and for AVX2 (eight at a time), and the loader picks
 *   one by the CPU (gcc's target_clones, an ifunc). AVX2 without FMA, as
 *   the elementwise kernels (cpu_ewise.c): the same operations in the same
 *   order, so the same bits on every machine (checked against a
 *   -DNDL_CPU_BASELINE_ONLY build). The softmax loss's forward and backward
 *   over 1,280 x 10,000 logits (the LSTM language model's), 2 threads, AMD
 *   EPYC Zen 2: 38 -> 20 ms. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(NDL_CPU_BASELINE_ONLY) &&               \
    defined(__has_attribute)
#if __has_attribute(target_clones)
#define NDL_ROW_CLONES __attribute__((target_clones("avx2", "default")))
#endif
#endif
#ifndef NDL_ROW_CLONES
#define NDL_ROW_CLONES
#endif

typedef struct ndl_rows_job {
    ndl_dtype dt;
    int64_t n;             /* row length */
    const void *a, *b, *c; /* the inputs, as each kernel names them */
    void *out, *out2;      /* (rows, n) output; a second output or scratch */
    const int64_t *labels; /* one per row (the cross-entropy rows) */
    double *loss;          /* one per row (the cross-entropy rows) */
    double s;              /* the scalar parameter (scale, eps, g / rows) */
    int causal;            /* attention: causal mask over (mrows, n) */
    int64_t mrows;
} ndl_rows_job;

/* Row r of the (rows, n) buffer p of T, writable or read-only. */
#define NDL_ROW(T, p, j, r) ((T *)(p) + (r) * (j)->n)
#define NDL_CROW(T, p, j, r) ((const T *)(p) + (r) * (j)->n)

/* static void name(void *ctx, int64_t r0, int64_t r1): ROW(T, sfx, j, r) for
 * every row r in [r0, r1), T / sfx float / f32 or double / f64 by j->dt. */
#define NDL_ROWS_TASK(name, ROW)                                                                   \
    static void name(void *ctx, int64_t r0, int64_t r1)                                           \
    {                                                                                              \
        const ndl_rows_job *j = ctx;                                                               \
        for (int64_t r = r0; r < r1; r++) {                                                        \
            if (j->dt == NDL_FLOAT32)                                                              \
                ROW(float, f32, j, r);                                                             \
            else                                                                                   \
                ROW(double, f64, j, r);                                                            \
        }                                                                                          \
    }

/* Rows per task: about 16k elements; below that waking the pool costs more. */
static inline int64_t ndl_rows_grain(int64_t n) { return n < 16384 ? 16384 / n : 1; }

/* out = the sum of `term` over i in [0, n) in the rows' fixed order: eight
 * partial sums acc[i % 8] of i < n rounded down to a multiple of 8, the tail
 * added to acc[0], then NDL_SUM8 (eight lanes so that gcc vectorizes it
 * without -ffast-math; cuda_rows.cuh follows the same order). `term` is an
 * expression of the index named i. */
#define NDL_SUM8_OF(T, n, i, term, out)                                                            \
    do {                                                                                           \
        T acc8_[8] = {0};                                                                          \
        int64_t b8_ = 0;                                                                           \
        for (; b8_ + 8 <= (n); b8_ += 8)                                                           \
            for (int k8_ = 0; k8_ < 8; k8_++) {                                                    \
                const int64_t i = b8_ + k8_;                                                       \
                acc8_[k8_] += (term);                                                              \
            }                                                                                      \
        for (; b8_ < (n); b8_++) {                                                                 \
            const int64_t i = b8_;                                                                 \
            acc8_[0] += (term);                                                                    \
        }                                                                                          \
        (out) = NDL_SUM8(acc8_);                                                                   \
    } while (0)

#endif /* NDL_CPU_ROWS_H */
