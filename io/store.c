/* store.c - per-layer commit manifests with checksums (see store.h). */
#define _GNU_SOURCE
#include "store.h"

#include <cjson/cJSON.h>
#include <errno.h>
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

int mp_store_commit_layer(const char *dir, int l, const char *const *names, const uint64_t *hashes, int n,
                          int starved)
{
    cJSON *j = cJSON_CreateObject(), *files = cJSON_AddObjectToObject(j, "files");
    char hex[17], path[4200];
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

int mp_store_layer_ok(const char *dir, int l, int *ok, int *starved, char *why, int why_cap)
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
