/* alloc.h - the global allocator: a multiple-choice knapsack (MCKP) solver.
 *
 * Problem. G groups (one per block of the model); group g has n_g >= 1 options,
 * each with a loss l >= 0, a size in bytes b >= 0, a cost t >= 0 (predicted
 * time, used only by the accuracy-speed trade-off) and an integer tag (the
 * format id, used only by the tying helper). Choose exactly one option per
 * group and minimise the total loss subject to total bytes <= budget.
 * Options are stored flat: group g's options are opt[first[g] .. first[g+1]),
 * and a choice is given as the option's index within its group (0 .. n_g-1).
 *
 * Method (mp_mckp_solve).
 *  1. Per group: sort the options by (bytes, loss); drop dominated ones (an
 *     option is dominated by one with no more bytes and no more loss); take the
 *     lower convex hull of the rest in the (bytes, loss) plane.
 *  2. LP relaxation, solved exactly by the greedy on hull increments sorted by
 *     efficiency -dl/db (Dyer / Zemel): it gives the lower bound, the dual
 *     price lambda of one byte (the efficiency of the split increment) and an
 *     integer solution (the greedy prefix).
 *  3. Heuristic upper bound: the greedy continued past the split increment with
 *     the increments that still fit, then one pass that moves every group to its
 *     lowest-loss option (hull or not) that fits into the bytes left.
 *  4. Exact phase (core problem, in the spirit of Pisinger's mcknap): with the
 *     reduced costs rc = l + lambda*b - (that of the group's LP choice), a group
 *     whose cheapest alternative has rc >= upper - lower bound cannot change in
 *     any better solution. The others are added one at a time, in increasing
 *     order of that rc, to a dynamic programme over partial solutions (total
 *     bytes, total loss), keeping only undominated states whose Lagrangian
 *     bound loss + lambda*(bytes - budget) (+ the next group's rc) is below the
 *     incumbent. When no state survives, the incumbent is optimal. The phase
 *     stops early only at a deterministic work limit (states created,
 *     opts.max_states); the lower bound of the states then alive is reported.
 *
 * Determinism. No threads, no hashing, no clocks: the same instance gives the
 * same choice on every platform and for every rank count (the caller solves on
 * one rank and broadcasts). Groups are processed in a canonical order that
 * depends only on their content (their sorted option lists), so reordering the
 * groups does not change the choice of any group (groups with identical
 * content keep their input order among themselves); totals are summed in
 * group order (mp_mckp_totals), so their last bits may change. Ties are broken as follows: among options of
 * equal bytes and loss, the lower index in its group; among equally good
 * solutions, the one found first (the LP/greedy solution, then the states in
 * the order above, with the lower-bytes option first).
 * alloc.c is compiled with -ffp-contract=off so that no platform fuses
 * multiply-adds differently.
 *
 * Tolerance. "Proven optimal" means no solution is better by more than
 * opts.rel_tol * |objective| (default 1e-12; fp64 sums of losses).
 *
 * Errors (negative MP_E* codes with a message, see error.h): MP_EUSAGE for a
 * malformed instance (empty group, negative or non-finite loss/cost, negative
 * bytes), an infeasible budget (the message gives the minimum feasible bytes)
 * and a tie between groups without a common tag; MP_ENOMEM. All functions are
 * local (no MPI) and do no I/O. */
#ifndef MP_ALLOC_H
#define MP_ALLOC_H

#include <stdint.h>

typedef struct {
    double loss;   /* >= 0, finite */
    double cost;   /* >= 0, finite (predicted time; 0 when unused) */
    int64_t bytes; /* >= 0 */
    int tag;       /* format id: options of tied groups pair up by equal tag */
} mp_option;

typedef struct {
    int n_groups;
    const int *first;     /* [n_groups + 1]: group g is opt[first[g] .. first[g+1]), first[0] = 0 */
    const mp_option *opt; /* [first[n_groups]] */
} mp_mckp;

typedef struct {
    int64_t max_states; /* work limit of the exact phase (DP states created); default 4e6 (~0.2 s), 0 = skip it */
    double rel_tol;     /* optimality tolerance relative to |objective|; default 1e-12 */
    int sweep_points;   /* trade-off sweep: number of mu values besides mu = 0; default 16 */
} mp_mckp_opts;

typedef struct {
    double objective;           /* total loss of the returned choice (as mp_mckp_totals sums it) */
    double lower_bound;         /* proven lower bound of the optimum (= objective when proven optimal) */
    double gap;                 /* objective - lower_bound, >= 0 */
    double rel_gap;             /* gap / objective (0 when the objective is 0) */
    int optimal;                /* 1: proven optimal (within rel_tol) */
    int unconstrained;          /* 1: the budget holds every group's lowest-loss option (returned as is) */
    int64_t bytes;              /* total bytes of the choice */
    double cost;                /* total cost of the choice */
    int64_t min_bytes;          /* smallest feasible total (every group at its smallest option) */
    int64_t max_bytes;          /* total of every group's lowest-loss option (budgets above it are not binding) */
    double lambda;              /* LP dual price: loss per byte at the budget (0 when unconstrained) */
    double lp_bound;            /* the LP relaxation's value */
    double heuristic_objective; /* the greedy + fill solution's loss, before the exact phase */
    int64_t n_options, n_pareto, n_hull; /* options: given, undominated, on the lower convex hulls */
    int core_groups;                     /* groups the exact phase added to its DP */
    int64_t states;                      /* DP states created */
    int hit_limit;                       /* 1: the exact phase stopped at max_states (gap reported) */
    /* mp_mckp_solve_tradeoff only */
    double mu;            /* weight of the cost in the scalarised loss l + mu*t of the returned choice */
    double log_objective; /* r*log(total loss) + (1-r)*log(total cost) of the returned choice */
    int sweep_points;     /* scalarised problems solved */
} mp_mckp_report;

/* Default options (see mp_mckp_opts). Passing NULL for opts means these. */
void mp_mckp_opts_default(mp_mckp_opts *o);

/* Solve: choice[g] (local option index, [n_groups]) minimises the total loss
 * with total bytes <= budget. A budget below rep->min_bytes is MP_EUSAGE
 * ("... minimum feasible total is N bytes"; rep->min_bytes and rep->max_bytes
 * are filled all the same); a budget >= rep->max_bytes returns
 * every group's lowest-loss option with rep->unconstrained = 1. rep may be NULL.
 * n_groups = 0 is a valid empty instance. */
int mp_mckp_solve(const mp_mckp *p, int64_t budget, const mp_mckp_opts *opts, int *choice, mp_mckp_report *rep);

/* MxMoE's accuracy-speed objective for r in [0, 1]: minimise
 * r*log(sum l) + (1-r)*log(sum t) subject to bytes <= budget. The objective is
 * not separable, so this is a heuristic: it solves the scalarised problems
 * min sum (l + mu*t) exactly (mp_mckp_solve) for mu = 0 (the r = 1 solution),
 * for opts.sweep_points values of mu spaced geometrically over six decades
 * around mu_ref = (1-r)/r * L0/T0 (the weight at which the log objective's
 * gradient matches, from the mu = 0 solution), and for up to 3 fixed-point
 * steps mu <- (1-r)/r * L/T from the best so far; it returns the solution with
 * the lowest log objective (so never worse than the r = 1 solution). r = 1 is
 * mp_mckp_solve; r = 0 minimises the total cost. rep->objective etc. describe
 * the returned choice's total loss; rep->optimal/gap refer to its scalarised
 * problem. */
int mp_mckp_solve_tradeoff(const mp_mckp *p, int64_t budget, double r, const mp_mckp_opts *opts, int *choice,
                           mp_mckp_report *rep);

/* Baseline for comparisons: per-layer allocation. layer[g] is group g's layer
 * id (any ints); each layer gets the share floor(budget * U_l / U) of the
 * budget, U_l the sum of ref_bytes over its groups (the uncompressed bytes;
 * NULL = each group's largest option), and is solved on its own. A layer whose
 * share is below its minimum is MP_EUSAGE naming the layer. rep sums the
 * layers' objectives, bounds and bytes (optimal = all layers optimal). */
int mp_mckp_solve_per_layer(const mp_mckp *p, const int *layer, const int64_t *ref_bytes, int64_t budget,
                            const mp_mckp_opts *opts, int *choice, mp_mckp_report *rep);

/* Tying (quant.tie_gate_up): an instance in which each pair ties[2k], ties[2k+1]
 * of groups of p is one group whose options are the pairs (i, j) of an option
 * i of the first and j of the second with equal tags, in order of i then j,
 * with loss, cost and bytes summed and the common tag. The tied group takes
 * the first group's place; the second group disappears; untied groups keep
 * their order. A group in two pairs, a pair of a group with itself, or a pair
 * without a common tag is MP_EUSAGE naming the groups. Owns its arrays. */
typedef struct {
    mp_mckp p;      /* the tied instance (points into the arrays below) */
    int *first;     /* [p.n_groups + 1] */
    mp_option *opt; /* [first[p.n_groups]] */
    int *group_of;  /* [p.n_groups][2]: the original group(s) of each tied group (second -1 if untied) */
    int *option_of; /* [first[p.n_groups]][2]: original local option indices (second -1 if untied) */
    int n_orig;     /* groups of the original instance */
} mp_mckp_tied;

int mp_mckp_tie(const mp_mckp *p, int n_ties, const int *ties, mp_mckp_tied *out);
/* choice over the tied instance -> choice over the original instance ([n_orig]). */
void mp_mckp_untie(const mp_mckp_tied *t, const int *tied_choice, int *choice);
void mp_mckp_tied_free(mp_mckp_tied *t);

/* Totals of a choice: loss and cost summed in group order; bytes. */
void mp_mckp_totals(const mp_mckp *p, const int *choice, double *loss, double *cost, int64_t *bytes);

#endif
