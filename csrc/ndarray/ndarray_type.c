/* ndarray_type.c: NDArray's Python face: __new__, make, the view and copy
 * methods, the properties, str/repr, and the slots that make NDArray_Type a
 * Python type. ndarray.c defines NDArray_Type and the C API these wrap;
 * ndl_ndarray_init attaches what is here to it before PyType_Ready.
 *
 * Python equivalent (API.md 2.2-2.6, 2.12):
 *     class NDArray:
 *         _handle: Array; _device: BackendDevice; _shape, _strides: tuple; _offset: int
 *         def __init__(self, other, device=None, dtype=None): copy `other` onto device
 *         @staticmethod
 *         def make(shape, strides=None, device=None, handle=None, offset=0): ...
 *         def reshape(self, shape) / permute(axes) / broadcast_to(shape): O(1) views
 *         def compact(self): self if compact else a compact copy
 * The method table also lists methods defined elsewhere (ndarray_impl.h):
 * indexing in ndarray_index.c, arithmetic and reductions in ndarray_ops.c,
 * NumPy interop in ndarray_numpy.c, DLPack and pickling in ndarray_dlpack.c. The top of Note [One-way order]
 * (ndarray.h): nothing in csrc/ndarray calls into this file.
 */
#include "ndarray_impl.h"

/* ---- construction ------------------------------------------------------- */

static PyObject *NDArray_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"other", "device", "dtype", NULL};
    PyObject *other, *dev_obj = Py_None, *dtype_obj = Py_None;
    DeviceObject *dev;
    NDArrayObject *tmp = NULL, *self = NULL;
    ndl_dtype dt;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|OO:NDArray", kwlist, &other, &dev_obj,
                                     &dtype_obj))
        return NULL;
    if (ndl_parse_dtype(dtype_obj, &dt) < 0)
        return NULL;
    if (NDArray_Check(other)) {
        NDArrayObject *o = (NDArrayObject *)other;
        dev = dev_obj == Py_None ? o->device : ndl_device_resolve(dev_obj);
        if (dev == NULL || ndl_device_check_enabled(dev) < 0)
            return NULL;
        if (dtype_obj == Py_None)
            dt = o->dtype;
        if (dev->backend == o->device->backend) {
            tmp = ndl_array_copy(o, dt);
            if (tmp != NULL && dev != tmp->device)
                Py_SETREF(tmp->device, (DeviceObject *)Py_NewRef(dev));
        } else {
            PyObject *host = ndl_array_to_numpy(o);
            if (host == NULL)
                return NULL;
            tmp = ndl_array_from_object(host, dev, dt);
            Py_DECREF(host);
        }
    } else {
        dev = ndl_device_resolve(dev_obj);
        if (dev == NULL)
            return NULL;
        tmp = ndl_array_from_object(other, dev, dt);
    }
    if (tmp == NULL)
        return NULL;
    if (type == &NDArray_Type)
        return (PyObject *)tmp;
    /* A subclass: its own instance, with tmp's fields. */
    self = (NDArrayObject *)type->tp_alloc(type, 0);
    if (self != NULL) {
        self->storage = (StorageObject *)Py_NewRef(tmp->storage);
        self->device = (DeviceObject *)Py_NewRef(tmp->device);
        self->dtype = tmp->dtype;
        self->layout = tmp->layout;
    }
    Py_DECREF(tmp);
    return (PyObject *)self;
}

/* ---- methods ------------------------------------------------------------ */

/* NDArray.make(shape, strides=None, device=None, handle=None, offset=0, dtype=None) */
static PyObject *NDArray_make(PyObject *Py_UNUSED(cls), PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"shape", "strides", "device", "handle", "offset", "dtype", NULL};
    PyObject *shape_obj, *strides_obj = Py_None, *dev_obj = Py_None, *handle_obj = Py_None;
    PyObject *dtype_obj = Py_None;
    long long offset = 0;
    ndl_layout l;
    DeviceObject *dev;
    StorageObject *st;
    ndl_dtype dt;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|OOOLO:make", kwlist, &shape_obj, &strides_obj,
                                     &dev_obj, &handle_obj, &offset, &dtype_obj))
        return NULL;
    if (ndl_parse_layout(shape_obj, strides_obj, offset, &l, "make") < 0)
        return NULL;
    if (handle_obj == Py_None) {
        NDArrayObject *res;
        PyObject *view;
        if (ndl_parse_dtype(dtype_obj, &dt) < 0 || (dev = ndl_device_resolve(dev_obj)) == NULL)
            return NULL;
        res = ndl_array_empty(dev, dt, l.ndim, l.shape);
        if (res == NULL)
            return NULL;
        /* A fresh buffer of prod(shape) elements seen through the given layout. */
        view = (PyObject *)ndl_array_over(res->storage, dev, &l, "make");
        Py_DECREF(res);
        return view;
    }
    if (!Storage_Check(handle_obj)) {
        PyErr_Format(PyExc_TypeError, "make: handle must be a device Array, got %R", handle_obj);
        return NULL;
    }
    st = (StorageObject *)handle_obj;
    if (dev_obj == Py_None)
        dev = st->backend == &ndl_cpu_backend ? ndl_device_cpu() : NULL;
    else
        dev = ndl_device_resolve(dev_obj);
    if (dev == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "make: cannot tell the handle's device");
        return NULL;
    }
    if (dev->backend != st->backend) {
        PyErr_Format(PyExc_RuntimeError, "make: handle lives on %s, not on %R", st->backend->name,
                     (PyObject *)dev);
        return NULL;
    }
    /* The view must stay inside the buffer, or a kernel would read past it. */
    return (PyObject *)ndl_array_over(st, dev, &l, "make");
}

static PyObject *NDArray_compact_strides(PyObject *Py_UNUSED(cls), PyObject *shape_obj)
{
    int64_t shape[NDL_MAX_DIMS], strides[NDL_MAX_DIMS];
    int ndim;
    if (ndl_parse_shape(shape_obj, &ndim, shape, "shape") < 0 ||
        ndl_check_nonnegative(ndim, shape, "shape") < 0)
        return NULL;
    ndl_compact_strides(ndim, shape, strides);
    return ndl_shape_tuple(ndim, strides);
}

static PyObject *NDArray_init_from(NDArrayObject *self, PyObject *other)
{
    NDArrayObject *o;
    if (!NDArray_Check(other)) {
        PyErr_Format(PyExc_TypeError, "_init expects an NDArray, got %R", other);
        return NULL;
    }
    o = (NDArrayObject *)other;
    Py_SETREF(self->storage, (StorageObject *)Py_NewRef(o->storage));
    Py_SETREF(self->device, (DeviceObject *)Py_NewRef(o->device));
    self->dtype = o->dtype;
    self->layout = o->layout;
    Py_RETURN_NONE;
}

static PyObject *NDArray_is_compact(NDArrayObject *self, PyObject *Py_UNUSED(unused))
{
    return PyBool_FromLong(ndl_array_is_compact(self));
}

static PyObject *NDArray_compact(NDArrayObject *self, PyObject *Py_UNUSED(unused))
{
    return (PyObject *)ndl_array_compact(self);
}

/* A shape given as f(shape_tuple) or as f(*shape). */
static int parse_shape_args(PyObject *args, int *ndim, int64_t *shape, const char *what)
{
    PyObject *s = PyTuple_GET_SIZE(args) == 1 ? PyTuple_GET_ITEM(args, 0) : args;
    return ndl_parse_shape(s, ndim, shape, what);
}

static PyObject *NDArray_reshape(NDArrayObject *self, PyObject *args)
{
    int64_t shape[NDL_MAX_DIMS];
    int ndim;
    if (parse_shape_args(args, &ndim, shape, "reshape: new_shape") < 0)
        return NULL;
    return (PyObject *)ndl_array_reshape(self, ndim, shape);
}

static PyObject *NDArray_broadcast_to(NDArrayObject *self, PyObject *args)
{
    int64_t shape[NDL_MAX_DIMS];
    int ndim;
    if (parse_shape_args(args, &ndim, shape, "broadcast_to: new_shape") < 0)
        return NULL;
    return (PyObject *)ndl_array_broadcast_to(self, ndim, shape);
}

static PyObject *NDArray_permute(NDArrayObject *self, PyObject *args)
{
    int64_t axes[NDL_MAX_DIMS];
    int naxes, rc, ax[NDL_MAX_DIMS], seen[NDL_MAX_DIMS] = {0};
    int ndim = self->layout.ndim;
    PyObject *s = Py_NewRef(PyTuple_GET_SIZE(args) == 1 ? PyTuple_GET_ITEM(args, 0) : args);
    rc = ndl_parse_shape(s, &naxes, axes, "permute: new_axes");
    if (rc < 0)
        goto fail;
    if (naxes != ndim)
        goto bad;
    for (int i = 0; i < ndim; i++) {
        int64_t a;
        if (axes[i] < -ndim || axes[i] >= ndim)
            goto bad;
        a = axes[i] < 0 ? axes[i] + ndim : axes[i];
        if (seen[a]++)
            goto bad;
        ax[i] = (int)a;
    }
    Py_DECREF(s);
    return (PyObject *)ndl_array_permute(self, ax);
bad : {
    PyObject *o = ndl_shape_tuple(ndim, self->layout.shape);
    if (o)
        PyErr_Format(PyExc_ValueError, "permute: %R is not a permutation of the axes of shape %R",
                     s, o);
    Py_XDECREF(o);
}
fail:
    Py_DECREF(s);
    return NULL;
}

static PyObject *NDArray_as_strided(NDArrayObject *self, PyObject *args)
{
    PyObject *shape_obj, *strides_obj;
    ndl_layout l;
    if (!PyArg_ParseTuple(args, "OO:as_strided", &shape_obj, &strides_obj) ||
        ndl_parse_layout(shape_obj, strides_obj, self->layout.offset, &l, "as_strided") < 0)
        return NULL;
    return (PyObject *)ndl_array_over(self->storage, self->device, &l, "as_strided");
}

static PyObject *NDArray_fill(NDArrayObject *self, PyObject *value)
{
    double v;
    ndl_layout whole;
    int rc = ndl_as_double(value, &v);
    if (rc <= 0) {
        if (rc == 0)
            PyErr_Format(PyExc_TypeError, "fill: expected a number, got %R", value);
        return NULL;
    }
    /* API.md 2.12: fill writes the whole underlying buffer. */
    whole.ndim = 1;
    whole.shape[0] = self->storage->size;
    whole.strides[0] = 1;
    whole.offset = 0;
    if (ndl_raise_status(self->device->backend->fill(self->dtype, self->storage->data, &whole, v),
                         "fill") < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *NDArray_to(NDArrayObject *self, PyObject *dev_obj)
{
    DeviceObject *dev = ndl_device_resolve(dev_obj);
    PyObject *args, *res;
    if (dev == NULL)
        return NULL;
    if (PyUnicode_Compare(dev->name, self->device->name) == 0)
        return Py_NewRef(self);
    args = Py_BuildValue("(OO)", (PyObject *)self, (PyObject *)dev);
    if (args == NULL)
        return NULL;
    res = NDArray_new(&NDArray_Type, args, NULL);
    Py_DECREF(args);
    return res;
}

static PyObject *NDArray_str(NDArrayObject *self)
{
    PyObject *np = NDArray_numpy(self, NULL), *s;
    if (np == NULL)
        return NULL;
    s = PyObject_Str(np);
    Py_DECREF(np);
    return s;
}

static PyObject *NDArray_repr(NDArrayObject *self)
{
    PyObject *s = ndl_repr_via_hook((PyObject *)self, "repr"), *r;
    if (s == NULL || PyUnicode_Check(s))
        return s; /* the hook's text (needle.set_printoptions) */
    Py_SETREF(s, NDArray_str(self));
    if (s == NULL)
        return NULL;
    r = PyUnicode_FromFormat("NDArray(%U, device=%R)", s, (PyObject *)self->device);
    Py_DECREF(s);
    return r;
}

/* ---- properties --------------------------------------------------------- */

static PyObject *get_shape(NDArrayObject *self, void *c)
{
    return ndl_shape_tuple(self->layout.ndim, self->layout.shape);
}
static PyObject *get_strides(NDArrayObject *self, void *c)
{
    return ndl_shape_tuple(self->layout.ndim, self->layout.strides);
}
static PyObject *get_offset(NDArrayObject *self, void *c)
{
    return PyLong_FromLongLong(self->layout.offset);
}
static PyObject *get_device(NDArrayObject *self, void *c) { return Py_NewRef(self->device); }
static PyObject *get_handle(NDArrayObject *self, void *c) { return Py_NewRef(self->storage); }
static PyObject *get_dtype(NDArrayObject *self, void *c)
{
    return PyUnicode_FromString(ndl_dtype_name(self->dtype));
}
static PyObject *get_ndim(NDArrayObject *self, void *c)
{
    return PyLong_FromLong(self->layout.ndim);
}
static PyObject *get_size(NDArrayObject *self, void *c)
{
    return PyLong_FromLongLong(ndl_array_size(self));
}
static PyObject *get_flat(NDArrayObject *self, void *c)
{
    int64_t n = ndl_array_size(self);
    return (PyObject *)ndl_array_reshape(self, 1, &n);
}

static PyGetSetDef NDArray_getset[] = {
    {"shape", (getter)get_shape, NULL, "Tuple of dimensions.", NULL},
    {"_shape", (getter)get_shape, NULL, NULL, NULL},
    {"strides", (getter)get_strides, NULL, "Tuple of strides, in elements.", NULL},
    {"_strides", (getter)get_strides, NULL, NULL, NULL},
    {"offset", (getter)get_offset, NULL, "Offset of the first element, in elements.", NULL},
    {"_offset", (getter)get_offset, NULL, NULL, NULL},
    {"device", (getter)get_device, NULL, "The BackendDevice holding the data.", NULL},
    {"_device", (getter)get_device, NULL, NULL, NULL},
    {"_handle", (getter)get_handle, NULL, "The underlying device Array.", NULL},
    {"dtype", (getter)get_dtype, NULL, "'float32' or 'float64'.", NULL},
    {"ndim", (getter)get_ndim, NULL, "Number of dimensions.", NULL},
    {"size", (getter)get_size, NULL, "Number of elements.", NULL},
    {"flat", (getter)get_flat, NULL, "1-D view (requires a compact array).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

#define METH_KW(f) (PyCFunction)(void (*)(void))(f), METH_VARARGS | METH_KEYWORDS

static PyMethodDef NDArray_methods[] = {
    {"_repr_html_", ndl_py_repr_html, METH_NOARGS, "An HTML summary and table (notebooks)."},
    {"make", METH_KW(NDArray_make) | METH_STATIC,
     "make(shape, strides=None, device=None, handle=None, offset=0): an array over a handle."},
    {"compact_strides", (PyCFunction)NDArray_compact_strides, METH_O | METH_STATIC,
     "Row-major strides, in elements, of a shape."},
    {"_init", (PyCFunction)NDArray_init_from, METH_O, "Copy the fields of another NDArray."},
    {"is_compact", (PyCFunction)NDArray_is_compact, METH_NOARGS,
     "True if the view is row-major and covers its whole buffer."},
    {"compact", (PyCFunction)NDArray_compact, METH_NOARGS, "self if compact, else a compact copy."},
    {"reshape", (PyCFunction)NDArray_reshape, METH_VARARGS,
     "A view with a new shape (compact only)."},
    {"permute", (PyCFunction)NDArray_permute, METH_VARARGS, "A view with axes reordered."},
    {"broadcast_to", (PyCFunction)NDArray_broadcast_to, METH_VARARGS,
     "A view repeating size-1 (and prepended) dims with stride 0."},
    {"as_strided", (PyCFunction)NDArray_as_strided, METH_VARARGS,
     "as_strided(shape, strides): a view of the same buffer and offset."},
    {"process_slice", (PyCFunction)NDArray_process_slice, METH_VARARGS,
     "process_slice(sl, dim): a slice with int start, stop, step for dimension dim."},
    {"fill", (PyCFunction)NDArray_fill, METH_O, "Write value into the whole underlying buffer."},
    {"to", (PyCFunction)NDArray_to, METH_O, "self on the same device, else a copy on device."},
    {"numpy", (PyCFunction)NDArray_numpy, METH_NOARGS, "A NumPy copy of the contents."},
    {"__array__", METH_KW(NDArray_array), "NumPy conversion (a copy)."},
    {"astype", (PyCFunction)NDArray_astype, METH_VARARGS, "numpy().astype(dtype): a NumPy array."},
    /* the elementwise and reduction methods come from the op rows (ndarray_ops.c) */
    {"flip", (PyCFunction)NDArray_flip, METH_VARARGS, "flip(axes): a compact reversed copy."},
    {"pad", (PyCFunction)NDArray_pad, METH_VARARGS, "pad(axes): zero padding, one pair per dim."},
    /* DLPack and pickling (ndarray_dlpack.c) */
    {"__dlpack__", METH_KW(NDArray_dlpack),
     "__dlpack__(*, stream=None, max_version=None, dl_device=None, copy=None): a DLPack "
     "capsule over this array's memory."},
    {"__dlpack_device__", (PyCFunction)NDArray_dlpack_device, METH_NOARGS,
     "(device type, device id) as DLPack numbers them: (1, 0) for the CPU."},
    {"_from_dlpack_capsule", (PyCFunction)NDArray_from_dlpack_capsule, METH_O | METH_STATIC,
     "An NDArray over the memory of a DLPack capsule (needle.from_dlpack negotiates)."},
    {"__reduce__", (PyCFunction)NDArray_reduce, METH_NOARGS,
     "Pickling and deepcopy: a compact copy with the same device and dtype."},
    {NULL, NULL, 0, NULL},
};

static PyMappingMethods NDArray_as_mapping = {
    .mp_subscript = (binaryfunc)NDArray_subscript,
    .mp_ass_subscript = (objobjargproc)NDArray_ass_subscript,
};

/* ---- init --------------------------------------------------------------- */

int ndl_ndarray_init(void)
{
    static const ndl_device_factories factories = {
        .empty = ndl_array_empty,
        .full = ndl_array_full,
        .from_object = ndl_array_from_object,
    };
    PyTypeObject *t = &NDArray_Type;
    if (ndl_numpy_import() < 0)
        return -1;
    ndl_device_set_factories(&factories);
    t->tp_doc = "NDArray(other, device=None, dtype=None): a strided n-d array on a device.\n\n"
                ">>> a = NDArray(np.arange(6).reshape(2, 3))\n"
                ">>> (a.permute((1, 0)) + 1).shape\n"
                "(3, 2)";
    t->tp_new = NDArray_new;
    t->tp_repr = (reprfunc)NDArray_repr;
    t->tp_str = (reprfunc)NDArray_str;
    t->tp_hash = PyObject_HashNotImplemented;
    t->tp_richcompare = NDArray_richcompare;
    t->tp_as_number = &ndl_ndarray_as_number;
    t->tp_as_mapping = &NDArray_as_mapping;
    t->tp_as_buffer = &ndl_ndarray_as_buffer;
    t->tp_methods = NDArray_methods;
    t->tp_getset = NDArray_getset;
    return 0;
}
