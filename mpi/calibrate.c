/* calibrate.c - the calibration stage (see calibrate.h). */
#define _GNU_SOURCE
#include "calibrate.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <xxhash.h>

#include "error.h"
#include "fsutil.h"
#include "gram.h"
#include "hidden_ckpt.h"
#include "layer_commit.h"
#include "plan.h"
#include "runtime.h"
#include "stats.h"

/* What the layer prior needs of one unit owned by this rank: the Grams themselves are already on disk. */
typedef struct {
    int owned;
    int64_t count, f, prior_tokens;
    double *diag_in, *diag_mid; /* diag(G_in) [d], diag(G_mid) [f]; replaced by the prior diagonals */
} unit_sum;

/* One kept token of the sample: its priority, global index and row in the sample's storage. */
typedef struct {
    uint64_t pri;
    int64_t tok;
    int64_t row;
} sample_key;

/* Buffers of finished units kept for the next ones (Gram arrays, sample files): a list of (pointer, bytes). */
typedef struct {
    void *p;
    size_t n;
} kept;
typedef struct {
    kept *v;
    int n, cap;
} kept_list;

/* The sample of the unit being accumulated: the (at most K) tokens of smallest (priority, token) seen so
 * far, as a max-heap, so a new token replaces the root when it comes before it. Rows x [cap, d] and
 * h [cap, f] grow with the sample up to K rows; with windows they are K rows on a file instead (map:
 * fsutil.h's mp_map_scratch; a finished unit's file goes to the next unit), whose pages go back to the
 * file after every chunk, so that the samples of the units a window keeps open stay out of memory. */
typedef struct {
    int64_t K, n, cap; /* cap: keys the heap holds, and rows x and h in memory */
    uint64_t seed;
    sample_key *heap;
    float *x, *h;
    void *map;
    size_t map_n;
} sampler;

typedef struct {
    mp_run *r;
    const char *dir;
    mp_epf *f;
    int E, d, n_starved;
    unit_sum *us;       /* [E + 1] of the current layer */
    mp_expert_stats *st; /* [E + 1]: the units being accumulated (several at once with windows, ep_forward.h) */
    sampler *sm;         /* [E + 1] */
    float *scr;         /* [scr_n]: the fp32 Gram workspace (gram.h) */
    size_t scr_n;
    kept_list spare; /* Gram arrays of finished units, for the next ones */
    kept_list sfile; /* sample files of finished units, for the next ones (windows) */
    double nll_sum;
    int64_t n_pred;
    int hid_layer; /* the layer whose output every rank's hidden-state checkpoint holds, -1 */
    int defer;     /* the first layer not run yet because the checkpoint lies ahead, -1 */
} calib;

static void unit_sums_free(calib *c)
{
    for (int u = 0; c->us && u <= c->E; u++) {
        free(c->us[u].diag_in), free(c->us[u].diag_mid);
        memset(&c->us[u], 0, sizeof c->us[u]);
    }
}

/* ---- Gram arrays passed from unit to unit ------------------------------------------------------------
 * A unit's two Grams (tens to hundreds of MB) live from its first window to its file, and the units of a
 * layer have the same dims: a finished unit's arrays are kept, and zeroed for the next unit, instead of
 * freed. Freed, they fragmented the heap (never trimmed during the layers, runtime.c): with windows, the
 * peak RSS of a Mixtral calibrate grew by about 100 MB a layer. Kept: at most the Grams of the units live at
 * once (one unit without windows); given back before the output head. */

/* keep p (n bytes) on the list; 0 when the list cannot grow (the caller then frees p) */
static int kept_put(kept_list *k, void *p, size_t n)
{
    if (k->n == k->cap) {
        int cap = k->cap ? 2 * k->cap : 16;
        kept *q = realloc(k->v, sizeof *q * (size_t)cap);
        if (!q)
            return 0;
        k->v = q, k->cap = cap;
    }
    k->v[k->n++] = (kept){p, n};
    return 1;
}

/* a kept buffer of n bytes (exact = 0: of at least n bytes, its size in *got), taken off the list, or NULL */
static void *kept_take(kept_list *k, size_t n, int exact, size_t *got)
{
    for (int i = 0; i < k->n; i++)
        if (exact ? k->v[i].n == n : k->v[i].n >= n) {
            kept e = k->v[i];
            k->v[i] = k->v[--k->n];
            if (got)
                *got = e.n;
            return e.p;
        }
    return NULL;
}

/* a kept array of n doubles, zeroed, or NULL (none: mp_stats_alloc_with allocates one) */
static double *spare_take(calib *c, int64_t n)
{
    double *p = kept_take(&c->spare, sizeof(double) * (size_t)n, 1, NULL);
    if (p)
        memset(p, 0, sizeof(double) * (size_t)n);
    return p;
}

static void spare_keep(calib *c, double *p, int64_t n)
{
    if (p && !kept_put(&c->spare, p, sizeof(double) * (size_t)n))
        free(p);
}

static void spare_free(calib *c)
{
    for (int i = 0; i < c->spare.n; i++)
        free(c->spare.v[i].p);
    free(c->spare.v);
    memset(&c->spare, 0, sizeof c->spare);
}

/* ---- the token sample ------------------------------------------------------------------------------- */

/* a unit done: its keys and rows go; a file's pages go back to it and the file to the next unit */
static void sampler_clear(calib *c, sampler *sm)
{
    free(sm->heap);
    if (sm->map) {
        mp_pages_drop(sm->map, sm->map_n);
        if (!kept_put(&c->sfile, sm->map, sm->map_n))
            munmap(sm->map, sm->map_n);
    } else
        free(sm->x), free(sm->h);
    memset(sm, 0, sizeof *sm);
}

static void sample_files_free(calib *c)
{
    for (int i = 0; i < c->sfile.n; i++)
        munmap(c->sfile.v[i].p, c->sfile.v[i].n);
    free(c->sfile.v);
    memset(&c->sfile, 0, sizeof c->sfile);
}

/* with windows: the unit's K rows [K, d] and [K, f] on a file, a finished unit's or a new one (so the
 * files are as many as the units live at once, whichever units a rank runs from layer to layer) */
static int sampler_on_file(calib *c, sampler *sm, int64_t d, int64_t f)
{
    size_t n = sizeof(float) * (size_t)(sm->K * (d + f));
    if (n == 0)
        return 0;
    sm->map = kept_take(&c->sfile, n, 0, &sm->map_n);
    if (!sm->map) {
        MP_CHECK(mp_map_scratch(c->dir, "the token sample", n, &sm->map));
        sm->map_n = n;
    }
    sm->x = sm->map, sm->h = sm->x + sm->K * d;
    return 0;
}

/* the priority of a global token index in unit u of layer l */
static uint64_t sample_priority(int64_t tok, uint64_t seed)
{
    unsigned char b[8]; /* the index as int64, little-endian, whatever the machine */
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)((uint64_t)tok >> (8 * i));
    return XXH64(b, sizeof b, seed);
}

static int key_before(const sample_key *a, const sample_key *b)
{
    return a->pri < b->pri || (a->pri == b->pri && a->tok < b->tok);
}

static void heap_down(sample_key *hp, int64_t n, int64_t i)
{
    for (;;) {
        int64_t m = i, a = 2 * i + 1, b = a + 1;
        if (a < n && key_before(&hp[m], &hp[a]))
            m = a;
        if (b < n && key_before(&hp[m], &hp[b]))
            m = b;
        if (m == i)
            return;
        sample_key t = hp[i];
        hp[i] = hp[m], hp[m] = t, i = m;
    }
}

static void heap_up(sample_key *hp, int64_t i)
{
    while (i > 0 && key_before(&hp[(i - 1) / 2], &hp[i])) {
        sample_key t = hp[i];
        hp[i] = hp[(i - 1) / 2], hp[(i - 1) / 2] = t, i = (i - 1) / 2;
    }
}

/* Offer one token (x [d], h [f]) to the sample. */
static int sample_offer(sampler *sm, int64_t tok, const float *x, const float *h, int64_t d, int64_t f)
{
    if (sm->K == 0)
        return 0;
    sample_key k = {sample_priority(tok, sm->seed), tok, 0};
    if (sm->n == sm->K) {
        if (!key_before(&k, &sm->heap[0]))
            return 0;
        k.row = sm->heap[0].row; /* the root leaves; its row is reused */
        sm->heap[0] = k;
        heap_down(sm->heap, sm->n, 0);
    } else {
        if (sm->n == sm->cap) {
            int64_t cap = sm->cap ? 2 * sm->cap : 64;
            cap = cap < sm->K ? cap : sm->K;
            sample_key *hp = realloc(sm->heap, sizeof *hp * (size_t)cap);
            if (hp)
                sm->heap = hp;
            float *xs = hp && !sm->map ? realloc(sm->x, sizeof(float) * (size_t)(cap * d)) : sm->x; /* on a file: K rows */
            if (xs)
                sm->x = xs;
            float *hs = xs && !sm->map ? realloc(sm->h, sizeof(float) * (size_t)(cap * f)) : sm->h;
            if (hs)
                sm->h = hs;
            if (!hp || !xs || !hs)
                return mp_errorf(MP_ENOMEM, "out of memory for a sample of %lld tokens", (long long)cap);
            sm->cap = cap;
        }
        k.row = sm->n;
        sm->heap[sm->n] = k;
        heap_up(sm->heap, sm->n++);
    }
    memcpy(sm->x + k.row * d, x, sizeof(float) * (size_t)d);
    memcpy(sm->h + k.row * f, h, sizeof(float) * (size_t)f);
    return 0;
}

static int cmp_key_tok(const void *a, const void *b)
{
    int64_t x = ((const sample_key *)a)->tok, y = ((const sample_key *)b)->tok;
    return (x > y) - (x < y);
}

/* The sample into st (X_sample, H_sample, sample_token in global token order). */
static int sample_finish(sampler *sm, mp_expert_stats *st)
{
    int64_t t = sm->n, d = st->d, f = st->f;
    if (t == 0)
        return 0;
    qsort(sm->heap, (size_t)t, sizeof *sm->heap, cmp_key_tok);
    st->X_sample = malloc(sizeof(float) * (size_t)(t * d));
    st->H_sample = malloc(sizeof(float) * (size_t)(t * f));
    st->sample_token = malloc(sizeof(int64_t) * (size_t)t);
    if (!st->X_sample || !st->H_sample || !st->sample_token)
        return mp_errorf(MP_ENOMEM, "out of memory for a sample of %lld tokens", (long long)t);
    for (int64_t i = 0; i < t; i++) {
        const sample_key *k = &sm->heap[i];
        memcpy(st->X_sample + i * d, sm->x + k->row * d, sizeof(float) * (size_t)d);
        memcpy(st->H_sample + i * f, sm->h + k->row * f, sizeof(float) * (size_t)f);
        st->sample_token[i] = k->tok;
    }
    st->n_sample = t;
    return 0;
}

/* ---- statistics hooks (owner side, one unit at a time) ------------------------------------------ */

/* the index of unit u in the per-unit arrays: a dense layer's only unit (MP_UNIT_DENSE) is 0 */
static int slot_of(int u) { return u == MP_UNIT_DENSE ? 0 : u; }

static int st_begin(void *ctx, int l, int u, int d, int f)
{
    int k = slot_of(u);
    calib *c = ctx;
    size_t n = (size_t)MP_GRAM_PANEL * (size_t)(d > f ? d : f);
    if (n > c->scr_n) {
        free(c->scr);
        c->scr_n = n;
        c->scr = malloc(sizeof(float) * n);
    }
    if (!c->scr)
        return mp_errorf(MP_ENOMEM, "out of memory for the statistics of expert %d of layer %d", u, l);
    int64_t pd = mp_gram_packed_size(d), pf = mp_gram_packed_size(f); /* packed Grams (gram.h) */
    MP_CHECK(mp_stats_alloc_with(&c->st[k], l, u, d, f, spare_take(c, pd), spare_take(c, pf)));
    sampler *sm = &c->sm[k];
    sampler_clear(c, sm);
    sm->K = c->r->job->sample_tokens;
    sm->seed = (uint64_t)l * 65537u + (uint64_t)u;
    return c->r->job->chunk_tokens > 0 ? sampler_on_file(c, sm, d, f) : 0;
}

static int st_chunk(void *ctx, int l, int u, const float *x, const float *h, const float *w, const int64_t *tok, int nb)
{
    calib *c = ctx;
    int k = slot_of(u);
    mp_expert_stats *st = &c->st[k];
    int64_t d = st->d, f = st->f;
    (void)l;
    sampler *sm = &c->sm[k];
    for (int i = 0; i < nb; i++)
        MP_CHECK(sample_offer(sm, tok[i], x + i * d, h + i * f, d, f));
    if (sm->map)
        mp_pages_drop(sm->map, sm->map_n);
    _Static_assert(MP_CHUNK <= MP_GRAM_CHUNK, "a forward chunk is one fp32 Gram chunk");
    mp_gram_add_chunk(x, nb, (int)d, c->scr, st->G_in, NULL);
    mp_gram_add_chunk(h, nb, (int)f, c->scr, st->G_mid, st->h_sq);
    for (int i = 0; i < nb; i++)
        st->weight_sum += w[i];
    st->count += nb;
    return 0;
}

static int st_end(void *ctx, int l, int u)
{
    calib *c = ctx;
    int k = slot_of(u);
    mp_expert_stats *st = &c->st[k];
    int64_t d = st->d, f = st->f;
    /* the Grams hold their upper triangles, packed (gram.h): just what the file stores; the writer checks
     * them (a non-finite value is an error naming the file, the Gram and [i, j]) */
    int rc = sample_finish(&c->sm[k], st);
    sampler_clear(c, &c->sm[k]);
    unit_sum *su = &c->us[k];
    su->owned = 1, su->count = st->count, su->f = f;
    su->diag_in = malloc(sizeof(double) * (size_t)d);
    su->diag_mid = malloc(sizeof(double) * (size_t)f);
    if (rc == 0 && (!su->diag_in || !su->diag_mid))
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    for (int64_t i = 0; i < d && rc == 0; i++)
        su->diag_in[i] = st->G_in[mp_gram_at(d, i, i)];
    for (int64_t i = 0; i < f && rc == 0; i++)
        su->diag_mid[i] = st->G_mid[mp_gram_at(f, i, i)];
    char path[4600];
    mp_stats_path(path, sizeof path, c->dir, l, u);
    if (rc == 0)
        rc = mp_stats_write_begin(path, st);
    spare_keep(c, st->G_in, mp_gram_packed_size(d)), spare_keep(c, st->G_mid, mp_gram_packed_size(f));
    st->G_in = st->G_mid = NULL;
    mp_stats_free(st);
    mp_fault_point("calibrate: unit written (uncommitted)");
    return rc;
}

/* ---- the layer prior and the commit --------------------------------------------------------------- */

/* A unit that sees every token (the shared expert, a dense MLP), when owned: the prior is its own average
 * per-token diagonal, starved only with almost no tokens. */
static void own_prior(unit_sum *sh, int min_tokens, int d)
{
    if (!sh->owned)
        return;
    sh->prior_tokens = sh->count < min_tokens ? min_tokens - sh->count : 0;
    for (int i = 0; i < d; i++)
        sh->diag_in[i] = sh->count > 0 && sh->diag_in[i] > 0 ? sh->diag_in[i] / (double)sh->count : 1.0;
    for (int64_t i = 0; i < sh->f; i++)
        sh->diag_mid[i] = sh->count > 0 && sh->diag_mid[i] > 0 ? sh->diag_mid[i] / (double)sh->count : 1.0;
}

/* The layer's average per-token diagonal of G_in and G_mid over its routed experts, exactly the same on
 * every rank: each entry of the reduced array has a single non-zero contributor, and the sums over
 * experts run in expert order. Sets each owned unit's prior (tokens and diagonals); rank 0 writes
 * report.json. Collective. */
static int layer_prior(calib *c, int l, int *n_starved)
{
    const mp_config *cfg = &c->r->m->cfg;
    int E = c->E, d = c->d, f = cfg->moe_ffn, min_tokens = c->r->job->min_tokens;
    unit_sum *us = c->us;
    int64_t w = 1 + d + f;
    double *a = calloc((size_t)(E * w), sizeof(double)), *b = calloc((size_t)(E * w), sizeof(double));
    int rc = a && b ? 0 : mp_errorf(MP_ENOMEM, "out of memory");
    for (int u = 0; u < E && rc == 0; u++)
        if (us[u].owned) {
            a[u * w] = (double)us[u].count;
            memcpy(a + u * w + 1, us[u].diag_in, sizeof(double) * (size_t)d);
            memcpy(a + u * w + 1 + d, us[u].diag_mid, sizeof(double) * (size_t)f);
        }
    if (mp_mpi_agree(rc) < 0) {
        free(a), free(b);
        return rc < 0 ? rc : MP_EMPI;
    }
    MP_MPI(MPI_Allreduce(a, b, (int)(E * w), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD));
    double tot = 0;
    memset(a, 0, sizeof(double) * (size_t)w);
    for (int u = 0; u < E; u++) {
        tot += b[u * w];
        for (int64_t i = 1; i < w; i++)
            a[i] += b[u * w + i];
    }
    *n_starved = 0;
    for (int u = 0; u < E; u++) {
        int64_t cnt = (int64_t)b[u * w];
        if (cnt < min_tokens)
            (*n_starved)++;
        if (!us[u].owned)
            continue;
        us[u].prior_tokens = cnt < min_tokens ? min_tokens - cnt : 0;
        for (int i = 0; i < d; i++)
            us[u].diag_in[i] = tot > 0 && a[1 + i] > 0 ? a[1 + i] / tot : 1.0;
        for (int i = 0; i < f; i++)
            us[u].diag_mid[i] = tot > 0 && a[1 + d + i] > 0 ? a[1 + d + i] / tot : 1.0;
    }
    own_prior(&us[E], min_tokens, d);
    if (c->r->rank == 0) {
        /* report.json: every expert with its token count, the starved ones flagged */
        size_t cap = 256 + (size_t)E * 96, k = 0;
        char *rep = malloc(cap);
        rc = rep ? 0 : mp_errorf(MP_ENOMEM, "out of memory");
        if (rep) {
            k += (size_t)snprintf(rep + k, cap - k, "{\n  \"layer\": %d,\n  \"min_tokens\": %d,\n  \"experts\": [\n",
                                  l, min_tokens);
            for (int u = 0; u < E; u++)
                k += (size_t)snprintf(rep + k, cap - k, "    {\"expert\": %d, \"tokens\": %lld, \"prior\": %s}%s\n",
                                      u, (long long)b[u * w], b[u * w] < min_tokens ? "true" : "false",
                                      u + 1 < E ? "," : "");
            k += (size_t)snprintf(rep + k, cap - k, "  ]\n}\n");
            char path[4600];
            snprintf(path, sizeof path, "%s/layer%04d/report.json", c->dir, l);
            rc = mp_write_file_atomic(path, rep, k);
            free(rep);
        }
        if (!c->r->o->quiet && !c->r->o->log_json)
            for (int u = 0; u < E; u++)
                if (b[u * w] < min_tokens)
                    printf("calibrate: layer %d expert %d saw %lld tokens (< %d): neutral prior used\n", l, u,
                           (long long)b[u * w], min_tokens);
    }
    free(a), free(b);
    return rc;
}

/* the units of a layer: the routed experts and the shared one (unit E) */
static void expert_file_name(int u, int n, char *buf, size_t cap)
{
    (void)n;
    snprintf(buf, cap, "expert%04d.h5", u);
}

/* Collective: complete the owned units' files with the prior and commit the layer. */
static int commit_layer(calib *c, int l)
{
    int E = c->E, d = c->d, starved = 0;
    uint64_t *h = calloc((size_t)(2 * (E + 1)), sizeof *h);
    int rc = h ? layer_prior(c, l, &starved) : mp_errorf(MP_ENOMEM, "out of memory");
    for (int u = 0; u <= E && rc == 0; u++)
        if (c->us[u].owned) {
            char path[4600];
            mp_stats_path(path, sizeof path, c->dir, l, u);
            rc = mp_stats_write_end(path, c->us[u].prior_tokens, c->us[u].diag_in, c->us[u].diag_mid, d,
                                    c->us[u].f, &h[u]);
            h[E + 1 + u] = 1;
            mp_fault_point("calibrate: unit committed");
        }
    rc = mp_commit_layer_units(rc, c->dir, l, c->r->fp[MP_STAGE_CALIBRATE], h, E + 1, expert_file_name, starved,
                               "calibrate: before layer manifest");
    free(h);
    c->n_starved += starved;
    return rc;
}

static void dense_file_name(int u, int n, char *buf, size_t cap)
{
    (void)u, (void)n;
    snprintf(buf, cap, "dense.h5");
}

/* Collective: the dense MLP's file (layer with no routed experts) completed with its own prior, and the
 * layer committed (never counted as starved). */
static int commit_dense_layer(calib *c, int l)
{
    unit_sum *su = &c->us[0];
    uint64_t h[2] = {0, 0};
    int rc = 0;
    own_prior(su, c->r->job->min_tokens, c->d);
    if (su->owned) {
        char path[4600];
        mp_stats_path(path, sizeof path, c->dir, l, MP_UNIT_DENSE);
        rc = mp_stats_write_end(path, su->prior_tokens, su->diag_in, su->diag_mid, c->d, su->f, &h[0]);
        h[1] = 1;
        mp_fault_point("calibrate: unit committed");
    }
    return mp_commit_layer_units(rc, c->dir, l, c->r->fp[MP_STAGE_CALIBRATE], h, 1, dense_file_name, 0,
                                 "calibrate: before layer manifest");
}

/* ---- stage functions ------------------------------------------------------------------------------- */

/* Collective: the layer all ranks' hidden-state checkpoints hold, or -1 (none, or they disagree). */
static int find_checkpoint(calib *c)
{
    int seq0, nseq;
    mp_epf_hidden(c->f, &seq0, &nseq);
    int l = nseq > 0 ? mp_hidden_find(c->dir, c->r->fp[MP_STAGE_CALIBRATE], seq0, nseq, c->r->tok->seq_len, c->d)
                     : -2; /* no sequences: no file, no say */
    int mm[2] = {l == -2 ? INT_MAX : l, l == -2 ? -1 : l}, out[2];
    mm[1] = -mm[1];
    MP_MPI(MPI_Allreduce(mm, out, 2, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
    int lo = out[0], hi = -out[1];
    return lo == hi && lo >= 0 && lo < c->r->m->cfg.n_layers ? lo : -1;
}

/* Collective: the hidden states after layer l from the checkpoint, once every rank has found its file
 * intact. MP_EFORMAT on every rank when one is not (no rank's states were touched: the caller replays);
 * another error is fatal. */
static int load_checkpoint(calib *c, int l)
{
    int seq0, nseq, S = c->r->tok->seq_len;
    uint64_t fp = c->r->fp[MP_STAGE_CALIBRATE];
    float *h = mp_epf_hidden(c->f, &seq0, &nseq);
    int rc = nseq > 0 ? mp_hidden_load(c->dir, fp, l, seq0, nseq, S, c->d, NULL, NULL, NULL) : 0, worst = rc;
    MP_MPI(MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
    if (worst == MP_EFORMAT && rc == 0)
        rc = mp_errorf(MP_EFORMAT, "another rank's hidden-state checkpoint is not intact");
    if (worst == MP_EFORMAT)
        return rc;
    if (rc == 0 && worst == 0 && nseq > 0)
        rc = mp_hidden_load(c->dir, fp, l, seq0, nseq, S, c->d, h, mp_epf_hidden_done, c->f);
    return mp_mpi_agree(rc == MP_EFORMAT ? mp_errorf(MP_EIO, "%s", mp_error_message()) : rc);
}

int mp_calib_begin(mp_run *r, int s)
{
    calib *c = calloc(1, sizeof *c);
    r->state = c;
    if (!c)
        return mp_errorf(MP_ENOMEM, "out of memory");
    c->r = r, c->dir = r->dir[s], c->E = r->m->cfg.n_experts, c->d = r->m->cfg.hidden;
    c->us = calloc((size_t)c->E + 1, sizeof *c->us);
    c->st = calloc((size_t)c->E + 1, sizeof *c->st);
    c->sm = calloc((size_t)c->E + 1, sizeof *c->sm);
    if (!c->us || !c->st || !c->sm)
        return mp_errorf(MP_ENOMEM, "out of memory");
    c->hid_layer = c->defer = -1;
    /* with windows, the residual stream on a file in the stage's directory: memory bounded by the window */
    MP_CHECK(r->job->chunk_tokens > 0
                 ? mp_epf_create_spilled(&r->w, r->tok, r->o->observe, r->o->observe_ctx, c->dir, &c->f)
                 : mp_epf_create(&r->w, r->tok, r->o->observe, r->o->observe_ctx, &c->f));
    MP_CHECK(mp_epf_set_window(c->f, r->job->chunk_tokens));
    MP_CHECK(mp_epf_balance(c->f, 1));
    c->hid_layer = find_checkpoint(c);
    return 0;
}

int mp_calib_layer(mp_run *r, int s, int l, int committed)
{
    calib *c = r->state;
    const mp_config *cfg = &r->m->cfg;
    (void)s;
    if (committed)
        c->n_starved += r->kept_starved;
    /* a kept layer at or before the checkpointed one: nothing to run (loaded when its layer comes) */
    if (l <= c->hid_layer && (committed || !mp_config_has_units(cfg, l))) {
        if (l < c->hid_layer) {
            c->defer = c->defer < 0 ? l : c->defer;
            return 0;
        }
        int seq0, nseq;
        float *h = mp_epf_hidden(c->f, &seq0, &nseq);
        int lrc = load_checkpoint(c, l);
        if (lrc == 0) {
            if (r->rank == 0)
                fprintf(stderr, "moepack: note: calibrate resumes from the hidden states after layer %d "
                                "(checkpoint): layers 0..%d not replayed\n", l, l);
            c->defer = c->hid_layer = -1;
            if (r->o->observe && nseq > 0)
                r->o->observe(r->o->observe_ctx, "hidden", l + 1, seq0, nseq, c->d, h);
            return 0;
        }
        if (lrc != MP_EFORMAT)
            return lrc;
        if (r->rank == 0)
            fprintf(stderr, "moepack: note: %s; replaying the forward pass\n", mp_error_message());
    }
    if (c->defer >= 0) /* a layer to compute before the checkpoint: the kept ones before it run after all */
        for (int k = c->defer; k < l; k++)
            MP_CHECK(mp_epf_layer(c->f, k, NULL));
    c->defer = c->hid_layer = -1;
    if (!mp_config_has_units(cfg, l) || committed)
        return mp_epf_layer(c->f, l, NULL);
    char ldir[4600];
    snprintf(ldir, sizeof ldir, "%s/layer%04d", c->dir, l);
    MP_CHECK(mp_mpi_agree(mp_mkdir_p(ldir)));
    mp_unit_hooks hk = {c, st_begin, st_chunk, st_end};
    int rc = mp_epf_layer(c->f, l, &hk);
    for (int u = 0; u <= c->E; u++) { /* after a failure inside a unit */
        mp_stats_free(&c->st[u]);
        sampler_clear(c, &c->sm[u]);
    }
    if (rc == 0)
        rc = r->m->cfg.is_moe[l] ? commit_layer(c, l) : commit_dense_layer(c, l);
    unit_sums_free(c);
    if (rc == 0) { /* the layer's output, for a resumed run */
        int seq0, nseq;
        const float *h = mp_epf_hidden(c->f, &seq0, &nseq);
        rc = nseq > 0 ? mp_hidden_save(c->dir, r->fp[MP_STAGE_CALIBRATE], l, seq0, nseq, r->tok->seq_len, c->d, h,
                                       mp_epf_hidden_done, c->f)
                      : 0;
        rc = mp_mpi_agree(rc);
    }
    return rc;
}

int mp_calib_end(mp_run *r, int s, int ok)
{
    calib *c = r->state;
    int rc = 0;
    if (ok && c && c->defer >= 0) /* every layer kept, but not the last one's checkpoint: cannot happen */
        rc = mp_errorf(MP_EINTERNAL, "calibrate: layers %d.. were never run", c->defer);
    if (ok && c && rc == 0) {
        spare_free(c); /* before the head's vocabulary-sized buffers */
        sample_files_free(c);
        rc = mp_epf_head(c->f, &c->nll_sum, &c->n_pred);
        if (rc == 0) {
            mp_summary *sum = &r->sum[s];
            double ppl = exp(c->nll_sum / (double)c->n_pred);
            if (r->rank == 0 && !isfinite(ppl))
                rc = mp_errorf(MP_ENUMERIC, "the baseline perplexity is not finite (mean NLL %g over %lld tokens)",
                               c->nll_sum / (double)c->n_pred, (long long)c->n_pred);
            mp_summary_set(sum, "perplexity", ppl);
            mp_summary_set(sum, "nll_sum", c->nll_sum);
            mp_summary_set(sum, "predicted_tokens", (double)c->n_pred);
            mp_summary_set(sum, "starved_experts", c->n_starved);
            mp_summary_set(sum, "sequences", r->tok->n_seq);
            mp_summary_set(sum, "seq_len", r->tok->seq_len);
        }
        if (rc == 0 && r->rank == 0) /* the stage is about to be committed: the checkpoint has done its job */
            rc = mp_hidden_remove(c->dir);
    }
    if (c) {
        mp_epf_free(c->f);
        unit_sums_free(c);
        for (int u = 0; c->st && c->sm && u <= c->E; u++) {
            mp_stats_free(&c->st[u]);
            sampler_clear(c, &c->sm[u]);
        }
        spare_free(c);
        sample_files_free(c);
        free(c->us), free(c->st), free(c->sm), free(c->scr);
        free(c);
    }
    r->state = NULL;
    return ok ? mp_mpi_agree(rc) : rc;
}

void mp_calib_print(const mp_run *r, int s, FILE *out)
{
    const mp_summary *sum = &r->sum[s];
    fprintf(out, "calibrate: %.0f sequences x %.0f tokens; statistics in %s\n", mp_summary_get(sum, "sequences"),
            mp_summary_get(sum, "seq_len"), r->dir[s]);
    fprintf(out, "calibrate: %.0f expert(s) below %d tokens got the neutral prior\n",
            mp_summary_get(sum, "starved_experts"), r->job->min_tokens);
    fprintf(out, "calibrate: baseline perplexity %.4f (%.0f predicted tokens)\n", mp_summary_get(sum, "perplexity"),
            mp_summary_get(sum, "predicted_tokens"));
}
