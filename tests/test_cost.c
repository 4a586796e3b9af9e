/* test_cost.c - the roofline cost model (src/cost.h) and its device-profile / timings readers
 * (io/device_profile.h): hand-computed roofline numbers on the shipped H100 profile (memory-bound at
 * M = 16, compute-bound at M = 4096, the int4 -> int8 fallback), parser errors that name the file and the
 * key or line, and the timings table replacing the model (exact M, interpolated M, no extrapolation). */
#include <unistd.h>

#include "cost.h"
#include "device_profile.h"
#include "testutil.h"

#define H100_JSON MP_SOURCE_DIR "/jobs/devices/h100-sxm.json"

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static void test_profile_file(mp_device_profile *d)
{
    CHECK_OK(mp_device_profile_load(H100_JSON, d));
    mp_device_profile b;
    mp_device_profile_h100_sxm(&b);
    /* the built-in default carries the same figures as the shipped file */
    CHECK(strcmp(d->name, b.name) == 0);
    CHECK(d->hbm_bytes_per_s == 3.35e12 && b.hbm_bytes_per_s == 3.35e12);
    CHECK(d->peak_ops_per_s[MP_COMPUTE_FP16] == 989.4e12 && b.peak_ops_per_s[MP_COMPUTE_FP16] == 989.4e12);
    CHECK(d->peak_ops_per_s[MP_COMPUTE_INT8] == 1978.9e12 && b.peak_ops_per_s[MP_COMPUTE_INT8] == 1978.9e12);
    CHECK(d->peak_ops_per_s[MP_COMPUTE_FP8] == 1978.9e12 && b.peak_ops_per_s[MP_COMPUTE_FP8] == 1978.9e12);
    CHECK(d->peak_ops_per_s[MP_COMPUTE_INT4] == 0 && b.peak_ops_per_s[MP_COMPUTE_INT4] == 0);
    CHECK(strstr(d->source, "datasheet") != NULL);
}

static void test_roofline(const mp_device_profile *d)
{
    /* DeepSeek-V3 expert gate [2048, 7168] in w4g128: 4.25 bits/weight -> 7,798,784 bytes */
    const int64_t m = 2048, n = 7168, bytes = 2048 * 7168 * 17 / 32;
    CHECK(bytes == 7798784);
    mp_cost c;
    /* M = 16: memory 7798784 / 3.35e12 = 2.32799522e-6 s; compute 2*16*2048*7168 / 989.4e12 = 4.74794874e-7 s */
    CHECK_OK(mp_roofline(d, m, n, 16, bytes, MP_COMPUTE_FP16, &c));
    CHECK_NEAR(c.memory_s, 2.327995223880597e-6, 1e-18);
    CHECK_NEAR(c.compute_s, 469762048.0 / 989.4e12, 1e-20);
    CHECK_NEAR(c.compute_s, 4.747948736608045e-7, 1e-18);
    CHECK(c.memory_bound && c.seconds == c.memory_s && c.kind_used == MP_COMPUTE_FP16 && !c.measured);
    /* M = 4096: compute 2*4096*2048*7168 / 989.4e12 = 1.21547488e-4 s > memory */
    CHECK_OK(mp_roofline(d, m, n, 4096, bytes, MP_COMPUTE_FP16, &c));
    CHECK_NEAR(c.seconds, 1.2154748765716596e-4, 1e-16);
    CHECK(!c.memory_bound);
    /* the crossover: M* = bytes/BW * FLOPS / (2 m n) = 78.45 tokens */
    CHECK_OK(mp_roofline(d, m, n, 78, bytes, MP_COMPUTE_FP16, &c));
    CHECK(c.memory_bound);
    CHECK_OK(mp_roofline(d, m, n, 79, bytes, MP_COMPUTE_FP16, &c));
    CHECK(!c.memory_bound);
    /* w8a8 at M = 4096 runs at the int8 rate: half the fp16 time; w4a4 falls back to int8 on H100 */
    mp_compute_kind k;
    CHECK_OK(mp_compute_kind_for_act_bits(8, &k));
    CHECK(k == MP_COMPUTE_INT8);
    CHECK_OK(mp_roofline(d, m, n, 4096, m * n, k, &c));
    CHECK_NEAR(c.seconds, 2.0 * 4096 * 2048 * 7168 / 1978.9e12, 1e-16);
    CHECK_OK(mp_compute_kind_for_act_bits(4, &k));
    CHECK_OK(mp_roofline(d, m, n, 4096, m * n / 2, k, &c));
    CHECK(k == MP_COMPUTE_INT4 && c.kind_used == MP_COMPUTE_INT8);
    CHECK_NEAR(c.seconds, 2.0 * 4096 * 2048 * 7168 / 1978.9e12, 1e-16);
    /* a device with int4 tensor cores uses them */
    mp_device_profile a = *d;
    a.peak_ops_per_s[MP_COMPUTE_INT4] = 4 * 989.4e12;
    CHECK_OK(mp_roofline(&a, m, n, 4096, m * n / 2, MP_COMPUTE_INT4, &c));
    CHECK(c.kind_used == MP_COMPUTE_INT4);
    CHECK_ERR(mp_compute_kind_for_act_bits(6, &k), MP_EUSAGE, "6-bit activations");
    CHECK_ERR(mp_roofline(d, 0, n, 16, bytes, MP_COMPUTE_FP16, &c), MP_EUSAGE, "bad block [0, 7168]");
}

static void test_profile_errors(void)
{
    char path[512];
    snprintf(path, sizeof path, "%s/cost_profile_%d.json", MP_TEST_TMP, (int)getpid());
    mp_device_profile d;
    write_file(path, "{\"name\": \"x\", \"peak_ops_per_s\": {\"fp16\": 1e12}, \"source\": \"s\"}");
    CHECK_ERR(mp_device_profile_load(path, &d), MP_EFORMAT, "missing key 'hbm_bandwidth_bytes_per_s'");
    CHECK(strstr(mp_error_message(), path) != NULL);
    write_file(path, "{\"name\": \"x\", \"hbm_bandwidth_bytes_per_s\": 1e12, \"peak_ops_per_s\": {\"int8\": 1e12}, "
                     "\"source\": \"s\"}");
    CHECK_ERR(mp_device_profile_load(path, &d), MP_EFORMAT, "missing key 'peak_ops_per_s.fp16'");
    write_file(path, "{\"name\": \"x\", \"hbm_bandwidth_bytes_per_s\": 1e12, \"peak_ops_per_s\": {\"fp16\": 1e12}}");
    CHECK_ERR(mp_device_profile_load(path, &d), MP_EFORMAT, "missing key 'source'");
    write_file(path, "{\"name\": \"x\", \"hbm_bandwidth_bytes_per_s\": \"fast\", \"peak_ops_per_s\": {\"fp16\": 1e12}, "
                     "\"source\": \"s\"}");
    CHECK_ERR(mp_device_profile_load(path, &d), MP_EFORMAT, "key 'hbm_bandwidth_bytes_per_s' must be a number > 0");
    write_file(path, "{\"name\": \"x\", \"hbm_bandwidth_bytes_per_s\": 1e12, \"peak_ops_per_s\": {\"fp16\": 1e12, "
                     "\"int3\": 5}, \"source\": \"s\"}");
    CHECK_ERR(mp_device_profile_load(path, &d), MP_EFORMAT, "unknown key 'peak_ops_per_s.int3'");
    write_file(path, "{\"name\": \"x\", \"hbm_bandwith_bytes_per_s\": 1e12}");
    CHECK_ERR(mp_device_profile_load(path, &d), MP_EFORMAT, "unknown key 'hbm_bandwith_bytes_per_s'");
    write_file(path, "{\"name\": ");
    CHECK_ERR(mp_device_profile_load(path, &d), MP_EFORMAT, "not valid JSON");
    unlink(path);
    CHECK_ERR(mp_device_profile_load(path, &d), MP_ENOENT, path);
}

static void test_timings(const mp_device_profile *d)
{
    char path[512];
    snprintf(path, sizeof path, "%s/cost_timings_%d.csv", MP_TEST_TMP, (int)getpid());
    write_file(path, "# H100, measured\n"
                     "format, m, n, tokens, seconds\n"
                     "w4g128,2048,7168,16,5.0e-06\n"
                     "\n"
                     "w4g128,2048,7168,64,7.0e-06\n"
                     "w4g128,2048,7168,4096,1.5e-04\n"
                     "w8a8,2048,7168,16,9e-06\n");
    mp_timings tt;
    CHECK_OK(mp_timings_load(path, &tt));
    CHECK(tt.n == 4);
    const int64_t m = 2048, n = 7168, bytes = 7798784;
    mp_cost c;
    /* exact M */
    CHECK_OK(mp_block_cost(d, &tt, "w4g128", m, n, 16, bytes, MP_COMPUTE_FP16, &c));
    CHECK(c.measured == 1 && c.seconds == 5.0e-6);
    CHECK_NEAR(c.memory_s, 2.327995223880597e-6, 1e-18); /* the model's terms stay available */
    /* M = 32 between 16 and 64: 5e-6 + (16/48) * 2e-6 */
    CHECK_OK(mp_block_cost(d, &tt, "w4g128", m, n, 32, bytes, MP_COMPUTE_FP16, &c));
    CHECK(c.measured == 2);
    CHECK_NEAR(c.seconds, 5.0e-6 + 2.0e-6 / 3, 1e-18);
    /* outside the measured range, another shape or another format: the model */
    CHECK_OK(mp_block_cost(d, &tt, "w4g128", m, n, 8, bytes, MP_COMPUTE_FP16, &c));
    CHECK(!c.measured && c.seconds == c.memory_s);
    CHECK_OK(mp_block_cost(d, &tt, "w4g128", m, n, 8192, bytes, MP_COMPUTE_FP16, &c));
    CHECK(!c.measured);
    CHECK_OK(mp_block_cost(d, &tt, "w4g128", n, m, 16, bytes, MP_COMPUTE_FP16, &c));
    CHECK(!c.measured);
    CHECK_OK(mp_block_cost(d, &tt, "w3g128", m, n, 16, bytes, MP_COMPUTE_FP16, &c));
    CHECK(!c.measured);
    CHECK_OK(mp_block_cost(d, &tt, "w8a8", m, n, 16, m * n, MP_COMPUTE_INT8, &c));
    CHECK(c.measured == 1 && c.seconds == 9e-6);
    CHECK_OK(mp_block_cost(d, NULL, "w8a8", m, n, 16, m * n, MP_COMPUTE_INT8, &c));
    CHECK(!c.measured);
    mp_timings_free(&tt);

    /* errors name the file and the line */
    char want[600];
    write_file(path, "format,m,n,tokens,seconds\nw4g128,2048,7168,16,5e-6\nw4g128,2048,7168,16,6e-6\n");
    snprintf(want, sizeof want, "%s:3: timings: duplicate entry w4g128 [2048, 7168] M = 16", path);
    CHECK_ERR(mp_timings_load(path, &tt), MP_EFORMAT, want);
    write_file(path, "format,m,n,tokens,seconds\nw4g128,2048,7168,sixteen,5e-6\n");
    snprintf(want, sizeof want, "%s:2: field 'tokens' must be a positive integer, got 'sixteen'", path);
    CHECK_ERR(mp_timings_load(path, &tt), MP_EFORMAT, want);
    write_file(path, "format,m,n,tokens,seconds\nw4g128,2048,7168,16\n");
    CHECK_ERR(mp_timings_load(path, &tt), MP_EFORMAT, "expected 5 comma-separated fields");
    write_file(path, "format,m,n,tokens,seconds\nw4g128,2048,7168,16,-1\n");
    CHECK_ERR(mp_timings_load(path, &tt), MP_EFORMAT, "field 'seconds' must be a positive number, got '-1'");
    write_file(path, "fmt,rows,cols,M,s\n");
    CHECK_ERR(mp_timings_load(path, &tt), MP_EFORMAT, "expected the header 'format,m,n,tokens,seconds'");
    CHECK(tt.n == 0 && tt.t == NULL);
    unlink(path);
    CHECK_ERR(mp_timings_load(path, &tt), MP_ENOENT, path);
}

int main(void)
{
    mp_device_profile d;
    test_profile_file(&d);
    test_roofline(&d);
    test_profile_errors();
    test_timings(&d);
    return t_done("test_cost");
}
