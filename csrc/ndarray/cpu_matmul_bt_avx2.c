/* cpu_matmul_bt_avx2.c: skinny products C = A @ W.T (B's columns
 * contiguous: B[k][j] = W[j][k] = b[j*csb + k]) with few rows, W
 * transposed in registers and never packed.
 *
 * Note [Transposing W in registers]
 *   With m = 2 and W 4096 x 4096 float32 (64 MiB) the product is bound by
 *   reading W once from memory. The packed path (Note [Narrow B blocks for
 *   few rows] in cpu_matmul.c) transposed each KC x NC1 block of W into a
 *   buffer in L2 and ran the micro-kernel over it with 2 of its 6 rows: W
 *   went from memory to registers, to L2, and back, in blocks of 256 rows
 *   read 1 KiB at a time (12 GB/s on Zen 3, PyTorch 15-16). Here 8 rows of
 *   W at a time (8 columns of C; 8 sequential streams over the whole of k)
 *   are loaded W x W elements at a time (W = 8 floats or 4 doubles: one or
 *   two column groups), transposed in registers
 *   (cpu_matmul_transpose_avx2.h) and fed straight to the multiply-adds of
 *   up to two rows of A: W is read once, in long runs, and nothing is
 *   stored but C. Why 8 rows: the rows of a 4096-wide W are 16 KiB apart,
 *   so the same column of all of them falls in one L1 set (8 ways); 16 rows
 *   evicted each line between its two halves' uses (12 GB/s), 8 rows read
 *   19-20 GB/s (float32) and 13-14 (float64) where 4 read 11. A whole
 *   cache line of each row is used before the next group's (BT_LINE).
 *   Software prefetch 256 bytes ahead into L1 gained ~5% on float64 and
 *   nothing on float32; 512-2048 bytes, or into L2, no more.
 *   The sums are those of Note [One chain per element] (cpu_matmul.h):
 *   for each KC block of k (the KC of the chosen configuration, passed in),
 *   one chain of fused multiply-adds from zero in k order per element (the
 *   vector lanes are the elements, never parts of one sum), then C = the
 *   first block's chain, plus the second's, ... So the bits are those of
 *   the packed AVX2 and AVX-512 kernels with the same KC (a fused
 *   multiply-add rounds the same whatever the vector width), and m = 2
 *   gives the rows of m = 64. The generic configuration (whose multiply-add
 *   is not fused on x86) never calls this.
 *   The chains in flight are rows x lanes of a column group: 2 x 8 for
 *   m = 2 (4 cycles a FMA), ~25 GB/s of W on Zen 3 at most, more than one
 *   core reads from memory. Each transposed group serves up to NDL_AVX2_BT_M = 4 (cpu_matmul.h)
 *   rows of A (the accumulators and the 8 transposed vectors fit the 16
 *   registers); it served 2, and m = 3, 4 transposed each group twice and
 *   lost to the packed kernels. Xeon (Emerald Rapids), 1 thread, K = N =
 *   1024, GFLOP/s, packed -> here: float32 m = 3 15 -> 30, m = 4 21 -> 36-40
 *   (PyTorch 43-47 and 29-32); float64 m = 3 8 -> 19-22, m = 4 11 -> 19-22; the same
 *   with the AVX2 kernels forced; K = N = 4096 float32 m = 4 25 -> 35-42
 *   (31). From m = 5 the driver computes W @ x.T instead (Note [x @ W.T by
 *   W @ x.T] in cpu_matmul.c), faster there (float32 m = 5: 25 GFLOP/s
 *   transposing W here, 33-37 that way). On an AVX-512 CPU the AVX-512
 *   configuration transposes 16 x 16 tiles in zmm registers for up to 8
 *   rows (cpu_matmul_bt_avx512.c), and calls nothing here.
 *
 * Python equivalent, for j0 <= j < j1 and r < m:
 *     C[r][j] = sum over KC blocks (in order) of fma-chain(A[r][blk], W[j][blk])
 */
#include "cpu_matmul.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define TARGET __attribute__((target("avx2,fma")))
#include "cpu_matmul_transpose_avx2.h"

/* Prefetch distance along W's rows, in bytes, and the prefetch's locality
 * (3: into L1); NEEDLE's tuning builds may override them with -D. */
#ifndef BT_PREFETCH
#define BT_PREFETCH 256
#endif
#define BT_LINE (64 / (int)sizeof(*w)) /* elements of a cache line of W */
#ifndef BT_LOCALITY
#define BT_LOCALITY 3
#endif

/* W x W elements of W at column kk of the block, group g: transposed, then
 * the multiply-adds of rows 0..R-1 of A (at a0 + r rsa) */
#define BT_TILE(T, W, VEC, LOAD, TRANSPOSE, FMA, BCAST, kk)                                   \
    do {                                                                                       \
        const int64_t k_ = (kk);                                                               \
        VEC t[W];                                                                              \
        for (int i = 0; i < W; i++)                                                            \
            t[i] = LOAD(w + (g * W + i) * csb + k_);                                           \
        TRANSPOSE(t); /* t[u] = W[j + g*W .. + W][k_ + u] */                                   \
        for (int u = 0; u < W; u++)                                                            \
            for (int r = 0; r < R; r++)                                                        \
                acc[r][g] = FMA(BCAST(a0 + r * rsa + (k_ + u) * csa), t[u], acc[r][g]);        \
    } while (0)

/* One body for both types: rows 0..R-1 of A from a0 (row stride rsa),
 * columns [j, j + G*W) of C from c0 (row stride ldc), the k block [k0, k0
 * + kb); first: C = the chains, else C += them. G and R are constants at
 * every call (always_inline), so the accumulator arrays live in registers. */
#define DEFINE_BT_BLOCK(T, SFX, W, VEC, LOAD, TRANSPOSE, FMA, BCAST, ZERO, STORE, SFMA)        \
    static inline __attribute__((always_inline)) TARGET void bt_block_##SFX(                 \
        int R, int G, int64_t kb, const T *a0, int64_t rsa, int64_t csa, const T *w,           \
        int64_t csb, T *c0, int64_t ldc, int first)                                            \
    {                                                                                          \
        VEC acc[NDL_AVX2_BT_M][2];                                                                   \
        for (int r = 0; r < R; r++)                                                            \
            for (int g = 0; g < G; g++)                                                        \
                acc[r][g] = ZERO();                                                            \
        int64_t k = 0;                                                                         \
        /* a cache line of each row at a time (Note [Transposing W in registers]) */           \
        for (; k + BT_LINE <= kb; k += BT_LINE)                                                \
            for (int g = 0; g < G; g++) {                                                      \
                for (int i = 0; BT_PREFETCH && i < W; i++)                                     \
                    __builtin_prefetch((const char *)(w + (g * W + i) * csb + k) + BT_PREFETCH,\
                                       0, BT_LOCALITY);                                        \
                for (int h = 0; h < BT_LINE; h += W)                                           \
                    BT_TILE(T, W, VEC, LOAD, TRANSPOSE, FMA, BCAST, k + h);                    \
            }                                                                                  \
        for (; k + W <= kb; k += W)                                                            \
            for (int g = 0; g < G; g++)                                                        \
                BT_TILE(T, W, VEC, LOAD, TRANSPOSE, FMA, BCAST, k);                            \
        T s[NDL_AVX2_BT_M][2 * W];                                                                   \
        for (int r = 0; r < R; r++)                                                            \
            for (int g = 0; g < G; g++)                                                        \
                STORE(s[r] + g * W, acc[r][g]);                                                \
        for (; k < kb; k++) /* the chains go on, element by element */                         \
            for (int r = 0; r < R; r++)                                                        \
                for (int x = 0; x < G * W; x++)                                                \
                    s[r][x] = SFMA(a0[r * rsa + k * csa], w[x * csb + k], s[r][x]);            \
        for (int r = 0; r < R; r++) {                                                          \
            T *cr = c0 + r * ldc;                                                              \
            for (int x = 0; x < G * W; x++)                                                    \
                cr[x] = first ? s[r][x] : cr[x] + s[r][x];                                     \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    TARGET void ndl_small_bt_##SFX(int64_t m, int64_t n, const void *a_, int64_t rsa,          \
                                   int64_t csa, const void *b_, int64_t csb, void *c_,         \
                                   int64_t ldc, int64_t j0, int64_t j1, int64_t kc)            \
    {                                                                                          \
        const T *a = a_, *b = b_;                                                              \
        T *c = c_;                                                                             \
        int64_t j = j0;                                                                        \
        for (; j < j1;) {                                                                      \
            int G = j1 - j >= 8 && W == 4 ? 2 : j1 - j >= W ? 1 : 0;                               \
            for (int64_t k0 = 0; k0 < n; k0 += kc) {                                           \
                int64_t kb = n - k0 < kc ? n - k0 : kc;                                        \
                const T *w = b + j * csb + k0;                                                 \
                for (int64_t r = 0; r < m; r += NDL_AVX2_BT_M) {                                     \
                    const T *a0 = a + r * rsa + k0 * csa;                                      \
                    T *c0 = c + r * ldc + j;                                                   \
                    int R = m - r < NDL_AVX2_BT_M ? (int)(m - r) : NDL_AVX2_BT_M;                          \
                    if (G == 0) { /* one column */                                             \
                        for (int rr = 0; rr < R; rr++) {                                       \
                            const T *ar = a0 + rr * rsa;                                       \
                            T sum = 0;                                                         \
                            for (int64_t k = 0; k < kb; k++)                                   \
                                sum = SFMA(ar[k * csa], w[k], sum);                            \
                            c0[rr * ldc] = k0 == 0 ? sum : c0[rr * ldc] + sum;                 \
                        }                                                                      \
                        continue;                                                              \
                    }                                                                          \
                    /* constant R and G for each call */                                      \
                    switch (R * 2 + G - 1) {                                                   \
                    BT_CASES(SFX)                                                              \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
            j += G ? G * W : 1;                                                                \
        }                                                                                      \
    }

#define BT_CASE(SFX, R, G)                                                                     \
    case R * 2 + G - 1:                                                                        \
        bt_block_##SFX(R, G, kb, a0, rsa, csa, w, csb, c0, ldc, k0 == 0);                      \
        break;
#define BT_CASES(SFX)                                                                          \
    BT_CASE(SFX, 1, 1) BT_CASE(SFX, 1, 2) BT_CASE(SFX, 2, 1) BT_CASE(SFX, 2, 2)                \
    BT_CASE(SFX, 3, 1) BT_CASE(SFX, 3, 2) BT_CASE(SFX, 4, 1) BT_CASE(SFX, 4, 2)

DEFINE_BT_BLOCK(float, f32, 8, __m256, _mm256_loadu_ps, transpose8_ps, _mm256_fmadd_ps,
                _mm256_broadcast_ss, _mm256_setzero_ps, _mm256_storeu_ps, __builtin_fmaf)
DEFINE_BT_BLOCK(double, f64, 4, __m256d, _mm256_loadu_pd, transpose4_pd, _mm256_fmadd_pd,
                _mm256_broadcast_sd, _mm256_setzero_pd, _mm256_storeu_pd, __builtin_fma)

#else /* only there so that the driver links: never chosen */

void ndl_small_bt_f32(int64_t m, int64_t n, const void *a, int64_t rsa, int64_t csa,
                      const void *b, int64_t csb, void *c, int64_t ldc, int64_t j0, int64_t j1,
                      int64_t kc)
{
    (void)m, (void)n, (void)a, (void)rsa, (void)csa, (void)b, (void)csb, (void)c, (void)ldc;
    (void)j0, (void)j1, (void)kc;
}
void ndl_small_bt_f64(int64_t m, int64_t n, const void *a, int64_t rsa, int64_t csa,
                      const void *b, int64_t csb, void *c, int64_t ldc, int64_t j0, int64_t j1,
                      int64_t kc)
{
    (void)m, (void)n, (void)a, (void)rsa, (void)csa, (void)b, (void)csb, (void)c, (void)ldc;
    (void)j0, (void)j1, (void)kc;
}
#endif
