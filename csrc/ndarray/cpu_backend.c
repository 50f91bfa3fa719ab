/* cpu_backend.c: the CPU entry of the backend table (backend.h). Memory is
 * 64-byte aligned host memory (2 MiB and huge pages for big buffers);
 * kernels are the ndl_cpu_* functions (ndl_core.h, and backend.h for the
 * convolution ones). The CPU fills every slot, optional ones included. */
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "backend.h"

static void *cpu_alloc(size_t nbytes)
{
    void *p = NULL;
    /* NOTE: posix_memalign(0 bytes) may return NULL legitimately; ask for one cache line. */
    size_t rounded = (nbytes + 63) & ~(size_t)63;
    if (rounded == 0)
        rounded = 64;
#ifdef __SANITIZE_ADDRESS__
    rounded = nbytes > 0 ? nbytes : 1; /* Note [Exact buffers under ASan], storage.c */
#endif
    if (rounded >= ((size_t)4 << 20)) {
        /* NOTE: big buffers are 2 MiB aligned and ask for transparent huge
         * pages, as NumPy does: a fresh 64 MB result otherwise takes 16K
         * page faults, which cost more than the kernel that fills it. */
        rounded = (rounded + ((size_t)2 << 20) - 1) & ~(((size_t)2 << 20) - 1);
        if (posix_memalign(&p, (size_t)2 << 20, rounded) != 0)
            return NULL;
#ifdef MADV_HUGEPAGE
        madvise(p, rounded, MADV_HUGEPAGE);
#endif
        return p;
    }
    if (posix_memalign(&p, 64, rounded) != 0)
        return NULL;
    return p;
}

static void cpu_free(void *p) { free(p); }

/* The scalar slot: s as one element of dt with all strides 0, through the
 * binary loops (so the numbers are ndl_cpu_binary's). */
static int cpu_scalar(ndl_binop op, ndl_dtype dt, const void *a, const ndl_layout *la, double s,
                      int reflected, void *out)
{
    float sf = (float)s;
    double sd = s;
    const void *sp = dt == NDL_FLOAT64 ? (const void *)&sd : (const void *)&sf;
    ndl_layout ls = *la;
    ls.offset = 0;
    memset(ls.strides, 0, sizeof ls.strides);
    if (reflected)
        return ndl_cpu_binary(op, dt, sp, &ls, a, la, out);
    return ndl_cpu_binary(op, dt, a, la, sp, &ls, out);
}

static int cpu_memcpy(void *dst, const void *src, size_t nbytes)
{
    if (nbytes)
        memcpy(dst, src, nbytes);
    return NDL_OK;
}

const ndl_backend ndl_cpu_backend = {
    .name = "cpu",
    .host_accessible = 1,
    .scratch_bytes = 256 * 1024,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .to_host = cpu_memcpy,
    .from_host = cpu_memcpy,
    .fill = ndl_cpu_fill,
    .copy = ndl_cpu_copy,
    .unary = ndl_cpu_unary,
    .binary = ndl_cpu_binary,
    .scalar = cpu_scalar,
    .reduce = ndl_cpu_reduce,
    .matmul = ndl_cpu_matmul,
    .adam = ndl_cpu_adam,
    .sgd = ndl_cpu_sgd,
    .pad = ndl_cpu_pad,
    .flip = ndl_cpu_flip,
    .dilate = ndl_cpu_dilate,
    .im2col = ndl_cpu_im2col,
    .softmax = ndl_cpu_softmax,
    .softmax_grad = ndl_cpu_softmax_grad,
    .softmax_xent = ndl_cpu_softmax_xent,
    .softmax_xent_grad = ndl_cpu_softmax_xent_grad,
    .layer_norm = ndl_cpu_layer_norm,
    .layer_norm_grad = ndl_cpu_layer_norm_grad,
    .masked_scale = ndl_cpu_masked_scale,
    .take_rows = ndl_cpu_take_rows,
    .scatter_add_rows = ndl_cpu_scatter_add_rows,
};
