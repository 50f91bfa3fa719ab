/* cpu_conv_rows.c: ndl_cpu_conv_rows, a stride-1 conv without im2col, on
 * the matmul's in-place kernel (contract in cpu_conv.h).
 *
 * Python equivalent (x padded, NHWC; w a (kh*kw*C, Co) matrix; win(r) the
 * Wo rows of kw*C elements of the input row r, C elements apart):
 *     for n, y, t in product(range(N), range(Ho), range(kh)):
 *         out[n, y] += win(x[n, y + t]) @ w[t*kw*C:(t + 1)*kw*C]
 *
 * Note [Conv rows in place]
 *   The conv (ndarray_conv.c) multiplies blocks of its im2col matrix, built
 *   row by row in scratch: at 16 -> 32 channels, 3x3, the copies of 3*C
 *   elements each took about a fifth of the step. For stride 1, the row of
 *   im2col for output pixel (n, y, x) is, for each kernel row t, kw*C
 *   elements of the padded input from (n, y + t, x, 0) on, and the next
 *   pixel's start C elements later: an A matrix with row stride C that the
 *   in-place kernel (Note [Reading A in place] in cpu_matmul.c) reads where
 *   it lies. So a tile of MR pixels of one output row is kh kernel calls of
 *   K = kw*C, the first writing C, the others adding to it; the weights are
 *   packed once.
 *   Each C element is then the sum of kh chains (Note [One chain per
 *   element]: a KC block per kernel row), not one chain of kh*kw*C: other
 *   bits than the im2col path, the same on every thread count.
 *   Taken when kw*C fits KC, an output row holds two register tiles, and
 *   C_out is at most two column panels: the copies im2col saves are kh*kw*C
 *   elements a pixel against kh*kw*C*C_out multiply-adds, so they matter
 *   at few output channels; from four panels on, kh tile stores where the
 *   im2col path has one cost more than the copies (float32 forward, batch
 *   32 at 32x32, 1 thread, GFLOP/s im2col -> here: 32 -> 64 channels 87 ->
 *   81, 64 -> 128 91 -> 87). AMD EPYC (Zen 2), float32, 3x3 at 32x32, batch
 *   32, GFLOP/s 1 / 2 threads, im2col -> here: 32 -> 16 69 -> 79 / 128 ->
 *   149, 16 -> 16 61 -> 76 / 116 -> 142, 8 -> 16 47 -> 68 / 90 -> 125,
 *   64 -> 32 81 -> 84 / 150 -> 166, 16 -> 32 74 -> 77 / 145 -> 149; the
 *   16 -> 32 conv's step (forward, both gradients; the input gradient is
 *   a 32 -> 16 conv) 7.4 -> 6.4 ms on 2 threads, 13.5 -> 12.2 on one. */
#include "cpu_conv.h"
#include "cpu_matmul.h"
#include "threadpool.h"

typedef struct {
    ndl_gemm_tile tile; /* the chosen kernel, its tile and KC */
    int64_t es, hp, wp, c, kh, kw, ho, wo, co;
    const char *x, *bp;
    char *out;
} conv_rows_job;

static void conv_rows_range(void *ctx, int64_t begin, int64_t end)
{
    const conv_rows_job *j = (const conv_rows_job *)ctx;
    const int mr = j->tile.mr, nr = j->tile.nr;
    const int64_t es = j->es, kwc = j->kw * j->c, k = j->kh * kwc;
    for (int64_t r = begin; r < end; r++) {
        const int64_t n = r / j->ho, y = r % j->ho;
        char *orow = j->out + r * j->wo * j->co * es;
        for (int64_t jr = 0; jr < j->co; jr += nr) {
            const int nrr = j->co - jr < nr ? (int)(j->co - jr) : nr;
            const char *panel = j->bp + jr * k * es;
            for (int64_t x0 = 0; x0 < j->wo; x0 += mr) {
                const int mrr = j->wo - x0 < mr ? (int)(j->wo - x0) : mr;
                for (int64_t t = 0; t < j->kh; t++)
                    j->tile.kernel(kwc, j->x + (((n * j->hp + y + t) * j->wp + x0) * j->c) * es,
                                   j->c, 1, panel + t * kwc * nr * es,
                                   orow + (x0 * j->co + jr) * es, j->co, mrr, nrr, t == 0);
            }
        }
    }
}

int ndl_cpu_conv_rows_fit(ndl_dtype dt, int64_t kw, int64_t c, int64_t wo, int64_t co)
{
    if ((unsigned)dt >= NDL_NUM_DTYPES || kw < 1 || c < 1)
        return 0;
    const ndl_gemm_tile t = ndl_cpu_gemm_tile(dt);
    return kw * c <= t.kc && wo >= 2 * t.mr && co <= 2 * t.nr;
}

int ndl_cpu_conv_rows(ndl_dtype dt, const void *x, int64_t n, int64_t hp, int64_t wp, int64_t c,
                      int64_t kh, int64_t kw, const void *w, int64_t rsw, int64_t csw, int64_t co,
                      void *out)
{
    if (!ndl_cpu_conv_rows_fit(dt, kw, c, wp - kw + 1, co) || kh < 1 || hp < kh || n < 0 || co < 1)
        return NDL_EINVAL;
    const ndl_gemm_tile t = ndl_cpu_gemm_tile(dt);
    const int64_t es = (int64_t)ndl_itemsize(dt), k = kh * kw * c;
    const int64_t ho = hp - kh + 1, wo = wp - kw + 1;
    const int64_t cols = (co + t.nr - 1) / t.nr * t.nr;
    conv_rows_job j = {t, es, hp, wp, c, kh, kw, ho, wo, co, x, NULL, out};
    char *bp;
    if ((bp = ndl_matmul_scratch_get((size_t)(k * cols * es))) == NULL)
        return NDL_ENOMEM;
    ndl_cpu_pack_b(dt, w, rsw, csw, k, co, t.nr, bp);
    j.bp = bp;
    /* rows of about 64 Ki multiply-adds a task at least */
    int64_t grain = (int64_t)(1 << 16) / (wo * k * co) + 1;
    ndl_parallel_for(n * ho, grain, conv_rows_range, &j);
    ndl_matmul_scratch_put(bp);
    return NDL_OK;
}
