/* device_profile.c - device profile (JSON) and measured-timings (CSV) readers (see device_profile.h). */
#include "device_profile.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "fsutil.h"

#define MAX_FILE_BYTES (64u << 20)

static int get_string(const cJSON *obj, const char *key, const char *what, char *dst, size_t cap)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v)
        return mp_errorf(MP_EFORMAT, "%s: missing key '%s'", what, key);
    if (!cJSON_IsString(v) || !v->valuestring[0])
        return mp_errorf(MP_EFORMAT, "%s: key '%s' must be a non-empty string", what, key);
    if (strlen(v->valuestring) >= cap)
        return mp_errorf(MP_EFORMAT, "%s: key '%s' is longer than %zu characters", what, key, cap - 1);
    snprintf(dst, cap, "%s", v->valuestring);
    return 0;
}

/* a number; required when `required`, else absent -> 0; must be > 0 when `positive`, >= 0 otherwise */
static int get_rate(const cJSON *obj, const char *key, const char *prefix, const char *what, int required, int positive,
                    double *out)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    *out = 0;
    if (!v) {
        if (required)
            return mp_errorf(MP_EFORMAT, "%s: missing key '%s%s'", what, prefix, key);
        return 0;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < 0 || (positive && !(v->valuedouble > 0)))
        return mp_errorf(MP_EFORMAT, "%s: key '%s%s' must be a number %s 0", what, prefix, key, positive ? ">" : ">=");
    *out = v->valuedouble;
    return 0;
}

static int parse_profile(const cJSON *root, const char *what, mp_device_profile *d)
{
    static const char *top[] = {"name", "hbm_bandwidth_bytes_per_s", "peak_ops_per_s", "source", "notes"};
    if (!cJSON_IsObject(root))
        return mp_errorf(MP_EFORMAT, "%s: not a JSON object", what);
    for (const cJSON *c = root->child; c; c = c->next) {
        int known = 0;
        for (size_t i = 0; i < sizeof top / sizeof top[0]; i++)
            known |= strcmp(c->string, top[i]) == 0;
        if (!known)
            return mp_errorf(MP_EFORMAT,
                             "%s: unknown key '%s' (known: name, hbm_bandwidth_bytes_per_s, peak_ops_per_s, "
                             "source, notes)",
                             what, c->string);
    }
    MP_CHECK(get_string(root, "name", what, d->name, sizeof d->name));
    MP_CHECK(get_rate(root, "hbm_bandwidth_bytes_per_s", "", what, 1, 1, &d->hbm_bytes_per_s));
    const cJSON *peak = cJSON_GetObjectItemCaseSensitive(root, "peak_ops_per_s");
    if (!peak)
        return mp_errorf(MP_EFORMAT, "%s: missing key 'peak_ops_per_s'", what);
    if (!cJSON_IsObject(peak))
        return mp_errorf(MP_EFORMAT, "%s: key 'peak_ops_per_s' must be an object of rates per kind", what);
    for (const cJSON *c = peak->child; c; c = c->next) {
        mp_compute_kind k;
        if (mp_compute_kind_from_name(c->string, &k) < 0)
            return mp_errorf(MP_EFORMAT, "%s: unknown key 'peak_ops_per_s.%s' (known: fp16, int8, fp8, int4)", what,
                             c->string);
    }
    for (int k = 0; k < MP_COMPUTE_COUNT; k++)
        MP_CHECK(get_rate(peak, mp_compute_kind_name((mp_compute_kind)k), "peak_ops_per_s.", what, k == MP_COMPUTE_FP16,
                          k == MP_COMPUTE_FP16, &d->peak_ops_per_s[k]));
    MP_CHECK(get_string(root, "source", what, d->source, sizeof d->source));
    const cJSON *notes = cJSON_GetObjectItemCaseSensitive(root, "notes");
    if (notes && !cJSON_IsString(notes))
        return mp_errorf(MP_EFORMAT, "%s: key 'notes' must be a string", what);
    return 0;
}

int mp_device_profile_parse(const char *json, const char *what, mp_device_profile *d)
{
    memset(d, 0, sizeof *d);
    cJSON *root = cJSON_Parse(json);
    if (!root)
        return mp_errorf(MP_EFORMAT, "%s: not valid JSON", what);
    int rc = parse_profile(root, what, d);
    cJSON_Delete(root);
    if (rc < 0) {
        memset(d, 0, sizeof *d);
        MP_CHECK(rc);
    }
    return 0;
}

int mp_device_profile_load(const char *path, mp_device_profile *d)
{
    memset(d, 0, sizeof *d);
    char *buf = NULL;
    size_t n = 0;
    MP_CHECK(mp_read_file(path, &buf, &n));
    int rc = n > MAX_FILE_BYTES ? mp_errorf(MP_EFORMAT, "%s: unreasonable size %zu bytes", path, n)
                                : mp_device_profile_parse(buf, path, d);
    free(buf);
    MP_CHECK(rc);
    return 0;
}

/* ---- timings CSV ------------------------------------------------------------------------------------------ */

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

static int parse_i64(const char *s, int64_t *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end)
        return -1;
    *out = v;
    return 0;
}

static int parse_line(char *line, const char *what, int lineno, mp_timings *tt)
{
    static const char *names[5] = {"format", "m", "n", "tokens", "seconds"};
    char *f[5];
    int nf = 0;
    for (char *p = line;; p++) {
        char *c = strchr(p, ',');
        if (nf == 5)
            return mp_errorf(MP_EFORMAT, "%s:%d: more than 5 comma-separated fields", what, lineno);
        f[nf++] = p;
        if (!c)
            break;
        *c = '\0';
        p = c;
    }
    if (nf != 5)
        return mp_errorf(MP_EFORMAT, "%s:%d: expected 5 comma-separated fields (format,m,n,tokens,seconds), got %d",
                         what, lineno, nf);
    for (int i = 0; i < 5; i++)
        f[i] = trim(f[i]);
    int64_t v[3];
    for (int i = 0; i < 3; i++)
        if (parse_i64(f[1 + i], &v[i]) < 0 || v[i] < 1)
            return mp_errorf(MP_EFORMAT, "%s:%d: field '%s' must be a positive integer, got '%s'", what, lineno,
                             names[1 + i], f[1 + i]);
    char *end;
    double s = strtod(f[4], &end);
    if (end == f[4] || *end || !isfinite(s) || !(s > 0))
        return mp_errorf(MP_EFORMAT, "%s:%d: field 'seconds' must be a positive number, got '%s'", what, lineno, f[4]);
    int rc = mp_timings_add(tt, f[0], v[0], v[1], v[2], s);
    if (rc == MP_EUSAGE) {
        char msg[256];
        snprintf(msg, sizeof msg, "%s", mp_error_message());
        return mp_errorf(MP_EFORMAT, "%s:%d: %s", what, lineno, msg);
    }
    MP_CHECK(rc);
    return 0;
}

int mp_timings_parse(const char *csv, const char *what, mp_timings *tt)
{
    mp_timings_init(tt);
    char *buf = strdup(csv);
    if (!buf)
        return mp_errorf(MP_ENOMEM, "%s: out of memory", what);
    int rc = 0, lineno = 0, header = 0;
    char *save = NULL;
    for (char *p = buf; p; p = save) {
        char *nl = strchr(p, '\n');
        save = nl ? nl + 1 : NULL;
        if (nl)
            *nl = '\0';
        lineno++;
        char *line = trim(p);
        if (!line[0] || line[0] == '#')
            continue;
        if (!header) {
            char *q = line, norm[128];
            size_t k = 0;
            for (; *q && k + 1 < sizeof norm; q++)
                if (!isspace((unsigned char)*q))
                    norm[k++] = *q;
            norm[k] = '\0';
            if (strcmp(norm, "format,m,n,tokens,seconds") != 0) {
                rc = mp_errorf(MP_EFORMAT, "%s:%d: expected the header 'format,m,n,tokens,seconds'", what, lineno);
                break;
            }
            header = 1;
            continue;
        }
        rc = parse_line(line, what, lineno, tt);
        if (rc < 0)
            break;
    }
    if (rc == 0 && !header)
        rc = mp_errorf(MP_EFORMAT, "%s: no header 'format,m,n,tokens,seconds'", what);
    free(buf);
    if (rc < 0) {
        mp_timings_free(tt);
        MP_CHECK(rc);
    }
    return 0;
}

int mp_timings_load(const char *path, mp_timings *tt)
{
    mp_timings_init(tt);
    char *buf = NULL;
    size_t n = 0;
    MP_CHECK(mp_read_file(path, &buf, &n));
    int rc = n > MAX_FILE_BYTES ? mp_errorf(MP_EFORMAT, "%s: unreasonable size %zu bytes", path, n)
                                : mp_timings_parse(buf, path, tt);
    free(buf);
    MP_CHECK(rc);
    return 0;
}
