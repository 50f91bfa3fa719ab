/* ops_rnn.c: the ops behind the recurrent layers and Embedding (API.md 6.5,
 * needle/nn/nn_sequence.py): LSTMGates, one fused LSTM step after the gate
 * matmul, and GatherRows / ScatterRows, Embedding's lookup and its gradient.
 *
 * Python equivalent:
 *     def lstm_gates(z, c):               # z (bs, 4H): blocks i, f, g, o; c (bs, H)
 *         i, f, g, o = (z[:, k*H:(k+1)*H] for k in range(4))
 *         i, f, o, g = sigmoid(i), sigmoid(f), sigmoid(o), tanh(g)
 *         c2 = f * c + i * g
 *         return (o * tanh(c2), c2)      # a TensorTuple (h', c')
 *     def gather_rows(w, idx):            # = one_hot(idx) @ w for a 2-D w
 *         return numpy.take(w, idx, axis=0)
 *     def scatter_rows(g, idx, shape):    # = one_hot(idx)^T @ g: gather's gradient
 *         out = zeros(shape); numpy.add.at(out, idx, g); return out
 *
 * Note [Fused LSTM gates]
 *   An LSTM step built from ops is a dozen small nodes (four column blocks,
 *   three sigmoids, two tanhs, three products and a sum); here it is one node,
 *   computed in nd mode by one loop over host memory with the per-element math
 *   of the Sigmoid and Tanh kernels (scalar_ops.h), so the values are those
 *   of the composition bit for bit. np mode, devices whose memory the host
 *   cannot read, and the tests (_C._skip_optional_slots) compose it from
 *   nda_* calls instead. The backward is built from ops, mirroring the
 *   backward rules of Sigmoid (g * y * (1 - y)), Tanh (g * (1 - y^2)) and
 *   the products, so gradients of gradients work and match the composition
 *   to float rounding.
 *
 * Note [Rows by index]
 *   Embedding's contract is one_hot(x) @ weight; over a 10,000-word
 *   vocabulary that matmul (and its gradient one_hot^T @ g) is ~99.99%
 *   multiplications by zero. GatherRows copies the picked rows (the same
 *   values) and ScatterRows adds rows of g into zeros in index order (the
 *   same sums, in another order). Each is the other's gradient, so gradients
 *   of gradients stay ops. Indices are a Tensor of integer values (float32
 *   in nd mode, exact below 2**24), read to the host and checked
 *   (nda_indices); the rows move in one call of the backend's take_rows /
 *   scatter_add_rows slot (cpu_rows_index.c, cuda_rows_index.cu), or, on a
 *   backend without them, one copy (and add) slot call per index, which
 *   adds in the same order (the same bits). An index input gets a zero
 *   gradient; nn.Embedding passes a host copy of its indices, so its x
 *   gets none.
 */
#include <string.h>

#include "array_api.h"
#include "scalar_ops.h"
#include "threadpool.h"

#define IN(k) PyTuple_GET_ITEM(node->inputs, (k))
#define G ((PyObject *)g)
#define NODE ((PyObject *)node)

/* ---- LSTMGates(z, c) -> (h', c') ----------------------------------------- */

/* *bs, *H from z (bs, 4H) and c (bs, H); ValueError naming both shapes. */
static int gates_shapes(int zn, const int64_t *zs, int cn, const int64_t *cs, int64_t *bs,
                        int64_t *H)
{
    PyObject *a, *b;
    if (zn == 2 && cn == 2 && zs[0] == cs[0] && zs[1] == 4 * cs[1]) {
        *bs = cs[0];
        *H = cs[1];
        return 0;
    }
    a = ndl_shape_tuple(zn, zs);
    b = ndl_shape_tuple(cn, cs);
    if (a && b)
        PyErr_Format(PyExc_ValueError,
                     "lstm_gates: z must be (batch, 4*hidden) and c (batch, hidden), got %R and %R",
                     a, b);
    Py_XDECREF(a);
    Py_XDECREF(b);
    return -1;
}

/* One row of a step: z (4H: blocks i, f, g, o), c, h and c2 (H). Written
 * as one simple loop over restrict pointers so that gcc vectorizes it; on
 * x86-64 float32 also gets an AVX2 build (without FMA, like the elementwise
 * kernels, so both builds give the same bits). */
#define NDL_GATES_ROW(T, sfx, name, target)                                                        \
    static target void name(const T *restrict z, const T *restrict c, T *restrict h,               \
                            T *restrict c2, int64_t H)                                             \
    {                                                                                              \
        for (int64_t k = 0; k < H; k++) {                                                          \
            T i = ndl_sigmoid_##sfx(z[k]), f = ndl_sigmoid_##sfx(z[H + k]);                        \
            T g = ndl_tanh_##sfx(z[2 * H + k]), o = ndl_sigmoid_##sfx(z[3 * H + k]);               \
            T fc = f * c[k], ig = i * g;                                                           \
            T v = fc + ig;                                                                         \
            c2[k] = v;                                                                             \
            h[k] = o * ndl_tanh_##sfx(v);                                                          \
        }                                                                                          \
    }
NDL_GATES_ROW(float, f32, gates_row_f32, )
NDL_GATES_ROW(double, f64, gates_row_f64, )
#if defined(__x86_64__) && defined(__GNUC__) && !defined(NDL_CPU_BASELINE_ONLY)
#define NDL_GATES_AVX2 1
NDL_GATES_ROW(float, f32, gates_row_f32_avx2, __attribute__((target("avx2"))))
#endif

typedef void (*gates_row_f32_fn)(const float *, const float *, float *, float *, int64_t);

typedef struct {
    ndl_dtype dt;
    const void *z, *c;
    void *h, *c2;
    int64_t H;
    gates_row_f32_fn row_f32;
} gates_job;

/* The float32 row loop for this CPU (called with the GIL held). */
static gates_row_f32_fn gates_row_f32_best(void)
{
#ifdef NDL_GATES_AVX2
    static int avx2 = -1;
    if (avx2 < 0) {
        __builtin_cpu_init();
        avx2 = __builtin_cpu_supports("avx2") != 0;
    }
    if (avx2)
        return gates_row_f32_avx2;
#endif
    return gates_row_f32;
}

/* Rows [r0, r1) of one step (a task of ndl_parallel_for). */
static void gates_rows(void *ctx, int64_t r0, int64_t r1)
{
    const gates_job *j = ctx;
    const int64_t H = j->H;
    for (int64_t r = r0; r < r1; r++) {
        if (j->dt == NDL_FLOAT32)
            j->row_f32((const float *)j->z + r * 4 * H, (const float *)j->c + r * H,
                       (float *)j->h + r * H, (float *)j->c2 + r * H, H);
        else
            gates_row_f64((const double *)j->z + r * 4 * H, (const double *)j->c + r * H,
                          (double *)j->h + r * H, (double *)j->c2 + r * H, H);
    }
}

static void *host_ptr(NDArrayObject *a)
{
    return (char *)a->storage->data + a->layout.offset * (int64_t)ndl_itemsize(a->dtype);
}

/* The fused loop (Note [Fused LSTM gates]); z and c are NDArrays of one
 * dtype on one host-readable device. */
static PyObject *gates_host(NDArrayObject *z, NDArrayObject *c, int64_t bs, int64_t H)
{
    int64_t shape[2] = {bs, H};
    NDArrayObject *zc = ndl_array_compact(z), *cc = zc ? ndl_array_compact(c) : NULL;
    NDArrayObject *h = cc ? ndl_array_empty(cc->device, cc->dtype, 2, shape) : NULL;
    NDArrayObject *c2 = h ? ndl_array_empty(cc->device, cc->dtype, 2, shape) : NULL;
    PyObject *res = NULL;
    if (c2 != NULL) {
        gates_job job = {cc->dtype, host_ptr(zc), host_ptr(cc), host_ptr(h), host_ptr(c2), H,
                         gates_row_f32_best()};
        /* about 16k elements per task: below that waking the pool costs more */
        int64_t grain = H > 0 && H < 16384 ? 16384 / H : 1;
        if (bs * H >= NDL_GIL_RELEASE_MIN) {
            Py_BEGIN_ALLOW_THREADS
            ndl_parallel_for(bs, grain, gates_rows, &job);
            Py_END_ALLOW_THREADS
        } else {
            ndl_parallel_for(bs, grain, gates_rows, &job);
        }
        res = PyTuple_Pack(2, (PyObject *)h, (PyObject *)c2);
    }
    Py_XDECREF(zc);
    Py_XDECREF(cc);
    Py_XDECREF(h);
    Py_XDECREF(c2);
    return res;
}

/* The same step composed from nda_* calls (np mode, other devices). */
static PyObject *gates_composed(PyObject *z, PyObject *c, int64_t bs, int64_t H)
{
    PyObject *act[4] = {NULL}, *blk = NULL, *fc = NULL, *ig = NULL, *c2 = NULL, *tc = NULL,
             *h = NULL, *res = NULL;
    int64_t start[2] = {0, 0}, len[2] = {bs, H}, step[2] = {1, 1};
    for (int k = 0; k < 4; k++) {
        start[1] = k * H;
        blk = nda_view(z, start, len, step, -1);
        act[k] = blk ? nda_unary(k == 2 ? NDL_UN_TANH : NDL_UN_SIGMOID, blk) : NULL;
        Py_CLEAR(blk);
        if (act[k] == NULL)
            goto fail;
    }
    fc = nda_binary(NDL_BIN_MUL, act[1], c);
    ig = fc ? nda_binary(NDL_BIN_MUL, act[0], act[2]) : NULL;
    c2 = ig ? nda_binary(NDL_BIN_ADD, fc, ig) : NULL;
    tc = c2 ? nda_unary(NDL_UN_TANH, c2) : NULL;
    h = tc ? nda_binary(NDL_BIN_MUL, act[3], tc) : NULL;
    res = h ? PyTuple_Pack(2, h, c2) : NULL;
fail:
    for (int k = 0; k < 4; k++)
        Py_XDECREF(act[k]);
    Py_XDECREF(fc);
    Py_XDECREF(ig);
    Py_XDECREF(c2);
    Py_XDECREF(tc);
    Py_XDECREF(h);
    return res;
}

NDL_FORWARD(LSTMGates)
{
    int64_t zs[NDL_MAX_DIMS], cs[NDL_MAX_DIMS], bs = 0, H = 0;
    int zn, cn;
    if (nda_shape(x[0], &zn, zs) < 0 || nda_shape(x[1], &cn, cs) < 0 ||
        gates_shapes(zn, zs, cn, cs, &bs, &H) < 0)
        return NULL;
    if (NDArray_Check(x[0]) && NDArray_Check(x[1])) {
        NDArrayObject *z = (NDArrayObject *)x[0], *c = (NDArrayObject *)x[1];
        if (z->dtype == c->dtype && z->device == c->device &&
            z->storage->backend == c->storage->backend && z->storage->backend->host_accessible &&
            !ndl_skip_optional_slots)
            return gates_host(z, c, bs, H);
    }
    return gates_composed(x[0], x[1], bs, H);
}

/* y * (1 - y) as the Sigmoid backward builds it: y * (-y + 1). */
static PyObject *sigmoid_slope(PyObject *y)
{
    PyObject *ny = ndl_t_negate(y), *omy = ny ? ndl_t_add_scalar(ny, 1.0) : NULL;
    PyObject *d = omy ? ndl_t_multiply(y, omy) : NULL;
    Py_XDECREF(ny);
    Py_XDECREF(omy);
    return d;
}

/* 1 - y^2 as the Tanh backward builds it: -(y * y) + 1. */
static PyObject *tanh_slope(PyObject *y)
{
    PyObject *y2 = ndl_t_multiply(y, y), *ny2 = y2 ? ndl_t_negate(y2) : NULL;
    PyObject *d = ny2 ? ndl_t_add_scalar(ny2, 1.0) : NULL;
    Py_XDECREF(y2);
    Py_XDECREF(ny2);
    return d;
}

/* (a * b) * slope(y): slope y(1 - y) of a sigmoid output, 1 - y^2 of a tanh
 * output, the order in which the composition's backward multiplies. */
static PyObject *grad_block(PyObject *a, PyObject *b, PyObject *y, int is_tanh)
{
    PyObject *s = is_tanh ? tanh_slope(y) : sigmoid_slope(y);
    PyObject *ab = s ? ndl_t_multiply(a, b) : NULL;
    PyObject *r = ab ? ndl_t_multiply(ab, s) : NULL;
    Py_XDECREF(s);
    Py_XDECREF(ab);
    return r;
}

/* With dc = gc + gh * o * (1 - tanh(c')^2) (the adjoint of c'):
 *   z -> [dc * g * i(1-i), dc * c * f(1-f), dc * i * (1-g^2), gh * tanh(c') * o(1-o)]
 *   c -> dc * f
 * i, f, g, o are recomputed from z by ops (so they are functions of z). */
NDL_BACKWARD(LSTMGates)
{
    int64_t zs[NDL_MAX_DIMS], cs[NDL_MAX_DIMS], bs = 0, H = 0, s3[3];
    int zn, cn, rc = -1;
    PyObject *zr = NULL, *parts = NULL, *blk[4] = {NULL}, *act[4] = {NULL}, *c2 = NULL,
             *tc = NULL, *gh = NULL, *gc = NULL, *dtc = NULL, *ts = NULL, *dc2 = NULL,
             *dct = NULL, *dz[4] = {NULL}, *items = NULL, *st = NULL;
    if (ndl_value_shape((ValueObject *)IN(0), &zn, zs) < 0 ||
        ndl_value_shape((ValueObject *)IN(1), &cn, cs) < 0 ||
        gates_shapes(zn, zs, cn, cs, &bs, &H) < 0)
        return -1;
    s3[0] = bs, s3[1] = 4, s3[2] = H;
    zr = ndl_t_reshape(IN(0), 3, s3);
    parts = zr ? ndl_t_split(zr, 1) : NULL;
    if (parts == NULL)
        goto fail;
    for (int k = 0; k < 4; k++) {
        blk[k] = ndl_t_tuple_get_item(parts, k);
        act[k] = blk[k] == NULL ? NULL : k == 2 ? ndl_t_tanh(blk[k]) : ndl_t_sigmoid(blk[k]);
        if (act[k] == NULL)
            goto fail;
    }
    /* act: i, f, g, o */
    c2 = ndl_t_tuple_get_item(NODE, 1);
    tc = c2 ? ndl_t_tanh(c2) : NULL;
    gh = tc ? ndl_t_tuple_get_item(G, 0) : NULL;
    gc = gh ? ndl_t_tuple_get_item(G, 1) : NULL;
    dtc = gc ? ndl_t_multiply(gh, act[3]) : NULL;
    ts = dtc ? tanh_slope(tc) : NULL;
    dc2 = ts ? ndl_t_multiply(dtc, ts) : NULL;
    dct = dc2 ? ndl_t_add(gc, dc2) : NULL;
    if (dct == NULL)
        goto fail;
    if (needs[1] && (grads[1] = ndl_t_multiply(dct, act[1])) == NULL)
        goto fail;
    if (needs[0]) {
        if ((dz[0] = grad_block(dct, act[2], act[0], 0)) == NULL ||
            (dz[1] = grad_block(dct, IN(1), act[1], 0)) == NULL ||
            (dz[2] = grad_block(dct, act[0], act[2], 1)) == NULL ||
            (dz[3] = grad_block(gh, tc, act[3], 0)) == NULL)
            goto fail;
        items = PyTuple_Pack(4, dz[0], dz[1], dz[2], dz[3]);
        st = items ? ndl_t_stack(items, 1) : NULL;
        grads[0] = st ? ndl_t_reshape(st, 2, zs) : NULL;
        if (grads[0] == NULL)
            goto fail;
    }
    rc = 0;
fail:
    Py_XDECREF(zr);
    Py_XDECREF(parts);
    for (int k = 0; k < 4; k++) {
        Py_XDECREF(blk[k]);
        Py_XDECREF(act[k]);
        Py_XDECREF(dz[k]);
    }
    Py_XDECREF(c2);
    Py_XDECREF(tc);
    Py_XDECREF(gh);
    Py_XDECREF(gc);
    Py_XDECREF(dtc);
    Py_XDECREF(ts);
    Py_XDECREF(dc2);
    Py_XDECREF(dct);
    Py_XDECREF(items);
    Py_XDECREF(st);
    return rc;
}

/* ---- GatherRows(w, idx) and ScatterRows(shape)(g, idx) --------------------- */

/* A constant zero gradient for the index input k (indices are not
 * differentiable; they only pick rows). */
static int zero_grad(ValueObject *node, int k, PyObject **grads)
{
    int64_t shape[NDL_MAX_DIMS];
    int ndim;
    PyObject *data = ndl_value_realize((ValueObject *)IN(k)), *z;
    if (data == NULL || nda_shape(data, &ndim, shape) < 0)
        return -1;
    z = nda_full_like(data, ndim, shape, 0.0);
    grads[k] = z ? ndl_t_const(z) : NULL;
    Py_XDECREF(z);
    return grads[k] ? 0 : -1;
}

NDL_FORWARD(GatherRows) { return nda_take_rows(x[0], x[1]); }

/* w -> scatter_rows(g, idx, w.shape) */
NDL_BACKWARD(GatherRows)
{
    if (needs[0]) {
        int64_t shape[NDL_MAX_DIMS];
        int ndim;
        if (ndl_value_shape((ValueObject *)IN(0), &ndim, shape) < 0 ||
            (grads[0] = ndl_t_scatter_rows(G, IN(1), ndim, shape)) == NULL)
            return -1;
    }
    return needs[1] ? zero_grad(node, 1, grads) : 0;
}

NDL_FORWARD(ScatterRows)
{
    if (op->shape.ndim < 1) {
        PyErr_SetString(PyExc_ValueError, "scatter_rows: the table shape needs a dimension");
        return NULL;
    }
    return nda_scatter_rows(x[0], x[1], op->shape.ndim, op->shape.dims);
}

/* g -> gather_rows(g_out, idx) */
NDL_BACKWARD(ScatterRows)
{
    if (needs[0] && (grads[0] = ndl_t_gather_rows(G, IN(1))) == NULL)
        return -1;
    return needs[1] ? zero_grad(node, 1, grads) : 0;
}
