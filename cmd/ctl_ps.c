/*
 * weightctl ps: what is resident where: the host cache entry by entry (CACHE), then the
 * components loading or failed on any tier and pinned models with nothing resident.
 */
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

static void ps_usage(FILE *out)
{
	fprintf(out,
		"usage: weightctl ps [--socket PATH] [--all] [--json]\n\n"
		"Shows what is resident: one line per host cache entry (a component in one form:\n"
		"as stored or converted, all tensors or a subset), with its size, the client pins\n"
		"that cover it and how long ago it was last requested; then the components that\n"
		"are loading or failed on any tier, and pinned models with nothing resident.\n"
		"--all also lists components on disk only.\n\n"
		"Exit status: 0, 1 no daemon or it failed, 2 usage error.\n");
}

static const char *form_of(const struct weightd_cache_entry *e, char *buf, size_t size)
{
	snprintf(buf, size, "%s%s", e->dtype == WEIGHTD_DTYPE_F16 ? "F16" :
		 e->dtype == WEIGHTD_DTYPE_BF16 ? "BF16" : "stored",
		 e->flags & WEIGHTD_CACHE_SUBSET ? "/subset" : "");
	return buf;
}

static const char *ago(uint64_t ns, char *buf, size_t size)
{
	double s = (double)ns / 1e9;

	if (s < 60)
		snprintf(buf, size, "%.1fs ago", s);
	else if (s < 3600)
		snprintf(buf, size, "%.0fm ago", s / 60);
	else
		snprintf(buf, size, "%.1fh ago", s / 3600);
	return buf;
}

/* One line (or JSON row) per host cache entry. Returns how many, or the error. */
static int ps_cache(struct weightd *w, const struct ctl_dopts *o, json_t *rows)
{
	struct weightd_cache_entry ce[64];
	char size[32], form[32], when[32];
	uint32_t n = 0, start = 0;
	int total, shown = 0;

	do {
		total = weightd_cache_list(w, start, ce, (uint32_t)(sizeof(ce) / sizeof(ce[0])), &n);
		if (total < 0)
			return total;
		for (uint32_t i = 0; i < n; i++) {
			const struct weightd_cache_entry *e = &ce[i];
			const char *state = e->flags & WEIGHTD_CACHE_LOADING ? "loading" : "resident";
			bool stale = e->flags & WEIGHTD_CACHE_STALE;

			shown++;
			form_of(e, form, sizeof(form));
			if (o->json) {
				json_array_append_new(rows, json_pack(
					"{s:s, s:s, s:s, s:s, s:s, s:I, s:i, s:f, s:i, s:b, s:b}",
					"model", e->model_name, "component", e->component_name,
					"tier", "host", "state", state, "form", form,
					"bytes", (json_int_t)e->bytes, "pins", (int)e->pins,
					"idle_s", (double)e->idle_ns / 1e9, "tensors",
					(int)e->n_tensors, "shared",
					(e->flags & WEIGHTD_CACHE_SHARED) != 0, "prefetched",
					(e->flags & WEIGHTD_CACHE_PREFETCHED) != 0));
				json_object_set_new(json_array_get(rows, json_array_size(rows) - 1),
						    "stale", json_boolean(stale));
				continue;
			}
			printf("%-24s %-14s %-7s %-9s %-12s %12s %5u  %s%s%s%s\n",
			       ctl_esc(e->model_name),
			       e->component_name[0] ? ctl_esc(e->component_name) : "-", "host",
			       state, form, ctl_human_bytes(e->bytes, size, sizeof(size)), e->pins,
			       ago(e->idle_ns, when, sizeof(when)),
			       e->flags & WEIGHTD_CACHE_SHARED ? " (shared)" : "",
			       e->flags & WEIGHTD_CACHE_PREFETCHED ? " (prefetched)" : "",
			       stale ? " (stale: its files changed; the next load reads them)" : "");
		}
		start += n;
	} while (n && start < (uint32_t)total);
	return shown;
}

/*
 * The state of component @ci on tier @t, when ps lists it there: other tiers than the host
 * (resident and loading host components are listed with the cache), failures, and with
 * t == WEIGHTD_TIER_MAX the "disk" line of a pinned (or, with --all, any) component with
 * nothing resident. NULL when the row is not shown; *@any tells whether an earlier tier
 * showed one.
 */
static const char *ps_row_state(const struct weightd_component_info *ci,
				const struct weightd_model_info *mi, unsigned int t, bool all,
				bool *any, char *tier, size_t tier_size)
{
	const char *state;

	if (t == WEIGHTD_TIER_MAX) {
		if (*any || (!all && !mi->pins) ||
		    ci->tiers[WEIGHTD_TIER_HOST].state == WEIGHTD_RESIDENT)
			return NULL;
		snprintf(tier, tier_size, "disk");
		return "absent";
	}
	/* Resident and loading host components are listed above. */
	if (ci->tiers[t].state == WEIGHTD_ABSENT ||
	    (t == WEIGHTD_TIER_HOST && ci->tiers[t].state != WEIGHTD_FAILED)) {
		*any |= ci->tiers[t].state != WEIGHTD_ABSENT;
		return NULL;
	}
	weightd_tier_name(t, tier, tier_size);
	state = weightd_state_name(ci->tiers[t].state);
	/* The daemon marks a quarantined component failed with -ENOTRECOVERABLE
	 * (core/policy/recovery.h). */
	if (ci->tiers[t].state == WEIGHTD_FAILED && ci->tiers[t].error == -ENOTRECOVERABLE)
		state = "quarantined";
	return state;
}

/* Everything else the registry knows: other tiers, failures, pins on absent models. */
static int ps_registry(struct weightd *w, const struct ctl_dopts *o, json_t *rows)
{
	struct weightd_component_info ci;
	struct weightd_model_info mi;
	char tier[16], size[32];
	int shown = 0;

	for (uint32_t id = 0; weightd_component(w, id, &ci) == 0; id++) {
		bool any = false;

		if (weightd_model(w, ci.model, &mi)) {
			memset(&mi, 0, sizeof(mi));
			snprintf(mi.name, sizeof(mi.name), "#%u", ci.model);
		}
		for (unsigned int t = 0; t <= WEIGHTD_TIER_MAX; t++) {
			const char *state = ps_row_state(&ci, &mi, t, o->all, &any, tier,
							 sizeof(tier));
			int err = t < WEIGHTD_TIER_MAX ? ci.tiers[t].error : 0;

			if (!state)
				continue;
			any = true;
			shown++;
			if (o->json) {
				json_t *r = json_pack("{s:s, s:s, s:s, s:s, s:I, s:i}", "model",
						      mi.name, "component", ci.name, "tier", tier,
						      "state", state, "bytes", (json_int_t)ci.nbytes,
						      "model_pins", (int)mi.pins);

				if (err)
					json_object_set_new(r, "error",
							    json_string(strerror(-err)));
				json_array_append_new(rows, r);
				continue;
			}
			printf("%-24s %-14s %-7s %-9s %-12s %12s %5u  %s\n", ctl_esc(mi.name),
			       ci.name[0] ? ctl_esc(ci.name) : "-", tier, state, "-",
			       ctl_human_bytes(ci.nbytes, size, sizeof(size)), mi.pins,
			       t < WEIGHTD_TIER_MAX && ci.tiers[t].state == WEIGHTD_FAILED ?
			       (ci.tiers[t].error == -ENOTRECOVERABLE ? "load refused until its "
				"files change or `weightctl unload`" :
				strerror(-ci.tiers[t].error)) : "-");
		}
	}
	return shown;
}

/* The lines after the table: the GPUs' use, the pins and clients. */
static void ps_footer(struct weightd *w, const struct weightd_stats *st, bool all, int shown)
{
	struct weightd_device_info gpus[CTL_GPU_LIST_MAX];
	char b1[32], b2[32];
	int n_gpus;

	if (!shown)
		printf("(nothing resident or pinned%s)\n", all ? ", no models published" : "");
	n_gpus = weightd_devices(w, gpus, CTL_GPU_LIST_MAX, NULL, 0);
	for (int i = 0; i < n_gpus && i < CTL_GPU_LIST_MAX; i++)
		printf("cuda:%u %s in use of %s budget, %u entries\n", gpus[i].ordinal,
		       ctl_human_bytes(gpus[i].used, b1, sizeof(b1)),
		       ctl_human_bytes(gpus[i].budget, b2, sizeof(b2)), gpus[i].entries);
	printf("%llu pins held by %llu clients (this one included)\n",
	       (unsigned long long)st->pins_total, (unsigned long long)st->clients);
}

int ctl_ps(struct ctl *c, int argc, char **argv)
{
	struct weightd_stats st;
	json_t *rows;
	struct ctl_dopts o;
	struct weightd *w;
	int ret, shown;

	(void)c;
	if ((ret = ctl_dparse(argc, argv, &o, "all", ps_usage)) >= 0 || optind != argc) {
		if (ret < 0)
			ps_usage(stderr);
		return ret >= 0 ? ret : CTL_USAGE;
	}
	w = ctl_open_daemon("ps", &o);
	if (!w)
		return CTL_FAIL;
	ret = weightd_stats(w, &st);
	if (ret) {
		ret = ctl_failed("ps", &o, ret);
		goto out;
	}
	if (!o.json)
		printf("%-24s %-14s %-7s %-9s %-12s %12s %5s  %s\n", "MODEL", "COMPONENT", "TIER",
		       "STATE", "FORM", "SIZE", "PINS", "LAST USE");
	rows = json_array();
	shown = ps_cache(w, &o, rows);
	if (shown < 0) {
		json_decref(rows);
		ret = ctl_failed("ps", &o, shown);
		goto out;
	}
	shown += ps_registry(w, &o, rows);
	if (o.json) {
		ctl_print_json(json_pack("{s:o, s:I, s:I}", "components", rows, "pins",
					 (json_int_t)st.pins_total, "clients",
					 (json_int_t)st.clients));
	} else {
		json_decref(rows);
		ps_footer(w, &st, o.all, shown);
	}
	ret = CTL_OK;
out:
	weightd_detach(w);
	return ret;
}
