/*
 * test_journal.c: the primary's LMDB write journal (journal.h) and the
 * page-geometry helper kv_inline_len() (kv.h); its data log is in
 * test_jlog.c.  Every test works on a real LMDB environment in a mkdtemp
 * directory removed in teardown.
 */
#include "journal_fx.h"

/* ------------------------------------------------------------------ */
/* kv_inline_len: the value must fill whole overflow pages exactly */

static void
test_kv_inline_len(void **state)
{
	static const size_t lens[] = { 1, 512, 2047, 2048, 3000, 4079, 4080,
	    4081, 4096, 4097, 4336, 4337, 8192, 12288, 65536, 65537,
	    1u << 20, (1u << 20) + 100 };

	(void)state;
	for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
		size_t len = lens[i], inl = kv_inline_len(len);

		assert_true(inl <= KV_INLINE_MAX);
		assert_true(inl < len || inl == 0);
		if (inl) {
			/* the value then fills its pages exactly */
			assert_int_equal((len - inl + KV_OVHDR) % KV_PAGE, 0);
		}
	}
	assert_int_equal(kv_inline_len(512), 0);
	assert_int_equal(kv_inline_len(3000), 0);
	assert_int_equal(kv_inline_len(4096), 16);
	assert_int_equal(kv_inline_len(4097), 17);
	assert_int_equal(kv_inline_len(4096 * 3), 16);
	assert_int_equal(kv_inline_len(65536), 16);
	assert_int_equal(kv_inline_len(1u << 20), 16);
	assert_int_equal(kv_inline_len(4080), 0);
	assert_int_equal(kv_inline_len(4336), 256);
	assert_int_equal(kv_inline_len(4337), 0);
}

/* ------------------------------------------------------------------ */
/* append and read back, one group commit */

static const uint32_t sizes[] = { 512, 4096, 4096 * 3, 65536, 1u << 20,
    4097, 3000, 1, 2048, 4080, 4081, 4352, 4353, 8191 };
#define NSIZES (sizeof(sizes) / sizeof(sizes[0]))

static void
test_append_read(void **state)
{
	struct fx *f = *state;
	struct journal *j = f->j;
	uint8_t *bufs[NSIZES];
	uint64_t seq, id, pseq, total = 0, off = 0;
	struct recs *rs;

	assert_int_equal(journal_last_seq(j), 0);
	assert_int_equal(journal_first_seq(j), 0);
	assert_int_equal(journal_bytes(j), 0);
	assert_int_equal(journal_begin(j), 0);
	for (size_t i = 0; i < NSIZES; i++) {
		bufs[i] = pattern(sizes[i], i + 1);
		seq = append1(j, (uint32_t)(i % 3), off, sizes[i], bufs[i]);
		assert_int_equal(seq, i + 1);
		off += sizes[i] + 7;
		total += sizes[i];
	}
	seq = append1(j, 2, 123456789012ull, 1u << 20, NULL);	/* zeroes */
	assert_int_equal(seq, NSIZES + 1);
	assert_int_equal(journal_append_point(j, POINT_APP, "app-consistent",
	    1700000000123ll, &id, &pseq), 0);
	assert_int_equal(id, 1);
	assert_int_equal(pseq, NSIZES + 2);
	/* nothing is visible before the commit */
	assert_int_equal(journal_last_seq(j), 0);
	assert_int_equal(journal_commit(j), 0);
	assert_int_equal(journal_last_seq(j), NSIZES + 2);
	assert_int_equal(journal_first_seq(j), 1);
	assert_int_equal(journal_bytes(j), total);

	rs = read_all(j, 0);
	assert_int_equal(rs->n, NSIZES + 2);
	off = 0;
	for (size_t i = 0; i < NSIZES; i++) {
		struct rec *r = &rs->r[i];

		assert_int_equal(r->seq, i + 1);
		assert_int_equal(r->type, JE_WRITE);
		assert_int_equal(r->disk, i % 3);
		assert_int_equal(r->offset, off);
		assert_int_equal(r->length, sizes[i]);
		assert_memory_equal(r->data, bufs[i], sizes[i]);
		off += sizes[i] + 7;
	}
	assert_int_equal(rs->r[NSIZES].type, JE_ZERO);
	assert_int_equal(rs->r[NSIZES].disk, 2);
	assert_int_equal(rs->r[NSIZES].offset, 123456789012ull);
	assert_int_equal(rs->r[NSIZES].length, 1u << 20);
	assert_int_equal(rs->r[NSIZES + 1].type, JE_POINT);
	assert_int_equal(rs->r[NSIZES + 1].seq, NSIZES + 2);
	assert_int_equal(rs->r[NSIZES + 1].point_id, 1);
	assert_int_equal(rs->r[NSIZES + 1].time_ms, 1700000000123ll);
	assert_int_equal(rs->r[NSIZES + 1].kind, POINT_APP);
	assert_string_equal(rs->r[NSIZES + 1].label, "app-consistent");
	recs_free(rs);

	/* read from the middle */
	rs = read_all(j, 5);
	assert_int_equal(rs->n, NSIZES + 2 - 4);
	assert_int_equal(rs->r[0].seq, 5);
	assert_memory_equal(rs->r[0].data, bufs[4], sizes[4]);
	recs_free(rs);
	/* past the end */
	rs = read_all(j, NSIZES + 3);
	assert_int_equal(rs->n, 0);
	recs_free(rs);

	/* and the same after a reopen */
	reopen(f);
	j = f->j;
	assert_int_equal(journal_last_seq(j), NSIZES + 2);
	assert_int_equal(journal_bytes(j), total);
	rs = read_all(j, 1);
	assert_int_equal(rs->n, NSIZES + 2);
	for (size_t i = 0; i < NSIZES; i++) {
		assert_int_equal(rs->r[i].length, sizes[i]);
		assert_memory_equal(rs->r[i].data, bufs[i], sizes[i]);
	}
	recs_free(rs);
	for (size_t i = 0; i < NSIZES; i++)
		free(bufs[i]);
}

/* Many group commits, interleaved, each entry read back exactly. */
static void
test_many_commits(void **state)
{
	struct fx *f = *state;
	uint64_t s = 42, expect = 1;
	struct recs *rs;
	uint32_t lens[600];
	size_t n = 0;

	for (int c = 0; c < 60; c++) {
		assert_int_equal(journal_begin(f->j), 0);
		for (int k = 0; k < 10; k++) {
			uint32_t len = (uint32_t)(rnd(&s) % 20000) + 1;
			uint8_t *b;

			if (rnd(&s) % 4 == 0)
				len = (uint32_t)(1 + rnd(&s) % 4) * 4096;
			b = pattern(len, n + 1000);
			assert_int_equal(append1(f->j, 0, n * 4096, len, b),
			    expect++);
			lens[n++] = len;
			free(b);
		}
		assert_int_equal(journal_commit(f->j), 0);
	}
	rs = read_all(f->j, 0);
	assert_int_equal(rs->n, n);
	for (size_t i = 0; i < n; i++) {
		uint8_t *b = pattern(lens[i], i + 1000);

		assert_int_equal(rs->r[i].seq, i + 1);
		assert_int_equal(rs->r[i].length, lens[i]);
		assert_int_equal(rs->r[i].offset, i * 4096);
		assert_memory_equal(rs->r[i].data, b, lens[i]);
		free(b);
	}
	recs_free(rs);
}

/* ------------------------------------------------------------------ */
/* abort */

static void
test_abort(void **state)
{
	struct fx *f = *state;
	uint8_t *b = pattern(4096, 7);
	uint64_t id, pseq;
	struct recs *rs;

	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(append1(f->j, 0, 0, 4096, b), 1);
	assert_int_equal(append1(f->j, 0, 4096, 4096, b), 2);
	assert_int_equal(journal_append_point(f->j, POINT_CRASH, "p1", 1,
	    &id, &pseq), 0);
	assert_int_equal(id, 1);
	assert_int_equal(pseq, 3);
	assert_int_equal(journal_commit(f->j), 0);
	assert_int_equal(journal_bytes(f->j), 8192);

	/* an aborted txn: its entries vanish, its seqs and ids are reused */
	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(append1(f->j, 1, 0, 4096, b), 4);
	assert_int_equal(append1(f->j, 1, 0, 100, NULL), 5);
	assert_int_equal(journal_append_point(f->j, POINT_CRASH, "gone", 2,
	    &id, &pseq), 0);
	assert_int_equal(id, 2);
	assert_int_equal(journal_set(f->j, JM_ACKED, 99), 0);
	journal_abort(f->j);
	assert_int_equal(journal_last_seq(f->j), 3);
	assert_int_equal(journal_bytes(f->j), 8192);
	assert_int_equal(journal_get(f->j, JM_ACKED), 0);
	assert_int_equal(journal_get(f->j, JM_LAST_POINT), 1);
	assert_int_equal(journal_find_point(f->j, 2, &(struct jentry){0}), 0);
	rs = read_all(f->j, 0);
	assert_int_equal(rs->n, 3);
	assert_int_equal(rs->r[2].seq, 3);
	recs_free(rs);

	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(append1(f->j, 1, 8192, 4096, b), 4);
	assert_int_equal(journal_append_point(f->j, POINT_RESUMABLE, "p2", 3,
	    &id, &pseq), 0);
	assert_int_equal(id, 2);
	assert_int_equal(pseq, 5);
	assert_int_equal(journal_commit(f->j), 0);
	rs = read_all(f->j, 4);
	assert_int_equal(rs->n, 2);
	assert_int_equal(rs->r[0].disk, 1);
	assert_int_equal(rs->r[0].offset, 8192);
	assert_memory_equal(rs->r[0].data, b, 4096);
	assert_string_equal(rs->r[1].label, "p2");
	recs_free(rs);

	/* committed seqs are never handed out again */
	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(append1(f->j, 0, 0, 1, b), 6);
	journal_abort(f->j);
	reopen(f);
	assert_int_equal(journal_last_seq(f->j), 5);
	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(append1(f->j, 0, 0, 1, b), 6);
	assert_int_equal(journal_commit(f->j), 0);
	free(b);
}

/* Closing with a transaction open drops it. */
static void
test_close_open_txn(void **state)
{
	struct fx *f = *state;
	uint8_t b[10] = "abcdefghi";

	assert_int_equal(journal_begin(f->j), 0);
	append1(f->j, 0, 0, 10, b);
	assert_int_equal(journal_commit(f->j), 0);
	assert_int_equal(journal_begin(f->j), 0);
	append1(f->j, 0, 0, 10, b);
	reopen(f);
	assert_int_equal(journal_last_seq(f->j), 1);
	assert_int_equal(journal_bytes(f->j), 10);
}

/* ------------------------------------------------------------------ */
/* reopen keeps everything */

static void
test_reopen(void **state)
{
	struct fx *f = *state;
	uint64_t epoch = journal_get(f->j, JM_EPOCH), id, pseq;
	uint8_t *b = pattern(12288, 3);
	struct recs *rs;

	assert_int_not_equal(epoch, 0);
	assert_int_equal(journal_begin(f->j), 0);
	append1(f->j, 0, 0, 12288, b);
	append1(f->j, 1, 4096, 4097, b);
	assert_int_equal(journal_append_point(f->j, POINT_CRASH, NULL, 77,
	    &id, &pseq), 0);
	assert_int_equal(journal_set(f->j, JM_ACKED, 2), 0);
	assert_int_equal(journal_set(f->j, JM_SYNCED, 1), 0);
	assert_int_equal(journal_commit(f->j), 0);
	assert_int_equal(journal_sync(f->j), 0);
	reopen(f);
	assert_int_equal(journal_get(f->j, JM_EPOCH), epoch);
	assert_int_equal(journal_get(f->j, JM_ACKED), 2);
	assert_int_equal(journal_get(f->j, JM_SYNCED), 1);
	assert_int_equal(journal_get(f->j, JM_LAST_POINT), 1);
	assert_int_equal(journal_get(f->j, "no-such-counter"), 0);
	assert_int_equal(journal_last_seq(f->j), 3);
	assert_int_equal(journal_first_seq(f->j), 1);
	assert_int_equal(journal_bytes(f->j), 12288 + 4097);
	rs = read_all(f->j, 0);
	assert_int_equal(rs->n, 3);
	assert_memory_equal(rs->r[0].data, b, 12288);
	assert_int_equal(rs->r[1].length, 4097);
	assert_memory_equal(rs->r[1].data, b, 4097);
	assert_int_equal(rs->r[2].type, JE_POINT);
	assert_int_equal(rs->r[2].time_ms, 77);
	assert_string_equal(rs->r[2].label, "");
	recs_free(rs);
	/* a second journal in another directory has another epoch */
	{
		char d2[160], err[256];
		struct journal *j2;

		snprintf(d2, sizeof(d2), "%s/j2", f->dir);
		j2 = journal_open(d2, err, sizeof(err));
		assert_non_null(j2);
		assert_int_not_equal(journal_get(j2, JM_EPOCH), epoch);
		assert_int_equal(journal_last_seq(j2), 0);
		journal_close(j2);
	}
	free(b);
}

static void
test_open_error(void **state)
{
	struct fx *f = *state;
	char path[160], err[256] = "";
	FILE *fp;

	/* a plain file where the directory should be */
	snprintf(path, sizeof(path), "%s/file", f->dir);
	fp = fopen(path, "w");
	assert_non_null(fp);
	fclose(fp);
	assert_null(journal_open(path, err, sizeof(err)));
	assert_true(strlen(err) > 0);
	assert_non_null(strstr(err, path));
}

/* ------------------------------------------------------------------ */
/* trim */

static void
test_trim(void **state)
{
	struct fx *f = *state;
	uint8_t *b = pattern(65536, 9);
	uint64_t bytes = 0, sizes_of[21] = { 0 };
	struct recs *rs;

	assert_int_equal(journal_begin(f->j), 0);
	for (uint64_t i = 1; i <= 20; i++) {
		uint32_t len = (uint32_t)(i * 3001 % 65536);

		if (i % 5 == 0) {
			append1(f->j, 0, i, 4096, NULL);
			continue;
		}
		append1(f->j, 0, i * 65536, len, b);
		sizes_of[i] = len;
		bytes += len;
	}
	assert_int_equal(journal_commit(f->j), 0);
	assert_int_equal(journal_bytes(f->j), bytes);

	assert_int_equal(journal_trim(f->j, 0), 0);
	assert_int_equal(journal_bytes(f->j), bytes);
	assert_int_equal(journal_trim(f->j, 7), 7);
	for (int i = 1; i <= 7; i++)
		bytes -= sizes_of[i];
	assert_int_equal(journal_bytes(f->j), bytes);
	assert_int_equal(journal_first_seq(f->j), 8);
	assert_int_equal(journal_last_seq(f->j), 20);
	rs = read_all(f->j, 0);
	assert_int_equal(rs->n, 13);
	assert_int_equal(rs->r[0].seq, 8);
	assert_memory_equal(rs->r[0].data, b, sizes_of[8]);
	recs_free(rs);
	/* trimming again below what is held does nothing */
	assert_int_equal(journal_trim(f->j, 7), 0);
	assert_int_equal(journal_bytes(f->j), bytes);

	/* trim everything; the applied mark keeps sequences going */
	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(journal_set(f->j, JM_APPLIED, 20), 0);
	assert_int_equal(journal_commit(f->j), 0);
	assert_int_equal(journal_trim(f->j, UINT64_MAX), 13);
	assert_int_equal(journal_bytes(f->j), 0);
	assert_int_equal(journal_first_seq(f->j), 0);
	rs = read_all(f->j, 0);
	assert_int_equal(rs->n, 0);
	recs_free(rs);
	/* same session */
	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(append1(f->j, 0, 0, 10, b), 21);
	assert_int_equal(journal_commit(f->j), 0);
	assert_int_equal(journal_trim(f->j, 21), 1);
	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(journal_set(f->j, JM_APPLIED, 21), 0);
	assert_int_equal(journal_commit(f->j), 0);
	/* and after a reopen */
	reopen(f);
	assert_int_equal(journal_last_seq(f->j), 21);
	assert_int_equal(journal_first_seq(f->j), 0);
	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(append1(f->j, 0, 0, 4096, b), 22);
	assert_int_equal(journal_commit(f->j), 0);
	assert_int_equal(journal_bytes(f->j), 4096);
	rs = read_all(f->j, 0);
	assert_int_equal(rs->n, 1);
	assert_int_equal(rs->r[0].seq, 22);
	assert_memory_equal(rs->r[0].data, b, 4096);
	recs_free(rs);
	free(b);
}

/* ------------------------------------------------------------------ */
/* journal_put: the DR stage keeps the primary's numbers */

static void
test_put(void **state)
{
	struct fx *f = *state;
	uint8_t *b = pattern(8192, 11);
	struct jentry e;
	struct jentry pt;
	struct recs *rs;
	uint64_t id, pseq;

	assert_int_equal(journal_begin(f->j), 0);
	memset(&e, 0, sizeof(e));
	e.type = JE_WRITE;
	e.seq = 10;
	e.disk = 3;
	e.offset = 4096;
	e.length = 8192;
	e.data = b;
	assert_int_equal(journal_put(f->j, &e), 0);
	e.seq = 20;
	e.type = JE_ZERO;
	e.data = NULL;
	e.length = 512;
	assert_int_equal(journal_put(f->j, &e), 0);
	memset(&pt, 0, sizeof(pt));
	pt.type = JE_POINT;
	pt.seq = 21;
	pt.point_id = 7;
	pt.time_ms = 123456;
	pt.kind = POINT_RESUMABLE;
	pt.length = 8192;	/* bytes of the interval */
	strcpy(pt.label, "from primary");
	assert_int_equal(journal_put(f->j, &pt), 0);
	assert_int_equal(journal_commit(f->j), 0);
	assert_int_equal(journal_last_seq(f->j), 21);

	/* out of order and repeated seqs are refused */
	assert_int_equal(journal_begin(f->j), 0);
	e.seq = 15;
	assert_int_equal(journal_put(f->j, &e), -1);
	assert_non_null(strstr(journal_error(f->j), "order"));
	e.seq = 21;
	assert_int_equal(journal_put(f->j, &e), -1);
	assert_non_null(strstr(journal_error(f->j), "order"));
	journal_abort(f->j);
	e.type = (enum jentry_type)9;
	e.seq = 30;
	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(journal_put(f->j, &e), -1);
	journal_abort(f->j);

	rs = read_all(f->j, 0);
	assert_int_equal(rs->n, 3);
	assert_int_equal(rs->r[0].seq, 10);
	assert_int_equal(rs->r[0].disk, 3);
	assert_int_equal(rs->r[0].offset, 4096);
	assert_memory_equal(rs->r[0].data, b, 8192);
	assert_int_equal(rs->r[1].seq, 20);
	assert_int_equal(rs->r[1].type, JE_ZERO);
	assert_int_equal(rs->r[1].length, 512);
	assert_int_equal(rs->r[2].seq, 21);
	assert_int_equal(rs->r[2].point_id, 7);
	assert_int_equal(rs->r[2].time_ms, 123456);
	assert_int_equal(rs->r[2].kind, POINT_RESUMABLE);
	assert_string_equal(rs->r[2].label, "from primary");
	recs_free(rs);
	rs = read_all(f->j, 11);	/* a gap: starts at the next held */
	assert_int_equal(rs->n, 2);
	assert_int_equal(rs->r[0].seq, 20);
	recs_free(rs);

	memset(&e, 0, sizeof(e));
	assert_int_equal(journal_find_point(f->j, 7, &e), 1);
	assert_int_equal(e.seq, 21);
	assert_int_equal(e.length, 8192);
	assert_int_equal(e.kind, POINT_RESUMABLE);
	assert_string_equal(e.label, "from primary");
	assert_int_equal(journal_get(f->j, JM_LAST_POINT), 7);

	/* appends continue after the put numbers */
	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(append1(f->j, 0, 0, 1, b), 22);
	assert_int_equal(journal_append_point(f->j, POINT_CRASH, "x", 5, &id,
	    &pseq), 0);
	assert_int_equal(id, 8);
	assert_int_equal(pseq, 23);
	assert_int_equal(journal_commit(f->j), 0);
	reopen(f);
	assert_int_equal(journal_last_seq(f->j), 23);
	free(b);
}

/* ------------------------------------------------------------------ */
/* points */

static void
test_points(void **state)
{
	struct fx *f = *state;
	uint8_t *b = pattern(65536, 5);
	char longlabel[400];
	uint64_t id, pseq, seqs[4];
	struct recs *rs;
	struct jentry e;

	memset(longlabel, 'L', sizeof(longlabel) - 1);
	longlabel[sizeof(longlabel) - 1] = '\0';
	assert_int_equal(journal_begin(f->j), 0);
	append1(f->j, 0, 0, 4096, b);
	append1(f->j, 0, 0, 1000, b);
	append1(f->j, 0, 0, 4096, NULL);	/* zeroes are not bytes */
	assert_int_equal(journal_append_point(f->j, POINT_CRASH, "one", 1000,
	    &id, &seqs[0]), 0);
	assert_int_equal(id, 1);
	assert_int_equal(journal_commit(f->j), 0);
	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(journal_append_point(f->j, POINT_APP, "", 2000,
	    &id, &seqs[1]), 0);
	assert_int_equal(id, 2);
	append1(f->j, 1, 0, 65536, b);
	assert_int_equal(journal_append_point(f->j, POINT_RESUMABLE,
	    longlabel, 3000, &id, &seqs[2]), 0);
	assert_int_equal(id, 3);
	assert_int_equal(journal_commit(f->j), 0);
	assert_int_equal(journal_get(f->j, JM_LAST_POINT), 3);

	rs = recs_new();
	assert_int_equal(journal_points(f->j, collect, rs), 0);
	assert_int_equal(rs->n, 3);
	assert_int_equal(rs->r[0].point_id, 1);
	assert_int_equal(rs->r[0].seq, seqs[0]);
	assert_int_equal(rs->r[0].length, 5096);
	assert_int_equal(rs->r[0].time_ms, 1000);
	assert_int_equal(rs->r[0].kind, POINT_CRASH);
	assert_string_equal(rs->r[0].label, "one");
	assert_int_equal(rs->r[1].point_id, 2);
	assert_int_equal(rs->r[1].length, 0);
	assert_int_equal(rs->r[1].kind, POINT_APP);
	assert_string_equal(rs->r[1].label, "");
	assert_int_equal(rs->r[2].point_id, 3);
	assert_int_equal(rs->r[2].seq, seqs[2]);
	assert_int_equal(rs->r[2].length, 65536);
	assert_int_equal(strlen(rs->r[2].label), JOURNAL_LABEL_MAX);
	assert_memory_equal(rs->r[2].label, longlabel, JOURNAL_LABEL_MAX);
	recs_free(rs);

	/* stop early */
	rs = recs_new();
	rs->stop_after = 1;
	assert_int_equal(journal_points(f->j, collect, rs), 0);
	assert_int_equal(rs->n, 1);
	recs_free(rs);

	memset(&e, 0xff, sizeof(e));
	assert_int_equal(journal_find_point(f->j, 2, &e), 1);
	assert_int_equal(e.type, JE_POINT);
	assert_int_equal(e.point_id, 2);
	assert_int_equal(e.seq, seqs[1]);
	assert_int_equal(e.time_ms, 2000);
	assert_string_equal(e.label, "");
	assert_int_equal(journal_find_point(f->j, 4, &e), 0);
	assert_int_equal(journal_find_point(f->j, 0, &e), 0);

	/* point history outlives the trim of the log */
	assert_int_equal(journal_trim(f->j, seqs[2]), 7);
	assert_int_equal(journal_find_point(f->j, 1, &e), 1);
	assert_int_equal(e.seq, seqs[0]);
	assert_int_equal(journal_forget_points(f->j, 3), 0);
	assert_int_equal(journal_find_point(f->j, 1, &e), 0);
	assert_int_equal(journal_find_point(f->j, 2, &e), 0);
	assert_int_equal(journal_find_point(f->j, 3, &e), 1);
	rs = recs_new();
	assert_int_equal(journal_points(f->j, collect, rs), 0);
	assert_int_equal(rs->n, 1);
	assert_int_equal(rs->r[0].point_id, 3);
	recs_free(rs);
	/* ids keep counting */
	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(journal_append_point(f->j, POINT_CRASH, "z", 4000,
	    &id, &pseq), 0);
	assert_int_equal(id, 4);
	assert_int_equal(journal_commit(f->j), 0);
	free(b);
}

/* ------------------------------------------------------------------ */
/* reset */

static void
test_reset(void **state)
{
	struct fx *f = *state;
	uint8_t *b = pattern(4096, 1);
	uint64_t id, pseq;
	struct recs *rs;
	struct jentry e;

	assert_int_equal(journal_begin(f->j), 0);
	for (int i = 0; i < 5; i++)
		append1(f->j, 0, 0, 4096, b);
	assert_int_equal(journal_append_point(f->j, POINT_CRASH, "a", 1, &id,
	    &pseq), 0);
	assert_int_equal(journal_set(f->j, JM_APPLIED, 6), 0);
	assert_int_equal(journal_commit(f->j), 0);

	assert_int_equal(journal_reset(f->j), 0);
	assert_int_equal(journal_last_seq(f->j), 0);
	assert_int_equal(journal_first_seq(f->j), 0);
	assert_int_equal(journal_bytes(f->j), 0);
	assert_int_equal(journal_get(f->j, JM_APPLIED), 0);
	assert_int_equal(journal_get(f->j, JM_LAST_POINT), 0);
	assert_int_equal(journal_find_point(f->j, 1, &e), 0);
	rs = read_all(f->j, 0);
	assert_int_equal(rs->n, 0);
	recs_free(rs);
	rs = recs_new();
	assert_int_equal(journal_points(f->j, collect, rs), 0);
	assert_int_equal(rs->n, 0);
	recs_free(rs);

	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(append1(f->j, 0, 0, 4096, b), 1);
	assert_int_equal(journal_append_point(f->j, POINT_CRASH, "b", 2, &id,
	    &pseq), 0);
	assert_int_equal(id, 1);
	assert_int_equal(pseq, 2);
	assert_int_equal(journal_commit(f->j), 0);
	reopen(f);
	assert_int_equal(journal_last_seq(f->j), 2);
	assert_int_equal(journal_bytes(f->j), 4096);
	free(b);
}

/* ------------------------------------------------------------------ */
/* max_bytes and early stop in journal_read */

static void
test_read_limits(void **state)
{
	struct fx *f = *state;
	uint8_t *b = pattern(65536, 2);
	struct recs *rs;
	int n;

	assert_int_equal(journal_begin(f->j), 0);
	append1(f->j, 0, 0, 65536, b);		/* 1 */
	append1(f->j, 0, 0, 4096, NULL);	/* 2 */
	append1(f->j, 0, 0, 4096, b);		/* 3 */
	append1(f->j, 0, 0, 4096, b);		/* 4 */
	append1(f->j, 0, 0, 4096, b);		/* 5 */
	assert_int_equal(journal_commit(f->j), 0);

	/* a limit smaller than the first entry still passes it */
	rs = recs_new();
	n = journal_read(f->j, 0, 1, collect, rs);
	assert_int_equal(n, 1);
	assert_int_equal(rs->n, 1);
	assert_memory_equal(rs->r[0].data, b, 65536);
	recs_free(rs);
	rs = recs_new();
	n = journal_read(f->j, 0, 0, collect, rs);
	assert_int_equal(n, 1);
	recs_free(rs);
	/* stops once the limit is reached: 4096 + 4096 from seq 2 */
	rs = recs_new();
	n = journal_read(f->j, 2, 8192, collect, rs);
	assert_int_equal(n, 3);
	assert_int_equal(rs->r[0].seq, 2);
	assert_int_equal(rs->r[2].seq, 4);
	recs_free(rs);
	/* the callback stops it */
	rs = recs_new();
	rs->stop_after = 2;
	n = journal_read(f->j, 0, SIZE_MAX, collect, rs);
	assert_int_equal(n, 2);
	assert_int_equal(rs->n, 2);
	recs_free(rs);
	free(b);
}

/* Transactions: appending outside begin is refused, commit without begin
 * is harmless. */
static void
test_txn_misuse(void **state)
{
	struct fx *f = *state;
	uint64_t seq, id;
	uint8_t b[4] = { 1, 2, 3, 4 };

	assert_int_equal(journal_append(f->j, 0, 0, 4, b, &seq), -1);
	assert_true(strlen(journal_error(f->j)) > 0);
	assert_int_equal(journal_append_point(f->j, POINT_CRASH, "x", 0, &id,
	    &seq), -1);
	assert_int_equal(journal_set(f->j, JM_ACKED, 1), -1);
	assert_int_equal(journal_commit(f->j), 0);
	assert_int_equal(journal_last_seq(f->j), 0);
	/* begin twice is one transaction */
	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(append1(f->j, 0, 0, 4, b), 1);
	assert_int_equal(journal_commit(f->j), 0);
	assert_int_equal(journal_last_seq(f->j), 1);
}

/* ------------------------------------------------------------------ */
/* the dirty map */

#define CHUNK_5G ((5ull << 30) / JOURNAL_CHUNK)	/* 81920 */

struct dpos {
	uint32_t disk;
	uint64_t chunk;
};

/* Every dirty chunk from (0, 0), stepping one chunk past each find. */
static size_t
walk_dirty(struct journal *j, struct dpos *out, size_t max)
{
	uint32_t disk = 0;
	uint64_t chunk = 0;
	size_t n = 0;
	int rc;

	while ((rc = journal_next_dirty(j, &disk, &chunk)) == 1) {
		assert_true(n < max);
		out[n].disk = disk;
		out[n].chunk = chunk;
		n++;
		chunk++;
	}
	if (rc != 0)
		fail_msg("journal_next_dirty: %s", journal_error(j));
	return n;
}

/* A single journal_next_dirty from (disk, chunk); returns its result. */
static int
next_from(struct journal *j, uint32_t disk, uint64_t chunk, uint32_t *od,
    uint64_t *oc)
{
	int rc;

	*od = disk;
	*oc = chunk;
	rc = journal_next_dirty(j, od, oc);
	if (rc < 0)
		fail_msg("journal_next_dirty: %s", journal_error(j));
	return rc;
}

static void
mark3(struct journal *j)
{
	assert_int_equal(journal_mark_dirty(j, 0, 100, 1), 0);
	/* the last byte of chunk 2 and the first of chunk 3 */
	assert_int_equal(journal_mark_dirty(j, 0, 3 * JOURNAL_CHUNK - 1, 2),
	    0);
	assert_int_equal(journal_mark_dirty(j, 1, 5ull << 30, JOURNAL_CHUNK),
	    0);
}

/* The walk of the map mark3() makes. */
static void
check_mark3(struct journal *j)
{
	static const struct dpos want[] = { { 0, 0 }, { 0, 2 }, { 0, 3 },
	    { 1, CHUNK_5G } };
	struct dpos got[16];
	size_t n = walk_dirty(j, got, 16);
	uint32_t d;
	uint64_t c;

	assert_int_equal(journal_dirty_chunks(j), 4);
	assert_int_equal(n, 4);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(got[i].disk, want[i].disk);
		assert_int_equal(got[i].chunk, want[i].chunk);
	}
	assert_int_equal(next_from(j, 0, 1, &d, &c), 1);
	assert_int_equal(d, 0);
	assert_int_equal(c, 2);
	assert_int_equal(next_from(j, 0, 4, &d, &c), 1);
	assert_int_equal(d, 1);
	assert_int_equal(c, CHUNK_5G);
	/* a chunk in a later record of disk 0 than any it has */
	assert_int_equal(next_from(j, 0, 4096 * 3 + 7, &d, &c), 1);
	assert_int_equal(d, 1);
	assert_int_equal(c, CHUNK_5G);
	assert_int_equal(next_from(j, 1, 0, &d, &c), 1);
	assert_int_equal(d, 1);
	assert_int_equal(c, CHUNK_5G);
	assert_int_equal(next_from(j, 1, CHUNK_5G + 1, &d, &c), 0);
	assert_int_equal(next_from(j, 2, 0, &d, &c), 0);
}

static void
test_dirty_mark(void **state)
{
	struct fx *f = *state;
	uint32_t d;
	uint64_t c;

	assert_int_equal(journal_dirty_chunks(f->j), 0);
	assert_int_equal(next_from(f->j, 0, 0, &d, &c), 0);
	assert_int_equal(journal_begin(f->j), 0);
	mark3(f->j);
	assert_int_equal(journal_mark_dirty(f->j, 0, 12345, 0), 0); /* none */
	/* nothing is counted before the commit */
	assert_int_equal(journal_dirty_chunks(f->j), 0);
	assert_int_equal(journal_commit(f->j), 0);
	check_mark3(f->j);

	/* the same ranges again set no new bits */
	assert_int_equal(journal_begin(f->j), 0);
	mark3(f->j);
	assert_int_equal(journal_mark_dirty(f->j, 0, 2 * JOURNAL_CHUNK,
	    2 * JOURNAL_CHUNK), 0);
	assert_int_equal(journal_commit(f->j), 0);
	check_mark3(f->j);

	/* marks need a transaction */
	assert_int_equal(journal_mark_dirty(f->j, 0, 0, 1), -1);
	assert_true(strlen(journal_error(f->j)) > 0);
	assert_int_equal(journal_clear_dirty(f->j), -1);
	check_mark3(f->j);
}

static void
test_dirty_persist_abort(void **state)
{
	struct fx *f = *state;

	assert_int_equal(journal_begin(f->j), 0);
	mark3(f->j);
	assert_int_equal(journal_commit(f->j), 0);
	check_mark3(f->j);
	reopen(f);
	check_mark3(f->j);

	/* an aborted transaction's marks are not kept */
	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(journal_mark_dirty(f->j, 0, 10 * JOURNAL_CHUNK,
	    3 * JOURNAL_CHUNK), 0);
	assert_int_equal(journal_mark_dirty(f->j, 7, 0, 1), 0);
	journal_abort(f->j);
	check_mark3(f->j);
	/* nor is an aborted clear */
	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(journal_clear_dirty(f->j), 0);
	journal_abort(f->j);
	check_mark3(f->j);
	/* and a later commit does not pick any of them up */
	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(journal_set(f->j, JM_ACKED, 1), 0);
	assert_int_equal(journal_commit(f->j), 0);
	check_mark3(f->j);
	reopen(f);
	check_mark3(f->j);
}

/* Runs of dirty chunks: capped by max, ended by a clean chunk or a map
 * record's end (the next call goes on), and the walk by runs covers every
 * chunk exactly once. */
static void
test_dirty_run(void **state)
{
	struct fx *f = *state;
	uint32_t d = 0, run = 0;
	uint64_t c = 0, seen = 0;

	assert_int_equal(journal_begin(f->j), 0);
	/* chunks 4090..4105 of disk 0 cross the first record (4096 bits) */
	assert_int_equal(journal_mark_dirty(f->j, 0, 4090ull * JOURNAL_CHUNK,
	    16ull * JOURNAL_CHUNK), 0);
	assert_int_equal(journal_mark_dirty(f->j, 0, 5000ull * JOURNAL_CHUNK,
	    40ull * JOURNAL_CHUNK), 0);
	assert_int_equal(journal_commit(f->j), 0);
	assert_int_equal(journal_dirty_run(f->j, &d, &c, &run, 100), 1);
	assert_int_equal(d, 0);
	assert_int_equal(c, 4090);
	assert_int_equal(run, 6);	/* to the end of the record */
	c += run;
	assert_int_equal(journal_dirty_run(f->j, &d, &c, &run, 100), 1);
	assert_int_equal(c, 4096);
	assert_int_equal(run, 10);
	c += run;
	assert_int_equal(journal_dirty_run(f->j, &d, &c, &run, 16), 1);
	assert_int_equal(c, 5000);
	assert_int_equal(run, 16);	/* max */
	/* from the middle of a run */
	c = 5030;
	assert_int_equal(journal_dirty_run(f->j, &d, &c, &run, 100), 1);
	assert_int_equal(c, 5030);
	assert_int_equal(run, 10);
	c += run;
	assert_int_equal(journal_dirty_run(f->j, &d, &c, &run, 100), 0);
	/* the whole walk */
	d = 0;
	c = 0;
	while (journal_dirty_run(f->j, &d, &c, &run, 7) == 1) {
		assert_true(run >= 1 && run <= 7);
		seen += run;
		c += run;
	}
	assert_int_equal(seen, 56);
	assert_int_equal(journal_dirty_chunks(f->j), 56);
}

static void
test_dirty_clear(void **state)
{
	struct fx *f = *state;
	struct dpos got[16];
	uint32_t d;
	uint64_t c;

	assert_int_equal(journal_begin(f->j), 0);
	mark3(f->j);
	assert_int_equal(journal_commit(f->j), 0);
	check_mark3(f->j);

	/* clear, then mark in the same transaction (one already set before
	 * the clear: it must count again) */
	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(journal_mark_dirty(f->j, 0, 8 * JOURNAL_CHUNK, 1),
	    0);
	assert_int_equal(journal_clear_dirty(f->j), 0);
	assert_int_equal(journal_mark_dirty(f->j, 0, 2 * JOURNAL_CHUNK + 5,
	    10), 0);
	assert_int_equal(journal_dirty_chunks(f->j), 4);	/* not yet */
	assert_int_equal(journal_commit(f->j), 0);
	assert_int_equal(journal_dirty_chunks(f->j), 1);
	assert_int_equal(walk_dirty(f->j, got, 16), 1);
	assert_int_equal(got[0].disk, 0);
	assert_int_equal(got[0].chunk, 2);
	assert_int_equal(next_from(f->j, 0, 3, &d, &c), 0);
	reopen(f);
	assert_int_equal(journal_dirty_chunks(f->j), 1);
	assert_int_equal(walk_dirty(f->j, got, 16), 1);
	assert_int_equal(got[0].disk, 0);
	assert_int_equal(got[0].chunk, 2);

	/* a clear alone empties it, also after a reopen */
	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(journal_clear_dirty(f->j), 0);
	assert_int_equal(journal_commit(f->j), 0);
	assert_int_equal(journal_dirty_chunks(f->j), 0);
	assert_int_equal(walk_dirty(f->j, got, 16), 0);
	reopen(f);
	assert_int_equal(journal_dirty_chunks(f->j), 0);
	assert_int_equal(walk_dirty(f->j, got, 16), 0);
	/* and counting starts again from zero */
	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(journal_mark_dirty(f->j, 3, 0, 2 * JOURNAL_CHUNK),
	    0);
	assert_int_equal(journal_commit(f->j), 0);
	assert_int_equal(journal_dirty_chunks(f->j), 2);
	reopen(f);
	assert_int_equal(journal_dirty_chunks(f->j), 2);
}

/* ------------------------------------------------------------------ */
/* journal_reserve: sequences without entries */

static void
test_reserve(void **state)
{
	struct fx *f = *state;
	uint8_t *b = pattern(4096, 21);
	uint64_t first = 0;
	struct recs *rs;

	/* reserve needs a transaction */
	assert_int_equal(journal_reserve(f->j, 1, &first), -1);

	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(append1(f->j, 0, 0, 4096, b), 1);
	assert_int_equal(append1(f->j, 0, 4096, 4096, b), 2);
	assert_int_equal(append1(f->j, 0, 8192, 4096, b), 3);
	assert_int_equal(journal_reserve(f->j, 10, &first), 0);
	assert_int_equal(first, 4);
	assert_int_equal(journal_last_seq(f->j), 0);
	assert_int_equal(journal_commit(f->j), 0);
	assert_int_equal(journal_last_seq(f->j), 13);
	assert_int_equal(journal_get(f->j, JM_SEQ_FLOOR), 13);
	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(append1(f->j, 0, 0, 4096, b), 14);
	assert_int_equal(journal_commit(f->j), 0);
	rs = read_all(f->j, 0);
	assert_int_equal(rs->n, 4);
	assert_int_equal(rs->r[2].seq, 3);
	assert_int_equal(rs->r[3].seq, 14);
	recs_free(rs);
	reopen(f);
	assert_int_equal(journal_last_seq(f->j), 14);

	/* an aborted reservation is not kept */
	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(journal_reserve(f->j, 100, &first), 0);
	assert_int_equal(first, 15);
	journal_abort(f->j);
	assert_int_equal(journal_last_seq(f->j), 14);
	assert_int_equal(journal_get(f->j, JM_SEQ_FLOOR), 13);
	reopen(f);
	assert_int_equal(journal_last_seq(f->j), 14);

	/* a reservation last in the journal survives a reopen */
	{
		char d2[160], err[256] = "";
		struct journal *j2;

		snprintf(d2, sizeof(d2), "%s/j2", f->dir);
		j2 = journal_open(d2, err, sizeof(err));
		if (j2 == NULL)
			fail_msg("journal_open %s: %s", d2, err);
		assert_int_equal(journal_begin(j2), 0);
		assert_int_equal(append1(j2, 0, 0, 4096, b), 1);
		assert_int_equal(append1(j2, 0, 0, 4096, b), 2);
		assert_int_equal(append1(j2, 0, 0, 4096, b), 3);
		assert_int_equal(journal_commit(j2), 0);
		assert_int_equal(journal_begin(j2), 0);
		assert_int_equal(journal_reserve(j2, 10, &first), 0);
		assert_int_equal(first, 4);
		assert_int_equal(journal_commit(j2), 0);
		assert_int_equal(journal_last_seq(j2), 13);
		journal_close(j2);
		j2 = journal_open(d2, err, sizeof(err));
		if (j2 == NULL)
			fail_msg("journal_open %s: %s", d2, err);
		assert_int_equal(journal_last_seq(j2), 13);
		assert_int_equal(journal_first_seq(j2), 1);
		/* even with the log trimmed empty */
		assert_int_equal(journal_trim(j2, UINT64_MAX), 3);
		journal_close(j2);
		j2 = journal_open(d2, err, sizeof(err));
		if (j2 == NULL)
			fail_msg("journal_open %s: %s", d2, err);
		assert_int_equal(journal_last_seq(j2), 13);
		assert_int_equal(journal_begin(j2), 0);
		assert_int_equal(append1(j2, 0, 0, 4096, b), 14);
		assert_int_equal(journal_commit(j2), 0);
		journal_close(j2);
	}
	free(b);
}

/* ------------------------------------------------------------------ */
/* journal_bytes is a cached counter; journal_pending_bytes the open txn */

static void
test_bytes_counter(void **state)
{
	struct fx *f = *state;
	uint8_t *b = pattern(4096, 31);

	assert_int_equal(journal_pending_bytes(f->j), 0);
	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(append1(f->j, 0, 0, 4096, b), 1);
	assert_int_equal(append1(f->j, 0, 4096, 4096, b), 2);
	append1(f->j, 0, 0, 65536, NULL);	/* zeroes are not bytes */
	assert_int_equal(journal_pending_bytes(f->j), 8192);
	assert_int_equal(journal_bytes(f->j), 0);
	assert_int_equal(journal_commit(f->j), 0);
	assert_int_equal(journal_bytes(f->j), 8192);
	assert_int_equal(journal_pending_bytes(f->j), 0);

	assert_int_equal(journal_trim(f->j, 1), 1);
	assert_int_equal(journal_bytes(f->j), 4096);
	reopen(f);
	assert_int_equal(journal_bytes(f->j), 4096);

	/* an aborted append leaves both alone */
	assert_int_equal(journal_begin(f->j), 0);
	append1(f->j, 0, 0, 4096, b);
	assert_int_equal(journal_pending_bytes(f->j), 4096);
	journal_abort(f->j);
	assert_int_equal(journal_pending_bytes(f->j), 0);
	assert_int_equal(journal_bytes(f->j), 4096);
	reopen(f);
	assert_int_equal(journal_bytes(f->j), 4096);
	assert_int_equal(journal_trim(f->j, UINT64_MAX), 2);
	assert_int_equal(journal_bytes(f->j), 0);
	reopen(f);
	assert_int_equal(journal_bytes(f->j), 0);
	free(b);
}

/* ------------------------------------------------------------------ */
/* placed entries: the range only; journal_convert gives one its data */

static void
test_placed(void **state)
{
	struct fx *f = *state;
	uint8_t *b = pattern(65536, 41), *c = pattern(4096, 42);
	struct recs *rs;
	uint64_t seq;

	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(journal_append_placed(f->j, 1, 131072, 65536, &seq),
	    0);
	assert_int_equal(seq, 1);
	assert_int_equal(append1(f->j, 0, 0, 4096, c), 2);
	assert_int_equal(journal_append_placed(f->j, 1, 196608, 65536, &seq),
	    0);
	assert_int_equal(journal_pending_bytes(f->j), 2 * 65536 + 4096);
	assert_int_equal(journal_commit(f->j), 0);
	assert_int_equal(journal_bytes(f->j), 2 * 65536 + 4096);

	rs = read_all(f->j, 1);
	assert_int_equal(rs->n, 3);
	assert_int_equal(rs->r[0].type, JE_PLACED);
	assert_int_equal(rs->r[0].disk, 1);
	assert_int_equal(rs->r[0].offset, 131072);
	assert_int_equal(rs->r[0].length, 65536);
	assert_null(rs->r[0].data);
	assert_int_equal(rs->r[1].type, JE_WRITE);
	assert_int_equal(rs->r[2].type, JE_PLACED);
	recs_free(rs);

	/* a conversion names the entry exactly; a wrong one changes
	 * nothing (the caller gives the transaction up) */
	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(journal_convert(f->j, 1, 1, 65536, 65536, b), -1);
	assert_non_null(strstr(journal_error(f->j), "no placed write"));
	journal_abort(f->j);
	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(journal_convert(f->j, 2, 0, 0, 4096, c), -1);
	journal_abort(f->j);

	/* aborted: still placed */
	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(journal_convert(f->j, 1, 1, 131072, 65536, b), 0);
	journal_abort(f->j);
	rs = read_all(f->j, 1);
	assert_int_equal(rs->r[0].type, JE_PLACED);
	recs_free(rs);

	/* committed, with a later append in the same transaction: a write
	 * entry with the data, its bytes counted once */
	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(journal_convert(f->j, 1, 1, 131072, 65536, b), 0);
	assert_int_equal(append1(f->j, 1, 131072, 4096, c), 4);
	assert_int_equal(journal_commit(f->j), 0);
	assert_int_equal(journal_bytes(f->j), 2 * 65536 + 2 * 4096);
	reopen(f);
	rs = read_all(f->j, 1);
	assert_int_equal(rs->n, 4);
	assert_int_equal(rs->r[0].seq, 1);
	assert_int_equal(rs->r[0].type, JE_WRITE);
	assert_int_equal(rs->r[0].offset, 131072);
	assert_int_equal(rs->r[0].length, 65536);
	assert_memory_equal(rs->r[0].data, b, 65536);
	assert_int_equal(rs->r[2].type, JE_PLACED);
	assert_int_equal(rs->r[3].seq, 4);
	recs_free(rs);
	assert_int_equal(journal_last_seq(f->j), 4);

	/* the scan passes every entry without data */
	rs = recs_new();
	rs->scan = 1;
	assert_int_equal(journal_scan(f->j, 2, collect, rs), 3);
	assert_int_equal(rs->r[0].seq, 2);
	assert_int_equal(rs->r[1].type, JE_PLACED);
	assert_int_equal(rs->r[1].offset, 196608);
	recs_free(rs);

	/* trimmed, placed bytes leave the count too */
	assert_int_equal(journal_trim(f->j, 3), 3);
	assert_int_equal(journal_bytes(f->j), 4096);
	free(b);
	free(c);
}

/* Converted entries' data lies after that of later entries: a trim's
 * release of the data log keeps it all the same. */
static void
test_placed_release(void **state)
{
	struct fx *f = *state;
	enum { N = 1100 };	/* 68.75 MiB: past the first segment */
	uint8_t *b = pattern(65536, 43), *c = pattern(65536, 44);
	struct recs *rs;
	uint64_t seq, id;

	assert_int_equal(journal_begin(f->j), 0);
	append1(f->j, 0, 0, 4096, NULL);
	for (uint32_t i = 0; i < N; i++)
		assert_int_equal(journal_append_placed(f->j, 0,
		    (uint64_t)i * 65536, 65536, &seq), 0);
	assert_int_equal(journal_append_point(f->j, POINT_CRASH, NULL, 1, &id,
	    &seq), 0);
	assert_int_equal(journal_commit(f->j), 0);

	assert_int_equal(journal_begin(f->j), 0);
	for (uint32_t i = 0; i < N; i++) {
		b[0] = (uint8_t)i;
		b[1] = (uint8_t)(i >> 8);
		assert_int_equal(journal_convert(f->j, 2 + i, 0,
		    (uint64_t)i * 65536, 65536, b), 0);
	}
	assert_int_equal(append1(f->j, 0, 0, 65536, c), N + 3);
	assert_int_equal(journal_commit(f->j), 0);
	/* the first entry with data of its own is in the second segment */
	assert_int_equal(journal_trim(f->j, 1), 1);
	reopen(f);
	assert_int_equal(journal_trim(f->j, 1), 0);

	rs = read_all(f->j, 2);
	assert_int_equal(rs->n, N + 2);
	for (uint32_t i = 0; i < N; i++) {
		b[0] = (uint8_t)i;
		b[1] = (uint8_t)(i >> 8);
		assert_int_equal(rs->r[i].type, JE_WRITE);
		assert_memory_equal(rs->r[i].data, b, 65536);
	}
	assert_int_equal(rs->r[N].type, JE_POINT);
	assert_memory_equal(rs->r[N + 1].data, c, 65536);
	recs_free(rs);
	/* trimmed, the log lets its segments go */
	assert_int_equal(journal_trim(f->j, UINT64_MAX), N + 2);
	assert_int_equal(journal_bytes(f->j), 0);
	free(b);
	free(c);
}

/* ------------------------------------------------------------------ */
/* journal_reset drops the map and the overflow / catch-up counters */

static void
test_reset_dirty(void **state)
{
	struct fx *f = *state;
	struct dpos got[16];
	uint64_t first;

	assert_int_equal(journal_begin(f->j), 0);
	mark3(f->j);
	assert_int_equal(journal_set(f->j, JM_OVERFLOW, 1), 0);
	assert_int_equal(journal_set(f->j, JM_CATCHUP_BASE, 5), 0);
	assert_int_equal(journal_set(f->j, JM_CATCHUP_END, 9), 0);
	assert_int_equal(journal_reserve(f->j, 9, &first), 0);
	assert_int_equal(journal_commit(f->j), 0);
	check_mark3(f->j);
	assert_int_equal(journal_get(f->j, JM_OVERFLOW), 1);
	assert_int_equal(journal_get(f->j, JM_CATCHUP_BASE), 5);

	assert_int_equal(journal_reset(f->j), 0);
	assert_int_equal(journal_dirty_chunks(f->j), 0);
	assert_int_equal(walk_dirty(f->j, got, 16), 0);
	assert_int_equal(journal_get(f->j, JM_OVERFLOW), 0);
	assert_int_equal(journal_get(f->j, JM_CATCHUP_BASE), 0);
	assert_int_equal(journal_get(f->j, JM_CATCHUP_END), 0);
	assert_int_equal(journal_get(f->j, JM_SEQ_FLOOR), 0);
	assert_int_equal(journal_last_seq(f->j), 0);
	reopen(f);
	assert_int_equal(journal_dirty_chunks(f->j), 0);
	assert_int_equal(walk_dirty(f->j, got, 16), 0);
	assert_int_equal(journal_get(f->j, JM_OVERFLOW), 0);
	assert_int_equal(journal_get(f->j, JM_CATCHUP_BASE), 0);
	assert_int_equal(journal_last_seq(f->j), 0);
	/* the map counts afresh */
	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(journal_mark_dirty(f->j, 0, 0, 1), 0);
	assert_int_equal(journal_commit(f->j), 0);
	assert_int_equal(journal_dirty_chunks(f->j), 1);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_kv_inline_len),
		cmocka_unit_test_setup_teardown(test_append_read, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_many_commits, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_abort, setup, teardown),
		cmocka_unit_test_setup_teardown(test_close_open_txn, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_reopen, setup, teardown),
		cmocka_unit_test_setup_teardown(test_open_error, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_trim, setup, teardown),
		cmocka_unit_test_setup_teardown(test_put, setup, teardown),
		cmocka_unit_test_setup_teardown(test_points, setup, teardown),
		cmocka_unit_test_setup_teardown(test_reset, setup, teardown),
		cmocka_unit_test_setup_teardown(test_read_limits, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_txn_misuse, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_dirty_mark, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_dirty_persist_abort, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_dirty_run, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_dirty_clear, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_reserve, setup, teardown),
		cmocka_unit_test_setup_teardown(test_placed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_placed_release, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_bytes_counter, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_reset_dirty, setup,
		    teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
