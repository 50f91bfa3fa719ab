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

extern "C" {
#include "backend.h"
#include "ndl_core.h"
}

/* Records the failure (see the Note) and returns NDL_EDEVICE. */
int ndl_cuda_fail(cudaError_t err, const char *file, int line, const char *call);
/* Records a message of the caller's own (an out-of-memory report). */
void ndl_cuda_set_error(const char *msg);
extern "C" const char *ndl_cuda_last_error(void);

#define NDL_CUDA_TRY(call)                                                                         \
    do {                                                                                           \
        cudaError_t ndl_err_ = (call);                                                             \
        if (ndl_err_ != cudaSuccess)                                                               \
            return ndl_cuda_fail(ndl_err_, __FILE__, __LINE__, #call);                             \
    } while (0)

/* After a <<<...>>> launch: a bad configuration fails here. */
#define NDL_CUDA_LAUNCHED() NDL_CUDA_TRY(cudaGetLastError())

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

/* The kernel slots (one file each), gathered in cuda_backend.cu. */
int ndl_cuda_fill(ndl_dtype dt, void *dst, const ndl_layout *ld, double value);
int ndl_cuda_copy(ndl_dtype dst_dt, void *dst, const ndl_layout *ld, ndl_dtype src_dt,
                  const void *src, const ndl_layout *ls);
int ndl_cuda_unary(ndl_unop op, ndl_dtype dt, const void *a, const ndl_layout *la, void *out);
int ndl_cuda_binary(ndl_binop op, ndl_dtype dt, const void *a, const ndl_layout *la,
                    const void *b, const ndl_layout *lb, void *out);
int ndl_cuda_scalar(ndl_binop op, ndl_dtype dt, const void *a, const ndl_layout *la, double s,
                    int reflected, void *out);
int ndl_cuda_reduce(ndl_redop op, ndl_dtype dt, const void *a, const ndl_layout *la,
                    uint64_t axes_mask, void *out);
int ndl_cuda_matmul(ndl_dtype dt, int64_t batch, int64_t m, int64_t n, int64_t p, const void *a,
                    const int64_t *a_offsets, int64_t rsa, int64_t csa, const void *b,
                    const int64_t *b_offsets, int64_t rsb, int64_t csb, void *c);
int ndl_cuda_adam(ndl_dtype dt, int64_t n, const void *p, const void *g, const void *m,
                  const void *v, void *po, void *mo, void *vo, const ndl_adam_hparams *h);
int ndl_cuda_sgd(ndl_dtype dt, int64_t n, const void *p, const void *g, const void *u, void *po,
                 void *uo, const ndl_sgd_hparams *h);
int ndl_cuda_pad(ndl_dtype dt, const void *a, const ndl_layout *la, const int64_t *lo,
                 const int64_t *hi, void *out);
int ndl_cuda_flip(ndl_dtype dt, const void *a, const ndl_layout *la, uint64_t axes_mask,
                  void *out);
int ndl_cuda_dilate(ndl_dtype dt, const void *a, const ndl_layout *la, uint64_t axes_mask,
                    int64_t d, void *out);
int ndl_cuda_im2col(ndl_dtype dt, const void *a, const ndl_layout *la, int64_t k, int64_t s,
                    int64_t row0, int64_t nrows, void *out);
int ndl_cuda_softmax(ndl_dtype dt, int64_t rows, int64_t n, const void *z,
                     const ndl_attention_mask *mask, void *out);
int ndl_cuda_softmax_grad(ndl_dtype dt, int64_t rows, int64_t n, const void *y, const void *g,
                          void *out);
int ndl_cuda_softmax_xent(ndl_dtype dt, int64_t rows, int64_t n, const void *z,
                          const int64_t *labels, double *loss);
void *ndl_cuda_alloc(size_t nbytes);
void ndl_cuda_free(void *ptr);
int ndl_cuda_to_host(void *host_dst, const void *src, size_t nbytes);
int ndl_cuda_from_host(void *dst, const void *host_src, size_t nbytes);

#endif
