/* cpu_rows_index.c: the CPU kernels of the take_rows and scatter_add_rows
 * slots (backend.h): Embedding's row lookup and its gradient (Note [Rows by
 * index], ops_rnn.c), one call for all the indices instead of one copy or
 * add slot call per index.
 *
 * Python equivalent (idx int64, checked):
 *     dst = src[idx]                              # take_rows
 *     out = zeros((rows_out, row)); np.add.at(out, idx, g)   # scatter_add_rows
 *
 * Take is one memcpy per row. Scatter keeps the composite path's order per
 * element (k increasing, starting from +0.0), so its sums are the same bits;
 * a large job splits over COLUMNS only, every part walking all k in order.
 */
#include <string.h>

#include "backend.h"
#include "threadpool.h"

/* 1 when every index is in [0, bound). */
static int indices_ok(const int64_t *idx, int64_t n, int64_t bound)
{
    for (int64_t k = 0; k < n; k++)
        if (idx[k] < 0 || idx[k] >= bound)
            return 0;
    return 1;
}

int ndl_cpu_take_rows(ndl_dtype dt, const void *src, int64_t rows_src, int64_t row,
                      const int64_t *idx, int64_t n, void *dst)
{
    size_t rb = (size_t)row * ndl_itemsize(dt);
    if (n < 0 || row < 0 || rows_src < 0 || (n > 0 && !indices_ok(idx, n, rows_src)))
        return NDL_EINVAL;
    for (int64_t k = 0; k < n && rb > 0; k++)
        memcpy((char *)dst + (size_t)k * rb, (const char *)src + (size_t)idx[k] * rb, rb);
    return NDL_OK;
}

typedef struct {
    ndl_dtype dt;
    const void *g;
    int64_t n, row;
    const int64_t *idx;
    void *out;
} scatter_job;

/* Columns [j0, j1) of every row: out[idx[k], j] += g[k, j], k increasing. */
#define NDL_SCATTER_COLS(T, sfx)                                                                   \
    static void scatter_cols_##sfx(const scatter_job *s, int64_t j0, int64_t j1)                  \
    {                                                                                              \
        const T *restrict g = s->g;                                                                \
        T *restrict out = s->out;                                                                  \
        for (int64_t k = 0; k < s->n; k++) {                                                       \
            const T *restrict gk = g + k * s->row;                                                 \
            T *restrict ok = out + s->idx[k] * s->row;                                             \
            for (int64_t j = j0; j < j1; j++)                                                      \
                ok[j] += gk[j];                                                                    \
        }                                                                                          \
    }
NDL_SCATTER_COLS(float, f32)
NDL_SCATTER_COLS(double, f64)

static void scatter_range(void *ctx, int64_t j0, int64_t j1)
{
    const scatter_job *s = ctx;
    if (s->dt == NDL_FLOAT32)
        scatter_cols_f32(s, j0, j1);
    else
        scatter_cols_f64(s, j0, j1);
}

int ndl_cpu_scatter_add_rows(ndl_dtype dt, const void *g, int64_t n, int64_t row,
                             const int64_t *idx, int64_t rows_out, void *out)
{
    scatter_job job = {dt, g, n, row, idx, out};
    if (n < 0 || row < 0 || rows_out < 0 || (n > 0 && !indices_ok(idx, n, rows_out)))
        return NDL_EINVAL;
    if (rows_out > 0 && row > 0)
        memset(out, 0, (size_t)rows_out * (size_t)row * ndl_itemsize(dt)); /* +0.0 */
    if (n == 0 || row == 0)
        return NDL_OK;
    /* About 32K additions a part at the least: a range of at least grain
     * columns (16 at the fewest, a cache line of float32) over all n rows. */
    int64_t grain = 32768 / n;
    grain = grain < 16 ? 16 : (grain + 15) / 16 * 16;
    ndl_parallel_for(row, grain, scatter_range, &job);
    return NDL_OK;
}
