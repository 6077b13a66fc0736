/*
 * The pinned staging ring (gpu/staging.h) through the emulated device: the bytes in VRAM
 * equal the files' bytes for misaligned, zero-length, larger-than-a-slot and many small
 * ranges, with O_DIRECT and buffered reads; no slot is refilled before the event after its
 * copies completed (the emulated device hashes each copy's source when it is queued and
 * again when it runs, with copies slowed down so that reuse bugs would show); reads overlap
 * copies; cancel midway; a truncated file is reported with its name and the offset; host
 * memory to VRAM; option checks.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/base/common.h"
#include "gpu/device.h"
#include "gpu/staging.h"
#include "tests/helpers_tmp.h"

#define FILE_A ((1u << 20) + 1234u)
#define FILE_B (300u << 10)
#define VRAM_BYTES (8u << 20)
#define SLOT (64u << 10)
#define MAX_T 600

static const struct gpu_ops *E = &gpu_emu_ops;
static char dir[512], path_a[600], path_b[600];
static unsigned char *bytes_a, *bytes_b;

struct env {
	struct gpu_dev *dev;
	struct gpu_vram v;
	int fd_a, fd_b;
	void *saved;		/* the context current before setup's ctx_enter */
};

static unsigned char *make_file(const char *path, size_t n, unsigned int seed)
{
	unsigned char *b = malloc(n);
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
	FILE *f;

	assert_non_null(b);
	for (size_t i = 0; i < n; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		b[i] = (unsigned char)x;
	}
	f = fopen(path, "wb");
	assert_non_null(f);
	assert_int_equal(fwrite(b, 1, n, f), n);
	assert_int_equal(fclose(f), 0);
	return b;
}

static int setup(void **state)
{
	struct env *e = calloc(1, sizeof(*e));
	char why[256];

	if (!e || td_tmpdir(dir, sizeof(dir), "wd-staging"))
		return -1;
	snprintf(path_a, sizeof(path_a), "%s/a.bin", dir);
	snprintf(path_b, sizeof(path_b), "%s/b.bin", dir);
	bytes_a = make_file(path_a, FILE_A, 1);
	bytes_b = make_file(path_b, FILE_B, 2);
	e->fd_a = open(path_a, O_RDONLY | O_CLOEXEC);
	e->fd_b = open(path_b, O_RDONLY | O_CLOEXEC);
	setenv("WEIGHTD_GPU_EMULATE", "1:64M", 1);
	if (e->fd_a < 0 || e->fd_b < 0 || E->open(0, &e->dev, why, sizeof(why)) ||
	    E->ctx_enter(e->dev, &e->saved, why, sizeof(why)) ||
	    E->vram_alloc(e->dev, VRAM_BYTES, &e->v, why, sizeof(why)))
		return -1;
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	struct env *e = *state;

	E->vram_free(e->dev, &e->v);
	E->ctx_leave(e->dev, e->saved);
	E->close(e->dev);
	close(e->fd_a);
	close(e->fd_b);
	free(e);
	free(bytes_a);
	free(bytes_b);
	td_rmtree(dir);
	return 0;
}

/* Transfer-list builders: each fills @t (dst offsets relative to VRAM start) and returns n. */
struct builder {
	const char *name;
	size_t (*build)(struct env *e, struct staging_transfer *t);
};

static size_t add(struct staging_transfer *t, size_t n, int fd, const char *name, uint64_t off,
		  uint64_t len, uint64_t *dst)
{
	t[n] = (struct staging_transfer){ .fd = fd, .name = name, .off = off, .len = len,
					  .dst = *dst };
	*dst += len + 13;	/* keep destinations misaligned too */
	return n + 1;
}

static size_t b_misaligned(struct env *e, struct staging_transfer *t)
{
	uint64_t d = 7;
	size_t n = 0;

	n = add(t, n, e->fd_a, path_a, 4097, 70001, &d);
	n = add(t, n, e->fd_a, path_a, 1, 3, &d);
	n = add(t, n, e->fd_b, path_b, 5000, 12345, &d);
	n = add(t, n, e->fd_a, path_a, FILE_A - 777, 777, &d);	/* the file's last bytes */
	return n;
}

static size_t b_zero(struct env *e, struct staging_transfer *t)
{
	uint64_t d = 0;
	size_t n = 0;

	n = add(t, n, e->fd_a, path_a, 100, 0, &d);
	n = add(t, n, e->fd_a, path_a, 0, 10, &d);
	n = add(t, n, e->fd_b, path_b, FILE_B, 0, &d);	/* at the end: nothing to read */
	n = add(t, n, -1, "no fd", 0, 0, &d);		/* zero-length: the fd is not used */
	return n;
}

static size_t b_bigger_than_slot(struct env *e, struct staging_transfer *t)
{
	uint64_t d = 4096 + 3;

	return add(t, 0, e->fd_a, path_a, 123, 5 * SLOT + 999, &d);
}

static size_t b_many_small(struct env *e, struct staging_transfer *t)
{
	uint64_t d = 1, x = 12345;
	size_t n = 0;

	for (int i = 0; i < 500; i++) {
		uint64_t len, off;
		bool a;

		x = x * 6364136223846793005ull + 1442695040888963407ull;
		a = (x >> 60) & 1;
		len = 1 + (x >> 20) % 400;
		off = (x >> 33) % ((a ? FILE_A : FILE_B) - len);
		n = add(t, n, a ? e->fd_a : e->fd_b, a ? path_a : path_b, off, len, &d);
	}
	return n;
}

static size_t b_more_than_slots(struct env *e, struct staging_transfer *t)
{
	uint64_t d = 0;
	size_t n = 0;

	/* Contiguous in the file, like a safetensors file's tensors: reads get merged. */
	for (int i = 0; i < 40; i++)
		n = add(t, n, e->fd_a, path_a, 999 + (uint64_t)i * 20000, 20000, &d);
	return n;
}

static size_t b_whole(struct env *e, struct staging_transfer *t)
{
	uint64_t d = 0;
	size_t n = 0;

	n = add(t, n, e->fd_a, path_a, 0, FILE_A, &d);
	n = add(t, n, e->fd_b, NULL, 0, FILE_B, &d);	/* name from /proc/self/fd */
	return n;
}

static const struct builder builders[] = {
	{ "misaligned", b_misaligned },
	{ "zero-length", b_zero },
	{ "bigger than a slot", b_bigger_than_slot },
	{ "many small", b_many_small },
	{ "more transfers than slots", b_more_than_slots },
	{ "whole files", b_whole },
};

struct progress {
	uint64_t calls, last_done, total;
	bool monotonic;
	atomic_bool *cancel;
	uint64_t cancel_at;
};

static void on_progress(void *arg, uint64_t done, uint64_t total)
{
	struct progress *p = arg;

	if (done < p->last_done || done > total)
		p->monotonic = false;
	p->calls++;
	p->last_done = done;
	p->total = total;
	if (p->cancel && done >= p->cancel_at)
		atomic_store(p->cancel, true);
}

static void check_vram(struct env *e, const struct staging_transfer *t, size_t n,
		       const char *what)
{
	static unsigned char back[FILE_A];

	for (size_t i = 0; i < n; i++) {
		const unsigned char *want = t[i].fd == e->fd_a ? bytes_a : bytes_b;
		char why[256];

		if (!t[i].len)
			continue;
		assert_int_equal(E->copy_d2h(e->dev, back, t[i].dst, t[i].len, why, sizeof(why)),
				 0);
		if (memcmp(back, want + t[i].off, t[i].len))
			fail_msg("%s: transfer %zu (%s at %llu, %llu bytes -> +%llu) differs", what,
				 i, t[i].name ? t[i].name : "fd", (unsigned long long)t[i].off,
				 (unsigned long long)t[i].len,
				 (unsigned long long)(t[i].dst - e->v.dptr));
	}
}

static void clear_vram(struct env *e, struct staging *st)
{
	static unsigned char zero[1u << 20];
	struct staging_host_copy c[VRAM_BYTES / sizeof(zero)];
	char why[256];

	for (size_t i = 0; i < ARRAY_SIZE(c); i++)
		c[i] = (struct staging_host_copy){ zero, sizeof(zero), e->v.dptr + i * sizeof(zero),
						   false };
	assert_int_equal(staging_copy_host(st, c, ARRAY_SIZE(c), NULL, why, sizeof(why)), 0);
}

static void test_transfers(void **state)
{
	static const struct {
		const char *mode;
		bool no_direct;
		uint32_t slots, streams;
	} modes[] = {
		{ "O_DIRECT, 3 slots, 2 streams", false, 3, 2 },
		{ "buffered, 3 slots, 2 streams", true, 3, 2 },
		{ "O_DIRECT, 2 slots, 1 stream", false, 2, 1 },
		{ "buffered, 5 slots, 3 streams", true, 5, 3 },
	};
	struct env *e = *state;
	static struct staging_transfer t[MAX_T];

	for (size_t m = 0; m < ARRAY_SIZE(modes); m++) {
		struct staging_options o = { .n_slots = modes[m].slots, .slot_bytes = SLOT,
					     .n_streams = modes[m].streams, .node = -1,
					     .no_direct = modes[m].no_direct };
		struct staging *st;
		struct staging_stats ss;
		struct gpu_emu_stats es;
		char why[512] = "";

		assert_int_equal(staging_create(E, e->dev, &o, &st, why, sizeof(why)), 0);
		/* Slow copies (300 us each) and source hashing: an early reuse would show. */
		assert_int_equal(gpu_emu_debug(e->dev, 300, true), 0);
		for (size_t b = 0; b < ARRAY_SIZE(builders); b++) {
			size_t n = builders[b].build(e, t);
			struct progress p = { .monotonic = true };
			struct staging_call call = { on_progress, &p, NULL };
			uint64_t total = 0;
			int rc;

			for (size_t i = 0; i < n; i++) {
				t[i].dst += e->v.dptr;
				total += t[i].len;
			}
			clear_vram(e, st);
			rc = staging_load(st, t, n, &call, why, sizeof(why));
			if (rc)
				fail_msg("%s / %s: %d %s", modes[m].mode, builders[b].name, rc, why);
			check_vram(e, t, n, builders[b].name);
			if (!p.monotonic || (total && (p.last_done != total || p.total != total)))
				fail_msg("%s / %s: progress ended at %llu/%llu, want %llu (monotonic "
					 "%d)", modes[m].mode, builders[b].name,
					 (unsigned long long)p.last_done,
					 (unsigned long long)p.total, (unsigned long long)total,
					 p.monotonic);
		}
		staging_get_stats(st, &ss);
		assert_int_equal(gpu_emu_stats(e->dev, &es), 0);
		printf("%s: fills %llu reads %llu copies %llu overlapped %llu busy %u direct %u "
		       "fixed bufs %d files %d, device max queue %llu\n", modes[m].mode,
		       (unsigned long long)ss.slot_fills, (unsigned long long)ss.reads,
		       (unsigned long long)ss.copies, (unsigned long long)ss.overlapped_reads,
		       ss.max_busy_slots, ss.direct_files, ss.fixed_buffers, ss.fixed_files,
		       (unsigned long long)es.max_queued);
		if (es.src_changed || ss.slot_reuse_early)
			fail_msg("%s: a slot was refilled while its copy was queued (%llu sources "
				 "changed, %llu early refills)", modes[m].mode,
				 (unsigned long long)es.src_changed,
				 (unsigned long long)ss.slot_reuse_early);
		/* The pipeline really pipelined: reads ran while copies were queued. */
		assert_true(ss.slot_fills > 3 * o.n_slots);
		assert_true(ss.overlapped_reads > 0);
		assert_true(ss.max_busy_slots >= 2);
		if (!modes[m].no_direct && !ss.direct_files)
			printf("SKIP O_DIRECT on %s: the file system refuses it; reads were buffered\n",
			       dir);
		if (modes[m].no_direct)
			assert_int_equal(ss.direct_files, 0);
		assert_int_equal(gpu_emu_debug(e->dev, 0, false), 0);
		staging_destroy(st);
	}
}

static void test_cancel(void **state)
{
	struct env *e = *state;
	struct staging_options o = { .n_slots = 3, .slot_bytes = SLOT, .n_streams = 2,
				     .node = -1 };
	struct staging_transfer t[2];
	struct staging *st;
	atomic_bool cancel = false;
	struct progress p = { .monotonic = true, .cancel = &cancel, .cancel_at = 3 * SLOT };
	struct staging_call call = { on_progress, &p, &cancel };
	char why[512] = "";
	uint64_t d = 0;
	int rc;

	assert_int_equal(staging_create(E, e->dev, &o, &st, why, sizeof(why)), 0);
	assert_int_equal(gpu_emu_debug(e->dev, 500, false), 0);
	add(t, 0, e->fd_a, path_a, 0, FILE_A, &d);
	t[0].dst += e->v.dptr;
	rc = staging_load(st, t, 1, &call, why, sizeof(why));
	if (rc != -ECANCELED || !strstr(why, "cancelled") || p.last_done >= FILE_A)
		fail_msg("cancel gave %d \"%s\" after %llu bytes", rc, why,
			 (unsigned long long)p.last_done);

	/* The ring is usable again after a cancelled call. */
	atomic_store(&cancel, false);
	p = (struct progress){ .monotonic = true };
	assert_int_equal(staging_load(st, t, 1, &call, why, sizeof(why)), 0);
	check_vram(e, t, 1, "after cancel");

	/*
	 * Host copies stop too. They are queued as fast as the event window allows, so the
	 * cancel shows only in a call longer than the window (64 chunks): 96 chunks here.
	 */
	{
		size_t big = 96 * SLOT;
		unsigned char *src = calloc(1, big);
		struct staging_host_copy hc = { src, big, e->v.dptr, false };

		assert_non_null(src);
		atomic_store(&cancel, false);
		p = (struct progress){ .monotonic = true, .cancel = &cancel, .cancel_at = SLOT };
		rc = staging_copy_host(st, &hc, 1, &call, why, sizeof(why));
		if (rc != -ECANCELED || !strstr(why, "cancelled") || p.last_done >= big)
			fail_msg("host copy cancel gave %d \"%s\" after %llu bytes", rc, why,
				 (unsigned long long)p.last_done);
		free(src);
	}
	assert_int_equal(gpu_emu_debug(e->dev, 0, false), 0);
	staging_destroy(st);
}

static void test_errors(void **state)
{
	struct env *e = *state;
	struct staging_options o = { .n_slots = 2, .slot_bytes = SLOT, .n_streams = 1,
				     .node = -1 };
	struct {
		const char *what;
		bool no_direct;
		int fd;		/* 0: file a, 1: file b, -1: bad */
		uint64_t off, len, dst_off;
		int rc;
		const char *msg1, *msg2;
	} rows[] = {
		{ "past the end, direct", false, 0, FILE_A - 100, 600, 0, -EIO, "a.bin",
		  "short read at byte 1049810" },
		{ "past the end, buffered", true, 0, FILE_A - 100, 600, 0, -EIO, "a.bin",
		  "short read at byte 1049810" },
		{ "wholly past the end", true, 1, FILE_B + 4096, 10, 0, -EIO, "b.bin",
		  "short read at byte" },
		{ "bad fd", false, -1, 0, 10, 0, -EBADF, "bad fd", "" },
		{ "offset overflows", false, 0, UINT64_MAX - 5, 10, 0, -EINVAL, "overflows", "" },
		{ "outside VRAM", false, 0, 0, 100, VRAM_BYTES - 50, -EFAULT,
		  "not inside one live allocation", "" },
	};
	struct staging *st;
	char why[512];

	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		struct staging_transfer t = {
			.fd = rows[i].fd < 0 ? -1 : rows[i].fd ? e->fd_b : e->fd_a,
			.name = rows[i].fd < 0 ? NULL : rows[i].fd ? path_b : path_a,
			.off = rows[i].off, .len = rows[i].len,
			.dst = e->v.dptr + rows[i].dst_off,
		};
		int rc;

		o.no_direct = rows[i].no_direct;
		assert_int_equal(staging_create(E, e->dev, &o, &st, why, sizeof(why)), 0);
		why[0] = '\0';
		rc = staging_load(st, &t, 1, NULL, why, sizeof(why));
		if (rc != rows[i].rc || !strstr(why, rows[i].msg1) || !strstr(why, rows[i].msg2))
			fail_msg("%s: %d \"%s\", want %d naming \"%s\" and \"%s\"", rows[i].what,
				 rc, why, rows[i].rc, rows[i].msg1, rows[i].msg2);
		/* The ring still works after the failure. */
		t = (struct staging_transfer){ e->fd_a, path_a, 10, 1000, e->v.dptr };
		assert_int_equal(staging_load(st, &t, 1, NULL, why, sizeof(why)), 0);
		check_vram(e, &t, 1, rows[i].what);
		staging_destroy(st);
	}
}

static void test_copy_host(void **state)
{
	struct env *e = *state;
	struct staging_options o = { .n_slots = 2, .slot_bytes = SLOT, .n_streams = 3,
				     .node = -1 };
	size_t big = 6u << 20;	/* 96 chunks: more than the event window */
	unsigned char *src = malloc(big), *back = malloc(big);
	struct progress p = { .monotonic = true };
	struct staging_call call = { on_progress, &p, NULL };
	struct staging_host_copy hc[3];
	struct gpu_emu_stats es;
	struct staging *st;
	char why[512] = "";

	assert_non_null(src);
	assert_non_null(back);
	for (size_t i = 0; i < big; i++)
		src[i] = (unsigned char)(i * 7 + (i >> 16));
	hc[0] = (struct staging_host_copy){ src + 5, big - 5 - 1000, e->v.dptr + 11, true };
	hc[1] = (struct staging_host_copy){ NULL, 0, 0, true };	/* empty: ignored */
	hc[2] = (struct staging_host_copy){ src, 999, e->v.dptr + (7u << 20) + 1, true };
	assert_int_equal(staging_create(E, e->dev, &o, &st, why, sizeof(why)), 0);
	assert_int_equal(E->host_register(e->dev, src, big, why, sizeof(why)), 0);
	assert_int_equal(gpu_emu_debug(e->dev, 0, true), 0);
	assert_int_equal(staging_copy_host(st, hc, 3, &call, why, sizeof(why)), 0);
	assert_int_equal(E->copy_d2h(e->dev, back, hc[0].dst, hc[0].len, why, sizeof(why)), 0);
	assert_memory_equal(back, hc[0].src, hc[0].len);
	assert_int_equal(E->copy_d2h(e->dev, back, hc[2].dst, hc[2].len, why, sizeof(why)), 0);
	assert_memory_equal(back, hc[2].src, hc[2].len);
	assert_true(p.monotonic);
	assert_int_equal(p.last_done, hc[0].len + hc[2].len);
	assert_int_equal(gpu_emu_stats(e->dev, &es), 0);
	assert_int_equal(es.src_changed, 0);

	/* A NULL source with a length, and a copy outside VRAM. */
	hc[1] = (struct staging_host_copy){ NULL, 10, e->v.dptr, false };
	assert_int_equal(staging_copy_host(st, &hc[1], 1, NULL, why, sizeof(why)), -EINVAL);
	hc[1] = (struct staging_host_copy){ src, 2 * SLOT, e->v.dptr + VRAM_BYTES - SLOT, false };
	assert_int_equal(staging_copy_host(st, &hc[1], 1, NULL, why, sizeof(why)), -EFAULT);
	assert_non_null(strstr(why, "not inside one live allocation"));

	assert_int_equal(gpu_emu_debug(e->dev, 0, false), 0);
	E->host_unregister(e->dev, src);
	staging_destroy(st);
	free(src);
	free(back);
}

/*
 * Host memory that is not page-locked goes through the slots (never an async copy from
 * pageable memory), with copies slowed down and sources hashed so that a slot refilled
 * before its copy ran would show; page-locked memory goes straight. One row per case.
 */
static void test_copy_host_staged(void **state)
{
	static const struct {
		bool locked;		/* host_register the source and say so */
		uint32_t slots, streams;
	} rows[] = {
		{ false, 2, 1 }, { false, 3, 2 }, { false, 5, 3 }, { true, 2, 2 },
	};
	struct env *e = *state;
	size_t big = 1u << 20;	/* 16 slot-sized chunks */
	unsigned char *src = aligned_alloc(4096, big), *back = malloc(big);

	assert_non_null(src);
	assert_non_null(back);
	for (size_t r = 0; r < ARRAY_SIZE(rows); r++) {
		struct staging_options o = { .n_slots = rows[r].slots, .slot_bytes = SLOT,
					     .n_streams = rows[r].streams, .node = -1 };
		struct staging_host_copy hc = { src + 3, big - 3, e->v.dptr + 1, rows[r].locked };
		struct gpu_emu_stats before, after;
		struct staging_stats ss;
		struct staging *st;
		char why[512] = "";

		for (size_t i = 0; i < big; i++)
			src[i] = (unsigned char)(i * 13 + r + (i >> 12));
		assert_int_equal(staging_create(E, e->dev, &o, &st, why, sizeof(why)), 0);
		if (rows[r].locked)
			assert_int_equal(E->host_register(e->dev, src, big, why, sizeof(why)), 0);
		assert_int_equal(gpu_emu_stats(e->dev, &before), 0);
		assert_int_equal(gpu_emu_debug(e->dev, 200, true), 0);
		assert_int_equal(staging_copy_host(st, &hc, 1, NULL, why, sizeof(why)), 0);
		assert_int_equal(gpu_emu_debug(e->dev, 0, false), 0);
		assert_int_equal(gpu_emu_stats(e->dev, &after), 0);
		staging_get_stats(st, &ss);
		assert_int_equal(E->copy_d2h(e->dev, back, hc.dst, hc.len, why, sizeof(why)), 0);
		if (memcmp(back, hc.src, hc.len))
			fail_msg("row %zu: VRAM differs from the source", r);
		if (after.src_changed != before.src_changed)
			fail_msg("row %zu: %llu copies read a slot refilled under them", r,
				 (unsigned long long)(after.src_changed - before.src_changed));
		if (after.pageable_copies != before.pageable_copies)
			fail_msg("row %zu: %llu copies from pageable memory", r,
				 (unsigned long long)(after.pageable_copies - before.pageable_copies));
		assert_int_equal(ss.staged_bytes, rows[r].locked ? 0 : hc.len);
		if (rows[r].locked)
			E->host_unregister(e->dev, src);
		staging_destroy(st);
	}
	free(src);
	free(back);
}

/*
 * Pieces contiguous in a slot and in VRAM (the tensors of one file, packed) go as one copy;
 * a gap in VRAM splits them. Buffered reads, so that pieces sit back to back in the slot.
 */
static void test_merged_copies(void **state)
{
	static const struct {
		uint64_t gap_at;	/* piece before which VRAM leaves a 64-byte gap; 0: none */
		uint64_t copies;
	} rows[] = { { 0, 1 }, { 5, 2 }, { 3, 2 } };
	struct env *e = *state;
	struct staging_options o = { .n_slots = 2, .slot_bytes = SLOT, .n_streams = 1,
				     .node = -1, .no_direct = true };
	struct staging_transfer t[8];

	for (size_t r = 0; r < ARRAY_SIZE(rows); r++) {
		struct staging_stats ss;
		struct staging *st;
		char why[512] = "";
		uint64_t dst = e->v.dptr + 4096;

		for (size_t i = 0; i < ARRAY_SIZE(t); i++) {
			if (rows[r].gap_at && i == rows[r].gap_at)
				dst += 64;
			/* 8 x 1024 bytes, adjacent in file A, 64-byte aligned (PIECE_ALIGN). */
			t[i] = (struct staging_transfer){ .fd = e->fd_a, .name = path_a,
							  .off = 4096 + 1024 * i, .len = 1024,
							  .dst = dst };
			dst += 1024;
		}
		assert_int_equal(staging_create(E, e->dev, &o, &st, why, sizeof(why)), 0);
		assert_int_equal(staging_load(st, t, ARRAY_SIZE(t), NULL, why, sizeof(why)), 0);
		staging_get_stats(st, &ss);
		check_vram(e, t, ARRAY_SIZE(t), "merged");
		if (ss.copies != rows[r].copies)
			fail_msg("row %zu: %llu copies for 8 adjacent pieces, want %llu", r,
				 (unsigned long long)ss.copies, (unsigned long long)rows[r].copies);
		staging_destroy(st);
	}
}

/* The path the slots took: mmap'ed, page-locked with host_register, fixed buffers. */
static void test_slot_path(void **state)
{
	struct env *e = *state;
	struct gpu_emu_process_stats before, during, after;
	struct staging_stats ss;
	struct staging *st;
	char why[512] = "";

	gpu_emu_process_stats(&before);
	assert_int_equal(staging_create(E, e->dev, &(struct staging_options){
						.n_slots = 4, .slot_bytes = SLOT, .node = 0 },
					&st, why, sizeof(why)), 0);
	gpu_emu_process_stats(&during);
	staging_get_stats(st, &ss);
	assert_true(ss.slots_locked);
	assert_int_equal(ss.slots_err, 0);
	assert_int_equal(ss.node_err, 0);
	/* Registered (host_register), not cuMemHostAlloc'ed: counted as one registration. */
	assert_int_equal(during.registrations, before.registrations + 1);
	assert_int_equal(during.locked_bytes, before.locked_bytes + 4 * SLOT);
	if (!ss.fixed_buffers)
		printf("SKIP fixed buffers: io_uring refused them here (%d)\n", ss.fixed_buffers_err);
	else
		assert_int_equal(ss.fixed_buffers_err, 0);
	staging_destroy(st);
	gpu_emu_process_stats(&after);
	assert_int_equal(after.locked_bytes, before.locked_bytes);
}

static void test_options(void **state)
{
	struct env *e = *state;
	static const struct {
		struct staging_options o;
		int rc;
	} rows[] = {
		{ { 0, 0, 0, -1, false }, 0 },		/* defaults: 4 x 16 MiB, 2 streams */
		{ { 1, SLOT, 1, -1, false }, -EINVAL },	/* one slot cannot pipeline */
		{ { 65, SLOT, 1, -1, false }, -EINVAL },
		{ { 2, SLOT + 1, 1, -1, false }, -EINVAL },
		{ { 2, 32u << 10, 1, -1, false }, -EINVAL },
		{ { 2, SLOT, 17, -1, false }, -EINVAL },
		{ { 2, SLOT, 1, 0, false }, 0 },		/* node 0 exists everywhere */
		{ { 2, SLOT, 1, 1000, false }, -EINVAL },	/* no such node */
	};

	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		struct staging *st = NULL;
		struct staging_stats ss;
		char why[256] = "";
		int rc = staging_create(E, e->dev, &rows[i].o, &st, why, sizeof(why));

		if (rc != rows[i].rc || (rc && !why[0]))
			fail_msg("row %zu: %d \"%s\", want %d", i, rc, why, rows[i].rc);
		if (!rc) {
			staging_get_stats(st, &ss);
			assert_int_equal(ss.node, rows[i].o.node);
			staging_destroy(st);
		}
	}
	staging_destroy(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_transfers),
		cmocka_unit_test(test_cancel),
		cmocka_unit_test(test_errors),
		cmocka_unit_test(test_copy_host),
		cmocka_unit_test(test_options),
		cmocka_unit_test(test_copy_host_staged),
		cmocka_unit_test(test_merged_copies),
		cmocka_unit_test(test_slot_path),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
