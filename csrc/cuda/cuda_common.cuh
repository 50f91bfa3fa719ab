/* cuda_common.cuh: what every CUDA kernel file of needle._cuda shares.
 *
 * Owns: the checked-call macro (Note [CUDA errors]), launch sizes, and the
 * strided-offset helper. Kernels take the same ndl_layout as the CPU ones
 * (Note [Layouts], ndl_core.h), passed by value.
 *
 * Note [CUDA errors]
 *   Every CUDA call goes through NDL_CUDA_TRY: a failure records
 *   "file:line: call: CUDA message" in a thread-local buffer
 *   (ndl_cuda_last_error) and the kernel entry returns NDL_EDEVICE, which the
 *   array layer raises as RuntimeError with that text. Nothing here exits.
 *   Kernel launches are asynchronous: a fault inside a kernel surfaces at the
 *   next synchronizing call (a copy to the host), with that call's line.
 */
#ifndef NDL_CUDA_COMMON_CUH
#define NDL_CUDA_COMMON_CUH

#include <cuda_runtime.h>
#include <stdint.h>

#include <type_traits>

extern "C" {
#include "backend.h"
#include "ndl_core.h"
}

/* Records the failure (see the Note) and returns NDL_EDEVICE. */
int ndl_cuda_fail(cudaError_t err, const char *file, int line, const char *call);
/* Records a message of the caller's own (an out-of-memory report). */
void ndl_cuda_set_error(const char *msg);
/* Every out-of-memory record starts so (Note [Out of memory detail],
 * ndl_args.c: ndl_raise_status adds such a record to its MemoryError). */
#define NDL_CUDA_OOM "CUDA out of memory"
/* Drops this thread's out-of-memory record, if the last error is one. */
void ndl_cuda_clear_oom(void);
extern "C" const char *ndl_cuda_last_error(void);
/* Copies the host bytes src1[0, n1) then src2[0, n2) to dst (device, n1 + n2
 * bytes) through the pinned staging buffer, asynchronously on the legacy
 * stream (Note [Staged uploads], cuda_memory.cu); src1, src2 may be reused
 * at once. */
int ndl_cuda_upload(void *dst, const void *src1, size_t n1, const void *src2, size_t n2);

#define NDL_CUDA_TRY(call)                                                                         \
    do {                                                                                           \
        cudaError_t ndl_err_ = (call);                                                             \
        if (ndl_err_ != cudaSuccess)                                                               \
            return ndl_cuda_fail(ndl_err_, __FILE__, __LINE__, #call);                             \
    } while (0)

/* After a <<<...>>> launch: a bad configuration fails here. */
#define NDL_CUDA_LAUNCHED() NDL_CUDA_TRY(cudaGetLastError())
/* The same as a status, for a caller that has scratch to free first. */
#define NDL_CUDA_LAUNCH_STATUS(what) ndl_cuda_launch_status(__FILE__, __LINE__, what)
static inline int ndl_cuda_launch_status(const char *file, int line, const char *what)
{
    cudaError_t err = cudaGetLastError();
    return err == cudaSuccess ? NDL_OK : ndl_cuda_fail(err, file, line, what);
}

/* The statement `launch` with T the C type of dt (double or float):
 *     NDL_CU_DTYPE(dt, T, kernel<T><<<b, t>>>(n, (const T *)x, (T *)out));
 * one line where each launch was written twice. */
#define NDL_CU_DTYPE(dt, T, ...)                                                                   \
    do {                                                                                           \
        if ((dt) == NDL_FLOAT64) {                                                                 \
            typedef double T;                                                                      \
            __VA_ARGS__;                                                                           \
        } else {                                                                                   \
            typedef float T;                                                                       \
            __VA_ARGS__;                                                                           \
        }                                                                                          \
    } while (0)

#define NDL_CU_THREADS 256

/* Blocks for a grid-stride loop over n elements (n > 0): enough to fill the
 * GPU, never more than the grid allows; the loop covers the rest, so any n
 * up to 2^63 is covered. */
static inline unsigned ndl_cu_blocks(int64_t n)
{
    int64_t b = (n + NDL_CU_THREADS - 1) / NDL_CU_THREADS;
    return (unsigned)(b < 1 ? 1 : (b > 65536 ? 65536 : b));
}

/* Offset of the i-th element (row-major order of l's shape) in l's view. */
__device__ __forceinline__ int64_t ndl_cu_offset(const ndl_layout &l, int64_t i)
{
    int64_t off = l.offset;
    for (int d = l.ndim - 1; d >= 0; --d) {
        int64_t s = l.shape[d], q = i / s;
        off += (i - q * s) * l.strides[d];
        i = q;
    }
    return off;
}

/* 1 when l is row-major contiguous from its offset (strides of size-1 axes
 * do not matter). */
static inline int ndl_cu_contiguous(const ndl_layout *l)
{
    int64_t expect = 1;
    for (int d = l->ndim - 1; d >= 0; --d) {
        if (l->shape[d] != 1 && l->strides[d] != expect)
            return 0;
        expect *= l->shape[d];
    }
    return 1;
}

static inline int64_t ndl_cu_size(const ndl_layout *l)
{
    int64_t n = 1;
    for (int d = 0; d < l->ndim; d++)
        n *= l->shape[d];
    return n;
}

/* The kernel slots (one file each), gathered in cuda_backend.cu: each is
 * declared with its slot's own type from backend.h, so a definition that
 * drifts from the contract is not the declared function (the table then
 * fails to link) rather than a silent mismatch. */
#define NDL_CUDA_SLOT(slot)                                                                        \
    std::remove_pointer<decltype(ndl_backend::slot)>::type ndl_cuda_##slot
NDL_CUDA_SLOT(alloc);
NDL_CUDA_SLOT(free);
NDL_CUDA_SLOT(to_host);
NDL_CUDA_SLOT(from_host);
NDL_CUDA_SLOT(fill);
NDL_CUDA_SLOT(copy);
NDL_CUDA_SLOT(unary);
NDL_CUDA_SLOT(binary);
NDL_CUDA_SLOT(scalar);
NDL_CUDA_SLOT(reduce);
NDL_CUDA_SLOT(matmul);
NDL_CUDA_SLOT(adam);
NDL_CUDA_SLOT(sgd);
NDL_CUDA_SLOT(pad);
NDL_CUDA_SLOT(flip);
NDL_CUDA_SLOT(dilate);
NDL_CUDA_SLOT(im2col);
NDL_CUDA_SLOT(softmax);
NDL_CUDA_SLOT(softmax_grad);
NDL_CUDA_SLOT(softmax_xent);
NDL_CUDA_SLOT(softmax_xent_grad);
NDL_CUDA_SLOT(layer_norm);
NDL_CUDA_SLOT(layer_norm_grad);
NDL_CUDA_SLOT(masked_scale);

#endif
