/* cpu_info.c: cache sizes and usable SIMD sets (contract in cpu_info.h).
 *
 * Note [Usable SIMD]
 *   A CPU flag alone is not enough: the OS must also save the wider
 *   registers on a context switch, which it announces in XCR0 (read with
 *   xgetbv, itself allowed only when cpuid.1:ECX.OSXSAVE is set). AVX2
 *   needs XCR0 bits 1-2 (SSE and AVX state); AVX-512 also bits 5-7
 *   (opmask, upper halves of zmm0-15, zmm16-31). A kernel whose state the
 *   OS does not save would fault (or corrupt registers) on first use.
 */
#define _GNU_SOURCE
#include "cpu_info.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define NDL_X86 1
#else
#define NDL_X86 0
#endif

static ndl_cpu_info g_info;
static pthread_once_t g_info_once = PTHREAD_ONCE_INIT;

#if NDL_X86
static uint64_t read_xcr0(void)
{
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((uint64_t)hi << 32) | lo;
}

/* Note [Usable SIMD] */
static void read_simd(ndl_cpu_info *info)
{
    unsigned a, b, c, d;
    if (__get_cpuid(0, &a, &b, &c, &d)) { /* the vendor: ebx, edx, ecx */
        memcpy(info->vendor, &b, 4);
        memcpy(info->vendor + 4, &d, 4);
        memcpy(info->vendor + 8, &c, 4);
        info->vendor[12] = '\0';
        info->amd = !strcmp(info->vendor, "AuthenticAMD") || !strcmp(info->vendor, "HygonGenuine");
    }
    if (!__get_cpuid(1, &a, &b, &c, &d))
        return;
    int osxsave = (c >> 27) & 1, avx = (c >> 28) & 1, fma = (c >> 12) & 1;
    if (!osxsave || !avx)
        return;
    uint64_t xcr0 = read_xcr0();
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
        return;
    int avx2 = (b >> 5) & 1, avx512f = (b >> 16) & 1;
    info->avx2_fma = avx2 && fma && (xcr0 & 0x6) == 0x6;
    info->avx512f = avx512f && fma && (xcr0 & 0xE6) == 0xE6;
}

/* Deterministic cache parameters (same layout in Intel leaf 4 and AMD leaf
 * 0x8000001D): subleaf i describes one cache until its type is 0. */
static int read_caches_cpuid(ndl_cpu_info *info)
{
    unsigned a, b, c, d, leaf;
    if (!__get_cpuid(0, &a, &b, &c, &d))
        return 0;
    if (b == 0x756e6547) { /* "Genu"ineIntel */
        if (a < 4)
            return 0;
        leaf = 4;
    } else { /* AMD and Hygon: leaf 0x8000001D, present with TOPOEXT */
        if (__get_cpuid_max(0x80000000, NULL) < 0x8000001D)
            return 0;
        __get_cpuid(0x80000001, &a, &b, &c, &d);
        if (!((c >> 22) & 1))
            return 0;
        leaf = 0x8000001D;
    }
    int found = 0;
    for (unsigned i = 0; i < 16; i++) {
        __cpuid_count(leaf, i, a, b, c, d);
        unsigned type = a & 31, level = (a >> 5) & 7;
        if (type == 0)
            break;
        if (type == 2) /* instruction cache */
            continue;
        int64_t ways = ((b >> 22) & 1023) + 1, parts = ((b >> 12) & 1023) + 1;
        int64_t line = (b & 4095) + 1, sets = (int64_t)c + 1;
        int64_t size = ways * parts * line * sets;
        int64_t sharing = ((a >> 14) & 4095) + 1; /* logical CPUs, an upper bound */
        if (level == 1) {
            info->l1d = size;
            info->l1d_ways = (int)ways;
            found |= 1;
        } else if (level == 2) {
            info->l2 = size;
            info->l2_ways = (int)ways;
            found |= 2;
        } else if (level == 3) {
            info->l3 = size / sharing;
            info->llc = size;
        }
    }
    return found == 3;
}
#endif

/* "32K" -> 32768; -1 when not a size. */
static int64_t parse_size(const char *s, char **end)
{
    char *e = NULL;
    long long v = strtoll(s, &e, 10);
    if (e == s || v < 0)
        return -1;
    if (*e == 'K' || *e == 'k')
        v <<= 10, e++;
    else if (*e == 'M' || *e == 'm')
        v <<= 20, e++;
    if (end)
        *end = e;
    return v;
}

static int64_t sysfs_number(const char *dir, const char *name)
{
    char path[256], buf[64];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    int64_t v = -1;
    if (fgets(buf, sizeof(buf), f))
        v = parse_size(buf, NULL);
    fclose(f);
    return v;
}

/* CPUs in a list such as "0-3,8-11". */
static int64_t sysfs_cpu_count(const char *dir)
{
    char path[256], buf[256];
    snprintf(path, sizeof(path), "%s/shared_cpu_list", dir);
    FILE *f = fopen(path, "r");
    if (!f)
        return 1;
    int64_t n = 0;
    if (fgets(buf, sizeof(buf), f)) {
        char *s = buf;
        for (;;) {
            char *e;
            long lo = strtol(s, &e, 10), hi = lo;
            if (e == s)
                break;
            if (*e == '-')
                hi = strtol(e + 1, &e, 10);
            n += hi - lo + 1;
            if (*e != ',')
                break;
            s = e + 1;
        }
    }
    fclose(f);
    return n > 0 ? n : 1;
}

static int read_caches_sysfs(ndl_cpu_info *info)
{
    int found = 0;
    for (int i = 0; i < 8; i++) {
        char dir[128], type[32] = "";
        snprintf(dir, sizeof(dir), "/sys/devices/system/cpu/cpu0/cache/index%d", i);
        char path[160];
        snprintf(path, sizeof(path), "%s/type", dir);
        FILE *f = fopen(path, "r");
        if (!f)
            break;
        int ok = fgets(type, sizeof(type), f) != NULL;
        fclose(f);
        if (!ok || strncmp(type, "Instruction", 11) == 0)
            continue;
        int64_t level = sysfs_number(dir, "level"), size = sysfs_number(dir, "size");
        int64_t ways = sysfs_number(dir, "ways_of_associativity");
        if (size <= 0)
            continue;
        if (level == 1) {
            info->l1d = size;
            info->l1d_ways = ways > 0 ? (int)ways : 8;
            found |= 1;
        } else if (level == 2) {
            info->l2 = size;
            info->l2_ways = ways > 0 ? (int)ways : 8;
            found |= 2;
        } else if (level == 3) {
            info->l3 = size / sysfs_cpu_count(dir);
            info->llc = size;
        }
    }
    return found == 3;
}

/* NEEDLE_CACHE_SIZES=L1,L2,L3 */
static int read_caches_env(ndl_cpu_info *info)
{
    const char *env = getenv("NEEDLE_CACHE_SIZES");
    if (!env || !*env)
        return 0;
    int64_t v[3];
    const char *s = env;
    for (int i = 0; i < 3; i++) {
        char *e;
        v[i] = parse_size(s, &e);
        if (v[i] <= 0 || (i < 2 && *e != ',') || (i == 2 && *e != '\0'))
            return 0; /* malformed: ignored */
        s = e + 1;
    }
    info->l1d = v[0];
    info->l2 = v[1];
    info->l3 = v[2];
    info->llc = v[2];
    return 1;
}

static void fill_info(void)
{
    ndl_cpu_info *info = &g_info;
    info->l1d = 32 << 10;
    info->l2 = 512 << 10;
    info->l3 = 2 << 20;
    info->llc = 8 << 20;
    info->l1d_ways = info->l2_ways = 8;
    info->source = "default";
#if NDL_X86
    read_simd(info);
    if (read_caches_cpuid(info))
        info->source = "cpuid";
    else
#endif
        if (read_caches_sysfs(info))
        info->source = "sysfs";
    if (read_caches_env(info))
        info->source = "env";
}

const ndl_cpu_info *ndl_get_cpu_info(void)
{
    pthread_once(&g_info_once, fill_info);
    return &g_info;
}
