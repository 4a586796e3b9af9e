/* st_write.c - streaming, atomic safetensors writer (see st_write.h). */
#include "st_write.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "checked.h"
#include "error.h"
#include "fsutil.h"

typedef struct {
    int shard;
    uint64_t begin, end;
} placement;

/* element count; declarations were checked by mp_st_write (mp_dims_product) before this is used */
static int64_t numel_of(const mp_st_decl *d)
{
    int64_t n = 0;
    mp_dims_product(d->shape, d->ndim, MP_MAX_ELEMS, &n);
    return n;
}

static char *header_json(const mp_st_decl *decl, const placement *pl, int n, int shard)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(root, "__metadata__");
    cJSON_AddStringToObject(meta, "format", "pt");
    for (int i = 0; i < n; i++) {
        if (pl[i].shard != shard)
            continue;
        cJSON *t = cJSON_AddObjectToObject(root, decl[i].name);
        cJSON_AddStringToObject(t, "dtype", mp_dtype_name(decl[i].dtype));
        cJSON *sh = cJSON_AddArrayToObject(t, "shape");
        for (int d = 0; d < decl[i].ndim; d++)
            cJSON_AddItemToArray(sh, cJSON_CreateNumber((double)decl[i].shape[d]));
        cJSON *off = cJSON_AddArrayToObject(t, "data_offsets");
        cJSON_AddItemToArray(off, cJSON_CreateNumber((double)pl[i].begin));
        cJSON_AddItemToArray(off, cJSON_CreateNumber((double)pl[i].end));
    }
    char *s = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return s;
}

static int convert_out(mp_dtype dt, const float *src, int64_t n, void *dst)
{
    if (dt == MP_DT_F32) {
        memcpy(dst, src, (size_t)n * 4);
    } else if (dt == MP_DT_BF16 || dt == MP_DT_F16) {
        uint16_t *o = dst;
        for (int64_t i = 0; i < n; i++)
            o[i] = dt == MP_DT_BF16 ? mp_f32_to_bf16(src[i]) : mp_f32_to_f16(src[i]);
    } else {
        return mp_errorf(MP_EINTERNAL, "writer cannot produce dtype %s", mp_dtype_name(dt));
    }
    return 0;
}

static void shard_name(char *buf, size_t cap, int s, int nshards)
{
    if (nshards == 1)
        snprintf(buf, cap, "model.safetensors");
    else
        snprintf(buf, cap, "model-%05d-of-%05d.safetensors", s + 1, nshards);
}

static int write_shard(const char *tmp, const mp_st_decl *decl, const placement *pl, int n, int shard,
                       mp_st_fill_fn fill, void *ctx)
{
    char *hj = header_json(decl, pl, n, shard);
    if (!hj)
        return mp_errorf(MP_ENOMEM, "out of memory");
    size_t hl = strlen(hj), padded = (hl + 7) & ~(size_t)7;
    FILE *fp = fopen(tmp, "wb");
    if (!fp) {
        free(hj);
        return mp_syserrorf(MP_EIO, "%s: cannot create", tmp);
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++)
        len8[i] = (unsigned char)((uint64_t)padded >> (8 * i));
    int rc = 0;
    MP_CHECK_GOTO(mp_fwrite_all(len8, 8, fp, tmp), out);
    MP_CHECK_GOTO(mp_fwrite_all(hj, hl, fp, tmp), out);
    for (size_t i = hl; i < padded; i++)
        MP_CHECK_GOTO(mp_fwrite_all(" ", 1, fp, tmp), out);
    for (int i = 0; i < n; i++) {
        if (pl[i].shard != shard)
            continue;
        int64_t ne = numel_of(&decl[i]);
        float *v = malloc((size_t)(ne ? ne : 1) * sizeof *v);
        void *o = malloc((size_t)(ne ? ne : 1) * mp_dtype_size(decl[i].dtype));
        if (!v || !o) {
            free(v);
            free(o);
            rc = mp_errorf(MP_ENOMEM, "out of memory for tensor '%s'", decl[i].name);
            goto out;
        }
        rc = fill(ctx, i, v, ne);
        if (rc == 0)
            rc = convert_out(decl[i].dtype, v, ne, o);
        if (rc == 0)
            rc = mp_fwrite_all(o, (size_t)ne * mp_dtype_size(decl[i].dtype), fp, tmp);
        free(v);
        free(o);
        MP_CHECK_GOTO(rc, out);
    }
out:
    free(hj);
    if (fclose(fp) != 0 && rc == 0)
        rc = mp_syserrorf(MP_EIO, "%s: write failed", tmp);
    return rc;
}

static int write_index(const char *path, const mp_st_decl *decl, const placement *pl, int n, int nshards,
                       uint64_t total)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(root, "metadata");
    cJSON_AddNumberToObject(meta, "total_size", (double)total);
    cJSON *wm = cJSON_AddObjectToObject(root, "weight_map");
    for (int i = 0; i < n; i++) {
        char nm[64];
        shard_name(nm, sizeof nm, pl[i].shard, nshards);
        cJSON_AddStringToObject(wm, decl[i].name, nm);
    }
    char *s = cJSON_Print(root);
    cJSON_Delete(root);
    if (!s)
        return mp_errorf(MP_ENOMEM, "out of memory");
    FILE *fp = fopen(path, "wb");
    int rc = fp ? mp_fwrite_all(s, strlen(s), fp, path) : mp_syserrorf(MP_EIO, "%s: cannot create", path);
    if (fp && fclose(fp) != 0 && rc == 0)
        rc = mp_syserrorf(MP_EIO, "%s: write failed", path);
    free(s);
    return rc;
}

int mp_st_write(const char *dir, const mp_st_decl *decl, int n, uint64_t max_shard_bytes, mp_st_fill_fn fill,
                void *ctx)
{
    placement *pl = calloc((size_t)(n ? n : 1), sizeof *pl);
    if (!pl)
        return mp_errorf(MP_ENOMEM, "out of memory");
    int shard = 0;
    uint64_t used = 0, total = 0;
    for (int i = 0; i < n; i++) {
        int64_t ne;
        if (decl[i].ndim < 0 || decl[i].ndim > 3 ||
            mp_dims_product(decl[i].shape, decl[i].ndim, MP_MAX_ELEMS, &ne) < 0) {
            free(pl);
            return mp_errorf(MP_EINTERNAL, "writer: tensor '%s' has an unusable shape", decl[i].name);
        }
        uint64_t b = (uint64_t)ne * mp_dtype_size(decl[i].dtype); /* < 2^53 */
        if (used > 0 && max_shard_bytes > 0 && used + b > max_shard_bytes) {
            shard++;
            used = 0;
        }
        pl[i].shard = shard;
        pl[i].begin = used;
        pl[i].end = used + b;
        used += b;
        total += b;
    }
    int nshards = shard + 1, rc = 0, written = 0;
    char (*tmp)[4200] = calloc((size_t)nshards + 1, sizeof *tmp);
    char (*fin)[4200] = calloc((size_t)nshards + 1, sizeof *fin);
    if (!tmp || !fin) {
        rc = mp_errorf(MP_ENOMEM, "out of memory");
        goto out;
    }
    for (int s = 0; s < nshards; s++) {
        char nm[64];
        shard_name(nm, sizeof nm, s, nshards);
        snprintf(fin[s], sizeof fin[s], "%s/%s", dir, nm);
        snprintf(tmp[s], sizeof tmp[s], "%s/.%s.tmp.%d", dir, nm, (int)getpid());
        written = s + 1;
        MP_CHECK_GOTO(write_shard(tmp[s], decl, pl, n, s, fill, ctx), out);
    }
    int nfiles = nshards;
    if (nshards > 1) {
        snprintf(fin[nshards], sizeof fin[nshards], "%s/model.safetensors.index.json", dir);
        snprintf(tmp[nshards], sizeof tmp[nshards], "%s/.model.safetensors.index.json.tmp.%d", dir, (int)getpid());
        written = nshards + 1;
        nfiles = nshards + 1;
        MP_CHECK_GOTO(write_index(tmp[nshards], decl, pl, n, nshards, total), out);
    }
    for (int s = 0; s < nfiles; s++) {
        MP_CHECK_GOTO(mp_commit_file(tmp[s], fin[s]), out);
        tmp[s][0] = '\0';
    }
out:
    if (rc < 0 && tmp)
        for (int s = 0; s < written; s++)
            if (tmp[s][0])
                unlink(tmp[s]);
    free(tmp);
    free(fin);
    free(pl);
    return rc;
}
