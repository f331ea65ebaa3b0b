/*
 * test_store_apply.c: the DR store receiving and applying (store.h):
 * entries applied ahead of their point, in memory chunks by the flusher
 * thread, apply errors, the sync behind the receiver, and points logged
 * ahead of their apply (store_log_point) through restarts, failovers and
 * errors.  The fixture and the model of the disks are in store_fx.h.
 */
#include "store_fx.h"

/*
 * Writes applied ahead of their point: from memory, with nothing staged.
 * The images then hold the latest point plus those writes; every point
 * still fails over exactly, a cancel brings the writes back, and what was
 * only in memory at a crash comes again from the primary.
 */
static void
test_ahead(void **state)
{
	struct fx *f = *state;
	struct batch b = { .n = 0 }, c = { .n = 0 };
	struct store_info info;
	uint64_t held, before;

	initial_sync(f);
	for (int i = 0; i < 3; i++)
		interval(f, T0 + i);
	/* in memory: not held durably yet, the images untouched */
	before = f->seq;
	gen_entries(f, &b, 20);
	CHECK(store_stage(f->s, b.e, b.n));
	assert_int_equal(store_held_seq(f->s), before);
	check_images(f, f->cur, "writes held in memory");
	/* acknowledged: applied to the images and durable */
	CHECK(store_stage_sync(f->s, &held));
	assert_int_equal(held, f->seq);
	check_images(f, f->pending, "writes applied ahead of their point");
	/* every point, the latest included, without those writes */
	for (uint64_t id = 1; id <= 3; id++) {
		CHECK(store_failover(f->s, id == 3 ? 0 : id));
		check_point(f, id, "failover with writes applied ahead");
		CHECK(store_cancel(f->s));
		check_images(f, f->pending, "cancel: the writes are back");
	}
	/* a durable reopen keeps them */
	reopen(f);
	assert_int_equal(store_held_seq(f->s), f->seq);
	check_images(f, f->pending, "reopened after the acknowledgement");
	/* more in memory, then a crash: lost, not acknowledged */
	before = f->seq;
	gen_entries(f, &c, 20);
	CHECK(store_stage(f->s, c.e, c.n));
	reopen(f);
	assert_int_equal(store_held_seq(f->s), before);
	/* the primary sends them again (with some it had sent before) */
	CHECK(store_stage(f->s, b.e + 10, b.n - 10));
	CHECK(store_stage(f->s, c.e, c.n));
	batch_free(&b);
	gen_point(f, &b, T0 + 10);
	CHECK(store_stage(f->s, b.e, b.n));
	assert_int_equal(store_apply(f->s), 1);
	latest_is_pending(f);
	store_info(f->s, &info);
	assert_int_equal(info.last_point, 4);
	assert_int_equal(info.applied_seq, f->seq);
	check_point(f, 4, "the point after a crash with writes in memory");
	batch_free(&b);
	batch_free(&c);
	interval(f, T0 + 11);
	reopen(f);
	check_all_points(f, "after writes applied ahead");
}

/* Make the images' descriptors read-only, so that writes fail as on a
 * failing disk while before-images still read, or writable again. */
static void
images_readonly(struct fx *f, int on)
{
	for (int d = 0; d < NDISKS; d++) {
		int fd = open(store_disk_path(f->s, (size_t)d),
		    on ? O_RDONLY : O_RDWR);

		assert_true(fd >= 0);
		assert_true(dup2(fd, f->s->fds[d]) >= 0);
		close(fd);
	}
}

/*
 * A write error while applying from memory drops what memory held (none
 * of it acknowledged).  Later entries are refused until the primary is
 * told where to resume, so no hole is ever acknowledged; what it sends
 * again then gives exact points.
 */
static void
test_apply_error(void **state)
{
	struct fx *f = *state;
	struct batch a = { .n = 0 }, b = { .n = 0 };
	uint64_t held, before;

	initial_sync(f);
	interval(f, T0);
	before = f->seq;
	gen_entries(f, &a, 20);
	CHECK(store_stage(f->s, a.e, a.n));
	images_readonly(f, 1);
	assert_int_equal(store_stage_sync(f->s, &held), -1);
	assert_non_null(strstr(store_error(f->s), "write"));
	images_readonly(f, 0);	/* the disk works again */
	gen_entries(f, &b, 20);
	assert_int_equal(store_stage(f->s, b.e, b.n), -1);
	assert_non_null(strstr(store_error(f->s), "must come again"));
	assert_int_equal(store_stage_sync(f->s, &held), -1);
	/* a failover does not wait for the primary (it may be gone) */
	CHECK(store_failover(f->s, 0));
	check_point(f, 1, "failover after an apply error");
	CHECK(store_cancel(f->s));
	/* the primary announces again and resumes after what is held */
	store_resume(f->s);
	CHECK(store_stage_sync(f->s, &held));
	assert_int_equal(held, before);
	CHECK(store_stage(f->s, a.e, a.n));
	CHECK(store_stage(f->s, b.e, b.n));
	close_point(f, T0 + 1, "the point after an apply error");
	batch_free(&a);
	batch_free(&b);
	check_all_points(f, "after an apply error");
}

/* A point counts the bytes applied ahead of it, across a restart too. */
static void
test_ahead_bytes(void **state)
{
	struct fx *f = *state;
	struct batch a = { .n = 0 }, b = { .n = 0 }, p = { .n = 0 };
	struct plist l;
	uint64_t held, want = 0;

	initial_sync(f);
	interval(f, T0);
	gen_entries(f, &a, 20);
	gen_entries(f, &b, 20);
	for (size_t i = 0; i < a.n; i++)
		want += a.e[i].type == JE_WRITE ? a.e[i].length : 0;
	for (size_t i = 0; i < b.n; i++)
		want += b.e[i].type == JE_WRITE ? b.e[i].length : 0;
	CHECK(store_stage(f->s, a.e, a.n));
	CHECK(store_stage_sync(f->s, &held));
	reopen(f);
	CHECK(store_stage(f->s, b.e, b.n));
	gen_point(f, &p, T0 + 1);
	CHECK(store_stage(f->s, p.e, p.n));
	assert_int_equal(store_apply(f->s), 1);
	latest_is_pending(f);
	list_points(f, &l);
	assert_int_equal(l.p[l.n - 1].id, 2);
	assert_int_equal(l.p[l.n - 1].bytes, want);
	check_point(f, 2, "applied ahead across a restart");
	batch_free(&a);
	batch_free(&b);
	batch_free(&p);
}

/*
 * More than two memory chunks of random, overlapping writes: chunks are
 * applied by the flusher while the next fills, and a block touched in
 * several chunks keeps the before-image of its first touch.
 */
static void
test_ahead_chunks(void **state)
{
	struct fx *f = *state;
	struct batch b = { .n = 0 };
	uint64_t held, bytes = 0;

	initial_sync(f);
	interval(f, T0);
	interval(f, T0 + 1);
	for (int round = 0; round < 120; round++) {
		gen_entries(f, &b, 60);
		for (size_t i = 0; i < b.n; i++)
			bytes += b.e[i].type == JE_WRITE ? b.e[i].length : 0;
		CHECK(store_stage(f->s, b.e, b.n));
		batch_free(&b);	/* the store holds its own copy */
	}
	assert_true(bytes > 3 * (16u << 20) / 2);
	CHECK(store_stage_sync(f->s, &held));
	assert_int_equal(held, f->seq);
	check_images(f, f->pending, "chunks applied ahead");
	for (uint64_t id = 1; id <= 2; id++) {
		CHECK(store_failover(f->s, id));
		check_point(f, id, "failover past several chunks");
		CHECK(store_cancel(f->s));
		check_images(f, f->pending, "cancel after several chunks");
	}
	gen_point(f, &b, T0 + 2);
	CHECK(store_stage(f->s, b.e, b.n));
	assert_int_equal(store_apply(f->s), 1);
	latest_is_pending(f);
	batch_free(&b);
	reopen(f);
	check_all_points(f, "after several chunks");
}

/* Stage random entries over CHUNKS memory chunks and a quarter (the
 * flusher applies one while the next fill, up to MEM_CHUNKS). */
static void
fill_chunks(struct fx *f, unsigned chunks)
{
	struct batch b = { .n = 0 };
	uint64_t bytes = 0;

	while (bytes < (uint64_t)CHUNK_BYTES * chunks + CHUNK_BYTES / 4) {
		gen_entries(f, &b, 60);
		for (size_t i = 0; i < b.n; i++)
			bytes += b.e[i].type == JE_WRITE ? b.e[i].length : 0;
		CHECK(store_stage(f->s, b.e, b.n));
		batch_free(&b);
	}
}

/* Log the point closing what fill_chunks staged: 1, durable at once. */
static uint64_t
log_point(struct fx *f, int64_t time_ms)
{
	struct batch p = { .n = 0 };
	uint64_t id = gen_point(f, &p, time_ms);
	int r = store_log_point(f->s, &p.e[0]);

	if (r != 1)
		fail_msg("store_log_point returned %d: %s", r,
		    store_error(f->s));
	assert_int_equal(store_held_seq(f->s), f->seq);
	batch_free(&p);
	return id;
}

/*
 * A point logged ahead of its apply (store_log_point): durable at once,
 * and exact whichever way it is applied: by a restart that dropped what
 * memory held, by a failover, or by the next entries staged.
 */
static void
test_log_point(void **state)
{
	struct fx *f = *state;
	struct batch b = { .n = 0 };
	struct plist l;
	uint64_t id;

	initial_sync(f);
	interval(f, T0);
	/* nothing in memory: the marker goes the usual way */
	gen_point(f, &b, T0 + 1);
	assert_int_equal(store_log_point(f->s, &b.e[0]), 0);
	CHECK(store_stage(f->s, b.e, b.n));
	assert_int_equal(store_apply(f->s), 1);
	latest_is_pending(f);
	batch_free(&b);

	/* a restart before the apply: memory is gone, the log is not; more
	 * than memory holds, so that the receiving waited for the flusher */
	fill_chunks(f, MEM_CHUNKS + 1);
	id = log_point(f, T0 + 2);
	reopen(f);
	latest_is_pending(f);
	list_points(f, &l);
	assert_int_equal(l.p[l.n - 1].id, id);
	check_images(f, f->cur, "logged point applied on open");
	check_all_points(f, "logged point applied on open");

	/* a failover before the apply */
	fill_chunks(f, 2);
	id = log_point(f, T0 + 3);
	CHECK(store_failover(f->s, 0));
	check_point(f, id, "failover to a logged point");
	CHECK(store_cancel(f->s));
	latest_is_pending(f);
	check_images(f, f->cur, "cancel after failover to a logged point");

	/* the next interval's entries before the apply */
	fill_chunks(f, 1);
	id = log_point(f, T0 + 4);
	gen_entries(f, &b, 30);
	CHECK(store_stage(f->s, b.e, b.n));
	batch_free(&b);
	list_points(f, &l);
	assert_int_equal(l.p[l.n - 1].id, id);
	close_point(f, T0 + 5, "the point after a logged one");
	reopen(f);
	check_all_points(f, "after logged points");
}

/* Until the flusher is idle (its last chunk's thread ended). */
static void
flusher_wait(struct fx *f)
{
	for (int i = 0; i < 20000 && store_flushing(f->s); i++)
		usleep(1000);
	usleep(200000);
}

/* The same, then one more entry staged: what the flusher applied is
 * taken in (the durable mark not yet moved). */
static void
flusher_idle(struct fx *f)
{
	struct batch b = { .n = 0 };

	flusher_wait(f);
	gen_entries(f, &b, 1);
	CHECK(store_stage(f->s, b.e, b.n));
	batch_free(&b);
}

/* A kill -9 now: the store's files copied as they are (what the images
 * and logs hold), opened as a second store; the model's latest point
 * checked there. */
static void
check_after_kill(struct fx *f, uint64_t id, const char *what)
{
	char cmd[512], dir2[160], err[512] = "";
	struct store *s2, *orig = f->s;
	struct plist l;

	snprintf(dir2, sizeof(dir2), "%s/killed", f->dir);
	snprintf(cmd, sizeof(cmd), "rm -rf %s && cp -a %s %s", dir2, f->sdir,
	    dir2);
	assert_int_equal(system(cmd), 0);
	if ((s2 = store_open(dir2, err, sizeof(err))) == NULL)
		fail_msg("%s: open: %s", what, err);
	f->s = s2;
	list_points(f, &l);
	assert_int_equal(l.p[l.n - 1].id, id);
	CHECK(store_failover(f->s, id));
	check_point(f, id, what);
	store_close(s2);
	f->s = orig;
}

/*
 * Entries staged while failed over and applied ahead after the cancel,
 * then chunks applied from memory, then a logged point and a kill: the
 * restart must not lay the staged (older) entries over what the chunks
 * wrote, so the chunks' mark is recorded before the point is logged.
 */
static void
test_log_after_ahead(void **state)
{
	struct fx *f = *state;
	uint64_t id;

	initial_sync(f);
	interval(f, T0);
	CHECK(store_failover(f->s, 0));
	fill_chunks(f, 1);	/* staged: failed over */
	CHECK(store_cancel(f->s));
	CHECK(store_apply_ahead(f->s));
	fill_chunks(f, 2);	/* into memory, applied by the flusher */
	flusher_idle(f);
	id = log_point(f, T0 + 2);
	flusher_wait(f);	/* the apply of the point has not begun */
	latest_is_pending(f);
	check_after_kill(f, id, "logged point after staged entries, killed");
	close_point(f, T0 + 3, "the point after");
	check_all_points(f, "after a logged point over staged entries");
}

/*
 * The sync before a point is logged fails: nothing is acknowledged past
 * what is durable, and what the primary sends again closes the point
 * exactly.
 */
static void
test_log_sync_fail(void **state)
{
	struct fx *f = *state;
	struct batch b[64];
	struct batch p = { .n = 0 };
	uint64_t held, dur, bytes = 0;
	size_t nb = 0;

	initial_sync(f);
	interval(f, T0);
	CHECK(store_stage_sync(f->s, &dur));
	while (bytes < (uint64_t)CHUNK_BYTES * 2 && nb < 64) {
		b[nb].n = 0;
		gen_entries(f, &b[nb], 60);
		for (size_t i = 0; i < b[nb].n; i++)
			bytes += b[nb].e[i].type == JE_WRITE ?
			    b[nb].e[i].length : 0;
		CHECK(store_stage(f->s, b[nb].e, b[nb].n));
		nb++;
	}
	flusher_wait(f);
	gen_point(f, &p, T0 + 1);
	__atomic_store_n(&sync_fail_fd[0], f->s->fds[0], __ATOMIC_RELEASE);
	assert_int_equal(store_log_point(f->s, &p.e[0]), -1);
	assert_non_null(strstr(store_error(f->s), "sync"));
	/* the primary announces again and resumes after what is held */
	store_resume(f->s);
	CHECK(store_stage_sync(f->s, &held));
	assert_int_equal(held, dur);
	for (size_t k = 0; k < nb; k++) {
		CHECK(store_stage(f->s, b[k].e, b[k].n));
		batch_free(&b[k]);
	}
	CHECK(store_stage(f->s, p.e, p.n));
	assert_int_equal(store_apply(f->s), 1);
	latest_is_pending(f);
	check_point(f, 2, "the point after a failed sync, sent again");
	batch_free(&p);
	reopen(f);
	check_all_points(f, "after a failed sync before a logged point");
}

/*
 * The flusher fails on a chunk after its point was logged and
 * acknowledged (the images refuse writes for a moment): the apply takes
 * those entries from the stage, the point is exact, and nothing stays
 * refused.
 */
static void
test_log_apply_error(void **state)
{
	struct fx *f = *state;
	uint64_t held, id;

	initial_sync(f);
	interval(f, T0);
	fill_chunks(f, 4);
	id = log_point(f, T0 + 1);
	images_readonly(f, 1);	/* the queued chunks' writes fail */
	usleep(300000);
	images_readonly(f, 0);
	assert_int_equal(store_apply(f->s), 1);
	latest_is_pending(f);
	CHECK(store_stage_sync(f->s, &held));
	assert_int_equal(held, f->seq);
	check_point(f, id, "a logged point whose apply from memory failed");
	close_point(f, T0 + 2, "the point after");
	reopen(f);
	check_all_points(f, "after a failed apply of a logged point");
}

/* Until the flusher's sync is over: store_sync_poll's answer. */
static int
poll_durable(struct fx *f, uint64_t *seq)
{
	int r = 0;

	for (int i = 0; i < 10000 && r == 0; i++) {
		if ((r = store_sync_poll(f->s, seq)) == 0)
			usleep(1000);
	}
	assert_int_not_equal(r, 0);
	return r;
}

/*
 * Acknowledging without holding up the receiver: the flusher syncs the
 * images behind the chunk it applies (store_sync_start) while more
 * entries arrive; the durable mark moves once it is done
 * (store_sync_poll), survives a crash, and a failed sync moves nothing.
 */
static void
test_sync_behind(void **state)
{
	struct fx *f = *state;
	struct batch a = { .n = 0 }, b = { .n = 0 }, c = { .n = 0 };
	uint8_t *after_a[NDISKS];
	uint64_t held, mid, before_c;

	initial_sync(f);
	interval(f, T0);
	interval(f, T0 + 1);
	CHECK(store_stage_sync(f->s, &held));	/* the points' ack */
	assert_int_equal(store_sync_poll(f->s, &held), 0);
	/* nothing in memory: the caller syncs the way it always did */
	assert_int_equal(store_sync_start(f->s), 0);
	gen_entries(f, &a, 30);
	CHECK(store_stage(f->s, a.e, a.n));
	mid = f->seq;
	for (int d = 0; d < NDISKS; d++) {
		after_a[d] = malloc(disk_size[d]);
		assert_non_null(after_a[d]);
		memcpy(after_a[d], f->pending[d], disk_size[d]);
	}
	assert_int_equal(store_sync_start(f->s), 1);
	/* more arrive while the flusher applies and syncs */
	gen_entries(f, &b, 30);
	CHECK(store_stage(f->s, b.e, b.n));
	assert_int_equal(poll_durable(f, &held), 1);
	assert_int_equal(held, mid);
	assert_int_equal(store_held_seq(f->s), mid);
	assert_int_equal(store_sync_poll(f->s, &held), 0);	/* said once */
	/* a crash now keeps what was acknowledged, not what came after */
	reopen(f);
	assert_int_equal(store_held_seq(f->s), mid);
	check_images(f, after_a, "a crash after a sync behind the receiver");
	CHECK(store_stage(f->s, b.e, b.n));	/* sent again */
	assert_int_equal(store_sync_start(f->s), 1);
	assert_int_equal(poll_durable(f, &held), 1);
	assert_int_equal(held, f->seq);
	check_images(f, f->pending, "synced behind the receiver");
	/* the flusher's sync fails: nothing more is durable, later entries
	 * are refused until the primary resumes after what is */
	before_c = f->seq;
	gen_entries(f, &c, 30);
	CHECK(store_stage(f->s, c.e, c.n));
	__atomic_store_n(&sync_fail_fd[0], f->s->fds[0], __ATOMIC_RELEASE);
	assert_int_equal(store_sync_start(f->s), 1);
	assert_int_equal(poll_durable(f, &held), -1);
	assert_non_null(strstr(store_error(f->s), "sync"));
	assert_int_equal(store_held_seq(f->s), before_c);
	assert_int_equal(store_stage(f->s, c.e, c.n), -1);
	assert_non_null(strstr(store_error(f->s), "must come again"));
	store_resume(f->s);
	CHECK(store_stage_sync(f->s, &held));
	assert_int_equal(held, before_c);
	CHECK(store_stage(f->s, c.e, c.n));
	close_point(f, T0 + 2, "the point after a failed sync");
	/* a sync the flusher finished is no ack for what was staged after
	 * it, unsynced (here: failed over meanwhile) */
	batch_free(&a);
	batch_free(&b);
	gen_entries(f, &a, 20);
	CHECK(store_stage(f->s, a.e, a.n));
	assert_int_equal(store_sync_start(f->s), 1);
	CHECK(store_failover(f->s, 0));	/* waits for the flusher */
	check_point(f, 3, "failover after a sync behind the receiver");
	gen_entries(f, &b, 20);
	CHECK(store_stage(f->s, b.e, b.n));	/* staged */
	assert_int_equal(store_sync_poll(f->s, &held), 0);
	CHECK(store_stage_sync(f->s, &held));
	assert_int_equal(held, f->seq);
	CHECK(store_cancel(f->s));
	close_point(f, T0 + 3, "the point after staging while failed over");
	for (int d = 0; d < NDISKS; d++)
		free(after_a[d]);
	batch_free(&a);
	batch_free(&b);
	batch_free(&c);
	reopen(f);
	check_all_points(f, "after syncs behind the receiver");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_ahead, setup, teardown),
		cmocka_unit_test_setup_teardown(test_apply_error, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_ahead_bytes, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_ahead_chunks, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_log_point, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_log_after_ahead, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_log_sync_fail, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_log_apply_error, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_sync_behind, setup,
		    teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
