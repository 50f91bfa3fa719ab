/* ndl_checked.h: checked int64 arithmetic for sizes, strides and offsets.
 *
 * Every size, stride and offset computed from user input goes through these
 * helpers (Note [Checked sizes]); nothing else multiplies or adds them raw.
 * Each returns 0 on success and -1 on overflow, leaving *out unspecified,
 * and never touches Python: callers raise, naming what they were computing.
 *
 * Note [Checked sizes]
 *   A shape is valid when no dimension is negative and the product of its
 *   non-zero dimensions is at most NDL_MAX_ELEMS (2**56 elements, so its
 *   size in bytes also fits in int64), as NumPy's "array is too big" rule:
 *   zero dimensions are left out so that (0, 2**40, 2**40) is refused
 *   rather than taken for a harmless empty array. Every NDArray's shape is
 *   valid, so prod(shape), its compact strides and their partial products
 *   never overflow, and the kernels may compute them unchecked. A non-empty
 *   view's element range [lo, hi] (ndl_checked_extent) lies inside its
 *   buffer, so every offset a kernel forms inside that range fits too. An
 *   empty view may carry any strides and offset (as NumPy's as_strided
 *   allows), so views of it are computed with these helpers.
 */
#ifndef NDL_CHECKED_H
#define NDL_CHECKED_H

#include <stdint.h>

#include "ndl_core.h"

#define NDL_MAX_ELEMS ((int64_t)1 << 56)

static inline int ndl_add_checked(int64_t a, int64_t b, int64_t *out)
{
    return __builtin_add_overflow(a, b, out) ? -1 : 0;
}

static inline int ndl_mul_checked(int64_t a, int64_t b, int64_t *out)
{
    return __builtin_mul_overflow(a, b, out) ? -1 : 0;
}

/* *out = a * b + c. */
static inline int ndl_muladd_checked(int64_t a, int64_t b, int64_t c, int64_t *out)
{
    int64_t t;
    return ndl_mul_checked(a, b, &t) < 0 ? -1 : ndl_add_checked(t, c, out);
}

/* The element count of a shape with non-negative dims into *out: -1 when the
 * product of its non-zero dimensions exceeds NDL_MAX_ELEMS (Note [Checked
 * sizes]). */
static inline int ndl_checked_size(int ndim, const int64_t *shape, int64_t *out)
{
    int64_t nonzero = 1;
    int zero = 0;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] == 0)
            zero = 1;
        else if (ndl_mul_checked(nonzero, shape[i], &nonzero) < 0 || nonzero > NDL_MAX_ELEMS)
            return -1;
    }
    *out = zero ? 0 : nonzero;
    return 0;
}

/* Bytes of n elements of dt, n >= 0. */
static inline int ndl_checked_nbytes(int64_t n, ndl_dtype dt, int64_t *out)
{
    return n < 0 ? -1 : ndl_mul_checked(n, (int64_t)ndl_itemsize(dt), out);
}

/* The range [*lo, *hi] of elements a non-empty layout reaches: offset plus
 * the negative (lo) and positive (hi) spans (shape[i] - 1) * strides[i]. */
static inline int ndl_checked_extent(const ndl_layout *l, int64_t *lo, int64_t *hi)
{
    int64_t a = l->offset, b = l->offset;
    for (int i = 0; i < l->ndim; i++) {
        int64_t span;
        if (ndl_mul_checked(l->shape[i] - 1, l->strides[i], &span) < 0 ||
            ndl_add_checked(span < 0 ? a : b, span, span < 0 ? &a : &b) < 0)
            return -1;
    }
    *lo = a, *hi = b;
    return 0;
}

#endif /* NDL_CHECKED_H */
