/* uniform_alloc.c - tests: write an allocation by hand into CKPT/alloc/layerLLLL/alloc.json, as the allocate
 * stage would, so that the quantize stage and the output can be tested on their own.
 * usage: uniform_alloc MODEL_DIR CKPT_DIR FORMATS [--no-delta] [--rank R] [--vary-rank]
 *   FORMATS   comma-separated; block b (allocation.h's order) takes FORMATS[b mod n], the V factor of a
 *             delta FORMATS[(b + 1) mod n] (one name: every block in that format)
 *   --rank R  every delta at rank R (default: the rank stored in CKPT/decomp)
 *   --vary-rank  expert e at rank R (e mod 3 = 0), R / 2 (1) or 0, the base alone (2)
 * Bytes are mp_qformat_bytes of what is stored; losses are made up (1e-3 (b + 1) / n_blocks). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "allocation.h"
#include "error.h"
#include "factors.h"
#include "fsutil.h"
#include "model.h"
#include "quant.h"

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: uniform_alloc MODEL_DIR CKPT_DIR FORMATS [--no-delta] [--rank R] [--vary-rank]\n");
        return 2;
    }
    int delta = 1, vary = 0, nf = 0, rc = 0;
    int64_t fixed = 0;
    for (int i = 4; i < argc; i++) {
        if (!strcmp(argv[i], "--no-delta"))
            delta = 0;
        else if (!strcmp(argv[i], "--vary-rank"))
            vary = 1;
        else if (!strcmp(argv[i], "--rank") && i + 1 < argc)
            fixed = atoll(argv[++i]);
        else {
            fprintf(stderr, "uniform_alloc: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    const mp_qformat *fl[16];
    mp_model *m = NULL;
    rc = mp_qformat_parse_list(argv[3], fl, 16, &nf);
    if (rc == 0)
        rc = mp_model_open(argv[1], &m);
    const mp_config *c = m ? &m->cfg : NULL;
    for (int l = 0; rc == 0 && l < c->n_layers; l++) {
        if (!c->is_moe[l])
            continue;
        int shared = c->n_shared > 0 && c->shared_ffn > 0;
        mp_layer_alloc a = {0};
        rc = mp_layer_blocks(l, c->n_experts, shared, delta, &a);
        for (int b = 0; rc == 0 && b < a.n; b++) {
            mp_choice *ch = &a.c[b];
            const mp_qformat *f = fl[b % nf], *fv = fl[(b + 1) % nf];
            int64_t fs = ch->kind == MP_BK_SHARED ? c->shared_ffn : c->moe_ffn;
            int64_t rows = ch->proj == 2 ? c->hidden : fs, cols = ch->proj == 2 ? fs : c->hidden;
            if (ch->kind == MP_BK_DELTA) {
                ch->rank = fixed;
                if (!fixed) {
                    char path[4400];
                    double energy, kept;
                    snprintf(path, sizeof path, "%s/decomp/layer%04d/expert%04d.h5", argv[2], l, ch->unit);
                    rc = mp_factors_read_loss(path, ch->proj, &ch->rank, &energy, &kept);
                }
                if (vary)
                    ch->rank = ch->unit % 3 == 0 ? ch->rank : ch->unit % 3 == 1 ? (ch->rank + 1) / 2 : 0;
                ch->fmt = ch->rank ? f : NULL, ch->fmt_v = ch->rank ? fv : NULL;
                ch->bytes = ch->rank ? mp_qformat_bytes(f, rows, ch->rank) + mp_qformat_bytes(fv, ch->rank, cols) : 0;
            } else {
                ch->fmt = f;
                ch->bytes = mp_qformat_bytes(f, rows, cols);
            }
            ch->loss = 1e-3 * (double)(b + 1) / a.n;
            ch->loss_raw = ch->loss * 10;
        }
        char dir[4400], path[4500];
        snprintf(dir, sizeof dir, "%s/alloc/layer%04d", argv[2], l);
        if (rc == 0)
            rc = mp_mkdir_p(dir);
        snprintf(path, sizeof path, "%s/alloc.json", dir);
        if (rc == 0)
            rc = mp_alloc_write(path, &a);
        mp_layer_alloc_free(&a);
    }
    mp_model_close(m);
    if (rc < 0) {
        fprintf(stderr, "uniform_alloc: %s\n", mp_error_message());
        return 1;
    }
    return 0;
}
