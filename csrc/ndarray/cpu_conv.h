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

#endif
