/*
 * frame.h: framing of replication messages.
 *
 * A frame is an 8-byte header in network byte order -- payload length
 * (uint32), message type (uint16, the Msg body case), flags (uint16) --
 * followed by the payload: one packed replication.Msg, zstd-compressed when
 * FRAME_F_ZSTD is set.  Lengths are capped before anything is allocated.
 */
#ifndef REPLICAD_FRAME_H
#define REPLICAD_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "replication.pb-c.h"

#define PROTOCOL_VERSION 1
#define FRAME_HDR	8
#define FRAME_MAX	(48u << 20)	/* payload cap, packed or unpacked */
#define FRAME_F_ZSTD	0x0001

/* Compression state of one sender: after a frame that did not compress,
 * the next few go raw, so incompressible data (encrypted or compressed
 * guest disks) costs no CPU for nothing.  Zero-initialise. */
struct frame_zstd {
	unsigned skip;
};

/*
 * Pack M into a new frame (header included) in *out (malloc'd, caller
 * frees).  With z != NULL the payload is zstd-compressed when that makes
 * it smaller.  Returns 0, or -1 with err set.
 */
int frame_encode(const Replication__Msg *m, struct frame_zstd *z,
    uint8_t **out, size_t *outlen, char *err, size_t errlen);

/*
 * Look at the start of a byte stream.  Returns 1 and sets *framelen when a
 * valid header is there, 0 when fewer than FRAME_HDR bytes are, and -1 with
 * err set when the header is invalid (length over the cap, unknown flags).
 */
int frame_peek(const uint8_t *buf, size_t len, size_t *framelen, char *err,
    size_t errlen);

/*
 * Unpack one whole frame.  Returns the message (free it with
 * replication__msg__free_unpacked(m, NULL)) or NULL with err set.
 */
Replication__Msg *frame_decode(const uint8_t *frame, size_t len, char *err,
    size_t errlen);

const char *frame_type_name(unsigned type);

#endif
