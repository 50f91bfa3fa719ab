/* storage.h: the `Array` handle, one buffer on one device (storage.c). The
 * floor of Note [One-way order] (ndarray.h) just above ndl_args.h: a storage
 * knows its backend and its element type, and nothing of devices or arrays.
 */
#ifndef NDL_STORAGE_H
#define NDL_STORAGE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "backend.h"
#include "ndl_core.h"

typedef struct {
    PyObject_HEAD
    const ndl_backend *backend;
    void *data;
    int64_t size; /* elements */
    ndl_dtype dtype;
    /* Foreign memory (ndl_storage_wrap): freed by release(release_ctx), which
     * may run without the GIL, instead of backend->free; NULL otherwise. */
    void (*release)(void *ctx);
    void *release_ctx;
} StorageObject;

extern PyTypeObject Storage_Type;
#define Storage_Check(o) PyObject_TypeCheck(o, &Storage_Type)

StorageObject *ndl_storage_new(const ndl_backend *backend, ndl_dtype dt, int64_t size);
/* A storage over `size` elements of memory it does not own (DLPack): the
 * storage's last reference calls release(ctx), even when this call fails. */
StorageObject *ndl_storage_wrap(const ndl_backend *backend, ndl_dtype dt, void *data,
                                int64_t size, void (*release)(void *ctx), void *ctx);

/* Buffer protocol. Fill `view` with the window l (Note [Layouts]) of host
 * storage st, kept alive through `owner` (st itself, or an array over it);
 * -1 with BufferError when l is not C-contiguous and flags lack
 * PyBUF_STRIDES. The caller checks that st is host accessible. A view filled
 * here is released with ndl_storage_release_view. */
int ndl_storage_export_view(StorageObject *st, PyObject *owner, const ndl_layout *l,
                            Py_buffer *view, int flags);
void ndl_storage_release_view(PyObject *owner, Py_buffer *view);

#endif /* NDL_STORAGE_H */
