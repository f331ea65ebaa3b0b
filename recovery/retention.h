/*
 * retention.h: which recovery points a keep grid retains.
 *
 * A grid is a list of tiers (AGE, STEP) with increasing ages: a point
 * younger than AGE falls in that tier (the first that fits) and is kept if
 * STEP is 0 ('all') or if it is the newest point of its STEP-wide time
 * bucket.  Points older than the last tier's age are dropped.  The newest
 * point is always kept.  Pure function; no I/O.
 */
#ifndef REPLICAD_RETENTION_H
#define REPLICAD_RETENTION_H

#include <stddef.h>
#include <stdint.h>

struct retain_rule {
	uint64_t age_ms;
	uint64_t step_ms;
};

/* times_ms: the points' times, oldest first (ids increasing).  Sets
 * keep[i] to 1 or 0.  With no rules every point is kept. */
void retention_select(const int64_t *times_ms, size_t n,
    const struct retain_rule *rules, size_t nrules, int64_t now_ms,
    uint8_t *keep);

#endif
