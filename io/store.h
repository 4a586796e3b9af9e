/* store.h - the checkpoint store's commit markers.
 *
 * A stage commits its work per layer: every unit file of the layer is first
 * written under a temporary name, fsync'ed and renamed (fsutil), then rank 0
 * writes the layer's manifest `<dir>/layerLLLL/DONE` (atomically, last): a
 * JSON object {"files": {"name": "xxh64 hex", ...}, "starved": n}. A layer
 * counts as committed only when the manifest exists and every file it lists
 * has the recorded checksum; a truncated or corrupted unit makes the layer
 * uncommitted again (it is recomputed), with a note naming the file. Local. */
#ifndef MP_STORE_H
#define MP_STORE_H
#include <stdint.h>

/* XXH64 of a file's bytes. */
int mp_file_xxh64(const char *path, uint64_t *out);
/* Write the manifest of layer `l` under `dir` (names relative to the layer directory). */
int mp_store_commit_layer(const char *dir, int l, const char *const *names, const uint64_t *hashes, int n,
                          int starved);
/* *ok = 1 when layer `l` is committed and intact (then *starved is its count). A damaged or missing
 * unit gives *ok = 0 and a one-line explanation in why[] (empty when the layer was never committed). */
int mp_store_layer_ok(const char *dir, int l, int *ok, int *starved, char *why, int why_cap);

#endif
