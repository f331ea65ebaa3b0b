/*
 * dio.h: ordered image writes around the page cache, many in flight.
 *
 * Writes of whole 4 KiB blocks go through an O_DIRECT descriptor with
 * Linux native AIO, up to a queue depth at once; the file ends as if the
 * writes had been made one by one in the order given, because a write
 * that overlaps one still in flight waits for everything in flight first.
 * Contiguous writes queued one right after the other go as one vectored
 * write of up to 1 MiB.  Other writes (not block-aligned, or with data
 * too large to copy into an aligned buffer) are made through the buffered
 * descriptor, in order, after what is in flight.
 *
 * Why: small random writes into a page cache of large folios cost tens
 * of microseconds each in the kernel, and as much again to write back;
 * the same write around the cache costs a few.
 *
 * Each function returning int returns 0, or -1 with errno set (the first
 * failure of a write queued since the last dio_wait).
 */
#ifndef REPLICAD_DIO_H
#define REPLICAD_DIO_H

#include <stddef.h>
#include <stdint.h>

#define DIO_BLOCK	4096u

struct dio;

/* A writer with up to DEPTH writes in flight, of up to MAX_DIRECT bytes
 * each (larger ones go through the cache); NULL with errno set where the
 * kernel has no native AIO. */
struct dio *dio_open(unsigned depth, size_t max_direct);
/* Waits for what is in flight first (its errors are lost: call dio_wait
 * before to see them). */
void dio_close(struct dio *d);
/* Write LEN bytes of DATA at OFF.  DFD is the file opened O_DIRECT (or
 * -1), FD the same file opened through the page cache.  DATA must stay
 * valid and unchanged until dio_wait returns, unless it is not aligned
 * to DIO_BLOCK (it is then copied). */
int dio_pwrite(struct dio *d, int dfd, int fd, const void *data, size_t len,
    uint64_t off);
/* Wait for every write queued: they are then in the file (durable only
 * after an fdatasync, as any write).  On failure FD (if not NULL) is the
 * buffered descriptor of the write that failed first, or -1. */
int dio_wait(struct dio *d, int *fd);
struct dio_counts {
	uint64_t direct;	/* writes that went around the page cache */
	uint64_t buffered;	/* writes that went through it */
	uint64_t iocbs;		/* direct writes made (contiguous ones merged) */
};

void dio_counts(const struct dio *d, struct dio_counts *c);

/* Reads around the page cache, many at once (one AIO context, kept). */
struct dio_reader;

/* NULL with errno set where the kernel gives no AIO context. */
struct dio_reader *dio_reader_open(unsigned depth);
/* Nothing is in flight between calls to dio_read_all. */
void dio_reader_close(struct dio_reader *r);

/* A read for dio_read_all: LEN bytes at OFF of DFD (opened O_DIRECT)
 * into BUF; all three aligned to DIO_BLOCK. */
struct dio_read {
	int dfd;
	void *buf;
	size_t len;
	uint64_t off;
	int err;	/* out: 0, or the errno of this read (a short read is
			 * EIO; EINVAL, most often, an alignment the file
			 * system refuses) */
};

/* Make every read of R[0..N), up to the reader's depth at once, and
 * independent of one another: each says in its err how it went (one the
 * kernel refused to queue, too).  -1 only when out of memory (nothing
 * was read then); nothing is in flight on return. */
int dio_read_all(struct dio_reader *rdr, struct dio_read *r, size_t n);

#endif
