/*
 * What the weightctl verbs that read the catalog share (scan, ls, info, meta): their common
 * options, opening the catalog ctl_catalog_dir() chooses, and a model as JSON. These verbs
 * work with no daemon; each lives in its own cmd/ctl_<verb>.c.
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

/*
 * Parses the common "--json / --socket / --help" options; returns -1 to go on, else an exit
 * code.
 */
int ctl_parse_simple(int argc, char **argv, bool *json, const char **socket,
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
struct catalog *ctl_open_catalog(struct ctl *c, const char *verb, const char *socket,
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

json_t *ctl_kv_json(const struct st_kv *kv, size_t n)
{
	json_t *o = json_object();

	for (size_t i = 0; i < n; i++)
		json_object_set_new(o, kv[i].key, json_string(kv[i].value));
	return o;
}

json_t *ctl_model_json(const struct catalog_model *m, bool with_files)
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
	json_object_set_new(j, "metadata", ctl_kv_json(m->meta, m->n_meta));
	json_object_set_new(j, "user", ctl_kv_json(m->user, m->n_user));
	return j;
}

/* The user's tags as "a,b" (tags are the keys "tag:NAME"). */
