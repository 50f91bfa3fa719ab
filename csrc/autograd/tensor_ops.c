/* tensor_ops.c: building graph nodes from C: the ndl_t_* constructors the
 * backward rules use, and Tensor's operators and op methods (API.md 3.5).
 *
 * Python equivalent:
 *     a + b  -> EWiseAdd()(a, b)        a + s -> AddScalar(s)(a)
 *     a - b  -> EWiseAdd()(a, Negate()(b))   a - s -> AddScalar(-s)(a)
 *     s - a  -> AddScalar(s)(Negate()(a))    s / a -> MulScalar(s)(PowerScalar(-1)(a))
 *     a.sum(axes), a.reshape(shape), a.broadcast_to(shape), a.transpose(axes), a @ b
 * Parameterless ops share one instance each.
 */
#include <string.h>

#include "array_api.h"

static OpObject *shared(ndl_opdef *def)
{
    if (def->instance == NULL)
        def->instance = ndl_op_new(def);
    return def->instance; /* borrowed; lives as long as the module */
}

static PyObject *apply(OpObject *op, PyObject *inputs)
{
    PyTypeObject *rt = op->def->tuple_result ? &TensorTuple_Type : &Tensor_Type;
    return ndl_make_from_op(rt, (PyObject *)op, inputs);
}

static PyObject *apply1(OpObject *op, PyObject *a)
{
    PyObject *in, *r;
    if (op == NULL)
        return NULL;
    in = PyTuple_Pack(1, a);
    if (in == NULL)
        return NULL;
    r = apply(op, in);
    Py_DECREF(in);
    return r;
}

static PyObject *apply2(OpObject *op, PyObject *a, PyObject *b)
{
    PyObject *in, *r;
    if (op == NULL)
        return NULL;
    in = PyTuple_Pack(2, a, b);
    if (in == NULL)
        return NULL;
    r = apply(op, in);
    Py_DECREF(in);
    return r;
}

/* apply1 of a fresh op, releasing the op. */
static PyObject *apply1_owned(OpObject *op, PyObject *a)
{
    PyObject *r = apply1(op, a);
    Py_XDECREF(op);
    return r;
}

PyObject *ndl_t_add(PyObject *a, PyObject *b) { return apply2(shared(&ndl_op_EWiseAdd), a, b); }
PyObject *ndl_t_mul(PyObject *a, PyObject *b) { return apply2(shared(&ndl_op_EWiseMul), a, b); }
PyObject *ndl_t_div(PyObject *a, PyObject *b) { return apply2(shared(&ndl_op_EWiseDiv), a, b); }
PyObject *ndl_t_pow(PyObject *a, PyObject *b) { return apply2(shared(&ndl_op_EWisePow), a, b); }
PyObject *ndl_t_matmul(PyObject *a, PyObject *b) { return apply2(shared(&ndl_op_MatMul), a, b); }
PyObject *ndl_t_neg(PyObject *a) { return apply1(shared(&ndl_op_Negate), a); }
PyObject *ndl_t_log(PyObject *a) { return apply1(shared(&ndl_op_Log), a); }
PyObject *ndl_t_exp(PyObject *a) { return apply1(shared(&ndl_op_Exp), a); }

PyObject *ndl_t_scalar_op(ndl_opdef *def, PyObject *a, double s, PyObject *s_obj)
{
    OpObject *op = ndl_op_new(def);
    if (op == NULL)
        return NULL;
    op->s0 = s;
    op->scalar_obj = Py_XNewRef(s_obj);
    return apply1_owned(op, a);
}

PyObject *ndl_t_add_scalar(PyObject *a, double s) { return ndl_t_scalar_op(&ndl_op_AddScalar, a, s, NULL); }
PyObject *ndl_t_mul_scalar(PyObject *a, double s) { return ndl_t_scalar_op(&ndl_op_MulScalar, a, s, NULL); }
PyObject *ndl_t_div_scalar(PyObject *a, double s) { return ndl_t_scalar_op(&ndl_op_DivScalar, a, s, NULL); }
PyObject *ndl_t_power_scalar(PyObject *a, double s)
{
    return ndl_t_scalar_op(&ndl_op_PowerScalar, a, s, NULL);
}

static PyObject *shape_op(ndl_opdef *def, PyObject *a, int ndim, const int64_t *shape)
{
    OpObject *op = ndl_op_new(def);
    if (op == NULL)
        return NULL;
    op->nshape = ndim;
    memcpy(op->shape, shape, sizeof(int64_t) * ndim);
    return apply1_owned(op, a);
}

PyObject *ndl_t_reshape(PyObject *a, int ndim, const int64_t *shape)
{
    return shape_op(&ndl_op_Reshape, a, ndim, shape);
}

PyObject *ndl_t_broadcast_to(PyObject *a, int ndim, const int64_t *shape)
{
    return shape_op(&ndl_op_BroadcastTo, a, ndim, shape);
}

static OpObject *axes_op(ndl_opdef *def, int naxes, const int64_t *axes)
{
    OpObject *op = ndl_op_new(def);
    if (op == NULL)
        return NULL;
    op->has_axes = naxes >= 0;
    op->naxes = naxes < 0 ? 0 : naxes;
    if (naxes > 0)
        memcpy(op->axes, axes, sizeof(int64_t) * naxes);
    return op;
}

PyObject *ndl_t_summation(PyObject *a, int naxes, const int64_t *axes)
{
    return apply1_owned(axes_op(&ndl_op_Summation, naxes, axes), a);
}

PyObject *ndl_t_transpose(PyObject *a, int64_t ax0, int64_t ax1)
{
    int64_t axes[2] = {ax0, ax1};
    return apply1_owned(axes_op(&ndl_op_Transpose, 2, axes), a);
}

PyObject *ndl_t_flip(PyObject *a, int naxes, const int64_t *axes)
{
    return apply1_owned(axes_op(&ndl_op_Flip, naxes, axes), a);
}

static PyObject *dilate_op(ndl_opdef *def, PyObject *a, int naxes, const int64_t *axes, int64_t d)
{
    OpObject *op = axes_op(def, naxes, axes);
    if (op != NULL)
        op->i1 = d;
    return apply1_owned(op, a);
}

PyObject *ndl_t_dilate(PyObject *a, int naxes, const int64_t *axes, int64_t d)
{
    return dilate_op(&ndl_op_Dilate, a, naxes, axes, d);
}

PyObject *ndl_t_undilate(PyObject *a, int naxes, const int64_t *axes, int64_t d)
{
    return dilate_op(&ndl_op_UnDilate, a, naxes, axes, d);
}

PyObject *ndl_t_make_tuple(PyObject *items)
{
    OpObject *op = shared(&ndl_op_MakeTensorTuple);
    return op ? apply(op, items) : NULL;
}

PyObject *ndl_t_tuple_get_item(PyObject *t, int64_t i)
{
    ValueObject *v = (ValueObject *)t;
    OpObject *op;
    if (v->op != NULL && Py_TYPE(v->op) == ndl_op_MakeTensorTuple.type &&
        i < PyTuple_GET_SIZE(v->inputs))
        return Py_NewRef(PyTuple_GET_ITEM(v->inputs, i)); /* folded (API.md 4.2) */
    op = ndl_op_new(&ndl_op_TupleGetItem);
    if (op == NULL)
        return NULL;
    op->i0 = i;
    return apply1_owned(op, t);
}

PyObject *ndl_t_stack(PyObject *items, int64_t axis)
{
    PyObject *tup = ndl_t_make_tuple(items), *r;
    OpObject *op;
    if (tup == NULL)
        return NULL;
    op = ndl_op_new(&ndl_op_Stack);
    if (op != NULL)
        op->i0 = axis;
    r = apply1_owned(op, tup);
    Py_DECREF(tup);
    return r;
}

PyObject *ndl_t_split(PyObject *a, int64_t axis)
{
    OpObject *op = ndl_op_new(&ndl_op_Split);
    if (op != NULL)
        op->i0 = axis;
    return apply1_owned(op, a);
}

PyObject *ndl_t_const(PyObject *data)
{
    return (PyObject *)ndl_tensor_leaf(&Tensor_Type, data, 0);
}

PyObject *ndl_t_unbroadcast(PyObject *g, int ndim, const int64_t *shape)
{
    int64_t gshape[NDL_MAX_DIMS], axes[NDL_MAX_DIMS];
    int gnd, naxes = 0, lead;
    PyObject *s, *r;
    if (ndl_value_shape((ValueObject *)g, &gnd, gshape) < 0)
        return NULL;
    if (gnd == ndim && memcmp(gshape, shape, sizeof(int64_t) * ndim) == 0)
        return Py_NewRef(g);
    lead = gnd - ndim;
    if (lead < 0) {
        PyErr_SetString(PyExc_RuntimeError, "unbroadcast: gradient has fewer dims than its input");
        return NULL;
    }
    for (int i = 0; i < gnd; i++)
        if (i < lead || (shape[i - lead] == 1 && gshape[i] != 1))
            axes[naxes++] = i;
    s = naxes ? ndl_t_summation(g, naxes, axes) : Py_NewRef(g);
    if (s == NULL)
        return NULL;
    r = ndl_t_reshape(s, ndim, shape);
    Py_DECREF(s);
    return r;
}

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
            t = ndl_t_neg(y);
            r = t ? ndl_t_add(x, t) : NULL;
            Py_XDECREF(t);
            return r;
        case T_MUL:
            return ndl_t_mul(x, y);
        case T_DIV:
            return ndl_t_div(x, y);
        case T_POW:
            return ndl_t_pow(x, y);
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
            t = ndl_t_neg(y);
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
static PyObject *nb_neg(PyObject *x) { return ndl_t_neg(x); }
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

/* self.<method>(*args, **kwds) = Op(*args, **kwds)(self) */
static PyObject *method_op(ndl_opdef *def, PyObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *op = PyObject_Call((PyObject *)def->type, args, kwds);
    PyObject *r = op ? apply1((OpObject *)op, self) : NULL;
    Py_XDECREF(op);
    return r;
}

/* reshape((2, 3)) and reshape(2, 3) alike */
static PyObject *shape_args(PyObject *args)
{
    if (PyTuple_GET_SIZE(args) == 1 && !PyLong_Check(PyTuple_GET_ITEM(args, 0)))
        return Py_NewRef(args);
    return PyTuple_Pack(1, args);
}

static PyObject *T_sum(PyObject *self, PyObject *args, PyObject *kwds)
{
    return method_op(&ndl_op_Summation, self, args, kwds);
}
static PyObject *T_reshape(PyObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *a = kwds ? Py_NewRef(args) : shape_args(args), *r;
    if (a == NULL)
        return NULL;
    r = method_op(&ndl_op_Reshape, self, a, kwds);
    Py_DECREF(a);
    return r;
}
static PyObject *T_broadcast_to(PyObject *self, PyObject *args, PyObject *kwds)
{
    PyObject *a = kwds ? Py_NewRef(args) : shape_args(args), *r;
    if (a == NULL)
        return NULL;
    r = method_op(&ndl_op_BroadcastTo, self, a, kwds);
    Py_DECREF(a);
    return r;
}
static PyObject *T_transpose(PyObject *self, PyObject *args, PyObject *kwds)
{
    return method_op(&ndl_op_Transpose, self, args, kwds);
}
static PyObject *T_matmul(PyObject *self, PyObject *other) { return nb_matmul(self, other); }
static PyObject *T_exp(PyObject *self, PyObject *u) { return ndl_t_exp(self); }
static PyObject *T_log(PyObject *self, PyObject *u) { return ndl_t_log(self); }
static PyObject *T_relu(PyObject *self, PyObject *u) { return apply1(shared(&ndl_op_ReLU), self); }
static PyObject *T_tanh(PyObject *self, PyObject *u) { return apply1(shared(&ndl_op_Tanh), self); }

#define KW(f) (PyCFunction)(void (*)(void))(f), METH_VARARGS | METH_KEYWORDS
PyMethodDef ndl_tensor_op_methods[] = {
    {"sum", KW(T_sum), "sum(axes=None): Summation(axes)(self)."},
    {"reshape", KW(T_reshape), "reshape(shape): Reshape(shape)(self)."},
    {"broadcast_to", KW(T_broadcast_to), "broadcast_to(shape): BroadcastTo(shape)(self)."},
    {"transpose", KW(T_transpose), "transpose(axes=None): Transpose(axes)(self)."},
    {"matmul", (PyCFunction)T_matmul, METH_O, "matmul(other): self @ other."},
    {"exp", (PyCFunction)T_exp, METH_NOARGS, "Exp()(self)."},
    {"log", (PyCFunction)T_log, METH_NOARGS, "Log()(self)."},
    {"relu", (PyCFunction)T_relu, METH_NOARGS, "ReLU()(self)."},
    {"tanh", (PyCFunction)T_tanh, METH_NOARGS, "Tanh()(self)."},
    {NULL, NULL, 0, NULL},
};
