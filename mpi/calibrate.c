/* calibrate.c - expert-parallel calibration forward pass (see calibrate.h). */
#define _GNU_SOURCE
#include "calibrate.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "expert_scan.h"
#include "forward.h"
#include "fsutil.h"
#include "layer_commit.h"
#include "runtime.h"
#include "stats.h"
#include "store.h"

#define CHUNK 256 /* tokens per statistics block, in global token order */

void mp_progress(const mp_calib_opts *o, const char *stage, int done, int total, double elapsed, double eta)
{
    if (o->log_json)
        printf("{\"event\": \"progress\", \"stage\": \"%s\", \"layers_done\": %d, \"layers\": %d, "
               "\"elapsed_s\": %.3f, \"eta_s\": %.3f}\n",
               stage, done, total, elapsed, eta);
    else if (o->quiet)
        return;
    else if (isatty(STDOUT_FILENO))
        printf("\r%s: layer %d/%d (%.1f s, ETA %.1f s)%s", stage, done, total, elapsed, eta, done == total ? "\n" : "");
    else
        printf("%s: layer %d/%d done (%.1f s, ETA %.1f s)\n", stage, done, total, elapsed, eta);
    fflush(stdout);
}

int mp_calib_owner(int l, int u, int n_experts, int nranks)
{
    return (int)(((int64_t)l * (n_experts + 1) + u) % nranks);
}

typedef struct {
    int64_t g;    /* global token index */
    int32_t unit; /* expert, or E for the shared expert */
    int32_t slot; /* sender's slot: local token * (K + 1) + j */
    float w;      /* routing weight (shared: its gate) */
    int32_t pad;
} item;

typedef struct {
    const mp_model *m;
    const mp_calib_opts *o;
    int rank, size, E, K, d, S;
    int seq0, nseq;
    int64_t T;   /* local tokens */
    int collect; /* statistics for the current layer (0: committed already, forward only) */
} ctx;

static int cmp_item_g(const void *a, const void *b, void *base)
{
    const item *v = base;
    int64_t x = v[*(const int64_t *)a].g, y = v[*(const int64_t *)b].g;
    return (x > y) - (x < y);
}

static void symmetrize(double *G, int64_t n)
{
    for (int64_t i = 0; i < n; i++)
        for (int64_t j = 0; j < i; j++)
            G[i * n + j] = G[j * n + i];
}

/* Owner side: compute the outputs of unit u for the received items `ix` (n of them) and its statistics. */
static int run_unit(const ctx *c, const mp_layer_w *lw, int l, int u, const item *meta, const float *x, int64_t *ix,
                    int64_t n, float *y, mp_expert_stats *st)
{
    const mp_config *cfg = &c->m->cfg;
    int d = c->d, shared = u == c->E, f = shared ? cfg->shared_ffn : cfg->moe_ffn, rc = 0;
    float *wg = NULL, *wu = NULL, *wd = NULL, *X = NULL, *Y = NULL, *Hm = NULL;
    double *Xd = NULL, *Hd = NULL;
    if (shared) {
        wg = lw->sh_gate, wu = lw->sh_up, wd = lw->sh_down;
    } else {
        size_t fd = (size_t)f * (size_t)d;
        wg = malloc(3 * fd * sizeof(float));
        if (!wg)
            return mp_errorf(MP_ENOMEM, "out of memory for expert %d of layer %d", u, l);
        wu = wg + fd, wd = wu + fd;
        float *ws[3] = {wg, wu, wd};
        for (int p = 0; p < 3; p++) {
            MP_CHECK_GOTO(mp_model_read_expert(c->m, l, u, (mp_proj)p, ws[p]), out);
            MP_CHECK_GOTO(mp_model_check_finite(c->m, l, u, (mp_proj)p, ws[p]), out);
        }
    }
    if (st)
        MP_CHECK_GOTO(mp_stats_alloc(st, l, u, d, f), out);
    qsort_r(ix, (size_t)n, sizeof *ix, cmp_item_g, (void *)meta);
    X = malloc(sizeof(float) * CHUNK * (size_t)d);
    Y = malloc(sizeof(float) * CHUNK * (size_t)d);
    Hm = malloc(sizeof(float) * CHUNK * (size_t)f);
    Xd = malloc(sizeof(double) * CHUNK * (size_t)d);
    Hd = malloc(sizeof(double) * CHUNK * (size_t)f);
    if (!X || !Y || !Hm || !Xd || !Hd) {
        rc = mp_errorf(MP_ENOMEM, "out of memory for expert %d of layer %d", u, l);
        goto out;
    }
    for (int64_t c0 = 0; c0 < n; c0 += CHUNK) {
        int nb = (int)(n - c0 < CHUNK ? n - c0 : CHUNK);
        for (int i = 0; i < nb; i++)
            memcpy(X + (size_t)i * d, x + (size_t)ix[c0 + i] * d, sizeof(float) * (size_t)d);
        MP_CHECK_GOTO(mp_swiglu(wg, wu, wd, X, nb, d, f, Y, Hm), out);
        for (int i = 0; i < nb; i++)
            memcpy(y + (size_t)ix[c0 + i] * d, Y + (size_t)i * d, sizeof(float) * (size_t)d);
        if (!st)
            continue;
        for (int64_t i = 0; i < (int64_t)nb * d; i++)
            Xd[i] = X[i];
        for (int64_t i = 0; i < (int64_t)nb * f; i++) {
            Hd[i] = Hm[i];
            st->h_sq[i % f] += Hd[i] * Hd[i];
        }
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, d, nb, 1.0, Xd, d, 1.0, st->G_in, d);
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, f, nb, 1.0, Hd, f, 1.0, st->G_mid, f);
        for (int i = 0; i < nb; i++)
            st->weight_sum += meta[ix[c0 + i]].w;
        st->count += nb;
    }
    if (st) {
        symmetrize(st->G_in, d);
        symmetrize(st->G_mid, f);
        for (int64_t i = 0; i < (int64_t)d * d; i++)
            if (!isfinite(st->G_in[i])) {
                rc = mp_errorf(MP_ENUMERIC, "layer %d expert %d: non-finite input statistics", l, u);
                goto out;
            }
    }
out:
    if (!shared)
        free(wg);
    free(X), free(Y), free(Hm), free(Xd), free(Hd);
    if (rc < 0 && st)
        mp_stats_free(st);
    return rc;
}

/* What the layer prior needs of one unit owned by this rank: the Grams themselves are already on disk. */
typedef struct {
    int owned;
    int64_t count, f, prior_tokens;
    double *diag_in, *diag_mid; /* diag(G_in) [d], diag(G_mid) [f]; replaced by the prior diagonals */
} unit_sum;

static void unit_sum_free(unit_sum *u)
{
    free(u->diag_in);
    free(u->diag_mid);
    memset(u, 0, sizeof *u);
}

/* The layer's average per-token diagonal of G_in and G_mid over its routed experts, exactly the same on
 * every rank: each entry of the reduced array has a single non-zero contributor, and the sums over
 * experts run in expert order. Sets each owned unit's prior (tokens and diagonals). Collective. */
static int layer_prior(const ctx *c, int l, unit_sum *us, int *n_starved)
{
    int E = c->E, d = c->d, f = c->m->cfg.moe_ffn;
    int64_t w = 1 + d + f;
    double *a = calloc((size_t)(E * w), sizeof(double)), *b = calloc((size_t)(E * w), sizeof(double));
    int rc = a && b ? 0 : mp_errorf(MP_ENOMEM, "out of memory");
    for (int u = 0; u < E && rc == 0; u++)
        if (us[u].owned) {
            a[u * w] = (double)us[u].count;
            memcpy(a + u * w + 1, us[u].diag_in, sizeof(double) * (size_t)d);
            memcpy(a + u * w + 1 + d, us[u].diag_mid, sizeof(double) * (size_t)f);
        }
    MP_CHECK(mp_mpi_agree(rc));
    int mrc = MPI_Allreduce(a, b, (int)(E * w), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    if (mrc != MPI_SUCCESS)
        mp_mpi_fail(mp_mpi_check(mrc, "MPI_Allreduce (layer prior)"));
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
        if (cnt < c->o->min_tokens)
            (*n_starved)++;
        if (!us[u].owned)
            continue;
        us[u].prior_tokens = cnt < c->o->min_tokens ? c->o->min_tokens - cnt : 0;
        for (int i = 0; i < d; i++)
            us[u].diag_in[i] = tot > 0 && a[1 + i] > 0 ? a[1 + i] / tot : 1.0;
        for (int i = 0; i < f; i++)
            us[u].diag_mid[i] = tot > 0 && a[1 + d + i] > 0 ? a[1 + d + i] / tot : 1.0;
    }
    /* the shared expert sees every token: its own average, starved only with almost no tokens */
    unit_sum *sh = &us[E];
    if (sh->owned) {
        sh->prior_tokens = sh->count < c->o->min_tokens ? c->o->min_tokens - sh->count : 0;
        for (int i = 0; i < d; i++)
            sh->diag_in[i] = sh->count > 0 && sh->diag_in[i] > 0 ? sh->diag_in[i] / (double)sh->count : 1.0;
        for (int64_t i = 0; i < sh->f; i++)
            sh->diag_mid[i] = sh->count > 0 && sh->diag_mid[i] > 0 ? sh->diag_mid[i] / (double)sh->count : 1.0;
    }
    if (c->rank == 0) {
        /* report.json: every expert with its token count, the starved ones flagged */
        size_t cap = 256 + (size_t)E * 96, k = 0;
        char *rep = malloc(cap);
        rc = rep ? 0 : mp_errorf(MP_ENOMEM, "out of memory");
        if (rep) {
            k += (size_t)snprintf(rep + k, cap - k, "{\n  \"layer\": %d,\n  \"min_tokens\": %d,\n  \"experts\": [\n",
                                  l, c->o->min_tokens);
            for (int u = 0; u < E; u++)
                k += (size_t)snprintf(rep + k, cap - k, "    {\"expert\": %d, \"tokens\": %lld, \"prior\": %s}%s\n",
                                      u, (long long)b[u * w], b[u * w] < c->o->min_tokens ? "true" : "false",
                                      u + 1 < E ? "," : "");
            k += (size_t)snprintf(rep + k, cap - k, "  ]\n}\n");
            char path[4200];
            snprintf(path, sizeof path, "%s/layer%04d/report.json", c->o->stats_dir, l);
            rc = mp_write_file_atomic(path, rep, k);
            free(rep);
        }
        if (!c->o->quiet)
            for (int u = 0; u < E; u++)
                if (b[u * w] < c->o->min_tokens)
                    printf("calibrate: layer %d expert %d saw %lld tokens (< %d): neutral prior used\n", l, u,
                           (long long)b[u * w], c->o->min_tokens);
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

/* Alltoallv with 64-bit element counts checked against INT_MAX. */
static int exchange(const void *sbuf, const int64_t *scnt, void *rbuf, const int64_t *rcnt, int size,
                    MPI_Datatype type, int per)
{
    int *sc = malloc(sizeof(int) * (size_t)size * 4), *sd = sc + size, *rc = sd + size, *rd = rc + size;
    if (!sc)
        return mp_errorf(MP_ENOMEM, "out of memory");
    int64_t so = 0, ro = 0;
    for (int r = 0; r < size; r++) {
        if (scnt[r] * per > INT_MAX || rcnt[r] * per > INT_MAX || so > INT_MAX || ro > INT_MAX) {
            free(sc);
            return mp_errorf(MP_EINTERNAL, "token exchange too large for one MPI message; use more ranks");
        }
        sc[r] = (int)(scnt[r] * per), sd[r] = (int)so, rc[r] = (int)(rcnt[r] * per), rd[r] = (int)ro;
        so += scnt[r] * per, ro += rcnt[r] * per;
    }
    int mrc = MPI_Alltoallv(sbuf, sc, sd, type, rbuf, rc, rd, type, MPI_COMM_WORLD);
    free(sc);
    if (mrc != MPI_SUCCESS)
        mp_mpi_fail(mp_mpi_check(mrc, "MPI_Alltoallv (token exchange)"));
    return 0;
}

/* The MoE block for the local tokens: out[T, d] from x[T, d]. */
static int moe_layer(const ctx *c, const mp_layer_w *lw, int l, const float *x, float *out, int *n_starved)
{
    const mp_config *cfg = &c->m->cfg;
    int E = c->E, K = c->K, d = c->d, size = c->size, rank = c->rank, J = K + 1, rc = 0;
    int has_shared = cfg->n_shared > 0 && cfg->shared_ffn > 0;
    int64_t T = c->T;
    float *logits = malloc(sizeof(float) * (size_t)(T * E + 1)), *wt = malloc(sizeof(float) * (size_t)(T * J + 1));
    int *idx = malloc(sizeof(int) * (size_t)(T * J + 1));
    int64_t *scnt = calloc((size_t)size * 2, sizeof(int64_t)), *rcnt = scnt + size;
    item *smeta = NULL, *rmeta = NULL;
    float *sx = NULL, *rx = NULL, *ry = NULL, *sy = NULL;
    int64_t *ix = NULL, nsend = 0, nrecv = 0;
    unit_sum *us = calloc((size_t)E + 1, sizeof *us);
    if (!logits || !wt || !idx || !scnt || !us) {
        rc = mp_errorf(MP_ENOMEM, "out of memory routing %lld tokens", (long long)T);
        goto sync; /* the other ranks are heading for the exchange: agree first */
    }
    /* route, one sequence at a time */
    for (int s = 0; s < c->nseq; s++) {
        int64_t t0 = (int64_t)s * c->S;
        float *lg = logits + t0 * E;
        int ik[64];
        float wk[64];
        for (int t = 0; t < c->S; t++) {
            mp_route(cfg, lw, x + (t0 + t) * d, 1, lg + (int64_t)t * E, ik, wk);
            for (int k = 0; k < K; k++)
                idx[(t0 + t) * J + k] = ik[k], wt[(t0 + t) * J + k] = wk[k];
            float g = 1.0f;
            if (has_shared && lw->sh_gate_w) {
                float z = 0;
                for (int i = 0; i < d; i++)
                    z += x[(t0 + t) * d + i] * lw->sh_gate_w[i];
                g = 1.0f / (1.0f + expf(-z));
            }
            idx[(t0 + t) * J + K] = has_shared ? E : -1, wt[(t0 + t) * J + K] = g;
        }
    }
    if (c->o->observe && T > 0)
        c->o->observe(c->o->observe_ctx, "router", l, c->seq0, c->nseq, E, logits);
    /* pack by destination */
    for (int64_t t = 0; t < T; t++)
        for (int j = 0; j < J; j++)
            if (idx[t * J + j] >= 0)
                scnt[mp_calib_owner(l, idx[t * J + j], E, size)]++, nsend++;
    smeta = malloc(sizeof(item) * (size_t)(nsend + 1));
    sx = malloc(sizeof(float) * (size_t)(nsend * d + 1));
    sy = malloc(sizeof(float) * (size_t)(nsend * d + 1));
    int64_t *pos = calloc((size_t)size + 1, sizeof(int64_t));
    if (!smeta || !sx || !sy || !pos) {
        free(pos);
        rc = mp_errorf(MP_ENOMEM, "out of memory packing %lld tokens", (long long)nsend);
        goto sync;
    }
    for (int r = 1; r <= size; r++)
        pos[r] = pos[r - 1] + scnt[r - 1];
    int64_t g0 = (int64_t)c->seq0 * c->S;
    for (int64_t t = 0; t < T; t++)
        for (int j = 0; j < J; j++) {
            int u = idx[t * J + j];
            if (u < 0)
                continue;
            int64_t p = pos[mp_calib_owner(l, u, E, size)]++;
            smeta[p] = (item){g0 + t, u, (int32_t)(t * J + j), wt[t * J + j], 0};
            memcpy(sx + p * d, x + t * d, sizeof(float) * (size_t)d);
        }
    free(pos);
sync:
    MP_CHECK_GOTO(mp_mpi_agree(rc), done);
    int mrc = MPI_Alltoall(scnt, 1, MPI_INT64_T, rcnt, 1, MPI_INT64_T, MPI_COMM_WORLD);
    if (mrc != MPI_SUCCESS)
        mp_mpi_fail(mp_mpi_check(mrc, "MPI_Alltoall (token counts)"));
    for (int r = 0; r < size; r++)
        nrecv += rcnt[r];
    rmeta = malloc(sizeof(item) * (size_t)(nrecv + 1));
    rx = malloc(sizeof(float) * (size_t)(nrecv * d + 1));
    ry = malloc(sizeof(float) * (size_t)(nrecv * d + 1));
    ix = malloc(sizeof(int64_t) * (size_t)(nrecv + 1));
    if (!rmeta || !rx || !ry || !ix)
        rc = mp_errorf(MP_ENOMEM, "out of memory receiving %lld tokens", (long long)nrecv);
    /* every rank reaches the exchanges; a local allocation failure is agreed on first */
    MP_CHECK_GOTO(mp_mpi_agree(rc), done);
    MP_CHECK_GOTO(exchange(smeta, scnt, rmeta, rcnt, size, MPI_BYTE, (int)sizeof(item)), done);
    MP_CHECK_GOTO(exchange(sx, scnt, rx, rcnt, size, MPI_FLOAT, d), done);
    char ldir[4200];
    snprintf(ldir, sizeof ldir, "%s/layer%04d", c->o->stats_dir ? c->o->stats_dir : ".", l);
    if (c->collect)
        rc = mp_mkdir_p(ldir);
    MP_CHECK_GOTO(mp_mpi_agree(rc), done);
    /* owner: every unit this rank owns, in unit order; statistics go to disk unit by unit */
    for (int u = 0; u <= E && rc == 0; u++) {
        if (mp_calib_owner(l, u, E, size) != rank || (u == E && !has_shared))
            continue;
        int64_t n = 0;
        for (int64_t i = 0; i < nrecv; i++)
            if (rmeta[i].unit == u)
                ix[n++] = i;
        mp_expert_stats st = {0};
        rc = run_unit(c, lw, l, u, rmeta, rx, ix, n, ry, c->collect ? &st : NULL);
        if (rc < 0 || !c->collect)
            continue;
        unit_sum *su = &us[u];
        su->owned = 1, su->count = st.count, su->f = st.f;
        su->diag_in = malloc(sizeof(double) * (size_t)d);
        su->diag_mid = malloc(sizeof(double) * (size_t)st.f);
        if (!su->diag_in || !su->diag_mid)
            rc = mp_errorf(MP_ENOMEM, "out of memory");
        for (int i = 0; i < d && rc == 0; i++)
            su->diag_in[i] = st.G_in[(int64_t)i * d + i];
        for (int64_t i = 0; i < st.f && rc == 0; i++)
            su->diag_mid[i] = st.G_mid[i * st.f + i];
        char path[4300];
        mp_stats_path(path, sizeof path, c->o->stats_dir, l, u);
        if (rc == 0)
            rc = mp_stats_write_begin(path, &st);
        mp_stats_free(&st);
        mp_fault_point("calibrate: unit written (uncommitted)");
    }
    MP_CHECK_GOTO(mp_mpi_agree(rc), done);
    MP_CHECK_GOTO(exchange(ry, rcnt, sy, scnt, size, MPI_FLOAT, d), done);
    /* combine in slot order: routed experts in top-k order, then the shared expert */
    float *ys = calloc((size_t)(T * J * d + 1), sizeof(float));
    if (!ys)
        rc = mp_errorf(MP_ENOMEM, "out of memory combining expert outputs");
    for (int64_t i = 0; i < nsend && ys; i++)
        memcpy(ys + (int64_t)smeta[i].slot * d, sy + i * d, sizeof(float) * (size_t)d);
    for (int64_t t = 0; t < T && ys; t++) {
        float *o = out + t * d;
        memset(o, 0, sizeof(float) * (size_t)d);
        for (int j = 0; j < J; j++)
            if (idx[t * J + j] >= 0)
                for (int i = 0; i < d; i++)
                    o[i] += wt[t * J + j] * ys[(t * J + j) * d + i];
    }
    free(ys);
    MP_CHECK_GOTO(mp_mpi_agree(rc), done);
    if (c->collect) {
        char path[4300];
        uint64_t *h = calloc((size_t)(2 * (E + 1)), sizeof *h);
        rc = h ? layer_prior(c, l, us, n_starved) : mp_errorf(MP_ENOMEM, "out of memory");
        for (int u = 0; u <= E && rc == 0; u++)
            if (us[u].owned) {
                mp_stats_path(path, sizeof path, c->o->stats_dir, l, u);
                rc = mp_stats_write_end(path, us[u].prior_tokens, us[u].diag_in, us[u].diag_mid, d, us[u].f);
                if (rc == 0)
                    rc = mp_file_xxh64(path, &h[u]);
                h[E + 1 + u] = 1;
                mp_fault_point("calibrate: unit committed");
            }
        rc = mp_commit_layer_units(rc, c->o->stats_dir, l, h, E + 1, expert_file_name, *n_starved,
                                   "calibrate: before layer manifest");
        free(h);
    }
done:
    for (int u = 0; us && u <= E; u++)
        unit_sum_free(&us[u]);
    free(us);
    free(logits), free(wt), free(idx), free(scnt);
    free(smeta), free(sx), free(sy), free(rmeta), free(rx), free(ry), free(ix);
    return rc;
}

static int check_inputs(const mp_model *m, const mp_tokens *tok, const mp_calib_opts *o)
{
    const mp_config *c = &m->cfg;
    MP_CHECK(mp_forward_supported(c));
    if (c->top_k > 63)
        return mp_errorf(MP_EUSAGE, "top-k %d is larger than supported (63)", c->top_k);
    if (c->n_experts > 4096)
        return mp_errorf(MP_EUSAGE, "%d experts per layer is more than supported (4096)", c->n_experts);
    if (tok->seq_len > c->max_pos)
        return mp_errorf(MP_EUSAGE, "calibration sequences of %d tokens are longer than the model's %d positions",
                         tok->seq_len, c->max_pos);
    for (int64_t i = 0; i < (int64_t)tok->n_seq * tok->seq_len; i++)
        if (tok->ids[i] < 0 || tok->ids[i] >= c->vocab)
            return mp_errorf(MP_EFORMAT, "token id %d at [%lld, %lld] is outside the vocabulary [0, %d)",
                             tok->ids[i], (long long)(i / tok->seq_len), (long long)(i % tok->seq_len), c->vocab);
    if (o->min_tokens < 0)
        return mp_errorf(MP_EUSAGE, "min_tokens must be >= 0");
    return 0;
}

int mp_calibrate(const mp_model *m, const mp_tokens *tok, const mp_calib_opts *o, mp_calib_result *res)
{
    const mp_config *cfg = &m->cfg;
    memset(res, 0, sizeof *res);
    ctx c = {m, o, mp_mpi_rank(), mp_mpi_size(), cfg->n_experts, cfg->top_k, cfg->hidden, tok->seq_len, 0, 0, 0, 0};
    int64_t lo, hi;
    mp_shard_range(tok->n_seq, c.rank, c.size, &lo, &hi);
    c.seq0 = (int)lo, c.nseq = (int)(hi - lo), c.T = (int64_t)c.nseq * c.S;
    int d = c.d, S = c.S, rc = check_inputs(m, tok, o);
    MP_CHECK(mp_mpi_agree(rc));
    float *h = malloc(sizeof(float) * (size_t)(c.T * d + 1)), *x = malloc(sizeof(float) * (size_t)(c.T * d + 1));
    float *y = malloc(sizeof(float) * (size_t)(c.T * d + 1));
    float *scr = malloc(sizeof(float) * (size_t)(mp_attention_scratch(cfg, S) + (int64_t)S * d));
    float *head_w = NULL, *head_b = NULL, *lg = NULL;
    double *nll = calloc((size_t)tok->n_seq + 1, sizeof(double));
    mp_layer_w lw = {0};
    if (!h || !x || !y || !scr || !nll)
        rc = mp_errorf(MP_ENOMEM, "out of memory for %lld tokens of hidden states", (long long)c.T);
    if (rc == 0)
        rc = mp_embed(m, tok->ids + (int64_t)c.seq0 * S, (int)c.T, h);
    MP_CHECK_GOTO(mp_mpi_agree(rc), out);
    double t_start = MPI_Wtime();
    if (!o->stats_dir)
        mp_note_progress(); /* nothing to commit (eval): a signal stops at the next layer */
    if (o->observe && c.T)
        o->observe(o->observe_ctx, "hidden", 0, c.seq0, c.nseq, d, h);
    for (int l = 0; l < cfg->n_layers; l++) {
        rc = mp_layer_load(m, l, &lw);
        for (int s = 0; s < c.nseq && rc == 0; s++) {
            float *hs = h + (int64_t)s * S * d, *xs = x + (int64_t)s * S * d;
            mp_norm(cfg, hs, S, d, lw.in_norm, lw.in_norm_b, xs);
            rc = mp_attention(cfg, &lw, xs, S, y, scr);
            for (int64_t i = 0; i < (int64_t)S * d; i++)
                hs[i] += y[i];
            mp_norm(cfg, hs, S, d, lw.post_norm, lw.post_norm_b, xs);
            if (!lw.moe && rc == 0) {
                rc = mp_swiglu(lw.mlp_gate, lw.mlp_up, lw.mlp_down, xs, S, d, cfg->dense_ffn, y, NULL);
                for (int64_t i = 0; i < (int64_t)S * d; i++)
                    hs[i] += y[i];
            }
        }
        MP_CHECK_GOTO(mp_mpi_agree(rc), out);
        if (lw.moe) {
            int starved = 0, committed = 0;
            c.collect = o->stats_dir != NULL;
            if (c.collect && o->resume) {
                /* a committed, intact layer is not redone: its forward pass runs without statistics */
                char why[600] = "";
                int st[2] = {0, 0};
                if (c.rank == 0)
                    rc = mp_store_layer_ok(o->stats_dir, l, &st[0], &st[1], why, sizeof why);
                MP_CHECK_GOTO(mp_mpi_agree(rc), out);
                MPI_Bcast(st, 2, MPI_INT, 0, MPI_COMM_WORLD);
                committed = st[0], starved = st[1];
                if (c.rank == 0 && why[0])
                    fprintf(stderr, "moepack: note: damaged unit %s; recomputing layer %d\n", why, l);
                if (committed) {
                    c.collect = 0;
                    res->n_resumed++;
                }
            }
            MP_CHECK_GOTO(moe_layer(&c, &lw, l, x, y, committed ? &(int){0} : &starved), out);
            if (c.collect)
                mp_note_progress();
            res->n_starved += starved;
            for (int64_t i = 0; i < c.T * d; i++)
                h[i] += y[i];
        }
        mp_layer_free(&lw);
        if (o->observe && c.T)
            o->observe(o->observe_ctx, "hidden", l + 1, c.seq0, c.nseq, d, h);
        double el = MPI_Wtime() - t_start, eta = el / (l + 1) * (cfg->n_layers - l - 1);
        if (c.rank == 0)
            mp_progress(o, "calibrate", l + 1, cfg->n_layers, el, eta);
        mp_fault_point("calibrate: layer finished");
        char where[64];
        snprintf(where, sizeof where, "in calibrate after layer %d of %d", l, cfg->n_layers);
        MP_CHECK_GOTO(mp_should_stop(el / (l + 1), where), out);
    }
    {
        float *nw = NULL, *nb = NULL;
        rc = mp_ckpt_read_named_f32(m->ck, "model.norm.weight", (nw = malloc(sizeof(float) * (size_t)d)), d);
        if (rc == 0 && cfg->layernorm)
            rc = mp_ckpt_read_named_f32(m->ck, "model.norm.bias", (nb = malloc(sizeof(float) * (size_t)d)), d);
        if (rc == 0)
            mp_norm(cfg, h, (int)c.T, d, nw, nb, x);
        free(nw), free(nb);
    }
    MP_CHECK_GOTO(mp_mpi_agree(rc), out);
    if (o->observe && c.T)
        o->observe(o->observe_ctx, "hidden", cfg->n_layers + 1, c.seq0, c.nseq, d, x);
    if (o->want_nll) {
        int V = cfg->vocab;
        rc = mp_head_load(m, &head_w, &head_b);
        lg = rc == 0 ? malloc(sizeof(float) * (size_t)S * (size_t)V) : NULL;
        if (rc == 0 && !lg)
            rc = mp_errorf(MP_ENOMEM, "out of memory for logits");
        for (int s = 0; s < c.nseq && rc == 0; s++) {
            mp_lm_head(cfg, head_w, head_b, x + (int64_t)s * S * d, S, lg);
            if (o->observe)
                o->observe(o->observe_ctx, "logits", 0, c.seq0 + s, 1, V, lg);
            const int32_t *ids = tok->ids + (int64_t)(c.seq0 + s) * S;
            double acc = 0;
            for (int t = 0; t + 1 < S; t++) {
                const float *r = lg + (int64_t)t * V;
                double mx = r[0], z = 0;
                for (int v = 1; v < V; v++)
                    mx = r[v] > mx ? r[v] : mx;
                for (int v = 0; v < V; v++)
                    z += exp((double)r[v] - mx);
                acc += mx + log(z) - r[ids[t + 1]];
            }
            nll[c.seq0 + s] = acc;
        }
        MP_CHECK_GOTO(mp_mpi_agree(rc), out);
        /* gather per-sequence sums; root adds them in sequence order */
        int *cnt = malloc(sizeof(int) * (size_t)c.size * 2), *dsp = cnt + c.size;
        for (int r = 0; r < c.size; r++) {
            int64_t a, b;
            mp_shard_range(tok->n_seq, r, c.size, &a, &b);
            cnt[r] = (int)(b - a), dsp[r] = (int)a;
        }
        double *all = calloc((size_t)tok->n_seq + 1, sizeof(double));
        int mrc = MPI_Gatherv(nll + c.seq0, c.nseq, MPI_DOUBLE, all, cnt, dsp, MPI_DOUBLE, 0, MPI_COMM_WORLD);
        free(cnt);
        if (mrc != MPI_SUCCESS)
            mp_mpi_fail(mp_mpi_check(mrc, "MPI_Gatherv (NLL)"));
        if (c.rank == 0) {
            for (int s = 0; s < tok->n_seq; s++)
                res->nll_sum += all[s];
            res->n_pred = (int64_t)tok->n_seq * (S - 1);
        }
        free(all);
    }
out:
    mp_layer_free(&lw);
    free(h), free(x), free(y), free(scr), free(nll), free(head_w), free(head_b), free(lg);
    return rc;
}
