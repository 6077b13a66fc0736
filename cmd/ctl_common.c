/* Helpers shared by weightctl's verbs: state directory, errors, progress. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cmd/ctl.h"
#include "core/common.h"
#include "core/statedir.h"

const char *ctl_state_dir(struct ctl *c)
{
	int rc;

	if (c->state_dir[0])
		return c->state_dir;
	rc = statedir_resolve(c->state_dir_opt, c->state_dir, sizeof(c->state_dir));
	if (rc < 0) {
		fprintf(stderr, "weightctl: cannot use state directory %s: %s\n",
			c->state_dir[0] ? c->state_dir : "(unset)", strerror(-rc));
		c->state_dir[0] = '\0';
		return NULL;
	}
	return c->state_dir;
}

void ctl_err(const char *verb, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "weightctl %s: ", verb);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

const char *ctl_human_bytes(uint64_t bytes, char *buf, size_t size)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB", "PiB" };
	double v = (double)bytes;
	size_t u = 0;

	while (v >= 1024 && u + 1 < ARRAY_SIZE(units)) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, size, "%llu B", (unsigned long long)bytes);
	else
		snprintf(buf, size, "%.2f %s", v, units[u]);
	return buf;
}

void ctl_progress_begin(struct ctl_progress *p, const char *label, bool unit_bytes)
{
	const char *force = getenv("WEIGHTD_PROGRESS");

	p->label = label;
	p->unit_bytes = unit_bytes;
	p->enabled = isatty(STDERR_FILENO) || (force && !strcmp(force, "1"));
	p->start_ns = wd_now_ns();
	p->last_ns = 0;
}

static void draw(struct ctl_progress *p, uint64_t done, uint64_t total, bool final)
{
	double secs = (double)(wd_now_ns() - p->start_ns) / 1e9;
	double rate = secs > 0 ? (double)done / secs : 0;
	char d[32], t[32], eta[32] = "--";

	if (rate > 0 && total > done && !final)
		snprintf(eta, sizeof(eta), "%.0fs", (double)(total - done) / rate);
	else if (final)
		snprintf(eta, sizeof(eta), "%.2fs", secs);
	if (p->unit_bytes) {
		ctl_human_bytes(done, d, sizeof(d));
		ctl_human_bytes(total, t, sizeof(t));
		fprintf(stderr, "\r%s  %s / %s  %.2f GB/s  %s %s\033[K", p->label, d, t,
			rate / 1e9, final ? "in" : "ETA", eta);
	} else {
		fprintf(stderr, "\r%s  %llu / %llu  %.0f/s  %s %s\033[K", p->label,
			(unsigned long long)done, (unsigned long long)total, rate,
			final ? "in" : "ETA", eta);
	}
	if (final)
		fputc('\n', stderr);
}

void ctl_progress_update(struct ctl_progress *p, uint64_t done, uint64_t total)
{
	uint64_t now = wd_now_ns();

	if (!p->enabled || now - p->last_ns < 100000000u)
		return;
	p->last_ns = now;
	draw(p, done, total, false);
}

void ctl_progress_end(struct ctl_progress *p, uint64_t done, uint64_t total)
{
	if (p->enabled)
		draw(p, done, total, true);
}
