/*
 * log.h: the daemon's small log API.  Messages go to stderr when in the
 * foreground (-d) and to syslog otherwise.  Recoverable paths log and
 * return -1; fatal()/fatalx() are for start-up and broken invariants only.
 */
#ifndef REPLICAD_LOG_H
#define REPLICAD_LOG_H

#include <stdarg.h>

void log_init(const char *ident, int foreground, int verbose);
void log_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_warnx(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_info(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void log_debug(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
void fatalx(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

#endif
