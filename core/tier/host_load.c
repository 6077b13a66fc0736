/*
 * The host tier's load pipeline on the worker thread: requests (one client's LOAD fanned out
 * over the loads of its components, or the device tier's hostcache_load_for()), ended in
 * host_req.c; planning a component's load (files, form, --verify, the loader's plan) and
 * starting it in named steps (join, plan, new entry, reserve the extent, submit, publish),
 * or refusing it.
 */
#include "core/tier/host_internal.h"

#include <fcntl.h>
#include <unistd.h>

#include "core/base/file.h"

static int attach_req(struct load *ld, struct req *r)
{
	if (wd_grow(&ld->reqs, &ld->cap_reqs, ld->n_reqs, sizeof(*ld->reqs)))
		return -ENOMEM;
	ld->reqs[ld->n_reqs++] = r;
	ld->had_reqs = true;
	r->q.pending++;
	r->total += ld->total;
	r->done += ld->done;
	r->q.read_bytes += ld->total;
	return 0;
}

/* The files of catalog component @cc that the loader reads, in order. */
int host_spec_files(const struct catalog_component *cc, struct load_file_spec **out,
		    uint32_t *n)
{
	struct load_file_spec *fs = calloc(cc->n_files ? cc->n_files : 1, sizeof(*fs));

	*n = 0;
	if (!fs)
		return -ENOMEM;
	for (size_t k = 0; k < cc->n_files; k++) {
		if (cc->files[k].kind != MODEL_FILE_ST)
			continue;
		fs[*n].path = cc->files[k].path;
		fs[*n].expect_fp = &cc->files[k].fp;
		(*n)++;
	}
	*out = fs;
	return 0;
}

/*
 * --verify: each file's header (8 + N bytes) must still hash to the catalog's content hash,
 * so a file rewritten with the same size and timestamps is caught before its bytes are used.
 */
static int check_headers(const struct catalog_component *cc, const char *name, char *msg)
{
	for (size_t k = 0; k < cc->n_files; k++) {
		const struct catalog_file *cf = &cc->files[k];
		size_t len = (size_t)(8 + cf->header_len);
		char *buf;
		ssize_t n;
		int fd;

		if (cf->kind != MODEL_FILE_ST)
			continue;
		buf = malloc(len);
		fd = wd_open_regular(AT_FDCWD, cf->path, 0, NULL);
		n = buf && fd >= 0 ? pread(fd, buf, len, 0) : -1;
		if (fd >= 0)
			close(fd);
		if (n != (ssize_t)len || XXH3_64bits(buf, len) != cf->content_hash) {
			free(buf);
			snprintf(msg, WD_DATA_SLOT_SIZE, "component %.60s: the header of %.100s no longer "
				 "matches the catalog's content hash (rescan the model)", name,
				 cf->path);
			return -ESTALE;
		}
		free(buf);
	}
	return 0;
}

/* Copies what the entry keeps of @p: tensor names, forms and offsets. */
static int fill_entry(struct entry *e, const struct load_plan *p,
		      const struct catalog_component *cc)
{
	e->t = calloc(p->n_tensors ? p->n_tensors : 1, sizeof(*e->t));
	e->hdr = calloc(cc->n_files ? cc->n_files : 1, sizeof(uint64_t));
	if (!e->t || !e->hdr)
		return -ENOMEM;
	for (uint32_t i = 0; i < p->n_tensors; i++) {
		const struct load_tensor *T = &p->tensors[i];

		e->t[i] = (struct tinfo){ .off = T->off, .nbytes = T->nbytes,
					  .src_bytes = T->src_bytes, .dtype = T->dtype,
					  .src_dtype = T->src_dtype };
		e->t[i].name = strdup(T->name);
		if (!e->t[i].name)
			return -ENOMEM;
		e->n_t++;
	}
	for (size_t k = 0; k < cc->n_files; k++)
		if (cc->files[k].kind == MODEL_FILE_ST)
			e->hdr[e->n_files++] = cc->files[k].content_hash;
	e->tensor_bytes = p->tensor_bytes;
	return 0;
}

/* NUL-separated names of a NAMES selection, as the loader wants them. */
static const char **split_names(const struct tier_form *f, char *copy, size_t *n)
{
	const char **v = calloc((size_t)f->len + 1, sizeof(char *));
	size_t i = 0;

	*n = 0;
	if (!v)
		return NULL;
	memcpy(copy, f->payload, f->len);
	copy[f->len] = '\0';
	while (i < f->len) {
		size_t l = strlen(copy + i);

		if (l)
			v[(*n)++] = copy + i;
		i += l + 1;
	}
	return v;
}

/* What start_component() builds on its way, step by step; released by start_free(). */
struct start {
	char name[WD_NAME_MAX * 2 + 2];		/* "model/component": the quarantine's key */
	char msg[WD_DATA_SLOT_SIZE];		/* why it was refused */
	char copy[WD_DATA_SLOT_SIZE + 1];	/* the selection, NUL-terminated */
	struct load_spec spec;
	struct load_file_spec *files;
	const char **names;
	struct load_plan *plan;
	struct entry *e;
	struct load *ld;
	uint64_t id, qfp, now, off, bytes;
};

static void start_free(struct start *st)
{
	if (st->e)
		host_free_entry(st->e);
	free(st->ld ? st->ld->reqs : NULL);
	free(st->ld);
	loader_plan_free(st->plan);
	free(st->files);
	free(st->names);
}

/*
 * An entry of the same identity exists: @comp is bound to it, and request @r (NULL: a
 * prefetch, which then has nothing to do) either counts it as a hit (resident) or joins its
 * load (coalescing). Returns 0 or -ENOMEM. Under the cache lock.
 */
static int join_existing(struct hostcache *hc, struct req *r, struct entry *e, uint32_t model,
			 uint32_t comp, uint64_t now)
{
	int ret = host_bind_comp(hc, e, model, comp);

	if (ret || !r)
		return ret;
	evict_lookup(hc->pol, e->key, now);
	if (e->resident) {
		evict_coaccess_record(hc->pol, e->ckey, now);
		e->last_use_ns = now;
		e->prefetched = false;
		r->q.bytes += e->tensor_bytes;
		return 0;
	}
	hc->coalesced++;
	return attach_req(e->ld, r);
}

/*
 * Plans the load of @cc in form @f: refused at once when the component is quarantined; the
 * files to read, the conversion and the selection; with --verify the headers checked; then
 * the loader's plan (st->plan). Returns 0 or -errno with st->msg. No lock held.
 */
static int plan_load(struct hostcache *hc, struct start *st, const struct catalog_component *cc,
		     const struct tier_form *f)
{
	bool verify = __atomic_load_n(hc->env.verify, __ATOMIC_RELAXED);
	uint32_t n_files;
	size_t n_names = 0;
	int ret;

	/* A component that keeps failing is refused at once until its files change. */
	ret = quarantine_check(hc->q, st->name, st->qfp, st->msg, sizeof(st->msg));
	if (!ret)
		ret = host_spec_files(cc, &st->files, &n_files);
	if (ret)
		return ret;
	st->spec = (struct load_spec){ .name = st->name, .files = st->files, .n_files = n_files,
				       .flags = verify ? LOAD_F_VERIFY : 0 };
	if (f->convert) {
		st->spec.flags |= LOAD_F_CONVERT;
		st->spec.convert_to = (enum st_dtype)f->convert;
	}
	if (f->sel == TIER_SEL_PREFIX) {
		memcpy(st->copy, f->payload, f->len);
		st->copy[f->len] = '\0';
		st->spec.prefix = st->copy;
	} else if (f->sel == TIER_SEL_NAMES) {
		st->names = split_names(f, st->copy, &n_names);
		if (!st->names)
			return -ENOMEM;
		st->spec.names = st->names;
		st->spec.n_names = n_names;
	}
	if (verify && (ret = check_headers(cc, st->name, st->msg)))
		return ret;
	return loader_plan(&st->spec, loader_chunk(hc->loader), &st->plan, st->msg,
			   sizeof(st->msg));
}

/* The new entry and its load, from the plan: identity, form, keys; a requested one is looked
 * up in the policy (a miss) and its co-access recorded. Returns 0 or -ENOMEM. Under the
 * cache lock. */
static int new_entry(struct hostcache *hc, struct start *st, const struct req *r,
		     const struct catalog_component *cc, const struct tier_form *f)
{
	struct entry *e;

	st->e = e = calloc(1, sizeof(*e));
	st->ld = calloc(1, sizeof(*st->ld));
	if (!e || !st->ld || fill_entry(e, st->plan, cc))
		return -ENOMEM;
	e->id = st->id;
	e->convert = f->convert;
	e->sel = f->sel;
	e->sel_hash = f->sel_hash;
	e->prefetched = !r;
	host_entry_key(e->key, sizeof(e->key), st->name, f, st->id);
	snprintf(e->ckey, sizeof(e->ckey), "%.*s", (int)sizeof(e->ckey) - 1, st->name);
	if (r) {
		evict_lookup(hc->pol, e->key, st->now);
		evict_coaccess_record(hc->pol, e->ckey, st->now);
	}
	return 0;
}

/* Admits the entry (evicting), allocates its extent, binds it to its NUMA node (a GPU's for
 * the device tier's loads) and, when memory is tight, faults it in. Returns 0 or -errno with
 * st->msg; on failure nothing stays reserved. Under the cache lock. */
static int reserve_extent(struct hostcache *hc, struct start *st, const struct req *r)
{
	struct entry *e = st->e;
	int ret;

	st->bytes = round_extent(st->plan->bytes);
	ret = host_make_room(hc, st->name, st->bytes, &st->off, st->msg);
	if (ret)
		return ret;
	e->off = st->off;
	e->size = st->bytes;
	e->node = host_place_extent(hc, st->name, st->off, st->bytes, r ? r->node : -1);
	ret = host_populate_extent(hc, st->name, st->off, st->bytes, st->msg);
	if (ret)
		host_release_extent(hc, st->off, st->bytes);
	return ret;
}

/*
 * Binds @comp of @model to the entry, attaches request @r and hands the plan to the loader.
 * Returns 0, or -errno with st->msg after undoing the attachment and releasing the extent.
 * Under the cache lock: the loader's callbacks wait until the entry is complete.
 */
static int submit_load(struct hostcache *hc, struct start *st, struct req *r, uint32_t model,
		       uint32_t comp)
{
	struct entry *e = st->e;
	struct load *ld = st->ld;
	int ret;

	e->qfp = st->qfp;
	e->seq = hc->next_seq++;
	e->ld = ld;
	ld->hc = hc;
	ld->e = e;
	ld->plan = st->plan;
	ld->total = st->plan->read_bytes;
	if (host_bind_comp(hc, e, model, comp) || (r && attach_req(ld, r))) {
		host_release_extent(hc, st->off, st->bytes);
		return -ENOMEM;
	}
	ret = loader_submit(hc->loader, st->plan, st->off, &(struct load_callbacks){
				    .progress = host_on_progress, .done = host_on_done, .arg = ld }, &ld->h);
	if (ret) {
		if (r) {
			r->q.pending--;
			r->total -= ld->total;
			r->q.read_bytes -= ld->total;
		}
		host_release_extent(hc, st->off, st->bytes);
		snprintf(st->msg, sizeof(st->msg), "component %.200s: cannot queue the load: %s",
			 st->name, strerror(-ret));
	}
	return ret;
}

/* The load is submitted: the entry joins the table (the load owns it and its plan from now
 * on), the counters, the registry shows @comp loading. Under the cache lock. */
static void publish_started(struct hostcache *hc, struct start *st, const struct req *r,
			    uint32_t comp)
{
	struct entry *e = st->e;
	const struct load_plan *plan = st->plan;

	e->next = hc->entries;
	hc->entries = e;
	hc->loads++;
	hc->read_bytes += plan->read_bytes;
	hc->read_direct += plan->direct_bytes;
	if (!r)
		hc->prefetch_started++;
	pthread_mutex_lock(hc->env.state_lock);
	if (e->sel == TIER_SEL_ALL) {
		registry_set_state(hc->env.reg, comp, WD_TIER_HOST, WD_STATE_LOADING, 0);
		registry_set_progress(hc->env.reg, comp, WD_TIER_HOST, 0, plan->read_bytes);
	}
	pthread_mutex_unlock(hc->env.state_lock);
	/* Under the lock: once it is dropped the load may end and free @e and @plan. */
	log_info(MOD, "\"load started\" key=\"%s\" bytes=%" PRIu64 " read=%" PRIu64 " files=%u "
		 "direct=%u tensors=%u%s", e->key, st->bytes, plan->read_bytes, plan->n_files,
		 plan->n_direct, plan->n_tensors, r ? "" : " prefetch=1");
	st->e = NULL;
	st->ld = NULL;
	st->plan = NULL;
}

/*
 * The load of @comp was refused with @ret: counted toward the quarantine, the registry shows
 * a whole-component load failed (not for a lack of room, which is no fault of the
 * component's) unless another entry of it is resident, and @r records why. No lock held.
 */
static void refuse_load(struct hostcache *hc, struct start *st, struct req *r, uint32_t comp,
			const struct tier_form *f, int ret)
{
	char en[LOG_ESCAPE_MAX], em[LOG_ESCAPE_MAX];
	/* The registry shows a quarantined component as failed with -ENOTRECOVERABLE. */
	int st_err = recovery_counts_toward_quarantine(ret, r != NULL) &&
		     quarantine_fail(hc->q, st->name, st->qfp, ret,
				     st->msg[0] ? st->msg : strerror(-ret)) ?
		     -ENOTRECOVERABLE : ret;

	if (f->sel == TIER_SEL_ALL && ret != -EFBIG && ret != -ENOSPC && ret != -ENOMEM) {
		pthread_mutex_lock(&hc->lock);
		if (!host_has_resident(hc, comp)) {
			pthread_mutex_lock(hc->env.state_lock);
			registry_set_state(hc->env.reg, comp, WD_TIER_HOST, WD_STATE_FAILED, st_err);
			pthread_mutex_unlock(hc->env.state_lock);
		}
		pthread_mutex_unlock(&hc->lock);
	}
	start_free(st);
	if (r) {
		pthread_mutex_lock(&hc->lock);
		host_req_fail(r, ret, st->msg[0] ? st->msg : NULL);
		pthread_mutex_unlock(&hc->lock);
	}
	log_info(MOD, "\"load refused\" component=\"%s\" err=%d msg=\"%s\"",
		 log_escape(st->name, en, sizeof(en), LOG_ESC_QUOTES), ret,
		 log_escape(st->msg, em, sizeof(em), LOG_ESC_QUOTES));
}

/*
 * Starts (or joins, or finds resident) the load of catalog component @cc, registry component
 * @comp of @model, in form @f, for request @r (NULL: a prefetch), in named steps: join an
 * entry of the same identity, else plan the load, make the entry, reserve its extent, submit
 * it and publish that it started; a refusal at any step ends in refuse_load(). Returns 0 or
 * a negative errno with the reason recorded in @r.
 */
static int start_component(struct hostcache *hc, struct req *r, uint32_t model, uint32_t comp,
			   const char *model_name, const struct catalog_component *cc,
			   const struct tier_form *f)
{
	struct start *st = calloc(1, sizeof(*st));
	struct entry *e;
	int ret;

	if (!st) {
		if (r) {
			pthread_mutex_lock(&hc->lock);
			host_req_fail(r, -ENOMEM, "load: out of memory");
			pthread_mutex_unlock(&hc->lock);
		}
		return -ENOMEM;
	}
	st->id = host_identity(cc, f);
	st->now = wd_now_ns();
	st->qfp = host_files_fp(cc);
	snprintf(st->name, sizeof(st->name), "%s%s%s", model_name, cc->name[0] ? "/" : "",
		 cc->name);
	pthread_mutex_lock(&hc->lock);
	e = host_find_id(hc, st->id);
	if (e) {
		ret = join_existing(hc, r, e, model, comp, st->now);
		if (ret && r)
			host_req_fail(r, ret, "load: out of memory");
		pthread_mutex_unlock(&hc->lock);
		free(st);
		return ret;
	}
	pthread_mutex_unlock(&hc->lock);

	ret = plan_load(hc, st, cc, f);
	if (ret)
		goto refuse;
	pthread_mutex_lock(&hc->lock);
	ret = new_entry(hc, st, r, cc, f);
	if (!ret)
		ret = reserve_extent(hc, st, r);
	if (!ret)
		ret = submit_load(hc, st, r, model, comp);
	if (!ret)
		publish_started(hc, st, r, comp);
	pthread_mutex_unlock(&hc->lock);
	if (ret)
		goto refuse;
	start_free(st);
	free(st);
	return 0;
refuse:
	refuse_load(hc, st, r, comp, f, ret);
	free(st);
	return ret;
}

/*
 * A new request of client @c (NULL: a prefetch, which has none) for @comp of @model (or all
 * its components), holding a reference on @c and one pending count for its fan-out. NULL
 * when out of memory.
 */
static struct req *new_req(struct hostcache *hc, struct tier_client *c, uint64_t user_data,
			   uint8_t flags, uint32_t model, uint32_t comp, int node)
{
	struct req *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	hc->env.sink.client_get(hc->env.sink.ctx, c);
	r->q.c = c;
	r->q.user_data = user_data;
	r->q.flags = flags;
	r->q.pin = (struct lease_pin){ .model = model, .component = comp, .tier = WD_TIER_HOST };
	r->q.pending = 1;
	r->node = node;
	return r;
}

/* Fails @r (when not NULL) with @err and @msg. Takes the cache lock. */
static void req_fail_locked(struct hostcache *hc, struct req *r, int err, const char *msg)
{
	if (!r)
		return;
	pthread_mutex_lock(&hc->lock);
	host_req_fail(r, err, msg);
	pthread_mutex_unlock(&hc->lock);
}

/* The fan-out of @r ended: its last pending count goes. Takes the cache lock. */
static void req_fanned_out(struct hostcache *hc, struct req *r)
{
	pthread_mutex_lock(&hc->lock);
	host_req_done_one(hc, r);
	pthread_mutex_unlock(&hc->lock);
}

/*
 * The registry's record of @model and its catalog entry (worker thread). Returns 0, or
 * -errno with @out (WD_DATA_SLOT_SIZE bytes) saying why.
 */
static int read_model(struct hostcache *hc, uint32_t model, struct wd_reg_model *rm,
		      struct catalog_model *m, char *out)
{
	int ret = registry_read_model(hc->env.view, model, rm);

	if (!ret)
		ret = catalog_get_model(*hc->env.cat, rm->name, m);
	if (ret)
		snprintf(out, WD_DATA_SLOT_SIZE, "load: model %u: %s", model, strerror(-ret));
	return ret;
}

/* Starts the load of registry component @cid of model @model (@m in the catalog) for @r. */
static int start_one(struct hostcache *hc, struct req *r, uint32_t model, uint32_t cid,
		     const struct wd_reg_model *rm, const struct catalog_model *m,
		     const struct tier_form *f)
{
	const struct catalog_component *cc = host_cat_comp(hc, m, cid);
	char out[WD_DATA_SLOT_SIZE];

	if (!cc) {
		snprintf(out, sizeof(out), "load: %.150s: component %u is no longer in the "
			 "catalog (rescan)", rm->name, cid);
		req_fail_locked(hc, r, -ESTALE, out);
		return -ESTALE;
	}
	return start_component(hc, r, model, cid, rm->name, cc, f);
}

void hostcache_load_job(struct hostcache *hc, struct tier_job *j)
{
	const struct wd_sqe *sqe = j->sqe;
	struct wd_reg_model rm;
	struct catalog_model m;
	struct tier_form f;
	struct req *r = NULL;
	uint32_t first, n;
	uint16_t len = 0;
	char out[WD_DATA_SLOT_SIZE];
	int ret;

	if (tier_parse_form(sqe, j->arg, j->arg_len, "load", &f, out, &len))
		memset(&f, 0, sizeof(f));
	if (j->c) {
		r = new_req(hc, j->c, sqe->user_data, sqe->flags, sqe->model, sqe->component, -1);
		if (!r) {
			struct wd_cqe cqe = { .user_data = sqe->user_data, .res = -ENOMEM };

			hc->env.sink.post(hc->env.sink.ctx, j->c, &cqe, &j->spare, NULL, 0);
			return;
		}
		r->q.spare = j->spare;
		j->spare = NULL;
	}
	ret = read_model(hc, sqe->model, &rm, &m, out);
	if (ret) {
		if (r) {
			req_fail_locked(hc, r, ret, out);
			req_fanned_out(hc, r);
		}
		return;
	}
	tier_targets(&hc->env, sqe->model, sqe->component, &first, &n);
	for (uint32_t cid = first; cid < first + n; cid++)
		if (start_one(hc, r, sqe->model, cid, &rm, &m, &f))
			break;
	catalog_model_free(&m);
	if (r)
		req_fanned_out(hc, r);
	host_save_coaccess(hc);
}

int hostcache_load_for(struct hostcache *hc, struct tier_client *c, uint64_t user_data,
		       uint8_t flags, uint32_t model, uint32_t comp, int node,
		       hostcache_then_fn then, void *ctx, void *arg)
{
	struct wd_reg_model rm;
	struct catalog_model m;
	struct tier_form f = { 0 };
	struct req *r = new_req(hc, c, user_data, flags & WD_SQE_F_NO_PROGRESS, model, comp, node);
	char out[WD_DATA_SLOT_SIZE];
	int ret;

	if (!r)
		return -ENOMEM;
	r->then = then;
	r->then_ctx = ctx;
	r->then_arg = arg;
	ret = read_model(hc, model, &rm, &m, out);
	if (ret) {
		req_fail_locked(hc, r, ret, out);
		req_fanned_out(hc, r);
		return 0;
	}
	start_one(hc, r, model, comp, &rm, &m, &f);
	catalog_model_free(&m);
	req_fanned_out(hc, r);
	host_save_coaccess(hc);
	return 0;
}
