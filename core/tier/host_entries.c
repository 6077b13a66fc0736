/*
 * The host tier's entry table: finding entries by identity, form, key and component;
 * binding components to an entry and publishing its tensors in the registry (and taking
 * them back); holding a resident entry (host_hold_locked()); dropping an entry; identity and
 * policy keys; stale files; and deduplication by content (find_same_bytes()). Callers hold the cache lock; the publication takes state_lock.
 */
#include "core/tier/host_internal.h"

static const char *form_name(uint8_t convert)
{
	const struct st_dtype_info *di;

	if (!convert)
		return "stored";
	di = st_dtype_info((enum st_dtype)convert);
	return di ? di->name : "?";
}

struct bind *host_find_bind(const struct entry *e, uint32_t comp)
{
	for (uint32_t i = 0; i < e->n_binds; i++)
		if (e->binds[i].comp == comp)
			return &e->binds[i];
	return NULL;
}

struct entry *host_find_id(struct hostcache *hc, uint64_t id)
{
	for (struct entry *e = hc->entries; e; e = e->next)
		if (e->id == id && !e->cancelled)
			return e;
	return NULL;
}

/* The entry that holds component @comp in form @f, or NULL. */
struct entry *host_find_form(struct hostcache *hc, uint32_t comp, const struct tier_form *f)
{
	for (struct entry *e = hc->entries; e; e = e->next)
		if (!e->cancelled && form_equal(e, f) && host_find_bind(e, comp))
			return e;
	return NULL;
}

/* Whether a full entry of @comp is resident (a failed reload must not hide it). */
bool host_has_resident(struct hostcache *hc, uint32_t comp)
{
	for (struct entry *e = hc->entries; e; e = e->next)
		if (e->resident && e->sel == TIER_SEL_ALL && host_find_bind(e, comp))
			return true;
	return false;
}

void host_publish_bind(struct hostcache *hc, const struct entry *e, const struct bind *b)
{
	for (uint32_t i = 0; i < e->n_t; i++) {
		if (b->tids[i] == NO_TID)
			continue;
		registry_set_tensor_host(hc->env.reg, b->tids[i], true, e->off + e->t[i].off,
					 e->t[i].dtype, e->t[i].nbytes);
	}
}

/* The host state of @comp from the entries bound to it. Under state_lock. */
void host_refresh_state(struct hostcache *hc, uint32_t comp)
{
	uint32_t state = WD_STATE_ABSENT;

	for (struct entry *e = hc->entries; e; e = e->next) {
		if (e->sel != TIER_SEL_ALL || e->cancelled || !host_find_bind(e, comp))
			continue;
		if (e->resident) {
			state = WD_STATE_RESIDENT;
			break;
		}
		state = WD_STATE_LOADING;
	}
	if (state != WD_STATE_LOADING)
		registry_set_state(hc->env.reg, comp, WD_TIER_HOST, state, 0);
}

/*
 * Takes @comp's tensors away from @e: not resident (and back to the file's dtype and size),
 * then republishes every other resident entry bound to @comp in creation order, so that a
 * tensor another form still holds stays resident. Under state_lock.
 */
void host_unpublish_comp(struct hostcache *hc, struct entry *e, const struct bind *b)
{
	uint64_t seq = 0;

	for (uint32_t i = 0; i < e->n_t; i++) {
		if (b->tids[i] == NO_TID)
			continue;
		registry_set_tensor_host(hc->env.reg, b->tids[i], false, UINT64_MAX,
					 e->t[i].src_dtype, e->t[i].src_bytes);
	}
	for (;;) {
		struct entry *next = NULL;
		const struct bind *nb = NULL;

		for (struct entry *f = hc->entries; f; f = f->next) {
			const struct bind *fb;

			if (f == e || !f->resident || f->seq < seq || (next && f->seq > next->seq))
				continue;
			if ((fb = host_find_bind(f, b->comp)) && f->seq >= seq) {
				next = f;
				nb = fb;
			}
		}
		if (!next)
			break;
		host_publish_bind(hc, next, nb);
		seq = next->seq + 1;
	}
}

/* Binds @comp of @model to @e: looks its tensors up in the registry. Returns 0 or -ENOMEM. */
int host_bind_comp(struct hostcache *hc, struct entry *e, uint32_t model, uint32_t comp)
{
	struct bind *b;

	if (host_find_bind(e, comp))
		return 0;
	b = realloc(e->binds, (e->n_binds + 1) * sizeof(*b));
	if (!b)
		return -ENOMEM;
	e->binds = b;
	b = &e->binds[e->n_binds];
	b->model = model;
	b->comp = comp;
	b->tids = malloc((e->n_t ? e->n_t : 1) * sizeof(uint32_t));
	if (!b->tids)
		return -ENOMEM;
	for (uint32_t i = 0; i < e->n_t; i++)
		if (registry_find_tensor(hc->env.view, model, comp, e->t[i].name, &b->tids[i], NULL))
			b->tids[i] = NO_TID;
	e->n_binds++;
	pthread_mutex_lock(hc->env.state_lock);
	if (e->resident) {
		host_publish_bind(hc, e, b);
		host_refresh_state(hc, comp);
	}
	pthread_mutex_unlock(hc->env.state_lock);
	return 0;
}

void host_free_entry(struct entry *e)
{
	for (uint32_t i = 0; i < e->n_t; i++)
		free(e->t[i].name);
	for (uint32_t i = 0; i < e->n_binds; i++)
		free(e->binds[i].tids);
	free(e->t);
	free(e->hdr);
	free(e->binds);
	free(e);
}

void host_unlink_entry(struct hostcache *hc, struct entry *e)
{
	for (struct entry **pp = &hc->entries; *pp; pp = &(*pp)->next) {
		if (*pp == e) {
			*pp = e->next;
			return;
		}
	}
}

/*
 * Drops resident entry @e: unpublished from every component, its extent freed, removed from
 * the policy (@evicted: counted as an eviction). Under the cache lock.
 */
void host_drop_entry(struct hostcache *hc, struct entry *e, bool evicted)
{
	host_unlink_entry(hc, e);
	pthread_mutex_lock(hc->env.state_lock);
	for (uint32_t i = 0; i < e->n_binds; i++) {
		host_unpublish_comp(hc, e, &e->binds[i]);
		host_refresh_state(hc, e->binds[i].comp);
	}
	registry_counter_add(hc->env.reg, WD_CTR_HOST_BYTES, -(int64_t)e->size);
	pthread_mutex_unlock(hc->env.state_lock);
	arena_free(hc->arena, e->off, e->size);
	evict_remove(hc->pol, e->key, evicted);
	log_info(MOD, "\"%s\" key=\"%s\" bytes=%" PRIu64, evicted ? "evicted" : "dropped", e->key,
		 e->size);
	host_free_entry(e);
}

struct entry *host_find_key(struct hostcache *hc, const char *key)
{
	for (struct entry *e = hc->entries; e; e = e->next)
		if (e->resident && !strcmp(e->key, key))
			return e;
	return NULL;
}

/*
 * The policy key of a host entry: "<model>/<component>@<form>[selection]#<identity>". The
 * device tier's plan of a stored-form entry (hostcache_plan_layout()) must name it the same.
 */
void host_entry_key(char *key, size_t size, const char *name, const struct tier_form *f,
		    uint64_t id)
{
	snprintf(key, size - 18, "%.280s@%s%s", name, form_name(f->convert),
		 f->sel == TIER_SEL_PREFIX ? "[prefix]" : f->sel == TIER_SEL_NAMES ? "[names]" : "");
	snprintf(key + strlen(key), 18, "#%016" PRIx64, id);
}

/* A hash of the fingerprints (dev, ino, size, mtime) of @cc's files: the quarantine's. */
uint64_t host_files_fp(const struct catalog_component *cc)
{
	uint64_t h = 0;

	for (size_t k = 0; k < cc->n_files; k++)
		h = XXH3_64bits_withSeed(&cc->files[k].fp, sizeof(cc->files[k].fp), h);
	return h;
}

/* Whether @e, bound to @comp, holds the bytes of files that changed since (under the lock). */
bool host_entry_stale(const struct hostcache *hc, const struct entry *e, uint32_t comp)
{
	return comp < hc->n_cur_qfp && hc->cur_qfp[comp] && e->qfp &&
	       hc->cur_qfp[comp] != e->qfp;
}

void hostcache_note_files(struct hostcache *hc, uint32_t comp, const struct catalog_component *cc)
{
	if (!hc)
		return; /* the publication at start comes before the host tier */
	pthread_mutex_lock(&hc->lock);
	if (comp >= hc->n_cur_qfp) {
		size_t n = comp + 1 > 2 * hc->n_cur_qfp ? comp + 1 : 2 * hc->n_cur_qfp;
		uint64_t *p = realloc(hc->cur_qfp, n * sizeof(*p));

		if (!p) {
			pthread_mutex_unlock(&hc->lock);
			return; /* unknown: such entries are not called stale */
		}
		memset(p + hc->n_cur_qfp, 0, (n - hc->n_cur_qfp) * sizeof(*p));
		hc->cur_qfp = p;
		hc->n_cur_qfp = n;
	}
	hc->cur_qfp[comp] = host_files_fp(cc);
	pthread_mutex_unlock(&hc->lock);
}

static void hash_entry(struct hostcache *hc, struct entry *e)
{
	if (e->hashed)
		return;
	for (uint32_t i = 0; i < e->n_t; i++)
		e->t[i].xxh3 = XXH3_64bits(arena_ptr(hc->arena, e->off + e->t[i].off),
					   e->t[i].nbytes);
	e->hashed = true;
}

/*
 * A resident entry with the same content as freshly loaded @e: same form, same file headers
 * (catalog content hashes), and the same XXH3 for every tensor. Hashing costs a pass over
 * both entries' bytes, and is done only when the headers already match.
 */
struct entry *host_find_same_bytes(struct hostcache *hc, struct entry *e)
{
	for (struct entry *f = hc->entries; f; f = f->next) {
		if (f == e || !f->resident || f->convert != e->convert || f->sel != e->sel ||
		    f->sel_hash != e->sel_hash || f->n_t != e->n_t || f->n_files != e->n_files ||
		    f->tensor_bytes != e->tensor_bytes ||
		    memcmp(f->hdr, e->hdr, e->n_files * sizeof(uint64_t)))
			continue;
		hash_entry(hc, e);
		hash_entry(hc, f);
		uint32_t i;

		for (i = 0; i < e->n_t; i++)
			if (e->t[i].xxh3 != f->t[i].xxh3 || e->t[i].nbytes != f->t[i].nbytes ||
			    strcmp(e->t[i].name, f->t[i].name))
				break;
		if (i == e->n_t)
			return f;
	}
	return NULL;
}

uint64_t host_identity(const struct catalog_component *cc, const struct tier_form *f)
{
	uint64_t h = XXH3_64bits(&f->sel_hash, sizeof(f->sel_hash));
	uint8_t form[2] = { f->convert, f->sel };

	h = XXH3_64bits_withSeed(form, sizeof(form), h);
	for (size_t k = 0; k < cc->n_files; k++)
		if (cc->files[k].kind == MODEL_FILE_ST)
			h = XXH3_64bits_withSeed(&cc->files[k].fp, sizeof(cc->files[k].fp), h);
	return h;
}

/* The catalog component of @m that registry component @comp names, or NULL. */
const struct catalog_component *host_cat_comp(struct hostcache *hc,
					      const struct catalog_model *m, uint32_t comp)
{
	struct wd_reg_component rc;

	if (registry_read_component(hc->env.view, comp, &rc))
		return NULL;
	for (size_t k = 0; k < m->n_components; k++)
		if (!strcmp(m->components[k].name, rc.name))
			return &m->components[k];
	return NULL;
}

/* hostcache_hold() under the cache lock. */
int host_hold_locked(struct hostcache *hc, uint32_t comp, struct hostcache_layout *out)
{
	struct tier_form f = { 0 };
	struct entry *e = NULL;
	struct bind *b;
	int ret = 0;

	memset(out, 0, sizeof(*out));
	/* The resident one: a reload of the same component may be queued next to it. */
	for (struct entry *x = hc->entries; x; x = x->next)
		if (!x->cancelled && x->resident && form_equal(x, &f) && host_find_bind(x, comp))
			e = x;
	if (!e || !e->resident || !(b = host_find_bind(e, comp))) {
		ret = -ENODATA;
		goto out;
	}
	out->t = calloc(e->n_t ? e->n_t : 1, sizeof(*out->t));
	if (!out->t) {
		ret = -ENOMEM;
		goto out;
	}
	for (uint32_t i = 0; i < e->n_t; i++)
		out->t[i] = (struct hostcache_tensor){ .tid = b->tids[i], .off = e->t[i].off,
						       .nbytes = e->t[i].nbytes,
						       .dtype = e->t[i].dtype };
	out->n_t = e->n_t;
	out->off = e->off;
	out->size = e->size;
	out->tensor_bytes = e->tensor_bytes;
	out->base = arena_ptr(hc->arena, e->off);
	snprintf(out->key, sizeof(out->key), "%s", e->key);
	snprintf(out->ckey, sizeof(out->ckey), "%s", e->ckey);
	out->id = e->id;
	e->holds++;
	evict_pin(hc->pol, e->key);
out:
	return ret;
}
