/* fileio.c: whole-range image I/O (see fileio.h). */
#include "fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

int
pwrite_full(int fd, const void *buf, size_t len, uint64_t off)
{
	const uint8_t *p = buf;

	while (len > 0) {
		ssize_t n = pwrite(fd, p, len, (off_t)off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

/* Read LEN bytes at OFF; at the end of the file, zeroes (ZEROES) or
 * EIO. */
static int
pread_upto(int fd, void *buf, size_t len, uint64_t off, int zeroes)
{
	uint8_t *p = buf;

	while (len > 0) {
		ssize_t n = pread(fd, p, len, (off_t)off);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -1;
		if (n == 0) {
			if (!zeroes) {
				errno = EIO;
				return -1;
			}
			memset(p, 0, len);
			break;
		}
		p += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

int
pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	return pread_upto(fd, buf, len, off, 1);
}

int
pread_exact(int fd, void *buf, size_t len, uint64_t off)
{
	return pread_upto(fd, buf, len, off, 0);
}

int
pread_data(int fd, void *buf, size_t len, uint64_t off)
{
	uint8_t *p = buf;
	uint64_t at = off, end = off + len;

	while (at < end) {
		off_t d = lseek(fd, (off_t)at, SEEK_DATA), h;

		if (d < 0 && errno == ENXIO)	/* a hole to the end */
			d = (off_t)end;
		else if (d < 0)		/* no SEEK_DATA here: read it all */
			return pread_full(fd, p + (at - off), end - at, at);
		if ((uint64_t)d > end)
			d = (off_t)end;
		memset(p + (at - off), 0, (uint64_t)d - at);
		if ((uint64_t)d == end)
			break;
		if ((h = lseek(fd, d, SEEK_HOLE)) < 0 || (uint64_t)h > end)
			h = (off_t)end;
		if (pread_full(fd, p + ((uint64_t)d - off), (size_t)(h - d),
		    (uint64_t)d) != 0)
			return -1;
		at = (uint64_t)h;
	}
	return 0;
}

int
zero_range(int fd, uint64_t off, uint64_t len)
{
	static const uint8_t zeroes[65536];

	if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
	    (off_t)off, (off_t)len) == 0)
		return 0;
	while (len > 0) {
		size_t n = len > sizeof(zeroes) ? sizeof(zeroes) : len;

		if (pwrite_full(fd, zeroes, n, off) != 0)
			return -1;
		off += n;
		len -= n;
	}
	return 0;
}

int
open_direct(const char *path, int flags)
{
	int fd = open(path, flags | O_CLOEXEC | O_DIRECT, 0600);

	if (fd == -1 && errno == EINVAL)
		fd = open(path, flags | O_CLOEXEC, 0600);
	return fd;
}

int
fsync_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC), r;

	if (fd == -1)
		return -1;
	r = fsync(fd);
	close(fd);
	return r;
}
