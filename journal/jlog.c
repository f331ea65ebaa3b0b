/* jlog.c: the journal's data log (see jlog.h). */
#include "jlog.h"
#include "fileio.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <unistd.h>

/* An error into BUF (the writer's l->err or the reader's l->rerr: the
 * writer may fail while the reader does); returns -1. */
static int
fail_in(char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, len, fmt, ap);
	va_end(ap);
	return -1;
}

#define lfail(l, ...)	fail_in((l)->err, sizeof((l)->err), __VA_ARGS__)
#define rfail(l, ...)	fail_in((l)->rerr, sizeof((l)->rerr), __VA_ARGS__)

int
jlog_takes(uint32_t len)
{
	/* what fits a leaf node stays there: no slot, no read; the rest
	 * fits a reader's window (and so the stage) */
	return len > JLOG_SLOT / 4 && jlog_space(len) <= JLOG_WINDOW;
}

static void
seg_path(const struct jlog *l, uint64_t seg, char *path, size_t len)
{
	snprintf(path, len, "%s/%016llx", l->dir, (unsigned long long)seg);
}

/* fdatasync segment SEG if it exists. */
static int
sync_seg(struct jlog *l, uint64_t seg)
{
	char path[sizeof(l->dir) + 20];
	int fd, r;

	seg_path(l, seg, path, sizeof(path));
	if ((fd = open(path, O_WRONLY | O_CLOEXEC)) == -1)
		return 0;
	r = fdatasync(fd);
	close(fd);
	return r == 0 ? 0 : lfail(l, "sync %s: %s", path, strerror(errno));
}

int
jlog_open(struct jlog *l, const char *dir, uint64_t head)
{
	DIR *dh;
	struct dirent *de;
	int n = snprintf(l->dir, sizeof(l->dir), "%s/data", dir);

	l->wfd = l->wbfd = l->rfd = l->nfd = -1;
	l->wseg = l->rseg = UINT64_MAX;
	pthread_mutex_init(&l->mu, NULL);
	pthread_cond_init(&l->work, NULL);
	pthread_cond_init(&l->done, NULL);
	if ((l->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) == -1)
		return lfail(l, "eventfd: %s", strerror(errno));
	if (n < 0 || (size_t)n >= sizeof(l->dir) - 20)
		return lfail(l, "%s: path too long", dir);
	if (mkdir(l->dir, 0700) == -1 && errno != EEXIST)
		return lfail(l, "mkdir %s: %s", l->dir, strerror(errno));
	if (head % JLOG_SLOT)
		return lfail(l, "%s: head %llu is not slot-aligned (corrupted "
		    "journal)", l->dir, (unsigned long long)head);
	l->head = l->committed = l->ring_base = l->high = head;
	/* an earlier run's last writes may be unsynced (a kill -9): they
	 * are made durable before LMDB's entries that point at them (the
	 * writer syncs a segment before it moves to the next one) */
	if (head > 0 && sync_seg(l, (head - 1) / JLOG_SEG) != 0)
		return -1;
	if (fsync_dir(l->dir) != 0 || fsync_dir(dir) != 0)
		return lfail(l, "sync %s: %s", l->dir, strerror(errno));
	l->low_seg = head / JLOG_SEG;
	if ((dh = opendir(l->dir)) == NULL)
		return lfail(l, "%s: %s", l->dir, strerror(errno));
	while ((de = readdir(dh)) != NULL) {
		char *end;
		unsigned long long seg = strtoull(de->d_name, &end, 16);

		if (de->d_name[0] != '.' && *end == '\0' && seg < l->low_seg)
			l->low_seg = seg;
	}
	closedir(dh);
	l->ring = aligned_alloc(JLOG_SLOT, JLOG_RING);
	l->win = aligned_alloc(JLOG_SLOT, JLOG_WINDOW);
	if (l->ring == NULL || l->win == NULL)
		return lfail(l, "out of memory");
	for (size_t i = 0; i < JLOG_AHEAD; i++)
		if ((l->pf[i].buf = aligned_alloc(JLOG_SLOT,
		    JLOG_WINDOW)) == NULL)
			return lfail(l, "out of memory");
	return 0;
}

/* The read-ahead K places after the oldest. */
static struct jlog_pf *
pf_get(struct jlog *l, size_t k)
{
	return &l->pf[(l->pf_first + k) % JLOG_AHEAD];
}

/* Wait for the oldest read-ahead and take it off the queue (*P); its byte
 * count, or -1. */
static ssize_t
pf_take(struct jlog *l, struct jlog_pf **p)
{
	const struct aiocb *list[1];
	int e;

	*p = pf_get(l, 0);
	list[0] = &(*p)->cb;
	while ((e = aio_error(&(*p)->cb)) == EINPROGRESS)
		(void)aio_suspend(list, 1, NULL);
	l->pf_first = (l->pf_first + 1) % JLOG_AHEAD;
	l->pf_n--;
	return e == 0 ? aio_return(&(*p)->cb) : (aio_return(&(*p)->cb), -1);
}

/* Wait for every read-ahead in flight and forget them. */
static void
pf_drop(struct jlog *l)
{
	struct jlog_pf *p;

	while (l->pf_n > 0)
		(void)pf_take(l, &p);
	if (l->nfd >= 0)
		close(l->nfd);
	l->nfd = -1;
}

/* Read ahead the windows from AT on (in segment rseg or the one after it,
 * below TOP) until JLOG_AHEAD are in flight.  Only whole slots of
 * committed data: they never change. */
static void
pf_fill(struct jlog *l, uint64_t at, uint64_t top)
{
	while (l->pf_n < JLOG_AHEAD) {
		struct jlog_pf *p = pf_get(l, l->pf_n);
		uint64_t want, seg = at / JLOG_SEG;
		int fd = l->rfd;

		if (l->rfd < 0 || at >= top || at % JLOG_SLOT)
			return;
		if (seg == l->rseg + 1) {
			if (l->nfd < 0) {
				char path[sizeof(l->dir) + 20];

				seg_path(l, seg, path, sizeof(path));
				if ((l->nfd = open_direct(path, O_RDONLY)) < 0)
					return;	/* a read here names why */
			}
			fd = l->nfd;
		} else if (seg != l->rseg)
			return;
		want = top - at;
		if (want > JLOG_WINDOW)
			want = JLOG_WINDOW;
		if (want > JLOG_SEG - at % JLOG_SEG)
			want = JLOG_SEG - at % JLOG_SEG;
		want -= want % JLOG_SLOT;
		if (want == 0)
			return;
		memset(&p->cb, 0, sizeof(p->cb));
		p->cb.aio_fildes = fd;
		p->cb.aio_buf = p->buf;
		p->cb.aio_nbytes = want;
		p->cb.aio_offset = (off_t)(at % JLOG_SEG);
		p->cb.aio_sigevent.sigev_notify = SIGEV_NONE;
		if (aio_read(&p->cb) != 0)
			return;
		p->at = at;
		l->pf_n++;
		at += want;
	}
}

void
jlog_close(struct jlog *l)
{
	pf_drop(l);
	if (l->thr_on) {
		pthread_mutex_lock(&l->mu);
		l->stop = 1;
		pthread_cond_signal(&l->work);
		pthread_mutex_unlock(&l->mu);
		pthread_join(l->thr, NULL);
		l->thr_on = 0;
	}
	pthread_cond_destroy(&l->done);
	pthread_cond_destroy(&l->work);
	pthread_mutex_destroy(&l->mu);
	if (l->efd >= 0)
		close(l->efd);
	l->efd = -1;
	if (l->wfd >= 0)
		close(l->wfd);
	if (l->wbfd >= 0)
		close(l->wbfd);
	if (l->rfd >= 0)
		close(l->rfd);
	l->wfd = l->wbfd = l->rfd = -1;
	free(l->ring);
	free(l->win);
	l->ring = l->win = NULL;
	for (size_t i = 0; i < JLOG_AHEAD; i++) {
		free(l->pf[i].buf);
		l->pf[i].buf = NULL;
	}
}

/* The writer's segment SEG (around the page cache if DIRECT), created if
 * need be; errors go to EB (the caller's or the thread's).  What went to
 * the one before is synced first, so that jlog_sync has one file to
 * sync. */
static int
wfd(struct jlog *l, uint64_t seg, int direct, char *eb, size_t el)
{
	char path[sizeof(l->dir) + 20];

	if (l->wseg != seg && l->wfd >= 0) {
		if (fdatasync(l->wfd) == -1)
			return fail_in(eb, el, "sync %s: %s", l->dir,
			    strerror(errno));
		close(l->wfd);
		if (l->wbfd >= 0)
			close(l->wbfd);
		l->wfd = l->wbfd = -1;
	}
	seg_path(l, seg, path, sizeof(path));
	if (l->wfd < 0) {
		if ((l->wfd = open_direct(path, O_WRONLY | O_CREAT)) == -1)
			return fail_in(eb, el, "open %s: %s", path,
			    strerror(errno));
		l->wseg = seg;
		l->dir_unsynced = 1;
	}
	if (!direct && l->wbfd < 0 && (l->wbfd = open(path, O_WRONLY |
	    O_CLOEXEC)) == -1)
		return fail_in(eb, el, "open %s: %s", path, strerror(errno));
	return direct ? l->wfd : l->wbfd;
}

/* Write the run LEN bytes at AT from the ring. */
static int
write_run(struct jlog *l, uint64_t at, size_t len, char *eb, size_t el)
{
	int fd;

	if ((fd = wfd(l, at / JLOG_SEG, len >= JLOG_DIRECT, eb, el)) < 0)
		return -1;
	if (pwrite_full(fd, l->ring + at % JLOG_RING, len,
	    at % JLOG_SEG) != 0)
		return fail_in(eb, el, "write %s/%016llx: %s", l->dir,
		    (unsigned long long)(at / JLOG_SEG), strerror(errno));
	return 0;
}

static void *
run_writer(void *arg)
{
	struct jlog *l = arg;
	uint64_t one = 1;

	(void)pthread_setname_np(pthread_self(), "jlog");
	pthread_mutex_lock(&l->mu);
	for (;;) {
		struct jlog_run r;
		int bad;

		while (l->q_n == 0 && !l->stop)
			pthread_cond_wait(&l->work, &l->mu);
		if (l->q_n == 0)
			break;
		r = l->q[l->q_first];
		bad = l->failed;
		pthread_mutex_unlock(&l->mu);
		/* after a failure the rest are dropped: the transaction
		 * they belong to cannot commit */
		if (!bad && write_run(l, r.at, r.len, l->terr,
		    sizeof(l->terr)) != 0)
			bad = 1;
		pthread_mutex_lock(&l->mu);
		l->failed |= bad;
		l->q_first = (l->q_first + 1) % JLOG_RUNS;
		if (--l->q_n == 0 && write(l->efd, &one, sizeof(one)) < 0) {
			/* the counter is full: the reader is behind anyway */
		}
		pthread_cond_broadcast(&l->done);
	}
	pthread_mutex_unlock(&l->mu);
	return NULL;
}

/* Hand what is staged to the thread. */
static int
submit(struct jlog *l)
{
	if (l->st_len == 0)
		return 0;
	if (!l->thr_on) {
		if (pthread_create(&l->thr, NULL, run_writer, l) != 0)
			return lfail(l, "cannot start the log's writer");
		l->thr_on = 1;
	}
	pthread_mutex_lock(&l->mu);
	while (l->q_n == JLOG_RUNS)
		pthread_cond_wait(&l->done, &l->mu);
	l->q[(l->q_first + l->q_n) % JLOG_RUNS] =
	    (struct jlog_run){ l->st_at, l->st_len };
	l->q_n++;
	pthread_cond_signal(&l->work);
	pthread_mutex_unlock(&l->mu);
	l->st_len = 0;
	return 0;
}

/* Wait until the thread is idle; -1 with its error if a run failed (the
 * error stays until jlog_rewind). */
static int
wait_idle(struct jlog *l)
{
	int bad;

	pthread_mutex_lock(&l->mu);
	while (l->q_n > 0)
		pthread_cond_wait(&l->done, &l->mu);
	bad = l->failed;
	pthread_mutex_unlock(&l->mu);
	if (bad)
		return lfail(l, "%s", l->terr);
	return 0;
}

/* Wait until no queued run lies below offset BELOW: the ring may then be
 * written over up to BELOW + JLOG_RING. */
static void
wait_below(struct jlog *l, uint64_t below)
{
	pthread_mutex_lock(&l->mu);
	while (l->q_n > 0 && l->q[l->q_first].at < below)
		pthread_cond_wait(&l->done, &l->mu);
	pthread_mutex_unlock(&l->mu);
}

int
jlog_kick(struct jlog *l)
{
	if (l->st_len == 0)
		return 0;
	return submit(l) == 0 ? 1 : -1;
}

int
jlog_busy(struct jlog *l)
{
	int n;

	pthread_mutex_lock(&l->mu);
	n = l->q_n > 0;
	pthread_mutex_unlock(&l->mu);
	return n;
}

int
jlog_flush(struct jlog *l)
{
	int idle, bad;

	/* a run of this transaction failed: it cannot commit, whatever is
	 * left to write */
	pthread_mutex_lock(&l->mu);
	idle = l->q_n == 0;
	bad = l->failed;
	pthread_mutex_unlock(&l->mu);
	if (bad)
		return lfail(l, "%s", l->terr);
	/* a small run, with the thread idle, costs less written here */
	if (l->st_len > 0 && l->st_len < JLOG_DIRECT && idle) {
		if (write_run(l, l->st_at, l->st_len, l->err,
		    sizeof(l->err)) != 0)
			return -1;
		l->st_len = 0;
		return 0;
	}
	if (submit(l) != 0)
		return -1;
	return wait_idle(l);
}

int
jlog_append(struct jlog *l, const void *data, uint32_t len, uint64_t *at)
{
	uint64_t slot = jlog_space(len);
	uint8_t *p;

	/* a slot never spans the ring's end, nor so a segment's */
	if (l->head % JLOG_RING + slot > JLOG_RING)
		l->head = (l->head / JLOG_RING + 1) * JLOG_RING;
	/* what is staged is one run in the ring and in one segment */
	if (l->st_len > 0 && (l->st_len + slot > JLOG_STAGE ||
	    l->head / JLOG_RING != l->st_at / JLOG_RING ||
	    l->head != l->st_at + l->st_len) && submit(l) != 0)
		return -1;
	if (l->st_len == 0)
		l->st_at = l->head;
	/* the ring there holds data a queued run may still write */
	if (l->head + slot > JLOG_RING)
		wait_below(l, l->head + slot - JLOG_RING);
	/* readers learn that the ring is written up to here before it is */
	if (l->head + slot > l->high) {
		__atomic_store_n(&l->high, l->head + slot, __ATOMIC_RELAXED);
		__atomic_thread_fence(__ATOMIC_RELEASE);
	}
	p = l->ring + l->head % JLOG_RING;
	memcpy(p, data, len);
	memset(p + len, 0, slot - len);
	l->st_len += slot;
	*at = l->head;
	l->head += slot;
	/* a large run goes now, while the caller takes the next requests */
	if (l->st_len >= JLOG_DIRECT)
		return submit(l);
	return 0;
}

void
jlog_committed(struct jlog *l)
{
	__atomic_store_n(&l->committed, l->head, __ATOMIC_RELEASE);
}

void
jlog_rewind(struct jlog *l)
{
	/* the thread is done with the ring before it is written over (its
	 * failure was the transaction's); slots written for the
	 * transaction are written over next time */
	(void)wait_idle(l);
	pthread_mutex_lock(&l->mu);
	l->failed = 0;
	pthread_mutex_unlock(&l->mu);
	l->st_len = 0;
	l->head = l->committed;
}

int
jlog_sync(struct jlog *l)
{
	/* the files are the thread's while it has runs; what they belong to
	 * (an open transaction) reports their errors, at its commit */
	wait_idle(l);
	if (l->wfd >= 0 && fdatasync(l->wfd) == -1)	/* syncs wbfd's too */
		return lfail(l, "sync %s: %s", l->dir, strerror(errno));
	if (l->dir_unsynced) {
		if (fsync_dir(l->dir) != 0)
			return lfail(l, "sync %s: %s", l->dir, strerror(errno));
		l->dir_unsynced = 0;
	}
	return 0;
}

int
jlog_read(struct jlog *l, uint64_t at, uint32_t len, uint64_t top,
    const uint8_t **p)
{
	uint64_t seg = at / JLOG_SEG, want;
	char path[sizeof(l->dir) + 20];
	ssize_t got;

	/* checked before anything is computed from it */
	if (len == 0 || at % JLOG_SLOT || jlog_space(len) > JLOG_WINDOW ||
	    at % JLOG_RING + jlog_space(len) > JLOG_RING || at > top ||
	    top - at < len)
		return rfail(l, "data at %llu+%u: not a slot below the log's "
		    "head %llu (corrupted journal)", (unsigned long long)at,
		    len, (unsigned long long)top);
	if (at >= l->win_at && at - l->win_at <= l->win_len &&
	    len <= l->win_len - (at - l->win_at)) {
		*p = l->win + (at - l->win_at);
		return 0;
	}
	l->win_len = 0;
	if (at >= l->ring_base) {
		/* recent: from the ring, if the writer has not come round
		 * over it while it was copied */
		memcpy(l->win, l->ring + at % JLOG_RING, len);
		__atomic_thread_fence(__ATOMIC_ACQUIRE);
		if (__atomic_load_n(&l->high, __ATOMIC_RELAXED) - at <=
		    JLOG_RING) {
			l->win_at = at;
			l->win_len = len;
			*p = l->win;
			return 0;
		}
	}
	if (l->pf_n > 0 && at >= pf_get(l, 0)->at &&
	    at - pf_get(l, 0)->at < pf_get(l, 0)->cb.aio_nbytes) {
		/* the oldest read-ahead has it: wait for it, take it as the
		 * window and read one more ahead */
		struct jlog_pf *pf;
		uint64_t from = pf_get(l, 0)->at;
		uint64_t next = pf_get(l, l->pf_n - 1)->at +
		    pf_get(l, l->pf_n - 1)->cb.aio_nbytes;
		uint8_t *w;

		got = pf_take(l, &pf);
		if (seg != l->rseg) {
			/* into the next segment: what is left of the queue
			 * is there too */
			close(l->rfd);
			l->rfd = l->nfd;
			l->nfd = -1;
			l->rseg = seg;
		}
		if (got > 0 && (uint64_t)got >= at - from + len) {
			w = l->win;
			l->win = pf->buf;
			pf->buf = w;
			l->win_at = from;
			l->win_len = (size_t)got;
			*p = l->win + (at - from);
			if ((uint64_t)got == pf->cb.aio_nbytes)
				pf_fill(l, next, top);
			else	/* the rest would not join up */
				pf_drop(l);
			return 0;
		}
		/* short or failed: read it here, which names the cause */
		pf_drop(l);
	}
	if (l->pf_n > 0 && (at > pf_get(l, 0)->at ||
	    at + jlog_space(len) <= pf_get(l, 0)->at))
		pf_drop(l);	/* not the way the reader went */
	if (l->rfd < 0 || l->rseg != seg) {
		pf_drop(l);	/* queued on the files being left */
		if (l->rfd >= 0)
			close(l->rfd);
		seg_path(l, seg, path, sizeof(path));
		if ((l->rfd = open_direct(path, O_RDONLY)) == -1)
			return rfail(l, "open %s: %s", path, strerror(errno));
		l->rseg = seg;
	}
	/* read ahead up to the head the reader's snapshot knows: those
	 * slots are committed, and a committed slot never changes.  An
	 * entry that runs into the read-ahead in flight is read alone. */
	want = top - at;
	if (want > JLOG_WINDOW)
		want = JLOG_WINDOW;
	if (want > JLOG_SEG - at % JLOG_SEG)
		want = JLOG_SEG - at % JLOG_SEG;
	if (want < jlog_space(len) || l->pf_n > 0)
		want = jlog_space(len);
	do
		got = pread(l->rfd, l->win, want, (off_t)(at % JLOG_SEG));
	while (got < 0 && errno == EINTR);
	if (got < 0)
		return rfail(l, "read %s/%016llx at %llu: %s", l->dir,
		    (unsigned long long)seg,
		    (unsigned long long)(at % JLOG_SEG), strerror(errno));
	if ((size_t)got < len)
		return rfail(l, "read %s/%016llx at %llu: short (the log lost "
		    "data)", l->dir, (unsigned long long)seg,
		    (unsigned long long)(at % JLOG_SEG));
	if (l->pf_n == 0)
		pf_fill(l, at + (uint64_t)got, top);
	l->win_at = at;
	l->win_len = (size_t)got;
	*p = l->win;
	return 0;
}

void
jlog_release(struct jlog *l, uint64_t below)
{
	char path[sizeof(l->dir) + 20];
	uint64_t end;

	wait_idle(l);	/* the thread moves wseg */
	/* nothing at or past the head is released (a corrupted offset) */
	if (below > l->committed)
		below = l->committed;
	end = below / JLOG_SEG;
	/* the writer's segment stays */
	if (l->wfd >= 0 && end > l->wseg)
		end = l->wseg;
	for (; l->low_seg < end; l->low_seg++) {
		seg_path(l, l->low_seg, path, sizeof(path));
		unlink(path);
	}
}
