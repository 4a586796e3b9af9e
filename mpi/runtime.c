/* runtime.c - MPI start-up, error agreement and aborts (see runtime.h). */
#include "runtime.h"

#include <cblas.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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
    /* Buffers of tens of MB (Grams, statistics file images, expert weights) are allocated and freed per
     * unit; by default glibc maps and unmaps each of them, and zero-filling the fresh pages was ~10 % of
     * calibrate's time (page faults). Up to this size they are kept in the heap and reused; the heap is
     * never trimmed: a layer's exchange buffers (hundreds of MB, freed at its end) were otherwise given
     * back and faulted in again by the next layer. The peak RSS, what a job is charged for, is the same. */
    mallopt(M_MMAP_THRESHOLD, 256 << 20);
    mallopt(M_TRIM_THRESHOLD, -1);
    return 0;
}

void mp_mpi_finalize(void) { MPI_Finalize(); }

void mp_heap_release(void) { malloc_trim(0); }

int mp_mpi_rank(void) { return g_rank; }

int mp_mpi_size(void) { return g_size; }

int mp_mpi_node_rank(int *local_rank, int *local_size)
{
    MPI_Comm node;
    MP_MPI(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, g_rank, MPI_INFO_NULL, &node));
    MP_MPI(MPI_Comm_rank(node, local_rank));
    MP_MPI(MPI_Comm_size(node, local_size));
    MP_MPI(MPI_Comm_free(&node));
    return 0;
}

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
    if (rc == MP_ESTOPPED) { /* agreed by all ranks: not an error, said once */
        if (g_rank == 0)
            fprintf(stderr, "moepack: %s\n", mp_error_message());
        return;
    }
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

static volatile sig_atomic_t g_signal = 0;
static double g_deadline = 0; /* MPI_Wtime() value, 0 = none */
static long g_progress = 0;   /* units committed by this run (the same count on every rank) */

void mp_note_progress(void) { g_progress++; }

static void on_signal(int sig) { g_signal = sig; }

void mp_signals_install(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGXFSZ, SIG_IGN);
}

void mp_walltime_set(double seconds) { g_deadline = seconds > 0 ? MPI_Wtime() + seconds : 0; }

int mp_should_stop(double next_unit_s, const char *where)
{
    int mine[2] = {g_signal, 0}, all[2];
    if (g_rank == 0 && g_deadline > 0 && MPI_Wtime() + 1.5 * next_unit_s > g_deadline)
        mine[1] = 1;
    int mrc = MPI_Allreduce(mine, all, 2, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (mrc != MPI_SUCCESS)
        mp_mpi_fail(mp_mpi_check(mrc, "MPI_Allreduce (stop agreement)"));
    if (!g_progress && (all[0] || all[1]))
        return 0; /* nothing new committed yet: a restart must always make progress, so go on to the next unit */
    if (all[0])
        return mp_errorf(MP_ESTOPPED, "stopped %s on %s; everything before is committed, run again to resume", where,
                         all[0] == SIGTERM ? "SIGTERM" : all[0] == SIGUSR1 ? "SIGUSR1" : "a signal");
    if (all[1])
        return mp_errorf(MP_ESTOPPED,
                         "stopped %s: the next unit would overrun --walltime; everything before is committed, run "
                         "again to resume",
                         where);
    return 0;
}

void mp_fault_point(const char *where)
{
    static int init = 0, target_rank = -1, trace = 0;
    static long target = -1, count = 0;
    if (!init) {
        init = 1;
        const char *f = getenv("MOEPACK_FAULT");
        if (f && sscanf(f, "%d:%ld", &target_rank, &target) != 2)
            target_rank = -1;
        trace = getenv("MOEPACK_FAULT_TRACE") != NULL;
    }
    count++;
    if (trace)
        fprintf(stderr, "fault point rank %d #%ld %s\n", g_rank, count, where);
    if (g_rank == target_rank && count == target) {
        const char *sig = getenv("MOEPACK_FAULT_SIGNAL");
        int s = sig && !strcmp(sig, "USR1") ? SIGUSR1 : sig && !strcmp(sig, "TERM") ? SIGTERM : SIGKILL;
        fprintf(stderr, "[rank %d] moepack: fault injection: %s at point %ld (%s)\n", g_rank,
                s == SIGKILL ? "SIGKILL" : s == SIGUSR1 ? "SIGUSR1" : "SIGTERM", count, where);
        fflush(stderr);
        raise(s);
    }
}
