/* ndarray.h: the Python-facing array layer (storage, devices, NDArray).
 *
 * Python equivalents (needle.backend_ndarray):
 *   Storage  = device.Array(size): one buffer on one device; `size`, `ptr()`.
 *   Device   = BackendDevice(name, mod): a name, a kernel module, a backend.
 *   NDArray  = a strided view (storage, dtype, shape, strides, offset).
 *
 * Note [Views share storage]
 *   Every NDArray holds a strong reference to its Storage and to nothing
 *   else: a view of a view points straight at the storage (views never
 *   chain), so dropping intermediate views frees nothing early and keeps no
 *   chain alive.
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
#include "ndl_core.h"

/* ---- Storage ------------------------------------------------------------ */
typedef struct {
    PyObject_HEAD
    const ndl_backend *backend;
    void *data;
    int64_t size; /* elements */
    ndl_dtype dtype;
} StorageObject;

extern PyTypeObject Storage_Type;
#define Storage_Check(o) PyObject_TypeCheck(o, &Storage_Type)

StorageObject *ndl_storage_new(const ndl_backend *backend, ndl_dtype dt, int64_t size);

/* ---- Device ------------------------------------------------------------- */
typedef struct {
    PyObject_HEAD
    PyObject *name;       /* str */
    PyObject *mod;        /* kernel module, resolved lazily; NULL until then */
    const char *mod_name; /* dotted module name, or NULL when unavailable */
    const ndl_backend *backend; /* NULL when the device is disabled */
} DeviceObject;

extern PyTypeObject Device_Type;
#define Device_Check(o) PyObject_TypeCheck(o, &Device_Type)

/* Borrowed references to the process-wide device singletons. */
DeviceObject *ndl_device_cpu(void);
DeviceObject *ndl_device_cuda(void);
DeviceObject *ndl_device_cpu_numpy(void);
/* Resolve a `device=` argument: None -> default device (cpu). Returns a
 * borrowed reference, or NULL with TypeError/RuntimeError (disabled device). */
DeviceObject *ndl_device_resolve(PyObject *obj);
int ndl_device_check_enabled(DeviceObject *dev);

/* ---- NDArray ------------------------------------------------------------ */
typedef struct {
    PyObject_HEAD
    StorageObject *storage; /* owned; the `_handle` */
    DeviceObject *device;   /* owned */
    ndl_dtype dtype;
    ndl_layout layout;
} NDArrayObject;

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

/* Compute (ndarray_ops.c) */
NDArrayObject *ndl_array_unary(ndl_unop op, NDArrayObject *a);
NDArrayObject *ndl_array_binary(ndl_binop op, NDArrayObject *a, NDArrayObject *b);
/* op(a, s) or, when reflected, op(s, a); s is rounded to a's dtype. */
NDArrayObject *ndl_array_scalar(ndl_binop op, NDArrayObject *a, double s, int reflected);
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
/* Private functions for needle._C: _dilate, _im2col and the test switch
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

/* Argument parsing helpers */
/* 1 and *out if obj is a scalar (anything float() accepts, or a size-1
 * array-like); 0 if it is not (no exception); -1 on error. */
int ndl_as_double(PyObject *obj, double *out);
int ndl_parse_dtype(PyObject *obj, ndl_dtype *out); /* None -> float32 */
const char *ndl_dtype_name(ndl_dtype dt);
/* A tuple/list of ints (or, when allow_int, a bare int) into shape. */
int ndl_parse_shape(PyObject *obj, int *ndim, int64_t *shape, const char *what);
PyObject *ndl_shape_tuple(int ndim, const int64_t *v);
/* A layout from Python shape and strides (None: compact) and an offset;
 * -1 with ValueError naming `what` on negative dims or a length mismatch. */
int ndl_parse_layout(PyObject *shape, PyObject *strides, int64_t offset, ndl_layout *l,
                     const char *what);
/* slice(start, stop, step) with int fields. */
PyObject *ndl_slice_new(int64_t start, int64_t stop, int64_t step);
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

/* NumPy interop (ndarray_numpy.c) */
int ndl_numpy_init(void);
NDArrayObject *ndl_array_from_object(PyObject *obj, DeviceObject *dev, ndl_dtype dt);
PyObject *ndl_array_to_numpy(NDArrayObject *a);
extern PyBufferProcs ndl_ndarray_as_buffer;
extern PyBufferProcs ndl_storage_as_buffer;

/* Release the GIL around kernels at least this many elements long. */
#define NDL_GIL_RELEASE_MIN 32768
/* status = call, with the GIL released when work (elements) is large. The
 * caller holds references to every array the call touches. */
#define NDL_KERNEL_CALL(work, status, call)                                                        \
    do {                                                                                           \
        if ((work) >= NDL_GIL_RELEASE_MIN) {                                                       \
            Py_BEGIN_ALLOW_THREADS(status) = (call);                                               \
            Py_END_ALLOW_THREADS                                                                   \
        } else {                                                                                   \
            (status) = (call);                                                                     \
        }                                                                                          \
    } while (0)
int ndl_raise_status(int status, const char *what);

/* Fused optimizer updates (ndarray_optim.c), module-level functions. */
PyObject *ndl_py_adam_update(PyObject *mod, PyObject *args);
PyObject *ndl_py_sgd_update(PyObject *mod, PyObject *args);

/* Module setup hooks */
int ndl_ndarray_methods_init(PyTypeObject *type); /* number/mapping slots */
PyObject *ndl_kernel_module_create(void);         /* needle._C.cpu_kernels */

#endif
