/* device_profile.h - reading a device profile (JSON) and a measured-timings table (CSV) for the cost model
 * (src/cost.h).
 *
 * Device profile, e.g. jobs/devices/h100-sxm.json (the default):
 *   { "name": "NVIDIA H100 SXM5 80GB",               required, string (< 64 characters)
 *     "hbm_bandwidth_bytes_per_s": 3.35e12,          required, number > 0
 *     "peak_ops_per_s": { "fp16": 989.4e12,          required, number > 0 (dense FLOP/s)
 *                         "int8": 1978.9e12,         optional, >= 0, 0 or absent = not native
 *                         "fp8": 1978.9e12, "int4": 0 },   (same)
 *     "source": "where the figures come from",       required, non-empty string (< 512 characters)
 *     "notes": "..." }                               optional
 * Any other key is an error (a misspelt key must not pass silently).
 *
 * Timings table (CSV, '#' starts a comment line, blank lines ignored), seconds of one block's GEMM:
 *   format,m,n,tokens,seconds
 *   w4g128,2048,7168,16,4.1e-06
 * m = output and n = input features of the block [m, n]; tokens = M. The header line is required; the
 * matching rule (exact format and shape; M exact or interpolated between measured M) is in cost.h.
 *
 * Errors name the file and the key or line: MP_ENOENT (no such file), MP_EFORMAT (malformed content, a
 * missing key, a wrong type or value, a duplicate entry), MP_EIO, MP_ENOMEM. Local. */
#ifndef MP_DEVICE_PROFILE_H
#define MP_DEVICE_PROFILE_H

#include "cost.h"

int mp_device_profile_load(const char *path, mp_device_profile *d);
/* the same from a string; `what` names it in messages */
int mp_device_profile_parse(const char *json, const char *what, mp_device_profile *d);

/* *tt is initialised here; on failure it is left empty. */
int mp_timings_load(const char *path, mp_timings *tt);
int mp_timings_parse(const char *csv, const char *what, mp_timings *tt);

#endif
