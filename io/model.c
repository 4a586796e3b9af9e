/* model.c - open a checkpoint directory and check it against the registry (see model.h). */
#include "model.h"

#include <stdarg.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "vmath.h"

static int detect_layout(mp_model *m)
{
    m->layout = MP_LAYOUT_PER_EXPERT;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        if (!m->cfg.is_moe[l])
            continue;
        char nm[MP_NAME_MAX];
        snprintf(nm, sizeof nm, "model.layers.%d.mlp.experts.gate_up_proj", l);
        if (mp_ckpt_find(m->ck, nm))
            m->layout = MP_LAYOUT_FUSED;
        break;
    }
    return 0;
}

/* 1 when tensors a and b (same shape) hold equal values, compared as fp32 in chunks (NaN != NaN, as
 * torch.equal); 0 when they differ; < 0 on error */
static int same_values(const mp_ckpt *ck, const mp_tensor *a, const mp_tensor *b)
{
    enum { CHUNK = 1 << 16 };
    float *x = malloc(2 * CHUNK * sizeof *x);
    if (!x)
        return mp_errorf(MP_ENOMEM, "out of memory");
    float *y = x + CHUNK;
    int rc = 1;
    for (int64_t i = 0; i < a->numel && rc == 1; i += CHUNK) {
        int64_t n = a->numel - i < CHUNK ? a->numel - i : CHUNK;
        rc = mp_ckpt_read_f32(ck, a, i, n, x);
        if (rc == 0)
            rc = mp_ckpt_read_f32(ck, b, i, n, y);
        if (rc == 0) {
            rc = 1;
            for (int64_t k = 0; k < n && rc == 1; k++)
                rc = x[k] == y[k];
        }
    }
    free(x);
    return rc;
}

/* The output head (see mp_model.head_name): with tie_word_embeddings and an lm_head.weight in the file,
 * lm_head.weight becomes an expected tensor (shape [vocab, hidden] checked like any other), and it is
 * the head unless it holds the same values as the embedding. */
static int resolve_head(mp_model *m)
{
    static const char *EMB = "model.embed_tokens.weight", *HEAD = "lm_head.weight";
    snprintf(m->head_name, sizeof m->head_name, "%s", m->cfg.tie_embeddings ? EMB : HEAD);
    const mp_tensor *h = mp_ckpt_find(m->ck, HEAD), *e = mp_ckpt_find(m->ck, EMB);
    if (!m->cfg.tie_embeddings || !h)
        return 0;
    mp_tensor_spec *ns = realloc(m->specs, (size_t)(m->nspecs + 1) * sizeof *ns);
    if (!ns)
        return mp_errorf(MP_ENOMEM, "out of memory");
    m->specs = ns;
    mp_tensor_spec *sp = &m->specs[m->nspecs++];
    memset(sp, 0, sizeof *sp);
    snprintf(sp->name, sizeof sp->name, "%s", HEAD);
    sp->ndim = 2;
    sp->shape[0] = m->cfg.vocab;
    sp->shape[1] = m->cfg.hidden;
    sp->role = MP_ROLE_LM_HEAD;
    sp->layer = sp->expert = -1;
    if (!e || e->ndim != 2 || h->ndim != 2 || e->shape[0] != h->shape[0] || e->shape[1] != h->shape[1] ||
        h->shape[0] != m->cfg.vocab || h->shape[1] != m->cfg.hidden || !mp_dtype_is_float(e->dtype) ||
        !mp_dtype_is_float(h->dtype))
        return 0; /* mp_model_check reports what is wrong */
    int same = same_values(m->ck, e, h);
    MP_CHECK(same);
    if (!same) {
        snprintf(m->head_name, sizeof m->head_name, "%s", HEAD);
        m->head_untied = 1;
    }
    return 0;
}

int mp_model_open_unchecked(const char *dir, mp_model **out)
{
    *out = NULL;
    int rc = 0;
    mp_model *m = calloc(1, sizeof *m);
    if (!m)
        return mp_errorf(MP_ENOMEM, "out of memory");
    m->dir = strdup(dir);
    char path[4096];
    if (!m->dir) {
        rc = mp_errorf(MP_ENOMEM, "out of memory");
        goto fail;
    }
    if (snprintf(path, sizeof path, "%s/config.json", dir) >= (int)sizeof path) {
        rc = mp_errorf(MP_EUSAGE, "checkpoint path too long: %.200s...", dir);
        goto fail;
    }
    rc = mp_config_load(path, &m->cfg);
    if (rc == MP_ENOENT)
        rc = mp_errorf(MP_ENOENT, "%s: no config.json (not a Hugging Face checkpoint directory)", dir);
    MP_CHECK_GOTO(rc, fail);
    MP_CHECK_GOTO(mp_ckpt_open(dir, &m->ck), fail);
    MP_CHECK_GOTO(detect_layout(m), fail);
    MP_CHECK_GOTO(mp_registry_list(&m->cfg, m->layout, &m->specs, &m->nspecs), fail);
    MP_CHECK_GOTO(resolve_head(m), fail);
    *out = m;
    return 0;
fail:
    mp_model_close(m);
    return rc;
}

int mp_model_open(const char *dir, mp_model **out)
{
    mp_model *m;
    MP_CHECK(mp_model_open_unchecked(dir, &m));
    mp_problem *pr = NULL;
    int np = 0, rc = mp_model_check(m, &pr, &np);
    for (int i = 0; i < np && rc == 0; i++)
        if (mp_problem_is_error(pr[i].kind))
            rc = mp_errorf(pr[i].kind == MP_PROBLEM_MISSING ? MP_ENOENT : MP_EFORMAT, "%s: %s", dir, pr[i].text);
    free(pr);
    if (rc < 0) {
        mp_model_close(m);
        MP_CHECK(rc);
    }
    *out = m;
    return 0;
}

void mp_model_close(mp_model *m)
{
    if (!m)
        return;
    mp_ckpt_close(m->ck);
    mp_config_free(&m->cfg);
    free(m->specs);
    free(m->dir);
    free(m);
}

static int cmp_spec(const void *a, const void *b)
{
    return strcmp(((const mp_tensor_spec *)a)->name, ((const mp_tensor_spec *)b)->name);
}

static int push(mp_problem **v, int *n, int *cap, mp_problem_kind k, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static int push(mp_problem **v, int *n, int *cap, mp_problem_kind k, const char *fmt, ...)
{
    if (*n == *cap) {
        int nc = *cap ? 2 * *cap : 32;
        mp_problem *nv = realloc(*v, (size_t)nc * sizeof *nv);
        if (!nv)
            return mp_errorf(MP_ENOMEM, "out of memory");
        *v = nv;
        *cap = nc;
    }
    mp_problem *p = &(*v)[(*n)++];
    p->kind = k;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->text, sizeof p->text, fmt, ap);
    va_end(ap);
    return 0;
}

static void shape_str(char *buf, size_t cap, int ndim, const int64_t *shape)
{
    size_t o = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (o < cap)
        snprintf(buf + o, cap - o, "]");
}

int mp_model_check(const mp_model *m, mp_problem **problems, int *nproblems)
{
    mp_problem *v = NULL;
    int n = 0, cap = 0;
    for (int i = 0; i < m->nspecs; i++) {
        const mp_tensor_spec *s = &m->specs[i];
        const mp_tensor *t = mp_ckpt_find(m->ck, s->name);
        char want[96], got[96];
        if (!t) {
            MP_CHECK(push(&v, &n, &cap, MP_PROBLEM_MISSING, "missing tensor '%s' (%s, layer %d)", s->name,
                          mp_role_name(s->role), s->layer));
            continue;
        }
        int same = t->ndim == s->ndim;
        for (int d = 0; same && d < s->ndim; d++)
            same = t->shape[d] == s->shape[d];
        if (!same) {
            shape_str(want, sizeof want, s->ndim, s->shape);
            shape_str(got, sizeof got, t->ndim, t->shape);
            MP_CHECK(push(&v, &n, &cap, MP_PROBLEM_SHAPE, "tensor '%s' has shape %s, config.json implies %s",
                          s->name, got, want));
        }
        if (!mp_dtype_is_float(t->dtype))
            MP_CHECK(push(&v, &n, &cap, MP_PROBLEM_DTYPE, "tensor '%s' has non-float dtype %s", s->name,
                          mp_dtype_name(t->dtype)));
    }
    if (m->head_untied)
        MP_CHECK(push(&v, &n, &cap, MP_PROBLEM_NOTE,
                      "tie_word_embeddings is true but lm_head.weight in the checkpoint differs from "
                      "model.embed_tokens.weight: the output head is the file's lm_head.weight (as in transformers, "
                      "which does not tie them)"));
    mp_tensor_spec *sorted = malloc((size_t)(m->nspecs ? m->nspecs : 1) * sizeof *sorted);
    if (!sorted) {
        free(v);
        return mp_errorf(MP_ENOMEM, "out of memory");
    }
    memcpy(sorted, m->specs, (size_t)m->nspecs * sizeof *sorted);
    qsort(sorted, (size_t)m->nspecs, sizeof *sorted, cmp_spec);
    int rc = 0;
    for (int i = 0; i < m->ck->ntensors && rc == 0; i++) {
        const char *nm = m->ck->tensors[i].name;
        mp_tensor_spec key;
        snprintf(key.name, sizeof key.name, "%s", nm);
        if (mp_tensor_is_aux(nm) || strstr(nm, "rotary_emb.inv_freq"))
            continue;
        if (!bsearch(&key, sorted, (size_t)m->nspecs, sizeof *sorted, cmp_spec))
            rc = push(&v, &n, &cap, MP_PROBLEM_UNEXPECTED, "unexpected tensor '%s' (ignored)", nm);
    }
    free(sorted);
    if (rc < 0) {
        free(v);
        MP_CHECK(rc);
    }
    *problems = v;
    *nproblems = n;
    return 0;
}

int mp_model_read_expert(const mp_model *m, int l, int e, mp_proj p, float *out)
{
    if (l < 0 || l >= m->cfg.n_layers || !m->cfg.is_moe[l] || e < 0 || e >= m->cfg.n_experts)
        return mp_errorf(MP_EINTERNAL, "%s: no expert %d in layer %d", m->dir, e, l);
    mp_block_loc b;
    mp_expert_block(&m->cfg, m->layout, l, e, p, &b);
    const mp_tensor *t;
    MP_CHECK(mp_ckpt_get(m->ck, b.name, &t));
    MP_CHECK(mp_ckpt_read_f32(m->ck, t, b.first, b.rows * b.cols, out));
    return 0;
}

int mp_model_check_finite(const mp_model *m, int l, int e, mp_proj p, const float *w)
{
    mp_block_loc b;
    mp_expert_block(&m->cfg, m->layout, l, e, p, &b);
    int64_t i = mp_first_nonfinite(w, b.rows * b.cols);
    if (i >= 0)
        return mp_errorf(MP_ENUMERIC, "%s: tensor %s: non-finite value at element %lld (layer %d, expert %d, %s)",
                         m->dir, b.name, (long long)(b.first + i), l, e, mp_proj_name(p));
    return 0;
}
