/* cpu_ewise_impl.h: the elementwise inner loops for ONE element type and ONE
 * instruction set. Template header: cpu_ewise.c includes it once per
 * (dtype, ISA) pair; never include it anywhere else.
 *
 * Expects (all #undef'd again at the end):
 *   T          element type (float / double)
 *   EW_DT      dtype suffix token of scalar_ops.h (f32 / f64)
 *   EW_SFX     suffix of the generated names (f32_avx2, f64_base, ...)
 *   EW_TARGET  function attribute selecting the ISA, or empty
 *   EW_SQRT_SIMD (optional) 1 when EW_VEC/EW_VW/EW_VLOAD/EW_VSQRT/EW_VSTORE
 *              describe a SIMD sqrt for T (see Note [sqrt] in cpu_ewise.c)
 *   EW_EXP_SCALEF (optional, float only) 1 when EW_VSCALEF(p, k) is p * 2^k
 *              of vectors, rounded once (Note [exp by scalef] in cpu_ewise.c)
 * Defines:
 *   ew_unary_loops_<EW_SFX>[NDL_NUM_UNARY]    (ndl_ew_unary_loop)
 *   ew_binary_loops_<EW_SFX>[NDL_NUM_BINARY]  (ndl_ew_binary_loop)
 *
 * Every loop has NumPy's inner-loop shape: n elements, input strides in
 * elements (any sign, 0 = broadcast), output contiguous. The unit-stride and
 * broadcast cases get their own loops so gcc vectorizes them.
 */

#define EW_PASTE_(a, b) a##b
#define EW_PASTE(a, b) EW_PASTE_(a, b)
#define EW_FN(stem) EW_PASTE(stem##_, EW_SFX)                    /* ew_exp_f32_avx2 */
#define EW_MATH(name) EW_PASTE(ndl_##name##_, EW_DT)             /* ndl_exp_f32 */

#define NDL_UNARY_KERNEL(NAME, name, numpy, method)                                    \
    static EW_TARGET void EW_FN(ew_##name)(const void *a_, int64_t sa, void *out_, int64_t n) \
    {                                                                                  \
        const T *a = (const T *)a_;                                                    \
        T *out = (T *)out_;                                                            \
        if (sa == 1) {                                                                 \
            for (int64_t i = 0; i < n; i++)                                            \
                out[i] = EW_MATH(name)(a[i]);                                          \
        } else if (sa == 0) {                                                          \
            const T y = EW_MATH(name)(a[0]);                                           \
            for (int64_t i = 0; i < n; i++)                                            \
                out[i] = y;                                                            \
        } else {                                                                       \
            for (int64_t i = 0; i < n; i++)                                            \
                out[i] = EW_MATH(name)(a[i * sa]);                                     \
        }                                                                              \
    }
#include "ops.def"

#define NDL_BINARY_KERNEL(NAME, name, numpy, method)                                   \
    static EW_TARGET void EW_FN(ew_##name)(const void *a_, int64_t sa, const void *b_,     \
                                           int64_t sb, void *out_, int64_t n)          \
    {                                                                                  \
        const T *a = (const T *)a_;                                                    \
        const T *b = (const T *)b_;                                                    \
        T *out = (T *)out_;                                                            \
        if (sa == 1 && sb == 1) {                                                      \
            for (int64_t i = 0; i < n; i++)                                            \
                out[i] = EW_MATH(name)(a[i], b[i]);                                    \
        } else if (sa == 1 && sb == 0) {                                               \
            const T y = b[0];                                                          \
            for (int64_t i = 0; i < n; i++)                                            \
                out[i] = EW_MATH(name)(a[i], y);                                       \
        } else if (sa == 0 && sb == 1) {                                               \
            const T x = a[0];                                                          \
            for (int64_t i = 0; i < n; i++)                                            \
                out[i] = EW_MATH(name)(x, b[i]);                                       \
        } else {                                                                       \
            for (int64_t i = 0; i < n; i++)                                            \
                out[i] = EW_MATH(name)(a[i * sa], b[i * sb]);                          \
        }                                                                              \
    }
#include "ops.def"

/* NOTE: `x ** 2` (a broadcast exponent equal to 2) is computed as x*x, as
 * NumPy's `x ** 2` does: 20x cheaper than powf, and correctly rounded,
 * while glibc's powf(x, 2) is off by one ulp in rare near-halfway cases. */
static EW_TARGET void EW_FN(ew_pow_fast)(const void *a_, int64_t sa, const void *b_, int64_t sb,
                                         void *out_, int64_t n)
{
    const T *a = (const T *)a_;
    T *out = (T *)out_;
    if (sb == 0 && ((const T *)b_)[0] == (T)2) {
        if (sa == 1) {
            for (int64_t i = 0; i < n; i++)
                out[i] = a[i] * a[i];
        } else {
            for (int64_t i = 0; i < n; i++)
                out[i] = a[i * sa] * a[i * sa];
        }
        return;
    }
    EW_FN(ew_pow)(a_, sa, b_, sb, out_, n);
}

#ifdef EW_SQRT_SIMD
/* Note [sqrt] in cpu_ewise.c: same result as ndl_sqrt_*, explicit SIMD. */
static EW_TARGET void EW_FN(ew_sqrt_simd)(const void *a_, int64_t sa, void *out_, int64_t n)
{
    if (sa != 1) {
        EW_FN(ew_sqrt)(a_, sa, out_, n);
        return;
    }
    const T *a = (const T *)a_;
    T *out = (T *)out_;
    int64_t i = 0;
    for (; i + EW_VW <= n; i += EW_VW)
        EW_VSTORE(out + i, EW_VSQRT(EW_VLOAD(a + i)));
    for (; i < n; i++)
        out[i] = EW_MATH(sqrt)(a[i]);
}
#define EW_SQRT_LOOP EW_FN(ew_sqrt_simd)
#else
#define EW_SQRT_LOOP EW_FN(ew_sqrt)
#endif

#ifdef EW_EXP_SCALEF
/* Note [exp by scalef] in cpu_ewise.c: ndl_exp_f32's bits, 2^k in one step. */
static EW_TARGET void EW_FN(ew_exp_scalef)(const void *a_, int64_t sa, void *out_, int64_t n)
{
    if (sa != 1) {
        EW_FN(ew_exp)(a_, sa, out_, n);
        return;
    }
    const T *a = (const T *)a_;
    T *out = (T *)out_;
    int64_t i = 0;
    for (; i + EW_VW <= n; i += EW_VW) {
        T p[EW_VW], kf[EW_VW];
        for (int j = 0; j < EW_VW; j++) {
            int32_t k;
            p[j] = EW_MATH(exp_core)(a[i + j], &k, &kf[j]);
        }
        EW_VSTORE(out + i, EW_VSCALEF(EW_VLOAD(p), EW_VLOAD(kf)));
    }
    for (; i < n; i++)
        out[i] = EW_MATH(exp)(a[i]);
}
#define EW_EXP_LOOP EW_FN(ew_exp_scalef)
#else
#define EW_EXP_LOOP EW_FN(ew_exp)
#endif

/* Tables by op code; sqrt, exp and pow take their special loops above. */
static const ndl_ew_unary_loop EW_FN(ew_unary_loops)[NDL_NUM_UNARY] = {
#define NDL_UNARY_KERNEL(NAME, name, numpy, method)                                       \
    [NDL_UN_##NAME] = NDL_UN_##NAME == NDL_UN_SQRT  ? EW_SQRT_LOOP                        \
                      : NDL_UN_##NAME == NDL_UN_EXP ? EW_EXP_LOOP                         \
                                                    : EW_FN(ew_##name),
#include "ops.def"
};

static const ndl_ew_binary_loop EW_FN(ew_binary_loops)[NDL_NUM_BINARY] = {
#define NDL_BINARY_KERNEL(NAME, name, numpy, method) \
    [NDL_BIN_##NAME] = NDL_BIN_##NAME == NDL_BIN_POW ? EW_FN(ew_pow_fast) : EW_FN(ew_##name),
#include "ops.def"
};

#undef EW_SQRT_LOOP
#undef EW_EXP_LOOP
#undef EW_MATH
#undef EW_FN
#undef EW_PASTE
#undef EW_PASTE_
#undef T
#undef EW_DT
#undef EW_SFX
#undef EW_TARGET
#undef EW_SQRT_SIMD
#undef EW_EXP_SCALEF
#undef EW_VSCALEF
#undef EW_VW
#undef EW_VLOAD
#undef EW_VSQRT
#undef EW_VSTORE
