/* weightctl verbs over the catalog, which work with no daemon: scan, ls, info, meta. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "weightd.h"

#include "cmd/ctl.h"
#include "core/catalog/catalog.h"
#include "core/format/model.h"
#include "core/catalog/scan.h"

/* Prints @j as one compact line on stdout and releases it. */
static void print_json(json_t *j)
{
	char *s = json_dumps(j, JSON_COMPACT);

	if (s)
		puts(s);
	free(s);
	json_decref(j);
}

enum { OPT_SOCKET = 0x100 };

/*
 * Parses the common "--json / --socket / --help" options; returns -1 to go on, else an exit
 * code.
 */
static int parse_simple(int argc, char **argv, bool *json, const char **socket,
			void (*usage)(FILE *))
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "socket", required_argument, NULL, OPT_SOCKET },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	int opt;

	optind = 1;
	while ((opt = getopt_long(argc, argv, "jh", longopts, NULL)) != -1) {
		switch (opt) {
		case 'j': *json = true; break;
		case OPT_SOCKET: *socket = optarg; break;
		case 'h': usage(stdout); return CTL_OK;
		default: usage(stderr); return CTL_USAGE;
		}
	}
	return -1;
}

/* The catalog ctl_catalog_dir() chooses (the running daemon's, else the state dir's). */
static struct catalog *open_catalog(struct ctl *c, const char *verb, const char *socket,
				    bool json)
{
	const char *dir = ctl_catalog_dir(c, verb, socket, json);
	struct catalog *cat = NULL;
	int rc;

	if (!dir)
		return NULL;
	rc = catalog_open(dir, &cat);
	if (rc < 0) {
		ctl_err(verb, "cannot open the catalog in %s: %s", dir, strerror(-rc));
		return NULL;
	}
	return cat;
}

static json_t *dtype_bytes_json(const uint64_t *dtype_bytes)
{
	json_t *o = json_object();

	for (int d = 0; d < ST_DTYPE_COUNT; d++)
		if (dtype_bytes[d])
			json_object_set_new(o, st_dtype_info((enum st_dtype)d)->name,
					    json_integer((json_int_t)dtype_bytes[d]));
	return o;
}

/* "F16 1.2 MiB, F32 40 B" */
static void dtype_bytes_text(const uint64_t *dtype_bytes, char *buf, size_t size)
{
	size_t n = 0;

	buf[0] = '\0';
	for (int d = 0; d < ST_DTYPE_COUNT && n < size; d++) {
		char b[32];

		if (!dtype_bytes[d])
			continue;
		n += (size_t)snprintf(buf + n, size - n, "%s%s %s", n ? ", " : "",
				      st_dtype_info((enum st_dtype)d)->name,
				      ctl_human_bytes(dtype_bytes[d], b, sizeof(b)));
	}
}

/* ---------------------------------------------------------------------------------- */
/* scan                                                                               */

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
	print_json(j);
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
	cat = abs ? open_catalog(c, "scan", NULL, true) : NULL;
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
		print_json(json_pack("{s:o, s:o, s:o}", "roots", roots, "invalid", invalid,
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
	cat = open_catalog(c, "scan", socket, json);
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
/* ls                                                                                 */

static void ls_usage(FILE *out)
{
	fprintf(out, "usage: weightctl ls [--socket PATH] [--json]\n\n"
		     "Lists the models in the catalog: name, format, architecture, components,\n"
		     "tensors, parameters, bytes, validity and tags. The catalog is the running\n"
		     "daemon's when one answers on the socket, else the state directory's; stderr\n"
		     "says which. --json prints one JSON object {\"models\": [...], \"catalog\":\n"
		     "{\"source\": \"daemon\"|\"state_dir\"|\"option\", \"path\": ...}}.\n");
}

static json_t *kv_json(const struct st_kv *kv, size_t n)
{
	json_t *o = json_object();

	for (size_t i = 0; i < n; i++)
		json_object_set_new(o, kv[i].key, json_string(kv[i].value));
	return o;
}

static json_t *model_json(const struct catalog_model *m, bool with_files)
{
	json_t *comps = json_array();
	json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:b, s:I, s:I, s:I}", "name", m->name,
			      "path", m->path, "format", model_format_name(m->format), "arch",
			      m->arch ? m->arch : "unknown", "valid", m->valid, "tensors",
			      (json_int_t)m->n_tensors, "params", (json_int_t)m->params, "bytes",
			      (json_int_t)m->bytes);

	if (m->error)
		json_object_set_new(j, "error", json_string(m->error));
	for (size_t i = 0; i < m->n_components; i++) {
		const struct catalog_component *cc = &m->components[i];
		json_t *o = json_pack("{s:s, s:s, s:b, s:I, s:I, s:I}", "name", cc->name, "arch",
				      cc->arch ? cc->arch : "unknown", "valid", cc->valid,
				      "tensors", (json_int_t)cc->n_tensors, "params",
				      (json_int_t)cc->params, "bytes", (json_int_t)cc->bytes);

		json_object_set_new(o, "dtype_bytes", dtype_bytes_json(cc->dtype_bytes));
		if (cc->error)
			json_object_set_new(o, "error", json_string(cc->error));
		if (with_files) {
			json_t *files = json_array();

			for (size_t f = 0; f < cc->n_files; f++)
				json_array_append_new(files, json_string(cc->files[f].path));
			json_object_set_new(o, "files", files);
		}
		json_array_append_new(comps, o);
	}
	json_object_set_new(j, "components", comps);
	json_object_set_new(j, "metadata", kv_json(m->meta, m->n_meta));
	json_object_set_new(j, "user", kv_json(m->user, m->n_user));
	return j;
}

/* The user's tags as "a,b" (tags are the keys "tag:NAME"). */
static void tags_text(const struct catalog_model *m, char *buf, size_t size)
{
	size_t n = 0, plen = strlen(CATALOG_TAG_PREFIX);

	buf[0] = '\0';
	for (size_t i = 0; i < m->n_user && n < size; i++)
		if (!strncmp(m->user[i].key, CATALOG_TAG_PREFIX, plen))
			n += (size_t)snprintf(buf + n, size - n, "%s%s", n ? "," : "",
					      m->user[i].key + plen);
}

int ctl_ls(struct ctl *c, int argc, char **argv)
{
	struct catalog_model_list list = { 0 };
	const char *socket = NULL;
	struct catalog *cat;
	bool json = false;
	int rc = parse_simple(argc, argv, &json, &socket, ls_usage);

	if (rc >= 0)
		return rc;
	if (optind < argc) {
		ctl_err("ls", "unexpected argument '%s'", argv[optind]);
		return CTL_USAGE;
	}
	cat = open_catalog(c, "ls", socket, json);
	if (!cat)
		return CTL_FAIL;
	rc = catalog_list_models(cat, &list);
	catalog_close(cat);
	if (rc < 0) {
		ctl_err("ls", "cannot read the catalog: %s", strerror(-rc));
		return CTL_FAIL;
	}
	if (json) {
		json_t *arr = json_array();

		for (size_t i = 0; i < list.n; i++)
			json_array_append_new(arr, model_json(&list.models[i], false));
		print_json(json_pack("{s:o, s:o}", "models", arr, "catalog", ctl_catalog_json(c)));
	} else {
		printf("%-28s %-11s %-18s %5s %8s %10s %11s  %s\n", "NAME", "FORMAT", "ARCH",
		       "COMP", "TENSORS", "PARAMS", "SIZE", "STATUS");
		for (size_t i = 0; i < list.n; i++) {
			const struct catalog_model *m = &list.models[i];
			char size[32], tags[256];

			tags_text(m, tags, sizeof(tags));
			printf("%-28s %-11s %-18s %5zu %8llu %10llu %11s  %s%s%s\n", ctl_esc(m->name),
			       model_format_name(m->format), m->arch ? ctl_esc(m->arch) : "unknown",
			       m->n_components, (unsigned long long)m->n_tensors,
			       (unsigned long long)m->params,
			       ctl_human_bytes(m->bytes, size, sizeof(size)),
			       m->valid ? "valid" : "INVALID", tags[0] ? "  tags=" : "", ctl_esc(tags));
		}
		if (list.n == 0)
			printf("(the catalog is empty: run `weightctl scan DIR`)\n");
	}
	catalog_model_list_free(&list);
	return CTL_OK;
}

/* ---------------------------------------------------------------------------------- */
/* info                                                                               */

static void info_usage(FILE *out)
{
	fprintf(out,
		"usage: weightctl info [--socket PATH] [--json] PATH_OR_MODEL\n\n"
		"Describes a model: format, architecture, components with bytes per dtype,\n"
		"metadata, then every tensor with its name, dtype, shape, byte size and data\n"
		"offset in its file. A catalog model is named by name or path; a path that was\n"
		"never scanned is read directly (and not added to the catalog). The catalog is\n"
		"the running daemon's when one answers on the socket, else the state directory's.\n");
}

struct info_out {
	bool json;
	json_t *tensors;
	const char *component; /* last printed component header */
};

static void info_tensor(struct info_out *o, const char *component, const char *file,
			const char *name, const char *dtype, const char *shape, uint64_t bytes,
			uint64_t offset)
{
	if (o->json) {
		json_t *t = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I}", "component", component,
				      "file", file, "name", name, "dtype", dtype, "bytes",
				      (json_int_t)bytes, "offset", (json_int_t)offset);

		json_object_set_new(t, "shape", json_loads(shape, 0, NULL));
		json_array_append_new(o->tensors, t);
		return;
	}
	if (!o->component || strcmp(o->component, component)) {
		printf("\n%s%s\n  %-52s %-8s %-22s %12s %12s\n", component[0] ? "component " : "",
		       component[0] ? ctl_esc(component) : "tensors", "NAME", "DTYPE", "SHAPE", "BYTES",
		       "OFFSET");
		o->component = component;
	}
	printf("  %-52s %-8s %-22s %12llu %12llu\n", ctl_esc(name), dtype, shape,
	       (unsigned long long)bytes, (unsigned long long)offset);
}

static int info_catalog_tensor(const struct catalog_tensor *t, void *arg)
{
	info_tensor(arg, t->component, t->file, t->name, t->dtype_name, t->shape_text,
		    t->end - t->begin, t->data_start + t->begin);
	return 0;
}

static void info_header_text(const char *name, const char *path, int format, const char *arch,
			     bool valid, const char *error, uint64_t n_tensors, uint64_t params,
			     uint64_t bytes)
{
	char size[32];

	printf("model      %s\npath       %s\nformat     %s\narch       %s\n", ctl_esc(name),
	       ctl_esc(path), model_format_name(format), arch ? ctl_esc(arch) : "unknown");
	printf("tensors    %llu\nparameters %llu\nbytes      %llu (%s)\nstatus     %s\n",
	       (unsigned long long)n_tensors, (unsigned long long)params,
	       (unsigned long long)bytes, ctl_human_bytes(bytes, size, sizeof(size)),
	       valid ? "valid" : "INVALID");
	if (error)
		printf("error      %s\n", ctl_esc(error));
}

static int info_from_catalog(struct ctl *c, struct catalog *cat, const char *arg,
			     struct info_out *o)
{
	struct catalog_model m = { 0 };
	int rc = catalog_get_model(cat, arg, &m);

	if (rc < 0)
		return rc;
	if (o->json) {
		json_t *j = model_json(&m, true);

		o->tensors = json_array();
		rc = catalog_model_tensors(cat, m.id, info_catalog_tensor, o);
		json_object_set_new(j, "tensor_list", o->tensors);
		json_object_set_new(j, "catalog", ctl_catalog_json(c));
		if (rc == 0)
			print_json(j);
		else
			json_decref(j);
		catalog_model_free(&m);
		return rc;
	}
	info_header_text(m.name, m.path, m.format, m.arch, m.valid, m.error, m.n_tensors,
			 m.params, m.bytes);
	for (size_t i = 0; i < m.n_components; i++) {
		const struct catalog_component *cc = &m.components[i];
		char bytes[32], dt[256];

		dtype_bytes_text(cc->dtype_bytes, dt, sizeof(dt));
		printf("component  %-14s %-18s %6llu tensors %12llu params  %s  [%s]%s\n",
		       cc->name[0] ? ctl_esc(cc->name) : "(main)",
		       cc->arch ? ctl_esc(cc->arch) : "unknown",
		       (unsigned long long)cc->n_tensors, (unsigned long long)cc->params,
		       ctl_human_bytes(cc->bytes, bytes, sizeof(bytes)), dt,
		       cc->valid ? "" : "  INVALID");
		for (size_t f = 0; f < cc->n_files; f++)
			printf("           file %s\n", ctl_esc(cc->files[f].path));
	}
	for (size_t i = 0; i < m.n_meta; i++)
		printf("metadata   %s = %s\n", ctl_esc(m.meta[i].key), ctl_esc(m.meta[i].value));
	for (size_t i = 0; i < m.n_user; i++)
		printf("user       %s = %s\n", ctl_esc(m.user[i].key), ctl_esc(m.user[i].value));
	rc = catalog_model_tensors(cat, m.id, info_catalog_tensor, o);
	catalog_model_free(&m);
	return rc;
}

/* A path that is not in the catalog: read it with model_open(), write nothing. */
static int info_from_path(const char *path, struct info_out *o)
{
	struct model m = { 0 };
	json_t *j = NULL;
	int rc = model_open(path, &m);

	if (rc < 0)
		return rc;
	if (o->json) {
		j = json_pack("{s:s, s:s, s:s, s:s, s:b, s:I, s:I, s:I}", "name", m.name, "path",
			      m.path, "format", model_format_name(m.format), "arch", m.arch,
			      "valid", m.valid, "tensors", (json_int_t)m.n_tensors, "params",
			      (json_int_t)m.params, "bytes", (json_int_t)m.bytes);
		if (m.error)
			json_object_set_new(j, "error", json_string(m.error));
		json_object_set_new(j, "metadata", kv_json(m.meta, m.n_meta));
		o->tensors = json_array();
	} else {
		info_header_text(m.name, m.path, m.format, m.arch, m.valid, m.error, m.n_tensors,
				 m.params, m.bytes);
		for (size_t i = 0; i < m.n_meta; i++)
			printf("metadata   %s = %s\n", ctl_esc(m.meta[i].key),
			       ctl_esc(m.meta[i].value));
	}
	for (size_t ci = 0; ci < m.n_components; ci++) {
		const struct model_component *mc = &m.components[ci];

		for (size_t fi = 0; fi < mc->n_files; fi++) {
			const struct model_file *f = model_comp_file(&m, mc, fi);

			if (f->rc < 0) {
				if (!o->json)
					printf("\nfile %s: %s\n", ctl_esc(f->path),
					       f->rc == -EINVAL ? ctl_esc(f->err.message)
								: strerror(-f->rc));
				continue;
			}
			for (uint32_t t = 0; t < f->st.n_tensors; t++) {
				const struct st_tensor *st = &f->st.tensors[t];
				char shape[256];

				st_shape_str(st, shape, sizeof(shape));
				info_tensor(o, mc->name, f->path, st->name,
					    st_dtype_info(st->dtype)->name, shape,
					    st_tensor_nbytes(st), f->st.data_start + st->begin);
			}
		}
	}
	if (j) {
		json_object_set_new(j, "tensor_list", o->tensors);
		print_json(j);
	}
	rc = m.valid ? 0 : 1;
	model_free(&m);
	return rc;
}

int ctl_info(struct ctl *c, int argc, char **argv)
{
	struct info_out o = { 0 };
	const char *socket = NULL;
	struct catalog *cat;
	int rc = parse_simple(argc, argv, &o.json, &socket, info_usage);

	if (rc >= 0)
		return rc;
	if (optind + 1 != argc) {
		ctl_err("info", "want exactly one PATH_OR_MODEL");
		info_usage(stderr);
		return CTL_USAGE;
	}
	cat = open_catalog(c, "info", socket, o.json);
	if (!cat)
		return CTL_FAIL;
	rc = info_from_catalog(c, cat, argv[optind], &o);
	catalog_close(cat);
	if (rc == -ENOENT) {
		rc = info_from_path(argv[optind], &o);
		if (rc < 0) {
			ctl_err("info", "'%s' is neither a model in the catalog nor a readable "
					"model path: %s", argv[optind], strerror(-rc));
			return CTL_FAIL;
		}
		return rc ? CTL_FAIL : CTL_OK;
	}
	if (rc < 0) {
		ctl_err("info", "%s: %s", argv[optind], strerror(-rc));
		return CTL_FAIL;
	}
	return CTL_OK;
}

/* ---------------------------------------------------------------------------------- */
/* meta                                                                               */

static void meta_usage(FILE *out)
{
	fprintf(out,
		"usage: weightctl meta get [--socket PATH] [--json] MODEL [KEY]\n"
		"       weightctl meta set MODEL KEY VALUE\n"
		"       weightctl meta unset MODEL KEY\n\n"
		"Reads and writes a model's user metadata, kept in the catalog by model name so\n"
		"it survives rescans and restarts. Two keys are special:\n"
		"  tags   a comma-separated list; `set MODEL tags a,b` replaces the tag set\n"
		"  note   free text\n"
		"Any other KEY holds a string. `get` without KEY prints every key. MODEL is a\n"
		"name or a path. The catalog is the running daemon's when one answers on the\n"
		"socket (--socket, before or after the sub-verb), else the state directory's.\n");
}

struct meta_get {
	json_t *obj;
	bool json;
	unsigned n;
};

static int meta_print(const char *key, const char *value, void *arg)
{
	struct meta_get *g = arg;

	g->n++;
	if (g->json)
		json_object_set_new(g->obj, key, json_string(value));
	else
		printf("%s=%s\n", ctl_esc(key), ctl_esc(value));
	return 0;
}

static int tag_drop(const char *key, const char *value, void *arg)
{
	json_t *list = arg;

	(void)value;
	if (!strncmp(key, CATALOG_TAG_PREFIX, strlen(CATALOG_TAG_PREFIX)))
		json_array_append_new(list, json_string(key + strlen(CATALOG_TAG_PREFIX)));
	return 0;
}

/* Replaces the tag set of @model with the comma-separated @tags. */
static int set_tags(struct catalog *cat, const char *model, const char *tags)
{
	json_t *old = json_array();
	size_t i;
	json_t *v;
	int rc = catalog_meta_list(cat, model, tag_drop, old);
	char *copy, *save = NULL;

	json_array_foreach(old, i, v)
		if (rc == 0)
			rc = catalog_tag_remove(cat, model, json_string_value(v));
	json_decref(old);
	copy = strdup(tags);
	if (!copy)
		return -ENOMEM;
	for (char *t = strtok_r(copy, ",", &save); t && rc == 0; t = strtok_r(NULL, ",", &save))
		if (*t)
			rc = catalog_tag_add(cat, model, t);
	free(copy);
	return rc;
}

int ctl_meta(struct ctl *c, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "socket", required_argument, NULL, OPT_SOCKET },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct meta_get g = { 0 };
	struct catalog_model cm;
	struct catalog *cat;
	const char *sub, *model, *socket = NULL;
	char name[256];
	int opt, rc, nargs;

	optind = 1;
	while ((opt = getopt_long(argc, argv, "+jh", longopts, NULL)) != -1) {
		switch (opt) {
		case 'j': g.json = true; break;
		case OPT_SOCKET: socket = optarg; break;
		case 'h': meta_usage(stdout); return CTL_OK;
		default: meta_usage(stderr); return CTL_USAGE;
		}
	}
	if (optind >= argc) {
		meta_usage(stderr);
		return CTL_USAGE;
	}
	sub = argv[optind++];
	/* Options may also follow the sub-verb ("meta get --json MODEL"). */
	while ((opt = getopt_long(argc, argv, "jh", longopts, NULL)) != -1) {
		switch (opt) {
		case 'j': g.json = true; break;
		case OPT_SOCKET: socket = optarg; break;
		case 'h': meta_usage(stdout); return CTL_OK;
		default: meta_usage(stderr); return CTL_USAGE;
		}
	}
	nargs = argc - optind;
	if (!(!strcmp(sub, "get") && (nargs == 1 || nargs == 2)) &&
	    !(!strcmp(sub, "set") && nargs == 3) && !(!strcmp(sub, "unset") && nargs == 2)) {
		ctl_err("meta", "bad arguments for '%s'", sub);
		meta_usage(stderr);
		return CTL_USAGE;
	}
	model = argv[optind];
	cat = open_catalog(c, "meta", socket, g.json);
	if (!cat)
		return CTL_FAIL;
	/* Metadata is kept by model name: a path names the model it belongs to. */
	if (catalog_get_model(cat, model, &cm) == 0) {
		snprintf(name, sizeof(name), "%s", cm.name);
		model = name;
		catalog_model_free(&cm);
	}
	if (!strcmp(sub, "set")) {
		const char *key = argv[optind + 1], *value = argv[optind + 2];

		if (!strcmp(key, "tags"))
			rc = set_tags(cat, model, value);
		else
			rc = catalog_meta_set(cat, model, key, value);
	} else if (!strcmp(sub, "unset")) {
		rc = catalog_meta_unset(cat, model, argv[optind + 1]);
	} else if (nargs == 2 && strcmp(argv[optind + 1], "tags")) {
		char *value = NULL;

		rc = catalog_meta_get(cat, model, argv[optind + 1], &value);
		if (rc == 0) {
			if (g.json)
				print_json(json_pack("{s:s, s:s, s:s, s:o}", "model", model, "key",
						     argv[optind + 1], "value", value, "catalog",
						     ctl_catalog_json(c)));
			else
				printf("%s\n", value);
		}
		free(value);
	} else if (nargs == 2) {
		json_t *tags = json_array();

		rc = catalog_meta_list(cat, model, tag_drop, tags);
		if (rc == 0 && g.json) {
			print_json(json_pack("{s:s, s:o, s:o}", "model", model, "tags", tags,
					     "catalog", ctl_catalog_json(c)));
			tags = NULL;
		} else if (rc == 0) {
			size_t i;
			json_t *v;

			json_array_foreach(tags, i, v)
				printf("%s%s", i ? "," : "", json_string_value(v));
			printf("\n");
		}
		json_decref(tags);
	} else {
		g.obj = json_object();
		rc = catalog_meta_list(cat, model, meta_print, &g);
		if (rc == 0 && g.json)
			print_json(json_pack("{s:s, s:O, s:o}", "model", model, "meta", g.obj,
					     "catalog", ctl_catalog_json(c)));
		json_decref(g.obj);
	}
	catalog_close(cat);
	if (rc == -ENOENT) {
		ctl_err("meta", "no such %s: %s%s%s", nargs == 1 || !strcmp(sub, "set") ? "model"
			: "model or key", model, nargs > 1 ? " " : "", nargs > 1 ? argv[optind + 1] : "");
		return CTL_FAIL;
	}
	if (rc < 0) {
		ctl_err("meta", "%s %s: %s", sub, model, strerror(-rc));
		return rc == -EINVAL ? CTL_USAGE : CTL_FAIL;
	}
	return CTL_OK;
}
