/* emu/emu_fiber.cc: the fibers the threads of an emulated block run on.
 *
 * Note [Emulator fibers]
 *   A block's threads are cooperative fibers on one OS thread: a switch
 *   saves the callee-saved registers and the SSE/x87 control words on the
 *   running stack and loads another stack pointer (x86-64, about ten
 *   instructions, no system call: ucontext's swapcontext costs a
 *   sigprocmask per switch, and every emulated thread switches at least
 *   twice). Other architectures use ucontext. Stacks are mmap'd with a
 *   guard page below (an overflow faults instead of corrupting), 64 KiB
 *   each (256 KiB under AddressSanitizer, whose frames are larger), and
 *   pooled: a thread that exits gives its stack back at once, so a kernel
 *   without barriers runs every thread on the same stack. Under ASan every
 *   switch is announced (__sanitizer_start_switch_fiber /
 *   __sanitizer_finish_switch_fiber) and a reused stack is unpoisoned, so
 *   the sanitizer follows the fibers instead of reporting their frames.
 *   Under ThreadSanitizer a stack is never shared: each persona (an
 *   emulated thread's identity, Note [Races under ThreadSanitizer],
 *   emu_exec.cc) owns one stack and one TSan fiber for the process's life,
 *   so that one thread's frames are never another's memory to race on.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <vector>

#include "emu_internal.h"

#if defined(__SANITIZE_ADDRESS__)
#define NDL_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define NDL_EMU_ASAN 1
#endif
#endif

#ifdef NDL_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
static const size_t STACK_SIZE = 256 << 10;
#else
static const size_t STACK_SIZE = 64 << 10;
#endif

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#ifdef NDL_EMU_TSAN
#include <link.h>
#include <sanitizer/tsan_interface.h>
/* TSan's Java interface, the one that empties a range's history (shadow and
 * sync objects) without touching the memory: alloc resets, free drops. */
extern "C" void __tsan_java_alloc(unsigned long ptr, unsigned long size);
extern "C" void __tsan_java_free(unsigned long ptr, unsigned long size);
#endif

namespace ndl_emu {

namespace {
thread_local std::vector<char *> pool; /* free stacks of this OS thread */
size_t page_size(void)
{
    static size_t p = (size_t)sysconf(_SC_PAGESIZE);
    return p;
}

#ifdef NDL_EMU_ASAN
/* The stack that the running fiber came from (the scheduler's, first). */
thread_local const void *from_bottom;
thread_local size_t from_size;
#endif

char *new_stack(void)
{
    size_t guard = page_size();
    void *m = mmap(NULL, STACK_SIZE + guard, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
        fprintf(stderr, "needle CUDA emulator: no memory for a fiber stack\n");
        abort();
    }
    mprotect(m, guard, PROT_NONE);
    return (char *)m + guard;
}

#ifdef NDL_EMU_TSAN
/* An emulated thread's identity: its TSan fiber and its stack, both kept
 * (under the launch lock; the fiber made again after tsan_abandon). */
struct Persona {
    void *tsan;
    char *stack;
};
std::vector<Persona> personas;
void *host; /* the launching thread's own TSan state (tsan_leave's target) */
#endif
} // namespace

#if defined(__x86_64__)
extern "C" void ndl_emu_swap(void **save_sp, void *load_sp);
extern "C" void ndl_emu_trampoline(void);
/* ndl_emu_swap(save, load): push the callee-saved registers and the
 * MXCSR / x87 control words, *save = rsp, rsp = load, pop them, return on
 * the other stack. ndl_emu_trampoline: a new stack's first return address;
 * calls r13 (the entry) with a 16-byte aligned stack, never returns. */
asm(R"(
    .text
    .globl ndl_emu_swap
    .hidden ndl_emu_swap
    .type ndl_emu_swap, @function
ndl_emu_swap:
    .cfi_startproc
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    subq $8, %rsp
    stmxcsr (%rsp)
    fnstcw 4(%rsp)
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    ldmxcsr (%rsp)
    fldcw 4(%rsp)
    addq $8, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .cfi_endproc
    .size ndl_emu_swap, .-ndl_emu_swap

    .globl ndl_emu_trampoline
    .hidden ndl_emu_trampoline
    .type ndl_emu_trampoline, @function
ndl_emu_trampoline:
    andq $-16, %rsp
    callq *%r13
    ud2
    .size ndl_emu_trampoline, .-ndl_emu_trampoline
)");
#else
namespace {
thread_local void (*pending_entry)(void);
void uc_entry(void) { pending_entry(); }
} // namespace
#endif

void fiber_start(Fiber *f, void (*entry)(void), unsigned persona)
{
    char *s;
#ifdef NDL_EMU_TSAN
    if (personas.size() <= persona)
        personas.resize(persona + 1, Persona{nullptr, nullptr});
    Persona &p = personas[persona];
    if (p.stack == nullptr)
        p.stack = new_stack();
    if (p.tsan == nullptr) {
        char name[64];
        snprintf(name, sizeof name, "emulated GPU thread %u of an %s block", persona / 2,
                 persona % 2 ? "odd" : "even");
        p.tsan = __tsan_create_fiber(0);
        __tsan_set_fiber_name(p.tsan, name);
    }
    s = p.stack;
    f->tsan = p.tsan;
#else
    (void)persona;
    if (!pool.empty()) {
        s = pool.back();
        pool.pop_back();
    } else {
        s = new_stack();
    }
#endif
#ifdef NDL_EMU_ASAN
    __asan_unpoison_memory_region(s, STACK_SIZE);
#endif
    f->stack = s;
    f->size = STACK_SIZE;
    f->fake_stack = nullptr;
#if defined(__x86_64__)
    uint64_t *top = (uint64_t *)(s + STACK_SIZE), *sp = top - 10;
    uint32_t mxcsr, fpucw = 0;
    __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
    __asm__ volatile("fnstcw %0" : "=m"(fpucw));
    sp[0] = (uint64_t)mxcsr | (uint64_t)(fpucw & 0xffff) << 32;
    sp[1] = sp[2] = 0;              /* r15, r14 */
    sp[3] = (uint64_t)(uintptr_t)entry; /* r13 */
    sp[4] = sp[5] = sp[6] = 0;      /* r12, rbx, rbp */
    sp[7] = (uint64_t)(uintptr_t)&ndl_emu_trampoline;
    sp[8] = sp[9] = 0;
    f->sp = sp;
#else
    ucontext_t *uc = new ucontext_t;
    getcontext(uc);
    uc->uc_stack.ss_sp = s;
    uc->uc_stack.ss_size = STACK_SIZE;
    uc->uc_link = nullptr;
    pending_entry = entry;
    makecontext(uc, uc_entry, 0);
    f->sp = uc;
#endif
}

void fiber_release(Fiber *f)
{
#ifndef NDL_EMU_TSAN /* a persona's stack stays its own */
    if (f->stack != nullptr)
        pool.push_back(f->stack);
#endif
#if !defined(__x86_64__)
    delete (ucontext_t *)f->sp;
#endif
    f->stack = nullptr;
    f->sp = nullptr;
    f->tsan = nullptr;
}

void fiber_switch(Fiber *from, Fiber *to, bool finished)
{
#ifdef NDL_EMU_ASAN
    __sanitizer_start_switch_fiber(finished ? nullptr : &from->fake_stack,
                                   to->stack != nullptr ? to->stack : from_bottom,
                                   to->stack != nullptr ? to->size : from_size);
#else
    (void)finished;
#endif
#if defined(__x86_64__)
    ndl_emu_swap(&from->sp, to->sp);
#else
    if (from->sp == nullptr)
        from->sp = new ucontext_t;
    swapcontext((ucontext_t *)from->sp, (ucontext_t *)to->sp);
#endif
#ifdef NDL_EMU_ASAN
    /* back in `from`, switched to from the other side */
    const void *bottom;
    size_t size;
    __sanitizer_finish_switch_fiber(from->fake_stack, &bottom, &size);
    if (from->stack != nullptr) { /* a fiber resumed by the scheduler */
        from_bottom = bottom;
        from_size = size;
    }
#endif
}

void fiber_entered(void)
{
#ifdef NDL_EMU_ASAN
    /* the first switch into a fiber lands here, not after fiber_switch's
     * swap: finish it, and learn the stack we came from (the scheduler's) */
    __sanitizer_finish_switch_fiber(nullptr, &from_bottom, &from_size);
#endif
}

#ifdef NDL_EMU_TSAN
/* The switches carry no happens-before (no_sync): only the release and
 * acquire calls of emu_exec.cc order one thread after another. */
void tsan_enter(const Fiber *f)
{
    host = __tsan_get_current_fiber(); /* only ever called as the host */
    __tsan_switch_to_fiber(f->tsan, __tsan_switch_to_fiber_no_sync);
}

void tsan_leave(void) { __tsan_switch_to_fiber(host, __tsan_switch_to_fiber_no_sync); }

void tsan_abandon(Fiber *f, void *done)
{
    if (f->tsan == nullptr)
        return;
    tsan_enter(f);
    __tsan_release(done);
    tsan_leave();
    for (Persona &p : personas) /* its shadow call stack is left unbalanced */
        if (p.tsan == f->tsan)
            p.tsan = nullptr;
    __tsan_destroy_fiber(f->tsan);
    f->tsan = nullptr;
}

void tsan_forget(void *key) { __tsan_mutex_destroy(key, 0); }

/* The module's writable segment: its globals, __device__ variables and the
 * __shared__ arrays (function-local statics, cuda_runtime.h). */
void tsan_forget_globals(void)
{
    static uintptr_t lo, hi;
    if (hi == 0) {
        dl_iterate_phdr(
            [](struct dl_phdr_info *info, size_t, void *) -> int {
                const uintptr_t me = (uintptr_t)&lo;
                for (int i = 0; i < info->dlpi_phnum; i++) {
                    const ElfW(Phdr) &ph = info->dlpi_phdr[i];
                    const uintptr_t a = info->dlpi_addr + ph.p_vaddr;
                    if (ph.p_type == PT_LOAD && (ph.p_flags & PF_W) && me >= a &&
                        me < a + ph.p_memsz) {
                        lo = a & ~(uintptr_t)7;
                        hi = (a + ph.p_memsz + 7) & ~(uintptr_t)7;
                        return 1;
                    }
                }
                return 0;
            },
            nullptr);
        if (hi == 0) {
            fprintf(stderr, "needle CUDA emulator: no writable segment of its own\n");
            abort();
        }
    }
    __tsan_java_alloc(lo, hi - lo);
    __tsan_java_free(lo, hi - lo);
}
#endif

} // namespace ndl_emu
