/* fuzz_job.c - libFuzzer harness for the job-file parser.
 *
 * The input is written to a temporary job file and loaded with mp_job_load (the
 * INI reader, key table and value checks, as `moepack run --job` does); then
 * each of its first 8 lines is tried as a `--set section.key=value` argument.
 * A job that loads must have its required paths set. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "error.h"
#include "job.h"

static char g_path[256];

static void remove_file(void) { unlink(g_path); }

static void init_path(void)
{
    if (g_path[0])
        return;
    const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    snprintf(g_path, sizeof g_path, "%s/moepack-fuzz-job-%d.ini", dir, (int)getpid());
    atexit(remove_file);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    init_path();
    FILE *f = fopen(g_path, "wb");
    if (!f)
        abort();
    if (size && fwrite(data, 1, size, f) != size)
        abort();
    fclose(f);
    mp_job job;
    if (mp_job_load(g_path, NULL, 0, &job) == 0 && (!job.model_path[0] || !job.tokens_path[0] || !job.ckpt_dir[0]))
        abort();
    mp_error_clear();

    /* the same bytes as --set arguments, one per line */
    char *text = malloc(size + 1), *sets[8], *save = NULL;
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = '\0';
    int n = 0;
    for (char *tok = strtok_r(text, "\n", &save); tok && n < 8; tok = strtok_r(NULL, "\n", &save))
        sets[n++] = tok;
    if (mp_job_load(NULL, sets, n, &job) == 0 && (!job.model_path[0] || !job.tokens_path[0]))
        abort();
    free(text);
    mp_error_clear();
    return 0;
}
