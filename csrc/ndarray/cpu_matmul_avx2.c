/* cpu_matmul_avx2.c: AVX2+FMA micro-kernels for ndl_cpu_matmul.
 *
 * float32: 6 x 16 tile (12 ymm accumulators, 2 for B, 1 broadcast of A).
 * float64: 6 x 8 tile, same register plan.
 * Contract and packed layout: Note [Packed panels] in cpu_matmul.h.
 *
 * Compiled with the same flags as every other file: the ISA comes from the
 * target attribute, and cpu_matmul.c only calls these after
 * __builtin_cpu_supports("avx2") && ("fma"). cpu_matmul_avx512.c is this
 * file with wider registers and 14 rows; keep the two in step.
 *
 * NOTE: the accumulators are named variables (c<row>_<vec>), not an array:
 * gcc 12 keeps an array of vectors in memory and stores it back on every k
 * step, which halves the kernel's speed.
 */
#include "cpu_matmul.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define NDL_TARGET __attribute__((target("avx2,fma")))

/* X(r) for every row of the tile */
#define NDL_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)

/* ---- float32, 6 x 16 ---------------------------------------------------- */
#define MR NDL_AVX2_MR_F32
#define NR NDL_AVX2_NR_F32

#define DECL(r) __m256 c##r##_0 = _mm256_setzero_ps(), c##r##_1 = _mm256_setzero_ps();
#define STEP(r)                                                                     \
    {                                                                               \
        __m256 ar = _mm256_broadcast_ss(a + r);                                     \
        c##r##_0 = _mm256_fmadd_ps(ar, b0, c##r##_0);                               \
        c##r##_1 = _mm256_fmadd_ps(ar, b1, c##r##_1);                               \
    }
#define STORE(r)                                                                    \
    if (first) {                                                                    \
        _mm256_storeu_ps(c + r * ldc, c##r##_0);                                    \
        _mm256_storeu_ps(c + r * ldc + 8, c##r##_1);                                \
    } else {                                                                        \
        _mm256_storeu_ps(c + r * ldc, _mm256_add_ps(_mm256_loadu_ps(c + r * ldc), c##r##_0));         \
        _mm256_storeu_ps(c + r * ldc + 8, _mm256_add_ps(_mm256_loadu_ps(c + r * ldc + 8), c##r##_1)); \
    }
#define SPILL(r)                                                                    \
    _mm256_store_ps(tile + r * NR, c##r##_0);                                       \
    _mm256_store_ps(tile + r * NR + 8, c##r##_1);

NDL_TARGET void ndl_ukernel_avx2_f32(int64_t kc, const void *a_, const void *b_, void *c_, int64_t ldc,
                                     int mr, int nr, int first)
{
    const float *a = a_, *b = b_;
    float *c = c_;
    NDL_ROWS(DECL)
    for (int r = 0; r < mr; r++)
        _mm_prefetch((const char *)(c + r * ldc), _MM_HINT_T0);
    for (int64_t k = 0; k < kc; k++) {
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
        NDL_ROWS(STEP)
        a += MR;
        b += NR;
    }
    if (mr == MR && nr == NR) {
        NDL_ROWS(STORE)
        return;
    }
    /* partial tile: spill the accumulators, touch only the valid part of C */
    float tile[MR * NR] __attribute__((aligned(32)));
    NDL_ROWS(SPILL)
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < nr; j++)
            c[r * ldc + j] = first ? tile[r * NR + j] : c[r * ldc + j] + tile[r * NR + j];
}

#undef MR
#undef NR
#undef DECL
#undef STEP
#undef STORE
#undef SPILL

/* ---- float64, 6 x 8 ----------------------------------------------------- */
#define MR NDL_AVX2_MR_F64
#define NR NDL_AVX2_NR_F64

#define DECL(r) __m256d c##r##_0 = _mm256_setzero_pd(), c##r##_1 = _mm256_setzero_pd();
#define STEP(r)                                                                     \
    {                                                                               \
        __m256d ar = _mm256_broadcast_sd(a + r);                                    \
        c##r##_0 = _mm256_fmadd_pd(ar, b0, c##r##_0);                               \
        c##r##_1 = _mm256_fmadd_pd(ar, b1, c##r##_1);                               \
    }
#define STORE(r)                                                                    \
    if (first) {                                                                    \
        _mm256_storeu_pd(c + r * ldc, c##r##_0);                                    \
        _mm256_storeu_pd(c + r * ldc + 4, c##r##_1);                                \
    } else {                                                                        \
        _mm256_storeu_pd(c + r * ldc, _mm256_add_pd(_mm256_loadu_pd(c + r * ldc), c##r##_0));         \
        _mm256_storeu_pd(c + r * ldc + 4, _mm256_add_pd(_mm256_loadu_pd(c + r * ldc + 4), c##r##_1)); \
    }
#define SPILL(r)                                                                    \
    _mm256_store_pd(tile + r * NR, c##r##_0);                                       \
    _mm256_store_pd(tile + r * NR + 4, c##r##_1);

NDL_TARGET void ndl_ukernel_avx2_f64(int64_t kc, const void *a_, const void *b_, void *c_, int64_t ldc,
                                     int mr, int nr, int first)
{
    const double *a = a_, *b = b_;
    double *c = c_;
    NDL_ROWS(DECL)
    for (int r = 0; r < mr; r++)
        _mm_prefetch((const char *)(c + r * ldc), _MM_HINT_T0);
    for (int64_t k = 0; k < kc; k++) {
        __m256d b0 = _mm256_loadu_pd(b), b1 = _mm256_loadu_pd(b + 4);
        NDL_ROWS(STEP)
        a += MR;
        b += NR;
    }
    if (mr == MR && nr == NR) {
        NDL_ROWS(STORE)
        return;
    }
    double tile[MR * NR] __attribute__((aligned(32)));
    NDL_ROWS(SPILL)
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < nr; j++)
            c[r * ldc + j] = first ? tile[r * NR + j] : c[r * ldc + j] + tile[r * NR + j];
}

#else /* not x86: never selected; keep the symbols so the driver links */

void ndl_ukernel_avx2_f32(int64_t kc, const void *a_, const void *b_, void *c_, int64_t ldc,
                          int mr, int nr, int first)
{
    ndl_ukernel_generic_f32(kc, a_, b_, c_, ldc, mr, nr, first);
}

void ndl_ukernel_avx2_f64(int64_t kc, const void *a_, const void *b_, void *c_, int64_t ldc,
                          int mr, int nr, int first)
{
    ndl_ukernel_generic_f64(kc, a_, b_, c_, ldc, mr, nr, first);
}

#endif
