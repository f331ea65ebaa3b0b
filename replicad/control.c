/*
 * control.c: the control socket.  The CLI sends one JSON request per line
 * ({"cmd": "...", ...}) and reads one JSON reply per line ({"ok": true, ...}
 * or {"ok": false, "error": "..."}).  `replicad serve` sends
 * {"cmd": "serve", "peer": NAME} and the connection then carries the
 * replication protocol (recv_adopt).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "daemon.h"
#include "log.h"

#define CTL_LINE_MAX 65536

struct ctl_listener {
	struct evconnlistener *lev;
	char *path;
};

struct ctl_conn {
	struct daemon *d;
	struct bufferevent *bev;
	int waiting;		/* a reply comes later (checkpoint --wait) */
};

static void
ctl_free(struct ctl_conn *c)
{
	vm_drop_waiters(c->d, c);
	if (c->bev)
		bufferevent_free(c->bev);
	free(c);
}

void
control_reply(struct ctl_conn *c, json_t *reply)
{
	char *s = json_dumps(reply, JSON_COMPACT);

	json_decref(reply);
	if (s) {
		bufferevent_write(c->bev, s, strlen(s));
		bufferevent_write(c->bev, "\n", 1);
		free(s);
	}
	c->waiting = 0;
}

static json_t *
fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static json_t *
fail(const char *fmt, ...)
{
	char buf[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	return json_pack("{s:b,s:s}", "ok", 0, "error", buf);
}

static json_t *
ok(json_t *o)
{
	json_object_set_new(o, "ok", json_true());
	return o;
}

static json_t *
cmd_status(struct daemon *d, const char *vm)
{
	json_t *a = json_array();
	int64_t now = now_ms();
	int found = 0;

	for (size_t i = 0; i < d->nvms; i++)
		if (vm == NULL || strcmp(vm, d->vms[i].cfg->name) == 0) {
			json_array_append_new(a, vm_status_json(&d->vms[i],
			    now));
			found = 1;
		}
	for (size_t i = 0; i < d->nrvms; i++)
		if (vm == NULL || strcmp(vm, d->rvms[i]->name) == 0) {
			json_array_append_new(a, recv_status_json(d->rvms[i],
			    now));
			found = 1;
		}
	if (vm && !found) {
		json_decref(a);
		return fail("no vm %s on site %s", vm, d->cfg.site_name);
	}
	return ok(json_pack("{s:s,s:o}", "site", d->cfg.site_name, "vms", a));
}

static json_t *
cmd_checkpoint(struct daemon *d, struct ctl_conn *c, json_t *req,
    const char *name)
{
	struct pvm *vm = vm_find(d, name);
	const char *label = json_string_value(json_object_get(req, "label"));
	int wait = json_is_true(json_object_get(req, "wait"));
	int memory = json_is_true(json_object_get(req, "memory"));
	char err[512];
	uint64_t id, seq = 0;

	if (vm == NULL)
		return fail(recv_find(d, name) ? "vm %s is a replica here; "
		    "checkpoints are cut on its primary" :
		    "no vm %s on site %s", name, d->cfg.site_name);
	if (memory && vm->cfg->driver == DRIVER_NONE)
		return fail("vm %s has no driver: memory points need driver "
		    "= qemu or process", name);
	if (memory)
		return fail("memory points are not supported by this version");
	if (label && strlen(label) > JOURNAL_LABEL_MAX)
		return fail("label longer than %d bytes", JOURNAL_LABEL_MAX);
	if ((id = vm_cut_point(vm, POINT_CRASH, label, &seq, err,
	    sizeof(err))) == 0)
		return fail("%s", err);
	if (wait && vm->paused)
		return fail("point %llu is cut, but replication of %s is paused: "
		    "it reaches %s after `replica resume %s`",
		    (unsigned long long)id, name, vm->cfg->replicate_to, name);
	if (wait && id > vm->acked_point) {
		struct waiter *n = realloc(vm->waiters,
		    (vm->nwaiters + 1) * sizeof(*n));

		if (n == NULL)
			return fail("out of memory");
		vm->waiters = n;
		vm->waiters[vm->nwaiters].point = id;
		vm->waiters[vm->nwaiters].seq = seq;
		vm->waiters[vm->nwaiters].conn = c;
		vm->nwaiters++;
		c->waiting = 1;
		return NULL;
	}
	return ok(json_pack("{s:s,s:I}", "vm", name, "point", (json_int_t)id));
}

static json_t *
dispatch(struct daemon *d, struct ctl_conn *c, json_t *req)
{
	const char *cmd = json_string_value(json_object_get(req, "cmd"));
	const char *name = json_string_value(json_object_get(req, "vm"));
	struct rvm *r;
	char err[1024];

	if (cmd == NULL)
		return fail("request without cmd");
	if (strcmp(cmd, "status") == 0)
		return cmd_status(d, name);
	if (name == NULL)
		return fail("%s: which vm?", cmd);
	if (strcmp(cmd, "points") == 0) {
		struct pvm *vm = vm_find(d, name);

		if (vm)
			return ok(vm_points_json(vm));
		if ((r = recv_find(d, name)) != NULL)
			return ok(recv_points_json(r));
		return fail("no vm %s on site %s", name, d->cfg.site_name);
	}
	if (strcmp(cmd, "checkpoint") == 0)
		return cmd_checkpoint(d, c, req, name);
	if (strcmp(cmd, "failover") == 0 || strcmp(cmd, "commit") == 0 ||
	    strcmp(cmd, "cancel") == 0) {
		const char *point = json_string_value(json_object_get(req,
		    "point"));
		json_t *res;

		if (strcmp(cmd, "failover") == 0 &&
		    json_is_true(json_object_get(req, "planned")))
			return fail("planned failover is not supported by "
			    "this version");
		if ((r = recv_find(d, name)) == NULL)
			return fail(vm_find(d, name) ? "vm %s is primary here; "
			    "%s runs on its DR site" : "no vm %s on site %s",
			    name, vm_find(d, name) ? cmd : d->cfg.site_name);
		if (strcmp(cmd, "commit") == 0)
			return recv_commit(r, err, sizeof(err)) ? fail("%s",
			    err) : ok(json_pack("{s:s}", "vm", name));
		if (strcmp(cmd, "cancel") == 0)
			return recv_cancel(r, err, sizeof(err)) ? fail("%s",
			    err) : ok(json_pack("{s:s}", "vm", name));
		if (json_is_true(json_object_get(req, "test")))
			return fail("test failover is not supported by this "
			    "version");
		if (json_is_true(json_object_get(req, "start")))
			return fail("--start is not supported by this version");
		if (point == NULL)
			return fail("failover: which point? (--point N|latest)");
		res = recv_failover(r, point, err, sizeof(err));
		return res ? res : fail("%s", err);
	}
	if (strcmp(cmd, "pause") == 0 || strcmp(cmd, "resume") == 0) {
		struct pvm *vm = vm_find(d, name);

		if (vm == NULL)
			return fail(recv_find(d, name) ? "vm %s is a replica "
			    "here; %s runs on its primary" : "no vm %s on site "
			    "%s", name, recv_find(d, name) ? cmd :
			    d->cfg.site_name);
		if (vm_set_paused(vm, strcmp(cmd, "pause") == 0, err,
		    sizeof(err)) != 0)
			return fail("%s", err);
		return ok(json_pack("{s:s}", "vm", name));
	}
	if (strcmp(cmd, "migrate") == 0 || strcmp(cmd, "reverse") == 0 ||
	    strcmp(cmd, "resync") == 0)
		return fail("%s is not supported by this version", cmd);
	return fail("unknown command '%s'", cmd);
}

static void
ctl_read(struct bufferevent *bev, void *arg)
{
	struct ctl_conn *c = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	char *line;
	size_t len;

	while (!c->waiting && (line = evbuffer_readln(in, &len,
	    EVBUFFER_EOL_LF)) != NULL) {
		json_error_t je;
		json_t *req = json_loadb(line, len, 0, &je), *rep;
		const char *cmd;

		free(line);
		if (req == NULL || !json_is_object(req)) {
			json_decref(req);
			control_reply(c, fail("malformed request"));
			continue;
		}
		cmd = json_string_value(json_object_get(req, "cmd"));
		if (cmd && strcmp(cmd, "serve") == 0) {
			const char *peer = json_string_value(json_object_get(
			    req, "peer"));

			if (peer == NULL) {
				json_decref(req);
				control_reply(c, fail("serve: which peer?"));
				continue;
			}
			/* the connection now carries replication */
			vm_drop_waiters(c->d, c);
			bufferevent_setcb(bev, NULL, NULL, NULL, NULL);
			recv_adopt(c->d, bev, peer);
			c->bev = NULL;
			json_decref(req);
			free(c);
			return;
		}
		rep = dispatch(c->d, c, req);
		json_decref(req);
		if (rep)
			control_reply(c, rep);
	}
	if (!c->waiting && evbuffer_get_length(in) > CTL_LINE_MAX) {
		log_warnx("%s: request over %d bytes; closing", __func__,
		    CTL_LINE_MAX);
		ctl_free(c);
	}
}

static void
ctl_event(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
		ctl_free(arg);
}

static void
ctl_accept(struct evconnlistener *lev, evutil_socket_t fd,
    struct sockaddr *sa, int salen, void *arg)
{
	struct daemon *d = arg;
	struct ctl_conn *c = calloc(1, sizeof(*c));

	(void)lev;
	(void)sa;
	(void)salen;
	if (c == NULL) {
		close(fd);
		return;
	}
	c->d = d;
	c->bev = bufferevent_socket_new(d->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (c->bev == NULL) {
		close(fd);
		free(c);
		return;
	}
	bufferevent_setcb(c->bev, ctl_read, NULL, ctl_event, c);
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
}

static void
ctl_reenable(evutil_socket_t fd, short ev, void *arg)
{
	(void)fd;
	(void)ev;
	evconnlistener_enable(arg);
}

static void
ctl_error(struct evconnlistener *lev, void *arg)
{
	struct timeval tv = { 1, 0 };

	(void)arg;
	log_warn("%s: accept", __func__);
	if (errno == EMFILE || errno == ENFILE) {
		/* out of descriptors: pause accepting for a moment */
		evconnlistener_disable(lev);
		event_base_once(evconnlistener_get_base(lev), -1, EV_TIMEOUT,
		    ctl_reenable, lev, &tv);
	}
}

int
control_open(struct daemon *d)
{
	struct sockaddr_un sun;
	struct ctl_listener *cl;
	mode_t old;
	int fd;

	if (strlen(d->cfg.control) >= sizeof(sun.sun_path)) {
		log_warnx("%s: path too long: %s", __func__, d->cfg.control);
		return -1;
	}
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	strcpy(sun.sun_path, d->cfg.control);
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    0)) == -1) {
		log_warn("%s: socket", __func__);
		return -1;
	}
	unlink(d->cfg.control);
	old = umask(S_IXUSR | S_IXGRP | S_IRWXO);
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) == -1) {
		umask(old);
		log_warn("%s: bind %s", __func__, d->cfg.control);
		close(fd);
		return -1;
	}
	umask(old);
	chmod(d->cfg.control, 0660);
	if ((cl = calloc(1, sizeof(*cl))) == NULL ||
	    (cl->path = strdup(d->cfg.control)) == NULL) {
		free(cl);
		close(fd);
		return -1;
	}
	cl->lev = evconnlistener_new(d->base, ctl_accept, d,
	    LEV_OPT_CLOSE_ON_FREE, 64, fd);
	if (cl->lev == NULL) {
		log_warnx("%s: listen %s", __func__, d->cfg.control);
		free(cl->path);
		free(cl);
		close(fd);
		return -1;
	}
	evconnlistener_set_error_cb(cl->lev, ctl_error);
	d->ctl = cl;
	return 0;
}

void
control_close(struct daemon *d)
{
	if (d->ctl == NULL)
		return;
	evconnlistener_free(d->ctl->lev);
	unlink(d->ctl->path);
	free(d->ctl->path);
	free(d->ctl);
	d->ctl = NULL;
}
