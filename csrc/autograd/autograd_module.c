/* autograd_module.c: registers the autograd layer in needle._C.
 *
 * Python view (needle._C):
 *     Value, Tensor, TensorTuple, Op, TensorOp, TensorTupleOp, EWiseAdd, ..., add, ...
 *     find_topo_sort(nodes), compute_gradient_of_variables(out, out_grad), sum_node_list(l)
 *     tensor_count(), get/set_lazy_mode(b), is/set_grad_enabled(b), _set_backend(name, device)
 */
#include <string.h>

#include "array_api.h"

static PyObject *m_tensor_count(PyObject *m, PyObject *u)
{
    return PyLong_FromLongLong(ndl_tensor_counter);
}

static PyObject *m_set_lazy_mode(PyObject *m, PyObject *arg)
{
    int b = PyObject_IsTrue(arg);
    if (b < 0)
        return NULL;
    ndl_lazy_mode = b;
    Py_RETURN_NONE;
}

static PyObject *m_get_lazy_mode(PyObject *m, PyObject *u)
{
    return PyBool_FromLong(ndl_lazy_mode);
}

static PyObject *m_set_grad_enabled(PyObject *m, PyObject *arg)
{
    int b = PyObject_IsTrue(arg), old = ndl_grad_enabled;
    if (b < 0)
        return NULL;
    ndl_grad_enabled = b;
    return PyBool_FromLong(old);
}

static PyObject *m_is_grad_enabled(PyObject *m, PyObject *u)
{
    return PyBool_FromLong(ndl_grad_enabled);
}

static PyObject *m_set_backend(PyObject *m, PyObject *args)
{
    const char *name;
    PyObject *device = Py_None;
    if (!PyArg_ParseTuple(args, "s|O:_set_backend", &name, &device))
        return NULL;
    if (strcmp(name, "nd") != 0 && strcmp(name, "np") != 0) {
        PyErr_Format(PyExc_RuntimeError, "unknown array backend %s: use 'nd' or 'np'", name);
        return NULL;
    }
    ndl_np_mode = strcmp(name, "np") == 0;
    Py_XSETREF(ndl_np_device, Py_NewRef(device));
    Py_RETURN_NONE;
}

static PyMethodDef autograd_methods[] = {
    {"find_topo_sort", ndl_py_find_topo_sort, METH_O,
     "find_topo_sort(node_list): post-order DFS over inputs (inputs before users)."},
    {"compute_gradient_of_variables", ndl_py_compute_gradient_of_variables, METH_VARARGS,
     "compute_gradient_of_variables(output_tensor, out_grad): set .grad by reverse-mode AD."},
    {"sum_node_list", ndl_py_sum_node_list, METH_O, "Left fold of a list with +."},
    {"set_grad_ready_hook", ndl_py_set_grad_ready_hook, METH_O,
     "set_grad_ready_hook(fn or None): fn(leaf) once a leaf's .grad is final in a backward walk,"
     " fn(None) when the walk ends; returns the previous hook."},
    {"tensor_count", m_tensor_count, METH_NOARGS, "Values made and not yet freed."},
    {"set_lazy_mode", m_set_lazy_mode, METH_O, "Set LAZY_MODE."},
    {"get_lazy_mode", m_get_lazy_mode, METH_NOARGS, "LAZY_MODE."},
    {"set_grad_enabled", m_set_grad_enabled, METH_O,
     "Turn graph recording on or off; returns the previous setting."},
    {"is_grad_enabled", m_is_grad_enabled, METH_NOARGS, "Whether op results record a graph."},
    {"_set_op_hook", ndl_py_set_op_hook, METH_O,
     "_set_op_hook(fn): fn is told of every forward and gradient (needle.tools)."},
    {"_set_backend", m_set_backend, METH_VARARGS, "_set_backend('nd' | 'np', np_device)."},
    {NULL, NULL, 0, NULL},
};

int ndl_autograd_init(PyObject *module)
{
    if (nda_init() < 0 || ndl_tensor_types_init() < 0 || ndl_op_types_init(module) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "Value", (PyObject *)&Value_Type) < 0 ||
        PyModule_AddObjectRef(module, "Tensor", (PyObject *)&Tensor_Type) < 0 ||
        PyModule_AddObjectRef(module, "TensorTuple", (PyObject *)&TensorTuple_Type) < 0 ||
        PyModule_AddObjectRef(module, "Op", (PyObject *)&Op_Type) < 0 ||
        PyModule_AddObjectRef(module, "TensorOp", (PyObject *)&TensorOp_Type) < 0 ||
        PyModule_AddObjectRef(module, "TensorTupleOp", (PyObject *)&TensorTupleOp_Type) < 0)
        return -1;
    return PyModule_AddFunctions(module, autograd_methods);
}
