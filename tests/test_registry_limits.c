/*
 * What the registry cannot hold is never dropped silently, against a real build/weightd:
 *  - long tensor names (the format sets no limit): a file with 1,000-byte names, two of them
 *    equal but for the last byte, loads; every tensor is reachable by its exact name through
 *    weightd_tensor() and its bytes, through `weightctl tensor-data`, and listed whole by
 *    weightd_tensor_table() and weightd_tensor_name(); weightd_tensor_list(), whose name
 *    slots are 256 bytes, refuses rather than cut;
 *  - a full registry: a model that does not fit is not published (not half), SCAN fails with
 *    -ENOSPC naming it and counting what was left out, a later small model still gets in
 *    whole, `weightctl status` shows the capacity use, and a restart sizes the registry from
 *    the catalog so that everything is published.
 */
#include <errno.h>
#include <signal.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "weightd.h"

#include "core/format/st_write.h"
#include "tests/helpers_daemon.h"

#define CHECK(cond, ...) TD_CHECK(&daemon_, cond, __VA_ARGS__)

#define REG_TENSORS "2048"	/* the demo models take 1,399 */
#define BIG_TENSORS 1000u

static struct td_daemon daemon_;

static struct weightd *attach_ok(void)
{
	int ret;
	struct weightd *w = td_attach(&daemon_, "test_registry_limits", 0, 0, &ret);

	CHECK(ret == 0 && w, "weightd_attach(%s) = %d", daemon_.socket, ret);
	return w;
}

/* Names: 1,000 bytes ending in '1', the same ending in '2', and a short one. */
static char long1[1001], long2[1001];
static const float data1[4] = { 1, 2, 3, 4 }, data2[4] = { 5, 6, 7, 8 }, data3[2] = { 9, 10 };

static void test_long_names(void **state)
{
	const struct st_write_tensor ts[] = {
		{ .name = long1, .dtype = ST_F32, .rank = 1, .shape = { 4 }, .data = data1 },
		{ .name = long2, .dtype = ST_F32, .rank = 1, .shape = { 4 }, .data = data2 },
		{ .name = "short", .dtype = ST_F32, .rank = 1, .shape = { 2 }, .data = data3 },
	};
	const char *names[] = { long1, long2, "short" };
	const void *want[] = { data1, data2, data3 };
	struct weightd_tensor_loc locs[8];
	struct weightd_tensor_table tab;
	struct weightd_tensor_info ti, list[8];
	char path[400], ctl[300], *out, *err, *name_buf;
	static char names_blob[4096];
	struct weightd *w;
	int ret;

	(void)state;
	memset(long1, 'n', 999);
	long1[999] = '1';
	memcpy(long2, long1, 999);
	long2[999] = '2';
	snprintf(path, sizeof(path), "%s/longnames.safetensors", daemon_.models);
	CHECK(st_write_file(path, ts, 3, NULL, 0, 0) == 0, "write %s", path);
	w = attach_ok();
	ret = weightd_scan(w, daemon_.models, NULL, NULL);
	CHECK(ret >= 0, "scan: %d", ret);
	ret = weightd_load(w, "longnames", NULL, WEIGHTD_TIER_HOST, WEIGHTD_LOAD_PIN, NULL, NULL);
	CHECK(ret == 0, "load: %d", ret);
	/* C API: each by its exact name, bytes as written. */
	for (size_t i = 0; i < 3; i++) {
		const void *p;

		ret = weightd_tensor(w, "longnames", NULL, names[i], &ti);
		CHECK(ret == 0, "tensor %zu (%zu bytes): %d", i, strlen(names[i]), ret);
		p = weightd_tensor_data(w, &ti);
		CHECK(p && !memcmp(p, want[i], ti.nbytes), "tensor %zu: bytes", i);
		name_buf = malloc(2000);
		CHECK(weightd_tensor_name(w, ti.id, name_buf, 2000) == (int)strlen(names[i]) &&
		      !strcmp(name_buf, names[i]), "weightd_tensor_name %zu", i);
		CHECK(weightd_tensor_name(w, ti.id, name_buf, 10) == (i == 2 ? 5 : -ERANGE),
		      "weightd_tensor_name into 10 bytes, row %zu", i);
		free(name_buf);
	}
	/* The listing with whole names, every tensor of the file. */
	ret = weightd_tensor_table(w, "longnames", NULL, locs, 8, names_blob, sizeof(names_blob),
				   &tab);
	CHECK(ret == 0 && tab.n == 3 && tab.absent == 0, "table: %d, n %u, absent %u", ret, tab.n,
	      tab.absent);
	for (size_t i = 0; i < 3; i++) {
		const char *n = names_blob + locs[i].name_off;

		CHECK(locs[i].name_len == strlen(n) && !strcmp(n, names[i]) &&
		      !memcmp((const char *)tab.base + locs[i].offset, want[i], locs[i].nbytes),
		      "table row %zu: name of %u bytes", i, locs[i].name_len);
	}
	/* weightd_tensor_list() cannot hold them in its 256-byte slots: it says so. */
	ret = weightd_tensor_list(w, "longnames", NULL, list, names_blob, 8);
	CHECK(ret == -ENAMETOOLONG && strstr(weightd_last_error(), "weightd_tensor_name()"),
	      "tensor_list with names: %d", ret);
	CHECK(weightd_tensor_list(w, "longnames", NULL, list, NULL, 8) == 3, "list w/o names");
	/* The CLI: weightctl tensor-data by the exact long name. */
	out = calloc(1, 8192);
	err = calloc(1, 8192);
	snprintf(ctl, sizeof(ctl), "%s/weightctl", td_build_dir());
	{
		char *argv[] = { ctl, "tensor-data", "--socket", daemon_.socket, "longnames", long2, NULL };

		ret = td_run(argv, 20000, out, err, 8192);
		CHECK(ret == 0 && !memcmp(out, data2, sizeof(data2)), "weightctl tensor-data: exit %d: %s",
		      ret, err);
	}
	free(out);
	free(err);
	weightd_detach(w);
}

static int model_by_name(struct weightd *w, const char *name, struct weightd_model_info *mi)
{
	uint32_t id;
	int ret = weightd_lookup(w, name, &id);

	return ret ? ret : weightd_model(w, id, mi);
}

/* A file with @n tensors named t0..tN-1 (4 bytes each). */
static void write_many(const char *path, unsigned int n)
{
	struct st_write_tensor *ts = calloc(n, sizeof(*ts));
	char *names = calloc(n, 16);

	CHECK(ts && names, "calloc");
	for (unsigned int i = 0; i < n; i++) {
		snprintf(names + 16 * i, 16, "t%u", i);
		ts[i] = (struct st_write_tensor){ .name = names + 16 * i, .dtype = ST_F32,
						  .rank = 1, .shape = { 1 } };
	}
	CHECK(st_write_file(path, ts, n, NULL, 0, 1) == 0, "write %s", path);
	free(ts);
	free(names);
}

static void test_registry_full(void **state)
{
	struct weightd_registry_usage u;
	struct weightd_model_info mi;
	char path[400], ctl[300], out[4096], err[4096];
	char *argv[] = { ctl, "status", "--socket", daemon_.socket, NULL };
	struct weightd *w;
	int ret;

	(void)state;
	snprintf(path, sizeof(path), "%s/big.safetensors", daemon_.models);
	write_many(path, BIG_TENSORS);
	w = attach_ok();
	ret = weightd_scan(w, daemon_.models, NULL, NULL);
	CHECK(ret == -ENOSPC && strstr(weightd_last_error(), "not published") &&
	      strstr(weightd_last_error(), "model big"), "scan of a model that does not fit: %d",
	      ret);
	CHECK(model_by_name(w, "big", &mi) == -ENOENT, "big published (half?)");
	/* A later model still fits, and is published whole. */
	snprintf(path, sizeof(path), "%s/later.safetensors", daemon_.models);
	write_many(path, 3);
	ret = weightd_scan(w, daemon_.models, NULL, NULL);
	CHECK(ret == -ENOSPC, "second scan (big still left out): %d", ret);
	ret = model_by_name(w, "later", &mi);
	CHECK(ret == 0 && mi.n_tensors == 3, "later: %d, %u tensors", ret, mi.n_tensors);
	CHECK(weightd_registry_usage(w, &u) == 0 && u.tensor_cap == 2048 &&
	      u.tensors + BIG_TENSORS > u.tensor_cap, "usage %u/%u", u.tensors, u.tensor_cap);
	snprintf(ctl, sizeof(ctl), "%s/weightctl", td_build_dir());
	ret = td_run(argv, 20000, out, err, sizeof(err));
	CHECK(ret == 0 && strstr(out, "/2048 tensors"), "status: %d\n%s", ret, out);
	weightd_detach(w);
	/* A restart sizes the registry from the catalog: all of it is published. */
	td_daemon_kill(&daemon_, SIGTERM, 10000);
	CHECK(td_daemon_start(&daemon_) == 0, "restart");
	w = attach_ok();
	for (int i = 0; i < 500 && model_by_name(w, "big", &mi); i++)
		usleep(20000);
	ret = model_by_name(w, "big", &mi);
	CHECK(ret == 0 && mi.n_tensors == BIG_TENSORS, "big after a restart: %d", ret);
	weightd_detach(w);
}

static int group_setup(void **state)
{
	static const char *const extra[] = { "--registry-tensors", REG_TENSORS, NULL };

	(void)state;
	return td_group_setup(&daemon_, extra);
}

static int group_teardown(void **state)
{
	(void)state;
	td_daemon_teardown(&daemon_);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_long_names),
		cmocka_unit_test(test_registry_full),
	};

	if (!td_have_daemon())
		return 77;
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
