/* op.c: Op, TensorOp and TensorTupleOp, the base classes of every op, and
 * applying an op: make_from_op and the (lazy) realization of values.
 *
 * Python equivalent (API.md 3.2, 4.1):
 *     class Op:
 *         def __call__(self, *args): raise NotImplementedError
 *         def compute(self, *args): raise NotImplementedError
 *         def gradient(self, out_grad, node): raise NotImplementedError
 *         def gradient_as_tuple(self, out_grad, node): ...  # always a tuple
 *     class TensorOp(Op):      __call__ = lambda self, *args: Tensor.make_from_op(self, args)
 *     class TensorTupleOp(Op): __call__ = lambda self, *args: TensorTuple.make_from_op(self, args)
 *     Value.make_from_op(op, inputs), Value.realize_cached_data()
 * A built-in op (op_table.c) carries its row's ndl_opdef, which supplies
 * compute and gradient; a Python subclass of TensorOp (def == NULL) is called
 * through its Python methods by the engine.
 */
#include "array_api.h"

/* ---- computing ---------------------------------------------------------- */

static int op_is_builtin(PyObject *op)
{
    return Op_Check(op) && ((OpObject *)op)->def != NULL &&
           Py_TYPE(op) == ((OpObject *)op)->def->type;
}

/* op.compute(*[x.realize_cached_data() for x in inputs]), new reference. */
static PyObject *value_compute(PyObject *op, PyObject *inputs)
{
    Py_ssize_t n = PyTuple_GET_SIZE(inputs);
    PyObject *stack_arrays[NDL_OP_MAX_ARITY], *res = NULL;
    PyObject **arrays = ndl_small_array(stack_arrays, sizeof(PyObject *), n);
    if (arrays == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *x = PyTuple_GET_ITEM(inputs, i);
        if (!Value_Check(x)) {
            PyErr_Format(PyExc_TypeError, "op inputs must be Tensors, got %R", x);
            goto done;
        }
        arrays[i] = ndl_value_realize((ValueObject *)x); /* borrowed */
        if (arrays[i] == NULL)
            goto done;
    }
    if (op_is_builtin(op)) {
        const ndl_opdef *def = ((OpObject *)op)->def;
        if (def->arity >= 0 && n != def->arity) {
            PyErr_Format(PyExc_TypeError, "%s takes %d input(s), got %zd", def->name, def->arity,
                         n);
            goto done;
        }
        res = def->forward((OpObject *)op, arrays, (int)n);
        if (res != NULL && ndl_np_mode && !PyTuple_Check(res))
            Py_SETREF(res, nda_as_np_array(res));
    } else {
        PyObject *compute = PyObject_GetAttrString(op, "compute");
        if (compute != NULL) {
            res = PyObject_Vectorcall(compute, arrays, (size_t)n, NULL);
            Py_DECREF(compute);
        }
    }
done:
    ndl_small_array_free(arrays, stack_arrays);
    return res;
}

/* Compute v's data when every input has data. */
static int realize_one(ValueObject *v)
{
    PyObject *data = value_compute(v->op, v->inputs);
    if (data == NULL)
        return -1;
    v->cached_data = data;
    return 0;
}

typedef struct {
    ValueObject *node;
    Py_ssize_t next;
} realize_frame;

/* Lazy graphs (LAZY_MODE) can be deep: realize them in post-order with an
 * explicit stack, never recursing on depth, and refuse cycles. */
static int realize_graph(ValueObject *root)
{
    Py_ssize_t cap = 64, top = 0;
    realize_frame *stack = PyMem_Malloc(sizeof(realize_frame) * (size_t)cap);
    int rc = -1;
    if (stack == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    root->realizing = 1;
    stack[top++] = (realize_frame){root, 0};
    while (top > 0) {
        realize_frame *f = &stack[top - 1];
        ValueObject *child = NULL;
        while (f->node->inputs && f->next < PyTuple_GET_SIZE(f->node->inputs)) {
            PyObject *x = PyTuple_GET_ITEM(f->node->inputs, f->next++);
            if (!Value_Check(x) || ((ValueObject *)x)->cached_data != NULL)
                continue;
            child = (ValueObject *)x;
            break;
        }
        if (child == NULL) {
            int err = f->node->cached_data == NULL && realize_one(f->node) < 0;
            f->node->realizing = 0;
            top--;
            if (err)
                goto fail;
            continue;
        }
        if (child->realizing) {
            PyErr_SetString(PyExc_RuntimeError, "cannot compute a Value whose graph has a cycle");
            goto fail;
        }
        if (child->op == NULL) {
            PyErr_SetString(PyExc_RuntimeError, "a leaf Value has no data");
            goto fail;
        }
        if (top == cap) {
            realize_frame *bigger =
                PyMem_Realloc(stack, sizeof(realize_frame) * (size_t)(cap *= 2));
            if (bigger == NULL) {
                PyErr_NoMemory();
                goto fail;
            }
            stack = bigger;
        }
        child->realizing = 1;
        stack[top++] = (realize_frame){child, 0};
    }
    rc = 0;
fail:
    while (top > 0)
        stack[--top].node->realizing = 0;
    PyMem_Free(stack);
    return rc;
}

PyObject *ndl_value_realize(ValueObject *v)
{
    if (v->cached_data != NULL)
        return v->cached_data;
    if (v->op == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "a leaf Value has no data");
        return NULL;
    }
    if (realize_graph(v) < 0)
        return NULL;
    return v->cached_data;
}

/* Note [Inputs read on the host]
 *   Some ops read an input's values on the host: GatherRows and ScatterRows
 *   their row indices, SoftmaxCrossEntropy its labels (the rows' `host`
 *   column, ops.def). Given such an input on a device whose memory the host
 *   cannot read (cuda), each read is a device-to-host copy that waits for
 *   the device's queue, and the op reads it in the forward and again in the
 *   backward, whose rules build further ops on the same input (GatherRows'
 *   gradient is a ScatterRows of its indices and back). So applying such an
 *   op copies that input to the cpu device once and keeps the copy as the
 *   node's input: a detached cpu Tensor, same dtype, same values. Indices
 *   and labels are constants in these ops' formulas (one_hot(y),
 *   one_hot(idx) @ w), so such an input gets no gradient: an input that
 *   asks for one (Tensor's requires_grad defaults to True) is kept as a
 *   detached alias of its data on a host device too, so its .grad stays
 *   None on every device, as nn.SoftmaxLoss and nn.Embedding (and the
 *   course's one_hot formulas) leave it. The
 *   layers that check the values first (nn.SoftmaxLoss, nn.Embedding) pass
 *   the host values they read, so the op copies nothing more; np mode has
 *   only host arrays; in lazy mode an input not computed yet stays as it is
 *   (its values do not exist until the graph is realized).
 */
static PyObject *with_host_inputs(PyObject *op, PyObject *inputs)
{
    const ndl_opdef *def = op_is_builtin(op) ? ((OpObject *)op)->def : NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(inputs);
    PyObject *res = NULL, *host = NULL;
    if (def == NULL || def->host_inputs == 0 || ndl_np_mode)
        return Py_NewRef(inputs);
    for (Py_ssize_t i = 0; i < n && i < 32; i++) {
        PyObject *x = PyTuple_GET_ITEM(inputs, i), *data;
        ValueObject *copy;
        int on_host, grad;
        if (!((def->host_inputs >> i) & 1u) || !Value_Check(x))
            continue;
        data = ((ValueObject *)x)->cached_data; /* borrowed */
        if (data == NULL || !NDArray_Check(data))
            continue;
        on_host = ((NDArrayObject *)data)->storage->backend->host_accessible;
        grad = ((ValueObject *)x)->requires_grad;
        if (on_host && !grad)
            continue;
        if (res == NULL) { /* a new tuple (a whole-tuple slice would be inputs itself) */
            if ((res = PyTuple_New(n)) == NULL)
                return NULL;
            for (Py_ssize_t j = 0; j < n; j++)
                PyTuple_SET_ITEM(res, j, Py_NewRef(PyTuple_GET_ITEM(inputs, j)));
        }
        host = on_host ? Py_NewRef(data)
                       : PyObject_CallMethod(data, "to", "O", (PyObject *)ndl_device_cpu());
        if (host == NULL || (copy = ndl_value_alloc(&Tensor_Type)) == NULL)
            goto fail;
        ndl_value_init(copy, NULL, ndl_empty_tuple, 1, host, 0);
        Py_CLEAR(host);
        PyTuple_SetItem(res, i, (PyObject *)copy); /* steals copy, drops x */
    }
    return res != NULL ? res : Py_NewRef(inputs);
fail:
    Py_XDECREF(host);
    Py_XDECREF(res);
    return NULL;
}

PyObject *ndl_make_from_op(PyTypeObject *type, PyObject *op, PyObject *inputs_in)
{
    ValueObject *v = NULL;
    PyObject *data, *inputs = with_host_inputs(op, inputs_in);
    int requires_grad = 0;
    double t0;
    if (inputs == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(inputs) && ndl_grad_enabled; i++) {
        PyObject *x = PyTuple_GET_ITEM(inputs, i);
        if (Value_Check(x) && ((ValueObject *)x)->requires_grad) {
            requires_grad = 1;
            break;
        }
    }
    v = ndl_value_alloc(type);
    if (v == NULL)
        goto fail;
    if (ndl_lazy_mode) {
        ndl_value_init(v, op, inputs, 1, NULL, requires_grad);
    } else {
        t0 = ndl_hook_start();
        if ((data = value_compute(op, inputs)) == NULL) {
            Py_CLEAR(v);
            goto fail;
        }
        /* NOTE: a result that needs no gradient is a detached leaf at once
         * (API.md 3.8), so inference keeps no graph. */
        if (requires_grad)
            ndl_value_init(v, op, inputs, 1, data, 1);
        else
            ndl_value_init(v, NULL, ndl_empty_tuple, 1, data, 0);
        Py_DECREF(data);
        if (ndl_hook_forward(op, inputs, (PyObject *)v, t0) < 0)
            Py_CLEAR(v); /* the tools' verdict (detect_anomaly) */
    }
fail:
    Py_DECREF(inputs);
    return (PyObject *)v;
}

int ndl_value_shape(ValueObject *v, int *ndim, int64_t *shape)
{
    PyObject *data = ndl_value_realize(v);
    if (data == NULL)
        return -1;
    return nda_shape(data, ndim, shape);
}

/* ---- lifetime ----------------------------------------------------------- */

int ndl_op_traverse(OpObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->dict);
    Py_VISIT(self->scalar_obj);
    return 0;
}

int ndl_op_clear(OpObject *self)
{
    Py_CLEAR(self->dict);
    Py_CLEAR(self->scalar_obj);
    return 0;
}

static void Op_dealloc(OpObject *self)
{
    PyObject_GC_UnTrack(self);
    ndl_op_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Op_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    OpObject *self = (OpObject *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->def = ndl_opdef_of_type(type);
    return (PyObject *)self;
}

OpObject *ndl_op_new(const ndl_opdef *def)
{
    OpObject *self = (OpObject *)def->type->tp_alloc(def->type, 0);
    if (self != NULL)
        self->def = def;
    return self;
}

static PyObject *Op_getattro(OpObject *self, PyObject *name)
{
    PyObject *res = PyObject_GenericGetAttr((PyObject *)self, name);
    const char *s;
    if (res != NULL || self->def == NULL || !PyErr_ExceptionMatches(PyExc_AttributeError))
        return res;
    s = PyUnicode_AsUTF8(name);
    if (s == NULL)
        return NULL;
    res = ndl_op_param_attr(self, s);
    if (res != NULL)
        PyErr_Clear();
    return res;
}

/* ---- methods ------------------------------------------------------------ */

static PyObject *not_implemented(const char *what)
{
    PyErr_Format(PyExc_NotImplementedError, "%s", what);
    return NULL;
}

static PyObject *Op_compute(OpObject *self, PyObject *const *args, Py_ssize_t n)
{
    if (self->def == NULL)
        return not_implemented("Op.compute is abstract: define compute(self, *arrays)");
    if (self->def->arity >= 0 && n != self->def->arity) {
        PyErr_Format(PyExc_TypeError, "%s.compute takes %d arrays, got %zd", self->def->name,
                     self->def->arity, n);
        return NULL;
    }
    return self->def->forward(self, args, (int)n);
}

int ndl_check_node_arity(OpObject *op, ValueObject *node)
{
    Py_ssize_t n = node->inputs ? PyTuple_GET_SIZE(node->inputs) : 0;
    if ((op->def->arity >= 0 && n != op->def->arity) || (op->def->arity < 0 && n == 0)) {
        PyErr_Format(PyExc_ValueError, "%s.gradient: the node has %zd inputs, the op takes %d",
                     op->def->name, n, op->def->arity);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!Value_Check(PyTuple_GET_ITEM(node->inputs, i))) {
            PyErr_Format(PyExc_TypeError, "%s.gradient: input %zd of the node is not a Value",
                         op->def->name, i);
            return -1;
        }
    }
    return 0;
}

/* Run a built-in backward with every input needed; a tuple of gradients. */
PyObject *ndl_op_gradient_tuple(OpObject *op, ValueObject *g, ValueObject *node)
{
    Py_ssize_t n = PyTuple_GET_SIZE(node->inputs);
    char needs_s[NDL_OP_MAX_ARITY];
    PyObject *grads_s[NDL_OP_MAX_ARITY], *res = NULL;
    char *needs = ndl_small_array(needs_s, sizeof(char), n);
    PyObject **grads = needs ? ndl_small_array(grads_s, sizeof(PyObject *), n) : NULL;
    if (grads == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++)
        needs[i] = 1;
    if (op->def->backward(op, g, node, needs, grads) < 0)
        goto fail;
    res = PyTuple_New(n);
    if (res == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyTuple_SET_ITEM(res, i, grads[i] ? grads[i] : Py_NewRef(Py_None));
        grads[i] = NULL;
    }
fail:
    for (Py_ssize_t i = 0; i < n && grads; i++)
        Py_XDECREF(grads[i]);
    if (needs != NULL)
        ndl_small_array_free(needs, needs_s);
    if (grads != NULL)
        ndl_small_array_free(grads, grads_s);
    return res;
}

static PyObject *Op_gradient(OpObject *self, PyObject *args)
{
    PyObject *g, *node, *t;
    if (!PyArg_ParseTuple(args, "OO:gradient", &g, &node))
        return NULL;
    if (self->def == NULL)
        return not_implemented("Op.gradient is abstract: define gradient(self, out_grad, node)");
    if (!Value_Check(g) || !Value_Check(node)) {
        PyErr_SetString(PyExc_TypeError, "gradient(out_grad, node) takes two Values");
        return NULL;
    }
    if (ndl_check_node_arity(self, (ValueObject *)node) < 0)
        return NULL;
    t = ndl_op_gradient_tuple(self, (ValueObject *)g, (ValueObject *)node);
    if (t == NULL || PyTuple_GET_SIZE(t) != 1)
        return t;
    /* One input: the gradient itself, as the course's ops return it. */
    Py_SETREF(t, Py_NewRef(PyTuple_GET_ITEM(t, 0)));
    return t;
}

PyObject *ndl_as_grad_tuple(PyObject *r)
{
    if (PyTuple_Check(r))
        return Py_NewRef(r);
    if (PyList_Check(r))
        return PyList_AsTuple(r);
    /* NOTE: a TensorTuple counts as a single gradient (API.md 3.2). */
    return PyTuple_Pack(1, r);
}

static PyObject *Op_gradient_as_tuple(PyObject *self, PyObject *args)
{
    PyObject *g, *node, *r, *t;
    if (!PyArg_ParseTuple(args, "OO:gradient_as_tuple", &g, &node))
        return NULL;
    r = PyObject_CallMethod(self, "gradient", "OO", g, node);
    if (r == NULL)
        return NULL;
    t = ndl_as_grad_tuple(r);
    Py_DECREF(r);
    return t;
}

static PyObject *Op_call(PyObject *self, PyObject *args, PyObject *kwds)
{
    return not_implemented("Op.__call__ is abstract: subclass TensorOp or TensorTupleOp");
}

static PyObject *TensorOp_call(PyObject *self, PyObject *args, PyObject *kwds)
{
    return ndl_make_from_op(&Tensor_Type, self, args);
}

static PyObject *TensorTupleOp_call(PyObject *self, PyObject *args, PyObject *kwds)
{
    return ndl_make_from_op(&TensorTuple_Type, self, args);
}

static PyObject *Op_repr(OpObject *self)
{
    return PyUnicode_FromFormat("%s()", self->def ? self->def->name : Py_TYPE(self)->tp_name);
}

static PyMethodDef Op_methods[] = {
    {"compute", (PyCFunction)(void (*)(void))Op_compute, METH_FASTCALL,
     "compute(*arrays): the forward on raw arrays."},
    {"gradient", (PyCFunction)Op_gradient, METH_VARARGS,
     "gradient(out_grad, node): the input gradients, as Tensors."},
    {"gradient_as_tuple", (PyCFunction)Op_gradient_as_tuple, METH_VARARGS,
     "gradient(out_grad, node), always as a tuple."},
    {NULL, NULL, 0, NULL},
};

PyTypeObject Op_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "needle.autograd.Op",
    .tp_doc = "Operator definition.",
    .tp_basicsize = sizeof(OpObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_new = Op_new,
    .tp_dealloc = (destructor)Op_dealloc,
    .tp_traverse = (traverseproc)ndl_op_traverse,
    .tp_clear = (inquiry)ndl_op_clear,
    .tp_call = Op_call,
    .tp_getattro = (getattrofunc)Op_getattro,
    .tp_dictoffset = offsetof(OpObject, dict),
    .tp_methods = Op_methods,
    .tp_repr = (reprfunc)Op_repr,
};

PyTypeObject TensorOp_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "needle.autograd.TensorOp",
    .tp_doc = "Op class specialized to output tensors.",
    .tp_basicsize = sizeof(OpObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_base = &Op_Type,
    .tp_traverse = (traverseproc)ndl_op_traverse,
    .tp_clear = (inquiry)ndl_op_clear,
    .tp_call = TensorOp_call,
};

PyTypeObject TensorTupleOp_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "needle.autograd.TensorTupleOp",
    .tp_doc = "Op class specialized to output TensorTuple.",
    .tp_basicsize = sizeof(OpObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_base = &Op_Type,
    .tp_traverse = (traverseproc)ndl_op_traverse,
    .tp_clear = (inquiry)ndl_op_clear,
    .tp_call = TensorTupleOp_call,
};
