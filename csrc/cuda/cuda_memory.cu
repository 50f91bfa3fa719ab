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
 */
#include <mutex>
#include <new>
#include <stdint.h>
#include <stdio.h>
#include <unordered_map>
#include <vector>

#include "cuda_common.cuh"

namespace {
std::mutex lock;
std::unordered_map<size_t, std::vector<void *>> cached; /* class size -> free blocks */
std::unordered_map<void *, size_t> live;                /* block -> class size */
size_t bytes_live, bytes_cached;

const size_t BIG_STEP = (size_t)2 << 20;

/* The class of an n-byte request; n <= SIZE_MAX - BIG_STEP (alloc checks). */
size_t size_class(size_t n)
{
    const size_t small = 512;
    if (n == 0)
        n = 1;
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
    if (nbytes > SIZE_MAX - BIG_STEP) { /* rounding up would wrap to a small class */
        char msg[160];
        snprintf(msg, sizeof msg, "CUDA out of memory: asked %zu bytes", nbytes);
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
                     "CUDA out of memory: asked %zu bytes (%.1f MiB; %zu with the allocator's "
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
        ndl_cuda_set_error("out of host memory for the CUDA allocator's bookkeeping");
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
