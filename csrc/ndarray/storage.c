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
#include <pthread.h>
#include <stdlib.h>

#include "ndl_args.h"
#include "ndl_checked.h"
#include "storage.h"

/* Note [Size-class free list]: CPU buffers are rounded up to a size class
 * (eight classes per power of two from 64 bytes, so at most 12.5% more than
 * asked) and, when freed, kept on that class's list for the next buffer of
 * the class instead of going back to malloc. A training step allocates the
 * same sizes every iteration, so after the first one its buffers come from
 * the lists: no malloc, no page faults for the big ones (which malloc gives
 * back to the kernel with munmap and takes again zero-filled). The lists
 * hold at most NEEDLE_CPU_CACHE_MB megabytes (default 64; 0 turns the cache
 * off; always off under AddressSanitizer) and at most an eighth of the bytes
 * of the live CPU buffers, so that what the lists keep adds 12.5% at most
 * to a program's peak (malloc reuses freed memory for any size; a list only
 * for its class); a buffer that would pass either limit is freed at once. A
 * freed buffer stores the list link in its first bytes. The lock makes the
 * lists safe from any thread; storages are made and freed with the GIL held
 * anyway. */
#define POOL_STEPS 8 /* classes per power of two */
#define POOL_CLASSES (POOL_STEPS * 65)

typedef struct pool_block {
    struct pool_block *next;
} pool_block;

static pool_block *pool_lists[POOL_CLASSES];
static size_t pool_bytes, live_bytes;
static size_t pool_limit = (size_t)-1; /* -1: not read from the environment yet */
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;

/* The class of a request of nbytes, and the class's size in *class_bytes. */
static int pool_class(size_t nbytes, size_t *class_bytes)
{
    int k = 6; /* the smallest class is 64 bytes */
    size_t step;
    while (k < 63 && ((size_t)1 << (k + 1)) < nbytes)
        k++;
    /* classes (POOL_STEPS + j) * 2^k / POOL_STEPS for j = 0 .. POOL_STEPS - 1,
     * and 2^(k+1), the first of the next power */
    if (nbytes <= ((size_t)1 << k)) {
        *class_bytes = (size_t)1 << k;
        return k * POOL_STEPS;
    }
    step = ((size_t)1 << k) / POOL_STEPS;
    for (int j = 1; j < POOL_STEPS; j++) {
        if (nbytes <= ((size_t)1 << k) + j * step) {
            *class_bytes = ((size_t)1 << k) + j * step;
            return k * POOL_STEPS + j;
        }
    }
    *class_bytes = (size_t)1 << (k + 1);
    return (k + 1) * POOL_STEPS;
}

static size_t pool_limit_bytes(void)
{
    if (pool_limit == (size_t)-1) {
        const char *env = getenv("NEEDLE_CPU_CACHE_MB");
        long long mb = env != NULL && *env != '\0' ? atoll(env) : 64;
#ifdef __SANITIZE_ADDRESS__
        mb = 0; /* AddressSanitizer sees every free: a reused buffer would hide a use after it */
#endif
        pool_limit = mb > 0 ? (size_t)mb << 20 : 0;
    }
    return pool_limit;
}

/* A buffer for nbytes from the backend, through the free list on the CPU. */
static void *storage_alloc(const ndl_backend *backend, size_t nbytes)
{
    size_t class_bytes;
    int c;
    void *p = NULL;
    if (backend != &ndl_cpu_backend)
        return backend->alloc(nbytes);
    c = pool_class(nbytes, &class_bytes);
    pthread_mutex_lock(&pool_lock);
    if (pool_lists[c] != NULL) {
        p = pool_lists[c];
        pool_lists[c] = pool_lists[c]->next;
        pool_bytes -= class_bytes;
    }
    live_bytes += class_bytes;
    pthread_mutex_unlock(&pool_lock);
    if (p == NULL && (p = backend->alloc(class_bytes)) == NULL) {
        pthread_mutex_lock(&pool_lock);
        live_bytes -= class_bytes;
        pthread_mutex_unlock(&pool_lock);
    }
    return p;
}

/* Give back a buffer storage_alloc made for nbytes. */
static void storage_free(const ndl_backend *backend, void *p, size_t nbytes)
{
    size_t class_bytes;
    int c, kept = 0;
    if (backend != &ndl_cpu_backend) {
        backend->free(p);
        return;
    }
    c = pool_class(nbytes, &class_bytes);
    pthread_mutex_lock(&pool_lock);
    live_bytes -= class_bytes;
    if (pool_bytes + class_bytes <= pool_limit_bytes() &&
        pool_bytes + class_bytes <= live_bytes / 8) {
        ((pool_block *)p)->next = pool_lists[c];
        pool_lists[c] = p;
        pool_bytes += class_bytes;
        kept = 1;
    }
    pthread_mutex_unlock(&pool_lock);
    if (!kept)
        backend->free(p);
}

StorageObject *ndl_storage_new(const ndl_backend *backend, ndl_dtype dt, int64_t size)
{
    StorageObject *self = NULL;
    int64_t nbytes;
    if (size < 0) {
        PyErr_Format(PyExc_ValueError, "Array size must be >= 0, got %lld", (long long)size);
        return NULL;
    }
    /* Note [Checked sizes] (ndl_checked.h): at most 2**56 elements. */
    if (size > NDL_MAX_ELEMS || ndl_checked_nbytes(size, dt, &nbytes) < 0) {
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
    self->data = storage_alloc(backend, (size_t)nbytes);
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
        storage_free(self->backend, self->data,
                     (size_t)self->size * ndl_itemsize(self->dtype));
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
        int64_t stride;
        meta[i] = (Py_ssize_t)l->shape[i];
        /* Note [Checked sizes]: only an empty view's made-up strides can
         * overflow here; they are never followed, so 0 does. */
        if (ndl_mul_checked(l->strides[i], itemsize, &stride) < 0)
            stride = 0;
        meta[ndim + i] = (Py_ssize_t)stride;
        len *= meta[i];
    }
    /* An empty view's offset may point anywhere: its buffer starts at the
     * storage's. */
    view->buf = (char *)st->data + (len == 0 ? 0 : l->offset * itemsize);
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
