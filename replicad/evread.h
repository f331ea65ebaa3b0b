/*
 * evread.h: socket bufferevents read in large reads.
 *
 * libevent 2.1 reads at most 4096 bytes from a socket each time the loop
 * finds it readable, whatever bufferevent_set_max_single_read says.
 */
#ifndef REPLICAD_EVREAD_H
#define REPLICAD_EVREAD_H

#include <stddef.h>

struct bufferevent;

/* From a socket bufferevent's read callback: read on until its input holds
 * MAX bytes or the socket is empty. */
void bev_read_more(struct bufferevent *bev, size_t max);

#endif
