/*
 * The device tier's life: parsing --device-budget, and creating (the device thread, which
 * opens the GPUs: dev_open.c), stopping and destroying the tier. The model, the threads and the flow
 * of a load are in core/tier/devcache.h; the locks at struct devcache in
 * core/tier/dev_internal.h.
 */
#include "core/tier/dev_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/log.h"
#include "core/policy/placement.h"
#include "gpu/staging.h"

int devcache_parse_budget(const char *s, uint64_t *bytes, unsigned int *pct)
{
	size_t len = s ? strlen(s) : 0;

	*bytes = 0;
	*pct = 0;
	if (!len)
		return -EINVAL;
	if (s[len - 1] == '%') {
		char *end;
		unsigned long v;

		errno = 0;
		v = strtoul(s, &end, 10);
		if (end != s + len - 1 || end == s || errno || v < 1 || v > 100)
			return -EINVAL;
		*pct = (unsigned int)v;
		return 0;
	}
	return wd_parse_bytes(s, bytes);
}

int devcache_create(const struct tier_env *env, const struct devcache_config *cfg,
		    struct hostcache *hc, struct devcache **out)
{
	struct devcache *dc = calloc(1, sizeof(*dc));
	int ret;

	*out = dc;
	if (!dc)
		return -ENOMEM;
	dc->env = *env;
	dc->cfg = *cfg;
	dc->hc = hc;
	pthread_mutex_init(&dc->lock, NULL);
	pthread_mutex_init(&dc->qlock, NULL);
	pthread_cond_init(&dc->qcond, NULL);
	ret = pthread_create(&dc->thread, NULL, dev_thread_main, dc);
	if (ret)
		return -ret;
	dc->started = true;
	pthread_mutex_lock(&dc->qlock);
	while (!dc->ready)
		pthread_cond_wait(&dc->qcond, &dc->qlock);
	pthread_mutex_unlock(&dc->qlock);
	if (!dc->n)
		log_info(MOD, "\"GPU tier not available: host-only\" why=\"%s\"", dc->why);
	return 0;
}

unsigned int devcache_count(const struct devcache *dc)
{
	return dc ? dc->n : 0;
}

void devcache_stop(struct devcache *dc)
{
	if (!dc || !dc->started)
		return;
	pthread_mutex_lock(&dc->qlock);
	dc->stop = true;
	pthread_cond_broadcast(&dc->qcond);
	pthread_mutex_unlock(&dc->qlock);
	pthread_join(dc->thread, NULL);
	dc->started = false;
}

void devcache_destroy(struct devcache *dc)
{
	if (!dc)
		return;
	devcache_stop(dc);
	for (unsigned int i = 0; i < dc->n; i++) {
		struct dgpu *g = &dc->g[i];
		void *saved = NULL;
		char why[160];

		/* On the caller's thread: each GPU's context around its own frees. */
		if (dc->ops->ctx_enter(g->dev, &saved, why, sizeof(why)))
			log_error(MOD, "\"cannot make the GPU's context current\" ordinal=%d "
				  "why=\"%s\"", g->ordinal, why);
		for (struct dentry **pp = &dc->entries; *pp;) {
			struct dentry *e = *pp;

			if (e->g != g) {
				pp = &e->next;
				continue;
			}
			*pp = e->next;
			if (e->resident && !e->owner)	/* an alias shares its owner's allocation */
				dc->ops->vram_free(e->g->dev, &e->v);
			dev_free_entry(e);
		}
		staging_destroy(g->st);
		dc->ops->stream_destroy(g->dev, g->stream);
		dc->ops->ctx_leave(g->dev, saved);
		evict_destroy(g->pol);
		dc->ops->close(g->dev);
	}
	while (dc->entries) {
		struct dentry *e = dc->entries;

		dc->entries = e->next;
		dev_free_entry(e);
	}
	pthread_cond_destroy(&dc->qcond);
	pthread_mutex_destroy(&dc->qlock);
	pthread_mutex_destroy(&dc->lock);
	free(dc);
}
