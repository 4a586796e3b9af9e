/* gpu_emu.cpp - the emulated GPU (tests/gpu_emu.h) as its own translation unit, for test programs written in
 * C (test_gweights_emu: tests/test_gweights.c and io/gweights.c compiled with tests/gpu_emu_names.h). */
#include "cuda_emu.h"
#include "gpu_emu.h"
