/* emu/emu_runtime.cc: the emulated CUDA runtime calls (Note [The CUDA
 * emulator], cuda_runtime.h): errors, the device's description, memory and
 * copies. Every call is synchronous.
 *
 * Note [Emulated device memory]
 *   cudaMalloc is aligned_alloc(256, ...) of exactly the bytes asked, kept
 *   in an ordered map, so a copy or memset that runs past an allocation is
 *   refused here (cudaErrorInvalidValue, naming the allocation) and a
 *   kernel's stray access is the sanitizer's to see (make cuda-emu-asan).
 *   The device has a capacity (NDL_CUDA_EMU_MEM bytes, with an optional
 *   K, M or G suffix; 4 GiB by default; needle._cuda_emu._set_memory(n)
 *   at run time): a cudaMalloc past it fails with
 *   cudaErrorMemoryAllocation as on a full GPU, and cudaMemGetInfo says
 *   (capacity - live bytes) of capacity free.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <atomic>
#include <map>
#include <mutex>

#include "emu_internal.h"

namespace ndl_emu {
namespace {
thread_local cudaError_t last_err = cudaSuccess;       /* for cudaGetLastError */
thread_local cudaError_t kernel_err = cudaSuccess;     /* for the next sync call */
thread_local cudaError_t detail_err = cudaSuccess;     /* what detail is about */
thread_local char detail[700], described[900];

std::mutex mem_lock;
/* start -> bytes. Never destroyed: blocks still live at exit (arrays that
 * outlive the interpreter, the allocator's cache) stay reachable for
 * LeakSanitizer, as a GPU's memory would not be host memory at all. */
std::map<uintptr_t, size_t> &device_blocks = *new std::map<uintptr_t, size_t>;
size_t mem_live;

size_t parse_size(const char *s)
{
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    switch (*end) {
    case 'k': case 'K': v <<= 10; break;
    case 'm': case 'M': v <<= 20; break;
    case 'g': case 'G': v <<= 30; break;
    default: break;
    }
    return (size_t)v;
}

size_t &mem_cap(void)
{
    static size_t cap = [] {
        const char *e = getenv("NDL_CUDA_EMU_MEM");
        return e != nullptr && *e ? parse_size(e) : (size_t)4 << 30;
    }();
    return cap;
}

/* With mem_lock held: 1 when [p, p + n) lies in one device allocation. */
bool in_device(const void *p, size_t n)
{
    uintptr_t a = (uintptr_t)p;
    auto it = device_blocks.upper_bound(a);
    if (it == device_blocks.begin())
        return false;
    --it;
    return a >= it->first && n <= it->second && a - it->first <= it->second - n;
}

__attribute__((format(printf, 2, 3))) cudaError_t fail(cudaError_t err, const char *fmt, ...)
{
    char msg[300];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    record_error(err, msg, false);
    return err;
}

/* A kernel's failure not yet reported: the synchronizing call reports it. */
cudaError_t sync_point(void)
{
    cudaError_t e = kernel_err;
    kernel_err = cudaSuccess;
    if (e != cudaSuccess)
        last_err = cudaSuccess; /* reported here, not again */
    return e;
}

/* The range check of one side of a copy; kind's side is device when dev. */
cudaError_t check_range(const void *p, size_t n, bool dev, const char *what)
{
    if (!dev || n == 0)
        return cudaSuccess;
    std::lock_guard<std::mutex> g(mem_lock);
    if (in_device(p, n))
        return cudaSuccess;
    char msg[300];
    snprintf(msg, sizeof msg, "%s: [%p, +%zu bytes) is not inside one device allocation", what,
             p, n);
    record_error(cudaErrorInvalidValue, msg, false);
    return cudaErrorInvalidValue;
}
} // namespace

void record_error(cudaError_t err, const char *msg, bool kernel_failure)
{
    last_err = err;
    detail_err = err;
    snprintf(detail, sizeof detail, "%s", msg);
    if (kernel_failure)
        kernel_err = err;
    if (abort_on_error()) {
        fprintf(stderr, "needle CUDA emulator: %s\n", msg);
        abort();
    }
}

/* Note [Grid caps] (cuda_common.cuh): NDL_CUDA_EMU_GRID, or _set_grid_cap. */
std::atomic<int64_t> &grid_cap_value(void)
{
    static std::atomic<int64_t> cap{[] {
        const char *e = getenv("NDL_CUDA_EMU_GRID");
        return e != nullptr && *e ? (int64_t)strtoll(e, nullptr, 10) : (int64_t)0;
    }()};
    return cap;
}

int64_t grid_cap(void) { return grid_cap_value().load(std::memory_order_relaxed); }

bool abort_on_error(void)
{
    static const bool on = [] {
        const char *e = getenv("NDL_CUDA_EMU_ABORT");
        return e != nullptr && *e && strcmp(e, "0") != 0;
    }();
    return on;
}
} // namespace ndl_emu

using namespace ndl_emu;

cudaError_t cudaGetLastError(void)
{
    cudaError_t e = last_err;
    last_err = cudaSuccess;
    kernel_err = cudaSuccess; /* the launch's failure is reported once */
    return e;
}

cudaError_t cudaPeekAtLastError(void) { return last_err; }

namespace {
/* The emulated error codes: CUDA's name and description of each. */
struct ErrorInfo {
    cudaError_t code;
    const char *name, *description;
};
const ErrorInfo error_table[] = {
    {cudaSuccess, "cudaSuccess", "no error"},
    {cudaErrorInvalidValue, "cudaErrorInvalidValue", "invalid argument"},
    {cudaErrorMemoryAllocation, "cudaErrorMemoryAllocation", "out of memory"},
    {cudaErrorInvalidConfiguration, "cudaErrorInvalidConfiguration",
     "invalid configuration argument"},
    {cudaErrorInvalidDevicePointer, "cudaErrorInvalidDevicePointer", "invalid device pointer"},
    {cudaErrorInvalidMemcpyDirection, "cudaErrorInvalidMemcpyDirection",
     "invalid copy direction for memcpy"},
    {cudaErrorInsufficientDriver, "cudaErrorInsufficientDriver",
     "CUDA driver version is insufficient for CUDA runtime version"},
    {cudaErrorNoDevice, "cudaErrorNoDevice", "no CUDA-capable device is detected"},
    {cudaErrorInvalidDevice, "cudaErrorInvalidDevice", "invalid device ordinal"},
    {cudaErrorInvalidResourceHandle, "cudaErrorInvalidResourceHandle",
     "invalid resource handle"},
    {cudaErrorLaunchOutOfResources, "cudaErrorLaunchOutOfResources",
     "too many resources requested for launch"},
    {cudaErrorLaunchFailure, "cudaErrorLaunchFailure", "unspecified launch failure"},
    {cudaErrorNotSupported, "cudaErrorNotSupported", "operation not supported"},
};
const ErrorInfo unknown_error = {cudaSuccess, "cudaErrorUnknown", "unrecognized error code"};

const ErrorInfo &error_info(cudaError_t err)
{
    for (const ErrorInfo &e : error_table)
        if (e.code == err)
            return e;
    return unknown_error;
}
} // namespace

const char *cudaGetErrorName(cudaError_t err) { return error_info(err).name; }

/* CUDA's description; for the error this thread recorded last, with the
 * emulator's detail (which kernel, where, what). */
const char *cudaGetErrorString(cudaError_t err)
{
    const char *d = error_info(err).description;
    if (err == cudaSuccess || err != detail_err || detail[0] == '\0')
        return d;
    snprintf(described, sizeof described, "%s [emulator: %s]", d, detail);
    return described;
}

cudaError_t cudaGetDeviceCount(int *count)
{
    *count = 1;
    return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int *version)
{
    *version = 13000;
    return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device)
{
    if (device != 0)
        return fail(cudaErrorInvalidDevice, "device %d: the emulator has device 0 only", device);
    switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = 1024; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *value = 9; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *value = 0; return cudaSuccess;
    }
    return fail(cudaErrorInvalidValue, "attribute %d is not emulated", (int)attr);
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device)
{
    if (device != 0)
        return fail(cudaErrorInvalidDevice, "device %d: the emulator has device 0 only", device);
    memset(prop, 0, sizeof *prop);
    snprintf(prop->name, sizeof prop->name, "needle CUDA emulator on the CPU, not a GPU");
    {
        std::lock_guard<std::mutex> g(mem_lock);
        prop->totalGlobalMem = mem_cap();
    }
    prop->sharedMemPerBlock = 48 << 10;
    prop->warpSize = 32;
    prop->maxThreadsPerBlock = 1024;
    prop->maxThreadsDim[0] = prop->maxThreadsDim[1] = 1024;
    prop->maxThreadsDim[2] = 64;
    prop->maxGridSize[0] = 0x7fffffff;
    prop->maxGridSize[1] = prop->maxGridSize[2] = 65535;
    prop->major = 9;
    prop->minor = 0;
    prop->multiProcessorCount = 1;
    return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) { return sync_point(); }
cudaError_t cudaStreamSynchronize(cudaStream_t) { return sync_point(); }

cudaError_t cudaMalloc(void **ptr, size_t size)
{
    *ptr = nullptr;
    std::lock_guard<std::mutex> g(mem_lock);
    const size_t cap = mem_cap();
    if (size > cap - mem_live || size > SIZE_MAX - 255)
        return fail(cudaErrorMemoryAllocation, "cudaMalloc(%zu bytes): over the emulated device's "
                    "capacity (NDL_CUDA_EMU_MEM)", size);
    void *p = aligned_alloc(256, (size + 255) / 256 * 256 + (size == 0 ? 256 : 0));
    if (p == nullptr)
        return fail(cudaErrorMemoryAllocation, "cudaMalloc(%zu bytes): the host has no memory "
                    "for it", size);
    device_blocks[(uintptr_t)p] = size;
    mem_live += size;
    *ptr = p;
    return cudaSuccess;
}

cudaError_t cudaFree(void *ptr)
{
    if (ptr == nullptr)
        return cudaSuccess;
    std::lock_guard<std::mutex> g(mem_lock);
    auto it = device_blocks.find((uintptr_t)ptr);
    if (it == device_blocks.end())
        return fail(cudaErrorInvalidDevicePointer, "cudaFree(%p): not a device allocation", ptr);
    mem_live -= it->second;
    device_blocks.erase(it);
    free(ptr);
    return cudaSuccess;
}

cudaError_t cudaHostAlloc(void **ptr, size_t size, unsigned)
{
    *ptr = malloc(size ? size : 1);
    return *ptr != nullptr ? cudaSuccess
                           : fail(cudaErrorMemoryAllocation, "cudaHostAlloc(%zu bytes)", size);
}

cudaError_t cudaFreeHost(void *ptr)
{
    free(ptr);
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b)
{
    std::lock_guard<std::mutex> g(mem_lock);
    *total_b = mem_cap();
    *free_b = mem_live < *total_b ? *total_b - mem_live : 0;
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind kind)
{
    cudaError_t e = sync_point();
    if (e != cudaSuccess)
        return e;
    if ((unsigned)kind > cudaMemcpyDefault)
        return fail(cudaErrorInvalidMemcpyDirection, "cudaMemcpy(kind %d)", (int)kind);
    const bool dev_dst = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
    const bool dev_src = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
    if ((e = check_range(dst, n, dev_dst, "cudaMemcpy destination")) != cudaSuccess ||
        (e = check_range(src, n, dev_src, "cudaMemcpy source")) != cudaSuccess)
        return e;
    if (n)
        memmove(dst, src, n);
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind kind,
                            cudaStream_t)
{
    return cudaMemcpy(dst, src, n, kind);
}

cudaError_t cudaMemset(void *dst, int value, size_t n)
{
    cudaError_t e = sync_point();
    if (e != cudaSuccess || (e = check_range(dst, n, true, "cudaMemset")) != cudaSuccess)
        return e;
    if (n)
        memset(dst, value, n);
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *dst, int value, size_t n, cudaStream_t)
{
    return cudaMemset(dst, value, n);
}

cudaError_t cudaPointerGetAttributes(cudaPointerAttributes *attr, const void *ptr)
{
    std::lock_guard<std::mutex> g(mem_lock);
    const bool dev = in_device(ptr, 0) || device_blocks.count((uintptr_t)ptr);
    attr->type = dev ? cudaMemoryTypeDevice : cudaMemoryTypeUnregistered;
    attr->device = 0;
    attr->devicePointer = dev ? (void *)ptr : nullptr;
    attr->hostPointer = dev ? nullptr : (void *)ptr;
    return cudaSuccess;
}

struct ndl_emu_event {
    unsigned flags;
};

cudaError_t cudaEventCreate(cudaEvent_t *ev) { return cudaEventCreateWithFlags(ev, 0); }

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *ev, unsigned flags)
{
    *ev = new ndl_emu_event{flags};
    return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t ev)
{
    delete ev;
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t ev, cudaStream_t)
{
    return ev != nullptr ? cudaSuccess
                         : fail(cudaErrorInvalidResourceHandle, "cudaEventRecord(%p)", (void *)ev);
}

cudaError_t cudaEventSynchronize(cudaEvent_t ev)
{
    if (ev == nullptr)
        return fail(cudaErrorInvalidResourceHandle, "cudaEventSynchronize(%p)", (void *)ev);
    return sync_point();
}

/* needle._cuda_emu._set_grid_cap(g): every grid cap g at most (0: the
 * GPU's; Note [Grid caps], cuda_common.cuh); the previous one. */
extern "C" int64_t ndl_cuda_emu_set_grid_cap(int64_t cap)
{
    return grid_cap_value().exchange(cap < 0 ? 0 : cap);
}

/* needle._cuda_emu._set_memory(n): the emulated device's capacity; the
 * previous one. */
extern "C" size_t ndl_cuda_emu_set_memory(size_t cap)
{
    std::lock_guard<std::mutex> g(mem_lock);
    size_t old = mem_cap();
    mem_cap() = cap;
    return old;
}
