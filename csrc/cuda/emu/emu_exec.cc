/* emu/emu_exec.cc: running a grid (Note [The CUDA emulator], cuda_runtime.h).
 *
 * Note [Emulated execution]
 *   run_grid checks the configuration as the hardware does (block of 1 to
 *   1024 threads, block dims up to (1024, 1024, 64), grid.x 1 to 2^31 - 1,
 *   grid.y and grid.z 1 to 65535: else cudaErrorInvalidConfiguration), then
 *   runs the blocks one after another (x fastest), each as fibers (Note
 *   [Emulator fibers], emu_fiber.cc) under a scheduler: a thread runs until
 *   it exits or waits; a waiting thread is woken (queued) by the arrival
 *   that completes what it waits for; queued threads run first, then the
 *   next thread not yet started, in threadIdx order (or a seeded shuffled
 *   order, NDL_CUDA_EMU_SHUFFLE). A warp is 32 consecutive linear thread
 *   indices, as on the hardware. The lanes a warp collective wakes are
 *   queued last, so after a __syncthreads the warps advance one collective
 *   at a time in turn; with NDL_CUDA_EMU_AHEAD=1 they are queued first, so
 *   a warp runs on to its next __syncthreads before another moves: a warp
 *   that overwrites shared memory another warp has not read yet (a missing
 *   barrier) then shows in the results (the TF32 kernel without its
 *   end-of-step __syncthreads: wrong results in 7 tests; `make cuda-emu`
 *   runs test_cuda.py and the device suite's cuda cases so once).
 *   - __syncthreads completes when every thread of the block waits at the
 *     same call (file and line; at another call is an error at once).
 *   - A warp collective (__syncwarp, a shuffle) completes when every lane
 *     its mask names has arrived with the same mask (and, for a shuffle,
 *     the same mode and width); the last arrival computes every lane's
 *     result as PTX's shfl.sync defines it (the lane read, clamped to the
 *     lane's segment of `width` lanes: out of range, the lane's own value),
 *     and a lane read that is not in the mask is an error (undefined on a
 *     GPU).
 *   - Nothing left to run while threads wait is a deadlock on a GPU (or
 *     undefined behaviour): the error names what waits and what is missing.
 *   An error ends the launch at once: the waiting fibers are abandoned
 *   (kernels own nothing that needs unwinding), the rest of the grid does
 *   not run, and cudaErrorLaunchFailure is recorded with the detail.
 *
 * Note [Races under ThreadSanitizer]
 *   make cuda-emu-tsan builds the kernels with -fsanitize=thread
 *   (NEEDLE_TSAN=1, setup.py; NDL_EMU_TSAN in the emulator's own files,
 *   which are not instrumented: their bookkeeping is nobody's GPU access)
 *   and reports a data race between emulated GPU threads: two accesses to
 *   one address, one a write, that nothing CUDA guarantees orders. The
 *   happens-before model, and nothing else:
 *   - Identity. Every emulated thread runs as a TSan fiber of its own, and
 *     switching fibers implies nothing (__tsan_switch_to_fiber_no_sync).
 *     The identity changes where control crosses between a kernel and the
 *     emulator, not at the stack switch: kernel code runs as its thread
 *     (tsan_enter, emu_fiber.cc), the emulator's code (the scheduler, a
 *     barrier's bookkeeping, its vectors' malloc and memmove, which TSan's
 *     interceptors see) as the launching host thread (tsan_leave), whose
 *     program order then covers it all.
 *   - Launch: the host releases LAUNCHED before the grid and every thread
 *     acquires it when it starts (arguments, cudaMemcpy'd inputs); every
 *     thread releases FINISHED when it exits (or is abandoned by an error)
 *     and the host acquires it after the grid: the launch is synchronous.
 *   - __syncthreads: when the last thread arrives, every thread releases
 *     and then every thread acquires one sync object (MEET, emptied after):
 *     all that each did before the barrier precedes all that each does after.
 *   - __syncwarp(mask): the same among the lanes of mask only; a pair in two
 *     warps is not ordered by their warps' __syncwarp. The shuffles order
 *     nothing: they move values, and CUDA promises memory ordering for
 *     __syncwarp and the barriers, not for __shfl*_sync.
 *   - Blocks are unordered, as on a GPU: the threads of two blocks meet only
 *     through the host's launch. Their identities are personas (a TSan fiber
 *     and a stack each, made once and kept: a fiber costs about 1 ms to
 *     make), one per (thread index, block parity): a block's thread i runs as
 *     persona (i, b mod 2) for the b-th block run, so two blocks run one
 *     after another (x fastest, or NDL_CUDA_EMU_SHUFFLE's order) are two
 *     sets of fibers with no order between them, and a race between them on
 *     device memory is reported (blocks b and b + 2 share fibers, and that
 *     program order hides races between them: consecutive blocks only). A
 *     persona's stack is its own, so no other thread's frames were there.
 *   - __shared__ arrays are statics that every block reuses (cuda_runtime.h),
 *     and __device__ variables are globals: before each block the history of
 *     the module's writable segment is dropped (tsan_forget_globals, through
 *     TSan's Java heap interface, the one that empties a range's shadow and
 *     its sync objects), so the last block's shared memory is not this one's
 *     to race with, and races between blocks on __device__ variables are
 *     not found (races inside a block on them are). The launch lock and the
 *     sync objects live on the heap, out of that range.
 *   What is found: a race inside a barrier interval (shared or device
 *   memory), one across warps ordered only by __syncwarp, one between
 *   consecutive blocks on device memory, one between a kernel and the host
 *   (none can be: launches are synchronous). What is not: races between
 *   blocks two or more apart, and on __device__ variables between blocks;
 *   TSan keeps 256 clock slots, which more live fibers share (blocks of more
 *   than about 120 threads), and that may hide some races among them.
 *   Cost: test_cuda.py + test_cuda_emu.py take 4 minutes under TSan on 2
 *   busy cores (31 s under the plain emulator), so make cuda-emu-tsan runs
 *   those; TSAN_FULL=1 adds the device suite (9 minutes) and CUDA_SUITE.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <deque>
#include <mutex>
#include <vector>

#include "emu_internal.h"

#ifdef NDL_EMU_TSAN
#define NDL_EMU_TSAN_ON 1
#else
#define NDL_EMU_TSAN_ON 0
#endif

uint3 threadIdx, blockIdx, blockDim, gridDim;

namespace ndl_emu {

namespace {
enum State { NEW, QUEUED, RUNNING, WAIT_BAR, WAIT_WARP, DONE };
enum CollKind { COLL_SYNCWARP, COLL_SHUFFLE };

struct Thread {
    Fiber fiber;
    uint3 idx;
    State state;
    uint64_t value, result; /* a shuffle's operand and result */
    int b;                  /* a shuffle's lane, delta or lane mask */
    const char *file;       /* where it waits */
    int line;
};

struct Group { /* a warp collective in progress */
    unsigned mask, arrived;
    CollKind kind;
    ShuffleMode mode;
    int width;
    const char *file;
    int line;
    const char *what; /* the call named in messages: nullptr, the shuffle or __syncwarp */
};

struct Launch {
    const char *kernel, *file;
    int line;
    void (*body)(void *);
    void *ctx;
    dim3 grid, block;
    unsigned nthreads;
    std::vector<Thread> threads;
    std::vector<std::vector<Group>> warps; /* collectives in progress, per warp */
    std::deque<unsigned> queue;            /* woken threads, run in order */
    std::vector<unsigned> order; /* the order threads start in */
    size_t next_new;             /* order[next_new] starts next */
    unsigned done, bar_count;
    const char *bar_file;
    int bar_line;
    Thread *cur;
    unsigned parity; /* the block's place in the run order, mod 2 (its threads' personas) */
    Fiber sched;
    bool failed;
    char error[900];
};

/* one grid at a time: __shared__ arrays are statics */
#ifdef NDL_EMU_TSAN
std::mutex &launch_lock = *new std::mutex; /* not among the globals tsan_forget_globals drops */
#else
std::mutex launch_lock;
#endif
Launch *L; /* the running grid (under launch_lock) */

/* ThreadSanitizer's sync objects (Note [Races under ThreadSanitizer]): on the
 * heap, outside the module's globals. */
char *const tsan_keys = new char[24];
void *const LAUNCHED = tsan_keys, *const FINISHED = tsan_keys + 8, *const MEET = tsan_keys + 16;

/* Under ThreadSanitizer: every thread of ts[0, n) whose bit is set in mask
 * (every one when mask is 0) leaves after what every other did before
 * arriving (a barrier's or __syncwarp's meeting; all have arrived). */
void tsan_meet(Thread *ts, unsigned n, unsigned mask)
{
#ifdef NDL_EMU_TSAN
    for (unsigned i = 0; i < n; i++)
        if (mask == 0 || (mask >> i & 1)) {
            tsan_enter(&ts[i].fiber);
            tsan_release(MEET);
            tsan_leave();
        }
    for (unsigned i = 0; i < n; i++)
        if (mask == 0 || (mask >> i & 1)) {
            tsan_enter(&ts[i].fiber);
            tsan_acquire(MEET);
            tsan_leave();
        }
    tsan_forget(MEET);
#else
    (void)ts, (void)n, (void)mask;
#endif
}

const char *short_file(const char *f)
{
    const char *s = strrchr(f, '/');
    return s ? s + 1 : f;
}

/* Records the launch's error (the first one only): "kernel (file:line),
 * block (x,y,z)[, thread (x,y,z)]: msg". No heap: a failing fiber is
 * abandoned, and what its frames own would leak. */
void set_failed(const Thread *t, const char *msg)
{
    if (L->failed)
        return;
    L->failed = true;
    if (t != nullptr)
        snprintf(L->error, sizeof L->error, "%s (%s:%d), block (%u,%u,%u), thread (%u,%u,%u): %s",
                 L->kernel, short_file(L->file), L->line, blockIdx.x, blockIdx.y, blockIdx.z,
                 t->idx.x, t->idx.y, t->idx.z, msg);
    else
        snprintf(L->error, sizeof L->error, "%s (%s:%d), block (%u,%u,%u): %s", L->kernel,
                 short_file(L->file), L->line, blockIdx.x, blockIdx.y, blockIdx.z, msg);
    if (abort_on_error()) {
        fprintf(stderr, "needle CUDA emulator: %s\n", L->error);
        abort();
    }
}

/* From a kernel thread: records msg and never returns (the fiber is
 * abandoned; the scheduler ends the launch). */
[[noreturn]] void fail_here(const char *msg)
{
    set_failed(L->cur, msg);
    Thread *t = L->cur;
    fiber_switch(&t->fiber, &L->sched, true);
    abort(); /* never resumed */
}

/* Queues t: last, or first (run_ahead). */
void wake(Thread *t, bool first = false)
{
    t->state = QUEUED;
    if (first)
        L->queue.push_front((unsigned)(t - L->threads.data()));
    else
        L->queue.push_back((unsigned)(t - L->threads.data()));
}

/* NDL_CUDA_EMU_AHEAD=1: the lanes of a completed warp collective run
 * before every other queued thread (Note [Emulated execution]). */
bool run_ahead(void)
{
    static const bool on = [] {
        const char *e = getenv("NDL_CUDA_EMU_AHEAD");
        return e != nullptr && *e && strcmp(e, "0") != 0;
    }();
    return on;
}

/* From a kernel thread: wait until woken. */
void wait_here(State s, const char *file, int line)
{
    Thread *t = L->cur;
    t->state = s;
    t->file = file;
    t->line = line;
    fiber_switch(&t->fiber, &L->sched);
}

/* A fiber's life: runs threads until one waits or none is left to start.
 * A thread that exits while nothing is queued hands its fiber (its stack)
 * to the next thread to start: a kernel without barriers runs its whole
 * block on one fiber, without a switch per thread. */
void thread_entry(void)
{
    fiber_entered();
    for (;;) {
        Thread *t = L->cur;
        tsan_enter(&t->fiber);
        tsan_acquire(LAUNCHED); /* after the host's launch */
        L->body(L->ctx);
        tsan_release(FINISHED); /* before the host's return */
        tsan_leave();
        t->state = DONE;
        L->done++;
        /* under TSan every thread has a stack of its own (emu_fiber.cc) */
        if (!L->queue.empty() || L->next_new >= L->nthreads || NDL_EMU_TSAN_ON)
            break;
        Thread *n = &L->threads[L->order[L->next_new++]];
        n->fiber = t->fiber;
        t->fiber = Fiber();
        n->state = RUNNING;
        threadIdx = n->idx;
        L->cur = n;
    }
    fiber_switch(&L->cur->fiber, &L->sched, true);
    abort(); /* never resumed */
}

/* The lanes of warp w that exist (the block's last warp may be partial). */
unsigned warp_lanes(unsigned w)
{
    unsigned n = L->nthreads - 32 * w;
    return n >= 32 ? 0xffffffffu : (1u << n) - 1;
}

const char *coll_name(const Group &g)
{
    static const char *const modes[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
                                        "__shfl_xor_sync"};
    if (g.what != nullptr)
        return g.what;
    return g.kind == COLL_SYNCWARP ? "__syncwarp" : modes[g.mode];
}

/* The last lane of g has arrived: every lane's result, then the others woken. */
void complete(unsigned w, Group &g)
{
    Thread *base = &L->threads[32 * w];
    if (g.kind == COLL_SHUFFLE) {
        for (unsigned lane = 0; lane < 32; lane++) {
            if (!(g.mask >> lane & 1))
                continue;
            /* PTX shfl.sync: segmask picks the lane's segment of `width` lanes */
            const int bval = base[lane].b & 31, l = (int)lane, seg = 32 - g.width;
            const int min_lane = l & seg, max_lane = min_lane | (31 & ~seg);
            int j;
            bool in;
            switch (g.mode) {
            case SHFL_UP:
                j = l - bval;
                in = j >= min_lane;
                break;
            case SHFL_DOWN:
                j = l + bval;
                in = j <= max_lane;
                break;
            case SHFL_XOR:
                j = l ^ bval;
                in = j <= max_lane;
                break;
            default:
                j = min_lane | (bval & ~seg);
                in = j <= max_lane;
                break;
            }
            if (!in)
                j = l;
            if (!(g.mask >> j & 1)) {
                char msg[300];
                snprintf(msg, sizeof msg,
                         "%s at %s:%d: lane %d reads lane %d, which is not in the mask 0x%08x "
                         "(undefined on a GPU)",
                         coll_name(g), short_file(g.file), g.line, l, j, g.mask);
                fail_here(msg);
            }
            base[lane].result = base[j].value;
        }
    }
    if (g.kind == COLL_SYNCWARP) /* a shuffle moves values, it orders no memory */
        tsan_meet(base, 32, g.mask);
    const bool ahead = run_ahead(); /* then lane order kept at the front */
    for (unsigned i = 0; i < 32; i++) {
        const unsigned lane = ahead ? 31 - i : i;
        if ((g.mask >> lane & 1) && &base[lane] != L->cur)
            wake(&base[lane], ahead);
    }
}

/* A lane of the current thread's warp arrives at a collective. */
uint64_t collective(CollKind kind, ShuffleMode mode, unsigned mask, uint64_t value, int b,
                    int width, const char *file, int line, const char *what)
{
    Thread *t = L->cur;
    tsan_leave(); /* the emulator's own work, until it returns to the kernel */
    const unsigned tid = (unsigned)(t - L->threads.data()), w = tid / 32, lane = tid % 32;
    char msg[300];
    Group probe{mask, 0, kind, mode, width, file, line, what};
    if (kind == COLL_SHUFFLE && (width < 1 || width > 32 || (width & (width - 1)) != 0)) {
        snprintf(msg, sizeof msg, "%s at %s:%d: width %d is not a power of 2 in [1, 32]",
                 coll_name(probe), short_file(file), line, width);
        fail_here(msg);
    }
    if (!(mask >> lane & 1)) {
        snprintf(msg, sizeof msg, "%s at %s:%d: the mask 0x%08x does not name the calling lane %u",
                 coll_name(probe), short_file(file), line, mask, lane);
        fail_here(msg);
    }
    if (mask & ~warp_lanes(w)) {
        snprintf(msg, sizeof msg,
                 "%s at %s:%d: the mask 0x%08x names lanes that do not exist (the block has "
                 "%u threads; warp %u has lanes 0x%08x)",
                 coll_name(probe), short_file(file), line, mask, L->nthreads, w, warp_lanes(w));
        fail_here(msg);
    }
    std::vector<Group> &groups = L->warps[w];
    Group *g = nullptr;
    for (Group &x : groups) {
        if (!(x.mask & mask))
            continue;
        if (x.mask != mask || x.kind != kind || x.what != what ||
            (kind == COLL_SHUFFLE && (x.mode != mode || x.width != width))) {
            snprintf(msg, sizeof msg,
                     "lane %u calls %s at %s:%d with mask 0x%08x while lanes 0x%08x wait at %s "
                     "at %s:%d with mask 0x%08x (undefined on a GPU)",
                     lane, coll_name(probe), short_file(file), line, mask, x.arrived,
                     coll_name(x), short_file(x.file), x.line, x.mask);
            fail_here(msg);
        }
        g = &x;
        break;
    }
    if (g == nullptr) {
        groups.push_back(probe);
        g = &groups.back();
    }
    t->value = value;
    t->b = b;
    g->arrived |= 1u << lane;
    if (g->arrived != mask)
        wait_here(WAIT_WARP, file, line);
    else {
        complete(w, *g);
        groups.erase(groups.begin() + (g - groups.data()));
    }
    tsan_enter(&t->fiber);
    return t->result;
}

/* Nothing can run but threads wait: say what waits for what. */
void deadlock(void)
{
    unsigned at_bar = 0, at_warp = 0;
    const Thread *bar = nullptr, *warp = nullptr;
    for (const Thread &t : L->threads) {
        if (t.state == WAIT_BAR && at_bar++ == 0)
            bar = &t;
        if (t.state == WAIT_WARP && at_warp++ == 0)
            warp = &t;
    }
    char msg[400];
    if (bar != nullptr)
        snprintf(msg, sizeof msg,
                 "__syncthreads at %s:%d is reached by %u of the block's %u threads: %u exited "
                 "before it, %u wait at a warp collective (undefined on a GPU: a hang or "
                 "worse)",
                 short_file(bar->file), bar->line, at_bar, L->nthreads, L->done, at_warp);
    else {
        const unsigned tid = (unsigned)(warp - L->threads.data()), w = tid / 32;
        const Group &g = L->warps[w].front();
        snprintf(msg, sizeof msg,
                 "%s at %s:%d with mask 0x%08x in warp %u: lanes 0x%08x arrived; the others it "
                 "names exited or wait elsewhere (undefined on a GPU)",
                 coll_name(g), short_file(g.file), g.line, g.mask, w, g.arrived);
    }
    set_failed(nullptr, msg);
}

uint64_t rng_next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

uint64_t gcd(uint64_t x, uint64_t y)
{
    while (y) {
        uint64_t r = x % y;
        x = y;
        y = r;
    }
    return x;
}

uint64_t shuffle_seed(void)
{
    static const char *e = getenv("NDL_CUDA_EMU_SHUFFLE");
    return e != nullptr && *e ? strtoull(e, nullptr, 10) : 0;
}

/* One block; false when it failed. */
bool run_block(void)
{
    Launch &l = *L;
    for (Thread &t : l.threads)
        t.state = NEW;
    for (auto &g : l.warps)
        g.clear();
    l.queue.clear();
    l.next_new = 0;
    l.done = l.bar_count = 0;
    for (;;) {
        Thread *t;
        if (!l.queue.empty()) {
            t = &l.threads[l.queue.front()];
            l.queue.pop_front();
        } else if (l.next_new < l.nthreads) {
            t = &l.threads[l.order[l.next_new++]];
            fiber_start(&t->fiber, thread_entry,
                        2 * (unsigned)(t - l.threads.data()) + l.parity);
        } else if (l.done == l.nthreads) {
            return true;
        } else {
            deadlock();
            break;
        }
        threadIdx = t->idx;
        t->state = RUNNING;
        l.cur = t;
        fiber_switch(&l.sched, &t->fiber);
        t = l.cur; /* the thread that switched back (its fiber may be another's) */
        l.cur = nullptr;
        if (t->state == DONE)
            fiber_release(&t->fiber);
        if (l.failed)
            break;
    }
    for (Thread &t : l.threads) /* abandoned: their stacks back to the pool */
        if (t.state != NEW && t.state != DONE) {
            tsan_abandon(&t.fiber, FINISHED);
            fiber_release(&t.fiber);
        }
    return false;
}

} // namespace

const char *config_error(dim3 g, dim3 b, char *buf, size_t len)
{
    const uint64_t threads = (uint64_t)b.x * b.y * b.z;
    if (threads == 0 || threads > 1024 || b.x > 1024 || b.y > 1024 || b.z > 64)
        snprintf(buf, len,
                 "block (%u,%u,%u): 1 to 1024 threads, dims at most (1024, 1024, 64)", b.x, b.y,
                 b.z);
    else if (g.x == 0 || g.x > 0x7fffffffu || g.y == 0 || g.y > 65535 || g.z == 0 ||
             g.z > 65535)
        snprintf(buf, len, "grid (%u,%u,%u): x 1 to 2^31 - 1, y and z 1 to 65535", g.x, g.y,
                 g.z);
    else
        return nullptr;
    return buf;
}

void run_grid(dim3 grid, dim3 block, const char *kernel, const char *file, int line,
              void (*body)(void *), void *ctx)
{
    char buf[300], detail[600];
    if (config_error(grid, block, buf, sizeof buf) != nullptr) {
        snprintf(detail, sizeof detail, "%s (%s:%d): invalid launch configuration: %s", kernel,
                 short_file(file), line, buf);
        record_error(cudaErrorInvalidConfiguration, detail, false);
        return;
    }
    const long bound = launch_bound(kernel);
    if (bound > 0 && (long)block.x * block.y * block.z > bound) {
        snprintf(detail, sizeof detail,
                 "%s (%s:%d): too many resources requested for launch: a block of %u threads, "
                 "and the kernel declares __launch_bounds__(%ld)",
                 kernel, short_file(file), line, block.x * block.y * block.z, bound);
        record_error(cudaErrorLaunchOutOfResources, detail, false);
        return;
    }
    std::lock_guard<std::mutex> guard(launch_lock);
    Launch l;
    l.kernel = kernel;
    l.file = file;
    l.line = line;
    l.body = body;
    l.ctx = ctx;
    l.grid = grid;
    l.block = block;
    l.nthreads = block.x * block.y * block.z;
    l.threads.resize(l.nthreads);
    l.warps.resize((l.nthreads + 31) / 32);
    l.cur = nullptr;
    l.failed = false;
    L = &l;
    tsan_release(LAUNCHED); /* the host's work so far, before every thread */
    blockDim = uint3{block.x, block.y, block.z};
    gridDim = uint3{grid.x, grid.y, grid.z};
    for (unsigned z = 0, i = 0; z < block.z; z++)
        for (unsigned y = 0; y < block.y; y++)
            for (unsigned x = 0; x < block.x; x++, i++)
                l.threads[i].idx = uint3{x, y, z};
    std::vector<unsigned> &order = l.order;
    order.resize(l.nthreads);
    for (unsigned i = 0; i < l.nthreads; i++)
        order[i] = i;
    const uint64_t seed = shuffle_seed();
    const uint64_t nblocks = (uint64_t)grid.x * grid.y * grid.z;
    uint64_t rng = seed * 0x9e3779b97f4a7c15ull + 1, a = 1, c = 0;
    if (seed != 0) { /* block i runs as (a * i + c) mod nblocks, a coprime to it */
        a = rng_next(&rng) % nblocks;
        while (gcd(a, nblocks) != 1)
            a = (a + 1) % nblocks;
        c = rng_next(&rng) % nblocks;
    }
    for (uint64_t i = 0; i < nblocks; i++) {
        const uint64_t bi = seed != 0 ? (uint64_t)(((unsigned __int128)a * i + c) % nblocks) : i;
        blockIdx = uint3{(unsigned)(bi % grid.x), (unsigned)(bi / grid.x % grid.y),
                         (unsigned)(bi / grid.x / grid.y)};
        if (seed != 0)
            for (unsigned k = l.nthreads; k > 1; k--)
                std::swap(order[k - 1], order[rng_next(&rng) % k]);
        l.parity = (unsigned)(i & 1);
        tsan_forget_globals(); /* the last block's __shared__ arrays are not this one's */
        if (!run_block())
            break;
    }
    tsan_acquire(FINISHED); /* every thread's work, before the host's return */
    L = nullptr;
    if (l.failed)
        record_error(cudaErrorLaunchFailure, l.error, true);
}

void syncthreads(const char *file, int line)
{
    Launch &l = *L;
    Thread *t = l.cur;
    tsan_leave();
    if (l.bar_count == 0) {
        l.bar_file = file;
        l.bar_line = line;
    } else if (line != l.bar_line || (file != l.bar_file && strcmp(file, l.bar_file) != 0)) {
        char msg[300];
        snprintf(msg, sizeof msg,
                 "__syncthreads at %s:%d while %u threads wait at the one at %s:%d "
                 "(undefined on a GPU)",
                 short_file(file), line, l.bar_count, short_file(l.bar_file), l.bar_line);
        fail_here(msg);
    }
    if (++l.bar_count == l.nthreads) {
        l.bar_count = 0;
        tsan_meet(l.threads.data(), l.nthreads, 0);
        for (Thread &w : l.threads)
            if (w.state == WAIT_BAR)
                wake(&w);
    } else
        wait_here(WAIT_BAR, file, line);
    tsan_enter(&t->fiber);
}

void syncwarp(unsigned mask, const char *file, int line)
{
    syncwarp_for(nullptr, mask, file, line);
}

uint64_t shuffle(ShuffleMode mode, unsigned mask, uint64_t bits, int b, int width,
                 const char *file, int line)
{
    return shuffle_for(nullptr, mode, mask, bits, b, width, file, line);
}

void syncwarp_for(const char *what, unsigned mask, const char *file, int line)
{
    collective(COLL_SYNCWARP, SHFL_IDX, mask, 0, 0, 32, file, line, what);
}

uint64_t shuffle_for(const char *what, ShuffleMode mode, unsigned mask, uint64_t bits, int b,
                     int width, const char *file, int line)
{
    return collective(COLL_SHUFFLE, mode, mask, bits, b, width, file, line, what);
}

void kernel_fail(const char *file, int line, const char *what)
{
    tsan_leave();
    char msg[300];
    snprintf(msg, sizeof msg, "%s:%d: %s", short_file(file), line, what);
    fail_here(msg);
}

} // namespace ndl_emu
