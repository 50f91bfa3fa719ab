/* backend.h: a device's kernels, as a struct of function pointers.
 *
 * NDArray code never calls a kernel by name: it asks the array's device for
 * its backend and calls through this table, so the CUDA backend
 * (csrc/cuda/) slots in beside the CPU one without touching ndarray*.c.
 *
 * Conventions for every kernel slot (everything below `free`):
 *   - pointers are buffer starts on the backend's device; the kernel applies
 *     the layout's offset; layouts are as in Note [Layouts] (ndl_core.h),
 *     strides in elements, any sign, 0 for broadcast;
 *   - an output is a fresh compact row-major buffer that overlaps no input,
 *     unless the slot says otherwise;
 *   - kernels never call Python and run with the GIL released, from any
 *     thread; they return an ndl_status: NDL_OK, NDL_EINVAL for arguments
 *     the NDArray layer should have rejected (a bug, raised as RuntimeError),
 *     NDL_ENOMEM for host scratch they could not get, NDL_ENOMEM_DEVICE
 *     (ndl_core.h) for device scratch;
 *   - one dtype per call (float32 or float64) unless the slot takes two.
 *
 * Note [Optional backend slots]
 *   A slot marked (optional) may be NULL: the NDArray layer then composes the
 *   same result from required slots (the fallback named at the slot), within
 *   float rounding for the optimizer updates and exactly for the data
 *   movement. A new backend runs everything once its required slots work and
 *   adds the optional ones for speed. The NDArray layer reads an optional slot
 *   only through NDL_OPTIONAL_SLOT (ndarray.h), which the tests can switch to
 *   NULL to run every fallback on the CPU.
 *
 * Example: the CPU's pad of a (2, 3) float32 array by one zero on each side:
 *     ndl_layout la = {.ndim = 2, .shape = {2, 3}, .strides = {3, 1}};
 *     int64_t lo[] = {1, 1}, hi[] = {1, 1};
 *     float out[4 * 5];
 *     int st = ndl_cpu_backend.pad(NDL_FLOAT32, a, &la, lo, hi, out);
 */
#ifndef NDL_BACKEND_H
#define NDL_BACKEND_H

#include "ndl_core.h"

/* The attention softmax's logits (API.md 6.6): row r of x becomes
 * x / scale (scale rounded to the dtype first, as DivScalar does), plus
 * -FLT_MAX (in the dtype) at the columns j >= r % rows + n - rows + 1 when
 * causal (row r is query r % rows of a (rows, n) score matrix). */
typedef struct ndl_attention_mask {
    double scale;
    int causal;
    int64_t rows;
} ndl_attention_mask;

/* An im2col's window beyond the slot's square k: kh x kw taps, dilation d
 * apart (d = 1: adjacent), at stride s; its extent along H is (kh-1)*d + 1,
 * so Ho = (H - extent) / s + 1 (Note [Dilated windows], ndarray_conv.c). */
typedef struct {
    int64_t kh, kw, s, d;
} ndl_window;

typedef struct ndl_backend {
    const char *name; /* "cpu", "cuda": the device's name in messages */
    int host_accessible; /* buffers are plain host memory (buffer protocol ok) */
    /* Bytes of one scratch block of a lowered op (a conv's im2col rows, Note
     * [Conv in blocks of rows]): the CPU's stays in its cache; a GPU's is
     * large, so a conv is a few big matmul launches rather than hundreds. */
    size_t scratch_bytes;

    /* ---- memory ---------------------------------------------------------- */
    void *(*alloc)(size_t nbytes);  /* NULL on failure; 64-byte aligned; 0 bytes is ok */
    void (*free)(void *ptr);        /* ptr from alloc */
    /* Whole-buffer copies between host memory and this device (0 or status). */
    int (*to_host)(void *host_dst, const void *src, size_t nbytes);
    int (*from_host)(void *dst, const void *host_src, size_t nbytes);

    /* ---- strided data movement ------------------------------------------ */
    /* Every element of the dst view <- value (rounded to dt first). */
    int (*fill)(ndl_dtype dt, void *dst, const ndl_layout *ld, double value);
    /* dst view <- src view, element by element (ld, ls of one shape),
     * converting dtype; backs compact(), setitem, astype and every fallback
     * below. dst is a view here (not compact), and must not overlap src. */
    int (*copy)(ndl_dtype dst_dt, void *dst, const ndl_layout *ld,
                ndl_dtype src_dt, const void *src, const ndl_layout *ls);

    /* ---- arithmetic ------------------------------------------------------- */
    /* out = op(a); out compact with a's shape. */
    int (*unary)(ndl_unop op, ndl_dtype dt, const void *a, const ndl_layout *la, void *out);
    /* out = op(a, b); la, lb of one ndim and shape (broadcast dims carry
     * stride 0). Both are buffers on the device: a Python scalar goes to
     * `scalar` below. */
    int (*binary)(ndl_binop op, ndl_dtype dt, const void *a, const ndl_layout *la,
                  const void *b, const ndl_layout *lb, void *out);
    /* out = op(a, s), or op(s, a) when reflected; out compact with a's shape.
     * The scalar is passed by value, already rounded to dt by the caller
     * (API.md 2.8). NOTE: it used to reach binary as a pointer to one host
     * element with all strides 0, which a GPU cannot read. */
    int (*scalar)(ndl_binop op, ndl_dtype dt, const void *a, const ndl_layout *la, double s,
                  int reflected, void *out);
    /* Reduce the axes in axes_mask (at least one; every reduced axis >= 1
     * long for MAX); out compact with those axes dropped. */
    int (*reduce)(ndl_redop op, ndl_dtype dt, const void *a, const ndl_layout *la,
                  uint64_t axes_mask, void *out);
    /* batch products C_b = A_b @ B_b: A_b (m, n) at a + a_offsets[b] with row
     * and column strides rsa, csa; B_b (n, p) likewise; C compact
     * (batch, m, p). n may be 0 (C zeroed). As ndl_cpu_matmul (ndl_core.h). */
    int (*matmul)(ndl_dtype dt, int64_t batch, int64_t m, int64_t n, int64_t p,
                  const void *a, const int64_t *a_offsets, int64_t rsa, int64_t csa,
                  const void *b, const int64_t *b_offsets, int64_t rsb, int64_t csb,
                  void *c);

    /* ---- fused optimizer updates (optim_ops.h has the math) --------------
     * Compact buffers of n elements; a NULL state (m, v, u) means zeros. The
     * output states may be the input states themselves (updated in place,
     * element i read before it is written); po is always a fresh buffer. */
    /* (optional) fallback: the formula as ~12 NDArray ops (ndarray_optim.c). */
    int (*adam)(ndl_dtype dt, int64_t n, const void *p, const void *g, const void *m,
                const void *v, void *po, void *mo, void *vo, const ndl_adam_hparams *h);
    /* uo is NULL when there is no momentum (then u is ignored).
     * (optional) fallback: the formula as NDArray ops (ndarray_optim.c). */
    int (*sgd)(ndl_dtype dt, int64_t n, const void *p, const void *g, const void *u, void *po,
               void *uo, const ndl_sgd_hparams *h);

    /* ---- convolution's data movement (cpu_conv.c) ------------------------ */
    /* out = a with lo[j] zeros before and hi[j] zeros after it along every
     * axis j (lo, hi >= 0, la->ndim entries each); out compact with shape
     * la->shape[j] + lo[j] + hi[j]. Any rank, any input strides.
     * (optional) fallback: fill out with 0, then copy a into the interior. */
    int (*pad)(ndl_dtype dt, const void *a, const ndl_layout *la, const int64_t *lo,
               const int64_t *hi, void *out);
    /* out = a with the axes in axes_mask reversed (bits >= la->ndim clear);
     * out compact with a's shape.
     * (optional) fallback: copy from the view with those strides negated. */
    int (*flip)(ndl_dtype dt, const void *a, const ndl_layout *la, uint64_t axes_mask,
                void *out);
    /* out = zeros with a's element i placed at i*(d+1) along every axis in
     * axes_mask (d >= 0 zeros after each element, API.md 4.5); out compact
     * with shape la->shape[j] * (d+1) on those axes, la->shape[j] elsewhere.
     * (optional) fallback: fill out with 0, then copy a into the view of out
     * with those strides times d+1. */
    int (*dilate)(ndl_dtype dt, const void *a, const ndl_layout *la, uint64_t axes_mask,
                  int64_t d, void *out);
    /* a is (N, H, W, C), any strides, already padded; k >= 1 the kernel size,
     * s >= 1 the stride, k <= H, k <= W; Ho = (H-k)/s + 1, Wo = (W-k)/s + 1.
     * The im2col matrix is (N*Ho*Wo, k*k*C): row (n, y, x), column (i, j, c)
     * holds a[n, y*s + i, x*s + j, c]. Writes its rows [row0, row0 + nrows)
     * to out, compact (nrows, k*k*C); all rows make the compact copy of the
     * course's as_strided view (N, Ho, Wo, k, k, C). A row range lets a
     * convolution pack the matmul's A panel by panel, never the whole matrix.
     * (optional) fallback: copy from the as_strided view, one copy per run of
     * rows with one (n, y). */
    int (*im2col)(ndl_dtype dt, const void *a, const ndl_layout *la, int64_t k, int64_t s,
                  int64_t row0, int64_t nrows, void *out);

    /* ---- fused softmax rows (cpu_softmax.c; Note [Fused softmax],
     * ops_attention.c, and Note [Fused softmax loss], ops_softmax.c) -------
     * z, y, g and out are compact (rows, n) buffers, pointers to their first
     * element. Each row: m = its max, clamped to [-BIG, BIG] (BIG the dtype's
     * largest finite value; -BIG for an empty row), then exp(z - m) with
     * scalar_ops.h's ndl_exp, summed in the row's own fixed order. */
    /* out = softmax of each row of z; with mask, of x / scale + the causal
     * mask (ndl_attention_mask). out does not overlap z.
     * (optional) fallback: the formula as NDArray ops (ops_attention.c). */
    int (*softmax)(ndl_dtype dt, int64_t rows, int64_t n, const void *z,
                   const ndl_attention_mask *mask, void *out);
    /* out = y * (g - sum(g * y)) per row (softmax's gradient, y = softmax(z)).
     * (optional) fallback: the formula as NDArray ops (ops_attention.c). */
    int (*softmax_grad)(ndl_dtype dt, int64_t rows, int64_t n, const void *y, const void *g,
                        void *out);
    /* loss = the mean over rows of (m - z[r, labels[r]]) + log(sum(exp(z[r] - m))),
     * each row's sum in dt, the rest in double, the rows' values summed in
     * row order in double, divided by rows, rounded to dt: loss points to one
     * element of dt ON THIS DEVICE (a 0-d array's), so the loss never comes
     * back to the host unasked. NOTE: labels (rows int64, each in [0, n)) are
     * a HOST array: the array layer reads and checks them on the host (once a
     * step, Note [Labels read once], ops_softmax.c). rows = 0 writes nothing.
     * (optional) fallback: the composite formula (ops_softmax.c). */
    int (*softmax_xent)(ndl_dtype dt, int64_t rows, int64_t n, const void *z,
                        const int64_t *labels, void *loss);
    /* out = (softmax(z) + (-1 at labels[r], 0 elsewhere)) * gb per row: the
     * loss's gradient for an upstream gradient g, gb = g / rows computed in
     * gdt (g's dtype, as DivScalar computes it) and rounded to dt. g points to
     * the 0-d upstream gradient's one element ON THIS DEVICE, read by the
     * kernel, so the backward never waits for the forward to finish (labels a
     * HOST array as above). (optional) fallback: the composite formula (Note
     * [Fused loss backward], ops_softmax.c). */
    int (*softmax_xent_grad)(ndl_dtype dt, int64_t rows, int64_t n, const void *z,
                             const int64_t *labels, ndl_dtype gdt, const void *g, void *out);

    /* ---- fused LayerNorm and dropout rows (cpu_layernorm.c, cpu_dropout.c;
     * Note [Fused LayerNorm], ops_layernorm.c, Note [Fused dropout],
     * ops_dropout.c) --------------------------------------------------------
     * x, y, g, gx are compact (rows, n) buffers, w, b, gw, gb compact (n,).
     * Per row, in dt: mean = sum(x) / n and var = sum((x - mean)^2) / n, each
     * sum in the row's fixed order (eight lanes, row_reduce.h), eps rounded to
     * dt first (as AddScalar does). */
    /* y = w * ((x - mean) / (var + eps) ** 0.5) + b per row.
     * (optional) fallback: the formula as NDArray ops (ops_layernorm.c). */
    int (*layer_norm)(ndl_dtype dt, int64_t rows, int64_t n, const void *x, const void *w,
                      const void *b, double eps, void *y);
    /* The gradients of layer_norm for the upstream gradient g: with
     * r = (var + eps) ** -0.5, xh = (x - mean) * r, h = g * w,
     *   gx = r * ((h - sum(h) / n) - xh * (sum(h * xh) / n))   per row,
     *   gw = sum over rows of g * xh,  gb = sum over rows of g  (rows in order).
     * Any of gx, gw, gb may be NULL (not wanted). rows may be 0 (gw, gb zeroed).
     * (optional) fallback: the gradients built from ops (ops_layernorm.c). */
    int (*layer_norm_grad)(ndl_dtype dt, int64_t rows, int64_t n, const void *x, const void *w,
                           const void *g, double eps, void *gx, void *gw, void *gb);
    /* out[i] = (x[i] * m_i) / c (c rounded to dt; the Mul then DivScalar
     * kernels' numbers) for n compact elements; m_i = mask[i], or when packed
     * bit i % 16 of mask[i / 16] (ceil(n / 16) elements of dt holding the
     * integers 0 .. 65535: nn.Dropout's packed mask). mask is on this device.
     * (optional) fallback: the mask unpacked by the array layer, then the Mul
     * and DivScalar kernels (ops_dropout.c). */
    int (*masked_scale)(ndl_dtype dt, int64_t n, const void *x, const void *mask, int packed,
                        double c, void *out);

    /* ---- rows by index (cpu_rows_index.c; Note [Rows by index], ops_rnn.c) --
     * Embedding's lookup and its gradient. src, g, dst and out are compact
     * buffers ON THIS DEVICE, pointers to their first element; a row is `row`
     * elements. NOTE: idx (n int64) is a HOST array, read and checked on the
     * host by the array layer (nda_indices); the slot checks each index again
     * (in [0, rows_src) or [0, rows_out)) and returns NDL_EINVAL, writing
     * nothing, for one out of range. n = 0 or row = 0 is valid. */
    /* dst[k, :] = src[idx[k], :] for k < n; src (rows_src, row), dst (n, row),
     * not overlapping. Pure data movement: exact.
     * (optional) fallback: one copy slot call per index (array_api.c). */
    int (*take_rows)(ndl_dtype dt, const void *src, int64_t rows_src, int64_t row,
                     const int64_t *idx, int64_t n, void *dst);
    /* out = zeros (rows_out, row), then out[idx[k], :] += g[k, :] for k in
     * INCREASING order, g (n, row), not overlapping out: each element of out
     * is ((0 + g[k1]) + g[k2]) + ... over its indices k1 < k2 < ..., in dt,
     * the composite path's sums bit for bit (so repeated indices give the
     * same bits on every backend and every run).
     * (optional) fallback: a fill, then per index the binary slot's Add into
     * scratch and a copy back (array_api.c). */
    int (*scatter_add_rows)(ndl_dtype dt, const void *g, int64_t n, int64_t row,
                            const int64_t *idx, int64_t rows_out, void *out);

    /* ---- errors ----------------------------------------------------------- */
    /* (optional) The message of this thread's last NDL_EDEVICE status or
     * failed alloc ("file:line: call: CUDA message"); NULL slot: none. */
    const char *(*last_error)(void);
} ndl_backend;

extern const ndl_backend ndl_cpu_backend;

/* ---- CPU kernels of the convolution slots (cpu_conv.c) -------------------
 * Same contracts as the slots above; pure data movement, so results are
 * exact. Large jobs split over the thread pool. */
int ndl_cpu_pad(ndl_dtype dt, const void *a, const ndl_layout *la, const int64_t *lo,
                const int64_t *hi, void *out);
int ndl_cpu_flip(ndl_dtype dt, const void *a, const ndl_layout *la, uint64_t axes_mask,
                 void *out);
int ndl_cpu_dilate(ndl_dtype dt, const void *a, const ndl_layout *la, uint64_t axes_mask,
                   int64_t d, void *out);
int ndl_cpu_im2col(ndl_dtype dt, const void *a, const ndl_layout *la, int64_t k, int64_t s,
                   int64_t row0, int64_t nrows, void *out);

/* ---- CPU kernels of the fused softmax slots (cpu_softmax.c) ------------- */
int ndl_cpu_softmax(ndl_dtype dt, int64_t rows, int64_t n, const void *z,
                    const ndl_attention_mask *mask, void *out);
int ndl_cpu_softmax_grad(ndl_dtype dt, int64_t rows, int64_t n, const void *y, const void *g,
                         void *out);
int ndl_cpu_softmax_xent(ndl_dtype dt, int64_t rows, int64_t n, const void *z,
                         const int64_t *labels, void *loss);
int ndl_cpu_softmax_xent_grad(ndl_dtype dt, int64_t rows, int64_t n, const void *z,
                              const int64_t *labels, ndl_dtype gdt, const void *g, void *out);

/* ---- CPU kernels of the LayerNorm and dropout slots ---------------------- */
int ndl_cpu_layer_norm(ndl_dtype dt, int64_t rows, int64_t n, const void *x, const void *w,
                       const void *b, double eps, void *y);
int ndl_cpu_layer_norm_grad(ndl_dtype dt, int64_t rows, int64_t n, const void *x, const void *w,
                            const void *g, double eps, void *gx, void *gw, void *gb);
int ndl_cpu_masked_scale(ndl_dtype dt, int64_t n, const void *x, const void *mask, int packed,
                         double c, void *out);

/* ---- CPU kernels of the rows-by-index slots (cpu_rows_index.c) --------- */
int ndl_cpu_take_rows(ndl_dtype dt, const void *src, int64_t rows_src, int64_t row,
                      const int64_t *idx, int64_t n, void *dst);
int ndl_cpu_scatter_add_rows(ndl_dtype dt, const void *g, int64_t n, int64_t row,
                             const int64_t *idx, int64_t rows_out, void *out);

#endif
