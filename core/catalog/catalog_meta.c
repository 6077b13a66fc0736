/*
 * User metadata: key-value pairs per model name (model_meta), and the tags and the note
 * stored as keys of their own.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "core/catalog/catalog_internal.h"

/*
 * Prepares @sql for the model @model resolves to: the model's name is bound to parameter 1
 * (user metadata is keyed by name). Returns 0 or catalog_resolve()'s and sql_prepare()'s
 * errors.
 */
static int prepare_for_model(struct catalog *cat, const char *model, const char *sql,
			     sqlite3_stmt **st)
{
	char name[1024];
	int64_t id;
	int rc;

	rc = catalog_resolve(cat, model, &id, name, sizeof(name));
	if (!rc)
		rc = sql_prepare(cat, sql, st);
	if (!rc)
		sqlite3_bind_text(*st, 1, name, -1, SQLITE_TRANSIENT);
	return rc;
}

static int copy_text(sqlite3_stmt *st, void *out)
{
	*(char **)out = strdup(col_text(st, 0));
	return *(char **)out ? 0 : -ENOMEM;
}

int catalog_meta_get(struct catalog *cat, const char *model, const char *key, char **value)
{
	sqlite3_stmt *st;
	int rc;

	*value = NULL;
	rc = prepare_for_model(cat, model, "SELECT value FROM model_meta WHERE model = ?"
			       " AND key = ?", &st);
	if (rc)
		return rc;
	bind_text(st, 2, key);
	return sql_first(cat, st, copy_text, value, "get metadata");
}

/* Runs a one-row change of model_meta for the model @model resolves to. */
static int meta_change(struct catalog *cat, const char *model, const char *sql, const char *key,
		       const char *value, bool must_change)
{
	sqlite3_stmt *st;
	int rc;

	if (!key || !*key)
		return -EINVAL;
	rc = prepare_for_model(cat, model, sql, &st);
	if (rc)
		return rc;
	bind_text(st, 2, key);
	if (value)
		bind_text(st, 3, value);
	rc = sqlite3_step(st);
	rc = rc == SQLITE_DONE ? 0 : sql_fail(cat, rc, "change metadata");
	if (!rc && must_change && sqlite3_changes(cat->db) == 0)
		rc = -ENOENT;
	sqlite3_finalize(st);
	return rc;
}

bool catalog_meta_text_ok(const char *s)
{
	/*
	 * jansson's own check: `meta get --json` writes keys and values through jansson, which
	 * refuses a string that is not valid UTF-8, so this is exactly what it can print.
	 */
	json_t *j = json_string(s);

	json_decref(j);
	return j != NULL;
}

int catalog_meta_set(struct catalog *cat, const char *model, const char *key, const char *value)
{
	if ((key && !catalog_meta_text_ok(key)) || (value && !catalog_meta_text_ok(value)))
		return -EILSEQ;
	return meta_change(cat, model,
			   "INSERT INTO model_meta(model, key, value) VALUES(?1, ?2, ?3)"
			   " ON CONFLICT(model, key) DO UPDATE SET value = excluded.value",
			   key, value ? value : "", false);
}

int catalog_meta_unset(struct catalog *cat, const char *model, const char *key)
{
	return meta_change(cat, model, "DELETE FROM model_meta WHERE model = ?1 AND key = ?2",
			   key, NULL, true);
}

/* The caller's callback for each (key, value) row. */
struct kv_cb {
	int (*cb)(const char *key, const char *value, void *arg);
	void *arg;
};

static int kv_row(sqlite3_stmt *st, void *arg)
{
	struct kv_cb *c = arg;

	return c->cb(col_text(st, 0), col_text(st, 1), c->arg);
}

int catalog_meta_list(struct catalog *cat, const char *model,
		      int (*cb)(const char *key, const char *value, void *arg), void *arg)
{
	struct kv_cb c = { cb, arg };
	sqlite3_stmt *st;
	int rc;

	rc = prepare_for_model(cat, model, "SELECT key, value FROM model_meta WHERE model = ?"
			       " ORDER BY key", &st);
	return rc ? rc : sql_each(cat, st, kv_row, &c, "list metadata");
}

static int tag_key(const char *tag, char *buf, size_t size)
{
	if (!tag || !*tag || tag[strcspn(tag, " \t\r\n\v\f")])
		return -EINVAL;
	if ((size_t)snprintf(buf, size, "%s%s", CATALOG_TAG_PREFIX, tag) >= size)
		return -ENAMETOOLONG;
	return 0;
}

int catalog_tag_add(struct catalog *cat, const char *model, const char *tag)
{
	char key[512];
	int rc = tag_key(tag, key, sizeof(key));

	return rc ? rc : catalog_meta_set(cat, model, key, "");
}

int catalog_tag_remove(struct catalog *cat, const char *model, const char *tag)
{
	char key[512];
	int rc = tag_key(tag, key, sizeof(key));

	return rc ? rc : catalog_meta_unset(cat, model, key);
}

int catalog_note_set(struct catalog *cat, const char *model, const char *note)
{
	return catalog_meta_set(cat, model, CATALOG_NOTE_KEY, note);
}

