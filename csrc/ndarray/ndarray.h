/* ndarray.h: the Python-facing array layer (storage, devices, NDArray).
 *
 * Python equivalents (needle.backend_ndarray):
 *   Storage  = device.Array(size): one buffer on one device; `size`, `ptr()`.
 *   Device   = BackendDevice(name, mod): a name, a kernel module, a backend.
 *   NDArray  = a strided view (storage, dtype, shape, strides, offset).
 * Storage and Device have headers of their own (storage.h, device.h), and the
 * argument helpers shared with csrc/autograd are in ndl_args.h; this header
 * includes all three, so a file of another layer needs only this one.
 *
 * Note [Views share storage]
 *   Every NDArray holds a strong reference to its Storage and to nothing
 *   else: a view of a view points straight at the storage (views never
 *   chain), so dropping intermediate views frees nothing early and keeps no
 *   chain alive.
 *
 * Note [One-way order]
 *   The files of this layer call downwards only, from the Python type to the
 *   argument helpers:
 *     ndarray_type.c   NDArray's Python face: __new__, make, methods, properties
 *     ndarray_index.c, ndarray_ops.c   indexing, arithmetic, reductions
 *     ndarray_numpy.c  NumPy interop and NDArray's buffer protocol
 *     ndarray.c        the NDArray object and its C API: construction, views, copies
 *     device.c         BackendDevice and the device singletons
 *     storage.c        Array: one buffer on one device
 *     ndl_args.c       parsing and shape helpers (also used by csrc/autograd)
 *   kernel_module.c and ndarray_optim.c stand on the array API beside the
 *   type. Where a lower file would have to name a higher one, the higher one
 *   hands itself down at init instead (ndl_ndarray_init, ndarray_type.c):
 *   - the device methods that build arrays (device.empty, full, rand, ...)
 *     call through a table of array builders (Note [Device factories],
 *     device.h);
 *   - NDArray_Type is defined in ndarray.c, beside the code that allocates
 *     its instances and under every NDArray_Check, and gets its Python face
 *     (methods, properties, operator and buffer slots) from ndarray_type.c.
 *
 * Ownership: functions returning PyObject* / NDArrayObject* return a new
 * reference or NULL with an exception set; functions returning int return 0
 * or -1 with an exception set. Nothing steals a reference.
 */
#ifndef NDL_NDARRAY_H
#define NDL_NDARRAY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "backend.h"
#include "device.h"
#include "ndl_args.h"
#include "ndl_core.h"
#include "storage.h"

/* ---- NDArray (ndarray.c) ------------------------------------------------ */
typedef struct NDArrayObject {
    PyObject_HEAD
    StorageObject *storage; /* owned; the `_handle` */
    DeviceObject *device;   /* owned */
    ndl_dtype dtype;
    ndl_layout layout;
} NDArrayObject;

/* Defined in ndarray.c; ndl_ndarray_init gives it its Python face. */
extern PyTypeObject NDArray_Type;
#define NDArray_Check(o) PyObject_TypeCheck(o, &NDArray_Type)

/* Exceptions: IndexError that is also an AssertionError (course code asserts
 * on bad slices). */
extern PyObject *ndl_SliceError;

/* Construction */
NDArrayObject *ndl_array_empty(DeviceObject *dev, ndl_dtype dt, int ndim, const int64_t *shape);
NDArrayObject *ndl_array_full(DeviceObject *dev, ndl_dtype dt, int ndim, const int64_t *shape,
                              double value);
/* A view of `base`'s storage with the given layout (no bounds check). */
NDArrayObject *ndl_array_view(NDArrayObject *base, const ndl_layout *layout);
/* A view of storage `st` with layout l, after checking that l stays inside
 * the buffer (ValueError naming `what` otherwise). */
NDArrayObject *ndl_array_over(StorageObject *st, DeviceObject *dev, const ndl_layout *l,
                              const char *what);
/* A compact copy of a's view, with dtype dt. */
NDArrayObject *ndl_array_copy(NDArrayObject *a, ndl_dtype dt);
/* self if compact, else a compact copy. */
NDArrayObject *ndl_array_compact(NDArrayObject *a);
/* A copy with dtype dt (self, with a new reference, when already dt). */
NDArrayObject *ndl_array_astype(NDArrayObject *a, ndl_dtype dt);
int ndl_array_is_compact(NDArrayObject *a);
int64_t ndl_array_size(NDArrayObject *a);

/* Views */
NDArrayObject *ndl_array_reshape(NDArrayObject *a, int ndim, const int64_t *shape);
NDArrayObject *ndl_array_permute(NDArrayObject *a, const int *axes);
NDArrayObject *ndl_array_broadcast_to(NDArrayObject *a, int ndim, const int64_t *shape);

/* Scalar operands */
/* 1 and *out if obj is a scalar (anything float() accepts, or a size-1
 * array-like that is not an NDArray); 0 if it is not (no exception); -1 on
 * error. */
int ndl_as_double(PyObject *obj, double *out);

/* Compute (ndarray_ops.c) */
NDArrayObject *ndl_array_unary(ndl_unop op, NDArrayObject *a);
NDArrayObject *ndl_array_binary(ndl_binop op, NDArrayObject *a, NDArrayObject *b);
/* op(a, s) or, when reflected, op(s, a); s is rounded to a's dtype. */
NDArrayObject *ndl_array_scalar(ndl_binop op, NDArrayObject *a, double s, int reflected);
/* The same, with the result in a permuted operand's axis order (the autograd
 * ops': Note [Results in their operand's order]). */
NDArrayObject *ndl_array_unary_keep(ndl_unop op, NDArrayObject *a);
NDArrayObject *ndl_array_binary_keep(ndl_binop op, NDArrayObject *a, NDArrayObject *b);
NDArrayObject *ndl_array_scalar_keep(ndl_binop op, NDArrayObject *a, double s, int reflected);
/* binary_keep(op, a, b), written over a when a is a temporary nothing else
 * holds (Note [Sums over a temporary], ndarray_ops.c); steals a. */
NDArrayObject *ndl_array_binary_over(ndl_binop op, NDArrayObject *a, NDArrayObject *b);
/* Reduce the axes in mask; keepdims keeps them as 1. */
NDArrayObject *ndl_array_reduce(ndl_redop op, NDArrayObject *a, uint64_t mask, int keepdims);
NDArrayObject *ndl_array_matmul(NDArrayObject *a, NDArrayObject *b);
/* A compact copy with the axes in mask reversed. */
NDArrayObject *ndl_array_flip(NDArrayObject *a, uint64_t mask);
/* Convolution's data movement (ndarray_conv.c, which holds ndl_array_flip
 * too): each calls the backend slot of its name (backend.h) and returns a
 * new compact array; bad arguments are a ValueError naming shape and axes.
 * pad: lo[j] zeros before and hi[j] after axis j (a->layout.ndim pairs). */
NDArrayObject *ndl_array_pad(NDArrayObject *a, const int64_t *lo, const int64_t *hi);
/* d >= 0 zeros after every element along the axes in axes_mask (API.md 4.5). */
NDArrayObject *ndl_array_dilate(NDArrayObject *a, uint64_t axes_mask, int64_t d);
/* a is (N, H, W, C), already padded; k <= H, W. The compact copy of the
 * as_strided view (N, Ho, Wo, k, k, C), Ho = (H - k) // stride + 1. */
NDArrayObject *ndl_array_im2col(NDArrayObject *a, int64_t k, int64_t stride);
/* The convolution of API.md 4.6: a (N, H, W, C_in) zero-padded by `padding`
 * on both sides of H and W, cross-correlated with w (K, K, C_in, C_out) at
 * `stride`: (N, (H+2p-K)//stride + 1, (W+2p-K)//stride + 1, C_out). A
 * float32/float64 mix computes in float64. Pads once, then im2col and
 * matmul block by block (Note [Conv in blocks of rows], ndarray_conv.c).
 * ValueError naming both shapes for a bad rank, a kernel that is not square
 * or does not fit in the padded input, a channel mismatch, stride < 1 or
 * padding < 0. */
NDArrayObject *ndl_array_conv(NDArrayObject *a, NDArrayObject *w, int64_t stride,
                              int64_t padding);
/* The same with padding lo[j] before and hi[j] after spatial axis j (H, W);
 * with `general`, paddings of either sign (negative crops), any Kh x Kw
 * kernel and a dilation >= 1 (the kernel's taps that far apart: out[y] sums
 * a[y*stride + i*dilation] w[i]) are allowed (the convolutions of Conv's
 * gradients); without it, dilation must be 1. */
NDArrayObject *ndl_array_conv_general(NDArrayObject *a, NDArrayObject *w, int64_t stride,
                                      int64_t dilation, const int64_t *lo, const int64_t *hi,
                                      int general);
/* The input gradient of a stride-s conv with padding lo (either sign) before
 * H and W, on the CPU: g (N, Ho, Wo, C_out) and the conv's weight w
 * (Kh, Kw, C_in, C_out) of g's dtype and device -> (N, ohw[0], ohw[1], C_in),
 * dA[n, y*s + i - lo0, x*s + j - lo1, c] summing g[n, y, x, o] w[i, j, c, o]
 * (Note [Transposed conv], ndarray_conv.c). The caller checks the shapes. */
NDArrayObject *ndl_array_conv_transpose(NDArrayObject *g, NDArrayObject *w, int64_t s,
                                        const int64_t *lo, const int64_t *ohw);
/* The argument checks of those two on shapes alone (np mode shares them):
 * 0 and the output shape in oshape[4], or -1 with ValueError. */
int ndl_conv_check(int andim, const int64_t *ash, int wndim, const int64_t *wsh, int64_t stride,
                   int64_t dilation, const int64_t *lo, const int64_t *hi, int general,
                   int64_t *oshape);
/* Private functions for needle._C: _dilate, _im2col, _conv and the test switch
 * _skip_optional_slots (module.c adds them to the module). */
extern PyMethodDef ndl_conv_functions[];
/* Note [Optional backend slots] (backend.h): NDArray code reads an optional
 * slot as NDL_OPTIONAL_SLOT(be, name) and composes the result when it is
 * NULL. ndl_skip_optional_slots (0 unless a test sets it through
 * _C._skip_optional_slots) makes every optional slot read as NULL, so the
 * CPU runs the fallbacks a backend without those slots would. */
extern int ndl_skip_optional_slots;
#define NDL_OPTIONAL_SLOT(be, slot) (ndl_skip_optional_slots ? NULL : (be)->slot)
/* 0, or -1 with RuntimeError naming both devices and `what`. */
int ndl_check_same_device(NDArrayObject *a, NDArrayObject *b, const char *what);
/* dst view <- src (same element count, row-major order). */
int ndl_array_assign(NDArrayObject *dst, NDArrayObject *src);

/* NumPy interop (ndarray_numpy.c) */
/* Imports NumPy's C API; ndl_ndarray_init calls it first. */
int ndl_numpy_import(void);
NDArrayObject *ndl_array_from_object(PyObject *obj, DeviceObject *dev, ndl_dtype dt);
PyObject *ndl_array_to_numpy(NDArrayObject *a);
extern PyBufferProcs ndl_ndarray_as_buffer;

/* Release the GIL around kernels at least this many elements long. */
#define NDL_GIL_RELEASE_MIN 32768
/* status = call, with the GIL released when work (elements) is large. The
 * caller holds references to every array the call touches; the status
 * becomes an exception with ndl_raise_status (ndl_args.h). */
#define NDL_KERNEL_CALL(work, status, call)                                                        \
    do {                                                                                           \
        if ((work) >= NDL_GIL_RELEASE_MIN) {                                                       \
            Py_BEGIN_ALLOW_THREADS(status) = (call);                                               \
            Py_END_ALLOW_THREADS                                                                   \
        } else {                                                                                   \
            (status) = (call);                                                                     \
        }                                                                                          \
    } while (0)

/* Fused optimizer updates (ndarray_optim.c), module-level functions. */
PyObject *ndl_py_adam_update(PyObject *mod, PyObject *args);
PyObject *ndl_py_sgd_update(PyObject *mod, PyObject *args);

/* Module setup hooks */
/* Readies the NDArray layer; PyInit calls it first, before PyType_Ready
 * (ndarray_type.c). It imports NumPy's C API and hands down what lower files
 * reach only through init (Note [One-way order]). */
int ndl_ndarray_init(void);
/* Install the NDArray methods generated from the op rows (after PyType_Ready). */
int ndl_ndarray_methods_init(PyTypeObject *type);
/* Add the methods of defs[0..n) whose ml_name is not NULL to a ready type. */
int ndl_type_add_methods(PyTypeObject *type, PyMethodDef *defs, size_t n);
PyObject *ndl_kernel_module_create(void); /* needle._C.cpu_kernels */

/* The Python hooks of repr and _repr_html_ (repr_hook.c). ndl_repr_via_hook:
 * hook(obj, kind), or None when no hook of that kind ("repr", "html") is set.
 * ndl_py_repr_html is the _repr_html_ method of NDArray and Tensor. */
PyObject *ndl_repr_via_hook(PyObject *obj, const char *kind);
PyObject *ndl_py_set_repr_hook(PyObject *m, PyObject *args);
PyObject *ndl_py_repr_html(PyObject *self, PyObject *unused);

#endif
