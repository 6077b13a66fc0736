/*
 * The metrics block of the registry segment: latency histograms, error classes, host cache
 * state, alert counters and a ring of recent events, in the segment every client already
 * maps read-only, so `weightctl top`, libweightd and the /metrics endpoint read them with no
 * round trip to the daemon. docs/protocol.md (registry section) gives the same layout.
 *
 * The block sits at wd_reg_hdr.metrics_off (0 in a registry without one) and is
 * sizeof(struct wd_reg_metrics) bytes, the size recorded in both wd_reg_hdr.metrics_size and
 * the block's own size field.
 *
 * Writers and their ordering:
 *  - Counters and histogram words are only ever added to, with relaxed atomic adds
 *    (regm_add()): several daemon threads may add to the same word (shards flushing their
 *    private sums, the loader thread, a device thread), and a reader needs each word untorn,
 *    not ordered against the others. So a reader may see a histogram's count one update ahead
 *    of its buckets; renderers derive the count from the buckets they read (the /metrics
 *    _count is the +Inf bucket) so that what they print is self-consistent.
 *  - The host-cache state words (budget, used, free extents, NUMA bytes) are stored by the
 *    control thread alone, each one relaxed, every alert interval: a snapshot at most one
 *    interval old, stamped by updated_wall_ns.
 *  - Events are written by the control thread alone, each record under its own seqlock (seq
 *    odd while it is rewritten, as for registry records), then event_head is store-released;
 *    a reader load-acquires event_head and copies the records below it with regm_event_read().
 *
 * Hot paths: a shard does not touch this block per request. It accumulates round-trip times
 * and error classes in thread-private memory and adds them here when it flushes its counters
 * before parking (core/daemon/metrics.h: metrics_flush_local()).
 */
#ifndef WD_SHM_REGMETRICS_H
#define WD_SHM_REGMETRICS_H

#include <assert.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "shm/abi.h"
#include "shm/barrier.h"

/*
 * Histogram buckets: bucket i < WD_HIST_BUCKETS - 1 counts values v with
 * 1 us << (i - 1) < v <= 1 us << i (bucket 0: v <= 1 us); the last one counts every value
 * above 1 us << 26 = 67.1 s. Buckets are not cumulative in memory; /metrics makes them so.
 */
#define WD_HIST_BUCKETS 28u
#define WD_HIST_BASE_NS 1000u

#define WD_METRICS_NUMA 8u	/* numa_bytes[0..7]: nodes 0..7; [8]: unbound or node >= 8 */
#define WD_METRICS_SLOTS 8u	/* error classes and alert kinds have this many slots */
#define WD_EVENTS 64u		/* the recent-events ring */
#define WD_EVENT_TEXT 88u

/* Error classes of failed completions (core/daemon/metrics.c: metrics_error_class()). */
enum wd_err_class {
	WD_ERRC_VALIDATION = 0,	/* a file or tensor failed validation (-EBADMSG, -EILSEQ) */
	WD_ERRC_IO,		/* reading a file failed (-EIO, -ENOENT, -ESTALE, -ENODATA ...) */
	WD_ERRC_ADMISSION,	/* refused by a budget (-EFBIG, -ENOSPC, -EDQUOT, -EBUSY) */
	WD_ERRC_PROTOCOL,	/* a bad request or ring (-EINVAL, -EPROTO, -ENAMETOOLONG ...) */
	WD_ERRC_DEVICE,		/* a GPU tier failed or is absent (-ENODEV, -ENOTSUP, -ENXIO) */
	WD_ERRC_OTHER,		/* anything else (-ECANCELED, -ENOMEM, -EPERM ...) */
	WD_ERRC_COUNT
};

/* Their names, in enum order: the /metrics labels and weightd_error_class_name(). */
#define WD_ERRC_NAMES { "validation", "io", "admission", "protocol", "device", "other" }

/* Alert kinds (core/daemon/alert.h). */
enum wd_alert_kind {
	WD_ALERT_BUDGET = 0,	/* host cache use above alert_budget_pct of the budget */
	WD_ALERT_SLOW_LOAD,	/* a load below alert_slow_load_pct of its component's median */
	WD_ALERT_ERROR_BURST,	/* more than alert_error_count errors in alert_error_window */
	WD_ALERT_PIN_TTL,	/* a client held a pin longer than alert_pin_ttl */
	WD_ALERT_CATALOG,	/* the catalog was corrupt at start: moved aside and rebuilt */
	WD_ALERT_COUNT
};

/* Their names, in enum order: the /metrics labels, the log and weightd_alert_name(). */
#define WD_ALERT_NAMES { "budget", "slow_load", "error_burst", "pin_ttl", "catalog" }

/* wd_event.flags */
#define WD_EVENT_F_RAISED 0x1u	/* the alert became active (or fired, for one-shot kinds) */
#define WD_EVENT_F_CLEARED 0x2u	/* the condition ended */

struct wd_hist {
	uint64_t count;
	uint64_t sum_ns;
	uint64_t bucket[WD_HIST_BUCKETS];
};

/* One event: 128 bytes, seqlocked. */
struct wd_event {
	uint64_t seq;		/* odd while written; 0: never written */
	uint64_t wall_ns;	/* CLOCK_REALTIME of the event */
	uint64_t value;		/* what was measured (percent, bytes/s, errors, seconds) */
	uint64_t limit;		/* the threshold it crossed, same unit */
	uint32_t kind;		/* enum wd_alert_kind */
	uint32_t flags;		/* WD_EVENT_F_* */
	char text[WD_EVENT_TEXT];	/* NUL-terminated, for people */
};

struct wd_reg_metrics {
	uint32_t size;		/* sizeof(struct wd_reg_metrics) */
	uint32_t hist_buckets;	/* WD_HIST_BUCKETS */
	uint32_t n_tiers;	/* WD_TIER_MAX: load[] entries */
	uint32_t n_events;	/* WD_EVENTS */
	uint64_t hist_base_ns;	/* WD_HIST_BASE_NS */
	uint64_t updated_wall_ns;	/* when the host cache words below were stored */
	/* Host cache state, refreshed every alert interval by the control thread. */
	uint64_t host_budget;	/* bytes of the arena */
	uint64_t host_used;	/* bytes held by extents */
	uint64_t free_bytes;
	uint64_t free_extents;	/* extents on the allocator's free list */
	uint64_t largest_free;	/* bytes of the largest of them */
	uint64_t numa_bytes[WD_METRICS_NUMA + 1];	/* resident bytes by placement node */
	uint8_t reserved0[8];
	uint64_t errors[WD_METRICS_SLOTS];	/* failed completions by enum wd_err_class */
	uint64_t alerts_total[WD_METRICS_SLOTS];	/* alerts raised by enum wd_alert_kind */
	uint64_t alerts_active[WD_METRICS_SLOTS];	/* alerts active now, same index */
	uint64_t event_head;	/* events written; the newest is events[(head - 1) % n] */
	uint8_t reserved1[56];
	struct wd_hist rtt;	/* shard pick-up to CQE publish of inline requests */
	struct wd_hist load[WD_TIER_MAX];	/* completed loads' durations by tier */
	struct wd_event events[WD_EVENTS];
};

static_assert(sizeof(struct wd_hist) == 240, "wd_hist size");
static_assert(sizeof(struct wd_event) == 128, "wd_event size");
static_assert(offsetof(struct wd_event, wall_ns) == 8, "event.wall_ns");
static_assert(offsetof(struct wd_event, kind) == 32, "event.kind");
static_assert(offsetof(struct wd_event, text) == 40, "event.text");
static_assert(offsetof(struct wd_reg_metrics, hist_base_ns) == 16, "metrics.hist_base_ns");
static_assert(offsetof(struct wd_reg_metrics, host_budget) == 32, "metrics.host_budget");
static_assert(offsetof(struct wd_reg_metrics, numa_bytes) == 72, "metrics.numa_bytes");
static_assert(offsetof(struct wd_reg_metrics, errors) == 152, "metrics.errors");
static_assert(offsetof(struct wd_reg_metrics, alerts_total) == 216, "metrics.alerts_total");
static_assert(offsetof(struct wd_reg_metrics, alerts_active) == 280, "metrics.alerts_active");
static_assert(offsetof(struct wd_reg_metrics, event_head) == 344, "metrics.event_head");
static_assert(offsetof(struct wd_reg_metrics, rtt) == 408, "metrics.rtt");
static_assert(offsetof(struct wd_reg_metrics, load) == 648, "metrics.load");
static_assert(offsetof(struct wd_reg_metrics, events) == 648 + 240 * WD_TIER_MAX,
	      "metrics.events");
static_assert(sizeof(struct wd_reg_metrics) == 648 + 240 * WD_TIER_MAX + 128 * WD_EVENTS,
	      "wd_reg_metrics size");
static_assert(WD_ERRC_COUNT <= WD_METRICS_SLOTS && WD_ALERT_COUNT <= WD_METRICS_SLOTS,
	      "metric slots");

/* The bucket of a duration: the smallest i with @ns <= WD_HIST_BASE_NS << i, or the last. */
static inline unsigned int wd_hist_bucket(uint64_t ns)
{
	uint64_t q = ns ? (ns - 1) / WD_HIST_BASE_NS : 0;
	unsigned int i = q ? 64u - (unsigned int)__builtin_clzll(q) : 0;

	return i < WD_HIST_BUCKETS - 1 ? i : WD_HIST_BUCKETS - 1;
}

/* A relaxed atomic add: see the writers' rules above. */
static inline void regm_add(uint64_t *p, uint64_t v)
{
	__atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}

/* Adds one observation of @ns to @h (shared memory, any thread). */
static inline void regm_observe(struct wd_hist *h, uint64_t ns)
{
	regm_add(&h->bucket[wd_hist_bucket(ns)], 1);
	regm_add(&h->sum_ns, ns);
	regm_add(&h->count, 1);
}

/* Adds private histogram @src into shared @dst (a shard's flush). */
static inline void regm_hist_merge(struct wd_hist *dst, const struct wd_hist *src)
{
	for (unsigned int i = 0; i < WD_HIST_BUCKETS; i++)
		if (src->bucket[i])
			regm_add(&dst->bucket[i], src->bucket[i]);
	regm_add(&dst->sum_ns, src->sum_ns);
	regm_add(&dst->count, src->count);
}

/* A relaxed copy of shared histogram @src (each word untorn; see above). */
static inline void regm_hist_read(const struct wd_hist *src, struct wd_hist *dst)
{
	for (unsigned int i = 0; i < WD_HIST_BUCKETS; i++)
		dst->bucket[i] = READ_ONCE(src->bucket[i]);
	dst->sum_ns = READ_ONCE(src->sum_ns);
	dst->count = READ_ONCE(src->count);
}

/*
 * Copies event number @n (0-based, in write order) of @m into @out. The caller loaded
 * event_head with load_acquire() and asks only for n < head and n + WD_EVENTS >= head.
 * Returns 0; -EAGAIN when the record is being rewritten or was overwritten by a newer event
 * (the ring wrapped); -EBADMSG when the stable copy is not event @n's (a corrupt segment).
 */
static inline int regm_event_read(const struct wd_reg_metrics *m, uint64_t n,
				  struct wd_event *out)
{
	const struct wd_event *e = &m->events[n % WD_EVENTS];
	const uint64_t *s = (const uint64_t *)e;
	uint64_t *d = (uint64_t *)out;
	/* Pairs with the writer's store_release(seq) that ended its update of the record. */
	uint64_t s1 = load_acquire(&e->seq);

	if (s1 & 1)
		return -EAGAIN;
	for (size_t i = 1; i < sizeof(*e) / 8; i++)
		d[i] = READ_ONCE(s[i]);
	/* Pairs with the writer's smp_wmb() after it made seq odd. */
	smp_rmb();
	if (READ_ONCE(e->seq) != s1)
		return -EAGAIN;
	out->seq = s1;
	/* The writer stores seq = 2 * (n + 1) when it completes event n. */
	if (s1 != 2 * (n + 1))
		return s1 > 2 * (n + 1) ? -EAGAIN : -EBADMSG;
	out->text[WD_EVENT_TEXT - 1] = '\0';
	return 0;
}

#endif
