/*
 * test_jlog.c: the journal's data log (jlog.h), through the journal's API:
 * where the data lands, aborted slots, segments and their removal, failed
 * and corrupted reads, lost data, the writer's thread and its failures.  Real LMDB and real segment files in a
 * mkdtemp directory.
 */
#include "journal_fx.h"
#include "jlog.h"

#include <dlfcn.h>
#include <errno.h>

/* The journal's LMDB "log" table, opened behind its back (the journal is
 * closed), in a transaction of FLAGS. */
static MDB_env *
log_table(struct fx *f, unsigned flags, MDB_txn **txn, MDB_dbi *dbi)
{
	MDB_env *env;

	assert_int_equal(mdb_env_create(&env), 0);
	assert_int_equal(mdb_env_set_maxdbs(env, 4), 0);
	assert_int_equal(mdb_env_open(env, f->jdir, flags, 0600), 0);
	assert_int_equal(mdb_txn_begin(env, NULL, flags, txn), 0);
	assert_int_equal(mdb_dbi_open(*txn, "log", 0, dbi), 0);
	return env;
}

/* ------------------------------------------------------------------ */
/* the data log: write data over a quarter page lies in segment files
 * (DIR/data), LMDB holds small index records */

static uint64_t
dir_bytes(const char *dir, int *nfiles)
{
	char path[300];
	struct stat st;
	uint64_t total = 0;

	*nfiles = 0;
	for (uint64_t seg = 0; seg < 64; seg++) {
		snprintf(path, sizeof(path), "%s/data/%016llx", dir,
		    (unsigned long long)seg);
		if (stat(path, &st) == 0) {
			total += (uint64_t)st.st_size;
			(*nfiles)++;
		}
	}
	return total;
}

static void
test_data_log(void **state)
{
	struct fx *f = *state;
	char path[200];
	struct stat st;
	uint8_t *b = pattern(4096, 77), *small = pattern(1024, 78);
	MDB_env *env;
	MDB_txn *txn;
	MDB_dbi dbi;
	MDB_stat ms;
	const uint64_t n = 1000;
	int nfiles;

	for (uint64_t c = 0; c < n / 50; c++) {
		assert_int_equal(journal_begin(f->j), 0);
		for (int i = 0; i < 50; i++) {
			b[0] = (uint8_t)i;
			b[4095] = (uint8_t)c;
			append1(f->j, 0, (c * 50 + (uint64_t)i) * 4096, 4096,
			    b);
		}
		assert_int_equal(journal_commit(f->j), 0);
	}
	/* a quarter page: in an LMDB leaf, no slot */
	assert_int_equal(journal_begin(f->j), 0);
	append1(f->j, 1, 0, 1024, small);
	assert_int_equal(journal_commit(f->j), 0);
	assert_int_equal(journal_bytes(f->j), n * 4096 + 1024);
	journal_close(f->j);
	f->j = NULL;

	/* one slot per 4 KiB write in the log, and LMDB holds no data */
	assert_int_equal(dir_bytes(f->jdir, &nfiles), n * 4096);
	assert_int_equal(nfiles, 1);
	snprintf(path, sizeof(path), "%s/data.mdb", f->jdir);
	assert_int_equal(stat(path, &st), 0);
	if ((uint64_t)st.st_size >= n * 4096 / 8)
		fail_msg("data.mdb is %lld bytes for %llu 4 KiB writes: data "
		    "in LMDB", (long long)st.st_size, (unsigned long long)n);
	env = log_table(f, MDB_RDONLY, &txn, &dbi);
	assert_int_equal(mdb_stat(txn, dbi, &ms), 0);
	assert_int_equal(ms.ms_entries, n + 1);
	assert_int_equal(ms.ms_overflow_pages, 0);
	mdb_txn_abort(txn);
	mdb_env_close(env);

	f->j = jopen(f);
	{
		struct recs *rs = read_all(f->j, 0);

		assert_int_equal(rs->n, n + 1);
		for (uint64_t i = 0; i < n; i++) {
			b[0] = (uint8_t)(i % 50);
			b[4095] = (uint8_t)(i / 50);
			assert_int_equal(rs->r[i].length, 4096);
			assert_memory_equal(rs->r[i].data, b, 4096);
		}
		assert_int_equal(rs->r[n].length, 1024);
		assert_memory_equal(rs->r[n].data, small, 1024);
		recs_free(rs);
	}
	free(b);
	free(small);
}

/* An aborted transaction's slots are written over, and what reads them
 * then gets the new data. */
static void
test_data_log_abort(void **state)
{
	struct fx *f = *state;
	uint8_t *a = pattern(65536, 1), *b = pattern(65536, 2);
	struct recs *rs;

	assert_int_equal(journal_begin(f->j), 0);
	append1(f->j, 0, 0, 65536, a);
	assert_int_equal(journal_commit(f->j), 0);
	rs = read_all(f->j, 0);	/* the reader's window holds slot 0.. */
	recs_free(rs);
	assert_int_equal(journal_begin(f->j), 0);
	append1(f->j, 0, 65536, 65536, a);
	journal_abort(f->j);
	assert_int_equal(journal_begin(f->j), 0);
	append1(f->j, 0, 131072, 65536, b);
	assert_int_equal(journal_commit(f->j), 0);
	rs = read_all(f->j, 0);
	assert_int_equal(rs->n, 2);
	assert_memory_equal(rs->r[0].data, a, 65536);
	assert_int_equal(rs->r[1].offset, 131072);
	assert_memory_equal(rs->r[1].data, b, 65536);
	recs_free(rs);
	reopen(f);
	rs = read_all(f->j, 0);
	assert_int_equal(rs->n, 2);
	assert_memory_equal(rs->r[1].data, b, 65536);
	recs_free(rs);
	free(a);
	free(b);
}

struct vctx {
	uint64_t n;
	uint64_t bad;
};

static int
verify_cb(const struct jentry *e, void *arg)
{
	struct vctx *v = arg;
	uint64_t want[2] = { e->seq, e->offset };

	if (e->type == JE_WRITE && (e->length != 65536 ||
	    memcmp(e->data, want, sizeof(want)) != 0 ||
	    e->data[65535] != (uint8_t)e->seq))
		v->bad++;
	v->n++;
	return 0;
}

/* Entries over several segments read back; a trim removes the segments
 * nothing points into any more, and the rest still reads after a
 * reopen. */
static void
test_data_log_segments(void **state)
{
	struct fx *f = *state;
	uint8_t *b = calloc(1, 65536);
	const uint64_t n = 2200;	/* 137.5 MiB: three segments */
	struct vctx v = { 0, 0 };
	int nfiles;

	assert_non_null(b);
	for (uint64_t i = 0; i < n; i += 100) {
		assert_int_equal(journal_begin(f->j), 0);
		for (uint64_t k = i; k < i + 100; k++) {
			uint64_t hdr[2] = { k + 1, k * 65536 };

			memcpy(b, hdr, sizeof(hdr));
			b[65535] = (uint8_t)(k + 1);
			append1(f->j, 0, k * 65536, 65536, b);
		}
		assert_int_equal(journal_commit(f->j), 0);
	}
	assert_int_equal(journal_sync(f->j), 0);
	dir_bytes(f->jdir, &nfiles);
	assert_int_equal(nfiles, 3);
	assert_int_equal(journal_read(f->j, 0, SIZE_MAX, verify_cb, &v),
	    (int)n);
	assert_int_equal(v.bad, 0);

	/* the first 1100 entries (68.75 MiB) hold segment 0 and part of 1 */
	assert_int_equal(journal_trim(f->j, 1100), 1100);
	dir_bytes(f->jdir, &nfiles);
	assert_int_equal(nfiles, 2);
	reopen(f);
	v.n = v.bad = 0;
	assert_int_equal(journal_read(f->j, 0, SIZE_MAX, verify_cb, &v),
	    (int)(n - 1100));
	assert_int_equal(v.bad, 0);
	/* everything: only the head's segment stays */
	assert_int_equal(journal_trim(f->j, n), (int)(n - 1100));
	dir_bytes(f->jdir, &nfiles);
	assert_int_equal(nfiles, 1);
	/* and the log goes on from its head, not over old slots */
	assert_int_equal(journal_begin(f->j), 0);
	{
		uint64_t hdr[2] = { n + 1, 0 };

		memcpy(b, hdr, sizeof(hdr));
		b[65535] = (uint8_t)(n + 1);
		append1(f->j, 0, 0, 65536, b);
	}
	assert_int_equal(journal_commit(f->j), 0);
	reopen(f);
	v.n = v.bad = 0;
	assert_int_equal(journal_read(f->j, 0, SIZE_MAX, verify_cb, &v), 1);
	assert_int_equal(v.bad, 0);
	free(b);
}

/* Entry K of the tests below: its seq and offset, and its last byte. */
static void
fill_entry(uint8_t *b, uint64_t k)
{
	uint64_t hdr[2] = { k + 1, k * 65536 };

	memset(b, (int)(k * 7 + 1), 65536);
	memcpy(b, hdr, sizeof(hdr));
	b[65535] = (uint8_t)(k + 1);
}

/* Append entries [FROM, TO) of fill_entry(), 64 KiB each, at their
 * offsets. */
static void
append_entries(struct journal *j, uint64_t from, uint64_t to)
{
	static uint8_t b[65536];

	for (uint64_t k = from; k < to; k++) {
		fill_entry(b, k);
		append1(j, 0, k * 65536, 65536, b);
	}
}

/* Until the log's thread has written what it was given (vm.c commits
 * then). */
static void
until_idle(struct journal *j)
{
	while (journal_busy(j))
		usleep(1000);
}

/* One transaction larger than the ring: the writer's thread writes runs
 * while later appends fill the ring, and no run is written over before it
 * is written.  The first 64 MiB read back from the files. */
static void
test_data_log_thread(void **state)
{
	struct fx *f = *state;
	const uint64_t n = 1536;	/* 96 MiB in 64 KiB entries */
	uint8_t *b = malloc(n * 65536);
	struct vctx v = { 0, 0 };
	uint64_t ev = 0;

	assert_non_null(b);
	for (uint64_t k = 0; k < n; k++)
		fill_entry(b + k * 65536, k);
	assert_int_equal(journal_begin(f->j), 0);
	for (uint64_t k = 0; k < n; k++)
		append1(f->j, 0, k * 65536, 65536, b + k * 65536);
	assert_int_equal(journal_commit(f->j), 0);
	/* the commit waited for the thread, which said it went idle */
	assert_int_equal(journal_busy(f->j), 0);
	assert_int_equal(read(journal_event_fd(f->j), &ev, sizeof(ev)),
	    (ssize_t)sizeof(ev));
	assert_true(ev >= 1);
	assert_int_equal(journal_read(f->j, 0, SIZE_MAX, verify_cb, &v),
	    (int)n);
	assert_int_equal(v.bad, 0);
	reopen(f);	/* and from the files alone */
	v.n = v.bad = 0;
	assert_int_equal(journal_read(f->j, 0, SIZE_MAX, verify_cb, &v),
	    (int)n);
	assert_int_equal(v.bad, 0);
	free(b);
}

/* A run the thread cannot write fails the commit with the cause, also
 * when what is left is small enough for the commit to write itself, and
 * the journal takes the next transaction as if the failed one never
 * was. */
static void
test_data_log_thread_fails(void **state)
{
	struct fx *f = *state;
	char path[300];
	struct vctx v = { 0, 0 };

	/* the first segment cannot be opened for writing */
	snprintf(path, sizeof(path), "%s/data/%016llx", f->jdir, 0ull);
	assert_int_equal(mkdir(path, 0700), 0);
	assert_int_equal(journal_begin(f->j), 0);
	append_entries(f->j, 0, 32);		/* 2 MiB: two runs */
	assert_int_equal(journal_commit(f->j), -1);
	assert_non_null(strstr(journal_error(f->j), "Is a directory"));
	assert_int_equal(journal_last_seq(f->j), 0);
	assert_int_equal(journal_busy(f->j), 0);

	/* the same with a small tail in the next segment, which the commit
	 * writes itself once the thread is idle (as vm.c commits) */
	assert_int_equal(journal_begin(f->j), 0);
	append_entries(f->j, 0, 1024);		/* 64 MiB: segment 0 */
	append_entries(f->j, 1024, 1025);
	until_idle(f->j);
	assert_int_equal(journal_commit(f->j), -1);
	assert_non_null(strstr(journal_error(f->j), "Is a directory"));
	assert_int_equal(journal_last_seq(f->j), 0);

	assert_int_equal(rmdir(path), 0);
	assert_int_equal(journal_begin(f->j), 0);
	append_entries(f->j, 0, 32);
	until_idle(f->j);
	assert_int_equal(journal_commit(f->j), 0);
	reopen(f);
	assert_int_equal(journal_read(f->j, 0, SIZE_MAX, verify_cb, &v), 32);
	assert_int_equal(v.bad, 0);
}

/* A small batch handed to the thread early (journal_kick, as vm.c does
 * for a batch of several requests) commits and reads back from the
 * files; with nothing staged there is nothing to hand over. */
static void
test_data_log_kick(void **state)
{
	struct fx *f = *state;
	struct vctx v = { 0, 0 };
	uint64_t ev;

	assert_int_equal(journal_begin(f->j), 0);
	assert_int_equal(journal_kick(f->j), 0);
	append_entries(f->j, 0, 4);		/* 256 KiB: under a run */
	assert_int_equal(journal_kick(f->j), 1);
	until_idle(f->j);
	assert_int_equal(read(journal_event_fd(f->j), &ev, sizeof(ev)),
	    (ssize_t)sizeof(ev));
	append_entries(f->j, 4, 5);		/* and a tail after it */
	assert_int_equal(journal_commit(f->j), 0);
	reopen(f);
	assert_int_equal(journal_read(f->j, 0, SIZE_MAX, verify_cb, &v), 5);
	assert_int_equal(v.bad, 0);
}

static int
first_cb(const struct jentry *e, void *arg)
{
	struct vctx *v = arg;

	verify_cb(e, v);
	return 1;	/* one entry */
}

/* A read that fails (its segment cannot be opened) leaves nothing behind
 * that a later read could take for data. */
/* Entries of 5 slots less a little (windows end inside them), read back
 * from the files in steps as the shipper reads (the read-ahead takes the
 * next window), then again from further back and from the middle. */
#define RA_LEN	20000u
#define RA_N	700u		/* 13.4 MiB: a few windows */

static int
ra_cb(const struct jentry *e, void *arg)
{
	struct vctx *v = arg;
	uint8_t want[RA_LEN];

	memset(want, (int)(e->seq * 13 + 5), sizeof(want));
	memcpy(want, &e->seq, sizeof(e->seq));
	if (e->type != JE_WRITE || e->length != RA_LEN ||
	    memcmp(e->data, want, RA_LEN) != 0)
		v->bad++;
	v->n++;
	return 0;
}

static uint64_t
ra_read_steps(struct journal *j, uint64_t from, size_t step)
{
	struct vctx v = { 0, 0 };
	int r;

	while ((r = journal_read(j, from, step, ra_cb, &v)) > 0)
		from += (uint64_t)r;
	assert_int_equal(r, 0);
	assert_int_equal(v.bad, 0);
	return v.n;
}

static void
test_data_log_read_ahead(void **state)
{
	struct fx *f = *state;
	static uint8_t b[RA_LEN];

	assert_int_equal(journal_begin(f->j), 0);
	for (uint64_t k = 1; k <= RA_N; k++) {
		memset(b, (int)(k * 13 + 5), sizeof(b));
		memcpy(b, &k, sizeof(k));
		append1(f->j, 0, (k - 1) * RA_LEN, RA_LEN, b);
	}
	assert_int_equal(journal_commit(f->j), 0);
	reopen(f);	/* nothing in the ring: every read is from the files */
	assert_int_equal(ra_read_steps(f->j, 1, 1u << 20), RA_N);
	assert_int_equal(ra_read_steps(f->j, 1, 64u << 10), RA_N);
	/* back, then into the middle of a window, then a window back */
	assert_int_equal(ra_read_steps(f->j, 400, 1u << 20), RA_N - 399);
	assert_int_equal(ra_read_steps(f->j, 5, 256u << 10), RA_N - 4);
	assert_int_equal(ra_read_steps(f->j, 250, 1u << 20), RA_N - 249);
}

/* Up to JLOG_AHEAD windows in flight: the reader takes them in order,
 * jumps forward into one of them and back, and crosses into the next
 * segment, where the read-ahead of the last one ends. */
#define RAQ_N	4000u		/* 80 MB: past the first segment */

static uint64_t
raq_read(struct journal *j, uint64_t from, uint64_t upto, size_t step,
    struct vctx *v)
{
	int r;

	while (from <= upto &&
	    (r = journal_read(j, from, step, ra_cb, v)) > 0)
		from += (uint64_t)r;
	assert_int_equal(v->bad, 0);
	return from;
}

static void
test_data_log_read_ahead_queue(void **state)
{
	struct fx *f = *state;
	static uint8_t b[RA_LEN];
	struct vctx v = { 0, 0 };
	uint64_t at;

	for (uint64_t k = 1; k <= RAQ_N; k++) {
		if (k % 500 == 1)
			assert_int_equal(journal_begin(f->j), 0);
		memset(b, (int)(k * 13 + 5), sizeof(b));
		memcpy(b, &k, sizeof(k));
		append1(f->j, 0, (k - 1) * RA_LEN, RA_LEN, b);
		if (k % 500 == 0)
			assert_int_equal(journal_commit(f->j), 0);
	}
	reopen(f);	/* every read from the files */
	/* 3 MiB in 1 MiB batches: the queue is full behind them */
	at = raq_read(f->j, 1, 150, 1u << 20, &v);
	/* forward 12 MB, into the third window ahead: the queue goes */
	at = raq_read(f->j, at + 600, 2000, 1u << 20, &v);
	/* back 20 MB, then on across the segment boundary to the end */
	at = raq_read(f->j, at - 1000, RAQ_N, 1u << 20, &v);
	assert_int_equal(at, RAQ_N + 1);
	/* small batches: the queue refills many times over */
	v.n = 0;
	assert_int_equal(raq_read(f->j, 2500, RAQ_N, 64u << 10, &v),
	    RAQ_N + 1);
	assert_int_equal(v.n, RAQ_N - 2499);
}

/* The read-ahead's depth, on the data log alone: JLOG_AHEAD windows in
 * flight behind a read from the files, topped up as the reader takes
 * one, on into the next segment, dropped when the reader goes elsewhere,
 * none past what is written. */
#define RAD_ENT	65536u
#define RAD_N	1152u		/* 72 MiB: segment 0 and 8 MiB of 1 */
#define RAD_WIN	(JLOG_WINDOW / RAD_ENT)	/* entries a window */

static void
rad_read(struct jlog *l, uint64_t k, uint64_t top)
{
	const uint8_t *p;
	uint64_t got;

	assert_int_equal(jlog_read(l, k * RAD_ENT, RAD_ENT, top, &p), 0);
	memcpy(&got, p, sizeof(got));
	assert_int_equal(got, k);
	assert_int_equal(p[RAD_ENT - 1], (uint8_t)(k * 7));
}

/* A data log of N entries (entry k starts with k and ends with k * 7) in
 * F's dir/NAME, written in commits of 16 MiB, then opened again in L with
 * nothing in the ring: every read is from the files.  Returns the head. */
static uint64_t
rad_log(struct fx *f, const char *name, uint64_t n, struct jlog *l)
{
	static uint8_t b[RAD_ENT];
	char dir[sizeof(f->dir) + 8];
	uint64_t at, head;

	snprintf(dir, sizeof(dir), "%s/%s", f->dir, name);
	assert_int_equal(mkdir(dir, 0700), 0);
	memset(l, 0, sizeof(*l));
	assert_int_equal(jlog_open(l, dir, 0), 0);
	for (uint64_t k = 0; k < n; k++) {
		memcpy(b, &k, sizeof(k));
		b[RAD_ENT - 1] = (uint8_t)(k * 7);
		assert_int_equal(jlog_append(l, b, RAD_ENT, &at), 0);
		assert_int_equal(at, k * RAD_ENT);
		if (k % 256 == 255) {
			assert_int_equal(jlog_flush(l), 0);
			jlog_committed(l);
		}
	}
	assert_int_equal(jlog_flush(l), 0);
	jlog_committed(l);
	head = l->head;
	assert_int_equal(head, n * RAD_ENT);
	jlog_close(l);
	memset(l, 0, sizeof(*l));
	assert_int_equal(jlog_open(l, dir, head), 0);
	return head;
}

static void
test_data_log_read_ahead_depth(void **state)
{
	struct jlog l;
	uint64_t head = rad_log(*state, "rad", RAD_N, &l);

	rad_read(&l, 0, head);
	assert_int_equal(l.pf_n, JLOG_AHEAD);
	rad_read(&l, 1, head);		/* in the window: nothing moves */
	assert_int_equal(l.pf_n, JLOG_AHEAD);
	rad_read(&l, JLOG_WINDOW / RAD_ENT, head);	/* the oldest taken */
	assert_int_equal(l.pf_n, JLOG_AHEAD);
	assert_int_equal(l.win_at, JLOG_WINDOW);
	rad_read(&l, 2, head);		/* back: dropped, read, refilled */
	assert_int_equal(l.pf_n, JLOG_AHEAD);
	rad_read(&l, RAD_N - 1, head);	/* forward past them: dropped */
	assert_int_equal(l.pf_n, 0);	/* nothing written after it */
	/* 8 MiB before the segment's end: two windows of it and both of
	 * the next one's are read ahead */
	rad_read(&l, JLOG_SEG / RAD_ENT - 2 * RAD_WIN, head);
	assert_int_equal(l.pf_n, 3);
	rad_read(&l, JLOG_SEG / RAD_ENT - RAD_WIN, head);
	assert_int_equal(l.pf_n, 2);
	assert_int_equal(l.rseg, 0);
	rad_read(&l, JLOG_SEG / RAD_ENT, head);	/* taken in segment 1 */
	assert_int_equal(l.rseg, 1);
	assert_int_equal(l.win_at, JLOG_SEG);
	assert_int_equal(l.pf_n, 1);
	rad_read(&l, JLOG_SEG / RAD_ENT + RAD_WIN, head);
	assert_int_equal(l.pf_n, 0);
	for (uint64_t k = 0; k < RAD_N; k++)	/* all of it, in order */
		rad_read(&l, k, head);
	assert_int_equal(l.pf_n, 0);
	jlog_close(&l);
}

/* Fault injection: aio_read on any descriptor but this one fails with
 * EAGAIN (-1: none fails). */
static int aio_only_fd = -1;

int
aio_read(struct aiocb *cb)
{
	static int (*real)(struct aiocb *);

	if (real == NULL)
		*(void **)&real = dlsym(RTLD_NEXT, "aio_read");
	if (aio_only_fd >= 0 && cb->aio_fildes != aio_only_fd) {
		errno = EAGAIN;
		return -1;
	}
	return real(cb);
}

/* The read-ahead could not start in the next segment (its file opened,
 * every read refused), then the reader moved there on its own: what it
 * reads ahead later, two segments on, comes from that segment's file. */
#define RAS_N	2176u		/* 136 MiB: segments 0, 1 and 8 MiB of 2 */

static void
test_data_log_read_ahead_refused(void **state)
{
	struct jlog l;
	uint64_t seg = JLOG_SEG / RAD_ENT;
	uint64_t head = rad_log(*state, "ras", RAS_N, &l);

	rad_read(&l, 0, head);			/* segment 0 open */
	aio_only_fd = l.rfd;			/* the next one's reads fail */
	rad_read(&l, seg - 2 * RAD_WIN, head);
	rad_read(&l, seg - RAD_WIN, head);
	assert_int_equal(l.pf_n, 0);
	aio_only_fd = -1;
	for (uint64_t k = seg; k < RAS_N; k++)	/* on into segment 2 */
		rad_read(&l, k, head);
	jlog_close(&l);
}

static void
test_data_log_failed_read(void **state)
{
	struct fx *f = *state;
	uint8_t *b = calloc(1, 65536);
	struct vctx v = { 0, 0 };
	char path[300], away[310];

	assert_non_null(b);
	/* 106 MiB: segments 0 and 1, the ring holds the last 32 MiB */
	for (uint64_t k = 0; k < 1700; k++) {
		uint64_t hdr[2] = { k + 1, k * 65536 };

		if (k % 100 == 0)
			assert_int_equal(journal_begin(f->j), 0);
		memcpy(b, hdr, sizeof(hdr));
		b[65535] = (uint8_t)(k + 1);
		append1(f->j, 0, k * 65536, 65536, b);
		if (k % 100 == 99)
			assert_int_equal(journal_commit(f->j), 0);
	}
	/* seq 1 from segment 0's file */
	assert_int_equal(journal_read(f->j, 1, 1, first_cb, &v), 1);
	assert_int_equal(v.bad, 0);
	snprintf(path, sizeof(path), "%s/data/%016llx", f->jdir, 1ull);
	snprintf(away, sizeof(away), "%s.away", path);
	assert_int_equal(rename(path, away), 0);
	assert_int_equal(journal_read(f->j, 1025, 1, first_cb, &v), -1);
	assert_non_null(strstr(journal_error(f->j), "No such file"));
	assert_int_equal(rename(away, path), 0);
	v.n = v.bad = 0;
	assert_int_equal(journal_read(f->j, 1, 1, first_cb, &v), 1);
	assert_int_equal(journal_read(f->j, 1025, 1, first_cb, &v), 1);
	assert_int_equal(v.n, 2);
	assert_int_equal(v.bad, 0);
	free(b);
}

/* A record whose offset is not a slot below the log's head (a corrupted
 * journal) is an error, not a read outside the buffers. */
static void
test_data_log_bad_ref(void **state)
{
	struct fx *f = *state;
	uint8_t *b = pattern(8192, 9), bad[8] = { 0xff, 0xff, 0xff, 0xff,
	    0xff, 0xff, 0xf0, 0x00 };
	MDB_env *env;
	MDB_txn *txn;
	MDB_cursor *c;
	MDB_dbi dbi;
	MDB_val k, d = { sizeof(bad), bad };
	struct recs *rs = recs_new();

	assert_int_equal(journal_begin(f->j), 0);
	append1(f->j, 0, 0, 8192, b);
	assert_int_equal(journal_commit(f->j), 0);
	journal_close(f->j);
	env = log_table(f, 0, &txn, &dbi);
	assert_int_equal(mdb_cursor_open(txn, dbi, &c), 0);
	assert_int_equal(mdb_cursor_get(c, &k, &d, MDB_FIRST), 0);
	d.mv_size = sizeof(bad);
	d.mv_data = bad;
	assert_int_equal(mdb_cursor_put(c, &k, &d, MDB_CURRENT), 0);
	mdb_cursor_close(c);
	assert_int_equal(mdb_txn_commit(txn), 0);
	mdb_env_close(env);
	f->j = jopen(f);
	assert_int_equal(journal_read(f->j, 0, SIZE_MAX, collect, rs), -1);
	assert_non_null(strstr(journal_error(f->j), "corrupted journal"));
	assert_int_equal(rs->n, 0);
	recs_free(rs);
	free(b);
}

/* Data the log lost (a segment cut short or gone) is an error naming
 * the cause, never zeroes. */
static void
test_data_log_lost(void **state)
{
	struct fx *f = *state;
	uint8_t *b = pattern(65536, 5);
	char path[300];
	struct recs *rs = recs_new();

	assert_int_equal(journal_begin(f->j), 0);
	append1(f->j, 0, 0, 65536, b);
	append1(f->j, 0, 65536, 65536, b);
	assert_int_equal(journal_commit(f->j), 0);
	journal_close(f->j);
	snprintf(path, sizeof(path), "%s/data/%016llx", f->jdir, 0ull);
	assert_int_equal(truncate(path, 65536 + 4096), 0);
	f->j = jopen(f);
	assert_int_equal(journal_read(f->j, 0, SIZE_MAX, collect, rs), -1);
	assert_non_null(strstr(journal_error(f->j), "short (the log lost "
	    "data)"));
	assert_int_equal(rs->n, 1);
	recs_free(rs);
	journal_close(f->j);
	assert_int_equal(unlink(path), 0);
	f->j = jopen(f);
	rs = recs_new();
	assert_int_equal(journal_read(f->j, 0, SIZE_MAX, collect, rs), -1);
	assert_non_null(strstr(journal_error(f->j), "No such file"));
	recs_free(rs);
	free(b);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_data_log, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_data_log_abort, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_data_log_segments, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_data_log_read_ahead,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_data_log_read_ahead_queue,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_data_log_read_ahead_depth,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(
		    test_data_log_read_ahead_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_data_log_failed_read,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_data_log_bad_ref, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_data_log_lost, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_data_log_thread, setup,
		    teardown),
		cmocka_unit_test_setup_teardown(test_data_log_thread_fails,
		    setup, teardown),
		cmocka_unit_test_setup_teardown(test_data_log_kick, setup,
		    teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
