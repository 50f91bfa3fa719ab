/* cpu_conv.c: the data movement a convolution needs, on the CPU: pad, flip,
 * dilate and im2col (the backend slots of those names, backend.h).
 *
 * Python equivalent (NumPy, x any strided view, out compact):
 *     pad:    out = np.pad(x, list(zip(lo, hi)))
 *     flip:   out = np.flip(x, axes).copy()
 *     dilate: out = zeros(shape with n -> n*(d+1) on axes); out[::d+1 on axes] = x
 *     im2col: a is (N, H, W, C); the view
 *               as_strided(a, (N, Ho, Wo, k, k, C), (sN, s*sH, s*sW, sH, sW, sC))
 *             reshaped to (N*Ho*Wo, k*k*C), rows [row0, row0 + nrows), copied
 * Pad, flip and dilate are strided fills and copies, so they ride on
 * cpu_copy.c's kernels (dimension merging, transpose tiles, the thread
 * pool); pad writes every output element exactly once. im2col has its own
 * loop, over output rows, so that a caller can ask for any block of rows
 * (a matmul panel) without building the rest. No kernel here calls Python.
 */
#include <string.h>

#include "backend.h"
#include "cpu_conv.h"
#include "cpu_strided.h"
#include "threadpool.h"

/* ---- pad ------------------------------------------------------------------ */

/* out is compact (la->shape[j] + lo[j] + hi[j]); a is any view la.
 * The zeros go in 2*ndim disjoint slabs: slab (j, side) is the part of out
 * inside a's extent along the axes before j, outside it (before or after)
 * along j, and anything along the axes after j. Then a goes in the middle. */
int ndl_cpu_pad(ndl_dtype dt, const void *a, const ndl_layout *la, const int64_t *lo,
                const int64_t *hi, void *out)
{
    ndl_layout lout, inner, slab;
    int nd, status;
    if ((unsigned)dt >= NDL_NUM_DTYPES || !ndl_layout_ok(la) || (la->ndim > 0 && (!lo || !hi)))
        return NDL_EINVAL;
    nd = la->ndim;
    lout.ndim = nd, lout.offset = 0;
    for (int j = 0; j < nd; j++) {
        if (lo[j] < 0 || hi[j] < 0 ||
            __builtin_add_overflow(la->shape[j], lo[j], &lout.shape[j]) ||
            __builtin_add_overflow(lout.shape[j], hi[j], &lout.shape[j]))
            return NDL_EINVAL;
    }
    ndl_compact_strides(nd, lout.shape, lout.strides);
    if (ndl_layout_size(&lout) == 0)
        return NDL_OK;
    /* `inner`: the view of out where a goes; the slabs grow out of it. */
    inner = lout;
    for (int j = 0; j < nd; j++) {
        inner.offset += lo[j] * lout.strides[j];
        inner.shape[j] = la->shape[j];
    }
    for (int j = 0; j < nd; j++) {
        slab = lout;
        for (int k = 0; k < j; k++) {
            slab.shape[k] = la->shape[k];
            slab.offset += lo[k] * lout.strides[k];
        }
        slab.shape[j] = lo[j];
        if ((status = ndl_cpu_fill(dt, out, &slab, 0.0)) != NDL_OK)
            return status;
        slab.offset += (lo[j] + la->shape[j]) * lout.strides[j];
        slab.shape[j] = hi[j];
        if ((status = ndl_cpu_fill(dt, out, &slab, 0.0)) != NDL_OK)
            return status;
    }
    return ndl_cpu_copy(dt, out, &inner, dt, a, la);
}

/* ---- flip ----------------------------------------------------------------- */

int ndl_cpu_flip(ndl_dtype dt, const void *a, const ndl_layout *la, uint64_t axes_mask,
                 void *out)
{
    ndl_layout l, lout;
    if ((unsigned)dt >= NDL_NUM_DTYPES || !ndl_layout_ok(la) || (axes_mask >> la->ndim) != 0)
        return NDL_EINVAL;
    /* Reversing axis j = reading it from its last element with stride -s. */
    l = *la;
    for (int j = 0; j < l.ndim; j++) {
        if (!(axes_mask & ((uint64_t)1 << j)))
            continue;
        if (l.shape[j] > 0)
            l.offset += (l.shape[j] - 1) * l.strides[j];
        l.strides[j] = -l.strides[j];
    }
    lout = l;
    lout.offset = 0;
    ndl_compact_strides(lout.ndim, lout.shape, lout.strides);
    return ndl_cpu_copy(dt, out, &lout, dt, a, &l);
}

/* ---- dilate --------------------------------------------------------------- */

/* Dilating axis j by d is padding a unit axis inserted after j by (0, d):
 * out viewed as (..., n_j, d+1, ...) holds a at [..., i, 0, ...]. So dilate
 * is one pad of a's layout with those unit axes added (each element written
 * once); only when they would not fit in NDL_MAX_DIMS is out zeroed first
 * and a copied into the view of out with strides times d+1. */
int ndl_cpu_dilate(ndl_dtype dt, const void *a, const ndl_layout *la, uint64_t axes_mask,
                   int64_t d, void *out)
{
    ndl_layout lx, lout;
    int64_t plo[NDL_MAX_DIMS] = {0}, phi[NDL_MAX_DIMS] = {0};
    int nd, nx = 0, status;
    if ((unsigned)dt >= NDL_NUM_DTYPES || !ndl_layout_ok(la) || d < 0 || d == INT64_MAX ||
        (axes_mask >> la->ndim) != 0)
        return NDL_EINVAL;
    nd = la->ndim;
    lout.ndim = nd, lout.offset = 0;
    for (int j = 0; j < nd; j++) {
        lout.shape[j] = la->shape[j];
        if ((axes_mask & ((uint64_t)1 << j)) &&
            __builtin_mul_overflow(la->shape[j], d + 1, &lout.shape[j]))
            return NDL_EINVAL;
    }
    ndl_compact_strides(nd, lout.shape, lout.strides);
    if (ndl_layout_size(&lout) == 0)
        return NDL_OK;
    if (nd + __builtin_popcountll(axes_mask) <= NDL_MAX_DIMS) {
        lx.offset = la->offset;
        for (int j = 0; j < nd; j++) {
            lx.shape[nx] = la->shape[j], lx.strides[nx] = la->strides[j];
            nx++;
            if (axes_mask & ((uint64_t)1 << j)) {
                lx.shape[nx] = 1, lx.strides[nx] = 0, phi[nx] = d;
                nx++;
            }
        }
        lx.ndim = nx;
        return ndl_cpu_pad(dt, a, &lx, plo, phi, out);
    }
    if ((status = ndl_cpu_fill(dt, out, &lout, 0.0)) != NDL_OK)
        return status;
    for (int j = 0; j < nd; j++) {
        lout.shape[j] = la->shape[j];
        if (axes_mask & ((uint64_t)1 << j))
            lout.strides[j] *= d + 1;
    }
    return ndl_cpu_copy(dt, out, &lout, dt, a, la);
}

/* ---- im2col ---------------------------------------------------------------
 *
 * Note [im2col with implicit padding]
 *   ndl_cpu_im2col_padded reads a (N, H, W, C) as if it were padded by lo
 *   and hi zeros along H and W (>= 0), writing the zeros of a window that
 *   hangs over an edge itself: the convolution (ndarray_conv.c) then needs
 *   no padded copy of its input, which for a gradient's convolution is a
 *   copy of the whole output gradient. The slot ndl_cpu_im2col is the case
 *   lo = hi = 0. */

enum { IM2COL_GRAIN = 1 << 16 }; /* output elements per task */

typedef struct {
    ndl_dtype dt;
    const char *a;            /* a's element (0, 0, 0, 0) */
    char *out;                /* row row0 */
    int64_t esz, kh, kw, s, d, c, ho, wo, row0;
    int64_t h, w, plh, plw;   /* a's extent along H and W; zeros before it */
    int64_t sn, sh, sw, sc;   /* a's strides, in elements */
} im2col_job;

/* dst[0..n) = src[0, ss, 2*ss, ...], n elements of the job's dtype. */
static void gather(ndl_dtype dt, char *dst, const char *src, int64_t ss, int64_t n)
{
    if (ss == 1) {
        memcpy(dst, src, (size_t)n * ndl_itemsize(dt));
    } else if (ss == 0 && dt == NDL_FLOAT32) { /* a broadcast: one value */
        const float v = *(const float *)src;
        for (int64_t i = 0; i < n; i++)
            ((float *)dst)[i] = v;
    } else if (ss == 0) {
        const double v = *(const double *)src;
        for (int64_t i = 0; i < n; i++)
            ((double *)dst)[i] = v;
    } else if (dt == NDL_FLOAT32) {
        float *d = (float *)dst;
        const float *s = (const float *)src;
        for (int64_t i = 0; i < n; i++)
            d[i] = s[i * ss];
    } else {
        double *d = (double *)dst;
        const double *s = (const double *)src;
        for (int64_t i = 0; i < n; i++)
            d[i] = s[i * ss];
    }
}

/* The taps t in [0, k) of a window starting at w0, d apart, that fall in
 * [0, w): [*t0, *t1). */
static void taps_inside(int64_t w0, int64_t d, int64_t k, int64_t w, int64_t *t0, int64_t *t1)
{
    int64_t lo = w0 < 0 ? (-w0 + d - 1) / d : 0, hi = w - w0 <= 0 ? 0 : (w - w0 + d - 1) / d;
    *t0 = lo < k ? lo : k;
    *t1 = hi < k ? (hi > *t0 ? hi : *t0) : k;
}

/* Output rows [begin, end) relative to row0. One row is kh runs (one per
 * kernel row i) of kw*C elements: zeros where row i is padding, else the
 * kernel columns [j0, j1) inside a, between zeros for those outside. The
 * columns inside are one contiguous run of a when a's (W, C) plane is
 * compact and the taps adjacent (d = 1), else runs of C (strided when C's
 * stride is not 1). */
static void im2col_range(void *ctx, int64_t begin, int64_t end)
{
    const im2col_job *j = (const im2col_job *)ctx;
    const int64_t kh = j->kh, kw = j->kw, c = j->c, esz = j->esz, d = j->d, kwc = kw * c;
    /* the (j, c) block of one kernel row is one run of a */
    const int whole = (j->sc == 1 || c == 1) && j->sw == c && d == 1;
    int64_t r = j->row0 + begin;
    int64_t x = r % j->wo, y = (r / j->wo) % j->ho, n = r / j->wo / j->ho;
    char *o = j->out + begin * kh * kwc * esz;
    for (int64_t row = begin; row < end; row++) {
        const int64_t h0 = y * j->s - j->plh, w0 = x * j->s - j->plw;
        int64_t j0, j1;
        taps_inside(w0, d, kw, j->w, &j0, &j1);
        for (int64_t i = 0; i < kh; i++, o += kwc * esz) {
            const int64_t hh = h0 + i * d;
            const char *src;
            if (hh < 0 || hh >= j->h || j1 == j0) {
                memset(o, 0, (size_t)(kwc * esz));
                continue;
            }
            src = j->a + (n * j->sn + hh * j->sh + (w0 + j0 * d) * j->sw) * esz;
            if (j0 > 0)
                memset(o, 0, (size_t)(j0 * c * esz));
            if (whole) {
                memcpy(o + j0 * c * esz, src, (size_t)((j1 - j0) * c * esz));
            } else {
                for (int64_t jj = j0; jj < j1; jj++)
                    gather(j->dt, o + jj * c * esz, src + (jj - j0) * d * j->sw * esz, j->sc, c);
            }
            if (j1 < kw)
                memset(o + j1 * c * esz, 0, (size_t)((kw - j1) * c * esz));
        }
        if (++x == j->wo) {
            x = 0;
            if (++y == j->ho)
                y = 0, n++;
        }
    }
}

int ndl_cpu_im2col_padded(ndl_dtype dt, const void *a, const ndl_layout *la,
                          const ndl_window *win, const int64_t *lo, const int64_t *hi,
                          int64_t row0, int64_t nrows, void *out)
{
    int64_t rows, kkc, grain, hp, wp, eh, ew;
    im2col_job j;
    if ((unsigned)dt >= NDL_NUM_DTYPES || !ndl_layout_ok(la) || la->ndim != 4 || win->kh < 1 ||
        win->kw < 1 || win->s < 1 || win->d < 1 || lo[0] < 0 || lo[1] < 0 || hi[0] < 0 ||
        hi[1] < 0 || __builtin_add_overflow(la->shape[1], lo[0], &hp) ||
        __builtin_add_overflow(hp, hi[0], &hp) ||
        __builtin_add_overflow(la->shape[2], lo[1], &wp) ||
        __builtin_add_overflow(wp, hi[1], &wp) ||
        __builtin_mul_overflow(win->kh - 1, win->d, &eh) ||
        __builtin_mul_overflow(win->kw - 1, win->d, &ew) || eh >= hp || ew >= wp || row0 < 0 ||
        nrows < 0)
        return NDL_EINVAL;
    j = (im2col_job){
        .dt = dt,
        .esz = (int64_t)ndl_itemsize(dt),
        .kh = win->kh,
        .kw = win->kw,
        .s = win->s,
        .d = win->kh > 1 || win->kw > 1 ? win->d : 1, /* one tap: any d, no dilation */
        .c = la->shape[3],
        .ho = (hp - eh - 1) / win->s + 1,
        .wo = (wp - ew - 1) / win->s + 1,
        .row0 = row0,
        .h = la->shape[1],
        .w = la->shape[2],
        .plh = lo[0],
        .plw = lo[1],
        .sn = la->strides[0],
        .sh = la->strides[1],
        .sw = la->strides[2],
        .sc = la->strides[3],
    };
    if (__builtin_mul_overflow(la->shape[0], j.ho, &rows) ||
        __builtin_mul_overflow(rows, j.wo, &rows) || __builtin_mul_overflow(j.kh, j.kw, &kkc) ||
        __builtin_mul_overflow(kkc, j.c, &kkc) || row0 > rows || nrows > rows - row0)
        return NDL_EINVAL;
    if (nrows == 0 || kkc == 0)
        return NDL_OK;
    j.a = (const char *)a + la->offset * j.esz;
    j.out = (char *)out;
    grain = IM2COL_GRAIN / kkc > 0 ? IM2COL_GRAIN / kkc : 1;
    ndl_parallel_for(nrows, grain, im2col_range, &j);
    return NDL_OK;
}

/* ---- col2im ---------------------------------------------------------------
 * The adjoint of im2col (Note [Transposed conv], ndarray_conv.c): rows
 * [row0, row0 + nrows) of a (N*Ho*Wo, kh*kw*C) matrix, compact, added into
 * out (N, H, W, C), compact: tap (i, j) of row (n, y, x) at
 * out[n, y*s + i - lo[0], x*s + j - lo[1], :] where that is inside out (lo
 * of either sign). One thread; rows and taps in order, so each element's
 * sum has one order. */
#define COL2IM_ROWS(T)                                                                             \
    for (int64_t r = row0; r < row0 + nrows; r++) {                                               \
        const int64_t x = r % wo, y = (r / wo) % ho, nn = r / wo / ho;                            \
        const T *row = (const T *)col + (r - row0) * kh * kw * c;                                 \
        for (int64_t i = 0; i < kh; i++) {                                                        \
            const int64_t hh = y * s + i - lo[0];                                                 \
            if (hh < 0 || hh >= h)                                                                \
                continue;                                                                         \
            for (int64_t jj = 0; jj < kw; jj++) {                                                 \
                const int64_t ww = x * s + jj - lo[1];                                            \
                if (ww < 0 || ww >= w)                                                            \
                    continue;                                                                     \
                T *o = (T *)out + ((nn * h + hh) * w + ww) * c;                                   \
                const T *v = row + (i * kw + jj) * c;                                             \
                for (int64_t q = 0; q < c; q++)                                                   \
                    o[q] += v[q];                                                                 \
            }                                                                                     \
        }                                                                                         \
    }

void ndl_cpu_col2im_add(ndl_dtype dt, const void *col, int64_t row0, int64_t nrows,
                        const int64_t *oshape, int64_t kh, int64_t kw, int64_t s,
                        const int64_t *lo, int64_t ho, int64_t wo, void *out)
{
    const int64_t h = oshape[1], w = oshape[2], c = oshape[3];
    if (dt == NDL_FLOAT32) {
        COL2IM_ROWS(float)
    } else {
        COL2IM_ROWS(double)
    }
}

int ndl_cpu_im2col(ndl_dtype dt, const void *a, const ndl_layout *la, int64_t k, int64_t s,
                   int64_t row0, int64_t nrows, void *out)
{
    static const int64_t zero[2] = {0, 0};
    const ndl_window win = {.kh = k, .kw = k, .s = s, .d = 1};
    return ndl_cpu_im2col_padded(dt, a, la, &win, zero, zero, row0, nrows, out);
}
