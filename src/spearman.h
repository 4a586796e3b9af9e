/* spearman.h - Spearman's rank correlation of two samples (ties get their average rank).
 * Local; no allocation failure is silent (MP_ENOMEM). */
#ifndef MP_SPEARMAN_H
#define MP_SPEARMAN_H

/* *rho = Pearson's correlation of the ranks of x[n] and y[n]; NAN when n < 2 or either sample is
 * constant. */
int mp_spearman(const double *x, const double *y, int n, double *rho);

#endif
