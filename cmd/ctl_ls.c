/* weightctl ls: the models in the catalog, one line (or one JSON object) each. */
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

static void ls_usage(FILE *out)
{
	fprintf(out, "usage: weightctl ls [--socket PATH] [--json]\n\n"
		     "Lists the models in the catalog: name, format, architecture, components,\n"
		     "tensors, parameters, bytes, validity and tags. The catalog is the running\n"
		     "daemon's when one answers on the socket, else the state directory's; stderr\n"
		     "says which. --json prints one JSON object {\"models\": [...], \"catalog\":\n"
		     "{\"source\": \"daemon\"|\"state_dir\"|\"option\", \"path\": ...}}.\n");
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
	int rc = ctl_parse_simple(argc, argv, &json, &socket, ls_usage);

	if (rc >= 0)
		return rc;
	if (optind < argc) {
		ctl_err("ls", "unexpected argument '%s'", argv[optind]);
		return CTL_USAGE;
	}
	cat = ctl_open_catalog(c, "ls", socket, json);
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
			json_array_append_new(arr, ctl_model_json(&list.models[i], false));
		ctl_print_json(json_pack("{s:o, s:o}", "models", arr, "catalog", ctl_catalog_json(c)));
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

