/* ndarray_index.c: NDArray.__getitem__, __setitem__ and process_slice.
 *
 * Python equivalent (API.md 2.5, 2.7):
 *     def __getitem__(self, idxs):
 *         idxs = idxs if isinstance(idxs, tuple) else (idxs,)
 *         idxs += (slice(None),) * (self.ndim - len(idxs))
 *         sl = [self.process_slice(s if isinstance(s, slice) else slice(s, s + 1, 1), d)
 *               for d, s in enumerate(idxs)]           # ints keep their dimension
 *         shape   = [ceil((s.stop - s.start) / s.step) for s in sl]
 *         strides = [st * s.step for st, s in zip(self.strides, sl)]
 *         offset  = self._offset + sum(s.start * st for st, s in zip(self.strides, sl))
 *         return NDArray.make(shape, strides, self.device, self._handle, offset)
 *     def __setitem__(self, idxs, other):  # writes through the view, in place
 * NOTE: a negative start counts from the end (the course maps it to
 * shape[dim], a bug; API.md 11); stops are clamped; an empty range or a
 * non-positive step raises ndl_SliceError, which is both an IndexError and
 * an AssertionError (course code asserts).
 */
#include "ndarray_impl.h"
#include "ndl_checked.h"

typedef struct {
    int64_t start, stop, step;
} ndl_range;

/* Read an optional slice field: None -> dflt. */
static int slice_field(PyObject *v, int64_t dflt, int64_t *out)
{
    Py_ssize_t x;
    if (v == Py_None) {
        *out = dflt;
        return 0;
    }
    if (!PyIndex_Check(v)) {
        PyErr_Format(PyExc_TypeError, "slice indices must be integers or None, got %R", v);
        return -1;
    }
    x = PyNumber_AsSsize_t(v, NULL); /* clamps on overflow */
    if (x == -1 && PyErr_Occurred())
        return -1;
    *out = x;
    return 0;
}

static int64_t clamp_index(int64_t i, int64_t n)
{
    if (i < 0)
        i += n;
    if (i < 0)
        return 0;
    return i > n ? n : i;
}

static int process_slice(PyObject *sl, int64_t n, int dim, ndl_range *r)
{
    PySliceObject *s = (PySliceObject *)sl;
    if (slice_field(s->step, 1, &r->step) < 0 || slice_field(s->start, 0, &r->start) < 0 ||
        slice_field(s->stop, n, &r->stop) < 0)
        return -1;
    if (r->step <= 0) {
        PyErr_Format(ndl_SliceError, "slice step must be positive, got %lld for axis %d",
                     (long long)r->step, dim);
        return -1;
    }
    r->start = clamp_index(r->start, n);
    r->stop = clamp_index(r->stop, n);
    /* NOTE: the course asserts stop > start; a zero-length axis still
     * accepts the full slice. */
    if (r->stop <= r->start && n > 0) {
        PyErr_Format(ndl_SliceError, "empty slice %R for axis %d of length %lld", sl, dim,
                     (long long)n);
        return -1;
    }
    return 0;
}

PyObject *NDArray_process_slice(NDArrayObject *self, PyObject *args)
{
    PyObject *sl;
    int dim;
    ndl_range r;
    if (!PyArg_ParseTuple(args, "O!i:process_slice", &PySlice_Type, &sl, &dim))
        return NULL;
    if (dim < 0 || dim >= self->layout.ndim) {
        PyErr_Format(PyExc_IndexError, "process_slice: dim %d out of range for %d-d array", dim,
                     self->layout.ndim);
        return NULL;
    }
    if (process_slice(sl, self->layout.shape[dim], dim, &r) < 0)
        return NULL;
    return ndl_slice_new(r.start, r.stop, r.step);
}

/* The view self[idx] as a layout (API.md 2.5). */
static int index_layout(NDArrayObject *self, PyObject *idx, ndl_layout *out)
{
    const ndl_layout *l = &self->layout;
    Py_ssize_t nidx;
    int ndim = l->ndim, overflow = 0;
    PyObject *items = PyTuple_Check(idx) ? Py_NewRef(idx) : PyTuple_Pack(1, idx);
    if (items == NULL)
        return -1;
    nidx = PyTuple_GET_SIZE(items);
    if (nidx > ndim) {
        PyErr_Format(PyExc_IndexError,
                     "too many indices for array: array is %d-dimensional, but %zd were indexed",
                     ndim, nidx);
        goto fail;
    }
    *out = *l;
    for (int d = 0; d < ndim; d++) {
        ndl_range r;
        int64_t n = l->shape[d];
        PyObject *it = d < nidx ? PyTuple_GET_ITEM(items, d) : NULL;
        if (it == NULL) {
            r.start = 0, r.stop = n, r.step = 1;
        } else if (PySlice_Check(it)) {
            if (process_slice(it, n, d, &r) < 0)
                goto fail;
        } else if (PyIndex_Check(it)) {
            Py_ssize_t i = PyNumber_AsSsize_t(it, PyExc_IndexError);
            if (i == -1 && PyErr_Occurred())
                goto fail;
            if (i < -n || i >= n) {
                PyErr_Format(PyExc_IndexError,
                             "index %zd is out of bounds for axis %d with size %lld", i, d,
                             (long long)n);
                goto fail;
            }
            /* NOTE: an int keeps its dimension (length 1), as in the course. */
            r.start = i < 0 ? i + n : i, r.stop = r.start + 1, r.step = 1;
        } else {
            PyErr_Format(PyExc_IndexError,
                         "only integers and slices are valid NDArray indices, got %R at axis %d",
                         it, d);
            goto fail;
        }
        /* NOTE: (stop - start + step - 1) / step overflows for huge steps. */
        out->shape[d] = r.stop > r.start ? (r.stop - r.start - 1) / r.step + 1 : 0;
        /* A length-1 axis may keep any stride, so a huge step must not
         * overflow there; past that, only an empty view over made-up
         * strides can overflow (Note [Checked sizes], ndl_checked.h). */
        overflow = ndl_mul_checked(l->strides[d], r.step, &out->strides[d]) < 0;
        if (overflow && out->shape[d] <= 1)
            out->strides[d] = l->strides[d], overflow = 0;
        if (overflow || ndl_muladd_checked(r.start, l->strides[d], out->offset, &out->offset) < 0) {
            PyErr_Format(PyExc_ValueError,
                         "index: axis %d (stride %lld, step %lld, start %lld) takes the view's "
                         "offset or stride beyond the int64 range",
                         d, (long long)l->strides[d], (long long)r.step, (long long)r.start);
            goto fail;
        }
    }
    Py_DECREF(items);
    return 0;
fail:
    Py_DECREF(items);
    return -1;
}

PyObject *NDArray_subscript(NDArrayObject *self, PyObject *idx)
{
    ndl_layout l;
    if (index_layout(self, idx, &l) < 0)
        return NULL;
    return (PyObject *)ndl_array_view(self, &l);
}

int NDArray_ass_subscript(NDArrayObject *self, PyObject *idx, PyObject *value)
{
    NDArrayObject *view = NULL, *src = NULL;
    ndl_layout l;
    int rc = -1;
    if (value == NULL) {
        PyErr_SetString(PyExc_TypeError, "NDArray does not support item deletion");
        return -1;
    }
    if (index_layout(self, idx, &l) < 0)
        return -1;
    view = ndl_array_view(self, &l);
    if (view == NULL)
        return -1;
    if (NDArray_Check(value)) {
        rc = ndl_array_assign(view, (NDArrayObject *)value);
    } else {
        double v;
        int is_scalar = ndl_as_double(value, &v);
        if (is_scalar == 1) {
            int status;
            NDL_KERNEL_CALL(ndl_array_size(view), status,
                            self->device->backend->fill(self->dtype, self->storage->data, &l, v));
            rc = ndl_raise_status(status, "setitem");
        } else if (is_scalar == 0) {
            /* Not a scalar: an array-like (NumPy array, list) of matching size. */
            if (value == Py_None)
                PyErr_SetString(PyExc_TypeError, "cannot assign None to an NDArray");
            else
                src = ndl_array_from_object(value, self->device, self->dtype);
            if (src != NULL)
                rc = ndl_array_assign(view, src);
        }
    }
    Py_XDECREF(view);
    Py_XDECREF(src);
    return rc;
}
