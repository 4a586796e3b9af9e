/* plan.c - ownership and resource estimates of a job (see plan.h). */
#include "plan.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

void mp_shard_range(int64_t n, int rank, int size, int64_t *lo, int64_t *hi)
{
    *lo = n * rank / size;
    *hi = n * (rank + 1) / size;
}

void mp_seq_range(int64_t n_seq, int rank, int size, int64_t *lo, int64_t *hi)
{
    mp_shard_range(n_seq, rank, size, lo, hi);
}

int mp_unit_owner(int l, int u, int n_experts, int nranks)
{
    return (int)(((int64_t)l * (n_experts + 1) + u) % nranks);
}
