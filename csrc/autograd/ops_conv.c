/* ops_conv.c: Conv (API.md 4.1, 4.6), the convolution of NHWC activations
 * with KKIO weights, and its function conv(a, b, stride=1, padding=1).
 *
 * Python equivalent:
 *     class Conv(TensorOp):
 *         def __init__(self, stride=1, padding=0): ...
 *         def compute(self, A, B):       # A (N, H, W, C_in), B (K, K, C_in, C_out)
 *             Apad = pad(A, padding on H and W)
 *             return einsum("nyxijc,ijco->nyxo", windows(Apad, K, stride), B)
 *         def gradient(self, g, node):   # both built from ops (below)
 *     def conv(a, b, stride=1, padding=1): return Conv(stride, padding)(a, b)
 * The forward is nda_conv (nd: ndl_array_conv_general, im2col and matmul in
 * blocks; np: NumPy). The gradients are convolutions again, so they are
 * exact for every size and differentiable any number of times.
 *
 * Note [Conv's gradients are convs]
 *   Write one spatial axis (H; W is the same): input length H, kernel K
 *   with its taps d apart (the dilation: 1 for the class; K spans
 *   E = (K-1) d + 1 rows), stride s, padding lo before and hi after (the
 *   class pads p on both sides), Hp = H + lo + hi, Ho = (Hp - E) // s + 1
 *   outputs and r = (Hp - E) mod s rows of the padded input that no window
 *   reaches: out[y] = sum over i of Apad[y s + i d] B[i].
 *   gd = g dilated by s - 1 on (H, W) and cut to Lg = (Ho - 1) s + 1 rows
 *   (Note [Dilate to a length], ops_shape.c), so gd[y s] = g[y].
 *     dA[h] = sum over y s + i d = h + lo of g[y] B[i]
 *           = conv(gd, flip(B, (0, 1)) with axes 2, 3 swapped, dilation d,
 *                  padding E-1-lo before and E-1-hi+r after)
 *     (output length Lg + 2E-2-lo-hi+r - E + 1 = H exactly);
 *     dB[i] = sum over n, y of Apad[y s + i d] g[y]
 *           = conv(A with axes 0, 3 swapped (C_in, H, W, N),
 *                  g as an (Ho, Wo, N, C_out) kernel with dilation s,
 *                  stride d, padding lo before and hi-r after), axes
 *                  permuted back
 *     (output length (Hp - r - Lg) / d + 1 = K exactly).
 *   For a stride s > 1 (and d = 1), dA is instead one transposed conv of g
 *   (Note [Transposed conv], ndarray_conv.c: col2im on the CPU, without the
 *   dilated zeros); its own gradients are the conv and its weight gradient
 *   again (transposed_backward).
 *   These are API.md 4.6's constructions with the crops folded into the
 *   padding: a padding may be negative (a crop) and differ between the two
 *   sides and axes, dB's kernel is Ho x Wo, not square, and its taps are s
 *   apart: the course's construction dilates g into that kernel, whose
 *   zeros then cost s^2 times the multiply-adds (the 7x7 stride-4 stem of
 *   ResNet9: 16 times; Note [Dilated windows], ndarray_conv.c, has the
 *   figures). Conv keeps those in fields only ndl_t_conv sets (`general`,
 *   pad_lo, pad_hi, kernel_dilation; ndl_t_conv_transpose also `transposed`
 *   and out_hw); the class itself checks the contract (square kernel,
 *   padding >= 0, no dilation). A general Conv's gradients are again
 *   general Convs (a stride s and dilation d give dA stride 1 and dilation
 *   d, dB stride d and dilation s), so grad of grad needs nothing new.
 */
#include "array_api.h"

#define IN(k) PyTuple_GET_ITEM(node->inputs, (k))
#define G ((PyObject *)g)

/* The op's padding before (lo) and after (hi) axes H and W. */
static void conv_padding(OpObject *op, int64_t *lo, int64_t *hi)
{
    for (int j = 0; j < 2; j++) {
        lo[j] = op->general ? op->pad_lo[j] : op->padding;
        hi[j] = op->general ? op->pad_hi[j] : op->padding;
    }
}

/* The kernel's dilation: 1 unless general (a class's op, even made without
 * __init__, has none). */
static int64_t conv_dilation(OpObject *op)
{
    return op->general ? op->kernel_dilation : 1;
}

NDL_FORWARD(Conv)
{
    int64_t lo[2], hi[2];
    conv_padding(op, lo, hi);
    if (op->general && op->transposed) /* Note [Transposed conv] */
        return nda_conv_transpose(x[0], x[1], op->stride, lo, hi, op->out_hw);
    return nda_conv(x[0], x[1], op->stride, conv_dilation(op), lo, hi, op->general);
}

/* The weight's gradient (C_in, K, K, C_out) of a conv of input a with
 * output gradient g: conv(a with axes 0, 3 swapped, g as a kernel, stride,
 * dilation, padding lo / phi), axes permuted back (Note [Conv's gradients
 * are convs]). */
static PyObject *weight_grad(PyObject *a, PyObject *g, int64_t stride, int64_t dilation,
                             const int64_t *lo, const int64_t *phi)
{
    static const int64_t a_t[4] = {3, 1, 2, 0}, g_t[4] = {1, 2, 0, 3};
    PyObject *at = ndl_t_permute(a, 4, a_t), *gt = at ? ndl_t_permute(g, 4, g_t) : NULL;
    PyObject *db = gt ? ndl_t_conv(at, gt, stride, dilation, lo, phi) : NULL;
    PyObject *res = db ? ndl_t_permute(db, 4, g_t) : NULL;
    Py_XDECREF(at);
    Py_XDECREF(gt);
    Py_XDECREF(db);
    return res;
}

/* The gradients of the transposed conv Y = T(g, B), the input gradient of
 * conv(A, B) (stride s, padding lo / hi): T is that conv's adjoint in A,
 * <conv(A, B), g> = <A, T(g, B)>, so with Y's gradient `up`
 *     dg = conv(up, B): the conv itself;
 *     dB = the conv's weight gradient for input `up` and output gradient g
 *          (Note [Conv's gradients are convs]: stride 1, dilation s). */
static int transposed_backward(OpObject *op, PyObject *up, PyObject *gin, PyObject *b,
                               const char *needs, PyObject **grads)
{
    int64_t bsh[NDL_MAX_DIMS], lo[2], hi[2], phi[2];
    int bn;
    const int64_t s = op->stride;
    if (ndl_value_shape((ValueObject *)b, &bn, bsh) < 0)
        return -1;
    conv_padding(op, lo, hi);
    if (needs[0] && (grads[0] = ndl_t_conv(up, b, s, 1, lo, hi)) == NULL)
        return -1;
    for (int j = 0; j < 2; j++)
        phi[j] = hi[j] - (op->out_hw[j] + lo[j] + hi[j] - bsh[j]) % s;
    if (needs[1] && (grads[1] = weight_grad(up, gin, 1, s, lo, phi)) == NULL)
        return -1;
    return 0;
}

/* Note [Conv's gradients are convs] */
NDL_BACKWARD(Conv)
{
    static const int64_t hw[2] = {1, 2};
    int64_t ash[NDL_MAX_DIMS], bsh[NDL_MAX_DIMS], gsh[NDL_MAX_DIMS], lo[2], hi[2], r[2],
        lg[2], e[2], plo[2], phi[2];
    int an, bn, gn, rc = -1;
    const int64_t s = op->stride, d = conv_dilation(op);
    PyObject *gd = NULL, *bf = NULL, *bt = NULL;
    if (op->general && op->transposed)
        return transposed_backward(op, G, IN(0), IN(1), needs, grads);
    if (ndl_value_shape((ValueObject *)IN(0), &an, ash) < 0 ||
        ndl_value_shape((ValueObject *)IN(1), &bn, bsh) < 0 || ndl_value_shape(g, &gn, gsh) < 0)
        return -1;
    conv_padding(op, lo, hi);
    for (int j = 0; j < 2; j++) {
        e[j] = (bsh[j] - 1) * d + 1;
        r[j] = (ash[1 + j] + lo[j] + hi[j] - e[j]) % s;
        lg[j] = (gsh[1 + j] - 1) * s + 1;
    }
    if (needs[0] && s > 1 && d == 1) { /* Note [Transposed conv] */
        grads[0] = ndl_t_conv_transpose(G, IN(1), s, lo, hi, (const int64_t[]){ash[1], ash[2]});
        if (grads[0] == NULL)
            goto fail;
    } else if (needs[0]) {
        for (int j = 0; j < 2; j++)
            plo[j] = e[j] - 1 - lo[j], phi[j] = e[j] - 1 - hi[j] + r[j];
        gd = s > 1 ? ndl_t_dilate_to(G, 2, hw, s - 1, lg) : Py_NewRef(G);
        bf = gd ? ndl_t_flip(IN(1), 2, (const int64_t[]){0, 1}) : NULL;
        bt = bf ? ndl_t_transpose(bf, 2, 3) : NULL;
        grads[0] = bt ? ndl_t_conv(gd, bt, 1, d, plo, phi) : NULL;
        if (grads[0] == NULL)
            goto fail;
    }
    if (needs[1]) {
        for (int j = 0; j < 2; j++)
            phi[j] = hi[j] - r[j];
        if ((grads[1] = weight_grad(IN(0), G, d, s, lo, phi)) == NULL)
            goto fail;
    }
    rc = 0;
fail:
    Py_XDECREF(gd);
    Py_XDECREF(bf);
    Py_XDECREF(bt);
    return rc;
}

/* conv(a, b, stride=1, padding=1) = Conv(stride, padding)(a, b); `self` is
 * the class Conv. */
static PyObject *conv_function(PyObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"a", "b", "stride", "padding", NULL};
    PyObject *a, *b, *stride = NULL, *padding = NULL, *one = NULL, *op = NULL, *res = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|OO:conv", kwlist, &a, &b, &stride,
                                     &padding))
        return NULL;
    one = PyLong_FromLong(1);
    if (one == NULL)
        return NULL;
    op = PyObject_CallFunctionObjArgs(self, stride ? stride : one, padding ? padding : one, NULL);
    if (op != NULL)
        res = PyObject_CallFunctionObjArgs(op, a, b, NULL);
    Py_DECREF(one);
    Py_XDECREF(op);
    return res;
}

PyMethodDef ndl_conv_function_def = {
    "conv", (PyCFunction)(void (*)(void))conv_function, METH_VARARGS | METH_KEYWORDS,
    "conv(a, b, stride=1, padding=1): Conv(stride, padding)(a, b); a (N, H, W, C_in), "
    "b (K, K, C_in, C_out) (API.md 4.6)."};
