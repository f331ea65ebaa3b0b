/*
 * test_frame.c: replication frames (frame.h): round trips of every message
 * kind with and without zstd, header checks, hostile input, and a
 * deterministic mutation fuzz through frame_peek() + frame_decode().
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "frame.h"

#define RNG_SEED	0x243f6a8885a308d3ull
#include "xorshift.h"

static uint32_t
hdr_len(const uint8_t *f)
{
	uint32_t l;

	memcpy(&l, f, 4);
	return ntohl(l);
}

static uint16_t
hdr_type(const uint8_t *f)
{
	uint16_t t;

	memcpy(&t, f + 4, 2);
	return ntohs(t);
}

static uint16_t
hdr_flags(const uint8_t *f)
{
	uint16_t t;

	memcpy(&t, f + 6, 2);
	return ntohs(t);
}

static void
put_hdr(uint8_t *p, uint32_t len, uint16_t type, uint16_t flags)
{
	uint32_t l = htonl(len);
	uint16_t t = htons(type), fl = htons(flags);

	memcpy(p, &l, 4);
	memcpy(p + 4, &t, 2);
	memcpy(p + 6, &fl, 2);
}

static uint8_t *
encode(const Replication__Msg *m, int compress, size_t *len)
{
	char err[256] = "";
	uint8_t *out = NULL;

	struct frame_zstd z = { 0 };

	if (frame_encode(m, compress ? &z : NULL, &out, len, err,
	    sizeof(err)) != 0)
		fail_msg("frame_encode: %s", err);
	assert_non_null(out);
	assert_true(*len >= FRAME_HDR);
	assert_int_equal(hdr_len(out), *len - FRAME_HDR);
	assert_int_equal(hdr_type(out), m->body_case);
	return out;
}

/* Decode, expecting success; checks peek agrees on the length. */
static Replication__Msg *
decode(const uint8_t *f, size_t len)
{
	char err[256] = "";
	size_t fl = 0;
	Replication__Msg *m;

	assert_int_equal(frame_peek(f, len, &fl, err, sizeof(err)), 1);
	assert_int_equal(fl, len);
	m = frame_decode(f, len, err, sizeof(err));
	if (m == NULL)
		fail_msg("frame_decode: %s", err);
	return m;
}

/* Decode, expecting failure with a message. */
static void
decode_fails(const uint8_t *f, size_t len, const char *want)
{
	char err[256] = "";
	Replication__Msg *m = frame_decode(f, len, err, sizeof(err));

	if (m != NULL) {
		replication__msg__free_unpacked(m, NULL);
		fail_msg("frame_decode accepted a bad frame (want '%s')",
		    want ? want : "any error");
	}
	assert_true(strlen(err) > 0);
	if (want && strstr(err, want) == NULL)
		fail_msg("error '%s' does not mention '%s'", err, want);
}

/* ------------------------------------------------------------------ */
/* round trips */

static uint8_t *
payload(size_t len, int compressible)
{
	uint8_t *p = malloc(len ? len : 1);

	assert_non_null(p);
	for (size_t i = 0; i < len; i++)
		p[i] = compressible ? (uint8_t)("replicad "[i % 9]) :
		    (uint8_t)(rnd() >> 32);
	return p;
}

static void
roundtrip_small(int compress)
{
	Replication__Msg m = REPLICATION__MSG__INIT, *d;
	uint8_t *f;
	size_t len;

	/* hello */
	{
		Replication__Hello h = REPLICATION__HELLO__INIT;

		h.protocol = PROTOCOL_VERSION;
		h.site = "paris";
		m.body_case = REPLICATION__MSG__BODY_HELLO;
		m.hello = &h;
		f = encode(&m, compress, &len);
		assert_int_equal(hdr_flags(f), 0);	/* too small */
		d = decode(f, len);
		assert_int_equal(d->body_case, REPLICATION__MSG__BODY_HELLO);
		assert_int_equal(d->hello->protocol, PROTOCOL_VERSION);
		assert_string_equal(d->hello->site, "paris");
		replication__msg__free_unpacked(d, NULL);
		free(f);
	}
	/* welcome */
	{
		Replication__Welcome w = REPLICATION__WELCOME__INIT;

		w.protocol = 1;
		w.site = "lyon";
		m.body_case = REPLICATION__MSG__BODY_WELCOME;
		m.welcome = &w;
		f = encode(&m, compress, &len);
		d = decode(f, len);
		assert_string_equal(d->welcome->site, "lyon");
		assert_int_equal(d->welcome->protocol, 1);
		replication__msg__free_unpacked(d, NULL);
		free(f);
	}
	/* announce */
	{
		Replication__VmAnnounce a = REPLICATION__VM_ANNOUNCE__INIT;
		Replication__DiskInfo d0 = REPLICATION__DISK_INFO__INIT,
		    d1 = REPLICATION__DISK_INFO__INIT, *disks[2] = { &d0, &d1 };
		Replication__KeepRule k0 = REPLICATION__KEEP_RULE__INIT,
		    k1 = REPLICATION__KEEP_RULE__INIT, *keep[2] = { &k0, &k1 };

		a.vm = "web1";
		d0.name = "vda";
		d0.size = 10737418240ull;
		d1.name = "vdb";
		d1.size = 512;
		k0.age_ms = 3600000;
		k1.age_ms = 86400000;
		k1.step_ms = 3600000;
		a.n_disks = 2;
		a.disks = disks;
		a.n_keep = 2;
		a.keep = keep;
		a.epoch = 0xfedcba9876543211ull;
		m.body_case = REPLICATION__MSG__BODY_ANNOUNCE;
		m.announce = &a;
		f = encode(&m, compress, &len);
		d = decode(f, len);
		assert_string_equal(d->announce->vm, "web1");
		assert_int_equal(d->announce->n_disks, 2);
		assert_string_equal(d->announce->disks[1]->name, "vdb");
		assert_int_equal(d->announce->disks[0]->size, 10737418240ull);
		assert_int_equal(d->announce->n_keep, 2);
		assert_int_equal(d->announce->keep[0]->step_ms, 0);
		assert_int_equal(d->announce->keep[1]->step_ms, 3600000);
		assert_int_equal(d->announce->epoch, 0xfedcba9876543211ull);
		replication__msg__free_unpacked(d, NULL);
		free(f);
	}
	/* state */
	{
		Replication__VmState s = REPLICATION__VM_STATE__INIT;

		s.vm = "web1";
		s.epoch = 42;
		s.applied_seq = UINT64_MAX;
		s.need_full = 1;
		s.last_point = 7;
		m.body_case = REPLICATION__MSG__BODY_STATE;
		m.state = &s;
		f = encode(&m, compress, &len);
		d = decode(f, len);
		assert_int_equal(d->state->epoch, 42);
		assert_int_equal(d->state->applied_seq, UINT64_MAX);
		assert_true(d->state->need_full);
		assert_int_equal(d->state->last_point, 7);
		replication__msg__free_unpacked(d, NULL);
		free(f);
	}
	/* sync done */
	{
		Replication__SyncDone s = REPLICATION__SYNC_DONE__INIT;

		s.vm = "web1";
		s.base_seq = 123456;
		m.body_case = REPLICATION__MSG__BODY_SYNC_DONE;
		m.sync_done = &s;
		f = encode(&m, compress, &len);
		d = decode(f, len);
		assert_int_equal(d->sync_done->base_seq, 123456);
		replication__msg__free_unpacked(d, NULL);
		free(f);
	}
	/* point */
	{
		Replication__Point p = REPLICATION__POINT__INIT;

		p.vm = "web1";
		p.id = 9;
		p.seq = 1000;
		p.time_ms = -5;
		p.kind = REPLICATION__POINT_KIND__APP;
		p.label = "before upgrade";
		m.body_case = REPLICATION__MSG__BODY_POINT;
		m.point = &p;
		f = encode(&m, compress, &len);
		d = decode(f, len);
		assert_int_equal(d->point->id, 9);
		assert_int_equal(d->point->seq, 1000);
		assert_int_equal(d->point->time_ms, -5);
		assert_int_equal(d->point->kind, REPLICATION__POINT_KIND__APP);
		assert_string_equal(d->point->label, "before upgrade");
		replication__msg__free_unpacked(d, NULL);
		free(f);
	}
	/* ack */
	{
		Replication__Ack a = REPLICATION__ACK__INIT;

		a.vm = "web1";
		a.seq = 77;
		a.point = 3;
		m.body_case = REPLICATION__MSG__BODY_ACK;
		m.ack = &a;
		f = encode(&m, compress, &len);
		d = decode(f, len);
		assert_int_equal(d->ack->seq, 77);
		assert_int_equal(d->ack->point, 3);
		replication__msg__free_unpacked(d, NULL);
		free(f);
	}
	/* error */
	{
		Replication__Error e = REPLICATION__ERROR__INIT;

		e.code = 403;
		e.vm = "web1";
		e.message = "not allowed";
		m.body_case = REPLICATION__MSG__BODY_ERROR;
		m.error = &e;
		f = encode(&m, compress, &len);
		d = decode(f, len);
		assert_int_equal(d->error->code, 403);
		assert_string_equal(d->error->message, "not allowed");
		replication__msg__free_unpacked(d, NULL);
		free(f);
	}
}

static void
test_roundtrip_small(void **state)
{
	(void)state;
	roundtrip_small(0);
	roundtrip_small(1);
}

/* Writes and SyncBlocks with big payloads. */
static void
roundtrip_data(int body, int compress, int compressible)
{
	Replication__Msg m = REPLICATION__MSG__INIT, *d;
	Replication__Writes w = REPLICATION__WRITES__INIT;
	Replication__SyncBlocks sb = REPLICATION__SYNC_BLOCKS__INIT;
	Replication__Entry ent[4], *ep[4];
	static const uint32_t lens[4] = { 4096, 65536, 0, 1u << 20 };
	uint8_t *data[4];
	Replication__Entry **got;
	size_t ngot, len, plen = 0;
	uint8_t *f;

	for (int i = 0; i < 4; i++) {
		Replication__Entry init = REPLICATION__ENTRY__INIT;

		ent[i] = init;
		ep[i] = &ent[i];
		data[i] = payload(lens[i], compressible);
		ent[i].seq = 1000 + (uint64_t)i;
		ent[i].disk = (uint32_t)i;
		ent[i].offset = (uint64_t)i << 33;
		ent[i].length = lens[i] ? lens[i] : 8192;
		ent[i].zero = lens[i] == 0;
		ent[i].data.len = lens[i];
		ent[i].data.data = lens[i] ? data[i] : NULL;
		plen += lens[i];
	}
	m.body_case = (Replication__Msg__BodyCase)body;
	if (body == REPLICATION__MSG__BODY_WRITES) {
		w.vm = "db";
		w.n_entries = 4;
		w.entries = ep;
		m.writes = &w;
	} else {
		sb.vm = "db";
		sb.n_blocks = 4;
		sb.blocks = ep;
		sb.done_bytes = 5;
		sb.total_bytes = 10;
		m.sync = &sb;
	}
	f = encode(&m, compress, &len);
	if (compress && compressible) {
		assert_int_equal(hdr_flags(f), FRAME_F_ZSTD);
		assert_true(len < plen / 10);
	} else {
		/* random data is not worth compressing */
		assert_int_equal(hdr_flags(f), 0);
		assert_true(len > plen);
	}
	d = decode(f, len);
	assert_int_equal(d->body_case, body);
	if (body == REPLICATION__MSG__BODY_WRITES) {
		assert_string_equal(d->writes->vm, "db");
		got = d->writes->entries;
		ngot = d->writes->n_entries;
	} else {
		assert_int_equal(d->sync->done_bytes, 5);
		assert_int_equal(d->sync->total_bytes, 10);
		got = d->sync->blocks;
		ngot = d->sync->n_blocks;
	}
	assert_int_equal(ngot, 4);
	for (int i = 0; i < 4; i++) {
		assert_int_equal(got[i]->seq, 1000 + (uint64_t)i);
		assert_int_equal(got[i]->disk, (uint32_t)i);
		assert_int_equal(got[i]->offset, (uint64_t)i << 33);
		assert_int_equal(got[i]->length, ent[i].length);
		assert_int_equal(got[i]->zero, lens[i] == 0);
		assert_int_equal(got[i]->data.len, lens[i]);
		if (lens[i])
			assert_memory_equal(got[i]->data.data, data[i],
			    lens[i]);
	}
	replication__msg__free_unpacked(d, NULL);
	free(f);
	for (int i = 0; i < 4; i++)
		free(data[i]);
}

static void
test_roundtrip_data(void **state)
{
	(void)state;
	for (int c = 0; c < 2; c++)
		for (int z = 0; z < 2; z++) {
			roundtrip_data(REPLICATION__MSG__BODY_WRITES, c, z);
			roundtrip_data(REPLICATION__MSG__BODY_SYNC, c, z);
		}
}

/* ------------------------------------------------------------------ */
/* Writes frames built in place */

/*
 * Build the same Writes message both ways, entry by entry in place and
 * packed whole by protobuf-c: raw, the frames are the same bytes; with
 * zstd, both decode to the same entries.  Fields at zero (left out in
 * proto3), the largest values, zero entries, data of every size from none
 * to 1 MiB, an empty VM name.
 */
static void
writes_both_ways(const char *vm, size_t n, int compressible, int zstd)
{
	Replication__Msg m = REPLICATION__MSG__INIT, *d;
	Replication__Writes w = REPLICATION__WRITES__INIT;
	Replication__Entry *ents = calloc(n ? n : 1, sizeof(*ents));
	Replication__Entry **entp = calloc(n ? n : 1, sizeof(*entp));
	struct frame_writes fw;
	struct frame_zstd z1 = { 0 }, z2 = { 0 };
	uint8_t *packed, *data = malloc(n * 4096 + (1u << 20));
	const uint8_t *built;
	void *base;
	size_t plen, blen, at = 0;
	char err[256];

	assert_non_null(ents);
	assert_non_null(entp);
	assert_non_null(data);
	assert_int_equal(frame_writes_init(&fw, vm, 4096), 0);
	for (size_t i = 0; i < n; i++) {
		Replication__Entry *e = &ents[i];
		size_t dl = i == 1 ? (1u << 20) : (size_t)(rnd() % 4097);

		replication__entry__init(e);
		e->seq = i == 0 ? 0 : i == 2 ? UINT64_MAX : rnd() >> (rnd() % 64);
		e->disk = i == 0 ? 0 : i == 2 ? UINT32_MAX : (uint32_t)(rnd() % 4);
		e->offset = i == 0 ? 0 : i == 2 ? UINT64_MAX : rnd() & ~4095ull;
		if (i % 5 == 3) {
			e->zero = 1;
			e->length = (uint32_t)(rnd() % (1u << 24));
		} else {
			for (size_t k = 0; k < dl; k++)
				data[at + k] = compressible ? (uint8_t)(k / 512) :
				    (uint8_t)rnd();
			e->data.data = data + at;
			e->data.len = dl;
			e->length = (uint32_t)dl;
			at += dl;
		}
		entp[i] = e;
		assert_int_equal(frame_writes_add(&fw, e), 0);
	}
	assert_int_equal(fw.nent, n);
	assert_int_equal(fw.data, at);
	w.vm = (char *)vm;
	w.n_entries = n;
	w.entries = entp;
	m.body_case = REPLICATION__MSG__BODY_WRITES;
	m.writes = &w;
	assert_int_equal(frame_encode(&m, zstd ? &z1 : NULL, &packed, &plen,
	    err, sizeof(err)), 0);
	assert_int_equal(frame_writes_finish(&fw, zstd ? &z2 : NULL, &base,
	    &built, &blen, err, sizeof(err)), 0);
	assert_null(fw.buf);
	frame_writes_free(&fw);	/* nothing left to free: harmless */
	if (!zstd) {
		assert_int_equal(blen, plen);
		assert_memory_equal(built, packed, plen);
	}
	assert_int_equal(z1.skip, z2.skip);
	d = frame_decode(built, blen, err, sizeof(err));
	if (d == NULL)
		fail_msg("decode of the built frame: %s", err);
	assert_int_equal(d->body_case, REPLICATION__MSG__BODY_WRITES);
	assert_string_equal(d->writes->vm, vm);
	assert_int_equal(d->writes->n_entries, n);
	for (size_t i = 0; i < n; i++) {
		const Replication__Entry *a = ents + i, *b = d->writes->entries[i];

		assert_true(a->seq == b->seq && a->disk == b->disk &&
		    a->offset == b->offset && a->length == b->length &&
		    a->zero == b->zero && a->data.len == b->data.len);
		if (a->data.len)
			assert_memory_equal(a->data.data, b->data.data,
			    a->data.len);
	}
	replication__msg__free_unpacked(d, NULL);
	free(packed);
	free(base);
	free(data);
	free(ents);
	free(entp);
}

static void
test_writes_in_place(void **state)
{
	(void)state;
	for (int zstd = 0; zstd < 2; zstd++)
		for (int c = 0; c < 2; c++) {
			writes_both_ways("web01", 0, c, zstd);
			writes_both_ways("web01", 1, c, zstd);
			writes_both_ways("web01", 300, c, zstd);
			writes_both_ways("", 7, c, zstd);
			writes_both_ways("a-vm-name-of-some-length_0123456789"
			    "0123456789012345678901234567890123456789012345678"
			    "9012345678901234567890123456789", 40, c, zstd);
		}
}

/* Past the frame cap an entry is refused, and what was built stays whole. */
static void
test_writes_cap(void **state)
{
	Replication__Entry e = REPLICATION__ENTRY__INIT;
	struct frame_writes fw;
	size_t n = 0, dl = 4u << 20;
	uint8_t *data = calloc(1, dl);
	const uint8_t *f;
	void *base;
	size_t len;
	char err[256];
	Replication__Msg *d;

	(void)state;
	assert_non_null(data);
	assert_int_equal(frame_writes_init(&fw, "web01", 0), 0);
	e.data.data = data;
	e.data.len = dl;
	e.length = (uint32_t)dl;
	while (frame_writes_add(&fw, &e) == 0) {
		n++;
		e.seq++;
		assert_true(n < 100);
	}
	assert_int_equal(n, FRAME_MAX / dl - 1);
	assert_int_equal(fw.nent, n);
	assert_int_equal(frame_writes_finish(&fw, NULL, &base, &f, &len, err,
	    sizeof(err)), 0);
	assert_true(len - FRAME_HDR <= FRAME_MAX);
	assert_non_null(d = frame_decode(f, len, err, sizeof(err)));
	assert_int_equal(d->writes->n_entries, n);
	replication__msg__free_unpacked(d, NULL);
	free(base);
	free(data);
}

/* ------------------------------------------------------------------ */
/* headers */

static void
test_peek(void **state)
{
	uint8_t h[16];
	size_t fl = 12345;
	char err[256];

	(void)state;
	memset(h, 0, sizeof(h));
	put_hdr(h, 100, 1, 0);
	for (size_t n = 0; n < FRAME_HDR; n++) {
		assert_int_equal(frame_peek(h, n, &fl, err, sizeof(err)), 0);
		assert_int_equal(fl, 12345);
	}
	assert_int_equal(frame_peek(h, FRAME_HDR, &fl, err, sizeof(err)), 1);
	assert_int_equal(fl, FRAME_HDR + 100);
	put_hdr(h, FRAME_MAX, 5, FRAME_F_ZSTD);
	assert_int_equal(frame_peek(h, 8, &fl, err, sizeof(err)), 1);
	assert_int_equal(fl, FRAME_HDR + (size_t)FRAME_MAX);

	/* over the cap: refused from the header alone */
	err[0] = '\0';
	put_hdr(h, FRAME_MAX + 1, 5, 0);
	assert_int_equal(frame_peek(h, 8, &fl, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "cap"));
	put_hdr(h, 0xffffffffu, 5, 0);
	assert_int_equal(frame_peek(h, 8, &fl, err, sizeof(err)), -1);
	/* frame_decode does not trust it either (the buffer is 16 bytes) */
	decode_fails(h, sizeof(h), "cap");

	/* unknown flags */
	for (unsigned fb = 1; fb < 16; fb++) {
		err[0] = '\0';
		put_hdr(h, 10, 1, (uint16_t)(1u << fb));
		assert_int_equal(frame_peek(h, 8, &fl, err, sizeof(err)), -1);
		assert_non_null(strstr(err, "flags"));
		decode_fails(h, 8 + 8, "flags");
	}
}

/* ------------------------------------------------------------------ */
/* hostile frames */

static uint8_t *
hello_frame(size_t *len, int big, int compress)
{
	Replication__Msg m = REPLICATION__MSG__INIT;
	Replication__Hello h = REPLICATION__HELLO__INIT;
	char site[4000];

	memset(site, 'a', sizeof(site) - 1);
	site[big ? sizeof(site) - 1 : 5] = '\0';
	h.protocol = 1;
	h.site = site;
	m.body_case = REPLICATION__MSG__BODY_HELLO;
	m.hello = &h;
	return encode(&m, compress, len);
}

static void
test_bad_frames(void **state)
{
	uint8_t *f, buf[256];
	size_t len;

	(void)state;
	/* truncated, and one byte too many */
	f = hello_frame(&len, 0, 0);
	for (size_t n = 0; n < len; n++)
		decode_fails(f, n, "truncated");
	memcpy(buf, f, len);
	buf[len] = 0;
	decode_fails(buf, len + 1, "truncated");
	/* a type that does not match the body */
	for (unsigned t = 0; t < 40; t++) {
		if (t == REPLICATION__MSG__BODY_HELLO)
			continue;
		memcpy(buf, f, len);
		put_hdr(buf, (uint32_t)(len - FRAME_HDR), (uint16_t)t, 0);
		decode_fails(buf, len, "does not match");
	}
	free(f);
	/* an empty payload has no body */
	put_hdr(buf, 0, 0, 0);
	decode_fails(buf, FRAME_HDR, NULL);
	put_hdr(buf, 0, 1, 0);
	decode_fails(buf, FRAME_HDR, NULL);
	/* garbage payload */
	memset(buf + FRAME_HDR, 0xff, 40);
	put_hdr(buf, 40, 1, 0);
	decode_fails(buf, FRAME_HDR + 40, "malformed");
	/* a length-delimited field running past the end */
	buf[FRAME_HDR] = 0x0a;		/* field 1, bytes */
	buf[FRAME_HDR + 1] = 0x7f;	/* 127 bytes, only 2 follow */
	buf[FRAME_HDR + 2] = 0x08;
	buf[FRAME_HDR + 3] = 0x01;
	put_hdr(buf, 4, 1, 0);
	decode_fails(buf, FRAME_HDR + 4, "malformed");
}

static void
test_bad_zstd(void **state)
{
	uint8_t *f, *b;
	size_t len;
	uint8_t h[64];

	(void)state;
	f = hello_frame(&len, 1, 1);
	assert_int_equal(hdr_flags(f), FRAME_F_ZSTD);
	/* truncated compressed data (header adjusted to match) */
	b = malloc(len);
	assert_non_null(b);
	memcpy(b, f, len);
	put_hdr(b, (uint32_t)(len - FRAME_HDR - 3), 1, FRAME_F_ZSTD);
	decode_fails(b, len - 3, NULL);
	/* no zstd magic */
	memcpy(b, f, len);
	memset(b + FRAME_HDR, 0, 4);
	decode_fails(b, len, "compressed");
	/* the flag on a payload that is not compressed */
	free(f);
	f = hello_frame(&len, 0, 0);
	memcpy(b, f, len);
	put_hdr(b, (uint32_t)(len - FRAME_HDR), 1, FRAME_F_ZSTD);
	decode_fails(b, len, "compressed");
	free(f);
	free(b);

	/* a zstd frame header claiming 1 TiB of content */
	memset(h, 0, sizeof(h));
	h[FRAME_HDR + 0] = 0x28;
	h[FRAME_HDR + 1] = 0xb5;
	h[FRAME_HDR + 2] = 0x2f;
	h[FRAME_HDR + 3] = 0xfd;
	h[FRAME_HDR + 4] = 0xe0;	/* 8-byte content size, one segment */
	{
		uint64_t cs = 1ull << 40;

		for (int i = 0; i < 8; i++)
			h[FRAME_HDR + 5 + i] = (uint8_t)(cs >> (8 * i));
	}
	/* then a last raw block of 3 bytes */
	h[FRAME_HDR + 13] = 0x19;	/* last, raw, size 3 */
	h[FRAME_HDR + 16] = 0x01;
	put_hdr(h, 20, 1, FRAME_F_ZSTD);
	assert_int_equal(ZSTD_getFrameContentSize(h + FRAME_HDR, 20),
	    1ull << 40);
	decode_fails(h, FRAME_HDR + 20, "compressed");
	/* claiming the cap exactly with 3 bytes of data: allocation is
	 * bounded by the cap, and the size mismatch is caught */
	{
		uint64_t cs = FRAME_MAX;

		for (int i = 0; i < 8; i++)
			h[FRAME_HDR + 5 + i] = (uint8_t)(cs >> (8 * i));
	}
	decode_fails(h, FRAME_HDR + 20, "compressed");
	/* claiming 3 bytes, holding them: a valid zstd frame of junk */
	for (int i = 0; i < 8; i++)
		h[FRAME_HDR + 5 + i] = i == 0 ? 3 : 0;
	h[FRAME_HDR + 16] = 0xff;
	h[FRAME_HDR + 17] = 0xff;
	h[FRAME_HDR + 18] = 0xff;
	put_hdr(h, 19, 1, FRAME_F_ZSTD);
	decode_fails(h, FRAME_HDR + 19, "malformed");
}

/* ------------------------------------------------------------------ */
/* fuzz */

static void
test_fuzz(void **state)
{
	uint8_t *seeds[6], *b;
	size_t slen[6], cap = 0;
	int accepted = 0, refused = 0;

	(void)state;
	seeds[0] = hello_frame(&slen[0], 0, 0);
	seeds[1] = hello_frame(&slen[1], 1, 1);
	{
		Replication__Msg m = REPLICATION__MSG__INIT;
		Replication__Writes w = REPLICATION__WRITES__INIT;
		Replication__Entry e0 = REPLICATION__ENTRY__INIT,
		    e1 = REPLICATION__ENTRY__INIT, *ep[2] = { &e0, &e1 };
		uint8_t *d = payload(3000, 1), *r = payload(600, 0);

		e0.seq = 5;
		e0.offset = 4096;
		e0.length = 3000;
		e0.data.len = 3000;
		e0.data.data = d;
		e1.seq = 6;
		e1.zero = 1;
		e1.length = 1u << 30;
		w.vm = "v";
		w.n_entries = 2;
		w.entries = ep;
		m.body_case = REPLICATION__MSG__BODY_WRITES;
		m.writes = &w;
		seeds[2] = encode(&m, 0, &slen[2]);
		seeds[3] = encode(&m, 1, &slen[3]);
		assert_int_equal(hdr_flags(seeds[3]), FRAME_F_ZSTD);
		e0.data.data = r;
		e0.data.len = 600;
		seeds[4] = encode(&m, 0, &slen[4]);
		free(d);
		free(r);
	}
	{
		Replication__Msg m = REPLICATION__MSG__INIT;
		Replication__VmAnnounce a = REPLICATION__VM_ANNOUNCE__INIT;
		Replication__DiskInfo d0 = REPLICATION__DISK_INFO__INIT,
		    *disks[1] = { &d0 };

		d0.name = "vda";
		d0.size = 1 << 20;
		a.vm = "x";
		a.n_disks = 1;
		a.disks = disks;
		m.body_case = REPLICATION__MSG__BODY_ANNOUNCE;
		m.announce = &a;
		seeds[5] = encode(&m, 0, &slen[5]);
	}
	for (int i = 0; i < 6; i++)
		if (slen[i] + 64 > cap)
			cap = slen[i] + 64;
	b = malloc(cap);
	assert_non_null(b);

	for (int it = 0; it < 20000; it++) {
		int s = (int)(rnd() % 6), nmut = 1 + (int)(rnd() % 4);
		size_t len = slen[s], fl;
		char err[256];
		Replication__Msg *m;

		memcpy(b, seeds[s], len);
		for (int k = 0; k < nmut; k++) {
			switch (rnd() % 6) {
			case 0:	/* a byte anywhere */
			case 1:
				b[rnd() % len] = (uint8_t)rnd();
				break;
			case 2:	/* a bit in the payload */
				if (len > FRAME_HDR) {
					size_t p = FRAME_HDR +
					    rnd() % (len - FRAME_HDR);

					b[p] ^= (uint8_t)(1u << (rnd() % 8));
				}
				break;
			case 3:	/* truncate, keep the header consistent */
				if (len > FRAME_HDR + 1) {
					len -= 1 + rnd() % (len - FRAME_HDR);
					if (rnd() % 2)
						put_hdr(b, (uint32_t)(len -
						    FRAME_HDR), hdr_type(b),
						    hdr_flags(b));
				}
				break;
			case 4:	/* grow with junk */
				{
					size_t add = rnd() % 32;

					if (len + add <= cap) {
						for (size_t i = 0; i < add; i++)
							b[len + i] =
							    (uint8_t)rnd();
						len += add;
						put_hdr(b, (uint32_t)(len -
						    FRAME_HDR), hdr_type(b),
						    hdr_flags(b));
					}
				}
				break;
			default:	/* a header field */
				b[rnd() % FRAME_HDR] ^= (uint8_t)(1u <<
				    (rnd() % 8));
				break;
			}
		}
		fl = 0;
		switch (frame_peek(b, len, &fl, err, sizeof(err))) {
		case 0:
			fail_msg("peek on %zu bytes returned 0", len);
			break;
		case -1:
			assert_true(strlen(err) > 0);
			refused++;
			continue;
		}
		if (fl > len)
			fl = len;	/* not all here: decode what is */
		err[0] = '\0';
		m = frame_decode(b, fl, err, sizeof(err));
		if (m) {
			assert_int_equal(m->body_case, hdr_type(b));
			replication__msg__free_unpacked(m, NULL);
			accepted++;
		} else {
			assert_true(strlen(err) > 0);
			refused++;
		}
	}
	assert_int_equal(accepted + refused, 20000);
	assert_true(refused > 1000);
	free(b);
	for (int i = 0; i < 6; i++)
		free(seeds[i]);
}

static void
test_names(void **state)
{
	(void)state;
	assert_string_equal(frame_type_name(REPLICATION__MSG__BODY_HELLO),
	    "hello");
	assert_string_equal(frame_type_name(REPLICATION__MSG__BODY_ERROR),
	    "error");
	assert_string_equal(frame_type_name(99), "unknown");
	assert_string_equal(frame_type_name(65535), "unknown");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_roundtrip_small),
		cmocka_unit_test(test_roundtrip_data),
		cmocka_unit_test(test_writes_in_place),
		cmocka_unit_test(test_writes_cap),
		cmocka_unit_test(test_peek),
		cmocka_unit_test(test_bad_frames),
		cmocka_unit_test(test_bad_zstd),
		cmocka_unit_test(test_fuzz),
		cmocka_unit_test(test_names),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
