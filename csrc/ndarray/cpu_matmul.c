/* cpu_matmul.c: ndl_cpu_matmul, the CPU matrix product (contract in ndl_core.h).
 * (Over 600 lines on purpose: kernel choice, packing, the work split and the
 * blocked driver share one job struct and its notes; split, each part would
 * need the others' internals. The skinny products' loops live in
 * cpu_matmul_small.c, the kept buffers in cpu_matmul_scratch.c, the CPU's
 * description in cpu_info.c, and the stride-1 conv on the kernels in
 * cpu_conv_rows.c, through ndl_cpu_gemm_tile and ndl_cpu_pack_b.)
 *
 * Python equivalent:
 *     for b in range(batch): C[b] = A[b] @ B[b]   # A[b], B[b] any strided views
 *
 * Design (GotoBLAS / BLIS): for each block of C the driver runs
 *     for jc in p by NC:                 B block (KC x NC) lives in L3
 *       for pc in n by KC:               pack B[pc:, jc:] into NR-column panels
 *         for ic in m by MC:             A block (MC x KC): packed into MR-row
 *                                        panels, or read in place when its rows
 *                                        are contiguous (Note [Reading A in place])
 *           for jr in NC by NR:          one B panel (KC x NR) stays in L1
 *             for ir in MC by MR:        micro-kernel: C[ir:+MR, jr:+NR] (+)= A_panel @ B_panel
 * Packing reads A and B through their element strides (Note [Layouts]), so
 * transposed and broadcast operands are never copied first; panels and
 * micro-kernels are described in Note [Packed panels] (cpu_matmul.h). A B
 * whose rows are contiguous is packed panel by panel by the first tile's
 * kernel, as it computes (Note [Packing B in the kernel]).
 * When C's rows fit one A block (m <= MC) the two outer loops are turned
 * and B blocks are narrower (Note [Narrow B blocks for few rows]). Skinny
 * products whose B has contiguous rows (m <= 8, or 2: Note [Axpy rows per
 * tile]; 8 whenever B comes from memory: Note [Few rows of B from memory];
 * AVX2 float32 and AVX-512 float64 from m = 4 only where the packed kernels
 * are slower: use_axpy), and matrix-vector
 * products (m = 1, or p == 1 computed as C^T = B^T A^T) whose B has
 * contiguous columns, skip all of this: B is read in place
 * (cpu_matmul_small.c; one row with B in cache keeps its C row in
 * registers, Note [One row: which products]).
 *
 * Kernels: AVX-512F (14x32 float32, 14x16 float64), AVX2+FMA (6x16, 6x8) or
 * portable C (4x8, 4x4): the widest one that the CPU has and the OS enables
 * (Note [Usable SIMD] in cpu_info.c), chosen once, AVX-512 only if it is not
 * slower than AVX2 on this CPU (Note [Timing the kernels]); its cache blocks
 * come from the cache sizes the CPU reports (Note [Block sizes]).
 * NEEDLE_MATMUL_KERNEL=generic|avx2|avx512 forces one (if the CPU has it).
 *
 * Threads (Note [Matmul work split]): the work is cut into tasks, a task
 * being one product or one rectangular tile of one product, several per
 * thread when they stay large, cut by rows or columns as packs least and
 * balances best (Note [Balanced grids]); `nparts` parts, at most one per pool
 * thread, take them from a shared counter. Each part owns its packing
 * buffers (64-byte aligned, Note [Kept scratch] in cpu_matmul_scratch.c),
 * so parts share nothing but read-only A and B. Products under ~72^3
 * multiply-adds never wake the pool (skinny ones, bound by reading B, under
 * 32768: NDL_SMALL_PAR_MIN). Results do not depend on the number of
 * threads.
 */
#include "cpu_matmul.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu_info.h"
#include "ndl_core.h"
#include "threadpool.h"

/* ---- kernel table ------------------------------------------------------- */

typedef struct {
    const char *name;
    ndl_ukernel kernel;
    int mr, nr;          /* register tile */
    int64_t mc, kc, nc;  /* cache blocks; mc % mr == 0, nc % nr == 0 */
    ndl_small_axpy axpy; /* the skinny products, same instruction set */
    ndl_small_dot dot;
    ndl_pack_bt pack_bt; /* B blocks with contiguous columns; NULL: pack_b */
    int64_t nc1;         /* nc when m <= mc (Note [Narrow B blocks for few rows]) */
    ndl_small_bt bt;     /* skinny A @ W.T (Note [Transposing W in registers]); NULL: none */
    ndl_ukernel kernel_packed; /* A packed (cpu_matmul.h): the same bits, faster */
    int bt_m;            /* bt up to this m (NDL_*_BT_M); from bt_m + 1, W @ x.T */
    int small_m;         /* axpy loops up to this m (Note [Axpy rows per tile]) */
    unsigned char tile_loops[6]; /* rows each k loop of the kernels runs, ascending, MR
                             * last, 0 after (Note [Balanced last tiles]); {0}: any rows */
    ndl_ukernel_fill kernel_fill; /* Note [Packing B in the kernel]; NULL: none */
    int64_t fill_max_b;  /* B's bytes up to which it may fill (Note [B from memory]) */
    int set_rows;        /* rows of a tile of A read in place with rows 1 KiB apart:
                          * the most that fit an L1 set (Note [A rows that alias]) */
    int few_rows_fill;   /* m = 4..small_m take the filling kernels, one thread or
                          * more (Note [Few rows on the filling kernel]) */
    ndl_ukernel_row row; /* m = 1 in registers (Note [One row: which products]); NULL: none */
    ndl_ukernel_pack_a kernel_pack_a; /* Note [Packing A in the kernel]; NULL: none */
} ndl_gemm_config;

/* a task's columns, in bytes, for cfg->row (Note [One row: which products]) */
#define NDL_ROW_MAX_BYTES 4096
/* the first m of the filling kernels where few_rows_fill (Note [Few rows on
 * the filling kernel]) */
#define NDL_FILL_M 4
/* the skinny products' column ranges are cut on multiples of this many */
#define NDL_SMALL_COLS 64

/* Indexed [kernel][dtype]; the block sizes are filled in by derive_blocks
 * (Note [Block sizes]) once the kernel is chosen. */
enum { K_GENERIC, K_AVX2, K_AVX512, K_COUNT };
#define AVX512_LOOPS                                                                             \
    {NDL_AVX512_QUARTER_ROWS, NDL_AVX512_MR_F32 / 2, NDL_AVX512_LOW_MID_ROWS,                    \
     NDL_AVX512_MID_ROWS, NDL_AVX512_MR_F32}
_Static_assert(NDL_AVX2_MR_F32 == NDL_AVX2_MR_F64 && NDL_AVX512_MR_F32 == NDL_AVX512_MR_F64,
               "the loops of AVX2 and AVX512 are each one list for both dtypes");
static const ndl_gemm_config g_kernels[K_COUNT][NDL_NUM_DTYPES] = {
    [K_GENERIC] = {
        [NDL_FLOAT32] = {"generic", ndl_ukernel_generic_f32, NDL_GENERIC_MR_F32,
                         NDL_GENERIC_NR_F32, 0, 0, 0,
                         ndl_small_axpy_generic_f32, ndl_small_dot_generic_f32,
                         .kernel_packed = ndl_ukernel_generic_f32, .small_m = 8,
                         .tile_loops = {0}},
        [NDL_FLOAT64] = {"generic", ndl_ukernel_generic_f64, NDL_GENERIC_MR_F64,
                         NDL_GENERIC_NR_F64, 0, 0, 0,
                         ndl_small_axpy_generic_f64, ndl_small_dot_generic_f64,
                         .kernel_packed = ndl_ukernel_generic_f64, .small_m = 8,
                         .tile_loops = {0}},
    },
    [K_AVX2] = {
        [NDL_FLOAT32] = {"avx2", ndl_ukernel_avx2_f32, NDL_AVX2_MR_F32, NDL_AVX2_NR_F32, 0, 0, 0,
                         ndl_small_axpy_avx2_f32, ndl_small_dot_avx2_f32, ndl_pack_bt_f32, 0,
                         ndl_small_bt_f32, ndl_ukernel_avx2_f32_packed,
                         .bt_m = NDL_AVX2_BT_M, .small_m = 8,
                         .tile_loops = {NDL_AVX2_MR_F32 / 2, NDL_AVX2_MID_ROWS, NDL_AVX2_MR_F32},
                         .kernel_fill = ndl_ukernel_avx2_f32_fill, .few_rows_fill = 1,
                         .row = ndl_ukernel_avx2_f32_row},
        [NDL_FLOAT64] = {"avx2", ndl_ukernel_avx2_f64, NDL_AVX2_MR_F64, NDL_AVX2_NR_F64, 0, 0, 0,
                         ndl_small_axpy_avx2_f64, ndl_small_dot_avx2_f64, ndl_pack_bt_f64, 0,
                         ndl_small_bt_f64, ndl_ukernel_avx2_f64_packed,
                         .bt_m = NDL_AVX2_BT_M, .small_m = 8,
                         .tile_loops = {NDL_AVX2_MR_F32 / 2, NDL_AVX2_MID_ROWS, NDL_AVX2_MR_F32},
                         .kernel_fill = ndl_ukernel_avx2_f64_fill,
                         .row = ndl_ukernel_avx2_f64_row},
    },
    [K_AVX512] = {
        [NDL_FLOAT32] = {"avx512", ndl_ukernel_avx512_f32, NDL_AVX512_MR_F32, NDL_AVX512_NR_F32,
                         0, 0, 0, ndl_small_axpy_avx512_f32, ndl_small_dot_avx512_f32,
                         ndl_pack_bt_f32, 0, ndl_small_bt_avx512_f32,
                         ndl_ukernel_avx512_f32_packed, .bt_m = NDL_AVX512_BT_M, .small_m = 2,
                         .tile_loops = AVX512_LOOPS,
                         .kernel_fill = ndl_ukernel_avx512_f32_fill,
                         .row = ndl_ukernel_avx512_f32_row,
                         .kernel_pack_a = ndl_ukernel_avx512_f32_pack_a},
        [NDL_FLOAT64] = {"avx512", ndl_ukernel_avx512_f64, NDL_AVX512_MR_F64, NDL_AVX512_NR_F64,
                         0, 0, 0, ndl_small_axpy_avx512_f64, ndl_small_dot_avx512_f64,
                         ndl_pack_bt_f64, 0, ndl_small_bt_avx512_f64,
                         ndl_ukernel_avx512_f64_packed, .bt_m = NDL_AVX512_BT_M_F64, .small_m = 8,
                         .tile_loops = AVX512_LOOPS,
                         .kernel_fill = ndl_ukernel_avx512_f64_fill, .few_rows_fill = 1,
                         .row = ndl_ukernel_avx512_f64_row,
                         .kernel_pack_a = ndl_ukernel_avx512_f64_pack_a},
    },
};

static pthread_once_t g_kernel_once = PTHREAD_ONCE_INIT;
static ndl_gemm_config g_config[NDL_NUM_DTYPES]; /* the chosen kernel, with its blocks */

/* Note [Usable SIMD] in cpu_info.c: CPU flag and OS support both. */
static int kernel_supported(int k)
{
    const ndl_cpu_info *info = ndl_get_cpu_info();
    if (k == K_AVX512)
        return info->avx512f;
    if (k == K_AVX2)
        return info->avx2_fma;
    return k == K_GENERIC;
}

/* What NEEDLE_MATMUL_KERNEL may force: what the CPU supports; and in the
 * NDL_AVX512_EMU test build, the AVX-512 kernels wherever AVX2 runs (they
 * are AVX2 code there: Note [AVX-512 without AVX-512], avx512_emu.h). The
 * default choice still follows the CPU alone. */
static int kernel_forcible(int k)
{
#ifdef NDL_AVX512_EMU
    if (k == K_AVX512)
        return ndl_get_cpu_info()->avx2_fma;
#endif
    return kernel_supported(k);
}

static int64_t clamp64(int64_t x, int64_t lo, int64_t hi) { return x < lo ? lo : x > hi ? hi : x; }

/* Note [Block sizes]
 *   Derived from the cache sizes the CPU reports (cpu_info.h), with the
 *   rules of the GotoBLAS/BLIS analytical model, the same for every kernel:
 *     KC: one packed B micro-panel (KC x NR) fills half of L1d, leaving the
 *         other half to the MR-row A micro-panels streaming past it and to
 *         the C tile;                      KC = L1d / 2 / (NR * size)
 *         but at least 36 MR (NDL_KC_TILE_STEPS): each micro-kernel call
 *         reads and writes back its MR x NR tile of C (MR rows that are
 *         often 4 KiB apart and then share one L1 set), and KC k-steps must
 *         amortise that. The AVX-512 tiles (14 x 32 float32) are 4.7x the
 *         AVX2 ones (6 x 16), so on a 32 KiB L1d the first rule alone gives
 *         them KC = 128 and a tile write-back every 128 steps, measured
 *         10-15% slower than KC = 336-384 on Zen 4 (1 thread, n =
 *         1000..2048); the B micro-panel then streams from L2, which at 128
 *         + 56 bytes per 28 FMAs is far below any x86 L2's bandwidth. The
 *         floor was 24 MR (KC 336) until 2026-12-04; on the Xeon (Emerald
 *         Rapids: 48 KiB L1d, 2 MiB L2), medians of 1-1.5 s of calls,
 *         GFLOP/s, KC 336 -> 504 (MC 518 -> 336 by the second rule):
 *         float32 1 thread n = 400 151 -> 155, 448 155 -> 160, 1024 149-150
 *         -> 151-153, 2048 151-152 -> 153-156, 4096 149-151 -> 155-156, 512
 *         and 600 the same (their last k block is short: 504 + 8), m = 32..
 *         300 with K = N = 1024..4096 the same or +1-2%; 2 threads 1024^3
 *         289-290 -> 296-298, 2048^3 296 -> 297-304, 4096^3 290-299 ->
 *         299-306; float64 (KC 504, MC 168) 1024^3 72 -> 74-76, 2048^3
 *         74-75 -> 76-78. KC 512-1024 with MC a third of L2 were all within
 *         2% of 504 there; KC 504 with MC left at 518 (the A block then
 *         half of L2) was not faster than 336.
 *     MC: the A block (MC x KC) takes a third of L2, so that it stays there
 *         while B panels and C lines pass through;
 *                                          MC = L2 / 3 / (KC * size), MR multiple
 *     NC: the B block (KC x NC) takes half of this core's share of L3;
 *                                          NC = L3 / 2 / (KC * size), NR multiple
 *   KC is a multiple of 8 within [64, 1024], MC within [MR, 2048], NC
 *   within [4 NR, 8192]. Zen 3 (32 KiB L1d, 512 KiB L2), AVX2 float32:
 *   KC 256, MC 168, NC 8192; Zen 4 (32 KiB, 1 MiB, 16 MiB L3 a core),
 *   AVX-512 float32: KC 504, MC 168, NC 4160; Skylake-X (32 KiB, 1 MiB):
 *   the same KC and MC; Ice Lake (48 KiB, 1.25 MiB): KC 504, MC 210;
 *   Sapphire / Emerald Rapids (48 KiB, 2 MiB): KC 504, MC 336.
 *   KC depends on nothing but L1d and the tile, never on the thread count
 *   or the shape, so results stay independent of them (Note [One chain per
 *   element] in cpu_matmul.h). NEEDLE_MATMUL_BLOCKS=MC,KC,NC overrides the
 *   three (rounded to the tile) for tuning experiments.
 */
#define NDL_KC_TILE_STEPS 36 /* KC >= 36 MR: Note [Block sizes] */
#define NDL_MC_MAX 2048      /* rows of an A block, at most */
/* Note [A rows that alias]: MR, else the largest of the kernels' loops
 * (Note [Half tiles] in cpu_matmul_simd_impl.h) within L1d's ways */
static int set_rows(const ndl_gemm_config *cfg, int ways)
{
    if (cfg->mr <= ways)
        return cfg->mr;
    if (!cfg->tile_loops[0]) /* any rows */
        return ways;
    int rows = cfg->tile_loops[0];
    for (int i = 0; cfg->tile_loops[i]; i++)
        if (cfg->tile_loops[i] <= ways)
            rows = cfg->tile_loops[i];
    return rows;
}
static void derive_blocks(ndl_gemm_config *cfg, int64_t es, const ndl_cpu_info *info)
{
    int64_t kc_l1 = info->l1d / 2 / (cfg->nr * es);
    int64_t kc_tile = NDL_KC_TILE_STEPS * (int64_t)cfg->mr;
    cfg->kc = clamp64((kc_l1 > kc_tile ? kc_l1 : kc_tile + 7) / 8 * 8, 64, 1024);
    cfg->mc = clamp64(info->l2 / 3 / (cfg->kc * es) / cfg->mr * cfg->mr, cfg->mr,
                      NDL_MC_MAX / cfg->mr * cfg->mr);
    int64_t l3 = info->l3 > 0 ? info->l3 : info->l2;
    cfg->nc = clamp64(l3 / 2 / (cfg->kc * es) / cfg->nr * cfg->nr, 4 * cfg->nr,
                      8192 / cfg->nr * cfg->nr);
    cfg->nc1 = clamp64(info->l2 / 2 / (cfg->kc * es) / cfg->nr * cfg->nr, 4 * cfg->nr, cfg->nc);
    cfg->fill_max_b = info->llc / 2;                      /* Note [B from memory] */
    cfg->set_rows = set_rows(cfg, info->l1d_ways);       /* Note [A rows that alias] */
    const char *env = getenv("NEEDLE_MATMUL_BLOCKS");
    long long mc, kc, nc;
    if (env && sscanf(env, "%lld,%lld,%lld", &mc, &kc, &nc) == 3 && mc > 0 && kc > 0 && nc > 0) {
        cfg->mc = (mc + cfg->mr - 1) / cfg->mr * cfg->mr;
        cfg->kc = kc;
        cfg->nc = (nc + cfg->nr - 1) / cfg->nr * cfg->nr;
    }
}

/* Note [Timing the kernels]
 *   The widest kernel is not always the fastest: Zen 4 runs each AVX-512
 *   instruction as two 256-bit halves, so its 14 x 32 tile has the AVX2
 *   kernel's peak and more cache traffic per FMA (measured 53-63 against
 *   91 GFLOP/s, 1 thread, n = 1024..2048), while Intel's server cores
 *   with two 512-bit FMA units run it at up to twice the AVX2 speed. The
 *   cache sizes cannot tell those apart. So when the CPU has AVX-512
 *   (and NEEDLE_MATMUL_KERNEL names no kernel), the first product times
 *   both float32 kernels, each on its own blocks (derive_blocks) over one
 *   MC x KC block of A and 256 columns of B, all in L2, which is the loop
 *   that dominates every product large enough to matter: three
 *   alternating rounds of ~1 ms each, best of each kept, 10 ms at most
 *   once per process. AVX2 is chosen only when it is over 10% faster, so
 *   timing noise cannot flip a machine where both are close, and an
 *   Intel core (AVX-512 ~2x) keeps AVX-512; float64 follows float32 (the
 *   same register plan with half the lanes, so the same ratio). The
 *   choice then holds for the process (results do not depend on it but
 *   through the instruction set: Note [One chain per element]).
 *   NEEDLE_MATMUL_TIME=1 times the two widest kernels the CPU has on any
 *   machine (AVX2 against generic here), for the tests.
 */
static double kernel_rate(const ndl_gemm_config *cfg, float *buf)
{
    const int64_t cols = 256, kc = cfg->kc, mc = cfg->mc;
    float *a = buf, *b = a + mc * kc, *c = b + kc * cols;
    double fmas = (double)mc * (double)kc * (double)cols, best = 0;
    int64_t reps = (int64_t)(3e7 / fmas) + 1; /* 3e7 FMAs: ~1 ms on one core */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int64_t rep = 0; rep < reps; rep++)
        for (int64_t jr = 0; jr < cols; jr += cfg->nr)
            for (int64_t ir = 0; ir < mc; ir += cfg->mr)
                cfg->kernel_packed(kc, a + ir * kc, 1, cfg->mr, b + jr * kc, c + ir * cols + jr,
                                   cols, cfg->mr, cfg->nr, 1);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    if (secs > 0)
        best = fmas * (double)reps / secs;
    return best;
}

/* Note [Timing the kernels]: wide if it is not clearly slower than narrow. */
static int time_kernels(int wide, int narrow)
{
    const ndl_cpu_info *info = ndl_get_cpu_info();
    ndl_gemm_config cfg[2] = {g_kernels[wide][NDL_FLOAT32], g_kernels[narrow][NDL_FLOAT32]};
    size_t need = 0;
    for (int i = 0; i < 2; i++) {
        derive_blocks(&cfg[i], 4, info);
        size_t n = (size_t)(cfg[i].mc * cfg[i].kc + cfg[i].kc * 256 + cfg[i].mc * 256);
        need = n > need ? n : need;
    }
    float *buf = malloc(need * sizeof(float));
    if (!buf)
        return wide;
    for (size_t i = 0; i < need; i++)
        buf[i] = 0.5f; /* sums of products of 0.5: no denormals, no infinities */
    double rate[2] = {0, 0};
    for (int round = 0; round < 3; round++)
        for (int i = 0; i < 2; i++) {
            double r = kernel_rate(&cfg[i], buf);
            rate[i] = r > rate[i] ? r : rate[i];
        }
    free(buf);
    return rate[1] > 1.10 * rate[0] ? narrow : wide;
}

static void choose_kernel(void)
{
    int chosen = kernel_supported(K_AVX512) ? K_AVX512
                 : kernel_supported(K_AVX2) ? K_AVX2
                                            : K_GENERIC;
    const char *env = getenv("NEEDLE_MATMUL_KERNEL");
    int forced = 0;
    if (env && *env) /* unknown or unsupported names keep the best one */
        for (int k = 0; k < K_COUNT; k++)
            if (strcmp(env, g_kernels[k][0].name) == 0 && kernel_forcible(k)) {
                chosen = k;
                forced = 1;
            }
    const char *tenv = getenv("NEEDLE_MATMUL_TIME");
    int time_any = tenv && strcmp(tenv, "1") == 0;
    if (!forced && chosen > K_GENERIC && (chosen == K_AVX512 || time_any))
        chosen = time_kernels(chosen, chosen - 1); /* Note [Timing the kernels] */
    const ndl_cpu_info *info = ndl_get_cpu_info();
    for (int dt = 0; dt < NDL_NUM_DTYPES; dt++) {
        g_config[dt] = g_kernels[chosen][dt];
        derive_blocks(&g_config[dt], (int64_t)ndl_itemsize((ndl_dtype)dt), info);
        if (!info->amd) /* Note [Packing A in the kernel]: measured on AMD's cores only */
            g_config[dt].kernel_pack_a = NULL;
    }
}

static const ndl_gemm_config *get_config(ndl_dtype dt)
{
    pthread_once(&g_kernel_once, choose_kernel);
    return &g_config[dt];
}

const char *ndl_cpu_matmul_kernel_name(void)
{
    return get_config(NDL_FLOAT32)->name;
}

int ndl_cpu_matmul_blocks(ndl_dtype dt, int64_t out[NDL_MATMUL_BLOCKS_N])
{
    if ((unsigned)dt >= NDL_NUM_DTYPES)
        return NDL_EINVAL;
    const ndl_gemm_config *cfg = get_config(dt);
    out[0] = cfg->mr;
    out[1] = cfg->nr;
    out[2] = cfg->mc;
    out[3] = cfg->kc;
    out[4] = cfg->nc;
    out[5] = cfg->small_m;
    out[6] = cfg->bt ? cfg->bt_m + 1 : 0; /* Note [x @ W.T by W @ x.T] */
    out[7] = cfg->few_rows_fill ? NDL_FILL_M : 0; /* Note [Few rows on the filling kernel] */
    out[8] = cfg->row ? NDL_ROW_MAX_BYTES : 0; /* Note [One row: which products] */
    out[9] = cfg->fill_max_b;             /* Note [B from memory] */
    out[10] = cfg->set_rows;              /* Note [A rows that alias] */
    out[11] = cfg->kernel_pack_a != NULL; /* Note [Packing A in the kernel] */
    return NDL_OK;
}

/* ---- packing (Note [Packed panels]) ------------------------------------- */

/* The element size `es` is a compile-time constant at every call site
 * (4 or 8), so each memcpy below compiles to a single move. */

/* src is A[i0][k0]; packs mc x kc into panels of mr rows. */
static inline __attribute__((always_inline)) void pack_a(size_t es, const char *src, int64_t rs,
                                                         int64_t cs, int64_t mc, int64_t kc, int mr,
                                                         char *dst)
{
    for (int64_t i0 = 0; i0 < mc; i0 += mr) {
        int rows = mc - i0 < mr ? (int)(mc - i0) : mr;
        const char *s = src + i0 * rs * (int64_t)es;
        if (cs == 1) { /* each row contiguous in k */
            for (int r = 0; r < rows; r++) {
                const char *row = s + r * rs * (int64_t)es;
                for (int64_t k = 0; k < kc; k++)
                    memcpy(dst + (k * mr + r) * es, row + k * es, es);
            }
        } else if (rs == 1 && rows == mr) { /* each column contiguous in i */
            for (int64_t k = 0; k < kc; k++)
                memcpy(dst + k * mr * es, s + k * cs * (int64_t)es, (size_t)mr * es);
        } else if (rs == 1) {
            for (int64_t k = 0; k < kc; k++)
                memcpy(dst + k * mr * es, s + k * cs * (int64_t)es, rows * es);
        } else {
            for (int64_t k = 0; k < kc; k++)
                for (int r = 0; r < rows; r++)
                    memcpy(dst + (k * mr + r) * es, s + (r * rs + k * cs) * (int64_t)es, es);
        }
        if (rows < mr)
            for (int64_t k = 0; k < kc; k++)
                memset(dst + (k * mr + rows) * es, 0, (size_t)(mr - rows) * es);
        dst += (size_t)mr * kc * es;
    }
}

/* src is B[k0][j0]; packs kc x nc into panels of nr columns.
 *
 * Note [Broadcast B rows]
 *   A B whose columns are 0 apart (each row one value, broadcast: the dual
 *   form of a conv's weight gradient when the output gradient is y.sum()'s,
 *   Note [Conv in blocks of rows] in ndarray_conv.c) is packed by
 *   repeating each row's value along its panel row; the general loop read
 *   the same element cols times through the strides. 16 -> 32 channels 3x3,
 *   batch 32, 32x32, 2 threads (AMD EPYC Zen 2), conv(x, w).sum().backward():
 *   8.3 -> 7.7 ms (7.3 with the broadcast case of Note [Strided channels],
 *   ndarray_conv.c; measured before Note [Conv rows in place] in
 *   cpu_conv_rows.c, which leaves the weight gradient's dual form, and so
 *   this packing, as it was). */
#define NDL_PACK_ROWS 8
static inline __attribute__((always_inline)) void pack_b(size_t es, const char *src, int64_t rs,
                                                         int64_t cs, int64_t kc, int64_t nc, int nr,
                                                         char *dst)
{
    int64_t j0 = 0;
    if (cs == 1) {
        /* Rows contiguous: the full panels are filled NDL_PACK_ROWS rows at
         * a time, so that B is read as that many sequential streams, which
         * the prefetchers follow; panel by panel, the reads would jump a
         * row ahead at every step (kc streams) and wait on memory. */
        int64_t full = nc / nr * nr;
        for (int64_t k0 = 0; k0 < kc; k0 += NDL_PACK_ROWS) {
            int64_t k1 = kc - k0 < NDL_PACK_ROWS ? kc : k0 + NDL_PACK_ROWS;
            for (int64_t j = 0; j < full; j += nr)
                for (int64_t k = k0; k < k1; k++)
                    memcpy(dst + (j * kc + k * nr) * es, src + (k * rs + j) * (int64_t)es,
                           (size_t)nr * es);
        }
        j0 = full;
        dst += (size_t)full * kc * es;
    }
    for (; j0 < nc; j0 += nr) {
        int cols = nc - j0 < nr ? (int)(nc - j0) : nr;
        const char *s = src + j0 * cs * (int64_t)es;
        if (cs == 1) {
            for (int64_t k = 0; k < kc; k++)
                memcpy(dst + k * nr * es, s + k * rs * (int64_t)es, cols * es);
        } else if (cs == 0) { /* one value per row (Note [Broadcast B rows]) */
            for (int64_t k = 0; k < kc; k++)
                for (int j = 0; j < cols; j++)
                    memcpy(dst + (k * nr + j) * es, s + k * rs * (int64_t)es, es);
        } else if (rs == 1) { /* each column contiguous in k */
            for (int j = 0; j < cols; j++) {
                const char *col = s + j * cs * (int64_t)es;
                for (int64_t k = 0; k < kc; k++)
                    memcpy(dst + (k * nr + j) * es, col + k * es, es);
            }
        } else {
            for (int64_t k = 0; k < kc; k++)
                for (int j = 0; j < cols; j++)
                    memcpy(dst + (k * nr + j) * es, s + (k * rs + j * cs) * (int64_t)es, es);
        }
        if (cols < nr)
            for (int64_t k = 0; k < kc; k++)
                memset(dst + (k * nr + cols) * es, 0, (size_t)(nr - cols) * es);
        dst += (size_t)nr * kc * es;
    }
}

/* Per-dtype entry points. The switches give the inlined packers a constant
 * panel width for the kernels' tiles, so the copies become plain moves. */
#define NDL_PACK_CASES(pack, es, w, ...)                                        \
    switch (w) {                                                                \
    case 4: pack(es, __VA_ARGS__, 4, d); break;                                 \
    case 6: pack(es, __VA_ARGS__, 6, d); break;                                 \
    case 8: pack(es, __VA_ARGS__, 8, d); break;                                 \
    case 14: pack(es, __VA_ARGS__, 14, d); break;                               \
    case 16: pack(es, __VA_ARGS__, 16, d); break;                               \
    case 32: pack(es, __VA_ARGS__, 32, d); break;                               \
    default: pack(es, __VA_ARGS__, w, d); break;                                \
    }

static void pack_a_f32(const char *s, int64_t rs, int64_t cs, int64_t mc, int64_t kc, int mr,
                       char *d)
{
    NDL_PACK_CASES(pack_a, 4, mr, s, rs, cs, mc, kc)
}
static void pack_a_f64(const char *s, int64_t rs, int64_t cs, int64_t mc, int64_t kc, int mr,
                       char *d)
{
    NDL_PACK_CASES(pack_a, 8, mr, s, rs, cs, mc, kc)
}
static void pack_b_f32(const char *s, int64_t rs, int64_t cs, int64_t kc, int64_t nc, int nr,
                       char *d)
{
    NDL_PACK_CASES(pack_b, 4, nr, s, rs, cs, kc, nc)
}
static void pack_b_f64(const char *s, int64_t rs, int64_t cs, int64_t kc, int64_t nc, int nr,
                       char *d)
{
    NDL_PACK_CASES(pack_b, 8, nr, s, rs, cs, kc, nc)
}

/* ---- one block of one product ------------------------------------------- */

/* Note [Reading A in place]
 *   When A's rows are contiguous (csa == 1) the kernels can read A where it
 *   lies: MR sequential streams that the hardware prefetchers follow,
 *   measured faster than packing for narrow products (Zen 3: 64^3 +25%,
 *   4096x4096x256 +13%), where packing A costs as much as the arithmetic
 *   it feeds; at p >= 512 packing costs under 2% and both are equal. So A
 *   is read in place when p <= 2 NR (each A panel meets at most two B
 *   panels) or when its rows are contiguous and p < 512; otherwise it is
 *   packed. Rows a multiple of 1 KiB apart run tiles of fewer rows there
 *   (Note [A rows that alias]). The MC rows of a block in a few L2 sets
 *   did not show: AMD EPYC (Zen 2, family 23 model 49, 8-way L1d and
 *   L2), AVX2, 1 thread, interleaved medians, GFLOP/s, packed -> in place
 *   (OpenBLAS 0.3.31 Haswell): float32 256 x 1024 @ 1024 x 64 76-79 -> 93
 *   (87), 1000 x 1024 x 48 72-74 -> 94 (85), 2000 x 2048 x 40 50-54 ->
 *   68-75 (57), 1000 x 4096 x 48 69 -> 89-90 (78), 500 x 512 x 64 78-79 ->
 *   96-97 (84), 256 x 1024 x 128 87-89 -> 94 (94), p = 200..400 the same;
 *   float64 1000 x 1024 x 24 32-38 -> 42-46 (31), 2000 x 2048 x 20 22-24
 *   -> 31-32 (25); 2 threads float32 1000 x 1024 x 48 135-136 -> 174-176
 *   (155), 256 x 1024 x 64 140-142 -> 163-168 (156); and through Note [x @
 *   W.T by W @ x.T]: float32 x @ W.T 64 x 1024 @ 1024 x 1024 72 -> 84-88
 *   (76-82), 48 x 1024 x 1024 70-71 -> 86-87 (73-78), 64 x 4096 x 1024
 *   73-74 -> 89 (78), 64 x 512 x 512 81 -> 89-90 (85); float64 32 x 1024 x
 *   1024 31-32 -> 43 (30), 20 x 1024 x 1024 28-29 -> 37 (24); but 40 x 4096
 *   x 4096 (W from memory) 62-64 -> 58-59 (57).
 */
static int read_a_in_place(const ndl_gemm_config *cfg, int64_t csa, int64_t p)
{
    return p <= 2 * cfg->nr || (csa == 1 && p < 512);
}

/* Note [A rows that alias]
 *   Rows a multiple of 1 KiB apart (K = 256, 512, 1024, 2048 float32 or
 *   float64: most layers' widths) fall in a few L1d sets, and a tile
 *   reading A in place keeps one line of each of its rows in use, a
 *   broadcast per row and k step: 14 AVX-512 rows against 8 ways miss L1
 *   on every line (Zen 4, float32 1024 x 1024 @ 1024 x 16 62 GFLOP/s, 113
 *   with K = 1000). Such tiles therefore run set_rows rows: MR where the
 *   MR rows fit a set (AVX2's 6 rows against 8 ways or more), else the
 *   largest of the kernel's row loops that does (Note [Half tiles] in
 *   cpu_matmul_simd_impl.h: 8 of AVX-512's against 8 ways, 10 against
 *   12). Those loops broadcast one A element for as many FMAs as MR rows
 *   do, only 2 more B loads a k step for 14 rows. Before this, such an A
 *   was packed from p > 2 NR (the transposes costing a third of x @ W.T at
 *   m = 32) and thrashed up to there. Copying each block to a padded
 *   stride was tried first: the copy is not overlapped with the FMAs, and
 *   took 20-25% of the samples (float64 1024 x 1024 @ 1024 x 16 43.6 ->
 *   43.1, float32 512 x 512 x 8 64.6 -> 48.8). Each C element keeps its
 *   chain (Note [One chain per element]): the bits do not change. Zen 4
 *   (AMD EPYC, family 25 model 17, 32 KiB 8-way L1d), AVX-512, 1 thread,
 *   best of interleaved 1 s runs, GFLOP/s, before -> after (OpenBLAS
 *   0.3.31 SkylakeX / PyTorch 2.13): float32 1024 x 1024 @ 1024 x 16 62 ->
 *   114 (81 / 75), x 32 87 -> 115 (93 / 88), 512 x 512 x 8 65 -> 81; x @
 *   W.T 32 x 1024 @ 1024 x 1024 84 -> 109 (59 / 80), 64 x 1024 x 1024 84
 *   -> 110 (74 / 91), 64 x 4096 x 4096 83 -> 105 (68 / 83); float64 1024
 *   x 1024 x 16 44 -> 57 (35 / 17), 512 x 512 x 8 35 -> 55, x @ W.T 32 x
 *   1024 x 1024 42 -> 56 (37 / 43), 64 x 4096 x 4096 43 -> 53 (41 / 46);
 *   p from 2 NR to 512, in place now where A was packed: float32 1024 x
 *   1024 x 128 109 -> 115, float64 52 -> 57, 256 x 256 x 64 52 -> 57
 *   (float32 113 -> 114), 1024 x 1024 x 500 the same. 2 threads: float32
 *   1024 x 1024 x 16 122 -> 222 (154 / 150), x @ W.T 64 x 4096 x 4096 169
 *   -> 210 (137 / 143); float64 x @ W.T 32 x 1024 x 1024 84 -> 107 (72 /
 *   84). K = 1000 (no alias) the same before and after: 115, 57.
 */
static int rows_alias(const ndl_gemm_config *cfg, int64_t rsa, int64_t csa, size_t es)
{
    return csa == 1 && (rsa * (int64_t)es) % 1024 == 0 && cfg->set_rows < cfg->mr;
}

typedef struct {
    const ndl_gemm_config *cfg;
    size_t es;
    int64_t mc;       /* A block rows: MC, more when K < KC (Note [A blocks of short rows]) */
    int pack_a_block; /* pack every A block: not read in place, or for kernel_fill (gemm) */
    int a_rows;       /* rows per tile: MR, or set_rows (Note [A rows that alias]) */
    /* cfg->kernel_fill, or NULL where pack_b copies B ahead (Note [B from memory]) */
    ndl_ukernel_fill kernel_fill;
    int b_from_memory; /* B past half the LLC (Note [B from memory]) */
    void (*pack_a)(const char *, int64_t, int64_t, int64_t, int64_t, int, char *);
    void (*pack_b)(const char *, int64_t, int64_t, int64_t, int64_t, int, char *);
} ndl_gemm_ops;

/* Note [Packing A by transposes]
 *   An A block whose rows are contiguous (csa == 1) is packed by
 *   cfg->pack_bt when the kernel has one (AVX2, AVX-512): an MR-row panel
 *   is the transpose of MR rows, the layout pack_bt makes of B = W.T's
 *   columns, and it transposes 8 x 8 float32 (4 x 4 float64) squares in
 *   registers, where pack_a stores one element per instruction (Zen 3, 1
 *   thread, 1024^3 float32: pack_a took 3% of the product).
 *   An A block whose columns are contiguous (rsa == 1: A.T @ B with A
 *   row-major) is, panel for panel, a row-major B block (the MR elements
 *   of A's column k are A.T's row k), so pack_b packs it with NR = MR: it
 *   reads NDL_PACK_ROWS rows of A.T at a time across the whole block, long
 *   sequential streams, where pack_a walked each MR-wide panel down KC
 *   rows of A.T (one cache line per row, rows 4 KiB apart at m = 1024,
 *   each line met again by the next panels only after KC others). The
 *   panels are the same values in the same places, so the bits do not
 *   change. Zen 3, float32 1024 A.T @ B, time packing A: 1 thread 1.1 ->
 *   0.5 ms of 24; 2 threads (both threads' time) 1.8-2.2 -> 0.9-1.4 ms.
 */
/* panels of w rows: MR, or fewer for a narrow panel (Note [One narrow A panel]) */
static void pack_a_block(const ndl_gemm_ops *ops, const char *a, int64_t rsa, int64_t csa,
                         int64_t mc, int64_t kc, int w, char *abuf)
{
    const ndl_gemm_config *cfg = ops->cfg;
    if (csa == 1 && cfg->pack_bt)
        cfg->pack_bt(a, rsa, kc, mc, w, abuf);
    else if (rsa == 1) /* A.T @ B: panels of A by columns are B's panels */
        ops->pack_b(a, csa, 1, kc, mc, w, abuf);
    else
        ops->pack_a(a, rsa, csa, mc, kc, w, abuf);
}

/* Note [No prefetch of the next B block]
 *   Until 2026-12-04 a static helper here prefetched the next B block's
 *   columns into the outer caches while the kernels ran on the current
 *   one, and a note credited it with 3-20% on skinny products (Zen 3).
 *   Its body was nothing but __builtin_prefetch calls, which are no side
 *   effect to gcc 12: its local pure-const pass found the helper "looping
 *   const" and dead-code elimination deleted every call (-fdump-tree-all;
 *   no prefetcht2 anywhere in the library). It never ran, and the gain was
 *   noise. Made to run (a getenv in its body), it cost time on the Xeon
 *   (Emerald Rapids, 1 thread, float32 GFLOP/s without -> with): m = 17
 *   K = N = 4096 60 -> 50, m = 64 110 -> 87-96; x @ W.T m = 32 K = N =
 *   4096 75 -> 63, m = 64 104 -> 91, m = 256 132 -> 128: the hardware
 *   prefetchers already follow packing's streams, and the extra requests
 *   compete with them. So it is gone. A prefetch that must survive goes
 *   inside a function with other effects (as in the kernels and in
 *   cpu_matmul_bt_avx2.c), and its effect is checked in the disassembly.
 */

/* C (m x p, row stride ldc) = A (m x n) @ B (n x p), serially, n >= 1.
 * a and b point at A[0][0] and B[0][0]; abuf and bbuf hold ops->mc x KC
 * and KC x NC elements (or less when the product is smaller). */
static void gemm_block(const ndl_gemm_ops *ops, int64_t m, int64_t n, int64_t p,
                       const char *a, int64_t rsa, int64_t csa,
                       const char *b, int64_t rsb, int64_t csb,
                       char *c, int64_t ldc, char *abuf, char *bbuf)
{
    const ndl_gemm_config *cfg = ops->cfg;
    const int64_t es = (int64_t)ops->es;
    const int mr = cfg->mr, nr = cfg->nr;
    const int pack_a = ops->pack_a_block;
    /* Note [Packing B in the kernel]: B by rows, A packed */
    const int fill = csb == 1 && pack_a && ops->kernel_fill;
    for (int64_t jc = 0; jc < p; jc += cfg->nc) {
        int64_t nc = p - jc < cfg->nc ? p - jc : cfg->nc;
        for (int64_t pc = 0; pc < n; pc += cfg->kc) {
            int64_t kc = n - pc < cfg->kc ? n - pc : cfg->kc;
            int first = pc == 0;
            if (rsb == 1 && csb != 1 && cfg->pack_bt) /* B = W.T: transposed in registers */
                cfg->pack_bt(b + (pc + jc * csb) * es, csb, kc, nc, nr, bbuf);
            else if (!fill)
                ops->pack_b(b + (pc * rsb + jc * csb) * es, rsb, csb, kc, nc, nr, bbuf);
            for (int64_t ic = 0; ic < m; ic += ops->mc) {
                int64_t mc = m - ic < ops->mc ? m - ic : ops->mc;
                const char *ablk = a + (ic * rsa + pc * csa) * es;
                /* row panel ir of the block: A[ir + r][k] = ap[(r*ars + k*acs) * es] */
                int64_t ars = rsa, acs = csa; /* in elements */
                ndl_ukernel kernel = cfg->kernel;
                if (pack_a) {
                    pack_a_block(ops, ablk, rsa, csa, mc, kc, mr, abuf);
                    ablk = abuf;
                    ars = 1;
                    acs = mr;
                    kernel = cfg->kernel_packed;
                }
                const int step = ops->a_rows; /* MR wherever A is packed */
                for (int64_t jr = 0; jr < nc; jr += nr) {
                    int nrr = nc - jr < nr ? (int)(nc - jr) : nr;
                    char *bp = bbuf + jr * kc * es;
                    /* Note [Packing B in the kernel]: the first A block's first
                     * tile packs the panel, from B itself */
                    const char *bsrc = b + (pc * rsb + jc + jr) * es;
                    for (int64_t ir = 0; ir < mc; ir += step) {
                        int mrr = mc - ir < step ? (int)(mc - ir) : step;
                        if (fill && ic == 0 && ir == 0)
                            ops->kernel_fill(kc, ablk, mr, bsrc, rsb, bp,
                                             c + ((ic + ir) * ldc + jc + jr) * es, ldc, mrr,
                                             nrr, first);
                        else
                            kernel(kc, ablk + ir * (pack_a ? kc : rsa) * es, ars, acs, bp,
                                   c + ((ic + ir) * ldc + jc + jr) * es, ldc, mrr, nrr, first);
                    }
                }
            }
        }
    }
}

/* Note [B from memory]
 *   The filling kernel (Note [Packing B in the kernel]) reads a panel of B
 *   where it lies: 64-128 bytes of each of KC rows, a row stride apart,
 *   which at N of 1024 columns and more are 4 KiB or more apart. From L2
 *   or L3 those reads hide among the FMAs; from memory each row is a miss
 *   in another page that the hardware prefetchers do not follow (they stop
 *   at page boundaries), and rows 4 KiB apart fall in a few L2 sets, so
 *   prefetching further ahead evicts what it fetched (Zen 2, UK_B_LEAD 24
 *   or a second prefetch 32 or 64 rows ahead into L2: 16 x 4096 @ 4096 x
 *   1024 36 -> 45 GFLOP/s, but 16 x 1024 x 1024, B in L3, 67 -> 45-56).
 *   pack_b reads whole rows of the block (NC1 columns, contiguous), which
 *   the prefetchers stream. So when B is larger than half of the
 *   last-level cache (cpu_info.h: the whole L3 this core reaches, not its
 *   share, since one product's B has it to itself), and each tile has two
 *   full row panels or more (so each packed panel is read at least twice),
 *   pack_b copies B ahead and no kernel fills. With one panel's rows or
 *   fewer (m = 8 on AVX2) the filling kernel stays faster: the copy is
 *   then a larger part of the work (4096 x 4096 float32 40 against 31-33).
 *   The bits are the same either way. AMD EPYC (Zen 2, family 23 model 49,
 *   2 vCPUs, 16 MiB L3), AVX2, interleaved medians, GFLOP/s, filling ->
 *   pack_b (OpenBLAS 0.3.31 Haswell kernel): float32 1 thread 16 x 4096 @
 *   4096 x 1024 42-48 -> 53-56 (56), 16 x 2048 x 2048 45-47 -> 55 (54), 13
 *   x 4096 x 2048 28-32 -> 41-42 (36), 16 x 1024 x 8192 33-38 -> 50-51
 *   (51), 32 x 4096 x 4096 57-62 -> 62-66 (64); 2 threads 16 x 4096 x 4096
 *   77-82 -> 90 (88), 16 x 4096 x 1024 59-63 -> 74-96 (77); float64 1
 *   thread 16 x 4096 x 4096 16-17 -> 24 (22), 64 x 4096 x 4096 30 -> 37-38
 *   (34), 2 threads 17 x 4096 x 4096 32 -> 50 (41), 64 x 4096 x 4096 65
 *   -> 75 (62); squares 2048-4096 the same within noise (their B blocks
 *   serve all of A's blocks, so the filling is a small part). On the Xeon
 *   (Emerald Rapids, 260 MiB of L3) B is that large only from about 5800^2
 *   float32 up, and the figures of Note [Packing B in the kernel] stand.
 */
/* Note [Balanced last tiles]
 *   The SIMD kernels run a partial tile of mr rows over the smallest of
 *   their k loops that holds it (Note [Half tiles] in
 *   cpu_matmul_simd_impl.h; the configuration's tile_loops: 3, 4 or 6 rows
 *   on AVX2, 4, 7, 8, 10 or 14 on AVX-512), so a tile of mr rows costs the
 *   multiply-adds of that loop's rows. A product of m = q MR + r rows (q >=
 *   1, 0 < r) ends with a full tile and an r-row one; gemm_block_few cuts
 *   those MR + r rows in two tiles c + (MR + r - c) instead, c one of the
 *   loops (c >= r), when that costs fewer rows, the larger c on a tie:
 *   AVX-512 m = 14 q + 1 and 2 end 8 + 7 and 8 + 8 where 14 + 4 ran (15
 *   and 16 loop rows for 18), m = 14 q + 3 10 + 7 (17 for 18), 14 q + 5
 *   and 6 10 + 9 and 10 + 10 (20 for 21); AVX2 m = 6 q + 1 and 2 end 4 + 3
 *   and 4 + 4 for 6 + 3 (7 and 8 for 9; AVX2 forced on a Zen 4, 1 thread,
 *   float32 K = N = 1024, GFLOP/s: m = 20 80-81 -> 83, m = 32 82-90 -> 92,
 *   m = 14 a tie). The
 *   rows from the cut start a packed panel of their own. Each C element
 *   keeps its chain (Note [One chain per element] in cpu_matmul.h): the
 *   bits do not change. Xeon (Emerald Rapids), float32 K = N = 1024,
 *   GFLOP/s, 14 + 7 -> 10 + 7 (before the 8-row loop): 1 thread m = 17 69
 *   -> 74, 31 92 -> 98, 45 107 -> 113; 2 threads m = 17 137 -> 148-153, 45
 *   211 -> 223; the AVX2 kernels there (forced) m = 13 43 -> 45-47, 19 51
 *   -> 53-55, 31 61 -> 62-65. Not where the filling kernel reads B from
 *   memory (Note [Filling from memory in whole tiles]).
 *   Returns the row where the last tile starts early, or m for no cut. */
/* Note [Filling from memory in whole tiles]
 *   The filling kernel reads its panel's rows of B where they lie, and
 *   from memory (Note [B from memory]: with fewer than 2 MR rows a tile B
 *   is not copied ahead) each row is a miss that the tile's FMAs on the
 *   rows before it must hide: the more rows the tile has, the more of the
 *   latency is hidden. Balanced last tiles (Note [Balanced last tiles])
 *   cut m = MR + 3, 5 and 6 rows (AVX-512: 17, 19, 20) into 10 + 7, 10 +
 *   9 and 10 + 10, so the filling tile had 10 rows, and those products ran
 *   below m = 18 and 21, whose first tile is whole (float32 K = N = 4096
 *   53-55 against 68-70). So a filling kernel that reads B from memory
 *   runs whole MR tiles first, and the last tile its loop (14 + 3 on the
 *   4-row loop: one row of FMAs more than 10 + 7, not hidden anyway).
 *   Copying B ahead by pack_b gained too, but less for float32 (m = 17 62
 *   against 64) and lost where the first tile is whole (m = 18 64-65
 *   against 68-70). Same chains, same bits (Note [One chain per element]).
 *   AMD EPYC Zen 4 (family 25 model 17, 32 MiB L3), K = N = 4096,
 *   interleaved medians of 1 s runs, GFLOP/s, cut -> whole (OpenBLAS
 *   0.3.31 SkylakeX kernel), 1 thread: float32 m = 17 53-55 -> 64 (41), 19
 *   56-57 -> 64.5-66, 20 59-60 -> 64-72; float64 m = 17 23.5-25.6 -> 30.6-31
 *   (26.6), 19 25-26.5 -> 29-31.6, 20 26-28 -> 31.5-33; 2 threads float32
 *   m = 17 109-111 -> 129-133 (80), 19 112-114 -> 132-135, 20 119-121 ->
 *   141-145 (83); float64 m = 17 48-50 -> 52-61 (49), 20 49-54 -> 60-65
 *   (53). AVX2 (MR 6) takes the axpy loops (Note [Few rows of B from
 *   memory]) or copies B ahead wherever such cuts would happen.
 */
static int tile_cost(const ndl_gemm_config *cfg, int64_t rows)
{
    for (int i = 0; cfg->tile_loops[i]; i++)
        if (rows <= cfg->tile_loops[i])
            return cfg->tile_loops[i];
    return cfg->mr;
}

static int64_t last_tiles_split(const ndl_gemm_config *cfg, int64_t m)
{
    const int mr = cfg->mr;
    const int64_t r = m % mr;
    if (!cfg->tile_loops[0] || m <= mr || r == 0)
        return m;
    int64_t best = mr + tile_cost(cfg, r), cut = 0;
    for (int i = 0; cfg->tile_loops[i] && cfg->tile_loops[i] < mr; i++) {
        const int c = cfg->tile_loops[i];
        const int64_t cost = c + tile_cost(cfg, mr + r - c);
        if (c >= r && cost <= best && (cost < best || cut)) {
            best = cost;
            cut = c;
        }
    }
    return cut ? m - r - mr + cut : m;
}

/* Note [Narrow B blocks for few rows]
 *   gemm_block packs a KC x NC block of B (NC from L3: 8 MiB of float64 on
 *   Zen 3) for MC-row blocks of A to run over, many times when m is large.
 *   When C's rows fit one A block (m <= MC: skinny products, and row tiles
 *   of a split) each B element meets only those m rows, once: the packed
 *   block went out to L3 and came back for nothing, and a whole block was
 *   read from memory in one burst before any arithmetic (Zen 3, 1 thread,
 *   float64 m = 64, K = N = 4096: 16 GFLOP/s against NumPy's 31; m = 17:
 *   7 against 17). gemm_block_few instead packs blocks of KC x NC1,
 *   NC1 = L2 / 2 / (KC * size) (128 float64 or 256 float32 columns on
 *   Zen 3), which stay in L2 until their panels are used (Note [No
 *   prefetch of the next B block]). It visits them in the order that reads
 *   B along its contiguous axis, so that B streams from memory in long
 *   runs over few pages:
 *     rows contiguous (B):    for pc by KC: pack A once (on AMD's AVX-512
 *                             cores by the first panel's tiles: Note
 *                             [Packing A in the kernel]); for jc by NC1: ...
 *     columns contiguous (W.T): for jc by NC1: for pc by KC: ...
 *   (the second repacks the m x KC A block for each B block, m / NC1 of the
 *   B packing). With B by rows and A packed, no block is copied ahead any
 *   more: each panel is packed by its first tile's kernel, into the first
 *   panel's place (Note [Packing B in the kernel] in
 *   cpu_matmul_simd_impl.h), and the blocks only order the visit, unless
 *   B comes from memory (Note [B from memory]: then pack_b copies each
 *   block by rows again). Each C
 *   element still gets its KC blocks' chains in k order, so the bits are
 *   those of gemm_block (Note [One chain per element] in cpu_matmul.h): m
 *   = 64 gives the rows of m = 1000.
 */
/* Note [One narrow A panel]
 *   A product of at most MR rows with B by rows is one row tile, on the
 *   filling kernel (Note [Packing B in the kernel]), which reads A as a
 *   packed panel. An MR-row panel of 4 rows (x @ W at batch 4) is 10 rows
 *   of zeros a k step on AVX-512: pack_bt wrote 14 elements for each 4 it
 *   read, 3.5 times the A it packs, and took 11% of float64 4 x 784 @ 784 x
 *   100 (perf samples, Zen 4). The kernel runs the loop over the fewest
 *   rows that hold mr (tile_loops: 4, 7, 8, 10 or 14 on AVX-512; 3, 4 or 6
 *   on AVX2) and reads no row past it, so the panel of such a product holds
 *   that loop's rows only (the filling kernel takes the panel's rows, ak,
 *   as an argument); wider products keep MR-row panels, which the packed
 *   kernel reads. Same FMAs, same bits. Zen 4 (AMD EPYC, family 25 model
 *   17), 1 thread, interleaved medians of 1 s runs, GFLOP/s, before ->
 *   after: float64 4 x 784 x 100 40.6 -> 48.2 (OpenBLAS 0.3.31 46-47), 8 x
 *   784 x 100 48.1 -> 51.9 (50-52); float32 4 x 784 x 100 75.0 -> 83.0
 *   (75), 8 x 784 x 100 89.5 -> 94.6 (93-94); K = N = 1024, where B's
 *   reads outweigh A's packing, unchanged. */
static void gemm_block_few(const ndl_gemm_ops *ops, int64_t m, int64_t n, int64_t p,
                           const char *a, int64_t rsa, int64_t csa,
                           const char *b, int64_t rsb, int64_t csb,
                           char *c, int64_t ldc, char *abuf, char *bbuf)
{
    const ndl_gemm_config *cfg = ops->cfg;
    const int64_t es = (int64_t)ops->es;
    const int mr = cfg->mr, nr = cfg->nr;
    const int64_t ncb = cfg->nc1;
    const int bt = rsb == 1 && csb != 1 && cfg->pack_bt; /* B = W.T: transposed in registers */
    /* Note [Packing B in the kernel]: B by rows, A packed */
    const int fill = csb == 1 && ops->pack_a_block && ops->kernel_fill;
    /* block t is (pc, jc), pc varying fastest when B's columns are contiguous */
    const int k_inner = bt;
    const int64_t nkb = (n + cfg->kc - 1) / cfg->kc, njb = (p + ncb - 1) / ncb;
    int64_t packed_pc = -1;
    const char *ablk = NULL;
    int64_t ars = rsa, acs = csa;
    const ndl_ukernel kernel = ops->pack_a_block ? cfg->kernel_packed : cfg->kernel;
    /* Note [Balanced last tiles]; tiles of a_rows rows read A in place */
    /* ... but not where the filling kernel reads B from memory (Note [Filling
     * from memory in whole tiles]) */
    const int64_t split =
        ops->a_rows < mr || (fill && ops->b_from_memory) ? m : last_tiles_split(cfg, m);
    const int step = ops->a_rows; /* MR wherever A is packed */
    /* the packed A panels' rows: Note [One narrow A panel] */
    const int aw = fill && m <= mr ? tile_cost(cfg, m) : mr;
    /* Note [Packing A in the kernel]: the first panel's tiles pack A's block */
    const int fuse = fill && csa == 1 && cfg->kernel_pack_a && m > mr && p > nr &&
                     !ops->b_from_memory && !rows_alias(cfg, rsa, csa, (size_t)es);
    int pending = 0; /* A's block not packed yet */
    for (int64_t t = 0; t < nkb * njb; t++) {
        int64_t pc = (k_inner ? t % nkb : t / njb) * cfg->kc;
        int64_t jc = (k_inner ? t / nkb : t % njb) * ncb;
        int64_t kc = n - pc < cfg->kc ? n - pc : cfg->kc;
        int64_t nc = p - jc < ncb ? p - jc : ncb;
        int first = pc == 0;
        if (pc != packed_pc) {
            ablk = a + pc * csa * es;
            if (ops->pack_a_block) {
                if (fuse) {
                    pending = 1;
                } else {
                    /* rows from `split` start a panel of their own */
                    pack_a_block(ops, ablk, rsa, csa, split, kc, aw, abuf);
                    if (split < m)
                        pack_a_block(ops, ablk + split * rsa * es, rsa, csa, m - split, kc, mr,
                                     abuf + (split + mr - 1) / mr * mr * kc * es);
                }
                ablk = abuf;
                ars = 1;
                acs = mr;
            }
            packed_pc = pc;
        }
        if (bt)
            cfg->pack_bt(b + (pc + jc * csb) * es, csb, kc, nc, nr, bbuf);
        else if (!fill)
            ops->pack_b(b + (pc * rsb + jc * csb) * es, rsb, csb, kc, nc, nr, bbuf);
        for (int64_t jr = 0; jr < nc; jr += nr) {
            int nrr = nc - jr < nr ? (int)(nc - jr) : nr;
            /* Note [Packing B in the kernel]: one panel at a time, all in the
             * first panel's place, packed by its first tile from B itself */
            char *bp = fill ? bbuf : bbuf + jr * kc * es;
            const char *bsrc = b + (pc * rsb + jc + jr) * es;
            for (int64_t ir = 0; ir < m;) {
                int64_t end = ir < split && split < ir + step ? split
                              : ir + step < m                   ? ir + step
                                                                : m;
                /* packed: the panel of row ir (a panel starts at `split`); else A itself */
                int64_t at = ops->pack_a_block ? (ir + mr - 1) / mr * mr * kc : ir * rsa;
                if (pending) /* A read in place, stored into its panel at */
                    cfg->kernel_pack_a(kc, a + (pc + ir * rsa) * es, rsa, bsrc, rsb,
                                       abuf + at * es, c + (ir * ldc + jc + jr) * es, ldc,
                                       (int)(end - ir), first);
                else if (fill && ir == 0) /* the panel's only tile need not store it */
                    ops->kernel_fill(kc, ablk + at * es, aw, bsrc, rsb, end < m ? bp : NULL,
                                     c + (ir * ldc + jc + jr) * es, ldc, (int)(end - ir), nrr,
                                     first);
                else
                    kernel(kc, ablk + at * es, ars, acs, bp, c + (ir * ldc + jc + jr) * es, ldc,
                           (int)(end - ir), nrr, first);
                ir = end;
            }
            pending = 0;
        }
    }
}

/* ---- the work split ------------------------------------------------------
 * Note [Matmul work split]
 *   A task is tile t of product b, task = b * ntiles + t; the tiles of a
 *   product form a tm x tn grid whose edges fall on multiples of MR rows and
 *   NR columns. The pool runs `nparts` parts (at most one per thread), each
 *   with its own packing buffers (a slot, taken from a counter on entry);
 *   each part takes tasks from a shared counter until none is left. With
 *   several threads a product is cut into up to NDL_MATMUL_TILES_PER_THREAD
 *   (2) tiles per thread, not one, when each tile keeps NDL_MATMUL_TILE_BALANCE
 *   multiply-adds, more than MC rows (or NDL_MATMUL_TILE_ROWS, when MC is
 *   taller: see below) and NDL_MATMUL_TILE_COLS columns
 *   (narrower tiles cost more than they balance: 128-column tiles made
 *   m = 64, K = N = 1024 on 2 threads 25% slower, 256^3 8%), so products
 *   from about 512^3 up. On a machine whose cores are shared (other
 *   processes, a VM's vCPUs that the host deschedules), a static half each
 *   made the product wait for the slower thread, while from a counter the
 *   faster thread takes more tiles (Zen 3, 2 vCPUs shared with other jobs,
 *   2048^3 float32 on 2 threads, one quiet minute: median 95 -> 172
 *   GFLOP/s, best unchanged, with 4 tiles a thread). The price is
 *   packing: each tile packs its own rows of A and columns of B, A tn
 *   times and B tm times in all (choose_grid keeps m/tm + p/tn small),
 *   and each tile has its edge blocks: 4 tiles a thread cost 1024^3
 *   float32 ~4% when one core did all the work, 2 nothing measurable, so 2
 *   it is. (Packing B once per product and sharing it between the threads,
 *   as BLIS does, would halve the packing, at the price of a barrier per
 *   B block: one tile per thread instead of two, 3/4 of the packing, made
 *   2048^3 float32 on 2 threads no faster, 183-186 GFLOP/s either way, Zen
 *   3, quiet minutes; so it was not tried.) Every C element is computed
 *   by the same sequence of operations whatever the tile (Note [One chain
 *   per element]), so results do not depend on the number of threads nor
 *   on which thread took which tile.
 *   Where the 2-thread time goes (Zen 3, quiet minutes, float32, clocks
 *   read around each task and each packing call, a throw-away build): at
 *   1024^3 one thread spends 23.1 ms, 22.2 in the kernels, 0.65 packing A
 *   and 0.28 packing B; two threads (2 x 2 tiles) spend 23.9-24.1 ms of CPU
 *   in 12.0 ms of wall: kernels 22.3 (L3 shared: +0-2%), packing A
 *   0.9-1.0, B 0.7-0.8; the second thread starts 0.01-0.04 ms after the
 *   first (the pool's wake-up), they finish 0.05-0.2 ms apart, and no page
 *   is faulted in the steady state (the allocator keeps C's pages). At
 *   2048^3: 185.5 ms on one thread (5.1 packing), 93.3-95.4 ms wall on two
 *   (187-191 ms of CPU, 7.4-9.3 packing, finishing 0-0.2 ms apart), i.e.
 *   already 0.98-0.99 of twice one thread. So the 2-thread loss is the
 *   doubled packing (each of the 2 x 2 tiles packs its rows of A and its
 *   columns of B: A and B twice), about 3% at 1024^3 and 1.5% at 2048^3;
 *   the A blocks of a row-major A are the costlier part: MC rows of KC
 *   elements each (1 KiB pieces 4 KiB apart at 1024) read from memory at
 *   ~6 GB/s, where a B block (contiguous rows) streams at ~14 GB/s.
 *   Tried against it, no gain (A/B, same minute, same build through
 *   environment switches): prefetching the next A block's lines during the
 *   kernels (packing A 0.75-0.88 -> 0.61-0.66 ms at 1024^3, but the
 *   kernels lost as much), prefetching A rows one to four panels ahead
 *   inside the packing (no change: the A rows come at the memory's pace
 *   either way), MC evened out over a tile's rows (512 = 4 x 132 instead
 *   of 3 x 168 + 8: within noise), the tiles taken column-major so that
 *   concurrent tiles share B instead of A (packing B -10%, A +10%), 4 row
 *   strips instead of 2 x 2 (A once, B four times: kernels 50% slower, B
 *   blocks of different k streaming from L3 at once), one tile per thread
 *   (1 x 2: packing B 0.73 -> 0.42 ms, wall -1% in one quiet round, but no
 *   balance on a shared machine). BLIS's shared packing was then built
 *   and measured, and not kept: one product (batch 1, m > MC, p <= NC),
 *   one counter over the tasks "pack piece j of B block kb" (4 column
 *   pieces a thread) and "row unit u (one MC-row A block, packed by the
 *   thread) against B block kb over all p columns", in the order kb by
 *   kb, pieces first; B blocks in two shared buffers; a piece waits until
 *   every unit of block kb - 2 is done (its buffer free), a unit until
 *   every piece of block kb is packed and unit u of block kb - 1 is done
 *   (the chains' k order; release/acquire counters, 50 us of spin then
 *   20 us naps). Every wait is on an earlier task, so it cannot deadlock
 *   (one thread alone runs them in order), and the bits were those of one
 *   thread (1024^3, 700x1300x900, 517x300x1031, 2000x257x333; plain, A.T,
 *   B = W.T; both dtypes). It packs A once and B once (the 2 x 2 tiles:
 *   both twice): the threads' CPU time 0.91-0.98x the tiles' for
 *   float32, 0.99-1.00x for float64, 0.99-1.05x with a busy loop (the
 *   waits). A/B in one process, the two paths
 *   alternating call by call (ratio tiles/shared time, median [quartiles]),
 *   but on no quiet minute (load 1.9-3.2 on the 2 vCPUs: another test
 *   suite and a C++ build): float32 1024^3 1.018 [0.99, 1.04], units of
 *   MC/2 rows 1.033 [1.01, 1.05]; 2048^3 1.021 [0.98, 1.03], MC/2 1.039
 *   [1.03, 1.04]; float64 1024^3 1.010 [1.00, 1.02]; 2048^3 0.976 [0.94,
 *   0.99], MC/2 1.034 [0.96, 1.07]; with a busy loop on one core as well,
 *   float32 2048^3 1.001 [0.94, 1.01], MC/2 0.985 [0.95, 1.00], both
 *   paths at 1.4-1.7x the 1-thread median of the same minute (so neither
 *   stalls on a descheduled thread). m = 64, K = N = 4096 is not concerned (m <= MC:
 *   column tiles, B packed once already). No quiet minute came to repeat
 *   it (a watcher waiting 14 minutes for 85% idle CPUs found none). Not a
 *   clear win: within the noise, at the 1-4% the breakdown above promised
 *   at best, for a second scheduling path with its waits; so not landed.
 *   Should a quiet machine show more, the next steps are smaller units at
 *   the end (the last k block in MC/2 rows) and prefetching block kb + 1
 *   during block kb's units, as gemm_block does.
 *   One tile a thread for a single product, measured again 2026-12-04 on
 *   the Xeon (Emerald Rapids, 2 vCPUs, quiet; 2 threads, medians of 1.5 s
 *   of calls, 3 rounds, GFLOP/s, 2 tiles a thread -> 1): float32 1024^3
 *   291-297 -> 295-304, 2048^3 300-310 -> 306-318, m = 300, K = N = 1024
 *   281-290 -> 281-297, 512^3 and m = 400, K = N = 2048 the same; float64
 *   1024^3 142-146 -> 145-150, 2048^3 148-151 -> 146-151 (PyTorch 2048^3
 *   float32: 318). 1-3% on a quiet machine, against the factor of two the
 *   counter saved when the host deschedules a vCPU (above); a busy loop
 *   inside the guest, pinned to one core, cost one tile a thread only 3%
 *   (2048^3: 165-172 -> 161-167; PyTorch's static halves: 113), as the
 *   guest moves threads off it, which it cannot do for a stolen vCPU. Not
 *   landed. (The NOTE at NDL_MATMUL_TILE_ROWS once had one tile a thread
 *   15-25% slower at 1024^3 on this Xeon, 219-262 against 295-350: best
 *   of a few calls in a noisy minute; quiet, it is not.)
 */

typedef struct {
    ndl_gemm_ops ops;
    int64_t m, n, p;
    const char *a, *b;
    const int64_t *a_offsets, *b_offsets;
    int64_t rsa, csa, rsb, csb;
    char *c;
    int64_t tm, tn, ntasks, nparts;
    char *bufs;         /* nparts x (abytes + bbytes) */
    size_t abytes, bbytes;
    atomic_llong next_task, next_slot; /* Note [Matmul work split] */
} ndl_gemm_job;

/* [lo, hi) of part `i` of `count` equal parts of `units` units of `unit`,
 * clipped to len. */
static void split_range(int64_t len, int64_t unit, int64_t i, int64_t count, int64_t *lo,
                        int64_t *hi)
{
    int64_t units = (len + unit - 1) / unit;
    *lo = units * i / count * unit;
    *hi = units * (i + 1) / count * unit;
    if (*lo > len)
        *lo = len;
    if (*hi > len)
        *hi = len;
}

static void gemm_parts(void *ctx, int64_t begin, int64_t end)
{
    ndl_gemm_job *job = ctx;
    unsigned fpmode = ndl_flush_denormals_enter(); /* Note [Denormals] in threadpool.c */
    const int64_t es = (int64_t)job->ops.es;
    const int64_t ntiles = job->tm * job->tn;
    /* Note [Matmul work split]: one slot per call (parallel_for makes at
     * most nparts calls), tasks from the counter */
    int64_t q = atomic_fetch_add(&job->next_slot, end - begin);
    char *abuf = job->bufs + (size_t)q * (job->abytes + job->bbytes);
    char *bbuf = abuf + job->abytes;
    for (;;) {
        int64_t t = atomic_fetch_add(&job->next_task, 1);
        if (t >= job->ntasks)
            break;
        int64_t bi = t / ntiles, tile = t % ntiles;
        int64_t i0, i1, j0, j1;
        split_range(job->m, job->ops.cfg->mr, tile / job->tn, job->tm, &i0, &i1);
        split_range(job->p, job->ops.cfg->nr, tile % job->tn, job->tn, &j0, &j1);
        if (i0 >= i1 || j0 >= j1)
            continue;
        int64_t ao = job->a_offsets ? job->a_offsets[bi] : 0;
        int64_t bo = job->b_offsets ? job->b_offsets[bi] : 0;
        (i1 - i0 <= job->ops.mc ? gemm_block_few : gemm_block)(
                   &job->ops, i1 - i0, job->n, j1 - j0,
                   job->a + (ao + i0 * job->rsa) * es, job->rsa, job->csa,
                   job->b + (bo + j0 * job->csb) * es, job->rsb, job->csb,
                   job->c + ((bi * job->m + i0) * job->p + j0) * es, job->p, abuf, bbuf);
    }
    ndl_flush_denormals_leave(fpmode);
}

/* ---- skinny products ------------------------------------------------------
 * cpu_matmul_small.c has the loops and their notes: B read in place, never
 * packed: the axpy loops when B's rows are contiguous and m <= small_m
 * (8, or 2 for AVX-512 float32: Note [Axpy rows per tile]; 8 for all when
 * B comes from memory: Note [Few rows of B from memory]) and use_axpy
 * does not prefer the packed kernels (Note [Axpy and two threads], Note
 * [Few rows on the filling kernel]), but one row with B in cache in
 * registers (Note [One row: which products]);
 * the dot loops when B's columns are and m = 1. Other products take the
 * packed path. The columns of each product are cut into `nparts` ranges;
 * each element's sum does not depend on the cut.
 *   Why these limits (Zen 3, 1 thread, K = N = 4096): the axpy loops keep
 *   the one chain of the packed kernels and beat them up to m = 8, where a
 *   6-row tile wastes a third of its rows; from m = 12 the packed kernels
 *   (Note [Narrow B blocks for few rows]) are as fast or faster. The dot
 *   loops sum in 64 bytes of lanes (outside Note [One chain per element]),
 *   so they are kept for m = 1 only, where they run at memory speed (2.3x the
 *   transposing pack and kernel). m <= bt_m with B = W.T (and m = 1 whose A
 *   row is strided) transposes W in registers (cpu_matmul_bt_avx2.c, Note
 *   [Transposing W in registers], bt_m = 4; cpu_matmul_bt_avx512.c, Note
 *   [Transposing W in zmm registers], 8 float32, 6 float64), with the
 *   chains of the packed kernels: m = 2, 1 thread, float32 12 -> 19-20
 *   GFLOP/s (PyTorch 15), float64 6 -> 13-14 (PyTorch 7) on Zen 3; from
 *   bt_m + 1, C.T = W @ x.T (Note [x @ W.T by W @ x.T] below), and every m
 *   gets the bits of any other.
 *   m = 1 with K = N = 4096 (a 64 MiB B read once for 8K flops a row) is
 *   bound by memory: on 2 threads it reads B at about a plain two-thread
 *   streaming read's speed (Zen 3 KVM guest: 21-23 GB/s for such a read,
 *   12.6-15.9 GFLOP/s = 25-32 GB/s for the product, part of B staying in
 *   L3 between calls), as NumPy does (12.7-16.2); nothing is left there.
 */
/* Note [Axpy rows per tile]
 *   The axpy loops' limit is the configuration's small_m (below it,
 *   use_axpy may still prefer the kernels: Note [Axpy and two threads],
 *   Note [Few rows on the filling kernel]): 8 for AVX2,
 *   generic and AVX-512 float64, 2 for AVX-512 float32. AVX2 and generic:
 *   the reasons above. AVX-512 had 16 on 2026-12-04 and 05: its tile has 14
 *   rows and its partial tiles then ran 7, 10 or 14 of them (Note [Half
 *   tiles] in cpu_matmul_simd_impl.h), so m = 9..16 wasted 10-30% of its FMAs,
 *   and while pack_b copied each B block before the kernels ran the axpy
 *   loops were faster there (Xeon, Emerald Rapids, K = N = 1024 and 4096,
 *   GFLOP/s packed -> axpy: float32 1 thread m = 12 58 -> 73, m = 16 66 ->
 *   81). With B packed inside the kernel (Note [Packing B in the kernel]),
 *   and not stored at all when a panel has one tile, the kernels win from
 *   m = 3 in float32 (1 thread, K = N = 1024, axpy -> kernels: m = 3 39 ->
 *   41-42, m = 4 48 -> 55, m = 6 60 -> 80-83, m = 8 64-66 -> 98-103, m = 12
 *   108 -> 134-139; K = N = 4096 m = 8 69 -> 94-99) and tie at m = 2 (28-29
 *   both). In float64 they win at m = 6 and 8 with K = N = 1024 (31 -> 35,
 *   34 -> 44) but lose at m = 8, K = N = 4096 (35 -> 29) and m = 3, 4 (by
 *   1), so float64 keeps 8 (and takes the filling kernels from m = 4 where
 *   Note [Few rows on the filling kernel] says, as AVX2 float32 does: Zen
 *   4 measured them faster). The AVX2 kernels (forced, same Xeon) lose at m
 *   = 3..8 (m = 4 44-46 -> 29, m = 8 52-53 -> 45-47): 8 there too.
 *   The bits do not change with the limit (Note [One chain per element]).
 */
/* Note [Axpy and two threads]
 *   The axpy loops rewrite each C row segment once per KU rows of B (a
 *   read-modify-write of C every 8 k steps, where the kernels write a tile
 *   once per KC block). On AMD EPYC (Zen 2, family 23 model 49, 2 vCPUs,
 *   512 KiB L2 each), two threads each taking half the columns ran each
 *   half as slowly as one thread ran the whole product whenever B fit in
 *   about two L2s, and that with the two threads' columns on separate
 *   cache lines, the pool's workers spinning (NEEDLE_POOL_SPIN_US=100000
 *   the same) and the dot and transposing loops, which write C once,
 *   gaining from the second thread at the same sizes; which shared
 *   resource the rewrites contend for was not found (the guest shows no
 *   hardware counters). So with more than one thread, a product of one
 *   or a few matrices (batch below the threads) large enough for the
 *   packed path's split (NDL_MATMUL_PAR_MIN) whose B is not read from
 *   memory (Note [B from memory]) takes the packed kernels from m = 5,
 *   and from m = 3 an axpy product whose B fits in two L2s runs on the
 *   calling thread; m = 1 and 2, and B from memory (where the axpy loops'
 *   single pass over B is worth more: float32 8 x 4096 @ 4096 x 4096, 2
 *   threads, 71-72 GFLOP/s, the kernels 54-67), keep the split.
 *   GFLOP/s, interleaved medians, 2 threads, split axpy -> now (OpenBLAS
 *   0.3.31 on 2 threads): float32 8 x 256 @ 256 x 256 34-78 -> 70 (46), 6 x
 *   256 x 256 27-64 -> 106 (27), 4 x 256 x 256 44-51 -> 57-59 (31), 8 x 512
 *   x 512 37-40 -> 85-87 (61), 8 x 1024 x 1024 67 -> 77-78 (77), 8 x 784 x
 *   100 32 -> 47 (41), 8 x 100 x 1000 26-29 -> 68-70 (60); float64 8 x 256
 *   x 256 12-13 -> 42-43 (17), 6 x 256 x 256 13 -> 64 (10), 4 x 256 x 256 14
 *   -> 27 (10), 8 x 512 x 512 24-25 -> 39 (21), 8 x 1024 x 1024 39-40 ->
 *   35-38 (23), 6 x 1024 x 1024 34-36 -> 44-45 (14).
 */
/* Note [Few rows on the filling kernel]
 *   With B's rows packed by the kernel that first reads them (Note [Packing
 *   B in the kernel]) and A's panels packed in registers (Note [Spilling
 *   past the last group] in cpu_matmul_pack_avx2.c), the AVX2 float32
 *   kernels beat the axpy loops from m = 4 (one MID-row tile, Note [Half
 *   tiles]), on one thread as on two, wherever B is not read from memory
 *   (Note [B from memory]) and its rows are not a multiple of 4 KiB apart:
 *   the filling kernel reads KC rows of B a row stride apart, and rows 4
 *   KiB apart share an L1 set (8 ways here), so there the axpy loops' KU =
 *   8 streams stay faster. AMD EPYC (Zen 2, family 23 model 49),
 *   interleaved medians, GFLOP/s, axpy -> kernels (OpenBLAS 0.3.31 Haswell
 *   kernel), 1 thread: 8 x 784 @ 784 x 100 32 -> 51-52 (43-44), 8 x 4096 x
 *   100 31 -> 51 (48), 8 x 1000 x 1000 55-56 -> 62 (48-50), 8 x 2000 x 1000
 *   55 -> 60 (47), 8 x 256 x 256 62-64 -> 62 (44-46); 6 x 784 x 100 31-32
 *   -> 74-75 (27), 6 x 1000 x 1000 53 -> 87 (29), 6 x 784 x 784 54 -> 90;
 *   5 x 784 x 100 31 -> 58 (23), 5 x 1000 x 1000 52-53 -> 71-72 (24-26); 4
 *   x 784 x 100 30 -> 50-51 (32), 4 x 1000 x 1000 48-51 -> 60-62 (35), 4 x
 *   300 x 300 39 -> 49-50 (32); 2 threads (m = 4; m = 5..8 took the
 *   kernels there already, Note [Axpy and two threads]) 4 x 1000 x 1000
 *   85-86 -> 116-119 (31), 4 x 100 x 1000 47-48 -> 95 (33), 4 x 784 x 100
 *   30 -> 52 (34). Kept on the axpy loops: rows 4 KiB apart, 8 x 1024 x
 *   1024 58 against 45, 8 x 768 x 1024 57 against 47, 4 x 1024 x 1024 50
 *   against 37 (5 and 6 rows tie there); B from memory, 8 x 3000 x 1000
 *   (12 MiB) 44 against 26, 5 x 2048 x 2048 42 against 17. m = 3 stays on
 *   the axpy loops (mixed: 3 x 128 x 128 37 against 40, 3 x 784 x 100 40
 *   against 28). float64 stays on the axpy loops: its kernels won by 10-60%
 *   at m = 4..6 in one quiet scan (6 x 784 x 100 24-25 -> 40, 5 x 2000 x
 *   400 26-27 -> 35) but ran erratically at 5 x 1000 x 1000 (11-34 against
 *   26-27, between scans) and tied or lost at m = 8 (8 x 1000 x 1000 20-29
 *   against 28-29); a steadier machine should settle it. The AVX-512
 *   float32 limit is 2 already (Note [Axpy rows per tile]). AVX-512
 *   float64 takes the filling kernels by the same rule: AMD EPYC Zen 4
 *   (family 25 model 17), 1 thread, axpy -> kernels (before the 8-row loop
 *   of Note [Half tiles]; OpenBLAS SkylakeX kernel): 4 x 784 x 100 30 ->
 *   40 (46), 6 x 784 x 100 32 -> 40 (43-47), 8 x 2000 x 400 35 -> 43 (31),
 *   4 x 256 x 256 35 -> 49 (50), 5 x 1000 x 1000 34 -> 38 (20); unchanged
 *   on the axpy loops: 4 x 1024 x 1024 (rows 8 KiB apart) 33, 8 x 4096 x
 *   4096 (B from memory) 28-29; the kernels there would run 25 and 15. On
 *   the Xeon of Note [Axpy rows per tile] they had lost m = 4 by 1 GFLOP/s.
 *   Same bits either way.
 */
/* Note [Few rows of B from memory]
 *   A B larger than half the last-level cache (Note [B from memory]) is
 *   read from memory once whatever the path, and with up to 16 rows the
 *   axpy loops' passes over it, eight rows side by side (page-long
 *   runs the prefetchers follow), beats the kernels, which read it by
 *   panels, on every configuration: so those products take the axpy loops
 *   up to NDL_AXPY_MEM_M rows even where small_m is lower (AVX-512
 *   float32, whose kernels win with B in cache: Note [Axpy rows per tile]).
 *   AMD EPYC Zen 4 (family 25 model 17, 32 MiB L3), float32, interleaved
 *   medians, GFLOP/s, kernels -> axpy (OpenBLAS 0.3.31 SkylakeX kernel), 1
 *   thread: 3 x 4096 @ 4096 x 4096 12 -> 23-24 (9.5), 4 x 4096 x 4096 16 ->
 *   29-30 (13), 6 x 4096 x 4096 23 -> 37 (15), 8 x 4096 x 4096 30-31 ->
 *   41-42 (21), 8 x 2048 x 4096 31-33 -> 42-47 (20), 4 x 8192 x 1024 16 ->
 *   27-32 (12); 2 threads 4 x 4096 x 4096 27-30 -> 35-50 (20), 8 x 4096 x
 *   4096 56-62 -> 70-80 (39). The Xeon of Note [Axpy rows per tile] holds
 *   such a B in its 260 MiB of L3. Past 8 rows it was mixed on 2026-12-05
 *   (the axpy loops won float64 m = 9..16 on one thread, 21-24 -> 28-32,
 *   lost m = 12 and 16 on two, 46 -> 43, 57 -> 46, and float32 m = 12 and
 *   16 tied), so the limit was 8; with the kernels of 2026-12-07 (8-row
 *   tiles, B from memory packed ahead only from 2 MR rows) they win every
 *   m = 9..16 on the same VM, both thread counts, AVX-512 or AVX2 kernels
 *   (forced), so it is 16. 1 thread, K = N = 4096, GFLOP/s, medians /
 *   best, kernels -> axpy (OpenBLAS best): float32 m = 9 AVX2 47 / 51 -> 61
 *   / 63, m = 10 45 -> 64 (31), m = 12 59 -> 65 (37), m = 16 50-51 -> 68
 *   (44), 16 x 8192 x 2048 50 -> 66 (44); float64 m = 10 21 -> 30 (21), m
 *   = 12 26.5 -> 31 (24), m = 16 25 -> 32 (27); 2 threads float32 m = 9
 *   75-77 / 80-81 -> 113 / 120, m = 12 113 / 119-120 -> 117-123 /
 *   128-129, m = 16 92-96 / 98-102 -> 101-131 / 132-136 (85); float64 m =
 *   9 35-36 -> 52-55, m = 12 47-50 / 53 -> 57-60 / 61, m = 16 47-49 / 50
 *   -> 58 / 60 (52); the AVX2 kernels, 1 thread float32 m = 12 56 / 62 ->
 *   64 / 66, m = 16 66 / 67 -> 68 / 70; float64 m = 16 28 / 33 -> 34 /
 *   35; 2 threads float32 m = 16 128 / 135 -> 130 / 135. The bits do not
 *   change (Note [One chain per element]).
 */
#define NDL_AXPY_MEM_M 16

/* whether an m-row product whose B has contiguous rows (row stride rsb_bytes)
 * takes the axpy loops; `split`: it would be split between threads */
static int use_axpy(const ndl_gemm_config *cfg, int64_t m, int64_t rsb_bytes, double b_bytes,
                    int split)
{
    if (b_bytes > (double)cfg->fill_max_b) /* Note [Few rows of B from memory] */
        return m <= NDL_AXPY_MEM_M;
    if (m > cfg->small_m)
        return 0;
    if (m >= 5 && split) /* Note [Axpy and two threads] */
        return 0;
    /* Note [Few rows on the filling kernel] */
    return !(m >= NDL_FILL_M && cfg->few_rows_fill && rsb_bytes % 4096 != 0);
}

enum { SMALL_AXPY, SMALL_DOT, SMALL_BT };

typedef struct {
    const ndl_gemm_config *cfg;
    int mode; /* SMALL_AXPY, SMALL_DOT or SMALL_BT */
    int64_t m, n, p, nparts; /* each product's columns cut into nparts ranges */
    int64_t ntasks;          /* batch * nparts */
    int64_t jl2;             /* axpy: columns per block whose C rows fit half of L2 */
    int row;                 /* axpy with m = 1 by cfg->row (Note [One row: which products]) */
    size_t es;
    const char *a, *b;
    const int64_t *a_offsets, *b_offsets;
    int64_t rsa, csa, rsb, csb;
    char *c;
} ndl_small_job;

/* Note [One row: which products]
 *   One row of A (x @ W at batch 1; each product of a batch of them) with
 *   W's rows contiguous runs the one-row kernel (Note [One row in
 *   registers] in cpu_matmul_row_impl.h) in place of the axpy loops when
 *   W is in cache (not read from memory: Note [B from memory]) and each
 *   task's columns take at most NDL_ROW_MAX_BYTES (1024 float32, 512
 *   float64), unless W's rows lie a multiple of 4 KiB apart (Note [One
 *   row: rows a page apart]). A strip walks its KC block of W row by row, a strip's width
 *   of each row: from L2 or L3 the lines it leaves half read are still
 *   there for the next strip, but from memory that pattern defeats the
 *   prefetchers (a 4096 x 4096 float32 W in strips ran 3.9 GFLOP/s, the
 *   axpy loops' page-long runs 11, Note [One row: longer runs]). Wider
 *   rows tie or lose: 4 KiB was measured against 1 KiB, 8 KiB and no limit.
 *   AMD EPYC (Zen 2, family 23 model 49), interleaved medians, GFLOP/s,
 *   axpy -> row kernel (OpenBLAS 0.3.31 Haswell kernel, its overrides
 *   unset), float32, 1 thread: 1 x 784 @ 784 x 100 17-20 -> 37-39
 *   (23-24), 1 x 1000 x 40 14 -> 34-35 (17), 1 x 784 x 10 3 -> 8 (4-5), 1 x
 *   512 x 64 20 -> 31 (19), 1 x 4096 x 64 18-20 -> 29-31 (26-28), 1 x 784 x
 *   128 25-26 -> 32-33 (28), 1 x 2048 x 256 27-30 -> 32-34 (32-35), 1 x 784
 *   x 500 28 -> 31-32 (29-30), 1 x 784 x 1000 29-31 -> 35-36 (30-33), 1 x
 *   300 x 300 25 -> 29 (23-26), 1 x 512 x 512 29-30 -> 32-33 (28), 1 x 1024
 *   x 1024 31-32 -> 32-33 (27-31); 2 threads (each its half of the
 *   columns): 1 x 784 x 100 17-19 -> 37-38 (25; one task), 1 x 784 x 500 34
 *   -> 48-49 (31-33), 1 x 2048 x 256 35 -> 53 (21-22), 1 x 512 x 512 37-39
 *   -> 45-46 (31), 1 x 1000 x 2000 53 -> 59 (47-48), 1 x 1024 x 1024 47-49
 *   -> 46-49 (29-32); float64, 1 thread: 1 x 1000 x 40 10 -> 18-19
 *   (10-11), 1 x 784 x 100 12-13 -> 15 (12), 1 x 4096 x 64 12 -> 14-15
 *   (12), the wider ones within the noise (13-16 both). The AVX-512
 *   strips are as many vectors (12 + 1 of 32 registers), twice as wide;
 *   not timed on such a machine. Same bits either way.
 */
/* Note [One row: rows a page apart]
 *   An x86 L1d indexes its sets by the address bits below 4 KiB (64 sets
 *   of 64-byte lines, 8 or 12 ways), so rows of W a multiple of 4 KiB
 *   apart put every row of a strip in the same few sets: a strip can hold
 *   8 of its rows in L1 while the prefetchers fetch ahead. When the
 *   product's columns cover more than half such a row, the axpy loops,
 *   which read W's rows end to end, are faster; a narrower window of a
 *   wide W keeps the strips (the axpy loops' short runs are slower
 *   still). AMD EPYC (Zen 2, family 23 model 49), OpenBLAS 0.3.31
 *   Haswell kernel, interleaved medians, GFLOP/s, row kernel -> axpy
 *   (OpenBLAS): float32 1 thread 1 x 1024 @ 1024 x 1024 25-26 (34-35 in
 *   some runs) -> 33-35 (33), 1 x 2048 x 1024 24 -> 33, rows padded to
 *   1040 or 1088 columns 33-37 either way; 2 threads 1 x 1024 x 1024
 *   48-51 -> 50-56, 1 x 2048 x 1024 42-44 -> 47-50; float64 1 x 1024 x
 *   512 13 -> 16-17, 1 x 512 x 512 12-13 -> 16-17; windows of a 1024-wide
 *   float32 W: 100 columns 28-29 on the strips, 15 on the axpy loops, 300
 *   columns 25-26 and 23, 512 columns 26-34 and 28-29. */
static int row_sets_alias(int64_t row_bytes, int64_t cols_bytes)
{
    return row_bytes % 4096 == 0 && 2 * cols_bytes > row_bytes;
}

/* the row of C from column j0 to j1 by cfg->row: for each KC block, strips
 * of at most NDL_ROW_VECS whole vectors, as even as they go, the last one
 * with the partial vector (Note [One row in registers]) */
static void row_strips(const ndl_gemm_config *cfg, int64_t n, const char *a, int64_t csa,
                       const char *b, int64_t rsb, char *c, int64_t j0, int64_t j1, int64_t es)
{
    const int64_t vw = cfg->nr / 2; /* the lanes of a vector: NR is two */
    const int64_t full = (j1 - j0) / vw, tail = (j1 - j0) % vw;
    const int64_t strips = full > NDL_ROW_VECS ? (full + NDL_ROW_VECS - 1) / NDL_ROW_VECS : 1;
    for (int64_t k0 = 0; k0 < n; k0 += cfg->kc) {
        int64_t kc = n - k0 < cfg->kc ? n - k0 : cfg->kc;
        int64_t j = j0;
        for (int64_t s = 0; s < strips; s++) {
            int64_t nr = (full * (s + 1) / strips - full * s / strips) * vw;
            if (s == strips - 1)
                nr += tail;
            cfg->row(kc, a + k0 * csa * es, csa, b + (k0 * rsb + j) * es, rsb, c + j * es,
                     (int)nr, k0 == 0);
            j += nr;
        }
    }
}

static void small_tasks(void *ctx, int64_t begin, int64_t end)
{
    const ndl_small_job *job = ctx;
    unsigned fpmode = ndl_flush_denormals_enter(); /* Note [Denormals] in threadpool.c */
    const int64_t es = (int64_t)job->es;
    /* Note [One chain per element] in cpu_matmul.h: the axpy loops sum the
     * second and later KC blocks in scratch, one buffer for all the tasks
     * of this call, as wide as the widest column range (jl2 columns), and
     * 4 KiB more to place it (Note [Axpy rows away from B's], cpu_matmul.h) */
    char *scratch = NULL; /* Note [Kept scratch] in cpu_matmul_scratch.c */
    if (job->mode == SMALL_AXPY && !job->row) {
        int64_t w = job->p < job->jl2 ? job->p : job->jl2;
        scratch = ndl_matmul_scratch_get((size_t)(job->m * w) * job->es + NDL_AXPY_PAGE);
    }
    for (int64_t t = begin; t < end; t++) {
        int64_t bi = t / job->nparts, q = t % job->nparts;
        int64_t j0, j1;
        split_range(job->p, NDL_SMALL_COLS, q, job->nparts, &j0, &j1);
        if (j0 >= j1)
            continue;
        const char *a = job->a + (job->a_offsets ? job->a_offsets[bi] : 0) * es;
        const char *b = job->b + (job->b_offsets ? job->b_offsets[bi] : 0) * es;
        char *c = job->c + bi * job->m * job->p * es;
        if (job->mode == SMALL_DOT) {
            job->cfg->dot(job->m, job->n, a, job->rsa, b, job->csb, c, job->p, j0, j1);
            continue;
        }
        if (job->mode == SMALL_BT) {
            job->cfg->bt(job->m, job->n, a, job->rsa, job->csa, b, job->csb, c, job->p, j0, j1,
                         job->cfg->kc);
            continue;
        }
        if (job->row) {
            row_strips(job->cfg, job->n, a, job->csa, b, job->rsb, c, j0, j1, es);
            continue;
        }
        job->cfg->axpy(job->m, job->n, a, job->rsa, job->csa, b, job->rsb, c, job->p, j0, j1,
                       job->jl2, job->cfg->kc, scratch);
    }
    ndl_matmul_scratch_put(scratch);
    ndl_flush_denormals_leave(fpmode);
}

/* Below this many multiply-adds in all, the pool is not woken: a wake-up
 * costs a few microseconds, about what 2*10^5 FMAs take on one core. */
#define NDL_MATMUL_PAR_MIN (72.0 * 72.0 * 72.0)
/* The skinny products (axpy, dot, W.T in registers) read each element of B
 * once for m multiply-adds: bound by reading B, from L2, L3 or memory, so
 * two threads read it twice as fast from much smaller sizes than the packed
 * path's: from this many multiply-adds (128 KiB of float32 B at m = 1) they
 * wake the pool. Zen 3, 2 threads, float32 A @ v: 512 x 512 25 -> 55-58
 * GFLOP/s (NumPy 25), 256 x 256 28 -> 46-49 (NumPy 23), 128 x 256 28 ->
 * 36-39; float64 512 x 512 12 -> 25 (NumPy 13.5); m = 2, W.T 256 x 256
 * 22 -> 40. Half of it (128 x 128) gained nothing. */
#define NDL_SMALL_PAR_MIN 32768.0
/* A product is split into tiles only if each tile keeps this many. */
#define NDL_MATMUL_TILE_MIN (48.0 * 48.0 * 48.0)
/* Note [Matmul work split]: tiles per thread for the load to balance, while
 * each keeps at least NDL_MATMUL_TILE_BALANCE multiply-adds. */
#define NDL_MATMUL_TILES_PER_THREAD 2
#define NDL_MATMUL_TILE_BALANCE (256.0 * 256.0 * 256.0)
#define NDL_MATMUL_TILE_COLS 256
/* NOTE: a tile's rows need exceed only this when MC is taller (Sapphire /
 * Emerald Rapids' 2 MiB L2: float32 MC 336, 518 before KC was 36 MR), or
 * "more than MC rows" would keep 1024^3 on 2 threads at one 1024 x 512
 * tile a thread, without the counter's balance (Note [Matmul work split]:
 * what that costs and saves). Zen 3 and 4 (MC 168) split as before. */
#define NDL_MATMUL_TILE_ROWS 256

static int64_t round_up(int64_t x, int64_t to) { return (x + to - 1) / to * to; }

/* Note [Balanced grids]
 *   Two threads cut a product into two tiles (Note [Matmul work split]),
 *   by rows or by columns, whichever packs less: m / tm + p / tn. For a
 *   square product both pack alike, and the first found, two column
 *   tiles, was kept: NR = 16 column units cut unevenly where MR = 6 row
 *   units cut evenly (100 columns are 64 + 36, 100 rows 54 + 46; 300
 *   columns 160 + 140, rows 150 + 150), and the product waits for the
 *   larger tile. Now the tie goes to the grid whose largest tile is
 *   smallest. AMD EPYC (Zen 2), 2 threads, float32, interleaved medians,
 *   GFLOP/s, before -> after: 100^3 78-83 -> 93-94, 150^3 126-128 ->
 *   134-135, 200^3 145-149 -> 157-158, 300^3 135-137 -> 175-177, 100 x 300
 *   x 100 92-93 -> 121-139, 400^3 174-175 -> 179-180; float64 the same
 *   within the noise (300^3 76-84 -> 85, 500^3 78-80 -> 87-89). Same bits
 *   (Note [One chain per element]).
 */
/* the largest of `count` parts of len cut on multiples of unit (split_range) */
static int64_t largest_part(int64_t len, int64_t unit, int64_t count)
{
    int64_t units = (len + unit - 1) / unit, big = (units + count - 1) / count * unit;
    return big < len ? big : len;
}

/* Choose tm x tn = ntiles (a divisor pair), minimising the packing volume
 * m/tm + p/tn, with at least one MR (NR) unit per tile row (column); of
 * grids that pack alike (tm x tn and tn x tm of a square), the one whose
 * largest tile is smallest (Note [Balanced grids]). */
static void choose_grid(int64_t m, int64_t p, int mr, int nr, int64_t ntiles, int64_t *tm,
                        int64_t *tn)
{
    int64_t um = (m + mr - 1) / mr, un = (p + nr - 1) / nr;
    for (; ntiles > 1; ntiles--) {
        double best = -1, best_tile = 0;
        for (int64_t d = 1; d <= ntiles; d++) {
            if (ntiles % d || d > um || ntiles / d > un)
                continue;
            double cost = (double)m / d + (double)p / (ntiles / d);
            double tile = (double)largest_part(m, mr, d) * (double)largest_part(p, nr, ntiles / d);
            if (best < 0 || cost < best || (cost == best && tile < best_tile)) {
                best = cost;
                best_tile = tile;
                *tm = d;
                *tn = ntiles / d;
            }
        }
        if (best >= 0)
            return;
    }
    *tm = *tn = 1;
}

static int gemm(const ndl_gemm_config *cfg, ndl_dtype dt, int64_t batch, int64_t m, int64_t n,
                int64_t p, const void *a, const int64_t *a_offsets, int64_t rsa, int64_t csa,
                const void *b, const int64_t *b_offsets, int64_t rsb, int64_t csb, void *c);

/* Note [x @ W.T by W @ x.T]
 *   x @ W.T with few rows (B's columns contiguous: a linear layer's
 *   backward, attention's scores) packs W.T, transposing it in registers
 *   (pack_bt), and each packed element meets only m rows of x: at m = 32,
 *   K = N = 1024 the transposes took a third of the time. C.T = W @ x.T
 *   is the same product with W as A, and the kernels read A where it lies
 *   (Note [Reading A in place]: W's rows contiguous, one broadcast per
 *   element and row, no transpose), while x.T, m x K, is packed once for
 *   all of W's rows; the m x N C.T goes to scratch (chunks of the batch,
 *   or of W's rows when one product's C.T is larger: NDL_SWAP_CHUNK bytes,
 *   so that a wide C, an output layer over a vocabulary, allocates nothing
 *   per call) and is copied into C by ndl_cpu_copy's tiled
 *   transpose. A multiplication commutes, so every C element gets the
 *   chains of Note [One chain per element]: the bits do not change.
 *   It pays where W @ x.T reads W in place (m <= 4 NR < 512: Note [Reading
 *   A in place]; W's rows 1 KiB apart in tiles of set_rows rows: Note [A
 *   rows that alias]), from the first m
 *   that the register transposes leave (bt_m + 1: 5 with the AVX2 ones,
 *   measured, m = 5 is faster this way and m = 4 by the transposes; 9
 *   float32 and 7 float64 with AVX-512's, Note [Transposing W in zmm
 *   registers]; x.T's m columns are then a narrow tile, one vector of
 *   FMAs a row: Note [Narrow tiles] in cpu_matmul_simd_impl.h; the generic
 *   kernels, without the transposes, do neither) and with K >= 512 (K >= 256 up to m = NR:
 *   from there, two panels of x.T, the copy out of scratch and packing
 *   x.T cost more than the transposes they save, float32 m = 64, K = 256,
 *   N = 784 161 -> 143 GFLOP/s). Xeon (Emerald Rapids), 1 thread, GFLOP/s,
 *   medians, before -> after (PyTorch 2.13), narrow tiles included (they
 *   gave m <= 16 another 15-40%): float32 K = N = 1024 m = 8 34 -> 52
 *   (41-44), m = 12 49 -> 74-86 (44-48), m = 16 60 -> 103-117 (62-73),
 *   m = 24 78 -> 108-112 (79-98), m = 32 84 -> 140-168 (88-111), m = 64
 *   112 -> 139-170 (120-138); K = N = 4096 m = 8 40 -> 51-57 (37-41), m =
 *   32 83 -> 144-172 (93-107), m = 64 112 -> 135-164 (123-129); 96 x 784
 *   @ 784 x 1024 136 -> 160-167 (159-168); float64 m = 5 30 (PyTorch 16),
 *   m = 8 21 -> 36-45 (26-30), m = 16 35 -> 74-76
 *   (40-44), m = 32 50 -> 70-86 (55-57), K = N = 4096 m = 8 21 -> 36-41
 *   (25-26); the AVX2 kernels (forced, same Xeon) float32 m = 5 24 -> 36,
 *   m = 8 34 -> 55, m = 16 52 -> 82, float64 m = 8 17 -> 36. 2 threads
 *   float32 m = 32 175 -> 275 (183), K = N = 4096 m = 32 170 -> 299 (185).
 *   The clock of this guest moved by 10-20% over the session: each figure
 *   pairs runs of the same minutes.
 */
#define NDL_SWAP_CHUNK ((size_t)1 << 20)

static int use_swap(const ndl_gemm_config *cfg, int64_t m, int64_t n, int64_t rsb, int64_t csb)
{
    return rsb == 1 && csb != 1 && cfg->bt && m > cfg->bt_m && m <= 4 * cfg->nr &&
           n >= 256 && (m <= cfg->nr || n >= 512);
}

static int gemm_swapped(const ndl_gemm_config *cfg, ndl_dtype dt, int64_t batch, int64_t m,
                        int64_t n, int64_t p, const void *a, const int64_t *a_offsets,
                        int64_t rsa, int64_t csa, const void *b, const int64_t *b_offsets,
                        int64_t rsb, int64_t csb, void *c)
{
    const size_t es = ndl_itemsize(dt);
    /* C's columns per chunk (W's rows), and products per chunk when a whole
     * product fits: the scratch stays within NDL_SWAP_CHUNK bytes, kept
     * between calls (Note [Kept scratch]), however wide C is */
    int64_t cols = (int64_t)(NDL_SWAP_CHUNK / ((size_t)m * es));
    if (cols > p)
        cols = p;
    int64_t per = cols < p ? 1 : (int64_t)(NDL_SWAP_CHUNK / ((size_t)m * (size_t)p * es));
    if (per > batch)
        per = batch;
    char *ct = ndl_matmul_scratch_get((size_t)per * (size_t)m * (size_t)cols * es);
    if (!ct)
        return NDL_ENOMEM;
    int rc = NDL_OK;
    for (int64_t b0 = 0; b0 < batch && rc == NDL_OK; b0 += per) {
        int64_t nb = batch - b0 < per ? batch - b0 : per;
        for (int64_t j0 = 0; j0 < p && rc == NDL_OK; j0 += cols) {
            int64_t nc = p - j0 < cols ? p - j0 : cols;
            /* C.T's rows j0..j0+nc (nc x m, rows contiguous) = W's rows @ A.T */
            rc = gemm(cfg, dt, nb, nc, n, m, (const char *)b + j0 * csb * (int64_t)es,
                      b_offsets ? b_offsets + b0 : NULL, csb, rsb, a,
                      a_offsets ? a_offsets + b0 : NULL, csa, rsa, ct);
            if (rc != NDL_OK)
                break;
            ndl_layout ld = {.ndim = 3, .shape = {nb, m, nc}, .strides = {m * p, p, 1},
                             .offset = (b0 * m * p) + j0};
            ndl_layout ls = {.ndim = 3, .shape = {nb, m, nc}, .strides = {m * nc, 1, m},
                             .offset = 0};
            rc = ndl_cpu_copy(dt, c, &ld, dt, ct, &ls);
        }
    }
    ndl_matmul_scratch_put(ct);
    return rc;
}

int ndl_cpu_matmul(ndl_dtype dt, int64_t batch, int64_t m, int64_t n, int64_t p,
                   const void *a, const int64_t *a_offsets, int64_t rsa, int64_t csa,
                   const void *b, const int64_t *b_offsets, int64_t rsb, int64_t csb,
                   void *c)
{
    if ((unsigned)dt >= NDL_NUM_DTYPES || batch < 0 || m < 0 || n < 0 || p < 0)
        return NDL_EINVAL;
    if (batch == 0 || m == 0 || p == 0)
        return NDL_OK;
    const size_t es = ndl_itemsize(dt);
    if (n == 0) {
        memset(c, 0, (size_t)batch * (size_t)m * (size_t)p * es);
        return NDL_OK;
    }
    if (p == 1 && m > 1) {
        /* Matrix-vector: compute C^T = B^T @ A^T instead, which has the same
         * memory (one column = one row) and wastes MR-1 rows of a tile
         * rather than NR-1 columns. */
        const void *t = a;
        a = b;
        b = t;
        const int64_t *to = a_offsets;
        a_offsets = b_offsets;
        b_offsets = to;
        int64_t r = rsa, s = csa;
        rsa = csb;
        csa = rsb;
        rsb = s;
        csb = r;
        p = m;
        m = 1;
    }
    const ndl_gemm_config *cfg = get_config(dt);
    int small_bt = m <= cfg->bt_m && rsb == 1 && cfg->bt;
    int64_t nthreads = ndl_get_num_threads();
    double work = (double)m * (double)n * (double)p * (double)batch;
    double b_bytes = (double)n * (double)p * (double)es;
    int axpy = csb == 1 && use_axpy(cfg, m, rsb * (int64_t)es, b_bytes,
                                    nthreads > 1 && batch < nthreads &&
                                        work >= NDL_MATMUL_PAR_MIN);
    if (axpy || (m == 1 && rsb == 1 && csa == 1) || small_bt) {
        ndl_small_job job = {
            .cfg = cfg, .mode = csb == 1 ? SMALL_AXPY : m == 1 && csa == 1 ? SMALL_DOT : SMALL_BT,
            .m = m, .n = n, .p = p, .nparts = 1, .es = es,
            .a = a, .b = b, .a_offsets = a_offsets, .b_offsets = b_offsets,
            .rsa = rsa, .csa = csa, .rsb = rsb, .csb = csb, .c = c,
        };
        int64_t jb = 1024 / (int64_t)es; /* JB_BYTES in cpu_matmul_small.c */
        job.jl2 = ndl_get_cpu_info()->l2 / 2 / (m * (int64_t)es) / jb * jb;
        if (job.jl2 < jb)
            job.jl2 = jb;
        /* Note [Axpy and two threads] */
        if (job.mode == SMALL_AXPY && m >= 3 && b_bytes <= 2.0 * (double)ndl_get_cpu_info()->l2)
            nthreads = 1;
        if (nthreads > 1 && work >= NDL_SMALL_PAR_MIN && batch < nthreads)
            job.nparts = p / NDL_SMALL_COLS < nthreads
                             ? (p / NDL_SMALL_COLS > 1 ? p / NDL_SMALL_COLS : 1)
                             : nthreads;
        /* Note [One row: which products] */
        job.row = job.mode == SMALL_AXPY && m == 1 && cfg->row &&
                  b_bytes <= (double)cfg->fill_max_b &&
                  largest_part(p, NDL_SMALL_COLS, job.nparts) * (int64_t)es <= NDL_ROW_MAX_BYTES &&
                  !row_sets_alias(rsb * (int64_t)es, p * (int64_t)es);
        job.ntasks = batch * job.nparts;
        ndl_parallel_for(job.ntasks, work >= NDL_SMALL_PAR_MIN ? 1 : job.ntasks, small_tasks,
                         &job);
        return NDL_OK;
    }
    if (use_swap(cfg, m, n, rsb, csb)) /* Note [x @ W.T by W @ x.T] */
        return gemm_swapped(cfg, dt, batch, m, n, p, a, a_offsets, rsa, csa, b, b_offsets, rsb,
                            csb, c);
    return gemm(cfg, dt, batch, m, n, p, a, a_offsets, rsa, csa, b, b_offsets, rsb, csb, c);
}

/* The packed path: C = A @ B, each product cut into tiles for the pool
 * (Note [Matmul work split]). */
/* Note [A blocks of short rows]
 *   MC (Note [Block sizes]) is the rows of an A block of KC columns that
 *   take a third of L2. A product with K < KC has blocks of K columns, and
 *   proportionally more rows fit that share: MC KC / K (a multiple of MR,
 *   at most NDL_MC_MAX). A part of up to that many rows is one block, on
 *   gemm_block_few (Note [Narrow B blocks for few rows]: A packed once, on
 *   AMD's AVX-512 cores by the first panel's tiles, Note [Packing A in the
 *   kernel]; balanced last tiles), and gemm_block cuts taller ones into
 *   such blocks. Before, float64 100^3 (MC 84 on 1 MiB of L2) ran as 84 +
 *   16 rows, the second block's 16 as a 14-row tile and a 2-row one, B
 *   copied ahead by pack_b and read twice. Not where A's rows alias (Note
 *   [A rows that alias]): there the single block packs A by transposes
 *   where gemm_block read it in place, and lost (float64 128^3 55.3 ->
 *   53.8, 256^3 56.8 -> 56.1). The rows of a block do not change any
 *   element's chain (Note [One chain per element] in cpu_matmul.h): the
 *   bits do not change. AMD EPYC Zen 4 (family 25 model 17), 1 thread,
 *   the two in one process alternating every 30 ms, best of 25-30 bursts'
 *   medians, GFLOP/s, before -> after (OpenBLAS 0.3.31 SkylakeX kernel,
 *   same bursts): float64 90^3 48.2 -> 50.6 (53.5), 96^3 52.1 -> 53.0
 *   (55.0-55.4), 100^3 50.7 -> 53.1 (54.6), 120^3 54.1 -> 55.1, 130^3 50.0
 *   -> 52.9, 144^3 52.7 -> 54.0, 200^3 55.7 -> 56.5, 400 x 100 x 400 55.2
 *   -> 55.9; float32 170 x 100 x 170 103.4 -> 106.2, 200^3 108.9 ->
 *   110.4, 400 x 100 x 400 109.1 -> 111.5; float32 72^3..100^3 (m <= MC
 *   already), K >= KC and the im2col shapes of the convolutions (1024 x 27
 *   x 16, 4096 x 144 x 32, 2048 x 288 x 64) unchanged; 2 threads (needle
 *   alone in the process) within 1-3% either way.
 */
static int64_t a_block_rows(const ndl_gemm_config *cfg, int64_t kc)
{
    int64_t rows = cfg->mc * cfg->kc / kc / cfg->mr * cfg->mr;
    rows = rows < NDL_MC_MAX / cfg->mr * cfg->mr ? rows : NDL_MC_MAX / cfg->mr * cfg->mr;
    return rows > cfg->mc ? rows : cfg->mc; /* MC itself where NEEDLE_MATMUL_BLOCKS sets more */
}

static int gemm(const ndl_gemm_config *cfg, ndl_dtype dt, int64_t batch, int64_t m, int64_t n,
                int64_t p, const void *a, const int64_t *a_offsets, int64_t rsa, int64_t csa,
                const void *b, const int64_t *b_offsets, int64_t rsb, int64_t csb, void *c)
{
    const size_t es = ndl_itemsize(dt);
    ndl_gemm_job job = {
        .ops = {.cfg = cfg, .es = es,
                .pack_a = dt == NDL_FLOAT32 ? pack_a_f32 : pack_a_f64,
                .pack_b = dt == NDL_FLOAT32 ? pack_b_f32 : pack_b_f64},
        .m = m, .n = n, .p = p,
        .a = a, .b = b, .a_offsets = a_offsets, .b_offsets = b_offsets,
        .rsa = rsa, .csa = csa, .rsb = rsb, .csb = csb, .c = c,
        .tm = 1, .tn = 1,
    };

    /* Note [Matmul work split] */
    double fmas = (double)m * (double)n * (double)p;
    int64_t nthreads = ndl_get_num_threads();
    if (nthreads > 1 && fmas * (double)batch >= NDL_MATMUL_PAR_MIN) {
        /* whole products per task when the batch alone gives every thread
         * several; else tiles, NDL_MATMUL_TILES_PER_THREAD a thread in all */
        int64_t want = NDL_MATMUL_TILES_PER_THREAD * nthreads;
        if (batch % nthreads != 0 && batch < want) { /* a thread's share of tiles */
            int64_t ntiles = nthreads;
            while (ntiles > 1 && fmas / (double)ntiles < NDL_MATMUL_TILE_MIN)
                ntiles--;
            choose_grid(m, p, cfg->mr, cfg->nr, ntiles, &job.tm, &job.tn);
        }
        if (batch < want) /* more, for the balance, if they stay large */
            for (int64_t nt = (want + batch - 1) / batch; nt > job.tm * job.tn; nt--) {
                int64_t tm, tn;
                choose_grid(m, p, cfg->mr, cfg->nr, nt, &tm, &tn);
                if (fmas / (double)(tm * tn) >= NDL_MATMUL_TILE_BALANCE &&
                    m / tm > (cfg->mc < NDL_MATMUL_TILE_ROWS ? cfg->mc : NDL_MATMUL_TILE_ROWS) &&
                    p / tn >= NDL_MATMUL_TILE_COLS) {
                    job.tm = tm;
                    job.tn = tn;
                    break;
                }
            }
        job.ntasks = batch * job.tm * job.tn;
        job.nparts = job.ntasks < nthreads ? job.ntasks : nthreads;
    } else {
        job.ntasks = batch;
        job.nparts = 1;
    }

    /* buffers sized for the largest tile any part will see */
    int64_t mmax = round_up((m + job.tm - 1) / job.tm + cfg->mr, cfg->mr);
    int64_t pmax = round_up((p + job.tn - 1) / job.tn + cfg->nr, cfg->nr);
    int64_t kcap = n < cfg->kc ? n : cfg->kc;
    /* Note [A blocks of short rows] */
    job.ops.mc = rows_alias(cfg, rsa, csa, es) ? cfg->mc : a_block_rows(cfg, kcap);
    int64_t mcap = mmax < job.ops.mc ? mmax : job.ops.mc;
    int64_t ncap = pmax < cfg->nc ? pmax : cfg->nc;
    /* Note [Reading A in place], decided on the widest tile, unless the
     * kernels pack B by rows for tiles of at most MC rows (Note [Packing B
     * in the kernel]: their A is packed; an m x KC A block costs m / p of
     * the B block that pack_b would copy), wider than 4 NR or than the
     * tile's rows: up to 4 panels, packing A by transposes cost more than
     * pack_b's copy of B when A has as many rows as B columns or more
     * (Xeon, 1 thread, float64, GFLOP/s: 64^3 60 -> 75, 100 x 1000 x 64
     * 63-65 -> 83-84, 128^3 73-78 -> 82-84; 150 x 512 x 48 61-65 -> 58-60;
     * float32 200 x 1000 x 100 134-149 -> 143-166, 64^3 within noise), and
     * less when it has fewer (float32: 8 x 784 @ 784 x 100, a first layer
     * at batch 8, 50-54 -> 93-98, PyTorch 124-142; 16 x 784 @ 784 x 100 77-79
     * -> 97, 28 x 784 x 100 99-101 -> 125-126, 32 x 256 x 100 96 -> 112, 4 x
     * 256 x 64 35-36 -> 53-56, 3 x 1000 x 40 15 -> 31-32; float64 16 x 784 x
     * 100 45 -> 53) */
    int64_t tile_rows = ((m + cfg->mr - 1) / cfg->mr + job.tm - 1) / job.tm * cfg->mr;
    int64_t tile_cols = round_up((p + job.tn - 1) / job.tn, cfg->nr);
    /* Note [B from memory]: tiles of two full row panels or more copy a B
     * larger than half the last-level cache ahead, by rows */
    job.ops.b_from_memory = (double)n * (double)p * (double)es > (double)cfg->fill_max_b;
    const int from_memory = job.ops.b_from_memory && (m + job.tm - 1) / job.tm >= 2 * cfg->mr;
    job.ops.kernel_fill = from_memory ? NULL : cfg->kernel_fill;
    job.ops.pack_a_block = !read_a_in_place(cfg, csa, tile_cols) ||
                           (csb == 1 && job.ops.kernel_fill && tile_rows <= job.ops.mc &&
                            (tile_cols > 4 * cfg->nr || tile_rows < tile_cols));
    job.ops.a_rows = !job.ops.pack_a_block && rows_alias(cfg, rsa, csa, es) ? cfg->set_rows
                                                                             : cfg->mr;
    job.abytes = job.ops.pack_a_block ? (size_t)round_up(mcap * kcap * (int64_t)es, 64) : 0;
    /* Note [Narrow B blocks for few rows]: when every tile has m <= MC, a
     * block of NC1 columns, or one panel when the kernels pack B (Note
     * [Packing B in the kernel]: gemm_block_few reuses the first panel's place) */
    if (tile_rows <= job.ops.mc && ncap > cfg->nc1)
        ncap = cfg->nc1;
    if (tile_rows <= job.ops.mc && csb == 1 && job.ops.pack_a_block && job.ops.kernel_fill)
        ncap = cfg->nr;
    job.bbytes = (size_t)round_up(kcap * ncap * (int64_t)es, 64);
    job.bufs = ndl_matmul_scratch_get((size_t)job.nparts * (job.abytes + job.bbytes));
    if (!job.bufs)
        return NDL_ENOMEM;
    atomic_init(&job.next_task, 0);
    atomic_init(&job.next_slot, 0);

    ndl_parallel_for(job.nparts, 1, gemm_parts, &job);
    ndl_matmul_scratch_put(job.bufs); /* Note [Kept scratch] in cpu_matmul_scratch.c */
    return NDL_OK;
}

/* ---- for drivers in other files (cpu_conv_rows.c) ------------------------ */

ndl_gemm_tile ndl_cpu_gemm_tile(ndl_dtype dt)
{
    const ndl_gemm_config *cfg = get_config(dt);
    return (ndl_gemm_tile){cfg->kernel, cfg->mr, cfg->nr, cfg->kc};
}

void ndl_cpu_pack_b(ndl_dtype dt, const void *src, int64_t rs, int64_t cs, int64_t kc, int64_t nc,
                    int nr, void *dst)
{
    (dt == NDL_FLOAT32 ? pack_b_f32 : pack_b_f64)(src, rs, cs, kc, nc, nr, dst);
}
