/*
 * nbd_fileserver: serve FILE through nbd.c on a unix socket, for tests.
 *
 * usage: nbd_fileserver SOCKET FILE [EXPORTNAME]
 *
 * The backend completes writes, zeroes and flushes asynchronously: they
 * are queued and done from a deferred event callback (pwrite, then
 * nbd_complete), which exercises the server's pending-request paths the
 * way replicad's journal backend does.  Runs until SIGTERM or SIGINT.
 * Set NBD_FILESERVER_VERBOSE=1 for debug logs.
 */
#include <sys/types.h>
#include <sys/queue.h>
#include <sys/stat.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"
#include "nbd.h"

struct op {
	STAILQ_ENTRY(op)	 entry;
	struct nbd_req		*req;
	uint64_t		 off;
	uint32_t		 len;
	int			 flush;
	int			 fua;
	int			 err;
	uint8_t			*data;	/* NULL: zero the range */
};

struct file {
	const char		*name;
	int			 fd;
	uint64_t		 size;
	int			 nopen;
	struct event		*ev;
	STAILQ_HEAD(, op)	 queue;
};

static int
do_pwrite(int fd, const uint8_t *p, size_t len, off_t off)
{
	ssize_t n;

	while (len > 0) {
		if ((n = pwrite(fd, p, len, off)) == -1) {
			if (errno == EINTR)
				continue;
			return errno;
		}
		p += n;
		len -= n;
		off += n;
	}
	return 0;
}

static int
do_zero(int fd, uint64_t off, uint32_t len)
{
	static const uint8_t zero[65536];
	uint32_t n;
	int err;

	if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
	    (off_t)off, (off_t)len) == 0)
		return 0;
	while (len > 0) {
		n = len < sizeof(zero) ? len : sizeof(zero);
		if ((err = do_pwrite(fd, zero, n, (off_t)off)) != 0)
			return err;
		off += n;
		len -= n;
	}
	return 0;
}

/* The deferred callback: one "group commit" of everything queued. */
static void
run_queue(evutil_socket_t fd, short ev, void *arg)
{
	struct file *f = arg;
	STAILQ_HEAD(, op) q;
	struct op *op;
	int err, sync = 0, serr = 0;

	(void)fd;
	(void)ev;
	STAILQ_INIT(&q);
	STAILQ_CONCAT(&q, &f->queue);
	STAILQ_FOREACH(op, &q, entry) {
		if (op->flush || op->fua)
			sync = 1;
	}
	/* Data first, then one fdatasync for every flush/FUA in the batch. */
	STAILQ_FOREACH(op, &q, entry) {
		if (op->flush)
			continue;
		if (op->data != NULL)
			op->err = do_pwrite(f->fd, op->data, op->len,
			    (off_t)op->off);
		else
			op->err = do_zero(f->fd, op->off, op->len);
	}
	if (sync && fdatasync(f->fd) == -1)
		serr = errno;
	while ((op = STAILQ_FIRST(&q)) != NULL) {
		STAILQ_REMOVE_HEAD(&q, entry);
		err = op->err;
		if (err == 0 && (op->flush || op->fua))
			err = serr;
		nbd_complete(op->req, err);
		free(op->data);
		free(op);
	}
}

static void
enqueue(struct file *f, struct op *op)
{
	STAILQ_INSERT_TAIL(&f->queue, op, entry);
	event_active(f->ev, EV_TIMEOUT, 0);
}

static void *
be_open(void *arg, const char *name, uint64_t *size)
{
	struct file *f = arg;

	if (strcmp(name, f->name) != 0)
		return NULL;
	f->nopen++;
	*size = f->size;
	return f;
}

static void
be_close(void *arg, void *exp)
{
	struct file *f = arg;

	(void)exp;
	if (--f->nopen < 0)
		fatalx("%s: unbalanced close", __func__);
}

static void
be_list(void *arg, void (*fn)(const char *, void *), void *ctx)
{
	struct file *f = arg;

	fn(f->name, ctx);
}

static int
be_read(void *exp, uint64_t off, uint32_t len, void *buf)
{
	struct file *f = exp;
	uint8_t *p = buf;
	ssize_t n;

	while (len > 0) {
		if ((n = pread(f->fd, p, len, (off_t)off)) == -1) {
			if (errno == EINTR)
				continue;
			return errno;
		}
		if (n == 0) {		/* past EOF: zeroes */
			memset(p, 0, len);
			break;
		}
		p += n;
		off += n;
		len -= n;
	}
	return 0;
}

static void
be_write(void *exp, uint64_t off, uint32_t len, void *data, int fua,
    struct nbd_req *req)
{
	struct file *f = exp;
	struct op *op;

	if ((op = calloc(1, sizeof(*op))) == NULL) {
		free(data);
		nbd_complete(req, ENOMEM);
		return;
	}
	op->data = data;
	op->req = req;
	op->off = off;
	op->len = len;
	op->fua = fua;
	enqueue(f, op);
}

static void
be_flush(void *exp, struct nbd_req *req)
{
	struct file *f = exp;
	struct op *op;

	if ((op = calloc(1, sizeof(*op))) == NULL) {
		nbd_complete(req, ENOMEM);
		return;
	}
	op->req = req;
	op->flush = 1;
	enqueue(f, op);
}

static void
on_signal(evutil_socket_t sig, short ev, void *arg)
{
	(void)ev;
	log_info("signal %d, exiting", (int)sig);
	event_base_loopbreak(arg);
}

int
main(int argc, char *argv[])
{
	static const struct nbd_backend be = {
		.open = be_open,
		.close = be_close,
		.list = be_list,
		.read = be_read,
		.write = be_write,
		.flush = be_flush,
	};
	struct event_base *base;
	struct event *sigterm, *sigint;
	struct nbd_server *srv;
	struct file f;
	struct stat st;
	struct op *op;
	const char *v;

	if (argc < 3 || argc > 4) {
		fprintf(stderr, "usage: %s SOCKET FILE [EXPORTNAME]\n",
		    argv[0]);
		return 2;
	}
	v = getenv("NBD_FILESERVER_VERBOSE");
	log_init("nbd_fileserver", 1, v != NULL && *v == '1');
	signal(SIGPIPE, SIG_IGN);

	memset(&f, 0, sizeof(f));
	f.name = argc == 4 ? argv[3] : "vm/disk";
	STAILQ_INIT(&f.queue);
	if ((f.fd = open(argv[2], O_RDWR | O_CLOEXEC)) == -1)
		fatal("open %s", argv[2]);
	if (fstat(f.fd, &st) == -1)
		fatal("fstat %s", argv[2]);
	f.size = (uint64_t)st.st_size;

	if ((base = event_base_new()) == NULL)
		fatalx("event_base_new failed");
	if ((f.ev = event_new(base, -1, 0, run_queue, &f)) == NULL)
		fatalx("event_new failed");
	sigterm = evsignal_new(base, SIGTERM, on_signal, base);
	sigint = evsignal_new(base, SIGINT, on_signal, base);
	if (sigterm == NULL || sigint == NULL ||
	    evsignal_add(sigterm, NULL) == -1 ||
	    evsignal_add(sigint, NULL) == -1)
		fatalx("cannot set up signal events");
	if ((srv = nbd_server_new(base, argv[1], &be, &f)) == NULL)
		fatalx("cannot serve %s", argv[1]);
	log_info("serving %s (%llu bytes) as '%s' on %s", argv[2],
	    (unsigned long long)f.size, f.name, argv[1]);

	event_base_dispatch(base);

	nbd_server_free(srv);
	/* Requests still queued belong to connections already gone. */
	while ((op = STAILQ_FIRST(&f.queue)) != NULL) {
		STAILQ_REMOVE_HEAD(&f.queue, entry);
		nbd_complete(op->req, ESHUTDOWN);
		free(op->data);
		free(op);
	}
	if (f.nopen != 0)
		log_warnx("%d export handle(s) not closed", f.nopen);
	event_free(f.ev);
	event_free(sigterm);
	event_free(sigint);
	event_base_free(base);
	close(f.fd);
	return 0;
}
