/*
 * test_dio.c: ordered image writes around the page cache (dio.h) on real
 * files in a mkdtemp directory under /var/tmp (a disk file system, so
 * that O_DIRECT and native AIO really run).  After every dio_wait the
 * file must hold what the same writes made one by one through the cache
 * give, whatever the mix of aligned and unaligned offsets, lengths and
 * data, overlaps while writes are in flight, and writes too large to go
 * around the cache; a refused descriptor and a failing one are handled.
 * Reads many at once around the cache (dio_read_all) return the file's
 * bytes, and each read the kernel refuses says why on its own.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/resource.h>

#include "dio.h"
#include "fileio.h"

#define FSIZE	(4u << 20)
#define MAXW	(256u << 10)	/* largest write the model makes */

#define RNG_SEED	0x2545f4914f6cdd1dull
#include "xorshift.h"

struct fx {
	char dir[64], path[96];
	int fd, dfd;
	uint8_t *model;		/* what the file must hold */
	uint8_t *got;
};

static int
setup(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	snprintf(f->dir, sizeof(f->dir), "/var/tmp/test_dio.XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/img", f->dir);
	f->fd = open(f->path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	assert_true(f->fd >= 0);
	assert_int_equal(ftruncate(f->fd, FSIZE), 0);
	f->dfd = open(f->path, O_WRONLY | O_DIRECT);
	if (f->dfd < 0)
		fail_msg("%s: O_DIRECT: %s (the test needs a disk file "
		    "system)", f->path, strerror(errno));
	assert_non_null(f->model = calloc(1, FSIZE));
	assert_non_null(f->got = malloc(FSIZE));
	*state = f;
	return 0;
}

static int
teardown(void **state)
{
	struct fx *f = *state;

	close(f->fd);
	close(f->dfd);
	unlink(f->path);
	rmdir(f->dir);
	free(f->model);
	free(f->got);
	free(f);
	return 0;
}

static void
check_file(struct fx *f, const char *when)
{
	assert_int_equal(pread_full(f->fd, f->got, FSIZE, 0), 0);
	for (size_t i = 0; i < FSIZE; i++)
		if (f->got[i] != f->model[i])
			fail_msg("%s: byte %zu is %02x, not %02x", when, i,
			    f->got[i], f->model[i]);
}

/* Random data at a random place in a fresh buffer: aligned to DIO_BLOCK
 * or, with MISALIGN, not.  *BASE is what to free. */
static uint8_t *
make_data(size_t len, int misalign, void **base)
{
	uint8_t *p;

	assert_int_equal(posix_memalign(base, DIO_BLOCK, len + DIO_BLOCK), 0);
	p = (uint8_t *)*base + (misalign ? 1 + rnd() % (DIO_BLOCK - 1) : 0);
	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)rnd();
	return p;
}

/* A long random sequence against the model, waited for at random. */
static void
t_model(void **state)
{
	struct fx *f = *state;
	struct dio *d = dio_open(8, 64u << 10);
	void *bases[64];
	size_t nb = 0;
	uint64_t last_end = 0;
	struct dio_counts c;

	assert_non_null(d);
	for (int i = 0; i < 4000; i++) {
		int kind = (int)(rnd() % 13);
		uint64_t off;
		size_t len;
		uint8_t *p;

		if (kind < 6) {		/* whole blocks, a few of them */
			off = (rnd() % (FSIZE / DIO_BLOCK - 16)) * DIO_BLOCK;
			len = (1 + rnd() % 16) * DIO_BLOCK;
		} else if (kind < 7) {	/* whole blocks, too many to go
					 * around the cache */
			len = (17 + rnd() % (MAXW / DIO_BLOCK - 17)) *
			    DIO_BLOCK;
			off = (rnd() % ((FSIZE - len) / DIO_BLOCK)) *
			    DIO_BLOCK;
		} else if (kind < 9) {	/* unaligned offset or length */
			len = 1 + rnd() % 20000;
			off = rnd() % (FSIZE - len);
		} else if (kind >= 10 && last_end % DIO_BLOCK == 0 &&
		    last_end + 16 * DIO_BLOCK <= FSIZE) {
			/* right after the last one: merged with it */
			off = last_end;
			len = (1 + rnd() % 16) * DIO_BLOCK;
		} else {		/* a hot spot: overlaps in flight */
			off = (rnd() % 4) * DIO_BLOCK;
			len = (1 + rnd() % 2) * DIO_BLOCK;
		}
		p = make_data(len, rnd() % 4 == 0, &bases[nb++]);
		assert_int_equal(dio_pwrite(d, f->dfd, f->fd, p, len, off), 0);
		memcpy(f->model + off, p, len);
		last_end = off + len;
		if (nb == 64 || rnd() % 50 == 0) {
			assert_int_equal(dio_wait(d, NULL), 0);
			while (nb > 0)
				free(bases[--nb]);
			if (rnd() % 8 == 0)
				check_file(f, "after a wait");
		}
	}
	assert_int_equal(dio_wait(d, NULL), 0);
	while (nb > 0)
		free(bases[--nb]);
	check_file(f, "at the end");
	dio_counts(d, &c);
	/* both ways really ran */
	assert_true(c.direct > 1000);
	assert_true(c.buffered > 500);
	assert_true(c.iocbs < c.direct);	/* some were merged */
	dio_close(d);
}

/* Many writes of one block, none waited for: the last one stands, and
 * unaligned data is copied (the caller may reuse it at once). */
static void
t_same_block(void **state)
{
	struct fx *f = *state;
	struct dio *d = dio_open(32, 1u << 20);
	uint8_t *blocks = NULL;
	uint8_t *scratch = malloc(DIO_BLOCK + 1);

	assert_non_null(d);
	assert_non_null(scratch);
	assert_int_equal(posix_memalign((void **)&blocks, DIO_BLOCK,
	    200 * DIO_BLOCK), 0);
	for (int i = 0; i < 200; i++) {
		uint8_t *b = blocks + (size_t)i * DIO_BLOCK;

		memset(b, i + 1, DIO_BLOCK);
		assert_int_equal(dio_pwrite(d, f->dfd, f->fd, b, DIO_BLOCK,
		    8 * DIO_BLOCK), 0);
		/* the unaligned copy, overwritten right after the call */
		memset(scratch + 1, 0x80 + i % 64, DIO_BLOCK);
		assert_int_equal(dio_pwrite(d, f->dfd, f->fd, scratch + 1,
		    DIO_BLOCK, 9 * DIO_BLOCK), 0);
		memset(f->model + 9 * DIO_BLOCK, 0x80 + i % 64, DIO_BLOCK);
		memset(scratch + 1, 0xee, DIO_BLOCK);
	}
	memset(f->model + 8 * DIO_BLOCK, 200, DIO_BLOCK);
	assert_int_equal(dio_wait(d, NULL), 0);
	check_file(f, "after 200 writes of two blocks");
	dio_close(d);
	free(blocks);
	free(scratch);
}

/* 64 KiB pieces one after the other (the journal's): merged into 1 MiB
 * writes; data that had to be copied is not merged and stays in order. */
static void
t_sequential(void **state)
{
	struct fx *f = *state;
	struct dio *d = dio_open(32, 64u << 10);
	struct dio_counts c;
	void *bases[64];

	assert_non_null(d);
	for (int i = 0; i < 64; i++) {
		size_t len = 64u << 10;
		uint8_t *p = make_data(len, i % 9 == 8, &bases[i]);

		assert_int_equal(dio_pwrite(d, f->dfd, f->fd, p, len,
		    (uint64_t)i * len), 0);
		memcpy(f->model + (size_t)i * len, p, len);
	}
	assert_int_equal(dio_wait(d, NULL), 0);
	for (int i = 0; i < 64; i++)
		free(bases[i]);
	check_file(f, "after 64 pieces in a row");
	dio_counts(d, &c);
	assert_int_equal(c.direct, 64);
	assert_int_equal(c.buffered, 0);
	/* 7 copied pieces break the runs: at most 4 + 2 * 7 writes */
	assert_true(c.iocbs <= 18);
	dio_close(d);
}

/* A descriptor native AIO refuses (not open for writing): every write
 * goes through the cache, in order, and the file is right. */
static void
t_refused(void **state)
{
	struct fx *f = *state;
	int rfd = open(f->path, O_RDONLY | O_DIRECT);
	struct dio *d = dio_open(4, 1u << 20);
	void *base;
	uint8_t *p;
	struct dio_counts c;

	assert_true(rfd >= 0);
	assert_non_null(d);
	p = make_data(64 * DIO_BLOCK, 0, &base);
	for (int i = 0; i < 64; i++) {
		assert_int_equal(dio_pwrite(d, rfd, f->fd,
		    p + (size_t)i * DIO_BLOCK, DIO_BLOCK,
		    (uint64_t)(63 - i) * DIO_BLOCK), 0);
		memcpy(f->model + (size_t)(63 - i) * DIO_BLOCK,
		    p + (size_t)i * DIO_BLOCK, DIO_BLOCK);
	}
	assert_int_equal(dio_wait(d, NULL), 0);
	check_file(f, "after a refused descriptor");
	dio_counts(d, &c);
	assert_int_equal(c.direct, 0);
	assert_int_equal(c.buffered, 64);
	dio_close(d);
	free(base);
	close(rfd);
}

/* A write that fails (the buffered descriptor is read-only) is reported
 * by the next dio_wait with its descriptor, once; the writer goes on. */
static void
t_failure(void **state)
{
	struct fx *f = *state;
	int ro = open(f->path, O_RDONLY);
	struct dio *d = dio_open(4, 1u << 20);
	void *base;
	uint8_t *p;
	int bad = 0;

	assert_true(ro >= 0);
	assert_non_null(d);
	p = make_data(3 * DIO_BLOCK, 0, &base);
	/* around the cache: fine */
	assert_int_equal(dio_pwrite(d, f->dfd, ro, p, DIO_BLOCK, 0), 0);
	memcpy(f->model, p, DIO_BLOCK);
	/* unaligned: through the read-only descriptor, which fails */
	errno = 0;
	assert_int_equal(dio_pwrite(d, f->dfd, ro, p + DIO_BLOCK, 100,
	    DIO_BLOCK + 7), -1);
	assert_int_equal(errno, EBADF);
	/* queued around the cache, then an error at the wait */
	assert_int_equal(dio_pwrite(d, f->dfd, f->fd, p + 2 * DIO_BLOCK,
	    DIO_BLOCK, 5 * DIO_BLOCK), 0);
	memcpy(f->model + 5 * DIO_BLOCK, p + 2 * DIO_BLOCK, DIO_BLOCK);
	assert_int_equal(dio_wait(d, &bad), 0);
	assert_int_equal(bad, -1);
	check_file(f, "after a failed write");
	/* an error at completion (past the file size limit): reported at
	 * the wait, with the buffered descriptor of that write */
	{
		struct rlimit old, lim;

		assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
		lim = old;
		lim.rlim_cur = FSIZE;
		signal(SIGXFSZ, SIG_IGN);
		assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
		assert_int_equal(dio_pwrite(d, f->dfd, f->fd, p, DIO_BLOCK,
		    FSIZE), 0);
		assert_int_equal(dio_pwrite(d, f->dfd, f->fd, p, DIO_BLOCK,
		    2 * DIO_BLOCK), 0);
		memcpy(f->model + 2 * DIO_BLOCK, p, DIO_BLOCK);
		assert_int_equal(dio_wait(d, &bad), -1);
		assert_int_equal(errno, EFBIG);
		assert_int_equal(bad, f->fd);
		assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
		signal(SIGXFSZ, SIG_DFL);
		/* reported once */
		assert_int_equal(dio_wait(d, &bad), 0);
		check_file(f, "after a write past the limit");
	}
	dio_close(d);
	free(base);
	close(ro);
}

/*
 * Many reads at once around the page cache (dio_read_all): every read
 * of a run of whole blocks returns the file's bytes, a hole reads as
 * zeroes, more reads than the depth all complete, and reads the kernel
 * refuses say so each on its own (misaligned: EINVAL; past the end:
 * short, EIO; a bad descriptor: EBADF) while the others still succeed.
 */
static void
t_read_all(void **state)
{
	struct fx *f = *state;
	enum { NR = 300 };
	struct dio_read rd[NR + 3];
	struct dio_reader *r;
	uint8_t *buf = NULL;
	int rfd;

	/* data everywhere, then a hole of 16 blocks punched at 1 MiB */
	for (size_t i = 0; i < FSIZE; i++)
		f->model[i] = (uint8_t)(rnd() >> 24);
	assert_int_equal(pwrite_full(f->fd, f->model, FSIZE, 0), 0);
	assert_int_equal(fsync(f->fd), 0);
	if (zero_range(f->fd, 1u << 20, 16 * DIO_BLOCK) == 0)
		memset(f->model + (1u << 20), 0, 16 * DIO_BLOCK);
	rfd = open(f->path, O_RDONLY | O_DIRECT);
	assert_true(rfd >= 0);
	assert_non_null(r = dio_reader_open(8));
	assert_int_equal(posix_memalign((void **)&buf, DIO_BLOCK,
	    (NR + 3) * 4 * (size_t)DIO_BLOCK), 0);
	memset(buf, 0xee, (NR + 3) * 4 * (size_t)DIO_BLOCK);
	for (size_t i = 0; i < NR; i++) {
		uint64_t nb = 1 + rnd() % 4;
		uint64_t blk = rnd() % (FSIZE / DIO_BLOCK - nb + 1);

		if (i == 7)	/* across the hole's start */
			blk = (1u << 20) / DIO_BLOCK - 2;
		rd[i].dfd = rfd;
		rd[i].buf = buf + i * 4 * (size_t)DIO_BLOCK;
		rd[i].len = nb * DIO_BLOCK;
		rd[i].off = blk * DIO_BLOCK;
	}
	/* misaligned buffer, past the end, a descriptor that is not open */
	rd[NR] = (struct dio_read){ rfd, buf + NR * 4 * (size_t)DIO_BLOCK + 1,
	    DIO_BLOCK, 0, 0 };
	rd[NR + 1] = (struct dio_read){ rfd, buf + (NR + 1) * 4 *
	    (size_t)DIO_BLOCK, 2 * DIO_BLOCK, FSIZE - DIO_BLOCK, 0 };
	rd[NR + 2] = (struct dio_read){ 999, buf + (NR + 2) * 4 *
	    (size_t)DIO_BLOCK, DIO_BLOCK, 0, 0 };
	assert_int_equal(dio_read_all(r, rd, NR + 3), 0);
	/* the last queued first: those would be the ones still in flight */
	for (size_t i = NR; i-- > 0;) {
		if (rd[i].err != 0)
			fail_msg("read %zu (%zu bytes at %llu): %s", i,
			    rd[i].len, (unsigned long long)rd[i].off,
			    strerror(rd[i].err));
		if (memcmp(rd[i].buf, f->model + rd[i].off, rd[i].len) != 0)
			fail_msg("read %zu (%zu bytes at %llu) differs from "
			    "the file", i, rd[i].len,
			    (unsigned long long)rd[i].off);
	}
	assert_int_equal(rd[NR].err, EINVAL);
	assert_int_equal(rd[NR + 1].err, EIO);
	assert_int_equal(rd[NR + 2].err, EBADF);
	/* the reader is used again, and nothing was left in flight */
	assert_int_equal(dio_read_all(r, rd, 2), 0);
	assert_int_equal(rd[0].err, 0);
	assert_memory_equal(rd[1].buf, f->model + rd[1].off, rd[1].len);
	assert_int_equal(dio_read_all(r, rd, 0), 0);
	dio_reader_close(r);
	free(buf);
	close(rfd);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(t_model, setup, teardown),
		cmocka_unit_test_setup_teardown(t_same_block, setup, teardown),
		cmocka_unit_test_setup_teardown(t_sequential, setup, teardown),
		cmocka_unit_test_setup_teardown(t_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(t_failure, setup, teardown),
		cmocka_unit_test_setup_teardown(t_read_all, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
