/* cpu_dropout.c: the CPU kernel of the masked_scale slot (backend.h):
 * Dropout's x * mask / c, the mask given as 0s and 1s or packed 16 bits to an
 * element (Note [Fused dropout], ops_dropout.c, which calls it through the
 * backend table).
 *
 * Python equivalent (x, out of n elements):
 *     m = mask if not packed else unpackbits(mask.astype(uint16).view(uint8),
 *                                            bitorder="little")[:n]
 *     out = (x * m) / c          # c rounded to x's dtype, as DivScalar does
 *
 * Per element the Mul kernel's product, then the DivScalar kernel's quotient
 * (scalar_ops.h), so the numbers are the composition's bit for bit.
 */
#include "backend.h"
#include "scalar_ops.h"
#include "threadpool.h"

typedef struct {
    ndl_dtype dt;
    const void *x, *mask;
    int packed;
    double c;
    void *out;
} ms_job;

#define NDL_MASKED_SCALE(T, sfx)                                                                   \
    static void masked_scale_##sfx(const T *restrict x, const T *restrict mask, int packed, T c,  \
                                   T *restrict out, int64_t i0, int64_t i1)                        \
    {                                                                                              \
        if (!packed) {                                                                             \
            for (int64_t i = i0; i < i1; i++)                                                      \
                out[i] = ndl_div_##sfx(ndl_mul_##sfx(x[i], mask[i]), c);                           \
            return;                                                                                \
        }                                                                                          \
        for (int64_t i = i0; i < i1; i++) {                                                        \
            unsigned w = (unsigned)mask[i >> 4];                                                   \
            T bit = (T)((w >> (i & 15)) & 1u);                                                     \
            out[i] = ndl_div_##sfx(ndl_mul_##sfx(x[i], bit), c);                                   \
        }                                                                                          \
    }
NDL_MASKED_SCALE(float, f32)
NDL_MASKED_SCALE(double, f64)

static void masked_scale_range(void *ctx, int64_t i0, int64_t i1)
{
    const ms_job *j = ctx;
    if (j->dt == NDL_FLOAT32)
        masked_scale_f32(j->x, j->mask, j->packed, (float)j->c, j->out, i0, i1);
    else
        masked_scale_f64(j->x, j->mask, j->packed, j->c, j->out, i0, i1);
}

int ndl_cpu_masked_scale(ndl_dtype dt, int64_t n, const void *x, const void *mask, int packed,
                         double c, void *out)
{
    ms_job job = {dt, x, mask, packed != 0, c, out};
    if (n < 0)
        return NDL_EINVAL;
    if (n > 0)
        ndl_parallel_for(n, 32768, masked_scale_range, &job);
    return NDL_OK;
}
