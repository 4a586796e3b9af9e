/* runtime.c - MPI start-up, error agreement and aborts (see runtime.h). */
#include "runtime.h"

#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>

#include "error.h"

static int g_rank = 0, g_size = 1;
static int g_peer_failed = 0; /* the last error came from another rank */

int mp_mpi_init(int *argc, char ***argv)
{
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        return mp_errorf(MP_EMPI, "MPI_Init_thread failed");
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    /* one BLAS thread per rank: ranks fill the cores, and results must not depend on thread counts */
    openblas_set_num_threads(1);
    return 0;
}

void mp_mpi_finalize(void) { MPI_Finalize(); }

int mp_mpi_rank(void) { return g_rank; }

int mp_mpi_size(void) { return g_size; }

int mp_mpi_check(int mpirc, const char *what)
{
    if (mpirc == MPI_SUCCESS)
        return 0;
    char msg[MPI_MAX_ERROR_STRING] = "";
    int len = 0;
    MPI_Error_string(mpirc, msg, &len);
    return mp_errorf(MP_EMPI, "%s failed: %s", what, msg);
}

int mp_mpi_agree(int rc)
{
    /* encode (code, rank) so that all ranks learn the worst code and the first rank that had it */
    int mine[2] = {rc < 0 ? rc : 0, g_rank}, worst[2];
    int mrc = MPI_Allreduce(mine, worst, 1, MPI_2INT, MPI_MINLOC, MPI_COMM_WORLD);
    if (mrc != MPI_SUCCESS) {
        mp_mpi_check(mrc, "MPI_Allreduce (error agreement)");
        mp_mpi_fail(MP_EMPI);
    }
    if (worst[0] == 0)
        return 0;
    if (rc < 0)
        return rc;
    g_peer_failed = 1;
    mp_errorf(worst[0], "stopping because rank %d failed (%s)", worst[1], mp_error_name(worst[0]));
    return worst[0];
}

void mp_mpi_report(int rc)
{
    if (rc >= 0 || (g_peer_failed && !getenv("MOEPACK_TRACE")))
        return; /* the failing rank prints its own message */
    const char *trace = mp_error_trace_text();
    if (g_size > 1)
        fprintf(stderr, "[rank %d] moepack: error: %s\n", g_rank, mp_error_message());
    else
        fprintf(stderr, "moepack: error: %s\n", mp_error_message());
    if (trace && *trace && getenv("MOEPACK_TRACE"))
        fprintf(stderr, "%s", trace);
    fflush(stderr);
}

void mp_mpi_fail(int rc)
{
    mp_mpi_report(rc);
    int code = mp_exit_code(rc < 0 ? rc : MP_EINTERNAL);
    MPI_Abort(MPI_COMM_WORLD, code);
    exit(code);
}
