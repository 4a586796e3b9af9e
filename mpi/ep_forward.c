/* ep_forward.c - the expert-parallel forward pass (see ep_forward.h). */
#define _GNU_SOURCE
#include "ep_forward.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "plan.h"
#include "runtime.h"

struct mp_epf {
    const mp_weights *w;
    const mp_config *cfg;
    const mp_tokens *tok;
    mp_observer observe;
    void *observe_ctx;
    int rank, size, E, K, d, S;
    int seq0, nseq;
    int64_t T;          /* local tokens */
    float *h, *x, *y;   /* [T, d]: residual stream, normed input of the block, block output */
    float *scr;         /* attention scratch */
};

typedef struct {
    int64_t g;    /* global token index */
    int32_t unit; /* expert, or E for the shared expert */
    int32_t slot; /* sender's slot: local token * J + j */
    float w;      /* routing weight (shared: its gate) */
    int32_t pad;
} item;

/* one MoE layer's routing and exchange buffers; J = K + 1 slots per token (the last: the shared expert) */
typedef struct {
    int J;
    float *logits, *wt; /* [T, E], [T, J] */
    int *idx;           /* [T, J]: unit of each slot (MP_UNIT_DENSE for a dense MLP), -1 = empty */
    int64_t *scnt, *rcnt, nsend, nrecv;
    item *smeta, *rmeta;
    float *sx, *rx, *ry, *sy;
} moe_buf;

static void moe_buf_free(moe_buf *b)
{
    free(b->logits), free(b->wt), free(b->idx), free(b->scnt);
    free(b->smeta), free(b->rmeta), free(b->sx), free(b->rx), free(b->ry), free(b->sy);
    memset(b, 0, sizeof *b);
}

static int has_shared(const mp_config *c) { return c->n_shared > 0 && c->shared_ffn > 0; }

/* what the model cannot compute is a config problem (mp_forward_supported: MP_ECONFIG, which also bounds
 * top-k and the experts per layer); tokens that do not fit the model are bad input data (MP_EFORMAT, the
 * README's code for a bad tokens file), never a usage error */
static int check_inputs(const mp_config *c, const mp_tokens *tok)
{
    MP_CHECK(mp_forward_supported(c));
    if (tok->seq_len > c->max_pos)
        return mp_errorf(MP_EFORMAT, "calibration sequences of %d tokens are longer than the model's %d positions",
                         tok->seq_len, c->max_pos);
    /* past the original length transformers' PhimoeForCausalLM keeps the short factors but takes long_mscale,
     * unlike Phi's own code: no reference to follow */
    if (c->arch == MP_ARCH_PHIMOE && !strcmp(c->rope_type, "longrope") && tok->seq_len > c->rope_orig_max_pos)
        return mp_errorf(MP_ECONFIG,
                         "%s: key 'original_max_position_embeddings' = %d: Phi-3.5-MoE's longrope beyond it (sequences "
                         "of %d tokens) is not supported",
                         c->file, c->rope_orig_max_pos, tok->seq_len);
    for (int64_t i = 0; i < (int64_t)tok->n_seq * tok->seq_len; i++)
        if (tok->ids[i] < 0 || tok->ids[i] >= c->vocab)
            return mp_errorf(MP_EFORMAT, "token id %d at [%lld, %lld] is outside the vocabulary [0, %d)",
                             tok->ids[i], (long long)(i / tok->seq_len), (long long)(i % tok->seq_len), c->vocab);
    return 0;
}

int mp_epf_create(const mp_weights *w, const mp_tokens *tok, mp_observer observe, void *observe_ctx,
                  mp_epf **out)
{
    const mp_config *cfg = w->cfg;
    *out = NULL;
    mp_epf *s = NULL;
    int rc = check_inputs(cfg, tok);
    if (rc == 0 && !(s = calloc(1, sizeof *s)))
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    if (s) {
        *s = (mp_epf){w, cfg, tok, observe, observe_ctx, mp_mpi_rank(), mp_mpi_size(), cfg->n_experts, cfg->top_k,
                      cfg->hidden, tok->seq_len, 0, 0, 0, NULL, NULL, NULL, NULL};
        int64_t lo, hi;
        mp_seq_range(tok->n_seq, s->rank, s->size, &lo, &hi);
        s->seq0 = (int)lo, s->nseq = (int)(hi - lo), s->T = (int64_t)s->nseq * s->S;
        size_t td = (size_t)(s->T * s->d + 1);
        s->h = malloc(sizeof(float) * td), s->x = malloc(sizeof(float) * td), s->y = malloc(sizeof(float) * td);
        s->scr = malloc(sizeof(float) * (size_t)(mp_attention_scratch(cfg, s->S) + (int64_t)s->S * s->d));
        if (!s->h || !s->x || !s->y || !s->scr)
            rc = mp_errorf(MP_ENOMEM, "out of memory for %lld tokens of hidden states", (long long)s->T);
        if (rc == 0)
            rc = w->embed(w->ctx, tok->ids + (int64_t)s->seq0 * s->S, (int)s->T, s->h);
        if (rc == 0 && observe && s->T)
            observe(observe_ctx, "hidden", 0, s->seq0, s->nseq, s->d, s->h);
    }
    rc = mp_mpi_agree(rc);
    if (rc < 0)
        mp_epf_free(s);
    else
        *out = s;
    return rc;
}

void mp_epf_free(mp_epf *s)
{
    if (!s)
        return;
    free(s->h), free(s->x), free(s->y), free(s->scr);
    free(s);
}

/* Local: router logits, top-k units and weights of every local token, the shared expert in slot K. */
static int route(const mp_epf *s, const mp_layer_w *lw, int l, moe_buf *b)
{
    const mp_config *cfg = s->cfg;
    int E = s->E, K = s->K, d = s->d, J = b->J, sh = has_shared(cfg);
    int64_t T = s->T;
    b->logits = malloc(sizeof(float) * (size_t)(T * E + 1));
    b->wt = malloc(sizeof(float) * (size_t)(T * J + 1));
    b->idx = malloc(sizeof(int) * (size_t)(T * J + 1));
    if (!b->logits || !b->wt || !b->idx)
        return mp_errorf(MP_ENOMEM, "out of memory routing %lld tokens", (long long)T);
    _Static_assert(MP_FORWARD_MAX_TOPK < 64, "ik/wk hold the top-k experts (mp_forward_supported bounds k)");
    int ik[64];
    float wk[64];
    for (int64_t t = 0; t < T; t++) {
        const float *xt = s->x + t * d;
        mp_route(cfg, lw, xt, 1, b->logits + t * E, ik, wk);
        for (int k = 0; k < K; k++)
            b->idx[t * J + k] = ik[k], b->wt[t * J + k] = wk[k];
        float g = 1.0f;
        if (sh && lw->sh_gate_w) {
            float z = 0;
            for (int i = 0; i < d; i++)
                z += xt[i] * lw->sh_gate_w[i];
            g = 1.0f / (1.0f + expf(-z));
        }
        b->idx[t * J + K] = sh ? E : -1, b->wt[t * J + K] = g;
    }
    if (s->observe && T > 0)
        s->observe(s->observe_ctx, "router", l, s->seq0, s->nseq, E, b->logits);
    return 0;
}

/* Alltoallv with 64-bit element counts checked against INT_MAX. Collective. */
static int exchange(const void *sbuf, const int64_t *scnt, void *rbuf, const int64_t *rcnt, int size,
                    MPI_Datatype type, int per)
{
    int *sc = malloc(sizeof(int) * (size_t)size * 4), rc = 0;
    if (!sc)
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    int *sd = sc + size, *rcv = sd + size, *rd = rcv + size;
    int64_t so = 0, ro = 0;
    for (int r = 0; r < size && rc == 0; r++) {
        if (scnt[r] * per > INT_MAX || rcnt[r] * per > INT_MAX || so > INT_MAX || ro > INT_MAX)
            rc = mp_errorf(MP_EINTERNAL, "token exchange too large for one MPI message; use more ranks");
        else {
            sc[r] = (int)(scnt[r] * per), sd[r] = (int)so, rcv[r] = (int)(rcnt[r] * per), rd[r] = (int)ro;
            so += scnt[r] * per, ro += rcnt[r] * per;
        }
    }
    rc = mp_mpi_agree(rc);
    if (rc == 0)
        MP_MPI(MPI_Alltoallv(sbuf, sc, sd, type, rbuf, rcv, rd, type, MPI_COMM_WORLD));
    free(sc);
    return rc;
}

/* Collective: every (token, unit) pair to the unit's owner; receivers get metadata and inputs. rc: the
 * local status so far (agreed here, before the first collective). */
static int dispatch(const mp_epf *s, int l, moe_buf *b, int rc)
{
    int E = s->E, d = s->d, J = b->J, size = s->size;
    int64_t T = s->T;
    b->scnt = calloc((size_t)size * 2, sizeof(int64_t));
    if (!b->scnt && rc == 0)
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    int64_t *pos = NULL;
    if (rc == 0) {
        b->rcnt = b->scnt + size;
        for (int64_t t = 0; t < T; t++)
            for (int j = 0; j < J; j++)
                if (b->idx[t * J + j] != -1) /* -1: an empty slot (MP_UNIT_DENSE is -2) */
                    b->scnt[mp_unit_owner(l, b->idx[t * J + j], E, size)]++, b->nsend++;
        b->smeta = malloc(sizeof(item) * (size_t)(b->nsend + 1));
        b->sx = malloc(sizeof(float) * (size_t)(b->nsend * d + 1));
        pos = calloc((size_t)size + 1, sizeof(int64_t));
        if (!b->smeta || !b->sx || !pos)
            rc = mp_errorf(MP_ENOMEM, "out of memory packing %lld tokens", (long long)b->nsend);
    }
    if (rc == 0) {
        for (int r = 1; r <= size; r++)
            pos[r] = pos[r - 1] + b->scnt[r - 1];
        int64_t g0 = (int64_t)s->seq0 * s->S;
        for (int64_t t = 0; t < T; t++)
            for (int j = 0; j < J; j++) {
                int u = b->idx[t * J + j];
                if (u == -1)
                    continue;
                int64_t p = pos[mp_unit_owner(l, u, E, size)]++;
                b->smeta[p] = (item){g0 + t, u, (int32_t)(t * J + j), b->wt[t * J + j], 0};
                memcpy(b->sx + p * d, s->x + t * d, sizeof(float) * (size_t)d);
            }
    }
    free(pos);
    MP_CHECK(mp_mpi_agree(rc)); /* every rank reaches the exchanges; a local failure is agreed on first */
    MP_MPI(MPI_Alltoall(b->scnt, 1, MPI_INT64_T, b->rcnt, 1, MPI_INT64_T, MPI_COMM_WORLD));
    for (int r = 0; r < size; r++)
        b->nrecv += b->rcnt[r];
    b->rmeta = malloc(sizeof(item) * (size_t)(b->nrecv + 1));
    b->rx = malloc(sizeof(float) * (size_t)(b->nrecv * d + 1));
    b->ry = malloc(sizeof(float) * (size_t)(b->nrecv * d + 1));
    b->sy = malloc(sizeof(float) * (size_t)(b->nsend * d + 1));
    if (!b->rmeta || !b->rx || !b->ry || !b->sy)
        rc = mp_errorf(MP_ENOMEM, "out of memory receiving %lld tokens", (long long)b->nrecv);
    MP_CHECK(mp_mpi_agree(rc));
    MP_CHECK(exchange(b->smeta, b->scnt, b->rmeta, b->rcnt, size, MPI_BYTE, (int)sizeof(item)));
    MP_CHECK(exchange(b->sx, b->scnt, b->rx, b->rcnt, size, MPI_FLOAT, d));
    return 0;
}

static int cmp_item_g(const void *a, const void *b, void *base)
{
    const item *v = base;
    int64_t x = v[*(const int64_t *)a].g, y = v[*(const int64_t *)b].g;
    return (x > y) - (x < y);
}

/* Local, on the owner: the outputs of unit u for its received items ix[n] (sorted here by global token
 * index), chunk by chunk, each chunk shown to the hooks. */
static int run_unit(const mp_epf *s, const mp_weights *sw, const mp_layer_w *lw, int l, int u, const moe_buf *b,
                    int64_t *ix, int64_t n, const mp_unit_hooks *hk)
{
    const mp_config *cfg = s->cfg;
    int d = s->d, shared = u == s->E, dense = u == MP_UNIT_DENSE, rc = 0;
    int f = dense ? cfg->dense_ffn : shared ? cfg->shared_ffn : cfg->moe_ffn;
    const float *wg, *wu, *wd;
    float *own = NULL, *X = NULL, *Y = NULL, *Hm = NULL, *W = NULL;
    int64_t *G = NULL;
    if (sw->unit) { /* served by the weights' provider (a compressed model); no intermediate activations */
        wg = wu = wd = NULL;
        if (hk)
            return mp_errorf(MP_EINTERNAL, "statistics hooks need dense experts");
    } else if (dense) {
        wg = lw->mlp_gate, wu = lw->mlp_up, wd = lw->mlp_down;
    } else if (shared) {
        wg = lw->sh_gate, wu = lw->sh_up, wd = lw->sh_down;
    } else {
        size_t fd = (size_t)f * (size_t)d;
        own = malloc(3 * fd * sizeof(float));
        if (!own)
            return mp_errorf(MP_ENOMEM, "out of memory for expert %d of layer %d", u, l);
        wg = own, wu = own + fd, wd = own + 2 * fd;
        for (int p = 0; p < 3; p++)
            MP_CHECK_GOTO(sw->expert(sw->ctx, l, u, (mp_proj)p, own + (size_t)p * fd), out);
    }
    if (hk)
        MP_CHECK_GOTO(hk->begin(hk->ctx, l, u, d, f), out);
    qsort_r(ix, (size_t)n, sizeof *ix, cmp_item_g, (void *)b->rmeta);
    X = malloc(sizeof(float) * MP_CHUNK * (size_t)d);
    Y = malloc(sizeof(float) * MP_CHUNK * (size_t)d);
    Hm = malloc(sizeof(float) * MP_CHUNK * (size_t)f);
    W = malloc(sizeof(float) * MP_CHUNK);
    G = malloc(sizeof(int64_t) * MP_CHUNK);
    if (!X || !Y || !Hm || !W || !G) {
        rc = mp_errorf(MP_ENOMEM, "out of memory for expert %d of layer %d", u, l);
        goto out;
    }
    for (int64_t c0 = 0; c0 < n; c0 += MP_CHUNK) {
        int nb = (int)(n - c0 < MP_CHUNK ? n - c0 : MP_CHUNK);
        for (int i = 0; i < nb; i++) {
            memcpy(X + (size_t)i * d, b->rx + (size_t)ix[c0 + i] * d, sizeof(float) * (size_t)d);
            W[i] = b->rmeta[ix[c0 + i]].w;
            G[i] = b->rmeta[ix[c0 + i]].g;
        }
        if (sw->unit)
            MP_CHECK_GOTO(sw->unit(sw->ctx, l, u, X, nb, Y), out);
        else
            MP_CHECK_GOTO(mp_swiglu(wg, wu, wd, X, nb, d, f, Y, Hm), out);
        for (int i = 0; i < nb; i++)
            memcpy(b->ry + (size_t)ix[c0 + i] * d, Y + (size_t)i * d, sizeof(float) * (size_t)d);
        if (hk)
            MP_CHECK_GOTO(hk->chunk(hk->ctx, l, u, X, Hm, W, G, nb), out);
    }
    if (hk)
        rc = hk->end(hk->ctx, l, u);
out:
    free(own), free(X), free(Y), free(Hm), free(W), free(G);
    return rc;
}

/* Collective: every unit this rank owns, in unit order, served by sw. */
static int experts(const mp_epf *s, const mp_weights *sw, const mp_layer_w *lw, int l, const moe_buf *b,
                   const mp_unit_hooks *hk)
{
    int E = s->E, rc = 0;
    int64_t *ix = malloc(sizeof(int64_t) * (size_t)(b->nrecv + 1));
    if (!ix)
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    for (int u = 0; u <= E && rc == 0; u++) {
        if (mp_unit_owner(l, u, E, s->size) != s->rank || (u == E && !has_shared(s->cfg)))
            continue;
        int64_t n = 0;
        for (int64_t i = 0; i < b->nrecv; i++)
            if (b->rmeta[i].unit == u)
                ix[n++] = i;
        rc = run_unit(s, sw, lw, l, u, b, ix, n, hk);
    }
    free(ix);
    return mp_mpi_agree(rc);
}

/* Collective: outputs back to the tokens' ranks; out[t] = sum over slots in order of weight * output. */
static int combine(const mp_epf *s, moe_buf *b, float *out)
{
    int d = s->d, J = b->J;
    MP_CHECK(exchange(b->ry, b->rcnt, b->sy, b->scnt, s->size, MPI_FLOAT, d));
    /* each token's slots in order: routed experts in top-k order, then the shared expert */
    int64_t *at = malloc(sizeof(int64_t) * (size_t)(s->T * J + 1));
    int rc = at ? 0 : mp_errorf(MP_ENOMEM, "out of memory combining expert outputs");
    for (int64_t i = 0; rc == 0 && i < s->T * J; i++)
        at[i] = -1;
    for (int64_t i = 0; rc == 0 && i < b->nsend; i++)
        at[b->smeta[i].slot] = i;
    for (int64_t t = 0; rc == 0 && t < s->T; t++) {
        float *o = out + t * d;
        memset(o, 0, sizeof(float) * (size_t)d);
        for (int j = 0; j < J; j++) {
            int64_t i = at[t * J + j];
            if (i < 0)
                continue;
            const float *yi = b->sy + i * d, wj = b->wt[t * J + j];
            for (int k = 0; k < d; k++)
                o[k] += wj * yi[k];
        }
    }
    free(at);
    return mp_mpi_agree(rc);
}

/* Collective: the MoE block of layer l for the local tokens, out[T, d] from x[T, d], its units served by sw. */
static int moe_block(mp_epf *s, const mp_weights *sw, const mp_layer_w *lw, int l, const mp_unit_hooks *hk,
                     float *out)
{
    moe_buf b = {.J = s->K + 1};
    int rc = route(s, lw, l, &b);
    MP_CHECK_GOTO(dispatch(s, l, &b, rc), done);
    MP_CHECK_GOTO(experts(s, sw, lw, l, &b, hk), done);
    MP_CHECK_GOTO(combine(s, &b, out), done);
done:
    moe_buf_free(&b);
    return rc;
}

/* Collective: the statistics of the dense MLP of non-MoE layer l (its output was computed locally): every
 * local token goes to the unit's owner, which runs the unit in chunks of global token order for the hooks,
 * as for the shared expert, so the statistics do not depend on the rank count. */
static int dense_stats(mp_epf *s, const mp_layer_w *lw, int l, const mp_unit_hooks *hk)
{
    moe_buf b = {.J = 1};
    int64_t T = s->T;
    b.wt = malloc(sizeof(float) * (size_t)(T + 1));
    b.idx = malloc(sizeof(int) * (size_t)(T + 1));
    int rc = b.wt && b.idx ? 0 : mp_errorf(MP_ENOMEM, "out of memory for the dense MLP of layer %d", l);
    for (int64_t t = 0; rc == 0 && t < T; t++)
        b.idx[t] = MP_UNIT_DENSE, b.wt[t] = 1.0f;
    MP_CHECK_GOTO(dispatch(s, l, &b, rc), done);
    int64_t *ix = malloc(sizeof(int64_t) * (size_t)(b.nrecv + 1));
    if (!ix)
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    if (rc == 0 && mp_unit_owner(l, MP_UNIT_DENSE, s->E, s->size) == s->rank) {
        for (int64_t i = 0; i < b.nrecv; i++)
            ix[i] = i;
        rc = run_unit(s, s->w, lw, l, MP_UNIT_DENSE, &b, ix, b.nrecv, hk);
    }
    free(ix);
    rc = mp_mpi_agree(rc);
done:
    moe_buf_free(&b);
    return rc;
}

/* Collective: root gets all[n_seq * w], the per-sequence values seq[q * w ..] of every rank's own sequences
 * (indexed by global sequence), so that sums over them can be added in sequence order. */
static int gather_seq(const mp_epf *s, const double *seq, int w, double *all)
{
    int *cnt = malloc(sizeof(int) * (size_t)s->size * 2);
    MP_CHECK(mp_mpi_agree(cnt ? 0 : mp_errorf(MP_ENOMEM, "out of memory")));
    int *dsp = cnt + s->size;
    for (int r = 0; r < s->size; r++) {
        int64_t a, b;
        mp_seq_range(s->tok->n_seq, r, s->size, &a, &b);
        cnt[r] = (int)(w * (b - a)), dsp[r] = (int)(w * a);
    }
    int rc = MPI_Gatherv(seq + (size_t)w * s->seq0, w * s->nseq, MPI_DOUBLE, all, cnt, dsp, MPI_DOUBLE, 0,
                         MPI_COMM_WORLD);
    free(cnt);
    MP_MPI(rc);
    return 0;
}

/* Collective: layer l; with alt, a MoE layer's block once more from alt's units on the same inputs and
 * routing, and sq[0..1] on root = sum over tokens of ||y - y_alt||^2 and ||y||^2 (sequence order). */
static int layer_run(mp_epf *s, int l, const mp_unit_hooks *hooks, const mp_weights *alt, double sq[2])
{
    const mp_config *cfg = s->cfg;
    int d = s->d, S = s->S;
    mp_layer_w lw = {0};
    int rc = s->w->layer(s->w->ctx, l, &lw);
    for (int q = 0; q < s->nseq && rc == 0; q++) {
        float *hs = s->h + (int64_t)q * S * d, *xs = s->x + (int64_t)q * S * d, *ys = s->y + (int64_t)q * S * d;
        mp_norm(cfg, hs, S, d, lw.in_norm, lw.in_norm_b, xs);
        rc = mp_attention(cfg, &lw, xs, S, ys, s->scr);
        for (int64_t i = 0; i < (int64_t)S * d; i++)
            hs[i] += ys[i];
        mp_norm(cfg, hs, S, d, lw.post_norm, lw.post_norm_b, xs);
        if (!lw.moe && rc == 0 && s->w->unit && cfg->dense_ffn > 0) /* a compressed dense MLP, as stored */
            rc = s->w->unit(s->w->ctx, l, MP_UNIT_DENSE, xs, S, ys);
        else if (!lw.moe && rc == 0)
            rc = mp_swiglu(lw.mlp_gate, lw.mlp_up, lw.mlp_down, xs, S, d, cfg->dense_ffn, ys, NULL);
    }
    rc = mp_mpi_agree(rc);
    if (rc == 0 && lw.moe)
        rc = moe_block(s, s->w, &lw, l, hooks, s->y);
    else if (rc == 0 && hooks && cfg->dense_ffn > 0)
        rc = dense_stats(s, &lw, l, hooks);
    if (alt) {
        sq[0] = sq[1] = 0;
        float *y2 = NULL;
        double *seq = calloc(2 * ((size_t)s->tok->n_seq + 1), sizeof(double)), *all = NULL;
        int dense = !lw.moe && cfg->dense_ffn > 0; /* the dense MLP: alt's unit MP_UNIT_DENSE, where the tokens are */
        if (rc == 0 && (lw.moe || dense)) {
            y2 = malloc(sizeof(float) * (size_t)(s->T * d + 1));
            all = calloc(2 * ((size_t)s->tok->n_seq + 1), sizeof(double));
            rc = mp_mpi_agree(y2 && seq && all ? 0 : mp_errorf(MP_ENOMEM, "out of memory comparing layer %d", l));
            if (rc == 0 && lw.moe)
                rc = moe_block(s, alt, &lw, l, NULL, y2);
            for (int q = 0; rc == 0 && dense && q < s->nseq; q++)
                rc = alt->unit(alt->ctx, l, MP_UNIT_DENSE, s->x + (int64_t)q * S * d, S, y2 + (int64_t)q * S * d);
            if (dense)
                rc = mp_mpi_agree(rc);
            for (int q = 0; q < s->nseq && rc == 0; q++) {
                double *acc = seq + 2 * (size_t)(s->seq0 + q);
                for (int64_t i = (int64_t)q * S * d; i < (int64_t)(q + 1) * S * d; i++) {
                    double e = (double)s->y[i] - y2[i];
                    acc[0] += e * e, acc[1] += (double)s->y[i] * s->y[i];
                }
            }
            if (rc == 0)
                rc = gather_seq(s, seq, 2, all);
            for (int q = 0; rc == 0 && s->rank == 0 && q < s->tok->n_seq; q++)
                sq[0] += all[2 * q], sq[1] += all[2 * q + 1];
        }
        free(y2), free(seq), free(all);
    }
    if (rc == 0) {
        for (int64_t i = 0; i < s->T * d; i++)
            s->h[i] += s->y[i];
        if (s->observe && s->T)
            s->observe(s->observe_ctx, "hidden", l + 1, s->seq0, s->nseq, d, s->h);
    }
    mp_layer_free(&lw);
    return rc;
}

int mp_epf_layer(mp_epf *s, int l, const mp_unit_hooks *hooks) { return layer_run(s, l, hooks, NULL, NULL); }

int mp_epf_layer_compare(mp_epf *s, int l, const mp_unit_hooks *hooks, const mp_weights *alt, double sq[2])
{
    if (!alt || !alt->unit)
        return mp_mpi_agree(mp_errorf(MP_EINTERNAL, "mp_epf_layer_compare needs units served by `unit`"));
    return layer_run(s, l, hooks, alt, sq);
}

int mp_epf_head(mp_epf *s, double *nll_sum, int64_t *n_pred)
{
    const mp_config *cfg = s->cfg;
    int d = s->d, S = s->S, V = cfg->vocab;
    float *nw = NULL, *nb = NULL, *hw = NULL, *hb = NULL, *lg = NULL;
    double *nll = calloc((size_t)s->tok->n_seq + 1, sizeof(double)), *all = NULL;
    int rc = nll ? s->w->head(s->w->ctx, &nw, &nb, &hw, &hb) : mp_errorf(MP_ENOMEM, "out of memory");
    if (rc == 0) {
        mp_norm(cfg, s->h, (int)s->T, d, nw, nb, s->x);
        if (s->observe && s->T)
            s->observe(s->observe_ctx, "hidden", cfg->n_layers + 1, s->seq0, s->nseq, d, s->x);
        lg = malloc(sizeof(float) * (size_t)S * (size_t)V);
        if (!lg)
            rc = mp_errorf(MP_ENOMEM, "out of memory for logits");
    }
    for (int q = 0; q < s->nseq && rc == 0; q++) {
        mp_lm_head(cfg, hw, hb, s->x + (int64_t)q * S * d, S, lg);
        if (s->observe)
            s->observe(s->observe_ctx, "logits", 0, s->seq0 + q, 1, V, lg);
        const int32_t *ids = s->tok->ids + (int64_t)(s->seq0 + q) * S;
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
        if (!isfinite(acc))
            rc = mp_errorf(MP_ENUMERIC, "the negative log-likelihood of sequence %d is not finite", s->seq0 + q);
        nll[s->seq0 + q] = acc;
    }
    MP_CHECK_GOTO(mp_mpi_agree(rc), out);
    /* gather per-sequence sums; root adds them in sequence order */
    all = calloc((size_t)s->tok->n_seq + 1, sizeof(double));
    MP_CHECK_GOTO(mp_mpi_agree(all ? 0 : mp_errorf(MP_ENOMEM, "out of memory")), out);
    MP_CHECK_GOTO(gather_seq(s, nll, 1, all), out);
    *nll_sum = 0, *n_pred = 0;
    if (s->rank == 0) {
        for (int q = 0; q < s->tok->n_seq; q++)
            *nll_sum += all[q];
        *n_pred = (int64_t)s->tok->n_seq * (S - 1);
    }
out:
    free(nw), free(nb), free(hw), free(hb), free(lg), free(nll), free(all);
    return rc;
}

/* log-softmax of r[V] into out[V] (fp64) */
static void log_softmax(const float *r, int V, double *out)
{
    double mx = r[0], z = 0;
    for (int v = 1; v < V; v++)
        mx = r[v] > mx ? r[v] : mx;
    for (int v = 0; v < V; v++)
        z += exp((double)r[v] - mx);
    double lz = mx + log(z);
    for (int v = 0; v < V; v++)
        out[v] = (double)r[v] - lz;
}

int mp_epf_head_compare(mp_epf *a, mp_epf *b, mp_head_cmp *out)
{
    const mp_config *cfg = a->cfg;
    int d = a->d, S = a->S, V = cfg->vocab, rc = 0;
    float *nw[2] = {NULL, NULL}, *nb[2] = {NULL, NULL}, *hw[2] = {NULL, NULL}, *hb[2] = {NULL, NULL};
    float *lg[2] = {NULL, NULL};
    double *lp[2] = {NULL, NULL}, *seq = calloc(4 * ((size_t)a->tok->n_seq + 1), sizeof(double)), *all = NULL;
    mp_epf *st[2] = {a, b};
    memset(out, 0, sizeof *out);
    if (!seq)
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    for (int k = 0; k < 2 && rc == 0; k++) {
        rc = st[k]->w->head(st[k]->w->ctx, &nw[k], &nb[k], &hw[k], &hb[k]);
        if (rc == 0)
            mp_norm(cfg, st[k]->h, (int)st[k]->T, d, nw[k], nb[k], st[k]->x);
        lg[k] = malloc(sizeof(float) * (size_t)S * (size_t)V);
        lp[k] = malloc(sizeof(double) * (size_t)V);
        if (rc == 0 && (!lg[k] || !lp[k]))
            rc = mp_errorf(MP_ENOMEM, "out of memory for logits");
    }
    for (int q = 0; q < a->nseq && rc == 0; q++) {
        for (int k = 0; k < 2; k++)
            mp_lm_head(cfg, hw[k], hb[k], st[k]->x + (int64_t)q * S * d, S, lg[k]);
        const int32_t *ids = a->tok->ids + (int64_t)(a->seq0 + q) * S;
        double *acc = seq + 4 * (size_t)(a->seq0 + q); /* nll original, nll compressed, KL, top-1 agreements */
        for (int t = 0; t + 1 < S; t++) {
            int top[2] = {0, 0};
            for (int k = 0; k < 2; k++) {
                const float *r = lg[k] + (int64_t)t * V;
                log_softmax(r, V, lp[k]);
                for (int v = 1; v < V; v++)
                    top[k] = r[v] > r[top[k]] ? v : top[k];
                acc[k] -= lp[k][ids[t + 1]];
            }
            double kl = 0;
            for (int v = 0; v < V; v++)
                kl += exp(lp[0][v]) * (lp[0][v] - lp[1][v]);
            acc[2] += kl, acc[3] += top[0] == top[1];
        }
        for (int k = 0; k < 3 && rc == 0; k++)
            if (!isfinite(acc[k]))
                rc = mp_errorf(MP_ENUMERIC, "sequence %d: the %s is not finite", a->seq0 + q,
                               k == 2 ? "KL divergence" : k ? "compressed model's NLL" : "original model's NLL");
    }
    MP_CHECK_GOTO(mp_mpi_agree(rc), out);
    all = calloc(4 * ((size_t)a->tok->n_seq + 1), sizeof(double));
    MP_CHECK_GOTO(mp_mpi_agree(all ? 0 : mp_errorf(MP_ENOMEM, "out of memory")), out);
    MP_CHECK_GOTO(gather_seq(a, seq, 4, all), out);
    if (a->rank == 0) { /* in sequence order: the same for any rank count */
        for (int q = 0; q < a->tok->n_seq; q++)
            out->nll[0] += all[4 * q], out->nll[1] += all[4 * q + 1], out->kl_sum += all[4 * q + 2],
                out->top1 += (int64_t)all[4 * q + 3];
        out->n_pred = (int64_t)a->tok->n_seq * (S - 1);
    }
out:
    for (int k = 0; k < 2; k++)
        free(nw[k]), free(nb[k]), free(hw[k]), free(hb[k]), free(lg[k]), free(lp[k]);
    free(seq), free(all);
    return rc;
}

int mp_epf_run(const mp_weights *w, const mp_tokens *tok, mp_observer observe, void *observe_ctx, double *nll_sum,
               int64_t *n_pred)
{
    mp_epf *s = NULL;
    MP_CHECK(mp_epf_create(w, tok, observe, observe_ctx, &s));
    int rc = 0;
    for (int l = 0; l < w->cfg->n_layers && rc == 0; l++)
        rc = mp_epf_layer(s, l, NULL);
    if (rc == 0)
        rc = mp_epf_head(s, nll_sum, n_pred);
    mp_epf_free(s);
    return rc;
}
