/* test_alloc.c - the MCKP allocator (src/alloc.h) against GLPK, an independent ILP solver.
 *
 * Random instances (continuous values, convex-ish tables, many ties, identical groups, a lattice of sizes
 * like real formats) with budgets inside the feasible range, below the minimum and above the maximum:
 * the optimum must equal GLPK's (glp_simplex + glp_intopt with presolve) to 1e-9 relative, our choice
 * must be feasible and proven optimal; infeasible budgets must fail with the minimum in the message.
 * Also: determinism under a shuffled group order (the same choice per group), the tying helper (against brute force),
 * the r < 1 trade-off sweep, the per-layer baseline, a case the greedy gets wrong, and bad instances. */
#include <glpk.h>
#include <inttypes.h>

#include "alloc.h"
#include "rng.h"
#include "testutil.h"

typedef struct {
    int G;
    int *first;
    mp_option *opt;
} inst;

static void inst_free(inst *x)
{
    free(x->first);
    free(x->opt);
}

static mp_mckp view(const inst *x) { return (mp_mckp){x->G, x->first, x->opt}; }

static int64_t min_total(const inst *x)
{
    int64_t s = 0;
    for (int g = 0; g < x->G; g++) {
        int64_t m = INT64_MAX;
        for (int j = x->first[g]; j < x->first[g + 1]; j++)
            m = x->opt[j].bytes < m ? x->opt[j].bytes : m;
        s += m;
    }
    return s;
}

/* every group at its lowest-loss option (the fewest bytes among equal losses): budgets above are not binding */
static int64_t useful_total(const inst *x)
{
    int64_t s = 0;
    for (int g = 0; g < x->G; g++) {
        int m = x->first[g];
        for (int j = x->first[g]; j < x->first[g + 1]; j++)
            if (x->opt[j].loss < x->opt[m].loss ||
                (x->opt[j].loss == x->opt[m].loss && x->opt[j].bytes < x->opt[m].bytes))
                m = j;
        s += x->opt[m].bytes;
    }
    return s;
}

static int64_t max_total(const inst *x)
{
    int64_t s = 0;
    for (int g = 0; g < x->G; g++) {
        int64_t m = 0;
        for (int j = x->first[g]; j < x->first[g + 1]; j++)
            m = x->opt[j].bytes > m ? x->opt[j].bytes : m;
        s += m;
    }
    return s;
}

/* GLPK: binary x_j, sum_{j in g} x_j = 1, sum b_j x_j <= budget, min sum l_j x_j.
   Returns 1 and the optimum, 0 when infeasible, -2 when GLPK ran out of time, -1 on a GLPK failure. */
static int glpk_solve(const inst *x, int64_t budget, double *obj)
{
    int G = x->G, N = x->first[G];
    glp_prob *lp = glp_create_prob();
    glp_set_obj_dir(lp, GLP_MIN);
    glp_add_rows(lp, G + 1);
    for (int g = 0; g < G; g++)
        glp_set_row_bnds(lp, g + 1, GLP_FX, 1.0, 1.0);
    glp_set_row_bnds(lp, G + 1, GLP_UP, 0.0, (double)budget);
    glp_add_cols(lp, N);
    int *ia = malloc(sizeof(int) * (size_t)(2 * N + 1)), *ja = malloc(sizeof(int) * (size_t)(2 * N + 1));
    double *ar = malloc(sizeof(double) * (size_t)(2 * N + 1));
    int k = 1;
    for (int g = 0; g < G; g++)
        for (int j = x->first[g]; j < x->first[g + 1]; j++) {
            glp_set_col_kind(lp, j + 1, GLP_BV);
            glp_set_obj_coef(lp, j + 1, x->opt[j].loss);
            ia[k] = g + 1, ja[k] = j + 1, ar[k] = 1.0, k++;
            ia[k] = G + 1, ja[k] = j + 1, ar[k] = (double)x->opt[j].bytes, k++;
        }
    glp_load_matrix(lp, 2 * N, ia, ja, ar);
    glp_smcp sp;
    glp_init_smcp(&sp);
    sp.msg_lev = GLP_MSG_OFF;
    glp_iocp ip;
    glp_init_iocp(&ip);
    ip.msg_lev = GLP_MSG_OFF;
    ip.presolve = GLP_ON;
    ip.tol_obj = 1e-12;
    ip.tm_lim = 20000; /* ms; symmetric instances (identical groups) can take GLPK long */
    int res = -1;
    int rs = glp_simplex(lp, &sp);
    if (rs == 0 && glp_get_status(lp) == GLP_NOFEAS) {
        res = 0;
    } else {
        int ri = glp_intopt(lp, &ip);
        int st = glp_mip_status(lp);
        if (ri == 0 && st == GLP_OPT) {
            *obj = glp_mip_obj_val(lp);
            res = 1;
        } else if (ri == GLP_ENOPFS || st == GLP_NOFEAS) {
            res = 0;
        } else if (ri == GLP_ETMLIM) {
            res = -2;
        }
    }
    glp_delete_prob(lp);
    free(ia);
    free(ja);
    free(ar);
    return res;
}

/* kinds of random instances */
enum { K_CONT, K_CONVEX, K_TIES, K_DUPS, K_LATTICE, K_COUNT };
static const char *kind_name[] = {"continuous", "convex", "ties", "duplicates", "lattice"};

static void make_instance(mp_rng *r, int kind, int G, int maxn, inst *x)
{
    x->G = G;
    x->first = malloc(sizeof(int) * (size_t)(G + 1));
    x->opt = malloc(sizeof(mp_option) * (size_t)(G * maxn + 1));
    int n = 0;
    x->first[0] = 0;
    static const double bits[] = {2, 2.25, 2.5, 3, 3.25, 4, 4.25, 8, 16};
    for (int g = 0; g < G; g++) {
        int ng = 1 + (int)(mp_rng_uniform(r) * maxn);
        if (kind == K_DUPS && g > 0 && mp_rng_uniform(r) < 0.5) {
            int src = (int)(mp_rng_uniform(r) * g), a = x->first[src], m = x->first[src + 1] - a;
            memcpy(x->opt + n, x->opt + a, sizeof(mp_option) * (size_t)m);
            n += m;
            x->first[g + 1] = n;
            continue;
        }
        double scale = 0.5 + 2 * mp_rng_uniform(r);
        int64_t size = 100 + (int64_t)(mp_rng_uniform(r) * 4) * 50; /* "weights" of the block */
        for (int k = 0; k < ng; k++) {
            mp_option *o = &x->opt[n++];
            o->tag = k;
            o->cost = 1 + 9 * mp_rng_uniform(r);
            switch (kind) {
            case K_CONT:
            case K_DUPS:
                o->bytes = (int64_t)(mp_rng_uniform(r) * 100);
                o->loss = 10 * mp_rng_uniform(r);
                break;
            case K_CONVEX: {
                double b = 5 + 100 * mp_rng_uniform(r);
                o->bytes = (int64_t)b;
                o->loss = scale * 100 / b * (0.8 + 0.4 * mp_rng_uniform(r));
                break;
            }
            case K_TIES:
                o->bytes = 10 * (1 + (int64_t)(mp_rng_uniform(r) * 5));
                o->loss = (double)(int)(mp_rng_uniform(r) * 5);
                break;
            default: { /* formats on a 0.25-bit lattice: bytes = bits * size / 4; loss ~ 2^-bits (not 4^-bits: GLPK's
                     tolerances, 1e-7, would blur the differences between the 8- and 16-bit options) */
                double bt = bits[(int)(mp_rng_uniform(r) * 9)];
                o->bytes = (int64_t)(bt * (double)size / 4);
                o->loss = scale * size * pow(2.0, -bt) * (0.9 + 0.2 * mp_rng_uniform(r));
                o->cost = (double)o->bytes / 100 + 0.5 * mp_rng_uniform(r);
                break;
            }
            }
        }
        x->first[g + 1] = n;
    }
}

static int feasible_choice(const inst *x, const int *choice, int64_t budget, double *loss)
{
    double l = 0;
    int64_t b = 0;
    for (int g = 0; g < x->G; g++) {
        int n = x->first[g + 1] - x->first[g];
        if (choice[g] < 0 || choice[g] >= n)
            return 0;
        l += x->opt[x->first[g] + choice[g]].loss;
        b += x->opt[x->first[g] + choice[g]].bytes;
    }
    *loss = l;
    return b <= budget;
}

/* 1 if two groups have the same multiset of (bytes, loss, cost, tag) */
static int cmp_opt_q(const void *a, const void *b)
{
    const mp_option *x = a, *y = b;
    if (x->bytes != y->bytes)
        return x->bytes < y->bytes ? -1 : 1;
    if (x->loss != y->loss)
        return x->loss < y->loss ? -1 : 1;
    if (x->cost != y->cost)
        return x->cost < y->cost ? -1 : 1;
    return (x->tag > y->tag) - (x->tag < y->tag);
}

static int has_identical_groups(const inst *x)
{
    int N = x->first[x->G];
    mp_option *s = malloc(sizeof(mp_option) * (size_t)(N + 1));
    memcpy(s, x->opt, sizeof(mp_option) * (size_t)N);
    for (int g = 0; g < x->G; g++)
        qsort(s + x->first[g], (size_t)(x->first[g + 1] - x->first[g]), sizeof(mp_option), cmp_opt_q);
    int dup = 0;
    for (int a = 0; a < x->G && !dup; a++)
        for (int b = a + 1; b < x->G && !dup; b++) {
            int na = x->first[a + 1] - x->first[a];
            if (na != x->first[b + 1] - x->first[b])
                continue;
            int same = 1;
            for (int k = 0; k < na && same; k++)
                same = cmp_opt_q(&s[x->first[a] + k], &s[x->first[b] + k]) == 0;
            dup = same;
        }
    free(s);
    return dup;
}

/* the same groups in a random order: y's group k is x's group perm[k] */
static void shuffle_groups(mp_rng *r, const inst *x, inst *y, int *perm)
{
    int G = x->G;
    for (int g = 0; g < G; g++)
        perm[g] = g;
    for (int g = G - 1; g > 0; g--) {
        int k = (int)(mp_rng_uniform(r) * (g + 1));
        int t = perm[g];
        perm[g] = perm[k];
        perm[k] = t;
    }
    y->G = G;
    y->first = malloc(sizeof(int) * (size_t)(G + 1));
    y->opt = malloc(sizeof(mp_option) * (size_t)(x->first[G] + 1));
    int n = 0;
    y->first[0] = 0;
    for (int k = 0; k < G; k++) {
        int a = x->first[perm[k]], m = x->first[perm[k] + 1] - a;
        memcpy(y->opt + n, x->opt + a, sizeof(mp_option) * (size_t)m);
        n += m;
        y->first[k + 1] = n;
    }
}

static int n_glpk_timeout = 0, n_compared = 0, n_infeasible = 0, n_above = 0, n_exact_needed = 0, n_perm_checked = 0;
static int64_t max_states_seen = 0;

/* our solver vs GLPK on one instance and budget */
static void compare(mp_rng *r, const inst *x, int64_t budget, const char *what)
{
    mp_mckp p = view(x);
    int *choice = malloc(sizeof(int) * (size_t)(x->G + 1));
    mp_mckp_report rep;
    mp_error_clear();
    int rc = mp_mckp_solve(&p, budget, NULL, choice, &rep);
    double ref = 0;
    int gr = glpk_solve(x, budget, &ref);
    if (gr == -2) {
        n_glpk_timeout++;
        fprintf(stderr, "  %s: GLPK ran out of time; not compared\n", what);
        free(choice);
        return;
    }
    CHECK(gr >= 0);
    if (gr == 0) {
        n_infeasible++;
        char need[64];
        snprintf(need, sizeof need, "minimum feasible total is %" PRId64 " bytes", min_total(x));
        CHECK(rc == MP_EUSAGE);
        CHECK(strstr(mp_error_message(), need) != NULL);
        CHECK(rep.min_bytes == min_total(x));
        if (rc != MP_EUSAGE || !strstr(mp_error_message(), need))
            fprintf(stderr, "  %s: budget %" PRId64 ": %s\n", what, budget, mp_error_message());
        free(choice);
        return;
    }
    CHECK_OK(rc);
    if (rc == 0) {
        double loss = NAN;
        n_compared++;
        CHECK(feasible_choice(x, choice, budget, &loss));
        CHECK(rep.optimal == 1 && rep.gap == 0 && rep.hit_limit == 0);
        CHECK(fabs(loss - rep.objective) <= 1e-12 * (1 + fabs(loss)));
        CHECK(rep.bytes <= budget);
        CHECK(rep.lp_bound <= rep.objective + 1e-9 * (1 + fabs(rep.objective)));
        int ok = fabs(rep.objective - ref) <= 1e-9 * fabs(ref) + 1e-12;
        CHECK(ok);
        if (!ok)
            fprintf(stderr, "  %s: budget %" PRId64 ": ours %.17g, GLPK %.17g (heuristic %.17g, lp %.17g)\n", what,
                    budget, rep.objective, ref, rep.heuristic_objective, rep.lp_bound);
        if (rep.unconstrained) {
            n_above++;
            CHECK(budget >= rep.max_bytes);
        }
        if (rep.objective < rep.heuristic_objective - 1e-12 * fabs(rep.heuristic_objective))
            n_exact_needed++;
        if (rep.states > max_states_seen)
            max_states_seen = rep.states;
        /* the same instance with its groups shuffled: same objective bits, same choice per group */
        inst y;
        int *perm = malloc(sizeof(int) * (size_t)(x->G + 1)), *c2 = malloc(sizeof(int) * (size_t)(x->G + 1));
        shuffle_groups(r, x, &y, perm);
        mp_mckp q = view(&y);
        mp_mckp_report rep2;
        CHECK_OK(mp_mckp_solve(&q, budget, NULL, c2, &rep2));
        CHECK(fabs(rep2.objective - rep.objective) <= 1e-13 * fabs(rep.objective));
        if (!has_identical_groups(x)) {
            int same = 1;
            for (int k = 0; k < x->G; k++)
                same &= c2[k] == choice[perm[k]];
            CHECK(same);
            n_perm_checked++;
        }
        inst_free(&y);
        free(perm);
        free(c2);
    }
    free(choice);
}

static void test_random_vs_glpk(int n_random, uint64_t seed)
{
    mp_rng r;
    mp_rng_seed(&r, seed);
    int count[K_COUNT] = {0};
    for (int t = 0; t < n_random; t++) {
        int kind = t % K_COUNT;
        int G = 1 + (int)(mp_rng_uniform(&r) * 30), maxn = 1 + (int)(mp_rng_uniform(&r) * 6);
        if (kind == K_LATTICE)
            maxn = 3 + (int)(mp_rng_uniform(&r) * 6);
        inst x;
        make_instance(&r, kind, G, maxn, &x);
        int64_t lo = min_total(&x), hi = useful_total(&x), budget;
        double u = mp_rng_uniform(&r);
        if (t % 10 == 3)
            budget = lo - 1 - (int64_t)(u * 20); /* infeasible */
        else if (t % 10 == 7)
            budget = (t % 20 == 7 ? max_total(&x) : hi) + (int64_t)(u * 20); /* above everything */
        else
            budget = lo + (int64_t)(u * (double)(hi - lo));
        char what[64];
        snprintf(what, sizeof what, "instance %d (%s, %d groups)", t, kind_name[kind], G);
        compare(&r, &x, budget, what);
        count[kind]++;
        inst_free(&x);
    }
    /* larger lattice instances: cores of tens of groups */
    for (int t = 0; t < 12; t++) {
        inst x;
        int G = 40 + 20 * t;
        make_instance(&r, K_LATTICE, G, 9, &x);
        int64_t lo = min_total(&x), hi = useful_total(&x);
        int64_t budget = lo + (int64_t)((0.15 + 0.2 * (t % 4)) * (double)(hi - lo));
        char what[64];
        snprintf(what, sizeof what, "large lattice instance %d (%d groups)", t, G);
        compare(&r, &x, budget, what);
        inst_free(&x);
    }
    printf("vs GLPK: %d optimal values equal (%d of them above the maximum budget), %d infeasible budgets "
           "reported with their minimum; the exact phase improved on the greedy in %d; %d shuffled-order "
           "choices compared; most DP states in one solve: %" PRId64 "; GLPK timeouts: %d\n",
           n_compared, n_above, n_infeasible, n_exact_needed, n_perm_checked, max_states_seen, n_glpk_timeout);
    CHECK(n_compared + n_infeasible >= 50);
    CHECK(n_infeasible >= 10 && n_above >= 10 && n_exact_needed >= 5);
}

/* the greedy (LP prefix + fill + improvement) gives 11; the optimum is 10 */
static void test_greedy_not_optimal(void)
{
    int first[] = {0, 2, 5};
    mp_option opt[] = {{10, 0, 0, 0}, {1, 0, 6, 1}, {10, 0, 0, 0}, {4, 0, 5, 1}, {0, 0, 10, 2}};
    inst x = {2, first, opt};
    mp_mckp p = view(&x);
    int choice[2];
    mp_mckp_report rep;
    CHECK_OK(mp_mckp_solve(&p, 10, NULL, choice, &rep));
    CHECK_NEAR(rep.heuristic_objective, 11, 0);
    CHECK_NEAR(rep.objective, 10, 0);
    CHECK(rep.optimal && choice[0] == 0 && choice[1] == 2);
    CHECK_NEAR(rep.lambda, 1.2, 1e-15);
    CHECK_NEAR(rep.lp_bound, 1 + 10 - 1.2 * 4, 1e-12);
    double ref;
    CHECK(glpk_solve(&x, 10, &ref) == 1);
    CHECK_NEAR(ref, 10, 1e-9);
    /* without the exact phase the gap is reported from the LP bound */
    mp_mckp_opts o;
    mp_mckp_opts_default(&o);
    o.max_states = 0;
    CHECK_OK(mp_mckp_solve(&p, 10, &o, choice, &rep));
    CHECK(!rep.optimal && rep.hit_limit);
    CHECK_NEAR(rep.objective, 11, 0);
    CHECK_NEAR(rep.lower_bound, 6.2, 1e-12);
    CHECK_NEAR(rep.gap, 4.8, 1e-12);
}

static void test_edges(void)
{
    int choice[4];
    mp_mckp_report rep;
    /* empty instance */
    mp_mckp e = {0, NULL, NULL};
    CHECK_OK(mp_mckp_solve(&e, 0, NULL, choice, &rep));
    CHECK(rep.objective == 0 && rep.optimal);
    /* ties: equal bytes and losses everywhere -> the lowest index; dominated duplicates */
    int first[] = {0, 3, 6};
    mp_option opt[] = {{1, 0, 5, 0}, {1, 0, 5, 1}, {1, 0, 5, 2}, {2, 0, 5, 0}, {1, 0, 5, 1}, {1, 0, 9, 2}};
    mp_mckp p = {2, first, opt};
    CHECK_OK(mp_mckp_solve(&p, 10, NULL, choice, &rep));
    CHECK(choice[0] == 0 && choice[1] == 1 && rep.objective == 2 && rep.bytes == 10);
    CHECK(rep.n_pareto == 2 && rep.unconstrained);
    /* infeasible: the message gives the minimum */
    CHECK_ERR(mp_mckp_solve(&p, 9, NULL, choice, &rep), MP_EUSAGE, "minimum feasible total is 10 bytes");
    /* bad instances */
    mp_option bad[] = {{NAN, 0, 1, 0}, {1, 0, 1, 0}};
    int f2[] = {0, 1, 2};
    mp_mckp q = {2, f2, bad};
    CHECK_ERR(mp_mckp_solve(&q, 10, NULL, choice, &rep), MP_EUSAGE, "block 0 option 0: loss nan");
    bad[0].loss = 1;
    bad[1].bytes = -4;
    CHECK_ERR(mp_mckp_solve(&q, 10, NULL, choice, &rep), MP_EUSAGE, "block 1 option 0: negative size");
    int f3[] = {0, 1, 1};
    q.first = f3;
    CHECK_ERR(mp_mckp_solve(&q, 10, NULL, choice, &rep), MP_EUSAGE, "block 1 has no options");
    bad[0].cost = -1;
    q.first = f2;
    CHECK_ERR(mp_mckp_solve(&q, 10, NULL, choice, &rep), MP_EUSAGE, "block 0 option 0: cost -1");
}

/* brute force over the original instance with tied pairs forced to equal tags */
static double brute_tied(const inst *x, const int *ties, int n_ties, int64_t budget)
{
    int G = x->G, idx[16] = {0};
    double best = INFINITY;
    for (;;) {
        int ok = 1;
        double l = 0;
        int64_t b = 0;
        for (int k = 0; k < n_ties; k++)
            ok &= x->opt[x->first[ties[2 * k]] + idx[ties[2 * k]]].tag ==
                  x->opt[x->first[ties[2 * k + 1]] + idx[ties[2 * k + 1]]].tag;
        for (int g = 0; g < G; g++) {
            l += x->opt[x->first[g] + idx[g]].loss;
            b += x->opt[x->first[g] + idx[g]].bytes;
        }
        if (ok && b <= budget && l < best)
            best = l;
        int g = 0;
        while (g < G && ++idx[g] == x->first[g + 1] - x->first[g])
            idx[g++] = 0;
        if (g == G)
            break;
    }
    return best;
}

static void test_tying(void)
{
    /* structure: gate {w2 (tag 2), w4 (tag 4), fp16 (16)} and up {w4, w3 (3), fp16}: pairs w4, fp16 */
    int first[] = {0, 3, 6, 7};
    mp_option opt[] = {{5, 1, 10, 2}, {2, 2, 20, 4},  {0, 4, 80, 16}, {4, 1, 20, 4},
                       {6, 1, 15, 3}, {0, 4, 80, 16}, {1, 1, 7, 9}};
    mp_mckp p = {3, first, opt};
    int ties[] = {0, 1};
    mp_mckp_tied t;
    CHECK_OK(mp_mckp_tie(&p, 1, ties, &t));
    CHECK(t.p.n_groups == 2 && t.first[1] == 2 && t.first[2] == 3);
    CHECK(t.opt[0].tag == 4 && t.opt[0].bytes == 40 && t.opt[0].loss == 6 && t.opt[0].cost == 3);
    CHECK(t.opt[1].tag == 16 && t.opt[1].bytes == 160 && t.opt[1].loss == 0 && t.opt[1].cost == 8);
    CHECK(t.option_of[0] == 1 && t.option_of[1] == 0 && t.option_of[2] == 2 && t.option_of[3] == 2);
    CHECK(t.group_of[0] == 0 && t.group_of[1] == 1 && t.group_of[2] == 2 && t.group_of[3] == -1);
    int tc[2], c[3];
    mp_mckp_report rep;
    CHECK_OK(mp_mckp_solve(&t.p, 100, NULL, tc, &rep));
    mp_mckp_untie(&t, tc, c);
    CHECK(c[0] == 1 && c[1] == 0 && c[2] == 0 && rep.objective == 7);
    mp_mckp_tied_free(&t);
    /* errors */
    int bad1[] = {0, 1, 1, 2};
    CHECK_ERR(mp_mckp_tie(&p, 2, bad1, &t), MP_EUSAGE, "block 1 is in two pairs");
    int bad2[] = {0, 2};
    CHECK_ERR(mp_mckp_tie(&p, 1, bad2, &t), MP_EUSAGE, "blocks 0 and 2 have no format (tag) in common");
    int bad3[] = {1, 1};
    CHECK_ERR(mp_mckp_tie(&p, 1, bad3, &t), MP_EUSAGE, "not two different blocks");

    /* random: tied optimum = brute force with equal tags; the untied choice respects the ties */
    mp_rng r;
    mp_rng_seed(&r, 99);
    int checked = 0;
    for (int it = 0; it < 40; it++) {
        inst x;
        make_instance(&r, it % 2 ? K_LATTICE : K_CONVEX, 6, 4, &x);
        for (int j = 0; j < x.first[6]; j++)
            x.opt[j].tag = (int)(mp_rng_uniform(&r) * 3);
        int tz[] = {0, 1, 4, 2};
        int64_t budget = min_total(&x) + (int64_t)(0.5 * (double)(max_total(&x) - min_total(&x)));
        double ref = brute_tied(&x, tz, 2, budget);
        mp_mckp px = view(&x);
        mp_error_clear();
        int rc = mp_mckp_tie(&px, 2, tz, &t);
        if (rc < 0) {
            CHECK(rc == MP_EUSAGE && strstr(mp_error_message(), "no format (tag) in common"));
            inst_free(&x);
            continue;
        }
        int tch[6], ch[6];
        rc = mp_mckp_solve(&t.p, budget, NULL, tch, &rep);
        if (isinf(ref)) {
            CHECK(rc == MP_EUSAGE);
        } else {
            CHECK_OK(rc);
            mp_mckp_untie(&t, tch, ch);
            double l = NAN;
            CHECK(feasible_choice(&x, ch, budget, &l));
            CHECK(fabs(l - ref) <= 1e-12 * ref);
            CHECK(x.opt[x.first[0] + ch[0]].tag == x.opt[x.first[1] + ch[1]].tag);
            CHECK(x.opt[x.first[4] + ch[4]].tag == x.opt[x.first[2] + ch[2]].tag);
            checked++;
        }
        mp_mckp_tied_free(&t);
        inst_free(&x);
    }
    printf("tying: %d random instances equal to brute force\n", checked);
    CHECK(checked >= 20);
}

static void test_tradeoff(void)
{
    mp_rng r;
    mp_rng_seed(&r, 7);
    int better = 0;
    for (int it = 0; it < 20; it++) {
        inst x;
        make_instance(&r, K_LATTICE, 25, 8, &x);
        mp_mckp p = view(&x);
        int64_t budget = min_total(&x) + (int64_t)(0.3 * (double)(max_total(&x) - min_total(&x)));
        int c1[25], ch[25];
        mp_mckp_report r1, rr;
        CHECK_OK(mp_mckp_solve(&p, budget, NULL, c1, &r1));
        for (double rt = 0; rt < 1; rt += 0.25) {
            CHECK_OK(mp_mckp_solve_tradeoff(&p, budget, rt, NULL, ch, &rr));
            double l;
            CHECK(feasible_choice(&x, ch, budget, &l));
            double L1 = r1.objective, T1 = r1.cost;
            double v1 = (rt > 0 ? rt * log(L1) : 0) + (1 - rt) * log(T1);
            CHECK(rr.log_objective <= v1);
            CHECK(rr.sweep_points >= (rt > 0 ? 17 : 1));
            better += rr.log_objective < v1 - 1e-12;
            if (rt == 0) {
                /* r = 0: the least total cost, as GLPK finds it with the costs as losses */
                inst y = x;
                y.opt = malloc(sizeof(mp_option) * (size_t)x.first[x.G]);
                for (int j = 0; j < x.first[x.G]; j++)
                    y.opt[j] = x.opt[j], y.opt[j].loss = x.opt[j].cost;
                double ref;
                CHECK(glpk_solve(&y, budget, &ref) == 1);
                CHECK(fabs(rr.cost - ref) <= 1e-9 * ref);
                free(y.opt);
            }
        }
        inst_free(&x);
    }
    printf("trade-off: the sweep beat the r = 1 solution in the log objective in %d of 80 cases\n", better);
    CHECK(better > 0);
    int first[] = {0, 1};
    mp_option o = {1, 1, 1, 0};
    mp_mckp p = {1, first, &o};
    int c;
    CHECK_ERR(mp_mckp_solve_tradeoff(&p, 1, 1.5, NULL, &c, NULL), MP_EUSAGE, "r = 1.5 is not in [0, 1]");
}

static void test_per_layer(void)
{
    mp_rng r;
    mp_rng_seed(&r, 11);
    for (int it = 0; it < 10; it++) {
        /* every group gets the same 9 formats so that each layer's share is feasible */
        int *first = malloc(sizeof(int) * 25);
        mp_option *opt = malloc(sizeof(mp_option) * 24 * 9);
        static const double bits[] = {2, 2.25, 2.5, 3, 3.25, 4, 4.25, 8, 16};
        int layer[24];
        for (int g = 0; g < 24; g++) {
            first[g] = 9 * g;
            layer[g] = g / 6;
            double scale = (1 + 3 * (g / 6)) * (0.5 + mp_rng_uniform(&r));
            for (int k = 0; k < 9; k++)
                opt[9 * g + k] = (mp_option){scale * pow(2.0, -bits[k]) * (0.9 + 0.2 * mp_rng_uniform(&r)), 0,
                                             (int64_t)(bits[k] * 100), k};
        }
        first[24] = 24 * 9;
        inst y = {24, first, opt};
        mp_mckp p = view(&y);
        int64_t budget = (int64_t)(3.25 * 100 * 24);
        int cg[24], cl[24];
        mp_mckp_report rg, rl;
        CHECK_OK(mp_mckp_solve_per_layer(&p, layer, NULL, budget, NULL, cl, &rl));
        CHECK_OK(mp_mckp_solve(&p, rl.bytes, NULL, cg, &rg));
        /* each layer within its share (a quarter), and the global allocation no worse at equal bytes */
        for (int l = 0; l < 4; l++) {
            int64_t b = 0;
            for (int g = 6 * l; g < 6 * l + 6; g++)
                b += opt[first[g] + cl[g]].bytes;
            CHECK(b <= budget / 4);
        }
        CHECK(rl.optimal && rg.objective <= rl.objective);
        double ref = NAN;
        CHECK(glpk_solve(&y, rl.bytes, &ref) == 1);
        CHECK(fabs(rg.objective - ref) <= 1e-9 * ref);
        free(first);
        free(opt);
    }
}

/* usage: test_alloc [N_RANDOM [SEED]]  (default 300 random instances, seed 20240601) */
int main(int argc, char **argv)
{
    glp_term_out(GLP_OFF);
    int n_random = argc > 1 ? atoi(argv[1]) : 300;
    uint64_t seed = argc > 2 ? strtoull(argv[2], NULL, 10) : 20240601;
    test_edges();
    test_greedy_not_optimal();
    test_random_vs_glpk(n_random, seed);
    test_tying();
    test_tradeoff();
    test_per_layer();
    return t_done("test_alloc");
}
