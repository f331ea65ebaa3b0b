/*
 * config.c: load, check, print replicad.conf; derive an nftables ruleset.
 *
 * A small INI parser of our own: "[type NAME]" section headers, "key = value"
 * lines, '#' comments (whole line or after a value), blank lines.  Every
 * error becomes "FILE:LINE: KEY: message" (or "FILE:LINE: message" for
 * syntax and section problems) and config_load() returns -1 with nothing
 * left allocated.
 */
#include "config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#define MS_SEC	1000ULL
#define MS_MIN	(60 * MS_SEC)
#define MS_HOUR	(60 * MS_MIN)
#define MS_DAY	(24 * MS_HOUR)

/* ------------------------------------------------------------------ */
/* Parse helpers */

/* Digits only, no sign, no blanks; *end is set past the digits. */
static int
parse_u64_prefix(const char *s, uint64_t *v, const char **end)
{
	uint64_t n = 0;
	const char *p = s;

	if (!isdigit((unsigned char)*p))
		return -1;
	for (; isdigit((unsigned char)*p); p++) {
		unsigned d = (unsigned)(*p - '0');

		if (n > (UINT64_MAX - d) / 10)
			return -1;	/* overflow */
		n = n * 10 + d;
	}
	*v = n;
	*end = p;
	return 0;
}

static int
mul_overflows(uint64_t a, uint64_t b, uint64_t *r)
{
	if (a != 0 && b > UINT64_MAX / a)
		return 1;
	*r = a * b;
	return 0;
}

/*
 * An integer followed by ms, s, m, h or d.  A bare "0" is accepted (zero
 * needs no unit: "memory_interval = 0" means never); any other number
 * without a unit is an error.
 */
int
parse_duration(const char *s, uint64_t *ms)
{
	static const struct {
		const char *unit;
		uint64_t mult;
	} units[] = {
		{ "ms", 1 }, { "s", MS_SEC }, { "m", MS_MIN },
		{ "h", MS_HOUR }, { "d", MS_DAY },
	};
	uint64_t n;
	const char *end;
	size_t i;

	if (s == NULL || parse_u64_prefix(s, &n, &end) == -1)
		return -1;
	if (*end == '\0') {
		if (n != 0)
			return -1;	/* missing unit */
		*ms = 0;
		return 0;
	}
	for (i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
		if (strcmp(end, units[i].unit) == 0)
			return mul_overflows(n, units[i].mult, ms) ? -1 : 0;
	}
	return -1;
}

/* An integer with an optional K, M, G or T (binary) suffix. */
int
parse_size(const char *s, uint64_t *bytes)
{
	uint64_t n, mult;
	const char *end;

	if (s == NULL || parse_u64_prefix(s, &n, &end) == -1)
		return -1;
	switch (*end) {
	case '\0':
		*bytes = n;
		return 0;
	case 'K': case 'k': mult = 1ULL << 10; break;
	case 'M': case 'm': mult = 1ULL << 20; break;
	case 'G': case 'g': mult = 1ULL << 30; break;
	case 'T': case 't': mult = 1ULL << 40; break;
	default:
		return -1;
	}
	if (end[1] != '\0')
		return -1;
	return mul_overflows(n, mult, bytes) ? -1 : 0;
}

void
format_duration(uint64_t ms, char *buf, size_t len)
{
	if (ms == 0)
		snprintf(buf, len, "0");
	else if (ms % MS_DAY == 0)
		snprintf(buf, len, "%llud", (unsigned long long)(ms / MS_DAY));
	else if (ms % MS_HOUR == 0)
		snprintf(buf, len, "%lluh", (unsigned long long)(ms / MS_HOUR));
	else if (ms % MS_MIN == 0)
		snprintf(buf, len, "%llum", (unsigned long long)(ms / MS_MIN));
	else if (ms % MS_SEC == 0)
		snprintf(buf, len, "%llus", (unsigned long long)(ms / MS_SEC));
	else
		snprintf(buf, len, "%llums", (unsigned long long)ms);
}

static void
format_size(uint64_t b, char *buf, size_t len)
{
	static const char sfx[] = "TGMK";
	int i;

	for (i = 0; i < 4 && b != 0; i++) {
		unsigned shift = (unsigned)(40 - 10 * i);

		if ((b & ((1ULL << shift) - 1)) == 0) {
			snprintf(buf, len, "%llu%c",
			    (unsigned long long)(b >> shift), sfx[i]);
			return;
		}
	}
	snprintf(buf, len, "%llu", (unsigned long long)b);
}

/* [A-Za-z0-9._-]+, not starting with '.' */
static int
safe_name(const char *s)
{
	const char *p;

	if (s == NULL || *s == '\0' || *s == '.')
		return 0;
	for (p = s; *p; p++) {
		if (!isalnum((unsigned char)*p) && *p != '.' && *p != '_' &&
		    *p != '-')
			return 0;
	}
	return 1;
}

/* An IPv4/IPv6 address or CIDR prefix.  Returns AF_INET, AF_INET6 or 0. */
static int
parse_prefix(const char *s)
{
	char buf[INET6_ADDRSTRLEN + 8];
	unsigned char addr[sizeof(struct in6_addr)];
	const char *slash;
	int af, max;

	if (strlen(s) >= sizeof(buf))
		return 0;
	strcpy(buf, s);
	slash = strchr(s, '/');
	if (slash != NULL)
		buf[slash - s] = '\0';
	if (inet_pton(AF_INET, buf, addr) == 1) {
		af = AF_INET;
		max = 32;
	} else if (inet_pton(AF_INET6, buf, addr) == 1) {
		af = AF_INET6;
		max = 128;
	} else
		return 0;
	if (slash != NULL) {
		uint64_t n;
		const char *end;

		if (strlen(slash + 1) > 3 ||
		    parse_u64_prefix(slash + 1, &n, &end) == -1 ||
		    *end != '\0' || n > (uint64_t)max)
			return 0;
	}
	return af;
}

/* ------------------------------------------------------------------ */
/* Freeing */

static void
free_vm(struct cfg_vm *vm)
{
	size_t i;

	free(vm->name);
	for (i = 0; i < vm->ndisks; i++) {
		free(vm->disks[i].path);
		free(vm->disks[i].name);
	}
	free(vm->disks);
	free(vm->replicate_to);
	free(vm->qmp);
	free(vm->memory);
	free(vm->pid);
	free(vm->start);
	free(vm->quiesce);
	free(vm->thaw);
}

void
config_free(struct config *cfg)
{
	size_t i, j;

	if (cfg == NULL)
		return;
	free(cfg->path);
	free(cfg->site_name);
	free(cfg->state_dir);
	free(cfg->control);
	free(cfg->nbd);
	for (i = 0; i < cfg->npeers; i++) {
		free(cfg->peers[i].name);
		free(cfg->peers[i].host);
		free(cfg->peers[i].user);
		free(cfg->peers[i].key);
		free(cfg->peers[i].known_hosts);
	}
	free(cfg->peers);
	for (i = 0; i < cfg->nvms; i++)
		free_vm(&cfg->vms[i]);
	free(cfg->vms);
	for (i = 0; i < cfg->naccepts; i++) {
		free(cfg->accepts[i].peer);
		free(cfg->accepts[i].storage);
		for (j = 0; j < cfg->accepts[i].nfrom; j++)
			free(cfg->accepts[i].from[j]);
		free(cfg->accepts[i].from);
	}
	free(cfg->accepts);
	memset(cfg, 0, sizeof(*cfg));
}

/* ------------------------------------------------------------------ */
/* The parser */

enum sect { SECT_NONE, SECT_SITE, SECT_PEER, SECT_VM, SECT_ACCEPT };

/* Per-section bookkeeping the public structs have no room for. */
struct vm_extra {
	int replicate_to_line;
	int driver_line;
	int app_interval_line;
};

struct parser {
	const char *file;
	struct config *cfg;
	char *err;
	size_t errlen;
	int failed;
	int lineno;

	enum sect sect;
	size_t idx;		/* index of the current peer/vm/accept */
	uint32_t seen;		/* keys already given in this section */
	int site_line;		/* 0: no [site] yet */
	struct vm_extra *vmx;	/* parallel to cfg->vms */
};

static void perr(struct parser *, int, const char *, const char *, ...)
    __attribute__((format(printf, 4, 5)));

/* Record the first error only.  key may be NULL. */
static void
perr(struct parser *p, int line, const char *key, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (p->failed)
		return;
	p->failed = 1;
	if (p->err == NULL || p->errlen == 0)
		return;
	if (key != NULL)
		n = snprintf(p->err, p->errlen, "%s:%d: %s: ", p->file, line,
		    key);
	else if (line > 0)
		n = snprintf(p->err, p->errlen, "%s:%d: ", p->file, line);
	else
		n = snprintf(p->err, p->errlen, "%s: ", p->file);
	if (n < 0 || (size_t)n >= p->errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
	va_end(ap);
}

static int
oom(struct parser *p)
{
	perr(p, p->lineno, NULL, "out of memory");
	return -1;
}

static char *
trim(char *s)
{
	char *e;

	while (isspace((unsigned char)*s))
		s++;
	e = s + strlen(s);
	while (e > s && isspace((unsigned char)e[-1]))
		*--e = '\0';
	return s;
}

static const char *
sect_name(enum sect s)
{
	switch (s) {
	case SECT_SITE: return "site";
	case SECT_PEER: return "peer";
	case SECT_VM: return "vm";
	case SECT_ACCEPT: return "accept";
	default: return "?";
	}
}

/* Grow an array of n elements of size sz by one zeroed element. */
static void *
grow(void *arr, size_t n, size_t sz)
{
	char *a = realloc(arr, (n + 1) * sz);

	if (a != NULL)
		memset(a + n * sz, 0, sz);
	return a;
}

static int
section(struct parser *p, char *hdr)
{
	struct config *cfg = p->cfg;
	char *type, *name, *rest, *close;
	size_t i;

	close = strchr(hdr, ']');
	if (close == NULL || *trim(close + 1) != '\0') {
		perr(p, p->lineno, NULL,
		    "syntax error: expected '[section]' or '[section NAME]'");
		return -1;
	}
	*close = '\0';
	type = trim(hdr + 1);
	name = type + strcspn(type, " \t");
	if (*name != '\0') {
		*name++ = '\0';
		name = trim(name);
	}
	rest = name + strcspn(name, " \t");
	if (*rest != '\0') {
		perr(p, p->lineno, NULL, "[%s %s]: section name has blanks",
		    type, name);
		return -1;
	}
	p->seen = 0;

	if (strcmp(type, "site") == 0) {
		if (*name != '\0') {
			perr(p, p->lineno, NULL,
			    "[site] takes no name (use 'name = %s')", name);
			return -1;
		}
		if (p->site_line != 0) {
			perr(p, p->lineno, NULL,
			    "duplicate section [site] (first at line %d)",
			    p->site_line);
			return -1;
		}
		p->site_line = p->lineno;
		p->sect = SECT_SITE;
		return 0;
	}

	if (strcmp(type, "peer") != 0 && strcmp(type, "vm") != 0 &&
	    strcmp(type, "accept") != 0) {
		perr(p, p->lineno, NULL, "unknown section [%s]", type);
		return -1;
	}
	if (*name == '\0') {
		perr(p, p->lineno, NULL, "[%s] needs a name: [%s NAME]",
		    type, type);
		return -1;
	}
	if (!safe_name(name)) {
		perr(p, p->lineno, NULL, "[%s %s]: name must be made of "
		    "A-Z a-z 0-9 . _ - and not start with '.'", type, name);
		return -1;
	}

	if (strcmp(type, "peer") == 0) {
		struct cfg_peer *pe;

		for (i = 0; i < cfg->npeers; i++) {
			if (strcmp(cfg->peers[i].name, name) == 0) {
				perr(p, p->lineno, NULL, "duplicate section "
				    "[peer %s] (first at line %d)", name,
				    cfg->peers[i].line);
				return -1;
			}
		}
		if ((pe = grow(cfg->peers, cfg->npeers, sizeof(*pe))) == NULL)
			return oom(p);
		cfg->peers = pe;
		pe = &cfg->peers[cfg->npeers++];
		pe->line = p->lineno;
		pe->port = 22;
		if ((pe->name = strdup(name)) == NULL)
			return oom(p);
		p->sect = SECT_PEER;
		p->idx = cfg->npeers - 1;
	} else if (strcmp(type, "vm") == 0) {
		struct cfg_vm *vm;
		struct vm_extra *x;

		for (i = 0; i < cfg->nvms; i++) {
			if (strcmp(cfg->vms[i].name, name) == 0) {
				perr(p, p->lineno, NULL, "duplicate section "
				    "[vm %s] (first at line %d)", name,
				    cfg->vms[i].line);
				return -1;
			}
		}
		if ((x = grow(p->vmx, cfg->nvms, sizeof(*x))) == NULL)
			return oom(p);
		p->vmx = x;
		if ((vm = grow(cfg->vms, cfg->nvms, sizeof(*vm))) == NULL)
			return oom(p);
		cfg->vms = vm;
		vm = &cfg->vms[cfg->nvms++];
		vm->line = p->lineno;
		vm->interval_ms = 30 * MS_SEC;
		vm->keep[0] = (struct keep_rule){ MS_HOUR, 0 };
		vm->keep[1] = (struct keep_rule){ 24 * MS_HOUR, MS_HOUR };
		vm->keep[2] = (struct keep_rule){ 7 * MS_DAY, MS_DAY };
		vm->nkeep = 3;
		vm->compress = COMPRESS_ZSTD;
		vm->driver = DRIVER_NONE;
		vm->memory_interval_ms = 15 * MS_MIN;
		vm->app_interval_ms = 0;
		vm->journal_max = 0;
		vm->journal_max_pct = 25;
		vm->bandwidth = 0;
		if ((vm->name = strdup(name)) == NULL)
			return oom(p);
		p->sect = SECT_VM;
		p->idx = cfg->nvms - 1;
	} else {
		struct cfg_accept *ac;

		for (i = 0; i < cfg->naccepts; i++) {
			if (strcmp(cfg->accepts[i].peer, name) == 0) {
				perr(p, p->lineno, NULL, "duplicate section "
				    "[accept %s] (first at line %d)", name,
				    cfg->accepts[i].line);
				return -1;
			}
		}
		if ((ac = grow(cfg->accepts, cfg->naccepts, sizeof(*ac))) ==
		    NULL)
			return oom(p);
		cfg->accepts = ac;
		ac = &cfg->accepts[cfg->naccepts++];
		ac->line = p->lineno;
		if ((ac->peer = strdup(name)) == NULL)
			return oom(p);
		p->sect = SECT_ACCEPT;
		p->idx = cfg->naccepts - 1;
	}
	return 0;
}

/* Key tables: the index is the bit in parser.seen. */
static const char *const site_keys[] = {
	"name", "state_dir", "control", "nbd", "ssh_port", NULL
};
static const char *const peer_keys[] = {
	"host", "port", "user", "key", "known_hosts", NULL
};
static const char *const vm_keys[] = {
	"disk", "replicate_to", "interval", "keep", "compress", "driver",
	"qmp", "memory", "pid", "start", "memory_interval", "app_interval",
	"quiesce", "thaw", "journal_max", "bandwidth", NULL
};
static const char *const accept_keys[] = { "storage", "from", NULL };

static int
key_index(const char *const *keys, const char *key)
{
	int i;

	for (i = 0; keys[i] != NULL; i++)
		if (strcmp(keys[i], key) == 0)
			return i;
	return -1;
}

static int
set_str(struct parser *p, char **dst, const char *val)
{
	free(*dst);
	if ((*dst = strdup(val)) == NULL)
		return oom(p);
	return 0;
}

static int
get_port(struct parser *p, const char *key, const char *val, int *port)
{
	uint64_t n;
	const char *end;

	if (parse_u64_prefix(val, &n, &end) == -1 || *end != '\0' ||
	    n < 1 || n > 65535) {
		perr(p, p->lineno, key, "'%s' is not a port (1..65535)", val);
		return -1;
	}
	*port = (int)n;
	return 0;
}

static int
get_duration(struct parser *p, const char *key, const char *val,
    uint64_t *ms)
{
	if (parse_duration(val, ms) == -1) {
		perr(p, p->lineno, key, "'%s' is not a duration "
		    "(an integer followed by ms, s, m, h or d)", val);
		return -1;
	}
	return 0;
}

static int
get_size(struct parser *p, const char *key, const char *val, uint64_t *b)
{
	if (parse_size(val, b) == -1) {
		perr(p, p->lineno, key, "'%s' is not a size "
		    "(an integer with an optional K, M, G or T)", val);
		return -1;
	}
	return 0;
}

/* "AGE:STEP, AGE:STEP, ...", STEP a duration or 'all'. */
static int
parse_keep(struct parser *p, const char *val, struct cfg_vm *vm)
{
	char *copy, *tok, *save = NULL;
	int n = 0, rc = -1;

	if ((copy = strdup(val)) == NULL)
		return oom(p);
	save = copy;
	while ((tok = strsep(&save, ",")) != NULL) {
		char *colon, *age, *step;
		uint64_t a, s;

		tok = trim(tok);
		if (*tok == '\0') {
			perr(p, p->lineno, "keep", "empty rule in list");
			goto out;
		}
		if ((colon = strchr(tok, ':')) == NULL) {
			perr(p, p->lineno, "keep", "'%s' is not AGE:STEP or "
			    "AGE:all", tok);
			goto out;
		}
		*colon = '\0';
		age = trim(tok);
		step = trim(colon + 1);
		if (parse_duration(age, &a) == -1 || a == 0) {
			perr(p, p->lineno, "keep", "'%s' is not a positive "
			    "duration", age);
			goto out;
		}
		if (strcmp(step, "all") == 0)
			s = 0;
		else if (parse_duration(step, &s) == -1 || s == 0) {
			perr(p, p->lineno, "keep", "'%s' is not a positive "
			    "duration or 'all'", step);
			goto out;
		}
		if (s > a) {
			perr(p, p->lineno, "keep", "%s:%s: the step is longer "
			    "than the age", age, step);
			goto out;
		}
		if (n > 0 && a <= vm->keep[n - 1].age_ms) {
			perr(p, p->lineno, "keep", "%s:%s: ages must be "
			    "strictly increasing", age, step);
			goto out;
		}
		if (n == CFG_MAX_KEEP) {
			perr(p, p->lineno, "keep", "more than %d rules",
			    CFG_MAX_KEEP);
			goto out;
		}
		vm->keep[n].age_ms = a;
		vm->keep[n].step_ms = s;
		n++;
	}
	vm->nkeep = n;
	rc = 0;
out:
	free(copy);
	return rc;
}

static int
add_disk(struct parser *p, struct cfg_vm *vm, const char *path)
{
	struct cfg_disk *d;
	const char *base;
	char *name, *dot;
	size_t i;

	base = strrchr(path, '/');
	base = base ? base + 1 : path;
	if ((name = strdup(base)) == NULL)
		return oom(p);
	dot = strrchr(name, '.');
	if (dot != NULL && dot != name)
		*dot = '\0';
	if (!safe_name(name)) {
		perr(p, p->lineno, "disk", "'%s': export name '%s' must be "
		    "made of A-Z a-z 0-9 . _ - and not start with '.'", path,
		    name);
		free(name);
		return -1;
	}
	for (i = 0; i < vm->ndisks; i++) {
		if (strcmp(vm->disks[i].name, name) == 0) {
			perr(p, p->lineno, "disk", "'%s': export name '%s' "
			    "already used by '%s'", path, name,
			    vm->disks[i].path);
			free(name);
			return -1;
		}
	}
	if ((d = grow(vm->disks, vm->ndisks, sizeof(*d))) == NULL) {
		free(name);
		return oom(p);
	}
	vm->disks = d;
	d = &vm->disks[vm->ndisks];
	d->name = name;
	if ((d->path = strdup(path)) == NULL)
		return oom(p);
	vm->ndisks++;
	return 0;
}

static int
add_from(struct parser *p, struct cfg_accept *ac, const char *val)
{
	char *copy, *tok, *save = NULL;
	int rc = -1;

	if ((copy = strdup(val)) == NULL)
		return oom(p);
	save = copy;
	while ((tok = strsep(&save, ",")) != NULL) {
		char **f;

		tok = trim(tok);
		if (*tok == '\0') {
			perr(p, p->lineno, "from", "empty address in list");
			goto out;
		}
		if (parse_prefix(tok) == 0) {
			perr(p, p->lineno, "from", "'%s' is not an IPv4/IPv6 "
			    "address or CIDR prefix", tok);
			goto out;
		}
		if ((f = realloc(ac->from, (ac->nfrom + 1) * sizeof(*f))) ==
		    NULL) {
			oom(p);
			goto out;
		}
		ac->from = f;
		if ((f[ac->nfrom] = strdup(tok)) == NULL) {
			oom(p);
			goto out;
		}
		ac->nfrom++;
	}
	rc = 0;
out:
	free(copy);
	return rc;
}

static int
site_key(struct parser *p, const char *key, const char *val)
{
	struct config *cfg = p->cfg;

	if (strcmp(key, "name") == 0) {
		if (!safe_name(val)) {
			perr(p, p->lineno, key, "'%s' must be made of A-Z a-z "
			    "0-9 . _ - and not start with '.'", val);
			return -1;
		}
		return set_str(p, &cfg->site_name, val);
	}
	if (strcmp(key, "state_dir") == 0)
		return set_str(p, &cfg->state_dir, val);
	if (strcmp(key, "control") == 0)
		return set_str(p, &cfg->control, val);
	if (strcmp(key, "nbd") == 0)
		return set_str(p, &cfg->nbd, val);
	return get_port(p, key, val, &cfg->ssh_port);
}

static int
peer_key(struct parser *p, const char *key, const char *val)
{
	struct cfg_peer *pe = &p->cfg->peers[p->idx];

	if (strcmp(key, "host") == 0) {
		if (strpbrk(val, " \t") != NULL) {
			perr(p, p->lineno, key, "'%s' has blanks", val);
			return -1;
		}
		return set_str(p, &pe->host, val);
	}
	if (strcmp(key, "port") == 0)
		return get_port(p, key, val, &pe->port);
	if (strcmp(key, "user") == 0)
		return set_str(p, &pe->user, val);
	if (strcmp(key, "key") == 0)
		return set_str(p, &pe->key, val);
	return set_str(p, &pe->known_hosts, val);
}

static int
vm_key(struct parser *p, const char *key, const char *val)
{
	struct cfg_vm *vm = &p->cfg->vms[p->idx];
	struct vm_extra *x = &p->vmx[p->idx];

	if (strcmp(key, "disk") == 0)
		return add_disk(p, vm, val);
	if (strcmp(key, "replicate_to") == 0) {
		x->replicate_to_line = p->lineno;
		return set_str(p, &vm->replicate_to, val);
	}
	if (strcmp(key, "interval") == 0) {
		if (get_duration(p, key, val, &vm->interval_ms) == -1)
			return -1;
		if (vm->interval_ms < MS_SEC || vm->interval_ms > MS_HOUR) {
			perr(p, p->lineno, key, "'%s' is out of range "
			    "(1s .. 1h)", val);
			return -1;
		}
		return 0;
	}
	if (strcmp(key, "keep") == 0)
		return parse_keep(p, val, vm);
	if (strcmp(key, "compress") == 0) {
		if (strcmp(val, "zstd") == 0)
			vm->compress = COMPRESS_ZSTD;
		else if (strcmp(val, "none") == 0)
			vm->compress = COMPRESS_NONE;
		else {
			perr(p, p->lineno, key, "'%s' is not zstd or none",
			    val);
			return -1;
		}
		return 0;
	}
	if (strcmp(key, "driver") == 0) {
		x->driver_line = p->lineno;
		if (strcmp(val, "qemu") == 0)
			vm->driver = DRIVER_QEMU;
		else if (strcmp(val, "process") == 0)
			vm->driver = DRIVER_PROCESS;
		else if (strcmp(val, "none") == 0)
			vm->driver = DRIVER_NONE;
		else {
			perr(p, p->lineno, key, "'%s' is not qemu, process "
			    "or none", val);
			return -1;
		}
		return 0;
	}
	if (strcmp(key, "qmp") == 0)
		return set_str(p, &vm->qmp, val);
	if (strcmp(key, "memory") == 0)
		return set_str(p, &vm->memory, val);
	if (strcmp(key, "pid") == 0)
		return set_str(p, &vm->pid, val);
	if (strcmp(key, "start") == 0)
		return set_str(p, &vm->start, val);
	if (strcmp(key, "memory_interval") == 0)
		return get_duration(p, key, val, &vm->memory_interval_ms);
	if (strcmp(key, "app_interval") == 0) {
		x->app_interval_line = p->lineno;
		return get_duration(p, key, val, &vm->app_interval_ms);
	}
	if (strcmp(key, "quiesce") == 0)
		return set_str(p, &vm->quiesce, val);
	if (strcmp(key, "thaw") == 0)
		return set_str(p, &vm->thaw, val);
	if (strcmp(key, "journal_max") == 0) {
		size_t len = strlen(val);

		if (len > 1 && val[len - 1] == '%') {
			uint64_t n;
			const char *end;

			if (parse_u64_prefix(val, &n, &end) == -1 ||
			    end != val + len - 1 || n < 1 || n > 100) {
				perr(p, p->lineno, key, "'%s' is not a "
				    "percentage (1%% .. 100%%)", val);
				return -1;
			}
			vm->journal_max = 0;
			vm->journal_max_pct = (unsigned)n;
			return 0;
		}
		if (get_size(p, key, val, &vm->journal_max) == -1)
			return -1;
		vm->journal_max_pct = 0;
		return 0;
	}
	return get_size(p, key, val, &vm->bandwidth);	/* bandwidth */
}

static int
accept_key(struct parser *p, const char *key, const char *val)
{
	struct cfg_accept *ac = &p->cfg->accepts[p->idx];

	if (strcmp(key, "storage") == 0)
		return set_str(p, &ac->storage, val);
	return add_from(p, ac, val);
}

static int
keyval(struct parser *p, char *line)
{
	const char *const *keys;
	char *eq, *key, *val;
	int ki;

	if ((eq = strchr(line, '=')) == NULL) {
		perr(p, p->lineno, NULL,
		    "syntax error: expected 'key = value' or '[section]'");
		return -1;
	}
	*eq = '\0';
	key = trim(line);
	val = trim(eq + 1);
	if (*key == '\0') {
		perr(p, p->lineno, NULL, "syntax error: missing key before "
		    "'='");
		return -1;
	}
	switch (p->sect) {
	case SECT_SITE: keys = site_keys; break;
	case SECT_PEER: keys = peer_keys; break;
	case SECT_VM: keys = vm_keys; break;
	case SECT_ACCEPT: keys = accept_keys; break;
	default:
		perr(p, p->lineno, key, "key outside of any section");
		return -1;
	}
	if ((ki = key_index(keys, key)) == -1) {
		if (p->sect == SECT_SITE)
			perr(p, p->lineno, key, "unknown key in [site]");
		else
			perr(p, p->lineno, key, "unknown key in [%s %s]",
			    sect_name(p->sect),
			    p->sect == SECT_PEER ? p->cfg->peers[p->idx].name :
			    p->sect == SECT_VM ? p->cfg->vms[p->idx].name :
			    p->cfg->accepts[p->idx].peer);
		return -1;
	}
	/* 'disk' and 'from' may repeat; every other key is given once. */
	if ((p->seen & (1u << ki)) && strcmp(key, "disk") != 0 &&
	    strcmp(key, "from") != 0) {
		perr(p, p->lineno, key, "given twice in this section");
		return -1;
	}
	p->seen |= 1u << ki;
	if (*val == '\0') {
		perr(p, p->lineno, key, "empty value");
		return -1;
	}
	switch (p->sect) {
	case SECT_SITE: return site_key(p, key, val);
	case SECT_PEER: return peer_key(p, key, val);
	case SECT_VM: return vm_key(p, key, val);
	default: return accept_key(p, key, val);
	}
}

/* Checks across keys and sections, once the whole file is read. */
static int
check(struct parser *p)
{
	struct config *cfg = p->cfg;
	size_t i;

	if (p->site_line == 0) {
		perr(p, 0, NULL, "no [site] section (its 'name' is required)");
		return -1;
	}
	if (cfg->site_name == NULL) {
		perr(p, p->site_line, "name", "required in [site]");
		return -1;
	}
	for (i = 0; i < cfg->npeers; i++) {
		struct cfg_peer *pe = &cfg->peers[i];

		if (pe->host == NULL) {
			perr(p, pe->line, "host", "required in [peer %s]",
			    pe->name);
			return -1;
		}
		if (pe->key == NULL) {
			perr(p, pe->line, "key", "required in [peer %s]",
			    pe->name);
			return -1;
		}
		if (pe->known_hosts == NULL) {
			perr(p, pe->line, "known_hosts", "required in "
			    "[peer %s]", pe->name);
			return -1;
		}
		if (pe->user == NULL &&
		    (pe->user = strdup("replica")) == NULL)
			return oom(p);
	}
	for (i = 0; i < cfg->nvms; i++) {
		struct cfg_vm *vm = &cfg->vms[i];
		struct vm_extra *x = &p->vmx[i];
		int dline = x->driver_line ? x->driver_line : vm->line;

		if (vm->ndisks > 0 && vm->replicate_to == NULL) {
			perr(p, vm->line, "replicate_to", "required in "
			    "[vm %s], which has a disk", vm->name);
			return -1;
		}
		if (vm->replicate_to != NULL &&
		    config_peer(cfg, vm->replicate_to) == NULL) {
			perr(p, x->replicate_to_line, "replicate_to",
			    "no [peer %s] in this file", vm->replicate_to);
			return -1;
		}
		if (vm->driver == DRIVER_QEMU && vm->qmp == NULL) {
			perr(p, dline, "qmp", "driver qemu needs a qmp socket "
			    "in [vm %s]", vm->name);
			return -1;
		}
		if (vm->driver == DRIVER_PROCESS && vm->ndisks > 0 &&
		    (vm->pid == NULL || vm->memory == NULL)) {
			perr(p, dline, vm->pid == NULL ? "pid" : "memory",
			    "driver process needs pid and memory in [vm %s]",
			    vm->name);
			return -1;
		}
		if (vm->app_interval_ms != 0 && vm->quiesce == NULL) {
			perr(p, x->app_interval_line, "quiesce", "app_interval "
			    "needs a quiesce command in [vm %s]", vm->name);
			return -1;
		}
	}
	for (i = 0; i < cfg->naccepts; i++) {
		struct cfg_accept *ac = &cfg->accepts[i];

		if (ac->storage == NULL) {
			perr(p, ac->line, "storage", "required in [accept %s]",
			    ac->peer);
			return -1;
		}
	}
	if (cfg->state_dir == NULL &&
	    (cfg->state_dir = strdup("/var/lib/replicad")) == NULL)
		return oom(p);
	if (cfg->control == NULL &&
	    (cfg->control = strdup("/run/replicad/control.sock")) == NULL)
		return oom(p);
	if (cfg->nbd == NULL &&
	    (cfg->nbd = strdup("/run/replicad/nbd.sock")) == NULL)
		return oom(p);
	if (cfg->ssh_port == 0)
		cfg->ssh_port = 22;
	return 0;
}

int
config_load(const char *path, struct config *cfg, char *err, size_t errlen)
{
	struct parser p;
	FILE *fp;
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;

	memset(cfg, 0, sizeof(*cfg));
	memset(&p, 0, sizeof(p));
	p.file = path;
	p.cfg = cfg;
	p.err = err;
	p.errlen = errlen;
	if (err != NULL && errlen > 0)
		err[0] = '\0';

	if ((fp = fopen(path, "r")) == NULL) {
		perr(&p, 0, NULL, "%s", strerror(errno));
		return -1;
	}
	if ((cfg->path = strdup(path)) == NULL)
		oom(&p);
	while (!p.failed && (n = getline(&line, &cap, fp)) != -1) {
		char *s, *hash;

		p.lineno++;
		if (memchr(line, '\0', (size_t)n) != NULL) {
			perr(&p, p.lineno, NULL, "NUL byte in line");
			break;
		}
		if ((hash = strchr(line, '#')) != NULL)
			*hash = '\0';
		s = trim(line);
		if (*s == '\0')
			continue;
		if (*s == '[')
			section(&p, s);
		else
			keyval(&p, s);
	}
	if (!p.failed && ferror(fp))
		perr(&p, p.lineno, NULL, "read error: %s", strerror(errno));
	free(line);
	fclose(fp);
	if (!p.failed)
		check(&p);
	free(p.vmx);
	if (p.failed) {
		config_free(cfg);
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Lookups */

const struct cfg_peer *
config_peer(const struct config *cfg, const char *name)
{
	size_t i;

	for (i = 0; i < cfg->npeers; i++)
		if (strcmp(cfg->peers[i].name, name) == 0)
			return &cfg->peers[i];
	return NULL;
}

const struct cfg_vm *
config_vm(const struct config *cfg, const char *name)
{
	size_t i;

	for (i = 0; i < cfg->nvms; i++)
		if (strcmp(cfg->vms[i].name, name) == 0)
			return &cfg->vms[i];
	return NULL;
}

const struct cfg_accept *
config_accept(const struct config *cfg, const char *peer)
{
	size_t i;

	for (i = 0; i < cfg->naccepts; i++)
		if (strcmp(cfg->accepts[i].peer, peer) == 0)
			return &cfg->accepts[i];
	return NULL;
}

/* ------------------------------------------------------------------ */
/* Printing */

static void
print_opt(FILE *fp, const char *key, const char *val)
{
	if (val != NULL)
		fprintf(fp, "%s = %s\n", key, val);
}

static void
print_peer(FILE *fp, const struct cfg_peer *pe)
{
	fprintf(fp, "\n[peer %s]\n", pe->name);
	fprintf(fp, "host = %s\n", pe->host);
	fprintf(fp, "port = %d\n", pe->port);
	fprintf(fp, "user = %s\n", pe->user ? pe->user : "replica");
	fprintf(fp, "key = %s\n", pe->key);
	fprintf(fp, "known_hosts = %s\n", pe->known_hosts);
}

static void
print_vm(FILE *fp, const struct cfg_vm *vm)
{
	static const char *const drivers[] = { "none", "qemu", "process" };
	char a[32], b[32];
	size_t i;
	int k;

	fprintf(fp, "\n[vm %s]\n", vm->name);
	for (i = 0; i < vm->ndisks; i++)
		fprintf(fp, "disk = %s\n", vm->disks[i].path);
	print_opt(fp, "replicate_to", vm->replicate_to);
	format_duration(vm->interval_ms, a, sizeof(a));
	fprintf(fp, "interval = %s\n", a);
	fprintf(fp, "keep = ");
	for (k = 0; k < vm->nkeep; k++) {
		format_duration(vm->keep[k].age_ms, a, sizeof(a));
		if (vm->keep[k].step_ms == 0)
			snprintf(b, sizeof(b), "all");
		else
			format_duration(vm->keep[k].step_ms, b, sizeof(b));
		fprintf(fp, "%s%s:%s", k ? ", " : "", a, b);
	}
	fprintf(fp, "\n");
	fprintf(fp, "compress = %s\n",
	    vm->compress == COMPRESS_NONE ? "none" : "zstd");
	fprintf(fp, "driver = %s\n", (unsigned)vm->driver < 3 ?
	    drivers[vm->driver] : "none");
	print_opt(fp, "qmp", vm->qmp);
	print_opt(fp, "memory", vm->memory);
	print_opt(fp, "pid", vm->pid);
	print_opt(fp, "start", vm->start);
	format_duration(vm->memory_interval_ms, a, sizeof(a));
	fprintf(fp, "memory_interval = %s\n", a);
	format_duration(vm->app_interval_ms, a, sizeof(a));
	fprintf(fp, "app_interval = %s\n", a);
	print_opt(fp, "quiesce", vm->quiesce);
	print_opt(fp, "thaw", vm->thaw);
	if (vm->journal_max_pct != 0)
		fprintf(fp, "journal_max = %u%%\n", vm->journal_max_pct);
	else {
		format_size(vm->journal_max, a, sizeof(a));
		fprintf(fp, "journal_max = %s\n", a);
	}
	format_size(vm->bandwidth, a, sizeof(a));
	fprintf(fp, "bandwidth = %s\n", a);
}

static void
print_accept(FILE *fp, const struct cfg_accept *ac)
{
	size_t i;

	fprintf(fp, "\n[accept %s]\n", ac->peer);
	fprintf(fp, "storage = %s\n", ac->storage);
	if (ac->nfrom > 0) {
		fprintf(fp, "from = ");
		for (i = 0; i < ac->nfrom; i++)
			fprintf(fp, "%s%s", i ? ", " : "", ac->from[i]);
		fprintf(fp, "\n");
	}
}

/*
 * [site] first, then the other sections in the order of the file (by
 * their line numbers); optional keys that are not set are left out.
 */
void
config_print(FILE *fp, const struct config *cfg)
{
	size_t ip = 0, iv = 0, ia = 0;

	fprintf(fp, "[site]\n");
	fprintf(fp, "name = %s\n", cfg->site_name);
	fprintf(fp, "state_dir = %s\n", cfg->state_dir);
	fprintf(fp, "control = %s\n", cfg->control);
	fprintf(fp, "nbd = %s\n", cfg->nbd);
	fprintf(fp, "ssh_port = %d\n", cfg->ssh_port);
	for (;;) {
		int lp = ip < cfg->npeers ? cfg->peers[ip].line : -1;
		int lv = iv < cfg->nvms ? cfg->vms[iv].line : -1;
		int la = ia < cfg->naccepts ? cfg->accepts[ia].line : -1;

		if (lp >= 0 && (lv < 0 || lp <= lv) && (la < 0 || lp <= la))
			print_peer(fp, &cfg->peers[ip++]);
		else if (lv >= 0 && (la < 0 || lv <= la))
			print_vm(fp, &cfg->vms[iv++]);
		else if (la >= 0)
			print_accept(fp, &cfg->accepts[ia++]);
		else
			break;
	}
}

/* ------------------------------------------------------------------ */
/* Firewall */

/*
 * The ruleset restricts only what replicad needs and leaves every other
 * flow of the machine alone: both chains have policy accept.  Inbound, TCP
 * to ssh_port is accepted from each [accept] 'from' address (from anywhere
 * for an [accept] without 'from'), and then dropped from everyone else; a
 * site without [accept] sections takes no replication, so its ssh_port is
 * not touched (dropping it would only lock out administrators).  Outbound,
 * TCP to each [peer] host:port is accepted explicitly (with a counter), as a
 * record of what replicad talks to; nothing outbound is dropped.  The table
 * is declared, flushed and redefined, so the output can be re-applied with
 * 'nft -f' any number of times.
 */

struct addrlist {
	char (*a)[INET6_ADDRSTRLEN];
	int *af;
	size_t n;
};

static void
addr_add(struct addrlist *l, int af, const void *addr)
{
	char buf[INET6_ADDRSTRLEN];
	void *na, *nf;
	size_t i;

	if (inet_ntop(af, addr, buf, sizeof(buf)) == NULL)
		return;
	for (i = 0; i < l->n; i++)
		if (strcmp(l->a[i], buf) == 0)
			return;
	if ((na = realloc(l->a, (l->n + 1) * sizeof(*l->a))) == NULL)
		return;
	l->a = na;
	if ((nf = realloc(l->af, (l->n + 1) * sizeof(*l->af))) == NULL)
		return;
	l->af = nf;
	memcpy(l->a[l->n], buf, sizeof(buf));
	l->af[l->n] = af;
	l->n++;
}

static void
fw_peer(FILE *fp, const struct cfg_peer *pe)
{
	struct addrlist l = { NULL, NULL, 0 };
	unsigned char bin[sizeof(struct in6_addr)];
	struct addrinfo hints, *res = NULL, *ai;
	size_t i;
	int rc;

	if (inet_pton(AF_INET, pe->host, bin) == 1)
		addr_add(&l, AF_INET, bin);
	else if (inet_pton(AF_INET6, pe->host, bin) == 1)
		addr_add(&l, AF_INET6, bin);
	else {
		fprintf(fp, "\t\t# resolve %s\n", pe->host);
		memset(&hints, 0, sizeof(hints));
		hints.ai_family = AF_UNSPEC;
		hints.ai_socktype = SOCK_STREAM;
		rc = getaddrinfo(pe->host, NULL, &hints, &res);
		if (rc != 0) {
			fprintf(fp, "\t\t# peer %s: %s could not be resolved "
			    "(%s); no rule\n", pe->name, pe->host,
			    gai_strerror(rc));
			return;
		}
		for (ai = res; ai != NULL; ai = ai->ai_next) {
			if (ai->ai_family == AF_INET)
				addr_add(&l, AF_INET, &((struct sockaddr_in *)
				    (void *)ai->ai_addr)->sin_addr);
			else if (ai->ai_family == AF_INET6)
				addr_add(&l, AF_INET6, &((struct sockaddr_in6 *)
				    (void *)ai->ai_addr)->sin6_addr);
		}
		freeaddrinfo(res);
		if (l.n == 0)
			fprintf(fp, "\t\t# peer %s: %s has no IPv4/IPv6 "
			    "address; no rule\n", pe->name, pe->host);
	}
	for (i = 0; i < l.n; i++)
		fprintf(fp, "\t\t%s daddr %s tcp dport %d counter accept "
		    "comment \"replicad peer %s\"\n",
		    l.af[i] == AF_INET ? "ip" : "ip6", l.a[i], pe->port,
		    pe->name);
	free(l.a);
	free(l.af);
}

void
config_firewall(FILE *fp, const struct config *cfg)
{
	size_t i, j;

	fprintf(fp, "#!/usr/sbin/nft -f\n");
	fprintf(fp, "# replicad firewall for site %s (from %s)\n",
	    cfg->site_name, cfg->path ? cfg->path : "config");
	fprintf(fp, "# Only replicad's own traffic is named here; both chains "
	    "have policy accept,\n# so other traffic is left alone.\n");
	if (cfg->naccepts > 0)
		fprintf(fp, "# Inbound TCP port %d is admitted only from the "
		    "[accept] addresses and\n# dropped from anyone else.\n",
		    cfg->ssh_port);
	fprintf(fp, "table inet replicad {}\n");
	fprintf(fp, "flush table inet replicad\n");
	fprintf(fp, "table inet replicad {\n");

	fprintf(fp, "\tchain input {\n");
	fprintf(fp, "\t\ttype filter hook input priority 0; policy accept;\n");
	fprintf(fp, "\t\tiif \"lo\" accept\n");
	fprintf(fp, "\t\tct state established,related accept\n");
	if (cfg->naccepts == 0)
		fprintf(fp, "\t\t# no [accept] sections: this site takes no "
		    "replication, tcp port %d is left alone\n", cfg->ssh_port);
	for (i = 0; i < cfg->naccepts; i++) {
		const struct cfg_accept *ac = &cfg->accepts[i];

		if (ac->nfrom == 0) {
			fprintf(fp, "\t\t# accept %s has no 'from': admitted "
			    "from anywhere\n", ac->peer);
			fprintf(fp, "\t\ttcp dport %d counter accept comment "
			    "\"replicad accept %s (from anywhere)\"\n",
			    cfg->ssh_port, ac->peer);
			continue;
		}
		for (j = 0; j < ac->nfrom; j++) {
			int af = parse_prefix(ac->from[j]);

			if (af == 0)
				continue;	/* checked at load */
			fprintf(fp, "\t\t%s saddr %s tcp dport %d counter "
			    "accept comment \"replicad accept %s\"\n",
			    af == AF_INET ? "ip" : "ip6", ac->from[j],
			    cfg->ssh_port, ac->peer);
		}
	}
	if (cfg->naccepts > 0)
		fprintf(fp, "\t\ttcp dport %d counter drop comment "
		    "\"replicad: not an [accept] address\"\n", cfg->ssh_port);
	fprintf(fp, "\t}\n");

	fprintf(fp, "\tchain output {\n");
	fprintf(fp, "\t\ttype filter hook output priority 0; "
	    "policy accept;\n");
	fprintf(fp, "\t\toif \"lo\" accept\n");
	fprintf(fp, "\t\tct state established,related accept\n");
	if (cfg->npeers == 0)
		fprintf(fp, "\t\t# no [peer] sections: this site ships to "
		    "nobody\n");
	for (i = 0; i < cfg->npeers; i++)
		fw_peer(fp, &cfg->peers[i]);
	fprintf(fp, "\t}\n");
	fprintf(fp, "}\n");
}
