/*
 * history.c: walking the DR store's recovery history: failover to a point
 * (undo records played back in place, redo records kept), cancel, commit,
 * and retention (dropping points, merging their undo records).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store_int.h"

/* Save blocks BL[0..N) of the images as redo records in TXN.  The keys
 * of a point's undo records come in (disk, block) order, so the blocks
 * are sorted and are read in runs.  Returns 0, EIO (s->err says) or an
 * mdb error. */
static int
keep_redo(struct store *s, MDB_txn *txn, const struct cblk *bl, size_t n)
{
	uint8_t *buf;
	int rc = 0;

	if (n == 0)
		return 0;
	/* aligned: read around the page cache (read_blocks) */
	if (posix_memalign((void **)&buf, DIO_BLOCK, n * STORE_BLOCK) != 0)
		return ENOMEM;
	if (read_blocks(s, bl, n, buf) != 0) {
		free(buf);
		return EIO;
	}
	for (size_t i = 0; i < n && rc == 0; i++)
		rc = br_put(txn, s->redo, NULL, 0, bl[i].disk, bl[i].blk,
		    buf + i * STORE_BLOCK,
		    blk_len(s, bl[i].disk, bl[i].blk * STORE_BLOCK));
	free(buf);
	return rc;
}

/* Play the undo records of point Q into the images, saving what they
 * overwrite as redo records first. */
static int
play_undo(struct store *s, uint64_t q)
{
	uint8_t pre[8], key[32 + KV_INLINE_MAX];
	size_t keylen = 8;
	int rc, more = 1;

	kv_put64(pre, q);
	memcpy(key, pre, 8);
	while (more) {
		MDB_txn *txn;
		MDB_cursor *cur;
		MDB_val k = { keylen, key }, d;
		struct {
			uint32_t disk;
			uint64_t blk;
			size_t off, len;
		} *recs = NULL;
		struct ul_rd *rd = NULL;	/* data in the undo log */
		struct cblk *redo = NULL;	/* blocks to keep as redo */
		size_t n = 0, cap = 0, used = 0, nrd = 0, nredo = 0;
		int op = MDB_SET_RANGE;

		if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)) != 0)
			return sfail(s, "failover: %s", mdb_strerror(rc));
		if ((rc = mdb_cursor_open(txn, s->undo, &cur)) != 0) {
			mdb_txn_abort(txn);
			return sfail(s, "failover: %s", mdb_strerror(rc));
		}
		more = 0;
		while ((rc = mdb_cursor_get(cur, &k, &d, op)) == 0) {
			uint32_t disk;
			uint64_t blk;
			size_t len;

			op = MDB_NEXT;
			if (k.mv_size < 8 || memcmp(k.mv_data, pre, 8) != 0)
				break;
			if (used + STORE_BLOCK > CHUNK_BYTES) {
				/* resume from this key next round */
				keylen = k.mv_size < sizeof(key) ? k.mv_size :
				    sizeof(key);
				memcpy(key, k.mv_data, keylen);
				more = 1;
				break;
			}
			if (n == cap) {
				void *nr, *nd, *nb;

				cap = cap ? cap * 2 : 1024;
				nr = realloc(recs, cap * sizeof(*recs));
				if (nr != NULL)
					recs = nr;
				nd = realloc(rd, cap * sizeof(*rd));
				if (nd != NULL)
					rd = nd;
				nb = realloc(redo, cap * sizeof(*redo));
				if (nb != NULL)
					redo = nb;
				if (nr == NULL || nd == NULL || nb == NULL) {
					rc = ENOMEM;
					break;
				}
			}
			rc = br_decode(&k, &d, 8, &disk, &blk,
			    s->buf + used, &len, &rd[nrd]);
			if (rc == 1) {
				nrd++;	/* read below, with the others */
				rc = 0;
			}
			if (rc != 0 || disk >= s->info.ndisks) {
				rc = MDB_CORRUPTED;
				break;
			}
			recs[n].disk = disk;
			recs[n].blk = blk;
			recs[n].off = used;
			recs[n].len = len;
			n++;
			used += len;
			/* redo: first touch keeps the latest point's bytes */
			rc = br_exists(txn, s->redo, NULL, 0, disk, blk);
			if (rc < 0) {
				sfail(s, "failover: redo lookup failed");
				rc = EIO;
				break;
			}
			if (rc == 0) {	/* read below, with the others */
				redo[nredo].disk = disk;
				redo[nredo++].blk = blk;
			}
			rc = 0;
		}
		mdb_cursor_close(cur);
		if (rc == MDB_NOTFOUND)
			rc = 0;
		if (rc == 0)
			rc = keep_redo(s, txn, redo, nredo);
		if (rc == 0 && ul_read_many(s, rd, nrd) != 0)
			rc = EIO;
		free(rd);
		free(redo);
		if (rc != 0) {
			mdb_txn_abort(txn);
			free(recs);
			/* EIO: s->err names the cause already */
			return rc == EIO ? -1 : sfail(s, "failover: %s",
			    mdb_strerror(rc));
		}
		if ((rc = mdb_txn_commit(txn)) != 0 ||
		    (rc = mdb_env_sync(s->env, 1)) != 0) {
			free(recs);
			return sfail(s, "failover: %s", mdb_strerror(rc));
		}
		/* many at once around the page cache: the image's pages
		 * are not cached, and writing through it into them made ten
		 * points back on 8 GiB take 5.5 s instead of 2.5 (README) */
		for (size_t i = 0; i < n; i++)
			if (pwrite_queue(s, recs[i].disk,
			    recs[i].blk * STORE_BLOCK, s->buf + recs[i].off,
			    recs[i].len) != 0) {
				(void)pwrite_wait(s);
				free(recs);
				return -1;
			}
		free(recs);
		if (pwrite_wait(s) != 0)
			return -1;
	}
	return 0;
}

/* Write every redo record back: the images hold the latest point again. */
int
restore_redo(struct store *s)
{
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_val k, d;
	size_t used = 0;	/* of s->buf: blocks queued (pwrite_queue) */
	int rc, op = MDB_FIRST;

	if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)) != 0)
		return sfail(s, "cancel: %s", mdb_strerror(rc));
	if ((rc = mdb_cursor_open(txn, s->redo, &cur)) != 0) {
		mdb_txn_abort(txn);
		return sfail(s, "cancel: %s", mdb_strerror(rc));
	}
	while ((rc = mdb_cursor_get(cur, &k, &d, op)) == 0) {
		uint32_t disk;
		uint64_t blk;
		size_t len;

		op = MDB_NEXT;
		if (used + STORE_BLOCK > CHUNK_BYTES) {
			if (pwrite_wait(s) != 0) {
				rc = EIO;
				break;
			}
			used = 0;
		}
		if (br_decode(&k, &d, 0, &disk, &blk, s->buf + used, &len,
		    NULL) != 0 ||
		    disk >= s->info.ndisks) {
			rc = MDB_CORRUPTED;
			break;
		}
		if (pwrite_queue(s, disk, blk * STORE_BLOCK, s->buf + used,
		    len) != 0) {
			rc = EIO;
			break;
		}
		used += STORE_BLOCK;
	}
	if (pwrite_wait(s) != 0 && rc != EIO)
		rc = EIO;
	mdb_cursor_close(cur);
	mdb_txn_abort(txn);
	if (rc != MDB_NOTFOUND)
		return rc == EIO ? -1 : sfail(s, "cancel: %s",
		    mdb_strerror(rc));
	if (sync_disks(s) != 0)
		return -1;
	if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)) != 0)
		return sfail(s, "cancel: %s", mdb_strerror(rc));
	if ((rc = mdb_drop(txn, s->redo, 0)) != 0) {
		mdb_txn_abort(txn);
		return sfail(s, "cancel: %s", mdb_strerror(rc));
	}
	s->rolling = 0;
	s->info.state = STORE_NORMAL;
	s->info.failover_point = 0;
	if ((rc = save_info(s, txn)) != 0) {
		mdb_txn_abort(txn);
		return sfail(s, "cancel: %s", mdb_strerror(rc));
	}
	if ((rc = mdb_txn_commit(txn)) != 0 ||
	    (rc = mdb_env_sync(s->env, 1)) != 0)
		return sfail(s, "cancel: %s", mdb_strerror(rc));
	return 0;
}

/* Whether point Q has undo records. */
static int
has_undo(struct store *s, uint64_t q, int *has)
{
	uint8_t pre[8];
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_val k = { 8, pre }, d;
	int rc;

	kv_put64(pre, q);
	if ((rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &txn)) != 0)
		return sfail(s, "failover: %s", mdb_strerror(rc));
	if ((rc = mdb_cursor_open(txn, s->undo, &cur)) != 0) {
		mdb_txn_abort(txn);
		return sfail(s, "failover: %s", mdb_strerror(rc));
	}
	rc = mdb_cursor_get(cur, &k, &d, MDB_SET_RANGE);
	*has = rc == 0 && k.mv_size >= 8 && memcmp(k.mv_data, pre, 8) == 0;
	mdb_cursor_close(cur);
	mdb_txn_abort(txn);
	if (rc != 0 && rc != MDB_NOTFOUND)
		return sfail(s, "failover: %s", mdb_strerror(rc));
	return 0;
}

int
store_failover(struct store *s, uint64_t id)
{
	struct store_point *pts, target;
	uint8_t *merging;
	size_t n;
	int ahead;

	if (s->info.state == STORE_FAILEDOVER)
		return sfail(s, "already failed over to point %llu (commit "
		    "or cancel first)",
		    (unsigned long long)s->info.failover_point);
	/* a point logged ahead of its apply is made whole first; if it is
	 * still not applied, only a point before it can be reached, and the
	 * latest is refused with the cause rather than silently replaced */
	if (s->logged)
		(void)store_apply(s);
	if (s->logged && (id == 0 || id > s->info.last_point)) {
		char cause[sizeof(s->err)];

		snprintf(cause, sizeof(cause), "%s", s->err);
		return sfail(s, "a received point could not be applied: %s",
		    cause);
	}
	if (s->info.state != STORE_NORMAL || s->info.last_point == 0)
		return sfail(s, "no recovery point yet (replica is %s)",
		    store_state_name(s->info.state));
	if (id == 0)
		id = s->info.last_point;
	if (store_find_point(s, id, &target) != 1)
		return sfail(s, "no recovery point %llu",
		    (unsigned long long)id);
	/* writes applied ahead of the next point are taken back first
	 * (kept as redo records for a cancel like the rest); a failover is
	 * what a disaster needs, so an earlier apply error does not stop
	 * it */
	store_settle(s);
	if (has_undo(s, s->info.last_point, &ahead) != 0)
		return -1;
	s->info.state = STORE_FAILEDOVER;
	s->info.failover_point = id;
	s->rolling = id != s->info.last_point || ahead;
	if (commit_info(s) != 0)
		return -1;
	if (!s->rolling)
		return 0;	/* the images hold it already: no copy */
	if (pt_load(s, &pts, &merging, &n) != 0)
		return -1;
	for (size_t i = n; i-- > 0;) {
		if (pts[i].id > s->info.last_point || pts[i].id < id)
			continue;
		if (play_undo(s, pts[i].id) != 0) {
			free(pts);
			free(merging);
			return -1;
		}
	}
	free(pts);
	free(merging);
	if (sync_disks(s) != 0)
		return -1;
	s->rolling = 0;
	return commit_info(s);
}

int
store_cancel(struct store *s)
{
	if (s->info.state != STORE_FAILEDOVER)
		return sfail(s, "not failed over (replica is %s)",
		    store_state_name(s->info.state));
	if (restore_redo(s) != 0)
		return -1;
	return store_apply(s) < 0 ? -1 : 0;
}

int
store_commit(struct store *s)
{
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_val k, d;
	int rc;

	if (s->info.state != STORE_FAILEDOVER)
		return sfail(s, "not failed over (replica is %s)",
		    store_state_name(s->info.state));
	if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)) != 0)
		return sfail(s, "commit: %s", mdb_strerror(rc));
	if ((rc = mdb_drop(txn, s->undo, 0)) != 0 ||
	    (rc = ul_reset(s, txn)) != 0 ||
	    (rc = mdb_drop(txn, s->redo, 0)) != 0 ||
	    (rc = mdb_cursor_open(txn, s->points, &cur)) != 0)
		goto fail;
	while ((rc = mdb_cursor_get(cur, &k, &d, MDB_NEXT)) == 0)
		if (k.mv_size == 8 &&
		    kv_get64(k.mv_data) != s->info.failover_point &&
		    (rc = mdb_cursor_del(cur, 0)) != 0)
			break;
	mdb_cursor_close(cur);
	if (rc != MDB_NOTFOUND)
		goto fail;
	s->info.state = STORE_COMMITTED;
	s->info.last_point = s->info.failover_point;
	if ((rc = save_info(s, txn)) != 0)
		goto fail;
	if ((rc = mdb_txn_commit(txn)) != 0 ||
	    (rc = mdb_env_sync(s->env, 1)) != 0)
		return sfail(s, "commit: %s", mdb_strerror(rc));
	ul_remove_all(s);
	if (journal_trim(s->stage, UINT64_MAX) < 0)
		return sfail(s, "stage: %s", journal_error(s->stage));
	return 0;
fail:
	mdb_txn_abort(txn);
	return sfail(s, "commit: %s", mdb_strerror(rc));
}

/* ------------------------------------------------------------------ */
/* retention */

/* Move the undo records of point P to PREV (or delete them if PREV is 0)
 * where PREV has none for that block, then delete P's row.  P is marked
 * merging first so it is never listed half-merged.  A record moves as it
 * is (its data stays where it is); the undo log slot of one deleted is
 * punched out once its transaction commits. */
static int
merge_point(struct store *s, const struct store_point *p, uint64_t prev)
{
	uint8_t pre[8], ppre[8], key[32 + KV_INLINE_MAX], val[STORE_BLOCK];
	MDB_txn *txn;
	MDB_cursor *cur;
	MDB_val k, d;
	int rc, done = 0;

	kv_put64(pre, p->id);
	kv_put64(ppre, prev);
	if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)) != 0)
		return sfail(s, "retain: %s", mdb_strerror(rc));
	if ((rc = pt_put(txn, s->points, p, 1)) != 0 ||
	    (rc = mdb_txn_commit(txn)) != 0)
		return sfail(s, "retain: %s", mdb_strerror(rc));
	while (!done) {
		int count = 0;

		if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)) != 0)
			return sfail(s, "retain: %s", mdb_strerror(rc));
		if ((rc = mdb_cursor_open(txn, s->undo, &cur)) != 0)
			goto fail;
		k.mv_size = 8;
		k.mv_data = pre;
		rc = mdb_cursor_get(cur, &k, &d, MDB_SET_RANGE);
		while (rc == 0 && count < 4096) {
			const uint8_t *kp = k.mv_data;
			uint32_t disk;
			uint64_t blk;
			int moved = 0;

			if (k.mv_size < 8 || memcmp(kp, pre, 8) != 0)
				break;
			if (k.mv_size < 8 + 13 || k.mv_size > sizeof(key) ||
			    d.mv_size > sizeof(val) ||
			    (kp[20] == BR_REF && d.mv_size != 8)) {
				rc = MDB_CORRUPTED;
				break;
			}
			disk = kv_get32(kp + 8);
			blk = kv_get64(kp + 12);
			/* copies: a put may move what k and d point at */
			memcpy(key, kp, k.mv_size);
			memcpy(val, d.mv_data, d.mv_size);
			k.mv_data = key;
			d.mv_data = val;
			if (prev) {
				int ex = br_exists(txn, s->undo, ppre, 8,
				    disk, blk);
				MDB_val nk = k, fk = { 8 + 12, key };

				if (ex < 0) {
					rc = EIO;
					break;
				}
				if (!ex) {
					uint8_t nkey[sizeof(key)];

					memcpy(nkey, key, k.mv_size);
					memcpy(nkey, ppre, 8);
					nk.mv_data = nkey;
					if ((rc = mdb_put(txn, s->undo, &nk, &d,
					    0)) != 0)
						break;
					moved = 1;
				}
				/* the put may move the cursor: find again */
				if ((rc = mdb_cursor_get(cur, &fk, &d,
				    MDB_SET_RANGE)) != 0)
					break;
				k = fk;
			}
			if (!moved && key[20] == BR_REF &&
			    (rc = ul_free(s, kv_get64(val))) != 0)
				break;
			if ((rc = mdb_cursor_del(cur, 0)) != 0)
				break;
			count++;
			rc = mdb_cursor_get(cur, &k, &d, MDB_GET_CURRENT);
			if (rc == EINVAL)
				rc = MDB_NOTFOUND;
		}
		if (rc == MDB_NOTFOUND || (rc == 0 && count < 4096))
			done = 1;
		else if (rc != 0) {
			mdb_cursor_close(cur);
			goto fail;
		}
		mdb_cursor_close(cur);
		if (done) {
			uint8_t pkey[8];
			MDB_val pk = { 8, pkey };

			kv_put64(pkey, p->id);
			if ((rc = mdb_del(txn, s->points, &pk, NULL)) != 0)
				goto fail;
		}
		if ((rc = ul_put_freed(s, txn)) != 0)
			goto fail;
		/* a slot is punched only once no record can come back to
		 * it: after the commit is durable */
		if ((rc = mdb_txn_commit(txn)) != 0 || (s->ul_nfreed > 0 &&
		    (rc = mdb_env_sync(s->env, 1)) != 0)) {
			ul_forget_freed(s);
			return sfail(s, "retain: %s", mdb_strerror(rc));
		}
		ul_punch_freed(s);
	}
	return 0;
fail:
	mdb_txn_abort(txn);
	ul_forget_freed(s);
	return sfail(s, "retain: %s", mdb_strerror(rc));
}

/* Finish merges a crash interrupted. */
int
finish_merges(struct store *s)
{
	struct store_point *pts;
	uint8_t *merging;
	size_t n;
	int r = 0;

	if (pt_load(s, &pts, &merging, &n) != 0)
		return -1;
	for (size_t i = 0; i < n && r == 0; i++)
		if (merging[i])
			r = merge_point(s, &pts[i], i ? pts[i - 1].id : 0);
	free(pts);
	free(merging);
	return r;
}

int
store_retain(struct store *s, const struct retain_rule *rules,
    size_t nrules, int64_t now_ms, int *dropped)
{
	struct store_point *pts;
	uint8_t *merging, *keep;
	int64_t *times;
	size_t n, m = 0;
	int r = 0;

	*dropped = 0;
	if (s->info.state != STORE_NORMAL || nrules == 0)
		return 0;
	if (mem_wait(s) != 0)
		return -1;
	if (pt_load(s, &pts, &merging, &n) != 0)
		return -1;
	times = calloc(n ? n : 1, sizeof(*times));
	keep = calloc(n ? n : 1, 1);
	if (times == NULL || keep == NULL) {
		r = sfail(s, "out of memory");
		goto out;
	}
	/* merging rows are already on their way out */
	for (size_t i = 0; i < n; i++)
		if (!merging[i])
			pts[m++] = pts[i];
	for (size_t i = 0; i < m; i++)
		times[i] = pts[i].time_ms;
	retention_select(times, m, rules, nrules, now_ms, keep);
	for (size_t i = 0; i < m && r == 0; i++) {
		if (keep[i] || pts[i].id == s->info.last_point)
			continue;
		/* merge into the row before (a dropped one stands for
		 * the survivor it merged into) */
		uint64_t prev = i ? pts[i - 1].id : 0;

		r = merge_point(s, &pts[i], prev);
		if (r == 0) {
			(*dropped)++;
			keep[i] = 0;
			/* later points merge into the last survivor */
			pts[i].id = prev;
		}
	}
out:
	free(times);
	free(keep);
	free(pts);
	free(merging);
	return r;
}

