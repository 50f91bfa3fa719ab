/* ndl_core.h: the vocabulary every layer of needle's array code shares.
 *
 * Owns: element types, strided layouts, kernel codes (generated from the op
 * rows, ../ops.def), status codes, and the kernel entry points of the
 * CPU backend. Nothing here touches Python: kernels take raw pointers,
 * shapes and strides (in elements) and return a status code; the binding
 * layer (ndarray.c) turns a status into an exception.
 *
 * Note [Layouts]
 *   A layout describes a strided view into a buffer: element (i0,...,ik) lives
 *   at base[offset + sum_j i_j * strides[j]]. Strides are in elements, may be
 *   0 (broadcast) or negative (flip). An output of a kernel is always a
 *   compact row-major buffer of the input layout's shape unless the function
 *   says otherwise.
 */
#ifndef NDL_CORE_H
#define NDL_CORE_H

#include <stddef.h>
#include <stdint.h>

#define NDL_MAX_DIMS 16

/* NDL_ASSERT(cond): an invariant the code itself guarantees (never a check
 * of user input, which raises). Active in debug and ASan builds (no
 * NDEBUG): a failure prints the file and line and aborts. */
#ifdef NDEBUG
#define NDL_ASSERT(cond) ((void)0)
#else
void ndl_assert_fail(const char *cond, const char *file, int line);
#define NDL_ASSERT(cond) ((cond) ? (void)0 : ndl_assert_fail(#cond, __FILE__, __LINE__))
#endif

typedef enum { NDL_FLOAT32 = 0, NDL_FLOAT64 = 1, NDL_NUM_DTYPES } ndl_dtype;

static inline size_t ndl_itemsize(ndl_dtype dt) { return dt == NDL_FLOAT64 ? 8 : 4; }

typedef struct {
    int ndim;
    int64_t shape[NDL_MAX_DIMS];
    int64_t strides[NDL_MAX_DIMS]; /* in elements */
    int64_t offset;                /* in elements from the buffer start */
} ndl_layout;

/* NDL_ENOMEM: host memory ran out. NDL_EDEVICE: a device call failed
 * (CUDA); the backend's last_error() has the message (Note [CUDA errors],
 * csrc/cuda/cuda_common.cuh). NDL_ENOMEM_DEVICE: a device slot's own
 * scratch allocation failed; last_error() has the allocator's record of
 * that request (Note [Out of memory detail], ndl_args.c). */
typedef enum {
    NDL_OK = 0,
    NDL_ENOMEM = 1,
    NDL_EINVAL = 2,
    NDL_EDEVICE = 3,
    NDL_ENOMEM_DEVICE = 4,
} ndl_status;

/* Kernel codes, one per row of ../ops.def (Note [One op, one row]); the
 * per-element math of NDL_UN_<K> / NDL_BIN_<K> is ndl_<k>_f32/_f64 in
 * scalar_ops.h. */
typedef enum {
#define NDL_UNARY_KERNEL(KERNEL, kernel, numpy, method) NDL_UN_##KERNEL,
#include "ops.def"
    NDL_NUM_UNARY
} ndl_unop;

typedef enum {
#define NDL_BINARY_KERNEL(KERNEL, kernel, numpy, method) NDL_BIN_##KERNEL,
#include "ops.def"
    NDL_NUM_BINARY
} ndl_binop;

typedef enum {
#define NDL_REDUCE(Class, func, KERNEL, numpy, method) NDL_RED_##KERNEL,
#include "ops.def"
    NDL_NUM_REDUCE
} ndl_redop;

extern const char *const ndl_unop_names[NDL_NUM_UNARY];
extern const char *const ndl_binop_names[NDL_NUM_BINARY];
extern const char *const ndl_redop_names[NDL_NUM_REDUCE];

/* ---- layout helpers (ndl_layout.c) ------------------------------------- */
int64_t ndl_layout_size(const ndl_layout *l);            /* prod(shape), 1 for 0-d */
void ndl_compact_strides(int ndim, const int64_t *shape, int64_t *strides);
int ndl_layout_is_contiguous(const ndl_layout *l);       /* row-major, any offset */
/* l with its axes reordered: axis i of the result is axis perm[i] of l. */
ndl_layout ndl_layout_permuted(const ndl_layout *l, const int *perm);
/* 1 when l's elements fill a block with no gaps, row-major in an axis order
 * other than l's own (a permuted compact array): that order in perm, in
 * which ndl_layout_permuted(l, perm) is contiguous (axes of length 1 first).
 * 0 for anything else, a contiguous l included (Note [Results in their
 * operand's order], ndarray_ops.c). */
int ndl_layout_dense_order(const ndl_layout *l, int *perm);

/* ---- CPU kernels --------------------------------------------------------
 * All pointers are buffer starts (the layout's offset is applied by the
 * kernel). All functions are thread-safe, never call Python, and may use the
 * thread pool for large inputs.
 */

/* out[i] = op(a[i]); out compact with a's shape. */
int ndl_cpu_unary(ndl_unop op, ndl_dtype dt, const void *a, const ndl_layout *la, void *out);

/* out[i] = op(a[i], b[i]); la and lb have the same ndim and shape (broadcast
 * dims already carry stride 0); out compact with that shape. A scalar
 * operand is passed as a pointer to one element with all strides 0. */
int ndl_cpu_binary(ndl_binop op, ndl_dtype dt, const void *a, const ndl_layout *la,
                   const void *b, const ndl_layout *lb, void *out);

/* dst view <- src view, element by element in row-major order of the common
 * shape (ld and ls have the same ndim and shape), converting dtype. Views may
 * have any strides; dst must not overlap src. */
int ndl_cpu_copy(ndl_dtype dst_dt, void *dst, const ndl_layout *ld,
                 ndl_dtype src_dt, const void *src, const ndl_layout *ls);

/* every element of the dst view <- value (rounded to dt first). */
int ndl_cpu_fill(ndl_dtype dt, void *dst, const ndl_layout *ld, double value);

/* Reduce the axes whose bit is set in axes_mask (bit j = axis j, at least
 * one bit set, every reduced axis of length >= 1 for MAX). out is compact
 * with la's shape minus the reduced axes (equivalently with them kept as 1).
 * SUM accumulates in dt with blocked/pairwise partial sums. */
int ndl_cpu_reduce(ndl_redop op, ndl_dtype dt, const void *a, const ndl_layout *la,
                   uint64_t axes_mask, void *out);

/* C = A @ B for `batch` independent products.
 *   A_b is (m, n): element (i, k) at a[a_offsets[b] + i*rsa + k*csa]
 *   B_b is (n, p): element (k, j) at b[b_offsets[b] + k*rsb + j*csb]
 *   C_b is (m, p): compact, at c + b*m*p, row-major.
 * Any strides (transposed and broadcast views need no copy). n may be 0
 * (C is zeroed). */
int ndl_cpu_matmul(ndl_dtype dt, int64_t batch, int64_t m, int64_t n, int64_t p,
                   const void *a, const int64_t *a_offsets, int64_t rsa, int64_t csa,
                   const void *b, const int64_t *b_offsets, int64_t rsb, int64_t csb,
                   void *c);

/* Fused optimizer updates (optim_ops.h has the math): compact buffers of n
 * elements; m/v (Adam) and u (SGD) may be NULL, meaning zeros; outputs are
 * fresh buffers (uo may be NULL when there is no momentum). */
typedef struct {
    double lr, beta1, beta2, eps, weight_decay;
    double bias1, bias2; /* 1 - beta1^t, 1 - beta2^t */
} ndl_adam_hparams;
typedef struct {
    double lr, momentum, weight_decay;
} ndl_sgd_hparams;
int ndl_cpu_adam(ndl_dtype dt, int64_t n, const void *p, const void *g, const void *m,
                 const void *v, void *po, void *mo, void *vo, const ndl_adam_hparams *h);
int ndl_cpu_sgd(ndl_dtype dt, int64_t n, const void *p, const void *g, const void *u, void *po,
                void *uo, const ndl_sgd_hparams *h);

/* Which micro-kernel ndl_cpu_matmul uses: "avx512", "avx2" or "generic". */
const char *ndl_cpu_matmul_kernel_name(void);
/* Which loops ndl_cpu_unary / ndl_cpu_binary use: the same names. */
const char *ndl_cpu_ewise_kernel_name(void);
/* Its register tile, cache blocks and path limits for dtype dt:
 * out = {MR, NR, MC, KC, NC, SMALL_M, SWAP_M, FILL_M, ROW_BYTES, FILL_MAX_B}
 * (B by rows with m <= SMALL_M: the axpy loops, but from m = FILL_M (0:
 * never) the filling kernels, Note [Few rows on the filling kernel], and
 * m = 1 on the one-row kernel for tasks of up to ROW_BYTES of columns (0:
 * none), Note [One row: which products]; B = W.T from m = SWAP_M, 0 for
 * never: C.T = W @ A.T, Note [x @ W.T by W @ x.T]; B above FILL_MAX_B
 * bytes is read from memory, Note [B from memory]; all in cpu_matmul.c). */
#define NDL_MATMUL_BLOCKS_N 12
int ndl_cpu_matmul_blocks(ndl_dtype dt, int64_t out[NDL_MATMUL_BLOCKS_N]);

#endif /* NDL_CORE_H */
