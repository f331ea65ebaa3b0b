/*
 * imgw.c: the primary's image writer (daemon.h, struct pvm): a thread per
 * VM that writes committed journal entries into the images while the
 * main thread takes the next requests, and syncs the images when main
 * asks.  Main hands each commit's writes over (iw_queue), waits for the
 * queue to drain before it reads or writes an image itself (iw_drain),
 * and learns how far the images go from written_seq and synced_seq.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon.h"
#include "dio.h"
#include "fileio.h"
#include "log.h"

/* ------------------------------------------------------------------ */
/* images */

int
img_sync(struct pvm *vm)
{
	for (size_t i = 0; i < vm->ndisks; i++)
		if (fdatasync(vm->disks[i].fd) == -1) {
			log_warn("%s: sync %s", __func__, vm->cfg->disks[i].path);
			return -1;
		}
	return 0;
}

/* ------------------------------------------------------------------ */
/* the image writer */

#define IW_MAX_BYTES	(64u << 20)	/* queued before main waits */
#define IW_DEPTH	32		/* image writes in flight at once */
#define IW_DIRECT_MAX	(64u << 20)	/* every write around the cache */

/*
 * The writer syncs the images when main asks (for a trim): what it had
 * written before the sync becomes synced_seq.  Main's event loop never
 * waits for the images' writeback.  Called and returns with iw_mu held.
 */
static void
iw_sync(struct pvm *vm)
{
	uint64_t s = __atomic_load_n(&vm->written_seq, __ATOMIC_ACQUIRE);
	int ok = 0;

	vm->iw_sync_want = 0;
	pthread_mutex_unlock(&vm->iw_mu);
	if (!__atomic_load_n(&vm->iw_failed, __ATOMIC_ACQUIRE)) {
		if (img_sync(vm) == 0)
			ok = 1;
		else	/* writeback lost data: the journal has it */
			__atomic_store_n(&vm->iw_failed, 1,
			    __ATOMIC_RELEASE);
	}
	pthread_mutex_lock(&vm->iw_mu);
	/* main may have synced further meanwhile (enter_overflow) */
	if (ok && s > vm->synced_seq)
		__atomic_store_n(&vm->synced_seq, s, __ATOMIC_RELEASE);
}

/* Main synced the images itself with the writer drained: the applied
 * mark it writes must stay the floor of every later one (a trim). */
void
iw_synced(struct pvm *vm)
{
	if (!vm->iw_started)
		return;
	pthread_mutex_lock(&vm->iw_mu);
	if (vm->written_seq > vm->synced_seq)
		__atomic_store_n(&vm->synced_seq, vm->written_seq,
		    __ATOMIC_RELEASE);
	pthread_mutex_unlock(&vm->iw_mu);
}

static void
iw_fail(struct pvm *vm, const struct pdisk *pd)
{
	log_warn("vm %s: write %s (the journal keeps the data of writes it "
	    "logged, and a restart writes it again; of large writes it "
	    "keeps only where they went, and the DR site gets what the "
	    "image holds)", vm->cfg->name, pd ? pd->export : "the images");
	__atomic_store_n(&vm->iw_failed, 1, __ATOMIC_RELEASE);
}

/* Wait for the writes queued around the page cache (iw_write). */
static void
iw_wait(struct pvm *vm)
{
	const struct pdisk *pd = NULL;
	int fd;

	if (vm->iw_dio == NULL || dio_wait(vm->iw_dio, &fd) == 0)
		return;
	for (size_t i = 0; i < vm->ndisks; i++)
		if (vm->disks[i].fd == fd)
			pd = &vm->disks[i];
	iw_fail(vm, pd);
}

/* Write OP into its image: many writes at once around the page cache
 * where the image allows it (dio.h), in effect one by one in order; the
 * data stays until iw_wait.  Returns the bytes of data. */
static uint64_t
iw_write(struct pvm *vm, const struct pop *op)
{
	struct pdisk *pd = &vm->disks[op->disk];
	int r;

	if (__atomic_load_n(&vm->iw_failed, __ATOMIC_ACQUIRE))
		return op->data ? op->len : 0;
	if (op->data == NULL) {
		iw_wait(vm);
		r = zero_range(pd->fd, op->off, op->len);
	} else if (vm->iw_dio != NULL) {
		r = dio_pwrite(vm->iw_dio, pd->dfd, pd->fd, op->data, op->len,
		    op->off);
	} else {
		r = pwrite_full(pd->fd, op->data, op->len, op->off);
	}
	if (r != 0)
		iw_fail(vm, pd);
	return op->data ? op->len : 0;
}

static void *
iw_main(void *arg)
{
	struct pvm *vm = arg;
	struct pop *q = NULL;
	size_t n = 0, cap = 0;
	char name[16];

	/* "iw/VM" as top -H shows it (15 bytes at most) */
	snprintf(name, sizeof(name), "iw/%s", vm->cfg->name);
	(void)pthread_setname_np(pthread_self(), name);

	pthread_mutex_lock(&vm->iw_mu);
	for (;;) {
		uint64_t seq, bytes = 0;
		struct pop *t;
		size_t tc;

		while (vm->iw_n == 0 && !vm->iw_stop && !vm->iw_sync_want)
			pthread_cond_wait(&vm->iw_work, &vm->iw_mu);
		if (vm->iw_sync_want) {
			/* between batches, so that a steady stream of
			 * writes does not hold it off */
			iw_sync(vm);
			continue;
		}
		if (vm->iw_n == 0)
			break;
		/* take the whole queue; main fills the other array */
		t = q;
		tc = cap;
		q = vm->iw_q;
		n = vm->iw_n;
		cap = vm->iw_cap;
		vm->iw_q = t;
		vm->iw_cap = tc;
		vm->iw_n = 0;
		seq = vm->iw_target;
		vm->iw_busy = 1;
		pthread_mutex_unlock(&vm->iw_mu);
		for (size_t i = 0; i < n; i++)
			bytes += iw_write(vm, &q[i]);
		iw_wait(vm);
		for (size_t i = 0; i < n; i++)
			free(q[i].data);
		pthread_mutex_lock(&vm->iw_mu);
		vm->iw_busy = 0;
		vm->iw_bytes -= bytes;
		/* what was committed after the batch, with nothing queued,
		 * is in the images as well */
		if (vm->iw_n == 0)
			seq = vm->iw_target;
		if (!__atomic_load_n(&vm->iw_failed, __ATOMIC_ACQUIRE)) {
			__atomic_store_n(&vm->written_seq, seq,
			    __ATOMIC_SEQ_CST);
			/* the shipper waits for a placed write's data */
			if (__atomic_exchange_n(&vm->iw_wake_ship, 0,
			    __ATOMIC_SEQ_CST) && vm->link)
				link_wake(vm->link);
		}
		if (vm->iw_n == 0)
			__atomic_store_n(&vm->iw_pending, 0, __ATOMIC_RELEASE);
		pthread_cond_broadcast(&vm->iw_idle);
	}
	pthread_mutex_unlock(&vm->iw_mu);
	free(q);
	return NULL;
}

int
iw_start(struct pvm *vm)
{
	int mu, work = -1, idle = -1;

	/* NULL (no native AIO, or fs.aio-max-nr reached): buffered writes */
	if ((vm->iw_dio = dio_open(IW_DEPTH, IW_DIRECT_MAX)) == NULL)
		log_info("vm %s: image writes through the page cache (native "
		    "AIO: %s)", vm->cfg->name, errno == EAGAIN ?
		    "fs.aio-max-nr reached" : strerror(errno));

	if ((mu = pthread_mutex_init(&vm->iw_mu, NULL)) != 0 ||
	    (work = pthread_cond_init(&vm->iw_work, NULL)) != 0 ||
	    (idle = pthread_cond_init(&vm->iw_idle, NULL)) != 0 ||
	    pthread_create(&vm->iw_thread, NULL, iw_main, vm) != 0) {
		dio_close(vm->iw_dio);
		vm->iw_dio = NULL;
		if (idle == 0)
			pthread_cond_destroy(&vm->iw_idle);
		if (work == 0)
			pthread_cond_destroy(&vm->iw_work);
		if (mu == 0)
			pthread_mutex_destroy(&vm->iw_mu);
		log_warnx("vm %s: cannot start the image writer",
		    vm->cfg->name);
		return -1;
	}
	vm->iw_started = 1;
	return 0;
}

/* An image write failed: what main writes to the images itself must not
 * land where the journal would later lay older data over it. */
int
iw_broken(struct pvm *vm)
{
	return __atomic_load_n(&vm->iw_failed, __ATOMIC_ACQUIRE);
}

/* The links are going: the image writer wakes none from now on. */
void
vm_unlink(struct pvm *vm)
{
	if (vm->iw_started)
		pthread_mutex_lock(&vm->iw_mu);
	vm->link = NULL;
	if (vm->iw_started)
		pthread_mutex_unlock(&vm->iw_mu);
}

/* Until every queued write is in the images. */
void
iw_drain(struct pvm *vm)
{
	if (!vm->iw_started ||
	    !__atomic_load_n(&vm->iw_pending, __ATOMIC_ACQUIRE))
		return;
	pthread_mutex_lock(&vm->iw_mu);
	while (vm->iw_n > 0 || vm->iw_busy)
		pthread_cond_wait(&vm->iw_idle, &vm->iw_mu);
	pthread_mutex_unlock(&vm->iw_mu);
}

void
iw_stop(struct pvm *vm)
{
	if (!vm->iw_started)
		return;
	pthread_mutex_lock(&vm->iw_mu);
	vm->iw_stop = 1;
	pthread_cond_signal(&vm->iw_work);
	pthread_mutex_unlock(&vm->iw_mu);
	pthread_join(vm->iw_thread, NULL);	/* it drains the queue first */
	vm->iw_started = 0;
	dio_close(vm->iw_dio);
	vm->iw_dio = NULL;
	free(vm->iw_q);
	vm->iw_q = NULL;
	pthread_cond_destroy(&vm->iw_work);
	pthread_cond_destroy(&vm->iw_idle);
	pthread_mutex_destroy(&vm->iw_mu);
}

/*
 * Hand a commit's writes OPS[0..N) to the image writer (their data goes
 * with them; writes the dirty map tracks stay with main); SEQ is the
 * journal's last committed seq.  Waits while too much is queued.
 */
int
iw_queue(struct pvm *vm, struct pop *ops, size_t n, uint64_t seq)
{
	uint64_t bytes = 0;
	size_t k = 0;

	for (size_t i = 0; i < n; i++)
		if (ops[i].disk != UINT32_MAX && !ops[i].marked)
			k++;
	pthread_mutex_lock(&vm->iw_mu);
	while (k > 0 && vm->iw_bytes > IW_MAX_BYTES)
		pthread_cond_wait(&vm->iw_idle, &vm->iw_mu);
	if (vm->iw_n + k > vm->iw_cap) {
		size_t ncap = vm->iw_cap ? vm->iw_cap : 64;
		struct pop *q;

		while (ncap < vm->iw_n + k)
			ncap *= 2;
		if ((q = realloc(vm->iw_q, ncap * sizeof(*q))) == NULL) {
			/* journaled, not in the images: written_seq stops
			 * here, and a restart replays them */
			__atomic_store_n(&vm->iw_failed, 1, __ATOMIC_RELEASE);
			pthread_mutex_unlock(&vm->iw_mu);
			log_warnx("vm %s: out of memory for the image writer "
			    "(a restart writes the journal to the images)",
			    vm->cfg->name);
			return -1;
		}
		vm->iw_q = q;
		vm->iw_cap = ncap;
	}
	for (size_t i = 0; i < n; i++) {
		struct pop *op = &ops[i];

		if (op->disk == UINT32_MAX || op->marked)
			continue;
		vm->iw_q[vm->iw_n] = *op;
		vm->iw_q[vm->iw_n++].req = NULL;
		if (op->data)
			bytes += op->len;
		op->data = NULL;	/* the writer's now */
	}
	vm->iw_bytes += bytes;
	vm->iw_target = seq;
	if (vm->iw_n > 0) {
		__atomic_store_n(&vm->iw_pending, 1, __ATOMIC_RELEASE);
		pthread_cond_signal(&vm->iw_work);
	} else if (!vm->iw_busy &&
	    !__atomic_load_n(&vm->iw_failed, __ATOMIC_ACQUIRE))
		__atomic_store_n(&vm->written_seq, seq, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&vm->iw_mu);
	return 0;
}
