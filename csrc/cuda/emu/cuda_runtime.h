/* emu/cuda_runtime.h: the CUDA emulator's stand-in for <cuda_runtime.h>.
 *
 * Built only into needle._cuda_emu (setup.py, NEEDLE_CUDA_EMU=1): the same
 * csrc/cuda sources compiled by the host C++ compiler with -DNDL_CUDA_EMU
 * and this directory first on the include path. It declares what the
 * sources use of the CUDA language and runtime, with CUDA's documented
 * semantics, so that every kernel runs on the CPU.
 *
 * Note [The CUDA emulator]
 *   A test harness, not a backend: it runs the kernels' own source on the
 *   CPU to catch index, bounds, barrier and launch-configuration bugs (and,
 *   under ThreadSanitizer, races between its threads), and
 *   says nothing of timing, of the GPU memory model (every access here is
 *   sequentially consistent), of real warp scheduling, or of nvcc's code
 *   generation (contraction into FMAs, fast-math intrinsics).
 *   - Launch (NDL_LAUNCH, Note [Launch sites], cuda_common.cuh): the
 *     configuration is checked as the hardware checks it (emu_exec.cc),
 *     then the grid runs on the calling thread, one block after another,
 *     under one process-wide lock; so a kernel's __shared__ arrays are
 *     function-local statics (one block at a time uses them).
 *   - The threads of a block are fibers (emu_fiber.cc): each runs until it
 *     exits or waits at a barrier or a warp collective, then the next
 *     runs. __syncthreads waits for every thread of the block at the same
 *     call (file and line); __syncwarp and the shuffles wait for the lanes
 *     their mask names, with CUDA's width and out-of-segment rules.
 *   - What a GPU leaves undefined is an error here, recorded at the launch
 *     (cudaGetLastError returns cudaErrorLaunchFailure, whose string names
 *     the kernel, block, thread and what happened): a barrier that not
 *     every thread reaches (some exited, or wait at another barrier), a
 *     collective whose mask names a lane that does not take part or does
 *     not exist, a shuffle that reads a lane outside its mask, lanes of one
 *     warp in collectives with different masks, a width that is not a
 *     power of two up to 32. NDL_CUDA_EMU_ABORT=1 aborts there instead
 *     (for a debugger).
 *   - Races inside a barrier interval (a thread's access to shared or
 *     device memory that another thread's write is not ordered with by a
 *     __syncthreads, a __syncwarp among its lanes or the launch) run one
 *     thread at a time here and go unseen, except under ThreadSanitizer
 *     (make cuda-emu-tsan), which reports them with both accesses' lines,
 *     and those between consecutive blocks on device memory (Note [Races
 *     under ThreadSanitizer], emu_exec.cc).
 *   - NDL_CUDA_EMU_GRID=<g> lowers every grid cap the host code applies to g
 *     (Note [Grid caps], cuda_common.cuh), so the grid-stride loops' later
 *     turns and the longer chunks run at small sizes.
 *   - NDL_CUDA_EMU_AHEAD=1 runs a warp on to its next __syncthreads before
 *     another warp moves (Note [Emulated execution], emu_exec.cc).
 *   - NDL_CUDA_EMU_SHUFFLE=<seed> runs blocks in a seeded shuffled order
 *     and starts a block's threads in one, to expose order dependences.
 *   - Device memory is host memory (256-byte aligned, tracked), so the
 *     sanitizers see a kernel's out-of-bounds access for what it is; the
 *     emulated device has NDL_CUDA_EMU_MEM bytes (default 4 GiB, a cap on
 *     the sum of live allocations, not a reservation) and cudaMemGetInfo
 *     reports that cap, so the out-of-memory paths run for real.
 *   - WMMA (emu/mma.h, Note [Emulated WMMA]): the m16n16k8 TF32 fragments
 *     the TF32 matmul uses; loads, stores and mma_sync are warp collectives
 *     (every lane, the same arguments, else an error), pointers and ldm are
 *     checked as CUDA documents, the lane mapping is a scrambled one, and
 *     the arithmetic is TF32's (inputs read as TF32, float32 sums in a
 *     stated order).
 *   - __launch_bounds__(n) is erased here, but a launch of more than n
 *     threads a block fails as on a GPU (Note [Launch bounds under the
 *     emulator], emu_bounds.cc: setup.py reads n from the sources).
 *   - Not emulated: dynamic shared memory, streams other than the legacy
 *     one (every call is synchronous), atomics (no kernel uses them), WMMA
 *     shapes and types other than the TF32 ones (they do not compile).
 */
#ifndef NDL_EMU_CUDA_RUNTIME_H
#define NDL_EMU_CUDA_RUNTIME_H

#ifndef NDL_CUDA_EMU
#error "emu/cuda_runtime.h is the CUDA emulator's; compile with -DNDL_CUDA_EMU"
#endif

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <tuple>
#include <utility>

/* ---- the language: qualifiers mean nothing on the host --------------- */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __restrict__ __restrict
#define __align__(n) __attribute__((aligned(n)))
/* One block runs at a time (Note [The CUDA emulator]). */
#define __shared__ static

struct uint3 {
    unsigned x, y, z;
};

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned vx = 1, unsigned vy = 1, unsigned vz = 1) : x(vx), y(vy), z(vz) {}
    dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
};

/* The current fiber's indices: set before each switch into a thread, and
 * constant over its life (so a cached copy is never stale). Plain globals,
 * not thread_local: grids run one at a time under a process-wide lock
 * (emu_exec.cc), and a TLS read from a dlopen'd module costs a call. */
extern uint3 threadIdx, blockIdx, blockDim, gridDim __attribute__((visibility("hidden")));
static constexpr int warpSize = 32;

/* ---- the runtime API the sources use (emu_runtime.cc) ----------------- */
enum cudaError_t {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevicePointer = 17,
    cudaErrorInvalidMemcpyDirection = 21,
    cudaErrorInsufficientDriver = 35,
    cudaErrorNoDevice = 100,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorLaunchOutOfResources = 701,
    cudaErrorLaunchFailure = 719,
    cudaErrorNotSupported = 801,
};
typedef cudaError_t cudaError;

enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
};

enum cudaMemoryType {
    cudaMemoryTypeUnregistered = 0,
    cudaMemoryTypeHost = 1,
    cudaMemoryTypeDevice = 2,
    cudaMemoryTypeManaged = 3,
};

struct cudaPointerAttributes {
    cudaMemoryType type;
    int device;
    void *devicePointer;
    void *hostPointer;
};

enum cudaDeviceAttr {
    cudaDevAttrMaxThreadsPerBlock = 1,
    cudaDevAttrComputeCapabilityMajor = 75,
    cudaDevAttrComputeCapabilityMinor = 76,
};

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    size_t sharedMemPerBlock;
    int warpSize;
    int maxThreadsPerBlock;
    int maxThreadsDim[3];
    int maxGridSize[3];
    int major, minor;
    int multiProcessorCount;
};

typedef struct ndl_emu_stream *cudaStream_t;
typedef struct ndl_emu_event *cudaEvent_t;
#define cudaHostAllocDefault 0u
#define cudaEventDefault 0u
#define cudaEventDisableTiming 2u

cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
const char *cudaGetErrorString(cudaError_t err);
const char *cudaGetErrorName(cudaError_t err);
cudaError_t cudaGetDeviceCount(int *count);
cudaError_t cudaDriverGetVersion(int *version);
cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *prop, int device);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaMalloc(void **ptr, size_t size);
cudaError_t cudaFree(void *ptr);
cudaError_t cudaHostAlloc(void **ptr, size_t size, unsigned flags);
cudaError_t cudaFreeHost(void *ptr);
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total_b);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, cudaMemcpyKind kind,
                            cudaStream_t stream = 0);
cudaError_t cudaMemset(void *dst, int value, size_t n);
cudaError_t cudaMemsetAsync(void *dst, int value, size_t n, cudaStream_t stream = 0);
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes *attr, const void *ptr);
cudaError_t cudaEventCreate(cudaEvent_t *ev);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *ev, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t ev);
cudaError_t cudaEventRecord(cudaEvent_t ev, cudaStream_t stream = 0);
cudaError_t cudaEventSynchronize(cudaEvent_t ev);

template <typename T> cudaError_t cudaMalloc(T **ptr, size_t size)
{
    return cudaMalloc((void **)ptr, size);
}
template <typename T> cudaError_t cudaHostAlloc(T **ptr, size_t size, unsigned flags)
{
    return cudaHostAlloc((void **)ptr, size, flags);
}

/* ---- device intrinsics (emu_exec.cc) ----------------------------------- */
namespace ndl_emu {
enum ShuffleMode { SHFL_IDX, SHFL_UP, SHFL_DOWN, SHFL_XOR };
void syncthreads(const char *file, int line);
void syncwarp(unsigned mask, const char *file, int line);
uint64_t shuffle(ShuffleMode mode, unsigned mask, uint64_t bits, int b, int width,
                 const char *file, int line);
/* Ends the launch with an error (a kernel meeting what is not emulated). */
[[noreturn]] void kernel_fail(const char *file, int line, const char *what);

template <typename T> T shuffle_as(ShuffleMode mode, unsigned mask, T v, int b, int width,
                                   const char *file, int line)
{
    static_assert(sizeof(T) <= 8, "a shuffle moves at most 64 bits");
    uint64_t bits = 0;
    memcpy(&bits, &v, sizeof v);
    bits = shuffle(mode, mask, bits, b, width, file, line);
    memcpy(&v, &bits, sizeof v);
    return v;
}
} // namespace ndl_emu

inline void __syncthreads(const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    ndl_emu::syncthreads(file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char *file = __builtin_FILE(),
                       int line = __builtin_LINE())
{
    ndl_emu::syncwarp(mask, file, line);
}
template <typename T>
T __shfl_sync(unsigned mask, T v, int src, int width = warpSize,
              const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    return ndl_emu::shuffle_as(ndl_emu::SHFL_IDX, mask, v, src, width, file, line);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T v, unsigned delta, int width = warpSize,
                 const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    return ndl_emu::shuffle_as(ndl_emu::SHFL_UP, mask, v, (int)delta, width, file, line);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = warpSize,
                   const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    return ndl_emu::shuffle_as(ndl_emu::SHFL_DOWN, mask, v, (int)delta, width, file, line);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = warpSize,
                  const char *file = __builtin_FILE(), int line = __builtin_LINE())
{
    return ndl_emu::shuffle_as(ndl_emu::SHFL_XOR, mask, v, lane_mask, width, file, line);
}

/* Round-to-nearest arithmetic that nvcc never contracts into an FMA; the
 * host compiler here is not asked to contract either (no -mfma). */
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }

/* ---- launches (NDL_LAUNCH, cuda_common.cuh) --------------------------- */
namespace ndl_emu {
/* Runs body(ctx) as every thread of the grid (emu_exec.cc); a bad
 * configuration or an error in a kernel is recorded for cudaGetLastError. */
void run_grid(dim3 grid, dim3 block, const char *kernel, const char *file, int line,
              void (*body)(void *), void *ctx);

template <typename... P> struct Launcher {
    void (*kernel)(P...);
    const char *name, *file;
    dim3 grid, block;
    int line;

    template <typename... A> void operator()(A &&...args) const
    {
        /* the arguments as the kernel's parameters, converted once, as a
         * launch copies them; each thread then gets its own copy */
        struct Call {
            void (*kernel)(P...);
            std::tuple<P...> params;
            static void run(void *self)
            {
                Call *c = (Call *)self;
                std::apply(c->kernel, c->params);
            }
        } call{kernel, std::tuple<P...>(std::forward<A>(args)...)};
        run_grid(grid, block, name, file, line, &Call::run, &call);
    }
};

template <typename... P>
Launcher<P...> launcher(void (*kernel)(P...), const char *name, dim3 grid, dim3 block,
                        const char *file, int line)
{
    return Launcher<P...>{kernel, name, file, grid, block, line};
}
} // namespace ndl_emu

#endif
