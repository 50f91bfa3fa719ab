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
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* mremap (pyconfig.h defines it the same way) */
#endif
#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "ndl_args.h"
#include "ndl_checked.h"
#include "storage.h"

/* Note [Size-class free list]: CPU buffers are rounded up to a size class
 * (eight classes per power of two from 64 bytes, so at most 12.5% more than
 * asked) and, when freed, kept on that class's list for the next buffer of
 * the class instead of going back to malloc. A training step allocates the
 * same sizes every iteration, so after the first one its buffers come from
 * the lists: no malloc, no page faults for the big ones (Note [Big buffers
 * from mmap]: those are mapped fresh, zero-filled page by page). The lists
 * hold at most NEEDLE_CPU_CACHE_MB megabytes (default 64; 0 turns the cache
 * off; always off under AddressSanitizer), and:
 *  - small buffers (below 1 MB, from malloc) at most an eighth of the live
 *    buffers' bytes, as malloc keeps what it is given back anyway;
 *  - big ones (mapped) only while live + cached bytes stay within the peak
 *    the live buffers have reached plus PEAK_SLACK (8 MB), so the cache
 *    raises a program's peak by 8 MB at most. A new big buffer that would
 *    pass that takes a cached bigger one (Note [Remapping a cached buffer])
 *    or frees cached big ones, the biggest first. Bounded by the live bytes
 *    now instead, the cache kept little at the end of a step, when the
 *    gradients and activations are freed and the next step wants them back
 *    (the LSTM language model mapped 80 MB afresh per step); the slack lets
 *    a small model keep the one or two buffers it alternates between (a
 *    ResNet9 step mapped a 1.1 and a 3.5 MB buffer afresh each step
 *    without it, 1,100 page faults; none with it).
 * A freed buffer stores the list link in its first bytes. The lock makes the
 * lists safe from any thread; storages are made and freed with the GIL held
 * anyway. */
#define POOL_STEPS 8 /* classes per power of two */
#define POOL_CLASSES (POOL_STEPS * 65)
#define PEAK_SLACK ((size_t)8 << 20) /* Note [Size-class free list] */

typedef struct pool_block {
    struct pool_block *next;
    size_t bytes; /* the class's size, set when evicted (every class holds two words) */
} pool_block;

static pool_block *pool_lists[POOL_CLASSES];
static size_t pool_bytes, live_bytes, peak_live;
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

/* The size of class c (the inverse of pool_class). */
static size_t class_size(int c)
{
    size_t base = (size_t)1 << (c / POOL_STEPS);
    return base + (size_t)(c % POOL_STEPS) * (base / POOL_STEPS);
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

/* Note [Big buffers from mmap]: CPU buffers of BIG_BYTES and more are
 * mapped here and unmapped when freed (unless the free list keeps them), not
 * taken from malloc. glibc serves a request from its heap when it is below
 * its mmap threshold, and it raises that threshold to the size of every
 * mapped chunk freed (up to 32 MB), so after a training loop's first step
 * its heap holds the 1-10 MB buffers of activations and gradients; freed,
 * their pages stay resident (only the heap's top is trimmed) and the heap
 * grows whenever a size fits none of its holes: the LSTM language model's
 * heap reached 150 MB for 65 MB of live buffers. An unmapped buffer goes
 * back to the kernel at once, so the resident set follows the live buffers
 * and the free list. Mappings of 2 MB and more start 2 MB aligned and ask
 * for transparent huge pages (as cpu_alloc does for 4 MB and more): each
 * whole 2 MB of the buffer is then one page fault instead of 512, and the
 * tail past the last whole 2 MB takes small pages (no rounding up).
 * Off under AddressSanitizer, which must see the buffers (cpu_alloc then
 * serves them). */
#define BIG_BYTES ((size_t)1 << 20)
#define BIG_CLASS (20 * POOL_STEPS) /* pool_class(BIG_BYTES) */
#define HUGE_BYTES ((size_t)2 << 20)
#define HUGE_ALIGN ((size_t)2 << 20)
#ifdef __SANITIZE_ADDRESS__
#define USE_BIG_MAPS 0
#else
#define USE_BIG_MAPS 1
#endif

/* Note [Exact buffers under ASan]
 *   Under AddressSanitizer a CPU buffer is exactly the bytes asked for: no
 *   size class here, no cache-line rounding in cpu_alloc (cpu_backend.c),
 *   so a kernel that reads or writes even one element past an array's end
 *   is reported (a class holds up to 12.5% more, a line up to 63 bytes, and
 *   both hid such overruns from `make asan`). The free list is off there
 *   anyway (Note [Size-class free list]), so no buffer is reused at another
 *   size; the byte counts still use the classes. */

/* A mapping of len bytes (a class of BIG_BYTES or more: a multiple of the
 * page size). */
static void *big_alloc(size_t len)
{
    size_t extra = len >= HUGE_BYTES ? HUGE_ALIGN : 0;
    char *p = mmap(NULL, len + extra, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *start;
    if (p == MAP_FAILED)
        return NULL;
    if (extra == 0)
        return p;
    /* keep the 2 MB aligned len bytes, unmap the rest */
    start = (char *)(((uintptr_t)p + HUGE_ALIGN - 1) & ~(uintptr_t)(HUGE_ALIGN - 1));
    if (start > p)
        munmap(p, (size_t)(start - p));
    if (start + len < p + len + extra)
        munmap(start + len, (size_t)(p + len + extra - (start + len)));
#ifdef MADV_HUGEPAGE
    madvise(start, len, MADV_HUGEPAGE);
#endif
    return start;
}

/* A new CPU buffer of class_bytes for a request of nbytes: mapped when big,
 * else from the backend. Under AddressSanitizer exactly nbytes (Note [Exact
 * buffers under ASan]). */
static void *cpu_new(const ndl_backend *backend, size_t class_bytes, size_t nbytes)
{
#ifdef __SANITIZE_ADDRESS__
    class_bytes = nbytes; /* USE_BIG_MAPS is 0 there too */
#endif
    (void)nbytes;
    if (USE_BIG_MAPS && class_bytes >= BIG_BYTES)
        return big_alloc(class_bytes);
    return backend->alloc(class_bytes);
}

static void cpu_delete(const ndl_backend *backend, void *p, size_t class_bytes)
{
    if (USE_BIG_MAPS && class_bytes >= BIG_BYTES)
        munmap(p, class_bytes);
    else
        backend->free(p);
}

/* The most live + cached bytes may reach: Note [Size-class free list]. */
static size_t pool_ceiling(void) { return peak_live + PEAK_SLACK; }

/* With the lock held: take cached big buffers off the lists, the biggest
 * classes first, until live + cached <= pool_ceiling() again; they are
 * chained on *out for the caller to free without the lock. */
static void pool_evict_locked(pool_block **out)
{
    for (int c = POOL_CLASSES - 1; c >= BIG_CLASS && live_bytes + pool_bytes > pool_ceiling();
         c--) {
        size_t class_bytes = class_size(c);
        while (pool_lists[c] != NULL && live_bytes + pool_bytes > pool_ceiling()) {
            pool_block *b = pool_lists[c];
            pool_lists[c] = b->next;
            pool_bytes -= class_bytes;
            b->bytes = class_bytes;
            b->next = *out;
            *out = b;
        }
    }
}

/* Note [Remapping a cached buffer]: a big class missing from the lists while
 * live + cached is at its ceiling would evict cached buffers and map fresh
 * pages, each zero-filled at its first touch. Instead, one cached big buffer
 * of another class is resized to the class with mremap: its pages, already
 * resident, serve the new buffer, and the rest goes back to the kernel.
 * The donor is the smallest cached class bigger than the request: only
 * shrinking, because a grown mapping would fault its new pages in one by one
 * where a fresh one 2 MB aligned gets huge pages. Malloc's heap does the
 * same by splitting free chunks. */
static int pool_donor_locked(int c)
{
    for (int d = c + 1; d < POOL_CLASSES; d++)
        if (pool_lists[d] != NULL)
            return d;
    return -1;
}

/* A buffer for nbytes from the backend, through the free list on the CPU. */
static void *storage_alloc(const ndl_backend *backend, size_t nbytes)
{
    size_t class_bytes, donor_bytes = 0;
    int c;
    void *p = NULL;
    pool_block *evicted = NULL, *donor = NULL;
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
    if (live_bytes > peak_live)
        peak_live = live_bytes;
    if (p == NULL && USE_BIG_MAPS && class_bytes >= BIG_BYTES &&
        live_bytes + pool_bytes > pool_ceiling()) {
        int d = pool_donor_locked(c); /* Note [Remapping a cached buffer] */
        if (d >= 0) {
            donor = pool_lists[d];
            pool_lists[d] = donor->next;
            donor_bytes = class_size(d);
            pool_bytes -= donor_bytes;
        }
    }
    if (p == NULL)
        pool_evict_locked(&evicted); /* Note [Size-class free list]: the ceiling */
    pthread_mutex_unlock(&pool_lock);
    while (evicted != NULL) {
        pool_block *next = evicted->next;
        cpu_delete(backend, evicted, evicted->bytes);
        evicted = next;
    }
    if (donor != NULL) {
        p = mremap(donor, donor_bytes, class_bytes, MREMAP_MAYMOVE);
        if (p == MAP_FAILED) {
            munmap(donor, donor_bytes);
            p = NULL;
        }
    }
    if (p == NULL && (p = cpu_new(backend, class_bytes, nbytes)) == NULL) {
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
    /* Note [Size-class free list] */
    if (pool_bytes + class_bytes <= pool_limit_bytes() &&
        (class_bytes >= BIG_BYTES ? live_bytes + pool_bytes + class_bytes <= pool_ceiling()
                                  : pool_bytes + class_bytes <= live_bytes / 8)) {
        ((pool_block *)p)->next = pool_lists[c];
        pool_lists[c] = p;
        pool_bytes += class_bytes;
        kept = 1;
    }
    pthread_mutex_unlock(&pool_lock);
    if (!kept)
        cpu_delete(backend, p, class_bytes);
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
