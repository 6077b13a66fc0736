/*
 * Admission and eviction policy for one cache tier (the host cache; a GPU tier uses its own
 * instance). Pure bookkeeping: it decides, the caller frees memory and loads.
 *
 * Entries are cache entries keyed by a string that names the component and the form it is
 * stored in ("sd-tiny/vae@F16"), each with its size, last use, keep-alive TTL, lease count
 * (pins held by clients) and explicit pin (an operator's). An entry is evictable when it has
 * no lease, no explicit pin, has not been used within its TTL, and is not already being
 * evicted.
 *
 * Admission (evict_admit) of N bytes against budget B:
 *   - N > B: refused at once, -EFBIG, "component X needs N bytes, host budget is B";
 *   - N fits in B - used - reserved: admitted, N bytes reserved;
 *   - otherwise the evictable entries are taken by descending score until N fits, and
 *     returned as victims (marked evicting) with N reserved; when even all of them are not
 *     enough, -ENOSPC and nothing changes.
 * score = idle_time x size / reload_cost, reload_cost = size / load_rate (the entry's
 * measured rate, else the default): for a fixed rate that is idle time times rate, so the
 * policy is LRU among entries that reload equally fast and evicts what reloads fastest first.
 *
 * The caller then frees each victim's memory and calls evict_remove(), loads, and calls
 * evict_insert() (which turns the reservation into the entry) or evict_unreserve() on
 * failure. evict_next_victim() serves the case where the bytes fit but no single extent does
 * (fragmentation): evict one more and retry the allocation.
 *
 * Co-access: evict_coaccess_record() remembers which keys were requested within a time window
 * of each other and evict_coaccess_suggest() returns the keys most often requested with a
 * given one, as prefetch candidates. The statistics live in memory; the owner persists them:
 * evict_coaccess_seed() loads saved counts and evict_coaccess_drain() hands over the counts
 * recorded since the last drain. Counts fade: every coaccess_half_life_ns of the clock that
 * evict_coaccess_record() is given, all counts are halved, so that what is suggested follows
 * how the models are used now (the drained increments are not halved: the owner's saved
 * counts fade on their own clock, see core/catalog/catalog.h).
 *
 * Not thread-safe: the daemon's state thread owns a policy. Operations are linear in the
 * number of entries (resident components: hundreds).
 */
#ifndef WD_CORE_EVICT_H
#define WD_CORE_EVICT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define EVICT_KEY_MAX 320		/* key bytes including the NUL */
#define EVICT_DEFAULT_RATE 1e9		/* bytes/s assumed before a load was measured */
#define EVICT_COACCESS_WINDOW_NS 5000000000ull
#define EVICT_COACCESS_HISTORY 64	/* recent requests remembered */
/* Co-access counts halve every this long (the catalog's saved counts fade alike). */
#define EVICT_COACCESS_HALF_LIFE_NS (7ull * 24 * 3600 * 1000000000ull)
#define EVICT_COACCESS_MAX_PAIRS 4096

struct evict_counters {
	uint64_t hits;		/* lookups that found the entry resident */
	uint64_t misses;
	uint64_t prefetch_hits;	/* first use of an entry that was loaded as a prefetch */
	uint64_t prefetches;	/* entries inserted as prefetches */
	uint64_t loads;		/* entries inserted */
	uint64_t load_bytes;
	uint64_t evictions;
	uint64_t evict_bytes;
	uint64_t refused;	/* admissions refused (-EFBIG or -ENOSPC) */
	uint64_t resident_bytes;	/* bytes of the entries now in the tier */
};

struct evict_options {
	uint64_t budget;		/* bytes of the tier */
	double default_rate;		/* bytes/s; 0: EVICT_DEFAULT_RATE */
	uint64_t default_ttl_ns;	/* keep-alive of new entries; 0: none */
	uint64_t coaccess_window_ns;	/* 0: EVICT_COACCESS_WINDOW_NS */
	uint64_t coaccess_half_life_ns;	/* 0: EVICT_COACCESS_HALF_LIFE_NS */
	const char *tier;		/* for messages: "host" (NULL), "cuda:0" */
};

struct evict_policy;

/* Victims chosen by evict_admit(), in eviction order. Free with evict_victims_free(). */
struct evict_victims {
	size_t n;
	char **keys;
	uint64_t bytes;		/* their total size */
};

/* Creates a policy. Returns 0 and sets *@out; -EINVAL for a zero budget; -ENOMEM. */
int evict_create(const struct evict_options *opt, struct evict_policy **out);
void evict_destroy(struct evict_policy *p);
void evict_victims_free(struct evict_victims *v);

/*
 * Admission of @bytes for component @name (for the message) at time @now_ns (see the
 * header comment). @victims is filled (possibly empty) on success. @msg (when not NULL)
 * receives the refusal. Returns 0; -EFBIG when @bytes exceeds the budget; -ENOSPC when the
 * evictable entries cannot make room; -EINVAL for zero @bytes; -ENOMEM.
 */
int evict_admit(struct evict_policy *p, const char *name, uint64_t bytes, uint64_t now_ns,
		struct evict_victims *victims, char *msg, size_t msg_len);

/* Returns a reservation made by evict_admit() whose load failed. */
void evict_unreserve(struct evict_policy *p, uint64_t bytes);

/*
 * Records a resident entry of @bytes, consuming that much reservation (up to what is
 * reserved), last used at @now_ns; @prefetched marks a prefetch (counted on first use).
 * Returns 0; -EEXIST when @key is resident; -ENAMETOOLONG; -ENOMEM.
 */
int evict_insert(struct evict_policy *p, const char *key, uint64_t bytes, uint64_t now_ns,
		 bool prefetched);

/*
 * Removes @key after the caller freed its memory; @evicted counts it as an eviction.
 * Returns 0 or -ENOENT.
 */
int evict_remove(struct evict_policy *p, const char *key, bool evicted);

/*
 * A request for @key at @now_ns: a hit (returns 1, updates last use, counts a prefetch hit
 * on the first use of a prefetched entry) or a miss (returns 0).
 */
int evict_lookup(struct evict_policy *p, const char *key, uint64_t now_ns);

/* Lease pins: evict_pin() adds one, evict_unpin() drops one. Return 0, -ENOENT, or -EINVAL
 * when unpinning an entry with no lease. */
int evict_pin(struct evict_policy *p, const char *key);
int evict_unpin(struct evict_policy *p, const char *key);

/* Explicit (operator) pin on or off; keep-alive TTL; measured load rate in bytes/s (> 0).
 * Return 0, -ENOENT, or -EINVAL for a rate that is not positive. */
int evict_set_pinned(struct evict_policy *p, const char *key, bool pinned);
int evict_set_ttl(struct evict_policy *p, const char *key, uint64_t ttl_ns);
int evict_set_rate(struct evict_policy *p, const char *key, double bytes_per_s);

/* Whether @key is resident; whether it can be evicted at @now_ns. */
bool evict_contains(const struct evict_policy *p, const char *key);
bool evict_evictable(const struct evict_policy *p, const char *key, uint64_t now_ns);

/*
 * The evictable entry with the highest score at @now_ns, copied into @key (EVICT_KEY_MAX
 * bytes) and marked evicting. Returns 0 or -ENOENT when nothing is evictable.
 */
int evict_next_victim(struct evict_policy *p, uint64_t now_ns, char *key);

/* The score of @key at @now_ns (< 0 when absent). */
double evict_score(const struct evict_policy *p, const char *key, uint64_t now_ns);

void evict_get_counters(const struct evict_policy *p, struct evict_counters *out);
/* Bytes of the budget in use (entries) and reserved (admitted loads). */
uint64_t evict_used(const struct evict_policy *p);
uint64_t evict_reserved(const struct evict_policy *p);

/*
 * Co-access: records a request for @key at @now_ns; every other key requested within the
 * window before it gains one co-access with it. First halves every count once per half-life
 * passed since the last halving (the first call starts that clock). Returns 0,
 * -ENAMETOOLONG or -ENOMEM.
 */
int evict_coaccess_record(struct evict_policy *p, const char *key, uint64_t now_ns);

/*
 * Up to @max keys most often requested together with @key, at least @min_count times, most
 * frequent first, copied into @out (each EVICT_KEY_MAX bytes). Returns how many.
 */
size_t evict_coaccess_suggest(const struct evict_policy *p, const char *key, uint32_t min_count,
			      char (*out)[EVICT_KEY_MAX], size_t max);

/* A pair's co-accesses recorded since the last drain. */
struct evict_coaccess_delta {
	const char *a, *b;	/* the policy's copies: valid until the policy is destroyed */
	uint32_t n;
};

/*
 * Adds @count saved co-accesses of @a with @b (not handed out by evict_coaccess_drain()).
 * Returns 0, -ENAMETOOLONG, -EINVAL (@a equal to @b, or @count zero) or -ENOMEM.
 */
int evict_coaccess_seed(struct evict_policy *p, const char *a, const char *b, uint64_t count);

/*
 * Copies up to @max pairs with co-accesses recorded since the last drain into @out and
 * clears them. Returns how many; a full @out means more may remain.
 */
size_t evict_coaccess_drain(struct evict_policy *p, struct evict_coaccess_delta *out, size_t max);

#endif
