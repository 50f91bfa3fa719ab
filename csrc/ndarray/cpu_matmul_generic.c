/* cpu_matmul_generic.c: portable C micro-kernels for ndl_cpu_matmul, used on
 * CPUs without AVX2+FMA (or when NEEDLE_MATMUL_KERNEL=generic).
 *
 * float32: 4 x 8 tile; float64: 4 x 4 tile, from one body. Plain loops over
 * a small accumulator array that the compiler keeps in (SSE) registers.
 * Contract and packed layout: Note [Packed panels] in cpu_matmul.h.
 */
#include "cpu_matmul.h"

#define GENERIC_UKERNEL(T, SFX, MR, NR)                                                            \
    void ndl_ukernel_generic_##SFX(int64_t kc, const void *a_, int64_t ars, int64_t acs,           \
                                   const void *b_, void *c_, int64_t ldc, int mr, int nr,          \
                                   int first)                                                      \
    {                                                                                              \
        const T *a = a_, *b = b_;                                                                  \
        T *c = c_;                                                                                 \
        T acc[MR][NR] = {{0}};                                                                     \
        int64_t arow[MR]; /* rows past mr read row 0 (cpu_matmul.h) */                             \
        for (int r = 0; r < MR; r++)                                                               \
            arow[r] = (r < mr ? r : 0) * ars;                                                      \
        for (int64_t k = 0; k < kc; k++) {                                                         \
            for (int r = 0; r < MR; r++)                                                           \
                for (int j = 0; j < NR; j++)                                                       \
                    acc[r][j] = NDL_MADD(a[arow[r] + k * acs], b[j], acc[r][j]);                  \
            b += NR;                                                                               \
        }                                                                                          \
        for (int r = 0; r < mr; r++)                                                               \
            for (int j = 0; j < nr; j++)                                                           \
                c[r * ldc + j] = first ? acc[r][j] : c[r * ldc + j] + acc[r][j];                   \
    }

GENERIC_UKERNEL(float, f32, NDL_GENERIC_MR_F32, NDL_GENERIC_NR_F32)
GENERIC_UKERNEL(double, f64, NDL_GENERIC_MR_F64, NDL_GENERIC_NR_F64)
