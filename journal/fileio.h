/*
 * fileio.h: whole-range reads and writes of disk images, direct opens and
 * directory syncs, shared by the primary (images behind the NBD export,
 * the journal's data log) and the DR store (replicas, the undo log).
 * Each returns 0, or -1 with errno set.
 */
#ifndef REPLICAD_FILEIO_H
#define REPLICAD_FILEIO_H

#include <stddef.h>
#include <stdint.h>

/* Write all LEN bytes at OFF, retrying short writes and EINTR. */
int pwrite_full(int fd, const void *buf, size_t len, uint64_t off);
/* Read LEN bytes at OFF; what lies past the end of the file reads as
 * zeroes. */
int pread_full(int fd, void *buf, size_t len, uint64_t off);
/* Read LEN bytes at OFF; the end of the file before them is EIO. */
int pread_exact(int fd, void *buf, size_t len, uint64_t off);
/* Read like pread_full, but what the file system reports as holes
 * (SEEK_DATA, SEEK_HOLE) is zero-filled, not read: no page cache is
 * filled with zeroes for them.  The caller's file offset moves. */
int pread_data(int fd, void *buf, size_t len, uint64_t off);
/* Make a range read as zeroes: punch a hole, or write zeroes where the
 * file system cannot. */
int zero_range(int fd, uint64_t off, uint64_t len);
/* Open PATH (FLAGS; mode 0600 when created) around the page cache, or
 * through it where the file system has no O_DIRECT. */
int open_direct(const char *path, int flags);
/* fsync a directory: the names in it are durable. */
int fsync_dir(const char *path);

#endif
