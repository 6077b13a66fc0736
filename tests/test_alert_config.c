/*
 * The alert_* keys of the configuration file (core/daemon/config.c, core/daemon/alert.h): the defaults, one
 * row per accepted value (checked against the field it sets) and one per refused value
 * (checked for the key named in the message). The alerts themselves run against a real
 * daemon in tests/test_alert.sh.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "core/daemon/alert.h"
#include "core/base/common.h"
#include "core/daemon/config.h"

static char dir[256];

enum field { F_BUDGET, F_SLOW, F_HISTORY, F_ERRORS, F_WINDOW, F_TTL, F_INTERVAL };

static uint64_t field(const struct alert_config *a, enum field f)
{
	switch (f) {
	case F_BUDGET: return a->budget_pct;
	case F_SLOW: return a->slow_load_pct;
	case F_HISTORY: return a->slow_load_history;
	case F_ERRORS: return a->error_count;
	case F_WINDOW: return a->error_window_ns;
	case F_TTL: return a->pin_ttl_ns;
	default: return a->interval_ns;
	}
}

/* Writes @line to a file and loads it onto defaults; returns config_load()'s result. */
static int load_line(const char *line, struct daemon_config *cfg, char *err, size_t errlen)
{
	struct config_file cf = { 0 };
	char path[320];
	FILE *f;
	int ret;

	snprintf(path, sizeof(path), "%s/alert.conf", dir);
	f = fopen(path, "w");
	assert_non_null(f);
	fprintf(f, "%s\n", line);
	fclose(f);
	daemon_config_init(cfg);
	ret = config_load(path, cfg, &cf, err, errlen);
	config_file_free(&cf);
	unlink(path);
	return ret;
}

static void test_defaults(void **state)
{
	struct daemon_config cfg;

	(void)state;
	daemon_config_init(&cfg);
	assert_int_equal(cfg.alerts.budget_pct, 90);
	assert_int_equal(cfg.alerts.slow_load_pct, 25);
	assert_int_equal(cfg.alerts.slow_load_history, 10);
	assert_int_equal(cfg.alerts.slow_load_min, 3);
	assert_int_equal(cfg.alerts.error_count, 50);
	assert_true(cfg.alerts.error_window_ns == 60ull * 1000000000);
	assert_true(cfg.alerts.pin_ttl_ns == 3600ull * 1000000000);
	assert_true(cfg.alerts.interval_ns == 1000000000ull);
}

static void test_values(void **state)
{
	static const struct {
		const char *line;
		int ret;
		enum field f;
		uint64_t want;
	} rows[] = {
		{ "alert_budget_pct = 75", 0, F_BUDGET, 75 },
		{ "alert_budget_pct = 0", 0, F_BUDGET, 0 },
		{ "alert_budget_pct = 100", 0, F_BUDGET, 100 },
		{ "alert_budget_pct = 101", -EINVAL, F_BUDGET, 90 },
		{ "alert_budget_pct = 50%", -EINVAL, F_BUDGET, 90 },
		{ "alert_slow_load_pct = 10", 0, F_SLOW, 10 },
		{ "alert_slow_load_pct = -1", -EINVAL, F_SLOW, 25 },
		{ "alert_slow_load_history = 1", 0, F_HISTORY, 1 },
		{ "alert_slow_load_history = 1000", 0, F_HISTORY, 1000 },
		{ "alert_slow_load_history = 0", -EINVAL, F_HISTORY, 10 },
		{ "alert_slow_load_history = 1001", -EINVAL, F_HISTORY, 10 },
		{ "alert_error_count = 0", 0, F_ERRORS, 0 },
		{ "alert_error_count = 4294967295", 0, F_ERRORS, 4294967295u },
		{ "alert_error_count = 4294967296", -EINVAL, F_ERRORS, 50 },
		{ "alert_error_window = 10s", 0, F_WINDOW, 10000000000ull },
		{ "alert_error_window = 0", -EINVAL, F_WINDOW, 60000000000ull },
		{ "alert_pin_ttl = 1s", 0, F_TTL, 1000000000ull },
		{ "alert_pin_ttl = 0", 0, F_TTL, 0 },
		{ "alert_pin_ttl = 2h", 0, F_TTL, 7200000000000ull },
		{ "alert_pin_ttl = soon", -EINVAL, F_TTL, 3600000000000ull },
		{ "alert_interval = 100ms", 0, F_INTERVAL, 100000000ull },
		{ "alert_interval = 10ms", 0, F_INTERVAL, 10000000ull },
		{ "alert_interval = 5ms", -EINVAL, F_INTERVAL, 1000000000ull },
	};
	int failures = 0;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		struct daemon_config cfg;
		char err[256] = "";
		char key[64];
		int ret = load_line(rows[i].line, &cfg, err, sizeof(err));
		uint64_t got = field(&cfg.alerts, rows[i].f);

		sscanf(rows[i].line, "%63s", key);
		/* On failure nothing is applied: the field keeps its default (rows[].want). */
		if (ret != rows[i].ret || got != rows[i].want ||
		    (ret && !strstr(err, key))) {
			print_error("'%s': ret %d (want %d), field %llu (want %llu), err \"%s\"\n",
				    rows[i].line, ret, rows[i].ret, (unsigned long long)got,
				    (unsigned long long)rows[i].want, err);
			failures++;
		}
	}
	assert_int_equal(failures, 0);
}

static int setup(void **state)
{
	const char *tmp = getenv("TMPDIR");

	(void)state;
	snprintf(dir, sizeof(dir), "%s/test_alert_config.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	return rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_values),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
