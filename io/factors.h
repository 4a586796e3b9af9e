/* factors.h - the D2 decomposition's files: its inputs (Fisher weights) and its outputs per layer.
 *
 * layerLLLL/base.h5: base_gate, base_up, base_down fp32 [m, n] and
 *   prune_score fp64 [f] (per intermediate channel of the base).
 * layerLLLL/expertEEEE.h5, per projection p in {gate, up, down}: U_p fp32
 *   [m, r], V_p fp32 [r, n], sigma_p fp64 (the computed spectrum),
 *   candidate_ranks_p fp64 (when the job has candidates), attributes rank_p
 *   (int64), lambda_p and energy_p = ||Delta S||_F^2 (fp64).
 * Files are built in memory (h5util.h) and committed atomically; equal
 * contents give equal bytes. Fisher file (delta.fisher): one float32
 * dataset `layer<L>/expert<E>/<gate|up|down>` [m, n] per expert and
 * projection. Local. */
#ifndef MP_FACTORS_H
#define MP_FACTORS_H
#include <stdint.h>

typedef struct mp_factor_file mp_factor_file;

/* one projection's factors, as written */
typedef struct {
    int64_t rows, cols, rank, k; /* U [rows, rank], V [rank, cols], sigma [k] */
    const float *U, *V;
    const double *sigma;
    double lambda, energy;
    const double *cand_ranks; /* [n_cand] or NULL */
    int n_cand;
} mp_factor_block;

/* An empty expert file in memory. */
int mp_factors_create(mp_factor_file **out);
/* Add projection p (0 gate, 1 up, 2 down). */
int mp_factors_put(mp_factor_file *f, int p, const mp_factor_block *b);
/* Commit to `path` and release f (also on error). */
int mp_factors_save(mp_factor_file *f, const char *path);
void mp_factors_discard(mp_factor_file *f);
/* base.h5 of a layer: base[p] [rows[p], cols[p]], score [f]. */
int mp_base_save(const char *path, float *const base[3], const int64_t rows[3], const int64_t cols[3],
                 const double *score, int64_t f);
/* Projection p of an expert file: its rank, ||Delta S||^2 and the energy the kept rank captures
 * (sum of the first `rank` sigma^2): the whitened truncation loss is energy - kept. */
int mp_factors_read_loss(const char *path, int p, int64_t *rank, double *energy, double *kept);
/* Projection p of an expert file, read whole: U [rows, rank], V [rank, cols] fp32, sigma [k] fp64
 * (malloc'ed; free with mp_factors_data_free), rank, energy (||Delta S||_F^2). rows/cols are checked
 * against the caller's. MP_ENOENT / MP_EFORMAT naming the file and dataset, MP_ENUMERIC for NaN/Inf. */
typedef struct {
    int64_t rank, k;
    float *U, *V;
    double *sigma, energy;
} mp_factors_data;
int mp_factors_read(const char *path, int p, int64_t rows, int64_t cols, mp_factors_data *out);
void mp_factors_data_free(mp_factors_data *d);
/* base_<p> [rows, cols] of a layer's base.h5 into out (checked shape, finite). */
int mp_base_read(const char *path, int p, int64_t rows, int64_t cols, float *out);
/* Rows [lo, hi) of the Fisher weights of expert e, projection p, layer l (dataset [rows, cols]). */
int mp_fisher_read_rows(const char *path, int l, int e, int p, int64_t rows, int64_t cols, int64_t lo, int64_t hi,
                        float *out);

#endif
