/* blacs_svd.c - whitened SVD with ScaLAPACK (see blacs_svd.h). */
#include "blacs_svd.h"

#include <math.h>
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "runtime.h"

/* BLACS / ScaLAPACK (Fortran symbols; Debian ships no C headers) */
int Csys2blacs_handle(MPI_Comm comm);
void Cfree_blacs_system_handle(int handle);
void Cblacs_gridinit(int *ctxt, const char *order, int nprow, int npcol);
void Cblacs_gridmap(int *ctxt, int *usermap, int ldumap, int nprow, int npcol);
void Cblacs_gridinfo(int ctxt, int *nprow, int *npcol, int *myrow, int *mycol);
void Cblacs_gridexit(int ctxt);
void Cpdgemr2d(int m, int n, double *a, int ia, int ja, int *desca, double *b, int ib, int jb, int *descb, int ctxt);
int numroc_(const int *n, const int *nb, const int *iproc, const int *isrcproc, const int *nprocs);
void descinit_(int *desc, const int *m, const int *n, const int *mb, const int *nb, const int *irsrc,
               const int *icsrc, const int *ictxt, const int *lld, int *info);
void pdpotrf_(const char *uplo, const int *n, double *a, const int *ia, const int *ja, const int *desca, int *info);
void pdtrmm_(const char *side, const char *uplo, const char *transa, const char *diag, const int *m, const int *n,
             const double *alpha, const double *a, const int *ia, const int *ja, const int *desca, double *b,
             const int *ib, const int *jb, const int *descb);
void pdtrsm_(const char *side, const char *uplo, const char *transa, const char *diag, const int *m, const int *n,
             const double *alpha, const double *a, const int *ia, const int *ja, const int *desca, double *b,
             const int *ib, const int *jb, const int *descb);
void pdgesvd_(const char *jobu, const char *jobvt, const int *m, const int *n, double *a, const int *ia,
              const int *ja, const int *desca, double *s, double *u, const int *iu, const int *ju, const int *descu,
              double *vt, const int *ivt, const int *jvt, const int *descvt, double *work, const int *lwork,
              int *info);

#define NB 64

typedef struct {
    int ctxt, nprow, npcol, myrow, mycol;
} grid;

/* a distributed m x n matrix on grid g: local storage and descriptor */
typedef struct {
    int desc[9];
    int mloc, nloc;
    double *a;
} dmat;

static int dmat_init(dmat *d, const grid *g, int m, int n)
{
    int zero = 0, nb = NB, info = 0;
    d->mloc = numroc_(&m, &nb, &g->myrow, &zero, &g->nprow);
    d->nloc = numroc_(&n, &nb, &g->mycol, &zero, &g->npcol);
    int lld = d->mloc > 1 ? d->mloc : 1;
    descinit_(d->desc, &m, &n, &nb, &nb, &zero, &zero, &g->ctxt, &lld, &info);
    d->a = calloc((size_t)lld * (size_t)(d->nloc > 1 ? d->nloc : 1), sizeof(double));
    return d->a && info == 0 ? 0 : mp_errorf(MP_ENOMEM, "ScaLAPACK: cannot set up a %d x %d matrix", m, n);
}

/* descriptor of a whole m x n column-major matrix on the root's 1 x 1 grid (-1 context elsewhere) */
static void root_desc(int *desc, int ctxt_root, int is_root, int m, int n)
{
    int zero = 0, info = 0, lld = m > 1 ? m : 1;
    if (is_root)
        descinit_(desc, &m, &n, &m, &n, &zero, &zero, &ctxt_root, &lld, &info);
    else {
        memset(desc, 0, 9 * sizeof(int));
        desc[1] = -1;
    }
}

/* global index of local index l (block-cyclic, source 0) */
static int l2g(int l, int p, int np) { return ((l / NB) * np + p) * NB + l % NB; }

int mp_pwhitened_svd(int root, const double *Delta, int64_t m64, int64_t n64, const double *G, double *lambda,
                     int64_t r64, double *U, double *V, double *sigma)
{
    int rank = mp_mpi_rank(), size = mp_mpi_size(), is_root = rank == root, rc = 0, one = 1, info = 0;
    int m = (int)m64, n = (int)n64, r = (int)r64, k = m < n ? m : n;
    if (m64 > 1 << 30 || n64 > 1 << 30 || r > k)
        return mp_errorf(MP_EUSAGE, "ScaLAPACK SVD: bad sizes %lld x %lld rank %lld", (long long)m64,
                         (long long)n64, (long long)r64);
    int nprow = (int)sqrt((double)size);
    while (size % nprow)
        nprow--;
    grid g = {0}, gs = {0};
    int handle = Csys2blacs_handle(MPI_COMM_WORLD), ctxt_root = handle, rootmap = root;
    g.ctxt = handle;
    Cblacs_gridinit(&g.ctxt, "Row", nprow, size / nprow);
    Cblacs_gridinfo(g.ctxt, &g.nprow, &g.npcol, &g.myrow, &g.mycol);
    gs.ctxt = handle;
    Cblacs_gridinit(&gs.ctxt, "Row", 1, size);
    Cblacs_gridmap(&ctxt_root, &rootmap, 1, 1, 1);

    /* root: column-major copies */
    double *Dc = NULL, *Gc = NULL, md = 0;
    if (is_root) {
        Dc = malloc(sizeof(double) * (size_t)m * n);
        Gc = malloc(sizeof(double) * (size_t)n * n);
        if (Dc && Gc) {
            for (int i = 0; i < m; i++)
                for (int j = 0; j < n; j++)
                    Dc[i + (int64_t)j * m] = Delta[(int64_t)i * n + j];
            for (int i = 0; i < n; i++)
                for (int j = 0; j < n; j++)
                    Gc[i + (int64_t)j * n] = G[(int64_t)i * n + j];
            for (int i = 0; i < n; i++)
                md += G[(int64_t)i * n + i];
            md = md > 0 ? md / n : 1.0;
        } else
            rc = mp_errorf(MP_ENOMEM, "out of memory");
    }
    double bc[2] = {md, *lambda};
    MP_MPI(MPI_Bcast(bc, 2, MPI_DOUBLE, root, MPI_COMM_WORLD));
    md = bc[0];
    double lam = bc[1] > 0 ? bc[1] : 1e-8;
    dmat D = {0}, Gd = {0}, S = {0}, Ud = {0}, VT = {0};
    int dR[9], gR[9];
    if (rc == 0)
        rc = dmat_init(&D, &g, m, n) | dmat_init(&Gd, &g, n, n) | dmat_init(&S, &g, n, n) | dmat_init(&Ud, &g, m, k) |
             dmat_init(&VT, &g, k, n);
    MP_CHECK_GOTO(mp_mpi_agree(rc), out);
    root_desc(dR, ctxt_root, is_root, m, n);
    root_desc(gR, ctxt_root, is_root, n, n);
    Cpdgemr2d(m, n, Dc, 1, 1, dR, D.a, 1, 1, D.desc, gs.ctxt);
    Cpdgemr2d(n, n, Gc, 1, 1, gR, Gd.a, 1, 1, Gd.desc, gs.ctxt);
    /* S = chol(G + lambda md I), lambda x10 until it succeeds */
    for (int attempt = 0;; attempt++, lam *= 10) {
        if (attempt == 40 || lam > 1.0) {
            rc = mp_errorf(MP_ENUMERIC, "ScaLAPACK: Cholesky factorisation of the Gram failed up to lambda 1");
            goto out;
        }
        memcpy(S.a, Gd.a, sizeof(double) * (size_t)(S.mloc > 1 ? S.mloc : 1) * (size_t)(S.nloc > 1 ? S.nloc : 1));
        for (int lj = 0; lj < S.nloc; lj++)
            for (int li = 0; li < S.mloc; li++)
                if (l2g(li, g.myrow, g.nprow) == l2g(lj, g.mycol, g.npcol))
                    S.a[li + (int64_t)lj * S.desc[8]] += lam * md;
        pdpotrf_("L", &n, S.a, &one, &one, S.desc, &info);
        if (info == 0)
            break;
    }
    *lambda = lam;
    /* the strict upper triangle of S is not referenced below (trmm/trsm read the lower one) */
    double alpha = 1.0;
    pdtrmm_("R", "L", "N", "N", &m, &n, &alpha, S.a, &one, &one, S.desc, D.a, &one, &one, D.desc);
    double wq = 0;
    int lwork = -1;
    pdgesvd_("V", "V", &m, &n, D.a, &one, &one, D.desc, sigma ? sigma : &wq, Ud.a, &one, &one, Ud.desc, VT.a, &one,
             &one, VT.desc, &wq, &lwork, &info);
    double *sv = malloc(sizeof(double) * (size_t)k);
    lwork = (int)wq + 1;
    double *work = malloc(sizeof(double) * (size_t)lwork);
    if (!sv || !work)
        rc = mp_errorf(MP_ENOMEM, "out of memory for pdgesvd");
    if (mp_mpi_agree(rc) < 0) {
        free(sv), free(work);
        goto out;
    }
    pdgesvd_("V", "V", &m, &n, D.a, &one, &one, D.desc, sv, Ud.a, &one, &one, Ud.desc, VT.a, &one, &one, VT.desc, work,
             &lwork, &info);
    free(work);
    if (info != 0) {
        free(sv);
        rc = mp_errorf(MP_ENUMERIC, "pdgesvd failed (info %d)", info);
        goto out;
    }
    /* U_r Sigma^(1/2): scale columns; Sigma^(1/2) V_r^T: scale rows; then V <- V S^-1 */
    for (int lj = 0; lj < Ud.nloc; lj++) {
        int gj = l2g(lj, g.mycol, g.npcol);
        for (int li = 0; li < Ud.mloc; li++)
            Ud.a[li + (int64_t)lj * Ud.desc[8]] *= gj < k ? sqrt(sv[gj]) : 0.0;
    }
    for (int li = 0; li < VT.mloc; li++) {
        int gi = l2g(li, g.myrow, g.nprow);
        for (int lj = 0; lj < VT.nloc; lj++)
            VT.a[li + (int64_t)lj * VT.desc[8]] *= gi < k ? sqrt(sv[gi]) : 0.0;
    }
    if (r > 0)
        pdtrsm_("R", "L", "N", "N", &r, &n, &alpha, S.a, &one, &one, S.desc, VT.a, &one, &one, VT.desc);
    if (r > 0) {
        double *Ur = is_root ? malloc(sizeof(double) * (size_t)m * r) : NULL;
        double *Vr = is_root ? malloc(sizeof(double) * (size_t)r * n) : NULL;
        int uR[9], vR[9];
        root_desc(uR, ctxt_root, is_root, m, r);
        root_desc(vR, ctxt_root, is_root, r, n);
        Cpdgemr2d(m, r, Ud.a, 1, 1, Ud.desc, Ur, 1, 1, uR, gs.ctxt);
        Cpdgemr2d(r, n, VT.a, 1, 1, VT.desc, Vr, 1, 1, vR, gs.ctxt);
        if (is_root) {
            for (int i = 0; i < m; i++)
                for (int c = 0; c < r; c++)
                    U[(int64_t)i * r + c] = Ur[i + (int64_t)c * m];
            for (int c = 0; c < r; c++)
                for (int j = 0; j < n; j++)
                    V[(int64_t)c * n + j] = Vr[c + (int64_t)j * r];
        }
        free(Ur), free(Vr);
    }
    if (is_root && sigma)
        memcpy(sigma, sv, sizeof(double) * (size_t)k);
    free(sv);
out:
    free(Dc), free(Gc), free(D.a), free(Gd.a), free(S.a), free(Ud.a), free(VT.a);
    if (is_root)
        Cblacs_gridexit(ctxt_root);
    Cblacs_gridexit(g.ctxt);
    Cblacs_gridexit(gs.ctxt);
    Cfree_blacs_system_handle(handle);
    return mp_mpi_agree(rc);
}
