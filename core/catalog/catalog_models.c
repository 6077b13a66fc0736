/*
 * Reading models: the list of every model with its components and user metadata, one model
 * with its components and their files, a model's tensors, resolving a name or a path to a
 * model, the roots, and the counts.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "core/catalog/catalog_internal.h"

static void file_free(struct catalog_file *f)
{
	free(f->path);
	free(f->error_message);
	free(f->error_tensor);
}

static void kv_free(struct st_kv *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		free(v[i].key);
		free(v[i].value);
	}
	free(v);
}

void catalog_model_free(struct catalog_model *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->n_components; i++) {
		struct catalog_component *c = &m->components[i];

		for (size_t j = 0; j < c->n_files; j++)
			file_free(&c->files[j]);
		free(c->files);
		free(c->name);
		free(c->arch);
		free(c->index_path);
		free(c->error);
	}
	free(m->components);
	kv_free(m->meta, m->n_meta);
	kv_free(m->user, m->n_user);
	free(m->name);
	free(m->path);
	free(m->root);
	free(m->arch);
	free(m->error);
	memset(m, 0, sizeof(*m));
}

void catalog_model_list_free(struct catalog_model_list *list)
{
	for (size_t i = 0; i < list->n; i++)
		catalog_model_free(&list->models[i]);
	free(list->models);
	memset(list, 0, sizeof(*list));
}

/* Parses a stored JSON object of strings into key-value pairs. */
static int parse_meta(const char *text, struct st_kv **out, size_t *n)
{
	json_t *o = text ? json_loads(text, 0, NULL) : NULL;
	const char *key;
	json_t *v;
	size_t k = 0;
	int rc = 0;

	*out = NULL;
	*n = 0;
	if (!json_is_object(o)) {
		json_decref(o);
		return 0;
	}
	*out = calloc(json_object_size(o) + 1, sizeof(**out));
	if (!*out) {
		json_decref(o);
		return -ENOMEM;
	}
	json_object_foreach(o, key, v) {
		(*out)[k].key = strdup(key);
		(*out)[k].value = strdup(json_is_string(v) ? json_string_value(v) : "");
		k++;
		if (!(*out)[k - 1].key || !(*out)[k - 1].value) {
			rc = -ENOMEM;
			break;
		}
	}
	*n = k;
	json_decref(o);
	return rc;
}

static void parse_dtype_bytes(const char *text, uint64_t *bytes)
{
	json_t *o = text ? json_loads(text, 0, NULL) : NULL;
	const char *key;
	json_t *v;

	memset(bytes, 0, ST_DTYPE_COUNT * sizeof(*bytes));
	json_object_foreach(o, key, v) {
		int d = st_dtype_from_name(key);

		if (d >= 0 && json_is_integer(v))
			bytes[d] = (uint64_t)json_integer_value(v);
	}
	json_decref(o);
}

#define MODEL_COLS                                                                         \
	"m.id, m.name, m.path, m.root, m.format, m.arch, m.valid, m.error, m.n_tensors,"   \
	" m.params, m.bytes, m.scanned_at, m.st_meta"

/* A row of MODEL_COLS into the struct catalog_model at @elem. */
static int read_model_row(sqlite3_stmt *st, void *elem)
{
	struct catalog_model *m = elem;
	bool nomem = false;
	const char *fmt = col_text(st, 4);

	m->id = sqlite3_column_int64(st, 0);
	m->name = col_strdup(st, 1, &nomem);
	m->path = col_strdup(st, 2, &nomem);
	m->root = col_strdup(st, 3, &nomem);
	m->format = fmt ? model_format_from_name(fmt) : -1;
	m->arch = col_strdup(st, 5, &nomem);
	m->valid = sqlite3_column_int(st, 6);
	m->error = col_strdup(st, 7, &nomem);
	m->n_tensors = col_u64(st, 8);
	m->params = col_u64(st, 9);
	m->bytes = col_u64(st, 10);
	m->scanned_at_ns = sqlite3_column_int64(st, 11);
	if (nomem)
		return -ENOMEM;
	return parse_meta(col_text(st, 12), &m->meta, &m->n_meta);
}

#define COMPONENT_COLS                                                                     \
	"c.model_id, c.id, c.name, c.arch, c.index_path, c.valid, c.error, c.n_tensors,"   \
	" c.params, c.bytes, c.dtype_bytes"

/* A row of COMPONENT_COLS into the struct catalog_component at @elem. */
static int read_component_row(sqlite3_stmt *st, void *elem)
{
	struct catalog_component *c = elem;
	bool nomem = false;

	c->id = sqlite3_column_int64(st, 1);
	c->name = col_strdup(st, 2, &nomem);
	c->arch = col_strdup(st, 3, &nomem);
	c->index_path = col_strdup(st, 4, &nomem);
	c->valid = sqlite3_column_int(st, 5);
	c->error = col_strdup(st, 6, &nomem);
	c->n_tensors = col_u64(st, 7);
	c->params = col_u64(st, 8);
	c->bytes = col_u64(st, 9);
	parse_dtype_bytes(col_text(st, 10), c->dtype_bytes);
	return nomem ? -ENOMEM : 0;
}

static int add_component(struct catalog_model *m, sqlite3_stmt *st)
{
	struct catalog_component *c;

	c = realloc(m->components, (m->n_components + 1) * sizeof(*c));
	if (!c)
		return -ENOMEM;
	m->components = c;
	c = &m->components[m->n_components++];
	memset(c, 0, sizeof(*c));
	return read_component_row(st, c);
}

static int add_user(struct catalog_model *m, const char *key, const char *value)
{
	struct st_kv *kv = realloc(m->user, (m->n_user + 1) * sizeof(*kv));

	if (!kv)
		return -ENOMEM;
	m->user = kv;
	kv = &m->user[m->n_user++];
	kv->key = strdup(key);
	kv->value = strdup(value);
	return kv->key && kv->value ? 0 : -ENOMEM;
}

/* A (key, value) row of model_meta into the user metadata of the model @arg. */
static int read_user_row(sqlite3_stmt *st, void *arg)
{
	return add_user(arg, col_text(st, 0), col_text(st, 1));
}

static int read_u64(sqlite3_stmt *st, void *out)
{
	*(uint64_t *)out = col_u64(st, 0);
	return 0;
}

static int count_query(struct catalog *cat, const char *sql, uint64_t *out)
{
	sqlite3_stmt *st;
	int rc = sql_prepare(cat, sql, &st);

	return rc ? rc : sql_first(cat, st, read_u64, out, "count");
}

int catalog_counts(struct catalog *cat, uint64_t *models, uint64_t *components,
		   uint64_t *tensors)
{
	int rc = count_query(cat, "SELECT COUNT(*) FROM models", models);

	if (!rc)
		rc = count_query(cat, "SELECT COUNT(*) FROM components", components);
	if (!rc)
		rc = count_query(cat, "SELECT COALESCE(SUM(n_tensors), 0) FROM models", tensors);
	return rc;
}

/* ---- the list of every model ---- */

/* Component rows join their model by id through a sorted (id, position) table. */
struct id_slot {
	int64_t id;
	size_t pos;
};

static int cmp_id(const void *a, const void *b)
{
	const struct id_slot *x = a, *y = b;

	return x->id < y->id ? -1 : x->id > y->id;
}

struct component_join {
	struct catalog_model_list *out;
	struct id_slot *ids;
};

static int join_component(sqlite3_stmt *st, void *arg)
{
	struct component_join *j = arg;
	struct id_slot key = { sqlite3_column_int64(st, 0), 0 };
	struct id_slot *hit = bsearch(&key, j->ids, j->out->n, sizeof(*j->ids), cmp_id);

	return hit ? add_component(&j->out->models[hit->pos], st) : 0;
}

static int list_components(struct catalog *cat, struct catalog_model_list *out)
{
	struct component_join j = { out, calloc(out->n, sizeof(*j.ids)) };
	int rc;

	if (!j.ids)
		return -ENOMEM;
	for (size_t i = 0; i < out->n; i++)
		j.ids[i] = (struct id_slot){ out->models[i].id, i };
	qsort(j.ids, out->n, sizeof(*j.ids), cmp_id);
	rc = sql_run(cat, "SELECT " COMPONENT_COLS " FROM components c"
		     " ORDER BY c.model_id, c.ordinal", join_component, &j, "list components");
	free(j.ids);
	return rc;
}

/*
 * User metadata is keyed by name and the list is sorted by name (binary collation, which is
 * strcmp order), so rows join by binary search.
 */
static int join_user(sqlite3_stmt *st, void *arg)
{
	struct catalog_model_list *out = arg;
	const char *name = col_text(st, 0);
	size_t lo = 0, hi = out->n;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		int d = strcmp(out->models[mid].name, name);

		if (!d)
			return read_user_row(st, &out->models[mid]);
		if (d < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	return 0;
}

int catalog_list_models(struct catalog *cat, struct catalog_model_list *out)
{
	sqlite3_stmt *st;
	int rc;

	memset(out, 0, sizeof(*out));
	rc = sql_exec(cat, "BEGIN");
	if (rc)
		return rc;
	rc = sql_prepare(cat, "SELECT " MODEL_COLS " FROM models m ORDER BY m.name", &st);
	if (!rc)
		rc = sql_collect(cat, st, &out->models, &out->n, sizeof(*out->models),
				 read_model_row, "list models");
	if (!rc && out->n)
		rc = list_components(cat, out);
	if (!rc && out->n)
		rc = sql_run(cat, "SELECT model, key, value FROM model_meta ORDER BY model, key",
			     join_user, out, "list model metadata");
	rc = sql_end(cat, rc);
	if (rc)
		catalog_model_list_free(out);
	return rc;
}

/* ---- one model ---- */

/* Where a lookup() puts the first row's id and name. */
struct found {
	int64_t *id;
	char *name;
	size_t size;
};

static int read_found(sqlite3_stmt *st, void *arg)
{
	struct found *f = arg;

	*f->id = sqlite3_column_int64(st, 0);
	if (f->name && (size_t)snprintf(f->name, f->size, "%s", col_text(st, 1)) >= f->size)
		return -ENAMETOOLONG;
	return 0;
}

/* Runs @sql (one text parameter) and returns the id and name of the first row. */
static int lookup(struct catalog *cat, const char *sql, const char *arg, int64_t *id,
		  char *name, size_t size)
{
	struct found f = { id, name, size };
	sqlite3_stmt *st;
	int rc = sql_prepare(cat, sql, &st);

	if (rc)
		return rc;
	bind_text(st, 1, arg);
	return sql_first(cat, st, read_found, &f, "resolve model");
}
int catalog_resolve(struct catalog *cat, const char *model, int64_t *id, char *name,
		    size_t size)
{
	static const char by_name[] = "SELECT id, name FROM models WHERE name = ?";
	static const char by_path[] = "SELECT id, name FROM models WHERE path = ?";
	static const char by_file[] =
		"SELECT m.id, m.name FROM files f JOIN component_files cf ON cf.file_id = f.id"
		" JOIN components c ON c.id = cf.component_id JOIN models m ON m.id = c.model_id"
		" WHERE f.path = ? ORDER BY m.id LIMIT 1";
	/* A sharded model's path is its index; its directory names it too. */
	static const char by_dir[] =
		"SELECT id, name FROM models WHERE format = 'sharded'"
		" AND path > ?1 || '/' AND path < ?1 || '0'"
		" AND instr(substr(path, length(?1) + 2), '/') = 0 ORDER BY path LIMIT 1";
	char buf[PATH_MAX + 1], cwd[PATH_MAX], given[PATH_MAX + 1], absol[2 * PATH_MAX + 2];
	const char *cands[3];
	size_t nc = 0, n;
	int rc;

	rc = lookup(cat, by_name, model, id, name, size);
	if (rc != -ENOENT)
		return rc;
	/* Paths: as given (without trailing slashes), made absolute, and resolved. */
	n = strlen(model);
	while (n > 1 && model[n - 1] == '/')
		n--;
	if (n >= sizeof(buf))
		return -ENAMETOOLONG;
	memcpy(given, model, n);
	given[n] = '\0';
	cands[nc++] = given;
	if (given[0] != '/' && getcwd(cwd, sizeof(cwd))) {
		snprintf(absol, sizeof(absol), "%s/%s", cwd, given);
		cands[nc++] = absol;
	}
	if (realpath(given, buf))
		cands[nc++] = buf;
	for (size_t i = 0; i < nc; i++) {
		rc = lookup(cat, by_path, cands[i], id, name, size);
		if (rc != -ENOENT)
			return rc;
		rc = lookup(cat, by_file, cands[i], id, name, size);
		if (rc != -ENOENT)
			return rc;
		rc = lookup(cat, by_dir, cands[i], id, name, size);
		if (rc != -ENOENT)
			return rc;
	}
	return -ENOENT;
}

static int read_file_row(sqlite3_stmt *st, void *elem)
{
	struct catalog_file *f = elem;
	bool nomem = false;

	f->id = sqlite3_column_int64(st, 0);
	f->path = col_strdup(st, 1, &nomem);
	f->kind = sqlite3_column_int(st, 2);
	f->fp.dev = col_u64(st, 3);
	f->fp.ino = col_u64(st, 4);
	f->fp.size = col_u64(st, 5);
	f->fp.mtime_ns = sqlite3_column_int64(st, 6);
	f->content_hash = col_u64(st, 7);
	f->header_len = col_u64(st, 8);
	f->valid = sqlite3_column_int(st, 9);
	f->error_code = sqlite3_column_int(st, 10);
	f->error_message = col_strdup(st, 11, &nomem);
	f->n_tensors = col_u64(st, 12);
	f->data_bytes = col_u64(st, 13);
	f->params = col_u64(st, 14);
	f->scanned_at_ns = sqlite3_column_int64(st, 15);
	f->error_offset = sqlite3_column_type(st, 16) == SQLITE_NULL ? UINT64_MAX
								     : col_u64(st, 16);
	f->error_tensor = col_strdup(st, 17, &nomem);
	f->fp.ctime_ns = sqlite3_column_int64(st, 18);
	return nomem ? -ENOMEM : 0;
}

static int load_files(struct catalog *cat, struct catalog_component *c)
{
	sqlite3_stmt *st;
	int rc;

	rc = sql_prepare(cat,
			 "SELECT f.id, f.path, f.kind, f.dev, f.ino, f.size, f.mtime_ns,"
			 " f.header_hash, f.header_len, f.valid, f.error_code, f.error_message,"
			 " f.n_tensors, f.data_bytes, f.params, f.scanned_at, f.error_offset,"
			 " f.error_tensor, f.ctime_ns FROM component_files cf"
			 " JOIN files f ON f.id = cf.file_id WHERE cf.component_id = ?"
			 " ORDER BY cf.ordinal",
			 &st);
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, c->id);
	return sql_collect(cat, st, &c->files, &c->n_files, sizeof(*c->files), read_file_row,
			   "load component files");
}

/* Prepares @sql and binds @id to its one parameter. */
static int prepare_by_id(struct catalog *cat, const char *sql, int64_t id, sqlite3_stmt **st)
{
	int rc = sql_prepare(cat, sql, st);

	if (!rc)
		sqlite3_bind_int64(*st, 1, id);
	return rc;
}

static int get_model(struct catalog *cat, int64_t id, struct catalog_model *out)
{
	sqlite3_stmt *st;
	int rc;

	rc = prepare_by_id(cat, "SELECT " MODEL_COLS " FROM models m WHERE m.id = ?", id, &st);
	if (!rc)
		rc = sql_first(cat, st, read_model_row, out, "get model");
	if (!rc)
		rc = prepare_by_id(cat, "SELECT " COMPONENT_COLS " FROM components c"
				   " WHERE c.model_id = ? ORDER BY c.ordinal", id, &st);
	if (!rc)
		rc = sql_collect(cat, st, &out->components, &out->n_components,
				 sizeof(*out->components), read_component_row, "get components");
	for (size_t i = 0; !rc && i < out->n_components; i++)
		rc = load_files(cat, &out->components[i]);
	if (!rc)
		rc = sql_prepare(cat, "SELECT key, value FROM model_meta WHERE model = ?"
				 " ORDER BY key", &st);
	if (rc)
		return rc;
	bind_text(st, 1, out->name);
	return sql_each(cat, st, read_user_row, out, "get model metadata");
}

int catalog_get_model(struct catalog *cat, const char *model, struct catalog_model *out)
{
	int64_t id;
	int rc;

	memset(out, 0, sizeof(*out));
	rc = sql_exec(cat, "BEGIN");
	if (rc)
		return rc;
	rc = catalog_resolve(cat, model, &id, NULL, 0);
	if (!rc)
		rc = get_model(cat, id, out);
	rc = sql_end(cat, rc);
	if (rc)
		catalog_model_free(out);
	return rc;
}

/* ---- a model's tensors, the roots ---- */

/* Parses "[a, b, c]" into @t's rank and shape. */
static void parse_shape(const char *s, struct catalog_tensor *t)
{
	t->rank = 0;
	while (s && *s && t->rank < ST_MAX_RANK) {
		char *end;
		unsigned long long v;

		s += strcspn(s, "0123456789");
		if (!*s)
			break;
		v = strtoull(s, &end, 10);
		t->shape[t->rank++] = v;
		s = end;
	}
}

/* The caller's callback and its argument, for the row functions that call one per row. */
struct row_cb {
	union {
		int (*tensor)(const struct catalog_tensor *t, void *arg);
		int (*root)(const char *path, int64_t scanned_at_ns, void *arg);
	};
	void *arg;
};

static int tensor_row(sqlite3_stmt *st, void *arg)
{
	struct row_cb *c = arg;
	struct catalog_tensor t = { 0 };

	t.component = col_text(st, 0);
	t.file = col_text(st, 1);
	t.data_start = 8 + col_u64(st, 2);
	t.name = col_text(st, 3);
	t.dtype_name = col_text(st, 4);
	t.dtype = t.dtype_name ? st_dtype_from_name(t.dtype_name) : -1;
	t.shape_text = col_text(st, 5);
	parse_shape(t.shape_text, &t);
	t.begin = col_u64(st, 6);
	t.end = col_u64(st, 7);
	if (!t.component || !t.file || !t.name || !t.dtype_name || !t.shape_text)
		return -ENOMEM; /* sqlite3_column_text() returns NULL only on OOM here */
	return c->tensor(&t, c->arg);
}

int catalog_model_tensors(struct catalog *cat, int64_t model_id,
			  int (*cb)(const struct catalog_tensor *t, void *arg), void *arg)
{
	struct row_cb c = { .tensor = cb, .arg = arg };
	sqlite3_stmt *st;
	int rc;

	rc = sql_exec(cat, "BEGIN");
	if (rc)
		return rc;
	rc = prepare_by_id(cat,
			   "SELECT c.name, f.path, f.header_len, t.name, t.dtype, t.shape,"
			   " t.data_begin, t.data_end FROM components c"
			   " JOIN component_files cf ON cf.component_id = c.id"
			   " JOIN files f ON f.id = cf.file_id JOIN tensors t ON t.file_id = f.id"
			   " WHERE c.model_id = ? ORDER BY c.ordinal, cf.ordinal, t.idx",
			   model_id, &st);
	if (rc) {
		sqlite3_exec(cat->db, "ROLLBACK", NULL, NULL, NULL);
		return rc;
	}
	rc = sql_each(cat, st, tensor_row, &c, "model tensors");
	/* A read transaction: its COMMIT only ends the snapshot. */
	sqlite3_exec(cat->db, "COMMIT", NULL, NULL, NULL);
	return rc;
}

static int root_row(sqlite3_stmt *st, void *arg)
{
	struct row_cb *c = arg;

	return c->root(col_text(st, 0), sqlite3_column_int64(st, 1), c->arg);
}

int catalog_roots(struct catalog *cat, int (*cb)(const char *path, int64_t scanned_at_ns,
						 void *arg),
		  void *arg)
{
	struct row_cb c = { .root = cb, .arg = arg };

	return sql_run(cat, "SELECT path, scanned_at FROM roots ORDER BY path", root_row, &c,
		       "list roots");
}
