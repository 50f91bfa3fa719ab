/* avx512_emu.h: the AVX-512F types and intrinsics that the AVX-512 matmul
 * kernels use (cpu_matmul_avx512.c, the body in cpu_matmul_simd_impl.h;
 * cpu_matmul_bt_avx512.c),
 * written with AVX2+FMA halves, for the NDL_AVX512_EMU test build
 * (`NEEDLE_AVX512_EMU=1 python setup.py build_ext --inplace`, `make
 * avx512-emu`). Included by those two files only, after <immintrin.h>,
 * and only in that build; callers need target("avx2,fma").
 *
 * Note [AVX-512 without AVX-512]
 *   The machines we develop on have no AVX-512 (Zen 3) and users' often
 *   have (Zen 4, Intel servers), where the 14-row AVX-512 kernels are the
 *   ones chosen. Under NDL_AVX512_EMU the same kernel source is compiled
 *   for AVX2+FMA against this header instead of GCC's AVX-512 intrinsics,
 *   and NEEDLE_MATMUL_KERNEL=avx512 selects it on an AVX2 CPU (cpu_matmul.c,
 *   kernel_forcible), so the matmul tests run through it: the CPU analogue
 *   of the CUDA emulator (Note [The CUDA emulator]).
 *   What it proves: the AVX-512 configuration end to end: the 14 x 32 and
 *   14 x 16 tiles' indexing, the half (7) and mid (10) row loops of Note
 *   [Half tiles], the masks of the partial tiles (bit j for lane j, zeroing
 *   loads, writing stores) and their tails (nr - 16 lanes of the second
 *   vector, none for nr <= 16), the 256-bit loops of tiles of at most 8
 *   (float32) or 4 (float64) columns, whose FMAs are counted apart (Note
 *   [Narrow tiles in half registers]), the packed-A kernel against the in-place
 *   one, the block sizes derived for the AVX-512 tiles (KC 504 on a 32 KiB
 *   L1d, MC and NC from it), the skinny loops at AVX-512's 512-byte chains
 *   (cpu_matmul_small.c: C code vectorised by gcc, for AVX2 here, each
 *   lane one chain of __builtin_fma, vfmadd in the object code; its dot
 *   loops are then the AVX2 ones' very code, which gcc folds into them)
 *   and the driver's work split with MR = 14; and the bits: every emulated
 *   intrinsic has Intel's documented per-lane result (Intel Intrinsics
 *   Guide, SDM vol. 2: FMA rounded once, add rounded once, under the same
 *   MXCSR, so FTZ/DAZ as on the real unit), and the kernels use no
 *   horizontal reduction (the skinny dot loops write theirs in C, which
 *   fixes the order whatever the ISA), so a product has the bits a real
 *   AVX-512 machine gives it. Masked loads read, and masked stores write,
 *   the selected lanes only, one element at a time, so ASan checks each
 *   lane the kernel really touches and a mask one lane too wide is an
 *   overrun it reports; never a full load and a blend.
 *   What it does not prove: speed (the emulated registers do not fit 16
 *   ymm and spill), what GCC makes of the real intrinsics (register
 *   allocation of 32 zmm, the EVEX encodings: Note [Packed A kernel] was
 *   checked with objdump), nor the choice of Note [Timing the kernels]: the
 *   emulated kernel is never timed, only forced, and without
 *   NEEDLE_MATMUL_KERNEL the CPU's own kernel is chosen as in the normal
 *   build. The normal build does not define NDL_AVX512_EMU and compiles
 *   none of this (its object code is unchanged).
 *   An honest signal that the emulated code ran: each emulated 512-bit FMA
 *   counts in a per-thread counter, and cpu_matmul_avx512.c's entry points
 *   add it, with the call's tile rows, to ndl_avx512_emu_counts (read by
 *   tests/test_matmul_kernels.py through ctypes): a 14-row product
 *   shows one 14-row call and exactly 28 k FMAs, which no AVX2 path makes.
 */
#ifndef NDL_AVX512_EMU_H
#define NDL_AVX512_EMU_H

#include <immintrin.h>
#include <stdint.h>

#define NDL_EMU __attribute__((target("avx2,fma"), always_inline)) static inline

typedef struct {
    __m256 lo, hi; /* lanes 0-7, 8-15 */
} ndl_emu_m512;
typedef struct {
    __m256d lo, hi; /* lanes 0-3, 4-7 */
} ndl_emu_m512d;
typedef unsigned short ndl_emu_mmask16; /* bit j: lane j (as GCC's __mmask16) */
typedef unsigned char ndl_emu_mmask8;

/* emulated 512-bit FMAs done by this thread (Note [AVX-512 without AVX-512]) */
static __thread int64_t ndl_emu_fmas;

/* set1: every lane x */
NDL_EMU ndl_emu_m512 ndl_emu_set1_ps(float x)
{
    return (ndl_emu_m512){_mm256_set1_ps(x), _mm256_set1_ps(x)};
}
NDL_EMU ndl_emu_m512d ndl_emu_set1_pd(double x)
{
    return (ndl_emu_m512d){_mm256_set1_pd(x), _mm256_set1_pd(x)};
}

/* setzero: every lane +0.0 */
NDL_EMU ndl_emu_m512 ndl_emu_setzero_ps(void)
{
    return (ndl_emu_m512){_mm256_setzero_ps(), _mm256_setzero_ps()};
}
NDL_EMU ndl_emu_m512d ndl_emu_setzero_pd(void)
{
    return (ndl_emu_m512d){_mm256_setzero_pd(), _mm256_setzero_pd()};
}

/* loadu / storeu: 64 bytes, any alignment */
NDL_EMU ndl_emu_m512 ndl_emu_loadu_ps(const void *p)
{
    const float *f = p;
    return (ndl_emu_m512){_mm256_loadu_ps(f), _mm256_loadu_ps(f + 8)};
}
NDL_EMU ndl_emu_m512d ndl_emu_loadu_pd(const void *p)
{
    const double *d = p;
    return (ndl_emu_m512d){_mm256_loadu_pd(d), _mm256_loadu_pd(d + 4)};
}
NDL_EMU void ndl_emu_storeu_ps(void *p, ndl_emu_m512 a)
{
    float *f = p;
    _mm256_storeu_ps(f, a.lo);
    _mm256_storeu_ps(f + 8, a.hi);
}
NDL_EMU void ndl_emu_storeu_pd(void *p, ndl_emu_m512d a)
{
    double *d = p;
    _mm256_storeu_pd(d, a.lo);
    _mm256_storeu_pd(d + 4, a.hi);
}

/* add: a + b per lane, rounded once */
NDL_EMU ndl_emu_m512 ndl_emu_add_ps(ndl_emu_m512 a, ndl_emu_m512 b)
{
    return (ndl_emu_m512){_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)};
}
NDL_EMU ndl_emu_m512d ndl_emu_add_pd(ndl_emu_m512d a, ndl_emu_m512d b)
{
    return (ndl_emu_m512d){_mm256_add_pd(a.lo, b.lo), _mm256_add_pd(a.hi, b.hi)};
}

/* fmadd: a * b + c per lane, rounded once (vfmadd231 on each half) */
NDL_EMU ndl_emu_m512 ndl_emu_fmadd_ps(ndl_emu_m512 a, ndl_emu_m512 b, ndl_emu_m512 c)
{
    ndl_emu_fmas++;
    return (ndl_emu_m512){_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}
NDL_EMU ndl_emu_m512d ndl_emu_fmadd_pd(ndl_emu_m512d a, ndl_emu_m512d b, ndl_emu_m512d c)
{
    ndl_emu_fmas++;
    return (ndl_emu_m512d){_mm256_fmadd_pd(a.lo, b.lo, c.lo), _mm256_fmadd_pd(a.hi, b.hi, c.hi)};
}

/* maskz_loadu(k, p): lane j = p[j] where bit j of k is set, else +0.0
 * (zeroing mask); memory of the other lanes is not read (AVX-512 suppresses
 * their faults): one element at a time, never a full load and a blend */
NDL_EMU ndl_emu_m512 ndl_emu_maskz_loadu_ps(ndl_emu_mmask16 k, const void *p)
{
    const float *f = p;
    float t[16];
    for (int j = 0; j < 16; j++)
        t[j] = (k >> j) & 1 ? f[j] : 0.0f;
    return ndl_emu_loadu_ps(t);
}
NDL_EMU ndl_emu_m512d ndl_emu_maskz_loadu_pd(ndl_emu_mmask8 k, const void *p)
{
    const double *d = p;
    double t[8];
    for (int j = 0; j < 8; j++)
        t[j] = (k >> j) & 1 ? d[j] : 0.0;
    return ndl_emu_loadu_pd(t);
}

/* mask_storeu(p, k, a): p[j] = lane j where bit j of k is set; the other
 * elements of memory are not written (nor read) */
NDL_EMU void ndl_emu_mask_storeu_ps(void *p, ndl_emu_mmask16 k, ndl_emu_m512 a)
{
    float *f = p, t[16];
    ndl_emu_storeu_ps(t, a);
    for (int j = 0; j < 16; j++)
        if ((k >> j) & 1)
            f[j] = t[j];
}
NDL_EMU void ndl_emu_mask_storeu_pd(void *p, ndl_emu_mmask8 k, ndl_emu_m512d a)
{
    double *d = p, t[8];
    ndl_emu_storeu_pd(t, a);
    for (int j = 0; j < 8; j++)
        if ((k >> j) & 1)
            d[j] = t[j];
}

/* The 256-bit half of Note [Narrow tiles in half registers]
 * (cpu_matmul_simd_impl.h): its vectors are AVX's own, and only its FMA is
 * wrapped, to be counted apart from the 512-bit ones. */
static __thread int64_t ndl_emu_half_fmas;
NDL_EMU __m256 ndl_emu_fmadd256_ps(__m256 a, __m256 b, __m256 c)
{
    ndl_emu_half_fmas++;
    return _mm256_fmadd_ps(a, b, c);
}
NDL_EMU __m256d ndl_emu_fmadd256_pd(__m256d a, __m256d b, __m256d c)
{
    ndl_emu_half_fmas++;
    return _mm256_fmadd_pd(a, b, c);
}
/* castps512_ps256: lanes 0-7 of a (no instruction on the real unit) */
NDL_EMU __m256 ndl_emu_castps512_ps256(ndl_emu_m512 a)
{
    return a.lo;
}
NDL_EMU __m256d ndl_emu_castpd512_pd256(ndl_emu_m512d a)
{
    return a.lo;
}
/* zextps256_ps512: lanes 0-7 = a, 8-15 +0.0 */
NDL_EMU ndl_emu_m512 ndl_emu_zextps256_ps512(__m256 a)
{
    return (ndl_emu_m512){a, _mm256_setzero_ps()};
}
NDL_EMU ndl_emu_m512d ndl_emu_zextpd256_pd512(__m256d a)
{
    return (ndl_emu_m512d){a, _mm256_setzero_pd()};
}

/* castps128_ps512: lanes 0-3 = a; Intel leaves 4-15 undefined, here +0.0 */
NDL_EMU ndl_emu_m512 ndl_emu_castps128_ps512(__m128 a)
{
    return (ndl_emu_m512){_mm256_insertf128_ps(_mm256_setzero_ps(), a, 0), _mm256_setzero_ps()};
}

/* The shuffles of the register transposes (cpu_matmul_bt_avx512.c), lane by
 * lane through memory: "lane" below is a 128-bit lane (4 floats, 2
 * doubles), i indexes elements. */
#define EMU_LANES_PS(a, x) float x[16]; ndl_emu_storeu_ps(x, a)
#define EMU_LANES_PD(a, x) double x[8]; ndl_emu_storeu_pd(x, a)

/* insertf32x4(a, b, imm): a with lane imm & 3 replaced by b */
NDL_EMU ndl_emu_m512 ndl_emu_insertf32x4(ndl_emu_m512 a, __m128 b, int imm)
{
    EMU_LANES_PS(a, r);
    _mm_storeu_ps(r + 4 * (imm & 3), b);
    return ndl_emu_loadu_ps(r);
}

/* unpacklo_ps / unpackhi_ps: in each lane, a0 b0 a1 b1 / a2 b2 a3 b3 */
NDL_EMU ndl_emu_m512 ndl_emu_unpack_ps(ndl_emu_m512 a, ndl_emu_m512 b, int hi)
{
    EMU_LANES_PS(a, x);
    EMU_LANES_PS(b, y);
    float r[16];
    for (int l = 0; l < 16; l += 4)
        for (int i = 0; i < 2; i++) {
            r[l + 2 * i] = x[l + 2 * hi + i];
            r[l + 2 * i + 1] = y[l + 2 * hi + i];
        }
    return ndl_emu_loadu_ps(r);
}
NDL_EMU ndl_emu_m512 ndl_emu_unpacklo_ps(ndl_emu_m512 a, ndl_emu_m512 b)
{
    return ndl_emu_unpack_ps(a, b, 0);
}
NDL_EMU ndl_emu_m512 ndl_emu_unpackhi_ps(ndl_emu_m512 a, ndl_emu_m512 b)
{
    return ndl_emu_unpack_ps(a, b, 1);
}

/* shuffle_ps(a, b, imm): in each lane, a[imm 1:0], a[imm 3:2], b[imm 5:4], b[imm 7:6] */
NDL_EMU ndl_emu_m512 ndl_emu_shuffle_ps(ndl_emu_m512 a, ndl_emu_m512 b, int imm)
{
    EMU_LANES_PS(a, x);
    EMU_LANES_PS(b, y);
    float r[16];
    for (int l = 0; l < 16; l += 4) {
        r[l] = x[l + (imm & 3)];
        r[l + 1] = x[l + (imm >> 2 & 3)];
        r[l + 2] = y[l + (imm >> 4 & 3)];
        r[l + 3] = y[l + (imm >> 6 & 3)];
    }
    return ndl_emu_loadu_ps(r);
}

/* unpacklo_pd / unpackhi_pd: in each lane, a0 b0 / a1 b1 */
NDL_EMU ndl_emu_m512d ndl_emu_unpack_pd(ndl_emu_m512d a, ndl_emu_m512d b, int hi)
{
    EMU_LANES_PD(a, x);
    EMU_LANES_PD(b, y);
    double r[8];
    for (int l = 0; l < 8; l += 2) {
        r[l] = x[l + hi];
        r[l + 1] = y[l + hi];
    }
    return ndl_emu_loadu_pd(r);
}
NDL_EMU ndl_emu_m512d ndl_emu_unpacklo_pd(ndl_emu_m512d a, ndl_emu_m512d b)
{
    return ndl_emu_unpack_pd(a, b, 0);
}
NDL_EMU ndl_emu_m512d ndl_emu_unpackhi_pd(ndl_emu_m512d a, ndl_emu_m512d b)
{
    return ndl_emu_unpack_pd(a, b, 1);
}

/* shuffle_f64x2(a, b, imm): lanes a[imm 1:0], a[imm 3:2], b[imm 5:4], b[imm 7:6] */
NDL_EMU ndl_emu_m512d ndl_emu_shuffle_f64x2(ndl_emu_m512d a, ndl_emu_m512d b, int imm)
{
    EMU_LANES_PD(a, x);
    EMU_LANES_PD(b, y);
    double r[8];
    for (int l = 0; l < 4; l++) {
        const double *src = l < 2 ? x : y;
        int from = imm >> (2 * l) & 3;
        r[2 * l] = src[2 * from];
        r[2 * l + 1] = src[2 * from + 1];
    }
    return ndl_emu_loadu_pd(r);
}

/* Intel's names, for the kernel source to compile unchanged. The list is
 * exactly what cpu_matmul_avx512.c and cpu_matmul_simd_impl.h use (grep
 * 'MM(\|_mm512_'); _mm_prefetch is SSE and stays GCC's. A new intrinsic in
 * the kernels is an undeclared function here: add it above, with Intel's
 * semantics. cpu_matmul_bt_avx512.c includes this header too, for its
 * register transposes. */
#define __m512 ndl_emu_m512
#define __m512d ndl_emu_m512d
#define __mmask16 ndl_emu_mmask16
#define __mmask8 ndl_emu_mmask8
#define _mm512_set1_ps ndl_emu_set1_ps
#define _mm512_set1_pd ndl_emu_set1_pd
#define _mm512_setzero_ps ndl_emu_setzero_ps
#define _mm512_setzero_pd ndl_emu_setzero_pd
#define _mm512_loadu_ps ndl_emu_loadu_ps
#define _mm512_loadu_pd ndl_emu_loadu_pd
#define _mm512_storeu_ps ndl_emu_storeu_ps
#define _mm512_storeu_pd ndl_emu_storeu_pd
#define _mm512_add_ps ndl_emu_add_ps
#define _mm512_add_pd ndl_emu_add_pd
#define _mm512_fmadd_ps ndl_emu_fmadd_ps
#define _mm512_fmadd_pd ndl_emu_fmadd_pd
#define _mm512_maskz_loadu_ps ndl_emu_maskz_loadu_ps
#define _mm512_maskz_loadu_pd ndl_emu_maskz_loadu_pd
#define _mm512_mask_storeu_ps ndl_emu_mask_storeu_ps
#define _mm512_mask_storeu_pd ndl_emu_mask_storeu_pd
#define _mm512_castps128_ps512 ndl_emu_castps128_ps512
#define _mm512_castps512_ps256 ndl_emu_castps512_ps256
#define _mm512_castpd512_pd256 ndl_emu_castpd512_pd256
#define _mm512_zextps256_ps512 ndl_emu_zextps256_ps512
#define _mm512_zextpd256_pd512 ndl_emu_zextpd256_pd512
#define _mm512_insertf32x4 ndl_emu_insertf32x4
#define _mm512_unpacklo_ps ndl_emu_unpacklo_ps
#define _mm512_unpackhi_ps ndl_emu_unpackhi_ps
#define _mm512_shuffle_ps ndl_emu_shuffle_ps
#define _mm512_unpacklo_pd ndl_emu_unpacklo_pd
#define _mm512_unpackhi_pd ndl_emu_unpackhi_pd
#define _mm512_shuffle_f64x2 ndl_emu_shuffle_f64x2

#endif /* NDL_AVX512_EMU_H */
