/* threadpool.h: needle's persistent CPU worker pool.
 *
 * One pool per process, created on first use, NEEDLE_NUM_THREADS workers in
 * all (default: the CPUs this process may run on), the calling thread being
 * one of them. Small jobs never wake the pool: callers pass a grain and the
 * pool runs the whole range inline when it is smaller than two grains or
 * when only one thread is configured. Safe after fork (the child starts with
 * a fresh, lazily created pool). Never touches Python.
 */
#ifndef NDL_THREADPOOL_H
#define NDL_THREADPOOL_H

#include <stdint.h>

/* Work on the half-open range [begin, end) of task indices. */
typedef void (*ndl_range_fn)(void *ctx, int64_t begin, int64_t end);

/* Split [0, n) into contiguous chunks of at least `grain` indices, run fn on
 * each chunk across the pool and wait for all of them. */
void ndl_parallel_for(int64_t n, int64_t grain, ndl_range_fn fn, void *ctx);

/* Note [Denormals] (threadpool.c): 1 when the matmul kernels run with
 * flush-to-zero and denormals-are-zero set (the default), 0 after
 * NEEDLE_FLUSH_DENORMALS=0. enter sets both bits on the calling thread (when
 * enabled) and returns the mode to give back to leave, which restores it. */
int ndl_flush_denormals_enabled(void);
unsigned ndl_flush_denormals_enter(void);
void ndl_flush_denormals_leave(unsigned saved);

int ndl_get_num_threads(void);
/* n >= 1; takes effect for the next parallel_for. */
void ndl_set_num_threads(int n);

#endif
