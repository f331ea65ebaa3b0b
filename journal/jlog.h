/*
 * jlog.h: the journal's data log, internal to journal.c.
 *
 * Write data of journal entries goes to append-only segment files under
 * DIR/data, written around the page cache (O_DIRECT where the file system
 * has it); the LMDB log holds each entry's offset here.  Offsets only grow
 * and a slot is never written twice, so data once read stays valid.
 *
 * The writer puts data into a ring in memory at its offset (modulo
 * JLOG_RING) and writes what an open transaction staged before the
 * transaction commits (jlog_flush): a committed entry never points at
 * data that is not written.  Large writes go around the page cache, small
 * ones through it (a direct write waits for the device, and a group
 * commit of a few 4 KiB writes should not).  Sync (jlog_sync) makes the
 * written data durable; the journal calls it before it syncs LMDB.
 *
 * The writer's own thread (started on first use) writes each staged run
 * of JLOG_DIRECT bytes or more as soon as it is staged, in order, while
 * the caller takes the next requests; jlog_flush waits for it.  The ring
 * is not written over where a run still waits.  The thread touches the
 * files only while it has runs; the caller does everything else when it
 * is idle, and learns that it went idle from jlog_busy() and the eventfd
 * l->efd (readable each time it does).
 *
 * The reader (one thread) copies recent data from the ring, checking that
 * the writer did not come round over it meanwhile; older data it reads
 * from the files through a window of up to JLOG_WINDOW bytes, so the
 * entries of a shipping batch cost one read, with the next JLOG_AHEAD
 * windows read ahead (into the next segment too).
 */
#ifndef REPLICAD_JLOG_H
#define REPLICAD_JLOG_H

#include <aio.h>
#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define JLOG_SEG	(64ull << 20)	/* one segment file */
#define JLOG_RING	(32u << 20)	/* recent data in memory; divides SEG */
#define JLOG_SLOT	4096u		/* data is laid out in slots of this */
#define JLOG_STAGE	(8u << 20)	/* staged before a write */
#define JLOG_DIRECT	(1u << 20)	/* writes this large skip the cache */
#define JLOG_WINDOW	(4u << 20)	/* read at once */
#define JLOG_RUNS	64		/* runs the thread may have queued */
#define JLOG_AHEAD	4		/* windows read ahead at most */

struct jlog_run {
	uint64_t at;
	size_t len;
};

/* A window read ahead (POSIX AIO) into buf, from log offset at. */
struct jlog_pf {
	struct aiocb cb;
	uint8_t *buf;
	uint64_t at;
};

struct jlog {
	char dir[PATH_MAX];
	uint64_t head;		/* next free offset (the open txn's) */
	uint64_t committed;	/* head as of the last commit (any thread) */
	uint64_t low_seg;	/* no segment below this one exists */
	int wfd;		/* writer's segment, around the page cache */
	int wbfd;		/* the same, through it */
	uint64_t wseg;
	int dir_unsynced;	/* a segment was created since the last sync */
	uint8_t *ring;		/* offset x is at ring[x % JLOG_RING] */
	uint64_t ring_base;	/* nothing below it is in the ring */
	uint64_t high;		/* the writer may have written the ring up to
				 * here (any thread) */
	size_t st_len;		/* staged: [st_at, st_at + st_len) */
	uint64_t st_at;
	int rfd;		/* reader's segment */
	uint64_t rseg;
	int nfd;		/* the segment after it, read ahead into */
	uint8_t *win;		/* reader's window [win_at, win_at + win_len) */
	size_t win_len;
	uint64_t win_at;
	/* read-ahead: up to JLOG_AHEAD windows after the last one read
	 * from the files, in flight on rfd in order while the caller ships
	 * this one (a busy disk delays one read, not the shipping) */
	struct jlog_pf pf[JLOG_AHEAD];
	size_t pf_first, pf_n;	/* pf[pf_first] is the oldest */
	char err[PATH_MAX + 64];	/* the writer's errors */
	char rerr[PATH_MAX + 64];	/* the reader's */
	/* the writer's thread; under mu, but for what it alone touches */
	pthread_t thr;
	int thr_on;
	pthread_mutex_t mu;
	pthread_cond_t work;	/* a run was queued, or stop */
	pthread_cond_t done;	/* a run was written */
	struct jlog_run q[JLOG_RUNS];	/* q[q_first] is being written */
	size_t q_first, q_n;
	int stop;
	int failed;		/* a run failed: the rest are dropped */
	char terr[PATH_MAX + 64];	/* the thread's error */
	int efd;		/* eventfd: the thread went idle */
};

/* The space LEN bytes take in the log: whole slots. */
static inline uint64_t
jlog_space(uint32_t len)
{
	return ((uint64_t)len + JLOG_SLOT - 1) / JLOG_SLOT * JLOG_SLOT;
}

/* Open the log in DIR (created), its head at HEAD (from the journal's
 * meta table). */
int jlog_open(struct jlog *l, const char *dir, uint64_t head);
void jlog_close(struct jlog *l);
/* Does an entry of LEN bytes go to the log (else it stays in LMDB)? */
int jlog_takes(uint32_t len);
/* Stage LEN bytes; *at gets their offset.  May write earlier staged data. */
int jlog_append(struct jlog *l, const void *data, uint32_t len,
    uint64_t *at);
/* Write what is staged and wait until every run is written. */
int jlog_flush(struct jlog *l);
/* The thread has runs to write (the caller's flush would wait). */
int jlog_busy(struct jlog *l);
/* Hand what is staged to the thread now, whatever its size; 1 if there
 * was something, -1 on error. */
int jlog_kick(struct jlog *l);
/* The open transaction committed / was given up. */
void jlog_committed(struct jlog *l);
void jlog_rewind(struct jlog *l);
/* Make every written slot durable. */
int jlog_sync(struct jlog *l);
/* Reader: LEN bytes at AT, a committed entry's, below TOP (the head as of
 * the reader's snapshot); *p is valid until the next call.  Errors go to
 * l->rerr. */
int jlog_read(struct jlog *l, uint64_t at, uint32_t len, uint64_t top,
    const uint8_t **p);
/* Remove the segments that lie wholly below offset BELOW. */
void jlog_release(struct jlog *l, uint64_t below);

#endif
