/*
 * recv.c: the DR side.  A primary's `replicad serve` (run by sshd as the
 * forced command of that primary's key) hands its stream to this daemon
 * over the control socket, as peer NAME; that peer can only replicate into
 * the storage of its own [accept NAME] section.  Frames are checked, staged
 * into the VM's recovery store, applied at each point, and acknowledged.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "daemon.h"
#include "evread.h"
#include "log.h"

#define ACK_BYTES	(64u << 20)	/* staged bytes between acks */
#define RECV_HIWAT	(64u << 20)	/* stop reading above this */

struct ann {
	struct rvm *r;
	uint64_t epoch;
	struct store_disk disks[STORE_MAX_DISKS];
	size_t ndisks;
	int refused;
};

struct rconn {
	struct daemon *d;
	struct bufferevent *bev;
	char *peer;
	const struct cfg_accept *acc;
	int hello;
	struct ann *anns;
	size_t nanns;
	int paused;		/* reading waits for a logged point's apply */
	struct rconn *next;
};

static int
safe_name(const char *s, size_t max)
{
	size_t n = strlen(s);

	if (n == 0 || n > max || s[0] == '.')
		return 0;
	for (; *s; s++)
		if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') ||
		    (*s >= '0' && *s <= '9') || *s == '-' || *s == '_' ||
		    *s == '.'))
			return 0;
	return 1;
}

/* ------------------------------------------------------------------ */
/* replica VMs */

static void apply_logged(evutil_socket_t fd, short what, void *arg);
static void settle(struct rvm *r);

static struct rvm *
rvm_add(struct daemon *d, const char *peer, const char *storage,
    const char *name, char *err, size_t errlen)
{
	struct rvm *r, **n;

	if ((r = calloc(1, sizeof(*r))) == NULL ||
	    (r->peer = strdup(peer)) == NULL ||
	    (r->name = strdup(name)) == NULL ||
	    asprintf(&r->dir, "%s/%s", storage, name) < 0) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	if (mkdir(storage, 0700) == -1 && errno != EEXIST) {
		snprintf(err, errlen, "mkdir %s: %s", storage,
		    strerror(errno));
		goto fail;
	}
	if ((r->store = store_open(r->dir, err, errlen)) == NULL)
		goto fail;
	if ((r->apply_ev = evtimer_new(d->base, apply_logged, r)) == NULL) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	if ((n = realloc(d->rvms, (d->nrvms + 1) * sizeof(*n))) == NULL) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	d->rvms = n;
	d->rvms[d->nrvms++] = r;
	return r;
fail:
	if (r) {
		if (r->apply_ev)
			event_free(r->apply_ev);
		store_close(r->store);
		free(r->peer);
		free(r->name);
		free(r->dir);
		free(r);
	}
	return NULL;
}

int
recv_open_all(struct daemon *d)
{
	char err[512];

	for (size_t i = 0; i < d->cfg.naccepts; i++) {
		const struct cfg_accept *a = &d->cfg.accepts[i];
		DIR *dir = opendir(a->storage);
		struct dirent *de;

		if (dir == NULL) {
			if (errno == ENOENT)
				continue;
			log_warn("%s: %s", __func__, a->storage);
			return -1;
		}
		while ((de = readdir(dir)) != NULL) {
			char p[4096];
			struct stat st;

			if (!safe_name(de->d_name, 64))
				continue;
			snprintf(p, sizeof(p), "%s/%s/store", a->storage,
			    de->d_name);
			if (stat(p, &st) == -1 || !S_ISDIR(st.st_mode))
				continue;
			if (recv_find(d, de->d_name)) {
				log_warnx("%s: vm %s is in two storages; "
				    "ignoring %s", __func__, de->d_name, p);
				continue;
			}
			if (rvm_add(d, a->peer, a->storage, de->d_name, err,
			    sizeof(err)) == NULL) {
				log_warnx("%s: %s", __func__, err);
				closedir(dir);
				return -1;
			}
			log_info("replica %s from %s: %s", de->d_name, a->peer,
			    store_state_name(0));
		}
		closedir(dir);
	}
	for (size_t i = 0; i < d->nrvms; i++) {
		struct store_info si;

		store_info(d->rvms[i]->store, &si);
		log_info("replica %s from %s: %s, point %llu",
		    d->rvms[i]->name, d->rvms[i]->peer,
		    store_state_name(si.state),
		    (unsigned long long)si.last_point);
	}
	return 0;
}

static void rconn_free(struct rconn *c);

void
recv_close_all(struct daemon *d)
{
	while (d->rconns)
		rconn_free(d->rconns);
	for (size_t i = 0; i < d->nrvms; i++) {
		/* a point logged ahead of its apply is applied on open */
		event_free(d->rvms[i]->apply_ev);
		store_close(d->rvms[i]->store);
		free(d->rvms[i]->peer);
		free(d->rvms[i]->name);
		free(d->rvms[i]->dir);
		free(d->rvms[i]);
	}
	free(d->rvms);
	d->rvms = NULL;
	d->nrvms = 0;
}

struct rvm *
recv_find(struct daemon *d, const char *vm)
{
	for (size_t i = 0; i < d->nrvms; i++)
		if (strcmp(d->rvms[i]->name, vm) == 0)
			return d->rvms[i];
	return NULL;
}

/* ------------------------------------------------------------------ */
/* connections */

static void
rconn_free(struct rconn *c)
{
	struct rconn **pp;

	for (pp = &c->d->rconns; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	for (size_t i = 0; i < c->d->nrvms; i++) {
		if (c->d->rvms[i]->conn == c)
			c->d->rvms[i]->conn = NULL;
		if (c->d->rvms[i]->paused == c)
			c->d->rvms[i]->paused = NULL;
	}
	if (c->bev)
		bufferevent_free(c->bev);
	free(c->anns);
	free(c->peer);
	free(c);
}

static int
send_msg(struct rconn *c, const Replication__Msg *m)
{
	char err[256];

	if (wire_queue(bufferevent_get_output(c->bev), m, NULL, err,
	    sizeof(err)) != 0) {
		log_warnx("%s: peer %s: %s", __func__, c->peer, err);
		return -1;
	}
	return 0;
}

static void
send_error(struct rconn *c, const char *vm, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
send_error(struct rconn *c, const char *vm, const char *fmt, ...)
{
	Replication__Msg m = REPLICATION__MSG__INIT;
	Replication__Error e = REPLICATION__ERROR__INIT;
	char buf[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	log_warnx("peer %s%s%s: %s", c->peer, vm ? ", vm " : "",
	    vm ? vm : "", buf);
	e.code = 1;
	e.vm = (char *)(vm ? vm : "");
	e.message = buf;
	m.body_case = REPLICATION__MSG__BODY_ERROR;
	m.error = &e;
	send_msg(c, &m);
}

static void refuse(struct rconn *c, struct ann *an);

/* Entries up to SEQ are durable, and point POINT (0: the latest applied
 * point). */
static void
ack_point(struct rconn *c, struct ann *an, uint64_t seq, uint64_t point)
{
	Replication__Msg m = REPLICATION__MSG__INIT;
	Replication__Ack a = REPLICATION__ACK__INIT;
	struct rvm *r = an->r;
	struct store_info si;

	store_info(r->store, &si);
	a.vm = r->name;
	a.seq = seq;
	a.point = point ? point : si.last_point;
	m.body_case = REPLICATION__MSG__BODY_ACK;
	m.ack = &a;
	send_msg(c, &m);
}

/* Making entries durable failed: refuse the VM, so that the primary
 * announces it again and sends what was not taken. */
static void
sync_failed(struct rconn *c, struct ann *an)
{
	log_warnx("replica %s: %s", an->r->name, store_error(an->r->store));
	refuse(c, an);
}

/* Acknowledge what is durable. */
static void
send_ack(struct rconn *c, struct ann *an)
{
	uint64_t seq;

	if (store_stage_sync(an->r->store, &seq) != 0) {
		sync_failed(c, an);
		return;
	}
	an->r->unsynced = 0;
	ack_point(c, an, seq, 0);
}

/* Acknowledge what the flusher made durable meanwhile, if anything. */
static void
ack_if_durable(struct rconn *c, struct ann *an)
{
	uint64_t seq;
	int r = store_sync_poll(an->r->store, &seq);

	if (r < 0)
		sync_failed(c, an);
	else if (r > 0)
		ack_point(c, an, seq, 0);
}

/*
 * Enough arrived since the last ack: have it made durable.  The flusher
 * syncs the images behind what it applies while this loop takes in the
 * next entries (the ack goes when it is done); what is staged instead is
 * synced here.
 */
static void
sync_soon(struct rconn *c, struct ann *an)
{
	int r = store_sync_start(an->r->store);

	if (r < 0)
		sync_failed(c, an);
	else if (r == 0)
		send_ack(c, an);
	else
		an->r->unsynced = 0;
}

static struct ann *
find_ann(struct rconn *c, const char *vm)
{
	for (size_t i = 0; i < c->nanns; i++)
		if (strcmp(c->anns[i].r->name, vm) == 0)
			return &c->anns[i];
	return NULL;
}

static int
on_announce(struct rconn *c, const Replication__VmAnnounce *a)
{
	Replication__Msg m = REPLICATION__MSG__INIT;
	Replication__VmState st = REPLICATION__VM_STATE__INIT;
	struct store_info si;
	struct ann *an;
	struct rvm *r;
	char err[512];
	uint64_t held = 0;
	int need_full;

	if (!safe_name(a->vm, 64)) {
		send_error(c, NULL, "bad vm name");
		return -1;
	}
	if (a->n_disks == 0 || a->n_disks > STORE_MAX_DISKS) {
		send_error(c, a->vm, "%zu disks; 1 to %d allowed", a->n_disks,
		    STORE_MAX_DISKS);
		return 0;
	}
	for (size_t i = 0; i < a->n_disks; i++) {
		if (!safe_name(a->disks[i]->name, 63) ||
		    a->disks[i]->size == 0 || a->disks[i]->size > (1ull << 50)) {
			send_error(c, a->vm, "bad disk %zu", i);
			return 0;
		}
		for (size_t k = 0; k < i; k++)
			if (strcmp(a->disks[i]->name, a->disks[k]->name) == 0) {
				send_error(c, a->vm, "two disks named %s",
				    a->disks[i]->name);
				return 0;
			}
	}
	if ((r = recv_find(c->d, a->vm)) != NULL &&
	    strcmp(r->peer, c->peer) != 0) {
		send_error(c, a->vm, "vm %s is replicated here from %s",
		    a->vm, r->peer);
		return 0;
	}
	if (r == NULL && (r = rvm_add(c->d, c->peer, c->acc->storage, a->vm,
	    err, sizeof(err))) == NULL) {
		send_error(c, a->vm, "%s", err);
		return 0;
	}
	if ((an = find_ann(c, a->vm)) == NULL) {
		struct ann *n = realloc(c->anns, (c->nanns + 1) * sizeof(*n));

		if (n == NULL)
			return -1;
		c->anns = n;
		an = &c->anns[c->nanns++];
	}
	memset(an, 0, sizeof(*an));
	an->r = r;
	an->epoch = a->epoch;
	an->ndisks = a->n_disks;
	for (size_t i = 0; i < a->n_disks; i++) {
		snprintf(an->disks[i].name, sizeof(an->disks[i].name), "%s",
		    a->disks[i]->name);
		an->disks[i].size = a->disks[i]->size;
	}
	r->nkeep = a->n_keep > CFG_MAX_KEEP ? CFG_MAX_KEEP : a->n_keep;
	for (size_t i = 0; i < r->nkeep; i++) {
		r->keep[i].age_ms = a->keep[i]->age_ms;
		r->keep[i].step_ms = a->keep[i]->step_ms;
	}
	r->conn = c;
	store_info(r->store, &si);
	if (si.state == STORE_COMMITTED) {
		an->refused = 1;
		send_error(c, a->vm, "vm %s was failed over to this site and "
		    "committed; replication from %s has ended", a->vm, c->peer);
		return 0;
	}
	need_full = (si.state != STORE_NORMAL &&
	    si.state != STORE_FAILEDOVER) || si.epoch != a->epoch ||
	    si.ndisks != a->n_disks;
	for (size_t i = 0; !need_full && i < a->n_disks; i++)
		if (strcmp(si.disks[i].name, a->disks[i]->name) != 0 ||
		    si.disks[i].size != a->disks[i]->size)
			need_full = 1;
	if (need_full && si.state == STORE_FAILEDOVER) {
		an->refused = 1;
		send_error(c, a->vm, "vm %s is failed over at point %llu and "
		    "needs a full copy; cancel or commit first", a->vm,
		    (unsigned long long)si.failover_point);
		return 0;
	}
	/* the primary resumes after what is held now, so entries that
	 * an error dropped come again */
	if (!need_full)
		store_resume(r->store);
	/* points staged before an apply failed (a full disk, say) are
	 * applied now, before the primary resumes after them */
	if (!need_full && ((si.state == STORE_NORMAL &&
	    store_apply(r->store) < 0) ||
	    store_stage_sync(r->store, &held) != 0)) {
		an->refused = 1;
		send_error(c, a->vm, "%s", store_error(r->store));
		return 0;
	}
	st.vm = r->name;
	st.epoch = si.epoch;
	st.applied_seq = need_full ? 0 : held;
	if (need_full && si.state == STORE_SYNCING && si.epoch == a->epoch &&
	    (si.sync_disk || si.sync_off)) {
		/* what the interrupted copy left durable stays */
		st.resume = 1;
		st.resume_disk = si.sync_disk;
		st.resume_offset = si.sync_off;
		st.resume_base = si.sync_base;
	}
	st.need_full = need_full;
	st.last_point = need_full ? 0 : si.last_point;
	m.body_case = REPLICATION__MSG__BODY_STATE;
	m.state = &st;
	log_info("replica %s: %s announced; %s", a->vm, c->peer, need_full ?
	    "needs a full copy" : "resuming");
	return send_msg(c, &m);
}

/* The announced, not refused VM a frame is about, or NULL. */
static struct ann *
ann_for(struct rconn *c, const char *vm)
{
	struct ann *an = vm ? find_ann(c, vm) : NULL;

	if (an == NULL || an->refused || an->r->conn != c)
		return NULL;
	return an;
}

static int
ensure_sync(struct ann *an, uint64_t base)
{
	struct store_info si;

	store_info(an->r->store, &si);
	/* The same copy going on (resumed or not): keep what is there.  A
	 * copy with another base starts over on a clean image: blocks it
	 * skips as zero must not keep what an earlier copy wrote. */
	if (si.state == STORE_SYNCING && si.epoch == an->epoch &&
	    store_sync_base(an->r->store) == base)
		return 0;
	log_info("replica %s: initial copy begins", an->r->name);
	if (store_begin_sync(an->r->store, an->epoch, an->disks,
	    an->ndisks) != 0)
		return -1;
	return store_sync_cursor(an->r->store, 0, 0, base);
}

static void
refuse(struct rconn *c, struct ann *an)
{
	struct statvfs sv;

	an->refused = 1;
	an->r->unsynced = 0;	/* nothing to acknowledge until announced */
	/* A full disk often surfaces as a short write (EIO): say so. */
	if (statvfs(an->r->dir, &sv) == 0 &&
	    (uint64_t)sv.f_bavail * sv.f_frsize < (64u << 20))
		send_error(c, an->r->name, "%s (the DR disk is full: %s has "
		    "%llu KiB free)", store_error(an->r->store), an->r->dir,
		    (unsigned long long)sv.f_bavail * sv.f_frsize / 1024);
	else
		send_error(c, an->r->name, "%s", store_error(an->r->store));
}

static int
on_entries(struct rconn *c, struct ann *an, Replication__Entry **ents,
    size_t n, int sync)
{
	struct jentry *je;
	uint64_t bytes = 0;

	if (n == 0)
		return 0;
	if ((je = calloc(n, sizeof(*je))) == NULL)
		return -1;
	for (size_t i = 0; i < n; i++) {
		const Replication__Entry *e = ents[i];

		if (!e->zero && e->data.len != e->length) {
			send_error(c, an->r->name, "entry %llu: %zu data "
			    "bytes for a length of %u",
			    (unsigned long long)e->seq, e->data.len,
			    e->length);
			an->refused = 1;
			free(je);
			return 0;
		}
		je[i].seq = e->seq;
		je[i].type = e->zero ? JE_ZERO : JE_WRITE;
		je[i].disk = e->disk;
		je[i].offset = e->offset;
		je[i].length = e->length;
		je[i].data = e->zero ? NULL : e->data.data;
		bytes += e->zero ? 0 : e->length;
	}
	if (sync) {
		for (size_t i = 0; i < n; i++)
			if (store_sync_write(an->r->store, je[i].disk,
			    je[i].offset, je[i].length, je[i].data) != 0) {
				refuse(c, an);
				break;
			}
	} else if (store_stage(an->r->store, je, n) != 0 ||
	    store_apply_ahead(an->r->store) != 0)
		refuse(c, an);
	free(je);
	if (!an->refused)
		an->r->unsynced += bytes;
	if (!sync && !an->refused && an->r->unsynced >= ACK_BYTES)
		sync_soon(c, an);
	if (!sync && !an->refused)
		ack_if_durable(c, an);
	return 0;
}

/* store_apply applied N points (T0: when the marker arrived): say so
 * when it was long, and drop what the grid does not keep. */
static void
points_applied(struct rvm *r, int n, int64_t t0)
{
	struct store_info si;
	int dropped;

	if (n <= 0)
		return;
	r->last_point_ms = now_ms();
	store_info(r->store, &si);
	/* the apply holds this loop: say so when it is long */
	if (r->last_point_ms - t0 >= 1000)
		log_info("replica %s: point %llu applied in %lld ms", r->name,
		    (unsigned long long)si.last_point,
		    (long long)(r->last_point_ms - t0));
	else
		log_debug("replica %s: point %llu applied in %lld ms",
		    r->name, (unsigned long long)si.last_point,
		    (long long)(r->last_point_ms - t0));
	if (store_retain(r->store, r->keep, r->nkeep, now_ms(),
	    &dropped) != 0)
		log_warnx("replica %s: retention: %s", r->name,
		    store_error(r->store));
}

static void read_cb(struct bufferevent *bev, void *arg);

/* Apply the point logged ahead of its apply (on_point); before anything
 * looks at R's points too (reading resumes only on the loop's turn, so
 * that no newer point arrives meanwhile). */
static void
settle(struct rvm *r)
{
	struct rconn *c = r->conn;
	struct ann *an = c ? find_ann(c, r->name) : NULL;
	int n;

	if (!r->apply_pending)
		return;
	r->apply_pending = 0;
	if ((n = store_apply(r->store)) < 0) {
		if (an != NULL)
			refuse(c, an);
		else
			log_warnx("replica %s: %s", r->name,
			    store_error(r->store));
	} else {
		points_applied(r, n, r->apply_t0);
		/* the primary learns the point is applied (its last_point) */
		if (an != NULL && !an->refused)
			send_ack(c, an);
	}
}

/* The loop's turn after a logged point's ack: apply it, then read on
 * the connection that paused (the VM may have moved to another). */
static void
apply_logged(evutil_socket_t fd, short what, void *arg)
{
	struct rvm *r = arg;
	struct rconn *c;

	(void)fd;
	(void)what;
	settle(r);
	if ((c = r->paused) != NULL) {
		r->paused = NULL;
		c->paused = 0;
		bufferevent_enable(c->bev, EV_READ);
		read_cb(c->bev, c);
	}
}

static int
on_point(struct rconn *c, struct ann *an, const Replication__Point *p)
{
	static const struct timeval at_once = { 0, 0 };
	struct jentry e;
	int64_t t0;
	int n;

	memset(&e, 0, sizeof(e));
	e.type = JE_POINT;
	e.seq = p->seq;
	e.point_id = p->id;
	e.time_ms = p->time_ms;
	e.kind = p->kind <= REPLICATION__POINT_KIND__APP ?
	    (enum point_kind)p->kind : POINT_CRASH;
	snprintf(e.label, sizeof(e.label), "%s", p->label ? p->label : "");
	t0 = now_ms();
	/*
	 * Entries of the interval still wait in memory: the point is made
	 * durable by logging them with the marker (a sequential write and
	 * a sync) and acknowledged at once; the apply, which reads and
	 * writes 4 KiB blocks all over the images, follows on the loop's
	 * next turn, after the ack went out.  The stream waits for it.
	 */
	if ((n = store_log_point(an->r->store, &e)) < 0) {
		refuse(c, an);
		return 0;
	}
	if (n > 0) {
		log_debug("replica %s: point %llu logged in %lld ms",
		    an->r->name, (unsigned long long)p->id,
		    (long long)(now_ms() - t0));
		an->r->unsynced = 0;
		ack_point(c, an, store_held_seq(an->r->store), p->id);
		an->r->apply_pending = 1;
		an->r->apply_t0 = t0;
		evtimer_add(an->r->apply_ev, &at_once);
		an->r->paused = c;
		c->paused = 1;
		return WIRE_PAUSE;
	}
	if (store_stage(an->r->store, &e, 1) != 0 ||
	    (n = store_apply(an->r->store)) < 0) {
		refuse(c, an);
		return 0;
	}
	points_applied(an->r, n, t0);
	send_ack(c, an);
	return 0;
}

static int
on_frame(Replication__Msg *m, void *arg)
{
	struct rconn *c = arg;
	struct ann *an;

	if (!c->hello) {
		Replication__Msg w = REPLICATION__MSG__INIT;
		Replication__Welcome wel = REPLICATION__WELCOME__INIT;

		if (m->body_case != REPLICATION__MSG__BODY_HELLO) {
			send_error(c, NULL, "expected hello");
			return -1;
		}
		if (m->hello->protocol != PROTOCOL_VERSION) {
			send_error(c, NULL, "protocol %u not spoken here (%u)",
			    m->hello->protocol, PROTOCOL_VERSION);
			return -1;
		}
		if (strcmp(m->hello->site, c->peer) != 0) {
			send_error(c, NULL, "site '%s' uses the key of peer "
			    "'%s'", m->hello->site, c->peer);
			return -1;
		}
		c->hello = 1;
		wel.protocol = PROTOCOL_VERSION;
		wel.site = c->d->cfg.site_name;
		w.body_case = REPLICATION__MSG__BODY_WELCOME;
		w.welcome = &wel;
		log_info("peer %s: connected", c->peer);
		return send_msg(c, &w);
	}
	switch (m->body_case) {
	case REPLICATION__MSG__BODY_ANNOUNCE:
		return on_announce(c, m->announce);
	case REPLICATION__MSG__BODY_SYNC:
		if ((an = ann_for(c, m->sync->vm)) == NULL)
			return 0;
		if (ensure_sync(an, m->sync->base_seq) != 0) {
			refuse(c, an);
			return 0;
		}
		store_sync_progress(an->r->store, m->sync->done_bytes,
		    m->sync->total_bytes);
		an->r->last_recv_ms = now_ms();
		if (on_entries(c, an, m->sync->blocks, m->sync->n_blocks,
		    1) != 0)
			return -1;
		if (!an->refused)
			store_sync_cursor(an->r->store, m->sync->cursor_disk,
			    m->sync->cursor_offset, m->sync->base_seq);
		return 0;
	case REPLICATION__MSG__BODY_SYNC_DONE:
		if ((an = ann_for(c, m->sync_done->vm)) == NULL)
			return 0;
		if (ensure_sync(an, m->sync_done->base_seq) != 0 ||
		    store_sync_done(an->r->store, m->sync_done->base_seq) != 0)
			refuse(c, an);
		else
			log_info("replica %s: initial copy complete",
			    an->r->name);
		return 0;
	case REPLICATION__MSG__BODY_WRITES:
		if ((an = ann_for(c, m->writes->vm)) == NULL)
			return 0;
		an->r->last_recv_ms = now_ms();
		return on_entries(c, an, m->writes->entries,
		    m->writes->n_entries, 0);
	case REPLICATION__MSG__BODY_POINT:
		if ((an = ann_for(c, m->point->vm)) == NULL)
			return 0;
		return on_point(c, an, m->point);
	default:
		send_error(c, NULL, "unexpected %s message",
		    frame_type_name(m->body_case));
		return -1;
	}
}

static void
event_cb(struct bufferevent *bev, short what, void *arg)
{
	struct rconn *c = arg;

	(void)bev;
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR)) {
		log_info("peer %s: disconnected", c->peer);
		rconn_free(c);
	}
}

static void
drained_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	rconn_free(arg);
}

/* Stop reading; close once what is queued (an error) has gone out. */
static void
close_after_flush(struct rconn *c)
{
	for (size_t i = 0; i < c->d->nrvms; i++) {
		if (c->d->rvms[i]->conn == c)
			c->d->rvms[i]->conn = NULL;
		if (c->d->rvms[i]->paused == c)
			c->d->rvms[i]->paused = NULL;
	}
	bufferevent_disable(c->bev, EV_READ);
	bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
	bufferevent_setcb(c->bev, NULL, drained_cb, event_cb, c);
	if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
		rconn_free(c);
}

static void
read_cb(struct bufferevent *bev, void *arg)
{
	struct rconn *c = arg;
	char err[256];

	if (c->paused)
		return;
	bev_read_more(bev, RECV_HIWAT);
	if (wire_drain(bufferevent_get_input(bev), on_frame, c, err,
	    sizeof(err)) != 0) {
		if (err[0])
			send_error(c, NULL, "%s", err);
		close_after_flush(c);
	} else if (c->paused) {
		bufferevent_disable(bev, EV_READ);
	}
}

void
recv_adopt(struct daemon *d, struct bufferevent *bev, const char *peer)
{
	struct rconn *c = calloc(1, sizeof(*c));

	if (c == NULL || (c->peer = strdup(peer)) == NULL) {
		free(c);
		bufferevent_free(bev);
		return;
	}
	c->d = d;
	c->bev = bev;
	c->next = d->rconns;
	d->rconns = c;
	if ((c->acc = config_accept(&d->cfg, peer)) == NULL) {
		send_error(c, NULL, "site %s accepts no replication from '%s'",
		    d->cfg.site_name, peer);
		bufferevent_enable(bev, EV_WRITE);
		close_after_flush(c);
		return;
	}
	bufferevent_setwatermark(bev, EV_READ, 0, RECV_HIWAT);
	bufferevent_setcb(bev, read_cb, NULL, event_cb, c);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
	if (evbuffer_get_length(bufferevent_get_input(bev)) > 0)
		read_cb(bev, c);
}

/* Once a second: acknowledge what was staged since the last ack. */
void
recv_tick(struct daemon *d, int64_t now)
{
	(void)now;
	for (size_t i = 0; i < d->nrvms; i++) {
		struct rvm *r = d->rvms[i];
		struct store_info si;

		store_info(r->store, &si);
		if (si.state == STORE_SYNCING) {
			/* the copy so far survives a drop or a crash */
			if (store_sync_checkpoint(r->store) != 0)
				log_warnx("replica %s: %s", r->name,
				    store_error(r->store));
			r->unsynced = 0;
		} else if (r->conn) {
			struct ann *an = find_ann(r->conn, r->name);

			if (an == NULL || an->refused)
				continue;
			/* while the flusher is busy the stream is still
			 * coming: its next sync mark acknowledges it, and a
			 * blocking ack here would stop this loop reading for
			 * as long as the flusher takes (100-250 ms seen in the
			 * 5% cycle, the stream stalled behind it) */
			if (r->unsynced > 0 && !store_flushing(r->store))
				send_ack(r->conn, an);
			else
				ack_if_durable(r->conn, an);
		}
	}
}

/* ------------------------------------------------------------------ */
/* reports and commands */

json_t *
recv_status_json(struct rvm *r, int64_t now)
{
	struct store_info si;
	struct store_point p;
	double lag = 0;
	const char *health = "normal";
	json_t *o;

	settle(r);
	store_info(r->store, &si);
	if (si.last_point && store_find_point(r->store, si.last_point, &p) == 1)
		lag = (double)(now - p.time_ms) / 1000.0;
	if (si.state == STORE_NEW || si.state == STORE_SYNCING ||
	    r->conn == NULL)
		health = "warning";
	if (si.state == STORE_FAILEDOVER || si.state == STORE_COMMITTED)
		health = "normal";
	o = json_pack("{s:s,s:s,s:s,s:s,s:f,s:I,s:I,s:s,s:b,s:I}",
	    "name", r->name, "role", "replica",
	    "state", si.state == STORE_SYNCING ? "initial-copy" :
	    store_state_name(si.state),
	    "health", health, "lag_seconds", lag < 0 ? 0.0 : lag,
	    "last_point", (json_int_t)si.last_point,
	    "journal_bytes", (json_int_t)store_staged_bytes(r->store),
	    "peer", r->peer, "connected", r->conn != NULL,
	    "applied_seq", (json_int_t)si.applied_seq);
	if (si.state == STORE_SYNCING)
		json_object_set_new(o, "initial_copy", json_pack(
		    "{s:I,s:I,s:f}", "done", (json_int_t)si.sync_done,
		    "total", (json_int_t)si.sync_total, "percent",
		    si.sync_total ? 100.0 * (double)si.sync_done /
		    (double)si.sync_total : 0.0));
	if (si.state == STORE_FAILEDOVER)
		json_object_set_new(o, "failover_point",
		    json_integer((json_int_t)si.failover_point));
	return o;
}

static int
point_row(const struct store_point *p, void *arg)
{
	json_t *a = arg;
	char t[40];

	format_time(p->time_ms, t, sizeof(t));
	json_array_append_new(a, json_pack("{s:I,s:s,s:s,s:I,s:s}",
	    "id", (json_int_t)p->id, "time", t, "kind",
	    point_kind_name(p->kind), "bytes", (json_int_t)p->bytes,
	    "label", p->label));
	return 0;
}

json_t *
recv_points_json(struct rvm *r)
{
	json_t *a = json_array();

	settle(r);
	store_points(r->store, point_row, a);
	return json_pack("{s:s,s:o}", "vm", r->name, "points", a);
}

json_t *
recv_failover(struct rvm *r, const char *point, char *err, size_t errlen)
{
	struct store_info si;
	uint64_t id = 0;
	json_t *disks;
	char *end;

	settle(r);
	if (strcmp(point, "latest") != 0) {
		errno = 0;
		id = strtoull(point, &end, 10);
		if (errno || *end || end == point || id == 0) {
			snprintf(err, errlen, "bad point '%s': a point id or "
			    "'latest'", point);
			return NULL;
		}
	}
	if (store_failover(r->store, id) != 0) {
		snprintf(err, errlen, "%s", store_error(r->store));
		return NULL;
	}
	store_info(r->store, &si);
	disks = json_array();
	for (size_t i = 0; i < si.ndisks; i++)
		json_array_append_new(disks, json_pack("{s:s,s:s}", "name",
		    si.disks[i].name, "path", store_disk_path(r->store, i)));
	log_info("replica %s: failed over to point %llu", r->name,
	    (unsigned long long)si.failover_point);
	return json_pack("{s:b,s:s,s:I,s:o,s:n}", "ok", 1, "vm", r->name,
	    "point", (json_int_t)si.failover_point, "disks", disks, "memory");
}

int
recv_cancel(struct rvm *r, char *err, size_t errlen)
{
	settle(r);
	if (store_cancel(r->store) != 0) {
		snprintf(err, errlen, "%s", store_error(r->store));
		return -1;
	}
	log_info("replica %s: failover cancelled; replication resumes",
	    r->name);
	return 0;
}

int
recv_commit(struct rvm *r, char *err, size_t errlen)
{
	settle(r);
	if (store_commit(r->store) != 0) {
		snprintf(err, errlen, "%s", store_error(r->store));
		return -1;
	}
	log_info("replica %s: failover committed", r->name);
	return 0;
}
