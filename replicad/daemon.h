/*
 * daemon.h: a map of the daemon.  Prototypes are grouped under the file
 * that defines them, in the order data flows: NBD write -> journal (vm.c)
 * -> shipper (ship.c) -> SSH link (link.c) -> wire -> receiver (recv.c)
 * -> recovery store.  control.c serves the CLI; main.c owns start-up.
 *
 * Threads: the main thread runs NBD, journal writes, points, trim, the
 * control socket and the DR receiver.  The shipper thread runs ship.c and
 * link.c on its own event base: journal reads, framing, compression and
 * SSH.  They share the journal (LMDB: one writer, concurrent readers) and
 * the disk images (the shipper only reads them), and talk through
 * messages: the main thread wakes a link when the journal grows
 * (link_wake); the shipper posts acks and copy milestones (post_main) and
 * publishes what status shows (struct ship_pub, under daemon.mu).
 * On the DR site, each replica's store applies received chunks on a
 * flusher thread of its own (recovery/apply.c), joined by the store's
 * next operation that touches the images.
 */
#ifndef REPLICAD_DAEMON_H
#define REPLICAD_DAEMON_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "config.h"
#include "frame.h"
#include "journal.h"
#include "store.h"

struct event;
struct event_base;
struct evbuffer;
struct bufferevent;
struct nbd_req;
struct link;
struct ctl_conn;

#define MAX_DISKS STORE_MAX_DISKS

/* ------------------------------------------------------------------ */
/* primary side */

struct pdisk {
	struct pvm *vm;
	uint32_t idx;
	int fd;
	int dfd;		/* the same, O_DIRECT (image writer), or -1 */
	uint64_t size;
	char *name;
	char *export;		/* "vm/disk" */
};

/* A write waiting for its journal transaction to commit. */
struct pop {
	uint32_t disk;
	uint64_t off;
	uint32_t len;
	uint8_t *data;		/* NULL: zero the range */
	uint64_t seq;		/* its last journal entry */
	struct nbd_req *req;	/* NULL for a flush-only waiter */
	int marked;		/* tracked by the dirty map, not journaled */
};

enum ship_phase {
	SHIP_DOWN = 0,		/* link not ready */
	SHIP_ANNOUNCED,		/* waiting for the DR site's VmState */
	SHIP_SYNCING,		/* initial copy */
	SHIP_STREAMING,		/* journal entries */
	SHIP_REFUSED,		/* the DR site refused this VM */
};

/* What the shipper thread shows the main thread (under daemon.mu). */
struct ship_pub {
	enum ship_phase phase;
	uint64_t sync_done, sync_total;
	uint64_t bytes_shipped;
	uint64_t catchup_done, catchup_total;
	char refused[256];
	char link[320];
};

/* Shipper -> main thread messages. */
enum smsg_type {
	SM_SYNC_START = 1,	/* a = base seq: the initial copy began */
	SM_SYNC_DONE,		/* the copy is sent: cut its point */
	SM_SYNCED,		/* the replica is in step with this journal */
	SM_ACK,			/* a = seq, b = point durable on the DR site */
	SM_CATCHUP_READY,	/* over quota, and the journal is all sent */
	SM_CATCHUP_SENT,	/* a = base: every chunk of that catch-up sent */
};

struct smsg {
	struct pvm *vm;
	enum smsg_type type;
	uint64_t a, b;
	struct smsg *next;
};

struct waiter {
	uint64_t point;
	uint64_t seq;		/* the point's marker */
	struct ctl_conn *conn;
};

struct pvm {
	struct daemon *d;
	const struct cfg_vm *cfg;
	struct journal *j;
	struct pdisk disks[MAX_DISKS];
	size_t ndisks;
	struct link *link;

	/* group commit */
	struct event *ev_commit;
	struct event *ev_jbusy;	/* the journal's log went idle */
	struct pop *ops;
	size_t nops, capops;
	uint64_t ops_bytes;	/* data the waiting ops carry */
	int kicked;		/* the batch's data went to the log thread */
	int need_sync;
	uint64_t written_seq;	/* entries up to here are in the images
				 * (the image writer or main writes; main and
				 * the shipper read: atomic) */
	/*
	 * The image writer (imgw.c): a thread that writes committed journal
	 * entries to the images while the main thread goes on with the next
	 * requests.  Main queues each commit's writes (handing over their
	 * data) and waits for the queue to drain before it reads or writes
	 * an image itself; main reads written_seq plainly only after such a
	 * wait.  iw_q .. iw_stop are under iw_mu; iw_started is main's.
	 * Once an image write fails, written_seq stays where it was (a
	 * restart replays the journal from there) and the VM's reads and
	 * writes fail.
	 */
	pthread_t iw_thread;
	int iw_started;
	struct dio *iw_dio;	/* the writer's, or NULL: buffered writes */
	int replay_failed;	/* vm_open: an entry could not be replayed */
	pthread_mutex_t iw_mu;
	pthread_cond_t iw_work, iw_idle;
	struct pop *iw_q;
	size_t iw_n, iw_cap;
	uint64_t iw_bytes;	/* data queued or being written */
	uint64_t iw_target;	/* committed seq the queue leads up to */
	int iw_busy, iw_stop;
	int iw_sync_want;	/* main asks the writer to sync the images */
	uint64_t synced_seq;	/* atomic: entries up to here are in the
				 * images durably (the writer's syncs) */
	int iw_pending;		/* atomic: queued or being written */
	int iw_failed;		/* atomic: an image write failed */
	/*
	 * Journal quota (vm.c).  Over journal_max, writes go to the image
	 * and the journal's dirty map instead of the journal (overflow).
	 * Once the journal is sent, a catch-up reserves one sequence number
	 * per chunk of the disks ([cu_base, cu_end]); the shipper sends the
	 * dirty chunks under those numbers, then the journal after them, and
	 * the point cut after the last chunk is consistent.  overflow,
	 * cu_base and cu_end are written by the main thread and read by the
	 * shipper (atomics).
	 */
	uint64_t quota;
	int overflow;
	uint64_t cu_base, cu_end;	/* change, with the journal commit
					 * that reserves them, under
					 * daemon.mu: see catchup_view() */
	int cu_wanted;		/* main: the shipper asked for a catch-up */
	int cu_sent;		/* main: every chunk of cu_base was sent */
	int img_unsynced;	/* main: image writes outside the journal
				 * (the dirty map's, placed writes) */
	uint64_t chunk_base[MAX_DISKS];	/* first global chunk of a disk */
	uint64_t nchunks;
	uint8_t *marked;	/* main: the map's durable bits, by global
				 * block (allocated on first use; NULL: no
				 * fast path): writes to marked blocks skip
				 * the journal transaction */
	struct pmark { uint32_t disk; uint64_t off, len; } *pend_marks;
	size_t npend_marks, cappend_marks;	/* committed, not synced */
	uint64_t cu_gen;	/* atomic: catch-ups started (main) */
	/*
	 * Placed writes (placed.c): large aligned writes whose journal
	 * entries name a 64 KiB piece of the image and whose data the image
	 * writer puts there only once.  pl maps each piece to its newest
	 * placed entry (main's); a write to a piece whose entry lies before
	 * a point copies the entry's data into the journal first.  pl_undo
	 * records the open batch's changes to pl.  pl_gen (under pl_mu)
	 * moves with each copy and with the commit that holds it: the
	 * shipper reads a placed entry's piece from the image under pl_mu,
	 * and only if pl_gen is what it was when its journal snapshot began.
	 */
	struct pl_map { struct pl_ent *t; size_t cap, n; } pl;
	struct pl_undo *pl_undo;
	size_t npl_undo, cappl_undo;
	uint64_t pl_epoch;	/* main: points cut (or found on open) */
	uint64_t *np_seq[MAX_DISKS];	/* main: newest journaled (not
					 * placed) entry per 1 MiB region */
	uint64_t applied_mark;	/* main: JM_APPLIED as committed */
	uint8_t *pl_buf;	/* main: a piece being copied */
	pthread_mutex_t pl_mu;
	int pl_mu_init;
	uint64_t pl_gen;	/* under pl_mu; the shipper loads it atomic */
	int pl_copied;		/* main: the open batch copied a piece */
	int iw_wake_ship;	/* atomic: the shipper waits for written_seq */
	/* the shipper's window of placed pieces (pl_ship_read) */
	uint8_t *ship_win;
	uint32_t win_disk, win_len;
	uint64_t win_off, win_ws;
	int paused;		/* atomic: `replica pause` (main writes) */
	uint64_t cu_requested;	/* shipper: cu_gen + 1 when it asked */
	uint64_t cu_posted;	/* shipper: cu_base whose end was posted */
	uint64_t cu_seen;	/* shipper: cu_base the counters are for */
	uint64_t cu_done, cu_total;	/* shipper: bytes */
	/* bandwidth cap (shipper): a token bucket of data bytes */
	int64_t bw_tokens;
	int64_t bw_ms;
	uint64_t data_sent;	/* data bytes put in frames */

	/* shipping: owned by the shipper thread */
	enum ship_phase phase;
	uint64_t send_seq;	/* next entry to send */
	uint64_t acked_seq;
	uint64_t acked_point;
	uint32_t sync_disk;
	uint64_t sync_off;
	uint64_t sync_base;
	uint64_t sync_done, sync_total;
	int64_t sync_started_ms;
	char refused[256];
	int64_t refused_ms;

	/* points */
	int64_t next_trim_ms;	/* trims wait until then (vm_tick) */
	int64_t next_point_ms;
	int point_deferred;	/* cut one when the initial copy ends */
	char deferred_label[JOURNAL_LABEL_MAX + 1];
	struct waiter *waiters;
	size_t nwaiters;
	int64_t last_point_ms;
	int64_t last_ack_ms;
	uint64_t bytes_shipped;
	struct frame_zstd zstd;
	struct ship_pub pub;	/* under daemon.mu */
};

/* vm.c */
int vm_open_all(struct daemon *d);
void vm_close_all(struct daemon *d);
struct pvm *vm_find(struct daemon *d, const char *name);
extern const struct nbd_backend vm_nbd_backend;
/* Shipper: the journal's last seq and the catch-up range, as one
 * consistent view (the reserving commit and the range go together). */
void catchup_view(struct pvm *vm, uint64_t *last, uint64_t *cb,
    uint64_t *ce);
/* Cut a point now; returns its id or 0 with err set. */
uint64_t vm_cut_point(struct pvm *vm, enum point_kind kind,
    const char *label, uint64_t *seq, char *err, size_t errlen);
void vm_tick(struct pvm *vm, int64_t now_ms);
void vm_acked(struct pvm *vm, uint64_t seq, uint64_t point);
json_t *vm_status_json(struct pvm *vm, int64_t now_ms);
json_t *vm_points_json(struct pvm *vm);
void vm_drop_waiters(struct daemon *d, struct ctl_conn *conn);
/* `replica pause` / `resume`: 0, or -1 with err set. */
int vm_set_paused(struct pvm *vm, int paused, char *err, size_t errlen);
/* A message from the shipper thread (main thread). */
void vm_on_ship_msg(struct pvm *vm, enum smsg_type type, uint64_t a,
    uint64_t b);

/* imgw.c: the image writer (main thread's side) */
int img_sync(struct pvm *vm);
int iw_start(struct pvm *vm);
void iw_stop(struct pvm *vm);
/* Hand a commit's writes OPS[0..N) to the writer; SEQ is the journal's
 * last committed seq. */
int iw_queue(struct pvm *vm, struct pop *ops, size_t n, uint64_t seq);
/* Until every queued write is in the images; did an image write fail? */
void iw_drain(struct pvm *vm);
int iw_broken(struct pvm *vm);
/* Main synced the images itself with the writer drained. */
void iw_synced(struct pvm *vm);
/* Before the links are freed (the image writer wakes them). */
void vm_unlink(struct pvm *vm);

/* placed.c (main thread, but for pl_ship_read) */
#define PL_PIECE	JOURNAL_MAX_ENTRY	/* a placed entry's range */
#define PL_MIN		(256u << 10)	/* writes this large are placed */
int pl_open(struct pvm *vm);
void pl_close(struct pvm *vm);
/* Before a write (or zeroing, or a write the dirty map tracks) of
 * [off, off+len) on DISK: copy the placed entries of earlier intervals it
 * overlaps into the journal's open transaction. */
int pl_before_write(struct pvm *vm, uint32_t disk, uint64_t off,
    uint64_t len);
/* Does [off, off+len) overlap a placed entry of an earlier interval? */
int pl_sealed_overlap(struct pvm *vm, uint32_t disk, uint64_t off,
    uint64_t len);
/* May this write be placed? */
int pl_can_place(struct pvm *vm, uint32_t disk, uint64_t off, uint64_t len);
void pl_placed(struct pvm *vm, uint32_t disk, uint64_t off, uint64_t seq);
void pl_journaled(struct pvm *vm, uint32_t disk, uint64_t off, uint64_t len,
    uint64_t seq);
void pl_point(struct pvm *vm);
void pl_committed(struct pvm *vm);
void pl_aborted(struct pvm *vm);
void pl_trimmed(struct pvm *vm, uint64_t upto);
/* Shipper: before a journal snapshot, the generation of copies. */
uint64_t pl_ship_begin(struct pvm *vm);
/* Shipper: a placed entry's data (*data: PL_PIECE bytes, valid until the
 * next call).  0 done; 1 a copy began since GEN was read: read the
 * journal again; 2 the image writer has not written it yet (the link is
 * woken when it has); -1 an error. */
int pl_ship_read(struct pvm *vm, const struct jentry *e, uint64_t gen,
    const uint8_t **data);

/* ship.c (shipper thread) */
void ship_link_ready(struct link *l);
void ship_link_changed(struct link *l);
void ship_tick(struct daemon *d);
void ship_link_down(struct link *l);
int ship_on_msg(struct link *l, Replication__Msg *m);
void ship_pump(struct link *l);
/* Announce a refused VM again (the cause may be gone: space freed...). */
void ship_retry(struct pvm *vm);

/* ------------------------------------------------------------------ */
/* link.c: the SSH transport to one peer */

struct link *link_new(struct daemon *d, const struct cfg_peer *peer);
void link_free(struct link *l);
struct daemon *link_daemon(struct link *l);
const struct cfg_peer *link_peer(struct link *l);
int link_is_ready(struct link *l);
const char *link_state(struct link *l);
/* Queue a message; returns 0 or -1 (the link is then reset). */
int link_send(struct link *l, const Replication__Msg *m,
    struct frame_zstd *z);
/* Queue a Writes frame built in place (taken over); as link_send. */
int link_send_writes(struct link *l, struct frame_writes *w,
    struct frame_zstd *z);
size_t link_queued(struct link *l);
/* Drop the connection with a reason and reconnect after a backoff. */
void link_reset(struct link *l, const char *why);
void link_kick(struct link *l);
/* From the main thread: the journal grew, ship it. */
void link_wake(struct link *l);
/* Shipper thread: pump again in MS milliseconds (a bandwidth cap). */
void link_pump_later(struct link *l, int ms);

/* ------------------------------------------------------------------ */
/* DR side */

struct rvm {
	char *peer;
	char *name;
	char *dir;
	struct store *store;
	struct retain_rule keep[CFG_MAX_KEEP];
	size_t nkeep;
	struct rconn *conn;	/* the connection streaming into it */
	int64_t last_recv_ms;
	int64_t last_point_ms;
	uint64_t unsynced;	/* bytes staged since the last ack */
	/* a point logged ahead of its apply (store_log_point) was
	 * acknowledged; apply_ev applies it on the loop's next turn, once
	 * the ack went out, while the stream waits */
	struct event *apply_ev;
	int apply_pending;
	int64_t apply_t0;
	struct rconn *paused;	/* the connection whose reading waits */
};

/* recv.c */
int recv_open_all(struct daemon *d);
void recv_close_all(struct daemon *d);
struct rvm *recv_find(struct daemon *d, const char *vm);
/* Take over a control connection as the replication stream of PEER. */
void recv_adopt(struct daemon *d, struct bufferevent *bev, const char *peer);
json_t *recv_status_json(struct rvm *r, int64_t now_ms);
json_t *recv_points_json(struct rvm *r);
json_t *recv_failover(struct rvm *r, const char *point, char *err,
    size_t errlen);
int recv_cancel(struct rvm *r, char *err, size_t errlen);
int recv_commit(struct rvm *r, char *err, size_t errlen);
void recv_tick(struct daemon *d, int64_t now_ms);

/* ------------------------------------------------------------------ */
/* control.c */

int control_open(struct daemon *d);
void control_close(struct daemon *d);
void control_reply(struct ctl_conn *c, json_t *reply);

/* wire.c: frames over evbuffers */
int wire_queue(struct evbuffer *out, const Replication__Msg *m,
    struct frame_zstd *z, char *err, size_t errlen);
/* Finish W and queue it (the buffer passes to OUT); 0, or -1 with err set
 * (W is then still the caller's to free). */
int wire_queue_writes(struct evbuffer *out, struct frame_writes *w,
    struct frame_zstd *z, char *err, size_t errlen);
/* Decode every whole frame in IN and pass it to fn (which must not free
 * it); returns 0, or -1 with err set on a bad frame or when fn fails.  fn
 * returning WIRE_PAUSE stops it after that frame (the rest stays in IN). */
#define WIRE_PAUSE 2
int wire_drain(struct evbuffer *in, int (*fn)(Replication__Msg *, void *),
    void *arg, char *err, size_t errlen);

/* main.c */
/* From the shipper thread: queue a message for the main thread. */
void post_main(struct daemon *d, struct pvm *vm, enum smsg_type type,
    uint64_t a, uint64_t b);

/* util.c */
int64_t now_ms(void);
void format_time(int64_t ms, char *buf, size_t len);	/* RFC 3339 UTC */
const char *point_kind_name(enum point_kind k);

/* ------------------------------------------------------------------ */

struct daemon {
	struct config cfg;
	struct event_base *base;
	struct nbd_server *nbd;
	struct pvm *vms;
	size_t nvms;
	struct link **links;
	size_t nlinks;
	struct rvm **rvms;
	size_t nrvms;
	struct rconn *rconns;	/* list of receiving connections */
	struct event *tick;
	struct event *sigs[3];

	/* the shipper thread */
	struct event_base *sbase;
	struct event *stick;
	pthread_t sthread;
	int sthread_up;
	pthread_mutex_t mu;	/* inbox, ship_pub */
	struct smsg *inbox;
	struct smsg **inbox_tail;
	struct event *ev_inbox;
	struct ctl_listener *ctl;
};

#endif
