/* journal.c: the primary's LMDB write journal (see journal.h). */
#include "journal.h"
#include "jlog.h"
#include "kv.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

/*
 * Log key: seq(8) type(1) disk(4) offset(8) length(4) inline(2) then the
 * inline data bytes.  Write data over a quarter page lies in the data
 * log (jlog.h): inline is LK_INLOG and the value is its offset(8) (LK_CONV
 * for a placed entry given its data later, journal_convert: its data lies
 * after that of entries with later sequences, and the "conv" table keeps
 * its offset(8) -> seq(8) so that the log's release leaves it).  Smaller
 * data is the value (records of older versions may split data between key
 * and value; they still read).  A point's value is id(8) time(8) kind(1)
 * label.  Keys start with the big-endian sequence, so they sort by it and
 * every append is an MDB_APPEND.
 */
#define LK_HDR 27
#define LK_INLOG 0xffff
#define LK_CONV 0xfffe
#define JM_DHEAD "dhead"	/* the data log's head */
#define JOURNAL_MAP (1ull << 40)	/* address space only; the file grows */

struct journal {
	MDB_env *env;
	MDB_dbi log, meta, points, dirty, conv;
	MDB_txn *txn;		/* open write transaction, or NULL */
	int txn_err;		/* sticky error of the open transaction */
	uint64_t last_seq;	/* committed */
	uint64_t next_seq;	/* next to hand out (in the open txn) */
	uint64_t pend_bytes;	/* data appended in the open txn: the meta */
	uint64_t pend_cycle;	/* counters are written once, at commit */
	uint64_t bytes;		/* committed write data held (any thread) */
	uint64_t dirty_chunks;	/* committed dirty-map bits (any thread) */
	uint64_t pend_dirty;	/* bits set in the open txn */
	int dirty_chunks_cleared;	/* the open txn dropped the map */
	uint8_t *scratch;
	size_t scratch_len;
	struct jlog dl;
	char err[256];
};

static int
jfail(struct journal *j, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(j->err, sizeof(j->err), fmt, ap);
	va_end(ap);
	return -1;
}

const char *
journal_error(struct journal *j)
{
	return j->err;
}

static uint64_t
load_last_seq(struct journal *j, MDB_txn *txn)
{
	MDB_cursor *c;
	MDB_val k, d;
	uint64_t seq = 0;

	if (mdb_cursor_open(txn, j->log, &c) != 0)
		return 0;
	if (mdb_cursor_get(c, &k, &d, MDB_LAST) == 0 && k.mv_size >= 8)
		seq = kv_get64(k.mv_data);
	mdb_cursor_close(c);
	return seq;
}

/*
 * Remove the data log's segments below the first entry that still points
 * into it.  Only the first few entries are looked at: behind a long run
 * of entries without data, segments wait for a later trim.
 */
static void
release_data(struct journal *j)
{
	MDB_txn *txn;
	MDB_cursor *c;
	MDB_val k, d;
	uint64_t below = UINT64_MAX;
	int rc, n = 0;

	if (mdb_txn_begin(j->env, NULL, MDB_RDONLY, &txn) != 0)
		return;
	if (mdb_cursor_open(txn, j->log, &c) != 0) {
		mdb_txn_abort(txn);
		return;
	}
	for (rc = mdb_cursor_get(c, &k, &d, MDB_FIRST); rc == 0 && n < 4096;
	    rc = mdb_cursor_get(c, &k, &d, MDB_NEXT), n++) {
		const uint8_t *p = k.mv_data;

		if (k.mv_size == LK_HDR && p[8] == JE_WRITE &&
		    (((unsigned)p[25] << 8) | p[26]) == LK_INLOG &&
		    d.mv_size == 8) {
			below = kv_get64(d.mv_data);
			break;
		}
	}
	if (rc == MDB_NOTFOUND)	/* nothing in the log refers to it */
		below = j->dl.committed;
	mdb_cursor_close(c);
	/* converted entries' data lies after that of later entries */
	if (below != UINT64_MAX && mdb_cursor_open(txn, j->conv, &c) == 0) {
		if (mdb_cursor_get(c, &k, &d, MDB_FIRST) == 0 &&
		    k.mv_size == 8 && kv_get64(k.mv_data) < below)
			below = kv_get64(k.mv_data);
		mdb_cursor_close(c);
	}
	mdb_txn_abort(txn);
	if (below != UINT64_MAX)
		jlog_release(&j->dl, below);
}

struct journal *
journal_open(const char *dir, char *err, size_t errlen)
{
	struct journal *j;
	MDB_txn *txn;
	uint64_t epoch, applied, dhead;
	int rc;

	if ((j = calloc(1, sizeof(*j))) == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	if ((rc = kv_env_open(&j->env, dir, 5, JOURNAL_MAP, MDB_NOSYNC)) != 0) {
		snprintf(err, errlen, "journal %s: %s", dir, mdb_strerror(rc));
		free(j);
		return NULL;
	}
	if ((rc = mdb_txn_begin(j->env, NULL, 0, &txn)) != 0 ||
	    (rc = mdb_dbi_open(txn, "log", MDB_CREATE, &j->log)) != 0 ||
	    (rc = mdb_dbi_open(txn, "meta", MDB_CREATE, &j->meta)) != 0 ||
	    (rc = mdb_dbi_open(txn, "points", MDB_CREATE, &j->points)) != 0 ||
	    (rc = mdb_dbi_open(txn, "dirty", MDB_CREATE, &j->dirty)) != 0 ||
	    (rc = mdb_dbi_open(txn, "conv", MDB_CREATE, &j->conv)) != 0)
		goto fail;
	if (kv_get_u64(txn, j->meta, JM_EPOCH, &epoch, 0) == MDB_NOTFOUND) {
		if (getrandom(&epoch, sizeof(epoch), 0) != sizeof(epoch))
			epoch = 0x5eed;
		epoch |= 1;
		if ((rc = kv_put_u64(txn, j->meta, JM_EPOCH, epoch)) != 0)
			goto fail;
	}
	j->last_seq = load_last_seq(j, txn);
	/* Sequences are never reused, even after a trim of everything. */
	kv_get_u64(txn, j->meta, JM_APPLIED, &applied, 0);
	if (applied > j->last_seq)
		j->last_seq = applied;
	kv_get_u64(txn, j->meta, JM_SEQ_FLOOR, &applied, 0);
	if (applied > j->last_seq)
		j->last_seq = applied;
	j->next_seq = j->last_seq + 1;
	kv_get_u64(txn, j->meta, "bytes", &j->bytes, 0);
	kv_get_u64(txn, j->meta, "dirty_chunks", &j->dirty_chunks, 0);
	kv_get_u64(txn, j->meta, JM_DHEAD, &dhead, 0);
	if ((rc = mdb_txn_commit(txn)) != 0) {
		txn = NULL;
		goto fail;
	}
	/* the data log syncs an earlier run's data before LMDB syncs the
	 * entries that point at it */
	if (jlog_open(&j->dl, dir, dhead) != 0) {
		snprintf(err, errlen, "journal: %s", j->dl.err);
		jlog_close(&j->dl);
		mdb_env_close(j->env);
		free(j);
		return NULL;
	}
	mdb_env_sync(j->env, 1);
	release_data(j);
	return j;
fail:
	snprintf(err, errlen, "journal %s: %s", dir, mdb_strerror(rc));
	if (txn)
		mdb_txn_abort(txn);
	mdb_env_close(j->env);
	free(j);
	return NULL;
}

void
journal_close(struct journal *j)
{
	if (j == NULL)
		return;
	if (j->txn)
		journal_abort(j);
	jlog_sync(&j->dl);
	mdb_env_sync(j->env, 1);
	mdb_env_close(j->env);
	jlog_close(&j->dl);
	free(j->scratch);
	free(j);
}

int
journal_begin(struct journal *j)
{
	int rc;

	if (j->txn)
		return 0;
	if ((rc = mdb_txn_begin(j->env, NULL, 0, &j->txn)) != 0) {
		j->txn = NULL;
		return jfail(j, "begin: %s", mdb_strerror(rc));
	}
	j->txn_err = 0;
	j->next_seq = j->last_seq + 1;
	return 0;
}

static int
add_bytes(struct journal *j, const char *key, int64_t delta)
{
	uint64_t v;

	kv_get_u64(j->txn, j->meta, key, &v, 0);
	v = (delta < 0 && (uint64_t)-delta > v) ? 0 : v + (uint64_t)delta;
	return kv_put_u64(j->txn, j->meta, key, v);
}

/* An entry may go in: a good transaction is open and SEQ is new. */
static int
check_put(struct journal *j, uint64_t seq)
{
	if (j->txn == NULL || j->txn_err)
		return jfail(j, "append outside a good transaction");
	if (seq < j->next_seq)
		return jfail(j, "sequence %llu out of order",
		    (unsigned long long)seq);
	return 0;
}

/* Fill KEY's header; returns its length. */
static void
log_key(uint8_t *key, uint64_t seq, enum jentry_type type, uint32_t disk,
    uint64_t off, uint32_t len, size_t inl)
{
	kv_put64(key, seq);
	key[8] = (uint8_t)type;
	kv_put32(key + 9, disk);
	kv_put64(key + 13, off);
	kv_put32(key + 21, len);
	key[25] = (uint8_t)(inl >> 8);
	key[26] = (uint8_t)inl;
}

/*
 * Put a write (DATA), zeroing (NULL, !placed) or placed write (NULL,
 * placed) with SEQ.  REPLACE: a placed entry becomes a write (its bytes
 * were counted when it was appended); else an append.
 */
static int
put_rec(struct journal *j, uint64_t seq, uint32_t disk, uint64_t off,
    uint32_t len, const void *data, int placed, int replace)
{
	uint8_t key[LK_HDR + KV_INLINE_MAX], ref[8];
	int inlog = data && jlog_takes(len);
	size_t inl = data && !inlog ? kv_inline_len(len) : 0;
	enum jentry_type type = data ? JE_WRITE : placed ? JE_PLACED : JE_ZERO;
	MDB_val k, d;
	int rc;

	if (!replace && check_put(j, seq) != 0)
		return -1;
	if (inlog) {
		uint64_t at;

		if (jlog_append(&j->dl, data, len, &at) != 0) {
			j->txn_err = EIO;
			return jfail(j, "append: %s", j->dl.err);
		}
		kv_put64(ref, at);
		inl = replace ? LK_CONV : LK_INLOG;
		if (replace) {
			uint8_t sk[8];
			MDB_val ck = { 8, ref }, cv = { 8, sk };

			kv_put64(sk, seq);
			if ((rc = mdb_put(j->txn, j->conv, &ck, &cv, 0)) != 0) {
				j->txn_err = rc;
				return jfail(j, "convert: %s",
				    mdb_strerror(rc));
			}
		}
	}
	log_key(key, seq, type, disk, off, len, inl);
	k.mv_data = key;
	if (inlog) {
		k.mv_size = LK_HDR;
		d.mv_size = sizeof(ref);
		d.mv_data = ref;
	} else {
		if (inl)
			memcpy(key + LK_HDR, data, inl);
		k.mv_size = LK_HDR + inl;
		d.mv_size = data ? len - inl : 0;
		d.mv_data = data ? (uint8_t *)data + inl : (void *)"";
	}
	if ((rc = mdb_put(j->txn, j->log, &k, &d,
	    replace ? 0 : MDB_APPEND)) != 0) {
		j->txn_err = rc;
		return jfail(j, "append: %s", mdb_strerror(rc));
	}
	if (replace)
		return 0;
	if (data || placed) {
		j->pend_bytes += len;
		j->pend_cycle += len;
	}
	j->next_seq = seq + 1;
	return 0;
}

static int
put_data(struct journal *j, uint64_t seq, uint32_t disk, uint64_t off,
    uint32_t len, const void *data)
{
	return put_rec(j, seq, disk, off, len, data, 0, 0);
}

int
journal_append(struct journal *j, uint32_t disk, uint64_t off, uint32_t len,
    const void *data, uint64_t *seq)
{
	*seq = j->next_seq;
	return put_data(j, j->next_seq, disk, off, len, data);
}

int
journal_append_placed(struct journal *j, uint32_t disk, uint64_t off,
    uint32_t len, uint64_t *seq)
{
	*seq = j->next_seq;
	return put_rec(j, j->next_seq, disk, off, len, NULL, 1, 0);
}

int
journal_convert(struct journal *j, uint64_t seq, uint32_t disk,
    uint64_t off, uint32_t len, const void *data)
{
	uint8_t key[LK_HDR];
	MDB_val k = { LK_HDR, key };
	int rc;

	if (j->txn == NULL || j->txn_err)
		return jfail(j, "convert outside a good transaction");
	if (data == NULL || len == 0)
		return jfail(j, "convert: no data");
	log_key(key, seq, JE_PLACED, disk, off, len, 0);
	if ((rc = mdb_del(j->txn, j->log, &k, NULL)) != 0) {
		if (rc != MDB_NOTFOUND)
			j->txn_err = rc;
		return jfail(j, "convert: entry %llu is no placed write of "
		    "disk %u at %llu: %s", (unsigned long long)seq, disk,
		    (unsigned long long)off, mdb_strerror(rc));
	}
	return put_rec(j, seq, disk, off, len, data, 0, 1);
}

static void
point_value(uint8_t *buf, size_t *len, uint64_t id, int64_t time_ms,
    enum point_kind kind, const char *label, uint64_t seq, uint64_t bytes)
{
	size_t ll = label ? strnlen(label, JOURNAL_LABEL_MAX) : 0;

	kv_put64(buf, id);
	kv_put64(buf + 8, (uint64_t)time_ms);
	buf[16] = (uint8_t)kind;
	kv_put64(buf + 17, seq);
	kv_put64(buf + 25, bytes);
	if (ll)
		memcpy(buf + 33, label, ll);
	*len = 33 + ll;
}

static void
parse_point(const uint8_t *p, size_t len, struct jentry *e)
{
	size_t ll;

	e->point_id = kv_get64(p);
	e->time_ms = (int64_t)kv_get64(p + 8);
	e->kind = (enum point_kind)p[16];
	e->length = (uint32_t)kv_get64(p + 25);
	ll = len - 33 > JOURNAL_LABEL_MAX ? JOURNAL_LABEL_MAX : len - 33;
	memcpy(e->label, p + 33, ll);
	e->label[ll] = '\0';
}

static int
put_point(struct journal *j, uint64_t seq, uint64_t id, int64_t time_ms,
    enum point_kind kind, const char *label, uint64_t bytes)
{
	uint8_t key[LK_HDR], val[33 + JOURNAL_LABEL_MAX], pk[8];
	size_t vlen;
	MDB_val k = { LK_HDR, key }, d, p = { 8, pk };
	int rc;

	if (check_put(j, seq) != 0)
		return -1;
	memset(key, 0, sizeof(key));
	kv_put64(key, seq);
	key[8] = JE_POINT;
	point_value(val, &vlen, id, time_ms, kind, label, seq, bytes);
	d.mv_size = vlen;
	d.mv_data = val;
	kv_put64(pk, id);
	if ((rc = mdb_put(j->txn, j->log, &k, &d, MDB_APPEND)) != 0 ||
	    (rc = mdb_put(j->txn, j->points, &p, &d, 0)) != 0 ||
	    (rc = kv_put_u64(j->txn, j->meta, JM_LAST_POINT, id)) != 0 ||
	    (rc = kv_put_u64(j->txn, j->meta, "cycle_bytes", 0)) != 0) {
		j->txn_err = rc;
		return jfail(j, "append point: %s", mdb_strerror(rc));
	}
	j->pend_cycle = 0;
	j->next_seq = seq + 1;
	return 0;
}

int
journal_append_point(struct journal *j, enum point_kind kind,
    const char *label, int64_t time_ms, uint64_t *id, uint64_t *seq)
{
	uint64_t last, cycle;

	if (j->txn == NULL || j->txn_err)
		return jfail(j, "append outside a good transaction");
	kv_get_u64(j->txn, j->meta, JM_LAST_POINT, &last, 0);
	kv_get_u64(j->txn, j->meta, "cycle_bytes", &cycle, 0);
	cycle += j->pend_cycle;
	*id = last + 1;
	*seq = j->next_seq;
	return put_point(j, j->next_seq, last + 1, time_ms, kind, label,
	    cycle);
}

int
journal_put(struct journal *j, const struct jentry *e)
{
	switch (e->type) {
	case JE_WRITE:
		return put_data(j, e->seq, e->disk, e->offset, e->length,
		    e->data);
	case JE_ZERO:
		return put_data(j, e->seq, e->disk, e->offset, e->length, NULL);
	case JE_POINT:
		return put_point(j, e->seq, e->point_id, e->time_ms, e->kind,
		    e->label, e->length);
	case JE_PLACED:
		break;	/* its data is in another site's image */
	}
	return jfail(j, "unknown entry type %d", e->type);
}

int
journal_set(struct journal *j, const char *key, uint64_t v)
{
	int rc;

	if (j->txn == NULL || j->txn_err)
		return jfail(j, "set outside a good transaction");
	if ((rc = kv_put_u64(j->txn, j->meta, key, v)) != 0) {
		j->txn_err = rc;
		return jfail(j, "set %s: %s", key, mdb_strerror(rc));
	}
	return 0;
}

int
journal_commit(struct journal *j)
{
	int rc;

	if (j->txn == NULL)
		return 0;
	if (j->txn_err) {
		rc = j->txn_err;
		journal_abort(j);
		return jfail(j, "commit after error: %s", mdb_strerror(rc));
	}
	/* the data is written before the entries that point at it commit */
	if (j->dl.head != j->dl.committed) {
		if (jlog_flush(&j->dl) != 0) {
			journal_abort(j);
			return jfail(j, "commit: %s", j->dl.err);
		}
		if ((rc = kv_put_u64(j->txn, j->meta, JM_DHEAD,
		    j->dl.head)) != 0) {
			journal_abort(j);
			return jfail(j, "commit: %s", mdb_strerror(rc));
		}
	}
	if ((j->pend_bytes && (rc = add_bytes(j, "bytes",
	    (int64_t)j->pend_bytes)) != 0) || (j->pend_cycle &&
	    (rc = add_bytes(j, "cycle_bytes", (int64_t)j->pend_cycle)) != 0) ||
	    (j->pend_dirty && (rc = add_bytes(j, "dirty_chunks",
	    (int64_t)j->pend_dirty)) != 0)) {
		journal_abort(j);
		return jfail(j, "commit: %s", mdb_strerror(rc));
	}
	rc = mdb_txn_commit(j->txn);
	j->txn = NULL;
	if (rc != 0) {
		j->next_seq = j->last_seq + 1;
		j->pend_bytes = j->pend_cycle = j->pend_dirty = 0;
		j->dirty_chunks_cleared = 0;
		jlog_rewind(&j->dl);
		return jfail(j, "commit: %s", mdb_strerror(rc));
	}
	jlog_committed(&j->dl);
	__atomic_store_n(&j->bytes, j->bytes + j->pend_bytes, __ATOMIC_RELEASE);
	__atomic_store_n(&j->dirty_chunks, (j->dirty_chunks_cleared ? 0 :
	    j->dirty_chunks) + j->pend_dirty, __ATOMIC_RELEASE);
	j->pend_bytes = j->pend_cycle = j->pend_dirty = 0;
	j->dirty_chunks_cleared = 0;
	__atomic_store_n(&j->last_seq, j->next_seq - 1, __ATOMIC_RELEASE);
	return 0;
}

void
journal_abort(struct journal *j)
{
	if (j->txn)
		mdb_txn_abort(j->txn);
	j->txn = NULL;
	jlog_rewind(&j->dl);
	j->next_seq = j->last_seq + 1;
	j->pend_bytes = j->pend_cycle = j->pend_dirty = 0;
	j->dirty_chunks_cleared = 0;
}

int
journal_sync(struct journal *j)
{
	int rc;

	/* the data before the entries that point at it */
	if (jlog_sync(&j->dl) != 0)
		return jfail(j, "sync: %s", j->dl.err);
	if ((rc = mdb_env_sync(j->env, 1)) != 0)
		return jfail(j, "sync: %s", mdb_strerror(rc));
	return 0;
}

int
journal_busy(struct journal *j)
{
	return jlog_busy(&j->dl);
}

int
journal_kick(struct journal *j)
{
	return j->txn && !j->txn_err ? jlog_kick(&j->dl) : 0;
}

int
journal_event_fd(struct journal *j)
{
	return j->dl.efd;
}

uint64_t
journal_get(struct journal *j, const char *key)
{
	MDB_txn *txn;
	uint64_t v = 0;

	if (mdb_txn_begin(j->env, NULL, MDB_RDONLY, &txn) != 0)
		return 0;
	kv_get_u64(txn, j->meta, key, &v, 0);
	mdb_txn_abort(txn);
	return v;
}

/* Read from any thread: the shipper follows the writer. */
uint64_t
journal_last_seq(struct journal *j)
{
	return __atomic_load_n(&j->last_seq, __ATOMIC_ACQUIRE);
}

uint64_t
journal_first_seq(struct journal *j)
{
	MDB_txn *txn;
	MDB_cursor *c;
	MDB_val k, d;
	uint64_t seq = 0;

	if (mdb_txn_begin(j->env, NULL, MDB_RDONLY, &txn) != 0)
		return 0;
	if (mdb_cursor_open(txn, j->log, &c) == 0) {
		if (mdb_cursor_get(c, &k, &d, MDB_FIRST) == 0)
			seq = kv_get64(k.mv_data);
		mdb_cursor_close(c);
	}
	mdb_txn_abort(txn);
	return seq;
}

uint64_t
journal_bytes(struct journal *j)
{
	return __atomic_load_n(&j->bytes, __ATOMIC_ACQUIRE);
}

uint64_t
journal_pending_bytes(struct journal *j)
{
	return j->pend_bytes;
}

int
journal_reserve(struct journal *j, uint64_t n, uint64_t *first)
{
	int rc;

	if (j->txn == NULL || j->txn_err)
		return jfail(j, "reserve outside a good transaction");
	*first = j->next_seq;
	if ((rc = kv_put_u64(j->txn, j->meta, JM_SEQ_FLOOR,
	    j->next_seq + n - 1)) != 0) {
		j->txn_err = rc;
		return jfail(j, "reserve: %s", mdb_strerror(rc));
	}
	j->next_seq += n;
	return 0;
}

/* ------------------------------------------------------------------ */
/* the dirty map: key disk(4) record(8), value DIRTY_REC_BITS bits */

#define DIRTY_REC_BITS 4096u

static void
dirty_key(uint8_t *key, uint32_t disk, uint64_t rec)
{
	kv_put32(key, disk);
	kv_put64(key + 4, rec);
}

int
journal_mark_dirty(struct journal *j, uint32_t disk, uint64_t off,
    uint64_t len)
{
	uint64_t c, last;

	if (j->txn == NULL || j->txn_err)
		return jfail(j, "mark outside a good transaction");
	if (len == 0)
		return 0;
	c = off / JOURNAL_CHUNK;
	last = (off + len - 1) / JOURNAL_CHUNK;
	while (c <= last) {
		uint8_t key[12], rec[DIRTY_REC_BITS / 8];
		MDB_val k = { sizeof(key), key }, d;
		uint64_t r = c / DIRTY_REC_BITS;
		int rc, changed = 0;

		dirty_key(key, disk, r);
		rc = mdb_get(j->txn, j->dirty, &k, &d);
		if (rc == 0 && d.mv_size == sizeof(rec))
			memcpy(rec, d.mv_data, sizeof(rec));
		else if (rc == 0 || rc == MDB_NOTFOUND)
			memset(rec, 0, sizeof(rec));
		else {
			j->txn_err = rc;
			return jfail(j, "dirty map: %s", mdb_strerror(rc));
		}
		for (; c <= last && c / DIRTY_REC_BITS == r; c++) {
			uint64_t b = c % DIRTY_REC_BITS;

			if (!(rec[b / 8] & (1u << (b % 8)))) {
				rec[b / 8] |= (uint8_t)(1u << (b % 8));
				j->pend_dirty++;
				changed = 1;
			}
		}
		if (!changed)
			continue;
		d.mv_size = sizeof(rec);
		d.mv_data = rec;
		if ((rc = mdb_put(j->txn, j->dirty, &k, &d, 0)) != 0) {
			j->txn_err = rc;
			return jfail(j, "dirty map: %s", mdb_strerror(rc));
		}
	}
	return 0;
}

int
journal_dirty_run(struct journal *j, uint32_t *disk, uint64_t *chunk,
    uint32_t *run, uint32_t max)
{
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_val k, d;
	uint8_t key[12];
	int rc, found = 0;

	if ((rc = mdb_txn_begin(j->env, NULL, MDB_RDONLY, &txn)) != 0)
		return jfail(j, "dirty map: %s", mdb_strerror(rc));
	if ((rc = mdb_cursor_open(txn, j->dirty, &cur)) != 0) {
		mdb_txn_abort(txn);
		return jfail(j, "dirty map: %s", mdb_strerror(rc));
	}
	dirty_key(key, *disk, *chunk / DIRTY_REC_BITS);
	k.mv_size = sizeof(key);
	k.mv_data = key;
	for (rc = mdb_cursor_get(cur, &k, &d, MDB_SET_RANGE); rc == 0 && !found;
	    rc = mdb_cursor_get(cur, &k, &d, MDB_NEXT)) {
		const uint8_t *p = k.mv_data, *bits = d.mv_data;
		uint32_t kd;
		uint64_t base, from = 0;

		if (k.mv_size != 12 || d.mv_size != DIRTY_REC_BITS / 8)
			continue;
		kd = kv_get32(p);
		base = kv_get64(p + 4) * DIRTY_REC_BITS;
		if (kd == *disk && base + DIRTY_REC_BITS > *chunk &&
		    *chunk > base)
			from = *chunk - base;
		for (uint64_t b = from; b < DIRTY_REC_BITS; b++) {
			uint32_t n = 0;

			if (!(bits[b / 8] & (1u << (b % 8))))
				continue;
			while (b + n < DIRTY_REC_BITS && n < max &&
			    (bits[(b + n) / 8] & (1u << ((b + n) % 8))))
				n++;
			*disk = kd;
			*chunk = base + b;
			*run = n ? n : 1;
			found = 1;
			break;
		}
	}
	mdb_cursor_close(cur);
	mdb_txn_abort(txn);
	if (!found && rc != 0 && rc != MDB_NOTFOUND)
		return jfail(j, "dirty map: %s", mdb_strerror(rc));
	return found;
}

int
journal_next_dirty(struct journal *j, uint32_t *disk, uint64_t *chunk)
{
	uint32_t run;

	return journal_dirty_run(j, disk, chunk, &run, 1);
}

int
journal_dirty_each(struct journal *j,
    void (*fn)(uint32_t disk, uint64_t chunk, void *arg), void *arg)
{
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_val k, d;
	int rc;

	if ((rc = mdb_txn_begin(j->env, NULL, MDB_RDONLY, &txn)) != 0)
		return jfail(j, "dirty map: %s", mdb_strerror(rc));
	if ((rc = mdb_cursor_open(txn, j->dirty, &cur)) != 0) {
		mdb_txn_abort(txn);
		return jfail(j, "dirty map: %s", mdb_strerror(rc));
	}
	for (rc = mdb_cursor_get(cur, &k, &d, MDB_FIRST); rc == 0;
	    rc = mdb_cursor_get(cur, &k, &d, MDB_NEXT)) {
		const uint8_t *bits = d.mv_data;
		uint64_t base;

		if (k.mv_size != 12 || d.mv_size != DIRTY_REC_BITS / 8)
			continue;
		base = kv_get64((const uint8_t *)k.mv_data + 4) *
		    DIRTY_REC_BITS;
		for (uint64_t b = 0; b < DIRTY_REC_BITS; b++)
			if (bits[b / 8] & (1u << (b % 8)))
				fn(kv_get32(k.mv_data), base + b, arg);
	}
	mdb_cursor_close(cur);
	mdb_txn_abort(txn);
	if (rc != MDB_NOTFOUND)
		return jfail(j, "dirty map: %s", mdb_strerror(rc));
	return 0;
}

uint64_t
journal_dirty_chunks(struct journal *j)
{
	return __atomic_load_n(&j->dirty_chunks, __ATOMIC_ACQUIRE);
}

int
journal_clear_dirty(struct journal *j)
{
	int rc;

	if (j->txn == NULL || j->txn_err)
		return jfail(j, "clear outside a good transaction");
	if ((rc = mdb_drop(j->txn, j->dirty, 0)) != 0 ||
	    (rc = kv_put_u64(j->txn, j->meta, "dirty_chunks", 0)) != 0) {
		j->txn_err = rc;
		return jfail(j, "dirty map: %s", mdb_strerror(rc));
	}
	/* the commit adds the bits set in this txn to the zero just put */
	j->pend_dirty = 0;
	j->dirty_chunks_cleared = 1;
	return 0;
}

/* Decode one log record; write data is made contiguous in j->scratch. */
static int
decode(struct journal *j, const MDB_val *k, const MDB_val *d, uint64_t top,
    int nodata, struct jentry *e)
{
	const uint8_t *p = k->mv_data;
	size_t inl;

	if (k->mv_size < LK_HDR)
		return jfail(j, "corrupt journal key of %zu bytes", k->mv_size);
	memset(e, 0, sizeof(*e));
	e->seq = kv_get64(p);
	e->type = (enum jentry_type)p[8];
	e->disk = kv_get32(p + 9);
	e->offset = kv_get64(p + 13);
	e->length = kv_get32(p + 21);
	inl = ((size_t)p[25] << 8) | p[26];
	switch (e->type) {
	case JE_WRITE:
		if (nodata)
			break;
		if (inl == LK_INLOG || inl == LK_CONV) {
			if (k->mv_size != LK_HDR || d->mv_size != 8 ||
			    e->length == 0)
				return jfail(j, "corrupt journal entry %llu",
				    (unsigned long long)e->seq);
			if (jlog_read(&j->dl, kv_get64(d->mv_data), e->length,
			    top, &e->data) != 0)
				return jfail(j, "entry %llu: %s",
				    (unsigned long long)e->seq, j->dl.rerr);
			break;
		}
		if (inl != k->mv_size - LK_HDR ||
		    inl + d->mv_size != e->length)
			return jfail(j, "corrupt journal entry %llu",
			    (unsigned long long)e->seq);
		if (inl == 0) {
			e->data = d->mv_data;
			break;
		}
		if (j->scratch_len < e->length) {
			uint8_t *n = realloc(j->scratch, e->length);

			if (n == NULL)
				return jfail(j, "out of memory");
			j->scratch = n;
			j->scratch_len = e->length;
		}
		memcpy(j->scratch, p + LK_HDR, inl);
		memcpy(j->scratch + inl, d->mv_data, d->mv_size);
		e->data = j->scratch;
		break;
	case JE_ZERO:
		break;
	case JE_PLACED:
		if (inl != 0 || d->mv_size != 0 || e->length == 0)
			return jfail(j, "corrupt journal entry %llu",
			    (unsigned long long)e->seq);
		break;
	case JE_POINT:
		if (d->mv_size < 33)
			return jfail(j, "corrupt point entry");
		parse_point(d->mv_data, d->mv_size, e);
		e->length = 0;
		break;
	default:
		return jfail(j, "unknown journal entry type %d", e->type);
	}
	return 0;
}

/* journal_read, or without the data (NODATA: journal_scan). */
static int
walk(struct journal *j, uint64_t from, size_t max_bytes, journal_fn fn,
    void *arg, int nodata)
{
	MDB_txn *txn;
	MDB_cursor *c;
	MDB_val k, d;
	uint8_t key[8];
	struct jentry e;
	size_t bytes = 0;
	uint64_t top;
	int n = 0, rc, op = MDB_SET_RANGE;

	if ((rc = mdb_txn_begin(j->env, NULL, MDB_RDONLY, &txn)) != 0)
		return jfail(j, "read: %s", mdb_strerror(rc));
	/* the data log's head as of this snapshot bounds its entries */
	kv_get_u64(txn, j->meta, JM_DHEAD, &top, 0);
	if ((rc = mdb_cursor_open(txn, j->log, &c)) != 0) {
		mdb_txn_abort(txn);
		return jfail(j, "read: %s", mdb_strerror(rc));
	}
	kv_put64(key, from);
	k.mv_size = 8;
	k.mv_data = key;
	while ((rc = mdb_cursor_get(c, &k, &d, op)) == 0) {
		op = MDB_NEXT;
		if (decode(j, &k, &d, top, nodata, &e) != 0) {
			n = -1;
			break;
		}
		n++;
		if (e.type == JE_WRITE || e.type == JE_PLACED)
			bytes += e.length;
		if (fn(&e, arg) != 0 || bytes >= max_bytes)
			break;
	}
	if (rc != 0 && rc != MDB_NOTFOUND) {
		jfail(j, "read: %s", mdb_strerror(rc));
		n = -1;
	}
	mdb_cursor_close(c);
	mdb_txn_abort(txn);
	return n;
}

int
journal_read(struct journal *j, uint64_t from, size_t max_bytes,
    journal_fn fn, void *arg)
{
	return walk(j, from, max_bytes, fn, arg, 0);
}

int
journal_scan(struct journal *j, uint64_t from, journal_fn fn, void *arg)
{
	return walk(j, from, SIZE_MAX, fn, arg, 1);
}

int
journal_find_point(struct journal *j, uint64_t id, struct jentry *out)
{
	MDB_txn *txn;
	MDB_val k, d;
	uint8_t key[8];
	int rc;

	if (mdb_txn_begin(j->env, NULL, MDB_RDONLY, &txn) != 0)
		return jfail(j, "find point: cannot begin");
	kv_put64(key, id);
	k.mv_size = 8;
	k.mv_data = key;
	rc = mdb_get(txn, j->points, &k, &d);
	if (rc == 0 && d.mv_size >= 33) {
		memset(out, 0, sizeof(*out));
		out->type = JE_POINT;
		parse_point(d.mv_data, d.mv_size, out);
		out->seq = kv_get64((uint8_t *)d.mv_data + 17);
	}
	mdb_txn_abort(txn);
	return rc == 0 ? 1 : rc == MDB_NOTFOUND ? 0 : -1;
}

int
journal_points(struct journal *j, journal_fn fn, void *arg)
{
	MDB_txn *txn;
	MDB_cursor *c;
	MDB_val k, d;
	struct jentry e;
	int rc, op = MDB_FIRST;

	if (mdb_txn_begin(j->env, NULL, MDB_RDONLY, &txn) != 0)
		return jfail(j, "points: cannot begin");
	if (mdb_cursor_open(txn, j->points, &c) != 0) {
		mdb_txn_abort(txn);
		return jfail(j, "points: cannot open cursor");
	}
	while ((rc = mdb_cursor_get(c, &k, &d, op)) == 0) {
		op = MDB_NEXT;
		if (d.mv_size < 33)
			continue;
		memset(&e, 0, sizeof(e));
		e.type = JE_POINT;
		parse_point(d.mv_data, d.mv_size, &e);
		e.seq = kv_get64((uint8_t *)d.mv_data + 17);
		if (fn(&e, arg) != 0)
			break;
	}
	mdb_cursor_close(c);
	mdb_txn_abort(txn);
	return 0;
}

int
journal_forget_points(struct journal *j, uint64_t keep_from)
{
	MDB_cursor *c;
	MDB_val k, d;
	int rc;

	if (journal_begin(j) != 0)
		return -1;
	if ((rc = mdb_cursor_open(j->txn, j->points, &c)) != 0) {
		journal_abort(j);
		return jfail(j, "forget points: %s", mdb_strerror(rc));
	}
	while ((rc = mdb_cursor_get(c, &k, &d, MDB_FIRST)) == 0 &&
	    kv_get64(k.mv_data) < keep_from)
		if ((rc = mdb_cursor_del(c, 0)) != 0)
			break;
	mdb_cursor_close(c);
	if (rc != 0 && rc != MDB_NOTFOUND) {
		journal_abort(j);
		return jfail(j, "forget points: %s", mdb_strerror(rc));
	}
	return journal_commit(j);
}

int64_t
journal_trim(struct journal *j, uint64_t upto)
{
	MDB_cursor *c;
	MDB_val k, d;
	int64_t n = 0;
	uint64_t freed = 0;
	int rc;

	if (journal_begin(j) != 0)
		return -1;
	if ((rc = mdb_cursor_open(j->txn, j->log, &c)) != 0) {
		journal_abort(j);
		return jfail(j, "trim: %s", mdb_strerror(rc));
	}
	while ((rc = mdb_cursor_get(c, &k, &d, MDB_FIRST)) == 0) {
		const uint8_t *p = k.mv_data;

		if (k.mv_size < LK_HDR || kv_get64(p) > upto)
			break;
		if (p[8] == JE_WRITE || p[8] == JE_PLACED)
			freed += kv_get32(p + 21);
		if (p[8] == JE_WRITE && k.mv_size == LK_HDR &&
		    (((unsigned)p[25] << 8) | p[26]) == LK_CONV &&
		    d.mv_size == 8 && (rc = mdb_del(j->txn, j->conv, &d,
		    NULL)) != 0 && rc != MDB_NOTFOUND)
			break;
		if ((rc = mdb_cursor_del(c, 0)) != 0)
			break;
		n++;
	}
	mdb_cursor_close(c);
	if (rc != 0 && rc != MDB_NOTFOUND) {
		journal_abort(j);
		return jfail(j, "trim: %s", mdb_strerror(rc));
	}
	if (freed && add_bytes(j, "bytes", -(int64_t)freed) != 0) {
		journal_abort(j);
		return jfail(j, "trim: cannot update bytes");
	}
	if (journal_commit(j) != 0)
		return -1;
	__atomic_store_n(&j->bytes, j->bytes > freed ? j->bytes - freed : 0,
	    __ATOMIC_RELEASE);
	if (n > 0)
		release_data(j);
	return n;
}

int
journal_reset(struct journal *j)
{
	int rc;

	if (journal_begin(j) != 0)
		return -1;
	if ((rc = mdb_drop(j->txn, j->log, 0)) != 0 ||
	    (rc = mdb_drop(j->txn, j->points, 0)) != 0 ||
	    (rc = mdb_drop(j->txn, j->dirty, 0)) != 0 ||
	    (rc = mdb_drop(j->txn, j->conv, 0)) != 0 ||
	    (rc = kv_put_u64(j->txn, j->meta, "dirty_chunks", 0)) != 0 ||
	    (rc = kv_put_u64(j->txn, j->meta, JM_OVERFLOW, 0)) != 0 ||
	    (rc = kv_put_u64(j->txn, j->meta, JM_CATCHUP_BASE, 0)) != 0 ||
	    (rc = kv_put_u64(j->txn, j->meta, JM_CATCHUP_END, 0)) != 0 ||
	    (rc = kv_put_u64(j->txn, j->meta, JM_SEQ_FLOOR, 0)) != 0 ||
	    (rc = kv_put_u64(j->txn, j->meta, JM_APPLIED, 0)) != 0 ||
	    (rc = kv_put_u64(j->txn, j->meta, "bytes", 0)) != 0 ||
	    (rc = kv_put_u64(j->txn, j->meta, "cycle_bytes", 0)) != 0 ||
	    (rc = kv_put_u64(j->txn, j->meta, JM_LAST_POINT, 0)) != 0) {
		journal_abort(j);
		return jfail(j, "reset: %s", mdb_strerror(rc));
	}
	j->pend_bytes = j->pend_cycle = j->pend_dirty = 0;
	j->dirty_chunks_cleared = 0;
	__atomic_store_n(&j->last_seq, 0, __ATOMIC_RELEASE);
	__atomic_store_n(&j->bytes, 0, __ATOMIC_RELEASE);
	__atomic_store_n(&j->dirty_chunks, 0, __ATOMIC_RELEASE);
	j->next_seq = 1;
	if ((rc = mdb_txn_commit(j->txn)) != 0) {
		j->txn = NULL;
		return jfail(j, "reset: %s", mdb_strerror(rc));
	}
	j->txn = NULL;
	if (journal_sync(j) != 0)
		return -1;
	release_data(j);
	return 0;
}
