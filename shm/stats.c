/* The names, kinds and meanings of the STATS counters (shm/stats.h). */
#include "shm/stats.h"

#include <assert.h>

static_assert(WD_STAT_HOST_PAGES + 1 == WD_STAT_COUNT,
	      "a new STATS entry needs its row below (a name, or NULL and why)");

const struct wd_stat_info wd_stat_info[WD_STAT_COUNT] = {
	[WD_STAT_CLIENTS] = { "clients", false, "Clients attached now." },
	[WD_STAT_PINS] = { "pins", false, "Pins held by all attached clients." },
	[WD_STAT_RING_SEGS] = { "ring_segments", false,
				"Client ring segments the daemon still maps." },
	[WD_STAT_REQUESTS] = { "requests", true, "Requests served, all clients." },
	[WD_STAT_ERRORS] = { "request_errors", true, "Requests that completed with an error." },
	[WD_STAT_MODELS] = { "models", false, "Models published in the registry." },
	[WD_STAT_HOST_BUDGET] = { "host_budget_bytes", false, "Size of the host cache in bytes." },
	/* Exported as weightd_uptime_seconds, in seconds. */
	[WD_STAT_UPTIME_NS] = { NULL, false, NULL },
	/* The asking client's own: not the daemon's counters. */
	[WD_STAT_MY_PINS] = { NULL, false, NULL },
	[WD_STAT_MY_REQUESTS] = { NULL, false, NULL },
	[WD_STAT_MY_ERRORS] = { NULL, false, NULL },
	[WD_STAT_HOST_BYTES] = { "host_bytes_used", false,
				 "Bytes of the host cache held by entries." },
	[WD_STAT_HOST_ENTRIES] = { "host_entries", false,
				   "Host cache entries, loading ones included." },
	[WD_STAT_HOST_HITS] = { "host_hits", true,
				"Component requests answered from the host cache." },
	[WD_STAT_HOST_MISSES] = { "host_misses", true,
				  "Component requests that had to wait for a load." },
	[WD_STAT_HOST_EVICTIONS] = { "host_evictions", true, "Host cache entries evicted." },
	[WD_STAT_HOST_EVICT_BYTES] = { "host_evicted_bytes", true,
				       "Bytes released by evictions." },
	[WD_STAT_HOST_PREFETCHES] = { "host_prefetches", true,
				      "Entries loaded because of co-access statistics." },
	[WD_STAT_HOST_PREFETCH_HITS] = { "host_prefetch_hits", true,
					 "Prefetched entries requested afterwards." },
	[WD_STAT_HOST_LOADS] = { "host_loads", true,
				 "Host cache loads started (each reads its files once)." },
	[WD_STAT_HOST_READ_BYTES] = { "host_disk_read_bytes", true,
				      "Bytes read from disk by host cache loads." },
	[WD_STAT_HOST_COALESCED] = { "host_coalesced", true,
				     "Requests that joined a load already running." },
	[WD_STAT_HOST_DEDUP_BYTES] = { "host_dedup_bytes", false,
				       "Bytes not stored twice because identical content is "
				       "shared." },
	[WD_STAT_HOST_REFUSED] = { "host_refused", true,
				   "Host cache admissions refused (too big, no space)." },
	[WD_STAT_HOST_FAILED] = { "host_failed_loads", true,
				  "Host cache loads that failed or were cancelled." },
	[WD_STAT_CUDA_BYTES] = { "cuda_bytes", false,
				 "Bytes of VRAM held by the GPU tiers, all GPUs." },
	[WD_STAT_IO_RETRIES] = { "io_retries", true,
				 "Reads retried after EINTR, EAGAIN or a short read." },
	[WD_STAT_ALLOC_RETRIES] = { "alloc_retries", true,
				    "Cache allocations retried after evicting unpinned entries." },
	[WD_STAT_PRESSURE_SHEDS] = { "pressure_sheds", true,
				     "Host cache entries shed under memory pressure (PSI)." },
	[WD_STAT_QUARANTINED] = { "quarantined", true,
				  "Components quarantined after repeated load failures." },
	[WD_STAT_HOST_READ_DIRECT_BYTES] = { "host_disk_read_direct_bytes", true,
					     "Of host_disk_read_bytes, bytes read with O_DIRECT "
					     "(not cached)." },
	/* Page size and kind packed in one word: status shows them. */
	[WD_STAT_HOST_PAGES] = { NULL, false, NULL },
};
