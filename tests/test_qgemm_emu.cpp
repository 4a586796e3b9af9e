/* test_qgemm_emu.cpp - the CUDA kernels of src/gpu/qgemm_gpu.cu run on the CPU emulator of tests/cuda_emu.h
 * (no GPU needed: this is what CI executes of the kernels). qgemm_gpu.cu is compiled here as host C++;
 * its public functions and the GPU helpers the test uses get emulator names (tests/gpu_emu.h; libmoepack_core keeps the
 * real ones). Then test_gpu_kernels.c runs as on a GPU - the reference suite on both paths (tensor-core
 * kernel with the emulated mma.sync, CUDA-core kernel), the launch counts, the bad arguments - at suite
 * level 1 (the larger shapes of level 2 are left to the GPU), with threads in a seeded random order and
 * cp.async landing as late as allowed; then level 0 again with threads in reverse order and cp.async
 * landing at once. Tolerances as on the GPU. */
#include "cuda_emu.h"

#include "gpu_emu.h"

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
