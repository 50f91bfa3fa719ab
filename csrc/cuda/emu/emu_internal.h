/* emu/emu_internal.h: what the emulator's own files share (Note [The CUDA
 * emulator], cuda_runtime.h): fibers (emu_fiber.cc) and the per-thread
 * error record (emu_runtime.cc) that launches write (emu_exec.cc). */
#ifndef NDL_EMU_INTERNAL_H
#define NDL_EMU_INTERNAL_H

#include <stddef.h>

#include "cuda_runtime.h"

namespace ndl_emu {

/* A stack of its own and a saved stack pointer (emu_fiber.cc). */
struct Fiber {
    void *sp = nullptr;       /* saved stack pointer while switched out */
    char *stack = nullptr;    /* lowest usable byte; nullptr: the OS thread's own */
    size_t size = 0;
    void *fake_stack = nullptr; /* the sanitizer's, while switched out */
    void *tsan = nullptr;       /* ThreadSanitizer's fiber: whose accesses these are */
};

/* A fresh stack for f, whose first switch-in calls entry(): pooled; under
 * ThreadSanitizer persona's own stack and TSan fiber (Note [Races under
 * ThreadSanitizer], emu_exec.cc). */
void fiber_start(Fiber *f, void (*entry)(void), unsigned persona);
/* Gives f's stack back to the pool (f has finished or is abandoned). */
void fiber_release(Fiber *f);
/* Saves the running context in from and runs to; returns when switched
 * back. finished: from never runs again (the sanitizer drops its state). */
void fiber_switch(Fiber *from, Fiber *to, bool finished = false);
/* The first thing a fiber's entry does (the sanitizer's bookkeeping). */
void fiber_entered(void);

/* ThreadSanitizer (Note [Races under ThreadSanitizer], emu_exec.cc): the
 * build with NEEDLE_TSAN=1 defines NDL_EMU_TSAN; elsewhere these are empty.
 * tsan_enter: what runs from here is f's GPU thread (kernel code);
 * tsan_leave: back to the launching host thread (the emulator's own code).
 * tsan_abandon: f's thread ends where it stands (a failed launch): its work
 * is released to done, its TSan fiber destroyed (a fresh one next time).
 * tsan_forget: key's sync clock emptied; tsan_forget_globals: the history of
 * the module's own globals and statics (__shared__ arrays) dropped. */
#ifdef NDL_EMU_TSAN
void tsan_enter(const Fiber *f);
void tsan_leave(void);
void tsan_abandon(Fiber *f, void *done);
void tsan_forget(void *key);
void tsan_forget_globals(void);
extern "C" void __tsan_acquire(void *addr);
extern "C" void __tsan_release(void *addr);
inline void tsan_acquire(void *key) { __tsan_acquire(key); }
inline void tsan_release(void *key) { __tsan_release(key); }
/* the emulator's accesses on a kernel's behalf (emu_wmma.cc's tile loads and
 * stores), as the current GPU thread's own */
extern "C" void __tsan_read_range(void *addr, unsigned long size);
extern "C" void __tsan_write_range(void *addr, unsigned long size);
inline void tsan_read(const void *p, size_t n) { __tsan_read_range((void *)p, n); }
inline void tsan_write(void *p, size_t n) { __tsan_write_range(p, n); }
#else
inline void tsan_enter(const Fiber *) {}
inline void tsan_leave(void) {}
inline void tsan_abandon(Fiber *, void *) {}
inline void tsan_forget(void *) {}
inline void tsan_forget_globals(void) {}
inline void tsan_acquire(void *) {}
inline void tsan_release(void *) {}
inline void tsan_read(const void *, size_t) {}
inline void tsan_write(void *, size_t) {}
#endif

/* Records err for this thread's next cudaGetLastError, with detail for
 * cudaGetErrorString (emu_runtime.cc). A kernel's failure is also returned
 * by the next synchronizing call, once (not sticky, unlike a GPU's fault:
 * one failing test does not fail every later one). */
void record_error(cudaError_t err, const char *detail, bool kernel_failure);
/* Why the hardware refuses to launch grid x block (written to buf), or
 * nullptr if it launches (emu_exec.cc). */
const char *config_error(dim3 g, dim3 b, char *buf, size_t len);
/* A __syncwarp / shuffle made on a call's behalf (a WMMA collective's
 * rendezvous, emu_wmma.cc): the same, but named `what` (a string literal)
 * in the emulator's messages, and only lanes at the same `what` meet. */
void syncwarp_for(const char *what, unsigned mask, const char *file, int line);
uint64_t shuffle_for(const char *what, ShuffleMode mode, unsigned mask, uint64_t bits, int b,
                     int width, const char *file, int line);
/* The kernel's __launch_bounds__ maximum (kernel: a launch's name,
 * template arguments and all), 0 if it declares none (Note [Launch bounds
 * under the emulator], emu_bounds.cc). */
long launch_bound(const char *kernel);
/* 1 when NDL_CUDA_EMU_ABORT=1: errors abort with their message. */
bool abort_on_error(void);

} // namespace ndl_emu

#endif
