/* ndarray_conv.c: the convolution on NDArrays, and the data movement it
 * lowers to: flip, pad, dilate and im2col, each through the backend slot of
 * its name, and conv itself through the pad, im2col and matmul slots.
 *
 * Python equivalent (API.md 2.11, 4.5, 4.6):
 *     a.flip(axes)                  np.flip(a, axes).copy()
 *     a.pad(((lo, hi), ...))        np.pad(a, ((lo, hi), ...))
 *     _C._dilate(a, axes, d)        zeros, with a[i] at i*(d+1) along axes
 *     _C._im2col(a, k, stride)      as_strided(a, (N, Ho, Wo, k, k, C),
 *                                     (sN, s*sH, s*sW, sH, sW, sC)).copy()
 *     _C._im2col(a, k, stride, row0, nrows)
 *                                   rows [row0, row0 + nrows) of that copy
 *                                   reshaped to (N*Ho*Wo, k*k*C)
 *     _C._conv(a, w, stride, padding)
 *                                   np.tensordot(im2col(np.pad(a, padding on
 *                                     H and W), K, stride), w, 3)
 * Every data-movement function validates its arguments first (ValueError
 * naming the shape, the axes or the sizes), makes a compact output, then
 * makes one backend call: the slot, or, where the backend leaves that
 * optional slot NULL, the composition of fill and copy below (Note
 * [Optional backend slots], backend.h). conv makes one pad, then a loop of
 * im2col and matmul calls (Note [Conv in blocks of rows]). _dilate, _im2col
 * and _conv are private (tests); _skip_optional_slots is a test switch.
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <string.h>

#include "cpu_conv.h"
#include "ndarray_impl.h"
#include "threadpool.h"

/* Test hook only (ndarray.h): read with the GIL held, before a kernel runs. */
int ndl_skip_optional_slots = 0;

/* ValueError "<what>: <detail> (array shape <shape>)"; returns NULL. */
static void *shape_error(NDArrayObject *a, const char *what, const char *fmt, ...)
{
    va_list va;
    PyObject *detail, *shape;
    va_start(va, fmt);
    detail = PyUnicode_FromFormatV(fmt, va);
    va_end(va);
    shape = ndl_shape_tuple(a->layout.ndim, a->layout.shape);
    if (detail != NULL && shape != NULL)
        PyErr_Format(PyExc_ValueError, "%s: %U (array shape %R)", what, detail, shape);
    Py_XDECREF(detail);
    Py_XDECREF(shape);
    return NULL;
}

static int check_mask(NDArrayObject *a, uint64_t mask, const char *what)
{
    if ((mask >> a->layout.ndim) == 0)
        return 0;
    shape_error(a, what, "axis %d is out of range for %d dimensions",
                a->layout.ndim + __builtin_ctzll(mask >> a->layout.ndim), a->layout.ndim);
    return -1;
}

/* out, or NULL (and out released) when status is an error. */
static NDArrayObject *finish(NDArrayObject *out, int status, const char *what)
{
    if (ndl_raise_status(status, what) < 0)
        Py_CLEAR(out);
    return out;
}

/* ---- fallbacks: the optional slots composed from fill and copy ------------
 * Same arguments and contract as the slot (backend.h), plus the backend.
 * They never touch Python, so they run with the GIL released like a slot. */

static void compact_layout(int ndim, const int64_t *shape, int64_t offset, ndl_layout *l)
{
    l->ndim = ndim;
    l->offset = offset;
    memcpy(l->shape, shape, sizeof(int64_t) * ndim);
    ndl_compact_strides(ndim, shape, l->strides);
}

static int flip_composed(const ndl_backend *be, ndl_dtype dt, const void *a, const ndl_layout *la,
                         uint64_t mask, void *out)
{
    ndl_layout l = *la, lo;
    for (int j = 0; j < l.ndim; j++) {
        if (!(mask & ((uint64_t)1 << j)))
            continue;
        if (l.shape[j] > 0)
            l.offset += (l.shape[j] - 1) * l.strides[j];
        l.strides[j] = -l.strides[j];
    }
    compact_layout(la->ndim, la->shape, 0, &lo);
    return be->copy(dt, out, &lo, dt, a, &l);
}

static int pad_composed(const ndl_backend *be, ndl_dtype dt, const void *a, const ndl_layout *la,
                        const int64_t *lo, const int64_t *hi, void *out)
{
    int64_t shape[NDL_MAX_DIMS];
    ndl_layout l;
    int status;
    for (int j = 0; j < la->ndim; j++)
        shape[j] = la->shape[j] + lo[j] + hi[j];
    compact_layout(la->ndim, shape, 0, &l);
    if ((status = be->fill(dt, out, &l, 0.0)) != NDL_OK)
        return status;
    for (int j = 0; j < la->ndim; j++) {
        l.offset += lo[j] * l.strides[j];
        l.shape[j] = la->shape[j];
    }
    return be->copy(dt, out, &l, dt, a, la);
}

static int dilate_composed(const ndl_backend *be, ndl_dtype dt, const void *a,
                           const ndl_layout *la, uint64_t mask, int64_t d, void *out)
{
    int64_t shape[NDL_MAX_DIMS];
    ndl_layout l;
    int status;
    for (int j = 0; j < la->ndim; j++)
        shape[j] = la->shape[j] * (mask & ((uint64_t)1 << j) ? d + 1 : 1);
    compact_layout(la->ndim, shape, 0, &l);
    if ((status = be->fill(dt, out, &l, 0.0)) != NDL_OK)
        return status;
    for (int j = 0; j < la->ndim; j++) {
        l.shape[j] = la->shape[j];
        if (mask & ((uint64_t)1 << j))
            l.strides[j] *= d + 1;
    }
    return be->copy(dt, out, &l, dt, a, la);
}

/* The im2col rows of window w (the slot's contract, backend.h, with a
 * rectangular, dilated window: column (i, j, c) of row (n, y, x) holds
 * a[n, y*s + i*d, x*s + j*d, c]). All rows: one copy of the 6-d as_strided
 * view. A row range: one copy per stretch of rows, a 5-d view
 * (y, x, i, j, c) for whole output rows of one image, else a 4-d view
 * (x, i, j, c) for a run of rows sharing (n, y). */
static int im2col_composed(const ndl_backend *be, ndl_dtype dt, const void *a,
                           const ndl_layout *la, const ndl_window *w, int64_t row0,
                           int64_t nrows, void *out)
{
    const int64_t n = la->shape[0], c = la->shape[3], s = w->s;
    /* a one-tap axis has no dilation, and one window no stride (either may
     * be any size there: a gradient's conv) */
    const int64_t dh = w->kh > 1 ? w->d : 0, dw = w->kw > 1 ? w->d : 0;
    const int64_t ho = (la->shape[1] - (w->kh - 1) * dh - 1) / s + 1;
    const int64_t wo = (la->shape[2] - (w->kw - 1) * dw - 1) / s + 1;
    const int64_t sh = ho > 1 ? s : 0, sw = wo > 1 ? s : 0;
    const int64_t *st = la->strides, kkc = w->kh * w->kw * c, end = row0 + nrows;
    ndl_layout src, dst;
    int status = NDL_OK;
    if (row0 == 0 && nrows == n * ho * wo) {
        int64_t shape[6] = {n, ho, wo, w->kh, w->kw, c};
        int64_t strides[6] = {st[0], sh * st[1], sw * st[2], dh * st[1], dw * st[2], st[3]};
        compact_layout(6, shape, la->offset, &src);
        memcpy(src.strides, strides, sizeof strides);
        compact_layout(6, shape, 0, &dst);
        return be->copy(dt, out, &dst, dt, a, &src);
    }
    for (int64_t r = row0, done = 0, len; r < end && status == NDL_OK; r += len, done += len) {
        int64_t x = r % wo, y = (r / wo) % ho, b = r / wo / ho;
        int64_t off = la->offset + b * st[0] + y * sh * st[1] + x * sw * st[2];
        if (x == 0 && end - r >= wo) { /* whole rows y, y+1, ... of image b */
            int64_t ny = (end - r) / wo < ho - y ? (end - r) / wo : ho - y;
            int64_t shape[5] = {ny, wo, w->kh, w->kw, c};
            int64_t strides[5] = {sh * st[1], sw * st[2], dh * st[1], dw * st[2], st[3]};
            compact_layout(5, shape, off, &src);
            memcpy(src.strides, strides, sizeof strides);
            compact_layout(5, shape, done * kkc, &dst);
            len = ny * wo;
        } else {
            int64_t shape[4];
            len = wo - x < end - r ? wo - x : end - r;
            shape[0] = len, shape[1] = w->kh, shape[2] = w->kw, shape[3] = c;
            compact_layout(4, shape, off, &src);
            src.strides[0] = sw * st[2], src.strides[1] = dh * st[1];
            src.strides[2] = dw * st[2], src.strides[3] = st[3];
            compact_layout(4, shape, done * kkc, &dst);
        }
        status = be->copy(dt, out, &dst, dt, a, &src);
    }
    return status;
}

/* ---- flip and pad (API.md 2.11) ------------------------------------------- */

NDArrayObject *ndl_array_flip(NDArrayObject *a, uint64_t mask)
{
    const ndl_backend *be = a->device->backend;
    NDArrayObject *out;
    int status;
    if (check_mask(a, mask, "flip") < 0)
        return NULL;
    /* A copy even when nothing moves: flip always returns a new array. */
    out = ndl_array_empty(a->device, a->dtype, a->layout.ndim, a->layout.shape);
    if (out == NULL)
        return NULL;
    NDL_KERNEL_CALL(ndl_array_size(a), status,
                    NDL_OPTIONAL_SLOT(be, flip)
                        ? be->flip(a->dtype, a->storage->data, &a->layout, mask,
                                   out->storage->data)
                        : flip_composed(be, a->dtype, a->storage->data, &a->layout, mask,
                                        out->storage->data));
    return finish(out, status, "flip");
}

NDArrayObject *ndl_array_pad(NDArrayObject *a, const int64_t *lo, const int64_t *hi)
{
    const ndl_backend *be = a->device->backend;
    int64_t shape[NDL_MAX_DIMS];
    NDArrayObject *out;
    int status;
    for (int j = 0; j < a->layout.ndim; j++) {
        if (lo[j] < 0 || hi[j] < 0)
            return shape_error(a, "pad", "negative padding (%lld, %lld) on axis %d",
                               (long long)lo[j], (long long)hi[j], j);
        if (__builtin_add_overflow(a->layout.shape[j], lo[j], &shape[j]) ||
            __builtin_add_overflow(shape[j], hi[j], &shape[j]))
            return shape_error(a, "pad", "padding (%lld, %lld) on axis %d is too large",
                               (long long)lo[j], (long long)hi[j], j);
    }
    out = ndl_array_empty(a->device, a->dtype, a->layout.ndim, shape);
    if (out == NULL)
        return NULL;
    NDL_KERNEL_CALL(ndl_array_size(out), status,
                    NDL_OPTIONAL_SLOT(be, pad)
                        ? be->pad(a->dtype, a->storage->data, &a->layout, lo, hi,
                                  out->storage->data)
                        : pad_composed(be, a->dtype, a->storage->data, &a->layout, lo, hi,
                                       out->storage->data));
    return finish(out, status, "pad");
}

/* a.flip(axes): axes None (every axis), an int, a tuple or list of ints, or
 * the ints themselves as arguments; negative axes count from the end. */
PyObject *NDArray_flip(NDArrayObject *self, PyObject *args)
{
    int64_t axes[NDL_MAX_DIMS], norm[NDL_MAX_DIMS];
    int naxes = -1;
    uint64_t mask;
    PyObject *s = PyTuple_GET_SIZE(args) == 1 ? PyTuple_GET_ITEM(args, 0) : args;
    if (s != Py_None && ndl_parse_shape(s, &naxes, axes, "flip: axes") < 0)
        return NULL;
    if (ndl_normalize_axes(naxes, axes, self->layout.ndim, 0, "flip", NULL, norm, &mask) < 0)
        return NULL;
    return (PyObject *)ndl_array_flip(self, mask);
}

/* One (left, right) pair of ints from any 2-sequence; -1 with ValueError
 * naming entry i of `all` otherwise. */
static int parse_pair(PyObject *pair, int i, PyObject *all, int64_t *lo, int64_t *hi)
{
    PyObject *seq = PySequence_Fast(pair, "");
    Py_ssize_t v[2];
    int ok = seq != NULL && PySequence_Fast_GET_SIZE(seq) == 2;
    for (int k = 0; ok && k < 2; k++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, k);
        v[k] = PyIndex_Check(item) ? PyNumber_AsSsize_t(item, PyExc_OverflowError) : -1;
        ok = PyIndex_Check(item) && !(v[k] == -1 && PyErr_Occurred());
    }
    Py_XDECREF(seq);
    if (!ok) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "pad: entry %d of %R is not a (left, right) pair of ints",
                     i, all);
        return -1;
    }
    *lo = v[0], *hi = v[1];
    return 0;
}

/* a.pad(axes): one (left, right) pair per dimension. */
PyObject *NDArray_pad(NDArrayObject *self, PyObject *args)
{
    PyObject *axes, *seq;
    int ndim = self->layout.ndim;
    int64_t lo[NDL_MAX_DIMS], hi[NDL_MAX_DIMS];
    NDArrayObject *out = NULL;
    if (!PyArg_ParseTuple(args, "O:pad", &axes))
        return NULL;
    seq = PySequence_Fast(axes, "pad: axes must be a sequence of (left, right) pairs");
    if (seq == NULL)
        return NULL;
    if (PySequence_Fast_GET_SIZE(seq) != ndim) {
        PyErr_Format(PyExc_ValueError,
                     "pad: need one (left, right) pair per dimension (%d), got %R", ndim, axes);
        goto fail;
    }
    for (int i = 0; i < ndim; i++)
        if (parse_pair(PySequence_Fast_GET_ITEM(seq, i), i, axes, &lo[i], &hi[i]) < 0)
            goto fail;
    out = ndl_array_pad(self, lo, hi);
fail:
    Py_DECREF(seq);
    return (PyObject *)out;
}

/* ---- dilate (API.md 4.5) -------------------------------------------------- */

NDArrayObject *ndl_array_dilate(NDArrayObject *a, uint64_t axes_mask, int64_t d)
{
    const ndl_backend *be = a->device->backend;
    int64_t shape[NDL_MAX_DIMS];
    NDArrayObject *out;
    int status;
    if (check_mask(a, axes_mask, "dilate") < 0)
        return NULL;
    if (d < 0)
        return shape_error(a, "dilate", "dilation must be >= 0, got %lld", (long long)d);
    for (int j = 0; j < a->layout.ndim; j++) {
        shape[j] = a->layout.shape[j];
        if ((axes_mask & ((uint64_t)1 << j)) &&
            (d == INT64_MAX || __builtin_mul_overflow(shape[j], d + 1, &shape[j])))
            return shape_error(a, "dilate", "dilation %lld makes axis %d too long", (long long)d,
                               j);
    }
    out = ndl_array_empty(a->device, a->dtype, a->layout.ndim, shape);
    if (out == NULL)
        return NULL;
    NDL_KERNEL_CALL(ndl_array_size(out), status,
                    NDL_OPTIONAL_SLOT(be, dilate)
                        ? be->dilate(a->dtype, a->storage->data, &a->layout, axes_mask, d,
                                     out->storage->data)
                        : dilate_composed(be, a->dtype, a->storage->data, &a->layout, axes_mask,
                                          d, out->storage->data));
    return finish(out, status, "dilate");
}

/* ---- im2col (API.md 4.6) -------------------------------------------------- */

typedef struct {
    int64_t ho, wo, rows, kkc; /* output size, im2col matrix (rows, kkc) */
} im2col_dims;

static int im2col_check(NDArrayObject *a, int64_t k, int64_t s, im2col_dims *dm)
{
    const int64_t *sh = a->layout.shape;
    if (a->layout.ndim != 4) {
        shape_error(a, "im2col", "expected an (N, H, W, C) array");
        return -1;
    }
    if (k < 1 || s < 1) {
        shape_error(a, "im2col", "kernel size %lld and stride %lld must be >= 1", (long long)k,
                    (long long)s);
        return -1;
    }
    if (k > sh[1] || k > sh[2]) {
        shape_error(a, "im2col", "kernel size %lld is larger than H=%lld or W=%lld",
                    (long long)k, (long long)sh[1], (long long)sh[2]);
        return -1;
    }
    dm->ho = (sh[1] - k) / s + 1;
    dm->wo = (sh[2] - k) / s + 1;
    if (__builtin_mul_overflow(sh[0], dm->ho, &dm->rows) ||
        __builtin_mul_overflow(dm->rows, dm->wo, &dm->rows) ||
        __builtin_mul_overflow(k, k, &dm->kkc) ||
        __builtin_mul_overflow(dm->kkc, sh[3], &dm->kkc)) {
        shape_error(a, "im2col", "kernel size %lld gives too many elements", (long long)k);
        return -1;
    }
    return 0;
}

/* Rows [row0, row0 + nrows) into out (compact, nrows * kkc elements). */
static NDArrayObject *im2col_run(NDArrayObject *a, int64_t k, int64_t s, int64_t row0,
                                 int64_t nrows, int64_t kkc, NDArrayObject *out)
{
    const ndl_backend *be = a->device->backend;
    int status;
    NDL_KERNEL_CALL(nrows * kkc, status,
                    NDL_OPTIONAL_SLOT(be, im2col)
                        ? be->im2col(a->dtype, a->storage->data, &a->layout, k, s, row0, nrows,
                                     out->storage->data)
                        : im2col_composed(be, a->dtype, a->storage->data, &a->layout,
                                          &(ndl_window){k, k, s, 1}, row0, nrows,
                                          out->storage->data));
    return finish(out, status, "im2col");
}

NDArrayObject *ndl_array_im2col(NDArrayObject *a, int64_t k, int64_t stride)
{
    im2col_dims dm;
    int64_t shape[6];
    NDArrayObject *out;
    if (im2col_check(a, k, stride, &dm) < 0)
        return NULL;
    shape[0] = a->layout.shape[0], shape[1] = dm.ho, shape[2] = dm.wo;
    shape[3] = k, shape[4] = k, shape[5] = a->layout.shape[3];
    out = ndl_array_empty(a->device, a->dtype, 6, shape);
    if (out == NULL)
        return NULL;
    return im2col_run(a, k, stride, 0, dm.rows, dm.kkc, out);
}

/* ---- conv (API.md 4.6) ----------------------------------------------------
 *
 * Note [Conv in blocks of rows]
 *   out (N, Ho, Wo, Co) viewed as (N*Ho*Wo, Co) is the im2col matrix of the
 *   padded input, (N*Ho*Wo, Kh*Kw*C), times the weight viewed as
 *   (Kh*Kw*C, Co). That matrix is Kh*Kw times the input, so it is never
 *   built whole: the input is padded once, then for each block of `br` rows
 *   the im2col slot writes the block into a scratch buffer (the backend's
 *   scratch_bytes: in cache on the CPU; 64 MB on a GPU, where a kernel
 *   launch costs more than the memory), and the matmul slot multiplies it
 *   into the same rows of out.
 *   On the CPU the padding is not a copy either: the im2col reads the
 *   input as if padded (Note [im2col with implicit padding], cpu_conv.c).
 *   The loops call only backend slots, so they run with the GIL released;
 *   each slot spreads its own work over the thread pool.
 *   - 1x1 kernel, stride 1, no padding: no im2col; the input viewed as
 *     (N*H*W, C) is the matrix.
 *   - Dual form, for stride 1 when the output has fewer rows (N*Ho*Wo) than
 *     the kernel has entries (Kh*Kw*C), as in the weight gradient's convs
 *     (Note [Conv's gradients are convs], ../autograd/ops_conv.c), whose
 *     kernel is as large as the input: rows that long would not fit a
 *     block. The same sums are
 *       out[n, i, j, o] = sum over (c, t, u) of X[n, i+t, j+u, c] w[t, u, c, o]
 *     where the (c, t, u) rows of the im2col matrix of X^T = (C, Hp, Wp, N)
 *     with an Ho x Wo window hold X[n, i+t, j+u, c] at column (i, j, n).
 *     So blocks of those rows (each only Ho*Wo*N long) are multiplied,
 *     transposed, by the matching rows of w as a (C*Kh*Kw, Co) matrix, and
 *     the (Ho*Wo*N, Co) products are summed block by block (split-K; the
 *     binary slot adds them). The weight gradient's X^T is the forward's
 *     input itself, so its im2col is the forward's, with square windows.
 *   - On the CPU every window goes to the CPU's im2col (any kh x kw, stride
 *     and dilation); elsewhere a window that is not square or is dilated
 *     takes the composed im2col (copy slot).
 *   NOTE: the matmul writes block b at row r0 of out, an interior pointer:
 *   plain pointer arithmetic on the buffer, valid for host and CUDA memory.
 */

/* Note [Dilated windows]
 *   A general conv (Conv's gradients only) may space its kernel's taps d
 *   apart: out[n, y, x, o] sums a[n, y*s + i*d, x*s + j*d, c] w[i, j, c, o].
 *   The weight's gradient of a stride-s conv is such a conv, with d = s and
 *   the output gradient g as its Ho x Wo kernel (Note [Conv's gradients are
 *   convs], ../autograd/ops_conv.c); the course's construction dilates g
 *   instead, and its zeros cost s^2 times the multiply-adds.
 *   - direct form: the im2col's window has the taps d apart (the CPU's
 *     im2col copies a kernel row's taps one run of C each instead of one
 *     run of kw*C; the composed one multiplies the view's strides by d);
 *   - dual form (stride 1, Note [Conv in blocks of rows]): the dilation
 *     becomes the dual im2col's stride. For the weight gradient of a
 *     strided conv, that im2col is the forward's own: (N*Ho*Wo, K*K*C_in)
 *     transposed into the matmul, times g (N*Ho*Wo, C_out): the usual
 *     im2col^T @ g.
 *   ResNet9's 7x7 stride-4 stem at batch 64, 32x32 (AMD EPYC Zen 2, 2
 *   threads): its weight gradient 19 ms -> 0.7 ms (a 53,824-long dilated
 *   kernel, 94% zeros, against 4,096 rows), a ResNet9 Adam step 17-35 ms ->
 *   14-15 ms.
 *   A one-tap axis has no dilation (it may then be any size: a gradient's
 *   conv of a stride past the input). */

/* Note [Strided channels]
 *   nn.Conv hands the conv its NCHW input as an NHWC view, whose channels
 *   are H*W apart. With padding, the CPU either pads a compact copy (a
 *   transposing copy, then im2col copies runs of kw*C) or has im2col gather
 *   each window's channels from the view (strided loads, K*K/s^2 times per
 *   input element). Batch 32 or 64 on 2 threads (AMD EPYC Zen 2), copy ->
 *   gather: 64 -> 64 channels 3x3 at 32x32 20 -> 45 ms, 64 -> 128 stride 2
 *   11 -> 15, 16 -> 32 2.9 -> 5.5; at ResNet9's small sizes, against the
 *   same conv on a compact input: 16 -> 32 stride 2 at 8x8 1.4x -> 1.8x,
 *   64 -> 128 stride 2 at 2x2 1.2x -> 1.5x, 32 -> 32 at 4x4 1.7x -> 1.3x;
 *   with three channels the gather wins, ResNet9's 3 -> 16 7x7 stride-4
 *   stem 0.74 -> 0.43 ms (the transposing copy moves 12-byte rows; 3x3 at
 *   32x32: a tie). So im2col gathers with at most NDL_CONV_GATHER_MAX_C
 *   channels, and from channels 0 apart (a broadcast, as y.sum()'s gradient
 *   reaches the input gradient's conv), where each run is one value
 *   repeated: the padded copy of such an input cost 0.4 ms of a 7.7 ms
 *   step (16 -> 32 channels 3x3 at 32x32, batch 32, conv(x, w).sum()
 *   .backward(), 2 threads: 7.7 -> 7.3 ms). That input gradient (32 -> 16
 *   channels) has since gone to Note [Conv rows in place] (cpu_conv_rows.c),
 *   which pads a compact copy of a broadcast input; the gather serves the
 *   convs that stay on im2col (more output channels, kw*C past KC). */
#define NDL_CONV_GATHER_MAX_C 4

/* The fewest rows a block (of the backend's scratch_bytes) has: enough to
 * keep the matmul's register tiles full (direct), and to keep the adds of
 * the dual form small beside the products. */
#define NDL_CONV_BLOCK_MIN_ROWS 96
#define NDL_CONV_DUAL_MIN_ROWS 256

/* ValueError "conv: <detail> (input shape <a>, weight shape <w>)". */
static int conv_error(int andim, const int64_t *ash, int wndim, const int64_t *wsh,
                      const char *fmt, ...)
{
    va_list va;
    PyObject *detail, *ta = ndl_shape_tuple(andim, ash), *tw = ndl_shape_tuple(wndim, wsh);
    va_start(va, fmt);
    detail = PyUnicode_FromFormatV(fmt, va);
    va_end(va);
    if (detail != NULL && ta != NULL && tw != NULL)
        PyErr_Format(PyExc_ValueError, "conv: %U (input shape %R, weight shape %R)", detail, ta,
                     tw);
    Py_XDECREF(detail);
    Py_XDECREF(ta);
    Py_XDECREF(tw);
    return -1;
}

int ndl_conv_check(int andim, const int64_t *ash, int wndim, const int64_t *wsh, int64_t stride,
                   int64_t dilation, const int64_t *lo, const int64_t *hi, int general,
                   int64_t *oshape)
{
    const int64_t limit = (int64_t)1 << 40; /* keeps every sum below exact */
    if (andim != 4)
        return conv_error(andim, ash, wndim, wsh, "the input must be 4-D (N, H, W, C_in)");
    if (wndim != 4)
        return conv_error(andim, ash, wndim, wsh, "the weight must be 4-D (K, K, C_in, C_out)");
    if (!general && wsh[0] != wsh[1])
        return conv_error(andim, ash, wndim, wsh, "the kernel must be square, got %lld x %lld",
                          (long long)wsh[0], (long long)wsh[1]);
    if (wsh[2] != ash[3])
        return conv_error(andim, ash, wndim, wsh,
                          "the input has C_in = %lld channels but the weight expects %lld",
                          (long long)ash[3], (long long)wsh[2]);
    if (stride < 1)
        return conv_error(andim, ash, wndim, wsh, "stride must be >= 1, got %lld",
                          (long long)stride);
    if (dilation < 1 || (!general && dilation != 1))
        return conv_error(andim, ash, wndim, wsh, "dilation must be %s, got %lld",
                          general ? ">= 1" : "1", (long long)dilation);
    for (int j = 0; j < 2; j++) {
        int64_t hp, extent;
        if (!general && (lo[j] < 0 || hi[j] < 0))
            return conv_error(andim, ash, wndim, wsh, "padding must be >= 0, got %lld",
                              (long long)(lo[j] < 0 ? lo[j] : hi[j]));
        if (lo[j] > limit || hi[j] > limit || lo[j] < -limit || hi[j] < -limit)
            return conv_error(andim, ash, wndim, wsh, "padding %lld is too large",
                              (long long)(lo[j] > limit || lo[j] < -limit ? lo[j] : hi[j]));
        hp = ash[1 + j] + lo[j] + hi[j];
        /* the kernel spans extent + 1 rows, its taps `dilation` apart */
        if (wsh[j] < 1 || __builtin_mul_overflow(wsh[j] - 1, dilation, &extent) ||
            extent >= hp)
            return conv_error(andim, ash, wndim, wsh,
                              "the %lld x %lld kernel does not fit in the padded input, "
                              "%lld x %lld (padding %lld)",
                              (long long)wsh[0], (long long)wsh[1],
                              (long long)(ash[1] + lo[0] + hi[0]),
                              (long long)(ash[2] + lo[1] + hi[1]), (long long)lo[j]);
        oshape[1 + j] = (hp - extent - 1) / stride + 1;
    }
    oshape[0] = ash[0], oshape[3] = wsh[3];
    /* Note [Checked sizes] (ndl_checked.h): a zero C_out or N must not let a
     * huge padding through (found by fuzz/). */
    return ndl_check_nonnegative(4, oshape, "conv: output shape");
}

typedef struct {
    const ndl_backend *be;
    ndl_dtype dt;
    int cpu;               /* im2col by the CPU's (any window), else the slot or composed */
    int implicit;          /* the CPU's im2col, padding x by plo/phi on the fly */
    int64_t plo[2], phi[2];
    const void *x;         /* im2col's input (B, Hp, Wp, C), any strides */
    ndl_layout lx;
    ndl_window win;        /* its window, stride and dilation */
    int64_t rows, len, co; /* the im2col matrix is (rows, len); co output channels */
    int64_t br;            /* rows per block */
    void *col;             /* scratch (br, len), one per slot (in parallel) */
    int slots;             /* blocks (direct) or groups (dual) run on this many threads */
    const void *w;         /* weight matrix, (len, co) direct, (rows, co) dual */
    int64_t woff, rsw, csw;
    char *out;             /* direct: compact (rows, co) */
    int64_t groups;        /* dual: Note [Dual blocks in groups] */
    const void *g;         /* transposed: g as (rows, co) */
    int64_t goff, rsg, csg, ho, wo, oshape[4];
    char *acc;             /* dual: (len, co) buffers: one per group, then two per
                            * slot (a product, the next sum), then one more */
} conv_job;

static int im2col_block(const conv_job *j, int64_t r0, int64_t nr, void *col)
{
    static const int64_t zero[2] = {0, 0};
    if (j->cpu) /* any window; padding on the fly where `implicit` */
        return ndl_cpu_im2col_padded(j->dt, j->x, &j->lx, &j->win, j->implicit ? j->plo : zero,
                                     j->implicit ? j->phi : zero, r0, nr, col);
    if (j->win.kh == j->win.kw && j->win.d == 1 && NDL_OPTIONAL_SLOT(j->be, im2col))
        return j->be->im2col(j->dt, j->x, &j->lx, j->win.kh, j->win.s, r0, nr, col);
    return im2col_composed(j->be, j->dt, j->x, &j->lx, &j->win, r0, nr, col);
}

/* The rows of the block that starts at row r0: br, or fewer for the last. */
static int64_t block_rows(const conv_job *j, int64_t r0)
{
    return j->rows - r0 < j->br ? j->rows - r0 : j->br;
}

/* Slot `slot`'s im2col scratch, (br, len). */
static char *slot_col(const conv_job *j, int64_t slot)
{
    return (char *)j->col + slot * j->br * j->len * (int64_t)ndl_itemsize(j->dt);
}

/* Note [Conv blocks in parallel]
 *   With several threads on the CPU, each thread takes whole blocks, or
 *   groups of blocks (Note [Dual blocks in groups]), from a shared counter
 *   (its own scratch, im2col and a one-thread matmul: the pool runs nested
 *   calls inline), instead of every block's im2col and matmul being split
 *   over the pool in turn: two pool synchronizations per block (hundreds
 *   per convolution), where a thread that the OS has descheduled on a
 *   loaded machine stalls all the others each time. Taking blocks from a
 *   counter also balances the load. With fewer than two blocks a thread,
 *   the blocks are cut smaller (down to NDL_CONV_BLOCK_MIN_ROWS rows) so
 *   that each thread gets two: ResNet9's 16 -> 32 stride-2 conv at 8x8,
 *   batch 64 (1,024 rows, three blocks of 455) 0.09 -> 0.07 ms on 2 threads
 *   (AMD EPYC Zen 2), and 0.22 -> 0.07 ms in the minutes when this guest's
 *   two vCPUs answer each other slowly. */
typedef int (*conv_item_fn)(const conv_job *j, int64_t item, int64_t slot);

typedef struct {
    const conv_job *j;
    conv_item_fn fn;
    int64_t items;
    atomic_llong next_item, next_slot;
    atomic_int status;
} conv_par;

static void conv_par_task(void *ctx, int64_t begin, int64_t end)
{
    conv_par *d = ctx;
    /* one slot per call: parallel_for makes at most j->slots chunks */
    const int64_t slot = atomic_fetch_add(&d->next_slot, 1);
    (void)begin, (void)end;
    for (;;) {
        int64_t i = atomic_fetch_add(&d->next_item, 1);
        int status;
        if (i >= d->items || atomic_load(&d->status) != NDL_OK)
            return;
        if ((status = d->fn(d->j, i, slot)) != NDL_OK)
            atomic_store(&d->status, status);
    }
}

/* fn(j, i, slot) for every i in [0, items): on j->slots threads taking
 * items from a counter (Note [Conv blocks in parallel]), or in order on
 * this one with slot 0. Touches no Python. */
static int conv_items(const conv_job *j, int64_t items, conv_item_fn fn)
{
    int status = NDL_OK;
    if (j->slots > 1) {
        conv_par d = {.j = j, .fn = fn, .items = items};
        atomic_init(&d.next_item, 0);
        atomic_init(&d.next_slot, 0);
        atomic_init(&d.status, NDL_OK);
        ndl_parallel_for(j->slots, 1, conv_par_task, &d);
        return atomic_load(&d.status);
    }
    for (int64_t i = 0; i < items && status == NDL_OK; i++)
        status = fn(j, i, 0);
    return status;
}

/* Note [Conv in blocks of rows], direct: out[r0:r0+nr] = (im2col rows
 * [r0, r0 + nr)) @ w for block b (r0 = b * br), through the slot's scratch. */
static int direct_block(const conv_job *j, int64_t b, int64_t slot)
{
    const int64_t zero = 0, es = (int64_t)ndl_itemsize(j->dt), r0 = b * j->br;
    const int64_t nr = block_rows(j, r0);
    char *col = slot_col(j, slot);
    int status = im2col_block(j, r0, nr, col);
    if (status == NDL_OK)
        status = j->be->matmul(j->dt, 1, nr, j->len, j->co, col, &zero, j->len, 1, j->w, &j->woff,
                               j->rsw, j->csw, j->out + r0 * j->co * es);
    return status;
}

/* Note [Dual blocks in groups]
 *   The dual form sums one (len, co) product per block of rows. Its blocks
 *   are cut into `groups` runs of consecutive blocks, a number that depends
 *   on the block count alone (up to NDL_CONV_DUAL_GROUPS), never on the
 *   threads: each group's products are summed in block order into the
 *   group's buffer, then the groups' sums in group order. On the CPU with
 *   several threads each thread takes whole groups from a counter (its own
 *   scratch, im2col and one-thread matmul, as in Note [Conv blocks in
 *   parallel]), so the sums are the same bits on any number of threads;
 *   elsewhere (a GPU, with blocks of 64 MB) there is one group. Splitting
 *   each block's small matmul over the threads instead (m = K*K*C_in rows,
 *   k = one block, n = C_out) made two threads slower than one: the weight
 *   gradient of a 16 -> 32 channel 3x3 conv at batch 32, 32x32 took 9.6 ms
 *   on two threads and 4.3 on one (AMD EPYC Zen 2); in groups 2.4 ms. */
#define NDL_CONV_DUAL_GROUPS 8

/* Buffer k of j->acc. */
static void *acc_buf(const conv_job *j, int64_t k)
{
    return j->acc + k * j->len * j->co * (int64_t)ndl_itemsize(j->dt);
}

/* Group g's sum into its buffer, through the slot's scratch and its two
 * buffers (a product, the next sum). */
static int dual_group(const conv_job *j, int64_t g, int64_t slot)
{
    const int64_t zero = 0, nb = (j->rows + j->br - 1) / j->br;
    const int64_t b0 = g * nb / j->groups, b1 = (g + 1) * nb / j->groups;
    ndl_layout l = {.ndim = 1, .shape = {j->len * j->co}, .strides = {1}};
    char *col = slot_col(j, slot);
    void *gsum = acc_buf(j, g), *sum = gsum, *prod = acc_buf(j, j->groups + 2 * slot);
    void *tmp = acc_buf(j, j->groups + 2 * slot + 1);
    int status = NDL_OK;
    for (int64_t b = b0; b < b1 && status == NDL_OK; b++) {
        int64_t r0 = b * j->br, woff = j->woff + r0 * j->rsw;
        int64_t nr = block_rows(j, r0);
        status = im2col_block(j, r0, nr, col);
        if (status == NDL_OK)
            status = j->be->matmul(j->dt, 1, j->len, nr, j->co, col, &zero, 1, j->len, j->w,
                                   &woff, j->rsw, j->csw, b == b0 ? gsum : prod);
        if (status == NDL_OK && b > b0) {
            void *next = sum == gsum ? tmp : gsum;
            status = j->be->binary(NDL_BIN_ADD, j->dt, sum, &l, prod, &l, next);
            sum = next;
        }
    }
    if (status == NDL_OK && sum != gsum)
        status = j->be->copy(j->dt, gsum, &l, j->dt, sum, &l);
    return status;
}

/* Note [Conv in blocks of rows], dual: *sum = the sum over blocks of
 * col^T @ w[r0:r0+nr], (len, co), one of j->acc's buffers (Note [Dual
 * blocks in groups]). Touches no Python. */
static int conv_dual(const conv_job *j, void **sum)
{
    ndl_layout l = {.ndim = 1, .shape = {j->len * j->co}, .strides = {1}};
    void *first = acc_buf(j, 0), *spare = acc_buf(j, j->groups + 2 * j->slots);
    int status = conv_items(j, j->groups, dual_group);
    *sum = first;
    for (int64_t g = 1; g < j->groups && status == NDL_OK; g++) {
        void *next = *sum == first ? spare : first;
        status = j->be->binary(NDL_BIN_ADD, j->dt, *sum, &l, acc_buf(j, g), &l, next);
        *sum = next;
    }
    return status;
}

/* 1 and *stride when axes [first, first + n) of l merge into one axis of
 * that stride (row-major; size-1 axes merge with anything, and the stride
 * may be 0, a broadcast), else 0. */
static int merged_stride(const ndl_layout *l, int first, int n, int64_t *stride)
{
    int64_t extent = 1; /* elements spanned by the axes after i */
    int seen = 0;
    *stride = 1;
    for (int i = first + n - 1; i >= first; i--) {
        if (l->shape[i] == 1)
            continue;
        if (!seen)
            *stride = l->strides[i], seen = 1;
        else if (l->strides[i] != *stride * extent)
            return 0;
        extent *= l->shape[i];
    }
    return 1;
}

/* j's weight matrix from w, with w's axes in the order perm: its first three
 * axes merged into rows (a compact copy when they do not merge). The copy,
 * if any, is kept in *keep. */
static int conv_weight(conv_job *j, NDArrayObject *w, const int *perm, NDArrayObject **keep)
{
    ndl_layout l = ndl_layout_permuted(&w->layout, perm);
    NDArrayObject *v;
    if (!merged_stride(&l, 0, 3, &j->rsw)) {
        v = ndl_array_view(w, &l);
        *keep = v ? ndl_array_compact(v) : NULL;
        Py_XDECREF(v);
        if (*keep == NULL)
            return -1;
        w = *keep;
        l = w->layout;
    }
    j->w = w->storage->data, j->woff = l.offset;
    merged_stride(&l, 0, 3, &j->rsw);
    j->csw = l.strides[3];
    return 0;
}

/* a and w checked, of one dtype and device; lo/hi any sign. */
static NDArrayObject *conv_run(NDArrayObject *a, NDArrayObject *w, int64_t s, int64_t d,
                               const int64_t *lo, const int64_t *hi, const int64_t *oshape)
{
    static const int same[4] = {0, 1, 2, 3}, swap03[4] = {3, 1, 2, 0}, ctuo[4] = {2, 0, 1, 3};
    const ndl_backend *be = a->device->backend;
    const int64_t kh = w->layout.shape[0], kw = w->layout.shape[1], ci = w->layout.shape[2];
    const int64_t es = (int64_t)ndl_itemsize(a->dtype), nrows = oshape[0] * oshape[1] * oshape[2];
    int64_t plo[4] = {0}, phi[4] = {0}, shape[2], rsa, nb;
    ndl_layout la = a->layout, lsum, lout;
    NDArrayObject *cw = NULL, *view = NULL, *x = NULL, *col = NULL, *out = NULL, *res = NULL;
    NDArrayObject *acc = NULL;
    conv_job j = {.be = be, .dt = a->dtype, .co = w->layout.shape[3]};
    /* dual needs ci >= 1 (rows of its im2col); work counts multiply-adds */
    int status = NDL_OK, pad = 0, dual = s == 1 && nrows < kh * kw * ci;
    double work = (double)nrows * (double)(kh * kw * ci) * (double)j.co;
    void *sum;
    out = ndl_array_empty(a->device, a->dtype, 4, oshape);
    if (out == NULL || nrows == 0 || j.co == 0)
        goto done;
    /* negative padding crops (a view); positive padding is one pad. The
     * padded axis holds the input at [lo, lo + n) of L = n + lo + hi >= 1;
     * a crop may reach past the input into the other side's zeros (a
     * gradient's padding, with a stride above Hp - K: found by fuzz/), and
     * then no input is left and the axis is L zeros. */
    for (int k = 0; k < 2; k++) {
        int64_t n = la.shape[1 + k], len = n + lo[k] + hi[k];
        int64_t first = lo[k] < 0 ? -lo[k] : 0, end = len - lo[k] < n ? len - lo[k] : n;
        if (end <= first)
            first = end = 0;
        la.offset += first * la.strides[1 + k], la.shape[1 + k] = end - first;
        plo[1 + k] = end > first ? (lo[k] > 0 ? lo[k] : 0) : len;
        phi[1 + k] = len - plo[1 + k] - (end - first);
        pad |= plo[1 + k] > 0 || phi[1 + k] > 0;
    }
    if (conv_weight(&j, w, dual ? ctuo : same, &cw) < 0)
        goto fail;
    j.out = out->storage->data;
    if (kh == 1 && kw == 1 && s == 1 && !pad && merged_stride(&la, 0, 3, &rsa)) {
        /* 1x1: the input itself is the (rows, C) matrix */
        int64_t aoff = la.offset;
        NDL_KERNEL_CALL(work / 8, status,
                        be->matmul(j.dt, 1, nrows, ci, j.co, a->storage->data, &aoff, rsa,
                                   la.strides[3], j.w, &j.woff, j.rsw, j.csw, j.out));
        goto done;
    }
    /* Note [Conv rows in place] (cpu_conv_rows.c): stride 1 on the CPU, no im2col */
    if (!dual && s == 1 && d == 1 && NDL_OPTIONAL_SLOT(be, im2col) == ndl_cpu_im2col &&
        ndl_cpu_conv_rows_fit(j.dt, kw, ci, oshape[2], j.co)) {
        if ((view = ndl_array_view(a, &la)) == NULL)
            goto fail;
        x = !pad && ndl_array_is_compact(view) ? (NDArrayObject *)Py_NewRef(view)
                                               : ndl_array_pad(view, plo, phi);
        if (x == NULL)
            goto fail;
        NDL_KERNEL_CALL(work / 8, status,
                        ndl_cpu_conv_rows(j.dt, (char *)x->storage->data + x->layout.offset * es,
                                          oshape[0], x->layout.shape[1], x->layout.shape[2], ci,
                                          kh, kw, (const char *)j.w + j.woff * es, j.rsw, j.csw,
                                          j.co, j.out));
        goto done;
    }
    /* im2col's input: the padded input, or (dual) its transpose (C, Hp, Wp, N)
     * with an Ho x Wo window at the kernel's taps (Note [Dilated windows]) */
    j.win = dual ? (ndl_window){.kh = oshape[1], .kw = oshape[2], .s = d, .d = 1}
                 : (ndl_window){.kh = kh, .kw = kw, .s = s, .d = d};
    j.rows = dual ? ci * kh * kw : nrows;
    j.len = dual ? nrows : kh * kw * ci;
    j.cpu = NDL_OPTIONAL_SLOT(be, im2col) == ndl_cpu_im2col;
    /* Note [im2col with implicit padding] (cpu_conv.c): no padded copy, when
     * the channels are contiguous (runs of C elements to copy), and when
     * they are strided (NCHW input seen as NHWC, nn.Conv's) but few (Note
     * [Strided channels]). Otherwise the padded copy also makes them
     * contiguous, which im2col needs more. */
    if (dual)
        la = ndl_layout_permuted(&la, swap03);
    j.implicit = pad && j.cpu &&
                 (la.strides[3] == 1 || la.strides[3] == 0 || la.shape[3] <= NDL_CONV_GATHER_MAX_C);
    for (int k = 0; k < 2; k++)
        j.plo[k] = plo[1 + k], j.phi[k] = phi[1 + k];
    view = ndl_array_view(a, &la);
    x = view && pad && !j.implicit ? ndl_array_pad(view, plo, phi)
                                   : (NDArrayObject *)Py_XNewRef(view);
    if (x == NULL)
        goto fail;
    j.x = x->storage->data, j.lx = x->layout;
    j.br = j.len ? (int64_t)(be->scratch_bytes / (size_t)(j.len * es)) : j.rows;
    if (j.br < (dual ? NDL_CONV_DUAL_MIN_ROWS : NDL_CONV_BLOCK_MIN_ROWS))
        j.br = dual ? NDL_CONV_DUAL_MIN_ROWS : NDL_CONV_BLOCK_MIN_ROWS;
    if (j.br > j.rows)
        j.br = j.rows;
    /* Note [Conv blocks in parallel]: the CPU's threads, when each gets
     * blocks; Note [Dual blocks in groups] */
    j.slots = 1;
    nb = (j.rows + j.br - 1) / j.br;
    if (dual) {
        j.groups = be->matmul != ndl_cpu_backend.matmul ? 1
                   : nb < NDL_CONV_DUAL_GROUPS         ? nb
                                                       : NDL_CONV_DUAL_GROUPS;
        if (j.groups > 1)
            j.slots = ndl_get_num_threads() < j.groups ? ndl_get_num_threads() : (int)j.groups;
    } else if (be->matmul == ndl_cpu_backend.matmul && ndl_get_num_threads() > 1) {
        /* fewer than two blocks a thread: smaller ones, if they stay long */
        int64_t t = ndl_get_num_threads(), b = (j.rows + 2 * t - 1) / (2 * t);
        if (nb < 2 * t && b >= NDL_CONV_BLOCK_MIN_ROWS)
            j.br = b, nb = (j.rows + b - 1) / b;
        if (j.rows >= 4 * j.br)
            j.slots = (int)t;
    }
    shape[0] = j.slots * j.br, shape[1] = j.len;
    col = ndl_array_empty(a->device, a->dtype, 2, shape);
    shape[0] = j.groups + 2 * j.slots + 1, shape[1] = j.len * j.co;
    acc = col && dual ? ndl_array_empty(a->device, a->dtype, 2, shape) : NULL;
    if (col == NULL || (dual && acc == NULL))
        goto fail;
    j.col = col->storage->data;
    if (!dual) {
        NDL_KERNEL_CALL(work / 8, status, conv_items(&j, nb, direct_block));
        goto done;
    }
    j.acc = acc->storage->data;
    NDL_KERNEL_CALL(work / 8, status, conv_dual(&j, &sum));
    if (status != NDL_OK)
        goto done;
    /* the sum is (Ho, Wo, N, Co); out is (N, Ho, Wo, Co) */
    lsum = (ndl_layout){.ndim = 4, .shape = {oshape[1], oshape[2], oshape[0], j.co},
                        .offset = ((char *)sum - (char *)acc->storage->data) / es};
    ndl_compact_strides(4, lsum.shape, lsum.strides);
    lout = ndl_layout_permuted(&out->layout, (const int[]){1, 2, 0, 3});
    NDL_KERNEL_CALL(nrows * j.co, status,
                    be->copy(j.dt, j.out, &lout, j.dt, acc->storage->data, &lsum));
done:
    if (out != NULL && ndl_raise_status(status, "conv") == 0)
        res = (NDArrayObject *)Py_NewRef(out);
fail:
    Py_XDECREF(cw);
    Py_XDECREF(view);
    Py_XDECREF(x);
    Py_XDECREF(col);
    Py_XDECREF(acc);
    Py_XDECREF(out);
    return res;
}

/* ---- transposed conv -------------------------------------------------------
 *
 * Note [Transposed conv]
 *   The input gradient of a stride-s conv, dA[n, h, w, c] = the sum over
 *   y*s + i = h + lo, x*s + j = w + lo of g[n, y, x, o] B[i, j, c, o], is
 *   that conv's adjoint in its input. The course builds it as a conv of g
 *   dilated by s - 1 (Note [Conv's gradients are convs]), whose zeros cost
 *   s^2 times the multiply-adds; here it is computed as what it is: per
 *   block of g's rows, col = g_block @ B^T (rows, Kh*Kw*C_in), and col2im
 *   adds each row's taps into dA (cpu_conv.c). Blocks are whole images, so
 *   threads that take blocks (Note [Conv blocks in parallel]) add into
 *   disjoint images, each element's sum in row and tap order on any thread
 *   count; an image longer than a block takes its blocks in order on one
 *   thread (the matmuls split over the pool). CPU only: elsewhere (and in
 *   np mode) nda_conv_transpose builds the dilated conv.
 *   Forward and input gradient, 2 threads, AMD EPYC Zen 2 (measured with
 *   the CI running beside it, the old and new builds interleaved): 64 ->
 *   128 channels, stride 2, 32x32, batch 32: 74 -> 33 ms; ResNet9's 16 ->
 *   32 at 8x8 and 32 -> 64 at 4x4, batch 64: 0.76 -> 0.46 and 0.64 ->
 *   0.29-0.47 ms.
 */

static int transpose_block(const conv_job *j, int64_t b, int64_t slot)
{
    const int64_t r0 = b * j->br, nr = block_rows(j, r0);
    int64_t goff = j->goff + r0 * j->rsg;
    char *col = slot_col(j, slot);
    int status = j->be->matmul(j->dt, 1, nr, j->co, j->len, j->g, &goff, j->rsg, j->csg, j->w,
                               &j->woff, j->csw, j->rsw, col);
    if (status == NDL_OK)
        ndl_cpu_col2im_add(j->dt, col, r0, nr, j->oshape, j->win.kh, j->win.kw, j->win.s, j->plo,
                           j->ho, j->wo, j->out);
    return status;
}

NDArrayObject *ndl_array_conv_transpose(NDArrayObject *g, NDArrayObject *w, int64_t s,
                                        const int64_t *lo, const int64_t *ohw)
{
    static const int same[4] = {0, 1, 2, 3};
    const ndl_backend *be = g->device->backend;
    const int64_t es = (int64_t)ndl_itemsize(g->dtype), n = g->layout.shape[0];
    const int64_t kh = w->layout.shape[0], kw = w->layout.shape[1];
    int64_t shape[2], per_image, fit, nb, rsg;
    conv_job j = {.be = be, .dt = g->dtype, .co = g->layout.shape[3]};
    NDArrayObject *out, *gc = NULL, *cw = NULL, *col = NULL, *res = NULL;
    int status = NDL_OK;
    j.oshape[0] = n, j.oshape[1] = ohw[0], j.oshape[2] = ohw[1], j.oshape[3] = w->layout.shape[2];
    out = ndl_array_empty(g->device, g->dtype, 4, j.oshape);
    if (out == NULL)
        return NULL;
    NDL_KERNEL_CALL(ndl_array_size(out), status,
                    be->fill(j.dt, out->storage->data, &out->layout, 0.0));
    j.ho = g->layout.shape[1], j.wo = g->layout.shape[2], j.len = kh * kw * j.oshape[3];
    per_image = j.ho * j.wo, j.rows = n * per_image;
    if (status != NDL_OK || j.rows == 0 || j.len == 0 || j.co == 0 || ndl_array_size(out) == 0)
        goto done;
    if (!merged_stride(&g->layout, 0, 3, &rsg)) {
        if ((gc = ndl_array_compact(g)) == NULL)
            goto fail;
        g = gc;
        merged_stride(&g->layout, 0, 3, &rsg);
    }
    j.g = g->storage->data, j.goff = g->layout.offset, j.rsg = rsg;
    j.csg = g->layout.strides[3];
    if (conv_weight(&j, w, same, &cw) < 0)
        goto fail;
    j.win = (ndl_window){.kh = kh, .kw = kw, .s = s, .d = 1};
    j.plo[0] = lo[0], j.plo[1] = lo[1], j.out = out->storage->data;
    fit = (int64_t)(be->scratch_bytes / (size_t)(j.len * es));
    if (fit < NDL_CONV_BLOCK_MIN_ROWS)
        fit = NDL_CONV_BLOCK_MIN_ROWS;
    j.slots = 1;
    if (fit >= per_image) { /* whole images a block: two blocks a thread where it can */
        int64_t t = ndl_get_num_threads(), ipb = fit / per_image, half = (n + 2 * t - 1) / (2 * t);
        if (t > 1 && ipb > half)
            ipb = half;
        j.br = ipb * per_image, nb = (n + ipb - 1) / ipb;
        if (t > 1 && nb > 1)
            j.slots = (int)(t < nb ? t : nb);
    } else {
        j.br = fit, nb = (j.rows + fit - 1) / fit;
    }
    shape[0] = j.slots * j.br, shape[1] = j.len;
    if ((col = ndl_array_empty(g->device, g->dtype, 2, shape)) == NULL)
        goto fail;
    j.col = col->storage->data;
    NDL_KERNEL_CALL((double)j.rows * (double)j.len * (double)j.co / 8, status,
                    conv_items(&j, nb, transpose_block));
done:
    if (ndl_raise_status(status, "conv") == 0)
        res = (NDArrayObject *)Py_NewRef(out);
fail:
    Py_XDECREF(gc);
    Py_XDECREF(cw);
    Py_XDECREF(col);
    Py_XDECREF(out);
    return res;
}

NDArrayObject *ndl_array_conv_general(NDArrayObject *a, NDArrayObject *w, int64_t stride,
                                      int64_t dilation, const int64_t *lo, const int64_t *hi,
                                      int general)
{
    int64_t oshape[4];
    ndl_dtype dt = a->dtype > w->dtype ? a->dtype : w->dtype;
    NDArrayObject *ca, *cw, *out = NULL;
    if (ndl_conv_check(a->layout.ndim, a->layout.shape, w->layout.ndim, w->layout.shape, stride,
                       dilation, lo, hi, general, oshape) < 0 ||
        ndl_check_same_device(a, w, "conv") < 0)
        return NULL;
    ca = ndl_array_astype(a, dt); /* a float32/float64 mix computes in float64 */
    cw = ca ? ndl_array_astype(w, dt) : NULL;
    if (cw != NULL)
        out = conv_run(ca, cw, stride, dilation, lo, hi, oshape);
    Py_XDECREF(ca);
    Py_XDECREF(cw);
    return out;
}

NDArrayObject *ndl_array_conv(NDArrayObject *a, NDArrayObject *w, int64_t stride,
                              int64_t padding)
{
    int64_t p[2] = {padding, padding};
    return ndl_array_conv_general(a, w, stride, 1, p, p, 0);
}

/* ---- private module functions --------------------------------------------- */

/* _dilate(a, axes, d): axes an int or a sequence of ints; axes >= ndim are
 * ignored (Dilate's rule), negative ones count from the end. */
static PyObject *py_dilate(PyObject *mod, PyObject *args)
{
    NDArrayObject *a;
    PyObject *axes_obj;
    long long d;
    int64_t axes[NDL_MAX_DIMS], norm[NDL_MAX_DIMS];
    int naxes;
    uint64_t mask;
    if (!PyArg_ParseTuple(args, "O!OL:_dilate", &NDArray_Type, &a, &axes_obj, &d) ||
        ndl_parse_shape(axes_obj, &naxes, axes, "dilate: axes") < 0 ||
        ndl_normalize_axes(naxes, axes, a->layout.ndim, 1, "dilate", NULL, norm, &mask) < 0)
        return NULL;
    return (PyObject *)ndl_array_dilate(a, mask, d);
}

/* _im2col(a, k, stride) -> (N, Ho, Wo, k, k, C);
 * _im2col(a, k, stride, row0, nrows) -> those rows of the (N*Ho*Wo, k*k*C)
 * matrix, as an (nrows, k*k*C) array. */
static PyObject *py_im2col(PyObject *mod, PyObject *args)
{
    NDArrayObject *a, *out;
    long long k, s, row0 = -1, nrows = -1;
    im2col_dims dm;
    int64_t shape[2];
    if (!PyArg_ParseTuple(args, "O!LL|LL:_im2col", &NDArray_Type, &a, &k, &s, &row0, &nrows))
        return NULL;
    if (PyTuple_GET_SIZE(args) == 3)
        return (PyObject *)ndl_array_im2col(a, k, s);
    if (PyTuple_GET_SIZE(args) != 5) {
        PyErr_SetString(PyExc_TypeError, "_im2col: give both row0 and nrows, or neither");
        return NULL;
    }
    if (im2col_check(a, k, s, &dm) < 0)
        return NULL;
    if (row0 < 0 || nrows < 0 || row0 > dm.rows || nrows > dm.rows - row0)
        return shape_error(a, "im2col", "row0=%lld, nrows=%lld is not a range within the %lld "
                           "rows of the im2col matrix (k=%lld, stride=%lld)",
                           row0, nrows, (long long)dm.rows, k, s);
    shape[0] = nrows, shape[1] = dm.kkc;
    out = ndl_array_empty(a->device, a->dtype, 2, shape);
    if (out == NULL)
        return NULL;
    return (PyObject *)im2col_run(a, k, s, row0, nrows, dm.kkc, out);
}

/* _conv(a, w, stride=1, padding=0, dilation=1): ndl_array_conv, or with a
 * dilation other than 1 the general conv (tests: Note [Dilated windows]). */
static PyObject *py_conv(PyObject *mod, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"a", "w", "stride", "padding", "dilation", NULL};
    NDArrayObject *a, *w;
    long long s = 1, p = 0, d = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!|LLL:_conv", kwlist, &NDArray_Type, &a,
                                     &NDArray_Type, &w, &s, &p, &d))
        return NULL;
    if (d != 1) {
        const int64_t pp[2] = {p, p};
        return (PyObject *)ndl_array_conv_general(a, w, s, d, pp, pp, 1);
    }
    return (PyObject *)ndl_array_conv(a, w, s, p);
}

/* _skip_optional_slots(flag) -> the previous flag. Tests only: while set,
 * NDArray code takes the fallback of every optional backend slot. */
static PyObject *py_skip_optional_slots(PyObject *mod, PyObject *arg)
{
    int flag = PyObject_IsTrue(arg), prev = ndl_skip_optional_slots;
    if (flag < 0)
        return NULL;
    ndl_skip_optional_slots = flag;
    return PyBool_FromLong(prev);
}

PyMethodDef ndl_conv_functions[] = {
    {"_dilate", py_dilate, METH_VARARGS,
     "_dilate(a, axes, d): a copy with d zeros after every element along axes (API.md 4.5)."},
    {"_im2col", py_im2col, METH_VARARGS,
     "_im2col(a, k, stride[, row0, nrows]): a (N, H, W, C) -> the compact (N, Ho, Wo, k, k, C) "
     "im2col view, or rows [row0, row0 + nrows) of it as an (nrows, k*k*C) array."},
    {"_conv", (PyCFunction)(void (*)(void))py_conv, METH_VARARGS | METH_KEYWORDS,
     "_conv(a, w, stride=1, padding=0, dilation=1): a (N, H, W, C_in) convolved with w "
     "(K, K, C_in, C_out), cross-correlation, zero padding on both sides (API.md 4.6); the "
     "kernel's taps `dilation` apart (a general conv, as Conv's gradients make)."},
    {"_skip_optional_slots", py_skip_optional_slots, METH_O,
     "_skip_optional_slots(flag) -> previous flag. Tests only: use the composed fallback of "
     "every optional backend slot (adam, sgd, pad, flip, dilate, im2col)."},
    {NULL, NULL, 0, NULL},
};
