/*
 * test_fileio.c: whole-range image I/O (fileio.h) on real files in a
 * mkdtemp directory.  pread_data must read exactly what pread_full reads,
 * whatever mix of holes, data still in the page cache, data written back,
 * punched ranges and the end of the file a range covers.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fileio.h"

#define FSIZE	((4u << 20) + 512)	/* not a whole number of blocks */

#define RNG_SEED	0x9e3779b97f4a7c15ull
#include "xorshift.h"

/* Every range from a fixed list and RANDOM random ones, read both ways. */
static void
compare_ranges(int fd, const char *what, int random)
{
	static const uint64_t fixed[][2] = {
		{ 0, 4096 }, { 0, FSIZE }, { 0, FSIZE + 8192 },
		{ 4096, 65536 }, { 65536 - 512, 4096 }, { 1u << 20, 1u << 20 },
		{ FSIZE - 4096, 8192 }, { FSIZE, 4096 }, { FSIZE + 4096, 512 },
		{ (2u << 20) - 1, 3 }, { 12345, 987654 },
	};
	uint8_t *a = malloc(FSIZE + 16384), *b = malloc(FSIZE + 16384);

	assert_non_null(a);
	assert_non_null(b);
	for (int i = 0; i < (int)(sizeof(fixed) / sizeof(fixed[0])) + random;
	    i++) {
		uint64_t off, len;

		if (i < (int)(sizeof(fixed) / sizeof(fixed[0]))) {
			off = fixed[i][0];
			len = fixed[i][1];
		} else {
			off = rnd() % (FSIZE + 4096);
			len = 1 + rnd() % (1u << 20);
		}
		memset(a, 0xa5, len);
		memset(b, 0x5a, len);
		assert_int_equal(pread_full(fd, a, len, off), 0);
		assert_int_equal(pread_data(fd, b, len, off), 0);
		if (memcmp(a, b, len) != 0)
			fail_msg("%s: pread_data differs at %llu+%llu", what,
			    (unsigned long long)off, (unsigned long long)len);
	}
	free(a);
	free(b);
}

static void
fill(int fd, uint64_t off, size_t len)
{
	uint8_t *p = malloc(len);

	assert_non_null(p);
	for (size_t i = 0; i < len; i++)
		p[i] = (uint8_t)(rnd() | 1);	/* never a zero byte */
	assert_int_equal(pwrite_full(fd, p, len, off), 0);
	free(p);
}

static void
test_pread_data(void **state)
{
	char dir[] = "/var/tmp/test_fileio.XXXXXX", path[64];
	int fd;

	(void)state;
	if (mkdtemp(dir) == NULL)
		fail_msg("mkdtemp: %m");
	snprintf(path, sizeof(path), "%s/img", dir);
	assert_true((fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600)) >= 0);
	assert_int_equal(ftruncate(fd, FSIZE), 0);
	compare_ranges(fd, "all hole", 50);

	/* data in the page cache only (delayed allocation) */
	fill(fd, 0, 4096);
	fill(fd, 65536, 3 * 4096);
	fill(fd, 1u << 20, 1u << 20);
	fill(fd, FSIZE - 512, 512);
	fill(fd, (2u << 20) - 1, 2);	/* one byte either side of a block */
	compare_ranges(fd, "dirty", 200);

	/* written back: real extents */
	assert_int_equal(fsync(fd), 0);
	compare_ranges(fd, "written back", 200);

	/* a hole punched inside data, then data inside that hole */
	assert_int_equal(zero_range(fd, (1u << 20) + 8192, 256 * 1024), 0);
	compare_ranges(fd, "punched", 200);
	fill(fd, (1u << 20) + 65536, 4096);
	compare_ranges(fd, "refilled", 200);

	/* no hole at all */
	fill(fd, 0, FSIZE);
	compare_ranges(fd, "dense", 50);

	assert_int_equal(close(fd), 0);
	assert_int_equal(unlink(path), 0);
	assert_int_equal(rmdir(dir), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pread_data),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
