/* test_bad_cli.c - the hardening suite (issue 10): malformed checkpoints, index files, configs,
 * token files and job files, each run through the command line (`moepack inspect`, `eval`,
 * `calibrate --set ...`, `calibrate --job ...`).
 *
 * Every case builds its inputs in its own directory (from the transformers fixtures, edited here
 * in C), runs the commands it names, and checks: the exit status, the message (stderr, which must
 * start with "moepack: error:"), no sanitizer report, nothing created in the output and
 * checkpoint directories, and the model directory unchanged. Commands run under `timeout`, so a
 * reader blocking on a FIFO fails the test instead of hanging it. A few library-level checks
 * follow (messages built from the current message, fuzzing regressions). */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <dirent.h>
#include <hdf5.h>
#include <math.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "checked.h"
#include "factors.h"
#include "fsutil.h"
#include "h5util.h"
#include "model.h"
#include "safetensors.h"
#include "st_write.h"
#include "testutil.h"
#include "tokens.h"

#define FX MP_FIXTURES
enum { INSPECT = 1, EVAL = 2, CALIB = 4, JOB = 8 };

static char g_root[512];   /* this run's scratch directory */
static char g_tokens[600]; /* a valid tokens file for the fixture models (vocab 128) */
static char g_case[700];   /* the current case's directory */
static char g_model[800];  /* the model the commands use */
static char g_tok[800];    /* the tokens file the commands use */
static char g_extra[6000]; /* extra command-line arguments */
static int g_ncases = 0;

/* ---- files -------------------------------------------------------------------------------- */

static void path_in(char *buf, size_t cap, const char *dir, const char *name)
{
    snprintf(buf, cap, "%s/%s", dir, name);
}

static void put(const char *dir, const char *name, const void *data, size_t n)
{
    char p[1200];
    path_in(p, sizeof p, dir, name);
    FILE *f = fopen(p, "wb");
    CHECK(f != NULL);
    if (f) {
        CHECK(n == 0 || fwrite(data, 1, n, f) == n);
        fclose(f);
    }
}

static void put_text(const char *dir, const char *name, const char *text) { put(dir, name, text, strlen(text)); }

static void copy_file(const char *from_dir, const char *to_dir, const char *name)
{
    char p[1200], *buf = NULL;
    size_t n = 0;
    path_in(p, sizeof p, from_dir, name);
    CHECK_OK(mp_read_file(p, &buf, &n));
    put(to_dir, name, buf, n);
    free(buf);
}

/* a fresh model directory in the case directory with config.json and model.safetensors of `fixture` */
static void model_from(const char *fixture)
{
    char src[600];
    snprintf(src, sizeof src, "%s/%s", FX, fixture);
    snprintf(g_model, sizeof g_model, "%s/model", g_case);
    CHECK_OK(mp_mkdir_p(g_model));
    copy_file(src, g_model, "config.json");
    copy_file(src, g_model, "model.safetensors");
}

/* the sharded OLMoE fixture (index + 4 shards) */
static void model_sharded(void)
{
    const char *src = FX "/olmoe_f32_sharded";
    snprintf(g_model, sizeof g_model, "%s/model", g_case);
    CHECK_OK(mp_mkdir_p(g_model));
    copy_file(src, g_model, "config.json");
    copy_file(src, g_model, "model.safetensors.index.json");
    char n[64];
    for (int i = 1; i <= 4; i++) {
        snprintf(n, sizeof n, "model-%05d-of-00004.safetensors", i);
        copy_file(src, g_model, n);
    }
}

/* config.json of the current model: set key (a path "a.b" sets b inside object a) to a JSON text */
static void config_set(const char *key, const char *json_value)
{
    char p[1000], *t = NULL;
    size_t n;
    path_in(p, sizeof p, g_model, "config.json");
    CHECK_OK(mp_read_file(p, &t, &n));
    cJSON *root = cJSON_Parse(t), *obj = root;
    free(t);
    CHECK(root != NULL);
    if (!root)
        return;
    char k[128];
    snprintf(k, sizeof k, "%s", key);
    char *dot = strchr(k, '.');
    if (dot) {
        *dot = '\0';
        obj = cJSON_GetObjectItem(root, k);
        CHECK(cJSON_IsObject(obj));
    }
    const char *leaf = dot ? dot + 1 : k;
    cJSON_DeleteItemFromObject(obj, leaf);
    cJSON_AddItemToObject(obj, leaf, cJSON_CreateRaw(json_value));
    char *out = cJSON_Print(root);
    cJSON_Delete(root);
    put_text(g_model, "config.json", out);
    free(out);
}

/* model.safetensors of the current model from a header text, a declared header length (0: the text's)
 * and `ndata` data bytes (1.0f values) */
static void put_st_named(const char *dir, const char *name, const char *header, uint64_t declared, size_t ndata)
{
    size_t hl = strlen(header), n = 8 + hl + ndata;
    unsigned char *b = calloc(n, 1);
    uint64_t L = declared ? declared : hl;
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)(L >> (8 * i));
    memcpy(b + 8, header, hl);
    float one = 1.0f;
    for (size_t i = 0; i + 4 <= ndata; i += 4)
        memcpy(b + 8 + hl + i, &one, 4);
    put(dir, name, b, n);
    free(b);
}

static void put_st(const char *header, uint64_t declared, size_t ndata)
{
    put_st_named(g_model, "model.safetensors", header, declared, ndata);
}

/* rewrite the current model's safetensors through the writer; edit() may rename, reshape, retype or
 * add a tensor (values are read from the source when the element count matches, else 0.5) */
typedef struct {
    mp_ckpt *src;
    const mp_tensor **from;
} rw_ctx;

static int rw_fill(void *ctx, int idx, float *out, int64_t numel)
{
    rw_ctx *x = ctx;
    if (x->from[idx] && x->from[idx]->numel == numel)
        return mp_ckpt_read_f32(x->src, x->from[idx], 0, numel, out);
    for (int64_t i = 0; i < numel; i++)
        out[i] = 0.5f;
    return 0;
}

typedef int (*edit_fn)(mp_st_decl *d, const mp_tensor **from, int n, int cap);

static void rewrite_model(edit_fn edit)
{
    char p[1000], tmpdir[1000];
    path_in(p, sizeof p, g_model, "model.safetensors");
    rw_ctx x = {0};
    CHECK_OK(mp_ckpt_open_file(p, &x.src));
    if (!x.src)
        return;
    int cap = x.src->ntensors + 4, n = 0;
    mp_st_decl *decl = calloc((size_t)cap, sizeof *decl);
    x.from = calloc((size_t)cap, sizeof *x.from);
    for (int i = 0; i < x.src->ntensors; i++, n++) {
        const mp_tensor *t = &x.src->tensors[i];
        decl[n].name = t->name;
        decl[n].dtype = MP_DT_F32;
        decl[n].ndim = t->ndim;
        memcpy(decl[n].shape, t->shape, sizeof decl[n].shape);
        x.from[n] = t;
    }
    n = edit(decl, x.from, n, cap);
    snprintf(tmpdir, sizeof tmpdir, "%s/rewrite", g_case);
    CHECK_OK(mp_mkdir_p(tmpdir));
    CHECK_OK(mp_st_write(tmpdir, decl, n, 0, rw_fill, &x));
    mp_ckpt_close(x.src);
    char q[1100];
    path_in(q, sizeof q, tmpdir, "model.safetensors");
    CHECK(rename(q, p) == 0);
    rmdir(tmpdir);
    free(decl);
    free(x.from);
}

/* an HDF5 tokens file: dataset `name` of file type `type`, rank 1-3, values 1, 2, 3, ... (or `v`);
 * chunked: a chunked dataset; write: 0 leaves it unwritten */
static void put_tokens_h5(const char *path, const char *name, hid_t type, int rank, const hsize_t *dims, int chunked,
                          int write, const int32_t *v)
{
    hsize_t total = 1;
    for (int r = 0; r < rank; r++)
        total *= dims[r];
    int32_t *buf = NULL;
    if (write) {
        buf = malloc(sizeof(int32_t) * (size_t)(total ? total : 1));
        for (hsize_t i = 0; i < total; i++)
            buf[i] = v ? v[i] : (int32_t)(i % 100) + 1;
    }
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT), sp = H5Screate_simple(rank, dims, NULL);
    hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE);
    if (chunked) {
        hsize_t ch[3] = {1, 1, 1};
        for (int r = 0; r < rank; r++)
            ch[r] = dims[r] < 64 ? (dims[r] ? dims[r] : 1) : 64;
        H5Pset_chunk(dcpl, rank, ch);
    }
    hid_t ds = H5Dcreate2(f, name, type, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    CHECK(ds >= 0);
    if (write && ds >= 0)
        CHECK(H5Dwrite(ds, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, buf) >= 0);
    H5Dclose(ds), H5Pclose(dcpl), H5Sclose(sp), H5Fclose(f);
    free(buf);
}

static void tokens_2d(const char *file, hid_t type, hsize_t a, hsize_t b)
{
    snprintf(g_tok, sizeof g_tok, "%s/%s", g_case, file);
    hsize_t d[2] = {a, b};
    put_tokens_h5(g_tok, "tokens", type, 2, d, 0, 1, NULL);
}

/* ---- running and checking ------------------------------------------------------------------ */

/* names, sizes and mtimes of the files in dir, as one string */
static void snapshot(const char *dir, char *out, size_t cap)
{
    out[0] = '\0';
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    size_t o = 0;
    while ((e = readdir(d)) && o + 200 < cap) {
        char p[1200];
        struct stat st;
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue; /* ".." is the shared parent: other cases' directories change its mtime */
        path_in(p, sizeof p, dir, e->d_name);
        if (lstat(p, &st) == 0)
            o += (size_t)snprintf(out + o, cap - o, "%s:%lld:%lld;", e->d_name, (long long)st.st_size,
                                  (long long)st.st_mtime);
    }
    closedir(d);
}

static int exists(const char *p)
{
    struct stat st;
    return lstat(p, &st) == 0;
}

/* run `args` (after the binary) and check status, message, sanitizers and the directories */
static void run_check(const char *name, const char *args, int code, const char *needle)
{
    char cmd[16000], outf[800], errf[800], o_dir[800], k_dir[800], before[8192], after[8192];
    snprintf(outf, sizeof outf, "%s/stdout.txt", g_case);
    snprintf(errf, sizeof errf, "%s/stderr.txt", g_case);
    snprintf(o_dir, sizeof o_dir, "%s/out", g_case);
    snprintf(k_dir, sizeof k_dir, "%s/ckpt", g_case);
    snapshot(g_model, before, sizeof before);
    snprintf(cmd, sizeof cmd, "timeout 120 '%s' %s >'%s' 2>'%s'", MOEPACK_BIN, args, outf, errf);
    int st = system(cmd);
    char *out = NULL, *err = NULL;
    size_t n;
    mp_read_file(outf, &out, &n);
    mp_read_file(errf, &err, &n);
    snapshot(g_model, after, sizeof after);
    const char *text = code == 0 ? out : err;
    int status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    const char *why = NULL;
    if (status != -code)
        why = status == 124 ? "timed out (blocked?)" : "wrong exit status";
    else if (!text || !strstr(text, needle))
        why = "message does not contain the expected text";
    else if (code != 0 && strncmp(err, "moepack: error: ", 16) != 0 && !strstr(err, "] moepack: error: "))
        why = "stderr does not start with 'moepack: error: '";
    else if (err && (strstr(err, "Sanitizer") || strstr(err, "runtime error")))
        why = "sanitizer report";
    else if (exists(o_dir) || exists(k_dir))
        why = "something was written into the output or checkpoint directory";
    else if (strcmp(before, after) != 0)
        why = "the model directory changed";
    t_checks++;
    if (why) {
        t_failures++;
        fprintf(stderr,
                "FAILED %s: %s\n  command: moepack %.300s\n  expected exit %d with '%s', got %d\n  stderr: %s\n", name,
                why, args, -code, needle, status, err ? err : "(none)");
    }
    free(out);
    free(err);
}

/* run the commands of `cmds` against g_model / g_tok (and g_case/job.ini for JOB) */
static void expect(const char *name, int cmds, int code, const char *needle)
{
    char args[12000];
    g_ncases++;
    if (cmds & INSPECT) {
        snprintf(args, sizeof args, "inspect '%s' %s", g_model, g_extra);
        run_check(name, args, code, needle);
    }
    if (cmds & EVAL) {
        snprintf(args, sizeof args, "eval --model '%s' --tokens '%s' %s", g_model, g_tok, g_extra);
        run_check(name, args, code, needle);
    }
    if (cmds & CALIB) {
        snprintf(args, sizeof args,
                 "calibrate --quiet --set 'model.path=%s' --set 'calibration.tokens=%s' --set 'output.dir=%s/out' "
                 "--set 'checkpoint.dir=%s/ckpt' %s",
                 g_model, g_tok, g_case, g_case, g_extra);
        run_check(name, args, code, needle);
    }
    if (cmds & JOB) {
        snprintf(args, sizeof args,
                 "calibrate --quiet --job '%s/job.ini' --set 'output.dir=%s/out' --set 'checkpoint.dir=%s/ckpt' %s",
                 g_case, g_case, g_case, g_extra);
        run_check(name, args, code, needle);
    }
}

/* start a case: its directory, the default model (the Mixtral fixture, used in place) and tokens */
static void begin(const char *name)
{
    snprintf(g_case, sizeof g_case, "%s/%s", g_root, name);
    CHECK_OK(mp_mkdir_p(g_case));
    snprintf(g_model, sizeof g_model, "%s/mixtral_f32", FX);
    snprintf(g_tok, sizeof g_tok, "%s", g_tokens);
    g_extra[0] = '\0';
}

/* ---- the cases ------------------------------------------------------------------------------ */

static const char *ST_CFG = FX "/mixtral_f32"; /* a valid config for hand-made safetensors */

/* a model directory with the fixture's config and a hand-made model.safetensors */
static void st_case(const char *name, const char *header, uint64_t declared, size_t ndata, int code, const char *needle)
{
    begin(name);
    snprintf(g_model, sizeof g_model, "%s/model", g_case);
    CHECK_OK(mp_mkdir_p(g_model));
    copy_file(ST_CFG, g_model, "config.json");
    put_st(header, declared, ndata);
    expect(name, INSPECT | CALIB, code, needle);
}

static void safetensors_cases(void)
{
    /* element counts that overflow int64 (to 0) before any check: 2^64 elements in 0 bytes */
    st_case("st_shape_2p64_in_0_bytes",
            "{\"x\":{\"dtype\":\"F32\",\"shape\":[65536,65536,65536,65536],\"data_offsets\":[0,0]}}", 0, 0, MP_EFORMAT,
            "tensor 'x': shape has more than 2^50 elements");
    st_case("st_shape_2p32_squared",
            "{\"x\":{\"dtype\":\"BF16\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,0]}}", 0, 0, MP_EFORMAT,
            "shape has more than 2^50 elements");
    st_case("st_dim_2p53", "{\"x\":{\"dtype\":\"F32\",\"shape\":[9007199254740992],\"data_offsets\":[0,4]}}", 0, 4,
            MP_EFORMAT, "shape[0] = 9007199254740992 is larger than 2^50");
    st_case("st_dim_near_2p63", "{\"x\":{\"dtype\":\"F32\",\"shape\":[1,9223372036854775807],\"data_offsets\":[0,4]}}",
            0, 4, MP_EFORMAT, "shape[1] is not a non-negative integer");
    st_case("st_zero_dim_with_huge_dims",
            "{\"x\":{\"dtype\":\"F32\",\"shape\":[0,1099511627776,1099511627776],\"data_offsets\":[0,0]}}", 0, 0,
            MP_EFORMAT, "more than 2^50 elements");
    st_case("st_zero_span_nonzero_shape", "{\"x\":{\"dtype\":\"F32\",\"shape\":[3,4],\"data_offsets\":[8,8]}}", 0, 8,
            MP_EFORMAT, "shape x dtype size is 12 elements x 4 bytes but data_offsets span 0 bytes");
    st_case("st_negative_dim", "{\"x\":{\"dtype\":\"F32\",\"shape\":[-1,4],\"data_offsets\":[0,16]}}", 0, 16,
            MP_EFORMAT, "shape[0] is not a non-negative integer");
    st_case("st_fractional_dim", "{\"x\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,8]}}", 0, 8, MP_EFORMAT,
            "shape[0] is not a non-negative integer");
    st_case("st_nine_dims", "{\"x\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 0, 4,
            MP_EFORMAT, "at most 8 integers");
    st_case("st_offsets_reversed", "{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", 0, 8, MP_EFORMAT,
            "data_offsets [8, 4] outside the data area");
    st_case("st_offsets_past_end", "{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 0, 8,
            MP_EFORMAT, "(file truncated?)");
    st_case("st_offset_1e20", "{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,1e20]}}", 0, 16, MP_EFORMAT,
            "data_offsets must be two non-negative integers");
    /* an overlap hidden behind an empty tensor: sorted neighbours alone do not show it */
    st_case("st_overlap_behind_empty",
            "{\"a\":{\"dtype\":\"F32\",\"shape\":[16],\"data_offsets\":[0,64]},"
            "\"b\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[16,16]},"
            "\"c\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[32,40]}}",
            0, 64, MP_EFORMAT, "tensors 'a' and 'c' overlap");
    st_case("st_header_length_2p63", "{}", (uint64_t)1 << 63, 0, MP_EFORMAT,
            "header length 9223372036854775808 exceeds the file size");
    st_case("st_header_array", "[1, 2, 3]", 0, 0, MP_EFORMAT, "header is not a JSON object");
    st_case("st_entry_not_object", "{\"x\": 5}", 0, 0, MP_EFORMAT, "tensor 'x': header entry is not an object");
    /* a file with no tensors is valid; the model check then finds nothing */
    st_case("st_no_tensors", "{}", 0, 0, MP_ENOENT, "missing tensor 'model.embed_tokens.weight'");

    begin("st_file_too_short");
    snprintf(g_model, sizeof g_model, "%s/model", g_case);
    CHECK_OK(mp_mkdir_p(g_model));
    copy_file(ST_CFG, g_model, "config.json");
    put(g_model, "model.safetensors", "\x10\0\0\0\0", 5);
    expect("st_file_too_short", INSPECT, MP_EFORMAT, "too short for a safetensors header");

    /* the input libFuzzer found (UB on a header without tensors) */
    begin("st_fuzz_regression");
    snprintf(g_model, sizeof g_model, "%s/model", g_case);
    CHECK_OK(mp_mkdir_p(g_model));
    copy_file(ST_CFG, g_model, "config.json");
    {
        char *b = NULL;
        size_t n;
        CHECK_OK(mp_read_file(FX "/fuzz-regressions/safetensors-no-tensors-ub.safetensors", &b, &n));
        put(g_model, "model.safetensors", b, n);
        free(b);
    }
    expect("st_fuzz_regression", INSPECT, MP_ENOENT, "missing tensor");

    begin("st_is_directory");
    model_from("mixtral_f32");
    {
        char p[1000];
        path_in(p, sizeof p, g_model, "model.safetensors");
        unlink(p);
        CHECK(mkdir(p, 0755) == 0);
    }
    expect("st_is_directory", INSPECT | CALIB, MP_EFORMAT, "model.safetensors: is a directory, not a regular file");

    begin("st_is_fifo");
    model_from("mixtral_f32");
    {
        char p[1000];
        path_in(p, sizeof p, g_model, "model.safetensors");
        unlink(p);
        CHECK(mkfifo(p, 0644) == 0);
    }
    expect("st_is_fifo", INSPECT, MP_EFORMAT, "model.safetensors: is a FIFO, not a regular file");
}

static int edit_int_weight(mp_st_decl *d, const mp_tensor **from, int n, int cap)
{
    (void)from, (void)cap;
    for (int i = 0; i < n; i++)
        if (!strcmp(d[i].name, "model.layers.0.self_attn.q_proj.weight"))
            d[i].dtype = MP_DT_F16; /* the writer makes floats only: retyped below by hand */
    return n;
}

static void model_cases(void)
{
    /* an integer weight: written as F16, then the dtype string patched to I16 (same size) */
    begin("weight_integer_dtype");
    model_from("mixtral_f32");
    rewrite_model(edit_int_weight);
    {
        char p[1000], *b = NULL;
        size_t n;
        path_in(p, sizeof p, g_model, "model.safetensors");
        CHECK_OK(mp_read_file(p, &b, &n));
        char *at = b ? strstr(b + 8, "\"F16\"") : NULL;
        CHECK(at != NULL);
        if (at)
            memcpy(at, "\"I16\"", 5);
        put(g_model, "model.safetensors", b, n);
        free(b);
    }
    expect("weight_integer_dtype", INSPECT | CALIB, MP_EFORMAT,
           "tensor 'model.layers.0.self_attn.q_proj.weight' has non-float dtype I16");
}

static void index_case(const char *name, const char *from, const char *to, int code, const char *needle)
{
    begin(name);
    model_sharded();
    char p[1000], *t = NULL;
    size_t n;
    path_in(p, sizeof p, g_model, "model.safetensors.index.json");
    CHECK_OK(mp_read_file(p, &t, &n));
    char *at = t ? strstr(t, from) : NULL;
    CHECK(at != NULL);
    if (at) {
        size_t m = strlen(t) + strlen(to) + 1;
        char *o = malloc(m);
        snprintf(o, m, "%.*s%s%s", (int)(at - t), t, to, at + strlen(from));
        put_text(g_model, "model.safetensors.index.json", o);
        free(o);
    }
    free(t);
    expect(name, INSPECT | CALIB, code, needle);
}

static void index_cases(void)
{
    /* the first entry of the fixture's weight_map is "lm_head.weight": "model-00001-of-00004.safetensors" */
    const char *first = "\"model-00001-of-00004.safetensors\"";
    index_case("idx_dotdot", first, "\"../model-00001-of-00004.safetensors\"", MP_EFORMAT,
               "weight_map entry 'lm_head.weight': shard name '../model-00001-of-00004.safetensors' contains a "
               "directory separator");
    index_case("idx_absolute", first, "\"/etc/passwd\"", MP_EFORMAT, "shard name '/etc/passwd' is an absolute path");
    index_case("idx_subdirectory", first, "\"sub/model.safetensors\"", MP_EFORMAT, "contains a directory separator");
    index_case("idx_parent_only", first, "\"..\"", MP_EFORMAT, "shard name '..' names a directory");
    index_case("idx_backslash", first, "\"..\\\\x.safetensors\"", MP_EFORMAT, "contains a directory separator");
    index_case("idx_control_char", first, "\"a\\nb.safetensors\"", MP_EFORMAT,
               "shard name 'a\\x0ab.safetensors' contains a control character");
    index_case("idx_empty_name", first, "\"\"", MP_EFORMAT, "shard name '' is empty");
    index_case("idx_not_a_string", first, "17", MP_EFORMAT, "weight_map entry 'lm_head.weight' is not a file name");
    index_case("idx_duplicate_tensor", "\"lm_head.weight\": \"model-00001-of-00004.safetensors\"",
               "\"lm_head.weight\": \"model-00001-of-00004.safetensors\", \"lm_head.weight\": "
               "\"model-00002-of-00004.safetensors\"",
               MP_EFORMAT, "weight_map names tensor 'lm_head.weight' twice");
    index_case("idx_wrong_shard", "\"lm_head.weight\": \"model-00001-of-00004.safetensors\"",
               "\"lm_head.weight\": \"model-00002-of-00004.safetensors\"", MP_EFORMAT,
               "tensor 'lm_head.weight' is mapped to model-00002-of-00004.safetensors but found in "
               "model-00001-of-00004.safetensors");
    index_case("idx_no_weight_map", "\"weight_map\"", "\"weight_mop\"", MP_EFORMAT,
               "not a JSON object with a \"weight_map\" object");

    begin("idx_empty_weight_map");
    model_sharded();
    put_text(g_model, "model.safetensors.index.json", "{\"metadata\": {}, \"weight_map\": {}}");
    expect("idx_empty_weight_map", INSPECT, MP_EFORMAT, "\"weight_map\" is empty");

    begin("idx_shard_is_directory");
    model_sharded();
    {
        char p[1000];
        path_in(p, sizeof p, g_model, "model-00003-of-00004.safetensors");
        unlink(p);
        CHECK(mkdir(p, 0755) == 0);
    }
    expect("idx_shard_is_directory", INSPECT | CALIB, MP_EFORMAT,
           "model-00003-of-00004.safetensors: is a directory, not a regular file");

    begin("idx_is_directory");
    model_sharded();
    {
        char p[1000];
        path_in(p, sizeof p, g_model, "model.safetensors.index.json");
        unlink(p);
        CHECK(mkdir(p, 0755) == 0);
    }
    expect("idx_is_directory", INSPECT, MP_EFORMAT, "model.safetensors.index.json: is a directory");
}

static void cfg_case(const char *name, int cmds, const char *key, const char *value, int code, const char *needle)
{
    begin(name);
    model_from("mixtral_f32");
    config_set(key, value);
    expect(name, cmds, code, needle);
}

static void config_cases(void)
{
    begin("cfg_is_directory");
    snprintf(g_model, sizeof g_model, "%s/model", g_case);
    CHECK_OK(mp_mkdir_p(g_model));
    copy_file(FX "/mixtral_f32", g_model, "model.safetensors");
    {
        char p[1000];
        path_in(p, sizeof p, g_model, "config.json");
        CHECK(mkdir(p, 0755) == 0);
    }
    expect("cfg_is_directory", INSPECT | EVAL | CALIB, MP_ECONFIG, "config.json: is a directory, not a regular file");

    begin("cfg_is_fifo");
    snprintf(g_model, sizeof g_model, "%s/model", g_case);
    CHECK_OK(mp_mkdir_p(g_model));
    copy_file(FX "/mixtral_f32", g_model, "model.safetensors");
    {
        char p[1000];
        path_in(p, sizeof p, g_model, "config.json");
        CHECK(mkfifo(p, 0644) == 0);
    }
    expect("cfg_is_fifo", INSPECT, MP_ECONFIG, "config.json: is a FIFO, not a regular file");

    cfg_case("cfg_eps_negative", INSPECT | EVAL | CALIB, "rms_norm_eps", "-1", MP_ECONFIG,
             "config.json: key 'rms_norm_eps' = -1 is out of range (it must be > 0)");
    cfg_case("cfg_eps_zero", INSPECT, "rms_norm_eps", "0", MP_ECONFIG, "key 'rms_norm_eps' = 0 is out of range");
    cfg_case("cfg_eps_infinite", INSPECT, "rms_norm_eps", "1e999", MP_ECONFIG,
             "key 'rms_norm_eps' must be a finite number");
    cfg_case("cfg_nan_literal", INSPECT, "rms_norm_eps", "NaN", MP_ECONFIG, "config.json: not a valid JSON object");
    cfg_case("cfg_zero_layers", INSPECT | CALIB, "num_hidden_layers", "0", MP_ECONFIG,
             "key 'num_hidden_layers' must be positive, got 0");
    cfg_case("cfg_negative_hidden", INSPECT, "hidden_size", "-64", MP_ECONFIG, "key 'hidden_size' must be positive");
    cfg_case("cfg_huge_vocab", INSPECT, "vocab_size", "2147483647", MP_ECONFIG,
             "key 'vocab_size' = 2147483647 is larger than the supported 16777216");
    cfg_case("cfg_topk_above_experts", INSPECT | CALIB, "num_experts_per_tok", "5", MP_ECONFIG,
             "key 'num_experts_per_tok' = 5 exceeds the number of experts 4");
    cfg_case("cfg_heads_not_dividing_hidden", INSPECT, "num_attention_heads", "3", MP_ECONFIG,
             "hidden_size 64 is not a multiple of num_attention_heads 3");
    cfg_case("cfg_kv_heads_not_dividing", INSPECT, "num_key_value_heads", "3", MP_ECONFIG,
             "num_attention_heads 4 is not a multiple of num_key_value_heads 3");
    cfg_case("cfg_no_rotary_dimension", INSPECT, "partial_rotary_factor", "0.01", MP_ECONFIG,
             "leaves no rotary dimension");
    cfg_case("cfg_odd_head_dim", INSPECT, "head_dim", "17", MP_ECONFIG,
             "head_dim 17 x partial_rotary_factor 1 = 17 rotary dimensions, which must be even");
    cfg_case("cfg_partial_rotary_above_1", INSPECT, "partial_rotary_factor", "1.5", MP_ECONFIG,
             "key 'partial_rotary_factor' = 1.5 is out of range");
    cfg_case("cfg_rope_theta_zero", INSPECT, "rope_parameters.rope_theta", "0", MP_ECONFIG,
             "key 'rope_theta' = 0 is out of range");
    cfg_case("cfg_rope_unknown", INSPECT, "rope_parameters.rope_type", "\"spiral\"", MP_ECONFIG,
             "key 'rope_parameters.rope_type': unsupported rope type 'spiral'");
    cfg_case("cfg_rope_linear_factor_zero", INSPECT, "rope_parameters",
             "{\"rope_type\": \"linear\", \"factor\": 0, \"rope_theta\": 10000}", MP_ECONFIG,
             "rope_parameters: key 'factor' = 0 is out of range");
    /* valid configs the forward pass does not compute yet: a config problem (4), never usage (2); with
     * `calibrate` found before the checkpoint directory is claimed (no job.json left behind) */
    cfg_case("cfg_rope_llama3_forward", EVAL | CALIB, "rope_parameters",
             "{\"rope_type\": \"llama3\", \"factor\": 8, \"rope_theta\": 10000}", MP_ECONFIG,
             "config.json: key 'rope_parameters.rope_type': the forward pass does not support rope type 'llama3'");
    cfg_case("cfg_rope_longrope_no_factors", EVAL | CALIB, "rope_scaling", "{\"type\": \"longrope\", \"factor\": 2}",
             MP_ECONFIG, "key 'rope_scaling.type' is 'longrope' but short_factor or long_factor is missing");
    begin("cfg_sliding_window_forward");
    model_from("qwen2_moe_f32");
    config_set("use_sliding_window", "true");
    config_set("sliding_window", "4096");
    expect("cfg_sliding_window_forward", EVAL | CALIB, MP_ECONFIG,
           "config.json: key 'use_sliding_window' = true (sliding_window 4096): the forward pass does not support "
           "qwen2_moe's sliding-window attention");
    cfg_case("cfg_sliding_window_negative", INSPECT, "sliding_window", "-1", MP_ECONFIG,
             "key 'sliding_window' must be in [0, 16777216], got -1");
    cfg_case("cfg_router_jitter_negative", INSPECT, "router_jitter_noise", "-0.5", MP_ECONFIG,
             "key 'router_jitter_noise' = -0.5 is out of range");

    begin("cfg_deepseek_attention_bias");
    model_from("deepseek_v2_f32");
    config_set("attention_bias", "true");
    expect("cfg_deepseek_attention_bias", EVAL | CALIB, MP_ECONFIG,
           "config.json: key 'attention_bias' = true: the forward pass does not support biases in DeepSeek's");
    begin("cfg_phimoe_top3");
    model_from("phimoe_longrope");
    config_set("num_experts_per_tok", "3");
    expect("cfg_phimoe_top3", EVAL | CALIB, MP_ECONFIG,
           "config.json: key 'num_experts_per_tok' = 3: Phi-3.5-MoE's sparsemixer routes every token to 2");
}

static void tokens_cases(void)
{
    begin("tok_length_1");
    tokens_2d("t.h5", H5T_STD_I32LE, 4, 1);
    expect("tok_length_1", EVAL | CALIB, MP_EFORMAT,
           "t.h5: dataset 'tokens' holds sequences of 1 token: at least 2 are needed");
    begin("tok_int64");
    tokens_2d("t.h5", H5T_STD_I64LE, 2, 4);
    expect("tok_int64", EVAL, MP_EFORMAT, "t.h5: dataset 'tokens' must be int32 (got signed integers of 8 bytes)");
    begin("tok_uint32");
    tokens_2d("t.h5", H5T_STD_U32LE, 2, 4);
    expect("tok_uint32", EVAL | CALIB, MP_EFORMAT, "must be int32 (got unsigned integers of 4 bytes)");
    begin("tok_zero_sequences");
    tokens_2d("t.h5", H5T_STD_I32LE, 0, 4);
    expect("tok_zero_sequences", EVAL, MP_EFORMAT, "dataset 'tokens' has unusable shape [0, 4]");

    begin("tok_rank3");
    snprintf(g_tok, sizeof g_tok, "%s/t.h5", g_case);
    {
        hsize_t d[3] = {2, 2, 2};
        put_tokens_h5(g_tok, "tokens", H5T_STD_I32LE, 3, d, 0, 1, NULL);
    }
    expect("tok_rank3", EVAL, MP_EFORMAT, "must be 2-D [n_seq, seq_len], has 3 dimensions");

    begin("tok_negative_id");
    snprintf(g_tok, sizeof g_tok, "%s/t.h5", g_case);
    {
        hsize_t d[2] = {2, 3};
        int32_t v[6] = {1, 2, 3, 4, -7, 5};
        put_tokens_h5(g_tok, "tokens", H5T_STD_I32LE, 2, d, 0, 1, v);
    }
    expect("tok_negative_id", EVAL | CALIB, MP_EFORMAT, "token id -7 at [1, 1] is outside the vocabulary [0, 128)");

    begin("tok_wrong_name");
    snprintf(g_tok, sizeof g_tok, "%s/t.h5", g_case);
    {
        hsize_t d[2] = {2, 4};
        put_tokens_h5(g_tok, "input_ids", H5T_STD_I32LE, 2, d, 0, 1, NULL);
    }
    expect("tok_wrong_name", EVAL, MP_EFORMAT, "no dataset 'tokens'");

    begin("tok_unwritten");
    snprintf(g_tok, sizeof g_tok, "%s/t.h5", g_case);
    {
        hsize_t d[2] = {64, 128};
        put_tokens_h5(g_tok, "tokens", H5T_STD_I32LE, 2, d, 1, 0, NULL);
    }
    expect("tok_unwritten", EVAL, MP_EFORMAT, "dataset 'tokens' has no data written");

    /* [2^16, 2^12] declared, one 64 x 64 chunk stored: 1 GiB of ids from 16 KiB */
    begin("tok_declared_beyond_stored");
    snprintf(g_tok, sizeof g_tok, "%s/t.h5", g_case);
    {
        hid_t f = H5Fcreate(g_tok, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
        hsize_t d[2] = {65536, 4096}, ch[2] = {64, 64}, cnt[2] = {64, 64}, st0[2] = {0, 0};
        hid_t sp = H5Screate_simple(2, d, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
        H5Pset_chunk(dcpl, 2, ch);
        hid_t ds = H5Dcreate2(f, "tokens", H5T_STD_I32LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
        int32_t *v = calloc(64 * 64, sizeof *v);
        hid_t ms = H5Screate_simple(2, cnt, NULL);
        H5Sselect_hyperslab(sp, H5S_SELECT_SET, st0, NULL, cnt, NULL);
        CHECK(H5Dwrite(ds, H5T_NATIVE_INT32, ms, sp, H5P_DEFAULT, v) >= 0);
        free(v);
        H5Sclose(ms), H5Dclose(ds), H5Pclose(dcpl), H5Sclose(sp), H5Fclose(f);
    }
    expect("tok_declared_beyond_stored", EVAL, MP_EFORMAT,
           "dataset 'tokens' declares [65536, 4096] but stores only 16384 bytes");

    begin("tok_soft_link");
    snprintf(g_tok, sizeof g_tok, "%s/t.h5", g_case);
    {
        hsize_t d[2] = {2, 4};
        put_tokens_h5(g_tok, "ids", H5T_STD_I32LE, 2, d, 0, 1, NULL);
        hid_t f = H5Fopen(g_tok, H5F_ACC_RDWR, H5P_DEFAULT);
        CHECK(H5Lcreate_soft("/ids", f, "tokens", H5P_DEFAULT, H5P_DEFAULT) >= 0);
        H5Fclose(f);
    }
    expect("tok_soft_link", EVAL, MP_EFORMAT, "'tokens' is a soft link, not a dataset stored in this file");

    begin("tok_external_link");
    snprintf(g_tok, sizeof g_tok, "%s/t.h5", g_case);
    {
        hid_t f = H5Fcreate(g_tok, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
        CHECK(H5Lcreate_external(g_tokens, "/tokens", f, "tokens", H5P_DEFAULT, H5P_DEFAULT) >= 0);
        H5Fclose(f);
    }
    expect("tok_external_link", EVAL | CALIB, MP_EFORMAT, "'tokens' is an external link");

    begin("tok_external_storage");
    snprintf(g_tok, sizeof g_tok, "%s/t.h5", g_case);
    {
        hid_t f = H5Fcreate(g_tok, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
        hsize_t d[2] = {2, 4};
        hid_t sp = H5Screate_simple(2, d, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE);
        H5Pset_external(dcpl, "/dev/zero", 0, H5F_UNLIMITED);
        hid_t ds = H5Dcreate2(f, "tokens", H5T_STD_I32LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
        CHECK(ds >= 0);
        H5Dclose(ds), H5Pclose(dcpl), H5Sclose(sp), H5Fclose(f);
    }
    expect("tok_external_storage", EVAL, MP_EFORMAT, "keeps its data outside the file");

    begin("tok_not_hdf5");
    put_text(g_case, "t.h5", "token ids, one per line\n1\n2\n3\n");
    snprintf(g_tok, sizeof g_tok, "%s/t.h5", g_case);
    expect("tok_not_hdf5", EVAL | CALIB, MP_EFORMAT, "t.h5: not an HDF5 file");

    begin("tok_is_directory");
    snprintf(g_tok, sizeof g_tok, "%s/t.h5", g_case);
    CHECK(mkdir(g_tok, 0755) == 0);
    expect("tok_is_directory", EVAL | CALIB, MP_EFORMAT, "t.h5: is a directory, not a regular file");

    begin("tok_missing");
    snprintf(g_tok, sizeof g_tok, "%s/none.h5", g_case);
    expect("tok_missing", EVAL, MP_ENOENT, "none.h5: tokens file not found");

    /* the damaged file on which HDF5 1.10.8 itself crashes (SIGSEGV in H5Lexists): refused before HDF5
     * reads it (io/h5check.c) */
    begin("tok_hdf5_crash_regression");
    snprintf(g_tok, sizeof g_tok, "%s/t.h5", g_case);
    {
        char *b = NULL;
        size_t n;
        CHECK_OK(mp_read_file(FX "/fuzz-regressions/hdf5-1.10.8-segv-H5Lexists.h5", &b, &n));
        put(g_case, "t.h5", b, n);
        free(b);
    }
    expect("tok_hdf5_crash_regression", EVAL | CALIB, MP_EFORMAT,
           "t.h5: damaged HDF5 file: the root group's local heap has an undefined address");

    /* the same file with only the object header's B-tree address pointing past the end of the file */
    begin("tok_hdf5_btree_outside");
    snprintf(g_tok, sizeof g_tok, "%s/t.h5", g_case);
    {
        char *b = NULL;
        size_t n;
        CHECK_OK(mp_read_file(g_tokens, &b, &n));
        /* a valid file written by mp_tokens_write (superblock v0): find the root group's symbol table
         * message (version-1 header: type 0x0011, 16 bytes) and point its B-tree past the end of the file */
        static const char msg[] = {0x11, 0, 0x10, 0};
        char *at = b ? memmem(b, n < 512 ? n : 512, msg, 4) : NULL;
        CHECK(at != NULL);
        if (at) {
            uint64_t far = (uint64_t)n + 4096;
            memcpy(at + 8, &far, 8); /* little-endian host, as the file */
            put(g_case, "t.h5", b, n);
        }
        free(b);
    }
    expect("tok_hdf5_btree_outside", EVAL, MP_EFORMAT, "is outside the file of");
}

static void job_case(const char *name, const char *ini, int code, const char *needle)
{
    begin(name);
    char *text = malloc(strlen(ini) + 2 * sizeof g_model + 64);
    /* @M and @T stand for the model and the tokens */
    size_t o = 0;
    for (const char *p = ini; *p; p++) {
        if (p[0] == '@' && (p[1] == 'M' || p[1] == 'T')) {
            o += (size_t)sprintf(text + o, "%s", p[1] == 'M' ? g_model : g_tok);
            p++;
        } else {
            text[o++] = *p;
        }
    }
    text[o] = '\0';
    put_text(g_case, "job.ini", text);
    free(text);
    expect(name, JOB, code, needle);
}

static void job_cases(void)
{
    job_case("job_first_error_line", "[model]\npath = @M\n[calibration]\nfoo = 1\ntokens = @T\nbar = 2\n", MP_EUSAGE,
             "job.ini:4: unknown key 'foo' in section [calibration]");
    job_case("job_syntax_before_key", "[model]\npath = @M\nthis is not ini\n[calibration]\ntokenz = @T\n", MP_EUSAGE,
             "job.ini:3: syntax error");
    job_case("job_key_before_syntax", "[model]\npath = @M\n[calibration]\ntokenz = @T\nthis is not ini\n", MP_EUSAGE,
             "job.ini:4: unknown key 'tokenz' in section [calibration]");
    job_case("job_bad_fraction", "[model]\npath = @M\n[calibration]\ntokens = @T\n[delta]\nfraction = 1.5\n", MP_EUSAGE,
             "job.ini:6: bad value '1.5' for delta.fraction");
    job_case("job_bad_solver", "[model]\npath = @M\n[calibration]\ntokens = @T\n[delta]\nsolver = magic\n", MP_EUSAGE,
             "job.ini:6: bad value 'magic' for delta.solver");
    job_case("job_no_tokens", "[model]\npath = @M\n", MP_EUSAGE, "job.ini: calibration.tokens is not set");
    begin("eval_negative_max_sequences");
    snprintf(g_extra, sizeof g_extra, "--max-sequences -5");
    expect("eval_negative_max_sequences", EVAL, MP_EUSAGE, "eval: --max-sequences -5: expected N >= 0");
    {
        char ini[1200], longp[400];
        memset(longp, 'a', 300);
        longp[300] = '\0';
        snprintf(ini, sizeof ini, "[model]\npath = /tmp/%s\n[calibration]\ntokens = @T\n", longp);
        job_case("job_long_line", ini, MP_EUSAGE, "job.ini:2: line longer than 199 characters");
    }
    begin("job_is_directory");
    {
        char p[1000];
        path_in(p, sizeof p, g_case, "job.ini");
        CHECK(mkdir(p, 0755) == 0);
    }
    expect("job_is_directory", JOB, MP_EUSAGE, "job.ini: is a directory, not a regular file");

    /* --set values longer than the buffers were cut short silently */
    begin("job_set_path_too_long");
    {
        char *p = malloc(4200);
        memset(p, 'b', 4150);
        p[4150] = '\0';
        snprintf(g_extra, sizeof g_extra, "--set 'calibration.tokens=/tmp/%s'", p);
        free(p);
    }
    expect("job_set_path_too_long", CALIB, MP_EUSAGE, "': bad value");
    begin("job_set_too_long");
    {
        char *p = malloc(4600);
        memset(p, 'c', 4500);
        p[4500] = '\0';
        snprintf(g_extra, sizeof g_extra, "--set 'output.dir=%s'", p);
        free(p);
    }
    expect("job_set_too_long", CALIB, MP_EUSAGE, "...': too long");
}

static int edit_head_shape(mp_st_decl *d, const mp_tensor **from, int n, int cap)
{
    (void)cap;
    for (int i = 0; i < n; i++)
        if (!strcmp(d[i].name, "lm_head.weight")) {
            d[i].shape[0] = 64; /* [64, 64] instead of [128, 64] */
            from[i] = NULL;
        }
    return n;
}

static int edit_drop_head(mp_st_decl *d, const mp_tensor **from, int n, int cap)
{
    (void)cap;
    int k = 0;
    for (int i = 0; i < n; i++)
        if (strcmp(d[i].name, "lm_head.weight") != 0) {
            d[k] = d[i];
            from[k++] = from[i];
        }
    return k;
}

/* the perplexity `moepack eval` prints for `model` on the suite's tokens (NAN when it fails) */
static double eval_ppl(const char *model)
{
    char cmd[3000], outf[800], *t = NULL;
    size_t n;
    snprintf(outf, sizeof outf, "%s/ppl.txt", g_case);
    snprintf(cmd, sizeof cmd, "timeout 120 '%s' eval --model '%s' --tokens '%s' >'%s' 2>&1", MOEPACK_BIN, model,
             g_tokens, outf);
    double ppl = NAN;
    if (system(cmd) == 0 && mp_read_file(outf, &t, &n) == 0) {
        const char *at = strstr(t, "perplexity ");
        if (!at || sscanf(at, "perplexity %lf", &ppl) != 1)
            ppl = NAN;
    }
    free(t);
    return ppl;
}

static void tied_cases(void)
{
    /* transformers keeps a different lm_head.weight when tie_word_embeddings is true: a note, not an error */
    begin("tied_head_differs");
    model_from("mixtral_f32");
    config_set("tie_word_embeddings", "true");
    expect("tied_head_differs", INSPECT, MP_OK,
           "tie_word_embeddings is true but lm_head.weight in the checkpoint differs from model.embed_tokens.weight");
    {
        mp_model *m = NULL;
        CHECK_OK(mp_model_open(g_model, &m));
        CHECK(m && m->head_untied == 1 && !strcmp(m->head_name, "lm_head.weight"));
        mp_model_close(m);
        /* the fixtures tie without a separate head: the embedding is the head */
        CHECK_OK(mp_model_open(FX "/qwen3_moe_f32", &m));
        CHECK(m && m->head_untied == 0 && !strcmp(m->head_name, "model.embed_tokens.weight"));
        mp_model_close(m);
    }
    /* and the forward pass computes with the file's head: the perplexity of the untied fixture, while the
     * same model without lm_head.weight (the embedding as the head) gives another one */
    double untied = eval_ppl(FX "/mixtral_f32"), file_head = eval_ppl(g_model);
    begin("tied_no_head");
    model_from("mixtral_f32");
    config_set("tie_word_embeddings", "true");
    rewrite_model(edit_drop_head);
    double emb_head = eval_ppl(g_model);
    printf("tied embeddings: perplexity untied %.6f, tied with the file's lm_head %.6f, tied without one %.6f\n",
           untied, file_head, emb_head);
    CHECK(isfinite(untied) && file_head == untied);
    CHECK(isfinite(emb_head) && emb_head != untied);

    begin("tied_head_wrong_shape");
    model_from("mixtral_f32");
    config_set("tie_word_embeddings", "true");
    rewrite_model(edit_head_shape);
    expect("tied_head_wrong_shape", INSPECT | CALIB, MP_EFORMAT,
           "tensor 'lm_head.weight' has shape [64, 64], config.json implies [128, 64]");
}

/* ---- library-level checks ---------------------------------------------------------------------- */

/* A valid tokens file in one of HDF5's layouts: newest file format or the oldest, a 512-byte user block,
 * contiguous / chunked / compact / deflated data, `ngroups` groups before it (a B-tree of several symbol
 * nodes, or dense link storage), `nattr` attributes on it (continuation chunks). */
static void put_tokens_layout(const char *path, int latest, int userblock, int layout, int ngroups, int nattr)
{
    hid_t fcpl = H5Pcreate(H5P_FILE_CREATE), fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (userblock)
        H5Pset_userblock(fcpl, 512);
    if (latest)
        H5Pset_libver_bounds(fapl, H5F_LIBVER_LATEST, H5F_LIBVER_LATEST);
    hid_t f = H5Fcreate(path, H5F_ACC_TRUNC, fcpl, fapl);
    hsize_t d[2] = {3, 5}, ch[2] = {2, 2};
    int32_t v[15];
    for (int i = 0; i < 15; i++)
        v[i] = i + 1;
    hid_t sp = H5Screate_simple(2, d, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE), as = H5Screate(H5S_SCALAR);
    if (layout == 1 || layout == 3)
        H5Pset_chunk(dcpl, 2, ch);
    if (layout == 2)
        H5Pset_layout(dcpl, H5D_COMPACT);
    if (layout == 3)
        H5Pset_deflate(dcpl, 6);
    char nm[32];
    for (int i = 0; i < ngroups; i++) {
        snprintf(nm, sizeof nm, "g%03d", i);
        H5Gclose(H5Gcreate2(f, nm, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
    }
    hid_t ds = H5Dcreate2(f, "tokens", H5T_STD_I32LE, sp, H5P_DEFAULT, dcpl, H5P_DEFAULT);
    CHECK(ds >= 0 && H5Dwrite(ds, H5T_NATIVE_INT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, v) >= 0);
    for (int i = 0; i < nattr; i++) {
        snprintf(nm, sizeof nm, "attr%03d", i);
        hid_t a = H5Acreate2(ds, nm, H5T_STD_I32LE, as, H5P_DEFAULT, H5P_DEFAULT);
        H5Awrite(a, H5T_NATIVE_INT, &i);
        H5Aclose(a);
    }
    H5Dclose(ds), H5Sclose(as), H5Pclose(dcpl), H5Sclose(sp), H5Fclose(f), H5Pclose(fcpl), H5Pclose(fapl);
}

/* the structural pre-check (io/h5check.c) refuses none of HDF5's own layouts */
static void h5check_layouts(void)
{
    char path[800];
    snprintf(path, sizeof path, "%s/layout.h5", g_root);
    int n = 0;
    for (int latest = 0; latest < 2; latest++)
        for (int ub = 0; ub < 2; ub++)
            for (int layout = 0; layout < 4; layout++)
                for (int ng = 0; ng <= 100; ng += 100)
                    for (int na = 0; na <= 40; na += 40) {
                        put_tokens_layout(path, latest, ub, layout, ng, na);
                        mp_tokens t;
                        int rc = mp_tokens_read(path, 128, &t);
                        CHECK(rc == 0 && t.n_seq == 3 && t.seq_len == 5 && t.ids[14] == 15);
                        if (rc < 0)
                            fprintf(stderr, "layout latest %d userblock %d layout %d groups %d attributes %d: %s\n",
                                    latest, ub, layout, ng, na, mp_error_message());
                        if (rc == 0)
                            mp_tokens_free(&t);
                        n++;
                    }
    printf("h5check: %d valid HDF5 layouts read\n", n);
}

static void library_checks(void)
{
    /* a message may be built from the current message (it used to overwrite itself) */
    mp_errorf(MP_EFORMAT, "inner problem %d", 42);
    mp_errorf(MP_EFORMAT, "layer %d expert %d gate: %s", 1, 2, mp_error_message());
    CHECK(strcmp(mp_error_message(), "layer 1 expert 2 gate: inner problem 42") == 0);
    mp_error_clear();

    /* the fuzzing regression, from memory too: a valid file without tensors */
    char *b = NULL;
    size_t n;
    CHECK_OK(mp_read_file(FX "/fuzz-regressions/safetensors-no-tensors-ub.safetensors", &b, &n));
    mp_ckpt *c = NULL;
    CHECK_OK(mp_ckpt_open_mem(b, n, "regression", &c));
    CHECK(c && c->ntensors == 0);
    mp_ckpt_close(c);
    free(b);

    /* checked sizes */
    int64_t prod = -1, d1[2] = {INT64_C(1) << 25, INT64_C(1) << 25}, d2[3] = {INT64_C(1) << 25, INT64_C(1) << 25, 2};
    int64_t d3[2] = {0, INT64_C(1) << 60}, d4[4] = {65536, 65536, 65536, 65536}, d5[2] = {0, 7};
    CHECK(mp_dims_product(d1, 2, MP_MAX_ELEMS, &prod) == 0 && prod == MP_MAX_ELEMS);
    CHECK(mp_dims_product(d2, 3, MP_MAX_ELEMS, &prod) < 0);
    CHECK(mp_dims_product(d3, 2, MP_MAX_ELEMS, &prod) < 0);
    CHECK(mp_dims_product(d4, 4, MP_MAX_ELEMS, &prod) < 0);
    CHECK(mp_dims_product(d5, 2, MP_MAX_ELEMS, &prod) == 0 && prod == 0);
    CHECK(mp_mul_i64(INT64_MAX, 2, &prod) < 0 && mp_mul_i64(-1, 2, &prod) < 0);

    /* a damaged HDF5 file as the Fisher weights (delta.fisher) is refused before HDF5 reads it, too */
    float fw[4];
    CHECK(mp_fisher_read_rows(FX "/fuzz-regressions/hdf5-1.10.8-segv-H5Lexists.h5", 0, 0, 0, 2, 2, 0, 2, fw) ==
          MP_EFORMAT);
    CHECK(strstr(mp_error_message(), "damaged HDF5 file: the root group's local heap has an undefined address"));
    mp_error_clear();

    /* shard names an index may hold */
    const char *why;
    CHECK(mp_st_shard_name_ok("model-00001-of-00002.safetensors", &why) == 0);
    CHECK(mp_st_shard_name_ok("..", &why) < 0 && strstr(why, "directory"));
    CHECK(mp_st_shard_name_ok("a/b", &why) < 0);
}

int main(void)
{
    snprintf(g_root, sizeof g_root, "%s/bad_cli.%d", MP_TEST_TMP, (int)getpid());
    CHECK_OK(mp_mkdir_p(g_root));
    mp_h5_init();
    snprintf(g_tokens, sizeof g_tokens, "%s/good_tokens.h5", g_root);
    int32_t ids[2 * 8];
    for (int i = 0; i < 16; i++)
        ids[i] = (i * 37 + 5) % 128;
    CHECK_OK(mp_tokens_write(g_tokens, ids, 2, 8));

    /* the valid inputs work (so that each case below fails for its own reason) */
    begin("valid");
    expect("valid", INSPECT | EVAL, MP_OK, "");
    g_ncases--;

    safetensors_cases();
    model_cases();
    index_cases();
    config_cases();
    tokens_cases();
    job_cases();
    tied_cases();
    library_checks();
    h5check_layouts();

    printf("bad_input_cli: %d cases\n", g_ncases);
    if (t_failures == 0) {
        char cmd[700];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
        CHECK(system(cmd) == 0);
    }
    return t_done("bad_input_cli");
}
