/* value.c: a node of the graph, Value, as data: its fields, lifetime and
 * the process-wide autograd state (API.md 3.1, 3.3).
 *
 * Python equivalent:
 *     class Value:
 *         op: Optional[Op]; inputs: Tuple[Value]; cached_data; requires_grad; grad
 *     class Tensor(Value): ...         class TensorTuple(Value): ...
 * This file defines the three type objects with their layout and GC slots;
 * op.c computes values, tensor.c gives the types their Python face (methods,
 * attributes, operators) at init. See Note [The graph] in autograd.h for
 * ownership and cycles.
 */
#include "array_api.h"

int64_t ndl_tensor_counter;
int ndl_lazy_mode;
_Thread_local int ndl_grad_enabled = 1; /* per thread, as in PyTorch */

/* np mode (set by needle.backend_selection through _C._set_backend). */
int ndl_np_mode;
PyObject *ndl_np_device; /* backend_numpy.cpu() in np mode */
PyObject *ndl_empty_tuple; /* () */

/* ---- lifetime ----------------------------------------------------------- */

int ndl_value_traverse(ValueObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->op);
    Py_VISIT(self->inputs);
    Py_VISIT(self->cached_data);
    Py_VISIT(self->grad);
    Py_VISIT(self->dict);
    Py_VISIT(self->partials);
    return 0;
}

int ndl_value_clear(ValueObject *self)
{
    Py_CLEAR(self->op);
    Py_CLEAR(self->inputs);
    Py_CLEAR(self->cached_data);
    Py_CLEAR(self->grad);
    Py_CLEAR(self->dict);
    Py_CLEAR(self->partials);
    return 0;
}

static void Value_dealloc(ValueObject *self)
{
    PyObject_GC_UnTrack(self);
    /* NOTE: the trashcan defers nested deallocations, so freeing a chain of
     * 100,000 ops does not recurse 100,000 frames deep. */
    Py_TRASHCAN_BEGIN(self, Value_dealloc)
    if (self->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)self);
    if (self->counted)
        ndl_tensor_counter--;
    ndl_reclaim_unlist(self);
    ndl_value_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
    Py_TRASHCAN_END
}

/* Fill a Value's fields (references are taken, nothing is stolen);
 * requires_grad < 0: whether any input requires grad. */
void ndl_value_init(ValueObject *self, PyObject *op, PyObject *inputs, int num_outputs,
                      PyObject *cached_data, int requires_grad)
{
    if (requires_grad < 0) {
        requires_grad = 0;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(inputs); i++) {
            PyObject *x = PyTuple_GET_ITEM(inputs, i);
            if (Value_Check(x) && ((ValueObject *)x)->requires_grad) {
                requires_grad = 1;
                break;
            }
        }
    }
    Py_XSETREF(self->op, op == Py_None ? NULL : Py_XNewRef(op));
    Py_XSETREF(self->inputs, Py_NewRef(inputs));
    Py_XSETREF(self->cached_data, Py_XNewRef(cached_data));
    self->num_outputs = num_outputs;
    self->requires_grad = (char)requires_grad;
    if (!self->counted) {
        self->counted = 1;
        ndl_tensor_counter++;
    }
}

ValueObject *ndl_value_alloc(PyTypeObject *type)
{
    ValueObject *v = (ValueObject *)type->tp_alloc(type, 0);
    /* NOTE: inputs is never NULL, even before _init (Tensor.__new__(Tensor)
     * then attribute assignments is a pattern course code uses). */
    if (v != NULL)
        v->inputs = Py_NewRef(ndl_empty_tuple);
    return v;
}

static PyObject *Value_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    return (PyObject *)ndl_value_alloc(type);
}

ValueObject *ndl_tensor_leaf(PyTypeObject *type, PyObject *data, int requires_grad)
{
    ValueObject *v = ndl_value_alloc(type);
    if (v == NULL)
        return NULL;
    ndl_value_init(v, NULL, ndl_empty_tuple, 1, data, requires_grad);
    return v;
}

/* ---- the type objects ----------------------------------------------------
 * Layout and GC only; tensor.c fills in the Python-facing slots (methods,
 * attributes, operators, __init__, repr) before readying them. */

PyTypeObject Value_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "needle.autograd.Value",
    .tp_doc = "A node of the computational graph.",
    .tp_basicsize = sizeof(ValueObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = Value_new,
    .tp_dealloc = (destructor)Value_dealloc,
    .tp_traverse = (traverseproc)ndl_value_traverse,
    .tp_clear = (inquiry)ndl_value_clear,
    .tp_dictoffset = offsetof(ValueObject, dict),
    .tp_weaklistoffset = offsetof(ValueObject, weakreflist),
};

PyTypeObject Tensor_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "needle.autograd.Tensor",
    .tp_doc = "Tensor(array, *, device=None, dtype=None, requires_grad=True)\n\n"
              ">>> x = Tensor([1.0, 2.0]); (x * x).sum().backward(); x.grad\n"
              "needle.Tensor([2. 4.])",
    .tp_basicsize = sizeof(ValueObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_base = &Value_Type,
    .tp_traverse = (traverseproc)ndl_value_traverse,
    .tp_clear = (inquiry)ndl_value_clear,
};

PyTypeObject TensorTuple_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "needle.autograd.TensorTuple",
    .tp_doc = "A Value whose data is a tuple of arrays.",
    .tp_basicsize = sizeof(ValueObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_base = &Value_Type,
    .tp_traverse = (traverseproc)ndl_value_traverse,
    .tp_clear = (inquiry)ndl_value_clear,
};

int ndl_value_state_init(void)
{
    ndl_empty_tuple = PyTuple_New(0);
    return ndl_empty_tuple ? 0 : -1;
}
