/* device.h: BackendDevice, a named device with a kernel module and a backend
 * (device.c). Above storage and below arrays in Note [One-way order]
 * (ndarray.h): a device hands its backend to the arrays on it, and never
 * names an array function itself (Note [Device factories]).
 */
#ifndef NDL_DEVICE_H
#define NDL_DEVICE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "backend.h"
#include "ndl_core.h"

typedef struct {
    PyObject_HEAD
    PyObject *name;       /* str */
    PyObject *mod;        /* kernel module, resolved lazily; NULL until then */
    const char *mod_name; /* dotted module name, or NULL when unavailable */
    const ndl_backend *backend; /* NULL when the device is disabled */
} DeviceObject;

extern PyTypeObject Device_Type;
#define Device_Check(o) PyObject_TypeCheck(o, &Device_Type)

/* Borrowed references to the process-wide device singletons. */
DeviceObject *ndl_device_cpu(void);
DeviceObject *ndl_device_cuda(void);
DeviceObject *ndl_device_cpu_numpy(void);
/* cpu(), or cuda() when NEEDLE_DEFAULT_DEVICE=cuda (read once): the device of
 * arrays and tensors that name none (make cuda-check runs the suite so). */
DeviceObject *ndl_device_default(void);
/* Resolve a `device=` argument: None -> default device (cpu). Returns a
 * borrowed reference, or NULL with TypeError/RuntimeError (disabled device). */
DeviceObject *ndl_device_resolve(PyObject *obj);
/* 0, or -1 with RuntimeError when dev has no backend. */
int ndl_device_check_enabled(DeviceObject *dev);

/* Note [Device factories]
 *   device.empty, full, rand, randn and one_hot build arrays, and arrays sit
 *   above devices: an array holds its device, and building one needs the
 *   device's backend. So a device parses those methods' arguments and builds
 *   through this table, which the array layer fills at init
 *   (ndl_ndarray_init, ndarray_type.c). Why a table rather than moving those
 *   methods into a file above: BackendDevice keeps one method table, beside
 *   its Python equivalent in device.c, and the parsing stays with it; only
 *   the three calls that build go through here. Each entry has the signature
 *   of the ndarray.h function it stands for. */
struct NDArrayObject;
typedef struct {
    /* ndl_array_empty */
    struct NDArrayObject *(*empty)(DeviceObject *dev, ndl_dtype dt, int ndim,
                                   const int64_t *shape);
    /* ndl_array_full */
    struct NDArrayObject *(*full)(DeviceObject *dev, ndl_dtype dt, int ndim, const int64_t *shape,
                                  double value);
    /* ndl_array_from_object */
    struct NDArrayObject *(*from_object)(PyObject *obj, DeviceObject *dev, ndl_dtype dt);
} ndl_device_factories;

/* Keeps the pointer (f must outlive every device). */
void ndl_device_set_factories(const ndl_device_factories *f);

#endif /* NDL_DEVICE_H */
