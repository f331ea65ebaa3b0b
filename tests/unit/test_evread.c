/*
 * test_evread.c: socket bufferevents read in large reads (evread.h), on a
 * real socket pair and a real libevent loop.  Every byte arrives once and
 * in order, the end of the stream is still reported after the last byte,
 * the input never grows past the cap in one callback, the input's end is
 * frozen again afterwards, and a bufferevent not reading is left alone.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "evread.h"

#define RNG_SEED	0x5eed0e7ea1ull
#include "xorshift.h"

#define TOTAL	(8u << 20)	/* bytes the writer sends */
#define PIECE	(64u << 10)	/* per write(2) of the writer */

struct rx {
	struct event_base *base;
	struct bufferevent *bev;
	size_t max;		/* bev_read_more's cap */
	int drain;		/* take the input out in each callback */
	uint8_t *got;
	size_t ngot;
	size_t calls;
	size_t most;		/* largest input seen in a callback */
	int frozen;		/* the input refused an append after the read */
	int eof_at_end;		/* the end came after every byte */
	int eof;
};

struct tx {
	int fd;
	const uint8_t *data;
	size_t len;
};

static void
rx_read(struct bufferevent *bev, void *arg)
{
	struct rx *r = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	size_t n;

	bev_read_more(bev, r->max);
	r->calls++;
	n = evbuffer_get_length(in);
	if (n > r->most)
		r->most = n;
	/* only the bufferevent itself may add to its input */
	r->frozen = evbuffer_add(in, "x", 1) == -1;
	if (r->drain && n > 0) {
		assert_true(r->ngot + n <= TOTAL);
		evbuffer_remove(in, r->got + r->ngot, n);
		r->ngot += n;
	}
}

static void
rx_event(struct bufferevent *bev, short what, void *arg)
{
	struct rx *r = arg;

	(void)bev;
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
		r->eof = 1;
		r->eof_at_end = (what & BEV_EVENT_EOF) && r->ngot == TOTAL;
		event_base_loopbreak(r->base);
	}
}

static void *
tx_main(void *arg)
{
	struct tx *t = arg;

	for (size_t off = 0; off < t->len; ) {
		size_t n = t->len - off < PIECE ? t->len - off : PIECE;
		ssize_t w = write(t->fd, t->data + off, n);

		if (w <= 0)
			break;
		off += (size_t)w;
	}
	close(t->fd);
	return NULL;
}

static uint8_t *
pattern(size_t len)
{
	uint8_t *p = malloc(len);

	assert_non_null(p);
	for (size_t i = 0; i < len; i += 8) {
		uint64_t v = rnd();

		memcpy(p + i, &v, len - i < 8 ? len - i : 8);
	}
	return p;
}

static void
rx_open(struct rx *r, int fd, size_t max, int drain)
{
	memset(r, 0, sizeof(*r));
	r->base = event_base_new();
	assert_non_null(r->base);
	r->bev = bufferevent_socket_new(r->base, fd, BEV_OPT_CLOSE_ON_FREE);
	assert_non_null(r->bev);
	r->max = max;
	r->drain = drain;
	r->got = malloc(TOTAL);
	assert_non_null(r->got);
	bufferevent_setcb(r->bev, rx_read, NULL, rx_event, r);
}

static void
rx_close(struct rx *r)
{
	bufferevent_free(r->bev);
	event_base_free(r->base);
	free(r->got);
}

/* 8 MiB through the socket: every byte in order, then the end, in far
 * fewer callbacks than 4096-byte reads would take. */
static void
test_stream(void **state)
{
	int sv[2];
	uint8_t *data = pattern(TOTAL);
	struct rx r;
	struct tx t;
	pthread_t th;

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	assert_int_equal(evutil_make_socket_nonblocking(sv[0]), 0);
	rx_open(&r, sv[0], 4u << 20, 1);
	bufferevent_enable(r.bev, EV_READ);
	t = (struct tx){ sv[1], data, TOTAL };
	assert_int_equal(pthread_create(&th, NULL, tx_main, &t), 0);
	assert_int_equal(event_base_dispatch(r.base), 0);
	pthread_join(th, NULL);

	assert_true(r.eof);
	assert_true(r.eof_at_end);
	assert_int_equal(r.ngot, TOTAL);
	assert_memory_equal(r.got, data, TOTAL);
	assert_true(r.frozen);
	/* at most one callback per write of the writer, and then some:
	 * 4096-byte reads alone would take 2048 */
	assert_true(r.calls < TOTAL / 4096 / 4);
	rx_close(&r);
	free(data);
}

/* What the socket holds is taken up to the cap, and no further, in one
 * callback; the rest comes in later ones. */
static void
test_cap(void **state)
{
	int sv[2];
	size_t sent = 0, cap = 48u << 10;
	uint8_t *data = pattern(TOTAL);
	struct rx r;

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	assert_int_equal(evutil_make_socket_nonblocking(sv[0]), 0);
	assert_int_equal(evutil_make_socket_nonblocking(sv[1]), 0);
	/* fill the socket as far as it takes */
	for (;;) {
		ssize_t w = write(sv[1], data + sent, PIECE);

		if (w <= 0) {
			assert_true(w == -1 && errno == EAGAIN);
			break;
		}
		sent += (size_t)w;
	}
	assert_true(sent > 2 * cap);
	rx_open(&r, sv[0], cap, 0);
	bufferevent_enable(r.bev, EV_READ);
	assert_int_equal(event_base_loop(r.base, EVLOOP_ONCE), 0);
	assert_int_equal(r.calls, 1);
	/* the bufferevent's own 4096 bytes, then up to the cap: the
	 * appended "x" was refused */
	assert_int_equal(r.most, cap);
	assert_true(r.frozen);
	assert_int_equal(evbuffer_get_length(bufferevent_get_input(r.bev)),
	    cap);

	/* take the rest, draining as it comes */
	evbuffer_remove(bufferevent_get_input(r.bev), r.got, cap);
	r.ngot = cap;
	r.drain = 1;
	r.max = 1u << 20;
	while (r.ngot < sent)
		assert_int_equal(event_base_loop(r.base, EVLOOP_ONCE), 0);
	assert_int_equal(r.ngot, sent);
	assert_memory_equal(r.got, data, sent);
	close(sv[1]);
	rx_close(&r);
	free(data);
}

/* With reading disabled (a paused connection), nothing is read. */
static void
test_disabled(void **state)
{
	int sv[2];
	struct rx r;

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	assert_int_equal(evutil_make_socket_nonblocking(sv[0]), 0);
	assert_int_equal(write(sv[1], "hello", 5), 5);
	rx_open(&r, sv[0], 1u << 20, 0);
	bufferevent_disable(r.bev, EV_READ);
	bev_read_more(r.bev, r.max);
	assert_int_equal(evbuffer_get_length(bufferevent_get_input(r.bev)),
	    0);
	bufferevent_enable(r.bev, EV_READ);
	bev_read_more(r.bev, r.max);
	assert_int_equal(evbuffer_get_length(bufferevent_get_input(r.bev)),
	    5);
	close(sv[1]);
	rx_close(&r);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_stream),
		cmocka_unit_test(test_cap),
		cmocka_unit_test(test_disabled),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
