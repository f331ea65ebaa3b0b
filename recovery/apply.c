/*
 * apply.c: receiving and applying journal entries on the DR site: held in
 * memory and applied by a flusher thread, or staged and applied from the
 * stage; before-images saved as undo records first (read in parallel);
 * the durable mark acknowledged to the primary; point markers recorded.
 */
#include "store_int.h"
#include "fileio.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int precapture(struct store *s, const struct jentry *e, size_t n);
static int mem_pump(struct store *s);
static int mem_flush(struct store *s);
static int mem_flush_start(struct store *s, int sync);
static int images_durable(struct store *s);

static int
gap_error(struct store *s)
{
	return sfail(s, "entries after %llu were lost to an earlier error "
	    "and must come again from the primary",
	    (unsigned long long)s->img_seq);
}

void
store_resume(struct store *s)
{
	s->gap = 0;
}

/* Hold entry E in memory (applying what is held when full). */
static int
mem_add(struct store *s, const struct jentry *e)
{
	struct memchunk *m = &s->mc[s->mcur];
	struct jentry *je;

	if (e->type == JE_WRITE && m->n > 0 &&
	    m->used + e->length > CHUNK_BYTES) {
		if (mem_flush_start(s, 0) != 0)
			return -1;
		m = &s->mc[s->mcur];
	}
	/* aligned: entries of whole blocks go to the disk from here */
	if (m->buf == NULL && posix_memalign((void **)&m->buf, DIO_BLOCK,
	    CHUNK_BYTES) != 0) {
		m->buf = NULL;
		return sfail(s, "out of memory");
	}
	if (m->n == m->cap) {
		size_t ncap = m->cap ? m->cap * 2 : 1024;
		struct jentry *ne = realloc(m->e, ncap * sizeof(*ne));

		if (ne == NULL)
			return sfail(s, "out of memory");
		m->e = ne;
		m->cap = ncap;
	}
	je = &m->e[m->n++];
	*je = *e;
	je->data = NULL;
	if (e->type == JE_WRITE) {
		memcpy(m->buf + m->used, e->data, e->length);
		je->data = m->buf + m->used;
		m->used += e->length;
	}
	return 0;
}

/* The last seq held in memory (in any chunk), or 0. */
static uint64_t
mem_last(struct store *s)
{
	const struct memchunk *m = &s->mc[s->mcur];

	if (m->n == 0 && s->mq_n > 0)
		m = &s->mc[s->mq[s->mq_n - 1]];
	if (m->n == 0 && s->fl_m != NULL)
		m = s->fl_m;
	return m->n > 0 ? m->e[m->n - 1].seq : 0;
}

int
store_stage(struct store *s, const struct jentry *e, size_t n)
{
	uint64_t held;
	size_t i = 0;

	/* a point logged ahead of its apply comes first: what follows it
	 * belongs to the next interval (its before-images are of that
	 * point) */
	if (s->logged && !s->gap && store_apply(s) < 0)
		return -1;
	held = store_held_seq(s);

	/* in the images or in memory already (sent again after a drop) */
	if (s->img_seq > held)
		held = s->img_seq;
	if (mem_last(s) > held)
		held = mem_last(s);
	if (s->info.state == STORE_NEW || s->info.state == STORE_SYNCING)
		return sfail(s, "journal entries before the initial copy "
		    "completed");
	if (s->info.state == STORE_COMMITTED)
		return sfail(s, "replica was failed over and committed");
	if (s->gap)
		return gap_error(s);
	for (size_t k = 0; k < n; k++) {
		if (e[k].type == JE_POINT)
			continue;
		if (e[k].type != JE_WRITE && e[k].type != JE_ZERO)
			return sfail(s, "entry %llu: unknown type",
			    (unsigned long long)e[k].seq);
		if (e[k].type == JE_WRITE && e[k].length > STORE_MAX_ENTRY)
			return sfail(s, "entry %llu of %u bytes over the %u cap",
			    (unsigned long long)e[k].seq, e[k].length,
			    STORE_MAX_ENTRY);
		if (check_range(s, e[k].disk, e[k].offset, e[k].length) != 0)
			return -1;
	}
	/*
	 * Nothing staged waits to be applied: writes go to the images from
	 * memory, without the stage (which would write them twice more).
	 * What is in memory is not durable and not acknowledged; a crash
	 * loses it and the primary sends it again.
	 */
	if (s->info.state == STORE_NORMAL &&
	    journal_last_seq(s->stage) <= s->img_seq) {
		if (mem_pump(s) != 0)
			return -1;
		for (; i < n && e[i].type != JE_POINT; i++) {
			if (e[i].seq <= held)
				continue;
			if (mem_add(s, &e[i]) != 0)
				return -1;
			held = e[i].seq;
		}
		if (i == n)
			return 0;
		/* what follows is staged: a staged marker must never be
		 * durable ahead of the writes before it */
		if (mem_flush(s) != 0 || images_durable(s) != 0)
			return -1;
	}
	if (journal_begin(s->stage) != 0)
		return sfail(s, "%s", journal_error(s->stage));
	for (size_t k = i; k < n; k++) {
		if (e[k].seq <= held)
			continue;
		if (journal_put(s->stage, &e[k]) != 0) {
			journal_abort(s->stage);
			return sfail(s, "stage: %s", journal_error(s->stage));
		}
		held = e[k].seq;
		s->stage_pending += e[k].type == JE_WRITE ? e[k].length : 0;
	}
	if (journal_commit(s->stage) != 0)
		return sfail(s, "stage: %s", journal_error(s->stage));
	if (s->info.state == STORE_NORMAL && s->info.last_point &&
	    precapture(s, e + i, n - i) != 0)
		return -1;
	return 0;
}

/*
 * A sync of the images failed: what was written since the last durable
 * mark may be lost even if a later sync succeeds (the kernel reports a
 * writeback error once).  Everything after that mark is applied again,
 * from the stage or, since memory is gone, sent again by the primary.
 */
static int
images_lost(struct store *s)
{
	s->img_seq = s->img_dur;
	s->ahead_bytes = s->ahead_dur;
	s->stage_pending = journal_bytes(s->stage);
	s->gap = 1;
	return -1;
}

/* The images were synced with everything up to img_seq in them: record
 * it (meta "img"). */
static int
record_durable(struct store *s)
{
	uint64_t was = s->img_dur, wasb = s->ahead_dur;

	s->img_dur = s->img_seq;
	s->ahead_dur = s->ahead_bytes;
	if (commit_info(s) != 0) {
		s->img_dur = was;
		s->ahead_dur = wasb;
		return -1;
	}
	s->dur_news = 1;
	return 0;
}

/* Make what the images hold durable, and record it. */
static int
images_durable(struct store *s)
{
	if (s->img_seq <= s->img_dur)
		return 0;
	if (sync_disks(s) != 0)
		return images_lost(s);
	return record_durable(s);
}

int
store_stage_sync(struct store *s, uint64_t *seq)
{
	if (s->gap)
		return gap_error(s);
	if (mem_flush(s) != 0)
		return -1;
	if (journal_sync(s->stage) != 0)
		return sfail(s, "stage: %s", journal_error(s->stage));
	if (images_durable(s) != 0)
		return -1;
	s->dur_news = 0;
	*seq = store_held_seq(s);
	return 0;
}

int
store_sync_start(struct store *s)
{
	if (s->gap)
		return gap_error(s);
	if (s->mc[s->mcur].n == 0 && s->mq_n > 0) {
		/* the last chunk queued (not started) syncs after it */
		s->mc[s->mq[s->mq_n - 1]].sync = 1;
		return 1;
	}
	if (s->mc[s->mcur].n == 0)
		return 0;
	return mem_flush_start(s, 1) == 0 ? 1 : -1;
}

int
store_sync_poll(struct store *s, uint64_t *seq)
{
	if (mem_pump(s) != 0)
		return -1;
	if (!s->dur_news)
		return 0;
	/* held beyond both marks: entries staged after them (failed over,
	 * say), not synced; the blocking store_stage_sync acknowledges them */
	*seq = store_held_seq(s);
	if (*seq > s->img_dur && *seq > s->info.applied_seq)
		return 0;
	s->dur_news = 0;
	return 1;
}

int
store_flushing(struct store *s)
{
	return s->mq_n > 0 || (s->fl_m != NULL &&
	    !__atomic_load_n(&s->fl_done, __ATOMIC_ACQUIRE));
}

void
store_settle(struct store *s)
{
	/* an error drops what memory held: not acknowledged, and the
	 * writes it made are taken back like the others */
	(void)mem_flush(s);
}

struct chunk {
	struct store *s;
	uint64_t upto;		/* last seq of the interval */
	struct jentry *e;
	size_t n, cap;
	size_t used;		/* bytes of s->buf in use */
	uint64_t last;		/* last seq collected */
	struct jentry point;	/* the marker, once reached */
	int have_point;
	int err;
};

static int
collect(const struct jentry *e, void *arg)
{
	struct chunk *c = arg;

	if (c->upto && e->seq > c->upto)
		return 1;
	if (e->type == JE_POINT) {
		c->point = *e;
		c->have_point = 1;
		c->last = e->seq;
		return 1;
	}
	if (e->type == JE_WRITE && c->n > 0 &&
	    c->used + e->length > CHUNK_BYTES)
		return 1;
	if (c->n == c->cap) {
		size_t ncap = c->cap ? c->cap * 2 : 256;
		struct jentry *ne = realloc(c->e, ncap * sizeof(*ne));

		if (ne == NULL) {
			c->err = 1;
			return 1;
		}
		c->e = ne;
		c->cap = ncap;
	}
	c->e[c->n] = *e;
	if (e->type == JE_WRITE) {
		if (e->length > CHUNK_BYTES) {
			c->err = 1;
			return 1;
		}
		memcpy(c->s->buf + c->used, e->data, e->length);
		c->e[c->n].data = c->s->buf + c->used;
		c->used += e->length;
	}
	c->n++;
	c->last = e->seq;
	return 0;
}

/*
 * Before-images.  The blocks a chunk touches that have no undo record yet
 * are gathered, sorted and merged into runs, and the runs are read by a
 * few threads at once: with the page cache cold these are random reads,
 * and one at a time they bound how fast the DR site keeps up.
 */
struct crun {
	uint32_t disk;
	uint64_t off;		/* in the image */
	size_t len, at;		/* bytes, and where they go in the buffer */
	int err;		/* errno of a failed read */
};

struct cread {
	struct store *s;
	struct crun *runs;
	uint8_t *buf;
};

static int
cblk_cmp(const void *a, const void *b)
{
	const struct cblk *x = a, *y = b;

	if (x->disk != y->disk)
		return x->disk < y->disk ? -1 : 1;
	return x->blk < y->blk ? -1 : x->blk > y->blk;
}

/* The O_DIRECT descriptor run U can be read with into P, or -1: whole
 * blocks, aligned, where the file system has O_DIRECT. */
static int
run_dfd(const struct store *s, const struct crun *u, const uint8_t *p)
{
	if ((uintptr_t)p % DIO_BLOCK != 0 || u->off % DIO_BLOCK != 0 ||
	    u->len % DIO_BLOCK != 0)
		return -1;
	return s->dfds[u->disk];
}

static void
cread_one(void *arg, size_t i)
{
	struct cread *r = arg;
	struct crun *u = &r->runs[i];
	uint8_t *p = r->buf + u->at;
	int dfd = run_dfd(r->s, u, p);

	/* around the page cache where it can: read through it, each block
	 * not cached costs a new page and a copy out of it */
	if (dfd >= 0) {
		if (pread_data(dfd, p, u->len, u->off) == 0)
			return;
		if (errno != EINVAL) {	/* EINVAL: the alignment it wants */
			u->err = errno ? errno : EIO;
			return;
		}
	}
	if (pread_data(r->s->fds[u->disk], p, u->len, u->off) != 0)
		u->err = errno ? errno : EIO;
}

/*
 * Read every run: those of whole blocks around the page cache with native
 * AIO, CAPTURE_DEPTH at once (one thread, a system call per 16 reads);
 * the others, and any the kernel would not take that way, with up to
 * CAPTURE_THREADS threads (cread_one).  Before, every run took its own
 * pread from one of 16 threads, and two lseeks to skip holes (a read
 * around the cache does not fill it with a hole's zeroes anyway).
 */
static int
read_runs(struct store *s, struct crun *runs, size_t nruns, uint8_t *buf)
{
	struct dio_read *rd = calloc(nruns, sizeof(*rd));
	size_t *at = calloc(nruns, sizeof(*at)), nrd = 0, nleft = 0;
	struct cread r = { s, runs, buf };

	if (rd == NULL || at == NULL) {
		free(rd);
		free(at);
		return sfail(s, "out of memory");
	}
	for (size_t i = 0; i < nruns; i++) {
		uint8_t *p = buf + runs[i].at;
		int dfd = run_dfd(s, &runs[i], p);

		if (dfd >= 0) {
			rd[nrd].dfd = dfd;
			rd[nrd].buf = p;
			rd[nrd].len = runs[i].len;
			rd[nrd].off = runs[i].off;
			at[nrd++] = i;
		}
	}
	if (nrd > 0 && s->rdio == NULL && !s->rdio_none &&
	    (s->rdio = dio_reader_open(CAPTURE_DEPTH)) == NULL)
		s->rdio_none = 1;	/* no AIO context: threads only */
	if (nrd > 0 && (s->rdio == NULL || dio_read_all(s->rdio, rd,
	    nrd) != 0))
		for (size_t k = 0; k < nrd; k++)
			rd[k].err = EAGAIN;	/* read another way */
	/* what is left, in place at the front of RUNS (ascending: K <= I) */
	for (size_t i = 0, k = 0; i < nruns; i++) {
		if (k < nrd && at[k] == i && rd[k++].err == 0)
			continue;
		runs[nleft++] = runs[i];
	}
	free(rd);
	free(at);
	par_for(nleft, CAPTURE_THREADS, cread_one, &r);
	for (size_t i = 0; i < nleft; i++)
		if (runs[i].err)
			return sfail(s, "read %s: %s", s->paths[runs[i].disk],
			    strerror(runs[i].err));
	return 0;
}

/* Read blocks BL[0..NB) (sorted, distinct) into BUF, a 4 KiB slot each
 * (a short last block of a disk is padded with zeroes). */
int
read_blocks(struct store *s, const struct cblk *bl, size_t nb, uint8_t *buf)
{
	struct crun *runs;
	size_t nruns = 0;
	int r;

	if (nb == 0)
		return 0;
	if ((runs = calloc(nb, sizeof(*runs))) == NULL)
		return sfail(s, "out of memory");
	for (size_t i = 0; i < nb; i++) {
		struct crun *last = nruns ? &runs[nruns - 1] : NULL;
		uint64_t off = bl[i].blk * STORE_BLOCK;
		size_t len = blk_len(s, bl[i].disk, off);

		memset(buf + i * STORE_BLOCK + len, 0, STORE_BLOCK - len);
		/* only a disk's last block can be short, and it ends its
		 * run: slots and image bytes stay in step */
		if (last && last->disk == bl[i].disk &&
		    last->off + last->len == off &&
		    last->len < RUN_BLOCKS * STORE_BLOCK) {
			last->len += len;
		} else {
			runs[nruns].disk = bl[i].disk;
			runs[nruns].off = off;
			runs[nruns].len = len;
			runs[nruns++].at = i * STORE_BLOCK;
		}
	}
	r = read_runs(s, runs, nruns, buf);
	free(runs);
	return r;
}

/* Save the before-image of every block the chunk touches, first touch
 * only, as undo records of point FROM: the data goes to the undo log
 * (synced there), the records to LMDB; commit (and with SYNC, sync). */
static int
capture_undo(struct store *s, const struct chunk *c, uint64_t from,
    int sync)
{
	uint8_t pre[8], *buf = NULL;
	struct cblk *bl = NULL;
	struct iovec *iov = NULL;
	size_t nb = 0, cap = 0, niov = 0;
	uint64_t first = 0;
	MDB_txn *txn;
	MDB_cursor *cur;
	int rc, r = -1, appended = 0;

	kv_put64(pre, from);
	if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)) != 0)
		return sfail(s, "undo: %s", mdb_strerror(rc));
	if ((rc = mdb_cursor_open(txn, s->undo, &cur)) != 0) {
		mdb_txn_abort(txn);
		return sfail(s, "undo: %s", mdb_strerror(rc));
	}
	for (size_t i = 0; i < c->n; i++) {
		const struct jentry *e = &c->e[i];

		if (e->length == 0)
			continue;
		for (uint64_t b = e->offset / STORE_BLOCK;
		    b <= (e->offset + e->length - 1) / STORE_BLOCK; b++) {
			int ex = br_exists_at(cur, pre, 8, e->disk, b);

			if (ex < 0) {
				sfail(s, "undo: lookup failed");
				goto out;
			}
			if (ex)
				continue;
			if (nb == cap) {
				void *nbl;

				cap = cap ? cap * 2 : 256;
				if ((nbl = realloc(bl, cap * sizeof(*bl))) ==
				    NULL) {
					sfail(s, "out of memory");
					goto out;
				}
				bl = nbl;
			}
			bl[nb].disk = e->disk;
			bl[nb++].blk = b;
		}
	}
	mdb_cursor_close(cur);
	cur = NULL;
	if (nb > 0) {
		size_t u = 0;

		qsort(bl, nb, sizeof(*bl), cblk_cmp);
		for (size_t i = 0; i < nb; i++)	/* touched twice: once */
			if (u == 0 || cblk_cmp(&bl[u - 1], &bl[i]) != 0)
				bl[u++] = bl[i];
		nb = u;
		/* a 4 KiB slot per block, aligned for the undo log's
		 * direct writes */
		if ((iov = calloc(nb, sizeof(*iov))) == NULL ||
		    posix_memalign((void **)&buf, STORE_BLOCK,
		    nb * STORE_BLOCK) != 0) {
			buf = NULL;
			sfail(s, "out of memory");
			goto out;
		}
		if (read_blocks(s, bl, nb, buf) != 0)
			goto out;
		for (size_t i = 0; i < nb; i++) {
			uint8_t *p = buf + i * STORE_BLOCK;
			size_t len = blk_len(s, bl[i].disk,
			    bl[i].blk * STORE_BLOCK);

			if (!block_is_zero(p, len)) {
				iov[niov].iov_base = p;
				iov[niov++].iov_len = STORE_BLOCK;
			}
		}
		if (ul_append(s, iov, niov, &first) != 0)
			goto out;
		appended = 1;
		for (size_t i = 0, j = 0; i < nb; i++) {
			uint8_t *p = buf + i * STORE_BLOCK;
			size_t len = blk_len(s, bl[i].disk,
			    bl[i].blk * STORE_BLOCK);

			if (j < niov && iov[j].iov_base == p)
				rc = br_put_ref(txn, s->undo, pre, 8,
				    bl[i].disk, bl[i].blk,
				    first + (j++) * STORE_BLOCK, len);
			else
				rc = br_put(txn, s->undo, pre, 8, bl[i].disk,
				    bl[i].blk, p, len);
			if (rc != 0) {
				sfail(s, "undo: %s", mdb_strerror(rc));
				goto out;
			}
		}
		if ((rc = ul_put_head(s, txn)) != 0) {
			sfail(s, "undo: %s", mdb_strerror(rc));
			goto out;
		}
	}
	rc = mdb_txn_commit(txn);
	txn = NULL;
	if (rc == 0)
		appended = 0;	/* the records own their slots now */
	if (rc == 0 && sync)
		rc = mdb_env_sync(s->env, 1);
	if (rc != 0) {
		sfail(s, "undo commit: %s", mdb_strerror(rc));
		goto out;
	}
	r = 0;
out:
	if (cur)
		mdb_cursor_close(cur);
	if (txn)
		mdb_txn_abort(txn);
	if (appended)	/* nothing refers to them: written over next */
		s->ul_head = first;
	free(bl);
	free(iov);
	free(buf);
	return r;
}

/*
 * Save before-images as entries arrive rather than all at the point: the
 * images hold the latest point until then, so what is read now is what
 * the point's apply would read, and the reads overlap the transfer.  The
 * records are not synced here (the apply syncs before it writes the
 * images); their data in the undo log is, since any later sync could
 * make the records durable.
 */
static int
precapture(struct store *s, const struct jentry *e, size_t n)
{
	struct chunk c;

	memset(&c, 0, sizeof(c));
	c.s = s;
	c.e = (struct jentry *)(uintptr_t)e;
	c.n = n;
	return capture_undo(s, &c, s->info.last_point, 0);
}

/* Write the chunk's entries into the images, many at once around the
 * page cache (pwrite_queue), in effect one by one in order. */
static int
write_chunk(struct store *s, const struct chunk *c)
{
	for (size_t i = 0; i < c->n; i++) {
		const struct jentry *e = &c->e[i];
		int r = e->type == JE_WRITE ?
		    pwrite_queue(s, e->disk, e->offset, e->data, e->length) :
		    pwrite_wait(s) || zero_disk(s, e->disk, e->offset,
		    e->length);

		if (r != 0) {
			(void)pwrite_wait(s);	/* the first error stands */
			return -1;
		}
	}
	return pwrite_wait(s);
}

/* Apply a chunk: the before-images of the latest point first (committed
 * and synced), then the images.  Without a point there is nothing to
 * keep. */
static int
apply_chunk(struct store *s, const struct chunk *c)
{
	if (s->info.last_point &&
	    capture_undo(s, c, s->info.last_point, 1) != 0)
		return -1;
	if (write_chunk(s, c) != 0)
		return -1;
	start_writeback(s);
	return 0;
}

/*
 * Entries held in memory are applied by a flusher thread while the next
 * chunk fills: the undo sync and the image writes wait on the disk, and
 * the receiving need not.  Only one chunk is applied at a time, in order.
 * Everything else that touches the images or the undo records waits for
 * it first (mem_wait), so the flusher has them to itself.
 */
static int
apply_mem(struct store *s, const struct memchunk *m)
{
	struct chunk c;

	memset(&c, 0, sizeof(c));
	c.s = s;
	c.e = m->e;
	c.n = m->n;
	return apply_chunk(s, &c);
}

/* Apply the chunk handed over and, if asked, make the images durable:
 * every chunk before it was applied before it, so they then hold every
 * entry up to its last durably. */
static void
flush_job(struct store *s)
{
	s->fl_rc = apply_mem(s, s->fl_m);
	if (s->fl_rc == 0 && s->fl_sync && sync_disks(s) != 0) {
		s->fl_rc = -1;
		s->fl_lost = 1;
	}
	__atomic_store_n(&s->fl_done, 1, __ATOMIC_RELEASE);
}

static void *
flusher(void *arg)
{
	struct store *s = arg;

	in_flusher = 1;
	(void)pthread_setname_np(pthread_self(), "flush");
	flush_job(s);
	return NULL;
}

/* Give chunk M's memory back (taken again when it fills). */
static void
mem_release(struct memchunk *m)
{
	free(m->buf);
	free(m->e);
	m->buf = NULL;
	m->e = NULL;
	m->cap = 0;
}

/* Forget what is held in memory: none of it was acknowledged.  The
 * flusher is idle. */
void
mem_drop(struct store *s)
{
	for (int i = 0; i < MEM_CHUNKS; i++) {
		struct memchunk *m = &s->mc[i];

		m->n = m->used = 0;
		if (i >= MEM_KEPT)
			mem_release(m);
	}
	s->mq_n = 0;
}

/* Start the flusher on chunk M. */
static void
mem_start(struct store *s, struct memchunk *m)
{
	s->fl_m = m;
	s->fl_rc = 0;
	s->fl_sync = m->sync;
	s->fl_lost = 0;
	s->fl_done = 0;
	s->fl_err[0] = '\0';
	if (pthread_create(&s->fl_th, NULL, flusher, s) == 0) {
		s->fl_joinable = 1;
	} else {
		/* no thread: applied here, an error is in s->err */
		flush_job(s);
		if (s->fl_rc != 0)
			snprintf(s->fl_err, sizeof(s->fl_err), "%s", s->err);
	}
}

/* Start the flusher on the next chunk queued, if it is idle. */
static void
mem_next(struct store *s)
{
	if (s->fl_m != NULL || s->mq_n == 0)
		return;
	mem_start(s, &s->mc[s->mq[0]]);
	s->mq_n--;
	memmove(s->mq, s->mq + 1, s->mq_n * sizeof(s->mq[0]));
}

/* Wait for the chunk being applied: its entries are then in the images.
 * On failure everything held in memory is dropped. */
static int
mem_reap(struct store *s)
{
	struct memchunk *m = s->fl_m;

	if (m == NULL)
		return 0;
	if (s->fl_joinable)
		pthread_join(s->fl_th, NULL);
	s->fl_m = NULL;
	s->fl_joinable = 0;
	if (s->fl_rc != 0) {
		/* none of it was acknowledged: until the primary is told to
		 * send it again (store_resume), later entries would leave a
		 * hole, so they are refused */
		snprintf(s->err, sizeof(s->err), "%s", s->fl_err);
		mem_drop(s);
		s->gap = 1;
		if (s->fl_lost)	/* applied before it but not durable */
			(void)images_lost(s);
		return -1;
	}
	s->img_seq = m->e[m->n - 1].seq;
	s->ahead_bytes += m->used;
	m->n = m->used = 0;
	if (m - s->mc >= MEM_KEPT)
		mem_release(m);	/* a burst's memory goes back */
	/* the flusher synced the images after this chunk */
	return s->fl_sync ? record_durable(s) : 0;
}

/* Without waiting: the flusher's chunk, if it is done, and the next. */
static int
mem_pump(struct store *s)
{
	if (s->fl_m != NULL &&
	    !__atomic_load_n(&s->fl_done, __ATOMIC_ACQUIRE))
		return 0;
	if (mem_reap(s) != 0)
		return -1;
	mem_next(s);
	return 0;
}

/* Wait until every chunk handed to the flusher is applied. */
int
mem_wait(struct store *s)
{
	for (;;) {
		mem_next(s);
		if (s->fl_m == NULL)
			return 0;
		if (mem_reap(s) != 0)
			return -1;
	}
}

/* Wait for the chunk being applied and drop the rest (not acknowledged:
 * it comes again), as a crash would. */
void
mem_stop(struct store *s)
{
	(void)mem_reap(s);
	mem_drop(s);
}

/* A chunk neither filling, applied nor queued, or -1. */
static int
mem_free(struct store *s)
{
	for (int i = 0; i < MEM_CHUNKS; i++) {
		int busy = i == s->mcur || &s->mc[i] == s->fl_m;

		for (size_t k = 0; k < s->mq_n && !busy; k++)
			busy = s->mq[k] == i;
		if (!busy)
			return i;
	}
	return -1;
}

/* Hand the chunk being filled to the flusher, behind those before it;
 * with SYNC, the flusher syncs the images after it.  The next chunk to
 * fill is a free one, once the flusher is done with one. */
static int
mem_flush_start(struct store *s, int sync)
{
	struct memchunk *m = &s->mc[s->mcur];
	int next;

	if (m->n == 0)
		return 0;
	if (mem_pump(s) != 0)
		return -1;
	while ((next = mem_free(s)) < 0) {
		/* fails when an apply failed (memory is dropped then) or
		 * the durable mark could not be recorded */
		if (mem_reap(s) != 0)
			return -1;
		mem_next(s);
	}
	m->sync = sync;
	s->mq[s->mq_n++] = s->mcur;
	s->mcur = next;
	mem_next(s);
	return 0;
}

/* Apply everything held in memory. */
static int
mem_flush(struct store *s)
{
	if (mem_flush_start(s, 0) != 0)
		return -1;
	return mem_wait(s);
}

/*
 * Apply staged entries after img_seq to the images, a chunk at a time:
 * the before-images first (first touch, committed and synced), then the
 * images.  Up to and including the marker of point UPTO, or, with UPTO 0,
 * every staged write before the next marker (applying ahead).
 */
static int
apply_staged(struct store *s, uint64_t upto, uint64_t *bytes)
{
	struct chunk c;
	uint64_t from = s->img_seq + 1;

	memset(&c, 0, sizeof(c));
	c.s = s;
	c.upto = upto;
	for (;;) {
		c.n = 0;
		c.used = 0;
		c.have_point = 0;
		if (journal_read(s->stage, from, SIZE_MAX, collect, &c) < 0) {
			free(c.e);
			return sfail(s, "stage: %s", journal_error(s->stage));
		}
		if (c.err) {
			free(c.e);
			return sfail(s, "stage: out of memory");
		}
		if (c.n > 0 && apply_chunk(s, &c) != 0) {
			free(c.e);
			return -1;
		}
		for (size_t i = 0; i < c.n; i++)
			*bytes += c.e[i].type == JE_WRITE ? c.e[i].length : 0;
		if (c.n > 0)
			s->img_seq = c.e[c.n - 1].seq;
		if (c.have_point || c.n == 0)
			break;
		from = c.last + 1;
	}
	free(c.e);
	return 0;
}

/* Apply the staged interval ending with the point at seq UPTO. */
static int
apply_point(struct store *s, const struct jentry *marker)
{
	struct store_point p;
	uint64_t bytes = 0;
	MDB_txn *txn;
	int rc, logged = s->logged;

	/* a point logged ahead of its apply has all its entries in the
	 * stage: what memory fails to apply (dropped then) comes from
	 * there */
	if ((mem_flush(s) != 0 && !logged) ||
	    apply_staged(s, marker->seq, &bytes) != 0)
		return -1;
	bytes += s->ahead_bytes;
	if (sync_disks(s) != 0)
		return images_lost(s);
	memset(&p, 0, sizeof(p));
	p.id = marker->point_id;
	p.seq = marker->seq;
	p.time_ms = marker->time_ms;
	p.kind = marker->kind;
	p.bytes = bytes;
	snprintf(p.label, sizeof(p.label), "%s", marker->label);
	s->info.applied_seq = marker->seq;
	s->info.last_point = marker->point_id;
	s->img_seq = s->img_dur = marker->seq;
	s->ahead_bytes = s->ahead_dur = s->stage_pending = 0;
	if ((rc = mdb_txn_begin(s->env, NULL, 0, &txn)) != 0)
		return sfail(s, "point: %s", mdb_strerror(rc));
	if ((rc = pt_put(txn, s->points, &p, 0)) != 0 ||
	    (rc = save_info(s, txn)) != 0) {
		mdb_txn_abort(txn);
		return sfail(s, "point: %s", mdb_strerror(rc));
	}
	if ((rc = mdb_txn_commit(txn)) != 0 ||
	    (rc = mdb_env_sync(s->env, 1)) != 0)
		return sfail(s, "point commit: %s", mdb_strerror(rc));
	s->logged = 0;
	/* nothing after a logged marker was taken in before this apply:
	 * what an error dropped is applied now, and nothing is missing */
	if (logged)
		s->gap = 0;
	if (journal_trim(s->stage, marker->seq) < 0)
		return sfail(s, "stage trim: %s", journal_error(s->stage));
	return 0;
}

static int
find_marker(const struct jentry *e, void *arg)
{
	struct jentry *m = arg;

	if (e->type != JE_POINT)
		return 0;
	*m = *e;
	m->data = NULL;
	return 1;
}

int
store_apply(struct store *s)
{
	int n = 0;

	while (s->info.state == STORE_NORMAL) {
		struct jentry m;

		memset(&m, 0, sizeof(m));
		if (journal_read(s->stage, s->info.applied_seq + 1, SIZE_MAX,
		    find_marker, &m) < 0)
			return sfail(s, "stage: %s", journal_error(s->stage));
		if (m.type != JE_POINT)
			break;
		if (apply_point(s, &m) != 0)
			return -1;
		n++;
	}
	return n;
}

int
store_apply_ahead(struct store *s)
{
	uint64_t bytes = 0;
	int r;

	if (s->info.state != STORE_NORMAL || s->stage_pending < AHEAD_BYTES)
		return 0;
	if (mem_wait(s) != 0)
		return -1;
	r = apply_staged(s, 0, &bytes);
	s->ahead_bytes += bytes;	/* what was applied, even on error */
	if (r == 0)
		s->stage_pending = 0;
	return r;
}


/* Put entries E[0..N) after *HELD into the open stage transaction. */
static int
log_entries(struct store *s, const struct jentry *e, size_t n, uint64_t *held)
{
	for (size_t i = 0; i < n; i++) {
		if (e[i].seq <= *held)
			continue;
		if (journal_put(s->stage, &e[i]) != 0)
			return -1;
		*held = e[i].seq;
	}
	return 0;
}

int
store_log_point(struct store *s, const struct jentry *marker)
{
	struct memchunk *m = &s->mc[s->mcur];
	uint64_t held;

	if (s->info.state != STORE_NORMAL || s->gap ||
	    marker->type != JE_POINT ||
	    journal_last_seq(s->stage) > s->img_seq)
		return 0;
	if (mem_pump(s) != 0)
		return -1;
	if ((m->n == 0 && s->fl_m == NULL) || marker->seq <= mem_last(s))
		return 0;
	/*
	 * What completed chunks put into the images is not in memory any
	 * more: it is made durable there, and the mark recorded, first.
	 * The flusher's chunk is waited for (the queued ones wait): it has
	 * the images to itself, and the kernel reports a writeback error
	 * to one sync only.  On failure memory is dropped: none of it was
	 * acknowledged, and the primary sends it again.
	 */
	if (mem_reap(s) != 0)
		return -1;
	if (images_durable(s) != 0) {
		mem_drop(s);
		return -1;
	}
	held = s->img_seq;
	if (journal_begin(s->stage) != 0)
		return sfail(s, "stage: %s", journal_error(s->stage));
	for (size_t k = 0; k < s->mq_n; k++)
		if (log_entries(s, s->mc[s->mq[k]].e, s->mc[s->mq[k]].n,
		    &held) != 0)
			goto fail;
	if (log_entries(s, m->e, m->n, &held) != 0 ||
	    log_entries(s, marker, 1, &held) != 0)
		goto fail;
	if (journal_commit(s->stage) != 0 || journal_sync(s->stage) != 0)
		return sfail(s, "stage: %s", journal_error(s->stage));
	s->logged = 1;
	mem_next(s);	/* the apply goes on meanwhile */
	return 1;
fail:
	journal_abort(s->stage);
	return sfail(s, "stage: %s", journal_error(s->stage));
}
