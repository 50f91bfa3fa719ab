/* cpu_matmul_generic.c: portable C micro-kernels for ndl_cpu_matmul, used on
 * CPUs without AVX2+FMA (or when NEEDLE_MATMUL_KERNEL=generic).
 *
 * float32: 4 x 8 tile; float64: 4 x 4 tile. Plain loops over a small
 * accumulator array that the compiler keeps in (SSE) registers.
 * Contract and packed layout: Note [Packed panels] in cpu_matmul.h.
 */
#include "cpu_matmul.h"

#define MR NDL_GENERIC_MR_F32
#define NR NDL_GENERIC_NR_F32

void ndl_ukernel_generic_f32(int64_t kc, const void *a_, int64_t ars, int64_t acs, const void *b_,
                             void *c_, int64_t ldc, int mr, int nr, int first)
{
    const float *a = a_, *b = b_;
    float *c = c_;
    float acc[MR][NR] = {{0}};
    int64_t arow[MR]; /* rows past mr read row 0 (cpu_matmul.h) */
    for (int r = 0; r < MR; r++)
        arow[r] = (r < mr ? r : 0) * ars;
    for (int64_t k = 0; k < kc; k++) {
        for (int r = 0; r < MR; r++)
            for (int j = 0; j < NR; j++)
                acc[r][j] += a[arow[r] + k * acs] * b[j];
        b += NR;
    }
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < nr; j++)
            c[r * ldc + j] = first ? acc[r][j] : c[r * ldc + j] + acc[r][j];
}

#undef MR
#undef NR
#define MR NDL_GENERIC_MR_F64
#define NR NDL_GENERIC_NR_F64

void ndl_ukernel_generic_f64(int64_t kc, const void *a_, int64_t ars, int64_t acs, const void *b_,
                             void *c_, int64_t ldc, int mr, int nr, int first)
{
    const double *a = a_, *b = b_;
    double *c = c_;
    double acc[MR][NR] = {{0}};
    int64_t arow[MR]; /* rows past mr read row 0 (cpu_matmul.h) */
    for (int r = 0; r < MR; r++)
        arow[r] = (r < mr ? r : 0) * ars;
    for (int64_t k = 0; k < kc; k++) {
        for (int r = 0; r < MR; r++)
            for (int j = 0; j < NR; j++)
                acc[r][j] += a[arow[r] + k * acs] * b[j];
        b += NR;
    }
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < nr; j++)
            c[r * ldc + j] = first ? acc[r][j] : c[r * ldc + j] + acc[r][j];
}
