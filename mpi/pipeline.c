/* pipeline.c - the stage table and the driver that runs it (see pipeline.h). */
#include "pipeline.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "calibrate.h"
#include "decomp_stage.h"
#include "measure_stage.h"
#include "alloc_stage.h"
#include "error.h"
#include "fsutil.h"
#include "output.h"
#include "quant_stage.h"
#include "validate_stage.h"
#include "runtime.h"
#include "weights.h"

static const char *const CALIB_KEYS[] = {"calibration.tokens", "calibration.min_tokens", "calibration.max_sequences",
                                         "calibration.sample_tokens", NULL};
static const char *const DECOMP_KEYS[] = {"delta.weights", "delta.fisher",     "delta.fraction",
                                          "delta.rank",    "delta.target_ratio", "delta.candidates",
                                          "delta.lambda",  "delta.solver",       NULL};
static const char *const MEASURE_KEYS[] = {"quant.formats",        "quant.method",   "quant.percdamp",
                                           "quant.act_order",      "measure.batch_tokens", "measure.device",
                                           "measure.timings",      NULL};
static const char *const ALLOC_KEYS[] = {"budget.bits_per_weight", "budget.bytes", "allocate.r", "quant.tie_gate_up",
                                         "quant.factor_formats", NULL};
static const char *const QUANT_KEYS[] = {"output.shard_bytes", NULL};
static const char *const VALIDATE_KEYS[] = {"validate.tokens", "validate.max_sequences", "validate.device", NULL};

static int always(const mp_job *job)
{
    (void)job;
    return 1;
}

static int delta_on(const mp_job *job) { return job->delta_enabled; }

/* Adding a stage is one entry here (and its index in pipeline.h). */
static const mp_stage STAGES[MP_NSTAGES] = {
    {"calibrate", "calib", "calibrate v6 (fp32 SSYRK chunks of 256 summed in fp64, packed Grams, token samples, dense MLPs)",
     "expert-parallel forward pass, per-expert statistics", CALIB_KEYS, MP_LAYERS_BLOCKS, 1, always, mp_calib_begin,
     mp_calib_layer, mp_calib_end, mp_calib_print, NULL, NULL},
    {"decompose", "decomp", "decompose v3 (rank-0 loss from the exact spectrum)", "D2 base + whitened low-rank deltas", DECOMP_KEYS, MP_LAYERS_MOE, 0,
     delta_on, mp_decomp_begin, mp_decomp_layer, mp_decomp_end, mp_decomp_print, NULL, NULL},
    {"measure", "measure", "measure v3 (dense MLPs; activation grid max|x| / (2^(b-1) - 1))", "loss, bytes and cost of every block under every option",
     MEASURE_KEYS, MP_LAYERS_BLOCKS, 0, always, mp_measure_begin, mp_measure_layer, mp_measure_end, mp_measure_print,
     NULL, NULL},
    {"allocate", "alloc", "allocate v2 (dense MLPs)", "one global allocation of ranks and formats under the budget",
     ALLOC_KEYS, MP_LAYERS_BLOCKS, 0, always, mp_allocate_begin, mp_allocate_layer, mp_allocate_end, mp_allocate_print,
     NULL, NULL},
    {"quantize", "quant", "quantize v2 (dense MLPs)",
     "every block in its allocated format; the compressed model in output.dir", QUANT_KEYS, MP_LAYERS_BLOCKS, 0, always,
     mp_quant_begin, mp_quant_layer, mp_quant_end, mp_quant_print, mp_quant_output_kept, NULL},
    {"validate", "validate", "validate v2 (dense MLPs)",
     "the compressed model against the original: output errors per layer, unit and block; KL, top-1, perplexity",
     VALIDATE_KEYS, MP_LAYERS_BLOCKS, 1, always, mp_validate_begin, mp_validate_layer, mp_validate_end, mp_validate_print,
     mp_validate_kept, mp_validate_check},
};

int mp_stage_has_units(const mp_stage *st, const mp_config *c, int l)
{
    return st->units == MP_LAYERS_MOE ? c->is_moe[l] : mp_config_has_units(c, l);
}

const mp_stage *mp_stages(int *n)
{
    *n = MP_NSTAGES;
    return STAGES;
}

int mp_stage_index(const char *name)
{
    for (int s = 0; s < MP_NSTAGES; s++)
        if (!strcmp(STAGES[s].name, name))
            return s;
    return -1;
}

void mp_progress(const mp_run_opts *o, const char *stage, int done, int total, double elapsed, double eta)
{
    if (o->log_json)
        printf("{\"event\": \"progress\", \"stage\": \"%s\", \"layers_done\": %d, \"layers\": %d, "
               "\"elapsed_s\": %.3f, \"eta_s\": %.3f}\n",
               stage, done, total, elapsed, eta);
    else if (o->quiet)
        return;
    else if (isatty(STDOUT_FILENO))
        printf("\r%s: layer %d/%d (%.1f s, ETA %.1f s)%s", stage, done, total, elapsed, eta, done == total ? "\n" : "");
    else
        printf("%s: layer %d/%d done (%.1f s, ETA %.1f s)\n", stage, done, total, elapsed, eta);
    fflush(stdout);
}

/* Collective: is layer l of stage s committed under its fingerprint and intact? (rank 0 checks) */
static int layer_committed(mp_run *r, int s, int l, int *committed, int *starved)
{
    char why[600] = "";
    int st[2] = {0, 0}, rc = 0;
    if (r->rank == 0)
        rc = mp_store_layer_ok(r->dir[s], l, r->fp[s], &st[0], &st[1], why, sizeof why);
    MP_CHECK(mp_mpi_agree(rc));
    MP_MPI(MPI_Bcast(st, 2, MPI_INT, 0, MPI_COMM_WORLD));
    if (r->rank == 0 && why[0])
        fprintf(stderr, "moepack: note: damaged unit %s; recomputing layer %d\n", why, l);
    *committed = st[0];
    if (starved)
        *starved = st[1];
    return 0;
}

/* Collective: the whole stage is committed (STAGE file with its fingerprint, every layer intact). */
static int stage_committed(mp_run *r, int s, int *ok)
{
    int rc = 0, good = 0;
    if (r->rank == 0)
        rc = mp_store_stage_ok(r->dir[s], r->fp[s], &good, &r->sum[s]);
    MP_CHECK(mp_mpi_agree(rc));
    MP_MPI(MPI_Bcast(&good, 1, MPI_INT, 0, MPI_COMM_WORLD));
    const mp_config *c = &r->m->cfg;
    r->layers[s] = 0;
    for (int l = 0; l < c->n_layers; l++) {
        if (!mp_stage_has_units(&STAGES[s], c, l))
            continue;
        r->layers[s]++;
        int committed = 0;
        if (good)
            MP_CHECK(layer_committed(r, s, l, &committed, NULL));
        good &= committed;
    }
    MP_MPI(MPI_Bcast(&r->sum[s], (int)sizeof r->sum[s], MPI_BYTE, 0, MPI_COMM_WORLD));
    *ok = good;
    return 0;
}

static int run_stage(mp_run *r, int s)
{
    const mp_stage *st = &STAGES[s];
    const mp_config *c = &r->m->cfg;
    int ok = 0, rc = 0;
    memset(&r->sum[s], 0, sizeof r->sum[s]);
    if (r->rank == 0 && !r->o->quiet && !r->o->log_json)
        printf("\n== %s: %s, in %s\n", st->name, st->title, r->dir[s]), fflush(stdout);
    MP_CHECK(stage_committed(r, s, &ok));
    if (ok && st->kept) /* results outside the checkpoint too: kept only while those are intact */
        MP_CHECK(st->kept(r, s, &ok));
    if (ok) {
        r->ran[s] = 2, r->kept[s] = r->layers[s];
        return 0;
    }
    memset(&r->sum[s], 0, sizeof r->sum[s]);
    if (r->rank == 0)
        rc = mp_mkdir_p(r->dir[s]);
    MP_CHECK(mp_mpi_agree(rc));
    r->ran[s] = 1, r->kept[s] = 0;
    MP_CHECK_GOTO(mp_mpi_agree(st->begin(r, s)), out);
    int total = 0, done = 0;
    for (int l = 0; l < c->n_layers; l++)
        total += st->every_layer || mp_stage_has_units(st, c, l);
    double t0 = MPI_Wtime();
    for (int l = 0; l < c->n_layers; l++) {
        int units = mp_stage_has_units(st, c, l);
        if (!st->every_layer && !units)
            continue;
        int committed = 0;
        if (units)
            MP_CHECK_GOTO(layer_committed(r, s, l, &committed, &r->kept_starved), out);
        r->kept[s] += committed;
        MP_CHECK_GOTO(st->layer(r, s, l, committed), out);
        if (units && !committed)
            mp_note_progress();
        done++;
        double el = MPI_Wtime() - t0;
        if (r->rank == 0)
            mp_progress(r->o, st->name, done, total, el, el / done * (total - done));
        char where[96];
        snprintf(where, sizeof where, "%s: layer finished", st->name);
        mp_fault_point(where);
        snprintf(where, sizeof where, "in %s after layer %d of %d", st->name, l, c->n_layers);
        MP_CHECK_GOTO(mp_should_stop(el / done, where), out);
    }
    rc = st->end(r, s, 1); /* releases the stage's state whatever happens */
    if (rc == 0 && r->rank == 0)
        rc = mp_store_commit_stage(r->dir[s], r->fp[s], &r->sum[s]);
    return mp_mpi_agree(rc);
out:
    st->end(r, s, 0);
    return rc;
}

static void print_stage(const mp_run *r, int s, FILE *out)
{
    const mp_stage *st = &STAGES[s];
    if (r->o->log_json) {
        fprintf(out,
                "{\"event\": \"stage_done\", \"stage\": \"%s\", \"kept\": %s, \"layers\": %d, \"layers_kept\": %d, "
                "\"peak_rss_bytes\": %.0f, \"seconds\": %.3f",
                st->name, r->ran[s] == 2 ? "true" : "false", r->layers[s], r->kept[s], r->peak_rss[s], r->seconds[s]);
        for (int i = 0; i < r->sum[s].n; i++)
            fprintf(out, ", \"%s\": %.17g", r->sum[s].key[i], r->sum[s].val[i]);
        fprintf(out, "}\n");
    } else { /* --quiet silences progress, not results */
        if (r->ran[s] == 2)
            fprintf(out, "%s: every layer kept from before (same stage fingerprint %016llx)\n", st->name,
                    (unsigned long long)r->fp[s]);
        else if (r->kept[s])
            fprintf(out, "%s: %d of %d layers kept from before\n", st->name, r->kept[s], r->layers[s]);
        st->print(r, s, out);
    }
    fflush(out);
}

int mp_pipeline_run(const mp_job *job, const mp_model *m, const mp_tokens *tok, const mp_run_opts *o, mp_run *r)
{
    memset(r, 0, sizeof *r);
    r->job = job, r->m = m, r->tok = tok, r->o = o;
    r->rank = mp_mpi_rank(), r->size = mp_mpi_size();
    mp_model_weights(m, &r->w);
    int last = MP_NSTAGES - 1, rc = 0;
    if (o->until && (last = mp_stage_index(o->until)) < 0)
        rc = mp_errorf(MP_EUSAGE, "unknown stage '%s'", o->until);
    mp_stage_id ids[MP_NSTAGES];
    for (int s = 0; s < MP_NSTAGES; s++) {
        ids[s] = (mp_stage_id){STAGES[s].name, STAGES[s].dir, STAGES[s].version, STAGES[s].keys, 0};
        snprintf(r->dir[s], sizeof r->dir[s], "%s/%s", job->ckpt_dir, STAGES[s].dir);
    }
    if (rc == 0)
        rc = mp_forward_supported(&m->cfg);
    rc = mp_mpi_agree(rc);
    for (int s = 0; s <= last && rc == 0; s++) /* the stages' own inputs, before anything is claimed */
        if (STAGES[s].enabled(job) && STAGES[s].check)
            rc = STAGES[s].check(r, s);
    if (rc == 0 && r->rank == 0) {
        mp_fingerprint fp;
        mp_job_fingerprint(m, tok, &fp);
        rc = mp_job_stage_fingerprints(job, &fp, ids, MP_NSTAGES);
        if (rc == 0 && last >= MP_STAGE_QUANTIZE) /* another job's result in output.dir: refused before any work */
            rc = mp_out_claim(job->out_dir, fp.all, o->fresh, o->log_json ? stderr : stdout);
        if (rc == 0)
            rc = mp_job_claim(job, &fp, ids, MP_NSTAGES, o->fresh, o->log_json ? stderr : stdout, &r->resumed);
        for (int s = 0; s < MP_NSTAGES; s++)
            r->fp[s] = ids[s].fp;
    }
    MP_CHECK(mp_mpi_agree(rc));
    MP_MPI(MPI_Bcast(r->fp, MP_NSTAGES, MPI_UINT64_T, 0, MPI_COMM_WORLD));
    MP_MPI(MPI_Bcast(&r->resumed, 1, MPI_INT, 0, MPI_COMM_WORLD));
    for (int s = 0; s <= last; s++) {
        if (!STAGES[s].enabled(job))
            continue;
        double t0 = MPI_Wtime();
        MP_CHECK(run_stage(r, s));
        r->seconds[s] = MPI_Wtime() - t0;
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        double rss = (double)ru.ru_maxrss * 1024.0;
        MP_MPI(MPI_Allreduce(&rss, &r->peak_rss[s], 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD));
        if (r->rank == 0)
            print_stage(r, s, stdout);
        mp_fault_point("pipeline: between stages");
        if (s < last) {
            char where[96];
            snprintf(where, sizeof where, "after stage %s", STAGES[s].name);
            MP_CHECK(mp_should_stop(0, where));
        }
    }
    return 0;
}
