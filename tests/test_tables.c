/* test_tables.c - the measure stage's files and helpers: measure tables, allocations and factor files
 * round trip; malformed ones are refused naming the file; NaN in a factor is exit 10 naming the file and
 * dataset; candidate ranks. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "allocation.h"
#include "factors.h"
#include "fsutil.h"
#include "job.h"
#include "measure_stage.h"
#include "tables.h"
#include "testutil.h"

static char dir[256];

static void test_table_roundtrip(void)
{
    mp_unit_table t = {0}, u;
    t.layer = 3, t.unit = 5, t.kind = MP_BK_DELTA, t.energy = 2.5;
    CHECK_OK(mp_qformat_parse_list("fp16,w4g128,w2g64", t.fmt, 32, &t.nf));
    for (int p = 0; p < 3; p++) {
        t.p[p].m = 10 + p, t.p[p].n = 20 + p;
        CHECK_OK(mp_table_add(&t.p[p], 0, 2, -1, 7.0, 2.8, 0, 0, 64));
        CHECK_OK(mp_table_add(&t.p[p], 4, 2, -1, 1.0 / 3, 0.4 / 3, 0, 0, 64));
        for (int f = 0; f < 3; f++) {
            CHECK_OK(mp_table_add(&t.p[p], 4, 0, f, 0.1 * f + p, (0.1 * f + p) / 2.5, 100 + f, 1e-6 * f, 64));
            CHECK_OK(mp_table_add(&t.p[p], 4, 1, f, 0.2 * f, 0.2 * f / 2.5, 200 + f, 2e-6 * f, 64));
        }
    }
    char path[512];
    mp_table_path(path, sizeof path, dir, 3, 5, 8);
    char ldir[300];
    snprintf(ldir, sizeof ldir, "%s/layer0003", dir);
    CHECK_OK(mp_mkdir_p(ldir));
    CHECK_OK(mp_table_write(path, &t));
    CHECK_OK(mp_table_read(path, &u));
    CHECK(u.layer == 3 && u.unit == 5 && u.kind == MP_BK_DELTA && u.energy == 2.5 && u.nf == 3);
    CHECK(u.fmt[1] == t.fmt[1] && u.fmt[2] == t.fmt[2]);
    for (int p = 0; p < 3; p++) {
        CHECK(u.p[p].rows == t.p[p].rows && u.p[p].m == t.p[p].m && u.p[p].n == t.p[p].n);
        CHECK(!memcmp(u.p[p].t, t.p[p].t, sizeof(double) * MP_TCOLS * (size_t)t.p[p].rows));
    }
    mp_table_free(&u);
    /* equal contents, equal bytes */
    char path2[512];
    snprintf(path2, sizeof path2, "%s/again.h5", dir);
    CHECK_OK(mp_table_write(path2, &t));
    char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    CHECK_OK(mp_read_file(path, &a, &na));
    CHECK_OK(mp_read_file(path2, &b, &nb));
    CHECK(na == nb && a && b && !memcmp(a, b, na));
    free(a), free(b);
    /* a NaN in a table is refused, naming the file */
    t.p[1].t[MP_TCOL_LOSS] = NAN;
    CHECK_OK(mp_table_write(path2, &t));
    CHECK_ERR(mp_table_read(path2, &u), MP_EFORMAT, "again.h5");
    CHECK_ERR(mp_table_read("/nonexistent/x.h5", &u), MP_ENOENT, "/nonexistent/x.h5");
    mp_table_free(&t);
}

static void test_alloc_roundtrip(void)
{
    mp_layer_alloc a, b;
    CHECK_OK(mp_layer_blocks(2, 4, 1, 1, &a));
    CHECK(a.n == 3 * 6 && a.c[0].kind == MP_BK_BASE && a.c[3].kind == MP_BK_DELTA && a.c[3].unit == 0 &&
          a.c[17].kind == MP_BK_SHARED && a.c[17].proj == 2);
    for (int i = 0; i < a.n; i++) {
        mp_choice *c = &a.c[i];
        c->bytes = 1000 + i, c->loss = 1.0 / (i + 3), c->loss_raw = 7.0 / (i + 3), c->cost = 1e-7 * i;
        if (c->kind == MP_BK_DELTA) {
            c->rank = i % 4 == 0 ? 0 : 8;
            if (c->rank) {
                CHECK_OK(mp_qformat_find("w3g128", &c->fmt));
                CHECK_OK(mp_qformat_find("w8", &c->fmt_v));
            }
        } else
            CHECK_OK(mp_qformat_find("w4g128", &c->fmt));
    }
    char path[512];
    mp_alloc_path(path, sizeof path, dir, 2);
    char ldir[300];
    snprintf(ldir, sizeof ldir, "%s/layer0002", dir);
    CHECK_OK(mp_mkdir_p(ldir));
    CHECK_OK(mp_alloc_write(path, &a));
    CHECK_OK(mp_alloc_read(path, &b));
    CHECK(b.layer == 2 && b.n == a.n);
    for (int i = 0; i < a.n && i < b.n; i++) {
        const mp_choice *x = &a.c[i], *y = &b.c[i];
        CHECK(x->kind == y->kind && x->unit == y->unit && x->proj == y->proj && x->rank == y->rank &&
              x->fmt == y->fmt && x->fmt_v == y->fmt_v && x->bytes == y->bytes && x->loss == y->loss &&
              x->loss_raw == y->loss_raw && x->cost == y->cost);
    }
    mp_layer_alloc_free(&b);
    mp_layer_alloc_free(&a);
    /* malformed: unknown format, a delta without its V format, not an allocation */
    const char *bad[] = {
        "{\"layer\": 0, \"blocks\": [{\"kind\": \"base\", \"unit\": -1, \"proj\": \"gate\", \"format\": \"w5\", "
        "\"bytes\": 1, \"loss\": 0, \"loss_raw\": 0, \"cost_s\": 0}]}",
        "{\"layer\": 0, \"blocks\": [{\"kind\": \"delta\", \"unit\": 0, \"proj\": \"up\", \"rank\": 4, \"format\": "
        "\"w8\", \"bytes\": 1, \"loss\": 0, \"loss_raw\": 0, \"cost_s\": 0}]}",
        "[1, 2]",
        "{\"layer\": 0, \"blocks\": [{\"kind\": \"base\", \"unit\": -1, \"proj\": \"side\", \"format\": \"w8\", "
        "\"bytes\": 1, \"loss\": 0, \"loss_raw\": 0, \"cost_s\": 0}]}",
    };
    for (int i = 0; i < 4; i++) {
        CHECK_OK(mp_write_file_atomic(path, bad[i], strlen(bad[i])));
        CHECK_ERR(mp_alloc_read(path, &b), MP_EFORMAT, "alloc.json");
    }
}

static void test_factor_nan(void)
{
    float U[6] = {1, 2, 3, 4, 5, 6}, V[8] = {1, 0, 0, 1, 0.5f, 0.5f, 2, 1};
    double sig[2] = {2, 1};
    mp_factor_file *f;
    mp_factor_block b = {3, 4, 2, 2, U, V, sig, 1e-6, 9.0, NULL, 0};
    char path[512];
    snprintf(path, sizeof path, "%s/expert0000.h5", dir);
    for (int p = 0; p < 3; p++) {
        CHECK_OK(mp_factors_create(&f));
        for (int q = 0; q < 3; q++)
            CHECK_OK(mp_factors_put(f, q, &b));
        CHECK_OK(mp_factors_save(f, path));
        mp_factors_data d;
        CHECK_OK(mp_factors_read(path, p, 3, 4, &d));
        CHECK(d.rank == 2 && d.k == 2 && d.energy == 9.0 && d.U[5] == 6 && d.V[7] == 1 && d.sigma[1] == 1);
        mp_factors_data_free(&d);
        CHECK_ERR(mp_factors_read(path, p, 4, 4, &d), MP_EFORMAT, "do not make a [4, 4] block");
    }
    V[5] = NAN;
    CHECK_OK(mp_factors_create(&f));
    for (int q = 0; q < 3; q++)
        CHECK_OK(mp_factors_put(f, q, &b));
    CHECK_OK(mp_factors_save(f, path));
    mp_factors_data d;
    CHECK_ERR(mp_factors_read(path, 1, 3, 4, &d), MP_ENUMERIC, "expert0000.h5: dataset 'V_up' holds a NaN");
}

static void test_ranks(void)
{
    mp_job job;
    memset(&job, 0, sizeof job);
    int64_t r[18];
    int n = mp_measure_ranks(&job, 100, 300, 40, r);
    CHECK(n == 2 && r[0] == 0 && r[1] == 40);
    job.n_candidates = 3, job.candidates[0] = 0.5, job.candidates[1] = 0.1, job.candidates[2] = 0.9;
    n = mp_measure_ranks(&job, 100, 300, 40, r); /* 0.1 -> 7, 0.5 -> 37, 0.9 -> 67 clamped to 40 */
    CHECK(n == 4 && r[0] == 0 && r[1] == 7 && r[2] == 37 && r[3] == 40);
}

int main(void)
{
    snprintf(dir, sizeof dir, "/tmp/test_tables.%d", (int)getpid());
    CHECK_OK(mp_mkdir_p(dir));
    test_table_roundtrip();
    test_alloc_roundtrip();
    test_factor_nan();
    test_ranks();
    mp_remove_tree(dir);
    return t_done("test_tables");
}
