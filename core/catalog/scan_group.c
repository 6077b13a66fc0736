/*
 * Discovery's grouping (phase 3): walked files into models. Diffusers folders first (they
 * own every file below them), then sharded indexes (they own their shards), then the
 * remaining single files. A layout JSON whose fingerprint matches the catalog is not read:
 * the catalog kept the list it derived from it. Each model gets a signature of its layout
 * and files, which decides whether it is read again.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "core/catalog/scan_internal.h"
#include "core/base/array.h"

/* Seed of model signatures; change it when the grouping rules change, so that every model
 * is read again by the first scan of the new version. */
#define SIG_SEED 0x7765696768746431ull

static void mix(uint64_t *sig, const void *p, size_t n)
{
	*sig = XXH3_64bits_withSeed(p, n, *sig);
}

static void mix_file(uint64_t *sig, char tag, const char *path, const struct model_fp *fp)
{
	struct model_fp z = { 0 };

	mix(sig, &tag, 1);
	mix(sig, path, strlen(path) + 1);
	mix(sig, fp ? fp : &z, sizeof(*fp));
}

static struct pending *new_model(struct root_scan *rs, enum model_format format, const char *path)
{
	char name[512];
	struct pending *p;

	if (wd_grow(&rs->models, &rs->cap_models, rs->n_models, sizeof(*p)))
		return NULL;
	p = &rs->models[rs->n_models];
	memset(p, 0, sizeof(*p));
	model_default_name(format, path, name, sizeof(name));
	if (model_init(&p->m, format, name, path))
		return NULL;
	rs->n_models++;
	p->sig = SIG_SEED;
	mix(&p->sig, &(uint8_t){ (uint8_t)format }, 1);
	mix(&p->sig, path, strlen(path) + 1);
	return p;
}

static int add_component(struct pending *p, const char *name)
{
	if (model_add_component(&p->m, name) < 0)
		return -ENOMEM;
	mix(&p->sig, "c", 1);
	mix(&p->sig, name, strlen(name) + 1);
	return 0;
}

static int claim(struct pending *p, struct entry *e)
{
	int i = model_add_file(&p->m, e->kind, e->path, &e->fp);

	if (i < 0)
		return i;
	e->claimed = true;
	p->denied |= e->denied;
	mix_file(&p->sig, 'f', e->path, &e->fp);
	return i;
}

struct names {
	char **v;
	size_t n;
	bool failed; /* the JSON could not be used; its file says why */
};

static void names_free(struct names *n)
{
	for (size_t i = 0; i < n->n; i++)
		free(n->v[i]);
	free(n->v);
	memset(n, 0, sizeof(*n));
}

static int names_copy(struct names *out, char *const *v, size_t n)
{
	out->v = calloc(n ? n : 1, sizeof(char *));
	if (!out->v)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		out->v[i] = strdup(v[i]);
		if (!out->v[i])
			return -ENOMEM;
		out->n++;
	}
	return 0;
}

/* Splits the catalog's one-name-per-line list. */
static int names_split(struct names *out, const char *s)
{
	size_t n = *s ? 1 : 0;

	for (const char *p = s; *p; p++)
		n += *p == '\n';
	out->v = calloc(n ? n : 1, sizeof(char *));
	if (!out->v)
		return -ENOMEM;
	while (*s) {
		size_t l = strcspn(s, "\n");

		out->v[out->n] = strndup(s, l);
		if (!out->v[out->n])
			return -ENOMEM;
		out->n++;
		s += l + (s[l] == '\n');
	}
	return 0;
}

/*
 * The names the layout JSON at file @fi of @p lists: the catalog's copy when the file is
 * unchanged there, else read now.
 */
static int json_names(struct root_scan *rs, struct pending *p, int fi, struct names *out)
{
	struct model_file *f = &p->m.files[fi];
	uint32_t ri = strmap_get(&rs->file_rows, f->path);
	int rc;

	memset(out, 0, sizeof(*out));
	if (p->denied) {
		/* Not read on behalf of a client that could not read it (the model is kept
		 * as the catalog has it, see scan_plan_reads()). */
		out->failed = true;
		return 0;
	}
	if (ri != NONE) {
		const struct catalog_fp_row *row = &rs->scope.files[ri];

		if (row->valid && row->json_info && row->kind == (int)f->kind &&
		    model_fp_equal(&row->fp, &f->fp))
			return names_split(out, row->json_info);
	}
	rc = model_file_load(f);
	rs->sc->res->n_parsed++;
	if (rc == -ENOMEM)
		return rc;
	if (rc) {
		out->failed = true;
		return 0;
	}
	if (f->kind == MODEL_FILE_INDEX)
		return names_copy(out, f->index.shards, f->index.n_shards);
	return names_copy(out, f->names, f->n_names);
}

/* HF shard file names: NAME-00001-of-00004.safetensors. */
static bool shard_like(const char *base)
{
	const char *of = strstr(base, "-of-");
	const char *p;
	size_t d;

	if (!of)
		return false;
	for (p = of; p > base && p[-1] >= '0' && p[-1] <= '9'; p--)
		;
	if (p == of || p == base || p[-1] != '-')
		return false;
	d = strspn(of + 4, "0123456789");
	return d && !strcmp(of + 4 + d, ".safetensors");
}

/* Adds the index entry @ei and its shards to the last component of @p. */
static int build_index(struct root_scan *rs, struct pending *p, uint32_t ei)
{
	struct entry *ie = &rs->entries[ei];
	char path[PATH_MAX];
	struct names nm;
	int fi, rc;

	fi = claim(p, ie);
	if (fi < 0)
		return fi;
	rc = json_names(rs, p, fi, &nm);
	if (rc) {
		names_free(&nm);
		return rc;
	}
	if (nm.failed) {
		/* The index is unreadable: its shards are still its, not single models. */
		const struct dir *d = &rs->dirs[ie->dir];

		for (uint32_t i = d->first; !rc && i < d->first + d->n; i++) {
			struct entry *e = &rs->entries[i];

			if (e->kind == MODEL_FILE_ST && !e->claimed && shard_like(e->base))
				rc = claim(p, e) < 0 ? -ENOMEM : 0;
		}
		return rc;
	}
	for (size_t s = 0; !rc && s < nm.n; s++) {
		uint32_t si;

		rc = model_shard_path(ie->path, nm.v[s], path, sizeof(path));
		if (rc) {
			/* model_index_parse() refused such names; the catalog's copy is stale. */
			rc = model_fail(&p->m, "%s: bad shard name \"%s\"", ie->path, nm.v[s]);
			continue;
		}
		si = strmap_get(&rs->entry_map, path);
		if (si != NONE && rs->entries[si].kind == MODEL_FILE_ST) {
			rc = claim(p, &rs->entries[si]) < 0 ? -ENOMEM : 0;
		} else {
			rc = model_add_missing(&p->m, path) < 0 ? -ENOMEM : 0;
			mix_file(&p->sig, 'm', path, NULL);
		}
	}
	names_free(&nm);
	return rc;
}

static int build_diffusers(struct root_scan *rs, uint32_t di)
{
	const struct dir *d = &rs->dirs[di];
	struct pending *p = new_model(rs, MODEL_DIFFUSERS, d->path);
	struct names nm;
	int fi, rc;

	if (!p)
		return -ENOMEM;
	fi = claim(p, &rs->entries[d->model_index]);
	if (fi < 0)
		return fi;
	rc = json_names(rs, p, fi, &nm);
	if (!rc && nm.failed)
		rc = model_fail(&p->m, "%s", p->m.files[fi].err.message);
	for (size_t c = 0; !rc && c < nm.n; c++) {
		char *sub = scan_join(d->path, nm.v[c]);
		uint32_t si = sub ? strmap_get(&rs->dir_map, sub) : NONE;
		const char **names;
		size_t *pick, np;
		bool is_index;
		const struct dir *sd;

		free(sub);
		if (!sub) {
			rc = -ENOMEM;
			break;
		}
		if (si == NONE)
			continue; /* not there, or a folder without files (scheduler) */
		sd = &rs->dirs[si];
		names = calloc(sd->n + 1, sizeof(*names));
		pick = calloc(sd->n + 1, sizeof(*pick));
		if (!names || !pick) {
			free(names);
			free(pick);
			rc = -ENOMEM;
			break;
		}
		for (uint32_t i = 0; i < sd->n; i++)
			names[i] = rs->entries[sd->first + i].base;
		np = model_choose(names, sd->n, pick, &is_index);
		if (np)
			rc = add_component(p, nm.v[c]);
		for (size_t i = 0; !rc && i < np; i++) {
			uint32_t ei = sd->first + (uint32_t)pick[i];

			if (is_index)
				rc = build_index(rs, p, ei);
			else
				rc = claim(p, &rs->entries[ei]) < 0 ? -ENOMEM : 0;
		}
		free(names);
		free(pick);
	}
	names_free(&nm);
	return rc;
}

static int cmp_pending(const void *a, const void *b)
{
	return strcmp(((const struct pending *)a)->m.path, ((const struct pending *)b)->m.path);
}

int scan_group(struct root_scan *rs)
{
	int rc = 0;

	/* Parents precede children in dirs[], so ownership flows down in one pass. */
	for (size_t i = 0; i < rs->n_dirs; i++) {
		struct dir *d = &rs->dirs[i];
		uint32_t up = d->parent != NONE ? rs->dirs[d->parent].owner : NONE;

		d->owner = up != NONE ? up : d->model_index != NONE ? (uint32_t)i : NONE;
	}
	for (size_t i = 0; !rc && i < rs->n_dirs; i++)
		if (rs->dirs[i].owner == i && !rs->is_file)
			rc = build_diffusers(rs, (uint32_t)i);
	for (size_t i = 0; !rc && i < rs->n_entries; i++) {
		struct entry *e = &rs->entries[i];
		struct pending *p;

		if (e->kind != MODEL_FILE_INDEX || rs->dirs[e->dir].owner != NONE)
			continue;
		p = new_model(rs, MODEL_SHARDED, e->path);
		rc = p ? add_component(p, "") : -ENOMEM;
		if (!rc)
			rc = build_index(rs, p, (uint32_t)i);
	}
	for (size_t i = 0; !rc && i < rs->n_entries; i++) {
		struct entry *e = &rs->entries[i];
		struct pending *p;

		if (e->kind != MODEL_FILE_ST || e->claimed ||
		    (rs->dirs[e->dir].owner != NONE && !rs->is_file))
			continue;
		p = new_model(rs, MODEL_SINGLE, e->path);
		rc = p ? add_component(p, "") : -ENOMEM;
		if (!rc)
			rc = claim(p, e) < 0 ? -ENOMEM : 0;
	}
	if (!rc && rs->n_models)
		qsort(rs->models, rs->n_models, sizeof(*rs->models), cmp_pending);
	return rc;
}

