/*
 * kv.h: the one place that knows LMDB's page geometry, and big-endian
 * integer keys so that LMDB order is numeric order.
 *
 * LMDB stores a value that does not fit in a leaf node on overflow pages
 * whose first 16 bytes are a page header: a 4096-byte value takes two 4 KiB
 * pages, a 4080-byte one takes one.  Block data (4 KiB and multiples) is
 * therefore split: kv_inline_len() bytes ride at the end of the key and the
 * rest, a whole number of pages less the header, is the value.
 */
#ifndef REPLICAD_KV_H
#define REPLICAD_KV_H

#include <lmdb.h>
#include <stddef.h>
#include <stdint.h>

#define KV_PAGE		4096
#define KV_OVHDR	16	/* overflow page header */
#define KV_INLINE_MAX	256	/* most data bytes carried in a key */

/* How many of LEN data bytes go into the key so the value fills its
 * overflow pages exactly (0 when no split helps). */
size_t kv_inline_len(size_t len);

static inline void
kv_put64(uint8_t *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

static inline uint64_t
kv_get64(const uint8_t *p)
{
	uint64_t v = 0;

	for (int i = 0; i < 8; i++)
		v = (v << 8) | p[i];
	return v;
}

static inline void
kv_put32(uint8_t *p, uint32_t v)
{
	for (int i = 3; i >= 0; i--, v >>= 8)
		p[i] = (uint8_t)v;
}

static inline uint32_t
kv_get32(const uint8_t *p)
{
	return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
	    ((uint32_t)p[2] << 8) | p[3];
}

/* Open (creating) an LMDB environment in directory DIR with NDBS named
 * databases and a map of MAPSIZE bytes.  Returns an mdb error code. */
int kv_env_open(MDB_env **envp, const char *dir, unsigned ndbs,
    size_t mapsize, unsigned flags);

/* Read/write a uint64 stored under a string key; get returns MDB_NOTFOUND
 * (and *v = dflt) when absent. */
int kv_get_u64(MDB_txn *txn, MDB_dbi dbi, const char *key, uint64_t *v,
    uint64_t dflt);
int kv_put_u64(MDB_txn *txn, MDB_dbi dbi, const char *key, uint64_t v);

#endif
