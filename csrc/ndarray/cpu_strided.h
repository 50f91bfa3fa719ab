/* cpu_strided.h: walking strided layouts, shared by the CPU kernels
 * (cpu_ewise.c, cpu_copy.c, cpu_reduce.c). Internal; not part of ndl_core.h.
 *
 * Note [Strided iteration]
 *   Every CPU kernel runs an "inner loop" over the last dimension of a
 *   strided iteration space and steps an N-d index counter over the others.
 *   Before that, the space is simplified for all operands at once:
 *     - dimensions of length 1 are dropped (their stride never matters);
 *     - adjacent dimensions i, i+1 merge when, for every operand,
 *       stride[i] == stride[i+1] * shape[i+1].
 *   So a contiguous array becomes one dimension however many it had, a
 *   broadcast scalar (all strides 0) becomes one dimension with stride 0, and
 *   `matrix + row` becomes two, with a long contiguous inner loop. Strides
 *   may be 0 or negative; nothing here assumes otherwise.
 */
#ifndef NDL_CPU_STRIDED_H
#define NDL_CPU_STRIDED_H

#include "ndl_core.h"

#define NDL_ITER_MAX_OPS 3

typedef struct {
    int nops;
    int ndim;                                      /* after simplification; may be 0 */
    int64_t shape[NDL_MAX_DIMS];
    int64_t strides[NDL_ITER_MAX_OPS][NDL_MAX_DIMS]; /* in elements, per operand */
} ndl_iter;

/* Build the simplified space of `ndim`/`shape` for `nops` operands whose
 * strides are strides[k][0..ndim). The total size must be > 0. */
static inline void ndl_iter_init(ndl_iter *it, int ndim, const int64_t *shape, int nops,
                                 const int64_t *const *strides)
{
    int nd = 0;
    it->nops = nops;
    /* Walk from the innermost dimension out, building the result reversed. */
    for (int j = ndim - 1; j >= 0; j--) {
        if (shape[j] == 1)
            continue;
        int merge = nd > 0;
        for (int k = 0; k < nops && merge; k++)
            merge = strides[k][j] == it->strides[k][nd - 1] * it->shape[nd - 1];
        if (merge) {
            it->shape[nd - 1] *= shape[j];
        } else {
            it->shape[nd] = shape[j];
            for (int k = 0; k < nops; k++)
                it->strides[k][nd] = strides[k][j];
            nd++;
        }
    }
    /* Reverse into row-major order (outermost first). */
    for (int lo = 0, hi = nd - 1; lo < hi; lo++, hi--) {
        int64_t t = it->shape[lo];
        it->shape[lo] = it->shape[hi];
        it->shape[hi] = t;
        for (int k = 0; k < nops; k++) {
            t = it->strides[k][lo];
            it->strides[k][lo] = it->strides[k][hi];
            it->strides[k][hi] = t;
        }
    }
    it->ndim = nd;
}

/* Length and per-operand strides of the inner loop (1 and 0 for a 0-d space). */
static inline int64_t ndl_iter_inner(const ndl_iter *it)
{
    return it->ndim ? it->shape[it->ndim - 1] : 1;
}
static inline int64_t ndl_iter_inner_stride(const ndl_iter *it, int k)
{
    return it->ndim ? it->strides[k][it->ndim - 1] : 0;
}
/* Number of inner-loop rows (product of all but the last dimension). */
static inline int64_t ndl_iter_rows(const ndl_iter *it)
{
    int64_t r = 1;
    for (int j = 0; j + 1 < it->ndim; j++)
        r *= it->shape[j];
    return r;
}

/* An N-d counter over the outer dimensions (all but the last) of an
 * ndl_iter, tracking each operand's element offset of the current row. */
typedef struct {
    int64_t idx[NDL_MAX_DIMS];
    int64_t off[NDL_ITER_MAX_OPS];
} ndl_iter_pos;

/* Position at row `row` (row-major over the outer dimensions). */
static inline void ndl_iter_seek(const ndl_iter *it, ndl_iter_pos *p, int64_t row)
{
    for (int k = 0; k < it->nops; k++)
        p->off[k] = 0;
    for (int j = it->ndim - 2; j >= 0; j--) {
        int64_t i = row % it->shape[j];
        row /= it->shape[j];
        p->idx[j] = i;
        for (int k = 0; k < it->nops; k++)
            p->off[k] += i * it->strides[k][j];
    }
}

/* Advance to the next row. */
static inline void ndl_iter_next(const ndl_iter *it, ndl_iter_pos *p)
{
    for (int j = it->ndim - 2; j >= 0; j--) {
        if (++p->idx[j] < it->shape[j]) {
            for (int k = 0; k < it->nops; k++)
                p->off[k] += it->strides[k][j];
            return;
        }
        p->idx[j] = 0;
        for (int k = 0; k < it->nops; k++)
            p->off[k] -= (it->shape[j] - 1) * it->strides[k][j];
    }
}

/* Checks every kernel makes on a layout it is handed. */
static inline int ndl_layout_ok(const ndl_layout *l)
{
    if (!l || l->ndim < 0 || l->ndim > NDL_MAX_DIMS)
        return 0;
    for (int i = 0; i < l->ndim; i++)
        if (l->shape[i] < 0)
            return 0;
    return 1;
}

static inline int ndl_same_shape(const ndl_layout *a, const ndl_layout *b)
{
    if (a->ndim != b->ndim)
        return 0;
    for (int i = 0; i < a->ndim; i++)
        if (a->shape[i] != b->shape[i])
            return 0;
    return 1;
}

#endif /* NDL_CPU_STRIDED_H */
