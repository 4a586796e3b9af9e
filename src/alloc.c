/* alloc.c - multiple-choice knapsack solver: dominance + convex hulls, the LP
 * greedy (bound, dual price), a greedy fill, and an exact core DP with
 * Lagrangian bounds; the trade-off sweep, per-layer baseline and tying helpers
 * (see alloc.h for the contract and the method). */
#include "alloc.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

#define DEFAULT_MAX_STATES 4000000
#define DEFAULT_REL_TOL 1e-12
#define DEFAULT_SWEEP 16

void mp_mckp_opts_default(mp_mckp_opts *o)
{
    o->max_states = DEFAULT_MAX_STATES;
    o->rel_tol = DEFAULT_REL_TOL;
    o->sweep_points = DEFAULT_SWEEP;
}

/* ---- a stable merge sort of int indices with a context comparator ---------------------------------- */

typedef int (*idx_cmp)(const void *ctx, int a, int b);

static void isort(int *a, int n, idx_cmp cmp, const void *ctx, int *tmp)
{
    if (n <= 16) {
        for (int i = 1; i < n; i++) {
            int v = a[i], j = i - 1;
            while (j >= 0 && cmp(ctx, a[j], v) > 0) {
                a[j + 1] = a[j];
                j--;
            }
            a[j + 1] = v;
        }
        return;
    }
    int h = n / 2;
    isort(a, h, cmp, ctx, tmp);
    isort(a + h, n - h, cmp, ctx, tmp);
    int i = 0, j = h, k = 0;
    while (i < h && j < n)
        tmp[k++] = cmp(ctx, a[j], a[i]) < 0 ? a[j++] : a[i++];
    while (i < h)
        tmp[k++] = a[i++];
    while (j < n)
        tmp[k++] = a[j++];
    memcpy(a, tmp, sizeof(int) * (size_t)n);
}

static int cmp_d(double a, double b) { return a < b ? -1 : a > b ? 1 : 0; }
static int cmp_i64(int64_t a, int64_t b) { return a < b ? -1 : a > b ? 1 : 0; }

/* options of one group by (bytes, loss, cost, tag, index); ctx = the group's first option */
static int cmp_opt(const void *ctx, int a, int b)
{
    const mp_option *o = ctx;
    int c = cmp_i64(o[a].bytes, o[b].bytes);
    if (!c)
        c = cmp_d(o[a].loss, o[b].loss);
    if (!c)
        c = cmp_d(o[a].cost, o[b].cost);
    if (!c)
        c = o[a].tag < o[b].tag ? -1 : o[a].tag > o[b].tag;
    return c ? c : (a > b) - (a < b);
}

typedef struct {
    const mp_mckp *p;
    const int *sidx; /* per group, its local option indices sorted by cmp_opt */
} group_ctx;

/* groups by content: option count, then their sorted option lists; identical groups by input index */
static int cmp_group(const void *ctx, int a, int b)
{
    const group_ctx *c = ctx;
    const int *f = c->p->first;
    int na = f[a + 1] - f[a], nb = f[b + 1] - f[b];
    if (na != nb)
        return na < nb ? -1 : 1;
    const mp_option *oa = c->p->opt + f[a], *ob = c->p->opt + f[b];
    const int *sa = c->sidx + f[a], *sb = c->sidx + f[b];
    for (int k = 0; k < na; k++) {
        const mp_option *x = oa + sa[k], *y = ob + sb[k];
        int r = cmp_i64(x->bytes, y->bytes);
        if (!r)
            r = cmp_d(x->loss, y->loss);
        if (!r)
            r = cmp_d(x->cost, y->cost);
        if (!r)
            r = x->tag < y->tag ? -1 : x->tag > y->tag;
        if (r)
            return r;
    }
    return (a > b) - (a < b);
}

/* ---- the reduced instance: canonical group order, undominated options, hulls ------------------------- */

typedef struct {
    int G;
    int *gin;    /* [G] internal group -> input group */
    int *pf;     /* [G+1] undominated ("Pareto") options of internal group i: pf[i] .. pf[i+1] */
    int64_t *pb; /* bytes, strictly increasing within a group */
    double *pl;  /* loss, strictly decreasing within a group */
    int *po;     /* local option index in the input group */
    int *hf;     /* [G+1] lower-hull vertices of group i: hp[hf[i] .. hf[i+1]) */
    int *hp;     /* absolute Pareto positions */
    int64_t min_bytes, max_bytes;
} inst;

static void inst_free(inst *s)
{
    free(s->gin);
    free(s->pf);
    free(s->pb);
    free(s->pl);
    free(s->po);
    free(s->hf);
    free(s->hp);
    memset(s, 0, sizeof *s);
}

static int validate(const mp_mckp *p)
{
    if (!p || p->n_groups < 0)
        return mp_errorf(MP_EUSAGE, "allocation: invalid instance (negative group count)");
    if (p->n_groups == 0)
        return 0;
    if (!p->first || !p->opt)
        return mp_errorf(MP_EUSAGE, "allocation: instance without option arrays");
    if (p->first[0] != 0)
        return mp_errorf(MP_EUSAGE, "allocation: first[0] is %d, must be 0", p->first[0]);
    int64_t total = 0;
    for (int g = 0; g < p->n_groups; g++) {
        int a = p->first[g], b = p->first[g + 1];
        if (b <= a)
            return mp_errorf(MP_EUSAGE, "allocation: block %d has no options", g);
        int64_t mx = 0;
        for (int j = a; j < b; j++) {
            const mp_option *o = &p->opt[j];
            if (!isfinite(o->loss) || o->loss < 0)
                return mp_errorf(MP_EUSAGE, "allocation: block %d option %d: loss %g is not a finite value >= 0", g,
                                 j - a, o->loss);
            if (!isfinite(o->cost) || o->cost < 0)
                return mp_errorf(MP_EUSAGE, "allocation: block %d option %d: cost %g is not a finite value >= 0", g,
                                 j - a, o->cost);
            if (o->bytes < 0)
                return mp_errorf(MP_EUSAGE, "allocation: block %d option %d: negative size %lld bytes", g, j - a,
                                 (long long)o->bytes);
            if (o->bytes > mx)
                mx = o->bytes;
        }
        if (__builtin_add_overflow(total, mx, &total))
            return mp_errorf(MP_EUSAGE, "allocation: the total size of the options overflows 64 bits");
    }
    return 0;
}

static int inst_build(const mp_mckp *p, inst *s)
{
    memset(s, 0, sizeof *s);
    int G = p->n_groups, N = G ? p->first[G] : 0;
    s->G = G;
    int *sidx = malloc(sizeof(int) * (size_t)(N + 1)), *tmp = malloc(sizeof(int) * (size_t)(N > G ? N + 1 : G + 1));
    s->gin = malloc(sizeof(int) * (size_t)(G + 1));
    s->pf = malloc(sizeof(int) * (size_t)(G + 1));
    s->hf = malloc(sizeof(int) * (size_t)(G + 1));
    s->pb = malloc(sizeof(int64_t) * (size_t)(N + 1));
    s->pl = malloc(sizeof(double) * (size_t)(N + 1));
    s->po = malloc(sizeof(int) * (size_t)(N + 1));
    s->hp = malloc(sizeof(int) * (size_t)(N + 1));
    if (!sidx || !tmp || !s->gin || !s->pf || !s->hf || !s->pb || !s->pl || !s->po || !s->hp) {
        free(sidx);
        free(tmp);
        inst_free(s);
        return mp_errorf(MP_ENOMEM, "allocation: out of memory for %d blocks with %d options", G, N);
    }
    for (int g = 0; g < G; g++) {
        int a = p->first[g], n = p->first[g + 1] - a;
        for (int k = 0; k < n; k++)
            sidx[a + k] = k;
        isort(sidx + a, n, cmp_opt, p->opt + a, tmp);
    }
    for (int g = 0; g < G; g++)
        s->gin[g] = g;
    group_ctx gc = {p, sidx};
    isort(s->gin, G, cmp_group, &gc, tmp);

    int np = 0, nh = 0;
    s->pf[0] = s->hf[0] = 0;
    for (int i = 0; i < G; i++) {
        int g = s->gin[i], a = p->first[g], n = p->first[g + 1] - a, p0 = np;
        const mp_option *o = p->opt + a;
        for (int k = 0; k < n; k++) {
            int j = sidx[a + k];
            if (np > p0 && !(o[j].loss < s->pl[np - 1]))
                continue; /* dominated: no fewer bytes, no lower loss than an option kept */
            s->pb[np] = o[j].bytes;
            s->pl[np] = o[j].loss;
            s->po[np] = j;
            np++;
        }
        s->pf[i + 1] = np;
        /* lower convex hull (monotone chain): drop a vertex when the segment after it is more efficient
           (larger -dl/db) than the one before it; collinear vertices are kept */
        int h0 = nh;
        for (int k = p0; k < np; k++) {
            while (nh - h0 >= 2) {
                int x = s->hp[nh - 2], y = s->hp[nh - 1];
                double e1 = (s->pl[x] - s->pl[y]) / (double)(s->pb[y] - s->pb[x]);
                double e2 = (s->pl[y] - s->pl[k]) / (double)(s->pb[k] - s->pb[y]);
                if (e1 < e2)
                    nh--;
                else
                    break;
            }
            s->hp[nh++] = k;
        }
        s->hf[i + 1] = nh;
        s->min_bytes += s->pb[p0];
        s->max_bytes += s->pb[np - 1];
    }
    free(sidx);
    free(tmp);
    return 0;
}

/* ---- LP greedy ------------------------------------------------------------------------------------------ */

typedef struct {
    double eff; /* -dl/db of the hull segment k-1 -> k of group g */
    int g, k;
} hinc;

static int cmp_hinc(const void *x, const void *y)
{
    const hinc *a = x, *b = y;
    if (a->eff != b->eff)
        return a->eff > b->eff ? -1 : 1;
    if (a->g != b->g)
        return a->g < b->g ? -1 : 1;
    return (a->k > b->k) - (a->k < b->k);
}

/* ---- exact phase: DP over the core groups ------------------------------------------------------------ */

typedef struct {
    int64_t W; /* total bytes */
    double P;  /* total loss */
    int node;  /* decisions so far (node arena, -1: none) */
    int opt;   /* pending decision in the group being added (-1: its LP option) */
} state;

typedef struct {
    int parent, group, opt;
} dnode;

typedef struct {
    dnode *n;
    int len, cap;
    int *map;
} arena;

/* Make room for `need` more nodes: collect the nodes unreachable from the roots, grow if still short. */
static int arena_reserve(arena *a, int need, state *roots, int64_t n_roots, int *extra, int n_extra)
{
    if (a->len + need <= a->cap)
        return 0;
    if (a->len > 0) {
        int *m = a->map;
        for (int i = 0; i < a->len; i++)
            m[i] = -1;
        for (int64_t r = 0; r < n_roots + n_extra; r++) {
            int x = r < n_roots ? roots[r].node : extra[r - n_roots];
            while (x >= 0 && m[x] < 0) {
                m[x] = 0;
                x = a->n[x].parent;
            }
        }
        int k = 0;
        for (int i = 0; i < a->len; i++)
            if (m[i] == 0) {
                dnode d = a->n[i];
                d.parent = d.parent >= 0 ? m[d.parent] : -1; /* parents come first: already renumbered */
                a->n[k] = d;
                m[i] = k++;
            }
        for (int64_t r = 0; r < n_roots; r++)
            if (roots[r].node >= 0)
                roots[r].node = m[roots[r].node];
        for (int r = 0; r < n_extra; r++)
            if (extra[r] >= 0)
                extra[r] = m[extra[r]];
        a->len = k;
    }
    if (a->len + need > a->cap / 2) { /* keep collections rare: at most half full after one */
        int64_t nc = (int64_t)a->cap * 2;
        if (nc < a->len + (int64_t)need * 2)
            nc = a->len + (int64_t)need * 2;
        if (nc < 1024)
            nc = 1024;
        if (nc > 0x7fffffff)
            return mp_errorf(MP_ENOMEM, "allocation: exact phase needs more than 2^31 decision nodes");
        dnode *n = realloc(a->n, sizeof(dnode) * (size_t)nc);
        int *m = realloc(a->map, sizeof(int) * (size_t)nc);
        if (n)
            a->n = n;
        if (m)
            a->map = m;
        if (!n || !m)
            return mp_errorf(MP_ENOMEM, "allocation: out of memory in the exact phase (%lld nodes)", (long long)nc);
        a->cap = (int)nc;
    }
    return 0;
}

static int grow_states(state **buf, int64_t *cap, int64_t need)
{
    if (need <= *cap)
        return 0;
    int64_t nc = *cap * 2 > need ? *cap * 2 : need;
    state *b = realloc(*buf, sizeof(state) * (size_t)nc);
    if (!b)
        return mp_errorf(MP_ENOMEM, "allocation: out of memory in the exact phase (%lld states)", (long long)nc);
    *buf = b;
    *cap = nc;
    return 0;
}

typedef struct {
    const inst *s;
    const int *gp; /* LP (greedy prefix) Pareto position per group */
    int64_t budget;
    double lambda, tol;
    double ub;      /* incumbent loss */
    int inc_parent; /* incumbent found in the DP: its decisions = chain(inc_parent) + (inc_group, inc_opt) */
    int inc_group, inc_opt;
    int inc_node; /* ... once materialised */
    int from_dp;
} dpctx;

/* Merge the sorted, undominated list A with list L shifted by option j of group u into C, keeping the
   undominated states whose bound can still beat the incumbent. */
static int64_t merge_shift(dpctx *d, const state *A, int64_t na, const state *L, int64_t nl, int u, int j, double dnext,
                           int64_t red, state *C)
{
    const inst *s = d->s;
    int64_t dW = s->pb[j] - s->pb[d->gp[u]];
    double dP = s->pl[j] - s->pl[d->gp[u]];
    int64_t ia = 0, il = 0, nc = 0;
    double lastP = INFINITY;
    for (;;) {
        state c;
        int have_l = 0;
        while (il < nl) {
            c.W = L[il].W + dW;
            c.P = L[il].P + dP;
            c.node = L[il].node;
            c.opt = j;
            double bound = c.P + d->lambda * (double)(c.W - d->budget);
            if (bound + dnext >= d->ub - d->tol && !(c.W <= d->budget && c.P < d->ub - d->tol)) {
                il++;
                continue; /* neither better now nor after more changes */
            }
            if (c.W - d->budget > red) {
                il++;
                continue; /* can never shed enough bytes */
            }
            have_l = 1;
            break;
        }
        if (!have_l && ia >= na)
            break;
        state x;
        if (have_l && (ia >= na || c.W < A[ia].W || (c.W == A[ia].W && c.P < A[ia].P))) {
            x = c;
            il++;
            if (x.W <= d->budget && x.P < d->ub - d->tol) {
                d->ub = x.P;
                d->from_dp = 1;
                d->inc_parent = x.node;
                d->inc_group = u;
                d->inc_opt = j;
                d->inc_node = -1;
            }
        } else {
            x = A[ia++];
        }
        if (x.P < lastP) {
            C[nc++] = x;
            lastP = x.P;
        }
    }
    return nc;
}

static int cmp_delta(const void *ctx, int a, int b)
{
    const double *dl = ctx;
    int c = cmp_d(dl[a], dl[b]);
    return c ? c : (a > b) - (a < b);
}

static double bound_of(const dpctx *d, const state *x) { return x->P + d->lambda * (double)(x->W - d->budget); }

/* The exact phase. Starts from the LP solution d->gp (bytes W0, loss P0, lower bound lb0) and the incumbent
   d->ub; on return *lb is the proven lower bound (= d->ub when proven optimal) and, when d->from_dp, the
   incumbent's decisions are the chain from d->inc_node (in *ar, which the caller frees). */
static int exact_phase(dpctx *d, int64_t W0, double P0, double lb0, int64_t max_states, arena *ar, double *lb,
                       mp_mckp_report *rep)
{
    const inst *s = d->s;
    int G = s->G, rc = 0, na = 0, maxn = 1, limited = 0, k = 0;
    double *delta = malloc(sizeof(double) * (size_t)(G + 1));
    int *order = malloc(sizeof(int) * (size_t)(G + 1)), *tmp = malloc(sizeof(int) * (size_t)(G + 1));
    int64_t *red = malloc(sizeof(int64_t) * (size_t)(G + 2));
    int *alts = NULL;
    state *L = NULL, *A = NULL, *C = NULL;
    int64_t capL = 0, capA = 0, capC = 0, nl = 0, states = 0;
    *lb = lb0;
    if (!delta || !order || !tmp || !red) {
        rc = mp_errorf(MP_ENOMEM, "allocation: out of memory in the exact phase");
        goto out;
    }
    /* reduced costs at lambda, rc_j = l_j - l_g + lambda (b_j - b_g) >= 0 with g the LP option; delta_i the
       smallest over group i's other options. Only groups with delta_i < ub - lb0 can change in a better
       solution: they form the core, added in order of increasing delta. */
    double gap0 = d->ub - lb0, drest = INFINITY;
    for (int i = 0; i < G; i++) {
        int g = d->gp[i];
        double m = INFINITY;
        for (int j = s->pf[i]; j < s->pf[i + 1]; j++) {
            double r = (s->pl[j] - s->pl[g]) + d->lambda * (double)(s->pb[j] - s->pb[g]);
            if (j != g && r < m)
                m = r;
        }
        delta[i] = m > 0 ? m : 0;
        if (s->pf[i + 1] - s->pf[i] > maxn)
            maxn = s->pf[i + 1] - s->pf[i];
        if (delta[i] < gap0 - d->tol)
            order[na++] = i;
        else if (delta[i] < drest)
            drest = delta[i];
    }
    isort(order, na, cmp_delta, delta, tmp);
    red[na] = 0; /* red[k]: bytes the core groups order[k..] can shed from their LP options */
    for (int q = na - 1; q >= 0; q--)
        red[q] = red[q + 1] + (s->pb[d->gp[order[q]]] - s->pb[s->pf[order[q]]]);
    alts = malloc(sizeof(int) * (size_t)maxn);
    if (!alts) {
        rc = mp_errorf(MP_ENOMEM, "allocation: out of memory in the exact phase");
        goto out;
    }
    MP_CHECK_GOTO(grow_states(&L, &capL, 1024), out);
    L[0] = (state){W0, P0, -1, -1};
    nl = 1;
    for (k = 0; k < na && nl > 0; k++) {
        int u = order[k], nalt = 0;
        double minb = INFINITY;
        for (int64_t q = 0; q < nl; q++) {
            double b = bound_of(d, &L[q]);
            if (b < minb)
                minb = b;
        }
        double window = d->ub - d->tol - minb;
        if (!(delta[u] < window)) {
            nl = 0; /* no state improves by changing this group or any later one */
            break;
        }
        for (int j = s->pf[u]; j < s->pf[u + 1]; j++) {
            double r = (s->pl[j] - s->pl[d->gp[u]]) + d->lambda * (double)(s->pb[j] - s->pb[d->gp[u]]);
            if (j != d->gp[u] && r < window)
                alts[nalt++] = j;
        }
        if (states + nl * (1 + nalt) > max_states) {
            limited = 1;
            break;
        }
        states += nl * (1 + nalt);
        double dnext = k + 1 < na ? delta[order[k + 1]] : drest;
        int64_t rnext = red[k + 1], nA = 0;
        /* the group keeps its LP option */
        MP_CHECK_GOTO(grow_states(&A, &capA, nl), out);
        for (int64_t q = 0; q < nl; q++) {
            if (bound_of(d, &L[q]) + dnext >= d->ub - d->tol || L[q].W - d->budget > rnext)
                continue;
            A[nA] = L[q];
            A[nA++].opt = -1;
        }
        /* ... or moves to one of its alternatives */
        for (int a = 0; a < nalt; a++) {
            MP_CHECK_GOTO(grow_states(&C, &capC, nA + nl), out);
            int64_t nC = merge_shift(d, A, nA, L, nl, u, alts[a], dnext, rnext, C);
            state *t = A;
            A = C;
            C = t;
            int64_t tc = capA;
            capA = capC;
            capC = tc;
            nA = nC;
        }
        /* prune with the final incumbent, record the decisions of the survivors */
        int64_t need = 1;
        for (int64_t q = 0; q < nA; q++)
            need += A[q].opt >= 0;
        if (need > 0x7fffffff - (int64_t)ar->len) {
            rc = mp_errorf(MP_ENOMEM, "allocation: exact phase needs more than 2^31 decision nodes");
            goto out;
        }
        int extra[2] = {d->inc_parent, d->inc_node};
        MP_CHECK_GOTO(arena_reserve(ar, (int)need, A, nA, extra, 2), out);
        d->inc_parent = extra[0];
        d->inc_node = extra[1];
        if (d->from_dp && d->inc_node < 0) {
            ar->n[ar->len] = (dnode){d->inc_parent, u, d->inc_opt};
            d->inc_node = ar->len++;
        }
        int64_t nk = 0;
        for (int64_t q = 0; q < nA; q++) {
            state x = A[q];
            if (bound_of(d, &x) + dnext >= d->ub - d->tol)
                continue;
            if (x.opt >= 0) {
                ar->n[ar->len] = (dnode){x.node, u, x.opt};
                x.node = ar->len++;
                x.opt = -1;
            }
            A[nk++] = x;
        }
        state *t = L;
        L = A;
        A = t;
        int64_t tc = capL;
        capL = capA;
        capA = tc;
        nl = nk;
    }
    if (limited) {
        /* every better solution extends a live state and changes group order[k] or a later one */
        double m = d->ub;
        for (int64_t q = 0; q < nl; q++) {
            double b = bound_of(d, &L[q]) + delta[order[k]];
            if (b < m)
                m = b;
        }
        *lb = m > lb0 ? m : lb0;
    } else {
        *lb = d->ub;
    }
    rep->core_groups = k;
    rep->states = states;
    rep->hit_limit = limited;
out:
    free(delta);
    free(order);
    free(tmp);
    free(red);
    free(alts);
    free(L);
    free(A);
    free(C);
    return rc;
}

/* Solve the reduced instance: cur[i] = chosen Pareto position of internal group i. */
static int solve_inst(const inst *s, int64_t budget, const mp_mckp_opts *o, int *cur, mp_mckp_report *rep)
{
    int G = s->G, rc = 0;
    rep->min_bytes = s->min_bytes;
    rep->max_bytes = s->max_bytes;
    rep->n_pareto = G ? s->pf[G] : 0;
    rep->n_hull = G ? s->hf[G] : 0;
    if (budget < s->min_bytes)
        return mp_errorf(MP_EUSAGE,
                         "allocation: the budget of %lld bytes is below the smallest possible model; the minimum "
                         "feasible total is %lld bytes (every block at its smallest option)",
                         (long long)budget, (long long)s->min_bytes);
    if (budget >= s->max_bytes) {
        for (int i = 0; i < G; i++)
            cur[i] = s->pf[i + 1] - 1;
        rep->unconstrained = 1;
        rep->optimal = 1;
        rep->lambda = 0;
        rep->lower_bound = rep->lp_bound = rep->heuristic_objective = NAN; /* set by the caller */
        return 0;
    }
    int n_inc = s->hf[G] - G;
    hinc *inc = malloc(sizeof(hinc) * (size_t)(n_inc + 1));
    int *gp = malloc(sizeof(int) * (size_t)(G + 1));
    unsigned char *blocked = calloc((size_t)G + 1, 1);
    arena ar = {0};
    if (!inc || !gp || !blocked) {
        rc = mp_errorf(MP_ENOMEM, "allocation: out of memory for %d hull segments", n_inc);
        goto out;
    }
    int t = 0;
    for (int i = 0; i < G; i++)
        for (int k = 1; k < s->hf[i + 1] - s->hf[i]; k++) {
            int a = s->hp[s->hf[i] + k - 1], b = s->hp[s->hf[i] + k];
            inc[t++] = (hinc){(s->pl[a] - s->pl[b]) / (double)(s->pb[b] - s->pb[a]), i, k};
        }
    qsort(inc, (size_t)n_inc, sizeof(hinc), cmp_hinc);

    /* LP greedy: from every group's smallest option, take the most efficient hull segments while they fit */
    int64_t cap = budget - s->min_bytes;
    for (int i = 0; i < G; i++)
        cur[i] = s->pf[i];
    for (t = 0; t < n_inc; t++) {
        int a = s->hp[s->hf[inc[t].g] + inc[t].k - 1], b = s->hp[s->hf[inc[t].g] + inc[t].k];
        if (s->pb[b] - s->pb[a] > cap)
            break;
        cap -= s->pb[b] - s->pb[a];
        cur[inc[t].g] = b;
    }
    if (t >= n_inc) {
        rc = mp_errorf(MP_EINTERNAL, "allocation: no split segment below the unconstrained budget");
        goto out;
    }
    double lambda = inc[t].eff, P0 = 0;
    memcpy(gp, cur, sizeof(int) * (size_t)G);
    for (int i = 0; i < G; i++)
        P0 += s->pl[gp[i]];
    int64_t W0 = budget - cap;
    double lb0 = P0 - lambda * (double)cap;
    /* greedy fill: the later segments that still fit, each group up to its first one that does not */
    blocked[inc[t].g] = 1;
    for (int q = t + 1; q < n_inc && cap > 0; q++) {
        int g = inc[q].g;
        if (blocked[g])
            continue;
        int a = s->hp[s->hf[g] + inc[q].k - 1], b = s->hp[s->hf[g] + inc[q].k];
        if (s->pb[b] - s->pb[a] <= cap) {
            cap -= s->pb[b] - s->pb[a];
            cur[g] = b;
        } else {
            blocked[g] = 1;
        }
    }
    /* one pass: each group to its lowest-loss option (hull or not) that fits into what is left */
    for (int i = 0; i < G; i++) {
        int c = cur[i], j = c;
        while (j + 1 < s->pf[i + 1] && s->pb[j + 1] - s->pb[c] <= cap)
            j++;
        cap -= s->pb[j] - s->pb[c];
        cur[i] = j;
    }
    double ub = 0;
    for (int i = 0; i < G; i++)
        ub += s->pl[cur[i]];
    rep->lambda = lambda;
    rep->lp_bound = lb0;
    rep->heuristic_objective = ub;
    double tol = o->rel_tol * fabs(ub), lb = lb0;
    if (ub - lb0 <= tol) {
        lb = ub;
    } else if (o->max_states > 0) {
        dpctx d = {s, gp, budget, lambda, tol, ub, -1, -1, -1, -1, 0};
        MP_CHECK_GOTO(exact_phase(&d, W0, P0, lb0, o->max_states, &ar, &lb, rep), out);
        if (d.from_dp) {
            memcpy(cur, gp, sizeof(int) * (size_t)G);
            for (int x = d.inc_node; x >= 0; x = ar.n[x].parent)
                cur[ar.n[x].group] = ar.n[x].opt;
        }
    } else {
        rep->hit_limit = 1;
    }
    rep->lower_bound = lb;
out:
    free(inc);
    free(gp);
    free(blocked);
    free(ar.n);
    free(ar.map);
    return rc;
}

int mp_mckp_solve(const mp_mckp *p, int64_t budget, const mp_mckp_opts *opts, int *choice, mp_mckp_report *rep)
{
    mp_mckp_opts od;
    mp_mckp_report rd;
    if (!opts) {
        mp_mckp_opts_default(&od);
        opts = &od;
    }
    if (!rep)
        rep = &rd;
    memset(rep, 0, sizeof *rep);
    rep->log_objective = NAN;
    MP_CHECK(validate(p));
    inst s;
    MP_CHECK(inst_build(p, &s));
    int G = s.G, rc = 0;
    int *cur = malloc(sizeof(int) * (size_t)(G + 1));
    if (!cur) {
        inst_free(&s);
        return mp_errorf(MP_ENOMEM, "allocation: out of memory for %d blocks", G);
    }
    rep->n_options = G ? p->first[G] : 0;
    MP_CHECK_GOTO(solve_inst(&s, budget, opts, cur, rep), out);
    for (int i = 0; i < G; i++)
        choice[s.gin[i]] = s.po[cur[i]];
    double loss, cost;
    int64_t bytes;
    mp_mckp_totals(p, choice, &loss, &cost, &bytes);
    rep->objective = loss;
    rep->cost = cost;
    rep->bytes = bytes;
    if (rep->unconstrained)
        rep->lower_bound = rep->lp_bound = rep->heuristic_objective = loss;
    if (rep->lower_bound > loss)
        rep->lower_bound = loss;
    rep->gap = loss - rep->lower_bound;
    rep->optimal = rep->gap <= opts->rel_tol * fabs(loss);
    if (rep->optimal) {
        rep->lower_bound = loss;
        rep->gap = 0;
    }
    rep->rel_gap = loss > 0 ? rep->gap / loss : 0;
out:
    free(cur);
    inst_free(&s);
    return rc;
}

void mp_mckp_totals(const mp_mckp *p, const int *choice, double *loss, double *cost, int64_t *bytes)
{
    double l = 0, c = 0;
    int64_t b = 0;
    for (int g = 0; g < p->n_groups; g++) {
        const mp_option *o = &p->opt[p->first[g] + choice[g]];
        l += o->loss;
        c += o->cost;
        b += o->bytes;
    }
    if (loss)
        *loss = l;
    if (cost)
        *cost = c;
    if (bytes)
        *bytes = b;
}

/* ---- accuracy-speed trade-off ------------------------------------------------------------------------ */

static double log_combined(double r, double L, double T)
{
    double v = 0;
    if (r > 0)
        v += r * log(L);
    if (r < 1)
        v += (1 - r) * log(T);
    return v;
}

int mp_mckp_solve_tradeoff(const mp_mckp *p, int64_t budget, double r, const mp_mckp_opts *opts, int *choice,
                           mp_mckp_report *rep)
{
    mp_mckp_opts od;
    mp_mckp_report rd, rt;
    if (!opts) {
        mp_mckp_opts_default(&od);
        opts = &od;
    }
    if (!rep)
        rep = &rd;
    if (!(r >= 0 && r <= 1))
        return mp_errorf(MP_EUSAGE, "allocation: the trade-off r = %g is not in [0, 1]", r);
    MP_CHECK(validate(p));
    int G = p->n_groups, N = G ? p->first[G] : 0, rc = 0;
    mp_option *mod = malloc(sizeof(mp_option) * (size_t)(N + 1));
    int *trial = malloc(sizeof(int) * (size_t)(G + 1));
    if (!mod || !trial) {
        free(mod);
        free(trial);
        return mp_errorf(MP_ENOMEM, "allocation: out of memory for the trade-off sweep (%d options)", N);
    }
    if (N)
        memcpy(mod, p->opt, sizeof(mp_option) * (size_t)N);
    mp_mckp q = {G, p->first, mod};
    double best = INFINITY, mus[3 + DEFAULT_SWEEP * 4 + 8];
    int n_mu = 0, solves = 0, K = opts->sweep_points > 0 ? opts->sweep_points : 0;
    if (K > DEFAULT_SWEEP * 4)
        K = DEFAULT_SWEEP * 4;
    /* mu < 0 stands for "cost alone" (r = 0) */
    if (r == 0)
        mus[n_mu++] = -1;
    else
        mus[n_mu++] = 0;
    for (int m = 0; m < n_mu; m++) {
        double mu = mus[m];
        for (int j = 0; j < N; j++)
            mod[j].loss = mu < 0 ? p->opt[j].cost : p->opt[j].loss + mu * p->opt[j].cost;
        MP_CHECK_GOTO(mp_mckp_solve(&q, budget, opts, trial, &rt), out);
        solves++;
        double L, T;
        int64_t B;
        mp_mckp_totals(p, trial, &L, &T, &B);
        double v = log_combined(r, L, T);
        if (m == 0 || v < best) {
            best = v;
            memcpy(choice, trial, sizeof(int) * (size_t)G);
            *rep = rt;
            rep->objective = L;
            rep->cost = T;
            rep->bytes = B;
            rep->mu = mu < 0 ? INFINITY : mu;
            rep->log_objective = v;
        }
        if (m == 0 && mu == 0 && r < 1) {
            /* the sweep around the weight at which the gradients of the log objective balance */
            if (!(L > 0 && T > 0))
                break; /* a zero total already minimises its logarithm */
            double ref = (1 - r) / r * L / T;
            for (int k = 0; k < K; k++)
                mus[n_mu++] = ref * pow(10.0, K > 1 ? -3.0 + 6.0 * k / (K - 1) : 0.0);
        }
        if (m == n_mu - 1 && r > 0 && r < 1 && n_mu < 1 + K + 3 && rep->objective > 0 && rep->cost > 0) {
            /* fixed-point steps from the best so far */
            double mu2 = (1 - r) / r * rep->objective / rep->cost;
            int seen = 0;
            for (int k = 0; k < n_mu; k++)
                seen |= mus[k] == mu2;
            if (!seen)
                mus[n_mu++] = mu2;
        }
    }
    rep->sweep_points = solves;
out:
    free(mod);
    free(trial);
    return rc;
}

/* ---- per-layer baseline ------------------------------------------------------------------------------ */

static int cmp_layer(const void *ctx, int a, int b)
{
    const int *layer = ctx;
    if (layer[a] != layer[b])
        return layer[a] < layer[b] ? -1 : 1;
    return (a > b) - (a < b);
}

int mp_mckp_solve_per_layer(const mp_mckp *p, const int *layer, const int64_t *ref_bytes, int64_t budget,
                            const mp_mckp_opts *opts, int *choice, mp_mckp_report *rep)
{
    mp_mckp_report rd, rl;
    if (!rep)
        rep = &rd;
    memset(rep, 0, sizeof *rep);
    MP_CHECK(validate(p));
    if (p->n_groups > 0 && !layer)
        return mp_errorf(MP_EUSAGE, "per-layer allocation: no layer ids");
    int G = p->n_groups, N = G ? p->first[G] : 0, rc = 0;
    int *idx = malloc(sizeof(int) * (size_t)(G + 1)), *tmp = malloc(sizeof(int) * (size_t)(G + 1));
    int *sf = malloc(sizeof(int) * (size_t)(G + 1)), *sc = malloc(sizeof(int) * (size_t)(G + 1));
    int64_t *U = malloc(sizeof(int64_t) * (size_t)(G + 1));
    mp_option *so = malloc(sizeof(mp_option) * (size_t)(N + 1));
    if (!idx || !tmp || !sf || !sc || !U || !so) {
        rc = mp_errorf(MP_ENOMEM, "allocation: out of memory for the per-layer baseline");
        goto out;
    }
    int64_t Utot = 0;
    for (int g = 0; g < G; g++) {
        int64_t u = 0;
        if (ref_bytes) {
            u = ref_bytes[g];
        } else {
            for (int j = p->first[g]; j < p->first[g + 1]; j++)
                u = p->opt[j].bytes > u ? p->opt[j].bytes : u;
        }
        if (u < 0) {
            rc = mp_errorf(MP_EUSAGE, "per-layer allocation: block %d has negative reference bytes", g);
            goto out;
        }
        U[g] = u;
        if (__builtin_add_overflow(Utot, u, &Utot)) {
            rc = mp_errorf(MP_EUSAGE, "per-layer allocation: the reference bytes overflow 64 bits");
            goto out;
        }
        idx[g] = g;
    }
    if (G > 0 && Utot == 0) {
        rc = mp_errorf(MP_EUSAGE, "per-layer allocation: all reference sizes are 0");
        goto out;
    }
    isort(idx, G, cmp_layer, layer, tmp);
    rep->optimal = rep->unconstrained = 1;
    rep->log_objective = NAN;
    for (int a = 0; a < G;) {
        int b = a, n = 0;
        int64_t Ul = 0;
        while (b < G && layer[idx[b]] == layer[idx[a]])
            b++;
        sf[0] = 0;
        for (int k = a; k < b; k++) {
            int g = idx[k];
            for (int j = p->first[g]; j < p->first[g + 1]; j++)
                so[n++] = p->opt[j];
            sf[k - a + 1] = n;
            Ul += U[g];
        }
        int64_t share = (int64_t)((__int128)budget * Ul / Utot);
        mp_mckp sub = {b - a, sf, so};
        rc = mp_mckp_solve(&sub, share, opts, sc, &rl);
        if (rc < 0) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", mp_error_message());
            rc = mp_errorf(rc, "per-layer allocation, layer %d (share %lld of %lld bytes): %s", layer[idx[a]],
                           (long long)share, (long long)budget, msg);
            goto out;
        }
        for (int k = a; k < b; k++)
            choice[idx[k]] = sc[k - a];
        rep->objective += rl.objective;
        rep->lower_bound += rl.lower_bound;
        rep->lp_bound += rl.lp_bound;
        rep->heuristic_objective += rl.heuristic_objective;
        rep->bytes += rl.bytes;
        rep->cost += rl.cost;
        rep->min_bytes += rl.min_bytes;
        rep->max_bytes += rl.max_bytes;
        rep->n_options += rl.n_options;
        rep->n_pareto += rl.n_pareto;
        rep->n_hull += rl.n_hull;
        rep->core_groups += rl.core_groups;
        rep->states += rl.states;
        rep->optimal &= rl.optimal;
        rep->unconstrained &= rl.unconstrained;
        rep->hit_limit |= rl.hit_limit;
        a = b;
    }
    rep->gap = rep->objective - rep->lower_bound;
    if (rep->gap < 0)
        rep->gap = 0;
    rep->rel_gap = rep->objective > 0 ? rep->gap / rep->objective : 0;
out:
    free(idx);
    free(tmp);
    free(sf);
    free(sc);
    free(U);
    free(so);
    return rc;
}

/* ---- tying ---------------------------------------------------------------------------------------------- */

void mp_mckp_tied_free(mp_mckp_tied *t)
{
    free(t->first);
    free(t->opt);
    free(t->group_of);
    free(t->option_of);
    memset(t, 0, sizeof *t);
}

int mp_mckp_tie(const mp_mckp *p, int n_ties, const int *ties, mp_mckp_tied *out)
{
    memset(out, 0, sizeof *out);
    MP_CHECK(validate(p));
    int G = p->n_groups, rc = 0;
    if (n_ties < 0 || (n_ties > 0 && !ties))
        return mp_errorf(MP_EUSAGE, "tying: invalid list of %d pairs", n_ties);
    int *partner = malloc(sizeof(int) * (size_t)(G + 1)); /* the other block of g's pair, -1 */
    char *second = calloc((size_t)G + 1, 1);              /* g is the second block of its pair */
    if (!partner || !second) {
        free(partner);
        free(second);
        return mp_errorf(MP_ENOMEM, "tying: out of memory");
    }
    for (int g = 0; g < G; g++)
        partner[g] = -1;
    for (int k = 0; k < n_ties; k++) {
        int a = ties[2 * k], b = ties[2 * k + 1];
        if (a < 0 || a >= G || b < 0 || b >= G || a == b) {
            rc = mp_errorf(MP_EUSAGE, "tying: pair %d (%d, %d) is not two different blocks of 0..%d", k, a, b, G - 1);
            goto fail;
        }
        if (partner[a] >= 0 || partner[b] >= 0) {
            rc = mp_errorf(MP_EUSAGE, "tying: block %d is in two pairs", partner[a] >= 0 ? a : b);
            goto fail;
        }
        partner[a] = b;
        partner[b] = a;
        second[b] = 1;
    }
    int64_t n = 0;
    int Gt = 0;
    for (int pass = 0; pass < 2; pass++) {
        n = 0;
        Gt = 0;
        for (int a = 0; a < G; a++) {
            int b = partner[a];
            if (second[a])
                continue;
            int64_t n0 = n;
            if (pass == 1) {
                out->first[Gt] = (int)n;
                out->group_of[2 * Gt] = a;
                out->group_of[2 * Gt + 1] = b;
            }
            if (b < 0) {
                for (int i = p->first[a]; i < p->first[a + 1]; i++, n++)
                    if (pass == 1) {
                        out->opt[n] = p->opt[i];
                        out->option_of[2 * n] = i - p->first[a];
                        out->option_of[2 * n + 1] = -1;
                    }
            } else {
                for (int i = p->first[a]; i < p->first[a + 1]; i++)
                    for (int j = p->first[b]; j < p->first[b + 1]; j++) {
                        const mp_option *x = &p->opt[i], *y = &p->opt[j];
                        if (x->tag != y->tag)
                            continue;
                        if (pass == 1) {
                            mp_option *o = &out->opt[n];
                            o->loss = x->loss + y->loss;
                            o->cost = x->cost + y->cost;
                            o->bytes = x->bytes + y->bytes;
                            o->tag = x->tag;
                            out->option_of[2 * n] = i - p->first[a];
                            out->option_of[2 * n + 1] = j - p->first[b];
                        }
                        n++;
                    }
                if (n == n0) {
                    rc = mp_errorf(MP_EUSAGE, "tying: blocks %d and %d have no format (tag) in common", a, b);
                    goto fail;
                }
            }
            if (n > 0x7fffffff) {
                rc = mp_errorf(MP_EUSAGE, "tying: more than 2^31 tied options");
                goto fail;
            }
            Gt++;
        }
        if (pass == 0) {
            out->first = malloc(sizeof(int) * (size_t)(Gt + 1));
            out->opt = malloc(sizeof(mp_option) * (size_t)(n + 1));
            out->group_of = malloc(sizeof(int) * 2 * (size_t)(Gt + 1));
            out->option_of = malloc(sizeof(int) * 2 * (size_t)(n + 1));
            if (!out->first || !out->opt || !out->group_of || !out->option_of) {
                rc = mp_errorf(MP_ENOMEM, "tying: out of memory for %lld options", (long long)n);
                goto fail;
            }
        }
    }
    out->first[Gt] = (int)n;
    out->p.n_groups = Gt;
    out->p.first = out->first;
    out->p.opt = out->opt;
    out->n_orig = G;
    free(partner);
    free(second);
    return 0;
fail:
    free(partner);
    free(second);
    mp_mckp_tied_free(out);
    return rc;
}

void mp_mckp_untie(const mp_mckp_tied *t, const int *tied_choice, int *choice)
{
    for (int k = 0; k < t->p.n_groups; k++) {
        int o = t->first[k] + tied_choice[k];
        choice[t->group_of[2 * k]] = t->option_of[2 * o];
        if (t->group_of[2 * k + 1] >= 0)
            choice[t->group_of[2 * k + 1]] = t->option_of[2 * o + 1];
    }
}
