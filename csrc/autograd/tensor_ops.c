/* tensor_ops.c: Tensor's operators and op methods (API.md 3.5), the part of
 * the Python face of Tensor (tensor.c) that builds ops.
 *
 * Python equivalent:
 *     a + b  -> EWiseAdd()(a, b)        a + s -> AddScalar(s)(a)
 *     a - b  -> EWiseAdd()(a, Negate()(b))   a - s -> AddScalar(-s)(a)
 *     s - a  -> AddScalar(s)(Negate()(a))    s / a -> MulScalar(s)(PowerScalar(-1)(a))
 *     t.<method>(*args) = needle.ops.<func>(t, *args) for every op row naming a method
 */
#include "array_api.h"

/* ---- Tensor operators --------------------------------------------------- */

/* 1 if obj is a scalar operand (anything float() accepts that is not a
 * Value), with its value; 0 if not; -1 on error. */
static int scalar_operand(PyObject *obj, double *out)
{
    if (Value_Check(obj) || NDArray_Check(obj))
        return 0;
    return ndl_as_double(obj, out);
}

typedef enum { T_ADD, T_SUB, T_MUL, T_DIV, T_POW } tensor_binop;

static PyObject *tensor_binop_apply(tensor_binop kind, PyObject *x, PyObject *y)
{
    double s;
    int rc;
    PyObject *t, *r;
    if (Tensor_Check(x) && Tensor_Check(y)) {
        switch (kind) {
        case T_ADD:
            return ndl_t_add(x, y);
        case T_SUB:
            t = ndl_t_negate(y);
            r = t ? ndl_t_add(x, t) : NULL;
            Py_XDECREF(t);
            return r;
        case T_MUL:
            return ndl_t_multiply(x, y);
        case T_DIV:
            return ndl_t_divide(x, y);
        case T_POW:
            return ndl_t_power(x, y);
        }
    }
    if (Tensor_Check(x)) { /* tensor op scalar */
        rc = scalar_operand(y, &s);
        if (rc <= 0)
            goto not_scalar;
        switch (kind) {
        case T_ADD:
            return ndl_t_scalar_op(&ndl_op_AddScalar, x, s, y);
        case T_SUB: {
            PyObject *neg = PyNumber_Negative(y);
            if (neg == NULL)
                return NULL;
            r = ndl_t_scalar_op(&ndl_op_AddScalar, x, -s, neg);
            Py_DECREF(neg);
            return r;
        }
        case T_MUL:
            return ndl_t_scalar_op(&ndl_op_MulScalar, x, s, y);
        case T_DIV:
            return ndl_t_scalar_op(&ndl_op_DivScalar, x, s, y);
        case T_POW:
            return ndl_t_scalar_op(&ndl_op_PowerScalar, x, s, y);
        }
    }
    if (Tensor_Check(y)) { /* scalar op tensor (reflected) */
        rc = scalar_operand(x, &s);
        if (rc <= 0)
            goto not_scalar;
        switch (kind) {
        case T_ADD:
            return ndl_t_scalar_op(&ndl_op_AddScalar, y, s, x);
        case T_MUL:
            return ndl_t_scalar_op(&ndl_op_MulScalar, y, s, x);
        case T_SUB: /* s - a = AddScalar(s)(Negate(a)) */
            t = ndl_t_negate(y);
            r = t ? ndl_t_scalar_op(&ndl_op_AddScalar, t, s, x) : NULL;
            Py_XDECREF(t);
            return r;
        case T_DIV: /* s / a = MulScalar(s)(PowerScalar(-1)(a)) */
            t = ndl_t_power_scalar(y, -1.0);
            r = t ? ndl_t_scalar_op(&ndl_op_MulScalar, t, s, x) : NULL;
            Py_XDECREF(t);
            return r;
        case T_POW:
            break;
        }
    }
    Py_RETURN_NOTIMPLEMENTED;
not_scalar:
    if (rc < 0)
        return NULL;
    Py_RETURN_NOTIMPLEMENTED;
}

static PyObject *nb_add(PyObject *x, PyObject *y) { return tensor_binop_apply(T_ADD, x, y); }
static PyObject *nb_sub(PyObject *x, PyObject *y) { return tensor_binop_apply(T_SUB, x, y); }
static PyObject *nb_mul(PyObject *x, PyObject *y) { return tensor_binop_apply(T_MUL, x, y); }
static PyObject *nb_div(PyObject *x, PyObject *y) { return tensor_binop_apply(T_DIV, x, y); }
static PyObject *nb_pow(PyObject *x, PyObject *y, PyObject *z)
{
    if (z != Py_None) {
        PyErr_SetString(PyExc_TypeError, "pow() with a modulus is not supported for Tensor");
        return NULL;
    }
    return tensor_binop_apply(T_POW, x, y);
}
static PyObject *nb_neg(PyObject *x) { return ndl_t_negate(x); }
static PyObject *nb_matmul(PyObject *x, PyObject *y)
{
    if (!Tensor_Check(x) || !Tensor_Check(y))
        Py_RETURN_NOTIMPLEMENTED;
    return ndl_t_matmul(x, y);
}

PyNumberMethods ndl_tensor_as_number = {
    .nb_add = nb_add,
    .nb_subtract = nb_sub,
    .nb_multiply = nb_mul,
    .nb_true_divide = nb_div,
    .nb_power = nb_pow,
    .nb_negative = nb_neg,
    .nb_matrix_multiply = nb_matmul,
};

/* ---- Tensor op methods -------------------------------------------------- */

/* t.method(*args, **kwds) = func(t, *args, **kwds) for the op `def`. A
 * parameterless op of one input is applied through its shared instance. */
static PyObject *method_op(ndl_opdef *def, PyObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *full, *r;
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    if (def->params == NDL_P_NONE && def->arity == 1 && n == 0 &&
        (kwds == NULL || !PyDict_GET_SIZE(kwds)))
        return ndl_t_apply_shared(def, self);
    /* NOTE: reshape(2, 3) means reshape((2, 3)), as in NumPy and PyTorch. */
    if (def->params == NDL_P_SHAPE && kwds == NULL &&
        (n > 1 || (n == 1 && PyLong_Check(PyTuple_GET_ITEM(args, 0))))) {
        PyObject *shape = Py_NewRef(args);
        full = PyTuple_Pack(2, self, shape);
        Py_DECREF(shape);
    } else {
        full = PyTuple_New(n + 1);
        if (full != NULL) {
            PyTuple_SET_ITEM(full, 0, Py_NewRef(self));
            for (Py_ssize_t i = 0; i < n; i++)
                PyTuple_SET_ITEM(full, i + 1, Py_NewRef(PyTuple_GET_ITEM(args, i)));
        }
    }
    if (full == NULL)
        return NULL;
    r = PyObject_Call(def->function, full, kwds);
    Py_DECREF(full);
    return r;
}

/* One method per row that names one. */
#define NDL_OP_ROW(Class, func)                                                                    \
    static PyObject *Tensor_##Class(PyObject *self, PyObject *args, PyObject *kwds)                \
    {                                                                                              \
        return method_op(&ndl_op_##Class, self, args, kwds);                                       \
    }
#include "ops.def"

static PyMethodDef op_methods[] = {
#define NDL_OP_ROW(Class, func)                                                                    \
    {NULL, (PyCFunction)(void (*)(void))Tensor_##Class, METH_VARARGS | METH_KEYWORDS,             \
     "needle.ops." #func "(self, ...)"},
#include "ops.def"
};

int ndl_tensor_methods_init(PyTypeObject *type)
{
    size_t n = sizeof(op_methods) / sizeof(op_methods[0]);
    /* NOTE: op_methods and ndl_opdefs list the same rows in the same order. */
    NDL_ASSERT(n == (size_t)ndl_num_opdefs);
    for (size_t i = 0; i < n; i++)
        op_methods[i].ml_name = ndl_opdefs[i]->method; /* NULL: the row has none */
    return ndl_type_add_methods(type, op_methods, n);
}
