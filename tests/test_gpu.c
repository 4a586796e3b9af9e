/* test_gpu.c - the GPU query layer. Without CUDA in the build, or without a
 * GPU on the machine, it reports that and the test is skipped (exit 77). */
#include "gpu_info.h"
#include "testutil.h"

int main(void)
{
    char buf[256];
    mp_gpu_build_info(buf, sizeof buf);
    CHECK(buf[0] != '\0');
    printf("build: %s\n", buf);
    int n = mp_gpu_device_count();
    if (!MOEPACK_HAVE_CUDA || n == 0) {
        CHECK(n == 0);
        printf("gpu: SKIPPED - %s\n", MOEPACK_HAVE_CUDA ? "no CUDA device on this machine" : "built without CUDA");
        return t_failures ? 1 : 77;
    }
    for (int d = 0; d < n; d++) {
        mp_gpu_describe(d, buf, sizeof buf);
        printf("%s\n", buf);
        CHECK(strstr(buf, "GiB") != NULL);
    }
    return t_done("gpu");
}
