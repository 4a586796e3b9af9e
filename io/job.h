/* job.h - job parameters (INI job file + --set overrides), fingerprints, the checkpoint claim.
 *
 * Every key lives in one table (job.c; listed with defaults in
 * jobs/README.md and by mp_job_key_list): section.key, type, default, range.
 * Relative paths in a job file are relative to the file's directory. Unknown
 * sections/keys and bad values are MP_EUSAGE errors naming the file and line
 * (or the --set argument).
 *
 * Fingerprints. The job's identity is the model: XXH64 over config.json and
 * every safetensors header (not the tensor data: a 100 GB model is not read
 * twice). Each pipeline stage has its own fingerprint,
 * XXH64(previous stage's fingerprint (the base for the first), the stage's
 * name and code version, "key=value" of every job key its results depend
 * on), so changing a key invalidates exactly the stage that reads it and the
 * stages after it. Files named by keys (calibration.tokens, delta.fisher)
 * enter by content, not by path.
 *
 * <checkpoint.dir>/job.json records the model fingerprint (and, for
 * information, the token ids' one) and, per stage, its fingerprint and key
 * values. mp_job_claim compares a job with the directory: another model is MP_EMISMATCH
 * (another job; --fresh discards its results); a changed key is reported
 * with its old and new value, and the directories of the stages it
 * invalidates (and of all later ones) are removed; --fresh removes every
 * stage directory. Stage manifests carry the stage fingerprint too
 * (store.h), so a unit computed under other parameters is never reused.
 * Local (rank 0 claims; the caller broadcasts the outcome). */
#ifndef MP_JOB_H
#define MP_JOB_H
#include <stdint.h>
#include <stdio.h>

#include "model.h"
#include "tokens.h"

typedef struct {
    char model_path[4096], tokens_path[4096], ckpt_dir[4096], out_dir[4096];
    int min_tokens, max_sequences;
    /* [delta]: D2 decomposition */
    int delta_enabled;         /* 1 */
    char delta_weights[16];    /* "activation" | "frequency" | "fisher" */
    char fisher_path[4096];    /* delta.fisher: per-element Fisher file (see mpi/decomp_stage.h) */
    double delta_fraction;     /* 0.5: r = floor(fraction m n / (m + n)) */
    int delta_rank;            /* 0; > 0: this rank for every delta */
    double delta_lambda;       /* 1e-6 */
    char delta_solver[16];     /* "auto" | "lapack" | "randomized" | "scalapack" */
    double delta_target_ratio; /* 0; > 0: solve the fraction for this overall compression ratio */
    int n_candidates;          /* candidate fractions for the global allocator (factors kept at the largest) */
    double candidates[16];
    int sample_tokens;         /* calibration.sample_tokens: routed inputs kept per expert for activation formats */
    /* [quant], [measure]: the options of every block (DESIGN section 4) */
    char quant_formats[512];   /* candidate formats, comma-separated names of src/quant.h's table */
    char quant_method[8];      /* "gptq" | "rtn" */
    double quant_percdamp;     /* GPTQ damping relative to mean(diag H) */
    int quant_act_order;       /* GPTQ act-order (static groups) */
    char factor_formats[16];   /* "independent" | "same": formats of a delta's U and V */
    int tie_gate_up;           /* gate and up of an expert share one format */
    int batch_tokens;          /* measure.batch_tokens: design batch of the cost model */
    char device_path[4096];    /* measure.device: device profile (JSON); empty = built-in H100 SXM */
    char timings_path[4096];   /* measure.timings: measured kernel timings replacing the model */
    char val_tokens[4096];     /* validate.tokens: held-out tokens (empty: calibration's unused sequences) */
    int val_max_sequences;     /* validate.max_sequences: 0 = all */
    char val_device[8];        /* validate.device: "auto" | "cuda" | "cpu" */
    /* [budget], [allocate], [output] */
    double budget_bits;        /* budget.bits_per_weight over the compressible weights */
    double budget_bytes;       /* budget.bytes; > 0 replaces bits_per_weight */
    double alloc_r;            /* allocate.r: 1 = loss only; < 1: r log L + (1 - r) log T */
    double shard_bytes;        /* output.shard_bytes: the largest shard */
} mp_job;

/* path may be NULL (all keys from sets). sets: "section.key=value" strings. */
int mp_job_load(const char *path, char *const *sets, int nsets, mp_job *job);
/* The canonical text of key `name` ("delta.fraction") of `job`, as it enters fingerprints and messages
 * (files named by content-keys as "xxh64:<hex>" of their bytes, or "missing"). MP_EUSAGE for an unknown key. */
int mp_job_key_text(const mp_job *job, const char *name, char *buf, size_t cap);
/* Print every key with its default and meaning (markdown table rows). */
void mp_job_key_list(FILE *out);

typedef struct {
    uint64_t model;  /* config.json + every safetensors header */
    uint64_t tokens; /* token ids and shape (after max_sequences) */
    uint64_t all;    /* the job's identity: the model's */
} mp_fingerprint;
void mp_job_fingerprint(const mp_model *m, const mp_tokens *t, mp_fingerprint *fp);

/* One stage as the claim sees it. */
typedef struct {
    const char *name;        /* "decompose" */
    const char *dir;         /* its directory under checkpoint.dir ("decomp") */
    const char *version;     /* code version of its results */
    const char *const *keys; /* job keys its results depend on, NULL-terminated */
    uint64_t fp;             /* set by mp_job_stage_fingerprints */
} mp_stage_id;
/* Chain the stage fingerprints from the base. */
int mp_job_stage_fingerprints(const mp_job *job, const mp_fingerprint *base, mp_stage_id *st, int n);
/* Create checkpoint.dir and job.json, or check an existing one (see above). Notes on what changed go to
 * `notes` (NULL: silent). *resumed: the directory already held this job (possibly with changed keys). */
int mp_job_claim(const mp_job *job, const mp_fingerprint *fp, const mp_stage_id *st, int n, int fresh,
                 FILE *notes, int *resumed);

#endif
