/* test_bad_input.c - every kind of bad input named in the foundation issue
 * gets its documented error code and a message naming the file/tensor/key,
 * both from the library and from the `moepack inspect` command line (exit
 * status = -code, message on stderr). The bad checkpoints are made here from
 * the transformers fixtures. */
#define _GNU_SOURCE
#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <hdf5.h>
#include <unistd.h>

#include "fsutil.h"
#include "model.h"
#include "st_write.h"
#include "testutil.h"
#include "tokens.h"

static char g_root[512];

static void put(const char *dir, const char *name, const void *data, size_t n)
{
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    FILE *f = fopen(p, "wb");
    CHECK(f != NULL);
    if (f) {
        CHECK(fwrite(data, 1, n, f) == n);
        fclose(f);
    }
}

static void copy(const char *from_dir, const char *to_dir, const char *name, long truncate_by)
{
    char p[1024], *buf = NULL;
    size_t n = 0;
    snprintf(p, sizeof p, "%s/%s", from_dir, name);
    CHECK_OK(mp_read_file(p, &buf, &n));
    put(to_dir, name, buf, n - (size_t)truncate_by);
    free(buf);
}

static const char *mkcase(const char *name)
{
    static char d[600];
    snprintf(d, sizeof d, "%s/%s", g_root, name);
    mp_mkdir_p(d);
    return d;
}

/* a safetensors file from a header text, a declared header length and data bytes */
static void put_st(const char *dir, const char *header, uint64_t declared, size_t ndata)
{
    size_t hl = strlen(header), n = 8 + hl + ndata;
    unsigned char *b = calloc(n, 1);
    uint64_t L = declared ? declared : hl;
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(L >> (8 * i));
    memcpy(b + 8, header, hl);
    put(dir, "model.safetensors", b, n);
    free(b);
}

/* the shell command `cmd` (a moepack invocation) must exit with `code` and print `needle` on stderr */
static void check_cmd(const char *cmd, int code, const char *needle)
{
    char full[6000], errf[700], *err = NULL;
    snprintf(errf, sizeof errf, "%s/stderr.txt", g_root);
    snprintf(full, sizeof full, "%s >/dev/null 2>'%s'", cmd, errf);
    int st = system(full);
    size_t n;
    mp_read_file(errf, &err, &n);
    int ok = WIFEXITED(st) && WEXITSTATUS(st) == -code && err && (code == 0 || strstr(err, needle));
    t_checks++;
    if (!ok) {
        t_failures++;
        fprintf(stderr, "%s: expected exit %d with '%s', got status %d, stderr: %s\n", cmd, -code, needle,
                WIFEXITED(st) ? WEXITSTATUS(st) : -1, err ? err : "(none)");
    }
    free(err);
    unlink(errf);
}

/* `moepack inspect dir` must exit with `code` and print `needle` on stderr */
static void check_cli(const char *dir, int code, const char *needle)
{
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "'%s' inspect '%s'", MOEPACK_BIN, dir);
    check_cmd(cmd, code, needle);
}

static void check_model(const char *dir, int code, const char *needle)
{
    mp_model *m = NULL;
    CHECK_ERR(mp_model_open(dir, &m), code, needle);
    CHECK(m == NULL);
    check_cli(dir, code, needle);
}

static char *fixture_config(void)
{
    char *t = NULL;
    size_t n;
    CHECK_OK(mp_read_file(MP_FIXTURES "/mixtral_f32/config.json", &t, &n));
    return t;
}

/* config.json of mixtral_f32 with `from` replaced by `to` */
static void config_case(const char *name, const char *from, const char *to, int code, const char *needle)
{
    const char *d = mkcase(name);
    char *t = fixture_config(), *at = strstr(t, from);
    CHECK(at != NULL);
    if (!at)
        return;
    size_t n = strlen(t) + strlen(to) + 1;
    char *o = malloc(n);
    snprintf(o, n, "%.*s%s%s", (int)(at - t), t, to, at + strlen(from));
    put(d, "config.json", o, strlen(o));
    copy(MP_FIXTURES "/mixtral_f32", d, "model.safetensors", 0);
    check_model(d, code, needle);
    free(o);
    free(t);
}

static void header_case(const char *name, const char *header, uint64_t declared, size_t ndata, int code,
                        const char *needle)
{
    const char *d = mkcase(name);
    char *t = fixture_config();
    put(d, "config.json", t, strlen(t));
    free(t);
    put_st(d, header, declared, ndata);
    char f[700];
    snprintf(f, sizeof f, "%s/model.safetensors", d);
    mp_ckpt *c = NULL;
    CHECK_ERR(mp_ckpt_open_file(f, &c), code, needle);
    CHECK_ERR(mp_ckpt_open_file(f, &c), code, "model.safetensors");
    check_cli(d, code, needle);
}

/* copy mixtral_f32 without one tensor */
typedef struct {
    mp_ckpt *src;
    const mp_tensor **keep;
} drop_ctx;

static int drop_fill(void *ctx, int idx, float *out, int64_t numel)
{
    drop_ctx *x = ctx;
    return mp_ckpt_read_f32(x->src, x->keep[idx], 0, numel, out);
}

static void missing_expert_case(void)
{
    const char *d = mkcase("missing_expert");
    const char *gone = "model.layers.1.block_sparse_moe.experts.3.w2.weight";
    copy(MP_FIXTURES "/mixtral_f32", d, "config.json", 0);
    drop_ctx x = {0};
    CHECK_OK(mp_ckpt_open_file(MP_FIXTURES "/mixtral_f32/model.safetensors", &x.src));
    if (!x.src)
        return;
    mp_st_decl *decl = calloc((size_t)x.src->ntensors, sizeof *decl);
    x.keep = calloc((size_t)x.src->ntensors, sizeof *x.keep);
    int n = 0;
    for (int i = 0; i < x.src->ntensors; i++) {
        const mp_tensor *t = &x.src->tensors[i];
        if (strcmp(t->name, gone) == 0)
            continue;
        decl[n].name = t->name;
        decl[n].dtype = MP_DT_F32;
        decl[n].ndim = t->ndim;
        memcpy(decl[n].shape, t->shape, sizeof decl[n].shape);
        x.keep[n++] = t;
    }
    CHECK(n == x.src->ntensors - 1);
    CHECK_OK(mp_st_write(d, decl, n, 0, drop_fill, &x));
    check_model(d, MP_ENOENT, gone);
    free(decl);
    free(x.keep);
    mp_ckpt_close(x.src);
}

static void tokens_cases(void)
{
    const char *d = mkcase("tokens");
    char p[700];
    snprintf(p, sizeof p, "%s/tokens.h5", d);
    int32_t ids[6] = {1, 2, 3, 4, 99, 5};
    CHECK_OK(mp_tokens_write(p, ids, 2, 3));
    mp_tokens t = {0};
    CHECK_OK(mp_tokens_read(p, 100, &t));
    CHECK(t.n_seq == 2 && t.seq_len == 3 && t.ids[4] == 99);
    mp_tokens_free(&t);
    CHECK_ERR(mp_tokens_read(p, 50, &t), MP_EFORMAT, "[1, 1]");
    snprintf(p, sizeof p, "%s/none.h5", d);
    CHECK_ERR(mp_tokens_read(p, 50, &t), MP_ENOENT, "none.h5");
}

/* an HDF5 file with dataset `tokens` of the given type and shape (values 1, 2, 3, ...) */
static void put_tokens(const char *path, hid_t type, int rank, hsize_t a, hsize_t b)
{
    hsize_t dims[2] = {a, b};
    int32_t *v = malloc(sizeof(int32_t) * (size_t)(a * (b ? b : 1)));
    for (hsize_t i = 0; i < a * (b ? b : 1); i++)
        v[i] = (int32_t)(i % 100) + 1;
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), sp = H5Screate_simple(rank, dims, NULL);
    hid_t ds = H5Dcreate2(f, "tokens", type, sp, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
    CHECK(ds >= 0 && H5Dwrite(ds, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) >= 0);
    H5Dclose(ds), H5Sclose(sp), H5Fclose(f);
    free(v);
}

static void calibrate_cases(void)
{
    const char *d = mkcase("calibrate");
    char tok[700], tok2[700], cmd[4000], job[700], ck[700];
    const char *model = MP_FIXTURES "/mixtral_f32"; /* vocab 128, 256 positions */
    snprintf(ck, sizeof ck, "%s/ckpt", d);
#define CALIB(tokfile, extra)                                                                                      \
    snprintf(cmd, sizeof cmd, "'%s' calibrate --quiet --set model.path=%s --set calibration.tokens=%s "          \
             "--set checkpoint.dir=%s %s", MOEPACK_BIN, model, tokfile, ck, extra)
    snprintf(tok, sizeof tok, "%s/vocab.h5", d);
    int32_t ids[8] = {1, 2, 3, 4, 5, 6, 130, 7};
    CHECK_OK(mp_tokens_write(tok, ids, 2, 4));
    CALIB(tok, "");
    check_cmd(cmd, MP_EFORMAT, "token id 130 at [1, 2] is outside the vocabulary");
    snprintf(tok, sizeof tok, "%s/float.h5", d);
    put_tokens(tok, H5T_IEEE_F32LE, 2, 2, 4);
    CALIB(tok, "");
    check_cmd(cmd, MP_EFORMAT, "must be int32");
    snprintf(tok, sizeof tok, "%s/flat.h5", d);
    put_tokens(tok, H5T_STD_I32LE, 1, 8, 0);
    CALIB(tok, "");
    check_cmd(cmd, MP_EFORMAT, "must be 2-D");
    snprintf(tok, sizeof tok, "%s/long.h5", d);
    put_tokens(tok, H5T_STD_I32LE, 2, 1, 300);
    CALIB(tok, "");
    check_cmd(cmd, MP_EFORMAT, "longer than the model's 256 positions");
    /* a checkpoint directory belongs to one model; other tokens only recompute the calibration */
    snprintf(tok, sizeof tok, "%s/a.h5", d);
    put_tokens(tok, H5T_STD_I32LE, 2, 2, 8);
    snprintf(tok2, sizeof tok2, "%s/b.h5", d);
    put_tokens(tok2, H5T_STD_I32LE, 2, 3, 8);
    CALIB(tok, "");
    check_cmd(cmd, MP_OK, "");
    CALIB(tok2, "");
    check_cmd(cmd, MP_OK, "");
    snprintf(cmd, sizeof cmd,
             "'%s' calibrate --quiet --set model.path=%s/qwen3_moe_f32 --set calibration.tokens=%s "
             "--set checkpoint.dir=%s",
             MOEPACK_BIN, MP_FIXTURES, tok2, ck);
    check_cmd(cmd, MP_EMISMATCH, "made by another job: the model differs");
    CALIB(tok2, "--fresh");
    check_cmd(cmd, MP_OK, "");
    CALIB(tok2, "--set calibration.min_tokens=x");
    check_cmd(cmd, MP_EUSAGE, "calibration.min_tokens=x");
    /* NaN in an expert weight: exit 10 naming the tensor and element */
    {
        char md[700];
        snprintf(md, sizeof md, "%s/nan_model", d);
        mp_mkdir_p(md);
        copy(MP_FIXTURES "/qwen3_moe_f32", md, "config.json", 0);
        copy(MP_FIXTURES "/qwen3_moe_f32", md, "model.safetensors", 0);
        char mf[800];
        snprintf(mf, sizeof mf, "%s/model.safetensors", md);
        mp_ckpt *ck = NULL;
        CHECK_OK(mp_ckpt_open_file(mf, &ck));
        const mp_tensor *t = ck ? mp_ckpt_find(ck, "model.layers.1.mlp.experts.2.up_proj.weight") : NULL;
        CHECK(t != NULL);
        if (t) {
            off_t off = (off_t)(t->data - ck->files[0].map) + 5 * 4;
            float nan = NAN;
            FILE *fp = fopen(mf, "r+b");
            CHECK(fp && fseeko(fp, off, SEEK_SET) == 0 && fwrite(&nan, 4, 1, fp) == 1);
            if (fp)
                fclose(fp);
        }
        mp_ckpt_close(ck);
        snprintf(cmd, sizeof cmd, "'%s' run --quiet --set model.path=%s --set calibration.tokens=%s "
                 "--set checkpoint.dir=%s/nan_ckpt", MOEPACK_BIN, md, tok, d);
        check_cmd(cmd, MP_ENUMERIC, "tensor model.layers.1.mlp.experts.2.up_proj.weight: non-finite value at element 5");
    }
#undef CALIB
    /* job file errors name the file and line */
    snprintf(job, sizeof job, "%s/job.ini", d);
    const char *ini = "[model]\npath = m\n[calibration]\ntokenz = t.h5\n";
    put(d, "job.ini", ini, strlen(ini));
    snprintf(cmd, sizeof cmd, "'%s' calibrate --job %s", MOEPACK_BIN, job);
    check_cmd(cmd, MP_EUSAGE, "job.ini:4: ");
    snprintf(cmd, sizeof cmd, "'%s' calibrate --job %s/nope.ini", MOEPACK_BIN, d);
    check_cmd(cmd, MP_ENOENT, "nope.ini");
}

int main(void)
{
    snprintf(g_root, sizeof g_root, "%s/bad_input.%d", MP_TEST_TMP, (int)getpid());
    CHECK_OK(mp_mkdir_p(g_root));

    /* missing config.json */
    const char *d = mkcase("no_config");
    copy(MP_FIXTURES "/mixtral_f32", d, "model.safetensors", 0);
    check_model(d, MP_ENOENT, "config.json");

    config_case("unknown_arch", "\"model_type\": \"mixtral\"", "\"model_type\": \"llama\"", MP_ECONFIG, "llama");
    config_case("missing_key", "\"hidden_size\": 64,", "", MP_ECONFIG, "hidden_size");
    config_case("mistyped_key", "\"num_local_experts\": 4", "\"num_local_experts\": \"four\"", MP_ECONFIG,
                "num_local_experts");
    config_case("not_json", "{", "{{", MP_ECONFIG, "config.json");

    header_case("header_len", "{}", 1u << 20, 0, MP_EFORMAT, "header length");
    header_case("header_json", "{\"x\": {\"dtype\": ", 0, 8, MP_EFORMAT, "JSON");
    header_case("unknown_dtype", "{\"x\":{\"dtype\":\"F7\",\"shape\":[2],\"data_offsets\":[0,8]}}", 0, 8, MP_EFORMAT,
                "F7");
    header_case("offsets_range", "{\"x\":{\"dtype\":\"F32\",\"shape\":[25],\"data_offsets\":[0,100]}}", 0, 8,
                MP_EFORMAT, "'x'");
    header_case("overlap",
                "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                0, 12, MP_EFORMAT, "overlap");
    header_case("shape_bytes", "{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 0, 8, MP_EFORMAT,
                "'x'");

    missing_expert_case();

    /* a shard named in the index but absent */
    d = mkcase("shard_missing");
    const char *src = MP_FIXTURES "/olmoe_f32_sharded";
    copy(src, d, "config.json", 0);
    copy(src, d, "model.safetensors.index.json", 0);
    copy(src, d, "model-00001-of-00004.safetensors", 0);
    copy(src, d, "model-00002-of-00004.safetensors", 0);
    copy(src, d, "model-00004-of-00004.safetensors", 0);
    check_model(d, MP_ENOENT, "model-00003-of-00004.safetensors");

    /* truncated file */
    d = mkcase("truncated");
    copy(MP_FIXTURES "/mixtral_f32", d, "config.json", 0);
    copy(MP_FIXTURES "/mixtral_f32", d, "model.safetensors", 100);
    check_model(d, MP_EFORMAT, "model.safetensors");

    tokens_cases();
    calibrate_cases();

    /* command-line usage errors exit with 2 */
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "'%s' frobnicate 2>/dev/null", MOEPACK_BIN);
    int st = system(cmd);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 2);
    snprintf(cmd, sizeof cmd, "'%s' synth --arch gpt2 --out %s/x 2>/dev/null", MOEPACK_BIN, g_root);
    st = system(cmd);
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 2);

    if (t_failures == 0) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
        CHECK(system(cmd) == 0);
    }
    return t_done("bad_input");
}
