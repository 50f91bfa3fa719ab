/* module.c: needle._cuda, the Python face of the CUDA backend.
 *
 * Exposes the backend table as a capsule ("needle._cuda.backend"), which
 * needle._C's cuda device takes on first use when probe() is None
 * (device.c), plus a few device-wide helpers. Python equivalent:
 *     probe() -> None | str      # None: a GPU is usable; else why not
 *     device_name() -> str; synchronize(); empty_cache()
 *     memory_stats() -> {"allocated": bytes, "cached": bytes}
 *     set_tf32(on) -> bool        # the previous setting (Note [TF32 switch],
 *     tf32() -> bool              #   cuda_matmul.cu); off unless NEEDLE_CUDA_TF32=1
 *     last_error() -> str         # this thread's last CUDA failure (tests)
 * Built a second time as needle._cuda_emu (NDL_CUDA_EMU: the CUDA emulator,
 * emu/cuda_runtime.h), which adds _set_memory(bytes), _set_grid_cap(g),
 * _launch_bounds() and _selftest(...).
 * and two views of the host-side launch logic, which run without a GPU
 * (tests; layouts as (shape, strides, offset) with strides in elements):
 *     _merged_offsets(shape, [(strides, offset), ...]) -> (ndim, [[off, ...], ...])
 *         the layouts merged as ewise/copy merge them (Note [Merged axes]),
 *         and every element's offset through the kernels' ndl_cu_offset
 *     _reduce_plan(shape, strides, axes) -> (path, chunks, len)
 *         "cols", "warps", "blocks" or None (no outputs): Note [Reduction
 *         paths], cuda_reduce.cu
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "backend.h"

extern const ndl_backend ndl_cuda_backend;
const char *ndl_cuda_probe(char *buf, size_t len);
int ndl_cuda_device_name(char *buf, size_t len);
int ndl_cuda_synchronize(void);
const char *ndl_cuda_last_error(void);
void ndl_cuda_empty_cache(void);
void ndl_cuda_memory_stats(size_t *live_b, size_t *cached_b);
int ndl_cuda_set_tf32(int on);
int ndl_cuda_tf32(void);
void ndl_cuda_merged_offsets(int n, ndl_layout *l, int64_t count, int64_t *offsets);
int ndl_cuda_reduce_plan(const ndl_layout *la, uint64_t axes_mask, int64_t *chunks,
                         int64_t *len);

static PyObject *raise_last(void)
{
    PyErr_Format(PyExc_RuntimeError, "%s", ndl_cuda_last_error());
    return NULL;
}

static PyObject *cu_probe(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    char buf[256];
    const char *why;
    Py_BEGIN_ALLOW_THREADS
    why = ndl_cuda_probe(buf, sizeof buf);
    Py_END_ALLOW_THREADS
    if (why == NULL)
        Py_RETURN_NONE;
    return PyUnicode_FromString(why);
}

static PyObject *cu_device_name(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    char buf[300];
    if (ndl_cuda_device_name(buf, sizeof buf) != NDL_OK)
        return raise_last();
    return PyUnicode_FromString(buf);
}

static PyObject *cu_synchronize(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    int st;
    Py_BEGIN_ALLOW_THREADS
    st = ndl_cuda_synchronize();
    Py_END_ALLOW_THREADS
    if (st != NDL_OK)
        return raise_last();
    Py_RETURN_NONE;
}

static PyObject *cu_empty_cache(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    ndl_cuda_empty_cache();
    Py_RETURN_NONE;
}

static PyObject *cu_memory_stats(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    size_t live_b, cached_b;
    ndl_cuda_memory_stats(&live_b, &cached_b);
    return Py_BuildValue("{s:n,s:n}", "allocated", (Py_ssize_t)live_b, "cached",
                         (Py_ssize_t)cached_b);
}

static PyObject *cu_set_tf32(PyObject *self, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
    return PyBool_FromLong(ndl_cuda_set_tf32(on));
}

static PyObject *cu_tf32(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(ndl_cuda_tf32());
}

static PyObject *cu_last_error(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyUnicode_DecodeUTF8(ndl_cuda_last_error(), (Py_ssize_t)strlen(ndl_cuda_last_error()),
                                "replace");
}

/* A tuple of at most NDL_MAX_DIMS ints into v; its length, or -1 with an error. */
static int int_tuple(PyObject *t, int64_t *v, const char *what)
{
    Py_ssize_t n;
    if (!PyTuple_Check(t) || (n = PyTuple_GET_SIZE(t)) > NDL_MAX_DIMS) {
        PyErr_Format(PyExc_TypeError, "%s must be a tuple of at most %d ints", what,
                     NDL_MAX_DIMS);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        v[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(t, i));
        if (v[i] == -1 && PyErr_Occurred())
            return -1;
    }
    return (int)n;
}

/* A layout from a shape tuple, a strides tuple of its length and an offset,
 * the product of its non-zero dimensions at most `most`; 0, or -1 with an
 * error. */
static int parse_layout(PyObject *shape, PyObject *strides, long long offset, int64_t most,
                        ndl_layout *l)
{
    int64_t count = 1;
    int ns;
    l->ndim = int_tuple(shape, l->shape, "shape");
    if (l->ndim < 0 || (ns = int_tuple(strides, l->strides, "strides")) < 0)
        return -1;
    l->offset = offset;
    if (ns != l->ndim) {
        PyErr_SetString(PyExc_ValueError, "shape and strides differ in length");
        return -1;
    }
    for (int d = 0; d < l->ndim; d++) {
        if (l->shape[d] < 0 || (l->shape[d] > 0 && count > most / l->shape[d])) {
            PyErr_Format(PyExc_ValueError, "shape: dimensions >= 0, at most %lld elements",
                         (long long)most);
            return -1;
        }
        count *= l->shape[d] > 0 ? l->shape[d] : 1;
    }
    return 0;
}

static PyObject *cu_merged_offsets(PyObject *self, PyObject *args)
{
    PyObject *shape, *list, *res = NULL, *offs = NULL;
    ndl_layout l[4];
    int64_t count, *buf = NULL;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "OO!", &shape, &PyList_Type, &list))
        return NULL;
    n = PyList_GET_SIZE(list);
    if (n < 1 || n > 4) {
        PyErr_SetString(PyExc_ValueError, "_merged_offsets: 1 to 4 layouts");
        return NULL;
    }
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *strides;
        long long offset;
        if (!PyArg_ParseTuple(PyList_GET_ITEM(list, k), "OL", &strides, &offset) ||
            parse_layout(shape, strides, offset, (int64_t)1 << 20, &l[k]) < 0)
            return NULL;
    }
    count = 1;
    for (int d = 0; d < l[0].ndim; d++)
        count *= l[0].shape[d];
    if ((buf = PyMem_Malloc(sizeof(int64_t) * (size_t)(n * count + 1))) == NULL)
        return PyErr_NoMemory();
    ndl_cuda_merged_offsets((int)n, l, count, buf);
    if ((offs = PyList_New(n)) == NULL)
        goto fail;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *one = PyList_New((Py_ssize_t)count);
        if (one == NULL)
            goto fail;
        PyList_SET_ITEM(offs, k, one);
        for (int64_t i = 0; i < count; i++) {
            PyObject *v = PyLong_FromLongLong(buf[k * count + i]);
            if (v == NULL)
                goto fail;
            PyList_SET_ITEM(one, (Py_ssize_t)i, v);
        }
    }
    res = Py_BuildValue("(iO)", l[0].ndim, offs);
fail:
    Py_XDECREF(offs);
    PyMem_Free(buf);
    return res;
}

static PyObject *cu_reduce_plan(PyObject *self, PyObject *args)
{
    static const char *const names[] = {"cols", "warps", "blocks"};
    PyObject *shape, *strides, *axes;
    ndl_layout l;
    int64_t ax[NDL_MAX_DIMS], chunks = 0, len = 0;
    uint64_t mask = 0;
    int na, path;
    if (!PyArg_ParseTuple(args, "OOO", &shape, &strides, &axes) ||
        parse_layout(shape, strides, 0, (int64_t)1 << 56, &l) < 0 ||
        (na = int_tuple(axes, ax, "axes")) < 0)
        return NULL;
    for (int i = 0; i < na; i++) {
        if (ax[i] < 0 || ax[i] >= l.ndim) {
            PyErr_SetString(PyExc_ValueError, "_reduce_plan: an axis out of range");
            return NULL;
        }
        mask |= (uint64_t)1 << ax[i];
    }
    path = ndl_cuda_reduce_plan(&l, mask, &chunks, &len);
    if (path == -2) {
        PyErr_SetString(PyExc_ValueError, "_reduce_plan: no axis to reduce");
        return NULL;
    }
    if (path < 0)
        return Py_BuildValue("(OLL)", Py_None, 0LL, 0LL);
    return Py_BuildValue("(sLL)", names[path], (long long)chunks, (long long)len);
}

#ifdef NDL_CUDA_EMU
/* needle._cuda_emu only (Note [The CUDA emulator], emu/cuda_runtime.h). */
size_t ndl_cuda_emu_set_memory(size_t cap);
int64_t ndl_cuda_emu_set_grid_cap(int64_t cap);
const char *ndl_cuda_emu_launch_bound_row(int i, long *max_threads);
int ndl_cuda_emu_selftest(const char *name, const unsigned grid[3], const unsigned block[3],
                          const int args[4], double *out, int64_t n);

static PyObject *cu_emu_set_memory(PyObject *self, PyObject *arg)
{
    unsigned long long cap = PyLong_AsUnsignedLongLong(arg);
    if (cap == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromSize_t(ndl_cuda_emu_set_memory((size_t)cap));
}

static PyObject *cu_emu_set_grid_cap(PyObject *self, PyObject *arg)
{
    long long cap = PyLong_AsLongLong(arg);
    if (cap == -1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromLongLong((long long)ndl_cuda_emu_set_grid_cap((int64_t)cap));
}

/* _launch_bounds() -> {kernel: max threads}: the emulator's table. */
static PyObject *cu_emu_launch_bounds(PyObject *self, PyObject *unused)
{
    PyObject *d = PyDict_New(), *v = NULL;
    const char *name;
    long most;
    if (d == NULL)
        return NULL;
    for (int i = 0; (name = ndl_cuda_emu_launch_bound_row(i, &most)) != NULL; i++) {
        if ((v = PyLong_FromLong(most)) == NULL || PyDict_SetItemString(d, name, v) < 0)
            goto fail;
        Py_CLEAR(v);
    }
    return d;
fail:
    Py_XDECREF(v);
    Py_DECREF(d);
    return NULL;
}

/* _selftest(name, grid, block, args) -> [float]: one of emu_selftest.cc's
 * kernels, its output (one float per thread of the grid, at most 2^20). */
static PyObject *cu_emu_selftest(PyObject *self, PyObject *args)
{
    const char *name;
    unsigned g[3], b[3];
    int a[4] = {0, 0, 0, 0};
    PyObject *res = NULL;
    double *out = NULL;
    int64_t n;
    int st;
    if (!PyArg_ParseTuple(args, "s(III)(III)|(iiii)", &name, &g[0], &g[1], &g[2], &b[0], &b[1],
                          &b[2], &a[0], &a[1], &a[2], &a[3]))
        return NULL;
    /* in double: six factors up to 2^32 overflow int64 */
    const double threads = (double)g[0] * g[1] * g[2] * b[0] * b[1] * b[2];
    /* more than 2^20: the launch must refuse it (else _selftest raises) */
    n = threads <= (double)(1 << 20) ? (int64_t)threads : 1;
    if ((out = PyMem_Calloc((size_t)n + 1, sizeof(double))) == NULL)
        return PyErr_NoMemory();
    Py_BEGIN_ALLOW_THREADS
    st = ndl_cuda_emu_selftest(name, g, b, a, out, n);
    Py_END_ALLOW_THREADS
    if (st != NDL_OK) {
        raise_last();
        goto fail;
    }
    if ((res = PyList_New((Py_ssize_t)n)) == NULL)
        goto fail;
    for (int64_t i = 0; i < n; i++) {
        PyObject *v = PyFloat_FromDouble(out[i]);
        if (v == NULL) {
            Py_CLEAR(res);
            goto fail;
        }
        PyList_SET_ITEM(res, (Py_ssize_t)i, v);
    }
fail:
    PyMem_Free(out);
    return res;
}
#endif

static PyMethodDef methods[] = {
    {"probe", cu_probe, METH_NOARGS, "None when a CUDA GPU is usable, else the reason (str)."},
    {"device_name", cu_device_name, METH_NOARGS, "Name of GPU 0."},
    {"synchronize", cu_synchronize, METH_NOARGS, "Wait for every queued kernel."},
    {"empty_cache", cu_empty_cache, METH_NOARGS, "Free the allocator's cached blocks."},
    {"memory_stats", cu_memory_stats, METH_NOARGS, "Bytes held by arrays and in the cache."},
    {"set_tf32", cu_set_tf32, METH_O,
     "set_tf32(on) -> previous setting. float32 matmul on the tensor cores with TF32 inputs "
     "(sm_80+; ~1e-3 relative error). Off by default; NEEDLE_CUDA_TF32=1 turns it on."},
    {"tf32", cu_tf32, METH_NOARGS, "Whether float32 matmul uses TF32 tensor cores."},
    {"last_error", cu_last_error, METH_NOARGS,
     "This thread's last CUDA failure message ('' when none; for tests)."},
    {"_merged_offsets", cu_merged_offsets, METH_VARARGS,
     "_merged_offsets(shape, [(strides, offset), ...]) -> (ndim, offsets): the layouts "
     "merged as ewise/copy merge them, every element's offset (host only; for tests)."},
    {"_reduce_plan", cu_reduce_plan, METH_VARARGS,
     "_reduce_plan(shape, strides, axes) -> (path, chunks, len): the reduction's path "
     "(host only; for tests)."},
#ifdef NDL_CUDA_EMU
    {"_set_memory", cu_emu_set_memory, METH_O,
     "_set_memory(bytes) -> previous: the emulated device's capacity (NDL_CUDA_EMU_MEM)."},
    {"_launch_bounds", cu_emu_launch_bounds, METH_NOARGS,
     "_launch_bounds() -> {kernel: threads}: each kernel's __launch_bounds__, which the "
     "emulator's launches are checked against (csrc/cuda/emu/emu_bounds.cc)."},
    {"_set_grid_cap", cu_emu_set_grid_cap, METH_O,
     "_set_grid_cap(g) -> previous: every capped grid dimension at most g, 0 for the GPU's "
     "caps (NDL_CUDA_EMU_GRID; Note [Grid caps], cuda_common.cuh)."},
    {"_selftest", cu_emu_selftest, METH_VARARGS,
     "_selftest(name, grid, block, args=(0, 0, 0, 0)) -> [float]: run one of the "
     "emulator's own test kernels (tests/test_cuda_emu.py)."},
#endif
    {NULL, NULL, 0, NULL},
};

#ifdef NDL_CUDA_EMU
static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "needle._cuda_emu",
    "needle's CUDA backend (csrc/cuda) run on the CPU by the CUDA emulator, a test harness "
    "(csrc/cuda/emu).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__cuda_emu(void)
#else
static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "needle._cuda", "needle's CUDA backend (csrc/cuda).", -1, methods,
};

PyMODINIT_FUNC PyInit__cuda(void)
#endif
{
    PyObject *m = PyModule_Create(&module), *cap;
    if (m == NULL)
        return NULL;
    cap = PyCapsule_New((void *)&ndl_cuda_backend, "needle._cuda.backend", NULL);
    if (cap == NULL || PyModule_AddObject(m, "backend", cap) < 0) {
        Py_XDECREF(cap);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
