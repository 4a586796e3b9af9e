/* qgemm_gpu.cu - the grouped dequantize-GEMM kernels (tensor-core and CUDA-core paths) and their host side
 * (contract in qgemm_gpu.h; the CPU definition of every number is src/qgemm.c and src/quant.c). */
#include "qgemm_gpu.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <vector>

#include "cuda_check.h"
#include "gpu_info.h"

#define LBL(label) ((label) ? (label) : "qgemm (GPU)")

namespace
{

/* ---- descriptors ---------------------------------------------------------------------------------
 * One per item of a launch, in device memory. Blocks are mapped onto items by tile0 (the item's first
 * block index; items without rows are left out on the host, so tile0 strictly increases). */
struct Desc {
    const uint32_t *qw;     /* [m, wpr] packed codes */
    const uint16_t *scales; /* [m, ngroups] fp16 (NULL for fp16 blocks) */
    const uint16_t *zeros;  /* [m, ngroups] fp16 integers; NULL: symmetric, zero = 2^(bits-1) */
    const void *x;          /* token matrix, row 0 */
    void *y;                /* output matrix, row 0 */
    long long x0, y0;       /* the item's first row in X and in Y */
    long long ldx, ldy;
    int rows, m, n, wpr, ngroups, group, bits, act_bits;
    int ytype, accumulate;
    int xvec; /* tensor-core path: X rows may be copied 16 bytes at a time (aligned base, ldx % 8 == 0) */
    int wvec; /* tensor-core path: packed words per asynchronous copy (4, 2 or 1) */
    int tiles_m, tile0;
};

enum { XK_F32 = MP_QG_F32, XK_F16 = MP_QG_F16, XK_BF16 = MP_QG_BF16 };

__device__ __forceinline__ float f16_bits_to_float(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ float bf16_bits_to_float(uint16_t h) { return __uint_as_float((uint32_t)h << 16); }

template <int XK> __device__ __forceinline__ float x_load(const void *x, long long i)
{
    if constexpr (XK == XK_F16)
        return f16_bits_to_float(((const uint16_t *)x)[i]);
    else if constexpr (XK == XK_BF16)
        return bf16_bits_to_float(((const uint16_t *)x)[i]);
    else
        return ((const float *)x)[i];
}

/* round-to-nearest-even conversion of a float to the 16-bit input type (exact for the integers used) */
template <int XK> __device__ __forceinline__ uint16_t to_bits(float v)
{
    if constexpr (XK == XK_BF16)
        return __bfloat16_as_ushort(__float2bfloat16_rn(v));
    else
        return __half_as_ushort(__float2half_rn(v));
}

/* two floats (exact in the 16-bit type) as the pair register of an mma operand: lo in bits 0..15 */
template <int XK> __device__ __forceinline__ uint32_t pack2(float lo, float hi)
{
    return (uint32_t)to_bits<XK>(lo) | ((uint32_t)to_bits<XK>(hi) << 16);
}

/* Y[y0 + row, col] (=|+=) v, rounded to nearest even for 16-bit outputs */
__device__ __forceinline__ void y_store(const Desc &d, long long row, int col, float v)
{
    const long long i = (d.y0 + row) * d.ldy + col;
    if (d.ytype == MP_QG_F16) {
        __half *p = (__half *)d.y + i;
        if (d.accumulate)
            v += __half2float(*p);
        *p = __float2half_rn(v);
    } else if (d.ytype == MP_QG_BF16) {
        __nv_bfloat16 *p = (__nv_bfloat16 *)d.y + i;
        if (d.accumulate)
            v += __bfloat162float(*p);
        *p = __float2bfloat16_rn(v);
    } else {
        float *p = (float *)d.y + i;
        if (d.accumulate)
            v += *p;
        *p = v;
    }
}

__device__ __forceinline__ int find_item(const Desc *descs, int count, int b)
{
    int lo = 0, hi = count - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (descs[mid].tile0 <= b)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* Activation formats: s_act[r] = absmax(row r of X, first n values) / ((2^bits - 1) / 2), the scale of
 * mp_quant_act (0 for rows past the item). One warp per row; max is exact in any order. */
template <int XK, int BM, int THREADS>
__device__ void act_scales(const Desc &d, long long row_base, int rows_here, float *s_act)
{
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const float qhalf = (float)((1 << d.act_bits) - 1) / 2.0f;
    for (int r = warp; r < BM; r += THREADS / 32) {
        float amax = 0.0f;
        if (r < rows_here) {
            const long long base = (d.x0 + row_base + r) * d.ldx;
            for (int k = lane; k < d.n; k += 32)
                amax = fmaxf(amax, fabsf(x_load<XK>(d.x, base + k)));
        }
        for (int o = 16; o > 0; o >>= 1)
            amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        if (lane == 0)
            s_act[r] = amax / qhalf;
    }
}

/* the integer of x on the per-token grid of scale s (mp_quant_act: rint(clamp(x / s, -half, half - 1))) */
__device__ __forceinline__ float act_code(float x, float s, int bits)
{
    const float half = (float)(1 << (bits - 1));
    if (s == 0.0f)
        return 0.0f;
    return rintf(fminf(fmaxf(x / s, -half), half - 1.0f));
}

/* ---- CUDA-core path --------------------------------------------------------------------------------
 * Tile 32 tokens x 64 outputs, 128 threads with 4 x 4 outputs each, k-steps of 32. X and the weights are
 * staged in shared memory as fp32: weights dequantized element by element exactly as mp_qtensor_dequant,
 * activation-format rows quantized exactly as mp_quant_act (value rint(.) * s). */
constexpr int S_BM = 32, S_BN = 64, S_KS = 32, S_THREADS = 128;

__device__ __forceinline__ float dequant_at(const Desc &d, int row, int col)
{
    const uint32_t *w = d.qw + (size_t)row * d.wpr;
    const long long p = (long long)col * d.bits;
    const int k = (int)(p >> 5), sh = (int)(p & 31);
    uint64_t x = w[k] >> sh;
    if (sh + d.bits > 32)
        x |= (uint64_t)w[k + 1] << (32 - sh);
    const uint32_t code = (uint32_t)(x & ((1u << d.bits) - 1u));
    if (d.bits == 16)
        return f16_bits_to_float((uint16_t)code);
    const int gi = col / d.group;
    const float s = f16_bits_to_float(d.scales[(size_t)row * d.ngroups + gi]);
    const int z = d.zeros ? (int)f16_bits_to_float(d.zeros[(size_t)row * d.ngroups + gi]) : (1 << (d.bits - 1));
    return (float)((int)code - z) * s;
}

template <int XK> __global__ void __launch_bounds__(S_THREADS) qgemm_simt(const Desc *__restrict__ descs, int count)
{
    __shared__ float sx[S_KS][S_BM + 4]; /* [k][token] */
    __shared__ float sw[S_KS][S_BN + 4]; /* [k][output] */
    __shared__ float s_act[S_BM];
    const Desc d = descs[find_item(descs, count, blockIdx.x)];
    const int tile = blockIdx.x - d.tile0, tm = tile % d.tiles_m, tn = tile / d.tiles_m;
    const long long row_base = (long long)tm * S_BM;
    const int col_base = tn * S_BN;
    const int rows_here = min(S_BM, (int)(d.rows - row_base));
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    if (d.act_bits) {
        act_scales<XK, S_BM, S_THREADS>(d, row_base, rows_here, s_act);
        __syncthreads();
    }
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
            acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < d.n; k0 += S_KS) {
        for (int i = tid; i < S_BM * S_KS; i += S_THREADS) {
            const int r = i / S_KS, k = i % S_KS;
            float v = 0.0f;
            if (r < rows_here && k0 + k < d.n) {
                v = x_load<XK>(d.x, (d.x0 + row_base + r) * d.ldx + k0 + k);
                if (d.act_bits)
                    v = act_code(v, s_act[r], d.act_bits) * s_act[r];
            }
            sx[k][r] = v;
        }
        for (int i = tid; i < S_BN * S_KS; i += S_THREADS) {
            const int c = i / S_KS, k = i % S_KS;
            sw[k][c] = (col_base + c < d.m && k0 + k < d.n) ? dequant_at(d, col_base + c, k0 + k) : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < S_KS; k++) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                a[i] = sx[k][ty * 4 + i];
                b[i] = sw[k][tx * 4 + i];
            }
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++)
                    acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int r = ty * 4 + i, c = col_base + tx * 4 + j;
            if (r < rows_here && c < d.m)
                y_store(d, row_base + r, c, acc[i][j]);
        }
}

/* ---- tensor-core path -------------------------------------------------------------------------------
 * A block computes BM tokens x BN outputs of one item; WARPS_M x WARPS_N warps, each MT m16 tiles x NT n8
 * tiles. K advances in chunks of KC = 64 codes through a STAGES-deep cp.async pipeline: per stage the
 * X chunk [BM, 64] (16-bit values, zero past n and past the item's rows) and the packed words of the
 * chunk for the BN weight rows (2 b words per row: 64 b bits, so every chunk starts on a word; zero
 * past the row's words and past m). KC divides every group width this path accepts, so a chunk lies in
 * one group.
 *
 * Fragments. mma.m16n8k16 sums A[r][s] B[s][c] over 16 slots s; lane (g = lane / 4, t = lane % 4) holds
 * A rows g and g + 8 and B column g at slots {2t, 2t+1} (registers a0/a1, b0) and {2t+8, 2t+9} (a2/a3,
 * b1). Any bijection from slots to k gives the same sum when A and B use it alike; here k-step j of a
 * chunk gives lane t the chunk columns 16t + 4j + {0, 1} and 16t + 4j + {2, 3}. So over a chunk a lane
 * needs the 16 consecutive columns [16t, 16t + 16): two 16-byte shared loads per X row, and 16
 * consecutive codes (16 b bits, word aligned except the 3-bit stream) per weight row.
 *
 * Values. A code c becomes c - zero exactly: float(2^23 + c) - (2^23 + zero), then the 16-bit type
 * (|c - zero| <= 255 is exact in fp16 and bf16). The mma sums (c - zero) x in fp32; each group's partial
 * sum is multiplied by the group's fp16 scale (per output) once the group is done (per-channel blocks:
 * once at the end). fp16 blocks use their half values (fp16 X only). Activation formats: the X chunk is
 * replaced in shared memory by its integers rint(clamp(x / s)), exact in 16 bits, and the result is
 * multiplied by the token's scale s. */
constexpr int KC = 64;

template <int BM_, int BN_, int WARPS_M_, int WARPS_N_, int STAGES_> struct MmaCfg {
    static constexpr int BM = BM_, BN = BN_, WARPS_M = WARPS_M_, WARPS_N = WARPS_N_, STAGES = STAGES_;
    static constexpr int THREADS = 32 * WARPS_M * WARPS_N;
    static constexpr int MIN_BLOCKS = THREADS == 128 ? 4 : 2; /* resident blocks per SM: at most 128 registers */
    static constexpr int MT = BM / (16 * WARPS_M), NT = BN / (8 * WARPS_N);
    static constexpr int XP = KC + 8;           /* 16-bit values per X row in a stage (16 bytes of padding) */
    static constexpr int X_BYTES = BM * XP * 2; /* X part of a stage; a multiple of 16 */
    static_assert(MT * 16 * WARPS_M == BM && NT * 8 * WARPS_N == BN, "tile shape");
};
using CfgSmall = MmaCfg<16, 128, 1, 4, 4>; /* few tokens per expert: stream the weights */
using CfgLarge = MmaCfg<64, 64, 2, 4, 4>;  /* many tokens per expert: reuse the dequantized codes */

/* packed words per weight row in a stage: 2 b for the chunk, fp16 padded against bank conflicts */
__host__ __device__ constexpr int w_pitch(int bits) { return bits == 16 ? 36 : 2 * bits; }

/* Under MP_QGEMM_EMULATE (tests/cuda_emu.h) the four instructions below and the launches run on a CPU
 * emulator of their documented semantics; the kernels are otherwise the same code. */
#ifdef MP_QGEMM_EMULATE
template <int BYTES> __device__ __forceinline__ void cp_async(void *smem, const void *gmem, int src_bytes)
{
    emu::cp_async(smem, gmem, BYTES, src_bytes);
}
__device__ __forceinline__ void cp_async_commit() { emu::cp_async_commit(); }
template <int N> __device__ __forceinline__ void cp_async_wait() { emu::cp_async_wait(N); }
template <int XK> __device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], const uint32_t b[2])
{
    emu::mma(c, a, b, XK == XK_BF16);
}
#define MP_DYNAMIC_SMEM(name) uint8_t *name = emu::g_smem
#define MP_LAUNCH(kernel, grid, block, smem, stream, ...)                                                              \
    ((void)(stream), emu::launch((const void *)kernel, (grid), (block), (smem), [=] { kernel(__VA_ARGS__); }))
#else
template <int BYTES> __device__ __forceinline__ void cp_async(void *smem, const void *gmem, int src_bytes)
{
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    if constexpr (BYTES == 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(src_bytes) : "memory");
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(s), "l"(gmem), "n"(BYTES), "r"(src_bytes)
                     : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait()
{
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

template <int XK> __device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], const uint32_t b[2])
{
    if constexpr (XK == XK_BF16)
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                     "{%0,%1,%2,%3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
#define MP_DYNAMIC_SMEM(name) extern __shared__ __align__(16) uint8_t name[]
#define MP_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
#endif

/* codes [16t, 16t + 16) of a chunk row (64 codes in 2 BITS words): code i of the chunk at bits
 * [BITS i, BITS i + BITS) of the words, LSB first - for lane t the bits start at 16 BITS t */
template <int BITS> __device__ __forceinline__ void chunk_codes(const uint32_t *wr, int t, uint32_t c[16])
{
    if constexpr (BITS == 2) {
        const uint32_t w = wr[t];
#pragma unroll
        for (int i = 0; i < 16; i++)
            c[i] = (w >> (2 * i)) & 3u;
    } else if constexpr (BITS == 3) { /* bit 48 t: word 3t/2, shift 16 (t odd); 48 bits fit 64 - 16 */
        const int wb = (3 * t) >> 1, sh = (t & 1) * 16;
        const uint64_t v = ((((uint64_t)wr[wb + 1]) << 32) | wr[wb]) >> sh;
#pragma unroll
        for (int i = 0; i < 16; i++)
            c[i] = (uint32_t)(v >> (3 * i)) & 7u;
    } else if constexpr (BITS == 4) {
#pragma unroll
        for (int q = 0; q < 2; q++) {
            const uint32_t w = wr[2 * t + q];
#pragma unroll
            for (int i = 0; i < 8; i++)
                c[8 * q + i] = (w >> (4 * i)) & 15u;
        }
    } else {
        static_assert(BITS == 8, "2, 3, 4 or 8 bits");
#pragma unroll
        for (int q = 0; q < 4; q++) {
            const uint32_t w = wr[4 * t + q];
#pragma unroll
            for (int i = 0; i < 4; i++)
                c[4 * q + i] = (w >> (8 * i)) & 255u;
        }
    }
}

/* B fragments of one n8 tile for the 4 k-steps of a chunk: b[j] = columns 16t + 4j + {0,1} | {2,3} of
 * weight row wr (zf = 2^23 + zero of the row's group) */
template <int XK, int BITS>
__device__ __forceinline__ void b_frags(const uint32_t *wr, int t, float zf, uint32_t b[4][2])
{
    if constexpr (BITS == 16) { /* word q of the lane's 8 holds the halves of columns 16t + 2q, + 1 */
#pragma unroll
        for (int j = 0; j < 4; j++) {
            b[j][0] = wr[8 * t + 2 * j];
            b[j][1] = wr[8 * t + 2 * j + 1];
        }
    } else {
        uint32_t c[16];
        chunk_codes<BITS>(wr, t, c);
        float v[16];
#pragma unroll
        for (int i = 0; i < 16; i++)
            v[i] = __uint_as_float(0x4B000000u | c[i]) - zf; /* (2^23 + c) - (2^23 + zero) = c - zero */
#pragma unroll
        for (int j = 0; j < 4; j++) {
            b[j][0] = pack2<XK>(v[4 * j], v[4 * j + 1]);
            b[j][1] = pack2<XK>(v[4 * j + 2], v[4 * j + 3]);
        }
    }
}

template <class C, int XK, int BITS>
__device__ __forceinline__ void mma_tile(const Desc &d, long long row_base, int col_base, int rows_here,
                                         int stage_bytes, uint8_t *smem, const float *s_act, float *s_par)
{
    constexpr int WPC = 2 * BITS, PITCH = w_pitch(BITS), XP = C::XP, MT = C::MT, NT = C::NT, ST = C::STAGES;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t = lane & 3;
    const int warp_m = warp / C::WARPS_N, warp_n = warp % C::WARPS_N;
    const int nchunks = (d.n + KC - 1) / KC;
    const uint16_t *xg = (const uint16_t *)d.x;

    auto load_stage = [&](int s, int kc) {
        uint16_t *sx = (uint16_t *)(smem + s * stage_bytes);
        uint32_t *sw = (uint32_t *)(smem + s * stage_bytes + C::X_BYTES);
        const int k0 = kc * KC;
        for (int v = tid; v < C::BM * (KC / 8); v += C::THREADS) {
            const int r = v / (KC / 8), c8 = v % (KC / 8), k = k0 + 8 * c8;
            uint16_t *dst = sx + r * XP + 8 * c8;
            const bool row_ok = r < rows_here;
            const long long at = (d.x0 + row_base + r) * d.ldx + k;
            if (d.xvec) {
                const int valid = row_ok ? max(0, min(8, d.n - k)) : 0;
                cp_async<16>(dst, valid ? (const void *)(xg + at) : d.x, 2 * valid);
            } else {
#pragma unroll
                for (int e = 0; e < 8; e++)
                    dst[e] = (row_ok && k + e < d.n) ? xg[at + e] : (uint16_t)0;
            }
        }
        const int nv = WPC / d.wvec; /* copies per weight row */
        for (int v = tid; v < C::BN * nv; v += C::THREADS) {
            const int r = v / nv, c = v % nv, word = kc * WPC + c * d.wvec;
            const bool ok = col_base + r < d.m && word < d.wpr; /* wvec divides wpr and WPC: all or none */
            uint32_t *dst = sw + r * PITCH + c * d.wvec;
            const uint32_t *src = ok ? d.qw + (size_t)(col_base + r) * d.wpr + word : d.qw;
            if (d.wvec == 4)
                cp_async<16>(dst, src, ok ? 16 : 0);
            else if (d.wvec == 2)
                cp_async<8>(dst, src, ok ? 8 : 0);
            else
                cp_async<4>(dst, src, ok ? 4 : 0);
        }
    };

    auto act_stage = [&](int s) { /* X chunk -> its per-token integers, in place */
                                  uint16_t *sx = (uint16_t *)(smem + s * stage_bytes);
                                  for (int i = tid; i < C::BM * KC; i += C::THREADS) {
                                      const int r = i / KC, k = i % KC;
                                      uint16_t *p = sx + r * XP + k;
                                      const float x = XK == XK_BF16 ? bf16_bits_to_float(*p) : f16_bits_to_float(*p);
                                      *p = to_bits<XK>(act_code(x, s_act[r], d.act_bits));
                                  }
    };

    /* Group parameters through shared memory, double-buffered by chunk parity: thread tid < BN fetches the
     * scale and 2^23 + zero of weight row col_base + tid for chunk kc + 1 while chunk kc computes and
     * stores them after it (the stage barriers order the writes against the reads of chunk kc - 1). */
    float *s_scale = s_par, *s_zero = s_par + 2 * C::BN; /* [2][BN] each */
    const bool fold_each = d.ngroups > 1;                /* else one group: scale once at the end */
    auto param_load = [&](int kc, float &sc, float &zf) {
        const int row = col_base + tid;
        sc = 1.0f;
        zf = 8388608.0f;
        if (BITS < 16 && row < d.m) {
            const int gi = fold_each ? kc * KC / d.group : 0;
            sc = f16_bits_to_float(d.scales[(size_t)row * d.ngroups + gi]);
            zf += d.zeros ? f16_bits_to_float(d.zeros[(size_t)row * d.ngroups + gi]) : (float)(1 << (BITS - 1));
        }
    };

    float acc[MT][NT][4], part[MT][NT][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                acc[mt][nt][e] = part[mt][nt][e] = 0.0f;
    const int group_chunks = fold_each ? d.group / KC : nchunks;
    if (tid < C::BN) {
        float sc, zf;
        param_load(0, sc, zf);
        s_scale[tid] = sc;
        s_zero[tid] = zf;
    }

    for (int kc = 0; kc < ST - 1; kc++) {
        if (kc < nchunks)
            load_stage(kc, kc);
        cp_async_commit();
    }
    for (int kc = 0; kc < nchunks; kc++) {
        cp_async_wait<ST - 2>(); /* this thread's copies of chunk kc have landed ... */
        __syncthreads();         /* ... and everyone's; every warp is done with chunk kc - 1 */
        const int s = kc % ST;
        if (d.act_bits) {
            act_stage(s);
            __syncthreads();
        }
        if (kc + ST - 1 < nchunks) /* into the stage of chunk kc - 1 */
            load_stage((kc + ST - 1) % ST, kc + ST - 1);
        cp_async_commit();
        const bool group_ends = fold_each && (kc + 1 == nchunks || (kc + 1) % group_chunks == 0);
        const bool fetch = tid < C::BN && kc + 1 < nchunks;
        float sc_next = 1.0f, zf_next = 0.0f;
        if (fetch) /* in flight while this chunk computes */
            param_load(kc + 1, sc_next, zf_next);
        const float *zero_now = s_zero + (kc & 1) * C::BN, *scale_now = s_scale + (kc & 1) * C::BN;

        const uint16_t *sx = (const uint16_t *)(smem + s * stage_bytes);
        const uint32_t *sw = (const uint32_t *)(smem + s * stage_bytes + C::X_BYTES);
        uint32_t a[MT][4][4];
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            const uint16_t *p0 = sx + (warp_m * MT * 16 + mt * 16 + g) * XP + 16 * t, *p1 = p0 + 8 * XP;
            const uint4 l0 = *(const uint4 *)p0, h0 = *(const uint4 *)(p0 + 8);
            const uint4 l1 = *(const uint4 *)p1, h1 = *(const uint4 *)(p1 + 8);
            /* word w of l/h holds columns 16t + 2w, + 1 (l) and 16t + 8 + 2w, + 1 (h) */
            a[mt][0][0] = l0.x, a[mt][0][1] = l1.x, a[mt][0][2] = l0.y, a[mt][0][3] = l1.y;
            a[mt][1][0] = l0.z, a[mt][1][1] = l1.z, a[mt][1][2] = l0.w, a[mt][1][3] = l1.w;
            a[mt][2][0] = h0.x, a[mt][2][1] = h1.x, a[mt][2][2] = h0.y, a[mt][2][3] = h1.y;
            a[mt][3][0] = h0.z, a[mt][3][1] = h1.z, a[mt][3][2] = h0.w, a[mt][3][3] = h1.w;
        }
#pragma unroll
        for (int nt = 0; nt < NT; nt++) {
            uint32_t b[4][2];
            const int wrow = warp_n * NT * 8 + nt * 8 + g; /* B column g of the tile: a weight row */
            b_frags<XK, BITS>(sw + wrow * PITCH, t, zero_now[wrow], b);
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int j = 0; j < 4; j++)
                    mma16816<XK>(part[mt][nt], a[mt][j], b[j]);
        }
        if (group_ends) {
#pragma unroll
            for (int nt = 0; nt < NT; nt++) {
                const float2 sc = *(const float2 *)(scale_now + warp_n * NT * 8 + nt * 8 + 2 * t);
#pragma unroll
                for (int mt = 0; mt < MT; mt++)
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        acc[mt][nt][e] = fmaf(e & 1 ? sc.y : sc.x, part[mt][nt][e], acc[mt][nt][e]);
                        part[mt][nt][e] = 0.0f;
                    }
            }
        }
        if (fetch) {
            s_scale[((kc + 1) & 1) * C::BN + tid] = sc_next;
            s_zero[((kc + 1) & 1) * C::BN + tid] = zf_next;
        }
    }
    cp_async_wait<0>();

    /* C fragment: e = 0, 1 at row g, columns 2t, 2t + 1; e = 2, 3 at row g + 8 */
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int nt = 0; nt < NT; nt++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int rl = warp_m * MT * 16 + mt * 16 + g + 8 * (e >> 1);
                const int col = col_base + warp_n * NT * 8 + nt * 8 + 2 * t + (e & 1);
                if (rl < rows_here && col < d.m) { /* one group: its scale is in both buffers' last */
                    float v = fold_each ? acc[mt][nt][e]
                                        : s_scale[((nchunks - 1) & 1) * C::BN + col - col_base] * part[mt][nt][e];
                    if (d.act_bits)
                        v *= s_act[rl];
                    y_store(d, row_base + rl, col, v);
                }
            }
}

template <class C, int XK>
__global__ void __launch_bounds__(C::THREADS, C::MIN_BLOCKS)
    qgemm_mma(const Desc *__restrict__ descs, int count, int stage_bytes)
{
    MP_DYNAMIC_SMEM(smem);
    __shared__ float s_act[C::BM];
    __shared__ __align__(16) float s_par[4 * C::BN];
    __shared__ Desc s_desc; /* read by every thread, kept out of registers */
    if (threadIdx.x == 0)
        s_desc = descs[find_item(descs, count, blockIdx.x)];
    __syncthreads();
    const Desc &d = s_desc;
    const int tile = blockIdx.x - d.tile0, tm = tile % d.tiles_m, tn = tile / d.tiles_m;
    const long long row_base = (long long)tm * C::BM;
    const int col_base = tn * C::BN;
    const int rows_here = min(C::BM, (int)(d.rows - row_base));
    if (d.act_bits) {
        act_scales<XK, C::BM, C::THREADS>(d, row_base, rows_here, s_act);
        __syncthreads();
    }
    switch (d.bits) {
    case 2: mma_tile<C, XK, 2>(d, row_base, col_base, rows_here, stage_bytes, smem, s_act, s_par); break;
    case 3: mma_tile<C, XK, 3>(d, row_base, col_base, rows_here, stage_bytes, smem, s_act, s_par); break;
    case 4: mma_tile<C, XK, 4>(d, row_base, col_base, rows_here, stage_bytes, smem, s_act, s_par); break;
    case 8: mma_tile<C, XK, 8>(d, row_base, col_base, rows_here, stage_bytes, smem, s_act, s_par); break;
    case 16:
        if constexpr (XK == XK_F16) /* the host sends fp16 blocks here with fp16 X only */
            mma_tile<C, XK, 16>(d, row_base, col_base, rows_here, stage_bytes, smem, s_act, s_par);
        break;
    }
}

/* ---- host side ---------------------------------------------------------------------------------------- */
/* the tensor-core path takes this item: 16-bit X, groups made of whole chunks, fp16 blocks with fp16 X */
bool mma_applies(const mp_qtensor *w, mp_qg_type xt)
{
    if (xt != MP_QG_F16 && xt != MP_QG_BF16)
        return false;
    if (w->fmt->bits == 16)
        return xt == MP_QG_F16;
    return w->ngroups == 1 || w->group % KC == 0;
}

Desc make_desc(const mp_qtensor *w, const void *x, int64_t ldx, int64_t x0, void *y, mp_qg_type yt, int64_t ldy,
               int64_t y0, int64_t rows, int accumulate)
{
    Desc d;
    memset(&d, 0, sizeof d);
    d.qw = w->qweight;
    d.scales = w->scales;
    d.zeros = w->zeros;
    d.x = x;
    d.y = y;
    d.x0 = x0;
    d.y0 = y0;
    d.ldx = ldx;
    d.ldy = ldy;
    d.rows = (int)rows;
    d.m = (int)w->m;
    d.n = (int)w->n;
    d.wpr = (int)w->words_per_row;
    d.ngroups = (int)w->ngroups;
    d.group = (int)w->group;
    d.bits = w->fmt->bits;
    d.act_bits = w->fmt->act_bits;
    d.ytype = (int)yt;
    d.accumulate = accumulate;
    d.xvec = (uintptr_t)x % 16 == 0 && ldx % 8 == 0;
    const int wpc = 2 * d.bits;
    const uintptr_t qa = (uintptr_t)w->qweight;
    d.wvec = (wpc % 4 == 0 && d.wpr % 4 == 0 && qa % 16 == 0) ? 4 : (d.wpr % 2 == 0 && qa % 8 == 0) ? 2 : 1;
    return d;
}

/* The kernels of one X type: the tensor-core items and the CUDA-core items. */
struct Stage {
    mp_qg_type xt;
    std::vector<Desc> mma, simt;
    bool large;   /* tensor-core configuration */
    int bits_max; /* largest width among the tensor-core items (sizes a stage) */
    long long tiles_mma, tiles_simt;
    size_t off_mma, off_simt; /* index of the first descriptor in the device array */
};

void stage_add(Stage &s, const Desc &d, const mp_qtensor *w, mp_gpu_path path)
{
    if (d.rows <= 0)
        return;
    if (path == MP_GPU_PATH_AUTO && mma_applies(w, s.xt))
        s.mma.push_back(d);
    else
        s.simt.push_back(d);
}

long long assign_tiles(std::vector<Desc> &v, int bm, int bn)
{
    long long tiles = 0;
    for (Desc &d : v) {
        d.tiles_m = (d.rows + bm - 1) / bm;
        d.tile0 = (int)tiles;
        tiles += (long long)d.tiles_m * ((d.m + bn - 1) / bn);
    }
    return tiles;
}

/* tiles, configuration and the descriptors' place in one array; false when a grid would be too large */
bool stage_finish(Stage &s, std::vector<Desc> &all)
{
    long long rows = 0;
    s.bits_max = 2;
    for (const Desc &d : s.mma) {
        rows += d.rows;
        s.bits_max = d.bits > s.bits_max ? d.bits : s.bits_max;
    }
    s.large = !s.mma.empty() && rows > 32LL * (long long)s.mma.size();
    s.tiles_mma =
        s.large ? assign_tiles(s.mma, CfgLarge::BM, CfgLarge::BN) : assign_tiles(s.mma, CfgSmall::BM, CfgSmall::BN);
    s.tiles_simt = assign_tiles(s.simt, S_BM, S_BN);
    s.off_mma = all.size();
    all.insert(all.end(), s.mma.begin(), s.mma.end());
    s.off_simt = all.size();
    all.insert(all.end(), s.simt.begin(), s.simt.end());
    return s.tiles_mma < 0x7fffffffLL && s.tiles_simt < 0x7fffffffLL;
}

template <class C, int XK>
cudaError_t launch_mma(const Desc *dd, int count, long long tiles, int bits_max, cudaStream_t st)
{
    const int stage_bytes = C::X_BYTES + C::BN * w_pitch(bits_max) * 4;
    const int smem = C::STAGES * stage_bytes;
    auto kernel = qgemm_mma<C, XK>;
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (e != cudaSuccess)
        return e;
    MP_LAUNCH(kernel, (unsigned)tiles, C::THREADS, smem, st, dd, count, stage_bytes);
    return cudaGetLastError();
}

template <int XK> cudaError_t launch_simt(const Desc *dd, int count, long long tiles, cudaStream_t st)
{
    auto kernel = qgemm_simt<XK>;
    MP_LAUNCH(kernel, (unsigned)tiles, S_THREADS, 0, st, dd, count);
    return cudaGetLastError();
}

} /* namespace */

/* ---- the public API ------------------------------------------------------------------------------------- */
struct mp_gpu_qtensor {
    mp_qtensor h; /* header; qweight/scales/zeros point into mem (device) */
    void *mem;
};

struct mp_gpu_qgemm {
    cudaStream_t stream;
    mp_gpu_path path;
    void *desc; /* device array of descriptors */
    size_t desc_cap;
    float *t;
    size_t t_cap;
    int launches;
};

/* A[i] *= silu(G[i]); thread t of the launch takes i = t, t + stride, ... */
__global__ void __launch_bounds__(256)
    swiglu_kernel(const float *__restrict__ G, float *__restrict__ A, long long count, long long stride)
{
    for (long long i = (long long)blockIdx.x * 256 + threadIdx.x; i < count; i += stride) {
        const float z = G[i];
        A[i] *= z / (1.0f + expf(-z));
    }
}

static int no_device(const char *label)
{
    if (mp_gpu_device_count() > 0)
        return 0;
    return mp_errorf(MP_EUSAGE, "%s: no CUDA device is visible", LBL(label));
}

static size_t align256(size_t b) { return (b + 255) & ~(size_t)255; }

extern "C" int mp_gpu_qtensor_upload(const mp_qtensor *q, mp_gpu_qtensor **out)
{
    *out = NULL;
    if (!q || !q->fmt || !q->qweight || q->m < 1 || q->n < 1 || (q->fmt->bits < 16 && !q->scales) ||
        (q->fmt->bits < 16 && !q->fmt->symmetric && !q->zeros))
        return mp_errorf(MP_EUSAGE, "GPU upload: the quantized block is missing or incomplete");
    if (q->m > 0x7fffffff || q->n > 0x7fffffff)
        return mp_errorf(MP_EUSAGE, "GPU upload: block [%lld, %lld] is too large for the kernels", (long long)q->m,
                         (long long)q->n);
    MP_CHECK(no_device("GPU upload"));
    const size_t wb = 4 * (size_t)(q->m * q->words_per_row);
    const size_t sb = q->scales ? 2 * (size_t)(q->m * q->ngroups) : 0, zb = q->zeros ? sb : 0;
    const size_t off_s = align256(wb), off_z = off_s + align256(sb);
    mp_gpu_qtensor *t = (mp_gpu_qtensor *)calloc(1, sizeof *t);
    if (!t)
        return mp_errorf(MP_ENOMEM, "out of memory (GPU tensor)");
    cudaError_t e = cudaMalloc(&t->mem, off_z + zb);
    if (e != cudaSuccess) {
        free(t);
        char what[128];
        snprintf(what, sizeof what, "GPU upload of a %s block [%lld, %lld]", q->fmt->name, (long long)q->m,
                 (long long)q->n);
        return mp_cuda_error(e, what);
    }
    uint8_t *base = (uint8_t *)t->mem;
    t->h = *q;
    t->h.qweight = (uint32_t *)base;
    t->h.scales = q->scales ? (uint16_t *)(base + off_s) : NULL;
    t->h.zeros = q->zeros ? (uint16_t *)(base + off_z) : NULL;
    e = cudaMemcpy(t->h.qweight, q->qweight, wb, cudaMemcpyHostToDevice);
    if (e == cudaSuccess && sb)
        e = cudaMemcpy(t->h.scales, q->scales, sb, cudaMemcpyHostToDevice);
    if (e == cudaSuccess && zb)
        e = cudaMemcpy(t->h.zeros, q->zeros, zb, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) {
        mp_gpu_qtensor_destroy(t);
        return mp_cuda_error(e, "GPU upload (copy)");
    }
    *out = t;
    return 0;
}

extern "C" void mp_gpu_qtensor_destroy(mp_gpu_qtensor *t)
{
    if (!t)
        return;
    cudaFree(t->mem);
    free(t);
}

extern "C" const mp_qtensor *mp_gpu_qtensor_header(const mp_gpu_qtensor *t) { return t ? &t->h : NULL; }

extern "C" int mp_gpu_qgemm_create(void *stream, mp_gpu_qgemm **out)
{
    *out = NULL;
    MP_CHECK(no_device("GPU qgemm"));
    mp_gpu_qgemm *g = (mp_gpu_qgemm *)calloc(1, sizeof *g);
    if (!g)
        return mp_errorf(MP_ENOMEM, "out of memory (GPU qgemm context)");
    g->stream = (cudaStream_t)stream;
    g->path = MP_GPU_PATH_AUTO;
    *out = g;
    return 0;
}

extern "C" void mp_gpu_qgemm_destroy(mp_gpu_qgemm *g)
{
    if (!g)
        return;
    cudaStreamSynchronize(g->stream);
    cudaFree(g->desc);
    cudaFree(g->t);
    free(g);
}

extern "C" void mp_gpu_qgemm_set_path(mp_gpu_qgemm *g, mp_gpu_path path) { g->path = path; }

extern "C" int mp_gpu_qgemm_last_launches(const mp_gpu_qgemm *g) { return g->launches; }

extern "C" int mp_gpu_qgemm_swiglu(mp_gpu_qgemm *g, const float *G, float *A, int64_t count, const char *label)
{
    g->launches = 0;
    if (count < 0 || (count > 0 && (!G || !A)))
        return mp_errorf(MP_EUSAGE, "%s: SwiGLU of %lld values (G or A NULL?)", LBL(label), (long long)count);
    if (count == 0)
        return 0;
    const long long blocks = count / 256 + 1 < 4096 ? count / 256 + 1 : 4096;
    MP_LAUNCH(swiglu_kernel, (unsigned)blocks, 256, 0, g->stream, G, A, (long long)count, blocks * 256);
    MP_CHECK(mp_cuda_error(cudaGetLastError(), "GPU SwiGLU (launch)"));
    g->launches = 1;
    return 0;
}

extern "C" int mp_gpu_qgemm_sync(mp_gpu_qgemm *g)
{
    MP_CUDA(cudaStreamSynchronize(g->stream), "GPU qgemm (kernels)");
    return 0;
}

/* device buffers at least this large; a buffer that grows waits for the stream's earlier work first */
static int ensure(mp_gpu_qgemm *g, void **buf, size_t *cap, size_t bytes, const char *what)
{
    if (bytes <= *cap)
        return 0;
    MP_CUDA(cudaStreamSynchronize(g->stream), "GPU qgemm (earlier kernels)");
    cudaFree(*buf);
    *buf = NULL;
    *cap = 0;
    MP_CUDA(cudaMalloc(buf, bytes), what);
    *cap = bytes;
    return 0;
}

/* copy every stage's descriptors at once (stream-ordered after earlier kernels), then launch in order */
static int run_stages(mp_gpu_qgemm *g, Stage *stages, int nstages, const char *label)
{
    std::vector<Desc> all;
    for (int i = 0; i < nstages; i++)
        if (!stage_finish(stages[i], all))
            return mp_errorf(MP_EUSAGE, "%s: too many tiles for one launch", LBL(label));
    g->launches = 0;
    if (all.empty())
        return 0;
    MP_CHECK(ensure(g, &g->desc, &g->desc_cap, all.size() * sizeof(Desc), "GPU qgemm descriptors"));
    /* from pageable memory: returns once `all` has been staged, the copy runs in stream order */
    MP_CUDA(cudaMemcpyAsync(g->desc, all.data(), all.size() * sizeof(Desc), cudaMemcpyHostToDevice, g->stream),
            "GPU qgemm descriptors");
    for (int i = 0; i < nstages; i++) {
        const Stage &s = stages[i];
        cudaError_t e = cudaSuccess;
        if (!s.mma.empty()) {
            const Desc *dd = (const Desc *)g->desc + s.off_mma;
            const int n = (int)s.mma.size();
            if (s.xt == MP_QG_F16)
                e = s.large ? launch_mma<CfgLarge, XK_F16>(dd, n, s.tiles_mma, s.bits_max, g->stream)
                            : launch_mma<CfgSmall, XK_F16>(dd, n, s.tiles_mma, s.bits_max, g->stream);
            else
                e = s.large ? launch_mma<CfgLarge, XK_BF16>(dd, n, s.tiles_mma, s.bits_max, g->stream)
                            : launch_mma<CfgSmall, XK_BF16>(dd, n, s.tiles_mma, s.bits_max, g->stream);
            MP_CHECK(mp_cuda_error(e, "GPU qgemm (tensor-core launch)"));
            g->launches++;
        }
        if (!s.simt.empty()) {
            const Desc *dd = (const Desc *)g->desc + s.off_simt;
            const int n = (int)s.simt.size();
            if (s.xt == MP_QG_F16)
                e = launch_simt<XK_F16>(dd, n, s.tiles_simt, g->stream);
            else if (s.xt == MP_QG_BF16)
                e = launch_simt<XK_BF16>(dd, n, s.tiles_simt, g->stream);
            else
                e = launch_simt<XK_F32>(dd, n, s.tiles_simt, g->stream);
            MP_CHECK(mp_cuda_error(e, "GPU qgemm (CUDA-core launch)"));
            g->launches++;
        }
    }
    return 0;
}

static int check_size(int64_t rows, const char *label)
{
    if (rows > 0x7fffffff)
        return mp_errorf(MP_EUSAGE, "%s: %lld rows in one item is more than the kernels take", LBL(label),
                         (long long)rows);
    return 0;
}

extern "C" int mp_gpu_qgemm_grouped(mp_gpu_qgemm *g, const mp_gpu_qgemm_item *items, int count, const void *X,
                                    mp_qg_type xt, int64_t ldx, void *Y, mp_qg_type yt, int64_t ldy, int accumulate,
                                    const char *label)
{
    std::vector<mp_qgemm_item> h((size_t)(count > 0 ? count : 0));
    for (int i = 0; i < count && items; i++) {
        h[i].w = items[i].w ? &items[i].w->h : NULL;
        h[i].row0 = items[i].row0;
        h[i].rows = items[i].rows;
    }
    g->launches = 0;
    MP_CHECK(mp_qgemm_check(h.data(), count, xt, ldx, yt, ldy, label));
    Stage st;
    st.xt = xt;
    for (int i = 0; i < count; i++) {
        MP_CHECK(check_size(h[i].rows, label));
        stage_add(st, make_desc(h[i].w, X, ldx, h[i].row0, Y, yt, ldy, h[i].row0, h[i].rows, accumulate), h[i].w,
                  g->path);
    }
    if ((!st.mma.empty() || !st.simt.empty()) && (!X || !Y))
        return mp_errorf(MP_EUSAGE, "%s: X or Y is NULL", LBL(label));
    return run_stages(g, &st, 1, label);
}

/* delta items (and the base) as two stages: [base, V products] -> Y, T; then T U^T accumulated into Y */
static int run_delta(mp_gpu_qgemm *g, const mp_gpu_qtensor *base, int64_t rows_total, const mp_gpu_qdelta_item *items,
                     int count, const void *X, mp_qg_type xt, int64_t ldx, void *Y, mp_qg_type yt, int64_t ldy,
                     const char *label)
{
    std::vector<mp_qdelta_item> h((size_t)(count > 0 ? count : 0));
    for (int i = 0; i < count && items; i++) {
        h[i].u = items[i].u ? &items[i].u->h : NULL;
        h[i].v = items[i].v ? &items[i].v->h : NULL;
        h[i].row0 = items[i].row0;
        h[i].rows = items[i].rows;
    }
    g->launches = 0;
    int64_t r_max = 0, t_rows = 0;
    MP_CHECK(mp_qdelta_check(base ? &base->h : NULL, base ? rows_total : -1, h.data(), count, xt, ldx, yt, ldy, &r_max,
                             label));
    bool any = base && rows_total > 0;
    for (int i = 0; i < count; i++) {
        MP_CHECK(check_size(h[i].rows, label));
        if (h[i].u && h[i].rows > 0) {
            any = true;
            t_rows = h[i].row0 + h[i].rows > t_rows ? h[i].row0 + h[i].rows : t_rows;
        }
    }
    if (!any)
        return 0;
    if (!X || !Y)
        return mp_errorf(MP_EUSAGE, "%s: X or Y is NULL", LBL(label));
    if (base)
        MP_CHECK(check_size(rows_total, label));
    MP_CHECK(ensure(g, (void **)&g->t, &g->t_cap, (size_t)(t_rows * r_max) * sizeof(float) + 16, "GPU qgemm T"));
    Stage st[2];
    st[0].xt = xt;
    st[1].xt = MP_QG_F32;
    if (base)
        stage_add(st[0], make_desc(&base->h, X, ldx, 0, Y, yt, ldy, 0, rows_total, 0), &base->h, g->path);
    for (int i = 0; i < count; i++) {
        if (!h[i].u || h[i].rows == 0)
            continue;
        stage_add(st[0], make_desc(h[i].v, X, ldx, h[i].row0, g->t, MP_QG_F32, r_max, h[i].row0, h[i].rows, 0), h[i].v,
                  g->path);
        stage_add(st[1], make_desc(h[i].u, g->t, r_max, h[i].row0, Y, yt, ldy, h[i].row0, h[i].rows, 1), h[i].u,
                  g->path);
    }
    return run_stages(g, st, 2, label);
}

extern "C" int mp_gpu_qgemm_delta(mp_gpu_qgemm *g, const mp_gpu_qdelta_item *items, int count, const void *X,
                                  mp_qg_type xt, int64_t ldx, void *Y, mp_qg_type yt, int64_t ldy, const char *label)
{
    return run_delta(g, NULL, -1, items, count, X, xt, ldx, Y, yt, ldy, label);
}

extern "C" int mp_gpu_qgemm_base_delta(mp_gpu_qgemm *g, const mp_gpu_qtensor *base, int64_t rows,
                                       const mp_gpu_qdelta_item *items, int count, const void *X, mp_qg_type xt,
                                       int64_t ldx, void *Y, mp_qg_type yt, int64_t ldy, const char *label)
{
    if (!base)
        return mp_errorf(MP_EUSAGE, "%s: no base block", LBL(label));
    return run_delta(g, base, rows, items, count, X, xt, ldx, Y, yt, ldy, label);
}
