/* job.c - job file, overrides, fingerprint, checkpoint claim (see job.h). */
#define _GNU_SOURCE
#include "job.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <ini.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "error.h"
#include "fsutil.h"
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

/* 0 ok, -1 bad value, -2 unknown key */
static int apply(mp_job *j, const char *base, const char *sec, const char *key, const char *v)
{
    if (!strcmp(sec, "model") && !strcmp(key, "path"))
        return set_path(j->model_path, base, v);
    if (!strcmp(sec, "calibration") && !strcmp(key, "tokens"))
        return set_path(j->tokens_path, base, v);
    if (!strcmp(sec, "calibration") && !strcmp(key, "min_tokens"))
        return set_int(&j->min_tokens, v, 0);
    if (!strcmp(sec, "calibration") && !strcmp(key, "max_sequences"))
        return set_int(&j->max_sequences, v, 0);
    if (!strcmp(sec, "checkpoint") && !strcmp(key, "dir"))
        return set_path(j->ckpt_dir, base, v);
    if (!strcmp(sec, "output") && !strcmp(key, "dir"))
        return set_path(j->out_dir, base, v);
    if (!strcmp(sec, "delta")) {
        if (!strcmp(key, "enabled")) {
            if (!strcmp(v, "true") || !strcmp(v, "1") || !strcmp(v, "yes"))
                return j->delta_enabled = 1, 0;
            if (!strcmp(v, "false") || !strcmp(v, "0") || !strcmp(v, "no"))
                return j->delta_enabled = 0, 0;
            return -1;
        }
        if (!strcmp(key, "fisher"))
            return set_path(j->fisher_path, base, v);
        if (!strcmp(key, "weights"))
            return strcmp(v, "activation") && strcmp(v, "frequency") && strcmp(v, "fisher")
                       ? -1
                       : (snprintf(j->delta_weights, sizeof j->delta_weights, "%s", v), 0);
        if (!strcmp(key, "solver"))
            return strcmp(v, "auto") && strcmp(v, "lapack") && strcmp(v, "randomized") && strcmp(v, "scalapack")
                       ? -1
                       : (snprintf(j->delta_solver, sizeof j->delta_solver, "%s", v), 0);
        if (!strcmp(key, "rank"))
            return set_int(&j->delta_rank, v, 0);
        if (!strcmp(key, "fraction"))
            return set_double(&j->delta_fraction, v, 0.0, 1.0);
        if (!strcmp(key, "lambda"))
            return set_double(&j->delta_lambda, v, 1e-300, 1.0);
        if (!strcmp(key, "target_ratio"))
            return set_double(&j->delta_target_ratio, v, 0.0, 0.999);
        if (!strcmp(key, "candidates")) {
            char buf[512], *save = NULL;
            if (strlen(v) >= sizeof buf)
                return -1;
            snprintf(buf, sizeof buf, "%s", v);
            j->n_candidates = 0;
            for (char *tok = strtok_r(buf, ", ", &save); tok; tok = strtok_r(NULL, ", ", &save)) {
                if (j->n_candidates == 16 || set_double(&j->candidates[j->n_candidates], tok, 1e-9, 1.0) < 0)
                    return -1;
                j->n_candidates++;
            }
            return j->n_candidates ? 0 : -1;
        }
    }
    return -2;
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
    job->min_tokens = 16;
    job->delta_enabled = 1;
    snprintf(job->delta_weights, sizeof job->delta_weights, "activation");
    snprintf(job->delta_solver, sizeof job->delta_solver, "auto");
    job->delta_fraction = 0.5;
    job->delta_lambda = 1e-6;
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
    if (!job->out_dir[0])
        snprintf(job->out_dir, sizeof job->out_dir, "moepack-out");
    if (!job->ckpt_dir[0]) {
        int n = snprintf(job->ckpt_dir, sizeof job->ckpt_dir, "%s/checkpoint", job->out_dir);
        if (n >= (int)sizeof job->ckpt_dir)
            return mp_errorf(MP_EUSAGE, "output.dir is too long");
    }
    return 0;
}

void mp_job_trim_tokens(const mp_job *job, mp_tokens *t)
{
    if (job->max_sequences > 0 && job->max_sequences < t->n_seq)
        t->n_seq = job->max_sequences;
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
    free(cfg);
    for (int i = 0; i < m->ck->nfiles; i++)
        XXH64_update(s, m->ck->files[i].map, m->ck->files[i].data_off);
    uint64_t h = XXH64_digest(s);
    XXH64_freeState(s);
    return h;
}

void mp_job_fingerprint(const mp_job *job, const mp_model *m, const mp_tokens *t, mp_fingerprint *fp)
{
    fp->model = hash_model(m);
    int32_t dims[2] = {t->n_seq, t->seq_len};
    XXH64_state_t *s = XXH64_createState();
    XXH64_reset(s, 2);
    XXH64_update(s, dims, sizeof dims);
    XXH64_update(s, t->ids, sizeof(int32_t) * (size_t)t->n_seq * (size_t)t->seq_len);
    fp->tokens = XXH64_digest(s);
    /* the version tag covers choices fixed in the code (statistics chunk of 256 tokens, format) */
    static const char tag[] = "moepack results v2; stats chunk 256";
    int32_t par[4] = {job->min_tokens, job->max_sequences, job->delta_enabled, job->delta_rank};
    double dpar[2] = {job->delta_fraction, job->delta_lambda};
    XXH64_reset(s, 3);
    XXH64_update(s, tag, sizeof tag);
    XXH64_update(s, par, sizeof par);
    XXH64_update(s, dpar, sizeof dpar);
    XXH64_update(s, job->delta_weights, strlen(job->delta_weights));
    if (!strcmp(job->delta_weights, "fisher")) { /* the Fisher file's contents change the base */
        uint64_t fh = 0;
        if (mp_file_xxh64(job->fisher_path, &fh) < 0)
            mp_error_clear(); /* a missing file is reported by the stage that reads it */
        XXH64_update(s, &fh, sizeof fh);
    }
    XXH64_update(s, job->delta_solver, strlen(job->delta_solver));
    XXH64_update(s, &job->delta_target_ratio, sizeof job->delta_target_ratio);
    XXH64_update(s, &job->n_candidates, sizeof job->n_candidates);
    XXH64_update(s, job->candidates, sizeof(double) * (size_t)job->n_candidates);
    fp->params = XXH64_digest(s);
    uint64_t parts[3] = {fp->model, fp->tokens, fp->params};
    fp->all = XXH64(parts, sizeof parts, 0);
    XXH64_freeState(s);
}

static const char *jstr(const cJSON *j, const char *k)
{
    const cJSON *v = cJSON_GetObjectItem(j, k);
    return cJSON_IsString(v) ? v->valuestring : "?";
}

int mp_job_claim_checkpoint(const mp_job *job, const mp_fingerprint *fp, int fresh, int *resumed)
{
    char path[4200], hex[4][17];
    const uint64_t v[4] = {fp->all, fp->model, fp->tokens, fp->params};
    for (int i = 0; i < 4; i++)
        snprintf(hex[i], sizeof hex[i], "%016llx", (unsigned long long)v[i]);
    *resumed = 0;
    MP_CHECK(mp_mkdir_p(job->ckpt_dir));
    snprintf(path, sizeof path, "%s/job.json", job->ckpt_dir);
    if (access(path, F_OK) == 0) {
        char *old = NULL;
        size_t n;
        MP_CHECK(mp_read_file(path, &old, &n));
        cJSON *j = cJSON_Parse(old);
        free(old);
        int same = j && !strcmp(jstr(j, "fingerprint"), hex[0]);
        if (!same && !fresh) {
            char what[512] = "";
            if (j && strcmp(jstr(j, "model_fingerprint"), hex[1]))
                strcat(what, " the model (config.json or tensor headers) differs;");
            if (j && strcmp(jstr(j, "tokens_fingerprint"), hex[2]))
                strcat(what, " the calibration tokens differ;");
            if (j && strcmp(jstr(j, "params_fingerprint"), hex[3])) {
                const cJSON *mt = cJSON_GetObjectItem(j, "min_tokens"), *ms = cJSON_GetObjectItem(j, "max_sequences");
                size_t k = strlen(what);
                snprintf(what + k, sizeof what - k, " parameters differ (min_tokens %d vs %d, max_sequences %d vs %d);",
                         cJSON_IsNumber(mt) ? mt->valueint : -1, job->min_tokens, cJSON_IsNumber(ms) ? ms->valueint : -1,
                         job->max_sequences);
            }
            if (!j)
                strcat(what, " its job.json is unreadable;");
            cJSON_Delete(j);
            return mp_errorf(MP_EMISMATCH,
                             "%s: checkpoint directory was made by another job:%s use another checkpoint.dir, or "
                             "--fresh to discard its results",
                             job->ckpt_dir, what);
        }
        cJSON_Delete(j);
        if (same && !fresh) {
            *resumed = 1;
            return 0; /* job.json is already right: a finished job can be rerun on a read-only directory */
        } else {
            char calib[4300];
            snprintf(calib, sizeof calib, "%s/calib", job->ckpt_dir);
            MP_CHECK(mp_remove_tree(calib));
        }
    }
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "fingerprint", hex[0]);
    cJSON_AddStringToObject(j, "model_fingerprint", hex[1]);
    cJSON_AddStringToObject(j, "tokens_fingerprint", hex[2]);
    cJSON_AddStringToObject(j, "params_fingerprint", hex[3]);
    cJSON_AddNumberToObject(j, "min_tokens", job->min_tokens);
    cJSON_AddNumberToObject(j, "max_sequences", job->max_sequences);
    char *txt = cJSON_Print(j);
    cJSON_Delete(j);
    if (!txt)
        return mp_errorf(MP_ENOMEM, "out of memory");
    int rc = mp_write_file_atomic(path, txt, strlen(txt));
    free(txt);
    return rc;
}
