/*
 * The device thread and its queue. The thread opens the GPUs and is, after that, the only
 * thread that calls gpu_ops: every item of its queue (struct dwork) runs in its GPU's context.
 * Items come from the host tier's completion callback (dev_host_ready(): fill an entry from
 * its host copy), from the worker (stream a component from disk), from UNLOAD (free an
 * allocation: dev_free_later()) and from DEVICE_TRIM (demote and free what it evicted).
 */
#include "core/tier/dev_internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/log.h"

void dev_queue_work(struct devcache *dc, struct dwork *w)
{
	pthread_mutex_lock(&dc->qlock);
	if (dc->qtail)
		dc->qtail->next = w;
	else
		dc->qhead = w;
	dc->qtail = w;
	pthread_cond_signal(&dc->qcond);
	pthread_mutex_unlock(&dc->qlock);
}

/* Hands @v to the device thread to be freed (only that thread calls gpu_ops). */
void dev_free_later(struct devcache *dc, struct dgpu *g, struct gpu_vram *v)
{
	struct dwork *w = calloc(1, sizeof(*w));

	if (!w) {
		/* Leaking the allocation is better than freeing it on a foreign thread. */
		log_error(MOD, "\"VRAM allocation leaked: out of memory\" bytes=%" PRIu64, v->size);
		return;
	}
	w->free_vram = true;
	w->g = g;
	w->v = *v;
	memset(v, 0, sizeof(*v));
	v->fd = -1;
	dev_queue_work(dc, w);
}

/* Runs work item @w in its GPU's context, then frees it. Device thread, no lock held. */
static void run_item(struct devcache *dc, struct dwork *w)
{
	/* Every device operation of this item runs in its GPU's context. */
	struct dgpu *g = w->free_vram || w->trim ? w->g : w->e->g;
	void *saved = NULL;
	char why[160];

	if (dc->ops->ctx_enter(g->dev, &saved, why, sizeof(why)))
		log_error(MOD, "\"cannot make the GPU's context current\" ordinal=%d why=\"%s\"",
			  g->ordinal, why);
	if (w->trim) {
		/* Even when stopping: the shard waits for it. */
		dev_evict_finish(dc, w->evicted);
		pthread_mutex_lock(&w->trim->lock);
		w->trim->done = true;
		pthread_cond_signal(&w->trim->cond);
		pthread_mutex_unlock(&w->trim->lock);
	} else if (w->free_vram) {
		dc->ops->vram_free(w->g->dev, &w->v);
	} else if (w->stream && !dc->stop) {
		dev_stream_fill(dc, w->e, w);
	} else if (dc->stop || w->stream) {
		dev_fill(dc, w->e, -ECANCELED, "load: the daemon is shutting down", 0, NULL);
	} else {
		dev_fill(dc, w->e, w->err, w->msg, w->read_bytes, w->held ? &w->l : NULL);
	}
	if (w->held && w->l.key[0]) {
		/* Not consumed (shutdown): give the hold back. */
		hostcache_unhold(dc->hc, &w->l);
	}
	free(w->l.t);
	hostcache_src_free(w->src, w->l.n_t);
	free(w);
	dc->ops->ctx_leave(g->dev, saved);
}

/* The device thread (@arg: the tier): opens the GPUs, reports ready, then runs the queue in
 * order until devcache_stop(); what is queued when it stops still runs (loads fail with
 * -ECANCELED, trims finish). */
void *dev_thread_main(void *arg)
{
	struct devcache *dc = arg;

	dev_open_devices(dc);
	pthread_mutex_lock(&dc->qlock);
	dc->ready = true;
	pthread_cond_broadcast(&dc->qcond);
	for (;;) {
		struct dwork *w;

		while (!dc->qhead && !dc->stop)
			pthread_cond_wait(&dc->qcond, &dc->qlock);
		w = dc->qhead;
		if (!w)
			break;
		dc->qhead = w->next;
		if (!dc->qhead)
			dc->qtail = NULL;
		pthread_mutex_unlock(&dc->qlock);
		run_item(dc, w);
		pthread_mutex_lock(&dc->qlock);
	}
	pthread_mutex_unlock(&dc->qlock);
	return NULL;
}

/* hostcache_then_fn: runs under the host cache's lock, so it only queues. */
void dev_host_ready(void *ctx, void *arg, int err, const char *msg,
		    uint64_t read_bytes, struct hostcache_layout *held)
{
	struct devcache *dc = ctx;
	struct dwork *w = calloc(1, sizeof(*w));

	if (!w) {
		/* Under the cache lock, so the hold cannot be given back here: the host entry
		 * stays unevictable, and the device entry stays loading with its requesters
		 * unanswered. A failed allocation this small means the daemon is going down. */
		if (held)
			free(held->t);
		log_error(MOD, "\"device load lost: out of memory\"");
		return;
	}
	w->e = arg;
	w->err = err;
	w->read_bytes = read_bytes;
	if (held) {
		w->l = *held;
		w->held = true;
	}
	snprintf(w->msg, sizeof(w->msg), "%s", err && msg ? msg : "");
	dev_queue_work(dc, w);
}
