/* tensor.c: the Python face of Value, Tensor and TensorTuple (API.md 3.3-3.6):
 * their methods, attributes and operators, installed into the type objects
 * of value.c at init.
 *
 * Python equivalent:
 *     class Value:
 *         def _init(self, op, inputs, *, num_outputs=1, cached_data=None, requires_grad=None)
 *         def realize_cached_data(self): ...   # computes op.compute(*inputs' data) once
 *         @classmethod make_const(cls, data, *, requires_grad=False)
 *         @classmethod make_from_op(cls, op, inputs)
 *     class Tensor(Value):
 *         def __init__(self, array, *, device=None, dtype=None, requires_grad=True, **kwargs)
 *         grad, data (property), detach(), backward(out_grad=None, create_graph=True),
 *         numpy(), shape, dtype, device, the operators of 3.5 and the op methods
 *     class TensorTuple(Value): len, [i], iteration, tuple(), +, detach()
 */
#include <string.h>

#include "array_api.h"

static PyObject *np_array_fn; /* numpy.array, for Tensor(...) in np mode */

/* ---- array construction for Tensor(...) --------------------------------- */

/* An array holding a copy of `obj` on device with dtype (API.md 3.4). */
static PyObject *array_from(PyObject *obj, PyObject *device, PyObject *dtype)
{
    if (ndl_np_mode) {
        PyObject *kw = Py_BuildValue("{sO}", "dtype", dtype), *args = PyTuple_Pack(1, obj),
                 *r = NULL;
        if (kw && args)
            r = PyObject_Call(np_array_fn, args, kw);
        Py_XDECREF(kw);
        Py_XDECREF(args);
        return r;
    } else {
        PyObject *args = PyTuple_Pack(3, obj, device, dtype), *r;
        if (args == NULL)
            return NULL;
        r = PyObject_Call((PyObject *)&NDArray_Type, args, NULL);
        Py_DECREF(args);
        return r;
    }
}

static PyObject *tensor_device(ValueObject *self);
static PyObject *tensor_dtype(ValueObject *self);

static int Tensor_init(ValueObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"array", "device", "dtype", "requires_grad", NULL};
    PyObject *array, *device = Py_None, *dtype = Py_None, *data = NULL, *extra = NULL;
    PyObject *empty = NULL;
    int requires_grad = 1, rc = -1;
    /* Extra keyword arguments are accepted and ignored (API.md 3.4). */
    if (kwds != NULL) {
        PyObject *known = PyDict_New();
        if (known == NULL)
            return -1;
        extra = known;
        for (int i = 0; kwlist[i]; i++) {
            PyObject *v = PyDict_GetItemString(kwds, kwlist[i]);
            if (v != NULL && PyDict_SetItemString(known, kwlist[i], v) < 0)
                goto fail;
        }
    }
    if (!PyArg_ParseTupleAndKeywords(args, extra, "O|$OOp:Tensor", kwlist, &array, &device, &dtype,
                                     &requires_grad))
        goto fail;
    if (Tensor_Check(array)) {
        ValueObject *t = (ValueObject *)array;
        PyObject *tdev = tensor_device(t), *tdt = tensor_dtype(t);
        int same = tdev && tdt &&
                   (device == Py_None || PyObject_RichCompareBool(device, tdev, Py_EQ) == 1) &&
                   (dtype == Py_None || PyObject_RichCompareBool(dtype, tdt, Py_EQ) == 1);
        if (!PyErr_Occurred()) {
            if (same) {
                /* NOTE: Tensor(Tensor) shares the data array (API.md 10.17). */
                data = Py_XNewRef(ndl_value_realize(t));
            } else {
                PyObject *host = PyObject_CallMethod(array, "numpy", NULL);
                if (host != NULL)
                    data = array_from(host, device == Py_None ? tdev : device,
                                      dtype == Py_None ? tdt : dtype);
                Py_XDECREF(host);
            }
        }
        Py_XDECREF(tdev);
        Py_XDECREF(tdt);
    } else {
        data = array_from(array, device, dtype);
    }
    if (data == NULL)
        goto fail;
    empty = PyTuple_New(0);
    if (empty == NULL)
        goto fail;
    ndl_value_init(self, NULL, empty, 1, data, requires_grad);
    rc = 0;
fail:
    Py_XDECREF(extra);
    Py_XDECREF(data);
    Py_XDECREF(empty);
    return rc;
}

/* ---- Value methods ------------------------------------------------------ */

static PyObject *Value_realize_cached_data(ValueObject *self, PyObject *u)
{
    return Py_XNewRef(ndl_value_realize(self));
}

static PyObject *Value_is_leaf(ValueObject *self, PyObject *u)
{
    return PyBool_FromLong(self->op == NULL);
}

static PyObject *as_tuple(PyObject *seq)
{
    if (PyTuple_Check(seq))
        return Py_NewRef(seq);
    return PySequence_Tuple(seq);
}

static PyObject *Value__init(ValueObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"op", "inputs", "num_outputs", "cached_data", "requires_grad", NULL};
    PyObject *op, *inputs, *cached = Py_None, *rg = Py_None, *tup;
    int num_outputs = 1, requires_grad = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|$iOO:_init", kwlist, &op, &inputs,
                                     &num_outputs, &cached, &rg))
        return NULL;
    if (rg != Py_None) {
        requires_grad = PyObject_IsTrue(rg);
        if (requires_grad < 0)
            return NULL;
    }
    tup = as_tuple(inputs);
    if (tup == NULL)
        return NULL;
    ndl_value_init(self, op, tup, num_outputs, cached == Py_None ? NULL : cached, requires_grad);
    Py_DECREF(tup);
    Py_RETURN_NONE;
}

static PyObject *Value_make_const(PyObject *cls, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"data", "requires_grad", NULL};
    PyObject *data;
    int requires_grad = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|p:make_const", kwlist, &data, &requires_grad))
        return NULL;
    if (Value_Check(data)) {
        data = ndl_value_realize((ValueObject *)data);
        if (data == NULL)
            return NULL;
    }
    return (PyObject *)ndl_tensor_leaf((PyTypeObject *)cls, data, requires_grad);
}

static PyObject *Value_make_from_op(PyObject *cls, PyObject *args)
{
    PyObject *op, *inputs, *tup, *res;
    if (!PyArg_ParseTuple(args, "OO:make_from_op", &op, &inputs))
        return NULL;
    tup = as_tuple(inputs);
    if (tup == NULL)
        return NULL;
    res = ndl_make_from_op((PyTypeObject *)cls, op, tup);
    Py_DECREF(tup);
    return res;
}

static PyObject *Value_detach(ValueObject *self, PyObject *u)
{
    PyObject *data = ndl_value_realize(self);
    if (data == NULL)
        return NULL;
    return (PyObject *)ndl_tensor_leaf(Py_TYPE(self) == &TensorTuple_Type ? &TensorTuple_Type
                                                                           : &Tensor_Type,
                                       data, 0);
}

/* ---- attributes --------------------------------------------------------- */

static PyObject *get_op(ValueObject *self, void *c)
{
    return Py_NewRef(self->op ? self->op : Py_None);
}
static int set_op(ValueObject *self, PyObject *v, void *c)
{
    Py_XSETREF(self->op, (v == NULL || v == Py_None) ? NULL : Py_NewRef(v));
    return 0;
}
static PyObject *get_inputs(ValueObject *self, void *c)
{
    return Py_NewRef(self->inputs ? self->inputs : ndl_empty_tuple);
}
static int set_inputs(ValueObject *self, PyObject *v, void *c)
{
    PyObject *t = v ? as_tuple(v) : PyTuple_New(0);
    if (t == NULL)
        return -1;
    Py_XSETREF(self->inputs, t);
    return 0;
}
static PyObject *get_cached(ValueObject *self, void *c)
{
    return Py_NewRef(self->cached_data ? self->cached_data : Py_None);
}
static int set_cached(ValueObject *self, PyObject *v, void *c)
{
    Py_XSETREF(self->cached_data, (v == NULL || v == Py_None) ? NULL : Py_NewRef(v));
    return 0;
}
static PyObject *get_grad(ValueObject *self, void *c)
{
    return Py_NewRef(self->grad ? self->grad : Py_None);
}
static int set_grad(ValueObject *self, PyObject *v, void *c)
{
    Py_XSETREF(self->grad, (v == NULL || v == Py_None) ? NULL : Py_NewRef(v));
    return 0;
}
static PyObject *get_requires_grad(ValueObject *self, void *c)
{
    return PyBool_FromLong(self->requires_grad);
}
static int set_requires_grad(ValueObject *self, PyObject *v, void *c)
{
    int b = v ? PyObject_IsTrue(v) : 0;
    if (b < 0)
        return -1;
    self->requires_grad = (char)b;
    return 0;
}
static PyObject *get_num_outputs(ValueObject *self, void *c)
{
    return PyLong_FromLong(self->num_outputs);
}
static int set_num_outputs(ValueObject *self, PyObject *v, void *c)
{
    long n = v ? PyLong_AsLong(v) : 1;
    if (n == -1 && PyErr_Occurred())
        return -1;
    self->num_outputs = (int)n;
    return 0;
}

static PyObject *tensor_device(ValueObject *self)
{
    PyObject *data;
    if (ndl_np_mode)
        return Py_NewRef(ndl_np_device);
    data = ndl_value_realize(self);
    if (data == NULL)
        return NULL;
    if (NDArray_Check(data))
        return Py_NewRef(((NDArrayObject *)data)->device);
    return PyObject_GetAttrString(data, "device");
}

static PyObject *tensor_dtype(ValueObject *self)
{
    PyObject *data = ndl_value_realize(self);
    if (data == NULL)
        return NULL;
    return PyObject_GetAttrString(data, "dtype");
}

static PyObject *get_device(ValueObject *self, void *c) { return tensor_device(self); }
static PyObject *get_dtype(ValueObject *self, void *c) { return tensor_dtype(self); }

static PyObject *get_shape(ValueObject *self, void *c)
{
    int64_t shape[NDL_MAX_DIMS];
    int ndim;
    if (ndl_value_shape(self, &ndim, shape) < 0)
        return NULL;
    return ndl_shape_tuple(ndim, shape);
}

static PyObject *get_ndim(ValueObject *self, void *c)
{
    int64_t shape[NDL_MAX_DIMS];
    int ndim;
    if (ndl_value_shape(self, &ndim, shape) < 0)
        return NULL;
    return PyLong_FromLong(ndim);
}

static PyObject *get_data(ValueObject *self, void *c) { return Value_detach(self, NULL); }

/* t.data = value: same Python object, new array, no graph edge (API.md 3.4). */
static int set_data(ValueObject *self, PyObject *value, void *c)
{
    PyObject *mine, *theirs, *data;
    int eq;
    if (value == NULL || !Tensor_Check(value)) {
        PyErr_Format(PyExc_AssertionError, "value must be a Tensor, got %R",
                     value ? value : Py_None);
        return -1;
    }
    mine = tensor_dtype(self);
    theirs = mine ? tensor_dtype((ValueObject *)value) : NULL;
    eq = theirs ? PyObject_RichCompareBool(mine, theirs, Py_EQ) : -1;
    if (eq == 0)
        PyErr_Format(PyExc_AssertionError, "data dtype %R does not match tensor dtype %R", theirs,
                     mine);
    Py_XDECREF(mine);
    Py_XDECREF(theirs);
    if (eq != 1)
        return -1;
    data = ndl_value_realize((ValueObject *)value);
    if (data == NULL)
        return -1;
    Py_XSETREF(self->cached_data, Py_NewRef(data));
    return 0;
}

static PyGetSetDef Value_getset[] = {
    {"op", (getter)get_op, (setter)set_op, "The op that made this value (None for leaves).", NULL},
    {"inputs", (getter)get_inputs, (setter)set_inputs, "The op's inputs.", NULL},
    {"cached_data", (getter)get_cached, (setter)set_cached, "The data array, once computed.", NULL},
    {"requires_grad", (getter)get_requires_grad, (setter)set_requires_grad, NULL, NULL},
    {"num_outputs", (getter)get_num_outputs, (setter)set_num_outputs, NULL, NULL},
    {"__dict__", PyObject_GenericGetDict, PyObject_GenericSetDict, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyGetSetDef Tensor_getset[] = {
    {"grad", (getter)get_grad, (setter)set_grad, "The adjoint set by backward (None before).",
     NULL},
    {"data", (getter)get_data, (setter)set_data, "detach(); assigning replaces the data in place.",
     NULL},
    {"shape", (getter)get_shape, NULL, "Shape of the data.", NULL},
    {"ndim", (getter)get_ndim, NULL, "Number of dimensions.", NULL},
    {"dtype", (getter)get_dtype, NULL, "Element type of the data.", NULL},
    {"device", (getter)get_device, NULL, "Device of the data.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

/* ---- Tensor methods ----------------------------------------------------- */

static PyObject *Tensor_numpy(ValueObject *self, PyObject *u)
{
    PyObject *data = ndl_value_realize(self);
    if (data == NULL)
        return NULL;
    if (NDArray_Check(data))
        return ndl_array_to_numpy((NDArrayObject *)data);
    return PyObject_CallMethod(data, "copy", NULL);
}

static PyObject *Tensor_backward(ValueObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"out_grad", "create_graph", "retain_graph", NULL};
    PyObject *out_grad = Py_None, *seed = NULL, *retain_obj = Py_None;
    int create_graph = 1, retain_graph, rc, saved = ndl_grad_enabled;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OpO:backward", kwlist, &out_grad,
                                     &create_graph, &retain_obj))
        return NULL;
    /* retain_graph defaults to create_graph, as in PyTorch (Note [Freeing the graph]) */
    retain_graph = retain_obj == Py_None ? create_graph : PyObject_IsTrue(retain_obj);
    if (retain_graph < 0)
        return NULL;
    if (out_grad == Py_None) {
        int64_t shape[NDL_MAX_DIMS];
        int ndim;
        PyObject *data = ndl_value_realize(self), *ones;
        if (data == NULL || nda_shape(data, &ndim, shape) < 0)
            return NULL;
        ones = nda_full_like(data, ndim, shape, 1.0);
        if (ones == NULL)
            return NULL;
        seed = (PyObject *)ndl_tensor_leaf(&Tensor_Type, ones, 0);
        Py_DECREF(ones);
        if (seed == NULL)
            return NULL;
    } else {
        int64_t s1[NDL_MAX_DIMS], s2[NDL_MAX_DIMS];
        int n1, n2;
        if (!Tensor_Check(out_grad)) {
            PyErr_Format(PyExc_TypeError, "backward: out_grad must be a Tensor, got %R", out_grad);
            return NULL;
        }
        if (ndl_value_shape(self, &n1, s1) < 0 ||
            ndl_value_shape((ValueObject *)out_grad, &n2, s2) < 0)
            return NULL;
        if (n1 != n2 || memcmp(s1, s2, sizeof(int64_t) * n1) != 0) {
            PyObject *a = ndl_shape_tuple(n1, s1), *b = ndl_shape_tuple(n2, s2);
            if (a && b)
                PyErr_Format(PyExc_ValueError,
                             "backward: out_grad has shape %R but the tensor has shape %R", b, a);
            Py_XDECREF(a);
            Py_XDECREF(b);
            return NULL;
        }
        {
            PyObject *d1 = tensor_device(self),
                     *d2 = d1 ? tensor_device((ValueObject *)out_grad) : NULL;
            int same = d2 ? PyObject_RichCompareBool(d1, d2, Py_EQ) : -1;
            if (same == 0)
                PyErr_Format(PyExc_RuntimeError,
                             "backward: out_grad is on %R but the tensor is on %R", d2, d1);
            Py_XDECREF(d1);
            Py_XDECREF(d2);
            if (same != 1)
                return NULL;
        }
        seed = Py_NewRef(out_grad);
    }
    if (!create_graph)
        ndl_grad_enabled = 0;
    rc = ndl_compute_gradients(self, seed,
                               (create_graph ? 0 : NDL_GRAD_LEAVES_ONLY) |
                                   (retain_graph ? 0 : NDL_GRAD_FREE_GRAPH));
    ndl_grad_enabled = saved;
    Py_DECREF(seed);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *Value_str(ValueObject *self)
{
    PyObject *data = ndl_value_realize(self);
    return data ? PyObject_Str(data) : NULL;
}

static PyObject *Tensor_repr(ValueObject *self)
{
    PyObject *s = ndl_repr_via_hook((PyObject *)self, "repr"), *r;
    if (s == NULL || PyUnicode_Check(s))
        return s; /* the hook's text (needle.set_printoptions) */
    Py_SETREF(s, Value_str(self));
    if (s == NULL)
        return NULL;
    r = PyUnicode_FromFormat("needle.Tensor(%U)", s);
    Py_DECREF(s);
    return r;
}


static PyMethodDef Value_methods[] = {
    {"realize_cached_data", (PyCFunction)Value_realize_cached_data, METH_NOARGS,
     "The data, computed from the inputs if not yet done."},
    {"is_leaf", (PyCFunction)Value_is_leaf, METH_NOARGS, "True if no op made this value."},
    {"_init", (PyCFunction)(void (*)(void))Value__init, METH_VARARGS | METH_KEYWORDS,
     "_init(op, inputs, *, num_outputs=1, cached_data=None, requires_grad=None)"},
    {"make_const", (PyCFunction)(void (*)(void))Value_make_const,
     METH_VARARGS | METH_KEYWORDS | METH_CLASS, "make_const(data, requires_grad=False): a leaf."},
    {"make_from_op", (PyCFunction)Value_make_from_op, METH_VARARGS | METH_CLASS,
     "make_from_op(op, inputs): the result of op applied to inputs."},
    {"detach", (PyCFunction)Value_detach, METH_NOARGS, "A leaf sharing the data, no grad."},
    {NULL, NULL, 0, NULL},
};

/* ---- DLPack and pickling (the array's own, Note [DLPack lifetimes]) ------ */

/* data.name(*args, **kwds) on the realized data array. */
static PyObject *call_on_data(ValueObject *self, const char *name, PyObject *args,
                              PyObject *kwds)
{
    PyObject *data = ndl_value_realize(self), *meth, *res; /* data: borrowed */
    if (data == NULL)
        return NULL;
    meth = PyObject_GetAttrString(data, name);
    if (meth == NULL)
        return NULL;
    res = args != NULL ? PyObject_Call(meth, args, kwds) : PyObject_CallNoArgs(meth);
    Py_DECREF(meth);
    return res;
}

static PyObject *Tensor_dlpack(ValueObject *self, PyObject *args, PyObject *kwds)
{
    return call_on_data(self, "__dlpack__", args, kwds);
}

static PyObject *Tensor_dlpack_device(ValueObject *self, PyObject *args)
{
    return call_on_data(self, "__dlpack_device__", args, NULL);
}

/* (type(t).make_const, (data, requires_grad), __dict__ or None): the data,
 * dtype, device and requires_grad, not the graph (a leaf comes back). */
static PyObject *Tensor_reduce(ValueObject *self, PyObject *Py_UNUSED(u))
{
    PyObject *data = ndl_value_realize(self), *make = NULL, *res = NULL; /* data: borrowed */
    PyObject *state;
    if (data == NULL)
        return NULL;
    make = PyObject_GetAttrString((PyObject *)Py_TYPE(self), "make_const");
    if (make == NULL)
        goto fail;
    state = self->dict != NULL && PyDict_GET_SIZE(self->dict) > 0 ? self->dict : Py_None;
    res = Py_BuildValue("(O(OO)O)", make, data, self->requires_grad ? Py_True : Py_False, state);
fail:
    Py_XDECREF(make);
    return res;
}

static PyMethodDef Tensor_methods[] = {
    {"numpy", (PyCFunction)Tensor_numpy, METH_NOARGS, "A NumPy copy of the data."},
    {"_repr_html_", ndl_py_repr_html, METH_NOARGS, "An HTML summary and table (notebooks)."},
    {"backward", (PyCFunction)(void (*)(void))Tensor_backward, METH_VARARGS | METH_KEYWORDS,
     "backward(out_grad=None, create_graph=True, retain_graph=None): set .grad on every tensor "
     "that requires grad. With create_graph=False the gradients record no graph and only "
     "leaves keep .grad (as in PyTorch), for speed and memory. retain_graph (default: "
     "create_graph) False frees the graph's saved inputs as backward uses them; a second "
     "backward through it then raises RuntimeError."},
    {"__dlpack__", (PyCFunction)(void (*)(void))Tensor_dlpack, METH_VARARGS | METH_KEYWORDS,
     "The data array's __dlpack__: a DLPack capsule over the tensor's memory."},
    {"__dlpack_device__", (PyCFunction)Tensor_dlpack_device, METH_NOARGS,
     "The data array's DLPack device, (1, 0) on the CPU."},
    {"__reduce__", (PyCFunction)Tensor_reduce, METH_NOARGS,
     "Pickling and deepcopy: data, dtype, device and requires_grad (not the graph)."},
    {NULL, NULL, 0, NULL},
};



/* ---- TensorTuple -------------------------------------------------------- */

static Py_ssize_t TensorTuple_len(ValueObject *self)
{
    PyObject *data = ndl_value_realize(self);
    if (data == NULL)
        return -1;
    if (!PyTuple_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "TensorTuple data is not a tuple");
        return -1;
    }
    return PyTuple_GET_SIZE(data);
}

static PyObject *TensorTuple_item(ValueObject *self, Py_ssize_t i)
{
    Py_ssize_t n = TensorTuple_len(self);
    if (n < 0)
        return NULL;
    if (i < 0 || i >= n) {
        PyErr_Format(PyExc_IndexError, "TensorTuple index %zd out of range for length %zd", i, n);
        return NULL;
    }
    return ndl_t_tuple_get_item((PyObject *)self, i);
}

static PyObject *TensorTuple_tuple(ValueObject *self, PyObject *u)
{
    Py_ssize_t n = TensorTuple_len(self);
    PyObject *t;
    if (n < 0)
        return NULL;
    t = PyTuple_New(n);
    if (t == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *x = ndl_t_tuple_get_item((PyObject *)self, i);
        if (x == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, x);
    }
    return t;
}

static PyObject *TensorTuple_repr(ValueObject *self)
{
    PyObject *t = TensorTuple_tuple(self, NULL), *r;
    if (t == NULL)
        return NULL;
    r = PyUnicode_FromFormat("needle.TensorTuple%S", t);
    Py_DECREF(t);
    return r;
}

/* t1 + t2 = make_tuple(*[t1[i] + t2[i] for i ...]) */
static PyObject *TensorTuple_add(PyObject *a, PyObject *b)
{
    Py_ssize_t n;
    PyObject *items, *res;
    if (!TensorTuple_Check(a) || !TensorTuple_Check(b))
        Py_RETURN_NOTIMPLEMENTED;
    n = TensorTuple_len((ValueObject *)a);
    if (n < 0)
        return NULL;
    if (TensorTuple_len((ValueObject *)b) != n) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "TensorTuple + TensorTuple: lengths differ");
        return NULL;
    }
    items = PyTuple_New(n);
    if (items == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *x = ndl_t_tuple_get_item(a, i), *y = x ? ndl_t_tuple_get_item(b, i) : NULL;
        PyObject *s = y ? ndl_t_add(x, y) : NULL;
        Py_XDECREF(x);
        Py_XDECREF(y);
        if (s == NULL) {
            Py_DECREF(items);
            return NULL;
        }
        PyTuple_SET_ITEM(items, i, s);
    }
    res = ndl_t_make_tuple(items);
    Py_DECREF(items);
    return res;
}

static PySequenceMethods TensorTuple_as_sequence = {
    .sq_length = (lenfunc)TensorTuple_len,
    .sq_item = (ssizeargfunc)TensorTuple_item,
};

static PyNumberMethods TensorTuple_as_number = {
    .nb_add = TensorTuple_add,
};

static PyMethodDef TensorTuple_methods[] = {
    {"tuple", (PyCFunction)TensorTuple_tuple, METH_NOARGS, "A Python tuple of the Tensors."},
    {NULL, NULL, 0, NULL},
};

/* ---- init ---------------------------------------------------------------- */

int ndl_tensor_types_init(void)
{
    PyObject *np = PyImport_ImportModule("numpy");
    if (np == NULL)
        return -1;
    np_array_fn = PyObject_GetAttrString(np, "array");
    Py_DECREF(np);
    if (np_array_fn == NULL || ndl_value_state_init() < 0)
        return -1;
    /* NOTE: the slots are set before PyType_Ready, which copies them into
     * the types' dicts and lets subclasses inherit them. */
    Value_Type.tp_methods = Value_methods;
    Value_Type.tp_getset = Value_getset;
    Value_Type.tp_str = (reprfunc)Value_str;
    Tensor_Type.tp_init = (initproc)Tensor_init;
    Tensor_Type.tp_repr = (reprfunc)Tensor_repr;
    Tensor_Type.tp_methods = Tensor_methods;
    Tensor_Type.tp_getset = Tensor_getset;
    Tensor_Type.tp_as_number = &ndl_tensor_as_number;
    TensorTuple_Type.tp_repr = (reprfunc)TensorTuple_repr;
    TensorTuple_Type.tp_as_sequence = &TensorTuple_as_sequence;
    TensorTuple_Type.tp_as_number = &TensorTuple_as_number;
    TensorTuple_Type.tp_methods = TensorTuple_methods;
    if (PyType_Ready(&Value_Type) < 0 || PyType_Ready(&Tensor_Type) < 0 ||
        PyType_Ready(&TensorTuple_Type) < 0)
        return -1;
    /* The op-building methods (sum, reshape, ...) join Tensor's dict. */
    return ndl_tensor_methods_init(&Tensor_Type);
}
