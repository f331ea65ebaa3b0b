/*
 * journal.h: the primary's write journal, one LMDB environment per VM.
 *
 * Every write to a VM's disks is appended with an increasing sequence
 * number; a recovery point is an entry too, so one sequence orders writes
 * across all disks and the points between them.  The primary image is the
 * journal applied: the daemon writes each committed entry to the image and
 * records how far it got (JM_APPLIED); after a crash, journal_read() from
 * there replays what the image may lack.  Entries are trimmed once the DR
 * site has acknowledged them and the image holds them durably.
 *
 * Writes are group-committed: journal_begin(), any number of appends,
 * journal_commit().  Commits are not fsynced; journal_sync() makes every
 * committed entry durable (NBD FLUSH and FUA).  Large write data is
 * written to the data log by a thread of the journal as soon as it is
 * appended; a commit waits for it.  A caller that would rather not wait
 * commits once journal_busy() is 0: journal_event_fd() turns readable
 * each time it drops to 0.
 *
 * Threads: one thread writes (begin/append/commit/trim/set); another may
 * read at the same time with journal_read(), journal_last_seq(),
 * journal_first_seq() and journal_get().  journal_read() uses a scratch
 * buffer of the journal, so only one thread at a time may call it.  The library is pure: no
 * event loop, no network; errors come back as -1 with a message in
 * journal_error().
 */
#ifndef REPLICAD_JOURNAL_H
#define REPLICAD_JOURNAL_H

#include <stddef.h>
#include <stdint.h>

struct journal;

enum jentry_type {
	JE_WRITE = 1,		/* data for a range */
	JE_ZERO = 2,		/* a range reads as zeroes (WRITE_ZEROES, TRIM) */
	JE_POINT = 3,		/* a recovery point: all entries before it */
	JE_PLACED = 4,		/* data for a range, kept in the image itself
				 * (journal_append_placed): read, it has no
				 * data */
};

enum point_kind { POINT_CRASH = 0, POINT_RESUMABLE = 1, POINT_APP = 2 };

#define JOURNAL_LABEL_MAX 200
#define JOURNAL_MAX_ENTRY (64u << 10)	/* writes are journaled in pieces of this */

struct jentry {
	uint64_t seq;
	enum jentry_type type;
	uint32_t disk;
	uint64_t offset;
	uint32_t length;
	const uint8_t *data;	/* JE_WRITE: length bytes; valid in callback */
	/* JE_POINT */
	uint64_t point_id;
	int64_t time_ms;
	enum point_kind kind;
	char label[JOURNAL_LABEL_MAX + 1];
};

/* Counters kept in the journal's meta table. */
#define JM_APPLIED	"applied"	/* highest seq written to the image */
#define JM_ACKED	"acked"		/* highest seq durable on the DR site */
#define JM_EPOCH	"epoch"		/* random id of this journal's lineage */
#define JM_SYNCED	"synced"	/* 1 once the DR site has a full copy */
#define JM_SYNC_BASE	"sync_base"	/* seq the running initial copy follows */
#define JM_LAST_POINT	"last_point"	/* id of the newest point cut */
#define JM_ACKED_POINT	"acked_point"	/* newest point durable on DR */
#define JM_SEQ_FLOOR	"seq_floor"	/* highest seq handed out (reserve) */
#define JM_OVERFLOW	"overflow"	/* 1: over quota, writes go to the map */
#define JM_CATCHUP_BASE	"catchup_base"	/* seq of chunk 0 of a catch-up */
#define JM_CATCHUP_END	"catchup_end"	/* last seq a catch-up reserved */
#define JM_PAUSED	"paused"	/* 1: `replica pause`: nothing ships */

/* Granularity of the dirty map: a block, so that a catch-up after random
 * small writes sends what changed, not whole extents around it. */
#define JOURNAL_CHUNK 4096u

/* Open or create the journal in directory DIR. */
struct journal *journal_open(const char *dir, char *err, size_t errlen);
void journal_close(struct journal *j);
const char *journal_error(struct journal *j);

int journal_begin(struct journal *j);
/* Append a write (data != NULL) or a zeroing (data == NULL); *seq gets
 * the entry's sequence. */
int journal_append(struct journal *j, uint32_t disk, uint64_t off,
    uint32_t len, const void *data, uint64_t *seq);
/*
 * Append a write whose data the caller puts into the image itself, after
 * the commit: the entry names the range, the image holds the data.  The
 * caller keeps the image's range as it is until the entry is trimmed, or
 * hands the data over first with journal_convert (copy-on-write).  Its
 * length counts in journal_bytes() as a write's does.
 */
int journal_append_placed(struct journal *j, uint32_t disk, uint64_t off,
    uint32_t len, uint64_t *seq);
/* In the open transaction: the placed entry SEQ (committed earlier, with
 * this disk, offset and length) gets DATA, as a write entry. */
int journal_convert(struct journal *j, uint64_t seq, uint32_t disk,
    uint64_t off, uint32_t len, const void *data);
/* Append a point; it gets the next point id. */
int journal_append_point(struct journal *j, enum point_kind kind,
    const char *label, int64_t time_ms, uint64_t *id, uint64_t *seq);
/* Insert an entry as it is (the DR site's stage keeps the primary's
 * sequence numbers and point ids); seqs must increase. */
int journal_put(struct journal *j, const struct jentry *e);
int journal_set(struct journal *j, const char *key, uint64_t v);
int journal_commit(struct journal *j);
void journal_abort(struct journal *j);
int journal_sync(struct journal *j);
/* Appended data is still being written: a commit now would wait. */
int journal_busy(struct journal *j);
/* Start writing the data appended so far (the log thread's); 1 if there
 * was any, 0 if not, -1 on error (the commit reports it). */
int journal_kick(struct journal *j);
/* Readable (an eventfd: read it to rearm) each time journal_busy()
 * drops to 0. */
int journal_event_fd(struct journal *j);

/* A committed counter (0 when unset). */
uint64_t journal_get(struct journal *j, const char *key);
/* Highest sequence appended (committed), 0 for none. */
uint64_t journal_last_seq(struct journal *j);
/* Lowest sequence still held, 0 for none. */
uint64_t journal_first_seq(struct journal *j);
/* Bytes of write data held (committed; any thread). */
uint64_t journal_bytes(struct journal *j);
/* Bytes of write data appended in the open transaction. */
uint64_t journal_pending_bytes(struct journal *j);
/* In the open transaction: hand out N sequence numbers without entries
 * (a catch-up's chunks); *first gets the first of them. */
int journal_reserve(struct journal *j, uint64_t n, uint64_t *first);

/*
 * The dirty map: which JOURNAL_CHUNK-sized chunks of which disks changed
 * while the journal was over its quota.  Marks and clears go in the open
 * transaction (so a mark is durable with the writes it covers);
 * journal_next_dirty() and journal_dirty_chunks() may run on any thread.
 */
int journal_mark_dirty(struct journal *j, uint32_t disk, uint64_t off,
    uint64_t len);
/* The first dirty chunk at or after (*disk, *chunk): 1 found (and set),
 * 0 none, -1 error. */
int journal_next_dirty(struct journal *j, uint32_t *disk, uint64_t *chunk);
/* The same, and *run gets how many chunks from there are dirty in a row
 * (at most max; a run may go on in a later call). */
int journal_dirty_run(struct journal *j, uint32_t *disk, uint64_t *chunk,
    uint32_t *run, uint32_t max);
uint64_t journal_dirty_chunks(struct journal *j);
/* Call fn for every committed dirty chunk, in order. */
int journal_dirty_each(struct journal *j,
    void (*fn)(uint32_t disk, uint64_t chunk, void *arg), void *arg);
int journal_clear_dirty(struct journal *j);

/*
 * Call fn for each committed entry with seq >= from, in order, until fn
 * returns non-zero, or until max_bytes of write data were passed (at least
 * one entry is).  Returns the number of entries passed, or -1.
 */
typedef int (*journal_fn)(const struct jentry *e, void *arg);
int journal_read(struct journal *j, uint64_t from, size_t max_bytes,
    journal_fn fn, void *arg);

/* Call fn for each committed entry with seq >= from, in order, without
 * its data (e->data is NULL): for indexes rebuilt on open. */
int journal_scan(struct journal *j, uint64_t from, journal_fn fn, void *arg);

/* Find point ID; returns 1 found, 0 not, -1 error. */
int journal_find_point(struct journal *j, uint64_t id, struct jentry *out);

/* Call fn for every point in the history (oldest first; data is NULL and
 * length holds the point's write bytes). */
int journal_points(struct journal *j, journal_fn fn, void *arg);
/* Drop point history rows older than id KEEP_FROM. */
int journal_forget_points(struct journal *j, uint64_t keep_from);

/* Delete every entry and start sequences afresh (a new lineage). */
int journal_reset(struct journal *j);

/* Delete every entry with seq <= upto.  Returns entries deleted or -1. */
int64_t journal_trim(struct journal *j, uint64_t upto);

#endif
