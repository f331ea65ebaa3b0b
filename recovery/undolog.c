/*
 * undolog.c: the data of undo records (before-images), in segment files
 * under DIR/undo written around the page cache (O_DIRECT where the file
 * system has it).  An undo record in LMDB holds the offset of its block
 * here (BR_REF); LMDB stays the index and the one place of truth.
 *
 * Blocks are appended at the head, a 4 KiB slot each, and synced before
 * the transaction that refers to them commits: a record never points at
 * data that a crash can take away.  The head (meta "uhead") only grows,
 * so a slot is never written twice while anything may refer to it; a
 * crash leaves at most unreferenced slots past the committed head, which
 * the next append overwrites.  Slots freed by retention are punched out
 * after their transaction commits (the list is kept in meta "upunch" so
 * that a crash before the punch repeats it on open), and a segment left
 * with no data is removed.  When no undo record remains (commit, a new
 * initial copy) the head returns to 0 and every segment is removed.
 */
#include "store_int.h"
#include "fileio.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#define UL_SEG_BYTES	(64ull << 20)	/* one segment file */
#define UL_PUNCH_MAX	8192		/* slots freed per transaction */

static const MDB_val k_head = { 5, "uhead" };
static const MDB_val k_punch = { 6, "upunch" };

static int
seg_path(struct store *s, uint64_t seg, char *path, size_t len)
{
	int n = snprintf(path, len, "%s/%016llx", s->ul_dir,
	    (unsigned long long)seg);

	return n < 0 || (size_t)n >= len ? -1 : 0;
}

/* The segment of SEG open for writing (created if need be). */
static int
seg_wfd(struct store *s, uint64_t seg)
{
	char path[PATH_MAX];

	if (s->ul_wfd >= 0 && s->ul_wseg == seg)
		return s->ul_wfd;
	if (s->ul_wfd >= 0) {
		/* what went to the last one is synced before moving on */
		if (fdatasync(s->ul_wfd) == -1)
			return sfail(s, "undo: sync: %s", strerror(errno));
		close(s->ul_wfd);
		s->ul_wfd = -1;
	}
	if (seg_path(s, seg, path, sizeof(path)) != 0)
		return sfail(s, "undo: path too long");
	s->ul_wfd = open_direct(path, O_WRONLY | O_CREAT);
	if (s->ul_wfd == -1)
		return sfail(s, "undo: open %s: %s", path, strerror(errno));
	s->ul_wseg = seg;
	/* the segment's name is as durable as what it holds */
	if (fsync_dir(s->ul_dir) != 0)
		return sfail(s, "undo: sync %s: %s", s->ul_dir,
		    strerror(errno));
	return s->ul_wfd;
}

/* Write IOV[0..N) (4 KiB each) at OFF of FD, all of it. */
static int
writev_full(int fd, struct iovec *iov, size_t n, uint64_t off)
{
	while (n > 0) {
		int cnt = n < IOV_MAX ? (int)n : IOV_MAX;
		ssize_t w = pwritev(fd, iov, cnt, (off_t)off);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -1;
		}
		if (w == 0) {
			errno = EIO;
			return -1;
		}
		while (n > 0 && (size_t)w >= iov->iov_len) {
			w -= (ssize_t)iov->iov_len;
			off += iov->iov_len;
			iov++;
			n--;
		}
		/* a write that stopped inside a block: that block again,
		 * whole (direct I/O takes aligned writes only) */
	}
	return 0;
}

int
ul_append(struct store *s, struct iovec *iov, size_t n, uint64_t *first)
{
	uint64_t at = s->ul_head;
	size_t i = 0;

	*first = at;
	while (i < n) {
		uint64_t seg = at / UL_SEG_BYTES;
		size_t room = (size_t)((UL_SEG_BYTES - at % UL_SEG_BYTES) /
		    STORE_BLOCK), cnt = n - i < room ? n - i : room;
		int fd = seg_wfd(s, seg);

		if (fd < 0)
			return -1;
		if (writev_full(fd, iov + i, cnt, at % UL_SEG_BYTES) != 0)
			return sfail(s, "undo: write: %s", strerror(errno));
		i += cnt;
		at += (uint64_t)cnt * STORE_BLOCK;
	}
	if (n > 0 && fdatasync(s->ul_wfd) == -1)
		return sfail(s, "undo: sync: %s", strerror(errno));
	s->ul_head = at;
	return 0;
}

int
ul_put_head(struct store *s, MDB_txn *txn)
{
	uint8_t v[8];
	MDB_val d = { 8, v };

	kv_put64(v, s->ul_head);
	return mdb_put(txn, s->meta, (MDB_val *)&k_head, &d, 0);
}

/*
 * Read many slots at once (a failover's batch): sorted by offset, slots
 * next to each other read with one preadv, by up to UL_THREADS threads.
 * Blocks captured together lie together in the log, so a point's blocks
 * come back in long runs even where the point's writes were random.
 */
#define UL_THREADS	8
#define UL_RUN		256	/* slots per preadv */
#define UL_OPEN		32	/* segments open at once */

struct ul_run {
	int fd;
	uint64_t seg;
	uint64_t off;		/* in the segment */
	size_t first, cnt;	/* slots v[first..first+cnt) */
	int err;
};

struct ul_rctx {
	struct ul_rd *v;
	struct ul_run *runs;
};

static int
rd_cmp(const void *a, const void *b)
{
	const struct ul_rd *x = a, *y = b;

	return x->off < y->off ? -1 : x->off > y->off;
}

static void
rd_one(void *arg, size_t i)
{
	struct ul_rctx *r = arg;
	struct ul_run *u = &r->runs[i];
	struct iovec iov[UL_RUN];
	size_t total = 0;
	ssize_t got;

	for (size_t k = 0; k < u->cnt; k++) {
		iov[k].iov_base = r->v[u->first + k].buf;
		iov[k].iov_len = r->v[u->first + k].len;
		total += iov[k].iov_len;
	}
	do
		got = preadv(u->fd, iov, (int)u->cnt, (off_t)u->off);
	while (got < 0 && errno == EINTR);
	if (got == (ssize_t)total)
		return;
	/* short (or failed): slot by slot */
	for (size_t k = 0; k < u->cnt && !u->err; k++)
		if (pread_exact(u->fd, iov[k].iov_base, iov[k].iov_len,
		    u->off + k * STORE_BLOCK) != 0)
			u->err = errno ? errno : EIO;
}

/* Read V[0..N) (sorted), which spans at most UL_OPEN segments. */
static int
read_window(struct store *s, struct ul_rd *v, size_t n)
{
	struct ul_run *runs;
	struct { uint64_t seg; int fd; } fds[UL_OPEN];
	size_t nruns = 0, nfds = 0;
	struct ul_rctx r;
	int ret = -1;

	if ((runs = calloc(n, sizeof(*runs))) == NULL)
		return sfail(s, "out of memory");
	for (size_t i = 0; i < n; i++) {
		uint64_t seg = v[i].off / UL_SEG_BYTES;
		struct ul_run *u = nruns ? &runs[nruns - 1] : NULL;

		if (u && seg == u->seg &&
		    v[i].off == v[i - 1].off + STORE_BLOCK &&
		    v[i - 1].len == STORE_BLOCK && u->cnt < UL_RUN) {
			u->cnt++;
			continue;
		}
		if (nfds == 0 || fds[nfds - 1].seg != seg) {
			char path[PATH_MAX];

			if (seg_path(s, seg, path, sizeof(path)) != 0) {
				sfail(s, "undo: path too long");
				goto out;
			}
			if ((fds[nfds].fd = open(path, O_RDONLY |
			    O_CLOEXEC)) == -1) {
				sfail(s, "undo: open %s: %s", path,
				    strerror(errno));
				goto out;
			}
			fds[nfds++].seg = seg;
		}
		runs[nruns].fd = fds[nfds - 1].fd;
		runs[nruns].seg = seg;
		runs[nruns].off = v[i].off % UL_SEG_BYTES;
		runs[nruns].first = i;
		runs[nruns++].cnt = 1;
	}
	r.v = v;
	r.runs = runs;
	par_for(nruns, UL_THREADS, rd_one, &r);
	ret = 0;
	for (size_t i = 0; i < nruns && ret == 0; i++)
		if (runs[i].err)
			ret = sfail(s, "undo: read segment %016llx at %llu: %s",
			    (unsigned long long)runs[i].seg,
			    (unsigned long long)runs[i].off,
			    runs[i].err == EIO ?
			    "short (the segment lost data)" :
			    strerror(runs[i].err));
out:
	for (size_t i = 0; i < nfds; i++)
		close(fds[i].fd);
	free(runs);
	return ret;
}

int
ul_read_many(struct store *s, struct ul_rd *v, size_t n)
{
	size_t from = 0;

	if (n == 0)
		return 0;
	qsort(v, n, sizeof(*v), rd_cmp);
	for (size_t i = 0; i < n; i++)
		if (v[i].len > STORE_BLOCK || v[i].off % STORE_BLOCK != 0 ||
		    v[i].off >= s->ul_head)
			return sfail(s, "undo: record at %llu outside the log "
			    "(head %llu)", (unsigned long long)v[i].off,
			    (unsigned long long)s->ul_head);
	/* a window of segments at a time: a point merged over a long
	 * history may have blocks in many of them */
	while (from < n) {
		size_t to = from, nseg = 0;
		uint64_t last = UINT64_MAX;

		for (; to < n; to++) {
			uint64_t seg = v[to].off / UL_SEG_BYTES;

			if (seg != last && ++nseg > UL_OPEN)
				break;
			last = seg;
		}
		if (read_window(s, v + from, to - from) != 0)
			return -1;
		from = to;
	}
	return 0;
}

int
ul_free(struct store *s, uint64_t off)
{
	if (s->ul_nfreed == UL_PUNCH_MAX)
		return MDB_BAD_VALSIZE;	/* callers free fewer per txn */
	if (s->ul_freed == NULL &&
	    (s->ul_freed = malloc(UL_PUNCH_MAX * sizeof(uint64_t))) == NULL)
		return ENOMEM;
	s->ul_freed[s->ul_nfreed++] = off;
	return 0;
}

int
ul_put_freed(struct store *s, MDB_txn *txn)
{
	uint8_t *v;
	MDB_val d;
	int rc;

	if (s->ul_nfreed == 0)
		return 0;
	if ((v = malloc(s->ul_nfreed * 8)) == NULL)
		return ENOMEM;
	for (size_t i = 0; i < s->ul_nfreed; i++)
		kv_put64(v + i * 8, s->ul_freed[i]);
	d.mv_size = s->ul_nfreed * 8;
	d.mv_data = v;
	rc = mdb_put(txn, s->meta, (MDB_val *)&k_punch, &d, 0);
	free(v);
	return rc;
}

/* If segment SEG is behind the head and holds no data, remove it. */
static void
drop_if_empty(struct store *s, uint64_t seg)
{
	char path[PATH_MAX];
	int fd;

	if (seg == s->ul_head / UL_SEG_BYTES ||
	    seg_path(s, seg, path, sizeof(path)) != 0 ||
	    (fd = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return;
	if (lseek(fd, 0, SEEK_DATA) == -1 && errno == ENXIO)
		unlink(path);
	close(fd);
}

/* Punch out OFF[0..N) (sorted) and remove segments left with no data. */
static void
punch(struct store *s, const uint64_t *off, size_t n)
{
	uint64_t seg = UINT64_MAX;
	int fd = -1;

	for (size_t i = 0; i < n; i++) {
		char path[PATH_MAX];

		if (off[i] / UL_SEG_BYTES != seg) {
			if (fd >= 0) {
				close(fd);
				drop_if_empty(s, seg);
			}
			seg = off[i] / UL_SEG_BYTES;
			fd = seg_path(s, seg, path, sizeof(path)) == 0 ?
			    open(path, O_WRONLY | O_CLOEXEC) : -1;
		}
		/* the space comes back (a file system without holes keeps
		 * it until every undo record goes, at commit) */
		if (fd >= 0)
			(void)fallocate(fd, FALLOC_FL_PUNCH_HOLE |
			    FALLOC_FL_KEEP_SIZE,
			    (off_t)(off[i] % UL_SEG_BYTES), STORE_BLOCK);
	}
	if (fd >= 0) {
		close(fd);
		drop_if_empty(s, seg);
	}
}

static int
u64_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

void
ul_punch_freed(struct store *s)
{
	if (s->ul_nfreed == 0)
		return;
	qsort(s->ul_freed, s->ul_nfreed, sizeof(uint64_t), u64_cmp);
	punch(s, s->ul_freed, s->ul_nfreed);
	s->ul_nfreed = 0;
}

void
ul_forget_freed(struct store *s)
{
	s->ul_nfreed = 0;
}

int
ul_reset(struct store *s, MDB_txn *txn)
{
	uint8_t v[8] = { 0 };
	MDB_val d = { 8, v };
	int rc;

	/* the head in memory stays until the commit is durable: if the
	 * transaction fails, every record still points into the log */
	if ((rc = mdb_put(txn, s->meta, (MDB_val *)&k_head, &d, 0)) != 0)
		return rc;
	rc = mdb_del(txn, s->meta, (MDB_val *)&k_punch, NULL);
	return rc == MDB_NOTFOUND ? 0 : rc;
}

void
ul_remove_all(struct store *s)
{
	DIR *d;
	struct dirent *de;
	char path[PATH_MAX];

	if (s->ul_wfd >= 0)
		close(s->ul_wfd);
	s->ul_wfd = -1;
	s->ul_head = 0;
	s->ul_nfreed = 0;
	if ((d = opendir(s->ul_dir)) == NULL)
		return;
	while ((de = readdir(d)) != NULL) {
		if (strlen(de->d_name) != 16 ||
		    strspn(de->d_name, "0123456789abcdef") != 16)
			continue;
		if (snprintf(path, sizeof(path), "%s/%s", s->ul_dir,
		    de->d_name) < (int)sizeof(path))
			unlink(path);
	}
	closedir(d);
}

int
ul_open(struct store *s)
{
	MDB_txn *txn;
	MDB_val d;
	uint64_t *off = NULL;
	size_t n = 0;
	int rc;

	s->ul_wfd = -1;
	if (asprintf(&s->ul_dir, "%s/undo", s->dir) < 0) {
		s->ul_dir = NULL;
		return sfail(s, "out of memory");
	}
	if (mkdir(s->ul_dir, 0700) == -1 && errno != EEXIST)
		return sfail(s, "mkdir %s: %s", s->ul_dir, strerror(errno));
	if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)) != 0)
		return sfail(s, "undo: %s", mdb_strerror(rc));
	rc = mdb_get(txn, s->meta, (MDB_val *)&k_head, &d);
	if (rc == 0 && d.mv_size != 8)
		rc = MDB_CORRUPTED;
	if (rc == 0)
		s->ul_head = kv_get64(d.mv_data);
	if (rc == 0 || rc == MDB_NOTFOUND)
		rc = mdb_get(txn, s->meta, (MDB_val *)&k_punch, &d);
	if (rc == 0 && d.mv_size % 8 != 0)
		rc = MDB_CORRUPTED;
	if (rc == 0 && (n = d.mv_size / 8) > 0) {
		if ((off = malloc(n * sizeof(*off))) == NULL)
			rc = ENOMEM;
		for (size_t i = 0; off != NULL && i < n; i++)
			off[i] = kv_get64((const uint8_t *)d.mv_data + i * 8);
	}
	mdb_txn_abort(txn);
	if (rc != 0 && rc != MDB_NOTFOUND) {
		free(off);
		return sfail(s, "undo: head or punch list: %s",
		    mdb_strerror(rc));
	}
	if (s->ul_head == 0) {
		/* orphans of a crash, or of a reset whose commit went
		 * through */
		ul_remove_all(s);
	} else if (off != NULL) {
		/* slots freed just before a crash: punching again is
		 * harmless, since the head never comes back over them */
		qsort(off, n, sizeof(*off), u64_cmp);
		punch(s, off, n);
	}
	free(off);
	return 0;
}

void
ul_close(struct store *s)
{
	if (s->ul_wfd >= 0)
		close(s->ul_wfd);
	s->ul_wfd = -1;
	free(s->ul_freed);
	free(s->ul_dir);
}
