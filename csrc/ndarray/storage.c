/* storage.c: the `Array` handle type: one buffer on one device.
 *
 * Python equivalent:
 *     class Array:
 *         def __init__(self, size, dtype="float32"): ...  # uninitialised, on cpu
 *         size: int          # elements
 *         def ptr(self): ... # address of the buffer start
 *         memoryview(a)      # host storages: a flat 1-D buffer
 * Arrays (views) hold a strong reference; the buffer is freed with the last
 * one (Note [Views share storage] in ndarray.h). A host storage exports the
 * buffer protocol as a flat 1-D array (the numpy kernel module uses it);
 * NDArray exports a strided window of its storage through the same helper
 * (ndl_storage_export_view). Below devices and arrays (Note [One-way order]).
 */
#include "ndl_args.h"
#include "storage.h"

StorageObject *ndl_storage_new(const ndl_backend *backend, ndl_dtype dt, int64_t size)
{
    StorageObject *self = NULL;
    if (size < 0) {
        PyErr_Format(PyExc_ValueError, "Array size must be >= 0, got %lld", (long long)size);
        return NULL;
    }
    if ((uint64_t)size > (uint64_t)PY_SSIZE_T_MAX / 8) {
        PyErr_Format(PyExc_MemoryError, "Array of %lld elements is too large", (long long)size);
        return NULL;
    }
    self = PyObject_New(StorageObject, &Storage_Type);
    if (self == NULL)
        return NULL;
    self->backend = backend;
    self->size = size;
    self->dtype = dt;
    self->release = NULL;
    self->release_ctx = NULL;
    self->data = backend->alloc((size_t)size * ndl_itemsize(dt));
    if (self->data == NULL) {
        Py_DECREF(self);
        PyErr_Format(PyExc_MemoryError, "cannot allocate %lld elements on %s%s%s",
                     (long long)size, backend->name, backend->last_error ? ": " : "",
                     backend->last_error ? backend->last_error() : "");
        return NULL;
    }
    return self;
}

StorageObject *ndl_storage_wrap(const ndl_backend *backend, ndl_dtype dt, void *data,
                                int64_t size, void (*release)(void *ctx), void *ctx)
{
    StorageObject *self = PyObject_New(StorageObject, &Storage_Type);
    if (self == NULL) {
        release(ctx);
        return NULL;
    }
    self->backend = backend;
    self->size = size;
    self->dtype = dt;
    self->data = data;
    self->release = release;
    self->release_ctx = ctx;
    return self;
}

static void Storage_dealloc(StorageObject *self)
{
    if (self->release != NULL)
        self->release(self->release_ctx);
    else if (self->data != NULL)
        self->backend->free(self->data);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Storage_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"size", "dtype", NULL};
    long long size;
    PyObject *dtype_obj = Py_None;
    ndl_dtype dt;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "L|O:Array", kwlist, &size, &dtype_obj))
        return NULL;
    if (ndl_parse_dtype(dtype_obj, &dt) < 0)
        return NULL;
    return (PyObject *)ndl_storage_new(&ndl_cpu_backend, dt, size);
}

static PyObject *Storage_ptr(StorageObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromVoidPtr(self->data);
}

static PyObject *Storage_get_size(StorageObject *self, void *closure)
{
    return PyLong_FromLongLong(self->size);
}

static PyObject *Storage_get_dtype(StorageObject *self, void *closure)
{
    return PyUnicode_FromString(ndl_dtype_name(self->dtype));
}

static PyObject *Storage_repr(StorageObject *self)
{
    return PyUnicode_FromFormat("Array(size=%lld, dtype=%s, device=%s)", (long long)self->size,
                                ndl_dtype_name(self->dtype), self->backend->name);
}

/* ---- buffer protocol ---------------------------------------------------- */

int ndl_storage_export_view(StorageObject *st, PyObject *owner, const ndl_layout *l,
                            Py_buffer *view, int flags)
{
    Py_ssize_t itemsize = (Py_ssize_t)ndl_itemsize(st->dtype), len = itemsize;
    Py_ssize_t *meta;
    int ndim = l->ndim;
    if (!(flags & PyBUF_STRIDES) && !ndl_layout_is_contiguous(l)) {
        PyErr_SetString(PyExc_BufferError,
                        "NDArray is not C-contiguous: request a strided buffer or call compact()");
        return -1;
    }
    meta = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)(2 * ndim + 1));
    if (meta == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < ndim; i++) {
        meta[i] = (Py_ssize_t)l->shape[i];
        meta[ndim + i] = (Py_ssize_t)(l->strides[i] * itemsize);
        len *= meta[i];
    }
    view->buf = (char *)st->data + l->offset * itemsize;
    view->obj = Py_NewRef(owner);
    view->len = len;
    view->readonly = 0;
    view->itemsize = itemsize;
    view->format = (flags & PyBUF_FORMAT) ? (st->dtype == NDL_FLOAT64 ? "d" : "f") : NULL;
    view->ndim = ndim;
    view->shape = (flags & PyBUF_ND) ? meta : NULL;
    view->strides = (flags & PyBUF_STRIDES) ? meta + ndim : NULL;
    view->suboffsets = NULL;
    view->internal = meta;
    return 0;
}

void ndl_storage_release_view(PyObject *owner, Py_buffer *view) { PyMem_Free(view->internal); }

static int Storage_getbuffer(StorageObject *self, Py_buffer *view, int flags)
{
    ndl_layout flat = {.ndim = 1, .shape = {self->size}, .strides = {1}, .offset = 0};
    if (!self->backend->host_accessible) {
        PyErr_SetString(PyExc_BufferError, "a device Array has no host buffer");
        return -1;
    }
    return ndl_storage_export_view(self, (PyObject *)self, &flat, view, flags);
}

static PyBufferProcs Storage_as_buffer = {
    .bf_getbuffer = (getbufferproc)Storage_getbuffer,
    .bf_releasebuffer = (releasebufferproc)ndl_storage_release_view,
};

/* ---- the Python type ---------------------------------------------------- */

static PyMethodDef Storage_methods[] = {
    {"ptr", (PyCFunction)Storage_ptr, METH_NOARGS, "Integer address of the buffer start."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Storage_getset[] = {
    {"size", (getter)Storage_get_size, NULL, "Number of elements allocated.", NULL},
    {"dtype", (getter)Storage_get_dtype, NULL, "Element type.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject Storage_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "needle.backend_ndarray.Array",
    .tp_doc = "Array(size, dtype='float32'): a buffer of `size` elements on the CPU.",
    .tp_basicsize = sizeof(StorageObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Storage_new,
    .tp_dealloc = (destructor)Storage_dealloc,
    .tp_repr = (reprfunc)Storage_repr,
    .tp_methods = Storage_methods,
    .tp_getset = Storage_getset,
    .tp_as_buffer = &Storage_as_buffer,
};
