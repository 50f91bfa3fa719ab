/* device.c: BackendDevice, a named device with a kernel module and a backend.
 *
 * Python equivalent (API.md 2.1):
 *     class BackendDevice:
 *         def __init__(self, name, mod): self.name, self.mod = name, mod
 *         def __eq__(self, other):
 *             return isinstance(other, BackendDevice) and self.name == other.name
 *         def __repr__(self): return self.name + "()"
 *         def __getattr__(self, attr): return getattr(self.mod, attr)
 *         def enabled(self): return self.mod is not None
 *         def randn(self, *shape, dtype="float32"):
 *             return NDArray(np.random.randn(*shape).astype(dtype), device=self)
 *         ... rand, one_hot, empty, full
 * The three devices are process-wide singletons; `mod` is imported on first
 * use, so creating a device never imports anything. The methods that build
 * arrays reach the array layer through a table it fills at init (Note
 * [Device factories], device.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "device.h"
#include "ndl_args.h"

static DeviceObject *device_new(const char *name, const char *mod_name, const ndl_backend *backend)
{
    DeviceObject *self = PyObject_GC_New(DeviceObject, &Device_Type);
    if (self == NULL)
        return NULL;
    self->mod = NULL;
    self->mod_name = mod_name;
    self->backend = backend;
    self->name = PyUnicode_FromString(name);
    if (self->name == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    PyObject_GC_Track(self);
    return self;
}

static DeviceObject *cpu_dev, *cuda_dev, *cpu_numpy_dev;

DeviceObject *ndl_device_cpu(void)
{
    if (cpu_dev == NULL)
        cpu_dev = device_new("cpu", "needle.backend_ndarray.ndarray_backend_cpu", &ndl_cpu_backend);
    return cpu_dev;
}

/* Note [The cuda device]
 *   The CUDA backend lives in a separate module, needle._cuda (csrc/cuda),
 *   built only where nvcc is. On first use (enabled(), or any check) the
 *   cuda device imports it, asks probe() whether a GPU can run, and takes
 *   its backend table from the capsule; otherwise it stays disabled and
 *   cuda_why says why (no module built, no driver, no GPU), which every
 *   later use raises. Importing needle never touches CUDA. With
 *   NEEDLE_CUDA_EMU=1 in the environment it imports needle._cuda_emu
 *   instead: the same kernels run on the CPU by the CUDA emulator (a test
 *   harness, Note [The CUDA emulator], csrc/cuda/emu/cuda_runtime.h), with
 *   the same capsule name; device_name() says it is emulated. */
static int cuda_probed;
static char cuda_why[512];
static const char *(*cuda_last_error)(void);

static const char *cuda_error_message(void)
{
    return cuda_last_error ? cuda_last_error() : "device error";
}

static void cuda_probe(DeviceObject *dev)
{
    PyObject *mod, *why = NULL, *cap = NULL, *type = NULL, *value = NULL, *tb = NULL, *s = NULL;
    const ndl_backend *be;
    const char *env = getenv("NEEDLE_CUDA_EMU");
    const int emu = env != NULL && strcmp(env, "1") == 0;
    const char *name = emu ? "needle._cuda_emu" : "needle._cuda";
    cuda_probed = 1;
    mod = PyImport_ImportModule(name);
    if (mod == NULL) {
        int missing = PyErr_ExceptionMatches(PyExc_ModuleNotFoundError);
        PyErr_Fetch(&type, &value, &tb);
        s = value ? PyObject_Str(value) : NULL;
        const char *msg = s ? PyUnicode_AsUTF8(s) : NULL;
        PyErr_Clear();
        if (emu)
            snprintf(cuda_why, sizeof cuda_why, missing ? "NEEDLE_CUDA_EMU=1 but needle was "
                     "built without the CUDA emulator (%s; rebuild with NEEDLE_CUDA_EMU=1)" :
                     "needle._cuda_emu failed to load (%s)", msg ? msg : "?");
        else
            snprintf(cuda_why, sizeof cuda_why, missing ? "needle was built without CUDA (%s; "
                     "rebuild with nvcc on PATH, or NEEDLE_CUDA=1 to make that an error)" :
                     "needle._cuda failed to load (%s)", msg ? msg : "?");
        PyErr_Clear();
        goto fail;
    }
    why = PyObject_CallMethod(mod, "probe", NULL);
    if (why == NULL || why != Py_None) {
        const char *w = why ? PyUnicode_AsUTF8(why) : NULL;
        snprintf(cuda_why, sizeof cuda_why, "%s", w ? w : "needle._cuda.probe() failed");
        PyErr_Clear();
        goto fail;
    }
    cap = PyObject_GetAttrString(mod, "backend");
    be = cap ? PyCapsule_GetPointer(cap, "needle._cuda.backend") : NULL;
    if (be == NULL) {
        snprintf(cuda_why, sizeof cuda_why, "needle._cuda has no backend capsule");
        PyErr_Clear();
        goto fail;
    }
    cuda_last_error = be->last_error;
    ndl_device_error_hook = cuda_error_message;
    dev->backend = be;
fail:
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    Py_XDECREF(s);
    Py_XDECREF(cap);
    Py_XDECREF(why);
    Py_XDECREF(mod); /* NOTE: the module stays in sys.modules, so be stays valid */
}

DeviceObject *ndl_device_cuda(void)
{
    if (cuda_dev == NULL)
        cuda_dev = device_new("cuda", NULL, NULL);
    return cuda_dev;
}

DeviceObject *ndl_device_cpu_numpy(void)
{
    /* Same host memory layout and C kernels as cpu(); only the Python-visible
     * kernel module differs (NumPy implementations, API.md 2.3). */
    if (cpu_numpy_dev == NULL)
        cpu_numpy_dev = device_new("cpu_numpy", "needle.backend_ndarray.ndarray_backend_numpy",
                                   &ndl_cpu_backend);
    return cpu_numpy_dev;
}

DeviceObject *ndl_device_default(void)
{
    static int read;
    static DeviceObject *dflt;
    if (!read) {
        const char *e = getenv("NEEDLE_DEFAULT_DEVICE");
        read = 1;
        dflt = (e != NULL && strcmp(e, "cuda") == 0) ? ndl_device_cuda() : NULL;
    }
    return dflt != NULL ? dflt : ndl_device_cpu();
}

int ndl_device_check_enabled(DeviceObject *dev)
{
    if (dev == cuda_dev && !cuda_probed)
        cuda_probe(dev);
    if (dev->backend == NULL && dev == cuda_dev) {
        PyErr_Format(PyExc_RuntimeError, "device cuda() is not available: %s", cuda_why);
        return -1;
    }
    if (dev->backend == NULL) {
        PyErr_Format(PyExc_RuntimeError,
                     "device %U() is not available: needle was built without its backend or "
                     "no such hardware is present (check device.enabled() first)",
                     dev->name);
        return -1;
    }
    return 0;
}

DeviceObject *ndl_device_resolve(PyObject *obj)
{
    DeviceObject *dev;
    if (obj == NULL || obj == Py_None)
        dev = ndl_device_default();
    else if (Device_Check(obj))
        dev = (DeviceObject *)obj;
    else {
        PyErr_Format(PyExc_TypeError, "device must be a BackendDevice such as cpu(), got %R", obj);
        return NULL;
    }
    if (dev == NULL || ndl_device_check_enabled(dev) < 0)
        return NULL;
    return dev;
}

/* ---- Python methods ----------------------------------------------------- */

static PyObject *Device_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"name", "mod", NULL};
    PyObject *name, *mod = Py_None;
    const char *cname;
    DeviceObject *self;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "U|O:BackendDevice", kwlist, &name, &mod))
        return NULL;
    cname = PyUnicode_AsUTF8(name);
    if (cname == NULL)
        return NULL;
    /* Only host devices have a backend here; anything else is disabled. */
    int host = strcmp(cname, "cpu") == 0 || strcmp(cname, "cpu_numpy") == 0;
    self = device_new(cname, NULL, (host && mod != Py_None) ? &ndl_cpu_backend : NULL);
    if (self == NULL)
        return NULL;
    self->mod = Py_NewRef(mod);
    return (PyObject *)self;
}

static int Device_traverse(DeviceObject *self, visitproc visit, void *arg)
{
    Py_VISIT(self->mod);
    return 0;
}

static int Device_clear(DeviceObject *self)
{
    Py_CLEAR(self->mod);
    return 0;
}

static void Device_dealloc(DeviceObject *self)
{
    PyObject_GC_UnTrack(self);
    Device_clear(self);
    Py_CLEAR(self->name);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Borrowed reference to the kernel module, importing it on first use;
 * Py_None when the device has none. */
static PyObject *device_mod(DeviceObject *self)
{
    if (self->mod == NULL) {
        if (self->mod_name == NULL)
            self->mod = Py_NewRef(Py_None);
        else
            self->mod = PyImport_ImportModule(self->mod_name);
    }
    return self->mod;
}

static PyObject *Device_get_mod(DeviceObject *self, void *closure)
{
    PyObject *mod = device_mod(self);
    return mod ? Py_NewRef(mod) : NULL;
}

static PyObject *Device_get_name(DeviceObject *self, void *closure)
{
    return Py_NewRef(self->name);
}

static PyObject *Device_repr(DeviceObject *self)
{
    return PyUnicode_FromFormat("%U()", self->name);
}

static Py_hash_t Device_hash(DeviceObject *self)
{
    return PyObject_Hash(self->name);
}

static PyObject *Device_richcompare(PyObject *a, PyObject *b, int op)
{
    int eq;
    if (op != Py_EQ && op != Py_NE)
        Py_RETURN_NOTIMPLEMENTED;
    if (!Device_Check(a) || !Device_Check(b))
        eq = 0;
    else {
        eq = PyUnicode_Compare(((DeviceObject *)a)->name, ((DeviceObject *)b)->name) == 0;
    }
    return PyBool_FromLong(op == Py_EQ ? eq : !eq);
}

static PyObject *Device_getattro(DeviceObject *self, PyObject *attr)
{
    PyObject *res = PyObject_GenericGetAttr((PyObject *)self, attr), *mod;
    if (res != NULL || !PyErr_ExceptionMatches(PyExc_AttributeError))
        return res;
    PyErr_Clear();
    mod = device_mod(self);
    if (mod == NULL)
        return NULL;
    if (mod == Py_None) {
        PyErr_Format(PyExc_AttributeError, "device %U() has no kernel module, so no attribute %R",
                     self->name, attr);
        return NULL;
    }
    return PyObject_GetAttr(mod, attr);
}

static PyObject *Device_enabled(DeviceObject *self, PyObject *Py_UNUSED(ignored))
{
    if (self == cuda_dev && !cuda_probed)
        cuda_probe(self);
    return PyBool_FromLong(self->backend != NULL);
}

/* ---- methods that build arrays (Note [Device factories]) ---------------- */

static const ndl_device_factories *factories; /* set by ndl_ndarray_init */

void ndl_device_set_factories(const ndl_device_factories *f) { factories = f; }

/* NDArray(np.random.<fn>(*shape).astype(dtype), device=self): one float64
 * draw of the full shape, then a cast (API.md 2.1). */
static PyObject *device_random(DeviceObject *self, const char *fn, PyObject *shape, PyObject *kwds)
{
    static char *kwlist[] = {"dtype", NULL};
    PyObject *dtype_obj = Py_None, *nprandom = NULL, *func = NULL, *draw = NULL, *empty = NULL;
    struct NDArrayObject *res = NULL;
    ndl_dtype dt;
    if (ndl_device_check_enabled(self) < 0)
        return NULL;
    empty = PyTuple_New(0);
    if (empty == NULL)
        goto fail;
    if (!PyArg_ParseTupleAndKeywords(empty, kwds, "|O", kwlist, &dtype_obj))
        goto fail;
    if (ndl_parse_dtype(dtype_obj, &dt) < 0)
        goto fail;
    nprandom = PyImport_ImportModule("numpy.random");
    if (nprandom == NULL)
        goto fail;
    func = PyObject_GetAttrString(nprandom, fn);
    if (func == NULL)
        goto fail;
    draw = PyObject_CallObject(func, shape);
    if (draw == NULL)
        goto fail;
    res = factories->from_object(draw, self, dt);
fail:
    Py_XDECREF(empty);
    Py_XDECREF(nprandom);
    Py_XDECREF(func);
    Py_XDECREF(draw);
    return (PyObject *)res;
}

static PyObject *Device_randn(DeviceObject *self, PyObject *args, PyObject *kwds)
{
    return device_random(self, "randn", args, kwds);
}

static PyObject *Device_rand(DeviceObject *self, PyObject *args, PyObject *kwds)
{
    return device_random(self, "rand", args, kwds);
}

/* Rows of the n x n identity selected by i: np.eye(n)[np.asarray(i)].
 * NOTE: computed as arange(n)[i][..., None] == arange(n), which indexes
 * exactly as eye(n)[i] does (same wrap of negative indices, same IndexError
 * for out-of-range or non-integer ones) without building the n x n matrix
 * (800 MB for a 10,000-word vocabulary). */
static PyObject *Device_one_hot(DeviceObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"n", "i", "dtype", NULL};
    PyObject *n, *i, *dtype_obj = Py_None, *np = NULL, *ar = NULL, *idx = NULL, *sel = NULL;
    PyObject *col = NULL, *rows = NULL;
    struct NDArrayObject *res = NULL;
    ndl_dtype dt;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OO|O:one_hot", kwlist, &n, &i, &dtype_obj))
        return NULL;
    if (ndl_device_check_enabled(self) < 0 || ndl_parse_dtype(dtype_obj, &dt) < 0)
        return NULL;
    np = PyImport_ImportModule("numpy");
    if (np == NULL)
        goto fail;
    ar = PyObject_CallMethod(np, "arange", "O", n);
    idx = ar ? PyObject_CallMethod(np, "asarray", "O", i) : NULL;
    sel = idx ? PyObject_GetItem(ar, idx) : NULL;
    col = sel ? PyObject_CallMethod(np, "expand_dims", "Oi", sel, -1) : NULL;
    rows = col ? PyObject_CallMethod(np, "equal", "OO", col, ar) : NULL;
    if (rows == NULL)
        goto fail;
    res = factories->from_object(rows, self, dt);
fail:
    Py_XDECREF(np);
    Py_XDECREF(ar);
    Py_XDECREF(idx);
    Py_XDECREF(sel);
    Py_XDECREF(col);
    Py_XDECREF(rows);
    return (PyObject *)res;
}

static PyObject *Device_empty(DeviceObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"shape", "dtype", NULL};
    PyObject *shape_obj, *dtype_obj = Py_None;
    int64_t shape[NDL_MAX_DIMS];
    int ndim;
    ndl_dtype dt;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|O:empty", kwlist, &shape_obj, &dtype_obj))
        return NULL;
    if (ndl_device_check_enabled(self) < 0 || ndl_parse_dtype(dtype_obj, &dt) < 0 ||
        ndl_parse_shape(shape_obj, &ndim, shape, "shape") < 0)
        return NULL;
    return (PyObject *)factories->empty(self, dt, ndim, shape);
}

static PyObject *Device_full(DeviceObject *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"shape", "fill_value", "dtype", NULL};
    PyObject *shape_obj, *dtype_obj = Py_None;
    int64_t shape[NDL_MAX_DIMS];
    int ndim;
    double value;
    ndl_dtype dt;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "Od|O:full", kwlist, &shape_obj, &value,
                                     &dtype_obj))
        return NULL;
    if (ndl_device_check_enabled(self) < 0 || ndl_parse_dtype(dtype_obj, &dt) < 0 ||
        ndl_parse_shape(shape_obj, &ndim, shape, "shape") < 0)
        return NULL;
    return (PyObject *)factories->full(self, dt, ndim, shape, value);
}

/* ---- the Python type ---------------------------------------------------- */

static PyMethodDef Device_methods[] = {
    {"enabled", (PyCFunction)Device_enabled, METH_NOARGS, "True if the device can be used."},
    {"randn", (PyCFunction)(void (*)(void))Device_randn, METH_VARARGS | METH_KEYWORDS,
     "randn(*shape, dtype='float32'): np.random.randn(*shape) on this device."},
    {"rand", (PyCFunction)(void (*)(void))Device_rand, METH_VARARGS | METH_KEYWORDS,
     "rand(*shape, dtype='float32'): np.random.rand(*shape) on this device."},
    {"one_hot", (PyCFunction)(void (*)(void))Device_one_hot, METH_VARARGS | METH_KEYWORDS,
     "one_hot(n, i, dtype='float32'): rows of the n x n identity selected by i."},
    {"empty", (PyCFunction)(void (*)(void))Device_empty, METH_VARARGS | METH_KEYWORDS,
     "empty(shape, dtype='float32'): an uninitialised compact array."},
    {"full", (PyCFunction)(void (*)(void))Device_full, METH_VARARGS | METH_KEYWORDS,
     "full(shape, fill_value, dtype='float32')."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Device_getset[] = {
    {"name", (getter)Device_get_name, NULL, "Device name.", NULL},
    {"mod", (getter)Device_get_mod, NULL, "Kernel module (None when unavailable).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyTypeObject Device_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "needle.backend_ndarray.BackendDevice",
    .tp_doc = "BackendDevice(name, mod): a device and its kernel module.",
    .tp_basicsize = sizeof(DeviceObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = Device_new,
    .tp_dealloc = (destructor)Device_dealloc,
    .tp_traverse = (traverseproc)Device_traverse,
    .tp_clear = (inquiry)Device_clear,
    .tp_repr = (reprfunc)Device_repr,
    .tp_str = (reprfunc)Device_repr,
    .tp_hash = (hashfunc)Device_hash,
    .tp_richcompare = Device_richcompare,
    .tp_getattro = (getattrofunc)Device_getattro,
    .tp_methods = Device_methods,
    .tp_getset = Device_getset,
};
