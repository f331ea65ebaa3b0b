/*
 * store_int.h: what the parts of the DR store share.  store.c keeps the
 * store itself (meta, images, block and point records, the initial copy,
 * repair on open); apply.c receives and applies entries; history.c walks
 * the history (failover, cancel, commit, retention); undolog.c keeps the
 * data of undo records outside LMDB.  Not for use outside recovery/.
 */
#ifndef REPLICAD_STORE_INT_H
#define REPLICAD_STORE_INT_H

#include <pthread.h>
#include <stdarg.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "store.h"
#include "dio.h"
#include "kv.h"

#define STORE_MAP	(1ull << 42)	/* address space only */
#define CHUNK_BYTES	(16u << 20)	/* data handled per transaction */
#define MEM_CHUNKS	8		/* held in memory: one filling, the
					 * rest applied in order */
#define MEM_KEPT	2		/* chunks that keep their memory */
#define PV_HDR		34		/* point value header */
#define RUN_BLOCKS	256		/* before-images read with one pread */
#define CAPTURE_THREADS	16		/* before-image reads at once */
#define CAPTURE_DEPTH	64		/*   around the page cache (AIO) */
#define AHEAD_BYTES	(8u << 20)	/* staged data that is applied ahead */
#define DIO_DEPTH	32		/* image writes in flight at once */
#define DIO_MAX		(64u << 10)	/* larger writes through the cache */
#define SYNC_STAGE	(8u << 20)	/* initial copy data written at once */

/* Block record keys: PREFIX then disk(4) block(8) flag(1) inline data;
 * with BR_ZERO or BR_REF the flag is followed by the length (4), and a
 * BR_REF record's value is the offset of its data in the undo log. */
#define BR_ZERO 1
#define BR_REF	2

/* A read from the undo log: LEN bytes at OFF into BUF. */
struct ul_rd {
	uint64_t off;
	uint8_t *buf;
	size_t len;
};

struct memchunk {
	struct jentry *e;
	size_t n, cap;
	size_t used;		/* bytes of buf in use */
	uint8_t *buf;		/* CHUNK_BYTES of entry data */
	int sync;		/* the flusher syncs the images after it */
};

struct store {
	char *dir;
	MDB_env *env;
	MDB_dbi meta, points, undo, redo;
	struct journal *stage;
	int fds[STORE_MAX_DISKS];
	int dfds[STORE_MAX_DISKS];	/* the same, O_DIRECT (image writes,
					 * before-image reads), or -1 */
	char *paths[STORE_MAX_DISKS];
	struct dio_reader *rdio;	/* before-image reads (read_runs) */
	int rdio_none;		/*   the kernel gave it no AIO context */
	struct dio *dio;	/* applies entries around the page cache,
				 * or NULL: through it (dio.h) */
	uint8_t *sbuf;		/* SYNC_STAGE: the initial copy's data */
	size_t sbuf_used;	/*   queued, not yet waited for */
	struct store_info info;
	uint64_t rolling;	/* a failover playback is under way */
	uint64_t img_seq;	/* entries up to this are in the images */
	uint64_t img_dur;	/*   and up to this durably (meta "img") */
	uint64_t ahead_bytes;	/* of them, bytes after the latest point */
	uint64_t ahead_dur;	/*   of which durable (meta "img_bytes") */
	uint64_t stage_pending;	/* bytes staged and not applied ahead */
	int logged;		/* a point was logged ahead of its apply
				 * (store_log_point): applied before
				 * anything else is staged or failed over */
	int gap;		/* entries after img_seq were dropped by an
				 * error: refuse entries until store_resume */
	/* entries that arrived while nothing was staged, held in memory
	 * until they are applied (they are not acknowledged before): one
	 * chunk filling while the flusher thread applies the others, one
	 * at a time, in order */
	struct memchunk mc[MEM_CHUNKS];
	int mcur;		/* the chunk being filled */
	int mq[MEM_CHUNKS];	/* full chunks waiting for the flusher, */
	size_t mq_n;		/*   next first */
	struct memchunk *fl_m;	/* the chunk being applied, or NULL */
	pthread_t fl_th;
	int fl_joinable, fl_rc;
	int fl_sync;		/* the flusher syncs the images after it */
	int fl_lost;		/* that sync failed */
	int fl_done;		/* the flusher is done (atomic) */
	int dur_news;		/* img_dur moved since the last ack's look */
	char fl_err[512];	/* the flusher's error */
	uint32_t cur_disk;	/* initial copy cursor, not yet durable */
	uint64_t cur_off, cur_base;
	uint8_t *buf;		/* CHUNK_BYTES + a block */
	/* the undo log (undolog.c): segment files under ul_dir */
	char *ul_dir;
	uint64_t ul_head;	/* next free slot (meta "uhead") */
	int ul_wfd;		/* the segment open to append */
	uint64_t ul_wseg;
	uint64_t *ul_freed;	/* slots freed by the open transaction */
	size_t ul_nfreed;
	char err[512];
};

/* Bytes of the block at OFF of DISK: short only at the end. */
static inline size_t
blk_len(const struct store *s, uint32_t disk, uint64_t off)
{
	uint64_t size = s->info.disks[disk].size;

	return size - off < STORE_BLOCK ? (size_t)(size - off) : STORE_BLOCK;
}

/* store.c */
extern __thread int in_flusher;	/* sfail writes fl_err (apply.c) */
/* FN(ARG, i) for every i below N, by this thread and up to MAXTH others
 * (about one per 4 items, at most PAR_MAX). */
#define PAR_MAX	16
void par_for(size_t n, size_t maxth, void (*fn)(void *, size_t), void *arg);
int check_range(struct store *s, uint32_t disk, uint64_t off, uint64_t len);
int zero_disk(struct store *s, uint32_t disk, uint64_t off, uint64_t len);
int br_exists_at(MDB_cursor *c, const uint8_t *pre, size_t plen,
    uint32_t disk, uint64_t blk);
int sfail(struct store *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int save_info(struct store *s, MDB_txn *txn);
int commit_info(struct store *s);
int sync_disks(struct store *s);
/* Start writing the images' dirty pages back, without waiting. */
void start_writeback(struct store *s);
int pwrite_all(struct store *s, uint32_t disk, uint64_t off,
    const void *data, size_t len);
/* Queue a write of an entry's data: around the page cache when it can,
 * in order with the others queued; pwrite_wait waits for them all. */
int pwrite_queue(struct store *s, uint32_t disk, uint64_t off,
    const void *data, size_t len);
int pwrite_wait(struct store *s);
size_t br_prefix(uint8_t *key, const uint8_t *pre, size_t plen,
    uint32_t disk, uint64_t blk);
int br_exists(MDB_txn *txn, MDB_dbi dbi, const uint8_t *pre, size_t plen,
    uint32_t disk, uint64_t blk);
int block_is_zero(const uint8_t *p, size_t len);
int br_put(MDB_txn *txn, MDB_dbi dbi, const uint8_t *pre, size_t plen,
    uint32_t disk, uint64_t blk, const uint8_t *data, size_t len);
int br_put_ref(MDB_txn *txn, MDB_dbi dbi, const uint8_t *pre, size_t plen,
    uint32_t disk, uint64_t blk, uint64_t off, size_t len);
/* 0, or -1 for a malformed record.  A record whose data is in the undo
 * log fills DEFER (where the data is, and BUF, where it goes) and
 * returns 1; ul_read_many reads them together.  Without DEFER such a
 * record is malformed (redo records hold their data). */
int br_decode(const MDB_val *k, const MDB_val *d, size_t plen,
    uint32_t *disk, uint64_t *blk, uint8_t *buf, size_t *len,
    struct ul_rd *defer);
int pt_put(MDB_txn *txn, MDB_dbi dbi, const struct store_point *p,
    int merging);
int pt_load(struct store *s, struct store_point **out, uint8_t **merging,
    size_t *n);

/* apply.c */
struct cblk {
	uint32_t disk;
	uint64_t blk;
};
/* Read blocks BL[0..NB) (sorted by disk and block, distinct) into BUF,
 * a 4 KiB slot each, by several threads. */
int read_blocks(struct store *s, const struct cblk *bl, size_t nb,
    uint8_t *buf);
int mem_wait(struct store *s);
void mem_drop(struct store *s);
void mem_stop(struct store *s);
/* Apply or drop what memory holds, whatever the gap: for failover. */
void store_settle(struct store *s);

/* undolog.c: before-image data outside LMDB.  Functions returning int
 * return 0, or -1 with s->err set, or (those taking a txn) an mdb or
 * errno code. */
int ul_open(struct store *s);
void ul_close(struct store *s);
/* Append N 4 KiB blocks at the head, synced; *FIRST is the first's
 * offset, the rest follow.  The head is then recorded by ul_put_head in
 * the transaction that refers to them. */
int ul_append(struct store *s, struct iovec *iov, size_t n,
    uint64_t *first);
int ul_put_head(struct store *s, MDB_txn *txn);
/* Many reads at once (sorted here, in parallel). */
int ul_read_many(struct store *s, struct ul_rd *v, size_t n);
/* A record's slot is freed by the open transaction: ul_put_freed before
 * its commit, ul_punch_freed after it (ul_forget_freed if it aborts). */
int ul_free(struct store *s, uint64_t off);
int ul_put_freed(struct store *s, MDB_txn *txn);
void ul_punch_freed(struct store *s);
void ul_forget_freed(struct store *s);
/* Every undo record is dropped in TXN: the head is recorded as 0; once
 * the commit is durable, ul_remove_all removes the segments and moves
 * the head in memory. */
int ul_reset(struct store *s, MDB_txn *txn);
void ul_remove_all(struct store *s);

/* history.c */
int restore_redo(struct store *s);
int finish_merges(struct store *s);

#endif
