/* cpu_copy.c: strided copy with dtype conversion, and fill, on the CPU.
 *
 * Owns ndl_cpu_copy and ndl_cpu_fill (ndl_core.h). Python equivalent:
 *     dst_view[...] = src_view.astype(dst_view.dtype)    # ndl_cpu_copy
 *     dst_view[...] = value                              # ndl_cpu_fill
 * These back compact(), setitem, astype, pad, flip and friends.
 *
 * Paths, fastest first (after Note [Strided iteration] in cpu_strided.h
 * merged what can be merged):
 *   1. both sides one contiguous run, same dtype: memcpy;
 *   2. transposes (the destination walks its last dimension with stride 1,
 *      the source walks it with a large stride, but some other dimension of
 *      the source has stride +-1): 64x64 tiles staged through a buffer, so
 *      both sides move whole cache lines (10x NumPy on a 4096^2 transpose);
 *   3. otherwise an inner loop over the last dimension (with unit-stride and
 *      broadcast cases that vectorize) under an N-d counter.
 * Large copies split across the thread pool.
 */
#include <string.h>

#include "ndl_core.h"
#include "threadpool.h"
#include "cpu_strided.h"

/* Inner loop: n elements, d[i*sd] = (TD)s[i*ss]. */
typedef void (*copy_loop)(void *d, int64_t sd, const void *s, int64_t ss, int64_t n);

#define COPY_LOOP(NAME, TD, TS)                                                     \
    static void NAME(void *d_, int64_t sd, const void *s_, int64_t ss, int64_t n)   \
    {                                                                               \
        TD *d = (TD *)d_;                                                           \
        const TS *s = (const TS *)s_;                                               \
        if (sd == 1 && ss == 1) {                                                   \
            for (int64_t i = 0; i < n; i++)                                         \
                d[i] = (TD)s[i];                                                    \
        } else if (sd == 1 && ss == 0) {                                            \
            const TD v = (TD)s[0];                                                  \
            for (int64_t i = 0; i < n; i++)                                         \
                d[i] = v;                                                           \
        } else {                                                                    \
            for (int64_t i = 0; i < n; i++)                                         \
                d[i * sd] = (TD)s[i * ss];                                          \
        }                                                                           \
    }
COPY_LOOP(copy_f32_f32, float, float)
COPY_LOOP(copy_f32_f64, float, double)
COPY_LOOP(copy_f64_f32, double, float)
COPY_LOOP(copy_f64_f64, double, double)
#undef COPY_LOOP

static const copy_loop copy_loops[NDL_NUM_DTYPES][NDL_NUM_DTYPES] = { /* [dst][src] */
    [NDL_FLOAT32] = {[NDL_FLOAT32] = copy_f32_f32, [NDL_FLOAT64] = copy_f32_f64},
    [NDL_FLOAT64] = {[NDL_FLOAT32] = copy_f64_f32, [NDL_FLOAT64] = copy_f64_f64},
};

enum {
    COPY_GRAIN = 1 << 16,       /* elements per task */
    COPY_TILE = 64,             /* transpose tile edge */
};

typedef struct {
    copy_loop loop;
    ndl_dtype sdt;
    char *d;
    const char *s;
    int64_t dsz, ssz;           /* bytes per element */
    ndl_iter it;                /* operands: 0 = dst, 1 = src */
    /* transpose path: the tile plane is (dimension tk, last dimension) and
     * `rest` iterates the remaining dimensions (one extra dimension of length
     * 1 when there are none). */
    int tk;
    int64_t tiles_k;            /* tiles along dimension tk */
    ndl_iter rest;
} copy_job;

static void copy_run_flat(void *ctx, int64_t begin, int64_t end)
{
    const copy_job *j = (const copy_job *)ctx;
    int64_t sd = ndl_iter_inner_stride(&j->it, 0), ss = ndl_iter_inner_stride(&j->it, 1);
    j->loop(j->d + begin * sd * j->dsz, sd, j->s + begin * ss * j->ssz, ss, end - begin);
}

static void copy_run_memcpy(void *ctx, int64_t begin, int64_t end)
{
    const copy_job *j = (const copy_job *)ctx;
    memcpy(j->d + begin * j->dsz, j->s + begin * j->ssz, (size_t)((end - begin) * j->dsz));
}

static void copy_run_rows(void *ctx, int64_t begin, int64_t end)
{
    const copy_job *j = (const copy_job *)ctx;
    const ndl_iter *it = &j->it;
    int64_t n = ndl_iter_inner(it);
    int64_t sd = ndl_iter_inner_stride(it, 0), ss = ndl_iter_inner_stride(it, 1);
    ndl_iter_pos p;
    ndl_iter_seek(it, &p, begin);
    for (int64_t r = begin; r < end; r++) {
        j->loop(j->d + p.off[0] * j->dsz, sd, j->s + p.off[1] * j->ssz, ss, n);
        ndl_iter_next(it, &p);
    }
}

/* Units [begin, end): unit u is tile-row (u % tiles_k) of the plane at row
 * (u / tiles_k) of `rest`.
 * NOTE: a tile is staged through a small buffer: read as runs along the
 * source's unit-stride dimension, written as runs along the destination's.
 * Walking the source directly column by column would touch 32 lines a
 * power-of-two stride apart, which share one L1 set and evict each other. */
static void copy_run_tiles(void *ctx, int64_t begin, int64_t end)
{
    const copy_job *j = (const copy_job *)ctx;
    const ndl_iter *it = &j->it;
    int last = it->ndim - 1, k = j->tk;
    int64_t nk = it->shape[k], nl = it->shape[last];
    int64_t dk = it->strides[0][k], dl = it->strides[0][last];
    int64_t sk = it->strides[1][k], sl = it->strides[1][last];
    copy_loop same = copy_loops[j->sdt][j->sdt];
    _Alignas(64) char buf[COPY_TILE * COPY_TILE * sizeof(double)]; /* [l][i] in source dtype */
    ndl_iter_pos p;
    int64_t plane = begin / j->tiles_k;
    ndl_iter_seek(&j->rest, &p, plane);
    for (int64_t u = begin; u < end; u++) {
        if (u / j->tiles_k != plane) {
            plane++;
            ndl_iter_next(&j->rest, &p);
        }
        int64_t i0 = (u % j->tiles_k) * COPY_TILE;
        int64_t ni = nk - i0 < COPY_TILE ? nk - i0 : COPY_TILE;
        for (int64_t l0 = 0; l0 < nl; l0 += COPY_TILE) {
            int64_t nt = nl - l0 < COPY_TILE ? nl - l0 : COPY_TILE;
            const char *s = j->s + (p.off[1] + i0 * sk + l0 * sl) * j->ssz;
            char *d = j->d + (p.off[0] + i0 * dk + l0 * dl) * j->dsz;
            for (int64_t l = 0; l < nt; l++)
                same(buf + l * COPY_TILE * j->ssz, 1, s + l * sl * j->ssz, sk, ni);
            for (int64_t i = 0; i < ni; i++)
                j->loop(d + i * dk * j->dsz, dl, buf + i * j->ssz, COPY_TILE, nt);
        }
    }
}

/* Pick the transpose path's plane, or return 0 when it does not apply. */
static int copy_plan_tiles(copy_job *j)
{
    const ndl_iter *it = &j->it;
    int last = it->ndim - 1;
    if (it->ndim < 2 || it->strides[0][last] != 1)
        return 0;
    int64_t sl = it->strides[1][last];
    if (sl >= -COPY_TILE && sl <= COPY_TILE) /* source already walks nearly in order */
        return 0;
    int k = -1;
    for (int d = last - 1; d >= 0; d--)
        if (it->strides[1][d] == 1 || it->strides[1][d] == -1) {
            k = d;
            break;
        }
    if (k < 0 || it->shape[k] < COPY_TILE / 2)
        return 0;
    j->tk = k;
    j->tiles_k = (it->shape[k] + COPY_TILE - 1) / COPY_TILE;
    /* `rest` = the other dimensions, in order, as an iter of its own. */
    ndl_iter *r = &j->rest;
    int nd = 0;
    r->nops = 2;
    for (int d = 0; d < last; d++) {
        if (d == k)
            continue;
        r->shape[nd] = it->shape[d];
        r->strides[0][nd] = it->strides[0][d];
        r->strides[1][nd] = it->strides[1][d];
        nd++;
    }
    /* ndl_iter_seek/next step all but the last dimension: add a dummy one. */
    r->shape[nd] = 1;
    r->strides[0][nd] = r->strides[1][nd] = 0;
    r->ndim = nd + 1;
    return 1;
}

int ndl_cpu_copy(ndl_dtype dst_dt, void *dst, const ndl_layout *ld, ndl_dtype src_dt,
                 const void *src, const ndl_layout *ls)
{
    if ((unsigned)dst_dt >= NDL_NUM_DTYPES || (unsigned)src_dt >= NDL_NUM_DTYPES ||
        !ndl_layout_ok(ld) || !ndl_layout_ok(ls) || !ndl_same_shape(ld, ls))
        return NDL_EINVAL;
    int64_t n = ndl_layout_size(ld);
    if (n == 0)
        return NDL_OK;
    copy_job j = {
        .loop = copy_loops[dst_dt][src_dt],
        .sdt = src_dt,
        .dsz = (int64_t)ndl_itemsize(dst_dt),
        .ssz = (int64_t)ndl_itemsize(src_dt),
    };
    j.d = (char *)dst + ld->offset * j.dsz;
    j.s = (const char *)src + ls->offset * j.ssz;
    const int64_t *strides[2] = {ld->strides, ls->strides};
    ndl_iter_init(&j.it, ld->ndim, ld->shape, 2, strides);

    if (j.it.ndim <= 1) {
        int64_t sd = ndl_iter_inner_stride(&j.it, 0), ss = ndl_iter_inner_stride(&j.it, 1);
        int same = dst_dt == src_dt && sd == 1 && ss == 1;
        ndl_range_fn fn = same ? copy_run_memcpy : copy_run_flat;
        if (n == 1 || n < 2 * COPY_GRAIN)
            fn(&j, 0, n);
        else
            ndl_parallel_for(n, COPY_GRAIN, fn, &j);
    } else if (copy_plan_tiles(&j)) {
        int64_t units = ndl_iter_rows(&j.rest) * j.tiles_k;
        int64_t per_unit = COPY_TILE * ndl_iter_inner(&j.it);
        int64_t grain = COPY_GRAIN / per_unit > 0 ? COPY_GRAIN / per_unit : 1;
        if (units < 2 * grain)
            copy_run_tiles(&j, 0, units);
        else
            ndl_parallel_for(units, grain, copy_run_tiles, &j);
    } else {
        int64_t rows = ndl_iter_rows(&j.it), inner = ndl_iter_inner(&j.it);
        int64_t grain = COPY_GRAIN / inner > 0 ? COPY_GRAIN / inner : 1;
        if (rows < 2 * grain)
            copy_run_rows(&j, 0, rows);
        else
            ndl_parallel_for(rows, grain, copy_run_rows, &j);
    }
    return NDL_OK;
}

/* ---- fill ---------------------------------------------------------------- */
typedef struct {
    ndl_dtype dt;
    char *d;
    int64_t dsz;
    double value;
    ndl_iter it;
} fill_job;

#define FILL_LOOP(NAME, TD)                                               \
    static void NAME(void *d_, int64_t sd, double value, int64_t n)       \
    {                                                                     \
        TD *d = (TD *)d_;                                                 \
        const TD v = (TD)value;                                           \
        if (sd == 1) {                                                    \
            for (int64_t i = 0; i < n; i++)                               \
                d[i] = v;                                                 \
        } else {                                                          \
            for (int64_t i = 0; i < n; i++)                               \
                d[i * sd] = v;                                            \
        }                                                                 \
    }
FILL_LOOP(fill_f32, float)
FILL_LOOP(fill_f64, double)
#undef FILL_LOOP

static void fill_run_rows(void *ctx, int64_t begin, int64_t end)
{
    const fill_job *j = (const fill_job *)ctx;
    const ndl_iter *it = &j->it;
    int64_t n = ndl_iter_inner(it), sd = ndl_iter_inner_stride(it, 0);
    void (*loop)(void *, int64_t, double, int64_t) = j->dt == NDL_FLOAT32 ? fill_f32 : fill_f64;
    if (it->ndim <= 1) { /* flat: [begin, end) are elements */
        loop(j->d + begin * sd * j->dsz, sd, j->value, end - begin);
        return;
    }
    ndl_iter_pos p;
    ndl_iter_seek(it, &p, begin);
    for (int64_t r = begin; r < end; r++) {
        loop(j->d + p.off[0] * j->dsz, sd, j->value, n);
        ndl_iter_next(it, &p);
    }
}

int ndl_cpu_fill(ndl_dtype dt, void *dst, const ndl_layout *ld, double value)
{
    if ((unsigned)dt >= NDL_NUM_DTYPES || !ndl_layout_ok(ld))
        return NDL_EINVAL;
    int64_t n = ndl_layout_size(ld);
    if (n == 0)
        return NDL_OK;
    fill_job j = {.dt = dt, .dsz = (int64_t)ndl_itemsize(dt), .value = value};
    j.d = (char *)dst + ld->offset * j.dsz;
    /* NOTE: a stride-0 destination dimension (a broadcast view) would write
     * the same element many times, possibly from several threads: drop it. */
    int nd = 0;
    int64_t shape[NDL_MAX_DIMS], str[NDL_MAX_DIMS];
    for (int i = 0; i < ld->ndim; i++)
        if (ld->strides[i] != 0) {
            shape[nd] = ld->shape[i];
            str[nd++] = ld->strides[i];
        }
    const int64_t *strides[1] = {str};
    ndl_iter_init(&j.it, nd, shape, 1, strides);
    n = 1;
    for (int i = 0; i < nd; i++)
        n *= shape[i];
    int64_t units = j.it.ndim <= 1 ? n : ndl_iter_rows(&j.it);
    int64_t per_unit = j.it.ndim <= 1 ? 1 : ndl_iter_inner(&j.it);
    int64_t grain = COPY_GRAIN / per_unit > 0 ? COPY_GRAIN / per_unit : 1;
    if (units < 2 * grain)
        fill_run_rows(&j, 0, units);
    else
        ndl_parallel_for(units, grain, fill_run_rows, &j);
    return NDL_OK;
}
