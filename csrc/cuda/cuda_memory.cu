/* cuda_memory.cu: the caching allocator and the host/device copies.
 *
 * Note [Caching allocator]
 *   cudaMalloc and cudaFree synchronize the device and cost tens of
 *   microseconds, so a training step must not call them per tensor. Sizes
 *   are rounded up to a class (512 B steps below 1 MiB, 2 MiB steps above);
 *   a freed block goes to its class's free list and the next request of
 *   that class takes it back. Every kernel runs on the one default stream,
 *   so a block reused at once is only touched after the work that used it.
 *   When cudaMalloc fails, the cache is released and the call retried once;
 *   a second failure records "out of memory: asked N bytes, F of T free"
 *   (ndl_cuda_last_error) and alloc returns NULL. Blocks are never split.
 *   A slot whose own scratch request fails returns NDL_ENOMEM_DEVICE at
 *   once, and the array layer raises it with this record (Note [Out of
 *   memory detail], ndl_args.c). Each alloc first drops an earlier
 *   out-of-memory record of its thread, so last_error() speaks of the last
 *   request only.
 *
 * Note [Staged uploads]
 *   A cudaMemcpy from pageable host memory waits for every earlier kernel of
 *   the stream: once a step (the cross-entropy's labels) it drained the GPU's
 *   queue. ndl_cuda_upload copies small host tables (labels, irregular matmul
 *   offsets) into one pinned staging buffer (cudaHostAlloc, kept and grown
 *   to the largest request) and sends them with cudaMemcpyAsync on the
 *   legacy default stream, the stream of every kernel, so the copy is
 *   ordered before the kernels launched after it and after those before it.
 *   A cudaEvent recorded after each copy guards the buffer: the next upload
 *   waits for that event (the previous copy has read the buffer) before it
 *   overwrites or frees it; the host thus runs at most one upload ahead.
 *   The caller's host array may be reused as soon as ndl_cuda_upload
 *   returns (it was copied into the staging buffer). If pinned memory
 *   cannot be had, the upload falls back to a synchronous cudaMemcpy.
 *   A mutex guards the buffer; the buffer lives until the process ends.
 */
#include <mutex>
#include <new>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unordered_map>
#include <vector>

#include "cuda_common.cuh"

namespace {
std::mutex lock;
std::unordered_map<size_t, std::vector<void *>> cached; /* class size -> free blocks */
std::unordered_map<void *, size_t> live;                /* block -> class size */
size_t bytes_live, bytes_cached;

const size_t BIG_STEP = (size_t)2 << 20;

#ifdef NDL_CUDA_EMU
/* Note [Exact blocks under the emulator]: NDL_CUDA_EMU_EXACT=1 (make
 * cuda-emu-asan) gives each request exactly its bytes and frees blocks at
 * once instead of caching them, so AddressSanitizer sees an access past a
 * request's end (the class rounding would hide up to 511 bytes, 2 MiB
 * above 1 MiB) or into a freed block (the cache would hide it). */
bool exact_blocks(void)
{
    static const bool on = [] {
        const char *e = getenv("NDL_CUDA_EMU_EXACT");
        return e != NULL && *e && strcmp(e, "0") != 0;
    }();
    return on;
}
#else
constexpr bool exact_blocks(void) { return false; }
#endif

/* The class of an n-byte request; n <= SIZE_MAX - BIG_STEP (alloc checks). */
size_t size_class(size_t n)
{
    const size_t small = 512;
    if (n == 0)
        n = 1;
    if (exact_blocks())
        return n;
    return n < ((size_t)1 << 20) ? (n + small - 1) / small * small
                                 : (n + BIG_STEP - 1) / BIG_STEP * BIG_STEP;
}

/* With the lock held. NOTE: a failing cudaFree (a context already broken by
 * an earlier fault) leaves nothing to undo: its error is cleared, and the
 * call that follows (the retried cudaMalloc) reports the state. */
void release_cache(void)
{
    for (auto &kv : cached)
        for (void *p : kv.second)
            if (cudaFree(p) != cudaSuccess)
                cudaGetLastError();
    cached.clear();
    bytes_cached = 0;
}
} // namespace

void *ndl_cuda_alloc(size_t nbytes)
{
    void *p = NULL;
    ndl_cuda_clear_oom(); /* a record is about the last request only */
    if (nbytes > SIZE_MAX - BIG_STEP) { /* rounding up would wrap to a small class */
        char msg[160];
        snprintf(msg, sizeof msg, NDL_CUDA_OOM ": asked %zu bytes", nbytes);
        ndl_cuda_set_error(msg);
        return NULL;
    }
    size_t sz = size_class(nbytes);
    std::lock_guard<std::mutex> g(lock);
    auto it = cached.find(sz);
    if (it != cached.end() && !it->second.empty()) {
        p = it->second.back();
        it->second.pop_back();
        bytes_cached -= sz;
    } else if (cudaMalloc(&p, sz) != cudaSuccess) {
        cudaGetLastError(); /* clear it: the retry decides */
        release_cache();
        cudaError_t err = cudaMalloc(&p, sz);
        if (err == cudaErrorMemoryAllocation) {
            cudaGetLastError();
            size_t free_b = 0, total_b = 0;
            if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess)
                cudaGetLastError(); /* the report then says 0 of 0 free */
            char msg[400];
            snprintf(msg, sizeof msg,
                     NDL_CUDA_OOM ": asked %zu bytes (%.1f MiB; %zu with the allocator's "
                     "rounding), %zu of %zu bytes free (%.1f MiB), %zu bytes held by needle "
                     "arrays",
                     nbytes, nbytes / 1048576.0, sz, free_b, total_b, free_b / 1048576.0,
                     bytes_live);
            ndl_cuda_set_error(msg);
            return NULL;
        }
        if (err != cudaSuccess) { /* not memory: a broken context, a lost device, ... */
            ndl_cuda_fail(err, __FILE__, __LINE__, "cudaMalloc");
            return NULL;
        }
    }
    try { /* a C caller: no C++ exception may leave this function */
        live[p] = sz;
    } catch (const std::bad_alloc &) {
        if (cudaFree(p) != cudaSuccess)
            cudaGetLastError();
        ndl_cuda_set_error(NDL_CUDA_OOM ": no host memory for the allocator's bookkeeping");
        return NULL;
    }
    bytes_live += sz;
    return p;
}

void ndl_cuda_free(void *ptr)
{
    if (ptr == NULL)
        return;
    std::lock_guard<std::mutex> g(lock);
    auto it = live.find(ptr);
    if (it == live.end())
        return; /* not ours: never hand it to cudaFree */
    size_t sz = it->second;
    live.erase(it);
    bytes_live -= sz;
    if (exact_blocks()) {
        if (cudaFree(ptr) != cudaSuccess)
            cudaGetLastError();
        return;
    }
    try {
        cached[sz].push_back(ptr);
    } catch (const std::bad_alloc &) { /* no room to cache it: give it back */
        if (cudaFree(ptr) != cudaSuccess)
            cudaGetLastError();
        return;
    }
    bytes_cached += sz;
}

/* Frees every cached block (torch.cuda.empty_cache). */
extern "C" void ndl_cuda_empty_cache(void)
{
    std::lock_guard<std::mutex> g(lock);
    release_cache();
}

extern "C" void ndl_cuda_memory_stats(size_t *live_b, size_t *cached_b)
{
    std::lock_guard<std::mutex> g(lock);
    *live_b = bytes_live;
    *cached_b = bytes_cached;
}

int ndl_cuda_to_host(void *host_dst, const void *src, size_t nbytes)
{
    if (nbytes)
        NDL_CUDA_TRY(cudaMemcpy(host_dst, src, nbytes, cudaMemcpyDeviceToHost));
    return NDL_OK;
}

int ndl_cuda_from_host(void *dst, const void *host_src, size_t nbytes)
{
    if (nbytes)
        NDL_CUDA_TRY(cudaMemcpy(dst, host_src, nbytes, cudaMemcpyHostToDevice));
    return NDL_OK;
}

namespace {
std::mutex stage_lock;
char *stage;            /* pinned, stage_cap bytes; NULL before the first upload */
size_t stage_cap;
cudaEvent_t stage_done; /* recorded after the last copy out of stage */
bool stage_pending;     /* stage_done was recorded */

/* With stage_lock held: stage holds at least nbytes and no copy reads it.
 * NDL_ENOMEM when pinned memory cannot be had (the caller falls back). */
int stage_reserve(size_t nbytes)
{
    if (stage_pending) {
        NDL_CUDA_TRY(cudaEventSynchronize(stage_done));
        stage_pending = false;
    }
    if (stage_cap >= nbytes)
        return NDL_OK;
    size_t cap = stage_cap > SIZE_MAX / 2 ? SIZE_MAX : 2 * stage_cap;
    if (cap < nbytes)
        cap = nbytes;
    if (cap < 4096)
        cap = 4096;
    if (stage != NULL) {
        NDL_CUDA_TRY(cudaFreeHost(stage));
        stage = NULL;
        stage_cap = 0;
    }
    void *p = NULL;
    if (cudaHostAlloc(&p, cap, cudaHostAllocDefault) != cudaSuccess) {
        cudaGetLastError(); /* cleared: the caller copies synchronously instead */
        return NDL_ENOMEM;
    }
    stage = (char *)p;
    stage_cap = cap;
    return NDL_OK;
}
} // namespace

int ndl_cuda_upload(void *dst, const void *src1, size_t n1, const void *src2, size_t n2)
{
    if (n1 > SIZE_MAX - n2)
        return NDL_EINVAL;
    if (n1 + n2 == 0)
        return NDL_OK;
    std::lock_guard<std::mutex> g(stage_lock);
    if (!stage_done) {
        cudaEvent_t ev;
        NDL_CUDA_TRY(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
        stage_done = ev;
    }
    int st = stage_reserve(n1 + n2);
    if (st == NDL_ENOMEM) { /* no pinned memory: the synchronous copies */
        st = ndl_cuda_from_host(dst, src1, n1);
        return st == NDL_OK ? ndl_cuda_from_host((char *)dst + n1, src2, n2) : st;
    }
    if (st != NDL_OK)
        return st;
    if (n1)
        memcpy(stage, src1, n1);
    if (n2)
        memcpy(stage + n1, src2, n2);
    NDL_CUDA_TRY(cudaMemcpyAsync(dst, stage, n1 + n2, cudaMemcpyHostToDevice, 0));
    cudaError_t err = cudaEventRecord(stage_done, 0);
    if (err != cudaSuccess) { /* no guard for the copy just queued: wait for it here */
        st = ndl_cuda_fail(err, __FILE__, __LINE__, "cudaEventRecord(stage_done)");
        if (cudaStreamSynchronize(0) != cudaSuccess)
            cudaGetLastError(); /* a broken context: the copy will not run either */
        return st;
    }
    stage_pending = true;
    return NDL_OK;
}
