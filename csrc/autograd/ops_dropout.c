/* ops_dropout.c: Dropout's x * mask / (1 - p) as one node (API.md 6.4).
 *
 * Python equivalent:
 *     def masked_scale(x, mask, c):   # mask of 0s and 1s, x's shape; c = 1 - p
 *         return x * mask / c
 *
 * Note [Fused dropout]
 *   The contract's Dropout is two nodes, x * mask and the division, each
 *   storing an array of x's shape besides the mask. This op stores only its
 *   output (the mask is its constant second input): the forward is the Mul
 *   kernel, then the DivScalar kernel into a new array (the product is a
 *   temporary), the same kernels and so the same numbers bit for bit; the
 *   backward is g * mask / c, built from ops. The mask is drawn by the
 *   caller (nn.Dropout, from the global NumPy generator), so seeded draws
 *   are unchanged.
 */
#include <string.h>

#include "array_api.h"

#define IN(k) PyTuple_GET_ITEM(node->inputs, (k))
#define G ((PyObject *)g)

/* ---- MaskedScale(scalar): x * mask / scalar --------------------------------- */
NDL_FORWARD(MaskedScale)
{
    int64_t xs[NDL_MAX_DIMS], ms[NDL_MAX_DIMS];
    int xn, mn;
    PyObject *p, *res;
    (void)n;
    if (nda_shape(x[0], &xn, xs) < 0 || nda_shape(x[1], &mn, ms) < 0)
        return NULL;
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
    res = nda_scalar(NDL_BIN_DIV, p, op->scalar, op->scalar_obj, 0);
    Py_DECREF(p);
    return res;
}
NDL_BACKWARD(MaskedScale)
{
    PyObject *p;
    if (needs[1]) {
        int64_t shape[NDL_MAX_DIMS];
        int ndim;
        PyObject *m = ndl_value_realize((ValueObject *)IN(1)), *zeros;
        if (m == NULL || nda_shape(m, &ndim, shape) < 0 ||
            (zeros = nda_full_like(m, ndim, shape, 0.0)) == NULL)
            return -1;
        grads[1] = ndl_t_const(zeros); /* the mask is a constant: no gradient flows */
        Py_DECREF(zeros);
        if (grads[1] == NULL)
            return -1;
    }
    if (!needs[0])
        return 0;
    if ((p = ndl_t_multiply(G, IN(1))) == NULL)
        return -1;
    grads[0] = ndl_t_scalar_op(&ndl_op_DivScalar, p, op->scalar, op->scalar_obj);
    Py_DECREF(p);
    return grads[0] ? 0 : -1;
}
