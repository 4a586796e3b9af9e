/* checked.h - overflow-checked size arithmetic for sizes that come from file data.
 *
 * Every size read from a file (tensor shapes, dataset dimensions, offsets) is
 * combined with these helpers before it is used: they return 0 and store the
 * exact result, or -1 (and leave *out unchanged) when it would not fit or an
 * operand is negative. MP_MAX_ELEMS bounds the element count of any tensor or
 * dataset moepack accepts (2^50: far beyond any checkpoint, small enough that
 * element counts times an element size and sums of a few of them fit int64). */
#ifndef MP_CHECKED_H
#define MP_CHECKED_H

#include <stdint.h>

#define MP_MAX_ELEMS (INT64_C(1) << 50)

static inline int mp_mul_i64(int64_t a, int64_t b, int64_t *out)
{
    int64_t r;
    if (a < 0 || b < 0 || __builtin_mul_overflow(a, b, &r))
        return -1;
    *out = r;
    return 0;
}

static inline int mp_add_i64(int64_t a, int64_t b, int64_t *out)
{
    int64_t r;
    if (a < 0 || b < 0 || __builtin_add_overflow(a, b, &r))
        return -1;
    *out = r;
    return 0;
}

static inline int mp_mul_u64(uint64_t a, uint64_t b, uint64_t *out)
{
    uint64_t r;
    if (__builtin_mul_overflow(a, b, &r))
        return -1;
    *out = r;
    return 0;
}

/* The product of n non-negative dimensions, or -1 when it exceeds `limit` (or overflows).
 * A zero dimension gives 0 only after every dimension has been checked against `limit`. */
static inline int mp_dims_product(const int64_t *dims, int n, int64_t limit, int64_t *out)
{
    int64_t p = 1;
    int zero = 0;
    for (int i = 0; i < n; i++) {
        if (dims[i] < 0 || dims[i] > limit)
            return -1;
        if (dims[i] == 0) {
            zero = 1;
            continue;
        }
        if (mp_mul_i64(p, dims[i], &p) < 0 || p > limit)
            return -1;
    }
    *out = zero ? 0 : p;
    return 0;
}

#endif
