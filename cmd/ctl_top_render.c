/*
 * weightctl top's drawing: one frame (cmd/ctl_top.h) as text lines, cut to the terminal when
 * there is one, or as one JSON object. Names from disk are escaped before they reach a tty.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "weightd.h"

#include "cmd/ctl.h"
#include "cmd/ctl_top.h"
#include "core/base/common.h"
#include "core/base/log.h"

static const char *model_name(const struct frame *f, uint32_t id)
{
	return id < f->n_models ? f->models[id].name : "?";
}

static const char *rate_str(double bps, char *buf, size_t size)
{
	char b[32];

	if (isnan(bps))
		return "-";
	snprintf(buf, size, "%s/s", ctl_human_bytes((uint64_t)bps, b, sizeof(b)));
	return buf;
}

static const char *duration_str(double s, char *buf, size_t size)
{
	uint64_t v = isnan(s) || s < 0 ? 0 : (uint64_t)(s + 0.5);

	if (isnan(s) || isinf(s))
		snprintf(buf, size, "-");
	else if (v < 60)
		snprintf(buf, size, "%llus", (unsigned long long)v);
	else if (v < 3600)
		snprintf(buf, size, "%llum%02llus", (unsigned long long)(v / 60),
			 (unsigned long long)(v % 60));
	else if (v < 86400)
		snprintf(buf, size, "%lluh%02llum", (unsigned long long)(v / 3600),
			 (unsigned long long)(v / 60 % 60));
	else
		snprintf(buf, size, "%llud%02lluh", (unsigned long long)(v / 86400),
			 (unsigned long long)(v / 3600 % 24));
	return buf;
}

/* "host 3/3 cuda:0 1/3": on which tiers the model's components are resident. */
static void where_str(const struct frame *f, uint32_t model, uint32_t n_comps, char *buf,
		      size_t size)
{
	uint32_t res[WEIGHTD_TIER_MAX] = { 0 }, loading = 0;
	size_t n = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < f->n_ents; i++) {
		if (f->ents[i].model != model)
			continue;
		res[f->ents[i].tier] += f->ents[i].state == WEIGHTD_RESIDENT;
		loading += f->ents[i].state == WEIGHTD_LOADING;
	}
	for (uint32_t t = 0; t < WEIGHTD_TIER_MAX && n + 1 < size; t++) {
		char tier[16];

		if (!res[t])
			continue;
		n += (size_t)snprintf(buf + n, size - n, "%s%s %u/%u", n ? " " : "",
				      weightd_tier_name(t, tier, sizeof(tier)), res[t], n_comps);
	}
	if (loading && n + 1 < size)
		n += (size_t)snprintf(buf + n, size - n, "%sloading %u", n ? ", " : "", loading);
	if (!n)
		snprintf(buf, size, "disk");
}

/* ---- text -------------------------------------------------------------------------- */


static void WD_PRINTF(2, 3) put(struct screen *s, const char *fmt, ...)
{
	char raw[1024], buf[4 * sizeof(raw)];
	va_list ap;
	size_t n;

	/*
	 * Every line ends with a newline, so a frame may use rows - 1 lines without scrolling the
	 * screen: rows - 2 of content and the "more lines" note.
	 */
	if (s->rows && s->line >= s->rows - 2) {
		s->hidden++;
		return;
	}
	va_start(ap, fmt);
	vsnprintf(raw, sizeof(raw), fmt, ap);
	va_end(ap);
	/* Model and component names come from disk: none of their bytes may drive the tty. */
	log_escape(raw, buf, sizeof(buf), 0);
	n = strlen(buf);
	while (n && buf[n - 1] == ' ')
		buf[--n] = '\0';
	if (s->cols > 0 && n > (size_t)s->cols) {
		n = (size_t)s->cols;
		/* Do not cut a UTF-8 sequence (a model name) in the middle. */
		while (n && ((unsigned char)buf[n] & 0xc0) == 0x80)
			n--;
		buf[n] = '\0';
	}
	fputs(buf, s->out);
	fputs(s->ansi ? "\033[K\n" : "\n", s->out);
	s->line++;
}

/* The samples in @h's buckets (h->count may be one update apart from them). */
static uint64_t hist_total(const struct weightd_hist *h)
{
	uint64_t n = 0;

	for (unsigned int i = 0; i < WEIGHTD_HIST_BUCKETS; i++)
		n += h->bucket[i];
	return n;
}

/*
 * The upper bound in seconds of the bucket holding quantile @q of @h (NAN when empty;
 * INFINITY for the overflow bucket): histograms keep buckets, not samples.
 */
static double hist_quantile(const struct weightd_hist *h, double q)
{
	uint64_t total = hist_total(h), cum = 0;

	if (!total)
		return NAN;
	for (unsigned int i = 0; i < WEIGHTD_HIST_BUCKETS; i++) {
		cum += h->bucket[i];
		if ((double)cum >= q * (double)total)
			return i == WEIGHTD_HIST_BUCKETS - 1 ? INFINITY : 1e-6 * (double)(1ull << i);
	}
	return INFINITY;
}

static const char *secs_str(double s, char *buf, size_t size)
{
	if (isnan(s))
		snprintf(buf, size, "-");
	else if (isinf(s))
		snprintf(buf, size, ">67s");
	else if (s < 1e-3)
		snprintf(buf, size, "%.0fus", s * 1e6);
	else if (s < 1)
		snprintf(buf, size, "%.0fms", s * 1e3);
	else
		snprintf(buf, size, "%.1fs", s);
	return buf;
}

/* The metrics block's lines: latencies, errors by class, fragmentation, NUMA, alerts. */
static void render_metrics(const struct frame *f, struct screen *s)
{
	const struct weightd_metrics *m = &f->met;
	char b1[16], b2[16], b3[16], b4[16], line[256];
	size_t o = 0;

	put(s, "latency  ring p50 %s p99 %s (%llu)  host load p50 %s p99 %s (%llu)",
	    secs_str(hist_quantile(&m->rtt, 0.5), b1, sizeof(b1)),
	    secs_str(hist_quantile(&m->rtt, 0.99), b2, sizeof(b2)),
	    (unsigned long long)hist_total(&m->rtt),
	    secs_str(hist_quantile(&m->load[WEIGHTD_TIER_HOST], 0.5), b3, sizeof(b3)),
	    secs_str(hist_quantile(&m->load[WEIGHTD_TIER_HOST], 0.99), b4, sizeof(b4)),
	    (unsigned long long)hist_total(&m->load[WEIGHTD_TIER_HOST]));
	line[0] = '\0';
	for (unsigned int i = 0; i < WEIGHTD_ERR_CLASSES && o < sizeof(line); i++)
		o += (size_t)snprintf(line + o, sizeof(line) - o, " %s %llu",
				      weightd_error_class_name(i),
				      (unsigned long long)m->errors[i]);
	put(s, "errors  %s", line);
	o = 0;
	line[0] = '\0';
	for (unsigned int i = 0; i < WEIGHTD_NUMA_SLOTS && o < sizeof(line); i++) {
		if (!m->numa_bytes[i])
			continue;
		if (i == WEIGHTD_NUMA_SLOTS - 1)
			o += (size_t)snprintf(line + o, sizeof(line) - o, " unbound %s",
					      ctl_human_bytes(m->numa_bytes[i], b1, sizeof(b1)));
		else
			o += (size_t)snprintf(line + o, sizeof(line) - o, " node%u %s", i,
					      ctl_human_bytes(m->numa_bytes[i], b1, sizeof(b1)));
	}
	put(s, "host cache  free extents %llu  largest free %s  numa%s",
	    (unsigned long long)m->free_extents,
	    ctl_human_bytes(m->largest_free, b2, sizeof(b2)), o ? line : " -");
	o = 0;
	line[0] = '\0';
	for (unsigned int i = 0; i < WEIGHTD_ALERT_KINDS && o < sizeof(line); i++)
		o += (size_t)snprintf(line + o, sizeof(line) - o, " %s %llu/%llu",
				      weightd_alert_name(i),
				      (unsigned long long)m->alerts_active[i],
				      (unsigned long long)m->alerts_total[i]);
	put(s, "alerts (active/total)%s", line);
}

/* The recent-events area: the newest events last, as the daemon wrote them. */
static void render_events(const struct frame *f, struct screen *s)
{
	put(s, "%-19s %-12s %-8s %s", "EVENT TIME", "ALERT", "STATE", "WHAT");
	for (size_t i = 0; i < f->n_events; i++) {
		const struct weightd_event *e = &f->events[i];
		time_t t = (time_t)(e->wall_ns / 1000000000);
		struct tm tm;
		char when[32];

		localtime_r(&t, &tm);
		strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
		put(s, "%-19s %-12s %-8s %s", when, weightd_alert_name(e->kind),
		    e->flags & 1 ? "RAISED" : "cleared", e->text);
	}
	if (!f->n_events)
		put(s, "(no events)");
}

void ctl_top_render_text(const struct frame *f, const struct topts *o, const char *sock,
			struct screen *s)
{
	char b1[32], b2[32], b3[32], b4[32], tier[16], line[512];
	uint32_t stale = 0;

	for (size_t i = 0; i < f->n_models; i++)
		stale += !!(f->models[i].flags & WEIGHTD_MODEL_STALE);
	put(s, "weightd pid %d  up %s  socket %s  every %.2gs%s", f->pid,
	    duration_str((double)f->st.uptime_ns / 1e9, b1, sizeof(b1)), sock, o->interval_s,
	    s->ansi ? "  (q quits)" : "");
	b1[0] = '\0';
	if (!isnan(f->req_rate))
		snprintf(b1, sizeof(b1), " (%.0f/s)", f->req_rate);
	put(s, "clients %llu  rings %llu  pins %llu  models %zu (%u stale)  requests %llu%s  "
	    "errors %llu", (unsigned long long)f->st.clients,
	    (unsigned long long)f->st.ring_segments, (unsigned long long)f->st.pins_total,
	    f->n_models, stale, (unsigned long long)f->st.requests_total, b1,
	    (unsigned long long)f->st.errors_total);
	put(s, "loads %llu (%s)  load rate %s  evictions %llu (%s)  hits %llu  misses %llu",
	    (unsigned long long)f->st.loads, ctl_human_bytes(f->st.load_bytes, b2, sizeof(b2)),
	    rate_str(f->load_rate, b3, sizeof(b3)), (unsigned long long)f->st.evictions,
	    ctl_human_bytes(f->st.evict_bytes, b4, sizeof(b4)), (unsigned long long)f->st.hits,
	    (unsigned long long)f->st.misses);
	if (f->have_metrics)
		render_metrics(f, s);
	put(s, "%s", "");

	put(s, "%-8s %12s %12s %5s %9s %8s %7s %12s", "TIER", "BUDGET", "USED", "USE%",
	    "RESIDENT", "LOADING", "FAILED", "RATE");
	for (uint32_t t = 0; t < WEIGHTD_TIER_MAX; t++) {
		const struct tier_sum *ts = &f->tiers[t];
		/* The host tier's use is the daemon's (extents, shared copies once). */
		uint64_t used = t == WEIGHTD_TIER_HOST ? f->st.host_bytes : ts->bytes;
		uint64_t budget = t == WEIGHTD_TIER_HOST ? f->st.host_budget : 0;

		if (!ts->seen)
			continue;
		snprintf(b4, sizeof(b4), "%.0f%%", budget ? 100.0 * (double)used / (double)budget :
			 0.0);
		put(s, "%-8s %12s %12s %5s %9u %8u %7u %12s", weightd_tier_name(t, tier, 16),
		    budget ? ctl_human_bytes(budget, b1, sizeof(b1)) : "-",
		    ctl_human_bytes(used, b2, sizeof(b2)), budget ? b4 : "-", ts->resident,
		    ts->loading, ts->failed,
		    ts->loading ? rate_str(ts->rate, b3, sizeof(b3)) : "-");
	}
	put(s, "%s", "");

	put(s, "%-28s %-8s %5s %12s %5s  %s", "MODEL", "ARCH", "COMPS", "SIZE", "PINS", "WHERE");
	for (size_t i = 0; i < f->n_models; i++) {
		const struct weightd_model_info *m = &f->models[i];

		where_str(f, m->id, m->n_components, line, sizeof(line));
		put(s, "%-28s %-8s %5u %12s %5u  %s%s", m->name, m->arch[0] ? m->arch : "-",
		    m->n_components, ctl_human_bytes(m->nbytes, b1, sizeof(b1)), m->pins, line,
		    m->flags & WEIGHTD_MODEL_STALE ? " (stale)" : "");
	}
	if (!f->n_models)
		put(s, "(no models published: `weightctl scan` or weightd --models DIR)");
	put(s, "%s", "");

	put(s, "%-28s %-14s %-7s %-9s %12s %-24s %12s %7s", "MODEL", "COMPONENT", "TIER", "STATE",
	    "SIZE", "PROGRESS", "RATE", "ETA");
	for (size_t i = 0; i < f->n_ents; i++) {
		const struct entry *e = &f->ents[i];
		char bar[32] = "", prog[40] = "", eta[16] = "-";

		if (e->state == WEIGHTD_LOADING && e->total) {
			double frac = (double)e->done / (double)e->total;
			int fill = (int)(frac * 10 + 0.5);

			fill = fill < 0 ? 0 : fill > 10 ? 10 : fill;
			memset(bar, '#', (size_t)fill);
			memset(bar + fill, '.', (size_t)(10 - fill));
			bar[10] = '\0';
			snprintf(prog, sizeof(prog), "[%s] %5.1f%%", bar, 100.0 * frac);
			if (!isnan(e->rate) && e->rate > 0)
				duration_str((double)(e->total - e->done) / e->rate, eta,
					     sizeof(eta));
		} else if (e->state == WEIGHTD_FAILED) {
			snprintf(prog, sizeof(prog), "%s", strerror(-e->error));
		}
		put(s, "%-28s %-14s %-7s %-9s %12s %-24s %12s %7s", model_name(f, e->model),
		    e->comp_name[0] ? e->comp_name : "-", weightd_tier_name(e->tier, tier, 16),
		    weightd_state_name(e->state), ctl_human_bytes(e->nbytes, b1, sizeof(b1)), prog,
		    e->state == WEIGHTD_LOADING ? rate_str(e->rate, b2, sizeof(b2)) : "",
		    e->state == WEIGHTD_LOADING ? eta : "");
	}
	if (!f->n_ents)
		put(s, "(nothing resident or loading)");
	if (f->have_metrics) {
		put(s, "%s", "");
		render_events(f, s);
	}
	if (s->hidden) {
		s->rows = 0;
		put(s, "... %zu more lines (a taller window shows them)", s->hidden);
	}
}

/* ---- JSON -------------------------------------------------------------------------- */

/* JSON has neither NaN nor infinity (a histogram's overflow bucket): both are null. */
static json_t *num_or_null(double v)
{
	return isnan(v) || isinf(v) ? json_null() : json_real(v);
}

/* Adds "metrics" and "events" to frame object @j. */
static void add_metrics_json(json_t *j, const struct frame *f)
{
	const struct weightd_metrics *m = &f->met;
	json_t *errors = json_object(), *alerts = json_object(), *events = json_array();
	json_t *numa = json_object();
	char name[16];

	for (unsigned int i = 0; i < WEIGHTD_ERR_CLASSES; i++)
		json_object_set_new(errors, weightd_error_class_name(i),
				    json_integer((json_int_t)m->errors[i]));
	for (unsigned int i = 0; i < WEIGHTD_ALERT_KINDS; i++)
		json_object_set_new(alerts, weightd_alert_name(i),
				    json_pack("{s:I, s:I}", "active", (json_int_t)m->alerts_active[i],
					      "total", (json_int_t)m->alerts_total[i]));
	for (unsigned int i = 0; i < WEIGHTD_NUMA_SLOTS; i++) {
		if (i == WEIGHTD_NUMA_SLOTS - 1)
			snprintf(name, sizeof(name), "unbound");
		else
			snprintf(name, sizeof(name), "%u", i);
		json_object_set_new(numa, name, json_integer((json_int_t)m->numa_bytes[i]));
	}
	for (size_t i = 0; i < f->n_events; i++) {
		const struct weightd_event *e = &f->events[i];

		json_array_append_new(events, json_pack(
			"{s:I, s:f, s:s, s:s, s:I, s:I, s:s}", "index", (json_int_t)e->index,
			"time", (double)e->wall_ns / 1e9, "kind", weightd_alert_name(e->kind),
			"state", e->flags & 1 ? "raised" : "cleared", "value", (json_int_t)e->value,
			"limit", (json_int_t)e->limit, "text", e->text));
	}
	json_object_set_new(j, "metrics", json_pack(
		"{s:I, s:o, s:o, s:I, s:o, s:o, s:o, s:I, s:I, s:o, s:o}",
		"ring_roundtrips", (json_int_t)hist_total(&m->rtt),
		"ring_p50_s", num_or_null(hist_quantile(&m->rtt, 0.5)),
		"ring_p99_s", num_or_null(hist_quantile(&m->rtt, 0.99)),
		"host_loads", (json_int_t)hist_total(&m->load[WEIGHTD_TIER_HOST]),
		"host_load_p50_s", num_or_null(hist_quantile(&m->load[WEIGHTD_TIER_HOST], 0.5)),
		"host_load_p99_s", num_or_null(hist_quantile(&m->load[WEIGHTD_TIER_HOST], 0.99)),
		"errors", errors, "free_extents", (json_int_t)m->free_extents,
		"largest_free", (json_int_t)m->largest_free, "numa_bytes", numa,
		"alerts", alerts));
	json_object_set_new(j, "events", events);
}

json_t *ctl_top_render_json(const struct frame *f, const char *sock)
{
	json_t *tiers = json_array(), *models = json_array(), *comps = json_array();
	const struct weightd_stats *st = &f->st;
	char tier[16];

	for (uint32_t t = 0; t < WEIGHTD_TIER_MAX; t++) {
		const struct tier_sum *ts = &f->tiers[t];

		if (!ts->seen)
			continue;
		json_array_append_new(tiers, json_pack(
			"{s:s, s:I, s:I, s:i, s:i, s:i, s:o}", "tier",
			weightd_tier_name(t, tier, sizeof(tier)), "budget",
			(json_int_t)(t == WEIGHTD_TIER_HOST ? st->host_budget : 0), "used",
			(json_int_t)(t == WEIGHTD_TIER_HOST ? st->host_bytes : ts->bytes),
			"resident", (int)ts->resident, "loading", (int)ts->loading, "failed",
			(int)ts->failed, "load_rate", json_real(ts->rate)));
	}
	for (size_t i = 0; i < f->n_models; i++) {
		const struct weightd_model_info *m = &f->models[i];

		json_array_append_new(models, json_pack(
			"{s:i, s:s, s:s, s:i, s:i, s:I, s:i, s:b}", "id", (int)m->id, "name",
			m->name, "arch", m->arch, "components", (int)m->n_components, "tensors",
			(int)m->n_tensors, "bytes", (json_int_t)m->nbytes, "pins", (int)m->pins,
			"stale", !!(m->flags & WEIGHTD_MODEL_STALE)));
	}
	for (size_t i = 0; i < f->n_ents; i++) {
		const struct entry *e = &f->ents[i];
		json_t *r = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:o}", "model",
				      model_name(f, e->model), "component", e->comp_name, "tier",
				      weightd_tier_name(e->tier, tier, sizeof(tier)), "state",
				      weightd_state_name(e->state), "bytes", (json_int_t)e->nbytes,
				      "done", (json_int_t)e->done, "total", (json_int_t)e->total,
				      "rate", num_or_null(e->rate));

		if (e->state == WEIGHTD_FAILED)
			json_object_set_new(r, "error", json_string(strerror(-e->error)));
		json_array_append_new(comps, r);
	}
	json_t *j = json_pack("{s:f, s:{s:i, s:s, s:f, s:I, s:I, s:I, s:I, s:I, s:I, s:o, s:o}, "
			 "s:{s:I, s:I, s:I, s:I, s:I, s:I}, s:o, s:o, s:o}",
			 "time", (double)wd_wall_ns() / 1e9,
			 "daemon", "pid", f->pid, "socket", sock, "uptime_s",
			 (double)st->uptime_ns / 1e9, "clients", (json_int_t)st->clients,
			 "ring_segments", (json_int_t)st->ring_segments, "pins",
			 (json_int_t)st->pins_total, "models", (json_int_t)f->n_models,
			 "requests", (json_int_t)st->requests_total, "errors",
			 (json_int_t)st->errors_total, "requests_per_s", num_or_null(f->req_rate),
			 "load_bytes_per_s", num_or_null(f->load_rate),
			 "counters", "loads", (json_int_t)st->loads, "load_bytes",
			 (json_int_t)st->load_bytes, "evictions", (json_int_t)st->evictions,
			 "evict_bytes", (json_int_t)st->evict_bytes, "hits", (json_int_t)st->hits,
			 "misses", (json_int_t)st->misses,
			 "tiers", tiers, "models", models, "components", comps);

	if (j && f->have_metrics)
		add_metrics_json(j, f);
	return j;
}

