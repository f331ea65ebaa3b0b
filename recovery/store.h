/*
 * store.h: the DR site's store for one VM: replica disk images, the stage
 * of received journal entries, and the recovery history as undo records.
 *
 * Layout under DIR (storage/<vm>/): <disk>.img for each disk, stage/ (an
 * LMDB journal holding what arrived but is not yet part of a point), and
 * store/ (LMDB: meta, points, undo, redo).
 *
 * Staged entries are applied in order, a chunk at a time: first the
 * before-image of every 4 KiB block the chunk touches is saved as an undo
 * record of the latest point (write-ahead, committed and synced), then the
 * image is written.  Chunks are applied as they arrive (ahead of the
 * point marker), and the rest when the marker arrives, then the images are
 * synced and the point recorded.  So the images hold the latest complete
 * point plus, possibly, writes of the interval under way, which that
 * point's undo records take back; failover plays them first.  A crash
 * anywhere in that is repaired on open by applying again from the latest
 * point: undo capture is first-touch, and applying the same entries in
 * order is idempotent.  An older point is materialised by playing undo
 * records back, newest interval first, in place; what that overwrites is
 * kept as redo records so that cancel restores the latest point.
 *
 * Pure library: paths and buffers in, results out; errors as -1 with
 * store_error().
 */
#ifndef REPLICAD_STORE_H
#define REPLICAD_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "journal.h"
#include "retention.h"

#define STORE_BLOCK 4096
#define STORE_MAX_DISKS 16
#define STORE_MAX_ENTRY (4u << 20)	/* largest journal entry accepted */

struct store;

enum store_state {
	STORE_NEW = 0,		/* no full copy yet */
	STORE_SYNCING = 1,	/* initial copy under way */
	STORE_NORMAL = 2,	/* replicating */
	STORE_FAILEDOVER = 3,	/* disks handed out at failover_point */
	STORE_COMMITTED = 4,	/* failover kept; replication ended */
};

struct store_disk {
	char name[64];
	uint64_t size;
};

struct store_point {
	uint64_t id;
	uint64_t seq;
	int64_t time_ms;
	enum point_kind kind;
	uint64_t bytes;
	char label[JOURNAL_LABEL_MAX + 1];
};

struct store_info {
	enum store_state state;
	uint64_t epoch;
	uint64_t applied_seq;	/* every entry <= this is held durably */
	uint64_t last_point;
	uint64_t failover_point;
	uint64_t sync_done, sync_total;	/* initial copy progress, bytes */
	uint32_t sync_disk;	/* the copy holds everything before */
	uint64_t sync_off;	/*   (sync_disk, sync_off) durably */
	uint64_t sync_base;	/* and is followed by entries after this */
	size_t ndisks;
	struct store_disk disks[STORE_MAX_DISKS];
};

/* Open or create the store in DIR; repairs an interrupted apply or
 * failover. */
struct store *store_open(const char *dir, char *err, size_t errlen);
void store_close(struct store *s);
const char *store_error(struct store *s);
int store_info(struct store *s, struct store_info *out);
const char *store_state_name(enum store_state st);
/* Path of disk I's image (valid until close). */
const char *store_disk_path(struct store *s, size_t i);

/*
 * Start (or restart) a full copy from a primary journal of EPOCH: creates
 * the images with the given sizes (truncating what was there, since its
 * history does not belong to this lineage) and forgets stage and history.
 */
int store_begin_sync(struct store *s, uint64_t epoch,
    const struct store_disk *disks, size_t ndisks);
/* Initial copy data: written to the images directly (no history yet). */
int store_sync_write(struct store *s, uint32_t disk, uint64_t off,
    uint32_t len, const void *data);
int store_sync_progress(struct store *s, uint64_t done, uint64_t total);
/* Where the copy stands once what was written is durable: everything
 * before (DISK, OFF), for a copy followed by entries after BASE. */
int store_sync_cursor(struct store *s, uint32_t disk, uint64_t off,
    uint64_t base);
/* The base of the copy under way (as last given to store_sync_cursor). */
uint64_t store_sync_base(struct store *s);
/* Make the copy so far durable, cursor included (resumable from there). */
int store_sync_checkpoint(struct store *s);
/* The copy is complete; journal entries after BASE_SEQ follow. */
int store_sync_done(struct store *s, uint64_t base_seq);

/* Stage received entries (writes, zeroes, point markers) in one
 * transaction.  Entries at or below what is held are skipped.  Checks
 * disk index and range against the disk sizes. */
int store_stage(struct store *s, const struct jentry *e, size_t n);
/* The primary has been told where to resume (the seq store_stage_sync
 * gives): entries are taken again after an error that dropped some. */
void store_resume(struct store *s);
/* Make staged entries durable; returns the highest staged seq. */
int store_stage_sync(struct store *s, uint64_t *seq);
/*
 * Start making what is held now durable without waiting: the entries held
 * in memory go to the flusher thread, which syncs the images once it has
 * applied them.  Returns 1 if started (store_sync_poll tells when it is
 * done), 0 if nothing is held in memory (store_stage_sync is the way
 * then), -1 on error.
 */
int store_sync_start(struct store *s);
/* Without waiting: 1 and *SEQ (as store_stage_sync gives it) if the
 * durable mark moved since the last store_stage_sync or store_sync_poll
 * and nothing staged after it waits for a sync, 0 if not, -1 on error. */
int store_sync_poll(struct store *s, uint64_t *seq);
/* 1 while the flusher thread applies a chunk (a store_stage_sync would
 * wait for it), else 0. */
int store_flushing(struct store *s);
/* Apply every staged complete point (unless failed over).  Returns the
 * number of points applied or -1. */
int store_apply(struct store *s);
/* Apply staged writes of the interval under way to the images once
 * enough has arrived, so that a point marker finds little left to do.
 * The images then hold the latest point plus those writes, and the undo
 * records of the latest point take them back (failover does). */
int store_apply_ahead(struct store *s);
/*
 * A point marker arrived while entries wait in memory (the chunk that
 * fills and those queued for the flusher): make the point durable by
 * logging them with the marker to the stage (one sequential write and a
 * sync), instead of applying them first; store_apply applies it, from
 * memory, later.  The flusher's chunk is waited for first, and what the
 * applied chunks put into the images is synced and its mark recorded,
 * since memory no longer holds it.  Returns 1 when the point was
 * logged (store_held_seq covers it), 0 when this way does not apply
 * (nothing in memory, something staged already, not replicating:
 * store_stage and store_apply then), -1 on error.
 */
int store_log_point(struct store *s, const struct jentry *marker);
/* Bytes of write data staged and not yet part of a point. */
uint64_t store_staged_bytes(struct store *s);
/* Highest seq durable (staged or applied). */
uint64_t store_held_seq(struct store *s);

/* History, oldest first. */
int store_points(struct store *s, int (*fn)(const struct store_point *,
    void *), void *arg);
int store_find_point(struct store *s, uint64_t id, struct store_point *out);

/* Fail over to point ID (0 = latest): the images then hold that point. */
int store_failover(struct store *s, uint64_t id);
/* Undo a failover: the images return to the latest point. */
int store_cancel(struct store *s);
/* Keep a failover: drop the other points and end replication. */
int store_commit(struct store *s);
/* Drop points the grid does not keep, merging their undo records. */
int store_retain(struct store *s, const struct retain_rule *rules,
    size_t nrules, int64_t now_ms, int *dropped);

#endif
