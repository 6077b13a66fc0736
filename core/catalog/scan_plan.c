/*
 * Discovery's diff against the catalog (phases 2, 4 and 5): the catalog's snapshot of a
 * root, which models to read again, which rows to write and delete, publishing them in one
 * transaction (catalog_apply), and the list of changes reported to the caller.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/catalog/scan_internal.h"
#include "core/base/array.h"

int scan_load_scope(struct root_scan *rs)
{
	int rc = catalog_scope_load(rs->sc->cat, rs->root, &rs->scope);

	if (rc)
		return rc;
	rs->row_kept = calloc(rs->scope.n_files + 1, sizeof(bool));
	rs->model_seen = calloc(rs->scope.n_models + 1, sizeof(bool));
	if (!rs->row_kept || !rs->model_seen)
		return -ENOMEM;
	for (size_t i = 0; i < rs->scope.n_files; i++)
		if (strmap_put(&rs->file_rows, rs->scope.files[i].path, (uint32_t)i))
			return -ENOMEM;
	for (size_t i = 0; i < rs->scope.n_models; i++)
		if (strmap_put(&rs->model_rows, rs->scope.models[i].path, (uint32_t)i))
			return -ENOMEM;
	return 0;
}

static bool storable(const struct model_file *f)
{
	return f->loaded && !f->missing && (f->rc == 0 || f->rc == -EINVAL);
}


/* Decides, for one root, what to read. */
int scan_plan_reads(struct root_scan *rs, struct plan *pl)
{
	for (size_t i = 0; i < rs->n_models; i++) {
		struct pending *p = &rs->models[i];
		uint32_t mi = strmap_get(&rs->model_rows, p->m.path);

		p->row = mi != NONE ? &rs->scope.models[mi] : NULL;
		p->rebuild = !p->row || p->row->sig != p->sig;
		if (mi != NONE)
			rs->model_seen[mi] = true;
		if (p->denied) {
			/* Neither added nor changed on behalf of who could not read it. */
			p->rebuild = false;
			p->drop = !p->row;
			continue;
		}
		for (size_t f = 0; f < p->m.n_files; f++) {
			struct model_file *mf = &p->m.files[f];

			if (mf->kind == MODEL_FILE_ST && !p->rebuild)
				rs->sc->res->n_reused++;
			if (!p->rebuild || mf->loaded || mf->kind == MODEL_FILE_MODEL_INDEX)
				continue;
			if (wd_grow(&pl->to_read, &pl->cap_to_read, pl->n_to_read, sizeof(mf)))
				return -ENOMEM;
			pl->to_read[pl->n_to_read++] = mf;
		}
	}
	return 0;
}

/* @msg without its leading "@path: " (scan_problem() puts the path in front itself). */
static const char *after_path(const char *msg, const char *path)
{
	size_t n = strlen(path);

	if (!strncmp(msg, path, n) && msg[n] == ':' && msg[n + 1] == ' ')
		return msg + n + 2;
	return msg;
}

/* After the reads: finishes the re-read models and fills the plan's writes. */
int scan_plan_writes(struct root_scan *rs, struct plan *pl)
{
	struct scan *sc = rs->sc;

	for (size_t i = 0; i < rs->n_models; i++) {
		struct pending *p = &rs->models[i];

		if (p->denied) {
			/* The catalog keeps what it had of this model and its files. */
			for (size_t f = 0; f < p->m.n_files; f++) {
				uint32_t ri = strmap_get(&rs->file_rows, p->m.files[f].path);

				if (ri != NONE)
					rs->row_kept[ri] = true;
			}
			continue;
		}
		for (size_t f = 0; f < p->m.n_files; f++) {
			struct model_file *mf = &p->m.files[f];

			if (!mf->loaded || mf->missing || !mf->rc || mf->rc == -EINVAL ||
			    mf->rc == -ENOMEM)
				continue;
			if (mf->rc == -ENOENT)
				scan_problem(sc, mf->path, mf->rc, "vanished during the scan (listed, "
					"then gone when opened)");
			else if (mf->rc == -EACCES || mf->rc == -EPERM)
				scan_problem(sc, mf->path, mf->rc, "permission denied");
			else
				scan_problem(sc, mf->path, mf->rc, "%s",
					after_path(mf->err.message, mf->path));
		}
		if (p->m.format == MODEL_SINGLE && p->m.n_files == 1 && p->m.files[0].loaded &&
		    !storable(&p->m.files[0])) {
			/* A single file that cannot be read is a problem, not a model. */
			if (p->m.files[0].rc == -ENOMEM)
				return -ENOMEM;
			p->drop = true;
			if (p->row)
				rs->model_seen[p->row - rs->scope.models] = false;
			continue;
		}
		for (size_t f = 0; f < p->m.n_files; f++) {
			struct model_file *mf = &p->m.files[f];
			uint32_t ri = strmap_get(&rs->file_rows, mf->path);
			const struct catalog_fp_row *row = ri != NONE ? &rs->scope.files[ri] : NULL;

			if (mf->loaded && mf->rc == -ENOMEM)
				return -ENOMEM;
			if (mf->loaded && !storable(mf))
				continue; /* its row, if any, is stale: deleted below */
			if (row) {
				rs->row_kept[ri] = true;
				mf->db_id = row->id;
			}
			if (mf->loaded && (!row || !model_fp_equal(&row->fp, &mf->fp) ||
					   row->valid != (mf->rc == 0))) {
				if (wd_grow(&pl->put_files, &pl->cap_put_files, pl->n_put_files,
					 sizeof(mf)))
					return -ENOMEM;
				pl->put_files[pl->n_put_files++] = mf;
			}
		}
		if (!p->rebuild)
			continue;
		if (model_finish(&p->m))
			return -ENOMEM;
		if (wd_grow(&pl->put_models, &pl->cap_put_models, pl->n_put_models,
			 sizeof(*pl->put_models)))
			return -ENOMEM;
		pl->put_models[pl->n_put_models++] = (struct catalog_put_model){
			.m = &p->m, .id = p->row ? p->row->id : 0, .sig = p->sig, .root = rs->root,
		};
	}
	/* A walk cut short by a bound did not see everything: remove nothing. */
	for (size_t i = 0; i < rs->scope.n_files && !rs->partial; i++) {
		if (rs->row_kept[i])
			continue;
		if (wd_grow(&pl->del_files, &pl->cap_del_files, pl->n_del_files, sizeof(int64_t)))
			return -ENOMEM;
		pl->del_files[pl->n_del_files++] = rs->scope.files[i].id;
	}
	for (size_t i = 0; i < rs->scope.n_models && !rs->partial; i++) {
		if (rs->model_seen[i])
			continue;
		if (wd_grow(&pl->del_models, &pl->cap_del_models, pl->n_del_models, sizeof(int64_t)))
			return -ENOMEM;
		pl->del_models[pl->n_del_models++] = rs->scope.models[i].id;
	}
	if (!rs->scope.root_known)
		pl->roots_new = true;
	return 0;
}

static int add_change(struct scan *sc, size_t *cap, int kind, const char *name, const char *path,
		      bool valid, const char *error)
{
	struct scan_result *r = sc->res;
	struct scan_change *c;

	if (wd_grow(&r->changes, cap, r->n_changes, sizeof(*c)))
		return -ENOMEM;
	c = &r->changes[r->n_changes++];
	memset(c, 0, sizeof(*c));
	c->kind = kind;
	c->valid = valid;
	c->name = strdup(name);
	c->path = strdup(path);
	c->error = error ? strdup(error) : NULL;
	if (!c->name || !c->path || (error && !c->error))
		return -ENOMEM;
	if (kind == SCAN_ADDED)
		r->n_added++;
	else if (kind == SCAN_UPDATED)
		r->n_updated++;
	else
		r->n_removed++;
	return 0;
}

int scan_publish(struct scan *sc, struct plan *pl)
{
	struct catalog_changes ch = {
		.roots = pl->roots,
		.n_roots = pl->n_roots,
		.del_models = pl->del_models,
		.n_del_models = pl->n_del_models,
		.del_files = pl->del_files,
		.n_del_files = pl->n_del_files,
		.put_files = pl->put_files,
		.n_put_files = pl->n_put_files,
		.put_models = pl->put_models,
		.n_put_models = pl->n_put_models,
	};
	int rc;

	if (!pl->roots_new && !pl->n_del_models && !pl->n_del_files && !pl->n_put_files &&
	    !pl->n_put_models)
		return 0; /* nothing changed: nothing is written */
	rc = catalog_apply(sc->cat, &ch);
	sc->res->wrote = rc == 0;
	return rc;
}

/* Counts the models and lists the changes, once the catalog names are final. */
int scan_report(struct scan *sc, struct root_scan *rs, size_t *cap)
{
	int rc = 0;

	for (size_t i = 0; !rc && i < rs->n_models; i++) {
		struct pending *p = &rs->models[i];
		bool valid;

		if (p->drop)
			continue; /* before p->row: a dropped model may have none */
		valid = p->rebuild ? p->m.valid : p->row->valid;
		sc->res->n_models++;
		sc->res->n_invalid += !valid;
		if (p->rebuild)
			rc = add_change(sc, cap, p->row ? SCAN_UPDATED : SCAN_ADDED,
					p->row ? p->row->name : p->m.name, p->m.path, valid,
					p->m.error);
	}
	for (size_t i = 0; !rc && !rs->partial && i < rs->scope.n_models; i++)
		if (!rs->model_seen[i])
			rc = add_change(sc, cap, SCAN_REMOVED, rs->scope.models[i].name,
					rs->scope.models[i].path, true, NULL);
	return rc;
}

void scan_plan_free(struct plan *pl)
{
	free(pl->roots);
	free(pl->del_models);
	free(pl->del_files);
	free(pl->put_files);
	free(pl->put_models);
	free(pl->to_read);
}

