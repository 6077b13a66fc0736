/*
 * How much memory this process may really use: the smaller of the machine's RAM and the
 * limit of the memory cgroup it runs in (v2 memory.max, v1 memory.limit_in_bytes, the
 * tightest of the cgroup and its ancestors). A host cache budget above it gets the daemon
 * OOM-killed on a large load, and every client loses its lease with it.
 */
#ifndef WD_CORE_MEMLIMIT_H
#define WD_CORE_MEMLIMIT_H

#include <limits.h>
#include <stdint.h>

#include "core/base/common.h"

struct wd_memlimit {
	uint64_t mem_total;	/* MemTotal of /proc/meminfo; 0 when unknown */
	uint64_t cgroup_limit;	/* UINT64_MAX: no cgroup limit found */
	uint64_t cgroup_usage;	/* bytes the cgroup uses now (memory.current/usage_in_bytes) */
	char cgroup_file[PATH_MAX]; /* the file that set cgroup_limit, for messages */
	uint64_t limit;		/* min(mem_total, cgroup_limit); UINT64_MAX when neither */
};

/*
 * Fills @out. The cgroup filesystem is looked for under $WEIGHTD_CGROUP_FS when set (for
 * tests and unusual mounts), else /sys/fs/cgroup; the process's cgroup comes from
 * /proc/self/cgroup. Never fails: what cannot be read is left "unknown".
 */
void wd_memlimit_read(struct wd_memlimit *out);

/*
 * The largest host cache budget a daemon with limit @l may have: the limit less a headroom
 * for the daemon itself (threads, catalog, buffers) of 1/32 of it, at least 256 MiB (half
 * of a limit under 512 MiB). The cache is shared memory the kernel cannot reclaim without
 * swap, so a budget at the limit itself ends in the OOM killer.
 */
static inline uint64_t wd_memlimit_budget_cap(const struct wd_memlimit *l)
{
	uint64_t head;

	if (l->limit == UINT64_MAX)
		return UINT64_MAX;
	head = l->limit / 32 > (256ull << 20) ? l->limit / 32 : 256ull << 20;
	return l->limit > 2 * head ? l->limit - head : l->limit / 2;
}

#endif
