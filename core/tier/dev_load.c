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

enum tier_outcome devcache_load(struct devcache *dc, struct tier_client *c,
				const struct wd_sqe *sqe, const char *arg, uint16_t arg_len,
				uint32_t model, struct wd_cqe *cqe, char *out)
{
	struct dgpu *g = dev_gpu_of(dc, sqe->tier);
	uint32_t first, n, hits = 0;
	uint64_t bytes = 0, now = wd_now_ns();
	struct tier_form f;

	if (!g) {
		dev_no_gpu(dc, sqe->tier, "load", cqe, out);
		return TIER_DONE;
	}
	cqe->res = tier_parse_form(sqe, arg, arg_len, "load", &f, out, &cqe->data_len);
	if (cqe->res)
		return TIER_DONE;
	if (model == WD_ID_NONE) {
		cqe->data_len = tier_msg(out, "load: a GPU tier needs the model by index");
		cqe->res = -EINVAL;
		return TIER_DONE;
	}
	tier_targets(&dc->env, model, sqe->component, &first, &n);
	if (!n)
		return TIER_ASYNC;
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
		return TIER_ASYNC;
	if (sqe->flags & WD_SQE_F_PIN)
		tier_take_pin(&dc->env, c, &(struct lease_pin){ .model = model,
							       .component = sqe->component,
							       .tier = sqe->tier });
	cqe->res = 0;
	cqe->aux0 = bytes;
	return TIER_DONE;
}

/*
 * A component that can never fit the host budget is streamed disk -> VRAM instead of going
 * through the host cache: plans it (worker thread: the catalog) and queues the device thread.
 * Returns whether it took the component (failures are completed through the entry).
 */
static bool stream_instead(struct devcache *dc, struct dentry *e, uint64_t nbytes,
			   uint32_t n_tensors)
{
	struct dwork *w;
	int ret;

	/* At most one alignment gap per tensor: the smallest extent it could need. */
	if (nbytes + (uint64_t)n_tensors * 64 <= hostcache_budget(dc->hc))
		return false;
	if (e->conv || e->sel) {
		char msg[WD_DATA_SLOT_SIZE];

		/* The conversion and the selection read the stored bytes from the host copy. */
		snprintf(msg, sizeof(msg), "load: %.100s does not fit the host budget, and a "
			 "converted or selected GPU copy is made from the host copy: load it "
			 "whole, as stored", e->key);
		pthread_mutex_lock(&dc->lock);
		dev_fail_entry(dc, e, -EFBIG, msg);
		pthread_mutex_unlock(&dc->lock);
		return true;
	}
	w = calloc(1, sizeof(*w));
	if (!w) {
		pthread_mutex_lock(&dc->lock);
		dev_fail_entry(dc, e, -ENOMEM, "load: out of memory");
		pthread_mutex_unlock(&dc->lock);
		return true;
	}
	ret = hostcache_plan_layout(dc->hc, e->model, e->comp, &w->l, &w->src, w->msg);
	if (ret) {
		pthread_mutex_lock(&dc->lock);
		dev_fail_entry(dc, e, ret, w->msg);
		pthread_mutex_unlock(&dc->lock);
		free(w);
		return true;
	}
	log_info(MOD, "\"larger than the host budget: streaming disk -> VRAM\" key=\"%s\" "
		 "bytes=%" PRIu64, e->key, w->l.size);
	w->e = e;
	w->stream = true;
	dev_queue_work(dc, w);
	return true;
}

/*
 * A miss: a new entry for component @cid of @model on @g in form @f, keyed "cuda:N/model/
 * component" (with "@F16"/"@BF16" and "#sel:<hash>" for its form), with @r waiting on it,
 * linked into the table. @rc gets the component's registry record. Under dc->lock. Returns 0,
 * -ENOENT (not in the registry) or -ENOMEM (nothing linked).
 */
static int new_entry(struct devcache *dc, struct dgpu *g, uint32_t model, uint32_t cid,
		     const struct tier_form *f, struct tier_request *r, uint64_t now,
		     struct wd_reg_component *rc, struct dentry **out)
{
	struct wd_reg_model rm;
	struct dentry *e = calloc(1, sizeof(*e));
	int ret = 0;

	if (!e)
		return -ENOMEM;
	evict_lookup(g->pol, "", now);	/* a miss */
	e->g = g;
	e->model = model;
	e->comp = cid;
	e->conv = f->convert;
	e->sel = f->sel;
	e->sel_hash = f->sel_hash;
	e->sel_len = f->len;
	if (f->len)
		memcpy(e->sel_arg, f->payload, f->len);
	e->v.fd = -1;
	if (registry_read_model(dc->env.view, e->model, &rm) ||
	    registry_read_component(dc->env.view, cid, rc))
		ret = -ENOENT;
	snprintf(e->key, sizeof(e->key), "cuda:%d/%.150s%s%.150s%s", g->ordinal,
		 ret ? "?" : rm.name, !ret && rc->name[0] ? "/" : "", ret ? "" : rc->name,
		 f->convert == GPU_DTYPE_F16 ? "@F16" : f->convert == GPU_DTYPE_BF16 ? "@BF16" : "");
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
static void start_load(struct devcache *dc, const struct tier_job *j,
		       const struct tier_request *r, struct dentry *e,
		       const struct wd_reg_component *rc)
{
	int ret;

	dev_set_state(dc, e, WD_STATE_LOADING, 0);
	log_info(MOD, "\"device load started\" key=\"%s\"", e->key);
	if (stream_instead(dc, e, rc->nbytes, rc->n_tensors))
		return;
	ret = hostcache_load_for(dc->hc, j->c, r->user_data, r->flags, e->model, e->comp,
				 e->g->numa, dev_host_ready, dc, e);
	if (ret) {
		pthread_mutex_lock(&dc->lock);
		dev_fail_entry(dc, e, ret, "load: out of memory");
		pthread_mutex_unlock(&dc->lock);
	}
}

/* The request of job @j, holding a reference on its client and its final completion's
 * spare; one pending count for the fan-out, dropped by the caller. NULL: out of memory. */
static struct tier_request *new_request(struct devcache *dc, struct tier_job *j)
{
	struct tier_request *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	dc->env.sink.client_get(dc->env.sink.ctx, j->c);
	r->c = j->c;
	r->user_data = j->sqe->user_data;
	r->spare = j->spare;
	j->spare = NULL;
	r->flags = j->sqe->flags;
	r->pending = 1;
	r->pin = (struct lease_pin){ .model = j->sqe->model, .component = j->sqe->component,
				     .tier = j->sqe->tier };
	return r;
}

void devcache_load_job(struct devcache *dc, struct tier_job *j)
{
	struct dgpu *g = dev_gpu_of(dc, j->sqe->tier);
	struct tier_request *r;
	uint32_t first, n;
	uint64_t now = wd_now_ns();
	struct tier_form f;
	char fmsg[WD_DATA_SLOT_SIZE];
	uint16_t flen;
	/* Checked on the shard before the job was queued; parsed again for the payload's
	 * place in the job. */
	int fret = tier_parse_form(j->sqe, j->arg, j->arg_len, "load", &f, fmsg, &flen);

	r = g && !fret ? new_request(dc, j) : NULL;
	if (!r) {
		struct wd_cqe cqe = { .user_data = j->sqe->user_data,
				      .res = !g ? -ENOTSUP : fret ? fret : -ENOMEM };

		dc->env.sink.post(dc->env.sink.ctx, j->c, &cqe, &j->spare, NULL, 0);
		return;
	}
	tier_targets(&dc->env, j->sqe->model, j->sqe->component, &first, &n);
	if (!n)
		tier_req_fail(r, -ENOENT, "load: the model has no component");
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
			ret = new_entry(dc, g, j->sqe->model, cid, &f, r, now, &rc, &e);
			start = !ret;
		}
		pthread_mutex_unlock(&dc->lock);
		if (ret) {
			pthread_mutex_lock(&dc->lock);
			tier_req_fail(r, ret, NULL);
			pthread_mutex_unlock(&dc->lock);
			break;
		}
		if (start)
			start_load(dc, j, r, e, &rc);
	}
	pthread_mutex_lock(&dc->lock);
	dev_req_done_one(dc, r);
	pthread_mutex_unlock(&dc->lock);
}
