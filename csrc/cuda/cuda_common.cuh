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
 * ndl_args.c: a slot's NDL_ENOMEM_DEVICE is raised as a MemoryError with
 * such a record, any other record as a RuntimeError). */
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

/* Note [Launch sites]
 *   Every kernel launch is written NDL_LAUNCH(grid, block, kernel)(args...):
 *   the kernel comes last so that a template-id with commas
 *   (reduce_warp_kernel<R, T>) is one macro argument. Under nvcc it is
 *   exactly kernel<<<grid, block>>>(args...) (no dynamic shared memory, the
 *   legacy default stream). Under the CPU emulator (NDL_CUDA_EMU, Note [The
 *   CUDA emulator], emu/cuda_runtime.h) it is a launcher object whose
 *   operator() converts args to the kernel's parameter types, as a launch
 *   copies them, and runs the grid on this thread. */
#ifdef NDL_CUDA_EMU
#define NDL_LAUNCH(grid, block, ...)                                                               \
    ndl_emu::launcher(&__VA_ARGS__, #__VA_ARGS__, (grid), (block), __FILE__, __LINE__)
#else
#define NDL_LAUNCH(grid, block, ...) __VA_ARGS__<<<grid, block>>>
#endif

/* After an NDL_LAUNCH: a bad configuration fails here. */
#define NDL_CUDA_LAUNCHED() NDL_CUDA_TRY(cudaGetLastError())
/* The same as a status, for a caller that has scratch to free first. */
#define NDL_CUDA_LAUNCH_STATUS(what) ndl_cuda_launch_status(__FILE__, __LINE__, what)
static inline int ndl_cuda_launch_status(const char *file, int line, const char *what)
{
    cudaError_t err = cudaGetLastError();
    return err == cudaSuccess ? NDL_OK : ndl_cuda_fail(err, file, line, what);
}

/* The statement `launch` with T the C type of dt (double or float):
 *     NDL_CU_DTYPE(dt, T, NDL_LAUNCH(b, t, kernel<T>)(n, (const T *)x, (T *)out));
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

/* Note [Grid caps]
 *   A grid dimension that could pass what a GPU allows is capped, and the
 *   kernel covers the rest: the grid-stride loops over elements
 *   (ndl_cu_blocks: 65536 blocks, 16M elements a turn) and over rows
 *   (row_blocks, cuda_rows.cuh), the matmul's loops over m tiles and batch
 *   (y, z), the reductions' and layer norm's loops in x; and a sum cut into
 *   chunks along y takes longer chunks rather than more than 65535 of them.
 *   So every element is covered at any size, but on a GPU these second
 *   turns and longer chunks start only past tens of millions of elements,
 *   sizes no test affords under the emulator. There, NDL_CUDA_EMU_GRID=<g>
 *   (or needle._cuda_emu._set_grid_cap(g)) lowers every such cap to g, so
 *   they run at the tests' sizes: `make cuda-emu` runs test_cuda.py again
 *   with g = 1 and g = 3. nvcc's build has the GPU's caps only. */
#ifdef NDL_CUDA_EMU
namespace ndl_emu {
int64_t grid_cap(void); /* 0: none */
}
#endif

/* limit (a grid dimension's cap), or the emulator's lower one. */
static inline int64_t ndl_cu_grid_limit(int64_t limit)
{
#ifdef NDL_CUDA_EMU
    const int64_t cap = ndl_emu::grid_cap();
    if (cap > 0 && cap < limit)
        return cap;
#endif
    return limit;
}

/* want blocks (>= 1), at most limit (Note [Grid caps]). */
static inline unsigned ndl_cu_grid(int64_t want, int64_t limit)
{
    limit = ndl_cu_grid_limit(limit);
    return (unsigned)(want < 1 ? 1 : (want > limit ? limit : want));
}

/* Blocks for a grid-stride loop over n elements (n > 0): enough to fill the
 * GPU, never more than the grid allows; the loop covers the rest, so any n
 * up to 2^63 is covered. */
static inline unsigned ndl_cu_blocks(int64_t n)
{
    return ndl_cu_grid((n + NDL_CU_THREADS - 1) / NDL_CU_THREADS, 65536);
}

/* Offset of the i-th element (row-major order of l's shape) in l's view,
 * 0 <= i < prod(l.shape): a division per axis but the outermost, where i is
 * already the index along it (so a 1-axis view costs a multiply). */
__host__ __device__ __forceinline__ int64_t ndl_cu_offset(const ndl_layout &l, int64_t i)
{
    int64_t off = l.offset;
    for (int d = l.ndim - 1; d > 0; --d) {
        int64_t s = l.shape[d], q = i / s;
        off += (i - q * s) * l.strides[d];
        i = q;
    }
    return l.ndim > 0 ? off + i * l.strides[0] : off;
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

/* Note [Merged axes]
 *   ndl_cu_offset divides once per axis but the outermost, per element and
 *   per operand. Before a launch the host rewrites the n layouts of one
 *   shape (the operands of an ewise op, the two sides of a copy, a
 *   reduction's kept or reduced axes) into fewer axes: it drops size-1
 *   axes (their index is always 0, so their stride never counts) and
 *   merges axis d into the kept axis before it when, in EVERY layout,
 *   stride[before] == shape[d] * stride[d]: stepping the outer axis by one
 *   is then stepping the inner one shape[d] times, so the pair is one axis
 *   of shape[before] * shape[d] and stride[d]. Both rewrites keep the
 *   offset of the i-th element in row-major order, for every i and every
 *   layout (same results by construction), and keep every layout's shape
 *   the same as the others', so the compact output's flat index i and the
 *   merged operands still agree. A broadcast axis (stride 0) merges with
 *   a neighbouring broadcast axis; a transposed or sliced pair does not
 *   merge, and keeps its own division. A layout that merges to one axis of
 *   stride 1 (or to none: one element) is contiguous and takes the flat
 *   path. E.g. compact() of x.permute((1, 0, 2, 3))[:, :, 1:3] for a
 *   compact x (2, 3, 4, 5): the view (3, 2, 2, 5) with strides
 *   (20, 60, 5, 1) and the output's (20, 10, 5, 1) merge to (3, 2, 10)
 *   with (20, 60, 1) and (20, 10, 1): the view divides for 2 axes, not 4,
 *   and the output is contiguous (flat). Layouts of different shapes
 *   (a caller's bug) are left as they are; a product that would overflow
 *   int64 is not merged. */
static inline void ndl_cu_merge_axes(ndl_layout *l, int n)
{
    int nd = 0;
    for (int k = 1; k < n; k++) {
        if (l[k].ndim != l[0].ndim)
            return;
        for (int d = 0; d < l[0].ndim; d++)
            if (l[k].shape[d] != l[0].shape[d])
                return;
    }
    for (int d = 0; d < l[0].ndim; d++) {
        int64_t step;
        int merge = nd > 0;
        if (l[0].shape[d] == 1)
            continue;
        for (int k = 0; k < n && merge; k++)
            merge = !__builtin_mul_overflow(l[k].shape[d], l[k].strides[d], &step) &&
                    l[k].strides[nd - 1] == step;
        for (int k = 0; k < n; k++) {
            if (merge) {
                l[k].shape[nd - 1] *= l[k].shape[d];
                l[k].strides[nd - 1] = l[k].strides[d];
            } else {
                l[k].shape[nd] = l[k].shape[d];
                l[k].strides[nd] = l[k].strides[d];
            }
        }
        nd += !merge;
    }
    for (int k = 0; k < n; k++)
        l[k].ndim = nd;
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
NDL_CUDA_SLOT(take_rows);
NDL_CUDA_SLOT(scatter_add_rows);

#endif
