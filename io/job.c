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

typedef struct {
    mp_job *job;
    const char *src; /* for messages */
    char base[4096]; /* directory for relative paths */
    int line, rc;
} parse_ctx;

static int set_path(char *dst, const char *base, const char *v)
{
    if (!*v)
        return -1;
    if (v[0] == '/' || !base[0])
        snprintf(dst, 4096, "%s", v);
    else
        snprintf(dst, 4096, "%s/%s", base, v);
    return 0;
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
    return -2;
}

static int on_ini(void *user, const char *sec, const char *key, const char *v)
{
    parse_ctx *p = user;
    int r = apply(p->job, p->base, sec, key, v);
    if (r == -2)
        p->rc = mp_errorf(MP_EUSAGE, "%s: unknown key '%s' in section [%s]", p->src, key, sec);
    else if (r < 0)
        p->rc = mp_errorf(MP_EUSAGE, "%s: bad value '%s' for %s.%s", p->src, v, sec, key);
    return r == 0;
}

int mp_job_load(const char *path, char *const *sets, int nsets, mp_job *job)
{
    memset(job, 0, sizeof *job);
    job->min_tokens = 16;
    if (path) {
        if (access(path, R_OK) != 0)
            return mp_syserrorf(MP_ENOENT, "job file %s", path);
        parse_ctx p = {job, path, "", 0, 0};
        char tmp[4096];
        snprintf(tmp, sizeof tmp, "%s", path);
        snprintf(p.base, sizeof p.base, "%s", dirname(tmp));
        int line = ini_parse(path, on_ini, &p);
        if (line > 0) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", p.rc < 0 ? mp_error_message() : "syntax error");
            return mp_errorf(MP_EUSAGE, "%s:%d: %s", path, line, msg);
        }
        if (line < 0)
            return mp_syserrorf(MP_EIO, "cannot read job file %s", path);
    }
    for (int i = 0; i < nsets; i++) {
        char buf[4400], *dot = NULL, *eq = NULL;
        snprintf(buf, sizeof buf, "%s", sets[i]);
        eq = strchr(buf, '=');
        if (eq)
            *eq = '\0';
        dot = strchr(buf, '.');
        if (!eq || !dot)
            return mp_errorf(MP_EUSAGE, "--set '%s': expected section.key=value", sets[i]);
        *dot = '\0';
        int r = apply(job, "", buf, dot + 1, eq + 1);
        if (r == -2)
            return mp_errorf(MP_EUSAGE, "--set '%s': unknown key", sets[i]);
        if (r < 0)
            return mp_errorf(MP_EUSAGE, "--set '%s': bad value", sets[i]);
    }
    if (!job->model_path[0])
        return mp_errorf(MP_EUSAGE, "%s: model.path is not set", path ? path : "job");
    if (!job->tokens_path[0])
        return mp_errorf(MP_EUSAGE, "%s: calibration.tokens is not set", path ? path : "job");
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

uint64_t mp_job_fingerprint(const mp_job *job, const mp_model *m, const mp_tokens *t)
{
    XXH64_state_t *s = XXH64_createState();
    XXH64_reset(s, 0);
    static const char tag[] = "moepack fingerprint v1; stats chunk 256";
    XXH64_update(s, tag, sizeof tag);
    char cfgp[4200], *cfg = NULL;
    size_t n = 0;
    snprintf(cfgp, sizeof cfgp, "%s/config.json", m->dir);
    if (mp_read_file(cfgp, &cfg, &n) == 0)
        XXH64_update(s, cfg, n);
    free(cfg);
    for (int i = 0; i < m->ck->nfiles; i++)
        XXH64_update(s, m->ck->files[i].map, m->ck->files[i].data_off);
    int32_t dims[2] = {t->n_seq, t->seq_len};
    XXH64_update(s, dims, sizeof dims);
    XXH64_update(s, t->ids, sizeof(int32_t) * (size_t)t->n_seq * (size_t)t->seq_len);
    int32_t par[2] = {job->min_tokens, job->max_sequences};
    XXH64_update(s, par, sizeof par);
    uint64_t h = XXH64_digest(s);
    XXH64_freeState(s);
    return h;
}

int mp_job_claim_checkpoint(const mp_job *job, uint64_t fp, int fresh)
{
    char path[4200], hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)fp);
    MP_CHECK(mp_mkdir_p(job->ckpt_dir));
    snprintf(path, sizeof path, "%s/job.json", job->ckpt_dir);
    char *old = NULL;
    size_t n;
    if (access(path, F_OK) == 0) {
        MP_CHECK(mp_read_file(path, &old, &n));
        cJSON *j = cJSON_Parse(old);
        const cJSON *f = j ? cJSON_GetObjectItem(j, "fingerprint") : NULL;
        int same = cJSON_IsString(f) && !strcmp(f->valuestring, hex);
        char was[64];
        snprintf(was, sizeof was, "%s", cJSON_IsString(f) ? f->valuestring : "unreadable");
        cJSON_Delete(j);
        free(old);
        if (!same && !fresh)
            return mp_errorf(MP_EMISMATCH,
                             "%s: checkpoint directory was made by another job (fingerprint %s, this job %s): the "
                             "model, tokens or parameters differ; use another checkpoint.dir or --fresh",
                             job->ckpt_dir, was, hex);
        if (!same) {
            char calib[4300];
            snprintf(calib, sizeof calib, "%s/calib", job->ckpt_dir);
            MP_CHECK(mp_remove_tree(calib));
        }
    }
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "fingerprint", hex);
    cJSON_AddStringToObject(j, "model", job->model_path);
    cJSON_AddStringToObject(j, "tokens", job->tokens_path);
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
