/* cpu_matmul_avx512.c: AVX-512F micro-kernels for ndl_cpu_matmul.
 *
 * float32: 14 x 32 tile (28 zmm accumulators, 2 for B, 1 broadcast of A).
 * float64: 14 x 16 tile, same register plan.
 * Both are the body in cpu_matmul_simd_impl.h (as for cpu_matmul_avx2.c),
 * instantiated here with 512-bit registers, 14 rows instead of 6 (32 zmm
 * registers instead of 16 ymm) and mask registers for partial tiles.
 * Contract and packed layout: Note [Packed panels] in cpu_matmul.h.
 *
 * Compiled with the same flags as every other file: the ISA comes from the
 * target attribute, and cpu_matmul.c only calls these after
 * __builtin_cpu_supports("avx512f").
 */
#include "cpu_matmul.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define UK_TARGET __attribute__((target("avx512f")))
#define UK_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13)
#define UK_HALF_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6)
#define UK_MID_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9)
#define UK_KU 1 /* k steps per unrolled group (Note [Packed A kernel]) */

#define UK_VEC_f32 __m512
#define UK_VEC_f64 __m512d
#define UK_OP_f32(op) _mm512_##op##_ps
#define UK_OP_f64(op) _mm512_##op##_pd
#define UK_BCAST_f32(p) _mm512_set1_ps(*(p))
#define UK_BCAST_f64(p) _mm512_set1_pd(*(p))

/* AVX-512 masks are bit masks: bit j set for the lanes j < n */
static inline __mmask16 uk_lanes_f32(int n)
{
    return n <= 0 ? 0 : n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1);
}
static inline __mmask8 uk_lanes_f64(int n)
{
    return (__mmask8)uk_lanes_f32(n); /* the low 8 of 16 lanes */
}
#define UK_MASKLOAD(p, m) MM(maskz_loadu)(m, p)
#define UK_MASKSTORE(p, m, v) MM(mask_storeu)(p, m, v)
#endif

#define UK_ISA avx512

#define T float
#define UK_DT f32
#define UK_MR NDL_AVX512_MR_F32
#define UK_NR NDL_AVX512_NR_F32
#include "cpu_matmul_simd_impl.h"

#define T double
#define UK_DT f64
#define UK_MR NDL_AVX512_MR_F64
#define UK_NR NDL_AVX512_NR_F64
#include "cpu_matmul_simd_impl.h"
