/* ndarray_dlpack.c: DLPack, both ways, and NDArray's pickling.
 *
 * Python equivalent (the Python array API's DLPack protocol, DLPack 1.0):
 *     a.__dlpack__(*, stream=None, max_version=None, dl_device=None, copy=None)
 *         -> PyCapsule "dltensor_versioned" (max_version >= (1, 0)) or the
 *            legacy "dltensor": a DLManagedTensor[Versioned] over a's memory
 *     a.__dlpack_device__() -> (1, 0)                      # (kDLCPU, 0)
 *     NDArray._from_dlpack_capsule(capsule) -> NDArray over the producer's memory
 *     a.__reduce__() -> (type(a), (a.numpy(), a.device, a.dtype))   # a compact copy
 * needle.interop.from_dlpack negotiates with the producer in Python and hands
 * the capsule to _from_dlpack_capsule.
 *
 * Note [DLPack lifetimes]
 *   Export: the managed tensor holds a strong reference to the array's
 *   storage (its memory stays alive however long the consumer keeps it), and
 *   its deleter drops that reference. The consumer may call the deleter from
 *   any thread without the GIL, so the deleter takes the GIL itself, and skips
 *   the decref once the interpreter is gone. The capsule's destructor calls
 *   the deleter only if no consumer renamed the capsule "used_dltensor...".
 *   Import: the capsule is renamed only once a Storage owns the managed
 *   tensor (ndl_storage_wrap); the storage's last reference calls the
 *   producer's deleter, exactly once. A read-only producer (the versioned
 *   READ_ONLY flag) is copied, since every NDArray is writable. The storage
 *   spans the producer's memory from the view's lowest to its highest
 *   element, so fill() (which writes a whole storage, API.md 2.12) on an
 *   imported strided view also writes the producer's elements in between.
 * The DLPack structs are written out here from the spec (dlpack.h, v1.0).
 */
#include <stdlib.h>

#include "ndarray_impl.h"

/* ---- the DLPack ABI (dlpack.h v1.0) -------------------------------------- */

enum { NDL_DL_CPU = 1, NDL_DL_CUDA = 2, NDL_DL_CUDA_HOST = 3 };
enum { NDL_DL_INT = 0, NDL_DL_UINT = 1, NDL_DL_FLOAT = 2, NDL_DL_BFLOAT = 4,
       NDL_DL_COMPLEX = 5, NDL_DL_BOOL = 6 };
#define NDL_DL_FLAG_READ_ONLY (1ULL << 0)
#define NDL_DL_FLAG_IS_COPIED (1ULL << 1)

typedef struct {
    int32_t device_type;
    int32_t device_id;
} DLDevice;

typedef struct {
    uint8_t code;
    uint8_t bits;
    uint16_t lanes;
} DLDataType;

typedef struct {
    void *data;
    DLDevice device;
    int32_t ndim;
    DLDataType dtype;
    int64_t *shape;
    int64_t *strides; /* in elements; NULL means compact (legacy producers only) */
    uint64_t byte_offset;
} DLTensor;

typedef struct DLManagedTensor {
    DLTensor dl_tensor;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensor *self);
} DLManagedTensor;

typedef struct {
    uint32_t major;
    uint32_t minor;
} DLPackVersion;

typedef struct DLManagedTensorVersioned {
    DLPackVersion version;
    void *manager_ctx;
    void (*deleter)(struct DLManagedTensorVersioned *self);
    uint64_t flags;
    DLTensor dl_tensor;
} DLManagedTensorVersioned;

static const char CAP_LEGACY[] = "dltensor", CAP_VERSIONED[] = "dltensor_versioned";
static const char USED_LEGACY[] = "used_dltensor", USED_VERSIONED[] = "used_dltensor_versioned";

/* ---- export --------------------------------------------------------------- */

/* One allocation per export: both managed-tensor flavours (one is used), the
 * shape and strides they point at, and the owned storage. */
typedef struct {
    DLManagedTensor legacy;
    DLManagedTensorVersioned versioned;
    int64_t shape[NDL_MAX_DIMS];
    int64_t strides[NDL_MAX_DIMS];
    PyObject *owner; /* the StorageObject, a strong reference */
} ndl_dl_export;

#if PY_VERSION_HEX >= 0x030D0000
#define NDL_FINALIZING() Py_IsFinalizing()
#else
#define NDL_FINALIZING() _Py_IsFinalizing()
#endif

/* Safe without the GIL (Note [DLPack lifetimes]). Once the interpreter is
 * finalizing, the storage's reference is left to it rather than taking the
 * GIL from a foreign thread. */
static void dl_export_free(ndl_dl_export *e)
{
    if (e == NULL)
        return;
    if (Py_IsInitialized() && !NDL_FINALIZING()) {
        PyGILState_STATE gil = PyGILState_Ensure();
        Py_XDECREF(e->owner);
        PyGILState_Release(gil);
    }
    free(e);
}

static void dl_delete_legacy(DLManagedTensor *self) { dl_export_free(self->manager_ctx); }

static void dl_delete_versioned(DLManagedTensorVersioned *self)
{
    dl_export_free(self->manager_ctx);
}

/* Capsule destructors: run the deleter unless a consumer took the tensor. */
static void dl_capsule_legacy(PyObject *cap)
{
    DLManagedTensor *m;
    if (!PyCapsule_IsValid(cap, CAP_LEGACY))
        return;
    m = PyCapsule_GetPointer(cap, CAP_LEGACY);
    if (m->deleter != NULL)
        m->deleter(m);
}

static void dl_capsule_versioned(PyObject *cap)
{
    DLManagedTensorVersioned *m;
    if (!PyCapsule_IsValid(cap, CAP_VERSIONED))
        return;
    m = PyCapsule_GetPointer(cap, CAP_VERSIONED);
    if (m->deleter != NULL)
        m->deleter(m);
}

static int is_cpu_device_arg(PyObject *dl_device)
{
    long type, id;
    if (dl_device == Py_None)
        return 1;
    if (!PyTuple_Check(dl_device) || PyTuple_GET_SIZE(dl_device) != 2)
        return 0;
    type = PyLong_AsLong(PyTuple_GET_ITEM(dl_device, 0));
    id = PyLong_AsLong(PyTuple_GET_ITEM(dl_device, 1));
    if (PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return type == NDL_DL_CPU && id == 0;
}

/* 1 for a versioned capsule (max_version's major >= 1), 0 for the legacy
 * one, -1 with an exception for a bad max_version. */
static int wants_versioned(PyObject *max_version)
{
    long major;
    if (max_version == Py_None)
        return 0;
    if (!PyTuple_Check(max_version) || PyTuple_GET_SIZE(max_version) != 2) {
        PyErr_Format(PyExc_TypeError,
                     "__dlpack__: max_version must be a (major, minor) tuple, got %R",
                     max_version);
        return -1;
    }
    major = PyLong_AsLong(PyTuple_GET_ITEM(max_version, 0));
    if (major == -1 && PyErr_Occurred())
        return -1;
    return major >= 1;
}

PyObject *NDArray_dlpack(NDArrayObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"stream", "max_version", "dl_device", "copy", NULL};
    PyObject *stream = Py_None, *max_version = Py_None, *dl_device = Py_None;
    PyObject *copy = Py_None, *cap = NULL;
    NDArrayObject *src = NULL;
    ndl_dl_export *e = NULL;
    DLTensor *t;
    int versioned, copied = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|$OOOO:__dlpack__", kwlist, &stream,
                                     &max_version, &dl_device, &copy))
        return NULL;
    if (!self->device->backend->host_accessible) {
        PyErr_Format(PyExc_BufferError, "__dlpack__: arrays on %R cannot be exported yet",
                     (PyObject *)self->device);
        return NULL;
    }
    if (stream != Py_None) {
        PyErr_Format(PyExc_ValueError,
                     "__dlpack__: a CPU array takes stream=None, got stream=%R", stream);
        return NULL;
    }
    if (!is_cpu_device_arg(dl_device)) {
        PyErr_Format(PyExc_BufferError,
                     "__dlpack__: cannot export to dl_device=%R, only to the CPU (1, 0)",
                     dl_device);
        return NULL;
    }
    if ((versioned = wants_versioned(max_version)) < 0)
        return NULL;
    if (copy != Py_None && PyObject_IsTrue(copy) == 1) {
        src = ndl_array_copy(self, self->dtype); /* a compact copy nobody else sees */
        copied = 1;
    } else
        src = (NDArrayObject *)Py_NewRef(self);
    if (src == NULL)
        goto fail;
    e = calloc(1, sizeof(*e));
    if (e == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    e->owner = Py_NewRef(src->storage);
    for (int i = 0; i < src->layout.ndim; i++) {
        e->shape[i] = src->layout.shape[i];
        e->strides[i] = src->layout.strides[i]; /* always set (DLPack >= 1.0) */
    }
    t = versioned ? &e->versioned.dl_tensor : &e->legacy.dl_tensor;
    /* NOTE: data points at the first element and byte_offset is 0, as the spec
     * recommends for CPU memory (some consumers ignore byte_offset). */
    t->data = (char *)src->storage->data + src->layout.offset * (int64_t)ndl_itemsize(src->dtype);
    t->device = (DLDevice){.device_type = NDL_DL_CPU, .device_id = 0};
    t->ndim = src->layout.ndim;
    t->dtype = (DLDataType){.code = NDL_DL_FLOAT, .bits = (uint8_t)(8 * ndl_itemsize(src->dtype)),
                            .lanes = 1};
    t->shape = e->shape;
    t->strides = e->strides;
    t->byte_offset = 0;
    if (versioned) {
        e->versioned.version = (DLPackVersion){.major = 1, .minor = 0};
        e->versioned.manager_ctx = e;
        e->versioned.deleter = dl_delete_versioned;
        e->versioned.flags = copied ? NDL_DL_FLAG_IS_COPIED : 0;
        cap = PyCapsule_New(&e->versioned, CAP_VERSIONED, dl_capsule_versioned);
    } else {
        e->legacy.manager_ctx = e;
        e->legacy.deleter = dl_delete_legacy;
        cap = PyCapsule_New(&e->legacy, CAP_LEGACY, dl_capsule_legacy);
    }
    if (cap == NULL)
        goto fail;
    Py_DECREF(src);
    return cap;
fail:
    dl_export_free(e);
    Py_XDECREF(src);
    return NULL;
}

PyObject *NDArray_dlpack_device(NDArrayObject *self, PyObject *Py_UNUSED(unused))
{
    if (!self->device->backend->host_accessible) {
        PyErr_Format(PyExc_BufferError, "__dlpack_device__: arrays on %R cannot be exported yet",
                     (PyObject *)self->device);
        return NULL;
    }
    return Py_BuildValue("(ii)", NDL_DL_CPU, 0);
}

/* ---- import --------------------------------------------------------------- */

static void dl_release_legacy(void *ctx)
{
    DLManagedTensor *m = ctx;
    if (m->deleter != NULL)
        m->deleter(m);
}

static void dl_release_versioned(void *ctx)
{
    DLManagedTensorVersioned *m = ctx;
    if (m->deleter != NULL)
        m->deleter(m);
}

static const char *dl_code_name(uint8_t code)
{
    switch (code) {
    case NDL_DL_INT: return "int";
    case NDL_DL_UINT: return "uint";
    case NDL_DL_FLOAT: return "float";
    case NDL_DL_BFLOAT: return "bfloat";
    case NDL_DL_COMPLEX: return "complex";
    case NDL_DL_BOOL: return "bool";
    default: return "unknown";
    }
}

/* Check t and fill the layout and dtype of an array over it: 0, or -1 with an
 * exception naming what is unsupported. *lo is set to the smallest element
 * offset the view reaches (<= 0), *span to the elements from there to the
 * largest (0 for an empty array). */
static int dl_check(const DLTensor *t, ndl_dtype *dt, ndl_layout *l, int64_t *lo, int64_t *span)
{
    int64_t hi = 0, itemsize;
    int empty = 0;
    if (t->device.device_type != NDL_DL_CPU && t->device.device_type != NDL_DL_CUDA_HOST) {
        PyErr_Format(PyExc_BufferError,
                     "from_dlpack: needle's NDArray takes CPU memory; the tensor is on DLPack "
                     "device (%d, %d)", (int)t->device.device_type, (int)t->device.device_id);
        return -1;
    }
    if (t->dtype.code != NDL_DL_FLOAT || t->dtype.lanes != 1 ||
        (t->dtype.bits != 32 && t->dtype.bits != 64)) {
        PyErr_Format(PyExc_TypeError,
                     "from_dlpack: needle supports float32 and float64, got %s%d (DLPack code "
                     "%d, %d bits, %d lanes)", dl_code_name(t->dtype.code), (int)t->dtype.bits,
                     (int)t->dtype.code, (int)t->dtype.bits, (int)t->dtype.lanes);
        return -1;
    }
    if (t->ndim < 0 || t->ndim > NDL_MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "from_dlpack: %d dimensions (NDArray has at most %d)",
                     (int)t->ndim, NDL_MAX_DIMS);
        return -1;
    }
    *dt = t->dtype.bits == 64 ? NDL_FLOAT64 : NDL_FLOAT32;
    itemsize = (int64_t)ndl_itemsize(*dt);
    if (((uintptr_t)t->data + t->byte_offset) % (uintptr_t)itemsize != 0) {
        PyErr_SetString(PyExc_BufferError, "from_dlpack: the data is not aligned to its dtype");
        return -1;
    }
    l->ndim = t->ndim;
    for (int i = 0; i < t->ndim; i++) {
        if (t->shape[i] < 0) {
            PyErr_Format(PyExc_ValueError, "from_dlpack: negative dimension %lld on axis %d",
                         (long long)t->shape[i], i);
            return -1;
        }
        l->shape[i] = t->shape[i];
        empty |= t->shape[i] == 0;
    }
    if (t->strides != NULL) {
        for (int i = 0; i < t->ndim; i++)
            l->strides[i] = t->strides[i];
    } else
        ndl_compact_strides(l->ndim, l->shape, l->strides);
    *lo = 0;
    for (int i = 0; i < t->ndim && !empty; i++) {
        int64_t reach;
        if (l->strides[i] > INT64_MAX / 2 / (l->shape[i] > 0 ? l->shape[i] : 1) ||
            l->strides[i] < -INT64_MAX / 2 / (l->shape[i] > 0 ? l->shape[i] : 1)) {
            PyErr_Format(PyExc_ValueError, "from_dlpack: stride %lld on axis %d overflows",
                         (long long)l->strides[i], i);
            return -1;
        }
        reach = l->strides[i] * (l->shape[i] - 1);
        if (reach < 0)
            *lo += reach;
        else
            hi += reach;
    }
    l->offset = -*lo;
    *span = empty ? 0 : hi - *lo + 1;
    return 0;
}

PyObject *NDArray_from_dlpack_capsule(PyObject *Py_UNUSED(cls), PyObject *cap)
{
    const DLTensor *t;
    void *managed, (*release)(void *);
    const char *used;
    int read_only = 0;
    ndl_dtype dt;
    ndl_layout l;
    int64_t lo, span;
    StorageObject *st = NULL;
    NDArrayObject *view = NULL, *res = NULL;
    if (PyCapsule_IsValid(cap, CAP_VERSIONED)) {
        DLManagedTensorVersioned *m = PyCapsule_GetPointer(cap, CAP_VERSIONED);
        if (m->version.major != 1) {
            PyErr_Format(PyExc_BufferError,
                         "from_dlpack: DLPack version %u.%u is not supported (needle reads 1.x)",
                         (unsigned)m->version.major, (unsigned)m->version.minor);
            return NULL;
        }
        t = &m->dl_tensor;
        read_only = (m->flags & NDL_DL_FLAG_READ_ONLY) != 0;
        managed = m;
        release = dl_release_versioned;
        used = USED_VERSIONED;
    } else if (PyCapsule_IsValid(cap, CAP_LEGACY)) {
        DLManagedTensor *m = PyCapsule_GetPointer(cap, CAP_LEGACY);
        t = &m->dl_tensor;
        managed = m;
        release = dl_release_legacy;
        used = USED_LEGACY;
    } else {
        PyErr_Format(PyExc_ValueError,
                     "from_dlpack: expected an unused DLPack capsule ('dltensor' or "
                     "'dltensor_versioned'), got %R (a capsule is consumed only once)", cap);
        return NULL;
    }
    if (dl_check(t, &dt, &l, &lo, &span) < 0)
        return NULL;
    /* From here the storage owns the managed tensor (Note [DLPack lifetimes]). */
    if (PyCapsule_SetName(cap, used) < 0)
        return NULL;
    st = ndl_storage_wrap(&ndl_cpu_backend, dt,
                          (char *)t->data + t->byte_offset + lo * (int64_t)ndl_itemsize(dt), span,
                          release, managed);
    if (st == NULL)
        goto fail;
    view = ndl_array_over(st, ndl_device_cpu(), &l, "from_dlpack");
    if (view == NULL)
        goto fail;
    res = read_only ? ndl_array_copy(view, dt) : (NDArrayObject *)Py_NewRef(view);
fail:
    Py_XDECREF(view);
    Py_XDECREF(st);
    return (PyObject *)res;
}

/* ---- pickling ------------------------------------------------------------- */

/* (type(a), (a.numpy(), a.device, a.dtype)): a compact copy, views included. */
PyObject *NDArray_reduce(NDArrayObject *self, PyObject *Py_UNUSED(unused))
{
    PyObject *host = ndl_array_to_numpy(self), *res;
    if (host == NULL)
        return NULL;
    res = Py_BuildValue("(O(OOs))", (PyObject *)Py_TYPE(self), host, (PyObject *)self->device,
                        ndl_dtype_name(self->dtype));
    Py_DECREF(host);
    return res;
}
