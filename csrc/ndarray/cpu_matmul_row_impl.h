/* cpu_matmul_row_impl.h: the one-row kernel of ndl_cpu_matmul for ONE
 * instruction set and ONE element type, ndl_ukernel_<UK_ISA>_<UK_DT>_row
 * (contract in cpu_matmul.h). Included by cpu_matmul_simd_impl.h only, on
 * x86, where its vector macros (V, MM, BCAST, LANES, VW, UK_MASKLOAD,
 * UK_MASKSTORE, UK_TARGET) and T are defined; never include it anywhere
 * else.
 *
 * Note [One row in registers]
 *   x @ W for one row x and a narrow W (batch-1 inference: 1 x 784 @ 784 x
 *   100) ran on the axpy loops (cpu_matmul_small.c), which add 8 rows of W
 *   into C's row and store it back, 8 k at a time: for 100 columns, 64 in
 *   eight interleaved chains and the last 36 as chains run one after the
 *   other, with C loaded and stored every 8 k. Bound neither by the loads
 *   nor by the FMAs: Zen 2, float32 1 x 784 x 100 20-21 GFLOP/s against
 *   NumPy's 23-26, 1 x 1000 x 40 15 against 16-18. This kernel keeps a
 *   strip of the row, up to NDL_ROW_VECS vectors and a masked partial one
 *   (12 + 1 accumulators, a broadcast and the mask: 15 of AVX2's 16
 *   registers), in registers over a whole KC block: per k one broadcast of
 *   x[k] and one load and FMA per vector, W read once, C once. Its chains
 *   are the axpy loops' (Note [One chain per element]: from zero over each
 *   KC block in k order, then added to C): the same bits. The driver takes
 *   it for m = 1 with W's rows contiguous, a task of at most
 *   NDL_ROW_MAX_BYTES of columns, and W in cache (Note [One row: which
 *   products] in cpu_matmul.c, with the figures: 1 x 784 x 100 37-39
 *   GFLOP/s); wider rows are cut into strips of balanced widths, the
 *   partial vector in the last.
 */

#define ROW_V0(X)
#define ROW_V1(X) X(0)
#define ROW_V2(X) ROW_V1(X) X(1)
#define ROW_V3(X) ROW_V2(X) X(2)
#define ROW_V4(X) ROW_V3(X) X(3)
#define ROW_V5(X) ROW_V4(X) X(4)
#define ROW_V6(X) ROW_V5(X) X(5)
#define ROW_V7(X) ROW_V6(X) X(6)
#define ROW_V8(X) ROW_V7(X) X(7)
#define ROW_V9(X) ROW_V8(X) X(8)
#define ROW_V10(X) ROW_V9(X) X(9)
#define ROW_V11(X) ROW_V10(X) X(10)
#define ROW_V12(X) ROW_V11(X) X(11)
_Static_assert(0 ROW_V12(UK_ONE) == NDL_ROW_VECS, "ROW_V12 is not NDL_ROW_VECS vectors");

#define ROW_DECL(l) V s##l = MM(setzero)();
#define ROW_STEP(l) s##l = MM(fmadd)(ak, MM(loadu)(bk + (l) * VW), s##l);
#define ROW_STORE(l)                                                               \
    MM(storeu)(c + (l) * VW, first ? s##l : MM(add)(MM(loadu)(c + (l) * VW), s##l));
/* NV whole vectors, then the tail's lanes (if any) in one masked vector */
#define ROW_BODY(VECS, NV)                                                         \
    {                                                                              \
        VECS(ROW_DECL)                                                             \
        const T *bk = b;                                                           \
        if (tail) {                                                                \
            const __auto_type mt = LANES(tail);                                    \
            V st = MM(setzero)();                                                  \
            for (int64_t k = 0; k < kc; k++, bk += rsb) {                          \
                const V ak = BCAST(a + k * acs);                                   \
                VECS(ROW_STEP)                                                     \
                st = MM(fmadd)(ak, UK_MASKLOAD(bk + (NV) * VW, mt), st);           \
            }                                                                      \
            if (!first)                                                            \
                st = MM(add)(UK_MASKLOAD(c + (NV) * VW, mt), st);                  \
            UK_MASKSTORE(c + (NV) * VW, mt, st);                                   \
        } else { /* (NV = 0 has a tail: nr >= 1) */                                \
            for (int64_t k = 0; k < kc; k++, bk += rsb) {                          \
                const V ak = BCAST(a + k * acs);                                   \
                (void)ak;                                                          \
                VECS(ROW_STEP)                                                     \
            }                                                                      \
        }                                                                          \
        VECS(ROW_STORE)                                                            \
        return;                                                                    \
    }

UK_TARGET void UK_KERNEL_ROW(int64_t kc, const void *a_, int64_t acs, const void *b_, int64_t rsb,
                             void *c_, int nr, int first)
{
    const T *a = a_, *b = b_;
    T *c = c_;
    const int tail = nr % VW;
    switch (nr / VW) {
#define ROW_CASE(n) case n: ROW_BODY(ROW_V##n, n)
        ROW_CASE(0) ROW_CASE(1) ROW_CASE(2) ROW_CASE(3) ROW_CASE(4) ROW_CASE(5)
        ROW_CASE(6) ROW_CASE(7) ROW_CASE(8) ROW_CASE(9) ROW_CASE(10) ROW_CASE(11)
#undef ROW_CASE
    default: ROW_BODY(ROW_V12, 12) /* nr < (NDL_ROW_VECS + 1) * VW: the contract */
    }
}

#undef ROW_BODY
#undef ROW_STORE
#undef ROW_STEP
#undef ROW_DECL
#undef ROW_V12
#undef ROW_V11
#undef ROW_V10
#undef ROW_V9
#undef ROW_V8
#undef ROW_V7
#undef ROW_V6
#undef ROW_V5
#undef ROW_V4
#undef ROW_V3
#undef ROW_V2
#undef ROW_V1
#undef ROW_V0
