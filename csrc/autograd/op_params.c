/* op_params.c: the constructor parameters of the built-in ops.
 *
 * Python equivalent (API.md 4.1: parameters are stored as attributes of the
 * same names):
 *     def __init__(self, axes=None): self.axes = axes
 * ndl_op_parse_params checks and parses them into the op's named fields
 * (OpObject in autograd.h, chosen by the row's `params`) and keeps the values
 * as given in the instance dict; ops made from C by backward rules have only
 * the fields, and ndl_op_param_attr reads those back as attributes.
 */
#include <string.h>

#include "array_api.h"

static int parse_scalar(PyObject *obj, double *out, const char *name)
{
    int rc = ndl_as_double(obj, out);
    if (rc == 0)
        PyErr_Format(PyExc_TypeError, "%s must be a number, got %R", name, obj);
    return rc == 1 ? 0 : -1;
}

static int parse_axes(OpObject *op, PyObject *axes)
{
    op->axes.given = axes != Py_None;
    op->axes.n = 0;
    if (!op->axes.given)
        return 0;
    return ndl_parse_shape(axes, &op->axes.n, op->axes.v, "axes");
}

int ndl_parse_int(PyObject *obj, int64_t *out, const char *name)
{
    Py_ssize_t v;
    if (!PyIndex_Check(obj)) {
        PyErr_Format(PyExc_TypeError, "%s must be an int, got %R", name, obj);
        return -1;
    }
    v = PyNumber_AsSsize_t(obj, PyExc_OverflowError);
    if (v == -1 && PyErr_Occurred())
        return -1;
    *out = v;
    return 0;
}

int ndl_op_parse_params(OpObject *self, PyObject *args, PyObject *kwds)
{
    static char *kw_none[] = {NULL};
    static char *kw_scalar[] = {"scalar", NULL};
    static char *kw_c0c1[] = {"c0", "c1", NULL};
    static char *kw_axes[] = {"axes", NULL};
    static char *kw_shape[] = {"shape", NULL};
    static char *kw_index[] = {"index", NULL};
    static char *kw_axis[] = {"axis", NULL};
    static char *kw_axes_dil[] = {"axes", "dilation", NULL};
    static char *kw_conv[] = {"stride", "padding", NULL};
    PyObject *a = Py_None, *b = Py_None;
    const ndl_opdef *def = self->def;
    char **names;
    int rc = -1;
    if (def == NULL)
        return 0;
    switch (def->params) {
    case NDL_P_NONE:
        names = kw_none;
        if (!PyArg_ParseTupleAndKeywords(args, kwds, "", kw_none))
            return -1;
        return 0;
    case NDL_P_SCALAR:
        names = kw_scalar;
        if (!PyArg_ParseTupleAndKeywords(args, kwds, "O", kw_scalar, &a))
            return -1;
        rc = parse_scalar(a, &self->scalar, "scalar");
        Py_XSETREF(self->scalar_obj, Py_NewRef(a));
        break;
    case NDL_P_C0_C1:
        names = kw_c0c1;
        if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO", kw_c0c1, &a, &b))
            return -1;
        rc = parse_scalar(a, &self->c0, "c0") < 0 ? -1 : parse_scalar(b, &self->c1, "c1");
        break;
    case NDL_P_AXES:
        names = kw_axes;
        if (!PyArg_ParseTupleAndKeywords(args, kwds, "|O", kw_axes, &a))
            return -1;
        rc = parse_axes(self, a);
        break;
    case NDL_P_SHAPE:
        names = kw_shape;
        if (!PyArg_ParseTupleAndKeywords(args, kwds, "O", kw_shape, &a))
            return -1;
        rc = ndl_parse_shape(a, &self->shape.ndim, self->shape.dims, "shape");
        if (rc == 0 && PyList_Check(a)) /* lists mean the equal tuple */
            a = NULL;
        break;
    case NDL_P_INDEX:
        names = kw_index;
        if (!PyArg_ParseTupleAndKeywords(args, kwds, "O", kw_index, &a))
            return -1;
        rc = ndl_parse_int(a, &self->index, "index");
        break;
    case NDL_P_AXIS:
        names = kw_axis;
        if (!PyArg_ParseTupleAndKeywords(args, kwds, "O", kw_axis, &a))
            return -1;
        rc = ndl_parse_int(a, &self->axis, "axis");
        break;
    case NDL_P_AXES_DILATION:
        names = kw_axes_dil;
        if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO", kw_axes_dil, &a, &b))
            return -1;
        rc = parse_axes(self, a) < 0 ? -1 : ndl_parse_int(b, &self->dilation, "dilation");
        if (rc == 0 && self->dilation < 0) {
            PyErr_Format(PyExc_ValueError, "dilation must be >= 0, got %lld",
                         (long long)self->dilation);
            rc = -1;
        }
        break;
    case NDL_P_STRIDE_PADDING:
    default:
        names = kw_conv;
        self->stride = 1, self->padding = 0, self->kernel_dilation = 1;
        if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OO", kw_conv, &a, &b))
            return -1;
        rc = (a != Py_None && ndl_parse_int(a, &self->stride, "stride") < 0) ||
                     (b != Py_None && ndl_parse_int(b, &self->padding, "padding") < 0)
                 ? -1
                 : 0;
        /* NOTE: a default is not stored: the attribute reads the parsed value. */
        if (a == Py_None)
            a = NULL;
        if (b == Py_None)
            b = NULL;
        break;
    }
    if (rc < 0)
        return -1;
    /* Keep the parameters as given (API.md 4.1), in the instance dict. */
    {
        PyObject *vals[2] = {a, b};
        for (int i = 0; names[i] && i < 2; i++) {
            if (vals[i] == NULL)
                continue;
            PyObject *key = PyUnicode_InternFromString(names[i]);
            int err = key ? PyObject_GenericSetAttr((PyObject *)self, key, vals[i]) : -1;
            Py_XDECREF(key);
            if (err < 0)
                return -1;
        }
    }
    return 0;
}

/* Attributes of ops made from C (backward rules) have no dict entries: read
 * them from the parsed fields. NULL without an exception: no such parameter. */
PyObject *ndl_op_param_attr(OpObject *op, const char *name)
{
    const ndl_opdef *def = op->def;
    if (def == NULL)
        return NULL;
    switch (def->params) {
    case NDL_P_SCALAR:
        if (!strcmp(name, "scalar"))
            return op->scalar_obj ? Py_NewRef(op->scalar_obj) : PyFloat_FromDouble(op->scalar);
        break;
    case NDL_P_C0_C1:
        if (!strcmp(name, "c0"))
            return PyFloat_FromDouble(op->c0);
        if (!strcmp(name, "c1"))
            return PyFloat_FromDouble(op->c1);
        break;
    case NDL_P_AXES_DILATION:
        if (!strcmp(name, "dilation"))
            return PyLong_FromLongLong(op->dilation);
        /* fall through */
    case NDL_P_AXES:
        if (!strcmp(name, "axes"))
            return op->axes.given ? ndl_shape_tuple(op->axes.n, op->axes.v) : Py_NewRef(Py_None);
        break;
    case NDL_P_SHAPE:
        if (!strcmp(name, "shape"))
            return ndl_shape_tuple(op->shape.ndim, op->shape.dims);
        break;
    case NDL_P_INDEX:
        if (!strcmp(name, "index"))
            return PyLong_FromLongLong(op->index);
        break;
    case NDL_P_AXIS:
        if (!strcmp(name, "axis"))
            return PyLong_FromLongLong(op->axis);
        break;
    case NDL_P_STRIDE_PADDING:
        if (!strcmp(name, "stride"))
            return PyLong_FromLongLong(op->stride);
        if (!strcmp(name, "padding"))
            return PyLong_FromLongLong(op->padding);
        if (!strcmp(name, "transposed")) /* Note [Transposed conv]: gradients only */
            return PyBool_FromLong(op->def == &ndl_op_Conv && op->general && op->transposed);
        break;
    default:
        break;
    }
    return NULL;
}

