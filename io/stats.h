/* stats.h - calibration statistics of one expert, as an HDF5 file.
 *
 * One file per (MoE layer, expert) unit; the shared expert of a layer is unit
 * `expert = n_experts`; the dense MLP of a non-MoE layer is `expert = MP_UNIT_DENSE`
 * (model_config.h), file dense.h5, with f = dense_ffn and every token of the layer. Datasets (fp64 unless noted):
 *   G_in_packed [d (d + 1) / 2]   sum of x x^T over the tokens routed to the
 *                    expert, its upper triangle packed row by row (row i holds
 *                    columns i..d-1: element (i, j), j >= i, at i d - i (i - 1) / 2 + j - i)
 *   G_mid_packed [f (f + 1) / 2]  sum of h h^T, h = silu(W_gate x) * (W_up x), packed alike
 *   h_sq [f]         per-channel sum of h^2 (= diag G_mid)
 *   x_sq [d]         diag G_in
 *   prior_diag_in [d], prior_diag_mid [f]   the layer's average per-token
 *                    diagonal (see mp_stats_regularized)
 *   X_sample fp32 [t, d], H_sample fp32 [t, f], sample_token int64 [t]
 *                    a sample of the routed tokens (calibration.sample_tokens = K):
 *                    of the tokens routed to the expert, the t = min(K, count) with
 *                    the smallest priority XXH64(token, 8 bytes little-endian; seed
 *                    layer * 65537 + expert), ties to the smaller token, stored in
 *                    increasing global token index (sequence * seq_len + position)
 *                    with the expert's input x and intermediate activation h of each;
 *                    empty datasets when t = 0. The choice depends neither on the
 *                    rank count nor on the chunking.
 * and attributes layer, expert, d, f (int64), count (int64: tokens),
 * weight_sum (sum of routing weights), prior_tokens (int64).
 * Files are written under a temporary name and renamed; object timestamps
 * are off, so equal statistics give byte-identical files. A NaN or infinity
 * in statistics being written or read is MP_ENUMERIC naming the file, the
 * dataset and the element; implausible dims or negative counts in a file
 * are MP_EFORMAT. Local. */
#ifndef MP_STATS_H
#define MP_STATS_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    int64_t layer, expert, d, f;
    int64_t count, prior_tokens;
    double weight_sum;
    double *G_in, *G_mid, *h_sq, *prior_diag_in, *prior_diag_mid;
    int packed; /* G_in, G_mid hold only their upper triangles, packed row by row (gram.h: mp_gram_at) */
    /* a deterministic sample of the routed tokens (calibration.sample_tokens), in global token order:
     * X_sample [n_sample, d] the expert's inputs, H_sample [n_sample, f] its intermediate activations,
     * sample_token [n_sample] their global token indices; NULL / 0 when none were kept */
    int64_t n_sample;
    float *X_sample, *H_sample;
    int64_t *sample_token;
} mp_expert_stats;

/* Allocate zeroed arrays for dims d, f (the Grams full [n, n]; no sample). */
int mp_stats_alloc(mp_expert_stats *s, int64_t layer, int64_t expert, int64_t d, int64_t f);
/* The same with the Grams packed (`packed` set: what calibrate accumulates, half the memory) and given:
 * G_in [d (d + 1) / 2] and G_mid [f (f + 1) / 2], zeroed, owned by s from here on (either NULL: allocated
 * here). On failure s owns nothing and the given arrays are freed. */
int mp_stats_alloc_with(mp_expert_stats *s, int64_t layer, int64_t expert, int64_t d, int64_t f, double *G_in,
                        double *G_mid);
void mp_stats_free(mp_expert_stats *s);
/* Written in two steps, so that the Grams need not stay in memory until the
 * layer's prior is known: begin writes the whole file to a temporary name
 * next to `path`, the prior's datasets and attribute last, as placeholders
 * (G_in and G_mid packed: `packed`, from mp_stats_alloc_with, else
 * MP_EINTERNAL; the sample's n_sample rows), hashes the bytes before the first
 * placeholder and keeps the few after it in memory (per path, until end);
 * end writes prior_tokens and the prior diagonals into their places (one
 * pwrite of that tail), commits the file under `path` and returns its XXH64
 * (store.h's checksum of the whole file, computed while writing; xxh64 may be
 * NULL). Each file is written once and never read back. On error nothing is
 * left. */
int mp_stats_write_begin(const char *path, const mp_expert_stats *s);
int mp_stats_write_end(const char *path, int64_t prior_tokens, const double *prior_diag_in,
                       const double *prior_diag_mid, int64_t d, int64_t f, uint64_t *xxh64);
/* The whole file: G_in [d, d] and G_mid [f, f] unpacked to full symmetric matrices, the sample
 * (NULL arrays when n_sample = 0). Free with mp_stats_free. */
int mp_stats_read(const char *path, mp_expert_stats *s);
/* Only the token count and the two diagonals (cheap): x_sq [d], h_sq [f]. */
int mp_stats_read_summary(const char *path, int64_t d, int64_t f, int64_t *count, double *x_sq, double *h_sq);
/* The Gram a later stage should use: G + prior_tokens * diag(prior_diag) for
 * experts that saw fewer tokens than the threshold (a neutral prior: as if
 * prior_tokens more tokens with the layer's average per-channel energy had
 * been seen), G itself otherwise. which = 0: G_in [d, d], 1: G_mid [f, f].
 * Never NaN: with no tokens at all in the layer the prior is the identity. */
void mp_stats_regularized(const mp_expert_stats *s, int which, double *out);
/* The packed upper triangle of a symmetric matrix: P [n (n + 1) / 2] from the upper triangle of G [n, n]
 * (row i: G[i, i..n-1]); unpack turns G, which holds the packed triangle in its first n (n + 1) / 2
 * elements, into the full symmetric matrix in place. */
int64_t mp_gram_packed_size(int64_t n);
void mp_gram_pack(const double *G, int64_t n, double *P);
void mp_gram_unpack(double *G, int64_t n);
/* "DIR/layer0003/expert0012.h5"; "DIR/layer0001/dense.h5" for expert = MP_UNIT_DENSE */
void mp_stats_path(char *buf, size_t cap, const char *dir, int layer, int expert);

#endif
