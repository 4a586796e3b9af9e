/* main.c - the moepack command line: parses the subcommand, runs it on every
 * rank, agrees on the outcome and turns an error into the exit status. */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/stat.h>
#include <mpi.h>

#include "error.h"
#include "ep_forward.h"
#include "expert_scan.h"
#include "export.h"
#include "fsutil.h"
#include "gpu_info.h"
#include "h5util.h"
#include "inspect.h"
#include "cweights.h"
#include "outdir.h"
#include "inspect_out.h"
#include "outdir.h"
#include "tables.h"
#include "job.h"
#include "logits_dump.h"
#include "model.h"
#include "pipeline.h"
#include "plan.h"
#include "config.h"
#include "decompose.h"
#include "runtime.h"
#include "synth.h"
#include "tokens.h"
#include "weights.h"

static const char USAGE[] =
    "usage: moepack <command> [options]\n"
    "\n"
    "commands:\n"
    "  demo [--out DIR] [--arch A] [--seed S]\n"
    "        build a tiny model in DIR (default ./moepack-demo) and run the pipeline on it\n"
    "  synth --arch A --out DIR [--layers N --experts E --hidden D --ffn F --vocab V\n"
    "        --heads H --kv-heads K --top-k K --n-seq N --seq-len T --seed S\n"
    "        --dtype F32|BF16|F16 --shards N --layout per-expert|fused --delta-rank R\n"
    "        --dense-layers N (qwen2_moe, qwen3_moe: the first N layers have a dense MLP)]\n"
    "        write a tiny synthetic checkpoint in the Hugging Face layout + tokens.h5\n"
    "  inspect PATH [--json] [--plot FILE.svg]\n"
    "        a Hugging Face checkpoint: architecture, MoE layers, parameter counts, dtypes, tensor check;\n"
    "        a job's checkpoint.dir: its measure tables; a moepack output: bytes vs budget, bits/weight,\n"
    "        format and rank per layer x expert, predicted and measured loss (--plot: an SVG of bits per\n"
    "        expert and of predicted vs measured loss per block)\n"
    "  run [--job FILE] [--set section.key=value ...] [--fresh] [--until STAGE] [--walltime S] [--quiet] [--log-json]\n"
    "        the pipeline (calibrate, decompose, measure, allocate, quantize: the compressed model in\n"
    "        output.dir, validate: its measured accuracy in output.dir/validation.json), resuming from\n"
    "        checkpoint.dir;\n"
    "        SIGTERM/SIGUSR1 or --walltime stop at the next layer with exit status 12\n"
    "  plan [--job FILE] [--set section.key=value ...] --ranks N [--sequences N --seq-len T] [--json]\n"
    "        peak memory, checkpoint disk and work per rank and stage, before submitting a job\n"
    "  calibrate [same options as run]\n"
    "        expert-parallel forward pass over the calibration tokens; per-expert statistics\n"
    "        into checkpoint.dir/calib (run it under mpirun to shard experts and sequences)\n"
    "  eval --model DIR --tokens FILE [--max-sequences N] [--dump-logits FILE.h5] [--compressed OUTDIR]\n"
    "        perplexity of the model on the tokens (C forward pass); --dump-logits writes the logits,\n"
    "        float32 [n_seq, seq_len, vocab] (dataset `logits`), e.g. to compare with transformers\n"
    "  export --in OUTDIR --format safetensors --out DIR [--shard-bytes N] [--source MODEL_DIR]\n"
    "        a moepack output as a Hugging Face checkpoint: dequantized weights (base + U V folded back)\n"
    "        under the source's tensor names, layout and dtype, and its config.json (--source: copy the\n"
    "        tokenizer and generation files of the original checkpoint too)\n"
    "  version                       same as --version\n"
    "\n"
    "architectures: mixtral qwen2_moe qwen3_moe olmoe deepseek deepseek_v2 deepseek_v3 phimoe\n"
    "exit status: 0 ok, 2 usage, 3 missing file/tensor, 4 bad config, 5 malformed file,\n"
    "             6 I/O error, 7 out of memory, 8 MPI/other rank failed, 9 internal, 10 numeric,\n"
    "             11 checkpoint directory of another job, 12 stopped (signal/walltime), resumable\n";

/* ---- option parsing ------------------------------------------------------------------------ */

typedef struct {
    int argc;
    char **argv;
    int i;
} args;

/* Next "--name" / "--name=value" option; *val is the value for options that take one. */
static int next_opt(args *a, const char **name, const char **val, int takes_value(const char *))
{
    if (a->i >= a->argc)
        return 0;
    static char buf[128];
    const char *s = a->argv[a->i++];
    if (strncmp(s, "--", 2) != 0) {
        *name = NULL;
        *val = s; /* positional */
        return 1;
    }
    const char *eq = strchr(s, '=');
    if (eq) {
        snprintf(buf, sizeof buf, "%.*s", (int)(eq - s), s);
        *name = buf;
        *val = eq + 1;
        return 1;
    }
    *name = s;
    *val = NULL;
    if (takes_value(s)) {
        if (a->i >= a->argc)
            return mp_errorf(MP_EUSAGE, "option %s needs a value", s);
        *val = a->argv[a->i++];
    }
    return 1;
}

static int parse_int(const char *opt, const char *v, int *out)
{
    char *end;
    errno = 0;
    long x = strtol(v ? v : "", &end, 10);
    if (!v || !*v || *end || errno || x < -2147483647L || x > 2147483647L)
        return mp_errorf(MP_EUSAGE, "option %s: '%s' is not an integer", opt, v ? v : "");
    *out = (int)x;
    return 0;
}

static int parse_u64(const char *opt, const char *v, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v ? v : "", &end, 10);
    if (!v || !*v || *end || errno || v[0] == '-')
        return mp_errorf(MP_EUSAGE, "option %s: '%s' is not a non-negative integer", opt, v ? v : "");
    *out = x;
    return 0;
}

static int always_value(const char *s)
{
    return strcmp(s, "--json") != 0 && strcmp(s, "--quiet") != 0 && strcmp(s, "--fresh") != 0 &&
           strcmp(s, "--log-json") != 0;
}

/* ---- synth ----------------------------------------------------------------------------------- */

static int synth_option(mp_synth_opts *o, const char *name, const char *v, const char **out_dir)
{
    struct {
        const char *name;
        int *dst;
    } ints[] = {{"--layers", &o->layers},   {"--experts", &o->experts}, {"--hidden", &o->hidden},
                {"--ffn", &o->ffn},         {"--vocab", &o->vocab},     {"--heads", &o->heads},
                {"--kv-heads", &o->kv_heads}, {"--top-k", &o->top_k},   {"--n-seq", &o->n_seq},
                {"--seq-len", &o->seq_len}, {"--shards", &o->shards},   {"--delta-rank", &o->delta_rank},
                {"--dense-layers", &o->dense_layers}};
    for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++)
        if (strcmp(name, ints[k].name) == 0)
            return parse_int(name, v, ints[k].dst);
    if (strcmp(name, "--arch") == 0)
        return mp_synth_parse_arch(v, &o->arch);
    if (strcmp(name, "--out") == 0) {
        *out_dir = v;
        return 0;
    }
    if (strcmp(name, "--seed") == 0)
        return parse_u64(name, v, &o->seed);
    if (strcmp(name, "--dtype") == 0) {
        if (mp_dtype_parse(v, &o->dtype) < 0)
            return mp_errorf(MP_EUSAGE, "--dtype '%s': choose F32, BF16 or F16", v);
        return 0;
    }
    if (strcmp(name, "--layout") == 0) {
        if (strcmp(v, "per-expert") == 0)
            o->layout = MP_LAYOUT_PER_EXPERT;
        else if (strcmp(v, "fused") == 0)
            o->layout = MP_LAYOUT_FUSED;
        else
            return mp_errorf(MP_EUSAGE, "--layout '%s': choose per-expert or fused", v);
        return 0;
    }
    return mp_errorf(MP_EUSAGE, "synth: unknown option %s (see moepack --help)", name);
}

static int cmd_synth(args *a)
{
    mp_synth_opts o;
    mp_synth_defaults(&o);
    const char *out_dir = NULL, *name, *v;
    int arch_given = 0, r;
    int rc = 0;
    while (rc == 0 && (r = next_opt(a, &name, &v, always_value)) != 0) {
        if (r < 0)
            rc = r;
        else if (!name)
            rc = mp_errorf(MP_EUSAGE, "synth: unexpected argument '%s'", v);
        else {
            arch_given |= strcmp(name, "--arch") == 0;
            rc = synth_option(&o, name, v, &out_dir);
        }
    }
    if (rc == 0 && (!arch_given || !out_dir))
        rc = mp_errorf(MP_EUSAGE, "synth needs --arch A and --out DIR");
    rc = mp_mpi_agree(rc);
    if (rc == 0 && mp_mpi_rank() == 0) {
        rc = mp_synth_write(&o, out_dir);
        if (rc == 0)
            printf("synth: wrote %s (%s, %d layers, %d experts, d %d, f %d, seed %llu) and %s/tokens.h5\n", out_dir,
                   mp_arch_name(o.arch), o.layers, o.experts, o.hidden, o.ffn, (unsigned long long)o.seed, out_dir);
    }
    return mp_mpi_agree(rc);
}

/* ---- inspect --------------------------------------------------------------------------------- */

static int plot_value(const char *s) { return !strcmp(s, "--plot"); }

static int cmd_inspect(args *a)
{
    const char *path = NULL, *plot = NULL, *name, *v;
    int json = 0, rc = 0, r;
    while (rc == 0 && (r = next_opt(a, &name, &v, plot_value)) != 0) {
        if (r < 0)
            rc = r;
        else if (!name && !path)
            path = v;
        else if (name && strcmp(name, "--json") == 0)
            json = 1;
        else if (name && strcmp(name, "--plot") == 0)
            plot = v;
        else
            rc = mp_errorf(MP_EUSAGE, "inspect: unexpected argument '%s'", name ? name : v);
    }
    if (rc == 0 && !path)
        rc = mp_errorf(MP_EUSAGE, "inspect needs a checkpoint or moepack output directory");
    int out = rc == 0 && mp_outdir_detect(path);
    if (rc == 0 && plot && !out)
        rc = mp_errorf(MP_EUSAGE, "inspect --plot: %s is not a moepack output (no index.json from moepack)", path);
    rc = mp_mpi_agree(rc);
    if (rc == 0 && out) {
        if (mp_mpi_rank() == 0)
            rc = mp_inspect_output(path, json, plot, stdout);
        return mp_mpi_agree(rc);
    }
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/job.json", path ? path : "");
    struct stat st;
    if (rc == 0 && mp_mpi_rank() == 0 && stat(path, &st) == 0 && S_ISREG(st.st_mode)) { /* a config.json alone */
        rc = mp_inspect_config(path, json, stdout);
    } else if (rc == 0 && mp_mpi_rank() == 0 && access(probe, F_OK) == 0) { /* a job's checkpoint directory */
        snprintf(probe, sizeof probe, "%s/measure", path);
        rc = mp_tables_print(probe, json, stdout);
    } else if (rc == 0 && mp_mpi_rank() == 0) {
        mp_inspect_info info;
        rc = mp_inspect_collect(path, &info);
        if (rc == 0) {
            rc = mp_inspect_print(&info, json, stdout);
            if (rc == 0)
                rc = mp_inspect_status(&info);
            mp_inspect_free(&info);
        }
    }
    return mp_mpi_agree(rc);
}

/* ---- demo ------------------------------------------------------------------------------------ */

/* Reuse DIR/model when it was made with the same options, otherwise synthesise it. */
static int demo_model(const mp_synth_opts *o, const char *out, const char *model_dir)
{
    char *want = NULL, *have = NULL, cfg[4400];
    size_t n;
    MP_CHECK(mp_synth_config_json(o, &want));
    snprintf(cfg, sizeof cfg, "%s/config.json", model_dir);
    struct stat st;
    int rc = 0;
    if (stat(model_dir, &st) == 0) {
        if (mp_read_file(cfg, &have, &n) == 0 && strcmp(have, want) == 0) {
            printf("demo: reusing %s\n", model_dir);
        } else
            rc = mp_errorf(MP_EUSAGE, "demo: %s exists but was made with other options; remove it or pass --out",
                           model_dir);
    } else {
        rc = mp_mkdir_p(out);
        if (rc == 0)
            rc = mp_synth_write(o, model_dir);
        if (rc == 0)
            printf("demo: synthesised %s\n", model_dir);
    }
    free(want);
    free(have);
    return rc;
}

/* The sequences of t after its first t->n_seq, up to `total` (not owned: a view into t). */
static mp_tokens rest_of(const mp_tokens *t, int total)
{
    return (mp_tokens){total - t->n_seq, t->seq_len, t->ids + (int64_t)t->n_seq * t->seq_len};
}

static int cmd_demo(args *a)
{
    mp_synth_opts o;
    mp_synth_defaults(&o);
    o.experts = 8;
    o.n_seq = 64; /* 48 to calibrate on (about 770 tokens per expert), 16 held out for the validation */
    const char *out = "moepack-demo", *name, *v;
    int rc = 0, r;
    while (rc == 0 && (r = next_opt(a, &name, &v, always_value)) != 0) {
        if (r < 0)
            rc = r;
        else if (!name)
            rc = mp_errorf(MP_EUSAGE, "demo: unexpected argument '%s'", v);
        else if (strcmp(name, "--out") == 0)
            out = v;
        else if (strcmp(name, "--arch") == 0)
            rc = mp_synth_parse_arch(v, &o.arch);
        else if (strcmp(name, "--seed") == 0)
            rc = parse_u64(name, v, &o.seed);
        else
            rc = mp_errorf(MP_EUSAGE, "demo: unknown option %s", name);
    }
    char model_dir[3000], tok[3100];
    if (rc == 0 && strlen(out) > 2800)
        rc = mp_errorf(MP_EUSAGE, "demo: --out path is too long");
    snprintf(model_dir, sizeof model_dir, "%.2900s/model", out);
    snprintf(tok, sizeof tok, "%s/tokens.h5", model_dir);
    rc = mp_mpi_agree(rc);
    int rank = mp_mpi_rank();
    if (rc == 0 && rank == 0) {
        printf("moepack demo: %d rank%s, output in %s\n", mp_mpi_size(), mp_mpi_size() == 1 ? "" : "s", out);
        rc = demo_model(&o, out, model_dir);
        if (rc == 0) {
            mp_inspect_info info;
            rc = mp_inspect_collect(model_dir, &info);
            if (rc == 0) {
                printf("\n== plan: the checkpoint\n");
                mp_inspect_print(&info, 0, stdout);
                rc = mp_inspect_status(&info);
                mp_inspect_free(&info);
            }
        }
        fflush(stdout);
    }
    MP_CHECK(mp_mpi_agree(rc));

    /* every rank opens the checkpoint and the tokens, then reads its share of the experts */
    mp_model *m = NULL;
    mp_tokens t = {0};
    rc = mp_model_open(model_dir, &m);
    if (rc == 0)
        rc = mp_tokens_read(tok, m->cfg.vocab, &t);
    rc = mp_mpi_agree(rc);
    mp_expert_scan_result res = {0};
    if (rc == 0)
        rc = mp_expert_scan(m, &res);
    if (rc == 0 && rank == 0) {
        printf("\n== experts: read by %d rank%s (%d units)\n", mp_mpi_size(), mp_mpi_size() == 1 ? "" : "s", res.n);
        printf("   layer expert  |gate|_F   |up|_F     |down|_F   xxh64\n");
        for (int i = 0; i < res.n; i++)
            printf("   %5d %6d  %9.4f  %9.4f  %9.4f  %016llx\n", res.rec[i].layer, res.rec[i].expert, res.rec[i].fro[0],
                   res.rec[i].fro[1], res.rec[i].fro[2], (unsigned long long)res.rec[i].hash);
        printf("tokens: %d sequences x %d\n", t.n_seq, t.seq_len);
        printf("expert digest: %016llx\n", (unsigned long long)res.digest);
        fflush(stdout);
    }
    mp_expert_scan_free(&res);

    /* the pipeline on the demo's job: every key at its default but the paths, and a quarter of the
     * sequences held out from calibration for the validation */
    char set_model[3100], set_tok[3200], set_out[3000], set_cal[64];
    snprintf(set_model, sizeof set_model, "model.path=%s", model_dir);
    snprintf(set_tok, sizeof set_tok, "calibration.tokens=%s", tok);
    snprintf(set_out, sizeof set_out, "output.dir=%.2900s", out);
    snprintf(set_cal, sizeof set_cal, "calibration.max_sequences=%d", t.n_seq - t.n_seq / 4);
    char *sets[] = {set_model, set_tok, set_out, set_cal};
    mp_job job;
    if (rc == 0)
        rc = mp_job_load(NULL, sets, 4, &job);
    int total = t.n_seq;
    if (rc == 0 && job.max_sequences > 0 && job.max_sequences < t.n_seq)
        t.n_seq = job.max_sequences;
    mp_tokens rest = rest_of(&t, total);
    rc = mp_mpi_agree(rc);
    mp_run run;
    mp_run_opts ro = {.quiet = 0, .held_out = &rest};
    if (rc == 0)
        rc = mp_pipeline_run(&job, m, &t, &ro, &run);
    if (rc == 0 && rank == 0) {
        const mp_summary *q = &run.sum[MP_STAGE_QUANTIZE];
        printf("\ndemo: compressed model in %s: %.0f bytes for the quantized weights = %.4f bits/weight (budget %.4f), "
               "predicted loss %.6g\n",
               out, mp_summary_get(q, "bytes_used"), mp_summary_get(q, "bits_per_weight"),
               mp_summary_get(q, "budget_bits"), mp_summary_get(q, "predicted_loss"));
        printf("demo: look at it with `moepack inspect %s --plot bits.svg`, get a Hugging Face checkpoint with "
               "`moepack export --in %s --format safetensors --out DIR`\n",
               out, out);
        const mp_summary *v = &run.sum[MP_STAGE_VALIDATE];
        printf("demo: validated on %.0f held-out tokens: perplexity %.4f -> %.4f, KL %.4g nats/token, top-1 agreement "
               "%.1f%%, Spearman(predicted, measured loss) %.3f over %.0f blocks (%s/validation.json)\n",
               mp_summary_get(v, "tokens"), mp_summary_get(v, "ppl_original"), mp_summary_get(v, "ppl_compressed"),
               mp_summary_get(v, "kl"), 100 * mp_summary_get(v, "top1"), mp_summary_get(v, "spearman_blocks"),
               mp_summary_get(v, "blocks"), out);
        fflush(stdout);
    }
    mp_tokens_free(&t);
    mp_model_close(m);
    return rc;
}

/* ---- calibrate / eval ------------------------------------------------------------------------ */

/* Every rank opens the model and reads the tokens (they are small); agreed. Only the first max_seqs
 * sequences are in t->n_seq; *rest (may be NULL) views the others. */
static int open_inputs(const char *model, const char *tokens, int max_seqs, mp_model **m, mp_tokens *t,
                       mp_tokens *rest)
{
    int rc = mp_model_open(model, m);
    if (rc == 0)
        rc = mp_tokens_read(tokens, (*m)->cfg.vocab, t);
    int total = t->n_seq;
    if (rc == 0 && max_seqs > 0 && max_seqs < t->n_seq)
        t->n_seq = max_seqs;
    if (rest)
        *rest = rest_of(t, total);
    if (rc == 0 && t->seq_len > (*m)->cfg.max_pos)
        rc = mp_errorf(MP_EFORMAT, "%s: sequences of %d tokens are longer than the model's %d positions", tokens,
                       t->seq_len, (*m)->cfg.max_pos);
    return mp_mpi_agree(rc);
}

/* --job FILE and --set section.key=value, shared by run, calibrate and plan; 1 when `name` was one */
static int job_option(const char *name, const char *v, const char **job_path, char **sets, int *nsets)
{
    if (!strcmp(name, "--job"))
        *job_path = v;
    else if (!strcmp(name, "--set"))
        sets[(*nsets)++] = (char *)v;
    else
        return 0;
    return 1;
}

/* `run` and `calibrate`: the stages up to the last (or calibration), resuming from the checkpoint
 * directory when it belongs to the same job. */
static int cmd_run(args *a, const char *cmdname)
{
    const char *job_path = NULL, *name, *v;
    char **sets = calloc((size_t)a->argc + 1, sizeof *sets);
    int nsets = 0, r;
    mp_run_opts o = {.until = !strcmp(cmdname, "calibrate") ? "calibrate" : NULL};
    int rc = sets ? 0 : mp_errorf(MP_ENOMEM, "out of memory");
    double walltime = 0;
    while (rc == 0 && (r = next_opt(a, &name, &v, always_value)) != 0) {
        if (r < 0)
            rc = r;
        else if (!name)
            rc = mp_errorf(MP_EUSAGE, "%s: unexpected argument '%s'", cmdname, v);
        else if (job_option(name, v, &job_path, sets, &nsets))
            continue;
        else if (!strcmp(name, "--fresh"))
            o.fresh = 1;
        else if (!strcmp(name, "--quiet"))
            o.quiet = 1;
        else if (!strcmp(name, "--log-json"))
            o.log_json = 1;
        else if (!strcmp(name, "--until") && strcmp(cmdname, "calibrate")) {
            o.until = v;
            if (mp_stage_index(v) < 0)
                rc = mp_errorf(MP_EUSAGE, "--until '%s': not a stage (calibrate, decompose, measure, allocate, "
                                          "quantize, validate)", v);
        } else if (!strcmp(name, "--walltime")) {
            char *end;
            walltime = strtod(v, &end);
            if (*end || walltime <= 0)
                rc = mp_errorf(MP_EUSAGE, "--walltime '%s': expected a positive number of seconds", v);
        } else
            rc = mp_errorf(MP_EUSAGE, "%s: unknown option %s", cmdname, name);
    }
    mp_job job;
    if (rc == 0)
        rc = mp_job_load(job_path, sets, nsets, &job);
    free(sets);
    MP_CHECK(mp_mpi_agree(rc));
    mp_walltime_set(walltime);
    mp_model *m = NULL;
    mp_tokens t = {0};
    mp_tokens rest = {0};
    rc = open_inputs(job.model_path, job.tokens_path, job.max_sequences, &m, &t, &rest);
    o.held_out = &rest; /* the sequences calibration does not use: validation tokens by default */
    mp_run run;
    if (rc == 0)
        rc = mp_pipeline_run(&job, m, &t, &o, &run);
    if (rc == 0 && mp_mpi_rank() == 0 && !o.log_json && !o.quiet && !o.until)
        printf("\nrun: the compressed model is in %s, its validation in %s/validation.json (moepack inspect, "
               "moepack export)\n",
               job.out_dir, job.out_dir);
    mp_tokens_free(&t);
    mp_model_close(m);
    return rc;
}

/* ---- plan ------------------------------------------------------------------------------------ */

/* `plan`: the job's plan for --ranks N (ownership, memory, disk, work per stage) without running it.
 * The model may be a config.json alone (a published one): its bytes are then those of bf16 tensors. */
static int cmd_plan(args *a)
{
    const char *job_path = NULL, *name, *v;
    char **sets = calloc((size_t)a->argc + 1, sizeof *sets);
    int nsets = 0, r, ranks = 0, json = 0, n_seq = 0, seq_len = 0;
    int rc = sets ? 0 : mp_errorf(MP_ENOMEM, "out of memory");
    while (rc == 0 && (r = next_opt(a, &name, &v, always_value)) != 0) {
        if (r < 0)
            rc = r;
        else if (!name)
            rc = mp_errorf(MP_EUSAGE, "plan: unexpected argument '%s'", v);
        else if (job_option(name, v, &job_path, sets, &nsets))
            continue;
        else if (!strcmp(name, "--json"))
            json = 1;
        else if (!strcmp(name, "--ranks"))
            rc = parse_int(name, v, &ranks);
        else if (!strcmp(name, "--sequences"))
            rc = parse_int(name, v, &n_seq);
        else if (!strcmp(name, "--seq-len"))
            rc = parse_int(name, v, &seq_len);
        else
            rc = mp_errorf(MP_EUSAGE, "plan: unknown option %s", name);
    }
    if (rc == 0 && ranks < 1)
        rc = mp_errorf(MP_EUSAGE, "plan needs --ranks N (N >= 1)");
    if (rc == 0 && (n_seq < 0 || seq_len < 0 || (n_seq > 0) != (seq_len > 0)))
        rc = mp_errorf(MP_EUSAGE, "plan: give both --sequences N and --seq-len T (positive), or neither");
    mp_job job;
    int have_tokens = n_seq > 0;
    if (rc == 0) { /* the tokens file is optional when the shape is given */
        int extra = 0;
        char tokset[32] = "calibration.tokens=-";
        sets[nsets] = tokset;
        for (int i = 0; i < nsets; i++)
            extra |= !strncmp(sets[i], "calibration.tokens=", 19);
        rc = mp_job_load(job_path, sets, nsets + (have_tokens && !extra), &job);
    }
    free(sets);
    mp_config cfg = {0};
    int64_t model_bytes = 0;
    if (rc == 0 && mp_mpi_rank() == 0) {
        char cp[4200];
        struct stat st;
        int cfg_only = stat(job.model_path, &st) == 0 && S_ISREG(st.st_mode); /* model.path = a config.json */
        snprintf(cp, sizeof cp, cfg_only ? "%s" : "%s/config.json", job.model_path);
        rc = mp_config_load(cp, &cfg);
        mp_model *m = NULL;
        if (rc == 0 && !cfg_only && mp_model_open_unchecked(job.model_path, &m) == 0) {
            for (int i = 0; i < m->ck->nfiles; i++)
                model_bytes += (int64_t)m->ck->files[i].size;
            mp_model_close(m);
        } else if (rc == 0) { /* a config.json alone: the tensors the registry lists, in bf16 */
            mp_error_clear();
            mp_tensor_spec *sp = NULL;
            int ns = 0;
            rc = mp_registry_list(&cfg, MP_LAYOUT_PER_EXPERT, &sp, &ns);
            for (int i = 0; i < ns; i++) {
                int64_t n = 1;
                for (int k = 0; k < sp[i].ndim; k++)
                    n *= sp[i].shape[k];
                model_bytes += 2 * n;
            }
            free(sp);
        }
        if (rc == 0 && !have_tokens) {
            mp_tokens t = {0};
            rc = mp_tokens_read(job.tokens_path, cfg.vocab, &t);
            if (rc == 0) {
                n_seq = job.max_sequences > 0 && job.max_sequences < t.n_seq ? job.max_sequences : t.n_seq;
                seq_len = t.seq_len;
            }
            mp_tokens_free(&t);
        }
        if (rc == 0) {
            double fraction = job.delta_fraction;
            if (job.delta_target_ratio > 0)
                fraction = mp_fraction_for_ratio(&cfg, job.delta_target_ratio);
            for (int q = 0; q < job.n_candidates; q++)
                fraction = q == 0 || job.candidates[q] > fraction ? job.candidates[q] : fraction;
            if (job.delta_rank > 0) /* a fixed rank: the fraction that gives it for the gate/up shape */
                fraction = (double)job.delta_rank * (cfg.hidden + cfg.moe_ffn) / ((double)cfg.hidden * cfg.moe_ffn);
            mp_plan p;
            mp_plan_make(&cfg, ranks, n_seq, seq_len, model_bytes, fraction, job.sample_tokens, &p);
            mp_plan_print(&p, &cfg, json, stdout);
        }
        mp_config_free(&cfg);
    }
    return mp_mpi_agree(rc);
}

/* the original and the compressed model side by side on the same tokens (collective) */
static int eval_compressed(const mp_model *m, const mp_tokens *t, const char *dir, const char *tokens)
{
    mp_outdir *o = NULL;
    mp_cweights *cw = NULL;
    mp_weights w[2];
    mp_epf *s[2] = {NULL, NULL};
    mp_head_cmp hc;
    int rc = mp_outdir_open(dir, &o);
    if (rc == 0)
        rc = mp_cweights_open(m, o, &cw, &w[1]);
    rc = mp_mpi_agree(rc);
    mp_model_weights(m, &w[0]);
    for (int k = 0; k < 2 && rc == 0; k++)
        rc = mp_epf_create(&w[k], t, NULL, NULL, &s[k]);
    for (int l = 0; l < m->cfg.n_layers && rc == 0; l++)
        for (int k = 0; k < 2 && rc == 0; k++)
            rc = mp_epf_layer(s[k], l, NULL);
    if (rc == 0)
        rc = mp_epf_head_compare(s[0], s[1], &hc);
    if (rc == 0 && mp_mpi_rank() == 0 && !(hc.n_pred > 0))
        rc = mp_errorf(MP_ENUMERIC, "%s: no predicted tokens", tokens);
    rc = mp_mpi_agree(rc);
    if (rc == 0 && mp_mpi_rank() == 0) {
        double n = (double)hc.n_pred;
        printf("eval: original   perplexity %.6f (mean NLL %.6f)\n", exp(hc.nll[0] / n), hc.nll[0] / n);
        printf("eval: compressed perplexity %.6f (mean NLL %.6f) from %s\n", exp(hc.nll[1] / n), hc.nll[1] / n, dir);
        printf("eval: KL(original || compressed) %.9g nats/token, top-1 agreement %.2f%% over %lld predicted tokens "
               "(%d sequences x %d)\n",
               hc.kl_sum / n, 100.0 * (double)hc.top1 / n, (long long)hc.n_pred, t->n_seq, t->seq_len);
    }
    for (int k = 0; k < 2; k++)
        mp_epf_free(s[k]);
    mp_cweights_close(cw);
    mp_outdir_close(o);
    return rc;
}

static int cmd_eval(args *a)
{
    const char *model = NULL, *tokens = NULL, *dump = NULL, *comp = NULL, *name, *v;
    int max_seqs = 0, rc = 0, r;
    while (rc == 0 && (r = next_opt(a, &name, &v, always_value)) != 0) {
        if (r < 0)
            rc = r;
        else if (!name)
            rc = mp_errorf(MP_EUSAGE, "eval: unexpected argument '%s'", v);
        else if (!strcmp(name, "--model"))
            model = v;
        else if (!strcmp(name, "--tokens"))
            tokens = v;
        else if (!strcmp(name, "--max-sequences"))
            rc = parse_int(name, v, &max_seqs);
        else if (!strcmp(name, "--dump-logits"))
            dump = v;
        else if (!strcmp(name, "--compressed"))
            comp = v;
        else
            rc = mp_errorf(MP_EUSAGE, "eval: unknown option %s", name);
    }
    if (rc == 0 && (!model || !tokens))
        rc = mp_errorf(MP_EUSAGE, "eval needs --model DIR and --tokens FILE");
    if (rc == 0 && max_seqs < 0)
        rc = mp_errorf(MP_EUSAGE, "eval: --max-sequences %d: expected N >= 0 (0 = all sequences)", max_seqs);
    if (rc == 0 && comp && dump)
        rc = mp_errorf(MP_EUSAGE, "eval: --dump-logits and --compressed cannot be combined");
    MP_CHECK(mp_mpi_agree(rc));
    mp_model *m = NULL;
    mp_tokens t = {0};
    rc = open_inputs(model, tokens, max_seqs, &m, &t, NULL);
    if (rc == 0 && comp) {
        rc = eval_compressed(m, &t, comp, tokens);
        mp_tokens_free(&t);
        mp_model_close(m);
        return rc;
    }
    mp_weights w;
    double nll = 0;
    int64_t npred = 0;
    mp_logits_dump *ld = NULL;
    if (rc == 0 && dump)
        rc = mp_mpi_agree(mp_logits_dump_create(t.n_seq, t.seq_len, m->cfg.vocab, &ld));
    double sec = 0; /* this rank's forward pass, the weights' first reads from the page cache included */
    if (rc == 0) {
        mp_model_weights(m, &w);
        double t0 = MPI_Wtime();
        rc = mp_epf_run(&w, &t, ld ? mp_logits_observe : NULL, ld, &nll, &npred);
        sec = MPI_Wtime() - t0;
    }
    if (rc == 0 && ld)
        rc = mp_logits_dump_write(ld, dump);
    mp_logits_dump_free(ld);
    if (rc == 0 && mp_mpi_rank() == 0 && !(npred > 0 && isfinite(exp(nll / (double)npred))))
        rc = mp_errorf(MP_ENUMERIC, "%s: the perplexity is not finite (%lld predicted tokens)", tokens,
                       (long long)npred);
    rc = mp_mpi_agree(rc);
    double slowest = sec;
    if (rc == 0)
        MP_MPI(MPI_Reduce(&sec, &slowest, 1, MPI_DOUBLE, MPI_MAX, 0, MPI_COMM_WORLD));
    if (rc == 0 && mp_mpi_rank() == 0) {
        printf("eval: perplexity %.6f (mean NLL %.6f over %lld predicted tokens, %d sequences x %d)\n",
               exp(nll / (double)npred), nll / (double)npred, (long long)npred, t.n_seq, t.seq_len);
        printf("eval: forward %.3f s, %.0f tokens/s (the slowest of %d rank(s); reading the files before it not "
               "included)\n",
               slowest, (double)t.n_seq * t.seq_len / slowest, mp_mpi_size());
    }
    mp_tokens_free(&t);
    mp_model_close(m);
    return rc;
}

/* ---- export ---------------------------------------------------------------------------------- */

static int cmd_export(args *a)
{
    const char *in = NULL, *out = NULL, *format = NULL, *source = NULL, *name, *v;
    uint64_t shard = 5000000000ULL;
    int rc = 0, r;
    while (rc == 0 && (r = next_opt(a, &name, &v, always_value)) != 0) {
        if (r < 0)
            rc = r;
        else if (!name)
            rc = mp_errorf(MP_EUSAGE, "export: unexpected argument '%s'", v);
        else if (!strcmp(name, "--in"))
            in = v;
        else if (!strcmp(name, "--out"))
            out = v;
        else if (!strcmp(name, "--format"))
            format = v;
        else if (!strcmp(name, "--source"))
            source = v;
        else if (!strcmp(name, "--shard-bytes"))
            rc = parse_u64(name, v, &shard);
        else
            rc = mp_errorf(MP_EUSAGE, "export: unknown option %s", name);
    }
    if (rc == 0 && (!in || !out))
        rc = mp_errorf(MP_EUSAGE, "export needs --in OUTDIR and --out DIR (and --format safetensors)");
    if (rc == 0 && format && strcmp(format, "safetensors"))
        rc = mp_errorf(MP_EUSAGE, "export --format '%s': the only format is safetensors", format);
    if (rc == 0 && shard < 1024)
        rc = mp_errorf(MP_EUSAGE, "export --shard-bytes %llu: too small", (unsigned long long)shard);
    rc = mp_mpi_agree(rc);
    if (rc == 0 && mp_mpi_rank() == 0) {
        rc = mp_export_safetensors(in, out, source, shard, stdout);
        if (rc == 0)
            printf("export: wrote %s (Hugging Face safetensors, dequantized from %s)\n", out, in);
    }
    return mp_mpi_agree(rc);
}

/* ---- version --------------------------------------------------------------------------------- */

static int cmd_version(void)
{
    if (mp_mpi_rank() != 0)
        return 0;
    char gpu[256], mpiv[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    mp_gpu_build_info(gpu, sizeof gpu);
    MPI_Get_library_version(mpiv, &len);
    char *nl = strchr(mpiv, '\n');
    if (nl)
        *nl = '\0';
    printf("moepack %s\n", MOEPACK_VERSION);
    printf("  MPI:  %s\n", mpiv);
    printf("  GPU:  %s%s\n", MOEPACK_HAVE_CUDA ? "built with " : "", gpu);
    int n = mp_gpu_device_count();
    if (MOEPACK_HAVE_CUDA) {
        if (n == 0)
            printf("        no usable CUDA device on this machine\n");
        for (int d = 0; d < n; d++) {
            mp_gpu_describe(d, gpu, sizeof gpu);
            printf("        %s\n", gpu);
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    mp_signals_install(); /* before MPI: a signal during start-up is kept for the first unit boundary */
    int rc = mp_mpi_init(&argc, &argv);
    if (rc < 0) {
        fprintf(stderr, "moepack: error: %s\n", mp_error_message());
        return mp_exit_code(rc);
    }
    mp_h5_init();
    const char *cmd = argc > 1 ? argv[1] : NULL;
    args a = {argc, argv, 2};
    if (!cmd) {
        if (mp_mpi_rank() == 0)
            fputs(USAGE, stderr);
        rc = MP_EUSAGE;
    } else if (!strcmp(cmd, "--help") || !strcmp(cmd, "-h") || !strcmp(cmd, "help")) {
        if (mp_mpi_rank() == 0)
            fputs(USAGE, stdout);
    } else if (!strcmp(cmd, "--version") || !strcmp(cmd, "version"))
        rc = cmd_version();
    else if (!strcmp(cmd, "synth"))
        rc = cmd_synth(&a);
    else if (!strcmp(cmd, "inspect"))
        rc = cmd_inspect(&a);
    else if (!strcmp(cmd, "demo"))
        rc = cmd_demo(&a);
    else if (!strcmp(cmd, "calibrate") || !strcmp(cmd, "run"))
        rc = cmd_run(&a, cmd);
    else if (!strcmp(cmd, "eval"))
        rc = cmd_eval(&a);
    else if (!strcmp(cmd, "plan"))
        rc = cmd_plan(&a);
    else if (!strcmp(cmd, "export"))
        rc = cmd_export(&a);
    else
        rc = mp_errorf(MP_EUSAGE, "unknown command '%s' (see moepack --help)", cmd);
    mp_mpi_report(rc);
    mp_mpi_finalize();
    return mp_exit_code(rc);
}
