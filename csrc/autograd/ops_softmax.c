/* ops_softmax.c: LogSumExp and LogSoftmax, computed stably (API.md 4.4).
 *
 * Forward: m = max(z) over the axes (a constant, clamped to the finite
 * range so that all -inf or +inf rows give -inf / +inf, not NaN), then
 * log(sum(exp(z - m))) + m. Backward: softmax(z) = exp(z - m) / sum(exp(z - m))
 * with the same constant m, built from ops so that second derivatives work.
 * NOTE: never exp(z - y) with the stored result y: for z ~ 1e8 in float32,
 * y has lost the log(2) and the gradient would double.
 */
#include <string.h>

#include "array_api.h"

#define IN(k) PyTuple_GET_ITEM(node->inputs, (k))
#define G ((PyObject *)g)

/* axes of op (all when None / LogSoftmax: the last one) for rank ndim */
static int reduce_axes(OpObject *op, int ndim, int *naxes, int64_t *axes)
{
    if (op->def == &ndl_op_LogSoftmax) {
        if (ndim < 1) {
            PyErr_SetString(PyExc_ValueError, "LogSoftmax: needs at least 1 dimension");
            return -1;
        }
        *naxes = 1, axes[0] = ndim - 1;
        return 0;
    }
    return ndl_normalize_axes(op->axes.given ? op->axes.n : -1, op->axes.v, ndim, 0, "LogSumExp",
                              naxes, axes, NULL);
}

/* max of z over axes, keepdims, clamped to the finite range */
static PyObject *shift_of(PyObject *z, int naxes, const int64_t *axes)
{
    double big = nda_max_finite(z);
    PyObject *m = nda_reduce(NDL_RED_MAX, z, naxes, axes, 1), *lo, *hi;
    if (m == NULL)
        return NULL;
    lo = nda_scalar(NDL_BIN_MAXIMUM, m, -big, NULL, 0);
    Py_DECREF(m);
    hi = lo ? nda_scalar(NDL_BIN_MINIMUM, lo, big, NULL, 0) : NULL;
    Py_XDECREF(lo);
    return hi;
}

/* log(sum(exp(z - m))) with the reduced axes kept as 1; *zm_out = z - m */
static PyObject *shifted_lse(PyObject *z, PyObject *m, int naxes, const int64_t *axes,
                             PyObject **zm_out)
{
    PyObject *zm = nda_binary(NDL_BIN_SUB, z, m), *e = NULL, *s = NULL, *l = NULL;
    if (zm != NULL)
        e = nda_unary(NDL_UN_EXP, zm);
    if (e != NULL)
        s = nda_reduce(NDL_RED_SUM, e, naxes, axes, 1);
    if (s != NULL)
        l = nda_unary(NDL_UN_LOG, s);
    Py_XDECREF(e);
    Py_XDECREF(s);
    if (zm_out != NULL && l != NULL)
        *zm_out = zm;
    else
        Py_XDECREF(zm);
    return l;
}

/* softmax(z) over axes as a differentiable Tensor, m a constant */
static PyObject *softmax_tensor(PyObject *zt, int ndim, const int64_t *shape, int naxes,
                                const int64_t *axes)
{
    PyObject *z = ndl_value_realize((ValueObject *)zt), *m, *negm, *c = NULL, *zc = NULL, *e = NULL,
             *s = NULL, *sb = NULL, *res = NULL;
    if (z == NULL)
        return NULL;
    m = shift_of(z, naxes, axes);
    negm = m ? nda_unary(NDL_UN_NEG, m) : NULL;
    Py_XDECREF(m);
    if (negm == NULL)
        return NULL;
    c = ndl_t_const(negm);
    Py_DECREF(negm);
    if (c != NULL)
        zc = ndl_t_add(zt, c);
    if (zc != NULL)
        e = ndl_t_exp(zc);
    if (e != NULL)
        s = ndl_t_summation(e, naxes, axes);
    if (s != NULL && ndl_grad_of_reduction((ValueObject *)s, ndim, shape, naxes, axes, &sb) == 0)
        res = ndl_t_divide(e, sb);
    Py_XDECREF(c);
    Py_XDECREF(zc);
    Py_XDECREF(e);
    Py_XDECREF(s);
    Py_XDECREF(sb);
    return res;
}

/* ---- LogSumExp(axes=None): log sum exp z over axes, reduced axes removed -- */
NDL_FORWARD(LogSumExp)
{
    int64_t shape[NDL_MAX_DIMS], axes[NDL_MAX_DIMS], oshape[NDL_MAX_DIMS];
    int ndim, naxes, ond = 0;
    uint64_t mask = 0;
    PyObject *m, *l, *r, *out;
    if (nda_shape(x[0], &ndim, shape) < 0 || reduce_axes(op, ndim, &naxes, axes) < 0)
        return NULL;
    for (int i = 0; i < naxes; i++)
        mask |= (uint64_t)1 << axes[i]; /* NOTE: normalised, so every shift is < ndim */
    for (int i = 0; i < ndim; i++)
        if (!(mask & ((uint64_t)1 << i)))
            oshape[ond++] = shape[i];
    m = shift_of(x[0], naxes, axes);
    l = m ? shifted_lse(x[0], m, naxes, axes, NULL) : NULL;
    r = l ? nda_binary(NDL_BIN_ADD, l, m) : NULL;
    out = r ? nda_reshape(r, ond, oshape) : NULL;
    Py_XDECREF(m);
    Py_XDECREF(l);
    Py_XDECREF(r);
    return out;
}
NDL_BACKWARD(LogSumExp)
{
    int64_t shape[NDL_MAX_DIMS], axes[NDL_MAX_DIMS];
    int ndim, naxes;
    PyObject *sm, *gb = NULL;
    if (ndl_value_shape((ValueObject *)IN(0), &ndim, shape) < 0 ||
        reduce_axes(op, ndim, &naxes, axes) < 0)
        return -1;
    sm = softmax_tensor(IN(0), ndim, shape, naxes, axes);
    if (sm != NULL && ndl_grad_of_reduction(g, ndim, shape, naxes, axes, &gb) == 0)
        grads[0] = ndl_t_multiply(gb, sm);
    Py_XDECREF(sm);
    Py_XDECREF(gb);
    return grads[0] ? 0 : -1;
}

/* ---- LogSoftmax(): z - logsumexp(z) over the last axis --------------------- */
NDL_FORWARD(LogSoftmax)
{
    int64_t shape[NDL_MAX_DIMS], axes[1];
    int ndim, naxes;
    PyObject *m, *l, *zm = NULL, *out;
    if (nda_shape(x[0], &ndim, shape) < 0 || reduce_axes(op, ndim, &naxes, axes) < 0)
        return NULL;
    m = shift_of(x[0], naxes, axes);
    l = m ? shifted_lse(x[0], m, naxes, axes, &zm) : NULL;
    out = l ? nda_binary(NDL_BIN_SUB, zm, l) : NULL;
    Py_XDECREF(m);
    Py_XDECREF(l);
    Py_XDECREF(zm);
    return out;
}
/* g - softmax(z) * broadcast(sum(g, axis)) */
NDL_BACKWARD(LogSoftmax)
{
    int64_t shape[NDL_MAX_DIMS], axes[1];
    int ndim, naxes;
    PyObject *sm, *gs = NULL, *gb = NULL, *p = NULL, *np_ = NULL;
    if (ndl_value_shape((ValueObject *)IN(0), &ndim, shape) < 0 ||
        reduce_axes(op, ndim, &naxes, axes) < 0)
        return -1;
    sm = softmax_tensor(IN(0), ndim, shape, naxes, axes);
    if (sm != NULL)
        gs = ndl_t_summation(G, naxes, axes);
    if (gs != NULL && ndl_grad_of_reduction((ValueObject *)gs, ndim, shape, naxes, axes, &gb) == 0)
        p = ndl_t_multiply(sm, gb);
    if (p != NULL)
        np_ = ndl_t_negate(p);
    if (np_ != NULL)
        grads[0] = ndl_t_add(G, np_);
    Py_XDECREF(sm);
    Py_XDECREF(gs);
    Py_XDECREF(gb);
    Py_XDECREF(p);
    Py_XDECREF(np_);
    return grads[0] ? 0 : -1;
}
