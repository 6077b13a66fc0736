/*
 * Co-access statistics: how often two components were requested together, a count that fades
 * with EVICT_COACCESS_HALF_LIFE_NS (core/policy/evict.h) and is read back, strongest first,
 * when the daemon starts.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "core/catalog/catalog_internal.h"
#include "core/base/array.h"
#include "core/policy/evict.h"

/* @count decayed from @at_ns to @now_ns; none when the clock went back. */
static double faded(double count, uint64_t at_ns, uint64_t now_ns)
{
	return now_ns > at_ns ? count * exp2(-(double)(now_ns - at_ns) /
					     (double)EVICT_COACCESS_HALF_LIFE_NS) : count;
}

/* A stored pair's count, faded to now. */
struct fade {
	uint64_t now_ns;
	double count;
};

static int read_faded(sqlite3_stmt *st, void *arg)
{
	struct fade *f = arg;

	f->count = faded(sqlite3_column_double(st, 0), col_u64(st, 1), f->now_ns);
	return 0;
}

int catalog_coaccess_add(struct catalog *cat, const char *a, const char *b, uint64_t n,
			 uint64_t now_ns)
{
	const char *lo = a, *hi = b;
	struct fade f = { .now_ns = now_ns };
	sqlite3_stmt *st;
	int rc;

	if (!a[0] || !b[0] || !strcmp(a, b) || !n || n > INT64_MAX || now_ns > INT64_MAX)
		return -EINVAL;
	/* One row per unordered pair: the smaller key first. */
	if (strcmp(a, b) > 0) {
		lo = b;
		hi = a;
	}
	rc = sql_exec(cat, "BEGIN IMMEDIATE");
	if (rc)
		return rc;
	rc = sql_prepare(cat, "SELECT count, at_ns FROM co_access WHERE a = ?1 AND b = ?2", &st);
	if (!rc) {
		bind_text(st, 1, lo);
		bind_text(st, 2, hi);
		rc = sql_first(cat, st, read_faded, &f, "read co-access");
		if (rc == -ENOENT)
			rc = 0; /* a new pair */
	}
	if (!rc)
		rc = sql_prepare(cat, "INSERT OR REPLACE INTO co_access(a, b, count, at_ns) "
				 "VALUES(?1, ?2, ?3, ?4)", &st);
	if (!rc) {
		bind_text(st, 1, lo);
		bind_text(st, 2, hi);
		sqlite3_bind_double(st, 3, f.count + (double)n);
		bind_u64(st, 4, now_ns);
		rc = sql_write(cat, st, "add co-access");
	}
	return sql_end(cat, rc);
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

/* The pairs read so far: those whose faded count still rounds to one or more. */
struct pairs {
	uint64_t now_ns;
	struct faded_pair *v;
	size_t n, cap;
};

static int read_pair(sqlite3_stmt *st, void *arg)
{
	struct pairs *p = arg;
	double c = faded(sqlite3_column_double(st, 2), col_u64(st, 3), p->now_ns) + 0.5;
	struct faded_pair *fp;

	if (c < 1)
		return 0;
	if (wd_grow(&p->v, &p->cap, p->n, sizeof(*p->v)))
		return -ENOMEM;
	fp = &p->v[p->n];
	fp->a = strdup(col_text(st, 0));
	fp->b = strdup(col_text(st, 1));
	fp->count = c >= (double)UINT64_MAX ? UINT64_MAX : (uint64_t)c;
	if (!fp->a || !fp->b) {
		free(fp->a);
		free(fp->b);
		return -ENOMEM;
	}
	p->n++;
	return 0;
}

int catalog_coaccess_load(struct catalog *cat, uint64_t now_ns,
			  int (*cb)(const char *a, const char *b, uint64_t count, void *arg),
			  void *arg)
{
	struct pairs p = { .now_ns = now_ns };
	int rc;

	rc = sql_run(cat, "SELECT a, b, count, at_ns FROM co_access", read_pair, &p,
		     "load co-access");
	if (!rc && p.n)
		qsort(p.v, p.n, sizeof(*p.v), by_count_desc);
	for (size_t i = 0; i < p.n; i++) {
		if (!rc)
			rc = cb(p.v[i].a, p.v[i].b, p.v[i].count, arg);
		free(p.v[i].a);
		free(p.v[i].b);
	}
	free(p.v);
	return rc;
}
