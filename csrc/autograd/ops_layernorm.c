/* ops_layernorm.c: LayerNorm over the last axis as one node (API.md 6.3's
 * LayerNorm1d formula; nn_transformer.py's pre-norms call it with the
 * modules' own weight, bias and eps).
 *
 * Python equivalent:
 *     def layer_norm(x, w, b, eps):        # x (..., n), w and b (n,)
 *         mean = x.sum(axis=-1, keepdims=True) / n
 *         xc = x - mean
 *         var = (xc ** 2).sum(axis=-1, keepdims=True) / n
 *         return w * (xc / (var + eps) ** 0.5) + b
 *
 * Note [Fused LayerNorm]
 *   The contract's LayerNorm1d is about ten nodes, eight of them full-size
 *   arrays (x - mean, its square, var + eps and its root broadcast, the
 *   quotient, the product, the sum) that the graph keeps until the backward:
 *   sixteen of them in a 4-layer Transformer were a third of its training
 *   step's memory. This op is one node that stores only its output (x, w and
 *   b are stored by whoever made them). In nd mode the forward is the
 *   backend's layer_norm slot (cpu_layernorm.c, cuda_layernorm.cu): one pass
 *   per row, the mean and the variance summed in eight lanes (the Sum kernel
 *   sums pairwise: the two differ by rounding), then per element
 *   w * ((x - mean) / (var + eps) ** 0.5) + b, the formula's arithmetic in the
 *   array's type (eps rounded to it as AddScalar does, pow as PowerScalar).
 *   np mode, backends without the slot and the tests
 *   (_C._skip_optional_slots) compose the formula from nda_* calls.
 *   The backward with create_graph is built from ops, so gradients of
 *   gradients work; it recomputes x_hat = (x - mean) * (var + eps) ** -0.5
 *   from x, so its temporaries live only while it runs:
 *     g_b = sum(g, rows), g_w = sum(g * x_hat, rows), with h = g * w:
 *     g_x = (var + eps) ** -0.5 * (h - mean(h) - x_hat * mean(h * x_hat)).
 *   Without create_graph (no graph is recorded while it runs) it is the
 *   backend's layer_norm_grad slot instead: the same formula in two passes
 *   (rows for g_x, then columns for g_w and g_b, rows added in order), with
 *   no full-size temporary besides g_x; the composition keeps about ten.
 */
#include "array_api.h"

#define IN(k) PyTuple_GET_ITEM(node->inputs, (k))
#define G ((PyObject *)g)

/* ---- the fused path: the backend's layer_norm slots ------------------------- */

static void *data_ptr(NDArrayObject *a)
{
    return (char *)a->storage->data + a->layout.offset * (int64_t)ndl_itemsize(a->dtype);
}

/* x[0..k) NDArrays of one float dtype on one backend that has the slot
 * (layer_norm when grad is 0, layer_norm_grad when 1) */
static int fusable(PyObject *const *x, int k, int grad)
{
    NDArrayObject *a = (NDArrayObject *)x[0];
    if (!NDArray_Check(x[0]) || (a->dtype != NDL_FLOAT32 && a->dtype != NDL_FLOAT64) ||
        (grad ? NDL_OPTIONAL_SLOT(a->storage->backend, layer_norm_grad) == NULL
              : NDL_OPTIONAL_SLOT(a->storage->backend, layer_norm) == NULL))
        return 0;
    for (int i = 1; i < k; i++) {
        NDArrayObject *o = (NDArrayObject *)x[i];
        if (!NDArray_Check(x[i]) || o->dtype != a->dtype || o->storage->backend != a->storage->backend)
            return 0;
    }
    return 1;
}

/* rows and n of an (..., n) shape */
static int64_t rows_of(int ndim, const int64_t *shape)
{
    int64_t rows = 1;
    for (int i = 0; i < ndim - 1; i++)
        rows *= shape[i];
    return rows;
}

static PyObject *layer_norm_fused(PyObject *const *x, int ndim, const int64_t *shape, double eps)
{
    NDArrayObject *c[3] = {NULL, NULL, NULL}, *out = NULL;
    PyObject *res = NULL;
    int64_t n = shape[ndim - 1], rows = rows_of(ndim, shape);
    int status = NDL_OK;
    for (int k = 0; k < 3; k++)
        if ((c[k] = ndl_array_compact((NDArrayObject *)x[k])) == NULL)
            goto fail;
    if ((out = ndl_array_empty(c[0]->device, c[0]->dtype, ndim, shape)) == NULL)
        goto fail;
    if (rows > 0 && n > 0)
        NDL_KERNEL_CALL(rows * n, status,
                        c[0]->storage->backend->layer_norm(c[0]->dtype, rows, n, data_ptr(c[0]),
                                                           data_ptr(c[1]), data_ptr(c[2]), eps,
                                                           data_ptr(out)));
    if (ndl_raise_status(status, "LayerNorm") == 0)
        res = Py_NewRef(out);
fail:
    for (int k = 0; k < 3; k++)
        Py_XDECREF(c[k]);
    Py_XDECREF(out);
    return res;
}

/* Note [Fused LayerNorm]: the wanted gradients (needs[0..3)) as constant
 * Tensors from the layer_norm_grad slot; a = {x, w, g} as arrays. */
static int layer_norm_grad_fused(PyObject *const *a, int ndim, const int64_t *shape, double eps,
                                 const char *needs, PyObject **grads)
{
    NDArrayObject *c[3] = {NULL, NULL, NULL}, *o[3] = {NULL, NULL, NULL};
    int64_t n = shape[ndim - 1], rows = rows_of(ndim, shape);
    int status = NDL_OK, rc = -1;
    for (int k = 0; k < 3; k++)
        if ((c[k] = ndl_array_compact((NDArrayObject *)a[k])) == NULL)
            goto fail;
    for (int k = 0; k < 3; k++)
        if (needs[k] && (o[k] = ndl_array_empty(c[0]->device, c[0]->dtype, k ? 1 : ndim,
                                                k ? &n : shape)) == NULL)
            goto fail;
    NDL_KERNEL_CALL(rows * n, status,
                    c[0]->storage->backend->layer_norm_grad(
                        c[0]->dtype, rows, n, data_ptr(c[0]), data_ptr(c[1]), data_ptr(c[2]), eps,
                        o[0] ? data_ptr(o[0]) : NULL, o[1] ? data_ptr(o[1]) : NULL,
                        o[2] ? data_ptr(o[2]) : NULL));
    if (ndl_raise_status(status, "LayerNorm") < 0)
        goto fail;
    for (int k = 0; k < 3; k++)
        if (o[k] != NULL && (grads[k] = ndl_t_const((PyObject *)o[k])) == NULL)
            goto fail;
    rc = 0;
fail:
    for (int k = 0; k < 3; k++) {
        Py_XDECREF(c[k]);
        Py_XDECREF(o[k]);
        if (rc < 0)
            Py_CLEAR(grads[k]);
    }
    return rc;
}

/* The formula from nda_* calls (np mode, other devices, the tests). */
static PyObject *layer_norm_composed(PyObject *const *x, int ndim, const int64_t *shape,
                                     double eps)
{
    int64_t axis = ndim - 1;
    double n = (double)shape[axis];
    PyObject *t[11] = {NULL}, *res = NULL;
    if ((t[0] = nda_reduce(NDL_RED_SUM, x[0], 1, &axis, 1)) == NULL ||
        (t[1] = nda_scalar(NDL_BIN_DIV, t[0], n, NULL, 0)) == NULL ||
        (t[2] = nda_binary(NDL_BIN_SUB, x[0], t[1])) == NULL ||
        (t[3] = nda_scalar(NDL_BIN_POW, t[2], 2.0, NULL, 0)) == NULL ||
        (t[4] = nda_reduce(NDL_RED_SUM, t[3], 1, &axis, 1)) == NULL ||
        (t[5] = nda_scalar(NDL_BIN_DIV, t[4], n, NULL, 0)) == NULL ||
        (t[6] = nda_scalar(NDL_BIN_ADD, t[5], eps, NULL, 0)) == NULL ||
        (t[7] = nda_scalar(NDL_BIN_POW, t[6], 0.5, NULL, 0)) == NULL ||
        (t[8] = nda_binary(NDL_BIN_DIV, t[2], t[7])) == NULL ||
        (t[9] = nda_binary(NDL_BIN_MUL, x[1], t[8])) == NULL)
        goto fail;
    res = nda_binary(NDL_BIN_ADD, t[9], x[2]);
fail:
    for (int k = 0; k < 11; k++)
        Py_XDECREF(t[k]);
    return res;
}

/* ---- LayerNorm(eps): x (..., n), w (n,), b (n,) --------------------------- */
static int check_shapes(PyObject *const *x, int *ndim, int64_t *shape)
{
    int64_t ws[NDL_MAX_DIMS], bs[NDL_MAX_DIMS];
    int wn, bn;
    if (nda_shape(x[0], ndim, shape) < 0 || nda_shape(x[1], &wn, ws) < 0 ||
        nda_shape(x[2], &bn, bs) < 0)
        return -1;
    if (*ndim >= 1 && wn == 1 && bn == 1 && ws[0] == shape[*ndim - 1] && bs[0] == ws[0])
        return 0;
    return ndl_raise_shapes("LayerNorm: needs x (..., n) and a weight and a bias of shape (n,), "
                            "got x %R, weight %R and bias %R", 3, x);
}

NDL_FORWARD(LayerNorm)
{
    int64_t shape[NDL_MAX_DIMS];
    int ndim;
    (void)n;
    if (check_shapes(x, &ndim, shape) < 0)
        return NULL;
    if (fusable(x, 3, 0))
        return layer_norm_fused(x, ndim, shape, op->scalar);
    return layer_norm_composed(x, ndim, shape, op->scalar);
}

/* mean of a over the last axis, broadcast back to shape (a Tensor) */
static PyObject *t_row_mean(PyObject *a, int ndim, const int64_t *shape)
{
    int64_t axis = ndim - 1;
    PyObject *s = ndl_t_summation(a, 1, &axis), *m = NULL, *mb = NULL;
    m = s ? ndl_t_divide_scalar(s, (double)shape[axis]) : NULL;
    if (m != NULL)
        ndl_grad_of_reduction((ValueObject *)m, ndim, shape, 1, &axis, &mb);
    Py_XDECREF(s);
    Py_XDECREF(m);
    return mb;
}

/* the sum of a over every axis but the last: (n,) */
static PyObject *t_sum_rows(PyObject *a, int ndim)
{
    int64_t axes[NDL_MAX_DIMS];
    for (int i = 0; i < ndim - 1; i++)
        axes[i] = i;
    if (ndim == 1)
        return Py_NewRef(a);
    return ndl_t_summation(a, ndim - 1, axes);
}

/* Note [Fused LayerNorm]: the gradients built from ops, x_hat recomputed from x. */
NDL_BACKWARD(LayerNorm)
{
    int64_t shape[NDL_MAX_DIMS], one[NDL_MAX_DIMS];
    int ndim, nt = 0, rc = -1;
    PyObject *t[24] = {NULL}, *mu, *nmu, *xc, *sq, *var, *ve, *r, *xh, *h, *a, *hx, *c, *xc2,
             *d, *na, *nc;
#define STEP(var_, expr)                                                                           \
    do {                                                                                           \
        if ((t[nt++] = var_ = (expr)) == NULL)                                                     \
            goto fail;                                                                             \
    } while (0)
    if (ndl_value_shape((ValueObject *)IN(0), &ndim, shape) < 0)
        return -1;
    /* no graph is recorded (backward without create_graph): the slot */
    if (!ndl_grad_enabled) {
        PyObject *arr[3] = {ndl_value_realize((ValueObject *)IN(0)),
                            ndl_value_realize((ValueObject *)IN(1)), ndl_value_realize(g)};
        if (arr[0] == NULL || arr[1] == NULL || arr[2] == NULL)
            return -1;
        if (fusable(arr, 3, 1))
            return layer_norm_grad_fused(arr, ndim, shape, op->scalar, needs, grads);
    }
    if (needs[2] && (grads[2] = t_sum_rows(G, ndim)) == NULL)
        goto fail;
    if (!needs[0] && !needs[1])
        return 0;
    STEP(mu, t_row_mean(IN(0), ndim, shape));
    STEP(nmu, ndl_t_negate(mu));
    STEP(xc, ndl_t_add(IN(0), nmu));
    STEP(sq, ndl_t_multiply(xc, xc));
    STEP(var, t_row_mean(sq, ndim, shape));
    STEP(ve, ndl_t_add_scalar(var, op->scalar));
    STEP(r, ndl_t_power_scalar(ve, -0.5));
    STEP(xh, ndl_t_multiply(xc, r));
    if (needs[1]) {
        STEP(d, ndl_t_multiply(G, xh));
        if ((grads[1] = t_sum_rows(d, ndim)) == NULL)
            goto fail;
    }
    if (needs[0]) {
        for (int i = 0; i < ndim - 1; i++)
            one[i] = 1;
        one[ndim - 1] = shape[ndim - 1];
        STEP(a, ndl_t_reshape(IN(1), ndim, one));
        STEP(c, ndl_t_broadcast_to(a, ndim, shape));
        STEP(h, ndl_t_multiply(G, c));
        STEP(a, t_row_mean(h, ndim, shape));
        STEP(hx, ndl_t_multiply(h, xh));
        STEP(c, t_row_mean(hx, ndim, shape));
        STEP(xc2, ndl_t_multiply(xh, c));
        STEP(na, ndl_t_negate(a));
        STEP(nc, ndl_t_negate(xc2));
        STEP(d, ndl_t_add(h, na));
        STEP(d, ndl_t_add(d, nc));
        if ((grads[0] = ndl_t_multiply(r, d)) == NULL)
            goto fail;
    }
    rc = 0;
fail:
#undef STEP
    for (int k = 0; k < nt; k++)
        Py_XDECREF(t[k]);
    if (rc < 0)
        for (int k = 0; k < 3; k++)
            Py_CLEAR(grads[k]);
    return rc;
}
