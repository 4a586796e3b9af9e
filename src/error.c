/* error.c - thread-local error message and trace (see error.h). */
#include "error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char msg_buf[2048];
static _Thread_local char trace_buf[2048];

/* Messages are formatted into a scratch buffer first: an argument may be the current message
 * (mp_errorf(rc, "context: %s", mp_error_message())), which formatting straight into msg_buf
 * would overwrite while reading it. */
int mp_errorf(int code, const char *fmt, ...)
{
    char tmp[sizeof msg_buf];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    memcpy(msg_buf, tmp, sizeof msg_buf);
    trace_buf[0] = '\0';
    return code;
}

int mp_syserrorf(int code, const char *fmt, ...)
{
    int saved = errno;
    char tmp[sizeof msg_buf];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    size_t len = strlen(tmp);
    snprintf(tmp + len, sizeof tmp - len, ": %s", strerror(saved));
    memcpy(msg_buf, tmp, sizeof msg_buf);
    trace_buf[0] = '\0';
    return code;
}

void mp_error_prefix(const char *fmt, ...)
{
    char head[1024], old[sizeof msg_buf];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(head, sizeof head, fmt, ap);
    va_end(ap);
    memcpy(old, msg_buf, sizeof old); /* the message may be an argument of its own prefix: copy it first */
    size_t n = strlen(head);
    if (n + 2 >= sizeof msg_buf)
        n = sizeof msg_buf - 3;
    memcpy(msg_buf, head, n);
    memcpy(msg_buf + n, ": ", 2);
    size_t k = strnlen(old, sizeof old - 1);
    if (n + 2 + k >= sizeof msg_buf)
        k = sizeof msg_buf - n - 3;
    memcpy(msg_buf + n + 2, old, k);
    msg_buf[n + 2 + k] = '\0';
}

void mp_error_trace(const char *file, int line, const char *func)
{
    size_t len = strlen(trace_buf);
    if (len + 8 >= sizeof trace_buf)
        return;
    snprintf(trace_buf + len, sizeof trace_buf - len, "  at %s:%d (%s)\n", file, line, func);
}

const char *mp_error_message(void) { return msg_buf; }
const char *mp_error_trace_text(void) { return trace_buf; }

void mp_error_clear(void)
{
    msg_buf[0] = '\0';
    trace_buf[0] = '\0';
}

const char *mp_error_name(int code)
{
    switch (code) {
    case MP_OK: return "ok";
    case MP_EUSAGE: return "usage error";
    case MP_ENOENT: return "missing file or tensor";
    case MP_ECONFIG: return "invalid model configuration";
    case MP_EFORMAT: return "malformed input file";
    case MP_EIO: return "I/O error";
    case MP_ENOMEM: return "out of memory";
    case MP_EMPI: return "another rank failed";
    case MP_EINTERNAL: return "internal error";
    case MP_ENUMERIC: return "numerical error";
    case MP_EMISMATCH: return "checkpoint directory belongs to another job";
    case MP_ESTOPPED: return "stopped at a unit boundary (resumable)";
    default: return "error";
    }
}

int mp_exit_code(int code) { return code >= 0 ? 0 : (code >= -125 ? -code : 1); }
