/*
 * Where a GPU's host-side work belongs: the NUMA node local to the GPU (for its pinned
 * staging ring, gpu/staging.h, and the host cache extents meant for it) and that node's
 * CPUs (for the thread that feeds it). The decision is core/policy/placement.h's rule, applied to
 * the PCI bus id that gpu_ops.info() reports; this module adds the CPUs and one log line.
 *
 * A device with no PCI bus id (an emulated one, unless $WEIGHTD_GPU_EMULATE_PCI gives it
 * one) or one the topology does not show is placed on the loader thread's node.
 */
#ifndef WD_GPU_TOPO_H
#define WD_GPU_TOPO_H

#include "core/policy/placement.h"
#include "gpu/cuda.h"

struct gpu_topo_entry {
	int ordinal;
	char pci_bus_id[32];
	int node;			/* OS index of the chosen NUMA node */
	enum placement_reason reason;
	int n_cpus;			/* CPUs of that node */
	char cpus[128];			/* as a list, "0-7,16-23" ("..." when cut short) */
};

/*
 * Places @dev (from gpu_ops.info()) for a loader on CPU @loader_cpu (< 0: the calling
 * thread's CPU, this system only). Returns 0 and fills @out; or placement_choose()'s error
 * (-ENOTSUP for @loader_cpu < 0 on a topology read from a file, -ENOENT for an unknown
 * CPU).
 */
int gpu_topo_place(const struct placement *p, const struct gpu_device *dev, int loader_cpu,
		   struct gpu_topo_entry *out);

/* "cuda:1 pci=0000:1b:00.0 node=0 (gpu-local) cpus=0-7" into @buf. */
void gpu_topo_format(const struct gpu_topo_entry *e, char *buf, size_t size);

#endif
