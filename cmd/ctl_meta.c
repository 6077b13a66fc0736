/* weightctl meta get/set: a model's user metadata and tags, read and written in the catalog. */
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
	cat = ctl_open_catalog(c, "meta", socket, g.json);
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
				ctl_print_json(json_pack("{s:s, s:s, s:s, s:o}", "model", model, "key",
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
			ctl_print_json(json_pack("{s:s, s:o, s:o}", "model", model, "tags", tags,
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
			ctl_print_json(json_pack("{s:s, s:O, s:o}", "model", model, "meta", g.obj,
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

