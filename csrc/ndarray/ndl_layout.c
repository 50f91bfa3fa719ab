/* ndl_layout.c: helpers on strided layouts (Note [Layouts] in ndl_core.h)
 * and the op-name tables generated from the .def files. */
#include "ndl_core.h"

const char *const ndl_unop_names[NDL_NUM_UNARY] = {
#define X(NAME, name) #name,
#include "unary_ops.def"
#undef X
};

const char *const ndl_binop_names[NDL_NUM_BINARY] = {
#define X(NAME, name) #name,
#include "binary_ops.def"
#undef X
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
