/*
 * test_config.c: config_load(), config_print(), config_firewall() and the
 * parse helpers.  Every config is written to a temp file from a string.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/wait.h>

#include "config.h"

#define MS_S	1000ULL
#define MS_M	(60 * MS_S)
#define MS_H	(60 * MS_M)
#define MS_D	(24 * MS_H)

static char tmpdir[] = "/tmp/test_config.XXXXXX";
static int ntmp;

static char *
write_tmp(const char *text)
{
	char *path;
	FILE *fp;

	assert_true(asprintf(&path, "%s/c%d.conf", tmpdir, ntmp++) > 0);
	fp = fopen(path, "w");
	assert_non_null(fp);
	fputs(text, fp);
	assert_int_equal(fclose(fp), 0);
	return path;
}

static int
load_str(const char *text, struct config *cfg, char *err, size_t errlen,
    char **pathp)
{
	char *path = write_tmp(text);
	int rc = config_load(path, cfg, err, errlen);

	if (pathp)
		*pathp = path;
	else
		free(path);
	return rc;
}

static char *
capture(void (*fn)(FILE *, const struct config *), const struct config *cfg)
{
	char *buf = NULL;
	size_t len = 0;
	FILE *fp = open_memstream(&buf, &len);

	assert_non_null(fp);
	fn(fp, cfg);
	assert_int_equal(fclose(fp), 0);
	return buf;
}

static const char full_conf[] =
    "# every key\n"
    "[site]\n"
    "name = site-a   # trailing comment\n"
    "state_dir = /srv/state\n"
    "control = /run/r/control.sock\n"
    "nbd = /run/r/nbd.sock\n"
    "ssh_port = 2222\n"
    "\n"
    "[peer site-b]\n"
    "host = 192.0.2.20\n"
    "port = 22022\n"
    "user = repl\n"
    "key = /etc/replicad/id\n"
    "known_hosts = /etc/replicad/kh\n"
    "\n"
    "  [vm web01]  \n"
    "disk = /var/lib/vms/web01.img\n"
    "disk=/dev/vg0/web01-data\n"
    "replicate_to = site-b\n"
    "interval = 90s\n"
    "keep = 2h:all, 2d:2h , 14d:1d\n"
    "compress = none\n"
    "driver = qemu\n"
    "qmp = /run/qemu/web01.qmp\n"
    "memory = /dev/shm/web01.ram\n"
    "pid = /run/web01.pid\n"
    "start = /usr/bin/start-web01 --fast\n"
    "memory_interval = 20m\n"
    "app_interval = 2h\n"
    "quiesce = /usr/bin/freeze\n"
    "thaw = /usr/bin/thaw\n"
    "journal_max = 2G\n"
    "bandwidth = 64M\n"
    "\n"
    "[accept site-b]\n"
    "storage = /srv/replicas/site-b\n"
    "from = 192.0.2.20, 198.51.100.0/24\n"
    "from = 2001:db8::/32\n";

static char *
full_text(void)
{
	char *s = strdup(full_conf);

	assert_non_null(s);
	return s;
}

static void
test_full(void **state)
{
	struct config c;
	char err[512];
	char *text = full_text();
	const struct cfg_vm *vm;
	const struct cfg_peer *pe;
	const struct cfg_accept *ac;

	(void)state;
	assert_int_equal(load_str(text, &c, err, sizeof(err), NULL), 0);
	assert_string_equal(c.site_name, "site-a");
	assert_string_equal(c.state_dir, "/srv/state");
	assert_string_equal(c.control, "/run/r/control.sock");
	assert_string_equal(c.nbd, "/run/r/nbd.sock");
	assert_int_equal(c.ssh_port, 2222);

	assert_int_equal(c.npeers, 1);
	pe = config_peer(&c, "site-b");
	assert_non_null(pe);
	assert_string_equal(pe->host, "192.0.2.20");
	assert_int_equal(pe->port, 22022);
	assert_string_equal(pe->user, "repl");
	assert_string_equal(pe->key, "/etc/replicad/id");
	assert_string_equal(pe->known_hosts, "/etc/replicad/kh");
	assert_int_equal(pe->line, 9);
	assert_null(config_peer(&c, "site-x"));

	assert_int_equal(c.nvms, 1);
	vm = config_vm(&c, "web01");
	assert_non_null(vm);
	assert_int_equal(vm->line, 16);
	assert_int_equal(vm->ndisks, 2);
	assert_string_equal(vm->disks[0].path, "/var/lib/vms/web01.img");
	assert_string_equal(vm->disks[0].name, "web01");
	assert_string_equal(vm->disks[1].path, "/dev/vg0/web01-data");
	assert_string_equal(vm->disks[1].name, "web01-data");
	assert_string_equal(vm->replicate_to, "site-b");
	assert_int_equal(vm->interval_ms, 90 * MS_S);
	assert_int_equal(vm->nkeep, 3);
	assert_int_equal(vm->keep[0].age_ms, 2 * MS_H);
	assert_int_equal(vm->keep[0].step_ms, 0);
	assert_int_equal(vm->keep[1].age_ms, 2 * MS_D);
	assert_int_equal(vm->keep[1].step_ms, 2 * MS_H);
	assert_int_equal(vm->keep[2].age_ms, 14 * MS_D);
	assert_int_equal(vm->keep[2].step_ms, MS_D);
	assert_int_equal(vm->compress, COMPRESS_NONE);
	assert_int_equal(vm->driver, DRIVER_QEMU);
	assert_string_equal(vm->qmp, "/run/qemu/web01.qmp");
	assert_string_equal(vm->memory, "/dev/shm/web01.ram");
	assert_string_equal(vm->pid, "/run/web01.pid");
	assert_string_equal(vm->start, "/usr/bin/start-web01 --fast");
	assert_int_equal(vm->memory_interval_ms, 20 * MS_M);
	assert_int_equal(vm->app_interval_ms, 2 * MS_H);
	assert_string_equal(vm->quiesce, "/usr/bin/freeze");
	assert_string_equal(vm->thaw, "/usr/bin/thaw");
	assert_int_equal(vm->journal_max, 2ULL << 30);
	assert_int_equal(vm->journal_max_pct, 0);
	assert_int_equal(vm->bandwidth, 64ULL << 20);

	assert_int_equal(c.naccepts, 1);
	ac = config_accept(&c, "site-b");
	assert_non_null(ac);
	assert_string_equal(ac->storage, "/srv/replicas/site-b");
	assert_int_equal(ac->nfrom, 3);
	assert_string_equal(ac->from[0], "192.0.2.20");
	assert_string_equal(ac->from[1], "198.51.100.0/24");
	assert_string_equal(ac->from[2], "2001:db8::/32");
	assert_null(config_accept(&c, "site-c"));

	config_free(&c);
	assert_null(c.site_name);
	free(text);
}

static void
test_defaults(void **state)
{
	struct config c;
	char err[512];
	const struct cfg_vm *vm, *dr;

	(void)state;
	assert_int_equal(load_str(
	    "[site]\nname = a\n"
	    "[peer b]\nhost = h\nkey = k\nknown_hosts = kh\n"
	    "[vm v]\ndisk = /d/v.img\nreplicate_to = b\n"
	    "[vm dr]\n"
	    "[accept b]\nstorage = /s\n",
	    &c, err, sizeof(err), NULL), 0);
	assert_string_equal(c.state_dir, "/var/lib/replicad");
	assert_string_equal(c.control, "/run/replicad/control.sock");
	assert_string_equal(c.nbd, "/run/replicad/nbd.sock");
	assert_int_equal(c.ssh_port, 22);
	assert_int_equal(c.peers[0].port, 22);
	assert_string_equal(c.peers[0].user, "replica");
	vm = config_vm(&c, "v");
	assert_non_null(vm);
	assert_int_equal(vm->interval_ms, 30 * MS_S);
	assert_int_equal(vm->nkeep, 3);
	assert_int_equal(vm->keep[0].age_ms, MS_H);
	assert_int_equal(vm->keep[0].step_ms, 0);
	assert_int_equal(vm->keep[1].age_ms, 24 * MS_H);
	assert_int_equal(vm->keep[1].step_ms, MS_H);
	assert_int_equal(vm->keep[2].age_ms, 7 * MS_D);
	assert_int_equal(vm->keep[2].step_ms, MS_D);
	assert_int_equal(vm->compress, COMPRESS_ZSTD);
	assert_int_equal(vm->driver, DRIVER_NONE);
	assert_int_equal(vm->memory_interval_ms, 15 * MS_M);
	assert_int_equal(vm->app_interval_ms, 0);
	assert_int_equal(vm->journal_max, 0);
	assert_int_equal(vm->journal_max_pct, 25);
	assert_int_equal(vm->bandwidth, 0);
	assert_null(vm->qmp);
	assert_null(vm->start);
	dr = config_vm(&c, "dr");
	assert_non_null(dr);
	assert_int_equal(dr->ndisks, 0);
	assert_null(dr->replicate_to);
	assert_int_equal(c.accepts[0].nfrom, 0);
	config_free(&c);
}

static const char base[] =
    "[site]\n"				/* 1 */
    "name = site-a\n"			/* 2 */
    "[peer site-b]\n"			/* 3 */
    "host = dr.example.com\n"		/* 4 */
    "key = /k\n"			/* 5 */
    "known_hosts = /kh\n"		/* 6 */
    "[vm web01]\n"			/* 7 */
    "disk = /vms/web01.img\n"		/* 8 */
    "replicate_to = site-b\n";		/* 9 */

struct bad {
	const char *text;	/* appended to base when with_base */
	int with_base;
	const char *prefix;	/* after "PATH:" */
};

static const struct bad bads[] = {
	/* syntax and sections */
	{ "ssh_port 22\n", 1, "10: syntax error" },
	{ "= 3\n", 1, "10: syntax error" },
	{ "[vm web02\n", 1, "10: syntax error" },
	{ "[sight]\n", 1, "10: unknown section [sight]" },
	{ "[vm]\n", 1, "10: [vm] needs a name" },
	{ "[vm a b]\n", 1, "10: [vm a b]: section name has blanks" },
	{ "[site x]\n", 0, "1: [site] takes no name" },
	{ "[vm .hidden]\n", 1, "10: [vm .hidden]: name must be made of" },
	{ "[vm web/01]\n", 1, "10: [vm web/01]: name must be made of" },
	{ "[site]\n", 1, "10: duplicate section [site] (first at line 1)" },
	{ "[vm web01]\n", 1,
	    "10: duplicate section [vm web01] (first at line 7)" },
	{ "[peer site-b]\n", 1,
	    "10: duplicate section [peer site-b] (first at line 3)" },
	{ "[accept x]\nstorage=/s\n[accept x]\n", 1,
	    "12: duplicate section [accept x]" },
	{ "name = x\n[site]\nname = a\n", 0,
	    "1: name: key outside of any section" },
	{ "# nothing\n[peer p]\nhost=h\nkey=k\nknown_hosts=kh\n", 0,
	    " no [site] section" },
	/* keys */
	{ "colour = blue\n", 1, "10: colour: unknown key in [vm web01]" },
	{ "[site]\nname = a\nname = b\n", 0, "3: name: given twice" },
	{ "interval = 1m\ninterval = 2m\n", 1, "11: interval: given twice" },
	{ "qmp =\n", 1, "10: qmp: empty value" },
	{ "[site]\nstate_dir = /x\n", 0, "1: name: required in [site]" },
	{ "[site]\nname = a/b\n", 0, "2: name: 'a/b' must be made of" },
	/* durations and ranges */
	{ "interval = 30\n", 1, "10: interval: '30' is not a duration" },
	{ "interval = 30 s\n", 1, "10: interval: '30 s' is not a duration" },
	{ "interval = -5s\n", 1, "10: interval: '-5s' is not a duration" },
	{ "interval = 5w\n", 1, "10: interval: '5w' is not a duration" },
	{ "interval = 999ms\n", 1, "10: interval: '999ms' is out of range" },
	{ "interval = 61m\n", 1, "10: interval: '61m' is out of range" },
	{ "interval = 0\n", 1, "10: interval: '0' is out of range" },
	{ "memory_interval = 1x\n", 1, "10: memory_interval: '1x'" },
	{ "app_interval = 1h\n", 1,
	    "10: quiesce: app_interval needs a quiesce command" },
	/* keep */
	{ "keep = 1h\n", 1, "10: keep: '1h' is not AGE:STEP" },
	{ "keep = 1d:all, 1h:1m\n", 1,
	    "10: keep: 1h:1m: ages must be strictly increasing" },
	{ "keep = 1h:all, 1h:1m\n", 1,
	    "10: keep: 1h:1m: ages must be strictly increasing" },
	{ "keep = 1h:2h\n", 1, "10: keep: 1h:2h: the step is longer" },
	{ "keep = 1h:0\n", 1, "10: keep: '0' is not a positive duration" },
	{ "keep = 0:all\n", 1, "10: keep: '0' is not a positive duration" },
	{ "keep = 1h:some\n", 1, "10: keep: 'some' is not a positive" },
	{ "keep = ,\n", 1, "10: keep: empty rule in list" },
	{ "keep = 1h:all,\n", 1, "10: keep: empty rule in list" },
	{ "keep = 1s:all,2s:all,3s:all,4s:all,5s:all,6s:all,7s:all,8s:all,"
	  "9s:all,10s:all,11s:all,12s:all,13s:all,14s:all,15s:all,16s:all,"
	  "17s:all\n", 1, "10: keep: more than 16 rules" },
	/* enums */
	{ "compress = gzip\n", 1, "10: compress: 'gzip' is not zstd or none" },
	{ "driver = kvm\n", 1, "10: driver: 'kvm' is not qemu, process" },
	{ "driver = qemu\n", 1, "10: qmp: driver qemu needs a qmp socket" },
	{ "driver = process\npid = /p\n", 1,
	    "10: memory: driver process needs pid and memory" },
	/* sizes */
	{ "bandwidth = 10MB\n", 1, "10: bandwidth: '10MB' is not a size" },
	{ "bandwidth = -1\n", 1, "10: bandwidth: '-1' is not a size" },
	{ "bandwidth = 99999999999T\n", 1, "10: bandwidth: '99999999999T'" },
	{ "journal_max = 0%\n", 1, "10: journal_max: '0%' is not a percent" },
	{ "journal_max = 101%\n", 1, "10: journal_max: '101%' is not a" },
	{ "journal_max = %\n", 1, "10: journal_max: '%' is not a size" },
	{ "journal_max = x%\n", 1, "10: journal_max: 'x%' is not a perc" },
	/* ports */
	{ "[site]\nname = a\nssh_port = 0\n", 0,
	    "3: ssh_port: '0' is not a port (1..65535)" },
	{ "[site]\nname = a\nssh_port = 65536\n", 0,
	    "3: ssh_port: '65536' is not a port" },
	{ "[peer p]\nport = 22x\n", 1, "11: port: '22x' is not a port" },
	/* peers */
	{ "[peer p]\nkey = k\nknown_hosts = kh\n", 1,
	    "10: host: required in [peer p]" },
	{ "[peer p]\nhost = h\nknown_hosts = kh\n", 1,
	    "10: key: required in [peer p]" },
	{ "[peer p]\nhost = h\nkey = k\n", 1,
	    "10: known_hosts: required in [peer p]" },
	{ "[peer p]\nhost = a b\n", 1, "11: host: 'a b' has blanks" },
	/* vms and disks */
	{ "[vm web02]\ndisk = /vms/web02.img\n", 1,
	    "10: replicate_to: required in [vm web02]" },
	{ "[vm web02]\ndisk = /vms/web02.img\n\nreplicate_to = site-z\n", 1,
	    "13: replicate_to: no [peer site-z] in this file" },
	{ "disk = /other/web01.raw\n", 1, "10: disk: '/other/web01.raw': "
	    "export name 'web01' already used by '/vms/web01.img'" },
	{ "disk = /vms/.img\n", 1, "10: disk: '/vms/.img': export name" },
	{ "disk = /vms/\n", 1, "10: disk: '/vms/': export name ''" },
	{ "disk = /vms/a b.img\n", 1, "10: disk: '/vms/a b.img'" },
	/* accept */
	{ "[accept b]\nfrom = 192.0.2.1\n", 1,
	    "10: storage: required in [accept b]" },
	{ "[accept b]\nstorage = /s\nfrom = 192.0.2.0/33\n", 1,
	    "12: from: '192.0.2.0/33' is not an IPv4/IPv6 address" },
	{ "[accept b]\nstorage = /s\nfrom = 2001:db8::/129\n", 1,
	    "12: from: '2001:db8::/129' is not" },
	{ "[accept b]\nstorage = /s\nfrom = 192.0.2.300\n", 1,
	    "12: from: '192.0.2.300' is not" },
	{ "[accept b]\nstorage = /s\nfrom = host.example.com\n", 1,
	    "12: from: 'host.example.com' is not" },
	{ "[accept b]\nstorage = /s\nfrom = 10.0.0.0/\n", 1,
	    "12: from: '10.0.0.0/' is not" },
	{ "[accept b]\nstorage = /s\nfrom = 10.0.0.1,,10.0.0.2\n", 1,
	    "12: from: empty address in list" },
	{ "[accept b]\nstorage = /s\nfrom = 10.0.0.1,\n", 1,
	    "12: from: empty address in list" },
};

static void
test_errors(void **state)
{
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(bads) / sizeof(bads[0]); i++) {
		struct config c;
		char err[512], want[512], *text, *path;

		if (asprintf(&text, "%s%s", bads[i].with_base ? base : "",
		    bads[i].text) < 0)
			fail();
		memset(err, 'x', sizeof(err));
		memset(&c, 0x5a, sizeof(c));
		if (load_str(text, &c, err, sizeof(err), &path) != -1)
			fail_msg("case %zu loaded: %s", i, bads[i].text);
		snprintf(want, sizeof(want), "%s:%s", path, bads[i].prefix);
		if (strncmp(err, want, strlen(want)) != 0)
			fail_msg("case %zu:\n got: %s\nwant: %s...", i, err,
			    want);
		/* nothing half-parsed is left */
		assert_null(c.path);
		assert_null(c.site_name);
		assert_null(c.vms);
		assert_int_equal(c.nvms, 0);
		free(text);
		free(path);
	}
}

static void
test_missing_file(void **state)
{
	struct config c;
	char err[256];

	(void)state;
	assert_int_equal(config_load("/nonexistent/replicad.conf", &c, err,
	    sizeof(err)), -1);
	assert_string_equal(err, "/nonexistent/replicad.conf: "
	    "No such file or directory");
	/* a tiny err buffer is truncated, not overrun */
	assert_int_equal(config_load("/nonexistent/replicad.conf", &c, err, 5),
	    -1);
	assert_string_equal(err, "/non");
	assert_int_equal(config_load("/nonexistent/replicad.conf", &c, NULL,
	    0), -1);
}

static void
assert_str_eq_null(const char *a, const char *b)
{
	if (a == NULL || b == NULL)
		assert_ptr_equal(a, b);
	else
		assert_string_equal(a, b);
}

static void
assert_config_equal(const struct config *a, const struct config *b)
{
	size_t i, j;
	int k;

	assert_str_eq_null(a->site_name, b->site_name);
	assert_str_eq_null(a->state_dir, b->state_dir);
	assert_str_eq_null(a->control, b->control);
	assert_str_eq_null(a->nbd, b->nbd);
	assert_int_equal(a->ssh_port, b->ssh_port);
	assert_int_equal(a->npeers, b->npeers);
	for (i = 0; i < a->npeers; i++) {
		const struct cfg_peer *p = &a->peers[i], *q = &b->peers[i];

		assert_str_eq_null(p->name, q->name);
		assert_str_eq_null(p->host, q->host);
		assert_int_equal(p->port, q->port);
		assert_str_eq_null(p->user, q->user);
		assert_str_eq_null(p->key, q->key);
		assert_str_eq_null(p->known_hosts, q->known_hosts);
	}
	assert_int_equal(a->nvms, b->nvms);
	for (i = 0; i < a->nvms; i++) {
		const struct cfg_vm *v = &a->vms[i], *w = &b->vms[i];

		assert_str_eq_null(v->name, w->name);
		assert_int_equal(v->ndisks, w->ndisks);
		for (j = 0; j < v->ndisks; j++) {
			assert_str_eq_null(v->disks[j].path, w->disks[j].path);
			assert_str_eq_null(v->disks[j].name, w->disks[j].name);
		}
		assert_str_eq_null(v->replicate_to, w->replicate_to);
		assert_int_equal(v->interval_ms, w->interval_ms);
		assert_int_equal(v->nkeep, w->nkeep);
		for (k = 0; k < v->nkeep; k++) {
			assert_int_equal(v->keep[k].age_ms, w->keep[k].age_ms);
			assert_int_equal(v->keep[k].step_ms,
			    w->keep[k].step_ms);
		}
		assert_int_equal(v->compress, w->compress);
		assert_int_equal(v->driver, w->driver);
		assert_str_eq_null(v->qmp, w->qmp);
		assert_str_eq_null(v->memory, w->memory);
		assert_str_eq_null(v->pid, w->pid);
		assert_str_eq_null(v->start, w->start);
		assert_int_equal(v->memory_interval_ms, w->memory_interval_ms);
		assert_int_equal(v->app_interval_ms, w->app_interval_ms);
		assert_str_eq_null(v->quiesce, w->quiesce);
		assert_str_eq_null(v->thaw, w->thaw);
		assert_int_equal(v->journal_max, w->journal_max);
		assert_int_equal(v->journal_max_pct, w->journal_max_pct);
		assert_int_equal(v->bandwidth, w->bandwidth);
	}
	assert_int_equal(a->naccepts, b->naccepts);
	for (i = 0; i < a->naccepts; i++) {
		const struct cfg_accept *x = &a->accepts[i],
		    *y = &b->accepts[i];

		assert_str_eq_null(x->peer, y->peer);
		assert_str_eq_null(x->storage, y->storage);
		assert_int_equal(x->nfrom, y->nfrom);
		for (j = 0; j < x->nfrom; j++)
			assert_string_equal(x->from[j], y->from[j]);
	}
}

static void
roundtrip(const char *text)
{
	struct config a, b;
	char err[512];
	char *out1, *out2;

	if (load_str(text, &a, err, sizeof(err), NULL) != 0)
		fail_msg("load: %s", err);
	out1 = capture(config_print, &a);
	if (load_str(out1, &b, err, sizeof(err), NULL) != 0)
		fail_msg("reload: %s\n%s", err, out1);
	assert_config_equal(&a, &b);
	out2 = capture(config_print, &b);
	assert_string_equal(out1, out2);
	config_free(&a);
	config_free(&b);
	free(out1);
	free(out2);
}

static void
test_roundtrip(void **state)
{
	char *text = full_text();

	(void)state;
	roundtrip(text);
	free(text);
	roundtrip(base);
	roundtrip("[site]\nname = x\n");
	roundtrip("[vm late]\nstart = /bin/true\n"
	    "[accept z]\nstorage = /z\n"
	    "[site]\nname = x\n"
	    "[vm v]\ndisk=/a.b.c\ndisk = /x/y\ninterval = 1500ms\n"
	    "keep = 1500ms:all, 3s:1500ms\njournal_max = 12345\n"
	    "bandwidth = 3072\nmemory_interval = 0\nreplicate_to = p\n"
	    "[peer p]\nhost = ::1\nkey=k\nknown_hosts=kh\n");
}

static void
test_print(void **state)
{
	struct config c;
	char err[512];
	char *out;

	(void)state;
	assert_int_equal(load_str(
	    "[vm dr]\ndriver = qemu\nqmp = /q\n"
	    "[site]\nname = a\n"
	    "[peer b]\nhost = h\nkey = k\nknown_hosts = kh\n"
	    "[vm v]\ndisk = /d/v.img\nreplicate_to = b\ninterval = 120s\n"
	    "journal_max = 4096M\nbandwidth = 1536K\nkeep = 60m:all\n",
	    &c, err, sizeof(err), NULL), 0);
	out = capture(config_print, &c);
	assert_string_equal(out,
	    "[site]\n"
	    "name = a\n"
	    "state_dir = /var/lib/replicad\n"
	    "control = /run/replicad/control.sock\n"
	    "nbd = /run/replicad/nbd.sock\n"
	    "ssh_port = 22\n"
	    "\n"
	    "[vm dr]\n"
	    "interval = 30s\n"
	    "keep = 1h:all, 1d:1h, 7d:1d\n"
	    "compress = zstd\n"
	    "driver = qemu\n"
	    "qmp = /q\n"
	    "memory_interval = 15m\n"
	    "app_interval = 0\n"
	    "journal_max = 25%\n"
	    "bandwidth = 0\n"
	    "\n"
	    "[peer b]\n"
	    "host = h\n"
	    "port = 22\n"
	    "user = replica\n"
	    "key = k\n"
	    "known_hosts = kh\n"
	    "\n"
	    "[vm v]\n"
	    "disk = /d/v.img\n"
	    "replicate_to = b\n"
	    "interval = 2m\n"
	    "keep = 1h:all\n"
	    "compress = zstd\n"
	    "driver = none\n"
	    "memory_interval = 15m\n"
	    "app_interval = 0\n"
	    "journal_max = 4G\n"
	    "bandwidth = 1536K\n");
	free(out);
	config_free(&c);
}

static int
nft_check(const char *ruleset)
{
	FILE *fp;
	int st;

	if (geteuid() != 0 || system("command -v nft >/dev/null 2>&1") != 0)
		return -2;	/* cannot check here */
	fp = popen("nft -c -f - >&2", "w");
	assert_non_null(fp);
	fputs(ruleset, fp);
	st = pclose(fp);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void
test_firewall(void **state)
{
	struct config c;
	char err[512];
	char *out;
	int rc;

	(void)state;
	assert_int_equal(load_str(
	    "[site]\nname = a\nssh_port = 2200\n"
	    "[peer b]\nhost = 203.0.113.7\nport = 2022\nkey = k\n"
	    "known_hosts = kh\n"
	    "[peer c]\nhost = 2001:db8::7\nkey = k\nknown_hosts = kh\n"
	    "[peer d]\nhost = localhost\nkey = k\nknown_hosts = kh\n"
	    "[peer e]\nhost = no-such-host.invalid\nkey = k\n"
	    "known_hosts = kh\n"
	    "[accept b]\nstorage = /s\n"
	    "from = 192.0.2.10, 198.51.100.0/24, 2001:db8:1::/48\n"
	    "[accept c]\nstorage = /s2\n",
	    &c, err, sizeof(err), NULL), 0);
	out = capture(config_firewall, &c);
	assert_non_null(strstr(out, "table inet replicad {}\n"
	    "flush table inet replicad\ntable inet replicad {\n"));
	assert_non_null(strstr(out, "policy accept;"));
	assert_non_null(strstr(out, "ct state established,related accept"));
	assert_non_null(strstr(out, "iif \"lo\" accept"));
	assert_non_null(strstr(out, "ip saddr 192.0.2.10 tcp dport 2200 "));
	assert_non_null(strstr(out, "ip saddr 198.51.100.0/24 tcp dport 2200 "));
	assert_non_null(strstr(out, "ip6 saddr 2001:db8:1::/48 tcp dport 2200 "));
	assert_non_null(strstr(out, "# accept c has no 'from': admitted from "
	    "anywhere"));
	assert_non_null(strstr(out, "tcp dport 2200 counter drop"));
	assert_non_null(strstr(out, "ip daddr 203.0.113.7 tcp dport 2022 "));
	assert_non_null(strstr(out, "ip6 daddr 2001:db8::7 tcp dport 22 "));
	assert_non_null(strstr(out, "# resolve localhost\n"));
	assert_non_null(strstr(out, "# resolve no-such-host.invalid\n"));
	assert_non_null(strstr(out, "no-such-host.invalid could not be "
	    "resolved"));
	rc = nft_check(out);
	if (rc != -2 && rc != 0)
		fail_msg("nft -c rejected:\n%s", out);
	free(out);
	config_free(&c);

	/* no [accept]: inbound left alone, no drop rule */
	assert_int_equal(load_str("[site]\nname = a\n", &c, err, sizeof(err),
	    NULL), 0);
	out = capture(config_firewall, &c);
	assert_null(strstr(out, "drop"));
	assert_non_null(strstr(out, "no [accept] sections"));
	rc = nft_check(out);
	if (rc != -2 && rc != 0)
		fail_msg("nft -c rejected:\n%s", out);
	free(out);
	config_free(&c);
}

static void
test_parse_duration(void **state)
{
	uint64_t v;
	char buf[32];

	(void)state;
	assert_int_equal(parse_duration("0", &v), 0);
	assert_int_equal(v, 0);
	assert_int_equal(parse_duration("0s", &v), 0);
	assert_int_equal(v, 0);
	assert_int_equal(parse_duration("500ms", &v), 0);
	assert_int_equal(v, 500);
	assert_int_equal(parse_duration("30s", &v), 0);
	assert_int_equal(v, 30000);
	assert_int_equal(parse_duration("5m", &v), 0);
	assert_int_equal(v, 300000);
	assert_int_equal(parse_duration("1h", &v), 0);
	assert_int_equal(v, MS_H);
	assert_int_equal(parse_duration("7d", &v), 0);
	assert_int_equal(v, 7 * MS_D);
	assert_int_equal(parse_duration("18446744073709551615ms", &v), 0);
	assert_int_equal(v, UINT64_MAX);
	/* errors */
	assert_int_equal(parse_duration("", &v), -1);
	assert_int_equal(parse_duration("30", &v), -1);	/* missing unit */
	assert_int_equal(parse_duration("s", &v), -1);
	assert_int_equal(parse_duration("-1s", &v), -1);
	assert_int_equal(parse_duration("+1s", &v), -1);
	assert_int_equal(parse_duration(" 1s", &v), -1);
	assert_int_equal(parse_duration("1s ", &v), -1);
	assert_int_equal(parse_duration("1.5s", &v), -1);
	assert_int_equal(parse_duration("1S", &v), -1);
	assert_int_equal(parse_duration("1sec", &v), -1);
	assert_int_equal(parse_duration("1w", &v), -1);
	assert_int_equal(parse_duration("18446744073709551616ms", &v), -1);
	assert_int_equal(parse_duration("18446744073709551615s", &v), -1);
	assert_int_equal(parse_duration("213503982335d", &v), -1);
	assert_int_equal(parse_duration(NULL, &v), -1);

	format_duration(0, buf, sizeof(buf));
	assert_string_equal(buf, "0");
	format_duration(500, buf, sizeof(buf));
	assert_string_equal(buf, "500ms");
	format_duration(1500, buf, sizeof(buf));
	assert_string_equal(buf, "1500ms");
	format_duration(30000, buf, sizeof(buf));
	assert_string_equal(buf, "30s");
	format_duration(90000, buf, sizeof(buf));
	assert_string_equal(buf, "90s");
	format_duration(MS_H, buf, sizeof(buf));
	assert_string_equal(buf, "1h");
	format_duration(24 * MS_H, buf, sizeof(buf));
	assert_string_equal(buf, "1d");
	format_duration(36 * MS_H, buf, sizeof(buf));
	assert_string_equal(buf, "36h");
	format_duration(UINT64_MAX, buf, sizeof(buf));
	assert_string_equal(buf, "18446744073709551615ms");
	format_duration(7 * MS_D, buf, 2);	/* truncated, terminated */
	assert_string_equal(buf, "7");
}

static void
test_parse_size(void **state)
{
	uint64_t v;

	(void)state;
	assert_int_equal(parse_size("0", &v), 0);
	assert_int_equal(v, 0);
	assert_int_equal(parse_size("0K", &v), 0);
	assert_int_equal(v, 0);
	assert_int_equal(parse_size("4096", &v), 0);
	assert_int_equal(v, 4096);
	assert_int_equal(parse_size("4K", &v), 0);
	assert_int_equal(v, 4096);
	assert_int_equal(parse_size("64M", &v), 0);
	assert_int_equal(v, 64ULL << 20);
	assert_int_equal(parse_size("2G", &v), 0);
	assert_int_equal(v, 2ULL << 30);
	assert_int_equal(parse_size("3T", &v), 0);
	assert_int_equal(v, 3ULL << 40);
	assert_int_equal(parse_size("16777215T", &v), 0);
	assert_int_equal(v, 16777215ULL << 40);
	assert_int_equal(parse_size("18446744073709551615", &v), 0);
	assert_int_equal(v, UINT64_MAX);
	/* errors */
	assert_int_equal(parse_size("", &v), -1);
	assert_int_equal(parse_size("K", &v), -1);
	assert_int_equal(parse_size("-1", &v), -1);
	assert_int_equal(parse_size("-1K", &v), -1);
	assert_int_equal(parse_size("1.5G", &v), -1);
	assert_int_equal(parse_size("4KB", &v), -1);
	assert_int_equal(parse_size("4P", &v), -1);
	assert_int_equal(parse_size("4 K", &v), -1);
	assert_int_equal(parse_size("16777216T", &v), -1);	/* 2^64 */
	assert_int_equal(parse_size("18446744073709551616", &v), -1);
	assert_int_equal(parse_size("99999999999999999999999", &v), -1);
	assert_int_equal(parse_size(NULL, &v), -1);
}

static int
setup(void **state)
{
	(void)state;
	return mkdtemp(tmpdir) == NULL ? -1 : 0;
}

static int
teardown(void **state)
{
	char cmd[64];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
	return system(cmd) == 0 ? 0 : -1;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_full),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_missing_file),
		cmocka_unit_test(test_roundtrip),
		cmocka_unit_test(test_print),
		cmocka_unit_test(test_firewall),
		cmocka_unit_test(test_parse_duration),
		cmocka_unit_test(test_parse_size),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
