/* logits_dump.c - the logits of every sequence, gathered on rank 0 (see logits_dump.h). */
#include "logits_dump.h"

#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "logits_file.h"
#include "plan.h"
#include "runtime.h"

struct mp_logits_dump {
    int n_seq, seq_len, vocab, rank, size;
    int64_t lo, hi; /* this rank's sequences */
    float *v;       /* [hi - lo, seq_len, vocab] */
};

int mp_logits_dump_create(int n_seq, int seq_len, int vocab, mp_logits_dump **out)
{
    mp_logits_dump *d = calloc(1, sizeof *d);
    if (!d)
        return mp_errorf(MP_ENOMEM, "out of memory");
    d->n_seq = n_seq, d->seq_len = seq_len, d->vocab = vocab, d->rank = mp_mpi_rank(), d->size = mp_mpi_size();
    mp_seq_range(n_seq, d->rank, d->size, &d->lo, &d->hi);
    d->v = calloc((size_t)((d->hi - d->lo) * seq_len * vocab) + 1, sizeof(float));
    if (!d->v) {
        long long n = (long long)(d->hi - d->lo);
        free(d);
        return mp_errorf(MP_ENOMEM, "out of memory for the logits of %lld sequences", n);
    }
    *out = d;
    return 0;
}

void mp_logits_dump_free(mp_logits_dump *d)
{
    if (d)
        free(d->v);
    free(d);
}

void mp_logits_observe(void *ctx, const char *what, int index, int seq0, int nseq, int width, const float *rows)
{
    mp_logits_dump *d = ctx;
    (void)index;
    if (strcmp(what, "logits") || width != d->vocab || seq0 < d->lo || seq0 + nseq > d->hi)
        return;
    memcpy(d->v + (int64_t)(seq0 - d->lo) * d->seq_len * d->vocab, rows,
           sizeof(float) * (size_t)nseq * (size_t)d->seq_len * (size_t)d->vocab);
}

int mp_logits_dump_write(mp_logits_dump *d, const char *path)
{
    int64_t per = (int64_t)d->seq_len * d->vocab;
    int *cnt = malloc(sizeof(int) * (size_t)d->size * 2), rc = 0;
    float *all = d->rank == 0 ? malloc(sizeof(float) * (size_t)(d->n_seq * per) + 1) : NULL;
    if (!cnt || (d->rank == 0 && !all))
        rc = mp_errorf(MP_ENOMEM, "out of memory for the logits");
    if ((int64_t)d->n_seq * per > 2147483647LL)
        rc = mp_errorf(MP_EUSAGE, "--dump-logits: %lld values are too many for one gather; use fewer sequences",
                       (long long)d->n_seq * per);
    rc = mp_mpi_agree(rc);
    if (rc == 0) {
        int *dsp = cnt + d->size;
        for (int r = 0; r < d->size; r++) {
            int64_t a, b;
            mp_seq_range(d->n_seq, r, d->size, &a, &b);
            cnt[r] = (int)((b - a) * per), dsp[r] = (int)(a * per);
        }
        MP_MPI(MPI_Gatherv(d->v, (int)((d->hi - d->lo) * per), MPI_FLOAT, all, cnt, dsp, MPI_FLOAT, 0, MPI_COMM_WORLD));
        if (d->rank == 0)
            rc = mp_logits_write(path, all, d->n_seq, d->seq_len, d->vocab);
    }
    free(cnt), free(all);
    return mp_mpi_agree(rc);
}
