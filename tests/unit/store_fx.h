/*
 * store_fx.h: the fixture and helpers shared by the DR store's unit tests
 * (test_store.c, the history; test_store_apply.c, receiving and applying).
 * The store lives in a mkdtemp directory with real image files and real
 * LMDB environments; the tests keep a model copy of every disk in memory,
 * snapshot it at every recovery point, and check the image files byte for
 * byte against it.  Fault injection: mdb_drop and fdatasync are wrapped.
 */
#ifndef REPLICAD_STORE_FX_H
#define REPLICAD_STORE_FX_H

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

static inline int
rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static inline uint64_t
rnd(struct fx *f)
{
	f->rng ^= f->rng << 13;
	f->rng ^= f->rng >> 7;
	f->rng ^= f->rng << 17;
	return f->rng;
}

static inline struct store *
sopen(struct fx *f)
{
	char err[512] = "";
	struct store *s = store_open(f->sdir, err, sizeof(err));

	if (s == NULL)
		fail_msg("store_open %s: %s", f->sdir, err);
	return s;
}

static inline void
reopen(struct fx *f)
{
	store_close(f->s);
	f->s = sopen(f);
}

static inline int
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

static inline int
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

#define CHECK(call) do {						\
	if ((call) != 0)						\
		fail_msg("%s: %s", #call, store_error(f->s));		\
} while (0)

/* ------------------------------------------------------------------ */
/* comparing images with the model */

static inline void
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

static inline void
check_images(struct fx *f, uint8_t *const want[NDISKS], const char *what)
{
	for (int d = 0; d < NDISKS; d++)
		check_disk(f, d, want[d], what);
}

static inline void
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

/* Start an initial copy of the model's disks (vda, vdb) from a primary
 * journal of EPOCH. */
static inline void
begin_copy(struct fx *f, uint64_t epoch)
{
	struct store_disk disks[NDISKS];

	memset(disks, 0, sizeof(disks));
	strcpy(disks[0].name, "vda");
	strcpy(disks[1].name, "vdb");
	for (int d = 0; d < NDISKS; d++)
		disks[d].size = disk_size[d];
	CHECK(store_begin_sync(f->s, epoch, disks, NDISKS));
}

static inline void
initial_sync(struct fx *f)
{
	struct store_info info;
	uint8_t *buf = malloc(65536);

	assert_non_null(buf);
	begin_copy(f, 0xabcdef);
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

static inline void
batch_free(struct batch *b)
{
	for (size_t i = 0; i < b->n; i++) {
		free(b->data[i]);
		b->data[i] = NULL;	/* the batch is used again */
	}
	b->n = 0;
}

/* Append random writes and zeroes to B, applying them to f->pending. */
static inline void
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
static inline uint64_t
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

static inline void
latest_is_pending(struct fx *f)
{
	for (int d = 0; d < NDISKS; d++)
		memcpy(f->cur[d], f->pending[d], disk_size[d]);
}

/* A point after what was staged: its marker staged and applied, the
 * images checked against the model. */
static inline void
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
static inline uint64_t
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

static inline int
plist_cb(const struct store_point *p, void *arg)
{
	struct plist *l = arg;

	assert_true(l->n < MAXP);
	l->p[l->n++] = *p;
	return 0;
}

static inline void
list_points(struct fx *f, struct plist *l)
{
	l->n = 0;
	CHECK(store_points(f->s, plist_cb, l));
}

static inline void
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

#endif
