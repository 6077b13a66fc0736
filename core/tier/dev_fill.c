/*
 * Filling a device entry, on the device thread: from its held host entry (dev_fill(): the
 * layout of its form, an alias when the same content is resident already, admission,
 * allocation, the copy), or from disk through the staging ring for a component larger than
 * the host budget (dev_stream_fill()); then make_resident() publishes it and answers its
 * requesters. A failure fails the entry and its requesters (dev_fail_entry()).
 */
#include "core/tier/dev_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/base/file.h"
#include "core/base/log.h"
#include "core/daemon/metrics.h"
#include "gpu/staging.h"

/*
 * The copy into @v (@size bytes, from layout @l, which @e takes over) is complete: @e becomes
 * resident and its requesters are answered. Device thread.
 */
static void make_resident(struct daemon *d, struct dentry *e, struct hostcache_layout *l,
			  const struct gpu_vram *v, uint64_t size, uint64_t t0, uint64_t read_bytes)
{
	struct devcache *dc = d->dc;
	struct dgpu *g = e->g;
	uint64_t now;

	/* The device copy has the host entry's layout: keep it for the tensor offsets. */
	e->l = *l;
	l->t = NULL;
	e->tensor_bytes = e->l.tensor_bytes;
	pthread_mutex_lock(&dc->lock);
	now = wd_now_ns();
	e->v = *v;
	e->size = size;
	e->resident = true;
	g->load_bytes += size;
	evict_insert(g->pol, e->key, size, now, false);
	if (now > t0)
		evict_set_rate(g->pol, e->key, (double)size * 1e9 / (double)(now - t0));
	dev_set_state(d, e, WD_STATE_RESIDENT, 0);
	/* The load histogram of cuda:N and the component's last load (/metrics, `weightctl
	 * top`): one observation per device load, from the start of the copy to resident. */
	pthread_mutex_lock(&d->state_lock);
	metrics_note_load(d->reg, WD_TIER_CUDA((uint32_t)g->ordinal), now - t0);
	registry_set_last_load(d->reg, e->comp, WD_TIER_CUDA((uint32_t)g->ordinal), e->l.size,
			       now - t0, wd_wall_ns());
	pthread_mutex_unlock(&d->state_lock);
	for (uint32_t i = 0; i < e->n_waiters; i++) {
		e->waiters[i]->bytes += e->tensor_bytes;
		e->waiters[i]->read_bytes += read_bytes;
		dev_req_done_one(d, e->waiters[i]);
	}
	e->n_waiters = 0;
	pthread_mutex_unlock(&dc->lock);
	log_info(MOD, "\"resident\" key=\"%s\" bytes=%" PRIu64 " read=%" PRIu64 " ms=%.1f",
		 e->key, size, read_bytes, (double)(now - t0) / 1e6);
}

/* The host load of @e ended with @err: copy it to the GPU and complete its requesters. */
void dev_fill(struct daemon *d, struct dentry *e, int err, const char *hmsg,
		 uint64_t read_bytes, struct hostcache_layout *held)
{
	struct devcache *dc = d->dc;
	struct dgpu *g = e->g;
	struct hostcache_layout l = { 0 }, cl = { 0 };
	struct gpu_vram v = { .fd = -1 };
	char msg[WD_DATA_SLOT_SIZE] = "";
	uint64_t t0 = wd_now_ns(), gran, size, need, scratch_off = 0, scratch = 0;
	int ret = err;

	if (ret) {
		snprintf(msg, sizeof(msg), "%s", hmsg);
		goto fail;
	}
	if (held) {
		l = *held;
		memset(held, 0, sizeof(*held));
	} else {
		ret = hostcache_hold(d, e->comp, &l);
	}
	if (ret) {
		snprintf(msg, sizeof(msg), "%.150s: the host copy went before the GPU copy could start "
			 "(retry)", e->key);
		ret = -EAGAIN;
		goto fail;
	}
	gran = dc->ops->granularity(g->dev);
	need = l.size;
	if (e->sel) {
		struct hostcache_layout sl;

		/* From here on @l describes the selected tensors only; the hold is the
		 * extent's, which the copy keeps. */
		ret = dev_select_layout(d, e, &l, &sl, msg);
		if (ret) {
			hostcache_unhold(d, &l);
			free(l.t);
			goto fail;
		}
		free(l.t);
		l.t = sl.t;
		l.n_t = sl.n_t;
		l.tensor_bytes = sl.tensor_bytes;
	}
	if (e->conv || e->sel) {
		/* A compact layout of its own; with conv 0 nothing is converted and the
		 * scratch area is empty. */
		ret = dev_convert_layout(&l, e->conv, &cl, &scratch_off, &scratch);
		if (ret) {
			snprintf(msg, sizeof(msg), "%.150s: out of memory", e->key);
			hostcache_unhold(d, &l);
			free(l.t);
			goto fail;
		}
		need = scratch_off + scratch;
	}
	{
		/* The same content (one host entry) already on this GPU in this form, for
		 * another model's component: share its allocation instead of a second copy. */
		struct dentry *twin;

		pthread_mutex_lock(&dc->lock);
		twin = dev_find_twin(dc, e, l.id);
		if (twin)
			dev_alias_resident(d, e, twin, e->conv || e->sel ? &cl : &l, read_bytes);
		pthread_mutex_unlock(&dc->lock);
		if (twin) {
			hostcache_unhold(d, &l);
			free(l.t);
			free(cl.t);
			return;
		}
	}
	size = gran ? (need + gran - 1) / gran * gran : need;
	ret = dev_admit(d, g, e, size, msg);
	if (!ret) {
		ret = dev_alloc_vram(d, g, e, size, &v, msg);
		if (ret) {
			metrics_note_device_error(d->reg);
			pthread_mutex_lock(&dc->lock);
			evict_unreserve(g->pol, size);
			pthread_mutex_unlock(&dc->lock);
		}
	}
	if (!ret) {
		ret = e->conv || e->sel ?
		      dev_convert_in(d, e, &v, &l, &cl, scratch_off, scratch, msg) :
		      dev_copy_in(d, e, v.dptr, l.base, l.size, msg);
		if (ret) {
			metrics_note_device_error(d->reg);
			dc->ops->vram_free(g->dev, &v);
			pthread_mutex_lock(&dc->lock);
			evict_unreserve(g->pol, size);
			pthread_mutex_unlock(&dc->lock);
		}
	}
	hostcache_unhold(d, &l);
	if (ret) {
		free(l.t);
		free(cl.t);
		goto fail;
	}
	if (e->conv || e->sel) {
		/* The device copy's own layout; the host entry's table is no longer needed. */
		free(l.t);
		l = cl;
	}
	make_resident(d, e, &l, &v, size, t0, read_bytes);
	return;
fail:
	pthread_mutex_lock(&dc->lock);
	dev_fail_entry(d, e, ret, msg);
	pthread_mutex_unlock(&dc->lock);
}

/*
 * Disk -> VRAM through the staging ring, for a component the host budget cannot take: the
 * same layout a host entry would have, read from the files that w->src names. Device thread.
 */
void dev_stream_fill(struct daemon *d, struct dentry *e, struct dwork *w)
{
	struct devcache *dc = d->dc;
	struct dgpu *g = e->g;
	struct gpu_vram v = { .fd = -1 };
	struct staging_transfer *t = NULL;
	int *fds = NULL;
	char msg[WD_DATA_SLOT_SIZE] = "", why[STAGING_MSG_MAX] = "";
	uint64_t t0 = wd_now_ns(), gran, size, total = 0;
	uint32_t n = w->l.n_t;
	int ret = 0;

	if (!g->st) {
		snprintf(msg, sizeof(msg), "%.100s does not fit the host budget and cuda:%d has no "
			 "staging ring to stream it from disk", e->key, g->ordinal);
		ret = -ENOSPC;
		goto fail;
	}
	t = calloc(n ? n : 1, sizeof(*t));
	fds = calloc(n ? n : 1, sizeof(*fds));
	if (!t || !fds) {
		ret = -ENOMEM;
		goto fail;
	}
	for (uint32_t i = 0; i < n; i++)
		fds[i] = -1; /* the failure path closes every fds[i] >= 0 */
	for (uint32_t i = 0; i < n; i++) {
		/* Tensors of one file share its descriptor. */
		for (uint32_t k = 0; k < i && fds[i] < 0; k++)
			if (!strcmp(w->src[k].path, w->src[i].path))
				fds[i] = dup(fds[k]);
		if (fds[i] < 0) {
			struct stat sb;

			fds[i] = wd_open_regular(AT_FDCWD, w->src[i].path, 0, &sb);
			if (fds[i] < 0) {
				ret = fds[i];
				snprintf(msg, sizeof(msg), "%.200s: %s", w->src[i].path,
					 ret == -EINVAL ? wd_file_kind(sb.st_mode) : strerror(-ret));
				fds[i] = -1;
				goto fail;
			}
		}
	}
	gran = dc->ops->granularity(g->dev);
	size = gran ? (w->l.size + gran - 1) / gran * gran : w->l.size;
	ret = dev_admit(d, g, e, size, msg);
	if (ret)
		goto fail;
	ret = dev_alloc_vram(d, g, e, size, &v, msg);
	if (ret) {
		metrics_note_device_error(d->reg);
		pthread_mutex_lock(&dc->lock);
		evict_unreserve(g->pol, size);
		pthread_mutex_unlock(&dc->lock);
		goto fail;
	}
	for (uint32_t i = 0; i < n; i++) {
		t[i] = (struct staging_transfer){ .fd = fds[i], .name = w->src[i].path,
						  .off = w->src[i].off, .len = w->src[i].len,
						  .dst = v.dptr + w->l.t[i].off };
		total += w->src[i].len;
	}
	{
		struct progress_arg pa = { d, e };

		ret = staging_load(g->st, t, n, &(struct staging_call){
					   .progress = dev_staging_progress, .arg = &pa },
				   why, sizeof(why));
	}
	if (ret) {
		/* Not counted as a device error: the file's reads fail here as well. */
		snprintf(msg, sizeof(msg), "%.50s: disk -> cuda:%d: %.160s", e->key, g->ordinal,
			 why);
		dc->ops->vram_free(g->dev, &v);
		pthread_mutex_lock(&dc->lock);
		evict_unreserve(g->pol, size);
		pthread_mutex_unlock(&dc->lock);
		goto fail;
	}
	for (uint32_t i = 0; i < n; i++)
		close(fds[i]);
	free(fds);
	free(t);
	log_info(MOD, "\"streamed from disk\" key=\"%s\" bytes=%" PRIu64, e->key, total);
	make_resident(d, e, &w->l, &v, size, t0, total);
	return;
fail:
	for (uint32_t i = 0; fds && i < n; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	free(fds);
	free(t);
	pthread_mutex_lock(&dc->lock);
	dev_fail_entry(d, e, ret, msg);
	pthread_mutex_unlock(&dc->lock);
}
