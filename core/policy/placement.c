/* NUMA placement from the hwloc topology. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hwloc.h>

#include "core/base/log.h"
#include "core/policy/placement.h"

struct placement {
	hwloc_topology_t topo;
	bool this_system;
};

static int open_topology(const char *xml_path, const char *synthetic, bool with_io,
			 struct placement **out)
{
	struct placement *p;
	int rc = 0;

	*out = NULL;
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	if (hwloc_topology_init(&p->topo) < 0) {
		free(p);
		return -ENOMEM;
	}
	hwloc_topology_set_io_types_filter(p->topo, !with_io ? HWLOC_TYPE_FILTER_KEEP_NONE
						    : xml_path ? HWLOC_TYPE_FILTER_KEEP_ALL
						    : HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
	/* hwloc leaves errno unspecified on a bad XML file or description: say -EINVAL. */
	if (xml_path && hwloc_topology_set_xml(p->topo, xml_path) < 0)
		rc = errno == ENOENT ? -ENOENT : -EINVAL;
	else if (!xml_path && synthetic && hwloc_topology_set_synthetic(p->topo, synthetic) < 0)
		rc = -EINVAL;
	else if (hwloc_topology_load(p->topo) < 0)
		rc = errno ? -errno : -EINVAL;
	if (rc) {
		log_warn("placement", "\"cannot load topology\" xml=%s synthetic=%s rc=%d",
			 xml_path ? xml_path : "-", synthetic ? synthetic : "-", rc);
		hwloc_topology_destroy(p->topo);
		free(p);
		return rc;
	}
	p->this_system = hwloc_topology_is_thissystem(p->topo);
	*out = p;
	return 0;
}

int placement_open(const char *xml_path, const char *synthetic, struct placement **out)
{
	return open_topology(xml_path, synthetic, true, out);
}

int placement_open_this_system(bool with_io, struct placement **out)
{
	return open_topology(NULL, NULL, with_io, out);
}

void placement_close(struct placement *p)
{
	if (!p)
		return;
	hwloc_topology_destroy(p->topo);
	free(p);
}

int placement_node_count(const struct placement *p)
{
	int n = hwloc_get_nbobjs_by_type(p->topo, HWLOC_OBJ_NUMANODE);

	return n > 0 ? n : 1;
}

bool placement_is_this_system(const struct placement *p)
{
	return p->this_system;
}

int placement_pci_node(const struct placement *p, const char *busid, bool *spans)
{
	unsigned int dom, bus, dev, fn;
	hwloc_obj_t obj, anc;
	int node, end = -1;

	/* Hex digits, ':' and '.' only: sscanf's %x would also take a "0x" prefix. */
	if (busid[strspn(busid, "0123456789abcdefABCDEF:.")] ||
	    sscanf(busid, "%x:%x:%x.%x%n", &dom, &bus, &dev, &fn, &end) != 4 || busid[end] ||
	    dom > 0xffff || bus > 0xff || dev > 0x1f || fn > 7)
		return -EINVAL;
	obj = hwloc_get_pcidev_by_busid(p->topo, dom, bus, dev, fn);
	if (!obj)
		return -ENOENT;
	anc = hwloc_get_non_io_ancestor_obj(p->topo, obj);
	if (!anc || !anc->nodeset || hwloc_bitmap_iszero(anc->nodeset))
		return -ENOENT;
	node = hwloc_bitmap_first(anc->nodeset);
	if (spans)
		*spans = hwloc_bitmap_weight(anc->nodeset) > 1;
	return node;
}

int placement_cpu_node(const struct placement *p, int cpu)
{
	hwloc_bitmap_t set;
	hwloc_obj_t pu;
	int node;

	if (cpu < 0) {
		if (!p->this_system)
			return -ENOTSUP;
		set = hwloc_bitmap_alloc();
		if (!set)
			return -ENOMEM;
		if (hwloc_get_last_cpu_location(p->topo, set, HWLOC_CPUBIND_THREAD) < 0) {
			node = -errno;
			hwloc_bitmap_free(set);
			return node;
		}
		cpu = hwloc_bitmap_first(set);
		hwloc_bitmap_free(set);
		if (cpu < 0)
			return -ENOENT;
	}
	pu = hwloc_get_pu_obj_by_os_index(p->topo, (unsigned int)cpu);
	if (!pu || !pu->nodeset || hwloc_bitmap_iszero(pu->nodeset))
		return -ENOENT;
	return hwloc_bitmap_first(pu->nodeset);
}

int placement_choose(const struct placement *p, const char *gpu_busid, int loader_cpu,
		     struct placement_choice *out)
{
	bool spans = false;
	int node;

	if (gpu_busid) {
		node = placement_pci_node(p, gpu_busid, &spans);
		if (node >= 0) {
			out->node = node;
			out->reason = spans ? PLACE_GPU_SPANS : PLACE_GPU_LOCAL;
			return 0;
		}
		log_info("placement", "\"GPU not in topology, placing by loader thread\" gpu=%s rc=%d",
			 gpu_busid, node);
	}
	node = placement_cpu_node(p, loader_cpu);
	if (node < 0)
		return node;
	out->node = node;
	out->reason = PLACE_THREAD;
	return 0;
}

int placement_bind_thread(const struct placement *p, int node)
{
	hwloc_obj_t obj = NULL;

	if (!p->this_system)
		return -ENOTSUP;
	while ((obj = hwloc_get_next_obj_by_type(p->topo, HWLOC_OBJ_NUMANODE, obj)))
		if (obj->os_index == (unsigned int)node)
			break;
	if (!obj || !obj->cpuset || hwloc_bitmap_iszero(obj->cpuset))
		return -ENOENT;
	if (hwloc_set_cpubind(p->topo, obj->cpuset, HWLOC_CPUBIND_THREAD) < 0)
		return -errno;
	return 0;
}

const char *placement_reason_name(enum placement_reason r)
{
	switch (r) {
	case PLACE_GPU_LOCAL:
		return "gpu-local";
	case PLACE_GPU_SPANS:
		return "gpu-spans-nodes";
	case PLACE_THREAD:
		return "loader-thread";
	}
	return "unknown";
}

int placement_node_cpus(const struct placement *p, int node, int *cpus, int max)
{
	hwloc_obj_t obj = NULL;
	int n = 0, cpu;

	while ((obj = hwloc_get_next_obj_by_type(p->topo, HWLOC_OBJ_NUMANODE, obj)))
		if (obj->os_index == (unsigned int)node)
			break;
	if (!obj || !obj->cpuset)
		return -ENOENT;
	hwloc_bitmap_foreach_begin(cpu, obj->cpuset) {
		if (n < max)
			cpus[n] = cpu;
		n++;
	}
	hwloc_bitmap_foreach_end();
	return n;
}
