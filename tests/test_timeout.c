/*
 * The request timeout (include/weightd.h, request_timeout_ms): a daemon stopped with SIGSTOP
 * makes a blocking call return -ETIMEDOUT with "not responding" after about the timeout, and
 * the handle works again once the daemon continues; a long load that reports progress,
 * spread over many stops each shorter than the timeout, completes; $WEIGHTD_REQUEST_TIMEOUT_MS
 * sets it when the attach options leave it 0; `weightctl status` of a stopped daemon says
 * "not responding" and exits 1.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "weightd.h"

#include "tests/helpers_daemon.h"

#define CHECK(cond, ...) TD_CHECK(&daemon_, cond, __VA_ARGS__)

#define TIMEOUT_MS 2000u
#define BIG_MODEL_SIZE "64M"

static struct td_daemon daemon_;

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* SIGSTOP is asynchronous: waits until every thread of @pid is stopped (state T). */
static void stop_daemon(pid_t pid)
{
	const struct timespec nap = { .tv_nsec = 1000000 };

	kill(pid, SIGSTOP);
	for (int i = 0; i < 2000; i++) {
		char path[64], buf[512];
		FILE *f;
		char *p;

		snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
		f = fopen(path, "r");
		if (!f)
			return;
		p = fgets(buf, sizeof(buf), f) ? strrchr(buf, ')') : NULL;
		fclose(f);
		if (p && (p[2] == 'T' || p[2] == 't'))
			return;
		nanosleep(&nap, NULL);
	}
}

static struct weightd *attach_with(uint32_t timeout_ms)
{
	int ret;
	struct weightd *w = td_attach(&daemon_, "test_timeout", 0, timeout_ms, &ret);

	CHECK(ret == 0 && w, "weightd_attach(%s) = %d", daemon_.socket, ret);
	return w;
}

/* A stopped daemon: -ETIMEDOUT after about the timeout (from the option or the environment). */
static void test_stopped_daemon(void **state)
{
	static const struct {
		const char *what;
		uint32_t opt_ms;	/* attach option */
		const char *env;	/* $WEIGHTD_REQUEST_TIMEOUT_MS, NULL: unset */
		double want_s;
	} rows[] = {
		{ "option", TIMEOUT_MS, NULL, TIMEOUT_MS / 1000.0 },
		{ "environment", 0, "1500", 1.5 },
		{ "option over environment", 1000, "60000", 1.0 },
	};
	struct weightd_stats st;

	(void)state;
	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		struct weightd *w;
		double t0, took;
		int ret;

		if (rows[i].env)
			setenv(WEIGHTD_REQUEST_TIMEOUT_ENV, rows[i].env, 1);
		else
			unsetenv(WEIGHTD_REQUEST_TIMEOUT_ENV);
		w = attach_with(rows[i].opt_ms);
		CHECK(weightd_stats(w, &st) == 0, "%s: stats before the stop", rows[i].what);
		stop_daemon(daemon_.pid);
		t0 = now_s();
		ret = weightd_stats(w, &st);
		took = now_s() - t0;
		kill(daemon_.pid, SIGCONT);
		CHECK(ret == -ETIMEDOUT && strstr(weightd_last_error(), "not responding"),
		      "%s: stats of a stopped daemon: %d", rows[i].what, ret);
		CHECK(took >= rows[i].want_s * 0.9 && took <= rows[i].want_s + 1.5,
		      "%s: timed out after %.2f s, want about %.2f s", rows[i].what, took,
		      rows[i].want_s);
		/* Not sticky: the daemon continued, the handle serves again. */
		ret = weightd_stats(w, &st);
		CHECK(ret == 0, "%s: stats after SIGCONT: %d", rows[i].what, ret);
		weightd_detach(w);
	}
	unsetenv(WEIGHTD_REQUEST_TIMEOUT_ENV);
}

struct stopper {
	pid_t pid;
	atomic_bool stop;
	unsigned int cycles;
};

/* Stops the daemon for 1 s (half the timeout), lets it run 10 ms, again and again. */
static void *stop_go(void *arg)
{
	struct stopper *s = arg;
	const struct timespec stopped = { .tv_sec = 1 }, running = { .tv_nsec = 10 * 1000000 };

	while (!atomic_load(&s->stop)) {
		kill(s->pid, SIGSTOP);
		nanosleep(&stopped, NULL);
		kill(s->pid, SIGCONT);
		s->cycles++;
		nanosleep(&running, NULL);
	}
	return NULL;
}

static void on_progress(uint64_t done, uint64_t total, void *arg)
{
	unsigned int *calls = arg;

	(void)done;
	(void)total;
	(*calls)++;
}

/* A load that lasts several timeouts, with progress: never -ETIMEDOUT. */
static void test_long_load_with_progress(void **state)
{
	char dir[400], cmd[600];
	struct stopper s = { .pid = daemon_.pid };
	struct weightd *w;
	unsigned int calls = 0;
	pthread_t t;
	double t0, took;
	int ret;

	(void)state;
	snprintf(dir, sizeof(dir), "%s/big", daemon_.models);
	snprintf(cmd, sizeof(cmd), "'%s/weightctl' gen --preset llama --size " BIG_MODEL_SIZE
		 " --shards 4 '%s' >/dev/null", td_build_dir(), dir);
	CHECK(system(cmd) == 0, "%s", cmd);
	w = attach_with(TIMEOUT_MS);
	ret = weightd_scan(w, daemon_.models, NULL, NULL);
	CHECK(ret >= 0, "scan: %d", ret);
	CHECK(pthread_create(&t, NULL, stop_go, &s) == 0, "pthread_create");
	t0 = now_s();
	ret = weightd_load(w, "big", NULL, WEIGHTD_TIER_HOST, 0, on_progress, &calls);
	took = now_s() - t0;
	atomic_store(&s.stop, true);
	pthread_join(t, NULL);
	kill(daemon_.pid, SIGCONT);
	CHECK(ret == 0, "load under stops: %d after %.2f s, %u stop cycles", ret, took, s.cycles);
	CHECK(took > TIMEOUT_MS / 1000.0, "the load took %.2f s, not longer than the timeout: "
	      "the case did not happen (a faster machine needs a bigger model)", took);
	CHECK(calls >= 2, "%u progress calls", calls);
	print_message("long load: %.2f s over %u stops of 1 s, timeout %u ms, %u progress calls\n",
		      took, s.cycles, TIMEOUT_MS, calls);
	weightd_detach(w);
}

/* weightctl status of a stopped daemon: "not responding", exit 1. */
static void test_status_not_responding(void **state)
{
	char ctl[300], out[4096], err[4096];
	char *argv[] = { ctl, "status", "--socket", daemon_.socket, NULL };
	double t0, took;
	int rc;

	(void)state;
	snprintf(ctl, sizeof(ctl), "%s/weightctl", td_build_dir());
	setenv(WEIGHTD_REQUEST_TIMEOUT_ENV, "1000", 1);
	stop_daemon(daemon_.pid);
	t0 = now_s();
	rc = td_run(argv, 20000, out, err, sizeof(err));
	took = now_s() - t0;
	kill(daemon_.pid, SIGCONT);
	unsetenv(WEIGHTD_REQUEST_TIMEOUT_ENV);
	CHECK(rc == 1 && strstr(err, "not responding"), "status: exit %d after %.2f s, stderr: %s",
	      rc, took, err);
	CHECK(took < 5.0, "status took %.2f s with a 1 s timeout", took);
	rc = td_run(argv, 20000, out, err, sizeof(err));
	CHECK(rc == 0, "status after SIGCONT: exit %d, %s", rc, err);
}

static int group_setup(void **state)
{
	static const char *const extra[] = { "--host-budget", "1G", NULL };

	(void)state;
	return td_group_setup(&daemon_, extra);
}

static int group_teardown(void **state)
{
	(void)state;
	if (daemon_.pid)
		kill(daemon_.pid, SIGCONT);
	td_daemon_teardown(&daemon_);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_stopped_daemon),
		cmocka_unit_test(test_long_load_with_progress),
		cmocka_unit_test(test_status_not_responding),
	};

	if (!td_have_daemon())
		return 77;
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
