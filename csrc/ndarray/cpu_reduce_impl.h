/* cpu_reduce_impl.h: the reduction kernels for ONE element type and ONE
 * instruction set. Template header: cpu_reduce.c includes it once per
 * (dtype, ISA) pair after defining rd_job and rd_split; never include it
 * anywhere else.
 *
 * Expects (all #undef'd again at the end):
 *   T          element type (float / double)
 *   RD_DT      dtype suffix token of scalar_ops.h (f32 / f64)
 *   RD_SFX     suffix of the generated names (f32_avx2, f64_base, ...)
 *   RD_TARGET  function attribute selecting the ISA, or empty
 *   RD_HWMAX   optional: the ISA's vector max builtin (a > b ? a : b lane by
 *              lane), Note [A max without NaN]
 * Defines rd_run_rows_<SFX>, rd_run_vert_<SFX> (ndl_range_fn tasks over an
 * rd_job) and rd_finish_<SFX> (folds per-chunk partials into the output).
 *
 * Note [Summation order]
 *   Sums are pairwise over fixed blocks, so the error grows like log(n),
 *   and the order depends only on the shape, never on the thread count or
 *   ISA:
 *     - a row of n elements is split at the largest RD_LEAF*2^k below n,
 *       recursively; a leaf runs RD_LANES independent running sums
 *       (element i goes to lane i % RD_LANES, the tail to one more) and
 *       folds the lanes pairwise;
 *     - columns (reducing a leading axis) use the same split over rows with
 *       leaves of RD_VLEAF rows, summed row by row into a buffer;
 *     - a reduction split across threads cuts the reduced axis at multiples
 *       of a chunk that is a power-of-two multiple of the leaf, so the
 *       per-chunk sums are exactly the subtrees of the serial tree, and
 *       folds them with the same split rule (rd_finish).
 *   Max ignores all of this (any order gives the same answer) and runs each
 *   row or column in one pass.
 */

#define RD_PASTE_(a, b) a##b
#define RD_PASTE(a, b) RD_PASTE_(a, b)
#define RD_FN(stem) RD_PASTE(stem##_, RD_SFX)
/* NOTE: np.maximum's NaN rule, as a mask select: with `?:` gcc threads the
 * "a is NaN" outcome of one step into the next and the loop stops
 * vectorizing (see ndl_select_f32). */
static inline T RD_FN(rd_max)(T a, T b)
{
    return RD_PASTE(ndl_select_, RD_DT)((a > b) | (a != a), a, b);
}
#define RD_MAX(a, b) RD_FN(rd_max)(a, b)
#define RD_ADD(a, b) ((a) + (b))

/* ---- one row: x[i*s], i < n ------------------------------------------- */
#define RD_ROW_LEAF(COMB, ID)                                                  \
    do {                                                                       \
        T acc[RD_LANES], t = (ID);                                             \
        for (int j = 0; j < RD_LANES; j++)                                     \
            acc[j] = (ID);                                                     \
        int64_t i = 0;                                                         \
        if (s == 1) {                                                          \
            for (; i + RD_LANES <= n; i += RD_LANES)                           \
                for (int j = 0; j < RD_LANES; j++)                             \
                    acc[j] = COMB(acc[j], x[i + j]);                           \
        } else {                                                               \
            for (; i + RD_LANES <= n; i += RD_LANES)                           \
                for (int j = 0; j < RD_LANES; j++)                             \
                    acc[j] = COMB(acc[j], x[(i + j) * s]);                     \
        }                                                                      \
        for (; i < n; i++)                                                     \
            t = COMB(t, x[i * s]);                                             \
        for (int w = RD_LANES / 2; w > 0; w /= 2)                              \
            for (int j = 0; j < w; j++)                                        \
                acc[j] = COMB(acc[j], acc[j + w]);                             \
        return COMB(acc[0], t);                                                \
    } while (0)

static RD_TARGET T RD_FN(rd_row_sum_leaf)(const T *x, int64_t n, int64_t s)
{
    RD_ROW_LEAF(RD_ADD, (T)0);
}

static RD_TARGET T RD_FN(rd_row_max)(const T *x, int64_t n, int64_t s)
{
    RD_ROW_LEAF(RD_MAX, (T)-INFINITY);
}
#undef RD_ROW_LEAF

/* Note [One row at a time]
 *   A sum over the last axis reads each unit-stride row as one stream,
 *   row after row: the array in memory order. Its leaves keep their lanes
 *   in RD_NV vectors of RD_VL elements and fold them in registers, lane j
 *   of vector v being lane v * RD_VL + j of rd_row_sum_leaf, add for add
 *   (the same bits). That loop's lanes are an array that gcc kept on the
 *   stack: it zeroed them with `rep stos` for every row and folded them
 *   through memory, and with a call or two a row, rows of 256 float32
 *   spent most of their time outside the loop. Short rows (one leaf, one
 *   chunk) run the leaf inlined in rd_run_rows. This replaces four rows
 *   summed side by side (Note [Rows side by side], 2026-12-03), which
 *   folded their lanes in registers and gave a Zen 3 VM more misses in
 *   flight (4096 x 4096 float32 from memory 22 -> 31-33 GB/s against that
 *   slower one-row loop); on a Zen 4 VM those interleaved streams read
 *   memory at a third of the speed of one (float32 65536 x 256 12 GB/s,
 *   131072 x 128 11, against 36-42 row after row), and PyTorch's loop is
 *   one row at a time too. AMD EPYC Zen 4 (family 25 model 17), 1 thread,
 *   best of 1 s runs, GB/s read, side by side -> one row (PyTorch 2.13):
 *   float32 32768 x 32 20 -> 45 (27), 16384 x 64 37-40 -> 73 (46), 8192 x
 *   128 45 -> 93 (72), 4096 x 256 57 -> 96 (86), 1024 x 1024 81 -> 96 (87),
 *   4096 x 4096 (memory) 31-34 -> 42-50 (41-46), 131072 x 128 (memory) 11.5
 *   -> 42-46 (39); float64 32768
 *   x 32 25 -> 56 (58), 16384 x 64 40 -> 85 (88), 1024 x 1024 75 -> 97 (93),
 *   131072 x 64 (memory) 16 -> 37 (33); rows shorter than RD_LANES are the
 *   sequential tail: float32 65536 x 16 9 -> 13 (15; now Note [Short rows
 *   side by side]). 2 threads, in cache:
 *   float32 4096 x 256 110 -> 180 (147), 1024 x 1024 153 -> 180 (147).
 *   Not measured again on a Zen 3: if its memory wants several streams,
 *   this loop reads there what PyTorch's does (25-27 GB/s in 2026-12-03).
 *   A max over unit-stride rows takes the same lanes (the whole row: a max
 *   has no tree), Note [A max without NaN].
 */
typedef T RD_FN(rd_vec) __attribute__((vector_size(32)));
/* the lanes' comparison results: an integer of T's width per lane */
typedef __typeof__(__builtin_choose_expr(sizeof(T) == 4, (int32_t)0, (int64_t)0)) RD_FN(rd_int);
typedef RD_FN(rd_int) RD_FN(rd_mask) __attribute__((vector_size(32)));
#define RD_VL (32 / (int)sizeof(T))
#define RD_NV (RD_LANES / RD_VL)
#define RD_VADD(a, b) ((a) + (b))
/* lanes of a where m is set, of b elsewhere (macros: a function returning a
 * 32-byte vector has another ABI in the baseline build) */
#define RD_VSEL(m, a, b)                                                       \
    ((RD_FN(rd_vec))(((m) & (RD_FN(rd_mask))(a)) | (~(m) & (RD_FN(rd_mask))(b))))
/* RD_MAX lane by lane */
#define RD_VMAX(a, b)                                                          \
    ({                                                                         \
        RD_FN(rd_vec) a_ = (a), b_ = (b);                                      \
        RD_VSEL((a_ > b_) | (a_ != a_), a_, b_);                               \
    })
/* The fold of one vector's lanes, l[j] = COMB(l[j], l[j + w]) for w =
 * RD_VL / 2 .. 1, as whole-vector steps: lane j < w of VCOMB(l, l's lanes
 * w.. moved down to 0..) is that COMB. */
static const RD_FN(rd_int) RD_FN(rd_iota)[8] = {0, 1, 2, 3, 4, 5, 6, 7}; /* RD_VL <= 8 */
#define RD_VFOLD(VCOMB, l)                                                     \
    _Pragma("GCC unroll 8") for (int w = RD_VL / 2; w > 0; w /= 2) {           \
        RD_FN(rd_mask) k_;                                                     \
        memcpy(&k_, RD_FN(rd_iota), sizeof k_);                                \
        (l) = VCOMB((l), __builtin_shuffle((l), (k_ & (w - 1)) + w));          \
    }
/* RD_ROW_LEAF with s = 1, combination for combination */
#define RD_ROW_LEAF1(VCOMB, COMB, ID)                                          \
    do {                                                                       \
        RD_FN(rd_vec) acc[RD_NV];                                              \
        _Pragma("GCC unroll 8") for (int v = 0; v < RD_NV; v++)                \
            acc[v] = (RD_FN(rd_vec)){0} + (ID);                                \
        int64_t i = 0;                                                         \
        for (; i + RD_LANES <= n; i += RD_LANES)                               \
            _Pragma("GCC unroll 8") for (int v = 0; v < RD_NV; v++) {          \
                RD_FN(rd_vec) xv;                                              \
                memcpy(&xv, x + i + v * RD_VL, sizeof xv);                     \
                acc[v] = VCOMB(acc[v], xv);                                    \
            }                                                                  \
        T t = (ID);                                                            \
        for (; i < n; i++)                                                     \
            t = COMB(t, x[i]);                                                 \
        /* the pairwise fold of the lanes: across vectors, then within one */ \
        _Pragma("GCC unroll 8") for (int w = RD_NV / 2; w > 0; w /= 2)         \
            _Pragma("GCC unroll 8") for (int v = 0; v < w; v++)                \
                acc[v] = VCOMB(acc[v], acc[v + w]);                            \
        RD_VFOLD(VCOMB, acc[0]);                                               \
        return COMB(acc[0][0], t);                                             \
    } while (0)

static RD_TARGET T RD_FN(rd_row_sum_leaf1)(const T *x, int64_t n)
{
    RD_ROW_LEAF1(RD_VADD, RD_ADD, (T)0);
}

static RD_TARGET T RD_FN(rd_row_max1_exact)(const T *x, int64_t n)
{
    RD_ROW_LEAF1(RD_VMAX, RD_MAX, (T)-INFINITY);
}

/* Note [A max without NaN]
 *   RD_VMAX is a > b ? a : b, and a when a is NaN: without that NaN term it
 *   is the hardware's max (maxps: RD_HWMAX, one instruction, where the ISA
 *   has it), so on a row with no NaN the fast loop below gives RD_VMAX's
 *   bits, lane for lane and fold for fold, signed zeros included; with the
 *   term, a select took four operations a vector and the fold of the lanes
 *   was scalar (now RD_VFOLD's shuffles, for the sums too). The row
 *   is checked for NaN beside the max, not in its chain: each step's
 *   vectors are added and the sum compared with itself (a NaN anywhere
 *   makes it NaN; so can +inf and -inf, or two overflows of opposite sign,
 *   in one step: a false alarm costs only time), and a row with an alarm
 *   runs again through rd_row_max1_exact. The tail (n % RD_LANES elements:
 *   all of a row shorter than RD_LANES) is the exact loop's sequential
 *   rd_max chain, a scalar select an element (rows of 16 float32 read 0.8
 *   GB/s): here it is a max in any order, which has the chain's bits
 *   unless it is a zero (the chain keeps the last of +0 and -0) or a NaN
 *   took part, and such a row runs again through the exact loop too.
 *   AMD EPYC Zen 4 (family 25 model 17), 1 thread, best of 1 s, GB/s read,
 *   before -> after (PyTorch 2.13 / NumPy 2.4): float32 4096 x 256 30.5 ->
 *   78.6 (59 / 13), 1024 x 1024 52 -> 89 (65 / 34), 16384 x 64 13.6 -> 56
 *   (45 / 4.4), 32768 x 32 7.6 -> 40 (25 / 2.4), 65536 x 16 0.8 -> 17.8
 *   (3.7 / 1.3), 4096 x 4096 (memory) 38 -> 42 (36 / 35); float64 4096 x
 *   256 47 -> 78.5 (67 / 24), 1024 x 1024 66 -> 93.5 (66 / 51), 16384 x 64
 *   28 -> 57 (57 / 8.8), 32768 x 32 19 -> 47 (59 / 5.2), 65536 x 16 1.8 ->
 *   27 (21 / 2.7). 2 threads, float32 4096 x 256 61 -> 143 (101), 1024 x
 *   1024 97 -> 156 (109). The same bits as before, rows of 1 to 140000
 *   elements with NaNs (payloads, both signs), infinities, zeros of both
 *   signs and overflowing sums, 1 and 2 threads.
 */
#ifdef RD_HWMAX
#define RD_VFMAX(a, b) ((RD_FN(rd_vec))RD_HWMAX((a), (b)))
#else
#define RD_VFMAX(a, b)                                                         \
    ({                                                                         \
        RD_FN(rd_vec) a_ = (a), b_ = (b);                                      \
        RD_VSEL(a_ > b_, a_, b_);                                              \
    })
#endif
/* inlined: in rd_run_rows, rows of 32 float32 ran 34 -> 40 GB/s */
static inline __attribute__((always_inline)) RD_TARGET T
RD_FN(rd_row_max1)(const T *x, int64_t n)
{
    RD_FN(rd_vec) acc[RD_NV], tv = (RD_FN(rd_vec)){0} + (T)-INFINITY;
    RD_FN(rd_mask) nan = {0};
    _Pragma("GCC unroll 8") for (int v = 0; v < RD_NV; v++)
        acc[v] = tv;
    int64_t i = 0;
    for (; i + RD_LANES <= n; i += RD_LANES) {
        RD_FN(rd_vec) xv[RD_NV];
        _Pragma("GCC unroll 8") for (int v = 0; v < RD_NV; v++) {
            memcpy(&xv[v], x + i + v * RD_VL, sizeof xv[v]);
            acc[v] = RD_VFMAX(acc[v], xv[v]);
        }
        _Pragma("GCC unroll 8") for (int w = RD_NV / 2; w > 0; w /= 2)
            _Pragma("GCC unroll 8") for (int v = 0; v < w; v++)
                xv[v] = xv[v] + xv[v + w];
        nan |= xv[0] != xv[0];
    }
    /* the tail in any order: vectors, then an element at a time; `again`
     * where its bits could depend on the order (a NaN, a zero max) */
    T t = (T)-INFINITY;
    int again = 0;
    if (i < n) {
        for (; i + RD_VL <= n; i += RD_VL) {
            RD_FN(rd_vec) xv;
            memcpy(&xv, x + i, sizeof xv);
            tv = RD_VFMAX(tv, xv);
            nan |= xv != xv;
        }
        RD_VFOLD(RD_VFMAX, tv);
        t = tv[0];
        for (; i < n; i++) {
            again |= x[i] != x[i];
            t = x[i] > t ? x[i] : t;
        }
        again |= t == 0;
    }
#define RD_VOR(a, b) ((a) | (b))
    RD_VFOLD(RD_VOR, nan);
#undef RD_VOR
    if (nan[0] || again)
        return RD_FN(rd_row_max1_exact)(x, n);
    _Pragma("GCC unroll 8") for (int w = RD_NV / 2; w > 0; w /= 2)
        _Pragma("GCC unroll 8") for (int v = 0; v < w; v++)
            acc[v] = RD_VFMAX(acc[v], acc[v + w]);
    RD_VFOLD(RD_VFMAX, acc[0]);
    return acc[0][0] > t ? acc[0][0] : t; /* RD_MAX: neither is NaN */
}

/* Note [Short rows side by side]
 *   A row shorter than RD_LANES is all tail (Note [Summation order]): one
 *   chain, (T)0 + x[0] + x[1] + ... in order, then +0 (the fold of lanes
 *   that never took an element) plus the chain. One row at a time that is
 *   a scalar add an element, each waiting for the last. Here RD_VL rows run
 *   side by side, lane r of a vector holding row r's chain, add for add in
 *   the same order: the same bits. Their elements come by RD_VL x RD_VL
 *   blocks, RD_VL loads and a transpose (RD_TRANSPOSE: log2(RD_VL) stages
 *   that swap off-diagonal blocks), then one element at a time past the
 *   last whole block. A max of such rows is the same with the exact select
 *   (RD_VMAX: NaN and signed zeros as rd_row_max1_exact has them, no
 *   rerun). The rows past the last whole group of RD_VL run one at a time.
 *   AMD EPYC Zen 4, 1 thread, GB/s read, one row -> side by side
 *   (PyTorch 2.13), sums: float32 131072 x 8 9.6 -> 58 (6-8), 65536 x 16
 *   13 -> 56 (14.7), 65536 x 24 14.4 -> 55 (21), 65536 x 31 14.2 -> 41.5
 *   (21.5); float64 131072 x 8 15.3 -> 81 (18.7), 65536 x 16 27 -> 75
 *   (34), 65536 x 31 27-29 -> 55 (49.5); maxes (after Note [A max without
 *   NaN]): float32 65536 x 16 17.8 -> 32.5 (2.2-3.7), float64 27 -> 33-40
 *   (20.5).
 */
/* v[i] <-> lanes: v[i][l] <- v[l][i], i, l < RD_VL */
#define RD_TRANSPOSE(v)                                                        \
    _Pragma("GCC unroll 8") for (int s_ = 1; s_ < RD_VL; s_ *= 2) {            \
        RD_FN(rd_mask) k_, lo_, hi_;                                           \
        memcpy(&k_, RD_FN(rd_iota), sizeof k_);                                \
        RD_FN(rd_mask) up_ = (k_ & s_) != 0; /* lanes of the upper block */     \
        lo_ = k_ + (up_ & (RD_VL - s_));                                       \
        hi_ = k_ + s_ + (up_ & (RD_VL - s_));                                  \
        _Pragma("GCC unroll 8") for (int i_ = 0; i_ < RD_VL; i_++)             \
            if (!(i_ & s_)) {                                                  \
                RD_FN(rd_vec) a_ = (v)[i_], b_ = (v)[i_ + s_];                 \
                (v)[i_] = __builtin_shuffle(a_, b_, lo_);                      \
                (v)[i_ + s_] = __builtin_shuffle(a_, b_, hi_);                 \
            }                                                                  \
    }
/* rows [begin, end), each n < RD_LANES long, so apart, into dst[row] */
#define RD_SHORT_ROWS(VCOMB, ID, LEAF)                                         \
    do {                                                                       \
        int64_t o = begin;                                                     \
        for (; o + RD_VL <= end; o += RD_VL) {                                 \
            const T *x = a + o * so;                                           \
            RD_FN(rd_vec) t = (RD_FN(rd_vec)){0} + (ID);                       \
            int64_t i = 0;                                                     \
            for (; i + RD_VL <= n; i += RD_VL) {                               \
                RD_FN(rd_vec) c[RD_VL];                                        \
                _Pragma("GCC unroll 8") for (int r = 0; r < RD_VL; r++)        \
                    memcpy(&c[r], x + r * so + i, sizeof c[r]);                \
                RD_TRANSPOSE(c);                                               \
                _Pragma("GCC unroll 8") for (int l = 0; l < RD_VL; l++)        \
                    t = VCOMB(t, c[l]);                                        \
            }                                                                  \
            for (; i < n; i++) {                                               \
                RD_FN(rd_vec) c;                                               \
                _Pragma("GCC unroll 8") for (int r = 0; r < RD_VL; r++)        \
                    c[r] = x[r * so + i];                                      \
                t = VCOMB(t, c);                                               \
            }                                                                  \
            /* the fold of the lanes that took no element, then the chain */  \
            t = VCOMB((RD_FN(rd_vec)){0} + (ID), t);                           \
            memcpy(dst + o, &t, sizeof t);                                     \
        }                                                                      \
        for (; o < end; o++)                                                   \
            dst[o] = LEAF(a + o * so, n);                                      \
    } while (0)

static RD_TARGET void RD_FN(rd_short_sums)(const T *a, int64_t so, int64_t n, T *dst,
                                           int64_t begin, int64_t end)
{
    RD_SHORT_ROWS(RD_VADD, (T)0, RD_FN(rd_row_sum_leaf1));
}

static RD_TARGET void RD_FN(rd_short_maxes)(const T *a, int64_t so, int64_t n, T *dst,
                                            int64_t begin, int64_t end)
{
    RD_SHORT_ROWS(RD_VMAX, (T)-INFINITY, RD_FN(rd_row_max1_exact));
}
#undef RD_SHORT_ROWS
#undef RD_TRANSPOSE
#undef RD_VFMAX
#undef RD_VFOLD
#undef RD_ROW_LEAF1
#undef RD_VMAX
#undef RD_VSEL
#undef RD_VADD
#undef RD_NV
#undef RD_VL

static RD_TARGET T RD_FN(rd_row_sum)(const T *x, int64_t n, int64_t s)
{
    if (n <= RD_LEAF)
        return s == 1 ? RD_FN(rd_row_sum_leaf1)(x, n) : RD_FN(rd_row_sum_leaf)(x, n, s);
    int64_t h = rd_split(n, RD_LEAF);
    T left = RD_FN(rd_row_sum)(x, h, s);
    return left + RD_FN(rd_row_sum)(x + h * s, n - h, s);
}

static RD_TARGET T RD_FN(rd_row)(int op, const T *x, int64_t n, int64_t s)
{
    if (op == NDL_RED_SUM)
        return RD_FN(rd_row_sum)(x, n, s);
    return s == 1 ? RD_FN(rd_row_max1)(x, n) : RD_FN(rd_row_max)(x, n, s);
}

/* ---- columns: acc[i] = reduce over r < nr of x[r*sr + i*si], i < nc ----- */
#define RD_VERT_LEAF(COMB)                                                     \
    do {                                                                       \
        if (si == 1) {                                                         \
            for (int64_t i = 0; i < nc; i++)                                   \
                acc[i] = x[i];                                                 \
            int64_t r = 1;                                                     \
            for (; r + 4 <= nr; r += 4) {                                      \
                const T *x0 = x + r * sr, *x1 = x0 + sr, *x2 = x1 + sr, *x3 = x2 + sr; \
                for (int64_t i = 0; i < nc; i++)                               \
                    acc[i] = COMB(COMB(COMB(COMB(acc[i], x0[i]), x1[i]), x2[i]), x3[i]); \
            }                                                                  \
            for (; r < nr; r++) {                                              \
                const T *x0 = x + r * sr;                                      \
                for (int64_t i = 0; i < nc; i++)                               \
                    acc[i] = COMB(acc[i], x0[i]);                              \
            }                                                                  \
        } else {                                                               \
            for (int64_t i = 0; i < nc; i++)                                   \
                acc[i] = x[i * si];                                            \
            for (int64_t r = 1; r < nr; r++)                                   \
                for (int64_t i = 0; i < nc; i++)                               \
                    acc[i] = COMB(acc[i], x[r * sr + i * si]);                 \
        }                                                                      \
    } while (0)

static RD_TARGET void RD_FN(rd_vert_sum_leaf)(const T *x, int64_t nr, int64_t sr, int64_t nc,
                                              int64_t si, T *acc)
{
    RD_VERT_LEAF(RD_ADD);
}

static RD_TARGET void RD_FN(rd_vert_max)(const T *x, int64_t nr, int64_t sr, int64_t nc,
                                         int64_t si, T *acc)
{
    RD_VERT_LEAF(RD_MAX);
}
#undef RD_VERT_LEAF

/* ws: scratch for rd_vert_depth(nr) buffers of nc elements. */
static RD_TARGET void RD_FN(rd_vert_sum)(const T *x, int64_t nr, int64_t sr, int64_t nc,
                                         int64_t si, T *acc, T *ws)
{
    if (nr <= RD_VLEAF) {
        RD_FN(rd_vert_sum_leaf)(x, nr, sr, nc, si, acc);
        return;
    }
    int64_t h = rd_split(nr, RD_VLEAF);
    RD_FN(rd_vert_sum)(x, h, sr, nc, si, acc, ws + nc);
    RD_FN(rd_vert_sum)(x + h * sr, nr - h, sr, nc, si, ws, ws + nc);
    for (int64_t i = 0; i < nc; i++)
        acc[i] = acc[i] + ws[i];
}

/* ---- tasks -------------------------------------------------------------- */
/* Units of row mode: u = (c * no + o) * ni + i  ->  one output element,
 * reduced over chunk c of the reduced axis. */
static RD_TARGET void RD_FN(rd_run_rows)(void *ctx, int64_t begin, int64_t end)
{
    const rd_job *j = (const rd_job *)ctx;
    const T *a = (const T *)j->a;
    T *dst0 = (T *)(j->nchunks > 1 ? j->partial : j->out);
    int64_t nout = j->no * j->ni;
    /* unit stride, one chunk: rows shorter than RD_LANES side by side (Note
     * [Short rows side by side]), the others one at a time (Note [One row at
     * a time]) */
    if (j->sr == 1 && j->ni == 1 && j->nchunks == 1) {
        int sum = j->op == NDL_RED_SUM;
        if (j->nr < RD_LANES) {
            (sum ? RD_FN(rd_short_sums) : RD_FN(rd_short_maxes))(a, j->so, j->nr, dst0,
                                                                  begin, end);
            return;
        }
        if (sum && j->nr <= RD_LEAF) {
            for (int64_t o = begin; o < end; o++)
                dst0[o] = RD_FN(rd_row_sum_leaf1)(a + o * j->so, j->nr);
            return;
        }
        if (!sum) {
            for (int64_t o = begin; o < end; o++)
                dst0[o] = RD_FN(rd_row_max1)(a + o * j->so, j->nr);
            return;
        }
    }
    int64_t c = begin / nout, k = begin % nout;
    for (int64_t u = begin; u < end; u++) {
        int64_t o = j->ni == 1 ? k : k / j->ni, i = j->ni == 1 ? 0 : k % j->ni;
        int64_t r0 = c * j->rchunk;
        int64_t nr = j->nr - r0 < j->rchunk ? j->nr - r0 : j->rchunk;
        const T *x = a + o * j->so + i * j->si + r0 * j->sr;
        dst0[c * nout + k] = RD_FN(rd_row)(j->op, x, nr, j->sr);
        if (++k == nout) {
            k = 0;
            c++;
        }
    }
}

/* Units of column mode: u = (c * no + o) * ntiles + t  ->  columns
 * [t*tile, (t+1)*tile) of outer row o, reduced over chunk c. */
static RD_TARGET void RD_FN(rd_run_vert)(void *ctx, int64_t begin, int64_t end)
{
    const rd_job *j = (const rd_job *)ctx;
    const T *a = (const T *)j->a;
    T *dst0 = (T *)(j->nchunks > 1 ? j->partial : j->out);
    int64_t nout = j->no * j->ni;
    /* on the stack unless whole rows need more: Note [Whole rows of columns] */
    T small[RD_WS_BYTES / sizeof(T)];
    T *ws = small;
    if (j->ws_elems > (int64_t)(RD_WS_BYTES / sizeof(T)) &&
        !(ws = (T *)malloc((size_t)j->ws_elems * sizeof(T)))) {
        atomic_store(j->failed, 1);
        return;
    }
    for (int64_t u = begin; u < end; u++) {
        int64_t t = u % j->ntiles, co = u / j->ntiles;
        int64_t o = co % j->no, c = co / j->no;
        int64_t i0 = t * j->tile;
        int64_t nc = j->ni - i0 < j->tile ? j->ni - i0 : j->tile;
        int64_t r0 = c * j->rchunk;
        int64_t nr = j->nr - r0 < j->rchunk ? j->nr - r0 : j->rchunk;
        const T *x = a + o * j->so + i0 * j->si + r0 * j->sr;
        T *acc = dst0 + c * nout + o * j->ni + i0;
        if (j->op == NDL_RED_SUM)
            RD_FN(rd_vert_sum)(x, nr, j->sr, nc, j->si, acc, ws);
        else
            RD_FN(rd_vert_max)(x, nr, j->sr, nc, j->si, acc);
    }
    if (ws != small)
        free(ws);
}

/* p[c*stride], c < m, folded with the split rule of Note [Summation order]. */
static T RD_FN(rd_fold)(int op, const T *p, int64_t m, int64_t stride)
{
    if (m == 1)
        return p[0];
    int64_t h = rd_split(m, 1);
    T left = RD_FN(rd_fold)(op, p, h, stride);
    T right = RD_FN(rd_fold)(op, p + h * stride, m - h, stride);
    return op == NDL_RED_SUM ? left + right : RD_MAX(left, right);
}

static void RD_FN(rd_finish)(const rd_job *j)
{
    const T *p = (const T *)j->partial;
    T *out = (T *)j->out;
    int64_t nout = j->no * j->ni;
    for (int64_t k = 0; k < nout; k++)
        out[k] = RD_FN(rd_fold)(j->op, p + k, j->nchunks, nout);
}

#undef RD_ADD
#undef RD_MAX
#undef RD_FN
#undef RD_PASTE
#undef RD_PASTE_
#undef T
#undef RD_DT
#undef RD_SFX
#undef RD_TARGET
#undef RD_HWMAX
