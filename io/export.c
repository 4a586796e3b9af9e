/* export.c - a moepack output as a Hugging Face safetensors checkpoint (see export.h). */
#define _GNU_SOURCE
#include "export.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "fsutil.h"
#include "outdir.h"
#include "st_write.h"

typedef struct {
    mp_outdir *o;
} ectx;

static int fill(void *ctx, int idx, float *out, int64_t n)
{
    mp_outdir *o = ((ectx *)ctx)->o;
    const mp_out_src *s = mp_outdir_src(o, idx);
    const mp_config *c = mp_outdir_config(o);
    int64_t d = c->hidden, f = c->moe_ffn;
    switch (s->kind) {
    case MP_SRC_PLAIN: return mp_outdir_read_plain(o, s->path, s->dtype, out, n);
    case MP_SRC_EXPERT:
        if (n != d * f)
            return mp_errorf(MP_EFORMAT, "%s: tensor %s has %lld elements, an expert projection %lld", mp_outdir_dir(o),
                             s->name, (long long)n, (long long)(d * f));
        return mp_outdir_read_expert(o, s->layer, s->expert, s->proj, out);
    case MP_SRC_SHARED: return mp_outdir_read_shared(o, s->layer, s->proj, out);
    case MP_SRC_DENSE:
        if (n != d * c->dense_ffn)
            return mp_errorf(MP_EFORMAT, "%s: tensor %s has %lld elements, a dense MLP projection %lld",
                             mp_outdir_dir(o), s->name, (long long)n, (long long)(d * c->dense_ffn));
        return mp_outdir_read_unit_proj(o, s->layer, MP_UNIT_DENSE, s->proj, out);
    case MP_SRC_FUSED: {
        int E = c->n_experts, gate_up = s->proj == 0;
        if (n != (int64_t)E * (gate_up ? 2 : 1) * d * f)
            return mp_errorf(MP_EFORMAT, "%s: fused tensor %s has %lld elements", mp_outdir_dir(o), s->name,
                             (long long)n);
        for (int e = 0; e < E; e++) {
            if (gate_up) { /* [E, 2f, d]: the gate rows first */
                MP_CHECK(mp_outdir_read_expert(o, s->layer, e, 0, out + (int64_t)e * 2 * f * d));
                MP_CHECK(mp_outdir_read_expert(o, s->layer, e, 1, out + (int64_t)e * 2 * f * d + f * d));
            } else
                MP_CHECK(mp_outdir_read_expert(o, s->layer, e, 2, out + (int64_t)e * d * f));
        }
        return 0;
    }
    }
    return mp_errorf(MP_EINTERNAL, "unknown tensor kind");
}

static int dir_empty_or_absent(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? 1 : 0;
    struct dirent *e;
    int empty = 1;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            empty = 0;
    closedir(d);
    return empty;
}

/* the small files of the source that tools load with the weights */
static int copy_side_files(const char *source, const char *outdir, FILE *notes)
{
    static const char *const FILES[] = {"generation_config.json",
                                        "tokenizer.json",
                                        "tokenizer_config.json",
                                        "tokenizer.model",
                                        "special_tokens_map.json",
                                        "vocab.json",
                                        "merges.txt",
                                        "added_tokens.json",
                                        NULL};
    if (!source) {
        if (notes)
            fprintf(notes, "export: note: tokenizer files are not part of a moepack output; --source MODEL_DIR "
                           "copies them from the original checkpoint\n");
        return 0;
    }
    struct stat st;
    if (stat(source, &st) != 0 || !S_ISDIR(st.st_mode))
        return mp_errorf(MP_ENOENT, "export --source %s: not a directory", source);
    int copied = 0;
    for (int i = 0; FILES[i]; i++) {
        char sp[4400], dp[4400], *buf = NULL;
        size_t n = 0;
        snprintf(sp, sizeof sp, "%s/%s", source, FILES[i]);
        if (access(sp, R_OK) != 0)
            continue;
        snprintf(dp, sizeof dp, "%s/%s", outdir, FILES[i]);
        MP_CHECK(mp_read_file(sp, &buf, &n));
        int rc = mp_write_file_atomic(dp, buf, n);
        free(buf);
        MP_CHECK(rc);
        if (notes)
            fprintf(notes, "%s%s", copied++ ? ", " : "export: copied from the source: ", FILES[i]);
    }
    if (notes)
        fprintf(notes, copied ? "\n" : "export: note: %s holds no tokenizer or generation files\n", source);
    return 0;
}

int mp_export_safetensors(const char *outdir, const char *dir, const char *source, uint64_t max_shard_bytes,
                          FILE *notes)
{
    if (!dir_empty_or_absent(dir))
        return mp_errorf(MP_EUSAGE, "export: %s exists and is not empty (choose a new directory)", dir);
    mp_outdir *o = NULL;
    MP_CHECK(mp_outdir_open(outdir, &o));
    int n = mp_outdir_nsrc(o), rc = mp_outdir_check_shards(o, 1);
    mp_st_decl *decl = calloc((size_t)n + 1, sizeof *decl);
    if (rc == 0 && !decl)
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    for (int i = 0; i < n && rc == 0; i++) {
        const mp_out_src *s = mp_outdir_src(o, i);
        mp_dtype dt = s->dtype;
        if (s->kind != MP_SRC_PLAIN && (dt == MP_DT_F8_E4M3 || dt == MP_DT_F8_E5M2))
            dt = MP_DT_BF16;
        if (dt != MP_DT_F32 && dt != MP_DT_F16 && dt != MP_DT_BF16)
            rc = mp_errorf(MP_EFORMAT, "export: tensor %s has dtype %s; only F32, F16 and BF16 can be written", s->name,
                           mp_dtype_name(dt));
        if (s->ndim > 3)
            rc = mp_errorf(MP_EFORMAT, "export: tensor %s has %d dimensions (at most 3 are written)", s->name, s->ndim);
        decl[i].name = s->name, decl[i].dtype = dt, decl[i].ndim = s->ndim;
        for (int d = 0; d < s->ndim && d < 3; d++)
            decl[i].shape[d] = s->shape[d];
    }
    if (rc == 0)
        rc = mp_mkdir_p(dir);
    if (rc == 0) {
        char cp[4400];
        const char *cfg = mp_outdir_config_json(o);
        snprintf(cp, sizeof cp, "%s/config.json", dir);
        rc = mp_write_file_atomic(cp, cfg, strlen(cfg));
    }
    ectx cx = {o};
    if (rc == 0)
        rc = mp_st_write(dir, decl, n, max_shard_bytes, fill, &cx);
    if (rc == 0)
        rc = copy_side_files(source, dir, notes);
    free(decl);
    mp_outdir_close(o);
    return rc;
}
