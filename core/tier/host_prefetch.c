/*
 * The host tier's co-access statistics and prefetch: the counts saved to the catalog (and
 * seeded from it at start), and after a requested whole load the components most often
 * requested with it, loaded ahead when the budget has room for them without evicting.
 */
#include "core/tier/host_internal.h"

#define PREFETCH_MIN_COUNT 2u		/* co-accesses before a component is prefetched */
#define PREFETCH_MAX 4u
#define SAVE_BATCH 64u			/* co-access pairs written to the catalog per drain */

/*
 * The registry model and component that co-access key @ckey ("model/component", or the
 * model's name for a single-component model) names, and at most the extent a full load of
 * it needs.
 * Returns 0 or -ENOENT.
 */
static int resolve(struct hostcache *hc, const char *ckey, uint32_t *model, uint32_t *comp,
		   uint64_t *size)
{
	const struct tier_sink *sk = &hc->env.sink;
	uint32_t first, n;
	int ret = -ENOENT, mret = 0;

	/* Model by model (the sink takes state_lock for each): stale ones are skipped. */
	for (uint32_t m = 0; ret && (mret = sk->model_comps(sk->ctx, m, &first, &n)) != -ENOENT;
	     m++) {
		struct wd_reg_model rm;
		size_t len;

		if (mret || registry_read_model(hc->env.view, m, &rm))
			continue;
		len = strlen(rm.name);
		if (strncmp(ckey, rm.name, len) || (ckey[len] != '/' && ckey[len] != '\0'))
			continue;
		for (uint32_t c = first; c < first + n; c++) {
			struct wd_reg_component rc;
			const char *want = ckey[len] ? ckey + len + 1 : "";

			if (registry_read_component(hc->env.view, c, &rc) || strcmp(rc.name, want))
				continue;
			*model = m;
			*comp = c;
			/* At most one alignment gap per tensor: an upper bound of the extent. */
			*size = round_extent(rc.nbytes + (uint64_t)rc.n_tensors * ARENA_TENSOR_ALIGN);
			ret = 0;
			break;
		}
	}
	return ret;
}

int host_seed_pair(const char *a, const char *b, uint64_t count, void *arg)
{
	struct hostcache *hc = arg;
	int ret = evict_coaccess_seed(hc->pol, a, b, count);

	/* A key too long for the policy is skipped: the others still count. */
	return ret == -ENAMETOOLONG || ret == -EINVAL ? 0 : ret;
}

/*
 * Writes the co-accesses recorded since the last call to the catalog, so that they survive a
 * restart. Runs on the thread that owns the catalog handle: the worker, after each load
 * job, or the daemon's thread at the end, once the worker has stopped. A failed write is
 * logged and those counts are lost: they are statistics, and the requests that made them
 * succeeded.
 */
void host_save_coaccess(struct hostcache *hc)
{
	struct evict_coaccess_delta dl[SAVE_BATCH];
	uint64_t now = wd_wall_ns();
	size_t n;

	if (!hc->pol || !*hc->env.cat)
		return;
	do {
		pthread_mutex_lock(&hc->lock);
		n = evict_coaccess_drain(hc->pol, dl, SAVE_BATCH);
		pthread_mutex_unlock(&hc->lock);
		for (size_t i = 0; i < n; i++) {
			int ret = catalog_coaccess_add(*hc->env.cat, dl[i].a, dl[i].b, dl[i].n,
						       now);

			if (ret)
				log_warn(MOD, "\"co-access not saved\" a=\"%s\" b=\"%s\" n=%u err=%d",
					 dl[i].a, dl[i].b, dl[i].n, ret);
		}
	} while (n == SAVE_BATCH);
}

/*
 * After a requested full load of @key: components requested together with it at least
 * PREFETCH_MIN_COUNT times that are not resident are loaded too, as prefetches, when the
 * budget has room for them without evicting anything.
 */
void host_queue_prefetch(struct hostcache *hc, const char *key)
{
	char sugg[PREFETCH_MAX][EVICT_KEY_MAX];
	uint32_t todo[PREFETCH_MAX][2];
	size_t n, k = 0;

	pthread_mutex_lock(&hc->lock);
	n = evict_coaccess_suggest(hc->pol, key, PREFETCH_MIN_COUNT, sugg, PREFETCH_MAX);
	pthread_mutex_unlock(&hc->lock);
	for (size_t i = 0; i < n; i++) {
		uint32_t model, comp;
		uint64_t size, room;
		bool busy = false;

		if (resolve(hc, sugg[i], &model, &comp, &size))
			continue;
		pthread_mutex_lock(&hc->lock);
		room = hc->budget - evict_used(hc->pol) - evict_reserved(hc->pol);
		for (struct entry *x = hc->entries; x; x = x->next)
			busy |= host_find_bind(x, comp) && (!x->resident || (x->sel == TIER_SEL_ALL &&
								    !x->convert));
		if (!busy && size <= room) {
			todo[k][0] = model;
			todo[k][1] = comp;
			k++;
		}
		pthread_mutex_unlock(&hc->lock);
	}
	for (size_t i = 0; i < k; i++) {
		struct wd_sqe sqe = { .opcode = WD_OP_LOAD, .model = todo[i][0],
				      .component = todo[i][1] };
		int ret = hc->env.sink.defer(hc->env.sink.ctx, &sqe);

		if (ret == -ENOMEM)
			return;
		if (!ret)
			log_info(MOD, "\"prefetch queued\" after=\"%s\" model=%u component=%u", key,
				 todo[i][0], todo[i][1]);
	}
}
