/* retention.c: the keep grid (see retention.h). */
#include "retention.h"

void
retention_select(const int64_t *times_ms, size_t n,
    const struct retain_rule *rules, size_t nrules, int64_t now_ms,
    uint8_t *keep)
{
	for (size_t i = 0; i < n; i++) {
		int64_t age = now_ms - times_ms[i];
		size_t r;

		keep[i] = 1;
		if (nrules == 0 || i == n - 1)
			continue;
		if (age < 0)
			age = 0;
		for (r = 0; r < nrules; r++)
			if ((uint64_t)age < rules[r].age_ms)
				break;
		if (r == nrules) {
			keep[i] = 0;	/* older than the grid reaches */
			continue;
		}
		if (rules[r].step_ms == 0)
			continue;
		/* Newest of its bucket within the same tier? */
		int64_t bucket = times_ms[i] / (int64_t)rules[r].step_ms;
		size_t nx = i + 1;
		int64_t nage = now_ms - times_ms[nx];
		size_t nr;

		if (nage < 0)
			nage = 0;
		for (nr = 0; nr < nrules; nr++)
			if ((uint64_t)nage < rules[nr].age_ms)
				break;
		if (nr == r && times_ms[nx] / (int64_t)rules[r].step_ms ==
		    bucket)
			keep[i] = 0;
	}
}
