/*
 * weightctl bench's report: the run's figures as text, each load next to its baseline (or
 * flagged when the baseline is suspect), and as a bar chart drawn with gnuplot (--png).
 */
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "weightd.h"

#include "cmd/ctl.h"
#include "cmd/ctl_bench.h"
#include "core/base/common.h"

/* A bar chart of the bandwidths in @r with gnuplot; false when gnuplot failed. */
bool ctl_bench_plot(const char *png, json_t *r)
{
	/* Each load beside its baseline, named as a reader would say it. */
	static const char *const keys[][3] = {
		{ "storage", "cold_bps", "cold: raw O_DIRECT read (baseline)" },
		{ "host", "cold_bps", "cold: load via weightd" },
		{ "storage", "warm_bps", "warm: best raw read, cached (baseline)" },
		{ "host", "warm_bps", "warm: load via weightd" },
		{ NULL, "memcpy_bps", "memcpy, one thread" },
	};
	FILE *g = popen("gnuplot 2>/dev/null", "w");
	json_t *gpu;
	size_t k;

	if (!g)
		return false;
	fprintf(g, "set terminal pngcairo size 1100,600\nset output '%s'\nset style data histograms\n"
		   "set style fill solid\nset ylabel 'GB/s'\nset xtics rotate by -30\n"
		   "set bmargin 10\nset yrange [0:*]\nset termoption noenhanced\n"
		   "set title 'weightctl bench %s'\nunset key\nplot '-' using 2:xtic(1)\n", png,
		json_string_value(json_object_get(r, "model")));
	for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
		json_t *o = keys[i][0] ? json_object_get(r, keys[i][0]) : r;
		json_t *v = o ? json_object_get(o, keys[i][1]) : NULL;

		if (v && json_is_number(v))
			fprintf(g, "\"%s\" %.3f\n", keys[i][2], json_number_value(v) / 1e9);
	}
	json_array_foreach(json_object_get(r, "gpus"), k, gpu) {
		const char *tier = json_string_value(json_object_get(gpu, "tier"));
		json_t *h2d = json_object_get(gpu, "h2d_pinned_bps");
		json_t *load = json_object_get(gpu, "load_bps");

		if (json_is_number(h2d))
			fprintf(g, "\"%s: pinned host-to-device copy (baseline)\" %.3f\n", tier,
				json_number_value(h2d) / 1e9);
		if (json_is_number(load))
			fprintf(g, "\"%s: load from the host cache via weightd\" %.3f\n", tier,
				json_number_value(load) / 1e9);
	}
	fprintf(g, "e\n");
	return pclose(g) == 0;
}

/*
 * "(NN% of the baseline)", or, above SUSPECT_RATIO, a refusal to call it a result: a load
 * that beats a raw read of the same bytes says the baseline (@base) was measured wrong.
 * Returns one of two static buffers, in turn.
 */
static const char *vs(double ratio_v, const char *base)
{
	static char buf[2][200];
	static int k;

	k ^= 1;
	if (isnan(ratio_v))
		snprintf(buf[k], sizeof(buf[k]), "(no ratio: a figure is missing)");
	else if (ratio_v > SUSPECT_RATIO)
		snprintf(buf[k], sizeof(buf[k]), "(baseline suspect: the load ran at %.0f%% of "
			 "the %s; no ratio reported)", 100 * ratio_v, base);
	else
		snprintf(buf[k], sizeof(buf[k]), "(%.0f%% of the baseline below)", 100 * ratio_v);
	return buf[k];
}

void ctl_bench_print(json_t *r)
{
	json_t *h = json_object_get(r, "host"), *s = json_object_get(r, "storage");
	json_t *gpus = json_object_get(r, "gpus"), *ra = json_object_get(r, "ratios"), *g;
	size_t i;

	char cold_base[96], warm_base[96];

	printf("model %s: %lld bytes\n", ctl_esc(json_string_value(json_object_get(r, "model"))),
	       (long long)json_integer_value(json_object_get(r, "bytes")));
	snprintf(cold_base, sizeof(cold_base), "raw %s read, caches dropped by %s",
		 json_is_true(json_object_get(s, "direct")) ? "O_DIRECT" : "buffered",
		 json_string_value(json_object_get(r, "cold_method")));
	snprintf(warm_base, sizeof(warm_base), "best raw read of the cached files, %s",
		 json_string_value(json_object_get(s, "warm_method")));
	printf("  cold: load via weightd %8.3f GB/s  %s\n",
	       json_number_value(json_object_get(h, "cold_bps")) / 1e9,
	       vs(json_number_value(json_object_get(ra, "host_cold_vs_storage_cold")),
		  cold_base));
	printf("        baseline         %8.3f GB/s  (%s)\n",
	       json_number_value(json_object_get(s, "cold_bps")) / 1e9, cold_base);
	printf("  warm: load via weightd %8.3f GB/s  %s\n",
	       json_number_value(json_object_get(h, "warm_bps")) / 1e9,
	       vs(json_number_value(json_object_get(ra, "host_warm_vs_storage_warm")),
		  warm_base));
	printf("        baseline         %8.3f GB/s  (%s)\n",
	       json_number_value(json_object_get(s, "warm_bps")) / 1e9, warm_base);
	if (json_is_number(json_object_get(h, "first_s")))
		printf("  loads: the best of %lld each; the first (cold, and maybe allocating cache "
		       "pages) took %.3f s\n",
		       (long long)json_integer_value(json_object_get(h, "runs")),
		       json_number_value(json_object_get(h, "first_s")));
	printf("  memcpy, one thread     %8.3f GB/s\n",
	       json_number_value(json_object_get(r, "memcpy_bps")) / 1e9);
	json_array_foreach(gpus, i, g) {
		const char *tier = json_string_value(json_object_get(g, "tier"));

		if (json_object_get(g, "error"))
			printf("  %s\n", json_string_value(json_object_get(g, "error")));
		else
			printf("  load to %-8s %8.3f GB/s  (pinned H2D %.3f GB/s%s)\n", tier,
			       json_number_value(json_object_get(g, "load_bps")) / 1e9,
			       json_number_value(json_object_get(g, "h2d_pinned_bps")) / 1e9,
			       json_is_true(json_object_get(g, "emulated")) ?
			       "; emulated device: host memory, not a GPU figure" : "");
	}
	if (!json_array_size(gpus))
		printf("  %s\n", json_string_value(json_object_get(r, "gpu_reason")));
	printf("  new client       attach + resolve %lld tensors in %.3f ms\n",
	       (long long)json_integer_value(json_object_get(r, "tensors")),
	       json_number_value(json_object_get(r, "attach_resolve_s")) * 1e3);
}
