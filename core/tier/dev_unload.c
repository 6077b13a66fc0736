/*
 * UNLOAD on a GPU tier, on the shard: refused while an entry in range is loading or pinned;
 * otherwise aliases go first, then owners, whose allocation is handed on to a remaining alias
 * or freed on the device thread.
 */
#include "core/tier/dev_internal.h"

#include <errno.h>
#include <inttypes.h>

#include "core/base/log.h"

int64_t devcache_unload(struct devcache *dc, uint32_t tier, uint32_t model, uint32_t comp,
			char *out, uint16_t *out_len)
{
	struct dgpu *g = dev_gpu_of(dc, tier);
	uint32_t first, n;
	int64_t freed = 0;

	if (!g)
		return 0;
	tier_targets(&dc->env, model, comp, &first, &n);
	pthread_mutex_lock(&dc->lock);
	dev_sync_pins(dc);
	for (struct dentry *e = dc->entries; e; e = e->next) {
		if (e->g != g || e->comp < first || e->comp >= first + n)
			continue;
		if (!e->resident || e->pins) {
			pthread_mutex_unlock(&dc->lock);
			*out_len = tier_msg(out, "unload: %s is %s; retry later", e->key,
					    e->resident ? "mapped or pinned by a client" : "loading");
			return -EBUSY;
		}
	}
	/* Aliases first: an owner whose aliases all go too is then freed, not handed on. */
	for (struct dentry *e = dc->entries, *next; e; e = next) {
		next = e->next;
		if (e->g != g || e->comp < first || e->comp >= first + n || !e->owner)
			continue;
		e->owner->n_aliases--;
		dev_unlink_entry(dc, e);
		dev_set_state(dc, e, WD_STATE_ABSENT, 0);
		log_info(MOD, "\"unloaded\" key=\"%s\" shared=\"%s\"", e->key, e->owner->key);
		dev_free_entry(e);
	}
	for (struct dentry *e = dc->entries, *next; e; e = next) {
		next = e->next;
		if (e->g != g || e->comp < first || e->comp >= first + n)
			continue;
		dev_unlink_entry(dc, e);
		dev_set_state(dc, e, WD_STATE_ABSENT, 0);
		evict_remove(g->pol, e->key, false);
		if (e->n_aliases) {
			dev_hand_on(dc, e);
			/* The list changed: start over (entries in range are only owners now). */
			next = dc->entries;
		} else {
			freed += (int64_t)e->size;
			log_info(MOD, "\"unloaded\" key=\"%s\" bytes=%" PRIu64, e->key, e->size);
			dev_free_later(dc, g, &e->v);
		}
		dev_free_entry(e);
	}
	dev_sync_pins(dc);
	pthread_mutex_unlock(&dc->lock);
	return freed;
}
