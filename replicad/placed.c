/*
 * placed.c: large writes written once.
 *
 * A write of PL_MIN bytes or more, 64 KiB-aligned, is journaled as placed
 * entries, one per 64 KiB piece: the entry names the piece, and the image
 * writer puts the data into the image, as it does every write.  The data
 * is not written to the journal's data log, so the disk takes it once.
 * Shipping reads it back from the image.  Three rules keep that exact:
 *
 *  - Copy on write.  A placed entry's data is the piece as its interval
 *    (up to the next point) left it.  A later write in the same interval
 *    may land over it: the entry then ships that write's bytes, and the
 *    later entry, shipped after it in the same interval, sets them anyway.
 *    A write in a later interval may not: before it is journaled, the
 *    piece is read from the image and the placed entry becomes an
 *    ordinary write entry with that data (journal_convert), in the same
 *    transaction.
 *  - The shipper reads a piece only once the image writer has written it
 *    (written_seq), and under pl_mu, only if no copy began since its
 *    journal snapshot did (pl_gen): a copy moves pl_gen when it starts,
 *    and again after its commit, before the image writer may take the
 *    write that follows it.  Otherwise it reads the journal again.
 *  - Replay.  After a crash, entries after the image's durable mark
 *    (JM_APPLIED) are written into the images again, but placed ones
 *    are not: their data is in the image.  An older entry with data,
 *    replayed, would land over a newer placed one, so a write is placed
 *    only where no entry with data after the mark lies in the same 1 MiB
 *    region (np_seq).
 *
 * A piece's entries of one interval are all superseded by the newest,
 * which pl maps the piece to; only that one is copied.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon.h"
#include "fileio.h"
#include "log.h"

#define NP_REGION_SHIFT	20	/* np_seq: 1 MiB regions */
#define PL_WINDOW	(1u << 20)	/* the shipper reads this much at once */

struct pl_ent {
	uint64_t key;		/* disk << 48 | piece */
	uint64_t seq;		/* 0: an empty slot */
	uint64_t epoch;		/* points cut before it */
};

struct pl_undo {
	uint64_t key;
	struct pl_ent old;
	int had;
};

static uint64_t
pl_key(uint32_t disk, uint64_t piece)
{
	return (uint64_t)disk << 48 | piece;
}

static size_t
pl_hash(uint64_t k)
{
	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdULL;
	k ^= k >> 33;
	return (size_t)k;
}

static struct pl_ent *
map_find(struct pl_map *m, uint64_t key)
{
	size_t mask = m->cap - 1;

	if (m->n == 0)
		return NULL;
	for (size_t i = pl_hash(key) & mask;; i = (i + 1) & mask) {
		if (m->t[i].seq == 0)
			return NULL;
		if (m->t[i].key == key)
			return &m->t[i];
	}
}

/* Set KEY; room for it must be there (map_reserve). */
static void
map_set(struct pl_map *m, uint64_t key, uint64_t seq, uint64_t epoch)
{
	size_t mask = m->cap - 1, i;

	for (i = pl_hash(key) & mask; m->t[i].seq != 0 &&
	    m->t[i].key != key; i = (i + 1) & mask)
		;
	if (m->t[i].seq == 0)
		m->n++;
	m->t[i] = (struct pl_ent){ key, seq, epoch };
}

/* Room for N entries at most three quarters full. */
static int
map_reserve(struct pl_map *m, size_t n)
{
	struct pl_ent *t, *old = m->t;
	size_t cap = m->cap ? m->cap : 1024, ocap = m->cap;

	while (n * 4 > cap * 3)
		cap *= 2;
	if (cap == m->cap)
		return 0;
	if ((t = calloc(cap, sizeof(*t))) == NULL)
		return -1;
	m->t = t;
	m->cap = cap;
	m->n = 0;
	for (size_t i = 0; i < ocap; i++)
		if (old[i].seq)
			map_set(m, old[i].key, old[i].seq, old[i].epoch);
	free(old);
	return 0;
}

/* Delete the entry in slot I, shifting the ones probed past it back. */
static void
map_del_at(struct pl_map *m, size_t i)
{
	size_t mask = m->cap - 1, j = i;

	for (;;) {
		size_t k;

		j = (j + 1) & mask;
		if (m->t[j].seq == 0)
			break;
		k = pl_hash(m->t[j].key) & mask;
		/* the entry at j stays if its home lies in (i, j] */
		if (i <= j ? (i < k && k <= j) : (i < k || k <= j))
			continue;
		m->t[i] = m->t[j];
		i = j;
	}
	m->t[i].seq = 0;
	m->n--;
}

static void
map_del(struct pl_map *m, uint64_t key)
{
	struct pl_ent *e = map_find(m, key);

	if (e)
		map_del_at(m, (size_t)(e - m->t));
}

static int
undo_reserve(struct pvm *vm, size_t more)
{
	size_t cap = vm->cappl_undo ? vm->cappl_undo : 64;
	struct pl_undo *u;

	while (cap < vm->npl_undo + more)
		cap *= 2;
	if (cap == vm->cappl_undo)
		return 0;
	if ((u = realloc(vm->pl_undo, cap * sizeof(*u))) == NULL)
		return -1;
	vm->pl_undo = u;
	vm->cappl_undo = cap;
	return 0;
}

static void
undo_push(struct pvm *vm, uint64_t key)
{
	struct pl_ent *e = map_find(&vm->pl, key);
	struct pl_undo *u = &vm->pl_undo[vm->npl_undo++];

	u->key = key;
	u->had = e != NULL;
	if (e)
		u->old = *e;
}

static void
gen_bump(struct pvm *vm)
{
	pthread_mutex_lock(&vm->pl_mu);
	__atomic_store_n(&vm->pl_gen, vm->pl_gen + 1, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&vm->pl_mu);
}

struct load {
	struct pvm *vm;
	int oom;
};

static int
load_one(const struct jentry *e, void *arg)
{
	struct load *l = arg;
	struct pvm *vm = l->vm;

	if (e->type == JE_POINT)
		vm->pl_epoch++;
	else if (e->type == JE_PLACED) {
		if (map_reserve(&vm->pl, vm->pl.n + 1) != 0) {
			l->oom = 1;	/* a piece left out would not be
					 * copied before a later write */
			return 1;
		}
		map_set(&vm->pl, pl_key(e->disk, e->offset / PL_PIECE),
		    e->seq, vm->pl_epoch);
	}
	return 0;
}

/* After the replay on open: the journal's placed entries, and buffers. */
int
pl_open(struct pvm *vm)
{
	uint64_t first = journal_first_seq(vm->j);
	struct load l = { vm, 0 };

	if (pthread_mutex_init(&vm->pl_mu, NULL) != 0)
		return -1;
	vm->pl_mu_init = 1;
	vm->applied_mark = journal_get(vm->j, JM_APPLIED);
	if ((vm->pl_buf = malloc(PL_PIECE)) == NULL ||
	    posix_memalign((void **)&vm->ship_win, 4096, PL_WINDOW) != 0)
		return -1;
	for (size_t i = 0; i < vm->ndisks; i++) {
		size_t n = (size_t)((vm->disks[i].size +
		    (1u << NP_REGION_SHIFT) - 1) >> NP_REGION_SHIFT);

		if ((vm->np_seq[i] = calloc(n ? n : 1, 8)) == NULL)
			return -1;
	}
	if (first && journal_scan(vm->j, first, load_one, &l) < 0) {
		log_warnx("vm %s: placed writes: %s", vm->cfg->name,
		    journal_error(vm->j));
		return -1;
	}
	if (l.oom) {
		log_warnx("vm %s: out of memory for the map of placed writes",
		    vm->cfg->name);
		return -1;
	}
	if (vm->pl.n)
		log_info("vm %s: %zu placed 64 KiB pieces in the journal",
		    vm->cfg->name, vm->pl.n);
	return 0;
}

void
pl_close(struct pvm *vm)
{
	free(vm->pl.t);
	vm->pl.t = NULL;
	vm->pl.n = vm->pl.cap = 0;
	free(vm->pl_undo);
	vm->pl_undo = NULL;
	free(vm->pl_buf);
	free(vm->ship_win);
	vm->ship_win = NULL;
	for (size_t i = 0; i < MAX_DISKS; i++)
		free(vm->np_seq[i]);
	if (vm->pl_mu_init)
		pthread_mutex_destroy(&vm->pl_mu);
	vm->pl_mu_init = 0;
}

int
pl_sealed_overlap(struct pvm *vm, uint32_t disk, uint64_t off, uint64_t len)
{
	if (vm->pl.n == 0 || len == 0)
		return 0;
	for (uint64_t p = off / PL_PIECE; p <= (off + len - 1) / PL_PIECE;
	    p++) {
		struct pl_ent *e = map_find(&vm->pl, pl_key(disk, p));

		if (e && e->epoch < vm->pl_epoch)
			return 1;
	}
	return 0;
}

int
pl_before_write(struct pvm *vm, uint32_t disk, uint64_t off, uint64_t len)
{
	struct pdisk *pd = &vm->disks[disk];

	if (!pl_sealed_overlap(vm, disk, off, len))
		return 0;
	for (uint64_t p = off / PL_PIECE; p <= (off + len - 1) / PL_PIECE;
	    p++) {
		uint64_t key = pl_key(disk, p);
		struct pl_ent *e = map_find(&vm->pl, key), ent;
		uint64_t *np = &vm->np_seq[disk][(p * PL_PIECE) >>
		    NP_REGION_SHIFT];

		if (e == NULL || e->epoch >= vm->pl_epoch)
			continue;
		ent = *e;
		if (ent.seq > journal_last_seq(vm->j)) {
			log_warnx("vm %s: placed entry %llu of %s is not "
			    "committed", vm->cfg->name,
			    (unsigned long long)ent.seq, pd->export);
			return -1;
		}
		/* the piece as the entry's interval left it */
		if (__atomic_load_n(&vm->written_seq, __ATOMIC_ACQUIRE) <
		    ent.seq)
			iw_drain(vm);
		if (iw_broken(vm))
			return -1;
		if (pread_full(pd->fd, vm->pl_buf, PL_PIECE, p * PL_PIECE)) {
			log_warn("vm %s: read %s for a copy", vm->cfg->name,
			    pd->export);
			return -1;
		}
		if (undo_reserve(vm, 1) != 0) {
			log_warnx("vm %s: out of memory", vm->cfg->name);
			return -1;
		}
		gen_bump(vm);
		vm->pl_copied = 1;
		if (journal_convert(vm->j, ent.seq, disk, p * PL_PIECE,
		    PL_PIECE, vm->pl_buf) != 0) {
			log_warnx("vm %s: %s", vm->cfg->name,
			    journal_error(vm->j));
			return -1;
		}
		undo_push(vm, key);
		map_del(&vm->pl, key);
		/* replayable data now: no placing over it until applied */
		if (*np < ent.seq)
			*np = ent.seq;
	}
	return 0;
}

int
pl_can_place(struct pvm *vm, uint32_t disk, uint64_t off, uint64_t len)
{
	const uint64_t *np = vm->np_seq[disk];

	if (vm->overflow || len < PL_MIN || off % PL_PIECE ||
	    len % PL_PIECE || np == NULL)
		return 0;
	for (uint64_t r = off >> NP_REGION_SHIFT;
	    r <= (off + len - 1) >> NP_REGION_SHIFT; r++)
		if (np[r] > vm->applied_mark)
			return 0;
	return map_reserve(&vm->pl, vm->pl.n + len / PL_PIECE) == 0 &&
	    undo_reserve(vm, len / PL_PIECE) == 0;
}

/* A placed entry went into the open transaction (pl_can_place made room). */
void
pl_placed(struct pvm *vm, uint32_t disk, uint64_t off, uint64_t seq)
{
	uint64_t key = pl_key(disk, off / PL_PIECE);

	undo_push(vm, key);
	map_set(&vm->pl, key, seq, vm->pl_epoch);
	vm->img_unsynced = 1;	/* its data is in the image only */
}

/* An entry with data, or a zeroing, went into the open transaction. */
void
pl_journaled(struct pvm *vm, uint32_t disk, uint64_t off, uint64_t len,
    uint64_t seq)
{
	uint64_t *np = vm->np_seq[disk];

	if (np == NULL || len == 0)
		return;
	for (uint64_t r = off >> NP_REGION_SHIFT;
	    r <= (off + len - 1) >> NP_REGION_SHIFT; r++)
		np[r] = seq;
}

void
pl_point(struct pvm *vm)
{
	vm->pl_epoch++;
}

void
pl_committed(struct pvm *vm)
{
	if (vm->pl_copied)
		gen_bump(vm);
	vm->pl_copied = 0;
	vm->npl_undo = 0;
}

/* The open transaction was given up: pl as before it. */
void
pl_aborted(struct pvm *vm)
{
	while (vm->npl_undo > 0) {
		struct pl_undo *u = &vm->pl_undo[--vm->npl_undo];

		if (u->had)	/* within the room it had before */
			map_set(&vm->pl, u->key, u->old.seq, u->old.epoch);
		else
			map_del(&vm->pl, u->key);
	}
	if (vm->pl_copied)
		gen_bump(vm);
	vm->pl_copied = 0;
}

/* Entries up to UPTO left the journal. */
void
pl_trimmed(struct pvm *vm, uint64_t upto)
{
	for (size_t i = 0; i < vm->pl.cap && vm->pl.n > 0; i++)
		/* a deletion may shift a later entry into slot i */
		while (vm->pl.t[i].seq != 0 && vm->pl.t[i].seq <= upto)
			map_del_at(&vm->pl, i);
}

uint64_t
pl_ship_begin(struct pvm *vm)
{
	vm->win_len = 0;
	return __atomic_load_n(&vm->pl_gen, __ATOMIC_ACQUIRE);
}

/*
 * The shipper reads a window of up to PL_WINDOW bytes from the entry's
 * piece on (through the page cache: its read-ahead overlaps the disk with
 * the shipping; reads around it were slower here).  Later entries of the
 * same batch take their piece from the window if the writer had written
 * them before the read: what the read saw of them is what a read of
 * their own would have seen, since no copy began in between (pl_gen).
 */
int
pl_ship_read(struct pvm *vm, const struct jentry *e, uint64_t gen,
    const uint8_t **data)
{
	const struct pdisk *pd;
	uint64_t ws, len;
	int r;

	if (e->disk >= vm->ndisks || e->length != PL_PIECE ||
	    e->offset % PL_PIECE || e->offset > vm->disks[e->disk].size ||
	    e->length > vm->disks[e->disk].size - e->offset) {
		log_warnx("vm %s: placed entry %llu names disk %u at %llu, "
		    "%u bytes", vm->cfg->name, (unsigned long long)e->seq,
		    e->disk, (unsigned long long)e->offset, e->length);
		return -1;
	}
	pd = &vm->disks[e->disk];
	if (vm->win_len && e->disk == vm->win_disk &&
	    e->offset >= vm->win_off && e->seq <= vm->win_ws &&
	    e->offset + e->length <= vm->win_off + vm->win_len) {
		*data = vm->ship_win + (e->offset - vm->win_off);
		return 0;
	}
	if ((ws = __atomic_load_n(&vm->written_seq, __ATOMIC_SEQ_CST)) <
	    e->seq) {
		__atomic_store_n(&vm->iw_wake_ship, 1, __ATOMIC_SEQ_CST);
		if ((ws = __atomic_load_n(&vm->written_seq,
		    __ATOMIC_SEQ_CST)) < e->seq)
			return 2;
	}
	len = pd->size - e->offset < PL_WINDOW ? pd->size - e->offset :
	    PL_WINDOW;
	pthread_mutex_lock(&vm->pl_mu);
	if (vm->pl_gen != gen) {
		pthread_mutex_unlock(&vm->pl_mu);
		return 1;
	}
	r = pread_full(pd->fd, vm->ship_win, (size_t)len, e->offset);
	pthread_mutex_unlock(&vm->pl_mu);
	if (r != 0) {
		vm->win_len = 0;
		log_warn("vm %s: read %s for entry %llu", vm->cfg->name,
		    pd->export, (unsigned long long)e->seq);
		return -1;
	}
	vm->win_disk = e->disk;
	vm->win_off = e->offset;
	vm->win_len = (uint32_t)len;
	vm->win_ws = ws;
	*data = vm->ship_win;
	return 0;
}
