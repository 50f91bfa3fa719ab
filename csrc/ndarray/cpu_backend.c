/* cpu_backend.c: the CPU entry of the backend table (backend.h). Memory is
 * 64-byte aligned host memory; kernels are the ndl_cpu_* functions. */
#include <stdlib.h>
#include <string.h>

#include "backend.h"

static void *cpu_alloc(size_t nbytes)
{
    void *p = NULL;
    /* NOTE: posix_memalign(0 bytes) may return NULL legitimately; ask for one cache line. */
    size_t rounded = (nbytes + 63) & ~(size_t)63;
    if (rounded == 0)
        rounded = 64;
    if (posix_memalign(&p, 64, rounded) != 0)
        return NULL;
    return p;
}

static void cpu_free(void *p) { free(p); }

static int cpu_memcpy(void *dst, const void *src, size_t nbytes)
{
    if (nbytes)
        memcpy(dst, src, nbytes);
    return NDL_OK;
}

const ndl_backend ndl_cpu_backend = {
    .name = "cpu",
    .host_accessible = 1,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .to_host = cpu_memcpy,
    .from_host = cpu_memcpy,
    .fill = ndl_cpu_fill,
    .copy = ndl_cpu_copy,
    .unary = ndl_cpu_unary,
    .binary = ndl_cpu_binary,
    .reduce = ndl_cpu_reduce,
    .matmul = ndl_cpu_matmul,
    .adam = ndl_cpu_adam,
    .sgd = ndl_cpu_sgd,
};
