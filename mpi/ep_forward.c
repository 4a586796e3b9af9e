/* ep_forward.c - the expert-parallel forward pass (see ep_forward.h). */
#define _GNU_SOURCE
#include "ep_forward.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "error.h"
#include "fsutil.h"
#include "plan.h"
#include "runtime.h"
#include "vmath.h"

struct mp_epf {
    const mp_weights *w;
    const mp_config *cfg;
    const mp_tokens *tok;
    mp_observer observe;
    void *observe_ctx;
    int rank, size, E, K, d, S;
    int seq0, nseq;
    int64_t T;       /* local tokens */
    int64_t win_seq; /* sequences per window of the MoE exchange (global), >= 1 */
    int64_t wmax;    /* the most local tokens of one window */
    float *h;        /* [T, d]: residual stream (spilled: a shared mapping of an unlinked file) */
    int spilled;     /* h is on a file, its pages given back after each window (mp_epf_create_spilled) */
    float *x, *y;    /* [wmax, d]: normed input of the block, block output (one window) */
    float *scr;      /* attention scratch */
    int balance;     /* routed experts to owners by their tokens (mp_epf_balance) */
    double t_exchange; /* seconds in dispatch and give_back (mp_epf_exchange_seconds) */
    struct moe_layer *lb[2]; /* the model's units, alt's: buffers kept from layer to layer */
};

/* what travels to a unit's owner with each routed token */
typedef struct {
    int64_t g;    /* global token index */
    int32_t unit; /* expert, or E for the shared expert */
    int32_t slot; /* sender's slot: local token * J + j */
    float w;      /* routing weight (shared: its gate) */
    int32_t pad;
} item;

/* an owned unit's rows waiting for a full chunk of its global token order (fewer than MP_CHUNK between
 * windows), with where each row's output goes */
typedef struct {
    int begun, n;
    float *x; /* [MP_CHUNK, d] */
    float w[MP_CHUNK];
    int64_t g[MP_CHUNK];
    int32_t src[MP_CHUNK], slot[MP_CHUNK];
} staged;

/* One MoE layer in windows: J = K (+ 1 with a shared expert) slots per token. The token's side keeps the
 * routing of every local token and, in a pool, the outputs that came back for tokens still waiting for
 * another slot's; the owner's side keeps each unit's staged rows and its expert weights. */
typedef struct moe_layer {
    int J, sh, dense;     /* dense: a non-MoE layer's MLP, unit MP_UNIT_DENSE (its statistics only) */
    const mp_weights *sw; /* whose units run */
    float *yout;          /* [T, d]: the block outputs, or NULL: added to the residual stream */
    const mp_layer_w *lw;
    const mp_unit_hooks *hk;
    int l;
    float *logits, *wt;            /* [wmax, E] (capacity lcap), [T, J] */
    int64_t lcap;
    int *idx;                      /* [T, J] */
    uint8_t *left;                 /* [T]: slots whose output has not come back */
    int64_t *row;                  /* [T, J]: pool row of a slot's output, -1 while it is away */
    float *pool;                   /* [pcap, d] */
    int64_t pcap, pfree_n, *pfree; /* free pool rows (a stack) */
    int64_t *scnt, *rcnt;          /* [size] each */
    item *smeta, *rmeta;
    float *sx, *rx; /* routed inputs, sent and received (one rank: neither, rows are read from xwin) */
    int64_t scap, rcap;
    const float *xwin; /* one rank: the window's normed inputs, its local token t0 first */
    int64_t t0;
    /* outputs of finished chunks, to their tokens' ranks */
    float *oy, *ory;                /* [ocap, d] in compute order; [ocap, d] packed by rank */
    int32_t *odst, *oslot, *ooslot; /* [ocap]; ooslot: slots packed by rank */
    int64_t on, ocap, *ocnt, *orcnt;
    int64_t orycap; /* of ory, ooslot */
    float *rety;    /* received outputs [retcap, d] */
    int32_t *retslot;
    int64_t retcap;
    staged *st; /* [nst = E + 1], only owned units used */
    int nst;
    int *owner; /* [E + 1]: the rank that runs each unit in this layer */
    float *wbuf, *ws; /* expert weights [3 f d], SwiGLU workspace [2 MP_CHUNK f] */
    int wunit;        /* the unit whose weights are in wbuf, -1 */
} moe_layer;

static void moe_layer_free(moe_layer *b)
{
    if (!b)
        return;
    free(b->logits), free(b->wt), free(b->idx), free(b->left), free(b->row), free(b->pool), free(b->pfree);
    free(b->scnt), free(b->smeta), free(b->rmeta), free(b->sx), free(b->rx);
    free(b->oy), free(b->ory), free(b->odst), free(b->oslot), free(b->ooslot), free(b->ocnt);
    free(b->rety), free(b->retslot);
    for (int u = 0; b->st && u < b->nst; u++)
        free(b->st[u].x);
    free(b->st), free(b->wbuf), free(b->ws), free(b->owner);
    free(b);
}

static int has_shared(const mp_config *c) { return c->n_shared > 0 && c->shared_ffn > 0; }

/* the intermediate size of unit u: a routed expert, the shared one (u = E) or a dense MLP */
static int unit_ffn(const mp_config *c, int u, int E)
{
    return u == MP_UNIT_DENSE ? c->dense_ffn : u == E ? c->shared_ffn : c->moe_ffn;
}

/* grow *p to hold n elements of `sz` bytes (capacity in *cap, in elements) */
static int grow(void **p, int64_t *cap, int64_t n, size_t sz)
{
    if (n <= *cap)
        return 0;
    int64_t c = *cap ? *cap : 64;
    while (c < n)
        c *= 2;
    void *q = realloc(*p, sz * (size_t)c);
    if (!q)
        return mp_errorf(MP_ENOMEM, "out of memory for %lld routed tokens", (long long)n);
    *p = q, *cap = c;
    return 0;
}

/* grow rows [*cap, d] of floats and their slots [*cap] to hold n (doubling, never shrinking: a realloc to
 * each window's exact count moved the buffers every window) */
static int grow_rows(float **y, int32_t **slot, int64_t *cap, int64_t n, int d)
{
    int64_t old = *cap;
    MP_CHECK(grow((void **)slot, cap, n, sizeof(int32_t)));
    float *q = *cap == old ? *y : realloc(*y, sizeof(float) * (size_t)(*cap * d));
    if (!q) {
        *cap = old;
        return mp_errorf(MP_ENOMEM, "out of memory for %lld expert outputs", (long long)n);
    }
    *y = q;
    return 0;
}

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
            return mp_errorf(MP_EFORMAT, "token id %d at [%lld, %lld] is outside the vocabulary [0, %d)", tok->ids[i],
                             (long long)(i / tok->seq_len), (long long)(i % tok->seq_len), c->vocab);
    return 0;
}

/* the local sequences [*a, *b) (relative to seq0) of window k */
static void window_seqs(const mp_epf *s, int64_t k, int64_t *a, int64_t *b)
{
    int64_t lo = k * s->win_seq, hi = lo + s->win_seq;
    lo = lo > s->seq0 ? lo : s->seq0, hi = hi < s->seq0 + s->nseq ? hi : s->seq0 + s->nseq;
    *a = lo - s->seq0, *b = hi > lo ? hi - s->seq0 : lo - s->seq0;
}

static int64_t n_windows(const mp_epf *s) { return (s->tok->n_seq + s->win_seq - 1) / s->win_seq; }

/* (re)size the window buffers for win_seq */
static int window_buffers(mp_epf *s)
{
    int64_t most = 0, a, b;
    for (int64_t k = 0; k < n_windows(s); k++) {
        window_seqs(s, k, &a, &b);
        most = b - a > most ? b - a : most;
    }
    s->wmax = most * s->S;
    free(s->x), free(s->y);
    size_t td = (size_t)((s->wmax > s->S ? s->wmax : s->S) * s->d + 1);
    s->x = malloc(sizeof(float) * td), s->y = malloc(sizeof(float) * td);
    return s->x && s->y ? 0 : mp_errorf(MP_ENOMEM, "out of memory for a window of %lld tokens", (long long)s->wmax);
}

static size_t hidden_bytes(const mp_epf *s) { return sizeof(float) * (size_t)(s->T * s->d + 1); }

/* h on a file in dir (fsutil.h: mp_map_scratch) */
static int spill_map(mp_epf *s, const char *dir)
{
    void *p;
    MP_CHECK(mp_map_scratch(dir, "the residual stream", hidden_bytes(s), &p));
    s->h = p, s->spilled = 1;
    return 0;
}

void mp_epf_hidden_done(void *ctx, const void *rows, size_t bytes)
{
    mp_epf *s = ctx;
    if (s->spilled)
        mp_pages_drop(rows, bytes);
}

/* every page of a spilled residual stream back to its file */
static void hidden_release(mp_epf *s)
{
    if (s->spilled)
        mp_pages_drop(s->h, hidden_bytes(s));
}

static int create(const mp_weights *w, const mp_tokens *tok, mp_observer observe, void *observe_ctx,
                  const char *spill_dir, mp_epf **out)
{
    const mp_config *cfg = w->cfg;
    *out = NULL;
    mp_epf *s = NULL;
    int rc = check_inputs(cfg, tok);
    if (rc == 0 && !(s = calloc(1, sizeof *s)))
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    if (s) {
        *s = (mp_epf){.w = w,
                      .cfg = cfg,
                      .tok = tok,
                      .observe = observe,
                      .observe_ctx = observe_ctx,
                      .rank = mp_mpi_rank(),
                      .size = mp_mpi_size(),
                      .E = cfg->n_experts,
                      .K = cfg->top_k,
                      .d = cfg->hidden,
                      .S = tok->seq_len};
        int64_t lo, hi;
        mp_seq_range(tok->n_seq, s->rank, s->size, &lo, &hi);
        s->seq0 = (int)lo, s->nseq = (int)(hi - lo), s->T = (int64_t)s->nseq * s->S;
        s->win_seq = tok->n_seq > 0 ? tok->n_seq : 1;
        if (spill_dir && s->T > 0)
            rc = spill_map(s, spill_dir);
        else
            s->h = malloc(hidden_bytes(s));
        s->scr = malloc(sizeof(float) * (size_t)(mp_attention_scratch(cfg, s->S) + (int64_t)s->S * s->d));
        if (rc == 0 && (!s->h || !s->scr))
            rc = mp_errorf(MP_ENOMEM, "out of memory for %lld tokens of hidden states", (long long)s->T);
        if (rc == 0)
            rc = window_buffers(s);
        for (int q = 0; q < s->nseq && rc == 0; q++) { /* sequence by sequence: a spilled stream stays out */
            float *hq = s->h + (int64_t)q * s->S * s->d;
            rc = w->embed(w->ctx, tok->ids + (int64_t)(s->seq0 + q) * s->S, s->S, hq);
            mp_epf_hidden_done(s, hq, sizeof(float) * (size_t)s->S * (size_t)s->d);
        }
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

int mp_epf_create(const mp_weights *w, const mp_tokens *tok, mp_observer observe, void *observe_ctx, mp_epf **out)
{
    return create(w, tok, observe, observe_ctx, NULL, out);
}

int mp_epf_create_spilled(const mp_weights *w, const mp_tokens *tok, mp_observer observe, void *observe_ctx,
                          const char *dir, mp_epf **out)
{
    return create(w, tok, observe, observe_ctx, dir, out);
}

int mp_epf_balance(mp_epf *s, int on)
{
    if (on && s->w->unit)
        return mp_errorf(MP_EINTERNAL, "balanced owners need weights that every rank can serve");
    s->balance = on;
    return 0;
}

double mp_epf_exchange_seconds(const mp_epf *s) { return s->t_exchange; }

int mp_epf_set_window(mp_epf *s, int64_t tokens)
{
    int64_t q = tokens > 0 ? tokens / s->S : s->tok->n_seq;
    s->win_seq = q < 1 ? 1 : q;
    return mp_mpi_agree(window_buffers(s));
}

float *mp_epf_hidden(mp_epf *s, int *seq0, int *nseq)
{
    *seq0 = s->seq0, *nseq = s->nseq;
    return s->h;
}

/* after the last layer: the layers' buffers go, and with them what the heap kept of the layers (Grams,
 * statistics images), before the output head's vocabulary-sized weights and logits */
static void release_layers(mp_epf *s)
{
    moe_layer_free(s->lb[0]), moe_layer_free(s->lb[1]);
    s->lb[0] = s->lb[1] = NULL;
    mp_heap_release();
}

void mp_epf_free(mp_epf *s)
{
    if (!s)
        return;
    if (s->spilled)
        munmap(s->h, hidden_bytes(s));
    else
        free(s->h);
    free(s->x), free(s->y), free(s->scr);
    moe_layer_free(s->lb[0]), moe_layer_free(s->lb[1]);
    free(s);
}

/* Alltoallv with 64-bit element counts checked against INT_MAX; one rank: a copy. Collective. */
static int exchange(const void *sbuf, const int64_t *scnt, void *rbuf, const int64_t *rcnt, int size, MPI_Datatype type,
                    int per)
{
    if (size == 1) {
        int tsz = 0;
        MPI_Type_size(type, &tsz);
        if (scnt[0] && sbuf != rbuf)
            memcpy(rbuf, sbuf, (size_t)tsz * (size_t)(scnt[0] * per));
        return 0;
    }
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

/* ---- the token's side ------------------------------------------------------------------------------ */

/* Local: router logits, top-k units and weights of the window's local tokens [t0, t0 + n) (x: their
 * normed inputs), the shared expert in slot K. */
static void route(const mp_epf *s, moe_layer *b, const float *x, int64_t t0, int64_t n)
{
    const mp_config *cfg = s->cfg;
    const mp_layer_w *lw = b->lw;
    int E = s->E, K = s->K, d = s->d, J = b->J;
    if (b->dense) { /* every token to the dense MLP's owner, weight 1 */
        for (int64_t t = t0; t < t0 + n; t++)
            b->idx[t] = MP_UNIT_DENSE, b->wt[t] = 1.0f, b->left[t] = 1, b->row[t] = -1;
        return;
    }
    _Static_assert(MP_FORWARD_MAX_TOPK < 64, "ik/wk hold the top-k experts (mp_forward_supported bounds k)");
    int ik[64];
    float wk[64];
    for (int64_t i = 0; i < n; i++) {
        const float *xt = x + i * d;
        int64_t t = t0 + i;
        mp_route(cfg, lw, xt, 1, b->logits + i * E, ik, wk);
        for (int k = 0; k < K; k++)
            b->idx[t * J + k] = ik[k], b->wt[t * J + k] = wk[k];
        if (b->sh) {
            float g = 1.0f;
            if (lw->sh_gate_w) {
                float z = 0;
                for (int j = 0; j < d; j++)
                    z += xt[j] * lw->sh_gate_w[j];
                g = 1.0f / (1.0f + expf(-z));
            }
            b->idx[t * J + K] = E, b->wt[t * J + K] = g;
        }
        b->left[t] = (uint8_t)J;
        for (int j = 0; j < J; j++)
            b->row[t * J + j] = -1;
    }
}

static int unit_owner(const mp_epf *s, const moe_layer *b, int u)
{
    return u == MP_UNIT_DENSE ? mp_unit_owner(b->l, u, s->E, s->size) : b->owner[u];
}

/* Collective, after the first window's routing (rc: the local status so far): the layer's units to ranks
 * by their tokens in that window, summed over the ranks: the unit with the most tokens first, to the rank
 * with the fewest so far (ties: the lower unit, the lower rank), so that no rank waits on another's
 * experts at the exchange. Every rank computes the same table. Results do not change: a unit's chunks
 * follow the global token order on whichever rank runs it. */
static int balance_owners(const mp_epf *s, moe_layer *b, int64_t t0, int64_t n, int rc)
{
    int E = s->E, size = s->size, J = b->J, nu = E + b->sh;
    int64_t *cnt = calloc(2 * ((size_t)E + 1) + (size_t)size, sizeof(int64_t));
    int *ord = malloc(sizeof(int) * ((size_t)E + 1));
    if (rc == 0 && (!cnt || !ord))
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    rc = mp_mpi_agree(rc);
    if (rc < 0) {
        free(cnt), free(ord);
        return rc;
    }
    int64_t *all = cnt + E + 1, *load = all + E + 1;
    for (int64_t t = t0; t < t0 + n; t++)
        for (int j = 0; j < J; j++)
            cnt[b->idx[t * J + j]]++;
    rc = MPI_Allreduce(cnt, all, E + 1, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD) == MPI_SUCCESS
             ? 0
             : mp_errorf(MP_EMPI, "MPI_Allreduce of the experts' token counts failed");
    for (int u = 0; u < nu && rc == 0; u++) { /* insertion sort: most tokens first, then the lower unit */
        int k = u;
        for (; k > 0 && all[ord[k - 1]] < all[u]; k--)
            ord[k] = ord[k - 1];
        ord[k] = u;
    }
    for (int i = 0; i < nu && rc == 0; i++) {
        int r = 0;
        for (int q = 1; q < size; q++)
            r = load[q] < load[r] ? q : r;
        b->owner[ord[i]] = r, load[r] += all[ord[i]];
    }
    free(cnt), free(ord);
    return rc;
}

/* Collective: the window's (token, unit) pairs to the units' owners; receivers get metadata and inputs in
 * rmeta/rx (one rank: the send buffers themselves). rc: the local status so far. */
static int dispatch(const mp_epf *s, moe_layer *b, const float *x, int64_t t0, int64_t n, int64_t *nrecv, int rc)
{
    int d = s->d, J = b->J, size = s->size;
    int64_t nsend = n * J;
    memset(b->scnt, 0, sizeof(int64_t) * (size_t)size * 2);
    int64_t *pos = NULL, old = b->scap;
    if (rc == 0)
        rc = grow((void **)&b->smeta, &b->scap, nsend + 1, sizeof(item));
    if (rc == 0 && b->scap != old && size > 1) { /* sx has the capacity of smeta */
        float *q = realloc(b->sx, sizeof(float) * (size_t)(b->scap * d));
        if (q)
            b->sx = q;
        else
            rc = mp_errorf(MP_ENOMEM, "out of memory packing %lld tokens", (long long)nsend);
    }
    if (rc == 0 && !(pos = calloc((size_t)size + 1, sizeof(int64_t))))
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    if (rc == 0) {
        for (int64_t t = t0; t < t0 + n; t++)
            for (int j = 0; j < J; j++)
                b->scnt[unit_owner(s, b, b->idx[t * J + j])]++;
        for (int r = 1; r <= size; r++)
            pos[r] = pos[r - 1] + b->scnt[r - 1];
        int64_t g0 = (int64_t)s->seq0 * s->S;
        for (int64_t t = t0; t < t0 + n; t++)
            for (int j = 0; j < J; j++) {
                int u = b->idx[t * J + j];
                int64_t p = pos[unit_owner(s, b, u)]++;
                b->smeta[p] = (item){g0 + t, u, (int32_t)(t * J + j), b->wt[t * J + j], 0};
                if (size > 1) /* one rank: the owner gathers each unit's rows straight from x */
                    memcpy(b->sx + p * d, x + (t - t0) * d, sizeof(float) * (size_t)d);
            }
    }
    free(pos);
    MP_CHECK(mp_mpi_agree(rc)); /* every rank reaches the exchanges; a local failure is agreed on first */
    if (size == 1) {
        b->rcnt[0] = b->scnt[0], *nrecv = b->scnt[0], b->xwin = x, b->t0 = t0;
        return 0;
    }
    MP_MPI(MPI_Alltoall(b->scnt, 1, MPI_INT64_T, b->rcnt, 1, MPI_INT64_T, MPI_COMM_WORLD));
    *nrecv = 0;
    for (int r = 0; r < size; r++)
        *nrecv += b->rcnt[r];
    int64_t cap = b->rcap;
    rc = grow((void **)&b->rmeta, &b->rcap, *nrecv + 1, sizeof(item));
    if (rc == 0 && b->rcap != cap) {
        float *q = realloc(b->rx, sizeof(float) * (size_t)(b->rcap * d));
        if (q)
            b->rx = q;
        else
            rc = mp_errorf(MP_ENOMEM, "out of memory receiving %lld tokens", (long long)*nrecv);
    }
    MP_CHECK(mp_mpi_agree(rc));
    MP_CHECK(exchange(b->smeta, b->scnt, b->rmeta, b->rcnt, size, MPI_BYTE, (int)sizeof(item)));
    MP_CHECK(exchange(b->sx, b->scnt, b->rx, b->rcnt, size, MPI_FLOAT, d));
    return 0;
}

/* Local: an output came back for slot `slot` of local token t; when it was the token's last, the block
 * output is summed over its slots in order and added to the residual stream. */
static int take_output(mp_epf *s, moe_layer *b, int32_t slot, const float *y)
{
    int d = s->d, J = b->J;
    int64_t t = slot / J;
    if (b->pfree_n == 0) { /* the pool grows by half */
        int64_t old = b->pcap, cap = old ? old + old / 2 : 256;
        float *q = realloc(b->pool, sizeof(float) * (size_t)(cap * d));
        int64_t *f = q ? realloc(b->pfree, sizeof(int64_t) * (size_t)cap) : NULL;
        if (q)
            b->pool = q;
        if (!f)
            return mp_errorf(MP_ENOMEM, "out of memory for expert outputs");
        b->pfree = f, b->pcap = cap;
        for (int64_t r = cap - 1; r >= old; r--)
            b->pfree[b->pfree_n++] = r;
    }
    int64_t r = b->pfree[--b->pfree_n];
    memcpy(b->pool + r * d, y, sizeof(float) * (size_t)d);
    b->row[slot] = r;
    if (--b->left[t] > 0)
        return 0;
    float *o = s->y; /* one row of scratch */
    memset(o, 0, sizeof(float) * (size_t)d);
    for (int j = 0; j < J; j++) {
        const float *yi = b->pool + b->row[t * J + j] * d, wj = b->wt[t * J + j];
        for (int k = 0; k < d; k++)
            o[k] += wj * yi[k];
        b->pfree[b->pfree_n++] = b->row[t * J + j];
    }
    if (b->yout)
        memcpy(b->yout + t * d, o, sizeof(float) * (size_t)d);
    else {
        float *h = s->h + t * d;
        for (int k = 0; k < d; k++)
            h[k] += o[k];
    }
    return 0;
}

/* ---- the owner's side ------------------------------------------------------------------------------ */

/* Local: the staged rows of unit u (one chunk of its global token order) through the expert; the hooks see
 * them; the outputs join the list going back to their tokens' ranks. */
static int run_chunk(const mp_epf *s, moe_layer *b, int u)
{
    const mp_config *cfg = s->cfg;
    const mp_layer_w *lw = b->lw;
    const mp_weights *sw = b->sw;
    staged *q = &b->st[b->dense ? 0 : u];
    int d = s->d, shared = u == s->E, f = unit_ffn(cfg, u, s->E), nb = q->n, l = b->l;
    if (nb == 0)
        return 0;
    int64_t old = b->ocap; /* the outputs go straight into the list going back */
    MP_CHECK(grow((void **)&b->odst, &b->ocap, b->on + nb, sizeof(int32_t)));
    if (b->ocap != old) {
        float *oy = realloc(b->oy, sizeof(float) * (size_t)(b->ocap * d));
        int32_t *os = oy ? realloc(b->oslot, sizeof(int32_t) * (size_t)b->ocap) : NULL;
        if (oy)
            b->oy = oy;
        if (!os)
            return mp_errorf(MP_ENOMEM, "out of memory for the outputs of expert %d of layer %d", u, l);
        b->oslot = os;
    }
    float *y = b->oy + b->on * d;
    if (sw->unit) /* served by the weights' provider (a compressed model); no intermediate activations */
        MP_CHECK(sw->unit(sw->ctx, l, u, q->x, nb, y));
    else {
        const float *wg = b->dense ? lw->mlp_gate : lw->sh_gate, *wu = b->dense ? lw->mlp_up : lw->sh_up,
                    *wd = b->dense ? lw->mlp_down : lw->sh_down;
        if (!shared && !b->dense) {
            size_t fd = (size_t)f * (size_t)d;
            if (b->wunit != u) {
                b->wunit = -1;
                for (int p = 0; p < 3; p++)
                    MP_CHECK(sw->expert(sw->ctx, l, u, (mp_proj)p, b->wbuf + (size_t)p * fd));
                b->wunit = u;
            }
            wg = b->wbuf, wu = b->wbuf + fd, wd = b->wbuf + 2 * fd;
        }
        mp_swiglu_ws(wg, wu, wd, q->x, nb, d, f, y, b->ws);
        if (b->hk)
            MP_CHECK(b->hk->chunk(b->hk->ctx, l, u, q->x, b->ws, q->w, q->g, nb));
    }
    for (int i = 0; i < nb; i++)
        b->odst[b->on + i] = q->src[i], b->oslot[b->on + i] = q->slot[i];
    b->on += nb;
    q->n = 0;
    return 0;
}

/* Local: the received rows of the window into their units' chunks, in unit order; full chunks run; in the
 * last window the units finish (their remaining rows run, the hooks' end). Each unit's rows arrive in
 * global token order: senders hold contiguous sequence ranges in rank order and send in token order. */
static int owner_window(const mp_epf *s, moe_layer *b, int64_t nrecv, int last)
{
    int E = s->E, d = s->d, size = s->size, l = b->l;
    const item *rm = size == 1 ? b->smeta : b->rmeta;
    const float *rx = b->rx; /* one rank: unused (xwin) */
    b->on = 0;
    for (int v = 0; v <= (b->dense ? 0 : E); v++) {
        int u = b->dense ? MP_UNIT_DENSE : v; /* a dense layer's only unit */
        if (unit_owner(s, b, u) != s->rank || (u == E && !b->sh))
            continue;
        staged *q = &b->st[v];
        if (!q->begun) {
            if (!q->x && !(q->x = malloc(sizeof(float) * MP_CHUNK * (size_t)d)))
                return mp_errorf(MP_ENOMEM, "out of memory for expert %d of layer %d", u, l);
            if (b->hk && !b->sw->unit)
                MP_CHECK(b->hk->begin(b->hk->ctx, l, u, d, unit_ffn(s->cfg, u, s->E)));
            else if (b->hk)
                return mp_errorf(MP_EINTERNAL, "statistics hooks need dense experts");
            q->begun = 1;
        }
        int64_t src = 0, seg_end = b->rcnt[0];
        int64_t lastg = q->n ? q->g[q->n - 1] : -1;
        for (int64_t i = 0; i < nrecv; i++) {
            while (i >= seg_end)
                seg_end += b->rcnt[++src];
            if (rm[i].unit != u)
                continue;
            if (rm[i].g <= lastg)
                return mp_errorf(MP_EINTERNAL, "layer %d unit %d: tokens out of global order", l, u);
            lastg = rm[i].g;
            const float *xi = size == 1 ? b->xwin + (rm[i].slot / b->J - b->t0) * d : rx + i * d;
            memcpy(q->x + (size_t)q->n * d, xi, sizeof(float) * (size_t)d);
            q->w[q->n] = rm[i].w, q->g[q->n] = rm[i].g, q->src[q->n] = (int32_t)src, q->slot[q->n] = rm[i].slot;
            if (++q->n == MP_CHUNK)
                MP_CHECK(run_chunk(s, b, u));
        }
        if (last) {
            MP_CHECK(run_chunk(s, b, u));
            if (b->hk)
                MP_CHECK(b->hk->end(b->hk->ctx, l, u));
            q->begun = 0;
        }
    }
    return 0;
}

/* Collective: the window's finished outputs back to their tokens' ranks, taken in (slot) order there. */
static int give_back(mp_epf *s, moe_layer *b, int rc)
{
    int d = s->d, size = s->size;
    int64_t *pos = NULL, nr = 0;
    if (rc == 0) {
        memset(b->ocnt, 0, sizeof(int64_t) * (size_t)size * 2);
        for (int64_t i = 0; i < b->on; i++)
            b->ocnt[b->odst[i]]++;
    }
    if (rc == 0 && size > 1) { /* packed by destination rank, in compute order within each */
        rc = grow_rows(&b->ory, &b->ooslot, &b->orycap, b->on + 1, d);
        if (rc == 0 && !(pos = calloc((size_t)size + 1, sizeof(int64_t))))
            rc = mp_errorf(MP_ENOMEM, "out of memory returning %lld expert outputs", (long long)b->on);
        for (int r = 1; rc == 0 && r <= size; r++)
            pos[r] = pos[r - 1] + b->ocnt[r - 1];
        for (int64_t i = 0; rc == 0 && i < b->on; i++) {
            int64_t p = pos[b->odst[i]]++;
            memcpy(b->ory + p * d, b->oy + i * d, sizeof(float) * (size_t)d);
            b->ooslot[p] = b->oslot[i];
        }
    }
    free(pos);
    MP_CHECK(mp_mpi_agree(rc));
    const float *y = b->oy;
    const int32_t *sl = b->oslot;
    if (size > 1) {
        MP_MPI(MPI_Alltoall(b->ocnt, 1, MPI_INT64_T, b->orcnt, 1, MPI_INT64_T, MPI_COMM_WORLD));
        for (int r = 0; r < size; r++)
            nr += b->orcnt[r];
        MP_CHECK(mp_mpi_agree(grow_rows(&b->rety, &b->retslot, &b->retcap, nr + 1, d)));
        MP_CHECK(exchange(b->ooslot, b->ocnt, b->retslot, b->orcnt, size, MPI_INT32_T, 1));
        MP_CHECK(exchange(b->ory, b->ocnt, b->rety, b->orcnt, size, MPI_FLOAT, d));
        y = b->rety, sl = b->retslot;
    } else
        nr = b->on;
    for (int64_t i = 0; i < nr && rc == 0; i++)
        rc = take_output(s, b, sl[i], y + i * d);
    return mp_mpi_agree(rc);
}

/* the buffers of one MoE (or dense) layer: s->lb[which], allocated at the first layer and kept (buffers of
 * a window's routed rows, hundreds of MB, faulted in afresh every layer otherwise), this layer's state reset */
static int moe_layer_init(mp_epf *s, int which, const mp_weights *sw, const mp_layer_w *lw, int l,
                          const mp_unit_hooks *hk, float *yout, moe_layer **out)
{
    const mp_config *cfg = s->cfg;
    int E = s->E, d = s->d, size = s->size;
    if (!s->lb[which] && !(s->lb[which] = calloc(1, sizeof(moe_layer))))
        return mp_errorf(MP_ENOMEM, "out of memory");
    moe_layer *b = *out = s->lb[which];
    b->dense = !lw->moe;
    b->sh = !b->dense && has_shared(cfg), b->J = b->dense ? 1 : s->K + b->sh, b->sw = sw, b->yout = yout, b->lw = lw;
    b->hk = hk, b->l = l;
    b->wunit = -1, b->on = 0;
    int64_t T = s->T, J = s->K + has_shared(cfg), fm = cfg->moe_ffn > cfg->shared_ffn ? cfg->moe_ffn : cfg->shared_ffn;
    fm = fm > cfg->dense_ffn ? fm : cfg->dense_ffn;
    if (!b->wt) { /* sized for the most slots per token (a dense layer's one included) */
        b->wt = malloc(sizeof(float) * (size_t)(T * J + 1));
        b->idx = malloc(sizeof(int) * (size_t)(T * J + 1));
        b->left = malloc((size_t)T + 1);
        b->row = malloc(sizeof(int64_t) * (size_t)(T * J + 1));
        b->scnt = calloc((size_t)size * 2, sizeof(int64_t));
        b->ocnt = calloc((size_t)size * 2, sizeof(int64_t));
        b->st = calloc((size_t)E + 1, sizeof(staged));
        b->nst = E + 1;
        b->ws = malloc(sizeof(float) * 2 * MP_CHUNK * (size_t)fm);
        b->owner = malloc(sizeof(int) * ((size_t)E + 1));
    }
    if (b->lcap < s->wmax * E + 1) { /* the window may have changed (mp_epf_set_window) */
        free(b->logits);
        b->lcap = (b->logits = malloc(sizeof(float) * (size_t)(s->wmax * E + 1))) ? s->wmax * E + 1 : 0;
    }
    if (!sw->unit && !b->dense && !b->wbuf)
        b->wbuf = malloc(sizeof(float) * 3 * (size_t)cfg->moe_ffn * (size_t)d);
    if (!b->logits || !b->wt || !b->idx || !b->left || !b->row || !b->scnt || !b->ocnt || !b->st || !b->ws ||
        !b->owner || (!sw->unit && !b->dense && !b->wbuf))
        return mp_errorf(MP_ENOMEM, "out of memory routing %lld tokens", (long long)T);
    for (int u = 0; u < b->nst; u++)
        b->st[u].begun = 0, b->st[u].n = 0;
    b->pfree_n = 0; /* every pool row free */
    for (int64_t r = b->pcap - 1; r >= 0; r--)
        b->pfree[b->pfree_n++] = r;
    for (int u = 0; u <= E; u++) /* plan.h's owners until balance_owners */
        b->owner[u] = mp_unit_owner(l, u, E, size);
    b->rcnt = b->scnt + size, b->orcnt = b->ocnt + size;
    return 0;
}
/* Local: norms and attention of local sequences [a, e) (relative to seq0); x [(e - a) S, d] gets the
 * normed input of the block; a dense layer's MLP is added to the residual stream too. */
static int attention_part(mp_epf *s, const mp_layer_w *lw, int l, int64_t a, int64_t e, const mp_weights *alt,
                          float *y2, double *seq)
{
    const mp_config *cfg = s->cfg;
    int d = s->d, S = s->S, rc = 0;
    for (int64_t q = a; q < e && rc == 0; q++) {
        float *hs = s->h + q * S * d, *xs = s->x + (q - a) * S * d, *ys = s->y;
        mp_norm(cfg, hs, S, d, lw->in_norm, lw->in_norm_b, xs);
        rc = mp_attention(cfg, lw, xs, S, ys, s->scr);
        for (int64_t i = 0; i < (int64_t)S * d; i++)
            hs[i] += ys[i];
        mp_norm(cfg, hs, S, d, lw->post_norm, lw->post_norm_b, xs);
        if (lw->moe || rc < 0)
            continue;
        if (s->w->unit && cfg->dense_ffn > 0) /* a compressed dense MLP, as stored */
            rc = s->w->unit(s->w->ctx, l, MP_UNIT_DENSE, xs, S, ys);
        else
            rc = mp_swiglu(lw->mlp_gate, lw->mlp_up, lw->mlp_down, xs, S, d, cfg->dense_ffn, ys, NULL);
        if (rc == 0 && alt) { /* alt's dense MLP on the same inputs: the sums of compare_outputs */
            rc = alt->unit(alt->ctx, l, MP_UNIT_DENSE, xs, S, y2);
            double *acc = seq + 2 * (size_t)(s->seq0 + q);
            for (int64_t i = 0; rc == 0 && i < (int64_t)S * d; i++) {
                double err = (double)ys[i] - y2[i];
                acc[0] += err * err, acc[1] += (double)ys[i] * ys[i];
            }
        }
        for (int64_t i = 0; i < (int64_t)S * d; i++)
            hs[i] += ys[i];
    }
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
    int rc =
        MPI_Gatherv(seq + (size_t)w * s->seq0, w * s->nseq, MPI_DOUBLE, all, cnt, dsp, MPI_DOUBLE, 0, MPI_COMM_WORLD);
    free(cnt);
    MP_MPI(rc);
    return 0;
}

/* Collective: root's sq[0..1] = the sums over the sequences of seq [n_seq, 2], in sequence order. */
static int sum_sequences(mp_epf *s, const double *seq, double sq[2])
{
    double *all = calloc(2 * ((size_t)s->tok->n_seq + 1), sizeof(double));
    int rc = mp_mpi_agree(all ? 0 : mp_errorf(MP_ENOMEM, "out of memory comparing a layer"));
    if (rc == 0)
        rc = gather_seq(s, seq, 2, all);
    for (int q = 0; rc == 0 && s->rank == 0 && q < s->tok->n_seq; q++)
        sq[0] += all[2 * q], sq[1] += all[2 * q + 1];
    free(all);
    return rc;
}

/* Local, with alt on a MoE layer: per sequence the sums of ||y - y_alt||^2 and ||y||^2 into seq; then the
 * residual stream gets y. */
static void compare_outputs(mp_epf *s, const float *y, const float *y2, double *seq)
{
    int d = s->d, S = s->S;
    for (int q = 0; q < s->nseq; q++) {
        double *acc = seq + 2 * (size_t)(s->seq0 + q);
        for (int64_t i = (int64_t)q * S * d; i < (int64_t)(q + 1) * S * d; i++) {
            double e = (double)y[i] - y2[i];
            acc[0] += e * e, acc[1] += (double)y[i] * y[i];
        }
    }
    for (int64_t i = 0; i < s->T * d; i++)
        s->h[i] += y[i];
}

/* Collective: layer l; with alt, a MoE layer's block once more from alt's units on the same inputs and
 * routing (a second exchange of the same rows, its own chunks), a dense MLP once more from alt's
 * MP_UNIT_DENSE where the tokens are, and root's sq = the sums over tokens of ||y - y_alt||^2, ||y||^2.
 * With hooks, a dense MLP's inputs also travel to its owner for the statistics (outputs unused). */
static int layer_run(mp_epf *s, int l, const mp_unit_hooks *hooks, const mp_weights *alt, double sq[2])
{
    const mp_config *cfg = s->cfg;
    int d = s->d, S = s->S;
    mp_layer_w lw = {0};
    moe_layer *b = NULL, *b2 = NULL;
    float *y = NULL, *y2 = NULL;
    double *seq = NULL;
    if (alt)
        sq[0] = sq[1] = 0;
    int rc = s->w->layer(s->w->ctx, l, &lw), dense = rc == 0 && !lw.moe && cfg->dense_ffn > 0;
    int units = rc == 0 && (lw.moe || (dense && hooks)); /* tokens travel to unit owners */
    if (rc == 0 && alt && (lw.moe || dense)) {
        size_t n = lw.moe ? (size_t)(s->T * d + 1) : (size_t)S * (size_t)d;
        y = lw.moe ? malloc(sizeof(float) * n) : NULL, y2 = malloc(sizeof(float) * n);
        seq = calloc(2 * ((size_t)s->tok->n_seq + 1), sizeof(double));
        rc = (y || !lw.moe) && y2 && seq ? 0 : mp_errorf(MP_ENOMEM, "out of memory comparing layer %d", l);
    }
    if (rc == 0 && units)
        rc = moe_layer_init(s, 0, s->w, &lw, l, hooks, y, &b);
    if (rc == 0 && units && alt && lw.moe)
        rc = moe_layer_init(s, 1, alt, &lw, l, NULL, y2, &b2);
    rc = mp_mpi_agree(rc);
    int64_t nw = n_windows(s);
    for (int64_t k = 0; k < nw && rc == 0; k++) {
        int64_t a, e, nrecv = 0;
        window_seqs(s, k, &a, &e);
        int64_t t0 = a * S, n = (e - a) * S;
        rc = attention_part(s, &lw, l, a, e, dense ? alt : NULL, y2, seq);
        for (int pass = 0; units && pass < (alt && lw.moe ? 2 : 1); pass++) { /* the model's units, then alt's */
            moe_layer *bp = pass ? b2 : b;
            if (rc == 0 && n > 0) {
                route(s, bp, s->x, t0, n);
                if (s->observe && !pass && lw.moe)
                    s->observe(s->observe_ctx, "router", l, s->seq0 + (int)a, (int)(e - a), s->E, bp->logits);
            }
            if (k == 0 && !pass && lw.moe && s->balance && s->size > 1)
                rc = balance_owners(s, bp, t0, n, rc);
            double t = MPI_Wtime();
            rc = dispatch(s, bp, s->x, t0, n, &nrecv, rc);
            s->t_exchange += MPI_Wtime() - t;
            if (rc == 0)
                rc = owner_window(s, bp, nrecv, k == nw - 1);
            t = MPI_Wtime();
            if (lw.moe)
                rc = give_back(s, bp, rc);
            else /* a dense MLP's statistics: its outputs are computed where the tokens are */
                bp->on = 0, rc = mp_mpi_agree(rc);
            s->t_exchange += MPI_Wtime() - t;
        }
        if (!units)
            rc = mp_mpi_agree(rc);
        hidden_release(s); /* the window's rows, and the earlier tokens its outputs completed */
    }
    for (int64_t t = 0; lw.moe && t < s->T && rc == 0; t++)
        if (b->left[t] || (alt && b2->left[t]))
            rc = mp_errorf(MP_EINTERNAL, "layer %d: token %lld is missing an expert output", l,
                           (long long)(s->seq0 * (int64_t)S + t));
    rc = mp_mpi_agree(rc);
    if (rc == 0 && alt && lw.moe)
        compare_outputs(s, y, y2, seq);
    if (rc == 0 && alt && (lw.moe || dense))
        rc = sum_sequences(s, seq, sq);
    if (rc == 0 && s->observe && s->T) {
        s->observe(s->observe_ctx, "hidden", l + 1, s->seq0, s->nseq, d, s->h);
        hidden_release(s);
    }
    free(y), free(y2), free(seq);
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

/* The output head in groups of G = max(1, MP_HEAD_ROWS / S) sequences (G S rows per GEMM, a rank's last group
 * padded with zero rows) and vocabulary blocks of MP_LSE_BLOCK. OpenBLAS packs the head's weights at every
 * call: one call per sequence packed the whole head for 256 rows (14 % of an eval's samples); a block's
 * logits stay in the cache for the log-sum-exp; and every sequence meets the same calls whatever the rank
 * count, so the same bits. With an observer the logits of a whole group are kept (ld = V) for it. */
#define MP_HEAD_ROWS 1024
typedef struct {
    mp_epf *s;
    float *nw, *nb, *hw, *hb;
    int G, rows, ld;
    float *x, *lg; /* [rows, d] normed hidden states, [rows, ld] logits of one block (all, ld = V) */
} head_grp;

static void head_grp_free(head_grp *g) { free(g->nw), free(g->nb), free(g->hw), free(g->hb), free(g->x), free(g->lg); }

static int head_grp_init(mp_epf *s, head_grp *g)
{
    memset(g, 0, sizeof *g);
    g->s = s;
    g->G = s->S >= MP_HEAD_ROWS ? 1 : MP_HEAD_ROWS / s->S;
    g->rows = g->G * s->S;
    g->ld = s->observe || s->cfg->vocab < MP_LSE_BLOCK ? s->cfg->vocab : MP_LSE_BLOCK;
    release_layers(s);
    MP_CHECK(s->w->head(s->w->ctx, &g->nw, &g->nb, &g->hw, &g->hb));
    g->x = calloc((size_t)g->rows * (size_t)s->d, sizeof(float));
    g->lg = malloc(sizeof(float) * (size_t)g->rows * (size_t)g->ld);
    if (!g->x || !g->lg)
        return mp_errorf(MP_ENOMEM, "out of memory for the output head's %d x %d logits", g->rows, g->ld);
    return 0;
}

/* the final norm of the rank's sequences q0 .. q0 + ng - 1 (ng <= G) into g->x, the rest zero */
static void head_grp_norm(head_grp *g, int q0, int ng)
{
    mp_epf *s = g->s;
    int64_t sd = (int64_t)s->S * s->d;
    for (int q = 0; q < ng; q++) {
        mp_norm(s->cfg, s->h + (q0 + q) * sd, s->S, s->d, g->nw, g->nb, g->x + q * sd);
        mp_epf_hidden_done(s, s->h + (q0 + q) * sd, sizeof(float) * (size_t)sd);
    }
    memset(g->x + ng * sd, 0, sizeof(float) * (size_t)((g->G - ng) * sd));
    if (s->observe)
        s->observe(s->observe_ctx, "hidden", s->cfg->n_layers + 1, s->seq0 + q0, ng, s->d, g->x);
}

/* the logits of vocabulary block v0 (its width into *nv) for every row of the group */
static float *head_grp_block(head_grp *g, int v0, int *nv)
{
    int V = g->s->cfg->vocab;
    *nv = V - v0 < MP_LSE_BLOCK ? V - v0 : MP_LSE_BLOCK;
    float *o = g->ld == V ? g->lg + v0 : g->lg;
    mp_lm_head(g->s->cfg, g->hw, g->hb, g->x, g->rows, v0, *nv, o, g->ld);
    return o;
}

/* one block [v0, v0 + nv) of a row's logits into its running log-sum-exp l (with b, the other model's row:
 * the KL terms against it, vmath.h), the next token y's logit into *tgt when it lies in the block; returns
 * the block's max */
static float row_block(const float *row, const float *b, int v0, int nv, int y, mp_lse *l, float *tgt)
{
    float mx;
    double z = mp_lse_block(row, nv, &mx);
    mp_lse_add(l, mx, z, b ? mp_kl_block(row, b, nv, mx) : 0);
    if (y >= v0 && y < v0 + nv)
        *tgt = row[y - v0];
    return mx;
}

/* the next token's id after row r of group q0, -1 for a sequence's last token */
static int next_id(const mp_epf *s, int q0, int r)
{
    int q = r / s->S, t = r % s->S;
    return t + 1 < s->S ? s->tok->ids[(int64_t)(s->seq0 + q0 + q) * s->S + t + 1] : -1;
}

int mp_epf_head(mp_epf *s, double *nll_sum, int64_t *n_pred)
{
    int S = s->S, V = s->cfg->vocab;
    head_grp g;
    double *nll = calloc((size_t)s->tok->n_seq + 1, sizeof(double)), *all = NULL;
    int rc = head_grp_init(s, &g);
    mp_lse *l = rc == 0 ? malloc(sizeof(mp_lse) * (size_t)g.rows) : NULL;
    float *tgt = rc == 0 ? malloc(sizeof(float) * (size_t)g.rows) : NULL;
    if (rc == 0 && (!nll || !l || !tgt))
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    for (int q0 = 0; q0 < s->nseq && rc == 0; q0 += g.G) {
        int ng = s->nseq - q0 < g.G ? s->nseq - q0 : g.G, nv;
        head_grp_norm(&g, q0, ng);
        for (int r = 0; r < ng * S; r++)
            l[r] = mp_lse_empty();
        for (int v0 = 0; v0 < V; v0 += MP_LSE_BLOCK) {
            const float *o = head_grp_block(&g, v0, &nv);
            for (int r = 0; r < ng * S; r++) {
                int y = next_id(s, q0, r);
                if (y >= 0)
                    row_block(o + (int64_t)r * g.ld, NULL, v0, nv, y, &l[r], &tgt[r]);
            }
        }
        if (s->observe)
            s->observe(s->observe_ctx, "logits", 0, s->seq0 + q0, ng, V, g.lg);
        for (int q = 0; q < ng && rc == 0; q++) {
            double acc = 0;
            for (int r = q * S; r < (q + 1) * S - 1; r++)
                acc += mp_lse_value(&l[r]) - (double)tgt[r]; /* mp_row_nll's bits */
            if (!isfinite(acc))
                rc = mp_errorf(MP_ENUMERIC, "the negative log-likelihood of sequence %d is not finite",
                               s->seq0 + q0 + q);
            nll[s->seq0 + q0 + q] = acc;
        }
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
    head_grp_free(&g);
    free(l), free(tgt), free(nll), free(all);
    return rc;
}

int mp_epf_head_compare(mp_epf *a, mp_epf *b, mp_head_cmp *out)
{
    int S = a->S, V = a->cfg->vocab, rc = 0;
    head_grp g[2];
    mp_epf *st[2] = {a, b};
    double *seq = calloc(4 * ((size_t)a->tok->n_seq + 1), sizeof(double)), *all = NULL;
    mp_lse *l[2] = {NULL, NULL};
    float *tgt[2] = {NULL, NULL}, *top[2] = {NULL, NULL};
    int *arg[2] = {NULL, NULL};
    memset(out, 0, sizeof *out);
    memset(g, 0, sizeof g);
    for (int k = 0; k < 2 && rc == 0; k++) {
        rc = head_grp_init(st[k], &g[k]);
        l[k] = malloc(sizeof(mp_lse) * (size_t)g[k].rows);
        tgt[k] = malloc(sizeof(float) * (size_t)g[k].rows);
        top[k] = malloc(sizeof(float) * (size_t)g[k].rows);
        arg[k] = malloc(sizeof(int) * (size_t)g[k].rows);
        if (rc == 0 && (!l[k] || !tgt[k] || !top[k] || !arg[k]))
            rc = mp_errorf(MP_ENOMEM, "out of memory");
    }
    if (rc == 0 && !seq)
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    for (int q0 = 0; q0 < a->nseq && rc == 0; q0 += g[0].G) {
        int ng = a->nseq - q0 < g[0].G ? a->nseq - q0 : g[0].G, nv;
        for (int k = 0; k < 2; k++) {
            head_grp_norm(&g[k], q0, ng);
            for (int r = 0; r < ng * S; r++)
                l[k][r] = mp_lse_empty(), top[k][r] = -INFINITY, arg[k][r] = 0;
        }
        for (int v0 = 0; v0 < V; v0 += MP_LSE_BLOCK) {
            const float *o[2] = {head_grp_block(&g[0], v0, &nv), head_grp_block(&g[1], v0, &nv)};
            for (int r = 0; r < ng * S; r++) {
                int y = next_id(a, q0, r);
                if (y < 0)
                    continue;
                for (int k = 0; k < 2; k++) {
                    const float *row = o[k] + (int64_t)r * g[k].ld;
                    /* KL(original || compressed): E_p[a - b] over the original's blocks */
                    float mx = row_block(row, k ? NULL : o[1] + (int64_t)r * g[1].ld, v0, nv, y, &l[k][r], &tgt[k][r]);
                    if (mx > top[k][r]) { /* the first of the largest logits, as a scan over the row */
                        int i = 0;
                        while (i + 1 < nv && row[i] != mx)
                            i++;
                        top[k][r] = mx, arg[k][r] = v0 + i;
                    }
                }
            }
        }
        for (int q = 0; q < ng && rc == 0; q++) {
            double *acc = seq + 4 * (size_t)(a->seq0 + q0 + q); /* nll original, compressed, KL, top-1 agreements */
            for (int r = q * S; r < (q + 1) * S - 1; r++) {
                double lz[2];
                for (int k = 0; k < 2; k++) {
                    lz[k] = mp_lse_value(&l[k][r]);
                    acc[k] += lz[k] - (double)tgt[k][r]; /* as mp_epf_head: the same perplexity as eval */
                }
                acc[2] += l[0][r].t / l[0][r].z - lz[0] + lz[1];
                acc[3] += arg[0][r] == arg[1][r];
            }
            for (int k = 0; k < 3 && rc == 0; k++)
                if (!isfinite(acc[k]))
                    rc = mp_errorf(MP_ENUMERIC, "sequence %d: the %s is not finite", a->seq0 + q0 + q,
                                   k == 2 ? "KL divergence"
                                   : k    ? "compressed model's NLL"
                                          : "original model's NLL");
        }
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
        head_grp_free(&g[k]), free(l[k]), free(tgt[k]), free(top[k]), free(arg[k]);
    free(seq), free(all);
    return rc;
}

int mp_epf_run(const mp_weights *w, const mp_tokens *tok, mp_observer observe, void *observe_ctx, double *nll_sum,
               int64_t *n_pred)
{
    mp_epf *s = NULL;
    MP_CHECK(mp_epf_create(w, tok, observe, observe_ctx, &s));
    int rc = mp_epf_balance(s, !w->unit);
    for (int l = 0; l < w->cfg->n_layers && rc == 0; l++)
        rc = mp_epf_layer(s, l, NULL);
    if (rc == 0)
        rc = mp_epf_head(s, nll_sum, n_pred);
    mp_epf_free(s);
    return rc;
}
