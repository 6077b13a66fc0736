/*
 * Publishing the catalog into the registry (daemon_publish()): every model not yet there is
 * added whole with its components and tensors, published models whose files changed or
 * vanished are flagged stale, and the daemon's model table (d->models) follows the
 * registry's model indices. Run by the worker (and nothing else once the daemon runs).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "core/base/log.h"
#include "core/daemon/internal.h"
#include "core/tier/hostcache.h"

#define MOD "daemon"

struct pub_ctx {
	struct daemon *d;
	struct catalog_model *m;
	uint32_t first_comp;
	int err;
	struct publish_report *rep;
};

/* Counts a refusal of the registry in @rep, keeping the first one's cause and target. */
static void note_left(struct publish_report *rep, int err, const char *model, const char *tensor)
{
	if (!rep->err) {
		rep->err = err;
		if (tensor)
			snprintf(rep->first, sizeof(rep->first), "model %s, tensor %.64s%s (%zu "
				 "bytes)", model, tensor, strlen(tensor) > 64 ? "..." : "",
				 strlen(tensor));
		else
			snprintf(rep->first, sizeof(rep->first), "model %s", model);
	}
}

static int pub_tensor(const struct catalog_tensor *t, void *arg)
{
	struct pub_ctx *p = arg;
	struct registry_tensor_info ti = { .name = t->name, .shape = t->shape,
					   .nbytes = t->end - t->begin };
	uint32_t tid;
	size_t k;
	int ret;

	for (k = 0; k < p->m->n_components; k++)
		if (!strcmp(p->m->components[k].name, t->component))
			break;
	if (k == p->m->n_components)
		return 0;
	ti.component = p->first_comp + (uint32_t)k;
	ti.dtype = t->dtype < 0 ? 0xff : (uint8_t)t->dtype;
	ti.rank = (uint8_t)(t->rank > WD_SHAPE_MAX ? WD_SHAPE_MAX : t->rank);
	ret = registry_add_tensor(p->d->reg, &ti, &tid);
	if (ret == -EEXIST || ret == -ENAMETOOLONG || ret == -EINVAL || ret == -ENOSPC) {
		/* Never silent: counted, and reported by daemon_publish() and the SCAN reply. */
		p->rep->tensors_left++;
		note_left(p->rep, ret, p->m->name, t->name);
		return 0;
	}
	if (ret) {
		p->err = ret;
		return ret;
	}
	/* Absent on every tier: no host offset yet. */
	registry_set_tensor_location(p->d->reg, tid, 0, UINT64_MAX);
	return 0;
}

static uint64_t model_fingerprint(const struct catalog_model *m)
{
	XXH3_state_t *st = XXH3_createState();
	uint64_t h;

	if (!st)
		return 0;
	XXH3_64bits_reset(st);
	for (size_t i = 0; i < m->n_components; i++) {
		const struct catalog_component *c = &m->components[i];

		XXH3_64bits_update(st, c->name, strlen(c->name) + 1);
		for (size_t k = 0; k < c->n_files; k++) {
			XXH3_64bits_update(st, &c->files[k].content_hash, 8);
			XXH3_64bits_update(st, &c->files[k].fp.size, 8);
		}
	}
	h = XXH3_64bits_digest(st);
	XXH3_freeState(st);
	return h;
}

static uint64_t comp_fingerprint(const struct catalog_component *c)
{
	uint64_t h = 0;

	for (size_t k = 0; k < c->n_files; k++)
		h = XXH3_64bits_withSeed(&c->files[k].content_hash, 8, h);
	return h;
}

static int models_reserve(struct daemon *d, size_t n)
{
	struct model_ent *m;
	size_t cap;

	if (n <= d->cap_models)
		return 0;
	cap = d->cap_models ? 2 * d->cap_models : 64;
	while (cap < n)
		cap *= 2;
	m = realloc(d->models, cap * sizeof(*m));
	if (!m)
		return -ENOMEM;
	d->models = m;
	d->cap_models = cap;
	return 0;
}

/*
 * Adds @m to the registry and the model table. Under state_lock. A model whose name the
 * registry refuses is skipped; one that runs out of room part-way stays published with what
 * fit (it is counted in the model table either way, so indices keep matching the registry).
 * Returns 0 or a negative errno.
 */
static int add_model(struct daemon *d, struct catalog *cat, struct catalog_model *m,
		     uint64_t fp, struct publish_report *rep)
{
	struct pub_ctx p = { .d = d, .m = m, .rep = rep };
	char arch[WD_ARCH_MAX];
	uint32_t id, cid;
	int ret;

	ret = models_reserve(d, d->n_models + 1);
	if (ret)
		return ret;
	snprintf(arch, sizeof(arch), "%s", m->arch ? m->arch : "");
	ret = registry_add_model(d->reg, m->name, arch, fp, &id);
	if (ret)
		return ret;
	d->models[id] = (struct model_ent){ .fingerprint = fp };
	d->n_models = id + 1;
	for (size_t i = 0; i < m->n_components; i++) {
		ret = registry_add_component(d->reg, id, m->components[i].name,
					     comp_fingerprint(&m->components[i]), &cid);
		if (ret)
			return ret;
		if (i == 0)
			d->models[id].first_comp = p.first_comp = cid;
		d->models[id].n_comps++;
	}
	ret = catalog_model_tensors(cat, m->id, pub_tensor, &p);
	return p.err ? p.err : ret;
}

int daemon_publish(struct daemon *d, struct catalog *cat, struct publish_report *out)
{
	struct publish_report rep = { 0 };
	struct catalog_model_list list;
	bool *seen = NULL;
	size_t old_n;
	int ret, added = 0;

	ret = catalog_list_models(cat, &list);
	if (ret)
		return ret;
	pthread_mutex_lock(&d->state_lock);
	old_n = d->n_models;
	pthread_mutex_unlock(&d->state_lock);
	/* Only this thread adds models, so old_n stays the count of published ones. */
	seen = calloc(old_n + 1, sizeof(*seen));
	if (!seen) {
		catalog_model_list_free(&list);
		return -ENOMEM;
	}
	for (size_t i = 0; i < list.n; i++) {
		struct catalog_model m;
		uint32_t id, first = WD_ID_NONE;
		uint64_t fp;

		/* A large catalog takes a while (the worker publishes it after the start):
		 * SIGTERM must not wait for all of it. */
		if (atomic_load(&d->stopping))
			break;
		ret = catalog_get_model(cat, list.models[i].name, &m);
		if (ret) {
			log_warn(MOD, "\"cannot read model from catalog\" model=\"%s\" err=%d",
				 list.models[i].name, ret);
			continue;
		}
		fp = model_fingerprint(&m);
		pthread_mutex_lock(&d->state_lock);
		if (registry_find_model(&d->view, m.name, &id, NULL) == 0 && id < old_n) {
			struct model_ent *e = &d->models[id];
			bool stale = e->fingerprint != fp;

			seen[id] = true;
			if (stale != e->stale) {
				e->stale = stale;
				registry_set_model_flags(d->reg, id, stale ? WD_REG_MODEL_F_STALE : 0);
			}
			if (e->n_comps == m.n_components)
				first = e->first_comp;
		} else if (!registry_has_room(d->reg, 1, m.n_components, m.n_tensors, 0)) {
			/* Whole or not at all: a half-published model would serve "no such
			 * tensor" for what did not fit. */
			rep.models_left++;
			rep.tensors_left += m.n_tensors;
			note_left(&rep, -ENOSPC, m.name, NULL);
		} else {
			ret = add_model(d, cat, &m, fp, &rep);
			if (ret)
				log_warn(MOD, "\"model not fully published\" model=\"%s\" err=%d",
					 m.name, ret);
			added++;
		}
		pthread_mutex_unlock(&d->state_lock);
		/* Outside state_lock: the host tier takes its own lock first (core/tier/hostcache.h). */
		for (size_t k = 0; first != WD_ID_NONE && k < m.n_components; k++)
			hostcache_note_files(d->hc, first + (uint32_t)k, &m.components[k]);
		catalog_model_free(&m);
	}
	pthread_mutex_lock(&d->state_lock);
	for (size_t id = 0; id < old_n; id++) {
		if (seen[id] || d->models[id].stale)
			continue;
		d->models[id].stale = true;
		registry_set_model_flags(d->reg, (uint32_t)id, WD_REG_MODEL_F_STALE);
	}
	ret = lease_table_grow(&d->leases, d->n_models);
	registry_publish(d->reg);
	pthread_mutex_unlock(&d->state_lock);
	free(seen);
	catalog_model_list_free(&list);
	if (rep.models_left || rep.tensors_left) {
		struct registry_usage u;

		registry_usage(&d->view, &u);
		log_warn(MOD, "\"not published: the registry refused them\" models=%u tensors=%"
			 PRIu64 " err=%d first=\"%s\" models_used=%u/%u components_used=%u/%u "
			 "tensors_used=%u/%u names_used=%" PRIu64 "/%" PRIu64 " hint=\"%s\"",
			 rep.models_left, rep.tensors_left, rep.err, rep.first, u.models,
			 u.model_cap, u.comps, u.comp_cap, u.tensors, u.tensor_cap, u.names_used,
			 u.names_size, rep.err == -ENOSPC ? "restart weightd: it sizes the "
			 "registry from the catalog" : "see docs/security.md");
	}
	if (out)
		*out = rep;
	return ret ? ret : added;
}
