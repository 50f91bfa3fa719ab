/* cpu_matmul_scratch.c: the matmul's working buffers (packing blocks, the
 * skinny loops' scratch), kept between calls instead of allocated and
 * freed by each call.
 *
 * Note [Kept scratch]
 *   A product needs up to a few hundred KiB of scratch; allocated per call,
 *   glibc hands big blocks out with mmap and back with munmap, and each new
 *   page then faults (a KVM guest pays more per fault): microseconds that
 *   a 256^3 product, ~0.2 ms, notices. So buffers come from a few global
 *   slots: ndl_matmul_scratch_get takes a kept buffer that is large enough
 *   (or allocates one), ndl_matmul_scratch_put keeps it again in a free
 *   slot, or frees it when the slots are full or it is over
 *   NDL_SCRATCH_KEEP bytes a thread: at most NDL_SCRATCH_SLOTS x that
 *   (16 MiB on 2 threads; one or two slots in a training loop) stay
 *   allocated between products, enough for every part of a product whose
 *   rows fit one A block: its narrow B block (half of L2) and A block (a
 *   third) take 5/6 of L2 a part, 1.7 MB on a 2 MiB L2 (Note [Narrow B
 *   blocks for few rows] in cpu_matmul.c). With 1 MiB in all, a 64 x 1024
 *   @ 1024 x 1024 float32 product (1.2 MB of scratch at KC 504) went
 *   through malloc and free at every call, and a training step's resident
 *   set crept by up to 1.2 MB over 20 steps (test_storage_pool). Slots are
 *   atomic pointers (no lock: safe in any thread, and after fork), in a
 *   global array, so a kept buffer is always reachable (no leak reports).
 *   Buffers are 64-byte aligned (a 64-byte header before each holds its
 *   size), which the skinny loops' scratch was not: malloc's 16-byte
 *   alignment let its rows' vectors straddle cache lines. Measured (Zen 3,
 *   1 thread, float32, against malloc per call): m = 8, K = N = 1024
 *   +25%; m = 8, K = 512, N = 2048 +11%; square 128..512 unchanged.
 */
#include "cpu_matmul.h"
#include "threadpool.h"

#include <stdatomic.h>
#include <stdlib.h>

#define NDL_SCRATCH_SLOTS 4
#define NDL_SCRATCH_KEEP ((size_t)2 << 20) /* bytes a thread: Note [Kept scratch] */
#define HEADER 64

static char *_Atomic g_slots[NDL_SCRATCH_SLOTS]; /* each a kept block (header first) or NULL */

void *ndl_matmul_scratch_get(size_t bytes)
{
    for (int i = 0; i < NDL_SCRATCH_SLOTS; i++) {
        char *blk = atomic_exchange(&g_slots[i], NULL);
        if (!blk)
            continue;
        if (*(size_t *)blk >= bytes)
            return blk + HEADER;
        free(blk); /* too small: a larger one replaces it on put */
    }
    size_t cap = (bytes + 63) / 64 * 64;
    if (cap < bytes || cap > SIZE_MAX - HEADER)
        return NULL;
    char *blk = aligned_alloc(64, cap + HEADER);
    if (!blk)
        return NULL;
    *(size_t *)blk = cap;
    return blk + HEADER;
}

void ndl_matmul_scratch_put(void *p)
{
    if (!p)
        return;
    char *blk = (char *)p - HEADER;
    if (*(size_t *)blk <= NDL_SCRATCH_KEEP * (size_t)ndl_get_num_threads())
        for (int i = 0; i < NDL_SCRATCH_SLOTS; i++) {
            char *expected = NULL;
            if (atomic_compare_exchange_strong(&g_slots[i], &expected, blk))
                return;
        }
    free(blk);
}
