/* kv.c: LMDB helpers shared by the journal and the recovery store. */
#include "kv.h"

#include <errno.h>
#include <string.h>
#include <sys/stat.h>

size_t
kv_inline_len(size_t len)
{
	size_t r;

	if (len < KV_PAGE / 2)
		return 0;	/* fits a leaf node */
	r = (len + KV_OVHDR) % KV_PAGE;
	return r <= KV_INLINE_MAX && r < len ? r : 0;
}

int
kv_env_open(MDB_env **envp, const char *dir, unsigned ndbs, size_t mapsize,
    unsigned flags)
{
	MDB_env *env;
	int rc;

	if (mkdir(dir, 0700) == -1 && errno != EEXIST)
		return errno;
	if ((rc = mdb_env_create(&env)) != 0)
		return rc;
	if ((rc = mdb_env_set_maxdbs(env, ndbs)) != 0 ||
	    (rc = mdb_env_set_mapsize(env, mapsize)) != 0 ||
	    (rc = mdb_env_set_maxreaders(env, 64)) != 0 ||
	    (rc = mdb_env_open(env, dir, flags | MDB_NOTLS, 0600)) != 0) {
		mdb_env_close(env);
		return rc;
	}
	*envp = env;
	return 0;
}

int
kv_get_u64(MDB_txn *txn, MDB_dbi dbi, const char *key, uint64_t *v,
    uint64_t dflt)
{
	MDB_val k = { strlen(key), (void *)key }, d;
	int rc;

	*v = dflt;
	if ((rc = mdb_get(txn, dbi, &k, &d)) != 0)
		return rc;
	if (d.mv_size != 8)
		return MDB_CORRUPTED;
	*v = kv_get64(d.mv_data);
	return 0;
}

int
kv_put_u64(MDB_txn *txn, MDB_dbi dbi, const char *key, uint64_t v)
{
	uint8_t buf[8];
	MDB_val k = { strlen(key), (void *)key }, d = { 8, buf };

	kv_put64(buf, v);
	return mdb_put(txn, dbi, &k, &d, 0);
}
