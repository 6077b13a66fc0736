/*
 * Test helper: runs a real build/weightd as a child process with its own temporary socket,
 * state directory and generated model set, for the tests that talk to the daemon
 * (tests/test_client.c, test_stress.c, test_timeout.c, test_registry_limits.c, ...), with
 * the pieces those tests share: their group fixture, an attach, and a CHECK that prints the
 * daemon's log.
 *
 * The binaries come from $WD_BUILD (set by tests/run.sh to build/ or build-san/), or from
 * the build directory this test program lives in.
 */
#ifndef WD_TESTS_HELPERS_DAEMON_H
#define WD_TESTS_HELPERS_DAEMON_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* Models in the demo preset (sd-tiny, llama-tiny, vae-tiny). */
#define TD_DEMO_MODELS 3

struct td_daemon {
	pid_t pid;		/* 0 when not running */
	char root[96];		/* temporary directory holding everything below */
	char socket[108];
	char state_dir[300];
	char models[300];	/* the "demo" preset: sd-tiny, llama-tiny, vae-tiny */
	char log[300];		/* the daemon's stderr, appended across restarts */
	const char *extra[8];	/* more daemon options (NULL-terminated), e.g. --host-budget */
};

/* The build directory holding weightd and weightctl (no trailing slash). */
const char *td_build_dir(void);

/* True when the daemon binary exists; otherwise prints "SKIP: ..." with the reason. */
bool td_have_daemon(void);

/*
 * Creates a temporary root under $TMPDIR, generates the demo models into it and starts the
 * daemon. Returns 0 once a client can attach and the registry lists the demo models (within
 * 10 s), or a negative errno; on failure it prints the daemon's log.
 */
int td_daemon_setup(struct td_daemon *d);

/* td_daemon_setup() with extra daemon options @extra (NULL-terminated, at most 7). */
int td_daemon_setup_args(struct td_daemon *d, const char *const *extra);

/* Starts the daemon again with the same socket, state and models (after a kill). */
int td_daemon_start(struct td_daemon *d);

/*
 * Sends @sig to the daemon and reaps it, waiting at most @timeout_ms (then SIGKILL).
 * Returns the wait status, or -1 when it was not running.
 */
int td_daemon_kill(struct td_daemon *d, int sig, int timeout_ms);

/* Stops the daemon (SIGTERM, then SIGKILL) and removes the temporary root. */
void td_daemon_teardown(struct td_daemon *d);

/* Prints the last lines of the daemon's log on stderr (for failure messages); NULL: nothing. */
void td_daemon_dump_log(const struct td_daemon *d);

/*
 * The cmocka group setup of a test that talks to one daemon: td_daemon_setup_args() with
 * @extra (NULL: none), saying on stderr why the daemon could not start. Returns 0, or -1 (a
 * failed setup, for cmocka).
 */
int td_group_setup(struct td_daemon *d, const char *const *extra);

struct weightd;

/*
 * Attaches to @d's socket as client @name with @spin_us and @request_timeout_ms (0: the
 * library's defaults). Returns the handle, or NULL with weightd_attach()'s error in *@err
 * (0 on success).
 */
struct weightd *td_attach(const struct td_daemon *d, const char *name, uint32_t spin_us,
			  uint32_t request_timeout_ms, int *err);

/*
 * The CHECK of the cmocka tests that talk to a daemon (include <cmocka.h> and "weightd.h"
 * first): when @cond is false, prints where, the condition, the message (printf-style),
 * libweightd's last error and the last lines of daemon @d's log (NULL: none), then fails
 * the test.
 */
#define TD_CHECK(d, cond, ...)                                                             \
	do {                                                                               \
		if (!(cond)) {                                                             \
			print_error("%s:%d: check failed: %s\n  ", __FILE__, __LINE__, #cond); \
			print_error(__VA_ARGS__);                                          \
			print_error("\n  last error: %s\n", weightd_last_error());         \
			td_daemon_dump_log(d);                                             \
			fail();                                                            \
		}                                                                          \
	} while (0)

/*
 * Runs a command with a timeout, capturing stdout and stderr (each up to @size - 1 bytes,
 * NUL-terminated). @argv[0] is a path. Returns the exit status (0..255), 128 + signal, or -1.
 */
int td_run(char *const argv[], int timeout_ms, char *out, char *err, size_t size);

#endif
