/* A real weightd child process for tests; see tests/helpers_daemon.h. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "weightd.h"

#include "core/base/common.h"
#include "core/format/gen.h"
#include "tests/helpers_daemon.h"

const char *td_build_dir(void)
{
	static char dir[PATH_MAX];
	const char *env = getenv("WD_BUILD");
	ssize_t n;
	char *slash;

	if (env && *env)
		return env;
	if (dir[0])
		return dir;
	/* This program is BUILD/tests/NAME (or BUILD/bench/NAME): go up two levels. */
	n = readlink("/proc/self/exe", dir, sizeof(dir) - 1);
	if (n <= 0)
		return "build";
	dir[n] = '\0';
	for (int i = 0; i < 2 && (slash = strrchr(dir, '/')); i++)
		*slash = '\0';
	return dir;
}

bool td_have_daemon(void)
{
	char path[PATH_MAX];

	snprintf(path, sizeof(path), "%s/weightd", td_build_dir());
	if (access(path, X_OK) == 0)
		return true;
	printf("SKIP: no daemon binary at %s (build it with make)\n", path);
	return false;
}

static void msleep(int ms)
{
	struct timespec ts = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000 };

	nanosleep(&ts, NULL);
}

void td_daemon_dump_log(const struct td_daemon *d)
{
	char line[512];
	long lines = 0, skip;
	FILE *f = d ? fopen(d->log, "r") : NULL;

	if (!f)
		return;
	while (fgets(line, sizeof(line), f))
		lines++;
	rewind(f);
	skip = lines > 40 ? lines - 40 : 0;
	fprintf(stderr, "---- last lines of %s ----\n", d->log);
	for (long i = 0; fgets(line, sizeof(line), f); i++)
		if (i >= skip)
			fputs(line, stderr);
	fprintf(stderr, "---- end of daemon log ----\n");
	fclose(f);
}

int td_daemon_start(struct td_daemon *d)
{
	char bin[PATH_MAX];
	uint64_t deadline = wd_now_ns() + 10ull * 1000 * 1000 * 1000;
	int status;

	snprintf(bin, sizeof(bin), "%s/weightd", td_build_dir());
	d->pid = fork();
	if (d->pid < 0)
		return -errno;
	if (d->pid == 0) {
		int fd = open(d->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);

		if (fd >= 0) {
			dup2(fd, STDERR_FILENO);
			dup2(fd, STDOUT_FILENO);
		}
		const char *argv[20] = { bin, "--foreground", "--socket", d->socket, "--state-dir",
					 d->state_dir, "--models", d->models };
		size_t n = 8;

		for (size_t i = 0; i < ARRAY_SIZE(d->extra) && d->extra[i]; i++)
			argv[n++] = d->extra[i];
		argv[n] = NULL;
		execv(bin, (char *const *)argv);
		_exit(127);
	}
	for (;;) {
		struct weightd_attach_opts o = { .attach_timeout_ms = 2000 };
		struct weightd *w;
		int ret = weightd_attach(d->socket, &o, &w);

		if (ret == 0) {
			/* The daemon scans its roots after it starts listening: wait for it. */
			struct weightd_model_info mi;

			while (weightd_model(w, TD_DEMO_MODELS - 1, &mi) && wd_now_ns() < deadline)
				usleep(2000);
			ret = weightd_model(w, TD_DEMO_MODELS - 1, &mi);
			weightd_detach(w);
			if (ret) {
				fprintf(stderr, "weightd published fewer than %d models in 10 s\n",
					TD_DEMO_MODELS);
				td_daemon_dump_log(d);
				return -ETIMEDOUT;
			}
			return 0;
		}
		if (waitpid(d->pid, &status, WNOHANG) == d->pid) {
			fprintf(stderr, "weightd exited during start-up (status %#x)\n", status);
			d->pid = 0;
			td_daemon_dump_log(d);
			return -ECHILD;
		}
		if (wd_now_ns() > deadline) {
			fprintf(stderr, "weightd did not accept clients within 10 s: %s\n",
				weightd_last_error());
			td_daemon_dump_log(d);
			return -ETIMEDOUT;
		}
		msleep(10);
	}
}

int td_daemon_setup(struct td_daemon *d)
{
	return td_daemon_setup_args(d, NULL);
}

int td_daemon_setup_args(struct td_daemon *d, const char *const *extra)
{
	const char *tmp = getenv("TMPDIR");
	struct gen_options go = { .size = 1u << 20 };
	int ret;

	memset(d, 0, sizeof(*d));
	for (size_t i = 0; extra && extra[i] && i + 1 < ARRAY_SIZE(d->extra); i++)
		d->extra[i] = extra[i];
	snprintf(d->root, sizeof(d->root), "%s/wdtest.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(d->root))
		return -errno;
	snprintf(d->socket, sizeof(d->socket), "%s/sock", d->root);
	snprintf(d->state_dir, sizeof(d->state_dir), "%s/state", d->root);
	snprintf(d->models, sizeof(d->models), "%s/models", d->root);
	snprintf(d->log, sizeof(d->log), "%s/weightd.log", d->root);
	if (strlen(d->socket) + 1 >= sizeof(d->socket))
		return -ENAMETOOLONG;
	ret = gen_preset("demo", d->models, &go);
	if (ret)
		return ret;
	return td_daemon_start(d);
}

int td_group_setup(struct td_daemon *d, const char *const *extra)
{
	int ret = td_daemon_setup_args(d, extra);

	if (ret)
		fprintf(stderr, "cannot start weightd: %s\n", strerror(-ret));
	return ret ? -1 : 0;
}

struct weightd *td_attach(const struct td_daemon *d, const char *name, uint32_t spin_us,
			  uint32_t request_timeout_ms, int *err)
{
	struct weightd_attach_opts o = { .spin_us = spin_us, .client_name = name,
					 .request_timeout_ms = request_timeout_ms };
	struct weightd *w = NULL;

	*err = weightd_attach(d->socket, &o, &w);
	return *err ? NULL : w;
}

int td_daemon_kill(struct td_daemon *d, int sig, int timeout_ms)
{
	uint64_t deadline = wd_now_ns() + (uint64_t)timeout_ms * 1000000;
	int status;

	if (d->pid <= 0)
		return -1;
	kill(d->pid, sig);
	for (;;) {
		pid_t r = waitpid(d->pid, &status, WNOHANG);

		if (r == d->pid || (r < 0 && errno == ECHILD))
			break;
		if (wd_now_ns() > deadline) {
			fprintf(stderr, "weightd (pid %d) alive %d ms after signal %d; killing\n",
				(int)d->pid, timeout_ms, sig);
			td_daemon_dump_log(d);
			kill(d->pid, SIGKILL);
			waitpid(d->pid, &status, 0);
			break;
		}
		msleep(2);
	}
	d->pid = 0;
	return status;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

void td_daemon_teardown(struct td_daemon *d)
{
	if (d->pid > 0)
		td_daemon_kill(d, SIGTERM, 5000);
	if (d->root[0])
		nftw(d->root, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	d->root[0] = '\0';
}

/* Reads what is available on @fd into @buf (at @*len of @size - 1). */
static void drain(int fd, char *buf, size_t *len, size_t size, bool *open_)
{
	ssize_t n;

	if (*len + 1 >= size) {
		char sink[256];

		n = read(fd, sink, sizeof(sink));
	} else {
		n = read(fd, buf + *len, size - 1 - *len);
		if (n > 0)
			*len += (size_t)n;
	}
	if (n <= 0 && !(n < 0 && errno == EINTR))
		*open_ = false;
}

int td_run(char *const argv[], int timeout_ms, char *out, char *err, size_t size)
{
	uint64_t deadline = wd_now_ns() + (uint64_t)timeout_ms * 1000000;
	int po[2], pe[2], status;
	size_t lo = 0, le = 0;
	bool oo = true, eo = true;
	pid_t pid;

	if (pipe2(po, O_CLOEXEC) || pipe2(pe, O_CLOEXEC))
		return -1;
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		dup2(po[1], STDOUT_FILENO);
		dup2(pe[1], STDERR_FILENO);
		execv(argv[0], argv);
		_exit(127);
	}
	close(po[1]);
	close(pe[1]);
	while (oo || eo) {
		struct pollfd p[2] = { { .fd = oo ? po[0] : -1, .events = POLLIN },
				       { .fd = eo ? pe[0] : -1, .events = POLLIN } };
		int64_t left = (int64_t)(deadline - wd_now_ns()) / 1000000;

		if (left <= 0) {
			kill(pid, SIGKILL);
			break;
		}
		if (poll(p, 2, (int)left) < 0 && errno != EINTR)
			break;
		if (p[0].revents)
			drain(po[0], out, &lo, size, &oo);
		if (p[1].revents)
			drain(pe[0], err, &le, size, &eo);
	}
	out[lo] = '\0';
	err[le] = '\0';
	close(po[0]);
	close(pe[0]);
	if (waitpid(pid, &status, 0) != pid)
		return -1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
