/*
 * xorshift.h: the unit tests' reproducible pseudo-random numbers.  A test
 * file defines RNG_SEED (not zero) and includes this once.
 */
#ifndef REPLICAD_XORSHIFT_H
#define REPLICAD_XORSHIFT_H

#include <stdint.h>

#ifndef RNG_SEED
#error "define RNG_SEED before including xorshift.h"
#endif

static uint64_t rng = RNG_SEED;

static uint64_t
rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

#endif
