/* dio.c: ordered image writes around the page cache (see dio.h). */
#include "dio.h"
#include "fileio.h"

#include <errno.h>
#include <linux/aio_abi.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#define DIO_BATCH	16		/* iocbs per io_submit */
#define DIO_BOUNCE_MAX	(1u << 20)	/* unaligned data copied up to this */
#define DIO_IOV		32		/* contiguous writes merged into one */
#define DIO_MERGE_MAX	(1u << 20)	/*   up to this many bytes */

/* One write in flight: a vectored write of one or more contiguous
 * writes given to dio_pwrite. */
struct slot {
	struct iocb cb;
	struct iovec iov[DIO_IOV];
	unsigned niov;
	uint64_t off;
	size_t len;
	uint8_t *bounce;	/* aligned copy of unaligned data */
	size_t bcap;
	int fd;			/* buffered: finishes a short write */
	int dfd;
};

struct dio {
	aio_context_t ctx;
	unsigned depth;
	size_t max_direct;	/* larger writes go through the cache */
	struct slot *slots;
	unsigned *freel;	/* free slots */
	unsigned nfree;
	struct iocb **pend;	/* prepared, not yet submitted */
	unsigned npend;
	size_t pend_bytes;
	unsigned inflight;	/* submitted, not yet reaped */
	int err;		/* first failure since the last dio_wait */
	int err_fd;		/*   on this descriptor (the buffered one) */
	int nodirect;		/* the kernel refused one: buffered from now */
	/* blocks written since everything was last waited for: a write
	 * that touches one of them waits first (open addressing, key+1) */
	uint64_t *set;
	size_t cap, cnt;
	uint64_t ndirect, nbuffered, niocbs;
	struct io_event *ev;
};

static long
sys_io_setup(unsigned nr, aio_context_t *ctx)
{
	return syscall(SYS_io_setup, nr, ctx);
}

static long
sys_io_destroy(aio_context_t ctx)
{
	return syscall(SYS_io_destroy, ctx);
}

static long
sys_io_submit(aio_context_t ctx, long n, struct iocb **cbs)
{
	return syscall(SYS_io_submit, ctx, n, cbs);
}

static long
sys_io_getevents(aio_context_t ctx, long min, long max, struct io_event *ev)
{
	return syscall(SYS_io_getevents, ctx, min, max, ev, NULL);
}

static void
free_dio(struct dio *d)
{
	for (unsigned i = 0; d->slots != NULL && i < d->depth; i++)
		free(d->slots[i].bounce);
	free(d->slots);
	free(d->freel);
	free(d->pend);
	free(d->ev);
	free(d->set);
	free(d);
}

struct dio *
dio_open(unsigned depth, size_t max_direct)
{
	struct dio *d = calloc(1, sizeof(*d));

	if (d == NULL)
		return NULL;
	d->depth = depth ? depth : 1;
	d->max_direct = max_direct;
	d->cap = 1024;
	if ((d->slots = calloc(d->depth, sizeof(*d->slots))) == NULL ||
	    (d->freel = calloc(d->depth, sizeof(*d->freel))) == NULL ||
	    (d->pend = calloc(d->depth, sizeof(*d->pend))) == NULL ||
	    (d->ev = calloc(d->depth, sizeof(*d->ev))) == NULL ||
	    (d->set = calloc(d->cap, sizeof(*d->set))) == NULL)
		goto fail;
	if (sys_io_setup(d->depth, &d->ctx) != 0)
		goto fail;
	for (unsigned i = 0; i < d->depth; i++)
		d->freel[d->nfree++] = d->depth - 1 - i;
	return d;
fail:;
	int e = errno;

	free_dio(d);
	errno = e;
	return NULL;
}

static void
fail_with(struct dio *d, int fd, int e)
{
	if (d->err == 0) {
		d->err = e ? e : EIO;
		d->err_fd = fd;
	}
}

/* Write what slot S holds from byte SKIP on through the cache. */
static void
slot_buffered(struct dio *d, struct slot *s, size_t skip)
{
	uint64_t off = s->off;

	for (unsigned i = 0; i < s->niov; i++) {
		const uint8_t *p = s->iov[i].iov_base;
		size_t n = s->iov[i].iov_len;

		if (skip < n && pwrite_full(s->fd, p + skip, n - skip,
		    off + skip) != 0) {
			fail_with(d, s->fd, errno);
			return;
		}
		skip = skip > n ? skip - n : 0;
		off += n;
	}
}

/* The kernel would not take slot S around the cache: it, and every
 * write from now on, goes through it (nothing in flight overlaps S). */
static void
slot_refused(struct dio *d, struct slot *s)
{
	d->nodirect = 1;
	d->ndirect -= s->niov;
	d->nbuffered += s->niov;
	slot_buffered(d, s, 0);
}

/* Reap at least MIN completions. */
static void
reap(struct dio *d, unsigned min)
{
	while (min > 0 && d->inflight > 0) {
		long n = sys_io_getevents(d->ctx, min, d->depth, d->ev);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			/* cannot happen with a valid context; nothing to
			 * wait on is left then */
			fail_with(d, -1, errno);
			d->inflight = 0;
			return;
		}
		for (long i = 0; i < n; i++) {
			unsigned k = (unsigned)d->ev[i].data;
			struct slot *s = &d->slots[k];
			long long res = d->ev[i].res;

			if (res == -EINVAL) {
				/* the file system wants another alignment */
				slot_refused(d, s);
			} else if (res < 0) {
				fail_with(d, s->fd, (int)-res);
			} else if ((uint64_t)res < s->len) {
				/* short (a full disk, say): the rest through
				 * the cache says why, or succeeds */
				slot_buffered(d, s, (size_t)res);
			}
			d->freel[d->nfree++] = k;
			d->inflight--;
			min = min > 1 ? min - 1 : 0;
		}
	}
}

/* Submit what is prepared.  An iocb the kernel refuses is written
 * through the cache instead, and so is everything after. */
static void
submit(struct dio *d)
{
	unsigned done = 0;

	while (done < d->npend) {
		long n = sys_io_submit(d->ctx, d->npend - done,
		    d->pend + done);

		if (n > 0) {
			done += (unsigned)n;
			d->niocbs += (uint64_t)n;
			d->inflight += (unsigned)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN && d->inflight > 0) {
			reap(d, 1);
			continue;
		}
		/* refused: this one and the rest */
		for (; done < d->npend; done++) {
			unsigned k = (unsigned)d->pend[done]->aio_data;

			slot_refused(d, &d->slots[k]);
			d->freel[d->nfree++] = k;
		}
	}
	d->npend = 0;
	d->pend_bytes = 0;
}

static size_t
slot_of(const struct dio *d, uint64_t key)
{
	return (size_t)((key * 0x9e3779b97f4a7c15ull) >> 20) & (d->cap - 1);
}

/* 1 if KEY is in the set, else 0 (and with ADD, it is added). */
static int
set_probe(struct dio *d, uint64_t key, int add)
{
	size_t i = slot_of(d, key);

	while (d->set[i] != 0) {
		if (d->set[i] == key)
			return 1;
		i = (i + 1) & (d->cap - 1);
	}
	if (add) {
		d->set[i] = key;
		d->cnt++;
	}
	return 0;
}

static int
set_grow(struct dio *d, size_t need)
{
	size_t ncap = d->cap, ocap = d->cap;
	uint64_t *old = d->set, *nset;

	while ((d->cnt + need) * 2 > ncap)
		ncap *= 2;
	if (ncap == ocap)
		return 0;
	if ((nset = calloc(ncap, sizeof(*nset))) == NULL)
		return -1;
	d->set = nset;
	d->cap = ncap;
	d->cnt = 0;
	for (size_t i = 0; i < ocap; i++)
		if (old[i] != 0)
			(void)set_probe(d, old[i], 1);
	free(old);
	return 0;
}

static uint64_t
key_of(int fd, uint64_t blk)
{
	return (((uint64_t)(unsigned)fd << 48) | (blk & ((1ull << 48) - 1))) +
	    1;
}

int
dio_wait(struct dio *d, int *fd)
{
	if (fd != NULL)
		*fd = -1;
	submit(d);
	reap(d, d->inflight);
	if (d->cnt > 0) {
		memset(d->set, 0, d->cap * sizeof(*d->set));
		d->cnt = 0;
	}
	if (d->err != 0) {
		if (fd != NULL)
			*fd = d->err_fd;
		errno = d->err;
		d->err = 0;
		return -1;
	}
	return 0;
}

int
dio_pwrite(struct dio *d, int dfd, int fd, const void *data, size_t len,
    uint64_t off)
{
	uint64_t first = off / DIO_BLOCK, nb = len / DIO_BLOCK;
	int copy = ((uintptr_t)data & (DIO_BLOCK - 1)) != 0;
	struct slot *s;
	unsigned k;

	if (len == 0)
		return 0;
	if (dfd < 0 || d->nodirect || off % DIO_BLOCK || len % DIO_BLOCK ||
	    len > d->max_direct || (copy && len > DIO_BOUNCE_MAX)) {
		/* in order: after everything in flight */
		if (dio_wait(d, NULL) != 0)
			return -1;
		d->nbuffered++;
		return pwrite_full(fd, data, len, off);
	}
	for (uint64_t b = 0; b < nb; b++)
		if (set_probe(d, key_of(dfd, first + b), 0)) {
			if (dio_wait(d, NULL) != 0)
				return -1;
			break;
		}
	if (set_grow(d, nb) != 0)
		return -1;
	for (uint64_t b = 0; b < nb; b++)
		(void)set_probe(d, key_of(dfd, first + b), 1);
	/* right after the last one not yet submitted: one write of both */
	if (!copy && d->npend > 0) {
		s = &d->slots[d->pend[d->npend - 1]->aio_data];
		if (s->dfd == dfd && s->fd == fd && s->off + s->len == off &&
		    s->niov < DIO_IOV && s->len + len <= DIO_MERGE_MAX) {
			s->iov[s->niov].iov_base = (void *)(uintptr_t)data;
			s->iov[s->niov++].iov_len = len;
			s->len += len;
			s->cb.aio_nbytes = s->niov;
			d->ndirect++;
			d->pend_bytes += len;
			if (d->pend_bytes >= DIO_MERGE_MAX)
				submit(d);
			return 0;
		}
	}
	if (d->nfree == 0) {
		submit(d);
		reap(d, 1);
	}
	k = d->freel[--d->nfree];
	s = &d->slots[k];
	if (copy) {
		if (s->bcap < len) {
			size_t want = (len + 65535) & ~(size_t)65535;
			void *p;

			if (posix_memalign(&p, DIO_BLOCK, want) != 0) {
				d->freel[d->nfree++] = k;
				errno = ENOMEM;
				return -1;
			}
			free(s->bounce);
			s->bounce = p;
			s->bcap = want;
		}
		memcpy(s->bounce, data, len);
		data = s->bounce;
	}
	s->fd = fd;
	s->dfd = dfd;
	s->off = off;
	s->len = len;
	s->iov[0].iov_base = (void *)(uintptr_t)data;
	s->iov[0].iov_len = len;
	s->niov = 1;
	memset(&s->cb, 0, sizeof(s->cb));
	s->cb.aio_data = k;
	s->cb.aio_lio_opcode = IOCB_CMD_PWRITEV;
	s->cb.aio_fildes = (uint32_t)dfd;
	s->cb.aio_buf = (uint64_t)(uintptr_t)s->iov;
	s->cb.aio_nbytes = 1;
	s->cb.aio_offset = (int64_t)off;
	d->pend[d->npend++] = &s->cb;
	d->pend_bytes += len;
	d->ndirect++;
	if (d->npend >= DIO_BATCH || d->nfree == 0 ||
	    d->pend_bytes >= DIO_MERGE_MAX)
		submit(d);
	return 0;
}

void
dio_counts(const struct dio *d, struct dio_counts *c)
{
	c->direct = d->ndirect;
	c->buffered = d->nbuffered;
	c->iocbs = d->niocbs;
}

void
dio_close(struct dio *d)
{
	if (d == NULL)
		return;
	(void)dio_wait(d, NULL);
	sys_io_destroy(d->ctx);
	free_dio(d);
}

/*
 * Reads around the page cache, many at once, for reads that do not depend
 * on one another (the DR site's before-images): up to DEPTH in flight,
 * DIO_BATCH iocbs per io_submit.  The context lives as long as the
 * reader: destroying one waits for an RCU grace period, which cost tens of
 * milliseconds per call when each call made its own.
 */
struct dio_reader {
	aio_context_t ctx;
	unsigned depth;
};

struct dio_reader *
dio_reader_open(unsigned depth)
{
	struct dio_reader *r = calloc(1, sizeof(*r));

	if (r == NULL)
		return NULL;
	r->depth = depth ? depth : 1;
	if (sys_io_setup(r->depth, &r->ctx) != 0) {
		int e = errno;

		free(r);
		errno = e;
		return NULL;
	}
	return r;
}

void
dio_reader_close(struct dio_reader *r)
{
	if (r == NULL)
		return;
	(void)sys_io_destroy(r->ctx);
	free(r);
}

int
dio_read_all(struct dio_reader *rdr, struct dio_read *r, size_t n)
{
	struct iocb *cbs, *batch[DIO_BATCH];
	struct io_event ev[DIO_BATCH];
	size_t next = 0, inflight = 0;

	if (n == 0)
		return 0;
	if ((cbs = calloc(n, sizeof(*cbs))) == NULL)
		return -1;
	for (size_t i = 0; i < n; i++) {
		r[i].err = EINPROGRESS;
		cbs[i].aio_data = i;
		cbs[i].aio_lio_opcode = IOCB_CMD_PREAD;
		cbs[i].aio_fildes = (uint32_t)r[i].dfd;
		cbs[i].aio_buf = (uint64_t)(uintptr_t)r[i].buf;
		cbs[i].aio_nbytes = r[i].len;
		cbs[i].aio_offset = (int64_t)r[i].off;
	}
	while (next < n || inflight > 0) {
		unsigned nb = 0;

		while (next + nb < n && nb < DIO_BATCH &&
		    inflight + nb < rdr->depth) {
			batch[nb] = &cbs[next + nb];
			nb++;
		}
		if (nb > 0) {
			long k = sys_io_submit(rdr->ctx, nb, batch);

			if (k > 0) {
				next += (size_t)k;
				inflight += (size_t)k;
			} else if (k < 0 && errno == EINTR) {
				continue;
			} else if (inflight == 0) {
				/* refused with nothing to wait for: this one
				 * is left to be read another way */
				r[next++].err = k < 0 ? errno : EIO;
				continue;
			}
		}
		if (inflight > 0) {
			long k = sys_io_getevents(rdr->ctx, 1, DIO_BATCH, ev);

			if (k < 0 && errno == EINTR)
				continue;
			if (k < 0) {
				/* cannot happen with a valid context; the
				 * buffers must not be written after return */
				abort();
			}
			for (long i = 0; i < k; i++) {
				struct dio_read *d = &r[ev[i].data];
				long long res = ev[i].res;

				d->err = res < 0 ? (int)-res :
				    (uint64_t)res < d->len ? EIO : 0;
				inflight--;
			}
		}
	}
	free(cbs);
	return 0;
}
