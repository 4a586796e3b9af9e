/* job.h - job parameters (INI job file + --set overrides) and the fingerprint.
 *
 * Job file (every key can also come from --set section.key=value; --set wins):
 *   [model]        path = DIR             Hugging Face checkpoint (required)
 *   [calibration]  tokens = FILE          HDF5 dataset `tokens`, int32 [n_seq, seq_len] (required)
 *                  min_tokens = 16        experts seeing fewer tokens get the neutral prior
 *                  max_sequences = 0      use only the first N sequences (0 = all)
 *   [checkpoint]   dir = DIR              stage results (default: <output.dir>/checkpoint)
 *   [output]       dir = DIR              results (default: ./moepack-out)
 *   [delta]        enabled = true, weights = activation|frequency|fisher, fisher = FILE, fraction = 0.5,
 *                  rank = 0 (fixed rank when > 0), target_ratio = 0 (solve the fraction for
 *                  this overall compression ratio when > 0), candidates = (comma-separated
 *                  fractions for the allocator), lambda = 1e-6, solver = auto|lapack|randomized|scalapack
 * Relative paths in a job file are relative to the file's directory.
 * Unknown sections/keys and bad values are MP_EUSAGE errors naming the file
 * and line (or the --set argument).
 *
 * The fingerprint is XXH64 over config.json, every safetensors header, the
 * calibration token ids and every parameter that changes results; it is kept
 * in <checkpoint.dir>/job.json with its parts, and a checkpoint directory
 * made by a job with another fingerprint is refused (MP_EMISMATCH, naming
 * what differs) unless fresh is set, which discards the old results. Local. */
#ifndef MP_JOB_H
#define MP_JOB_H
#include <stdint.h>

#include "model.h"
#include "tokens.h"

typedef struct {
    char model_path[4096], tokens_path[4096], ckpt_dir[4096], out_dir[4096];
    int min_tokens, max_sequences;
    /* [delta]: D2 decomposition */
    int delta_enabled;      /* 1 */
    char delta_weights[16]; /* "activation" | "frequency" | "fisher" */
    char fisher_path[4096]; /* delta.fisher: per-element Fisher file (see mpi/decomp_stage.h) */
    double delta_fraction;  /* 0.5: r = floor(fraction m n / (m + n)) */
    int delta_rank;         /* 0; > 0: this rank for every delta */
    double delta_lambda;    /* 1e-6 */
    char delta_solver[16];  /* "auto" | "lapack" | "randomized" | "scalapack" */
    double delta_target_ratio; /* 0; > 0: solve the fraction for this overall compression ratio */
    int n_candidates;          /* candidate fractions for the global allocator (factors kept at the largest) */
    double candidates[16];
} mp_job;

/* path may be NULL (all keys from sets). sets: "section.key=value" strings. */
int mp_job_load(const char *path, char *const *sets, int nsets, mp_job *job);
/* Apply max_sequences to loaded tokens (drops the rest). */
void mp_job_trim_tokens(const mp_job *job, mp_tokens *t);
typedef struct {
    uint64_t model;  /* config.json + every safetensors header */
    uint64_t tokens; /* token ids and shape (after max_sequences) */
    uint64_t params; /* result-changing parameters */
    uint64_t all;    /* of the three */
} mp_fingerprint;
void mp_job_fingerprint(const mp_job *job, const mp_model *m, const mp_tokens *t, mp_fingerprint *fp);
/* Create the checkpoint directory and job.json, or check an existing one:
 * a mismatch says which part differs (model, tokens, parameters). *resumed
 * is set when the directory already belonged to this job. */
int mp_job_claim_checkpoint(const mp_job *job, const mp_fingerprint *fp, int fresh, int *resumed);

#endif
