/* ndl_args.h: Python arguments into the C core's vocabulary (ndl_core.h), and
 * the small helpers on shapes and axes that both the array layer (csrc/ndarray)
 * and the autograd layer (csrc/autograd) use. Defined in ndl_args.c, the
 * bottom of Note [One-way order] (ndarray.h): it knows no Python type of
 * needle's.
 *
 * Python equivalents:
 *     np.dtype(x).name in ("float32", "float64")   ndl_parse_dtype, ndl_dtype_name
 *     tuple(int(d) for d in shape)                 ndl_parse_shape, ndl_shape_tuple
 *     np.lib.stride_tricks.as_strided's checks     ndl_parse_layout
 *     np.core.numeric.normalize_axis_tuple         ndl_normalize_axis, ndl_normalize_axes
 *     np.broadcast_shapes                          ndl_broadcast_shapes
 *
 * Ownership as in ndarray.h: PyObject * is a new reference or NULL with an
 * exception set; int is 0, or -1 with an exception set, unless said otherwise.
 */
#ifndef NDL_ARGS_H
#define NDL_ARGS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "ndl_core.h"

/* ---- dtypes ------------------------------------------------------------- */
/* None (or NULL) -> float32; "float32", "float64", "bool" (stored as float32
 * 0/1), NumPy dtypes and scalar types; anything else is a TypeError. */
int ndl_parse_dtype(PyObject *obj, ndl_dtype *out);
const char *ndl_dtype_name(ndl_dtype dt); /* "float32" or "float64" */

/* ---- shapes and layouts ------------------------------------------------- */
/* A tuple/list of ints, or a bare int (a 1-d shape), into shape[*ndim]; at
 * most NDL_MAX_DIMS entries, which may be negative (callers check). TypeError
 * or ValueError naming `what`. */
int ndl_parse_shape(PyObject *obj, int *ndim, int64_t *shape, const char *what);
/* -1 with ValueError naming `what` if a dimension is negative or the product
 * of the non-zero dimensions is above 2**56 (Note [Checked sizes],
 * ndl_checked.h). */
int ndl_check_nonnegative(int ndim, const int64_t *shape, const char *what);
PyObject *ndl_shape_tuple(int ndim, const int64_t *v);
/* A layout from Python shape and strides (None: compact) and an offset;
 * -1 with ValueError naming `what` on negative dims or a length mismatch. */
int ndl_parse_layout(PyObject *shape, PyObject *strides, int64_t offset, ndl_layout *l,
                     const char *what);
/* slice(start, stop, step) with int fields. */
PyObject *ndl_slice_new(int64_t start, int64_t stop, int64_t step);

/* ---- axes and broadcasting ---------------------------------------------- */
/* Normalise axis `ax` for rank ndim; -1 with ValueError when out of range. */
int ndl_normalize_axis(int64_t ax, int ndim, int64_t *out);
/* Normalise `naxes` axes for rank ndim (naxes < 0: every axis, as for
 * axes=None) into out[*nout] (0 <= ax < ndim, in the order given) and the bit
 * mask *mask (either output may be NULL). A repeated or out-of-range axis is
 * a ValueError naming `what`; with skip_large, axes >= ndim are dropped
 * instead (Dilate's rule). */
int ndl_normalize_axes(int naxes, const int64_t *axes, int ndim, int skip_large, const char *what,
                       int *nout, int64_t *out, uint64_t *mask);
/* Broadcast two shapes (NumPy rules); -1 with ValueError naming both. */
int ndl_broadcast_shapes(int na, const int64_t *sa, int nb, const int64_t *sb, int *nout,
                         int64_t *out);
/* A layout of a's view broadcast to (ndim, shape); a.ndim <= ndim. */
void ndl_layout_broadcast(const ndl_layout *a, int ndim, const int64_t *shape, ndl_layout *out);

/* ---- kernel status ------------------------------------------------------ */
/* 0 for NDL_OK; else -1 with MemoryError (NDL_ENOMEM: "<what>: out of memory";
 * NDL_ENOMEM_DEVICE: with the device allocator's record) or RuntimeError,
 * naming `what` (Note [Out of memory detail], ndl_args.c). */
int ndl_raise_status(int status, const char *what);
/* The message of the last NDL_EDEVICE (set when the cuda device loads). */
extern const char *(*ndl_device_error_hook)(void);

#endif /* NDL_ARGS_H */
