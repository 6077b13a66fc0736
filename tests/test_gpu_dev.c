/*
 * The device interface (gpu/device.h) through the emulated device, which runs everywhere:
 * $WEIGHTD_GPU_EMULATE parsing, gpu_ops_pick(), allocation and the budget, copies and their
 * bounds checks, stream order and events, a stream failing on memory freed under a queued
 * copy, the source-change instrument, fd export/import across a fork, and F32 -> F16/BF16
 * conversion on a stream (bit-identical to core/convert.c, arguments checked).
 */
#include <errno.h>
#include <inttypes.h>
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

#include "core/common.h"
#include "core/convert.h"
#include "gpu/device.h"

static const struct gpu_ops *E = &gpu_emu_ops;

static struct gpu_dev *open_emu(const char *env, int ordinal)
{
	struct gpu_dev *dev = NULL;
	char why[256] = "";
	int rc;

	setenv("WEIGHTD_GPU_EMULATE", env, 1);
	rc = E->open(ordinal, &dev, why, sizeof(why));
	if (rc)
		fail_msg("open emulated cuda:%d with \"%s\": %d %s", ordinal, env, rc, why);
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

static void test_export_import_fork(void **state)
{
	struct gpu_dev *dev = open_emu("1:64M", 0);
	struct gpu_stream *s;
	struct gpu_event *ev;
	struct gpu_vram v;
	size_t n = 4u << 20;
	unsigned char *src = malloc(n), *back = malloc(n);
	char why[256] = "";
	pid_t pid;
	int status;

	assert_non_null(src);
	assert_non_null(back);
	fill(src, n, 9);
	assert_int_equal(E->vram_alloc(dev, n, &v, why, sizeof(why)), 0);
	assert_int_equal(E->stream_create(dev, &s, why, sizeof(why)), 0);
	assert_int_equal(E->copy_h2d(dev, s, v.dptr, src, n, why, sizeof(why)), 0);
	assert_int_equal(E->event_record(dev, s, &ev, why, sizeof(why)), 0);
	assert_int_equal(E->event_wait(dev, ev, why, sizeof(why)), 0);
	E->event_destroy(dev, ev);

	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* The child: a fresh device handle imports the fd and reads and writes it. */
		struct gpu_dev *cd = NULL;
		struct gpu_vram iv, big;
		int bad = 0;

		if (E->open(0, &cd, why, sizeof(why)) ||
		    E->vram_import(cd, v.fd, v.size, &iv, why, sizeof(why)))
			_exit(2);
		if (iv.fd != -1 || iv.size != v.size)
			_exit(3);
		if (E->copy_d2h(cd, back, iv.dptr, n, why, sizeof(why)) || memcmp(back, src, n))
			bad = 4;
		/* Bigger than the allocation: refused. */
		if (E->vram_import(cd, v.fd, v.size + (2u << 20), &big, why, sizeof(why)) != -EINVAL)
			bad = 5;
		((unsigned char *)(uintptr_t)iv.dptr)[0] = 0x5a;
		E->vram_free(cd, &iv);
		E->close(cd);
		_exit(bad);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	if (!WIFEXITED(status) || WEXITSTATUS(status))
		fail_msg("import child failed: status 0x%x", status);
	assert_int_equal(E->copy_d2h(dev, back, v.dptr, 1, why, sizeof(why)), 0);
	assert_int_equal(back[0], 0x5a);	/* the child wrote the shared memory */

	/* An import in this process does not count against the budget. */
	{
		struct gpu_vram iv;
		uint64_t free_b, total;

		assert_int_equal(E->vram_import(dev, v.fd, v.size, &iv, why, sizeof(why)), 0);
		assert_int_equal(E->mem_info(dev, &free_b, &total, why, sizeof(why)), 0);
		assert_int_equal(free_b, total - v.size);
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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_env_parse),
		cmocka_unit_test(test_pick),
		cmocka_unit_test(test_pci_env),
		cmocka_unit_test(test_alloc_budget),
		cmocka_unit_test(test_copy_order_events),
		cmocka_unit_test(test_bounds),
		cmocka_unit_test(test_export_import_fork),
		cmocka_unit_test(test_convert),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
