/*
 * nbd.c: the NBD export server (fixed newstyle, unix socket, libevent).
 *
 * One bufferevent per connection.  The read callback parses as many whole
 * messages as the input buffer holds: first the handshake (client flags,
 * then options), then requests.  Reads are answered at once; writes,
 * zeroes and flushes go to the backend, which answers later through
 * nbd_complete(), so many of them can be in flight and replies may leave
 * out of order.  Reading stops while too many requests are pending or too
 * much reply data is queued, and resumes once that drains.
 *
 * Lifetime: a connection is reference counted: one reference for the open
 * socket, one per pending request and one while its input is parsed.
 * Closing the socket never frees a request; the reply of a request that
 * completes after its connection died is dropped.  backend->close() runs
 * when the socket is gone and the last request has completed.
 *
 * See NetworkBlockDevice's doc/proto.md for the protocol.
 */
#include <sys/types.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#include <endian.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "evread.h"
#include "log.h"
#include "nbd.h"

/* Handshake. */
#define NBD_MAGIC		0x4e42444d41474943ULL	/* "NBDMAGIC" */
#define NBD_IHAVEOPT		0x49484156454f5054ULL	/* "IHAVEOPT" */
#define NBD_REP_MAGIC		0x0003e889045565a9ULL

#define NBD_FLAG_FIXED_NEWSTYLE	(1u << 0)
#define NBD_FLAG_NO_ZEROES	(1u << 1)
#define NBD_FLAG_C_FIXED_NEWSTYLE NBD_FLAG_FIXED_NEWSTYLE
#define NBD_FLAG_C_NO_ZEROES	NBD_FLAG_NO_ZEROES

#define NBD_OPT_EXPORT_NAME	1
#define NBD_OPT_ABORT		2
#define NBD_OPT_LIST		3
#define NBD_OPT_STARTTLS	5
#define NBD_OPT_INFO		6
#define NBD_OPT_GO		7
#define NBD_OPT_STRUCTURED_REPLY 8
#define NBD_OPT_LIST_META_CONTEXT 9
#define NBD_OPT_SET_META_CONTEXT 10

#define NBD_REP_ACK		1
#define NBD_REP_SERVER		2
#define NBD_REP_INFO		3
#define NBD_REP_FLAG_ERROR	(1u << 31)
#define NBD_REP_ERR_UNSUP	(NBD_REP_FLAG_ERROR | 1)
#define NBD_REP_ERR_POLICY	(NBD_REP_FLAG_ERROR | 2)
#define NBD_REP_ERR_INVALID	(NBD_REP_FLAG_ERROR | 3)
#define NBD_REP_ERR_UNKNOWN	(NBD_REP_FLAG_ERROR | 6)

#define NBD_INFO_EXPORT		0
#define NBD_INFO_NAME		1
#define NBD_INFO_DESCRIPTION	2
#define NBD_INFO_BLOCK_SIZE	3

/* Transmission flags. */
#define NBD_FLAG_HAS_FLAGS	(1u << 0)
#define NBD_FLAG_READ_ONLY	(1u << 1)
#define NBD_FLAG_SEND_FLUSH	(1u << 2)
#define NBD_FLAG_SEND_FUA	(1u << 3)
#define NBD_FLAG_SEND_TRIM	(1u << 5)
#define NBD_FLAG_SEND_WRITE_ZEROES (1u << 6)
#define NBD_FLAG_CAN_MULTI_CONN	(1u << 8)

#define NBD_TX_FLAGS	(NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | \
    NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | \
    NBD_FLAG_CAN_MULTI_CONN)

/* Transmission. */
#define NBD_REQUEST_MAGIC	0x25609513u
#define NBD_SIMPLE_REPLY_MAGIC	0x67446698u
#define NBD_STRUCTURED_REPLY_MAGIC 0x668e33efu

#define NBD_CMD_READ		0
#define NBD_CMD_WRITE		1
#define NBD_CMD_DISC		2
#define NBD_CMD_FLUSH		3
#define NBD_CMD_TRIM		4
#define NBD_CMD_WRITE_ZEROES	6

#define NBD_CMD_FLAG_FUA	(1u << 0)

#define NBD_REPLY_FLAG_DONE	(1u << 0)
#define NBD_REPLY_TYPE_NONE	0
#define NBD_REPLY_TYPE_OFFSET_DATA 1
#define NBD_REPLY_TYPE_ERROR	((1u << 15) + 1)

#define NBD_EPERM		1
#define NBD_EIO			5
#define NBD_ENOMEM		12
#define NBD_EINVAL		22
#define NBD_ENOSPC		28
#define NBD_EOVERFLOW		75
#define NBD_ESHUTDOWN		108

/* Sizes on the wire. */
#define HS_OPT_LEN		16	/* IHAVEOPT, option, length */
#define REQ_LEN			28
#define SIMPLE_LEN		16
#define CHUNK_LEN		20

/* Limits. */
#define OPT_MAXLEN		8192	/* largest option payload we accept */
#define OPT_MAXCOUNT		128	/* options per handshake */
#define NAME_MAXLEN		4096
#define HANDSHAKE_TIMEOUT	30	/* seconds */
#define MAX_CONNS		128
#define MAX_INFLIGHT		256	/* pending async requests per conn */
#define OUT_HIWAT		(64u << 20)	/* stop reading above this */
#define OUT_LOWAT		(16u << 20)	/* resume below this */
#define NBD_READ_MAX		(4u << 20)	/* input read at once; bytes per write call */
#define BLOCK_MIN		1
#define BLOCK_PREF		4096

enum conn_state {
	ST_FLAGS,	/* waiting for the client flags */
	ST_OPTS,	/* option haggling */
	ST_TRANS,	/* transmission */
	ST_DRAIN	/* no more input: close once replies are out */
};

struct nbd_conn;

struct nbd_server {
	struct event_base	*base;
	struct evconnlistener	*lev;
	struct nbd_backend	 be;
	void			*arg;
	char			*path;
	TAILQ_HEAD(, nbd_conn)	 conns;
	int			 nconns;	/* with an open socket */
	int			 dead;		/* nbd_server_free() called */
	unsigned		 nextid;
};

struct nbd_conn {
	TAILQ_ENTRY(nbd_conn)	 entry;
	struct nbd_server	*srv;
	struct bufferevent	*bev;
	struct event		*resume_ev;
	void			*exp;
	uint64_t		 size;
	enum conn_state		 state;
	unsigned		 id;
	int			 refcnt;
	int			 closed;
	int			 processing;
	int			 paused;
	int			 reap_pending;
	int			 structured;
	int			 no_zeroes;
	int			 nopts;
	int			 inflight;
};

struct nbd_req {
	struct nbd_conn		*conn;
	uint64_t		 cookie;
	uint16_t		 type;
};

static void	conn_process(struct nbd_conn *);
static void	conn_close(struct nbd_conn *);

/* Big-endian helpers. */
static void
put16(uint8_t *p, uint16_t v)
{
	v = htobe16(v);
	memcpy(p, &v, sizeof(v));
}

static void
put32(uint8_t *p, uint32_t v)
{
	v = htobe32(v);
	memcpy(p, &v, sizeof(v));
}

static void
put64(uint8_t *p, uint64_t v)
{
	v = htobe64(v);
	memcpy(p, &v, sizeof(v));
}

static uint16_t
get16(const uint8_t *p)
{
	uint16_t v;

	memcpy(&v, p, sizeof(v));
	return be16toh(v);
}

static uint32_t
get32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, sizeof(v));
	return be32toh(v);
}

static uint64_t
get64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return be64toh(v);
}

static uint32_t
nbd_errno(int err)
{
	switch (err) {
	case 0:
		return 0;
	case EPERM:
		return NBD_EPERM;
	case EIO:
		return NBD_EIO;
	case ENOMEM:
		return NBD_ENOMEM;
	case EINVAL:
		return NBD_EINVAL;
	case ENOSPC:
	case EDQUOT:
	case EFBIG:
		return NBD_ENOSPC;
	case EOVERFLOW:
		return NBD_EOVERFLOW;
	case ESHUTDOWN:
		return NBD_ESHUTDOWN;
	default:
		return NBD_EIO;
	}
}

/* Is [off, off + len) inside the export? */
static int
in_range(const struct nbd_conn *c, uint64_t off, uint32_t len)
{
	return (len <= c->size && off <= c->size - len);
}

static struct evbuffer *
conn_out(struct nbd_conn *c)
{
	return bufferevent_get_output(c->bev);
}

/*
 * Reference counting.
 */
static void
conn_ref(struct nbd_conn *c)
{
	c->refcnt++;
}

static void
conn_unref(struct nbd_conn *c)
{
	struct nbd_server *srv = c->srv;

	if (--c->refcnt > 0)
		return;
	if (c->exp != NULL && srv->be.close != NULL)
		srv->be.close(srv->arg, c->exp);
	if (c->resume_ev != NULL)
		event_free(c->resume_ev);
	TAILQ_REMOVE(&srv->conns, c, entry);
	free(c);
	if (srv->dead && TAILQ_EMPTY(&srv->conns)) {
		free(srv->path);
		free(srv);
	}
}

/* Free the socket; requests still pending keep the object alive. */
static void
conn_teardown(struct nbd_conn *c)
{
	if (c->bev == NULL)
		return;
	bufferevent_free(c->bev);
	c->bev = NULL;
	c->srv->nconns--;
	log_debug("%s: conn %u: closed, %d request(s) pending", __func__,
	    c->id, c->inflight);
	conn_unref(c);
}

static void
conn_close(struct nbd_conn *c)
{
	if (c->closed)
		return;
	c->closed = 1;
	if (!c->processing)
		conn_teardown(c);
}

/* Can we take another request? */
static int
conn_can_take(struct nbd_conn *c)
{
	return (c->inflight < MAX_INFLIGHT &&
	    evbuffer_get_length(conn_out(c)) < OUT_HIWAT);
}

/* In ST_DRAIN: close once nothing is pending and everything is sent. */
static void
conn_drain_check(struct nbd_conn *c)
{
	if (!c->closed && c->state == ST_DRAIN && c->inflight == 0 &&
	    evbuffer_get_length(conn_out(c)) == 0)
		conn_close(c);
}

/*
 * Option haggling replies.
 */
static void
opt_reply(struct nbd_conn *c, uint32_t opt, uint32_t type, const void *data,
    size_t len)
{
	uint8_t hdr[20];

	put64(hdr, NBD_REP_MAGIC);
	put32(hdr + 8, opt);
	put32(hdr + 12, type);
	put32(hdr + 16, (uint32_t)len);
	evbuffer_add(conn_out(c), hdr, sizeof(hdr));
	if (len > 0)
		evbuffer_add(conn_out(c), data, len);
}

static void
opt_error(struct nbd_conn *c, uint32_t opt, uint32_t type, const char *fmt,
    ...) __attribute__((format(printf, 4, 5)));

static void
opt_error(struct nbd_conn *c, uint32_t opt, uint32_t type, const char *fmt,
    ...)
{
	char msg[256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (n < 0)
		n = 0;
	if ((size_t)n >= sizeof(msg))
		n = sizeof(msg) - 1;
	opt_reply(c, opt, type, msg, (size_t)n);
}

static void
list_cb(const char *name, void *ctx)
{
	struct nbd_conn *c = ctx;
	uint8_t buf[4 + NAME_MAXLEN];
	size_t len = strlen(name);

	if (len > NAME_MAXLEN) {
		log_warnx("%s: export name too long, not listed", __func__);
		return;
	}
	put32(buf, (uint32_t)len);
	memcpy(buf + 4, name, len);
	opt_reply(c, NBD_OPT_LIST, NBD_REP_SERVER, buf, 4 + len);
}

/* Copy a protocol string into a C string; NULL if it holds a NUL. */
static char *
get_name(const uint8_t *p, size_t len)
{
	char *s;

	if (len > NAME_MAXLEN || memchr(p, '\0', len) != NULL)
		return NULL;
	if ((s = malloc(len + 1)) == NULL)
		return NULL;
	memcpy(s, p, len);
	s[len] = '\0';
	return s;
}

/* NBD_OPT_EXPORT_NAME: no error reply is possible, so failure closes. */
static int
opt_export_name(struct nbd_conn *c, const uint8_t *data, uint32_t len)
{
	struct nbd_server *srv = c->srv;
	uint8_t buf[10 + 124];
	char *name;

	if ((name = get_name(data, len)) == NULL) {
		log_warnx("%s: conn %u: bad export name", __func__, c->id);
		return -1;
	}
	c->exp = srv->be.open(srv->arg, name, &c->size);
	if (c->exp == NULL) {
		log_warnx("%s: conn %u: unknown export '%s'", __func__, c->id,
		    name);
		free(name);
		return -1;
	}
	log_debug("%s: conn %u: export '%s'", __func__, c->id, name);
	free(name);
	memset(buf, 0, sizeof(buf));
	put64(buf, c->size);
	put16(buf + 8, NBD_TX_FLAGS);
	evbuffer_add(conn_out(c), buf, c->no_zeroes ? 10 : sizeof(buf));
	c->state = ST_TRANS;
	bufferevent_set_timeouts(c->bev, NULL, NULL);
	return 0;
}

/* NBD_OPT_INFO and NBD_OPT_GO. */
static int
opt_info(struct nbd_conn *c, uint32_t opt, const uint8_t *data, uint32_t len)
{
	struct nbd_server *srv = c->srv;
	uint8_t buf[2 + NAME_MAXLEN];
	uint32_t namelen, i;
	uint16_t nreq;
	uint64_t size;
	int want_name = 0;
	char *name;
	void *exp;

	if (len < 6 || (namelen = get32(data)) > len - 6) {
		opt_error(c, opt, NBD_REP_ERR_INVALID, "malformed request");
		return 0;
	}
	nreq = get16(data + 4 + namelen);
	if (len != 6 + namelen + 2 * (uint32_t)nreq) {
		opt_error(c, opt, NBD_REP_ERR_INVALID, "malformed request");
		return 0;
	}
	for (i = 0; i < nreq; i++)
		if (get16(data + 6 + namelen + 2 * i) == NBD_INFO_NAME)
			want_name = 1;
	if ((name = get_name(data + 4, namelen)) == NULL) {
		opt_error(c, opt, NBD_REP_ERR_INVALID, "invalid export name");
		return 0;
	}
	if ((exp = srv->be.open(srv->arg, name, &size)) == NULL) {
		log_debug("%s: conn %u: unknown export '%s'", __func__, c->id,
		    name);
		opt_error(c, opt, NBD_REP_ERR_UNKNOWN,
		    "unknown export '%.200s'", name);
		free(name);
		return 0;
	}

	put16(buf, NBD_INFO_EXPORT);
	put64(buf + 2, size);
	put16(buf + 10, NBD_TX_FLAGS);
	opt_reply(c, opt, NBD_REP_INFO, buf, 12);
	if (want_name) {
		put16(buf, NBD_INFO_NAME);
		memcpy(buf + 2, name, namelen);
		opt_reply(c, opt, NBD_REP_INFO, buf, 2 + namelen);
	}
	put16(buf, NBD_INFO_BLOCK_SIZE);
	put32(buf + 2, BLOCK_MIN);
	put32(buf + 6, BLOCK_PREF);
	put32(buf + 10, NBD_MAX_REQUEST);
	opt_reply(c, opt, NBD_REP_INFO, buf, 14);
	opt_reply(c, opt, NBD_REP_ACK, NULL, 0);

	if (opt == NBD_OPT_INFO) {
		if (srv->be.close != NULL)
			srv->be.close(srv->arg, exp);
	} else {
		log_debug("%s: conn %u: export '%s'", __func__, c->id, name);
		c->exp = exp;
		c->size = size;
		c->state = ST_TRANS;
		bufferevent_set_timeouts(c->bev, NULL, NULL);
	}
	free(name);
	return 0;
}

/* NBD_OPT_{LIST,SET}_META_CONTEXT: we offer no contexts. */
static int
opt_meta(struct nbd_conn *c, uint32_t opt, const uint8_t *data, uint32_t len)
{
	uint32_t namelen, nq, qlen, off;

	if (opt == NBD_OPT_SET_META_CONTEXT && !c->structured) {
		opt_error(c, opt, NBD_REP_ERR_INVALID,
		    "structured replies not negotiated");
		return 0;
	}
	if (len < 8 || (namelen = get32(data)) > len - 8)
		goto bad;
	off = 4 + namelen;
	nq = get32(data + off);
	off += 4;
	while (nq-- > 0) {
		if (len - off < 4)
			goto bad;
		qlen = get32(data + off);
		off += 4;
		if (qlen > len - off)
			goto bad;
		off += qlen;
	}
	if (off != len)
		goto bad;
	opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
	return 0;
 bad:
	opt_error(c, opt, NBD_REP_ERR_INVALID, "malformed request");
	return 0;
}

/* One option; returns 1 when consumed, 0 for more input, -1 to close. */
static int
step_option(struct nbd_conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	struct nbd_server *srv = c->srv;
	uint8_t hdr[HS_OPT_LEN], *data;
	uint32_t opt, len;
	int rv = 0;

	if (evbuffer_get_length(in) < HS_OPT_LEN)
		return 0;
	evbuffer_copyout(in, hdr, sizeof(hdr));
	if (get64(hdr) != NBD_IHAVEOPT) {
		log_warnx("%s: conn %u: bad option magic", __func__, c->id);
		return -1;
	}
	opt = get32(hdr + 8);
	len = get32(hdr + 12);
	if (len > OPT_MAXLEN) {
		log_warnx("%s: conn %u: option %u too long (%u bytes)",
		    __func__, c->id, opt, len);
		return -1;
	}
	if (++c->nopts > OPT_MAXCOUNT) {
		log_warnx("%s: conn %u: too many options", __func__, c->id);
		return -1;
	}
	if (evbuffer_get_length(in) < HS_OPT_LEN + len) {
		c->nopts--;
		return 0;
	}
	if ((data = evbuffer_pullup(in, HS_OPT_LEN + len)) == NULL) {
		log_warnx("%s: conn %u: evbuffer_pullup failed", __func__,
		    c->id);
		return -1;
	}
	data += HS_OPT_LEN;

	switch (opt) {
	case NBD_OPT_EXPORT_NAME:
		rv = opt_export_name(c, data, len);
		break;
	case NBD_OPT_ABORT:
		opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
		c->state = ST_DRAIN;
		break;
	case NBD_OPT_LIST:
		if (len != 0) {
			opt_error(c, opt, NBD_REP_ERR_INVALID,
			    "unexpected data");
			break;
		}
		if (srv->be.list != NULL)
			srv->be.list(srv->arg, list_cb, c);
		opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
		break;
	case NBD_OPT_INFO:
	case NBD_OPT_GO:
		rv = opt_info(c, opt, data, len);
		break;
	case NBD_OPT_STRUCTURED_REPLY:
		if (len != 0) {
			opt_error(c, opt, NBD_REP_ERR_INVALID,
			    "unexpected data");
			break;
		}
		c->structured = 1;
		opt_reply(c, opt, NBD_REP_ACK, NULL, 0);
		break;
	case NBD_OPT_LIST_META_CONTEXT:
	case NBD_OPT_SET_META_CONTEXT:
		rv = opt_meta(c, opt, data, len);
		break;
	default:
		opt_error(c, opt, NBD_REP_ERR_UNSUP, "option %u unsupported",
		    opt);
		break;
	}
	/* Backend calls cannot close us: the buffer is still ours. */
	evbuffer_drain(in, HS_OPT_LEN + len);
	return rv < 0 ? -1 : 1;
}

/*
 * Transmission replies.
 */
static void
reply_done(struct nbd_conn *c, uint64_t cookie, int err, const char *msg)
{
	uint8_t buf[CHUNK_LEN + 6 + 64];
	size_t mlen;

	if (!c->structured) {
		put32(buf, NBD_SIMPLE_REPLY_MAGIC);
		put32(buf + 4, nbd_errno(err));
		put64(buf + 8, cookie);
		evbuffer_add(conn_out(c), buf, SIMPLE_LEN);
		return;
	}
	put32(buf, NBD_STRUCTURED_REPLY_MAGIC);
	put16(buf + 4, NBD_REPLY_FLAG_DONE);
	put64(buf + 8, cookie);
	if (err == 0) {
		put16(buf + 6, NBD_REPLY_TYPE_NONE);
		put32(buf + 16, 0);
		evbuffer_add(conn_out(c), buf, CHUNK_LEN);
		return;
	}
	mlen = msg != NULL ? strlen(msg) : 0;
	if (mlen > 64)
		mlen = 64;
	put16(buf + 6, NBD_REPLY_TYPE_ERROR);
	put32(buf + 16, 6 + (uint32_t)mlen);
	put32(buf + CHUNK_LEN, nbd_errno(err));
	put16(buf + CHUNK_LEN + 4, (uint16_t)mlen);
	if (mlen > 0)
		memcpy(buf + CHUNK_LEN + 6, msg, mlen);
	evbuffer_add(conn_out(c), buf, CHUNK_LEN + 6 + mlen);
}

/* READ: the header and data are built in place in the output buffer. */
static void
do_read(struct nbd_conn *c, uint64_t cookie, uint64_t off, uint32_t len)
{
	struct nbd_server *srv = c->srv;
	struct evbuffer *out = conn_out(c);
	struct evbuffer_iovec v;
	size_t hlen = c->structured ? CHUNK_LEN + 8 : SIMPLE_LEN;
	uint8_t *p;
	int err;

	if (evbuffer_reserve_space(out, hlen + len, &v, 1) != 1 ||
	    v.iov_len < hlen + len) {
		log_warnx("%s: conn %u: cannot reserve %u bytes", __func__,
		    c->id, len);
		reply_done(c, cookie, ENOMEM, "out of memory");
		return;
	}
	p = v.iov_base;
	if ((err = srv->be.read(c->exp, off, len, p + hlen)) != 0) {
		/* The reservation is dropped by the next add. */
		reply_done(c, cookie, err, strerror(err));
		return;
	}
	if (c->structured) {
		put32(p, NBD_STRUCTURED_REPLY_MAGIC);
		put16(p + 4, NBD_REPLY_FLAG_DONE);
		put16(p + 6, NBD_REPLY_TYPE_OFFSET_DATA);
		put64(p + 8, cookie);
		put32(p + 16, 8 + len);
		put64(p + 20, off);
	} else {
		put32(p, NBD_SIMPLE_REPLY_MAGIC);
		put32(p + 4, 0);
		put64(p + 8, cookie);
	}
	v.iov_len = hlen + len;
	if (evbuffer_commit_space(out, &v, 1) != 0) {
		log_warnx("%s: conn %u: evbuffer_commit_space failed",
		    __func__, c->id);
		reply_done(c, cookie, EIO, NULL);
	}
}

/* A write's data: whole blocks aligned, so that the image writer can
 * hand them to the disk as they are (dio.h); freed with free(). */
static void *
data_alloc(uint32_t len)
{
	void *p;

	if (len < 4096 || len % 4096 != 0)
		return malloc(len);
	return posix_memalign(&p, 4096, len) == 0 ? p : NULL;
}

static struct nbd_req *
req_new(struct nbd_conn *c, uint64_t cookie, uint16_t type)
{
	struct nbd_req *req;

	if ((req = calloc(1, sizeof(*req))) == NULL)
		return NULL;
	req->conn = c;
	req->cookie = cookie;
	req->type = type;
	conn_ref(c);
	c->inflight++;
	return req;
}

/* One request; returns 1 when consumed, 0 for more input, -1 to close. */
static int
step_request(struct nbd_conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	struct nbd_server *srv = c->srv;
	struct nbd_req *req;
	uint8_t hdr[REQ_LEN], *data;
	uint64_t cookie, off;
	uint32_t len;
	uint16_t flags, type;
	int fua;

	if (evbuffer_get_length(in) < REQ_LEN)
		return 0;
	evbuffer_copyout(in, hdr, sizeof(hdr));
	if (get32(hdr) != NBD_REQUEST_MAGIC) {
		log_warnx("%s: conn %u: bad request magic 0x%08x", __func__,
		    c->id, get32(hdr));
		return -1;
	}
	flags = get16(hdr + 4);
	type = get16(hdr + 6);
	cookie = get64(hdr + 8);
	off = get64(hdr + 16);
	len = get32(hdr + 24);
	fua = (flags & NBD_CMD_FLAG_FUA) != 0;

	if (type == NBD_CMD_WRITE) {
		if (len > NBD_MAX_REQUEST) {
			log_warnx("%s: conn %u: write of %u bytes exceeds "
			    "the %u byte limit", __func__, c->id, len,
			    NBD_MAX_REQUEST);
			return -1;
		}
		if (evbuffer_get_length(in) < REQ_LEN + (size_t)len)
			return 0;
		if (len == 0 || !in_range(c, off, len)) {
			evbuffer_drain(in, REQ_LEN + (size_t)len);
			reply_done(c, cookie, len == 0 ? 0 : ENOSPC,
			    len == 0 ? NULL : "write beyond end of export");
			return 1;
		}
		if ((req = req_new(c, cookie, type)) == NULL) {
			evbuffer_drain(in, REQ_LEN + (size_t)len);
			reply_done(c, cookie, ENOMEM, "out of memory");
			return 1;
		}
		/* one copy, out of the input's chunks into what the backend
		 * keeps */
		evbuffer_drain(in, REQ_LEN);
		if ((data = data_alloc(len)) == NULL) {
			evbuffer_drain(in, len);
			nbd_complete(req, ENOMEM);
			return 1;
		}
		if (evbuffer_remove(in, data, len) != (int)len) {
			log_warnx("%s: conn %u: evbuffer_remove failed",
			    __func__, c->id);
			free(data);
			nbd_complete(req, EIO);
			return -1;
		}
		srv->be.write(c->exp, off, len, data, fua, req);
		return 1;
	}

	evbuffer_drain(in, REQ_LEN);
	switch (type) {
	case NBD_CMD_READ:
		if (len > NBD_MAX_REQUEST)
			reply_done(c, cookie, EINVAL, "read too long");
		else if (!in_range(c, off, len))
			reply_done(c, cookie, EINVAL,
			    "read beyond end of export");
		else if (len == 0)
			reply_done(c, cookie, 0, NULL);
		else
			do_read(c, cookie, off, len);
		break;
	case NBD_CMD_TRIM:
	case NBD_CMD_WRITE_ZEROES:
		if (!in_range(c, off, len)) {
			reply_done(c, cookie,
			    type == NBD_CMD_TRIM ? EINVAL : ENOSPC,
			    "request beyond end of export");
			break;
		}
		if (len == 0) {
			reply_done(c, cookie, 0, NULL);
			break;
		}
		if ((req = req_new(c, cookie, type)) == NULL) {
			reply_done(c, cookie, ENOMEM, "out of memory");
			break;
		}
		srv->be.write(c->exp, off, len, NULL, fua, req);
		break;
	case NBD_CMD_FLUSH:
		if ((req = req_new(c, cookie, type)) == NULL) {
			reply_done(c, cookie, ENOMEM, "out of memory");
			break;
		}
		srv->be.flush(c->exp, req);
		break;
	case NBD_CMD_DISC:
		log_debug("%s: conn %u: disconnect requested", __func__,
		    c->id);
		c->state = ST_DRAIN;
		break;
	default:
		reply_done(c, cookie, EINVAL, "unsupported command");
		break;
	}
	return 1;
}

static int
step_flags(struct nbd_conn *c)
{
	struct evbuffer *in = bufferevent_get_input(c->bev);
	uint8_t buf[4];
	uint32_t flags;

	if (evbuffer_get_length(in) < sizeof(buf))
		return 0;
	evbuffer_remove(in, buf, sizeof(buf));
	flags = get32(buf);
	if (flags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) {
		log_warnx("%s: conn %u: unknown client flags 0x%x", __func__,
		    c->id, flags);
		return -1;
	}
	c->no_zeroes = (flags & NBD_FLAG_C_NO_ZEROES) != 0;
	c->state = ST_OPTS;
	return 1;
}

/* Parse every complete message in the input buffer. */
static void
conn_process(struct nbd_conn *c)
{
	int rv;

	if (c->closed || c->processing)
		return;
	conn_ref(c);
	c->processing = 1;
	for (;;) {
		if (c->closed || c->state == ST_DRAIN)
			break;
		if (c->state == ST_TRANS && !conn_can_take(c)) {
			c->paused = 1;
			break;
		}
		switch (c->state) {
		case ST_FLAGS:
			rv = step_flags(c);
			break;
		case ST_OPTS:
			rv = step_option(c);
			break;
		default:
			rv = step_request(c);
			break;
		}
		if (rv < 0)
			c->closed = 1;
		if (rv <= 0)
			break;
	}
	c->processing = 0;
	if (c->closed)
		conn_teardown(c);
	else if (c->paused || c->state == ST_DRAIN)
		bufferevent_disable(c->bev, EV_READ);
	if (!c->closed && c->state == ST_DRAIN)
		conn_drain_check(c);
	conn_unref(c);
}

/* Resume a paused connection, or reap a dead one (see nbd_complete). */
static void
resume_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct nbd_conn *c = arg;

	(void)fd;
	(void)ev;
	if (c->closed) {
		if (c->reap_pending) {
			c->reap_pending = 0;
			conn_unref(c);
		}
		return;
	}
	if (c->paused && conn_can_take(c)) {
		c->paused = 0;
		if (c->state == ST_TRANS)
			bufferevent_enable(c->bev, EV_READ);
		conn_process(c);
	}
}

static void
read_cb(struct bufferevent *bev, void *arg)
{
	bev_read_more(bev, NBD_READ_MAX);
	conn_process(arg);
}

static void
write_cb(struct bufferevent *bev, void *arg)
{
	struct nbd_conn *c = arg;

	(void)bev;
	if (c->state == ST_DRAIN) {
		conn_drain_check(c);
		return;
	}
	if (c->paused && conn_can_take(c)) {
		c->paused = 0;
		bufferevent_enable(c->bev, EV_READ);
		conn_process(c);
	}
}

static void
event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct nbd_conn *c = arg;
	int err;

	(void)bev;
	if (what & BEV_EVENT_EOF)
		log_debug("%s: conn %u: client closed", __func__, c->id);
	else if (what & BEV_EVENT_TIMEOUT)
		log_warnx("%s: conn %u: handshake timeout", __func__, c->id);
	else if (what & BEV_EVENT_ERROR) {
		err = EVUTIL_SOCKET_ERROR();
		if (err == EPIPE || err == ECONNRESET)
			log_debug("%s: conn %u: client went away: %s",
			    __func__, c->id, strerror(err));
		else
			log_warnx("%s: conn %u: %s", __func__, c->id,
			    strerror(err));
	} else
		return;
	conn_close(c);
}

void
nbd_complete(struct nbd_req *req, int err)
{
	struct nbd_conn *c = req->conn;

	if (!c->closed) {
		if (err != 0)
			log_debug("%s: conn %u: request type %u failed: %s",
			    __func__, c->id, req->type, strerror(err));
		reply_done(c, req->cookie, err,
		    err != 0 ? strerror(err) : NULL);
		if (c->paused && !c->processing && conn_can_take(c))
			event_active(c->resume_ev, EV_READ, 0);
	}
	c->inflight--;
	free(req);
	if (c->closed && c->refcnt == 1 && c->resume_ev != NULL) {
		/*
		 * Last reference of a dead connection: let backend->close()
		 * run from the event loop rather than from inside the
		 * backend's completion path.  The request's reference is
		 * handed to resume_cb.
		 */
		c->reap_pending = 1;
		event_active(c->resume_ev, EV_READ, 0);
		return;
	}
	conn_unref(c);
}

static void
accept_cb(struct evconnlistener *lev, evutil_socket_t fd,
    struct sockaddr *sa, int socklen, void *arg)
{
	struct nbd_server *srv = arg;
	struct timeval tv = { HANDSHAKE_TIMEOUT, 0 };
	struct nbd_conn *c;
	uint8_t hello[18];

	(void)lev;
	(void)sa;
	(void)socklen;
	if (srv->nconns >= MAX_CONNS) {
		log_warnx("%s: too many connections, refusing one", __func__);
		close(fd);
		return;
	}
	if ((c = calloc(1, sizeof(*c))) == NULL) {
		log_warn("%s: calloc", __func__);
		close(fd);
		return;
	}
	c->srv = srv;
	c->id = ++srv->nextid;
	c->refcnt = 1;		/* the socket */
	c->state = ST_FLAGS;
	c->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_CLOSE_ON_FREE);
	c->resume_ev = event_new(srv->base, -1, 0, resume_cb, c);
	if (c->bev == NULL || c->resume_ev == NULL) {
		log_warnx("%s: cannot set up connection", __func__);
		if (c->bev != NULL)
			bufferevent_free(c->bev);
		else
			close(fd);
		if (c->resume_ev != NULL)
			event_free(c->resume_ev);
		free(c);
		return;
	}
	TAILQ_INSERT_TAIL(&srv->conns, c, entry);
	srv->nconns++;
	log_debug("%s: conn %u: accepted", __func__, c->id);

	bufferevent_setcb(c->bev, read_cb, write_cb, event_cb, c);
	bufferevent_setwatermark(c->bev, EV_WRITE, OUT_LOWAT, 0);
	/* big replies leave in few writes (reads: read_cb) */
	bufferevent_set_max_single_write(c->bev, NBD_READ_MAX);
	bufferevent_set_timeouts(c->bev, &tv, NULL);
	put64(hello, NBD_MAGIC);
	put64(hello + 8, NBD_IHAVEOPT);
	put16(hello + 16, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
	evbuffer_add(conn_out(c), hello, sizeof(hello));
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

static void
accept_error_cb(struct evconnlistener *lev, void *arg)
{
	(void)lev;
	(void)arg;
	log_warnx("%s: accept: %s", __func__,
	    evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

struct nbd_server *
nbd_server_new(struct event_base *base, const char *path,
    const struct nbd_backend *be, void *arg)
{
	struct nbd_server *srv;
	struct sockaddr_un sun;
	struct sigaction sa;
	int fd = -1;

	if (be == NULL || be->open == NULL || be->read == NULL ||
	    be->write == NULL || be->flush == NULL) {
		log_warnx("%s: incomplete backend", __func__);
		return NULL;
	}
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	if (strlen(path) >= sizeof(sun.sun_path)) {
		log_warnx("%s: %s: socket path too long", __func__, path);
		return NULL;
	}
	memcpy(sun.sun_path, path, strlen(path));
	/* A client vanishing must not kill the daemon with SIGPIPE. */
	if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
		signal(SIGPIPE, SIG_IGN);

	if ((srv = calloc(1, sizeof(*srv))) == NULL ||
	    (srv->path = strdup(path)) == NULL) {
		log_warn("%s: calloc", __func__);
		free(srv);
		return NULL;
	}
	srv->base = base;
	srv->be = *be;
	srv->arg = arg;
	TAILQ_INIT(&srv->conns);

	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    0)) == -1) {
		log_warn("%s: socket", __func__);
		goto fail;
	}
	if (unlink(path) == -1 && errno != ENOENT) {
		log_warn("%s: unlink %s", __func__, path);
		goto fail;
	}
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) == -1) {
		log_warn("%s: bind %s", __func__, path);
		goto fail;
	}
	if (chmod(path, 0660) == -1) {
		log_warn("%s: chmod %s", __func__, path);
		goto fail;
	}
	if (listen(fd, 64) == -1) {
		log_warn("%s: listen %s", __func__, path);
		goto fail;
	}
	srv->lev = evconnlistener_new(base, accept_cb, srv,
	    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, fd);
	if (srv->lev == NULL) {
		log_warnx("%s: evconnlistener_new failed", __func__);
		goto fail;
	}
	evconnlistener_set_error_cb(srv->lev, accept_error_cb);
	log_debug("%s: listening on %s", __func__, path);
	return srv;

 fail:
	if (fd != -1)
		close(fd);
	free(srv->path);
	free(srv);
	return NULL;
}

void
nbd_server_free(struct nbd_server *srv)
{
	struct nbd_conn *c, *next;

	if (srv == NULL)
		return;
	evconnlistener_free(srv->lev);
	srv->lev = NULL;
	if (unlink(srv->path) == -1 && errno != ENOENT)
		log_warn("%s: unlink %s", __func__, srv->path);
	/* srv->dead is set after the loop so that it cannot free srv. */
	for (c = TAILQ_FIRST(&srv->conns); c != NULL; c = next) {
		conn_ref(c);
		c->closed = 1;
		if (!c->processing)
			conn_teardown(c);
		/* The event base may go away: no deferred work from here. */
		if (c->reap_pending) {
			c->reap_pending = 0;
			conn_unref(c);
		}
		if (c->resume_ev != NULL) {
			event_free(c->resume_ev);
			c->resume_ev = NULL;
		}
		next = TAILQ_NEXT(c, entry);
		conn_unref(c);
	}
	srv->dead = 1;
	if (TAILQ_EMPTY(&srv->conns)) {
		free(srv->path);
		free(srv);
	}
}
