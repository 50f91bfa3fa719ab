/* ndarray_ops.c: NDArray arithmetic: elementwise, scalar, comparison,
 * reductions and matmul, and the operator slots that reach them (flip and
 * pad live in ndarray_conv.c).
 *
 * Python equivalent (API.md 2.8-2.11):
 *     a + b, a - b, a * b, a / b, a ** b, -a, a @ b, a == b, a >= b, ...
 *     a.maximum(b), a.log(), a.exp(), a.tanh(), a.sum(axis, keepdims), a.max(...)
 * Every function checks devices, shapes and axes first, then makes one
 * backend call on the arrays' own layouts: inputs are never compacted for an
 * elementwise op or a matmul (kernels take strides). Binary ops broadcast as
 * NumPy does; a float32/float64 mix computes in float64; a Python scalar is
 * rounded to the array's dtype and never changes it.
 */
#include <string.h>

#include "ndarray_impl.h"
#include "ndl_checked.h"

/* ---- elementwise -------------------------------------------------------- */

/* Note [Results in their operand's order]
 *   The NDArray operators return compact arrays (API.md 2.8). The autograd
 *   ops (array_api.c) call the `keep` forms instead: when an operand is a
 *   permuted compact array (ndl_layout_dense_order), the result is laid out
 *   in the same order, as PyTorch's elementwise ops keep a channels-last
 *   tensor channels-last. The kernel then sees that operand contiguous and
 *   writes the result contiguous; the result is the inverse permutation of
 *   that buffer, a view with the operand's shape. nn.Conv and BatchNorm2d
 *   compute in NHWC and hand back NCHW views of it; ReLU, the residual sums
 *   and all their gradients used to read those views with the channels' stride
 *   in the inner loop and to write NCHW, which the next conv copied back to
 *   NHWC. Values are the same bits either way (elementwise). A binary op
 *   takes the order of its first operand that has one (a broadcast operand
 *   has none). */
static int keep_order(int keep, const ndl_layout *la, const ndl_layout *lb, int *perm)
{
    return keep && (ndl_layout_dense_order(la, perm) || (lb && ndl_layout_dense_order(lb, perm)));
}

/* An empty result of `shape` for the kernel: compact, or (Note [Results in
 * their operand's order]) compact in the axis order perm when `permute`;
 * *kout is the array the kernel writes, *res the result (a new reference
 * each, the same object when not permuted). */
static int ewise_out(DeviceObject *dev, ndl_dtype dt, int ndim, const int64_t *shape, int permute,
                     const int *perm, NDArrayObject **kout, NDArrayObject **res)
{
    int64_t pshape[NDL_MAX_DIMS] = {0};
    ndl_layout l;
    *res = NULL;
    if (!permute) {
        *kout = ndl_array_empty(dev, dt, ndim, shape);
        *res = (NDArrayObject *)Py_XNewRef(*kout);
        return *kout ? 0 : -1;
    }
    for (int i = 0; i < ndim; i++)
        pshape[i] = shape[perm[i]];
    if ((*kout = ndl_array_empty(dev, dt, ndim, pshape)) == NULL)
        return -1;
    l = (*kout)->layout;
    for (int i = 0; i < ndim; i++)
        l.shape[perm[i]] = pshape[i], l.strides[perm[i]] = (*kout)->layout.strides[i];
    if ((*res = ndl_array_view(*kout, &l)) == NULL)
        Py_CLEAR(*kout);
    return *res ? 0 : -1;
}

static NDArrayObject *unary(ndl_unop op, NDArrayObject *a, int keep)
{
    int status, perm[NDL_MAX_DIMS];
    const int p = keep_order(keep, &a->layout, NULL, perm);
    ndl_layout la = p ? ndl_layout_permuted(&a->layout, perm) : a->layout;
    NDArrayObject *kout, *res;
    if (ewise_out(a->device, a->dtype, la.ndim, a->layout.shape, p, perm, &kout, &res) < 0)
        return NULL;
    NDL_KERNEL_CALL(ndl_array_size(a), status,
                    a->device->backend->unary(op, a->dtype, a->storage->data, &la,
                                              kout->storage->data));
    if (ndl_raise_status(status, ndl_unop_names[op]) < 0)
        Py_CLEAR(res);
    Py_DECREF(kout);
    return res;
}

NDArrayObject *ndl_array_unary(ndl_unop op, NDArrayObject *a) { return unary(op, a, 0); }
NDArrayObject *ndl_array_unary_keep(ndl_unop op, NDArrayObject *a) { return unary(op, a, 1); }

/* 1 when b broadcasts to exactly a's shape (NumPy's rule, b no wider). */
static int broadcasts_to(const ndl_layout *b, const ndl_layout *a)
{
    if (b->ndim > a->ndim)
        return 0;
    for (int i = 1; i <= b->ndim; i++)
        if (b->shape[b->ndim - i] != 1 && b->shape[b->ndim - i] != a->shape[a->ndim - i])
            return 0;
    return 1;
}

/* Note [Sums over a temporary]
 *   Linear's forward (Note [Fused Linear], ../autograd/ops_linear.c) adds
 *   the bias to a product that is its own temporary, then drops it; the
 *   sum went to a new array, so the language model's 1,280 x 10,000 logits
 *   took two 51 MB buffers in turn, both faulted in afresh each step (more
 *   than the allocator keeps: Note [Size-class free list] in storage.c).
 *   When a is contiguous, has the result's dtype and shape, and nothing
 *   else holds it or its storage (no view, no Python name), the kernel
 *   writes the result over a instead: an elementwise kernel reads each
 *   element before it writes it, on one thread, so the values are the same
 *   bits. */
static int may_write_over(const NDArrayObject *a, const NDArrayObject *b)
{
    return Py_REFCNT(a) == 1 && Py_REFCNT(a->storage) == 1 && a->dtype >= b->dtype &&
           a->device == b->device && ndl_layout_is_contiguous(&a->layout) &&
           broadcasts_to(&b->layout, &a->layout);
}

/* a op b into a new array (keep: in a's and b's memory order) or, with
 * `over` and where Note [Sums over a temporary] allows, over a itself */
static NDArrayObject *binary(ndl_binop op, NDArrayObject *a, NDArrayObject *b, int keep, int over)
{
    int64_t shape[NDL_MAX_DIMS];
    int ndim, status, p = 0, perm[NDL_MAX_DIMS];
    ndl_layout la, lb;
    ndl_dtype dt = a->dtype > b->dtype ? a->dtype : b->dtype;
    NDArrayObject *ca = NULL, *cb = NULL, *kout = NULL, *res = NULL;
    over = over && may_write_over(a, b); /* before astype adds a reference to a */
    if (ndl_check_same_device(a, b, ndl_binop_names[op]) < 0 ||
        ndl_broadcast_shapes(a->layout.ndim, a->layout.shape, b->layout.ndim, b->layout.shape,
                             &ndim, shape) < 0)
        return NULL;
    ca = ndl_array_astype(a, dt);
    cb = ca ? ndl_array_astype(b, dt) : NULL;
    if (cb == NULL)
        goto fail;
    ndl_layout_broadcast(&ca->layout, ndim, shape, &la);
    ndl_layout_broadcast(&cb->layout, ndim, shape, &lb);
    if (over) {
        kout = (NDArrayObject *)Py_NewRef(a);
        res = (NDArrayObject *)Py_NewRef(a);
    } else {
        if ((p = keep_order(keep, &la, &lb, perm)) != 0)
            la = ndl_layout_permuted(&la, perm), lb = ndl_layout_permuted(&lb, perm);
        if (ewise_out(a->device, dt, ndim, shape, p, perm, &kout, &res) < 0)
            goto fail;
    }
    NDL_KERNEL_CALL(ndl_layout_size(&la), status,
                    a->device->backend->binary(
                        op, dt, ca->storage->data, &la, cb->storage->data, &lb,
                        (char *)kout->storage->data + kout->layout.offset * (int64_t)ndl_itemsize(dt)));
    if (ndl_raise_status(status, ndl_binop_names[op]) < 0)
        Py_CLEAR(res);
fail:
    Py_XDECREF(ca);
    Py_XDECREF(cb);
    Py_XDECREF(kout);
    return res;
}

NDArrayObject *ndl_array_binary(ndl_binop op, NDArrayObject *a, NDArrayObject *b)
{
    return binary(op, a, b, 0, 0);
}

NDArrayObject *ndl_array_binary_keep(ndl_binop op, NDArrayObject *a, NDArrayObject *b)
{
    return binary(op, a, b, 1, 0);
}

/* Note [Sums over a temporary]: steals a */
NDArrayObject *ndl_array_binary_over(ndl_binop op, NDArrayObject *a, NDArrayObject *b)
{
    NDArrayObject *res = binary(op, a, b, 1, 1);
    Py_DECREF(a);
    return res;
}

static NDArrayObject *scalar(ndl_binop op, NDArrayObject *a, double s, int reflected, int keep)
{
    /* NOTE: the scalar is rounded to the array's dtype first (API.md 2.8), so
     * `a == float(x[i, j])` finds the float32 element that x[i, j] became. */
    double sr = a->dtype == NDL_FLOAT64 ? s : (double)(float)s;
    int status, perm[NDL_MAX_DIMS];
    const int p = keep_order(keep, &a->layout, NULL, perm);
    ndl_layout la = p ? ndl_layout_permuted(&a->layout, perm) : a->layout;
    NDArrayObject *kout, *res;
    if (ewise_out(a->device, a->dtype, la.ndim, a->layout.shape, p, perm, &kout, &res) < 0)
        return NULL;
    NDL_KERNEL_CALL(ndl_array_size(a), status,
                    a->device->backend->scalar(op, a->dtype, a->storage->data, &la, sr,
                                               reflected, kout->storage->data));
    if (ndl_raise_status(status, ndl_binop_names[op]) < 0)
        Py_CLEAR(res);
    Py_DECREF(kout);
    return res;
}

NDArrayObject *ndl_array_scalar(ndl_binop op, NDArrayObject *a, double s, int reflected)
{
    return scalar(op, a, s, reflected, 0);
}

NDArrayObject *ndl_array_scalar_keep(ndl_binop op, NDArrayObject *a, double s, int reflected)
{
    return scalar(op, a, s, reflected, 1);
}

/* x op y where at least one of them is an NDArray (operator slots). */
static PyObject *binop(ndl_binop op, PyObject *x, PyObject *y)
{
    double s;
    int rc;
    if (NDArray_Check(x) && NDArray_Check(y))
        return (PyObject *)ndl_array_binary(op, (NDArrayObject *)x, (NDArrayObject *)y);
    if (NDArray_Check(x)) {
        rc = ndl_as_double(y, &s);
        if (rc == 1)
            return (PyObject *)ndl_array_scalar(op, (NDArrayObject *)x, s, 0);
    } else {
        rc = ndl_as_double(x, &s);
        if (rc == 1)
            return (PyObject *)ndl_array_scalar(op, (NDArrayObject *)y, s, 1);
    }
    if (rc < 0)
        return NULL;
    Py_RETURN_NOTIMPLEMENTED;
}

static PyObject *nb_add(PyObject *x, PyObject *y) { return binop(NDL_BIN_ADD, x, y); }
static PyObject *nb_sub(PyObject *x, PyObject *y) { return binop(NDL_BIN_SUB, x, y); }
static PyObject *nb_mul(PyObject *x, PyObject *y) { return binop(NDL_BIN_MUL, x, y); }
static PyObject *nb_div(PyObject *x, PyObject *y) { return binop(NDL_BIN_DIV, x, y); }
static PyObject *nb_pow(PyObject *x, PyObject *y, PyObject *mod)
{
    if (mod != Py_None) {
        PyErr_SetString(PyExc_TypeError, "pow() with a modulus is not supported for NDArray");
        return NULL;
    }
    return binop(NDL_BIN_POW, x, y);
}
static PyObject *nb_neg(PyObject *x)
{
    return (PyObject *)ndl_array_unary(NDL_UN_NEG, (NDArrayObject *)x);
}
static PyObject *nb_matmul(PyObject *x, PyObject *y)
{
    if (!NDArray_Check(x) || !NDArray_Check(y))
        Py_RETURN_NOTIMPLEMENTED;
    return (PyObject *)ndl_array_matmul((NDArrayObject *)x, (NDArrayObject *)y);
}

PyNumberMethods ndl_ndarray_as_number = {
    .nb_add = nb_add,
    .nb_subtract = nb_sub,
    .nb_multiply = nb_mul,
    .nb_true_divide = nb_div,
    .nb_power = nb_pow,
    .nb_negative = nb_neg,
    .nb_matrix_multiply = nb_matmul,
};

PyObject *NDArray_richcompare(PyObject *a, PyObject *b, int op)
{
    static const ndl_binop codes[] = {
        [Py_LT] = NDL_BIN_LT, [Py_LE] = NDL_BIN_LE, [Py_EQ] = NDL_BIN_EQ,
        [Py_NE] = NDL_BIN_NE, [Py_GT] = NDL_BIN_GT, [Py_GE] = NDL_BIN_GE,
    };
    return binop(codes[op], a, b);
}

/* a.maximum(b) / a.minimum(b): like the operators, but a TypeError (not
 * NotImplemented) for an operand that is neither an NDArray nor a scalar. */
static PyObject *named_binop(ndl_binop op, NDArrayObject *self, PyObject *other)
{
    PyObject *r = binop(op, (PyObject *)self, other);
    if (r == Py_NotImplemented) {
        Py_DECREF(r);
        PyErr_Format(PyExc_TypeError, "%s: expected an NDArray or a scalar, got %R",
                     ndl_binop_names[op], other);
        return NULL;
    }
    return r;
}

/* ---- reductions --------------------------------------------------------- */

NDArrayObject *ndl_array_reduce(ndl_redop op, NDArrayObject *a, uint64_t mask, int keepdims)
{
    const ndl_layout *l = &a->layout;
    int64_t shape[NDL_MAX_DIMS];
    int ndim = 0, status;
    NDArrayObject *out;
    for (int i = 0; i < l->ndim; i++) {
        if (mask & ((uint64_t)1 << i)) {
            if (op == NDL_RED_MAX && l->shape[i] == 0) {
                PyErr_Format(PyExc_ValueError,
                             "max: zero-size reduction along axis %d, which has no identity", i);
                return NULL;
            }
            if (keepdims)
                shape[ndim++] = 1;
        } else {
            shape[ndim++] = l->shape[i];
        }
    }
    if (ndl_array_size(a) == 0 || mask == 0) {
        /* Nothing to combine: sums of nothing are 0; no axis means a copy. */
        NDArrayObject *c;
        if (ndl_array_size(a) == 0)
            return ndl_array_full(a->device, a->dtype, ndim, shape, 0.0);
        c = ndl_array_compact(a);
        out = c ? ndl_array_reshape(c, ndim, shape) : NULL;
        Py_XDECREF(c);
        return out;
    }
    out = ndl_array_empty(a->device, a->dtype, ndim, shape);
    if (out == NULL)
        return NULL;
    NDL_KERNEL_CALL(ndl_array_size(a), status,
                    a->device->backend->reduce(op, a->dtype, a->storage->data, l, mask,
                                               out->storage->data));
    if (ndl_raise_status(status, ndl_redop_names[op]) < 0)
        Py_CLEAR(out);
    return out;
}

/* sum/max(axis=None, keepdims=False). axis: None, an int, or a tuple/list of
 * ints (API.md 2.9; several and negative axes are extensions). */
static PyObject *reduce_method(ndl_redop op, NDArrayObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"axis", "keepdims", NULL};
    PyObject *axis = Py_None;
    int keepdims = 0, ndim = self->layout.ndim;
    uint64_t mask = 0;
    NDArrayObject *r, *flat;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|Op", kwlist, &axis, &keepdims))
        return NULL;
    if (axis == Py_None) {
        /* NOTE: the course gives shape (1,) for a full reduction, not (). */
        int64_t one = 1, ones[NDL_MAX_DIMS];
        for (int i = 0; i < ndim; i++)
            ones[i] = 1;
        mask = ndim == 64 ? ~(uint64_t)0 : (((uint64_t)1 << ndim) - 1);
        r = ndl_array_reduce(op, self, mask, 0);
        if (r == NULL)
            return NULL;
        flat = keepdims && ndim > 0 ? ndl_array_reshape(r, ndim, ones)
                                    : ndl_array_reshape(r, 1, &one);
        Py_DECREF(r);
        return (PyObject *)flat;
    }
    {
        int64_t axes[NDL_MAX_DIMS];
        int naxes;
        if (ndl_parse_shape(axis, &naxes, axes, "axis") < 0)
            return NULL;
        if (naxes == 0) {
            PyErr_Format(PyExc_ValueError, "%s: axis must name at least one axis, got %R",
                         ndl_redop_names[op], axis);
            return NULL;
        }
        if (ndl_normalize_axes(naxes, axes, ndim, 0, ndl_redop_names[op], NULL, axes, &mask) < 0)
            return NULL;
    }
    return (PyObject *)ndl_array_reduce(op, self, mask, keepdims);
}

/* ---- matmul ------------------------------------------------------------- */

static void raise_matmul_shapes(NDArrayObject *a, NDArrayObject *b, const char *why)
{
    PyObject *ta = ndl_shape_tuple(a->layout.ndim, a->layout.shape);
    PyObject *tb = ndl_shape_tuple(b->layout.ndim, b->layout.shape);
    if (ta && tb)
        PyErr_Format(PyExc_ValueError, "matmul: %s: %R @ %R", why, ta, tb);
    Py_XDECREF(ta);
    Py_XDECREF(tb);
}

/* numpy.matmul semantics: (..., m, n) @ (..., n, p) -> (..., m, p) with the
 * batch dims broadcast; a 1-D operand gets a 1 prepended (a) or appended (b),
 * removed again from the result. */
NDArrayObject *ndl_array_matmul(NDArrayObject *a, NDArrayObject *b)
{
    ndl_layout la = a->layout, lb = b->layout;
    int64_t bshape[NDL_MAX_DIMS], oshape[NDL_MAX_DIMS], m, n, p, batch = 1;
    int nb, drop_m = 0, drop_p = 0, status, ondim;
    int64_t *aoff = NULL, *boff = NULL;
    ndl_dtype dt = a->dtype > b->dtype ? a->dtype : b->dtype;
    NDArrayObject *ca = NULL, *cb = NULL, *out = NULL, *res = NULL;
    if (la.ndim == 0 || lb.ndim == 0) {
        raise_matmul_shapes(a, b, "operands must have at least one dimension");
        return NULL;
    }
    if (ndl_check_same_device(a, b, "matmul") < 0)
        return NULL;
    if (la.ndim == 1) { /* (n,) -> (1, n) */
        la.shape[1] = la.shape[0], la.strides[1] = la.strides[0];
        la.shape[0] = 1, la.strides[0] = 0, la.ndim = 2, drop_m = 1;
    }
    if (lb.ndim == 1) { /* (n,) -> (n, 1) */
        lb.shape[1] = 1, lb.strides[1] = 0, lb.ndim = 2, drop_p = 1;
    }
    m = la.shape[la.ndim - 2], n = la.shape[la.ndim - 1], p = lb.shape[lb.ndim - 1];
    if (lb.shape[lb.ndim - 2] != n) {
        raise_matmul_shapes(a, b, "inner dimensions do not match");
        return NULL;
    }
    if (ndl_broadcast_shapes(la.ndim - 2, la.shape, lb.ndim - 2, lb.shape, &nb, bshape) < 0) {
        PyErr_Clear();
        raise_matmul_shapes(a, b, "batch dimensions cannot be broadcast");
        return NULL;
    }
    if (nb + 2 > NDL_MAX_DIMS) {
        raise_matmul_shapes(a, b, "too many dimensions");
        return NULL;
    }
    for (int i = 0; i < nb; i++)
        batch *= bshape[i];
    ca = ndl_array_astype(a, dt);
    cb = ca ? ndl_array_astype(b, dt) : NULL;
    if (cb == NULL)
        goto fail;
    la.offset = ca->layout.offset, lb.offset = cb->layout.offset;
    /* NOTE: astype of a different dtype returns a compact copy with the same
     * shape; re-derive its strides for the (possibly 1-D-expanded) layout. */
    if (ca != a) {
        ndl_layout t = ca->layout;
        if (drop_m)
            t.shape[1] = t.shape[0], t.strides[1] = t.strides[0], t.shape[0] = 1, t.strides[0] = 0,
            t.ndim = 2;
        la = t;
    }
    if (cb != b) {
        ndl_layout t = cb->layout;
        if (drop_p)
            t.shape[1] = 1, t.strides[1] = 0, t.ndim = 2;
        lb = t;
    }
    aoff = PyMem_Malloc(sizeof(int64_t) * (size_t)(batch > 0 ? batch : 1));
    boff = PyMem_Malloc(sizeof(int64_t) * (size_t)(batch > 0 ? batch : 1));
    if (aoff == NULL || boff == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    {
        ndl_layout ba, bb; /* batch dims of a and b broadcast to bshape */
        ndl_layout ta = la, tb = lb;
        int64_t idx[NDL_MAX_DIMS] = {0};
        ta.ndim -= 2, tb.ndim -= 2;
        ndl_layout_broadcast(&ta, nb, bshape, &ba);
        ndl_layout_broadcast(&tb, nb, bshape, &bb);
        for (int64_t t = 0; t < batch; t++) {
            int64_t oa = la.offset, ob = lb.offset;
            /* Only an empty operand's made-up strides can overflow (Note [Checked
             * sizes]); then the product is empty or zero and never reads it. */
            for (int i = 0; i < nb; i++) {
                if (ndl_muladd_checked(idx[i], ba.strides[i], oa, &oa) < 0)
                    oa = 0;
                if (ndl_muladd_checked(idx[i], bb.strides[i], ob, &ob) < 0)
                    ob = 0;
            }
            aoff[t] = oa, boff[t] = ob;
            for (int i = nb - 1; i >= 0; i--) {
                if (++idx[i] < bshape[i])
                    break;
                idx[i] = 0;
            }
        }
    }
    memcpy(oshape, bshape, sizeof(int64_t) * nb);
    oshape[nb] = m, oshape[nb + 1] = p;
    out = ndl_array_empty(a->device, dt, nb + 2, oshape);
    if (out == NULL)
        goto fail;
    NDL_KERNEL_CALL(batch * m * n * p / 8, status,
                    a->device->backend->matmul(dt, batch, m, n, p, ca->storage->data, aoff,
                                               la.strides[la.ndim - 2], la.strides[la.ndim - 1],
                                               cb->storage->data, boff, lb.strides[lb.ndim - 2],
                                               lb.strides[lb.ndim - 1], out->storage->data));
    if (ndl_raise_status(status, "matmul") < 0)
        goto fail;
    ondim = nb;
    if (!drop_m)
        oshape[ondim++] = m;
    if (!drop_p)
        oshape[ondim++] = p;
    if (drop_m || drop_p)
        res = ndl_array_reshape(out, ondim, oshape);
    else
        res = (NDArrayObject *)Py_NewRef(out);
fail:
    PyMem_Free(aoff);
    PyMem_Free(boff);
    Py_XDECREF(ca);
    Py_XDECREF(cb);
    Py_XDECREF(out);
    return res;
}

/* ---- methods generated from the op rows (../ops.def) -------------------- */

#define NDL_UNARY_KERNEL(KERNEL, kernel, numpy, method)                                            \
    static PyObject *NDArray_##kernel(NDArrayObject *self, PyObject *unused)                       \
    {                                                                                              \
        return (PyObject *)ndl_array_unary(NDL_UN_##KERNEL, self);                                 \
    }
#include "ops.def"

#define NDL_BINARY_KERNEL(KERNEL, kernel, numpy, method)                                           \
    static PyObject *NDArray_##kernel(NDArrayObject *self, PyObject *other)                        \
    {                                                                                              \
        return named_binop(NDL_BIN_##KERNEL, self, other);                                         \
    }
#include "ops.def"

#define NDL_REDUCE(Class, func, KERNEL, numpy, method)                                             \
    static PyObject *NDArray_##func(NDArrayObject *self, PyObject *args, PyObject *kwds)           \
    {                                                                                              \
        return reduce_method(NDL_RED_##KERNEL, self, args, kwds);                                  \
    }
#include "ops.def"

/* Every row's method; rows without one (method NULL) are skipped when the
 * table is installed. */
static PyMethodDef op_methods[] = {
#define NDL_UNARY_KERNEL(KERNEL, kernel, numpy, method)                                            \
    {method, (PyCFunction)NDArray_##kernel, METH_NOARGS, "Elementwise " #kernel " (op row)."},
#define NDL_BINARY_KERNEL(KERNEL, kernel, numpy, method)                                           \
    {method, (PyCFunction)NDArray_##kernel, METH_O, #kernel "(other): with an array or a scalar."},
#define NDL_REDUCE(Class, func, KERNEL, numpy, method)                                             \
    {method, (PyCFunction)(void (*)(void))NDArray_##func, METH_VARARGS | METH_KEYWORDS,          \
     method "(axis=None, keepdims=False)."},
#include "ops.def"
};

int ndl_type_add_methods(PyTypeObject *type, PyMethodDef *defs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        PyObject *descr;
        if (defs[i].ml_name == NULL)
            continue;
        descr = PyDescr_NewMethod(type, &defs[i]);
        if (descr == NULL || PyDict_SetItemString(type->tp_dict, defs[i].ml_name, descr) < 0) {
            Py_XDECREF(descr);
            return -1;
        }
        Py_DECREF(descr);
    }
    PyType_Modified(type);
    return 0;
}

int ndl_ndarray_methods_init(PyTypeObject *type)
{
    return ndl_type_add_methods(type, op_methods, sizeof(op_methods) / sizeof(op_methods[0]));
}
