/* GPU -> NUMA node and CPUs (gpu/topo.h). */
#include "gpu/topo.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Writes @cpus (ascending) as ranges; marks a list that does not fit with "...". */
static void format_cpus(const int *cpus, int n, char *buf, size_t size)
{
	size_t len = 0;

	buf[0] = '\0';
	for (int i = 0; i < n;) {
		int j = i;
		int k;

		while (j + 1 < n && cpus[j + 1] == cpus[j] + 1)
			j++;
		k = j > i ? snprintf(buf + len, size - len, "%s%d-%d", len ? "," : "", cpus[i],
				     cpus[j]) :
			    snprintf(buf + len, size - len, "%s%d", len ? "," : "", cpus[i]);
		if (k < 0 || (size_t)k >= size - len) {
			/* Keep "..." visible: cut back to room for it. */
			len = size > 4 ? size - 4 : 0;
			snprintf(buf + len, size - len, "...");
			return;
		}
		len += (size_t)k;
		i = j + 1;
	}
}

int gpu_topo_place(const struct placement *p, const struct gpu_device *dev, int loader_cpu,
		   struct gpu_topo_entry *out)
{
	struct placement_choice c;
	int *cpus, n, rc;

	memset(out, 0, sizeof(*out));
	out->ordinal = dev->ordinal;
	snprintf(out->pci_bus_id, sizeof(out->pci_bus_id), "%s", dev->pci_bus_id);
	rc = placement_choose(p, dev->pci_bus_id[0] ? dev->pci_bus_id : NULL, loader_cpu, &c);
	if (rc)
		return rc;
	out->node = c.node;
	out->reason = c.reason;
	n = placement_node_cpus(p, c.node, NULL, 0);
	if (n < 0)
		return n;
	cpus = calloc(n ? (size_t)n : 1, sizeof(*cpus));
	if (!cpus)
		return -ENOMEM;
	n = placement_node_cpus(p, c.node, cpus, n);
	out->n_cpus = n;
	format_cpus(cpus, n, out->cpus, sizeof(out->cpus));
	free(cpus);
	return 0;
}

void gpu_topo_format(const struct gpu_topo_entry *e, char *buf, size_t size)
{
	snprintf(buf, size, "cuda:%d pci=%s node=%d (%s) cpus=%s", e->ordinal,
		 e->pci_bus_id[0] ? e->pci_bus_id : "none", e->node,
		 placement_reason_name(e->reason), e->cpus[0] ? e->cpus : "none");
}
