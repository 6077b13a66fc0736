/*
 * Load history (completed loads, for the slow-load alert) and `weightctl bench` results.
 */
#include <errno.h>
#include <stdint.h>

#include "core/catalog/catalog_internal.h"

int catalog_load_add(struct catalog *cat, const char *key, uint64_t at_ns, uint64_t bytes,
		     uint64_t ns, unsigned int keep)
{
	sqlite3_stmt *st;
	int rc;

	if (!key || !key[0] || !ns || bytes > INT64_MAX || ns > INT64_MAX || at_ns > INT64_MAX ||
	    !keep)
		return -EINVAL;
	rc = sql_prepare(cat, "INSERT INTO load_history(key, at_ns, bytes, ns)"
			 " VALUES(?1, ?2, ?3, ?4)", &st);
	if (rc)
		return rc;
	bind_text(st, 1, key);
	bind_u64(st, 2, at_ns);
	bind_u64(st, 3, bytes);
	bind_u64(st, 4, ns);
	rc = sql_write(cat, st, "add load");
	if (rc)
		return rc;
	/* Only the last @keep loads of a key are ever asked for: drop the older ones. */
	rc = sql_prepare(cat, "DELETE FROM load_history WHERE key = ?1 AND id <= (SELECT id FROM "
			 "load_history WHERE key = ?1 ORDER BY id DESC LIMIT 1 OFFSET ?2)", &st);
	if (rc)
		return rc;
	bind_text(st, 1, key);
	sqlite3_bind_int64(st, 2, keep);
	return sql_write(cat, st, "prune loads");
}

/* Where catalog_load_rates() puts the rates: at most @max of them. */
struct rates {
	double *v;
	unsigned int n, max;
};

static int read_rate(sqlite3_stmt *st, void *arg)
{
	struct rates *r = arg;
	uint64_t ns = col_u64(st, 1);

	if (r->n >= r->max)
		return 1; /* the LIMIT makes this unreachable; stops the loop all the same */
	if (ns)
		r->v[r->n++] = (double)col_u64(st, 0) * 1e9 / (double)ns;
	return 0;
}

int catalog_load_rates(struct catalog *cat, const char *key, unsigned int n, double *rates,
		       unsigned int *n_out)
{
	struct rates r = { .v = rates, .max = n };
	sqlite3_stmt *st;
	int rc;

	*n_out = 0;
	rc = sql_prepare(cat, "SELECT bytes, ns FROM load_history WHERE key = ?1"
			 " ORDER BY id DESC LIMIT ?2", &st);
	if (rc)
		return rc;
	bind_text(st, 1, key);
	sqlite3_bind_int64(st, 2, n);
	rc = sql_each(cat, st, read_rate, &r, "load rates");
	*n_out = r.n;
	return rc == 1 ? 0 : rc;
}

int catalog_bench_add(struct catalog *cat, const char *model, uint64_t at_ns,
		      const char *figures)
{
	sqlite3_stmt *st;
	int rc;

	if (!model || !model[0] || !figures || at_ns > INT64_MAX)
		return -EINVAL;
	rc = sql_prepare(cat, "INSERT INTO bench_runs(model, at_ns, figures) VALUES(?1, ?2, ?3)",
			 &st);
	if (rc)
		return rc;
	bind_text(st, 1, model);
	bind_u64(st, 2, at_ns);
	bind_text(st, 3, figures);
	return sql_write(cat, st, "add bench run");
}

/* The caller's callback for each bench run. */
struct bench_cb {
	int (*cb)(int64_t id, const char *model, uint64_t at_ns, const char *figures,
		  void *arg);
	void *arg;
};

static int bench_row(sqlite3_stmt *st, void *arg)
{
	struct bench_cb *c = arg;

	return c->cb(sqlite3_column_int64(st, 0), col_text(st, 1), col_u64(st, 2),
		     col_text(st, 3), c->arg);
}

int catalog_bench_list(struct catalog *cat, const char *model,
		       int (*cb)(int64_t id, const char *model, uint64_t at_ns,
				 const char *figures, void *arg),
		       void *arg)
{
	struct bench_cb c = { cb, arg };
	sqlite3_stmt *st;
	int rc;

	rc = sql_prepare(cat, "SELECT id, model, at_ns, figures FROM bench_runs "
			 "WHERE ?1 IS NULL OR model = ?1 ORDER BY id", &st);
	if (rc)
		return rc;
	if (model)
		bind_text(st, 1, model);
	return sql_each(cat, st, bench_row, &c, "bench runs");
}
