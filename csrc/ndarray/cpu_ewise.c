/* cpu_ewise.c: elementwise unary and binary ops on the CPU.
 *
 * Owns ndl_cpu_unary and ndl_cpu_binary (ndl_core.h). Python equivalent:
 *     out = np.ascontiguousarray(ufunc(a[, b]))   # ufunc from the .def tables
 *
 * Shape of the code (NumPy's, without .c.src):
 *   - the per-element math is scalar_ops.h, shared with CUDA;
 *   - cpu_ewise_impl.h turns every elementwise row of ../ops.def into an
 *     inner loop with one signature (n elements, input strides, contiguous output) and fast
 *     paths for unit-stride and broadcast operands; it is instantiated here
 *     per dtype and per ISA (AVX-512F, AVX2 and the x86-64 baseline;
 *     only the baseline elsewhere), and the widest tables the CPU runs are
 *     picked at run time (NEEDLE_EWISE_KERNEL=generic|avx2|avx512 forces
 *     one it runs; _C.ewise_kernel_name() says which);
 *   - the driver below simplifies the layouts (Note [Strided iteration] in
 *     cpu_strided.h), so every contiguous or scalar-broadcast case runs as
 *     one long inner loop, and splits large jobs across the thread pool.
 *
 * Every ISA gives bit-identical results. NOTE: the AVX2 variant is
 * target("avx2") without "fma" on purpose, and setup.py builds with
 * -ffp-contract=off, which the AVX-512 variant needs (Note [AVX-512
 * elementwise]): with FMA in the target, gcc (-std=gnu11 defaults to
 * -ffp-contract=fast) would fuse the polynomials in scalar_ops.h and
 * exp/log/tanh would differ in the last bit between machines.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "ndl_core.h"
#include "cpu_info.h"
#include "threadpool.h"
#include "scalar_ops.h"
#include "cpu_strided.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define NDL_EW_X86 1
#include <immintrin.h>
/* -DNDL_CPU_BASELINE_ONLY builds without the AVX2 and AVX-512 variants (for tests). */
#ifndef NDL_CPU_BASELINE_ONLY
#define NDL_EW_SIMD 1
#endif
#endif

typedef void (*ndl_ew_unary_loop)(const void *a, int64_t sa, void *out, int64_t n);
typedef void (*ndl_ew_binary_loop)(const void *a, int64_t sa, const void *b, int64_t sb,
                                   void *out, int64_t n);

/* Note [sqrt]
 *   gcc keeps errno semantics for sqrtf/sqrt unless built with
 *   -fno-math-errno (which setup.py passes, but which no function attribute
 *   can turn on in gcc 12, so a build without the flag would not vectorize
 *   a loop over ndl_sqrt_*). The contiguous sqrt loop therefore also uses
 *   the SSE2/AVX sqrt instructions directly; they are IEEE correctly
 *   rounded, exactly like sqrtf, so results are the same either way. */

/* ---- instantiations ---------------------------------------------------- */
#define T float
#define EW_DT f32
#define EW_SFX f32_base
#define EW_TARGET
#ifdef NDL_EW_X86
#define EW_SQRT_SIMD 1
#define EW_VW 4
#define EW_VLOAD _mm_loadu_ps
#define EW_VSQRT _mm_sqrt_ps
#define EW_VSTORE _mm_storeu_ps
#endif
#include "cpu_ewise_impl.h"

#define T double
#define EW_DT f64
#define EW_SFX f64_base
#define EW_TARGET
#ifdef NDL_EW_X86
#define EW_SQRT_SIMD 1
#define EW_VW 2
#define EW_VLOAD _mm_loadu_pd
#define EW_VSQRT _mm_sqrt_pd
#define EW_VSTORE _mm_storeu_pd
#endif
#include "cpu_ewise_impl.h"

#ifdef NDL_EW_SIMD
#define T float
#define EW_DT f32
#define EW_SFX f32_avx2
#define EW_TARGET __attribute__((target("avx2")))
#define EW_SQRT_SIMD 1
#define EW_VW 8
#define EW_VLOAD _mm256_loadu_ps
#define EW_VSQRT _mm256_sqrt_ps
#define EW_VSTORE _mm256_storeu_ps
#include "cpu_ewise_impl.h"

#define T double
#define EW_DT f64
#define EW_SFX f64_avx2
#define EW_TARGET __attribute__((target("avx2")))
#define EW_SQRT_SIMD 1
#define EW_VW 4
#define EW_VLOAD _mm256_loadu_pd
#define EW_VSQRT _mm256_sqrt_pd
#define EW_VSTORE _mm256_storeu_pd
#include "cpu_ewise_impl.h"

/* Note [AVX-512 elementwise]
 *   The same loops built for AVX-512F: 16 float32 lanes an instruction
 *   where AVX2 has 8. gcc's AVX-512 target includes FMA (its EVEX forms)
 *   and "no-fma" does not remove it, so what keeps a*b + c unfused here
 *   is -ffp-contract=off, which setup.py passes for every file: the
 *   polynomials of scalar_ops.h give the bits of the AVX2 and baseline
 *   loops on every CPU (tests/test_ndarray_ops.py compares the three).
 *   The math ones gain, the rest are bound by memory anyway: Zen 4 (AMD
 *   EPYC, family 25 model 17, which runs a 512-bit instruction as two
 *   256-bit halves), 1 thread, float32 exp of 64 Ki elements in L2, best
 *   of 300 calls, elements a second: 1.53 G (AVX2) -> 2.06 G (NumPy 2.4's
 *   AVX-512 exp, which fuses: 1.84-2.25 G). float64 exp, log and tanh call
 *   libm element by element either way.
 */
#define T float
#define EW_DT f32
#define EW_SFX f32_avx512
#define EW_TARGET __attribute__((target("avx512f")))
#define EW_SQRT_SIMD 1
#define EW_VW 16
#define EW_VLOAD _mm512_loadu_ps
#define EW_VSQRT _mm512_sqrt_ps
#define EW_VSTORE _mm512_storeu_ps
#define EW_EXP_SCALEF 1
#define EW_VSCALEF _mm512_scalef_ps
#include "cpu_ewise_impl.h"

#define T double
#define EW_DT f64
#define EW_SFX f64_avx512
#define EW_TARGET __attribute__((target("avx512f")))
#define EW_SQRT_SIMD 1
#define EW_VW 8
#define EW_VLOAD _mm512_loadu_pd
#define EW_VSQRT _mm512_sqrt_pd
#define EW_VSTORE _mm512_storeu_pd
#include "cpu_ewise_impl.h"
#endif

/* Note [exp by scalef]
 *   ndl_exp_f32 (scalar_ops.h) ends with p * 2^k1 * 2^k2, k = k1 + k2, so
 *   that a result below the normal range rounds once: the first product is
 *   exact, the second rounds. AVX-512F's vscalefps computes p * 2^k rounded
 *   once, the same number, in one instruction where the split takes nine
 *   (k / 2, k - k1, two powers of two built in the exponent bits, two
 *   products). So the AVX-512 float32 exp, tanh and sigmoid run
 *   ndl_exp_core_f32 (reduction and polynomial, vectorized by gcc) on 16
 *   elements, scale them by vscalefps, and finish tanh and sigmoid from
 *   that exp (ndl_tanh_with_exp_f32, ndl_sigmoid_with_exp_f32), all on
 *   local arrays (the output may be the input, which kept gcc from
 *   vectorizing the 16 finishing statements) and the finishing loop kept a
 *   loop (GCC unroll 1: fully unrolled, its select stayed scalar). The same
 *   bits: exp checked on all 2^32 inputs, with and without flush-to-zero
 *   and denormals-are-zero (which both forms obey), and all three by
 *   tests/test_ndarray_ops.py's comparison of the instruction sets. Zen 4,
 *   1 thread, 64 Ki elements in L2, G elements a second, AVX2 -> AVX-512
 *   (NumPy; PyTorch for sigmoid): exp 1.5 -> 2.7 (2.2), tanh 0.92 -> 1.55
 *   (2.8), sigmoid 1.24 -> 2.07 (2.4); the AVX-512 loops without vscalefps
 *   gave exp 2.06.
 */

/* ---- ISA choice -------------------------------------------------------- */
enum { EW_GENERIC, EW_AVX2, EW_AVX512, EW_ISAS };
static const char *const ew_isa_names[EW_ISAS] = {"generic", "avx2", "avx512"};

typedef struct {
    const ndl_ew_unary_loop *un;
    const ndl_ew_binary_loop *bin;
} ew_tables;

static const ew_tables ew_by_isa[EW_ISAS][NDL_NUM_DTYPES] = {
    [EW_GENERIC] = {[NDL_FLOAT32] = {ew_unary_loops_f32_base, ew_binary_loops_f32_base},
                    [NDL_FLOAT64] = {ew_unary_loops_f64_base, ew_binary_loops_f64_base}},
#ifdef NDL_EW_SIMD
    [EW_AVX2] = {[NDL_FLOAT32] = {ew_unary_loops_f32_avx2, ew_binary_loops_f32_avx2},
                 [NDL_FLOAT64] = {ew_unary_loops_f64_avx2, ew_binary_loops_f64_avx2}},
    [EW_AVX512] = {[NDL_FLOAT32] = {ew_unary_loops_f32_avx512, ew_binary_loops_f32_avx512},
                   [NDL_FLOAT64] = {ew_unary_loops_f64_avx512, ew_binary_loops_f64_avx512}},
#endif
};

static int ew_isa_supported(int isa)
{
#ifdef NDL_EW_SIMD
    if (isa == EW_AVX512)
        return ndl_get_cpu_info()->avx512f; /* Note [Usable SIMD] in cpu_info.c */
    if (isa == EW_AVX2) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2");
    }
#endif
    return isa == EW_GENERIC;
}

/* The widest loops the CPU runs, or the ones NEEDLE_EWISE_KERNEL=generic|
 * avx2|avx512 names if it runs them; read once. */
static int ew_isa(void)
{
    /* -1 unknown; computing it twice in a race is harmless. */
    static atomic_int cached = -1;
    int v = atomic_load_explicit(&cached, memory_order_relaxed);
    if (v < 0) {
        v = EW_GENERIC;
        for (int isa = EW_GENERIC + 1; isa < EW_ISAS; isa++)
            if (ew_isa_supported(isa))
                v = isa;
        const char *env = getenv("NEEDLE_EWISE_KERNEL");
        for (int isa = 0; env && isa < EW_ISAS; isa++)
            if (strcmp(env, ew_isa_names[isa]) == 0 && ew_isa_supported(isa))
                v = isa;
        atomic_store_explicit(&cached, v, memory_order_relaxed);
    }
    return v;
}

const char *ndl_cpu_ewise_kernel_name(void) { return ew_isa_names[ew_isa()]; }

static ndl_ew_unary_loop ew_unary_loop(ndl_unop op, ndl_dtype dt)
{
    return ew_by_isa[ew_isa()][dt].un[op];
}

static ndl_ew_binary_loop ew_binary_loop(ndl_binop op, ndl_dtype dt)
{
    return ew_by_isa[ew_isa()][dt].bin[op];
}

/* ---- threading grains ---------------------------------------------------
 * Elements per task. A job smaller than two grains runs on the calling
 * thread without touching the pool. Memory-bound ops need big chunks to pay
 * for waking a worker; vectorized float32 math costs ~1 ns/element and libm
 * calls (pow, float64 exp/log/tanh) ~10 ns. */
enum { EW_GRAIN_CHEAP = 1 << 16, EW_GRAIN_VECMATH = 1 << 14, EW_GRAIN_LIBM = 1 << 11 };

static int64_t ew_unary_grain(ndl_unop op, ndl_dtype dt)
{
    switch (op) {
    case NDL_UN_NEG:
    case NDL_UN_ABS:
    case NDL_UN_RELU:
        return EW_GRAIN_CHEAP;
    case NDL_UN_SQRT:
        return EW_GRAIN_VECMATH;
    default:
        return dt == NDL_FLOAT32 ? EW_GRAIN_VECMATH : EW_GRAIN_LIBM;
    }
}

static int64_t ew_binary_grain(ndl_binop op, const ndl_layout *lb, const void *b, ndl_dtype dt)
{
    if (op != NDL_BIN_POW)
        return EW_GRAIN_CHEAP;
    /* x ** 2 is x*x (see ew_pow_fast): cheap. Called with a non-empty b. */
    for (int i = 0; i < lb->ndim; i++)
        if (lb->strides[i] != 0 && lb->shape[i] != 1)
            return EW_GRAIN_LIBM;
    double y = dt == NDL_FLOAT32 ? ((const float *)b)[lb->offset]
                                 : ((const double *)b)[lb->offset];
    return y == 2.0 ? EW_GRAIN_CHEAP : EW_GRAIN_LIBM;
}

/* ---- driver ------------------------------------------------------------ */
typedef struct {
    ndl_ew_unary_loop un;   /* exactly one of un / bin is set */
    ndl_ew_binary_loop bin;
    const char *a, *b;      /* at each layout's offset */
    char *out;
    int64_t isz;            /* bytes per element */
    int64_t inner;          /* inner-loop length */
    ndl_iter it;            /* operands: 0 = a, 1 = b */
} ew_job;

/* Elements [begin, end) of a job whose space has at most one dimension. */
static void ew_run_flat(void *ctx, int64_t begin, int64_t end)
{
    const ew_job *j = (const ew_job *)ctx;
    int64_t sa = ndl_iter_inner_stride(&j->it, 0);
    const char *a = j->a + begin * sa * j->isz;
    char *out = j->out + begin * j->isz;
    if (j->un) {
        j->un(a, sa, out, end - begin);
    } else {
        int64_t sb = ndl_iter_inner_stride(&j->it, 1);
        j->bin(a, sa, j->b + begin * sb * j->isz, sb, out, end - begin);
    }
}

/* Rows [begin, end) of the inner loop of an N-d job. */
static void ew_run_rows(void *ctx, int64_t begin, int64_t end)
{
    const ew_job *j = (const ew_job *)ctx;
    const ndl_iter *it = &j->it;
    int64_t sa = ndl_iter_inner_stride(it, 0);
    int64_t sb = j->bin ? ndl_iter_inner_stride(it, 1) : 0;
    ndl_iter_pos p;
    ndl_iter_seek(it, &p, begin);
    for (int64_t r = begin; r < end; r++) {
        const char *a = j->a + p.off[0] * j->isz;
        char *out = j->out + r * j->inner * j->isz;
        if (j->un)
            j->un(a, sa, out, j->inner);
        else
            j->bin(a, sa, j->b + p.off[1] * j->isz, sb, out, j->inner);
        ndl_iter_next(it, &p);
    }
}

static void ew_launch(ew_job *j, int64_t n, int64_t grain)
{
    j->inner = ndl_iter_inner(&j->it);
    if (j->it.ndim <= 1) {
        if (n < 2 * grain)
            ew_run_flat(j, 0, n);
        else
            ndl_parallel_for(n, grain, ew_run_flat, j);
    } else {
        int64_t rows = ndl_iter_rows(&j->it);
        int64_t rgrain = grain / j->inner > 0 ? grain / j->inner : 1;
        if (rows < 2 * rgrain)
            ew_run_rows(j, 0, rows);
        else
            ndl_parallel_for(rows, rgrain, ew_run_rows, j);
    }
}

int ndl_cpu_unary(ndl_unop op, ndl_dtype dt, const void *a, const ndl_layout *la, void *out)
{
    if ((unsigned)op >= NDL_NUM_UNARY || (unsigned)dt >= NDL_NUM_DTYPES || !ndl_layout_ok(la))
        return NDL_EINVAL;
    int64_t n = ndl_layout_size(la);
    if (n == 0)
        return NDL_OK;
    ew_job j = {.un = ew_unary_loop(op, dt), .isz = (int64_t)ndl_itemsize(dt), .out = (char *)out};
    j.a = (const char *)a + la->offset * j.isz;
    const int64_t *strides[1] = {la->strides};
    ndl_iter_init(&j.it, la->ndim, la->shape, 1, strides);
    ew_launch(&j, n, ew_unary_grain(op, dt));
    return NDL_OK;
}

int ndl_cpu_binary(ndl_binop op, ndl_dtype dt, const void *a, const ndl_layout *la,
                   const void *b, const ndl_layout *lb, void *out)
{
    if ((unsigned)op >= NDL_NUM_BINARY || (unsigned)dt >= NDL_NUM_DTYPES || !ndl_layout_ok(la) ||
        !ndl_layout_ok(lb) || !ndl_same_shape(la, lb))
        return NDL_EINVAL;
    int64_t n = ndl_layout_size(la);
    if (n == 0)
        return NDL_OK;
    ew_job j = {.bin = ew_binary_loop(op, dt), .isz = (int64_t)ndl_itemsize(dt),
                .out = (char *)out};
    j.a = (const char *)a + la->offset * j.isz;
    j.b = (const char *)b + lb->offset * j.isz;
    const int64_t *strides[2] = {la->strides, lb->strides};
    ndl_iter_init(&j.it, la->ndim, la->shape, 2, strides);
    ew_launch(&j, n, ew_binary_grain(op, lb, b, dt));
    return NDL_OK;
}
