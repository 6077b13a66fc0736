/*
 * A damaged catalog: PRAGMA quick_check, moving the damaged file (and its WAL) aside under a
 * dated name, and the open that does both before starting again with an empty catalog.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "core/catalog/catalog_internal.h"
#include "core/base/common.h"
#include "core/base/log.h"

int catalog_quick_check(struct catalog *cat, char *why, size_t why_size)
{
	sqlite3_stmt *st;
	int rc, s;

	if (why_size)
		why[0] = '\0';
	rc = sql_prepare(cat, "PRAGMA quick_check(1)", &st);
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
