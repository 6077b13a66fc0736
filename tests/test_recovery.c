/*
 * Recovery policy (core/policy/recovery.h, core/base/fault.h, core/daemon/psi.h) on real files and syscalls:
 * loads that meet injected EINTR, EAGAIN and short reads still land every byte, and fail
 * clearly after too many; the allocation retry on a real arena; the quarantine table; the
 * PSI parser and a PSI monitor polling a file that stands in for /proc/pressure/memory.
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/base/common.h"
#include "core/base/fault.h"
#include "core/daemon/psi.h"
#include "core/policy/recovery.h"
#include "core/format/st_write.h"
#include "uring/arena.h"
#include "uring/loader.h"

#define CHUNK (64u << 10)

static char root[1024];
static char file[1100];
static struct arena *arena;
static struct loader *loader;	/* queue depth 1: injected faults hit one read in a row */

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(path);
}

static int setup(void **state)
{
	/* One large tensor: every read is a full chunk, so a short read (1 byte) leaves more. */
	static const struct st_write_tensor t[] = {
		{ "w", ST_F16, 1, { 1u << 19 }, NULL },
	};
	struct arena_options ao = { .budget = 64u << 20, .flags = ARENA_F_RELEASE };
	struct loader_options lo = { .qd = 1, .chunk = CHUNK, .n_staging = 1 };
	const char *tmp = getenv("TMPDIR");

	(void)state;
	snprintf(root, sizeof(root), "%s/test_recovery.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(root))
		return -1;
	snprintf(file, sizeof(file), "%s/w.safetensors", root);
	if (st_write_file(file, t, ARRAY_SIZE(t), NULL, 0, 11))
		return -1;
	if (arena_create(&ao, &arena) || loader_create(arena, &lo, &loader))
		return -1;
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	loader_destroy(loader);
	arena_destroy(arena);
	return nftw(root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- backoff and fault specs ---------------------------------------------------------- */

static void test_backoff(void **state)
{
	static const struct {
		unsigned int attempt;
		uint64_t ns;
	} rows[] = {
		{ 1, 1000000 }, { 2, 2000000 }, { 3, 4000000 }, { 5, 16000000 },
		{ 7, 64000000 }, { 8, 100000000 }, { 30, 100000000 },
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		if (recovery_backoff_ns(rows[i].attempt) != rows[i].ns) {
			fprintf(stderr, "attempt %u: %lu ns, want %lu\n", rows[i].attempt,
				recovery_backoff_ns(rows[i].attempt), rows[i].ns);
			fail();
		}
	}
	assert_true(recovery_io_transient(-EINTR) && recovery_io_transient(-EAGAIN));
	assert_false(recovery_io_transient(-EIO) || recovery_io_transient(0));
}

static void test_fault_spec(void **state)
{
	static const struct {
		const char *spec;
		int rc;
		uint32_t read, alloc, populate;	/* armed counts afterwards */
	} rows[] = {
		{ "read:EAGAIN:3", 0, 3, 0, 0 },
		{ "read:eintr:2,alloc:ENOSPC:1", 0, 2, 1, 0 },
		{ "populate:ENOMEM:4", 0, 0, 0, 4 },
		{ "read:SHORT:7", 0, 7, 0, 0 },
		{ "alloc:ENOSPC:2@3", 0, 0, 2, 0 },
		{ "alloc:ENOSPC:2@", -EINVAL, 0, 0, 0 },
		{ "alloc:ENOSPC:2@x", -EINVAL, 0, 0, 0 },
		{ "read:EAGAIN:0", -EINVAL, 0, 0, 0 },
		{ "read:EAGAIN", -EINVAL, 0, 0, 0 },
		{ "write:EAGAIN:1", -EINVAL, 0, 0, 0 },
		{ "read:EFOO:1", -EINVAL, 0, 0, 0 },
		{ "read:EAGAIN:1x", -EINVAL, 0, 0, 0 },
		{ "read:EAGAIN:1,", -EINVAL, 0, 0, 0 },
		{ "alloc:ENOSPC:1,read:EIO:-1", -EINVAL, 0, 0, 0 },
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		int rc;

		for (int p = 0; p < FAULT_POINT_COUNT; p++)
			fault_arm((enum fault_point)p, 0, 0);
		rc = fault_arm_spec(rows[i].spec);
		if (rc != rows[i].rc || fault_left(FAULT_READ) != rows[i].read ||
		    fault_left(FAULT_ALLOC) != rows[i].alloc ||
		    fault_left(FAULT_POPULATE) != rows[i].populate) {
			fprintf(stderr, "\"%s\": rc %d (want %d), armed read %u alloc %u populate "
				"%u (want %u %u %u)\n", rows[i].spec, rc, rows[i].rc,
				fault_left(FAULT_READ), fault_left(FAULT_ALLOC),
				fault_left(FAULT_POPULATE), rows[i].read, rows[i].alloc,
				rows[i].populate);
			fail();
		}
	}
	for (int p = 0; p < FAULT_POINT_COUNT; p++)
		fault_arm((enum fault_point)p, 0, 0);
	/* A count runs out: two takes, then inert. */
	fault_arm(FAULT_ALLOC, ENOSPC, 2);
	assert_int_equal(fault_take(FAULT_ALLOC), ENOSPC);
	assert_int_equal(fault_take(FAULT_ALLOC), ENOSPC);
	assert_int_equal(fault_take(FAULT_ALLOC), 0);
	/* "@K": K events pass first. */
	fault_arm_after(FAULT_POPULATE, ENOMEM, 1, 2);
	assert_int_equal(fault_take(FAULT_POPULATE), 0);
	assert_int_equal(fault_take(FAULT_POPULATE), 0);
	assert_int_equal(fault_take(FAULT_POPULATE), ENOMEM);
	assert_int_equal(fault_take(FAULT_POPULATE), 0);
}

/* ---- transient reads in the loader ----------------------------------------------------- */

/* The arena bytes of every tensor against a pread of the file. */
static void check_bytes(const struct load_plan *p, uint64_t ext, const char *row)
{
	int fd = open(file, O_RDONLY | O_CLOEXEC);

	assert_true(fd >= 0);
	for (uint32_t i = 0; i < p->n_tensors; i++) {
		const struct load_tensor *T = &p->tensors[i];
		char *want = malloc(T->src_bytes + 1);

		assert_non_null(want);
		assert_int_equal(pread(fd, want, T->src_bytes, (off_t)T->src_off),
				 (ssize_t)T->src_bytes);
		if (memcmp(want, arena_ptr(arena, ext + T->off), T->src_bytes)) {
			fprintf(stderr, "%s: tensor %s differs from the file\n", row, T->name);
			fail();
		}
		free(want);
	}
	close(fd);
}

static void test_transient_reads(void **state)
{
	static const struct {
		const char *row;
		int err;		/* injected: errno or FAULT_SHORT */
		uint32_t n;		/* how many completions in a row */
		unsigned int flags;	/* LOAD_F_* */
		int want_rc;
		uint64_t retries;	/* RECOVERY_IO_RETRIES added */
		const char *want_msg;	/* in the failure message */
	} rows[] = {
		{ "EINTR x3", EINTR, 3, LOAD_F_NO_DIRECT, 0, 3, NULL },
		{ "EAGAIN x5 (the limit)", EAGAIN, 5, LOAD_F_NO_DIRECT, 0, 5, NULL },
		{ "short x4", FAULT_SHORT, 4, LOAD_F_NO_DIRECT, 0, 4, NULL },
		{ "short x3, file layout", FAULT_SHORT, 3, LOAD_F_FILE_LAYOUT | LOAD_F_NO_DIRECT,
		  0, 3, NULL },
		{ "EINTR x2, O_DIRECT if the file system has it", EINTR, 2, 0, 0, 2, NULL },
		{ "EAGAIN x6: too many", EAGAIN, 6, LOAD_F_NO_DIRECT, -EAGAIN, 5,
		  "failed after 5 retries: Resource temporarily unavailable" },
		{ "short x64 (the limit)", FAULT_SHORT, 64, LOAD_F_NO_DIRECT, 0, 64, NULL },
		{ "short x65: too many", FAULT_SHORT, 65, LOAD_F_NO_DIRECT, -EIO, 64,
		  "failed after 64 retries: the file keeps returning short reads" },
		{ "EIO: permanent", EIO, 1, LOAD_F_NO_DIRECT, -EIO, 0,
		  "w.safetensors at byte " },
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		struct load_file_spec fs = { .path = file };
		struct load_spec spec = { .name = "t/w", .n_files = 1, .files = &fs,
					  .flags = rows[i].flags };
		char msg[LOADER_MSG_MAX] = "";
		struct load_plan *p;
		uint64_t ext = 0, before = recovery_counter(RECOVERY_IO_RETRIES), got;
		int rc;

		assert_int_equal(loader_plan(&spec, CHUNK, &p, msg, sizeof(msg)), 0);
		assert_int_equal(arena_alloc(arena, p->bytes, &ext), 0);
		memset(arena_ptr(arena, ext), 0xa5, p->bytes);
		fault_arm(FAULT_READ, rows[i].err, rows[i].n);
		rc = loader_run(loader, p, ext, NULL, msg, sizeof(msg));
		got = recovery_counter(RECOVERY_IO_RETRIES) - before;
		if (rc != rows[i].want_rc || got != rows[i].retries || fault_left(FAULT_READ) ||
		    (rows[i].want_msg && !strstr(msg, rows[i].want_msg))) {
			fprintf(stderr, "%s: rc %d (want %d), retries %lu (want %lu), faults left "
				"%u, message \"%s\"\n", rows[i].row, rc, rows[i].want_rc, got,
				rows[i].retries, fault_left(FAULT_READ), msg);
			fail();
		}
		if (!rc)
			check_bytes(p, ext, rows[i].row);
		else
			assert_non_null(strstr(msg, file));	/* names the file */
		fault_arm(FAULT_READ, 0, 0);
		assert_int_equal(arena_free(arena, ext, p->bytes), 0);
		loader_plan_free(p);
	}
}

/* ---- allocation retry on a real arena --------------------------------------------------- */

struct fake_tier {
	struct arena *a;
	uint64_t bytes, off;
	uint64_t held[8];	/* extents of "entries", 0: none */
	bool pinned[8];
	int evict_calls;
};

static int tier_alloc(void *arg)
{
	struct fake_tier *t = arg;
	int err = fault_take(FAULT_ALLOC);

	return err ? -err : arena_alloc(t->a, t->bytes, &t->off);
}

/* Frees unpinned "entries" in order until an extent of @bytes fits (or @bytes were freed). */
static int64_t tier_evict(void *arg, uint64_t bytes, int err)
{
	struct fake_tier *t = arg;
	int64_t freed = 0;

	t->evict_calls++;
	for (int i = 0; i < 8; i++) {
		struct arena_stats st;

		arena_get_stats(t->a, &st);
		if (freed && (err == -ENOMEM ? (uint64_t)freed >= bytes :
			      st.ext.largest_free >= bytes))
			break;
		if (!t->held[i] || t->pinned[i])
			continue;
		assert_int_equal(arena_free(t->a, t->held[i] - 1, 1u << 20), 0);
		t->held[i] = 0;
		freed += 1 << 20;
	}
	return freed;
}

static void test_alloc_retry(void **state)
{
	static const struct {
		const char *row;
		uint8_t pinned;		/* bit i: entry i pinned */
		int fault, n_faults;	/* injected at FAULT_ALLOC */
		int want_rc;
		int want_evicts;
		uint64_t retries;
		const char *want_msg;
	} rows[] = {
		{ "fragmented, unpinned neighbours", 0x00, 0, 0, 0, 1, 1, NULL },
		{ "fragmented, only pinned", 0xff, 0, 0, -ENOSPC, 1, 0,
		  "and nothing left to evict" },
		{ "injected ENOMEM once", 0x00, ENOMEM, 1, 0, 1, 1, NULL },
		{ "injected ENOMEM twice", 0x00, ENOMEM, 2, -ENOMEM, 1, 1,
		  "even after evicting 2097152 bytes" },
		{ "other errors are not retried", 0x00, EINVAL, 1, -EINVAL, 0, 0, NULL },
	};
	struct arena *a;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		struct fake_tier t = { .bytes = 2u << 20 };
		uint64_t before = recovery_counter(RECOVERY_ALLOC_RETRIES), off;
		char msg[256] = "";
		int rc;

		/* 8 MiB: eight 1 MiB "entries", then every other one freed: 4 MiB free, no
		 * 2 MiB hole, so a 2 MiB extent is refused for fragmentation. */
		assert_int_equal(arena_create(&(struct arena_options){ .budget = 8u << 20,
					      .flags = ARENA_F_RELEASE }, &a), 0);
		t.a = a;
		for (int k = 0; k < 8; k++) {
			assert_int_equal(arena_alloc(a, 1u << 20, &off), 0);
			t.held[k] = off + 1;
			t.pinned[k] = rows[i].pinned & (1u << k);
		}
		for (int k = 0; k < 8; k += 2) {
			assert_int_equal(arena_free(a, t.held[k] - 1, 1u << 20), 0);
			t.held[k] = 0;
		}
		if (rows[i].n_faults)
			fault_arm(FAULT_ALLOC, rows[i].fault, (uint32_t)rows[i].n_faults);
		rc = recovery_alloc_retry(&(struct recovery_alloc){
			.tier = "host", .name = "m/c", .what = "an extent", .bytes = t.bytes,
			.try_alloc = tier_alloc, .evict = tier_evict, .arg = &t }, msg, sizeof(msg));
		if (rc != rows[i].want_rc || t.evict_calls != rows[i].want_evicts ||
		    recovery_counter(RECOVERY_ALLOC_RETRIES) - before != rows[i].retries ||
		    (rows[i].want_msg && (!strstr(msg, rows[i].want_msg) ||
					  !strstr(msg, "component m/c") ||
					  !strstr(msg, "2097152 bytes of host cache")))) {
			fprintf(stderr, "%s: rc %d (want %d), evict calls %d (want %d), retries %lu "
				"(want %lu), message \"%s\"\n", rows[i].row, rc, rows[i].want_rc,
				t.evict_calls, rows[i].want_evicts,
				recovery_counter(RECOVERY_ALLOC_RETRIES) - before, rows[i].retries,
				msg);
			fail();
		}
		if (!rc)
			assert_true(t.off + t.bytes <= a->seg.size);
		fault_arm(FAULT_ALLOC, 0, 0);
		arena_destroy(a);
	}
}

static void test_populate(void **state)
{
	size_t len = 4u << 20;
	char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	(void)state;
	assert_true(p != MAP_FAILED);
	/* Needed when memory is short for it (no machine has 2^62 bytes) or a fault is armed. */
	assert_false(recovery_populate_needed(4096));
	assert_true(recovery_populate_needed(1ull << 62));
	fault_arm(FAULT_POPULATE, ENOMEM, 1);
	assert_true(recovery_populate_needed(4096));
	fault_arm(FAULT_POPULATE, 0, 0);
	assert_int_equal(recovery_populate(p, len), 0);
	p[len - 1] = 1;
	fault_arm(FAULT_POPULATE, ENOMEM, 1);
	assert_int_equal(recovery_populate(p, len), -ENOMEM);
	assert_int_equal(recovery_populate(p, len), 0);
	munmap(p, len);
}

/* ---- quarantine ------------------------------------------------------------------------ */

static void test_quarantine(void **state)
{
	/* One row per event on one table; "check" rows say what a load would get. */
	enum ev { FAIL, OK, CHECK, CLEAR };
	static const struct {
		enum ev ev;
		const char *key;
		uint64_t fp;
		int err;
		int want;	/* CHECK: its result; FAIL: 1 when it quarantines now */
	} rows[] = {
		{ FAIL, "m/a", 1, -ESTALE, 0 },
		{ FAIL, "m/a", 1, -ESTALE, 0 },
		{ CHECK, "m/a", 1, 0, 0 },
		{ FAIL, "m/a", 1, -EIO, 1 },		/* the third in a row */
		{ CHECK, "m/a", 1, 0, -ENOTRECOVERABLE },
		{ FAIL, "m/a", 1, -EIO, 0 },		/* already quarantined */
		{ CHECK, "m/b", 1, 0, 0 },		/* another component */
		{ CHECK, "m/a", 2, 0, 0 },		/* the files changed: cleared */
		{ CHECK, "m/a", 1, 0, 0 },
		{ FAIL, "m/b", 7, -EINVAL, 0 },
		{ FAIL, "m/b", 7, -EINVAL, 0 },
		{ OK, "m/b", 7, 0, 0 },			/* a success starts again */
		{ FAIL, "m/b", 7, -EINVAL, 0 },
		{ FAIL, "m/b", 7, -EINVAL, 0 },
		{ FAIL, "m/b", 8, -EINVAL, 0 },		/* new files: the count restarts */
		{ CHECK, "m/b", 8, 0, 0 },
		{ FAIL, "m/b", 8, -EINVAL, 0 },
		{ FAIL, "m/b", 8, -EINVAL, 1 },
		{ CLEAR, "m/b", 8, 0, 1 },		/* the operator's unload */
		{ CHECK, "m/b", 8, 0, 0 },
	};
	struct quarantine *q;
	uint64_t before = recovery_counter(RECOVERY_QUARANTINED);
	char msg[256];

	(void)state;
	assert_int_equal(quarantine_create(3, &q), 0);
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		int got = 0;

		msg[0] = '\0';
		switch (rows[i].ev) {
		case FAIL:
			got = quarantine_fail(q, rows[i].key, rows[i].fp, rows[i].err, "read failed");
			break;
		case OK:
			quarantine_ok(q, rows[i].key);
			break;
		case CHECK:
			got = quarantine_check(q, rows[i].key, rows[i].fp, msg, sizeof(msg));
			break;
		case CLEAR:
			got = quarantine_clear(q, rows[i].key);
			break;
		}
		if (got != rows[i].want) {
			fprintf(stderr, "row %zu (%s fp %lu): %d, want %d; %zu quarantined\n", i,
				rows[i].key, rows[i].fp, got, rows[i].want, quarantine_count(q));
			fail();
		}
		if (got == -ENOTRECOVERABLE && strcmp(msg, "quarantined: read failed (3 failures; "
						      "clears when the file changes)")) {
			fprintf(stderr, "row %zu: message \"%s\"\n", i, msg);
			fail();
		}
	}
	assert_int_equal(recovery_counter(RECOVERY_QUARANTINED) - before, 2);
	assert_int_equal(quarantine_count(q), 0);
	/* 0 turns it off. */
	quarantine_set_after(q, 0);
	for (int k = 0; k < 10; k++)
		assert_false(quarantine_fail(q, "m/c", 1, -EIO, "x"));
	assert_int_equal(quarantine_check(q, "m/c", 1, NULL, 0), 0);
	quarantine_destroy(q);
	/*
	 * What counts: the component's fault in a load a client asked for, not a full cache, a
	 * cancellation, or any failure of a prefetch nobody requested.
	 */
	static const struct {
		int err;
		bool requested, want;
	} counts[] = {
		{ -ESTALE, true, true },	{ -EINVAL, true, true },
		{ -ENOSPC, true, false },	{ -EFBIG, true, false },
		{ -ECANCELED, true, false },	{ -ENOTRECOVERABLE, true, false },
		{ -ESTALE, false, false },	{ -EIO, false, false },
		{ -EBADMSG, false, false },
	};
	for (size_t i = 0; i < ARRAY_SIZE(counts); i++) {
		bool got = recovery_counts_toward_quarantine(counts[i].err, counts[i].requested);

		if (got != counts[i].want)
			fail_msg("row %zu: err %d requested %d counts %d, want %d", i, counts[i].err,
				 counts[i].requested, got, counts[i].want);
	}
}

/* ---- PSI --------------------------------------------------------------------------------- */

static void test_psi_parse(void **state)
{
	static const struct {
		const char *text;
		int rc;
		double avg10;
	} rows[] = {
		{ "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
		  "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n", 0, 0.0 },
		{ "some avg10=12.50 avg60=3.00 avg300=1.00 total=123\n"
		  "full avg10=99.00 avg60=0.00 avg300=0.00 total=0\n", 0, 12.5 },
		{ "full avg10=99.00 avg60=0 avg300=0 total=0\nsome avg10=7.25 avg60=0\n", 0, 7.25 },
		{ "some avg10=100.00 total=1", 0, 100.0 },
		{ "", -EBADMSG, 0 },
		{ "some avg60=1.00\n", -EBADMSG, 0 },
		{ "some avg10=abc\n", -EBADMSG, 0 },
		{ "some avg10=-1.0\n", -EBADMSG, 0 },
		{ "some avg10=101\n", -EBADMSG, 0 },
		{ "some avg10=1.0x\n", -EBADMSG, 0 },
		{ "full avg10=5.00\n", -EBADMSG, 0 },
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		double v = -1;
		int rc = psi_parse(rows[i].text, &v);

		if (rc != rows[i].rc || (!rc && v != rows[i].avg10)) {
			fprintf(stderr, "\"%s\": rc %d avg10 %f (want %d %f)\n", rows[i].text, rc, v,
				rows[i].rc, rows[i].avg10);
			fail();
		}
	}
}

static void write_psi(const char *path, double avg10)
{
	char tmp[1200], text[256];
	int fd, n;

	/* Replaced whole (rename), as the kernel's file is always read whole. */
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	n = snprintf(text, sizeof(text), "some avg10=%.2f avg60=0.00 avg300=0.00 total=1\n"
		     "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n", avg10);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, (size_t)n), n);
	close(fd);
	assert_int_equal(rename(tmp, path), 0);
}

/* Waits for the monitor's next event and polls it. */
static int next_poll(struct psi *p, double *avg10)
{
	struct pollfd pfd = { .fd = psi_fd(p), .events = (short)(psi_triggered(p) ? POLLPRI :
								   POLLIN) };

	assert_int_equal(poll(&pfd, 1, 2000), 1);
	return psi_poll(p, avg10);
}

static void test_psi_file(void **state)
{
	char path[1200];
	struct psi *p;
	double v;

	(void)state;
	snprintf(path, sizeof(path), "%s/pressure", root);
	unsetenv(PSI_PATH_ENV);
	/* A missing file: the daemon runs without the watch. */
	assert_int_equal(psi_open(&(struct psi_options){ .path = path, .some_pct = 10 }, &p),
			 -ENOENT);
	write_psi(path, 0.0);
	assert_int_equal(psi_open(&(struct psi_options){ .path = path, .some_pct = 0 }, &p),
			 -EINVAL);
	/* A plain file is polled (no kernel trigger), here every 10 ms. */
	assert_int_equal(psi_open(&(struct psi_options){ .path = path, .some_pct = 10,
						 .interval_ms = 10 }, &p), 0);
	assert_false(psi_triggered(p));
	assert_int_equal(next_poll(p, &v), 0);
	write_psi(path, 25.0);
	assert_int_equal(next_poll(p, &v), 1);
	assert_true(v == 25.0);
	write_psi(path, 9.99);
	assert_int_equal(next_poll(p, &v), 0);
	/* Unreadable now: an error, and the daemon stops watching. */
	unlink(path);
	assert_int_equal(next_poll(p, &v), -ENOENT);
	psi_close(p);
	/* The environment wins over the option. */
	write_psi(path, 50.0);
	setenv(PSI_PATH_ENV, path, 1);
	assert_int_equal(psi_open(&(struct psi_options){ .path = "/nonexistent", .some_pct = 10,
						 .interval_ms = 10 }, &p), 0);
	assert_string_equal(psi_path(p), path);
	assert_int_equal(next_poll(p, &v), 1);
	psi_close(p);
	unsetenv(PSI_PATH_ENV);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_backoff),
		cmocka_unit_test(test_fault_spec),
		cmocka_unit_test(test_transient_reads),
		cmocka_unit_test(test_alloc_retry),
		cmocka_unit_test(test_populate),
		cmocka_unit_test(test_quarantine),
		cmocka_unit_test(test_psi_parse),
		cmocka_unit_test(test_psi_file),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
