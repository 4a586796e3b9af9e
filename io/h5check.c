/* h5check.c - structural check of an HDF5 file's metadata before libhdf5 reads it (see h5check.h).
 * Layouts follow the HDF5 File Format Specification, version 3.0: superblock (II.A), object
 * headers (IV.A.1), v1 B-trees (III.A.1), symbol table nodes (III.B), local heaps (III.D),
 * messages 0x02 link info, 0x06 link, 0x08 data layout, 0x10 continuation, 0x11 symbol table. */
#include "h5check.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "error.h"
#include "fsutil.h"

typedef struct {
    const unsigned char *b;
    uint64_t n;         /* file size */
    uint64_t base;      /* absolute offset of address 0 */
    int so, sl;         /* size of offsets, of lengths */
    int leaf_k, node_k; /* group B-tree K values (symbols per node 2 leaf_k, entries per node 2 node_k) */
    int budget;         /* structures left to visit */
    const char *name;   /* the object looked up in the root group */
    uint64_t target;    /* its object header address (relative), when found */
    int found;
    uint64_t heap_abs, heap_size; /* the root group's local heap data segment */
    char *why;
    size_t cap;
} h5c;

static int fail(h5c *h, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(h5c *h, const char *fmt, ...)
{
    if (h->why[0]) /* keep the first (innermost) reason */
        return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(h->why, h->cap, fmt, ap);
    va_end(ap);
    return -1;
}

/* little-endian unsigned of k (1..8) bytes at absolute offset p (the caller checked the range) */
static uint64_t rd(const h5c *h, uint64_t p, int k)
{
    uint64_t v = 0;
    for (int i = k - 1; i >= 0; i--)
        v = v << 8 | h->b[p + (uint64_t)i];
    return v;
}

static uint64_t undef(int k) { return k >= 8 ? UINT64_MAX : (UINT64_C(1) << (8 * k)) - 1; }

/* [p, p + len) inside the file (absolute) */
static int span_ok(const h5c *h, uint64_t p, uint64_t len) { return p <= h->n && len <= h->n - p; }

/* relative address `addr` of a structure of `len` bytes `what`: defined and inside the file; *abs its offset */
static int addr_ok(h5c *h, uint64_t addr, uint64_t len, const char *what, uint64_t *abs)
{
    *abs = 0; /* defined on every path (a failure returns before the caller reads it) */
    if (addr == undef(h->so))
        return fail(h, "%s has an undefined address", what);
    if (addr > UINT64_MAX - h->base || !span_ok(h, h->base + addr, len))
        return fail(h, "%s at address %llu (%llu bytes) is outside the file of %llu bytes", what,
                    (unsigned long long)addr, (unsigned long long)len, (unsigned long long)h->n);
    *abs = h->base + addr;
    return 0;
}

static int visit(h5c *h, const char *what)
{
    if (--h->budget < 0)
        return fail(h, "more than %d metadata structures (a loop?) while checking %s", MP_H5CHECK_MAX_NODES, what);
    return 0;
}

static int sig_is(const h5c *h, uint64_t p, const char *sig) { return memcmp(h->b + p, sig, 4) == 0; }

/* ---- local heap, symbol nodes, group B-tree ------------------------------------------------------ */

static int local_heap(h5c *h, uint64_t addr)
{
    uint64_t p, dp;
    if (addr_ok(h, addr, 8 + 2 * (uint64_t)h->sl + (uint64_t)h->so, "the root group's local heap", &p) < 0)
        return -1;
    if (!sig_is(h, p, "HEAP") || h->b[p + 4] != 0)
        return fail(h, "no local heap (signature HEAP, version 0) at offset %llu", (unsigned long long)p);
    uint64_t size = rd(h, p + 8, h->sl), free_off = rd(h, p + 8 + (uint64_t)h->sl, h->sl);
    uint64_t data = rd(h, p + 8 + 2 * (uint64_t)h->sl, h->so);
    if (addr_ok(h, data, size, "the local heap's data segment", &dp) < 0)
        return -1;
    if (free_off != undef(h->sl) && free_off >= size)
        return fail(h, "local heap at offset %llu: free list offset %llu beyond its %llu bytes", (unsigned long long)p,
                    (unsigned long long)free_off, (unsigned long long)size);
    h->heap_abs = dp;
    h->heap_size = size;
    return 0;
}

/* a NUL-terminated name at offset `off` of the local heap's data segment; NULL when it does not fit */
static const char *heap_name(const h5c *h, uint64_t off)
{
    if (off >= h->heap_size)
        return NULL;
    const unsigned char *s = h->b + h->heap_abs + off;
    return memchr(s, 0, h->heap_size - off) ? (const char *)s : NULL;
}

static int symbol_node(h5c *h, uint64_t addr)
{
    uint64_t p;
    uint64_t esz = 2 * (uint64_t)h->so + 24;
    if (visit(h, "a symbol table node") < 0 || addr_ok(h, addr, 8, "a symbol table node", &p) < 0)
        return -1;
    if (!sig_is(h, p, "SNOD") || h->b[p + 4] != 1)
        return fail(h, "no symbol table node (signature SNOD, version 1) at offset %llu", (unsigned long long)p);
    uint64_t nsym = rd(h, p + 6, 2);
    if (nsym > 2 * (uint64_t)h->leaf_k || !span_ok(h, p + 8, nsym * esz))
        return fail(h, "symbol table node at offset %llu: %llu symbols do not fit (at most %d, inside the file)",
                    (unsigned long long)p, (unsigned long long)nsym, 2 * h->leaf_k);
    for (uint64_t i = 0; i < nsym; i++) {
        uint64_t e = p + 8 + i * esz;
        uint64_t name_off = rd(h, e, h->so), oh = rd(h, e + (uint64_t)h->so, h->so);
        uint32_t cache = (uint32_t)rd(h, e + 2 * (uint64_t)h->so, 4);
        const char *nm = heap_name(h, name_off);
        if (!nm)
            return fail(h,
                        "symbol table node at offset %llu, entry %llu: name offset %llu outside the local heap's "
                        "%llu bytes",
                        (unsigned long long)p, (unsigned long long)i, (unsigned long long)name_off,
                        (unsigned long long)h->heap_size);
        if (cache > 2)
            return fail(h, "symbol table node at offset %llu, entry %llu: unknown cache type %u", (unsigned long long)p,
                        (unsigned long long)i, cache);
        if (cache == 2) { /* a soft link: its value is in the local heap */
            uint64_t val = rd(h, e + 2 * (uint64_t)h->so + 8, 4);
            if (!heap_name(h, val))
                return fail(h, "soft link '%.100s': value offset %llu outside the local heap", nm,
                            (unsigned long long)val);
            continue;
        }
        uint64_t abs;
        char what[160];
        snprintf(what, sizeof what, "the object header of '%.100s'", nm);
        if (addr_ok(h, oh, 16, what, &abs) < 0)
            return -1;
        if (!strcmp(nm, h->name)) {
            h->target = oh;
            h->found = 1;
        }
    }
    return 0;
}

static int group_btree(h5c *h, uint64_t addr, int level, int depth)
{
    uint64_t p;
    uint64_t hdr = 8 + 2 * (uint64_t)h->so;
    if (depth > 64)
        return fail(h, "the root group's B-tree is deeper than 64 levels");
    if (visit(h, "the root group's B-tree") < 0 || addr_ok(h, addr, hdr, "a node of the root group's B-tree", &p) < 0)
        return -1;
    if (!sig_is(h, p, "TREE") || h->b[p + 4] != 0)
        return fail(h, "no group B-tree node (signature TREE, type 0) at offset %llu", (unsigned long long)p);
    int lev = h->b[p + 5];
    if (level >= 0 && lev != level)
        return fail(h, "B-tree node at offset %llu has level %d, its parent expects %d", (unsigned long long)p, lev,
                    level);
    uint64_t used = rd(h, p + 6, 2);
    /* keys (lengths) and children (offsets) alternate: key 0, child 0, ..., child used-1, key used */
    uint64_t step = (uint64_t)h->sl + (uint64_t)h->so;
    if (used > 2 * (uint64_t)h->node_k || !span_ok(h, p + hdr, used * step + (uint64_t)h->sl))
        return fail(h, "B-tree node at offset %llu: %llu entries do not fit (at most %d, inside the file)",
                    (unsigned long long)p, (unsigned long long)used, 2 * h->node_k);
    for (uint64_t i = 0; i < used; i++) {
        uint64_t child = rd(h, p + hdr + i * step + (uint64_t)h->sl, h->so);
        int rc = lev > 0 ? group_btree(h, child, lev - 1, depth + 1) : symbol_node(h, child);
        if (rc < 0)
            return -1;
    }
    return 0;
}

/* ---- object headers ------------------------------------------------------------------------------- */

typedef struct {
    int is_group; /* look for the symbol table / links */
    int is_target;
    int v2;
    int conts; /* continuation chunks seen */
} oh_ctx;

static int object_header(h5c *h, uint64_t addr, oh_ctx *o, const char *what);

/* the link message (0x06): a hard link named h->name gives the target */
static int link_msg(h5c *h, uint64_t p, uint64_t len)
{
    if (len < 2 || h->b[p] != 1)
        return fail(h, "link message at offset %llu: bad version", (unsigned long long)p);
    unsigned flags = h->b[p + 1];
    uint64_t q = 2;
    int type = 0;
    if (flags & 0x08) {
        if (q + 1 > len)
            goto short_msg;
        type = h->b[p + q++];
    }
    q += (flags & 0x04) ? 8 : 0;
    q += (flags & 0x10) ? 1 : 0;
    int nb = 1 << (flags & 3);
    if (q + (uint64_t)nb > len)
        goto short_msg;
    uint64_t nlen = rd(h, p + q, nb);
    q += (uint64_t)nb;
    if (nlen == 0 || nlen > len - q)
        goto short_msg;
    const unsigned char *nm = h->b + p + q;
    q += nlen;
    if (type == 0) {
        if (q + (uint64_t)h->so > len)
            goto short_msg;
        uint64_t oh = rd(h, p + q, h->so), abs;
        if (addr_ok(h, oh, 16, "the object header a link points to", &abs) < 0)
            return -1;
        if (nlen == strlen(h->name) && !memcmp(nm, h->name, nlen)) {
            h->target = oh;
            h->found = 1;
        }
    }
    return 0;
short_msg:
    return fail(h, "link message at offset %llu is cut short", (unsigned long long)p);
}

/* the link info message (0x02): dense link storage must be in the file */
static int link_info_msg(h5c *h, uint64_t p, uint64_t len)
{
    if (len < 2 || h->b[p] != 0)
        return fail(h, "link info message at offset %llu: bad version", (unsigned long long)p);
    unsigned flags = h->b[p + 1];
    uint64_t q = 2 + ((flags & 1) ? 8 : 0);
    if (q + 2 * (uint64_t)h->so > len)
        return fail(h, "link info message at offset %llu is cut short", (unsigned long long)p);
    uint64_t fheap = rd(h, p + q, h->so), bt = rd(h, p + q + (uint64_t)h->so, h->so), abs;
    if (fheap != undef(h->so)) {
        if (addr_ok(h, fheap, 8, "the root group's fractal heap", &abs) < 0)
            return -1;
        if (!sig_is(h, abs, "FRHP"))
            return fail(h, "no fractal heap (signature FRHP) at offset %llu", (unsigned long long)abs);
    }
    if (bt != undef(h->so)) {
        if (addr_ok(h, bt, 8, "the root group's name index", &abs) < 0)
            return -1;
        if (!sig_is(h, abs, "BTHD"))
            return fail(h, "no v2 B-tree header (signature BTHD) at offset %llu", (unsigned long long)abs);
    }
    return 0;
}

/* the data layout message (0x08), version 3: contiguous data inside the file, a chunk index that is a B-tree */
static int layout_msg(h5c *h, uint64_t p, uint64_t len)
{
    if (len < 2 || h->b[p] != 3)
        return 0; /* other versions: left to HDF5 */
    uint64_t abs;
    switch (h->b[p + 1]) {
    case 1: { /* contiguous: address, size */
        if (2 + (uint64_t)h->so + (uint64_t)h->sl > len)
            return fail(h, "data layout message at offset %llu is cut short", (unsigned long long)p);
        uint64_t a = rd(h, p + 2, h->so), size = rd(h, p + 2 + (uint64_t)h->so, h->sl);
        if (a != undef(h->so) && addr_ok(h, a, size, "the dataset's contiguous data", &abs) < 0)
            return -1;
        return 0;
    }
    case 2: { /* chunked: dimensionality, B-tree address, ... */
        if (3 + (uint64_t)h->so > len)
            return fail(h, "data layout message at offset %llu is cut short", (unsigned long long)p);
        uint64_t a = rd(h, p + 3, h->so);
        if (a == undef(h->so))
            return 0; /* nothing written yet */
        if (addr_ok(h, a, 8 + 2 * (uint64_t)h->so, "the dataset's chunk index", &abs) < 0)
            return -1;
        if (!sig_is(h, abs, "TREE") || h->b[abs + 4] != 1)
            return fail(h, "no chunk B-tree (signature TREE, type 1) at offset %llu", (unsigned long long)abs);
        return 0;
    }
    default: return 0;
    }
}

static int message(h5c *h, oh_ctx *o, unsigned type, uint64_t p, uint64_t len)
{
    uint64_t abs;
    switch (type) {
    case 0x10: { /* continuation: offset, length */
        if ((uint64_t)h->so + (uint64_t)h->sl > len)
            return fail(h, "continuation message at offset %llu is cut short", (unsigned long long)p);
        uint64_t a = rd(h, p, h->so), clen = rd(h, p + (uint64_t)h->so, h->sl);
        if (++o->conts > 1000)
            return fail(h, "more than 1000 continuation chunks in one object header");
        if (addr_ok(h, a, clen, "an object header continuation chunk", &abs) < 0)
            return -1;
        return 0; /* walked by object_header (needs the chunk list) */
    }
    case 0x11: /* symbol table: B-tree, local heap */
        if (!o->is_group)
            return 0;
        if (2 * (uint64_t)h->so > len)
            return fail(h, "symbol table message at offset %llu is cut short", (unsigned long long)p);
        if (local_heap(h, rd(h, p + (uint64_t)h->so, h->so)) < 0)
            return -1;
        return group_btree(h, rd(h, p, h->so), -1, 0);
    case 0x02: return o->is_group ? link_info_msg(h, p, len) : 0;
    case 0x06: return o->is_group ? link_msg(h, p, len) : 0;
    case 0x08: return o->is_target ? layout_msg(h, p, len) : 0;
    default: return 0;
    }
}

/* the messages in [p, end) of a version-1 (hdr 8) or version-2 chunk; continuation chunks are
 * appended to conts[] (at most ncap) */
static int chunk_messages(h5c *h, oh_ctx *o, uint64_t p, uint64_t end, int crt_order, uint64_t *cont_abs,
                          uint64_t *cont_len, int *ncont, int ncap)
{
    int hdr = o->v2 ? 4 + (crt_order ? 2 : 0) : 8;
    while (end - p >= (uint64_t)hdr) {
        unsigned type = o->v2 ? h->b[p] : (unsigned)rd(h, p, 2);
        uint64_t len = o->v2 ? rd(h, p + 1, 2) : rd(h, p + 2, 2);
        uint64_t data = p + (uint64_t)hdr;
        if (len > end - data)
            return fail(h, "object header message (type %u) at offset %llu: %llu bytes run past its chunk", type,
                        (unsigned long long)p, (unsigned long long)len);
        if (message(h, o, type, data, len) < 0)
            return -1;
        if (type == 0x10) {
            if (*ncont == ncap)
                return fail(h, "too many continuation chunks");
            cont_abs[*ncont] = h->base + rd(h, data, h->so);
            cont_len[*ncont] = rd(h, data + (uint64_t)h->so, h->sl);
            (*ncont)++;
        }
        p = data + len;
    }
    return 0;
}

static int object_header(h5c *h, uint64_t addr, oh_ctx *o, const char *what)
{
    uint64_t p;
    enum { NCONT = 1024 };
    uint64_t cabs[NCONT], clen[NCONT];
    int ncont = 0, crt = 0;
    if (visit(h, what) < 0 || addr_ok(h, addr, 16, what, &p) < 0)
        return -1;
    if (sig_is(h, p, "OHDR")) {
        o->v2 = 1;
        if (h->b[p + 4] != 2)
            return fail(h, "%s at offset %llu: unknown version %d", what, (unsigned long long)p, h->b[p + 4]);
        unsigned flags = h->b[p + 5];
        uint64_t q = p + 6 + ((flags & 0x20) ? 16 : 0) + ((flags & 0x10) ? 4 : 0);
        int nb = 1 << (flags & 3);
        crt = (flags & 0x04) != 0;
        if (!span_ok(h, q, (uint64_t)nb))
            return fail(h, "%s at offset %llu is cut short", what, (unsigned long long)p);
        uint64_t size = rd(h, q, nb);
        q += (uint64_t)nb;
        if (!span_ok(h, q, size) || !span_ok(h, q + size, 4))
            return fail(h, "%s at offset %llu: its first chunk of %llu bytes runs past the end of the file", what,
                        (unsigned long long)p, (unsigned long long)size);
        if (chunk_messages(h, o, q, q + size, crt, cabs, clen, &ncont, NCONT) < 0)
            return -1;
    } else if (h->b[p] == 1) {
        o->v2 = 0;
        uint64_t size = rd(h, p + 8, 4);
        if (!span_ok(h, p + 16, size))
            return fail(h, "%s at offset %llu: its %llu bytes of messages run past the end of the file", what,
                        (unsigned long long)p, (unsigned long long)size);
        if (chunk_messages(h, o, p + 16, p + 16 + size, 0, cabs, clen, &ncont, NCONT) < 0)
            return -1;
    } else
        return fail(h, "no object header (version 1, or signature OHDR) for %s at offset %llu", what,
                    (unsigned long long)p);
    for (int i = 0; i < ncont; i++) { /* continuation chunks may add more */
        if (visit(h, what) < 0)
            return -1;
        uint64_t c = cabs[i], len = clen[i];
        if (o->v2) {
            if (len < 8 || !sig_is(h, c, "OCHK"))
                return fail(h, "no continuation chunk (signature OCHK) at offset %llu", (unsigned long long)c);
            if (chunk_messages(h, o, c + 4, c + len - 4, crt, cabs, clen, &ncont, NCONT) < 0)
                return -1;
        } else if (chunk_messages(h, o, c, c + len, 0, cabs, clen, &ncont, NCONT) < 0)
            return -1;
    }
    return 0;
}

/* ---- superblock ------------------------------------------------------------------------------------- */

int mp_h5_precheck(const unsigned char *buf, size_t n, const char *name, char *why, size_t cap)
{
    h5c h = {.b = buf, .n = n, .budget = MP_H5CHECK_MAX_NODES, .name = name, .why = why, .cap = cap};
    why[0] = '\0';
    static const unsigned char SIG[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    uint64_t s = 0;
    while (!(span_ok(&h, s, 8) && !memcmp(buf + s, SIG, 8))) {
        s = s == 0 ? 512 : 2 * s;
        if (s >= n)
            return fail(&h, "no HDF5 signature");
    }
    if (!span_ok(&h, s, 16))
        return fail(&h, "superblock at offset %llu is cut short", (unsigned long long)s);
    int ver = buf[s + 8];
    uint64_t root, p;
    if (ver == 0 || ver == 1) {
        h.so = buf[s + 13], h.sl = buf[s + 14];
        if ((h.so != 2 && h.so != 4 && h.so != 8) || (h.sl != 2 && h.sl != 4 && h.sl != 8))
            return fail(&h, "superblock: sizes of offsets %d and lengths %d (2, 4 or 8 are read)", h.so, h.sl);
        p = s + 24 + (ver == 1 ? 4 : 0);
        uint64_t need = 4 * (uint64_t)h.so + 2 * (uint64_t)h.so + 24;
        if (!span_ok(&h, p, need))
            return fail(&h, "superblock at offset %llu is cut short", (unsigned long long)s);
        h.leaf_k = (int)rd(&h, s + 16, 2), h.node_k = (int)rd(&h, s + 18, 2);
        if (h.leaf_k == 0 || h.node_k == 0)
            return fail(&h, "superblock: group B-tree K values %d and %d must be positive", h.leaf_k, h.node_k);
        h.base = rd(&h, p, h.so);
        if (h.base > n)
            return fail(&h, "superblock: base address %llu beyond the file", (unsigned long long)h.base);
        uint64_t ste = p + 4 * (uint64_t)h.so; /* base, free space, end of file, driver info */
        root = rd(&h, ste + (uint64_t)h.so, h.so);
        uint32_t cache = (uint32_t)rd(&h, ste + 2 * (uint64_t)h.so, 4);
        if (cache == 1) { /* the root entry caches the symbol table's addresses: HDF5 may use them */
            uint64_t bt = rd(&h, ste + 2 * (uint64_t)h.so + 8, h.so), hp = rd(&h, ste + 3 * (uint64_t)h.so + 8, h.so);
            uint64_t a;
            if (addr_ok(&h, bt, 8, "the root group's B-tree (superblock cache)", &a) < 0 ||
                addr_ok(&h, hp, 8, "the root group's local heap (superblock cache)", &a) < 0)
                return -1;
        }
    } else if (ver == 2 || ver == 3) {
        h.so = buf[s + 9], h.sl = buf[s + 10];
        if ((h.so != 2 && h.so != 4 && h.so != 8) || (h.sl != 2 && h.sl != 4 && h.sl != 8))
            return fail(&h, "superblock: sizes of offsets %d and lengths %d (2, 4 or 8 are read)", h.so, h.sl);
        h.leaf_k = 4, h.node_k = 16; /* defaults; new-style groups have no v1 B-tree anyway */
        p = s + 12;
        if (!span_ok(&h, p, 4 * (uint64_t)h.so + 4))
            return fail(&h, "superblock at offset %llu is cut short", (unsigned long long)s);
        h.base = rd(&h, p, h.so);
        if (h.base > n)
            return fail(&h, "superblock: base address %llu beyond the file", (unsigned long long)h.base);
        uint64_t ext = rd(&h, p + (uint64_t)h.so, h.so);
        root = rd(&h, p + 3 * (uint64_t)h.so, h.so);
        if (ext != undef(h.so)) {
            oh_ctx e = {0};
            if (object_header(&h, ext, &e, "the superblock extension") < 0)
                return -1;
        }
    } else
        return fail(&h, "superblock version %d is unknown", ver);
    oh_ctx r = {.is_group = 1};
    if (object_header(&h, root, &r, "the root group's object header") < 0)
        return -1;
    if (h.found) {
        oh_ctx t = {.is_target = 1};
        char what[160];
        snprintf(what, sizeof what, "the object header of '%.100s'", name);
        if (object_header(&h, h.target, &t, what) < 0)
            return -1;
    }
    return 0;
}

int mp_h5_precheck_image(const void *buf, size_t n, const char *what, const char *name)
{
    char why[400];
    if (n == 0)
        return mp_errorf(MP_EFORMAT, "%s: not an HDF5 file (empty)", what);
    if (mp_h5_precheck(buf, n, name, why, sizeof why) == 0)
        return 0;
    if (!strcmp(why, "no HDF5 signature"))
        return mp_errorf(MP_EFORMAT, "%s: not an HDF5 file (no HDF5 signature)", what);
    return mp_errorf(MP_EFORMAT, "%s: damaged HDF5 file: %s", what, why);
}

int mp_h5_precheck_path(const char *path, const char *name)
{
    int fd;
    size_t size;
    MP_CHECK(mp_open_regular(path, MP_EFORMAT, &fd, &size));
    int rc;
    void *map = size ? mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0) : NULL;
    if (map == MAP_FAILED)
        rc = mp_syserrorf(MP_EIO, "%s: cannot map", path);
    else {
        rc = mp_h5_precheck_image(map, size, path, name);
        if (map)
            munmap(map, size);
    }
    close(fd);
    return rc;
}
