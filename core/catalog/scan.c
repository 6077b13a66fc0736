/*
 * Discovery: walk, group, diff against the catalog, read what changed, apply. This file
 * drives the phases (scan_roots); scan_internal.h says which file holds each phase, and
 * scan_problem.c keeps the list of problems they report.
 *
 * A scan runs in phases so that the cheap ones decide how much of the expensive one
 * (reading headers) is needed:
 *   1. walk each root with openat()/fdopendir(), stat()ing only files with a model file
 *      name, and remember per directory the run of files found in it;
 *   2. load what the catalog knows under the root (one read transaction);
 *   3. group files into models: diffusers folders first (they own every file below them),
 *      then sharded indexes (they own their shards), then the remaining single files.
 *      A layout JSON whose fingerprint matches the catalog is not read: the catalog kept
 *      the list it derived from it. Each model gets a signature of its layout and files;
 *   4. models whose signature differs from the catalog's are read in parallel and checked;
 *   5. the differences are applied in one transaction, or not at all when there are none.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/vfs.h>

#include "core/base/array.h"
#include "core/base/common.h"
#include "core/base/log.h"
#include "core/catalog/scan_internal.h"


static void root_free(struct root_scan *rs)
{
	for (size_t i = 0; i < rs->n_entries; i++)
		free(rs->entries[i].path);
	for (size_t i = 0; i < rs->n_dirs; i++)
		free(rs->dirs[i].path);
	for (size_t i = 0; i < rs->n_models; i++)
		model_free(&rs->models[i].m);
	free(rs->entries);
	free(rs->dirs);
	free(rs->models);
	free(rs->row_kept);
	free(rs->model_seen);
	strmap_free(&rs->entry_map);
	strmap_free(&rs->dir_map);
	strmap_free(&rs->file_rows);
	strmap_free(&rs->model_rows);
	catalog_scope_free(&rs->scope);
}

/* Resolves the roots and drops any root that lies inside another one. */
static int prepare_roots(struct scan *sc, const char *const *roots, size_t n,
			 struct root_scan *rss, size_t *n_out)
{
	size_t k = 0;

	for (size_t i = 0; i < n; i++) {
		char buf[PATH_MAX];
		bool dup = false;

		for (size_t j = 0; j < i && !dup; j++)
			dup = !strcmp(roots[i], roots[j]);
		if (dup)
			continue;
		if (!realpath(roots[i], buf)) {
			scan_problem(sc, roots[i], -errno, "cannot resolve the root: %s",
				strerror(errno));
			continue;
		}
		snprintf(rss[k].root, sizeof(rss[k].root), "%s", buf);
		rss[k].sc = sc;
		k++;
	}
	for (size_t i = 0; i < k; i++) {
		for (size_t j = 0; j < k; j++) {
			size_t lj = strlen(rss[j].root);
			const char *ri = rss[i].root;

			if (i == j || !rss[j].root[0] || !ri[0])
				continue;
			/* Inside (or equal to, keeping the first): drop i. */
			if (!strncmp(ri, rss[j].root, lj) &&
			    (ri[lj] == '/' || (lj == 1 && ri[1]) || (!ri[lj] && j < i))) {
				rss[i].root[0] = '\0';
				break;
			}
		}
	}
	*n_out = k;
	return 0;
}

/*
 * Sets the scan's bounds, finds devtmpfs (tmpfs's magic: it is told apart as the device /dev
 * lives on) and resolves scan_options.allowed_roots. Returns 0 or -ENOMEM.
 */
static int scan_setup(struct scan *sc, const struct scan_options *opt)
{
	struct stat dev_sb, root_sb;
	struct statfs dev_fs;

	sc->max_entries = opt && opt->max_entries ? opt->max_entries : SCAN_MAX_ENTRIES;
	sc->max_depth = opt && opt->max_depth ? opt->max_depth : SCAN_MAX_DEPTH;
	if (stat("/dev", &dev_sb) == 0 && stat("/", &root_sb) == 0 &&
	    dev_sb.st_dev != root_sb.st_dev && statfs("/dev", &dev_fs) == 0 &&
	    (unsigned long)dev_fs.f_type == TMPFS_MAGIC)
		sc->devtmpfs = dev_sb.st_dev;
	if (!opt || !opt->allowed_roots)
		return 0;
	sc->allowed = calloc(opt->n_allowed_roots + 1, sizeof(*sc->allowed));
	if (!sc->allowed)
		return -ENOMEM;
	for (size_t i = 0; i < opt->n_allowed_roots; i++) {
		char buf[PATH_MAX];

		/* A root that does not resolve allows nothing. */
		if (realpath(opt->allowed_roots[i], buf) &&
		    !(sc->allowed[sc->n_allowed++] = strdup(buf)))
			return -ENOMEM;
	}
	return 0;
}

/*
 * Phases 1 to 4 for one root, up to the list of files to read: walk it, check the access
 * of scan_options.cred, load the catalog's snapshot, group, plan the reads. Returns 0 (an
 * unusable root is left out: its catalog part is left alone) or -ENOMEM.
 */
static int scan_root(struct root_scan *rs, struct plan *pl)
{
	const struct scan_options *opt = rs->sc->opt;
	int rc = scan_walk_root(rs);

	if (rc == 1) {
		rs->root[0] = '\0'; /* unusable root: leave its catalog part alone */
		return 0;
	}
	if (!rc && opt && opt->cred)
		rc = scan_check_access(rs);
	if (!rc)
		rc = scan_load_scope(rs);
	if (!rc)
		rc = scan_group(rs);
	if (!rc)
		rc = scan_plan_reads(rs, pl);
	if (!rc)
		pl->roots[pl->n_roots++] = rs->root;
	return rc;
}

int scan_roots(struct catalog *cat, const char *const *roots, size_t n,
	       const struct scan_options *opt, struct scan_result *res)
{
	struct scan sc = { .cat = cat, .opt = opt, .res = res };
	struct root_scan *rss;
	struct plan pl = { 0 };
	uint64_t t0 = wd_now_ns();
	size_t nr = 0, cap_changes = 0;
	int rc;

	memset(res, 0, sizeof(*res));
	rss = calloc(n ? n : 1, sizeof(*rss));
	pl.roots = calloc(n ? n : 1, sizeof(*pl.roots));
	if (!rss || !pl.roots) {
		free(rss);
		free(pl.roots);
		return -ENOMEM;
	}
	rc = scan_setup(&sc, opt);
	prepare_roots(&sc, roots, n, rss, &nr);
	sc.all_roots = rss;
	sc.n_roots = nr;
	for (size_t i = 0; !rc && i < nr; i++)
		if (rss[i].root[0])
			rc = scan_root(&rss[i], &pl);
	if (!rc && pl.n_to_read)
		scan_read_files(&sc, pl.to_read, pl.n_to_read, res->n_reused, res->n_files);
	for (size_t i = 0; !rc && i < nr; i++)
		if (rss[i].root[0])
			rc = scan_plan_writes(&rss[i], &pl);
	if (!rc)
		rc = scan_publish(&sc, &pl);
	for (size_t i = 0; !rc && i < nr; i++)
		if (rss[i].root[0])
			rc = scan_report(&sc, &rss[i], &cap_changes);
	if (!rc && sc.nomem)
		rc = -ENOMEM;
	scan_progress(&sc, res->n_files, res->n_files);
	for (size_t i = 0; i < n; i++)
		root_free(&rss[i]);
	free(rss);
	scan_plan_free(&pl);
	for (size_t i = 0; i < sc.n_allowed; i++)
		free(sc.allowed[i]);
	free(sc.allowed);
	free(sc.seen);
	res->elapsed_ns = wd_now_ns() - t0;
	log_info("scan", "\"scan done\" roots=%zu files=%llu parsed=%llu reused=%llu models=%llu "
		 "problems=%zu wrote=%d ms=%.1f rc=%d", n, (unsigned long long)res->n_files,
		 (unsigned long long)res->n_parsed, (unsigned long long)res->n_reused,
		 (unsigned long long)res->n_models, res->n_problems, res->wrote,
		 (double)res->elapsed_ns / 1e6, rc);
	return rc;
}

void scan_result_free(struct scan_result *res)
{
	for (size_t i = 0; i < res->n_problems; i++) {
		free(res->problems[i].path);
		free(res->problems[i].message);
	}
	for (size_t i = 0; i < res->n_changes; i++) {
		free(res->changes[i].name);
		free(res->changes[i].path);
		free(res->changes[i].error);
	}
	free(res->problems);
	free(res->changes);
	memset(res, 0, sizeof(*res));
}
