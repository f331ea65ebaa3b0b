/*
 * serve.c: `replicad serve -c FILE --peer NAME`, run by sshd on the DR
 * site as the forced command of a primary's key.  It hands the SSH
 * channel (stdin/stdout) to the running daemon as peer NAME: it connects
 * to the control socket, says {"cmd":"serve","peer":NAME}, and relays
 * bytes both ways until either side closes.  The peer name comes from
 * authorized_keys, never from the remote side.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "config.h"

#define RELAY_BUF (256u << 10)
#define SPLICE_LEN (1u << 20)
#define PIPE_SIZE (1u << 20)	/* /proc/sys/fs/pipe-max-size by default */

struct pipe_buf {
	uint8_t *buf;
	size_t len, off;
	int eof;
	int spliced;		/* splice(2) works between in and out */
	int wait_out;		/* a splice waits for out to take more */
};

static int
readable(int fd)
{
	struct pollfd p = { fd, POLLIN, 0 };

	return poll(&p, 1, 0) == 1 && (p.revents & (POLLIN | POLLHUP));
}

/*
 * Move what can move now.  Where one side is a pipe, splice(2) moves it in
 * the kernel; otherwise (or where splice refuses) through b->buf.
 */
static int
relay(int in, int out, struct pipe_buf *b, short rev, short wev)
{
	ssize_t n;

	while (b->spliced && !b->eof && ((rev & (POLLIN | POLLHUP | POLLERR)) ||
	    (b->wait_out && (wev & POLLOUT)))) {
		n = splice(in, NULL, out, NULL, SPLICE_LEN,
		    SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
		if (n > 0) {
			b->wait_out = 0;
			continue;
		}
		if (n == 0) {
			b->eof = 1;
			return 0;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN) {
			/* out is full if in still has data */
			b->wait_out = readable(in);
			return 0;
		}
		if (errno != EINVAL)
			return -1;
		b->spliced = 0;	/* neither side a pipe: copy */
		b->wait_out = 0;
	}
	if (b->spliced)
		return 0;

	if (b->len == 0 && !b->eof && (rev & (POLLIN | POLLHUP | POLLERR))) {
		n = read(in, b->buf, RELAY_BUF);
		if (n < 0 && errno != EINTR && errno != EAGAIN)
			return -1;
		if (n == 0)
			b->eof = 1;
		if (n > 0) {
			b->len = (size_t)n;
			b->off = 0;
		}
	}
	if (b->len > 0 && (wev & POLLOUT)) {
		n = write(out, b->buf + b->off, b->len);
		if (n < 0 && errno != EINTR && errno != EAGAIN)
			return -1;
		if (n > 0) {
			b->off += (size_t)n;
			b->len -= (size_t)n;
		}
	}
	return 0;
}

int
serve_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "peer", required_argument, NULL, 'p' },
		{ NULL, 0, NULL, 0 },
	};
	struct config cfg;
	struct sockaddr_un sun;
	struct pipe_buf up = { 0 }, down = { 0 };
	const char *conf = NULL, *peer = NULL;
	char err[1024], hello[512];
	int ch, s;

	memset(&cfg, 0, sizeof(cfg));
	while ((ch = getopt_long(argc, argv, "c:", opts, NULL)) != -1) {
		switch (ch) {
		case 'c':
			conf = optarg;
			break;
		case 'p':
			peer = optarg;
			break;
		default:
			fprintf(stderr, "usage: replicad serve -c FILE --peer "
			    "NAME\n");
			return 2;
		}
	}
	if (peer == NULL || strlen(peer) > 64 || strpbrk(peer, "\"\\/\n")) {
		fprintf(stderr, "replicad serve: --peer NAME is required (set "
		    "by the forced command in authorized_keys)\n");
		return 2;
	}
	if (conf == NULL)
		conf = getenv("REPLICAD_CONF") ? getenv("REPLICAD_CONF") :
		    "/etc/replicad/replicad.conf";
	if (config_load(conf, &cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "replicad serve: %s\n", err);
		return 1;
	}
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", cfg.control);
	if ((s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1 ||
	    connect(s, (struct sockaddr *)&sun, sizeof(sun)) == -1) {
		fprintf(stderr, "replicad serve: replicad on %s is not "
		    "reachable at %s: %s\n", cfg.site_name, cfg.control,
		    strerror(errno));
		config_free(&cfg);
		return 3;
	}
	config_free(&cfg);
	snprintf(hello, sizeof(hello), "{\"cmd\":\"serve\",\"peer\":\"%s\"}\n",
	    peer);
	if (write(s, hello, strlen(hello)) != (ssize_t)strlen(hello)) {
		fprintf(stderr, "replicad serve: %s\n", strerror(errno));
		return 3;
	}
	up.buf = malloc(RELAY_BUF);
	down.buf = malloc(RELAY_BUF);
	if (up.buf == NULL || down.buf == NULL)
		return 1;
	/* sshd's pipes: bigger ones let it run ahead of us */
	fcntl(0, F_SETPIPE_SZ, PIPE_SIZE);
	fcntl(1, F_SETPIPE_SZ, PIPE_SIZE);
	for (int i = 0; i < 2; i++) {
		int sz = 4 << 20;

		if (setsockopt(s, SOL_SOCKET, i ? SO_RCVBUFFORCE :
		    SO_SNDBUFFORCE, &sz, sizeof(sz)) == -1)
			setsockopt(s, SOL_SOCKET, i ? SO_RCVBUF : SO_SNDBUF,
			    &sz, sizeof(sz));
	}
	fcntl(s, F_SETFL, fcntl(s, F_GETFL) | O_NONBLOCK);
	up.spliced = down.spliced = 1;
	for (;;) {
		struct pollfd q[3];
		short e0, es, e1;

		if (up.eof && up.len == 0)
			shutdown(s, SHUT_WR);
		if ((up.eof && up.len == 0 && down.eof && down.len == 0) ||
		    (down.eof && down.len == 0))
			break;
		e0 = !up.eof && up.len == 0 && !up.wait_out ? POLLIN : 0;
		es = (short)((up.len > 0 || up.wait_out ? POLLOUT : 0) |
		    (!down.eof && down.len == 0 && !down.wait_out ? POLLIN : 0));
		e1 = down.len > 0 || down.wait_out ? POLLOUT : 0;
		/* a descriptor with nothing to wait for is left out: POLLHUP
		 * is reported even unasked and would spin the loop.  Stdout
		 * stays: its hangup is the SSH channel going away. */
		q[0] = (struct pollfd){ e0 ? 0 : -1, e0, 0 };
		q[1] = (struct pollfd){ es ? s : -1, es, 0 };
		q[2] = (struct pollfd){ 1, e1, 0 };
		if (poll(q, 3, -1) == -1) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (q[2].revents & (POLLERR | POLLHUP))
			break;	/* the SSH channel is gone */
		if (relay(0, s, &up, q[0].revents, q[1].revents) != 0 ||
		    relay(s, 1, &down, q[1].revents, q[2].revents) != 0)
			break;
	}
	free(up.buf);
	free(down.buf);
	close(s);
	return 0;
}
