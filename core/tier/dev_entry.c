/*
 * The device tier's entry table and the requests waiting on it, used by all of its files:
 * finding an entry, the components a request targets, an entry's state in the registry, the
 * policy pins that mirror the clients' lease pins, and a request's completion once its last
 * device load has ended (struct dreq).
 */
#include "core/tier/dev_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/array.h"
#include "core/base/log.h"

struct dentry *dev_find(struct devcache *dc, const struct dgpu *g, uint32_t comp,
			   const struct dform *f)
{
	for (struct dentry *e = dc->entries; e; e = e->next)
		if (e->g == g && e->comp == comp && e->conv == f->conv && e->sel == f->sel &&
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

/* The components a request targets: @comp, or all of @model's. */
void dev_targets(struct daemon *d, uint32_t model, uint32_t comp, uint32_t *first,
		    uint32_t *n)
{
	*first = 0;
	*n = 0;
	if (comp != WD_ID_NONE) {
		*first = comp;
		*n = 1;
		return;
	}
	pthread_mutex_lock(&d->state_lock);
	if (model < d->n_models) {
		*first = d->models[model].first_comp;
		*n = d->models[model].n_comps;
	}
	pthread_mutex_unlock(&d->state_lock);
}

void dev_set_state(struct daemon *d, const struct dentry *e, uint32_t state, int err)
{
	/* The registry has one state per component and tier: while another form of it stays
	 * resident on this GPU, the end of this one does not make it absent. */
	if (state != WD_STATE_RESIDENT && state != WD_STATE_LOADING)
		for (const struct dentry *x = d->dc->entries; x; x = x->next)
			if (x != e && x->g == e->g && x->comp == e->comp && x->resident)
				return;
	pthread_mutex_lock(&d->state_lock);
	registry_set_state(d->reg, e->comp, WD_TIER_CUDA((uint32_t)e->g->ordinal), state, err);
	if (state != WD_STATE_LOADING)
		for (uint32_t k = 0; k < e->l.n_t; k++)
			if (e->l.t[k].tid != NO_TID)
				registry_set_tensor_tier(d->reg, e->l.t[k].tid,
							 WD_TIER_CUDA((uint32_t)e->g->ordinal),
							 state == WD_STATE_RESIDENT);
	pthread_mutex_unlock(&d->state_lock);
}

/*
 * Brings each entry's policy lease count in line with the client pins (DEVICE_MAP and PIN)
 * on its GPU's tier that cover its component or its whole model. Under dc->lock.
 */
void dev_sync_pins(struct daemon *d)
{
	struct devcache *dc = d->dc;

	pthread_mutex_lock(&d->state_lock);
	for (struct dentry *e = dc->entries; e; e = e->next) {
		uint32_t want = 0, tier = WD_TIER_CUDA((uint32_t)e->g->ordinal);

		if (!e->resident)
			continue;
		for (const struct lease *l = d->leases.head; l; l = l->next)
			for (size_t i = 0; i < l->n; i++)
				if (l->pins[i].tier == tier && l->pins[i].model == e->model &&
				    (l->pins[i].component == WD_ID_NONE ||
				     l->pins[i].component == e->comp))
					want++;
		for (; e->pins < want; e->pins++)
			evict_pin(e->g->pol, dev_pkey(e));
		for (; e->pins > want; e->pins--)
			evict_unpin(e->g->pol, dev_pkey(e));
	}
	pthread_mutex_unlock(&d->state_lock);
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

void dev_req_fail(struct dreq *r, int err, const char *msg)
{
	if (r->err)
		return;
	r->err = err;
	snprintf(r->msg, sizeof(r->msg), "%s", msg && *msg ? msg : strerror(-err));
}

/* A pin of a LOAD with WD_SQE_F_PIN, once resident (as the host tier's). Takes state_lock. */
void dev_take_pin(struct daemon *d, struct client *c, const struct lease_pin *p)
{
	pthread_mutex_lock(&d->state_lock);
	if (!c->gone && lease_pin(&d->leases, &c->lease, p) == 0) {
		registry_set_model_pins(d->reg, p->model, lease_model_pins(&d->leases, p->model));
		registry_counter_add(d->reg, WD_CTR_PINS, 1);
	}
	pthread_mutex_unlock(&d->state_lock);
}

/* Under dc->lock (or before the request is shared). */
void dev_req_done_one(struct daemon *d, struct dreq *r)
{
	struct wd_cqe cqe;
	size_t len;

	if (--r->pending)
		return;
	if (!r->err && (r->flags & WD_SQE_F_PIN))
		dev_take_pin(d, r->c, &r->pin);
	cqe = (struct wd_cqe){ .user_data = r->user_data, .res = r->err, .aux0 = r->bytes,
			       .aux1 = r->read_bytes };
	len = r->err ? strnlen(r->msg, sizeof(r->msg) - 1) : 0;
	daemon_post(d, r->c, &cqe, &r->spare, r->msg, len);
	daemon_client_put(d, r->c);
	free(r->spare);
	free(r);
}

int dev_add_waiter(struct dentry *e, struct dreq *r)
{
	if (wd_grow(&e->waiters, &e->cap_waiters, e->n_waiters, sizeof(*e->waiters)))
		return -ENOMEM;
	e->waiters[e->n_waiters++] = r;
	r->pending++;
	return 0;
}

/* The load of @e failed: its requesters get @err, the entry goes. Under dc->lock. */
void dev_fail_entry(struct daemon *d, struct dentry *e, int err, const char *msg)
{
	log_info(MOD, "\"device load failed\" key=\"%s\" err=%d msg=\"%s\"", e->key, err,
		 msg ? msg : "");
	dev_unlink_entry(d->dc, e);
	dev_set_state(d, e, err == -ECANCELED ? WD_STATE_ABSENT : WD_STATE_FAILED, err);
	for (uint32_t i = 0; i < e->n_waiters; i++) {
		dev_req_fail(e->waiters[i], err, msg);
		dev_req_done_one(d, e->waiters[i]);
	}
	dev_free_entry(e);
}

/* -ENOTSUP and the reason when @tier names no GPU of the tier. */
int dev_no_gpu(struct devcache *dc, uint32_t tier, const char *op, struct wd_cqe *cqe,
		  char *out)
{
	if (!dc->n)
		cqe->data_len = ops_msg(out, "%s: GPU tier not available: %s", op, dc->why);
	else
		cqe->data_len = ops_msg(out, "%s: no GPU cuda:%u (this host has %u, %s)", op,
					tier - 1, dc->n, dc->ops->kind);
	cqe->res = -ENOTSUP;
	return -ENOTSUP;
}
