/* array_api.c: nd/np dispatch for the arrays built-in ops compute on
 * (array_api.h). nd mode calls the C array layer directly; np mode calls
 * NumPy's functions (looked up once, at init) from C. */
#include <float.h>
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
    *np_sliding_window_view;

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
        get_np(&np_tensordot, "tensordot") < 0)
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
        return (PyObject *)ndl_array_binary(op, (NDArrayObject *)a, (NDArrayObject *)b);
    return PyObject_CallFunctionObjArgs(np_binary[op], a, b, NULL);
}

PyObject *nda_scalar(ndl_binop op, PyObject *a, double s, PyObject *s_obj, int reflected)
{
    PyObject *sv, *res;
    if (NDArray_Check(a))
        return (PyObject *)ndl_array_scalar(op, (NDArrayObject *)a, s, reflected);
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
        return (PyObject *)ndl_array_unary(op, (NDArrayObject *)a);
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
 * sliding_window_view(x, (Kh, Kw), axis=(1, 2)) -> (N, Ho', Wo', C, Kh, Kw),
 * every stride-th window, and np.tensordot over (Kh, Kw, C). */
static PyObject *np_conv(PyObject *a, PyObject *w, int64_t s, const int64_t *lo,
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
    args = p ? Py_BuildValue("(O(LL))", p, (long long)wsh[0], (long long)wsh[1]) : NULL;
    kw = args ? Py_BuildValue("{s(ii)}", "axis", 1, 2) : NULL;
    win = kw ? PyObject_Call(np_sliding_window_view, args, kw) : NULL;
    if (win == NULL)
        goto fail;
    /* every s-th window: (N, Ho, Wo, C, Kh, Kw) */
    len[0] = oshape[0], len[1] = oshape[1], len[2] = oshape[2], len[3] = ash[3];
    len[4] = wsh[0], len[5] = wsh[1];
    memset(start, 0, sizeof start);
    step[1] = step[2] = s;
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

PyObject *nda_conv(PyObject *a, PyObject *w, int64_t stride, const int64_t *lo, const int64_t *hi,
                   int general)
{
    int64_t ash[NDL_MAX_DIMS], wsh[NDL_MAX_DIMS], oshape[4];
    int an, wn;
    if (check_kinds(a, w, "conv") < 0)
        return NULL;
    if (NDArray_Check(a))
        return (PyObject *)ndl_array_conv_general((NDArrayObject *)a, (NDArrayObject *)w,
                                                  stride, lo, hi, general);
    if (nda_shape(a, &an, ash) < 0 || nda_shape(w, &wn, wsh) < 0 ||
        ndl_conv_check(an, ash, wn, wsh, stride, lo, hi, general, oshape) < 0)
        return NULL;
    return np_conv(a, w, stride, lo, hi, ash, wsh, oshape);
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
