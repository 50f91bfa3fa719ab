/* cpu_info.h: what the CPU reports about itself, read once: the cache sizes
 * that ndl_cpu_matmul derives its block sizes from, and which SIMD
 * instruction sets both the CPU and the OS (XCR0) make usable.
 *
 * Sources, in order: cpuid's deterministic cache leaves (Intel leaf 4, AMD
 * leaf 0x8000001D), then Linux sysfs (/sys/devices/system/cpu/cpu0/cache),
 * then fixed defaults (32 KiB 8-way L1d, 512 KiB 8-way L2, 2 MiB of L3 per
 * core, 8 MiB in all). NEEDLE_CACHE_SIZES=L1,L2,L3 (bytes, K/M suffixes
 * allowed) overrides all three, L3 taken as the whole last-level cache too,
 * so the derivation can be exercised for another machine.
 * Never touches Python.
 */
#ifndef NDL_CPU_INFO_H
#define NDL_CPU_INFO_H

#include <stdint.h>

typedef struct {
    int64_t l1d, l2; /* bytes, one core's L1 data cache and L2 */
    int64_t l3;      /* bytes of L3 per core sharing it (0: none) */
    int64_t llc;     /* bytes of the whole L3 this core reaches (8 MiB when none is reported) */
    int l1d_ways, l2_ways;
    const char *source; /* "cpuid", "sysfs", "default" or "env" */
    int avx2_fma;       /* AVX2 and FMA3: CPU flags and OS saves ymm state */
    int avx512f;        /* AVX-512F and FMA3: CPU flags and OS saves zmm/opmask state */
    char vendor[13];    /* cpuid leaf 0's, e.g. "AuthenticAMD"; "" off x86 */
    int amd;            /* AuthenticAMD or HygonGenuine (Note [Packing A in the kernel]) */
} ndl_cpu_info;

/* Borrowed, filled on first call (thread-safe), never NULL. */
const ndl_cpu_info *ndl_get_cpu_info(void);

#endif /* NDL_CPU_INFO_H */
