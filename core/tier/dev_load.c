/*
 * LOAD on a GPU tier. On the shard, devcache_load() answers a hit inline. On the worker,
 * devcache_load_job() joins, per component, a device load already running or starts one:
 * through the host tier (hostcache_load_for(), whose callback queues the device thread), or,
 * for a component the host budget can never take, by streaming it from disk to VRAM.
 */
#include "core/tier/dev_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/log.h"

enum ops_outcome devcache_load(struct daemon *d, struct client *c, const struct wd_sqe *sqe,
			       const char *arg, uint16_t arg_len, uint32_t model,
			       struct wd_cqe *cqe, char *out)
{
	struct devcache *dc = d->dc;
	struct dgpu *g = dev_gpu_of(dc, sqe->tier);
	uint32_t first, n, hits = 0;
	uint64_t bytes = 0, now = wd_now_ns();
	struct dform f;

	if (!g) {
		dev_no_gpu(dc, sqe->tier, "load", cqe, out);
		return OPS_DONE;
	}
	if (dev_parse_form(sqe, arg, arg_len, "load", &f, cqe, out))
		return OPS_DONE;
	if (model == WD_ID_NONE) {
		cqe->data_len = ops_msg(out, "load: a GPU tier needs the model by index");
		cqe->res = -EINVAL;
		return OPS_DONE;
	}
	dev_targets(d, model, sqe->component, &first, &n);
	if (!n)
		return OPS_ASYNC;
	pthread_mutex_lock(&dc->lock);
	for (uint32_t cid = first; cid < first + n; cid++) {
		struct dentry *e = dev_find(dc, g, cid, &f);

		if (!e || !e->resident)
			break;
		hits++;
	}
	if (hits == n) {
		for (uint32_t cid = first; cid < first + n; cid++) {
			struct dentry *e = dev_find(dc, g, cid, &f);

			evict_lookup(g->pol, dev_pkey(e), now);
			bytes += e->tensor_bytes;
		}
	}
	pthread_mutex_unlock(&dc->lock);
	if (hits != n)
		return OPS_ASYNC;
	if (sqe->flags & WD_SQE_F_PIN)
		dev_take_pin(d, c, &(struct lease_pin){ .model = model, .component = sqe->component,
						    .tier = sqe->tier });
	cqe->res = 0;
	cqe->aux0 = bytes;
	return OPS_DONE;
}

/*
 * A component that can never fit the host budget is streamed disk -> VRAM instead of going
 * through the host cache: plans it (worker thread: the catalog) and queues the device thread.
 * Returns whether it took the component (failures are completed through the entry).
 */
static bool stream_instead(struct daemon *d, struct dentry *e, uint64_t nbytes,
			   uint32_t n_tensors)
{
	struct dwork *w;
	int ret;

	/* At most one alignment gap per tensor: the smallest extent it could need. */
	if (nbytes + (uint64_t)n_tensors * 64 <= hostcache_budget(d->hc))
		return false;
	if (e->conv || e->sel) {
		char msg[WD_DATA_SLOT_SIZE];

		/* The conversion and the selection read the stored bytes from the host copy. */
		snprintf(msg, sizeof(msg), "load: %.100s does not fit the host budget, and a "
			 "converted or selected GPU copy is made from the host copy: load it "
			 "whole, as stored", e->key);
		pthread_mutex_lock(&d->dc->lock);
		dev_fail_entry(d, e, -EFBIG, msg);
		pthread_mutex_unlock(&d->dc->lock);
		return true;
	}
	w = calloc(1, sizeof(*w));
	if (!w) {
		pthread_mutex_lock(&d->dc->lock);
		dev_fail_entry(d, e, -ENOMEM, "load: out of memory");
		pthread_mutex_unlock(&d->dc->lock);
		return true;
	}
	ret = hostcache_plan_layout(d->hc, e->model, e->comp, &w->l, &w->src, w->msg);
	if (ret) {
		pthread_mutex_lock(&d->dc->lock);
		dev_fail_entry(d, e, ret, w->msg);
		pthread_mutex_unlock(&d->dc->lock);
		free(w);
		return true;
	}
	log_info(MOD, "\"larger than the host budget: streaming disk -> VRAM\" key=\"%s\" "
		 "bytes=%" PRIu64, e->key, w->l.size);
	w->e = e;
	w->stream = true;
	dev_queue_work(d->dc, w);
	return true;
}

/*
 * A miss: a new entry for component @cid of @model on @g in form @f, keyed "cuda:N/model/
 * component" (with "@F16"/"@BF16" and "#sel:<hash>" for its form), with @r waiting on it,
 * linked into the table. @rc gets the component's registry record. Under dc->lock. Returns 0,
 * -ENOENT (not in the registry) or -ENOMEM (nothing linked).
 */
static int new_entry(struct daemon *d, struct dgpu *g, uint32_t model, uint32_t cid,
		     const struct dform *f, struct dreq *r, uint64_t now,
		     struct wd_reg_component *rc, struct dentry **out)
{
	struct devcache *dc = d->dc;
	struct wd_reg_model rm;
	struct dentry *e = calloc(1, sizeof(*e));
	int ret = 0;

	if (!e)
		return -ENOMEM;
	evict_lookup(g->pol, "", now);	/* a miss */
	e->g = g;
	e->model = model;
	e->comp = cid;
	e->conv = f->conv;
	e->sel = f->sel;
	e->sel_hash = f->sel_hash;
	e->sel_len = f->len;
	if (f->len)
		memcpy(e->sel_arg, f->payload, f->len);
	e->v.fd = -1;
	if (registry_read_model(&d->view, e->model, &rm) ||
	    registry_read_component(&d->view, cid, rc))
		ret = -ENOENT;
	snprintf(e->key, sizeof(e->key), "cuda:%d/%.150s%s%.150s%s", g->ordinal,
		 ret ? "?" : rm.name, !ret && rc->name[0] ? "/" : "", ret ? "" : rc->name,
		 f->conv == GPU_DTYPE_F16 ? "@F16" : f->conv == GPU_DTYPE_BF16 ? "@BF16" : "");
	if (f->sel) {
		size_t kl = strlen(e->key);

		snprintf(e->key + kl, sizeof(e->key) - kl, "#sel:%016" PRIx64, f->sel_hash);
	}
	if (!ret)
		ret = dev_add_waiter(e, r);
	if (ret) {
		dev_free_entry(e);
		return ret;
	}
	e->next = dc->entries;
	dc->entries = e;
	*out = e;
	return 0;
}

/*
 * Starts the load of new entry @e (component @rc) for job @j: streamed from disk when the
 * host budget can never take it, else through the host tier, whose callback
 * (dev_host_ready()) hands it to the device thread. Failures are completed through @e.
 */
static void start_load(struct daemon *d, struct job *j, const struct dreq *r,
		       struct dentry *e, const struct wd_reg_component *rc)
{
	int ret;

	dev_set_state(d, e, WD_STATE_LOADING, 0);
	log_info(MOD, "\"device load started\" key=\"%s\"", e->key);
	if (stream_instead(d, e, rc->nbytes, rc->n_tensors))
		return;
	ret = hostcache_load_for(d->hc, (struct tier_client *)j->c, r->user_data, r->flags,
				 e->model, e->comp, e->g->numa, dev_host_ready, d, e);
	if (ret) {
		pthread_mutex_lock(&d->dc->lock);
		dev_fail_entry(d, e, ret, "load: out of memory");
		pthread_mutex_unlock(&d->dc->lock);
	}
}

void devcache_load_job(struct daemon *d, struct job *j)
{
	struct devcache *dc = d->dc;
	struct dgpu *g = dev_gpu_of(dc, j->sqe.tier);
	struct dreq *r = calloc(1, sizeof(*r));
	uint32_t first, n;
	uint64_t now = wd_now_ns();
	struct dform f;
	char fmsg[WD_DATA_SLOT_SIZE];
	struct wd_cqe fcqe = { 0 };
	/* Checked on the shard before the job was queued; parsed again for the payload's
	 * place in the job. */
	int fret = dev_parse_form(&j->sqe, j->arg, j->arg_len, "load", &f, &fcqe, fmsg);

	if (!r || !g || fret) {
		struct wd_cqe cqe = { .user_data = j->sqe.user_data,
				      .res = !r ? -ENOMEM : !g ? -ENOTSUP : fret };

		free(r);
		daemon_post(d, j->c, &cqe, &j->spare, NULL, 0);
		return;
	}
	daemon_client_get(j->c);
	r->c = j->c;
	r->user_data = j->sqe.user_data;
	r->spare = j->spare;
	j->spare = NULL;
	r->flags = j->sqe.flags;
	r->pending = 1;
	r->pin = (struct lease_pin){ .model = j->sqe.model, .component = j->sqe.component,
				     .tier = j->sqe.tier };
	dev_targets(d, j->sqe.model, j->sqe.component, &first, &n);
	if (!n)
		dev_req_fail(r, -ENOENT, "load: the model has no component");
	for (uint32_t cid = first; cid < first + n; cid++) {
		struct dentry *e;
		struct wd_reg_component rc;
		bool start = false;
		int ret = 0;

		/* Resident: counted at once; loading: joined; else a new entry, started. */
		pthread_mutex_lock(&dc->lock);
		e = dev_find(dc, g, cid, &f);
		if (e && e->resident) {
			evict_lookup(g->pol, dev_pkey(e), now);
			r->bytes += e->tensor_bytes;
		} else if (e) {
			evict_lookup(g->pol, e->key, now);
			ret = dev_add_waiter(e, r);
		} else {
			ret = new_entry(d, g, j->sqe.model, cid, &f, r, now, &rc, &e);
			start = !ret;
		}
		pthread_mutex_unlock(&dc->lock);
		if (ret) {
			pthread_mutex_lock(&dc->lock);
			dev_req_fail(r, ret, NULL);
			pthread_mutex_unlock(&dc->lock);
			break;
		}
		if (start)
			start_load(d, j, r, e, &rc);
	}
	pthread_mutex_lock(&dc->lock);
	dev_req_done_one(d, r);
	pthread_mutex_unlock(&dc->lock);
}
