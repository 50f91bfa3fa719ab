/* ops_ewise.c: the elementwise ops (API.md 4.1): the forwards of every
 * elementwise and scalar row of ../ops.def, and each op's backward rule.
 * g is the output's adjoint, node the output, IN(k) the inputs (Tensors).
 * Binary ops broadcast; their gradients are summed back to each input's
 * shape by ndl_t_unbroadcast (one place, API.md 4.3).
 */
#include "array_api.h"

#define IN(k) PyTuple_GET_ITEM(node->inputs, (k))
#define G ((PyObject *)g)
#define NODE ((PyObject *)node)

/* ---- forwards of the kernel rows ----------------------------------------- */

NDL_FORWARD(unary)
{
    NDL_ASSERT(op->def->kernel >= 0 && op->def->kernel < NDL_NUM_UNARY);
    return nda_unary((ndl_unop)op->def->kernel, x[0]);
}

NDL_FORWARD(binary)
{
    NDL_ASSERT(op->def->kernel >= 0 && op->def->kernel < NDL_NUM_BINARY);
    return nda_binary((ndl_binop)op->def->kernel, x[0], x[1]);
}

/* a ** s for the exponents BatchNorm and LayerNorm use every step, or NULL
 * (no exception) for any other. NOTE: as NumPy does, x**2 is x*x, x**0.5 is
 * sqrt(x), x**-1 is 1/x; powf is several times slower. */
static PyObject *power_fast(PyObject *a, double s)
{
    PyObject *r, *t;
    if (s == 1.0)
        return nda_copy(a);
    if (s == 2.0)
        return nda_binary(NDL_BIN_MUL, a, a);
    if (s == 0.5)
        return nda_unary(NDL_UN_SQRT, a);
    if (s == -1.0)
        return nda_scalar(NDL_BIN_DIV, a, 1.0, NULL, 1);
    if (s == -0.5) { /* the backward of x**0.5 */
        t = nda_unary(NDL_UN_SQRT, a);
        r = t ? nda_scalar(NDL_BIN_DIV, t, 1.0, NULL, 1) : NULL;
        Py_XDECREF(t);
        return r;
    }
    return NULL;
}

NDL_FORWARD(scalar)
{
    ndl_binop k = (ndl_binop)op->def->kernel;
    if (k == NDL_BIN_POW && nda_is_nd(x[0])) {
        PyObject *r = power_fast(x[0], op->scalar);
        if (r != NULL || PyErr_Occurred())
            return r;
    }
    return nda_scalar(k, x[0], op->scalar, op->scalar_obj, 0);
}

/* grads[k] = unbroadcast(t, shape of input k); t is borrowed and may be NULL
 * (an error already raised). */
static int reduce_to_input(ValueObject *node, int k, PyObject *t, PyObject **grads)
{
    int64_t shape[NDL_MAX_DIMS];
    int ndim;
    if (t == NULL || ndl_value_shape((ValueObject *)IN(k), &ndim, shape) < 0)
        return -1;
    grads[k] = ndl_t_unbroadcast(t, ndim, shape);
    return grads[k] ? 0 : -1;
}

/* grads[0] = g * d; d is borrowed and may be NULL (an error already raised). */
static int set_product(ValueObject *g, PyObject *d, PyObject **grads)
{
    grads[0] = d ? ndl_t_multiply(G, d) : NULL;
    return grads[0] ? 0 : -1;
}

/* ---- EWiseAdd: a + b -> (g, g) ------------------------------------------ */
NDL_BACKWARD(EWiseAdd)
{
    for (int k = 0; k < 2; k++)
        if (needs[k] && reduce_to_input(node, k, G, grads) < 0)
            return -1;
    return 0;
}

/* ---- AddScalar: a + s -> g ---------------------------------------------- */
NDL_BACKWARD(AddScalar)
{
    grads[0] = Py_NewRef(G);
    return 0;
}

/* ---- EWiseMul: a * b -> (g * b, g * a) ---------------------------------- */
NDL_BACKWARD(EWiseMul)
{
    for (int k = 0; k < 2; k++) {
        PyObject *t;
        int rc;
        if (!needs[k])
            continue;
        t = ndl_t_multiply(G, IN(1 - k));
        rc = reduce_to_input(node, k, t, grads);
        Py_XDECREF(t);
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* ---- MulScalar: a * s -> g * s ------------------------------------------ */
NDL_BACKWARD(MulScalar)
{
    grads[0] = ndl_t_scalar_op(&ndl_op_MulScalar, G, op->scalar, op->scalar_obj);
    return grads[0] ? 0 : -1;
}

/* ---- EWisePow: a ** b -> (g * b * a**(b-1), g * a**b * log a) ------------ */
NDL_BACKWARD(EWisePow)
{
    PyObject *t1 = NULL, *t2 = NULL, *t3 = NULL, *t4 = NULL;
    int rc = -1;
    if (needs[0]) {
        t1 = ndl_t_add_scalar(IN(1), -1.0);
        t2 = t1 ? ndl_t_power(IN(0), t1) : NULL;
        t3 = t2 ? ndl_t_multiply(IN(1), t2) : NULL;
        t4 = t3 ? ndl_t_multiply(G, t3) : NULL;
        if (reduce_to_input(node, 0, t4, grads) < 0)
            goto fail;
        Py_CLEAR(t1);
        Py_CLEAR(t2);
        Py_CLEAR(t3);
        Py_CLEAR(t4);
    }
    if (needs[1]) {
        t1 = ndl_t_log(IN(0));
        t2 = t1 ? ndl_t_multiply(NODE, t1) : NULL;
        t3 = t2 ? ndl_t_multiply(G, t2) : NULL;
        if (reduce_to_input(node, 1, t3, grads) < 0)
            goto fail;
    }
    rc = 0;
fail:
    Py_XDECREF(t1);
    Py_XDECREF(t2);
    Py_XDECREF(t3);
    Py_XDECREF(t4);
    return rc;
}

/* ---- PowerScalar: a ** s -> g * s * a**(s-1) ------------------------------ */
NDL_BACKWARD(PowerScalar)
{
    PyObject *p = NULL, *d = NULL, *s1 = NULL, *one = NULL;
    int rc;
    /* NOTE: s == 0 has derivative 0 everywhere; a**(-1) * 0 would be NaN at a == 0. */
    if (op->scalar == 0.0) {
        grads[0] = ndl_t_scalar_op(&ndl_op_MulScalar, G, 0.0, op->scalar_obj);
        return grads[0] ? 0 : -1;
    }
    /* The scalar objects keep NumPy's types in np mode (int ** int stays int). */
    if (op->scalar_obj != NULL) {
        one = PyLong_FromLong(1);
        s1 = one ? PyNumber_Subtract(op->scalar_obj, one) : NULL;
        Py_XDECREF(one);
        if (s1 == NULL)
            return -1;
    }
    p = ndl_t_scalar_op(&ndl_op_PowerScalar, IN(0), op->scalar - 1.0, s1);
    d = p ? ndl_t_scalar_op(&ndl_op_MulScalar, p, op->scalar, op->scalar_obj) : NULL;
    rc = set_product(g, d, grads);
    Py_XDECREF(s1);
    Py_XDECREF(p);
    Py_XDECREF(d);
    return rc;
}

/* ---- EWiseDiv: a / b -> (g / b, -g * (a / b) / b) ------------------------- */
NDL_BACKWARD(EWiseDiv)
{
    PyObject *t1 = NULL, *t2 = NULL, *t3 = NULL;
    int rc = -1;
    if (needs[0]) {
        t1 = ndl_t_divide(G, IN(1));
        if (reduce_to_input(node, 0, t1, grads) < 0)
            goto fail;
        Py_CLEAR(t1);
    }
    if (needs[1]) {
        t1 = ndl_t_multiply(G, NODE);
        t2 = t1 ? ndl_t_divide(t1, IN(1)) : NULL;
        t3 = t2 ? ndl_t_negate(t2) : NULL;
        if (reduce_to_input(node, 1, t3, grads) < 0)
            goto fail;
    }
    rc = 0;
fail:
    Py_XDECREF(t1);
    Py_XDECREF(t2);
    Py_XDECREF(t3);
    return rc;
}

/* ---- DivScalar: a / s -> g / s ------------------------------------------ */
NDL_BACKWARD(DivScalar)
{
    grads[0] = ndl_t_scalar_op(&ndl_op_DivScalar, G, op->scalar, op->scalar_obj);
    return grads[0] ? 0 : -1;
}

/* ---- Negate: -a -> -g ---------------------------------------------------- */
NDL_BACKWARD(Negate)
{
    grads[0] = ndl_t_negate(G);
    return grads[0] ? 0 : -1;
}

/* ---- Log: ln a -> g / a -------------------------------------------------- */
NDL_BACKWARD(Log)
{
    grads[0] = ndl_t_divide(G, IN(0));
    return grads[0] ? 0 : -1;
}

/* ---- Exp: e^a -> g * y ---------------------------------------------------- */
NDL_BACKWARD(Exp)
{
    grads[0] = ndl_t_multiply(G, NODE);
    return grads[0] ? 0 : -1;
}

/* ---- ReLU: max(a, 0) -> g * 1[a > 0] ------------------------------------- */
NDL_BACKWARD(ReLU)
{
    /* NOTE: the derivative at 0 is 0; the mask is a constant taken from the data. */
    PyObject *a = ndl_value_realize((ValueObject *)IN(0)), *mask, *m;
    int rc;
    if (a == NULL)
        return -1;
    mask = nda_scalar(NDL_BIN_GT, a, 0.0, NULL, 0);
    m = mask ? ndl_t_const(mask) : NULL;
    rc = set_product(g, m, grads);
    Py_XDECREF(mask);
    Py_XDECREF(m);
    return rc;
}

/* ---- Tanh: tanh a -> g * (1 - y^2) ---------------------------------------- */
NDL_BACKWARD(Tanh)
{
    PyObject *y2 = ndl_t_multiply(NODE, NODE), *ny2 = y2 ? ndl_t_negate(y2) : NULL;
    PyObject *d = ny2 ? ndl_t_add_scalar(ny2, 1.0) : NULL;
    int rc = set_product(g, d, grads);
    Py_XDECREF(y2);
    Py_XDECREF(ny2);
    Py_XDECREF(d);
    return rc;
}

/* ---- Sigmoid: 1 / (1 + e^-a) -> g * y * (1 - y) ---------------------------- */
NDL_BACKWARD(Sigmoid)
{
    PyObject *ny = ndl_t_negate(NODE), *omy = ny ? ndl_t_add_scalar(ny, 1.0) : NULL;
    PyObject *d = omy ? ndl_t_multiply(NODE, omy) : NULL;
    int rc = set_product(g, d, grads);
    Py_XDECREF(ny);
    Py_XDECREF(omy);
    Py_XDECREF(d);
    return rc;
}

/* ---- Sin: sin a -> g * cos a ---------------------------------------------- */
NDL_BACKWARD(Sin)
{
    PyObject *c = ndl_t_cos(IN(0));
    int rc = set_product(g, c, grads);
    Py_XDECREF(c);
    return rc;
}

/* ---- Cos: cos a -> -g * sin a --------------------------------------------- */
NDL_BACKWARD(Cos)
{
    PyObject *s = ndl_t_sin(IN(0)), *ns = s ? ndl_t_negate(s) : NULL;
    int rc = set_product(g, ns, grads);
    Py_XDECREF(s);
    Py_XDECREF(ns);
    return rc;
}
