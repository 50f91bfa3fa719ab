/* row_reduce.h: the row reductions the fused softmax ops share (ops_attention.c's
 * softmax rows, ops_softmax.c's cross-entropy rows). Eight partial results so that
 * gcc vectorizes them without -ffast-math; the order of the sums is fixed, so the
 * results do not depend on the threads.
 */
#ifndef NDL_ROW_REDUCE_H
#define NDL_ROW_REDUCE_H

#include <float.h>
#include <stdint.h>

/* The pairwise sum of eight partial sums acc[0..7]. */
#define NDL_SUM8(acc)                                                                              \
    ((((acc)[0] + (acc)[1]) + ((acc)[2] + (acc)[3])) +                                             \
     (((acc)[4] + (acc)[5]) + ((acc)[6] + (acc)[7])))

/* row_max_<sfx>(z, n): the largest of z[0..n), clamped to BIG so that a row of +inf
 * gives inf - BIG = inf and then NaN, as NumPy; -BIG for an empty row. */
#define NDL_ROW_MAX(T, sfx, BIG)                                                                   \
    static inline T row_max_##sfx(const T *z, int64_t n)                                           \
    {                                                                                              \
        T mx[8], m;                                                                                \
        int64_t i = 0;                                                                             \
        for (int k = 0; k < 8; k++)                                                                \
            mx[k] = -(BIG);                                                                        \
        for (; i + 8 <= n; i += 8)                                                                 \
            for (int k = 0; k < 8; k++)                                                            \
                mx[k] = z[i + k] > mx[k] ? z[i + k] : mx[k];                                       \
        for (; i < n; i++)                                                                         \
            mx[0] = z[i] > mx[0] ? z[i] : mx[0];                                                   \
        m = mx[0];                                                                                 \
        for (int k = 1; k < 8; k++)                                                                \
            m = mx[k] > m ? mx[k] : m;                                                             \
        return m < (BIG) ? m : (BIG);                                                              \
    }
NDL_ROW_MAX(float, f32, FLT_MAX)
NDL_ROW_MAX(double, f64, DBL_MAX)

#endif /* NDL_ROW_REDUCE_H */
