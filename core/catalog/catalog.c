/*
 * Opening the catalog: the SQLite file under the state directory, its schema and the
 * migrations from older schema versions, WAL mode, and closing. See catalog.h for the schema
 * and the error mapping; catalog_internal.h lists the other files of core/catalog.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/catalog/catalog_internal.h"
#include "core/base/common.h"
#include "core/base/log.h"
#include "core/base/statedir.h"

/* How long a call waits for another process's write lock before failing with -EBUSY. */
#define BUSY_TIMEOUT_MS 10000

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

/*
 * has_column: 1 when @table has a column named @column, 0 when not, else a negative errno. A
 * catalog written by a newer version and then marked older has a migration's column
 * already, so each migration that adds one asks first.
 */
static int has_column(struct catalog *cat, const char *table, const char *column)
{
	sqlite3_stmt *st;
	int rc;

	rc = sql_prepare(cat, "SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2", &st);
	if (rc)
		return rc;
	bind_text(st, 1, table);
	bind_text(st, 2, column);
	rc = sql_first(cat, st, NULL, NULL, "read table columns");
	return rc == -ENOENT ? 0 : rc ? rc : 1;
}

static int migrate_v4(struct catalog *cat)
{
	char sql[sizeof(MIGRATE_V4_FMT) + 24];
	int rc = has_column(cat, "co_access", "at_ns");

	if (rc)
		return rc < 0 ? rc : 0;
	snprintf(sql, sizeof(sql), MIGRATE_V4_FMT, wd_wall_ns());
	return sql_exec(cat, sql);
}

static int migrate_v5(struct catalog *cat)
{
	int rc = has_column(cat, "files", "ctime_ns");

	if (rc)
		return rc < 0 ? rc : 0;
	return sql_exec(cat, migrate_v5_sql);
}

static int read_int(sqlite3_stmt *st, void *out)
{
	*(int *)out = sqlite3_column_int(st, 0);
	return 0;
}

static int create_schema(struct catalog *cat)
{
	sqlite3_stmt *st;
	int rc, version;

	rc = sql_exec(cat, "BEGIN IMMEDIATE");
	if (rc)
		return rc;
	/* Read the version inside the write lock: another process may have just created it. */
	rc = sql_prepare(cat, "PRAGMA user_version", &st);
	if (!rc)
		rc = sql_first(cat, st, read_int, &version, "PRAGMA user_version");
	if (rc)
		goto rollback;
	if (version > CATALOG_SCHEMA_VERSION) {
		log_error("catalog", "\"catalog has a newer schema\" db=%s version=%d known=%d",
			  cat->path, version, CATALOG_SCHEMA_VERSION);
		rc = -EPROTONOSUPPORT;
		goto rollback;
	}
	if (version == 0) {
		rc = sql_exec(cat, schema_sql);
		if (!rc) {
			char sql[64];

			snprintf(sql, sizeof(sql), "PRAGMA user_version=%d",
				 CATALOG_SCHEMA_VERSION);
			rc = sql_exec(cat, sql);
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
		rc = sql_exec(cat, migrate_v2_sql);
		if (!rc)
			rc = sql_exec(cat, migrate_v3_sql);
		if (!rc)
			rc = migrate_v4(cat);
		if (!rc)
			rc = migrate_v5(cat);
		snprintf(sql, sizeof(sql), "PRAGMA user_version=%d", CATALOG_SCHEMA_VERSION);
		if (!rc)
			rc = sql_exec(cat, sql);
		if (rc)
			goto rollback;
		log_info("catalog", "\"catalog schema migrated\" db=%s from=%d to=%d", cat->path,
			 version, CATALOG_SCHEMA_VERSION);
	}
	return sql_exec(cat, "COMMIT");
rollback:
	return sql_end(cat, rc);
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
		rc = sql_exec(cat, "PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON");
	if (!rc)
		rc = create_schema(cat);
	if (rc) {
		catalog_close(cat);
		return rc;
	}
	*out = cat;
	return 0;
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
