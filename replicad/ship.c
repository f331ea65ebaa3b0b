/*
 * ship.c: the primary's shipper, on the shipper thread.  Per VM on a link:
 * announce, then either the initial copy (image blocks, holes and zero
 * blocks skipped) or the journal from where the DR site stands.  Acks and
 * copy milestones go to the main thread (post_main), which trims the
 * journal, cuts points and answers `checkpoint --wait`.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon.h"
#include "fileio.h"
#include "log.h"

#define SHIP_WINDOW	(16u << 20)	/* bytes queued on a link at most */
#define SHIP_BATCH	(1u << 20)	/* write data per frame */
#define SCAN_CHUNK	(1u << 20)	/* image read per sync frame */
#define ZBLOCK		4096

static struct frame_zstd *
compress_of(struct pvm *vm)
{
	return vm->cfg->compress == COMPRESS_ZSTD ? &vm->zstd : NULL;
}

/* Show the main thread where this VM's shipping stands. */
static void
publish(struct pvm *vm)
{
	struct daemon *d = vm->d;

	pthread_mutex_lock(&d->mu);
	vm->pub.phase = vm->phase;
	vm->pub.sync_done = vm->sync_done;
	vm->pub.sync_total = vm->sync_total;
	vm->pub.bytes_shipped = vm->bytes_shipped;
	vm->pub.catchup_done = vm->cu_done;
	vm->pub.catchup_total = vm->cu_total;
	snprintf(vm->pub.refused, sizeof(vm->pub.refused), "%s", vm->refused);
	snprintf(vm->pub.link, sizeof(vm->pub.link), "%s",
	    vm->link ? link_state(vm->link) : "none");
	pthread_mutex_unlock(&d->mu);
}

void
ship_link_changed(struct link *l)
{
	struct daemon *d = link_daemon(l);

	for (size_t i = 0; i < d->nvms; i++)
		if (d->vms[i].link == l)
			publish(&d->vms[i]);
}

static void
send_announce(struct link *l, struct pvm *vm)
{
	Replication__Msg m = REPLICATION__MSG__INIT;
	Replication__VmAnnounce a = REPLICATION__VM_ANNOUNCE__INIT;
	Replication__DiskInfo di[MAX_DISKS], *dip[MAX_DISKS];
	Replication__KeepRule kr[CFG_MAX_KEEP], *krp[CFG_MAX_KEEP];

	for (size_t i = 0; i < vm->ndisks; i++) {
		replication__disk_info__init(&di[i]);
		di[i].name = vm->disks[i].name;
		di[i].size = vm->disks[i].size;
		dip[i] = &di[i];
	}
	for (int i = 0; i < vm->cfg->nkeep; i++) {
		replication__keep_rule__init(&kr[i]);
		kr[i].age_ms = vm->cfg->keep[i].age_ms;
		kr[i].step_ms = vm->cfg->keep[i].step_ms;
		krp[i] = &kr[i];
	}
	a.vm = (char *)vm->cfg->name;
	a.n_disks = vm->ndisks;
	a.disks = dip;
	a.n_keep = (size_t)vm->cfg->nkeep;
	a.keep = krp;
	a.epoch = journal_get(vm->j, JM_EPOCH);
	m.body_case = REPLICATION__MSG__BODY_ANNOUNCE;
	m.announce = &a;
	vm->phase = SHIP_ANNOUNCED;
	publish(vm);
	link_send(l, &m, NULL);
}

void
ship_link_ready(struct link *l)
{
	struct daemon *d = link_daemon(l);

	for (size_t i = 0; i < d->nvms; i++)
		if (d->vms[i].link == l) {
			d->vms[i].refused[0] = '\0';
			send_announce(l, &d->vms[i]);
		}
}

void
ship_retry(struct pvm *vm)
{
	if (vm->link && link_is_ready(vm->link)) {
		log_debug("vm %s: announcing again after: %s", vm->cfg->name,
		    vm->refused);
		send_announce(vm->link, vm);
		link_kick(vm->link);
	}
}

void
ship_link_down(struct link *l)
{
	struct daemon *d = link_daemon(l);

	for (size_t i = 0; i < d->nvms; i++)
		if (d->vms[i].link == l && d->vms[i].phase != SHIP_REFUSED) {
			d->vms[i].phase = SHIP_DOWN;
			publish(&d->vms[i]);
		}
}

/* Once a second: announce refused VMs again. */
void
ship_tick(struct daemon *d)
{
	int64_t now = now_ms();

	for (size_t i = 0; i < d->nvms; i++)
		if (d->vms[i].phase == SHIP_REFUSED &&
		    now - d->vms[i].refused_ms >= 10000)
			ship_retry(&d->vms[i]);
}

static void
start_sync(struct pvm *vm, const char *why)
{
	/* what the images hold; the journal after it follows the copy */
	vm->sync_base = __atomic_load_n(&vm->written_seq, __ATOMIC_ACQUIRE);
	vm->sync_disk = 0;
	vm->sync_off = 0;
	vm->sync_done = 0;
	vm->sync_total = 0;
	for (size_t i = 0; i < vm->ndisks; i++)
		vm->sync_total += vm->disks[i].size;
	vm->sync_started_ms = now_ms();
	post_main(vm->d, vm, SM_SYNC_START, vm->sync_base, 0);
	vm->phase = SHIP_SYNCING;
	publish(vm);
	log_info("vm %s: initial copy to %s (%s): %llu bytes, journal "
	    "follows after %llu", vm->cfg->name, vm->cfg->replicate_to, why,
	    (unsigned long long)vm->sync_total,
	    (unsigned long long)vm->sync_base);
}

/* Go on with an interrupted initial copy from where the DR site holds it
 * durably; the journal after its base still holds every change since. */
static void
resume_sync(struct pvm *vm, const Replication__VmState *st)
{
	vm->sync_base = st->resume_base;
	vm->sync_disk = st->resume_disk;
	vm->sync_off = st->resume_offset;
	vm->sync_total = 0;
	vm->sync_done = st->resume_offset;
	for (size_t i = 0; i < vm->ndisks; i++) {
		vm->sync_total += vm->disks[i].size;
		if (i < st->resume_disk)
			vm->sync_done += vm->disks[i].size;
	}
	vm->sync_started_ms = now_ms();
	vm->phase = SHIP_SYNCING;
	publish(vm);
	log_info("vm %s: resuming the initial copy to %s at %llu of %llu "
	    "MiB", vm->cfg->name, vm->cfg->replicate_to,
	    (unsigned long long)(vm->sync_done >> 20),
	    (unsigned long long)(vm->sync_total >> 20));
}

static void
on_state(struct link *l, struct pvm *vm, const Replication__VmState *st)
{
	uint64_t epoch = journal_get(vm->j, JM_EPOCH);
	uint64_t first = journal_first_seq(vm->j);
	uint64_t last, cb, ce;
	uint64_t next = st->applied_seq + 1;

	(void)l;
	catchup_view(vm, &last, &cb, &ce);
	vm->refused[0] = '\0';
	vm->cu_requested = 0;
	if (st->need_full && st->resume && st->epoch == epoch &&
	    st->resume_disk < vm->ndisks &&
	    st->resume_offset <= vm->disks[st->resume_disk].size &&
	    st->resume_base == journal_get(vm->j, JM_SYNC_BASE) &&
	    st->resume_base <= last && (first == 0 ||
	    first <= st->resume_base + 1))
		resume_sync(vm, st);
	else if (st->need_full || st->epoch != epoch)
		start_sync(vm, st->epoch ? "different lineage" : "new replica");
	else if (st->applied_seq > last)
		start_sync(vm, "replica is ahead of this journal");
	else if (!(cb && next >= cb && next <= ce + 1) && next <= last &&
	    (first == 0 || first > next))
		start_sync(vm, "journal no longer holds what the replica "
		    "lacks");
	else {
		vm->phase = SHIP_STREAMING;
		vm->send_seq = next;
		publish(vm);
		if (!journal_get(vm->j, JM_SYNCED))
			post_main(vm->d, vm, SM_SYNCED, 0, 0);
		post_main(vm->d, vm, SM_ACK, st->applied_seq, st->last_point);
		log_info("vm %s: replica at %llu (point %llu); streaming from "
		    "%llu to %llu", vm->cfg->name,
		    (unsigned long long)st->applied_seq,
		    (unsigned long long)st->last_point,
		    (unsigned long long)next, (unsigned long long)last);
	}
	ship_pump(vm->link);
}

static struct pvm *
vm_on_link(struct link *l, const char *name)
{
	struct pvm *vm = name ? vm_find(link_daemon(l), name) : NULL;

	return vm && vm->link == l ? vm : NULL;
}

int
ship_on_msg(struct link *l, Replication__Msg *m)
{
	struct pvm *vm;

	switch (m->body_case) {
	case REPLICATION__MSG__BODY_STATE:
		if ((vm = vm_on_link(l, m->state->vm)) == NULL ||
		    vm->phase != SHIP_ANNOUNCED) {
			log_warnx("%s: unexpected state for vm %s", __func__,
			    m->state->vm);
			return -1;
		}
		on_state(l, vm, m->state);
		return 0;
	case REPLICATION__MSG__BODY_ACK:
		if ((vm = vm_on_link(l, m->ack->vm)) == NULL) {
			log_warnx("%s: ack for unknown vm %s", __func__,
			    m->ack->vm);
			return -1;
		}
		post_main(vm->d, vm, SM_ACK, m->ack->seq, m->ack->point);
		return 0;
	case REPLICATION__MSG__BODY_ERROR: {
		char why[sizeof(vm->refused)];

		vm = vm_on_link(l, m->error->vm);
		snprintf(why, sizeof(why), "%s: %s", link_peer(l)->name,
		    m->error->message);
		/* a refusal repeated on every retry is said once */
		if (vm == NULL || strcmp(why, vm->refused) != 0)
			log_warnx("%s: %s refused vm %s: %s", __func__,
			    link_peer(l)->name, m->error->vm,
			    m->error->message);
		else
			log_debug("%s: refused again: %s", m->error->vm, why);
		if (vm == NULL)
			return -1;	/* not about one VM: drop the link */
		vm->phase = SHIP_REFUSED;
		vm->refused_ms = now_ms();
		snprintf(vm->refused, sizeof(vm->refused), "%s", why);
		publish(vm);
		return 0;
	}
	default:
		log_warnx("%s: unexpected %s message from %s", __func__,
		    frame_type_name(m->body_case), link_peer(l)->name);
		return -1;
	}
}

/* ------------------------------------------------------------------ */
/* initial copy */

static int
all_zero(const uint8_t *p, size_t n)
{
	const uint64_t *q = (const uint64_t *)(const void *)p;

	for (size_t i = 0; i < n / 8; i++)
		if (q[i])
			return 0;
	for (size_t i = n & ~(size_t)7; i < n; i++)
		if (p[i])
			return 0;
	return 1;
}

static void
send_sync_done(struct pvm *vm)
{
	Replication__Msg m = REPLICATION__MSG__INIT;
	Replication__SyncDone sd = REPLICATION__SYNC_DONE__INIT;

	sd.vm = (char *)vm->cfg->name;
	sd.base_seq = vm->sync_base;
	m.body_case = REPLICATION__MSG__BODY_SYNC_DONE;
	m.sync_done = &sd;
	if (link_send(vm->link, &m, NULL) != 0)
		return;
	vm->phase = SHIP_STREAMING;
	vm->send_seq = vm->sync_base + 1;
	vm->sync_done = vm->sync_total;
	publish(vm);
	log_info("vm %s: initial copy sent in %.1f s", vm->cfg->name,
	    (double)(now_ms() - vm->sync_started_ms) / 1000.0);
	/* the main thread cuts the first point: all disks as of now */
	post_main(vm->d, vm, SM_SYNC_DONE, 0, 0);
}

/* Read the next stretch of the image and send its non-zero blocks. */
static int
sync_step(struct pvm *vm)
{
	static uint8_t buf[SCAN_CHUNK];
	Replication__Msg m = REPLICATION__MSG__INIT;
	Replication__SyncBlocks sb = REPLICATION__SYNC_BLOCKS__INIT;
	Replication__Entry ents[SCAN_CHUNK / ZBLOCK], *entp[SCAN_CHUNK / ZBLOCK];
	struct pdisk *pd;
	size_t n = 0, len;
	off_t data;

	while (vm->sync_disk < vm->ndisks &&
	    vm->sync_off >= vm->disks[vm->sync_disk].size) {
		vm->sync_disk++;
		vm->sync_off = 0;
	}
	if (vm->sync_disk >= vm->ndisks) {
		send_sync_done(vm);
		return 0;
	}
	pd = &vm->disks[vm->sync_disk];
	/* skip holes: they read as zeroes and the replica starts sparse */
	data = lseek(pd->fd, (off_t)vm->sync_off, SEEK_DATA);
	if (data == -1 && errno == ENXIO)
		data = (off_t)pd->size;
	if (data > (off_t)vm->sync_off) {
		uint64_t skip = (uint64_t)data - vm->sync_off;

		skip -= skip % ZBLOCK;
		vm->sync_done += skip;
		vm->sync_off += skip;
		if (vm->sync_off >= pd->size || skip)
			return 0;
	}
	len = pd->size - vm->sync_off < SCAN_CHUNK ?
	    (size_t)(pd->size - vm->sync_off) : SCAN_CHUNK;
	if (pread_full(pd->fd, buf, len, vm->sync_off) != 0) {
		log_warn("vm %s: read %s", vm->cfg->name, pd->export);
		return -1;
	}
	for (size_t o = 0; o < len; o += ZBLOCK) {
		size_t bl = len - o < ZBLOCK ? len - o : ZBLOCK;

		if (all_zero(buf + o, bl))
			continue;
		if (n > 0 && ents[n - 1].offset + ents[n - 1].length ==
		    vm->sync_off + o) {
			ents[n - 1].length += (uint32_t)bl;
			ents[n - 1].data.len += bl;
			continue;
		}
		replication__entry__init(&ents[n]);
		ents[n].disk = vm->sync_disk;
		ents[n].offset = vm->sync_off + o;
		ents[n].length = (uint32_t)bl;
		ents[n].data.data = buf + o;
		ents[n].data.len = bl;
		entp[n] = &ents[n];
		n++;
	}
	vm->sync_off += len;
	vm->sync_done += len;
	if (vm->sync_total >= (64u << 20) && vm->sync_done * 10 /
	    vm->sync_total != (vm->sync_done - len) * 10 / vm->sync_total)
		log_info("vm %s: initial copy %llu%% (%llu of %llu MiB)",
		    vm->cfg->name, (unsigned long long)(vm->sync_done * 100 /
		    vm->sync_total), (unsigned long long)(vm->sync_done >> 20),
		    (unsigned long long)(vm->sync_total >> 20));
	sb.vm = (char *)vm->cfg->name;
	sb.n_blocks = n;
	sb.blocks = entp;
	sb.done_bytes = vm->sync_done;
	sb.total_bytes = vm->sync_total;
	sb.cursor_disk = vm->sync_disk;
	sb.cursor_offset = vm->sync_off;
	sb.base_seq = vm->sync_base;
	m.body_case = REPLICATION__MSG__BODY_SYNC;
	m.sync = &sb;
	vm->bytes_shipped += len;
	for (size_t i = 0; i < n; i++)
		vm->data_sent += ents[i].data.len;
	publish(vm);
	return link_send(vm->link, &m, compress_of(vm));
}

/* ------------------------------------------------------------------ */
/* streaming */

struct batch {
	struct frame_writes w;	/* the entries, encoded as they are read */
	uint64_t last_seq;	/* of the last entry in w */
	struct jentry point;
	int have_point;
	int oom;
	uint64_t stop;		/* a catch-up's first seq: stop there */
	uint64_t last;		/* the view's last seq: nothing after it */
	struct pvm *vm;
	uint64_t pl_gen;	/* pl_ship_begin() before the snapshot */
	int wait;		/* a placed entry stopped it (pl_ship_read) */
};

static int
collect(const struct jentry *e, void *arg)
{
	struct batch *b = arg;
	Replication__Entry en = REPLICATION__ENTRY__INIT;

	if ((b->stop && e->seq >= b->stop) || e->seq > b->last)
		return 1;
	if (e->type == JE_POINT) {
		b->point = *e;
		b->have_point = 1;
		return 1;
	}
	en.seq = e->seq;
	en.disk = e->disk;
	en.offset = e->offset;
	en.length = e->length;
	if (e->type == JE_PLACED) {
		/* its data is in the image (placed.c) */
		const uint8_t *p;
		int r = pl_ship_read(b->vm, e, b->pl_gen, &p);

		if (r != 0) {
			b->wait = r;
			return 1;
		}
		en.data.data = (uint8_t *)(uintptr_t)p;
		en.data.len = e->length;
	} else if (e->type == JE_WRITE) {
		en.data.data = (uint8_t *)(uintptr_t)e->data;
		en.data.len = e->length;
	} else
		en.zero = 1;
	/* the data is copied from the journal's ring or read window
	 * straight into the frame */
	if (frame_writes_add(&b->w, &en) != 0) {
		b->oom = 1;
		return 1;
	}
	b->last_seq = e->seq;
	return 0;
}

static int
stream_step(struct pvm *vm, uint64_t cb, uint64_t last)
{
	struct batch b;
	int r = 0;

	memset(&b, 0, sizeof(b));
	b.stop = cb > vm->send_seq ? cb : 0;
	b.last = last;
	b.vm = vm;
	if (frame_writes_init(&b.w, vm->cfg->name, SHIP_BATCH) != 0)
		return -1;
	/* a copy that began after the snapshot: read the journal again
	 * (the next snapshot has it, or it is before its commit) */
	for (int tries = 0; tries < 100; tries++) {
		b.wait = 0;
		b.pl_gen = pl_ship_begin(vm);
		if (journal_read(vm->j, vm->send_seq, SHIP_BATCH, collect,
		    &b) < 0) {
			log_warnx("vm %s: %s", vm->cfg->name,
			    journal_error(vm->j));
			r = -1;
			goto out;
		}
		if (b.wait != 1 || b.w.nent > 0 || b.have_point || b.oom)
			break;
	}
	if (b.oom) {
		r = -1;
		goto out;
	}
	if (b.w.nent > 0) {
		uint64_t data = b.w.data;

		if ((r = link_send_writes(vm->link, &b.w,
		    compress_of(vm))) != 0)
			goto out;
		vm->send_seq = b.last_seq + 1;
		vm->bytes_shipped += data;
		vm->data_sent += data;
		publish(vm);
	}
	if (b.have_point) {
		Replication__Msg m = REPLICATION__MSG__INIT;
		Replication__Point p = REPLICATION__POINT__INIT;

		p.vm = (char *)vm->cfg->name;
		p.id = b.point.point_id;
		p.seq = b.point.seq;
		p.time_ms = b.point.time_ms;
		p.kind = (Replication__PointKind)b.point.kind;
		p.label = b.point.label;
		m.body_case = REPLICATION__MSG__BODY_POINT;
		m.point = &p;
		if ((r = link_send(vm->link, &m, NULL)) != 0)
			goto out;
		vm->send_seq = b.point.seq + 1;
	}
	if (b.w.nent == 0 && !b.have_point && b.wait == 0)
		/* nothing up to a catch-up's chunks, or up to what was
		 * last: sequence numbers reserved without entries */
		vm->send_seq = b.stop ? b.stop : last + 1;
	else if (b.w.nent == 0 && !b.have_point) {
		/* a placed entry waits: for the image writer, which wakes the
		 * link; for a copy's commit, which does too, but the copy may
		 * be given up; after a failed read of the image, a second */
		r = 1;
		if (b.wait != 2)
			link_pump_later(vm->link, b.wait < 0 ? 1000 : 1);
	}
out:
	frame_writes_free(&b.w);
	return r;
}

/* ------------------------------------------------------------------ */
/* catch-up: the chunks the dirty map names, under reserved seqs */

struct below {
	struct pvm *vm;
	uint64_t cursor;	/* global block index */
	uint64_t n;
};

static void
count_below(uint32_t disk, uint64_t chunk, void *arg)
{
	struct below *b = arg;

	if (disk < b->vm->ndisks &&
	    b->vm->chunk_base[disk] + chunk < b->cursor)
		b->n++;
}

static void
catchup_progress(struct pvm *vm, uint64_t cb, uint64_t start,
    uint64_t bytes)
{
	if (vm->cu_seen != cb) {
		struct below b = { vm, start - cb, 0 };

		/* resumed (a reconnect, a restart): count what went before */
		if (start > cb)
			journal_dirty_each(vm->j, count_below, &b);
		vm->cu_seen = cb;
		vm->cu_done = b.n * JOURNAL_CHUNK;
		vm->cu_total = journal_dirty_chunks(vm->j) * JOURNAL_CHUNK;
	}
	if (vm->cu_total >= (64u << 20) && (vm->cu_done + bytes) * 10 /
	    vm->cu_total != vm->cu_done * 10 / vm->cu_total)
		log_info("vm %s: catch-up %llu%% (%llu of %llu MiB)",
		    vm->cfg->name, (unsigned long long)((vm->cu_done + bytes) *
		    100 / vm->cu_total), (unsigned long long)((vm->cu_done +
		    bytes) >> 20), (unsigned long long)(vm->cu_total >> 20));
	vm->cu_done += bytes;
	if (vm->cu_done > vm->cu_total)	/* blocks marked after the start */
		vm->cu_total = vm->cu_done;
}

static int
catchup_step(struct pvm *vm, uint64_t cb, uint64_t ce)
{
	static uint8_t buf[SHIP_BATCH];
	Replication__Msg m = REPLICATION__MSG__INIT;
	Replication__Writes w = REPLICATION__WRITES__INIT;
	Replication__Entry ents[SHIP_BATCH / JOURNAL_CHUNK];
	Replication__Entry *entp[SHIP_BATCH / JOURNAL_CHUNK];
	uint64_t g = vm->send_seq - cb, chunk, bytes = 0, start = vm->send_seq;
	uint32_t d = 0;
	size_t n = 0, used = 0;
	int done = 0, r;

	while (d + 1 < vm->ndisks && vm->chunk_base[d + 1] <= g)
		d++;
	chunk = g - vm->chunk_base[d];
	while (n < SHIP_BATCH / JOURNAL_CHUNK &&
	    used + JOURNAL_CHUNK <= SHIP_BATCH) {
		struct pdisk *pd;
		uint64_t off;
		uint32_t run;
		size_t len;

		if ((r = journal_dirty_run(vm->j, &d, &chunk, &run,
		    (uint32_t)((SHIP_BATCH - used < JOURNAL_MAX_ENTRY ?
		    SHIP_BATCH - used : JOURNAL_MAX_ENTRY) / JOURNAL_CHUNK))) < 0) {
			log_warnx("vm %s: %s", vm->cfg->name,
			    journal_error(vm->j));
			return -1;
		}
		if (r == 0 || d >= vm->ndisks) {
			done = 1;
			break;
		}
		pd = &vm->disks[d];
		off = chunk * JOURNAL_CHUNK;
		if (off >= pd->size) {	/* a mark past the end: none */
			d++;
			chunk = 0;
			continue;
		}
		len = pd->size - off < (uint64_t)run * JOURNAL_CHUNK ?
		    (size_t)(pd->size - off) : (size_t)run * JOURNAL_CHUNK;
		if (pread_full(pd->fd, buf + used, len, off) != 0) {
			log_warn("vm %s: read %s", vm->cfg->name, pd->export);
			return -1;
		}
		replication__entry__init(&ents[n]);
		ents[n].seq = cb + vm->chunk_base[d] + chunk;
		ents[n].disk = d;
		ents[n].offset = off;
		ents[n].length = (uint32_t)len;
		if (all_zero(buf + used, len))
			ents[n].zero = 1;	/* the replica's data goes */
		else {
			ents[n].data.data = buf + used;
			ents[n].data.len = len;
			used += len;
		}
		entp[n] = &ents[n];
		n++;
		bytes += len;
		chunk += run;
	}
	if (n > 0) {
		w.vm = (char *)vm->cfg->name;
		w.n_entries = n;
		w.entries = entp;
		m.body_case = REPLICATION__MSG__BODY_WRITES;
		m.writes = &w;
		if (link_send(vm->link, &m, compress_of(vm)) != 0)
			return -1;
		vm->send_seq = ents[n - 1].seq + 1;
		vm->bytes_shipped += used;
		vm->data_sent += used;
	}
	if (done)
		vm->send_seq = ce + 1;
	catchup_progress(vm, cb, start, bytes);
	publish(vm);
	return 0;
}

/*
 * One step of a streaming VM: the journal up to a catch-up, its chunks,
 * the journal after them.  Returns 1 if it sent or moved, 0 if there is
 * nothing to send, -1 on error.
 */
static int
stream_next(struct pvm *vm)
{
	uint64_t last, cb, ce;

	catchup_view(vm, &last, &cb, &ce);
	if (cb && vm->send_seq > ce && vm->cu_posted != cb) {
		vm->cu_posted = cb;
		post_main(vm->d, vm, SM_CATCHUP_SENT, cb, 0);
	}
	if (cb && vm->send_seq >= cb && vm->send_seq <= ce)
		return catchup_step(vm, cb, ce) ? -1 : 1;
	if (vm->send_seq <= last) {
		int r = stream_step(vm, cb, last);

		return r < 0 ? -1 : r == 0;
	}
	/* over quota and the journal all sent: once per catch-up started,
	 * ask for the next one */
	if (__atomic_load_n(&vm->overflow, __ATOMIC_ACQUIRE) &&
	    vm->cu_requested != __atomic_load_n(&vm->cu_gen,
	    __ATOMIC_ACQUIRE) + 1) {
		vm->cu_requested = __atomic_load_n(&vm->cu_gen,
		    __ATOMIC_ACQUIRE) + 1;
		post_main(vm->d, vm, SM_CATCHUP_READY, 0, 0);
	}
	return 0;
}

/*
 * The bandwidth cap: a token bucket of data bytes (before compression),
 * refilled at `bandwidth` per second, holding at most a quarter second's
 * worth.  A frame may overdraw it; the VM then waits until it is paid.
 */
static int
bw_allows(struct pvm *vm)
{
	int64_t bw = (int64_t)vm->cfg->bandwidth, now, cap;

	if (bw <= 0)
		return 1;
	now = now_ms();
	cap = bw / 4 > 65536 ? bw / 4 : 65536;
	if (vm->bw_ms == 0)
		vm->bw_tokens = cap;
	else
		vm->bw_tokens += (now - vm->bw_ms) * bw / 1000;
	if (vm->bw_tokens > cap)
		vm->bw_tokens = cap;
	vm->bw_ms = now;
	if (vm->bw_tokens > 0)
		return 1;
	link_pump_later(vm->link, (int)((-vm->bw_tokens * 1000) / bw) + 1);
	return 0;
}

/* Fill the link's send window from its VMs, round robin. */
void
ship_pump(struct link *l)
{
	struct daemon *d = link_daemon(l);
	int progress = 1;

	if (!link_is_ready(l))
		return;
	while (progress && link_queued(l) < SHIP_WINDOW) {
		progress = 0;
		for (size_t i = 0; i < d->nvms; i++) {
			struct pvm *vm = &d->vms[i];

			uint64_t sent = vm->data_sent;

			if (vm->link != l || !link_is_ready(l) ||
			    __atomic_load_n(&vm->paused, __ATOMIC_ACQUIRE) ||
			    ((vm->phase == SHIP_SYNCING ||
			    vm->phase == SHIP_STREAMING) && !bw_allows(vm)))
				continue;
			if (vm->phase == SHIP_SYNCING) {
				if (sync_step(vm) != 0)
					return;
				progress = 1;
			} else if (vm->phase == SHIP_STREAMING) {
				int r = stream_next(vm);

				if (r < 0)
					return;
				if (r > 0)
					progress = 1;
			}
			vm->bw_tokens -= (int64_t)(vm->data_sent - sent);
		}
	}
}
