/* ops_softmax.c: LogSumExp and LogSoftmax, computed stably (API.md 4.4), and
 * SoftmaxCrossEntropy, nn.SoftmaxLoss as one node (Note [Fused softmax loss]).
 *
 * Forward: m = max(z) over the axes (a constant, clamped to the finite
 * range so that all -inf or +inf rows give -inf / +inf, not NaN), then
 * log(sum(exp(z - m))) + m. Backward: softmax(z) = exp(z - m) / sum(exp(z - m))
 * with the same constant m, built from ops so that second derivatives work.
 * NOTE: never exp(z - y) with the stored result y: for z ~ 1e8 in float32,
 * y has lost the log(2) and the gradient would double.
 */
#include <float.h>
#include <math.h>
#include <string.h>

#include "array_api.h"

#define IN(k) PyTuple_GET_ITEM(node->inputs, (k))
#define G ((PyObject *)g)

/* axes of op (all when None / LogSoftmax: the last one) for rank ndim */
static int reduce_axes(OpObject *op, int ndim, int *naxes, int64_t *axes)
{
    if (op->def == &ndl_op_LogSoftmax) {
        if (ndim < 1) {
            PyErr_SetString(PyExc_ValueError, "LogSoftmax: needs at least 1 dimension");
            return -1;
        }
        *naxes = 1, axes[0] = ndim - 1;
        return 0;
    }
    return ndl_normalize_axes(op->axes.given ? op->axes.n : -1, op->axes.v, ndim, 0, "LogSumExp",
                              naxes, axes, NULL);
}

/* max of z over axes, keepdims, clamped to the finite range */
static PyObject *shift_of(PyObject *z, int naxes, const int64_t *axes)
{
    double big = nda_max_finite(z);
    PyObject *m = nda_reduce(NDL_RED_MAX, z, naxes, axes, 1), *lo, *hi;
    if (m == NULL)
        return NULL;
    lo = nda_scalar(NDL_BIN_MAXIMUM, m, -big, NULL, 0);
    Py_DECREF(m);
    hi = lo ? nda_scalar(NDL_BIN_MINIMUM, lo, big, NULL, 0) : NULL;
    Py_XDECREF(lo);
    return hi;
}

/* log(sum(exp(z - m))) with the reduced axes kept as 1; *zm_out = z - m */
static PyObject *shifted_lse(PyObject *z, PyObject *m, int naxes, const int64_t *axes,
                             PyObject **zm_out)
{
    PyObject *zm = nda_binary(NDL_BIN_SUB, z, m), *e = NULL, *s = NULL, *l = NULL;
    if (zm != NULL)
        e = nda_unary(NDL_UN_EXP, zm);
    if (e != NULL)
        s = nda_reduce(NDL_RED_SUM, e, naxes, axes, 1);
    if (s != NULL)
        l = nda_unary(NDL_UN_LOG, s);
    Py_XDECREF(e);
    Py_XDECREF(s);
    if (zm_out != NULL && l != NULL)
        *zm_out = zm;
    else
        Py_XDECREF(zm);
    return l;
}

/* softmax(z) over axes as a differentiable Tensor, m a constant */
static PyObject *softmax_tensor(PyObject *zt, int ndim, const int64_t *shape, int naxes,
                                const int64_t *axes)
{
    PyObject *z = ndl_value_realize((ValueObject *)zt), *m, *negm, *c = NULL, *zc = NULL, *e = NULL,
             *s = NULL, *sb = NULL, *res = NULL;
    if (z == NULL)
        return NULL;
    m = shift_of(z, naxes, axes);
    negm = m ? nda_unary(NDL_UN_NEG, m) : NULL;
    Py_XDECREF(m);
    if (negm == NULL)
        return NULL;
    c = ndl_t_const(negm);
    Py_DECREF(negm);
    if (c != NULL)
        zc = ndl_t_add(zt, c);
    if (zc != NULL)
        e = ndl_t_exp(zc);
    if (e != NULL)
        s = ndl_t_summation(e, naxes, axes);
    if (s != NULL && ndl_grad_of_reduction((ValueObject *)s, ndim, shape, naxes, axes, &sb) == 0)
        res = ndl_t_divide(e, sb);
    Py_XDECREF(c);
    Py_XDECREF(zc);
    Py_XDECREF(e);
    Py_XDECREF(s);
    Py_XDECREF(sb);
    return res;
}

/* ---- LogSumExp(axes=None): log sum exp z over axes, reduced axes removed -- */
NDL_FORWARD(LogSumExp)
{
    int64_t shape[NDL_MAX_DIMS], axes[NDL_MAX_DIMS], oshape[NDL_MAX_DIMS];
    int ndim, naxes, ond = 0;
    uint64_t mask = 0;
    PyObject *m, *l, *r, *out;
    if (nda_shape(x[0], &ndim, shape) < 0 || reduce_axes(op, ndim, &naxes, axes) < 0)
        return NULL;
    for (int i = 0; i < naxes; i++)
        mask |= (uint64_t)1 << axes[i]; /* NOTE: normalised, so every shift is < ndim */
    for (int i = 0; i < ndim; i++)
        if (!(mask & ((uint64_t)1 << i)))
            oshape[ond++] = shape[i];
    m = shift_of(x[0], naxes, axes);
    l = m ? shifted_lse(x[0], m, naxes, axes, NULL) : NULL;
    r = l ? nda_binary(NDL_BIN_ADD, l, m) : NULL;
    out = r ? nda_reshape(r, ond, oshape) : NULL;
    Py_XDECREF(m);
    Py_XDECREF(l);
    Py_XDECREF(r);
    return out;
}
NDL_BACKWARD(LogSumExp)
{
    int64_t shape[NDL_MAX_DIMS], axes[NDL_MAX_DIMS];
    int ndim, naxes;
    PyObject *sm, *gb = NULL;
    if (ndl_value_shape((ValueObject *)IN(0), &ndim, shape) < 0 ||
        reduce_axes(op, ndim, &naxes, axes) < 0)
        return -1;
    sm = softmax_tensor(IN(0), ndim, shape, naxes, axes);
    if (sm != NULL && ndl_grad_of_reduction(g, ndim, shape, naxes, axes, &gb) == 0)
        grads[0] = ndl_t_multiply(gb, sm);
    Py_XDECREF(sm);
    Py_XDECREF(gb);
    return grads[0] ? 0 : -1;
}

/* ---- LogSoftmax(): z - logsumexp(z) over the last axis --------------------- */
NDL_FORWARD(LogSoftmax)
{
    int64_t shape[NDL_MAX_DIMS], axes[1];
    int ndim, naxes;
    PyObject *m, *l, *zm = NULL, *out;
    if (nda_shape(x[0], &ndim, shape) < 0 || reduce_axes(op, ndim, &naxes, axes) < 0)
        return NULL;
    m = shift_of(x[0], naxes, axes);
    l = m ? shifted_lse(x[0], m, naxes, axes, &zm) : NULL;
    out = l ? nda_binary(NDL_BIN_SUB, zm, l) : NULL;
    Py_XDECREF(m);
    Py_XDECREF(l);
    Py_XDECREF(zm);
    return out;
}
/* g - softmax(z) * broadcast(sum(g, axis)) */
NDL_BACKWARD(LogSoftmax)
{
    int64_t shape[NDL_MAX_DIMS], axes[1];
    int ndim, naxes;
    PyObject *sm, *gs = NULL, *gb = NULL, *p = NULL, *np_ = NULL;
    if (ndl_value_shape((ValueObject *)IN(0), &ndim, shape) < 0 ||
        reduce_axes(op, ndim, &naxes, axes) < 0)
        return -1;
    sm = softmax_tensor(IN(0), ndim, shape, naxes, axes);
    if (sm != NULL)
        gs = ndl_t_summation(G, naxes, axes);
    if (gs != NULL && ndl_grad_of_reduction((ValueObject *)gs, ndim, shape, naxes, axes, &gb) == 0)
        p = ndl_t_multiply(sm, gb);
    if (p != NULL)
        np_ = ndl_t_negate(p);
    if (np_ != NULL)
        grads[0] = ndl_t_add(G, np_);
    Py_XDECREF(sm);
    Py_XDECREF(gs);
    Py_XDECREF(gb);
    Py_XDECREF(p);
    Py_XDECREF(np_);
    return grads[0] ? 0 : -1;
}

/* ---- SoftmaxCrossEntropy(): nn.SoftmaxLoss over 2-D logits -----------------
 *
 * Python equivalent (API.md 6.2, the contract's composite formula):
 *     def softmax_cross_entropy(z, y):   # z (B, k), y (B,) integer labels
 *         B, k = z.shape
 *         return (logsumexp(z, axes=(1,)).sum() - (z * one_hot(k, y)).sum()) / B
 *     gradient: z -> (softmax(z) - one_hot(k, y)) * g / B; y -> zeros
 *
 * Note [Fused softmax loss]
 *   The composition stores a (B, k) one-hot, the product z * one_hot and
 *   LogSumExp's arrays in the graph; over a 10,000-word vocabulary each is
 *   80 MB for B = 2048. This op is one node that stores nothing but its two
 *   inputs (the logits are stored by whoever made them anyway). In nd mode
 *   the forward is one pass per row (the backend's softmax_xent slot,
 *   cpu_softmax.c / cuda_softmax.cu: max, sum of exp(z - m) with the Exp
 *   kernel's per-element math, then m + log(s) - z[y] in double), the rows'
 *   losses summed in row order on the device, so the value does not depend on
 *   the threads (Note [Loss summed on the device]). np mode, backends
 *   without the slot and the tests (_C._skip_optional_slots) compute the
 *   composite formula from nda_* calls, the one-hot built by B one-element
 *   assignments.
 *   The backward with create_graph is built from ops: the fused Softmax op
 *   (ops_attention.c) minus a constant one-hot, times g / B broadcast, so
 *   gradients of gradients work. Without create_graph (no graph is recorded
 *   while it runs) it is the softmax_xent_grad slot, one pass per row, into
 *   the one (B, k) array it returns (Note [Fused loss backward]). Labels are
 *   checked in the forward: integers in [0, k).
 *
 * Note [Labels read once]
 *   The labels are needed on the host (checked, and the slots take a host
 *   int64 array), in the forward and again in the backward. Read from a
 *   device array each read is a device-to-host copy that waits for the
 *   device's queue. The op's row marks the labels as read on the host, so
 *   applying the op keeps a cpu copy as the node's input (Note [Inputs read
 *   on the host], op.c) and both reads (read_labels) are host reads.
 *   nn.SoftmaxLoss reads y once for its own range check and passes those
 *   host values, so nothing more is copied.
 *
 * Note [Loss summed on the device]
 *   The softmax_xent slot writes the mean into the 0-d result on z's device:
 *   the rows' losses (double) summed in row order, divided by B, rounded to
 *   the dtype, which is what the host did with them before, bit for bit. On
 *   CUDA one thread does the sum (cuda_softmax.cu's xent_mean_kernel): the
 *   CPU's order and bits, B dependent additions (about 4 cycles each, so
 *   ~0.2 ms for B = 65536; a tree would be faster but would change the
 *   bits). The loss reaches the host only when the user asks (float(loss)).
 *
 * Note [Upstream gradient on the device]
 *   The fused backward passes the softmax_xent_grad slot a pointer to the 0-d
 *   out_grad's element on its device; the kernel computes g / B in g's dtype
 *   (as DivScalar does) and rounds it to z's, so the host queues the backward
 *   without waiting for the forward (the same bits as the host computation it
 *   replaces).
 */

/* a's first element in its storage (on a's device) */
static void *data_ptr(NDArrayObject *a)
{
    return (char *)a->storage->data + a->layout.offset * (int64_t)ndl_itemsize(a->dtype);
}

/* the fused forward through the backend's softmax_xent slot: a 0-d array of
 * z's dtype on z's device, the rows' losses summed there in row order (Note
 * [Loss summed on the device]) */
static PyObject *xent_fused(NDArrayObject *z, const int64_t *y, int64_t B, int64_t k)
{
    NDArrayObject *c = ndl_array_compact(z), *out = NULL;
    int status;
    if (c == NULL)
        return NULL;
    if ((out = ndl_array_empty(c->device, c->dtype, 0, &B)) == NULL) /* 0-d */
        goto fail;
    NDL_KERNEL_CALL(B * k, status,
                    c->storage->backend->softmax_xent(c->dtype, B, k, data_ptr(c), y,
                                                      data_ptr(out)));
    if (ndl_raise_status(status, "SoftmaxCrossEntropy") < 0)
        Py_CLEAR(out);
fail:
    Py_DECREF(c);
    return (PyObject *)out;
}

/* (B, k) with `value` at (b, y_b), zeros elsewhere: B one-element assignments
 * into a flat array, through nda_* calls so that every mode and device works */
static PyObject *one_hot_of(PyObject *like, const int64_t *y, int64_t B, int64_t k, double value)
{
    int64_t n = B * k, one = 1, shape[2] = {B, k};
    PyObject *flat = nda_full_like(like, 1, &n, 0.0), *fill = NULL, *res = NULL;
    fill = flat ? nda_full_like(like, 1, &one, value) : NULL;
    for (int64_t b = 0; fill != NULL && b < B; b++) {
        int64_t start = b * k + y[b];
        PyObject *cell = nda_view(flat, &start, &one, &one, -1);
        int rc = cell ? nda_assign(cell, fill) : -1;
        Py_XDECREF(cell);
        if (rc < 0)
            Py_CLEAR(fill);
    }
    res = fill ? nda_reshape(flat, 2, shape) : NULL;
    Py_XDECREF(flat);
    Py_XDECREF(fill);
    return res;
}

/* the composite formula from nda_* calls, y the (B,) labels */
static PyObject *xent_composed(PyObject *z, const int64_t *y, int64_t B, int64_t k)
{
    int64_t axis = 1;
    PyObject *m = shift_of(z, 1, &axis), *l = NULL, *lse = NULL, *ls = NULL, *oh = NULL,
             *p = NULL, *ps = NULL, *d = NULL, *res = NULL;
    l = m ? shifted_lse(z, m, 1, &axis, NULL) : NULL;
    lse = l ? nda_binary(NDL_BIN_ADD, l, m) : NULL;
    ls = lse ? nda_reduce(NDL_RED_SUM, lse, -1, NULL, 0) : NULL;
    oh = ls ? one_hot_of(z, y, B, k, 1.0) : NULL;
    p = oh ? nda_binary(NDL_BIN_MUL, z, oh) : NULL;
    ps = p ? nda_reduce(NDL_RED_SUM, p, -1, NULL, 0) : NULL;
    d = ps ? nda_binary(NDL_BIN_SUB, ls, ps) : NULL;
    res = d ? nda_scalar(NDL_BIN_DIV, d, (double)B, NULL, 0) : NULL;
    Py_XDECREF(m);
    Py_XDECREF(l);
    Py_XDECREF(lse);
    Py_XDECREF(ls);
    Py_XDECREF(oh);
    Py_XDECREF(p);
    Py_XDECREF(ps);
    Py_XDECREF(d);
    return res;
}

/* y's n labels as int64 into labels[0..n), checked to be integers in [0, k) */
static int read_labels(PyObject *y, int64_t n, int64_t k, int64_t *labels)
{
    PyObject *host = NDArray_Check(y) ? PyObject_CallMethod(y, "numpy", NULL) : Py_NewRef(y);
    PyObject *d = host ? PyObject_CallMethod(host, "astype", "s", "float64") : NULL, *v;
    Py_buffer view = {0};
    int rc = -1;
    if (d == NULL || PyObject_GetBuffer(d, &view, PyBUF_C_CONTIGUOUS) < 0)
        goto fail;
    for (int64_t i = 0; i < n; i++) {
        double l = ((const double *)view.buf)[i];
        if (l == floor(l) && l >= 0 && l < (double)k) {
            labels[i] = (int64_t)l;
            continue;
        }
        int integral = isfinite(l) && l == floor(l);
        if ((v = integral ? PyLong_FromDouble(l) : PyFloat_FromDouble(l)) != NULL)
            PyErr_Format(PyExc_ValueError, "SoftmaxCrossEntropy: label %R is %s for %lld classes",
                         v, integral ? "out of range" : "not an integer", (long long)k);
        Py_XDECREF(v);
        goto fail;
    }
    rc = 0;
fail:
    if (view.obj != NULL)
        PyBuffer_Release(&view);
    Py_XDECREF(host);
    Py_XDECREF(d);
    return rc;
}

/* *B, *k from logits (B, k) and labels (B,); the labels as int64 in *labels
 * (PyMem_Free it), checked to be integers in [0, k). */
static int xent_inputs(PyObject *z, PyObject *y, int64_t *B, int64_t *k, int64_t **labels)
{
    int64_t zs[NDL_MAX_DIMS], ys[NDL_MAX_DIMS];
    int zn, yn;
    PyObject *a, *b;
    *labels = NULL;
    if (nda_shape(z, &zn, zs) < 0 || nda_shape(y, &yn, ys) < 0)
        return -1;
    if (zn == 2 && yn == 1 && ys[0] == zs[0]) {
        *B = zs[0], *k = zs[1];
        if ((*labels = PyMem_Malloc((size_t)(*B ? *B : 1) * sizeof(int64_t))) == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        if (read_labels(y, *B, *k, *labels) == 0)
            return 0;
        PyMem_Free(*labels);
        *labels = NULL;
        return -1;
    }
    a = ndl_shape_tuple(zn, zs);
    b = ndl_shape_tuple(yn, ys);
    if (a && b)
        PyErr_Format(PyExc_ValueError, "SoftmaxCrossEntropy: needs logits (B, k) and labels "
                     "(B,), got %R and %R", a, b);
    Py_XDECREF(a);
    Py_XDECREF(b);
    return -1;
}

NDL_FORWARD(SoftmaxCrossEntropy)
{
    int64_t B, k, *labels;
    PyObject *res;
    (void)op, (void)n;
    if (xent_inputs(x[0], x[1], &B, &k, &labels) < 0)
        return NULL;
    if (NDArray_Check(x[0]) &&
        NDL_OPTIONAL_SLOT(((NDArrayObject *)x[0])->storage->backend, softmax_xent) != NULL &&
        (((NDArrayObject *)x[0])->dtype == NDL_FLOAT32 ||
         ((NDArrayObject *)x[0])->dtype == NDL_FLOAT64))
        res = xent_fused((NDArrayObject *)x[0], labels, B, k);
    else
        res = xent_composed(x[0], labels, B, k);
    PyMem_Free(labels);
    return res;
}
/* Note [Fused loss backward]
 *   Without create_graph the loss's gradient is (softmax(z) - one_hot) * (g / B)
 *   computed row by row into one (B, k) array: softmax as the Softmax op's row
 *   loop computes it (the clamped row max, exp(z - m) with the Exp kernel's
 *   per-element math, the eight-lane sum, one division per element), then
 *   (p + (-1 at the label, 0 elsewhere)) * (g / B) with g / B rounded to the
 *   logits' type as DivScalar does: the composition's numbers bit for bit,
 *   where the composition has four (B, k) arrays alive (softmax, one-hot, their
 *   sum, the product): 80 MB each for 2,048 rows over 10,000 words. */

/* z and the loss's out_grad g: arrays of one float dtype on one backend with the slot */
static int xent_grad_fusable(PyObject *z, PyObject *g)
{
    NDArrayObject *a = (NDArrayObject *)z, *b = (NDArrayObject *)g;
    return NDArray_Check(z) && NDArray_Check(g) &&
           NDL_OPTIONAL_SLOT(a->storage->backend, softmax_xent_grad) != NULL &&
           b->storage->backend == a->storage->backend &&
           (a->dtype == NDL_FLOAT32 || a->dtype == NDL_FLOAT64) && b->dtype == a->dtype;
}

/* Note [Fused loss backward]: the gradient as a constant (B, k) Tensor. g
 * (0-d) stays on its device: the slot's kernel reads it (Note [Upstream
 * gradient on the device]). */
static PyObject *xent_grad_fused(PyObject *z, PyObject *gdata, const int64_t *y, int64_t B,
                                 int64_t k)
{
    NDArrayObject *c = ndl_array_compact((NDArrayObject *)z), *out = NULL;
    NDArrayObject *ga = (NDArrayObject *)gdata;
    int64_t shape[2] = {B, k};
    PyObject *res = NULL;
    int status;
    if (c == NULL)
        return NULL;
    if ((out = ndl_array_empty(c->device, c->dtype, 2, shape)) == NULL)
        goto fail;
    NDL_KERNEL_CALL(B * k, status,
                    c->storage->backend->softmax_xent_grad(c->dtype, B, k, data_ptr(c), y,
                                                           ga->dtype, data_ptr(ga),
                                                           data_ptr(out)));
    if (ndl_raise_status(status, "SoftmaxCrossEntropy") == 0)
        res = ndl_t_const((PyObject *)out);
fail:
    Py_DECREF(c);
    Py_XDECREF(out);
    return res;
}

/* z -> (softmax(z) + const(-one_hot)) * broadcast(g / B); labels -> zeros */
NDL_BACKWARD(SoftmaxCrossEntropy)
{
    int64_t shape[NDL_MAX_DIMS], one[2] = {1, 1}, *labels;
    int ndim;
    PyObject *z, *y, *gd, *sm = NULL, *noh = NULL, *c = NULL, *d = NULL, *gs = NULL, *g1 = NULL,
             *gb = NULL, *zeros;
    (void)op;
    if ((z = ndl_value_realize((ValueObject *)IN(0))) == NULL ||
        (y = ndl_value_realize((ValueObject *)IN(1))) == NULL || nda_shape(z, &ndim, shape) < 0)
        return -1;
    if (needs[1]) {
        int64_t ys[NDL_MAX_DIMS];
        int yd;
        if (nda_shape(y, &yd, ys) < 0 || (zeros = nda_full_like(y, yd, ys, 0.0)) == NULL)
            return -1;
        grads[1] = ndl_t_const(zeros);
        Py_DECREF(zeros);
        if (grads[1] == NULL)
            return -1;
    }
    if (!needs[0])
        return 0;
    if ((labels = PyMem_Malloc((size_t)(shape[0] ? shape[0] : 1) * sizeof(int64_t))) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    if (read_labels(y, shape[0], shape[1], labels) < 0) {
        PyMem_Free(labels);
        return -1;
    }
    /* no graph is recorded (backward without create_graph): Note [Fused loss backward] */
    if (!ndl_grad_enabled && (gd = ndl_value_realize(g)) != NULL && xent_grad_fusable(z, gd)) {
        grads[0] = xent_grad_fused(z, gd, labels, shape[0], shape[1]);
        PyMem_Free(labels);
        return grads[0] ? 0 : -1;
    }
    if (PyErr_Occurred()) {
        PyMem_Free(labels);
        return -1;
    }
    sm = ndl_t_apply_shared(&ndl_op_Softmax, IN(0));
    noh = sm ? one_hot_of(z, labels, shape[0], shape[1], -1.0) : NULL;
    PyMem_Free(labels);
    c = noh ? ndl_t_const(noh) : NULL;
    d = c ? ndl_t_add(sm, c) : NULL;
    /* NOTE: released now, so that without create_graph at most two (B, k)
     * arrays (d and the result) are alive at once */
    Py_CLEAR(sm);
    Py_CLEAR(noh);
    Py_CLEAR(c);
    gs = d ? ndl_t_divide_scalar(G, (double)shape[0]) : NULL;
    g1 = gs ? ndl_t_reshape(gs, 2, one) : NULL;
    gb = g1 ? ndl_t_broadcast_to(g1, 2, shape) : NULL;
    grads[0] = gb ? ndl_t_multiply(d, gb) : NULL;
    Py_XDECREF(sm);
    Py_XDECREF(noh);
    Py_XDECREF(c);
    Py_XDECREF(d);
    Py_XDECREF(gs);
    Py_XDECREF(g1);
    Py_XDECREF(gb);
    return grads[0] ? 0 : -1;
}
