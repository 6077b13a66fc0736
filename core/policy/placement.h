/*
 * NUMA placement: which memory node a component's host cache pages and its loader thread
 * belong on, from the hwloc topology.
 *
 * The rule (DESIGN.md, GPU tier): a component meant for a GPU is placed on the NUMA node
 * local to that GPU (the GPU's PCI device -> its first non-I/O ancestor -> that object's
 * nodeset), so that host-to-device copies cross no socket link. A component meant for no
 * GPU, or for a GPU the topology does not show, is placed on the node of the CPU the loader
 * thread runs on, because that thread's first touch would put the pages there anyway.
 * A device whose ancestor spans several nodes (attached to the whole machine) gets the
 * first of them, and the choice says so.
 *
 * A topology is this machine's (hwloc discovery with I/O devices) or one read from an XML
 * file or a synthetic description, so that the decision can be tested for machines we do
 * not have. Node numbers are OS indexes, as libnuma and mbind(2) take them.
 */
#ifndef WD_CORE_PLACEMENT_H
#define WD_CORE_PLACEMENT_H

#include <stdbool.h>

struct placement;

/* Why a node was chosen. */
enum placement_reason {
	PLACE_GPU_LOCAL = 0,	/* the GPU's ancestor has exactly this node */
	PLACE_GPU_SPANS,	/* the GPU's ancestor spans nodes: the first one */
	PLACE_THREAD,		/* no GPU given or found: the loader CPU's node */
};

struct placement_choice {
	int node;		/* OS index of the NUMA node */
	enum placement_reason reason;
};

/*
 * Loads a topology: @xml_path (an hwloc XML file) when not NULL, else @synthetic (an hwloc
 * synthetic description such as "pack:2 numa:1 core:2 pu:1") when not NULL, else this
 * machine's. I/O devices are kept so that GPUs can be found by PCI address.
 * Returns 0 and sets *@out; -ENOMEM; -EINVAL when the XML or description cannot be used;
 * or the negative errno hwloc set.
 */
int placement_open(const char *xml_path, const char *synthetic, struct placement **out);

/*
 * This machine's topology, with I/O devices only when @with_io: PCI discovery is what finds
 * GPUs, and it is skipped when there is no GPU to find (it is also the slow part, and hwloc's
 * PCI plugin leaks a little per load). Returns as placement_open().
 */
int placement_open_this_system(bool with_io, struct placement **out);

/* Frees the topology; NULL is ignored. */
void placement_close(struct placement *p);

/* Number of NUMA nodes (at least 1). */
int placement_node_count(const struct placement *p);

/* Whether the topology is this machine's (so binding and "current CPU" mean something). */
bool placement_is_this_system(const struct placement *p);

/*
 * NUMA node local to the PCI device at @busid ("0000:65:00.0"; CUDA's 8-digit domain form
 * "00000000:65:00.0" too). Returns the node's OS index and sets *@spans (when not NULL) to
 * whether the device's ancestor covers several nodes; -ENOENT when the topology has no such
 * device; -EINVAL for a malformed @busid.
 */
int placement_pci_node(const struct placement *p, const char *busid, bool *spans);

/*
 * NUMA node of CPU (PU) @cpu, an OS index; @cpu < 0 means the CPU the calling thread last
 * ran on (this system only). Returns the node's OS index; -ENOENT when the topology has no
 * such CPU; -ENOTSUP for @cpu < 0 on a topology that is not this system's; or the negative
 * errno of the CPU-location query.
 */
int placement_cpu_node(const struct placement *p, int cpu);

/*
 * The placement rule above for a component meant for the GPU at @gpu_busid (NULL: no
 * GPU), loaded by a thread on CPU @loader_cpu (< 0: the calling thread's CPU).
 * Returns 0 and fills @out, or the error of placement_cpu_node() when the fallback fails.
 */
int placement_choose(const struct placement *p, const char *gpu_busid, int loader_cpu,
		     struct placement_choice *out);

/*
 * Binds the calling thread to the CPUs of NUMA node @node (this system only), so that a
 * loader thread runs next to the memory it fills. Returns 0; -ENOENT for an unknown node;
 * -ENOTSUP on a topology that is not this system's; or the negative errno hwloc set.
 */
int placement_bind_thread(const struct placement *p, int node);

/*
 * The CPUs (PU OS indexes, ascending) of NUMA node @node: stores up to @max of them in @cpus
 * and returns how many the node has (which may exceed @max); -ENOENT for an unknown node.
 */
int placement_node_cpus(const struct placement *p, int node, int *cpus, int max);

/* "gpu-local", "gpu-spans-nodes", "loader-thread". */
const char *placement_reason_name(enum placement_reason r);

#endif
