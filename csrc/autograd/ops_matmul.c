/* ops_matmul.c: MatMul (API.md 4.1): numpy.matmul for ndim >= 2 with
 * broadcast batch dims. Transposes in the backward are views: the matmul
 * kernel reads any strides, so no copy is made for them. */
#include "array_api.h"

#define IN(k) PyTuple_GET_ITEM(node->inputs, (k))
#define G ((PyObject *)g)

NDL_FORWARD(MatMul)
{
    int64_t s[NDL_MAX_DIMS];
    int na, nb;
    if (nda_shape(x[0], &na, s) < 0 || nda_shape(x[1], &nb, s) < 0)
        return NULL;
    if (na < 2 || nb < 2) {
        PyErr_Format(PyExc_ValueError,
                     "MatMul: operands need at least 2 dimensions, got %d and %d (reshape a "
                     "vector to (1, n) or (n, 1))",
                     na, nb);
        return NULL;
    }
    return nda_matmul(x[0], x[1]);
}

/* (unbroadcast(g @ b^T, a.shape), unbroadcast(a^T @ g, b.shape)) */
NDL_BACKWARD(MatMul)
{
    for (int k = 0; k < 2; k++) {
        int64_t shape[NDL_MAX_DIMS];
        int ndim;
        PyObject *t, *p;
        if (!needs[k])
            continue;
        if (ndl_value_shape((ValueObject *)IN(k), &ndim, shape) < 0)
            return -1;
        t = ndl_t_transpose(IN(1 - k), -2, -1);
        p = t ? (k == 0 ? ndl_t_matmul(G, t) : ndl_t_matmul(t, G)) : NULL;
        Py_XDECREF(t);
        grads[k] = p ? ndl_t_unbroadcast(p, ndim, shape) : NULL;
        Py_XDECREF(p);
        if (grads[k] == NULL)
            return -1;
    }
    return 0;
}
