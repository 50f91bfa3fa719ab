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

static RD_TARGET T RD_FN(rd_row_sum)(const T *x, int64_t n, int64_t s)
{
    if (n <= RD_LEAF)
        return RD_FN(rd_row_sum_leaf)(x, n, s);
    int64_t h = rd_split(n, RD_LEAF);
    T left = RD_FN(rd_row_sum)(x, h, s);
    return left + RD_FN(rd_row_sum)(x + h * s, n - h, s);
}

/* Note [Rows side by side]
 *   A sum over the last axis of a big array reads each row as one
 *   sequential stream; one row after the other, one core kept too few
 *   misses in flight (Zen 3, 4096 x 4096 float32, 1 thread: 22 GB/s,
 *   PyTorch 25-27). So unit-stride rows are summed RD_ROWS at a time, their
 *   leaves side by side: RD_ROWS streams. Each row's sum is the one of
 *   rd_row_sum, operation for operation (the same lanes, the same tail, the
 *   same tree), so the bits do not change. Their lanes are folded level
 *   by level for all the rows at once, which keeps them in registers (row
 *   by row, gcc spilled them and rows in cache lost 10%). Zen 3, 1 thread,
 *   float32: 4096 x 4096 22 -> 31-33 GB/s (float64 21.5 -> 28.5); 1024 x
 *   1024 (in cache) 56-58 -> 57-63; 256 x 300 30 -> 41. Eight rows were no
 *   faster from memory and slower from cache; two reach 29 GB/s.
 *   (-DRD_ROWS=n builds another count, for such measurements.)
 */
#ifndef RD_ROWS
#define RD_ROWS 4
#endif
static RD_TARGET void RD_FN(rd_rows_sum_leaf)(const T *x, int64_t rs, int64_t n, T *out)
{
    T acc[RD_ROWS][RD_LANES], t[RD_ROWS];
    for (int r = 0; r < RD_ROWS; r++) {
        t[r] = 0;
        for (int j = 0; j < RD_LANES; j++)
            acc[r][j] = 0;
    }
    int64_t i = 0;
    for (; i + RD_LANES <= n; i += RD_LANES)
        for (int r = 0; r < RD_ROWS; r++)
            for (int j = 0; j < RD_LANES; j++)
                acc[r][j] = acc[r][j] + x[r * rs + i + j];
    for (int r = 0; r < RD_ROWS; r++)
        for (int64_t k = i; k < n; k++)
            t[r] = t[r] + x[r * rs + k];
    /* the lanes folded pairwise, all rows at each level (in registers) */
#pragma GCC unroll 16
    for (int w = RD_LANES / 2; w > 0; w /= 2)
#pragma GCC unroll 8
        for (int r = 0; r < RD_ROWS; r++)
#pragma GCC unroll 16
            for (int j = 0; j < w; j++)
                acc[r][j] = acc[r][j] + acc[r][j + w];
    for (int r = 0; r < RD_ROWS; r++)
        out[r] = acc[r][0] + t[r];
}

/* RD_ROWS rows x[r*rs + i], i < n, each summed as rd_row_sum(x + r*rs, n, 1) */
static RD_TARGET void RD_FN(rd_rows_sum)(const T *x, int64_t rs, int64_t n, T *out)
{
    if (n <= RD_LEAF) {
        RD_FN(rd_rows_sum_leaf)(x, rs, n, out);
        return;
    }
    int64_t h = rd_split(n, RD_LEAF);
    T left[RD_ROWS], right[RD_ROWS];
    RD_FN(rd_rows_sum)(x, rs, h, left);
    RD_FN(rd_rows_sum)(x + h, rs, n - h, right);
    for (int r = 0; r < RD_ROWS; r++)
        out[r] = left[r] + right[r];
}

static RD_TARGET T RD_FN(rd_row)(int op, const T *x, int64_t n, int64_t s)
{
    return op == NDL_RED_SUM ? RD_FN(rd_row_sum)(x, n, s) : RD_FN(rd_row_max)(x, n, s);
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
    const int side = j->op == NDL_RED_SUM && j->sr == 1 && j->ni == 1; /* Note [Rows side by side] */
    for (int64_t u = begin; u < end;) {
        int64_t c = u / nout, k = u % nout;
        int64_t o = k / j->ni, i = k % j->ni;
        int64_t r0 = c * j->rchunk;
        int64_t nr = j->nr - r0 < j->rchunk ? j->nr - r0 : j->rchunk;
        const T *x = a + o * j->so + i * j->si + r0 * j->sr;
        if (side && u + RD_ROWS <= end && k + RD_ROWS <= nout) {
            RD_FN(rd_rows_sum)(x, j->so, nr, dst0 + c * nout + k);
            u += RD_ROWS;
            continue;
        }
        dst0[c * nout + k] = RD_FN(rd_row)(j->op, x, nr, j->sr);
        u++;
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
