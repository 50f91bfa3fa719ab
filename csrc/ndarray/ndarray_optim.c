/* ndarray_optim.c: the fused optimizer updates, seen from Python.
 *
 * Python equivalent (needle.optim uses these in nd mode, API.md 7):
 *     adam_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, t) -> (p', m', v')
 *     sgd_update(p, g, u, lr, momentum, weight_decay)                 -> (p', u' or None)
 * p, g and the states (None on the first step) are NDArrays of one shape,
 * dtype and device. The new parameter is a new array (a parameter's old
 * data and its .grad are never written: other tensors may share them); the
 * state arrays belong to the optimizer and are updated in place, as
 * PyTorch's optimizers do, which saves two allocations and their memory per
 * parameter and step (a state that is not compact, or that shares storage
 * with p or g, gets a fresh array instead).
 *
 * The backend's adam and sgd slots are optional (Note [Optional backend
 * slots], backend.h): without one, the same formula runs as NDArray ops,
 * one op per term in optim_ops.h's order, so it equals the fused pass
 * within float rounding (the fused loop may contract a*b+c into one
 * rounding); its results go to the same outputs, states in place included.
 */
#include <math.h>
#include <string.h>

#include "ndarray.h"

/* A compact version of x (None -> NULL), checked against p. */
static int operand(NDArrayObject *p, PyObject *x, const char *name, NDArrayObject **out)
{
    NDArrayObject *a;
    *out = NULL;
    if (x == Py_None)
        return 0;
    if (!NDArray_Check(x)) {
        PyErr_Format(PyExc_TypeError, "%s must be an NDArray or None, got %R", name, x);
        return -1;
    }
    a = (NDArrayObject *)x;
    if (a->dtype != p->dtype || a->layout.ndim != p->layout.ndim ||
        memcmp(a->layout.shape, p->layout.shape, sizeof(int64_t) * p->layout.ndim) != 0) {
        PyObject *sa = ndl_shape_tuple(a->layout.ndim, a->layout.shape);
        PyObject *sp = ndl_shape_tuple(p->layout.ndim, p->layout.shape);
        if (sa && sp)
            PyErr_Format(PyExc_ValueError, "%s has shape %R and dtype %s; the parameter %R and %s",
                         name, sa, ndl_dtype_name(a->dtype), sp, ndl_dtype_name(p->dtype));
        Py_XDECREF(sa);
        Py_XDECREF(sp);
        return -1;
    }
    if (ndl_check_same_device(p, a, name) < 0)
        return -1;
    *out = ndl_array_compact(a);
    return *out ? 0 : -1;
}

static void *data_of(NDArrayObject *a)
{
    return a ? (char *)a->storage->data + a->layout.offset * ndl_itemsize(a->dtype) : NULL;
}

static NDArrayObject *like(NDArrayObject *p)
{
    return ndl_array_empty(p->device, p->dtype, p->layout.ndim, p->layout.shape);
}

/* Where the new state goes: the state array itself when it can be updated in
 * place (a compact, private buffer), else a fresh array. */
static NDArrayObject *state_out(NDArrayObject *p, NDArrayObject *g, NDArrayObject *state,
                                PyObject *given)
{
    if (state != NULL && (PyObject *)state == given && state->storage != p->storage &&
        state->storage != g->storage)
        return (NDArrayObject *)Py_NewRef(state);
    return like(p);
}

/* ---- fallbacks: the formula as NDArray ops ------------------------------- */

/* x*a + y*b, or y*b when x is NULL (a missing state is zero). */
static NDArrayObject *axpby(NDArrayObject *x, double a, NDArrayObject *y, double b)
{
    NDArrayObject *xa, *yb, *res;
    yb = ndl_array_scalar(NDL_BIN_MUL, y, b, 0);
    if (yb == NULL || x == NULL)
        return yb;
    xa = ndl_array_scalar(NDL_BIN_MUL, x, a, 0);
    res = xa ? ndl_array_binary(NDL_BIN_ADD, xa, yb) : NULL;
    Py_XDECREF(xa);
    Py_DECREF(yb);
    return res;
}

/* g + p*wd, or g itself (a new reference) when wd, rounded to p's dtype as
 * the fused kernel rounds it, is 0. */
static NDArrayObject *decayed(NDArrayObject *p, NDArrayObject *g, double wd)
{
    NDArrayObject *pw, *res;
    if ((p->dtype == NDL_FLOAT32 ? (double)(float)wd : wd) == 0)
        return (NDArrayObject *)Py_NewRef(g);
    pw = ndl_array_scalar(NDL_BIN_MUL, p, wd, 0);
    res = pw ? ndl_array_binary(NDL_BIN_ADD, g, pw) : NULL;
    Py_XDECREF(pw);
    return res;
}

/* p - (x * lr) */
static NDArrayObject *descend(NDArrayObject *p, NDArrayObject *x, double lr)
{
    NDArrayObject *step = ndl_array_scalar(NDL_BIN_MUL, x, lr, 0), *res;
    res = step ? ndl_array_binary(NDL_BIN_SUB, p, step) : NULL;
    Py_XDECREF(step);
    return res;
}

/* *out <- val: into the buffer itself when *out is a state updated in place
 * (out == state), else *out is replaced by val. 0 or -1. */
static int put(NDArrayObject **out, NDArrayObject *state, NDArrayObject *val)
{
    if (*out != NULL && *out == state)
        return ndl_array_assign(*out, val);
    Py_XSETREF(*out, (NDArrayObject *)Py_NewRef(val));
    return 0;
}

/* Adam as NDArray ops (optim_ops.h):
 *   gt = g + wd*p;  m = b1*m + (1-b1)*gt;  v = b2*v + (1-b2)*gt^2
 *   p = p - ((m / c1) / (sqrt(v / c2) + eps)) * lr */
static int adam_composed(NDArrayObject *p, NDArrayObject *g, NDArrayObject *m, NDArrayObject *v,
                         const ndl_adam_hparams *h, NDArrayObject **po, NDArrayObject **mo,
                         NDArrayObject **vo)
{
    NDArrayObject *gt = NULL, *g2 = NULL, *mn = NULL, *vn = NULL, *mh = NULL, *vh = NULL;
    NDArrayObject *den = NULL, *q = NULL, *pn = NULL;
    int rc = -1;
    if ((gt = decayed(p, g, h->weight_decay)) == NULL ||
        (mn = axpby(m, h->beta1, gt, 1 - h->beta1)) == NULL ||
        (g2 = ndl_array_binary(NDL_BIN_MUL, gt, gt)) == NULL ||
        (vn = axpby(v, h->beta2, g2, 1 - h->beta2)) == NULL ||
        (mh = ndl_array_scalar(NDL_BIN_DIV, mn, h->bias1, 0)) == NULL ||
        (vh = ndl_array_scalar(NDL_BIN_DIV, vn, h->bias2, 0)) == NULL)
        goto fail;
    Py_SETREF(vh, ndl_array_unary(NDL_UN_SQRT, vh));
    if (vh == NULL || (den = ndl_array_scalar(NDL_BIN_ADD, vh, h->eps, 0)) == NULL ||
        (q = ndl_array_binary(NDL_BIN_DIV, mh, den)) == NULL ||
        (pn = descend(p, q, h->lr)) == NULL)
        goto fail;
    if (put(po, NULL, pn) == 0 && put(mo, m, mn) == 0 && put(vo, v, vn) == 0)
        rc = 0;
fail:
    Py_XDECREF(gt), Py_XDECREF(g2), Py_XDECREF(mn), Py_XDECREF(vn), Py_XDECREF(mh);
    Py_XDECREF(vh), Py_XDECREF(den), Py_XDECREF(q), Py_XDECREF(pn);
    return rc;
}

/* SGD as NDArray ops: gt = g + wd*p;  u = mom*u + (1-mom)*gt (or gt
 * without momentum, when *uo stays NULL);  p = p - u*lr. */
static int sgd_composed(NDArrayObject *p, NDArrayObject *g, NDArrayObject *u,
                        const ndl_sgd_hparams *h, NDArrayObject **po, NDArrayObject **uo)
{
    NDArrayObject *gt = NULL, *un = NULL, *pn = NULL;
    int rc = -1;
    if ((gt = decayed(p, g, h->weight_decay)) == NULL)
        goto fail;
    un = *uo != NULL ? axpby(u, h->momentum, gt, 1 - h->momentum)
                     : (NDArrayObject *)Py_NewRef(gt);
    if (un == NULL || (pn = descend(p, un, h->lr)) == NULL)
        goto fail;
    if (put(po, NULL, pn) == 0 && (*uo == NULL || put(uo, u, un) == 0))
        rc = 0;
fail:
    Py_XDECREF(gt), Py_XDECREF(un), Py_XDECREF(pn);
    return rc;
}

/* ---- the module functions ------------------------------------------------- */

PyObject *ndl_py_adam_update(PyObject *mod, PyObject *args)
{
    PyObject *p_obj, *g_obj, *m_obj, *v_obj, *res = NULL;
    ndl_adam_hparams h;
    long long t;
    NDArrayObject *p = NULL, *g = NULL, *m = NULL, *v = NULL, *po = NULL, *mo = NULL, *vo = NULL;
    int status;
    if (!PyArg_ParseTuple(args, "O!OOOdddddL:adam_update", &NDArray_Type, &p_obj, &g_obj, &m_obj,
                          &v_obj, &h.lr, &h.beta1, &h.beta2, &h.eps, &h.weight_decay, &t))
        return NULL;
    if (t < 1) {
        PyErr_Format(PyExc_ValueError, "adam_update: step t must be >= 1, got %lld", t);
        return NULL;
    }
    h.bias1 = 1 - pow(h.beta1, (double)t);
    h.bias2 = 1 - pow(h.beta2, (double)t);
    p = ndl_array_compact((NDArrayObject *)p_obj);
    if (p == NULL || operand(p, g_obj, "grad", &g) < 0 || operand(p, m_obj, "m", &m) < 0 ||
        operand(p, v_obj, "v", &v) < 0)
        goto done;
    if (g == NULL) {
        PyErr_SetString(PyExc_TypeError, "adam_update: grad must be an NDArray");
        goto done;
    }
    if (m != NULL && v != NULL && m->storage == v->storage) {
        PyErr_SetString(PyExc_ValueError, "adam_update: m and v share one buffer");
        goto done;
    }
    if ((mo = state_out(p, g, m, m_obj)) == NULL || (vo = state_out(p, g, v, v_obj)) == NULL)
        goto done;
    if ((mo == m) != (vo == v)) { /* both in place, or neither */
        Py_SETREF(mo, like(p));
        Py_SETREF(vo, like(p));
        if (mo == NULL || vo == NULL)
            goto done;
    }
    if (NDL_OPTIONAL_SLOT(p->device->backend, adam) == NULL) {
        if (adam_composed(p, g, m, v, &h, &po, &mo, &vo) < 0)
            goto done;
    } else {
        if ((po = like(p)) == NULL)
            goto done;
        NDL_KERNEL_CALL(ndl_array_size(p), status,
                        p->device->backend->adam(p->dtype, ndl_array_size(p), data_of(p),
                                                 data_of(g), data_of(m), data_of(v), data_of(po),
                                                 data_of(mo), data_of(vo), &h));
        if (ndl_raise_status(status, "adam_update") < 0)
            goto done;
    }
    res = PyTuple_Pack(3, po, mo, vo);
done:
    Py_XDECREF(p), Py_XDECREF(g), Py_XDECREF(m), Py_XDECREF(v);
    Py_XDECREF(po), Py_XDECREF(mo), Py_XDECREF(vo);
    return res;
}

PyObject *ndl_py_sgd_update(PyObject *mod, PyObject *args)
{
    PyObject *p_obj, *g_obj, *u_obj, *res = NULL;
    ndl_sgd_hparams h;
    NDArrayObject *p = NULL, *g = NULL, *u = NULL, *po = NULL, *uo = NULL;
    int status;
    if (!PyArg_ParseTuple(args, "O!OOddd:sgd_update", &NDArray_Type, &p_obj, &g_obj, &u_obj, &h.lr,
                          &h.momentum, &h.weight_decay))
        return NULL;
    p = ndl_array_compact((NDArrayObject *)p_obj);
    if (p == NULL || operand(p, g_obj, "grad", &g) < 0 || operand(p, u_obj, "u", &u) < 0)
        goto done;
    if (g == NULL) {
        PyErr_SetString(PyExc_TypeError, "sgd_update: grad must be an NDArray");
        goto done;
    }
    if (h.momentum != 0 && (uo = state_out(p, g, u, u_obj)) == NULL)
        goto done;
    if (NDL_OPTIONAL_SLOT(p->device->backend, sgd) == NULL) {
        if (sgd_composed(p, g, u, &h, &po, &uo) < 0)
            goto done;
    } else {
        if ((po = like(p)) == NULL)
            goto done;
        NDL_KERNEL_CALL(ndl_array_size(p), status,
                        p->device->backend->sgd(p->dtype, ndl_array_size(p), data_of(p),
                                                data_of(g), data_of(u), data_of(po), data_of(uo),
                                                &h));
        if (ndl_raise_status(status, "sgd_update") < 0)
            goto done;
    }
    res = PyTuple_Pack(2, po, uo ? (PyObject *)uo : Py_None);
done:
    Py_XDECREF(p), Py_XDECREF(g), Py_XDECREF(u), Py_XDECREF(po), Py_XDECREF(uo);
    return res;
}
