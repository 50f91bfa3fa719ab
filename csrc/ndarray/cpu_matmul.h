/* cpu_matmul.h: private interface between the matmul driver (cpu_matmul.c)
 * and its register-blocked micro-kernels (cpu_matmul_{generic,avx2,avx512}.c;
 * the AVX2 and AVX-512 ones share one body, cpu_matmul_simd_impl.h).
 *
 * Note [Packed panels]
 *   The driver packs a block of A (mc x kc) into row panels of MR rows: panel
 *   q holds, for k = 0..kc-1, the MR values A[q*MR + r][k] (r = 0..MR-1)
 *   next to each other, rows past mc padded with zeros. A block of B
 *   (kc x nc) is packed into column panels of NR columns: for k = 0..kc-1 the
 *   NR values B[k][q*NR + j], columns past nc padded with zeros. A
 *   micro-kernel therefore reads both operands strictly sequentially.
 *
 * Micro-kernel contract (one MR x NR tile of C):
 *   A[r][k] = a[r*ars + k*acs]: a packed panel (ars = 1, acs = MR), or A
 *   read in place (Note [Reading A in place] in cpu_matmul.c)
 *   acc[r][j] = fma(A[r][k], b[k*NR + j], acc[r][j])   for k < kc in order, from 0
 *   first ? C[r][j] = acc[r][j] : C[r][j] += acc[r][j]  for r < mr, j < nr
 *   C[r][j] is c[r*ldc + j]. mr <= MR and nr <= NR give the valid part of a
 *   partial tile; nothing outside it is read or written (rows r >= mr of A
 *   are not read either: the kernel computes them from row 0 and drops
 *   them). kc >= 1.
 *   The *_packed kernels take A as a packed panel only (ars = 1, acs = MR,
 *   all MR rows present, those past mr zeros: they are read and dropped),
 *   and give the bits of the general kernel (Note [Packed A kernel] in
 *   cpu_matmul_simd_impl.h); the generic kernels serve both.
 *
 * Note [One chain per element]
 *   Every path of ndl_cpu_matmul but one (the packed kernels, whatever the
 *   layouts, and the skinny axpy loops of cpu_matmul_small.c) computes C[i][j] the
 *   same way: for each KC block of k (KC of the dtype's configuration), one
 *   chain of fused multiply-adds from zero over the block's k in order;
 *   C[i][j] is the first block's chain, plus the second's, and so on. (The
 *   blocks' partial sums keep long products more accurate than one chain:
 *   n = 2048 in float32, 3e-7 against 2e-6 relative error.) So an element's
 *   value depends on A's row i, B's column j and the configuration alone:
 *   not on how many rows A has (m = 1 gives the bits of m = 1000), on which
 *   path was taken, nor on how the work was split between threads. Layers
 *   rely on it (a recurrent layer over the whole sequence equals its cells
 *   applied step by step, bit for bit; a batch of 1 gives the numbers of
 *   a batch of 64). The fused multiply-add is explicit everywhere
 *   (intrinsics, __builtin_fma, NDL_MADD), never left to the compiler's
 *   contraction, which it may or may not apply. B read by columns (x @ W.T)
 *   is packed too, or computed as (W @ x.T).T (a product commutes: Note [x
 *   @ W.T by W @ x.T] in cpu_matmul.c), with the guarantee, except for matrix-vector products
 *   (m = 1, or p = 1 with A's rows contiguous): their dot loops sum in 64
 *   bytes of lanes (16 float32, 8 float64) and do not share it; nor, of
 *   course, do two instruction sets.
 */
#ifndef NDL_CPU_MATMUL_H
#define NDL_CPU_MATMUL_H

#include <stddef.h>
#include <stdint.h>

#include "ndl_core.h" /* ndl_dtype */

/* Multiply-add of the portable kernels: fused where the target's baseline
 * has it (aarch64), else a rounded product then a sum (the compiler cannot
 * contract without FMA instructions). */
#if defined(__FP_FAST_FMA) && defined(__FP_FAST_FMAF)
#define NDL_MADD(a, b, c) _Generic((a), float: __builtin_fmaf, default: __builtin_fma)(a, b, c)
#else
#define NDL_MADD(a, b, c) ((a) * (b) + (c))
#endif

/* b is a packed panel and c is C's tile, all of the kernel's element
 * type (float for *_f32, double for *_f64); void pointers let the driver
 * hold every kernel in one table. */
typedef void (*ndl_ukernel)(int64_t kc, const void *a, int64_t ars, int64_t acs, const void *b,
                            void *c, int64_t ldc, int mr, int nr, int first);

/* Register tiles (rows x columns of C). */
#define NDL_GENERIC_MR_F32 4
#define NDL_GENERIC_NR_F32 8
#define NDL_GENERIC_MR_F64 4
#define NDL_GENERIC_NR_F64 4

#define NDL_AVX2_MR_F32 6
#define NDL_AVX2_NR_F32 16
#define NDL_AVX2_MR_F64 6
#define NDL_AVX2_NR_F64 8

#define NDL_AVX512_MR_F32 14
#define NDL_AVX512_NR_F32 32
#define NDL_AVX512_MR_F64 14
#define NDL_AVX512_NR_F64 16

/* The rows of the SIMD kernels' partial-tile loops (UK_QUARTER_ROWS,
 * UK_LOW_MID_ROWS, UK_MID_ROWS; Note [Half tiles] in cpu_matmul_simd_impl.h),
 * for the driver's tile cuts (Note [Balanced last tiles] in cpu_matmul.c). */
#define NDL_AVX2_MID_ROWS 4
#define NDL_AVX512_QUARTER_ROWS 4
#define NDL_AVX512_LOW_MID_ROWS 8
#define NDL_AVX512_MID_ROWS 10

void ndl_ukernel_generic_f32(int64_t kc, const void *a, int64_t ars, int64_t acs, const void *b,
                             void *c, int64_t ldc, int mr, int nr, int first);
void ndl_ukernel_generic_f64(int64_t kc, const void *a, int64_t ars, int64_t acs, const void *b,
                             void *c, int64_t ldc, int mr, int nr, int first);
void ndl_ukernel_avx2_f32(int64_t kc, const void *a, int64_t ars, int64_t acs, const void *b,
                          void *c, int64_t ldc, int mr, int nr, int first);
void ndl_ukernel_avx2_f64(int64_t kc, const void *a, int64_t ars, int64_t acs, const void *b,
                          void *c, int64_t ldc, int mr, int nr, int first);
void ndl_ukernel_avx512_f32(int64_t kc, const void *a, int64_t ars, int64_t acs, const void *b,
                            void *c, int64_t ldc, int mr, int nr, int first);
void ndl_ukernel_avx512_f64(int64_t kc, const void *a, int64_t ars, int64_t acs, const void *b,
                            void *c, int64_t ldc, int mr, int nr, int first);
void ndl_ukernel_avx2_f32_packed(int64_t kc, const void *a, int64_t ars, int64_t acs,
                                 const void *b, void *c, int64_t ldc, int mr, int nr, int first);
void ndl_ukernel_avx2_f64_packed(int64_t kc, const void *a, int64_t ars, int64_t acs,
                                 const void *b, void *c, int64_t ldc, int mr, int nr, int first);
void ndl_ukernel_avx512_f32_packed(int64_t kc, const void *a, int64_t ars, int64_t acs,
                                   const void *b, void *c, int64_t ldc, int mr, int nr, int first);
void ndl_ukernel_avx512_f64_packed(int64_t kc, const void *a, int64_t ars, int64_t acs,
                                   const void *b, void *c, int64_t ldc, int mr, int nr, int first);

/* The packed-A kernel that reads a B panel of nr <= NR columns where it
 * lies (B[k][j] = b[k*rsb + j], j < nr, rsb may be 0; nothing past the nr
 * columns is read) and stores it packed at bp on the way, zeros past nr,
 * for the panel's other tiles; bp = NULL, the panel's only tile: nothing
 * stored (Note [Packing B in the kernel] in cpu_matmul_simd_impl.h). The
 * bits of the packed kernel. A is a packed panel of ak rows (A[r][k] at
 * a[k*ak + r], zeros past mr): MR, or fewer but at least the rows of the
 * loop that mr runs (Note [One narrow A panel] in cpu_matmul.c). */
typedef void (*ndl_ukernel_fill)(int64_t kc, const void *a, int64_t ak, const void *b,
                                 int64_t rsb, void *bp, void *c, int64_t ldc, int mr, int nr,
                                 int first);
#define NDL_DECLARE_FILL(SFX)                                                                      \
    void ndl_ukernel_##SFX##_fill(int64_t kc, const void *a, int64_t ak, const void *b,           \
                                  int64_t rsb, void *bp, void *c, int64_t ldc, int mr, int nr,    \
                                  int first);
NDL_DECLARE_FILL(avx2_f32)
NDL_DECLARE_FILL(avx2_f64)
NDL_DECLARE_FILL(avx512_f32)
NDL_DECLARE_FILL(avx512_f64)

/* A tile of a whole panel (NR columns) that packs its rows of A on the way
 * (Note [Packing A in the kernel] in cpu_matmul_simd_impl.h): the packed
 * kernel's C for mr <= MR rows of A read in place (A[r][k] = a[r*ars + k])
 * and B by rows (B[k][j] = b[k*rsb + j]), storing A[r][k] at ap[k*MR + r]
 * for the rows of the loop that mr runs (past mr: row 0's). The bits of
 * the packed kernel. AVX-512 only. */
typedef void (*ndl_ukernel_pack_a)(int64_t kc, const void *a, int64_t ars, const void *b,
                                   int64_t rsb, void *ap, void *c, int64_t ldc, int mr,
                                   int first);
#define NDL_DECLARE_PACK_A(SFX)                                                                    \
    void ndl_ukernel_##SFX##_pack_a(int64_t kc, const void *a, int64_t ars, const void *b,        \
                                    int64_t rsb, void *ap, void *c, int64_t ldc, int mr,          \
                                    int first);
NDL_DECLARE_PACK_A(avx512_f32)
NDL_DECLARE_PACK_A(avx512_f64)

/* One row of C in registers (Note [One row in registers] in
 * cpu_matmul_row_impl.h): C[j] for j < nr, with
 *   acc[j] = fma(a[k*acs], b[k*rsb + j], acc[j])   for k < kc in order, from 0
 *   first ? C[j] = acc[j] : C[j] += acc[j]
 * B read where it lies; nothing past the nr columns is read or written.
 * 1 <= nr < (NDL_ROW_VECS + 1) * VW (VW: the lanes of a vector, NR / 2),
 * kc >= 1. The bits of the axpy loops and the packed kernels. */
#define NDL_ROW_VECS 12 /* whole vectors of a strip; one more, masked, for the rest */
typedef void (*ndl_ukernel_row)(int64_t kc, const void *a, int64_t acs, const void *b,
                                int64_t rsb, void *c, int nr, int first);
#define NDL_DECLARE_ROW(SFX)                                                                       \
    void ndl_ukernel_##SFX##_row(int64_t kc, const void *a, int64_t acs, const void *b,           \
                                 int64_t rsb, void *c, int nr, int first);
NDL_DECLARE_ROW(avx2_f32)
NDL_DECLARE_ROW(avx2_f64)
NDL_DECLARE_ROW(avx512_f32)
NDL_DECLARE_ROW(avx512_f64)

/* Skinny products (cpu_matmul_small.c): C[r][j] for r < m, j0 <= j < j1.
 * axpy: B's rows contiguous (B[k][j] = b[k*rsb + j]); jl2 columns at a time;
 * k in blocks of kc, the second and later blocks summed in scratch (m x
 * min(jl2, j1 - j0) elements and NDL_AXPY_PAGE bytes more; NULL to sum
 * straight into C when it could not be allocated: the same value, other
 * last bits), and all of them when C lies near B (Note [Axpy rows away
 * from B's]: the same bits).
 * dot: B's columns contiguous (B[k][j] = b[j*csb + k]), A's rows too. */
/* Note [Axpy rows away from B's]
 *   The axpy loops store each row of C's chunk, then load the next
 *   columns of B's rows. When C's row and B's rows lie at nearly the same
 *   address modulo 4 KiB, a load looks like the store just made (the CPU
 *   compares the low 12 bits first) and waits for it: 8 x 1024 @ 1024 x
 *   1024 float32, every row 4 KiB, ran 38-41 GFLOP/s with C within 256
 *   bytes of B modulo 4 KiB and 56-59 elsewhere (AMD EPYC Zen 2, 1 thread;
 *   which one a program got depended on where malloc put C: the size of
 *   the environment moved it, and bench_ndarray's children got 40). So
 *   when C's chunk is within NDL_AXPY_NEAR bytes of B's (modulo 4 KiB) the
 *   loops sum every KC block in scratch placed half a page from B's chunk,
 *   then copy the first block's chains to C and add the others' as
 *   always: the same bits, and 56-58 GFLOP/s at every offset. */
#define NDL_AXPY_PAGE 4096
#define NDL_AXPY_NEAR 1024

/* Within NDL_AXPY_NEAR bytes of each other, modulo NDL_AXPY_PAGE. */
static inline int ndl_axpy_near(const void *c, const void *b)
{
    uintptr_t d = ((uintptr_t)c - (uintptr_t)b) % NDL_AXPY_PAGE;
    return d < NDL_AXPY_NEAR || d > NDL_AXPY_PAGE - NDL_AXPY_NEAR;
}

/* The place in `raw` (NDL_AXPY_PAGE bytes longer than needed) half a page
 * from b, modulo NDL_AXPY_PAGE. */
static inline void *ndl_axpy_place(void *raw, const void *b)
{
    uintptr_t want = ((uintptr_t)b + NDL_AXPY_PAGE / 2) % NDL_AXPY_PAGE;
    return (char *)raw + (want - (uintptr_t)raw % NDL_AXPY_PAGE + NDL_AXPY_PAGE) % NDL_AXPY_PAGE;
}

typedef void (*ndl_small_axpy)(int64_t m, int64_t n, const void *a, int64_t rsa, int64_t csa,
                               const void *b, int64_t rsb, void *c, int64_t ldc, int64_t j0,
                               int64_t j1, int64_t jl2, int64_t kc, void *scratch);
typedef void (*ndl_small_dot)(int64_t m, int64_t n, const void *a, int64_t rsa, const void *b,
                              int64_t csb, void *c, int64_t ldc, int64_t j0, int64_t j1);
#define NDL_DECLARE_SMALL(SFX)                                                                     \
    void ndl_small_axpy_##SFX(int64_t m, int64_t n, const void *a, int64_t rsa, int64_t csa,      \
                              const void *b, int64_t rsb, void *c, int64_t ldc, int64_t j0,       \
                              int64_t j1, int64_t jl2, int64_t kc, void *scratch);                \
    void ndl_small_dot_##SFX(int64_t m, int64_t n, const void *a, int64_t rsa, const void *b,     \
                             int64_t csb, void *c, int64_t ldc, int64_t j0, int64_t j1);
NDL_DECLARE_SMALL(generic_f32)
NDL_DECLARE_SMALL(generic_f64)
NDL_DECLARE_SMALL(avx2_f32)
NDL_DECLARE_SMALL(avx2_f64)
NDL_DECLARE_SMALL(avx512_f32)
NDL_DECLARE_SMALL(avx512_f64)

/* Skinny products with B's columns contiguous (B[k][j] = b[j*csb + k], B =
 * W.T), W transposed in registers (cpu_matmul_bt_avx2.c, Note [Transposing
 * W in registers]; x86 with AVX2 and FMA; cpu_matmul_bt_avx512.c, Note
 * [Transposing W in zmm registers]): C[r][j] for r < m, j0 <= j < j1,
 * the chains of Note [One chain per element] with KC = kc. The driver
 * calls them up to NDL_*_BT_M rows (each group of W transposed once for
 * all of them), and from one more row computes C.T = W @ x.T (Note [x @
 * W.T by W @ x.T] in cpu_matmul.c). */
#define NDL_AVX2_BT_M 4
#define NDL_AVX512_BT_M 8     /* rows of A per pass; float32's limit */
#define NDL_AVX512_BT_M_F64 6 /* float64's: Note [Transposing W in zmm registers] */
typedef void (*ndl_small_bt)(int64_t m, int64_t n, const void *a, int64_t rsa, int64_t csa,
                             const void *b, int64_t csb, void *c, int64_t ldc, int64_t j0,
                             int64_t j1, int64_t kc);
void ndl_small_bt_f32(int64_t m, int64_t n, const void *a, int64_t rsa, int64_t csa,
                      const void *b, int64_t csb, void *c, int64_t ldc, int64_t j0, int64_t j1,
                      int64_t kc);
void ndl_small_bt_f64(int64_t m, int64_t n, const void *a, int64_t rsa, int64_t csa,
                      const void *b, int64_t csb, void *c, int64_t ldc, int64_t j0, int64_t j1,
                      int64_t kc);
void ndl_small_bt_avx512_f32(int64_t m, int64_t n, const void *a, int64_t rsa, int64_t csa,
                             const void *b, int64_t csb, void *c, int64_t ldc, int64_t j0,
                             int64_t j1, int64_t kc);
void ndl_small_bt_avx512_f64(int64_t m, int64_t n, const void *a, int64_t rsa, int64_t csa,
                             const void *b, int64_t csb, void *c, int64_t ldc, int64_t j0,
                             int64_t j1, int64_t kc);

/* Packing a B block whose columns are contiguous (B[k][j] = src[j*cs + k])
 * into nr-column panels, kc x nc (cpu_matmul_pack_avx2.c; x86 with AVX2). */
typedef void (*ndl_pack_bt)(const void *src, int64_t cs, int64_t kc, int64_t nc, int nr,
                            void *dst);
void ndl_pack_bt_f32(const void *src, int64_t cs, int64_t kc, int64_t nc, int nr, void *dst);
void ndl_pack_bt_f64(const void *src, int64_t cs, int64_t kc, int64_t nc, int nr, void *dst);

/* The chosen kernel of a dtype, for a driver outside cpu_matmul.c (Note
 * [Conv rows in place], cpu_conv_rows.c): the in-place kernel (A through
 * its strides, B a packed panel), its tile and its KC. ndl_cpu_pack_b packs
 * kc x nc of B (strides rs, cs in elements) into nr-column panels, the last
 * padded with zeros: what that kernel reads (Note [Packed panels]). */
typedef struct {
    ndl_ukernel kernel;
    int mr, nr;
    int64_t kc;
} ndl_gemm_tile;
ndl_gemm_tile ndl_cpu_gemm_tile(ndl_dtype dt);
void ndl_cpu_pack_b(ndl_dtype dt, const void *src, int64_t rs, int64_t cs, int64_t kc, int64_t nc,
                    int nr, void *dst);

/* Scratch kept between products (Note [Kept scratch], cpu_matmul_scratch.c):
 * get returns `bytes` bytes, 64-byte aligned, or NULL when out of memory;
 * put gives them back (NULL: nothing). */
void *ndl_matmul_scratch_get(size_t bytes);
void ndl_matmul_scratch_put(void *p);

#endif /* NDL_CPU_MATMUL_H */
