/*
 * test_store.c: the DR store's history (store.h): the initial copy,
 * points, failover, cancel, commit and retention with the undo merge,
 * damaged undo data, bad input, entries sent again, a new initial copy.
 * The fixture and the model of the disks are in store_fx.h.
 */
#include "store_fx.h"

/* Bytes the undo log's segments hold on disk, and how many there are. */
static uint64_t
undo_alloc(struct fx *f, int *nseg)
{
	char dir[192], path[512];
	struct dirent *de;
	struct stat st;
	uint64_t total = 0;
	DIR *d;

	snprintf(dir, sizeof(dir), "%s/undo", f->sdir);
	assert_non_null(d = opendir(dir));
	*nseg = 0;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		assert_int_equal(stat(path, &st), 0);
		total += (uint64_t)st.st_blocks * 512;
		(*nseg)++;
	}
	closedir(d);
	return total;
}

/* ------------------------------------------------------------------ */
/* the full cycle */

static void
test_full_cycle(void **state)
{
	struct fx *f = *state;
	struct store_info info;
	struct plist l;
	uint64_t ids[16];
	int np = 0;

	initial_sync(f);
	/* the first interval has no earlier point to keep undo for */
	for (int i = 0; i < 4; i++, np++)
		ids[np] = interval(f, T0 + np * 10 * MIN_MS);
	check_images(f, f->cur, "after 4 intervals");
	reopen(f);
	check_images(f, f->cur, "after reopen");
	store_info(f->s, &info);
	assert_int_equal(info.state, STORE_NORMAL);
	assert_int_equal(info.epoch, 0xabcdef);
	assert_int_equal(info.last_point, 4);
	assert_int_equal(info.applied_seq, f->seq);

	/* two intervals staged before one apply */
	{
		struct batch b = { .n = 0 };
		uint64_t held;

		gen_entries(f, &b, 6);
		ids[np] = gen_point(f, &b, T0 + np * 10 * MIN_MS);
		np++;
		gen_entries(f, &b, 7);
		ids[np] = gen_point(f, &b, T0 + np * 10 * MIN_MS);
		np++;
		gen_entries(f, &b, 3);	/* an open interval: not applied */
		CHECK(store_stage(f->s, b.e, b.n));
		CHECK(store_stage_sync(f->s, &held));
		assert_int_equal(held, f->seq);
		assert_int_equal(store_apply(f->s), 2);
		/* the images hold point 6, not the open interval */
		check_point(f, 6, "after a double apply");
		memcpy(f->cur[0], f->snap[6][0], disk_size[0]);
		memcpy(f->cur[1], f->snap[6][1], disk_size[1]);
		store_info(f->s, &info);
		assert_int_equal(info.last_point, 6);
		assert_int_equal(info.applied_seq, f->seq - 3);
		assert_int_equal(store_held_seq(f->s), f->seq);
		batch_free(&b);
		/* the open interval is kept across a reopen */
		reopen(f);
		check_point(f, 6, "after reopen with an open interval");
		assert_int_equal(store_held_seq(f->s), f->seq);
		ids[np] = gen_point(f, &b, T0 + np * 10 * MIN_MS);
		np++;
		CHECK(store_stage(f->s, b.e, b.n));
		assert_int_equal(store_apply(f->s), 1);
		latest_is_pending(f);
		check_point(f, 7, "open interval closed");
	}
	for (int i = 0; i < 3; i++, np++)
		ids[np] = interval(f, T0 + np * 10 * MIN_MS);
	assert_int_equal(np, 10);

	/* the history as listed */
	list_points(f, &l);
	assert_int_equal(l.n, 10);
	for (size_t i = 0; i < l.n; i++) {
		struct store_point p;

		assert_int_equal(l.p[i].id, i + 1);
		assert_int_equal(l.p[i].time_ms, f->ptime[i + 1]);
		assert_int_equal(l.p[i].kind, (i + 1) % 3);
		assert_true(i == 0 || l.p[i].seq > l.p[i - 1].seq);
		assert_true(store_find_point(f->s, i + 1, &p) == 1);
		assert_int_equal(p.seq, l.p[i].seq);
		assert_string_equal(p.label, l.p[i].label);
	}
	assert_string_equal(l.p[4].label, "point-5");
	{
		struct store_point p;

		assert_int_equal(store_find_point(f->s, 11, &p), 0);
	}

	/* every point fails over to its exact bytes; cancel restores */
	for (int i = np - 1; i >= 0; i--) {
		CHECK(store_failover(f->s, ids[i]));
		check_point(f, ids[i], "failover");
		if (i % 3 == 0) {
			reopen(f);
			store_info(f->s, &info);
			assert_int_equal(info.state, STORE_FAILEDOVER);
			assert_int_equal(info.failover_point, ids[i]);
			check_point(f, ids[i], "failover, reopened");
		}
		/* a second failover is refused until cancel */
		assert_int_equal(store_failover(f->s, ids[0]), -1);
		assert_non_null(strstr(store_error(f->s), "already"));
		CHECK(store_cancel(f->s));
		check_images(f, f->cur, "cancel");
		store_info(f->s, &info);
		assert_int_equal(info.state, STORE_NORMAL);
		assert_int_equal(info.failover_point, 0);
	}
	/* random order, again */
	for (int k = 0; k < 6; k++) {
		uint64_t id = 1 + rnd(f) % 10;

		CHECK(store_failover(f->s, id));
		check_point(f, id, "failover (random order)");
		CHECK(store_cancel(f->s));
		check_images(f, f->cur, "cancel (random order)");
	}
	reopen(f);
	check_images(f, f->cur, "reopen after cancels");

	/* failover to the latest (0) */
	CHECK(store_failover(f->s, 0));
	store_info(f->s, &info);
	assert_int_equal(info.failover_point, 10);
	check_point(f, 10, "failover to latest");
	CHECK(store_cancel(f->s));
	check_point(f, 10, "cancel from latest");
	assert_int_equal(store_cancel(f->s), -1);
	assert_non_null(strstr(store_error(f->s), "not failed over"));

	/* staging while failed over waits for the cancel */
	CHECK(store_failover(f->s, 3));
	check_point(f, 3, "failover before staging");
	{
		struct batch b = { .n = 0 };

		gen_entries(f, &b, 10);
		ids[np] = gen_point(f, &b, T0 + np * 10 * MIN_MS);
		np++;
		CHECK(store_stage(f->s, b.e, b.n));
		assert_int_equal(store_apply(f->s), 0);
		check_point(f, 3, "staged while failed over");
		reopen(f);
		check_point(f, 3, "staged while failed over, reopened");
		CHECK(store_cancel(f->s));
		latest_is_pending(f);
		check_point(f, 11, "cancel applies what was staged");
		store_info(f->s, &info);
		assert_int_equal(info.last_point, 11);
		batch_free(&b);
	}
	/* and point 10 is reachable through the new undo */
	CHECK(store_failover(f->s, 10));
	check_point(f, 10, "failover to the previous latest");
	CHECK(store_cancel(f->s));
	check_all_points(f, "all points after staging while failed over");

	/* commit a failover: only that point remains */
	CHECK(store_failover(f->s, 5));
	check_point(f, 5, "failover before commit");
	CHECK(store_commit(f->s));
	check_point(f, 5, "commit");
	{
		int nseg;

		/* no history left: nor any undo data */
		assert_int_equal(undo_alloc(f, &nseg), 0);
		assert_int_equal(nseg, 0);
	}
	store_info(f->s, &info);
	assert_int_equal(info.state, STORE_COMMITTED);
	assert_int_equal(info.last_point, 5);
	list_points(f, &l);
	assert_int_equal(l.n, 1);
	assert_int_equal(l.p[0].id, 5);
	assert_int_equal(l.p[0].time_ms, f->ptime[5]);
	reopen(f);
	check_point(f, 5, "commit, reopened");
	store_info(f->s, &info);
	assert_int_equal(info.state, STORE_COMMITTED);
	list_points(f, &l);
	assert_int_equal(l.n, 1);
	/* replication has ended */
	{
		struct batch b = { .n = 0 };

		gen_entries(f, &b, 2);
		assert_int_equal(store_stage(f->s, b.e, b.n), -1);
		assert_non_null(strstr(store_error(f->s), "committed"));
		batch_free(&b);
	}
	assert_int_equal(store_failover(f->s, 5), -1);
	check_point(f, 5, "after refused calls");
}

/* ------------------------------------------------------------------ */
/* retention with the undo merge */

static void
test_retain(void **state)
{
	struct fx *f = *state;
	/* 1h: every point, 4h: one per 30 min, 12h: one per 2h */
	const struct retain_rule rules[] = {
		{ 60 * MIN_MS, 0 },
		{ 240 * MIN_MS, 30 * MIN_MS },
		{ 720 * MIN_MS, 120 * MIN_MS },
	};
	const int npts = 50;	/* every 10 min: 8h20 of history */
	int64_t times[MAXP], now;
	uint8_t keep[MAXP];
	struct plist l;
	size_t kept = 0;
	uint64_t alloc0;
	int dropped = -1, nseg;

	initial_sync(f);
	for (int i = 0; i < npts; i++) {
		times[i] = T0 + i * 10 * MIN_MS + (int64_t)(rnd(f) % 1000);
		interval(f, times[i]);
	}
	/* the before-images are in the undo log, not in LMDB */
	alloc0 = undo_alloc(f, &nseg);
	assert_true(alloc0 >= 256 * 1024);
	assert_true(nseg >= 1);
	now = times[npts - 1] + 5 * MIN_MS;
	retention_select(times, (size_t)npts, rules, 3, now, keep);
	for (int i = 0; i < npts; i++)
		kept += keep[i];
	assert_true(kept > 5 && kept < (size_t)npts);

	/* a store that is failed over is left alone */
	CHECK(store_failover(f->s, 20));
	CHECK(store_retain(f->s, rules, 3, now, &dropped));
	assert_int_equal(dropped, 0);
	CHECK(store_cancel(f->s));
	/* no rules: nothing dropped */
	CHECK(store_retain(f->s, rules, 0, now, &dropped));
	assert_int_equal(dropped, 0);

	CHECK(store_retain(f->s, rules, 3, now, &dropped));
	assert_int_equal(dropped, npts - (int)kept);
	list_points(f, &l);
	assert_int_equal(l.n, kept);
	for (int i = 0, k = 0; i < npts; i++) {
		if (!keep[i])
			continue;
		assert_int_equal(l.p[k].id, (uint64_t)i + 1);
		k++;
	}
	assert_int_equal(l.p[l.n - 1].id, (uint64_t)npts);
	check_images(f, f->cur, "after retain");
	/* the merged undo still yields every remaining point exactly */
	check_all_points(f, "after retain");
	reopen(f);
	list_points(f, &l);
	assert_int_equal(l.n, kept);

	/* a later, coarser pass over the merged history */
	{
		const struct retain_rule r2[] = {
			{ 30 * MIN_MS, 0 },
			{ 600 * MIN_MS, 180 * MIN_MS },
		};
		int64_t t2[MAXP];
		uint8_t k2[MAXP];
		size_t kept2 = 0;

		for (size_t i = 0; i < l.n; i++)
			t2[i] = l.p[i].time_ms;
		retention_select(t2, l.n, r2, 2, now, k2);
		for (size_t i = 0; i < l.n; i++)
			kept2 += k2[i];
		CHECK(store_retain(f->s, r2, 2, now, &dropped));
		assert_int_equal(dropped, (int)(l.n - kept2));
		list_points(f, &l);
		assert_int_equal(l.n, kept2);
		check_all_points(f, "after a second retain");
	}
	/* everything older than the grid goes, the newest stays */
	{
		const struct retain_rule r3[] = { { 1, 0 } };

		CHECK(store_retain(f->s, r3, 1, now + 3600000, &dropped));
		list_points(f, &l);
		assert_int_equal(l.n, 1);
		assert_int_equal(l.p[0].id, (uint64_t)npts);
		check_all_points(f, "only the newest left");
		/* what the dropped points kept is given back */
		assert_true(undo_alloc(f, &nseg) < alloc0 / 8);
		reopen(f);
		check_all_points(f, "only the newest left, reopened");
	}
	/* and history grows again from there */
	interval(f, now + 1);
	interval(f, now + 2);
	check_all_points(f, "new points after retain");
}

/* A commit that fails after dropping the undo records in its transaction
 * leaves every record, and the log they point into, as it was: later
 * undo data goes after it, and every point still fails over exactly. */
static void
test_commit_fail(void **state)
{
	struct fx *f = *state;

	initial_sync(f);
	for (int i = 0; i < 6; i++)
		interval(f, T0 + i * MIN_MS);
	CHECK(store_failover(f->s, 1));
	check_point(f, 1, "failover");
	drop_fail = 2;	/* the undo drop goes through, the redo drop fails */
	assert_int_equal(store_commit(f->s), -1);
	assert_non_null(strstr(store_error(f->s), "commit"));
	CHECK(store_cancel(f->s));
	check_point(f, 6, "cancel after a failed commit");
	for (int i = 6; i < 30; i++)
		interval(f, T0 + i * MIN_MS);
	check_all_points(f, "after a failed commit");
	reopen(f);
	check_all_points(f, "after a failed commit, reopened");
}

/* Undo data damaged under the store: the failover that needs it stops,
 * naming the cause, and cancel brings the latest point back.  A slot
 * below the head was written whole, so a segment cut short is lost data,
 * never zeroes laid into the images. */
static void
undo_damaged(struct fx *f, int cut, const char *want)
{
	char path[256];
	struct stat st;

	initial_sync(f);
	for (int i = 0; i < 4; i++)
		interval(f, T0 + i * MIN_MS);
	snprintf(path, sizeof(path), "%s/undo/%016x", f->sdir, 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(cut ? truncate(path, 4096) : unlink(path), 0);
	assert_int_equal(store_failover(f->s, 1), -1);
	if (strstr(store_error(f->s), want) == NULL)
		fail_msg("failover: %s (wanted '%s')", store_error(f->s),
		    want);
	CHECK(store_cancel(f->s));
	check_point(f, 4, "cancel after undo data was damaged");
}

static void
test_undo_lost(void **state)
{
	undo_damaged(*state, 0, "No such file");
}

static void
test_undo_truncated(void **state)
{
	undo_damaged(*state, 1, "lost data");
}

/* ------------------------------------------------------------------ */
/* bad input */

static void
test_bad_input(void **state)
{
	struct fx *f = *state;
	struct store_disk many[STORE_MAX_DISKS + 1];
	struct jentry e;
	uint8_t buf[16] = { 1 };
	uint64_t held;

	/* nothing to fail over to, nothing to stage into yet */
	assert_int_equal(store_failover(f->s, 0), -1);
	assert_non_null(strstr(store_error(f->s), "no recovery point"));
	memset(&e, 0, sizeof(e));
	e.type = JE_WRITE;
	e.seq = 1;
	e.length = 16;
	e.data = buf;
	assert_int_equal(store_stage(f->s, &e, 1), -1);
	assert_non_null(strstr(store_error(f->s), "initial copy"));
	assert_int_equal(store_sync_write(f->s, 0, 0, 16, buf), -1);
	assert_int_equal(store_sync_done(f->s, 1), -1);
	memset(many, 0, sizeof(many));
	for (int i = 0; i <= STORE_MAX_DISKS; i++) {
		snprintf(many[i].name, sizeof(many[i].name), "d%d", i);
		many[i].size = 4096;
	}
	assert_int_equal(store_begin_sync(f->s, 1, many, 0), -1);
	assert_int_equal(store_begin_sync(f->s, 1, many,
	    STORE_MAX_DISKS + 1), -1);
	assert_non_null(strstr(store_error(f->s), "disks"));

	initial_sync(f);
	/* copy writes out of range */
	assert_int_equal(store_sync_write(f->s, 2, 0, 16, buf), -1);
	interval(f, T0);
	held = store_held_seq(f->s);

	/* disk index too big */
	e.seq = held + 1;
	e.disk = 2;
	e.offset = 0;
	assert_int_equal(store_stage(f->s, &e, 1), -1);
	assert_non_null(strstr(store_error(f->s), "disk 2"));
	e.disk = 0xffffffffu;
	assert_int_equal(store_stage(f->s, &e, 1), -1);
	assert_non_null(strstr(store_error(f->s), "out of range"));
	/* offset past the end, range crossing the end, wrapping range */
	e.disk = 1;
	e.offset = disk_size[1] + 4096;
	assert_int_equal(store_stage(f->s, &e, 1), -1);
	assert_non_null(strstr(store_error(f->s), "beyond"));
	e.offset = disk_size[1] - 15;
	assert_int_equal(store_stage(f->s, &e, 1), -1);
	assert_non_null(strstr(store_error(f->s), "beyond"));
	e.offset = UINT64_MAX - 8;
	assert_int_equal(store_stage(f->s, &e, 1), -1);
	assert_non_null(strstr(store_error(f->s), "beyond"));
	e.type = JE_ZERO;
	e.data = NULL;
	e.offset = disk_size[0] - 100;
	e.disk = 0;
	e.length = 4096;
	assert_int_equal(store_stage(f->s, &e, 1), -1);
	assert_non_null(strstr(store_error(f->s), "beyond"));
	/* an entry over the cap */
	e.type = JE_WRITE;
	e.offset = 0;
	e.length = STORE_MAX_ENTRY + 1;
	e.data = buf;	/* never read: refused before */
	assert_int_equal(store_stage(f->s, &e, 1), -1);
	assert_non_null(strstr(store_error(f->s), "cap"));
	/* an unknown type */
	e.type = (enum jentry_type)7;
	e.length = 16;
	assert_int_equal(store_stage(f->s, &e, 1), -1);
	assert_non_null(strstr(store_error(f->s), "type"));
	/* one bad entry refuses the whole batch */
	{
		struct jentry two[2];

		memset(two, 0, sizeof(two));
		two[0].type = JE_WRITE;
		two[0].seq = held + 1;
		two[0].length = 16;
		two[0].data = buf;
		two[1] = two[0];
		two[1].seq = held + 2;
		two[1].disk = 5;
		assert_int_equal(store_stage(f->s, two, 2), -1);
		assert_non_null(strstr(store_error(f->s), "disk 5"));
	}
	assert_int_equal(store_held_seq(f->s), held);
	assert_int_equal(store_failover(f->s, 99), -1);
	assert_non_null(strstr(store_error(f->s), "no recovery point 99"));
	assert_int_equal(store_commit(f->s), -1);
	assert_int_equal(store_cancel(f->s), -1);
	check_point(f, 1, "after refused input");

	/* still usable */
	interval(f, T0 + 1);
	interval(f, T0 + 2);
	reopen(f);
	check_all_points(f, "after refused input");
}

/* ------------------------------------------------------------------ */
/* re-staging what is held is skipped */

static void
test_idempotent(void **state)
{
	struct fx *f = *state;
	struct batch b = { .n = 0 };
	struct store_info info;
	uint64_t held;

	initial_sync(f);
	interval(f, T0);
	gen_entries(f, &b, 12);
	gen_point(f, &b, T0 + 1);
	/* the same batch twice before the apply, overlapping */
	CHECK(store_stage(f->s, b.e, 8));
	CHECK(store_stage(f->s, b.e, b.n));
	CHECK(store_stage(f->s, b.e, b.n));
	assert_int_equal(store_held_seq(f->s), f->seq);
	assert_int_equal(store_apply(f->s), 1);
	latest_is_pending(f);
	check_point(f, 2, "applied once");
	store_info(f->s, &info);
	assert_int_equal(info.applied_seq, f->seq);
	/* after the apply (and the stage trim), again */
	CHECK(store_stage(f->s, b.e, b.n));
	assert_int_equal(store_apply(f->s), 0);
	assert_int_equal(store_held_seq(f->s), f->seq);
	check_point(f, 2, "re-staged after apply");
	reopen(f);
	CHECK(store_stage(f->s, b.e, b.n));
	assert_int_equal(store_apply(f->s), 0);
	assert_int_equal(store_held_seq(f->s), f->seq);
	CHECK(store_stage_sync(f->s, &held));
	assert_int_equal(held, f->seq);
	check_point(f, 2, "re-staged after reopen");
	batch_free(&b);
	/* and what follows still goes in */
	interval(f, T0 + 2);
	check_all_points(f, "after re-staging");
}

/* A new begin_sync forgets the lineage: history, stage and images. */
static void
test_resync(void **state)
{
	struct fx *f = *state;
	struct plist l;
	struct store_info info;

	initial_sync(f);
	interval(f, T0);
	interval(f, T0 + 1);
	/* restart the copy: sequences start again lower */
	for (int d = 0; d < NDISKS; d++)
		memset(f->pending[d], 0, disk_size[d]);
	for (int d = 0; d < NDISKS; d++)
		memset(f->cur[d], 0, disk_size[d]);
	begin_copy(f, 77);
	check_images(f, f->cur, "images truncated by a new sync");
	list_points(f, &l);
	assert_int_equal(l.n, 0);
	CHECK(store_sync_done(f->s, 5));
	store_info(f->s, &info);
	assert_int_equal(info.epoch, 77);
	assert_int_equal(info.applied_seq, 5);
	assert_int_equal(store_held_seq(f->s), 5);
	f->seq = 5;
	for (int d = 0; d < NDISKS; d++)
		for (int p = 0; p <= MAXP; p++) {
			free(f->snap[p][d]);
			f->snap[p][d] = NULL;
		}
	f->last_id = 0;
	interval(f, T0 + 5);
	interval(f, T0 + 6);
	reopen(f);
	check_all_points(f, "after a resync");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_full_cycle, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_retain, setup, teardown),
		cmocka_unit_test_setup_teardown(test_commit_fail, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_undo_lost, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_undo_truncated, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_bad_input, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_idempotent, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_resync, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
