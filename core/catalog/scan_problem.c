/*
 * Discovery's shared helpers: the problem list every phase adds to (scan_problem, and
 * scan_path_problem for an entry that could not be opened or checked) and path joining.
 * The phases (scan_walk.c, scan_group.c, scan_plan.c) and their driver (scan.c) call these;
 * this file calls none of them.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/base/array.h"
#include "core/base/common.h"
#include "core/base/log.h"
#include "core/catalog/scan_internal.h"

void scan_problem(struct scan *sc, const char *path, int err, const char *fmt, ...)
{
	struct scan_result *r = sc->res;
	struct scan_problem *p;
	char msg[ST_MSG_MAX + PATH_MAX];
	int n;
	va_list ap;

	if (wd_grow(&r->problems, &sc->cap_problems, r->n_problems, sizeof(*p))) {
		sc->nomem = 1;
		return;
	}
	n = snprintf(msg, sizeof(msg), "%s: ", path);
	va_start(ap, fmt);
	vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
	va_end(ap);
	p = &r->problems[r->n_problems];
	p->path = strdup(path);
	p->message = strdup(msg);
	p->err = err;
	if (!p->path || !p->message) {
		free(p->path);
		free(p->message);
		sc->nomem = 1;
		return;
	}
	r->n_problems++;
	{
		char ep[LOG_ESCAPE_MAX], em[LOG_ESCAPE_MAX];

		log_info("scan", "\"problem\" path=\"%s\" error=\"%s\"",
			 log_escape(path, ep, sizeof(ep), LOG_ESC_QUOTES),
			 log_escape(msg, em, sizeof(em), LOG_ESC_QUOTES));
	}
}

/* Reports why @name in directory @dfd could not be stat()ed or opened. */
void scan_path_problem(struct scan *sc, int dfd, const char *path, const char *name, int e)
{
	struct stat lsb;

	switch (e) {
	case ENOENT:
		if (fstatat(dfd, name, &lsb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(lsb.st_mode))
			scan_problem(sc, path, -e, "dangling symlink (its target does not exist)");
		else
			scan_problem(sc, path, -e, "vanished during the scan");
		break;
	case ELOOP:
		scan_problem(sc, path, -e, "symlink loop (too many levels of symbolic links)");
		break;
	case EACCES:
	case EPERM:
		scan_problem(sc, path, -e, "permission denied");
		break;
	default:
		scan_problem(sc, path, -e, "%s", strerror(e));
	}
}

char *scan_join(const char *dir, const char *name)
{
	size_t a = strlen(dir), b = strlen(name);
	bool slash = !(a == 1 && dir[0] == '/');
	char *p = malloc(a + b + 2);

	if (!p)
		return NULL;
	memcpy(p, dir, a);
	if (slash)
		p[a++] = '/';
	memcpy(p + a, name, b + 1);
	return p;
}
