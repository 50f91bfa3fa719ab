/* cpu_matmul_small.c: the skinny products of ndl_cpu_matmul, C = A @ B with
 * few rows (axpy: m <= the configuration's small_m; dot: m = 1,
 * matrix-vector; the limits and their reasons are in cpu_matmul.c), where
 * packing B would copy all of B to use each element m times only. Such
 * products are bound by reading B once from memory, so these loops read B
 * where it lies, in long sequential streams, and keep the reused operands in
 * L1:
 *
 *   axpy (B's rows contiguous, csb == 1):
 *       for each block of columns whose C rows fit half of L2:
 *        for each KC block of k (Note [One chain per element]: the first
 *        block's sums go to C, the next ones' to a scratch block of the
 *        same shape, then are added to C):
 *         for k in steps of KU (8 rows of B, 8 sequential streams):
 *           for jb in the block by JB (8 x JB of B: 8 KiB, stays in L1):
 *             for r < m:  C[r][jb:+JB] += sum_u A[r][k+u] * B[k+u][jb:+JB]
 *       Every B element is loaded from memory once and from L1 m times;
 *       each C element gets its k terms in k order, KU at a time.
 *       (m = 1 with B in cache runs the one-row kernel instead: Note [One
 *       row: which products] in cpu_matmul.c.)
 *   dot (B's columns contiguous, rsb == 1, and A's rows contiguous; the
 *   driver calls it for m = 1 only, other m being packed):
 *       for each row r of A, four columns of B at a time (then one at a
 *       time):
 *         C[r][j] = sum_k A[r][k] * B[k][j] in 64 bytes of partial sums
 *         (16 float32, 8 float64; vectorised over k), added pairwise at
 *         the end.
 *       The four columns are four sequential streams from memory, and each
 *       load of A's row (from L1) serves four of them: one column at a
 *       time took two loads per multiply-add and a single stream, 0.6x
 *       NumPy's matrix-vector product (Zen 3, 1024 x 1024 float32).
 *       (16 float64 partial sums, as many as float32's, were 4 AVX2
 *       vectors a column, 16 for four columns: gcc 12 kept two of them on
 *       the stack, stored and reloaded at every step; 8 are 8 registers:
 *       Zen 3, 1 thread, float64 A @ v 512: 11.5-13.5 -> 15-16.5 GFLOP/s,
 *       NumPy 12.5-15.5.)
 *
 * Each function computes the columns [j0, j1) of all m rows; each C element
 * is summed in an order fixed by n alone (axpy: the one FMA chain of Note
 * [One chain per element] in cpu_matmul.h, as the packed kernels do), so
 * the driver may split columns between threads without changing results.
 * One body, compiled once per instruction set (target attributes: the
 * loops are vectorised by the compiler, FMAs contracted where the ISA has
 * them) and dtype; cpu_matmul.c calls the one of the kernel it chose.
 */
#include "cpu_matmul.h"

#include <string.h>

/* Note [Axpy chains]
 *   Each C element of the axpy loops is one chain of fused multiply-adds
 *   in k order (Note [One chain per element]); eight of them in a row,
 *   C[r][j] = fma(a7, B7[j], ... fma(a0, B0[j], C[r][j])), are dependent,
 *   4 cycles each on Zen 3. Written one element (one vector) at a time,
 *   the out-of-order core overlapped too few of those chains to keep both
 *   FMA units busy. So the loop takes JU_BYTES of the row at a time (8
 *   vectors: 256 bytes on AVX2, 512 on AVX-512, 8 registers either way,
 *   leaving 8 for the broadcast a's) and advances their chains together,
 *   one k after the other: the same operations on each element, in the
 *   same order (the bits do not change), with eight independent FMAs in
 *   flight. Zen 3, 1 thread, float32 K = N = 1024: m = 8 +19%; K = N =
 *   4096 (B from memory): m = 4 +15%, m = 8 +7%.
 */

/* Note [One row: longer runs]
 *   The axpy loops read KU rows of B side by side, JB_BYTES of each before
 *   moving to the next JB columns, so that the KU x JB chunk stays in L1
 *   while the m rows of A use it. With m = 1 each element of B is used
 *   once: the chunk need not stay in L1, and reading 4 KiB of each row
 *   at a time instead of 1 KiB gives the prefetchers runs as long as a
 *   page (B from memory, Zen 3, 1 thread, float32 K = N = 4096: 16-18 ->
 *   18-19.5 GFLOP/s, NumPy 17-20; the same results, the chains' order does
 *   not depend on the chunks).
 */
#define KU 8           /* rows of B per pass (axpy) */
#define JB_BYTES 1024  /* columns of B per L1 chunk, in bytes (axpy) */
#define JB_BYTES_ONE 4096 /* the same for m = 1 (Note [One row: longer runs]) */
#define LANES (64 / (int)sizeof(*a)) /* partial sums per dot: 64 bytes */
#define DOT_COLS 4     /* columns of B per dot pass */

/* MADD(a, b, c): a * b + c, fused on the SIMD instantiations; JU_BYTES:
 * bytes of a C row whose chains interleave (axpy, Note [Axpy chains]) */
#define NDL_DEFINE_SMALL(T, SFX, TARGET, MADD, JU_BYTES)                                    \
    TARGET void ndl_small_axpy_##SFX(int64_t m, int64_t n, const void *a_, int64_t rsa,     \
                                     int64_t csa, const void *b_, int64_t rsb, void *c_,    \
                                     int64_t ldc, int64_t j0, int64_t j1, int64_t jl2,      \
                                     int64_t kc, void *scratch)                             \
    {                                                                                       \
        const T *a = a_, *b = b_;                                                           \
        T *c = c_;                                                                          \
        const int64_t jb_len = (m == 1 ? JB_BYTES_ONE : JB_BYTES) / (int64_t)sizeof(T);     \
        const int ju = JU_BYTES / (int)sizeof(T);                                           \
        for (int64_t jl = j0; jl < j1; jl += jl2) {                                         \
            int64_t je = j1 - jl < jl2 ? j1 : jl + jl2;                                     \
            /* Note [Axpy rows away from B's] (cpu_matmul.h) */                             \
            T *sbuf = scratch ? (T *)ndl_axpy_place(scratch, b + jl) : NULL;                \
            const int away = sbuf && ndl_axpy_near(c + jl, b + jl);                         \
            for (int64_t k0 = 0; k0 < n; k0 += kc) {                                        \
                int64_t k1 = n - k0 < kc ? n : k0 + kc;                                     \
                /* Note [One chain per element]: the first KC block's chains                \
                 * go to C, the others' to scratch, then are added to C */                  \
                int sep = (k0 > 0 || away) && sbuf;                                         \
                T *acc = sep ? sbuf - jl : c;                                               \
                int64_t lda = sep ? je - jl : ldc;                                          \
                if (k0 == 0 || sep)                                                         \
                    for (int64_t r = 0; r < m; r++)                                         \
                        memset(acc + r * lda + jl, 0, (size_t)(je - jl) * sizeof(T));       \
                int64_t k = k0;                                                             \
                for (; k + KU <= k1; k += KU) {                                             \
                    const T *b0 = b + k * rsb;                                              \
                    for (int64_t jb = jl; jb < je; jb += jb_len) {                          \
                        int64_t len = je - jb < jb_len ? je - jb : jb_len;                  \
                        const T *restrict p0 = b0 + jb, *restrict p1 = p0 + rsb;            \
                        const T *restrict p2 = p1 + rsb, *restrict p3 = p2 + rsb;           \
                        const T *restrict p4 = p3 + rsb, *restrict p5 = p4 + rsb;           \
                        const T *restrict p6 = p5 + rsb, *restrict p7 = p6 + rsb;           \
                        for (int64_t r = 0; r < m; r++) {                                   \
                            const T *ar = a + r * rsa + k * csa;                            \
                            const T a0 = ar[0], a1 = ar[csa], a2 = ar[2 * csa];             \
                            const T a3 = ar[3 * csa], a4 = ar[4 * csa], a5 = ar[5 * csa];   \
                            const T a6 = ar[6 * csa], a7 = ar[7 * csa];                     \
                            T *restrict cr = acc + r * lda + jb;                            \
                            int64_t j = 0;                                                  \
                            for (; j + ju <= len; j += ju) { /* Note [Axpy chains] */       \
                                T s[JU_BYTES / sizeof(T)];                                  \
                                for (int l = 0; l < ju; l++)                                \
                                    s[l] = MADD(a0, p0[j + l], cr[j + l]);                  \
                                for (int l = 0; l < ju; l++)                                \
                                    s[l] = MADD(a1, p1[j + l], s[l]);                       \
                                for (int l = 0; l < ju; l++)                                \
                                    s[l] = MADD(a2, p2[j + l], s[l]);                       \
                                for (int l = 0; l < ju; l++)                                \
                                    s[l] = MADD(a3, p3[j + l], s[l]);                       \
                                for (int l = 0; l < ju; l++)                                \
                                    s[l] = MADD(a4, p4[j + l], s[l]);                       \
                                for (int l = 0; l < ju; l++)                                \
                                    s[l] = MADD(a5, p5[j + l], s[l]);                       \
                                for (int l = 0; l < ju; l++)                                \
                                    s[l] = MADD(a6, p6[j + l], s[l]);                       \
                                for (int l = 0; l < ju; l++)                                \
                                    cr[j + l] = MADD(a7, p7[j + l], s[l]);                  \
                            }                                                               \
                            for (; j < len; j++)                                            \
                                cr[j] = MADD(a7, p7[j], MADD(a6, p6[j], MADD(a5, p5[j],     \
                                        MADD(a4, p4[j], MADD(a3, p3[j], MADD(a2, p2[j],     \
                                        MADD(a1, p1[j], MADD(a0, p0[j], cr[j]))))))));      \
                        }                                                                   \
                    }                                                                       \
                }                                                                           \
                for (; k < k1; k++)                                                         \
                    for (int64_t r = 0; r < m; r++) {                                       \
                        const T ak = a[r * rsa + k * csa], *restrict bk = b + k * rsb;      \
                        T *restrict cr = acc + r * lda;                                     \
                        for (int64_t j = jl; j < je; j++)                                   \
                            cr[j] = MADD(ak, bk[j], cr[j]);                                 \
                    }                                                                       \
                if (sep)                                                                    \
                    for (int64_t r = 0; r < m; r++) {                                       \
                        T *restrict cr = c + r * ldc;                                       \
                        const T *restrict sr = acc + r * lda;                               \
                        if (k0 == 0)                                                        \
                            memcpy(cr + jl, sr + jl, (size_t)(je - jl) * sizeof(T));        \
                        else                                                                \
                            for (int64_t j = jl; j < je; j++)                               \
                                cr[j] = cr[j] + sr[j];                                      \
                    }                                                                       \
            }                                                                               \
        }                                                                                   \
    }                                                                                       \
                                                                                            \
    TARGET void ndl_small_dot_##SFX(int64_t m, int64_t n, const void *a_, int64_t rsa,      \
                                    const void *b_, int64_t csb, void *c_, int64_t ldc,     \
                                    int64_t j0, int64_t j1)                                 \
    {                                                                                       \
        const T *a = a_, *b = b_;                                                           \
        T *c = c_;                                                                          \
        for (int64_t r = 0; r < m; r++) {                                                   \
            const T *restrict x = a + r * rsa;                                              \
            int64_t j = j0;                                                                 \
            for (; j + DOT_COLS <= j1; j += DOT_COLS) {                                     \
                const T *restrict y0 = b + j * csb, *restrict y1 = y0 + csb;                \
                const T *restrict y2 = y1 + csb, *restrict y3 = y2 + csb;                   \
                T s0[LANES] = {0}, s1[LANES] = {0}, s2[LANES] = {0}, s3[LANES] = {0};       \
                int64_t k = 0;                                                              \
                for (; k + LANES <= n; k += LANES)                                          \
                    for (int l = 0; l < LANES; l++) {                                       \
                        const T v = x[k + l];                                               \
                        s0[l] = MADD(v, y0[k + l], s0[l]);                                  \
                        s1[l] = MADD(v, y1[k + l], s1[l]);                                  \
                        s2[l] = MADD(v, y2[k + l], s2[l]);                                  \
                        s3[l] = MADD(v, y3[k + l], s3[l]);                                  \
                    }                                                                       \
                for (int l = 0; k < n; k++, l++) {                                          \
                    const T v = x[k];                                                       \
                    s0[l] = MADD(v, y0[k], s0[l]);                                          \
                    s1[l] = MADD(v, y1[k], s1[l]);                                          \
                    s2[l] = MADD(v, y2[k], s2[l]);                                          \
                    s3[l] = MADD(v, y3[k], s3[l]);                                          \
                }                                                                           \
                for (int w = LANES / 2; w > 0; w /= 2) /* pairwise */                       \
                    for (int l = 0; l < w; l++) {                                           \
                        s0[l] += s0[l + w];                                                 \
                        s1[l] += s1[l + w];                                                 \
                        s2[l] += s2[l + w];                                                 \
                        s3[l] += s3[l + w];                                                 \
                    }                                                                       \
                c[r * ldc + j] = s0[0];                                                     \
                c[r * ldc + j + 1] = s1[0];                                                 \
                c[r * ldc + j + 2] = s2[0];                                                 \
                c[r * ldc + j + 3] = s3[0];                                                 \
            }                                                                               \
            for (; j < j1; j++) { /* the same sums, one column at a time */                 \
                const T *restrict y0 = b + j * csb;                                         \
                T s0[LANES] = {0};                                                          \
                int64_t k = 0;                                                              \
                for (; k + LANES <= n; k += LANES)                                          \
                    for (int l = 0; l < LANES; l++)                                         \
                        s0[l] = MADD(x[k + l], y0[k + l], s0[l]);                           \
                for (int l = 0; k < n; k++, l++)                                            \
                    s0[l] = MADD(x[k], y0[k], s0[l]);                                       \
                for (int w = LANES / 2; w > 0; w /= 2)                                      \
                    for (int l = 0; l < w; l++)                                             \
                        s0[l] += s0[l + w];                                                 \
                c[r * ldc + j] = s0[0];                                                     \
            }                                                                               \
        }                                                                                   \
    }

NDL_DEFINE_SMALL(float, generic_f32, , NDL_MADD, 128)
NDL_DEFINE_SMALL(double, generic_f64, , NDL_MADD, 128)
#if defined(__x86_64__) || defined(__i386__)
/* Note [One chain per element] (cpu_matmul.h): explicit fused multiply-adds */
NDL_DEFINE_SMALL(float, avx2_f32, __attribute__((target("avx2,fma"))), __builtin_fmaf, 256)
NDL_DEFINE_SMALL(double, avx2_f64, __attribute__((target("avx2,fma"))), __builtin_fma, 256)
#ifdef NDL_AVX512_EMU
/* Note [AVX-512 without AVX-512] (avx512_emu.h): the same 512-byte chains
 * compiled for AVX2 (vectorised in ymm halves; each lane's FMAs stay one
 * chain, __builtin_fma fused), entered through cpu_matmul_avx512.c */
NDL_DEFINE_SMALL(float, avx512_emu_f32, __attribute__((target("avx2,fma"))), __builtin_fmaf, 512)
NDL_DEFINE_SMALL(double, avx512_emu_f64, __attribute__((target("avx2,fma"))), __builtin_fma, 512)
#else
NDL_DEFINE_SMALL(float, avx512_f32, __attribute__((target("avx512f,fma"))), __builtin_fmaf, 512)
NDL_DEFINE_SMALL(double, avx512_f64, __attribute__((target("avx512f,fma"))), __builtin_fma, 512)
#endif
#else /* only there so that the driver links: never chosen */
NDL_DEFINE_SMALL(float, avx2_f32, , NDL_MADD, 128)
NDL_DEFINE_SMALL(double, avx2_f64, , NDL_MADD, 128)
NDL_DEFINE_SMALL(float, avx512_f32, , NDL_MADD, 128)
NDL_DEFINE_SMALL(double, avx512_f64, , NDL_MADD, 128)
#endif
