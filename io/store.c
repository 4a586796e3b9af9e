/* store.c - per-layer commit manifests with checksums (see store.h). */
#define _GNU_SOURCE
#include "store.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "error.h"
#include "fsutil.h"

int mp_file_xxh64(const char *path, uint64_t *out)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return mp_syserrorf(errno == ENOENT ? MP_ENOENT : MP_EIO, "%s: cannot open", path);
    XXH64_state_t *s = XXH64_createState();
    XXH64_reset(s, 0);
    char buf[1 << 16];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0)
        XXH64_update(s, buf, n);
    int err = ferror(f);
    fclose(f);
    *out = XXH64_digest(s);
    XXH64_freeState(s);
    return err ? mp_syserrorf(MP_EIO, "%s: read error", path) : 0;
}

static void manifest_path(char *buf, size_t cap, const char *dir, int l)
{
    snprintf(buf, cap, "%s/layer%04d/DONE", dir, l);
}

int mp_store_commit_layer(const char *dir, int l, uint64_t fp, const char *const *names, const uint64_t *hashes,
                          int n, int starved)
{
    char hex[17], path[4200];
    cJSON *j = cJSON_CreateObject();
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)fp);
    cJSON_AddStringToObject(j, "fingerprint", hex);
    cJSON *files = cJSON_AddObjectToObject(j, "files");
    for (int i = 0; i < n; i++) {
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)hashes[i]);
        cJSON_AddStringToObject(files, names[i], hex);
    }
    cJSON_AddNumberToObject(j, "starved", starved);
    char *txt = cJSON_Print(j);
    cJSON_Delete(j);
    if (!txt)
        return mp_errorf(MP_ENOMEM, "out of memory");
    manifest_path(path, sizeof path, dir, l);
    int rc = mp_write_file_atomic(path, txt, strlen(txt));
    free(txt);
    return rc;
}

int mp_store_layer_ok(const char *dir, int l, uint64_t fp, int *ok, int *starved, char *why, int why_cap)
{
    char path[4200], *txt = NULL;
    size_t n;
    *ok = 0, *starved = 0, why[0] = '\0';
    manifest_path(path, sizeof path, dir, l);
    if (access(path, F_OK) != 0)
        return 0;
    MP_CHECK(mp_read_file(path, &txt, &n));
    cJSON *j = cJSON_Parse(txt);
    free(txt);
    const cJSON *files = j ? cJSON_GetObjectItem(j, "files") : NULL, *st = j ? cJSON_GetObjectItem(j, "starved") : NULL;
    if (!cJSON_IsObject(files) || !cJSON_IsNumber(st)) {
        snprintf(why, (size_t)why_cap, "%s: unreadable manifest", path);
        cJSON_Delete(j);
        return 0;
    }
    const cJSON *jf = cJSON_GetObjectItem(j, "fingerprint");
    char want[17];
    snprintf(want, sizeof want, "%016llx", (unsigned long long)fp);
    if (!cJSON_IsString(jf) || strcmp(jf->valuestring, want)) {
        snprintf(why, (size_t)why_cap, "%s: made with other parameters (stage fingerprint %s, now %s)", path,
                 cJSON_IsString(jf) ? jf->valuestring : "none", want);
        cJSON_Delete(j);
        return 0;
    }
    int good = 1;
    const cJSON *it;
    cJSON_ArrayForEach(it, files)
    {
        char fp[4400], hex[17];
        uint64_t h = 0;
        snprintf(fp, sizeof fp, "%s/layer%04d/%s", dir, l, it->string);
        int rc = mp_file_xxh64(fp, &h);
        snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
        if (rc < 0 || !cJSON_IsString(it) || strcmp(hex, it->valuestring) != 0) {
            snprintf(why, (size_t)why_cap, "%s: %s", fp, rc < 0 ? "missing or unreadable" : "checksum mismatch");
            mp_error_clear();
            good = 0;
            break;
        }
    }
    *ok = good;
    *starved = st->valueint;
    cJSON_Delete(j);
    return 0;
}

void mp_summary_set(mp_summary *s, const char *key, double v)
{
    int i = 0;
    while (i < s->n && strcmp(s->key[i], key))
        i++;
    if (i == MP_SUMMARY_MAX)
        return;
    snprintf(s->key[i], sizeof s->key[i], "%s", key);
    s->val[i] = v;
    s->n += i == s->n;
}

double mp_summary_get(const mp_summary *s, const char *key)
{
    for (int i = 0; i < s->n; i++)
        if (!strcmp(s->key[i], key))
            return s->val[i];
    return NAN;
}

int mp_store_commit_stage(const char *dir, uint64_t fp, const mp_summary *s)
{
    char hex[17], path[4200];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)fp);
    cJSON *j = cJSON_CreateObject(), *sum;
    cJSON_AddStringToObject(j, "fingerprint", hex);
    sum = cJSON_AddObjectToObject(j, "summary");
    for (int i = 0; i < s->n; i++)
        cJSON_AddNumberToObject(sum, s->key[i], s->val[i]);
    char *txt = cJSON_Print(j);
    cJSON_Delete(j);
    if (!txt)
        return mp_errorf(MP_ENOMEM, "out of memory");
    snprintf(path, sizeof path, "%s/STAGE", dir);
    int rc = mp_write_file_atomic(path, txt, strlen(txt));
    free(txt);
    return rc;
}

int mp_store_stage_ok(const char *dir, uint64_t fp, int *ok, mp_summary *s)
{
    char path[4200], hex[17], *txt = NULL;
    size_t n;
    *ok = 0;
    memset(s, 0, sizeof *s);
    snprintf(path, sizeof path, "%s/STAGE", dir);
    if (access(path, F_OK) != 0)
        return 0;
    MP_CHECK(mp_read_file(path, &txt, &n));
    cJSON *j = cJSON_Parse(txt);
    free(txt);
    const cJSON *f = j ? cJSON_GetObjectItem(j, "fingerprint") : NULL, *sum = j ? cJSON_GetObjectItem(j, "summary") : NULL;
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)fp);
    if (cJSON_IsString(f) && !strcmp(f->valuestring, hex) && cJSON_IsObject(sum)) {
        const cJSON *it;
        cJSON_ArrayForEach(it, sum)
        {
            if (cJSON_IsNumber(it))
                mp_summary_set(s, it->string, it->valuedouble);
        }
        *ok = 1;
    }
    cJSON_Delete(j);
    return 0;
}
