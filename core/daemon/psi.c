/* Memory pressure (PSI) monitor (core/daemon/psi.h). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/timerfd.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "core/daemon/psi.h"

#ifndef PROC_SUPER_MAGIC
#define PROC_SUPER_MAGIC 0x9fa0
#endif

struct psi {
	char *path;
	int read_fd;		/* the file, read with pread at offset 0 */
	int event_fd;		/* the trigger descriptor, or a timerfd */
	bool trigger;
	uint32_t some_pct;
};

int psi_parse(const char *text, double *some_avg10)
{
	const char *line = text;

	/* The "some" line comes first in the kernel's file; accept it anywhere. */
	while (line && *line) {
		if (!strncmp(line, "some ", 5)) {
			const char *a = strstr(line, "avg10=");
			const char *eol = strchr(line, '\n');
			char *end;
			double v;

			if (!a || (eol && a > eol))
				return -EBADMSG;
			errno = 0;
			v = strtod(a + 6, &end);
			if (errno || end == a + 6 || v < 0 || v > 100 ||
			    (*end && *end != ' ' && *end != '\n'))
				return -EBADMSG;
			*some_avg10 = v;
			return 0;
		}
		line = strchr(line, '\n');
		if (line)
			line++;
	}
	return -EBADMSG;
}

static int read_avg10(struct psi *p, double *avg10)
{
	char buf[512];
	ssize_t n;
	int fd = p->read_fd;

	/* Polling reopens the path, so that a file replaced by rename (a test's) is seen. */
	if (!p->trigger && p->event_fd >= 0 && (fd = open(p->path, O_RDONLY | O_CLOEXEC)) < 0)
		return -errno;
	n = pread(fd, buf, sizeof(buf) - 1, 0);
	if (n < 0)
		n = -errno;
	if (fd != p->read_fd)
		close(fd);
	if (n < 0)
		return (int)n;
	buf[n] = '\0';
	return psi_parse(buf, avg10);
}

/* A kernel trigger on a procfs PSI file; false when the kernel or the file refuses it. */
static bool try_trigger(struct psi *p)
{
	struct statfs sf;
	char t[64];
	int fd;

	if (fstatfs(p->read_fd, &sf) < 0 || sf.f_type != PROC_SUPER_MAGIC)
		return false;
	fd = open(p->path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return false;
	snprintf(t, sizeof(t), "some %u %u", p->some_pct * (PSI_TRIGGER_WINDOW_US / 100),
		 PSI_TRIGGER_WINDOW_US);
	/* The trigger string is written with its NUL, as the kernel documentation does. */
	if (write(fd, t, strlen(t) + 1) < 0) {
		close(fd);
		return false;
	}
	p->event_fd = fd;
	p->trigger = true;
	return true;
}

int psi_open(const struct psi_options *opt, struct psi **out)
{
	const char *env = getenv(PSI_PATH_ENV);
	const char *path = env && *env ? env : opt->path ? opt->path : PSI_DEFAULT_PATH;
	uint32_t ms = opt->interval_ms ? opt->interval_ms : PSI_DEFAULT_INTERVAL_MS;
	struct psi *p;
	double avg10;
	int ret;

	*out = NULL;
	if (!opt->some_pct || opt->some_pct > 100)
		return -EINVAL;
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->event_fd = -1;
	p->some_pct = opt->some_pct;
	p->path = strdup(path);
	p->read_fd = open(path, O_RDONLY | O_CLOEXEC);
	if (!p->path || p->read_fd < 0) {
		ret = p->path ? -errno : -ENOMEM;
		goto fail;
	}
	ret = read_avg10(p, &avg10);
	if (ret)
		goto fail;
	if (!try_trigger(p)) {
		struct itimerspec its = {
			.it_interval = { .tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000 },
		};

		its.it_value = its.it_interval;
		p->event_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
		if (p->event_fd < 0 || timerfd_settime(p->event_fd, 0, &its, NULL) < 0) {
			ret = -errno;
			goto fail;
		}
	}
	*out = p;
	return 0;
fail:
	psi_close(p);
	return ret;
}

void psi_close(struct psi *p)
{
	if (!p)
		return;
	if (p->read_fd >= 0)
		close(p->read_fd);
	if (p->event_fd >= 0)
		close(p->event_fd);
	free(p->path);
	free(p);
}

int psi_fd(const struct psi *p)
{
	return p->event_fd;
}

uint32_t psi_events(const struct psi *p)
{
	return p->trigger ? EPOLLPRI : EPOLLIN;
}

bool psi_triggered(const struct psi *p)
{
	return p->trigger;
}

const char *psi_path(const struct psi *p)
{
	return p->path;
}

int psi_poll(struct psi *p, double *avg10)
{
	int ret;

	if (!p->trigger) {
		uint64_t ticks;

		/* A timerfd read fails with EAGAIN when it has not expired: nothing to do. */
		if (read(p->event_fd, &ticks, sizeof(ticks)) != sizeof(ticks))
			return errno == EAGAIN ? 0 : -errno;
	}
	ret = read_avg10(p, avg10);
	if (ret)
		return ret;
	/* A trigger fired: the kernel measured the stall; avg10 may still lag behind it. */
	return p->trigger || *avg10 >= (double)p->some_pct ? 1 : 0;
}
