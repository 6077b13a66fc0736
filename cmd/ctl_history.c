/*
 * weightctl history [MODEL]: the `weightctl bench` runs recorded in the catalog (bench_runs),
 * oldest first, with their main figures.
 */
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "weightd.h"

#include "cmd/ctl.h"
#include "core/catalog/catalog.h"

static void usage_history(FILE *out)
{
	fprintf(out,
		"usage: weightctl history [--socket PATH] [--json] [MODEL]\n\n"
		"Lists the `weightctl bench` runs recorded in the catalog, oldest first, for MODEL\n"
		"(a name or a path; or every model): when, host cold and warm load rates, the\n"
		"storage limits, and the load rate to the first GPU (cuda:0) when there was one.\n"
		"The catalog is the running daemon's when one answers on the socket, else the\n"
		"state directory's.\n\n"
		"  --json         one JSON object {\"runs\": [{\"id\", \"model\", \"time\",\n"
		"                 \"figures\"}], \"catalog\": {\"source\", \"path\"}}\n"
		"  --socket PATH  the daemon's socket (default $WEIGHTD_SOCKET, else per user)\n\n"
		"Exit status: 0, 1 the catalog cannot be read, 2 usage error.\n");
}

struct hist_ctx {
	bool json;
	json_t *runs;
	unsigned int n;
};

static double fig(json_t *f, const char *obj, const char *key)
{
	json_t *o = obj ? json_object_get(f, obj) : f;
	json_t *v = o ? json_object_get(o, key) : NULL;

	return v && json_is_number(v) ? json_number_value(v) : NAN;
}

/* @bps as GB/s with three decimals, or "-" for a figure the run does not have. */
static const char *gbps(double bps, char *buf)
{
	if (isnan(bps))
		return "-";
	snprintf(buf, 16, "%.3f", bps / 1e9);
	return buf;
}

static int on_run(int64_t id, const char *model, uint64_t at_ns, const char *figures, void *arg)
{
	struct hist_ctx *h = arg;
	json_t *f = json_loads(figures, 0, NULL);
	time_t t = (time_t)(at_ns / 1000000000);
	char when[32], b[5][16];
	struct tm tm;

	h->n++;
	if (h->json) {
		json_array_append_new(h->runs, json_pack("{s:I, s:s, s:f, s:o}", "id",
							 (json_int_t)id, "model", model, "time",
							 (double)at_ns / 1e9,
							 "figures", f ? f : json_null()));
		return 0;
	}
	localtime_r(&t, &tm);
	strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
	printf("%-5lld %-19s %-24s %9s %9s %9s %9s %9s\n", (long long)id, when, ctl_esc(model),
	       gbps(fig(f, "host", "cold_bps"), b[0]), gbps(fig(f, "host", "warm_bps"), b[1]),
	       gbps(fig(f, "storage", "cold_bps"), b[2]),
	       gbps(fig(f, "storage", "warm_bps"), b[3]),
	       gbps(fig(json_array_get(json_object_get(f, "gpus"), 0), NULL, "load_bps"), b[4]));
	json_decref(f);
	return 0;
}

int ctl_history(struct ctl *c, int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "socket", required_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	struct hist_ctx h = { 0 };
	struct catalog *cat;
	const char *sd, *model = NULL, *socket = NULL;
	char name[WEIGHTD_NAME_MAX];
	int opt, ret;

	optind = 1;
	while ((opt = getopt_long(argc, argv, "hj", longopts, NULL)) != -1) {
		switch (opt) {
		case 'j': h.json = true; break;
		case 's': socket = optarg; break;
		case 'h': usage_history(stdout); return CTL_OK;
		default: usage_history(stderr); return CTL_USAGE;
		}
	}
	if (optind + 1 < argc) {
		ctl_err("history", "takes at most one MODEL");
		usage_history(stderr);
		return CTL_USAGE;
	}
	sd = ctl_catalog_dir(c, "history", socket, h.json);
	if (!sd)
		return CTL_FAIL;
	ret = catalog_open(sd, &cat);
	if (ret) {
		ctl_err("history", "cannot open the catalog in %s: %s", sd, strerror(-ret));
		return CTL_FAIL;
	}
	if (optind < argc) {
		struct catalog_model m;

		/* A model is named as everywhere (name or path); runs are stored by its name. */
		model = argv[optind];
		if (catalog_get_model(cat, model, &m) == 0) {
			snprintf(name, sizeof(name), "%s", m.name);
			model = name;
			catalog_model_free(&m);
		}
	}
	if (h.json)
		h.runs = json_array();
	else
		printf("%-5s %-19s %-24s %9s %9s %9s %9s %9s\n", "ID", "TIME", "MODEL", "COLD GB/s",
		       "WARM GB/s", "DISK COLD", "DISK WARM", "GPU0 GB/s");
	ret = catalog_bench_list(cat, model, on_run, &h);
	catalog_close(cat);
	if (ret) {
		json_decref(h.runs);
		ctl_err("history", "cannot read the bench runs: %s", strerror(-ret));
		return CTL_FAIL;
	}
	if (h.json) {
		json_t *j = json_pack("{s:o, s:o}", "runs", h.runs, "catalog",
				      ctl_catalog_json(c));
		char *txt = json_dumps(j, JSON_INDENT(2));

		if (txt)
			puts(txt);
		free(txt);
		json_decref(j);
	} else if (!h.n) {
		printf("(no bench runs recorded%s%s)\n", model ? " for " : "", model ? ctl_esc(model) : "");
	}
	return CTL_OK;
}
