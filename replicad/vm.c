/*
 * vm.c: the primary side of a protected VM.  Its disks are served over NBD
 * (vm_nbd_backend); every write is appended to the VM's journal and
 * acknowledged once committed, group-committed per event-loop turn; the
 * image writer thread (imgw.c) then writes it to the image, and reads wait
 * for it.
 * Points are cut on the VM's interval or on demand.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#include "daemon.h"
#include "dio.h"
#include "fileio.h"
#include "log.h"
#include "nbd.h"

static void vm_commit(struct pvm *vm);
static int enter_overflow(struct pvm *vm);

/* Write journal entries after the image's mark into the images. */
static int
replay_one(const struct jentry *e, void *arg)
{
	struct pvm *vm = arg;
	struct pdisk *pd;

	if (e->type == JE_POINT || e->type == JE_PLACED)
		return 0;	/* placed: the data is in the image */
	if (e->disk >= vm->ndisks) {
		log_warnx("%s: %s: entry %llu names disk %u", __func__,
		    vm->cfg->name, (unsigned long long)e->seq, e->disk);
		return 0;
	}
	pd = &vm->disks[e->disk];
	if (e->type == JE_WRITE ? pwrite_full(pd->fd, e->data, e->length,
	    e->offset) : zero_range(pd->fd, e->offset, e->length)) {
		/* acknowledged writes: the VM does not start without them */
		log_warn("vm %s: replaying entry %llu into %s", vm->cfg->name,
		    (unsigned long long)e->seq, pd->export);
		vm->replay_failed = 1;
		return 1;
	}
	return 0;
}

static int
open_disk(struct pvm *vm, size_t i)
{
	struct pdisk *pd = &vm->disks[i];
	const struct cfg_disk *cd = &vm->cfg->disks[i];
	struct stat st;

	pd->vm = vm;
	pd->idx = (uint32_t)i;
	pd->name = cd->name;
	if (asprintf(&pd->export, "%s/%s", vm->cfg->name, cd->name) < 0) {
		pd->export = NULL;
		log_warnx("%s: out of memory", __func__);
		return -1;
	}
	if ((pd->fd = open(cd->path, O_RDWR | O_CLOEXEC)) == -1) {
		log_warn("%s: vm %s: disk %s", __func__, vm->cfg->name,
		    cd->path);
		return -1;
	}
	if (fstat(pd->fd, &st) == -1) {
		log_warn("%s: %s", __func__, cd->path);
		return -1;
	}
	if (S_ISBLK(st.st_mode)) {
		if (ioctl(pd->fd, BLKGETSIZE64, &pd->size) == -1) {
			log_warn("%s: %s: size", __func__, cd->path);
			return -1;
		}
	} else
		pd->size = (uint64_t)st.st_size;
	/* the image writer's: where there is no O_DIRECT, the cache */
	pd->dfd = open(cd->path, O_WRONLY | O_CLOEXEC | O_DIRECT);
	return 0;
}

/* ------------------------------------------------------------------ */
/* life cycle */

/*
 * A batch commits after one more poll of the sockets, and waits while the
 * journal's log thread still writes data it appended (the journal's event
 * fires when that is done) rather than make the loop wait for the device:
 * meanwhile the loop takes the next requests into the batch.  A FLUSH or
 * FUA, or COMMIT_WAIT_MAX bytes waiting, commits at once.
 */
#define COMMIT_WAIT_MAX	(16u << 20)

static void
commit_soon(struct pvm *vm)
{
	if (vm->nops == 0 || (!vm->need_sync &&
	    vm->ops_bytes < COMMIT_WAIT_MAX && journal_busy(vm->j)))
		return;
	/* a batch of several: its data goes to the log thread, and the
	 * requests that arrive meanwhile join it (a lone request commits
	 * at once: the hand-over would only add to its latency) */
	if (!vm->need_sync && !vm->kicked && vm->nops >= 2 &&
	    journal_kick(vm->j) > 0) {
		vm->kicked = 1;
		return;
	}
	vm_commit(vm);
}

static void
commit_cb(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	commit_soon(arg);
}

static void
jbusy_cb(evutil_socket_t fd, short ev, void *arg)
{
	uint64_t n;

	(void)ev;
	if (read(fd, &n, sizeof(n)) < 0) {
		/* EAGAIN: a commit read it already */
	}
	commit_soon(arg);
}

/* Bigger maps go without the fast path (32 MiB of bits is 1 TiB). */
#define MARKED_MAX	(256u << 20)

static void
set_marks(struct pvm *vm, uint32_t disk, uint64_t off, uint64_t len)
{
	uint64_t c, last;

	if (len == 0 || disk >= vm->ndisks)
		return;
	if (vm->marked == NULL && ((vm->nchunks + 7) / 8 > MARKED_MAX ||
	    (vm->marked = calloc((size_t)(vm->nchunks + 7) / 8, 1)) == NULL))
		return;
	last = vm->chunk_base[disk] + (off + len - 1) / JOURNAL_CHUNK;
	for (c = vm->chunk_base[disk] + off / JOURNAL_CHUNK; c <= last &&
	    c < vm->nchunks; c++)
		vm->marked[c / 8] |= (uint8_t)(1u << (c % 8));
}

/* Every chunk of the range is in the committed dirty map. */
static int
all_marked(struct pvm *vm, uint32_t disk, uint64_t off, uint64_t len)
{
	uint64_t c, last;

	if (len == 0 || vm->marked == NULL)
		return 0;
	last = vm->chunk_base[disk] + (off + len - 1) / JOURNAL_CHUNK;
	for (c = vm->chunk_base[disk] + off / JOURNAL_CHUNK; c <= last; c++)
		if (c >= vm->nchunks ||
		    !(vm->marked[c / 8] & (1u << (c % 8))))
			return 0;
	return 1;
}

static void
load_mark(uint32_t disk, uint64_t chunk, void *arg)
{
	struct pvm *vm = arg;

	set_marks(vm, disk, chunk * JOURNAL_CHUNK, 1);
}

/* Marks committed in the last transactions: the fast path may trust
 * them only once they are synced (a power loss takes unsynced ones). */
static int
pend_marks(struct pvm *vm, uint32_t disk, uint64_t off, uint64_t len)
{
	if (vm->npend_marks == vm->cappend_marks) {
		size_t nc = vm->cappend_marks ? vm->cappend_marks * 2 : 256;
		struct pmark *n = realloc(vm->pend_marks, nc * sizeof(*n));

		if (n == NULL)
			return -1;	/* the fast path just misses them */
		vm->pend_marks = n;
		vm->cappend_marks = nc;
	}
	vm->pend_marks[vm->npend_marks++] = (struct pmark){ disk, off, len };
	return 0;
}

/* journal_sync(), and the marks it made durable become trusted. */
static int
vm_journal_sync(struct pvm *vm)
{
	if (journal_sync(vm->j) != 0)
		return -1;
	for (size_t i = 0; i < vm->npend_marks; i++)
		set_marks(vm, vm->pend_marks[i].disk, vm->pend_marks[i].off,
		    vm->pend_marks[i].len);
	vm->npend_marks = 0;
	return 0;
}

static int
vm_open(struct daemon *d, struct pvm *vm, const struct cfg_vm *cfg)
{
	char dir[4096], err[512];
	uint64_t applied;

	vm->d = d;
	vm->cfg = cfg;
	for (size_t i = 0; i < MAX_DISKS; i++)
		vm->disks[i].fd = vm->disks[i].dfd = -1;
	if (cfg->ndisks > MAX_DISKS) {
		log_warnx("%s: vm %s has %zu disks; at most %d", __func__,
		    cfg->name, cfg->ndisks, MAX_DISKS);
		return -1;
	}
	snprintf(dir, sizeof(dir), "%s/%s", d->cfg.state_dir, cfg->name);
	if (mkdir(dir, 0700) == -1 && errno != EEXIST) {
		log_warn("%s: mkdir %s", __func__, dir);
		return -1;
	}
	snprintf(dir, sizeof(dir), "%s/%s/journal", d->cfg.state_dir,
	    cfg->name);
	if ((vm->j = journal_open(dir, err, sizeof(err))) == NULL) {
		log_warnx("%s: vm %s: %s", __func__, cfg->name, err);
		return -1;
	}
	for (size_t i = 0; i < cfg->ndisks; i++) {
		if (open_disk(vm, i) != 0)
			return -1;
		vm->ndisks++;
	}
	/* The image is the journal applied: finish what a crash cut. */
	applied = journal_get(vm->j, JM_APPLIED);
	if (journal_last_seq(vm->j) > applied) {
		log_info("vm %s: replaying journal after %llu up to %llu",
		    cfg->name, (unsigned long long)applied,
		    (unsigned long long)journal_last_seq(vm->j));
		if (journal_read(vm->j, applied + 1, SIZE_MAX, replay_one,
		    vm) < 0) {
			log_warnx("%s: vm %s: %s", __func__, cfg->name,
			    journal_error(vm->j));
			return -1;
		}
		if (vm->replay_failed)
			return -1;
		if (img_sync(vm) != 0)
			return -1;
	}
	vm->written_seq = vm->synced_seq = journal_last_seq(vm->j);
	if (journal_begin(vm->j) != 0 ||
	    journal_set(vm->j, JM_APPLIED, vm->written_seq) != 0 ||
	    journal_commit(vm->j) != 0 || journal_sync(vm->j) != 0) {
		log_warnx("%s: vm %s: %s", __func__, cfg->name,
		    journal_error(vm->j));
		return -1;
	}
	if (pl_open(vm) != 0) {
		log_warnx("%s: vm %s: cannot set up placed writes", __func__,
		    cfg->name);
		return -1;
	}
	for (size_t i = 0; i < vm->ndisks; i++) {
		vm->chunk_base[i] = vm->nchunks;
		vm->nchunks += (vm->disks[i].size + JOURNAL_CHUNK - 1) /
		    JOURNAL_CHUNK;
	}
	if (cfg->journal_max)
		vm->quota = cfg->journal_max;
	else {
		for (size_t i = 0; i < vm->ndisks; i++)
			vm->quota += vm->disks[i].size;
		vm->quota = vm->quota / 100 * cfg->journal_max_pct;
	}
	if (vm->quota < 2 * JOURNAL_CHUNK)
		vm->quota = 2 * JOURNAL_CHUNK;
	if (journal_dirty_chunks(vm->j) &&
	    journal_dirty_each(vm->j, load_mark, vm) != 0) {
		log_warnx("%s: vm %s: dirty map: %s", __func__, cfg->name,
		    journal_error(vm->j));
		return -1;
	}
	vm->overflow = journal_get(vm->j, JM_OVERFLOW) != 0;
	vm->paused = journal_get(vm->j, JM_PAUSED) != 0;
	if (vm->paused)
		log_warnx("vm %s: replication is paused (replica resume %s)",
		    cfg->name, cfg->name);
	vm->cu_base = journal_get(vm->j, JM_CATCHUP_BASE);
	vm->cu_end = journal_get(vm->j, JM_CATCHUP_END);
	if (vm->overflow || vm->cu_base)
		log_warnx("vm %s: %llu KiB of the disks changed outside the "
		    "journal wait for %s", cfg->name, (unsigned long long)
		    (journal_dirty_chunks(vm->j) * JOURNAL_CHUNK >> 10),
		    vm->overflow ? "a catch-up" : "the catch-up to finish");
	vm->acked_seq = journal_get(vm->j, JM_ACKED);
	vm->acked_point = journal_get(vm->j, JM_ACKED_POINT);
	vm->next_point_ms = now_ms() + (int64_t)cfg->interval_ms;
	vm->ev_commit = event_new(d->base, -1, 0, commit_cb, vm);
	vm->ev_jbusy = event_new(d->base, journal_event_fd(vm->j),
	    EV_READ | EV_PERSIST, jbusy_cb, vm);
	if (vm->ev_commit == NULL || vm->ev_jbusy == NULL ||
	    event_add(vm->ev_jbusy, NULL) != 0 || iw_start(vm) != 0)
		return -1;
	for (size_t i = 0; i < d->nlinks; i++)
		if (strcmp(link_peer(d->links[i])->name,
		    cfg->replicate_to) == 0)
			vm->link = d->links[i];
	log_info("vm %s: %zu disk(s), journal at %llu, replicating to %s",
	    cfg->name, vm->ndisks, (unsigned long long)vm->written_seq,
	    cfg->replicate_to);
	return 0;
}

static void
vm_close(struct pvm *vm)
{
	int synced = 1;

	if (vm->j && vm->nops)
		vm_commit(vm);
	iw_stop(vm);
	if (vm->ev_commit)
		event_free(vm->ev_commit);
	if (vm->ev_jbusy)
		event_free(vm->ev_jbusy);
	for (size_t i = 0; i < MAX_DISKS; i++) {
		if (vm->disks[i].fd >= 0) {
			if (fdatasync(vm->disks[i].fd) == -1)
				synced = 0;
			close(vm->disks[i].fd);
		}
		if (vm->disks[i].dfd >= 0)
			close(vm->disks[i].dfd);
		free(vm->disks[i].export);
	}
	if (vm->j) {
		/* after a failed image write or sync the applied mark stays
		 * where it was: the next start replays from there */
		if (synced && !iw_broken(vm) && vm->written_seq &&
		    journal_begin(vm->j) == 0 &&
		    journal_set(vm->j, JM_APPLIED, vm->written_seq) == 0)
			journal_commit(vm->j);
		journal_close(vm->j);
	}
	pl_close(vm);
	free(vm->ops);
	free(vm->waiters);
	free(vm->marked);
	free(vm->pend_marks);
}

int
vm_open_all(struct daemon *d)
{
	size_t n = 0;

	for (size_t i = 0; i < d->cfg.nvms; i++)
		if (d->cfg.vms[i].ndisks)
			n++;
	if (n == 0)
		return 0;
	if ((d->vms = calloc(n, sizeof(*d->vms))) == NULL)
		return -1;
	for (size_t i = 0; i < d->cfg.nvms; i++) {
		if (d->cfg.vms[i].ndisks == 0)
			continue;
		if (vm_open(d, &d->vms[d->nvms], &d->cfg.vms[i]) != 0) {
			d->nvms++;
			return -1;
		}
		d->nvms++;
	}
	return 0;
}

void
vm_close_all(struct daemon *d)
{
	for (size_t i = 0; i < d->nvms; i++)
		vm_close(&d->vms[i]);
	free(d->vms);
	d->vms = NULL;
	d->nvms = 0;
}

struct pvm *
vm_find(struct daemon *d, const char *name)
{
	for (size_t i = 0; i < d->nvms; i++)
		if (strcmp(d->vms[i].cfg->name, name) == 0)
			return &d->vms[i];
	return NULL;
}

/* ------------------------------------------------------------------ */
/* group commit */

static int
push_op(struct pvm *vm, const struct pop *op)
{
	if (vm->nops == vm->capops) {
		size_t ncap = vm->capops ? vm->capops * 2 : 64;
		struct pop *n = realloc(vm->ops, ncap * sizeof(*n));

		if (n == NULL)
			return -1;
		vm->ops = n;
		vm->capops = ncap;
	}
	vm->ops[vm->nops++] = *op;
	if (op->data)
		vm->ops_bytes += op->len;
	if (vm->need_sync || vm->ops_bytes >= COMMIT_WAIT_MAX)
		event_active(vm->ev_commit, 0, 0);
	else if (vm->nops == 1) {
		/* after one more poll of the sockets: requests already on
		 * their way join the batch (one commit, one reply write) */
		static const struct timeval now = { 0, 0 };

		event_add(vm->ev_commit, &now);
	}
	return 0;
}

static int
errno_of_journal(struct pvm *vm)
{
	return strstr(journal_error(vm->j), "MDB_MAP_FULL") ||
	    strstr(journal_error(vm->j), "space") ? ENOSPC : EIO;
}

/* The batch is over: complete its requests with ERR. */
static void
batch_done(struct pvm *vm, int err)
{
	size_t n = vm->nops;

	vm->need_sync = 0;
	vm->nops = 0;
	vm->ops_bytes = 0;
	vm->kicked = 0;
	for (size_t i = 0; i < n; i++) {
		free(vm->ops[i].data);
		if (vm->ops[i].req)
			nbd_complete(vm->ops[i].req, err);
	}
}

/*
 * Commit the open transaction, hand its entries to the image writer (or,
 * for writes the dirty map tracks instead, write them to the images), sync
 * if a FLUSH or FUA asked, and complete every waiting request.
 */
static void
vm_commit(struct pvm *vm)
{
	size_t n = vm->nops;
	int err = 0, marked = 0;
	uint64_t top = 0;

	for (size_t i = 0; i < n; i++)
		if (!vm->ops[i].marked && vm->ops[i].seq > top)
			top = vm->ops[i].seq;
	if (journal_commit(vm->j) != 0) {
		log_warnx("vm %s: journal: %s", vm->cfg->name,
		    journal_error(vm->j));
		err = errno_of_journal(vm);
		pl_aborted(vm);
	} else {
		/* before the image writer takes the batch (placed.c) */
		pl_committed(vm);
		if (top > journal_last_seq(vm->j)) {
			/* their transaction ended without them: never
			 * acknowledged without their entries */
			log_warnx("vm %s: journal: %llu entries lost before "
			    "their commit", vm->cfg->name,
			    (unsigned long long)(top -
			    journal_last_seq(vm->j)));
			err = EIO;
		}
	}
	if (!err && iw_broken(vm))
		err = EIO;	/* the images fail: said once, by the writer */
	if (!err && iw_queue(vm, vm->ops, n, journal_last_seq(vm->j)) != 0)
		err = ENOMEM;
	for (size_t i = 0; i < n && !err; i++)
		marked |= vm->ops[i].marked;
	if (marked)	/* not journaled: after what the writer has */
		iw_drain(vm);
	for (size_t i = 0; i < n && !err; i++) {
		struct pop *op = &vm->ops[i];

		if (op->disk == UINT32_MAX || !op->marked)
			continue;	/* a flush; the writer's */
		pend_marks(vm, op->disk, op->off, op->len);
		if (op->data ? pwrite_full(vm->disks[op->disk].fd, op->data,
		    op->len, op->off) : zero_range(vm->disks[op->disk].fd,
		    op->off, op->len)) {
			log_warn("vm %s: write %s", vm->cfg->name,
			    vm->disks[op->disk].export);
			err = EIO;
		}
	}
	if (!err && vm->need_sync && vm_journal_sync(vm) != 0) {
		log_warnx("vm %s: %s", vm->cfg->name, journal_error(vm->j));
		err = EIO;
	}
	/* placed writes (placed.c) and writes the dirty map tracks are
	 * durable in the images only: one sync for both, once the image
	 * writer has them */
	if (!err && vm->need_sync && vm->img_unsynced) {
		iw_drain(vm);
		if (iw_broken(vm) || img_sync(vm) != 0)
			err = EIO;
		else {
			iw_synced(vm);
			vm->img_unsynced = 0;
		}
	}
	batch_done(vm, err);
	if (!err && vm->link)
		link_wake(vm->link);
}

/*
 * A failed append poisons the open transaction (and may leave pieces of
 * the failed write in it): end it here rather than let every later write
 * fail on it until a FLUSH.  The writes waiting in it were not
 * acknowledged and fail with it; the journal and the images stay as the
 * last commit left them.
 */
static void
vm_abort_batch(struct pvm *vm, int err)
{
	journal_abort(vm->j);
	pl_aborted(vm);
	batch_done(vm, err);
}

/* ------------------------------------------------------------------ */
/* journal quota: the dirty map and the catch-up */

/*
 * The journal is full: from now on writes go to the images, and the dirty
 * map records which chunks they touched.  What the journal holds stays and
 * is shipped first.  The images are synced and marked applied first, so
 * that a replay after a crash never lays older journal data over writes
 * the map tracks.
 */
static int
enter_overflow(struct pvm *vm)
{
	if (vm->nops)
		vm_commit(vm);
	iw_drain(vm);
	if (iw_broken(vm) || img_sync(vm) != 0)
		return -1;
	iw_synced(vm);
	/* durable before any tracked write reaches an image */
	if (journal_begin(vm->j) != 0 ||
	    journal_set(vm->j, JM_APPLIED, vm->written_seq) != 0 ||
	    journal_set(vm->j, JM_OVERFLOW, 1) != 0 ||
	    journal_commit(vm->j) != 0)
		return -1;
	vm->applied_mark = vm->written_seq;
	if (vm_journal_sync(vm) != 0 || journal_begin(vm->j) != 0)
		return -1;
	__atomic_store_n(&vm->overflow, 1, __ATOMIC_RELEASE);
	log_warnx("vm %s: the journal holds %llu bytes, its quota "
	    "(journal_max %llu): changes are tracked in a dirty map until "
	    "%s has the journal, then sent as a catch-up; points wait for it",
	    vm->cfg->name, (unsigned long long)journal_bytes(vm->j),
	    (unsigned long long)vm->quota, vm->cfg->replicate_to);
	return 0;
}

/*
 * Start the catch-up once the shipper has sent the journal and the DR
 * site has taken enough of it that the journal has room again: reserve a
 * sequence number per chunk, and go back to journaling.
 */
static void
maybe_start_catchup(struct pvm *vm)
{
	uint64_t first;

	if (!vm->overflow || !vm->cu_wanted ||
	    journal_bytes(vm->j) > vm->quota / 2 || iw_broken(vm))
		return;
	if (vm->nops)
		vm_commit(vm);
	if (journal_begin(vm->j) != 0 ||
	    journal_reserve(vm->j, vm->nchunks, &first) != 0 ||
	    journal_set(vm->j, JM_OVERFLOW, 0) != 0 ||
	    journal_set(vm->j, JM_CATCHUP_BASE, first) != 0 ||
	    journal_set(vm->j, JM_CATCHUP_END, first + vm->nchunks - 1) !=
	    0) {
		log_warnx("vm %s: catch-up: %s", vm->cfg->name,
		    journal_error(vm->j));
		journal_abort(vm->j);
		return;
	}
	/* The shipper must never see the reserved seqs as the journal's
	 * without the range: it would stream past the blocks. */
	pthread_mutex_lock(&vm->d->mu);
	if (journal_commit(vm->j) != 0) {
		pthread_mutex_unlock(&vm->d->mu);
		log_warnx("vm %s: catch-up: %s", vm->cfg->name,
		    journal_error(vm->j));
		return;
	}
	vm->cu_end = first + vm->nchunks - 1;
	vm->cu_base = first;
	pthread_mutex_unlock(&vm->d->mu);
	iw_queue(vm, NULL, 0, journal_last_seq(vm->j));
	vm->cu_wanted = 0;
	vm->cu_sent = 0;
	__atomic_store_n(&vm->overflow, 0, __ATOMIC_RELEASE);
	__atomic_add_fetch(&vm->cu_gen, 1, __ATOMIC_RELEASE);
	if (vm_journal_sync(vm) != 0)	/* a crash before it only redoes */
		log_warnx("vm %s: catch-up: %s", vm->cfg->name,
		    journal_error(vm->j));
	log_info("vm %s: catch-up of %llu KiB to %s begins; writes are "
	    "journaled again", vm->cfg->name, (unsigned long long)
	    (journal_dirty_chunks(vm->j) * JOURNAL_CHUNK >> 10),
	    vm->cfg->replicate_to);
	if (vm->link)
		link_wake(vm->link);
}

void
catchup_view(struct pvm *vm, uint64_t *last, uint64_t *cb, uint64_t *ce)
{
	pthread_mutex_lock(&vm->d->mu);
	*last = journal_last_seq(vm->j);
	*cb = vm->cu_base;
	*ce = vm->cu_end;
	pthread_mutex_unlock(&vm->d->mu);
}

/* The DR site holds every chunk: the map has done its work. */
static void
maybe_end_catchup(struct pvm *vm)
{
	if (!vm->cu_base || vm->overflow || !vm->cu_sent ||
	    vm->acked_seq < vm->cu_end || vm->nops)
		return;
	if (journal_begin(vm->j) != 0 || journal_clear_dirty(vm->j) != 0 ||
	    journal_set(vm->j, JM_CATCHUP_BASE, 0) != 0 ||
	    journal_set(vm->j, JM_CATCHUP_END, 0) != 0 ||
	    journal_commit(vm->j) != 0) {
		log_warnx("vm %s: catch-up: %s", vm->cfg->name,
		    journal_error(vm->j));
		journal_abort(vm->j);
		return;
	}
	if (vm->marked)
		memset(vm->marked, 0, (size_t)(vm->nchunks + 7) / 8);
	vm->npend_marks = 0;	/* their bits went with the map */
	pthread_mutex_lock(&vm->d->mu);
	vm->cu_base = 0;
	vm->cu_end = 0;
	pthread_mutex_unlock(&vm->d->mu);
	log_info("vm %s: catch-up complete", vm->cfg->name);
}

/* ------------------------------------------------------------------ */
/* NBD backend */

static void *
be_open(void *arg, const char *name, uint64_t *size)
{
	struct daemon *d = arg;

	for (size_t i = 0; i < d->nvms; i++)
		for (size_t k = 0; k < d->vms[i].ndisks; k++)
			if (strcmp(d->vms[i].disks[k].export, name) == 0) {
				*size = d->vms[i].disks[k].size;
				return &d->vms[i].disks[k];
			}
	return NULL;
}

static void
be_close(void *arg, void *exp)
{
	(void)arg;
	(void)exp;
}

static void
be_list(void *arg, void (*fn)(const char *, void *), void *ctx)
{
	struct daemon *d = arg;

	for (size_t i = 0; i < d->nvms; i++)
		for (size_t k = 0; k < d->vms[i].ndisks; k++)
			fn(d->vms[i].disks[k].export, ctx);
}

static int
be_read(void *exp, uint64_t off, uint32_t len, void *buf)
{
	struct pdisk *pd = exp;

	/* every acknowledged write is in the image before it is read */
	iw_drain(pd->vm);
	if (__atomic_load_n(&pd->vm->iw_failed, __ATOMIC_ACQUIRE))
		return EIO;
	return pread_full(pd->fd, buf, len, off) ? errno : 0;
}

static void
be_write(void *exp, uint64_t off, uint32_t len, void *data, int fua,
    struct nbd_req *req)
{
	struct pdisk *pd = exp;
	struct pvm *vm = pd->vm;
	struct pop op = { pd->idx, off, len, data, 0, req, 0 };

	if (off > pd->size || len > pd->size - off) {
		free(data);
		nbd_complete(req, EINVAL);
		return;
	}
	if (vm->overflow && !fua && vm->nops == 0 &&
	    all_marked(vm, pd->idx, off, len) &&
	    !pl_sealed_overlap(vm, pd->idx, off, len)) {
		/* The map already holds these chunks durably committed, and
		 * no earlier write waits: straight to the image. */
		iw_drain(vm);
		if (iw_broken(vm) || (data ? pwrite_full(pd->fd, data, len,
		    off) : zero_range(pd->fd, off, len))) {
			log_warn("vm %s: write %s", vm->cfg->name, pd->export);
			free(data);
			nbd_complete(req, EIO);
			return;
		}
		free(data);
		vm->img_unsynced = 1;
		nbd_complete(req, 0);
		return;
	}
	if (journal_begin(vm->j) != 0)
		goto fail;
	if (!vm->overflow && data && journal_bytes(vm->j) +
	    journal_pending_bytes(vm->j) + len > vm->quota &&
	    enter_overflow(vm) != 0)
		goto fail;
	/* placed entries of earlier intervals under it: their data first */
	if (pl_before_write(vm, pd->idx, off, len) != 0) {
		free(op.data);
		nbd_complete(req, EIO);
		vm_abort_batch(vm, EIO);
		return;
	}
	if (vm->overflow) {
		/* over quota: the image takes it, the map remembers where */
		if (journal_mark_dirty(vm->j, pd->idx, off, len) != 0)
			goto fail;
		op.marked = 1;
		vm->img_unsynced = 1;
	} else if (data) {
		/* large and aligned: the image alone takes the data */
		int placed = pl_can_place(vm, pd->idx, off, len);

		for (uint32_t done = 0; done < len;) {
			uint32_t piece = len - done > JOURNAL_MAX_ENTRY ?
			    JOURNAL_MAX_ENTRY : len - done;

			if ((placed ? journal_append_placed(vm->j, pd->idx,
			    off + done, piece, &op.seq) : journal_append(vm->j,
			    pd->idx, off + done, piece, op.data + done,
			    &op.seq)) != 0)
				goto fail;
			if (placed)
				pl_placed(vm, pd->idx, off + done, op.seq);
			done += piece;
		}
		if (!placed)
			pl_journaled(vm, pd->idx, off, len, op.seq);
	} else if (journal_append(vm->j, pd->idx, off, len, NULL,
	    &op.seq) != 0)
		goto fail;
	else
		pl_journaled(vm, pd->idx, off, len, op.seq);
	if (fua)
		vm->need_sync = 1;
	if (push_op(vm, &op) != 0)
		goto fail;
	return;
fail:
	log_warnx("vm %s: %s", vm->cfg->name, journal_error(vm->j));
	free(op.data);
	nbd_complete(req, errno_of_journal(vm));
	vm_abort_batch(vm, errno_of_journal(vm));
}

static void
be_flush(void *exp, struct nbd_req *req)
{
	struct pdisk *pd = exp;
	struct pvm *vm = pd->vm;
	struct pop op = { UINT32_MAX, 0, 0, NULL, 0, req, 0 };

	vm->need_sync = 1;
	if (push_op(vm, &op) != 0)
		nbd_complete(req, ENOMEM);
}

const struct nbd_backend vm_nbd_backend = {
	.open = be_open,
	.close = be_close,
	.list = be_list,
	.read = be_read,
	.write = be_write,
	.flush = be_flush,
};

/* ------------------------------------------------------------------ */
/* points */

uint64_t
vm_cut_point(struct pvm *vm, enum point_kind kind, const char *label,
    uint64_t *seqp, char *err, size_t errlen)
{
	uint64_t id, seq;

	if (!journal_get(vm->j, JM_SYNCED)) {
		/* Nothing on the DR site yet to build a point on: the
		 * initial copy ends with one. */
		vm->point_deferred = 1;
		snprintf(vm->deferred_label, sizeof(vm->deferred_label), "%s",
		    label ? label : "");
		pthread_mutex_lock(&vm->d->mu);
		snprintf(err, errlen, "initial copy of %s not complete "
		    "(%llu of %llu bytes); a point is cut when it is",
		    vm->cfg->name, (unsigned long long)vm->pub.sync_done,
		    (unsigned long long)vm->pub.sync_total);
		pthread_mutex_unlock(&vm->d->mu);
		return 0;
	}
	if (vm->overflow || (vm->cu_base && !vm->cu_sent)) {
		/* the changes since the last point are not all journaled:
		 * the catch-up ends with a point */
		vm->point_deferred = 1;
		if (label && label[0] && label != vm->deferred_label)
			snprintf(vm->deferred_label,
			    sizeof(vm->deferred_label), "%s", label);
		if (vm->overflow)
			snprintf(err, errlen, "the journal of %s is over its "
			    "quota (journal_max %llu bytes) and changes are "
			    "tracked in a dirty map; a point is cut when the "
			    "catch-up to %s is sent", vm->cfg->name,
			    (unsigned long long)vm->quota,
			    vm->cfg->replicate_to);
		else
			snprintf(err, errlen, "%s is catching up with %s; a "
			    "point is cut when it is sent", vm->cfg->name,
			    vm->cfg->replicate_to);
		return 0;
	}
	if (journal_begin(vm->j) != 0 ||
	    journal_append_point(vm->j, kind, label, now_ms(), &id,
	    &seq) != 0) {
		snprintf(err, errlen, "journal: %s", journal_error(vm->j));
		/* A failed append poisons the open transaction: committing
		 * it fails, and so do the writes waiting on it (never
		 * acknowledged without their journal entries). */
		vm_commit(vm);
		return 0;
	}
	pl_point(vm);
	vm->need_sync = 1;
	vm_commit(vm);
	vm->last_point_ms = now_ms();
	if (seqp)
		*seqp = seq;
	log_debug("vm %s: point %llu at seq %llu", vm->cfg->name,
	    (unsigned long long)id, (unsigned long long)seq);
	return id;
}

void
vm_acked(struct pvm *vm, uint64_t seq, uint64_t point)
{
	size_t k = 0;

	if (seq > vm->acked_seq)
		vm->acked_seq = seq;
	if (point > vm->acked_point)
		vm->acked_point = point;
	vm->last_ack_ms = now_ms();
	for (size_t i = 0; i < vm->nwaiters; i++) {
		struct waiter *w = &vm->waiters[i];

		/* durable on the DR site: applied, or staged while the
		 * replica is failed over; and in the primary's images */
		if (w->point <= vm->acked_point || w->seq <= vm->acked_seq) {
			if (__atomic_load_n(&vm->written_seq,
			    __ATOMIC_ACQUIRE) < w->seq)
				iw_drain(vm);
			json_t *r = json_pack("{s:b,s:s,s:I}", "ok", 1, "vm",
			    vm->cfg->name, "point", (json_int_t)w->point);

			control_reply(w->conn, r);
		} else
			vm->waiters[k++] = *w;
	}
	vm->nwaiters = k;
}

void
vm_on_ship_msg(struct pvm *vm, enum smsg_type type, uint64_t a, uint64_t b)
{
	char err[256];

	switch (type) {
	case SM_SYNC_START:
		if (vm->nops)	/* their transaction is not ours to end */
			vm_commit(vm);
		if (journal_begin(vm->j) != 0 ||
		    journal_set(vm->j, JM_SYNCED, 0) != 0 ||
		    journal_set(vm->j, JM_SYNC_BASE, a) != 0 ||
		    journal_commit(vm->j) != 0)
			log_warnx("vm %s: %s", vm->cfg->name,
			    journal_error(vm->j));
		break;
	case SM_SYNCED:
	case SM_SYNC_DONE:
		if (vm->nops)
			vm_commit(vm);
		if (journal_begin(vm->j) != 0 ||
		    journal_set(vm->j, JM_SYNCED, 1) != 0 ||
		    journal_commit(vm->j) != 0) {
			log_warnx("vm %s: %s", vm->cfg->name,
			    journal_error(vm->j));
			break;
		}
		if (type == SM_SYNCED)
			break;
		/* The first point: all disks as of the end of the copy. */
		vm->point_deferred = 0;
		if (vm_cut_point(vm, POINT_CRASH, vm->deferred_label[0] ?
		    vm->deferred_label : "initial copy", NULL, err,
		    sizeof(err)) != 0)
			vm->deferred_label[0] = '\0';
		/* else deferred again (over quota): the label waits too */
		break;
	case SM_ACK:
		vm_acked(vm, a, b);
		maybe_end_catchup(vm);
		break;
	case SM_CATCHUP_READY:
		vm->cu_wanted = 1;
		maybe_start_catchup(vm);
		break;
	case SM_CATCHUP_SENT:
		if (a != vm->cu_base || vm->cu_sent)
			break;
		vm->cu_sent = 1;
		log_info("vm %s: catch-up sent", vm->cfg->name);
		if (vm->overflow)
			break;
		vm->point_deferred = 0;
		vm_cut_point(vm, POINT_CRASH, vm->deferred_label[0] ?
		    vm->deferred_label : "catch-up", NULL, err, sizeof(err));
		vm->deferred_label[0] = '\0';
		break;
	}
}

int
vm_set_paused(struct pvm *vm, int paused, char *err, size_t errlen)
{
	if (vm->paused == paused) {
		snprintf(err, errlen, "replication of %s is %s", vm->cfg->name,
		    paused ? "already paused" : "not paused");
		return -1;
	}
	if (vm->nops)
		vm_commit(vm);
	if (journal_begin(vm->j) != 0 ||
	    journal_set(vm->j, JM_PAUSED, (uint64_t)paused) != 0 ||
	    journal_commit(vm->j) != 0 || journal_sync(vm->j) != 0) {
		snprintf(err, errlen, "journal: %s", journal_error(vm->j));
		journal_abort(vm->j);
		return -1;
	}
	__atomic_store_n(&vm->paused, paused, __ATOMIC_RELEASE);
	log_info("vm %s: replication %s", vm->cfg->name, paused ?
	    "paused: writes are journaled (up to journal_max) and points cut, "
	    "nothing ships" : "resumed");
	if (!paused && vm->link)
		link_wake(vm->link);
	return 0;
}

void
vm_drop_waiters(struct daemon *d, struct ctl_conn *conn)
{
	for (size_t v = 0; v < d->nvms; v++) {
		struct pvm *vm = &d->vms[v];
		size_t k = 0;

		for (size_t i = 0; i < vm->nwaiters; i++)
			if (vm->waiters[i].conn != conn)
				vm->waiters[k++] = vm->waiters[i];
		vm->nwaiters = k;
	}
}

#define TRIM_EVERY_MS	5000
#define SYNC_AHEAD_MS	1500	/* the images' sync asked before a trim */

/* Once a second: interval points, journal trim. */
void
vm_tick(struct pvm *vm, int64_t now)
{
	char err[256];
	uint64_t upto, written, synced, first;

	if (now >= vm->next_point_ms) {
		vm->next_point_ms = now + (int64_t)vm->cfg->interval_ms;
		if (journal_get(vm->j, JM_SYNCED))
			vm_cut_point(vm, POINT_CRASH, NULL, NULL, err,
			    sizeof(err));
	}
	/* a batch that waits for the journal's log thread commits now:
	 * what follows wants no open batch */
	if (vm->nops)
		vm_commit(vm);
	/* Trim what the DR site holds and the images hold durably (what
	 * the writer wrote before its last sync); ask for the next sync
	 * while the DR site holds more than that, a tick before the trim
	 * (or when the journal fills), not every tick: each one is an
	 * fdatasync of every image. */
	synced = __atomic_load_n(&vm->synced_seq, __ATOMIC_ACQUIRE);
	written = __atomic_load_n(&vm->written_seq, __ATOMIC_ACQUIRE);
	first = journal_first_seq(vm->j);
	if (first != 0 && first <= vm->acked_seq && synced < vm->acked_seq &&
	    synced < written && vm->iw_started && !iw_broken(vm) &&
	    (now >= vm->next_trim_ms - SYNC_AHEAD_MS ||
	    journal_bytes(vm->j) >= vm->quota / 8)) {
		pthread_mutex_lock(&vm->iw_mu);
		vm->iw_sync_want = 1;
		pthread_cond_signal(&vm->iw_work);
		pthread_mutex_unlock(&vm->iw_mu);
	}
	upto = vm->acked_seq < synced ? vm->acked_seq : synced;
	/* each trim syncs the journal (its log, LMDB) and removes segments,
	 * which holds the loop up: under way, every TRIM_EVERY_MS, or at
	 * once when the journal holds a quarter of its quota */
	if (now < vm->next_trim_ms && journal_bytes(vm->j) < vm->quota / 4)
		upto = 0;
	if (upto > 0 && first != 0 && first <= upto) {
		vm->next_trim_ms = now + TRIM_EVERY_MS;
		int marked = journal_begin(vm->j) == 0 &&
		    journal_set(vm->j, JM_APPLIED, synced) == 0 &&
		    journal_set(vm->j, JM_ACKED, vm->acked_seq) == 0 &&
		    journal_set(vm->j, JM_ACKED_POINT, vm->acked_point) == 0 &&
		    journal_commit(vm->j) == 0;

		if (marked)	/* placed.c: nothing before it is replayed */
			vm->applied_mark = synced;
		if (!marked || vm_journal_sync(vm) != 0 ||
		    journal_trim(vm->j, upto) < 0)
			log_warnx("vm %s: trim: %s", vm->cfg->name,
			    journal_error(vm->j));
		else
			pl_trimmed(vm, upto);
		if (vm->acked_point > 1000)
			journal_forget_points(vm->j, vm->acked_point - 1000);
	}
	/* marks of the last second become durable: the fast path may use
	 * them */
	if (vm->npend_marks && vm->nops == 0 && vm_journal_sync(vm) != 0)
		log_warnx("vm %s: %s", vm->cfg->name, journal_error(vm->j));
	maybe_start_catchup(vm);
	maybe_end_catchup(vm);
}

/* ------------------------------------------------------------------ */
/* reports */

static const char *
phase_name(enum ship_phase phase)
{
	switch (phase) {
	case SHIP_DOWN:
		return "disconnected";
	case SHIP_ANNOUNCED:
		return "connecting";
	case SHIP_SYNCING:
		return "initial-copy";
	case SHIP_STREAMING:
		return "replicating";
	case SHIP_REFUSED:
		return "refused";
	}
	return "unknown";
}

json_t *
vm_status_json(struct pvm *vm, int64_t now)
{
	int64_t since = vm->last_ack_ms && vm->acked_point ?
	    vm->last_point_ms : 0;
	double lag = 0;
	const char *health = "normal";
	struct ship_pub pub;
	json_t *o;
	struct jentry p;

	pthread_mutex_lock(&vm->d->mu);
	pub = vm->pub;
	pthread_mutex_unlock(&vm->d->mu);
	if (vm->acked_point && journal_find_point(vm->j, vm->acked_point,
	    &p) == 1)
		since = p.time_ms;
	if (since)
		lag = (double)(now - since) / 1000.0;
	if (pub.phase == SHIP_REFUSED || (vm->cfg->interval_ms &&
	    lag > 10.0 * (double)vm->cfg->interval_ms / 1000.0))
		health = "critical";
	else if (pub.phase != SHIP_STREAMING || (lag > 2.0 *
	    (double)vm->cfg->interval_ms / 1000.0))
		health = "warning";
	if ((vm->overflow || (vm->cu_base && !vm->cu_sent) || vm->paused) &&
	    strcmp(health, "normal") == 0)
		health = "warning";
	if (iw_broken(vm))	/* the images fail: restart to replay */
		health = "critical";
	o = json_pack("{s:s,s:s,s:s,s:s,s:f,s:I,s:I,s:s,s:s,s:I,s:I,s:I}",
	    "name", vm->cfg->name, "role", "primary", "state",
	    vm->paused ? "paused" : vm->overflow ? "journal-full" : vm->cu_base && !vm->cu_sent &&
	    pub.phase == SHIP_STREAMING ? "catching-up" :
	    phase_name(pub.phase), "health", health, "lag_seconds", lag,
	    "last_point", (json_int_t)vm->acked_point,
	    "journal_bytes", (json_int_t)journal_bytes(vm->j),
	    "peer", vm->cfg->replicate_to, "link", pub.link,
	    "journal_seq", (json_int_t)journal_last_seq(vm->j),
	    "acked_seq", (json_int_t)vm->acked_seq,
	    "bytes_shipped", (json_int_t)pub.bytes_shipped);
	if (pub.phase == SHIP_SYNCING || pub.sync_total)
		json_object_set_new(o, "initial_copy", json_pack(
		    "{s:I,s:I,s:f}", "done", (json_int_t)pub.sync_done,
		    "total", (json_int_t)pub.sync_total, "percent",
		    pub.sync_total ? 100.0 * (double)pub.sync_done /
		    (double)pub.sync_total : 100.0));
	json_object_set_new(o, "journal_max", json_integer((json_int_t)
	    vm->quota));
	json_object_set_new(o, "paused", json_boolean(vm->paused));
	if (vm->overflow)
		json_object_set_new(o, "journal_full", json_true());
	json_object_set_new(o, "dirty_bytes", json_integer((json_int_t)
	    (journal_dirty_chunks(vm->j) * JOURNAL_CHUNK)));
	if (vm->cu_base && !vm->cu_sent)
		json_object_set_new(o, "catch_up", json_pack("{s:I,s:I,s:f}",
		    "done", (json_int_t)pub.catchup_done, "total",
		    (json_int_t)pub.catchup_total, "percent",
		    pub.catchup_total ? 100.0 * (double)pub.catchup_done /
		    (double)pub.catchup_total : 0.0));
	if (pub.refused[0])
		json_object_set_new(o, "error", json_string(pub.refused));
	return o;
}

static int
point_row(const struct jentry *e, void *arg)
{
	json_t *a = arg;
	char t[40];

	format_time(e->time_ms, t, sizeof(t));
	json_array_append_new(a, json_pack("{s:I,s:s,s:s,s:I,s:s}",
	    "id", (json_int_t)e->point_id, "time", t,
	    "kind", point_kind_name(e->kind), "bytes", (json_int_t)e->length,
	    "label", e->label));
	return 0;
}

json_t *
vm_points_json(struct pvm *vm)
{
	json_t *a = json_array();

	journal_points(vm->j, point_row, a);
	/* on the primary, say which points the DR site holds */
	for (size_t i = 0; i < json_array_size(a); i++) {
		json_t *p = json_array_get(a, i);
		json_int_t id = json_integer_value(json_object_get(p, "id"));

		json_object_set_new(p, "replicated",
		    json_boolean((uint64_t)id <= vm->acked_point));
	}
	return json_pack("{s:s,s:o}", "vm", vm->cfg->name, "points", a);
}
