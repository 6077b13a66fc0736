/*
 * The SQLite helpers every catalog query goes through (catalog_internal.h): the one mapping of
 * SQLite's result codes to negative errnos, and the one row loop (sql_each, sql_first,
 * sql_collect) that the readers hand their row functions to.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/catalog/catalog_internal.h"
#include "core/base/array.h"
#include "core/base/log.h"

int sql_fail(struct catalog *cat, int rc, const char *what)
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

int sql_exec(struct catalog *cat, const char *sql)
{
	int rc = sqlite3_exec(cat->db, sql, NULL, NULL, NULL);

	return rc == SQLITE_OK ? 0 : sql_fail(cat, rc, sql);
}

int sql_prepare(struct catalog *cat, const char *sql, sqlite3_stmt **st)
{
	int rc = sqlite3_prepare_v2(cat->db, sql, -1, st, NULL);

	return rc == SQLITE_OK ? 0 : sql_fail(cat, rc, sql);
}

int sql_step_done(struct catalog *cat, sqlite3_stmt *st, const char *what)
{
	int rc = sqlite3_step(st);

	sqlite3_reset(st);
	return rc == SQLITE_DONE ? 0 : sql_fail(cat, rc, what);
}

int sql_write(struct catalog *cat, sqlite3_stmt *st, const char *what)
{
	int rc = sql_step_done(cat, st, what);

	sqlite3_finalize(st);
	return rc;
}

int sql_end(struct catalog *cat, int rc)
{
	if (!rc)
		rc = sql_exec(cat, "COMMIT");
	if (rc)
		sqlite3_exec(cat->db, "ROLLBACK", NULL, NULL, NULL);
	return rc;
}

int sql_each(struct catalog *cat, sqlite3_stmt *st, sql_row_fn row, void *arg,
	     const char *what)
{
	int rc = 0, s;

	while ((s = sqlite3_step(st)) == SQLITE_ROW) {
		rc = row(st, arg);
		if (rc)
			break;
	}
	if (!rc && s != SQLITE_DONE)
		rc = sql_fail(cat, s, what);
	sqlite3_finalize(st);
	return rc;
}

int sql_run(struct catalog *cat, const char *sql, sql_row_fn row, void *arg, const char *what)
{
	sqlite3_stmt *st;
	int rc = sql_prepare(cat, sql, &st);

	return rc ? rc : sql_each(cat, st, row, arg, what);
}

int sql_first(struct catalog *cat, sqlite3_stmt *st, sql_row_fn row, void *arg,
	      const char *what)
{
	int s = sqlite3_step(st), rc;

	if (s == SQLITE_ROW)
		rc = row ? row(st, arg) : 0;
	else
		rc = s == SQLITE_DONE ? -ENOENT : sql_fail(cat, s, what);
	sqlite3_finalize(st);
	return rc;
}

/* sql_collect's state: the caller's array and how each row fills an element. */
struct collect {
	void *v;
	size_t *n, cap, size;
	sql_row_fn read;
};

static int collect_row(sqlite3_stmt *st, void *arg)
{
	struct collect *c = arg;
	char *elem;

	if (wd_grow(c->v, &c->cap, *c->n, c->size))
		return -ENOMEM;
	elem = *(char **)c->v + *c->n * c->size;
	(*c->n)++;
	return c->read(st, elem);
}

int sql_collect(struct catalog *cat, sqlite3_stmt *st, void *v, size_t *n, size_t size,
		sql_row_fn read, const char *what)
{
	/* wd_grow() zeroes from the capacity it is told; *n is a safe lower bound of the real one. */
	struct collect c = { .v = v, .n = n, .cap = *n, .size = size, .read = read };

	return sql_each(cat, st, collect_row, &c, what);
}

char *col_strdup(sqlite3_stmt *st, int i, bool *nomem)
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
