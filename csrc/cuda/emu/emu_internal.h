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
};

/* A fresh stack for f (pooled), whose first switch-in calls entry(). */
void fiber_start(Fiber *f, void (*entry)(void));
/* Gives f's stack back to the pool (f has finished or is abandoned). */
void fiber_release(Fiber *f);
/* Saves the running context in from and runs to; returns when switched
 * back. finished: from never runs again (the sanitizer drops its state). */
void fiber_switch(Fiber *from, Fiber *to, bool finished = false);
/* The first thing a fiber's entry does (the sanitizer's bookkeeping). */
void fiber_entered(void);

/* Records err for this thread's next cudaGetLastError, with detail for
 * cudaGetErrorString (emu_runtime.cc). A kernel's failure is also returned
 * by the next synchronizing call, once (not sticky, unlike a GPU's fault:
 * one failing test does not fail every later one). */
void record_error(cudaError_t err, const char *detail, bool kernel_failure);
/* Why the hardware refuses to launch grid x block (written to buf), or
 * nullptr if it launches (emu_exec.cc). */
const char *config_error(dim3 g, dim3 b, char *buf, size_t len);
/* 1 when NDL_CUDA_EMU_ABORT=1: errors abort with their message. */
bool abort_on_error(void);

} // namespace ndl_emu

#endif
