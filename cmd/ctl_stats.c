/* weightctl stats: the daemon's counters, under the names /metrics gives them. */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "weightd.h"

#include "cmd/ctl.h"

static void stats_usage(FILE *out)
{
	fprintf(out,
		"usage: weightctl stats [--socket PATH] [--json]\n\n"
		"Prints the daemon's counters, one set: clients, pins, requests, the host cache's\n"
		"(host_*: hits, misses, evictions, prefetches, loads and bytes read from disk,\n"
		"coalesced requests, deduplicated bytes), recovery and the GPU tiers' bytes. Each\n"
		"has the name it has in /metrics, without the weightd_ prefix and a counter's\n"
		"_total suffix; docs/metrics.md says what each counts.\n\n"
		"Exit status: 0, 1 no daemon or it failed, 2 usage error.\n");
}

int ctl_stats(struct ctl *c, int argc, char **argv)
{
	enum { COUNTERS_MAX = 64 };
	struct weightd_stats st;
	uint64_t v[COUNTERS_MAX];
	struct ctl_dopts o;
	struct weightd *w;
	json_t *j;
	int ret, n;

	(void)c;
	if ((ret = ctl_dparse(argc, argv, &o, "", stats_usage)) >= 0)
		return ret;
	if (optind != argc) {
		stats_usage(stderr);
		return CTL_USAGE;
	}
	w = ctl_open_daemon("stats", &o);
	if (!w)
		return CTL_FAIL;
	n = weightd_counters(w, v, COUNTERS_MAX);
	ret = n < 0 ? n : weightd_stats(w, &st);
	if (ret < 0) {
		ret = ctl_failed("stats", &o, ret);
		goto out;
	}
	j = json_object();
	for (unsigned int i = 0; i < (unsigned int)n && i < COUNTERS_MAX; i++) {
		const char *name = weightd_counter_name(i, NULL);

		if (!name)
			continue;
		if (o.json)
			json_object_set_new(j, name, json_integer((json_int_t)v[i]));
		else
			printf("%-28s %llu\n", name, (unsigned long long)v[i]);
	}
	if (o.json) {
		json_object_set_new(j, "uptime_seconds", json_real((double)st.uptime_ns / 1e9));
		ctl_print_json(j);
	} else {
		printf("%-28s %.3f\n", "uptime_seconds", (double)st.uptime_ns / 1e9);
		json_decref(j);
	}
	ret = CTL_OK;
out:
	weightd_detach(w);
	return ret;
}

