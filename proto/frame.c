/* frame.c: replication frames: header, optional zstd, protobuf-c payload. */
#include "frame.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

/*
 * One compression and one decompression context per thread, reused:
 * creating them per frame costs more than compressing a small frame.  The
 * shipper thread and the main thread (the DR receiver) both encode and
 * decode frames.
 */
static __thread ZSTD_CCtx *cctx;
static __thread ZSTD_DCtx *dctx;

/* Level -1: zstd's fast mode; shipping is CPU-bound before it is
 * wire-bound on a LAN, and a WAN gains most from the first ratio points. */
#define FRAME_ZSTD_LEVEL (-1)

#define FRAME_ZSTD_BACKOFF 8	/* raw frames after one that did not pay */

static void
put_hdr(uint8_t *p, uint32_t len, uint16_t type, uint16_t flags)
{
	uint32_t l = htonl(len);
	uint16_t t = htons(type), f = htons(flags);

	memcpy(p, &l, 4);
	memcpy(p + 4, &t, 2);
	memcpy(p + 6, &f, 2);
}

/*
 * With z, try zstd on the packed payload P (PLEN bytes) of a TYPE frame:
 * returns a new frame (header included, *outlen set) when compressing
 * pays, or NULL when the frame goes raw (below 512 bytes, backing off,
 * not worth it, or no memory for trying).
 */
static uint8_t *
try_zstd(struct frame_zstd *z, const uint8_t *p, size_t plen, uint16_t type,
    size_t *outlen)
{
	size_t bound, clen = (size_t)-1;
	uint8_t *c;

	if (z == NULL || plen < 512)
		return NULL;
	if (z->skip > 0) {
		z->skip--;
		return NULL;
	}
	bound = ZSTD_compressBound(plen);
	if ((c = malloc(FRAME_HDR + bound)) != NULL &&
	    (cctx != NULL || (cctx = ZSTD_createCCtx()) != NULL))
		clen = ZSTD_compressCCtx(cctx, c + FRAME_HDR, bound, p, plen,
		    FRAME_ZSTD_LEVEL);
	if (c != NULL && !ZSTD_isError(clen) && clen < plen - plen / 16) {
		put_hdr(c, (uint32_t)clen, type, FRAME_F_ZSTD);
		*outlen = FRAME_HDR + clen;
		return c;
	}
	free(c);
	z->skip = FRAME_ZSTD_BACKOFF;	/* not worth it: raw for a while */
	return NULL;
}

int
frame_encode(const Replication__Msg *m, struct frame_zstd *z, uint8_t **out,
    size_t *outlen, char *err, size_t errlen)
{
	size_t plen = replication__msg__get_packed_size(m);
	uint8_t *buf, *c;

	if (plen > FRAME_MAX) {
		snprintf(err, errlen, "message of %zu bytes over the %u cap",
		    plen, FRAME_MAX);
		return -1;
	}
	if ((buf = malloc(FRAME_HDR + plen)) == NULL) {
		snprintf(err, errlen, "out of memory");
		return -1;
	}
	replication__msg__pack(m, buf + FRAME_HDR);
	if ((c = try_zstd(z, buf + FRAME_HDR, plen, m->body_case,
	    outlen)) != NULL) {
		free(buf);
		*out = c;
		return 0;
	}
	put_hdr(buf, plen, m->body_case, 0);
	*out = buf;
	*outlen = FRAME_HDR + plen;
	return 0;
}

/* ------------------------------------------------------------------ */
/* a Writes frame built in place */

#define VARINT_MAX	10

static size_t
varint_len(uint64_t v)
{
	size_t n = 1;

	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

static uint8_t *
put_varint(uint8_t *p, uint64_t v)
{
	while (v >= 0x80) {
		*p++ = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	*p++ = (uint8_t)v;
	return p;
}

/* Field tags (number << 3 | wire type) of the messages built here. */
#define TAG_MSG_WRITES		0x2a	/* Msg.writes = 5, length-delimited */
#define TAG_WRITES_VM		0x0a	/* Writes.vm = 1 */
#define TAG_WRITES_ENTRY	0x12	/* Writes.entries = 2 */
#define TAG_ENTRY_SEQ		0x08	/* Entry.seq = 1, varint */
#define TAG_ENTRY_DISK		0x10
#define TAG_ENTRY_OFFSET	0x18
#define TAG_ENTRY_LENGTH	0x20
#define TAG_ENTRY_ZERO		0x28
#define TAG_ENTRY_DATA		0x32	/* Entry.data = 6, length-delimited */

int
frame_writes_init(struct frame_writes *w, const char *vm, size_t hint)
{
	size_t vl = strlen(vm);

	memset(w, 0, sizeof(*w));
	w->vm = vm;
	/* header, Msg.writes tag and length, Writes.vm */
	w->head = FRAME_HDR + 1 + VARINT_MAX + 1 + varint_len(vl) + vl;
	w->cap = w->head + hint + hint / 64 + 256;
	if ((w->buf = malloc(w->cap)) == NULL)
		return -1;
	w->len = w->head;
	return 0;
}

int
frame_writes_add(struct frame_writes *w, const Replication__Entry *e)
{
	size_t dl = e->zero ? 0 : e->data.len, el, need;
	uint8_t *p;

	/* proto3: fields at their default value are left out */
	el = (e->seq ? 1 + varint_len(e->seq) : 0) +
	    (e->disk ? 1 + varint_len(e->disk) : 0) +
	    (e->offset ? 1 + varint_len(e->offset) : 0) +
	    (e->length ? 1 + varint_len(e->length) : 0) +
	    (e->zero ? 2 : 0) + (dl ? 1 + varint_len(dl) + dl : 0);
	need = 1 + varint_len(el) + el;
	if (w->len - w->head + need > FRAME_MAX - 64)
		return -1;
	if (w->len + need > w->cap) {
		size_t nc = w->cap * 2 > w->len + need ? w->cap * 2 :
		    w->len + need;
		uint8_t *nb = realloc(w->buf, nc);

		if (nb == NULL)
			return -1;
		w->buf = nb;
		w->cap = nc;
	}
	p = w->buf + w->len;
	*p++ = TAG_WRITES_ENTRY;
	p = put_varint(p, el);
	if (e->seq) {
		*p++ = TAG_ENTRY_SEQ;
		p = put_varint(p, e->seq);
	}
	if (e->disk) {
		*p++ = TAG_ENTRY_DISK;
		p = put_varint(p, e->disk);
	}
	if (e->offset) {
		*p++ = TAG_ENTRY_OFFSET;
		p = put_varint(p, e->offset);
	}
	if (e->length) {
		*p++ = TAG_ENTRY_LENGTH;
		p = put_varint(p, e->length);
	}
	if (e->zero) {
		*p++ = TAG_ENTRY_ZERO;
		*p++ = 1;
	}
	if (dl) {
		*p++ = TAG_ENTRY_DATA;
		p = put_varint(p, dl);
		memcpy(p, e->data.data, dl);
		p += dl;
	}
	w->len = (size_t)(p - w->buf);
	w->nent++;
	w->data += dl;
	return 0;
}

int
frame_writes_finish(struct frame_writes *w, struct frame_zstd *z,
    void **base, const uint8_t **frame, size_t *len, char *err,
    size_t errlen)
{
	size_t vl = strlen(w->vm), el = w->len - w->head, wl, plen, pre;
	uint8_t *f, *p, *c;

	wl = (vl ? 1 + varint_len(vl) + vl : 0) + el;	/* "" is left out */
	plen = 1 + varint_len(wl) + wl;
	if (plen > FRAME_MAX) {
		snprintf(err, errlen, "message of %zu bytes over the %u cap",
		    plen, FRAME_MAX);
		return -1;
	}
	pre = FRAME_HDR + plen - el;	/* what goes in front */
	f = w->buf + w->head - pre;
	p = f + FRAME_HDR;
	*p++ = TAG_MSG_WRITES;
	p = put_varint(p, wl);
	if (vl) {
		*p++ = TAG_WRITES_VM;
		p = put_varint(p, vl);
		memcpy(p, w->vm, vl);
	}
	if ((c = try_zstd(z, f + FRAME_HDR, plen,
	    REPLICATION__MSG__BODY_WRITES, len)) != NULL) {
		frame_writes_free(w);
		*base = c;
		*frame = c;
		return 0;
	}
	put_hdr(f, (uint32_t)plen, REPLICATION__MSG__BODY_WRITES, 0);
	*base = w->buf;
	*frame = f;
	*len = FRAME_HDR + plen;
	w->buf = NULL;
	return 0;
}

void
frame_writes_free(struct frame_writes *w)
{
	free(w->buf);
	w->buf = NULL;
}

int
frame_peek(const uint8_t *buf, size_t len, size_t *framelen, char *err,
    size_t errlen)
{
	uint32_t l;
	uint16_t f;

	if (len < FRAME_HDR)
		return 0;
	memcpy(&l, buf, 4);
	memcpy(&f, buf + 6, 2);
	l = ntohl(l);
	f = ntohs(f);
	if (l > FRAME_MAX) {
		snprintf(err, errlen, "frame length %u over the %u cap", l,
		    FRAME_MAX);
		return -1;
	}
	if (f & ~FRAME_F_ZSTD) {
		snprintf(err, errlen, "unknown frame flags 0x%x", f);
		return -1;
	}
	*framelen = FRAME_HDR + (size_t)l;
	return 1;
}

Replication__Msg *
frame_decode(const uint8_t *frame, size_t len, char *err, size_t errlen)
{
	Replication__Msg *m;
	size_t flen;
	uint16_t type, flags;
	const uint8_t *payload = frame + FRAME_HDR;
	size_t plen;
	uint8_t *raw = NULL;

	int r = frame_peek(frame, len, &flen, err, errlen);

	if (r < 0)
		return NULL;
	if (r == 0 || flen != len) {
		snprintf(err, errlen, "truncated frame");
		return NULL;
	}
	memcpy(&type, frame + 4, 2);
	memcpy(&flags, frame + 6, 2);
	type = ntohs(type);
	flags = ntohs(flags);
	plen = len - FRAME_HDR;
	if (flags & FRAME_F_ZSTD) {
		unsigned long long rlen = ZSTD_getFrameContentSize(payload,
		    plen);
		size_t got;

		if (rlen == ZSTD_CONTENTSIZE_UNKNOWN ||
		    rlen == ZSTD_CONTENTSIZE_ERROR || rlen > FRAME_MAX) {
			snprintf(err, errlen, "bad compressed payload");
			return NULL;
		}
		if ((raw = malloc(rlen ? rlen : 1)) == NULL) {
			snprintf(err, errlen, "out of memory");
			return NULL;
		}
		if (dctx == NULL && (dctx = ZSTD_createDCtx()) == NULL) {
			free(raw);
			snprintf(err, errlen, "out of memory");
			return NULL;
		}
		got = ZSTD_decompressDCtx(dctx, raw, rlen, payload, plen);
		if (ZSTD_isError(got) || got != rlen) {
			free(raw);
			snprintf(err, errlen, "corrupt compressed payload");
			return NULL;
		}
		payload = raw;
		plen = rlen;
	}
	m = replication__msg__unpack(NULL, plen, payload);
	free(raw);
	if (m == NULL) {
		snprintf(err, errlen, "malformed %s message",
		    frame_type_name(type));
		return NULL;
	}
	if ((unsigned)m->body_case != type ||
	    m->body_case == REPLICATION__MSG__BODY__NOT_SET) {
		snprintf(err, errlen, "frame type %u does not match its body",
		    type);
		replication__msg__free_unpacked(m, NULL);
		return NULL;
	}
	return m;
}

const char *
frame_type_name(unsigned type)
{
	static const char *names[] = { "empty", "hello", "welcome",
	    "announce", "state", "writes", "sync", "sync-done", "point",
	    "ack", "error" };

	return type < sizeof(names) / sizeof(names[0]) ? names[type] :
	    "unknown";
}

void
frame_thread_end(void)
{
	ZSTD_freeCCtx(cctx);
	ZSTD_freeDCtx(dctx);
	cctx = NULL;
	dctx = NULL;
}
