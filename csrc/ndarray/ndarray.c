/* ndarray.c: the NDArray object and its C API: construction, views, copies.
 *
 * Python equivalent (API.md 2.2-2.6, 2.12), what needle's C code calls:
 *     NDArray.make(shape, strides, device, handle, offset)   ndl_array_over
 *     device.empty(shape) / device.full(shape, v)            ndl_array_empty / _full
 *     a.compact(), a.astype(dt) (in C: an NDArray)           ndl_array_compact / _astype
 *     a.reshape(shape), a.permute(axes), a.broadcast_to(s)   ndl_array_reshape / ...
 *     a[view] = b                                            ndl_array_assign
 * It defines NDArray_Type, whose instances it allocates, with the object's
 * layout and lifetime only; the Python face (__new__, methods, properties,
 * operators, buffer) is attached at init by ndarray_type.c (Note [One-way
 * order], ndarray.h). Views share storage (Note [Views share storage]).
 */
#include <string.h>

#include "ndarray.h"
#include "ndl_checked.h"

PyObject *ndl_SliceError;

/* ---- the object --------------------------------------------------------- */

static void NDArray_dealloc(NDArrayObject *self)
{
    Py_CLEAR(self->storage);
    Py_CLEAR(self->device);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

PyTypeObject NDArray_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "needle.backend_ndarray.NDArray",
    .tp_basicsize = sizeof(NDArrayObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_dealloc = (destructor)NDArray_dealloc,
    /* The rest, the Python face, is set by ndl_ndarray_init (ndarray_type.c). */
};

/* ---- construction ------------------------------------------------------- */

static NDArrayObject *array_alloc(StorageObject *storage, DeviceObject *dev,
                                  const ndl_layout *layout)
{
    NDArrayObject *self = (NDArrayObject *)NDArray_Type.tp_alloc(&NDArray_Type, 0);
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
    if (ndl_device_check_enabled(dev) < 0 || ndl_check_nonnegative(ndim, shape, "shape") < 0)
        return NULL;
    l.ndim = ndim;
    l.offset = 0;
    memcpy(l.shape, shape, sizeof(int64_t) * ndim);
    ndl_compact_strides(ndim, shape, l.strides);
    st = ndl_storage_new(dev->backend, dt, ndl_layout_size(&l));
    if (st == NULL)
        return NULL;
    res = array_alloc(st, dev, &l);
    Py_DECREF(st);
    return res;
}

NDArrayObject *ndl_array_full(DeviceObject *dev, ndl_dtype dt, int ndim, const int64_t *shape,
                              double value)
{
    NDArrayObject *res = ndl_array_empty(dev, dt, ndim, shape);
    int status;
    if (res == NULL)
        return NULL;
    NDL_KERNEL_CALL(ndl_array_size(res), status,
                    dev->backend->fill(dt, res->storage->data, &res->layout, value));
    if (ndl_raise_status(status, "full") < 0)
        Py_CLEAR(res);
    return res;
}

NDArrayObject *ndl_array_view(NDArrayObject *base, const ndl_layout *layout)
{
    return array_alloc(base->storage, base->device, layout);
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
    int64_t known, size = ndl_array_size(a);
    int infer = -1;
    const char *why = NULL;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] == -1 && infer < 0)
            infer = i;
        else if (shape[i] < 0)
            why = "reshape: invalid target shape %R";
    }
    l.ndim = ndim;
    memcpy(l.shape, shape, sizeof(int64_t) * ndim);
    if (why == NULL && infer >= 0)
        l.shape[infer] = 1;
    /* Note [Checked sizes]: a size-0 array must not take a shape whose
     * element count only wraps around to 0. */
    if (why == NULL && ndl_checked_size(ndim, l.shape, &known) < 0)
        why = "reshape: target shape %R has too many elements (above 2**56)";
    if (why != NULL) {
        PyObject *t = ndl_shape_tuple(ndim, shape);
        if (t)
            PyErr_Format(PyExc_ValueError, why, t);
        Py_XDECREF(t);
        return NULL;
    }
    if (infer >= 0)
        l.shape[infer] = known == 0 ? 0 : size / known;
    if (ndl_layout_size(&l) != size) {
        PyObject *t = ndl_shape_tuple(ndim, shape);
        PyObject *o = ndl_shape_tuple(a->layout.ndim, a->layout.shape);
        if (t && o)
            PyErr_Format(PyExc_ValueError,
                         "cannot reshape array of shape %R (size %lld) into shape %R", o,
                         (long long)size, t);
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
    if (ndl_check_nonnegative(ndim, shape, "broadcast_to: shape") < 0)
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

/* -1 with ValueError when a non-empty view would reach outside [0, size),
 * its range computed with checked arithmetic (Note [Checked sizes]). */
static int check_inside(const ndl_layout *l, int64_t size, const char *what)
{
    int64_t lo = 0, hi = 0;
    int overflow;
    if (ndl_layout_size(l) == 0)
        return 0;
    overflow = ndl_checked_extent(l, &lo, &hi) < 0;
    if (!overflow && lo >= 0 && hi < size)
        return 0;
    PyObject *sh = ndl_shape_tuple(l->ndim, l->shape), *st = ndl_shape_tuple(l->ndim, l->strides);
    if (sh && st && overflow)
        PyErr_Format(PyExc_ValueError,
                     "%s: shape %R with strides %R and offset %lld reaches beyond the int64 "
                     "range, outside the buffer of %lld elements",
                     what, sh, st, (long long)l->offset, (long long)size);
    else if (sh && st)
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
    return array_alloc(st, dev, l);
}

/* ---- scalar operands ---------------------------------------------------- */

/* Here rather than in ndl_args.c: a size-1 NDArray is an array operand, never
 * a scalar, so this needs NDArray_Type. */
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
