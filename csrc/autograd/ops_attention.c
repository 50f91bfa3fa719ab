/* ops_attention.c: the ops behind attention (API.md 6.6,
 * needle/nn/nn_transformer.py): Softmax over the last axis, one fused node,
 * and SoftmaxGrad, its gradient, another fused node.
 *
 * Python equivalent:
 *     def attention_softmax(x, c0, c1):   # c0 = sqrt(D), c1 = 1.0 when causal
 *         T, S = x.shape[-2:]
 *         mask = -FLT_MAX * numpy.triu(ones((T, S)), S - T + 1) if c1 else 0
 *         return softmax(x / c0 + mask)   # MultiHeadAttention's logits -> probs
 *     def attention_probs(q, k, c0, c1):  # q (..., T, D), k (..., S, D)
 *         return attention_softmax(q @ k.swapaxes(-1, -2), c0, c1)
 *     def softmax(z):                     # over the last axis, any rank >= 1
 *         m = z.max(axis=-1, keepdims=True)           # a constant
 *         e = exp(z - m)
 *         return e / e.sum(axis=-1, keepdims=True)
 *     def softmax_grad(y, g):             # y = softmax(z), g its out_grad
 *         return y * (g - (g * y).sum(axis=-1, keepdims=True))
 *
 * Note [Fused softmax]
 *   The contract's MultiHeadAttention.softmax is five nodes over a (B, H, T, T)
 *   tensor (shift, exp, sum, broadcast, divide), each a full pass and a
 *   stored array; its gradient is as many again. Here the forward is one
 *   node and one pass per row over host memory (max, exp(z - m) with the Exp
 *   kernel's per-element math, sum, divide), and the backward is one node
 *   (SoftmaxGrad) and one pass per row. The row max is clamped to the finite
 *   range (as LogSoftmax does), so a row of -inf and finite values is exact
 *   and a row of the causal mask's -FLT_MAX gives zeros, not NaN. np mode,
 *   devices the host cannot read and the tests (_C._skip_optional_slots)
 *   compose the same formula from nda_* calls.
 *   AttentionSoftmax is the same loop with the contract's two preceding steps
 *   folded in, per element and in the same arithmetic (x / c0 with c0 rounded
 *   to the array's type as DivScalar does, then + (-FLT_MAX) where the causal
 *   mask has it), so its numbers are those of the three nodes, and it stores
 *   one (B, H, T, S) array where they store three; its gradient is
 *   softmax_grad(y, g) / c0 (the mask's addition passes g through).
 *   AttentionProbs adds the product q @ k^T in front (the batched packed
 *   matmul reading k transposed in place), so the (B, H, T, S) scores are a
 *   temporary of the forward and the graph stores only the probabilities:
 *   the backward needs d = softmax_grad(y, g) / c0, then g_q = d @ k and
 *   g_k = d^T @ q, both ops (so gradients of gradients work).
 *   SoftmaxGrad's own backward is built from ops, so gradients of gradients
 *   work: with upstream u, s = sum(g*y), t = sum(u*y) (per row),
 *     d/dg = softmax_grad(y, u),   d/dy = u * (g - s) - g * t.
 */
#include <float.h>
#include <string.h>

#include "array_api.h"
#include "row_reduce.h"
#include "scalar_ops.h"
#include "threadpool.h"

#define IN(k) PyTuple_GET_ITEM(node->inputs, (k))
#define G ((PyObject *)g)
#define NODE ((PyObject *)node)

/* ---- the row loops ------------------------------------------------------- */

/* Eight partial maxima / sums so that gcc vectorizes the reductions without
 * -ffast-math; the results do not depend on the threads. */
#define NDL_SOFTMAX_ROWS(T, sfx, BIG)                                                              \
    static void softmax_row_##sfx(const T *z, T *y, int64_t n) /* y may be z */                  \
    {                                                                                              \
        T acc[8] = {0}, m = row_max_##sfx(z, n), s;                                                \
        int64_t i;                                                                                 \
        for (i = 0; i < n; i++)                                                                    \
            y[i] = ndl_exp_##sfx(z[i] - m);                                                        \
        for (i = 0; i + 8 <= n; i += 8)                                                            \
            for (int k = 0; k < 8; k++)                                                            \
                acc[k] += y[i + k];                                                                \
        for (; i < n; i++)                                                                         \
            acc[0] += y[i];                                                                        \
        s = NDL_SUM8(acc);                                                                         \
        for (i = 0; i < n; i++)                                                                    \
            y[i] = y[i] / s;                                                                       \
    }                                                                                              \
    static void softmax_grad_row_##sfx(const T *restrict y, const T *restrict g, T *restrict o,    \
                                       int64_t n)                                                  \
    {                                                                                              \
        T acc[8] = {0}, s;                                                                         \
        int64_t i = 0;                                                                             \
        for (; i + 8 <= n; i += 8)                                                                 \
            for (int k = 0; k < 8; k++)                                                            \
                acc[k] += g[i + k] * y[i + k];                                                     \
        for (; i < n; i++)                                                                         \
            acc[0] += g[i] * y[i];                                                                 \
        s = NDL_SUM8(acc);                                                                         \
        for (i = 0; i < n; i++)                                                                    \
            o[i] = y[i] * (g[i] - s);                                                              \
    }
/* x / c + (-FLT_MAX where j >= keep): the logits of one attention row */
#define NDL_LOGITS_ROW(T, sfx)                                                                     \
    static void logits_row_##sfx(const T *restrict x, T *restrict z, int64_t n, T c,            \
                                 int64_t keep)                                                     \
    {                                                                                              \
        for (int64_t i = 0; i < n; i++)                                                            \
            z[i] = x[i] / c;                                                                       \
        for (int64_t i = keep < 0 ? 0 : keep; i < n; i++)                                          \
            z[i] = z[i] + (T)(-FLT_MAX);                                                           \
    }
NDL_LOGITS_ROW(float, f32)
NDL_LOGITS_ROW(double, f64)
NDL_SOFTMAX_ROWS(float, f32, FLT_MAX)
NDL_SOFTMAX_ROWS(double, f64, DBL_MAX)

typedef struct {
    ndl_dtype dt;
    const void *a, *b; /* z (Softmax) or y, g (SoftmaxGrad) */
    void *out;
    int64_t n;         /* row length */
    /* AttentionSoftmax: divide by scale; if causal, row r (query r % rows
     * of a (rows, n) matrix) keeps columns j <= r % rows + n - rows */
    double scale;
    int causal;
    int64_t rows;
} rows_job;

static void attention_softmax_rows(void *ctx, int64_t r0, int64_t r1)
{
    const rows_job *j = ctx;
    for (int64_t r = r0; r < r1; r++) {
        int64_t keep = j->causal ? r % j->rows + j->n - j->rows + 1 : j->n;
        if (j->dt == NDL_FLOAT32) {
            float *y = (float *)j->out + r * j->n;
            logits_row_f32((const float *)j->a + r * j->n, y, j->n, (float)j->scale, keep);
            softmax_row_f32(y, y, j->n);
        } else {
            double *y = (double *)j->out + r * j->n;
            logits_row_f64((const double *)j->a + r * j->n, y, j->n, j->scale, keep);
            softmax_row_f64(y, y, j->n);
        }
    }
}

static void softmax_rows(void *ctx, int64_t r0, int64_t r1)
{
    const rows_job *j = ctx;
    for (int64_t r = r0; r < r1; r++) {
        if (j->dt == NDL_FLOAT32)
            softmax_row_f32((const float *)j->a + r * j->n, (float *)j->out + r * j->n, j->n);
        else
            softmax_row_f64((const double *)j->a + r * j->n, (double *)j->out + r * j->n, j->n);
    }
}

static void softmax_grad_rows(void *ctx, int64_t r0, int64_t r1)
{
    const rows_job *j = ctx;
    for (int64_t r = r0; r < r1; r++) {
        if (j->dt == NDL_FLOAT32)
            softmax_grad_row_f32((const float *)j->a + r * j->n, (const float *)j->b + r * j->n,
                                 (float *)j->out + r * j->n, j->n);
        else
            softmax_grad_row_f64((const double *)j->a + r * j->n, (const double *)j->b + r * j->n,
                                 (double *)j->out + r * j->n, j->n);
    }
}

static void *host_ptr(NDArrayObject *a)
{
    return (char *)a->storage->data + a->layout.offset * (int64_t)ndl_itemsize(a->dtype);
}

/* The arrays x[0..n) as NDArrays of one float dtype on one host-readable
 * device (the fused loops can run on them), unless tests skip those paths. */
static int fusable(PyObject *const *x, int n)
{
    NDArrayObject *a;
    if (ndl_skip_optional_slots || !NDArray_Check(x[0]))
        return 0;
    a = (NDArrayObject *)x[0];
    if (!a->storage->backend->host_accessible ||
        (a->dtype != NDL_FLOAT32 && a->dtype != NDL_FLOAT64))
        return 0;
    for (int k = 1; k < n; k++) {
        NDArrayObject *b = (NDArrayObject *)x[k];
        if (!NDArray_Check(x[k]) || b->dtype != a->dtype || b->device != a->device ||
            b->storage->backend != a->storage->backend)
            return 0;
    }
    return 1;
}

/* out = fn over the rows of the compact copies of x[0..n) (n = 1 or 2);
 * op: AttentionSoftmax's parameters, or NULL. */
static PyObject *rows_host(PyObject *const *x, int n, ndl_range_fn fn, const OpObject *op)
{
    NDArrayObject *c[2] = {NULL, NULL}, *out = NULL;
    PyObject *res = NULL;
    const ndl_layout *l = &((NDArrayObject *)x[0])->layout;
    int64_t len = l->ndim > 0 ? l->shape[l->ndim - 1] : 1, total = 1, rows;
    for (int i = 0; i < l->ndim; i++)
        total *= l->shape[i];
    for (int k = 0; k < n; k++)
        if ((c[k] = ndl_array_compact((NDArrayObject *)x[k])) == NULL)
            goto fail;
    out = ndl_array_empty(c[0]->device, c[0]->dtype, l->ndim, l->shape);
    if (out == NULL)
        goto fail;
    rows = len > 0 ? total / len : 0;
    if (rows > 0) {
        rows_job job = {c[0]->dtype, host_ptr(c[0]), n > 1 ? host_ptr(c[1]) : NULL,
                        host_ptr(out), len, 1.0, 0, 1};
        if (op != NULL)
            job.scale = op->c0, job.causal = op->c1 != 0, job.rows = l->shape[l->ndim - 2];
        /* about 16k elements per task: below that waking the pool costs more */
        int64_t grain = len < 16384 ? 16384 / len : 1;
        if (total >= NDL_GIL_RELEASE_MIN) {
            Py_BEGIN_ALLOW_THREADS
            ndl_parallel_for(rows, grain, fn, &job);
            Py_END_ALLOW_THREADS
        } else {
            ndl_parallel_for(rows, grain, fn, &job);
        }
    }
    res = Py_NewRef(out);
fail:
    Py_XDECREF(c[0]);
    Py_XDECREF(c[1]);
    Py_XDECREF(out);
    return res;
}

/* ---- the compositions (np mode, other devices) ---------------------------- */

/* The row sums of a (keepdims), a of rank ndim >= 1. */
static PyObject *row_sum(PyObject *a, int ndim)
{
    int64_t axis = ndim - 1;
    return nda_reduce(NDL_RED_SUM, a, 1, &axis, 1);
}

static PyObject *softmax_composed(PyObject *z, int ndim)
{
    int64_t axis = ndim - 1;
    double big = nda_max_finite(z);
    PyObject *m = nda_reduce(NDL_RED_MAX, z, 1, &axis, 1), *lo = NULL, *mc = NULL, *zm = NULL,
             *e = NULL, *s = NULL, *res = NULL;
    if (m == NULL)
        return NULL;
    lo = nda_scalar(NDL_BIN_MAXIMUM, m, -big, NULL, 0);
    mc = lo ? nda_scalar(NDL_BIN_MINIMUM, lo, big, NULL, 0) : NULL;
    zm = mc ? nda_binary(NDL_BIN_SUB, z, mc) : NULL;
    e = zm ? nda_unary(NDL_UN_EXP, zm) : NULL;
    s = e ? row_sum(e, ndim) : NULL;
    res = s ? nda_binary(NDL_BIN_DIV, e, s) : NULL;
    Py_DECREF(m);
    Py_XDECREF(lo);
    Py_XDECREF(mc);
    Py_XDECREF(zm);
    Py_XDECREF(e);
    Py_XDECREF(s);
    return res;
}

/* x / c0, plus the causal mask (T, S) when c1 != 0 */
static PyObject *logits_composed(PyObject *x, int ndim, const int64_t *shape, double c0, int causal)
{
    int64_t T = shape[ndim - 2], S = shape[ndim - 1], ms[2] = {T, S}, step[2] = {1, 1};
    PyObject *z = nda_scalar(NDL_BIN_DIV, x, c0, NULL, 0), *mask = NULL, *res = NULL;
    if (z == NULL || !causal)
        return z;
    mask = nda_full_like(x, 2, ms, 0.0);
    for (int64_t i = 0; mask != NULL && i < T; i++) {
        int64_t j0 = i + S - T + 1 < 0 ? 0 : i + S - T + 1;
        int64_t start[2] = {i, j0}, len[2] = {1, S - j0};
        PyObject *view, *fill;
        if (j0 >= S)
            continue;
        view = nda_view(mask, start, len, step, -1);
        fill = view ? nda_full_like(x, 2, len, -FLT_MAX) : NULL;
        if (fill == NULL || nda_assign(view, fill) < 0)
            Py_CLEAR(mask);
        Py_XDECREF(view);
        Py_XDECREF(fill);
    }
    res = mask ? nda_binary(NDL_BIN_ADD, z, mask) : NULL;
    Py_DECREF(z);
    Py_XDECREF(mask);
    return res;
}

static PyObject *softmax_grad_composed(PyObject *y, PyObject *g, int ndim)
{
    PyObject *gy = nda_binary(NDL_BIN_MUL, g, y), *s = NULL, *d = NULL, *res = NULL;
    s = gy ? row_sum(gy, ndim) : NULL;
    d = s ? nda_binary(NDL_BIN_SUB, g, s) : NULL;
    res = d ? nda_binary(NDL_BIN_MUL, y, d) : NULL;
    Py_XDECREF(gy);
    Py_XDECREF(s);
    Py_XDECREF(d);
    return res;
}

/* ---- builders ------------------------------------------------------------ */

static PyObject *apply_shared(ndl_opdef *def, PyObject *inputs)
{
    if (def->instance == NULL && (def->instance = ndl_op_new(def)) == NULL)
        return NULL;
    return ndl_make_from_op(&Tensor_Type, (PyObject *)def->instance, inputs);
}

static PyObject *t_softmax_grad(PyObject *y, PyObject *g)
{
    PyObject *in = PyTuple_Pack(2, y, g), *r;
    if (in == NULL)
        return NULL;
    r = apply_shared(&ndl_op_SoftmaxGrad, in);
    Py_DECREF(in);
    return r;
}

/* sum(a * b) over the last axis, broadcast back to a's shape (a Tensor) */
static PyObject *t_row_dot(PyObject *a, PyObject *b, int ndim, const int64_t *shape)
{
    int64_t axis = ndim - 1;
    PyObject *ab = ndl_t_multiply(a, b), *s = NULL, *sb = NULL;
    s = ab ? ndl_t_summation(ab, 1, &axis) : NULL;
    if (s != NULL)
        ndl_grad_of_reduction((ValueObject *)s, ndim, shape, 1, &axis, &sb);
    Py_XDECREF(ab);
    Py_XDECREF(s);
    return sb;
}

/* ---- shapes -------------------------------------------------------------- */

static int check_rank(const char *name, int ndim)
{
    if (ndim >= 1)
        return 0;
    PyErr_Format(PyExc_ValueError, "%s: needs at least 1 dimension (softmax over the last axis), "
                 "got a 0-d array", name);
    return -1;
}

/* ---- Softmax(): softmax over the last axis --------------------------------- */
NDL_FORWARD(Softmax)
{
    int64_t shape[NDL_MAX_DIMS];
    int ndim;
    (void)op, (void)n;
    if (nda_shape(x[0], &ndim, shape) < 0 || check_rank("Softmax", ndim) < 0)
        return NULL;
    if (fusable(x, 1))
        return rows_host(x, 1, softmax_rows, NULL);
    return softmax_composed(x[0], ndim);
}
NDL_BACKWARD(Softmax)
{
    (void)op, (void)needs;
    grads[0] = t_softmax_grad(NODE, G);
    return grads[0] ? 0 : -1;
}

/* ---- AttentionSoftmax(c0, c1): softmax(x / c0 + causal mask if c1) --------- */
NDL_FORWARD(AttentionSoftmax)
{
    int64_t shape[NDL_MAX_DIMS];
    int ndim;
    PyObject *z, *res;
    (void)n;
    if (nda_shape(x[0], &ndim, shape) < 0)
        return NULL;
    if (ndim < 2) {
        PyErr_Format(PyExc_ValueError, "AttentionSoftmax: needs logits (..., T, S) of at least "
                     "2 dimensions, got %d", ndim);
        return NULL;
    }
    if (fusable(x, 1))
        return rows_host(x, 1, attention_softmax_rows, op);
    z = logits_composed(x[0], ndim, shape, op->c0, op->c1 != 0);
    res = z ? softmax_composed(z, ndim) : NULL;
    Py_XDECREF(z);
    return res;
}
NDL_BACKWARD(AttentionSoftmax)
{
    PyObject *d = t_softmax_grad(NODE, G);
    (void)needs;
    grads[0] = d ? ndl_t_divide_scalar(d, op->c0) : NULL;
    Py_XDECREF(d);
    return grads[0] ? 0 : -1;
}

/* ---- AttentionProbs(c0, c1): attention_softmax(q @ k^T, c0, c1) ------------- */
static int probs_shapes(int qn, const int64_t *qs, int kn, const int64_t *ks)
{
    int ok = qn >= 2 && qn == kn && qs[qn - 1] == ks[kn - 1];
    PyObject *a, *b;
    for (int i = 0; ok && i < qn - 2; i++)
        ok = qs[i] == ks[i];
    if (ok)
        return 0;
    a = ndl_shape_tuple(qn, qs);
    b = ndl_shape_tuple(kn, ks);
    if (a && b)
        PyErr_Format(PyExc_ValueError, "AttentionProbs: q must be (..., T, D) and k (..., S, D) "
                     "with the same leading dimensions and D, got %R and %R", a, b);
    Py_XDECREF(a);
    Py_XDECREF(b);
    return -1;
}

NDL_FORWARD(AttentionProbs)
{
    int64_t qs[NDL_MAX_DIMS], ks[NDL_MAX_DIMS];
    int qn, kn, perm[NDL_MAX_DIMS];
    PyObject *kt, *scores, *res;
    (void)n;
    if (nda_shape(x[0], &qn, qs) < 0 || nda_shape(x[1], &kn, ks) < 0 ||
        probs_shapes(qn, qs, kn, ks) < 0)
        return NULL;
    for (int i = 0; i < kn; i++)
        perm[i] = i;
    perm[kn - 2] = kn - 1, perm[kn - 1] = kn - 2;
    kt = nda_permute(x[1], perm); /* a view: the matmul reads it in place */
    scores = kt ? nda_matmul(x[0], kt) : NULL;
    res = scores ? ndl_fwd_AttentionSoftmax(op, &scores, 1) : NULL;
    Py_XDECREF(kt);
    Py_XDECREF(scores);
    return res;
}
NDL_BACKWARD(AttentionProbs)
{
    PyObject *s = t_softmax_grad(NODE, G), *d = s ? ndl_t_divide_scalar(s, op->c0) : NULL;
    PyObject *dt = NULL;
    Py_XDECREF(s);
    if (d == NULL)
        return -1;
    if (needs[0])
        grads[0] = ndl_t_matmul(d, IN(1));
    if (needs[1] && (!needs[0] || grads[0] != NULL)) {
        dt = ndl_t_transpose(d, -2, -1);
        grads[1] = dt ? ndl_t_matmul(dt, IN(0)) : NULL;
    }
    Py_DECREF(d);
    Py_XDECREF(dt);
    return (needs[0] && grads[0] == NULL) || (needs[1] && grads[1] == NULL) ? -1 : 0;
}

/* ---- SoftmaxGrad(y, g): y * (g - sum(g * y, last axis)) -------------------- */
NDL_FORWARD(SoftmaxGrad)
{
    int64_t ys[NDL_MAX_DIMS], gs[NDL_MAX_DIMS];
    int yn, gn;
    (void)op, (void)n;
    if (nda_shape(x[0], &yn, ys) < 0 || nda_shape(x[1], &gn, gs) < 0 ||
        check_rank("SoftmaxGrad", yn) < 0)
        return NULL;
    if (yn != gn || memcmp(ys, gs, sizeof(int64_t) * (size_t)yn) != 0) {
        PyObject *a = ndl_shape_tuple(yn, ys), *b = ndl_shape_tuple(gn, gs);
        if (a && b)
            PyErr_Format(PyExc_ValueError,
                         "SoftmaxGrad: y and g must have one shape, got %R and %R", a, b);
        Py_XDECREF(a);
        Py_XDECREF(b);
        return NULL;
    }
    if (fusable(x, 2))
        return rows_host(x, 2, softmax_grad_rows, NULL);
    return softmax_grad_composed(x[0], x[1], yn);
}
/* u the out_grad: y -> u * (g - s) - g * t, g -> softmax_grad(y, u) */
NDL_BACKWARD(SoftmaxGrad)
{
    int64_t shape[NDL_MAX_DIMS];
    int ndim;
    PyObject *y = IN(0), *gin = IN(1), *s = NULL, *t = NULL, *ns = NULL, *gs = NULL, *a = NULL,
             *b = NULL, *nb = NULL;
    (void)op;
    if (needs[1] && (grads[1] = t_softmax_grad(y, G)) == NULL)
        return -1;
    if (!needs[0])
        return 0;
    if (ndl_value_shape((ValueObject *)y, &ndim, shape) < 0)
        return -1;
    s = t_row_dot(gin, y, ndim, shape);
    t = s ? t_row_dot(G, y, ndim, shape) : NULL;
    ns = t ? ndl_t_negate(s) : NULL;
    gs = ns ? ndl_t_add(gin, ns) : NULL;
    a = gs ? ndl_t_multiply(G, gs) : NULL;
    b = a ? ndl_t_multiply(gin, t) : NULL;
    nb = b ? ndl_t_negate(b) : NULL;
    grads[0] = nb ? ndl_t_add(a, nb) : NULL;
    Py_XDECREF(s);
    Py_XDECREF(t);
    Py_XDECREF(ns);
    Py_XDECREF(gs);
    Py_XDECREF(a);
    Py_XDECREF(b);
    Py_XDECREF(nb);
    return grads[0] ? 0 : -1;
}
