/* cpu_matmul_simd_impl.h: the SIMD micro-kernel of ndl_cpu_matmul for ONE
 * instruction set and ONE element type. Template header:
 * cpu_matmul_avx2.c and cpu_matmul_avx512.c include it once per dtype;
 * never include it anywhere else. Contract and packed layout: Note [Packed
 * panels] in cpu_matmul.h.
 *
 * Register plan: the MR x NR tile of C lives in 2 * MR vector accumulators
 * (a row of NR is two vectors); each k step loads 2 vectors of B and
 * broadcasts A[r][k] once per row.
 *
 * Expects, for the whole ISA (defined once by the including file, kept):
 *   UK_ISA           name part of the kernels (avx2 / avx512)
 *   UK_TARGET        function attribute selecting the ISA
 *   UK_ROWS(X)       X(0) X(1) ... X(MR - 1)
 *   UK_HALF_ROWS(X)  X(0) X(1) ... X(MR / 2 - 1)
 *   UK_MID_ROWS(X)   X(0) X(1) ... X(UK_MID - 1), MR / 2 < UK_MID < MR
 *                    (Note [Half tiles])
 *   UK_MID_ROWS_H    UK_MID as cpu_matmul.h states it for the driver
 *                    (NDL_<ISA>_MID_ROWS; checked equal)
 *   UK_QUARTER_ROWS(X) (optional) X(0) ... X(q - 1), q < MR / 2: a loop
 *                    for tiles of at most q rows (Note [Half tiles])
 *   UK_KU            k steps per unrolled group of the packed kernel, 1, 2
 *                    or 4 (Note [Packed A kernel])
 *   UK_C_LEAD        k steps before the end at which the tile of C is
 *                    fetched into L1; 0: at the start, with the rest
 *                    (Note [Fetching C late])
 *   and for each dtype dt (f32 / f64):
 *   UK_VEC_dt        its vector type, e.g. __m256
 *   UK_OP_dt(op)     intrinsic `op` on that vector type, e.g. _mm256_fmadd_ps
 *   UK_BCAST_dt(p)   the vector with *p in every lane
 *   uk_lanes_dt(n)   mask selecting the first n lanes (none for n <= 0)
 *   UK_MASKLOAD(p, m), UK_MASKSTORE(p, m, v)
 *                    load / store of the lanes in mask m, which never fault
 *                    on the others; written with MM(op), the dtype's UK_OP
 *   UK_HALF_VEC      (optional) 1 for tiles of at most VW / 2 columns in
 *                    vectors of half the width (Note [Narrow tiles in half
 *                    registers]), with for each dtype UK_HVEC_dt (that
 *                    type), UK_HSETZERO_dt(), UK_HBCAST_dt(p),
 *                    UK_HFMADD_dt(a, b, c), UK_HLOW_dt(v) (the low half of
 *                    a V) and UK_HWIDEN_dt(h) (h as a V, zeros above)
 *   UK_TSTORE_dt     (optional) for tiles down the rows (Note [Narrow tiles
 *                    down the rows]): UK_TSTORE_dt(t, nr, mr, c, ldc,
 *                    first) stores rows r < mr (mr <= VW) of the columns
 *                    j < nr whose lane r of t[j] holds C[r][j] (masked:
 *                    nothing past them), adding to C unless first
 *   UK_PACK_A        (optional) 1 for ndl_ukernel_<UK_ISA>_<UK_DT>_pack_a,
 *                    which packs A's panel on the way (Note [Packing A in
 *                    the kernel])
 * and per dtype (#undef'd again at the end):
 *   T                element type (float / double)
 *   UK_DT            dtype suffix (f32 / f64)
 *   UK_MR, UK_NR     the tile, from cpu_matmul.h
 * Defines ndl_ukernel_<UK_ISA>_<UK_DT> and, for A packed, its faster
 * ndl_ukernel_<UK_ISA>_<UK_DT>_packed (Note [Packed A kernel]),
 * ndl_ukernel_<UK_ISA>_<UK_DT>_fill, which packs its B panel on the way
 * (Note [Packing B in the kernel]), its counterpart for A where UK_PACK_A,
 * and ndl_ukernel_<UK_ISA>_<UK_DT>_row,
 * one row of C in registers (cpu_matmul_row_impl.h). Elsewhere than on x86
 * those are stubs (the generic kernel, or its loops), only there so that
 * the driver links: they are never chosen.
 *
 * Note [Half tiles]
 *   A partial tile of at most MR / 2 rows (the last rows of a product: m =
 *   32 is five 6-row tiles and a 2-row one) runs a loop over the first
 *   MR / 2 rows only, not all MR with the missing ones recomputed from row
 *   0: half the multiply-adds, for the same operations on every row it
 *   keeps (the bits do not change). Zen 3, 1 thread, K = N = 1024: m = 20
 *   and 32 +4..8% (float64 m = 32 +9%), m = 64 (a 4-row last tile) and
 *   square products unchanged. A second loop, over the first UK_MID rows
 *   (UK_MID_ROWS: 4 of 6 on AVX2, 10 of 14 on AVX-512), takes the partial
 *   tiles between: m = 64 is ten 6-row tiles and a 4-row one, which the
 *   6-row loop computed as 6 (3% of the product): Zen 3, 1 thread, float32
 *   m = 64, K = N = 1024 and 4096, +2..4% (to NumPy's speed).
 *   AVX-512's 14 rows have a fourth loop, over UK_QUARTER_ROWS (4 rows: 8
 *   accumulators, as many FMAs as two FMA units keep in flight at a 4-cycle
 *   latency), for few-row products with B by rows (x @ W at batch 3 or 4,
 *   which the float32 axpy loops no longer take: Note [Axpy rows per tile]
 *   in cpu_matmul.c) and last tiles of 14 q + 4 rows; the 7-row loop ran 3
 *   or 4 rows with 4 or 3 of 7 wasted. Xeon (Emerald Rapids), 1 thread,
 *   float32, GFLOP/s, 7 -> 4 rows: 4 x 512 @ 512 x 512 89-90 -> 108-113, 3 x
 *   512 x 512 69 -> 82-84, 3 x 1000 x 300 43-44 -> 49-50, 4 x 4096 x 4096
 *   51-53 -> 56-58 (B from memory). AVX2's 6 rows have none (its half is 3).
 *   And a fifth loop over UK_LOW_MID_ROWS (8 rows, between the half and
 *   UK_MID): m = 8, a batch of 8 rows, ran 10 rows for 8, and m = 14 q + 8
 *   (64, 512, 4096: every power of two from 8 is 14 q + 2, 4 or 8) ended
 *   in the same 10-row loop; the 8-row loop also lets the driver cut m =
 *   14 q + 1 and 2 into 8 + 7 and 8 + 8 (Note [Balanced last tiles] in
 *   cpu_matmul.c). AMD EPYC Zen 4 (family 25 model 17), 1 thread, GFLOP/s,
 *   interleaved medians, before -> after: float32 8 x 784 @ 784 x 100 74
 *   -> 90 (OpenBLAS 0.3.31's SkylakeX kernel 94), 8 x 256 x 256 86 -> 105
 *   (103), m = 15, 29 and 64 with K = N = 1024 91 -> 100, 99 -> 106, 102
 *   -> 108; float64 (with Note [Few rows on the filling kernel]) 8 x 784 x
 *   100 32 -> 48 (49-52), 8 x 256 x 256 37 -> 53 (48-53).
 *
 * NOTE: the accumulators are named variables (c<row>_<vec>), not an array:
 * gcc 12 keeps an array of vectors in memory and stores it back on every k
 * step, which halves the kernel's speed.
 */

#define UK_PASTE_(a, b) a##b
#define UK_PASTE(a, b) UK_PASTE_(a, b)
#define UK_KERNEL UK_PASTE(UK_PASTE(ndl_ukernel_, UK_ISA), UK_PASTE(_, UK_DT))
#define UK_KERNEL_PACKED UK_PASTE(UK_KERNEL, _packed)
#define UK_KERNEL_FILL UK_PASTE(UK_KERNEL, _fill)
#define UK_KERNEL_ROW UK_PASTE(UK_KERNEL, _row)
#define UK_KERNEL_PACK_A UK_PASTE(UK_KERNEL, _pack_a)

#if defined(__x86_64__) || defined(__i386__)

#define V UK_PASTE(UK_VEC_, UK_DT)
#define MM(op) UK_PASTE(UK_OP_, UK_DT)(op)
#define BCAST UK_PASTE(UK_BCAST_, UK_DT)
#define LANES UK_PASTE(uk_lanes_, UK_DT)
#define VW ((int)(sizeof(V) / sizeof(T))) /* lanes of V */

#define UK_ONE(r) +1
_Static_assert(0 UK_ROWS(UK_ONE) == UK_MR && UK_NR == 2 * VW, "tile does not match UK_ROWS, V");
_Static_assert(0 UK_HALF_ROWS(UK_ONE) == UK_MR / 2, "UK_HALF_ROWS is not the first MR / 2 rows");
#define UK_MID (0 UK_MID_ROWS(UK_ONE))
_Static_assert(UK_MID > UK_MR / 2 && UK_MID < UK_MR, "UK_MID_ROWS is not between half and MR");
_Static_assert(UK_MID == UK_MID_ROWS_H, "UK_MID_ROWS is not cpu_matmul.h's NDL_<ISA>_MID_ROWS");

/* row r of A (rows past mr read row 0, see cpu_matmul.h) */
#define APTR(r) const T *a##r = a + (r < mr ? r : 0) * ars;
#define DECL(r) V c##r##_0 = MM(setzero)(), c##r##_1 = MM(setzero)();
#define STEP(r)                                                                    \
    {                                                                              \
        V ar = BCAST(a##r + off);                                                  \
        c##r##_0 = MM(fmadd)(ar, b0, c##r##_0);                                    \
        c##r##_1 = MM(fmadd)(ar, b1, c##r##_1);                                    \
    }
/* the first vector only: a tile of at most VW columns (Note [Narrow tiles]) */
#define STEP1(r)                                                                   \
    {                                                                              \
        V ar = BCAST(a##r + off);                                                  \
        c##r##_0 = MM(fmadd)(ar, b0, c##r##_0);                                    \
    }
#define STORE(r)                                                                   \
    if (first) {                                                                   \
        MM(storeu)(c + r * ldc, c##r##_0);                                         \
        MM(storeu)(c + r * ldc + VW, c##r##_1);                                    \
    } else {                                                                       \
        MM(storeu)(c + r * ldc, MM(add)(MM(loadu)(c + r * ldc), c##r##_0));        \
        MM(storeu)(c + r * ldc + VW, MM(add)(MM(loadu)(c + r * ldc + VW), c##r##_1)); \
    }
#define STORE_PARTIAL(r)                                                           \
    if (r < mr) {                                                                  \
        V v0 = c##r##_0, v1 = c##r##_1;                                            \
        if (!first) {                                                              \
            v0 = MM(add)(UK_MASKLOAD(c + r * ldc, m0), v0);                        \
            v1 = MM(add)(UK_MASKLOAD(c + r * ldc + VW, m1), v1);                   \
        }                                                                          \
        UK_MASKSTORE(c + r * ldc, m0, v0);                                         \
        UK_MASKSTORE(c + r * ldc + VW, m1, v1);                                    \
    }

/* Note [Fetching C late]
 *   A kernel call reads and writes its MR x NR tile of C once, after KC k
 *   steps, and the tile is usually far away: the C block of a (pc, ic) pass
 *   is MC rows by NC columns (336 x 2048 float32, 2.6 MiB, for n = 2048 on
 *   the Xeon below) and leaves L2 before the next pass comes back to it.
 *   The kernels prefetch its lines at the start, hidden behind the k loop.
 *   Into L1 at once, the lines do not survive the loop when the rows are 4
 *   KiB apart or a multiple of it (a power-of-two n): every row falls in
 *   the same L1 set (4 KiB period; 12 ways on recent Intel cores, 8 on
 *   AMD's) together with B panel lines, so 14 rows of the AVX-512 tile
 *   evict one another, and the loads after the loop miss L1 all together.
 *   So with UK_C_LEAD > 0 the start prefetch goes to L2 (T1), whose sets
 *   are 32-128 KiB apart, and a second one, UK_C_LEAD steps before the end,
 *   brings the tile to L1 just in time (48 steps: ~670 cycles, several L2
 *   latencies). Xeon (Emerald Rapids), 1 thread, float32 square GFLOP/s,
 *   interleaved runs, before -> after (with KC 336, MC 518 then: Note
 *   [Block sizes]): n = 1024 145-151 -> 148-151, 2048 142-146 -> 149-151,
 *   4096 148-149 -> 151-153; the kernel alone over a 4 MB C with 8 KiB rows
 *   159-160 -> 161-166. 2 threads unchanged. AVX2 keeps UK_C_LEAD = 0: its
 *   6-row tile fits an L1 set, and the split cost it 2% (83.9-84.3 ->
 *   82.3-82.5 GFLOP/s at n = 2048 on the same Xeon). */
#if UK_C_LEAD > 0
#define UK_C_START _MM_HINT_T1
#else
#define UK_C_START _MM_HINT_T0
#endif
/* prefetch the first and last line of each of the tile's rows of C */
#define PREFETCH_C(HINT)                                                           \
    for (int r = 0; r < mr; r++) {                                                 \
        _mm_prefetch((const char *)(c + r * ldc), HINT);                           \
        _mm_prefetch((const char *)(c + r * ldc + UK_NR - 1), HINT);               \
    }
/* rows r < mr of ROWS, masked to columns j < nr */
#define STORE_MASKED(ROWS)                                                         \
    {                                                                              \
        const __auto_type m0 = LANES(nr);                                          \
        const __auto_type m1 = LANES(nr - VW);                                     \
        ROWS(STORE_PARTIAL)                                                        \
    }
/* the loop over UK_QUARTER_ROWS, where the ISA has one (Note [Half tiles]) */
#ifdef UK_QUARTER_ROWS
_Static_assert(0 UK_QUARTER_ROWS(UK_ONE) < UK_MR / 2, "UK_QUARTER_ROWS is not below MR / 2");
_Static_assert(0 UK_QUARTER_ROWS(UK_ONE) == UK_QUARTER_ROWS_H,
               "UK_QUARTER_ROWS is not cpu_matmul.h's NDL_<ISA>_QUARTER_ROWS");
#define UK_QUARTER(LOOP)                                                           \
    if (mr <= 0 UK_QUARTER_ROWS(UK_ONE)) {                                         \
        LOOP(UK_QUARTER_ROWS)                                                      \
        STORE_MASKED(UK_QUARTER_ROWS)                                              \
        return;                                                                    \
    }
#else
#define UK_QUARTER(LOOP)
#endif
/* the loop over UK_LOW_MID_ROWS, where the ISA has one (Note [Half tiles]) */
#ifdef UK_LOW_MID_ROWS
#define UK_LOW_MID (0 UK_LOW_MID_ROWS(UK_ONE))
_Static_assert(UK_LOW_MID > UK_MR / 2 && UK_LOW_MID < UK_MID,
               "UK_LOW_MID_ROWS is not between half and UK_MID rows");
_Static_assert(UK_LOW_MID == UK_LOW_MID_ROWS_H,
               "UK_LOW_MID_ROWS is not cpu_matmul.h's NDL_<ISA>_LOW_MID_ROWS");
#define UK_LOW_MID_TILE(LOOP)                                                      \
    if (mr <= UK_LOW_MID) {                                                        \
        LOOP(UK_LOW_MID_ROWS)                                                      \
        STORE_MASKED(UK_LOW_MID_ROWS)                                              \
        return;                                                                    \
    }
#else
#define UK_LOW_MID_TILE(LOOP)
#endif
/* A kernel's body after its declarations: the k loop LOOP(ROWS) over the
 * first UK_QUARTER_ROWS (where there are), MR / 2, UK_LOW_MID_ROWS (where
 * there are), UK_MID or MR rows (Note [Half tiles]), then the stores */
#define TILE_BODY(LOOP)                                                            \
    PREFETCH_C(UK_C_START)                                                         \
    UK_QUARTER(LOOP)                                                               \
    if (mr <= UK_MR / 2) {                                                         \
        LOOP(UK_HALF_ROWS)                                                         \
        STORE_MASKED(UK_HALF_ROWS)                                                 \
        return;                                                                    \
    }                                                                              \
    UK_LOW_MID_TILE(LOOP)                                                          \
    if (mr <= UK_MID) {                                                            \
        LOOP(UK_MID_ROWS)                                                          \
        STORE_MASKED(UK_MID_ROWS)                                                  \
        return;                                                                    \
    }                                                                              \
    LOOP(UK_ROWS)                                                                  \
    if (mr == UK_MR && nr == UK_NR) {                                              \
        UK_ROWS(STORE)                                                             \
        return;                                                                    \
    }                                                                              \
    STORE_MASKED(UK_ROWS)
/* the k steps up to END of the general kernel: A through one pointer per
 * row, off = k acs; the step S of each row (STEP, or STEP1 for a narrow
 * tile: b1 is then unused, and the compiler drops its load) */
#define K_STEPS_(ROWS, END, S)                                                     \
    for (; k < (END); k++) {                                                       \
        V b0 = MM(loadu)(b), b1 = MM(loadu)(b + VW);                               \
        (void)b1;                                                                  \
        ROWS(S)                                                                    \
        off += acs;                                                                \
        b += UK_NR;                                                                \
    }
#define K_STEPS(ROWS, END) K_STEPS_(ROWS, END, STEP)
#define K_STEPS1(ROWS, END) K_STEPS_(ROWS, END, STEP1)
/* STEPS(ROWS, END) from k up to kc, with C brought into L1 UK_C_LEAD steps
 * before the end (Note [Fetching C late]) */
#define C_LATE(STEPS, ROWS)                                                        \
    if (UK_C_LEAD > 0) {                                                           \
        STEPS(ROWS, kc - UK_C_LEAD)                                                \
        PREFETCH_C(_MM_HINT_T0)                                                    \
    }                                                                              \
    STEPS(ROWS, kc)
#define K_LOOP(ROWS)                                                               \
    {                                                                              \
        int64_t k = 0;                                                             \
        C_LATE(K_STEPS, ROWS)                                                      \
    }
#define K_LOOP1(ROWS)                                                              \
    {                                                                              \
        int64_t k = 0;                                                             \
        C_LATE(K_STEPS1, ROWS)                                                     \
    }

/* Note [Narrow tiles in half registers]
 *   On AMD's Zen 4 a 512-bit FMA is two 256-bit ones (its FMA units are 256
 *   bits wide): a narrow tile (Note [Narrow tiles] below) of at most VW / 2
 *   columns pays for VW lanes and keeps half. The last panel of p = 100 is
 *   4 columns (float32: 3 panels of 32 and 4; float64: 6 of 16 and 4), one
 *   zmm a row, and cost 12% of 100 x 100 @ 100 x 100 (100 x 100 x 96 ran
 *   100-102 GFLOP/s, 100^3 87-89). Where the ISA offers UK_HALF_VEC
 *   (AVX-512: ymm), such tiles accumulate in half-width vectors h<row>
 *   (HSTEP, PHSTEP: the low half of the B vector the full loops load, a
 *   half-width broadcast of A, one half-width FMA a row and k step), then
 *   widened into c<row>_0 with zeros above, and stored by the same masked
 *   stores. The same FMA on each element kept, in the same order: the bits
 *   do not change. On Intel's server cores (two 512-bit FMA units, or one
 *   512 and two 256) a ymm FMA costs no more than a zmm one. AVX2 has no
 *   such loop: an xmm FMA costs what a ymm one does on every AVX2 core.
 *   Zen 4 (AMD EPYC, family 25 model 17), 1 thread, interleaved medians of
 *   six 1 s runs, GFLOP/s: float32 100^3 90.4 -> 94.8 (OpenBLAS 0.3.31
 *   103-105), 64 x 100 x 100 89.0 -> 91.9; float64 100^3 48.4 -> 50.2 (49-54);
 *   100 x 100 x 96 and the few-row products (8 x 784 x 100: four or eight
 *   chains, bound by the FMA latency either way) unchanged. */
#ifdef UK_HALF_VEC
#define HV UK_PASTE(UK_HVEC_, UK_DT)
#define HSETZERO UK_PASTE(UK_HSETZERO_, UK_DT)
#define HBCAST UK_PASTE(UK_HBCAST_, UK_DT)
#define HFMADD UK_PASTE(UK_HFMADD_, UK_DT)
#define HLOW UK_PASTE(UK_HLOW_, UK_DT)
#define HWIDEN UK_PASTE(UK_HWIDEN_, UK_DT)
#define HDECL(r) HV h##r = HSETZERO();
#define HTOC(r) c##r##_0 = HWIDEN(h##r);
#define HSTEP(r)                                                                   \
    {                                                                              \
        HV ar = HBCAST(a##r + off);                                                \
        h##r = HFMADD(ar, HLOW(b0), h##r);                                         \
    }
/* INNER(ROWS) with half-width accumulators, widened into c<row>_0 after */
#define IN_HALF(INNER, ROWS)                                                       \
    {                                                                              \
        ROWS(HDECL)                                                                \
        INNER(ROWS)                                                                \
        ROWS(HTOC)                                                                 \
    }
#define K_STEPSH(ROWS, END) K_STEPS_(ROWS, END, HSTEP)
#define K_LOOPH_(ROWS)                                                             \
    {                                                                              \
        int64_t k = 0;                                                             \
        C_LATE(K_STEPSH, ROWS)                                                     \
    }
#define K_LOOPH(ROWS) IN_HALF(K_LOOPH_, ROWS)
/* a tile of at most VW / 2 columns: TILE_BODY(LOOP) on half-width vectors */
#define HALF_NARROW(LOOP)                                                          \
    if (nr <= VW / 2) {                                                            \
        TILE_BODY(LOOP)                                                            \
        return;                                                                    \
    }
#else
#define HALF_NARROW(LOOP)
#endif

/* Note [Narrow tiles down the rows]
 *   A tile of few columns computed row by row pays one broadcast and one FMA
 *   per row and k step for the few lanes its columns fill: the last panel of
 *   p = 100 (float32: 4 columns) ran 14 256-bit FMAs a k step, a
 *   classifier's 10 columns 14 512-bit ones for 140 products. On Zen 4 a
 *   loop of one broadcast and one FMA each runs 14 256-bit FMAs in ~11
 *   cycles, not 7 (AMD EPYC family 25 model 17, a loop over L1: 73 GFLOP/s
 *   where two FMAs a broadcast reach 115). Where A is packed, a k step of
 *   the panel is the tile's rows side by side (A[r][k] at a[k MR + r]), so
 *   the tile can run down the rows instead (and so can a tile of A.T @ B, A
 *   read in place: ars = 1, A[r][k] at a[k acs + r]): one vector of A's rows
 *   a k step (two for float64's 14 rows), and for each column j one FMA with
 *   B[k][j] broadcast (from memory, folded into the FMA on AVX-512),
 *   accumulating t<j>_<v>, lane r of which is C[r][j]. nr FMAs a k step (2
 *   nr for two vectors) in place of the rows' R (the rows of the loop that
 *   mr runs, Note [Half tiles]) per vector of columns; taken when that is
 *   fewer, counting a half-width FMA as 3 / 4 of one (Note [Narrow tiles in
 *   half registers]) and at least 4 chains (the FMA latency): 4 max(AV nr,
 *   4) < R ceil(nr / VW) (nr <= VW / 2 ? 3 : 4), for nr up to T_COLS (the
 *   accumulators; T_COLS2 for AV = 2). float32, 14 rows: nr <= 13 and 17..24
 *   (p = 100: 4 FMAs for 14 256-bit ones; p = 10: 10 for 14; p = 20: 20 for
 *   28); float64: nr <= 6 and 9..13. The store transposes the accumulators
 *   in registers (UK_TSTORE_dt, the ISA's; AVX2 has none yet, and its
 *   tiles keep their rows). Each C element gets the FMAs of
 *   its chain in the same k order (Note [One chain per element]; fma(a, b,
 *   c) = fma(b, a, c)): the bits do not change. Zen 4, 1 thread, float32,
 *   best of 3-5 interleaved runs, GFLOP/s, by rows -> down: 100^3 95.9 ->
 *   98.4 (OpenBLAS 0.3.31 104-105), 96 x 96 x
 *   100 95.1 -> 98.1, 64 x 100 x 100 92.9 -> 96.1, 8 x 784 @ 784 x 100 96.1
 *   -> 100.5, 28 x 784 x 100 96.4 -> 99.4; float64 unchanged (100^3 50.9).
 *   A.T @ B (the weight gradient X.T @ dY of a layer with few outputs),
 *   float32: 256 x 128 @ 128 x 10 65.5 -> 72.9 (OpenBLAS 84, PyTorch 13),
 *   128 x 20 67 -> 79.5 (103, 48), 128 x 4 30 -> 53 (71); float64 128 x 10
 *   34 -> 41 (51). Products that are all narrow (p <= 2 NR) read A in place
 *   (Note [Reading A in place] in cpu_matmul.c) and keep their rows: packing
 *   A for this loop cost as much as it saved (A by rows, 128 x 256 @ 256 x 8: 64 -> 53,
 *   4 columns 32 -> 35, the transposes of pack_bt 39% of the samples). */
#ifdef UK_TRANS
#define TSTORE UK_PASTE(UK_TSTORE_, UK_DT)
#define T_COLS 24  /* accumulators for one vector of rows */
#define T_COLS2 13 /* for two (float64's 14 rows) */
/* the most a tile down one vector of rows takes: T_COLS, or NR - 1 (float64) */
#define T_COLS1 (UK_NR - 1 < T_COLS ? UK_NR - 1 : T_COLS)
#define TC1(X) X(0)
#define TC2(X) TC1(X) X(1)
#define TC3(X) TC2(X) X(2)
#define TC4(X) TC3(X) X(3)
#define TC5(X) TC4(X) X(4)
#define TC6(X) TC5(X) X(5)
#define TC7(X) TC6(X) X(6)
#define TC8(X) TC7(X) X(7)
#define TC9(X) TC8(X) X(8)
#define TC10(X) TC9(X) X(9)
#define TC11(X) TC10(X) X(10)
#define TC12(X) TC11(X) X(11)
#define TC13(X) TC12(X) X(12)
#define TC14(X) TC13(X) X(13)
#define TC15(X) TC14(X) X(14)
#define TC16(X) TC15(X) X(15)
#define TC17(X) TC16(X) X(16)
#define TC18(X) TC17(X) X(17)
#define TC19(X) TC18(X) X(18)
#define TC20(X) TC19(X) X(19)
#define TC21(X) TC20(X) X(20)
#define TC22(X) TC21(X) X(21)
#define TC23(X) TC22(X) X(22)
#define TC24(X) TC23(X) X(23)
#define TDECL1(j) V t##j##_0 = MM(setzero)();
#define TDECL2(j) V t##j##_0 = MM(setzero)(), t##j##_1 = MM(setzero)();
/* column j of k step bk (B[k][j] at bk[j]), for one or two vectors of rows */
#define TSTEP1(j)                                                                  \
    {                                                                              \
        V bj = BCAST(bk + j);                                                      \
        t##j##_0 = MM(fmadd)(a0, bj, t##j##_0);                                    \
    }
#define TSTEP2(j)                                                                  \
    {                                                                              \
        V bj = BCAST(bk + j);                                                      \
        t##j##_0 = MM(fmadd)(a0, bj, t##j##_0);                                    \
        t##j##_1 = MM(fmadd)(a1, bj, t##j##_1);                                    \
    }
#define TSPILL1(j) tv[j] = t##j##_0;
#define TSPILL2(j) tv[j] = t##j##_0, tw[j] = t##j##_1;
/* A's rows at k: the first mr lanes (rows past them zeros), or VW and mr - VW */
#define TA1 V a0 = UK_MASKLOAD(a, am0);
#define TA2 V a0 = MM(loadu)(a), a1 = UK_MASKLOAD(a + VW, am1);
/* the k steps up to END: A's rows (TA), B's row k at bk = b, before the
 * FMAs PRE (the filling kernel's copy of B's row to bp), then the bumps */
#define T_STEPS_(COLS, END, TA, TS, PRE, ASTEP, BSTEP)                             \
    for (; k < (END); k++) {                                                       \
        const T *bk = b;                                                           \
        TA PRE COLS(TS)                                                            \
        a += (ASTEP);                                                              \
        b += (BSTEP);                                                              \
    }
#define T_GK1(COLS, END) T_STEPS_(COLS, END, TA1, TSTEP1, , acs, UK_NR)
#define T_GK2(COLS, END) T_STEPS_(COLS, END, TA2, TSTEP2, , acs, UK_NR)
#define T_PK1(COLS, END) T_STEPS_(COLS, END, TA1, TSTEP1, , UK_MR, UK_NR)
#define T_PK2(COLS, END) T_STEPS_(COLS, END, TA2, TSTEP2, , UK_MR, UK_NR)
#define T_FILL_B                                                                   \
    {                                                                              \
        LOAD_B_PART(void) b1;                                                      \
        PREFETCH_B                                                                 \
        STORE_B                                                                    \
    }
#define T_FK1(COLS, END) T_STEPS_(COLS, END, TA1, TSTEP1, T_FILL_B, ak, rsb)
#define T_FK2(COLS, END) T_STEPS_(COLS, END, TA2, TSTEP2, T_FILL_B, ak, rsb)
#define T_RK1(COLS, END) T_STEPS_(COLS, END, TA1, TSTEP1, PREFETCH_B, ak, rsb)
#define T_RK2(COLS, END) T_STEPS_(COLS, END, TA2, TSTEP2, PREFETCH_B, ak, rsb)
/* nr = n columns: the loop STEPS (C into L1 as in K_LOOP), then the spill */
#define T_CASE(n, STEPS, DECL_, SPILL, MAX)                                        \
    case n:                                                                        \
        if (n <= (MAX)) {                                                          \
            TC##n(DECL_) int64_t k = 0;                                            \
            C_LATE(STEPS, TC##n)                                                   \
            TC##n(SPILL)                                                           \
        }                                                                          \
        break;
#define T_CASES(STEPS, DECL_, SPILL, MAX)                                          \
    switch (nr) {                                                                  \
        T_CASE(1, STEPS, DECL_, SPILL, MAX)                                        \
        T_CASE(2, STEPS, DECL_, SPILL, MAX)                                        \
        T_CASE(3, STEPS, DECL_, SPILL, MAX)                                        \
        T_CASE(4, STEPS, DECL_, SPILL, MAX)                                        \
        T_CASE(5, STEPS, DECL_, SPILL, MAX)                                        \
        T_CASE(6, STEPS, DECL_, SPILL, MAX)                                        \
        T_CASE(7, STEPS, DECL_, SPILL, MAX)                                        \
        T_CASE(8, STEPS, DECL_, SPILL, MAX)                                        \
        T_CASE(9, STEPS, DECL_, SPILL, MAX)                                        \
        T_CASE(10, STEPS, DECL_, SPILL, MAX)                                       \
        T_CASE(11, STEPS, DECL_, SPILL, MAX)                                       \
        T_CASE(12, STEPS, DECL_, SPILL, MAX)                                       \
        T_CASE(13, STEPS, DECL_, SPILL, MAX)                                       \
        T_CASE(14, STEPS, DECL_, SPILL, MAX)                                       \
        T_CASE(15, STEPS, DECL_, SPILL, MAX)                                       \
        T_CASE(16, STEPS, DECL_, SPILL, MAX)                                       \
        T_CASE(17, STEPS, DECL_, SPILL, MAX)                                       \
        T_CASE(18, STEPS, DECL_, SPILL, MAX)                                       \
        T_CASE(19, STEPS, DECL_, SPILL, MAX)                                       \
        T_CASE(20, STEPS, DECL_, SPILL, MAX)                                       \
        T_CASE(21, STEPS, DECL_, SPILL, MAX)                                       \
        T_CASE(22, STEPS, DECL_, SPILL, MAX)                                       \
        T_CASE(23, STEPS, DECL_, SPILL, MAX)                                       \
        T_CASE(24, STEPS, DECL_, SPILL, MAX)                                       \
    default:                                                                       \
        break;                                                                     \
    }
/* the whole tile down the rows: STEPS1 / STEPS2 for one or two vectors of
 * rows, then the stores (rows from VW on: the second vector's) */
#define T_BODY(STEPS1, STEPS2)                                                     \
    {                                                                              \
        V tv[T_COLS], tw[T_COLS2];                                              \
        const __auto_type am0 = LANES(mr);                                         \
        const __auto_type am1 = LANES(mr - VW);                                    \
        (void)am0;                                                                 \
        (void)am1;                                                                 \
        PREFETCH_C(UK_C_START)                                                     \
        if (UK_MR > VW && mr > VW) {                                               \
            T_CASES(STEPS2, TDECL2, TSPILL2, T_COLS2)                              \
            TSTORE(tv, nr, VW, c, ldc, first);                                     \
            TSTORE(tw, nr, mr - VW, c + VW * ldc, ldc, first);                     \
        } else {                                                                   \
            T_CASES(STEPS1, TDECL1, TSPILL1, T_COLS1)                              \
            TSTORE(tv, nr, mr, c, ldc, first);                                     \
        }                                                                          \
    }
/* the rows of the loop that a tile of mr rows runs (Note [Half tiles]) */
static inline int UK_PASTE(t_loop_rows_, UK_DT)(int mr)
{
#ifdef UK_QUARTER_ROWS
    if (mr <= UK_QUARTER_ROWS_H)
        return UK_QUARTER_ROWS_H;
#endif
    if (mr <= UK_MR / 2)
        return UK_MR / 2;
#ifdef UK_LOW_MID_ROWS
    if (mr <= UK_LOW_MID_ROWS_H)
        return UK_LOW_MID_ROWS_H;
#endif
    return mr <= UK_MID ? UK_MID : UK_MR;
}
/* whether a tile of mr x nr (nr < NR) goes down the rows */
static inline int UK_PASTE(t_down_, UK_DT)(int mr, int nr)
{
    const int av = mr > VW ? 2 : 1;
    if (nr > (av == 1 ? T_COLS1 : T_COLS2))
        return 0;
    const int t = av * nr > 4 ? av * nr : 4;
#ifdef UK_HALF_VEC
    const int w = nr <= VW / 2 ? 3 : 4; /* a half-width FMA as 3 / 4 of one */
#else
    const int w = 4;
#endif
    return 4 * t < UK_PASTE(t_loop_rows_, UK_DT)(mr) * ((nr + VW - 1) / VW) * w;
}
#define T_DOWN(STEPS1, STEPS2)                                                     \
    if (nr < UK_NR && UK_PASTE(t_down_, UK_DT)(mr, nr)) {                          \
        T_BODY(STEPS1, STEPS2)                                                     \
        return;                                                                    \
    }
#else
#define T_DOWN(STEPS1, STEPS2)
#endif

/* Note [Narrow tiles]
 *   A tile of at most VW columns (the last columns of a product, or all of
 *   them: p <= VW) needs only the first vector of each row: the kernels run
 *   loops with one FMA per row and k step instead of two (the loads of the
 *   second vector go with them), and store the first vector only. Half the
 *   FMAs, the same ones for each element kept (the bits do not change),
 *   as the half tiles do for rows (Note [Half tiles]). The narrow tiles
 *   that matter: x @ W.T computed as W @ x.T (Note [x @ W.T by W @ x.T]
 *   in cpu_matmul.c) has m columns, at most VW for few rows. */

UK_TARGET void UK_KERNEL(int64_t kc, const void *a_, int64_t ars, int64_t acs, const void *b_,
                         void *c_, int64_t ldc, int mr, int nr, int first)
{
    const T *a = a_, *b = b_;
    T *c = c_;
    if (ars == 1) { /* A.T @ B: A's rows side by side (Note [Narrow tiles down the rows]) */
        T_DOWN(T_GK1, T_GK2)
    }
    UK_ROWS(DECL)
    UK_ROWS(APTR)
    int64_t off = 0; /* k * acs */
    if (nr <= VW) { /* Note [Narrow tiles] */
        HALF_NARROW(K_LOOPH)
        TILE_BODY(K_LOOP1)
        return;
    }
    TILE_BODY(K_LOOP)
}

/* Note [Packed A kernel]
 *   The kernel above takes general strides so that A can be read in place,
 *   and keeps one pointer per row of A: each k step is 2 B loads, MR
 *   broadcasts, 2 MR FMAs and about 8 integer operations (pointer bumps,
 *   the loop counter). On AVX2 that is ~29 instructions per 12 FMAs, 6
 *   cycles of FMA work at Zen 3's two FMA pipes, close to what its front
 *   end delivers. When A is a packed panel (ars = 1, acs = MR: the driver
 *   packed it) UK_KERNEL_PACKED reads it through ONE pointer with every
 *   broadcast at a constant displacement, and unrolls the k loop by UK_KU
 *   with constant offsets for A and B: one bump of each pointer per UK_KU
 *   steps (4 on AVX2: ~21 instructions a step), then a one-step loop for
 *   the kc % UK_KU remainder. Each accumulator gets the same FMAs in the
 *   same k order as in UK_KERNEL (Note [One chain per element]: the bits
 *   do not change). A packed panel always holds MR rows (pack_a and
 *   pack_bt pad with zeros), so rows past mr are read, computed and
 *   dropped, never stored (the filling kernel's, ak rows, may hold fewer:
 *   Note [One narrow A panel] in cpu_matmul.c). Zen 3, 1 thread: the
 *   kernel alone, on L1-resident panels, 99 -> 101 GFLOP/s float32 (the
 *   front end was not the whole limit); in products +0.5-1% (packing A was
 *   the larger cost: Note [Packing A by transposes] in cpu_matmul.c);
 *   float64 +1-2%.
 *   AVX-512 (14 x 32): the general loop there is 2 loads + 14 broadcasts +
 *   28 FMAs a step and the 14 row pointers, 3 of which gcc 12 keeps on the
 *   stack and reloads every step (~52 instructions). With one A pointer it
 *   is 49 (2 loads, 14 broadcasts, 28 FMAs, 2 bumps, the count and the
 *   branch, nothing on the stack). Unrolled (UK_KU = 4), gcc hoists the
 *   next step's B loads and needs 33 vector registers of 32: a spill and
 *   reload and ~8 register copies a step, so AVX-512 does not unroll
 *   (UK_KU = 1: the loop is one step, and its cost is the 28 FMAs, 2 per
 *   cycle on Intel's server cores; its 4 integer operations are 8% of the
 *   instructions, against 40% on AVX2 before unrolling). It cannot run
 *   here; its loop was checked with objdump. */
#define PSTEP(r)                                                                   \
    {                                                                              \
        V ar = BCAST(au + r);                                                      \
        c##r##_0 = MM(fmadd)(ar, b0, c##r##_0);                                    \
        c##r##_1 = MM(fmadd)(ar, b1, c##r##_1);                                    \
    }
#define PSTEP1(r) /* Note [Narrow tiles] */                                        \
    {                                                                              \
        V ar = BCAST(au + r);                                                      \
        c##r##_0 = MM(fmadd)(ar, b0, c##r##_0);                                    \
    }
/* k step u of the unrolled group: A at a + u MR, B at b + u NR; S is
 * each row's step (PSTEP, or PSTEP1 for a narrow tile: b1 unused, its load
 * dropped) */
#define PK(u, ROWS, S)                                                             \
    {                                                                              \
        const T *au = a + (u) * UK_MR;                                             \
        V b0 = MM(loadu)(b + (u) * UK_NR), b1 = MM(loadu)(b + (u) * UK_NR + VW);   \
        (void)b1;                                                                  \
        ROWS(S)                                                                    \
    }
#if UK_KU == 4
#define PK_GROUP(ROWS, S) PK(0, ROWS, S) PK(1, ROWS, S) PK(2, ROWS, S) PK(3, ROWS, S)
#elif UK_KU == 2
#define PK_GROUP(ROWS, S) PK(0, ROWS, S) PK(1, ROWS, S)
#elif UK_KU == 1
#define PK_GROUP(ROWS, S) PK(0, ROWS, S)
#else
#error "UK_KU must be 1, 2 or 4"
#endif
/* the unrolled groups up to END */
#define PK_GROUPS_(ROWS, END, S)                                                   \
    for (; k + UK_KU <= (END); k += UK_KU) {                                       \
        PK_GROUP(ROWS, S)                                                          \
        a += UK_KU * UK_MR;                                                        \
        b += UK_KU * UK_NR;                                                        \
    }
#define PK_GROUPS(ROWS, END) PK_GROUPS_(ROWS, END, PSTEP)
#define PK_GROUPS1(ROWS, END) PK_GROUPS_(ROWS, END, PSTEP1)
/* the groups (C into L1 as in K_LOOP), then the kc % UK_KU steps left */
#define PK_LOOP_(ROWS, GROUPS, S)                                                  \
    {                                                                              \
        int64_t k = 0;                                                             \
        C_LATE(GROUPS, ROWS)                                                       \
        for (; UK_KU > 1 && k < kc; k++) {                                         \
            PK(0, ROWS, S)                                                         \
            a += UK_MR;                                                            \
            b += UK_NR;                                                            \
        }                                                                          \
    }
#define PK_LOOP(ROWS) PK_LOOP_(ROWS, PK_GROUPS, PSTEP)
#define PK_LOOP1(ROWS) PK_LOOP_(ROWS, PK_GROUPS1, PSTEP1)
#ifdef UK_HALF_VEC /* Note [Narrow tiles in half registers] */
#define PHSTEP(r)                                                                  \
    {                                                                              \
        HV ar = HBCAST(au + r);                                                    \
        h##r = HFMADD(ar, HLOW(b0), h##r);                                         \
    }
#define PK_GROUPSH(ROWS, END) PK_GROUPS_(ROWS, END, PHSTEP)
#define PK_LOOPH_(ROWS) PK_LOOP_(ROWS, PK_GROUPSH, PHSTEP)
#define PK_LOOPH(ROWS) IN_HALF(PK_LOOPH_, ROWS)
#endif

UK_TARGET void UK_KERNEL_PACKED(int64_t kc, const void *a_, int64_t ars, int64_t acs,
                                const void *b_, void *c_, int64_t ldc, int mr, int nr, int first)
{
    (void)ars; /* 1 */
    (void)acs; /* UK_MR */
    const T *a = a_, *b = b_;
    T *c = c_;
    T_DOWN(T_PK1, T_PK2) /* Note [Narrow tiles down the rows] */
    UK_ROWS(DECL)
    if (nr <= VW) { /* Note [Narrow tiles] */
        HALF_NARROW(PK_LOOPH)
        TILE_BODY(PK_LOOP1)
        return;
    }
    TILE_BODY(PK_LOOP)
}

/* Note [Packing B in the kernel]
 *   A block of B whose rows are contiguous was packed by pack_b before any
 *   kernel ran on it: a copy of the block, B read from L3 or memory with
 *   nothing to do meanwhile. For few rows of A (m <= MC, each panel used
 *   by m / MR tiles) that copy was a third of the product's time (Xeon,
 *   Emerald Rapids, 1 thread, float32 m = 32, K = N = 1024: pack_b 32%,
 *   the kernel 57%, in perf samples). UK_KERNEL_FILL is the packed-A
 *   kernel for a full-width panel whose B it reads where it lies (row k at
 *   b + k rsb), storing each k step's two vectors into the packed panel
 *   bp as it goes: the driver calls it for a panel's first tile, and the
 *   other tiles read the packed panel (gemm_block_few, gemm_block). The
 *   loads then sit among the FMAs, and the out-of-order core overlaps
 *   the misses with the arithmetic. A panel's row is NR elements of a row
 *   of B (128 bytes: 2 cache lines, 3 when the row stride is not a multiple
 *   of 64 bytes), a row stride away from the previous one, so the kernel
 *   prefetches all the lines of the row UK_B_LEAD steps ahead into L1.
 *   Xeon (Emerald Rapids), 1 thread, float32, GFLOP/s with leads of 6, 8,
 *   10, 16 and 24 steps: 8 and 10 the best, AVX-512 and AVX2 alike (16 and
 *   24 lost 5-20%: with rows 4 KiB apart every row's lines fall in one L1
 *   set, and lines fetched too early are evicted before their use); two
 *   prefetches a row instead of three, 12 x 1024 @ 1024 x 500 (rows 2000
 *   bytes apart) 77 against 102-114; adding a prefetch 48 steps ahead
 *   into L2 cost 8-15% where B was in L3 and gained 10% only at K = N =
 *   4096 (B from memory), so there is none. The accumulators get the FMAs
 *   of UK_KERNEL_PACKED in the same order: the bits do not change.
 *   Interleaved medians of 0.7 s of calls, GFLOP/s, pack_b -> in the
 *   kernel, float32 1 thread: K = N = 1024 m = 12 72-73 (the axpy loops
 *   then) -> 110-113, m = 17 72 -> 112-114, m = 32 94 -> 137-143, m = 64
 *   121-122 -> 153-155; K = N = 4096 m = 32 94-95 -> 127-138, m = 64
 *   123-126 -> 122-137; 12 x 1024 @ 1024 x 500 54-56 -> 110-115; 2
 *   threads m = 17 133-141 -> 220-222, m = 32 181-187 -> 267-269, m = 64
 *   227-240 -> 298-300, K = N = 4096 m = 64 240-252 -> 280-294; float64 1
 *   thread m = 17 34 -> 53, m = 32 45 -> 64, m = 64 58-59 -> 72; the AVX2
 *   kernels (forced) m = 17 52 -> 63-65, m = 64 73-74 -> 79-81, K = N =
 *   4096 m = 32 61-64 -> 61-62; squares (the first A block fills, the
 *   others read) the same within 2-3%.
 *   The last panel of a product whose width is no multiple of NR (p = 100
 *   is 3 panels and 4 columns) was packed by pack_b before the kernels
 *   ran, row by row: a read of B's rows, each a miss from L2 or L3 without
 *   the arithmetic to hide it, and a library call to copy each row's few
 *   columns and another to zero the rest. The filling kernel takes it
 *   too: masked loads of its nr columns (zeros past them, stored packed
 *   as such; a masked load never touches the lanes it leaves out, so it
 *   reads nothing past B's row), the narrow loop when nr <= VW (Note
 *   [Narrow tiles]). Same bits. Xeon, 1 thread, float32, GFLOP/s: 4 x
 *   1000 @ 1000 x 300 (both with the 4-row loop, Note [Half tiles]) 60-63
 *   -> 81-86 (4 x 1000 x 320, with no such panel, ran 81-85), 8 x 1000 x
 *   300 100-105 -> 118-124, 32 x 1000 x 1000 135-148 -> 147-155, 64 x 512 x
 *   200 139-149 -> 154; float64 12 x 1000 x 100 48-57 -> 59-66.
 *   A panel with one tile (m <= MR) is never read again: bp = NULL, and
 *   the kernel reads B in place without storing it. The stores were not
 *   free: each takes a line of bp into L1, and those fills compete with
 *   B's (1 thread float32 K = N = 1024, storing -> not: m = 4 37-38 -> 55,
 *   m = 8 76 -> 100-101, m = 12 110 -> 134-139; K = N = 4096 m = 8 72-73
 *   -> 97). And since the kernels pack B only when A is packed, the
 *   driver packs A for tiles of at most MC rows and more than 4 NR
 *   columns, or more columns than rows, with B by rows (Note [Reading A
 *   in place] otherwise reads it in place for p < 512; cpu_matmul.c,
 *   gemm, for the rule and its figures): 8 x
 *   1000 @ 1000 x 300 53 -> 97, m = 12 54-55 -> 109-113, m = 32 109 ->
 *   128, 64 x 256 @ 256 x 256 136 -> 154. Both moved the AVX-512 float32
 *   axpy limit from 16 rows to 2 (Note [Axpy rows per tile] in
 *   cpu_matmul.c). A B larger than half the last-level cache, read from
 *   memory, is copied ahead by pack_b instead (Note [B from memory] in
 *   cpu_matmul.c). */
#define UK_B_LEAD 8
/* prefetch the lines of row UK_B_LEAD ahead of b into L1 */
#define PREFETCH_B                                                                 \
    _mm_prefetch((const char *)(b + UK_B_LEAD * rsb), _MM_HINT_T0);                \
    _mm_prefetch((const char *)(b + UK_B_LEAD * rsb + VW), _MM_HINT_T0);           \
    _mm_prefetch((const char *)(b + UK_B_LEAD * rsb + UK_NR - 1), _MM_HINT_T0);
/* the k steps up to END of the filling kernel: B from b by rows (LOAD_B:
 * a whole row of the panel; LOAD_B_PART: its first nr columns, zeros past
 * them), to bp (STORE_B), or read in place only (NO_STORE); S is each row's
 * step (PSTEP, or PSTEP1 for a narrow panel) */
#define LOAD_B V b0 = MM(loadu)(b), b1 = MM(loadu)(b + VW);
#define LOAD_B_PART V b0 = UK_MASKLOAD(b, bm0), b1 = UK_MASKLOAD(b + VW, bm1);
#define STORE_B                                                                    \
    MM(storeu)(bp, b0);                                                            \
    MM(storeu)(bp + VW, b1);                                                       \
    bp += UK_NR;
#define NO_STORE
#define B_STEPS(ROWS, END, LOAD, STORE, S)                                         \
    for (; k < (END); k++) {                                                       \
        const T *au = a;                                                           \
        LOAD                                                                       \
        (void)b1;                                                                  \
        PREFETCH_B                                                                 \
        STORE                                                                      \
        ROWS(S)                                                                    \
        a += ak;                                                                   \
        b += rsb;                                                                  \
    }
#define FK_STEPS(ROWS, END) B_STEPS(ROWS, END, LOAD_B, STORE_B, PSTEP)
#define RK_STEPS(ROWS, END) B_STEPS(ROWS, END, LOAD_B, NO_STORE, PSTEP)
#define FKP_STEPS(ROWS, END) B_STEPS(ROWS, END, LOAD_B_PART, STORE_B, PSTEP)
#define RKP_STEPS(ROWS, END) B_STEPS(ROWS, END, LOAD_B_PART, NO_STORE, PSTEP)
#define FKP1_STEPS(ROWS, END) B_STEPS(ROWS, END, LOAD_B_PART, STORE_B, PSTEP1)
#define RKP1_STEPS(ROWS, END) B_STEPS(ROWS, END, LOAD_B_PART, NO_STORE, PSTEP1)
#define B_LOOP(STEPS, ROWS)                                                        \
    {                                                                              \
        int64_t k = 0;                                                             \
        C_LATE(STEPS, ROWS)                                                        \
    }
#define FK_LOOP(ROWS) B_LOOP(FK_STEPS, ROWS)
#define RK_LOOP(ROWS) B_LOOP(RK_STEPS, ROWS)
#define FKP_LOOP(ROWS) B_LOOP(FKP_STEPS, ROWS)
#define RKP_LOOP(ROWS) B_LOOP(RKP_STEPS, ROWS)
#define FKP1_LOOP(ROWS) B_LOOP(FKP1_STEPS, ROWS)
#define RKP1_LOOP(ROWS) B_LOOP(RKP1_STEPS, ROWS)
#ifdef UK_HALF_VEC /* Note [Narrow tiles in half registers] */
#define FKPH_STEPS(ROWS, END) B_STEPS(ROWS, END, LOAD_B_PART, STORE_B, PHSTEP)
#define RKPH_STEPS(ROWS, END) B_STEPS(ROWS, END, LOAD_B_PART, NO_STORE, PHSTEP)
#define FKPH_LOOP_(ROWS) B_LOOP(FKPH_STEPS, ROWS)
#define RKPH_LOOP_(ROWS) B_LOOP(RKPH_STEPS, ROWS)
#define FKPH_LOOP(ROWS) IN_HALF(FKPH_LOOP_, ROWS)
#define RKPH_LOOP(ROWS) IN_HALF(RKPH_LOOP_, ROWS)
#endif

UK_TARGET void UK_KERNEL_FILL(int64_t kc, const void *a_, int64_t ak, const void *b_, int64_t rsb,
                              void *bp_, void *c_, int64_t ldc, int mr, int nr, int first)
{
    const T *a = a_, *b = b_;
    T *bp = bp_, *c = c_;
    UK_ROWS(DECL)
    if (nr == UK_NR) {
        if (!bp) { /* the panel's only tile: Note [Packing B in the kernel] */
            TILE_BODY(RK_LOOP)
            return;
        }
        TILE_BODY(FK_LOOP)
        return;
    }
    /* the last, narrower panel: its columns by masked loads, which never
     * touch the elements past them (Note [Packing B in the kernel]) */
    const __auto_type bm0 = LANES(nr);
    const __auto_type bm1 = LANES(nr - VW);
    if (!bp) { /* Note [Narrow tiles down the rows] */
        T_DOWN(T_RK1, T_RK2)
    } else {
        T_DOWN(T_FK1, T_FK2)
    }
    if (nr <= VW) { /* Note [Narrow tiles] */
        if (!bp) {
            HALF_NARROW(RKPH_LOOP)
            TILE_BODY(RKP1_LOOP)
            return;
        }
        HALF_NARROW(FKPH_LOOP)
        TILE_BODY(FKP1_LOOP)
        return;
    }
    if (!bp) {
        TILE_BODY(RKP_LOOP)
        return;
    }
    TILE_BODY(FKP_LOOP)
}

#ifdef UK_PACK_A
/* Note [Packing A in the kernel]
 *   A block of A packed ahead (pack_bt's transposes, Note [Packing A by
 *   transposes] in cpu_matmul.c) is a pass of its own before any FMA: in a
 *   small product, 100 x 100 @ 100 x 100 float32 (3 panels of 32 columns
 *   and one of 4, which runs down the rows on the packed panels: Note
 *   [Narrow tiles down the rows]), it was 5.6% of the samples, and the
 *   product without it (the packed A of the call before reused, a
 *   throw-away build) ran 104 GFLOP/s against 98. UK_KERNEL_PACK_A runs a
 *   tile of the block's first panel of B reading A where it lies (one
 *   pointer per row, as UK_KERNEL; B by rows from b, as the filling
 *   kernel's only tile) and stores each A element it loads into the packed
 *   panel ap (A[r][k] at ap[k MR + r]; rows past mr, which the loop of mr
 *   rows reads, get row 0's values, as UK_KERNEL reads them): the copy is
 *   one load and one store an element, among the FMAs, and the other
 *   panels' tiles read the packed A. gcc 12 compiles each row's step to a
 *   scalar load, its store and a broadcast from the register; written to
 *   broadcast from memory instead (two loads an element, 28 a k step), it
 *   lost what it saved (80^3 float32 94.5 GFLOP/s against 97). The FMAs
 *   are the packed kernel's, in the same k order (Note [One chain per
 *   element]): the bits do not change. Only the AVX-512 kernels have it:
 *   the AVX2 ones unroll their packed loop 4 times (Note [Packed A kernel])
 *   and their one-step loop with row pointers lost more than the pass
 *   (AVX2 forced on Zen 4, float32 80^3 96 -> 92.6, 100^3 92.5 -> 90.5).
 *   And only on AMD's cores (cpu_info's vendor; choose_kernel drops it
 *   elsewhere): on Zen 4 a broadcast from a register runs beside the FMAs,
 *   while on Intel's server cores it takes port 5, the port of their second
 *   512-bit FMA unit, and the panel's 14 broadcasts a k step would cost
 *   about half its 28 FMAs again, more than the transposes it saves (which
 *   are on port 5 too, 24 shuffles for 64 elements); not measured there, so
 *   not taken there. The driver (gemm_block_few in cpu_matmul.c) takes it
 *   where A's block would be packed by transposes for the filling kernels
 *   (A's rows contiguous, B by rows not from memory), has more than one
 *   tile of rows and more than one panel, and its rows are not a multiple
 *   of 1 KiB apart: 14 rows in a few L1 sets lose each line before its
 *   next k (Note [A rows that alias] in cpu_matmul.c; 28 x 1024 @ 1024 x
 *   100 float32 98.6 -> 87). AMD EPYC Zen 4 (family 25 model 17), 1 thread,
 *   interleaved medians of 0.5 s runs, GFLOP/s, before -> after (OpenBLAS
 *   0.3.31 SkylakeX): float32 80^3 97.2 -> 100.1 (101.5-102), 100^3 97.8
 *   -> 101.3 (105.6), 28 x 784 x 100 99.2 -> 102.3; float64 80^3 50.7 ->
 *   52.5 (52.7-53.8), 28 x 784 x 100 50.2 -> 53.4; 64^3 (A read in place),
 *   50 x 500 x 500 and 168 x 1024 x 1024 within noise. */
#define AP_STEP(r)                                                                 \
    {                                                                              \
        V ar = BCAST(a##r + k);                                                    \
        ap[r] = a##r[k];                                                           \
        c##r##_0 = MM(fmadd)(ar, b0, c##r##_0);                                    \
        c##r##_1 = MM(fmadd)(ar, b1, c##r##_1);                                    \
    }
#define AP_STEPS(ROWS, END)                                                        \
    for (; k < (END); k++) {                                                       \
        V b0 = MM(loadu)(b), b1 = MM(loadu)(b + VW);                               \
        PREFETCH_B                                                                 \
        ROWS(AP_STEP)                                                              \
        ap += UK_MR;                                                               \
        b += rsb;                                                                  \
    }
#define AP_LOOP(ROWS) B_LOOP(AP_STEPS, ROWS)

UK_TARGET void UK_KERNEL_PACK_A(int64_t kc, const void *a_, int64_t ars, const void *b_,
                                int64_t rsb, void *ap_, void *c_, int64_t ldc, int mr,
                                int first)
{
    const T *a = a_, *b = b_;
    T *ap = ap_, *c = c_;
    const int nr = UK_NR; /* a whole panel */
    UK_ROWS(DECL)
    UK_ROWS(APTR)
    TILE_BODY(AP_LOOP)
}
#undef AP_LOOP
#undef AP_STEPS
#undef AP_STEP
#endif

#include "cpu_matmul_row_impl.h" /* ndl_ukernel_<UK_ISA>_<UK_DT>_row */

#ifdef UK_HALF_VEC
#undef RKPH_LOOP
#undef FKPH_LOOP
#undef RKPH_LOOP_
#undef FKPH_LOOP_
#undef RKPH_STEPS
#undef FKPH_STEPS
#undef PK_LOOPH
#undef PK_LOOPH_
#undef PK_GROUPSH
#undef PHSTEP
#undef K_LOOPH
#undef K_LOOPH_
#undef K_STEPSH
#undef IN_HALF
#undef HSTEP
#undef HTOC
#undef HDECL
#undef HWIDEN
#undef HLOW
#undef HFMADD
#undef HBCAST
#undef HSETZERO
#undef HV
#endif
#ifdef UK_TRANS
#undef T_DOWN
#undef T_BODY
#undef T_CASES
#undef T_CASE
#undef T_RK2
#undef T_RK1
#undef T_FK2
#undef T_FK1
#undef T_FILL_B
#undef T_PK2
#undef T_PK1
#undef T_GK2
#undef T_GK1
#undef T_STEPS_
#undef TA2
#undef TA1
#undef TSPILL2
#undef TSPILL1
#undef TSTEP2
#undef TSTEP1
#undef TDECL2
#undef TDECL1
#undef TC24
#undef TC23
#undef TC22
#undef TC21
#undef TC20
#undef TC19
#undef TC18
#undef TC17
#undef TC16
#undef TC15
#undef TC14
#undef TC13
#undef TC12
#undef TC11
#undef TC10
#undef TC9
#undef TC8
#undef TC7
#undef TC6
#undef TC5
#undef TC4
#undef TC3
#undef TC2
#undef TC1
#undef T_COLS1
#undef T_COLS2
#undef T_COLS
#undef TSTORE
#endif
#undef HALF_NARROW
#undef RKP1_LOOP
#undef FKP1_LOOP
#undef RKP_LOOP
#undef FKP_LOOP
#undef RK_LOOP
#undef FK_LOOP
#undef B_LOOP
#undef RKP1_STEPS
#undef FKP1_STEPS
#undef RKP_STEPS
#undef FKP_STEPS
#undef RK_STEPS
#undef FK_STEPS
#undef B_STEPS
#undef NO_STORE
#undef STORE_B
#undef LOAD_B_PART
#undef LOAD_B
#undef PREFETCH_B
#undef UK_B_LEAD
#undef PK_LOOP1
#undef PK_LOOP
#undef PK_LOOP_
#undef PK_GROUPS1
#undef PK_GROUPS
#undef PK_GROUPS_
#undef K_LOOP1
#undef K_LOOP
#undef K_STEPS1
#undef K_STEPS
#undef K_STEPS_
#undef C_LATE
#undef UK_C_START
#undef TILE_BODY
#undef UK_QUARTER
#undef UK_LOW_MID_TILE
#undef UK_LOW_MID
#undef STORE_MASKED
#undef PREFETCH_C
#undef PK_GROUP
#undef PK
#undef PSTEP1
#undef PSTEP
#undef STORE_PARTIAL
#undef STORE
#undef STEP1
#undef STEP
#undef DECL
#undef APTR
#undef UK_MID
#undef UK_ONE
#undef VW
#undef LANES
#undef BCAST
#undef MM
#undef V

#else /* not x86 */

void UK_KERNEL(int64_t kc, const void *a_, int64_t ars, int64_t acs, const void *b_, void *c_,
               int64_t ldc, int mr, int nr, int first)
{
    UK_PASTE(ndl_ukernel_generic_, UK_DT)(kc, a_, ars, acs, b_, c_, ldc, mr, nr, first);
}

void UK_KERNEL_PACKED(int64_t kc, const void *a_, int64_t ars, int64_t acs, const void *b_,
                      void *c_, int64_t ldc, int mr, int nr, int first)
{
    UK_PASTE(ndl_ukernel_generic_, UK_DT)(kc, a_, ars, acs, b_, c_, ldc, mr, nr, first);
}

void UK_KERNEL_FILL(int64_t kc, const void *a_, int64_t ak, const void *b_, int64_t rsb,
                    void *bp_, void *c_, int64_t ldc, int mr, int nr, int first)
{
    const T *a = a_, *b = b_;
    T *bp = bp_, *c = c_;
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < nr; j++) {
            T acc = 0;
            for (int64_t k = 0; k < kc; k++)
                acc = NDL_MADD(a[k * ak + r], b[k * rsb + j], acc);
            c[r * ldc + j] = first ? acc : c[r * ldc + j] + acc;
        }
    for (int64_t k = 0; bp && k < kc; k++)
        for (int j = 0; j < UK_NR; j++)
            bp[k * UK_NR + j] = j < nr ? b[k * rsb + j] : 0;
}

void UK_KERNEL_ROW(int64_t kc, const void *a_, int64_t acs, const void *b_, int64_t rsb, void *c_,
                   int nr, int first)
{
    const T *a = a_, *b = b_;
    T *c = c_;
    for (int j = 0; j < nr; j++) {
        T acc = 0;
        for (int64_t k = 0; k < kc; k++)
            acc = NDL_MADD(a[k * acs], b[k * rsb + j], acc);
        c[j] = first ? acc : c[j] + acc;
    }
}

#ifdef UK_PACK_A
void UK_KERNEL_PACK_A(int64_t kc, const void *a_, int64_t ars, const void *b_, int64_t rsb,
                      void *ap_, void *c_, int64_t ldc, int mr, int first)
{
    const T *a = a_;
    T *ap = ap_;
    for (int64_t k = 0; k < kc; k++)
        for (int r = 0; r < UK_MR; r++)
            ap[k * UK_MR + r] = a[(r < mr ? r : 0) * ars + k];
    UK_KERNEL_FILL(kc, ap_, UK_MR, b_, rsb, NULL, c_, ldc, mr, UK_NR, first);
}
#endif

#endif

#undef UK_KERNEL_ROW
#undef UK_KERNEL_PACK_A
#undef UK_KERNEL_FILL
#undef UK_KERNEL_PACKED
#undef UK_KERNEL
#undef UK_PASTE
#undef UK_PASTE_
#undef T
#undef UK_DT
#undef UK_MR
#undef UK_NR
