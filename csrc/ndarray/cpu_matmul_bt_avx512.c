/* cpu_matmul_bt_avx512.c: skinny products C = A @ W.T (B's columns
 * contiguous: B[k][j] = W[j][k] = b[j*csb + k]) with few rows, W
 * transposed in AVX-512 registers and never packed: the AVX-512
 * configuration's counterpart of cpu_matmul_bt_avx2.c.
 *
 * Note [Transposing W in zmm registers]
 *   The AVX2 register transposes (Note [Transposing W in registers]) run
 *   8 x 8 float32 tiles of W through 24 shuffles and serve up to 4 rows of
 *   A; on an AVX-512 CPU they were the configuration's too, and from m = 5
 *   the driver computed W @ x.T (Note [x @ W.T by W @ x.T] in cpu_matmul.c),
 *   one broadcast of W a row and FMA, in a vector of which x.T's m columns
 *   fill m lanes. Here a tile is a cache line of each of 16 rows of W
 *   (float32; 8 rows of 8 doubles), turned into vectors t[u] = W[j .. j +
 *   VW - 1][k + u], each fed to the multiply-adds of up to
 *   NDL_AVX512_BT_M = 8 rows of A (one zmm accumulator a row).
 *   float32: the loads gather the tile's 128-bit lanes: lane L of q[i] is
 *   4 elements of row 4L + i (a 16-byte load and three vinsertf32x4 from
 *   memory, which issue on either vector port), and a 4 x 4 transpose
 *   inside the lanes (8 shuffles, port 5 only) finishes each quarter of
 *   the tile: 48 inserts and 32 shuffles a tile. The four-stage register
 *   transpose (64 shuffles on port 5, and 16 temporaries beside the 16
 *   rows, which spill) ran at 70 GFLOP/s where this runs 109 (a standalone
 *   loop, m = 8, W in L1). float64: the 8 x 8 register transpose (8
 *   unpacks, 16 vshuff64x2; 24 registers with the accumulators).
 *   The last columns (fewer than VW rows of W) repeat their last row in
 *   the lanes past W's end and store only their own lanes (masked); the
 *   last k of a KC block (fewer than VW) go through a zero-padded copy of
 *   the rows' ends. Both keep the kernel in vectors: the AVX2 kernel's
 *   column-by-column and element-by-element ends, taken for 8 x 200 @ W.T
 *   (300 x 200), ran it at 50 GFLOP/s against 57 packed.
 *   The limits, and the figures: Xeon (Emerald Rapids), 1 thread, medians
 *   of 0.3 s of calls, GFLOP/s, the AVX2 transposes or W @ x.T before ->
 *   here (PyTorch 2.13), float32, K = N = 1024 (W in L3): m = 2 21-24 ->
 *   24-28 (29-30), m = 3 30-34 -> 36-43 (45), m = 4 34-36 -> 49 (30-32), m
 *   = 5 33-35 -> 57-58 (38-40), m = 6 37-39 -> 58-69 (45-48), m = 8 52-54 ->
 *   65-78 (41), m = 9 (W @ x.T, unchanged) 56-70; K = N = 512 m = 3 32-36
 *   -> 43-49, m = 5 38-45 -> 53-65; K = N = 4096 m = 8 51-59 -> 61-64 (39);
 *   K < 256, which W @ x.T does not take: 5 x 64 @ W.T (1024 x 64) 43 ->
 *   55-57 (44), 6 x 128 @ (512 x 128).T 47-50 -> 66-68 (50), 8 x 200 @
 *   (300 x 200).T 57-59 -> 70 (63), but 8 x 32 @ (4096 x 32).T 61 -> 54-57
 *   (66): two tiles a group, the packed path's 256-bit transposes win
 *   there. 2 threads, K = N = 1024: m = 3 62 -> 79 (120), m = 4 72 -> 101
 *   (99), m = 5 73 -> 104 (113), m = 6 75 -> 124 (130), m = 8 100 -> 136
 *   (129). float64 stops at 6 rows (NDL_AVX512_BT_M_F64): from 7, W @
 *   x.T's narrow tile holds x.T's columns in one zmm of 8 doubles, nearly
 *   full, with no shuffles (m = 8, K = N = 512: 48-51 that way, 36-42
 *   here); m = 4 19-22 -> 25-29 (14), m = 6 29-33 -> 41 (19), 6 x 128 @
 *   (512 x 128).T 25-26 -> 41-44 (30).
 *   With W in L3 or memory m = 2, 3 are bound by reading W: one core
 *   streams ~32 GB/s here, so m = 3 cannot pass ~48 GFLOP/s (MKL's 45 is
 *   near it); prefetching W's rows, a line or a group of rows ahead, into
 *   L1 or L2, lost 5-20%.
 *   The sums are those of Note [One chain per element] (cpu_matmul.h), as
 *   in the AVX2 file: each lane is one element of C, one chain of fused
 *   multiply-adds from zero in k order per KC block (the KC passed in),
 *   then C = the first block's chain, plus the second's, ... So m = 2 gives
 *   the rows of m = 64, and the bits are those of the AVX2 transposes, of
 *   W @ x.T and of the packed kernels (the tests compare them).
 *
 * Python equivalent, for j0 <= j < j1 and r < m:
 *     C[r][j] = sum over KC blocks (in order) of fma-chain(A[r][blk], W[j][blk])
 */
#include "cpu_matmul.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#ifdef NDL_AVX512_EMU /* Note [AVX-512 without AVX-512] in avx512_emu.h */
#include "avx512_emu.h"
#define TARGET __attribute__((target("avx2,fma")))
#define BT512(SFX) ndl_small_bt_avx512_emu_##SFX
#else
#define TARGET __attribute__((target("avx512f")))
#define BT512(SFX) ndl_small_bt_avx512_##SFX
#endif
#define INLINE static inline __attribute__((always_inline)) TARGET
/* the tiles' loops unrolled whole, so that their arrays are registers */
#define UNROLL _Pragma("GCC unroll 16")

/* The row of W that lane i reads: the last of the group's `rows` stands in for
 * the rows past W's end (their lanes are never stored) */
#define ROW(i, rows) ((i) < (rows) ? (i) : (rows)-1)

/* 16 rows of W from w (row stride csb) x 16 k: t[u] = W[0..15][u] */
INLINE void tile_f32(const float *w, int64_t csb, int rows, __m512 t[16])
{
    UNROLL for (int kq = 0; kq < 4; kq++) { /* k 4 kq .. 4 kq + 3 */
        __m512 q[4];
        UNROLL for (int i = 0; i < 4; i++) { /* lane L: row 4 L + i */
            const float *p = w + 4 * kq;
            __m512 v = _mm512_castps128_ps512(_mm_loadu_ps(p + ROW(i, rows) * csb));
            v = _mm512_insertf32x4(v, _mm_loadu_ps(p + ROW(4 + i, rows) * csb), 1);
            v = _mm512_insertf32x4(v, _mm_loadu_ps(p + ROW(8 + i, rows) * csb), 2);
            q[i] = _mm512_insertf32x4(v, _mm_loadu_ps(p + ROW(12 + i, rows) * csb), 3);
        }
        __m512 u0 = _mm512_unpacklo_ps(q[0], q[1]), u1 = _mm512_unpackhi_ps(q[0], q[1]);
        __m512 u2 = _mm512_unpacklo_ps(q[2], q[3]), u3 = _mm512_unpackhi_ps(q[2], q[3]);
        t[4 * kq + 0] = _mm512_shuffle_ps(u0, u2, 0x44);
        t[4 * kq + 1] = _mm512_shuffle_ps(u0, u2, 0xEE);
        t[4 * kq + 2] = _mm512_shuffle_ps(u1, u3, 0x44);
        t[4 * kq + 3] = _mm512_shuffle_ps(u1, u3, 0xEE);
    }
}

/* 8 rows of W x 8 k: t[u] = W[0..7][u] */
INLINE void tile_f64(const double *w, int64_t csb, int rows, __m512d t[8])
{
    __m512d r[8], a[8];
    UNROLL for (int i = 0; i < 8; i++)
        r[i] = _mm512_loadu_pd(w + ROW(i, rows) * csb);
    UNROLL for (int i = 0; i < 4; i++) { /* a[2i + s], lane L: rows 2i, 2i + 1 at k 2L + s */
        a[2 * i] = _mm512_unpacklo_pd(r[2 * i], r[2 * i + 1]);
        a[2 * i + 1] = _mm512_unpackhi_pd(r[2 * i], r[2 * i + 1]);
    }
    UNROLL for (int s = 0; s < 2; s++) { /* the 4 x 4 transpose of the 128-bit lanes */
        __m512d x0 = _mm512_shuffle_f64x2(a[s], a[2 + s], 0x44);
        __m512d x1 = _mm512_shuffle_f64x2(a[s], a[2 + s], 0xEE);
        __m512d x2 = _mm512_shuffle_f64x2(a[4 + s], a[6 + s], 0x44);
        __m512d x3 = _mm512_shuffle_f64x2(a[4 + s], a[6 + s], 0xEE);
        t[s] = _mm512_shuffle_f64x2(x0, x2, 0x88);
        t[2 + s] = _mm512_shuffle_f64x2(x0, x2, 0xDD);
        t[4 + s] = _mm512_shuffle_f64x2(x1, x3, 0x88);
        t[6 + s] = _mm512_shuffle_f64x2(x1, x3, 0xDD);
    }
}

/* Rows 0..R-1 of A from a0 (row stride rsa), columns [j, j + cols) of C
 * from c0 (row stride ldc; cols <= VW, W's rows from w), the k block [0,
 * kb); first: C = the chains, else C += them. R is a constant at every
 * call (always_inline), and so is cols = VW, but for the last columns. */
#define DEFINE_BT512(T, SFX, VW, VEC, FMA, BCAST, ZERO, LOAD, ADD, STORE, MLOAD, MSTORE, MASK)  \
    INLINE void block_##SFX(int R, int cols, int64_t kb, const T *a0, int64_t rsa,             \
                            int64_t csa, const T *w, int64_t csb, T *c0, int64_t ldc,          \
                            int first)                                                         \
    {                                                                                          \
        VEC acc[NDL_AVX512_BT_M];                                                              \
        for (int r = 0; r < R; r++)                                                            \
            acc[r] = ZERO();                                                                   \
        int64_t k = 0;                                                                         \
        for (; k + VW <= kb; k += VW) {                                                        \
            VEC t[VW];                                                                         \
            tile_##SFX(w + k, csb, cols, t);                                                   \
            UNROLL for (int u = 0; u < VW; u++)                                                \
                UNROLL for (int r = 0; r < R; r++)                                             \
                    acc[r] = FMA(BCAST(a0[r * rsa + (k + u) * csa]), t[u], acc[r]);            \
        }                                                                                      \
        if (k < kb) { /* the last kb - k < VW: the rows' ends in a zero-padded tile */     \
            T end[VW][VW] = {{0}};                                                             \
            for (int x = 0; x < cols; x++)                                                     \
                for (int u = 0; u < kb - k; u++)                                               \
                    end[x][u] = w[x * csb + k + u];                                            \
            VEC t[VW];                                                                         \
            tile_##SFX(&end[0][0], VW, VW, t);                                                 \
            for (int u = 0; u < kb - k; u++) /* the chains go on */                            \
                UNROLL for (int r = 0; r < R; r++)                                             \
                    acc[r] = FMA(BCAST(a0[r * rsa + (k + u) * csa]), t[u], acc[r]);            \
        }                                                                                      \
        UNROLL for (int r = 0; r < R; r++) {                                                   \
            T *cr = c0 + r * ldc;                                                              \
            if (cols == VW)                                                                    \
                STORE(cr, first ? acc[r] : ADD(LOAD(cr), acc[r]));                             \
            else /* the lanes of W's rows only */                                              \
                MSTORE(cr, MASK(cols), first ? acc[r] : ADD(MLOAD(MASK(cols), cr), acc[r]));   \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    TARGET void BT512(SFX)(int64_t m, int64_t n, const void *a_, int64_t rsa, int64_t csa,     \
                           const void *b_, int64_t csb, void *c_, int64_t ldc, int64_t j0,     \
                           int64_t j1, int64_t kc)                                             \
    {                                                                                          \
        const T *a = a_, *b = b_;                                                              \
        T *c = c_;                                                                             \
        for (int64_t j = j0; j < j1; j += VW) {                                                \
            int cols = j1 - j < VW ? (int)(j1 - j) : VW;                                       \
            for (int64_t k0 = 0; k0 < n; k0 += kc) {                                           \
                int64_t kb = n - k0 < kc ? n - k0 : kc;                                        \
                const T *w = b + j * csb + k0;                                                 \
                for (int64_t r = 0; r < m; r += NDL_AVX512_BT_M) {                             \
                    const T *a0 = a + r * rsa + k0 * csa;                                      \
                    T *c0 = c + r * ldc + j;                                                   \
                    int R = m - r < NDL_AVX512_BT_M ? (int)(m - r) : NDL_AVX512_BT_M;          \
                    switch (R) { /* a constant R for each call */                              \
                    BT512_CASES(SFX, VW)                                                       \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }

#define BT512_CASE(SFX, VW, R)                                                                 \
    case R:                                                                                    \
        if (cols == VW)                                                                        \
            block_##SFX(R, VW, kb, a0, rsa, csa, w, csb, c0, ldc, k0 == 0);                    \
        else                                                                                   \
            block_##SFX(R, cols, kb, a0, rsa, csa, w, csb, c0, ldc, k0 == 0);                  \
        break;
#define BT512_CASES(SFX, VW)                                                                   \
    BT512_CASE(SFX, VW, 1) BT512_CASE(SFX, VW, 2) BT512_CASE(SFX, VW, 3)                       \
    BT512_CASE(SFX, VW, 4) BT512_CASE(SFX, VW, 5) BT512_CASE(SFX, VW, 6)                       \
    BT512_CASE(SFX, VW, 7) BT512_CASE(SFX, VW, 8)
_Static_assert(NDL_AVX512_BT_M == 8, "BT512_CASES lists the row counts 1..NDL_AVX512_BT_M");

#define SET1_F32(x) _mm512_set1_ps(x)
#define SET1_F64(x) _mm512_set1_pd(x)
#define MASK_F32(n) ((__mmask16)((1u << (n)) - 1))
#define MASK_F64(n) ((__mmask8)((1u << (n)) - 1))
DEFINE_BT512(float, f32, 16, __m512, _mm512_fmadd_ps, SET1_F32, _mm512_setzero_ps,
             _mm512_loadu_ps, _mm512_add_ps, _mm512_storeu_ps, _mm512_maskz_loadu_ps,
             _mm512_mask_storeu_ps, MASK_F32)
DEFINE_BT512(double, f64, 8, __m512d, _mm512_fmadd_pd, SET1_F64, _mm512_setzero_pd,
             _mm512_loadu_pd, _mm512_add_pd, _mm512_storeu_pd, _mm512_maskz_loadu_pd,
             _mm512_mask_storeu_pd, MASK_F64)

#ifdef NDL_AVX512_EMU
/* Note [AVX-512 without AVX-512]: the entry points count their calls and
 * the emulated 512-bit FMAs ([dtype][0] calls, [1] FMAs; 0 float32, 1
 * float64), read by tests/test_matmul_kernels.py through ctypes. The FMA
 * counter is this file's (avx512_emu.h's is per translation unit). */
int64_t ndl_avx512_emu_bt_counts[2][2];
#define EMU_BT(SFX, D)                                                                         \
    void ndl_small_bt_avx512_##SFX(int64_t m, int64_t n, const void *a, int64_t rsa,            \
                                   int64_t csa, const void *b, int64_t csb, void *c,           \
                                   int64_t ldc, int64_t j0, int64_t j1, int64_t kc)            \
    {                                                                                          \
        int64_t before = ndl_emu_fmas;                                                         \
        BT512(SFX)(m, n, a, rsa, csa, b, csb, c, ldc, j0, j1, kc);                             \
        __atomic_fetch_add(&ndl_avx512_emu_bt_counts[D][0], 1, __ATOMIC_RELAXED);              \
        __atomic_fetch_add(&ndl_avx512_emu_bt_counts[D][1], ndl_emu_fmas - before,             \
                           __ATOMIC_RELAXED);                                                  \
    }
EMU_BT(f32, 0)
EMU_BT(f64, 1)
#endif

#else /* only there so that the driver links: never chosen */

void ndl_small_bt_avx512_f32(int64_t m, int64_t n, const void *a, int64_t rsa, int64_t csa,
                             const void *b, int64_t csb, void *c, int64_t ldc, int64_t j0,
                             int64_t j1, int64_t kc)
{
    (void)m, (void)n, (void)a, (void)rsa, (void)csa, (void)b, (void)csb, (void)c, (void)ldc;
    (void)j0, (void)j1, (void)kc;
}
void ndl_small_bt_avx512_f64(int64_t m, int64_t n, const void *a, int64_t rsa, int64_t csa,
                             const void *b, int64_t csb, void *c, int64_t ldc, int64_t j0,
                             int64_t j1, int64_t kc)
{
    (void)m, (void)n, (void)a, (void)rsa, (void)csa, (void)b, (void)csb, (void)c, (void)ldc;
    (void)j0, (void)j1, (void)kc;
}
#endif
