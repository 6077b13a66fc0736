/*
 * weightctl info: one model of the catalog, or one file or directory on disk, described
 * tensor by tensor.
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
		json_t *j = ctl_model_json(&m, true);

		o->tensors = json_array();
		rc = catalog_model_tensors(cat, m.id, info_catalog_tensor, o);
		json_object_set_new(j, "tensor_list", o->tensors);
		json_object_set_new(j, "catalog", ctl_catalog_json(c));
		if (rc == 0)
			ctl_print_json(j);
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
		json_object_set_new(j, "metadata", ctl_kv_json(m.meta, m.n_meta));
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
		ctl_print_json(j);
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
	int rc = ctl_parse_simple(argc, argv, &o.json, &socket, info_usage);

	if (rc >= 0)
		return rc;
	if (optind + 1 != argc) {
		ctl_err("info", "want exactly one PATH_OR_MODEL");
		info_usage(stderr);
		return CTL_USAGE;
	}
	cat = ctl_open_catalog(c, "info", socket, o.json);
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

