/* metric_reduce.c - fp64 metric sums over ranks, NCCL or MPI (contract in metric_reduce.h). */
#include "metric_reduce.h"

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#include "error.h"
#include "gpu_comm.h"
#include "runtime.h"

struct mp_metric_reducer {
    mp_reduce_backend backend;
    int device;
    mp_gpu_comm *comm;
    char why[256];
};

int mp_metric_reducer_create(mp_reduce_backend want, mp_metric_reducer **out)
{
    *out = NULL;
    int rank = mp_mpi_rank(), size = mp_mpi_size(), lrank = 0, lsize = 1;
    MP_CHECK(mp_mpi_node_rank(&lrank, &lsize));
    mp_metric_reducer *r = calloc(1, sizeof *r);
    int rc = mp_mpi_agree(r ? 0 : mp_errorf(MP_ENOMEM, "out of memory (metric reducer)"));
    if (rc < 0) {
        free(r);
        return rc;
    }
    r->device = -1;
    r->backend = MP_REDUCE_MPI;
    /* can this rank take part in NCCL? */
    int dev = -1;
    rc = 0;
    if (want != MP_REDUCE_MPI) {
        if (!mp_gpu_comm_available())
            rc = mp_errorf(MP_EUSAGE, "this build has no NCCL");
        else
            rc = mp_gpu_device_for_local_rank(lrank, lsize, &dev);
        if (rc < 0)
            snprintf(r->why, sizeof r->why, "%s", mp_error_message());
    }
    int can = want != MP_REDUCE_MPI && rc == 0, all = 0;
    MP_MPI(MPI_Allreduce(&can, &all, 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
    if (want == MP_REDUCE_NCCL) {
        if (rc < 0)
            mp_error_prefix("NCCL metric reduction");
        rc = mp_mpi_agree(rc);
        if (rc < 0) {
            free(r);
            return rc;
        }
    } else if (rc < 0) {
        mp_error_clear(); /* AUTO: not an error, the reason is kept */
    }
    if (want == MP_REDUCE_AUTO && !all && !r->why[0])
        snprintf(r->why, sizeof r->why, "another rank has no GPU of its own or no NCCL");
    if (!all)
        goto done;
    unsigned char id[MP_GPU_COMM_ID_BYTES] = {0};
    rc = mp_mpi_agree(rank == 0 ? mp_gpu_comm_unique_id(id) : 0);
    if (rc < 0) {
        free(r);
        return rc;
    }
    MP_MPI(MPI_Bcast(id, MP_GPU_COMM_ID_BYTES, MPI_BYTE, 0, MPI_COMM_WORLD));
    rc = mp_gpu_comm_create(id, size, rank, dev, &r->comm);
    if (rc < 0) /* ncclCommInitRank is collective: the other ranks may be inside it already */
        mp_mpi_fail(rc);
    r->backend = MP_REDUCE_NCCL;
    r->device = dev;
    r->why[0] = '\0';
done:
    *out = r;
    return 0;
}

int mp_metric_reducer_sum(mp_metric_reducer *r, double *values, int64_t count)
{
    if (count < 0 || count > INT_MAX)
        return mp_errorf(MP_EUSAGE, "metric reduction of %lld values", (long long)count);
    if (count == 0)
        return 0;
    if (r->backend == MP_REDUCE_NCCL) {
        int rc = mp_gpu_comm_sum(r->comm, values, count);
        if (rc < 0) /* a rank that left an NCCL collective leaves the others waiting in it */
            mp_mpi_fail(rc);
        return 0;
    }
    MP_MPI(MPI_Allreduce(MPI_IN_PLACE, values, (int)count, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD));
    return 0;
}

mp_reduce_backend mp_metric_reducer_backend(const mp_metric_reducer *r) { return r->backend; }

int mp_metric_reducer_device(const mp_metric_reducer *r) { return r->device; }

const char *mp_metric_reducer_why(const mp_metric_reducer *r) { return r->why; }

void mp_metric_reducer_destroy(mp_metric_reducer *r)
{
    if (!r)
        return;
    mp_gpu_comm_destroy(r->comm);
    free(r);
}
