/* util.c: time helpers. */
#include <stdio.h>
#include <time.h>

#include "daemon.h"

int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void
format_time(int64_t ms, char *buf, size_t len)
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;
	char b[32];

	gmtime_r(&t, &tm);
	strftime(b, sizeof(b), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(buf, len, "%s.%03dZ", b, (int)(ms % 1000));
}

const char *
point_kind_name(enum point_kind k)
{
	switch (k) {
	case POINT_CRASH:
		return "crash";
	case POINT_RESUMABLE:
		return "resumable";
	case POINT_APP:
		return "app";
	}
	return "crash";
}
