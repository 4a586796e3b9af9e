/* bench_alloc.c - the MCKP allocator (src/alloc.h) on a model-sized instance: 58 layers x 256 experts x
 * 3 projections = 44,544 blocks x 20 options = 890,880 options (DeepSeek-V3's MoE shape, [2048, 7168] per
 * projection). Options are 20 formats from 2 to 16 bits per weight; a block's loss is its sensitivity
 * (log-normal per layer, expert and projection) times 4^-bits with 30 % multiplicative noise, so the tables
 * are convex-ish but not convex; the budget is 3.25 bits per weight.
 *   instance A: every block of the same shape (bytes identical across blocks, as in a real MoE);
 *   instance B: the same with each block's bytes scaled by a random factor in [0.9, 1.1] (no common lattice:
 *               harder for the exact phase);
 *   instance C: adversarial - random bytes per option and a loss almost linear in bytes (every option
 *               within 0.1 % of one slope), so that nearly every block is in the exact phase's core, which
 *               stops at its work limit and reports the gap.
 * Reported: solve time (best of 3), the LP-greedy-only time (exact phase off), the gap, the exact phase's
 * size, and the ratio of the solve time to one qsort of the 890,880 option slopes measured in the same run.
 * usage: bench_alloc [LAYERS EXPERTS [BITS]]  (default 58 256 3.25) */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "error.h"
#include "rng.h"

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

#define NOPT 20
static const double BITS[NOPT] = {2.0, 2.125, 2.25, 2.5, 2.75, 3.0, 3.125, 3.25, 3.5, 3.75,
                                  4.0, 4.125, 4.25, 4.5, 5.0,  5.5, 6.0,   6.5,  8.0, 16.0};

static double BUDGET_BITS = 3.25;

static void build(int layers, int experts, int jitter, int *first, mp_option *opt, int64_t *budget)
{
    if (jitter == 2) {
        mp_rng r;
        mp_rng_seed(&r, 77);
        int G = layers * experts * 3, n = 0;
        int64_t lo = 0, hi = 0;
        for (int g = 0; g < G; g++) {
            first[g] = n;
            int64_t mn = INT64_MAX, mx = 0;
            for (int k = 0; k < NOPT; k++) {
                mp_option *o = &opt[n++];
                o->bytes = 1000000 + (int64_t)(mp_rng_uniform(&r) * 3000000);
                o->loss = (4e6 - (double)o->bytes) * 1e-6 * (1 + 1e-3 * mp_rng_uniform(&r));
                o->cost = 0;
                o->tag = k;
                mn = o->bytes < mn ? o->bytes : mn;
                mx = o->bytes > mx ? o->bytes : mx;
            }
            lo += mn;
            hi += mx;
        }
        first[G] = n;
        *budget = lo + (hi - lo) / 2;
        return;
    }
    mp_rng r;
    mp_rng_seed(&r, 2025);
    const double weights = 2048.0 * 7168.0;
    int G = layers * experts * 3, n = 0;
    double total_w = 0;
    for (int l = 0; l < layers; l++) {
        double sl = exp(1.0 * mp_rng_normal(&r));
        for (int e = 0; e < experts; e++) {
            double se = exp(0.7 * mp_rng_normal(&r));
            for (int p = 0; p < 3; p++) {
                int g = (l * experts + e) * 3 + p;
                double sp = (p == 2 ? 1.5 : 1.0) * exp(0.3 * mp_rng_normal(&r));
                double w = jitter ? weights * (0.9 + 0.2 * mp_rng_uniform(&r)) : weights;
                total_w += w;
                first[g] = n;
                for (int k = 0; k < NOPT; k++) {
                    mp_option *o = &opt[n++];
                    o->bytes = (int64_t)(BITS[k] * w / 8);
                    o->loss = sl * se * sp * 1e-3 * pow(4.0, -BITS[k]) * exp(0.3 * mp_rng_normal(&r));
                    o->cost = (double)o->bytes / 3.35e12;
                    o->tag = k;
                }
            }
        }
    }
    first[G] = n;
    *budget = (int64_t)(BUDGET_BITS * total_w / 8);
}

static void run(const char *name, int layers, int experts, int jitter)
{
    int G = layers * experts * 3, N = G * NOPT;
    int *first = malloc(sizeof(int) * (size_t)(G + 1)), *choice = malloc(sizeof(int) * (size_t)G);
    mp_option *opt = malloc(sizeof(mp_option) * (size_t)N);
    double *slopes = malloc(sizeof(double) * (size_t)N);
    if (!first || !choice || !opt || !slopes) {
        fprintf(stderr, "out of memory\n");
        exit(1);
    }
    int64_t budget;
    build(layers, experts, jitter, first, opt, &budget);
    mp_mckp p = {G, first, opt};
    mp_mckp_opts o;
    mp_mckp_opts_default(&o);
    mp_mckp_report rep, rep0;
    double t_full = 1e30, t_lp = 1e30, t_sort = 1e30;
    for (int it = 0; it < 3; it++) {
        /* reference: one qsort of the option slopes (loss drop per byte from the group's smallest option) */
        for (int g = 0; g < G; g++)
            for (int j = first[g]; j < first[g + 1]; j++)
                slopes[j] = j == first[g]
                                ? 0
                                : (opt[first[g]].loss - opt[j].loss) / (double)(opt[j].bytes - opt[first[g]].bytes);
        double t0 = now();
        qsort(slopes, (size_t)N, sizeof(double), cmp_double);
        double t1 = now();
        t_sort = fmin(t_sort, t1 - t0);
        o.max_states = 0;
        if (mp_mckp_solve(&p, budget, &o, choice, &rep0) < 0) {
            fprintf(stderr, "%s\n", mp_error_message());
            exit(1);
        }
        double t2 = now();
        t_lp = fmin(t_lp, t2 - t1);
        mp_mckp_opts_default(&o);
        if (mp_mckp_solve(&p, budget, &o, choice, &rep) < 0) {
            fprintf(stderr, "%s\n", mp_error_message());
            exit(1);
        }
        t_full = fmin(t_full, now() - t2);
    }
    printf("%s: %d blocks x %d options = %d options, budget %.4g bytes (%.4g bits/weight)\n", name, G, NOPT, N,
           (double)budget, BUDGET_BITS);
    printf("  undominated %lld, on hulls %lld\n", (long long)rep.n_pareto, (long long)rep.n_hull);
    printf("  LP + greedy only: %.3f s = %.2f x qsort; gap %.3g (relative %.3g)\n", t_lp, t_lp / t_sort, rep0.gap,
           rep0.rel_gap);
    printf("  full solve:       %.3f s = %.2f x qsort; objective %.10g, lower bound %.10g, gap %.3g "
           "(relative %.3g), %s; exact phase: %d core blocks, %lld states%s\n",
           t_full, t_full / t_sort, rep.objective, rep.lower_bound, rep.gap, rep.rel_gap,
           rep.optimal ? "proven optimal" : "not proven", rep.core_groups, (long long)rep.states,
           rep.hit_limit ? " (hit the limit)" : "");
    printf("  bytes used %lld of %lld (%.6f %%); qsort of %d slopes: %.3f s\n", (long long)rep.bytes, (long long)budget,
           100.0 * (double)rep.bytes / (double)budget, N, t_sort);
    free(first);
    free(choice);
    free(opt);
    free(slopes);
}

int main(int argc, char **argv)
{
    int layers = argc > 2 ? atoi(argv[1]) : 58, experts = argc > 2 ? atoi(argv[2]) : 256;
    if (argc > 3)
        BUDGET_BITS = atof(argv[3]);
    run("A (equal shapes)", layers, experts, 0);
    run("B (bytes jittered per block)", layers, experts, 1);
    run("C (adversarial: near-linear losses)", layers, experts, 2);
    return 0;
}
