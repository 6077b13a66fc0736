/*
 * The persistent catalog in SQLite. See catalog.h for the schema and the error mapping.
 *
 * SQLite stores signed 64-bit integers; device and inode numbers and hashes are unsigned
 * 64-bit values, so they are stored as their bit pattern (a cast both ways) and compared
 * only for equality.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <sqlite3.h>
#include <xxhash.h>

#include "core/catalog/catalog.h"
#include "core/base/array.h"
#include "core/base/common.h"
#include "core/policy/evict.h"
#include "core/base/log.h"
#include "core/base/statedir.h"

/* How long a call waits for another process's write lock before failing with -EBUSY. */
#define BUSY_TIMEOUT_MS 10000

struct catalog {
	sqlite3 *db;
	char path[PATH_MAX];
};

/* Version 3: completed loads (for the slow-load alert) and `weightctl bench` results. */
#define LOAD_HISTORY_SQL \
	"CREATE TABLE IF NOT EXISTS load_history(" \
	"  id INTEGER PRIMARY KEY," \
	"  key TEXT NOT NULL," \
	"  at_ns INTEGER NOT NULL," \
	"  bytes INTEGER NOT NULL," \
	"  ns INTEGER NOT NULL);" \
	"CREATE INDEX IF NOT EXISTS load_history_key ON load_history(key, id);"
#define BENCH_RUNS_SQL \
	"CREATE TABLE IF NOT EXISTS bench_runs(" \
	"  id INTEGER PRIMARY KEY," \
	"  model TEXT NOT NULL," \
	"  at_ns INTEGER NOT NULL," \
	"  figures TEXT NOT NULL);" \
	"CREATE INDEX IF NOT EXISTS bench_runs_model ON bench_runs(model, id);"

static const char schema_sql[] =
	"CREATE TABLE roots("
	"  id INTEGER PRIMARY KEY,"
	"  path TEXT NOT NULL UNIQUE,"
	"  added_at INTEGER NOT NULL,"
	"  scanned_at INTEGER NOT NULL);"
	"CREATE TABLE files("
	"  id INTEGER PRIMARY KEY,"
	"  path TEXT NOT NULL UNIQUE,"
	"  kind INTEGER NOT NULL,"
	"  dev INTEGER NOT NULL,"
	"  ino INTEGER NOT NULL,"
	"  size INTEGER NOT NULL,"
	"  mtime_ns INTEGER NOT NULL,"
	"  ctime_ns INTEGER NOT NULL DEFAULT 0,"
	"  header_hash INTEGER NOT NULL,"
	"  header_len INTEGER NOT NULL,"
	"  valid INTEGER NOT NULL,"
	"  error_code INTEGER NOT NULL,"
	"  error_message TEXT,"
	"  error_offset INTEGER,"
	"  error_tensor TEXT,"
	"  n_tensors INTEGER NOT NULL,"
	"  data_bytes INTEGER NOT NULL,"
	"  params INTEGER NOT NULL,"
	"  json_info TEXT,"
	"  scanned_at INTEGER NOT NULL);"
	"CREATE TABLE tensors("
	"  file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,"
	"  idx INTEGER NOT NULL,"
	"  name TEXT NOT NULL,"
	"  dtype TEXT NOT NULL,"
	"  shape TEXT NOT NULL,"
	"  data_begin INTEGER NOT NULL,"
	"  data_end INTEGER NOT NULL,"
	"  PRIMARY KEY(file_id, idx)) WITHOUT ROWID;"
	"CREATE TABLE models("
	"  id INTEGER PRIMARY KEY,"
	"  name TEXT NOT NULL UNIQUE,"
	"  path TEXT NOT NULL UNIQUE,"
	"  root TEXT NOT NULL,"
	"  format TEXT NOT NULL,"
	"  arch TEXT NOT NULL,"
	"  valid INTEGER NOT NULL,"
	"  error TEXT,"
	"  n_tensors INTEGER NOT NULL,"
	"  params INTEGER NOT NULL,"
	"  bytes INTEGER NOT NULL,"
	"  st_meta TEXT NOT NULL,"
	"  sig INTEGER NOT NULL,"
	"  scanned_at INTEGER NOT NULL);"
	"CREATE TABLE components("
	"  id INTEGER PRIMARY KEY,"
	"  model_id INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,"
	"  ordinal INTEGER NOT NULL,"
	"  name TEXT NOT NULL,"
	"  arch TEXT NOT NULL,"
	"  index_path TEXT,"
	"  valid INTEGER NOT NULL,"
	"  error TEXT,"
	"  n_tensors INTEGER NOT NULL,"
	"  params INTEGER NOT NULL,"
	"  bytes INTEGER NOT NULL,"
	"  dtype_bytes TEXT NOT NULL,"
	"  UNIQUE(model_id, ordinal));"
	"CREATE TABLE component_files("
	"  component_id INTEGER NOT NULL REFERENCES components(id) ON DELETE CASCADE,"
	"  ordinal INTEGER NOT NULL,"
	"  file_id INTEGER NOT NULL REFERENCES files(id) ON DELETE CASCADE,"
	"  PRIMARY KEY(component_id, ordinal)) WITHOUT ROWID;"
	"CREATE INDEX component_files_file ON component_files(file_id);"
	"CREATE TABLE model_meta("
	"  model TEXT NOT NULL,"
	"  key TEXT NOT NULL,"
	"  value TEXT NOT NULL,"
	"  PRIMARY KEY(model, key)) WITHOUT ROWID;"
	"CREATE TABLE co_access("
	"  a TEXT NOT NULL,"
	"  b TEXT NOT NULL,"
	"  count REAL NOT NULL,"
	"  at_ns INTEGER NOT NULL DEFAULT 0,"
	"  PRIMARY KEY(a, b)) WITHOUT ROWID;"
	LOAD_HISTORY_SQL BENCH_RUNS_SQL;

/*
 * Version 3 to 4: co-access counts carry the time they were last updated (they fade). The
 * counts of older catalogs are taken as of the migration.
 */
#define MIGRATE_V4_FMT \
	"ALTER TABLE co_access ADD COLUMN at_ns INTEGER NOT NULL DEFAULT 0;" \
	"UPDATE co_access SET at_ns = %" PRIu64 ";"

/*
 * Version 4 to 5: a file's fingerprint holds its ctime too (core/format/model.h says why). Rows of
 * older catalogs read 0, which matches no file: the next scan reads each file once more.
 */
static const char migrate_v5_sql[] = "ALTER TABLE files ADD COLUMN ctime_ns INTEGER NOT NULL DEFAULT 0;";

/* Version 2 to 3: the two tables above; nothing else changes. */
static const char migrate_v3_sql[] = LOAD_HISTORY_SQL BENCH_RUNS_SQL;

/* Version 1 to 2: co-access statistics (components requested together). */
static const char migrate_v2_sql[] =
	"CREATE TABLE IF NOT EXISTS co_access("
	"  a TEXT NOT NULL,"
	"  b TEXT NOT NULL,"
	"  count INTEGER NOT NULL,"
	"  PRIMARY KEY(a, b)) WITHOUT ROWID;";

/* Maps a failed SQLite call to a negative errno, logging SQLite's own message once. */
static int sql_fail(struct catalog *cat, int rc, const char *what)
{
	int sys = sqlite3_system_errno(cat->db);

	log_error("catalog", "\"sqlite call failed\" op=\"%s\" db=%s rc=%d error=\"%s\"", what,
		  cat->path, rc, sqlite3_errmsg(cat->db));
	switch (rc & 0xff) {
	case SQLITE_BUSY:
	case SQLITE_LOCKED:
		return -EBUSY;
	case SQLITE_NOMEM:
		return -ENOMEM;
	case SQLITE_READONLY:
		return -EROFS;
	case SQLITE_FULL:
		return -ENOSPC;
	case SQLITE_CORRUPT:
	case SQLITE_NOTADB:
		return -EBADMSG;
	case SQLITE_CONSTRAINT:
		return -EEXIST;
	case SQLITE_CANTOPEN:
	case SQLITE_IOERR:
	case SQLITE_PERM:
		return sys > 0 ? -sys : -EIO;
	default:
		return -EIO;
	}
}

static int exec(struct catalog *cat, const char *sql)
{
	int rc = sqlite3_exec(cat->db, sql, NULL, NULL, NULL);

	return rc == SQLITE_OK ? 0 : sql_fail(cat, rc, sql);
}

static int prepare(struct catalog *cat, const char *sql, sqlite3_stmt **st)
{
	int rc = sqlite3_prepare_v2(cat->db, sql, -1, st, NULL);

	return rc == SQLITE_OK ? 0 : sql_fail(cat, rc, sql);
}

/* Steps @st expecting SQLITE_DONE. */
static int step_done(struct catalog *cat, sqlite3_stmt *st, const char *what)
{
	int rc = sqlite3_step(st);

	sqlite3_reset(st);
	return rc == SQLITE_DONE ? 0 : sql_fail(cat, rc, what);
}

/*
 * Ends a row loop over @st: finalizes it and maps the loop's outcome (@step, the last
 * sqlite3_step() result; @nomem, a failed copy of a row) to 0, -ENOMEM or sql_fail().
 */
static int rows_done(struct catalog *cat, sqlite3_stmt *st, int step, bool nomem,
		     const char *what)
{
	int rc = nomem ? -ENOMEM : step == SQLITE_DONE ? 0 : sql_fail(cat, step, what);

	sqlite3_finalize(st);
	return rc;
}

static char *col_strdup(sqlite3_stmt *st, int i, bool *nomem)
{
	const unsigned char *s = sqlite3_column_text(st, i);
	char *d;

	if (!s)
		return NULL;
	d = strdup((const char *)s);
	if (!d)
		*nomem = true;
	return d;
}

static uint64_t col_u64(sqlite3_stmt *st, int i)
{
	return (uint64_t)sqlite3_column_int64(st, i);
}

static void bind_u64(sqlite3_stmt *st, int i, uint64_t v)
{
	sqlite3_bind_int64(st, i, (sqlite3_int64)v);
}

/*
 * has_column: 1 when @table has a column named @column, 0 when not, else a negative errno. A
 * catalog written by a newer version and then marked older has a migration's column
 * already, so each migration that adds one asks first.
 */
static int has_column(struct catalog *cat, const char *table, const char *column)
{
	sqlite3_stmt *st;
	int rc, s;

	rc = prepare(cat, "SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2", &st);
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, table, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, column, -1, SQLITE_STATIC);
	s = sqlite3_step(st);
	sqlite3_finalize(st);
	if (s == SQLITE_ROW)
		return 1;
	if (s != SQLITE_DONE)
		return sql_fail(cat, s, "read table columns");
	return 0;
}

static int migrate_v4(struct catalog *cat)
{
	char sql[sizeof(MIGRATE_V4_FMT) + 24];
	int rc = has_column(cat, "co_access", "at_ns");

	if (rc)
		return rc < 0 ? rc : 0;
	snprintf(sql, sizeof(sql), MIGRATE_V4_FMT, wd_wall_ns());
	return exec(cat, sql);
}

static int migrate_v5(struct catalog *cat)
{
	int rc = has_column(cat, "files", "ctime_ns");

	if (rc)
		return rc < 0 ? rc : 0;
	return exec(cat, migrate_v5_sql);
}

static int create_schema(struct catalog *cat)
{
	sqlite3_stmt *st;
	int rc, version;

	rc = exec(cat, "BEGIN IMMEDIATE");
	if (rc)
		return rc;
	/* Read the version inside the write lock: another process may have just created it. */
	rc = prepare(cat, "PRAGMA user_version", &st);
	if (rc)
		goto rollback;
	version = sqlite3_step(st) == SQLITE_ROW ? sqlite3_column_int(st, 0) : -1;
	sqlite3_finalize(st);
	if (version < 0) {
		rc = sql_fail(cat, sqlite3_errcode(cat->db), "PRAGMA user_version");
		goto rollback;
	}
	if (version > CATALOG_SCHEMA_VERSION) {
		log_error("catalog", "\"catalog has a newer schema\" db=%s version=%d known=%d",
			  cat->path, version, CATALOG_SCHEMA_VERSION);
		rc = -EPROTONOSUPPORT;
		goto rollback;
	}
	if (version == 0) {
		rc = exec(cat, schema_sql);
		if (!rc) {
			char sql[64];

			snprintf(sql, sizeof(sql), "PRAGMA user_version=%d",
				 CATALOG_SCHEMA_VERSION);
			rc = exec(cat, sql);
		}
		if (rc)
			goto rollback;
	} else if (version < CATALOG_SCHEMA_VERSION) {
		char sql[64];

		/*
		 * Version 1 lacks the co-access table and version 2 the load history and bench
		 * tables; those steps are CREATE ... IF NOT EXISTS, so each older version runs all
		 * of them and its data stays as it is. Every version before 4 lacks co_access's
		 * at_ns column.
		 */
		rc = exec(cat, migrate_v2_sql);
		if (!rc)
			rc = exec(cat, migrate_v3_sql);
		if (!rc)
			rc = migrate_v4(cat);
		if (!rc)
			rc = migrate_v5(cat);
		snprintf(sql, sizeof(sql), "PRAGMA user_version=%d", CATALOG_SCHEMA_VERSION);
		if (!rc)
			rc = exec(cat, sql);
		if (rc)
			goto rollback;
		log_info("catalog", "\"catalog schema migrated\" db=%s from=%d to=%d", cat->path,
			 version, CATALOG_SCHEMA_VERSION);
	}
	return exec(cat, "COMMIT");
rollback:
	sqlite3_exec(cat->db, "ROLLBACK", NULL, NULL, NULL);
	return rc;
}

/*
 * Switches the file to WAL. On a new file the switch needs an exclusive lock, and SQLite
 * answers SQLITE_BUSY at once (without the busy handler) when another process opens the
 * same new file at that moment, so this retries for as long as the busy timeout.
 */
static int set_wal(struct catalog *cat)
{
	uint64_t deadline = wd_now_ns() + (uint64_t)BUSY_TIMEOUT_MS * 1000000;
	int rc;

	for (;;) {
		/* journal_mode answers with a row; sqlite3_exec() ignores it. */
		rc = sqlite3_exec(cat->db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL);
		if ((rc & 0xff) != SQLITE_BUSY || wd_now_ns() > deadline)
			break;
		usleep(2000);
	}
	return rc == SQLITE_OK ? 0 : sql_fail(cat, rc, "PRAGMA journal_mode=WAL");
}

int catalog_open(const char *state_dir, struct catalog **out)
{
	struct catalog *cat;
	int rc;

	*out = NULL;
	rc = mkdir_p(state_dir, 0700);
	if (rc)
		return rc;
	cat = calloc(1, sizeof(*cat));
	if (!cat)
		return -ENOMEM;
	if ((size_t)snprintf(cat->path, sizeof(cat->path), "%s/%s", state_dir, CATALOG_FILE) >=
	    sizeof(cat->path)) {
		free(cat);
		return -ENAMETOOLONG;
	}
	rc = sqlite3_open_v2(cat->path, &cat->db,
			     SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
			     NULL);
	if (rc != SQLITE_OK) {
		rc = cat->db ? sql_fail(cat, rc, "open") : -ENOMEM;
		catalog_close(cat);
		return rc;
	}
	sqlite3_extended_result_codes(cat->db, 1);
	sqlite3_busy_timeout(cat->db, BUSY_TIMEOUT_MS);
	rc = set_wal(cat);
	if (!rc)
		rc = exec(cat, "PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON");
	if (!rc)
		rc = create_schema(cat);
	if (rc) {
		catalog_close(cat);
		return rc;
	}
	*out = cat;
	return 0;
}

int catalog_quick_check(struct catalog *cat, char *why, size_t why_size)
{
	sqlite3_stmt *st;
	int rc, s;

	if (why_size)
		why[0] = '\0';
	rc = prepare(cat, "PRAGMA quick_check(1)", &st);
	if (rc)
		return rc;
	s = sqlite3_step(st);
	if (s == SQLITE_ROW) {
		const char *r = (const char *)sqlite3_column_text(st, 0);

		if (!r || strcmp(r, "ok")) {
			if (why_size)
				snprintf(why, why_size, "%s", r ? r : "(no text)");
			rc = -EBADMSG;
		}
	} else {
		rc = sql_fail(cat, s, "quick_check");
		if (rc == -EBADMSG && why_size)
			snprintf(why, why_size, "%s", sqlite3_errmsg(cat->db));
	}
	sqlite3_finalize(st);
	return rc;
}

int catalog_move_aside(const char *state_dir, char *aside, size_t aside_size)
{
	static const char *const suffixes[] = { "", "-wal", "-shm" };
	char from[PATH_MAX + 8], to[PATH_MAX + 48], stamp[32];
	struct tm tm;
	time_t now = time(NULL);
	int rc;

	gmtime_r(&now, &tm);
	strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm);
	for (size_t i = 0; i < ARRAY_SIZE(suffixes); i++) {
		snprintf(from, sizeof(from), "%s/%s%s", state_dir, CATALOG_FILE, suffixes[i]);
		snprintf(to, sizeof(to), "%s/%s.corrupt-%s%s", state_dir, CATALOG_FILE, stamp,
			 suffixes[i]);
		if (rename(from, to) < 0 && errno != ENOENT) {
			rc = -errno;
			log_error("catalog", "\"cannot move the corrupt catalog aside\" from=%s to=%s "
				  "err=%d", from, to, rc);
			return rc;
		}
		if (!i && aside_size)
			snprintf(aside, aside_size, "%s", to);
	}
	return 0;
}

int catalog_open_repair(const char *state_dir, bool check, struct catalog **out, char *aside,
			size_t aside_size, char *why, size_t why_size)
{
	int rc;

	if (aside_size)
		aside[0] = '\0';
	if (why_size)
		why[0] = '\0';
	rc = catalog_open(state_dir, out);
	if (rc == -EBADMSG) {
		if (why_size)
			snprintf(why, why_size, "not an SQLite database, or its header is damaged");
	} else if (rc) {
		return rc;
	} else if (!check) {
		return 0;
	} else {
		rc = catalog_quick_check(*out, why, why_size);
		if (!rc)
			return 0;
		catalog_close(*out);
		*out = NULL;
		if (rc != -EBADMSG)
			return rc;
	}
	rc = catalog_move_aside(state_dir, aside, aside_size);
	return rc ? rc : catalog_open(state_dir, out);
}

void catalog_close(struct catalog *cat)
{
	if (!cat)
		return;
	sqlite3_close_v2(cat->db);
	free(cat);
}

const char *catalog_db_path(const struct catalog *cat)
{
	return cat->path;
}

/* ---- the scanner's interface ---- */

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

static int load_scope_files(struct catalog *cat, const struct scope_keys *k,
			    struct catalog_scope *out)
{
	sqlite3_stmt *st;
	size_t cap = 0;
	bool nomem = false;
	int rc;

	rc = prepare(cat,
		     "SELECT id, path, kind, dev, ino, size, mtime_ns, valid, json_info, ctime_ns"
		     " FROM files"
		     " WHERE path = ?1 OR (path >= ?2 AND path < ?3)",
		     &st);
	if (rc)
		return rc;
	bind_scope(st, k);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct catalog_fp_row *r;

		if (wd_grow(&out->files, &cap, out->n_files, sizeof(*r))) {
			nomem = true;
			break;
		}
		r = &out->files[out->n_files++];
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
	}
	return rows_done(cat, st, rc, nomem, "load files");
}

static int load_scope_models(struct catalog *cat, const struct scope_keys *k,
			     struct catalog_scope *out)
{
	sqlite3_stmt *st;
	size_t cap = 0;
	bool nomem = false;
	int rc;

	rc = prepare(cat,
		     "SELECT id, path, name, sig, valid FROM models"
		     " WHERE path = ?1 OR (path >= ?2 AND path < ?3)",
		     &st);
	if (rc)
		return rc;
	bind_scope(st, k);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct catalog_model_row *r;

		if (wd_grow(&out->models, &cap, out->n_models, sizeof(*r))) {
			nomem = true;
			break;
		}
		r = &out->models[out->n_models++];
		r->id = sqlite3_column_int64(st, 0);
		r->path = col_strdup(st, 1, &nomem);
		r->name = col_strdup(st, 2, &nomem);
		r->sig = col_u64(st, 3);
		r->valid = sqlite3_column_int(st, 4);
	}
	return rows_done(cat, st, rc, nomem, "load models");
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
	rc = exec(cat, "BEGIN");
	if (rc)
		return rc;
	rc = prepare(cat, "SELECT 1 FROM roots WHERE path = ?", &st);
	if (!rc) {
		sqlite3_bind_text(st, 1, k.root, -1, SQLITE_STATIC);
		rc = sqlite3_step(st);
		out->root_known = rc == SQLITE_ROW;
		rc = rc == SQLITE_ROW || rc == SQLITE_DONE ? 0 : sql_fail(cat, rc, "load root");
		sqlite3_finalize(st);
	}
	if (!rc)
		rc = load_scope_files(cat, &k, out);
	if (!rc)
		rc = load_scope_models(cat, &k, out);
	if (!rc)
		rc = exec(cat, "COMMIT");
	if (rc) {
		sqlite3_exec(cat->db, "ROLLBACK", NULL, NULL, NULL);
		catalog_scope_free(out);
	}
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

static void apply_finalize(struct apply *a)
{
	sqlite3_stmt **v[] = {
		&a->root, &a->del_model, &a->del_file, &a->put_file, &a->del_tensors,
		&a->put_tensor, &a->name_used, &a->ins_model, &a->upd_model,
		&a->del_components, &a->put_component, &a->put_cfile, &a->model_by_path,
	};

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
	sqlite3_stmt **v[] = {
		&a->root, &a->del_model, &a->del_file, &a->put_file, &a->del_tensors,
		&a->put_tensor, &a->name_used, &a->ins_model, &a->upd_model,
		&a->del_components, &a->put_component, &a->put_cfile, &a->model_by_path,
	};

	for (size_t i = 0; i < ARRAY_SIZE(v); i++) {
		int rc = prepare(a->cat, sql[i], v[i]);

		if (rc)
			return rc;
	}
	return 0;
}

static int del_id(struct apply *a, sqlite3_stmt *st, int64_t id, const char *what)
{
	sqlite3_bind_int64(st, 1, id);
	return step_done(a->cat, st, what);
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
		rc = step_done(a->cat, a->put_tensor, "insert tensor");
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
		rc = step_done(a->cat, st, "insert component");
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
			rc = step_done(a->cat, a->put_cfile, "insert component file");
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
	rc = step_done(a->cat, st, id ? "update model" : "insert model");
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
	rc = exec(cat, "BEGIN IMMEDIATE");
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
		rc = step_done(cat, a.root, "upsert root");
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
	if (!rc)
		rc = exec(cat, "COMMIT");
	if (rc)
		sqlite3_exec(cat->db, "ROLLBACK", NULL, NULL, NULL);
	return rc;
}

/* ---- reading ---- */

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

static int read_model_row(sqlite3_stmt *st, struct catalog_model *m)
{
	bool nomem = false;
	const char *fmt = (const char *)sqlite3_column_text(st, 4);

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
	return parse_meta((const char *)sqlite3_column_text(st, 12), &m->meta, &m->n_meta);
}

#define COMPONENT_COLS                                                                     \
	"c.model_id, c.id, c.name, c.arch, c.index_path, c.valid, c.error, c.n_tensors,"   \
	" c.params, c.bytes, c.dtype_bytes"

static int read_component_row(sqlite3_stmt *st, struct catalog_component *c)
{
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
	parse_dtype_bytes((const char *)sqlite3_column_text(st, 10), c->dtype_bytes);
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

static int count_query(struct catalog *cat, const char *sql, uint64_t *out)
{
	sqlite3_stmt *st;
	int rc = prepare(cat, sql, &st), s;

	if (rc)
		return rc;
	s = sqlite3_step(st);
	if (s == SQLITE_ROW)
		*out = (uint64_t)sqlite3_column_int64(st, 0);
	else
		rc = sql_fail(cat, s, "count");
	sqlite3_finalize(st);
	return rc;
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

int catalog_list_models(struct catalog *cat, struct catalog_model_list *out)
{
	struct id_slot *ids = NULL;
	sqlite3_stmt *st = NULL;
	size_t cap = 0;
	int rc, s;

	memset(out, 0, sizeof(*out));
	rc = exec(cat, "BEGIN");
	if (rc)
		return rc;
	rc = prepare(cat, "SELECT " MODEL_COLS " FROM models m ORDER BY m.name", &st);
	while (!rc && (s = sqlite3_step(st)) == SQLITE_ROW) {
		if (wd_grow(&out->models, &cap, out->n, sizeof(*out->models))) {
			rc = -ENOMEM;
			break;
		}
		rc = read_model_row(st, &out->models[out->n++]);
	}
	if (!rc && s != SQLITE_DONE)
		rc = sql_fail(cat, s, "list models");
	sqlite3_finalize(st);
	st = NULL;
	if (!rc && out->n) {
		ids = calloc(out->n, sizeof(*ids));
		if (!ids)
			rc = -ENOMEM;
		for (size_t i = 0; !rc && i < out->n; i++)
			ids[i] = (struct id_slot){ out->models[i].id, i };
		if (ids)
			qsort(ids, out->n, sizeof(*ids), cmp_id);
	}
	if (!rc && out->n)
		rc = prepare(cat, "SELECT " COMPONENT_COLS " FROM components c"
				  " ORDER BY c.model_id, c.ordinal", &st);
	while (!rc && out->n && (s = sqlite3_step(st)) == SQLITE_ROW) {
		struct id_slot key = { sqlite3_column_int64(st, 0), 0 };
		struct id_slot *hit = bsearch(&key, ids, out->n, sizeof(*ids), cmp_id);

		if (hit)
			rc = add_component(&out->models[hit->pos], st);
	}
	if (!rc && st && s != SQLITE_DONE)
		rc = sql_fail(cat, s, "list components");
	sqlite3_finalize(st);
	st = NULL;
	free(ids);
	/* User metadata is keyed by name and the list is sorted by name (binary collation,
	 * which is strcmp order), so rows join by binary search. */
	if (!rc && out->n)
		rc = prepare(cat, "SELECT model, key, value FROM model_meta ORDER BY model, key",
			     &st);
	while (!rc && out->n && (s = sqlite3_step(st)) == SQLITE_ROW) {
		const char *name = (const char *)sqlite3_column_text(st, 0);
		size_t lo = 0, hi = out->n;

		while (lo < hi) {
			size_t mid = (lo + hi) / 2;
			int d = strcmp(out->models[mid].name, name);

			if (!d) {
				rc = add_user(&out->models[mid],
					      (const char *)sqlite3_column_text(st, 1),
					      (const char *)sqlite3_column_text(st, 2));
				break;
			}
			if (d < 0)
				lo = mid + 1;
			else
				hi = mid;
		}
	}
	if (!rc && st && s != SQLITE_DONE)
		rc = sql_fail(cat, s, "list model metadata");
	sqlite3_finalize(st);
	if (!rc)
		rc = exec(cat, "COMMIT");
	if (rc) {
		sqlite3_exec(cat->db, "ROLLBACK", NULL, NULL, NULL);
		catalog_model_list_free(out);
	}
	return rc;
}

/* Runs @sql (one text parameter) and returns the id and name of the first row. */
static int lookup(struct catalog *cat, const char *sql, const char *arg, int64_t *id,
		  char *name, size_t size)
{
	sqlite3_stmt *st;
	int rc = prepare(cat, sql, &st);

	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, arg, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*id = sqlite3_column_int64(st, 0);
		if (name && (size_t)snprintf(name, size, "%s", sqlite3_column_text(st, 1)) >= size)
			rc = -ENAMETOOLONG;
		else
			rc = 0;
	} else {
		rc = rc == SQLITE_DONE ? -ENOENT : sql_fail(cat, rc, "resolve model");
	}
	sqlite3_finalize(st);
	return rc;
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

static int load_files(struct catalog *cat, struct catalog_component *c)
{
	sqlite3_stmt *st;
	size_t cap = 0;
	bool nomem = false;
	int rc;

	rc = prepare(cat,
		     "SELECT f.id, f.path, f.kind, f.dev, f.ino, f.size, f.mtime_ns, f.header_hash,"
		     " f.header_len, f.valid, f.error_code, f.error_message, f.n_tensors,"
		     " f.data_bytes, f.params, f.scanned_at, f.error_offset, f.error_tensor,"
		     " f.ctime_ns FROM component_files cf"
		     " JOIN files f ON f.id = cf.file_id WHERE cf.component_id = ?"
		     " ORDER BY cf.ordinal",
		     &st);
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, c->id);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		struct catalog_file *f;

		if (wd_grow(&c->files, &cap, c->n_files, sizeof(*f))) {
			nomem = true;
			break;
		}
		f = &c->files[c->n_files++];
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
	}
	return rows_done(cat, st, rc, nomem, "load component files");
}

static int get_model(struct catalog *cat, int64_t id, struct catalog_model *out)
{
	sqlite3_stmt *st;
	int rc, s;

	rc = prepare(cat, "SELECT " MODEL_COLS " FROM models m WHERE m.id = ?", &st);
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, id);
	s = sqlite3_step(st);
	if (s == SQLITE_ROW)
		rc = read_model_row(st, out);
	else
		rc = s == SQLITE_DONE ? -ENOENT : sql_fail(cat, s, "get model");
	sqlite3_finalize(st);
	if (rc)
		return rc;
	rc = prepare(cat, "SELECT " COMPONENT_COLS " FROM components c WHERE c.model_id = ?"
			  " ORDER BY c.ordinal", &st);
	if (rc)
		return rc;
	sqlite3_bind_int64(st, 1, id);
	while (!rc && (s = sqlite3_step(st)) == SQLITE_ROW)
		rc = add_component(out, st);
	if (!rc && s != SQLITE_DONE)
		rc = sql_fail(cat, s, "get components");
	sqlite3_finalize(st);
	for (size_t i = 0; !rc && i < out->n_components; i++)
		rc = load_files(cat, &out->components[i]);
	if (rc)
		return rc;
	rc = prepare(cat, "SELECT key, value FROM model_meta WHERE model = ? ORDER BY key", &st);
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, out->name, -1, SQLITE_STATIC);
	while (!rc && (s = sqlite3_step(st)) == SQLITE_ROW)
		rc = add_user(out, (const char *)sqlite3_column_text(st, 0),
			      (const char *)sqlite3_column_text(st, 1));
	if (!rc && s != SQLITE_DONE)
		rc = sql_fail(cat, s, "get model metadata");
	sqlite3_finalize(st);
	return rc;
}

int catalog_get_model(struct catalog *cat, const char *model, struct catalog_model *out)
{
	int64_t id;
	int rc;

	memset(out, 0, sizeof(*out));
	rc = exec(cat, "BEGIN");
	if (rc)
		return rc;
	rc = catalog_resolve(cat, model, &id, NULL, 0);
	if (!rc)
		rc = get_model(cat, id, out);
	if (!rc)
		rc = exec(cat, "COMMIT");
	if (rc) {
		sqlite3_exec(cat->db, "ROLLBACK", NULL, NULL, NULL);
		catalog_model_free(out);
	}
	return rc;
}

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

int catalog_model_tensors(struct catalog *cat, int64_t model_id,
			  int (*cb)(const struct catalog_tensor *t, void *arg), void *arg)
{
	sqlite3_stmt *st;
	int rc, s;

	rc = exec(cat, "BEGIN");
	if (rc)
		return rc;
	rc = prepare(cat,
		     "SELECT c.name, f.path, f.header_len, t.name, t.dtype, t.shape, t.data_begin,"
		     " t.data_end FROM components c"
		     " JOIN component_files cf ON cf.component_id = c.id"
		     " JOIN files f ON f.id = cf.file_id JOIN tensors t ON t.file_id = f.id"
		     " WHERE c.model_id = ? ORDER BY c.ordinal, cf.ordinal, t.idx",
		     &st);
	if (rc) {
		sqlite3_exec(cat->db, "ROLLBACK", NULL, NULL, NULL);
		return rc;
	}
	sqlite3_bind_int64(st, 1, model_id);
	while ((s = sqlite3_step(st)) == SQLITE_ROW) {
		struct catalog_tensor t = { 0 };

		t.component = (const char *)sqlite3_column_text(st, 0);
		t.file = (const char *)sqlite3_column_text(st, 1);
		t.data_start = 8 + col_u64(st, 2);
		t.name = (const char *)sqlite3_column_text(st, 3);
		t.dtype_name = (const char *)sqlite3_column_text(st, 4);
		t.dtype = t.dtype_name ? st_dtype_from_name(t.dtype_name) : -1;
		t.shape_text = (const char *)sqlite3_column_text(st, 5);
		parse_shape(t.shape_text, &t);
		t.begin = col_u64(st, 6);
		t.end = col_u64(st, 7);
		if (!t.component || !t.file || !t.name || !t.dtype_name || !t.shape_text) {
			rc = -ENOMEM; /* sqlite3_column_text() returns NULL only on OOM here */
			break;
		}
		rc = cb(&t, arg);
		if (rc)
			break;
	}
	if (!rc && s != SQLITE_DONE)
		rc = sql_fail(cat, s, "model tensors");
	sqlite3_finalize(st);
	sqlite3_exec(cat->db, "COMMIT", NULL, NULL, NULL);
	return rc;
}

int catalog_roots(struct catalog *cat, int (*cb)(const char *path, int64_t scanned_at_ns,
						 void *arg),
		  void *arg)
{
	sqlite3_stmt *st;
	int rc, s;

	rc = prepare(cat, "SELECT path, scanned_at FROM roots ORDER BY path", &st);
	if (rc)
		return rc;
	while ((s = sqlite3_step(st)) == SQLITE_ROW) {
		rc = cb((const char *)sqlite3_column_text(st, 0), sqlite3_column_int64(st, 1), arg);
		if (rc)
			break;
	}
	if (!rc && s != SQLITE_DONE)
		rc = sql_fail(cat, s, "list roots");
	sqlite3_finalize(st);
	return rc;
}

/* ---- user metadata ---- */

int catalog_meta_get(struct catalog *cat, const char *model, const char *key, char **value)
{
	char name[1024];
	sqlite3_stmt *st;
	int64_t id;
	int rc;

	*value = NULL;
	rc = catalog_resolve(cat, model, &id, name, sizeof(name));
	if (rc)
		return rc;
	rc = prepare(cat, "SELECT value FROM model_meta WHERE model = ? AND key = ?", &st);
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
	rc = sqlite3_step(st);
	if (rc == SQLITE_ROW) {
		*value = strdup((const char *)sqlite3_column_text(st, 0));
		rc = *value ? 0 : -ENOMEM;
	} else {
		rc = rc == SQLITE_DONE ? -ENOENT : sql_fail(cat, rc, "get metadata");
	}
	sqlite3_finalize(st);
	return rc;
}

/* Runs a one-row change of model_meta for the model @model resolves to. */
static int meta_change(struct catalog *cat, const char *model, const char *sql, const char *key,
		       const char *value, bool must_change)
{
	char name[1024];
	sqlite3_stmt *st;
	int64_t id;
	int rc;

	if (!key || !*key)
		return -EINVAL;
	rc = catalog_resolve(cat, model, &id, name, sizeof(name));
	if (rc)
		return rc;
	rc = prepare(cat, sql, &st);
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, key, -1, SQLITE_STATIC);
	if (value)
		sqlite3_bind_text(st, 3, value, -1, SQLITE_STATIC);
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

int catalog_meta_list(struct catalog *cat, const char *model,
		      int (*cb)(const char *key, const char *value, void *arg), void *arg)
{
	char name[1024];
	sqlite3_stmt *st;
	int64_t id;
	int rc, s;

	rc = catalog_resolve(cat, model, &id, name, sizeof(name));
	if (rc)
		return rc;
	rc = prepare(cat, "SELECT key, value FROM model_meta WHERE model = ? ORDER BY key", &st);
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
	while ((s = sqlite3_step(st)) == SQLITE_ROW) {
		rc = cb((const char *)sqlite3_column_text(st, 0),
			(const char *)sqlite3_column_text(st, 1), arg);
		if (rc)
			break;
	}
	if (!rc && s != SQLITE_DONE)
		rc = sql_fail(cat, s, "list metadata");
	sqlite3_finalize(st);
	return rc;
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

/* ---- co-access statistics ---- */

/* @count decayed from @at_ns to @now_ns; none when the clock went back. */
static double faded(double count, uint64_t at_ns, uint64_t now_ns)
{
	return now_ns > at_ns ? count * exp2(-(double)(now_ns - at_ns) /
					     (double)EVICT_COACCESS_HALF_LIFE_NS) : count;
}

int catalog_coaccess_add(struct catalog *cat, const char *a, const char *b, uint64_t n,
			 uint64_t now_ns)
{
	const char *lo = a, *hi = b;
	sqlite3_stmt *st;
	double count = 0;
	int rc, s;

	if (!a[0] || !b[0] || !strcmp(a, b) || !n || n > INT64_MAX || now_ns > INT64_MAX)
		return -EINVAL;
	/* One row per unordered pair: the smaller key first. */
	if (strcmp(a, b) > 0) {
		lo = b;
		hi = a;
	}
	rc = exec(cat, "BEGIN IMMEDIATE");
	if (rc)
		return rc;
	rc = prepare(cat, "SELECT count, at_ns FROM co_access WHERE a = ?1 AND b = ?2", &st);
	if (rc)
		goto rollback;
	sqlite3_bind_text(st, 1, lo, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, hi, -1, SQLITE_STATIC);
	s = sqlite3_step(st);
	if (s == SQLITE_ROW)
		count = faded(sqlite3_column_double(st, 0), col_u64(st, 1), now_ns);
	else if (s != SQLITE_DONE)
		rc = sql_fail(cat, s, "read co-access");
	sqlite3_finalize(st);
	if (rc)
		goto rollback;
	rc = prepare(cat, "INSERT OR REPLACE INTO co_access(a, b, count, at_ns) "
		     "VALUES(?1, ?2, ?3, ?4)", &st);
	if (rc)
		goto rollback;
	sqlite3_bind_text(st, 1, lo, -1, SQLITE_STATIC);
	sqlite3_bind_text(st, 2, hi, -1, SQLITE_STATIC);
	sqlite3_bind_double(st, 3, count + (double)n);
	bind_u64(st, 4, now_ns);
	rc = step_done(cat, st, "add co-access");
	sqlite3_finalize(st);
	if (rc)
		goto rollback;
	return exec(cat, "COMMIT");
rollback:
	sqlite3_exec(cat->db, "ROLLBACK", NULL, NULL, NULL);
	return rc;
}

struct faded_pair {
	char *a, *b;
	uint64_t count;
};

static int by_count_desc(const void *x, const void *y)
{
	const struct faded_pair *p = x, *q = y;
	int c;

	if (p->count != q->count)
		return p->count < q->count ? 1 : -1;
	c = strcmp(p->a, q->a);
	return c ? c : strcmp(p->b, q->b);
}

int catalog_coaccess_load(struct catalog *cat, uint64_t now_ns,
			  int (*cb)(const char *a, const char *b, uint64_t count, void *arg),
			  void *arg)
{
	struct faded_pair *v = NULL;
	size_t n = 0, cap = 0;
	sqlite3_stmt *st;
	int rc, s;

	rc = prepare(cat, "SELECT a, b, count, at_ns FROM co_access", &st);
	if (rc)
		return rc;
	while ((s = sqlite3_step(st)) == SQLITE_ROW) {
		double c = faded(sqlite3_column_double(st, 2), col_u64(st, 3), now_ns) + 0.5;

		if (c < 1)
			continue;
		if (n == cap) {
			struct faded_pair *nv = realloc(v, (cap ? cap * 2 : 64) * sizeof(*v));

			if (!nv) {
				rc = -ENOMEM;
				break;
			}
			v = nv;
			cap = cap ? cap * 2 : 64;
		}
		v[n].a = strdup((const char *)sqlite3_column_text(st, 0));
		v[n].b = strdup((const char *)sqlite3_column_text(st, 1));
		v[n].count = c >= (double)UINT64_MAX ? UINT64_MAX : (uint64_t)c;
		if (!v[n].a || !v[n].b) {
			free(v[n].a);
			free(v[n].b);
			rc = -ENOMEM;
			break;
		}
		n++;
	}
	if (!rc && s != SQLITE_DONE)
		rc = sql_fail(cat, s, "load co-access");
	sqlite3_finalize(st);
	if (!rc && n)
		qsort(v, n, sizeof(*v), by_count_desc);
	for (size_t i = 0; i < n; i++) {
		if (!rc)
			rc = cb(v[i].a, v[i].b, v[i].count, arg);
		free(v[i].a);
		free(v[i].b);
	}
	free(v);
	return rc;
}

/* ---- load history and bench runs --------------------------------------------------------- */

int catalog_load_add(struct catalog *cat, const char *key, uint64_t at_ns, uint64_t bytes,
		     uint64_t ns, unsigned int keep)
{
	sqlite3_stmt *st;
	int rc;

	if (!key || !key[0] || !ns || bytes > INT64_MAX || ns > INT64_MAX || at_ns > INT64_MAX ||
	    !keep)
		return -EINVAL;
	rc = prepare(cat, "INSERT INTO load_history(key, at_ns, bytes, ns) VALUES(?1, ?2, ?3, ?4)",
		     &st);
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	bind_u64(st, 2, at_ns);
	bind_u64(st, 3, bytes);
	bind_u64(st, 4, ns);
	rc = step_done(cat, st, "add load");
	sqlite3_finalize(st);
	if (rc)
		return rc;
	/* Only the last @keep loads of a key are ever asked for: drop the older ones. */
	rc = prepare(cat, "DELETE FROM load_history WHERE key = ?1 AND id <= (SELECT id FROM "
		     "load_history WHERE key = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)", &st);
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, keep);
	rc = step_done(cat, st, "prune loads");
	sqlite3_finalize(st);
	return rc;
}

int catalog_load_rates(struct catalog *cat, const char *key, unsigned int n, double *rates,
		       unsigned int *n_out)
{
	sqlite3_stmt *st;
	int rc, s;

	*n_out = 0;
	rc = prepare(cat, "SELECT bytes, ns FROM load_history WHERE key = ?1 ORDER BY id DESC "
		     "LIMIT ?2", &st);
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
	sqlite3_bind_int64(st, 2, n);
	while ((s = sqlite3_step(st)) == SQLITE_ROW && *n_out < n) {
		uint64_t ns = col_u64(st, 1);

		if (ns)
			rates[(*n_out)++] = (double)col_u64(st, 0) * 1e9 / (double)ns;
	}
	return rows_done(cat, st, s == SQLITE_ROW ? SQLITE_DONE : s, false, "load rates");
}

int catalog_bench_add(struct catalog *cat, const char *model, uint64_t at_ns,
		      const char *figures)
{
	sqlite3_stmt *st;
	int rc;

	if (!model || !model[0] || !figures || at_ns > INT64_MAX)
		return -EINVAL;
	rc = prepare(cat, "INSERT INTO bench_runs(model, at_ns, figures) VALUES(?1, ?2, ?3)", &st);
	if (rc)
		return rc;
	sqlite3_bind_text(st, 1, model, -1, SQLITE_STATIC);
	bind_u64(st, 2, at_ns);
	sqlite3_bind_text(st, 3, figures, -1, SQLITE_STATIC);
	rc = step_done(cat, st, "add bench run");
	sqlite3_finalize(st);
	return rc;
}

int catalog_bench_list(struct catalog *cat, const char *model,
		       int (*cb)(int64_t id, const char *model, uint64_t at_ns,
				 const char *figures, void *arg),
		       void *arg)
{
	sqlite3_stmt *st;
	int rc = 0, s;

	rc = prepare(cat, "SELECT id, model, at_ns, figures FROM bench_runs "
		     "WHERE ?1 IS NULL OR model = ?1 ORDER BY id", &st);
	if (rc)
		return rc;
	if (model)
		sqlite3_bind_text(st, 1, model, -1, SQLITE_STATIC);
	while ((s = sqlite3_step(st)) == SQLITE_ROW) {
		rc = cb(sqlite3_column_int64(st, 0), (const char *)sqlite3_column_text(st, 1),
			col_u64(st, 2), (const char *)sqlite3_column_text(st, 3), arg);
		if (rc)
			break;
	}
	if (rc) {
		sqlite3_finalize(st);
		return rc;
	}
	return rows_done(cat, st, s, false, "bench runs");
}
