/*
 * config.h: the parsed replicad.conf (see replicad.conf(5)).
 *
 * config_load() reads an INI file: sections [site], [peer NAME], [vm NAME],
 * [accept NAME]; '#' starts a comment (also after a value); durations
 * 500ms 30s 5m 1h 7d; sizes 4K 64M 2G (binary units) or a percentage where
 * a key allows it.  Any error is reported as "FILE:LINE: KEY: what is wrong"
 * in err and the call returns -1; nothing half-parsed is left behind.
 */
#ifndef REPLICAD_CONFIG_H
#define REPLICAD_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define CFG_MAX_KEEP 16

enum cfg_driver { DRIVER_NONE = 0, DRIVER_QEMU, DRIVER_PROCESS };
enum cfg_compress { COMPRESS_ZSTD = 0, COMPRESS_NONE };

/* One tier of the retention grid: within age_ms keep one point per step_ms
 * (step_ms == 0 means 'all'). */
struct keep_rule {
	uint64_t age_ms;
	uint64_t step_ms;
};

struct cfg_peer {
	char *name;
	char *host;
	int port;		/* default 22 */
	char *user;		/* default "replica" */
	char *key;		/* private key path (required) */
	char *known_hosts;	/* required */
	int line;
};

struct cfg_disk {
	char *path;
	char *name;		/* basename without extension: export VM/NAME */
};

struct cfg_vm {
	char *name;
	struct cfg_disk *disks;	/* none: a DR-side [vm] section */
	size_t ndisks;
	char *replicate_to;	/* required when disks are given */
	uint64_t interval_ms;	/* 1s .. 1h, default 30s */
	struct keep_rule keep[CFG_MAX_KEEP];
	int nkeep;		/* default: 1h:all, 24h:1h, 7d:1d */
	enum cfg_compress compress;	/* default zstd */
	enum cfg_driver driver;
	char *qmp;
	char *memory;
	char *pid;
	char *start;		/* DR side: command to start the VM */
	uint64_t memory_interval_ms;	/* 0 = never (default 15m) */
	uint64_t app_interval_ms;	/* 0 = never (default 0) */
	char *quiesce;
	char *thaw;
	uint64_t journal_max;	/* bytes; 0 if given as a percentage */
	unsigned journal_max_pct;	/* default 25 */
	uint64_t bandwidth;	/* bytes/s, 0 = none */
	int line;
};

struct cfg_accept {
	char *peer;
	char *storage;		/* required */
	char **from;		/* addresses or CIDR prefixes, may be empty */
	size_t nfrom;
	int line;
};

struct config {
	char *path;
	char *site_name;	/* required */
	char *state_dir;	/* default /var/lib/replicad */
	char *control;		/* default /run/replicad/control.sock */
	char *nbd;		/* default /run/replicad/nbd.sock */
	int ssh_port;		/* default 22 */
	struct cfg_peer *peers;
	size_t npeers;
	struct cfg_vm *vms;
	size_t nvms;
	struct cfg_accept *accepts;
	size_t naccepts;
};

int config_load(const char *path, struct config *cfg, char *err, size_t errlen);
void config_free(struct config *cfg);
/* Print the config normalized (every key, defaults filled in, canonical
 * units) so that config_load() of the output gives the same config. */
void config_print(FILE *fp, const struct config *cfg);
/* Print an nftables ruleset admitting only what the config names. */
void config_firewall(FILE *fp, const struct config *cfg);

const struct cfg_peer *config_peer(const struct config *cfg, const char *name);
const struct cfg_vm *config_vm(const struct config *cfg, const char *name);
const struct cfg_accept *config_accept(const struct config *cfg,
    const char *peer);

/* Parse helpers, also used by the CLI.  Return 0 or -1. */
int parse_duration(const char *s, uint64_t *ms);
int parse_size(const char *s, uint64_t *bytes);
/* Format a duration in the largest unit that divides it ("30s", "1h"). */
void format_duration(uint64_t ms, char *buf, size_t len);

#endif
