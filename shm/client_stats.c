/*
 * libweightd: the daemon's counters (STATS: the named set, the struct, the host tier's part),
 * the metrics block and alert events read from the registry mapping, and the names of the
 * API's enum values (states, tiers, page kinds, alert kinds, error classes).
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "weightd.h"

#include "core/base/common.h"
#include "shm/abi.h"
#include "shm/barrier.h"
#include "shm/client_internal.h"
#include "shm/registry.h"
#include "shm/regmetrics.h"
#include "shm/stats.h"

/*
 * Sends STATS and copies the reply's counters into @v (enum wd_stat order; entries the
 * daemon did not send stay 0). Returns how many values the daemon sent (possibly more than
 * WD_STAT_COUNT) or the request's error.
 */
static int fetch_stats(struct weightd *w, uint64_t v[WD_STAT_COUNT])
{
	struct request rq = { .sqe = { .opcode = WD_OP_STATS, .model = WD_ID_NONE,
				       .component = WD_ID_NONE } };
	struct reply rp;
	size_t n;
	int ret;

	if ((ret = client_submit_wait(w, &rq, &rp)))
		return ret;
	if ((ret = client_result(&rp, "stats", NULL)) < 0)
		return ret;
	/* res counts the entries; a newer daemon may send more than this library knows. */
	n = rp.data_len / sizeof(uint64_t);
	if ((size_t)ret < n)
		n = (size_t)ret;
	memcpy(v, rp.data, (n < WD_STAT_COUNT ? n : WD_STAT_COUNT) * sizeof(uint64_t));
	return (int)n;
}

int weightd_host_stats(struct weightd *w, struct weightd_host_stats *out)
{
	uint64_t v[WD_STAT_COUNT] = { 0 };
	int ret;

	if (!w || !out)
		return client_fail(-EINVAL, "NULL argument");
	if ((ret = fetch_stats(w, v)) < 0)
		return ret;
	*out = (struct weightd_host_stats){
		.budget = v[WD_STAT_HOST_BUDGET],
		.bytes = v[WD_STAT_HOST_BYTES],
		.entries = v[WD_STAT_HOST_ENTRIES],
		.hits = v[WD_STAT_HOST_HITS],
		.misses = v[WD_STAT_HOST_MISSES],
		.evictions = v[WD_STAT_HOST_EVICTIONS],
		.evict_bytes = v[WD_STAT_HOST_EVICT_BYTES],
		.prefetches = v[WD_STAT_HOST_PREFETCHES],
		.prefetch_hits = v[WD_STAT_HOST_PREFETCH_HITS],
		.loads = v[WD_STAT_HOST_LOADS],
		.read_bytes = v[WD_STAT_HOST_READ_BYTES],
		.coalesced = v[WD_STAT_HOST_COALESCED],
		.dedup_bytes = v[WD_STAT_HOST_DEDUP_BYTES],
		.refused = v[WD_STAT_HOST_REFUSED],
		.failed = v[WD_STAT_HOST_FAILED],
		.cuda_bytes = v[WD_STAT_CUDA_BYTES],
		.mapped_bytes = w->host_seg.size,
		.read_direct_bytes = v[WD_STAT_HOST_READ_DIRECT_BYTES],
		.read_buffered_bytes = v[WD_STAT_HOST_READ_BYTES] - v[WD_STAT_HOST_READ_DIRECT_BYTES],
	};
	return 0;
}

/* The deprecated struct keeps the layout of the one that replaced it. */
static_assert(sizeof(struct weightd_cache_stats) == sizeof(struct weightd_host_stats) &&
		      offsetof(struct weightd_cache_stats, mapped_bytes) ==
			      offsetof(struct weightd_host_stats, mapped_bytes) &&
		      offsetof(struct weightd_cache_stats, read_buffered_bytes) ==
			      offsetof(struct weightd_host_stats, read_buffered_bytes),
	      "weightd_cache_stats mirrors weightd_host_stats");

/* Deprecated alias (docs/names.md): still exported for the programs built with it. */
int weightd_cache_stats(struct weightd *w, struct weightd_cache_stats *out)
{
	struct weightd_host_stats st;
	int ret;

	if (!out)
		return client_fail(-EINVAL, "NULL argument");
	ret = weightd_host_stats(w, &st);
	if (!ret)
		memcpy(out, &st, sizeof(*out));
	return ret;
}


int weightd_counters(struct weightd *w, uint64_t *v, unsigned int max)
{
	uint64_t all[WD_STAT_COUNT] = { 0 };
	int ret;

	if (!w || (!v && max))
		return client_fail(-EINVAL, "NULL argument");
	if ((ret = fetch_stats(w, all)) < 0)
		return ret;
	for (unsigned int i = 0; i < max; i++)
		v[i] = i < WD_STAT_COUNT ? all[i] : 0;
	return ret;
}

const char *weightd_counter_name(unsigned int i, int *is_counter)
{
	if (i >= WD_STAT_COUNT || !wd_stat_info[i].name)
		return NULL;
	if (is_counter)
		*is_counter = wd_stat_info[i].counter;
	return wd_stat_info[i].name;
}

int weightd_stats(struct weightd *w, struct weightd_stats *out)
{
	uint64_t v[WD_STAT_COUNT] = { 0 };
	int ret;

	if (!w || !out)
		return client_fail(-EINVAL, "NULL argument");
	if ((ret = fetch_stats(w, v)) < 0)
		return ret;
	*out = (struct weightd_stats){
		.requests = v[WD_STAT_MY_REQUESTS],
		.errors = v[WD_STAT_MY_ERRORS],
		.pins = v[WD_STAT_MY_PINS],
		.clients = v[WD_STAT_CLIENTS],
		.ring_segments = v[WD_STAT_RING_SEGS],
		.pins_total = v[WD_STAT_PINS],
		.models = v[WD_STAT_MODELS],
		.uptime_ns = v[WD_STAT_UPTIME_NS],
		.host_budget = v[WD_STAT_HOST_BUDGET],
		.requests_total = v[WD_STAT_REQUESTS],
		.errors_total = v[WD_STAT_ERRORS],
		/* The STATS counters are the one set (shm/stats.h): the same values as
		 * weightd_host_stats() and /metrics. */
		.host_bytes = v[WD_STAT_HOST_BYTES],
		.loads = v[WD_STAT_HOST_LOADS],
		.load_bytes = v[WD_STAT_HOST_READ_BYTES],
		.evictions = v[WD_STAT_HOST_EVICTIONS],
		.evict_bytes = v[WD_STAT_HOST_EVICT_BYTES],
		.hits = v[WD_STAT_HOST_HITS],
		.misses = v[WD_STAT_HOST_MISSES],
		.n_values = (uint32_t)ret,
		.host_page_kind = (uint32_t)(v[WD_STAT_HOST_PAGES] & 0xfff),
		.host_page_size = v[WD_STAT_HOST_PAGES] & ~(uint64_t)0xfff,
	};
	return 0;
}

const char *weightd_pages_name(uint32_t kind)
{
	switch (kind) {
	case WEIGHTD_PAGES_SMALL:
		return "4k";
	case WEIGHTD_PAGES_THP:
		return "thp";
	case WEIGHTD_PAGES_HUGETLB:
		return "hugetlb";
	}
	return "?";
}


const char *weightd_state_name(unsigned int state)
{
	static const char *const names[] = { "absent", "loading", "resident", "evicting",
					     "failed" };

	return state < ARRAY_SIZE(names) ? names[state] : "?";
}

const char *weightd_tier_name(unsigned int tier, char *buf, size_t size)
{
	if (tier == WD_TIER_HOST)
		snprintf(buf, size, "host");
	else
		snprintf(buf, size, "cuda:%u", tier - 1);
	return buf;
}


/* ---- metrics and events ----------------------------------------------------------------- */

static_assert(WEIGHTD_HIST_BUCKETS == WD_HIST_BUCKETS, "histogram buckets");
static_assert(WEIGHTD_ERR_CLASSES == WD_ERRC_COUNT, "error classes");
static_assert(WEIGHTD_ALERT_KINDS == WD_ALERT_COUNT, "alert kinds");
static_assert(WEIGHTD_NUMA_SLOTS == WD_METRICS_NUMA + 1, "NUMA slots");
static_assert(WEIGHTD_EVENT_TEXT == WD_EVENT_TEXT, "event text");
static_assert(sizeof(struct weightd_hist) == sizeof(struct wd_hist), "histogram layout");

int weightd_metrics(struct weightd *w, struct weightd_metrics *out)
{
	const struct wd_reg_metrics *m;

	if (!w || !out)
		return client_fail(-EINVAL, "weightd_metrics: NULL argument");
	m = registry_view_metrics(&w->reg);
	if (!m)
		return client_fail(-ENODATA, "the daemon's registry has no metrics block");
	memset(out, 0, sizeof(*out));
	regm_hist_read(&m->rtt, (struct wd_hist *)&out->rtt);
	for (unsigned int t = 0; t < WEIGHTD_TIER_MAX; t++)
		regm_hist_read(&m->load[t], (struct wd_hist *)&out->load[t]);
	for (unsigned int i = 0; i < WEIGHTD_ERR_CLASSES; i++)
		out->errors[i] = READ_ONCE(m->errors[i]);
	for (unsigned int i = 0; i < WEIGHTD_ALERT_KINDS; i++) {
		out->alerts_total[i] = READ_ONCE(m->alerts_total[i]);
		out->alerts_active[i] = READ_ONCE(m->alerts_active[i]);
	}
	for (unsigned int i = 0; i < WEIGHTD_NUMA_SLOTS; i++)
		out->numa_bytes[i] = READ_ONCE(m->numa_bytes[i]);
	out->host_budget = READ_ONCE(m->host_budget);
	out->host_used = READ_ONCE(m->host_used);
	out->free_extents = READ_ONCE(m->free_extents);
	out->largest_free = READ_ONCE(m->largest_free);
	out->updated_wall_ns = READ_ONCE(m->updated_wall_ns);
	/* Pairs with the daemon's store_release(event_head) after it wrote the event. */
	out->events = load_acquire(&m->event_head);
	return 0;
}

int weightd_events(struct weightd *w, struct weightd_event *out, size_t max)
{
	const struct wd_reg_metrics *m;
	uint64_t head, first;
	size_t n = 0;

	if (!w || (!out && max))
		return client_fail(-EINVAL, "weightd_events: NULL argument");
	m = registry_view_metrics(&w->reg);
	if (!m)
		return client_fail(-ENODATA, "the daemon's registry has no metrics block");
	/* Pairs with the daemon's store_release(event_head) after it wrote the event. */
	head = load_acquire(&m->event_head);
	first = head > WD_EVENTS ? head - WD_EVENTS : 0;
	if (head - first > max)
		first = head - max;
	for (uint64_t i = first; i < head; i++) {
		struct wd_event ev = { 0 };
		int ret = -EAGAIN;

		/* A record rewritten under us is retried a few times, then skipped (overtaken). */
		for (int tries = 0; tries < 100 && ret == -EAGAIN; tries++)
			ret = regm_event_read(m, i, &ev);
		if (ret == -EBADMSG)
			return client_fail(ret, "registry event %llu is corrupt",
					   (unsigned long long)i);
		if (ret)
			continue;
		out[n] = (struct weightd_event){ .index = i, .wall_ns = ev.wall_ns,
						 .value = ev.value, .limit = ev.limit,
						 .kind = ev.kind, .flags = ev.flags };
		memcpy(out[n].text, ev.text, sizeof(out[n].text));
		n++;
	}
	return (int)n;
}

const char *weightd_alert_name(unsigned int kind)
{
	static const char *const names[WEIGHTD_ALERT_KINDS] = WD_ALERT_NAMES;

	return kind < WEIGHTD_ALERT_KINDS ? names[kind] : "unknown";
}

const char *weightd_error_class_name(unsigned int cls)
{
	static const char *const names[WEIGHTD_ERR_CLASSES] = WD_ERRC_NAMES;

	return cls < WEIGHTD_ERR_CLASSES ? names[cls] : "unknown";
}
