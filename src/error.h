/* error.h - error codes, error messages with a trace, and the MP_CHECK macros.
 *
 * Library functions return int: 0 on success, a negative MP_E* code on failure.
 * The failing function records a message naming the offending file/tensor/
 * layer with mp_errorf(); every caller that propagates the error with MP_CHECK
 * appends its file:line to the trace. Only main() turns a code into an exit
 * status (mp_exit_code). The message buffer is thread-local. */
#ifndef MP_ERROR_H
#define MP_ERROR_H

enum {
    MP_OK = 0,
    MP_EUSAGE = -2,    /* bad command line or job parameter          exit 2 */
    MP_ENOENT = -3,    /* a required file or tensor is missing       exit 3 */
    MP_ECONFIG = -4,   /* config.json invalid, unknown arch, bad key exit 4 */
    MP_EFORMAT = -5,   /* malformed file (header, dtype, shape, ...) exit 5 */
    MP_EIO = -6,       /* an operating-system I/O call failed        exit 6 */
    MP_ENOMEM = -7,    /* out of memory                              exit 7 */
    MP_EMPI = -8,      /* another rank failed / MPI error            exit 8 */
    MP_EINTERNAL = -9, /* a bug: an invariant does not hold          exit 9 */
    MP_ENUMERIC = -10, /* NaN/Inf or a failed factorisation          exit 10 */
    MP_EMISMATCH = -11, /* checkpoint directory of another job        exit 11 */
    MP_ESTOPPED = -12,  /* stopped cleanly at a unit boundary (signal exit 12
                           or --walltime); run again to resume */
};

/* Record an error message (printf format) and return `code`. The arguments may include
 * mp_error_message() itself (to add context to the current message). */
int mp_errorf(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Like mp_errorf, with ": strerror(errno)" appended. */
int mp_syserrorf(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prepend "<prefix>: " to the current message (the trace and the code are kept), e.g. the layer and expert
 * a lower-level error happened in. */
void mp_error_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Append a frame "file:line (func)" to the current error's trace. */
void mp_error_trace(const char *file, int line, const char *func);
const char *mp_error_message(void); /* "" when no error was recorded */
const char *mp_error_trace_text(void);
void mp_error_clear(void);
/* Short name of a code ("bad input format", ...). */
const char *mp_error_name(int code);
/* Process exit status for a code: 0 for MP_OK, -code otherwise. */
int mp_exit_code(int code);

#define MP_CHECK(expr)                                                                             \
    do {                                                                                           \
        int mp_rc_ = (expr);                                                                       \
        if (mp_rc_ < 0) {                                                                          \
            mp_error_trace(__FILE__, __LINE__, __func__);                                          \
            return mp_rc_;                                                                         \
        }                                                                                          \
    } while (0)

/* Propagate into a local `rc` and jump to a cleanup label. */
#define MP_CHECK_GOTO(expr, label)                                                                 \
    do {                                                                                           \
        rc = (expr);                                                                               \
        if (rc < 0) {                                                                              \
            mp_error_trace(__FILE__, __LINE__, __func__);                                          \
            goto label;                                                                            \
        }                                                                                          \
    } while (0)

#endif
