/* cpu_reduce.c: sum and max over any set of axes, on the CPU.
 * (About 600 lines: the layout simplification, the threading split and the
 * dtype instantiations belong to one driver.)
 *
 * Owns ndl_cpu_reduce (ndl_core.h). Python equivalent:
 *     out = np.ascontiguousarray(np.sum(a, axis=axes))    # or np.max
 *
 * Every reduction is brought to the form
 *     out[o, i] = reduce over r of a[o*so + r*sr + i*si]
 *         o < no (outer kept), r < nr (reduced), i < ni (inner kept)
 * and run by one of two kernels (cpu_reduce_impl.h):
 *   - row mode (ni == 1, or the reduced axis is the unit-stride one): each
 *     output element reduces one contiguous-ish row, row after row (Note [One
 *     row at a time]); lanes of partial sums
 *     that gcc vectorizes, pairwise above RD_LEAF elements;
 *   - column mode (the kept inner axis is the unit-stride one, e.g. sum over
 *     axis 0 of a matrix): whole row segments are accumulated into the
 *     output, RD_VLEAF rows at a time, pairwise above that, over column
 *     tiles that stay in L1 (whole rows from memory: Note [Whole rows of
 *     columns]).
 * Layouts that fit that form after merging dimensions (any strides, so
 * transposed and sliced views too) run directly. Otherwise the input is
 * made contiguous (copied once if needed) and reduced one block of adjacent
 * reduced axes at a time, innermost first, through temporary buffers.
 * Summation order: Note [Summation order] in cpu_reduce_impl.h; results do
 * not depend on the thread count.
 */
#include <stdlib.h>
#include <string.h>
#include <math.h>

#include "cpu_info.h"
#include "ndl_core.h"
#include "threadpool.h"
#include "scalar_ops.h"
#include "cpu_strided.h"

/* -DNDL_CPU_BASELINE_ONLY builds without the AVX2 variants (for tests). */
#include <stdatomic.h>
#if defined(__x86_64__) && defined(__GNUC__) && !defined(NDL_CPU_BASELINE_ONLY)
#define NDL_RD_X86 1
#endif

enum {
    RD_LANES = 32,              /* independent partial sums in a row leaf */
    RD_LEAF = 1024,             /* elements per row leaf */
    RD_VLEAF = 32,              /* rows per column leaf */
    RD_TILE = 1024,             /* column tile (elements) */
    RD_WS_BYTES = 1 << 16,      /* column sums' scratch on the stack; more is allocated */
    RD_TILE_MEM = 4096,         /* from memory: Note [Whole rows of columns] */
    RD_GRAIN = 1 << 16,         /* elements per task */
    RD_ROW_CHUNK = RD_LEAF << 6 /* smallest chunk of a row split across threads */
};

/* Note [Whole rows of columns]
 *   Column mode sums a tile of RD_TILE columns over all the rows, the tree's
 *   buffers (one a level) and the output tile in L1. From memory, a 1024
 *   float32 tile of a row 16 KiB long is one 4 KiB page a row, each a new
 *   stream for the prefetchers, which stop at page boundaries. So when the
 *   input exceeds half the last-level cache (cpu_info.h: what this core
 *   reaches), a tile is up to RD_TILE_MEM columns, whole rows of up to 16
 *   KiB float32, its buffers in L2 (past RD_WS_BYTES on the stack,
 *   allocated by each call of rd_run_vert: 7 levels for 4096 rows, 112 KiB
 *   float32; in cache, a 1024-column tile's levels fit the stack, and a
 *   column sum allocates nothing). In cache, the wide tile lost
 *   to L1: 256 x 4096 float32 79 -> 66 GB/s. A column's sum does not depend
 *   on the tile: the bits do not change. Zen 4 (AMD EPYC, family 25 model
 *   17), 1 thread, best of 2-5 interleaved runs, GB/s read, before ->
 *   after (NumPy 2.4, PyTorch 2.13): 4096 x 4096 float32 24-25 -> 27-28
 *   (20 / 9), float64 22.5-23 -> 26-28 (18 / 9), 2048 x 4096 float64
 *   24-25 -> 28-29.5, 8192 x 2048 float64 22 -> 24.5-26 (float32 within
 *   the noise there, 24-33 both); 2 threads within the noise (44-46).
 */
typedef struct {
    int op;
    const char *a;              /* element (0, 0, 0) */
    char *out;                  /* compact (no, ni) */
    char *partial;              /* (nchunks, no, ni) when nchunks > 1 */
    int64_t no, so, nr, sr, ni, si;
    int64_t rchunk, nchunks;    /* the reduced axis in chunks of rchunk */
    int64_t tile, ntiles;       /* column mode: inner axis in tiles */
    int64_t ws_elems;           /* column sums: scratch each call of rd_run_vert allocates */
    atomic_int *failed;         /* set where that allocation failed */
} rd_job;

/* Largest leaf * 2^k below n (n > leaf): where the pairwise tree splits. */
static inline int64_t rd_split(int64_t n, int64_t leaf)
{
    int64_t h = leaf;
    while (2 * h < n)
        h *= 2;
    return h;
}

/* Scratch buffers rd_vert_sum needs for nr rows (the tree's depth). */
static int rd_vert_depth(int64_t nr)
{
    int d = 0;
    while (((int64_t)RD_VLEAF << d) < nr)
        d++;
    return d;
}

/* ---- instantiations ---------------------------------------------------- */
#define T float
#define RD_DT f32
#define RD_SFX f32_base
#define RD_TARGET
#include "cpu_reduce_impl.h"

#define T double
#define RD_DT f64
#define RD_SFX f64_base
#define RD_TARGET
#include "cpu_reduce_impl.h"

#ifdef NDL_RD_X86
#define T float
#define RD_DT f32
#define RD_SFX f32_avx2
#define RD_TARGET __attribute__((target("avx2"))) /* no fma: see cpu_ewise.c */
#define RD_HWMAX __builtin_ia32_maxps256
#include "cpu_reduce_impl.h"

#define T double
#define RD_DT f64
#define RD_SFX f64_avx2
#define RD_TARGET __attribute__((target("avx2"))) /* no fma: see cpu_ewise.c */
#define RD_HWMAX __builtin_ia32_maxpd256
#include "cpu_reduce_impl.h"
#endif

typedef struct {
    ndl_range_fn rows, vert;
    void (*finish)(const rd_job *);
} rd_kernels;

static const rd_kernels rd_base[NDL_NUM_DTYPES] = {
    [NDL_FLOAT32] = {rd_run_rows_f32_base, rd_run_vert_f32_base, rd_finish_f32_base},
    [NDL_FLOAT64] = {rd_run_rows_f64_base, rd_run_vert_f64_base, rd_finish_f64_base},
};
#ifdef NDL_RD_X86
static const rd_kernels rd_avx2[NDL_NUM_DTYPES] = {
    [NDL_FLOAT32] = {rd_run_rows_f32_avx2, rd_run_vert_f32_avx2, rd_finish_f32_avx2},
    [NDL_FLOAT64] = {rd_run_rows_f64_avx2, rd_run_vert_f64_avx2, rd_finish_f64_avx2},
};
#endif

static const rd_kernels *rd_kernels_for(ndl_dtype dt)
{
#ifdef NDL_RD_X86
    static atomic_int cached = -1; /* -1 unknown; a racing double init is harmless */
    int v = atomic_load_explicit(&cached, memory_order_relaxed);
    if (v < 0) {
        __builtin_cpu_init();
        v = __builtin_cpu_supports("avx2");
        atomic_store_explicit(&cached, v, memory_order_relaxed);
    }
    if (v)
        return &rd_avx2[dt];
#endif
    return &rd_base[dt];
}

static int64_t rd_cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* out (compact no x ni) <- the reduction of the 3-level form above. */
static int rd_run3(ndl_redop op, ndl_dtype dt, const char *a, int64_t no, int64_t so, int64_t nr,
                   int64_t sr, int64_t ni, int64_t si, char *out)
{
    const rd_kernels *k = rd_kernels_for(dt);
    int64_t isz = (int64_t)ndl_itemsize(dt);
    int64_t total = no * nr * ni;
    int nthreads = total >= 2 * RD_GRAIN ? ndl_get_num_threads() : 1; /* it takes a lock */
    int parallel = nthreads > 1;
    rd_job j = {.op = op, .a = a, .out = out, .no = no, .so = so, .nr = nr, .sr = sr,
                .ni = ni, .si = si, .rchunk = nr, .nchunks = 1, .tile = 1, .ntiles = 1};
    int64_t abs_si = si < 0 ? -si : si;
    int column = ni > 1 && sr != 1 && abs_si <= sr;
    ndl_range_fn fn;
    int64_t units, per_unit;

    if (column) {
        /* Note [Whole rows of columns] */
        int64_t tmax = (double)total * (double)isz > (double)ndl_get_cpu_info()->llc / 2
                           ? RD_TILE_MEM
                           : RD_TILE;
        j.tile = ni < tmax ? ni : tmax;
        if (parallel && no * rd_cdiv(ni, j.tile) < 2 * nthreads) {
            if (ni >= 64 * nthreads) {
                /* enough columns: split them */
                j.tile = (rd_cdiv(ni, 2 * nthreads) + 15) / 16 * 16;
            } else if (nr >= 4 * RD_VLEAF) {
                /* few, long columns: split the rows (Note [Summation order]) */
                int64_t c = RD_VLEAF;
                while (c * ni < RD_GRAIN / 4 || rd_cdiv(nr, c) * no > 8 * nthreads)
                    c *= 2;
                j.rchunk = c < nr ? c : nr;
            }
        }
        if (op == NDL_RED_SUM) /* one buffer of a tile per tree level */
            j.ws_elems = (int64_t)rd_vert_depth(j.rchunk) * j.tile;
        j.ntiles = rd_cdiv(ni, j.tile);
        j.nchunks = rd_cdiv(nr, j.rchunk);
        fn = k->vert;
        units = j.nchunks * no * j.ntiles;
        per_unit = j.rchunk * j.tile;
    } else {
        if (parallel && no * ni < 2 * nthreads && nr >= 2 * RD_ROW_CHUNK) {
            int64_t c = RD_ROW_CHUNK;
            while (rd_cdiv(nr, c) * no * ni > 8 * nthreads)
                c *= 2;
            j.rchunk = c < nr ? c : nr;
        }
        j.nchunks = rd_cdiv(nr, j.rchunk);
        fn = k->rows;
        units = j.nchunks * no * ni;
        per_unit = j.rchunk;
    }

    if (j.nchunks > 1) {
        j.partial = (char *)malloc((size_t)(j.nchunks * no * ni * isz));
        if (!j.partial)
            return NDL_ENOMEM;
    }
    atomic_int failed = 0;
    j.failed = &failed;
    int64_t grain = RD_GRAIN / per_unit > 0 ? RD_GRAIN / per_unit : 1;
    if (!parallel || units < 2 * grain)
        fn(&j, 0, units);
    else
        ndl_parallel_for(units, grain, fn, &j);
    if (j.nchunks > 1) {
        if (!atomic_load(&failed))
            k->finish(&j);
        free(j.partial);
    }
    return atomic_load(&failed) ? NDL_ENOMEM : NDL_OK;
}

typedef struct {
    int64_t n, s;
} rd_dim;

int ndl_cpu_reduce(ndl_redop op, ndl_dtype dt, const void *a, const ndl_layout *la,
                   uint64_t axes_mask, void *out)
{
    if ((unsigned)op >= NDL_NUM_REDUCE || (unsigned)dt >= NDL_NUM_DTYPES || !ndl_layout_ok(la))
        return NDL_EINVAL;
    if (la->ndim < 64 && (axes_mask >> la->ndim) != 0)
        return NDL_EINVAL;
    int64_t isz = (int64_t)ndl_itemsize(dt);
    int nd = la->ndim;
    int64_t out_size = 1, red_size = 1;
    for (int d = 0; d < nd; d++) {
        if (axes_mask >> d & 1)
            red_size *= la->shape[d];
        else
            out_size *= la->shape[d];
    }
    if (out_size == 0)
        return NDL_OK;
    if (red_size == 0) {
        /* NOTE: the sum of nothing is 0; the max of nothing is undefined
         * (np.max raises), so the caller must have rejected it. */
        if (op != NDL_RED_SUM)
            return NDL_EINVAL;
        memset(out, 0, (size_t)(out_size * isz)); /* all-zero bits are +0.0 */
        return NDL_OK;
    }

    /* Kept and reduced dimensions, length-1 ones dropped. */
    rd_dim kd[NDL_MAX_DIMS], rdm[NDL_MAX_DIMS];
    int nk = 0, nrd = 0;
    const char *base = (const char *)a + la->offset * isz;
    for (int d = 0; d < nd; d++) {
        if (la->shape[d] == 1)
            continue;
        rd_dim x = {la->shape[d], la->strides[d]};
        if (axes_mask >> d & 1) {
            /* NOTE: the order of a reduction is ours to choose: walk every
             * reduced axis forwards in memory. */
            if (x.s < 0) {
                base += (x.n - 1) * x.s * isz;
                x.s = -x.s;
            }
            rdm[nrd++] = x;
        } else {
            kd[nk++] = x;
        }
    }
    if (nrd == 0) { /* reducing only length-1 axes: a copy */
        ndl_layout lk = {.ndim = 0, .offset = 0}, lo = {.ndim = 0, .offset = 0};
        for (int d = 0; d < nd; d++)
            if (!(axes_mask >> d & 1)) {
                lk.shape[lk.ndim] = la->shape[d];
                lk.strides[lk.ndim++] = la->strides[d];
            }
        lk.offset = la->offset;
        lo.ndim = lk.ndim;
        memcpy(lo.shape, lk.shape, sizeof lo.shape);
        ndl_compact_strides(lo.ndim, lo.shape, lo.strides);
        return ndl_cpu_copy(dt, out, &lo, dt, a, &lk);
    }

    /* Reduced dims: largest stride first, then merge what nests. */
    for (int x = 1; x < nrd; x++)
        for (int y = x; y > 0 && rdm[y].s > rdm[y - 1].s; y--) {
            rd_dim t = rdm[y];
            rdm[y] = rdm[y - 1];
            rdm[y - 1] = t;
        }
    int m = 0;
    for (int x = 1; x < nrd; x++) {
        if (rdm[m].s == rdm[x].s * rdm[x].n) {
            rdm[m].n *= rdm[x].n;
            rdm[m].s = rdm[x].s;
        } else {
            rdm[++m] = rdm[x];
        }
    }
    nrd = m + 1;
    /* Kept dims merge only in order (the output is row-major over them). */
    if (nk > 0) {
        m = 0;
        for (int x = 1; x < nk; x++) {
            if (kd[m].s == kd[x].s * kd[x].n) {
                kd[m].n *= kd[x].n;
                kd[m].s = kd[x].s;
            } else {
                kd[++m] = kd[x];
            }
        }
        nk = m + 1;
    }

    if (nrd == 1 && nk <= 2) {
        int64_t no = 1, so = 0, ni = 1, si = 0;
        if (nk == 2) {
            no = kd[0].n, so = kd[0].s, ni = kd[1].n, si = kd[1].s;
        } else if (nk == 1 && kd[0].s == 1 && rdm[0].s != 1) {
            ni = kd[0].n, si = 1;
        } else if (nk == 1) {
            no = kd[0].n, so = kd[0].s;
        }
        return rd_run3(op, dt, base, no, so, rdm[0].n, rdm[0].s, ni, si, (char *)out);
    }

    /* General case: contiguous input, one block of reduced axes per pass. */
    int status = NDL_OK;
    char *own = NULL; /* a temporary we must free: the current source */
    const char *src = (const char *)a + la->offset * isz;
    if (!ndl_layout_is_contiguous(la)) {
        ndl_layout lc = *la;
        lc.offset = 0;
        ndl_compact_strides(nd, lc.shape, lc.strides);
        own = (char *)malloc((size_t)(ndl_layout_size(la) * isz));
        if (!own)
            return NDL_ENOMEM;
        status = ndl_cpu_copy(dt, own, &lc, dt, a, la);
        if (status != NDL_OK)
            goto done;
        src = own;
    }
    /* Blocks of adjacent dims of one kind (row-major, contiguous). */
    int64_t bn[NDL_MAX_DIMS];
    int bred[NDL_MAX_DIMS], nb = 0;
    for (int d = 0; d < nd; d++) {
        if (la->shape[d] == 1)
            continue;
        int r = (int)(axes_mask >> d & 1);
        if (nb > 0 && bred[nb - 1] == r) {
            bn[nb - 1] *= la->shape[d];
        } else {
            bn[nb] = la->shape[d];
            bred[nb++] = r;
        }
    }
    for (;;) {
        int last = -1, nred = 0;
        for (int b = 0; b < nb; b++)
            if (bred[b]) {
                last = b;
                nred++;
            }
        int64_t outer = 1, inner = 1;
        for (int b = 0; b < last; b++)
            outer *= bn[b];
        for (int b = last + 1; b < nb; b++)
            inner *= bn[b];
        char *dst = (char *)out;
        if (nred > 1) {
            dst = (char *)malloc((size_t)(outer * inner * isz));
            if (!dst) {
                status = NDL_ENOMEM;
                goto done;
            }
        }
        status = rd_run3(op, dt, src, outer, bn[last] * inner, bn[last], inner, inner, 1, dst);
        free(own);
        own = dst == (char *)out ? NULL : dst;
        src = dst;
        if (status != NDL_OK || nred == 1)
            goto done;
        /* drop the block; its neighbours are kept blocks and now touch */
        if (last > 0 && last + 1 < nb) {
            bn[last - 1] *= bn[last + 1];
            for (int b = last; b + 2 < nb; b++) {
                bn[b] = bn[b + 2];
                bred[b] = bred[b + 2];
            }
            nb -= 2;
        } else {
            for (int b = last; b + 1 < nb; b++) {
                bn[b] = bn[b + 1];
                bred[b] = bred[b + 1];
            }
            nb -= 1;
        }
    }
done:
    free(own);
    return status;
}
