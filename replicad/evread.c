/* evread.c: socket bufferevents read in large reads. */
#include <sys/uio.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "evread.h"

/* Bytes asked of the socket per read(2). */
#define READ_CHUNK	(256u << 10)

/* Shorten the N vectors of V to LEN bytes in all. */
static void
clamp(struct evbuffer_iovec *v, int n, size_t len)
{
	for (int i = 0; i < n; i++) {
		if (v[i].iov_len > len)
			v[i].iov_len = len;
		len -= v[i].iov_len;
	}
}

/* Read from FD into IN until IN holds MAX bytes or FD has no more. */
static void
read_more(struct evbuffer *in, evutil_socket_t fd, size_t max)
{
	for (;;) {
		size_t have = evbuffer_get_length(in), want;
		struct evbuffer_iovec v[2];
		struct iovec iov[2];
		ssize_t r;
		int n;

		if (have >= max)
			return;
		want = max - have < READ_CHUNK ? max - have : READ_CHUNK;
		if ((n = evbuffer_reserve_space(in, (ev_ssize_t)want, v,
		    2)) <= 0)
			return;
		/* the space reserved may be larger than asked */
		clamp(v, n, want);
		for (int i = 0; i < n; i++) {
			iov[i].iov_base = v[i].iov_base;
			iov[i].iov_len = v[i].iov_len;
		}
		if ((r = readv(fd, iov, n)) <= 0) {
			evbuffer_commit_space(in, v, 0);
			return;
		}
		clamp(v, n, (size_t)r);
		if (evbuffer_commit_space(in, v, n) != 0)
			return;
		/* a short read: the socket is most likely empty */
		if ((size_t)r < want)
			return;
	}
}

/*
 * A socket bufferevent reads at most 4096 bytes each time the loop wakes
 * it (libevent 2.1's evbuffer_read caps every read there), so a 1 MiB NBD
 * write took 256 trips through the loop, three system calls each.  Called
 * from the read callback, this takes what the socket holds in large reads
 * until the input holds MAX bytes or the socket has no more.  An end of
 * stream or an error is left where it is: the bufferevent meets it at its
 * next read and reports it as it always does.
 */
void
bev_read_more(struct bufferevent *bev, size_t max)
{
	struct evbuffer *in = bufferevent_get_input(bev);
	evutil_socket_t fd = bufferevent_getfd(bev);

	if (fd < 0 || !(bufferevent_get_enabled(bev) & EV_READ))
		return;
	/* a socket bufferevent keeps the end of its input frozen except
	 * while it reads into it itself */
	evbuffer_unfreeze(in, 0);
	read_more(in, fd, max);
	evbuffer_freeze(in, 0);
}
