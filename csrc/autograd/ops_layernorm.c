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
 *   b are stored by whoever made them). In nd mode on host memory the forward
 *   is one pass per row: the mean and the variance summed in eight lanes (the
 *   Sum kernel sums pairwise: the two differ by rounding), then per element
 *   w * ((x - mean) / (var + eps) ** 0.5) + b, the formula's arithmetic in the
 *   array's type (eps rounded to it as AddScalar does, powf as PowerScalar).
 *   np mode, other devices and the tests (_C._skip_optional_slots) compose
 *   the formula from nda_* calls.
 *   The backward is built from ops, so gradients of gradients work; it
 *   recomputes x_hat = (x - mean) * (var + eps) ** -0.5 from x, so its
 *   temporaries live only while it runs:
 *     g_b = sum(g, rows), g_w = sum(g * x_hat, rows), with h = g * w:
 *     g_x = (var + eps) ** -0.5 * (h - mean(h) - x_hat * mean(h * x_hat)).
 */
#include <string.h>

#include "array_api.h"
#include "row_reduce.h"
#include "scalar_ops.h"
#include "threadpool.h"

#define IN(k) PyTuple_GET_ITEM(node->inputs, (k))
#define G ((PyObject *)g)

/* ---- the row loop ---------------------------------------------------------- */

#define NDL_LAYER_NORM_ROW(T, sfx)                                                                 \
    static void layer_norm_row_##sfx(const T *restrict x, const T *restrict w,                    \
                                     const T *restrict b, T *restrict y, int64_t n, T eps)         \
    {                                                                                              \
        T acc[8] = {0}, mean, var, den;                                                            \
        int64_t i;                                                                                 \
        for (i = 0; i + 8 <= n; i += 8)                                                            \
            for (int k = 0; k < 8; k++)                                                            \
                acc[k] += x[i + k];                                                                \
        for (; i < n; i++)                                                                         \
            acc[0] += x[i];                                                                        \
        mean = NDL_SUM8(acc) / (T)n;                                                               \
        for (int k = 0; k < 8; k++)                                                                \
            acc[k] = 0;                                                                            \
        for (i = 0; i + 8 <= n; i += 8)                                                            \
            for (int k = 0; k < 8; k++)                                                            \
                acc[k] += (x[i + k] - mean) * (x[i + k] - mean);                                   \
        for (; i < n; i++)                                                                         \
            acc[0] += (x[i] - mean) * (x[i] - mean);                                               \
        var = NDL_SUM8(acc) / (T)n;                                                                \
        den = ndl_pow_##sfx(var + eps, (T)0.5);                                                    \
        for (i = 0; i < n; i++)                                                                    \
            y[i] = w[i] * ((x[i] - mean) / den) + b[i];                                            \
    }
NDL_LAYER_NORM_ROW(float, f32)
NDL_LAYER_NORM_ROW(double, f64)

typedef struct {
    ndl_dtype dt;
    const void *x, *w, *b;
    void *y;
    int64_t n;
    double eps;
} ln_job;

static void layer_norm_rows(void *ctx, int64_t r0, int64_t r1)
{
    const ln_job *j = ctx;
    for (int64_t r = r0; r < r1; r++) {
        if (j->dt == NDL_FLOAT32)
            layer_norm_row_f32((const float *)j->x + r * j->n, j->w, j->b,
                               (float *)j->y + r * j->n, j->n, (float)j->eps);
        else
            layer_norm_row_f64((const double *)j->x + r * j->n, j->w, j->b,
                               (double *)j->y + r * j->n, j->n, j->eps);
    }
}

static void *host_ptr(NDArrayObject *a)
{
    return (char *)a->storage->data + a->layout.offset * (int64_t)ndl_itemsize(a->dtype);
}

/* x, w, b NDArrays of one float dtype on one host-readable backend */
static int fusable(PyObject *const *x)
{
    NDArrayObject *a = (NDArrayObject *)x[0];
    if (ndl_skip_optional_slots || !NDArray_Check(x[0]) || !a->storage->backend->host_accessible ||
        (a->dtype != NDL_FLOAT32 && a->dtype != NDL_FLOAT64))
        return 0;
    for (int k = 1; k < 3; k++) {
        NDArrayObject *o = (NDArrayObject *)x[k];
        if (!NDArray_Check(x[k]) || o->dtype != a->dtype || o->storage->backend != a->storage->backend)
            return 0;
    }
    return 1;
}

static PyObject *layer_norm_host(PyObject *const *x, int ndim, const int64_t *shape, double eps)
{
    NDArrayObject *c[3] = {NULL, NULL, NULL}, *out = NULL;
    PyObject *res = NULL;
    int64_t n = shape[ndim - 1], rows = 1;
    for (int i = 0; i < ndim - 1; i++)
        rows *= shape[i];
    for (int k = 0; k < 3; k++)
        if ((c[k] = ndl_array_compact((NDArrayObject *)x[k])) == NULL)
            goto fail;
    if ((out = ndl_array_empty(c[0]->device, c[0]->dtype, ndim, shape)) == NULL)
        goto fail;
    if (rows > 0 && n > 0) {
        ln_job job = {c[0]->dtype, host_ptr(c[0]), host_ptr(c[1]), host_ptr(c[2]), host_ptr(out),
                      n, eps};
        int64_t grain = n < 16384 ? 16384 / n : 1;
        if (rows * n >= NDL_GIL_RELEASE_MIN) {
            Py_BEGIN_ALLOW_THREADS
            ndl_parallel_for(rows, grain, layer_norm_rows, &job);
            Py_END_ALLOW_THREADS
        } else {
            ndl_parallel_for(rows, grain, layer_norm_rows, &job);
        }
    }
    res = Py_NewRef(out);
fail:
    for (int k = 0; k < 3; k++)
        Py_XDECREF(c[k]);
    Py_XDECREF(out);
    return res;
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
    PyObject *a = NULL, *w = NULL, *b = NULL;
    if (nda_shape(x[0], ndim, shape) < 0 || nda_shape(x[1], &wn, ws) < 0 ||
        nda_shape(x[2], &bn, bs) < 0)
        return -1;
    if (*ndim >= 1 && wn == 1 && bn == 1 && ws[0] == shape[*ndim - 1] && bs[0] == ws[0])
        return 0;
    a = ndl_shape_tuple(*ndim, shape);
    w = a ? ndl_shape_tuple(wn, ws) : NULL;
    b = w ? ndl_shape_tuple(bn, bs) : NULL;
    if (b != NULL)
        PyErr_Format(PyExc_ValueError, "LayerNorm: needs x (..., n) and a weight and a bias of "
                     "shape (n,), got x %R, weight %R and bias %R", a, w, b);
    Py_XDECREF(a);
    Py_XDECREF(w);
    Py_XDECREF(b);
    return -1;
}

NDL_FORWARD(LayerNorm)
{
    int64_t shape[NDL_MAX_DIMS];
    int ndim;
    (void)n;
    if (check_shapes(x, &ndim, shape) < 0)
        return NULL;
    if (fusable(x))
        return layer_norm_host(x, ndim, shape, op->scalar);
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
