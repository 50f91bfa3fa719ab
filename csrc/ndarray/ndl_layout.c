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
