/*
 * The catalog: schema and pragmas on open, refusal of newer schemas and of files that
 * are not databases, model resolution by name and path, user metadata that survives
 * close/reopen, rescans and a model that disappears and comes back, and atomicity: a
 * scanner SIGKILLed at random moments leaves either the old or the new catalog, never a
 * mix, and never a corrupt file.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <sqlite3.h>

#include "tests/helpers_tmp.h"
#include "core/catalog/catalog.h"
#include "core/base/common.h"
#include "core/policy/evict.h"
#include "core/format/gen.h"
#include "core/base/log.h"
#include "core/catalog/scan.h"
#include "core/format/st_write.h"
#include "core/base/statedir.h"

static char tmp_root[1024];

static void fmt(char *buf, size_t size, const char *f, ...) __attribute__((format(printf, 3, 4)));
static void fmt(char *buf, size_t size, const char *f, ...)
{
	va_list ap;
	int n;

	va_start(ap, f);
	n = vsnprintf(buf, size, f, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= size)
		fail_msg("path too long: %s", buf);
}

static void write_st(const char *dir, const char *rel, const char *name, uint64_t dim)
{
	struct st_write_tensor t = { .name = name, .dtype = ST_F32, .rank = 1, .shape = { dim } };
	char path[4096], parent[4096];
	int rc;

	fmt(path, sizeof(path), "%s/%s", dir, rel);
	fmt(parent, sizeof(parent), "%s", path);
	*strrchr(parent, '/') = '\0';
	assert_int_equal(mkdir_p(parent, 0755), 0);
	rc = st_write_file(path, &t, 1, NULL, 0, 3);
	if (rc)
		fail_msg("st_write_file(%s) = %d", path, rc);
}

static void scan_one(struct catalog *cat, const char *root, struct scan_result *r)
{
	const char *roots[] = { root };
	int rc = scan_roots(cat, roots, 1, NULL, r);

	if (rc)
		fail_msg("scan_roots(%s) = %d", root, rc);
}

/* Runs a query returning one text or integer cell into @out. */
static void query1(const char *db, const char *sql, char *out, size_t size)
{
	sqlite3 *h;
	sqlite3_stmt *st;

	assert_int_equal(sqlite3_open_v2(db, &h, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
	if (sqlite3_prepare_v2(h, sql, -1, &st, NULL) != SQLITE_OK)
		fail_msg("%s: %s", sql, sqlite3_errmsg(h));
	if (sqlite3_step(st) == SQLITE_ROW) {
		const unsigned char *v = sqlite3_column_text(st, 0);

		fmt(out, size, "%s", v ? (const char *)v : "");
	} else {
		fmt(out, size, "(no row)");
	}
	sqlite3_finalize(st);
	sqlite3_close(h);
}

static void test_open_schema(void **state)
{
	char st[4096], db[4200], v[64];
	struct catalog *cat;

	(void)state;
	fmt(st, sizeof(st), "%s/schema/state", tmp_root);
	assert_int_equal(catalog_open(st, &cat), 0);
	fmt(db, sizeof(db), "%s/catalog.db", st);
	assert_string_equal(catalog_db_path(cat), db);
	query1(db, "PRAGMA journal_mode", v, sizeof(v));
	assert_string_equal(v, "wal");
	query1(db, "PRAGMA user_version", v, sizeof(v));
	assert_int_equal(atoi(v), CATALOG_SCHEMA_VERSION);
	catalog_close(cat);
	/* Reopening an existing catalog keeps it. */
	assert_int_equal(catalog_open(st, &cat), 0);
	catalog_close(cat);
	query1(db, "PRAGMA integrity_check", v, sizeof(v));
	assert_string_equal(v, "ok");
}

static void test_open_refusals(void **state)
{
	char st[4096], db[4200], v[64];
	struct catalog *cat;
	FILE *f;

	(void)state;
	log_set_level(LOG_OFF); /* the expected failures log errors */
	/* A newer schema version is refused, and the file is left alone. */
	fmt(st, sizeof(st), "%s/newer", tmp_root);
	assert_int_equal(catalog_open(st, &cat), 0);
	catalog_close(cat);
	fmt(db, sizeof(db), "%s/catalog.db", st);
	query1(db, "PRAGMA user_version = 99", v, sizeof(v));
	assert_int_equal(catalog_open(st, &cat), -EPROTONOSUPPORT);
	query1(db, "PRAGMA user_version", v, sizeof(v));
	assert_string_equal(v, "99");
	/* A file that is not a database. */
	fmt(st, sizeof(st), "%s/garbage", tmp_root);
	assert_int_equal(mkdir_p(st, 0700), 0);
	fmt(db, sizeof(db), "%s/catalog.db", st);
	f = fopen(db, "w");
	assert_non_null(f);
	for (int i = 0; i < 512; i++)
		fputs("this is not an SQLite database ", f);
	fclose(f);
	assert_int_equal(catalog_open(st, &cat), -EBADMSG);
	log_set_level(LOG_WARN);
}

struct meta_op {
	enum { SET, UNSET, GET, TAG, UNTAG, NOTE } op;
	const char *model;
	const char *key;
	const char *value; /* SET/NOTE: the value; GET: the expected value */
	int rc;
};

static void run_meta_ops(struct catalog *cat, const struct meta_op *ops, size_t n,
			 const char *phase)
{
	for (size_t i = 0; i < n; i++) {
		const struct meta_op *o = &ops[i];
		char *v = NULL;
		int rc;

		switch (o->op) {
		case SET:
			rc = catalog_meta_set(cat, o->model, o->key, o->value);
			break;
		case UNSET:
			rc = catalog_meta_unset(cat, o->model, o->key);
			break;
		case TAG:
			rc = catalog_tag_add(cat, o->model, o->key);
			break;
		case UNTAG:
			rc = catalog_tag_remove(cat, o->model, o->key);
			break;
		case NOTE:
			rc = catalog_note_set(cat, o->model, o->value);
			break;
		default:
			rc = catalog_meta_get(cat, o->model, o->key, &v);
			if (!rc && strcmp(v, o->value))
				fail_msg("%s op %zu: %s/%s = \"%s\", want \"%s\"", phase, i,
					 o->model, o->key, v, o->value);
			free(v);
		}
		if (rc != o->rc)
			fail_msg("%s op %zu (%d %s %s): rc %d, want %d", phase, i, o->op, o->model,
				 o->key ? o->key : "", rc, o->rc);
	}
}

static int collect_kv(const char *key, const char *value, void *arg)
{
	char *buf = arg;

	snprintf(buf + strlen(buf), 512 - strlen(buf), "%s=%s;", key, value);
	return 0;
}

static void test_meta_survives(void **state)
{
	static const struct meta_op set_ops[] = {
		{ SET, "alpha", "owner", "team-a", 0 },
		{ SET, "alpha", "owner", "team-b", 0 }, /* replaces */
		{ TAG, "alpha", "prod", NULL, 0 },
		{ TAG, "alpha", "fp32", NULL, 0 },
		{ TAG, "alpha", "bad tag", NULL, -EINVAL },
		{ TAG, "alpha", "", NULL, -EINVAL },
		{ NOTE, "alpha", NULL, "keep warm on gpu0", 0 },
		{ SET, "beta", "owner", "team-c", 0 },
		{ SET, "nosuchmodel", "owner", "x", -ENOENT },
		{ SET, "alpha", "", "x", -EINVAL },
		/* Invalid UTF-8 is refused: `meta get --json` could not print it. */
		{ SET, "alpha", "bin", "ok\xff\xfe", -EILSEQ },
		{ SET, "alpha", "bin", "\xc0\xaf", -EILSEQ },	/* overlong '/' */
		{ SET, "alpha", "k\xe2\x82", "x", -EILSEQ },	/* truncated sequence */
		{ SET, "beta", "utf8", "caf\xc3\xa9 \xe2\x82\xac", 0 },
		{ GET, "alpha", "bin", NULL, -ENOENT },
		{ UNSET, "alpha", "missing-key", NULL, -ENOENT },
		{ GET, "alpha", "missing-key", NULL, -ENOENT },
		{ GET, "nosuchmodel", "owner", NULL, -ENOENT },
	};
	static const struct meta_op after_ops[] = {
		{ GET, "alpha", "owner", "team-b", 0 },
		{ GET, "alpha", "tag:prod", "", 0 },
		{ GET, "alpha", CATALOG_NOTE_KEY, "keep warm on gpu0", 0 },
		{ GET, "beta", "owner", "team-c", 0 },
	};
	char models[4096], st[4096], path[4200], kv[512] = "";
	struct catalog_model m;
	struct catalog *cat;
	struct scan_result r;

	(void)state;
	fmt(models, sizeof(models), "%s/meta/models", tmp_root);
	fmt(st, sizeof(st), "%s/meta/state", tmp_root);
	write_st(models, "alpha.safetensors", "w", 4);
	write_st(models, "beta.safetensors", "w", 4);
	assert_int_equal(catalog_open(st, &cat), 0);
	scan_one(cat, models, &r);
	assert_int_equal(r.n_added, 2);
	scan_result_free(&r);
	run_meta_ops(cat, set_ops, ARRAY_SIZE(set_ops), "set");
	catalog_close(cat);

	/* Survives close and reopen. */
	assert_int_equal(catalog_open(st, &cat), 0);
	run_meta_ops(cat, after_ops, ARRAY_SIZE(after_ops), "reopen");
	/* By path too, and listed with the model. */
	fmt(path, sizeof(path), "%s/alpha.safetensors", models);
	assert_int_equal(catalog_meta_list(cat, path, collect_kv, kv), 0);
	assert_string_equal(kv, "note=keep warm on gpu0;owner=team-b;tag:fp32=;tag:prod=;");
	assert_int_equal(catalog_get_model(cat, "alpha", &m), 0);
	assert_int_equal(m.n_user, 4);
	assert_string_equal(m.user[2].key, "tag:fp32");
	catalog_model_free(&m);

	/* Survives a rescan that rewrites the model. */
	write_st(models, "alpha.safetensors", "w", 8);
	scan_one(cat, models, &r);
	assert_int_equal(r.n_updated, 1);
	scan_result_free(&r);
	run_meta_ops(cat, after_ops, ARRAY_SIZE(after_ops), "rescan");

	/* A model that disappears loses access to its metadata ... */
	assert_int_equal(unlink(path), 0);
	scan_one(cat, models, &r);
	assert_int_equal(r.n_removed, 1);
	scan_result_free(&r);
	{
		char *v;

		assert_int_equal(catalog_meta_get(cat, "alpha", "owner", &v), -ENOENT);
	}
	/* ... and finds it again when it comes back under the same name. */
	write_st(models, "alpha.safetensors", "w", 4);
	scan_one(cat, models, &r);
	assert_int_equal(r.n_added, 1);
	scan_result_free(&r);
	run_meta_ops(cat, after_ops, ARRAY_SIZE(after_ops), "return");

	/* Removing works and persists. */
	assert_int_equal(catalog_tag_remove(cat, "alpha", "prod"), 0);
	assert_int_equal(catalog_tag_remove(cat, "alpha", "prod"), -ENOENT);
	catalog_close(cat);
	assert_int_equal(catalog_open(st, &cat), 0);
	{
		char *v;

		assert_int_equal(catalog_meta_get(cat, "alpha", "tag:prod", &v), -ENOENT);
	}
	catalog_close(cat);
}

struct resolve_case {
	const char *arg; /* relative to the models directory when it starts with "./" */
	const char *want; /* model name, or NULL for -ENOENT */
};

static void test_resolve(void **state)
{
	static const struct resolve_case cases[] = {
		{ "solo", "solo" },
		{ "./solo.safetensors", "solo" },
		{ "./llm", "llm" },
		{ "./llm/", "llm" },
		{ "./llm/model.safetensors.index.json", "llm" },
		{ "./llm/model-00002-of-00002.safetensors", "llm" },
		{ "./nothing.safetensors", NULL },
		{ "nothing", NULL },
	};
	char models[4096], st[4096], cwd[4096];
	struct catalog *cat;
	struct scan_result r;
	FILE *f;

	(void)state;
	fmt(models, sizeof(models), "%s/resolve/models", tmp_root);
	fmt(st, sizeof(st), "%s/resolve/state", tmp_root);
	write_st(models, "solo.safetensors", "x", 2);
	write_st(models, "llm/model-00001-of-00002.safetensors", "a", 2);
	write_st(models, "llm/model-00002-of-00002.safetensors", "b", 2);
	{
		char p[4200];

		fmt(p, sizeof(p), "%s/llm/model.safetensors.index.json", models);
		f = fopen(p, "w");
		assert_non_null(f);
		fputs("{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\","
		      " \"b\": \"model-00002-of-00002.safetensors\"}}", f);
		fclose(f);
	}
	assert_int_equal(catalog_open(st, &cat), 0);
	scan_one(cat, models, &r);
	assert_int_equal(r.n_models, 2);
	scan_result_free(&r);
	/* Relative paths resolve against the working directory. */
	assert_non_null(getcwd(cwd, sizeof(cwd)));
	assert_int_equal(chdir(models), 0);
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		char name[256] = "";
		int64_t id = 0;
		int rc = catalog_resolve(cat, cases[i].arg, &id, name, sizeof(name));

		if (cases[i].want ? rc || strcmp(name, cases[i].want) || id <= 0 : rc != -ENOENT)
			fail_msg("resolve(%s) = %d \"%s\", want %s", cases[i].arg, rc, name,
				 cases[i].want ? cases[i].want : "-ENOENT");
	}
	assert_int_equal(chdir(cwd), 0);
	catalog_close(cat);
}

/* ---- kill -9 in the middle of a scan ---- */

struct cat_state {
	long models, files, components, cfiles, tensors;
};

static long count(sqlite3 *h, const char *sql)
{
	sqlite3_stmt *st;
	long n = -1;

	if (sqlite3_prepare_v2(h, sql, -1, &st, NULL) != SQLITE_OK)
		fail_msg("%s: %s", sql, sqlite3_errmsg(h));
	if (sqlite3_step(st) == SQLITE_ROW)
		n = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return n;
}

/* Reads the counts of a catalog after checking its integrity and its foreign keys. */
static void read_state(const char *state_dir, struct cat_state *s, const char *when)
{
	char db[4200];
	sqlite3 *h;
	sqlite3_stmt *st;

	fmt(db, sizeof(db), "%s/catalog.db", state_dir);
	assert_int_equal(sqlite3_open_v2(db, &h, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
	assert_int_equal(sqlite3_prepare_v2(h, "PRAGMA integrity_check", -1, &st, NULL),
			 SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	if (strcmp((const char *)sqlite3_column_text(st, 0), "ok"))
		fail_msg("%s: integrity_check: %s", when, sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	assert_int_equal(sqlite3_prepare_v2(h, "PRAGMA foreign_key_check", -1, &st, NULL),
			 SQLITE_OK);
	if (sqlite3_step(st) == SQLITE_ROW)
		fail_msg("%s: foreign_key_check: a dangling reference in %s", when,
			 sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	s->models = count(h, "SELECT count(*) FROM models");
	s->files = count(h, "SELECT count(*) FROM files");
	s->components = count(h, "SELECT count(*) FROM components");
	s->cfiles = count(h, "SELECT count(*) FROM component_files");
	s->tensors = count(h, "SELECT count(*) FROM tensors");
	sqlite3_close(h);
}

static bool same_state(const struct cat_state *a, const struct cat_state *b)
{
	return a->models == b->models && a->files == b->files && a->components == b->components &&
	       a->cfiles == b->cfiles && a->tensors == b->tensors;
}

static void copy_file(const char *from, const char *to)
{
	char cmd[9000];

	fmt(cmd, sizeof(cmd), "rm -rf '%s' && mkdir -p '%s' && cp '%s/catalog.db' '%s/'", to, to,
	    from, to);
	assert_int_equal(system(cmd), 0);
}

/* Scans @models into @state in a child; returns the child's pid. */
static pid_t spawn_scan(const char *models, const char *state_dir)
{
	pid_t pid = fork();

	assert_true(pid >= 0);
	if (pid == 0) {
		struct catalog *cat;
		struct scan_result r;
		const char *roots[] = { models };

		if (catalog_open(state_dir, &cat))
			_exit(10);
		if (scan_roots(cat, roots, 1, NULL, &r))
			_exit(11);
		_exit(0);
	}
	return pid;
}

static void test_kill9_mid_scan(void **state)
{
	struct gen_options go = { .count = 1500 };
	char models[4096], base[4096], fresh[4096], work[4096], extra[4200], cmd[4300];
	char wal[4200];
	struct cat_state old_s, new_s, got;
	struct catalog *cat;
	struct scan_result r;
	unsigned n_old = 0, n_new = 0;
	uint64_t t0, full_ns;
	int status;
	pid_t pid;

	(void)state;
	fmt(models, sizeof(models), "%s/kill/models", tmp_root);
	fmt(base, sizeof(base), "%s/kill/state-old", tmp_root);
	fmt(fresh, sizeof(fresh), "%s/kill/state-new", tmp_root);
	fmt(work, sizeof(work), "%s/kill/state-work", tmp_root);
	assert_int_equal(gen_preset("files", models, &go), 0);
	assert_int_equal(catalog_open(base, &cat), 0);
	scan_one(cat, models, &r);
	scan_result_free(&r);
	catalog_close(cat);
	read_state(base, &old_s, "old");

	/* The change: 1,500 more files, one directory of 100 removed, one file rewritten. */
	fmt(extra, sizeof(extra), "%s/extra", models);
	assert_int_equal(gen_preset("files", extra, &go), 0);
	fmt(cmd, sizeof(cmd), "rm -rf '%s/000'", models);
	assert_int_equal(system(cmd), 0);
	write_st(models, "001/model-00100.safetensors", "rewritten", 3);

	/* The new state, and how long a full scan takes, from an unkilled child. */
	copy_file(base, fresh);
	t0 = wd_now_ns();
	pid = spawn_scan(models, fresh);
	assert_int_equal(waitpid(pid, &status, 0), pid);
	full_ns = wd_now_ns() - t0;
	assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	read_state(fresh, &new_s, "new");
	if (same_state(&old_s, &new_s) || new_s.models != old_s.models + 1500 - 100)
		fail_msg("old %ld models, new %ld", old_s.models, new_s.models);

	srand((unsigned)time(NULL) ^ (unsigned)getpid());
	fmt(wal, sizeof(wal), "%s/catalog.db-wal", work);
	for (int i = 0; i < 9; i++) {
		/*
		 * Two kills in three at a random moment of the whole scan; every third one as
		 * soon as the transaction's pages start reaching the WAL, which is the moment
		 * a torn write would show.
		 */
		uint64_t delay = full_ns * (unsigned)(rand() % 110) / 100;
		struct timespec ts = { (time_t)(delay / 1000000000), (long)(delay % 1000000000) };
		bool at_wal = i % 3 == 2;
		char when[96];

		copy_file(base, work);
		t0 = wd_now_ns();
		pid = spawn_scan(models, work);
		if (at_wal) {
			struct stat sb;

			while ((stat(wal, &sb) < 0 || sb.st_size == 0) &&
			       wd_now_ns() - t0 < 20 * full_ns + 2000000000ull)
				;
			delay = wd_now_ns() - t0;
		} else {
			nanosleep(&ts, NULL);
		}
		kill(pid, SIGKILL);
		assert_int_equal(waitpid(pid, &status, 0), pid);
		fmt(when, sizeof(when), "kill %d after %.1f ms%s", i, (double)delay / 1e6,
		    at_wal ? " (WAL growing)" : "");
		read_state(work, &got, when);
		if (getenv("TEST_VERBOSE"))
			print_message("%s: %s\n", when, same_state(&got, &old_s) ? "old" :
				      same_state(&got, &new_s) ? "new" : "PARTIAL");
		if (same_state(&got, &old_s))
			n_old++;
		else if (same_state(&got, &new_s))
			n_new++;
		else
			fail_msg("%s: a partial catalog: models %ld files %ld components %ld "
				 "component_files %ld tensors %ld; old %ld/%ld, new %ld/%ld", when,
				 got.models, got.files, got.components, got.cfiles, got.tensors,
				 old_s.models, old_s.files, new_s.models, new_s.files);
		/* The survivor must still open and rescan to the new state. */
		assert_int_equal(catalog_open(work, &cat), 0);
		scan_one(cat, models, &r);
		scan_result_free(&r);
		catalog_close(cat);
		read_state(work, &got, "rescan after kill");
		if (!same_state(&got, &new_s))
			fail_msg("%s: the rescan gave %ld models, want %ld", when, got.models,
				 new_s.models);
	}
	print_message("kill -9: full scan %.1f ms; %u kills left the old catalog, %u the new\n",
		      (double)full_ns / 1e6, n_old, n_new);
}

/* Two scanners racing on one fresh catalog both succeed and agree with a lone scan. */
static void test_concurrent_scans(void **state)
{
	struct gen_options go = { .count = 600 };
	char models[4096], st[4096], lone[4096];
	struct cat_state a, b;
	pid_t pids[2];

	(void)state;
	fmt(models, sizeof(models), "%s/race/models", tmp_root);
	fmt(st, sizeof(st), "%s/race/state", tmp_root);
	fmt(lone, sizeof(lone), "%s/race/lone", tmp_root);
	assert_int_equal(gen_preset("demo", models, NULL), 0);
	assert_int_equal(gen_preset("files", models, &go), 0);
	for (int round = 0; round < 3; round++) {
		char cmd[4200];

		fmt(cmd, sizeof(cmd), "rm -rf '%s'", st);
		assert_int_equal(system(cmd), 0);
		for (int i = 0; i < 2; i++)
			pids[i] = spawn_scan(models, st);
		for (int i = 0; i < 2; i++) {
			int status;

			assert_int_equal(waitpid(pids[i], &status, 0), pids[i]);
			if (!WIFEXITED(status) || WEXITSTATUS(status))
				fail_msg("round %d: scanner %d exited with status %#x", round, i,
					 status);
		}
		read_state(st, &a, "race");
		if (round == 0) {
			pid_t p = spawn_scan(models, lone);
			int status;

			assert_int_equal(waitpid(p, &status, 0), p);
			assert_true(WIFEXITED(status) && !WEXITSTATUS(status));
			read_state(lone, &b, "lone");
		}
		if (!same_state(&a, &b))
			fail_msg("round %d: racing scans gave %ld models %ld files, "
				 "a lone scan %ld models %ld files", round, a.models, a.files,
				 b.models, b.files);
	}
}

struct pair_row {
	const char *a, *b;
	uint64_t n;
};

struct pair_seen {
	char got[1024];
	size_t len;
};

static int collect_pair(const char *a, const char *b, uint64_t count, void *arg)
{
	struct pair_seen *ps = arg;

	ps->len += (size_t)snprintf(ps->got + ps->len, sizeof(ps->got) - ps->len,
				    "%s|%s=%llu;", a, b, (unsigned long long)count);
	return 0;
}

static void exec_sql(const char *db, const char *sql)
{
	sqlite3 *h;
	char *err = NULL;

	if (sqlite3_open(db, &h) != SQLITE_OK)
		fail_msg("open %s: %s", db, sqlite3_errmsg(h));
	if (sqlite3_exec(h, sql, NULL, NULL, &err) != SQLITE_OK)
		fail_msg("%s: %s", sql, err);
	sqlite3_close(h);
}

/* A wall-clock time for the co-access tests: 2026-01-01. */
#define T0 1767225600000000000ull

/*
 * Co-access pairs: unordered, accumulated, refused when malformed, kept on reopen, fading
 * with time, and migrated from older schemas.
 */
static void test_coaccess(void **state)
{
	static const struct {
		struct pair_row add;
		int ret;
	} rows[] = {
		{ { "m/unet", "m/vae", 1 }, 0 },
		{ { "m/vae", "m/unet", 2 }, 0 },	/* the same pair, reversed */
		{ { "m/text", "m/unet", 5 }, 0 },
		{ { "x", "x", 1 }, -EINVAL },		/* a key with itself */
		{ { "", "x", 1 }, -EINVAL },
		{ { "a", "b", 0 }, -EINVAL },
	};
	const char *want = "m/text|m/unet=5;m/unet|m/vae=3;";
	char st[4096], db[4200], v[64];
	struct pair_seen ps = { .len = 0 };
	struct catalog *cat;

	(void)state;
	fmt(st, sizeof(st), "%s/coaccess/state", tmp_root);
	fmt(db, sizeof(db), "%s/catalog.db", st);
	assert_int_equal(catalog_open(st, &cat), 0);
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		int ret = catalog_coaccess_add(cat, rows[i].add.a, rows[i].add.b, rows[i].add.n,
					       T0);

		if (ret != rows[i].ret)
			fail_msg("row %zu: add(%s, %s, %llu) = %d, want %d", i, rows[i].add.a,
				 rows[i].add.b, (unsigned long long)rows[i].add.n, ret, rows[i].ret);
	}
	catalog_close(cat);
	assert_int_equal(catalog_open(st, &cat), 0);
	assert_int_equal(catalog_coaccess_load(cat, T0, collect_pair, &ps), 0);
	if (strcmp(ps.got, want))
		fail_msg("after reopen: pairs %s, want %s", ps.got, want);

	/* Counts fade: halved per half-life when read, and decayed before an addition. */
	static const struct {
		uint64_t add;		/* 0: only read */
		uint64_t at;		/* half-lives after T0 */
		const char *want;	/* after the addition, read at the same time */
	} fades[] = {
		{ 0, 1, "m/text|m/unet=3;m/unet|m/vae=2;" },	/* 2.5 and 1.5 round up */
		{ 0, 2, "m/text|m/unet=1;m/unet|m/vae=1;" },	/* 1.25, 0.75 */
		{ 3, 2, "m/unet|m/vae=4;m/text|m/unet=1;" },	/* 0.75 + 3 */
		{ 0, 3, "m/unet|m/vae=2;m/text|m/unet=1;" },	/* 1.875, 0.625 */
		{ 0, 40, "" },					/* everything faded */
	};
	for (size_t i = 0; i < ARRAY_SIZE(fades); i++) {
		uint64_t now = T0 + fades[i].at * EVICT_COACCESS_HALF_LIFE_NS;

		if (fades[i].add)
			assert_int_equal(catalog_coaccess_add(cat, "m/vae", "m/unet", fades[i].add,
							      now), 0);
		ps.len = 0;
		ps.got[0] = '\0';
		assert_int_equal(catalog_coaccess_load(cat, now, collect_pair, &ps), 0);
		if (strcmp(ps.got, fades[i].want))
			fail_msg("fade row %zu: pairs %s, want %s", i, ps.got, fades[i].want);
	}
	catalog_close(cat);

	/* A version 3 catalog (no at_ns) gets the column; its counts are taken as of now. */
	exec_sql(db, "DROP TABLE co_access; CREATE TABLE co_access(a TEXT NOT NULL, "
		     "b TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY(a, b)) WITHOUT ROWID; "
		     "INSERT INTO co_access VALUES('m/a', 'm/b', 6); PRAGMA user_version=3;");
	assert_int_equal(catalog_open(st, &cat), 0);
	ps.len = 0;
	ps.got[0] = '\0';
	assert_int_equal(catalog_coaccess_load(cat, wd_wall_ns(), collect_pair, &ps), 0);
	assert_string_equal(ps.got, "m/a|m/b=6;");
	catalog_close(cat);

	/* A version 1 catalog (no co_access table) is migrated in place, its data kept. */
	exec_sql(db, "DROP TABLE co_access; CREATE TABLE keep(x TEXT); "
		     "INSERT INTO keep VALUES('kept'); PRAGMA user_version=1;");
	assert_int_equal(catalog_open(st, &cat), 0);
	query1(db, "PRAGMA user_version", v, sizeof(v));
	assert_int_equal(atoi(v), CATALOG_SCHEMA_VERSION);
	query1(db, "SELECT x FROM keep", v, sizeof(v));
	assert_string_equal(v, "kept");
	ps.len = 0;
	ps.got[0] = '\0';
	assert_int_equal(catalog_coaccess_load(cat, T0, collect_pair, &ps), 0);
	if (ps.len)
		fail_msg("migrated catalog: pairs %s, want none", ps.got);
	assert_int_equal(catalog_coaccess_add(cat, "m/a", "m/b", 2, T0), 0);
	assert_int_equal(catalog_coaccess_load(cat, T0, collect_pair, &ps), 0);
	assert_string_equal(ps.got, "m/a|m/b=2;");
	catalog_close(cat);
}

static int setup(void **state)
{
	(void)state;
	return td_tmpdir(tmp_root, sizeof(tmp_root), "test_catalog");
}

static int teardown(void **state)
{
	(void)state;
	return td_rmtree(tmp_root);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_open_schema),
		cmocka_unit_test(test_open_refusals),
		cmocka_unit_test(test_meta_survives),
		cmocka_unit_test(test_resolve),
		cmocka_unit_test(test_kill9_mid_scan),
		cmocka_unit_test(test_concurrent_scans),
		cmocka_unit_test(test_coaccess),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
