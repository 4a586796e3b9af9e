/* gpu_emu_names.h - the emulator's names of the GPU functions: a file compiled against the CUDA kernels on
 * the CPU emulator (tests/cuda_emu.h) includes this first (C sources: -include), so that its calls reach the
 * emulated kernels and runtime of tests/gpu_emu.h while libmoepack_core keeps the real functions. Code built
 * on top of them (io/gweights.c) is renamed as well. Test code only. */
#ifndef MP_GPU_EMU_NAMES_H
#define MP_GPU_EMU_NAMES_H
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
#define mp_gpu_qgemm_swiglu emu_gpu_qgemm_swiglu
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
#define mp_gweights_open emu_gweights_open
#define mp_gweights_close emu_gweights_close
#endif
