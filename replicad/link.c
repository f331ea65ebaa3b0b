/*
 * link.c: the SSH transport from this site to one peer: libssh2 in
 * non-blocking mode, driven by libevent.  It connects, checks the peer's
 * host key against known_hosts (an unknown or changed key refuses the
 * connection), authenticates with the configured key, runs the remote
 * `replicad serve` (the forced command of that key), exchanges
 * Hello/Welcome, and then carries frames both ways.  After any failure it
 * reconnects with exponential backoff; the shipper resumes from what the
 * peer reports.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <libssh2.h>

#include "daemon.h"
#include "log.h"

#define IO_CHUNK	(256u << 10)
#define BACKOFF_MIN	500
#define BACKOFF_MAX	30000
#define CHAN_WINDOW	(16u << 20)
#define TX_MAX		(256u << 10)	/* SSH packets gathered per send(2) */

enum lstate {
	L_IDLE,		/* waiting for the backoff timer */
	L_CONNECT,	/* TCP connect under way */
	L_HANDSHAKE,
	L_AUTH,
	L_OPEN,
	L_EXEC,
	L_HELLO,	/* Hello sent, waiting for Welcome */
	L_READY,
};

struct link {
	struct daemon *d;
	const struct cfg_peer *peer;
	enum lstate st;
	int fd;
	LIBSSH2_SESSION *sess;
	LIBSSH2_CHANNEL *chan;
	struct event *ev_rd, *ev_wr, *ev_timer, *ev_wake;
	struct event *ev_later;	/* a pump a bandwidth cap put off */
	struct evbuffer *out, *in;
	int backoff_ms;
	char why[256];		/* last failure, for status */
	uint8_t *iobuf;
	/* libssh2 hands each SSH packet (32 KiB of channel data at most) to
	 * tx_send, which gathers them here: one send(2) and one wake-up of
	 * the peer's sshd for several packets.  Flushed before the event
	 * loop waits (link_step) and whenever it is full. */
	uint8_t *txbuf;
	size_t txoff, txlen;	/* [txoff, txlen) waits to be sent */
	int ready;		/* atomic: st == L_READY, for other threads */
	int wake_pending;	/* atomic: a wake is on its way */
};

static void link_step(struct link *l);

#define WAKE_COALESCE_US 1000	/* journal growth gathered before a pump */
#define PUMP_ROUNDS	64	/* pump()'s turns before the loop's other events */

static const char *state_names[] = { "idle", "connecting", "handshake",
	"authenticating", "opening", "starting", "hello", "ready" };

const char *
link_state(struct link *l)
{
	static char buf[320];

	if (l->st == L_READY || l->why[0] == '\0')
		return state_names[l->st];
	snprintf(buf, sizeof(buf), "%s (%s)", state_names[l->st], l->why);
	return buf;
}

struct daemon *
link_daemon(struct link *l)
{
	return l->d;
}

const struct cfg_peer *
link_peer(struct link *l)
{
	return l->peer;
}

int
link_is_ready(struct link *l)
{
	return l->st == L_READY;
}

size_t
link_queued(struct link *l)
{
	return evbuffer_get_length(l->out);
}

static void
teardown(struct link *l)
{
	/*
	 * A non-blocking libssh2 may answer EAGAIN to the frees below and keep
	 * its memory; with the socket shut down its sends fail at once, so in
	 * blocking mode the frees complete without waiting on the peer.
	 */
	if (l->fd >= 0)
		shutdown(l->fd, SHUT_RDWR);
	if (l->sess)
		libssh2_session_set_blocking(l->sess, 1);
	if (l->chan) {
		libssh2_channel_free(l->chan);
		l->chan = NULL;
	}
	if (l->sess) {
		libssh2_session_free(l->sess);
		l->sess = NULL;
	}
	l->txoff = l->txlen = 0;	/* the frees' packets, never sent */
	if (l->ev_rd) {
		event_free(l->ev_rd);
		l->ev_rd = NULL;
	}
	if (l->ev_wr) {
		event_free(l->ev_wr);
		l->ev_wr = NULL;
	}
	if (l->fd >= 0) {
		close(l->fd);
		l->fd = -1;
	}
	evbuffer_drain(l->out, evbuffer_get_length(l->out));
	evbuffer_drain(l->in, evbuffer_get_length(l->in));
}

void
link_reset(struct link *l, const char *why)
{
	struct timeval tv;
	int was_ready = l->st == L_READY;

	if (strcmp(l->why, why) != 0 || was_ready)
		log_warnx("link %s: %s; retrying in %d ms", l->peer->name, why,
		    l->backoff_ms);
	snprintf(l->why, sizeof(l->why), "%s", why);
	__atomic_store_n(&l->ready, 0, __ATOMIC_RELEASE);
	teardown(l);
	l->st = L_IDLE;
	if (was_ready)
		ship_link_down(l);
	tv.tv_sec = l->backoff_ms / 1000;
	tv.tv_usec = (l->backoff_ms % 1000) * 1000;
	evtimer_add(l->ev_timer, &tv);
	ship_link_changed(l);
	l->backoff_ms = l->backoff_ms * 2 > BACKOFF_MAX ? BACKOFF_MAX :
	    l->backoff_ms * 2;
}

static void
sess_fail(struct link *l, const char *what)
{
	char *msg = NULL, buf[320];

	if (l->sess)
		libssh2_session_last_error(l->sess, &msg, NULL, 0);
	snprintf(buf, sizeof(buf), "%s%s%s", what, msg && *msg ? ": " : "",
	    msg ? msg : "");
	link_reset(l, buf);
}

/* Arm the socket events for what libssh2 waits on. */
static void
arm(struct link *l)
{
	int dir;

	if (l->fd < 0)
		return;
	event_add(l->ev_rd, NULL);
	dir = l->sess ? libssh2_session_block_directions(l->sess) : 0;
	if (l->st == L_CONNECT || (dir & LIBSSH2_SESSION_BLOCK_OUTBOUND) ||
	    l->txlen > l->txoff ||
	    (l->st == L_READY && evbuffer_get_length(l->out) > 0 &&
	    (dir & LIBSSH2_SESSION_BLOCK_OUTBOUND)))
		event_add(l->ev_wr, NULL);
	else
		event_del(l->ev_wr);
}

/* Send what tx_send gathered, as far as the socket takes it: 0 once all
 * is sent, 1 when the socket is full, -1 on an error (errno). */
static int
tx_flush(struct link *l)
{
	while (l->txoff < l->txlen) {
		ssize_t n = send(l->fd, l->txbuf + l->txoff,
		    l->txlen - l->txoff, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return 1;
		if (n < 0)
			return -1;
		l->txoff += (size_t)n;
	}
	l->txoff = l->txlen = 0;
	return 0;
}

/*
 * libssh2's send: the packet is taken into txbuf (libssh2 counts it sent),
 * sending what waits first when it does not fit.  -EAGAIN while the
 * socket cannot take what waits: libssh2 keeps the packet and says it
 * blocks outbound, which arm() waits on.
 */
static LIBSSH2_SEND_FUNC(tx_send)
{
	struct link *l = *abstract;

	(void)socket;
	(void)flags;
	if (l->txlen + length > TX_MAX) {
		if (tx_flush(l) < 0)
			return -errno;
		if (l->txoff > 0) {
			memmove(l->txbuf, l->txbuf + l->txoff,
			    l->txlen - l->txoff);
			l->txlen -= l->txoff;
			l->txoff = 0;
		}
		if (l->txlen + length > TX_MAX) {
			ssize_t n;

			if (l->txlen > 0)
				return -EAGAIN;
			/* larger than the buffer: straight out */
			do
				n = send(l->fd, buffer, length, MSG_NOSIGNAL);
			while (n < 0 && errno == EINTR);
			return n < 0 ? -errno : n;
		}
	}
	memcpy(l->txbuf + l->txlen, buffer, length);
	l->txlen += length;
	return (ssize_t)length;
}

static void
io_cb(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	link_step(arg);
}

static void
start_connect(struct link *l)
{
	struct addrinfo hints, *res = NULL, *ai;
	char port[16], buf[320];
	int fd = -1, rc;

	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	snprintf(port, sizeof(port), "%d", l->peer->port);
	if ((rc = getaddrinfo(l->peer->host, port, &hints, &res)) != 0) {
		snprintf(buf, sizeof(buf), "resolve %s: %s", l->peer->host,
		    gai_strerror(rc));
		link_reset(l, buf);
		return;
	}
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK |
		    SOCK_CLOEXEC, ai->ai_protocol);
		if (fd == -1)
			continue;
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0 ||
		    errno == EINPROGRESS)
			break;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd == -1) {
		snprintf(buf, sizeof(buf), "connect %s:%d: %s", l->peer->host,
		    l->peer->port, strerror(errno));
		link_reset(l, buf);
		return;
	}
	rc = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &rc, sizeof(rc));
	l->fd = fd;
	l->ev_rd = event_new(l->d->sbase, fd, EV_READ, io_cb, l);
	l->ev_wr = event_new(l->d->sbase, fd, EV_WRITE, io_cb, l);
	l->st = L_CONNECT;
	arm(l);
}

static void
timer_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct link *l = arg;

	(void)fd;
	(void)ev;
	if (l->st == L_IDLE)
		start_connect(l);
}

static int
check_host_key(struct link *l)
{
	LIBSSH2_KNOWNHOSTS *kh;
	struct libssh2_knownhost *found = NULL;
	const char *key;
	size_t klen;
	int type, mask, rc;
	char buf[512];

	key = libssh2_session_hostkey(l->sess, &klen, &type);
	if (key == NULL) {
		link_reset(l, "peer sent no host key");
		return -1;
	}
	switch (type) {
	case LIBSSH2_HOSTKEY_TYPE_RSA:
		mask = LIBSSH2_KNOWNHOST_KEY_SSHRSA;
		break;
	case LIBSSH2_HOSTKEY_TYPE_DSS:
		mask = LIBSSH2_KNOWNHOST_KEY_SSHDSS;
		break;
	case LIBSSH2_HOSTKEY_TYPE_ECDSA_256:
		mask = LIBSSH2_KNOWNHOST_KEY_ECDSA_256;
		break;
	case LIBSSH2_HOSTKEY_TYPE_ECDSA_384:
		mask = LIBSSH2_KNOWNHOST_KEY_ECDSA_384;
		break;
	case LIBSSH2_HOSTKEY_TYPE_ECDSA_521:
		mask = LIBSSH2_KNOWNHOST_KEY_ECDSA_521;
		break;
	case LIBSSH2_HOSTKEY_TYPE_ED25519:
		mask = LIBSSH2_KNOWNHOST_KEY_ED25519;
		break;
	default:
		mask = LIBSSH2_KNOWNHOST_KEY_UNKNOWN;
	}
	if ((kh = libssh2_knownhost_init(l->sess)) == NULL) {
		sess_fail(l, "known_hosts");
		return -1;
	}
	if (libssh2_knownhost_readfile(kh, l->peer->known_hosts,
	    LIBSSH2_KNOWNHOST_FILE_OPENSSH) < 0) {
		snprintf(buf, sizeof(buf), "cannot read known_hosts %s",
		    l->peer->known_hosts);
		libssh2_knownhost_free(kh);
		link_reset(l, buf);
		return -1;
	}
	rc = libssh2_knownhost_checkp(kh, l->peer->host, l->peer->port, key,
	    klen, LIBSSH2_KNOWNHOST_TYPE_PLAIN | LIBSSH2_KNOWNHOST_KEYENC_RAW |
	    mask, &found);
	libssh2_knownhost_free(kh);
	switch (rc) {
	case LIBSSH2_KNOWNHOST_CHECK_MATCH:
		return 0;
	case LIBSSH2_KNOWNHOST_CHECK_MISMATCH:
		snprintf(buf, sizeof(buf), "host key of %s:%d CHANGED (not the "
		    "key in %s): refusing to connect", l->peer->host,
		    l->peer->port, l->peer->known_hosts);
		break;
	case LIBSSH2_KNOWNHOST_CHECK_NOTFOUND:
		snprintf(buf, sizeof(buf), "host key of %s:%d is unknown (not "
		    "in %s): refusing to connect", l->peer->host, l->peer->port,
		    l->peer->known_hosts);
		break;
	default:
		snprintf(buf, sizeof(buf), "host key of %s:%d could not be "
		    "checked", l->peer->host, l->peer->port);
	}
	link_reset(l, buf);
	return -1;
}

static void
send_hello(struct link *l)
{
	Replication__Msg m = REPLICATION__MSG__INIT;
	Replication__Hello h = REPLICATION__HELLO__INIT;

	h.protocol = PROTOCOL_VERSION;
	h.site = l->d->cfg.site_name;
	m.body_case = REPLICATION__MSG__BODY_HELLO;
	m.hello = &h;
	l->st = L_HELLO;
	link_send(l, &m, NULL);
}

static int
on_frame(Replication__Msg *m, void *arg)
{
	struct link *l = arg;
	char buf[512];

	if (l->st == L_HELLO) {
		if (m->body_case == REPLICATION__MSG__BODY_ERROR) {
			snprintf(buf, sizeof(buf), "peer refused: %s",
			    m->error->message);
			link_reset(l, buf);
			return 1;
		}
		if (m->body_case != REPLICATION__MSG__BODY_WELCOME) {
			link_reset(l, "peer answered hello with something "
			    "else");
			return 1;
		}
		if (m->welcome->protocol != PROTOCOL_VERSION) {
			snprintf(buf, sizeof(buf), "peer speaks protocol %u, "
			    "this site %u", m->welcome->protocol,
			    PROTOCOL_VERSION);
			link_reset(l, buf);
			return 1;
		}
		if (strcmp(m->welcome->site, l->peer->name) != 0) {
			snprintf(buf, sizeof(buf), "peer calls itself '%s', "
			    "not '%s'", m->welcome->site, l->peer->name);
			link_reset(l, buf);
			return 1;
		}
		l->st = L_READY;
		__atomic_store_n(&l->ready, 1, __ATOMIC_RELEASE);
		l->why[0] = '\0';
		l->backoff_ms = BACKOFF_MIN;
		log_info("link %s: ready (%s:%d)", l->peer->name,
		    l->peer->host, l->peer->port);
		ship_link_ready(l);
		ship_link_changed(l);
		return 0;
	}
	if (ship_on_msg(l, m) != 0) {
		link_reset(l, "protocol error");
		return 1;
	}
	return 0;
}

/* Move bytes between the channel and the buffers; parse what came in. */
static void
pump(struct link *l)
{
	char err[256], remote[sizeof(l->why)] = "";
	ssize_t n;
	int round;

	for (round = 0; round < PUMP_ROUNDS; round++) {
		int moved = 0, shut = 0, eof = 0;

		/* outbound */
		while (evbuffer_get_length(l->out) > 0) {
			struct evbuffer_iovec v;
			size_t len;

			/* the first frame's bytes as they lie: a pullup
			 * across two frames would copy them (libssh2 sends
			 * one packet a call anyway) */
			if (evbuffer_peek(l->out, -1, NULL, &v, 1) < 1)
				break;
			len = v.iov_len > IO_CHUNK ? IO_CHUNK : v.iov_len;
			n = libssh2_channel_write(l->chan, v.iov_base, len);
			if (n == LIBSSH2_ERROR_EAGAIN) {
				/* the peer's window is shut: the socket is
				 * not what we wait for */
				shut = libssh2_channel_window_write(
				    l->chan) == 0;
				break;
			}
			if (n < 0) {
				sess_fail(l, "send");
				return;
			}
			evbuffer_drain(l->out, (size_t)n);
			moved = 1;
		}
		/* inbound */
		for (;;) {
			n = libssh2_channel_read(l->chan, (char *)l->iobuf,
			    IO_CHUNK);
			if (n == LIBSSH2_ERROR_EAGAIN)
				break;
			if (n < 0) {
				sess_fail(l, "receive");
				return;
			}
			if (n == 0) {
				/* what came with the EOF is read first */
				eof = libssh2_channel_eof(l->chan);
				break;
			}
			evbuffer_add(l->in, l->iobuf, (size_t)n);
			moved = 1;
		}
		/* the remote command's complaints */
		while ((n = libssh2_channel_read_stderr(l->chan,
		    (char *)l->iobuf, IO_CHUNK - 1)) > 0) {
			l->iobuf[n] = '\0';
			while (n > 0 && (l->iobuf[n - 1] == '\n'))
				l->iobuf[--n] = '\0';
			log_warnx("link %s: remote: %s", l->peer->name,
			    (char *)l->iobuf);
			snprintf(l->why, sizeof(l->why), "remote: %s",
			    (char *)l->iobuf);
			snprintf(remote, sizeof(remote), "%s", l->why);
			/* reading stderr may have taken in the channel's EOF
			 * too: go round once more to see it */
			moved = 1;
		}
		/* the reads may have taken in the window adjust: no socket
		 * event will come for it, so write again now */
		if (shut && libssh2_channel_window_write(l->chan) > 0)
			moved = 1;
		if (evbuffer_get_length(l->in) >= FRAME_HDR) {
			enum lstate before = l->st;

			if (wire_drain(l->in, on_frame, l, err,
			    sizeof(err)) != 0) {
				if (l->st == before && l->fd >= 0)
					link_reset(l, err[0] ? err :
					    "bad frame");
				return;
			}
			if (l->fd < 0)
				return;	/* reset inside a handler */
		}
		if (eof) {
			/* the frames and complaints that came before the EOF
			 * are taken in: a refusal names its cause */
			link_reset(l, remote[0] ? remote :
			    "peer closed the channel");
			return;
		}
		if (l->st == L_READY) {
			size_t before = evbuffer_get_length(l->out);

			ship_pump(l);
			if (l->fd < 0)
				return;
			if (evbuffer_get_length(l->out) > before)
				moved = 1;
		}
		if (!moved)
			break;
	}
	/* Out of rounds with work left: what the last round queued lies in
	 * l->out, and no socket event may come for it (the peer waits for
	 * it), so pump again once the loop has looked at its other events.
	 * An initial copy once stalled here for good. */
	if (round == PUMP_ROUNDS)
		link_pump_later(l, 0);
}

static void
link_step(struct link *l)
{
	enum lstate before = l->st;
	int rc;
	socklen_t sl = sizeof(rc);

	switch (l->st) {
	case L_IDLE:
		return;
	case L_CONNECT:
		if (getsockopt(l->fd, SOL_SOCKET, SO_ERROR, &rc, &sl) == -1 ||
		    rc != 0) {
			char buf[320];

			snprintf(buf, sizeof(buf), "connect %s:%d: %s",
			    l->peer->host, l->peer->port, strerror(rc));
			link_reset(l, buf);
			return;
		}
		if ((l->sess = libssh2_session_init_ex(NULL, NULL, NULL,
		    l)) == NULL) {
			link_reset(l, "cannot create an SSH session");
			return;
		}
		libssh2_session_set_blocking(l->sess, 0);
		libssh2_keepalive_config(l->sess, 0, 15);
		libssh2_session_callback_set(l->sess, LIBSSH2_CALLBACK_SEND,
		    (void *)tx_send);
		l->st = L_HANDSHAKE;
		/* FALLTHROUGH */
	case L_HANDSHAKE:
		rc = libssh2_session_handshake(l->sess, l->fd);
		if (rc == LIBSSH2_ERROR_EAGAIN)
			break;
		if (rc != 0) {
			sess_fail(l, "SSH handshake");
			return;
		}
		if (check_host_key(l) != 0)
			return;
		l->st = L_AUTH;
		/* FALLTHROUGH */
	case L_AUTH:
		rc = libssh2_userauth_publickey_fromfile(l->sess,
		    l->peer->user, NULL, l->peer->key, NULL);
		if (rc == LIBSSH2_ERROR_EAGAIN)
			break;
		if (rc != 0) {
			char buf[300];

			snprintf(buf, sizeof(buf), "public key auth as %s with "
			    "%s", l->peer->user, l->peer->key);
			sess_fail(l, buf);
			return;
		}
		l->st = L_OPEN;
		/* FALLTHROUGH */
	case L_OPEN:
		l->chan = libssh2_channel_open_ex(l->sess, "session",
		    sizeof("session") - 1, CHAN_WINDOW, 32768, NULL, 0);
		if (l->chan == NULL) {
			if (libssh2_session_last_errno(l->sess) ==
			    LIBSSH2_ERROR_EAGAIN)
				break;
			sess_fail(l, "open channel");
			return;
		}
		l->st = L_EXEC;
		/* FALLTHROUGH */
	case L_EXEC:
		/* The key's forced command on the peer decides what runs. */
		rc = libssh2_channel_exec(l->chan, "replicad serve");
		if (rc == LIBSSH2_ERROR_EAGAIN)
			break;
		if (rc != 0) {
			sess_fail(l, "start replicad serve");
			return;
		}
		send_hello(l);
		/* FALLTHROUGH */
	case L_HELLO:
	case L_READY:
		pump(l);
		if (l->fd < 0)
			return;
		break;
	}
	/* what libssh2 handed over goes out before the loop waits */
	if (l->fd >= 0 && tx_flush(l) < 0) {
		char buf[320];

		snprintf(buf, sizeof(buf), "send: %s", strerror(errno));
		link_reset(l, buf);
		return;
	}
	arm(l);
	if (l->st != before)
		ship_link_changed(l);	/* status shows where it stands */
}

int
link_send(struct link *l, const Replication__Msg *m, struct frame_zstd *z)
{
	char err[256];

	if (l->st != L_READY && l->st != L_HELLO)
		return -1;
	if (wire_queue(l->out, m, z, err, sizeof(err)) != 0) {
		link_reset(l, err);
		return -1;
	}
	return 0;
}

int
link_send_writes(struct link *l, struct frame_writes *w,
    struct frame_zstd *z)
{
	char err[256];

	if (l->st != L_READY && l->st != L_HELLO)
		return -1;
	if (wire_queue_writes(l->out, w, z, err, sizeof(err)) != 0) {
		link_reset(l, err);
		return -1;
	}
	return 0;
}

/* Push queued frames out now (called after queueing from outside). */
void
link_kick(struct link *l)
{
	if (l->st == L_READY)
		link_step(l);
}

/* Pump what the VMs have, then move it (a timer or a wake-up). */
static void
later_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct link *l = arg;

	(void)fd;
	(void)ev;
	if (l->st != L_READY)
		return;
	ship_pump(l);
	if (l->st == L_READY)
		link_step(l);
}

static void
wake_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct link *l = arg;

	__atomic_store_n(&l->wake_pending, 0, __ATOMIC_RELEASE);
	later_cb(fd, ev, l);
}


/* Its own timer: a capped VM must not hold up the wakes of the others. */
void
link_pump_later(struct link *l, int ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };

	if (event_pending(l->ev_later, EV_TIMEOUT, NULL))
		return;		/* a pump comes then; it looks again */
	event_add(l->ev_later, &tv);
}

/* Any thread: the journal grew.  event_active() is thread-safe once
 * evthread_use_pthreads() ran. */
void
link_wake(struct link *l)
{
	/* One wake-up in flight is enough: waking the other thread costs a
	 * system call, and the pump takes everything the journal holds. */
	struct timeval tv = { 0, WAKE_COALESCE_US };

	if (!__atomic_load_n(&l->ready, __ATOMIC_ACQUIRE) ||
	    __atomic_exchange_n(&l->wake_pending, 1, __ATOMIC_ACQ_REL))
		return;
	/* A moment's wait gathers the commits of many event-loop turns
	 * into one frame: fewer frames, packets and DR-side transactions
	 * for the same data, for a millisecond more of lag. */
	event_add(l->ev_wake, &tv);
}

struct link *
link_new(struct daemon *d, const struct cfg_peer *peer)
{
	struct link *l = calloc(1, sizeof(*l));

	if (l == NULL)
		return NULL;
	l->d = d;
	l->peer = peer;
	l->fd = -1;
	l->backoff_ms = BACKOFF_MIN;
	l->out = evbuffer_new();
	l->in = evbuffer_new();
	l->iobuf = malloc(IO_CHUNK);
	l->txbuf = malloc(TX_MAX);
	l->ev_timer = evtimer_new(d->sbase, timer_cb, l);
	l->ev_wake = event_new(d->sbase, -1, 0, wake_cb, l);
	l->ev_later = evtimer_new(d->sbase, later_cb, l);
	if (l->out == NULL || l->in == NULL || l->iobuf == NULL ||
	    l->txbuf == NULL ||
	    l->ev_timer == NULL || l->ev_wake == NULL || l->ev_later == NULL) {
		link_free(l);
		return NULL;
	}
	l->st = L_IDLE;
	{
		struct timeval tv = { 0, 0 };

		evtimer_add(l->ev_timer, &tv);
	}
	return l;
}

void
link_free(struct link *l)
{
	if (l == NULL)
		return;
	teardown(l);
	if (l->ev_timer)
		event_free(l->ev_timer);
	if (l->ev_wake)
		event_free(l->ev_wake);
	if (l->ev_later)
		event_free(l->ev_later);
	if (l->out)
		evbuffer_free(l->out);
	if (l->in)
		evbuffer_free(l->in);
	free(l->iobuf);
	free(l->txbuf);
	free(l);
}
