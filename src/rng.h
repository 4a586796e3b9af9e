/* rng.h - seeded pseudo-random numbers (xoshiro256**, splitmix64 seeding).
 * Deterministic across platforms; normal deviates by Box-Muller in double. */
#ifndef MP_RNG_H
#define MP_RNG_H

#include <stdint.h>

typedef struct {
    uint64_t s[4];
    int has_spare;
    double spare;
} mp_rng;

void mp_rng_seed(mp_rng *r, uint64_t seed);
uint64_t mp_rng_next(mp_rng *r);
double mp_rng_uniform(mp_rng *r); /* [0, 1) */
double mp_rng_normal(mp_rng *r);  /* N(0, 1) */
/* Seed derived from a base seed and a string (e.g. a tensor name). */
uint64_t mp_rng_derive(uint64_t seed, const char *tag);

#endif
