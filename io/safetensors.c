/* safetensors.c - validating, memory-mapped safetensors reader (see safetensors.h). */
#define _GNU_SOURCE
#include "safetensors.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "checked.h"
#include "error.h"
#include "fsutil.h"

#define MAX_HEADER_BYTES (100u << 20) /* the format's own limit */
#define MAX_INDEX_BYTES (256u << 20)  /* DeepSeek-V3's index.json is 9 MB */

typedef struct {
    char *name;
    mp_tensor t;
    uint64_t begin, end;
} raw_entry;

static int path_join(char *buf, size_t cap, const char *dir, const char *name)
{
    int n = snprintf(buf, cap, "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= cap)
        return mp_errorf(MP_EUSAGE, "path too long: %s/%s", dir, name);
    return 0;
}

static int map_file(const char *path, mp_st_file *f)
{
    int fd;
    size_t size;
    MP_CHECK(mp_open_regular(path, MP_EFORMAT, &fd, &size));
    f->size = size;
    f->map = NULL;
    if (f->size > 0) {
        void *m = mmap(NULL, f->size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            close(fd);
            return mp_syserrorf(MP_EIO, "%s: cannot mmap %zu bytes", path, f->size);
        }
        f->map = m;
    }
    close(fd);
    f->path = strdup(path);
    return f->path ? 0 : mp_errorf(MP_ENOMEM, "out of memory");
}

static int cmp_begin(const void *a, const void *b)
{
    const raw_entry *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end > y->end) - (x->end < y->end);
}

/* a non-negative integer that a double represents exactly (JSON numbers are doubles in cJSON) */
static int json_uint(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v))
        return -1;
    double d = v->valuedouble;
    if (!(d >= 0) || d > 9007199254740992.0 || floor(d) != d)
        return -1;
    *out = (uint64_t)d;
    return 0;
}

static int push_entry(raw_entry **ents, int *nents, int *cap, raw_entry *e)
{
    if (*nents == *cap) {
        if (*cap > INT32_MAX / 2)
            return mp_errorf(MP_EFORMAT, "more than %d tensors", *cap);
        int nc = *cap ? *cap * 2 : 256;
        raw_entry *ne = realloc(*ents, (size_t)nc * sizeof *ne);
        if (!ne)
            return mp_errorf(MP_ENOMEM, "out of memory");
        *ents = ne;
        *cap = nc;
    }
    (*ents)[(*nents)++] = *e;
    return 0;
}

/* One header entry `it` (alive while this runs: every message is formatted before the header is
 * freed) into *e. */
static int parse_entry(const char *p, const cJSON *it, uint64_t data_size, raw_entry *e)
{
    const char *nm = it->string;
    memset(e, 0, sizeof *e);
    if (!cJSON_IsObject(it))
        return mp_errorf(MP_EFORMAT, "%s: tensor '%s': header entry is not an object", p, nm);
    const cJSON *dt = cJSON_GetObjectItemCaseSensitive(it, "dtype");
    const cJSON *sh = cJSON_GetObjectItemCaseSensitive(it, "shape");
    const cJSON *off = cJSON_GetObjectItemCaseSensitive(it, "data_offsets");
    if (!cJSON_IsString(dt))
        return mp_errorf(MP_EFORMAT, "%s: tensor '%s': missing or non-string dtype", p, nm);
    if (mp_dtype_parse(dt->valuestring, &e->t.dtype) != 0)
        return mp_errorf(MP_EFORMAT, "%s: tensor '%s': unknown dtype '%.64s'", p, nm, dt->valuestring);
    if (!cJSON_IsArray(sh) || cJSON_GetArraySize(sh) > MP_MAX_DIMS)
        return mp_errorf(MP_EFORMAT, "%s: tensor '%s': shape must be an array of at most %d integers", p, nm,
                         MP_MAX_DIMS);
    e->t.ndim = cJSON_GetArraySize(sh);
    for (int d = 0; d < e->t.ndim; d++) {
        uint64_t v;
        if (json_uint(cJSON_GetArrayItem(sh, d), &v) != 0)
            return mp_errorf(MP_EFORMAT, "%s: tensor '%s': shape[%d] is not a non-negative integer", p, nm, d);
        if (v > (uint64_t)MP_MAX_ELEMS)
            return mp_errorf(MP_EFORMAT, "%s: tensor '%s': shape[%d] = %llu is larger than 2^50", p, nm, d,
                             (unsigned long long)v);
        e->t.shape[d] = (int64_t)v;
    }
    int64_t numel;
    if (mp_dims_product(e->t.shape, e->t.ndim, MP_MAX_ELEMS, &numel) < 0)
        return mp_errorf(MP_EFORMAT, "%s: tensor '%s': shape has more than 2^50 elements", p, nm);
    if (!cJSON_IsArray(off) || cJSON_GetArraySize(off) != 2 || json_uint(cJSON_GetArrayItem(off, 0), &e->begin) != 0 ||
        json_uint(cJSON_GetArrayItem(off, 1), &e->end) != 0)
        return mp_errorf(MP_EFORMAT, "%s: tensor '%s': data_offsets must be two non-negative integers", p, nm);
    if (e->begin > e->end || e->end > data_size)
        return mp_errorf(MP_EFORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] outside the data area of %llu bytes%s",
                         p, nm, (unsigned long long)e->begin, (unsigned long long)e->end, (unsigned long long)data_size,
                         e->end > data_size ? " (file truncated?)" : "");
    uint64_t want;
    if (mp_mul_u64((uint64_t)numel, mp_dtype_size(e->t.dtype), &want) < 0 || want != e->end - e->begin)
        return mp_errorf(MP_EFORMAT,
                         "%s: tensor '%s': shape x dtype size is %llu elements x %zu bytes but data_offsets span "
                         "%llu bytes",
                         p, nm, (unsigned long long)numel, mp_dtype_size(e->t.dtype),
                         (unsigned long long)(e->end - e->begin));
    e->t.numel = numel;
    e->t.nbytes = want;
    e->name = strdup(nm);
    return e->name ? 0 : mp_errorf(MP_ENOMEM, "out of memory");
}

/* Parse and validate one file's header; append its tensors to *ents. */
static int parse_header(mp_st_file *f, int file_idx, raw_entry **ents, int *nents, int *cap)
{
    const char *p = f->path;
    if (f->size < 8)
        return mp_errorf(MP_EFORMAT, "%s: file is %zu bytes, too short for a safetensors header (truncated?)", p,
                         f->size);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | f->map[i];
    if (hlen > f->size - 8)
        return mp_errorf(MP_EFORMAT,
                         "%s: header length %llu exceeds the file size %zu (truncated or not a safetensors file)",
                         p, (unsigned long long)hlen, f->size);
    if (hlen > MAX_HEADER_BYTES)
        return mp_errorf(MP_EFORMAT, "%s: header length %llu exceeds the 100 MiB limit", p,
                         (unsigned long long)hlen);
    const char *hdr = (const char *)f->map + 8;
    cJSON *root = cJSON_ParseWithLength(hdr, (size_t)hlen);
    if (!root || !cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return mp_errorf(MP_EFORMAT, "%s: header is not a JSON object", p);
    }
    f->data_off = 8 + (size_t)hlen;
    uint64_t data_size = f->size - 8 - hlen;
    int first = *nents;
    int rc = 0;
    for (cJSON *it = root->child; it && rc == 0; it = it->next) {
        if (strcmp(it->string, "__metadata__") == 0)
            continue;
        raw_entry e;
        rc = parse_entry(p, it, data_size, &e);
        if (rc == 0) {
            e.t.data = f->map + f->data_off + e.begin;
            e.t.file = file_idx;
            rc = push_entry(ents, nents, cap, &e);
            if (rc < 0)
                free(e.name);
        }
    }
    cJSON_Delete(root);
    if (rc < 0)
        return rc;
    /* overlap check among this file's tensors: sorted by start, each non-empty span must begin at or
     * after the furthest end of the non-empty spans before it */
    int n = *nents - first;
    if (n <= 0)
        return 0; /* a file without tensors is valid (and *ents may still be NULL) */
    raw_entry *tmp = malloc((size_t)(n > 0 ? n : 1) * sizeof *tmp);
    if (!tmp)
        return mp_errorf(MP_ENOMEM, "out of memory");
    memcpy(tmp, *ents + first, (size_t)n * sizeof *tmp);
    qsort(tmp, (size_t)n, sizeof *tmp, cmp_begin);
    int far = -1; /* the non-empty entry with the largest end so far */
    for (int i = 0; i < n && rc == 0; i++) {
        if (tmp[i].end == tmp[i].begin)
            continue;
        if (far >= 0 && tmp[i].begin < tmp[far].end)
            rc = mp_errorf(MP_EFORMAT, "%s: tensors '%s' and '%s' overlap in the data area", p, tmp[far].name,
                           tmp[i].name);
        if (far < 0 || tmp[i].end > tmp[far].end)
            far = i;
    }
    free(tmp);
    return rc;
}

static int cmp_name(const void *a, const void *b)
{
    return strcmp(((const raw_entry *)a)->name, ((const raw_entry *)b)->name);
}

static int has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int mp_st_shard_name_ok(const char *fn, const char **why)
{
    size_t n = strlen(fn);
    *why = NULL;
    if (n == 0)
        *why = "is empty";
    else if (n > 255)
        *why = "is longer than 255 bytes";
    else if (fn[0] == '/')
        *why = "is an absolute path";
    else if (strcmp(fn, ".") == 0 || strcmp(fn, "..") == 0)
        *why = "names a directory";
    else if (strchr(fn, '/') || strchr(fn, '\\'))
        *why = "contains a directory separator (shards are files in the checkpoint directory)";
    for (size_t i = 0; i < n && !*why; i++)
        if ((unsigned char)fn[i] < 0x20 || fn[i] == 0x7f)
            *why = "contains a control character";
    return *why ? -1 : 0;
}

/* quoted for messages: control characters as \xNN, at most 80 bytes */
static void quote_name(char *buf, size_t cap, const char *s)
{
    size_t o = 0;
    for (size_t i = 0; s[i] && o + 5 < cap && i < 80; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch == 0x7f)
            o += (size_t)snprintf(buf + o, cap - o, "\\x%02x", ch);
        else
            buf[o++] = (char)ch;
    }
    buf[o] = '\0';
}

void mp_st_index_free(mp_st_index *ix)
{
    for (int i = 0; i < ix->nfiles; i++)
        free(ix->files[i]);
    for (int i = 0; i < ix->ntensors; i++)
        free(ix->tensors[i]);
    free(ix->files);
    free(ix->tensors);
    free(ix->file_of);
    memset(ix, 0, sizeof *ix);
}

static int cmp_cstr(const void *a, const void *b) { return strcmp(*(const char *const *)a, *(const char *const *)b); }

int mp_st_index_parse(const char *json, size_t len, const char *what, mp_st_index *ix)
{
    memset(ix, 0, sizeof *ix);
    cJSON *idx = cJSON_ParseWithLength(json, len);
    const cJSON *wm = cJSON_IsObject(idx) ? cJSON_GetObjectItemCaseSensitive(idx, "weight_map") : NULL;
    int rc = 0;
    if (!cJSON_IsObject(wm)) {
        cJSON_Delete(idx);
        return mp_errorf(MP_EFORMAT, "%s: not a JSON object with a \"weight_map\" object", what);
    }
    int n = cJSON_GetArraySize(wm);
    if (n <= 0) {
        cJSON_Delete(idx);
        return mp_errorf(MP_EFORMAT, "%s: \"weight_map\" is empty", what);
    }
    ix->tensors = calloc((size_t)n, sizeof *ix->tensors);
    ix->file_of = calloc((size_t)n, sizeof *ix->file_of);
    ix->files = calloc((size_t)n, sizeof *ix->files);
    if (!ix->tensors || !ix->file_of || !ix->files) {
        rc = mp_errorf(MP_ENOMEM, "out of memory");
        goto out;
    }
    /* every message below is formatted while `idx` is alive; what outlives it is copied */
    for (const cJSON *it = wm->child; it; it = it->next) {
        char q[400];
        quote_name(q, sizeof q, it->string);
        if (!cJSON_IsString(it)) {
            rc = mp_errorf(MP_EFORMAT, "%s: weight_map entry '%s' is not a file name", what, q);
            goto out;
        }
        const char *fn = it->valuestring, *why;
        if (mp_st_shard_name_ok(fn, &why) < 0) {
            char qf[400];
            quote_name(qf, sizeof qf, fn);
            rc = mp_errorf(MP_EFORMAT, "%s: weight_map entry '%s': shard name '%s' %s", what, q, qf, why);
            goto out;
        }
        int f = 0;
        while (f < ix->nfiles && strcmp(ix->files[f], fn) != 0)
            f++;
        if (f == ix->nfiles) {
            if (!(ix->files[f] = strdup(fn))) {
                rc = mp_errorf(MP_ENOMEM, "out of memory");
                goto out;
            }
            ix->nfiles++;
        }
        if (!(ix->tensors[ix->ntensors] = strdup(it->string))) {
            rc = mp_errorf(MP_ENOMEM, "out of memory");
            goto out;
        }
        ix->file_of[ix->ntensors++] = f;
    }
    /* a tensor named twice (a JSON object with a repeated key) */
    char **sorted = malloc((size_t)ix->ntensors * sizeof *sorted);
    if (!sorted) {
        rc = mp_errorf(MP_ENOMEM, "out of memory");
        goto out;
    }
    memcpy(sorted, ix->tensors, (size_t)ix->ntensors * sizeof *sorted);
    qsort(sorted, (size_t)ix->ntensors, sizeof *sorted, cmp_cstr);
    for (int i = 1; i < ix->ntensors && rc == 0; i++)
        if (strcmp(sorted[i], sorted[i - 1]) == 0) {
            char q[400];
            quote_name(q, sizeof q, sorted[i]);
            rc = mp_errorf(MP_EFORMAT, "%s: weight_map names tensor '%s' twice", what, q);
        }
    free(sorted);
out:
    cJSON_Delete(idx);
    if (rc < 0)
        mp_st_index_free(ix);
    return rc;
}

/* Collect the shard file names: from the index (and check it), or by listing. */
static int list_shards(const char *dir, char ***names, int *n, mp_st_index *ix, int *have_index)
{
    char path[4096];
    MP_CHECK(path_join(path, sizeof path, dir, "model.safetensors.index.json"));
    *have_index = 0;
    *names = NULL;
    *n = 0;
    struct stat st;
    if (lstat(path, &st) == 0) {
        char *buf = NULL;
        size_t got = 0;
        MP_CHECK(mp_read_file_max(path, MAX_INDEX_BYTES, MP_EFORMAT, &buf, &got));
        int rc = mp_st_index_parse(buf, got, path, ix);
        free(buf);
        MP_CHECK(rc);
        *have_index = 1;
        *names = malloc((size_t)ix->nfiles * sizeof **names);
        if (!*names)
            return mp_errorf(MP_ENOMEM, "out of memory");
        for (int i = 0; i < ix->nfiles; i++)
            (*names)[i] = ix->files[i]; /* borrowed from the index */
        *n = ix->nfiles;
        qsort(*names, (size_t)*n, sizeof **names, cmp_str);
        return 0;
    }
    char single[4200];
    snprintf(single, sizeof single, "%s/model.safetensors", dir);
    if (lstat(single, &st) == 0) { /* the usual unsharded checkpoint: other files are not weights */
        *names = malloc(sizeof **names);
        if (!*names || !((*names)[0] = strdup("model.safetensors"))) {
            free(*names);
            *names = NULL;
            return mp_errorf(MP_ENOMEM, "out of memory");
        }
        *n = 1;
        return 0;
    }
    DIR *d = opendir(dir);
    if (!d)
        return mp_syserrorf(errno == ENOENT ? MP_ENOENT : MP_EIO, "%s: cannot open directory", dir);
    int cap = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!has_suffix(de->d_name, ".safetensors"))
            continue;
        if (*n == cap) {
            cap = cap ? 2 * cap : 16;
            char **nn = realloc(*names, (size_t)cap * sizeof *nn);
            if (!nn) {
                closedir(d);
                return mp_errorf(MP_ENOMEM, "out of memory");
            }
            *names = nn;
        }
        if (!((*names)[*n] = strdup(de->d_name))) {
            closedir(d);
            return mp_errorf(MP_ENOMEM, "out of memory");
        }
        (*n)++;
    }
    closedir(d);
    if (*n == 0)
        return mp_errorf(MP_ENOENT, "%s: no *.safetensors files and no model.safetensors.index.json", dir);
    qsort(*names, (size_t)*n, sizeof **names, cmp_str);
    return 0;
}

static int build(mp_ckpt *c, raw_entry *ents, int n)
{
    if (n > 0) /* ents is NULL when no file had a tensor */
        qsort(ents, (size_t)n, sizeof *ents, cmp_name);
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        if (i > 0 && strcmp(ents[i].name, ents[i - 1].name) == 0)
            return mp_errorf(MP_EFORMAT, "tensor '%s' appears twice: in %s and in %s", ents[i].name,
                             c->files[ents[i - 1].t.file].path, c->files[ents[i].t.file].path);
        total += strlen(ents[i].name) + 1;
    }
    c->names = malloc(total ? total : 1);
    c->tensors = calloc((size_t)(n > 0 ? n : 1), sizeof *c->tensors);
    if (!c->names || !c->tensors)
        return mp_errorf(MP_ENOMEM, "out of memory");
    char *q = c->names;
    for (int i = 0; i < n; i++) {
        size_t l = strlen(ents[i].name) + 1;
        memcpy(q, ents[i].name, l);
        c->tensors[i] = ents[i].t;
        c->tensors[i].name = q;
        q += l;
    }
    c->ntensors = n;
    return 0;
}

static void free_entries(raw_entry *e, int n)
{
    for (int i = 0; i < n; i++)
        free(e[i].name);
    free(e);
}

/* Map and parse the files `names` (relative to dir, or paths when dir is NULL); with `mem`, the single
 * file is the caller's buffer instead. */
static int open_files(mp_ckpt *c, const char *dir, char **names, int nnames, const void *mem, size_t mem_size)
{
    c->files = calloc((size_t)(nnames ? nnames : 1), sizeof *c->files);
    if (!c->files)
        return mp_errorf(MP_ENOMEM, "out of memory");
    raw_entry *ents = NULL;
    int nents = 0, cap = 0, rc = 0;
    for (int i = 0; i < nnames; i++) {
        char path[4096];
        if (dir)
            MP_CHECK_GOTO(path_join(path, sizeof path, dir, names[i]), out);
        else
            snprintf(path, sizeof path, "%s", names[i]);
        if (mem) {
            c->files[i].map = (unsigned char *)mem;
            c->files[i].size = mem_size;
            c->files[i].borrowed = 1;
            c->files[i].path = strdup(path);
            rc = c->files[i].path ? 0 : mp_errorf(MP_ENOMEM, "out of memory");
        } else {
            rc = map_file(path, &c->files[i]);
        }
        if (rc == MP_ENOENT && c->sharded) {
            rc = mp_errorf(MP_ENOENT, "%s: shard named in model.safetensors.index.json is missing", path);
            goto out;
        }
        MP_CHECK_GOTO(rc, out);
        c->nfiles = i + 1;
        MP_CHECK_GOTO(parse_header(&c->files[i], i, &ents, &nents, &cap), out);
    }
    MP_CHECK_GOTO(build(c, ents, nents), out);
out:
    free_entries(ents, nents);
    return rc;
}

static int check_index(const mp_ckpt *c, const mp_st_index *ix)
{
    for (int i = 0; i < ix->ntensors; i++) {
        const char *want = ix->files[ix->file_of[i]];
        const mp_tensor *t = mp_ckpt_find(c, ix->tensors[i]);
        if (!t)
            return mp_errorf(MP_ENOENT,
                             "%s/model.safetensors.index.json: tensor '%s' is mapped to %s but that "
                             "file does not contain it",
                             c->dir, ix->tensors[i], want);
        const char *base = strrchr(c->files[t->file].path, '/');
        base = base ? base + 1 : c->files[t->file].path;
        if (strcmp(base, want) != 0)
            return mp_errorf(MP_EFORMAT,
                             "%s/model.safetensors.index.json: tensor '%s' is mapped to %s but found "
                             "in %s",
                             c->dir, ix->tensors[i], want, base);
    }
    return 0;
}

int mp_ckpt_open(const char *dir, mp_ckpt **out)
{
    *out = NULL;
    char **names = NULL;
    int nnames = 0, rc = 0, have_index = 0;
    mp_st_index ix = {0};
    mp_ckpt *c = calloc(1, sizeof *c);
    if (!c)
        return mp_errorf(MP_ENOMEM, "out of memory");
    c->dir = strdup(dir);
    if (!c->dir) {
        rc = mp_errorf(MP_ENOMEM, "out of memory");
        goto fail;
    }
    MP_CHECK_GOTO(list_shards(dir, &names, &nnames, &ix, &have_index), fail);
    c->sharded = have_index;
    MP_CHECK_GOTO(open_files(c, dir, names, nnames, NULL, 0), fail);
    if (have_index)
        MP_CHECK_GOTO(check_index(c, &ix), fail);
    goto done;
fail:
    mp_ckpt_close(c);
    c = NULL;
done:
    if (!have_index)
        for (int i = 0; i < nnames; i++)
            free(names[i]);
    free(names);
    mp_st_index_free(&ix);
    *out = c;
    return rc;
}

static int open_single(const char *path, const void *mem, size_t size, mp_ckpt **out)
{
    *out = NULL;
    mp_ckpt *c = calloc(1, sizeof *c);
    if (!c)
        return mp_errorf(MP_ENOMEM, "out of memory");
    char *names[1] = {(char *)path};
    c->dir = strdup(path);
    int rc = c->dir ? open_files(c, NULL, names, 1, mem, size) : mp_errorf(MP_ENOMEM, "out of memory");
    if (rc < 0) {
        mp_error_trace(__FILE__, __LINE__, __func__);
        mp_ckpt_close(c);
        return rc;
    }
    *out = c;
    return 0;
}

int mp_ckpt_open_file(const char *path, mp_ckpt **out) { return open_single(path, NULL, 0, out); }

int mp_ckpt_open_mem(const void *buf, size_t size, const char *name, mp_ckpt **out)
{
    static const unsigned char none[1] = {0};
    return open_single(name, buf ? buf : none, buf ? size : 0, out);
}

void mp_ckpt_close(mp_ckpt *c)
{
    if (!c)
        return;
    for (int i = 0; i < c->nfiles; i++) {
        if (c->files[i].map && !c->files[i].borrowed)
            munmap(c->files[i].map, c->files[i].size);
        free(c->files[i].path);
    }
    free(c->files);
    free(c->tensors);
    free(c->names);
    free(c->dir);
    free(c);
}

const mp_tensor *mp_ckpt_find(const mp_ckpt *c, const char *name)
{
    int lo = 0, hi = c->ntensors - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        int r = strcmp(name, c->tensors[mid].name);
        if (r == 0)
            return &c->tensors[mid];
        if (r < 0)
            hi = mid - 1;
        else
            lo = mid + 1;
    }
    return NULL;
}

int mp_ckpt_get(const mp_ckpt *c, const char *name, const mp_tensor **out)
{
    *out = mp_ckpt_find(c, name);
    if (!*out)
        return mp_errorf(MP_ENOENT, "%s: tensor '%s' not found", c->dir, name);
    return 0;
}

int mp_tensor_is_aux(const char *name) { return has_suffix(name, "_scale_inv"); }

static int read_fp8_scaled(const mp_ckpt *c, const mp_tensor *t, const mp_tensor *s, int64_t first, int64_t n,
                           float *out)
{
    if (t->ndim != 2 || s->ndim != 2)
        return mp_errorf(MP_EFORMAT, "%s: FP8 tensor '%s' with scales must be 2-D", c->dir, t->name);
    int64_t rows = t->shape[0], cols = t->shape[1];
    int64_t br = (rows + MP_FP8_BLOCK - 1) / MP_FP8_BLOCK, bc = (cols + MP_FP8_BLOCK - 1) / MP_FP8_BLOCK;
    if (s->shape[0] != br || s->shape[1] != bc)
        return mp_errorf(MP_EFORMAT, "%s: tensor '%s' has shape [%lld, %lld]; expected [%lld, %lld] for %s", c->dir,
                         s->name, (long long)s->shape[0], (long long)s->shape[1], (long long)br, (long long)bc,
                         t->name);
    if (!mp_dtype_is_float(s->dtype))
        return mp_errorf(MP_EFORMAT, "%s: scale tensor '%s' has non-float dtype %s", c->dir, s->name,
                         mp_dtype_name(s->dtype));
    /* s->numel = br * bc was checked against the file when the header was read */
    float *scale = malloc((size_t)(s->numel ? s->numel : 1) * sizeof *scale);
    if (!scale)
        return mp_errorf(MP_ENOMEM, "out of memory");
    mp_convert_to_f32(s->dtype, s->data, (size_t)s->numel, scale);
    mp_convert_to_f32(t->dtype, t->data + first, (size_t)n, out);
    for (int64_t k = 0; k < n; k++) {
        int64_t idx = first + k, i = idx / cols, j = idx % cols;
        out[k] *= scale[(i / MP_FP8_BLOCK) * bc + j / MP_FP8_BLOCK];
    }
    free(scale);
    return 0;
}

/* The values were copied out: drop every page that [p, p + n) touches from this process's resident set
 * (the page cache keeps them), so resident memory follows what a stage holds, not the model size. The
 * kernel maps the cached pages around a faulting one too (fault-around, 64 KB by default), so the pages of
 * the 64 KB-aligned blocks at both ends go as well, inside the file's mapping f: the mapping is read-only,
 * so a neighbour's next read only maps them again. Kept, those neighbours of every embedding row made the
 * resident set grow with the distinct token ids (+30 MB from 16 to 64 calibration sequences of the Mixtral
 * bench model with the row's own pages dropped, +40 MB from 8 to 32 of the Qwen3-MoE one with its two end
 * pages dropped as well). */
#define FAULT_AROUND ((uintptr_t)64 << 10)
static void release_pages(const mp_st_file *f, const unsigned char *p, size_t n)
{
    static uintptr_t page = 0;
    if (!page)
        page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t lo = (uintptr_t)f->map, hi = (lo + f->size + page - 1) & ~(page - 1);
    uintptr_t a = (uintptr_t)p & ~(FAULT_AROUND - 1), b = ((uintptr_t)p + n + FAULT_AROUND - 1) & ~(FAULT_AROUND - 1);
    a = a > lo ? a : lo, b = b < hi ? b : hi;
    if (n > 0 && b > a)
        mp_pages_drop((const void *)a, b - a);
}

/* elements [first, first + n) of t as fp32 into out; their pages stay mapped */
static int copy_f32(const mp_ckpt *c, const mp_tensor *t, int64_t first, int64_t n, float *out)
{
    int64_t last;
    if (first < 0 || mp_add_i64(first, n, &last) < 0 || last > t->numel)
        return mp_errorf(MP_EINTERNAL, "%s: read of elements [%lld, %lld) outside tensor '%s' of %lld elements",
                         c->dir, (long long)first, (long long)(first + n), t->name, (long long)t->numel);
    if (!mp_dtype_is_float(t->dtype))
        return mp_errorf(MP_EFORMAT, "%s: tensor '%s' has dtype %s; a floating-point weight is required", c->dir,
                         t->name, mp_dtype_name(t->dtype));
    if (t->dtype == MP_DT_F8_E4M3 || t->dtype == MP_DT_F8_E5M2) {
        char sname[1024];
        int len = snprintf(sname, sizeof sname, "%s_scale_inv", t->name);
        const mp_tensor *s = len > 0 && (size_t)len < sizeof sname ? mp_ckpt_find(c, sname) : NULL;
        if (s)
            return read_fp8_scaled(c, t, s, first, n, out);
    }
    mp_convert_to_f32(t->dtype, t->data + (size_t)first * mp_dtype_size(t->dtype), (size_t)n, out);
    return 0;
}

/* the pages of elements [first, first + n) of t out of the resident set (release_pages) */
static void release_elements(const mp_ckpt *c, const mp_tensor *t, int64_t first, int64_t n)
{
    size_t es = mp_dtype_size(t->dtype);
    if (!c->files[t->file].borrowed) /* never on a caller's buffer: DONTNEED would zero anonymous memory */
        release_pages(&c->files[t->file], t->data + (size_t)first * es, (size_t)n * es);
}

int mp_ckpt_read_f32(const mp_ckpt *c, const mp_tensor *t, int64_t first, int64_t n, float *out)
{
    MP_CHECK(copy_f32(c, t, first, n, out));
    release_elements(c, t, first, n);
    return 0;
}

int mp_ckpt_read_rows_f32(const mp_ckpt *c, const mp_tensor *t, const int32_t *rows, int n, int64_t width, float *out)
{
    int64_t lo = INT64_MAX, hi = -1;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++)
        if ((rc = copy_f32(c, t, (int64_t)rows[i] * width, width, out + (int64_t)i * width)) == 0)
            lo = rows[i] < lo ? rows[i] : lo, hi = rows[i] > hi ? rows[i] : hi;
    if (hi >= lo) /* once for the span of the rows read: one TLB flush, not n */
        release_elements(c, t, lo * width, (hi + 1 - lo) * width);
    return rc;
}

int mp_ckpt_read_named_f32(const mp_ckpt *c, const char *name, float *out, int64_t cap)
{
    const mp_tensor *t;
    MP_CHECK(mp_ckpt_get(c, name, &t));
    if (t->numel > cap)
        return mp_errorf(MP_EFORMAT, "%s: tensor '%s' has %lld elements, buffer holds %lld", c->dir, name,
                         (long long)t->numel, (long long)cap);
    return mp_ckpt_read_f32(c, t, 0, t->numel, out);
}
