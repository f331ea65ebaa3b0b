/* frame.c: replication frames: header, optional zstd, protobuf-c payload. */
#include "frame.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

/*
 * One compression and one decompression context, reused: creating them per
 * frame costs more than compressing a small frame.  The daemon is single-
 * threaded; frames are encoded and decoded on its one thread.
 */
static ZSTD_CCtx *cctx;
static ZSTD_DCtx *dctx;

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

int
frame_encode(const Replication__Msg *m, struct frame_zstd *z, uint8_t **out,
    size_t *outlen, char *err, size_t errlen)
{
	size_t plen = replication__msg__get_packed_size(m);
	uint8_t *buf;
	int compress = z != NULL;

	if (plen > FRAME_MAX) {
		snprintf(err, errlen, "message of %zu bytes over the %u cap",
		    plen, FRAME_MAX);
		return -1;
	}
	if (compress && plen >= 512 && z->skip > 0) {
		z->skip--;
		compress = 0;
	}
	if (compress && plen >= 512) {
		uint8_t *raw = malloc(plen);
		size_t bound = ZSTD_compressBound(plen), clen;

		buf = malloc(FRAME_HDR + bound);
		if (raw == NULL || buf == NULL) {
			free(raw);
			free(buf);
			snprintf(err, errlen, "out of memory");
			return -1;
		}
		replication__msg__pack(m, raw);
		if (cctx == NULL && (cctx = ZSTD_createCCtx()) == NULL)
			clen = (size_t)-1;
		else
			clen = ZSTD_compressCCtx(cctx, buf + FRAME_HDR, bound,
			    raw, plen, FRAME_ZSTD_LEVEL);
		if (!ZSTD_isError(clen) && clen < plen - plen / 16) {
			free(raw);
			put_hdr(buf, clen, m->body_case, FRAME_F_ZSTD);
			*out = buf;
			*outlen = FRAME_HDR + clen;
			return 0;
		}
		/* Not worth it: send the packed bytes as they are. */
		z->skip = FRAME_ZSTD_BACKOFF;
		memcpy(buf + FRAME_HDR, raw, plen);
		free(raw);
	} else {
		buf = malloc(FRAME_HDR + plen);
		if (buf == NULL) {
			snprintf(err, errlen, "out of memory");
			return -1;
		}
		replication__msg__pack(m, buf + FRAME_HDR);
	}
	put_hdr(buf, plen, m->body_case, 0);
	*out = buf;
	*outlen = FRAME_HDR + plen;
	return 0;
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
