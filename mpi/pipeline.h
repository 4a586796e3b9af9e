/* pipeline.h - the stages of a job, run in order from one table, resumable layer by layer.
 *
 * A stage is one entry of the table (pipeline.c): its name, its directory
 * under checkpoint.dir, the code version and the job keys its results depend
 * on (they make its fingerprint, job.h), and four functions: begin, layer
 * (compute and commit one layer, or, when the layer is committed already,
 * only what later layers of the same stage need), end (fills the stage's
 * summary numbers and releases what begin made) and print (rank 0: the summary for people). A stage reads
 * the previous stages' committed units from the checkpoint directory and
 * nothing else.
 *
 * mp_pipeline_run claims the checkpoint directory (job.h: a changed key
 * invalidates its stage and the later ones; --fresh clears all), then runs
 * the stages up to `until`. Per stage: when `<dir>/STAGE` carries the stage
 * fingerprint and every layer is intact (and its `kept` check agrees), the stage is skipped whole and its
 * recorded summary reported; otherwise each layer is kept when its manifest
 * carries the stage fingerprint and its units are intact (a damaged one is
 * reported and recomputed), else computed and committed. After every layer
 * and between stages all ranks agree whether to stop (signal, --walltime:
 * MP_ESTOPPED). Collective over MPI_COMM_WORLD; failures are agreed on. */
#ifndef MP_PIPELINE_H
#define MP_PIPELINE_H
#include <stdint.h>
#include <stdio.h>

#include "ep_forward.h"
#include "job.h"
#include "model.h"
#include "store.h"
#include "tokens.h"

enum {
    MP_STAGE_CALIBRATE,
    MP_STAGE_DECOMPOSE,
    MP_STAGE_MEASURE,
    MP_STAGE_ALLOCATE,
    MP_STAGE_QUANTIZE,
    MP_STAGE_VALIDATE,
    MP_NSTAGES
};

typedef struct {
    const char *until;     /* the last stage to run (NULL: all) */
    int fresh;             /* discard every stage's results first */
    int quiet, log_json;   /* quiet: no progress or stage headers (summaries stay); log_json: JSON lines */
    const mp_tokens *held_out; /* tokens calibration does not use (the sequences after its own in the same
                                  file), the validation's default; NULL or none: it uses the calibration's */
    mp_observer observe;   /* tests: intermediate results of the calibration forward pass */
    void *observe_ctx;
} mp_run_opts;

typedef struct {
    const mp_job *job;
    const mp_model *m;
    const mp_tokens *tok;
    mp_weights w;
    const mp_run_opts *o;
    int rank, size, resumed;
    char dir[MP_NSTAGES][4400]; /* checkpoint.dir/<stage dir> */
    uint64_t fp[MP_NSTAGES];    /* stage fingerprints */
    int ran[MP_NSTAGES];        /* 0: not run (disabled or after `until`), 1: ran, 2: kept whole */
    int layers[MP_NSTAGES], kept[MP_NSTAGES]; /* layers with units, and how many were kept */
    mp_summary sum[MP_NSTAGES];
    double seconds[MP_NSTAGES];  /* wall time of the stage in this run (rank 0) */
    double peak_rss[MP_NSTAGES]; /* the largest resident set of any rank so far, after the stage (bytes) */
    int kept_starved; /* the "starved" count in the manifest of the layer just found committed */
    void *state; /* the running stage's (begin .. end) */
} mp_run;

/* Which layers of a stage have units: the MoE layers, or the MoE layers and the dense MLPs of the non-MoE
 * layers (model_config.h: mp_config_has_units) - the blocks of the compressed model. */
enum { MP_LAYERS_MOE, MP_LAYERS_BLOCKS };

typedef struct {
    const char *name, *dir, *version, *title;
    const char *const *keys; /* job keys the results depend on, NULL-terminated */
    int units;               /* the layers with units (committed per layer): MP_LAYERS_MOE or MP_LAYERS_BLOCKS */
    int every_layer;         /* layer() for every layer in order (the others get committed = 0 and no units);
                                else only for the layers with units */
    int (*enabled)(const mp_job *job);
    int (*begin)(mp_run *r, int s);
    int (*layer)(mp_run *r, int s, int l, int committed);
    int (*end)(mp_run *r, int s, int ok); /* ok = 0: after a failure, only release the state (local) */
    void (*print)(const mp_run *r, int s, FILE *out);
    /* optional: a committed stage whose results also live outside the checkpoint (output.dir) is kept
     * only while those are intact (collective; *ok = 0: run it again) */
    int (*kept)(mp_run *r, int s, int *ok);
    /* optional: checks of the stage's own inputs before any stage runs (collective; a failure stops the
     * job before any work) */
    int (*check)(mp_run *r, int s);
} mp_stage;

/* The table. */
const mp_stage *mp_stages(int *n);
/* 1 when layer l has units in stage st. */
int mp_stage_has_units(const mp_stage *st, const mp_config *c, int l);
/* Index of a stage by name, -1 when unknown. */
int mp_stage_index(const char *name);
/* Rank 0: a progress line (terminal: updated in place; log: one line per layer; --log-json: JSON). */
void mp_progress(const mp_run_opts *o, const char *stage, int done, int total, double elapsed, double eta);
/* Collective. `r` holds the outcome (summaries of every stage that ran or was kept). */
int mp_pipeline_run(const mp_job *job, const mp_model *m, const mp_tokens *tok, const mp_run_opts *o, mp_run *r);

#endif
