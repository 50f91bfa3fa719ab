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
 * cover (p/64, m/64, batch) in grid-stride loops, so any size is covered. */
#include "cuda_common.cuh"

#define BM 64
#define BN 64
#define BK 16

template <typename T> struct AsLd { static constexpr int value = BM + 2; };
template <> struct AsLd<double> { static constexpr int value = BM + 1; };

// A_b is (m, n) at a + aoff[b] (strides rsa, csa); B_b is (n, p) at b + boff[b]
// (strides rsb, csb); C is (batch, m, p) compact
template <typename T>
__global__ void __launch_bounds__(256)
    matmul_kernel(int64_t batch, int64_t m, int64_t n, int64_t p, const T *a,
                  const int64_t *aoff, int64_t rsa, int64_t csa, const T *b,
                  const int64_t *boff, int64_t rsb, int64_t csb, T *c)
{
    constexpr int LD = AsLd<T>::value;
    __shared__ T As[BK][LD];
    __shared__ T Bs[BK][BN];
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int64_t mtiles = (m + BM - 1) / BM;
    for (int64_t bz = blockIdx.z; bz < batch; bz += gridDim.z) {
        const T *ab = a + aoff[bz], *bb = b + boff[bz];
        T *cb = c + bz * m * p;
        for (int64_t by = blockIdx.y; by < mtiles; by += gridDim.y) {
            const int64_t row0 = by * BM, col0 = (int64_t)blockIdx.x * BN;
            T acc[4][4] = {};
            for (int64_t k0 = 0; k0 < n; k0 += BK) {
                for (int q = 0; q < BM * BK / 256; q++) {
                    int e = tid + 256 * q, k = e % BK, i = e / BK; /* A: k fastest */
                    int64_t r = row0 + i, kk = k0 + k;
                    As[k][i] = (r < m && kk < n) ? ab[r * rsa + kk * csa] : (T)0;
                    int j = e % BN, kb = e / BN; /* B: columns fastest */
                    int64_t cj = col0 + j, kr = k0 + kb;
                    Bs[kb][j] = (cj < p && kr < n) ? bb[kr * rsb + cj * csb] : (T)0;
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

int ndl_cuda_matmul(ndl_dtype dt, int64_t batch, int64_t m, int64_t n, int64_t p, const void *a,
                    const int64_t *a_offsets, int64_t rsa, int64_t csa, const void *b,
                    const int64_t *b_offsets, int64_t rsb, int64_t csb, void *c)
{
    size_t isz = dt == NDL_FLOAT64 ? 8 : 4, obytes = (size_t)batch * 2 * sizeof(int64_t);
    int64_t ptiles = (p + BN - 1) / BN, mtiles = (m + BM - 1) / BM;
    int64_t *offs;
    int st = NDL_OK;
    if (batch < 0 || m < 0 || n < 0 || p < 0 || ptiles > 0x7fffffff)
        return NDL_EINVAL;
    if (batch == 0 || m == 0 || p == 0)
        return NDL_OK;
    if (n == 0) {
        NDL_CUDA_TRY(cudaMemset(c, 0, (size_t)batch * m * p * isz));
        return NDL_OK;
    }
    offs = (int64_t *)ndl_cuda_alloc(obytes);
    if (offs == NULL)
        return NDL_ENOMEM;
    /* NOTE: the offsets are host arrays; one buffer carries both. */
    st = ndl_cuda_from_host(offs, a_offsets, obytes / 2);
    if (st == NDL_OK)
        st = ndl_cuda_from_host(offs + batch, b_offsets, obytes / 2);
    if (st == NDL_OK) {
        dim3 grid((unsigned)ptiles, (unsigned)(mtiles < 65535 ? mtiles : 65535),
                  (unsigned)(batch < 65535 ? batch : 65535));
        if (dt == NDL_FLOAT64)
            matmul_kernel<double><<<grid, 256>>>(batch, m, n, p, (const double *)a, offs, rsa,
                                                 csa, (const double *)b, offs + batch, rsb, csb,
                                                 (double *)c);
        else
            matmul_kernel<float><<<grid, 256>>>(batch, m, n, p, (const float *)a, offs, rsa, csa,
                                                (const float *)b, offs + batch, rsb, csb,
                                                (float *)c);
        cudaError_t err = cudaGetLastError();
        if (err != cudaSuccess)
            st = ndl_cuda_fail(err, __FILE__, __LINE__, "matmul_kernel<<<...>>>");
    }
    ndl_cuda_free(offs); /* stream-ordered: the next user runs after this kernel */
    return st;
}
