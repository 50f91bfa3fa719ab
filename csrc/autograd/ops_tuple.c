/* ops_tuple.c: ops on TensorTuples (API.md 4.1, 4.2): MakeTensorTuple,
 * TupleGetItem, FusedAddScalars, Stack and Split. A TensorTuple's data is a
 * Python tuple of arrays; its adjoint is a TensorTuple too. */
#include <string.h>

#include "array_api.h"

#define IN(k) PyTuple_GET_ITEM(node->inputs, (k))
#define G ((PyObject *)g)

/* ---- MakeTensorTuple(*args) -> (g[0], g[1], ...) --------------------------- */
NDL_FORWARD(MakeTensorTuple)
{
    PyObject *t = PyTuple_New(n);
    if (t == NULL)
        return NULL;
    for (int i = 0; i < n; i++)
        PyTuple_SET_ITEM(t, i, Py_NewRef(x[i]));
    return t;
}
NDL_BACKWARD(MakeTensorTuple)
{
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(node->inputs); i++)
        if (needs[i] && (grads[i] = ndl_t_tuple_get_item(G, i)) == NULL)
            return -1;
    return 0;
}

/* ---- TupleGetItem(index): a[index] -> make_tuple(0, ..., g, ..., 0) ------- */
NDL_FORWARD(TupleGetItem)
{
    if (!PyTuple_Check(x[0])) {
        PyErr_SetString(PyExc_TypeError, "TupleGetItem needs a TensorTuple input");
        return NULL;
    }
    if (op->index < 0 || op->index >= PyTuple_GET_SIZE(x[0])) {
        PyErr_Format(PyExc_IndexError, "tuple index %lld out of range for length %zd",
                     (long long)op->index, PyTuple_GET_SIZE(x[0]));
        return NULL;
    }
    return Py_NewRef(PyTuple_GET_ITEM(x[0], op->index));
}
NDL_BACKWARD(TupleGetItem)
{
    PyObject *data = ndl_value_realize((ValueObject *)IN(0)), *items;
    Py_ssize_t n;
    if (data == NULL)
        return -1;
    if (!PyTuple_Check(data)) {
        PyErr_SetString(PyExc_TypeError,
                        "TupleGetItem.gradient: the node's input is not a TensorTuple");
        return -1;
    }
    n = PyTuple_GET_SIZE(data);
    items = PyTuple_New(n);
    if (items == NULL)
        return -1;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t;
        if (i == op->index) {
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

/* ---- FusedAddScalars(c0, c1): (a + c0, a + c1) -> g[0] + g[1] -------------- */
NDL_FORWARD(FusedAddScalars)
{
    PyObject *a = nda_scalar(NDL_BIN_ADD, x[0], op->c0, NULL, 0);
    PyObject *b = a ? nda_scalar(NDL_BIN_ADD, x[0], op->c1, NULL, 0) : NULL;
    PyObject *t = b ? PyTuple_Pack(2, a, b) : NULL;
    Py_XDECREF(a);
    Py_XDECREF(b);
    return t;
}
NDL_BACKWARD(FusedAddScalars)
{
    PyObject *g0 = ndl_t_tuple_get_item(G, 0), *g1 = g0 ? ndl_t_tuple_get_item(G, 1) : NULL;
    grads[0] = g1 ? ndl_t_add(g0, g1) : NULL;
    Py_XDECREF(g0);
    Py_XDECREF(g1);
    return grads[0] ? 0 : -1;
}

/* ---- Stack(axis): a new axis of length len(args) -> split(g, axis) ---------- */
NDL_FORWARD(Stack)
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
    if (ndl_normalize_axis(op->axis, ndim + 1, &axis) < 0)
        return NULL;
    for (Py_ssize_t i = 1; i < k; i++) {
        if (nda_shape(PyTuple_GET_ITEM(items, i), &nd2, s2) < 0)
            return NULL;
        if (nd2 != ndim || memcmp(s2, shape, sizeof(int64_t) * ndim) != 0) {
            PyObject *a = ndl_shape_tuple(ndim, shape), *b = ndl_shape_tuple(nd2, s2);
            if (a && b)
                PyErr_Format(PyExc_ValueError, "Stack: all inputs need one shape, got %R and %R", a,
                             b);
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
NDL_BACKWARD(Stack)
{
    grads[0] = ndl_t_split(G, op->axis);
    return grads[0] ? 0 : -1;
}

/* ---- Split(axis): the slices along axis, axis removed -> stack(g, axis) ----
 *
 * Note [Split keeps compact slices as views]
 *   A slice that is contiguous (row-major at an offset: every slice of axis
 *   0 of a compact NDArray) is the view itself, sharing a's buffer; others are copied. The recurrent
 *   layers split X @ W_ih (T, bs, 4H) into steps in levels (nn_sequence.py,
 *   _split_steps), and with copies each level held another copy of it until
 *   the backward: 40 MB of a 2-layer LSTM language model's step. A view
 *   keeps a's buffer alive as long as any slice is. NumPy arrays (np mode)
 *   are copied as before. */
NDL_FORWARD(Split)
{
    int64_t shape[NDL_MAX_DIMS], start[NDL_MAX_DIMS], len[NDL_MAX_DIMS], step[NDL_MAX_DIMS], axis;
    int ndim;
    PyObject *t;
    if (nda_shape(x[0], &ndim, shape) < 0 || ndl_normalize_axis(op->axis, ndim, &axis) < 0)
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
        /* Note [Split keeps compact slices as views] */
        if (view != NULL && NDArray_Check(view) &&
            ndl_layout_is_contiguous(&((NDArrayObject *)view)->layout))
            c = Py_NewRef(view);
        else
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
NDL_BACKWARD(Split)
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
    grads[0] = ndl_t_stack(items, op->axis);
    Py_DECREF(items);
    return grads[0] ? 0 : -1;
}

/* ---- the Python-side entry points of the tuple ops -------------------------- */

/* TupleGetItem(i)(a, fold_const=True): a's i-th input itself when a was made
 * by MakeTensorTuple (API.md 4.2). TupleGetItem's tp_call. */
PyObject *ndl_tuple_get_item_call(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"value", "fold_const", NULL};
    PyObject *a, *inputs, *fold_obj = Py_True;
    int64_t i = ((OpObject *)self)->index;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:TupleGetItem", kwlist, &a, &fold_obj))
        return NULL;
    if (!PyBool_Check(fold_obj)) {
        PyErr_Format(PyExc_TypeError, "TupleGetItem takes one TensorTuple; fold_const must be a "
                     "bool, got %R", fold_obj);
        return NULL;
    }
    if (!TensorTuple_Check(a)) {
        PyErr_Format(PyExc_TypeError, "TupleGetItem needs a TensorTuple, got %R", a);
        return NULL;
    }
    if (fold_obj == Py_True && ((ValueObject *)a)->op != NULL &&
        Py_TYPE(((ValueObject *)a)->op) == ndl_op_MakeTensorTuple.type) {
        Py_ssize_t n = PyTuple_GET_SIZE(((ValueObject *)a)->inputs);
        if (i < 0 || i >= n) {
            PyErr_Format(PyExc_IndexError, "tuple index %lld out of range for length %zd",
                         (long long)i, n);
            return NULL;
        }
        return Py_NewRef(PyTuple_GET_ITEM(((ValueObject *)a)->inputs, i));
    }
    inputs = PyTuple_Pack(1, a);
    if (inputs == NULL)
        return NULL;
    a = ndl_make_from_op(&Tensor_Type, self, inputs);
    Py_DECREF(inputs);
    return a;
}

/* stack(args, axis) = Stack(axis)(make_tuple(*args)) */
static PyObject *stack_function(PyObject *m, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"args", "axis", NULL};
    PyObject *list, *axis, *tup, *res;
    int64_t ax;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:stack", kwlist, &list, &axis) ||
        ndl_parse_int(axis, &ax, "axis") < 0)
        return NULL;
    tup = PySequence_Tuple(list);
    if (tup == NULL)
        return NULL;
    res = ndl_t_stack(tup, ax);
    Py_DECREF(tup);
    return res;
}

PyMethodDef ndl_stack_function_def = {"stack", (PyCFunction)(void (*)(void))stack_function,
                                      METH_VARARGS | METH_KEYWORDS,
                                      "stack(args, axis): Stack(axis)(make_tuple(*args))."};
