/* job.c - job file, overrides, fingerprint, checkpoint claim (see job.h). */
#define _GNU_SOURCE
#include "job.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stddef.h>
#include <ini.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "error.h"
#include "fsutil.h"
#include "quant.h"
#include "store.h"

typedef struct {
    mp_job *job;
    const char *src; /* for messages */
    char base[4096]; /* directory for relative paths */
    int line, rc;    /* line: the line the reader handed to inih last; rc: the first handler error */
    int err_line;    /* the line of that error */
    int long_line;   /* first line longer than inih's buffer, 0 if none */
    FILE *fp;
} parse_ctx;

static int set_path(char *dst, const char *base, const char *v)
{
    if (!*v)
        return -1;
    int n = v[0] == '/' || !base[0] ? snprintf(dst, 4096, "%s", v) : snprintf(dst, 4096, "%s/%s", base, v);
    return n < 0 || n >= 4096 ? -1 : 0; /* a path cut short would name another file */
}

static int set_int(int *dst, const char *v, int lo)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (!*v || *end || errno || x < lo || x > 1 << 30)
        return -1;
    *dst = (int)x;
    return 0;
}

static int set_double(double *dst, const char *v, double lo, double hi)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (!*v || *end || errno || !(x >= lo && x <= hi))
        return -1;
    *dst = x;
    return 0;
}

typedef enum { K_PATH, K_FILE, K_INT, K_REAL, K_BOOL, K_CHOICE, K_LIST, K_TEXT } key_type;

/* every job key: name, type, field, default text, range (numbers) or choices (|-separated), meaning */
typedef struct {
    const char *name;
    key_type type;
    size_t off, cap; /* field offset; size of string fields */
    const char *def;
    double lo, hi;
    const char *choices;
    const char *help;
} key_def;

#define F(field) offsetof(mp_job, field), sizeof(((mp_job *)0)->field)
static const key_def KEYS[] = {
    {"model.path", K_PATH, F(model_path), "", 0, 0, NULL, "Hugging Face checkpoint directory (required)"},
    {"calibration.tokens", K_FILE, F(tokens_path), "", 0, 0, NULL,
     "HDF5 file with dataset `tokens`, int32 [n_seq, seq_len] (required)"},
    {"calibration.min_tokens", K_INT, F(min_tokens), "16", 0, 1 << 30, NULL,
     "experts that receive fewer calibration tokens get the neutral prior"},
    {"calibration.max_sequences", K_INT, F(max_sequences), "0", 0, 1 << 30, NULL,
     "use only the first N sequences (0 = all)"},
    {"delta.enabled", K_BOOL, F(delta_enabled), "true", 0, 0, NULL, "run the D2 decomposition after calibration"},
    {"delta.weights", K_CHOICE, F(delta_weights), "activation", 0, 0, "activation|frequency|fisher",
     "importance weights of the base"},
    {"delta.fisher", K_FILE, F(fisher_path), "", 0, 0, NULL, "per-element Fisher weights (HDF5), for weights = fisher"},
    {"delta.fraction", K_REAL, F(delta_fraction), "0.5", 0.0, 1.0, NULL, "rank r = floor(fraction m n / (m + n))"},
    {"delta.rank", K_INT, F(delta_rank), "0", 0, 1 << 30, NULL, "a fixed rank for every delta when > 0"},
    {"delta.target_ratio", K_REAL, F(delta_target_ratio), "0", 0.0, 0.999, NULL,
     "when > 0: the fraction is solved for this overall compression ratio"},
    {"delta.candidates", K_LIST, F(candidates), "", 1e-9, 1.0, NULL,
     "comma-separated fractions for the allocator (factors kept at the largest)"},
    {"delta.lambda", K_REAL, F(delta_lambda), "1e-6", 1e-300, 1.0, NULL, "Gram regularisation"},
    {"delta.solver", K_CHOICE, F(delta_solver), "auto", 0, 0, "auto|lapack|randomized|scalapack", "SVD solver"},
    {"checkpoint.dir", K_PATH, F(ckpt_dir), "", 0, 0, NULL, "stage results (default <output.dir>/checkpoint)"},
    {"output.dir", K_PATH, F(out_dir), "moepack-out", 0, 0, NULL, "results of the job"},
    {"calibration.sample_tokens", K_INT, F(sample_tokens), "256", 0, 1 << 20, NULL,
     "routed inputs kept per expert (a deterministic sample) to measure activation formats"},
    {"calibration.chunk_tokens", K_INT, F(chunk_tokens), "0", 0, 1 << 30, NULL,
     "tokens per window of the MoE exchange (whole sequences; 0 = all): bounds memory, never changes results"},
    {"quant.formats", K_TEXT, F(quant_formats), "fp16,w8,w4,w4g128,w3g128,w2g128,w2g64", 0, 0, NULL,
     "candidate formats, comma-separated (fp16 w8 w4 w4g128 w3g128 w2g128 w2g64 w8a8 w4a4)"},
    {"quant.method", K_CHOICE, F(quant_method), "gptq", 0, 0, "gptq|rtn", "quantizer"},
    {"quant.percdamp", K_REAL, F(quant_percdamp), "0.01", 1e-12, 10.0, NULL,
     "GPTQ damping, relative to mean(diag H) (raised x10 and retried when the Cholesky fails)"},
    {"quant.act_order", K_BOOL, F(quant_act_order), "true", 0, 0, NULL, "GPTQ act-order (with static groups)"},
    {"quant.factor_formats", K_CHOICE, F(factor_formats), "independent", 0, 0, "independent|same",
     "a delta's U and V take formats independently, or the same format"},
    {"quant.tie_gate_up", K_BOOL, F(tie_gate_up), "true", 0, 0, NULL,
     "gate and up of an expert share one format (fused kernels)"},
    {"measure.batch_tokens", K_INT, F(batch_tokens), "4096", 1, 1 << 30, NULL,
     "design batch (tokens) of the cost model; an expert runs its routed share of it"},
    {"measure.device", K_FILE, F(device_path), "", 0, 0, NULL,
     "device profile (JSON, see jobs/devices/); default: built-in H100 SXM"},
    {"measure.timings", K_FILE, F(timings_path), "", 0, 0, NULL,
     "measured kernel timings (format, m, n, M, seconds) replacing the cost model where they match"},
    {"budget.bits_per_weight", K_REAL, F(budget_bits), "3.25", 0.01, 64.0, NULL,
     "memory budget in bits per quantized weight (experts, shared experts, dense MLPs)"},
    {"budget.bytes", K_REAL, F(budget_bytes), "0", 0, 9.0e15, NULL, "budget in bytes; > 0 replaces bits_per_weight"},
    {"allocate.r", K_REAL, F(alloc_r), "1", 0.0, 1.0, NULL,
     "accuracy-speed trade-off: minimise r log(loss) + (1 - r) log(time) (1 = loss only)"},
    {"output.shard_bytes", K_REAL, F(shard_bytes), "4294967296", 1048576.0, 9.0e15, NULL,
     "largest size of one output shard (a tensor larger than that gets a shard of its own)"},
    {"validate.tokens", K_FILE, F(val_tokens), "", 0, 0, NULL,
     "held-out tokens (HDF5 like calibration.tokens); default: the sequences of calibration.tokens that "
     "calibration did not use (beyond calibration.max_sequences)"},
    {"validate.max_sequences", K_INT, F(val_max_sequences), "0", 0, 1 << 30, NULL,
     "validate on at most N sequences (0 = all)"},
    {"validate.device", K_CHOICE, F(val_device), "auto", 0, 0, "auto|cuda|cpu",
     "where the compressed experts run: cuda (one GPU per rank), cpu, or auto (cuda when every rank has a GPU)"},
};
#undef F
#define NKEYS ((int)(sizeof KEYS / sizeof KEYS[0]))

static const key_def *find_key(const char *sec, const char *key)
{
    size_t ls = strlen(sec);
    for (int i = 0; i < NKEYS; i++)
        if (!strncmp(KEYS[i].name, sec, ls) && KEYS[i].name[ls] == '.' && !strcmp(KEYS[i].name + ls + 1, key))
            return &KEYS[i];
    return NULL;
}

static int is_choice(const char *choices, const char *v)
{
    size_t n = strlen(v);
    for (const char *p = choices; *p;) {
        const char *bar = strchr(p, '|');
        size_t k = bar ? (size_t)(bar - p) : strlen(p);
        if (k == n && !strncmp(p, v, n))
            return 1;
        p += k + (bar ? 1 : 0);
    }
    return 0;
}

/* 0 ok, -1 bad value, -2 unknown key */
static int apply(mp_job *j, const char *base, const char *sec, const char *key, const char *v)
{
    const key_def *k = find_key(sec, key);
    if (!k)
        return -2;
    char *field = (char *)j + k->off;
    switch (k->type) {
    case K_PATH:
    case K_FILE:
        return set_path(field, base, v);
    case K_INT:
        return set_int((int *)field, v, (int)k->lo);
    case K_REAL:
        return set_double((double *)field, v, k->lo, k->hi);
    case K_BOOL:
        if (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes"))
            return *(int *)field = 1, 0;
        if (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "no"))
            return *(int *)field = 0, 0;
        return -1;
    case K_TEXT:
        if (strlen(v) >= k->cap)
            return -1;
        snprintf(field, k->cap, "%s", v);
        return 0;
    case K_CHOICE:
        if (!is_choice(k->choices, v) || strlen(v) >= k->cap)
            return -1;
        snprintf(field, k->cap, "%s", v);
        return 0;
    case K_LIST: {
        char buf[512], *save = NULL;
        if (strlen(v) >= sizeof buf)
            return -1;
        snprintf(buf, sizeof buf, "%s", v);
        j->n_candidates = 0;
        for (char *tok = strtok_r(buf, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
            if (j->n_candidates == 16 || set_double(&j->candidates[j->n_candidates], tok, k->lo, k->hi) < 0)
                return -1;
            j->n_candidates++;
        }
        return j->n_candidates ? 0 : -1;
    }
    }
    return -1;
}

/* the shortest of %.15g .. %.17g that reads back as v */
static void shortest(char *buf, size_t cap, double v)
{
    for (int p = 15; p <= 17; p++) {
        snprintf(buf, cap, "%.*g", p, v);
        if (strtod(buf, NULL) == v)
            return;
    }
}

int mp_job_key_text(const mp_job *j, const char *name, char *buf, size_t cap)
{
    const key_def *k = NULL;
    for (int i = 0; i < NKEYS && !k; i++)
        k = !strcmp(KEYS[i].name, name) ? &KEYS[i] : NULL;
    if (!k)
        return mp_errorf(MP_EINTERNAL, "unknown job key '%s'", name);
    const char *field = (const char *)j + k->off;
    switch (k->type) {
    case K_PATH:
    case K_CHOICE:
    case K_TEXT:
        snprintf(buf, cap, "%s", field);
        break;
    case K_FILE: {
        uint64_t h = 0;
        if (!field[0])
            snprintf(buf, cap, "(none)");
        else if (mp_file_xxh64(field, &h) < 0) {
            mp_error_clear(); /* a missing file is reported by the stage that reads it */
            snprintf(buf, cap, "missing");
        } else
            snprintf(buf, cap, "xxh64:%016llx", (unsigned long long)h);
        break;
    }
    case K_INT:
        snprintf(buf, cap, "%d", *(const int *)field);
        break;
    case K_BOOL:
        snprintf(buf, cap, "%s", *(const int *)field ? "true" : "false");
        break;
    case K_REAL:
        shortest(buf, cap, *(const double *)field);
        break;
    case K_LIST: {
        size_t n = 0;
        buf[0] = '\0';
        for (int q = 0; q < j->n_candidates && n < cap; q++)
        {
            char one[40];
            shortest(one, sizeof one, j->candidates[q]);
            n += (size_t)snprintf(buf + n, cap - n, "%s%s", q ? "," : "", one);
        }
        break;
    }
    }
    return 0;
}

void mp_job_key_list(FILE *out)
{
    for (int i = 0; i < NKEYS; i++)
        fprintf(out, "| `%s` | %s%s%s | %s |\n", KEYS[i].name, KEYS[i].def[0] ? "`" : "(none)", KEYS[i].def,
                KEYS[i].def[0] ? "`" : "", KEYS[i].help);
}

static int on_ini(void *user, const char *sec, const char *key, const char *v)
{
    parse_ctx *p = user;
    int r = apply(p->job, p->base, sec, key, v);
    if (r < 0 && p->rc == 0) { /* inih goes on after an error: keep the first one, with its line */
        p->err_line = p->line;
        if (r == -2)
            p->rc = mp_errorf(MP_EUSAGE, "unknown key '%s' in section [%s]", key, sec);
        else
            p->rc = mp_errorf(MP_EUSAGE, "bad value '%s' for %s.%s", v, sec, key);
    }
    return r == 0;
}

/* inih's line reader, counting lines and noticing lines longer than inih's buffer (which it would
 * split into two lines) */
static char *ini_reader_fn(char *str, int num, void *stream)
{
    parse_ctx *p = stream;
    if (!fgets(str, num, p->fp))
        return NULL;
    p->line++;
    size_t n = strlen(str);
    if (n + 1 == (size_t)num && str[n - 1] != '\n') {
        int ch = fgetc(p->fp);
        if (ch != '\n' && ch != EOF) { /* more than fits: note it, skip the rest of the line */
            if (!p->long_line)
                p->long_line = p->line;
            while ((ch = fgetc(p->fp)) != EOF && ch != '\n')
                ;
        }
    }
    return str;
}

int mp_job_load(const char *path, char *const *sets, int nsets, mp_job *job)
{
    memset(job, 0, sizeof *job);
    for (int i = 0; i < NKEYS; i++) {
        char sec[64];
        const char *dot = strchr(KEYS[i].name, '.');
        snprintf(sec, sizeof sec, "%.*s", (int)(dot - KEYS[i].name), KEYS[i].name);
        if (KEYS[i].def[0] && apply(job, "", sec, dot + 1, KEYS[i].def) < 0)
            return mp_errorf(MP_EINTERNAL, "bad default of job key %s", KEYS[i].name);
    }
    if (path) {
        int fd;
        size_t size;
        int rc = mp_open_regular(path, MP_EUSAGE, &fd, &size);
        if (rc == MP_ENOENT)
            return mp_errorf(MP_ENOENT, "job file %s: no such file", path);
        MP_CHECK(rc);
        parse_ctx p = {job, path, "", 0, 0, 0, 0, fdopen(fd, "r")};
        if (!p.fp) {
            close(fd);
            return mp_syserrorf(MP_EIO, "cannot read job file %s", path);
        }
        char tmp[4096];
        if (snprintf(tmp, sizeof tmp, "%s", path) >= (int)sizeof tmp) {
            fclose(p.fp);
            return mp_errorf(MP_EUSAGE, "job file path is too long: %.200s...", path);
        }
        snprintf(p.base, sizeof p.base, "%s", dirname(tmp));
        int line = ini_parse_stream(ini_reader_fn, &p, on_ini, &p);
        int read_err = ferror(p.fp);
        fclose(p.fp);
        if (read_err)
            return mp_errorf(MP_EIO, "cannot read job file %s", path);
        if (p.long_line && (line <= 0 || p.long_line <= line))
            return mp_errorf(MP_EUSAGE,
                             "%s:%d: line longer than %d characters (use --set section.key=value for "
                             "long values)",
                             path, p.long_line, INI_MAX_LINE - 1);
        if (line > 0) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", p.rc < 0 && p.err_line == line ? mp_error_message() : "syntax error");
            return mp_errorf(MP_EUSAGE, "%s:%d: %s", path, line, msg);
        }
        if (line < 0)
            return mp_syserrorf(MP_EIO, "cannot read job file %s", path);
    }
    for (int i = 0; i < nsets; i++) {
        char buf[4400], *dot = NULL, *eq = NULL;
        if (strlen(sets[i]) >= sizeof buf)
            return mp_errorf(MP_EUSAGE, "--set '%.300s...': too long", sets[i]);
        snprintf(buf, sizeof buf, "%s", sets[i]);
        eq = strchr(buf, '=');
        if (eq)
            *eq = '\0';
        dot = strchr(buf, '.');
        const char *more = strlen(sets[i]) > 300 ? "..." : ""; /* messages show at most 300 characters */
        if (!eq || !dot)
            return mp_errorf(MP_EUSAGE, "--set '%.300s%s': expected section.key=value", sets[i], more);
        *dot = '\0';
        int r = apply(job, "", buf, dot + 1, eq + 1);
        if (r == -2)
            return mp_errorf(MP_EUSAGE, "--set '%.300s%s': unknown key", sets[i], more);
        if (r < 0)
            return mp_errorf(MP_EUSAGE, "--set '%.300s%s': bad value", sets[i], more);
    }
    if (!job->model_path[0])
        return mp_errorf(MP_EUSAGE, "%s: model.path is not set", path ? path : "job");
    if (!job->tokens_path[0])
        return mp_errorf(MP_EUSAGE, "%s: calibration.tokens is not set", path ? path : "job");
    if (!strcmp(job->delta_weights, "fisher") && !job->fisher_path[0])
        return mp_errorf(MP_EUSAGE, "%s: delta.weights = fisher needs delta.fisher = FILE", path ? path : "job");
    {
        const mp_qformat *fm[32];
        int nf = 0;
        if (mp_qformat_parse_list(job->quant_formats, fm, 32, &nf) < 0) {
            char msg[700];
            snprintf(msg, sizeof msg, "%s", mp_error_message());
            return mp_errorf(MP_EUSAGE, "%s: quant.formats: %s", path ? path : "job", msg);
        }
    }
    if (!job->ckpt_dir[0]) {
        int n = snprintf(job->ckpt_dir, sizeof job->ckpt_dir, "%s/checkpoint", job->out_dir);
        if (n >= (int)sizeof job->ckpt_dir)
            return mp_errorf(MP_EUSAGE, "output.dir is too long");
    }
    return 0;
}

static uint64_t hash_model(const mp_model *m)
{
    XXH64_state_t *s = XXH64_createState();
    XXH64_reset(s, 1);
    char cfgp[4200], *cfg = NULL;
    size_t n = 0;
    snprintf(cfgp, sizeof cfgp, "%s/config.json", m->dir);
    if (mp_read_file(cfgp, &cfg, &n) == 0)
        XXH64_update(s, cfg, n);
    else
        mp_error_clear(); /* opened already: the model could not have been read without it */
    free(cfg);
    for (int i = 0; i < m->ck->nfiles; i++)
        XXH64_update(s, m->ck->files[i].map, m->ck->files[i].data_off);
    uint64_t h = XXH64_digest(s);
    XXH64_freeState(s);
    return h;
}

void mp_job_fingerprint(const mp_model *m, const mp_tokens *t, mp_fingerprint *fp)
{
    fp->model = hash_model(m);
    int32_t dims[2] = {t->n_seq, t->seq_len};
    XXH64_state_t *s = XXH64_createState();
    XXH64_reset(s, 2);
    XXH64_update(s, dims, sizeof dims);
    XXH64_update(s, t->ids, sizeof(int32_t) * (size_t)t->n_seq * (size_t)t->seq_len);
    fp->tokens = XXH64_digest(s);
    XXH64_freeState(s);
    fp->all = fp->model;
}

int mp_job_stage_fingerprints(const mp_job *job, const mp_fingerprint *base, mp_stage_id *st, int n)
{
    uint64_t prev = base->model;
    char kv[4400], val[4200];
    for (int i = 0; i < n; i++) {
        XXH64_state_t *s = XXH64_createState();
        if (!s)
            return mp_errorf(MP_ENOMEM, "out of memory");
        XXH64_reset(s, 3);
        XXH64_update(s, &prev, sizeof prev);
        snprintf(kv, sizeof kv, "stage %s, version %s\n", st[i].name, st[i].version);
        XXH64_update(s, kv, strlen(kv));
        for (const char *const *k = st[i].keys; k && *k; k++) {
            int rc = mp_job_key_text(job, *k, val, sizeof val);
            if (rc < 0) {
                XXH64_freeState(s);
                MP_CHECK(rc);
            }
            snprintf(kv, sizeof kv, "%s=%s\n", *k, val);
            XXH64_update(s, kv, strlen(kv));
        }
        st[i].fp = prev = XXH64_digest(s);
        XXH64_freeState(s);
    }
    return 0;
}

static const char *jstr(const cJSON *j, const char *k)
{
    const cJSON *v = cJSON_GetObjectItem(j, k);
    return cJSON_IsString(v) ? v->valuestring : "?";
}

static void hex64(char *buf, uint64_t v) { snprintf(buf, 17, "%016llx", (unsigned long long)v); }

/* job.json of this job */
static char *job_json(const mp_job *job, const mp_fingerprint *fp, const mp_stage_id *st, int n)
{
    char hex[17], val[4200];
    cJSON *j = cJSON_CreateObject(), *stages = cJSON_AddObjectToObject(j, "stages");
    hex64(hex, fp->all);
    cJSON_AddStringToObject(j, "fingerprint", hex);
    hex64(hex, fp->model);
    cJSON_AddStringToObject(j, "model_fingerprint", hex);
    hex64(hex, fp->tokens);
    cJSON_AddStringToObject(j, "tokens_fingerprint", hex);
    for (int i = 0; i < n; i++) {
        cJSON *s = cJSON_AddObjectToObject(stages, st[i].name), *keys = cJSON_AddObjectToObject(s, "keys");
        hex64(hex, st[i].fp);
        cJSON_AddStringToObject(s, "fingerprint", hex);
        cJSON_AddStringToObject(s, "version", st[i].version);
        for (const char *const *k = st[i].keys; k && *k; k++)
            if (mp_job_key_text(job, *k, val, sizeof val) == 0)
                cJSON_AddStringToObject(keys, *k, val);
    }
    char *txt = cJSON_Print(j);
    cJSON_Delete(j);
    return txt;
}

/* what changed for stage i: "delta.fraction 0.5 -> 0.25, ..." (or the code version) */
static void stage_changes(const mp_job *job, const cJSON *old, const mp_stage_id *s, char *buf, size_t cap)
{
    size_t k = 0;
    char val[4200];
    buf[0] = '\0';
    const cJSON *keys = old ? cJSON_GetObjectItem(old, "keys") : NULL;
    if (old && strcmp(jstr(old, "version"), s->version))
        k += (size_t)snprintf(buf + k, cap - k, "code version %s -> %s", jstr(old, "version"), s->version);
    for (const char *const *key = s->keys; key && *key && k < cap; key++) {
        if (mp_job_key_text(job, *key, val, sizeof val) < 0)
            continue;
        const char *was = keys ? jstr(keys, *key) : "?";
        if (strcmp(was, val))
            k += (size_t)snprintf(buf + k, cap - k, "%s%s %s -> %s", k ? ", " : "", *key, was, val);
    }
    if (!old && k < cap)
        snprintf(buf + k, cap - k, "%snot recorded before", k ? ", " : "");
}

static int remove_stage_dirs(const mp_job *job, const mp_stage_id *st, int from, int n)
{
    char path[4400];
    for (int i = from; i < n; i++) {
        snprintf(path, sizeof path, "%s/%s", job->ckpt_dir, st[i].dir);
        MP_CHECK(mp_remove_tree(path));
    }
    return 0;
}

int mp_job_claim(const mp_job *job, const mp_fingerprint *fp, const mp_stage_id *st, int n, int fresh,
                 FILE *notes, int *resumed)
{
    char path[4200], hex[3][17];
    hex64(hex[0], fp->all), hex64(hex[1], fp->model), hex64(hex[2], fp->tokens);
    *resumed = 0;
    MP_CHECK(mp_mkdir_p(job->ckpt_dir));
    snprintf(path, sizeof path, "%s/job.json", job->ckpt_dir);
    char *want = job_json(job, fp, st, n), *old = NULL;
    if (!want)
        return mp_errorf(MP_ENOMEM, "out of memory");
    int rc = 0;
    if (access(path, F_OK) == 0) {
        size_t len;
        rc = mp_read_file(path, &old, &len);
        cJSON *j = rc == 0 ? cJSON_Parse(old) : NULL;
        const cJSON *ost = j ? cJSON_GetObjectItem(j, "stages") : NULL;
        if (rc == 0 && !fresh) {
            char what[512] = "";
            if (!j)
                strcat(what, " its job.json is unreadable;");
            else {
                if (strcmp(jstr(j, "model_fingerprint"), hex[1]))
                    strcat(what, " the model differs (config.json or tensor headers);");
            }
            if (what[0])
                rc = mp_errorf(MP_EMISMATCH,
                               "%s: checkpoint directory was made by another job:%s use another checkpoint.dir, or "
                               "--fresh to discard its results",
                               job->ckpt_dir, what);
        }
        if (rc == 0 && fresh)
            rc = remove_stage_dirs(job, st, 0, n);
        else if (rc == 0) {
            *resumed = 1;
            /* the first stage whose fingerprint changed: it and every later stage start over */
            for (int i = 0; i < n; i++) {
                const cJSON *o = cJSON_GetObjectItem(ost, st[i].name);
                char h[17];
                hex64(h, st[i].fp);
                if (o && !strcmp(jstr(o, "fingerprint"), h))
                    continue;
                char changes[2048];
                stage_changes(job, o, &st[i], changes, sizeof changes);
                if (notes) {
                    fprintf(notes, "%s: parameters changed (%s): its results and those of later stages are "
                                   "recomputed\n",
                            st[i].name, changes);
                    fflush(notes);
                }
                rc = remove_stage_dirs(job, st, i, n);
                break;
            }
        }
        cJSON_Delete(j);
    }
    /* job.json is rewritten only when it changes: a finished job can be rerun on a read-only directory */
    if (rc == 0 && (!old || strcmp(old, want)))
        rc = mp_write_file_atomic(path, want, strlen(want));
    free(old);
    free(want);
    return rc;
}
