/*
 * The catalog tables behind the slow-load alert and `weightctl bench` (schema version 3):
 * load_history keeps the last N loads of a key and returns their rates newest first;
 * bench_runs stores and lists runs per model, oldest first; a version 2 catalog is migrated
 * (both tables created, its data kept) when opened.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sqlite3.h>
#include <cmocka.h>

#include "core/catalog/catalog.h"
#include "core/base/common.h"
#include "helpers_tmp.h"

static char dir[256];

static void test_load_history(void **state)
{
	/* Each row adds one load (bytes in ns) and then expects the rates, newest first. */
	static const struct {
		const char *key;
		uint64_t bytes, ns;
		unsigned int keep;
		int ret;
		unsigned int n_want;
		double newest;	/* rate of the newest load of the key */
	} rows[] = {
		{ "a/unet", 1000, 1000000000, 3, 0, 1, 1000 },
		{ "a/unet", 4000, 1000000000, 3, 0, 2, 4000 },
		{ "a/vae", 9, 1000000000, 3, 0, 1, 9 },
		{ "a/unet", 2000, 1000000000, 3, 0, 3, 2000 },
		{ "a/unet", 8000, 2000000000, 3, 0, 3, 4000 },	/* the first is pruned */
		{ "a/unet", 1, 0, 3, -EINVAL, 3, 4000 },	/* zero duration */
		{ "", 1, 1, 3, -EINVAL, 0, 0 },		/* empty key */
		{ "a/unet", 1, 1, 0, -EINVAL, 3, 4000 },	/* keep 0 */
	};
	struct catalog *cat;
	double rates[8];
	unsigned int n;
	int failures = 0;

	(void)state;
	assert_int_equal(catalog_open(dir, &cat), 0);
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		int ret = catalog_load_add(cat, rows[i].key, 1000 + i, rows[i].bytes, rows[i].ns,
					   rows[i].keep);

		assert_int_equal(catalog_load_rates(cat, rows[i].key, 8, rates, &n), 0);
		if (ret != rows[i].ret || n != rows[i].n_want ||
		    (n && (rates[0] < rows[i].newest - 1e-6 || rates[0] > rows[i].newest + 1e-6))) {
			print_error("row %zu (%s): ret %d (want %d), %u rates (want %u), newest %g "
				    "(want %g)\n", i, rows[i].key, ret, rows[i].ret, n,
				    rows[i].n_want, n ? rates[0] : 0.0, rows[i].newest);
			failures++;
		}
	}
	/* Newest first, and a limit below the count returns the newest ones. */
	assert_int_equal(catalog_load_rates(cat, "a/unet", 2, rates, &n), 0);
	assert_int_equal(n, 2);
	assert_true(rates[0] == 4000 && rates[1] == 2000);
	catalog_close(cat);
	assert_int_equal(failures, 0);
}

struct runs {
	unsigned int n;
	char models[4][16];
	char figures[4][64];
	int64_t ids[4];
};

static int collect(int64_t id, const char *model, uint64_t at_ns, const char *figures, void *arg)
{
	struct runs *r = arg;

	(void)at_ns;
	if (r->n == 4)
		return -E2BIG;
	r->ids[r->n] = id;
	snprintf(r->models[r->n], sizeof(r->models[0]), "%s", model);
	snprintf(r->figures[r->n], sizeof(r->figures[0]), "%s", figures);
	r->n++;
	return 0;
}

static void test_bench_runs(void **state)
{
	struct catalog *cat;
	struct runs r = { 0 };

	(void)state;
	assert_int_equal(catalog_open(dir, &cat), 0);
	assert_int_equal(catalog_bench_add(cat, "m1", 1, "{\"x\":1}"), 0);
	assert_int_equal(catalog_bench_add(cat, "m2", 2, "{\"x\":2}"), 0);
	assert_int_equal(catalog_bench_add(cat, "m1", 3, "{\"x\":3}"), 0);
	assert_int_equal(catalog_bench_add(cat, "", 4, "{}"), -EINVAL);
	assert_int_equal(catalog_bench_list(cat, "m1", collect, &r), 0);
	assert_int_equal(r.n, 2);
	assert_string_equal(r.figures[0], "{\"x\":1}");
	assert_string_equal(r.figures[1], "{\"x\":3}");
	assert_true(r.ids[0] < r.ids[1]);
	memset(&r, 0, sizeof(r));
	assert_int_equal(catalog_bench_list(cat, NULL, collect, &r), 0);
	assert_int_equal(r.n, 3);
	assert_string_equal(r.models[1], "m2");
	memset(&r, 0, sizeof(r));
	assert_int_equal(catalog_bench_list(cat, "none", collect, &r), 0);
	assert_int_equal(r.n, 0);
	catalog_close(cat);
}

/* A version 2 file (no load_history, no bench_runs) opens as version 3 with its rows kept. */
static void test_migrate_v2(void **state)
{
	char path[320], sub[300];
	struct catalog *cat;
	struct runs r = { 0 };
	sqlite3 *db;
	sqlite3_stmt *st;

	(void)state;
	snprintf(sub, sizeof(sub), "%s/v2", dir);
	assert_int_equal(catalog_open(sub, &cat), 0);
	assert_int_equal(catalog_coaccess_add(cat, "a/x", "a/y", 5, wd_wall_ns()), 0);
	catalog_close(cat);
	snprintf(path, sizeof(path), "%s/%s", sub, CATALOG_FILE);
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_exec(db, "DROP TABLE load_history; DROP TABLE bench_runs; "
				      "PRAGMA user_version=2", NULL, NULL, NULL), SQLITE_OK);
	sqlite3_close(db);

	assert_int_equal(catalog_open(sub, &cat), 0);
	assert_int_equal(catalog_bench_add(cat, "m", 1, "{}"), 0);
	assert_int_equal(catalog_bench_list(cat, "m", collect, &r), 0);
	assert_int_equal(r.n, 1);
	assert_int_equal(catalog_load_add(cat, "a/x", 1, 10, 10, 5), 0);
	catalog_close(cat);
	assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(db, "SELECT (SELECT user_version FROM "
					    "pragma_user_version), (SELECT count FROM co_access)",
					    -1, &st, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	assert_int_equal(sqlite3_column_int(st, 0), CATALOG_SCHEMA_VERSION);
	assert_int_equal(sqlite3_column_int(st, 1), 5);
	sqlite3_finalize(st);
	sqlite3_close(db);
}

static int setup(void **state)
{
	(void)state;
	return td_tmpdir(dir, sizeof(dir), "test_alert_history");
}

static int teardown(void **state)
{
	(void)state;
	td_rmtree(dir);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_load_history),
		cmocka_unit_test(test_bench_runs),
		cmocka_unit_test(test_migrate_v2),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
