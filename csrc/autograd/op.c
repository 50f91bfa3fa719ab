/* op.c: Op, TensorOp, TensorTupleOp and the built-in op classes.
 *
 * Python equivalent (API.md 3.2, 4.1):
 *     class Op:
 *         def __call__(self, *args): raise NotImplementedError
 *         def compute(self, *args): raise NotImplementedError
 *         def gradient(self, out_grad, node): raise NotImplementedError
 *         def gradient_as_tuple(self, out_grad, node): ...  # always a tuple
 *     class TensorOp(Op):      __call__ = lambda self, *args: Tensor.make_from_op(self, args)
 *     class TensorTupleOp(Op): __call__ = lambda self, *args: TensorTuple.make_from_op(self, args)
 *     class EWiseAdd(TensorOp): compute / gradient from the ops table; add = lambda a, b: EWiseAdd()(a, b)
 * One generic class body serves every built-in op: the table row (ndl_opdef,
 * in ops_<family>.c) supplies the name, parameters, forward and backward.
 * A Python subclass of TensorOp (def == NULL) is called through its Python
 * methods by the engine.
 */
#include <string.h>

#include "array_api.h"

/* ---- the table ---------------------------------------------------------- */

ndl_opdef *const ndl_opdefs[] = {
#define X(NAME, FAMILY) &ndl_op_##NAME,
#include "ops.def"
#undef X
};
const int ndl_num_opdefs = (int)(sizeof(ndl_opdefs) / sizeof(ndl_opdefs[0]));

static const ndl_opdef *def_of_type(PyTypeObject *t)
{
    for (; t != NULL; t = t->tp_base)
        for (int i = 0; i < ndl_num_opdefs; i++)
            if (ndl_opdefs[i]->type == t)
                return ndl_opdefs[i];
    return NULL;
}

/* ---- lifetime ----------------------------------------------------------- */

static int Op_traverse(OpObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->dict);
    Py_VISIT(self->scalar_obj);
    return 0;
}

static int Op_clear(OpObject *self)
{
    Py_CLEAR(self->dict);
    Py_CLEAR(self->scalar_obj);
    return 0;
}

static void Op_dealloc(OpObject *self)
{
    PyObject_GC_UnTrack(self);
    Op_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Op_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    OpObject *self = (OpObject *)type->tp_alloc(type, 0);
    if (self != NULL)
        self->def = def_of_type(type);
    return (PyObject *)self;
}

OpObject *ndl_op_new(const ndl_opdef *def)
{
    OpObject *self = (OpObject *)def->type->tp_alloc(def->type, 0);
    if (self != NULL)
        self->def = def;
    return self;
}

/* ---- parameters --------------------------------------------------------- */

static int parse_scalar(PyObject *obj, double *out, const char *name)
{
    int rc = ndl_as_double(obj, out);
    if (rc == 0)
        PyErr_Format(PyExc_TypeError, "%s must be a number, got %R", name, obj);
    return rc == 1 ? 0 : -1;
}

static int parse_axes(OpObject *op, PyObject *axes)
{
    op->has_axes = axes != Py_None;
    op->naxes = 0;
    if (!op->has_axes)
        return 0;
    return ndl_parse_shape(axes, &op->naxes, op->axes, "axes");
}

static int parse_int(PyObject *obj, int64_t *out, const char *name)
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

/* Parse the constructor arguments of a built-in op and keep them, as given,
 * as attributes of the same names. */
static int builtin_op_init(OpObject *self, PyObject *args, PyObject *kwds)
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
        rc = parse_scalar(a, &self->s0, "scalar");
        Py_XSETREF(self->scalar_obj, Py_NewRef(a));
        break;
    case NDL_P_C0_C1:
        names = kw_c0c1;
        if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO", kw_c0c1, &a, &b))
            return -1;
        rc = parse_scalar(a, &self->s0, "c0") < 0 ? -1 : parse_scalar(b, &self->s1, "c1");
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
        rc = ndl_parse_shape(a, &self->nshape, self->shape, "shape");
        if (rc == 0 && PyList_Check(a)) /* lists mean the equal tuple */
            a = NULL;
        break;
    case NDL_P_INDEX:
        names = kw_index;
        if (!PyArg_ParseTupleAndKeywords(args, kwds, "O", kw_index, &a))
            return -1;
        rc = parse_int(a, &self->i0, "index");
        break;
    case NDL_P_AXIS:
        names = kw_axis;
        if (!PyArg_ParseTupleAndKeywords(args, kwds, "O", kw_axis, &a))
            return -1;
        rc = parse_int(a, &self->i0, "axis");
        break;
    case NDL_P_AXES_DILATION:
        names = kw_axes_dil;
        if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO", kw_axes_dil, &a, &b))
            return -1;
        rc = parse_axes(self, a) < 0 ? -1 : parse_int(b, &self->i1, "dilation");
        if (rc == 0 && self->i1 < 0) {
            PyErr_Format(PyExc_ValueError, "dilation must be >= 0, got %lld", (long long)self->i1);
            rc = -1;
        }
        break;
    case NDL_P_STRIDE_PADDING:
    default:
        names = kw_conv;
        self->i0 = 1, self->i1 = 0;
        if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OO", kw_conv, &a, &b))
            return -1;
        rc = (a != Py_None && parse_int(a, &self->i0, "stride") < 0) ||
                     (b != Py_None && parse_int(b, &self->i1, "padding") < 0)
                 ? -1
                 : 0;
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
 * them from the parsed fields. */
static PyObject *param_attr(OpObject *op, const char *name)
{
    const ndl_opdef *def = op->def;
    if (def == NULL)
        return NULL;
    switch (def->params) {
    case NDL_P_SCALAR:
        if (!strcmp(name, "scalar"))
            return op->scalar_obj ? Py_NewRef(op->scalar_obj) : PyFloat_FromDouble(op->s0);
        break;
    case NDL_P_C0_C1:
        if (!strcmp(name, "c0"))
            return PyFloat_FromDouble(op->s0);
        if (!strcmp(name, "c1"))
            return PyFloat_FromDouble(op->s1);
        break;
    case NDL_P_AXES_DILATION:
        if (!strcmp(name, "dilation"))
            return PyLong_FromLongLong(op->i1);
        /* fall through */
    case NDL_P_AXES:
        if (!strcmp(name, "axes"))
            return op->has_axes ? ndl_shape_tuple(op->naxes, op->axes) : Py_NewRef(Py_None);
        break;
    case NDL_P_SHAPE:
        if (!strcmp(name, "shape"))
            return ndl_shape_tuple(op->nshape, op->shape);
        break;
    case NDL_P_INDEX:
        if (!strcmp(name, "index"))
            return PyLong_FromLongLong(op->i0);
        break;
    case NDL_P_AXIS:
        if (!strcmp(name, "axis"))
            return PyLong_FromLongLong(op->i0);
        break;
    case NDL_P_STRIDE_PADDING:
        if (!strcmp(name, "stride"))
            return PyLong_FromLongLong(op->i0);
        if (!strcmp(name, "padding"))
            return PyLong_FromLongLong(op->i1);
        break;
    default:
        break;
    }
    return NULL;
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
    res = param_attr(self, s);
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
    char needs_s[NDL_OP_MAX_ARITY] = {0};
    PyObject *grads_s[NDL_OP_MAX_ARITY], **grads = grads_s, *res = NULL;
    char *needs = needs_s;
    if (n > NDL_OP_MAX_ARITY) {
        needs = PyMem_Malloc((size_t)n);
        grads = PyMem_Calloc((size_t)n, sizeof(PyObject *));
        if (needs == NULL || grads == NULL) {
            PyErr_NoMemory();
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++)
        needs[i] = 1, grads[i] = NULL;
    if (op->def->backward(op, g, node, needs, grads) < 0)
        goto done;
    res = PyTuple_New(n);
    if (res == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyTuple_SET_ITEM(res, i, grads[i] ? grads[i] : Py_NewRef(Py_None));
        grads[i] = NULL;
    }
done:
    for (Py_ssize_t i = 0; i < n && grads; i++)
        Py_XDECREF(grads[i]);
    if (needs != needs_s)
        PyMem_Free(needs);
    if (grads != grads_s)
        PyMem_Free(grads);
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
    if (r == NULL || PyTuple_Check(r))
        return r;
    if (PyList_Check(r)) {
        PyObject *t = PyList_AsTuple(r);
        Py_DECREF(r);
        return t;
    }
    /* NOTE: a TensorTuple counts as a single gradient (API.md 3.2). */
    {
        PyObject *t = PyTuple_Pack(1, r);
        Py_DECREF(r);
        return t;
    }
}

static PyObject *Op_gradient_as_tuple(PyObject *self, PyObject *args)
{
    PyObject *g, *node;
    if (!PyArg_ParseTuple(args, "OO:gradient_as_tuple", &g, &node))
        return NULL;
    return ndl_as_grad_tuple(PyObject_CallMethod(self, "gradient", "OO", g, node));
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
    .tp_traverse = (traverseproc)Op_traverse,
    .tp_clear = (inquiry)Op_clear,
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
    .tp_traverse = (traverseproc)Op_traverse,
    .tp_clear = (inquiry)Op_clear,
    .tp_call = TensorOp_call,
};

PyTypeObject TensorTupleOp_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "needle.autograd.TensorTupleOp",
    .tp_doc = "Op class specialized to output TensorTuple.",
    .tp_basicsize = sizeof(OpObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_base = &Op_Type,
    .tp_traverse = (traverseproc)Op_traverse,
    .tp_clear = (inquiry)Op_clear,
    .tp_call = TensorTupleOp_call,
};

/* ---- built-in op classes ------------------------------------------------ */

static int builtin_tp_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    return builtin_op_init((OpObject *)self, args, kwds);
}

/* TupleGetItem(i)(a, fold_const=True): a's i-th input itself when a was made
 * by MakeTensorTuple (API.md 4.2). */
static PyObject *TupleGetItem_call(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"value", "fold_const", NULL};
    PyObject *a, *inputs, *fold_obj = Py_True;
    int fold;
    int64_t i = ((OpObject *)self)->i0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:TupleGetItem", kwlist, &a, &fold_obj))
        return NULL;
    if (!PyBool_Check(fold_obj)) {
        PyErr_Format(PyExc_TypeError, "TupleGetItem takes one TensorTuple; fold_const must be a "
                     "bool, got %R", fold_obj);
        return NULL;
    }
    fold = fold_obj == Py_True;
    if (!TensorTuple_Check(a)) {
        PyErr_Format(PyExc_TypeError, "TupleGetItem needs a TensorTuple, got %R", a);
        return NULL;
    }
    if (fold && ((ValueObject *)a)->op != NULL &&
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

#define X(NAME, FAMILY)                                                                            \
    static PyTypeObject NAME##_Type = {                                                            \
        PyVarObject_HEAD_INIT(NULL, 0).tp_name = "needle.ops." #NAME,                              \
        .tp_basicsize = sizeof(OpObject),                                                          \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,                 \
        .tp_traverse = (traverseproc)Op_traverse, .tp_clear = (inquiry)Op_clear,                    \
        .tp_init = builtin_tp_init,                                                                \
    };
#include "ops.def"
#undef X

static PyTypeObject *const builtin_types[] = {
#define X(NAME, FAMILY) &NAME##_Type,
#include "ops.def"
#undef X
};

/* ops.add(a, b) = EWiseAdd()(a, b): the first `arity` arguments are the
 * inputs, the rest construct the op. */
static PyObject *op_function(PyObject *type, PyObject *args, PyObject *kwds)
{
    const ndl_opdef *def = def_of_type((PyTypeObject *)type);
    Py_ssize_t n = PyTuple_GET_SIZE(args), k = def->arity < 0 ? n : def->arity;
    PyObject *inputs = NULL, *params = NULL, *op = NULL, *res = NULL;
    if (n < k) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd tensor arguments, got %zd", def->func, k, n);
        return NULL;
    }
    inputs = PyTuple_GetSlice(args, 0, k);
    params = PyTuple_GetSlice(args, k, n);
    if (inputs && params)
        op = PyObject_Call(type, params, kwds);
    if (op != NULL)
        res = PyObject_Call(op, inputs, NULL);
    Py_XDECREF(inputs);
    Py_XDECREF(params);
    Py_XDECREF(op);
    return res;
}

/* stack(args, axis) = Stack(axis)(make_tuple(*args)) */
static PyObject *stack_function(PyObject *m, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"args", "axis", NULL};
    PyObject *list, *axis, *tup, *res;
    int64_t ax;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO:stack", kwlist, &list, &axis) ||
        parse_int(axis, &ax, "axis") < 0)
        return NULL;
    tup = PySequence_Tuple(list);
    if (tup == NULL)
        return NULL;
    res = ndl_t_stack(tup, ax);
    Py_DECREF(tup);
    return res;
}

static PyMethodDef op_function_defs[sizeof(builtin_types) / sizeof(builtin_types[0])];
static PyMethodDef stack_def = {"stack", (PyCFunction)(void (*)(void))stack_function,
                                METH_VARARGS | METH_KEYWORDS,
                                "stack(args, axis): Stack(axis)(make_tuple(*args))."};

int ndl_op_types_init(PyObject *module)
{
    if (PyType_Ready(&Op_Type) < 0 || PyType_Ready(&TensorOp_Type) < 0 ||
        PyType_Ready(&TensorTupleOp_Type) < 0)
        return -1;
    for (int i = 0; i < ndl_num_opdefs; i++) {
        ndl_opdef *def = ndl_opdefs[i];
        PyTypeObject *t = builtin_types[i];
        PyObject *f;
        t->tp_base = def->tuple_result ? &TensorTupleOp_Type : &TensorOp_Type;
        if (def == &ndl_op_TupleGetItem)
            t->tp_call = TupleGetItem_call;
        def->type = t;
        if (PyType_Ready(t) < 0 || PyModule_AddObjectRef(module, def->name, (PyObject *)t) < 0)
            return -1;
        if (def == &ndl_op_Stack) {
            f = PyCFunction_NewEx(&stack_def, NULL, NULL);
        } else {
            op_function_defs[i] = (PyMethodDef){def->func, (PyCFunction)(void (*)(void))op_function,
                                                METH_VARARGS | METH_KEYWORDS, def->name};
            f = PyCFunction_NewEx(&op_function_defs[i], (PyObject *)t, NULL);
        }
        if (f == NULL || PyModule_AddObject(module, def->func, f) < 0) {
            Py_XDECREF(f);
            return -1;
        }
    }
    return 0;
}
