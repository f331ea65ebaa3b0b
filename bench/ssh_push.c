/*
 * ssh_push: the libssh2 peer of the shipping benchmark.  Pushes a file
 * through one exec channel ("cat >/dev/null") in blocking mode, with
 * libssh2's default method preferences (nothing is set), public-key auth.
 *
 *   ssh_push HOST PORT USER PRIVKEY FILE [COMMAND]
 *
 * Prints on stdout: bytes seconds MB/s kex cipher mac
 * (seconds: from TCP connect to the channel's exit status).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libssh2.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BUFSZ (256 * 1024)

static double
now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void
die_ssh(LIBSSH2_SESSION *s, const char *what)
{
	char *msg = NULL;

	libssh2_session_last_error(s, &msg, NULL, 0);
	fprintf(stderr, "ssh_push: %s: %s\n", what, msg ? msg : "?");
	exit(1);
}

int
main(int argc, char **argv)
{
	struct sockaddr_in sa;
	LIBSSH2_SESSION *s;
	LIBSSH2_CHANNEL *ch;
	const char *cmd = argc > 6 ? argv[6] : "cat >/dev/null";
	char pub[4096], *buf;
	unsigned long long total = 0;
	double t0, t1;
	int fd, sock, one = 1;
	ssize_t n;

	if (argc < 6) {
		fprintf(stderr, "usage: ssh_push HOST PORT USER PRIVKEY FILE "
		    "[COMMAND]\n");
		return 2;
	}
	if ((fd = open(argv[5], O_RDONLY)) == -1) {
		perror(argv[5]);
		return 1;
	}
	snprintf(pub, sizeof(pub), "%s.pub", argv[4]);
	if ((buf = malloc(BUFSZ)) == NULL)
		return 1;
	if (libssh2_init(0) != 0)
		return 1;

	t0 = now();
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_port = htons((unsigned short)atoi(argv[2]));
	if (inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1) {
		fprintf(stderr, "ssh_push: bad address %s\n", argv[1]);
		return 1;
	}
	if ((sock = socket(AF_INET, SOCK_STREAM, 0)) == -1 ||
	    connect(sock, (struct sockaddr *)&sa, sizeof(sa)) == -1) {
		perror("connect");
		return 1;
	}
	setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

	if ((s = libssh2_session_init()) == NULL)
		return 1;
	libssh2_session_set_blocking(s, 1);
	if (libssh2_session_handshake(s, sock) != 0)
		die_ssh(s, "handshake");
	if (libssh2_userauth_publickey_fromfile(s, argv[3], pub, argv[4],
	    "") != 0)
		die_ssh(s, "auth");
	if ((ch = libssh2_channel_open_session(s)) == NULL)
		die_ssh(s, "channel");
	if (libssh2_channel_exec(ch, cmd) != 0)
		die_ssh(s, "exec");

	while ((n = read(fd, buf, BUFSZ)) > 0) {
		char *p = buf;

		while (n > 0) {
			ssize_t w = libssh2_channel_write(ch, p, (size_t)n);

			if (w < 0)
				die_ssh(s, "write");
			p += w;
			n -= w;
			total += (unsigned long long)w;
		}
	}
	if (n < 0) {
		perror("read");
		return 1;
	}
	if (libssh2_channel_send_eof(ch) != 0)
		die_ssh(s, "send_eof");
	libssh2_channel_wait_eof(ch);
	libssh2_channel_close(ch);
	libssh2_channel_wait_closed(ch);
	t1 = now();

	printf("%llu %.3f %.1f %s %s %s\n", total, t1 - t0,
	    total / (t1 - t0) / 1e6,
	    libssh2_session_methods(s, LIBSSH2_METHOD_KEX),
	    libssh2_session_methods(s, LIBSSH2_METHOD_CRYPT_CS),
	    libssh2_session_methods(s, LIBSSH2_METHOD_MAC_CS));
	if (libssh2_channel_get_exit_status(ch) != 0) {
		fprintf(stderr, "ssh_push: remote command exited %d\n",
		    libssh2_channel_get_exit_status(ch));
		return 1;
	}
	libssh2_channel_free(ch);
	libssh2_session_disconnect(s, "done");
	libssh2_session_free(s);
	close(sock);
	libssh2_exit();
	return 0;
}
