/* emu/mma.h: the CUDA emulator's stand-in for <mma.h> (nvcuda::wmma).
 *
 * What needle's TF32 kernel uses (matmul_tf32_kernel, Note [TF32 switch],
 * cuda_matmul.cu) and CUDA documents for it (programming guide, "Warp Matrix
 * Functions"; PTX ISA, wmma and cvt.rna.tf32.f32): the m16n16k8 shapes with
 * precision::tf32 inputs (row_major and col_major) and a float accumulator,
 * fragment (num_elements, x[]), fill_fragment, load_matrix_sync,
 * store_matrix_sync (mem_row_major, mem_col_major), mma_sync and
 * __float_to_tf32. Another shape or type does not compile, as with nvcc
 * (the fragment has no definition). The collectives run in emu_wmma.cc.
 *
 * Note [Emulated WMMA]
 *   - Warp-collective: load_matrix_sync, store_matrix_sync and mma_sync
 *     must be called by all 32 lanes of a warp with the same arguments
 *     (pointer, ldm, layout, fragment types). Each lane stages its call
 *     (and, for mma_sync, a copy of its a, b, c elements) in its slot, then
 *     waits at the emulator's warp rendezvous (__syncwarp, full mask,
 *     emu_exec.cc) at the caller's file and line; then every lane checks
 *     every other lane's slot (a lane that did not call it, or called it
 *     with another pointer, ldm, layout, fragment or at another line, is a
 *     launch error naming the kernel, block, thread, file and line), does
 *     its own part, and waits at a second rendezvous before its slot may be
 *     reused. So a lane never reads an operand another lane has already
 *     overwritten (mma_sync(c, a, b, c) reads the staged copy of c), and a
 *     lane that exited before the call is the rendezvous' deadlock error
 *     ("__syncwarp at <the wmma call's file:line> ... lanes 0x... arrived").
 *     A block whose last warp is partial cannot call them (an error).
 *     CUDA documents each as "waits until all warp lanes have arrived, then"
 *     loads, multiplies or stores, and no more: so a load reads memory once
 *     the whole warp has arrived, while a store writes each lane's elements
 *     only when that lane resumes after the call (the first to resume stores
 *     and runs on before the others have stored): reading another lane's
 *     stored elements needs a __syncwarp, as on the GPU.
 *   - Checked as documented: the pointer 256-bit (32-byte) aligned, ldm a
 *     multiple of 16 bytes (4 floats), a layout_t that is mem_row_major or
 *     mem_col_major. Element (r, c) of a row-major tile is at p[r * ldm + c],
 *     of a column-major one at p[c * ldm + r]; A is M x K, B is K x N, the
 *     accumulator M x N.
 *   - The element-to-lane mapping, which CUDA leaves unspecified, is on
 *     purpose not the naive one (lane l holding elements l * E .. l * E +
 *     E - 1 of the row-major tile): slot e of lane l holds element
 *     (a * (32 * e + l) + b) mod (rows * cols) of the row-major tile, with
 *     (a, b) = (13, 7) for matrix_a, (29, 5) for matrix_b, (45, 11) for the
 *     accumulator (a odd: a bijection). A lane's elements are spread over
 *     rows and columns, and differ between a and the accumulator, so code
 *     that assumed a mapping (read x[i] as row lane / 2, say) fails here.
 *     Element-wise work on x[] (scaling an accumulator) is legal and works.
 *   - __float_to_tf32 is PTX's cvt.rna.tf32.f32: round to nearest, ties
 *     away from zero, to a 10-bit mantissa (the low 13 bits zero); NaN and
 *     Inf kept; a finite value past the largest TF32 rounds to Inf;
 *     subnormals are rounded at the same bit.
 *   - mma_sync: the tensor core reads only the TF32 bits of a and b (the
 *     low 13 mantissa bits are taken as zero; a NaN stays NaN), so a kernel
 *     that forgot __float_to_tf32 gets truncated (not rounded) inputs, as
 *     on the GPU. Products of TF32 values are exact in float32 (11 x 11
 *     significant bits); the accumulation is in float32 in a fixed order:
 *     d[i][j] = c[i][j], then d[i][j] += a[i][k] * b[k][j] for k = 0 .. K-1,
 *     each sum rounded (the hardware's order and internal width are
 *     unspecified; an FMA contraction gives the same bits, the product
 *     being exact).
 *   - fill_fragment is not a collective (each lane fills its own elements).
 *     A fragment is NaN until filled or loaded (on a GPU it holds whatever
 *     its registers held), so a kernel that forgot fill_fragment gets NaN.
 */
#ifndef NDL_EMU_MMA_H
#define NDL_EMU_MMA_H

#include <stdint.h>
#include <string.h>

#include "cuda_runtime.h"

namespace ndl_emu {
enum WmmaUse { WMMA_A, WMMA_B, WMMA_C };
/* The collectives (emu_wmma.cc). x has the lane's n elements of a rows x
 * cols tile; layout: the memory's (0 row-major, 1 column-major, else an
 * error); a_col, b_col: the fragments'. */
void wmma_load(WmmaUse use, int rows, int cols, int layout, float *x, int n, const float *p,
               unsigned ldm, const char *file, int line);
void wmma_store(float *p, const float *x, int rows, int cols, int n, unsigned ldm, int layout,
                const char *file, int line);
void wmma_mma(float *d, const float *a, const float *b, const float *c, int m, int nn, int k,
              bool a_col, bool b_col, const char *file, int line);
/* Slot e of lane `lane`'s element of a rows x cols tile, as r * cols + c
 * (Note [Emulated WMMA]). */
inline int wmma_position(WmmaUse use, int size, int lane, int e)
{
    static const int mul[3] = {13, 29, 45}, add[3] = {7, 5, 11};
    return (mul[use] * (32 * e + lane) + add[use]) % size;
}
} // namespace ndl_emu

namespace nvcuda {
namespace wmma {

inline float __float_to_tf32(float in)
{
    const uint32_t u = __builtin_bit_cast(uint32_t, in);
    if ((u & 0x7f800000u) == 0x7f800000u) /* NaN and Inf kept */
        return in;
    /* half of the 13 low bits added to the magnitude: ties away from zero */
    return __builtin_bit_cast(float, (u + 0x1000u) & 0xffffe000u);
}

struct row_major;
struct col_major;
struct matrix_a;
struct matrix_b;
struct accumulator;
namespace precision {
struct tf32;
}

enum layout_t { mem_row_major, mem_col_major };

template <typename T> struct helper_traits {
    typedef T element_type;
    typedef T storage_element_type;
};
template <> struct helper_traits<precision::tf32> {
    typedef precision::tf32 element_type;
    typedef float storage_element_type;
};

template <typename T, int size, int packed_size = size> struct __align__(8) __frag_base {
    enum { num_elements = size };
    enum { num_storage_elements = packed_size };
    typedef T element_type;
    typedef typename helper_traits<T>::storage_element_type storage_element_type;
    storage_element_type x[num_storage_elements];
    /* A fresh fragment is NaN here (garbage on a GPU): an accumulator used
     * before fill_fragment or a load poisons the result (Note [Emulated WMMA]). */
    __frag_base()
    {
        for (int i = 0; i < num_storage_elements; i++)
            x[i] = __builtin_nanf("");
    }
};

template <typename Use, int m, int n, int k, typename T, typename Layout = void> class fragment;
template <>
class fragment<matrix_a, 16, 16, 8, precision::tf32, row_major>
    : public __frag_base<precision::tf32, 4> {};
template <>
class fragment<matrix_a, 16, 16, 8, precision::tf32, col_major>
    : public __frag_base<precision::tf32, 4> {};
template <>
class fragment<matrix_b, 16, 16, 8, precision::tf32, row_major>
    : public __frag_base<precision::tf32, 4> {};
template <>
class fragment<matrix_b, 16, 16, 8, precision::tf32, col_major>
    : public __frag_base<precision::tf32, 4> {};
template <> class fragment<accumulator, 16, 16, 8, float> : public __frag_base<float, 8> {};

template <typename Layout> struct __is_col;
template <> struct __is_col<row_major> { static constexpr bool value = false; };
template <> struct __is_col<col_major> { static constexpr bool value = true; };

/* Not a collective: every element of this lane's fragment. */
template <typename Use, int m, int n, int k, typename T, typename Layout>
inline void fill_fragment(fragment<Use, m, n, k, T, Layout> &f,
                          const typename helper_traits<T>::storage_element_type &v)
{
    for (int i = 0; i < f.num_storage_elements; i++)
        f.x[i] = v;
}

template <int m, int n, int k, typename Layout>
inline void load_matrix_sync(fragment<matrix_a, m, n, k, precision::tf32, Layout> &f,
                             const float *p, unsigned ldm, const char *file = __builtin_FILE(),
                             int line = __builtin_LINE())
{
    ndl_emu::wmma_load(ndl_emu::WMMA_A, m, k, __is_col<Layout>::value, f.x, f.num_elements, p,
                       ldm, file, line);
}

template <int m, int n, int k, typename Layout>
inline void load_matrix_sync(fragment<matrix_b, m, n, k, precision::tf32, Layout> &f,
                             const float *p, unsigned ldm, const char *file = __builtin_FILE(),
                             int line = __builtin_LINE())
{
    ndl_emu::wmma_load(ndl_emu::WMMA_B, k, n, __is_col<Layout>::value, f.x, f.num_elements, p,
                       ldm, file, line);
}

template <int m, int n, int k>
inline void load_matrix_sync(fragment<accumulator, m, n, k, float> &f, const float *p,
                             unsigned ldm, layout_t layout, const char *file = __builtin_FILE(),
                             int line = __builtin_LINE())
{
    ndl_emu::wmma_load(ndl_emu::WMMA_C, m, n, (int)layout, f.x, f.num_elements, p, ldm, file,
                       line);
}

template <int m, int n, int k>
inline void store_matrix_sync(float *p, const fragment<accumulator, m, n, k, float> &f,
                              unsigned ldm, layout_t layout, const char *file = __builtin_FILE(),
                              int line = __builtin_LINE())
{
    ndl_emu::wmma_store(p, f.x, m, n, f.num_elements, ldm, (int)layout, file, line);
}

template <int m, int n, int k, typename LA, typename LB>
inline void mma_sync(fragment<accumulator, m, n, k, float> &d,
                     const fragment<matrix_a, m, n, k, precision::tf32, LA> &a,
                     const fragment<matrix_b, m, n, k, precision::tf32, LB> &b,
                     const fragment<accumulator, m, n, k, float> &c,
                     const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    ndl_emu::wmma_mma(d.x, a.x, b.x, c.x, m, n, k, __is_col<LA>::value, __is_col<LB>::value,
                      file, line);
}

} // namespace wmma
} // namespace nvcuda

#endif
