/* hidden_ckpt.c - the hidden-state checkpoint of a calibration (see hidden_ckpt.h). */
#define _GNU_SOURCE
#include "hidden_ckpt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "error.h"
#include "fsutil.h"

enum { HDR = 8 }; /* header words */

static void file_name(char *buf, size_t cap, const char *dir, int seq0, int nseq)
{
    snprintf(buf, cap, "%s/hidden/seq%08d-%08d.bin", dir, seq0, seq0 + nseq);
}

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint64_t get64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static const char MAGIC[8] = {'M', 'P', 'H', 'I', 'D', 'D', 'E', 'N'};

/* the header words after the magic: version, fp, layer, seq0, seq1, S, d, hash */
static void header(unsigned char *b, uint64_t fp, int layer, int seq0, int nseq, int S, int d, uint64_t hash)
{
    uint64_t w[HDR - 1] = {1, fp, (uint64_t)layer, (uint64_t)seq0, (uint64_t)(seq0 + nseq), (uint64_t)S, (uint64_t)d};
    memcpy(b, MAGIC, 8);
    for (int i = 0; i < HDR - 1; i++)
        put64(b + 8 + 8 * i, w[i]);
    put64(b + 8 * HDR, hash);
}

enum { SLICE = 1 << 20 }; /* bytes of h per read or write */

int mp_hidden_save(const char *dir, uint64_t fp, int layer, int seq0, int nseq, int S, int d, const float *h,
                   mp_rows_done done, void *ctx)
{
    char path[4400], tmp[4500], sub[4300];
    snprintf(sub, sizeof sub, "%s/hidden", dir);
    MP_CHECK(mp_mkdir_p(sub));
    file_name(path, sizeof path, dir, seq0, nseq);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    size_t n = (size_t)nseq * (size_t)S * (size_t)d * sizeof(float);
    unsigned char hd[8 * (HDR + 1)];
    XXH64_state_t *xs = XXH64_createState();
    FILE *f = xs ? fopen(tmp, "wb") : NULL;
    if (!f) {
        XXH64_freeState(xs);
        return xs ? mp_syserrorf(MP_EIO, "%s: cannot create", tmp) : mp_errorf(MP_ENOMEM, "out of memory");
    }
    XXH64_reset(xs, 0);
    header(hd, fp, layer, seq0, nseq, S, d, 0); /* its hash once the rows are written */
    int rc = mp_fwrite_all(hd, sizeof hd, f, tmp);
    for (size_t o = 0; o < n && rc == 0; o += SLICE) { /* fp32 rows as in memory: little-endian hosts */
        const unsigned char *p = (const unsigned char *)h + o;
        size_t k = n - o < SLICE ? n - o : SLICE;
        XXH64_update(xs, p, k);
        rc = mp_fwrite_all(p, k, f, tmp);
        if (done)
            done(ctx, p, k);
    }
    header(hd, fp, layer, seq0, nseq, S, d, XXH64_digest(xs));
    XXH64_freeState(xs);
    if (rc == 0 && fseek(f, 0, SEEK_SET) != 0)
        rc = mp_syserrorf(MP_EIO, "%s: seek failed", tmp);
    if (rc == 0)
        rc = mp_fwrite_all(hd, sizeof hd, f, tmp);
    if (fclose(f) != 0 && rc == 0)
        rc = mp_syserrorf(MP_EIO, "%s: write failed", tmp);
    if (rc == 0 && rename(tmp, path) != 0)
        rc = mp_syserrorf(MP_EIO, "cannot rename %s to %s", tmp, path);
    if (rc < 0)
        unlink(tmp);
    return rc;
}

/* the header of the rank's file, checked against everything but the layer; -1: absent or not matching */
static int read_header(FILE *f, uint64_t fp, int seq0, int nseq, int S, int d, uint64_t *hash)
{
    unsigned char hd[8 * (HDR + 1)];
    if (fread(hd, 1, sizeof hd, f) != sizeof hd || memcmp(hd, MAGIC, 8))
        return -1;
    uint64_t w[HDR];
    for (int i = 0; i < HDR; i++)
        w[i] = get64(hd + 8 + 8 * i);
    if (w[0] != 1 || w[1] != fp || w[3] != (uint64_t)seq0 || w[4] != (uint64_t)(seq0 + nseq) || w[5] != (uint64_t)S ||
        w[6] != (uint64_t)d || w[2] > (uint64_t)1 << 30)
        return -1;
    *hash = w[7];
    return (int)w[2];
}

int mp_hidden_find(const char *dir, uint64_t fp, int seq0, int nseq, int S, int d)
{
    char path[4400];
    file_name(path, sizeof path, dir, seq0, nseq);
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    uint64_t hash;
    int layer = read_header(f, fp, seq0, nseq, S, d, &hash);
    fclose(f);
    return layer;
}

/* The hash of the n bytes after the header of f, read into dst (n bytes) when given, else through a buffer
 * of SLICE bytes; -1 when they are not exactly n bytes. */
static int data_hash(FILE *f, size_t n, unsigned char *dst, mp_rows_done done, void *ctx, uint64_t *hash)
{
    XXH64_state_t *xs = XXH64_createState();
    unsigned char *buf = dst ? NULL : malloc(SLICE);
    int ok = xs && (dst || buf) && fseek(f, 8 * (HDR + 1), SEEK_SET) == 0;
    if (ok)
        XXH64_reset(xs, 0);
    for (size_t o = 0; o < n && ok; o += SLICE) {
        size_t k = n - o < SLICE ? n - o : SLICE;
        unsigned char *p = dst ? dst + o : buf;
        ok = fread(p, 1, k, f) == k;
        if (ok)
            XXH64_update(xs, p, k);
        if (dst && done)
            done(ctx, p, k);
    }
    ok = ok && fgetc(f) == EOF;
    if (ok)
        *hash = XXH64_digest(xs);
    XXH64_freeState(xs);
    free(buf);
    return ok ? 0 : -1;
}

int mp_hidden_load(const char *dir, uint64_t fp, int layer, int seq0, int nseq, int S, int d, float *h,
                   mp_rows_done done, void *ctx)
{
    char path[4400];
    file_name(path, sizeof path, dir, seq0, nseq);
    FILE *f = fopen(path, "rb");
    if (!f)
        return mp_syserrorf(MP_EFORMAT, "%s: cannot open the hidden-state checkpoint", path);
    uint64_t want = 0, got = 0;
    size_t n = (size_t)nseq * (size_t)S * (size_t)d * sizeof(float);
    /* checked before h is touched: a damaged file leaves the states to replay from as they were */
    int rc = read_header(f, fp, seq0, nseq, S, d, &want) == layer && data_hash(f, n, NULL, NULL, NULL, &got) == 0 &&
                     got == want
                 ? 0
                 : mp_errorf(MP_EFORMAT, "%s: not the intact hidden states after layer %d", path, layer);
    if (rc == 0 && h && (data_hash(f, n, (unsigned char *)h, done, ctx, &got) != 0 || got != want))
        rc = mp_errorf(MP_EIO, "%s: changed while the hidden states after layer %d were read from it", path, layer);
    fclose(f);
    return rc;
}

int mp_hidden_remove(const char *dir)
{
    char sub[4300];
    snprintf(sub, sizeof sub, "%s/hidden", dir);
    if (access(sub, F_OK) != 0)
        return 0;
    return mp_remove_tree(sub);
}
