/* ndarray_numpy.c: NumPy interop, the only file that uses NumPy's C API.
 *
 * Python equivalent (API.md 2.2, 2.8, 2.12):
 *     NDArray(np_array)            # cast to float32 (or the asked dtype), copied
 *     a.numpy()                    # a copy with the logical contents
 *     np.asarray(a)                # zero-copy: the buffer protocol (host arrays)
 *     a.__array__(dtype=None, copy=None), a.astype(dtype)
 * NDArray's buffer is a window of its storage's, filled by storage.c
 * (ndl_storage_export_view), which also exports a host storage as a flat
 * buffer for the NumPy kernel module (ndarray_backend_numpy.py). Above the
 * array C API, below NDArray's Python type (Note [One-way order], ndarray.h).
 */
#define PY_ARRAY_UNIQUE_SYMBOL NDL_ARRAY_API
#include "ndarray_impl.h"
#include <numpy/arrayobject.h>

/* Called once, by ndl_ndarray_init, before anything here runs. */
int ndl_numpy_import(void)
{
    import_array1(-1);
    return 0;
}

static int npy_type(ndl_dtype dt) { return dt == NDL_FLOAT64 ? NPY_FLOAT64 : NPY_FLOAT32; }

NDArrayObject *ndl_array_from_object(PyObject *obj, DeviceObject *dev, ndl_dtype dt)
{
    PyArrayObject *arr = NULL;
    NDArrayObject *res = NULL;
    int64_t shape[NDL_MAX_DIMS];
    int ndim, status;
    if (ndl_device_check_enabled(dev) < 0)
        return NULL;
    /* Any numeric, bool or object-of-numbers input, any layout, cast to dt. */
    arr = (PyArrayObject *)PyArray_FROM_OTF(obj, npy_type(dt),
                                            NPY_ARRAY_C_CONTIGUOUS | NPY_ARRAY_ALIGNED |
                                                NPY_ARRAY_FORCECAST);
    if (arr == NULL)
        return NULL;
    ndim = PyArray_NDIM(arr);
    if (ndim > NDL_MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "NDArray supports at most %d dimensions, got %d",
                     NDL_MAX_DIMS, ndim);
        goto fail;
    }
    for (int i = 0; i < ndim; i++)
        shape[i] = PyArray_DIM(arr, i);
    res = ndl_array_empty(dev, dt, ndim, shape);
    if (res == NULL)
        goto fail;
    NDL_KERNEL_CALL(ndl_array_size(res), status,
                    dev->backend->from_host(res->storage->data, PyArray_DATA(arr),
                                            (size_t)PyArray_NBYTES(arr)));
    if (ndl_raise_status(status, "from_numpy") < 0)
        Py_CLEAR(res);
fail:
    Py_XDECREF(arr);
    return res;
}

PyObject *ndl_array_to_numpy(NDArrayObject *a)
{
    npy_intp dims[NDL_MAX_DIMS];
    const ndl_layout *l = &a->layout;
    const ndl_backend *be = a->device->backend;
    ndl_layout dst;
    PyObject *res;
    NDArrayObject *c = NULL;
    int status;
    for (int i = 0; i < l->ndim; i++)
        dims[i] = (npy_intp)l->shape[i];
    res = PyArray_SimpleNew(l->ndim, dims, npy_type(a->dtype));
    if (res == NULL)
        return NULL;
    if (be->host_accessible) {
        dst = *l;
        dst.offset = 0;
        ndl_compact_strides(dst.ndim, dst.shape, dst.strides);
        NDL_KERNEL_CALL(ndl_array_size(a), status,
                        be->copy(a->dtype, PyArray_DATA((PyArrayObject *)res), &dst, a->dtype,
                                 a->storage->data, l));
    } else {
        c = ndl_array_compact(a);
        if (c == NULL) {
            Py_DECREF(res);
            return NULL;
        }
        status = be->to_host(PyArray_DATA((PyArrayObject *)res),
                             (char *)c->storage->data + c->layout.offset * ndl_itemsize(c->dtype),
                             (size_t)PyArray_NBYTES((PyArrayObject *)res));
        Py_DECREF(c);
    }
    if (ndl_raise_status(status, "numpy") < 0)
        Py_CLEAR(res);
    return res;
}

PyObject *NDArray_numpy(NDArrayObject *self, PyObject *unused) { return ndl_array_to_numpy(self); }

/* __array__(dtype=None, copy=None): always a fresh copy, cast if asked. */
PyObject *NDArray_array(NDArrayObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"dtype", "copy", NULL};
    PyObject *dtype = Py_None, *copy = Py_None, *res, *cast;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|OO:__array__", kwlist, &dtype, &copy))
        return NULL;
    if (copy == Py_False) {
        PyErr_SetString(PyExc_ValueError,
                        "NDArray.__array__: a copy is always made; use np.asarray for a view");
        return NULL;
    }
    res = ndl_array_to_numpy(self);
    if (res == NULL || dtype == Py_None)
        return res;
    cast = PyObject_CallMethod(res, "astype", "O", dtype);
    Py_DECREF(res);
    return cast;
}

PyObject *NDArray_astype(NDArrayObject *self, PyObject *args)
{
    PyObject *dtype, *res, *cast;
    if (!PyArg_ParseTuple(args, "O:astype", &dtype))
        return NULL;
    res = ndl_array_to_numpy(self);
    if (res == NULL)
        return NULL;
    cast = PyObject_CallMethod(res, "astype", "O", dtype);
    Py_DECREF(res);
    return cast;
}

/* ---- buffer protocol ---------------------------------------------------- */

static int ndarray_getbuffer(NDArrayObject *self, Py_buffer *view, int flags)
{
    const ndl_layout *l = &self->layout;
    if (!self->device->backend->host_accessible) {
        PyErr_Format(PyExc_BufferError, "an NDArray on %R has no host buffer: call numpy()",
                     (PyObject *)self->device);
        return -1;
    }
    return ndl_storage_export_view(self->storage, (PyObject *)self, l, view, flags);
}

PyBufferProcs ndl_ndarray_as_buffer = {
    .bf_getbuffer = (getbufferproc)ndarray_getbuffer,
    .bf_releasebuffer = (releasebufferproc)ndl_storage_release_view,
};
