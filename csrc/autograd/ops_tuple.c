/* ops_tuple.c: ops on TensorTuples (API.md 4.1, 4.2): MakeTensorTuple,
 * TupleGetItem, FusedAddScalars, Stack and Split. A TensorTuple's data is a
 * Python tuple of arrays; its adjoint is a TensorTuple too. */
#include <string.h>

#include "array_api.h"

#define IN(k) PyTuple_GET_ITEM(node->inputs, (k))
#define G ((PyObject *)g)

/* ---- MakeTensorTuple(*args) -> (g[0], g[1], ...) --------------------------- */
static PyObject *make_tuple_fwd(OpObject *op, PyObject *const *x, int n)
{
    PyObject *t = PyTuple_New(n);
    if (t == NULL)
        return NULL;
    for (int i = 0; i < n; i++)
        PyTuple_SET_ITEM(t, i, Py_NewRef(x[i]));
    return t;
}
static int make_tuple_bwd(OpObject *op, ValueObject *g, ValueObject *node, const char *needs,
                          PyObject **grads)
{
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(node->inputs); i++)
        if (needs[i] && (grads[i] = ndl_t_tuple_get_item(G, i)) == NULL)
            return -1;
    return 0;
}
ndl_opdef ndl_op_MakeTensorTuple = {"MakeTensorTuple", "make_tuple", -1, 1, NDL_P_NONE,
                                    make_tuple_fwd, make_tuple_bwd};

/* ---- TupleGetItem(index): a[index] -> make_tuple(0, ..., g, ..., 0) ------- */
static PyObject *get_item_fwd(OpObject *op, PyObject *const *x, int n)
{
    if (!PyTuple_Check(x[0])) {
        PyErr_SetString(PyExc_TypeError, "TupleGetItem needs a TensorTuple input");
        return NULL;
    }
    if (op->i0 < 0 || op->i0 >= PyTuple_GET_SIZE(x[0])) {
        PyErr_Format(PyExc_IndexError, "tuple index %lld out of range for length %zd",
                     (long long)op->i0, PyTuple_GET_SIZE(x[0]));
        return NULL;
    }
    return Py_NewRef(PyTuple_GET_ITEM(x[0], op->i0));
}
static int get_item_bwd(OpObject *op, ValueObject *g, ValueObject *node, const char *needs,
                        PyObject **grads)
{
    PyObject *data = ndl_value_realize((ValueObject *)IN(0)), *items;
    Py_ssize_t n;
    if (data == NULL)
        return -1;
    if (!PyTuple_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "TupleGetItem.gradient: the node's input is not a TensorTuple");
        return -1;
    }
    n = PyTuple_GET_SIZE(data);
    items = PyTuple_New(n);
    if (items == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t;
        if (i == op->i0) {
            t = Py_NewRef(G);
        } else {
            int64_t shape[NDL_MAX_DIMS];
            int ndim;
            PyObject *z = nda_shape(PyTuple_GET_ITEM(data, i), &ndim, shape) < 0
                              ? NULL
                              : nda_full_like(PyTuple_GET_ITEM(data, i), ndim, shape, 0.0);
            t = z ? ndl_t_const(z) : NULL;
            Py_XDECREF(z);
        }
        if (t == NULL) {
            Py_DECREF(items);
            return -1;
        }
        PyTuple_SET_ITEM(items, i, t);
    }
    grads[0] = ndl_t_make_tuple(items);
    Py_DECREF(items);
    return grads[0] ? 0 : -1;
}
ndl_opdef ndl_op_TupleGetItem = {"TupleGetItem", "tuple_get_item", 1, 0, NDL_P_INDEX, get_item_fwd,
                                 get_item_bwd};

/* ---- FusedAddScalars(c0, c1): (a + c0, a + c1) -> g[0] + g[1] -------------- */
static PyObject *fused_fwd(OpObject *op, PyObject *const *x, int n)
{
    PyObject *a = nda_scalar(NDL_BIN_ADD, x[0], op->s0, NULL, 0);
    PyObject *b = a ? nda_scalar(NDL_BIN_ADD, x[0], op->s1, NULL, 0) : NULL;
    PyObject *t = b ? PyTuple_Pack(2, a, b) : NULL;
    Py_XDECREF(a);
    Py_XDECREF(b);
    return t;
}
static int fused_bwd(OpObject *op, ValueObject *g, ValueObject *node, const char *needs, PyObject **grads)
{
    PyObject *g0 = ndl_t_tuple_get_item(G, 0), *g1 = g0 ? ndl_t_tuple_get_item(G, 1) : NULL;
    grads[0] = g1 ? ndl_t_add(g0, g1) : NULL;
    Py_XDECREF(g0);
    Py_XDECREF(g1);
    return grads[0] ? 0 : -1;
}
ndl_opdef ndl_op_FusedAddScalars = {"FusedAddScalars", "fused_add_scalars", 1, 1, NDL_P_C0_C1,
                                    fused_fwd, fused_bwd};

/* ---- Stack(axis): a new axis of length len(args) -> split(g, axis) ---------- */
static PyObject *stack_fwd(OpObject *op, PyObject *const *x, int n)
{
    PyObject *items = x[0], *out = NULL;
    int64_t shape[NDL_MAX_DIMS], s2[NDL_MAX_DIMS], oshape[NDL_MAX_DIMS], start[NDL_MAX_DIMS],
        len[NDL_MAX_DIMS], step[NDL_MAX_DIMS], axis;
    int ndim, nd2;
    Py_ssize_t k;
    if (!PyTuple_Check(items) || (k = PyTuple_GET_SIZE(items)) == 0) {
        PyErr_SetString(PyExc_ValueError, "Stack needs a non-empty TensorTuple");
        return NULL;
    }
    if (nda_shape(PyTuple_GET_ITEM(items, 0), &ndim, shape) < 0)
        return NULL;
    if (ndl_normalize_axis(op->i0, ndim + 1, &axis) < 0)
        return NULL;
    for (Py_ssize_t i = 1; i < k; i++) {
        if (nda_shape(PyTuple_GET_ITEM(items, i), &nd2, s2) < 0)
            return NULL;
        if (nd2 != ndim || memcmp(s2, shape, sizeof(int64_t) * ndim) != 0) {
            PyObject *a = ndl_shape_tuple(ndim, shape), *b = ndl_shape_tuple(nd2, s2);
            if (a && b)
                PyErr_Format(PyExc_ValueError, "Stack: all inputs need one shape, got %R and %R", a, b);
            Py_XDECREF(a);
            Py_XDECREF(b);
            return NULL;
        }
    }
    for (int i = 0, j = 0; i <= ndim; i++)
        oshape[i] = i == axis ? k : shape[j++];
    out = nda_empty_like(PyTuple_GET_ITEM(items, 0), ndim + 1, oshape); /* every slot is written */
    if (out == NULL)
        return NULL;
    for (int i = 0; i <= ndim; i++)
        start[i] = 0, len[i] = oshape[i], step[i] = 1;
    len[axis] = 1;
    for (Py_ssize_t i = 0; i < k; i++) {
        PyObject *view;
        start[axis] = i;
        view = nda_view(out, start, len, step, (int)axis);
        if (view == NULL || nda_assign(view, PyTuple_GET_ITEM(items, i)) < 0) {
            Py_XDECREF(view);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(view);
    }
    return out;
}
static int stack_bwd(OpObject *op, ValueObject *g, ValueObject *node, const char *needs, PyObject **grads)
{
    grads[0] = ndl_t_split(G, op->i0);
    return grads[0] ? 0 : -1;
}
ndl_opdef ndl_op_Stack = {"Stack", "stack", 1, 0, NDL_P_AXIS, stack_fwd, stack_bwd};

/* ---- Split(axis): the slices along axis, axis removed -> stack(g, axis) ---- */
static PyObject *split_fwd(OpObject *op, PyObject *const *x, int n)
{
    int64_t shape[NDL_MAX_DIMS], start[NDL_MAX_DIMS], len[NDL_MAX_DIMS], step[NDL_MAX_DIMS], axis;
    int ndim;
    PyObject *t;
    if (nda_shape(x[0], &ndim, shape) < 0 || ndl_normalize_axis(op->i0, ndim, &axis) < 0)
        return NULL;
    t = PyTuple_New(shape[axis]);
    if (t == NULL)
        return NULL;
    for (int i = 0; i < ndim; i++)
        start[i] = 0, len[i] = shape[i], step[i] = 1;
    len[axis] = 1;
    for (int64_t i = 0; i < shape[axis]; i++) {
        PyObject *view, *c;
        start[axis] = i;
        view = nda_view(x[0], start, len, step, (int)axis);
        c = view ? nda_copy(view) : NULL;
        Py_XDECREF(view);
        if (c == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, c);
    }
    return t;
}
static int split_bwd(OpObject *op, ValueObject *g, ValueObject *node, const char *needs, PyObject **grads)
{
    Py_ssize_t n = PySequence_Length(G);
    PyObject *items;
    if (n < 0)
        return -1;
    items = PyTuple_New(n);
    if (items == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *gi = ndl_t_tuple_get_item(G, i);
        if (gi == NULL) {
            Py_DECREF(items);
            return -1;
        }
        PyTuple_SET_ITEM(items, i, gi);
    }
    grads[0] = ndl_t_stack(items, op->i0);
    Py_DECREF(items);
    return grads[0] ? 0 : -1;
}
ndl_opdef ndl_op_Split = {"Split", "split", 1, 1, NDL_P_AXIS, split_fwd, split_bwd};
