/*
 * One copy per content on a GPU: an entry whose host entry (the same files, or byte-identical
 * ones the host tier bound together) is resident already in the same form for another
 * component becomes an alias of that owner, sharing its allocation (dev_find_twin(),
 * dev_alias_resident()); an owner unloaded while aliases remain hands the allocation on to
 * one of them (dev_hand_on()).
 */
#include "core/tier/dev_internal.h"

#include <inttypes.h>

#include "core/base/log.h"

/*
 * The resident entry on @e's GPU, in @e's form, made from host entry @id for another
 * component (a component shared by two models: the host tier bound both to one entry), or
 * NULL. Aliases are skipped: their owner is found instead. Under dc->lock.
 */
struct dentry *dev_find_twin(struct devcache *dc, const struct dentry *e, uint64_t id)
{
	for (struct dentry *x = dc->entries; x; x = x->next)
		if (x != e && x->g == e->g && x->resident && !x->owner && x->comp != e->comp &&
		    x->conv == e->conv && x->sel == e->sel && x->sel_hash == e->sel_hash &&
		    x->l.id == id)
			return x;
	return NULL;
}

/*
 * @e becomes an alias of @owner: resident without a copy, sharing its allocation, with
 * layout @l (@e takes its table: the same offsets as the owner's, @e's component's tensor
 * ids). Its requesters are answered; a use of the owner's policy entry. Device thread,
 * under dc->lock.
 */
void dev_alias_resident(struct devcache *dc, struct dentry *e, struct dentry *owner,
			struct hostcache_layout *l, uint64_t read_bytes)
{
	e->l = *l;
	l->t = NULL;
	e->owner = owner;
	owner->n_aliases++;
	e->v = owner->v;
	e->size = owner->size;
	e->tensor_bytes = e->l.tensor_bytes;
	e->resident = true;
	evict_lookup(e->g->pol, owner->key, wd_now_ns());
	dev_set_state(dc, e, WD_STATE_RESIDENT, 0);
	for (uint32_t i = 0; i < e->n_waiters; i++) {
		e->waiters[i]->bytes += e->tensor_bytes;
		e->waiters[i]->read_bytes += read_bytes;
		dev_req_done_one(dc, e->waiters[i]);
	}
	e->n_waiters = 0;
	log_info(MOD, "\"resident: shares the allocation of identical content\" key=\"%s\" "
		 "owner=\"%s\" bytes=%" PRIu64, e->key, owner->key, e->size);
}

/*
 * Owner @e (unlinked, its policy entry removed) goes while other components still share its
 * allocation: one of its aliases becomes the owner (the allocation, the policy entry under
 * its own key; the others follow it). The pins of the aliases are applied again to the new
 * key by the caller's dev_sync_pins(). Under dc->lock.
 */
void dev_hand_on(struct devcache *dc, struct dentry *e)
{
	struct dentry *a = NULL;

	for (struct dentry *x = dc->entries; x; x = x->next) {
		if (x->owner != e)
			continue;
		x->pins = 0;	/* those were applied to @e's key, which is gone */
		if (!a) {
			a = x;
			a->owner = NULL;
			a->n_aliases = e->n_aliases - 1;
		} else {
			x->owner = a;
		}
	}
	if (!a)
		return;
	evict_insert(a->g->pol, a->key, a->size, wd_now_ns(), false);
	log_info(MOD, "\"unloaded: allocation handed on\" key=\"%s\" to=\"%s\" bytes=%" PRIu64,
		 e->key, a->key, a->size);
}
