/* scalar_ops.h: the per-element math of every elementwise op, written once.
 *
 * Owns: ndl_<kernel>_f32 / ndl_<kernel>_f64 for every elementwise row of
 * ../ops.def (Note [One op, one row]): one argument for the unary rows, two
 * for the binary ones. The CPU
 * loops (cpu_ewise.c) and the CUDA kernels (csrc/cuda) both call these, so
 * the CPU tests check the math the GPU runs. Python equivalent: the NumPy
 * ufunc of the same name (np.negative, np.log, ..., np.maximum, np.less_equal).
 *
 * Rules every function here follows:
 *   - branch-free (selects, no early returns), so that gcc -O3 vectorizes a
 *     loop calling it and a GPU warp does not diverge;
 *   - no errno, no global state; safe for any input including NaN, +-inf,
 *     +-0 and subnormals;
 *   - NumPy's semantics: comparisons give 1.0 / 0.0 and are false on NaN
 *     (except ne); maximum / minimum propagate NaN; pow is C pow;
 *   - no fused multiply-add is written explicitly. NOTE: gcc in GNU C mode
 *     fuses a*b+c on its own wherever the target has FMA; the CPU loops are
 *     therefore built for the x86-64 baseline and for AVX2 *without* FMA, so
 *     every machine computes the same bits. (nvcc fuses by default: GPU
 *     results may differ from the CPU's in the last bit.)
 *
 * exp, log and tanh of float32 are Cephes-style polynomials with integer
 * exponent bit tricks that gcc vectorizes; float64 uses libm. Max error over
 * every float32 input, against double-precision libm: exp 0.99 ulp, log
 * 0.83 ulp, tanh 1.33 ulp, sigmoid 2.4 ulp (subnormal results included).
 */
#ifndef NDL_SCALAR_OPS_H
#define NDL_SCALAR_OPS_H

#ifdef __CUDACC__
#define NDL_HD __host__ __device__ __forceinline__
#else
#define NDL_HD static inline
#endif

#include <math.h>
#include <stdint.h>
#include <string.h>

/* ---- bit casts --------------------------------------------------------- */
NDL_HD uint32_t ndl_f32_bits(float x)
{
#ifdef __CUDA_ARCH__
    return __float_as_uint(x);
#else
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
#endif
}

NDL_HD float ndl_f32_from_bits(uint32_t u)
{
#ifdef __CUDA_ARCH__
    return __uint_as_float(u);
#else
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
#endif
}

NDL_HD uint64_t ndl_f64_bits(double x)
{
#ifdef __CUDA_ARCH__
    return (uint64_t)__double_as_longlong(x);
#else
    uint64_t u;
    memcpy(&u, &x, sizeof u);
    return u;
#endif
}

NDL_HD double ndl_f64_from_bits(uint64_t u)
{
#ifdef __CUDA_ARCH__
    return __longlong_as_double((long long)u);
#else
    double x;
    memcpy(&x, &u, sizeof x);
    return x;
#endif
}

/* 2^k for integer k in [-126, 127] (a normal float built from its bits). */
NDL_HD float ndl_pow2i_f32(int32_t k)
{
    return ndl_f32_from_bits((uint32_t)(k + 127) << 23);
}

/* c ? a : b, written with bit masks.
 * NOTE: gcc (without -fno-trapping-math, which our build does not pass)
 * will not if-convert a branch that holds float arithmetic, and given a
 * `?:` it likes to sink the arithmetic into the branch that uses it or to
 * clone the rest of the function per branch; either way the loop stops
 * vectorizing. A mask select has no branch to sink into. Use it whenever
 * an arm is computed, or a clamp feeds further math; plain `?:` is fine
 * for selecting between a value and constants at the very end. */
NDL_HD float ndl_select_f32(int c, float a, float b)
{
    uint32_t m = (uint32_t)0 - (uint32_t)(c != 0);
    return ndl_f32_from_bits((ndl_f32_bits(a) & m) | (ndl_f32_bits(b) & ~m));
}

NDL_HD double ndl_select_f64(int c, double a, double b)
{
    uint64_t m = (uint64_t)0 - (uint64_t)(c != 0);
    return ndl_f64_from_bits((ndl_f64_bits(a) & m) | (ndl_f64_bits(b) & ~m));
}

/* ---- unary ------------------------------------------------------------- */
NDL_HD float ndl_neg_f32(float x) { return -x; }
NDL_HD double ndl_neg_f64(double x) { return -x; }

NDL_HD float ndl_abs_f32(float x) { return fabsf(x); }
NDL_HD double ndl_abs_f64(double x) { return fabs(x); }

/* NOTE: with errno semantics for sqrt gcc would not vectorize a loop over
 * sqrtf; setup.py now builds with -fno-math-errno, and cpu_ewise.c also gives
 * the contiguous sqrt loop an explicit SIMD body with the same (exact)
 * result, so either build is fast. */
NDL_HD float ndl_sqrt_f32(float x) { return sqrtf(x); }
NDL_HD double ndl_sqrt_f64(double x) { return sqrt(x); }

/* NOTE: relu(0) and relu(-0) are +0, relu(NaN) is NaN (as np.maximum(x, 0)). */
NDL_HD float ndl_relu_f32(float x) { return x <= 0.0f ? 0.0f : x; }
NDL_HD double ndl_relu_f64(double x) { return x <= 0.0 ? 0.0 : x; }

/* exp(x) for float32, max error 1 ulp over all inputs (subnormal results
 * included), vectorizable.
 *   x = k*ln2 + r, |r| <= ln2/2;  exp(x) = 2^k * exp(r)
 * exp(r) is Cephes' degree-7 expf polynomial; 2^k is applied in two halves so
 * that subnormal results and the overflow boundary round once, correctly.
 * ndl_exp_core_f32 is the part before 2^k: it returns p = exp(r) and stores
 * k, in [-152, 129], as an int and as a float; the AVX-512 loop scales by
 * 2^k in one instruction (Note [exp by scalef] in cpu_ewise.c). */
NDL_HD float ndl_exp_core_f32(float x, int32_t *k_out, float *kf_out)
{
    /* NOTE: the clamp keeps k in [-152, 129] so the exponent arithmetic below
     * cannot wrap; exp(-105) ~ 2.5e-46 rounds to 0 and exp(89) overflows, so
     * the clamp itself gives the right underflow and overflow. A NaN fails
     * both comparisons and flows through the arithmetic as NaN. */
    float xc = ndl_select_f32(x < -105.0f, -105.0f, x);
    xc = ndl_select_f32(xc > 89.0f, 89.0f, xc);

    /* NOTE: round to nearest by adding 1.5*2^23: the sum's low mantissa bits
     * then hold k + 2^22, read back as an integer without a float->int
     * conversion. Needs strict IEEE single evaluation: no -ffast-math, no x87. */
    const float magic = 12582912.0f;
    float t = xc * 1.44269504088896341f + magic;
    float kf = t - magic;
    *k_out = (int32_t)(ndl_f32_bits(t) - ndl_f32_bits(magic));
    *kf_out = kf;

    /* Cody-Waite: ln2 = C1 + C2 with C1 exact in 9 bits, so k*C1 is exact. */
    float r = xc - kf * 0.693359375f;
    r = r - kf * -2.12194440e-4f;

    float z = r * r;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    return p * z + r + 1.0f;
}
NDL_HD float ndl_exp_f32(float x)
{
    int32_t k;
    float kf;
    float p = ndl_exp_core_f32(x, &k, &kf);
    /* NOTE: 2^k may be outside the normal range: split k = k1 + k2 with both
     * halves in range. p*2^k1 is exact and the second multiply rounds once
     * (to a subnormal, or to inf past FLT_MAX). */
    int32_t k1 = k / 2;
    int32_t k2 = k - k1;
    return p * ndl_pow2i_f32(k1) * ndl_pow2i_f32(k2);
}
NDL_HD double ndl_exp_f64(double x) { return exp(x); }

/* log(x) for float32 (Cephes logf), max error 1 ulp, vectorizable.
 *   x = 2^e * m, m in [sqrt(1/2), sqrt(2));  log(x) = e*ln2 + log1p(m - 1) */
NDL_HD float ndl_log_f32(float x)
{
    /* NOTE: subnormal inputs carry no implicit bit; scale them by 2^23 first
     * so the exponent field below is meaningful. */
    int sub = x < 1.17549435e-38f;
    float xs = ndl_select_f32(sub, x * 8388608.0f, x);
    uint32_t u = ndl_f32_bits(xs);
    int32_t e = (int32_t)((u >> 23) & 0xffu) - 126 - (23 & -sub);
    float m = ndl_f32_from_bits((u & 0x007fffffu) | 0x3f000000u); /* [0.5, 1) */
    int small = m < 0.707106781186547524f;
    e -= small;
    m = ndl_select_f32(small, m + m, m);
    float f = m - 1.0f; /* exact (Sterbenz) */
    float fe = (float)e;

    float z = f * f;
    float y = 7.0376836292e-2f;
    y = y * f - 1.1514610310e-1f;
    y = y * f + 1.1676998740e-1f;
    y = y * f - 1.2420140846e-1f;
    y = y * f + 1.4249322787e-1f;
    y = y * f - 1.6668057665e-1f;
    y = y * f + 2.0000714765e-1f;
    y = y * f - 2.4999993993e-1f;
    y = y * f + 3.3333331174e-1f;
    y = y * f * z;
    y = y + fe * -2.12194440e-4f;
    y = y - 0.5f * z;
    float r = f + y;
    r = r + fe * 0.693359375f;

    /* NOTE: specials by select: log(+0) = log(-0) = -inf, log(x<0) = NaN,
     * log(inf) = inf, log(NaN) = NaN (the payload of x is kept). */
    float special = x == 0.0f ? -INFINITY : (x < 0.0f ? NAN : x);
    return ndl_select_f32((x > 0.0f) & (x < INFINITY), r, special);
}
NDL_HD double ndl_log_f64(double x) { return log(x); }

/* tanh(x) for float32, max error 1.33 ulp, vectorizable: on |x|, an odd
 * polynomial (Cephes tanhf) below 0.625, else 1 - 2 / (exp(2|x|) + 1); then
 * the sign of x is put back. ndl_tanh_with_exp_f32 takes e = exp(2|x|)
 * (ndl_exp_f32 of ndl_tanh_exp_arg_f32(x)): Note [exp by scalef] in
 * cpu_ewise.c computes it otherwise, to the same bits. */
NDL_HD float ndl_tanh_with_exp_f32(float x, float e)
{
    float ax = fabsf(x);
    float z = ax * ax;
    float p = -5.70498872745e-3f;
    p = p * z + 2.06390887954e-2f;
    p = p * z - 5.37397155531e-2f;
    p = p * z + 1.33314422036e-1f;
    p = p * z - 3.33332819422e-1f;
    float small = p * z * ax + ax;

    /* NOTE: 1 - 2/(e+1) instead of (e-1)/(e+1): e = exp(2|x|) overflows to inf
     * for |x| > 44 and the result is then exactly 1, not inf/inf = NaN. For
     * |x| >= 0.625 the subtraction loses less than one bit (result >= 0.55). */
    float big = 1.0f - 2.0f / (e + 1.0f);
    float r = ndl_select_f32(ax < 0.625f, small, big);
    /* NOTE: the sign is copied, not computed, so tanh(-0) = -0. */
    return ndl_f32_from_bits(ndl_f32_bits(r) | (ndl_f32_bits(x) & 0x80000000u));
}
NDL_HD float ndl_tanh_exp_arg_f32(float x) { return fabsf(x) + fabsf(x); }
NDL_HD float ndl_tanh_f32(float x) { return ndl_tanh_with_exp_f32(x, ndl_exp_f32(ndl_tanh_exp_arg_f32(x))); }
NDL_HD double ndl_tanh_f64(double x) { return tanh(x); }

/* NOTE: sigmoid is computed from e = exp(-|x|) <= 1 so nothing overflows:
 * 1/(1+e) for x >= 0 and e/(1+e) for x < 0, which keeps full relative
 * precision in the left tail (sigmoid(-100) ~ 3.7e-44, not 0). */
NDL_HD float ndl_sigmoid_with_exp_f32(float x, float e)
{
    return (x >= 0.0f ? 1.0f : e) / (1.0f + e);
}
NDL_HD float ndl_sigmoid_exp_arg_f32(float x) { return -fabsf(x); }
NDL_HD float ndl_sigmoid_f32(float x)
{
    return ndl_sigmoid_with_exp_f32(x, ndl_exp_f32(ndl_sigmoid_exp_arg_f32(x)));
}
NDL_HD double ndl_sigmoid_f64(double x)
{
    double e = exp(-fabs(x));
    return (x >= 0.0 ? 1.0 : e) / (1.0 + e);
}

/* NOTE: sin and cos call libm (correctly rounded within 1 ulp, argument
 * reduction exact for huge |x|); gcc does not vectorize them, which is fine
 * for ops that are rare in networks. */
NDL_HD float ndl_sin_f32(float x) { return sinf(x); }
NDL_HD double ndl_sin_f64(double x) { return sin(x); }
NDL_HD float ndl_cos_f32(float x) { return cosf(x); }
NDL_HD double ndl_cos_f64(double x) { return cos(x); }

/* ---- binary ------------------------------------------------------------ */
NDL_HD float ndl_add_f32(float a, float b) { return a + b; }
NDL_HD double ndl_add_f64(double a, double b) { return a + b; }
NDL_HD float ndl_sub_f32(float a, float b) { return a - b; }
NDL_HD double ndl_sub_f64(double a, double b) { return a - b; }
NDL_HD float ndl_mul_f32(float a, float b) { return a * b; }
NDL_HD double ndl_mul_f64(double a, double b) { return a * b; }
/* NOTE: IEEE true division: x/0 = +-inf, 0/0 = NaN, no trap. */
NDL_HD float ndl_div_f32(float a, float b) { return a / b; }
NDL_HD double ndl_div_f64(double a, double b) { return a / b; }

/* NOTE: C pow semantics (as np.power on floats): pow(x, 0) = 1 even for NaN x,
 * pow(1, y) = 1, a negative base with a non-integral exponent gives NaN. */
NDL_HD float ndl_pow_f32(float a, float b) { return powf(a, b); }
NDL_HD double ndl_pow_f64(double a, double b) { return pow(a, b); }

/* NOTE: maximum/minimum propagate NaN from either side (np.maximum), unlike
 * fmaxf. `|` rather than `||` keeps the select branch-free for gcc. */
NDL_HD float ndl_maximum_f32(float a, float b) { return ((a > b) | (a != a)) ? a : b; }
NDL_HD double ndl_maximum_f64(double a, double b) { return ((a > b) | (a != a)) ? a : b; }
NDL_HD float ndl_minimum_f32(float a, float b) { return ((a < b) | (a != a)) ? a : b; }
NDL_HD double ndl_minimum_f64(double a, double b) { return ((a < b) | (a != a)) ? a : b; }

/* NOTE: every comparison with NaN is false except ne, which is true.
 *
 * Note [Comparisons without branches]
 *   `a > b ? 1.0f : 0.0f`, and `(float)(a > b)` as well, became a compare
 *   and a branch in the strided loops (cpu_ewise_impl.h), which gcc does
 *   not vectorize: on data of either sign half the branches mispredict.
 *   ReLU's backward compares its input, an NCHW view of nn.Conv's NHWC
 *   output (inner stride C): x > 0 on 64 x 16 x 8 x 8 of them took 345 us
 *   where the compact array took 7 (AMD EPYC Zen 2, 1 thread), and was 7%
 *   of a ResNet9 step. The 1.0 selected by the comparison's mask
 *   (ndl_select, the bit-mask select above) has no
 *   branch: 42 us strided (the gather's cost, as for any other op), the
 *   contiguous loops vectorize as before; ResNet9's step on 1 thread 11.9
 *   -> 11.2 ms. */
NDL_HD float ndl_eq_f32(float a, float b) { return ndl_select_f32(a == b, 1.0f, 0.0f); }
NDL_HD double ndl_eq_f64(double a, double b) { return ndl_select_f64(a == b, 1.0, 0.0); }
NDL_HD float ndl_ne_f32(float a, float b) { return ndl_select_f32(a != b, 1.0f, 0.0f); }
NDL_HD double ndl_ne_f64(double a, double b) { return ndl_select_f64(a != b, 1.0, 0.0); }
NDL_HD float ndl_gt_f32(float a, float b) { return ndl_select_f32(a > b, 1.0f, 0.0f); }
NDL_HD double ndl_gt_f64(double a, double b) { return ndl_select_f64(a > b, 1.0, 0.0); }
NDL_HD float ndl_ge_f32(float a, float b) { return ndl_select_f32(a >= b, 1.0f, 0.0f); }
NDL_HD double ndl_ge_f64(double a, double b) { return ndl_select_f64(a >= b, 1.0, 0.0); }
NDL_HD float ndl_lt_f32(float a, float b) { return ndl_select_f32(a < b, 1.0f, 0.0f); }
NDL_HD double ndl_lt_f64(double a, double b) { return ndl_select_f64(a < b, 1.0, 0.0); }
NDL_HD float ndl_le_f32(float a, float b) { return ndl_select_f32(a <= b, 1.0f, 0.0f); }
NDL_HD double ndl_le_f64(double a, double b) { return ndl_select_f64(a <= b, 1.0, 0.0); }

#endif /* NDL_SCALAR_OPS_H */
