/* module.c: needle._C, the extension module. Registers the types and the
 * module-level functions; each lives in its own file under csrc/ndarray/.
 *
 * Python view:
 *     needle._C.NDArray, BackendDevice, Array, SliceError
 *     needle._C.cpu(), cuda(), cpu_numpy(), default_device(), all_devices()
 *     needle._C.set_num_threads(n), get_num_threads(), matmul_kernel_name(),
 *         ewise_kernel_name()
 *     needle._C.cpu_kernels     # the course's kernel-module interface
 *     needle._C.Tensor, ops, ... # the autograd layer (autograd/autograd_module.c)
 */
#include "autograd/autograd.h"
#include "ndarray/ndarray.h"
#include "ndarray/cpu_info.h"
#include "ndarray/threadpool.h"

static PyObject *device_or_null(DeviceObject *d) { return d ? Py_NewRef(d) : NULL; }

static PyObject *m_cpu(PyObject *m, PyObject *u) { return device_or_null(ndl_device_cpu()); }
static PyObject *m_cuda(PyObject *m, PyObject *u) { return device_or_null(ndl_device_cuda()); }
static PyObject *m_default(PyObject *m, PyObject *u)
{
    return device_or_null(ndl_device_default());
}
static PyObject *m_cpu_numpy(PyObject *m, PyObject *u)
{
    return device_or_null(ndl_device_cpu_numpy());
}

static PyObject *m_all_devices(PyObject *m, PyObject *u)
{
    DeviceObject *a = ndl_device_cpu(), *b = ndl_device_cuda(), *c = ndl_device_cpu_numpy();
    if (!a || !b || !c)
        return NULL;
    return Py_BuildValue("[OOO]", (PyObject *)a, (PyObject *)b, (PyObject *)c);
}

static PyObject *m_set_num_threads(PyObject *m, PyObject *arg)
{
    long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 1 || n > 1024) {
        PyErr_Format(PyExc_ValueError, "set_num_threads: n must be in [1, 1024], got %ld", n);
        return NULL;
    }
    ndl_set_num_threads((int)n);
    Py_RETURN_NONE;
}

static PyObject *m_get_num_threads(PyObject *m, PyObject *u)
{
    return PyLong_FromLong(ndl_get_num_threads());
}

static PyObject *m_matmul_kernel_name(PyObject *m, PyObject *u)
{
    return PyUnicode_FromString(ndl_cpu_matmul_kernel_name());
}

static PyObject *m_ewise_kernel_name(PyObject *m, PyObject *u)
{
    return PyUnicode_FromString(ndl_cpu_ewise_kernel_name());
}

/* {"kernel", "float32": {mr, nr, mc, kc, nc, small_m, swap_m, fill_m, row_bytes, fill_max_b,
 *  set_rows, pack_a}, "float64": {...}, "l1d", "l1d_ways", "l2", "l3", "llc", "cache_source",
 *  "vendor", "flush_denormals"}: what
 *  ndl_cpu_matmul chose and why (ndl_cpu_matmul_blocks in ndl_core.h). */
static PyObject *m_matmul_config(PyObject *m, PyObject *u)
{
    const ndl_cpu_info *info = ndl_get_cpu_info();
    PyObject *res = NULL, *blocks[NDL_NUM_DTYPES] = {NULL, NULL};
    for (int dt = 0; dt < NDL_NUM_DTYPES; dt++) {
        int64_t b[NDL_MATMUL_BLOCKS_N];
        ndl_cpu_matmul_blocks((ndl_dtype)dt, b);
        blocks[dt] = Py_BuildValue("{sLsLsLsLsLsLsLsLsLsLsLsL}", "mr", (long long)b[0], "nr",
                                   (long long)b[1], "mc", (long long)b[2], "kc", (long long)b[3],
                                   "nc", (long long)b[4], "small_m", (long long)b[5], "swap_m",
                                   (long long)b[6], "fill_m", (long long)b[7], "row_bytes",
                                   (long long)b[8], "fill_max_b", (long long)b[9], "set_rows",
                                   (long long)b[10], "pack_a", (long long)b[11]);
        if (!blocks[dt])
            goto fail;
    }
    res = Py_BuildValue("{sssOsOsLsisLsLsLsssssi}", "kernel", ndl_cpu_matmul_kernel_name(),
                        "float32", blocks[NDL_FLOAT32], "float64", blocks[NDL_FLOAT64], "l1d",
                        (long long)info->l1d, "l1d_ways", info->l1d_ways, "l2",
                        (long long)info->l2, "l3",
                        (long long)info->l3, "llc", (long long)info->llc, "cache_source",
                        info->source, "vendor", info->vendor, "flush_denormals",
                        ndl_flush_denormals_enabled());
fail:
    Py_XDECREF(blocks[0]);
    Py_XDECREF(blocks[1]);
    return res;
}

static PyMethodDef module_methods[] = {
    {"cpu", m_cpu, METH_NOARGS, "The CPU device."},
    {"cuda", m_cuda, METH_NOARGS, "The CUDA device (enabled() is False without a GPU backend)."},
    {"cpu_numpy", m_cpu_numpy, METH_NOARGS, "The host device with NumPy kernel functions."},
    {"default_device", m_default, METH_NOARGS,
     "The default device: cpu() (cuda() under NEEDLE_DEFAULT_DEVICE=cuda)."},
    {"all_devices", m_all_devices, METH_NOARGS, "[cpu(), cuda(), cpu_numpy()]"},
    {"set_num_threads", m_set_num_threads, METH_O, "Set the number of CPU kernel threads."},
    {"get_num_threads", m_get_num_threads, METH_NOARGS, "Number of CPU kernel threads."},
    {"matmul_kernel_name", m_matmul_kernel_name, METH_NOARGS,
     "The CPU matmul micro-kernel in use: 'avx512', 'avx2' or 'generic'."},
    {"ewise_kernel_name", m_ewise_kernel_name, METH_NOARGS,
     "The CPU elementwise loops in use: 'avx512', 'avx2' or 'generic'."},
    {"matmul_config", m_matmul_config, METH_NOARGS,
     "The CPU matmul kernel, its tile and cache blocks per dtype, the cache sizes they were "
     "derived from, and whether kernels flush denormals."},
    {"adam_update", ndl_py_adam_update, METH_VARARGS,
     "adam_update(p, g, m, v, lr, beta1, beta2, eps, weight_decay, t) -> (p, m, v): one fused "
     "Adam step on NDArrays (m, v None on the first step)."},
    {"sgd_update", ndl_py_sgd_update, METH_VARARGS,
     "sgd_update(p, g, u, lr, momentum, weight_decay) -> (p, u): one fused SGD step."},
    {"_set_repr_hook", ndl_py_set_repr_hook, METH_VARARGS,
     "_set_repr_hook(kind, fn): fn(x, kind) gives repr ('repr') or _repr_html_ ('html')."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    .m_name = "needle._C",
    .m_doc = "needle's C core: NDArray, devices and kernels.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__C(void)
{
    PyObject *m = NULL, *kernels = NULL, *bases = NULL;
    if (ndl_ndarray_init() < 0)
        return NULL;
    if (PyType_Ready(&Storage_Type) < 0 || PyType_Ready(&Device_Type) < 0 ||
        PyType_Ready(&NDArray_Type) < 0)
        return NULL;
    /* NumPy defers to NDArray's reflected operators (np_scalar * a). */
    if (PyDict_SetItemString(NDArray_Type.tp_dict, "__array_ufunc__", Py_None) < 0 ||
        ndl_ndarray_methods_init(&NDArray_Type) < 0)
        return NULL;
    PyType_Modified(&NDArray_Type);
    m = PyModule_Create(&module_def);
    if (m == NULL)
        return NULL;
    /* _dilate, _im2col, _skip_optional_slots (ndarray/ndarray_conv.c) */
    if (PyModule_AddFunctions(m, ndl_conv_functions) < 0)
        goto fail;
    bases = PyTuple_Pack(2, PyExc_IndexError, PyExc_AssertionError);
    if (bases == NULL)
        goto fail;
    ndl_SliceError = PyErr_NewExceptionWithDoc(
        "needle.backend_ndarray.SliceError",
        "A bad slice: both an IndexError and, for course code, an AssertionError.", bases, NULL);
    if (ndl_SliceError == NULL)
        goto fail;
    kernels = ndl_kernel_module_create();
    if (kernels == NULL)
        goto fail;
    if (PyModule_AddObjectRef(m, "NDArray", (PyObject *)&NDArray_Type) < 0 ||
        PyModule_AddObjectRef(m, "BackendDevice", (PyObject *)&Device_Type) < 0 ||
        PyModule_AddObjectRef(m, "Array", (PyObject *)&Storage_Type) < 0 ||
        PyModule_AddObjectRef(m, "SliceError", ndl_SliceError) < 0 ||
        PyModule_AddObjectRef(m, "cpu_kernels", kernels) < 0 ||
        PyModule_AddIntConstant(m, "MAX_DIMS", NDL_MAX_DIMS) < 0)
        goto fail;
    if (ndl_autograd_init(m) < 0)
        goto fail;
    Py_DECREF(bases);
    Py_DECREF(kernels);
    return m;
fail:
    Py_XDECREF(bases);
    Py_XDECREF(kernels);
    Py_XDECREF(m);
    return NULL;
}
