/*
 * The daemon's side of the cache tiers' interface: the env and the sink of core/tier/tier.h,
 * built on the daemon's own structures (core/daemon/ops.h), which the tiers never see.
 */
#include "core/daemon/tiers.h"

#include <errno.h>
#include <stdlib.h>

#include "core/daemon/alert.h"
#include "core/daemon/metrics.h"
#include "core/tier/devcache.h"
#include "core/tier/hostcache.h"

static struct client *client_of(struct tier_client *c)
{
	return (struct client *)c;
}

static int sink_post(void *ctx, struct tier_client *c, const struct wd_cqe *cqe,
		     struct tier_spare **final, const void *data, size_t len)
{
	struct pending *p;
	int ret;

	if (!final)
		return daemon_post(ctx, client_of(c), cqe, NULL, data, len);
	p = (struct pending *)*final;
	ret = daemon_post(ctx, client_of(c), cqe, &p, data, len);
	*final = (struct tier_spare *)p;
	return ret;
}

static void sink_client_get(void *ctx, struct tier_client *c)
{
	daemon_client_get(client_of(c));
}

static void sink_client_put(void *ctx, struct tier_client *c)
{
	daemon_client_put(ctx, client_of(c));
}

/* Under state_lock (struct client: lease and gone are). */
static struct lease *sink_lease_of(void *ctx, struct tier_client *c)
{
	struct client *cl = client_of(c);

	return cl->gone ? NULL : &cl->lease;
}

static int sink_defer(void *ctx, const struct wd_sqe *sqe)
{
	struct job *j = calloc(1, sizeof(*j));
	int ret;

	if (!j)
		return -ENOMEM;
	j->sqe = *sqe;
	ret = daemon_queue_job(ctx, j);
	if (ret)
		free(j);
	return ret;
}

static int sink_model_comps(void *ctx, uint32_t model, uint32_t *first, uint32_t *n)
{
	struct daemon *d = ctx;
	int ret = -ENOENT;

	*first = 0;
	*n = 0;
	pthread_mutex_lock(&d->state_lock);
	if (model < d->n_models) {
		*first = d->models[model].first_comp;
		*n = d->models[model].n_comps;
		ret = d->models[model].stale ? -ESTALE : 0;
	}
	pthread_mutex_unlock(&d->state_lock);
	return ret;
}

static void sink_load_done(void *ctx, const struct tier_load_note *note)
{
	struct daemon *d = ctx;

	metrics_note_load(d->reg, note->tier, note->ns);
	if (note->tier == WD_TIER_HOST && note->whole_stored)
		alert_note_load(d, note->ckey, note->bytes, note->ns);
}

static void sink_device_error(void *ctx)
{
	struct daemon *d = ctx;

	metrics_note_device_error(d->reg);
}

void daemon_tier_env(struct daemon *d, struct tier_env *env)
{
	*env = (struct tier_env){
		.reg = d->reg,
		.view = &d->view,
		.state_lock = &d->state_lock,
		.leases = &d->leases,
		.cat = &d->cat,
		.verify = &d->cfg.verify,
		.sink = {
			.ctx = d,
			.post = sink_post,
			.client_get = sink_client_get,
			.client_put = sink_client_put,
			.lease_of = sink_lease_of,
			.defer = sink_defer,
			.model_comps = sink_model_comps,
			.load_done = sink_load_done,
			.device_error = sink_device_error,
		},
	};
}

void daemon_host_config(const struct daemon *d, struct hostcache_config *hcfg)
{
	*hcfg = (struct hostcache_config){
		.budget = d->cfg.host_budget,
		.ttl_ns = d->cfg.host_ttl_ns,
		.prefault = d->cfg.host_prefault,
		.quarantine_after = d->cfg.quarantine_after,
	};
}

void daemon_device_config(const struct daemon *d, struct devcache_config *dcfg)
{
	*dcfg = (struct devcache_config){
		.budget = d->cfg.device_budget,
		.budget_pct = d->cfg.device_budget_pct,
	};
}

void daemon_tier_load_job(struct daemon *d, struct job *j)
{
	struct tier_job tj = { .c = j->c ? tier_client_of(j->c) : NULL,
			       .spare = (struct tier_spare *)j->spare, .sqe = &j->sqe,
			       .arg = j->arg, .arg_len = j->arg_len };

	if (j->sqe.tier != WD_TIER_HOST && d->dc)
		devcache_load_job(d->dc, &tj);
	else
		hostcache_load_job(d->hc, &tj);
	j->spare = (struct pending *)tj.spare;
}
