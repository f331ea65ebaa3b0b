/*
 * slowsync.c: an LD_PRELOAD shim for tests.  fdatasync(2) and fsync(2) of
 * a primary journal's data.mdb take SLOWSYNC_MS (default 20) milliseconds
 * longer, as on a slow disk; nothing else changes.  It widens the window
 * between a journal commit and the sync after it, where the main and the
 * shipper thread once disagreed about a catch-up.
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void
maybe_sleep(int fd)
{
	char p[64], t[4096];
	const char *e;
	ssize_t n;
	int ms;

	snprintf(p, sizeof(p), "/proc/self/fd/%d", fd);
	if ((n = readlink(p, t, sizeof(t) - 1)) <= 0)
		return;
	t[n] = '\0';
	if (strstr(t, "/journal/data.mdb") == NULL)
		return;
	e = getenv("SLOWSYNC_MS");
	ms = e ? atoi(e) : 20;
	{
		struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };

		nanosleep(&ts, NULL);
	}
}

int
fdatasync(int fd)
{
	int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");

	maybe_sleep(fd);
	return real(fd);
}

int
fsync(int fd)
{
	int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");

	maybe_sleep(fd);
	return real(fd);
}
