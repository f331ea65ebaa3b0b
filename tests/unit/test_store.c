/*
 * test_store.c: the DR site's store (store.h) with real image files and
 * real LMDB environments in a mkdtemp directory.  The test keeps a model
 * copy of every disk in memory, snapshots it at every recovery point, and
 * checks the image files byte for byte against it after every failover,
 * cancel, retain, commit and reopen.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "retention.h"
#include "store.h"
#include "store_int.h"	/* the image descriptors, for a full disk */

#define NDISKS	2
#define MAXP	64
#define BASE	100	/* sync base seq */
#define T0	1700000000000ll
#define MIN_MS	60000ll

static const uint64_t disk_size[NDISKS] = { 1u << 20, (3u << 20) + 512 };

struct fx {
	char dir[64];
	char sdir[128];
	struct store *s;
	uint8_t *cur[NDISKS];		/* the latest point (or staged) */
	uint8_t *pending[NDISKS];	/* model incl. staged entries */
	uint8_t *snap[MAXP + 1][NDISKS];/* by point id */
	int64_t ptime[MAXP + 1];
	uint64_t seq;			/* last seq handed out */
	uint64_t last_id;
	uint64_t rng;
};

static int
rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static uint64_t
rnd(struct fx *f)
{
	f->rng ^= f->rng << 13;
	f->rng ^= f->rng >> 7;
	f->rng ^= f->rng << 17;
	return f->rng;
}

static struct store *
sopen(struct fx *f)
{
	char err[512] = "";
	struct store *s = store_open(f->sdir, err, sizeof(err));

	if (s == NULL)
		fail_msg("store_open %s: %s", f->sdir, err);
	return s;
}

static void
reopen(struct fx *f)
{
	store_close(f->s);
	f->s = sopen(f);
}

static int
setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	strcpy(f->dir, "/tmp/test_store.XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->sdir, sizeof(f->sdir), "%s/vm1", f->dir);
	f->s = sopen(f);
	for (int d = 0; d < NDISKS; d++) {
		f->cur[d] = calloc(1, disk_size[d]);
		f->pending[d] = calloc(1, disk_size[d]);
		assert_non_null(f->cur[d]);
		assert_non_null(f->pending[d]);
	}
	f->rng = 0x1234567887654321ull;
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fx *f = *state;

	store_close(f->s);
	nftw(f->dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	for (int d = 0; d < NDISKS; d++) {
		free(f->cur[d]);
		free(f->pending[d]);
		for (int p = 0; p <= MAXP; p++)
			free(f->snap[p][d]);
	}
	free(f);
	return 0;
}

/* Fault injection: the Nth mdb_drop from now fails (0: none). */
static int drop_fail;

int
mdb_drop(MDB_txn *txn, MDB_dbi dbi, int del)
{
	static int (*real)(MDB_txn *, MDB_dbi, int);

	if (real == NULL)
		*(void **)&real = dlsym(RTLD_NEXT, "mdb_drop");
	if (drop_fail > 0 && --drop_fail == 0)
		return EIO;
	return real(txn, dbi, del);
}

/* Fault injection: the next fdatasync of one of these descriptors (the
 * images') fails with EIO, once. */
static int sync_fail_fd[NDISKS] = { -1, -1 };

int
fdatasync(int fd)
{
	static int (*real)(int);

	if (real == NULL)
		*(void **)&real = dlsym(RTLD_NEXT, "fdatasync");
	for (int d = 0; d < NDISKS; d++) {
		int want = fd;

		if (fd >= 0 && __atomic_compare_exchange_n(&sync_fail_fd[d],
		    &want, -1, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
			errno = EIO;
			return -1;
		}
	}
	return real(fd);
}

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

#define CHECK(call) do {						\
	if ((call) != 0)						\
		fail_msg("%s: %s", #call, store_error(f->s));		\
} while (0)

/* ------------------------------------------------------------------ */
/* comparing images with the model */

static void
check_disk(struct fx *f, int d, const uint8_t *want, const char *what)
{
	const char *path = store_disk_path(f->s, (size_t)d);
	struct stat st;
	uint8_t *got;
	int fd;
	ssize_t n;

	assert_non_null(path);
	fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal((uint64_t)st.st_size, disk_size[d]);
	got = malloc(disk_size[d]);
	assert_non_null(got);
	n = pread(fd, got, disk_size[d], 0);
	close(fd);
	assert_int_equal((uint64_t)n, disk_size[d]);
	if (memcmp(got, want, disk_size[d]) != 0) {
		uint64_t i = 0;

		while (got[i] == want[i])
			i++;
		free(got);
		fail_msg("%s: disk %d differs from the model at byte %llu "
		    "(block %llu)", what, d, (unsigned long long)i,
		    (unsigned long long)(i / 4096));
	}
	free(got);
}

static void
check_images(struct fx *f, uint8_t *const want[NDISKS], const char *what)
{
	for (int d = 0; d < NDISKS; d++)
		check_disk(f, d, want[d], what);
}

static void
check_point(struct fx *f, uint64_t id, const char *what)
{
	char msg[128];

	assert_non_null(f->snap[id][0]);
	snprintf(msg, sizeof(msg), "%s (point %llu)", what,
	    (unsigned long long)id);
	check_images(f, f->snap[id], msg);
}

/* ------------------------------------------------------------------ */
/* building the history */

static void
initial_sync(struct fx *f)
{
	struct store_disk disks[NDISKS];
	struct store_info info;
	uint8_t *buf = malloc(65536);

	assert_non_null(buf);
	memset(disks, 0, sizeof(disks));
	strcpy(disks[0].name, "vda");
	strcpy(disks[1].name, "vdb");
	for (int d = 0; d < NDISKS; d++)
		disks[d].size = disk_size[d];
	CHECK(store_begin_sync(f->s, 0xabcdef, disks, NDISKS));
	store_info(f->s, &info);
	assert_int_equal(info.state, STORE_SYNCING);
	assert_int_equal(info.epoch, 0xabcdef);
	assert_int_equal(info.ndisks, NDISKS);
	assert_string_equal(info.disks[1].name, "vdb");
	assert_int_equal(info.disks[1].size, disk_size[1]);
	/* copy: fill most of each disk with data, chunk by chunk */
	for (int d = 0; d < NDISKS; d++) {
		for (uint64_t off = 0; off < disk_size[d]; off += 65536) {
			uint32_t len = (uint32_t)(disk_size[d] - off < 65536 ?
			    disk_size[d] - off : 65536);

			if ((off / 65536) % 5 == 3)
				continue;	/* sparse: stays zero */
			for (uint32_t i = 0; i < len; i++)
				buf[i] = (uint8_t)(rnd(f) >> 32);
			CHECK(store_sync_write(f->s, (uint32_t)d, off, len,
			    buf));
			memcpy(f->cur[d] + off, buf, len);
		}
	}
	/* an explicit zeroing in the copy */
	CHECK(store_sync_write(f->s, 1, 4096 * 3 + 100, 9000, NULL));
	memset(f->cur[1] + 4096 * 3 + 100, 0, 9000);
	CHECK(store_sync_progress(f->s, 100, 200));
	CHECK(store_sync_done(f->s, BASE));
	store_info(f->s, &info);
	assert_int_equal(info.state, STORE_NORMAL);
	assert_int_equal(info.applied_seq, BASE);
	assert_int_equal(info.last_point, 0);
	assert_int_equal(store_held_seq(f->s), BASE);
	f->seq = BASE;
	for (int d = 0; d < NDISKS; d++)
		memcpy(f->pending[d], f->cur[d], disk_size[d]);
	check_images(f, f->cur, "after the initial copy");
	free(buf);
}

struct batch {
	struct jentry e[64];
	uint8_t *data[64];
	size_t n;
};

static void
batch_free(struct batch *b)
{
	for (size_t i = 0; i < b->n; i++) {
		free(b->data[i]);
		b->data[i] = NULL;	/* the batch is used again */
	}
	b->n = 0;
}

/* Append random writes and zeroes to B, applying them to f->pending. */
static void
gen_entries(struct fx *f, struct batch *b, int count)
{
	for (int k = 0; k < count; k++) {
		struct jentry *e = &b->e[b->n];
		uint32_t d = (uint32_t)(rnd(f) % NDISKS);
		uint64_t size = disk_size[d], off;
		uint32_t len;
		int kind = (int)(rnd(f) % 10);

		assert_true(b->n < 63);
		memset(e, 0, sizeof(*e));
		switch (rnd(f) % 4) {
		case 0:	/* whole blocks */
			len = (uint32_t)(1 + rnd(f) % 8) * 4096;
			off = (rnd(f) % (size / 4096)) * 4096;
			break;
		case 1:	/* small, unaligned */
			len = (uint32_t)(1 + rnd(f) % 700);
			off = rnd(f) % size;
			break;
		case 2:	/* the tail of the disk */
			len = (uint32_t)(1 + rnd(f) % 6000);
			off = size - 1 - rnd(f) % 5000;
			break;
		default:	/* anything, crossing blocks */
			len = (uint32_t)(1 + rnd(f) % 20000);
			off = rnd(f) % size;
			break;
		}
		if (off + len > size)
			len = (uint32_t)(size - off);
		e->seq = ++f->seq;
		e->disk = d;
		e->offset = off;
		e->length = len;
		if (kind < 7) {
			uint8_t *p = malloc(len);

			assert_non_null(p);
			for (uint32_t i = 0; i < len; i++)
				p[i] = (uint8_t)(rnd(f) >> 40) | 1;
			e->type = JE_WRITE;
			e->data = p;
			b->data[b->n] = p;
			memcpy(f->pending[d] + off, p, len);
		} else {
			e->type = JE_ZERO;
			b->data[b->n] = NULL;
			memset(f->pending[d] + off, 0, len);
		}
		b->n++;
	}
}

/* Append a point marker; the model at it is f->pending now. */
static uint64_t
gen_point(struct fx *f, struct batch *b, int64_t time_ms)
{
	struct jentry *e = &b->e[b->n];
	uint64_t id = ++f->last_id;

	b->data[b->n++] = NULL;

	assert_true(id <= MAXP);
	memset(e, 0, sizeof(*e));
	e->type = JE_POINT;
	e->seq = ++f->seq;
	e->point_id = id;
	e->time_ms = time_ms;
	e->kind = (enum point_kind)(id % 3);
	snprintf(e->label, sizeof(e->label), "point-%llu",
	    (unsigned long long)id);
	for (int d = 0; d < NDISKS; d++) {
		f->snap[id][d] = malloc(disk_size[d]);
		assert_non_null(f->snap[id][d]);
		memcpy(f->snap[id][d], f->pending[d], disk_size[d]);
	}
	f->ptime[id] = time_ms;
	return id;
}

static void
latest_is_pending(struct fx *f)
{
	for (int d = 0; d < NDISKS; d++)
		memcpy(f->cur[d], f->pending[d], disk_size[d]);
}

/* A point after what was staged: its marker staged and applied, the
 * images checked against the model. */
static void
close_point(struct fx *f, int64_t time_ms, const char *what)
{
	struct batch p = { .n = 0 };
	uint64_t id = gen_point(f, &p, time_ms);

	CHECK(store_stage(f->s, p.e, p.n));
	assert_int_equal(store_apply(f->s), 1);
	latest_is_pending(f);
	check_point(f, id, what);
	batch_free(&p);
}

/* One interval: entries, a point, staged in two calls, applied. */
static uint64_t
interval(struct fx *f, int64_t time_ms)
{
	struct batch b = { .n = 0 };
	uint64_t id;
	size_t half;
	int n;

	gen_entries(f, &b, 4 + (int)(rnd(f) % 12));
	id = gen_point(f, &b, time_ms);
	half = b.n / 2;
	CHECK(store_stage(f->s, b.e, half));
	CHECK(store_stage(f->s, b.e + half, b.n - half));
	assert_int_equal(store_held_seq(f->s), f->seq);
	n = store_apply(f->s);
	if (n != 1)
		fail_msg("store_apply returned %d: %s", n, store_error(f->s));
	latest_is_pending(f);
	batch_free(&b);
	return id;
}

/* ------------------------------------------------------------------ */
/* listing points */

struct plist {
	struct store_point p[MAXP];
	size_t n;
};

static int
plist_cb(const struct store_point *p, void *arg)
{
	struct plist *l = arg;

	assert_true(l->n < MAXP);
	l->p[l->n++] = *p;
	return 0;
}

static void
list_points(struct fx *f, struct plist *l)
{
	l->n = 0;
	CHECK(store_points(f->s, plist_cb, l));
}

static void
check_all_points(struct fx *f, const char *what)
{
	struct plist l;
	struct store_info info;

	list_points(f, &l);
	store_info(f->s, &info);
	assert_int_equal(info.state, STORE_NORMAL);
	for (size_t i = 0; i < l.n; i++) {
		uint64_t id = l.p[i].id;
		struct store_info fi;

		CHECK(store_failover(f->s, id));
		store_info(f->s, &fi);
		assert_int_equal(fi.state, STORE_FAILEDOVER);
		assert_int_equal(fi.failover_point, id);
		check_point(f, id, what);
		CHECK(store_cancel(f->s));
		check_images(f, f->cur, what);
	}
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
	{
		struct store_disk disks[NDISKS];

		memset(disks, 0, sizeof(disks));
		strcpy(disks[0].name, "vda");
		strcpy(disks[1].name, "vdb");
		for (int d = 0; d < NDISKS; d++)
			disks[d].size = disk_size[d];
		CHECK(store_begin_sync(f->s, 77, disks, NDISKS));
	}
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
