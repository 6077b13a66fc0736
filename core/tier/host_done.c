/*
 * The host tier's loader callbacks (loader thread): progress, published to the registry and
 * posted to the requesters at most once per PROGRESS_NS; and the completion of a load in
 * named steps: deduplication, admission into the policy, publication, the note to the
 * daemon's metrics and alerts, or the failure and its quarantine; then the requesters'
 * completions and the prefetch of co-accessed components.
 */
#include "core/tier/host_internal.h"

#define PROGRESS_NS (1000 * 1000)	/* at most one progress report per request per 1 ms */

/* The loader's progress callback for load @arg (loader thread): each requester hears of it
 * (unless it asked for no progress or is gone), and the registry shows it for a whole
 * component, each at most once per PROGRESS_NS and always at the end. */
void host_on_progress(void *arg, uint64_t done, uint64_t total)
{
	struct load *ld = arg;
	struct hostcache *hc = ld->hc;
	uint64_t now = wd_now_ns(), delta;

	pthread_mutex_lock(&hc->lock);
	delta = done > ld->done ? done - ld->done : 0;
	ld->done = done;
	for (uint32_t i = 0; i < ld->n_reqs; i++) {
		struct req *r = ld->reqs[i];
		struct wd_cqe cqe = { .user_data = r->q.user_data, .flags = WD_CQE_F_PROGRESS };

		r->done += delta;
		if ((r->q.flags & WD_SQE_F_NO_PROGRESS) || r->orphan ||
		    (now - r->last_post_ns < PROGRESS_NS && r->done < r->total))
			continue;
		r->last_post_ns = now;
		cqe.aux0 = r->done;
		cqe.aux1 = r->total;
		hc->env.sink.post(hc->env.sink.ctx, r->q.c, &cqe, NULL, NULL, 0);
	}
	if (now - ld->last_pub_ns >= PROGRESS_NS || done == total) {
		ld->last_pub_ns = now;
		pthread_mutex_lock(hc->env.state_lock);
		for (uint32_t i = 0; i < ld->e->n_binds; i++)
			if (ld->e->sel == TIER_SEL_ALL)
				registry_set_progress(hc->env.reg, ld->e->binds[i].comp, WD_TIER_HOST,
						      done, total);
		pthread_mutex_unlock(hc->env.state_lock);
	}
	pthread_mutex_unlock(&hc->lock);
}

/* With --verify the loader hashed every tensor as it read it: keep those hashes. */
static void keep_verified_hashes(struct entry *e, const struct load_plan *plan)
{
	if (!(plan->flags & LOAD_F_VERIFY))
		return;
	for (uint32_t i = 0; i < e->n_t; i++)
		e->t[i].xxh3 = plan->tensors[i].xxh3;
	e->hashed = true;
}

/* Identical bytes are resident already (@twin): keep those, drop freshly loaded @e's extent
 * and bind its components to @twin. @e is freed by the caller. */
static void dedup_into(struct hostcache *hc, struct entry *e, struct entry *twin, uint64_t now)
{
	host_unlink_entry(hc, e);
	arena_free(hc->arena, e->off, e->size);
	evict_unreserve(hc->pol, e->size);
	hc->dedup_bytes += e->size;
	for (uint32_t i = 0; i < e->n_binds; i++)
		host_bind_comp(hc, twin, e->binds[i].model, e->binds[i].comp);
	log_info(MOD, "\"deduplicated\" key=\"%s\" into=\"%s\" bytes=%" PRIu64,
		 e->key, twin->key, e->size);
	twin->last_use_ns = now;
}

/* Freshly loaded @e becomes resident: it enters the eviction policy (with the keep-alive in
 * force now, which a reload may have changed, and its load rate), and its component's
 * failures in a row are forgotten. */
static void admit_loaded(struct hostcache *hc, struct entry *e, uint64_t read, uint64_t now,
			 uint64_t ns)
{
	e->resident = true;
	e->last_use_ns = now;
	evict_insert(hc->pol, e->key, e->size, now, e->prefetched);
	evict_set_ttl(hc->pol, e->key, hc->ttl_ns);
	quarantine_ok(hc->q, e->ckey);
	if (ns)
		evict_set_rate(hc->pol, e->key, (double)read * 1e9 / (double)ns);
}

/* Publishes resident @e: its tensors and state for every component bound to it, the host
 * bytes counter and each component's last load. Takes state_lock. */
static void publish_loaded(struct hostcache *hc, const struct entry *e, uint64_t read,
			   uint64_t ns)
{
	pthread_mutex_lock(hc->env.state_lock);
	for (uint32_t i = 0; i < e->n_binds; i++) {
		host_publish_bind(hc, e, &e->binds[i]);
		host_refresh_state(hc, e->binds[i].comp);
	}
	registry_counter_add(hc->env.reg, WD_CTR_HOST_BYTES, (int64_t)e->size);
	for (uint32_t i = 0; i < e->n_binds; i++)
		registry_set_last_load(hc->env.reg, e->binds[i].comp, WD_TIER_HOST, read, ns,
				       wd_wall_ns());
	pthread_mutex_unlock(hc->env.state_lock);
}

/* Tells the daemon (metrics, the slow_load alert) and the log that @e was loaded. */
static void note_loaded(struct hostcache *hc, const struct entry *e, uint64_t read, uint64_t ns)
{
	struct tier_load_note note = { .tier = WD_TIER_HOST, .ckey = e->ckey, .bytes = read,
				       .ns = ns,
				       .whole_stored = e->sel == TIER_SEL_ALL && !e->convert };

	hc->env.sink.load_done(hc->env.sink.ctx, &note);
	log_info(MOD, "\"loaded\" key=\"%s\" bytes=%" PRIu64 " read=%" PRIu64
		 " ms=%.1f gbps=%.2f", e->key, e->size, read, (double)ns / 1e6,
		 ns ? (double)read / (double)ns : 0.0);
}

/*
 * The load @ld succeeded: deduplicated into a resident twin, or made resident and
 * published. Every requester gets the entry's tensor bytes. Sets @prefetch_key (the
 * co-access key whose companions to prefetch) after a requested whole stored-form load.
 * Returns the twin (the caller frees ld->e), or NULL. Under the cache lock.
 */
static struct entry *load_succeeded(struct hostcache *hc, struct load *ld, uint64_t now,
				    uint64_t ns, char *prefetch_key)
{
	struct entry *e = ld->e, *twin;

	keep_verified_hashes(e, ld->plan);
	e->ld = NULL;
	twin = host_find_same_bytes(hc, e);
	if (twin) {
		dedup_into(hc, e, twin, now);
	} else {
		admit_loaded(hc, e, ld->total, now, ns);
		publish_loaded(hc, e, ld->total, ns);
		note_loaded(hc, e, ld->total, ns);
		if (!e->prefetched && e->sel == TIER_SEL_ALL && !e->convert)
			snprintf(prefetch_key, EVICT_KEY_MAX, "%s", e->ckey);
	}
	for (uint32_t i = 0; i < ld->n_reqs; i++)
		ld->reqs[i]->q.bytes += (twin ? twin : e)->tensor_bytes;
	return twin;
}

/*
 * The load @ld failed with @rc (@why): counted toward its component's quarantine, its
 * extent freed, the registry told (a whole-component load that was not cancelled leaves the
 * component failed unless another entry of it is resident), and its requesters failed. The
 * caller frees ld->e. Under the cache lock.
 */
static void load_failed(struct hostcache *hc, struct load *ld, int rc, const char *why)
{
	struct entry *e = ld->e;
	int st_err = rc;

	/* A prefetch counts only once a request joined it (attach_req()). */
	if (recovery_counts_toward_quarantine(rc, !e->prefetched || ld->n_reqs > 0) &&
	    quarantine_fail(hc->q, e->ckey, e->qfp, rc, why))
		st_err = -ENOTRECOVERABLE;
	hc->failed++;
	host_unlink_entry(hc, e);
	arena_free(hc->arena, e->off, e->size);
	evict_unreserve(hc->pol, e->size);
	pthread_mutex_lock(hc->env.state_lock);
	for (uint32_t i = 0; i < e->n_binds; i++) {
		host_refresh_state(hc, e->binds[i].comp);
		if (rc != -ECANCELED && e->sel == TIER_SEL_ALL &&
		    !host_has_resident(hc, e->binds[i].comp))
			registry_set_state(hc->env.reg, e->binds[i].comp, WD_TIER_HOST,
					   WD_STATE_FAILED, st_err);
	}
	pthread_mutex_unlock(hc->env.state_lock);
	for (uint32_t i = 0; i < ld->n_reqs; i++)
		host_req_fail(ld->reqs[i], rc, why);
}

/*
 * The loader's completion callback (loader thread): the named steps above, then every
 * requester's share of the load ends (the last one posts its completion), and after a
 * requested whole load its co-accessed companions are prefetched (outside the lock).
 */
void host_on_done(void *arg, struct load_handle *h)
{
	struct load *ld = arg;
	struct hostcache *hc = ld->hc;
	struct entry *e = ld->e, *twin = NULL;
	int rc = load_wait(h, 0);
	uint64_t now = wd_now_ns(), ns = load_elapsed_ns(h);
	char key[EVICT_KEY_MAX] = "";

	pthread_mutex_lock(&hc->lock);
	if (rc == 0)
		twin = load_succeeded(hc, ld, now, ns, key);
	else
		load_failed(hc, ld, rc, load_error(h));
	for (uint32_t i = 0; i < ld->n_reqs; i++)
		host_req_done_one(hc, ld->reqs[i]);
	if (twin || rc)
		host_free_entry(e);
	pthread_mutex_unlock(&hc->lock);
	loader_plan_free(ld->plan);
	load_put(h);
	free(ld->reqs);
	free(ld);
	if (key[0])
		host_queue_prefetch(hc, key);
}
