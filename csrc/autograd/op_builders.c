/* op_builders.c: building graph nodes from C: the ndl_t_* constructors the
 * backward rules use (autograd.h). Each applies one op as make_from_op does
 * and returns the new Tensor.
 *
 * Python equivalent:
 *     ndl_t_add(a, b) = EWiseAdd()(a, b)      ndl_t_add_scalar(a, s) = AddScalar(s)(a)
 *     ndl_t_summation(a, axes) = Summation(axes)(a)   ...
 * Parameterless ops share one instance each.
 */
#include <string.h>

#include "array_api.h"

/* The shared instance of a parameterless op (borrowed; lives as long as
 * the module), or NULL with an exception. */
static OpObject *shared(ndl_opdef *def)
{
    if (def->instance == NULL)
        def->instance = ndl_op_new(def);
    return def->instance;
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
    PyObject *r = apply1(op, a);
    Py_XDECREF(op);
    return r;
}

static PyObject *shape_op(ndl_opdef *def, PyObject *a, int ndim, const int64_t *shape)
{
    OpObject *op = ndl_op_new(def);
    if (op == NULL)
        return NULL;
    op->shape.ndim = ndim;
    memcpy(op->shape.dims, shape, sizeof(int64_t) * ndim);
    PyObject *r = apply1(op, a);
    Py_XDECREF(op);
    return r;
}

PyObject *ndl_t_reshape(PyObject *a, int ndim, const int64_t *shape)
{
    return shape_op(&ndl_op_Reshape, a, ndim, shape);
}

PyObject *ndl_t_broadcast_to(PyObject *a, int ndim, const int64_t *shape)
{
    return shape_op(&ndl_op_BroadcastTo, a, ndim, shape);
}

/* def(axes[, dilation])(a) for the ops whose parameters are axes (naxes < 0:
 * axes=None); length, if not NULL, is Dilate's internal output length per
 * axis. The op is made here and released. */
static PyObject *apply_axes_op(ndl_opdef *def, PyObject *a, int naxes, const int64_t *axes,
                               int64_t dilation, const int64_t *length)
{
    OpObject *op = ndl_op_new(def);
    PyObject *r;
    if (op == NULL)
        return NULL;
    op->axes.given = naxes >= 0;
    op->axes.n = naxes < 0 ? 0 : naxes;
    if (naxes > 0)
        memcpy(op->axes.v, axes, sizeof(int64_t) * naxes);
    op->dilation = dilation;
    if (length != NULL) {
        op->has_length = 1;
        memcpy(op->length, length, sizeof(int64_t) * naxes);
    }
    r = apply1(op, a);
    Py_DECREF(op);
    return r;
}

PyObject *ndl_t_summation(PyObject *a, int naxes, const int64_t *axes)
{
    return apply_axes_op(&ndl_op_Summation, a, naxes, axes, 0, NULL);
}

PyObject *ndl_t_transpose(PyObject *a, int64_t ax0, int64_t ax1)
{
    int64_t axes[2] = {ax0, ax1};
    return apply_axes_op(&ndl_op_Transpose, a, 2, axes, 0, NULL);
}

PyObject *ndl_t_permute(PyObject *a, int naxes, const int64_t *axes)
{
    return apply_axes_op(&ndl_op_Permute, a, naxes, axes, 0, NULL);
}

PyObject *ndl_t_flip(PyObject *a, int naxes, const int64_t *axes)
{
    return apply_axes_op(&ndl_op_Flip, a, naxes, axes, 0, NULL);
}

PyObject *ndl_t_dilate(PyObject *a, int naxes, const int64_t *axes, int64_t d)
{
    return apply_axes_op(&ndl_op_Dilate, a, naxes, axes, d, NULL);
}

PyObject *ndl_t_undilate(PyObject *a, int naxes, const int64_t *axes, int64_t d)
{
    return apply_axes_op(&ndl_op_UnDilate, a, naxes, axes, d, NULL);
}

PyObject *ndl_t_dilate_to(PyObject *a, int naxes, const int64_t *axes, int64_t d,
                          const int64_t *length)
{
    return apply_axes_op(&ndl_op_Dilate, a, naxes, axes, d, length);
}

/* A general Conv applied to (a, b); out_hw non-NULL: the transposed one. */
static PyObject *general_conv(PyObject *a, PyObject *b, int64_t s, int64_t d, const int64_t *lo,
                              const int64_t *hi, const int64_t *out_hw)
{
    OpObject *op = ndl_op_new(&ndl_op_Conv);
    PyObject *r;
    if (op == NULL)
        return NULL;
    op->stride = s;
    op->padding = lo[0]; /* only for the attribute; pad_lo / pad_hi rule */
    op->general = 1;
    op->kernel_dilation = d;
    memcpy(op->pad_lo, lo, sizeof op->pad_lo);
    memcpy(op->pad_hi, hi, sizeof op->pad_hi);
    if (out_hw != NULL) {
        op->transposed = 1;
        memcpy(op->out_hw, out_hw, sizeof op->out_hw);
    }
    r = apply2(op, a, b);
    Py_DECREF(op);
    return r;
}

PyObject *ndl_t_conv(PyObject *a, PyObject *b, int64_t s, int64_t d, const int64_t *lo,
                     const int64_t *hi)
{
    return general_conv(a, b, s, d, lo, hi, NULL);
}

PyObject *ndl_t_conv_transpose(PyObject *g, PyObject *b, int64_t s, const int64_t *lo,
                               const int64_t *hi, const int64_t *out_hw)
{
    return general_conv(g, b, s, 1, lo, hi, out_hw);
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
    PyObject *r = apply1(op, t);
    Py_XDECREF(op);
    return r;
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
    r = apply1(op, tup);
    Py_XDECREF(op);
    Py_DECREF(tup);
    return r;
}

PyObject *ndl_t_split(PyObject *a, int64_t axis)
{
    OpObject *op = ndl_op_new(&ndl_op_Split);
    if (op != NULL)
        op->axis = axis;
    PyObject *r = apply1(op, a);
    Py_XDECREF(op);
    return r;
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


PyObject *ndl_t_apply_shared(ndl_opdef *def, PyObject *a) { return apply1(shared(def), a); }

PyObject *ndl_t_lstm_gates(PyObject *z, PyObject *c)
{
    return apply2(shared(&ndl_op_LSTMGates), z, c);
}

PyObject *ndl_t_gather_rows(PyObject *a, PyObject *idx)
{
    return apply2(shared(&ndl_op_GatherRows), a, idx);
}

PyObject *ndl_t_scatter_rows(PyObject *g, PyObject *idx, int ndim, const int64_t *shape)
{
    OpObject *op = ndl_op_new(&ndl_op_ScatterRows);
    if (op == NULL)
        return NULL;
    op->shape.ndim = ndim;
    memcpy(op->shape.dims, shape, sizeof(int64_t) * ndim);
    PyObject *r = apply2(op, g, idx);
    Py_DECREF(op);
    return r;
}
