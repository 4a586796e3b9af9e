/* expert_scan.c - sharded read of all routed experts (see expert_scan.h). */
#include "expert_scan.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "error.h"
#include "plan.h"
#include "runtime.h"

static int scan_one(const mp_model *m, int l, int e, float *buf, mp_expert_record *r)
{
    const mp_config *c = &m->cfg;
    XXH64_state_t *st = XXH64_createState();
    if (!st)
        return mp_errorf(MP_ENOMEM, "out of memory");
    XXH64_reset(st, 0);
    r->layer = l;
    r->expert = e;
    for (int p = 0; p < 3; p++) {
        int64_t n = (int64_t)c->hidden * c->moe_ffn;
        int rc = mp_model_read_expert(m, l, e, (mp_proj)p, buf);
        if (rc < 0) {
            XXH64_freeState(st);
            MP_CHECK(rc);
        }
        rc = mp_model_check_finite(m, l, e, (mp_proj)p, buf);
        if (rc < 0) {
            XXH64_freeState(st);
            MP_CHECK(rc);
        }
        double s = 0;
        for (int64_t i = 0; i < n; i++)
            s += (double)buf[i] * buf[i];
        r->fro[p] = sqrt(s);
        XXH64_update(st, buf, (size_t)n * sizeof(float));
    }
    r->hash = XXH64_digest(st);
    XXH64_freeState(st);
    return 0;
}

int mp_expert_scan(const mp_model *m, mp_expert_scan_result *out)
{
    const mp_config *c = &m->cfg;
    int rank = mp_mpi_rank(), size = mp_mpi_size(), rc = 0;
    memset(out, 0, sizeof *out);
    int nmoe = mp_config_n_moe_layers(c);
    int64_t n = (int64_t)nmoe * c->n_experts, lo, hi;
    mp_shard_range(n, rank, size, &lo, &hi);
    mp_expert_record *mine = calloc((size_t)(hi - lo) + 1, sizeof *mine);
    float *buf = malloc(sizeof(float) * (size_t)c->hidden * (size_t)c->moe_ffn);
    int *counts = NULL, *displs = NULL;
    mp_expert_record *all = NULL;
    if (!mine || !buf)
        rc = mp_errorf(MP_ENOMEM, "out of memory");
    for (int64_t u = lo; u < hi && rc == 0; u++) {
        int k = (int)(u / c->n_experts), e = (int)(u % c->n_experts), l = -1;
        for (int i = 0, seen = -1; i < c->n_layers; i++)
            if (c->is_moe[i] && ++seen == k) {
                l = i;
                break;
            }
        rc = scan_one(m, l, e, buf, &mine[u - lo]);
    }
    free(buf);
    if (rank == 0) {
        counts = calloc((size_t)size, sizeof *counts);
        displs = calloc((size_t)size, sizeof *displs);
        all = calloc((size_t)n + 1, sizeof *all);
        if (rc == 0 && (!counts || !displs || !all))
            rc = mp_errorf(MP_ENOMEM, "out of memory");
    }
    rc = mp_mpi_agree(rc);
    if (rc == 0) {
        if (rank == 0)
            for (int r = 0; r < size; r++) {
                int64_t a, b;
                mp_shard_range(n, r, size, &a, &b);
                counts[r] = (int)((b - a) * (int64_t)sizeof *all);
                displs[r] = (int)(a * (int64_t)sizeof *all);
            }
        MP_MPI(MPI_Gatherv(mine, (int)((hi - lo) * (int64_t)sizeof *mine), MPI_BYTE, all, counts, displs, MPI_BYTE, 0,
                           MPI_COMM_WORLD));
    }
    free(mine);
    free(counts);
    free(displs);
    if (rc < 0) {
        free(all);
        return rc;
    }
    out->n = (int)n;
    if (rank == 0) {
        XXH64_state_t *st = XXH64_createState();
        if (!st) {
            free(all);
            return mp_errorf(MP_ENOMEM, "out of memory");
        }
        XXH64_reset(st, 0);
        for (int64_t i = 0; i < n; i++)
            XXH64_update(st, &all[i].hash, sizeof all[i].hash);
        out->digest = XXH64_digest(st);
        XXH64_freeState(st);
        out->rec = all;
    } else
        free(all);
    return 0;
}

void mp_expert_scan_free(mp_expert_scan_result *r)
{
    free(r->rec);
    memset(r, 0, sizeof *r);
}
