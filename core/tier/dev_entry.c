/*
 * The device tier's entry table and the requests waiting on it, used by all of its files:
 * finding an entry, an entry's state in the registry, the policy pins that mirror the
 * clients' lease pins, and the requests (struct tier_request, core/tier/tier.h) waiting on
 * its loads, each completed once its last device load has ended.
 */
#include "core/tier/dev_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/array.h"
#include "core/base/log.h"

/* The entry of component @comp on @g in form @f, resident or loading, or NULL. Under
 * dc->lock. */
struct dentry *dev_find(struct devcache *dc, const struct dgpu *g, uint32_t comp,
			const struct tier_form *f)
{
	for (struct dentry *e = dc->entries; e; e = e->next)
		if (e->g == g && e->comp == comp && e->conv == f->convert && e->sel == f->sel &&
		    e->sel_hash == f->sel_hash)
			return e;
	return NULL;
}

/* The resident entry of @g whose policy key is @key (an eviction victim), or NULL. Under
 * dc->lock. */
struct dentry *dev_find_key(struct devcache *dc, const struct dgpu *g, const char *key)
{
	for (struct dentry *e = dc->entries; e; e = e->next)
		if (e->g == g && e->resident && !strcmp(e->key, key))
			return e;
	return NULL;
}

/*
 * Publishes @state (and @err) of @e's component on its GPU's tier in the registry, and for a
 * final state its tensors' residency there. Under dc->lock, except for WD_STATE_LOADING
 * (which reads no other entry); takes state_lock.
 */
void dev_set_state(struct devcache *dc, const struct dentry *e, uint32_t state, int err)
{
	/* The registry has one state per component and tier: while another form of it stays
	 * resident on this GPU, the end of this one does not make it absent. */
	if (state != WD_STATE_RESIDENT && state != WD_STATE_LOADING)
		for (const struct dentry *x = dc->entries; x; x = x->next)
			if (x != e && x->g == e->g && x->comp == e->comp && x->resident)
				return;
	pthread_mutex_lock(dc->env.state_lock);
	registry_set_state(dc->env.reg, e->comp, WD_TIER_CUDA((uint32_t)e->g->ordinal), state, err);
	if (state != WD_STATE_LOADING)
		for (uint32_t k = 0; k < e->l.n_t; k++)
			if (e->l.t[k].tid != NO_TID)
				registry_set_tensor_tier(dc->env.reg, e->l.t[k].tid,
							 WD_TIER_CUDA((uint32_t)e->g->ordinal),
							 state == WD_STATE_RESIDENT);
	pthread_mutex_unlock(dc->env.state_lock);
}

/* Whether client pin @p covers entry @ent (struct dentry): its GPU's tier, its model, and its
 * component or the whole model. */
static bool pin_covers(const void *ent, const struct lease_pin *p)
{
	const struct dentry *e = ent;

	return tier_pin_covers(p, WD_TIER_CUDA((uint32_t)e->g->ordinal), e->model, e->comp);
}

/*
 * Brings each entry's policy lease count in line with the client pins (DEVICE_MAP and PIN)
 * on its GPU's tier that cover its component or its whole model. Under dc->lock; takes
 * state_lock (the lease table).
 */
void dev_sync_pins(struct devcache *dc)
{
	pthread_mutex_lock(dc->env.state_lock);
	for (struct dentry *e = dc->entries; e; e = e->next)
		if (e->resident)
			tier_pins_apply(e->g->pol, dev_pkey(e), &e->pins,
					tier_pins_count(dc->env.leases, pin_covers, e));
	pthread_mutex_unlock(dc->env.state_lock);
}

void dev_free_entry(struct dentry *e)
{
	free(e->l.t);
	free(e->waiters);
	free(e);
}

void dev_unlink_entry(struct devcache *dc, struct dentry *e)
{
	for (struct dentry **pp = &dc->entries; *pp; pp = &(*pp)->next) {
		if (*pp == e) {
			*pp = e->next;
			return;
		}
	}
}

/* One of @r's device loads ended: the last one posts its final completion (taking its pin
 * first) and frees it. Under dc->lock (or before the request is shared). */
void dev_req_done_one(struct devcache *dc, struct tier_request *r)
{
	if (!tier_req_done_one(r))
		return;
	tier_req_finish(&dc->env, r);
	free(r);
}

int dev_add_waiter(struct dentry *e, struct tier_request *r)
{
	if (wd_grow(&e->waiters, &e->cap_waiters, e->n_waiters, sizeof(*e->waiters)))
		return -ENOMEM;
	e->waiters[e->n_waiters++] = r;
	r->pending++;
	return 0;
}

/* The load of @e failed: its requesters get @err, the entry goes. Under dc->lock. */
void dev_fail_entry(struct devcache *dc, struct dentry *e, int err, const char *msg)
{
	log_info(MOD, "\"device load failed\" key=\"%s\" err=%d msg=\"%s\"", e->key, err,
		 msg ? msg : "");
	dev_unlink_entry(dc, e);
	dev_set_state(dc, e, err == -ECANCELED ? WD_STATE_ABSENT : WD_STATE_FAILED, err);
	for (uint32_t i = 0; i < e->n_waiters; i++) {
		tier_req_fail(e->waiters[i], err, msg);
		dev_req_done_one(dc, e->waiters[i]);
	}
	dev_free_entry(e);
}

/* -ENOTSUP and the reason when @tier names no GPU of the tier. */
int dev_no_gpu(struct devcache *dc, uint32_t tier, const char *op, struct wd_cqe *cqe,
	       char *out)
{
	if (!dc->n)
		cqe->data_len = tier_msg(out, "%s: GPU tier not available: %s", op, dc->why);
	else
		cqe->data_len = tier_msg(out, "%s: no GPU cuda:%u (this host has %u, %s)", op,
					 tier - 1, dc->n, dc->ops->kind);
	cqe->res = -ENOTSUP;
	return -ENOTSUP;
}
