/*
 * GPU driver access: CUresult conversion (needs no driver), a missing driver reported as
 * "no CUDA driver", and, where a driver and a GPU exist, device enumeration. Exits 77
 * (SKIP, with the reason) when the machine has no CUDA driver, after the driver-less
 * cases ran.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "gpu/cuda.h"

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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_cu_err_table),
		cmocka_unit_test(test_missing_driver),
		cmocka_unit_test(test_enumerate),
	};
	int failed = cmocka_run_group_tests(tests, NULL, NULL);

	if (failed)
		return 1;
	if (skip_reason[0]) {
		printf("SKIP: GPU device cases: %s (driver-independent cases passed)\n",
		       skip_reason);
		return 77;
	}
	return 0;
}
