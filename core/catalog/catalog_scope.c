/*
 * The scanner's side of the catalog (core/catalog/scan*.c): the snapshot of one root's files
 * and models that a scan compares the disk with (catalog_scope_load), and the one
 * transaction that writes a scan's changes (catalog_apply): roots, files and their tensors,
 * models and their components.
 */
#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <xxhash.h>

#include "core/catalog/catalog_internal.h"
#include "core/base/common.h"

/* The bounds of the paths under @root: path = root, or prefix <= path < upper. */
struct scope_keys {
	char root[PATH_MAX];
	char prefix[PATH_MAX + 1];
	char upper[PATH_MAX + 1];
};

static int scope_keys(const char *root, struct scope_keys *k)
{
	size_t n = strlen(root);

	while (n > 1 && root[n - 1] == '/')
		n--;
	if (n + 2 > sizeof(k->root))
		return -ENAMETOOLONG;
	memcpy(k->root, root, n);
	k->root[n] = '\0';
	memcpy(k->prefix, root, n);
	if (n == 1 && root[0] == '/') {
		k->prefix[1] = '\0';
	} else {
		k->prefix[n] = '/';
		k->prefix[n + 1] = '\0';
	}
	/* '0' is the byte after '/', so every "prefix..." string sorts below "prefix0". */
	memcpy(k->upper, k->prefix, strlen(k->prefix) + 1);
	k->upper[strlen(k->upper) - 1] = '0';
	return 0;
}

static void bind_scope(sqlite3_stmt *st, const struct scope_keys *k)
{
	sqlite3_bind_text(st, 1, k->root, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, k->prefix, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, k->upper, -1, SQLITE_STATIC);
}

void catalog_scope_free(struct catalog_scope *s)
{
	for (size_t i = 0; i < s->n_files; i++) {
		free(s->files[i].path);
		free(s->files[i].json_info);
	}
	for (size_t i = 0; i < s->n_models; i++) {
		free(s->models[i].path);
		free(s->models[i].name);
	}
	free(s->files);
	free(s->models);
	memset(s, 0, sizeof(*s));
}

static int read_fp_row(sqlite3_stmt *st, void *elem)
{
	struct catalog_fp_row *r = elem;
	bool nomem = false;

	r->id = sqlite3_column_int64(st, 0);
	r->path = col_strdup(st, 1, &nomem);
	r->kind = sqlite3_column_int(st, 2);
	r->fp.dev = col_u64(st, 3);
	r->fp.ino = col_u64(st, 4);
	r->fp.size = col_u64(st, 5);
	r->fp.mtime_ns = sqlite3_column_int64(st, 6);
	r->valid = sqlite3_column_int(st, 7);
	r->json_info = col_strdup(st, 8, &nomem);
	r->fp.ctime_ns = sqlite3_column_int64(st, 9);
	return nomem ? -ENOMEM : 0;
}

static int read_model_row(sqlite3_stmt *st, void *elem)
{
	struct catalog_model_row *r = elem;
	bool nomem = false;

	r->id = sqlite3_column_int64(st, 0);
	r->path = col_strdup(st, 1, &nomem);
	r->name = col_strdup(st, 2, &nomem);
	r->sig = col_u64(st, 3);
	r->valid = sqlite3_column_int(st, 4);
	return nomem ? -ENOMEM : 0;
}

/* Runs @sql, bound to @k's bounds, collecting its rows into *@v with @read. */
static int load_scope_rows(struct catalog *cat, const struct scope_keys *k, const char *sql,
			   void *v, size_t *n, size_t size, sql_row_fn read, const char *what)
{
	sqlite3_stmt *st;
	int rc = sql_prepare(cat, sql, &st);

	if (rc)
		return rc;
	bind_scope(st, k);
	return sql_collect(cat, st, v, n, size, read, what);
}

int catalog_scope_load(struct catalog *cat, const char *root, struct catalog_scope *out)
{
	struct scope_keys k;
	sqlite3_stmt *st;
	int rc;

	memset(out, 0, sizeof(*out));
	rc = scope_keys(root, &k);
	if (rc)
		return rc;
	/* One read transaction, so that the files and the models are one snapshot. */
	rc = sql_exec(cat, "BEGIN");
	if (rc)
		return rc;
	rc = sql_prepare(cat, "SELECT 1 FROM roots WHERE path = ?", &st);
	if (!rc) {
		bind_text(st, 1, k.root);
		rc = sql_first(cat, st, NULL, NULL, "load root");
		out->root_known = !rc;
		if (rc == -ENOENT)
			rc = 0;
	}
	if (!rc)
		rc = load_scope_rows(cat, &k,
				     "SELECT id, path, kind, dev, ino, size, mtime_ns, valid,"
				     " json_info, ctime_ns FROM files"
				     " WHERE path = ?1 OR (path >= ?2 AND path < ?3)",
				     &out->files, &out->n_files, sizeof(*out->files), read_fp_row,
				     "load files");
	if (!rc)
		rc = load_scope_rows(cat, &k,
				     "SELECT id, path, name, sig, valid FROM models"
				     " WHERE path = ?1 OR (path >= ?2 AND path < ?3)",
				     &out->models, &out->n_models, sizeof(*out->models),
				     read_model_row, "load models");
	rc = sql_end(cat, rc);
	if (rc)
		catalog_scope_free(out);
	return rc;
}

/* The prepared statements one catalog_apply() reuses. */
struct apply {
	struct catalog *cat;
	int64_t now;
	sqlite3_stmt *root;
	sqlite3_stmt *del_model;
	sqlite3_stmt *del_file;
	sqlite3_stmt *put_file;
	sqlite3_stmt *del_tensors;
	sqlite3_stmt *put_tensor;
	sqlite3_stmt *name_used;
	sqlite3_stmt *ins_model;
	sqlite3_stmt *upd_model;
	sqlite3_stmt *del_components;
	sqlite3_stmt *put_component;
	sqlite3_stmt *put_cfile;
	sqlite3_stmt *model_by_path;
};

/* The statements of @a, in the order of apply_prepare()'s SQL. */
#define APPLY_STMTS(a)                                                                     \
	{                                                                                  \
		&(a)->root, &(a)->del_model, &(a)->del_file, &(a)->put_file,               \
		&(a)->del_tensors, &(a)->put_tensor, &(a)->name_used, &(a)->ins_model,     \
		&(a)->upd_model, &(a)->del_components, &(a)->put_component,                \
		&(a)->put_cfile, &(a)->model_by_path,                                      \
	}

static void apply_finalize(struct apply *a)
{
	sqlite3_stmt **v[] = APPLY_STMTS(a);

	for (size_t i = 0; i < ARRAY_SIZE(v); i++) {
		sqlite3_finalize(*v[i]);
		*v[i] = NULL;
	}
}

static int apply_prepare(struct apply *a)
{
	static const char *const sql[] = {
		"INSERT INTO roots(path, added_at, scanned_at) VALUES(?1, ?2, ?2)"
		" ON CONFLICT(path) DO UPDATE SET scanned_at = excluded.scanned_at",
		"DELETE FROM models WHERE id = ?",
		"DELETE FROM files WHERE id = ?",
		"INSERT INTO files(path, kind, dev, ino, size, mtime_ns, header_hash, header_len,"
		" valid, error_code, error_message, n_tensors, data_bytes, params, json_info,"
		" scanned_at, error_offset, error_tensor, ctime_ns) VALUES(?1, ?2, ?3, ?4, ?5,"
		" ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)"
		" ON CONFLICT(path) DO UPDATE SET kind = excluded.kind,"
		" dev = excluded.dev, ino = excluded.ino, size = excluded.size,"
		" mtime_ns = excluded.mtime_ns, ctime_ns = excluded.ctime_ns, header_hash = excluded.header_hash,"
		" header_len = excluded.header_len, valid = excluded.valid,"
		" error_code = excluded.error_code, error_message = excluded.error_message,"
		" n_tensors = excluded.n_tensors, data_bytes = excluded.data_bytes,"
		" params = excluded.params, json_info = excluded.json_info,"
		" scanned_at = excluded.scanned_at, error_offset = excluded.error_offset,"
		" error_tensor = excluded.error_tensor RETURNING id",
		"DELETE FROM tensors WHERE file_id = ?",
		"INSERT INTO tensors(file_id, idx, name, dtype, shape, data_begin, data_end)"
		" VALUES(?, ?, ?, ?, ?, ?, ?)",
		"SELECT 1 FROM models WHERE name = ?",
		"INSERT INTO models(name, path, root, format, arch, valid, error, n_tensors,"
		" params, bytes, st_meta, sig, scanned_at)"
		" VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
		"UPDATE models SET path = ?2, root = ?3, format = ?4, arch = ?5, valid = ?6,"
		" error = ?7, n_tensors = ?8, params = ?9, bytes = ?10, st_meta = ?11,"
		" sig = ?12, scanned_at = ?13 WHERE id = ?1",
		"DELETE FROM components WHERE model_id = ?",
		"INSERT INTO components(model_id, ordinal, name, arch, index_path, valid, error,"
		" n_tensors, params, bytes, dtype_bytes) VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
		"INSERT INTO component_files(component_id, ordinal, file_id) VALUES(?, ?, ?)",
		"SELECT id FROM models WHERE path = ?",
	};
	sqlite3_stmt **v[] = APPLY_STMTS(a);

	static_assert(ARRAY_SIZE(sql) == ARRAY_SIZE(v), "one SQL text per statement");
	for (size_t i = 0; i < ARRAY_SIZE(v); i++) {
		int rc = sql_prepare(a->cat, sql[i], v[i]);

		if (rc)
			return rc;
	}
	return 0;
}

static int del_id(struct apply *a, sqlite3_stmt *st, int64_t id, const char *what)
{
	sqlite3_bind_int64(st, 1, id);
	return sql_step_done(a->cat, st, what);
}

/* The derived list stored with a layout JSON: one name per line. */
static char *json_info(const struct model_file *f)
{
	char *const *v = f->kind == MODEL_FILE_INDEX ? f->index.shards : f->names;
	size_t n = f->kind == MODEL_FILE_INDEX ? f->index.n_shards : f->n_names, len = 1;
	char *s, *p;

	for (size_t i = 0; i < n; i++)
		len += strlen(v[i]) + 1;
	s = p = malloc(len);
	if (!s)
		return NULL;
	*p = '\0';
	for (size_t i = 0; i < n; i++)
		p += sprintf(p, "%s%s", i ? "\n" : "", v[i]);
	return s;
}

static int put_tensors(struct apply *a, const struct model_file *f)
{
	char shape[ST_MAX_RANK * 22 + 4];
	int rc;

	rc = del_id(a, a->del_tensors, f->db_id, "delete tensors");
	for (uint32_t i = 0; !rc && i < f->st.n_tensors; i++) {
		const struct st_tensor *t = &f->st.tensors[i];

		st_shape_str(t, shape, sizeof(shape));
		sqlite3_bind_int64(a->put_tensor, 1, f->db_id);
		sqlite3_bind_int64(a->put_tensor, 2, i);
		sqlite3_bind_text(a->put_tensor, 3, t->name, -1, SQLITE_STATIC);
		sqlite3_bind_text(a->put_tensor, 4, st_dtype_info(t->dtype)->name, -1,
				  SQLITE_STATIC);
		sqlite3_bind_text(a->put_tensor, 5, shape, -1, SQLITE_TRANSIENT);
		bind_u64(a->put_tensor, 6, t->begin);
		bind_u64(a->put_tensor, 7, t->end);
		rc = sql_step_done(a->cat, a->put_tensor, "insert tensor");
	}
	return rc;
}

static int put_file(struct apply *a, struct model_file *f)
{
	sqlite3_stmt *st = a->put_file;
	bool ok = f->rc == 0;
	char *info = NULL;
	int rc;

	if (ok && f->kind != MODEL_FILE_ST && !(info = json_info(f)))
		return -ENOMEM;
	sqlite3_bind_text(st, 1, f->path, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 2, f->kind);
	bind_u64(st, 3, f->fp.dev);
	bind_u64(st, 4, f->fp.ino);
	bind_u64(st, 5, f->fp.size);
	sqlite3_bind_int64(st, 6, f->fp.mtime_ns);
	bind_u64(st, 7, f->content_hash);
	bind_u64(st, 8, ok && f->kind == MODEL_FILE_ST ? f->st.header_len : 0);
	sqlite3_bind_int(st, 9, ok);
	sqlite3_bind_int(st, 10, ok ? 0 : f->err.code);
	if (ok)
		sqlite3_bind_null(st, 11);
	else
		sqlite3_bind_text(st, 11, f->err.message, -1, SQLITE_STATIC);
	bind_u64(st, 12, ok && f->kind == MODEL_FILE_ST ? f->st.n_tensors : 0);
	bind_u64(st, 13, ok && f->kind == MODEL_FILE_ST ? st_data_bytes(&f->st) : 0);
	bind_u64(st, 14, ok && f->kind == MODEL_FILE_ST ? st_param_count(&f->st) : 0);
	if (info)
		sqlite3_bind_text(st, 15, info, -1, free);
	else
		sqlite3_bind_null(st, 15);
	sqlite3_bind_int64(st, 16, a->now);
	if (ok || f->err.offset == UINT64_MAX)
		sqlite3_bind_null(st, 17);
	else
		bind_u64(st, 17, f->err.offset);
	if (ok || !f->err.tensor[0])
		sqlite3_bind_null(st, 18);
	else
		sqlite3_bind_text(st, 18, f->err.tensor, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 19, f->fp.ctime_ns);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		f->db_id = sqlite3_column_int64(st, 0);
		rc = sqlite3_step(st);
	}
	sqlite3_reset(st);
	sqlite3_clear_bindings(st);
	if (rc != SQLITE_DONE)
		return sql_fail(a->cat, rc, "upsert file");
	return f->kind == MODEL_FILE_ST ? put_tensors(a, f) : 0;
}

static bool name_used(struct apply *a, const char *name, int *err)
{
	int rc;

	sqlite3_bind_text(a->name_used, 1, name, -1, SQLITE_STATIC);
	rc = sqlite3_step(a->name_used);
	sqlite3_reset(a->name_used);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		*err = sql_fail(a->cat, rc, "check name");
	return rc == SQLITE_ROW;
}

/* Gives a new model its default name or, when that is taken, NAME-HASH(path). */
static int choose_name(struct apply *a, struct model *m)
{
	char buf[1024];
	char *nn;
	int err = 0;

	snprintf(buf, sizeof(buf), "%s", m->name);
	if (name_used(a, buf, &err)) {
		uint32_t h = (uint32_t)XXH3_64bits(m->path, strlen(m->path));

		snprintf(buf, sizeof(buf), "%s-%08x", m->name, h);
		for (unsigned i = 2; !err && name_used(a, buf, &err); i++)
			snprintf(buf, sizeof(buf), "%s-%08x-%u", m->name, h, i);
	}
	if (err)
		return err;
	if (strcmp(buf, m->name)) {
		nn = strdup(buf);
		if (!nn)
			return -ENOMEM;
		free(m->name);
		m->name = nn;
	}
	return 0;
}

static char *dtype_json(const uint64_t *bytes)
{
	json_t *o = json_object();
	char *s;

	if (!o)
		return NULL;
	for (int d = 0; d < ST_DTYPE_COUNT; d++)
		if (bytes[d] && json_object_set_new(o, st_dtype_info(d)->name,
						    json_integer((json_int_t)bytes[d]))) {
			json_decref(o);
			return NULL;
		}
	s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(o);
	return s;
}

static char *meta_json(const struct model *m)
{
	json_t *o = json_object();
	char *s;

	if (!o)
		return NULL;
	for (size_t i = 0; i < m->n_meta; i++)
		if (json_object_set_new(o, m->meta[i].key, json_string(m->meta[i].value))) {
			json_decref(o);
			return NULL;
		}
	s = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	return s;
}

static int put_components(struct apply *a, int64_t model_id, const struct model *m)
{
	sqlite3_stmt *st = a->put_component;
	int rc;

	for (size_t i = 0; i < m->n_components; i++) {
		const struct model_component *c = &m->components[i];
		char *dt = dtype_json(c->dtype_bytes);
		int64_t cid;
		size_t ord = 0;

		if (!dt)
			return -ENOMEM;
		sqlite3_bind_int64(st, 1, model_id);
		sqlite3_bind_int64(st, 2, (int64_t)i);
		sqlite3_bind_text(st, 3, c->name, -1, SQLITE_STATIC);
		sqlite3_bind_text(st, 4, c->arch, -1, SQLITE_STATIC);
		if (c->index_file >= 0)
			sqlite3_bind_text(st, 5, m->files[c->index_file].path, -1, SQLITE_STATIC);
		else
			sqlite3_bind_null(st, 5);
		sqlite3_bind_int(st, 6, c->valid);
		if (c->error)
			sqlite3_bind_text(st, 7, c->error, -1, SQLITE_STATIC);
		else
			sqlite3_bind_null(st, 7);
		bind_u64(st, 8, c->n_tensors);
		bind_u64(st, 9, c->params);
		bind_u64(st, 10, c->bytes);
		sqlite3_bind_text(st, 11, dt, -1, free);
		rc = sql_step_done(a->cat, st, "insert component");
		sqlite3_clear_bindings(st);
		if (rc)
			return rc;
		cid = sqlite3_last_insert_rowid(a->cat->db);
		for (size_t j = 0; j < c->n_files; j++) {
			const struct model_file *f = model_comp_file(m, c, j);

			if (!f->db_id)
				continue; /* unreadable or missing: only the error records it */
			sqlite3_bind_int64(a->put_cfile, 1, cid);
			sqlite3_bind_int64(a->put_cfile, 2, (int64_t)ord++);
			sqlite3_bind_int64(a->put_cfile, 3, f->db_id);
			rc = sql_step_done(a->cat, a->put_cfile, "insert component file");
			if (rc)
				return rc;
		}
	}
	return 0;
}

static int put_model(struct apply *a, struct catalog_put_model *pm)
{
	struct model *m = pm->m;
	sqlite3_stmt *st;
	char *meta;
	int64_t id = 0;
	int rc;

	/*
	 * The row is looked up again inside the transaction rather than trusting pm->id:
	 * another scan may have added or removed this model since our snapshot was read.
	 */
	sqlite3_bind_text(a->model_by_path, 1, m->path, -1, SQLITE_STATIC);
	rc = sqlite3_step(a->model_by_path);
	if (rc == SQLITE_ROW)
		id = sqlite3_column_int64(a->model_by_path, 0);
	sqlite3_reset(a->model_by_path);
	if (rc != SQLITE_ROW && rc != SQLITE_DONE)
		return sql_fail(a->cat, rc, "find model");
	st = id ? a->upd_model : a->ins_model;
	if (id) {
		rc = del_id(a, a->del_components, id, "delete components");
		if (rc)
			return rc;
		sqlite3_bind_int64(st, 1, id);
	} else {
		rc = choose_name(a, m);
		if (rc)
			return rc;
		sqlite3_bind_text(st, 1, m->name, -1, SQLITE_STATIC);
	}
	meta = meta_json(m);
	if (!meta)
		return -ENOMEM;
	sqlite3_bind_text(st, 2, m->path, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 3, pm->root, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 4, model_format_name(m->format), -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 5, m->arch, -1, SQLITE_STATIC);
	sqlite3_bind_int(st, 6, m->valid);
	if (m->error)
		sqlite3_bind_text(st, 7, m->error, -1, SQLITE_STATIC);
	else
		sqlite3_bind_null(st, 7);
	bind_u64(st, 8, m->n_tensors);
	bind_u64(st, 9, m->params);
	bind_u64(st, 10, m->bytes);
	sqlite3_bind_text(st, 11, meta, -1, free);
	bind_u64(st, 12, pm->sig);
	sqlite3_bind_int64(st, 13, a->now);
	rc = sql_step_done(a->cat, st, id ? "update model" : "insert model");
	sqlite3_clear_bindings(st);
	if (rc)
		return rc;
	if (!id)
		id = sqlite3_last_insert_rowid(a->cat->db);
	return put_components(a, id, m);
}

int catalog_apply(struct catalog *cat, const struct catalog_changes *ch)
{
	struct apply a = { .cat = cat, .now = (int64_t)wd_wall_ns() };
	int rc;

	rc = apply_prepare(&a);
	if (rc) {
		apply_finalize(&a);
		return rc;
	}
	rc = sql_exec(cat, "BEGIN IMMEDIATE");
	if (rc) {
		apply_finalize(&a);
		return rc;
	}
	for (size_t i = 0; !rc && i < ch->n_roots; i++) {
		struct scope_keys k;

		rc = scope_keys(ch->roots[i], &k);
		if (rc)
			break;
		sqlite3_bind_text(a.root, 1, k.root, -1, SQLITE_TRANSIENT);
		sqlite3_bind_int64(a.root, 2, a.now);
		rc = sql_step_done(cat, a.root, "upsert root");
	}
	/* Models first: their components reference the files deleted next. */
	for (size_t i = 0; !rc && i < ch->n_del_models; i++)
		rc = del_id(&a, a.del_model, ch->del_models[i], "delete model");
	for (size_t i = 0; !rc && i < ch->n_del_files; i++)
		rc = del_id(&a, a.del_file, ch->del_files[i], "delete file");
	for (size_t i = 0; !rc && i < ch->n_put_files; i++)
		rc = put_file(&a, ch->put_files[i]);
	/* Existing models (which keep their names) before new ones (which pick names). */
	for (size_t i = 0; !rc && i < ch->n_put_models; i++)
		if (ch->put_models[i].id)
			rc = put_model(&a, &ch->put_models[i]);
	for (size_t i = 0; !rc && i < ch->n_put_models; i++)
		if (!ch->put_models[i].id)
			rc = put_model(&a, &ch->put_models[i]);
	apply_finalize(&a);
	return sql_end(cat, rc);
}

