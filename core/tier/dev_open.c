/*
 * Opening the GPUs, on the device thread (dev_open_devices(), called once by dev_thread_main()
 * before it serves anything): each device is checked (VMM allocations exported as fds, not
 * EXCLUSIVE_PROCESS), its budget set, and its policy, stream and staging ring made; a device
 * that cannot be used is skipped and the reason kept for the tier's "why".
 */
#include "core/tier/dev_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/log.h"
#include "core/policy/placement.h"
#include "gpu/staging.h"

/*
 * Whether the device tier can use device @i at all: VMM allocations exported as POSIX fds
 * are how clients map its memory, and in EXCLUSIVE_PROCESS mode the daemon's context would
 * make every client's context retain fail. Returns 0, or -EOPNOTSUPP/-EBUSY with @why.
 */
static int usable(const struct gpu_ops *ops, struct gpu_dev *dev, int i, char *why,
		  size_t why_size)
{
	struct gpu_caps c;
	int ret = ops->caps(dev, &c, why, why_size);

	if (ret)
		return ret;
	if (!c.vmm || !c.posix_fd) {
		snprintf(why, why_size, "cuda:%d has no %s, which clients need to map its memory",
			 i, !c.vmm ? "virtual memory management (cuMemCreate)" :
			 "POSIX file descriptor handles (cuMemExportToShareableHandle)");
		return -EOPNOTSUPP;
	}
	if (c.compute_mode == GPU_COMPUTE_EXCLUSIVE_PROCESS ||
	    c.compute_mode == GPU_COMPUTE_PROHIBITED) {
		snprintf(why, why_size, "cuda:%d is in compute mode %s: %s (nvidia-smi -i %d -c "
			 "DEFAULT)", i, c.compute_mode == GPU_COMPUTE_PROHIBITED ? "PROHIBITED" :
			 "EXCLUSIVE_PROCESS", c.compute_mode == GPU_COMPUTE_PROHIBITED ?
			 "no process may use it" : "with the daemon holding it, no client could "
			 "open it to map its memory", i);
		return -EBUSY;
	}
	return 0;
}

/*
 * Opens GPU @i as dc->g[dc->n]: checks it (usable()), makes its stream, its budget and
 * policy, and its staging ring (optional), in its context, and counts it. Returns false, with
 * dc->why, when it is not used: ordinals are tier numbers, so a device that fails to open ends
 * the list. @why (@why_size bytes) keeps the last driver message. Device thread.
 */
static bool open_one(struct devcache *dc, int i, struct placement *pl, char *why,
		     size_t why_size)
{
	struct dgpu *g = &dc->g[dc->n];
	uint64_t pct = dc->cfg.budget_pct ? dc->cfg.budget_pct :
		       100u - DEVCACHE_DEFAULT_HEADROOM_PCT;
	char tier[16];
	void *saved = NULL;
	bool entered = false;
	int ret;

	memset(g, 0, sizeof(*g));
	g->ordinal = i;
	g->numa = -1;
	ret = dc->ops->open(i, &g->dev, why, why_size);
	if (!ret)
		ret = usable(dc->ops, g->dev, i, why, why_size);
	if (!ret)
		ret = dc->ops->info(g->dev, &g->info, why, why_size);
	if (!ret)
		ret = dc->ops->ctx_enter(g->dev, &saved, why, why_size);
	entered = !ret;
	if (!ret)
		ret = dc->ops->stream_create(g->dev, &g->stream, why, why_size);
	if (ret) {
		log_warn(MOD, "\"GPU not used\" ordinal=%d err=%d why=\"%s\"", i, ret, why);
		if (entered)
			dc->ops->ctx_leave(g->dev, saved);
		if (g->dev)
			dc->ops->close(g->dev);
		snprintf(dc->why, sizeof(dc->why), "cuda:%d not used: %s", i, why);
		return false;
	}
	g->budget = dc->cfg.budget ? dc->cfg.budget :
		    g->info.total_bytes / 100 * pct;
	if (g->budget > g->info.total_bytes)
		g->budget = g->info.total_bytes;
	snprintf(tier, sizeof(tier), "cuda:%d", i);
	if (!g->budget || evict_create(&(struct evict_options){ .budget = g->budget,
								.tier = tier }, &g->pol)) {
		log_warn(MOD, "\"GPU not used: zero budget or no memory\" ordinal=%d", i);
		dc->ops->stream_destroy(g->dev, g->stream);
		dc->ops->ctx_leave(g->dev, saved);
		dc->ops->close(g->dev);
		snprintf(dc->why, sizeof(dc->why), "cuda:%d not used: zero budget", i);
		return false;
	}
	if (pl && g->info.pci_bus_id[0]) {
		int node = placement_pci_node(pl, g->info.pci_bus_id, NULL);

		g->numa = node >= 0 ? node : -1;
	}
	ret = staging_create(dc->ops, g->dev, &(struct staging_options){ .node = g->numa },
			     &g->st, why, why_size);
	if (ret) {
		g->st = NULL;
		log_warn(MOD, "\"no staging ring: host copies use one stream, components larger "
			 "than the host budget cannot be loaded\" ordinal=%d err=%d why=\"%s\"", i,
			 ret, why);
	}
	dc->ops->ctx_leave(g->dev, saved);
	dc->n++;
	log_info(MOD, "\"GPU ready\" tier=%s kind=%s name=\"%s\" pci=\"%s\" numa=%d total=%"
		 PRIu64 " budget=%" PRIu64, tier, dc->ops->kind, g->info.name, g->info.pci_bus_id,
		 g->numa, g->info.total_bytes, g->budget);
	return true;
}

/* Picks the gpu_ops and opens the GPUs (open_one()); with none, dc->why says why. Device
 * thread, before it reports ready. */
void dev_open_devices(struct devcache *dc)
{
	struct placement *pl = NULL;
	char why[160] = "";
	int n;

	dc->ops = gpu_ops_pick(why, sizeof(why));
	if (!dc->ops) {
		snprintf(dc->why, sizeof(dc->why), "%s", why[0] ? why : "no GPU implementation");
		return;
	}
	n = dc->ops->count(why, sizeof(why));
	if (n <= 0) {
		snprintf(dc->why, sizeof(dc->why), "%s", n < 0 ? why : "no GPU found");
		return;
	}
	if (n > GPU_MAX_DEVICES || n > (int)WD_TIER_MAX - 1)
		n = (int)WD_TIER_MAX - 1;
	if (strcmp(dc->ops->kind, "emulated"))
		placement_open_this_system(true, &pl);
	for (int i = 0; i < n; i++)
		if (!open_one(dc, i, pl, why, sizeof(why)))
			break;
	placement_close(pl);
	if (!dc->n)
		snprintf(dc->why, sizeof(dc->why), "no GPU could be opened (%s)", why);
}
