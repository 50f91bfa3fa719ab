/* ndl_layout.c: helpers on strided layouts (Note [Layouts] in ndl_core.h)
 * and the kernel-name tables generated from the op rows (../ops.def). */
#include <stdio.h>
#include <stdlib.h>

#include "ndl_core.h"

#ifndef NDEBUG
void ndl_assert_fail(const char *cond, const char *file, int line)
{
    fprintf(stderr, "needle: internal invariant failed: %s (%s:%d)\n", cond, file, line);
    abort();
}
#endif

const char *const ndl_unop_names[NDL_NUM_UNARY] = {
#define NDL_UNARY_KERNEL(KERNEL, kernel, numpy, method) #kernel,
#include "ops.def"
};

const char *const ndl_binop_names[NDL_NUM_BINARY] = {
#define NDL_BINARY_KERNEL(KERNEL, kernel, numpy, method) #kernel,
#include "ops.def"
};

/* NOTE: a reduction's kernel name is its lower-case NumPy name (sum, max). */
const char *const ndl_redop_names[NDL_NUM_REDUCE] = {
#define NDL_REDUCE(Class, func, KERNEL, numpy, method) numpy,
#include "ops.def"
};

int64_t ndl_layout_size(const ndl_layout *l)
{
    int64_t n = 1;
    for (int i = 0; i < l->ndim; i++)
        n *= l->shape[i];
    return n;
}

void ndl_compact_strides(int ndim, const int64_t *shape, int64_t *strides)
{
    int64_t s = 1;
    for (int i = ndim - 1; i >= 0; i--) {
        strides[i] = s;
        s *= shape[i];
    }
}

int ndl_layout_is_contiguous(const ndl_layout *l)
{
    int64_t s = 1;
    for (int i = l->ndim - 1; i >= 0; i--) {
        /* NOTE: a dim of length 1 may carry any stride and still be contiguous */
        if (l->shape[i] != 1 && l->strides[i] != s)
            return 0;
        s *= l->shape[i];
    }
    return 1;
}

ndl_layout ndl_layout_permuted(const ndl_layout *l, const int *perm)
{
    ndl_layout r = *l;
    for (int i = 0; i < l->ndim; i++)
        r.shape[i] = l->shape[perm[i]], r.strides[i] = l->strides[perm[i]];
    return r;
}

int ndl_layout_dense_order(const ndl_layout *l, int *perm)
{
    int n = 0, ones = 0, sorted = 1;
    int64_t s = 1;
    /* the axes longer than 1, by decreasing stride (insertion sort: ndim is
     * small), after the axes of length 1 in their own order */
    for (int i = 0; i < l->ndim; i++)
        if (l->shape[i] == 1)
            perm[ones++] = i;
    for (int i = 0; i < l->ndim; i++) {
        if (l->shape[i] == 1)
            continue;
        int j = ones + n++;
        while (j > ones && l->strides[perm[j - 1]] < l->strides[i]) {
            perm[j] = perm[j - 1];
            j--, sorted = 0;
        }
        perm[j] = i;
    }
    if (sorted)
        return 0; /* row-major already, or with its long axes in order */
    for (int k = l->ndim - 1; k >= ones; k--) { /* dense: each stride the extent inside it */
        if (l->strides[perm[k]] != s)
            return 0;
        s *= l->shape[perm[k]];
    }
    return 1;
}
