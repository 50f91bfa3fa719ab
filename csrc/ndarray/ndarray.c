/* ndarray.c: the NDArray type: a strided view of one Storage.
 *
 * Python equivalent (API.md 2.2-2.6, 2.12):
 *     class NDArray:
 *         _handle: Array; _device: BackendDevice; _shape, _strides: tuple; _offset: int
 *         def __init__(self, other, device=None, dtype=None): copy `other` onto device
 *         @staticmethod
 *         def make(shape, strides=None, device=None, handle=None, offset=0): ...
 *         def reshape(self, shape) / permute(axes) / broadcast_to(shape): O(1) views
 *         def compact(self): self if compact else a compact copy
 * Indexing lives in ndarray_index.c, arithmetic in ndarray_ops.c, NumPy
 * interop in ndarray_numpy.c. Views share storage (Note [Views share
 * storage], ndarray.h).
 */
#include <string.h>

#include "ndarray_impl.h"

PyObject *ndl_SliceError;

/* ---- small helpers ------------------------------------------------------ */

const char *ndl_dtype_name(ndl_dtype dt) { return dt == NDL_FLOAT64 ? "float64" : "float32"; }

int ndl_raise_status(int status, const char *what)
{
    if (status == NDL_OK)
        return 0;
    if (status == NDL_ENOMEM)
        PyErr_Format(PyExc_MemoryError, "%s: out of memory", what);
    else
        PyErr_Format(PyExc_RuntimeError, "%s: kernel failed (status %d)", what, status);
    return -1;
}

int ndl_as_double(PyObject *obj, double *out)
{
    PyObject *size, *item;
    int one;
    if (PyFloat_Check(obj)) {
        *out = PyFloat_AS_DOUBLE(obj);
        return 1;
    }
    if (obj == Py_None)
        return 0;
    *out = PyFloat_AsDouble(obj);
    if (!(*out == -1.0 && PyErr_Occurred()))
        return 1;
    if (!PyErr_ExceptionMatches(PyExc_TypeError))
        return -1;
    PyErr_Clear();
    /* NOTE: NumPy 2 refuses float() of a size-1 array with ndim > 0, which
     * course code passes as a scalar (API.md 2.8): take its one element. */
    size = PyObject_GetAttrString(obj, "size");
    if (size == NULL) {
        PyErr_Clear();
        return 0;
    }
    /* NOTE: AndOverflow: a huge size must not leave an OverflowError set. */
    {
        int overflow = 0;
        one = PyLong_Check(size) && PyLong_AsLongAndOverflow(size, &overflow) == 1 && !overflow;
    }
    Py_DECREF(size);
    if (!one || !PyObject_HasAttrString(obj, "item") || NDArray_Check(obj))
        return 0;
    item = PyObject_CallMethod(obj, "item", NULL);
    if (item == NULL)
        return -1;
    *out = PyFloat_AsDouble(item);
    Py_DECREF(item);
    if (*out == -1.0 && PyErr_Occurred()) {
        if (!PyErr_ExceptionMatches(PyExc_TypeError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    return 1;
}

int ndl_parse_dtype(PyObject *obj, ndl_dtype *out)
{
    PyObject *name = NULL;
    const char *s;
    int rc = -1;
    if (obj == NULL || obj == Py_None) {
        *out = NDL_FLOAT32;
        return 0;
    }
    if (PyUnicode_Check(obj))
        name = Py_NewRef(obj);
    else if (PyType_Check(obj))
        name = PyObject_GetAttrString(obj, "__name__"); /* np.float32 */
    else
        name = PyObject_GetAttrString(obj, "name"); /* np.dtype('float32') */
    if (name == NULL || !PyUnicode_Check(name)) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "unsupported dtype %R: use 'float32' or 'float64'", obj);
        goto done;
    }
    s = PyUnicode_AsUTF8(name);
    if (s == NULL)
        goto done;
    /* NOTE: "bool" is stored as float32 0/1 (API.md 2.14). */
    if (strcmp(s, "float32") == 0 || strcmp(s, "bool") == 0 || strcmp(s, "bool_") == 0) {
        *out = NDL_FLOAT32;
        rc = 0;
    } else if (strcmp(s, "float64") == 0) {
        *out = NDL_FLOAT64;
        rc = 0;
    } else {
        PyErr_Format(PyExc_TypeError, "unsupported dtype %R: use 'float32' or 'float64'", obj);
    }
done:
    Py_XDECREF(name);
    return rc;
}

int ndl_parse_shape(PyObject *obj, int *ndim, int64_t *shape, const char *what)
{
    PyObject *seq = NULL;
    Py_ssize_t n;
    if (PyLong_Check(obj) || PyIndex_Check(obj)) {
        if (PyLong_Check(obj) || !PySequence_Check(obj)) {
            Py_ssize_t v = PyNumber_AsSsize_t(obj, PyExc_OverflowError);
            if (v == -1 && PyErr_Occurred())
                return -1;
            *ndim = 1;
            shape[0] = v;
            return 0;
        }
    }
    seq = PySequence_Fast(obj, "");
    if (seq == NULL) {
        PyErr_Format(PyExc_TypeError, "%s must be a tuple of ints, got %R", what, obj);
        return -1;
    }
    n = PySequence_Fast_GET_SIZE(seq);
    if (n > NDL_MAX_DIMS) {
        PyErr_Format(PyExc_ValueError, "%s has %zd dimensions; at most %d are supported", what, n,
                     NDL_MAX_DIMS);
        goto fail;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, i);
        Py_ssize_t v;
        if (!PyIndex_Check(item)) {
            PyErr_Format(PyExc_TypeError, "%s must contain ints, got %R", what, obj);
            goto fail;
        }
        v = PyNumber_AsSsize_t(item, PyExc_OverflowError);
        if (v == -1 && PyErr_Occurred())
            goto fail;
        shape[i] = v;
    }
    *ndim = (int)n;
    Py_DECREF(seq);
    return 0;
fail:
    Py_DECREF(seq);
    return -1;
}

/* -1 with ValueError if a dimension is negative or the element count does
 * not fit in 63 bits. */
static int check_nonnegative(int ndim, const int64_t *shape, const char *what)
{
    int64_t n = 1;
    int bad = 0, zero = 0;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            bad = 1;
        else if (shape[i] == 0)
            zero = 1;
    }
    for (int i = 0; i < ndim && !bad && !zero; i++) {
        if (__builtin_mul_overflow(n, shape[i], &n) || n > ((int64_t)1 << 56))
            bad = 2;
    }
    if (bad) {
        PyObject *t = ndl_shape_tuple(ndim, shape);
        if (t != NULL) {
            PyErr_Format(PyExc_ValueError, bad == 1 ? "%s %R has a negative dimension"
                                                    : "%s %R has too many elements",
                         what, t);
            Py_DECREF(t);
        }
        return -1;
    }
    return 0;
}

PyObject *ndl_shape_tuple(int ndim, const int64_t *v)
{
    PyObject *t = PyTuple_New(ndim);
    if (t == NULL)
        return NULL;
    for (int i = 0; i < ndim; i++) {
        PyObject *x = PyLong_FromLongLong(v[i]);
        if (x == NULL) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, i, x);
    }
    return t;
}

int ndl_parse_layout(PyObject *shape, PyObject *strides, int64_t offset, ndl_layout *l,
                     const char *what)
{
    int ns;
    if (ndl_parse_shape(shape, &l->ndim, l->shape, "shape") < 0 ||
        check_nonnegative(l->ndim, l->shape, "shape") < 0)
        return -1;
    l->offset = offset;
    if (strides == Py_None) {
        ndl_compact_strides(l->ndim, l->shape, l->strides);
        return 0;
    }
    if (ndl_parse_shape(strides, &ns, l->strides, "strides") < 0)
        return -1;
    if (ns != l->ndim) {
        PyErr_Format(PyExc_ValueError, "%s: shape %R and strides %R differ in length", what, shape,
                     strides);
        return -1;
    }
    return 0;
}

int ndl_normalize_axis(int64_t ax, int ndim, int64_t *out)
{
    if (ax < -ndim || ax >= ndim) {
        PyErr_Format(PyExc_ValueError, "axis %lld is out of bounds for array of dimension %d",
                     (long long)ax, ndim);
        return -1;
    }
    *out = ax < 0 ? ax + ndim : ax;
    return 0;
}

int ndl_normalize_axes(int naxes, const int64_t *axes, int ndim, int skip_large, const char *what,
                       int *nout, int64_t *out, uint64_t *mask)
{
    uint64_t seen = 0;
    int k = 0;
    if (naxes < 0) { /* None: every axis */
        for (int i = 0; i < ndim; i++)
            out[i] = i, seen |= (uint64_t)1 << i;
        k = ndim;
    }
    for (int i = 0; i < naxes; i++) {
        int64_t ax;
        if (skip_large && axes[i] >= ndim)
            continue;
        if (ndl_normalize_axis(axes[i], ndim, &ax) < 0)
            return -1;
        if (seen & ((uint64_t)1 << ax)) {
            PyErr_Format(PyExc_ValueError, "%s: axis %lld is repeated", what, (long long)ax);
            return -1;
        }
        seen |= (uint64_t)1 << ax;
        out[k++] = ax;
    }
    if (nout != NULL)
        *nout = k;
    if (mask != NULL)
        *mask = seen;
    return 0;
}

int ndl_broadcast_shapes(int na, const int64_t *sa, int nb, const int64_t *sb, int *nout,
                         int64_t *out)
{
    int n = na > nb ? na : nb;
    for (int i = 0; i < n; i++) {
        int64_t da = i < n - na ? 1 : sa[i - (n - na)];
        int64_t db = i < n - nb ? 1 : sb[i - (n - nb)];
        if (da != db && da != 1 && db != 1) {
            PyObject *ta = ndl_shape_tuple(na, sa), *tb = ndl_shape_tuple(nb, sb);
            if (ta != NULL && tb != NULL)
                PyErr_Format(PyExc_ValueError,
                             "operands could not be broadcast together with shapes %R and %R",
                             ta, tb);
            Py_XDECREF(ta);
            Py_XDECREF(tb);
            return -1;
        }
        out[i] = da == 1 ? db : da;
    }
    *nout = n;
    return 0;
}

void ndl_layout_broadcast(const ndl_layout *a, int ndim, const int64_t *shape, ndl_layout *out)
{
    int lead = ndim - a->ndim;
    out->ndim = ndim;
    out->offset = a->offset;
    for (int i = 0; i < ndim; i++) {
        out->shape[i] = shape[i];
        if (i < lead || a->shape[i - lead] != shape[i])
            out->strides[i] = 0; /* a prepended or size-1 dim, repeated */
        else
            out->strides[i] = a->strides[i - lead];
    }
}

/* ---- construction ------------------------------------------------------- */

static NDArrayObject *array_alloc(PyTypeObject *type, StorageObject *storage, DeviceObject *dev,
                                  const ndl_layout *layout)
{
    NDArrayObject *self = (NDArrayObject *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->storage = (StorageObject *)Py_NewRef(storage);
    self->device = (DeviceObject *)Py_NewRef(dev);
    self->dtype = storage->dtype;
    self->layout = *layout;
    return self;
}

NDArrayObject *ndl_array_empty(DeviceObject *dev, ndl_dtype dt, int ndim, const int64_t *shape)
{
    ndl_layout l;
    StorageObject *st;
    NDArrayObject *res;
    if (ndl_device_check_enabled(dev) < 0 || check_nonnegative(ndim, shape, "shape") < 0)
        return NULL;
    l.ndim = ndim;
    l.offset = 0;
    memcpy(l.shape, shape, sizeof(int64_t) * ndim);
    ndl_compact_strides(ndim, shape, l.strides);
    st = ndl_storage_new(dev->backend, dt, ndl_layout_size(&l));
    if (st == NULL)
        return NULL;
    res = array_alloc(&NDArray_Type, st, dev, &l);
    Py_DECREF(st);
    return res;
}

NDArrayObject *ndl_array_full(DeviceObject *dev, ndl_dtype dt, int ndim, const int64_t *shape,
                              double value)
{
    NDArrayObject *res = ndl_array_empty(dev, dt, ndim, shape);
    if (res == NULL)
        return NULL;
    if (ndl_raise_status(dev->backend->fill(dt, res->storage->data, &res->layout, value),
                         "full") < 0)
        Py_CLEAR(res);
    return res;
}

NDArrayObject *ndl_array_view(NDArrayObject *base, const ndl_layout *layout)
{
    return array_alloc(&NDArray_Type, base->storage, base->device, layout);
}

int64_t ndl_array_size(NDArrayObject *a) { return ndl_layout_size(&a->layout); }

int ndl_array_is_compact(NDArrayObject *a)
{
    int64_t strides[NDL_MAX_DIMS];
    const ndl_layout *l = &a->layout;
    ndl_compact_strides(l->ndim, l->shape, strides);
    if (memcmp(strides, l->strides, sizeof(int64_t) * l->ndim) != 0)
        return 0;
    return ndl_layout_size(l) == a->storage->size;
}

NDArrayObject *ndl_array_copy(NDArrayObject *a, ndl_dtype dt)
{
    const ndl_backend *be = a->device->backend;
    int status;
    NDArrayObject *out = ndl_array_empty(a->device, dt, a->layout.ndim, a->layout.shape);
    if (out == NULL)
        return NULL;
    NDL_KERNEL_CALL(ndl_array_size(a), status,
                    be->copy(dt, out->storage->data, &out->layout, a->dtype, a->storage->data,
                             &a->layout));
    if (ndl_raise_status(status, "copy") < 0)
        Py_CLEAR(out);
    return out;
}

NDArrayObject *ndl_array_compact(NDArrayObject *a)
{
    if (ndl_array_is_compact(a))
        return (NDArrayObject *)Py_NewRef(a);
    return ndl_array_copy(a, a->dtype);
}

NDArrayObject *ndl_array_astype(NDArrayObject *a, ndl_dtype dt)
{
    if (a->dtype == dt)
        return (NDArrayObject *)Py_NewRef(a);
    return ndl_array_copy(a, dt);
}

int ndl_check_same_device(NDArrayObject *a, NDArrayObject *b, const char *what)
{
    if (a->device == b->device ||
        (a->device->backend == b->device->backend &&
         PyUnicode_Compare(a->device->name, b->device->name) == 0))
        return 0;
    PyErr_Format(PyExc_RuntimeError, "%s: arrays are on different devices, %R and %R", what,
                 (PyObject *)a->device, (PyObject *)b->device);
    return -1;
}

int ndl_array_assign(NDArrayObject *dst, NDArrayObject *src)
{
    int64_t n = ndl_array_size(dst);
    ndl_layout ls;
    NDArrayObject *csrc = NULL;
    int status;
    if (ndl_array_size(src) != n) {
        PyObject *td = ndl_shape_tuple(dst->layout.ndim, dst->layout.shape);
        PyObject *ts = ndl_shape_tuple(src->layout.ndim, src->layout.shape);
        if (td && ts)
            PyErr_Format(PyExc_ValueError,
                         "cannot assign an array of shape %R (%lld elements) to a view of shape "
                         "%R (%lld elements)",
                         ts, (long long)ndl_array_size(src), td, (long long)n);
        Py_XDECREF(td);
        Py_XDECREF(ts);
        return -1;
    }
    if (ndl_check_same_device(dst, src, "setitem") < 0)
        return -1;
    /* Elements are matched in row-major order, so src is read as a flat
     * compact buffer laid out with dst's shape. A copy of src also protects
     * against dst and src overlapping in the same storage. */
    if (src->storage == dst->storage || !ndl_array_is_compact(src))
        csrc = ndl_array_copy(src, src->dtype);
    else
        csrc = (NDArrayObject *)Py_NewRef(src);
    if (csrc == NULL)
        return -1;
    ls = dst->layout;
    ls.offset = csrc->layout.offset;
    ndl_compact_strides(ls.ndim, ls.shape, ls.strides);
    NDL_KERNEL_CALL(n, status,
                    dst->device->backend->copy(dst->dtype, dst->storage->data, &dst->layout,
                                               csrc->dtype, csrc->storage->data, &ls));
    Py_DECREF(csrc);
    return ndl_raise_status(status, "setitem");
}

/* ---- views -------------------------------------------------------------- */

NDArrayObject *ndl_array_reshape(NDArrayObject *a, int ndim, const int64_t *shape)
{
    ndl_layout l;
    int64_t known = 1, size = ndl_array_size(a);
    int infer = -1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] == -1 && infer < 0)
            infer = i;
        else if (shape[i] < 0) {
            PyObject *t = ndl_shape_tuple(ndim, shape);
            if (t)
                PyErr_Format(PyExc_ValueError, "reshape: invalid target shape %R", t);
            Py_XDECREF(t);
            return NULL;
        } else
            known *= shape[i];
    }
    l.ndim = ndim;
    memcpy(l.shape, shape, sizeof(int64_t) * ndim);
    if (infer >= 0)
        l.shape[infer] = known == 0 ? 0 : size / known;
    if (ndl_layout_size(&l) != size) {
        PyObject *t = ndl_shape_tuple(ndim, shape);
        PyObject *o = ndl_shape_tuple(a->layout.ndim, a->layout.shape);
        if (t && o)
            PyErr_Format(PyExc_ValueError, "cannot reshape array of shape %R (size %lld) into shape %R",
                         o, (long long)size, t);
        Py_XDECREF(t);
        Py_XDECREF(o);
        return NULL;
    }
    if (!ndl_array_is_compact(a)) {
        PyObject *o = ndl_shape_tuple(a->layout.ndim, a->layout.shape);
        if (o)
            PyErr_Format(PyExc_ValueError,
                         "cannot reshape a non-compact array of shape %R: call compact() first", o);
        Py_XDECREF(o);
        return NULL;
    }
    l.offset = a->layout.offset;
    ndl_compact_strides(ndim, l.shape, l.strides);
    return ndl_array_view(a, &l);
}

NDArrayObject *ndl_array_permute(NDArrayObject *a, const int *axes)
{
    ndl_layout l = a->layout;
    for (int i = 0; i < a->layout.ndim; i++) {
        l.shape[i] = a->layout.shape[axes[i]];
        l.strides[i] = a->layout.strides[axes[i]];
    }
    return ndl_array_view(a, &l);
}

NDArrayObject *ndl_array_broadcast_to(NDArrayObject *a, int ndim, const int64_t *shape)
{
    ndl_layout l;
    int lead = ndim - a->layout.ndim;
    if (lead < 0)
        goto bad;
    for (int i = 0; i < a->layout.ndim; i++) {
        int64_t d = a->layout.shape[i];
        if (d != shape[i + lead] && d != 1)
            goto bad;
    }
    if (check_nonnegative(ndim, shape, "broadcast_to: shape") < 0)
        return NULL;
    ndl_layout_broadcast(&a->layout, ndim, shape, &l);
    return ndl_array_view(a, &l);
bad : {
    PyObject *t = ndl_shape_tuple(ndim, shape);
    PyObject *o = ndl_shape_tuple(a->layout.ndim, a->layout.shape);
    if (t && o)
        PyErr_Format(PyExc_ValueError, "cannot broadcast array of shape %R to shape %R", o, t);
    Py_XDECREF(t);
    Py_XDECREF(o);
    return NULL;
}
}

/* -1 with ValueError when a non-empty view would reach outside [0, size). */
static int check_inside(const ndl_layout *l, int64_t size, const char *what)
{
    int64_t lo = l->offset, hi = l->offset;
    if (ndl_layout_size(l) == 0)
        return 0;
    for (int i = 0; i < l->ndim; i++) {
        int64_t span = (l->shape[i] - 1) * l->strides[i];
        if (span < 0)
            lo += span;
        else
            hi += span;
    }
    if (lo >= 0 && hi < size)
        return 0;
    PyObject *sh = ndl_shape_tuple(l->ndim, l->shape), *st = ndl_shape_tuple(l->ndim, l->strides);
    if (sh && st)
        PyErr_Format(PyExc_ValueError,
                     "%s: shape %R with strides %R and offset %lld reaches elements [%lld, %lld], "
                     "outside the buffer of %lld elements",
                     what, sh, st, (long long)l->offset, (long long)lo, (long long)hi,
                     (long long)size);
    Py_XDECREF(sh);
    Py_XDECREF(st);
    return -1;
}

NDArrayObject *ndl_array_over(StorageObject *st, DeviceObject *dev, const ndl_layout *l,
                              const char *what)
{
    if (check_inside(l, st->size, what) < 0)
        return NULL;
    return array_alloc(&NDArray_Type, st, dev, l);
}

/* ---- the Python type ---------------------------------------------------- */

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
    self = array_alloc(type, tmp->storage, tmp->device, &tmp->layout);
    Py_DECREF(tmp);
    return (PyObject *)self;
}

static void NDArray_dealloc(NDArrayObject *self)
{
    Py_CLEAR(self->storage);
    Py_CLEAR(self->device);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

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
        if (ndl_parse_dtype(dtype_obj, &dt) < 0 || (dev = ndl_device_resolve(dev_obj)) == NULL)
            return NULL;
        res = ndl_array_empty(dev, dt, l.ndim, l.shape);
        if (res == NULL)
            return NULL;
        /* A fresh buffer of prod(shape) elements seen through the given layout. */
        if (check_inside(&l, res->storage->size, "make") < 0) {
            Py_DECREF(res);
            return NULL;
        }
        res->layout = l;
        return (PyObject *)res;
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
    if (ndl_parse_shape(shape_obj, &ndim, shape, "shape") < 0)
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
    if (check_inside(&l, self->storage->size, "as_strided") < 0)
        return NULL;
    return (PyObject *)ndl_array_view(self, &l);
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
    PyObject *s = NDArray_str(self), *r;
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
    {"make", METH_KW(NDArray_make) | METH_STATIC,
     "make(shape, strides=None, device=None, handle=None, offset=0): an array over a handle."},
    {"compact_strides", (PyCFunction)NDArray_compact_strides, METH_O | METH_STATIC,
     "Row-major strides, in elements, of a shape."},
    {"_init", (PyCFunction)NDArray_init_from, METH_O, "Copy the fields of another NDArray."},
    {"is_compact", (PyCFunction)NDArray_is_compact, METH_NOARGS,
     "True if the view is row-major and covers its whole buffer."},
    {"compact", (PyCFunction)NDArray_compact, METH_NOARGS, "self if compact, else a compact copy."},
    {"reshape", (PyCFunction)NDArray_reshape, METH_VARARGS, "A view with a new shape (compact only)."},
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
    {NULL, NULL, 0, NULL},
};

static PyMappingMethods NDArray_as_mapping = {
    .mp_subscript = (binaryfunc)NDArray_subscript,
    .mp_ass_subscript = (objobjargproc)NDArray_ass_subscript,
};

PyTypeObject NDArray_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "needle.backend_ndarray.NDArray",
    .tp_doc = "NDArray(other, device=None, dtype=None): a strided n-d array on a device.\n\n"
              ">>> a = NDArray(np.arange(6).reshape(2, 3))\n"
              ">>> (a.permute((1, 0)) + 1).shape\n"
              "(3, 2)",
    .tp_basicsize = sizeof(NDArrayObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_new = NDArray_new,
    .tp_dealloc = (destructor)NDArray_dealloc,
    .tp_repr = (reprfunc)NDArray_repr,
    .tp_str = (reprfunc)NDArray_str,
    .tp_hash = PyObject_HashNotImplemented,
    .tp_richcompare = NDArray_richcompare,
    .tp_as_number = &ndl_ndarray_as_number,
    .tp_as_mapping = &NDArray_as_mapping,
    .tp_as_buffer = &ndl_ndarray_as_buffer,
    .tp_methods = NDArray_methods,
    .tp_getset = NDArray_getset,
};
