/* ndarray_conv.c: the data movement a convolution lowers to, on NDArrays:
 * flip, pad, dilate and im2col, each through the backend slot of its name.
 *
 * Python equivalent (API.md 2.11, 4.5, 4.6):
 *     a.flip(axes)                  np.flip(a, axes).copy()
 *     a.pad(((lo, hi), ...))        np.pad(a, ((lo, hi), ...))
 *     _C._dilate(a, axes, d)        zeros, with a[i] at i*(d+1) along axes
 *     _C._im2col(a, k, stride)      as_strided(a, (N, Ho, Wo, k, k, C),
 *                                     (sN, s*sH, s*sW, sH, sW, sC)).copy()
 *     _C._im2col(a, k, stride, row0, nrows)
 *                                   rows [row0, row0 + nrows) of that copy
 *                                   reshaped to (N*Ho*Wo, k*k*C)
 * Every function validates its arguments first (ValueError naming the
 * shape, the axes or the sizes), makes a compact output, then makes one
 * backend call: the slot, or, where the backend leaves that optional slot
 * NULL, the composition of fill and copy below (Note [Optional backend
 * slots], backend.h). _dilate and _im2col are private (tests, and the conv
 * ops until they call the C functions directly); _skip_optional_slots is a
 * test switch.
 */
#include <stdarg.h>
#include <string.h>

#include "ndarray_impl.h"

/* Test hook only (ndarray.h): read with the GIL held, before a kernel runs. */
int ndl_skip_optional_slots = 0;

/* ValueError "<what>: <detail> (array shape <shape>)"; returns NULL. */
static void *shape_error(NDArrayObject *a, const char *what, const char *fmt, ...)
{
    va_list va;
    PyObject *detail, *shape;
    va_start(va, fmt);
    detail = PyUnicode_FromFormatV(fmt, va);
    va_end(va);
    shape = ndl_shape_tuple(a->layout.ndim, a->layout.shape);
    if (detail != NULL && shape != NULL)
        PyErr_Format(PyExc_ValueError, "%s: %U (array shape %R)", what, detail, shape);
    Py_XDECREF(detail);
    Py_XDECREF(shape);
    return NULL;
}

static int check_mask(NDArrayObject *a, uint64_t mask, const char *what)
{
    if ((mask >> a->layout.ndim) == 0)
        return 0;
    shape_error(a, what, "axis %d is out of range for %d dimensions",
                a->layout.ndim + __builtin_ctzll(mask >> a->layout.ndim), a->layout.ndim);
    return -1;
}

/* out, or NULL (and out released) when status is an error. */
static NDArrayObject *finish(NDArrayObject *out, int status, const char *what)
{
    if (ndl_raise_status(status, what) < 0)
        Py_CLEAR(out);
    return out;
}

/* ---- fallbacks: the optional slots composed from fill and copy ------------
 * Same arguments and contract as the slot (backend.h), plus the backend.
 * They never touch Python, so they run with the GIL released like a slot. */

static void compact_layout(int ndim, const int64_t *shape, int64_t offset, ndl_layout *l)
{
    l->ndim = ndim;
    l->offset = offset;
    memcpy(l->shape, shape, sizeof(int64_t) * ndim);
    ndl_compact_strides(ndim, shape, l->strides);
}

static int flip_composed(const ndl_backend *be, ndl_dtype dt, const void *a, const ndl_layout *la,
                         uint64_t mask, void *out)
{
    ndl_layout l = *la, lo;
    for (int j = 0; j < l.ndim; j++) {
        if (!(mask & ((uint64_t)1 << j)))
            continue;
        if (l.shape[j] > 0)
            l.offset += (l.shape[j] - 1) * l.strides[j];
        l.strides[j] = -l.strides[j];
    }
    compact_layout(la->ndim, la->shape, 0, &lo);
    return be->copy(dt, out, &lo, dt, a, &l);
}

static int pad_composed(const ndl_backend *be, ndl_dtype dt, const void *a, const ndl_layout *la,
                        const int64_t *lo, const int64_t *hi, void *out)
{
    int64_t shape[NDL_MAX_DIMS];
    ndl_layout l;
    int status;
    for (int j = 0; j < la->ndim; j++)
        shape[j] = la->shape[j] + lo[j] + hi[j];
    compact_layout(la->ndim, shape, 0, &l);
    if ((status = be->fill(dt, out, &l, 0.0)) != NDL_OK)
        return status;
    for (int j = 0; j < la->ndim; j++) {
        l.offset += lo[j] * l.strides[j];
        l.shape[j] = la->shape[j];
    }
    return be->copy(dt, out, &l, dt, a, la);
}

static int dilate_composed(const ndl_backend *be, ndl_dtype dt, const void *a,
                           const ndl_layout *la, uint64_t mask, int64_t d, void *out)
{
    int64_t shape[NDL_MAX_DIMS];
    ndl_layout l;
    int status;
    for (int j = 0; j < la->ndim; j++)
        shape[j] = la->shape[j] * (mask & ((uint64_t)1 << j) ? d + 1 : 1);
    compact_layout(la->ndim, shape, 0, &l);
    if ((status = be->fill(dt, out, &l, 0.0)) != NDL_OK)
        return status;
    for (int j = 0; j < la->ndim; j++) {
        l.shape[j] = la->shape[j];
        if (mask & ((uint64_t)1 << j))
            l.strides[j] *= d + 1;
    }
    return be->copy(dt, out, &l, dt, a, la);
}

/* All rows: one copy of the 6-d as_strided view. A row range: one copy per
 * run of rows sharing (n, y), each a 4-d view (x, i, j, c). */
static int im2col_composed(const ndl_backend *be, ndl_dtype dt, const void *a,
                           const ndl_layout *la, int64_t k, int64_t s, int64_t row0,
                           int64_t nrows, void *out)
{
    const int64_t n = la->shape[0], c = la->shape[3];
    const int64_t ho = (la->shape[1] - k) / s + 1, wo = (la->shape[2] - k) / s + 1;
    const int64_t *st = la->strides;
    ndl_layout src, dst;
    int status = NDL_OK;
    if (row0 == 0 && nrows == n * ho * wo) {
        int64_t shape[6] = {n, ho, wo, k, k, c};
        int64_t strides[6] = {st[0], s * st[1], s * st[2], st[1], st[2], st[3]};
        compact_layout(6, shape, la->offset, &src);
        memcpy(src.strides, strides, sizeof strides);
        compact_layout(6, shape, 0, &dst);
        return be->copy(dt, out, &dst, dt, a, &src);
    }
    for (int64_t r = row0, done = 0; r < row0 + nrows && status == NDL_OK;) {
        int64_t x = r % wo, y = (r / wo) % ho, b = r / wo / ho;
        int64_t len = wo - x < row0 + nrows - r ? wo - x : row0 + nrows - r;
        int64_t shape[4] = {len, k, k, c};
        compact_layout(4, shape, la->offset + b * st[0] + y * s * st[1] + x * s * st[2], &src);
        src.strides[0] = s * st[2], src.strides[1] = st[1];
        src.strides[2] = st[2], src.strides[3] = st[3];
        compact_layout(4, shape, done * k * k * c, &dst);
        status = be->copy(dt, out, &dst, dt, a, &src);
        r += len, done += len;
    }
    return status;
}

/* ---- flip and pad (API.md 2.11) ------------------------------------------- */

NDArrayObject *ndl_array_flip(NDArrayObject *a, uint64_t mask)
{
    const ndl_backend *be = a->device->backend;
    NDArrayObject *out;
    int status;
    if (check_mask(a, mask, "flip") < 0)
        return NULL;
    /* A copy even when nothing moves: flip always returns a new array. */
    out = ndl_array_empty(a->device, a->dtype, a->layout.ndim, a->layout.shape);
    if (out == NULL)
        return NULL;
    NDL_KERNEL_CALL(ndl_array_size(a), status,
                    NDL_OPTIONAL_SLOT(be, flip)
                        ? be->flip(a->dtype, a->storage->data, &a->layout, mask,
                                   out->storage->data)
                        : flip_composed(be, a->dtype, a->storage->data, &a->layout, mask,
                                        out->storage->data));
    return finish(out, status, "flip");
}

NDArrayObject *ndl_array_pad(NDArrayObject *a, const int64_t *lo, const int64_t *hi)
{
    const ndl_backend *be = a->device->backend;
    int64_t shape[NDL_MAX_DIMS];
    NDArrayObject *out;
    int status;
    for (int j = 0; j < a->layout.ndim; j++) {
        if (lo[j] < 0 || hi[j] < 0)
            return shape_error(a, "pad", "negative padding (%lld, %lld) on axis %d",
                               (long long)lo[j], (long long)hi[j], j);
        if (__builtin_add_overflow(a->layout.shape[j], lo[j], &shape[j]) ||
            __builtin_add_overflow(shape[j], hi[j], &shape[j]))
            return shape_error(a, "pad", "padding (%lld, %lld) on axis %d is too large",
                               (long long)lo[j], (long long)hi[j], j);
    }
    out = ndl_array_empty(a->device, a->dtype, a->layout.ndim, shape);
    if (out == NULL)
        return NULL;
    NDL_KERNEL_CALL(ndl_array_size(out), status,
                    NDL_OPTIONAL_SLOT(be, pad)
                        ? be->pad(a->dtype, a->storage->data, &a->layout, lo, hi,
                                  out->storage->data)
                        : pad_composed(be, a->dtype, a->storage->data, &a->layout, lo, hi,
                                       out->storage->data));
    return finish(out, status, "pad");
}

/* a.flip(axes): axes None (every axis), an int, a tuple or list of ints, or
 * the ints themselves as arguments; negative axes count from the end. */
PyObject *NDArray_flip(NDArrayObject *self, PyObject *args)
{
    int64_t axes[NDL_MAX_DIMS], norm[NDL_MAX_DIMS];
    int naxes = -1;
    uint64_t mask;
    PyObject *s = PyTuple_GET_SIZE(args) == 1 ? PyTuple_GET_ITEM(args, 0) : args;
    if (s != Py_None && ndl_parse_shape(s, &naxes, axes, "flip: axes") < 0)
        return NULL;
    if (ndl_normalize_axes(naxes, axes, self->layout.ndim, 0, "flip", NULL, norm, &mask) < 0)
        return NULL;
    return (PyObject *)ndl_array_flip(self, mask);
}

/* One (left, right) pair of ints from any 2-sequence; -1 with ValueError
 * naming entry i of `all` otherwise. */
static int parse_pair(PyObject *pair, int i, PyObject *all, int64_t *lo, int64_t *hi)
{
    PyObject *seq = PySequence_Fast(pair, "");
    Py_ssize_t v[2];
    int ok = seq != NULL && PySequence_Fast_GET_SIZE(seq) == 2;
    for (int k = 0; ok && k < 2; k++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, k);
        v[k] = PyIndex_Check(item) ? PyNumber_AsSsize_t(item, PyExc_OverflowError) : -1;
        ok = PyIndex_Check(item) && !(v[k] == -1 && PyErr_Occurred());
    }
    Py_XDECREF(seq);
    if (!ok) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "pad: entry %d of %R is not a (left, right) pair of ints",
                     i, all);
        return -1;
    }
    *lo = v[0], *hi = v[1];
    return 0;
}

/* a.pad(axes): one (left, right) pair per dimension. */
PyObject *NDArray_pad(NDArrayObject *self, PyObject *args)
{
    PyObject *axes, *seq;
    int ndim = self->layout.ndim;
    int64_t lo[NDL_MAX_DIMS], hi[NDL_MAX_DIMS];
    NDArrayObject *out = NULL;
    if (!PyArg_ParseTuple(args, "O:pad", &axes))
        return NULL;
    seq = PySequence_Fast(axes, "pad: axes must be a sequence of (left, right) pairs");
    if (seq == NULL)
        return NULL;
    if (PySequence_Fast_GET_SIZE(seq) != ndim) {
        PyErr_Format(PyExc_ValueError,
                     "pad: need one (left, right) pair per dimension (%d), got %R", ndim, axes);
        goto fail;
    }
    for (int i = 0; i < ndim; i++)
        if (parse_pair(PySequence_Fast_GET_ITEM(seq, i), i, axes, &lo[i], &hi[i]) < 0)
            goto fail;
    out = ndl_array_pad(self, lo, hi);
fail:
    Py_DECREF(seq);
    return (PyObject *)out;
}

/* ---- dilate (API.md 4.5) -------------------------------------------------- */

NDArrayObject *ndl_array_dilate(NDArrayObject *a, uint64_t axes_mask, int64_t d)
{
    const ndl_backend *be = a->device->backend;
    int64_t shape[NDL_MAX_DIMS];
    NDArrayObject *out;
    int status;
    if (check_mask(a, axes_mask, "dilate") < 0)
        return NULL;
    if (d < 0)
        return shape_error(a, "dilate", "dilation must be >= 0, got %lld", (long long)d);
    for (int j = 0; j < a->layout.ndim; j++) {
        shape[j] = a->layout.shape[j];
        if ((axes_mask & ((uint64_t)1 << j)) &&
            (d == INT64_MAX || __builtin_mul_overflow(shape[j], d + 1, &shape[j])))
            return shape_error(a, "dilate", "dilation %lld makes axis %d too long", (long long)d,
                               j);
    }
    out = ndl_array_empty(a->device, a->dtype, a->layout.ndim, shape);
    if (out == NULL)
        return NULL;
    NDL_KERNEL_CALL(ndl_array_size(out), status,
                    NDL_OPTIONAL_SLOT(be, dilate)
                        ? be->dilate(a->dtype, a->storage->data, &a->layout, axes_mask, d,
                                     out->storage->data)
                        : dilate_composed(be, a->dtype, a->storage->data, &a->layout, axes_mask,
                                          d, out->storage->data));
    return finish(out, status, "dilate");
}

/* ---- im2col (API.md 4.6) -------------------------------------------------- */

typedef struct {
    int64_t ho, wo, rows, kkc; /* output size, im2col matrix (rows, kkc) */
} im2col_dims;

static int im2col_check(NDArrayObject *a, int64_t k, int64_t s, im2col_dims *dm)
{
    const int64_t *sh = a->layout.shape;
    if (a->layout.ndim != 4) {
        shape_error(a, "im2col", "expected an (N, H, W, C) array");
        return -1;
    }
    if (k < 1 || s < 1) {
        shape_error(a, "im2col", "kernel size %lld and stride %lld must be >= 1", (long long)k,
                    (long long)s);
        return -1;
    }
    if (k > sh[1] || k > sh[2]) {
        shape_error(a, "im2col", "kernel size %lld is larger than H=%lld or W=%lld",
                    (long long)k, (long long)sh[1], (long long)sh[2]);
        return -1;
    }
    dm->ho = (sh[1] - k) / s + 1;
    dm->wo = (sh[2] - k) / s + 1;
    if (__builtin_mul_overflow(sh[0], dm->ho, &dm->rows) ||
        __builtin_mul_overflow(dm->rows, dm->wo, &dm->rows) ||
        __builtin_mul_overflow(k, k, &dm->kkc) ||
        __builtin_mul_overflow(dm->kkc, sh[3], &dm->kkc)) {
        shape_error(a, "im2col", "kernel size %lld gives too many elements", (long long)k);
        return -1;
    }
    return 0;
}

/* Rows [row0, row0 + nrows) into out (compact, nrows * kkc elements). */
static NDArrayObject *im2col_run(NDArrayObject *a, int64_t k, int64_t s, int64_t row0,
                                 int64_t nrows, int64_t kkc, NDArrayObject *out)
{
    const ndl_backend *be = a->device->backend;
    int status;
    NDL_KERNEL_CALL(nrows * kkc, status,
                    NDL_OPTIONAL_SLOT(be, im2col)
                        ? be->im2col(a->dtype, a->storage->data, &a->layout, k, s, row0, nrows,
                                     out->storage->data)
                        : im2col_composed(be, a->dtype, a->storage->data, &a->layout, k, s, row0,
                                          nrows, out->storage->data));
    return finish(out, status, "im2col");
}

NDArrayObject *ndl_array_im2col(NDArrayObject *a, int64_t k, int64_t stride)
{
    im2col_dims dm;
    int64_t shape[6];
    NDArrayObject *out;
    if (im2col_check(a, k, stride, &dm) < 0)
        return NULL;
    shape[0] = a->layout.shape[0], shape[1] = dm.ho, shape[2] = dm.wo;
    shape[3] = k, shape[4] = k, shape[5] = a->layout.shape[3];
    out = ndl_array_empty(a->device, a->dtype, 6, shape);
    if (out == NULL)
        return NULL;
    return im2col_run(a, k, stride, 0, dm.rows, dm.kkc, out);
}

/* ---- private module functions --------------------------------------------- */

/* _dilate(a, axes, d): axes an int or a sequence of ints; axes >= ndim are
 * ignored (Dilate's rule), negative ones count from the end. */
static PyObject *py_dilate(PyObject *mod, PyObject *args)
{
    NDArrayObject *a;
    PyObject *axes_obj;
    long long d;
    int64_t axes[NDL_MAX_DIMS], norm[NDL_MAX_DIMS];
    int naxes;
    uint64_t mask;
    if (!PyArg_ParseTuple(args, "O!OL:_dilate", &NDArray_Type, &a, &axes_obj, &d) ||
        ndl_parse_shape(axes_obj, &naxes, axes, "dilate: axes") < 0 ||
        ndl_normalize_axes(naxes, axes, a->layout.ndim, 1, "dilate", NULL, norm, &mask) < 0)
        return NULL;
    return (PyObject *)ndl_array_dilate(a, mask, d);
}

/* _im2col(a, k, stride) -> (N, Ho, Wo, k, k, C);
 * _im2col(a, k, stride, row0, nrows) -> those rows of the (N*Ho*Wo, k*k*C)
 * matrix, as an (nrows, k*k*C) array. */
static PyObject *py_im2col(PyObject *mod, PyObject *args)
{
    NDArrayObject *a, *out;
    long long k, s, row0 = -1, nrows = -1;
    im2col_dims dm;
    int64_t shape[2];
    if (!PyArg_ParseTuple(args, "O!LL|LL:_im2col", &NDArray_Type, &a, &k, &s, &row0, &nrows))
        return NULL;
    if (PyTuple_GET_SIZE(args) == 3)
        return (PyObject *)ndl_array_im2col(a, k, s);
    if (PyTuple_GET_SIZE(args) != 5) {
        PyErr_SetString(PyExc_TypeError, "_im2col: give both row0 and nrows, or neither");
        return NULL;
    }
    if (im2col_check(a, k, s, &dm) < 0)
        return NULL;
    if (row0 < 0 || nrows < 0 || row0 > dm.rows || nrows > dm.rows - row0)
        return shape_error(a, "im2col", "row0=%lld, nrows=%lld is not a range within the %lld "
                           "rows of the im2col matrix (k=%lld, stride=%lld)",
                           row0, nrows, (long long)dm.rows, k, s);
    shape[0] = nrows, shape[1] = dm.kkc;
    out = ndl_array_empty(a->device, a->dtype, 2, shape);
    if (out == NULL)
        return NULL;
    return (PyObject *)im2col_run(a, k, s, row0, nrows, dm.kkc, out);
}

/* _skip_optional_slots(flag) -> the previous flag. Tests only: while set,
 * NDArray code takes the fallback of every optional backend slot. */
static PyObject *py_skip_optional_slots(PyObject *mod, PyObject *arg)
{
    int flag = PyObject_IsTrue(arg), prev = ndl_skip_optional_slots;
    if (flag < 0)
        return NULL;
    ndl_skip_optional_slots = flag;
    return PyBool_FromLong(prev);
}

PyMethodDef ndl_conv_functions[] = {
    {"_dilate", py_dilate, METH_VARARGS,
     "_dilate(a, axes, d): a copy with d zeros after every element along axes (API.md 4.5)."},
    {"_im2col", py_im2col, METH_VARARGS,
     "_im2col(a, k, stride[, row0, nrows]): a (N, H, W, C) -> the compact (N, Ho, Wo, k, k, C) "
     "im2col view, or rows [row0, row0 + nrows) of it as an (nrows, k*k*C) array."},
    {"_skip_optional_slots", py_skip_optional_slots, METH_O,
     "_skip_optional_slots(flag) -> previous flag. Tests only: use the composed fallback of "
     "every optional backend slot (adam, sgd, pad, flip, dilate, im2col)."},
    {NULL, NULL, 0, NULL},
};
