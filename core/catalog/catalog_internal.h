/*
 * What the files of core/catalog share and nobody else sees: the catalog handle and the small
 * SQLite helpers (core/catalog/catalog_sql.c) that every query goes through.
 *
 * The files: catalog.c (open, schema, migrations), catalog_repair.c (quick_check, moving a
 * damaged catalog aside), catalog_scope.c (the scanner's snapshot and catalog_apply),
 * catalog_models.c (reading models, components and their files), catalog_meta.c (user
 * metadata, tags, notes), catalog_coaccess.c (co-access statistics), catalog_history.c (load
 * history and bench runs).
 *
 * SQLite stores signed 64-bit integers; device and inode numbers and hashes are unsigned
 * 64-bit values, so they are stored as their bit pattern (col_u64/bind_u64, a cast both ways)
 * and compared only for equality.
 */
#ifndef WD_CATALOG_INTERNAL_H
#define WD_CATALOG_INTERNAL_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "core/catalog/catalog.h"

struct catalog {
	sqlite3 *db;
	char path[PATH_MAX];
};

/* Maps a failed SQLite call to a negative errno, logging SQLite's own message once. */
int sql_fail(struct catalog *cat, int rc, const char *what);

/* sqlite3_exec() of @sql (no rows wanted): 0 or sql_fail(). */
int sql_exec(struct catalog *cat, const char *sql);

/* sqlite3_prepare_v2() of @sql into *@st: 0 or sql_fail(). */
int sql_prepare(struct catalog *cat, const char *sql, sqlite3_stmt **st);

/* Steps @st expecting SQLITE_DONE, then resets it (for reuse): 0 or sql_fail(@what). */
int sql_step_done(struct catalog *cat, sqlite3_stmt *st, const char *what);

/* Steps @st once expecting SQLITE_DONE (a write), then finalizes it: 0 or sql_fail(@what). */
int sql_write(struct catalog *cat, sqlite3_stmt *st, const char *what);

/*
 * Ends a transaction begun with BEGIN: COMMIT when @rc is 0 (returning COMMIT's outcome),
 * else ROLLBACK (returning @rc).
 */
int sql_end(struct catalog *cat, int rc);

/* One row of a query: read it from @st. A nonzero return stops the query and is returned. */
typedef int (*sql_row_fn)(sqlite3_stmt *st, void *arg);

/*
 * The one row loop: steps the prepared and bound @st to its end, handing each row to @row
 * with @arg, and finalizes @st. Returns 0, @row's first nonzero return (which stops the
 * loop), or sql_fail(@what) when a step fails.
 */
int sql_each(struct catalog *cat, sqlite3_stmt *st, sql_row_fn row, void *arg,
	     const char *what);

/* sql_each() of @sql, which takes no parameters. */
int sql_run(struct catalog *cat, const char *sql, sql_row_fn row, void *arg, const char *what);

/*
 * The first row only: hands it to @row (when non-NULL) and finalizes @st. Returns @row's
 * return, -ENOENT when the query has no row, or sql_fail(@what).
 */
int sql_first(struct catalog *cat, sqlite3_stmt *st, sql_row_fn row, void *arg,
	      const char *what);

/*
 * Collects the rows of @st into the growable array *@v (core/base/array.h) of *@n elements of
 * @size bytes: each row gets a new zeroed element, counted in *@n before @read fills it (so
 * that freeing the first *@n elements frees whatever @read copied, even after a failure).
 * *@v and *@n start as the caller's (NULL and 0 for a new array). Finalizes @st. Returns 0,
 * -ENOMEM, @read's first nonzero return, or sql_fail(@what).
 */
int sql_collect(struct catalog *cat, sqlite3_stmt *st, void *v, size_t *n, size_t size,
		sql_row_fn read, const char *what);

/* A copy of column @i's text, NULL for SQL NULL; sets *@nomem when the copy fails. */
char *col_strdup(sqlite3_stmt *st, int i, bool *nomem);

static inline uint64_t col_u64(sqlite3_stmt *st, int i)
{
	return (uint64_t)sqlite3_column_int64(st, i);
}

static inline const char *col_text(sqlite3_stmt *st, int i)
{
	return (const char *)sqlite3_column_text(st, i);
}

static inline void bind_u64(sqlite3_stmt *st, int i, uint64_t v)
{
	sqlite3_bind_int64(st, i, (sqlite3_int64)v);
}

static inline void bind_text(sqlite3_stmt *st, int i, const char *s)
{
	sqlite3_bind_text(st, i, s, -1, SQLITE_STATIC);
}

#endif
