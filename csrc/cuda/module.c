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
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "needle._cuda", "needle's CUDA backend (csrc/cuda).", -1, methods,
};

PyMODINIT_FUNC PyInit__cuda(void)
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
