/* ndarray_impl.h: private to csrc/ndarray: the NDArray methods defined in
 * one file and listed in the type's tables in another, ndarray_type.c. Each
 * is a plain CPython method function (new reference or NULL with an
 * exception). */
#ifndef NDL_NDARRAY_IMPL_H
#define NDL_NDARRAY_IMPL_H

#include "ndarray.h"

/* ndarray_index.c */
PyObject *NDArray_process_slice(NDArrayObject *self, PyObject *args);
PyObject *NDArray_subscript(NDArrayObject *self, PyObject *idx);
int NDArray_ass_subscript(NDArrayObject *self, PyObject *idx, PyObject *value);

/* ndarray_ops.c */
extern PyNumberMethods ndl_ndarray_as_number;
PyObject *NDArray_richcompare(PyObject *a, PyObject *b, int op);

/* ndarray_conv.c */
PyObject *NDArray_flip(NDArrayObject *self, PyObject *args);
PyObject *NDArray_pad(NDArrayObject *self, PyObject *args);

/* ndarray_numpy.c */
PyObject *NDArray_numpy(NDArrayObject *self, PyObject *unused);
PyObject *NDArray_array(NDArrayObject *self, PyObject *args, PyObject *kwds);
PyObject *NDArray_astype(NDArrayObject *self, PyObject *args);

/* ndarray_dlpack.c */
PyObject *NDArray_dlpack(NDArrayObject *self, PyObject *args, PyObject *kwds);
PyObject *NDArray_dlpack_device(NDArrayObject *self, PyObject *unused);
PyObject *NDArray_from_dlpack_capsule(PyObject *cls, PyObject *capsule);
PyObject *NDArray_reduce(NDArrayObject *self, PyObject *unused);

#endif
