/* threadpool.c: needle's persistent CPU worker pool (contract in threadpool.h).
 *
 * Python equivalent (semantics only):
 *     def parallel_for(n, grain, fn, ctx):
 *         if n < 2 * grain or nthreads == 1: return fn(ctx, 0, n)
 *         k = min(nthreads, n // grain)
 *         run fn(ctx, n*i//k, n*(i+1)//k) for i in range(k) on the pool; wait
 *
 * Note [Pool protocol]
 *   One pool per process: nthreads - 1 worker threads plus the caller. A job
 *   is published under `lock` by bumping `gen` and broadcasting `work`; every
 *   worker that notices the new generation registers itself in `active`, then
 *   all participants (caller included) claim chunk indices from the atomic
 *   `next` until they run out. The thread that finishes the last chunk
 *   signals `done_cv`; the caller returns as soon as every chunk is done.
 *   A worker that wakes late finds no chunk left and goes back to sleep; the
 *   next job is not published until `active` is back to 0, so a late worker
 *   can never claim a chunk of a job it did not read.
 *   Workers spin briefly on `gen` before sleeping, so back-to-back jobs (one
 *   matmul after another) do not pay a futex wake-up each time.
 *
 * Re-entrancy: a thread running inside a job (thread-local `tls_in_job`)
 * runs nested calls inline. Concurrent callers: `run_lock` is taken with
 * trylock; a caller that finds the pool busy runs its range inline.
 *
 * Note [Denormals]
 *   Arithmetic on denormal (subnormal) floats takes a microcode assist on
 *   x86, up to ~100x slower per instruction; a matmul fed a few of them
 *   (weights decaying towards zero, underflowing activations) slows down by
 *   that much. So the matmul kernels run their ranges, on pool threads and
 *   on the caller alike, between ndl_flush_denormals_enter and _leave, which
 *   set MXCSR's flush-to-zero (FTZ: denormal results become 0) and
 *   denormals-are-zero (DAZ: denormal inputs read as 0) bits and then put
 *   the thread's previous mode back, so Python code, other libraries and
 *   needle's other kernels (elementwise results stay bitwise equal to NumPy
 *   and between fused and composed ops) see no change. Every thread of a
 *   matmul uses the same mode, so its results stay independent of the
 *   thread count. NEEDLE_FLUSH_DENORMALS=0 (read once, at the first
 *   kernel) turns this off, for IEEE gradual underflow as NumPy computes.
 *   Elsewhere than on x86 this is a no-op.
 *
 * Fork: the atfork child handler forgets the pool (its threads do not exist
 * in the child) and re-initialises the global mutexes; the next call creates
 * a fresh pool. The old pool's memory is deliberately leaked in the child.
 */
#define _GNU_SOURCE
#include "threadpool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define NDL_MXCSR_FLUSH 0x8040u /* FTZ (bit 15) | DAZ (bit 6) */
#endif

/* How long a thread spins (with `pause`) on a condition before it sleeps:
 * long enough to bridge the gap between back-to-back kernels (a training
 * step issues them microseconds apart), short enough not to steal a core
 * from other work: OpenBLAS spins ~0.1 s and PyTorch's OpenMP ~0.2 s after
 * a kernel, which costs any other pool sharing the core; needle's workers
 * sleep on a futex 50 us after their last chunk. NEEDLE_POOL_SPIN_US
 * (0 to 100000, read once) changes the bound; 0 never spins. */
#define NDL_POOL_SPIN_NS 50000
static int64_t g_spin_ns = NDL_POOL_SPIN_NS;

typedef struct ndl_pool {
    int nthreads; /* including the caller */
    pthread_t *workers;
    int nworkers;

    pthread_mutex_t lock;
    pthread_cond_t work;    /* new generation or shutdown */
    pthread_cond_t done_cv; /* last chunk finished */
    pthread_cond_t idle_cv; /* active dropped to 0 */

    /* the current job; written under lock, read by workers under lock */
    ndl_range_fn fn;
    void *ctx;
    int64_t n;
    int64_t nchunks;
    atomic_uint_fast64_t gen;
    atomic_int_fast64_t next; /* next chunk to claim */
    atomic_int_fast64_t done; /* chunks finished */
    int active;               /* workers registered for the current job */
    int shutdown;
} ndl_pool;

static pthread_mutex_t g_cfg_lock = PTHREAD_MUTEX_INITIALIZER; /* g_pool, g_nthreads */
static pthread_mutex_t g_run_lock = PTHREAD_MUTEX_INITIALIZER; /* one job at a time */
static pthread_once_t g_atfork_once = PTHREAD_ONCE_INIT;
static ndl_pool *_Atomic g_pool = NULL;
static int g_nthreads = 0; /* 0: not resolved yet */
static _Thread_local int tls_in_job = 0;

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

/* Spin with `pause` for up to g_spin_ns while `waiting` holds, so
 * that a wake-up that comes soon costs no futex call. */
#define NDL_SPIN_WHILE(waiting)                                                 \
    do {                                                                        \
        int64_t deadline_ = 0;                                                  \
        for (unsigned i_ = 1; g_spin_ns > 0 && (waiting); i_++) {               \
            cpu_relax();                                                        \
            if (i_ % 64 == 0) { /* the clock costs ~20 ns: read it rarely */   \
                int64_t t_ = now_ns();                                          \
                if (deadline_ == 0)                                             \
                    deadline_ = t_ + g_spin_ns;                         \
                else if (t_ > deadline_)                                        \
                    break;                                                      \
            }                                                                   \
        }                                                                       \
    } while (0)

/* Note [Denormals] */
static pthread_once_t g_flush_once = PTHREAD_ONCE_INIT; /* read_env */
static int g_flush = 1;

static void read_env(void)
{
    const char *env = getenv("NEEDLE_FLUSH_DENORMALS");
    g_flush = !(env && env[0] == '0' && env[1] == '\0');
    env = getenv("NEEDLE_POOL_SPIN_US");
    if (env && *env) {
        char *end = NULL;
        long us = strtol(env, &end, 10);
        if (end != env && *end == '\0' && us >= 0 && us <= 100000)
            g_spin_ns = (int64_t)us * 1000;
    }
}

int ndl_flush_denormals_enabled(void)
{
    pthread_once(&g_flush_once, read_env);
    return g_flush;
}

unsigned ndl_flush_denormals_enter(void)
{
#ifdef NDL_MXCSR_FLUSH
    if (ndl_flush_denormals_enabled()) {
        unsigned csr = _mm_getcsr();
        if ((csr & NDL_MXCSR_FLUSH) != NDL_MXCSR_FLUSH)
            _mm_setcsr(csr | NDL_MXCSR_FLUSH);
        return csr;
    }
#endif
    return 0;
}

void ndl_flush_denormals_leave(unsigned saved)
{
#ifdef NDL_MXCSR_FLUSH
    if (ndl_flush_denormals_enabled() && (saved & NDL_MXCSR_FLUSH) != NDL_MXCSR_FLUSH)
        _mm_setcsr(saved);
#else
    (void)saved;
#endif
}

static int default_num_threads(void)
{
    const char *env = getenv("NEEDLE_NUM_THREADS");
    if (env && *env) {
        char *end = NULL;
        long v = strtol(env, &end, 10);
        if (end != env && v >= 1)
            return v > 1024 ? 1024 : (int)v;
    }
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int c = CPU_COUNT(&set);
        if (c >= 1)
            return c;
    }
    return 1;
}

static void run_chunks(ndl_pool *p, ndl_range_fn fn, void *ctx, int64_t n, int64_t nchunks)
{
    for (;;) {
        int64_t i = atomic_fetch_add(&p->next, 1);
        if (i >= nchunks)
            break;
        int64_t begin = n * i / nchunks, end = n * (i + 1) / nchunks;
        fn(ctx, begin, end);
        if (atomic_fetch_add(&p->done, 1) + 1 == nchunks) {
            pthread_mutex_lock(&p->lock);
            pthread_cond_broadcast(&p->done_cv);
            pthread_mutex_unlock(&p->lock);
        }
    }
}

static void *worker_main(void *arg)
{
    ndl_pool *p = arg;
    uint64_t seen = atomic_load(&p->gen);
    tls_in_job = 1; /* anything a worker runs that calls parallel_for runs inline */
    for (;;) {
        NDL_SPIN_WHILE(atomic_load_explicit(&p->gen, memory_order_relaxed) == seen);
        pthread_mutex_lock(&p->lock);
        while (atomic_load(&p->gen) == seen && !p->shutdown)
            pthread_cond_wait(&p->work, &p->lock);
        if (p->shutdown) {
            pthread_mutex_unlock(&p->lock);
            break;
        }
        seen = atomic_load(&p->gen);
        ndl_range_fn fn = p->fn;
        void *ctx = p->ctx;
        int64_t n = p->n, nchunks = p->nchunks;
        p->active++;
        pthread_mutex_unlock(&p->lock);

        run_chunks(p, fn, ctx, n, nchunks);

        pthread_mutex_lock(&p->lock);
        if (--p->active == 0)
            pthread_cond_broadcast(&p->idle_cv);
        pthread_mutex_unlock(&p->lock);
    }
    return NULL;
}

static void pool_destroy(ndl_pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->lock);
    p->shutdown = 1;
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; i < p->nworkers; i++)
        pthread_join(p->workers[i], NULL);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->work);
    pthread_cond_destroy(&p->done_cv);
    pthread_cond_destroy(&p->idle_cv);
    free(p->workers);
    free(p);
}

/* Returns NULL when no worker could be started (callers then run inline). */
static ndl_pool *pool_create(int nthreads)
{
    ndl_pool *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->workers = calloc((size_t)nthreads, sizeof(pthread_t));
    if (!p->workers) {
        free(p);
        return NULL;
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->work, NULL);
    pthread_cond_init(&p->done_cv, NULL);
    pthread_cond_init(&p->idle_cv, NULL);
    atomic_init(&p->gen, 0);
    atomic_init(&p->next, 0);
    atomic_init(&p->done, 0);
    for (int i = 0; i < nthreads - 1; i++) {
        if (pthread_create(&p->workers[i], NULL, worker_main, p) != 0)
            break;
        p->nworkers++;
    }
    if (p->nworkers == 0) {
        pool_destroy(p);
        return NULL;
    }
    p->nthreads = p->nworkers + 1;
    return p;
}

static void atfork_prepare(void)
{
    pthread_mutex_lock(&g_cfg_lock);
}

static void atfork_parent(void)
{
    pthread_mutex_unlock(&g_cfg_lock);
}

static void atfork_child(void)
{
    /* The workers do not exist here; forget the pool (leaked on purpose:
     * its mutexes may be in any state) and start clean. */
    atomic_store(&g_pool, NULL);
    pthread_mutex_init(&g_cfg_lock, NULL);
    pthread_mutex_init(&g_run_lock, NULL);
    tls_in_job = 0;
}

static void register_atfork(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

/* Borrowed pointer to the pool, created on first use; NULL means run inline. */
static ndl_pool *get_pool(void)
{
    ndl_pool *p = atomic_load(&g_pool);
    if (p)
        return p;
    pthread_once(&g_atfork_once, register_atfork);
    pthread_once(&g_flush_once, read_env); /* NEEDLE_POOL_SPIN_US before any spin */
    pthread_mutex_lock(&g_cfg_lock);
    if (g_nthreads == 0)
        g_nthreads = default_num_threads();
    p = atomic_load(&g_pool);
    if (!p && g_nthreads > 1) {
        p = pool_create(g_nthreads);
        atomic_store(&g_pool, p);
    }
    pthread_mutex_unlock(&g_cfg_lock);
    return p;
}

int ndl_get_num_threads(void)
{
    pthread_mutex_lock(&g_cfg_lock);
    if (g_nthreads == 0)
        g_nthreads = default_num_threads();
    int n = g_nthreads;
    pthread_mutex_unlock(&g_cfg_lock);
    return n;
}

void ndl_set_num_threads(int n)
{
    if (n < 1)
        n = 1;
    /* Wait for any running job, then tear the pool down; the next
     * parallel_for creates one of the new size. */
    pthread_mutex_lock(&g_run_lock);
    pthread_mutex_lock(&g_cfg_lock);
    ndl_pool *old = NULL;
    if (g_nthreads != n) {
        g_nthreads = n;
        old = atomic_exchange(&g_pool, NULL);
    }
    pthread_mutex_unlock(&g_cfg_lock);
    pool_destroy(old);
    pthread_mutex_unlock(&g_run_lock);
}

void ndl_parallel_for(int64_t n, int64_t grain, ndl_range_fn fn, void *ctx)
{
    if (n <= 0)
        return;
    if (grain < 1)
        grain = 1;
    if (n < 2 * grain || tls_in_job) {
        fn(ctx, 0, n);
        return;
    }
    ndl_pool *p = get_pool();
    if (!p || pthread_mutex_trylock(&g_run_lock) != 0) {
        fn(ctx, 0, n);
        return;
    }
    /* g_pool cannot change while we hold g_run_lock; re-read it. */
    p = atomic_load(&g_pool);
    if (!p) {
        pthread_mutex_unlock(&g_run_lock);
        fn(ctx, 0, n);
        return;
    }
    int64_t nchunks = n / grain;
    if (nchunks > p->nthreads)
        nchunks = p->nthreads;

    pthread_mutex_lock(&p->lock);
    while (p->active > 0) /* stragglers of the previous job: see Note [Pool protocol] */
        pthread_cond_wait(&p->idle_cv, &p->lock);
    p->fn = fn;
    p->ctx = ctx;
    p->n = n;
    p->nchunks = nchunks;
    atomic_store(&p->next, 0);
    atomic_store(&p->done, 0);
    atomic_fetch_add(&p->gen, 1);
    pthread_cond_broadcast(&p->work);
    pthread_mutex_unlock(&p->lock);

    tls_in_job = 1;
    run_chunks(p, fn, ctx, n, nchunks);
    tls_in_job = 0;

    NDL_SPIN_WHILE(atomic_load(&p->done) < nchunks);
    if (atomic_load(&p->done) < nchunks) {
        pthread_mutex_lock(&p->lock);
        while (atomic_load(&p->done) < nchunks)
            pthread_cond_wait(&p->done_cv, &p->lock);
        pthread_mutex_unlock(&p->lock);
    }
    pthread_mutex_unlock(&g_run_lock);
}
