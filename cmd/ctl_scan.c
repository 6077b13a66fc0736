/*
 * weightctl scan: discover the models under the given directories (or the roots scanned
 * before) and record them in a catalog. When a daemon answers on the socket it scans, into
 * its own catalog (so that it publishes what it finds); otherwise the scan runs here on the
 * state directory's catalog. scan --daemon sends the SCAN to the daemon without reading its
 * catalog here (ctl_scan_daemon()).
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "weightd.h"

#include "cmd/ctl.h"
#include "core/catalog/catalog.h"
#include "core/catalog/scan.h"
#include "core/format/model.h"

enum { OPT_SOCKET = 0x100 };

static void scan_usage(FILE *out)
{
	fprintf(out,
		"usage: weightctl scan [--json] [--threads N] [DIR...]\n"
		"       weightctl scan --daemon [--socket PATH] [--json] [DIR]\n\n"
		"Discovers the models under each DIR (recursively), validates their files and\n"
		"records them in the catalog. Only files whose fingerprint (device, inode, size,\n"
		"mtime, ctime) changed are read again. Without DIR, rescans every root scanned before.\n"
		"Unreadable paths, symlink loops and files that vanish are reported and skipped.\n"
		"When a daemon answers on the socket, it scans (so that it also publishes what it\n"
		"finds) into its own catalog, and its invalid models are listed; otherwise the\n"
		"scan runs here, on the state directory's catalog (see `weightctl --help`).\n\n"
		"  --json         one JSON object with the counts, changes and problems\n"
		"  --threads N    header reader threads (default min(8, 2 x CPUs))\n"
		"  --daemon       send the SCAN to the daemon without reading its catalog here\n"
		"                 (for a user who may not open it): the daemon reads only what\n"
		"                 you could read yourself, under its model roots\n"
		"                 (docs/security.md); at most one DIR\n"
		"  --socket PATH  the daemon's socket (default $WEIGHTD_SOCKET, else per user)\n\n"
		"Exit status: 0 scanned and everything valid, 1 problems or invalid models,\n"
		"2 usage error.\n");
}

struct roots {
	size_t n;
	char **paths;
};

static int add_root(const char *path, int64_t scanned_at_ns, void *arg)
{
	struct roots *r = arg;
	char **p = realloc(r->paths, (r->n + 1) * sizeof(*p));

	(void)scanned_at_ns;
	if (!p)
		return -ENOMEM;
	r->paths = p;
	r->paths[r->n] = strdup(path);
	if (!r->paths[r->n])
		return -ENOMEM;
	r->n++;
	return 0;
}

static void scan_progress(uint64_t done, uint64_t total, void *arg)
{
	ctl_progress_update(arg, done, total);
}

static const char *const change_names[] = { "added", "updated", "removed" };

static void scan_report_json(const struct scan_result *res, json_t *catalog)
{
	json_t *j = json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:b, s:f}",
			      "files", (json_int_t)res->n_files, "models",
			      (json_int_t)res->n_models, "invalid", (json_int_t)res->n_invalid,
			      "parsed", (json_int_t)res->n_parsed, "reused",
			      (json_int_t)res->n_reused, "added", (json_int_t)res->n_added,
			      "updated", (json_int_t)res->n_updated, "removed",
			      (json_int_t)res->n_removed, "wrote", res->wrote, "seconds",
			      (double)res->elapsed_ns / 1e9);
	json_t *changes = json_array(), *problems = json_array();

	for (size_t i = 0; i < res->n_changes; i++) {
		const struct scan_change *ch = &res->changes[i];
		json_t *o = json_pack("{s:s, s:s, s:s, s:b}", "change", change_names[ch->kind],
				      "name", ch->name, "path", ch->path, "valid", ch->valid);

		if (ch->error)
			json_object_set_new(o, "error", json_string(ch->error));
		json_array_append_new(changes, o);
	}
	for (size_t i = 0; i < res->n_problems; i++)
		json_array_append_new(problems,
				      json_pack("{s:s, s:s, s:s}", "path", res->problems[i].path,
						"errno", strerror(-res->problems[i].err),
						"message", res->problems[i].message));
	json_object_set_new(j, "changes", changes);
	json_object_set_new(j, "problems", problems);
	json_object_set_new(j, "catalog", catalog);
	ctl_print_json(j);
}

/* Whether catalog path @path lies in one of @dirs (all of them when @n is 0). */
static bool under(const char *path, char **dirs, int n)
{
	for (int i = 0; i < n; i++) {
		size_t len = strlen(dirs[i]);

		if (!strncmp(path, dirs[i], len) && (path[len] == '/' || !path[len]))
			return true;
	}
	return n == 0;
}

/*
 * scan with a daemon: it scans each DIR (all its roots without one) into its catalog and
 * publishes what it finds; the invalid models under those directories are then listed
 * from that catalog. Exit status as for a local scan.
 */
static int scan_by_daemon(struct ctl *c, char **dirs, int n, bool json)
{
	struct catalog_model_list list = { 0 };
	json_t *roots = json_array(), *invalid = json_array();
	char **abs = calloc((size_t)n + 1, sizeof(*abs));
	struct ctl_progress prog;
	struct catalog *cat;
	int status = CTL_OK, n_abs = 0, ret;

	for (int i = 0; abs && i <= n; i++) {
		const char *d = NULL;

		if (i == n && n)
			break;
		if (n) {
			abs[n_abs] = realpath(dirs[i], NULL);
			if (!abs[n_abs]) {
				ctl_err("scan", "%s: %s", dirs[i], strerror(errno));
				status = CTL_FAIL;
				continue;
			}
			d = abs[n_abs++];
		}
		ctl_progress_begin(&prog, "scan", false);
		ret = weightd_scan(c->w, d, scan_progress, &prog);
		ctl_progress_end(&prog, 0, 0);
		if (ret < 0) {
			ctl_err("scan", "the daemon's scan of %s: %s", d ? d : "its roots",
				weightd_last_error());
			status = CTL_FAIL;
			continue;
		}
		json_array_append_new(roots, json_pack("{s:s?, s:i}", "dir", d, "models", ret));
		if (!json)
			printf("scanned  %s: %d models, published by the daemon\n",
			       d ? d : "the daemon's --models roots", ret);
	}
	cat = abs ? ctl_open_catalog(c, "scan", NULL, true) : NULL;
	ret = cat ? catalog_list_models(cat, &list) : -ENOMEM;
	catalog_close(cat);
	if (ret < 0) {
		ctl_err("scan", "cannot read the daemon's catalog: %s", strerror(-ret));
		status = CTL_FAIL;
	}
	for (size_t i = 0; i < list.n; i++) {
		const struct catalog_model *m = &list.models[i];

		if (m->valid || !under(m->path, abs, n_abs))
			continue;
		status = CTL_FAIL;
		json_array_append_new(invalid, json_pack("{s:s, s:s, s:s?}", "name", m->name,
							 "path", m->path, "error", m->error));
		if (!json)
			printf("invalid  %s  %s\n         %s\n", m->name, m->path,
			       m->error ? m->error : "");
	}
	if (json)
		ctl_print_json(json_pack("{s:o, s:o, s:o}", "roots", roots, "invalid", invalid,
				     "catalog", ctl_catalog_json(c)));
	else
		json_decref(roots), json_decref(invalid);
	catalog_model_list_free(&list);
	for (int i = 0; i < n_abs; i++)
		free(abs[i]);
	free(abs);
	return status;
}

static void scan_report_text(const struct scan_result *res)
{
	for (size_t i = 0; i < res->n_changes; i++) {
		const struct scan_change *ch = &res->changes[i];

		printf("%-8s %s  %s\n", change_names[ch->kind], ctl_esc(ch->name), ctl_esc(ch->path));
		if (!ch->valid && ch->error) {
			/* Indent every line of a multi-line error. */
			const char *p = ch->error;

			while (*p) {
				const char *nl = strchr(p, '\n');
				int len = nl ? (int)(nl - p) : (int)strlen(p);
				char *line = strndup(p, (size_t)len);

				printf("         invalid: %s\n", line ? ctl_esc(line) : "?");
				free(line);
				p += len + (nl != NULL);
			}
		}
	}
	for (size_t i = 0; i < res->n_problems; i++)
		printf("skipped  %s\n", ctl_esc(res->problems[i].message));
	printf("%llu models (%llu invalid), %llu files: %llu read, %llu unchanged; "
	       "%llu added, %llu updated, %llu removed; %zu problems; %.3f s\n",
	       (unsigned long long)res->n_models, (unsigned long long)res->n_invalid,
	       (unsigned long long)res->n_files, (unsigned long long)res->n_parsed,
	       (unsigned long long)res->n_reused, (unsigned long long)res->n_added,
	       (unsigned long long)res->n_updated, (unsigned long long)res->n_removed,
	       res->n_problems, (double)res->elapsed_ns / 1e9);
}

int ctl_scan(struct ctl *c, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "threads", required_argument, NULL, 't' },
		{ "socket", required_argument, NULL, OPT_SOCKET },
		{ "daemon", no_argument, NULL, 'd' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	const char *socket = NULL;
	struct scan_options so = { 0 };
	struct scan_result res = { 0 };
	struct ctl_progress prog;
	struct roots known = { 0 };
	struct catalog *cat;
	bool json = false, daemon = false;
	int opt, rc, status;
	char *end;

	optind = 1;
	while ((opt = getopt_long(argc, argv, "jt:h", longopts, NULL)) != -1) {
		switch (opt) {
		case 'j': json = true; break;
		case 'd': daemon = true; break;
		case 't':
			so.threads = (unsigned)strtoul(optarg, &end, 10);
			if (*end || so.threads == 0 || so.threads > 256) {
				ctl_err("scan", "--threads wants 1..256, not '%s'", optarg);
				return CTL_USAGE;
			}
			break;
		case OPT_SOCKET: socket = optarg; break;
		case 'h': scan_usage(stdout); return CTL_OK;
		default: scan_usage(stderr); return CTL_USAGE;
		}
	}
	if (daemon) {
		if (argc - optind > 1) {
			ctl_err("scan", "--daemon takes at most one DIR");
			return CTL_USAGE;
		}
		return ctl_scan_daemon(socket, optind < argc ? argv[optind] : NULL, json);
	}
	if (!ctl_catalog_dir(c, "scan", socket, json))
		return CTL_FAIL;
	if (c->cat_source == CTL_CAT_DAEMON)
		return scan_by_daemon(c, argv + optind, argc - optind, json);
	cat = ctl_open_catalog(c, "scan", socket, json);
	if (!cat)
		return CTL_FAIL;
	if (optind >= argc) {
		rc = catalog_roots(cat, add_root, &known);
		if (rc < 0 || known.n == 0) {
			ctl_err("scan", rc < 0 ? "cannot read the known roots: %s"
					       : "no DIR given and no root scanned before%s",
				rc < 0 ? strerror(-rc) : "");
			status = rc < 0 ? CTL_FAIL : CTL_USAGE;
			goto out;
		}
	}
	ctl_progress_begin(&prog, "scan", false);
	so.progress = scan_progress;
	so.progress_arg = &prog;
	if (known.n)
		rc = scan_roots(cat, (const char *const *)known.paths, known.n, &so, &res);
	else
		rc = scan_roots(cat, (const char *const *)argv + optind, (size_t)(argc - optind),
				&so, &res);
	ctl_progress_end(&prog, res.n_files, res.n_files);
	if (rc < 0) {
		ctl_err("scan", "failed, catalog unchanged: %s", strerror(-rc));
		status = CTL_FAIL;
		goto out;
	}
	if (json)
		scan_report_json(&res, ctl_catalog_json(c));
	else
		scan_report_text(&res);
	status = res.n_problems || res.n_invalid ? CTL_FAIL : CTL_OK;
out:
	scan_result_free(&res);
	for (size_t i = 0; i < known.n; i++)
		free(known.paths[i]);
	free(known.paths);
	catalog_close(cat);
	return status;
}


/* ---------------------------------------------------------------------------------- */
/* scan --daemon                                                                      */

int ctl_scan_daemon(const char *socket, const char *dir, bool json)
{
	struct ctl_dopts o = { .socket = socket, .json = json };
	char abs[PATH_MAX];
	struct weightd *w;
	int ret;

	/* The daemon resolves paths in its own working directory: send an absolute one. */
	if (dir && !realpath(dir, abs)) {
		ctl_err("scan", "%s: %s", ctl_esc(dir), strerror(errno));
		return CTL_FAIL;
	}
	w = ctl_open_daemon("scan", &o);
	if (!w)
		return CTL_FAIL;
	ret = weightd_scan(w, dir ? abs : NULL, NULL, NULL);
	if (ret < 0) {
		ret = ctl_failed("scan", &o, ret);
	} else {
		const char *m = weightd_last_error();

		if (json)
			ctl_print_json(json_pack("{s:b, s:i, s:s}", "ok", 1, "models", ret, "problems",
					     m));
		else
			printf("%d models under %s%s%s\n", ret, dir ? ctl_esc(abs) : "the roots",
			       *m ? "; " : "", *m ? ctl_esc(m) : "");
		ret = *m ? CTL_FAIL : CTL_OK;
	}
	weightd_detach(w);
	return ret;
}

