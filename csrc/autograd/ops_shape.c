/* ops_shape.c: ops that move elements without arithmetic, and Summation
 * (API.md 4.1, 4.5): Transpose, Reshape, BroadcastTo, Summation, Flip,
 * Dilate, UnDilate. Forward and backward of each sit together; the
 * backward of each is the op's "inverse" applied to g.
 */
#include <string.h>

#include "array_api.h"

#define IN(k) PyTuple_GET_ITEM(node->inputs, (k))
#define G ((PyObject *)g)

/* The op's axes normalised for rank ndim into out (all axes when None).
 * skip_large: drop axes >= ndim silently (Dilate's rule) instead of failing. */
static int op_axes(OpObject *op, int ndim, int *naxes, int64_t *out, int skip_large)
{
    uint64_t seen = 0;
    int k = 0;
    if (!op->has_axes) {
        for (int i = 0; i < ndim; i++)
            out[i] = i;
        *naxes = ndim;
        return 0;
    }
    for (int i = 0; i < op->naxes; i++) {
        int64_t ax;
        if (skip_large && op->axes[i] >= ndim)
            continue;
        if (ndl_normalize_axis(op->axes[i], ndim, &ax) < 0)
            return -1;
        if (seen & ((uint64_t)1 << ax)) {
            PyErr_Format(PyExc_ValueError, "%s: axis %lld is repeated", op->def->name, (long long)ax);
            return -1;
        }
        seen |= (uint64_t)1 << ax;
        out[k++] = ax;
    }
    *naxes = k;
    return 0;
}

static int input_shape(ValueObject *node, int k, int *ndim, int64_t *shape)
{
    return ndl_value_shape((ValueObject *)IN(k), ndim, shape);
}

/* ---- Transpose(axes=None): swap two axes (the last two by default) -------- */
static int transpose_axes(OpObject *op, int ndim, int64_t *ax0, int64_t *ax1)
{
    if (!op->has_axes) {
        if (ndim < 2) {
            PyErr_Format(PyExc_ValueError, "Transpose: needs at least 2 dimensions, got %d", ndim);
            return -1;
        }
        *ax0 = ndim - 2, *ax1 = ndim - 1;
        return 0;
    }
    if (op->naxes != 2) {
        PyErr_Format(PyExc_ValueError, "Transpose: axes must be a pair, got %d axes", op->naxes);
        return -1;
    }
    if (ndl_normalize_axis(op->axes[0], ndim, ax0) < 0 || ndl_normalize_axis(op->axes[1], ndim, ax1) < 0)
        return -1;
    return 0;
}
static PyObject *transpose_fwd(OpObject *op, PyObject *const *x, int n)
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
static int transpose_bwd(OpObject *op, ValueObject *g, ValueObject *node, const char *needs,
                         PyObject **grads)
{
    int64_t shape[NDL_MAX_DIMS], a0, a1;
    int ndim;
    if (input_shape(node, 0, &ndim, shape) < 0 || transpose_axes(op, ndim, &a0, &a1) < 0)
        return -1;
    grads[0] = ndl_t_transpose(G, a0, a1);
    return grads[0] ? 0 : -1;
}
ndl_opdef ndl_op_Transpose = {"Transpose", "transpose", 1, 0, NDL_P_AXES, transpose_fwd, transpose_bwd};

/* ---- Reshape(shape) -> reshape(g, a.shape) --------------------------------- */
static PyObject *reshape_fwd(OpObject *op, PyObject *const *x, int n)
{
    return nda_reshape(x[0], op->nshape, op->shape);
}
static int reshape_bwd(OpObject *op, ValueObject *g, ValueObject *node, const char *needs, PyObject **grads)
{
    int64_t shape[NDL_MAX_DIMS];
    int ndim;
    if (input_shape(node, 0, &ndim, shape) < 0)
        return -1;
    grads[0] = ndl_t_reshape(G, ndim, shape);
    return grads[0] ? 0 : -1;
}
ndl_opdef ndl_op_Reshape = {"Reshape", "reshape", 1, 0, NDL_P_SHAPE, reshape_fwd, reshape_bwd};

/* ---- BroadcastTo(shape) -> unbroadcast(g, a.shape) ------------------------- */
static PyObject *broadcast_fwd(OpObject *op, PyObject *const *x, int n)
{
    return nda_broadcast_to(x[0], op->nshape, op->shape);
}
static int broadcast_bwd(OpObject *op, ValueObject *g, ValueObject *node, const char *needs,
                         PyObject **grads)
{
    int64_t shape[NDL_MAX_DIMS];
    int ndim;
    if (input_shape(node, 0, &ndim, shape) < 0)
        return -1;
    grads[0] = ndl_t_unbroadcast(G, ndim, shape);
    return grads[0] ? 0 : -1;
}
ndl_opdef ndl_op_BroadcastTo = {"BroadcastTo", "broadcast_to", 1, 0, NDL_P_SHAPE, broadcast_fwd,
                                broadcast_bwd};

/* ---- Summation(axes=None) -> broadcast(reshape(g, keepdims shape), a.shape) - */
static PyObject *summation_fwd(OpObject *op, PyObject *const *x, int n)
{
    int64_t shape[NDL_MAX_DIMS], axes[NDL_MAX_DIMS];
    int ndim, naxes;
    if (nda_shape(x[0], &ndim, shape) < 0 || op_axes(op, ndim, &naxes, axes, 0) < 0)
        return NULL;
    /* NOTE: axes=None gives shape () (unlike NDArray.sum, which gives (1,)). */
    return nda_reduce(NDL_RED_SUM, x[0], op->has_axes ? naxes : -1, axes, 0);
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
static int summation_bwd(OpObject *op, ValueObject *g, ValueObject *node, const char *needs,
                         PyObject **grads)
{
    int64_t shape[NDL_MAX_DIMS], axes[NDL_MAX_DIMS];
    int ndim, naxes;
    if (input_shape(node, 0, &ndim, shape) < 0 || op_axes(op, ndim, &naxes, axes, 0) < 0)
        return -1;
    return ndl_grad_of_reduction(g, ndim, shape, naxes, axes, &grads[0]);
}
ndl_opdef ndl_op_Summation = {"Summation", "summation", 1, 0, NDL_P_AXES, summation_fwd, summation_bwd};

/* ---- Flip(axes=None) -> flip(g, axes) ------------------------------------- */
static PyObject *flip_fwd(OpObject *op, PyObject *const *x, int n)
{
    int64_t shape[NDL_MAX_DIMS], axes[NDL_MAX_DIMS];
    int ndim, naxes;
    if (nda_shape(x[0], &ndim, shape) < 0 || op_axes(op, ndim, &naxes, axes, 0) < 0)
        return NULL;
    return nda_flip(x[0], naxes, axes);
}
static int flip_bwd(OpObject *op, ValueObject *g, ValueObject *node, const char *needs, PyObject **grads)
{
    grads[0] = ndl_t_flip(G, op->has_axes ? op->naxes : -1, op->axes);
    return grads[0] ? 0 : -1;
}
ndl_opdef ndl_op_Flip = {"Flip", "flip", 1, 0, NDL_P_AXES, flip_fwd, flip_bwd};

/* ---- Dilate(axes, d): d zeros after every element along axes (4.5) -------- */
static void dilated_view(OpObject *op, int ndim, const int64_t *shape, int naxes, const int64_t *axes,
                         int64_t *start, int64_t *len, int64_t *step, int64_t *big)
{
    for (int i = 0; i < ndim; i++)
        start[i] = 0, len[i] = shape[i], step[i] = 1, big[i] = shape[i];
    for (int i = 0; i < naxes; i++) {
        step[axes[i]] = op->i1 + 1;
        big[axes[i]] = shape[axes[i]] * (op->i1 + 1);
    }
}
static PyObject *dilate_fwd(OpObject *op, PyObject *const *x, int n)
{
    int64_t shape[NDL_MAX_DIMS], axes[NDL_MAX_DIMS], start[NDL_MAX_DIMS], len[NDL_MAX_DIMS],
        step[NDL_MAX_DIMS], big[NDL_MAX_DIMS];
    int ndim, naxes;
    PyObject *out, *view;
    if (nda_shape(x[0], &ndim, shape) < 0 || op_axes(op, ndim, &naxes, axes, 1) < 0)
        return NULL;
    dilated_view(op, ndim, shape, naxes, axes, start, len, step, big);
    out = nda_full_like(x[0], ndim, big, 0.0);
    if (out == NULL)
        return NULL;
    view = nda_view(out, start, len, step, -1);
    if (view == NULL || nda_assign(view, x[0]) < 0)
        Py_CLEAR(out);
    Py_XDECREF(view);
    return out;
}
static int dilate_bwd(OpObject *op, ValueObject *g, ValueObject *node, const char *needs, PyObject **grads)
{
    grads[0] = ndl_t_undilate(G, op->naxes, op->axes, op->i1);
    return grads[0] ? 0 : -1;
}
ndl_opdef ndl_op_Dilate = {"Dilate", "dilate", 1, 0, NDL_P_AXES_DILATION, dilate_fwd, dilate_bwd};

/* ---- UnDilate(axes, d): every (d+1)-th element along axes, the inverse ---- */
static PyObject *undilate_fwd(OpObject *op, PyObject *const *x, int n)
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
        step[axes[i]] = op->i1 + 1;
        len[axes[i]] = (shape[axes[i]] + op->i1) / (op->i1 + 1);
    }
    view = nda_view(x[0], start, len, step, -1);
    out = view ? nda_copy(view) : NULL;
    Py_XDECREF(view);
    return out;
}
static int undilate_bwd(OpObject *op, ValueObject *g, ValueObject *node, const char *needs,
                        PyObject **grads)
{
    grads[0] = ndl_t_dilate(G, op->naxes, op->axes, op->i1);
    return grads[0] ? 0 : -1;
}
ndl_opdef ndl_op_UnDilate = {"UnDilate", "undilate", 1, 0, NDL_P_AXES_DILATION, undilate_fwd,
                             undilate_bwd};
