/*
 * replica.c: the CLI.  `replica [-c FILE] [--json] COMMAND [ARGS]` talks
 * to the daemon's control socket (one JSON request, one JSON reply) and
 * prints the reply as text or JSON.  Commands are parsed from a static
 * table; every command gets --json through the printers.
 *
 * Exit status: 0 done; 1 refused or failed (one line on stderr); 2 usage;
 * 3 daemon not reachable.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <jansson.h>

#include "config.h"

enum { EX_DONE = 0, EX_FAIL = 1, EX_USAGE = 2, EX_UNREACHABLE = 3 };

struct cmd {
	const char *name;
	int needs_vm;
	const char *flags;	/* accepted options, space separated */
	void (*print)(json_t *reply);
	const char *usage;
};

static void print_status(json_t *r);
static void print_points(json_t *r);
static void print_point(json_t *r);
static void print_failover(json_t *r);
static void print_ok(json_t *r);

static const struct cmd cmds[] = {
	{ "status", 0, "", print_status, "status [VM]" },
	{ "points", 1, "", print_points, "points VM" },
	{ "checkpoint", 1, "--label= --memory --wait", print_point,
	    "checkpoint VM [--label TEXT] [--memory] [--wait]" },
	{ "failover", 1, "--point= --test --start --planned", print_failover,
	    "failover VM --point N|latest [--test] [--start] | --planned" },
	{ "commit", 1, "", print_ok, "commit VM" },
	{ "cancel", 1, "", print_ok, "cancel VM" },
	{ "migrate", 1, "--max-downtime=", print_ok,
	    "migrate VM [--max-downtime MS]" },
	{ "reverse", 1, "", print_ok, "reverse VM" },
	{ "pause", 1, "", print_ok, "pause VM" },
	{ "resume", 1, "", print_ok, "resume VM" },
	{ "resync", 1, "", print_ok, "resync VM" },
	{ "firewall", 0, "", NULL, "firewall" },
};

static void
usage(void)
{
	fprintf(stderr, "usage: replica [-c FILE] [--json] COMMAND\n");
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		fprintf(stderr, "       replica %s\n", cmds[i].usage);
	exit(EX_USAGE);
}

static const char *
str(json_t *o, const char *k)
{
	const char *s = json_string_value(json_object_get(o, k));

	return s ? s : "";
}

static long long
num(json_t *o, const char *k)
{
	return (long long)json_integer_value(json_object_get(o, k));
}

static void
human(unsigned long long b, char *buf, size_t len)
{
	const char *u[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double v = (double)b;
	int i = 0;

	while (v >= 1024 && i < 4) {
		v /= 1024;
		i++;
	}
	snprintf(buf, len, i ? "%.1f %s" : "%.0f %s", v, u[i]);
}

static void
print_status(json_t *r)
{
	json_t *vms = json_object_get(r, "vms"), *v;
	size_t i;

	printf("%-16s %-8s %-14s %-8s %10s %10s %12s\n", "VM", "ROLE",
	    "STATE", "HEALTH", "LAG", "LAST-POINT", "JOURNAL");
	json_array_foreach(vms, i, v) {
		char lag[32], jb[32];
		json_t *ic = json_object_get(v, "initial_copy");

		snprintf(lag, sizeof(lag), "%.1fs",
		    json_real_value(json_object_get(v, "lag_seconds")));
		human((unsigned long long)num(v, "journal_bytes"), jb,
		    sizeof(jb));
		printf("%-16s %-8s %-14s %-8s %10s %10lld %12s\n",
		    str(v, "name"), str(v, "role"), str(v, "state"),
		    str(v, "health"), lag, num(v, "last_point"), jb);
		if (ic && json_object_get(v, "state") &&
		    strcmp(str(v, "state"), "initial-copy") == 0) {
			char d[32], t[32];

			human((unsigned long long)num(ic, "done"), d,
			    sizeof(d));
			human((unsigned long long)num(ic, "total"), t,
			    sizeof(t));
			printf("  initial copy: %s of %s (%.1f%%)\n", d, t,
			    json_real_value(json_object_get(ic, "percent")));
		}
		if (json_object_get(v, "error"))
			printf("  error: %s\n", str(v, "error"));
		if (json_object_get(v, "link") &&
		    strcmp(str(v, "link"), "ready") != 0)
			printf("  link: %s\n", str(v, "link"));
	}
}

static void
print_points(json_t *r)
{
	json_t *pts = json_object_get(r, "points"), *p;
	size_t i;

	printf("%6s  %-24s  %-9s  %12s  %s\n", "ID", "TIME", "KIND", "BYTES",
	    "LABEL");
	json_array_foreach(pts, i, p)
		printf("%6lld  %-24s  %-9s  %12lld  %s\n", num(p, "id"),
		    str(p, "time"), str(p, "kind"), num(p, "bytes"),
		    str(p, "label"));
}

static void
print_point(json_t *r)
{
	printf("%lld\n", num(r, "point"));
}

static void
print_failover(json_t *r)
{
	json_t *disks = json_object_get(r, "disks"), *dk;
	size_t i;

	printf("vm %s at point %lld\n", str(r, "vm"), num(r, "point"));
	json_array_foreach(disks, i, dk)
		printf("disk %s %s\n", str(dk, "name"), str(dk, "path"));
}

static void
print_ok(json_t *r)
{
	(void)r;
	printf("ok\n");
}

/* Send one request, read one reply line. */
static json_t *
call(const char *path, json_t *req)
{
	struct sockaddr_un sun;
	char *s = json_dumps(req, JSON_COMPACT);
	char *line = NULL;
	size_t cap = 0;
	FILE *fp;
	json_t *rep;
	json_error_t je;
	int fd;

	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1 ||
	    connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == -1) {
		fprintf(stderr, "replica: replicad not reachable at %s: %s\n",
		    path, strerror(errno));
		exit(EX_UNREACHABLE);
	}
	if (write(fd, s, strlen(s)) != (ssize_t)strlen(s) ||
	    write(fd, "\n", 1) != 1) {
		fprintf(stderr, "replica: %s: %s\n", path, strerror(errno));
		exit(EX_UNREACHABLE);
	}
	free(s);
	if ((fp = fdopen(fd, "r")) == NULL || getline(&line, &cap, fp) < 0) {
		fprintf(stderr, "replica: replicad closed the connection\n");
		exit(EX_UNREACHABLE);
	}
	fclose(fp);
	rep = json_loads(line, 0, &je);
	free(line);
	if (rep == NULL) {
		fprintf(stderr, "replica: malformed reply: %s\n", je.text);
		exit(EX_FAIL);
	}
	return rep;
}

/* Is OPT (without its '=' part) among the space-separated FLAGS?  Sets
 * *takes_value. */
static int
flag_ok(const char *flags, const char *opt, int *takes_value)
{
	size_t n = strlen(opt);
	const char *p = flags;

	while ((p = strstr(p, opt)) != NULL) {
		if ((p == flags || p[-1] == ' ') &&
		    (p[n] == ' ' || p[n] == '\0' || p[n] == '=')) {
			*takes_value = p[n] == '=';
			return 1;
		}
		p += n;
	}
	return 0;
}

int
main(int argc, char **argv)
{
	const char *conf = getenv("REPLICAD_CONF");
	const struct cmd *c = NULL;
	struct config cfg;
	char err[1024];
	int json = 0, i = 1, rc;
	json_t *req, *rep;

	if (conf == NULL)
		conf = "/etc/replicad/replicad.conf";
	for (; i < argc && argv[i][0] == '-'; i++) {
		if (strcmp(argv[i], "-c") == 0 && i + 1 < argc)
			conf = argv[++i];
		else if (strcmp(argv[i], "--json") == 0)
			json = 1;
		else if (strcmp(argv[i], "-h") == 0 ||
		    strcmp(argv[i], "--help") == 0)
			usage();
		else {
			fprintf(stderr, "replica: unknown option %s\n",
			    argv[i]);
			usage();
		}
	}
	if (i >= argc)
		usage();
	for (size_t k = 0; k < sizeof(cmds) / sizeof(cmds[0]); k++)
		if (strcmp(argv[i], cmds[k].name) == 0)
			c = &cmds[k];
	if (c == NULL) {
		fprintf(stderr, "replica: unknown command '%s'\n", argv[i]);
		usage();
	}
	req = json_pack("{s:s}", "cmd", c->name);
	for (i++; i < argc; i++) {
		int takes;

		if (strcmp(argv[i], "--json") == 0) {
			json = 1;
			continue;
		}
		if (argv[i][0] != '-') {
			if (json_object_get(req, "vm")) {
				fprintf(stderr, "replica: %s: unexpected '%s'\n",
				    c->name, argv[i]);
				usage();
			}
			json_object_set_new(req, "vm", json_string(argv[i]));
			continue;
		}
		if (!flag_ok(c->flags, argv[i], &takes)) {
			fprintf(stderr, "replica: %s: unknown option %s\n",
			    c->name, argv[i]);
			usage();
		}
		if (takes) {
			if (i + 1 >= argc) {
				fprintf(stderr, "replica: %s needs a value\n",
				    argv[i]);
				usage();
			}
			json_object_set_new(req, argv[i] + 2,
			    json_string(argv[i + 1]));
			i++;
		} else
			json_object_set_new(req, argv[i] + 2, json_true());
	}
	if (c->needs_vm && !json_object_get(req, "vm")) {
		fprintf(stderr, "replica: %s needs a VM\n", c->name);
		usage();
	}
	if (strcmp(c->name, "failover") == 0 &&
	    !json_object_get(req, "point") && !json_object_get(req, "planned")) {
		fprintf(stderr, "replica: failover needs --point N|latest "
		    "(or --planned on the primary)\n");
		usage();
	}
	if (config_load(conf, &cfg, err, sizeof(err)) != 0) {
		fprintf(stderr, "replica: %s\n", err);
		return EX_FAIL;
	}
	if (strcmp(c->name, "firewall") == 0) {
		config_firewall(stdout, &cfg);
		config_free(&cfg);
		json_decref(req);
		return EX_DONE;
	}
	rep = call(cfg.control, req);
	config_free(&cfg);
	json_decref(req);
	if (!json_is_true(json_object_get(rep, "ok"))) {
		fprintf(stderr, "replica: %s\n", str(rep, "error"));
		rc = EX_FAIL;
	} else {
		json_object_del(rep, "ok");
		if (json) {
			char *s = json_dumps(rep, JSON_INDENT(2) |
			    JSON_PRESERVE_ORDER);

			printf("%s\n", s);
			free(s);
		} else
			c->print(rep);
		rc = EX_DONE;
	}
	json_decref(rep);
	return rc;
}
