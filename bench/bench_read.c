/* bench_read.c - reading every routed expert of a checkpoint through the
 * safetensors reader (mmap + conversion to fp32) vs reading the same files
 * sequentially with `cat > /dev/null`, both with a warm page cache, reported
 * as a ratio measured in the same run (best of N repetitions each).
 *
 * usage: bench_read [DIR] [--reps N]
 *   without DIR a synthetic checkpoint is written to a temporary directory:
 *   mixtral, 4 layers, 8 experts, d 512, f 1408, in F32 and in BF16. */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "model.h"
#include "synth.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int read_experts(const mp_model *m, float *buf, double *checksum)
{
    const mp_config *c = &m->cfg;
    size_t n = (size_t)c->hidden * (size_t)c->moe_ffn;
    double s = 0;
    for (int l = 0; l < c->n_layers; l++)
        for (int e = 0; c->is_moe[l] && e < c->n_experts; e++)
            for (int p = 0; p < 3; p++) {
                MP_CHECK(mp_model_read_expert(m, l, e, (mp_proj)p, buf));
                s += buf[n / 2];
            }
    *checksum = s;
    return 0;
}

static int bench(const char *dir, int reps)
{
    mp_model *m;
    MP_CHECK(mp_model_open(dir, &m));
    const mp_config *c = &m->cfg;
    float *buf = malloc(sizeof(float) * (size_t)c->hidden * (size_t)c->moe_ffn);
    char cmd[8192];
    size_t k = (size_t)snprintf(cmd, sizeof cmd, "cat");
    unsigned long long bytes = 0;
    for (int i = 0; i < m->ck->nfiles; i++) {
        k += (size_t)snprintf(cmd + k, sizeof cmd - k, " '%s'", m->ck->files[i].path);
        bytes += m->ck->files[i].size;
    }
    snprintf(cmd + k, sizeof cmd - k, " > /dev/null");
    double cs = 0, best_cat = 1e30, best_rd = 1e30;
    int rc = system(cmd) == 0 ? read_experts(m, buf, &cs) : mp_errorf(MP_EIO, "cat failed"); /* warm up */
    for (int r = 0; r < reps && rc == 0; r++) {
        double t0 = now();
        if (system(cmd) != 0)
            rc = mp_errorf(MP_EIO, "cat failed");
        double t1 = now();
        rc = rc ? rc : read_experts(m, buf, &cs);
        double t2 = now();
        best_cat = t1 - t0 < best_cat ? t1 - t0 : best_cat;
        best_rd = t2 - t1 < best_rd ? t2 - t1 : best_rd;
    }
    if (rc == 0) {
        int64_t units = (int64_t)mp_config_n_moe_layers(c) * c->n_experts;
        double ebytes = (double)units * (double)mp_expert_params(c) * (double)mp_dtype_size(m->ck->tensors[0].dtype);
        printf("%-40s %s, %lld experts, %.1f MB expert data of %.1f MB files\n", dir,
               mp_dtype_name(m->ck->tensors[0].dtype), (long long)units, ebytes / 1e6, (double)bytes / 1e6);
        printf("  cat > /dev/null (all files): %8.2f ms  %7.0f MB/s\n", 1e3 * best_cat, (double)bytes / 1e6 / best_cat);
        printf("  reader, experts -> fp32:     %8.2f ms  %7.0f MB/s (of source bytes)\n", 1e3 * best_rd,
               ebytes / 1e6 / best_rd);
        printf("  ratio reader / cat: %.2f  (time), throughput ratio %.2f   [checksum %.6g]\n", best_rd / best_cat,
               (ebytes / best_rd) / ((double)bytes / best_cat), cs);
    }
    free(buf);
    mp_model_close(m);
    return rc;
}

int main(int argc, char **argv)
{
    const char *dir = NULL;
    int reps = 5;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else
            dir = argv[i];
    }
    int rc = 0;
    if (dir)
        rc = bench(dir, reps);
    else {
        char tmp[] = "/tmp/moepack-bench-XXXXXX", d[64];
        if (!mkdtemp(tmp))
            return 6;
        static const mp_dtype dts[2] = {MP_DT_F32, MP_DT_BF16};
        for (int i = 0; i < 2 && rc == 0; i++) {
            mp_synth_opts o;
            mp_synth_defaults(&o);
            o.layers = 4, o.experts = 8, o.hidden = 512, o.ffn = 1408, o.vocab = 1024, o.heads = 8;
            o.dtype = dts[i];
            snprintf(d, sizeof d, "%s/%s", tmp, mp_dtype_name(dts[i]));
            rc = mp_synth_write(&o, d);
            if (rc == 0)
                rc = bench(d, reps);
        }
        char cmd[128];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", tmp);
    }
    if (rc < 0)
        fprintf(stderr, "bench_read: error: %s\n", mp_error_message());
    return mp_exit_code(rc);
}
