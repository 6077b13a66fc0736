/*
 * Host -> VRAM copies, on the device thread: through the GPU's page-locked staging ring, or in
 * chunks on its own stream when it has none (dev_copy_in()); with F32 tensors converted by
 * the GPU through a scratch area in the allocation (dev_convert_in()); and the progress
 * completions and registry progress they report.
 */
#include "core/tier/dev_internal.h"

#include <stdio.h>

#include "gpu/staging.h"

/* @done of @total bytes of @e are on the GPU: a progress completion to each requester that
 * wants them, and the registry's progress of the component on this tier. */
static void post_progress(struct devcache *dc, struct dentry *e, uint64_t done, uint64_t total)
{
	pthread_mutex_lock(&dc->lock);
	for (uint32_t i = 0; i < e->n_waiters; i++) {
		struct tier_request *r = e->waiters[i];
		struct wd_cqe cqe = { .user_data = r->user_data, .flags = WD_CQE_F_PROGRESS,
				      .aux0 = done, .aux1 = total };

		if (!(r->flags & WD_SQE_F_NO_PROGRESS))
			dc->env.sink.post(dc->env.sink.ctx, r->c, &cqe, NULL, NULL, 0);
	}
	pthread_mutex_unlock(&dc->lock);
	pthread_mutex_lock(dc->env.state_lock);
	registry_set_progress(dc->env.reg, e->comp, WD_TIER_CUDA((uint32_t)e->g->ordinal), done,
			      total);
	pthread_mutex_unlock(dc->env.state_lock);
}

void dev_staging_progress(void *arg, uint64_t done, uint64_t total)
{
	struct progress_arg *pa = arg;

	post_progress(pa->dc, pa->e, done, total);
}

/*
 * Host -> VRAM: @n bytes of @src (in the host cache arena, which is not page-locked: pinning
 * all of it at start would fault in and lock the whole budget, and would defeat the NUMA
 * placement of its extents) to @dptr, staged through the ring's page-locked slots, or in
 * chunks on the device's own stream, from pageable memory, when it has no ring.
 */
int dev_copy_in(struct devcache *dc, struct dentry *e, uint64_t dptr, const uint8_t *src,
		uint64_t n, char *msg)
{
	const struct gpu_ops *ops = dc->ops;
	struct dgpu *g = e->g;
	char why[STAGING_MSG_MAX] = "";
	int ret = 0;

	if (g->st) {
		struct progress_arg pa = { dc, e };
		struct staging_host_copy c = { .src = src, .len = n, .dst = dptr };

		ret = staging_copy_host(g->st, &c, 1, &(struct staging_call){
						.progress = dev_staging_progress, .arg = &pa },
					why, sizeof(why));
		if (ret)
			snprintf(msg, WD_DATA_SLOT_SIZE, "%.60s: copy to cuda:%d: %.150s", e->key,
				 g->ordinal, why);
		return ret;
	}
	for (uint64_t off = 0; off < n && !ret;) {
		uint64_t len = n - off < COPY_CHUNK ? n - off : COPY_CHUNK;
		struct gpu_event *ev = NULL;

		ret = ops->copy_h2d(g->dev, g->stream, dptr + off, src + off, len, why, sizeof(why));
		if (!ret)
			ret = ops->event_record(g->dev, g->stream, &ev, why, sizeof(why));
		if (!ret)
			ret = ops->event_wait(g->dev, ev, why, sizeof(why));
		if (ev)
			ops->event_destroy(g->dev, ev);
		off += len;
		if (!ret)
			post_progress(dc, e, off, n);
	}
	if (ret)
		snprintf(msg, WD_DATA_SLOT_SIZE, "%.60s: copy to cuda:%d: %.150s", e->key,
			 g->ordinal, why);
	return ret;
}

/* Waits for everything queued on @g's own stream. */
static int stream_wait(struct devcache *dc, struct dgpu *g, char *why, size_t why_size)
{
	const struct gpu_ops *ops = dc->ops;
	struct gpu_event *ev = NULL;
	int ret = ops->event_record(g->dev, g->stream, &ev, why, why_size);

	if (!ret)
		ret = ops->event_wait(g->dev, ev, why, why_size);
	if (ev)
		ops->event_destroy(g->dev, ev);
	return ret;
}

/*
 * @n bytes of host memory to @dst, complete when this returns with a ring (staged through its
 * slots), queued on @g's own stream without one (then from pageable memory).
 */
static int host_copy(struct devcache *dc, struct dgpu *g, uint64_t dst, const uint8_t *src,
		     uint64_t n, char *why, size_t why_size)
{
	if (g->st)
		return staging_copy_host(g->st, &(struct staging_host_copy){
						 .src = src, .len = n, .dst = dst }, 1, NULL,
					 why, why_size);
	return dc->ops->copy_h2d(g->dev, g->stream, dst, src, n, why, why_size);
}

/*
 * Host -> VRAM with conversion, all on the device's stream (in order, so the scratch area
 * is reused only after the conversion that reads it has run): each F32 tensor is copied as
 * stored into the scratch area, from the page-locked host copy (the pinned fast path), in
 * pieces of at most @scratch bytes, and converted by the GPU into its place in @cl; the
 * other tensors are copied to their place as they are. Device thread.
 */
int dev_convert_in(struct devcache *dc, struct dentry *e, const struct gpu_vram *v,
		   const struct hostcache_layout *l, const struct hostcache_layout *cl,
		   uint64_t scratch_off, uint64_t scratch, char *msg)
{
	const struct gpu_ops *ops = dc->ops;
	struct dgpu *g = e->g;
	struct gpu_event *ev = NULL;
	const uint8_t *base = l->base;
	char why[STAGING_MSG_MAX] = "";
	int ret = 0;

	for (uint32_t i = 0; i < l->n_t && !ret; i++) {
		const struct hostcache_tensor *t = &l->t[i];
		uint64_t dst = v->dptr + cl->t[i].off;

		if (!dev_converts(t, e->conv)) {
			ret = host_copy(dc, g, dst, base + t->off, t->nbytes, why, sizeof(why));
			continue;
		}
		for (uint64_t done = 0; done < t->nbytes && !ret;) {
			uint64_t len = t->nbytes - done < scratch ? t->nbytes - done : scratch;

			/* The conversion queued before must have read the scratch area. */
			if (done || i)
				ret = stream_wait(dc, g, why, sizeof(why));
			if (!ret)
				ret = host_copy(dc, g, v->dptr + scratch_off, base + t->off + done,
						len, why, sizeof(why));
			if (!ret)
				ret = ops->convert_f32(g->dev, g->stream, dst + done / 2,
						       v->dptr + scratch_off, len / 4, e->conv, why,
						       sizeof(why));
			done += len;
		}
	}
	/* Wait even after a failure: nothing queued may outlive the allocation or the hold. */
	if (!ops->event_record(g->dev, g->stream, &ev, ret ? NULL : why, ret ? 0 : sizeof(why))) {
		int wret = ops->event_wait(g->dev, ev, ret ? NULL : why, ret ? 0 : sizeof(why));

		if (!ret)
			ret = wret;
		ops->event_destroy(g->dev, ev);
	} else if (!ret) {
		ret = -EIO;
	}
	if (ret)
		snprintf(msg, WD_DATA_SLOT_SIZE, "%.60s: copy and conversion on cuda:%d: %.150s",
			 e->key, g->ordinal, why);
	else
		post_progress(dc, e, cl->size, cl->size);
	return ret;
}
