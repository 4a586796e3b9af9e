/* test_mpi_fail.c - run with mpiexec -n 1, 2, 4. Rank 0 synthesises a model
 * and all ranks scan its experts: the records gathered on root match a serial
 * read, and the digest does not depend on the number of ranks. Then a NaN is
 * planted in the last expert (owned by the last rank): every rank must come
 * back from the scan with the error (MP_ENUMERIC) instead of hanging. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include "expert_scan.h"
#include "fsutil.h"
#include "runtime.h"
#include "synth.h"
#include "testutil.h"

/* the serial reference: XXH64 over each expert's gate, up, down fp32 values */
static uint64_t serial_digest(const mp_model *m)
{
    const mp_config *c = &m->cfg;
    size_t n = (size_t)c->hidden * (size_t)c->moe_ffn;
    float *buf = malloc(n * 3 * sizeof *buf);
    XXH64_state_t *all = XXH64_createState();
    XXH64_reset(all, 0);
    for (int l = 0; l < c->n_layers; l++)
        for (int e = 0; c->is_moe[l] && e < c->n_experts; e++) {
            for (int p = 0; p < 3; p++)
                CHECK_OK(mp_model_read_expert(m, l, e, (mp_proj)p, buf + (size_t)p * n));
            uint64_t h = XXH64(buf, 3 * n * sizeof *buf, 0);
            XXH64_update(all, &h, sizeof h);
        }
    uint64_t d = XXH64_digest(all);
    XXH64_freeState(all);
    free(buf);
    return d;
}

int main(int argc, char **argv)
{
    CHECK_OK(mp_mpi_init(&argc, &argv));
    int rank = mp_mpi_rank(), size = mp_mpi_size();
    if (argc < 2) {
        fprintf(stderr, "usage: test_mpi_fail DIR\n");
        return 2;
    }
    char dir[600], cmd[700];
    snprintf(dir, sizeof dir, "%s", argv[1]);
    int rc = 0;
    if (rank == 0) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        CHECK(system(cmd) == 0);
        mp_synth_opts o;
        mp_synth_defaults(&o);
        o.arch = MP_ARCH_DEEPSEEK_V2; /* layer 0 dense, layer 1 MoE */
        o.layers = 3;
        o.experts = 6;
        o.ffn = 32;
        rc = mp_synth_write(&o, dir);
        CHECK_OK(rc);
    }
    CHECK_OK(mp_mpi_agree(rc));

    mp_model *m = NULL;
    CHECK_OK(mp_mpi_agree(mp_model_open(dir, &m)));
    mp_expert_scan_result r;
    CHECK_OK(mp_expert_scan(m, &r));
    CHECK(r.n == 2 * 6);
    if (rank == 0) {
        CHECK(r.rec != NULL);
        CHECK(r.digest == serial_digest(m));
        for (int i = 0; r.rec && i < r.n; i++)
            CHECK(r.rec[i].layer == 1 + i / 6 && r.rec[i].expert == i % 6 && r.rec[i].fro[2] > 0);
        printf("digest with %d ranks: %016llx\n", size, (unsigned long long)r.digest);
    } else
        CHECK(r.rec == NULL);
    mp_expert_scan_free(&r);

    /* plant a NaN in the last expert's down projection (the mapping is read-only; write the file) */
    if (rank == 0) {
        mp_block_loc b;
        mp_expert_block(&m->cfg, m->layout, 2, 5, MP_PROJ_DOWN, &b);
        const mp_tensor *t = mp_ckpt_find(m->ck, b.name);
        CHECK(t != NULL);
        const mp_st_file *f = &m->ck->files[t->file];
        off_t off = (off_t)(t->data - f->map) + 7 * 4;
        int fd = open(f->path, O_WRONLY);
        float nan = NAN;
        CHECK(fd >= 0 && pwrite(fd, &nan, 4, off) == 4);
        close(fd);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    mp_model_close(m);
    m = NULL;
    CHECK_OK(mp_mpi_agree(mp_model_open(dir, &m)));
    mp_error_clear();
    rc = mp_expert_scan(m, &r);
    CHECK(rc == MP_ENUMERIC);
    if (rank == size - 1)
        CHECK(strstr(mp_error_message(), "non-finite value at element 7 (layer 2, expert 5, down)") != NULL);
    else
        CHECK(strstr(mp_error_message(), "rank") != NULL);
    mp_model_close(m);

    int failures = t_failures, all = 0;
    MPI_Allreduce(&failures, &all, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0 && all == 0) {
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        CHECK(system(cmd) == 0);
    }
    mp_mpi_finalize();
    return all ? 1 : t_done("mpi_fail");
}
