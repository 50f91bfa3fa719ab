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

/* row r of A (rows past mr read row 0, see cpu_matmul.h) */
#define APTR(r) const __typeof__(*a) *a##r = a + (r < mr ? r : 0) * ars;

/* X(r) for every row of the tile */
#define NDL_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)

/* ---- float32, 6 x 16 ---------------------------------------------------- */
#define MR NDL_AVX2_MR_F32
#define NR NDL_AVX2_NR_F32

#define DECL(r) __m256 c##r##_0 = _mm256_setzero_ps(), c##r##_1 = _mm256_setzero_ps();
#define STEP(r)                                                                     \
    {                                                                               \
        __m256 ar = _mm256_broadcast_ss(a##r + off);                                \
        c##r##_0 = _mm256_fmadd_ps(ar, b0, c##r##_0);                               \
        c##r##_1 = _mm256_fmadd_ps(ar, b1, c##r##_1);                               \
    }
#define STORE(r)                                                                    \
    if (first) {                                                                    \
        _mm256_storeu_ps(c + r * ldc, c##r##_0);                                    \
        _mm256_storeu_ps(c + r * ldc + 8, c##r##_1);                                \
    } else {                                                                        \
        _mm256_storeu_ps(c + r * ldc, _mm256_add_ps(_mm256_loadu_ps(c + r * ldc), c##r##_0)); \
        _mm256_storeu_ps(c + r * ldc + 8, _mm256_add_ps(_mm256_loadu_ps(c + r * ldc + 8), c##r##_1)); \
    }
#define STORE_PARTIAL(r)                                                            \
    if (r < mr) {                                                                   \
        __m256 v0 = c##r##_0, v1 = c##r##_1;                                        \
        if (!first) {                                                               \
            v0 = _mm256_add_ps(_mm256_maskload_ps(c + r * ldc, m0), v0);            \
            v1 = _mm256_add_ps(_mm256_maskload_ps(c + r * ldc + 8, m1), v1);        \
        }                                                                           \
        _mm256_maskstore_ps(c + r * ldc, m0, v0);                                   \
        _mm256_maskstore_ps(c + r * ldc + 8, m1, v1);                               \
    }

NDL_TARGET void ndl_ukernel_avx2_f32(int64_t kc, const void *a_, int64_t ars, int64_t acs, const void *b_,
                                     void *c_, int64_t ldc, int mr, int nr, int first)
{
    const float *a = a_, *b = b_;
    float *c = c_;
    NDL_ROWS(DECL)
    NDL_ROWS(APTR)
    int64_t off = 0; /* k * acs */
    for (int r = 0; r < mr; r++)
        _mm_prefetch((const char *)(c + r * ldc), _MM_HINT_T0);
    for (int64_t k = 0; k < kc; k++) {
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
        NDL_ROWS(STEP)
        off += acs;
        b += NR;
    }
    if (mr == MR && nr == NR) {
        NDL_ROWS(STORE)
        return;
    }
    /* partial tile: rows r < mr only, and masked loads and stores (which never
     * fault on the masked-out lanes) for columns j < nr */
    const __m256i iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr), iota);
    const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(nr - 8), iota);
    NDL_ROWS(STORE_PARTIAL)
}

#undef MR
#undef NR
#undef DECL
#undef STEP
#undef STORE
#undef STORE_PARTIAL

/* ---- float64, 6 x 8 ----------------------------------------------------- */
#define MR NDL_AVX2_MR_F64
#define NR NDL_AVX2_NR_F64

#define DECL(r) __m256d c##r##_0 = _mm256_setzero_pd(), c##r##_1 = _mm256_setzero_pd();
#define STEP(r)                                                                     \
    {                                                                               \
        __m256d ar = _mm256_broadcast_sd(a##r + off);                               \
        c##r##_0 = _mm256_fmadd_pd(ar, b0, c##r##_0);                               \
        c##r##_1 = _mm256_fmadd_pd(ar, b1, c##r##_1);                               \
    }
#define STORE(r)                                                                    \
    if (first) {                                                                    \
        _mm256_storeu_pd(c + r * ldc, c##r##_0);                                    \
        _mm256_storeu_pd(c + r * ldc + 4, c##r##_1);                                \
    } else {                                                                        \
        _mm256_storeu_pd(c + r * ldc, _mm256_add_pd(_mm256_loadu_pd(c + r * ldc), c##r##_0)); \
        _mm256_storeu_pd(c + r * ldc + 4, _mm256_add_pd(_mm256_loadu_pd(c + r * ldc + 4), c##r##_1)); \
    }
#define STORE_PARTIAL(r)                                                            \
    if (r < mr) {                                                                   \
        __m256d v0 = c##r##_0, v1 = c##r##_1;                                       \
        if (!first) {                                                               \
            v0 = _mm256_add_pd(_mm256_maskload_pd(c + r * ldc, m0), v0);            \
            v1 = _mm256_add_pd(_mm256_maskload_pd(c + r * ldc + 4, m1), v1);        \
        }                                                                           \
        _mm256_maskstore_pd(c + r * ldc, m0, v0);                                   \
        _mm256_maskstore_pd(c + r * ldc + 4, m1, v1);                               \
    }

NDL_TARGET void ndl_ukernel_avx2_f64(int64_t kc, const void *a_, int64_t ars, int64_t acs, const void *b_,
                                     void *c_, int64_t ldc, int mr, int nr, int first)
{
    const double *a = a_, *b = b_;
    double *c = c_;
    NDL_ROWS(DECL)
    NDL_ROWS(APTR)
    int64_t off = 0; /* k * acs */
    for (int r = 0; r < mr; r++)
        _mm_prefetch((const char *)(c + r * ldc), _MM_HINT_T0);
    for (int64_t k = 0; k < kc; k++) {
        __m256d b0 = _mm256_loadu_pd(b), b1 = _mm256_loadu_pd(b + 4);
        NDL_ROWS(STEP)
        off += acs;
        b += NR;
    }
    if (mr == MR && nr == NR) {
        NDL_ROWS(STORE)
        return;
    }
    const __m256i iota = _mm256_setr_epi64x(0, 1, 2, 3);
    const __m256i m0 = _mm256_cmpgt_epi64(_mm256_set1_epi64x(nr), iota);
    const __m256i m1 = _mm256_cmpgt_epi64(_mm256_set1_epi64x(nr - 4), iota);
    NDL_ROWS(STORE_PARTIAL)
}

#else /* not x86: never selected; keep the symbols so the driver links */

void ndl_ukernel_avx2_f32(int64_t kc, const void *a_, int64_t ars, int64_t acs, const void *b_,
                          void *c_, int64_t ldc, int mr, int nr, int first)
{
    ndl_ukernel_generic_f32(kc, a_, ars, acs, b_, c_, ldc, mr, nr, first);
}

void ndl_ukernel_avx2_f64(int64_t kc, const void *a_, int64_t ars, int64_t acs, const void *b_,
                          void *c_, int64_t ldc, int mr, int nr, int first)
{
    ndl_ukernel_generic_f64(kc, a_, ars, acs, b_, c_, ldc, mr, nr, first);
}

#endif
