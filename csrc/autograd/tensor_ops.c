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

/* The builders of the elementwise and scalar rows (../ops.def). */
#define NDL_UNARY(Class, func, KERNEL, kernel, numpy, method)                                      \
    PyObject *ndl_t_##func(PyObject *a) { return apply1(shared(&ndl_op_##Class), a); }
#define NDL_BINARY(Class, func, KERNEL, kernel, numpy)                                             \
    PyObject *ndl_t_##func(PyObject *a, PyObject *b)                                               \
    {                                                                                              \
        return apply2(shared(&ndl_op_##Class), a, b);                                              \
    }
#define NDL_SCALAR(Class, func, KERNEL)                                                            \
    PyObject *ndl_t_##func(PyObject *a, double s)                                                  \
    {                                                                                              \
        return ndl_t_scalar_op(&ndl_op_##Class, a, s, NULL);                                       \
    }
#include "ops.def"

PyObject *ndl_t_matmul(PyObject *a, PyObject *b) { return apply2(shared(&ndl_op_MatMul), a, b); }

PyObject *ndl_t_scalar_op(ndl_opdef *def, PyObject *a, double s, PyObject *s_obj)
{
    OpObject *op = ndl_op_new(def);
    if (op == NULL)
        return NULL;
    op->scalar = s;
    op->scalar_obj = Py_XNewRef(s_obj);
    return apply1_owned(op, a);
}

static PyObject *shape_op(ndl_opdef *def, PyObject *a, int ndim, const int64_t *shape)
{
    OpObject *op = ndl_op_new(def);
    if (op == NULL)
        return NULL;
    op->shape.ndim = ndim;
    memcpy(op->shape.dims, shape, sizeof(int64_t) * ndim);
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
    op->axes.given = naxes >= 0;
    op->axes.n = naxes < 0 ? 0 : naxes;
    if (naxes > 0)
        memcpy(op->axes.v, axes, sizeof(int64_t) * naxes);
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

PyObject *ndl_t_permute(PyObject *a, int naxes, const int64_t *axes)
{
    return apply1_owned(axes_op(&ndl_op_Permute, naxes, axes), a);
}

PyObject *ndl_t_flip(PyObject *a, int naxes, const int64_t *axes)
{
    return apply1_owned(axes_op(&ndl_op_Flip, naxes, axes), a);
}

static PyObject *dilate_op(ndl_opdef *def, PyObject *a, int naxes, const int64_t *axes, int64_t d)
{
    OpObject *op = axes_op(def, naxes, axes);
    if (op != NULL)
        op->dilation = d;
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
    op->index = i;
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
        op->axis = axis;
    r = apply1_owned(op, tup);
    Py_DECREF(tup);
    return r;
}

PyObject *ndl_t_split(PyObject *a, int64_t axis)
{
    OpObject *op = ndl_op_new(&ndl_op_Split);
    if (op != NULL)
        op->axis = axis;
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
        return apply1(shared(def), self);
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
