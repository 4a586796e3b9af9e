/* quant_stage.c - the quantize stage and the output it ends with (see quant_stage.h). */
#include "quant_stage.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allocation.h"
#include "blocks.h"
#include "error.h"
#include "fsutil.h"
#include "layer_commit.h"
#include "output.h"
#include "plan.h"
#include "qunit.h"
#include "runtime.h"
#include "store.h"

typedef struct {
    const mp_model *m;
    const mp_job *job;
    const char *dir, *stats_dir, *decomp_dir;
    char alloc_dir[4400];
    int rank, size, E, shared, delta;
    uint64_t fp;
} qctx;

/* where the allocation is: the allocate stage's directory (checkpoint.dir/alloc) */
static void alloc_dir(const mp_run *r, char *buf, size_t cap)
{
    int a = mp_stage_index("allocate");
    if (a >= 0)
        snprintf(buf, cap, "%s", r->dir[a]);
    else
        snprintf(buf, cap, "%s/alloc", r->job->ckpt_dir);
}

/* units of a MoE layer: 0..E-1 routed experts, E the shared expert, E + 1 the base; n = E + 2. A dense
 * layer's only unit (n = 1): its dense MLP. */
static int unit_id(int u, int n)
{
    int E = n - 2;
    return n == 1 ? MP_UNIT_DENSE : u == E + 1 ? -1 : u;
}

static void unit_file_name(int u, int n, char *buf, size_t cap) { mp_qunit_file(unit_id(u, n), n - 2, buf, (int)cap); }

int mp_quant_begin(mp_run *r, int s)
{
    const mp_config *c = &r->m->cfg;
    qctx *x = calloc(1, sizeof *x);
    r->state = x;
    if (!x)
        return mp_errorf(MP_ENOMEM, "out of memory");
    x->m = r->m, x->job = r->job, x->dir = r->dir[s], x->stats_dir = r->dir[MP_STAGE_CALIBRATE];
    x->delta = r->job->delta_enabled;
    x->decomp_dir = x->delta ? r->dir[MP_STAGE_DECOMPOSE] : NULL;
    x->rank = r->rank, x->size = r->size, x->E = c->n_experts, x->fp = r->fp[s];
    x->shared = c->n_shared > 0 && c->shared_ffn > 0;
    alloc_dir(r, x->alloc_dir, sizeof x->alloc_dir);
    return 0;
}

/* the layer's allocation, its blocks checked against the expected ones (allocation.h's order) */
static int read_alloc(const qctx *x, int l, mp_layer_alloc *a)
{
    char path[4600];
    mp_alloc_path(path, sizeof path, x->alloc_dir, l);
    MP_CHECK(mp_alloc_read(path, a));
    mp_layer_alloc want = {0};
    int rc = mp_layer_units_blocks(&x->m->cfg, l, x->delta, &want);
    if (rc == 0 && (a->n != want.n || a->layer != l))
        rc = mp_errorf(MP_EFORMAT, "%s: %d blocks for layer %d, the model has %d (%s)", path, a->n, a->layer, want.n,
                       !x->m->cfg.is_moe[l] ? "a dense MLP"
                       : x->delta           ? (x->shared ? "decomposition on, a shared expert" : "decomposition on")
                       : x->shared          ? "decomposition off, a shared expert"
                                            : "decomposition off");
    for (int b = 0; rc == 0 && b < a->n; b++)
        if (a->c[b].kind != want.c[b].kind || a->c[b].unit != want.c[b].unit || a->c[b].proj != want.c[b].proj)
            rc = mp_errorf(MP_EFORMAT, "%s: block %d is %s %d %s, expected %s %d %s", path, b,
                           mp_block_kind_name(a->c[b].kind), a->c[b].unit, MP_PROJ_NAME[a->c[b].proj],
                           mp_block_kind_name(want.c[b].kind), want.c[b].unit, MP_PROJ_NAME[want.c[b].proj]);
    mp_layer_alloc_free(&want);
    if (rc < 0)
        mp_layer_alloc_free(a);
    return rc;
}

/* index of block (unit, proj) in the layer's block order */
static int block_index(const qctx *x, int unit, int p)
{
    int off = x->delta ? 3 : 0;
    if (unit < 0) /* the base, or a dense layer's only unit */
        return p;
    return off + 3 * unit + p; /* the shared expert (unit E) follows the routed ones */
}

static int quantize_unit(const qctx *x, int l, int unit, const mp_layer_alloc *a, uint64_t *hash)
{
    mp_blocks_ctx cx = {x->m, x->job, x->stats_dir, x->decomp_dir};
    mp_block_src b[3];
    MP_CHECK(mp_blocks_load(&cx, l, unit, b));
    char path[4600], fn[32];
    mp_qunit_file(unit, x->E, fn, sizeof fn);
    snprintf(path, sizeof path, "%s/layer%04d/%s", x->dir, l, fn);
    mp_qunit *qu = NULL;
    int64_t est = 0;
    for (int p = 0; p < 3; p++)
        est += a->c[block_index(x, unit, p)].bytes;
    int rc = mp_qunit_create(path, unit, x->E, est, &qu);
    for (int p = 0; p < 3 && rc == 0; p++) {
        const mp_choice *ch = &a->c[block_index(x, unit, p)];
        mp_qtensor *q0 = NULL, *q1 = NULL;
        int64_t bytes = 0;
        rc = mp_block_quantize(&b[p], x->job, ch, &q0, &q1);
        if (rc == 0)
            rc = mp_qunit_put(qu, ch, b[p].m, b[p].n, q0, q1, &bytes);
        if (rc == 0 && bytes != ch->bytes)
            rc = mp_errorf(
                MP_EINTERNAL, "layer %d %s %d %s: the allocation counts %lld bytes, the quantized tensors store %lld",
                l, mp_block_kind_name(ch->kind), ch->unit, MP_PROJ_NAME[p], (long long)ch->bytes, (long long)bytes);
        mp_qtensor_destroy(q0);
        mp_qtensor_destroy(q1);
    }
    mp_blocks_free(b);
    if (rc == 0) {
        rc = mp_qunit_save(qu);
        if (rc == 0)
            rc = mp_file_xxh64(path, hash);
    } else
        mp_qunit_discard(qu);
    return rc;
}

int mp_quant_layer(mp_run *r, int s, int l, int committed)
{
    qctx *x = r->state;
    (void)s;
    if (committed)
        return 0;
    char ldir[4600];
    snprintf(ldir, sizeof ldir, "%s/layer%04d", x->dir, l);
    MP_CHECK(mp_mpi_agree(mp_mkdir_p(ldir)));
    mp_layer_alloc a = {0};
    int E = x->E, moe = x->m->cfg.is_moe[l], n = moe ? E + 2 : 1, rc = read_alloc(x, l, &a);
    uint64_t *h = calloc((size_t)(2 * n), sizeof *h);
    if (rc == 0 && !h)
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    for (int u = 0; u < n && rc == 0; u++) {
        if (moe && ((u == E && !x->shared) || (u == E + 1 && !x->delta)))
            continue;
        if (mp_unit_owner(l, unit_id(u, n) == MP_UNIT_DENSE ? MP_UNIT_DENSE : u, E, x->size) != x->rank)
            continue;
        rc = quantize_unit(x, l, unit_id(u, n), &a, &h[u]);
        if (rc == 0) {
            h[n + u] = 1;
            mp_fault_point("quantize: unit committed");
        }
    }
    mp_layer_alloc_free(&a);
    rc = mp_commit_layer_units(rc, x->dir, l, x->fp, h, n, unit_file_name, 0, "quantize: before layer manifest");
    free(h);
    return rc;
}

/* rank 0: the items, their sizes and the /moepack numbers; broadcast to every rank */
static int output_plan(mp_run *r, int s, mp_out_plan *p, mp_out_meta *meta, int64_t **tokens)
{
    qctx *x = r->state;
    int rc = mp_out_items(r->m, x->delta, p);
    *tokens = NULL;
    memset(meta, 0, sizeof *meta);
    if (rc == 0 && r->rank == 0) {
        rc = mp_out_unit_sizes(p, r->m, x->dir);
        if (rc == 0)
            rc = mp_out_meta_collect(r->m, r->job, p, x->alloc_dir, x->stats_dir, meta, tokens);
        if (rc == 0) {
            mp_fingerprint fp;
            mp_job_fingerprint(r->m, r->tok, &fp);
            meta->fingerprint = r->fp[s], meta->model_fingerprint = fp.all;
        }
    }
    int64_t *sz = rc == 0 ? calloc((size_t)(2 * p->n + 1), sizeof *sz) : NULL;
    if (rc == 0 && !sz)
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    rc = mp_mpi_agree(rc);
    if (rc < 0) {
        free(sz);
        free(*tokens), *tokens = NULL;
        mp_out_plan_free(p);
        return rc;
    }
    for (int i = 0; r->rank == 0 && i < p->n; i++)
        sz[i] = p->items[i].data_bytes, sz[p->n + i] = p->items[i].pack_bytes;
    MP_MPI(MPI_Bcast(sz, 2 * p->n, MPI_INT64_T, 0, MPI_COMM_WORLD));
    MP_MPI(MPI_Bcast(meta, (int)sizeof *meta, MPI_BYTE, 0, MPI_COMM_WORLD));
    for (int i = 0; i < p->n; i++)
        p->items[i].data_bytes = sz[i], p->items[i].pack_bytes = sz[p->n + i];
    free(sz);
    int64_t nt = (int64_t)meta->n_moe * meta->cols;
    if (r->rank != 0)
        *tokens = calloc((size_t)nt + 1, sizeof **tokens);
    if (!*tokens)
        mp_mpi_fail(mp_errorf(MP_ENOMEM, "out of memory"));
    MP_MPI(MPI_Bcast(*tokens, (int)nt, MPI_INT64_T, 0, MPI_COMM_WORLD));
    mp_out_pack(p, r->job->shard_bytes);
    return 0;
}

/* the shards (in parallel) and index.json (rank 0, last); *out_bytes = the shards' bytes */
static int write_output(mp_run *r, const mp_out_plan *p, const mp_out_meta *meta, const int64_t *tokens,
                        double *out_bytes)
{
    qctx *x = r->state;
    const char *dir = r->job->out_dir;
    int K = p->nshards, rc = 0, intact = 0;
    char why[600] = "";
    if (r->rank == 0) {
        rc = mp_mkdir_p(dir);
        if (rc == 0)
            rc = mp_out_intact(dir, meta->fingerprint, &intact, why, sizeof why);
        if (rc == 0 && !intact && strstr(why, "other parameters")) /* the same model's, under other keys */
            fprintf(r->o->log_json ? stderr : stdout, "moepack: note: replacing the output in %s (%s)\n", dir, why);
        if (rc == 0 && !intact)
            rc = mp_out_begin(dir); /* no index.json while shards are replaced */
    }
    MP_CHECK(mp_mpi_agree(rc));
    MP_MPI(MPI_Bcast(&intact, 1, MPI_INT, 0, MPI_COMM_WORLD));
    uint64_t *h = calloc((size_t)K + 1, sizeof *h);
    int64_t *sz = calloc((size_t)K + 1, sizeof *sz);
    if (!h || !sz)
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    for (int k = 0; k < K && rc == 0 && !intact; k++) {
        if (k % r->size != r->rank)
            continue;
        rc = mp_out_write_shard(dir, p, k, r->m, x->dir, meta, tokens, &h[k], &sz[k]);
        if (rc == 0)
            mp_fault_point("output: shard committed");
    }
    rc = mp_mpi_agree(rc);
    if (rc == 0 && !intact) {
        MP_MPI(MPI_Allreduce(MPI_IN_PLACE, h, K, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD));
        MP_MPI(MPI_Allreduce(MPI_IN_PLACE, sz, K, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD));
    }
    if (rc == 0 && r->rank == 0 && !intact) {
        char tmp[4400];
        snprintf(tmp, sizeof tmp, "%s/index.json.tmp", dir);
        rc = mp_out_prune(dir, K);
        if (rc == 0)
            rc = mp_out_index_write(tmp, p, r->m, r->job, x->dir, x->alloc_dir, meta, h, sz);
        if (rc == 0) {
            mp_fault_point("output: index.json written, not renamed");
            rc = mp_out_index_commit(tmp, dir);
        }
    }
    *out_bytes = 0;
    for (int k = 0; k < K; k++)
        *out_bytes += (double)sz[k];
    if (intact && r->rank == 0) /* the sizes of the shards found intact, as they were written */
        rc = mp_out_written_bytes(dir, out_bytes);
    free(h), free(sz);
    rc = mp_mpi_agree(rc);
    MP_MPI(MPI_Bcast(out_bytes, 1, MPI_DOUBLE, 0, MPI_COMM_WORLD));
    return rc;
}

int mp_quant_end(mp_run *r, int s, int ok)
{
    qctx *x = r->state;
    int rc = 0;
    if (x && ok) {
        mp_out_plan p = {0};
        mp_out_meta meta;
        int64_t *tokens = NULL;
        double out_bytes = 0;
        rc = output_plan(r, s, &p, &meta, &tokens);
        if (rc == 0)
            rc = write_output(r, &p, &meta, tokens, &out_bytes);
        if (rc == 0) {
            mp_summary *sum = &r->sum[s];
            mp_summary_set(sum, "bytes_used", (double)meta.bytes_used);
            mp_summary_set(sum, "budget_bytes", meta.budget_bytes);
            mp_summary_set(sum, "moe_weights", (double)meta.moe_weights);
            mp_summary_set(sum, "bits_per_weight",
                           meta.moe_weights ? 8.0 * (double)meta.bytes_used / (double)meta.moe_weights : 0);
            mp_summary_set(sum, "budget_bits", meta.budget_bits);
            mp_summary_set(sum, "predicted_loss", meta.predicted_loss);
            mp_summary_set(sum, "shards", p.nshards);
            mp_summary_set(sum, "output_bytes", out_bytes);
        }
        free(tokens);
        mp_out_plan_free(&p);
    }
    free(x);
    r->state = NULL;
    return rc;
}

void mp_quant_print(const mp_run *r, int s, FILE *out)
{
    const mp_summary *sum = &r->sum[s];
    fprintf(out,
            "quantize: %.0f bytes for %.0f weights = %.4f bits/weight (budget %.0f bytes = %.4f bits/weight, "
            "%.2f%% used); predicted loss %.6g\n",
            mp_summary_get(sum, "bytes_used"), mp_summary_get(sum, "moe_weights"),
            mp_summary_get(sum, "bits_per_weight"), mp_summary_get(sum, "budget_bytes"),
            mp_summary_get(sum, "budget_bits"),
            100 * mp_summary_get(sum, "bytes_used") / mp_summary_get(sum, "budget_bytes"),
            mp_summary_get(sum, "predicted_loss"));
    fprintf(out, "output: %.0f shard(s), %.0f bytes in %s (moepack inspect %s)\n", mp_summary_get(sum, "shards"),
            mp_summary_get(sum, "output_bytes"), r->job->out_dir, r->job->out_dir);
}

int mp_quant_output_kept(mp_run *r, int s, int *ok)
{
    int good = 0, rc = 0;
    char why[600] = "";
    if (r->rank == 0) {
        rc = mp_out_intact(r->job->out_dir, r->fp[s], &good, why, sizeof why);
        if (rc == 0 && !good)
            fprintf(r->o->log_json ? stderr : stdout, "moepack: note: output in %s: %s; writing it again\n",
                    r->job->out_dir, why[0] ? why : "no index.json");
    }
    MP_CHECK(mp_mpi_agree(rc));
    MP_MPI(MPI_Bcast(&good, 1, MPI_INT, 0, MPI_COMM_WORLD));
    *ok = good;
    return 0;
}
