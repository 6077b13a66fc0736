/*
 * The device interface (gpu/device.h) through the emulated device, which runs everywhere:
 * $WEIGHTD_GPU_EMULATE parsing, gpu_ops_pick(), allocation and the budget, copies and their
 * bounds checks, stream order and events, a stream failing on memory freed under a queued
 * copy, the source-change instrument, fd export/import to another process (fork+exec), and
 * F32 -> F16/BF16 conversion on a stream (bit-identical to core/format/convert.c, arguments
 * checked). Then the CUDA driver's rules the emulated device enforces, one test each: no use
 * in a child forked after init, no second registration of a host range, ordinals of the
 * visible-devices list (and bus ids that resolve them), a per-thread current context,
 * EXCLUSIVE_PROCESS, missing capabilities; and the count of copies from pageable memory.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/base/common.h"
#include "core/format/convert.h"
#include "gpu/device.h"

static const struct gpu_ops *E = &gpu_emu_ops;

static void enter(struct gpu_dev *dev)
{
	void *saved;
	char why[256] = "";

	if (E->ctx_enter(dev, &saved, why, sizeof(why)))
		fail_msg("ctx_enter: %s", why);
}

static struct gpu_dev *open_emu(const char *env, int ordinal)
{
	struct gpu_dev *dev = NULL;
	char why[256] = "";
	int rc;

	setenv("WEIGHTD_GPU_EMULATE", env, 1);
	rc = E->open(ordinal, &dev, why, sizeof(why));
	if (rc)
		fail_msg("open emulated cuda:%d with \"%s\": %d %s", ordinal, env, rc, why);
	/* Its context current on this (the only) thread, as the device tier does. */
	enter(dev);
	return dev;
}

static void test_env_parse(void **state)
{
	static const struct {
		const char *env;	/* NULL: unset */
		int count;		/* or negative errno */
		uint64_t total;		/* of device 0 when count > 0 */
		const char *why;	/* substring of the reason when count < 0 */
	} rows[] = {
		{ "1", 1, 4ull << 30, NULL },
		{ "2:8G", 2, 8ull << 30, NULL },
		{ "3:512M", 3, 512ull << 20, NULL },
		{ "1:3M", 1, 4ull << 20, NULL },		/* rounded up to 2 MiB */
		{ "64", 64, 4ull << 30, NULL },
		{ NULL, -ENODEV, 0, "not set" },
		{ "", -ENODEV, 0, "not set" },
		{ "0", -EINVAL, 0, "device count" },
		{ "65", -EINVAL, 0, "device count" },
		{ "-1", -EINVAL, 0, "device count" },
		{ "two", -EINVAL, 0, "device count" },
		{ "2x", -EINVAL, 0, "device count" },
		{ "2:", -EINVAL, 0, "not a size" },
		{ "2:lots", -EINVAL, 0, "not a size" },
		{ "2:1K", -EINVAL, 0, "not a size" },
		{ "2:-8G", -EINVAL, 0, "not a size" },
		{ "1:64MiB", 1, 64ull << 20, NULL },
		{ "1:1gb", 1, 1ull << 30, NULL },
		{ "1:4194304", 1, 4ull << 20, NULL },
		{ "1:1.5G", -EINVAL, 0, "not a size" },		/* whole numbers only */
		{ "1:8GX", -EINVAL, 0, "not a size" },
		{ "1:99999999999T", -EINVAL, 0, "not a size" },	/* overflows */
	};

	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		char why[256] = "";
		int rc;

		if (rows[i].env)
			setenv("WEIGHTD_GPU_EMULATE", rows[i].env, 1);
		else
			unsetenv("WEIGHTD_GPU_EMULATE");
		rc = E->count(why, sizeof(why));
		if (rc != rows[i].count || (rows[i].why && !strstr(why, rows[i].why)))
			fail_msg("row %zu \"%s\": count %d \"%s\", want %d naming \"%s\"", i,
				 rows[i].env ? rows[i].env : "(unset)", rc, why, rows[i].count,
				 rows[i].why ? rows[i].why : "");
		if (rc > 0) {
			struct gpu_dev *dev = NULL;
			struct gpu_device info;

			assert_int_equal(E->open(rc - 1, &dev, why, sizeof(why)), 0);
			assert_int_equal(E->info(dev, &info, why, sizeof(why)), 0);
			if (info.total_bytes != rows[i].total || info.ordinal != rc - 1 ||
			    !strstr(info.name, "emulated"))
				fail_msg("row %zu: info %d \"%s\" %llu bytes, want %llu", i,
					 info.ordinal, info.name,
					 (unsigned long long)info.total_bytes,
					 (unsigned long long)rows[i].total);
			E->close(dev);
			rc = E->open(rc, &dev, why, sizeof(why));
			if (rc != -ENODEV || !strstr(why, "does not exist"))
				fail_msg("row %zu: opening one past the count gave %d \"%s\"", i,
					 rc, why);
		}
	}
	unsetenv("WEIGHTD_GPU_EMULATE");
}

static void test_pick(void **state)
{
	const struct gpu_ops *ops;
	char why[256] = "";

	setenv("WEIGHTD_GPU_EMULATE", "2:64M", 1);
	ops = gpu_ops_pick(why, sizeof(why));
	assert_non_null(ops);
	assert_string_equal(ops->kind, "emulated");

	setenv("WEIGHTD_GPU_EMULATE", "2:nonsense", 1);
	why[0] = '\0';
	ops = gpu_ops_pick(why, sizeof(why));
	if (ops || !strstr(why, "WEIGHTD_GPU_EMULATE"))
		fail_msg("a malformed WEIGHTD_GPU_EMULATE gave %s \"%s\"", ops ? ops->kind : "NULL",
			 why);

	/* Without emulation: CUDA when the driver loads, else NULL and the reason. */
	unsetenv("WEIGHTD_GPU_EMULATE");
	setenv("WEIGHTD_LIBCUDA", "libcuda-does-not-exist.so.1", 1);
	why[0] = '\0';
	ops = gpu_ops_pick(why, sizeof(why));
	unsetenv("WEIGHTD_LIBCUDA");
	if (ops || !(strstr(why, "no CUDA driver") || strstr(why, "compiled out")))
		fail_msg("no driver gave %s \"%s\"", ops ? ops->kind : "NULL", why);
}

static void test_pci_env(void **state)
{
	static const struct {
		int ordinal;
		const char *busid;
	} rows[] = { { 0, "0000:1b:00.0" }, { 1, "0000:9a:00.0" }, { 2, "" } };
	char why[256];

	setenv("WEIGHTD_GPU_EMULATE_PCI", "0000:1b:00.0,0000:9a:00.0", 1);
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		struct gpu_dev *dev = open_emu("3:16M", rows[i].ordinal);
		struct gpu_device info;

		assert_int_equal(E->info(dev, &info, why, sizeof(why)), 0);
		if (strcmp(info.pci_bus_id, rows[i].busid))
			fail_msg("cuda:%d bus id \"%s\", want \"%s\"", rows[i].ordinal,
				 info.pci_bus_id, rows[i].busid);
		E->close(dev);
	}
	unsetenv("WEIGHTD_GPU_EMULATE_PCI");
}

static void test_alloc_budget(void **state)
{
	struct gpu_dev *dev = open_emu("1:16M", 0), *dev2;
	struct gpu_vram v[3];
	uint64_t free_b, total;
	char why[256] = "";
	int rc;

	assert_int_equal(E->granularity(dev), 2u << 20);
	assert_int_equal(E->mem_info(dev, &free_b, &total, why, sizeof(why)), 0);
	assert_int_equal(total, 16u << 20);
	assert_int_equal(free_b, 16u << 20);

	assert_int_equal(E->vram_alloc(dev, 1, &v[0], why, sizeof(why)), 0);
	assert_int_equal(v[0].size, 2u << 20);
	assert_true(v[0].fd >= 0 && v[0].dptr);
	assert_int_equal(E->vram_alloc(dev, 10u << 20, &v[1], why, sizeof(why)), 0);
	assert_int_equal(E->mem_info(dev, &free_b, &total, why, sizeof(why)), 0);
	assert_int_equal(free_b, 4u << 20);

	/* A second handle on the same ordinal shares the process's allocations. */
	dev2 = open_emu("1:16M", 0);
	assert_int_equal(E->mem_info(dev2, &free_b, &total, why, sizeof(why)), 0);
	assert_int_equal(free_b, 4u << 20);
	rc = E->vram_alloc(dev2, 5u << 20, &v[2], why, sizeof(why));
	if (rc != -ENOMEM || !strstr(why, "out of memory"))
		fail_msg("over budget gave %d \"%s\"", rc, why);
	assert_int_equal(v[2].fd, -1);
	rc = E->vram_alloc(dev, 0, &v[2], why, sizeof(why));
	assert_int_equal(rc, -EINVAL);

	E->vram_free(dev, &v[1]);
	assert_int_equal(v[1].fd, -1);
	assert_int_equal(E->mem_info(dev, &free_b, &total, why, sizeof(why)), 0);
	assert_int_equal(free_b, 14u << 20);
	E->vram_free(dev, &v[0]);
	assert_int_equal(E->mem_info(dev, &free_b, &total, why, sizeof(why)), 0);
	assert_int_equal(free_b, 16u << 20);
	E->close(dev2);
	E->close(dev);
}

static void fill(unsigned char *p, size_t n, unsigned int seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (unsigned char)(i * 31 + seed + (i >> 12));
}

static void test_copy_order_events(void **state)
{
	struct gpu_dev *dev = open_emu("1:64M", 0);
	struct gpu_stream *s;
	struct gpu_event *ev[4];
	struct gpu_vram v;
	struct gpu_emu_stats st;
	size_t n = 3u << 20;
	unsigned char *a = malloc(n), *b = malloc(n), *back = malloc(n);
	char why[256] = "";

	assert_non_null(a);
	assert_non_null(b);
	assert_non_null(back);
	fill(a, n, 1);
	fill(b, n, 2);
	assert_int_equal(E->vram_alloc(dev, n, &v, why, sizeof(why)), 0);
	assert_int_equal(E->stream_create(dev, &s, why, sizeof(why)), 0);
	assert_int_equal(gpu_emu_debug(dev, 20000, true), 0);

	/* The same destination written twice: stream order decides which bytes remain. */
	assert_int_equal(E->copy_h2d(dev, s, v.dptr, a, n, why, sizeof(why)), 0);
	assert_int_equal(E->event_record(dev, s, &ev[0], why, sizeof(why)), 0);
	assert_int_equal(E->copy_h2d(dev, s, v.dptr, b, n, why, sizeof(why)), 0);
	assert_int_equal(E->event_record(dev, s, &ev[1], why, sizeof(why)), 0);
	/* Copies take 20 ms each: the second event cannot be complete yet. */
	assert_int_equal(E->event_query(dev, ev[1], why, sizeof(why)), -EAGAIN);
	assert_int_equal(E->event_wait(dev, ev[1], why, sizeof(why)), 0);
	assert_int_equal(E->event_query(dev, ev[0], why, sizeof(why)), 0);
	assert_int_equal(E->copy_d2h(dev, back, v.dptr, n, why, sizeof(why)), 0);
	assert_memory_equal(back, b, n);

	/* A misaligned sub-range inside the allocation. */
	assert_int_equal(E->copy_h2d(dev, s, v.dptr + 12345, a + 7, 100001, why, sizeof(why)), 0);
	assert_int_equal(E->event_record(dev, s, &ev[2], why, sizeof(why)), 0);
	assert_int_equal(E->event_wait(dev, ev[2], why, sizeof(why)), 0);
	assert_int_equal(E->copy_d2h(dev, back, v.dptr + 12345, 100001, why, sizeof(why)), 0);
	assert_memory_equal(back, a + 7, 100001);

	assert_int_equal(gpu_emu_stats(dev, &st), 0);
	assert_int_equal(st.copies, 3);
	assert_int_equal(st.bytes, 2 * n + 100001);
	assert_int_equal(st.src_changed, 0);
	assert_true(st.max_queued >= 2);

	/* The instrument works: a source changed while its copy is queued is counted. */
	assert_int_equal(E->copy_h2d(dev, s, v.dptr, a, 4096, why, sizeof(why)), 0);
	a[100] ^= 0xff;
	assert_int_equal(E->event_record(dev, s, &ev[3], why, sizeof(why)), 0);
	assert_int_equal(E->event_wait(dev, ev[3], why, sizeof(why)), 0);
	assert_int_equal(gpu_emu_stats(dev, &st), 0);
	assert_int_equal(st.src_changed, 1);

	for (size_t i = 0; i < ARRAY_SIZE(ev); i++)
		E->event_destroy(dev, ev[i]);
	E->stream_destroy(dev, s);
	E->vram_free(dev, &v);
	E->close(dev);
	free(a);
	free(b);
	free(back);
}

static void test_bounds(void **state)
{
	struct gpu_dev *dev = open_emu("1:64M", 0);
	struct gpu_stream *s;
	struct gpu_vram v, w;
	static unsigned char buf[8192];
	char why[256];
	struct {
		const char *what;
		uint64_t off;	/* from v.dptr */
		size_t n;
		int rc;
	} rows[] = {
		{ "start", 0, 4096, 0 },
		{ "last byte", (2u << 20) - 1, 1, 0 },
		{ "exact end", (2u << 20) - 8192, 8192, 0 },
		{ "one past the end", (2u << 20) - 4096, 4097, -EFAULT },
		{ "after the end", 2u << 20, 1, -EFAULT },
		{ "before the start", (uint64_t)-4096, 4096, -EFAULT },
		{ "zero length anywhere", 1ull << 40, 0, 0 },
	};

	assert_int_equal(E->vram_alloc(dev, 2u << 20, &v, why, sizeof(why)), 0);
	assert_int_equal(E->stream_create(dev, &s, why, sizeof(why)), 0);
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		uint64_t dst = v.dptr + rows[i].off;
		int rc;

		why[0] = '\0';
		rc = E->copy_h2d(dev, s, dst, buf, rows[i].n, why, sizeof(why));
		if (rc != rows[i].rc || (rc && !strstr(why, "not inside one live allocation")))
			fail_msg("h2d %s: %d \"%s\", want %d", rows[i].what, rc, why, rows[i].rc);
		rc = E->copy_d2h(dev, buf, dst, rows[i].n, why, sizeof(why));
		if (rc != rows[i].rc)
			fail_msg("d2h %s: %d \"%s\", want %d", rows[i].what, rc, why, rows[i].rc);
	}

	/* A queued copy into memory freed before it ran fails the stream, stickily. */
	{
		struct gpu_event *ev, *ev2;

		assert_int_equal(E->vram_alloc(dev, 2u << 20, &w, why, sizeof(why)), 0);
		assert_int_equal(gpu_emu_debug(dev, 50000, false), 0);
		assert_int_equal(E->copy_h2d(dev, s, w.dptr, buf, sizeof(buf), why, sizeof(why)),
				 0);
		assert_int_equal(E->event_record(dev, s, &ev, why, sizeof(why)), 0);
		E->vram_free(dev, &w);
		why[0] = '\0';
		assert_int_equal(E->event_wait(dev, ev, why, sizeof(why)), -EFAULT);
		assert_non_null(strstr(why, "freed after the copy was queued"));
		assert_int_equal(gpu_emu_debug(dev, 0, false), 0);
		assert_int_equal(E->copy_h2d(dev, s, v.dptr, buf, 16, why, sizeof(why)), 0);
		assert_int_equal(E->event_record(dev, s, &ev2, why, sizeof(why)), 0);
		assert_int_equal(E->event_wait(dev, ev2, why, sizeof(why)), -EFAULT);
		/* Destroyed in the other order from creation: either is allowed. */
		E->event_destroy(dev, ev);
		E->stream_destroy(dev, s);
		E->event_destroy(dev, ev2);
	}
	assert_int_equal(gpu_emu_debug(NULL, 0, false), -EINVAL);
	E->vram_free(dev, &v);
	E->close(dev);
}

/*
 * Helpers this program runs as another process: started with fork+exec, never with a bare
 * fork after the emulated driver was initialised (which the driver refuses, see
 * test_rule_fork). argv: --child KIND ARGS...; the exit status is the result.
 */
static pid_t spawn_child(const char *const *args, int keep_fd)
{
	pid_t pid = fork();

	if (pid == 0) {
		char *argv[8] = { "test_gpu_dev", "--child" };
		int k = 2;

		/* Between fork and exec: plain syscalls only, no device call. */
		if (keep_fd >= 0)
			fcntl(keep_fd, F_SETFD, 0);
		for (; *args && k < 7; args++)
			argv[k++] = (char *)*args;
		argv[k] = NULL;
		execv("/proc/self/exe", argv);
		_exit(127);
	}
	return pid;
}

static int wait_child(pid_t pid)
{
	int status;

	if (pid < 0 || waitpid(pid, &status, 0) != pid)
		return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* --child import FD SIZE SEED: imports, checks the pattern, writes 0x5a at byte 0. */
static int child_import(int fd, uint64_t size, unsigned int seed)
{
	struct gpu_dev *cd = NULL;
	struct gpu_vram iv, big;
	size_t n = 4u << 20;
	unsigned char *src = malloc(n), *back = malloc(n);
	char why[256] = "";
	void *saved;
	int bad = 0;

	if (!src || !back)
		return 9;
	fill(src, n, seed);
	if (E->open(0, &cd, why, sizeof(why)) || E->ctx_enter(cd, &saved, why, sizeof(why)) ||
	    E->vram_import(cd, fd, size, &iv, why, sizeof(why))) {
		fprintf(stderr, "child import: %s\n", why);
		return 2;
	}
	if (iv.fd != -1 || iv.size != size)
		return 3;
	if (E->copy_d2h(cd, back, iv.dptr, n, why, sizeof(why)) || memcmp(back, src, n))
		bad = 4;
	/* Bigger than the allocation: refused. */
	if (E->vram_import(cd, fd, size + (2u << 20), &big, why, sizeof(why)) != -EINVAL)
		bad = 5;
	((unsigned char *)(uintptr_t)iv.dptr)[0] = 0x5a;
	E->vram_free(cd, &iv);
	E->ctx_leave(cd, saved);
	E->close(cd);
	free(src);
	free(back);
	return bad;
}

/* --child open ORDINAL: 0 when open() works, 10 when it fails with -EBUSY, else 11. */
static int child_open(int ordinal)
{
	struct gpu_dev *d = NULL;
	char why[256] = "";
	int rc = E->open(ordinal, &d, why, sizeof(why));

	if (!rc) {
		E->close(d);
		return 0;
	}
	fprintf(stderr, "child open: %d %s\n", rc, why);
	return rc == -EBUSY && strstr(why, "CUDA_ERROR_DEVICE_UNAVAILABLE") ? 10 : 11;
}

static int child_main(int argc, char **argv)
{
	if (argc >= 6 && !strcmp(argv[2], "import"))
		return child_import(atoi(argv[3]), strtoull(argv[4], NULL, 10),
				    (unsigned int)atoi(argv[5]));
	if (argc >= 4 && !strcmp(argv[2], "open"))
		return child_open(atoi(argv[3]));
	return 99;
}

static void test_export_import_exec(void **state)
{
	struct gpu_dev *dev = open_emu("1:64M", 0);
	struct gpu_stream *s;
	struct gpu_event *ev;
	struct gpu_vram v;
	size_t n = 4u << 20;
	unsigned char *src = malloc(n), *back = malloc(n);
	char why[256] = "", fd_s[16], size_s[32];
	int rc;

	assert_non_null(src);
	assert_non_null(back);
	fill(src, n, 9);
	assert_int_equal(E->vram_alloc(dev, n, &v, why, sizeof(why)), 0);
	assert_int_equal(E->stream_create(dev, &s, why, sizeof(why)), 0);
	assert_int_equal(E->copy_h2d(dev, s, v.dptr, src, n, why, sizeof(why)), 0);
	assert_int_equal(E->event_record(dev, s, &ev, why, sizeof(why)), 0);
	assert_int_equal(E->event_wait(dev, ev, why, sizeof(why)), 0);
	E->event_destroy(dev, ev);

	/* Another process (fork+exec, as a client is): imports the fd, reads and writes. */
	snprintf(fd_s, sizeof(fd_s), "%d", v.fd);
	snprintf(size_s, sizeof(size_s), "%" PRIu64, v.size);
	rc = wait_child(spawn_child((const char *const[]){ "import", fd_s, size_s, "9", NULL },
				    v.fd));
	fcntl(v.fd, F_SETFD, FD_CLOEXEC);
	if (rc)
		fail_msg("import child failed: %d", rc);
	assert_int_equal(E->copy_d2h(dev, back, v.dptr, 1, why, sizeof(why)), 0);
	assert_int_equal(back[0], 0x5a);	/* the child wrote the shared memory */

	/* An import in this process does not count against the budget. */
	{
		struct gpu_vram iv;
		uint64_t free_b, total;

		assert_int_equal(E->vram_import(dev, v.fd, v.size, &iv, why, sizeof(why)), 0);
		assert_int_equal(E->mem_info(dev, &free_b, &total, why, sizeof(why)), 0);
		assert_int_equal(free_b, total - v.size);
		fill(src, n, 9);
		assert_int_equal(E->copy_d2h(dev, back, iv.dptr + 1, n - 1, why, sizeof(why)), 0);
		assert_memory_equal(back, src + 1, n - 1);
		E->vram_free(dev, &iv);
		assert_int_equal(E->vram_import(dev, -1, v.size, &iv, why, sizeof(why)), -EBADF);
	}
	E->stream_destroy(dev, s);
	E->vram_free(dev, &v);
	E->close(dev);
	free(src);
	free(back);
}

/* ---- the driver's rules -------------------------------------------------------------- */

/* A child forked after init: every entry point refuses with -EIO, as CUDA does. */
static void test_rule_fork(void **state)
{
	struct gpu_dev *dev = open_emu("1:64M", 0);
	struct gpu_vram v;
	char why[256] = "";
	pid_t pid;
	int rc;

	assert_int_equal(E->vram_alloc(dev, 2u << 20, &v, why, sizeof(why)), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct gpu_dev *cd = NULL;
		struct gpu_vram iv;
		void *saved;
		int bad = 0;

		if (E->count(why, sizeof(why)) != -EIO || !strstr(why, "CUDA_ERROR_NOT_INITIALIZED"))
			bad |= 1;
		if (E->open(0, &cd, why, sizeof(why)) != -EIO)
			bad |= 2;
		/* The parent's handle, inherited: no use either. */
		if (E->ctx_enter(dev, &saved, why, sizeof(why)) != -EIO)
			bad |= 4;
		if (E->vram_import(dev, v.fd, v.size, &iv, why, sizeof(why)) != -EIO)
			bad |= 8;
		_exit(bad);
	}
	rc = wait_child(pid);
	if (rc)
		fail_msg("a child forked after init was not refused everywhere: mask 0x%x", rc);
	E->vram_free(dev, &v);
	E->close(dev);
}

/* A second registration of a registered range: -EEXIST, and the helper takes it as done. */
static void test_rule_double_register(void **state)
{
	struct gpu_dev *d0 = open_emu("2:16M", 0), *d1 = NULL;
	struct gpu_emu_process_stats before, mid, after;
	size_t n = 1u << 20;
	char *buf = aligned_alloc(4096, 2 * n), why[256] = "";
	void *saved;
	bool mine;

	assert_non_null(buf);
	gpu_emu_process_stats(&before);
	assert_int_equal(E->host_register(d0, buf, n, why, sizeof(why)), 0);
	gpu_emu_process_stats(&mid);
	assert_int_equal(mid.locked_bytes - before.locked_bytes, n);
	/* The same range from another device's context: the driver refuses with 712. */
	assert_int_equal(E->open(1, &d1, why, sizeof(why)), 0);
	assert_int_equal(E->ctx_enter(d1, &saved, why, sizeof(why)), 0);
	assert_int_equal(E->host_register(d1, buf, n, why, sizeof(why)), -EEXIST);
	assert_non_null(strstr(why, "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED"));
	/* An overlap counts as well. */
	assert_int_equal(E->host_register(d1, buf + 4096, n, why, sizeof(why)), -EEXIST);
	/* PORTABLE: registered once is registered for every device. */
	assert_int_equal(gpu_host_register_once(E, d1, buf, n, &mine, why, sizeof(why)), 0);
	assert_false(mine);
	assert_int_equal(gpu_host_register_once(E, d1, buf + n, n, &mine, why, sizeof(why)), 0);
	assert_true(mine);
	E->host_unregister(d1, buf + n);
	E->ctx_leave(d1, saved);
	E->host_unregister(d0, buf);
	gpu_emu_process_stats(&after);
	assert_int_equal(after.locked_bytes, before.locked_bytes);
	E->close(d1);
	E->close(d0);
	free(buf);
}

/* The visible-devices list: ordinals are this process's, bus ids are everyone's. */
static void test_rule_visible(void **state)
{
	static const struct {
		const char *visible;	/* NULL: unset */
		int count;		/* or -errno */
		const char *id0;	/* id of ordinal 0 */
	} rows[] = {
		{ NULL, 3, "emulated-0" },
		{ "2", 1, "emulated-2" },
		{ "2,0", 2, "emulated-2" },
		{ "1,x,0", 1, "emulated-1" },	/* the list ends at an invalid entry */
		{ "1,7,0", 1, "emulated-1" },	/* ... or at a device that does not exist */
		{ "1,1", 1, "emulated-1" },	/* ... or at a repeat */
		{ "", -ENODEV, NULL },
		{ "9", -ENODEV, NULL },
	};
	char why[256] = "";

	setenv("WEIGHTD_GPU_EMULATE", "3:16M", 1);
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		int n, ord = -1;

		if (rows[i].visible)
			setenv("WEIGHTD_GPU_EMULATE_VISIBLE", rows[i].visible, 1);
		else
			unsetenv("WEIGHTD_GPU_EMULATE_VISIBLE");
		n = E->count(why, sizeof(why));
		if (n != rows[i].count)
			fail_msg("row %zu (\"%s\"): count %d (%s), want %d", i,
				 rows[i].visible ? rows[i].visible : "unset", n, why, rows[i].count);
		if (n > 0) {
			struct gpu_dev *d = NULL;
			struct gpu_device info;

			assert_int_equal(E->open(0, &d, why, sizeof(why)), 0);
			assert_int_equal(E->info(d, &info, why, sizeof(why)), 0);
			assert_string_equal(info.id, rows[i].id0);
			assert_int_equal(E->find(rows[i].id0, &ord, why, sizeof(why)), 0);
			assert_int_equal(ord, 0);
			E->close(d);
			if (E->open(n, &d, why, sizeof(why)) != -ENODEV)
				fail_msg("row %zu: ordinal %d opened past the visible list", i, n);
		}
	}
	/* Device 0 hidden: its id does not resolve, and its memory is not importable on 1. */
	unsetenv("WEIGHTD_GPU_EMULATE_VISIBLE");
	{
		struct gpu_dev *d0 = open_emu("3:16M", 0), *d1 = NULL;
		struct gpu_vram v, iv;
		void *saved;
		int ord = -1;

		assert_int_equal(E->vram_alloc(d0, 2u << 20, &v, why, sizeof(why)), 0);
		setenv("WEIGHTD_GPU_EMULATE_VISIBLE", "1", 1);
		assert_int_equal(E->find("emulated-0", &ord, why, sizeof(why)), -ENODEV);
		assert_non_null(strstr(why, "does not see"));
		assert_int_equal(E->find("emulated-1", &ord, why, sizeof(why)), 0);
		assert_int_equal(ord, 0);
		assert_int_equal(E->open(1, &d1, why, sizeof(why)), -ENODEV);
		assert_int_equal(E->open(0, &d1, why, sizeof(why)), 0);	/* machine device 1 */
		assert_int_equal(E->ctx_enter(d1, &saved, why, sizeof(why)), 0);
		assert_int_equal(E->vram_import(d1, v.fd, v.size, &iv, why, sizeof(why)), -EXDEV);
		E->ctx_leave(d1, saved);
		E->close(d1);
		unsetenv("WEIGHTD_GPU_EMULATE_VISIBLE");
		E->vram_free(d0, &v);
		E->close(d0);
	}
	unsetenv("WEIGHTD_GPU_EMULATE");
}

static void *no_ctx_thread(void *arg)
{
	struct gpu_dev *dev = arg;
	struct gpu_vram v;
	char why[256] = "";
	intptr_t rc = E->vram_alloc(dev, 2u << 20, &v, why, sizeof(why));

	if (!rc)
		E->vram_free(dev, &v);
	return (void *)rc;
}

/* Per-thread current context: [ctx] operations need the device's; enter/leave nest. */
static void test_rule_context(void **state)
{
	struct gpu_dev *d0, *d1 = NULL;
	struct gpu_emu_process_stats before, after;
	struct gpu_vram v;
	struct gpu_stream *s = NULL;
	char why[256] = "";
	void *outer, *inner, *ret;
	pthread_t th;

	setenv("WEIGHTD_GPU_EMULATE", "2:16M", 1);
	assert_int_equal(E->open(0, &d0, why, sizeof(why)), 0);
	assert_int_equal(E->open(1, &d1, why, sizeof(why)), 0);
	/* open() leaves the thread's current context alone. */
	assert_int_equal(E->ctx_enter(d0, &outer, why, sizeof(why)), 0);
	E->ctx_leave(d0, outer);
	assert_int_equal(gpu_emu_current(), outer ? 0 : -1);
	/* Start from no context at all, as a fresh thread is. */
	assert_int_equal(E->ctx_enter(d0, &outer, why, sizeof(why)), 0);
	E->ctx_leave(d0, NULL);
	assert_int_equal(gpu_emu_current(), -1);
	assert_int_equal(E->vram_alloc(d0, 2u << 20, &v, why, sizeof(why)), -EINVAL);
	assert_non_null(strstr(why, "no current context"));
	assert_int_equal(E->ctx_enter(d1, &outer, why, sizeof(why)), 0);
	assert_null(outer);
	assert_int_equal(E->vram_alloc(d0, 2u << 20, &v, why, sizeof(why)), -EINVAL);
	assert_non_null(strstr(why, "another device's context"));
	/* Nested: d0 inside d1, restored on the way out. */
	assert_int_equal(E->ctx_enter(d0, &inner, why, sizeof(why)), 0);
	assert_int_equal(gpu_emu_current(), 0);
	assert_int_equal(E->vram_alloc(d0, 2u << 20, &v, why, sizeof(why)), 0);
	assert_int_equal(E->stream_create(d0, &s, why, sizeof(why)), 0);
	E->ctx_leave(d0, inner);
	assert_int_equal(gpu_emu_current(), 1);
	/* A stream of d0 used under d1's context: refused. */
	assert_int_equal(E->copy_h2d(d1, s, v.dptr, why, 16, why, sizeof(why)), -EINVAL);
	/* Another thread has no context. */
	assert_int_equal(pthread_create(&th, NULL, no_ctx_thread, d0), 0);
	assert_int_equal(pthread_join(th, &ret), 0);
	assert_int_equal((intptr_t)ret, -EINVAL);
	/* A void operation without the context: refused (nothing freed) and counted. */
	gpu_emu_process_stats(&before);
	E->vram_free(d0, &v);
	gpu_emu_process_stats(&after);
	assert_int_equal(after.refused, before.refused + 1);
	assert_int_equal(E->ctx_enter(d0, &inner, why, sizeof(why)), 0);
	assert_int_equal(E->copy_h2d(d0, s, v.dptr, why, 16, why, sizeof(why)), 0);
	E->stream_destroy(d0, s);
	E->vram_free(d0, &v);
	E->ctx_leave(d0, inner);
	E->ctx_leave(d1, outer);
	assert_int_equal(gpu_emu_current(), -1);
	E->close(d1);
	E->close(d0);
	unsetenv("WEIGHTD_GPU_EMULATE");
}

/* EXCLUSIVE_PROCESS: a second process cannot retain the device while this one holds it. */
static void test_rule_exclusive(void **state)
{
	struct gpu_dev *d = NULL;
	struct gpu_caps caps;
	char why[256] = "", tok[64];
	int rc;

	snprintf(tok, sizeof(tok), "test-%d", (int)getpid());
	setenv("WEIGHTD_GPU_EMULATE", "1:16M", 1);
	setenv("WEIGHTD_GPU_EMULATE_EXCLUSIVE", tok, 1);
	assert_int_equal(E->open(0, &d, why, sizeof(why)), 0);
	assert_int_equal(E->caps(d, &caps, why, sizeof(why)), 0);
	assert_int_equal(caps.compute_mode, GPU_COMPUTE_EXCLUSIVE_PROCESS);
	rc = wait_child(spawn_child((const char *const[]){ "open", "0", NULL }, -1));
	if (rc != 10)
		fail_msg("a second process's open while this one holds the device: child %d, "
			 "want 10 (-EBUSY, CUDA_ERROR_DEVICE_UNAVAILABLE)", rc);
	E->close(d);
	rc = wait_child(spawn_child((const char *const[]){ "open", "0", NULL }, -1));
	if (rc != 0)
		fail_msg("open once this process let the device go: child %d", rc);
	unsetenv("WEIGHTD_GPU_EMULATE_EXCLUSIVE");
	unsetenv("WEIGHTD_GPU_EMULATE");
}

/* Capabilities taken away: caps() says so and allocations fail as the driver's would. */
static void test_rule_caps(void **state)
{
	static const struct {
		const char *env;
		bool vmm, fd;
	} rows[] = {
		{ NULL, true, true },
		{ "novmm", false, true },
		{ "nofd", true, false },
		{ "novmm,nofd", false, false },
	};

	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		struct gpu_dev *d;
		struct gpu_caps c;
		struct gpu_vram v;
		char why[256] = "";
		int rc;

		if (rows[i].env)
			setenv("WEIGHTD_GPU_EMULATE_CAPS", rows[i].env, 1);
		else
			unsetenv("WEIGHTD_GPU_EMULATE_CAPS");
		d = open_emu("1:16M", 0);
		assert_int_equal(E->caps(d, &c, why, sizeof(why)), 0);
		assert_int_equal(c.vmm, rows[i].vmm);
		assert_int_equal(c.posix_fd, rows[i].fd);
		assert_int_equal(c.compute_mode, GPU_COMPUTE_DEFAULT);
		rc = E->vram_alloc(d, 2u << 20, &v, why, sizeof(why));
		if (rc != (rows[i].vmm && rows[i].fd ? 0 : -EOPNOTSUPP))
			fail_msg("row %zu: vram_alloc %d (%s)", i, rc, why);
		if (!rc)
			E->vram_free(d, &v);
		E->close(d);
	}
	unsetenv("WEIGHTD_GPU_EMULATE_CAPS");
	unsetenv("WEIGHTD_GPU_EMULATE");
}

/* Async copies from pageable memory are counted; from page-locked memory they are not. */
static void test_pageable_copies(void **state)
{
	struct gpu_dev *d = open_emu("1:16M", 0);
	struct gpu_emu_stats st;
	struct gpu_stream *s;
	struct gpu_event *ev;
	struct gpu_vram v;
	size_t n = 64u << 10;
	/* @reg is twice the registered size, so that a copy can straddle its end. */
	char *heap = aligned_alloc(4096, n), *reg = aligned_alloc(4096, 2 * n), why[256] = "";
	void *pinned = NULL;

	assert_non_null(heap);
	assert_non_null(reg);
	memset(heap, 1, n);
	memset(reg, 2, 2 * n);
	assert_int_equal(E->vram_alloc(d, 2u << 20, &v, why, sizeof(why)), 0);
	assert_int_equal(E->stream_create(d, &s, why, sizeof(why)), 0);
	assert_int_equal(E->host_alloc(d, n, &pinned, why, sizeof(why)), 0);
	assert_int_equal(E->host_register(d, reg, n, why, sizeof(why)), 0);
	assert_int_equal(E->copy_h2d(d, s, v.dptr, heap, n, why, sizeof(why)), 0);
	assert_int_equal(E->copy_h2d(d, s, v.dptr, pinned, n, why, sizeof(why)), 0);
	assert_int_equal(E->copy_h2d(d, s, v.dptr, reg + 4096, n - 4096, why, sizeof(why)), 0);
	/* Straddling the end of the registered range: not inside page-locked memory. */
	assert_int_equal(E->copy_h2d(d, s, v.dptr, reg + 4096, n, why, sizeof(why)), 0);
	assert_int_equal(E->event_record(d, s, &ev, why, sizeof(why)), 0);
	assert_int_equal(E->event_wait(d, ev, why, sizeof(why)), 0);
	E->event_destroy(d, ev);
	assert_int_equal(gpu_emu_stats(d, &st), 0);
	assert_int_equal(st.pageable_copies, 2);
	assert_int_equal(st.pageable_bytes, 2 * n);
	E->host_unregister(d, reg);
	E->host_free(d, pinned);
	E->stream_destroy(d, s);
	E->vram_free(d, &v);
	E->close(d);
	free(heap);
	free(reg);
	unsetenv("WEIGHTD_GPU_EMULATE");
}

/*
 * F32 values whose conversion has an edge: ties to even, overflow to infinity, F16
 * subnormals and underflow to zero, infinities, NaNs with payloads and signs.
 */
static const uint32_t convert_inputs[] = {
	0x00000000, 0x80000000, 0x3f800000, 0xbf800000, 0x3f801000, 0x3f803000, 0x3f800fff,
	0x477fe000, 0x477fefff, 0x477ff000, 0x7f7fffff, 0xff7fffff, 0x7f800000, 0xff800000,
	0x7fc00000, 0xffc00001, 0x7f800001, 0x7fbfffff, 0x38800000, 0x387fffff, 0x33800000,
	0x33000000, 0x33000001, 0x00000001, 0x3f808000, 0x3f818000, 0x3f817fff, 0x40490fdb,
};

static void test_convert(void **state)
{
	static const struct {
		unsigned int to;
		uint64_t src_off, dst_off, n;
		int want;
	} rows[] = {
		{ GPU_DTYPE_F16, 0, 1 << 20, ARRAY_SIZE(convert_inputs), 0 },
		{ GPU_DTYPE_BF16, 0, (1 << 20) + 2, ARRAY_SIZE(convert_inputs), 0 },
		{ GPU_DTYPE_F16, 0, 1 << 20, 0, 0 },
		{ 7, 0, 1 << 20, 4, -EINVAL },				/* not F16/BF16 */
		{ GPU_DTYPE_F16, 2, 1 << 20, 4, -EINVAL },		/* source misaligned */
		{ GPU_DTYPE_F16, 0, (1 << 20) + 1, 4, -EINVAL },	/* target misaligned */
		{ GPU_DTYPE_F16, 0, 8, 4, -EINVAL },			/* overlapping */
		{ GPU_DTYPE_F16, 0, (2 << 20) - 4, 4, -EFAULT },	/* past the end */
	};
	struct gpu_dev *dev = open_emu("1:64M", 0);
	struct gpu_stream *s = NULL;
	struct gpu_vram v;
	char why[256] = "";

	(void)state;
	assert_int_equal(E->vram_alloc(dev, 2 << 20, &v, why, sizeof(why)), 0);
	assert_int_equal(E->stream_create(dev, &s, why, sizeof(why)), 0);
	assert_int_equal(E->copy_h2d(dev, s, v.dptr, convert_inputs, sizeof(convert_inputs), why,
				     sizeof(why)), 0);
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		uint16_t got[ARRAY_SIZE(convert_inputs)], want[ARRAY_SIZE(convert_inputs)];
		struct gpu_event *ev = NULL;
		int rc;

		memset(got, 0xee, sizeof(got));
		rc = E->convert_f32(dev, s, v.dptr + rows[i].dst_off, v.dptr + rows[i].src_off,
				    rows[i].n, rows[i].to, why, sizeof(why));
		if (rc != rows[i].want)
			fail_msg("row %zu (to %u, src +%" PRIu64 ", dst +%" PRIu64 ", n %" PRIu64
				 "): %d, expected %d (%s)", i, rows[i].to, rows[i].src_off,
				 rows[i].dst_off, rows[i].n, rc, rows[i].want, why);
		if (rc || !rows[i].n)
			continue;
		assert_int_equal(E->event_record(dev, s, &ev, why, sizeof(why)), 0);
		assert_int_equal(E->event_wait(dev, ev, why, sizeof(why)), 0);
		E->event_destroy(dev, ev);
		assert_int_equal(E->copy_d2h(dev, got, v.dptr + rows[i].dst_off, 2 * rows[i].n, why,
					     sizeof(why)), 0);
		assert_int_equal(convert_run(ST_F32, (enum st_dtype)rows[i].to, want, convert_inputs,
					     rows[i].n), 0);
		for (size_t k = 0; k < rows[i].n; k++)
			if (got[k] != want[k])
				fail_msg("row %zu: element %zu (F32 %08x): device %04x, host %04x",
					 i, k, convert_inputs[k], got[k], want[k]);
	}
	E->stream_destroy(dev, s);
	E->vram_free(dev, &v);
	E->close(dev);
	unsetenv("WEIGHTD_GPU_EMULATE");
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_env_parse),
		cmocka_unit_test(test_pick),
		cmocka_unit_test(test_pci_env),
		cmocka_unit_test(test_alloc_budget),
		cmocka_unit_test(test_copy_order_events),
		cmocka_unit_test(test_bounds),
		cmocka_unit_test(test_export_import_exec),
		cmocka_unit_test(test_convert),
		cmocka_unit_test(test_rule_fork),
		cmocka_unit_test(test_rule_double_register),
		cmocka_unit_test(test_rule_visible),
		cmocka_unit_test(test_rule_context),
		cmocka_unit_test(test_rule_exclusive),
		cmocka_unit_test(test_rule_caps),
		cmocka_unit_test(test_pageable_copies),
	};

	if (argc > 2 && !strcmp(argv[1], "--child"))
		return child_main(argc, argv);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
