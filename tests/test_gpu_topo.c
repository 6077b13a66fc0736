/*
 * GPU placement (gpu/topo.h) against a two-socket server with eight GPUs, four per socket
 * (tests/data/two_socket_8gpu.xml, hwloc XML), and on this machine; plus an emulated device
 * given PCI bus ids through $WEIGHTD_GPU_EMULATE_PCI, so that its info() feeds the same rule.
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

#include "core/base/common.h"
#include "core/policy/placement.h"
#include "gpu/device.h"
#include "gpu/topo.h"

static struct placement *load_xml(void)
{
	const char *root = getenv("WD_ROOT");
	struct placement *p = NULL;
	char path[2048];
	int rc;

	snprintf(path, sizeof(path), "%s/tests/data/two_socket_8gpu.xml",
		 root && *root ? root : ".");
	rc = placement_open(path, NULL, &p);
	if (rc)
		fail_msg("placement_open(%s): %d", path, rc);
	return p;
}

static void test_eight_gpu_server(void **state)
{
	static const struct {
		const char *busid;
		int loader_cpu;
		int node;
		enum placement_reason reason;
		const char *cpus;
	} rows[] = {
		{ "0000:1b:00.0", 12, 0, PLACE_GPU_LOCAL, "0-7" },	/* loader on socket 1 */
		{ "0000:29:00.0", 0, 0, PLACE_GPU_LOCAL, "0-7" },
		{ "0000:3a:00.0", 9, 0, PLACE_GPU_LOCAL, "0-7" },
		{ "0000:5d:00.0", 0, 0, PLACE_GPU_LOCAL, "0-7" },
		{ "0000:9a:00.0", 3, 1, PLACE_GPU_LOCAL, "8-15" },	/* loader on socket 0 */
		{ "0000:ab:00.0", 8, 1, PLACE_GPU_LOCAL, "8-15" },
		{ "0000:ba:00.0", 0, 1, PLACE_GPU_LOCAL, "8-15" },
		{ "00000000:DB:00.0", 0, 1, PLACE_GPU_LOCAL, "8-15" },	/* CUDA's form, upper case */
		{ "0000:00:03.0", 15, 0, PLACE_GPU_SPANS, "0-7" },	/* machine-wide bridge */
		{ "0000:9b:00.0", 2, 0, PLACE_THREAD, "0-7" },	/* unknown: the loader's node */
		{ "0000:9b:00.0", 14, 1, PLACE_THREAD, "8-15" },
		{ "", 10, 1, PLACE_THREAD, "8-15" },		/* no bus id (emulated) */
		{ "not-a-bus-id", 1, 0, PLACE_THREAD, "0-7" },
	};
	struct placement *p = load_xml();

	assert_int_equal(placement_node_count(p), 2);
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		struct gpu_device dev = { .ordinal = (int)i };
		struct gpu_topo_entry e;
		char line[256];
		int rc;

		snprintf(dev.pci_bus_id, sizeof(dev.pci_bus_id), "%s", rows[i].busid);
		rc = gpu_topo_place(p, &dev, rows[i].loader_cpu, &e);
		gpu_topo_format(&e, line, sizeof(line));
		if (rc || e.node != rows[i].node || e.reason != rows[i].reason ||
		    strcmp(e.cpus, rows[i].cpus) || e.n_cpus != 8 || e.ordinal != (int)i)
			fail_msg("row %zu (%s, loader cpu %d): rc %d, %s; want node %d (%s) cpus %s",
				 i, rows[i].busid, rows[i].loader_cpu, rc, line, rows[i].node,
				 placement_reason_name(rows[i].reason), rows[i].cpus);
	}
	/* A file's topology has no "current CPU"; an unknown CPU is an error. */
	{
		struct gpu_device dev = { .ordinal = 0 };
		struct gpu_topo_entry e;

		assert_int_equal(gpu_topo_place(p, &dev, -1, &e), -ENOTSUP);
		assert_int_equal(gpu_topo_place(p, &dev, 64, &e), -ENOENT);
	}
	placement_close(p);
}

static void test_node_cpus(void **state)
{
	struct placement *p = load_xml();
	int cpus[4];

	/* The count is the node's, even when the array is shorter. */
	assert_int_equal(placement_node_cpus(p, 1, cpus, 4), 8);
	assert_int_equal(cpus[0], 8);
	assert_int_equal(cpus[3], 11);
	assert_int_equal(placement_node_cpus(p, 2, cpus, 4), -ENOENT);
	placement_close(p);
}

static void test_emulated_devices(void **state)
{
	static const char *want[] = { "0000:1b:00.0", "0000:9a:00.0", "" };
	static const int node[] = { 0, 1, 1 };
	struct placement *p = load_xml();

	setenv("WEIGHTD_GPU_EMULATE", "3:16M", 1);
	setenv("WEIGHTD_GPU_EMULATE_PCI", "0000:1b:00.0,0000:9a:00.0", 1);
	for (int i = 0; i < 3; i++) {
		struct gpu_dev *dev;
		struct gpu_device info;
		struct gpu_topo_entry e;
		char why[256];

		assert_int_equal(gpu_emu_ops.open(i, &dev, why, sizeof(why)), 0);
		assert_int_equal(gpu_emu_ops.info(dev, &info, why, sizeof(why)), 0);
		assert_string_equal(info.pci_bus_id, want[i]);
		/* The third has no bus id: the loader (CPU 12, socket 1) decides. */
		assert_int_equal(gpu_topo_place(p, &info, 12, &e), 0);
		if (e.node != node[i])
			fail_msg("emulated cuda:%d at \"%s\": node %d, want %d", i, want[i], e.node,
				 node[i]);
		gpu_emu_ops.close(dev);
	}
	unsetenv("WEIGHTD_GPU_EMULATE_PCI");
	unsetenv("WEIGHTD_GPU_EMULATE");
	placement_close(p);
}

static void test_this_machine(void **state)
{
	struct gpu_device dev = { .ordinal = 0, .pci_bus_id = "0000:ee:1f.7" };
	struct placement *p;
	struct gpu_topo_entry e;
	char line[256];
	/* Without I/O discovery: there is no GPU here to find, and hwloc's PCI plugin leaks. */
	int rc = placement_open_this_system(false, &p);

	if (rc)
		fail_msg("placement_open(this machine): %d", rc);
	/* No such GPU here: the calling thread's node, which has at least this CPU. */
	assert_int_equal(gpu_topo_place(p, &dev, -1, &e), 0);
	gpu_topo_format(&e, line, sizeof(line));
	printf("this machine: %s\n", line);
	assert_int_equal(e.reason, PLACE_THREAD);
	assert_true(e.node >= 0 && e.n_cpus >= 1 && e.cpus[0]);
	placement_close(p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_eight_gpu_server),
		cmocka_unit_test(test_node_cpus),
		cmocka_unit_test(test_emulated_devices),
		cmocka_unit_test(test_this_machine),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
