/*
 * nbd.h: the NBD export (fixed newstyle, unix socket), driven by libevent.
 *
 * The server speaks the protocol; a backend owns the data.  Reads are
 * synchronous.  Writes, zeroes and flushes are asynchronous: the backend
 * takes the request and later calls nbd_complete() exactly once (it may do
 * so before the call returns).  This lets the backend group-commit every
 * write that arrived in one event-loop turn into one journal transaction
 * and acknowledge them together.
 *
 * Ownership: the server owns its connections and every struct nbd_req;
 * a request stays valid until nbd_complete() even if its connection is
 * closed meanwhile (the reply is then dropped).  The backend never frees
 * a request.  Write data is valid only for the duration of the write call.
 */
#ifndef REPLICAD_NBD_H
#define REPLICAD_NBD_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct nbd_server;
struct nbd_req;

#define NBD_MAX_REQUEST (32u << 20)	/* largest READ/WRITE payload */

struct nbd_backend {
	/* Find export NAME ("vm/disk"); return its handle and size, or NULL. */
	void *(*open)(void *arg, const char *name, uint64_t *size);
	/* A connection that opened EXP is gone. */
	void (*close)(void *arg, void *exp);
	/* Call fn(name, ctx) for every export, for NBD_OPT_LIST. */
	void (*list)(void *arg, void (*fn)(const char *name, void *ctx),
	    void *ctx);
	/* Read LEN bytes at OFF into BUF; return 0 or an errno value. */
	int (*read)(void *exp, uint64_t off, uint32_t len, void *buf);
	/* Write (data != NULL) or zero (data == NULL; TRIM and WRITE_ZEROES)
	 * a range; fua asks for durability before completion.  DATA is
	 * malloc'd and the backend's to free. */
	void (*write)(void *exp, uint64_t off, uint32_t len, void *data,
	    int fua, struct nbd_req *req);
	/* Make every completed write durable. */
	void (*flush)(void *exp, struct nbd_req *req);
};

/* Finish a request: err is 0 or an errno value (EIO, ENOSPC, EINVAL, ...). */
void nbd_complete(struct nbd_req *req, int err);

/* Listen on the unix socket PATH (unlinked first, mode 0660).  Returns NULL
 * with a log line on failure. */
struct nbd_server *nbd_server_new(struct event_base *base, const char *path,
    const struct nbd_backend *be, void *arg);
/* Close the listener and every connection. */
void nbd_server_free(struct nbd_server *srv);

#endif
