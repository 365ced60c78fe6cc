/* Errors: a status and a one-line message in the caller's proxcl_error. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "px.h"

proxcl_status px_fail(proxcl_error *err, proxcl_status code, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
        for (char *p = err->message; *p; ++p)      /* one line, whatever a driver's text holds */
            if (*p == '\n' || *p == '\r') *p = ' ';
        err->code = code;
    }
    return code;
}

void *px_alloc(size_t n, proxcl_error *err)
{
    void *p = calloc(n ? n : 1, 1);
    if (!p) px_fail(err, PROXCL_ERR_MEMORY, "out of memory (%zu bytes)", n);
    return p;
}

const char *proxcl_status_name(proxcl_status code)
{
    static const char *const names[] = {"ok", "io", "format", "model", "input", "device", "opencl",
                                        "memory", "numeric"};
    return (unsigned)code < sizeof names / sizeof *names ? names[code] : "unknown";
}
