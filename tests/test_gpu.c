/*
 * GPU driver access: CUresult conversion (needs no driver), a missing driver reported as
 * "no CUDA driver", and, where a driver and a GPU exist, device enumeration and the CUDA
 * device tier (gpu/cuda_dev.c): VRAM round trip through a stream and events, copies from
 * registered host memory, the staging ring from a file, and a VMM allocation exported as
 * an fd and imported by another process, and the F32 -> F16/BF16 conversion kernels (PTX,
 * bit-identical to core/format/convert.c over a sweep of bit patterns). Exits 77 (SKIP, with the
 * reason) when the machine
 * has no CUDA driver, after the driver-less cases ran.
 *
 * The importing process is forked at the start of main(), before this process touches
 * CUDA: a child forked after cuInit cannot use the driver. It waits on a socket for the fd.
 */
#include <dlfcn.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "core/format/convert.h"
#include "gpu/cuda.h"
#include "gpu/device.h"
#include "gpu/staging.h"

static char skip_reason[256];

static void test_cu_err_table(void **state)
{
	static const struct {
		int res;
		int err;
		const char *name;
	} rows[] = {
		{ 0, 0, NULL },
		{ 2, -ENOMEM, "CUDA_ERROR_OUT_OF_MEMORY" },
		{ 100, -ENODEV, "CUDA_ERROR_NO_DEVICE" },
		{ 801, -EOPNOTSUPP, "CUDA_ERROR_NOT_SUPPORTED" },
		{ 12345, -EIO, "CUresult 12345" },
	};

	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		char msg[256] = "";
		int rc = gpu_cu_err(NULL, (CUresult)rows[i].res, "cuMemAlloc", msg, sizeof(msg));

		if (rc != rows[i].err || (rows[i].name && !strstr(msg, rows[i].name)) ||
		    (rows[i].name && !strstr(msg, "cuMemAlloc")))
			fail_msg("row %zu: CUresult %d gave %d \"%s\", want %d naming %s", i,
				 rows[i].res, rc, msg, rows[i].err, rows[i].name);
	}
}

static void test_missing_driver(void **state)
{
	struct gpu_driver drv;
	char why[256] = "";
	int rc;

	setenv("WEIGHTD_LIBCUDA", "libcuda-does-not-exist.so.1", 1);
	rc = gpu_driver_open(&drv, why, sizeof(why));
	unsetenv("WEIGHTD_LIBCUDA");
#ifdef CONFIG_HAVE_CUDA_H
	if (rc != -ENODEV || !strstr(why, "no CUDA driver"))
		fail_msg("missing library gave %d \"%s\", want -ENODEV and \"no CUDA driver\"",
			 rc, why);
#else
	assert_int_equal(rc, -ENOSYS);
#endif
	assert_null(drv.handle);
}

static void test_enumerate(void **state)
{
	struct gpu_driver drv;
	struct gpu_device devs[GPU_MAX_DEVICES];
	char why[256] = "";
	int rc = gpu_driver_open(&drv, why, sizeof(why));
	int n;

	if (rc == -ENODEV || rc == -ENOSYS) {
		snprintf(skip_reason, sizeof(skip_reason), "%s", why);
		skip();
	}
	if (rc < 0)
		fail_msg("gpu_driver_open: %d %s", rc, why);
	n = gpu_enumerate(&drv, devs, GPU_MAX_DEVICES, why, sizeof(why));
	if (n <= 0)
		fail_msg("driver %d present but enumerate gave %d: %s", drv.version, n, why);
	for (int i = 0; i < n; i++) {
		printf("cuda:%d %s pci=%s %llu MiB\n", i, devs[i].name, devs[i].pci_bus_id,
		       (unsigned long long)(devs[i].total_bytes >> 20));
		assert_true(devs[i].name[0] && devs[i].pci_bus_id[0] && devs[i].total_bytes);
	}
	gpu_driver_close(&drv);
}

/* ---- the CUDA device tier, with an importer process ---------------------------------- */

struct import_req {
	uint64_t size;		/* 0: quit */
	uint64_t n_check;	/* bytes to read back and compare with pattern(seed) */
	uint32_t seed;
	uint32_t pad;
};

static int imp_sock = -1;
static pid_t imp_pid = -1;

static unsigned char pattern(uint32_t seed, size_t i)
{
	return (unsigned char)(i * 131 + seed + (i >> 11));
}

static int send_req(int sock, const struct import_req *r, int fd)
{
	char cbuf[CMSG_SPACE(sizeof(int))] = { 0 };
	struct iovec iov = { (void *)r, sizeof(*r) };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

	if (fd >= 0) {
		struct cmsghdr *cm;

		mh.msg_control = cbuf;
		mh.msg_controllen = sizeof(cbuf);
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	}
	return sendmsg(sock, &mh, 0) == (ssize_t)sizeof(*r) ? 0 : -1;
}

/* The child: imports each allocation it is sent, reads it back, answers 0 or an error. */
static void importer(int sock)
{
	for (;;) {
		char cbuf[CMSG_SPACE(sizeof(int))];
		struct import_req r;
		struct iovec iov = { &r, sizeof(r) };
		struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
				     .msg_controllen = sizeof(cbuf) };
		struct cmsghdr *cm;
		struct gpu_dev *dev = NULL;
		struct gpu_vram v;
		void *saved = NULL;
		unsigned char *back;
		char why[256] = "";
		int fd = -1, result = 0;

		if (recvmsg(sock, &mh, 0) != (ssize_t)sizeof(r) || !r.size)
			_exit(0);
		cm = CMSG_FIRSTHDR(&mh);
		if (cm && cm->cmsg_type == SCM_RIGHTS)
			memcpy(&fd, CMSG_DATA(cm), sizeof(int));
		back = malloc(r.n_check);
		if (fd < 0 || !back) {
			result = -EBADF;
		} else if ((result = gpu_cuda_ops.open(0, &dev, why, sizeof(why))) == 0 &&
			   (result = gpu_cuda_ops.ctx_enter(dev, &saved, why, sizeof(why))) == 0) {
			result = gpu_cuda_ops.vram_import(dev, fd, r.size, &v, why, sizeof(why));
			if (!result) {
				result = gpu_cuda_ops.copy_d2h(dev, back, v.dptr, r.n_check, why,
							       sizeof(why));
				for (size_t i = 0; !result && i < r.n_check; i++)
					if (back[i] != pattern(r.seed, i))
						result = -EILSEQ;
				gpu_cuda_ops.vram_free(dev, &v);
			}
			gpu_cuda_ops.ctx_leave(dev, saved);
		}
		if (dev)
			gpu_cuda_ops.close(dev);
		if (result)
			fprintf(stderr, "importer: %d %s\n", result, why);
		free(back);
		if (fd >= 0)
			close(fd);
		if (write(sock, &result, sizeof(result)) != sizeof(result))
			_exit(1);
	}
}

static void start_importer(void)
{
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
		return;
	imp_pid = fork();
	if (imp_pid == 0) {
		close(sv[0]);
		importer(sv[1]);
		_exit(0);
	}
	close(sv[1]);
	if (imp_pid < 0)
		close(sv[0]);
	else
		imp_sock = sv[0];
}

static void stop_importer(void)
{
	struct import_req quit = { 0 };

	if (imp_pid <= 0)
		return;
	send_req(imp_sock, &quit, -1);
	close(imp_sock);
	waitpid(imp_pid, NULL, 0);
	imp_pid = -1;
}

/* The CUDA implementation of gpu/device.h, or a skip with the reason. */
static struct gpu_dev *open_cuda(void)
{
	struct gpu_dev *dev = NULL;
	void *saved;
	char why[256] = "";
	int n = gpu_cuda_ops.count(why, sizeof(why));

	if (n == -ENODEV || n == -ENOSYS || n == 0) {
		snprintf(skip_reason, sizeof(skip_reason), "%s", n ? why : "no CUDA device");
		skip();
	}
	if (n < 0)
		fail_msg("gpu_cuda_ops.count: %d %s", n, why);
	if (gpu_cuda_ops.open(0, &dev, why, sizeof(why)))
		fail_msg("open cuda:0: %s", why);
	/* The device tier's operations run in the thread's current context. */
	if (gpu_cuda_ops.ctx_enter(dev, &saved, why, sizeof(why)))
		fail_msg("ctx_enter cuda:0: %s", why);
	return dev;
}

static void test_device_roundtrip(void **state)
{
	const struct gpu_ops *ops = &gpu_cuda_ops;
	struct gpu_dev *dev = open_cuda();
	struct gpu_device info;
	struct gpu_stream *s;
	struct gpu_event *ev;
	struct gpu_vram v;
	uint64_t free_b, total, free2;
	size_t n = (5u << 20) + 1;
	unsigned char *pinned, *back = malloc(n), *plain = malloc(n);
	char why[256] = "";
	int rc;

	assert_non_null(back);
	assert_non_null(plain);
	assert_int_equal(ops->info(dev, &info, why, sizeof(why)), 0);
	assert_int_equal(ops->mem_info(dev, &free_b, &total, why, sizeof(why)), 0);
	printf("cuda:0 %s pci=%s granularity %llu free %llu MiB of %llu\n", info.name,
	       info.pci_bus_id, (unsigned long long)ops->granularity(dev),
	       (unsigned long long)(free_b >> 20), (unsigned long long)(total >> 20));
	assert_true(ops->granularity(dev) > 0 && total >= free_b);

	rc = ops->vram_alloc(dev, n, &v, why, sizeof(why));
	if (rc)
		fail_msg("vram_alloc: %d %s", rc, why);
	assert_true(v.size >= n && v.size % ops->granularity(dev) == 0 && v.fd >= 0);
	assert_int_equal(ops->mem_info(dev, &free2, &total, why, sizeof(why)), 0);
	assert_true(free2 < free_b);

	assert_int_equal(ops->host_alloc(dev, n, (void **)&pinned, why, sizeof(why)), 0);
	for (size_t i = 0; i < n; i++)
		pinned[i] = pattern(7, i);
	assert_int_equal(ops->stream_create(dev, &s, why, sizeof(why)), 0);
	assert_int_equal(ops->copy_h2d(dev, s, v.dptr, pinned, n, why, sizeof(why)), 0);
	assert_int_equal(ops->event_record(dev, s, &ev, why, sizeof(why)), 0);
	rc = ops->event_query(dev, ev, why, sizeof(why));
	assert_true(rc == 0 || rc == -EAGAIN);
	assert_int_equal(ops->event_wait(dev, ev, why, sizeof(why)), 0);
	assert_int_equal(ops->event_query(dev, ev, why, sizeof(why)), 0);
	ops->event_destroy(dev, ev);
	assert_int_equal(ops->copy_d2h(dev, back, v.dptr, n, why, sizeof(why)), 0);
	assert_memory_equal(back, pinned, n);

	/* Registered (page-locked after the fact) host memory, at a misaligned offset. */
	for (size_t i = 0; i < n; i++)
		plain[i] = pattern(3, i);
	assert_int_equal(ops->host_register(dev, plain, n, why, sizeof(why)), 0);
	assert_int_equal(ops->copy_h2d(dev, s, v.dptr + 3, plain + 1, n - 4, why, sizeof(why)),
			 0);
	assert_int_equal(ops->event_record(dev, s, &ev, why, sizeof(why)), 0);
	assert_int_equal(ops->event_wait(dev, ev, why, sizeof(why)), 0);
	ops->event_destroy(dev, ev);
	assert_int_equal(ops->copy_d2h(dev, back, v.dptr + 3, n - 4, why, sizeof(why)), 0);
	assert_memory_equal(back, plain + 1, n - 4);
	ops->host_unregister(dev, plain);

	/* Export: another process imports the fd and reads the pattern back. */
	assert_int_equal(ops->copy_h2d(dev, s, v.dptr, pinned, n, why, sizeof(why)), 0);
	assert_int_equal(ops->event_record(dev, s, &ev, why, sizeof(why)), 0);
	assert_int_equal(ops->event_wait(dev, ev, why, sizeof(why)), 0);
	ops->event_destroy(dev, ev);
	if (imp_pid > 0) {
		struct import_req r = { .size = v.size, .n_check = n, .seed = 7 };
		int result = -1;

		assert_int_equal(send_req(imp_sock, &r, v.fd), 0);
		assert_int_equal(read(imp_sock, &result, sizeof(result)), sizeof(result));
		if (result)
			fail_msg("the importing process failed: %d", result);
	} else {
		fail_msg("no importer process (fork failed)");
	}

	ops->stream_destroy(dev, s);
	ops->host_free(dev, pinned);
	ops->vram_free(dev, &v);
	assert_int_equal(v.fd, -1);
	ops->close(dev);
	free(back);
	free(plain);
}

static void test_staging_cuda(void **state)
{
	const struct gpu_ops *ops = &gpu_cuda_ops;
	struct gpu_dev *dev = open_cuda();
	struct staging_options o = { .n_slots = 3, .slot_bytes = 1u << 20, .node = -1 };
	char path[] = "/tmp/wd-gpu-staging.XXXXXX", why[512] = "";
	size_t n = (9u << 20) + 4321;
	unsigned char *data = malloc(n), *back = malloc(n);
	struct staging_transfer t[3];
	struct staging_host_copy hc;
	struct staging *st;
	struct gpu_vram v;
	int fd = mkstemp(path);

	assert_true(fd >= 0);
	assert_non_null(data);
	assert_non_null(back);
	for (size_t i = 0; i < n; i++)
		data[i] = pattern(11, i);
	assert_int_equal(write(fd, data, n), (ssize_t)n);
	assert_int_equal(ops->vram_alloc(dev, 2 * n, &v, why, sizeof(why)), 0);
	assert_int_equal(staging_create(ops, dev, &o, &st, why, sizeof(why)), 0);
	t[0] = (struct staging_transfer){ fd, path, 5, n - 5, v.dptr + 5 };
	t[1] = (struct staging_transfer){ fd, path, 0, 5, v.dptr };
	t[2] = (struct staging_transfer){ fd, path, 100, 1000, v.dptr + n + 1 };
	if (staging_load(st, t, 3, NULL, why, sizeof(why)))
		fail_msg("staging_load: %s", why);
	assert_int_equal(ops->copy_d2h(dev, back, v.dptr, n, why, sizeof(why)), 0);
	assert_memory_equal(back, data, n);
	assert_int_equal(ops->copy_d2h(dev, back, v.dptr + n + 1, 1000, why, sizeof(why)), 0);
	assert_memory_equal(back, data + 100, 1000);

	/* Pageable host memory staged through the slots, then page-locked memory straight. */
	for (int locked = 0; locked < 2; locked++) {
		bool mine = false;

		for (size_t i = 0; i < n; i++)
			data[i] ^= 0x5a;
		if (locked) {
			assert_int_equal(ops->host_register(dev, data, n, why, sizeof(why)), 0);
			/* A second registration: 712, which means registered (PORTABLE). */
			assert_int_equal(ops->host_register(dev, data, n, why, sizeof(why)), -EEXIST);
			assert_int_equal(gpu_host_register_once(ops, dev, data, n, &mine, why,
								sizeof(why)), 0);
			assert_false(mine);
		}
		hc = (struct staging_host_copy){ data, n, v.dptr + n, locked };
		if (staging_copy_host(st, &hc, 1, NULL, why, sizeof(why)))
			fail_msg("staging_copy_host (%s): %s", locked ? "locked" : "staged", why);
		assert_int_equal(ops->copy_d2h(dev, back, v.dptr + n, n, why, sizeof(why)), 0);
		assert_memory_equal(back, data, n);
		if (locked)
			ops->host_unregister(dev, data);
	}

	staging_destroy(st);
	ops->vram_free(dev, &v);
	ops->close(dev);
	close(fd);
	unlink(path);
	free(data);
	free(back);
}

/*
 * The conversion kernels against core/format/convert.c: a sweep of F32 bit patterns (a stride
 * prime to 2^32 covers every exponent, sign and many payloads: NaNs, infinities, F16
 * subnormals, ties) converted on the GPU to F16 and BF16 and compared bit for bit.
 */
static void test_convert_cuda(void **state)
{
	static const unsigned int to[] = { GPU_DTYPE_F16, GPU_DTYPE_BF16 };
	const struct gpu_ops *ops = &gpu_cuda_ops;
	struct gpu_dev *dev = open_cuda();
	size_t n = 1u << 20;
	uint32_t *in = malloc(4 * n);
	uint16_t *got = malloc(2 * n), *want = malloc(2 * n);
	struct gpu_stream *s;
	struct gpu_vram v;
	char why[256] = "";

	(void)state;
	assert_true(in && got && want);
	for (size_t i = 0; i < n; i++)
		in[i] = (uint32_t)(i * 4099u + 0x7f7fe000u);
	if (ops->vram_alloc(dev, 8 * n, &v, why, sizeof(why)))
		fail_msg("vram_alloc: %s", why);
	assert_int_equal(ops->stream_create(dev, &s, why, sizeof(why)), 0);
	assert_int_equal(ops->copy_h2d(dev, s, v.dptr, in, 4 * n, why, sizeof(why)), 0);
	for (size_t k = 0; k < ARRAY_SIZE(to); k++) {
		struct gpu_event *ev = NULL;
		int rc = ops->convert_f32(dev, s, v.dptr + 4 * n, v.dptr, n, to[k], why,
					  sizeof(why));

		if (rc)
			fail_msg("convert_f32 to %u: %d %s", to[k], rc, why);
		assert_int_equal(ops->event_record(dev, s, &ev, why, sizeof(why)), 0);
		rc = ops->event_wait(dev, ev, why, sizeof(why));
		ops->event_destroy(dev, ev);
		if (rc)
			fail_msg("conversion kernel: %d %s", rc, why);
		assert_int_equal(ops->copy_d2h(dev, got, v.dptr + 4 * n, 2 * n, why, sizeof(why)),
				 0);
		assert_int_equal(convert_run(ST_F32, (enum st_dtype)to[k], want, in, n), 0);
		for (size_t i = 0; i < n; i++)
			if (got[i] != want[i])
				fail_msg("to %u: F32 %08x gives %04x on the GPU, %04x on the host",
					 to[k], in[i], got[i], want[i]);
	}
	assert_int_equal(ops->convert_f32(dev, s, v.dptr + 4 * n + 1, v.dptr, 4, GPU_DTYPE_F16,
					  why, sizeof(why)), -EINVAL);
	ops->stream_destroy(dev, s);
	ops->vram_free(dev, &v);
	ops->close(dev);
	free(in);
	free(got);
	free(want);
}

/*
 * After a cuInit that succeeded, closing the driver handle must not unload the library (the
 * driver's threads and state stay in the process): with tests/cuda_stub.c standing in for
 * libcuda, the library is still loaded after gpu_driver_close(). A failed load still
 * unloads (checked with a library whose cuInit never ran: there is none to check, so the
 * missing-driver case above covers that path).
 */
static void test_driver_stays_loaded(void **state)
{
	char exe[4096], stub[4200], why[256] = "";
	struct gpu_driver drv;
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	char *slash;
	void *h;
	int rc;

	assert_true(n > 0);
	exe[n] = '\0';
	slash = strrchr(exe, '/');
	assert_non_null(slash);
	*slash = '\0';
	snprintf(stub, sizeof(stub), "%s/libcuda-stub.so", exe);
#ifndef CONFIG_HAVE_CUDA_H
	skip();
#endif
	if (access(stub, R_OK))
		fail_msg("%s is missing (make all builds it)", stub);
	setenv("WEIGHTD_LIBCUDA", stub, 1);
	rc = gpu_driver_open(&drv, why, sizeof(why));
	unsetenv("WEIGHTD_LIBCUDA");
	if (rc || !drv.initialised)
		fail_msg("the stub driver did not open: %d %s", rc, why);
	gpu_driver_close(&drv);
	h = dlopen(stub, RTLD_NOW | RTLD_LOCAL | RTLD_NOLOAD);
	if (!h)
		fail_msg("gpu_driver_close() unloaded the driver after a successful cuInit");
	dlclose(h);	/* the NOLOAD reference only */
}

/* Every event the device tier waits on sleeps in the driver instead of spinning a core. */
static void test_event_flags(void **state)
{
#ifdef CONFIG_HAVE_CUDA_H
	assert_true(GPU_EVENT_FLAGS & CU_EVENT_BLOCKING_SYNC);
	assert_true(GPU_EVENT_FLAGS & CU_EVENT_DISABLE_TIMING);
#else
	skip();
#endif
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_cu_err_table),
		cmocka_unit_test(test_missing_driver),
		cmocka_unit_test(test_enumerate),
		cmocka_unit_test(test_device_roundtrip),
		cmocka_unit_test(test_staging_cuda),
		cmocka_unit_test(test_convert_cuda),
		cmocka_unit_test(test_event_flags),
		cmocka_unit_test(test_driver_stays_loaded),
	};
	int failed;

	/* Before anything here loads the driver: see the header comment. */
	start_importer();
	failed = cmocka_run_group_tests(tests, NULL, NULL);
	stop_importer();
	if (failed)
		return 1;
	if (skip_reason[0]) {
		printf("SKIP: GPU device cases: %s (driver-independent cases passed)\n",
		       skip_reason);
		return 77;
	}
	return 0;
}
