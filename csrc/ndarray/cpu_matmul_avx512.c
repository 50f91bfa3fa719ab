/* cpu_matmul_avx512.c: AVX-512F micro-kernels for ndl_cpu_matmul.
 *
 * float32: 14 x 32 tile (28 zmm accumulators, 2 for B, 1 broadcast of A).
 * float64: 14 x 16 tile, same register plan.
 * Contract and packed layout: Note [Packed panels] in cpu_matmul.h.
 *
 * This is cpu_matmul_avx2.c with 512-bit registers, 14 rows instead of 6
 * (32 zmm registers instead of 16 ymm) and mask registers for partial
 * tiles; keep the two in step. Compiled with the same flags as every other
 * file: the ISA comes from the target attribute, and cpu_matmul.c only
 * calls these after __builtin_cpu_supports("avx512f").
 *
 * NOTE: the accumulators are named variables (c<row>_<vec>), not an array:
 * gcc 12 keeps an array of vectors in memory and stores it back on every k
 * step, which halves the kernel's speed.
 */
#include "cpu_matmul.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define NDL_TARGET __attribute__((target("avx512f")))

/* mask of the first n lanes (none for n <= 0) */
static inline __mmask16 lanes16(int n)
{
    return n <= 0 ? 0 : n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1);
}

/* row r of A (rows past mr read row 0, see cpu_matmul.h) */
#define APTR(r) const __typeof__(*a) *a##r = a + (r < mr ? r : 0) * ars;

/* X(r) for every row of the tile */
#define NDL_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13)

/* ---- float32, 14 x 32 --------------------------------------------------- */
#define MR NDL_AVX512_MR_F32
#define NR NDL_AVX512_NR_F32

#define DECL(r) __m512 c##r##_0 = _mm512_setzero_ps(), c##r##_1 = _mm512_setzero_ps();
#define STEP(r)                                                                     \
    {                                                                               \
        __m512 ar = _mm512_set1_ps(a##r[off]);                                      \
        c##r##_0 = _mm512_fmadd_ps(ar, b0, c##r##_0);                               \
        c##r##_1 = _mm512_fmadd_ps(ar, b1, c##r##_1);                               \
    }
#define STORE(r)                                                                    \
    if (first) {                                                                    \
        _mm512_storeu_ps(c + r * ldc, c##r##_0);                                    \
        _mm512_storeu_ps(c + r * ldc + 16, c##r##_1);                               \
    } else {                                                                        \
        _mm512_storeu_ps(c + r * ldc, _mm512_add_ps(_mm512_loadu_ps(c + r * ldc), c##r##_0)); \
        _mm512_storeu_ps(c + r * ldc + 16, _mm512_add_ps(_mm512_loadu_ps(c + r * ldc + 16), c##r##_1)); \
    }
#define STORE_PARTIAL(r)                                                            \
    if (r < mr) {                                                                   \
        __m512 v0 = c##r##_0, v1 = c##r##_1;                                        \
        if (!first) {                                                               \
            v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, c + r * ldc), v0);         \
            v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, c + r * ldc + 16), v1);    \
        }                                                                           \
        _mm512_mask_storeu_ps(c + r * ldc, m0, v0);                                 \
        _mm512_mask_storeu_ps(c + r * ldc + 16, m1, v1);                            \
    }

NDL_TARGET void ndl_ukernel_avx512_f32(int64_t kc, const void *a_, int64_t ars, int64_t acs, const void *b_,
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
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
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
    const __mmask16 m0 = lanes16(nr), m1 = lanes16(nr - 16);
    NDL_ROWS(STORE_PARTIAL)
}

#undef MR
#undef NR
#undef DECL
#undef STEP
#undef STORE
#undef STORE_PARTIAL

/* ---- float64, 14 x 16 --------------------------------------------------- */
#define MR NDL_AVX512_MR_F64
#define NR NDL_AVX512_NR_F64

#define DECL(r) __m512d c##r##_0 = _mm512_setzero_pd(), c##r##_1 = _mm512_setzero_pd();
#define STEP(r)                                                                     \
    {                                                                               \
        __m512d ar = _mm512_set1_pd(a##r[off]);                                     \
        c##r##_0 = _mm512_fmadd_pd(ar, b0, c##r##_0);                               \
        c##r##_1 = _mm512_fmadd_pd(ar, b1, c##r##_1);                               \
    }
#define STORE(r)                                                                    \
    if (first) {                                                                    \
        _mm512_storeu_pd(c + r * ldc, c##r##_0);                                    \
        _mm512_storeu_pd(c + r * ldc + 8, c##r##_1);                                \
    } else {                                                                        \
        _mm512_storeu_pd(c + r * ldc, _mm512_add_pd(_mm512_loadu_pd(c + r * ldc), c##r##_0)); \
        _mm512_storeu_pd(c + r * ldc + 8, _mm512_add_pd(_mm512_loadu_pd(c + r * ldc + 8), c##r##_1)); \
    }
#define STORE_PARTIAL(r)                                                            \
    if (r < mr) {                                                                   \
        __m512d v0 = c##r##_0, v1 = c##r##_1;                                       \
        if (!first) {                                                               \
            v0 = _mm512_add_pd(_mm512_maskz_loadu_pd(m0, c + r * ldc), v0);         \
            v1 = _mm512_add_pd(_mm512_maskz_loadu_pd(m1, c + r * ldc + 8), v1);     \
        }                                                                           \
        _mm512_mask_storeu_pd(c + r * ldc, m0, v0);                                 \
        _mm512_mask_storeu_pd(c + r * ldc + 8, m1, v1);                             \
    }

NDL_TARGET void ndl_ukernel_avx512_f64(int64_t kc, const void *a_, int64_t ars, int64_t acs, const void *b_,
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
        __m512d b0 = _mm512_loadu_pd(b), b1 = _mm512_loadu_pd(b + 8);
        NDL_ROWS(STEP)
        off += acs;
        b += NR;
    }
    if (mr == MR && nr == NR) {
        NDL_ROWS(STORE)
        return;
    }
    const __mmask8 m0 = (__mmask8)lanes16(nr), m1 = (__mmask8)lanes16(nr - 8);
    NDL_ROWS(STORE_PARTIAL)
}

#else /* not x86: never selected; keep the symbols so the driver links */

void ndl_ukernel_avx512_f32(int64_t kc, const void *a_, int64_t ars, int64_t acs, const void *b_,
                            void *c_, int64_t ldc, int mr, int nr, int first)
{
    ndl_ukernel_generic_f32(kc, a_, ars, acs, b_, c_, ldc, mr, nr, first);
}

void ndl_ukernel_avx512_f64(int64_t kc, const void *a_, int64_t ars, int64_t acs, const void *b_,
                            void *c_, int64_t ldc, int mr, int nr, int first)
{
    ndl_ukernel_generic_f64(kc, a_, ars, acs, b_, c_, ldc, mr, nr, first);
}

#endif
