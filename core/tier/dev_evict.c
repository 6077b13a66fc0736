/*
 * Room on a GPU: admission of a new entry against the GPU's budget (dev_admit()), the VRAM
 * allocation under the recovery policy (dev_alloc_vram(): evict and retry once), and
 * eviction in two steps, dev_evict_detach() under the tier's lock and dev_evict_finish()
 * without it, which demotes each victim to the host tier (device -> host copy) when the host
 * no longer holds it and frees its VRAM.
 */
#include "core/tier/dev_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/base/fault.h"
#include "core/base/log.h"
#include "core/policy/recovery.h"

/*
 * Copies resident entry @e back into a new host cache entry when the host tier no longer
 * holds the component. The host extent is reserved first (hostcache_adopt_reserve(): room
 * without evicting), so that nothing is copied off the GPU that the host cannot keep; the
 * bytes then go device -> host straight into it. On the device thread (copy_d2h). Failure
 * only costs a disk read later.
 */
static void demote(struct devcache *dc, struct dentry *e)
{
	char why[160] = "", hmsg[WD_DATA_SLOT_SIZE] = "";
	void *dst = NULL;
	int ret;

	/* A converted copy or a selection cannot rebuild the stored form the host tier keeps. */
	if (e->conv || e->sel || hostcache_has(dc->hc, e->comp))
		return;
	ret = hostcache_adopt_reserve(dc->hc, &e->l, &dst, hmsg, sizeof(hmsg));
	if (ret == -EEXIST)
		return;
	if (ret) {
		log_info(MOD, "\"not demoted: no room on the host, dropped without copying\" "
			 "key=\"%s\" bytes=%" PRIu64 " err=%d why=\"%s\"", e->key, e->l.size, ret,
			 hmsg);
		return;
	}
	ret = dc->ops->copy_d2h(e->g->dev, dst, e->v.dptr, e->l.size, why, sizeof(why));
	if (ret)
		hostcache_adopt_cancel(dc->hc, &e->l, dst);
	else
		ret = hostcache_adopt_commit(dc->hc, &e->l, e->model, e->comp, dst);
	log_info(MOD, "\"demotion to the host\" key=\"%s\" bytes=%" PRIu64 " err=%d%s%s",
		 e->key, e->l.size, ret, why[0] ? " why=" : "", why);
}

/*
 * Evicts resident owner @e, in two steps, so that the device -> host copy of a demotion does
 * not hold dc->lock (the shards' DEVICE_MAP, DEVICES and LOAD hits take it):
 * dev_evict_detach(), under dc->lock, takes it out of the list, the registry and the policy
 * (nothing can find or map it any more) and puts it on *@later; dev_evict_finish(), on the
 * device thread without dc->lock, demotes each entry of that list, frees its VRAM and the
 * entry. Between the two the policy no longer counts its bytes while the GPU still holds
 * them: the callers re-read mem_info after dev_evict_finish() for that reason.
 */
void dev_evict_detach(struct devcache *dc, struct dentry *e, struct dentry **later)
{

	/* The policy let it go, so no pin covers any alias either: they go with it. */
	for (struct dentry *x = dc->entries, *next; x && e->n_aliases; x = next) {
		next = x->next;
		if (x->owner != e)
			continue;
		dev_unlink_entry(dc, x);
		dev_set_state(dc, x, WD_STATE_ABSENT, 0);
		log_info(MOD, "\"dropped with its owner\" key=\"%s\" owner=\"%s\"", x->key,
			 e->key);
		e->n_aliases--;
		dev_free_entry(x);
	}
	dev_unlink_entry(dc, e);
	dev_set_state(dc, e, WD_STATE_ABSENT, 0);
	evict_remove(e->g->pol, e->key, true);
	log_info(MOD, "\"evicted\" key=\"%s\" bytes=%" PRIu64, e->key, e->size);
	e->next = *later;
	*later = e;
}

void dev_evict_finish(struct devcache *dc, struct dentry *list)
{
	while (list) {
		struct dentry *e = list;

		list = e->next;
		demote(dc, e);
		dc->ops->vram_free(e->g->dev, &e->v);
		dev_free_entry(e);
	}
}

int64_t dev_evict_until(struct devcache *dc, struct dgpu *g, uint64_t bytes,
			struct dentry **later, unsigned int *n)
{
	uint64_t now = wd_now_ns();
	char key[EVICT_KEY_MAX];
	int64_t freed = 0;

	dev_sync_pins(dc);
	while ((uint64_t)freed < bytes && !evict_next_victim(g->pol, now, key)) {
		struct dentry *x = dev_find_key(dc, g, key);

		if (!x) {
			evict_remove(g->pol, key, true);
			continue;
		}
		freed += (int64_t)x->size;
		dev_evict_detach(dc, x, later);
		if (n)
			(*n)++;
	}
	return freed;
}

/*
 * Admission of @bytes on @g for @e: refused at once when it can never fit (-EFBIG), else
 * unpinned, unmapped entries are evicted by score until the policy has room, and the GPU's
 * free memory is re-read (frees land late) until the allocation can be made. Device thread.
 */
int dev_admit(struct devcache *dc, struct dgpu *g, struct dentry *e, uint64_t bytes, char *msg)
{
	struct evict_victims v;
	struct dentry *later = NULL;
	uint64_t now = wd_now_ns(), free_b = 0, total_b = 0;
	char name[EVICT_KEY_MAX];
	int ret;

	snprintf(name, sizeof(name), "%s", strchr(e->key, '/') ? strchr(e->key, '/') + 1 : e->key);
	pthread_mutex_lock(&dc->lock);
	dev_sync_pins(dc);
	ret = evict_admit(g->pol, name, bytes, now, &v, msg, WD_DATA_SLOT_SIZE);
	if (ret) {
		pthread_mutex_unlock(&dc->lock);
		return ret;
	}
	for (size_t i = 0; i < v.n; i++) {
		struct dentry *x = dev_find_key(dc, g, v.keys[i]);

		if (x)
			dev_evict_detach(dc, x, &later);
		else
			evict_remove(g->pol, v.keys[i], true);
	}
	evict_victims_free(&v);
	pthread_mutex_unlock(&dc->lock);
	dev_evict_finish(dc, later);
	for (int i = 0; i < MEMINFO_TRIES; i++) {
		char why[160];

		ret = dc->ops->mem_info(g->dev, &free_b, &total_b, why, sizeof(why));
		if (ret) {
			snprintf(msg, WD_DATA_SLOT_SIZE, "cuda:%d: %s", g->ordinal, why);
			break;
		}
		if (free_b >= bytes)
			return 0;
		usleep(10000);
	}
	if (!ret) {
		ret = -ENOSPC;
		snprintf(msg, WD_DATA_SLOT_SIZE, "component %.100s needs %" PRIu64 " bytes, cuda:%d "
			 "has %" PRIu64 " free (other processes use the rest)", name, bytes,
			 g->ordinal, free_b);
	}
	pthread_mutex_lock(&dc->lock);
	evict_unreserve(g->pol, bytes);
	pthread_mutex_unlock(&dc->lock);
	return ret;
}

/* What recovery_alloc_retry() works on for one VRAM allocation (dev_alloc_vram()). */
struct valloc_ctx {
	struct devcache *dc;
	struct dgpu *g;
	uint64_t size;
	struct gpu_vram *v;
	char why[160];
};

static int try_vram(void *arg)
{
	struct valloc_ctx *a = arg;
	int err = fault_take(FAULT_VRAM);

	if (err) {
		snprintf(a->why, sizeof(a->why), "vram_alloc: injected fault (%s)", FAULT_ENV);
		return -err;
	}
	return a->dc->ops->vram_alloc(a->g->dev, a->size, a->v, a->why, sizeof(a->why));
}

/*
 * The allocation failed with @err: evicts unpinned, unmapped entries of the GPU, highest
 * score first, until @bytes were freed or nothing is left, then re-reads mem_info until the
 * GPU reports the room (frees land late). Device thread. Returns the bytes evicted.
 */
static int64_t evict_vram(void *arg, uint64_t bytes, int err)
{
	struct valloc_ctx *a = arg;
	struct devcache *dc = a->dc;
	uint64_t free_b = 0, total_b = 0;
	char why[160];
	struct dentry *later = NULL;
	int64_t freed;

	(void)err;
	pthread_mutex_lock(&dc->lock);
	freed = dev_evict_until(dc, a->g, bytes, &later, NULL);
	pthread_mutex_unlock(&dc->lock);
	dev_evict_finish(a->dc, later);
	for (int i = 0; freed && i < MEMINFO_TRIES; i++) {
		if (dc->ops->mem_info(a->g->dev, &free_b, &total_b, why, sizeof(why)) ||
		    free_b >= bytes)
			break;
		usleep(10000);
	}
	return freed;
}

/*
 * Allocates @size bytes of VRAM on @g for @e under the recovery policy (core/policy/recovery.h): an
 * allocation that fails with -ENOMEM/-ENOSPC evicts unpinned, unmapped entries of the GPU and
 * is retried once. The FAULT_VRAM injection point is here. Returns 0, or the error with @msg
 * naming the entry, the bytes and what eviction achieved. Device thread.
 */
int dev_alloc_vram(struct devcache *dc, struct dgpu *g, struct dentry *e, uint64_t size,
		   struct gpu_vram *v, char *msg)
{
	struct valloc_ctx a = { .dc = dc, .g = g, .size = size, .v = v };
	char tier[16], rmsg[WD_DATA_SLOT_SIZE] = "";
	int ret;

	snprintf(tier, sizeof(tier), "cuda:%d", g->ordinal);
	ret = recovery_alloc_retry(&(struct recovery_alloc){
		.tier = tier, .name = e->key, .what = "VRAM", .bytes = size,
		.try_alloc = try_vram, .evict = evict_vram, .arg = &a }, rmsg, sizeof(rmsg));
	if (ret && rmsg[0])
		snprintf(msg, WD_DATA_SLOT_SIZE, "%.190s; %.60s", rmsg, a.why);
	else if (ret)
		snprintf(msg, WD_DATA_SLOT_SIZE, "%.60s: cuda:%d: %.150s", e->key, g->ordinal,
			 a.why);
	return ret;
}
