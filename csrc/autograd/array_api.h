/* array_api.h: the array operations built-in ops compute with, for both
 * array backends (Note [Array backends] in autograd.h).
 *
 * Each nda_* function takes array objects (NDArray in nd mode,
 * numpy.ndarray in np mode) and returns a new reference or NULL with an
 * exception. NDArrays go straight to the C array layer; anything else goes
 * through NumPy's functions, called from C, with NumPy's dtype rules.
 * Axes passed in are already normalised (0 <= axis < ndim).
 */
#ifndef NDL_ARRAY_API_H
#define NDL_ARRAY_API_H

#include "autograd.h"

int nda_init(void);
/* np mode: a NumPy result as a genuine ndarray (numpy.asarray), since NumPy
 * returns scalars such as np.float64 for 0-d results (API.md 1.3). */
PyObject *nda_as_np_array(PyObject *res);
int nda_shape(PyObject *a, int *ndim, int64_t *shape);
/* -1 with ValueError: `fmt` (PyErr_Format's) with one %R per array of
 * x[0..k), k <= 4, each the array's shape as a tuple. The error of an op
 * whose inputs' shapes do not fit together, naming all of them. */
int ndl_raise_shapes(const char *fmt, int k, PyObject *const *x);
int nda_is_nd(PyObject *a);

PyObject *nda_binary(ndl_binop op, PyObject *a, PyObject *b);
/* nda_binary, over a when a is a temporary nothing else holds (Note [Sums
 * over a temporary], ndarray_ops.c); steals the reference to a. */
PyObject *nda_binary_over(ndl_binop op, PyObject *a, PyObject *b);
/* op(a, s) (or op(s, a) when reflected); s_obj, if not NULL, is the scalar
 * as the user gave it (np mode uses it so NumPy's promotion rules apply). */
PyObject *nda_scalar(ndl_binop op, PyObject *a, double s, PyObject *s_obj, int reflected);
PyObject *nda_unary(ndl_unop op, PyObject *a);
/* Reduce `naxes` axes (naxes < 0: all, giving shape () unless keepdims). */
PyObject *nda_reduce(ndl_redop op, PyObject *a, int naxes, const int64_t *axes, int keepdims);
PyObject *nda_reshape(PyObject *a, int ndim, const int64_t *shape); /* compacts if needed */
PyObject *nda_broadcast_to(PyObject *a, int ndim, const int64_t *shape);
PyObject *nda_permute(PyObject *a, const int *axes);
PyObject *nda_matmul(PyObject *a, PyObject *b);
PyObject *nda_flip(PyObject *a, int naxes, const int64_t *axes);
/* The convolution of API.md 4.6, padded by lo[j] before and hi[j] after
 * spatial axis j: ndl_array_conv_general's arguments and checks (ndarray.h);
 * np mode crops, np.pad's, takes sliding_window_view and np.tensordot. */
PyObject *nda_conv(PyObject *a, PyObject *w, int64_t stride, int64_t dilation, const int64_t *lo,
                   const int64_t *hi, int general);
/* The input gradient of the conv (stride s, padding lo / hi, weight w) of an
 * ohw[0] x ohw[1] input, from its output gradient g: ndl_array_conv_transpose
 * for CPU arrays of one dtype, else (other devices, np mode) the conv of g
 * dilated by s - 1 with w flipped (Note [Transposed conv], ndarray_conv.c). */
PyObject *nda_conv_transpose(PyObject *g, PyObject *w, int64_t s, const int64_t *lo,
                             const int64_t *hi, const int64_t *ohw);
/* A new uninitialised array shaped `shape`, on like's device and dtype. */
PyObject *nda_empty_like(PyObject *like, int ndim, const int64_t *shape);
/* A new array shaped `shape` filled with value, on like's device and dtype. */
PyObject *nda_full_like(PyObject *like, int ndim, const int64_t *shape, double value);
/* The view a[start_i : start_i + len_i * step_i : step_i] along every axis,
 * with axis `drop` (if >= 0) removed (its len must be 1). */
PyObject *nda_view(PyObject *a, const int64_t *start, const int64_t *len, const int64_t *step,
                   int drop);
/* A compact copy of a. */
PyObject *nda_copy(PyObject *a);
/* dst (a view) <- src, same shape. */
int nda_assign(PyObject *dst, PyObject *src);
/* Largest finite value of a's floating dtype (for clamping the max shift). */
double nda_max_finite(PyObject *a);

/* ---- rows picked by integer indices (GatherRows, ScatterRows) ----------- */
/* Every element of the index array idx (NDArray or numpy.ndarray, any dtype
 * and shape) as int64, in row-major order, into *out (free it with
 * PyMem_Free); *n is their number. ValueError for a value that is not an
 * integer, IndexError for one outside [0, bound); `what` names the caller. */
int nda_indices(PyObject *idx, int64_t bound, const char *what, int64_t **out, int64_t *n);
/* numpy.take(a, idx, axis=0): shape idx.shape + a.shape[1:], row k of the
 * result is row idx[k] of a. */
PyObject *nda_take_rows(PyObject *a, PyObject *idx);
/* Zeros shaped `shape` (on g's device and dtype) with row k of g added to
 * row idx[k], for k in order (numpy.add.at); g is idx.shape + shape[1:]. */
PyObject *nda_scatter_rows(PyObject *g, PyObject *idx, int ndim, const int64_t *shape);

#endif
