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
 * __builtin_cpu_supports("avx512f"). The NDL_AVX512_EMU test build compiles
 * them for AVX2+FMA against avx512_emu.h instead (Note [AVX-512 without
 * AVX-512]), behind counting entry points (end of this file).
 */
#include "cpu_matmul.h"

#if defined(NDL_AVX512_EMU) && !(defined(__x86_64__) || defined(__i386__))
#error "NDL_AVX512_EMU emulates AVX-512 with AVX2: x86 only"
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#ifdef NDL_AVX512_EMU /* Note [AVX-512 without AVX-512] in avx512_emu.h */
#include "avx512_emu.h"
#define UK_TARGET __attribute__((target("avx2,fma")))
#else
/* fma: the 256-bit FMAs of Note [Narrow tiles in half registers] (every
 * AVX-512F CPU has FMA; ndl_cpu_info's avx512f requires both) */
#define UK_TARGET __attribute__((target("avx512f,fma")))
#endif
#define UK_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13)
#define UK_HALF_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6)
#define UK_QUARTER_ROWS(X) X(0) X(1) X(2) X(3)
#define UK_MID_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9)
#define UK_MID_ROWS_H NDL_AVX512_MID_ROWS
#define UK_LOW_MID_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
#define UK_LOW_MID_ROWS_H NDL_AVX512_LOW_MID_ROWS
#define UK_QUARTER_ROWS_H NDL_AVX512_QUARTER_ROWS
#define UK_KU 1 /* k steps per unrolled group (Note [Packed A kernel]) */
#define UK_C_LEAD 48 /* Note [Fetching C late] */

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

/* Note [Narrow tiles in half registers] (cpu_matmul_simd_impl.h): tiles of
 * at most 8 (float32) or 4 (float64) columns in ymm registers */
#define UK_HALF_VEC 1
#define UK_HVEC_f32 __m256
#define UK_HVEC_f64 __m256d
#define UK_HSETZERO_f32 _mm256_setzero_ps
#define UK_HSETZERO_f64 _mm256_setzero_pd
#define UK_HBCAST_f32 _mm256_broadcast_ss
#define UK_HBCAST_f64 _mm256_broadcast_sd
#define UK_HLOW_f32 _mm512_castps512_ps256 /* the low half of a zmm */
#define UK_HLOW_f64 _mm512_castpd512_pd256
#define UK_HWIDEN_f32 _mm512_zextps256_ps512 /* a ymm as a zmm, the rest zeros */
#define UK_HWIDEN_f64 _mm512_zextpd256_pd512
#ifdef NDL_AVX512_EMU /* counted apart from the 512-bit FMAs */
#define UK_HFMADD_f32 ndl_emu_fmadd256_ps
#define UK_HFMADD_f64 ndl_emu_fmadd256_pd
#else
#define UK_HFMADD_f32 _mm256_fmadd_ps
#define UK_HFMADD_f64 _mm256_fmadd_pd
#endif

/* Note [Narrow tiles down the rows] (cpu_matmul_simd_impl.h): rows r < mr
 * (<= VW) of C's columns j < nr, lane r of t[j] holding C[r][j]. Q columns
 * at a time (the 128 bits of a lane of 4: 4 float32, 2 float64) are
 * transposed in registers, after which lane L of v[i] is row Q L + i's Q
 * columns; each row goes out by one masked store of those lanes, at an
 * address Q L elements before the row's (the masked-off lanes are never
 * touched; r ldc >= Q L, so the address is within C): TSTORE_ROWS, with
 * v[i] and the group's first column g and width w. */
#define TSTORE_ROWS(T, V, MASK, OP, Q)                                                             \
    for (int r = 0; r < mr; r++) {                                                                 \
        const int l = r / (Q) * (Q);                                                               \
        T *p = c + r * ldc + g - l;                                                                \
        const MASK m = (MASK)(uk_lanes_f32(w) << l);                                               \
        V x = v[r % (Q)];                                                                          \
        if (!first)                                                                                \
            x = OP(add)(OP(maskz_loadu)(m, p), x);                                                 \
        OP(mask_storeu)(p, m, x);                                                                  \
    }
static inline UK_TARGET void uk_tstore_f32(const __m512 *t, int nr, int mr, float *c, int64_t ldc,
                                           int first)
{
    const __m512 z = _mm512_setzero_ps();
    for (int g = 0; g < nr; g += 4) {
        const int w = nr - g < 4 ? nr - g : 4;
        const __m512 t0 = t[g], t1 = w > 1 ? t[g + 1] : z, t2 = w > 2 ? t[g + 2] : z,
                     t3 = w > 3 ? t[g + 3] : z;
        const __m512 u0 = _mm512_unpacklo_ps(t0, t1), u1 = _mm512_unpackhi_ps(t0, t1);
        const __m512 u2 = _mm512_unpacklo_ps(t2, t3), u3 = _mm512_unpackhi_ps(t2, t3);
        const __m512 v[4] = {_mm512_shuffle_ps(u0, u2, 0x44), _mm512_shuffle_ps(u0, u2, 0xEE),
                             _mm512_shuffle_ps(u1, u3, 0x44), _mm512_shuffle_ps(u1, u3, 0xEE)};
        TSTORE_ROWS(float, __m512, __mmask16, UK_OP_f32, 4)
    }
}
static inline UK_TARGET void uk_tstore_f64(const __m512d *t, int nr, int mr, double *c,
                                           int64_t ldc, int first)
{
    const __m512d z = _mm512_setzero_pd();
    for (int g = 0; g < nr; g += 2) {
        const int w = nr - g < 2 ? nr - g : 2;
        const __m512d t0 = t[g], t1 = w > 1 ? t[g + 1] : z;
        const __m512d v[2] = {_mm512_unpacklo_pd(t0, t1), _mm512_unpackhi_pd(t0, t1)};
        TSTORE_ROWS(double, __m512d, __mmask8, UK_OP_f64, 2)
    }
}
#undef TSTORE_ROWS
#define UK_TRANS 1
#define UK_TSTORE_f32 uk_tstore_f32
#define UK_TSTORE_f64 uk_tstore_f64
#endif

#define UK_PACK_A 1 /* Note [Packing A in the kernel] */

#ifdef NDL_AVX512_EMU /* the kernels under other names, counted below */
#define UK_ISA avx512_emu
#else
#define UK_ISA avx512
#endif

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

#ifdef NDL_AVX512_EMU
/* Note [AVX-512 without AVX-512] (avx512_emu.h): the entry points the driver
 * calls, counting calls and emulated FMAs; [0] float32, [1] float64.
 * Relaxed atomic adds, read by the tests through ctypes. */
typedef struct {
    int64_t tiles[NDL_AVX512_MR_F32 + 1]; /* micro-kernel calls by mr, 1..14 */
    int64_t packed;                       /* of which the packed-A kernels' */
    int64_t fmas;                         /* emulated 512-bit FMAs in them */
    int64_t half_fmas;                    /* 256-bit ones (Note [Narrow tiles in half registers]) */
    int64_t axpy, dot;                    /* skinny products (cpu_matmul_small.c) */
    int64_t filled;                       /* of which the filling kernel's */
    int64_t row, row_fmas;                /* the one-row kernel's calls and FMAs */
    int64_t fused;                        /* tiles packing A on the way (in tiles[] too) */
} ndl_avx512_emu_count;
ndl_avx512_emu_count ndl_avx512_emu_counts[2];

#define EMU_ADD(x, n) __atomic_fetch_add(&(x), (int64_t)(n), __ATOMIC_RELAXED)
#define EMU_TILE(NAME, BODY, D, PACKED)                                                        \
    void NAME(int64_t kc, const void *a, int64_t ars, int64_t acs, const void *b, void *c,      \
              int64_t ldc, int mr, int nr, int first)                                          \
    {                                                                                          \
        int64_t before = ndl_emu_fmas, half_before = ndl_emu_half_fmas;                        \
        BODY(kc, a, ars, acs, b, c, ldc, mr, nr, first);                                       \
        EMU_ADD(ndl_avx512_emu_counts[D].tiles[mr], 1);                                        \
        EMU_ADD(ndl_avx512_emu_counts[D].packed, PACKED);                                      \
        EMU_ADD(ndl_avx512_emu_counts[D].fmas, ndl_emu_fmas - before);                         \
        EMU_ADD(ndl_avx512_emu_counts[D].half_fmas, ndl_emu_half_fmas - half_before);          \
    }
EMU_TILE(ndl_ukernel_avx512_f32, ndl_ukernel_avx512_emu_f32, 0, 0)
EMU_TILE(ndl_ukernel_avx512_f64, ndl_ukernel_avx512_emu_f64, 1, 0)
EMU_TILE(ndl_ukernel_avx512_f32_packed, ndl_ukernel_avx512_emu_f32_packed, 0, 1)
EMU_TILE(ndl_ukernel_avx512_f64_packed, ndl_ukernel_avx512_emu_f64_packed, 1, 1)
/* Note [Packing B in the kernel]: counted as a packed-A tile, and as filled
 * (whether it stores the panel or, bp = NULL, only reads it) */
#define EMU_FILL(NAME, BODY, D)                                                                \
    void NAME(int64_t kc, const void *a, int64_t ak, const void *b, int64_t rsb, void *bp,     \
              void *c, int64_t ldc, int mr, int nr, int first)                                 \
    {                                                                                          \
        int64_t before = ndl_emu_fmas, half_before = ndl_emu_half_fmas;                        \
        BODY(kc, a, ak, b, rsb, bp, c, ldc, mr, nr, first);                                    \
        EMU_ADD(ndl_avx512_emu_counts[D].tiles[mr], 1);                                        \
        EMU_ADD(ndl_avx512_emu_counts[D].packed, 1);                                           \
        EMU_ADD(ndl_avx512_emu_counts[D].filled, 1);                                           \
        EMU_ADD(ndl_avx512_emu_counts[D].fmas, ndl_emu_fmas - before);                         \
        EMU_ADD(ndl_avx512_emu_counts[D].half_fmas, ndl_emu_half_fmas - half_before);          \
    }
EMU_FILL(ndl_ukernel_avx512_f32_fill, ndl_ukernel_avx512_emu_f32_fill, 0)
EMU_FILL(ndl_ukernel_avx512_f64_fill, ndl_ukernel_avx512_emu_f64_fill, 1)
/* Note [Packing A in the kernel]: a tile reading A in place, not packed */
#define EMU_PACK_A(NAME, BODY, D)                                                              \
    void NAME(int64_t kc, const void *a, int64_t ars, const void *b, int64_t rsb, void *ap,    \
              void *c, int64_t ldc, int mr, int first)                                         \
    {                                                                                          \
        int64_t before = ndl_emu_fmas, half_before = ndl_emu_half_fmas;                        \
        BODY(kc, a, ars, b, rsb, ap, c, ldc, mr, first);                                       \
        EMU_ADD(ndl_avx512_emu_counts[D].tiles[mr], 1);                                        \
        EMU_ADD(ndl_avx512_emu_counts[D].fused, 1);                                            \
        EMU_ADD(ndl_avx512_emu_counts[D].fmas, ndl_emu_fmas - before);                         \
        EMU_ADD(ndl_avx512_emu_counts[D].half_fmas, ndl_emu_half_fmas - half_before);          \
    }
EMU_PACK_A(ndl_ukernel_avx512_f32_pack_a, ndl_ukernel_avx512_emu_f32_pack_a, 0)
EMU_PACK_A(ndl_ukernel_avx512_f64_pack_a, ndl_ukernel_avx512_emu_f64_pack_a, 1)
/* Note [One row in registers] (cpu_matmul_row_impl.h): counted apart */
#define EMU_ROW(NAME, BODY, D)                                                                 \
    void NAME(int64_t kc, const void *a, int64_t acs, const void *b, int64_t rsb, void *c,      \
              int nr, int first)                                                               \
    {                                                                                          \
        int64_t before = ndl_emu_fmas;                                                         \
        BODY(kc, a, acs, b, rsb, c, nr, first);                                                \
        EMU_ADD(ndl_avx512_emu_counts[D].row, 1);                                              \
        EMU_ADD(ndl_avx512_emu_counts[D].row_fmas, ndl_emu_fmas - before);                     \
    }
EMU_ROW(ndl_ukernel_avx512_f32_row, ndl_ukernel_avx512_emu_f32_row, 0)
EMU_ROW(ndl_ukernel_avx512_f64_row, ndl_ukernel_avx512_emu_f64_row, 1)

/* the skinny loops, instantiated as avx512_emu_* in cpu_matmul_small.c */
NDL_DECLARE_SMALL(avx512_emu_f32)
NDL_DECLARE_SMALL(avx512_emu_f64)
#define EMU_SMALL(SFX, D)                                                                      \
    void ndl_small_axpy_avx512_##SFX(int64_t m, int64_t n, const void *a, int64_t rsa,          \
                                     int64_t csa, const void *b, int64_t rsb, void *c,         \
                                     int64_t ldc, int64_t j0, int64_t j1, int64_t jl2,         \
                                     int64_t kc, void *scratch)                                \
    {                                                                                          \
        EMU_ADD(ndl_avx512_emu_counts[D].axpy, 1);                                             \
        ndl_small_axpy_avx512_emu_##SFX(m, n, a, rsa, csa, b, rsb, c, ldc, j0, j1, jl2, kc,    \
                                        scratch);                                              \
    }                                                                                          \
    void ndl_small_dot_avx512_##SFX(int64_t m, int64_t n, const void *a, int64_t rsa,           \
                                    const void *b, int64_t csb, void *c, int64_t ldc,          \
                                    int64_t j0, int64_t j1)                                    \
    {                                                                                          \
        EMU_ADD(ndl_avx512_emu_counts[D].dot, 1);                                              \
        ndl_small_dot_avx512_emu_##SFX(m, n, a, rsa, b, csb, c, ldc, j0, j1);                  \
    }
EMU_SMALL(f32, 0)
EMU_SMALL(f64, 1)
#endif
