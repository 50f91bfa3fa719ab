/* cpu_conv.h: the CPU's im2col with implicit zero padding and any window,
 * which the convolution (ndarray_conv.c) calls instead of pad + the im2col
 * slot when the device's im2col is the CPU's (Note [im2col with implicit
 * padding], cpu_conv.c). The slot's contract (backend.h) with a (N, H, W, C)
 * read as (N, lo[0] + H + hi[0], lo[1] + W + hi[1], C), the added rows and
 * columns zeros, lo and hi >= 0; and with the window `win`: kh x kw taps d
 * apart (Note [Dilated windows], ndarray_conv.c), so that row (n, y, x),
 * column (i, j, c) holds a[n, y*s + i*d, x*s + j*d, c]. */
#ifndef NDL_CPU_CONV_H
#define NDL_CPU_CONV_H

#include "backend.h"

int ndl_cpu_im2col_padded(ndl_dtype dt, const void *a, const ndl_layout *la,
                          const ndl_window *win, const int64_t *lo, const int64_t *hi,
                          int64_t row0, int64_t nrows, void *out);

/* The adjoint of im2col, one thread: rows [row0, row0 + nrows) of the
 * compact (N*Ho*Wo, kh*kw*C) matrix col added into out (oshape = N, H, W, C;
 * compact), tap (i, j) of row (n, y, x) at out[n, y*s + i - lo[0],
 * x*s + j - lo[1], :] where that is inside out (Note [Transposed conv],
 * ndarray_conv.c). Float types only; the caller checks the sizes. */
void ndl_cpu_col2im_add(ndl_dtype dt, const void *col, int64_t row0, int64_t nrows,
                        const int64_t *oshape, int64_t kh, int64_t kw, int64_t s,
                        const int64_t *lo, int64_t ho, int64_t wo, void *out);

/* Note [Conv rows in place] (cpu_conv_rows.c): out (N, Ho, Wo, Co), compact, =
 * the stride-1 conv of x (N, Hp, Wp, C), compact and already padded, with
 * w as a (kh*kw*C, Co) matrix of strides (rsw, csw); Ho = Hp - kh + 1, Wo =
 * Wp - kw + 1. _fit: 1 when the path takes these sizes (kw*C within the
 * matmul's KC, Wo two register tiles at least, Co two column panels at
 * most). */
int ndl_cpu_conv_rows_fit(ndl_dtype dt, int64_t kw, int64_t c, int64_t wo, int64_t co);
int ndl_cpu_conv_rows(ndl_dtype dt, const void *x, int64_t n, int64_t hp, int64_t wp, int64_t c,
                      int64_t kh, int64_t kw, const void *w, int64_t rsw, int64_t csw, int64_t co,
                      void *out);

#endif
