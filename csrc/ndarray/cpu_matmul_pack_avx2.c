/* cpu_matmul_pack_avx2.c: packing a block of B whose COLUMNS are contiguous
 * (B = W.T for a row-major W, as in x @ W.T) into the column panels of
 * Note [Packed panels] (cpu_matmul.h), with AVX registers: the packing
 * transposes, 8 x 8 float32 (4 x 4 float64) elements at a time in
 * registers, where element-wise copies would store one value per
 * instruction.
 *
 * Python equivalent, for each panel q of nr columns:
 *     dst[q][k][j] = B[k][q*nr + j]  (= src[(q*nr + j)*cs + k]),  0 past nc
 *
 * Used by the AVX2 and AVX-512 configurations (every AVX-512 CPU has AVX2);
 * the driver calls it only after choosing one of them.
 */
#include "cpu_matmul.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>

#define TARGET __attribute__((target("avx2")))
#include "cpu_matmul_transpose_avx2.h"

/* The first n lanes of v at p (n < the vector's lanes): the partial
 * column groups' stores, which must not touch the next group's values. */
static inline TARGET void store_lanes_ps(float *p, __m256 v, int n)
{
    __m128 h = _mm256_castps256_ps128(v);
    if (n >= 4) {
        _mm_storeu_ps(p, h);
        h = _mm256_extractf128_ps(v, 1);
        p += 4;
        n -= 4;
    }
    if (n >= 2) {
        _mm_storel_pi((__m64 *)p, h);
        h = _mm_movehl_ps(h, h);
        p += 2;
        n -= 2;
    }
    if (n)
        _mm_store_ss(p, h);
}
static inline TARGET void store_lanes_pd(double *p, __m256d v, int n)
{
    __m128d h = _mm256_castpd256_pd128(v);
    if (n >= 2) {
        _mm_storeu_pd(p, h);
        h = _mm256_extractf128_pd(v, 1);
        p += 2;
        n -= 2;
    }
    if (n)
        _mm_store_sd(p, h);
}

/* Note [Whole panels row by row]
 *   A whole panel (nr columns of B: nr rows of W) is packed k block by k
 *   block, all its column groups for each W-row step of k, so its nr rows
 *   of W are read side by side (16 streams for the AVX-512 tiles, 4 KiB
 *   each at KC 504 float64) and dst is written a whole packed row of nr
 *   after another. Group by group (the loop below, which the partial last
 *   panel keeps) read W 4 or 8 rows at a time, one short stream per row and
 *   page: reading W from memory is then bound by latency, not bandwidth.
 *   Same copies, same bits. Xeon (Emerald Rapids), 1 thread, x @ W.T with
 *   K = N = 4096 (W from memory), medians of 1.5 s of calls, GFLOP/s,
 *   3 interleaved rounds: m = 8 float32 29.6-31.1 -> 34.6-35.1, float64
 *   15.1-15.2 -> 16.6-18.7; m = 64 float32 100-105 -> 102-108, float64
 *   48-50 -> 49-51; m = 256, K = N = 1024 +1-3%; 1024^3 unchanged.
 */

/* Note [Zeros by the vector]
 *   A panel narrower than nr (A's few rows packed for the kernels, the
 *   last columns of W.T) is padded with zeros to nr. They were written by a
 *   memset per k: a library call for 6 to 13 elements, 504 times a block;
 *   with 8 rows of A (8 x 784 @ 784 x 100, Xeon, 1 thread) those calls were
 *   9% of the product's samples. The zero vectors now go through the
 *   transposes' stores with the columns (lanes to the panel's edge), and a
 *   group wholly past the columns stores zero vectors. Same values.
 */

/* Note [Spilling past the last group]
 *   A panel whose width nr is no multiple of W (the A panels: 6 rows on AVX2,
 *   14 on AVX-512) ends each packed row with a group of lanes < W columns.
 *   Stored by their lanes only (for 6: a 4-lane store, an extract and a
 *   2-lane store), those groups made the packing of A a tenth of a 100^3
 *   product. Now every row but the panel's last is stored whole, W lanes: the
 *   W - lanes extra values fall on the first columns of the next packed row,
 *   which a later store writes again (groups go last first, rows in k order,
 *   each group's kc % W last rows after its squares; this takes nr >= W / 2,
 *   which every configuration has, so that a spill reaches the next row
 *   only), and only the last row stores its lanes alone, so nothing is
 *   written past the panel. A group's W - v missing rows (past the panel's
 *   columns) load its last real row again when no stored lane needs their
 *   zeros, so that its loads are unconditional. Same values. AMD EPYC (Zen 2,
 *   family 23 model 49), AVX2, 1 thread, float32, interleaved medians,
 *   GFLOP/s, before -> after (OpenBLAS 0.3.31 Haswell kernel): 72^3 63 ->
 *   69-71 (69), 100^3 70-71 -> 75-76 (78-79), 128^3 84-85 -> 90-92 (86-87),
 *   160^3 89-90 -> 94-96 (92-93), 16 x 784 @ 784 x 100 63-64 -> 68-70 (63),
 *   28 x 784 x 100 68-69 -> 74-75 (72-74); 1024^3 and 2048^3 unchanged,
 *   float64 unchanged (its 2-lane groups were one store already); the pack's
 *   share of 100^3 11.7% -> 5.9% of the samples. (Reading A in place instead,
 *   with pack_b copying B, gave the same figures for these squares.)
 */

/* One body for both types: groups of W columns (W = 8 floats or 4
 * doubles) go through the registers W rows at a time, a panel's last group
 * of v < W columns too (the 6-row A panels of the AVX2 kernels are all
 * such groups; zero vectors for the missing columns where stored lanes
 * need them), the kc % W last rows element by element; columns past nc of
 * the last panel are zeros. */
#define DEFINE_PACK_BT(T, SFX, W, VEC, LOAD, STORE, STORE_LANES, ZERO, TRANSPOSE)               \
    /* the W x W square at column j, row k: through the registers */                            \
    static inline TARGET void bt_square_##SFX(const T *s, int64_t cs, T *dst, int nr, int j,    \
                                              int64_t k)                                        \
    {                                                                                           \
        VEC r[W];                                                                               \
        for (int i = 0; i < W; i++)                                                             \
            r[i] = LOAD(s + (j + i) * cs + k);                                                  \
        TRANSPOSE(r);                                                                           \
        for (int i = 0; i < W; i++)                                                             \
            STORE(dst + (k + i) * nr + j, r[i]);                                                \
    }                                                                                           \
    TARGET void ndl_pack_bt_##SFX(const void *src_, int64_t cs, int64_t kc, int64_t nc, int nr, \
                                  void *dst_)                                                   \
    {                                                                                           \
        const T *src = src_;                                                                    \
        T *dst = dst_;                                                                          \
        for (int64_t j0 = 0; j0 < nc; j0 += nr, dst += (int64_t)nr * kc) {                      \
            int cols = nc - j0 < nr ? (int)(nc - j0) : nr;                                      \
            const T *s = src + j0 * cs;                                                         \
            if (cols == nr && nr % W == 0) { /* Note [Whole panels row by row] */               \
                int64_t k = 0;                                                                  \
                for (; k + W <= kc; k += W)                                                     \
                    for (int j = 0; j < nr; j += W)                                             \
                        bt_square_##SFX(s, cs, dst, nr, j, k);                                  \
                for (; k < kc; k++)                                                             \
                    for (int j = 0; j < nr; j++)                                                \
                        dst[k * nr + j] = s[j * cs + k];                                        \
                continue;                                                                       \
            }                                                                                   \
            /* the last group first: Note [Spilling past the last group] */                     \
            for (int j = (nr - 1) / W * W; j >= 0; j -= W) {                                    \
                const int v = cols - j <= 0 ? 0 : cols - j < W ? cols - j : W;                  \
                const int lanes = nr - j < W ? nr - j : W;                                      \
                int64_t off[W]; /* row i's offset, rows past v read row v - 1 */                \
                for (int i = 0; i < W; i++)                                                     \
                    off[i] = (j + (i < v ? i : v ? v - 1 : 0)) * cs;                            \
                int64_t k = 0;                                                                  \
                for (; k + W <= kc; k += W) {                                                   \
                    VEC r[W];                                                                   \
                    if (v == lanes) /* no zeros within the stored lanes */                      \
                        for (int i = 0; i < W; i++)                                             \
                            r[i] = LOAD(s + off[i] + k);                                        \
                    else                                                                        \
                        for (int i = 0; i < W; i++)                                             \
                            r[i] = i < v ? LOAD(s + off[i] + k) : ZERO();                       \
                    if (v)                                                                      \
                        TRANSPOSE(r);                                                           \
                    for (int i = 0; i < W - 1; i++) /* rows k + i + 1 < kc follow */            \
                        STORE(dst + (k + i) * nr + j, r[i]);                                    \
                    if (lanes == W || k + W < kc)                                               \
                        STORE(dst + (k + W - 1) * nr + j, r[W - 1]);                            \
                    else /* the panel's last row */                                             \
                        STORE_LANES(dst + (k + W - 1) * nr + j, r[W - 1], lanes);               \
                }                                                                               \
                for (; k < kc; k++)                                                             \
                    for (int i = 0; i < lanes; i++)                                             \
                        dst[k * nr + j + i] = i < v ? s[(j + i) * cs + k] : 0;                  \
            }                                                                                   \
        }                                                                                       \
    }

DEFINE_PACK_BT(float, f32, 8, __m256, _mm256_loadu_ps, _mm256_storeu_ps, store_lanes_ps,
               _mm256_setzero_ps, transpose8_ps)
DEFINE_PACK_BT(double, f64, 4, __m256d, _mm256_loadu_pd, _mm256_storeu_pd, store_lanes_pd,
               _mm256_setzero_pd, transpose4_pd)

#else /* only there so that the driver links: never chosen */

void ndl_pack_bt_f32(const void *src, int64_t cs, int64_t kc, int64_t nc, int nr, void *dst)
{
    (void)src, (void)cs, (void)kc, (void)nc, (void)nr, (void)dst;
}
void ndl_pack_bt_f64(const void *src, int64_t cs, int64_t kc, int64_t nc, int nr, void *dst)
{
    (void)src, (void)cs, (void)kc, (void)nc, (void)nr, (void)dst;
}
#endif
