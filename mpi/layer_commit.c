/* layer_commit.c - per-layer manifests from the owners' unit checksums (see layer_commit.h). */
#include "layer_commit.h"

#include <stdlib.h>

#include "error.h"
#include "runtime.h"
#include "store.h"

int mp_commit_layer_units(int rc, const char *dir, int l, uint64_t fp, uint64_t *h, int n, mp_unit_name_fn name,
                          int starved, const char *fault)
{
    rc = mp_mpi_agree(rc);
    if (rc < 0)
        return rc;
    MP_MPI(MPI_Allreduce(MPI_IN_PLACE, h, 2 * n, MPI_UINT64_T, MPI_SUM, MPI_COMM_WORLD));
    if (mp_mpi_rank() == 0) {
        char *nbuf = malloc((size_t)n * 32);
        const char **names = malloc(sizeof *names * (size_t)n);
        uint64_t *hs = malloc(sizeof *hs * (size_t)n);
        int k = 0;
        if (!nbuf || !names || !hs)
            rc = mp_errorf(MP_ENOMEM, "out of memory");
        for (int u = 0; u < n && rc == 0; u++)
            if (h[n + u]) {
                name(u, n, nbuf + (size_t)k * 32, 32);
                names[k] = nbuf + (size_t)k * 32, hs[k] = h[u], k++;
            }
        mp_fault_point(fault);
        if (rc == 0)
            rc = mp_store_commit_layer(dir, l, fp, names, hs, k, starved);
        free(nbuf), free(names), free(hs);
    }
    return mp_mpi_agree(rc);
}
