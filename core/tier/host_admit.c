/*
 * The host tier's admission and eviction: client pins brought into the eviction policy,
 * making room for an extent (admission, victims, allocation under the recovery policy),
 * NUMA placement and populating a fresh extent, and the budget: shedding under memory
 * pressure, a live budget change, the keep-alive and the quarantine threshold.
 */
#include "core/tier/host_internal.h"

#include "core/base/fault.h"
#include "core/base/memlimit.h"
#include "core/policy/placement.h"

/*
 * Binds a fresh extent to its NUMA node (core/policy/placement.h): @node, the node local to the GPU
 * the component is meant for, when it is >= 0; else the loader thread's node, since the
 * loader's reads are the pages' first touch. The bind comes before the loader writes, so
 * first touch allocates there. Returns the node, or -1 when nothing was bound (no topology,
 * or mbind refused: the pages then follow the default policy, which is logged, and the load
 * goes on).
 */
int host_place_extent(struct hostcache *hc, const char *name, uint64_t off, uint64_t len,
		      int node)
{
	struct placement_choice c = { .node = node, .reason = PLACE_GPU_LOCAL };
	int cpu = loader_cpu(hc->loader), ret = 0;

	if (!hc->pl)
		return -1;
	if (node < 0)
		ret = placement_choose(hc->pl, NULL, cpu >= 0 ? cpu : -1, &c);
	if (!ret)
		ret = arena_bind_node(hc->arena, off, len, c.node);
	if (ret) {
		log_warn(MOD, "\"host cache pages not bound to a NUMA node\" component=%s err=%d",
			 name, ret);
		return -1;
	}
	log_debug(MOD, "\"placed\" component=%s node=%d reason=%s", name, c.node,
		  placement_reason_name(c.reason));
	return c.node;
}

/*
 * Brings the policy's lease counts in line with the client pins: an entry gets one lease per
 * client pin on the host tier that covers one of its components (or their whole model).
 * Run before choosing victims, so that pins taken or dropped on any thread count.
 */
/* Whether client pin @p covers one of host entry @ent's components (tier_pins_count()). */
static bool pin_covers_entry(const void *ent, const struct lease_pin *p)
{
	const struct entry *e = ent;

	for (uint32_t k = 0; k < e->n_binds; k++)
		if (tier_pin_covers(p, WD_TIER_HOST, e->binds[k].model, e->binds[k].comp))
			return true;
	return false;
}

void host_sync_pins(struct hostcache *hc)
{
	pthread_mutex_lock(hc->env.state_lock);
	for (struct entry *e = hc->entries; e; e = e->next)
		if (e->resident)
			tier_pins_apply(hc->pol, e->key, &e->pins,
					tier_pins_count(hc->env.leases, pin_covers_entry, e));
	pthread_mutex_unlock(hc->env.state_lock);
}

/* What recovery_alloc_retry() works on for one extent: host_make_room(), host_populate_extent(). */
struct alloc_ctx {
	struct hostcache *hc;
	uint64_t bytes, off, now;
};

static int try_extent(void *arg)
{
	struct alloc_ctx *a = arg;
	int err = fault_take(FAULT_ALLOC);

	return err ? -err : arena_alloc(a->hc->arena, a->bytes, &a->off);
}

static int try_populate(void *arg)
{
	struct alloc_ctx *a = arg;

	return recovery_populate(arena_ptr(a->hc->arena, a->off), a->bytes);
}

/*
 * Evicts unpinned entries, highest eviction score first, until an extent of @bytes is free
 * (after -ENOSPC: fragmentation) or @bytes were freed (after -ENOMEM). Under the cache lock.
 * Returns the bytes evicted.
 */
static int64_t evict_for(void *arg, uint64_t bytes, int err)
{
	struct alloc_ctx *a = arg;
	struct hostcache *hc = a->hc;
	char key[EVICT_KEY_MAX];
	int64_t freed = 0;

	for (;;) {
		if (freed) {
			struct arena_stats st;

			arena_get_stats(hc->arena, &st);
			if (err == -ENOMEM ? (uint64_t)freed >= bytes : st.ext.largest_free >= bytes)
				break;
		}
		if (evict_next_victim(hc->pol, a->now, key))
			break;
		struct entry *e = host_find_key(hc, key);

		if (e) {
			freed += (int64_t)e->size;
			host_drop_entry(a->hc, e, true);
		} else {
			evict_remove(hc->pol, key, true);
		}
	}
	return freed;
}

/* Drops the entries evict_admit() chose (or forgets a key it has no entry for), frees @v. */
void host_drop_victims(struct hostcache *hc, struct evict_victims *v)
{
	for (size_t i = 0; i < v->n; i++) {
		struct entry *e = host_find_key(hc, v->keys[i]);

		if (e)
			host_drop_entry(hc, e, true);
		else
			evict_remove(hc->pol, v->keys[i], true);
	}
	evict_victims_free(v);
}

/*
 * Makes room for @bytes and allocates the extent: admission (which may pick victims), the
 * victims dropped, then the allocation under the recovery policy (core/policy/recovery.h: when no
 * extent is large enough, evict more and retry once). Returns 0 with *@off set, or
 * -EFBIG/-ENOSPC with @msg.
 */
int host_make_room(struct hostcache *hc, const char *name, uint64_t bytes, uint64_t *off,
		   char *msg)
{
	struct evict_victims v;
	struct alloc_ctx a = { .hc = hc, .bytes = bytes, .now = wd_now_ns() };
	int ret;

	host_sync_pins(hc);
	ret = evict_admit(hc->pol, name, bytes, a.now, &v, msg, WD_DATA_SLOT_SIZE);
	if (ret)
		return ret;
	host_drop_victims(hc, &v);
	ret = recovery_alloc_retry(&(struct recovery_alloc){
		.tier = "host", .name = name, .what = "an extent", .bytes = bytes,
		.try_alloc = try_extent, .evict = evict_for, .arg = &a }, msg, WD_DATA_SLOT_SIZE);
	if (ret)
		evict_unreserve(hc->pol, bytes);
	else
		*off = a.off;
	return ret;
}

/*
 * When memory is tight (recovery_populate_needed()), faults in the pages of a fresh extent
 * (after it was bound to its NUMA node), so that a lack of memory is an error now rather than
 * the OOM killer or SIGBUS in the loader; on -ENOMEM unpinned entries are evicted and it is
 * tried once more. Under the cache lock. Returns 0 or -errno with @msg.
 */
int host_populate_extent(struct hostcache *hc, const char *name, uint64_t off, uint64_t bytes,
			 char *msg)
{
	struct alloc_ctx a = { .hc = hc, .bytes = bytes, .off = off, .now = wd_now_ns() };

	if (!recovery_populate_needed(bytes))
		return 0;
	return recovery_alloc_retry(&(struct recovery_alloc){
		.tier = "host", .name = name, .what = "pages", .bytes = bytes,
		.try_alloc = try_populate, .evict = evict_for, .arg = &a }, msg, WD_DATA_SLOT_SIZE);
}

/* Gives back an extent host_make_room() reserved and allocated. Under the cache lock. */
void host_release_extent(struct hostcache *hc, uint64_t off, uint64_t bytes)
{
	arena_free(hc->arena, off, bytes);
	evict_unreserve(hc->pol, bytes);
}

uint64_t hostcache_shed(struct hostcache *hc, uint64_t target, uint64_t *bytes)
{
	char key[EVICT_KEY_MAX];
	uint64_t now = wd_now_ns(), n = 0;

	*bytes = 0;
	pthread_mutex_lock(&hc->lock);
	host_sync_pins(hc);
	while (evict_used(hc->pol) > target && !evict_next_victim(hc->pol, now, key)) {
		struct entry *e = host_find_key(hc, key);

		if (e) {
			*bytes += e->size;
			n++;
			host_drop_entry(hc, e, true);
		} else {
			evict_remove(hc->pol, key, true);
		}
	}
	pthread_mutex_unlock(&hc->lock);
	recovery_count(RECOVERY_PRESSURE_SHEDS, n);
	return n;
}

uint64_t hostcache_budget(struct hostcache *hc)
{
	uint64_t b;

	pthread_mutex_lock(&hc->lock);
	b = hc->budget;
	pthread_mutex_unlock(&hc->lock);
	return b;
}

uint64_t hostcache_fit_budget(uint64_t budget)
{
	struct wd_memlimit ml;
	uint64_t cap;

	wd_memlimit_read(&ml);
	cap = wd_memlimit_budget_cap(&ml);
	if (!budget) /* the default: a quarter of what this daemon may use */
		return ml.limit != UINT64_MAX ? ml.limit / 4 : 1ull << 30;
	if (budget <= cap)
		return budget;
	log_warn(MOD, "\"host budget clamped: more than this daemon may use\" asked=%" PRIu64
		 " budget=%" PRIu64 " mem_total=%" PRIu64 " cgroup_limit=%" PRIu64
		 " cgroup_file=\"%s\"", budget, cap, ml.mem_total,
		 ml.cgroup_limit == UINT64_MAX ? 0 : ml.cgroup_limit,
		 ml.cgroup_file[0] ? ml.cgroup_file : "none");
	return cap;
}

int hostcache_set_budget(struct hostcache *hc, uint64_t budget, char *msg, size_t msg_len)
{
	uint64_t size = hc->arena->seg.size, now = wd_now_ns(), want;
	struct evict_victims v;
	char why[WD_DATA_SLOT_SIZE];
	int ret = 0;

	budget = round_extent(budget);
	if (budget > size || !budget) {
		snprintf(msg, msg_len, "host_budget: %" PRIu64 " bytes is more than the host cache "
			 "arena the daemon started with (%" PRIu64 " bytes): growing it needs a "
			 "restart", budget, size);
		return -EFBIG;
	}
	pthread_mutex_lock(&hc->lock);
	want = size - budget;
	if (want > hc->shrink) {
		/* Shrinking: reserve the difference, evicting unpinned entries to make room. */
		host_sync_pins(hc);
		ret = evict_admit(hc->pol, "(host budget shrink)", want - hc->shrink, now, &v, why,
				  sizeof(why));
		if (ret) {
			snprintf(msg, msg_len, "host_budget: cannot shrink to %" PRIu64 " bytes: %"
				 PRIu64 " bytes are in use and what is not evictable (pinned, loading "
				 "or within its keep-alive) does not fit", budget,
				 evict_used(hc->pol) + evict_reserved(hc->pol) - hc->shrink);
			pthread_mutex_unlock(&hc->lock);
			return -EBUSY;
		}
		host_drop_victims(hc, &v);
	} else if (want < hc->shrink) {
		evict_unreserve(hc->pol, hc->shrink - want);
	}
	hc->shrink = want;
	hc->budget = budget;
	pthread_mutex_unlock(&hc->lock);
	return 0;
}

void hostcache_set_ttl(struct hostcache *hc, uint64_t ttl_ns)
{
	pthread_mutex_lock(&hc->lock);
	hc->ttl_ns = ttl_ns;
	for (struct entry *e = hc->entries; e; e = e->next)
		if (e->resident)
			evict_set_ttl(hc->pol, e->key, ttl_ns);
	pthread_mutex_unlock(&hc->lock);
}

void hostcache_set_quarantine(struct hostcache *hc, uint32_t after)
{
	quarantine_set_after(hc->q, after);
}
