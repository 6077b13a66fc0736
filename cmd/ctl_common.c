/* Helpers shared by every weightctl verb: state directory, catalog choice, errors, JSON
 * output, progress. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <limits.h>

#include "weightd.h"

#include "cmd/ctl.h"
#include "core/catalog/catalog.h"
#include "core/base/log.h"
#include "core/base/common.h"
#include "core/base/statedir.h"
#include "shm/attach.h"

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

static const char *const source_names[] = {
	[CTL_CAT_NONE] = "none", [CTL_CAT_OPTION] = "option", [CTL_CAT_DAEMON] = "daemon",
	[CTL_CAT_STATE_DIR] = "state_dir",
};

const char *ctl_catalog_dir(struct ctl *c, const char *verb, const char *socket, bool quiet)
{
	struct weightd_attach_opts ao = { .spin_us = 0, .client_name = "weightctl",
					  .attach_timeout_ms = 2000 };
	struct weightd_daemon_info di;
	const char *dir;
	char db[PATH_MAX + 16];
	int ret;

	if (c->cat_source != CTL_CAT_NONE)
		return c->cat_dir;
	if (attach_resolve_path(socket, c->cat_socket, sizeof(c->cat_socket)))
		snprintf(c->cat_socket, sizeof(c->cat_socket), "%s", socket ? socket : "(default)");
	if (c->state_dir_opt) {
		if (!(dir = ctl_state_dir(c)))
			return NULL;
		c->cat_source = CTL_CAT_OPTION;
		snprintf(c->cat_dir, sizeof(c->cat_dir), "%s", dir);
		if (!quiet)
			fprintf(stderr, "catalog: %s/%s (--state-dir)\n", dir, CATALOG_FILE);
		return c->cat_dir;
	}
	ret = weightd_attach(socket, &ao, &c->w);
	if (ret == -ENOENT || ret == -ECONNREFUSED) {
		if (!(dir = ctl_state_dir(c)))
			return NULL;
		c->cat_source = CTL_CAT_STATE_DIR;
		snprintf(c->cat_dir, sizeof(c->cat_dir), "%s", dir);
		if (!quiet)
			fprintf(stderr, "catalog: %s/%s (the state directory: no daemon answers at "
				"%s)\n", dir, CATALOG_FILE, c->cat_socket);
		return c->cat_dir;
	}
	if (ret) {
		ctl_err(verb, "the daemon at %s answers but cannot be used (%s): its catalog is the "
			"one to show; name another with --state-dir", c->cat_socket,
			weightd_last_error());
		return NULL;
	}
	ret = weightd_daemon_info(c->w, &di);
	if (ret) {
		ctl_err(verb, "the daemon at %s does not say where its catalog is (%s); name it "
			"with --state-dir", c->cat_socket, weightd_last_error());
		return NULL;
	}
	c->cat_pid = weightd_daemon_pid(c->w);
	snprintf(db, sizeof(db), "%s/%s", di.state_dir, CATALOG_FILE);
	/* The catalog is opened read-write (SQLite's WAL needs its -shm file writable). */
	if (access(di.state_dir, X_OK) || access(db, R_OK | W_OK)) {
		ctl_err(verb, "the daemon at %s (pid %d) keeps its catalog in %s, which this user "
			"cannot open (%s): run weightctl as the daemon's user or root, or name a "
			"catalog of your own with --state-dir", c->cat_socket, c->cat_pid, db,
			strerror(errno));
		return NULL;
	}
	c->cat_source = CTL_CAT_DAEMON;
	snprintf(c->cat_dir, sizeof(c->cat_dir), "%s", di.state_dir);
	if (!quiet)
		fprintf(stderr, "catalog: %s (the daemon's, pid %d, at %s)\n", db, c->cat_pid,
			c->cat_socket);
	return c->cat_dir;
}

json_t *ctl_catalog_json(const struct ctl *c)
{
	json_t *j = json_pack("{s:s, s:s}", "source", source_names[c->cat_source], "socket",
			      c->cat_socket);
	char db[PATH_MAX + 16];

	snprintf(db, sizeof(db), "%s/%s", c->cat_dir, CATALOG_FILE);
	json_object_set_new(j, "path", json_string(db));
	if (c->cat_source == CTL_CAT_DAEMON)
		json_object_set_new(j, "pid", json_integer(c->cat_pid));
	return j;
}

void ctl_done(struct ctl *c)
{
	weightd_detach(c->w);
	c->w = NULL;
}

void ctl_print_json(json_t *j)
{
	char *s = json_dumps(j, JSON_COMPACT);

	if (s)
		puts(s);
	free(s);
	json_decref(j);
}

void ctl_err(const char *verb, const char *fmt, ...)
{
	char msg[8192], esc[4 * sizeof(msg)];
	va_list ap;

	/* Messages quote names from disk and from the daemon: no control byte reaches the tty. */
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	fprintf(stderr, "weightctl %s: %s\n", verb, log_escape(msg, esc, sizeof(esc), 0));
}

const char *ctl_esc(const char *s)
{
	/* A few at a time, so that one printf() can show several names. */
	static __thread char *ring[8];
	static __thread size_t cap[8];
	static __thread unsigned next;
	unsigned i = next++ % 8;
	size_t need = 4 * strlen(s ? s : "") + 4;

	if (cap[i] < need) {
		char *p = realloc(ring[i], need);

		if (!p)
			return "(out of memory)";
		ring[i] = p;
		cap[i] = need;
	}
	return log_escape(s, ring[i], cap[i], LOG_ESC_QUOTES);
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
