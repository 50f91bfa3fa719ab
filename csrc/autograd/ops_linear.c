/* ops_linear.c: nn.Linear with a bias as one node (API.md 6.2's x @ W + b).
 *
 * Python equivalent:
 *     def linear(x, w, b):        # x (N, in), w (in, out), b (1, out), (out,)
 *         return x @ w + b        # or (N, out); b broadcast over the rows
 *
 * Note [Fused Linear]
 *   The contract's Linear is two nodes, x @ W and the bias add, each storing
 *   an (N, out) array until the backward: the output layer of a language
 *   model over 10,000 words keeps two 80 MB arrays where one is enough. This
 *   op stores only its output: the forward is the MatMul kernel, then the
 *   bias added over the product, its temporary (Note [Sums over a
 *   temporary] in ../ndarray/ndarray_ops.c), the same two kernels and so
 *   the same numbers bit for bit. The backward is MatMul's
 *   (g @ W^T, x^T @ g) and the bias add's (g summed over the rows), built
 *   from ops, so gradients of gradients work. A full (N, out) b (an LSTM
 *   step's x @ W_ih + bias, to which h @ W_hh is added: nn_sequence.py) gets
 *   g itself, and the step keeps no h @ W_hh.
 */
#include "array_api.h"

#define IN(k) PyTuple_GET_ITEM(node->inputs, (k))
#define G ((PyObject *)g)

static int check_shapes(PyObject *const *x)
{
    int64_t xs[NDL_MAX_DIMS], ws[NDL_MAX_DIMS], bs[NDL_MAX_DIMS];
    int xn, wn, bn;
    if (nda_shape(x[0], &xn, xs) < 0 || nda_shape(x[1], &wn, ws) < 0 ||
        nda_shape(x[2], &bn, bs) < 0)
        return -1;
    if (xn == 2 && wn == 2 && xs[1] == ws[0] &&
        ((bn == 2 && (bs[0] == 1 || bs[0] == xs[0]) && bs[1] == ws[1]) ||
         (bn == 1 && bs[0] == ws[1])))
        return 0;
    return ndl_raise_shapes("Linear: needs x (N, in), weight (in, out) and bias (1, out), "
                            "(out,) or (N, out), got x %R, weight %R and bias %R", 3, x);
}

/* ---- Linear(): x @ w + b --------------------------------------------------- */
NDL_FORWARD(Linear)
{
    PyObject *p;
    (void)op, (void)n;
    if (check_shapes(x) < 0 || (p = nda_matmul(x[0], x[1])) == NULL)
        return NULL;
    return nda_binary_over(NDL_BIN_ADD, p, x[2]); /* Note [Sums over a temporary] */
}
NDL_BACKWARD(Linear)
{
    int64_t axis0 = 0, bshape[2];
    int bn;
    PyObject *t = NULL, *s = NULL;
    int rc = -1;
    (void)op;
    if (needs[0]) {
        if ((t = ndl_t_transpose(IN(1), -2, -1)) == NULL || (grads[0] = ndl_t_matmul(G, t)) == NULL)
            goto fail;
        Py_CLEAR(t);
    }
    if (needs[1]) {
        if ((t = ndl_t_transpose(IN(0), -2, -1)) == NULL || (grads[1] = ndl_t_matmul(t, G)) == NULL)
            goto fail;
        Py_CLEAR(t);
    }
    if (needs[2]) {
        if (ndl_value_shape((ValueObject *)IN(2), &bn, bshape) < 0)
            goto fail;
        if (bn == 2 && bshape[0] != 1) /* a full (N, out) bias */
            grads[2] = Py_NewRef(G);
        else if ((s = ndl_t_summation(G, 1, &axis0)) == NULL ||
                 (grads[2] = ndl_t_reshape(s, bn, bshape)) == NULL)
            goto fail;
    }
    rc = 0;
fail:
    Py_XDECREF(t);
    Py_XDECREF(s);
    return rc;
}
