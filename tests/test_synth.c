/* test_synth.c - `moepack synth` output: a valid checkpoint whose config
 * round-trips, byte-identical for a seed, identical values in the per-expert
 * and fused layouts, sharding that opens as one checkpoint, and experts with
 * the documented structure: W_a - W_b is rank <= 2r plus small noise (checked
 * with LAPACK's SVD), and a failed write leaves nothing behind. */
#define _GNU_SOURCE
#include <lapacke.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fsutil.h"
#include "model.h"
#include "synth.h"
#include "testutil.h"
#include "tokens.h"

static char g_root[512];

static void path(char *buf, size_t cap, const char *name) { snprintf(buf, cap, "%s/%s", g_root, name); }

static int same_file(const char *a, const char *b)
{
    char *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    int same = mp_read_file(a, &x, &nx) == 0 && mp_read_file(b, &y, &ny) == 0 && nx == ny && !memcmp(x, y, nx);
    free(x);
    free(y);
    return same;
}

/* singular values (descending) of the [rows, cols] matrix a - b */
static void diff_svals(const float *a, const float *b, int rows, int cols, double *s)
{
    double *d = malloc(sizeof(double) * (size_t)rows * (size_t)cols);
    for (int i = 0; i < rows * cols; i++)
        d[i] = (double)a[i] - b[i];
    CHECK(LAPACKE_dgesdd(LAPACK_ROW_MAJOR, 'N', rows, cols, d, cols, s, NULL, rows, NULL, cols) == 0);
    free(d);
}

int main(void)
{
    snprintf(g_root, sizeof g_root, "%s/synth.%d", MP_TEST_TMP, (int)getpid());
    CHECK_OK(mp_mkdir_p(g_root));
    char a[700], b[700], c[700], f1[800], f2[900];

    mp_synth_opts o;
    mp_synth_defaults(&o);
    o.arch = MP_ARCH_QWEN3_MOE;
    o.experts = 6;
    o.hidden = 64;
    o.ffn = 96;
    o.seed = 77;
    path(a, sizeof a, "a");
    path(b, sizeof b, "b");
    CHECK_OK(mp_synth_write(&o, a));
    CHECK_OK(mp_synth_write(&o, b));
    /* deterministic: the same bytes */
    static const char *files[] = {"config.json", "model.safetensors", "tokens.h5"};
    for (int i = 0; i < 3; i++) {
        snprintf(f1, sizeof f1, "%s/%s", a, files[i]);
        snprintf(f2, sizeof f2, "%s/%s", b, files[i]);
        CHECK(same_file(f1, f2));
    }
    /* tokens.h5 holds the same ids */
    mp_tokens ta = {0}, tb = {0};
    snprintf(f1, sizeof f1, "%s/tokens.h5", a);
    snprintf(f2, sizeof f2, "%s/tokens.h5", b);
    CHECK_OK(mp_tokens_read(f1, o.vocab, &ta));
    CHECK_OK(mp_tokens_read(f2, o.vocab, &tb));
    CHECK(ta.n_seq == o.n_seq && ta.seq_len == o.seq_len);
    CHECK(ta.ids && tb.ids && !memcmp(ta.ids, tb.ids, sizeof(int32_t) * (size_t)(ta.n_seq * ta.seq_len)));
    /* Zipf-like: the most frequent token is much more frequent than the median one */
    int *cnt = calloc((size_t)o.vocab, sizeof *cnt), maxc = 0;
    for (int i = 0; ta.ids && i < ta.n_seq * ta.seq_len; i++)
        cnt[ta.ids[i]]++;
    for (int i = 0; i < o.vocab; i++)
        maxc = cnt[i] > maxc ? cnt[i] : maxc;
    CHECK(cnt[0] == maxc && maxc > 10);
    free(cnt);
    mp_tokens_free(&ta);
    mp_tokens_free(&tb);

    /* the checkpoint opens, the config round-trips */
    mp_model *ma = NULL, *mc = NULL;
    CHECK_OK(mp_model_open(a, &ma));
    if (ma) {
        CHECK(ma->cfg.arch == MP_ARCH_QWEN3_MOE && ma->cfg.n_experts == 6 && ma->cfg.moe_ffn == 96);
        CHECK(ma->cfg.hidden == 64 && ma->cfg.n_layers == o.layers && ma->cfg.top_k == o.top_k);
        CHECK(ma->layout == MP_LAYOUT_PER_EXPERT && ma->ck->nfiles == 1);
    }
    /* fused + 3 shards: same expert values */
    o.layout = MP_LAYOUT_FUSED;
    o.shards = 3;
    path(c, sizeof c, "c");
    CHECK_OK(mp_synth_write(&o, c));
    CHECK_OK(mp_model_open(c, &mc));
    if (ma && mc) {
        CHECK(mc->layout == MP_LAYOUT_FUSED && mc->ck->nfiles >= 2 && mc->ck->sharded);
        int f = 96, d = 64;
        float *x = malloc(sizeof(float) * (size_t)(f * d)), *y = malloc(sizeof(float) * (size_t)(f * d));
        int same = 1;
        for (int l = 0; l < o.layers; l++)
            for (int e = 0; e < o.experts; e++)
                for (int p = 0; p < 3; p++) {
                    CHECK_OK(mp_model_read_expert(ma, l, e, (mp_proj)p, x));
                    CHECK_OK(mp_model_read_expert(mc, l, e, (mp_proj)p, y));
                    same &= !memcmp(x, y, sizeof(float) * (size_t)(f * d));
                }
        CHECK(same);

        /* structure: W_1 - W_0 = P1 Q1 - P0 Q0 + noise, rank 2r with r = min(f, d)/8 = 8 */
        double s[64];
        float *w0 = x, *w1 = y;
        for (int p = 0; p < 3; p++) {
            int rows = p == MP_PROJ_DOWN ? d : f, cols = p == MP_PROJ_DOWN ? f : d;
            CHECK_OK(mp_model_read_expert(ma, 1, 0, (mp_proj)p, w0));
            CHECK_OK(mp_model_read_expert(ma, 1, 1, (mp_proj)p, w1));
            diff_svals(w1, w0, rows, cols, s);
            double gap = s[15] / s[16];
            fprintf(stderr, "  %s: sigma_1 %.3f sigma_16 %.3f sigma_17 %.3f (gap %.1f)\n", mp_proj_name((mp_proj)p),
                    s[0], s[15], s[16], gap);
            CHECK(gap > 3.0);
            /* and the shared component dominates the expert-specific part */
            double nw = 0, nd = 0;
            for (int i = 0; i < rows * cols; i++)
                nw += (double)w0[i] * w0[i], nd += ((double)w1[i] - w0[i]) * ((double)w1[i] - w0[i]);
            CHECK(nd < nw);
        }
        free(x);
        free(y);
    }
    mp_model_close(ma);
    mp_model_close(mc);

    /* bad options and an occupied output: an error, nothing written */
    mp_synth_opts bad = o;
    bad.top_k = 9;
    path(f1, sizeof f1, "never");
    CHECK_ERR(mp_synth_write(&bad, f1), MP_EUSAGE, "--top-k");
    CHECK(access(f1, F_OK) != 0);
    CHECK_ERR(mp_synth_write(&o, a), MP_EUSAGE, "not an empty directory");
    snprintf(f1, sizeof f1, "%s/config.json", a);
    CHECK(same_file(f1, f1) && access(f1, F_OK) == 0);
    /* unwritable parent: the temporary directory is not left behind */
    path(f1, sizeof f1, "ro");
    mkdir(f1, 0555);
    snprintf(f2, sizeof f2, "%s/model", f1);
    if (geteuid() != 0) {
        CHECK(mp_synth_write(&o, f2) == MP_EIO);
        CHECK(access(f2, F_OK) != 0);
    }
    rmdir(f1);

    if (t_failures == 0) {
        char cmd[700];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", g_root);
        CHECK(system(cmd) == 0);
    }
    return t_done("synth");
}
