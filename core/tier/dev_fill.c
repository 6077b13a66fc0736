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
#include "gpu/staging.h"

/*
 * The copy into @v (@size bytes, from layout @l, which @e takes over) is complete: @e becomes
 * resident and its requesters are answered. Device thread.
 */
static void make_resident(struct devcache *dc, struct dentry *e, struct hostcache_layout *l,
			  const struct gpu_vram *v, uint64_t size, uint64_t t0, uint64_t read_bytes)
{
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
	dev_set_state(dc, e, WD_STATE_RESIDENT, 0);
	/* The component's last load (`weightctl top`) and the load histogram of cuda:N
	 * (/metrics, through the sink): one observation per device load, from the start of the
	 * copy to resident. */
	pthread_mutex_lock(dc->env.state_lock);
	registry_set_last_load(dc->env.reg, e->comp, WD_TIER_CUDA((uint32_t)g->ordinal),
			       e->l.size, now - t0, wd_wall_ns());
	pthread_mutex_unlock(dc->env.state_lock);
	dc->env.sink.load_done(dc->env.sink.ctx, &(struct tier_load_note){
		.tier = WD_TIER_CUDA((uint32_t)g->ordinal), .ckey = e->l.ckey, .bytes = e->l.size,
		.ns = now - t0, .whole_stored = !e->conv && !e->sel });
	for (uint32_t i = 0; i < e->n_waiters; i++) {
		e->waiters[i]->bytes += e->tensor_bytes;
		e->waiters[i]->read_bytes += read_bytes;
		dev_req_done_one(dc, e->waiters[i]);
	}
	e->n_waiters = 0;
	pthread_mutex_unlock(&dc->lock);
	log_info(MOD, "\"resident\" key=\"%s\" bytes=%" PRIu64 " read=%" PRIu64 " ms=%.1f",
		 e->key, size, read_bytes, (double)(now - t0) / 1e6);
}

/* Gives back the @size bytes dev_admit() reserved on @g, for an allocation that failed. */
static void unreserve(struct devcache *dc, struct dgpu *g, uint64_t size)
{
	pthread_mutex_lock(&dc->lock);
	evict_unreserve(g->pol, size);
	pthread_mutex_unlock(&dc->lock);
}

/*
 * Room and VRAM for @size bytes of @e on @g: admission (evicting), then the allocation (which
 * evicts and retries once). A failed allocation counts as a device error and gives the
 * reservation back. Returns 0 or the error, with @msg. Device thread.
 */
static int admit_alloc(struct devcache *dc, struct dgpu *g, struct dentry *e, uint64_t size,
		       struct gpu_vram *v, char *msg)
{
	int ret = dev_admit(dc, g, e, size, msg);

	if (ret)
		return ret;
	ret = dev_alloc_vram(dc, g, e, size, v, msg);
	if (ret) {
		dc->env.sink.device_error(dc->env.sink.ctx);
		unreserve(dc, g, size);
	}
	return ret;
}

/* A device copy in the making (dev_fill()). */
struct fill_plan {
	struct hostcache_layout l;	/* the held host entry; for a selection, its table holds
					 * only the selected tensors (the hold is the extent's) */
	struct hostcache_layout cl;	/* converted or selected: the device copy's own compact
					 * layout (dev_convert_layout()); else empty */
	uint64_t scratch_off, scratch;	/* the conversion's scratch area in the allocation */
	uint64_t need;			/* bytes of VRAM, before the granularity */
};

/*
 * First step of dev_fill(): holds the host entry of @e (@held: the one the host load handed
 * over, taken; NULL: hold it now) and lays out @e's form in @p. Returns 0, or the error with
 * @msg and nothing held.
 */
static int hold_form(struct devcache *dc, struct dentry *e, struct hostcache_layout *held,
		     struct fill_plan *p, char *msg)
{
	int ret = 0;

	if (held) {
		p->l = *held;
		memset(held, 0, sizeof(*held));
	} else {
		ret = hostcache_hold(dc->hc, e->comp, &p->l);
	}
	if (ret) {
		snprintf(msg, WD_DATA_SLOT_SIZE, "%.150s: the host copy went before the GPU copy "
			 "could start (retry)", e->key);
		return -EAGAIN;
	}
	p->need = p->l.size;
	if (e->sel) {
		struct hostcache_layout sl;

		/* From here on p->l describes the selected tensors only; the hold is the
		 * extent's, which the copy keeps. */
		ret = dev_select_layout(dc, e, &p->l, &sl, msg);
		if (ret) {
			hostcache_unhold(dc->hc, &p->l);
			free(p->l.t);
			return ret;
		}
		free(p->l.t);
		p->l.t = sl.t;
		p->l.n_t = sl.n_t;
		p->l.tensor_bytes = sl.tensor_bytes;
	}
	if (e->conv || e->sel) {
		/* A compact layout of its own; with conv 0 nothing is converted and the
		 * scratch area is empty. */
		ret = dev_convert_layout(&p->l, e->conv, &p->cl, &p->scratch_off, &p->scratch);
		if (ret) {
			snprintf(msg, WD_DATA_SLOT_SIZE, "%.150s: out of memory", e->key);
			hostcache_unhold(dc->hc, &p->l);
			free(p->l.t);
			return ret;
		}
		p->need = p->scratch_off + p->scratch;
	}
	return 0;
}

/*
 * Second step: the same content (one host entry) already on this GPU in this form, for
 * another model's component: @e shares its allocation instead of a second copy. Returns
 * whether it did (@e is then resident, the hold given back, @p freed).
 */
static bool share_twin(struct devcache *dc, struct dentry *e, struct fill_plan *p,
		       uint64_t read_bytes)
{
	struct dentry *twin;

	pthread_mutex_lock(&dc->lock);
	twin = dev_find_twin(dc, e, p->l.id);
	if (twin)
		dev_alias_resident(dc, e, twin, e->conv || e->sel ? &p->cl : &p->l, read_bytes);
	pthread_mutex_unlock(&dc->lock);
	if (!twin)
		return false;
	hostcache_unhold(dc->hc, &p->l);
	free(p->l.t);
	free(p->cl.t);
	return true;
}

/*
 * Third step: host -> VRAM into @v (@size bytes reserved), converting for a converted or
 * selected form. A failure counts as a device error and frees @v and the reservation.
 */
static int copy_form(struct devcache *dc, struct dentry *e, struct fill_plan *p,
		     struct gpu_vram *v, uint64_t size, char *msg)
{
	struct dgpu *g = e->g;
	int ret = e->conv || e->sel ?
		  dev_convert_in(dc, e, v, &p->l, &p->cl, p->scratch_off, p->scratch, msg) :
		  dev_copy_in(dc, e, v->dptr, p->l.base, p->l.size, msg);

	if (ret) {
		dc->env.sink.device_error(dc->env.sink.ctx);
		dc->ops->vram_free(g->dev, v);
		unreserve(dc, g, size);
	}
	return ret;
}

/* The host load of @e ended with @err: copy it to the GPU and complete its requesters. */
void dev_fill(struct devcache *dc, struct dentry *e, int err, const char *hmsg,
	      uint64_t read_bytes, struct hostcache_layout *held)
{
	struct dgpu *g = e->g;
	struct fill_plan p = { 0 };
	struct gpu_vram v = { .fd = -1 };
	char msg[WD_DATA_SLOT_SIZE] = "";
	uint64_t t0 = wd_now_ns(), gran, size;
	int ret = err;

	if (ret)
		snprintf(msg, sizeof(msg), "%s", hmsg);
	else
		ret = hold_form(dc, e, held, &p, msg);
	if (ret)
		goto fail;
	if (share_twin(dc, e, &p, read_bytes))
		return;
	gran = dc->ops->granularity(g->dev);
	size = gran ? (p.need + gran - 1) / gran * gran : p.need;
	ret = admit_alloc(dc, g, e, size, &v, msg);
	if (!ret)
		ret = copy_form(dc, e, &p, &v, size, msg);
	hostcache_unhold(dc->hc, &p.l);
	if (ret) {
		free(p.l.t);
		free(p.cl.t);
		goto fail;
	}
	if (e->conv || e->sel) {
		/* The device copy's own layout; the host entry's table is no longer needed. */
		free(p.l.t);
		p.l = p.cl;
	}
	make_resident(dc, e, &p.l, &v, size, t0, read_bytes);
	return;
fail:
	pthread_mutex_lock(&dc->lock);
	dev_fail_entry(dc, e, ret, msg);
	pthread_mutex_unlock(&dc->lock);
}

/*
 * Opens the @n files that @src names into @fds (tensors of one file share its descriptor;
 * every fds[i] is -1 or open on return, for the caller to close). Returns 0, or the error
 * with @msg naming the file.
 */
static int open_sources(const struct hostcache_src *src, uint32_t n, int *fds, char *msg)
{
	for (uint32_t i = 0; i < n; i++)
		fds[i] = -1;
	for (uint32_t i = 0; i < n; i++) {
		struct stat sb;
		int ret;

		for (uint32_t k = 0; k < i && fds[i] < 0; k++)
			if (!strcmp(src[k].path, src[i].path))
				fds[i] = dup(fds[k]);
		if (fds[i] >= 0)
			continue;
		ret = wd_open_regular(AT_FDCWD, src[i].path, 0, &sb);
		if (ret < 0) {
			snprintf(msg, WD_DATA_SLOT_SIZE, "%.200s: %s", src[i].path,
				 ret == -EINVAL ? wd_file_kind(sb.st_mode) : strerror(-ret));
			return ret;
		}
		fds[i] = ret;
	}
	return 0;
}

/*
 * Disk -> VRAM through the staging ring, for a component the host budget cannot take: the
 * same layout a host entry would have, read from the files that w->src names. Device thread.
 */
void dev_stream_fill(struct devcache *dc, struct dentry *e, struct dwork *w)
{
	struct dgpu *g = e->g;
	struct gpu_vram v = { .fd = -1 };
	struct staging_transfer *t = NULL;
	struct progress_arg pa = { dc, e };
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
		/* Not yet opened: the failure path must not close the zeroes of calloc(). */
		free(fds);
		fds = NULL;
		ret = -ENOMEM;
		goto fail;
	}
	ret = open_sources(w->src, n, fds, msg);
	if (ret)
		goto fail;
	gran = dc->ops->granularity(g->dev);
	size = gran ? (w->l.size + gran - 1) / gran * gran : w->l.size;
	ret = admit_alloc(dc, g, e, size, &v, msg);
	if (ret)
		goto fail;
	for (uint32_t i = 0; i < n; i++) {
		t[i] = (struct staging_transfer){ .fd = fds[i], .name = w->src[i].path,
						  .off = w->src[i].off, .len = w->src[i].len,
						  .dst = v.dptr + w->l.t[i].off };
		total += w->src[i].len;
	}
	ret = staging_load(g->st, t, n, &(struct staging_call){
				   .progress = dev_staging_progress, .arg = &pa },
			   why, sizeof(why));
	if (ret) {
		/* Not counted as a device error: the file's reads fail here as well. */
		snprintf(msg, sizeof(msg), "%.50s: disk -> cuda:%d: %.160s", e->key, g->ordinal,
			 why);
		dc->ops->vram_free(g->dev, &v);
		unreserve(dc, g, size);
		goto fail;
	}
	for (uint32_t i = 0; i < n; i++)
		close(fds[i]);
	free(fds);
	free(t);
	log_info(MOD, "\"streamed from disk\" key=\"%s\" bytes=%" PRIu64, e->key, total);
	make_resident(dc, e, &w->l, &v, size, t0, total);
	return;
fail:
	for (uint32_t i = 0; fds && i < n; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	free(fds);
	free(t);
	pthread_mutex_lock(&dc->lock);
	dev_fail_entry(dc, e, ret, msg);
	pthread_mutex_unlock(&dc->lock);
}
