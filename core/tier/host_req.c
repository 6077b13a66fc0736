/*
 * The end of a host-tier request: one of its loads finished (host_req_done_one(); the last
 * one finishes the request), or it failed (host_req_fail()). A client's request gets its
 * final completion through the sink (tier_req_finish()); the device tier's request
 * (hostcache_load_for()) gets its `then` callback with the entry held. The load pipeline
 * (host_load.c) and the loader's callbacks (host_done.c) both end requests here; this file
 * calls neither. Callers hold the cache lock.
 */
#include "core/tier/host_internal.h"

/* Posts @r's final completion and frees it. Under the cache lock. */
static void finish_req(struct hostcache *hc, struct req *r)
{
	if (r->then) {
		struct hostcache_layout l;
		int err = r->q.err;

		/* Held now, under the lock that made it resident: no eviction can come between. */
		if (!err && (err = host_hold_locked(hc, r->q.pin.component, &l)))
			snprintf(r->q.msg, sizeof(r->q.msg), "load: component %u went from the host "
				 "cache before it could be held (%s)", r->q.pin.component,
				 strerror(-err));
		r->then(r->then_ctx, r->then_arg, err, r->q.msg, r->q.read_bytes,
			err ? NULL : &l);
		hc->env.sink.client_put(hc->env.sink.ctx, r->q.c);
		free(r->q.spare);
		free(r);
		return;
	}
	tier_req_finish(&hc->env, &r->q);
	free(r);
}

void host_req_fail(struct req *r, int err, const char *msg)
{
	tier_req_fail(&r->q, err, msg);
}

/* One of @r's loads ended (or its fan-out did): the last one finishes it. Under the lock. */
void host_req_done_one(struct hostcache *hc, struct req *r)
{
	if (tier_req_done_one(&r->q))
		finish_req(hc, r);
}
