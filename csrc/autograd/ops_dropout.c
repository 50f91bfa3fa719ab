/* ops_dropout.c: Dropout's x * mask / (1 - p) as one node (API.md 6.4).
 *
 * Python equivalent:
 *     def masked_scale(x, mask, c, packed):   # c = 1 - p
 *         if packed:   # mask (ceil(x.size / 16),): 16 of x's mask bits per element,
 *             bits = mask.astype(uint16).view(uint8)   # as integers 0 .. 65535
 *             mask = unpackbits(bits, bitorder="little")[:x.size].reshape(x.shape)
 *         return x * mask                 # mask of 0s and 1s of x's shape
 *                / c
 *
 * Note [Fused dropout]
 *   The contract's Dropout is two nodes, x * mask and the division, each
 *   storing an array of x's shape besides the mask. This op stores only its
 *   output (the mask is its constant second input). In nd mode the forward is
 *   the backend's masked_scale slot (cpu_dropout.c, cuda_dropout.cu): per
 *   element the Mul kernel's product and the DivScalar kernel's quotient, so
 *   the numbers of the composition bit for bit. np mode, backends without the
 *   slot and the tests (_C._skip_optional_slots) compose it: Mul, then
 *   DivScalar into a new array (the product a temporary). The backward is
 *   MaskedScale(g, mask) itself (the op is linear in x), so gradients of
 *   gradients work and the float mask is never rebuilt. The mask is drawn by
 *   the caller (nn.Dropout, from the global NumPy generator), so seeded draws
 *   are unchanged. nn.Dropout passes it packed, 16 bits to an element (exact
 *   integers in float32 or float64), so the graph keeps 1/16 of the float
 *   mask.
 *
 * Note [Dropout mask on the device]
 *   On cuda the packed mask lives on the device, beside x: it is drawn on the
 *   host (NumPy's generator, for seeded runs that match the CPU's) and packed
 *   there, then copied up once, 1/16 of the float mask's bytes; the forward
 *   and the backward kernels read it where they run. Kept on the host it
 *   would cost the same copy up in the forward and again in the backward
 *   (a kernel cannot read pageable host memory), and the graph would hold a
 *   host array that only the GPU reads.
 */
#include <stdlib.h>
#include <string.h>

#include "array_api.h"

#define IN(k) PyTuple_GET_ITEM(node->inputs, (k))
#define G ((PyObject *)g)

static void *data_ptr(NDArrayObject *a)
{
    return (char *)a->storage->data + a->layout.offset * (int64_t)ndl_itemsize(a->dtype);
}

static int64_t size_of(int ndim, const int64_t *shape)
{
    int64_t size = 1;
    for (int i = 0; i < ndim; i++)
        size *= shape[i];
    return size;
}

/* 0 when `bits` can be x's packed mask: an NDArray of x's dtype and backend,
 * 1-d of ceil(size / 16) elements; else -1 with ValueError. */
static int check_packed(PyObject *xa, PyObject *bits, int64_t size)
{
    NDArrayObject *b = (NDArrayObject *)bits, *x = (NDArrayObject *)xa;
    if (NDArray_Check(bits) && NDArray_Check(xa) && b->dtype == x->dtype &&
        (b->dtype == NDL_FLOAT32 || b->dtype == NDL_FLOAT64) &&
        b->storage->backend == x->storage->backend && b->layout.ndim == 1 &&
        b->layout.shape[0] == (size + 15) / 16)
        return 0;
    PyErr_Format(PyExc_ValueError, "MaskedScale: a packed mask must be a 1-d array of x's dtype "
                 "and device with %lld elements (16 bits each) for %lld values",
                 (long long)((size + 15) / 16), (long long)size);
    return -1;
}

/* The float mask (0s and 1s) of shape (ndim, shape) that `bits` packs, 16 to
 * an element (checked by check_packed): built on the host, then copied to
 * bits' device. The fallback of a backend without masked_scale. */
static PyObject *unpack_mask(PyObject *bits, int ndim, const int64_t *shape)
{
    NDArrayObject *c = ndl_array_compact((NDArrayObject *)bits), *out = NULL;
    const ndl_backend *be;
    int64_t size = size_of(ndim, shape), nb = (size + 15) / 16;
    size_t item;
    char *host = NULL;
    int st;
    if (c == NULL)
        return NULL;
    be = c->storage->backend, item = ndl_itemsize(c->dtype);
    /* NOTE: one buffer: the packed words, then the float mask */
    if ((host = malloc(item * (size_t)(nb + size) + 1)) == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    if ((out = ndl_array_empty(c->device, c->dtype, ndim, shape)) == NULL)
        goto fail;
    st = be->to_host(host, data_ptr(c), item * (size_t)nb);
    for (int64_t i = 0; st == NDL_OK && i < size; i++) {
        unsigned w = c->dtype == NDL_FLOAT32 ? (unsigned)((const float *)host)[i >> 4]
                                             : (unsigned)((const double *)host)[i >> 4];
        unsigned bit = (w >> (i & 15)) & 1u;
        if (c->dtype == NDL_FLOAT32)
            ((float *)host)[nb + i] = (float)bit;
        else
            ((double *)host)[nb + i] = (double)bit;
    }
    if (st == NDL_OK)
        st = be->from_host(data_ptr(out), host + item * (size_t)nb, item * (size_t)size);
    if (ndl_raise_status(st, "MaskedScale") < 0)
        Py_CLEAR(out);
fail:
    free(host);
    Py_DECREF(c);
    return (PyObject *)out;
}

/* x * mask / c through the backend's masked_scale slot, or NULL with no
 * exception set when the slot cannot run (x and mask: arrays of one float
 * dtype on one backend that has it). */
static PyObject *masked_scale_fused(PyObject *xa, PyObject *ma, int packed, double c, int *ran)
{
    NDArrayObject *x = (NDArrayObject *)xa, *m = (NDArrayObject *)ma, *cx = NULL, *cm = NULL,
                  *out = NULL;
    PyObject *res = NULL;
    int64_t size;
    int status = NDL_OK;
    *ran = 0;
    if (!NDArray_Check(xa) || !NDArray_Check(ma) || m->dtype != x->dtype ||
        (x->dtype != NDL_FLOAT32 && x->dtype != NDL_FLOAT64) ||
        m->storage->backend != x->storage->backend ||
        NDL_OPTIONAL_SLOT(x->storage->backend, masked_scale) == NULL)
        return NULL;
    *ran = 1;
    size = size_of(x->layout.ndim, x->layout.shape);
    if ((cx = ndl_array_compact(x)) == NULL || (cm = ndl_array_compact(m)) == NULL ||
        (out = ndl_array_empty(cx->device, cx->dtype, x->layout.ndim, x->layout.shape)) == NULL)
        goto fail;
    NDL_KERNEL_CALL(size, status,
                    cx->storage->backend->masked_scale(cx->dtype, size, data_ptr(cx),
                                                       data_ptr(cm), packed, c, data_ptr(out)));
    if (ndl_raise_status(status, "MaskedScale") == 0)
        res = Py_NewRef(out);
fail:
    Py_XDECREF(cx);
    Py_XDECREF(cm);
    Py_XDECREF(out);
    return res;
}

/* ---- MaskedScale(c0, c1): x * mask / c0, mask packed if c1 != 0 ------------- */
NDL_FORWARD(MaskedScale)
{
    int64_t xs[NDL_MAX_DIMS], ms[NDL_MAX_DIMS];
    int xn, mn, ran;
    PyObject *m, *p, *res;
    (void)n;
    if (nda_shape(x[0], &xn, xs) < 0 || nda_shape(x[1], &mn, ms) < 0)
        return NULL;
    if (op->c1 != 0) {
        if (check_packed(x[0], x[1], size_of(xn, xs)) < 0)
            return NULL;
    } else if (xn != mn || memcmp(xs, ms, sizeof(int64_t) * (size_t)xn) != 0) {
        ndl_raise_shapes("MaskedScale: x and the mask must have one shape, got %R and %R", 2, x);
        return NULL;
    }
    res = masked_scale_fused(x[0], x[1], op->c1 != 0, op->c0, &ran);
    if (ran)
        return res;
    if ((m = op->c1 != 0 ? unpack_mask(x[1], xn, xs) : Py_NewRef(x[1])) == NULL)
        return NULL;
    p = nda_binary(NDL_BIN_MUL, x[0], m);
    Py_DECREF(m);
    res = p ? nda_scalar(NDL_BIN_DIV, p, op->c0, NULL, 0) : NULL;
    Py_XDECREF(p);
    return res;
}
/* Note [Fused dropout]: g -> MaskedScale(c0, c1)(g, mask); mask -> zeros */
NDL_BACKWARD(MaskedScale)
{
    OpObject *same;
    PyObject *in;
    if (needs[1]) {
        PyObject *md = ndl_value_realize((ValueObject *)IN(1)), *zeros;
        int64_t ms[NDL_MAX_DIMS];
        int mn;
        if (md == NULL || nda_shape(md, &mn, ms) < 0 ||
            (zeros = nda_full_like(md, mn, ms, 0.0)) == NULL)
            return -1;
        grads[1] = ndl_t_const(zeros); /* the mask is a constant: no gradient flows */
        Py_DECREF(zeros);
        if (grads[1] == NULL)
            return -1;
    }
    if (!needs[0])
        return 0;
    if ((same = ndl_op_new(op->def)) == NULL)
        return -1;
    same->c0 = op->c0, same->c1 = op->c1;
    if ((in = PyTuple_Pack(2, G, IN(1))) != NULL)
        grads[0] = ndl_make_from_op(&Tensor_Type, (PyObject *)same, in);
    Py_XDECREF(in);
    Py_DECREF(same);
    return grads[0] != NULL ? 0 : -1;
}
