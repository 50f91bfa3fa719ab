/* ops_shape.c: ops that move elements without arithmetic, and the
 * reductions (API.md 4.1, 4.5): Transpose, Permute, Reshape, BroadcastTo,
 * Flip, Dilate, UnDilate; the forward of every reduction row and the
 * backward of Summation and Max. Forward and backward of each sit together;
 * the backward of a move is the op's "inverse" applied to g.
 */
#include <string.h>

#include "array_api.h"
#include "ndl_checked.h"

#define IN(k) PyTuple_GET_ITEM(node->inputs, (k))
#define G ((PyObject *)g)

/* The op's axes normalised for rank ndim into out (all axes when None).
 * skip_large: drop axes >= ndim silently (Dilate's rule) instead of failing. */
static int op_axes(OpObject *op, int ndim, int *naxes, int64_t *out, int skip_large)
{
    return ndl_normalize_axes(op->axes.given ? op->axes.n : -1, op->axes.v, ndim, skip_large,
                              op->def->name, naxes, out, NULL);
}

static int input_shape(ValueObject *node, int k, int *ndim, int64_t *shape)
{
    return ndl_value_shape((ValueObject *)IN(k), ndim, shape);
}

/* ---- Transpose(axes=None): swap two axes (the last two by default) -------- */
static int transpose_axes(OpObject *op, int ndim, int64_t *ax0, int64_t *ax1)
{
    if (!op->axes.given) {
        if (ndim < 2) {
            PyErr_Format(PyExc_ValueError, "Transpose: needs at least 2 dimensions, got %d", ndim);
            return -1;
        }
        *ax0 = ndim - 2, *ax1 = ndim - 1;
        return 0;
    }
    if (op->axes.n != 2) {
        PyErr_Format(PyExc_ValueError, "Transpose: axes must be a pair, got %d axes", op->axes.n);
        return -1;
    }
    if (ndl_normalize_axis(op->axes.v[0], ndim, ax0) < 0 ||
        ndl_normalize_axis(op->axes.v[1], ndim, ax1) < 0)
        return -1;
    return 0;
}
NDL_FORWARD(Transpose)
{
    int64_t shape[NDL_MAX_DIMS], a0, a1;
    int ndim, perm[NDL_MAX_DIMS];
    if (nda_shape(x[0], &ndim, shape) < 0 || transpose_axes(op, ndim, &a0, &a1) < 0)
        return NULL;
    for (int i = 0; i < ndim; i++)
        perm[i] = i;
    perm[a0] = (int)a1, perm[a1] = (int)a0;
    return nda_permute(x[0], perm);
}
NDL_BACKWARD(Transpose)
{
    int64_t shape[NDL_MAX_DIMS], a0, a1;
    int ndim;
    if (input_shape(node, 0, &ndim, shape) < 0 || transpose_axes(op, ndim, &a0, &a1) < 0)
        return -1;
    grads[0] = ndl_t_transpose(G, a0, a1);
    return grads[0] ? 0 : -1;
}

/* ---- Permute(axes=None): reorder all axes (reversed when None) ------------ */
static int permute_axes(OpObject *op, int ndim, int *perm)
{
    int64_t axes[NDL_MAX_DIMS];
    int naxes;
    if (!op->axes.given) {
        for (int i = 0; i < ndim; i++)
            perm[i] = ndim - 1 - i;
        return 0;
    }
    if (op->axes.n != ndim) {
        PyErr_Format(PyExc_ValueError, "Permute: axes has %d entries for an input of %d dimensions",
                     op->axes.n, ndim);
        return -1;
    }
    if (ndl_normalize_axes(op->axes.n, op->axes.v, ndim, 0, "Permute", &naxes, axes, NULL) < 0)
        return -1;
    for (int i = 0; i < ndim; i++)
        perm[i] = (int)axes[i];
    return 0;
}
NDL_FORWARD(Permute)
{
    int64_t shape[NDL_MAX_DIMS];
    int ndim, perm[NDL_MAX_DIMS];
    if (nda_shape(x[0], &ndim, shape) < 0 || permute_axes(op, ndim, perm) < 0)
        return NULL;
    return nda_permute(x[0], perm);
}
/* -> permute(g, the inverse permutation) */
NDL_BACKWARD(Permute)
{
    int64_t shape[NDL_MAX_DIMS], inv[NDL_MAX_DIMS];
    int ndim, perm[NDL_MAX_DIMS];
    if (input_shape(node, 0, &ndim, shape) < 0 || permute_axes(op, ndim, perm) < 0)
        return -1;
    for (int i = 0; i < ndim; i++)
        inv[perm[i]] = i;
    grads[0] = ndl_t_permute(G, ndim, inv);
    return grads[0] ? 0 : -1;
}

/* ---- Reshape(shape) -> reshape(g, a.shape) --------------------------------- */
NDL_FORWARD(Reshape)
{
    return nda_reshape(x[0], op->shape.ndim, op->shape.dims);
}
NDL_BACKWARD(Reshape)
{
    int64_t shape[NDL_MAX_DIMS];
    int ndim;
    if (input_shape(node, 0, &ndim, shape) < 0)
        return -1;
    grads[0] = ndl_t_reshape(G, ndim, shape);
    return grads[0] ? 0 : -1;
}

/* ---- BroadcastTo(shape) -> unbroadcast(g, a.shape) ------------------------- */
NDL_FORWARD(BroadcastTo)
{
    return nda_broadcast_to(x[0], op->shape.ndim, op->shape.dims);
}
NDL_BACKWARD(BroadcastTo)
{
    int64_t shape[NDL_MAX_DIMS];
    int ndim;
    if (input_shape(node, 0, &ndim, shape) < 0)
        return -1;
    grads[0] = ndl_t_unbroadcast(G, ndim, shape);
    return grads[0] ? 0 : -1;
}

/* ---- the reductions: Summation(axes=None), Max(axes=None) ----------------- */
NDL_FORWARD(reduce)
{
    int64_t shape[NDL_MAX_DIMS], axes[NDL_MAX_DIMS];
    int ndim, naxes;
    if (nda_shape(x[0], &ndim, shape) < 0 || op_axes(op, ndim, &naxes, axes, 0) < 0)
        return NULL;
    /* NOTE: axes=None gives shape () (unlike NDArray.sum, which gives (1,)). */
    return nda_reduce((ndl_redop)op->def->kernel, x[0], op->axes.given ? naxes : -1, axes, 0);
}

int ndl_grad_of_reduction(ValueObject *g, int ndim, const int64_t *shape, int naxes,
                          const int64_t *axes, PyObject **out)
{
    int64_t kshape[NDL_MAX_DIMS];
    PyObject *r;
    memcpy(kshape, shape, sizeof(int64_t) * ndim);
    for (int i = 0; i < naxes; i++)
        kshape[axes[i]] = 1;
    r = ndl_t_reshape(G, ndim, kshape);
    *out = r ? ndl_t_broadcast_to(r, ndim, shape) : NULL;
    Py_XDECREF(r);
    return *out ? 0 : -1;
}

/* sum over axes -> broadcast(reshape(g, keepdims shape), a.shape) */
NDL_BACKWARD(Summation)
{
    int64_t shape[NDL_MAX_DIMS], axes[NDL_MAX_DIMS];
    int ndim, naxes;
    if (input_shape(node, 0, &ndim, shape) < 0 || op_axes(op, ndim, &naxes, axes, 0) < 0)
        return -1;
    return ndl_grad_of_reduction(g, ndim, shape, naxes, axes, &grads[0]);
}

/* The weights of Max's gradient: 1[a == max] / (number of maxima), a
 * constant taken from the data. NOTE: ties share the gradient equally, as
 * torch.amax does (the result is then the same whichever maximum is kept). */
static PyObject *max_weights(ValueObject *node, int ndim, const int64_t *shape, int naxes,
                             const int64_t *axes)
{
    int64_t kshape[NDL_MAX_DIMS];
    PyObject *a = ndl_value_realize((ValueObject *)IN(0)), *y = ndl_value_realize(node);
    PyObject *yk = NULL, *yb = NULL, *eq = NULL, *cnt = NULL, *w = NULL;
    if (a == NULL || y == NULL)
        return NULL;
    memcpy(kshape, shape, sizeof(int64_t) * ndim);
    for (int i = 0; i < naxes; i++)
        kshape[axes[i]] = 1;
    yk = nda_reshape(y, ndim, kshape);
    yb = yk ? nda_broadcast_to(yk, ndim, shape) : NULL;
    eq = yb ? nda_binary(NDL_BIN_EQ, a, yb) : NULL;
    cnt = eq ? nda_reduce(NDL_RED_SUM, eq, naxes, axes, 1) : NULL;
    w = cnt ? nda_binary(NDL_BIN_DIV, eq, cnt) : NULL;
    Py_XDECREF(yk);
    Py_XDECREF(yb);
    Py_XDECREF(eq);
    Py_XDECREF(cnt);
    return w;
}

/* max over axes -> broadcast(reshape(g, keepdims shape), a.shape) * weights */
NDL_BACKWARD(Max)
{
    int64_t shape[NDL_MAX_DIMS], axes[NDL_MAX_DIMS];
    int ndim, naxes, rc = -1;
    PyObject *gb = NULL, *w = NULL, *wt = NULL;
    if (input_shape(node, 0, &ndim, shape) < 0 || op_axes(op, ndim, &naxes, axes, 0) < 0)
        return -1;
    w = max_weights(node, ndim, shape, naxes, axes);
    wt = w ? ndl_t_const(w) : NULL;
    if (wt == NULL || ndl_grad_of_reduction(g, ndim, shape, naxes, axes, &gb) < 0)
        goto fail;
    grads[0] = ndl_t_multiply(gb, wt);
    rc = grads[0] ? 0 : -1;
fail:
    Py_XDECREF(gb);
    Py_XDECREF(w);
    Py_XDECREF(wt);
    return rc;
}

/* ---- Flip(axes=None) -> flip(g, axes) ------------------------------------- */
NDL_FORWARD(Flip)
{
    int64_t shape[NDL_MAX_DIMS], axes[NDL_MAX_DIMS];
    int ndim, naxes;
    if (nda_shape(x[0], &ndim, shape) < 0 || op_axes(op, ndim, &naxes, axes, 0) < 0)
        return NULL;
    return nda_flip(x[0], naxes, axes);
}
NDL_BACKWARD(Flip)
{
    grads[0] = ndl_t_flip(G, op->axes.given ? op->axes.n : -1, op->axes.v);
    return grads[0] ? 0 : -1;
}

/* ---- Dilate(axes, d): d zeros after every element along axes (4.5) --------
 *
 * Note [Dilate to a length]
 *   A Dilate made by ndl_t_dilate_to (never by the class) also has a length
 *   per listed axis, and keeps only the first length[i] entries along
 *   axes.v[i]. The length must lie in ((n-1)(d+1), n(d+1)], so only trailing
 *   zeros are dropped and undilate(g) still has n entries: the backward is
 *   the same. It exists for two gradients: UnDilate's, whose input of
 *   length m gives n = ceil(m/(d+1)) entries, so dilate(g) alone would be
 *   n(d+1) >= m long; and Conv's, whose strided output gradient is spread
 *   back to exactly (Ho-1)*s + 1 rows (Note [Conv's gradients are convs],
 *   ops_conv.c). */

/* big: the output shape, the input's with n*(d+1) (or the op's length) on
 * the dilated axes; -1 with ValueError when a length is out of its range. */
static int dilated_shape(OpObject *op, int ndim, const int64_t *shape, int naxes,
                         const int64_t *axes, int64_t *big)
{
    int64_t d1;
    memcpy(big, shape, sizeof(int64_t) * ndim);
    /* Note [Checked sizes] (ndl_checked.h): found by fuzz/ with d near 2**63 */
    if (ndl_add_checked(op->dilation, 1, &d1) < 0)
        goto overflow;
    for (int i = 0; i < naxes; i++)
        if (ndl_mul_checked(shape[axes[i]], d1, &big[axes[i]]) < 0)
            goto overflow;
    for (int i = 0; op->has_length && i < op->axes.n; i++) {
        int64_t ax = op->axes.v[i] < 0 ? op->axes.v[i] + ndim : op->axes.v[i];
        int64_t n, len = op->length[i], hi, lo;
        if (ax < 0 || ax >= ndim)
            continue;
        n = shape[ax];
        if (ndl_mul_checked(n, d1, &hi) < 0 || ndl_mul_checked(n - 1, d1, &lo) < 0)
            goto overflow;
        if (len > hi || len <= lo || (n == 0 && len != 0)) {
            PyErr_Format(PyExc_ValueError,
                         "Dilate: length %lld along axis %lld is not in ((n-1)*(d+1), n*(d+1)] "
                         "for n=%lld, d=%lld", (long long)len, (long long)ax, (long long)n,
                         (long long)op->dilation);
            return -1;
        }
        big[ax] = len;
    }
    return ndl_check_nonnegative(ndim, big, "Dilate: output shape");
overflow:
    PyErr_Format(PyExc_ValueError, "Dilate: dilation %lld makes the output shape overflow int64",
                 (long long)op->dilation);
    return -1;
}
NDL_FORWARD(Dilate)
{
    int64_t shape[NDL_MAX_DIMS], axes[NDL_MAX_DIMS], start[NDL_MAX_DIMS], step[NDL_MAX_DIMS],
        big[NDL_MAX_DIMS], size;
    int ndim, naxes;
    uint64_t mask = 0;
    PyObject *out, *view;
    if (nda_shape(x[0], &ndim, shape) < 0 || op_axes(op, ndim, &naxes, axes, 1) < 0 ||
        dilated_shape(op, ndim, shape, naxes, axes, big) < 0)
        return NULL;
    if (nda_is_nd(x[0]) && !op->has_length) { /* the backend's dilate slot */
        for (int i = 0; i < naxes; i++)
            mask |= (uint64_t)1 << axes[i];
        return (PyObject *)ndl_array_dilate((NDArrayObject *)x[0], mask, op->dilation);
    }
    /* zeros, then the input into every (d+1)-th entry */
    for (int i = 0; i < ndim; i++)
        start[i] = 0, step[i] = 1;
    for (int i = 0; i < naxes; i++) /* a length-1 axis needs no step (it may be huge) */
        step[axes[i]] = shape[axes[i]] > 1 ? op->dilation + 1 : 1;
    out = nda_full_like(x[0], ndim, big, 0.0);
    if (out == NULL || ndl_checked_size(ndim, shape, &size) < 0 || size == 0)
        return out; /* an empty input: no view of out, whose steps may be huge */
    view = nda_view(out, start, shape, step, -1);
    if (view == NULL || nda_assign(view, x[0]) < 0)
        Py_CLEAR(out);
    Py_XDECREF(view);
    return out;
}
NDL_BACKWARD(Dilate)
{
    grads[0] = ndl_t_undilate(G, op->axes.n, op->axes.v, op->dilation);
    return grads[0] ? 0 : -1;
}

/* ---- UnDilate(axes, d): every (d+1)-th element along axes, the inverse ---- */
NDL_FORWARD(UnDilate)
{
    int64_t shape[NDL_MAX_DIMS], axes[NDL_MAX_DIMS], start[NDL_MAX_DIMS], len[NDL_MAX_DIMS],
        step[NDL_MAX_DIMS];
    int ndim, naxes;
    PyObject *view, *out;
    if (nda_shape(x[0], &ndim, shape) < 0 || op_axes(op, ndim, &naxes, axes, 1) < 0)
        return NULL;
    for (int i = 0; i < ndim; i++)
        start[i] = 0, len[i] = shape[i], step[i] = 1;
    for (int i = 0; i < naxes; i++) {
        step[axes[i]] = op->dilation + 1;
        len[axes[i]] = (shape[axes[i]] + op->dilation) / (op->dilation + 1);
    }
    view = nda_view(x[0], start, len, step, -1);
    out = view ? nda_copy(view) : NULL;
    Py_XDECREF(view);
    return out;
}
/* -> dilate(g) with the input's length along each axis: when that length m
 * is not a multiple of d+1, dilate(g) alone would be too long, so it is cut
 * (Note [Dilate to a length]). */
NDL_BACKWARD(UnDilate)
{
    int64_t shape[NDL_MAX_DIMS], axes[NDL_MAX_DIMS], length[NDL_MAX_DIMS];
    int ndim, naxes, cut = 0;
    if (input_shape(node, 0, &ndim, shape) < 0 || op_axes(op, ndim, &naxes, axes, 1) < 0)
        return -1;
    for (int i = 0; i < naxes; i++) {
        length[i] = shape[axes[i]];
        cut |= length[i] % (op->dilation + 1) != 0;
    }
    grads[0] = cut ? ndl_t_dilate_to(G, naxes, axes, op->dilation, length)
                   : ndl_t_dilate(G, op->axes.n, op->axes.v, op->dilation);
    return grads[0] ? 0 : -1;
}
