/* test_qgemm_emu.cpp - the CUDA kernels of src/gpu/qgemm_gpu.cu run on the CPU emulator of tests/cuda_emu.h
 * (no GPU needed: this is what CI executes of the kernels). qgemm_gpu.cu is compiled here as host C++;
 * its public functions and the GPU helpers the test uses get emulator names (libmoepack_core keeps the
 * real ones). Then test_gpu_kernels.c runs as on a GPU - the reference suite on both paths (tensor-core
 * kernel with the emulated mma.sync, CUDA-core kernel), the launch counts, the bad arguments - at suite
 * level 1 (the larger shapes of level 2 are left to the GPU), with threads in a seeded random order and
 * cp.async landing as late as allowed; then level 0 again with threads in reverse order and cp.async
 * landing at once. Tolerances as on the GPU. */
#include "cuda_emu.h"

#define mp_gpu_qtensor_upload emu_gpu_qtensor_upload
#define mp_gpu_qtensor_destroy emu_gpu_qtensor_destroy
#define mp_gpu_qtensor_header emu_gpu_qtensor_header
#define mp_gpu_qgemm_create emu_gpu_qgemm_create
#define mp_gpu_qgemm_destroy emu_gpu_qgemm_destroy
#define mp_gpu_qgemm_set_path emu_gpu_qgemm_set_path
#define mp_gpu_qgemm_last_launches emu_gpu_qgemm_last_launches
#define mp_gpu_qgemm_grouped emu_gpu_qgemm_grouped
#define mp_gpu_qgemm_delta emu_gpu_qgemm_delta
#define mp_gpu_qgemm_base_delta emu_gpu_qgemm_base_delta
#define mp_gpu_qgemm_sync emu_gpu_qgemm_sync
#define mp_gpu_build_info emu_gpu_build_info
#define mp_gpu_device_count emu_gpu_device_count
#define mp_gpu_describe emu_gpu_describe
#define mp_gpu_set_device emu_gpu_set_device
#define mp_gpu_alloc emu_gpu_alloc
#define mp_gpu_free emu_gpu_free
#define mp_gpu_copy_to_device emu_gpu_copy_to_device
#define mp_gpu_copy_to_host emu_gpu_copy_to_host
#define mp_gpu_memset emu_gpu_memset
#define mp_gpu_synchronize emu_gpu_synchronize

#include "../src/gpu/qgemm_gpu.cu"

extern "C" {
void emu_gpu_build_info(char *buf, size_t cap) { snprintf(buf, cap, "CPU emulator of the CUDA kernels"); }
int emu_gpu_device_count(void) { return 1; }
void emu_gpu_describe(int dev, char *buf, size_t cap) { snprintf(buf, cap, "device %d: tests/cuda_emu.h", dev); }
int emu_gpu_set_device(int device) { return device == 0 ? 0 : mp_errorf(MP_EUSAGE, "emulator: device %d", device); }
int emu_gpu_alloc(void **dptr, size_t bytes)
{
    *dptr = NULL;
    return bytes ? mp_cuda_error(cudaMalloc(dptr, bytes), "cudaMalloc") : 0;
}
void emu_gpu_free(void *dptr) { cudaFree(dptr); }
int emu_gpu_copy_to_device(void *dst, const void *src, size_t bytes)
{
    memcpy(dst, src, bytes);
    return 0;
}
int emu_gpu_copy_to_host(void *dst, const void *src, size_t bytes)
{
    memcpy(dst, src, bytes);
    return 0;
}
int emu_gpu_memset(void *dst, int byte, size_t bytes)
{
    memset(dst, byte, bytes);
    return 0;
}
int emu_gpu_synchronize(void) { return 0; }
}

#define GPU_TEST_LEVEL emu_level
static int emu_level = 1;
#define main gpu_kernels_main
#include "test_gpu_kernels.c"
#undef main

/* The emulator's mma against a plain product, with the fragments loaded as the PTX ISA documents them
 * for m16n8k16 (the lane -> element direction; the emulator implements element -> lane): A [16, 16]
 * row-major, B [16, 8] (k, n), D = A B + C. */
static int check_emulated_mma(int bf16)
{
    float A[16][16], B[16][8], C[16][8], D[16][8];
    uint16_t Ab[16][16], Bb[16][8];
    mp_rng r;
    mp_rng_seed(&r, 3);
    for (int i = 0; i < 16; i++)
        for (int k = 0; k < 16; k++) {
            float v = (float)mp_rng_normal(&r);
            Ab[i][k] = bf16 ? mp_f32_to_bf16(v) : mp_f32_to_f16(v);
            A[i][k] = bf16 ? mp_bf16_to_f32(Ab[i][k]) : mp_f16_to_f32(Ab[i][k]);
        }
    for (int k = 0; k < 16; k++)
        for (int j = 0; j < 8; j++) {
            float v = (float)mp_rng_normal(&r);
            Bb[k][j] = bf16 ? mp_f32_to_bf16(v) : mp_f32_to_f16(v);
            B[k][j] = bf16 ? mp_bf16_to_f32(Bb[k][j]) : mp_f16_to_f32(Bb[k][j]);
        }
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 8; j++)
            C[i][j] = (float)mp_rng_normal(&r);
    emu::launch((const void *)&check_emulated_mma, 1, 32, 0, [&] {
        const int lane = (int)threadIdx.x, g = lane / 4, t = lane % 4;
        auto pair = [](uint16_t lo, uint16_t hi) { return (uint32_t)lo | ((uint32_t)hi << 16); };
        uint32_t a[4] = {pair(Ab[g][2 * t], Ab[g][2 * t + 1]), pair(Ab[g + 8][2 * t], Ab[g + 8][2 * t + 1]),
                         pair(Ab[g][2 * t + 8], Ab[g][2 * t + 9]), pair(Ab[g + 8][2 * t + 8], Ab[g + 8][2 * t + 9])};
        uint32_t b[2] = {pair(Bb[2 * t][g], Bb[2 * t + 1][g]), pair(Bb[2 * t + 8][g], Bb[2 * t + 9][g])};
        float c[4] = {C[g][2 * t], C[g][2 * t + 1], C[g + 8][2 * t], C[g + 8][2 * t + 1]};
        emu::mma(c, a, b, bf16);
        D[g][2 * t] = c[0], D[g][2 * t + 1] = c[1], D[g + 8][2 * t] = c[2], D[g + 8][2 * t + 1] = c[3];
    });
    int bad = 0;
    for (int i = 0; i < 16; i++)
        for (int j = 0; j < 8; j++) {
            double want = C[i][j];
            for (int k = 0; k < 16; k++)
                want += (double)A[i][k] * (double)B[k][j];
            bad += fabs(D[i][j] - want) > 1e-5 * (1 + fabs(want));
        }
    if (bad)
        fprintf(stderr, "emulator: mma.m16n8k16 (%s) differs from the product in %d elements\n", bf16 ? "bf16" : "f16",
                bad);
    return bad;
}

int main(void)
{
    if (check_emulated_mma(0) || check_emulated_mma(1))
        return 1;
    emu::g_eager = false;
    emu::g_order = 0;
    emu_level = 1;
    int rc = gpu_kernels_main();
    printf("emulator: %lld launches, %lld blocks (random thread order, cp.async landing late)\n", emu::g_launches,
           emu::g_blocks);
    emu::g_eager = true;
    emu::g_order = 1;
    emu_level = 0;
    t_checks = t_failures = 0;
    int rc2 = gpu_kernels_main();
    printf("emulator: %lld launches, %lld blocks in all (reverse thread order, cp.async landing at once)\n",
           emu::g_launches, emu::g_blocks);
    if (!emu::g_allocs.empty())
        fprintf(stderr, "emulator: %zu device allocations were not freed\n", emu::g_allocs.size());
    return rc || rc2 || !emu::g_allocs.empty() ? 1 : 0;
}
