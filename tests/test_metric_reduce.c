/* test_metric_reduce.c - run with mpiexec -n 1, 2, 4: metric sums over ranks (mpi/metric_reduce.h).
 * The MPI backend always; AUTO picks NCCL when every rank has a GPU of its own, else MPI with a reason;
 * asking for NCCL where it cannot run fails on every rank (MP_EUSAGE) instead of hanging. Sums are
 * checked exactly: slots owned by one rank (0 elsewhere) and small dyadic partials, which any order adds
 * exactly. On a machine with enough GPUs the NCCL backend is checked the same way. */
#include "gpu_comm.h"
#include "gpu_info.h"
#include "metric_reduce.h"
#include "runtime.h"
#include "testutil.h"

static void check_sums(mp_metric_reducer *r, int rank, int size, const char *what)
{
    enum { N = 1000 };
    double *v = malloc(N * sizeof *v);
    for (int k = 0; k < N; k++)
        v[k] = k % size == rank ? 1.1 * (k + 1) : 0.0; /* owned slots */
    v[N - 1] = rank + 0.5;                             /* a partial from every rank */
    CHECK_OK(mp_metric_reducer_sum(r, v, N));
    int bad = 0;
    for (int k = 0; k < N - 1; k++)
        bad += v[k] != 1.1 * (k + 1);
    CHECK(bad == 0);
    CHECK(v[N - 1] == size * (size - 1) / 2.0 + 0.5 * size);
    CHECK_OK(mp_metric_reducer_sum(r, v, 0));
    CHECK_ERR(mp_metric_reducer_sum(r, v, -1), MP_EUSAGE, "metric reduction of -1 values");
    if (bad && rank == 0)
        fprintf(stderr, "%s: %d slots differ\n", what, bad);
    free(v);
}

int main(int argc, char **argv)
{
    CHECK_OK(mp_mpi_init(&argc, &argv));
    int rank = mp_mpi_rank(), size = mp_mpi_size();
    mp_metric_reducer *r = NULL;

    CHECK_OK(mp_metric_reducer_create(MP_REDUCE_MPI, &r));
    CHECK(mp_metric_reducer_backend(r) == MP_REDUCE_MPI && mp_metric_reducer_device(r) == -1);
    check_sums(r, rank, size, "mpi");
    mp_metric_reducer_destroy(r);

    CHECK_OK(mp_metric_reducer_create(MP_REDUCE_AUTO, &r));
    int nccl = mp_metric_reducer_backend(r) == MP_REDUCE_NCCL;
    if (rank == 0)
        printf("gpu_reduce: %d ranks, AUTO chose %s%s%s\n", size, nccl ? "NCCL" : "MPI", nccl ? "" : ": ",
               mp_metric_reducer_why(r));
    CHECK(nccl || mp_metric_reducer_why(r)[0] != '\0');
    if (nccl)
        CHECK(mp_metric_reducer_device(r) >= 0 && mp_metric_reducer_device(r) < mp_gpu_device_count());
    check_sums(r, rank, size, nccl ? "nccl (auto)" : "mpi (auto)");
    mp_metric_reducer_destroy(r);

    int rc = mp_metric_reducer_create(MP_REDUCE_NCCL, &r);
    if (nccl) {
        CHECK(rc == 0);
        check_sums(r, rank, size, "nccl");
        mp_metric_reducer_destroy(r);
    } else {
        CHECK(rc == MP_EUSAGE && r == NULL);
        if (mp_gpu_device_count() == 0) /* every rank failed itself and says why */
            CHECK(strstr(mp_error_message(), "NCCL metric reduction: ") != NULL);
        if (rank == 0)
            printf("gpu_reduce: NCCL not tested (%s); refusing it was: %s\n",
                   mp_gpu_comm_available() ? "no GPU for every rank" : "built without NCCL", mp_error_message());
    }
    mp_mpi_finalize();
    return t_done(rank == 0 ? "gpu_reduce" : "gpu_reduce (other rank)");
}
