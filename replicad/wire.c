/* wire.c: replication frames over libevent buffers. */
#include <event2/buffer.h>
#include <stdlib.h>
#include <string.h>

#include "daemon.h"

/* ARG: the allocation the frame lies in, when it does not start it */
static void
free_frame(const void *data, size_t len, void *arg)
{
	(void)len;
	free(arg ? arg : (void *)data);
}

/* Hand frame F (LEN bytes, lying in BASE when BASE is not NULL) to OUT;
 * on failure it is freed. */
static int
queue_frame(struct evbuffer *out, const uint8_t *f, size_t len, void *base,
    char *err, size_t errlen)
{
	if (evbuffer_add_reference(out, f, len, free_frame, base) != 0) {
		free(base ? base : (void *)f);
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	return 0;
}

int
wire_queue_writes(struct evbuffer *out, struct frame_writes *w,
    struct frame_zstd *z, char *err, size_t errlen)
{
	const uint8_t *f;
	void *base;
	size_t len;

	if (frame_writes_finish(w, z, &base, &f, &len, err, errlen) != 0)
		return -1;
	return queue_frame(out, f, len, base, err, errlen);
}

int
wire_queue(struct evbuffer *out, const Replication__Msg *m,
    struct frame_zstd *z, char *err, size_t errlen)
{
	uint8_t *buf;
	size_t len;

	if (frame_encode(m, z, &buf, &len, err, errlen) != 0)
		return -1;
	return queue_frame(out, buf, len, NULL, err, errlen);
}

int
wire_drain(struct evbuffer *in, int (*fn)(Replication__Msg *, void *),
    void *arg, char *err, size_t errlen)
{
	for (;;) {
		size_t have = evbuffer_get_length(in), flen;
		uint8_t *p;
		Replication__Msg *m;
		int r;

		err[0] = '\0';
		if (have < FRAME_HDR)
			return 0;
		p = evbuffer_pullup(in, FRAME_HDR);
		if ((r = frame_peek(p, have, &flen, err, errlen)) < 0)
			return -1;
		if (r == 0 || have < flen)
			return 0;
		if ((p = evbuffer_pullup(in, (ssize_t)flen)) == NULL) {
			snprintf(err, errlen, "out of memory");
			return -1;
		}
		m = frame_decode(p, flen, err, errlen);
		evbuffer_drain(in, flen);
		if (m == NULL)
			return -1;
		r = fn(m, arg);
		replication__msg__free_unpacked(m, NULL);
		if (r == WIRE_PAUSE)
			return 0;
		if (r != 0)
			return -1;
	}
}
