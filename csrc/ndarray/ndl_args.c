/* ndl_args.c: Python arguments into the C core's vocabulary, shared by the
 * array and the autograd layers (ndl_args.h has the list and the Python
 * equivalents). The bottom of Note [One-way order] (ndarray.h): it includes
 * only ndl_core.h and knows no Python type of needle's, so every other file
 * may call it.
 */
#include <string.h>

#include "ndl_args.h"
#include "ndl_checked.h"

/* ---- dtypes ------------------------------------------------------------- */

const char *ndl_dtype_name(ndl_dtype dt) { return dt == NDL_FLOAT64 ? "float64" : "float32"; }

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

/* ---- shapes and layouts ------------------------------------------------- */

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

int ndl_check_nonnegative(int ndim, const int64_t *shape, const char *what)
{
    int64_t n;
    int bad = 0;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0)
            bad = 1;
    }
    if (!bad && ndl_checked_size(ndim, shape, &n) < 0)
        bad = 2; /* Note [Checked sizes]: zero dims do not excuse the others */
    if (bad) {
        PyObject *t = ndl_shape_tuple(ndim, shape);
        if (t != NULL) {
            PyErr_Format(PyExc_ValueError, bad == 1 ? "%s %R has a negative dimension"
                                                    : "%s %R has too many elements (the product "
                                                      "of its non-zero dimensions is above 2**56)",
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
        ndl_check_nonnegative(l->ndim, l->shape, "shape") < 0)
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

PyObject *ndl_slice_new(int64_t start, int64_t stop, int64_t step)
{
    PyObject *a = PyLong_FromLongLong(start), *b = PyLong_FromLongLong(stop);
    PyObject *c = PyLong_FromLongLong(step), *res = NULL;
    if (a && b && c)
        res = PySlice_New(a, b, c);
    Py_XDECREF(a);
    Py_XDECREF(b);
    Py_XDECREF(c);
    return res;
}

/* ---- axes and broadcasting ---------------------------------------------- */

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

/* ---- kernel status ------------------------------------------------------ */

const char *(*ndl_device_error_hook)(void);

/* Note [Out of memory detail]
 *   Which memory ran out is the failing slot's to say, not a guess made
 *   afterwards: a device slot whose own scratch allocation fails returns
 *   NDL_ENOMEM_DEVICE (ndl_core.h), a host allocation NDL_ENOMEM. Only the
 *   former consults the device's last error: the allocator records every
 *   failed request before returning NULL, on the thread that asked, and the
 *   slot returns at once on that thread, so the record is that request's
 *   ("CUDA out of memory: asked N bytes (...), F of T bytes free, H held by
 *   needle arrays"), never an older one. A record that is not an
 *   out-of-memory one (cudaMalloc failing on a broken context) is raised as
 *   the RuntimeError it is. NDL_ENOMEM never looks at the device: a CPU
 *   slot's MemoryError is "<what>: out of memory", whatever the thread's
 *   last device allocation did (the stale case of the fourth review, where
 *   any NDL_ENOMEM took a record left by an earlier failed device request,
 *   cannot arise). The allocator still drops an out-of-memory record at its
 *   next request, so needle._cuda.last_error() speaks of the last one. */
#define NDL_DEVICE_OOM "CUDA out of memory"

int ndl_raise_status(int status, const char *what)
{
    const char *detail = NULL;
    if (status == NDL_OK)
        return 0;
    if (status == NDL_ENOMEM_DEVICE || status == NDL_EDEVICE)
        detail = ndl_device_error_hook != NULL ? ndl_device_error_hook() : NULL;
    if (status == NDL_ENOMEM)
        PyErr_Format(PyExc_MemoryError, "%s: out of memory", what);
    else if (status == NDL_ENOMEM_DEVICE && detail != NULL &&
             strncmp(detail, NDL_DEVICE_OOM, sizeof NDL_DEVICE_OOM - 1) == 0)
        PyErr_Format(PyExc_MemoryError, "%s: %s", what, detail);
    else if (status == NDL_ENOMEM_DEVICE && (detail == NULL || detail[0] == '\0'))
        PyErr_Format(PyExc_MemoryError, "%s: out of device memory", what);
    else if (status == NDL_ENOMEM_DEVICE || status == NDL_EDEVICE)
        PyErr_Format(PyExc_RuntimeError, "%s: %s", what, detail ? detail : "device error");
    else
        PyErr_Format(PyExc_RuntimeError, "%s: kernel failed (status %d)", what, status);
    return -1;
}
