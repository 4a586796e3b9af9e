/* plan.c - ownership and resource estimates of a job (see plan.h). */
#include "plan.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "decompose.h"
#include "error.h"
#include "forward.h"

void mp_shard_range(int64_t n, int rank, int size, int64_t *lo, int64_t *hi)
{
    *lo = n * rank / size;
    *hi = n * (rank + 1) / size;
}

void mp_seq_range(int64_t n_seq, int rank, int size, int64_t *lo, int64_t *hi)
{
    mp_shard_range(n_seq, rank, size, lo, hi);
}

int mp_unit_owner(int l, int u, int n_experts, int nranks)
{
    if (u == MP_UNIT_DENSE) /* the only unit of its layer: owned like unit 0 */
        u = 0;
    return (int)(((int64_t)l * (n_experts + 1) + u) % nranks);
}

/* What the process holds before any stage (MPI, HDF5, OpenBLAS's buffers, code): measured on the
 * development machine as the peak RSS of a run on a model of a few kilobytes. */
#define BASE_BYTES ((int64_t)56 << 20)
/* an HDF5 file of n payload bytes (datasets, attributes, object headers) */
static int64_t h5_file(int64_t payload) { return payload + 8192; }

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* the statistics file of a unit (stats.h): packed fp64 Grams, the fp64 vectors, the sample of t tokens */
static int64_t stats_file(int64_t d, int64_t f, int64_t t)
{
    return h5_file(8 * (d * (d + 1) / 2 + f * (f + 1) / 2 + 2 * (d + f)) + t * (4 * (d + f) + 8));
}

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

void mp_plan_make(const mp_config *c, int P, int n_seq, int S, int64_t model_bytes, double fraction, int sample_tokens,
                  mp_plan *p)
{
    memset(p, 0, sizeof *p);
    int64_t d = c->hidden, f = c->moe_ffn, E = c->n_experts, K = c->top_k, V = c->vocab;
    int64_t fs = c->n_shared > 0 ? c->shared_ffn : 0, J = K + 1, units = E + (fs > 0);
    int64_t qd = (int64_t)c->n_heads * c->head_dim, kvd = (int64_t)c->n_kv_heads * c->head_dim;
    int L = mp_config_n_moe_layers(c);
    p->ranks = P, p->n_seq = n_seq, p->seq_len = S, p->moe_layers = L, p->model_bytes = model_bytes;
    p->delta_fraction = fraction, p->sample_tokens = sample_tokens;
    p->seqs_per_rank = (n_seq + P - 1) / P;
    p->units_per_rank = (int)((L * units + P - 1) / P);
    int64_t T = p->seqs_per_rank * S, Tall = (int64_t)n_seq * S;
    int64_t units_layer = (units + P - 1) / P; /* units of one layer on the busiest rank */

    /* calibration: hidden states, attention scratch, one layer's non-expert weights, the routing and
     * exchange buffers (a token goes to K experts and the shared one; receivers get their share), one
     * expert's weights and chunk buffers, one unit's fp64 statistics (packed upper triangles) and their
     * in-memory file and its image (packed too), the token sample (heap rows, the sorted copy, in the file and its image: a routed
     * expert gets Tall K / E tokens on average, the shared one all); at the end, the output head and
     * one sequence's logits */
    int64_t hidden = 3 * T * d * 4 + (mp_attention_scratch(c, S) + S * d) * 4;
    int64_t attn_w = (2 * qd + 2 * kvd) * d;
    if (c->arch == MP_ARCH_DEEPSEEK_V2 || c->arch == MP_ARCH_DEEPSEEK_V3) { /* latent attention */
        int64_t H = c->n_heads, qk = c->qk_nope_dim + c->qk_rope_dim, ql = c->q_lora_rank, r = c->kv_lora_rank;
        attn_w = (ql > 0 ? ql * d + H * qk * ql : H * qk * d) + (r + c->qk_rope_dim) * d +
                 H * (c->qk_nope_dim + c->v_head_dim) * r + d * H * c->v_head_dim;
    }
    int64_t layer_w = (attn_w + E * d + 3 * fs * d + 2 * d) * 4;
    int64_t slots = K + (fs > 0);
    /* the busiest owner receives its units' share of the routed tokens, the shared expert's included */
    int64_t nsend = T * slots, nrecv = Tall * slots;
    if (P > 1 && Tall * (K * units_layer / (E > 0 ? E : 1) + (fs > 0)) < nrecv)
        nrecv = Tall * (K * units_layer / (E > 0 ? E : 1) + (fs > 0));
    /* one rank exchanges nothing: the owner reads its rows from the window itself (ep_forward.c), and only
     * the routed metadata and the outputs are kept per slot */
    int64_t route = T * E * 4 + T * J * 8 +
                    (P > 1 ? nsend * (24 + 2 * d * 4) + nrecv * (24 + 2 * d * 4 + 8) : nsend * (24 + d * 4));
    int64_t ffn = f > fs ? f : fs;
    int64_t expert = 3 * ffn * d * 4 + 256 * (2 * d + ffn + 1) * 4 + 256 * (d + ffn) * 8;
    int64_t t_routed = min64(sample_tokens, E > 0 ? Tall * K / E : 0),
            t_shared = fs > 0 ? min64(sample_tokens, Tall) : 0;
    int64_t stats = 3 * 4 * (d * d + ffn * ffn) + units_layer * 8 * (d + ffn) +
                    3 * max64(t_routed * (d + f), t_shared * (d + fs)) * 4;
    int64_t head = V * d * 4 + S * V * 4 + 2 * d * 4;
    p->st[MP_PLAN_CALIBRATE].peak_bytes = BASE_BYTES + hidden + max64(layer_w + route + expert + stats, head);
    int64_t unit_file = stats_file(d, f, t_routed), shared_file = fs > 0 ? stats_file(d, fs, t_shared) : 0;
    p->st[MP_PLAN_CALIBRATE].ckpt_total = (int64_t)L * (E * unit_file + shared_file + 4096);
    p->st[MP_PLAN_CALIBRATE].ckpt_bytes = (int64_t)p->units_per_rank * max64(unit_file, shared_file);
    /* the dense MLPs of the non-MoE layers: one unit each, every token (like the shared expert) */
    int64_t Ld = 0, fd = c->dense_ffn;
    for (int l = 0; l < c->n_layers; l++)
        Ld += mp_config_dense_mlp(c, l);
    int64_t dense_file = Ld ? stats_file(d, fd, min64(sample_tokens, Tall)) : 0;
    p->st[MP_PLAN_CALIBRATE].ckpt_total += Ld * (dense_file + 4096);
    p->st[MP_PLAN_CALIBRATE].ckpt_bytes += (Ld + P - 1) / P * dense_file;
    double layer_flops = 2.0 * ((2 * qd + 2 * kvd) * d + E * d) + 2.0 * S * qd * 2;
    p->st[MP_PLAN_CALIBRATE].flops =
        (double)c->n_layers * T * layer_flops + (double)L * (nrecv * (6.0 * f * d) + nrecv * (double)(d * d + f * f)) +
        (double)((Ld + P - 1) / P) * Tall * (6.0 * fd * d + (double)(d * d + fd * fd)) + 2.0 * T * V * d;

    /* decomposition: the base of every projection on every rank, this rank's rows of all experts, then
     * for one expert and projection the delta (fp32 + fp64), Gram and factor (fp64), SVD work space and
     * factors, the expert's statistics and its in-memory factor file */
    int64_t base = 3 * d * f * 4 + f * 8 + E * (d + f) * 8;
    int64_t rows_share = (f + P - 1) / P * d > (d + P - 1) / P * f ? (f + P - 1) / P * d : (d + P - 1) / P * f;
    int64_t basebuf = rows_share * E * 4;
    int64_t r = mp_rank_for_fraction(fraction, f, d), k = d < f ? d : f;
    int64_t m1 = f, n1 = d; /* gate/up: [f, d]; down: [d, f] */
    int64_t work = 0;
    for (int q = 0; q < 2; q++) {
        int64_t rows = q ? n1 : m1, cols = q ? m1 : n1;
        int64_t w = rows * cols * (4 + 8 + 8) + 2 * cols * cols * 8 + k * 8 + (rows + cols) * r * (8 + 4) +
                    k * (rows + cols) * 8; /* w, D, A; G, S; sigma; U, V (fp64 + fp32); SVD u, vt */
        work = max64(work, w);
    }
    int64_t st_read = 8 * (d * d + f * f + 2 * (d + f)) + t_routed * (d + f) * 4;
    int64_t factors = 3 * (f + d) * r * 4 + 3 * k * 8;
    p->st[MP_PLAN_DECOMPOSE].peak_bytes = BASE_BYTES + base + max64(basebuf, work + st_read + factors);
    int64_t efile = h5_file(factors), bfile = h5_file(3 * d * f * 4 + f * 8);
    p->st[MP_PLAN_DECOMPOSE].ckpt_total = (int64_t)L * (E * efile + bfile + 4096);
    p->st[MP_PLAN_DECOMPOSE].ckpt_bytes = (int64_t)((L * E + P - 1) / P) * efile + (int64_t)L * bfile;
    p->st[MP_PLAN_DECOMPOSE].flops =
        (double)((L * E + P - 1) / P) * 3 * (4.0 * (double)f * d * k + (double)k * k * k + 2.0 * (double)k * k * (f > d ? f : d));
}

static void human(char *buf, size_t cap, double b)
{
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
    int i = 0;
    while (b >= 1024 && i < 5)
        b /= 1024, i++;
    snprintf(buf, cap, i ? "%.1f %s" : "%.0f %s", b, u[i]);
}

void mp_plan_print(const mp_plan *p, const mp_config *c, int json, FILE *out)
{
    static const char *names[MP_PLAN_NSTAGES] = {"calibrate", "decompose"};
    if (json) {
        fprintf(out, "{\"ranks\": %d, \"sequences\": %d, \"seq_len\": %d, \"moe_layers\": %d, \"units_per_rank\": %d, "
                     "\"model_bytes\": %lld, \"delta_fraction\": %g, \"sample_tokens\": %d, \"stages\": {",
                p->ranks, p->n_seq, p->seq_len, p->moe_layers, p->units_per_rank, (long long)p->model_bytes,
                p->delta_fraction, p->sample_tokens);
        for (int s = 0; s < MP_PLAN_NSTAGES; s++)
            fprintf(out, "%s\"%s\": {\"peak_bytes_per_rank\": %lld, \"ckpt_bytes_per_rank\": %lld, "
                         "\"ckpt_bytes\": %lld, \"out_bytes\": %lld, \"flops_per_rank\": %.6g}",
                    s ? ", " : "", names[s], (long long)p->st[s].peak_bytes, (long long)p->st[s].ckpt_bytes,
                    (long long)p->st[s].ckpt_total, (long long)p->st[s].out_bytes, p->st[s].flops);
        fprintf(out, "}}\n");
        return;
    }
    char a[32], b[32], t[32], m[32];
    human(m, sizeof m, (double)p->model_bytes);
    fprintf(out, "plan: %s (d %d, f %d, %d experts, %d MoE layers of %d), model %s on disk\n",
            mp_arch_name(c->arch), c->hidden, c->moe_ffn, c->n_experts, p->moe_layers, c->n_layers, m);
    fprintf(out, "      %d rank%s: %lld of %d sequences x %d tokens and %d expert units per rank (%d sampled tokens "
                 "each)\n",
            p->ranks, p->ranks == 1 ? "" : "s", (long long)p->seqs_per_rank, p->n_seq, p->seq_len, p->units_per_rank,
            p->sample_tokens);
    fprintf(out, "  %-10s %16s %18s %16s %14s\n", "stage", "peak RSS/rank", "checkpoint/rank", "checkpoint", "TFLOP/rank");
    int64_t peak = 0, disk = 0;
    for (int s = 0; s < MP_PLAN_NSTAGES; s++) {
        human(a, sizeof a, (double)p->st[s].peak_bytes);
        human(b, sizeof b, (double)p->st[s].ckpt_bytes);
        human(t, sizeof t, (double)p->st[s].ckpt_total);
        fprintf(out, "  %-10s %16s %18s %16s %14.3g\n", names[s], a, b, t, p->st[s].flops / 1e12);
        peak = max64(peak, p->st[s].peak_bytes), disk += p->st[s].ckpt_total;
    }
    human(a, sizeof a, (double)peak);
    human(b, sizeof b, (double)disk);
    fprintf(out, "  ask for: --mem-per-cpu >= %s (peak + 20%% headroom: ", a);
    human(a, sizeof a, 1.2 * (double)peak);
    fprintf(out, "%s), checkpoint disk >= %s; output: written by the stages to come\n", a, b);
}
