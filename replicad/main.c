/*
 * main.c: replicad start-up.
 *
 *   replicad -c FILE [-d] [-v]          the daemon (-d: foreground, stderr)
 *   replicad -n -c FILE                 check the config, print it normalized
 *   replicad serve -c FILE --peer NAME  sshd's forced command on a DR site
 */
#include <errno.h>
#include <getopt.h>
#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>
#include <libssh2.h>
#include <pthread.h>

#include "daemon.h"
#include "log.h"
#include "nbd.h"

int serve_main(int argc, char **argv);

static void
usage(void)
{
	fprintf(stderr,
	    "usage: replicad -c FILE [-d] [-v]\n"
	    "       replicad -n -c FILE\n"
	    "       replicad serve -c FILE --peer NAME\n");
	exit(2);
}

static void
tick_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct daemon *d = arg;
	int64_t now = now_ms();

	(void)fd;
	(void)ev;
	for (size_t i = 0; i < d->nvms; i++)
		vm_tick(&d->vms[i], now);
	recv_tick(d, now);
}

/* ------------------------------------------------------------------ */
/* the shipper thread and its messages */

void
post_main(struct daemon *d, struct pvm *vm, enum smsg_type type, uint64_t a,
    uint64_t b)
{
	struct smsg *m = calloc(1, sizeof(*m));

	if (m == NULL) {
		log_warnx("%s: out of memory", __func__);
		return;
	}
	m->vm = vm;
	m->type = type;
	m->a = a;
	m->b = b;
	pthread_mutex_lock(&d->mu);
	*d->inbox_tail = m;
	d->inbox_tail = &m->next;
	pthread_mutex_unlock(&d->mu);
	event_active(d->ev_inbox, EV_READ, 0);
}

static void
inbox_cb(evutil_socket_t fd, short ev, void *arg)
{
	struct daemon *d = arg;
	struct smsg *m, *next;

	(void)fd;
	(void)ev;
	pthread_mutex_lock(&d->mu);
	m = d->inbox;
	d->inbox = NULL;
	d->inbox_tail = &d->inbox;
	pthread_mutex_unlock(&d->mu);
	for (; m; m = next) {
		next = m->next;
		vm_on_ship_msg(m->vm, m->type, m->a, m->b);
		free(m);
	}
}

static void
stick_cb(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	ship_tick(arg);
}

static void *
shipper(void *arg)
{
	struct daemon *d = arg;

	(void)pthread_setname_np(pthread_self(), "ship");
	event_base_loop(d->sbase, EVLOOP_NO_EXIT_ON_EMPTY);
	frame_thread_end();
	return NULL;
}

static void
sig_cb(evutil_socket_t sig, short ev, void *arg)
{
	struct daemon *d = arg;

	(void)ev;
	log_info("signal %d: shutting down", (int)sig);
	event_base_loopexit(d->base, NULL);
}

static int
mkdirs(const char *path, mode_t mode)
{
	char buf[4096];

	snprintf(buf, sizeof(buf), "%s", path);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(buf, mode) == -1 && errno != EEXIST)
			return -1;
		*p = '/';
	}
	return mkdir(buf, mode) == -1 && errno != EEXIST ? -1 : 0;
}

static int
parent_dir(const char *path)
{
	char buf[4096], *slash;

	snprintf(buf, sizeof(buf), "%s", path);
	if ((slash = strrchr(buf, '/')) == NULL || slash == buf)
		return 0;
	*slash = '\0';
	return mkdirs(buf, 0755);
}

static int
run(struct daemon *d)
{
	struct timeval one = { 1, 0 };
	int sigs[3] = { SIGTERM, SIGINT, SIGHUP }, rc = 1;

	if (libssh2_init(0) != 0)
		fatalx("libssh2_init failed");
	if (evthread_use_pthreads() != 0)
		fatalx("evthread_use_pthreads failed");
	pthread_mutex_init(&d->mu, NULL);
	d->inbox_tail = &d->inbox;
	if ((d->base = event_base_new()) == NULL ||
	    (d->sbase = event_base_new()) == NULL)
		fatalx("event_base_new failed");
	d->ev_inbox = event_new(d->base, -1, 0, inbox_cb, d);
	if (mkdirs(d->cfg.state_dir, 0700) != 0)
		fatal("state_dir %s", d->cfg.state_dir);
	if (parent_dir(d->cfg.control) != 0 || parent_dir(d->cfg.nbd) != 0)
		fatal("cannot create socket directories");
	for (size_t i = 0; i < d->cfg.npeers; i++) {
		struct link **n = realloc(d->links,
		    (d->nlinks + 1) * sizeof(*n));
		int used = 0;

		for (size_t v = 0; v < d->cfg.nvms; v++)
			if (d->cfg.vms[v].ndisks && strcmp(
			    d->cfg.vms[v].replicate_to,
			    d->cfg.peers[i].name) == 0)
				used = 1;
		if (n == NULL)
			fatalx("out of memory");
		d->links = n;
		if (!used)
			continue;
		if ((d->links[d->nlinks] = link_new(d,
		    &d->cfg.peers[i])) == NULL)
			fatalx("out of memory");
		d->nlinks++;
	}
	if (vm_open_all(d) != 0 || recv_open_all(d) != 0)
		goto out;
	if (d->nvms && (d->nbd = nbd_server_new(d->base, d->cfg.nbd,
	    &vm_nbd_backend, d)) == NULL)
		goto out;
	if (control_open(d) != 0)
		goto out;
	for (int i = 0; i < 3; i++) {
		d->sigs[i] = evsignal_new(d->base, sigs[i], sig_cb, d);
		evsignal_add(d->sigs[i], NULL);
	}
	d->tick = event_new(d->base, -1, EV_PERSIST, tick_cb, d);
	event_add(d->tick, &one);
	d->stick = event_new(d->sbase, -1, EV_PERSIST, stick_cb, d);
	event_add(d->stick, &one);
	if (pthread_create(&d->sthread, NULL, shipper, d) != 0)
		fatalx("cannot start the shipper thread");
	d->sthread_up = 1;
	log_info("site %s: %zu protected vm(s), %zu replica(s), control %s%s%s",
	    d->cfg.site_name, d->nvms, d->nrvms, d->cfg.control,
	    d->nvms ? ", nbd " : "", d->nvms ? d->cfg.nbd : "");
	event_base_dispatch(d->base);
	rc = 0;
out:
	if (d->sthread_up) {
		event_base_loopexit(d->sbase, NULL);
		pthread_join(d->sthread, NULL);
	}
	/* what the shipper posted last (acks), while the VMs are open */
	inbox_cb(-1, 0, d);
	/* the links go first: they belong to the stopped shipper thread;
	 * the VMs' image writers stop waking them before they go */
	for (size_t i = 0; i < d->nvms; i++)
		vm_unlink(&d->vms[i]);
	for (size_t i = 0; i < d->nlinks; i++)
		link_free(d->links[i]);
	d->nlinks = 0;
	if (d->stick)
		event_free(d->stick);
	if (d->tick)
		event_free(d->tick);
	for (int i = 0; i < 3; i++)
		if (d->sigs[i])
			event_free(d->sigs[i]);
	control_close(d);
	if (d->nbd)
		nbd_server_free(d->nbd);
	recv_close_all(d);
	vm_close_all(d);
	free(d->links);
	if (d->ev_inbox)
		event_free(d->ev_inbox);
	event_base_free(d->sbase);
	event_base_free(d->base);
	pthread_mutex_destroy(&d->mu);
	frame_thread_end();
	libssh2_exit();
	return rc;
}

int
main(int argc, char **argv)
{
	static struct daemon d;
	const char *conf = NULL;
	char err[1024];
	int ch, check = 0, fg = 0, verbose = 0, rc;

	if (argc > 1 && strcmp(argv[1], "serve") == 0)
		return serve_main(argc - 1, argv + 1);
	while ((ch = getopt(argc, argv, "c:dnv")) != -1) {
		switch (ch) {
		case 'c':
			conf = optarg;
			break;
		case 'd':
			fg = 1;
			break;
		case 'n':
			check = 1;
			break;
		case 'v':
			verbose = 1;
			break;
		default:
			usage();
		}
	}
	if (optind != argc)
		usage();
	if (conf == NULL)
		conf = getenv("REPLICAD_CONF") ? getenv("REPLICAD_CONF") :
		    "/etc/replicad/replicad.conf";
	if (config_load(conf, &d.cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	if (check) {
		config_print(stdout, &d.cfg);
		config_free(&d.cfg);
		return 0;
	}
	signal(SIGPIPE, SIG_IGN);
	/* Write buffers of up to 32 MiB come and go with every request:
	 * keep them on the heap instead of a fresh mmap (and page faults)
	 * each time. */
	mallopt(M_MMAP_THRESHOLD, 64 << 20);
	mallopt(M_TRIM_THRESHOLD, 256 << 20);
	log_init("replicad", fg, verbose);
	if (!fg && daemon(0, 0) == -1)
		fatal("daemon");
	rc = run(&d);
	config_free(&d.cfg);
	return rc;
}
