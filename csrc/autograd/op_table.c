/* op_table.c: the built-in ops as data, generated from the rows of
 * ../ops.def (Note [One op, one row]): one ndl_opdef per row (designated
 * initializers), one Python class per op and its function in needle._C.
 *
 * Python equivalent:
 *     class EWiseAdd(TensorOp): compute/gradient from the row's forward/backward
 *     def add(a, b): return EWiseAdd()(a, b)
 *     OP_CLASSES = ("Negate", "Log", ...); OP_FUNCTIONS = ("negate", "log", ...)
 * needle/ops/__init__.py re-exports exactly OP_CLASSES and OP_FUNCTIONS.
 */
#include "array_api.h"

/* ---- the table ---------------------------------------------------------- */

#define NDL_UNARY(Class, func_, KERNEL, kernel_, numpy, method_)                                   \
    ndl_opdef ndl_op_##Class = {.name = #Class,                                                    \
                                .func = #func_,                                                    \
                                .method = method_,                                                 \
                                .arity = 1,                                                        \
                                .params = NDL_P_NONE,                                              \
                                .kernel = NDL_UN_##KERNEL,                                         \
                                .forward = ndl_fwd_unary,                                          \
                                .backward = ndl_bwd_##Class};
#define NDL_BINARY(Class, func_, KERNEL, kernel_, numpy)                                           \
    ndl_opdef ndl_op_##Class = {.name = #Class, .func = #func_, .arity = 2, .params = NDL_P_NONE,  \
                                .kernel = NDL_BIN_##KERNEL, .forward = ndl_fwd_binary,             \
                                .backward = ndl_bwd_##Class};
#define NDL_SCALAR(Class, func_, KERNEL)                                                           \
    ndl_opdef ndl_op_##Class = {.name = #Class, .func = #func_, .arity = 1,                        \
                                .params = NDL_P_SCALAR, .kernel = NDL_BIN_##KERNEL,                \
                                .forward = ndl_fwd_scalar, .backward = ndl_bwd_##Class};
#define NDL_REDUCE(Class, func_, KERNEL, numpy, method_)                                           \
    ndl_opdef ndl_op_##Class = {.name = #Class,                                                    \
                                .func = #func_,                                                    \
                                .method = method_,                                                 \
                                .arity = 1,                                                        \
                                .params = NDL_P_AXES,                                              \
                                .kernel = NDL_RED_##KERNEL,                                        \
                                .forward = ndl_fwd_reduce,                                         \
                                .backward = ndl_bwd_##Class};
#define NDL_OP(Class, func_, family, arity_, params_, method_, host_)                              \
    ndl_opdef ndl_op_##Class = {.name = #Class, .func = #func_, .method = method_,                 \
                                .arity = arity_, .params = NDL_P_##params_, .kernel = -1,          \
                                .host_inputs = host_, .forward = ndl_fwd_##Class,                  \
                                .backward = ndl_bwd_##Class};
#define NDL_TUPLE_OP(Class, func_, family, arity_, params_)                                        \
    ndl_opdef ndl_op_##Class = {.name = #Class, .func = #func_, .arity = arity_,                   \
                                .tuple_result = 1, .params = NDL_P_##params_, .kernel = -1,        \
                                .forward = ndl_fwd_##Class, .backward = ndl_bwd_##Class};
#include "ops.def"

ndl_opdef *const ndl_opdefs[] = {
#define NDL_OP_ROW(Class, func) &ndl_op_##Class,
#include "ops.def"
};
const int ndl_num_opdefs = (int)(sizeof(ndl_opdefs) / sizeof(ndl_opdefs[0]));

/* ---- the classes -------------------------------------------------------- */

static int builtin_tp_init(PyObject *self, PyObject *args, PyObject *kwds)
{
    return ndl_op_parse_params((OpObject *)self, args, kwds);
}

/* One class per row; its base (TensorOp or TensorTupleOp) is set at init. */
#define NDL_OP_ROW(Class, func)                                                                    \
    static PyTypeObject Class##_Type = {                                                           \
        PyVarObject_HEAD_INIT(NULL, 0).tp_name = "needle.ops." #Class,                             \
        .tp_basicsize = sizeof(OpObject),                                                          \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,                 \
        .tp_traverse = (traverseproc)ndl_op_traverse, .tp_clear = (inquiry)ndl_op_clear,           \
        .tp_init = builtin_tp_init,                                                                \
    };
#include "ops.def"

static PyTypeObject *const builtin_types[] = {
#define NDL_OP_ROW(Class, func) &Class##_Type,
#include "ops.def"
};

/* The op's class, for a class or any subclass of one (NULL for ops defined
 * in Python). */
const ndl_opdef *ndl_opdef_of_type(PyTypeObject *t)
{
    for (; t != NULL; t = t->tp_base)
        for (int i = 0; i < ndl_num_opdefs; i++)
            if (builtin_types[i] == t)
                return ndl_opdefs[i];
    return NULL;
}

/* ---- the functions ------------------------------------------------------ */

/* ops.add(a, b) = EWiseAdd()(a, b): the first `arity` arguments are the
 * inputs, the rest construct the op. */
static PyObject *op_function(PyObject *type, PyObject *args, PyObject *kwds)
{
    const ndl_opdef *def = ndl_opdef_of_type((PyTypeObject *)type);
    Py_ssize_t n = PyTuple_GET_SIZE(args), k = def->arity < 0 ? n : def->arity;
    PyObject *inputs = NULL, *params = NULL, *op = NULL, *res = NULL;
    if (n < k) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd tensor arguments, got %zd", def->func, k, n);
        return NULL;
    }
    inputs = PyTuple_GetSlice(args, 0, k);
    params = inputs ? PyTuple_GetSlice(args, k, n) : NULL;
    op = params ? PyObject_Call(type, params, kwds) : NULL;
    if (op == NULL)
        goto fail;
    res = PyObject_Call(op, inputs, NULL);
fail:
    Py_XDECREF(inputs);
    Py_XDECREF(params);
    Py_XDECREF(op);
    return res;
}

static PyMethodDef op_function_defs[sizeof(builtin_types) / sizeof(builtin_types[0])];

/* A tuple of the rows' class (which == 0) or function (which == 1) names. */
static PyObject *name_tuple(int which)
{
    PyObject *t = PyTuple_New(ndl_num_opdefs);
    for (int i = 0; t != NULL && i < ndl_num_opdefs; i++) {
        PyObject *s = PyUnicode_FromString(which ? ndl_opdefs[i]->func : ndl_opdefs[i]->name);
        if (s == NULL)
            Py_CLEAR(t);
        else
            PyTuple_SET_ITEM(t, i, s);
    }
    return t;
}

int ndl_op_types_init(PyObject *module)
{
    PyObject *f = NULL, *names = NULL;
    if (PyType_Ready(&Op_Type) < 0 || PyType_Ready(&TensorOp_Type) < 0 ||
        PyType_Ready(&TensorTupleOp_Type) < 0)
        return -1;
    for (int i = 0; i < ndl_num_opdefs; i++) {
        ndl_opdef *def = ndl_opdefs[i];
        PyTypeObject *t = builtin_types[i];
        t->tp_base = def->tuple_result ? &TensorTupleOp_Type : &TensorOp_Type;
        if (def == &ndl_op_TupleGetItem)
            t->tp_call = ndl_tuple_get_item_call;
        def->type = t;
        if (PyType_Ready(t) < 0 || PyModule_AddObjectRef(module, def->name, (PyObject *)t) < 0)
            return -1;
        if (def == &ndl_op_Stack) {
            f = PyCFunction_NewEx(&ndl_stack_function_def, NULL, NULL);
        } else if (def == &ndl_op_Conv) { /* its own default padding */
            f = PyCFunction_NewEx(&ndl_conv_function_def, (PyObject *)t, NULL);
        } else {
            op_function_defs[i] = (PyMethodDef){def->func, (PyCFunction)(void (*)(void))op_function,
                                                METH_VARARGS | METH_KEYWORDS, def->name};
            f = PyCFunction_NewEx(&op_function_defs[i], (PyObject *)t, NULL);
        }
        if (f == NULL || PyModule_AddObjectRef(module, def->func, f) < 0)
            goto fail;
        Py_XSETREF(def->function, f); /* kept for the Tensor methods */
        f = NULL;
    }
    for (int which = 0; which < 2; which++) {
        names = name_tuple(which);
        if (names == NULL ||
            PyModule_AddObjectRef(module, which ? "OP_FUNCTIONS" : "OP_CLASSES", names) < 0)
            goto fail;
        Py_CLEAR(names);
    }
    return 0;
fail:
    Py_XDECREF(f);
    Py_XDECREF(names);
    return -1;
}
