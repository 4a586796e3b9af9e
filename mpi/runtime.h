/* runtime.h - MPI start-up, agreement on errors, and clean aborts.
 *
 * Every collective step of a command is bracketed by mp_mpi_agree: each rank
 * passes its local status, all ranks get the worst one back, so a failure on
 * one rank ends the step on all of them instead of leaving the others waiting
 * in the next collective. When agreement is impossible (an error in the
 * middle of a collective sequence), mp_mpi_fail prints the message with the
 * rank and calls MPI_Abort.  All functions here are collective over
 * MPI_COMM_WORLD unless marked local. */
#ifndef MP_RUNTIME_H
#define MP_RUNTIME_H
#include <mpi.h>

#include "error.h"

/* MPI_Init_thread (FUNNELED) with MPI_ERRORS_RETURN on MPI_COMM_WORLD; one BLAS thread; glibc keeps freed
 * buffers up to 256 MB in the heap for reuse (no page faults per unit). */
int mp_mpi_init(int *argc, char ***argv);
void mp_mpi_finalize(void);
/* Local: gives the heap's free memory back to the system. The heap is never trimmed on its own (mp_mpi_init);
 * a phase that has freed its large buffers (the layers' Grams, statistics images, exchange buffers) calls
 * this before the next phase allocates its own, so that the next phase's peak is not stacked on them. */
void mp_heap_release(void);
int mp_mpi_rank(void); /* local */
int mp_mpi_size(void); /* local */
/* Collective: this rank's place among the ranks of its node (MPI_Comm_split_type SHARED, ordered by world
 * rank): *local_rank in [0, *local_size). A rank's GPU is chosen from it (one GPU per rank:
 * src/gpu/gpu_comm.h mp_gpu_device_for_local_rank; shared GPUs: local_rank % device count). */
int mp_mpi_node_rank(int *local_rank, int *local_size);

/* Collective: returns 0 when every rank passed rc >= 0. Otherwise a failed
 * rank gets its own rc back, and a rank that was fine gets the lowest code of
 * the failed ones (so every process exits with a meaningful status) with a
 * message naming the first failing rank; only failed ranks print. */
int mp_mpi_agree(int rc);
/* Local: print "[rank N] moepack: error: ..." to stderr (the trace too when
 * MOEPACK_TRACE is set); silent on ranks that only saw another rank fail. */
void mp_mpi_report(int rc);
/* Local, does not return: report and MPI_Abort with the exit code of rc. */
void mp_mpi_fail(int rc) __attribute__((noreturn));
/* Local: install SIGTERM/SIGUSR1 handlers that only record the signal (the
 * work stops at the next unit boundary), and ignore SIGXFSZ so that a file
 * size limit turns into a write error instead of killing the rank. */
void mp_signals_install(void);
/* Set the wall-clock budget in seconds from now (0 = none). Local. */
void mp_walltime_set(double seconds);
/* Collective, at a unit boundary: MP_ESTOPPED (with a message) when any rank
 * received SIGTERM/SIGUSR1, or when rank 0 expects the next unit, estimated to
 * take `next_unit_s` seconds, to overrun the wall-clock budget; else 0. A stop
 * is honoured only once this run has committed a new unit (mp_note_progress),
 * so that a job restarted again and again still finishes. */
int mp_should_stop(double next_unit_s, const char *where);
/* Local, called on every rank when a unit (a layer of a stage) is newly committed. */
void mp_note_progress(void);
/* Local fault injection for restart tests: with MOEPACK_FAULT=rank:n in the
 * environment, the n-th call on that rank (counting from 1) kills the process
 * with SIGKILL (MOEPACK_FAULT_SIGNAL=USR1 or TERM: raises that signal instead).
 * MOEPACK_FAULT_TRACE=1 prints every point (rank, count, where). */
void mp_fault_point(const char *where);
/* Turn an MPI return code into an MP_EMPI error naming `what`. */
int mp_mpi_check(int mpirc, const char *what);
/* Every MPI call goes through this (in the spirit of PETSc's PetscCallMPI). MPI_COMM_WORLD returns errors
 * (MPI_ERRORS_RETURN), but a rank whose collective failed cannot agree with the others any more: it reports
 * the call with file:line and aborts the job (mp_mpi_fail), so no rank waits forever. */
#define MP_MPI(call)                                                                                               \
    do {                                                                                                           \
        int mp_mrc_ = (call);                                                                                      \
        if (mp_mrc_ != MPI_SUCCESS) {                                                                              \
            mp_mpi_check(mp_mrc_, #call);                                                                          \
            mp_error_trace(__FILE__, __LINE__, __func__);                                                          \
            mp_mpi_fail(MP_EMPI);                                                                                  \
        }                                                                                                          \
    } while (0)

#endif
