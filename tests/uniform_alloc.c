/* uniform_alloc.c - tests: write a uniform allocation (one format for every block; deltas at their stored
 * rank) into CKPT/alloc/layerLLLL/alloc.json, as the allocate stage would, so that the quantize stage and
 * the output can be tested on their own.
 * usage: uniform_alloc MODEL_DIR CKPT_DIR FORMAT [FORMAT_V] [--no-delta] */
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
        fprintf(stderr, "usage: uniform_alloc MODEL_DIR CKPT_DIR FORMAT [FORMAT_V] [--no-delta]\n");
        return 2;
    }
    int delta = !(argc > 4 && !strcmp(argv[argc - 1], "--no-delta"));
    const char *fv_name = argc > 4 && strcmp(argv[4], "--no-delta") ? argv[4] : argv[3];
    const mp_qformat *f = NULL, *fv = NULL;
    mp_model *m = NULL;
    int rc = mp_qformat_find(argv[3], &f);
    if (rc == 0)
        rc = mp_qformat_find(fv_name, &fv);
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
            int64_t fs = ch->kind == MP_BK_SHARED ? c->shared_ffn : c->moe_ffn;
            int64_t rows = ch->proj == 2 ? c->hidden : fs, cols = ch->proj == 2 ? fs : c->hidden;
            if (ch->kind == MP_BK_DELTA) {
                char path[4400];
                double energy, kept;
                snprintf(path, sizeof path, "%s/decomp/layer%04d/expert%04d.h5", argv[2], l, ch->unit);
                rc = mp_factors_read_loss(path, ch->proj, &ch->rank, &energy, &kept);
                ch->fmt = f, ch->fmt_v = fv;
                ch->bytes = mp_qformat_bytes(f, rows, ch->rank) + mp_qformat_bytes(fv, ch->rank, cols);
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
        mp_alloc_path(path, sizeof path, argv[2], l);
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
