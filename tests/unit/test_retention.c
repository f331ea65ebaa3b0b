/*
 * test_retention.c: retention_select() (retention.h), the keep grid.
 * Expectations are either counted by hand or computed by a brute-force
 * reading of the contract: a point falls in the first tier whose age it is
 * under; a 'step' tier keeps the newest point of each step-wide time
 * bucket among the points of that tier; points past the last tier go; the
 * newest point always stays.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "retention.h"

#define MS_M	60000ll
#define MS_H	(60 * MS_M)
#define MS_D	(24 * MS_H)
#define T0	(19700 * MS_D)	/* a day boundary */

static int
tier_of(int64_t t, int64_t now, const struct retain_rule *r, size_t nr)
{
	int64_t age = now - t;

	if (age < 0)
		age = 0;
	for (size_t i = 0; i < nr; i++)
		if ((uint64_t)age < r[i].age_ms)
			return (int)i;
	return -1;
}

static void
brute(const int64_t *t, size_t n, const struct retain_rule *r, size_t nr,
    int64_t now, uint8_t *keep)
{
	for (size_t i = 0; i < n; i++) {
		int ti = tier_of(t[i], now, r, nr);

		if (nr == 0 || i == n - 1) {
			keep[i] = 1;
			continue;
		}
		if (ti < 0) {
			keep[i] = 0;
			continue;
		}
		if (r[ti].step_ms == 0) {
			keep[i] = 1;
			continue;
		}
		keep[i] = 1;
		for (size_t j = i + 1; j < n; j++)
			if (tier_of(t[j], now, r, nr) == ti &&
			    t[j] / (int64_t)r[ti].step_ms ==
			    t[i] / (int64_t)r[ti].step_ms)
				keep[i] = 0;
	}
}

static size_t
count(const uint8_t *k, size_t n)
{
	size_t c = 0;

	for (size_t i = 0; i < n; i++)
		c += k[i];
	return c;
}

/* "1h:all,24h:1h,7d:1d", a point every 10 minutes for 3 days. */
static void
test_grid_three_days(void **state)
{
	const struct retain_rule rules[] = {
		{ MS_H, 0 }, { MS_D, MS_H }, { 7 * MS_D, MS_D },
	};
	const size_t n = 433;	/* k = 0..432 */
	int64_t t[433], now = T0 + 432 * 10 * MS_M;
	uint8_t keep[433], want[433];

	(void)state;
	for (size_t k = 0; k < n; k++)
		t[k] = T0 + (int64_t)k * 10 * MS_M;
	memset(keep, 0xee, sizeof(keep));
	retention_select(t, n, rules, 3, now, keep);

	/* by hand: the last hour (k 427..432) all; hours before (k 289..426)
	 * the newest of each hour: k % 6 == 5, plus 426, the newest of its
	 * hour inside that tier; older (k 0..288) one per day: 143, 287,
	 * 288 */
	memset(want, 0, sizeof(want));
	for (size_t k = 427; k <= 432; k++)
		want[k] = 1;
	for (size_t k = 289; k <= 426; k++)
		if (k % 6 == 5 || k == 426)
			want[k] = 1;
	want[143] = want[287] = want[288] = 1;
	assert_int_equal(count(want, n), 33);
	for (size_t k = 0; k < n; k++)
		if (keep[k] != want[k])
			fail_msg("point %zu (age %lld min): keep %d, want %d",
			    k, (long long)((now - t[k]) / MS_M), keep[k],
			    want[k]);
	brute(t, n, rules, 3, now, want);
	assert_memory_equal(keep, want, n);

	/* a day later, the first day has gone past nothing: still within
	 * 7 days; 8 days later only the day tier and the newest remain */
	retention_select(t, n, rules, 3, now + 8 * MS_D, keep);
	assert_int_equal(count(keep, n), 1);
	assert_int_equal(keep[n - 1], 1);
	retention_select(t, n, rules, 3, now + 5 * MS_D, keep);
	brute(t, n, rules, 3, now + 5 * MS_D, want);
	assert_memory_equal(keep, want, n);
	assert_int_equal(count(keep, n), 3);	/* one per day */
}

static void
test_no_rules_keeps_all(void **state)
{
	int64_t t[5] = { 1, 2, 3, 4, 5 };
	uint8_t keep[5];

	(void)state;
	memset(keep, 0, sizeof(keep));
	retention_select(t, 5, NULL, 0, 1000 * MS_D, keep);
	for (int i = 0; i < 5; i++)
		assert_int_equal(keep[i], 1);
	/* empty input is fine */
	retention_select(t, 0, NULL, 0, 0, keep);
}

static void
test_older_than_grid_dropped(void **state)
{
	const struct retain_rule rules[] = { { MS_H, 0 } };
	int64_t now = T0 + 10 * MS_H;
	int64_t t[6] = { now - 5 * MS_H, now - 2 * MS_H, now - MS_H,
	    now - MS_H + 1, now - 30 * MS_M, now - MS_M };
	uint8_t keep[6];
	const uint8_t want[6] = { 0, 0, 0, 1, 1, 1 };

	(void)state;
	retention_select(t, 6, rules, 1, now, keep);
	assert_memory_equal(keep, want, 6);
}

static void
test_newest_always_kept(void **state)
{
	const struct retain_rule rules[] = { { MS_H, 0 }, { MS_D, MS_H } };
	int64_t t[3] = { T0, T0 + 1, T0 + 2 };
	uint8_t keep[3];

	(void)state;
	/* all far older than the grid */
	retention_select(t, 3, rules, 2, T0 + 30 * MS_D, keep);
	assert_int_equal(keep[0], 0);
	assert_int_equal(keep[1], 0);
	assert_int_equal(keep[2], 1);
	/* a single point */
	retention_select(t, 1, rules, 2, T0 + 30 * MS_D, keep);
	assert_int_equal(keep[0], 1);
	/* same bucket in a step tier: only the newest of it */
	retention_select(t, 3, rules, 2, T0 + 2 * MS_H, keep);
	assert_int_equal(keep[0], 0);
	assert_int_equal(keep[1], 0);
	assert_int_equal(keep[2], 1);
}

static void
test_small_by_hand(void **state)
{
	/* 10m:all, 1h:15m; points at minutes 0,5,14,15,29,44,52,58 of an
	 * hour, now = minute 60 */
	const struct retain_rule rules[] = { { 10 * MS_M, 0 },
	    { MS_H + 1, 15 * MS_M } };
	const int mins[8] = { 0, 5, 14, 15, 29, 44, 52, 58 };
	/* tier 1 (age >= 10 min): 0,5,14 in bucket 0 -> 14; 15,29 bucket 1
	 * -> 29; 44 bucket 2; tier 0: 52, 58 */
	const uint8_t want[8] = { 0, 0, 1, 0, 1, 1, 1, 1 };
	int64_t t[8];
	uint8_t keep[8];

	(void)state;
	for (int i = 0; i < 8; i++)
		t[i] = T0 + mins[i] * MS_M;
	retention_select(t, 8, rules, 2, T0 + 60 * MS_M, keep);
	assert_memory_equal(keep, want, 8);
	/* a point in the future counts as age 0 */
	t[7] = T0 + 90 * MS_M;
	retention_select(t, 8, rules, 2, T0 + 60 * MS_M, keep);
	assert_memory_equal(keep, want, 8);
}

/* Random sorted times and random grids against the brute force. */
static void
test_random_against_brute(void **state)
{
	uint64_t s = 0x9e3779b97f4a7c15ull;

	(void)state;
	for (int round = 0; round < 2000; round++) {
		struct retain_rule rules[4];
		size_t nr, n;
		int64_t t[200], now, age = 0;
		uint8_t keep[200], want[200];

#define R() (s ^= s << 13, s ^= s >> 7, s ^= s << 17, s)
		nr = R() % 5;
		for (size_t i = 0; i < nr; i++) {
			age += (int64_t)(1 + R() % 48) * 30 * MS_M;
			rules[i].age_ms = (uint64_t)age;
			rules[i].step_ms = R() % 3 == 0 ? 0 :
			    (1 + R() % 12) * 10 * MS_M;
		}
		n = 1 + R() % 200;
		t[0] = T0 + (int64_t)(R() % MS_D);
		for (size_t i = 1; i < n; i++)
			t[i] = t[i - 1] + (int64_t)(R() % (2 * MS_H));
		now = t[n - 1] + (int64_t)(R() % MS_D) - MS_H;
		retention_select(t, n, nr ? rules : NULL, nr, now, keep);
		brute(t, n, rules, nr, now, want);
		if (memcmp(keep, want, n) != 0)
			fail_msg("round %d: retention_select differs from "
			    "the brute force", round);
		assert_int_equal(keep[n - 1], 1);
#undef R
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_grid_three_days),
		cmocka_unit_test(test_no_rules_keeps_all),
		cmocka_unit_test(test_older_than_grid_dropped),
		cmocka_unit_test(test_newest_always_kept),
		cmocka_unit_test(test_small_by_hand),
		cmocka_unit_test(test_random_against_brute),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
