/* cpu_matmul_avx2.c: AVX2+FMA micro-kernels for ndl_cpu_matmul.
 *
 * float32: 6 x 16 tile (12 ymm accumulators, 2 for B, 1 broadcast of A).
 * float64: 6 x 8 tile, same register plan.
 * Both are the body in cpu_matmul_simd_impl.h, instantiated here with the
 * 256-bit intrinsics; cpu_matmul_avx512.c instantiates it for AVX-512.
 * Contract and packed layout: Note [Packed panels] in cpu_matmul.h.
 *
 * Compiled with the same flags as every other file: the ISA comes from the
 * target attribute, and cpu_matmul.c only calls these after
 * __builtin_cpu_supports("avx2") && ("fma").
 */
#include "cpu_matmul.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define UK_TARGET __attribute__((target("avx2,fma")))
#define UK_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)
#define UK_HALF_ROWS(X) X(0) X(1) X(2)
#define UK_MID_ROWS(X) X(0) X(1) X(2) X(3)
#define UK_MID_ROWS_H NDL_AVX2_MID_ROWS
#define UK_KU 4 /* k steps per unrolled group (Note [Packed A kernel]) */
#define UK_C_LEAD 0 /* C into L1 at the start (Note [Fetching C late]) */

#define UK_VEC_f32 __m256
#define UK_VEC_f64 __m256d
#define UK_OP_f32(op) _mm256_##op##_ps
#define UK_OP_f64(op) _mm256_##op##_pd
/* NOTE: broadcast from memory, not _mm256_set1_p*(*p): with set1, gcc 12
 * compiles the k loop differently (twice as much code) */
#define UK_BCAST_f32 _mm256_broadcast_ss
#define UK_BCAST_f64 _mm256_broadcast_sd

/* AVX2 masks are vectors: all ones in the lanes j < n */
static inline UK_TARGET __m256i uk_lanes_f32(int n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline UK_TARGET __m256i uk_lanes_f64(int n)
{
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
}
#define UK_MASKLOAD(p, m) MM(maskload)(p, m)
#define UK_MASKSTORE(p, m, v) MM(maskstore)(p, m, v)
#endif

#define UK_ISA avx2

#define T float
#define UK_DT f32
#define UK_MR NDL_AVX2_MR_F32
#define UK_NR NDL_AVX2_NR_F32
#include "cpu_matmul_simd_impl.h"

#define T double
#define UK_DT f64
#define UK_MR NDL_AVX2_MR_F64
#define UK_NR NDL_AVX2_NR_F64
#include "cpu_matmul_simd_impl.h"
