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
/* Note [exp by scalef] in cpu_ewise.c: the bits of ndl_<name>_f32, its
 * exp(ARG(x)) scaled by 2^k in one step, then FINISH(x, e). */
#define EW_BY_SCALEF(name, ARG, FINISH)                                                    \
    static EW_TARGET void EW_FN(ew_##name##_scalef)(const void *a_, int64_t sa, void *out_, \
                                                    int64_t n)                             \
    {                                                                                      \
        if (sa != 1) {                                                                     \
            EW_FN(ew_##name)(a_, sa, out_, n);                                             \
            return;                                                                        \
        }                                                                                  \
        const T *a = (const T *)a_;                                                        \
        T *out = (T *)out_;                                                                \
        int64_t i = 0;                                                                     \
        for (; i + EW_VW <= n; i += EW_VW) {                                               \
            /* locals only, which gcc vectorizes (out may be a) */                         \
            T x[EW_VW], y[EW_VW], p[EW_VW], kf[EW_VW], e[EW_VW];                           \
            EW_VSTORE(x, EW_VLOAD(a + i));                                                 \
            for (int j = 0; j < EW_VW; j++) {                                              \
                int32_t k;                                                                 \
                p[j] = EW_MATH(exp_core)(ARG(x[j]), &k, &kf[j]);                           \
            }                                                                              \
            EW_VSTORE(e, EW_VSCALEF(EW_VLOAD(p), EW_VLOAD(kf)));                           \
            _Pragma("GCC unroll 1") /* a loop gcc vectorizes, not 16 statements */         \
            for (int j = 0; j < EW_VW; j++)                                                \
                y[j] = FINISH(x[j], e[j]);                                                 \
            EW_VSTORE(out + i, EW_VLOAD(y));                                               \
        }                                                                                  \
        for (; i < n; i++)                                                                 \
            out[i] = EW_MATH(name)(a[i]);                                                  \
    }
#define EW_EXP_ARG(x) (x)
#define EW_EXP_FINISH(x, e) (e)
EW_BY_SCALEF(exp, EW_EXP_ARG, EW_EXP_FINISH)
EW_BY_SCALEF(tanh, EW_MATH(tanh_exp_arg), EW_MATH(tanh_with_exp))
EW_BY_SCALEF(sigmoid, EW_MATH(sigmoid_exp_arg), EW_MATH(sigmoid_with_exp))
#undef EW_EXP_ARG
#undef EW_EXP_FINISH
#undef EW_BY_SCALEF
#define EW_EXP_LOOP(name) EW_FN(ew_##name##_scalef)
#else
#define EW_EXP_LOOP(name) EW_FN(ew_##name)
#endif

/* Tables by op code; sqrt, exp, tanh, sigmoid and pow take their special
 * loops above where they have them. */
static const ndl_ew_unary_loop EW_FN(ew_unary_loops)[NDL_NUM_UNARY] = {
#define NDL_UNARY_KERNEL(NAME, name, numpy, method)                                       \
    [NDL_UN_##NAME] = NDL_UN_##NAME == NDL_UN_SQRT      ? EW_SQRT_LOOP                    \
                      : NDL_UN_##NAME == NDL_UN_EXP     ? EW_EXP_LOOP(exp)                \
                      : NDL_UN_##NAME == NDL_UN_TANH    ? EW_EXP_LOOP(tanh)               \
                      : NDL_UN_##NAME == NDL_UN_SIGMOID ? EW_EXP_LOOP(sigmoid)            \
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
