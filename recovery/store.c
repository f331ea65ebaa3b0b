/*
 * store.c: the DR site's per-VM store (see store.h): meta, replica images,
 * block and point records, the initial copy, repair on open.  Receiving
 * and applying entries is in apply.c; failover, cancel, commit and
 * retention are in history.c.
 */
#include "store_int.h"
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ------------------------------------------------------------------ */
/* errors, meta */

__thread int in_flusher;	/* errors go to fl_err */

int
sfail(struct store *s, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	if (in_flusher)
		vsnprintf(s->fl_err, sizeof(s->fl_err), fmt, ap);
	else
		vsnprintf(s->err, sizeof(s->err), fmt, ap);
	va_end(ap);
	return -1;
}

const char *
store_error(struct store *s)
{
	return s->err;
}

const char *
store_state_name(enum store_state st)
{
	switch (st) {
	case STORE_NEW:
		return "new";
	case STORE_SYNCING:
		return "syncing";
	case STORE_NORMAL:
		return "replicating";
	case STORE_FAILEDOVER:
		return "failed-over";
	case STORE_COMMITTED:
		return "committed";
	}
	return "unknown";
}

int
save_info(struct store *s, MDB_txn *txn)
{
	uint8_t blob[STORE_MAX_DISKS * 72];
	MDB_val k = { 5, "disks" }, d = { s->info.ndisks * 72, blob };
	int rc;

	for (size_t i = 0; i < s->info.ndisks; i++) {
		memcpy(blob + i * 72, s->info.disks[i].name, 64);
		kv_put64(blob + i * 72 + 64, s->info.disks[i].size);
	}
	if ((rc = kv_put_u64(txn, s->meta, "state", s->info.state)) ||
	    (rc = kv_put_u64(txn, s->meta, "epoch", s->info.epoch)) ||
	    (rc = kv_put_u64(txn, s->meta, "applied", s->info.applied_seq)) ||
	    (rc = kv_put_u64(txn, s->meta, "img", s->img_dur)) ||
	    (rc = kv_put_u64(txn, s->meta, "img_bytes", s->ahead_dur)) ||
	    (rc = kv_put_u64(txn, s->meta, "last_point",
	    s->info.last_point)) ||
	    (rc = kv_put_u64(txn, s->meta, "failover_point",
	    s->info.failover_point)) ||
	    (rc = kv_put_u64(txn, s->meta, "rolling", s->rolling)) ||
	    (rc = kv_put_u64(txn, s->meta, "sync_done", s->info.sync_done)) ||
	    (rc = kv_put_u64(txn, s->meta, "sync_total",
	    s->info.sync_total)) ||
	    (rc = kv_put_u64(txn, s->meta, "sync_disk", s->info.sync_disk)) ||
	    (rc = kv_put_u64(txn, s->meta, "sync_off", s->info.sync_off)) ||
	    (rc = kv_put_u64(txn, s->meta, "sync_base", s->info.sync_base)) ||
	    (rc = mdb_put(txn, s->meta, &k, &d, 0)))
		return rc;
	return 0;
}

static int
load_info(struct store *s, MDB_txn *txn)
{
	MDB_val k = { 5, "disks" }, d;
	uint64_t v;

	memset(&s->info, 0, sizeof(s->info));
	kv_get_u64(txn, s->meta, "state", &v, STORE_NEW);
	s->info.state = (enum store_state)v;
	kv_get_u64(txn, s->meta, "epoch", &s->info.epoch, 0);
	kv_get_u64(txn, s->meta, "applied", &s->info.applied_seq, 0);
	kv_get_u64(txn, s->meta, "img", &s->img_dur, 0);
	kv_get_u64(txn, s->meta, "img_bytes", &s->ahead_dur, 0);
	kv_get_u64(txn, s->meta, "last_point", &s->info.last_point, 0);
	kv_get_u64(txn, s->meta, "failover_point", &s->info.failover_point,
	    0);
	kv_get_u64(txn, s->meta, "rolling", &s->rolling, 0);
	kv_get_u64(txn, s->meta, "sync_done", &s->info.sync_done, 0);
	kv_get_u64(txn, s->meta, "sync_total", &s->info.sync_total, 0);
	kv_get_u64(txn, s->meta, "sync_disk", &v, 0);
	s->info.sync_disk = (uint32_t)v;
	kv_get_u64(txn, s->meta, "sync_off", &s->info.sync_off, 0);
	kv_get_u64(txn, s->meta, "sync_base", &s->info.sync_base, 0);
	if (mdb_get(txn, s->meta, &k, &d) == 0) {
		if (d.mv_size % 72 || d.mv_size / 72 > STORE_MAX_DISKS)
			return MDB_CORRUPTED;
		s->info.ndisks = d.mv_size / 72;
		for (size_t i = 0; i < s->info.ndisks; i++) {
			const uint8_t *p = (uint8_t *)d.mv_data + i * 72;

			memcpy(s->info.disks[i].name, p, 64);
			s->info.disks[i].name[63] = '\0';
			s->info.disks[i].size = kv_get64(p + 64);
		}
	}
	return 0;
}

/* Run a meta update in its own durable transaction. */
int
commit_info(struct store *s)
{
	MDB_txn *txn;
	int rc;

	if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)) != 0)
		return sfail(s, "store: %s", mdb_strerror(rc));
	if ((rc = save_info(s, txn)) != 0) {
		mdb_txn_abort(txn);
		return sfail(s, "store: %s", mdb_strerror(rc));
	}
	if ((rc = mdb_txn_commit(txn)) != 0 ||
	    (rc = mdb_env_sync(s->env, 1)) != 0)
		return sfail(s, "store commit: %s", mdb_strerror(rc));
	return 0;
}

/* ------------------------------------------------------------------ */
/* work shared out over threads */

struct par {
	size_t n;
	size_t next;		/* next item (atomic) */
	void (*fn)(void *, size_t);
	void *arg;
};

static void *
par_worker(void *arg)
{
	struct par *p = arg;
	size_t i;

	while ((i = __atomic_fetch_add(&p->next, 1, __ATOMIC_RELAXED)) < p->n)
		p->fn(p->arg, i);
	return NULL;
}

static void *
par_thread(void *arg)
{
	(void)pthread_setname_np(pthread_self(), "par");
	return par_worker(arg);
}

void
par_for(size_t n, size_t maxth, void (*fn)(void *, size_t), void *arg)
{
	struct par p = { n, 0, fn, arg };
	pthread_t th[PAR_MAX];
	size_t nth = n / 4, started = 0;

	if (nth > maxth)
		nth = maxth;
	if (nth > PAR_MAX)
		nth = PAR_MAX;
	for (; started < nth; started++)
		if (pthread_create(&th[started], NULL, par_thread, &p) != 0)
			break;
	par_worker(&p);	/* this thread too; fewer threads still finish */
	for (size_t i = 0; i < started; i++)
		pthread_join(th[i], NULL);
}

/* ------------------------------------------------------------------ */
/* disk images */

static void
close_disks(struct store *s)
{
	if (s->dio != NULL)	/* nothing in flight on what is closed */
		(void)dio_wait(s->dio, NULL);
	s->sbuf_used = 0;
	for (size_t i = 0; i < STORE_MAX_DISKS; i++) {
		if (s->fds[i] >= 0)
			close(s->fds[i]);
		if (s->dfds[i] >= 0)
			close(s->dfds[i]);
		s->fds[i] = s->dfds[i] = -1;
		free(s->paths[i]);
		s->paths[i] = NULL;
	}
}

static int
open_disks(struct store *s, int create)
{
	close_disks(s);
	for (size_t i = 0; i < s->info.ndisks; i++) {
		const struct store_disk *d = &s->info.disks[i];

		if (asprintf(&s->paths[i], "%s/%s.img", s->dir, d->name) < 0) {
			s->paths[i] = NULL;
			return sfail(s, "out of memory");
		}
		s->fds[i] = open(s->paths[i], O_RDWR | O_CLOEXEC |
		    (create ? O_CREAT : 0), 0600);
		if (s->fds[i] == -1)
			return sfail(s, "open %s: %s", s->paths[i],
			    strerror(errno));
		if (create && (ftruncate(s->fds[i], 0) == -1 ||
		    ftruncate(s->fds[i], (off_t)d->size) == -1))
			return sfail(s, "size %s: %s", s->paths[i],
			    strerror(errno));
		/* where the file system has no O_DIRECT, through the cache */
		s->dfds[i] = open(s->paths[i], O_RDWR | O_CLOEXEC |
		    O_DIRECT);
	}
	return 0;
}

const char *
store_disk_path(struct store *s, size_t i)
{
	return i < s->info.ndisks ? s->paths[i] : NULL;
}

int
pwrite_all(struct store *s, uint32_t disk, uint64_t off, const void *data,
    size_t len)
{
	if (pwrite_full(s->fds[disk], data, len, off) != 0)
		return sfail(s, "write %s: %s", s->paths[disk],
		    strerror(errno));
	return 0;
}

int
pwrite_queue(struct store *s, uint32_t disk, uint64_t off, const void *data,
    size_t len)
{
	if (s->dio == NULL)
		return pwrite_all(s, disk, off, data, len);
	if (dio_pwrite(s->dio, s->dfds[disk], s->fds[disk], data, len,
	    off) != 0)
		return sfail(s, "write %s: %s", s->paths[disk],
		    strerror(errno));
	return 0;
}

int
pwrite_wait(struct store *s)
{
	const char *what = "the images";
	int fd;

	if (s->dio == NULL || dio_wait(s->dio, &fd) == 0)
		return 0;
	for (size_t i = 0; fd >= 0 && i < s->info.ndisks; i++)
		if (s->fds[i] == fd)
			what = s->paths[i];
	return sfail(s, "write %s: %s", what, strerror(errno));
}

int
zero_disk(struct store *s, uint32_t disk, uint64_t off, uint64_t len)
{
	if (zero_range(s->fds[disk], off, len) != 0)
		return sfail(s, "zero %s: %s", s->paths[disk],
		    strerror(errno));
	return 0;
}

void
start_writeback(struct store *s)
{
	/* errors show at the sync that follows */
	for (size_t i = 0; i < s->info.ndisks; i++)
		(void)sync_file_range(s->fds[i], 0, 0, SYNC_FILE_RANGE_WRITE);
}

int
sync_disks(struct store *s)
{
	for (size_t i = 0; i < s->info.ndisks; i++)
		if (fdatasync(s->fds[i]) == -1)
			return sfail(s, "sync %s: %s", s->paths[i],
			    strerror(errno));
	return 0;
}

/* ------------------------------------------------------------------ */
/* block records (undo and redo) */

size_t
br_prefix(uint8_t *key, const uint8_t *pre, size_t plen, uint32_t disk,
    uint64_t blk)
{
	if (plen)
		memcpy(key, pre, plen);
	kv_put32(key + plen, disk);
	kv_put64(key + plen + 4, blk);
	return plen + 12;
}

/* Is there a record for (pre, disk, blk)?  1 yes, 0 no, -1 error. */
int
br_exists_at(MDB_cursor *c, const uint8_t *pre, size_t plen, uint32_t disk,
    uint64_t blk)
{
	uint8_t key[32];
	size_t kl = br_prefix(key, pre, plen, disk, blk);
	MDB_val k = { kl, key }, d;
	int rc;

	rc = mdb_cursor_get(c, &k, &d, MDB_SET_RANGE);
	if (rc == 0 && k.mv_size > kl && memcmp(k.mv_data, key, kl) == 0)
		return 1;
	return rc != 0 && rc != MDB_NOTFOUND ? -1 : 0;
}

int
br_exists(MDB_txn *txn, MDB_dbi dbi, const uint8_t *pre, size_t plen,
    uint32_t disk, uint64_t blk)
{
	MDB_cursor *c;
	int found;

	if (mdb_cursor_open(txn, dbi, &c) != 0)
		return -1;
	found = br_exists_at(c, pre, plen, disk, blk);
	mdb_cursor_close(c);
	return found;
}

int
block_is_zero(const uint8_t *p, size_t len)
{
	static const uint8_t zero[STORE_BLOCK];

	return len <= STORE_BLOCK ? memcmp(p, zero, len) == 0 : 0;
}

int
br_put(MDB_txn *txn, MDB_dbi dbi, const uint8_t *pre, size_t plen,
    uint32_t disk, uint64_t blk, const uint8_t *data, size_t len)
{
	uint8_t key[32 + KV_INLINE_MAX];
	size_t kl = br_prefix(key, pre, plen, disk, blk), inl = 0;
	MDB_val k, d;

	if (block_is_zero(data, len)) {
		key[kl++] = BR_ZERO;
		kv_put32(key + kl, (uint32_t)len);
		kl += 4;
		d.mv_size = 0;
		d.mv_data = (void *)"";
	} else {
		key[kl++] = 0;
		inl = kv_inline_len(len);
		memcpy(key + kl, data, inl);
		kl += inl;
		d.mv_size = len - inl;
		d.mv_data = (void *)(data + inl);
	}
	k.mv_size = kl;
	k.mv_data = key;
	return mdb_put(txn, dbi, &k, &d, 0);
}

int
br_put_ref(MDB_txn *txn, MDB_dbi dbi, const uint8_t *pre, size_t plen,
    uint32_t disk, uint64_t blk, uint64_t off, size_t len)
{
	uint8_t key[32], val[8];
	size_t kl = br_prefix(key, pre, plen, disk, blk);
	MDB_val k, d = { 8, val };

	key[kl++] = BR_REF;
	kv_put32(key + kl, (uint32_t)len);
	k.mv_size = kl + 4;
	k.mv_data = key;
	kv_put64(val, off);
	return mdb_put(txn, dbi, &k, &d, 0);
}

/* Decode a record at (k, d) with prefix length PLEN into buf. */
int
br_decode(const MDB_val *k, const MDB_val *d, size_t plen,
    uint32_t *disk, uint64_t *blk, uint8_t *buf, size_t *len,
    struct ul_rd *defer)
{
	const uint8_t *p = k->mv_data;
	size_t hl = plen + 13;

	if (k->mv_size < hl)
		return -1;
	*disk = kv_get32(p + plen);
	*blk = kv_get64(p + plen + 4);
	if (p[plen + 12] == BR_ZERO || p[plen + 12] == BR_REF) {
		if (k->mv_size != hl + 4)
			return -1;
		*len = kv_get32(p + hl);
		if (*len > STORE_BLOCK)
			return -1;
		if (p[plen + 12] == BR_ZERO) {
			memset(buf, 0, *len);
			return 0;
		}
		if (d->mv_size != 8)
			return -1;
		if (defer == NULL)
			return -1;
		defer->off = kv_get64(d->mv_data);
		defer->buf = buf;
		defer->len = *len;
		return 1;
	}
	*len = k->mv_size - hl + d->mv_size;
	if (*len > STORE_BLOCK)
		return -1;
	memcpy(buf, p + hl, k->mv_size - hl);
	memcpy(buf + k->mv_size - hl, d->mv_data, d->mv_size);
	return 0;
}

/* ------------------------------------------------------------------ */
/* points */

static void
pt_encode(uint8_t *v, size_t *vl, const struct store_point *p, int merging)
{
	size_t ll = strnlen(p->label, JOURNAL_LABEL_MAX);

	kv_put64(v, p->seq);
	kv_put64(v + 8, (uint64_t)p->time_ms);
	v[16] = (uint8_t)p->kind;
	kv_put64(v + 17, p->bytes);
	v[25] = (uint8_t)merging;
	memset(v + 26, 0, 8);
	memcpy(v + PV_HDR, p->label, ll);
	*vl = PV_HDR + ll;
}

static int
pt_decode(const MDB_val *k, const MDB_val *d, struct store_point *p)
{
	const uint8_t *v = d->mv_data;
	size_t ll;

	if (k->mv_size != 8 || d->mv_size < PV_HDR)
		return -1;
	memset(p, 0, sizeof(*p));
	p->id = kv_get64(k->mv_data);
	p->seq = kv_get64(v);
	p->time_ms = (int64_t)kv_get64(v + 8);
	p->kind = (enum point_kind)v[16];
	p->bytes = kv_get64(v + 17);
	ll = d->mv_size - PV_HDR;
	if (ll > JOURNAL_LABEL_MAX)
		ll = JOURNAL_LABEL_MAX;
	memcpy(p->label, v + PV_HDR, ll);
	return v[25];	/* merging flag */
}

int
pt_put(MDB_txn *txn, MDB_dbi dbi, const struct store_point *p, int merging)
{
	uint8_t key[8], val[PV_HDR + JOURNAL_LABEL_MAX];
	size_t vl;
	MDB_val k = { 8, key }, d;

	kv_put64(key, p->id);
	pt_encode(val, &vl, p, merging);
	d.mv_size = vl;
	d.mv_data = val;
	return mdb_put(txn, dbi, &k, &d, 0);
}

/* Load every point row (merging ones too) into a malloc'd array. */
int
pt_load(struct store *s, struct store_point **out, uint8_t **merging,
    size_t *n)
{
	MDB_txn *txn;
	MDB_cursor *c;
	MDB_val k, d;
	size_t cap = 0;
	int rc, op = MDB_FIRST;

	*out = NULL;
	*merging = NULL;
	*n = 0;
	if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)) != 0)
		return sfail(s, "points: %s", mdb_strerror(rc));
	if ((rc = mdb_cursor_open(txn, s->points, &c)) != 0) {
		mdb_txn_abort(txn);
		return sfail(s, "points: %s", mdb_strerror(rc));
	}
	while (mdb_cursor_get(c, &k, &d, op) == 0) {
		struct store_point p;
		int m;

		op = MDB_NEXT;
		if ((m = pt_decode(&k, &d, &p)) < 0)
			continue;
		if (*n == cap) {
			size_t ncap = cap ? cap * 2 : 64;
			struct store_point *np = realloc(*out,
			    ncap * sizeof(**out));
			uint8_t *nm = realloc(*merging, ncap);

			if (np)
				*out = np;
			if (nm)
				*merging = nm;
			if (np == NULL || nm == NULL) {
				rc = ENOMEM;
				break;
			}
			cap = ncap;
		}
		(*out)[*n] = p;
		(*merging)[*n] = (uint8_t)m;
		(*n)++;
	}
	mdb_cursor_close(c);
	mdb_txn_abort(txn);
	if (rc == ENOMEM) {
		free(*out);
		free(*merging);
		*out = NULL;
		*merging = NULL;
		return sfail(s, "out of memory");
	}
	return 0;
}

int
store_points(struct store *s, int (*fn)(const struct store_point *, void *),
    void *arg)
{
	struct store_point *pts;
	uint8_t *merging;
	size_t n;

	if (pt_load(s, &pts, &merging, &n) != 0)
		return -1;
	for (size_t i = 0; i < n; i++)
		if (!merging[i] && fn(&pts[i], arg) != 0)
			break;
	free(pts);
	free(merging);
	return 0;
}

int
store_find_point(struct store *s, uint64_t id, struct store_point *out)
{
	MDB_txn *txn;
	uint8_t key[8];
	MDB_val k = { 8, key }, d;
	int rc, found = 0;

	if (mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn) != 0)
		return sfail(s, "points: cannot begin");
	kv_put64(key, id);
	rc = mdb_get(txn, s->points, &k, &d);
	if (rc == 0 && pt_decode(&k, &d, out) == 0)
		found = 1;
	mdb_txn_abort(txn);
	return found;
}

/* ------------------------------------------------------------------ */
/* open, close */

static int repair(struct store *s);

struct store *
store_open(const char *dir, char *err, size_t errlen)
{
	struct store *s;
	MDB_txn *txn = NULL;
	char *path = NULL;
	int rc;

	if ((s = calloc(1, sizeof(*s))) == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	for (size_t i = 0; i < STORE_MAX_DISKS; i++)
		s->fds[i] = s->dfds[i] = -1;
	s->ul_wfd = -1;
	s->dio = dio_open(DIO_DEPTH, DIO_MAX);	/* NULL: every write buffered */
	if ((s->dir = strdup(dir)) == NULL ||
	    posix_memalign((void **)&s->buf, DIO_BLOCK,
	    CHUNK_BYTES + STORE_BLOCK) != 0) {
		s->buf = NULL;
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	if (mkdir(dir, 0700) == -1 && errno != EEXIST) {
		snprintf(err, errlen, "mkdir %s: %s", dir, strerror(errno));
		goto fail;
	}
	if (asprintf(&path, "%s/store", dir) < 0) {
		path = NULL;
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	if ((rc = kv_env_open(&s->env, path, 4, STORE_MAP, MDB_NOSYNC)) != 0) {
		snprintf(err, errlen, "store %s: %s", path, mdb_strerror(rc));
		goto fail;
	}
	if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)) != 0 ||
	    (rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &s->meta)) != 0 ||
	    (rc = mdb_dbi_open(txn, "points", MDB_CREATE, &s->points)) != 0 ||
	    (rc = mdb_dbi_open(txn, "undo", MDB_CREATE, &s->undo)) != 0 ||
	    (rc = mdb_dbi_open(txn, "redo", MDB_CREATE, &s->redo)) != 0 ||
	    (rc = load_info(s, txn)) != 0 ||
	    (rc = mdb_txn_commit(txn)) != 0) {
		if (txn && rc != 0)
			mdb_txn_abort(txn);
		snprintf(err, errlen, "store %s: %s", path, mdb_strerror(rc));
		goto fail;
	}
	free(path);
	if (asprintf(&path, "%s/stage", dir) < 0) {
		path = NULL;
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	if ((s->stage = journal_open(path, err, errlen)) == NULL)
		goto fail;
	free(path);
	path = NULL;
	/* what was applied ahead of the latest point and not made durable
	 * before a restart comes again, from the stage or the primary, and
	 * is applied again: idempotent */
	if (s->img_dur <= s->info.applied_seq) {
		s->img_dur = s->info.applied_seq;
		s->ahead_dur = 0;
	}
	s->img_seq = s->img_dur;
	s->ahead_bytes = s->ahead_dur;
	s->stage_pending = journal_bytes(s->stage);
	s->cur_disk = s->info.sync_disk;
	s->cur_off = s->info.sync_off;
	s->cur_base = s->info.sync_base;
	if (ul_open(s) != 0 || open_disks(s, 0) != 0 || repair(s) != 0) {
		snprintf(err, errlen, "%s", s->err);
		goto fail;
	}
	return s;
fail:
	free(path);
	store_close(s);
	return NULL;
}

void
store_close(struct store *s)
{
	if (s == NULL)
		return;
	mem_stop(s);	/* what it did not apply comes again */
	dio_close(s->dio);
	s->dio = NULL;
	dio_reader_close(s->rdio);
	s->rdio = NULL;
	close_disks(s);
	ul_close(s);
	if (s->stage)
		journal_close(s->stage);
	if (s->env) {
		mdb_env_sync(s->env, 1);
		mdb_env_close(s->env);
	}
	free(s->buf);
	free(s->sbuf);
	for (int i = 0; i < MEM_CHUNKS; i++) {
		free(s->mc[i].e);
		free(s->mc[i].buf);
	}
	free(s->dir);
	free(s);
}

int
store_info(struct store *s, struct store_info *out)
{
	*out = s->info;
	return 0;
}

uint64_t
store_staged_bytes(struct store *s)
{
	uint64_t n = journal_bytes(s->stage);

	for (int i = 0; i < MEM_CHUNKS; i++)
		n += s->mc[i].used;
	return n;
}

uint64_t
store_held_seq(struct store *s)
{
	uint64_t st = journal_last_seq(s->stage);

	if (st < s->info.applied_seq)
		st = s->info.applied_seq;
	return st > s->img_dur ? st : s->img_dur;
}

/* ------------------------------------------------------------------ */
/* initial copy */

static int
drop_db(struct store *s, MDB_txn *txn, MDB_dbi dbi)
{
	int rc = mdb_drop(txn, dbi, 0);

	return rc ? sfail(s, "drop: %s", mdb_strerror(rc)) : 0;
}

int
store_begin_sync(struct store *s, uint64_t epoch,
    const struct store_disk *disks, size_t ndisks)
{
	MDB_txn *txn;
	int rc;

	if (ndisks == 0 || ndisks > STORE_MAX_DISKS)
		return sfail(s, "%zu disks: 1 to %d allowed", ndisks,
		    STORE_MAX_DISKS);
	mem_wait(s);
	mem_drop(s);	/* of the lineage being forgotten */
	s->logged = 0;
	if (s->info.state == STORE_FAILEDOVER ||
	    s->info.state == STORE_COMMITTED)
		return sfail(s, "replica is %s",
		    store_state_name(s->info.state));
	if (journal_reset(s->stage) != 0)
		return sfail(s, "%s", journal_error(s->stage));
	s->info.state = STORE_SYNCING;
	s->info.epoch = epoch;
	s->info.applied_seq = 0;
	s->img_seq = s->img_dur = 0;
	s->ahead_bytes = s->ahead_dur = s->stage_pending = 0;
	s->gap = 0;
	s->info.last_point = 0;
	s->info.failover_point = 0;
	s->info.sync_done = 0;
	s->info.sync_total = 0;
	s->info.sync_disk = 0;
	s->info.sync_off = 0;
	s->info.sync_base = 0;
	s->cur_disk = 0;
	s->cur_off = 0;
	s->cur_base = 0;
	s->rolling = 0;
	s->info.ndisks = ndisks;
	memcpy(s->info.disks, disks, ndisks * sizeof(*disks));
	if (open_disks(s, 1) != 0)
		return -1;
	if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)) != 0)
		return sfail(s, "store: %s", mdb_strerror(rc));
	if (drop_db(s, txn, s->points) || drop_db(s, txn, s->undo) ||
	    drop_db(s, txn, s->redo) || (rc = ul_reset(s, txn)) != 0 ||
	    (rc = save_info(s, txn)) != 0) {
		mdb_txn_abort(txn);
		return rc ? sfail(s, "store: %s", mdb_strerror(rc)) : -1;
	}
	if ((rc = mdb_txn_commit(txn)) != 0 ||
	    (rc = mdb_env_sync(s->env, 1)) != 0)
		return sfail(s, "store: %s", mdb_strerror(rc));
	ul_remove_all(s);
	return 0;
}

int
check_range(struct store *s, uint32_t disk, uint64_t off, uint64_t len)
{
	if (disk >= s->info.ndisks)
		return sfail(s, "disk %u out of range (%zu disks)", disk,
		    s->info.ndisks);
	if (off > s->info.disks[disk].size ||
	    len > s->info.disks[disk].size - off)
		return sfail(s, "range %llu+%llu beyond disk %s of %llu bytes",
		    (unsigned long long)off, (unsigned long long)len,
		    s->info.disks[disk].name,
		    (unsigned long long)s->info.disks[disk].size);
	return 0;
}

/* Wait for the initial copy's writes queued around the page cache. */
static int
sync_wait(struct store *s)
{
	s->sbuf_used = 0;
	return pwrite_wait(s);
}

/*
 * The initial copy's data goes around the page cache: copied into the
 * staging buffer (its pages are reused; written through the cache, the
 * copy into a new page of the cache took two thirds of the DR daemon's
 * CPU), queued in pieces the writer takes whole (merged again into
 * larger writes), and waited for when the buffer is full, before
 * anything else, and before the cursor is made durable.
 */
int
store_sync_write(struct store *s, uint32_t disk, uint64_t off, uint32_t len,
    const void *data)
{
	if (s->info.state != STORE_SYNCING)
		return sfail(s, "no initial copy under way");
	if (check_range(s, disk, off, len) != 0)
		return -1;
	if (data == NULL || s->dio == NULL || s->dfds[disk] < 0 ||
	    off % DIO_BLOCK || len % DIO_BLOCK || len > SYNC_STAGE) {
		if (sync_wait(s) != 0)
			return -1;
		return data ? pwrite_all(s, disk, off, data, len) :
		    zero_disk(s, disk, off, len);
	}
	if (s->sbuf == NULL && posix_memalign((void **)&s->sbuf, DIO_BLOCK,
	    SYNC_STAGE) != 0) {
		s->sbuf = NULL;
		return sfail(s, "out of memory");
	}
	if (s->sbuf_used + len > SYNC_STAGE && sync_wait(s) != 0)
		return -1;
	memcpy(s->sbuf + s->sbuf_used, data, len);
	for (uint32_t done = 0; done < len; done += DIO_MAX) {
		uint32_t n = len - done < DIO_MAX ? len - done : DIO_MAX;

		if (pwrite_queue(s, disk, off + done, s->sbuf + s->sbuf_used +
		    done, n) != 0)
			return -1;
	}
	s->sbuf_used += len;
	return 0;
}

int
store_sync_progress(struct store *s, uint64_t done, uint64_t total)
{
	s->info.sync_done = done;
	s->info.sync_total = total;
	return 0;
}

int
store_sync_cursor(struct store *s, uint32_t disk, uint64_t off,
    uint64_t base)
{
	if (s->info.state != STORE_SYNCING)
		return sfail(s, "no initial copy under way");
	s->cur_disk = disk;
	s->cur_off = off;
	s->cur_base = base;
	return 0;
}

uint64_t
store_sync_base(struct store *s)
{
	return s->cur_base;
}

int
store_sync_checkpoint(struct store *s)
{
	if (s->info.state != STORE_SYNCING)
		return 0;
	if (s->cur_disk == s->info.sync_disk && s->cur_off == s->info.sync_off &&
	    s->cur_base == s->info.sync_base)
		return 0;
	if (sync_wait(s) != 0 || sync_disks(s) != 0)
		return -1;
	s->info.sync_disk = s->cur_disk;
	s->info.sync_off = s->cur_off;
	s->info.sync_base = s->cur_base;
	return commit_info(s);
}

int
store_sync_done(struct store *s, uint64_t base_seq)
{
	if (s->info.state != STORE_SYNCING)
		return sfail(s, "no initial copy under way");
	if (sync_wait(s) != 0 || sync_disks(s) != 0)
		return -1;
	s->info.state = STORE_NORMAL;
	s->info.applied_seq = base_seq;
	s->img_seq = s->img_dur = base_seq;
	s->ahead_bytes = s->ahead_dur = s->stage_pending = 0;
	s->info.sync_done = s->info.sync_total;
	return commit_info(s);
}

/* ------------------------------------------------------------------ */
/* repair on open */

static int
repair(struct store *s)
{
	if (s->rolling && s->info.state == STORE_FAILEDOVER) {
		/* a failover playback was cut short: back to latest */
		if (restore_redo(s) != 0)
			return -1;
	}
	if (finish_merges(s) != 0)
		return -1;
	return store_apply(s) < 0 ? -1 : 0;
}
