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
 * A Writes frame built in place, the way the shipper reads the journal:
 * each entry's encoding (the bytes replication__msg__pack would write) is
 * appended as it is read, and the header with the Msg and Writes prefix
 * goes in front at the end.  The data is copied once, from the journal
 * into the frame; nothing is packed or copied again.
 */
struct frame_writes {
	uint8_t *buf;		/* malloc'd: headroom, then the entries */
	size_t head;		/* headroom for the header and the prefix */
	size_t len, cap;	/* bytes of buf in use, allocated */
	const char *vm;
	size_t nent;		/* entries in it */
	uint64_t data;		/* data bytes in it */
};

/* Start an empty Writes frame for VM (kept by reference), with room for
 * about HINT bytes of data.  Returns 0, or -1 (out of memory). */
int frame_writes_init(struct frame_writes *w, const char *vm, size_t hint);
/* Append one entry: its fields as in replication.Entry; E->data is copied.
 * Returns 0, or -1 (out of memory, or over FRAME_MAX). */
int frame_writes_add(struct frame_writes *w, const Replication__Entry *e);
/*
 * Finish the frame (zstd-compressed as frame_encode would, with z).  On
 * success *frame and *len are the frame, and *base is what to free(3) once
 * it is sent; W no longer owns anything.  Returns 0, or -1 with err set
 * (W is then still to be freed).
 */
int frame_writes_finish(struct frame_writes *w, struct frame_zstd *z,
    void **base, const uint8_t **frame, size_t *len, char *err,
    size_t errlen);
void frame_writes_free(struct frame_writes *w);

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

/* Free the calling thread's zstd contexts (each thread that encodes or
 * decodes frames has its own); call before the thread ends. */
void frame_thread_end(void);

#endif
