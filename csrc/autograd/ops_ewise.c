/* ops_ewise.c: the elementwise ops, each forward a few lines from its
 * backward (API.md 4.1). g is the output's adjoint, node the output, a/b the
 * inputs (Tensors). Binary ops broadcast; their gradients are summed back to
 * each input's shape by ndl_t_unbroadcast (one place, API.md 4.3).
 */
#include "array_api.h"

#define IN(k) PyTuple_GET_ITEM(node->inputs, (k))
#define G ((PyObject *)g)
#define NODE ((PyObject *)node)

/* grads[k] = unbroadcast(t, shape of input k); steals t. */
static int reduce_to_input(ValueObject *node, int k, PyObject *t, PyObject **grads)
{
    int64_t shape[NDL_MAX_DIMS];
    int ndim;
    if (t == NULL)
        return -1;
    if (ndl_value_shape((ValueObject *)IN(k), &ndim, shape) < 0) {
        Py_DECREF(t);
        return -1;
    }
    grads[k] = ndl_t_unbroadcast(t, ndim, shape);
    Py_DECREF(t);
    return grads[k] ? 0 : -1;
}

/* ---- EWiseAdd: a + b -> (g, g) ------------------------------------------ */
static PyObject *add_fwd(OpObject *op, PyObject *const *x, int n)
{
    return nda_binary(NDL_BIN_ADD, x[0], x[1]);
}
static int add_bwd(OpObject *op, ValueObject *g, ValueObject *node, const char *needs, PyObject **grads)
{
    for (int k = 0; k < 2; k++)
        if (needs[k] && reduce_to_input(node, k, Py_NewRef(G), grads) < 0)
            return -1;
    return 0;
}
ndl_opdef ndl_op_EWiseAdd = {"EWiseAdd", "add", 2, 0, NDL_P_NONE, add_fwd, add_bwd};

/* ---- AddScalar: a + s -> g ---------------------------------------------- */
static PyObject *add_scalar_fwd(OpObject *op, PyObject *const *x, int n)
{
    return nda_scalar(NDL_BIN_ADD, x[0], op->s0, op->scalar_obj, 0);
}
static int pass_bwd(OpObject *op, ValueObject *g, ValueObject *node, const char *needs, PyObject **grads)
{
    grads[0] = Py_NewRef(G);
    return 0;
}
ndl_opdef ndl_op_AddScalar = {"AddScalar", "add_scalar", 1, 0, NDL_P_SCALAR, add_scalar_fwd, pass_bwd};

/* ---- EWiseMul: a * b -> (g * b, g * a) ---------------------------------- */
static PyObject *mul_fwd(OpObject *op, PyObject *const *x, int n)
{
    return nda_binary(NDL_BIN_MUL, x[0], x[1]);
}
static int mul_bwd(OpObject *op, ValueObject *g, ValueObject *node, const char *needs, PyObject **grads)
{
    if (needs[0] && reduce_to_input(node, 0, ndl_t_mul(G, IN(1)), grads) < 0)
        return -1;
    if (needs[1] && reduce_to_input(node, 1, ndl_t_mul(G, IN(0)), grads) < 0)
        return -1;
    return 0;
}
ndl_opdef ndl_op_EWiseMul = {"EWiseMul", "multiply", 2, 0, NDL_P_NONE, mul_fwd, mul_bwd};

/* ---- MulScalar: a * s -> g * s ------------------------------------------ */
static PyObject *mul_scalar_fwd(OpObject *op, PyObject *const *x, int n)
{
    return nda_scalar(NDL_BIN_MUL, x[0], op->s0, op->scalar_obj, 0);
}
static int mul_scalar_bwd(OpObject *op, ValueObject *g, ValueObject *node, const char *needs,
                          PyObject **grads)
{
    grads[0] = ndl_t_scalar_op(&ndl_op_MulScalar, G, op->s0, op->scalar_obj);
    return grads[0] ? 0 : -1;
}
ndl_opdef ndl_op_MulScalar = {"MulScalar", "mul_scalar", 1, 0, NDL_P_SCALAR, mul_scalar_fwd,
                              mul_scalar_bwd};

/* ---- EWisePow: a ** b -> (g * b * a**(b-1), g * a**b * log a) ------------ */
static PyObject *pow_fwd(OpObject *op, PyObject *const *x, int n)
{
    return nda_binary(NDL_BIN_POW, x[0], x[1]);
}
static int pow_bwd(OpObject *op, ValueObject *g, ValueObject *node, const char *needs, PyObject **grads)
{
    PyObject *t1 = NULL, *t2 = NULL, *t3 = NULL;
    int rc = -1;
    if (needs[0]) {
        t1 = ndl_t_add_scalar(IN(1), -1.0);
        t2 = t1 ? ndl_t_pow(IN(0), t1) : NULL;
        t3 = t2 ? ndl_t_mul(IN(1), t2) : NULL;
        if (t3 == NULL || reduce_to_input(node, 0, ndl_t_mul(G, t3), grads) < 0)
            goto done;
        Py_CLEAR(t1);
        Py_CLEAR(t2);
        Py_CLEAR(t3);
    }
    if (needs[1]) {
        t1 = ndl_t_log(IN(0));
        t2 = t1 ? ndl_t_mul(NODE, t1) : NULL;
        if (t2 == NULL || reduce_to_input(node, 1, ndl_t_mul(G, t2), grads) < 0)
            goto done;
    }
    rc = 0;
done:
    Py_XDECREF(t1), Py_XDECREF(t2), Py_XDECREF(t3);
    return rc;
}
ndl_opdef ndl_op_EWisePow = {"EWisePow", "power", 2, 0, NDL_P_NONE, pow_fwd, pow_bwd};

/* ---- PowerScalar: a ** s -> g * s * a**(s-1) ------------------------------ */
static PyObject *power_scalar_fwd(OpObject *op, PyObject *const *x, int n)
{
    /* NOTE: as NumPy does, x**2 is x*x, x**0.5 is sqrt(x), x**-1 is 1/x
     * (BatchNorm and LayerNorm use these and their gradients every step;
     * powf is several times slower). */
    if (nda_is_nd(x[0])) {
        PyObject *r, *t;
        if (op->s0 == 1.0)
            return nda_copy(x[0]);
        if (op->s0 == 2.0)
            return nda_binary(NDL_BIN_MUL, x[0], x[0]);
        if (op->s0 == 0.5)
            return nda_unary(NDL_UN_SQRT, x[0]);
        if (op->s0 == -1.0)
            return nda_scalar(NDL_BIN_DIV, x[0], 1.0, NULL, 1);
        if (op->s0 == -0.5) { /* the backward of x**0.5 */
            t = nda_unary(NDL_UN_SQRT, x[0]);
            r = t ? nda_scalar(NDL_BIN_DIV, t, 1.0, NULL, 1) : NULL;
            Py_XDECREF(t);
            return r;
        }
    }
    return nda_scalar(NDL_BIN_POW, x[0], op->s0, op->scalar_obj, 0);
}
static int power_scalar_bwd(OpObject *op, ValueObject *g, ValueObject *node, const char *needs,
                            PyObject **grads)
{
    PyObject *p = NULL, *d = NULL, *s1 = NULL;
    /* NOTE: s == 0 has derivative 0 everywhere; a**(-1) * 0 would be NaN at a == 0. */
    if (op->s0 == 0.0) {
        grads[0] = ndl_t_scalar_op(&ndl_op_MulScalar, G, 0.0, op->scalar_obj);
        return grads[0] ? 0 : -1;
    }
    /* The scalar objects keep NumPy's types in np mode (int ** int stays int). */
    if (op->scalar_obj != NULL) {
        PyObject *one = PyLong_FromLong(1);
        s1 = one ? PyNumber_Subtract(op->scalar_obj, one) : NULL;
        Py_XDECREF(one);
        if (s1 == NULL)
            return -1;
    }
    p = ndl_t_scalar_op(&ndl_op_PowerScalar, IN(0), op->s0 - 1.0, s1);
    d = p ? ndl_t_scalar_op(&ndl_op_MulScalar, p, op->s0, op->scalar_obj) : NULL;
    grads[0] = d ? ndl_t_mul(G, d) : NULL;
    Py_XDECREF(s1);
    Py_XDECREF(p);
    Py_XDECREF(d);
    return grads[0] ? 0 : -1;
}
ndl_opdef ndl_op_PowerScalar = {"PowerScalar", "power_scalar", 1, 0, NDL_P_SCALAR,
                                power_scalar_fwd, power_scalar_bwd};

/* ---- EWiseDiv: a / b -> (g / b, -g * (a / b) / b) ------------------------- */
static PyObject *div_fwd(OpObject *op, PyObject *const *x, int n)
{
    return nda_binary(NDL_BIN_DIV, x[0], x[1]);
}
static int div_bwd(OpObject *op, ValueObject *g, ValueObject *node, const char *needs, PyObject **grads)
{
    PyObject *t1 = NULL, *t2 = NULL;
    int rc = -1;
    if (needs[0] && reduce_to_input(node, 0, ndl_t_div(G, IN(1)), grads) < 0)
        return -1;
    if (needs[1]) {
        t1 = ndl_t_mul(G, NODE);
        t2 = t1 ? ndl_t_div(t1, IN(1)) : NULL;
        if (t2 == NULL || reduce_to_input(node, 1, ndl_t_neg(t2), grads) < 0)
            goto done;
    }
    rc = 0;
done:
    Py_XDECREF(t1), Py_XDECREF(t2);
    return rc;
}
ndl_opdef ndl_op_EWiseDiv = {"EWiseDiv", "divide", 2, 0, NDL_P_NONE, div_fwd, div_bwd};

/* ---- DivScalar: a / s -> g / s ------------------------------------------ */
static PyObject *div_scalar_fwd(OpObject *op, PyObject *const *x, int n)
{
    return nda_scalar(NDL_BIN_DIV, x[0], op->s0, op->scalar_obj, 0);
}
static int div_scalar_bwd(OpObject *op, ValueObject *g, ValueObject *node, const char *needs,
                          PyObject **grads)
{
    grads[0] = ndl_t_scalar_op(&ndl_op_DivScalar, G, op->s0, op->scalar_obj);
    return grads[0] ? 0 : -1;
}
ndl_opdef ndl_op_DivScalar = {"DivScalar", "divide_scalar", 1, 0, NDL_P_SCALAR, div_scalar_fwd,
                              div_scalar_bwd};

/* ---- Negate: -a -> -g ---------------------------------------------------- */
static PyObject *neg_fwd(OpObject *op, PyObject *const *x, int n) { return nda_unary(NDL_UN_NEG, x[0]); }
static int neg_bwd(OpObject *op, ValueObject *g, ValueObject *node, const char *needs, PyObject **grads)
{
    grads[0] = ndl_t_neg(G);
    return grads[0] ? 0 : -1;
}
ndl_opdef ndl_op_Negate = {"Negate", "negate", 1, 0, NDL_P_NONE, neg_fwd, neg_bwd};

/* ---- Log: ln a -> g / a -------------------------------------------------- */
static PyObject *log_fwd(OpObject *op, PyObject *const *x, int n) { return nda_unary(NDL_UN_LOG, x[0]); }
static int log_bwd(OpObject *op, ValueObject *g, ValueObject *node, const char *needs, PyObject **grads)
{
    grads[0] = ndl_t_div(G, IN(0));
    return grads[0] ? 0 : -1;
}
ndl_opdef ndl_op_Log = {"Log", "log", 1, 0, NDL_P_NONE, log_fwd, log_bwd};

/* ---- Exp: e^a -> g * y ---------------------------------------------------- */
static PyObject *exp_fwd(OpObject *op, PyObject *const *x, int n) { return nda_unary(NDL_UN_EXP, x[0]); }
static int exp_bwd(OpObject *op, ValueObject *g, ValueObject *node, const char *needs, PyObject **grads)
{
    grads[0] = ndl_t_mul(G, NODE);
    return grads[0] ? 0 : -1;
}
ndl_opdef ndl_op_Exp = {"Exp", "exp", 1, 0, NDL_P_NONE, exp_fwd, exp_bwd};

/* ---- ReLU: max(a, 0) -> g * 1[a > 0] ------------------------------------- */
static PyObject *relu_fwd(OpObject *op, PyObject *const *x, int n) { return nda_unary(NDL_UN_RELU, x[0]); }
static int relu_bwd(OpObject *op, ValueObject *g, ValueObject *node, const char *needs, PyObject **grads)
{
    /* NOTE: the derivative at 0 is 0; the mask is a constant taken from the data. */
    PyObject *a = ndl_value_realize((ValueObject *)IN(0)), *mask, *m;
    if (a == NULL)
        return -1;
    mask = nda_scalar(NDL_BIN_GT, a, 0.0, NULL, 0);
    m = mask ? ndl_t_const(mask) : NULL;
    grads[0] = m ? ndl_t_mul(G, m) : NULL;
    Py_XDECREF(mask);
    Py_XDECREF(m);
    return grads[0] ? 0 : -1;
}
ndl_opdef ndl_op_ReLU = {"ReLU", "relu", 1, 0, NDL_P_NONE, relu_fwd, relu_bwd};

/* ---- Tanh: tanh a -> g * (1 - y^2) ---------------------------------------- */
static PyObject *tanh_fwd(OpObject *op, PyObject *const *x, int n) { return nda_unary(NDL_UN_TANH, x[0]); }
static int tanh_bwd(OpObject *op, ValueObject *g, ValueObject *node, const char *needs, PyObject **grads)
{
    PyObject *y2 = ndl_t_mul(NODE, NODE), *ny2 = y2 ? ndl_t_neg(y2) : NULL;
    PyObject *d = ny2 ? ndl_t_add_scalar(ny2, 1.0) : NULL;
    grads[0] = d ? ndl_t_mul(G, d) : NULL;
    Py_XDECREF(y2);
    Py_XDECREF(ny2);
    Py_XDECREF(d);
    return grads[0] ? 0 : -1;
}
ndl_opdef ndl_op_Tanh = {"Tanh", "tanh", 1, 0, NDL_P_NONE, tanh_fwd, tanh_bwd};
