/* cuda_matmul.cu: batched C_b = A_b @ B_b, float32 and float64, any strides.
 *
 * Tiles of 64x64 outputs per block of 256 threads, 16 deep along n; each
 * thread keeps a 4x4 block of C in registers: rows ty + 16*i, columns
 * tx + 16*j (ty, tx = tid / 16, tid % 16). Why that interleave: in the inner
 * loop a warp reads Bs[k][tx + 16*j] (16 consecutive words, two rows of
 * threads asking the same ones: no bank conflict) and As[k][ty + 16*i] (two
 * distinct words: broadcast). Tile loads are coalesced along k for A and
 * along columns for B when those are the unit-stride axes; As is stored
 * k-major with a row of AS_LD words, so that the 16 k's x 2 rows a warp
 * stores land in 32 distinct banks (float: 66 words; double: 65). Blocks
 * cover (p/64, m/64, batch) in grid-stride loops, so any size is covered.
 *
 * Note [Batch offsets by value]
 *   The slot gets each batch's offset of A and of B as host arrays. Almost
 *   always they are an arithmetic sequence (a compact batch: a0 + b * m * n;
 *   a broadcast one: a0 every time), so the kernel gets (first, step) by value
 *   and computes them. Only an irregular sequence (batch axes permuted into a
 *   non-uniform order) is copied to a device table, now through the pinned
 *   staging buffer (Note [Staged uploads], cuda_memory.cu) with one
 *   asynchronous copy; a cudaMemcpy from pageable memory would wait for all
 *   earlier work of the stream, draining the GPU's queue once per call.
 *
 * Note [TF32 switch]
 *   float32 products may run on the tensor cores (sm_80+) with TF32 inputs
 *   (10-bit mantissa, float32 accumulation): about 8x the FMA path's
 *   throughput, relative error ~ 2^-11 per product instead of 2^-24. It is
 *   off by default, so results match the CPU's; NEEDLE_CUDA_TF32=1 (read on
 *   the first matmul) or needle._cuda.set_tf32(True) turns it on. float64
 *   never uses it. matmul_tf32_kernel: 64x64 tiles per block of 4 warps,
 *   16 deep; each warp a 32x32 quadrant as 2x2 WMMA m16n16k8 fragments.
 *   Inputs are rounded to TF32 (wmma::__float_to_tf32) as they are stored to
 *   shared memory. Shared-memory layouts (bank = word index mod 32):
 *   - As[64][20]: a warp stores rows i and i + 4 (20 * 4 = 80 = 16 mod 32
 *     words apart), 16 k each: 32 distinct banks. For the fragment loads,
 *     whose lane mapping WMMA leaves unspecified, 20 is the usual choice: with
 *     mma.sync's m16n8k8 layout (lane reads row lane/4, column lane%4) the rows
 *     0..7 start at banks 0, 20, 8, 28, 16, 4, 24, 12: 32 distinct banks.
 *   - Bs[16][72]: a warp stores 32 consecutive columns of one k row; with
 *     mma.sync's B layout (row lane%4, column lane/4) 72 = 8 mod 32 gives
 *     banks 8 (lane%4) + lane/4: 32 distinct.
 *   - Cs[warp][16][20]: the accumulators out through shared memory (any m,
 *     p, alignment), read back as rows r and r + 4 like As, written to C
 *     with bounds checks and coalesced along p.
 *   Without a GPU it runs under the emulator's mma.h (Note [Emulated WMMA],
 *   emu/mma.h; tests/test_cuda_emu_mma.py checks it bit for bit). */
#include <atomic>
#include <stdlib.h>

#include <mma.h> /* the emulator's: emu/mma.h (Note [Emulated WMMA]) */

#include "cuda_common.cuh"

#define BM 64
#define BN 64
#define BK 16

/* Batch b's offset: table[b], or first + b * step (Note [Batch offsets by value]). */
struct BatchOffsets {
    const int64_t *table;
    int64_t first, step;
    __device__ __forceinline__ int64_t at(int64_t b) const
    {
        return table != NULL ? table[b] : first + b * step;
    }
};

template <typename T> struct AsLd { static constexpr int value = BM + 2; };
template <> struct AsLd<double> { static constexpr int value = BM + 1; };

// A_b is (m, n) at a + aoff.at(b) (strides rsa, csa); B_b is (n, p) at b + boff.at(b)
// (strides rsb, csb); C is (batch, m, p) compact
// splits > 1 (Note [Split K]): slice s of n, [s * kchunk, (s + 1) * kchunk),
// summed into c + (s * batch + b) * m * p, a (splits, batch, m, p) workspace
template <typename T>
__global__ void __launch_bounds__(256)
    matmul_kernel(int64_t batch, int64_t m, int64_t n, int64_t p, const T *a,
                  BatchOffsets aoff, int64_t rsa, int64_t csa, const T *b,
                  BatchOffsets boff, int64_t rsb, int64_t csb, T *c, int64_t splits,
                  int64_t kchunk)
{
    constexpr int LD = AsLd<T>::value;
    __shared__ T As[BK][LD];
    __shared__ T Bs[BK][BN];
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int64_t mtiles = (m + BM - 1) / BM;
    for (int64_t z = blockIdx.z; z < batch * splits; z += gridDim.z) {
        const int64_t bz = z % batch, kbeg = z / batch * kchunk;
        const int64_t kend = n - kbeg < kchunk ? n : kbeg + kchunk;
        const T *ab = a + aoff.at(bz), *bb = b + boff.at(bz);
        T *cb = c + z * m * p;
        for (int64_t by = blockIdx.y; by < mtiles; by += gridDim.y) {
            const int64_t row0 = by * BM, col0 = (int64_t)blockIdx.x * BN;
            T acc[4][4] = {};
            for (int64_t k0 = kbeg; k0 < kend; k0 += BK) {
                for (int q = 0; q < BM * BK / 256; q++) {
                    int e = tid + 256 * q, k = e % BK, i = e / BK; /* A: k fastest */
                    int64_t r = row0 + i, kk = k0 + k;
                    As[k][i] = (r < m && kk < kend) ? ab[r * rsa + kk * csa] : (T)0;
                    int j = e % BN, kb = e / BN; /* B: columns fastest */
                    int64_t cj = col0 + j, kr = k0 + kb;
                    Bs[kb][j] = (cj < p && kr < kend) ? bb[kr * rsb + cj * csb] : (T)0;
                }
                __syncthreads();
#pragma unroll
                for (int k = 0; k < BK; k++) {
                    T av[4], bv[4];
#pragma unroll
                    for (int i = 0; i < 4; i++) {
                        av[i] = As[k][ty + 16 * i];
                        bv[i] = Bs[k][tx + 16 * i];
                    }
#pragma unroll
                    for (int i = 0; i < 4; i++)
#pragma unroll
                        for (int j = 0; j < 4; j++)
                            acc[i][j] += av[i] * bv[j];
                }
                __syncthreads();
            }
#pragma unroll
            for (int i = 0; i < 4; i++) {
                int64_t r = row0 + ty + 16 * i;
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    int64_t cj = col0 + tx + 16 * j;
                    if (r < m && cj < p)
                        cb[r * p + cj] = acc[i][j];
                }
            }
        }
    }
}

// ws is (splits, total) compact, c (total): c[i] = ws[0][i] + ws[1][i] + ...,
// in slice order (Note [Split K])
template <typename T>
__global__ void __launch_bounds__(NDL_CU_THREADS)
    split_sum_kernel(int64_t total, int64_t splits, const T *ws, T *c)
{
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
         i += (int64_t)gridDim.x * blockDim.x) {
        T acc = ws[i];
        for (int64_t s = 1; s < splits; s++)
            acc += ws[s * total + i];
        c[i] = acc;
    }
}

/* ---- the TF32 tensor-core path (Note [TF32 switch]) ---------------------- */

#define TM 64
#define TN 64
#define TK 16
#define A_LD 20
#define B_LD 72
#define C_LD 20

static std::atomic<int> tf32_mode{-1}; /* -1: NEEDLE_CUDA_TF32 not read yet */

static int tf32_on(void)
{
    int v = tf32_mode.load(std::memory_order_relaxed);
    if (v < 0) {
        const char *e = getenv("NEEDLE_CUDA_TF32");
        int expect = -1;
        tf32_mode.compare_exchange_strong(expect, e != NULL && e[0] == '1' && e[1] == 0);
        v = tf32_mode.load(std::memory_order_relaxed);
    }
    return v;
}

/* Sets the switch; returns the previous setting. */
extern "C" int ndl_cuda_set_tf32(int on)
{
    int prev = tf32_on();
    tf32_mode.store(on ? 1 : 0, std::memory_order_relaxed);
    return prev;
}
extern "C" int ndl_cuda_tf32(void) { return tf32_on(); }

// A_b is (m, n) at a + aoff.at(b) (strides rsa, csa); B_b is (n, p) at b + boff.at(b)
// (strides rsb, csb); C is (batch, m, p) compact; 128 threads per block
__global__ void __launch_bounds__(128)
    matmul_tf32_kernel(int64_t batch, int64_t m, int64_t n, int64_t p, const float *a,
                       BatchOffsets aoff, int64_t rsa, int64_t csa, const float *b,
                       BatchOffsets boff, int64_t rsb, int64_t csb, float *c)
{
#if (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800) || defined(NDL_CUDA_EMU)
    using namespace nvcuda;
    __shared__ __align__(32) float As[TM * A_LD];
    __shared__ __align__(32) float Bs[TK * B_LD];
    __shared__ __align__(32) float Cs[4][16 * C_LD];
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int wm = warp / 2, wn = warp % 2; /* the warp's 32x32 quadrant */
    const int64_t mtiles = (m + TM - 1) / TM;
    for (int64_t bz = blockIdx.z; bz < batch; bz += gridDim.z) {
        const float *ab = a + aoff.at(bz), *bb = b + boff.at(bz);
        float *cb = c + bz * m * p;
        for (int64_t by = blockIdx.y; by < mtiles; by += gridDim.y) {
            const int64_t row0 = by * TM, col0 = (int64_t)blockIdx.x * TN;
            wmma::fragment<wmma::accumulator, 16, 16, 8, float> acc[2][2];
            for (int i = 0; i < 2; i++)
                for (int j = 0; j < 2; j++)
                    wmma::fill_fragment(acc[i][j], 0.0f);
            for (int64_t k0 = 0; k0 < n; k0 += TK) {
#pragma unroll
                for (int q = 0; q < 8; q++) { /* A: rows i, i + 4 per warp, k fastest */
                    const int pr = warp + 4 * q, i = (pr / 4) * 8 + pr % 4 + 4 * (lane / 16);
                    const int k = lane % 16;
                    const int64_t r = row0 + i, kk = k0 + k;
                    As[i * A_LD + k] =
                        wmma::__float_to_tf32(r < m && kk < n ? ab[r * rsa + kk * csa] : 0.0f);
                }
#pragma unroll
                for (int q = 0; q < 8; q++) { /* B: columns fastest */
                    const int e = tid + 128 * q, j = e % TN, kb = e / TN;
                    const int64_t cj = col0 + j, kr = k0 + kb;
                    Bs[kb * B_LD + j] =
                        wmma::__float_to_tf32(cj < p && kr < n ? bb[kr * rsb + cj * csb] : 0.0f);
                }
                __syncthreads();
#pragma unroll
                for (int kk = 0; kk < TK; kk += 8) {
                    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32,
                                   wmma::row_major> fa[2];
                    wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32,
                                   wmma::row_major> fb[2];
                    for (int i = 0; i < 2; i++)
                        wmma::load_matrix_sync(fa[i], As + (wm * 32 + i * 16) * A_LD + kk, A_LD);
                    for (int j = 0; j < 2; j++)
                        wmma::load_matrix_sync(fb[j], Bs + kk * B_LD + wn * 32 + j * 16, B_LD);
                    for (int i = 0; i < 2; i++)
                        for (int j = 0; j < 2; j++)
                            wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
                }
                __syncthreads();
            }
            for (int i = 0; i < 2; i++)
                for (int j = 0; j < 2; j++) {
                    wmma::store_matrix_sync(Cs[warp], acc[i][j], C_LD, wmma::mem_row_major);
                    __syncwarp();
                    for (int t = 0; t < 8; t++) { /* rows rr, rr + 4: as A's stores */
                        const int rr = (t / 4) * 8 + t % 4 + 4 * (lane / 16), cc = lane % 16;
                        const int64_t r = row0 + wm * 32 + i * 16 + rr;
                        const int64_t cj = col0 + wn * 32 + j * 16 + cc;
                        if (r < m && cj < p)
                            cb[r * p + cj] = Cs[warp][rr * C_LD + cc];
                    }
                    __syncwarp(); /* Cs[warp] is rewritten by the next fragment */
                }
        }
    }
#endif
}

/* Note [Split K]
 *   A product with few output tiles and a long n, such as a weight gradient
 *   (X^T @ G summed over every row of a batch: a conv's (147, 16) from 4096
 *   rows), runs on a handful of blocks, each looping over all of n while
 *   the rest of the GPU idles. Such a product is cut along n into `splits`
 *   slices of at least SPLIT_MIN_K, enough for about SPLIT_BLOCKS blocks in
 *   all: each block sums its tile over one slice into a workspace, then
 *   split_sum_kernel adds the slices in order. The split depends on the
 *   shapes alone, never on the GPU, so the same product gives the same bits
 *   on every device. */
#define SPLIT_BLOCKS 256
#define SPLIT_MIN_K 512
#define SPLIT_MAX 16

static int64_t split_count(int64_t tiles, int64_t n)
{
    int64_t s = (SPLIT_BLOCKS + tiles - 1) / tiles, by_k = n / SPLIT_MIN_K;
    s = s < by_k ? s : by_k;
    s = s < SPLIT_MAX ? s : SPLIT_MAX;
    return s > 1 ? s : 1;
}

/* 1 with *o = (first, step) when the host array offs (batch > 0) is
 * first + b * step; else 0 (Note [Batch offsets by value]). */
static int by_value(const int64_t *offs, int64_t batch, BatchOffsets *o)
{
    o->table = NULL;
    o->first = offs[0];
    o->step = batch > 1 ? offs[1] - offs[0] : 0;
    for (int64_t b = 2; b < batch; b++)
        if (offs[b] - offs[b - 1] != o->step)
            return 0;
    return 1;
}

int ndl_cuda_matmul(ndl_dtype dt, int64_t batch, int64_t m, int64_t n, int64_t p, const void *a,
                    const int64_t *a_offsets, int64_t rsa, int64_t csa, const void *b,
                    const int64_t *b_offsets, int64_t rsb, int64_t csb, void *c)
{
    size_t isz = dt == NDL_FLOAT64 ? 8 : 4, obytes = (size_t)batch * 2 * sizeof(int64_t);
    int64_t ptiles = (p + BN - 1) / BN, mtiles = (m + BM - 1) / BM;
    int64_t *offs = NULL;
    BatchOffsets ao, bo;
    int st = NDL_OK;
    if (batch < 0 || m < 0 || n < 0 || p < 0 || ptiles > 0x7fffffff)
        return NDL_EINVAL;
    if (batch == 0 || m == 0 || p == 0)
        return NDL_OK;
    if (n == 0) {
        NDL_CUDA_TRY(cudaMemset(c, 0, (size_t)batch * m * p * isz));
        return NDL_OK;
    }
    if (!by_value(a_offsets, batch, &ao) || !by_value(b_offsets, batch, &bo)) {
        /* NOTE: the offsets are host arrays; one device buffer carries both. */
        offs = (int64_t *)ndl_cuda_alloc(obytes);
        if (offs == NULL)
            return NDL_ENOMEM_DEVICE;
        /* one asynchronous copy of both (Note [Staged uploads], cuda_memory.cu) */
        st = ndl_cuda_upload(offs, a_offsets, obytes / 2, b_offsets, obytes / 2);
        ao = BatchOffsets{offs, 0, 0};
        bo = BatchOffsets{offs + batch, 0, 0};
    }
    const int tf32 = dt == NDL_FLOAT32 && tf32_on();
    const int64_t splits = tf32 ? 1 : split_count(batch * mtiles * ptiles, n);
    const int64_t kchunk = (n + splits - 1) / splits;
    void *ws = NULL; /* Note [Split K]: the slices' sums, (splits, batch, m, p) */
    if (st == NDL_OK && splits > 1 &&
        (ws = ndl_cuda_alloc((size_t)splits * batch * m * p * isz)) == NULL)
        st = NDL_ENOMEM_DEVICE;
    if (st == NDL_OK) {
        const dim3 grid((unsigned)ptiles, ndl_cu_grid(mtiles, 65535),
                        ndl_cu_grid(batch * splits, 65535));
        void *out = splits > 1 ? ws : c;
        if (tf32)
            NDL_LAUNCH(grid, 128, matmul_tf32_kernel)(
                batch, m, n, p, (const float *)a, ao, rsa, csa, (const float *)b, bo, rsb, csb,
                (float *)c);
        else
            NDL_CU_DTYPE(dt, T,
                         NDL_LAUNCH(grid, 256, matmul_kernel<T>)(
                             batch, m, n, p, (const T *)a, ao, rsa, csa, (const T *)b, bo, rsb,
                             csb, (T *)out, splits, kchunk));
        st = NDL_CUDA_LAUNCH_STATUS("matmul_kernel<<<...>>>");
    }
    if (st == NDL_OK && splits > 1) {
        NDL_CU_DTYPE(dt, T,
                     NDL_LAUNCH(ndl_cu_blocks(batch * m * p), NDL_CU_THREADS,
                                split_sum_kernel<T>)(batch * m * p, splits, (const T *)ws,
                                                     (T *)c));
        st = NDL_CUDA_LAUNCH_STATUS("split_sum_kernel<<<...>>>");
    }
    if (ws != NULL)
        ndl_cuda_free(ws); /* stream-ordered, as offs */
    if (offs != NULL)
        ndl_cuda_free(offs); /* stream-ordered: the next user runs after this kernel */
    return st;
}
