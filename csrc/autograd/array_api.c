/* array_api.c: nd/np dispatch for the arrays built-in ops compute on
 * (array_api.h). nd mode calls the C array layer directly; np mode calls
 * NumPy's functions (looked up once, at init) from C. */
#include <float.h>
#include <math.h>
#include <string.h>

#include "array_api.h"

static PyObject *np_mod;
/* NumPy's function for each kernel row of ../ops.def; NULL where the row
 * names none (relu, sigmoid: composed in nda_unary). */
static PyObject *np_binary[NDL_NUM_BINARY];
static PyObject *np_unary[NDL_NUM_UNARY];
static PyObject *np_reduce[NDL_NUM_REDUCE];
static PyObject *np_asarray, *np_ndarray, *np_reshape, *np_broadcast_to, *np_transpose, *np_matmul,
    *np_flip, *np_full, *np_empty, *np_finfo, *np_ascontiguousarray, *np_pad, *np_tensordot,
    *np_sliding_window_view, *np_take;

/* *slot = numpy.<name>, or NULL when name is NULL. */
static int get_np(PyObject **slot, const char *name)
{
    *slot = name ? PyObject_GetAttrString(np_mod, name) : NULL;
    return name && *slot == NULL ? -1 : 0;
}

int nda_init(void)
{
    static const char *const un_names[NDL_NUM_UNARY] = {
#define NDL_UNARY_KERNEL(KERNEL, kernel, numpy, method) [NDL_UN_##KERNEL] = numpy,
#include "ops.def"
    };
    static const char *const bin_names[NDL_NUM_BINARY] = {
#define NDL_BINARY_KERNEL(KERNEL, kernel, numpy, method) [NDL_BIN_##KERNEL] = numpy,
#include "ops.def"
    };
    static const char *const red_names[NDL_NUM_REDUCE] = {
#define NDL_REDUCE(Class, func, KERNEL, numpy, method) [NDL_RED_##KERNEL] = numpy,
#include "ops.def"
    };
    np_mod = PyImport_ImportModule("numpy");
    if (np_mod == NULL)
        return -1;
    for (int i = 0; i < NDL_NUM_BINARY; i++)
        if (get_np(&np_binary[i], bin_names[i]) < 0)
            return -1;
    for (int i = 0; i < NDL_NUM_UNARY; i++)
        if (get_np(&np_unary[i], un_names[i]) < 0)
            return -1;
    for (int i = 0; i < NDL_NUM_REDUCE; i++)
        if (get_np(&np_reduce[i], red_names[i]) < 0)
            return -1;
    if (get_np(&np_asarray, "asarray") < 0 || get_np(&np_ndarray, "ndarray") < 0 ||
        get_np(&np_reshape, "reshape") < 0 || get_np(&np_broadcast_to, "broadcast_to") < 0 ||
        get_np(&np_transpose, "transpose") < 0 || get_np(&np_matmul, "matmul") < 0 ||
        get_np(&np_flip, "flip") < 0 || get_np(&np_full, "full") < 0 ||
        get_np(&np_empty, "empty") < 0 || get_np(&np_finfo, "finfo") < 0 ||
        get_np(&np_ascontiguousarray, "ascontiguousarray") < 0 || get_np(&np_pad, "pad") < 0 ||
        get_np(&np_tensordot, "tensordot") < 0 || get_np(&np_take, "take") < 0)
        return -1;
    {
        PyObject *tricks = PyImport_ImportModule("numpy.lib.stride_tricks");
        np_sliding_window_view =
            tricks ? PyObject_GetAttrString(tricks, "sliding_window_view") : NULL;
        Py_XDECREF(tricks);
        if (np_sliding_window_view == NULL)
            return -1;
    }
    return 0;
}

int nda_is_nd(PyObject *a) { return NDArray_Check(a); }

PyObject *nda_as_np_array(PyObject *res)
{
    if (PyObject_TypeCheck(res, (PyTypeObject *)np_ndarray))
        return Py_NewRef(res);
    return PyObject_CallFunctionObjArgs(np_asarray, res, NULL);
}

int nda_shape(PyObject *a, int *ndim, int64_t *shape)
{
    PyObject *t;
    int rc;
    if (NDArray_Check(a)) {
        NDArrayObject *x = (NDArrayObject *)a;
        *ndim = x->layout.ndim;
        memcpy(shape, x->layout.shape, sizeof(int64_t) * x->layout.ndim);
        return 0;
    }
    t = PyObject_GetAttrString(a, "shape");
    if (t == NULL)
        return -1;
    rc = ndl_parse_shape(t, ndim, shape, "shape");
    Py_DECREF(t);
    return rc;
}

int ndl_raise_shapes(const char *fmt, int k, PyObject *const *x)
{
    PyObject *t[4] = {NULL, NULL, NULL, NULL};
    int64_t shape[NDL_MAX_DIMS];
    int ndim, i;
    for (i = 0; i < k && i < 4; i++)
        if (nda_shape(x[i], &ndim, shape) < 0 || (t[i] = ndl_shape_tuple(ndim, shape)) == NULL)
            break;
    /* NOTE: unused trailing arguments are allowed by varargs (fmt has k %R) */
    if (i == k)
        PyErr_Format(PyExc_ValueError, fmt, t[0], t[1], t[2], t[3]);
    for (i = 0; i < 4; i++)
        Py_XDECREF(t[i]);
    return -1;
}

static PyObject *axes_tuple(int naxes, const int64_t *axes)
{
    return naxes < 0 ? Py_NewRef(Py_None) : ndl_shape_tuple(naxes, axes);
}

/* Both operands of one kind: an NDArray with a numpy array is an error. */
static int check_kinds(PyObject *a, PyObject *b, const char *what)
{
    if (NDArray_Check(a) == NDArray_Check(b))
        return 0;
    PyErr_Format(PyExc_TypeError, "%s: cannot combine %s and %s arrays", what,
                 Py_TYPE(a)->tp_name, Py_TYPE(b)->tp_name);
    return -1;
}

PyObject *nda_binary(ndl_binop op, PyObject *a, PyObject *b)
{
    if (check_kinds(a, b, ndl_binop_names[op]) < 0)
        return NULL;
    if (NDArray_Check(a))
        return (PyObject *)ndl_array_binary_keep(op, (NDArrayObject *)a, (NDArrayObject *)b);
    return PyObject_CallFunctionObjArgs(np_binary[op], a, b, NULL);
}

PyObject *nda_binary_over(ndl_binop op, PyObject *a, PyObject *b)
{
    PyObject *res;
    if (check_kinds(a, b, ndl_binop_names[op]) < 0) {
        Py_DECREF(a);
        return NULL;
    }
    if (NDArray_Check(a))
        return (PyObject *)ndl_array_binary_over(op, (NDArrayObject *)a, (NDArrayObject *)b);
    res = nda_binary(op, a, b);
    Py_DECREF(a);
    return res;
}

PyObject *nda_scalar(ndl_binop op, PyObject *a, double s, PyObject *s_obj, int reflected)
{
    PyObject *sv, *res;
    if (NDArray_Check(a))
        return (PyObject *)ndl_array_scalar_keep(op, (NDArrayObject *)a, s, reflected);
    sv = s_obj ? Py_NewRef(s_obj) : PyFloat_FromDouble(s);
    if (sv == NULL)
        return NULL;
    res = reflected ? PyObject_CallFunctionObjArgs(np_binary[op], sv, a, NULL)
                    : PyObject_CallFunctionObjArgs(np_binary[op], a, sv, NULL);
    Py_DECREF(sv);
    return res;
}

PyObject *nda_unary(ndl_unop op, PyObject *a)
{
    PyObject *t, *u, *res;
    if (NDArray_Check(a))
        return (PyObject *)ndl_array_unary_keep(op, (NDArrayObject *)a);
    switch (op) {
    case NDL_UN_RELU:
        return nda_scalar(NDL_BIN_MAXIMUM, a, 0.0, NULL, 0);
    case NDL_UN_SIGMOID: /* 1 / (1 + exp(-a)) */
        t = nda_unary(NDL_UN_NEG, a);
        u = t ? nda_unary(NDL_UN_EXP, t) : NULL;
        Py_XDECREF(t);
        t = u ? nda_scalar(NDL_BIN_ADD, u, 1.0, NULL, 0) : NULL;
        Py_XDECREF(u);
        res = t ? nda_scalar(NDL_BIN_DIV, t, 1.0, NULL, 1) : NULL;
        Py_XDECREF(t);
        return res;
    default:
        if (np_unary[op] == NULL) {
            PyErr_Format(PyExc_NotImplementedError, "%s has no NumPy function for np mode",
                         ndl_unop_names[op]);
            return NULL;
        }
        return PyObject_CallFunctionObjArgs(np_unary[op], a, NULL);
    }
}

PyObject *nda_reduce(ndl_redop op, PyObject *a, int naxes, const int64_t *axes, int keepdims)
{
    PyObject *ax, *args = NULL, *kw = NULL, *res = NULL;
    if (NDArray_Check(a)) {
        NDArrayObject *x = (NDArrayObject *)a;
        uint64_t mask = 0;
        if (naxes < 0)
            mask = x->layout.ndim ? (((uint64_t)1 << x->layout.ndim) - 1) : 0;
        for (int i = 0; i < naxes; i++) {
            NDL_ASSERT(axes[i] >= 0 && axes[i] < x->layout.ndim); /* normalised by the caller */
            mask |= (uint64_t)1 << axes[i];
        }
        return (PyObject *)ndl_array_reduce(op, x, mask, keepdims);
    }
    ax = axes_tuple(naxes, axes);
    if (ax == NULL)
        return NULL;
    args = PyTuple_Pack(1, a);
    kw = Py_BuildValue("{sOsO}", "axis", ax, "keepdims", keepdims ? Py_True : Py_False);
    if (args && kw)
        res = PyObject_Call(np_reduce[op], args, kw);
    Py_DECREF(ax);
    Py_XDECREF(args);
    Py_XDECREF(kw);
    return res;
}

PyObject *nda_reshape(PyObject *a, int ndim, const int64_t *shape)
{
    PyObject *t, *res;
    if (NDArray_Check(a)) {
        /* NOTE: the Reshape op compacts a non-compact input first (API.md
         * 10.13); NDArray.reshape itself refuses. */
        NDArrayObject *c = ndl_array_compact((NDArrayObject *)a), *r;
        if (c == NULL)
            return NULL;
        r = ndl_array_reshape(c, ndim, shape);
        Py_DECREF(c);
        return (PyObject *)r;
    }
    t = ndl_shape_tuple(ndim, shape);
    if (t == NULL)
        return NULL;
    res = PyObject_CallFunctionObjArgs(np_reshape, a, t, NULL);
    Py_DECREF(t);
    return res;
}

PyObject *nda_broadcast_to(PyObject *a, int ndim, const int64_t *shape)
{
    PyObject *t, *res;
    if (NDArray_Check(a))
        return (PyObject *)ndl_array_broadcast_to((NDArrayObject *)a, ndim, shape);
    t = ndl_shape_tuple(ndim, shape);
    if (t == NULL)
        return NULL;
    res = PyObject_CallFunctionObjArgs(np_broadcast_to, a, t, NULL);
    Py_DECREF(t);
    return res;
}

PyObject *nda_permute(PyObject *a, const int *axes)
{
    int64_t ax[NDL_MAX_DIMS], shape[NDL_MAX_DIMS];
    int ndim;
    PyObject *t, *res;
    if (NDArray_Check(a))
        return (PyObject *)ndl_array_permute((NDArrayObject *)a, axes);
    if (nda_shape(a, &ndim, shape) < 0)
        return NULL;
    for (int i = 0; i < ndim; i++)
        ax[i] = axes[i];
    t = ndl_shape_tuple(ndim, ax);
    if (t == NULL)
        return NULL;
    res = PyObject_CallFunctionObjArgs(np_transpose, a, t, NULL);
    Py_DECREF(t);
    return res;
}

PyObject *nda_matmul(PyObject *a, PyObject *b)
{
    if (check_kinds(a, b, "matmul") < 0)
        return NULL;
    if (NDArray_Check(a))
        return (PyObject *)ndl_array_matmul((NDArrayObject *)a, (NDArrayObject *)b);
    return PyObject_CallFunctionObjArgs(np_matmul, a, b, NULL);
}

PyObject *nda_flip(PyObject *a, int naxes, const int64_t *axes)
{
    PyObject *t, *f, *res;
    if (NDArray_Check(a)) {
        uint64_t mask = 0;
        for (int i = 0; i < naxes; i++)
            mask |= (uint64_t)1 << axes[i];
        return (PyObject *)ndl_array_flip((NDArrayObject *)a, mask);
    }
    t = ndl_shape_tuple(naxes, axes);
    if (t == NULL)
        return NULL;
    f = PyObject_CallFunctionObjArgs(np_flip, a, t, NULL);
    /* a copy, as in nd mode */
    res = f ? PyObject_CallFunctionObjArgs(np_ascontiguousarray, f, NULL) : NULL;
    Py_XDECREF(f);
    Py_DECREF(t);
    return res;
}

/* np mode: crop the negative padding (a view), np.pad the positive, then
 * sliding_window_view(x, (Eh, Ew), axis=(1, 2)) -> (N, Ho', Wo', C, Eh, Ew)
 * with E = (K - 1) * d + 1 the kernel's extent, every stride-th window and
 * every d-th tap of it, and np.tensordot over (Kh, Kw, C). */
static PyObject *np_conv(PyObject *a, PyObject *w, int64_t s, int64_t d, const int64_t *lo,
                         const int64_t *hi, const int64_t *ash, const int64_t *wsh,
                         const int64_t *oshape)
{
    int64_t start[6] = {0}, len[6], step[6] = {1, 1, 1, 1, 1, 1};
    int pad = 0;
    PyObject *v = NULL, *p = NULL, *win = NULL, *sv = NULL, *args = NULL, *kw = NULL;
    PyObject *res = NULL;
    memcpy(len, ash, sizeof(int64_t) * 4);
    for (int j = 0; j < 2; j++) {
        start[1 + j] = lo[j] < 0 ? -lo[j] : 0;
        len[1 + j] += (lo[j] < 0 ? lo[j] : 0) + (hi[j] < 0 ? hi[j] : 0);
        pad |= lo[j] > 0 || hi[j] > 0;
    }
    v = nda_view(a, start, len, step, -1);
    if (v == NULL)
        goto fail;
    if (pad) {
        PyObject *widths = Py_BuildValue("((ii)(LL)(LL)(ii))", 0, 0,
                                         (long long)(lo[0] > 0 ? lo[0] : 0),
                                         (long long)(hi[0] > 0 ? hi[0] : 0),
                                         (long long)(lo[1] > 0 ? lo[1] : 0),
                                         (long long)(hi[1] > 0 ? hi[1] : 0), 0, 0);
        p = widths ? PyObject_CallFunctionObjArgs(np_pad, v, widths, NULL) : NULL;
        Py_XDECREF(widths);
    } else {
        p = Py_NewRef(v);
    }
    args = p ? Py_BuildValue("(O(LL))", p, (long long)((wsh[0] - 1) * d + 1),
                             (long long)((wsh[1] - 1) * d + 1))
             : NULL;
    kw = args ? Py_BuildValue("{s(ii)}", "axis", 1, 2) : NULL;
    win = kw ? PyObject_Call(np_sliding_window_view, args, kw) : NULL;
    if (win == NULL)
        goto fail;
    /* every s-th window: (N, Ho, Wo, C, Kh, Kw) */
    len[0] = oshape[0], len[1] = oshape[1], len[2] = oshape[2], len[3] = ash[3];
    len[4] = wsh[0], len[5] = wsh[1];
    memset(start, 0, sizeof start);
    step[1] = step[2] = s;
    step[4] = step[5] = d;
    sv = nda_view(win, start, len, step, -1);
    if (sv == NULL)
        goto fail;
    Py_CLEAR(args);
    args = Py_BuildValue("(OO((iii)(iii)))", sv, w, 4, 5, 3, 0, 1, 2);
    res = args ? PyObject_Call(np_tensordot, args, NULL) : NULL;
fail:
    Py_XDECREF(v);
    Py_XDECREF(p);
    Py_XDECREF(win);
    Py_XDECREF(sv);
    Py_XDECREF(args);
    Py_XDECREF(kw);
    return res;
}

PyObject *nda_conv(PyObject *a, PyObject *w, int64_t stride, int64_t dilation, const int64_t *lo,
                   const int64_t *hi, int general)
{
    int64_t ash[NDL_MAX_DIMS], wsh[NDL_MAX_DIMS], oshape[4];
    int an, wn;
    if (check_kinds(a, w, "conv") < 0)
        return NULL;
    if (NDArray_Check(a))
        return (PyObject *)ndl_array_conv_general((NDArrayObject *)a, (NDArrayObject *)w,
                                                  stride, dilation, lo, hi, general);
    if (nda_shape(a, &an, ash) < 0 || nda_shape(w, &wn, wsh) < 0 ||
        ndl_conv_check(an, ash, wn, wsh, stride, dilation, lo, hi, general, oshape) < 0)
        return NULL;
    return np_conv(a, w, stride, dilation, lo, hi, ash, wsh, oshape);
}

PyObject *nda_conv_transpose(PyObject *g, PyObject *w, int64_t s, const int64_t *lo,
                             const int64_t *hi, const int64_t *ohw)
{
    static const int swap23[4] = {0, 1, 3, 2};
    static const int64_t hw[2] = {0, 1};
    int64_t gsh[NDL_MAX_DIMS], wsh[NDL_MAX_DIMS], big[4], start[4] = {0}, step[4] = {1, 1, 1, 1};
    int64_t plo[2], phi[2];
    int gn, wn;
    PyObject *gd = NULL, *view = NULL, *bf = NULL, *bt = NULL, *res = NULL;
    if (check_kinds(g, w, "conv") < 0)
        return NULL;
    if (NDArray_Check(g)) {
        NDArrayObject *a = (NDArrayObject *)g, *b = (NDArrayObject *)w;
        if (a->device == b->device && a->dtype == b->dtype &&
            a->device->backend == &ndl_cpu_backend)
            return (PyObject *)ndl_array_conv_transpose(a, b, s, lo, ohw);
    }
    /* elsewhere: zeros with g at every s-th entry, then the conv */
    if (nda_shape(g, &gn, gsh) < 0 || nda_shape(w, &wn, wsh) < 0)
        return NULL;
    big[0] = gsh[0], big[3] = gsh[3];
    for (int j = 0; j < 2; j++) {
        int64_t r = (ohw[j] + lo[j] + hi[j] - wsh[j]) % s;
        big[1 + j] = gsh[1 + j] > 0 ? (gsh[1 + j] - 1) * s + 1 : 0;
        step[1 + j] = gsh[1 + j] > 1 ? s : 1;
        plo[j] = wsh[j] - 1 - lo[j], phi[j] = wsh[j] - 1 - hi[j] + r;
    }
    gd = nda_full_like(g, 4, big, 0.0);
    if (gd == NULL)
        goto fail;
    if (gsh[0] * gsh[1] * gsh[2] * gsh[3] > 0) { /* an empty g: no view (its steps) */
        view = nda_view(gd, start, gsh, step, -1);
        if (view == NULL || nda_assign(view, g) < 0)
            goto fail;
    }
    bf = nda_flip(w, 2, hw);
    bt = bf ? nda_permute(bf, swap23) : NULL;
    res = bt ? nda_conv(gd, bt, 1, 1, plo, phi, 1) : NULL;
fail:
    Py_XDECREF(gd);
    Py_XDECREF(view);
    Py_XDECREF(bf);
    Py_XDECREF(bt);
    return res;
}

PyObject *nda_empty_like(PyObject *like, int ndim, const int64_t *shape)
{
    PyObject *t, *dtype, *res = NULL;
    if (NDArray_Check(like)) {
        NDArrayObject *x = (NDArrayObject *)like;
        return (PyObject *)ndl_array_empty(x->device, x->dtype, ndim, shape);
    }
    t = ndl_shape_tuple(ndim, shape);
    dtype = t ? PyObject_GetAttrString(like, "dtype") : NULL;
    if (dtype != NULL)
        res = PyObject_CallFunctionObjArgs(np_empty, t, dtype, NULL);
    Py_XDECREF(t);
    Py_XDECREF(dtype);
    return res;
}

PyObject *nda_full_like(PyObject *like, int ndim, const int64_t *shape, double value)
{
    PyObject *t, *dtype, *args = NULL, *kw = NULL, *res = NULL, *v;
    if (NDArray_Check(like)) {
        NDArrayObject *x = (NDArrayObject *)like;
        return (PyObject *)ndl_array_full(x->device, x->dtype, ndim, shape, value);
    }
    t = ndl_shape_tuple(ndim, shape);
    dtype = PyObject_GetAttrString(like, "dtype");
    v = PyFloat_FromDouble(value);
    if (t && dtype && v) {
        args = PyTuple_Pack(2, t, v);
        kw = Py_BuildValue("{sO}", "dtype", dtype);
        if (args && kw)
            res = PyObject_Call(np_full, args, kw);
    }
    Py_XDECREF(t);
    Py_XDECREF(dtype);
    Py_XDECREF(v);
    Py_XDECREF(args);
    Py_XDECREF(kw);
    return res;
}

PyObject *nda_view(PyObject *a, const int64_t *start, const int64_t *len, const int64_t *step,
                   int drop)
{
    int ndim;
    int64_t shape[NDL_MAX_DIMS];
    PyObject *idx, *res;
    if (NDArray_Check(a)) {
        NDArrayObject *x = (NDArrayObject *)a;
        ndl_layout l = x->layout;
        int k = 0;
        for (int i = 0; i < x->layout.ndim; i++) {
            l.offset += start[i] * x->layout.strides[i];
            if (i == drop)
                continue;
            l.shape[k] = len[i];
            l.strides[k] = x->layout.strides[i] * step[i];
            k++;
        }
        l.ndim = k;
        return (PyObject *)ndl_array_view(x, &l);
    }
    if (nda_shape(a, &ndim, shape) < 0)
        return NULL;
    /* NOTE: a trailing Ellipsis keeps an all-int index a 0-d view, not a scalar. */
    idx = PyTuple_New(ndim + 1);
    if (idx == NULL)
        return NULL;
    PyTuple_SET_ITEM(idx, ndim, Py_NewRef(Py_Ellipsis));
    for (int i = 0; i < ndim; i++) {
        PyObject *it;
        if (i == drop)
            it = PyLong_FromLongLong(start[i]);
        else
            it = ndl_slice_new(start[i], start[i] + len[i] * step[i], step[i]);
        if (it == NULL) {
            Py_DECREF(idx);
            return NULL;
        }
        PyTuple_SET_ITEM(idx, i, it);
    }
    res = PyObject_GetItem(a, idx);
    Py_DECREF(idx);
    return res;
}

PyObject *nda_copy(PyObject *a)
{
    if (NDArray_Check(a))
        return (PyObject *)ndl_array_copy((NDArrayObject *)a, ((NDArrayObject *)a)->dtype);
    return PyObject_CallMethod(a, "copy", NULL);
}

int nda_assign(PyObject *dst, PyObject *src)
{
    if (NDArray_Check(dst) && NDArray_Check(src))
        return ndl_array_assign((NDArrayObject *)dst, (NDArrayObject *)src);
    return PyObject_SetItem(dst, Py_Ellipsis, src);
}

double nda_max_finite(PyObject *a)
{
    PyObject *dtype, *info, *mx;
    double v = FLT_MAX;
    if (NDArray_Check(a))
        return ((NDArrayObject *)a)->dtype == NDL_FLOAT64 ? DBL_MAX : FLT_MAX;
    dtype = PyObject_GetAttrString(a, "dtype");
    info = dtype ? PyObject_CallFunctionObjArgs(np_finfo, dtype, NULL) : NULL;
    mx = info ? PyObject_GetAttrString(info, "max") : NULL;
    if (mx)
        v = PyFloat_AsDouble(mx);
    if (PyErr_Occurred()) {
        PyErr_Clear(); /* an integer dtype: no clamp needed */
        v = DBL_MAX;
    }
    Py_XDECREF(dtype);
    Py_XDECREF(info);
    Py_XDECREF(mx);
    return v;
}

/* ---- rows picked by integer indices ------------------------------------- */

/* idx's elements as a host buffer of doubles (*buf, PyMem_Free it; NULL on
 * error), or -1. NOTE: doubles hold every integer below 2**53 exactly, far
 * beyond any row count; float32 indices (nd mode's Tensors) convert exactly. */
static int indices_as_doubles(PyObject *idx, double **buf, int64_t *n)
{
    NDArrayObject *c = NULL;
    PyObject *args = NULL, *kw = NULL, *arr = NULL;
    Py_buffer view = {0};
    const void *src = NULL;
    int rc = -1, st = NDL_OK;
    *buf = NULL;
    if (NDArray_Check(idx)) { /* a compact float64 copy, read from its device */
        if ((c = ndl_array_copy((NDArrayObject *)idx, NDL_FLOAT64)) == NULL)
            goto fail;
        *n = ndl_array_size(c);
        src = (const double *)c->storage->data + c->layout.offset;
    } else { /* numpy.ascontiguousarray(idx, dtype="float64") */
        args = PyTuple_Pack(1, idx);
        kw = args ? Py_BuildValue("{ss}", "dtype", "float64") : NULL;
        arr = kw ? PyObject_Call(np_ascontiguousarray, args, kw) : NULL;
        if (arr == NULL || PyObject_GetBuffer(arr, &view, PyBUF_C_CONTIGUOUS) < 0)
            goto fail;
        *n = (int64_t)(view.len / (Py_ssize_t)sizeof(double));
        src = view.buf;
    }
    *buf = PyMem_Malloc((size_t)(*n ? *n : 1) * sizeof(double));
    if (*buf == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    if (c != NULL)
        st = c->storage->backend->to_host(*buf, src, (size_t)*n * sizeof(double));
    else
        memcpy(*buf, src, (size_t)*n * sizeof(double));
    if (ndl_raise_status(st, "reading indices") < 0) {
        PyMem_Free(*buf);
        *buf = NULL;
        goto fail;
    }
    rc = 0;
fail:
    if (view.obj != NULL)
        PyBuffer_Release(&view);
    Py_XDECREF(c);
    Py_XDECREF(args);
    Py_XDECREF(kw);
    Py_XDECREF(arr);
    return rc;
}

int nda_indices(PyObject *idx, int64_t bound, const char *what, int64_t **out, int64_t *n)
{
    double *d = NULL;
    int64_t *r = NULL;
    int rc = -1;
    *out = NULL;
    if (indices_as_doubles(idx, &d, n) < 0)
        goto fail;
    if ((r = PyMem_Malloc((size_t)(*n ? *n : 1) * sizeof(int64_t))) == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    for (int64_t k = 0; k < *n; k++) {
        PyObject *v;
        if (!(d[k] == floor(d[k])) || isinf(d[k])) { /* NaN fails the test too */
            if ((v = PyFloat_FromDouble(d[k])) != NULL)
                PyErr_Format(PyExc_ValueError, "%s: indices must be integers, got %R", what, v);
            Py_XDECREF(v);
            goto fail;
        }
        if (d[k] < 0 || d[k] >= (double)bound) {
            if ((v = PyLong_FromDouble(d[k])) != NULL)
                PyErr_Format(PyExc_IndexError, "%s: index %R is out of range for %lld rows", what,
                             v, (long long)bound);
            Py_XDECREF(v);
            goto fail;
        }
        r[k] = (int64_t)d[k];
    }
    *out = r;
    r = NULL;
    rc = 0;
fail:
    PyMem_Free(d);
    PyMem_Free(r);
    return rc;
}

/* The shape idx.shape + a_shape[1:] into *ndim, shape; -1 if too many dims. */
static int rows_shape(PyObject *idx, int an, const int64_t *ashape, int *ndim, int64_t *shape,
                      const char *what)
{
    int ni;
    if (an < 1) {
        PyErr_Format(PyExc_ValueError, "%s: the table needs at least one dimension", what);
        return -1;
    }
    if (nda_shape(idx, &ni, shape) < 0)
        return -1;
    if (ni + an - 1 > NDL_MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "%s: the result would have %d dimensions (at most %d)",
                     what, ni + an - 1, NDL_MAX_DIMS);
        return -1;
    }
    memcpy(shape + ni, ashape + 1, sizeof(int64_t) * (size_t)(an - 1));
    *ndim = ni + an - 1;
    return 0;
}

/* np mode: numpy.take(a, idx.astype("int64"), axis=0), idx already checked. */
static PyObject *np_take_rows(PyObject *a, PyObject *idx)
{
    PyObject *ii = PyObject_CallMethod(idx, "astype", "s", "int64");
    PyObject *r = ii ? PyObject_CallFunction(np_take, "OOi", a, ii, 0) : NULL;
    PyObject *res = r ? nda_as_np_array(r) : NULL;
    Py_XDECREF(ii);
    Py_XDECREF(r);
    return res;
}

/* np mode: numpy.add.at(zeros(shape), idx.astype("int64"), g), idx already checked. */
static PyObject *np_scatter_rows(PyObject *g, PyObject *idx, int ndim, const int64_t *shape)
{
    PyObject *ii = PyObject_CallMethod(idx, "astype", "s", "int64");
    PyObject *out = ii ? nda_full_like(g, ndim, shape, 0.0) : NULL;
    PyObject *at = out ? PyObject_GetAttrString(np_binary[NDL_BIN_ADD], "at") : NULL;
    PyObject *r = at ? PyObject_CallFunctionObjArgs(at, out, ii, g, NULL) : NULL;
    if (r == NULL)
        Py_CLEAR(out);
    Py_XDECREF(ii);
    Py_XDECREF(at);
    Py_XDECREF(r);
    return out;
}

/* The row r of a compact array of `row` elements per row, as a 1-D layout. */
static ndl_layout row_layout(const NDArrayObject *a, int64_t r, int64_t row)
{
    ndl_layout l = {.ndim = 1, .shape = {row}, .strides = {1}};
    l.offset = a->layout.offset + r * row;
    return l;
}

PyObject *nda_take_rows(PyObject *a, PyObject *idx)
{
    int64_t ashape[NDL_MAX_DIMS], shape[NDL_MAX_DIMS], *ix = NULL, n, row = 1;
    int an, ndim, st = NDL_OK;
    NDArrayObject *ac = NULL, *out = NULL;
    int (*take)(ndl_dtype, const void *, int64_t, int64_t, const int64_t *, int64_t, void *);
    if (nda_shape(a, &an, ashape) < 0 ||
        rows_shape(idx, an, ashape, &ndim, shape, "gather_rows") < 0 ||
        nda_indices(idx, ashape[0], "gather_rows", &ix, &n) < 0)
        goto fail;
    if (!NDArray_Check(a)) {
        PyMem_Free(ix);
        return np_take_rows(a, idx);
    }
    for (int i = 1; i < an; i++)
        row *= ashape[i];
    ac = ndl_array_compact((NDArrayObject *)a);
    out = ac ? ndl_array_empty(ac->device, ac->dtype, ndim, shape) : NULL;
    if (out == NULL)
        goto fail;
    take = NDL_OPTIONAL_SLOT(ac->storage->backend, take_rows);
    Py_BEGIN_ALLOW_THREADS
    if (take != NULL) /* ac compact: its rows start at its offset */
        st = take(ac->dtype, (const char *)ac->storage->data +
                                 ac->layout.offset * (int64_t)ndl_itemsize(ac->dtype),
                  ashape[0], row, ix, n, out->storage->data);
    /* else one copy per row through the backend's copy slot (any backend). */
    for (int64_t k = 0; take == NULL && k < n && row > 0 && st == NDL_OK; k++) {
        ndl_layout ls = row_layout(ac, ix[k], row), ld = row_layout(out, k, row);
        st = ac->storage->backend->copy(ac->dtype, out->storage->data, &ld, ac->dtype,
                                        ac->storage->data, &ls);
    }
    Py_END_ALLOW_THREADS
    if (ndl_raise_status(st, "gather_rows") < 0)
        Py_CLEAR(out);
fail:
    Py_XDECREF(ac);
    PyMem_Free(ix);
    return (PyObject *)out;
}

PyObject *nda_scatter_rows(PyObject *g, PyObject *idx, int ndim, const int64_t *shape)
{
    int64_t gshape[NDL_MAX_DIMS], want[NDL_MAX_DIMS], *ix = NULL, n, row = 1;
    int gnd, wnd, st = NDL_OK;
    NDArrayObject *gc = NULL, *out = NULL;
    const ndl_backend *be;
    int (*scatter)(ndl_dtype, const void *, int64_t, int64_t, const int64_t *, int64_t, void *);
    void *tmp = NULL;
    if (nda_shape(g, &gnd, gshape) < 0 ||
        rows_shape(idx, ndim, shape, &wnd, want, "scatter_rows") < 0)
        goto fail;
    if (gnd != wnd || memcmp(gshape, want, sizeof(int64_t) * (size_t)gnd) != 0) {
        PyObject *a = ndl_shape_tuple(gnd, gshape), *b = ndl_shape_tuple(wnd, want);
        if (a && b)
            PyErr_Format(PyExc_ValueError, "scatter_rows: the rows have shape %R, the indices and "
                         "the table need %R", a, b);
        Py_XDECREF(a);
        Py_XDECREF(b);
        goto fail;
    }
    if (nda_indices(idx, shape[0], "scatter_rows", &ix, &n) < 0)
        goto fail;
    if (!NDArray_Check(g)) {
        PyMem_Free(ix);
        return np_scatter_rows(g, idx, ndim, shape);
    }
    for (int i = 1; i < ndim; i++)
        row *= shape[i];
    gc = ndl_array_compact((NDArrayObject *)g);
    be = gc ? gc->storage->backend : NULL;
    if ((scatter = be ? NDL_OPTIONAL_SLOT(be, scatter_add_rows) : NULL) != NULL) {
        /* the slot zeroes out itself, then adds the rows in k order */
        if ((out = ndl_array_empty(gc->device, gc->dtype, ndim, shape)) == NULL)
            goto fail;
        Py_BEGIN_ALLOW_THREADS
        st = scatter(gc->dtype, (const char *)gc->storage->data +
                                    gc->layout.offset * (int64_t)ndl_itemsize(gc->dtype),
                     n, row, ix, shape[0], out->storage->data);
        Py_END_ALLOW_THREADS
        if (ndl_raise_status(st, "scatter_rows") < 0)
            Py_CLEAR(out);
        goto fail;
    }
    out = gc ? ndl_array_full(gc->device, gc->dtype, ndim, shape, 0.0) : NULL;
    if (out == NULL)
        goto fail;
    if (row > 0 && n > 0 && (tmp = be->alloc((size_t)row * ndl_itemsize(gc->dtype))) == NULL) {
        PyErr_NoMemory();
        Py_CLEAR(out);
        goto fail;
    }
    /* out[ix[k]] = out[ix[k]] + g[k] for k in order, through the backend's
     * binary and copy slots (a binary result never overlaps its inputs). */
    Py_BEGIN_ALLOW_THREADS
    ndl_layout lt = {.ndim = 1, .shape = {row}, .strides = {1}};
    for (int64_t k = 0; k < n && tmp != NULL && st == NDL_OK; k++) {
        ndl_layout lo = row_layout(out, ix[k], row), lg = row_layout(gc, k, row);
        st = be->binary(NDL_BIN_ADD, gc->dtype, out->storage->data, &lo, gc->storage->data, &lg,
                        tmp);
        if (st == NDL_OK)
            st = be->copy(gc->dtype, out->storage->data, &lo, gc->dtype, tmp, &lt);
    }
    Py_END_ALLOW_THREADS
    if (tmp != NULL)
        be->free(tmp);
    if (ndl_raise_status(st, "scatter_rows") < 0)
        Py_CLEAR(out);
fail:
    Py_XDECREF(gc);
    PyMem_Free(ix);
    return (PyObject *)out;
}
