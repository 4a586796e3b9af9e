/* store.h - the checkpoint store's commit markers.
 *
 * A stage commits its work per layer: every unit file of the layer is first
 * written under a temporary name, fsync'ed and renamed (fsutil), then rank 0
 * writes the layer's manifest `<dir>/layerLLLL/DONE` (atomically, last): a
 * JSON object {"fingerprint": "<stage fingerprint hex>", "files": {"name":
 * "xxh64 hex", ...}, "starved": n}. A layer counts as committed only when the
 * manifest exists, carries the stage fingerprint of the running job (job.h)
 * and every file it lists has the recorded checksum; a unit made under other
 * parameters, truncated or corrupted makes the layer uncommitted again (it is
 * recomputed), with a note naming the file.
 *
 * When a stage has finished every layer, rank 0 writes `<dir>/STAGE`
 * (atomically): {"fingerprint": hex, "summary": {name: number, ...}}, the
 * numbers the stage reports; a rerun whose stage fingerprint matches and
 * whose layers are all intact skips the stage and reports those numbers.
 * Local. */
#ifndef MP_STORE_H
#define MP_STORE_H
#include <stddef.h>
#include <stdint.h>

/* XXH64 of a file's bytes. */
int mp_file_xxh64(const char *path, uint64_t *out);
/* Write the manifest of layer `l` under `dir` (names relative to the layer directory). */
int mp_store_commit_layer(const char *dir, int l, uint64_t fp, const char *const *names, const uint64_t *hashes,
                          int n, int starved);
/* *ok = 1 when layer `l` is committed under fingerprint fp and intact (then *starved is its count). A
 * damaged or missing unit, or another fingerprint, gives *ok = 0 and a one-line explanation in why[]
 * (empty when the layer was never committed). */
int mp_store_layer_ok(const char *dir, int l, uint64_t fp, int *ok, int *starved, char *why, int why_cap);

/* a stage's reported numbers */
#define MP_SUMMARY_MAX 16
typedef struct {
    int n;
    char key[MP_SUMMARY_MAX][32];
    double val[MP_SUMMARY_MAX];
} mp_summary;
void mp_summary_set(mp_summary *s, const char *key, double v);
double mp_summary_get(const mp_summary *s, const char *key); /* NAN when absent */
/* `<dir>/STAGE` with fp and the summary. */
int mp_store_commit_stage(const char *dir, uint64_t fp, const mp_summary *s);
/* *ok = 1 (and *s filled) when `<dir>/STAGE` exists with fingerprint fp. */
int mp_store_stage_ok(const char *dir, uint64_t fp, int *ok, mp_summary *s);

#endif
