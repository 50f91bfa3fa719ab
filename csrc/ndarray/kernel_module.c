/* kernel_module.c: the course's kernel-module interface over the CPU backend
 * (API.md 2.3), seen from Python as needle.backend_ndarray.ndarray_backend_cpu
 * and reached through `device.<name>` (BackendDevice.__getattr__).
 *
 * Python equivalent:
 *     Array = <the Storage type>; __device_name__ = "cpu"; __tile_size__ = 8
 *     def ewise_add(a, b, out): out[:] = a[:out.size] + b[:out.size]
 *     def compact(a, out, shape, strides, offset): out[:] = view(a, shape, strides, offset)
 *     ... (one function per row of 2.3, all writing into `out`, returning None)
 * needle itself never goes through here: it is a thin binding over the same
 * backend calls that NDArray makes, for code written against that interface.
 * Every handle and layout is bounds-checked, so bad arguments raise instead
 * of reading past a buffer.
 */
#include <string.h>

#include "ndarray_impl.h"
#include "ndl_checked.h"

#define TILE 8

/* A borrowed-arguments view over a handle: NDArray with layout l. */
static NDArrayObject *view_of(StorageObject *st, const ndl_layout *l)
{
    return ndl_array_over(st, ndl_device_cpu(), l, "kernel");
}

static void flat_layout(int64_t n, ndl_layout *l)
{
    l->ndim = 1, l->shape[0] = n, l->strides[0] = 1, l->offset = 0;
}

/* -1 with ValueError unless h holds rows * cols elements (rows, cols >= 0;
 * the product checked, Note [Checked sizes] in ndl_checked.h). */
static int need_size(StorageObject *h, int64_t rows, int64_t cols, const char *name)
{
    int64_t n;
    if (ndl_mul_checked(rows, cols, &n) < 0) {
        PyErr_Format(PyExc_ValueError, "%s would need %lld x %lld elements, beyond the int64 range",
                     name, (long long)rows, (long long)cols);
        return -1;
    }
    if (h->size >= n)
        return 0;
    PyErr_Format(PyExc_ValueError, "%s has %lld elements, %lld needed", name, (long long)h->size,
                 (long long)n);
    return -1;
}

/* Returns None after running status-returning `call`. */
static PyObject *done(int status, const char *what)
{
    if (ndl_raise_status(status, what) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *km_to_numpy(PyObject *m, PyObject *args)
{
    StorageObject *a;
    PyObject *shape, *strides, *res;
    long long offset;
    ndl_layout l;
    NDArrayObject *v;
    if (!PyArg_ParseTuple(args, "O!OOL:to_numpy", &Storage_Type, &a, &shape, &strides, &offset) ||
        ndl_parse_layout(shape, strides, offset, &l, "kernel") < 0 || (v = view_of(a, &l)) == NULL)
        return NULL;
    res = ndl_array_to_numpy(v);
    Py_DECREF(v);
    return res;
}

static PyObject *km_from_numpy(PyObject *m, PyObject *args)
{
    StorageObject *out;
    PyObject *src;
    NDArrayObject *tmp, *dst;
    ndl_layout l;
    int rc;
    if (!PyArg_ParseTuple(args, "OO!:from_numpy", &src, &Storage_Type, &out))
        return NULL;
    tmp = ndl_array_from_object(src, ndl_device_cpu(), out->dtype);
    if (tmp == NULL)
        return NULL;
    flat_layout(ndl_array_size(tmp), &l);
    dst = view_of(out, &l);
    rc = dst ? ndl_array_assign(dst, tmp) : -1;
    Py_DECREF(tmp);
    Py_XDECREF(dst);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *km_fill(PyObject *m, PyObject *args)
{
    StorageObject *out;
    double v;
    ndl_layout l;
    int status;
    if (!PyArg_ParseTuple(args, "O!d:fill", &Storage_Type, &out, &v))
        return NULL;
    flat_layout(out->size, &l);
    NDL_KERNEL_CALL(out->size, status, out->backend->fill(out->dtype, out->data, &l, v));
    return done(status, "fill");
}

/* compact(a, out, ...) gathers a's strided view into out; ewise_setitem
 * scatters compact a into out's strided view. */
static PyObject *strided_copy(PyObject *args, int scatter, const char *fmt)
{
    StorageObject *a, *out;
    PyObject *shape, *strides;
    long long offset;
    ndl_layout l, flat;
    NDArrayObject *src = NULL, *dst = NULL;
    int rc = -1;
    if (!PyArg_ParseTuple(args, fmt, &Storage_Type, &a, &Storage_Type, &out, &shape, &strides,
                          &offset) ||
        ndl_parse_layout(shape, strides, offset, &l, "kernel") < 0)
        return NULL;
    flat_layout(ndl_layout_size(&l), &flat);
    src = view_of(a, scatter ? &flat : &l);
    dst = src ? view_of(out, scatter ? &l : &flat) : NULL;
    if (dst != NULL)
        rc = ndl_array_assign(dst, src);
    Py_XDECREF(src);
    Py_XDECREF(dst);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *km_compact(PyObject *m, PyObject *args)
{
    return strided_copy(args, 0, "O!O!OOL:compact");
}

static PyObject *km_ewise_setitem(PyObject *m, PyObject *args)
{
    return strided_copy(args, 1, "O!O!OOL:ewise_setitem");
}

static PyObject *km_scalar_setitem(PyObject *m, PyObject *args)
{
    StorageObject *out;
    PyObject *shape, *strides;
    long long size, offset;
    double v;
    ndl_layout l;
    NDArrayObject *dst;
    int status;
    if (!PyArg_ParseTuple(args, "LdO!OOL:scalar_setitem", &size, &v, &Storage_Type, &out, &shape,
                          &strides, &offset) ||
        ndl_parse_layout(shape, strides, offset, &l, "kernel") < 0 ||
        (dst = view_of(out, &l)) == NULL)
        return NULL;
    Py_DECREF(dst); /* only the bounds check was needed */
    NDL_KERNEL_CALL(ndl_layout_size(&l), status, out->backend->fill(out->dtype, out->data, &l, v));
    return done(status, "scalar_setitem");
}

static PyObject *km_ewise(ndl_binop op, PyObject *args)
{
    StorageObject *a, *b, *out;
    ndl_layout l;
    int status;
    if (!PyArg_ParseTuple(args, "O!O!O!", &Storage_Type, &a, &Storage_Type, &b, &Storage_Type,
                          &out))
        return NULL;
    if (need_size(a, out->size, 1, "a") < 0 || need_size(b, out->size, 1, "b") < 0)
        return NULL;
    if (a->dtype != out->dtype || b->dtype != out->dtype) {
        PyErr_SetString(PyExc_TypeError, "ewise kernels need a, b and out of one dtype");
        return NULL;
    }
    flat_layout(out->size, &l);
    NDL_KERNEL_CALL(out->size, status,
                    out->backend->binary(op, out->dtype, a->data, &l, b->data, &l, out->data));
    return done(status, ndl_binop_names[op]);
}

static PyObject *km_scalar(ndl_binop op, PyObject *args)
{
    StorageObject *a, *out;
    double v;
    ndl_layout l;
    int status;
    if (!PyArg_ParseTuple(args, "O!dO!", &Storage_Type, &a, &v, &Storage_Type, &out))
        return NULL;
    if (need_size(a, out->size, 1, "a") < 0)
        return NULL;
    if (a->dtype != out->dtype) {
        PyErr_SetString(PyExc_TypeError, "scalar kernels need a and out of one dtype");
        return NULL;
    }
    flat_layout(out->size, &l);
    NDL_KERNEL_CALL(out->size, status,
                    out->backend->scalar(op, out->dtype, a->data, &l,
                                         out->dtype == NDL_FLOAT64 ? v : (double)(float)v, 0,
                                         out->data));
    return done(status, ndl_binop_names[op]);
}

static PyObject *km_unary(ndl_unop op, PyObject *args)
{
    StorageObject *a, *out;
    ndl_layout l;
    int status;
    if (!PyArg_ParseTuple(args, "O!O!", &Storage_Type, &a, &Storage_Type, &out))
        return NULL;
    if (need_size(a, out->size, 1, "a") < 0)
        return NULL;
    if (a->dtype != out->dtype) {
        PyErr_SetString(PyExc_TypeError, "unary kernels need a and out of one dtype");
        return NULL;
    }
    flat_layout(out->size, &l);
    NDL_KERNEL_CALL(out->size, status, out->backend->unary(op, out->dtype, a->data, &l, out->data));
    return done(status, ndl_unop_names[op]);
}

/* One wrapper per kernel row of ../ops.def. */
#define NDL_BINARY_KERNEL(NAME, name, numpy, method)                                               \
    static PyObject *km_ewise_##name(PyObject *m, PyObject *args)                                  \
    {                                                                                              \
        return km_ewise(NDL_BIN_##NAME, args);                                                     \
    }                                                                                              \
    static PyObject *km_scalar_##name(PyObject *m, PyObject *args)                                 \
    {                                                                                              \
        return km_scalar(NDL_BIN_##NAME, args);                                                    \
    }
#include "ops.def"
#define NDL_UNARY_KERNEL(NAME, name, numpy, method)                                                \
    static PyObject *km_ewise_##name(PyObject *m, PyObject *args)                                  \
    {                                                                                              \
        return km_unary(NDL_UN_##NAME, args);                                                      \
    }
#include "ops.def"

static int parse_mnp(PyObject *args, const char *fmt, StorageObject **a, StorageObject **b,
                     StorageObject **out, long long *m, long long *n, long long *p)
{
    if (!PyArg_ParseTuple(args, fmt, &Storage_Type, a, &Storage_Type, b, &Storage_Type, out, m, n,
                          p))
        return -1;
    if (*m < 0 || *n < 0 || *p < 0) {
        PyErr_Format(PyExc_ValueError, "matmul sizes must be >= 0, got m=%lld n=%lld p=%lld", *m,
                     *n, *p);
        return -1;
    }
    if (need_size(*a, *m, *n, "a") < 0 || need_size(*b, *n, *p, "b") < 0 ||
        need_size(*out, *m, *p, "out") < 0)
        return -1;
    if ((*a)->dtype != (*out)->dtype || (*b)->dtype != (*out)->dtype) {
        PyErr_SetString(PyExc_TypeError, "matmul needs a, b and out of one dtype");
        return -1;
    }
    return 0;
}

static PyObject *km_matmul(PyObject *mod, PyObject *args)
{
    StorageObject *a, *b, *out;
    long long m, n, p;
    int64_t zero = 0;
    int status;
    if (parse_mnp(args, "O!O!O!LLL:matmul", &a, &b, &out, &m, &n, &p) < 0)
        return NULL;
    /* work: m*p + n*p fit (checked by parse_mnp); m*n*p in double */
    NDL_KERNEL_CALL((double)m * (double)n * (double)p / 8, status,
                    out->backend->matmul(out->dtype, 1, m, n, p, a->data, &zero, n, 1, b->data,
                                         &zero, p, 1, out->data));
    return done(status, "matmul");
}

/* Tiled layout (API.md 2.3): a is (m/T, n/T, T, T), tile [i][k] the T x T
 * block at block-row i, block-column k. Each output tile is the sum over k
 * of tile products, done by the backend matmul on tile strides. */
static PyObject *km_matmul_tiled(PyObject *mod, PyObject *args)
{
    StorageObject *a, *b, *out;
    long long m, n, p;
    int64_t nt, *aoff = NULL, *boff = NULL;
    void *tmp = NULL;
    size_t isz;
    ndl_layout lt, lo;
    int status = NDL_OK;
    if (parse_mnp(args, "O!O!O!LLL:matmul_tiled", &a, &b, &out, &m, &n, &p) < 0)
        return NULL;
    if (m % TILE || n % TILE || p % TILE) {
        PyErr_Format(PyExc_ValueError, "matmul_tiled: m=%lld n=%lld p=%lld must be multiples of %d",
                     m, n, p, TILE);
        return NULL;
    }
    isz = ndl_itemsize(out->dtype);
    nt = n / TILE;
    flat_layout(m * p, &lo);
    status = out->backend->fill(out->dtype, out->data, &lo, 0.0);
    aoff = PyMem_Malloc(sizeof(int64_t) * (size_t)(nt ? nt : 1));
    boff = PyMem_Malloc(sizeof(int64_t) * (size_t)(nt ? nt : 1));
    tmp = PyMem_Malloc(isz * TILE * TILE * (size_t)(nt ? nt : 1));
    if (!aoff || !boff || !tmp) {
        PyErr_NoMemory();
        goto fail;
    }
    /* tmp holds the nt partial tile products, summed by a reduce over axis 0. */
    lt.ndim = 3, lt.shape[0] = nt, lt.shape[1] = TILE, lt.shape[2] = TILE;
    ndl_compact_strides(3, lt.shape, lt.strides);
    lt.offset = 0;
    for (int64_t i = 0; i < m / TILE && status == NDL_OK && nt > 0; i++) {
        for (int64_t j = 0; j < p / TILE && status == NDL_OK; j++) {
            for (int64_t k = 0; k < nt; k++) {
                aoff[k] = (i * nt + k) * TILE * TILE;
                boff[k] = (k * (p / TILE) + j) * TILE * TILE;
            }
            status = out->backend->matmul(out->dtype, nt, TILE, TILE, TILE, a->data, aoff, TILE, 1,
                                          b->data, boff, TILE, 1, tmp);
            if (status == NDL_OK)
                status = out->backend->reduce(
                    NDL_RED_SUM, out->dtype, tmp, &lt, 1,
                    (char *)out->data + (size_t)((i * (p / TILE) + j) * TILE * TILE) * isz);
        }
    }
    PyMem_Free(aoff);
    PyMem_Free(boff);
    PyMem_Free(tmp);
    return done(status, "matmul_tiled");
fail:
    PyMem_Free(aoff);
    PyMem_Free(boff);
    PyMem_Free(tmp);
    return NULL;
}

static PyObject *km_reduce(ndl_redop op, PyObject *args, const char *fmt)
{
    StorageObject *a, *out;
    long long rs;
    ndl_layout l;
    int status;
    if (!PyArg_ParseTuple(args, fmt, &Storage_Type, &a, &Storage_Type, &out, &rs))
        return NULL;
    if (rs <= 0) {
        PyErr_Format(PyExc_ValueError, "reduce_size must be positive, got %lld", rs);
        return NULL;
    }
    if (need_size(a, out->size, rs, "a") < 0)
        return NULL;
    if (a->dtype != out->dtype) {
        PyErr_SetString(PyExc_TypeError, "reduce kernels need a and out of one dtype");
        return NULL;
    }
    l.ndim = 2, l.shape[0] = out->size, l.shape[1] = rs, l.offset = 0;
    ndl_compact_strides(2, l.shape, l.strides);
    if (out->size == 0)
        Py_RETURN_NONE;
    NDL_KERNEL_CALL(out->size * rs, status,
                    out->backend->reduce(op, out->dtype, a->data, &l, 2, out->data));
    return done(status, "reduce");
}

static PyObject *km_reduce_sum(PyObject *m, PyObject *args)
{
    return km_reduce(NDL_RED_SUM, args, "O!O!L:reduce_sum");
}

static PyObject *km_reduce_max(PyObject *m, PyObject *args)
{
    return km_reduce(NDL_RED_MAX, args, "O!O!L:reduce_max");
}

static PyMethodDef km_methods[] = {
    {"to_numpy", km_to_numpy, METH_VARARGS, "to_numpy(a, shape, strides, offset)"},
    {"from_numpy", km_from_numpy, METH_VARARGS, "from_numpy(np_array, out)"},
    {"fill", km_fill, METH_VARARGS, "fill(out, val)"},
    {"compact", km_compact, METH_VARARGS, "compact(a, out, shape, strides, offset)"},
    {"ewise_setitem", km_ewise_setitem, METH_VARARGS,
     "ewise_setitem(a, out, shape, strides, offset)"},
    {"scalar_setitem", km_scalar_setitem, METH_VARARGS,
     "scalar_setitem(size, val, out, shape, strides, offset)"},
#define NDL_BINARY_KERNEL(NAME, name, numpy, method)                                               \
    {"ewise_" #name, km_ewise_##name, METH_VARARGS, "ewise_" #name "(a, b, out)"},                 \
        {"scalar_" #name, km_scalar_##name, METH_VARARGS, "scalar_" #name "(a, val, out)"},
#include "ops.def"
#define NDL_UNARY_KERNEL(NAME, name, numpy, method)                                                \
    {"ewise_" #name, km_ewise_##name, METH_VARARGS, "ewise_" #name "(a, out)"},
#include "ops.def"
    /* the course's names for pow */
    {"scalar_power", km_scalar_pow, METH_VARARGS, "scalar_power(a, val, out)"},
    {"ewise_power", km_ewise_pow, METH_VARARGS, "ewise_power(a, b, out)"},
    {"matmul", km_matmul, METH_VARARGS, "matmul(a, b, out, m, n, p)"},
    {"matmul_tiled", km_matmul_tiled, METH_VARARGS, "matmul_tiled(a, b, out, m, n, p)"},
    {"reduce_sum", km_reduce_sum, METH_VARARGS, "reduce_sum(a, out, reduce_size)"},
    {"reduce_max", km_reduce_max, METH_VARARGS, "reduce_max(a, out, reduce_size)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef km_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "needle._C.cpu_kernels",
    .m_doc = "The CPU kernel-module interface (API.md 2.3).",
    .m_size = -1,
    .m_methods = km_methods,
};

PyObject *ndl_kernel_module_create(void)
{
    PyObject *m = PyModule_Create(&km_def);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Array", (PyObject *)&Storage_Type) < 0 ||
        PyModule_AddStringConstant(m, "__device_name__", "cpu") < 0 ||
        PyModule_AddIntConstant(m, "__tile_size__", TILE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
