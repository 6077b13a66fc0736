/*
 * What the host tier offers the device tier (core/tier/devcache.c): holding a resident
 * stored-form entry while it is copied to a GPU, demotion from a GPU into a new host entry
 * (reserve, commit, cancel), the plan of a component's layout for the disk -> VRAM path,
 * and the arena's address.
 */
#include "core/tier/host_internal.h"

int hostcache_hold(struct hostcache *hc, uint32_t comp, struct hostcache_layout *out)
{
	int ret;

	pthread_mutex_lock(&hc->lock);
	ret = host_hold_locked(hc, comp, out);
	pthread_mutex_unlock(&hc->lock);
	return ret;
}

void hostcache_unhold(struct hostcache *hc, const struct hostcache_layout *l)
{
	if (l->key[0]) {
		pthread_mutex_lock(&hc->lock);
		for (struct entry *e = hc->entries; e; e = e->next) {
			if (e->resident && e->holds && !strcmp(e->key, l->key)) {
				e->holds--;
				evict_unpin(hc->pol, e->key);
				break;
			}
		}
		pthread_mutex_unlock(&hc->lock);
	}
}

int hostcache_adopt_reserve(struct hostcache *hc, const struct hostcache_layout *l, void **dst,
			    char *msg, size_t msg_len)
{
	struct evict_victims v = { 0 };
	uint64_t now = wd_now_ns(), off = 0, avail, busy;
	char amsg[WD_DATA_SLOT_SIZE];
	bool allocated;
	int ret;

	*dst = NULL;
	pthread_mutex_lock(&hc->lock);
	if (host_find_id(hc, l->id)) {
		pthread_mutex_unlock(&hc->lock);
		snprintf(msg, msg_len, "%.200s is resident on the host already", l->key);
		return -EEXIST;
	}
	/* Demotion never evicts: it only keeps bytes that would otherwise be read again. The
	 * policy's reservations include a shrunk budget's standing one (hc->shrink), which
	 * hc->budget already leaves out. */
	busy = evict_used(hc->pol) + evict_reserved(hc->pol) - hc->shrink;
	avail = busy < hc->budget ? hc->budget - busy : 0;
	if (l->size > avail) {
		pthread_mutex_unlock(&hc->lock);
		snprintf(msg, msg_len, "the host budget has %" PRIu64 " bytes free, %" PRIu64
			 " needed, and demotion does not evict", avail, l->size);
		return -ENOSPC;
	}
	ret = evict_admit(hc->pol, l->key, l->size, now, &v, amsg, sizeof(amsg));
	if (ret) {
		evict_victims_free(&v);
		pthread_mutex_unlock(&hc->lock);
		snprintf(msg, msg_len, "%s", amsg);
		return ret;
	}
	/* With the room checked above there are no victims; were there any, they go as in
	 * host_make_room(), so that the policy and the entries agree. */
	host_drop_victims(hc, &v);
	ret = arena_alloc(hc->arena, l->size, &off);
	allocated = !ret;
	/* Faulted in now when memory is tight, so that a lack of it is an error here rather than
	 * SIGBUS in the device's copy. */
	if (!ret && recovery_populate_needed(l->size))
		ret = recovery_populate(arena_ptr(hc->arena, off), l->size);
	if (ret) {
		if (allocated)
			arena_free(hc->arena, off, l->size);
		evict_unreserve(hc->pol, l->size);
		pthread_mutex_unlock(&hc->lock);
		snprintf(msg, msg_len, "no host extent of %" PRIu64 " bytes: %s", l->size,
			 strerror(-ret));
		return ret;
	}
	*dst = arena_ptr(hc->arena, off);
	pthread_mutex_unlock(&hc->lock);
	return 0;
}

void hostcache_adopt_cancel(struct hostcache *hc, const struct hostcache_layout *l, void *dst)
{
	if (!dst)
		return;
	pthread_mutex_lock(&hc->lock);
	arena_free(hc->arena, (uint64_t)((uint8_t *)dst - (uint8_t *)arena_ptr(hc->arena, 0)),
		   l->size);
	evict_unreserve(hc->pol, l->size);
	pthread_mutex_unlock(&hc->lock);
}

int hostcache_adopt_commit(struct hostcache *hc, const struct hostcache_layout *l, uint32_t model,
			   uint32_t comp, void *dst)
{
	uint64_t now = wd_now_ns(), off;
	struct entry *e;

	pthread_mutex_lock(&hc->lock);
	off = (uint64_t)((uint8_t *)dst - (uint8_t *)arena_ptr(hc->arena, 0));
	if (host_find_id(hc, l->id)) {
		/* A load of the same form finished while the bytes were copied: keep that one. */
		arena_free(hc->arena, off, l->size);
		evict_unreserve(hc->pol, l->size);
		pthread_mutex_unlock(&hc->lock);
		return 0;
	}
	e = calloc(1, sizeof(*e));
	if (e)
		e->t = calloc(l->n_t ? l->n_t : 1, sizeof(*e->t));
	if (!e || !e->t) {
		arena_free(hc->arena, off, l->size);
		free(e);
		evict_unreserve(hc->pol, l->size);
		pthread_mutex_unlock(&hc->lock);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < l->n_t; i++) {
		struct wd_reg_tensor rt;

		if (l->t[i].tid == NO_TID || registry_read_tensor(hc->env.view, l->t[i].tid, &rt))
			continue;
		e->t[e->n_t] = (struct tinfo){ .off = l->t[i].off, .nbytes = l->t[i].nbytes,
					       .src_bytes = l->t[i].nbytes, .dtype = rt.dtype,
					       .src_dtype = rt.dtype, .name = strdup(rt.name) };
		if (!e->t[e->n_t].name)
			break;
		e->n_t++;
	}
	e->id = l->id;
	e->seq = hc->next_seq++;
	snprintf(e->key, sizeof(e->key), "%s", l->key);
	snprintf(e->ckey, sizeof(e->ckey), "%s", l->ckey);
	e->off = off;
	e->size = l->size;
	e->node = -1;		/* not bound: host_place_extent() never saw this extent */
	e->tensor_bytes = l->tensor_bytes;
	e->last_use_ns = now;
	e->resident = true;
	evict_insert(hc->pol, e->key, e->size, now, false);
	evict_set_ttl(hc->pol, e->key, hc->ttl_ns);	/* the keep-alive in force, as host_on_done() */
	e->next = hc->entries;
	hc->entries = e;
	host_bind_comp(hc, e, model, comp);
	pthread_mutex_lock(hc->env.state_lock);
	registry_counter_add(hc->env.reg, WD_CTR_HOST_BYTES, (int64_t)e->size);
	pthread_mutex_unlock(hc->env.state_lock);
	log_info(MOD, "\"adopted from a GPU\" key=\"%s\" bytes=%" PRIu64, e->key, e->size);
	pthread_mutex_unlock(&hc->lock);
	return 0;
}

bool hostcache_has(struct hostcache *hc, uint32_t comp)
{
	struct tier_form f = { 0 };
	struct entry *e;
	bool yes;

	pthread_mutex_lock(&hc->lock);
	e = host_find_form(hc, comp, &f);
	yes = e && e->resident;
	pthread_mutex_unlock(&hc->lock);
	return yes;
}

void hostcache_arena(struct hostcache *hc, void **base, uint64_t *size)
{
	*base = arena_ptr(hc->arena, 0);
	*size = hc->arena->seg.size;
}

int hostcache_plan_layout(struct hostcache *hc, uint32_t model, uint32_t comp,
			  struct hostcache_layout *out, struct hostcache_src **srcs, char *msg)
{
	struct tier_form f = { 0 };
	struct wd_reg_model rm;
	struct catalog_model m;
	const struct catalog_component *cc;
	struct load_file_spec *files = NULL;
	struct load_plan *plan = NULL;
	struct hostcache_src *src = NULL;
	char name[WD_NAME_MAX * 2 + 2];
	uint32_t n_files;
	int ret;

	memset(out, 0, sizeof(*out));
	*srcs = NULL;
	ret = registry_read_model(hc->env.view, model, &rm);
	if (!ret)
		ret = catalog_get_model(*hc->env.cat, rm.name, &m);
	if (ret) {
		snprintf(msg, WD_DATA_SLOT_SIZE, "load: model %u: %s", model, strerror(-ret));
		return ret;
	}
	cc = host_cat_comp(hc, &m, comp);
	if (!cc) {
		snprintf(msg, WD_DATA_SLOT_SIZE, "load: %.150s: component %u is no longer in the "
			 "catalog (rescan)", rm.name, comp);
		ret = -ESTALE;
		goto out;
	}
	snprintf(name, sizeof(name), "%s%s%s", rm.name, cc->name[0] ? "/" : "", cc->name);
	ret = host_spec_files(cc, &files, &n_files);
	if (!ret)
		ret = loader_plan(&(struct load_spec){ .name = name, .files = files,
						       .n_files = n_files },
				  loader_chunk(hc->loader), &plan, msg, WD_DATA_SLOT_SIZE);
	if (ret)
		goto out;
	out->t = calloc(plan->n_tensors ? plan->n_tensors : 1, sizeof(*out->t));
	src = calloc(plan->n_tensors ? plan->n_tensors : 1, sizeof(*src));
	if (!out->t || !src) {
		ret = -ENOMEM;
		goto out;
	}
	for (uint32_t i = 0; i < plan->n_tensors; i++) {
		const struct load_tensor *T = &plan->tensors[i];

		out->t[i] = (struct hostcache_tensor){ .off = T->off, .nbytes = T->nbytes,
						       .dtype = T->dtype };
		if (registry_find_tensor(hc->env.view, model, comp, T->name, &out->t[i].tid, NULL))
			out->t[i].tid = NO_TID;
		src[i] = (struct hostcache_src){ .path = strdup(files[T->file].path),
						 .off = T->src_off, .len = T->src_bytes };
		out->n_t++;
		if (!src[i].path) {
			ret = -ENOMEM;
			goto out;
		}
	}
	out->id = host_identity(cc, &f);
	host_entry_key(out->key, sizeof(out->key), name, &f, out->id);
	snprintf(out->ckey, sizeof(out->ckey), "%.*s", (int)sizeof(out->ckey) - 1, name);
	out->size = round_extent(plan->bytes);
	out->tensor_bytes = plan->tensor_bytes;
out:
	if (ret) {
		hostcache_src_free(src, out->n_t);
		src = NULL;
		free(out->t);
		memset(out, 0, sizeof(*out));
	}
	*srcs = src;
	loader_plan_free(plan);
	free(files);
	catalog_model_free(&m);
	return ret;
}

void hostcache_src_free(struct hostcache_src *src, uint32_t n)
{
	for (uint32_t i = 0; src && i < n; i++)
		free(src[i].path);
	free(src);
}
