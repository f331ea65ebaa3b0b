/*
 * serve.c: `replicad serve -c FILE --peer NAME`, run by sshd on the DR
 * site as the forced command of a primary's key.  It hands the SSH
 * channel (stdin/stdout) to the running daemon as peer NAME: it connects
 * to the control socket, says {"cmd":"serve","peer":NAME}, and relays
 * bytes both ways until either side closes.  The peer name comes from
 * authorized_keys, never from the remote side.
 */
#include <errno.h>
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

struct pipe_buf {
	uint8_t *buf;
	size_t len, off;
	int eof;
};

static int
relay(int in, int out, struct pipe_buf *b, short rev, short wev)
{
	ssize_t n;

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
	for (;;) {
		struct pollfd p[4] = {
			{ 0, up.len == 0 && !up.eof ? POLLIN : 0, 0 },
			{ s, up.len > 0 ? POLLOUT : 0, 0 },
			{ s, down.len == 0 && !down.eof ? POLLIN : 0, 0 },
			{ 1, down.len > 0 ? POLLOUT : 0, 0 },
		};
		struct pollfd q[3] = {
			{ up.eof ? -1 : 0, p[0].events, 0 },
			{ s, (short)(p[1].events | p[2].events), 0 },
			{ 1, p[3].events, 0 },
		};

		if (up.eof && up.len == 0)
			shutdown(s, SHUT_WR);
		if ((up.eof && up.len == 0 && down.eof && down.len == 0) ||
		    (down.eof && down.len == 0))
			break;
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
