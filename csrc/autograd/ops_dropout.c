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
 *   output (the mask is its constant second input): the forward is the Mul
 *   kernel, then the DivScalar kernel into a new array (the product is a
 *   temporary), the same kernels and so the same numbers bit for bit; the
 *   backward is g * mask / c, built from ops. The mask is drawn by the
 *   caller (nn.Dropout, from the global NumPy generator), so seeded draws
 *   are unchanged. On host memory nn.Dropout passes it packed, 16 bits to
 *   an element (exact integers in float32 or float64), so the graph keeps
 *   1/16 of the float mask: the float mask is rebuilt as a temporary in the
 *   forward and in the backward.
 */
#include <string.h>

#include "array_api.h"

#define IN(k) PyTuple_GET_ITEM(node->inputs, (k))
#define G ((PyObject *)g)

/* The float mask (0s and 1s) of shape (ndim, shape) that `bits` packs, 16 to an
 * element; bits a host NDArray of ceil(size / 16) float32 or float64 integers. */
static PyObject *unpack_mask(PyObject *bits, int ndim, const int64_t *shape)
{
    NDArrayObject *b = (NDArrayObject *)bits, *c = NULL, *out = NULL;
    int64_t size = 1;
    for (int i = 0; i < ndim; i++)
        size *= shape[i];
    if (!NDArray_Check(bits) || !b->storage->backend->host_accessible ||
        (b->dtype != NDL_FLOAT32 && b->dtype != NDL_FLOAT64) || b->layout.ndim != 1 ||
        b->layout.shape[0] != (size + 15) / 16) {
        PyErr_Format(PyExc_ValueError, "MaskedScale: a packed mask must be a 1-d host array of "
                     "%lld elements (16 bits each) for %lld values", (long long)((size + 15) / 16),
                     (long long)size);
        return NULL;
    }
    if ((c = ndl_array_compact(b)) == NULL)
        return NULL;
    if ((out = ndl_array_empty(c->device, c->dtype, ndim, shape)) != NULL) {
        const char *src = (const char *)c->storage->data +
                          c->layout.offset * (int64_t)ndl_itemsize(c->dtype);
        char *dst = (char *)out->storage->data + out->layout.offset * (int64_t)ndl_itemsize(
                                                                           out->dtype);
        for (int64_t i = 0; i < size; i++) {
            unsigned w = c->dtype == NDL_FLOAT32 ? (unsigned)((const float *)src)[i >> 4]
                                                 : (unsigned)((const double *)src)[i >> 4];
            unsigned bit = (w >> (i & 15)) & 1u;
            if (out->dtype == NDL_FLOAT32)
                ((float *)dst)[i] = (float)bit;
            else
                ((double *)dst)[i] = (double)bit;
        }
    }
    Py_DECREF(c);
    return (PyObject *)out;
}

/* ---- MaskedScale(c0, c1): x * mask / c0, mask packed if c1 != 0 ------------- */
NDL_FORWARD(MaskedScale)
{
    int64_t xs[NDL_MAX_DIMS], ms[NDL_MAX_DIMS];
    int xn, mn;
    PyObject *m, *p, *res;
    (void)n;
    if (nda_shape(x[0], &xn, xs) < 0 || nda_shape(x[1], &mn, ms) < 0)
        return NULL;
    if (op->c1 != 0) {
        if ((m = unpack_mask(x[1], xn, xs)) == NULL)
            return NULL;
        p = nda_binary(NDL_BIN_MUL, x[0], m);
        Py_DECREF(m);
        res = p ? nda_scalar(NDL_BIN_DIV, p, op->c0, NULL, 0) : NULL;
        Py_XDECREF(p);
        return res;
    }
    if (xn != mn || memcmp(xs, ms, sizeof(int64_t) * (size_t)xn) != 0) {
        PyObject *a = ndl_shape_tuple(xn, xs), *b = a ? ndl_shape_tuple(mn, ms) : NULL;
        if (b != NULL)
            PyErr_Format(PyExc_ValueError,
                         "MaskedScale: x and the mask must have one shape, got %R and %R", a, b);
        Py_XDECREF(a);
        Py_XDECREF(b);
        return NULL;
    }
    if ((p = nda_binary(NDL_BIN_MUL, x[0], x[1])) == NULL)
        return NULL;
    res = nda_scalar(NDL_BIN_DIV, p, op->c0, NULL, 0);
    Py_DECREF(p);
    return res;
}
NDL_BACKWARD(MaskedScale)
{
    int64_t shape[NDL_MAX_DIMS];
    int ndim;
    PyObject *m = NULL, *mt = NULL, *p = NULL;
    int rc = -1;
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
    if (op->c1 != 0) { /* the float mask again, a constant */
        PyObject *bits = ndl_value_realize((ValueObject *)IN(1));
        if (bits == NULL || ndl_value_shape((ValueObject *)IN(0), &ndim, shape) < 0 ||
            (m = unpack_mask(bits, ndim, shape)) == NULL || (mt = ndl_t_const(m)) == NULL)
            goto fail;
    } else {
        mt = Py_NewRef(IN(1));
    }
    if ((p = ndl_t_multiply(G, mt)) == NULL ||
        (grads[0] = ndl_t_divide_scalar(p, op->c0)) == NULL)
        goto fail;
    rc = 0;
fail:
    Py_XDECREF(m);
    Py_XDECREF(mt);
    Py_XDECREF(p);
    return rc;
}
