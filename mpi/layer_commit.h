/* layer_commit.h - the commit of one layer of a stage whose units were written by their owners.
 *
 * Each unit u (0..n-1) of the layer is written, fsync'ed and renamed by at
 * most one rank, which records its XXH64 in h[u] and sets h[n + u] = 1 (both
 * 0 on the other ranks). mp_commit_layer_units agrees on the ranks' status,
 * sums the arrays (exact: each entry has a single contributor), and rank 0
 * writes the layer's manifest (store.h) with the units some rank wrote, named
 * by `name`, in unit order. Collective over MPI_COMM_WORLD; returns the
 * agreed status. */
#ifndef MP_LAYER_COMMIT_H
#define MP_LAYER_COMMIT_H
#include <stddef.h>
#include <stdint.h>

/* the file name of unit u of n */
typedef void (*mp_unit_name_fn)(int u, int n, char *buf, size_t cap);

/* rc: this rank's status so far; fp: the stage fingerprint recorded in the manifest; fault: label of the fault point before the manifest (tests). */
int mp_commit_layer_units(int rc, const char *dir, int l, uint64_t fp, uint64_t *h, int n, mp_unit_name_fn name,
                          int starved, const char *fault);

#endif
