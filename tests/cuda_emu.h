/* cuda_emu.h - a CPU emulator of the CUDA subset the kernels of src/gpu/qgemm_gpu.cu use, so that they run
 * (slowly) where there is no GPU: tests/test_qgemm_emu.cpp compiles qgemm_gpu.cu as host C++ with it
 * (MP_QGEMM_EMULATE) and runs the reference suite of test_gpu_kernels against it. Test code only.
 *
 * Emulated, by the documented semantics:
 *  - a block's threads are fibers (ucontext) run one at a time in a seeded random order (or reversed)
 *    between synchronisation points; __syncthreads releases when every thread of the block has arrived
 *    (a block where that cannot happen aborts: deadlock);
 *  - warp-collective operations wait for all 32 lanes and are computed from every lane's registers:
 *    __shfl_xor_sync, and mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16} by the PTX ISA fragment
 *    layout (g = lane / 4, t = lane % 4; A regs {a0,a1} {a2,a3} {a4,a5} {a6,a7} = row g | g+8 | g | g+8,
 *    columns 2t, 2t+1 (+8 for the last two); B regs {b0,b1} {b2,b3} = rows 2t, 2t+1 (+8), column g;
 *    C/D {c0,c1} {c2,c3} = row g | g+8, columns 2t, 2t+1; lower element in the lower 16 bits), products
 *    exact, sum in double rounded to fp32;
 *  - cp.async: both addresses aligned to the copy size, the destination inside the block's dynamic
 *    shared memory, the source (when src-size > 0) inside one device allocation; the data lands at once
 *    (eager) or as late as cp.async.wait_group allows (lazy), zero-filled past src-size;
 *  - device memory is registered host memory; launches run to completion at once; dynamic shared
 *    memory is poisoned (0xFF bytes: NaN as 16- and 32-bit floats) at every block start and over 48 KiB
 *    needs cudaFuncSetAttribute first, as on the GPU (at most 227 KiB).
 * Not emulated: timing, orders other than those tried, static shared-memory limits, register limits.
 * Errors of the emulated program (a bad cp.async, a deadlock) print "cuda_emu: ..." and abort. */
#ifndef MP_CUDA_EMU_H
#define MP_CUDA_EMU_H

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <ucontext.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

#define MP_QGEMM_EMULATE 1

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __shared__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __launch_bounds__(...)
#undef __align__
#define __align__(n) __attribute__((aligned(n)))

using std::max;
using std::min;

namespace emu
{

[[noreturn]] inline void fatal(const char *msg, long long a = 0, long long b = 0)
{
    fprintf(stderr, "cuda_emu: %s (%lld, %lld)\n", msg, a, b);
    abort();
}

struct Idx {
    unsigned x, y, z;
};
inline Idx g_thread{0, 0, 0}, g_block{0, 0, 0};

struct Copy {
    uint8_t *dst;
    const uint8_t *src;
    int bytes, src_bytes;
};

enum OpKind { OP_NONE, OP_SHFL_XOR, OP_MMA };
struct WarpOp {
    int kind, bf16, off;
    float v;
    uint32_t a[4], b[2];
    float c[4];
};

enum { RUN, AT_BARRIER, AT_WARP_OP, DONE };
struct Fiber {
    ucontext_t ctx;
    std::vector<char> stack;
    int state;
    std::vector<Copy> open;
    std::vector<std::vector<Copy>> groups;
    WarpOp op;
};

inline ucontext_t g_sched;
inline std::vector<Fiber> g_fibers;
inline int g_cur = -1;
inline std::function<void()> g_body;
inline std::vector<uint8_t> g_smem_buf;
inline uint8_t *g_smem = nullptr;
inline size_t g_smem_bytes = 0;
inline bool g_eager = false; /* cp.async lands at once */
inline int g_order = 0;      /* 0: seeded random order of threads, 1: reversed */
inline uint64_t g_seed = 12345;
inline std::map<uintptr_t, size_t> g_allocs;
inline std::map<const void *, int> g_smem_attr;
inline cudaError_t g_last = cudaSuccess;
inline long long g_launches = 0, g_blocks = 0;
#if EMU_ASAN
inline const void *g_main_bottom = nullptr;
inline size_t g_main_size = 0;
#endif

/* ---- fibers ---- */
inline void to_scheduler(bool exiting)
{
#if EMU_ASAN
    void *fake = nullptr;
    __sanitizer_start_switch_fiber(exiting ? nullptr : &fake, g_main_bottom, g_main_size);
    swapcontext(&g_fibers[g_cur].ctx, &g_sched);
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
    (void)exiting;
    swapcontext(&g_fibers[g_cur].ctx, &g_sched);
#endif
}

inline void fiber_main()
{
#if EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &g_main_bottom, &g_main_size);
#endif
    g_body();
    Fiber &f = g_fibers[g_cur];
    if (!f.open.empty() || !f.groups.empty()) { /* copies never waited for never land: drop them */
        f.open.clear();
        f.groups.clear();
    }
    f.state = DONE;
    to_scheduler(true);
}

inline void resume(int i)
{
    g_cur = i;
    g_thread.x = (unsigned)i;
#if EMU_ASAN
    void *fake = nullptr;
    __sanitizer_start_switch_fiber(&fake, g_fibers[i].stack.data(), g_fibers[i].stack.size());
    swapcontext(&g_sched, &g_fibers[i].ctx);
    __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
    swapcontext(&g_sched, &g_fibers[i].ctx);
#endif
}

inline void block_barrier()
{
    g_fibers[g_cur].state = AT_BARRIER;
    to_scheduler(false);
}

inline WarpOp &warp_op_begin() { return g_fibers[g_cur].op; }
inline void warp_op_wait()
{
    g_fibers[g_cur].state = AT_WARP_OP;
    to_scheduler(false);
}

inline float f16f(uint16_t h) { return __half2float(__ushort_as_half(h)); }
inline float bf16f(uint16_t h)
{
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}
inline float frag(uint32_t reg, int hi, int bf16)
{
    uint16_t h = (uint16_t)(hi ? reg >> 16 : reg & 0xffffu);
    return bf16 ? bf16f(h) : f16f(h);
}

/* all 32 lanes of warp w are at a warp op: compute it */
inline void run_warp_op(int w)
{
    Fiber *L = &g_fibers[32 * w];
    const int kind = L[0].op.kind;
    for (int l = 0; l < 32; l++)
        if (L[l].op.kind != kind || (kind == OP_MMA && L[l].op.bf16 != L[0].op.bf16))
            fatal("lanes of a warp in different warp-collective operations", w, l);
    if (kind == OP_SHFL_XOR) {
        float v[32];
        for (int l = 0; l < 32; l++)
            v[l] = L[l ^ (L[l].op.off & 31)].op.v;
        for (int l = 0; l < 32; l++)
            L[l].op.v = v[l];
    } else if (kind == OP_MMA) {
        const int bf = L[0].op.bf16;
        auto A = [&](int r, int s) { return frag(L[(r % 8) * 4 + (s % 8) / 2].op.a[r / 8 + 2 * (s / 8)], s % 2, bf); };
        auto B = [&](int s, int c) { return frag(L[c * 4 + (s % 8) / 2].op.b[s / 8], s % 2, bf); };
        float d[32][4];
        for (int l = 0; l < 32; l++) {
            const int g = l / 4, t = l % 4;
            for (int e = 0; e < 4; e++) {
                const int r = g + 8 * (e / 2), c = 2 * t + e % 2;
                double sum = L[l].op.c[e];
                for (int s = 0; s < 16; s++)
                    sum += (double)A(r, s) * (double)B(s, c);
                d[l][e] = (float)sum;
            }
        }
        for (int l = 0; l < 32; l++)
            for (int e = 0; e < 4; e++)
                L[l].op.c[e] = d[l][e];
    } else {
        fatal("unknown warp operation", kind);
    }
    for (int l = 0; l < 32; l++) {
        L[l].op.kind = OP_NONE;
        L[l].state = RUN;
    }
}

inline uint64_t next_rand()
{
    g_seed = g_seed * 6364136223846793005ULL + 1442695040888963407ULL;
    return g_seed >> 33;
}

inline void run_block(int nthreads)
{
    const size_t stack = EMU_ASAN ? 96 * 1024 : 128 * 1024;
    g_fibers.resize((size_t)nthreads);
    for (int i = 0; i < nthreads; i++) {
        Fiber &f = g_fibers[i];
        f.stack.resize(stack);
        f.state = RUN;
        f.open.clear();
        f.groups.clear();
        f.op.kind = OP_NONE;
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack.data();
        f.ctx.uc_stack.ss_size = f.stack.size();
        f.ctx.uc_link = nullptr;
        makecontext(&f.ctx, fiber_main, 0);
    }
    std::vector<int> order((size_t)nthreads);
    for (;;) {
        for (int i = 0; i < nthreads; i++)
            order[i] = g_order == 1 ? nthreads - 1 - i : i;
        if (g_order == 0)
            for (int i = nthreads - 1; i > 0; i--)
                std::swap(order[i], order[next_rand() % (uint64_t)(i + 1)]);
        for (int i : order)
            if (g_fibers[i].state == RUN)
                resume(i);
        int done = 0, barrier = 0, warp = 0;
        for (const Fiber &f : g_fibers) {
            done += f.state == DONE;
            barrier += f.state == AT_BARRIER;
            warp += f.state == AT_WARP_OP;
        }
        if (done == nthreads)
            break;
        bool released = false;
        for (int w = 0; w < nthreads / 32; w++) {
            int at = 0;
            for (int l = 0; l < 32; l++)
                at += g_fibers[32 * w + l].state == AT_WARP_OP;
            if (at == 32) {
                run_warp_op(w);
                released = true;
            }
        }
        if (released)
            continue;
        if (barrier == nthreads) {
            for (Fiber &f : g_fibers)
                f.state = RUN;
            continue;
        }
        fatal("deadlock: threads done / at __syncthreads / at a warp operation", done * 1000000LL + barrier, warp);
    }
}

/* ---- launches and the runtime API ---- */
inline void launch(const void *kernel, unsigned grid, unsigned block, size_t smem, std::function<void()> body)
{
    auto it = g_smem_attr.find(kernel);
    const size_t limit = it == g_smem_attr.end() ? 48 * 1024 : (size_t)it->second;
    if (block == 0 || block > 1024 || block % 32 || grid == 0) {
        g_last = cudaErrorInvalidConfiguration;
        return;
    }
    if (smem > limit) {
        g_last = cudaErrorInvalidValue;
        return;
    }
    g_launches++;
    g_smem_buf.assign(smem + 128, 0);
    g_smem = g_smem_buf.data() + (128 - (uintptr_t)g_smem_buf.data() % 128) % 128;
    g_smem_bytes = smem;
    g_body = std::move(body);
    for (unsigned b = 0; b < grid; b++) {
        g_block.x = b;
        memset(g_smem, 0xff, smem);
        run_block((int)block);
        g_blocks++;
    }
    g_body = nullptr;
}

inline bool in_alloc(const void *p, size_t n)
{
    const uintptr_t a = (uintptr_t)p;
    auto it = g_allocs.upper_bound(a);
    if (it == g_allocs.begin())
        return false;
    --it;
    return a >= it->first && a + n <= it->first + it->second;
}

inline void do_copy(const Copy &c)
{
    if (c.src_bytes)
        memcpy(c.dst, c.src, (size_t)c.src_bytes);
    memset(c.dst + c.src_bytes, 0, (size_t)(c.bytes - c.src_bytes));
}

inline void cp_async(void *dst, const void *src, int bytes, int src_bytes)
{
    const uintptr_t d = (uintptr_t)dst, s = (uintptr_t)src;
    if (d % (uintptr_t)bytes)
        fatal("cp.async: shared address not aligned to the copy size", (long long)(d - (uintptr_t)g_smem), bytes);
    if (d < (uintptr_t)g_smem || d + (uintptr_t)bytes > (uintptr_t)g_smem + g_smem_bytes)
        fatal("cp.async: destination outside the dynamic shared memory", (long long)(d - (uintptr_t)g_smem),
              (long long)g_smem_bytes);
    if (src_bytes < 0 || src_bytes > bytes)
        fatal("cp.async: src-size outside [0, cp-size]", src_bytes, bytes);
    if (src_bytes > 0 && s % (uintptr_t)bytes)
        fatal("cp.async: global address not aligned to the copy size", (long long)(s % 256), bytes);
    if (src_bytes > 0 && !in_alloc(src, (size_t)src_bytes))
        fatal("cp.async: source outside every device allocation", (long long)s, src_bytes);
    Copy c{(uint8_t *)dst, (const uint8_t *)src, bytes, src_bytes};
    if (g_eager)
        do_copy(c);
    else
        g_fibers[g_cur].open.push_back(c);
}

inline void cp_async_commit()
{
    Fiber &f = g_fibers[g_cur];
    f.groups.push_back(std::move(f.open));
    f.open.clear();
}

inline void cp_async_wait(int n)
{
    Fiber &f = g_fibers[g_cur];
    while ((int)f.groups.size() > n) {
        for (const Copy &c : f.groups.front())
            do_copy(c);
        f.groups.erase(f.groups.begin());
    }
}

inline void mma(float c[4], const uint32_t a[4], const uint32_t b[2], int bf16)
{
    WarpOp &op = warp_op_begin();
    op.kind = OP_MMA;
    op.bf16 = bf16;
    memcpy(op.a, a, sizeof op.a);
    memcpy(op.b, b, sizeof op.b);
    memcpy(op.c, c, sizeof op.c);
    warp_op_wait();
    memcpy(c, g_fibers[g_cur].op.c, sizeof op.c);
}

inline float shfl_xor(unsigned mask, float v, int off)
{
    if (mask != 0xffffffffu)
        fatal("__shfl_xor_sync with a partial mask", mask);
    WarpOp &op = warp_op_begin();
    op.kind = OP_SHFL_XOR;
    op.v = v;
    op.off = off;
    warp_op_wait();
    return g_fibers[g_cur].op.v;
}

inline float uint_as_float(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

inline cudaError_t malloc_dev(void **p, size_t n)
{
    *p = nullptr;
    void *q = nullptr; /* exactly n bytes: AddressSanitizer sees an access past the end */
    if (posix_memalign(&q, 256, n ? n : 1) != 0)
        return cudaErrorMemoryAllocation;
    g_allocs[(uintptr_t)q] = n;
    *p = q;
    return cudaSuccess;
}

inline cudaError_t free_dev(void *p)
{
    if (!p)
        return cudaSuccess;
    auto it = g_allocs.find((uintptr_t)p);
    if (it == g_allocs.end())
        fatal("cudaFree of a pointer that cudaMalloc did not return");
    g_allocs.erase(it);
    free(p);
    return cudaSuccess;
}

inline cudaError_t copy(void *dst, const void *src, size_t n)
{
    if (n)
        memcpy(dst, src, n);
    return cudaSuccess;
}

inline cudaError_t func_set_attribute(const void *f, int attr, int value)
{
    if (attr != (int)cudaFuncAttributeMaxDynamicSharedMemorySize)
        return cudaErrorInvalidValue;
    if (value < 0 || value > 227 * 1024)
        return cudaErrorInvalidValue;
    g_smem_attr[f] = value;
    return cudaSuccess;
}

inline cudaError_t last_error()
{
    cudaError_t e = g_last;
    g_last = cudaSuccess;
    return e;
}

inline const char *error_name(cudaError_t e) { return e == cudaSuccess ? "cudaSuccess" : "cudaErrorEmulated"; }
inline const char *error_string(cudaError_t e) { return e == cudaSuccess ? "no error" : "emulated CUDA error"; }

} /* namespace emu */

/* the names the kernels and their host side use */
#define threadIdx (emu::g_thread)
#define blockIdx (emu::g_block)
#define __syncthreads() emu::block_barrier()
#define __shfl_xor_sync(mask, v, off) emu::shfl_xor((mask), (v), (off))
#define __uint_as_float(u) emu::uint_as_float(u)
#define cudaMalloc(p, n) emu::malloc_dev((void **)(p), (n))
#define cudaFree(p) emu::free_dev(p)
#define cudaMemcpy(d, s, n, kind) emu::copy((d), (s), (n))
#define cudaMemcpyAsync(d, s, n, kind, st) ((void)(st), emu::copy((d), (s), (n)))
#define cudaStreamSynchronize(st) ((void)(st), emu::copy(nullptr, nullptr, 0))
#define cudaGetLastError() emu::last_error()
#define cudaFuncSetAttribute(f, a, v) emu::func_set_attribute((const void *)(f), (int)(a), (v))
#define cudaGetErrorName(e) emu::error_name(e)
#define cudaGetErrorString(e) emu::error_string(e)

#endif
