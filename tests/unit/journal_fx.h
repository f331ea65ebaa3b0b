/*
 * journal_fx.h: the fixture and helpers shared by the journal's unit tests
 * (test_journal.c, test_jlog.c): a journal in a mkdtemp directory removed
 * in teardown, deterministic data, and journal_read() collected.
 */
#ifndef REPLICAD_JOURNAL_FX_H
#define REPLICAD_JOURNAL_FX_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <ftw.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "journal.h"
#include "kv.h"

struct fx {
	char dir[64];
	char jdir[128];
	struct journal *j;
};

static inline int
rm_cb(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static inline void
rm_rf(const char *dir)
{
	nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static inline struct journal *
jopen(struct fx *f)
{
	char err[256] = "";
	struct journal *j = journal_open(f->jdir, err, sizeof(err));

	if (j == NULL)
		fail_msg("journal_open %s: %s", f->jdir, err);
	return j;
}

static inline void
reopen(struct fx *f)
{
	journal_close(f->j);
	f->j = jopen(f);
}

static inline int
setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	strcpy(f->dir, "/tmp/test_journal.XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->jdir, sizeof(f->jdir), "%s/j", f->dir);
	f->j = jopen(f);
	*state = f;
	return 0;
}

static inline int
teardown(void **state)
{
	struct fx *f = *state;

	journal_close(f->j);
	rm_rf(f->dir);
	free(f);
	return 0;
}

/* deterministic pseudo-random bytes */
static inline uint64_t
rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static inline uint8_t *
pattern(size_t len, uint64_t seed)
{
	uint8_t *p = malloc(len ? len : 1);
	uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;

	assert_non_null(p);
	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)(rnd(&s) >> 24);
	return p;
}

/* ------------------------------------------------------------------ */
/* collecting journal_read / journal_points output */

struct rec {
	uint64_t seq;
	enum jentry_type type;
	uint32_t disk;
	uint64_t offset;
	uint32_t length;
	uint8_t *data;
	uint64_t point_id;
	int64_t time_ms;
	enum point_kind kind;
	char label[JOURNAL_LABEL_MAX + 1];
};

struct recs {
	struct rec r[4096];
	size_t n;
	size_t stop_after;	/* return 1 after this many (0 = never) */
	int scan;		/* journal_scan: entries without data */
};

static inline int
collect(const struct jentry *e, void *arg)
{
	struct recs *rs = arg;
	struct rec *r;

	assert_true(rs->n < sizeof(rs->r) / sizeof(rs->r[0]));
	r = &rs->r[rs->n++];
	memset(r, 0, sizeof(*r));
	r->seq = e->seq;
	r->type = e->type;
	r->disk = e->disk;
	r->offset = e->offset;
	r->length = e->length;
	if (rs->scan)
		assert_null(e->data);
	else if (e->type == JE_WRITE) {
		assert_non_null(e->data);
		r->data = malloc(e->length ? e->length : 1);
		assert_non_null(r->data);
		memcpy(r->data, e->data, e->length);
	}
	r->point_id = e->point_id;
	r->time_ms = e->time_ms;
	r->kind = e->kind;
	memcpy(r->label, e->label, sizeof(r->label));
	return rs->stop_after && rs->n >= rs->stop_after;
}

static inline struct recs *
recs_new(void)
{
	struct recs *rs = calloc(1, sizeof(*rs));

	assert_non_null(rs);
	return rs;
}

static inline void
recs_free(struct recs *rs)
{
	for (size_t i = 0; i < rs->n; i++)
		free(rs->r[i].data);
	free(rs);
}

static inline struct recs *
read_all(struct journal *j, uint64_t from)
{
	struct recs *rs = recs_new();
	int n = journal_read(j, from, SIZE_MAX, collect, rs);

	assert_int_equal(n, (int)rs->n);
	return rs;
}

static inline uint64_t
append1(struct journal *j, uint32_t disk, uint64_t off, uint32_t len,
    const void *data)
{
	uint64_t seq = 0;

	if (journal_append(j, disk, off, len, data, &seq) != 0)
		fail_msg("append: %s", journal_error(j));
	return seq;
}

#endif
