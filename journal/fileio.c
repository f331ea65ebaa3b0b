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
