/* emu/emu_wmma.cc: the WMMA collectives of the CUDA emulator (Note [Emulated
 * WMMA], mma.h): load_matrix_sync, store_matrix_sync, mma_sync, staged per
 * lane and run between two rendezvous of the emulator's warp (emu_exec.cc). */
#include <stdio.h>
#include <string.h>

#include "emu_internal.h"
#include "mma.h"

namespace ndl_emu {

namespace {
enum { MAX_ELEMS = 8 }; /* per lane and operand: 16 x 16 / 32 */

/* One lane's call, seen by the other lanes of its warp between the two
 * rendezvous. */
struct Stage {
    const char *op;   /* nullptr: not in a WMMA call */
    const char *call; /* "wmma::" op: the rendezvous' name in the emulator's messages */
    uint64_t nonce; /* this call's, passed through the rendezvous too */
    const char *file;
    int line;
    const void *ptr;
    unsigned ldm;
    int layout, use, rows, cols, a_col, b_col;
    float a[MAX_ELEMS], b[MAX_ELEMS], c[MAX_ELEMS]; /* mma_sync's operands, copied */
};

Stage stages[1024]; /* by the thread's linear index in its block (one block runs at a time) */
uint64_t nonces;    /* the last call's (under the emulator's launch lock) */

const char *short_file(const char *f)
{
    const char *s = strrchr(f, '/');
    return s ? s + 1 : f;
}

const char *use_name(int use)
{
    return use == WMMA_A ? "matrix_a" : use == WMMA_B ? "matrix_b" : "accumulator";
}

/* "p=0x..., ldm=20, row-major, matrix_a 16x8" (what must agree across lanes). */
void describe(const Stage &s, char *buf, size_t len)
{
    tsan_leave(); /* a report: the emulator's own work (Note [Races under ThreadSanitizer]) */
    if (strcmp(s.op, "mma_sync") == 0)
        snprintf(buf, len, "%s 16x16x8, a %s, b %s", s.op, s.a_col ? "col_major" : "row_major",
                 s.b_col ? "col_major" : "row_major");
    else
        snprintf(buf, len, "%s of a %s %dx%d at %p, ldm %u, %s", s.op, use_name(s.use), s.rows,
                 s.cols, s.ptr, s.ldm, s.layout == 0 ? "row-major" : "column-major");
}

bool same_call(const Stage &x, const Stage &y)
{
    return strcmp(x.op, y.op) == 0 && x.line == y.line && strcmp(x.file, y.file) == 0 && x.ptr == y.ptr &&
           x.ldm == y.ldm && x.layout == y.layout && x.use == y.use && x.rows == y.rows &&
           x.cols == y.cols && x.a_col == y.a_col && x.b_col == y.b_col;
}

unsigned linear_tid(void)
{
    return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
}

/* enter(WMMA_CALL("mma_sync"), ...): the op and its full name, literals. */
#define WMMA_CALL(op) op, "wmma::" op

/* This lane's slot, filled with the call (op names it in messages); a lane
 * of a partial warp cannot take part. */
Stage &enter(const char *op, const char *call, const char *file, int line)
{
    const unsigned tid = linear_tid(), nthreads = blockDim.x * blockDim.y * blockDim.z;
    if (32 * (tid / 32 + 1) > nthreads) {
        char msg[300];
        tsan_leave(); /* a report: the emulator's own work */
        snprintf(msg, sizeof msg,
                 "wmma::%s needs all 32 lanes of the warp, and the block's %u threads leave "
                 "warp %u with %u",
                 op, nthreads, tid / 32, nthreads % 32);
        kernel_fail(file, line, msg);
    }
    Stage &s = stages[tid];
    memset(&s, 0, sizeof s);
    s.op = op;
    s.call = call;
    s.file = file;
    s.line = line;
    s.nonce = ++nonces;
    return s;
}

/* Every lane of the warp has staged its call (the first rendezvous), and
 * made the same one; else a launch error. The rendezvous is a shuffle of
 * the calls' nonces, named after the call (shuffle_for): each lane sees
 * that its neighbour's slot is this call's, not one left by an earlier
 * call or an abandoned launch (a lane at a __syncwarp or shuffle of its
 * own, or at another WMMA call, is the emulator's mismatch error, which
 * names both calls and their lines). */
void rendezvous(Stage &s)
{
    const unsigned tid = linear_tid(), lane = tid % 32, base = tid - lane;
    const unsigned next = (lane + 1) % 32;
    const uint64_t got =
        shuffle_for(s.call, SHFL_IDX, 0xffffffffu, s.nonce, (int)next, 32, s.file, s.line);
    char mine[200], msg[560];
    if (stages[base + next].op == nullptr || stages[base + next].nonce != got) {
        tsan_leave(); /* a report: the emulator's own work */
        snprintf(msg, sizeof msg,
                 "wmma::%s: lane %u's slot is not this call's (the emulator's own bookkeeping "
                 "failed: every lane at this rendezvous staged the same call)",
                 s.op, next);
        kernel_fail(s.file, s.line, msg);
    }
    for (unsigned l = 0; l < 32; l++) {
        const Stage &o = stages[base + l];
        if (l == lane || (o.op != nullptr && same_call(o, s)))
            continue;
        tsan_leave(); /* a report: the emulator's own work */
        if (o.op == nullptr)
            snprintf(msg, sizeof msg,
                     "wmma::%s is a warp collective, and lane %u of the warp did not call it: "
                     "all 32 lanes must call it with the same arguments (undefined on a GPU)",
                     s.op, l);
        else {
            char theirs[200];
            describe(s, mine, sizeof mine);
            describe(o, theirs, sizeof theirs);
            snprintf(msg, sizeof msg,
                     "wmma::%s is a warp collective: lane %u calls %s, lane %u calls %s at %s:%d "
                     "(all 32 lanes must make the same call; undefined on a GPU)",
                     s.op, lane, mine, l, theirs, short_file(o.file), o.line);
        }
        kernel_fail(s.file, s.line, msg);
    }
}

/* The second rendezvous: no lane reads the slots any more. */
void leave(Stage &s)
{
    syncwarp_for(s.call, 0xffffffffu, s.file, s.line);
    s.op = nullptr;
}

/* The documented constraints of a load's or store's pointer, ldm and layout. */
void check_memory(const Stage &s, const void *p, unsigned ldm, int layout)
{
    char msg[300];
    if ((layout == 0 || layout == 1) && (uintptr_t)p % 32 == 0 && ldm % 4 == 0)
        return;
    tsan_leave(); /* a report: the emulator's own work */
    if (layout != 0 && layout != 1)
        snprintf(msg, sizeof msg,
                 "wmma::%s: layout %d is neither mem_row_major nor mem_col_major", s.op, layout);
    else if ((uintptr_t)p % 32 != 0)
        snprintf(msg, sizeof msg,
                 "wmma::%s: the pointer %p is not 256-bit (32-byte) aligned, as CUDA requires",
                 s.op, p);
    else
        snprintf(msg, sizeof msg,
                 "wmma::%s: ldm %u is not a multiple of 16 bytes (4 floats), as CUDA requires",
                 s.op, ldm);
    kernel_fail(s.file, s.line, msg);
}

/* A load's or store's call: staged, its memory arguments checked, met by
 * the whole warp (the first rendezvous). */
Stage &enter_memory(const char *op, const char *call, const void *p, unsigned ldm, int layout,
                    int use, int rows, int cols, const char *file, int line)
{
    Stage &s = enter(op, call, file, line);
    s.ptr = p;
    s.ldm = ldm;
    s.layout = layout;
    s.use = use;
    s.rows = rows;
    s.cols = cols;
    check_memory(s, p, ldm, layout);
    rendezvous(s);
    return s;
}

/* Where element pos (row-major in a rows x cols tile) lives in memory. */
inline size_t offset(int pos, int cols, int layout, unsigned ldm)
{
    const size_t r = (size_t)(pos / cols), c = (size_t)(pos % cols);
    return layout == 0 ? r * ldm + c : c * ldm + r;
}

/* The TF32 bits the tensor core reads (Note [Emulated WMMA]). */
inline float tf32_bits(float v)
{
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu) != 0)
        return v; /* a NaN stays one */
    u &= 0xffffe000u;
    memcpy(&v, &u, sizeof u);
    return v;
}
} // namespace

void wmma_load(WmmaUse use, int rows, int cols, int layout, float *x, int n, const float *p,
               unsigned ldm, const char *file, int line)
{
    Stage &s = enter_memory(WMMA_CALL("load_matrix_sync"), p, ldm, layout, use, rows, cols, file,
                            line);
    const int lane = (int)(linear_tid() % 32);
    for (int e = 0; e < n; e++) {
        const float *q = p + offset(wmma_position(use, rows * cols, lane, e), cols, layout, ldm);
        tsan_read(q, sizeof *q); /* this file is the emulator's, uninstrumented (setup.py) */
        x[e] = *q;
    }
    leave(s);
}

void wmma_store(float *p, const float *x, int rows, int cols, int n, unsigned ldm, int layout,
                const char *file, int line)
{
    Stage &s = enter_memory(WMMA_CALL("store_matrix_sync"), p, ldm, layout, WMMA_C, rows, cols,
                            file, line);
    leave(s);
    /* after the warp's last rendezvous: a lane that reads what another lane
     * stored, without a __syncwarp between, reads it before it is written
     * (the lane that resumes first stores and runs on; Note [Emulated WMMA]) */
    const int lane = (int)(linear_tid() % 32);
    for (int e = 0; e < n; e++) {
        float *q = p + offset(wmma_position(WMMA_C, rows * cols, lane, e), cols, layout, ldm);
        tsan_write(q, sizeof *q);
        *q = x[e];
    }
}

void wmma_mma(float *d, const float *a, const float *b, const float *c, int m, int nn, int k,
              bool a_col, bool b_col, const char *file, int line)
{
    const int na = m * k / 32, nb = k * nn / 32, nc = m * nn / 32;
    Stage &s = enter(WMMA_CALL("mma_sync"), file, line);
    if (m != 16 || nn != 16 || k != 8) /* the fragments mma.h defines */
        kernel_fail(file, line, "wmma::mma_sync: only m16n16k8 is emulated");
    s.a_col = a_col;
    s.b_col = b_col;
    s.rows = m;
    s.cols = nn;
    s.use = k; /* the shape's K: must agree too */
    memcpy(s.a, a, sizeof(float) * (size_t)na);
    memcpy(s.b, b, sizeof(float) * (size_t)nb);
    memcpy(s.c, c, sizeof(float) * (size_t)nc);
    rendezvous(s);
    /* the warp's tiles from the staged copies: A (m x k), B (k x nn), C (m x nn) */
    float A[16 * 8], B[8 * 16], C[16 * 16];
    const unsigned tid = linear_tid(), lane = tid % 32, base = tid - lane;
    for (int l = 0; l < 32; l++) {
        const Stage &o = stages[base + (unsigned)l];
        for (int e = 0; e < na; e++)
            A[wmma_position(WMMA_A, m * k, l, e)] = tf32_bits(o.a[e]);
        for (int e = 0; e < nb; e++)
            B[wmma_position(WMMA_B, k * nn, l, e)] = tf32_bits(o.b[e]);
        for (int e = 0; e < nc; e++)
            C[wmma_position(WMMA_C, m * nn, l, e)] = o.c[e];
    }
    for (int e = 0; e < nc; e++) {
        const int pos = wmma_position(WMMA_C, m * nn, (int)lane, e), i = pos / nn, j = pos % nn;
        float acc = C[pos];
        for (int q = 0; q < k; q++)
            acc += A[i * k + q] * B[q * nn + j]; /* the product is exact: no FMA question */
        d[e] = acc;
    }
    leave(s);
}

} // namespace ndl_emu
