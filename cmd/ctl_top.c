/*
 * weightctl top: a live view of the daemon, redrawn in place like top(1) or nvtop.
 *
 * Each frame reads the registry segment the daemon shares with every client (models and
 * components with their per-tier states and progress: no round trip) and makes one STATS
 * request (clients, pins, budgets, counters), so watching costs the daemon one request per
 * refresh. Rates are differences between two frames: a load's bytes done, the daemon's
 * loaded bytes and requests.
 *
 * On a terminal the frame is drawn with ANSI escapes in the alternate screen (the shell's
 * screen comes back on exit) and stdin is put in non-canonical, no-echo mode to read `q`;
 * both are restored however the loop ends. Without a terminal on stdout, frames are printed
 * one after the other as plain text (like `top -b`), or as one JSON object per line with
 * --json; --once prints a single frame and exits.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "weightd.h"

#include "cmd/ctl.h"
#include "core/base/log.h"
#include "core/base/common.h"
#include "shm/attach.h"

#define MAX_INTERVAL_S 3600.0
#define TOP_EVENTS 8		/* recent events shown (the registry keeps 64) */

struct topts {
	const char *socket;
	double interval_s;
	bool once;
	bool json;
};

/* One component on one tier that is not absent, in this frame. */
struct entry {
	uint32_t model, comp, tier, state;
	int32_t error;
	uint64_t nbytes, done, total;
	double rate;		/* bytes/s while loading; NAN until two frames saw it */
	const char *comp_name;
};

/* Per-tier totals of one frame. */
struct tier_sum {
	bool seen;
	uint32_t resident, loading, failed;
	uint64_t bytes;		/* nbytes of the components resident on it */
	double rate;		/* sum of the loading rates known */
};

struct frame {
	uint64_t now_ns;
	double dt;		/* seconds since the previous frame; 0 for the first */
	int pid;
	struct weightd_stats st;
	struct weightd_model_info *models;
	size_t n_models, cap_models;
	struct weightd_component_info *comps;
	size_t n_comps, cap_comps;
	struct entry *ents;
	size_t n_ents, cap_ents;
	struct tier_sum tiers[WEIGHTD_TIER_MAX];
	double req_rate, load_rate;	/* NAN for the first frame */
	bool have_metrics;		/* the registry has a metrics block: met, events */
	struct weightd_metrics met;
	struct weightd_event events[TOP_EVENTS];
	size_t n_events;
};

static volatile sig_atomic_t stop_sig, winch;

static void on_signal(int sig)
{
	if (sig == SIGWINCH)
		winch = 1;
	else
		stop_sig = sig;
}

static void usage(FILE *out)
{
	fprintf(out,
		"usage: weightctl top [--socket PATH] [--interval SECONDS] [--once] [--json]\n\n"
		"A live view of the daemon, refreshed in place: the tiers with their budgets and\n"
		"use, the models, the components resident or loading on each tier with the load\n"
		"rates (bytes per second between two refreshes) and ETA, the clients, pins and\n"
		"request counters, latency percentiles (ring round trip, host loads), errors by\n"
		"class, host cache fragmentation and NUMA placement, alert counts and the recent\n"
		"alert events. It reads the daemon's shared registry (metrics and events included)\n"
		"and makes one STATS request per refresh. q or Ctrl-C quits.\n\n"
		"  --socket PATH       the daemon's socket (default $WEIGHTD_SOCKET, else the\n"
		"                      per-user runtime directory)\n"
		"  --interval SECONDS  time between refreshes, may be fractional (default 1)\n"
		"  --once              print one frame and exit (rates need two frames: none)\n"
		"  --json              one JSON object per frame, one per line\n\n"
		"When stdout is not a terminal, frames are printed one after another.\n"
		"Exit status: 0, 1 no daemon or it went away, 2 usage error.\n");
}

static int parse(int argc, char **argv, struct topts *o)
{
	static const struct option longopts[] = {
		{ "socket", required_argument, NULL, 's' },
		{ "interval", required_argument, NULL, 'i' },
		{ "once", no_argument, NULL, '1' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ 0 },
	};
	char *end;
	int opt;

	*o = (struct topts){ .interval_s = 1.0 };
	optind = 1;
	while ((opt = getopt_long(argc, argv, "hj", longopts, NULL)) != -1) {
		switch (opt) {
		case 's': o->socket = optarg; break;
		case '1': o->once = true; break;
		case 'j': o->json = true; break;
		case 'h': usage(stdout); return CTL_OK;
		case 'i':
			errno = 0;
			o->interval_s = strtod(optarg, &end);
			if (errno || end == optarg || *end || !(o->interval_s >= 0.05) ||
			    o->interval_s > MAX_INTERVAL_S) {
				ctl_err("top", "--interval wants seconds from 0.05 to %.0f, "
					"not '%s'", MAX_INTERVAL_S, optarg);
				return CTL_USAGE;
			}
			break;
		default: usage(stderr); return CTL_USAGE;
		}
	}
	if (optind != argc) {
		ctl_err("top", "takes no operands ('%s')", argv[optind]);
		usage(stderr);
		return CTL_USAGE;
	}
	return -1;
}

/* Grows @*arr (of @size-byte elements) to hold one more than @n. Returns false on ENOMEM. */
static bool reserve(void *arr, size_t *cap, size_t n, size_t size)
{
	void **p = arr;
	void *np;

	if (n < *cap)
		return true;
	np = realloc(*p, (*cap ? *cap * 2 : 64) * size);
	if (!np)
		return false;
	*p = np;
	*cap = *cap ? *cap * 2 : 64;
	return true;
}

/* The previous frame's entry for (comp, tier), found by bisection (entries are in order). */
static const struct entry *find_prev(const struct frame *prev, uint32_t comp, uint32_t tier)
{
	size_t lo = 0, hi = prev->n_ents;
	uint64_t key = (uint64_t)comp << 8 | tier;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		uint64_t k = (uint64_t)prev->ents[mid].comp << 8 | prev->ents[mid].tier;

		if (k == key)
			return &prev->ents[mid];
		if (k < key)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

static double delta_rate(uint64_t now, uint64_t before, double dt)
{
	return dt > 0 && now >= before ? (double)(now - before) / dt : NAN;
}

/*
 * Reads one frame: STATS (the round trip), then every model and component record from the
 * registry. @prev (its first frame has now_ns 0) gives the rates. Returns 0 or the error of
 * weightd_stats() (the registry reads cannot fail for a live daemon except with -EAGAIN,
 * which ends the listing early for this frame, or -EBADMSG, which is reported).
 */
static int read_frame(struct weightd *w, const struct frame *prev, struct frame *f)
{
	int ret;

	f->n_models = f->n_comps = f->n_ents = 0;
	memset(f->tiers, 0, sizeof(f->tiers));
	ret = weightd_stats(w, &f->st);
	if (ret)
		return ret;
	f->now_ns = wd_now_ns();
	f->dt = prev->now_ns ? (double)(f->now_ns - prev->now_ns) / 1e9 : 0;
	f->pid = weightd_daemon_pid(w);
	f->req_rate = delta_rate(f->st.requests_total, prev->st.requests_total, f->dt);
	f->load_rate = delta_rate(f->st.load_bytes, prev->st.load_bytes, f->dt);
	f->tiers[WEIGHTD_TIER_HOST].seen = true;
	/* Metrics and events come from the registry mapping itself: no request. */
	f->have_metrics = weightd_metrics(w, &f->met) == 0;
	f->n_events = 0;
	if (f->have_metrics) {
		ret = weightd_events(w, f->events, TOP_EVENTS);
		f->n_events = ret > 0 ? (size_t)ret : 0;
	}

	for (;;) {
		if (!reserve(&f->models, &f->cap_models, f->n_models, sizeof(*f->models)))
			return -ENOMEM;
		ret = weightd_model(w, (uint32_t)f->n_models, &f->models[f->n_models]);
		if (ret)
			break;
		f->n_models++;
	}
	if (ret != -ENOENT && ret != -EAGAIN)
		return ret;
	for (;;) {
		const struct weightd_component_info *ci;

		if (!reserve(&f->comps, &f->cap_comps, f->n_comps, sizeof(*f->comps)))
			return -ENOMEM;
		ret = weightd_component(w, (uint32_t)f->n_comps, &f->comps[f->n_comps]);
		if (ret)
			break;
		ci = &f->comps[f->n_comps++];
		for (uint32_t t = 0; t < WEIGHTD_TIER_MAX; t++) {
			struct tier_sum *ts = &f->tiers[t];
			const struct entry *pe;
			struct entry *e;

			if (ci->tiers[t].state == WEIGHTD_ABSENT)
				continue;
			if (!reserve(&f->ents, &f->cap_ents, f->n_ents, sizeof(*f->ents)))
				return -ENOMEM;
			e = &f->ents[f->n_ents++];
			*e = (struct entry){ .model = ci->model, .comp = ci->id, .tier = t,
					     .state = ci->tiers[t].state,
					     .error = ci->tiers[t].error, .nbytes = ci->nbytes,
					     .done = ci->tiers[t].done, .total = ci->tiers[t].total,
					     .rate = NAN };
			ts->seen = true;
			switch (e->state) {
			case WEIGHTD_RESIDENT:
				ts->resident++;
				ts->bytes += ci->nbytes;
				break;
			case WEIGHTD_LOADING:
				ts->loading++;
				pe = find_prev(prev, e->comp, t);
				if (pe && pe->state == WEIGHTD_LOADING)
					e->rate = delta_rate(e->done, pe->done, f->dt);
				if (!isnan(e->rate))
					ts->rate += e->rate;
				break;
			case WEIGHTD_FAILED:
				ts->failed++;
				break;
			default:
				break;
			}
		}
	}
	if (ret != -ENOENT && ret != -EAGAIN)
		return ret;
	/* Names are pointers into comps, set once the array stops moving. */
	for (size_t i = 0; i < f->n_ents; i++)
		f->ents[i].comp_name = f->comps[f->ents[i].comp].name;
	return 0;
}

static void frame_free(struct frame *f)
{
	free(f->models);
	free(f->comps);
	free(f->ents);
}

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

/*
 * The frame as text lines into @out. On a terminal (@cols > 0) each line is cut to the width
 * and ends with "erase to end of line", and the frame is cut to @rows lines.
 */
struct screen {
	FILE *out;
	int cols, rows, line;
	bool ansi;
	size_t hidden;
};

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

static void render_text(const struct frame *f, const struct topts *o, const char *sock,
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

static json_t *render_json(const struct frame *f, const char *sock)
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

/* ---- the loop ---------------------------------------------------------------------- */

struct term {
	bool raw;		/* stdin's settings changed (restore them) */
	bool screen;		/* in the alternate screen with the cursor hidden */
	struct termios saved;
};

static void term_restore(struct term *t)
{
	if (t->screen) {
		fputs("\033[?25h\033[?1049l", stdout);
		fflush(stdout);
		t->screen = false;
	}
	if (t->raw) {
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &t->saved);
		t->raw = false;
	}
}

/*
 * Non-canonical, no echo, so a single `q` arrives without Enter and is not shown. ISIG stays
 * on: Ctrl-C is still SIGINT, which ends the loop like `q` does.
 */
static void term_setup(struct term *t, bool screen)
{
	struct termios raw;

	if (isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &t->saved) == 0) {
		raw = t->saved;
		raw.c_lflag &= ~(tcflag_t)(ICANON | ECHO);
		raw.c_cc[VMIN] = 0;
		raw.c_cc[VTIME] = 0;
		t->raw = tcsetattr(STDIN_FILENO, TCSAFLUSH, &raw) == 0;
	}
	if (screen) {
		fputs("\033[?1049h\033[?25l", stdout);
		t->screen = true;
	}
}

/* Reads pending keys; true when one of them asks to quit. */
static bool quit_key(void)
{
	char buf[64];
	ssize_t n = read(STDIN_FILENO, buf, sizeof(buf));

	for (ssize_t i = 0; i < n; i++)
		if (buf[i] == 'q' || buf[i] == 'Q' || buf[i] == 3 /* Ctrl-C without ISIG */)
			return true;
	return false;
}

static void draw(const struct frame *f, const struct topts *o, const char *sock, bool live)
{
	if (o->json) {
		json_t *j = render_json(f, sock);
		char *txt = j ? json_dumps(j, JSON_COMPACT) : NULL;

		if (txt)
			puts(txt);
		free(txt);
		json_decref(j);
	} else if (live) {
		struct winsize ws = { 0 };
		struct screen s = { .out = stdout, .ansi = true };
		char *buf = NULL;
		size_t len = 0;

		if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0) {
			s.cols = ws.ws_col;
			s.rows = ws.ws_row;
		}
		/* The whole frame goes out in one write, so the screen never shows half of it. */
		s.out = open_memstream(&buf, &len);
		if (!s.out)
			return;
		fputs("\033[H", s.out);
		render_text(f, o, sock, &s);
		fputs("\033[J", s.out);
		fclose(s.out);
		fwrite(buf, 1, len, stdout);
		free(buf);
	} else {
		struct screen s = { .out = stdout };

		render_text(f, o, sock, &s);
	}
	fflush(stdout);
}

int ctl_top(struct ctl *c, int argc, char **argv)
{
	struct weightd_attach_opts ao = { .spin_us = 0, .client_name = "weightctl-top" };
	struct sigaction sa = { .sa_handler = on_signal };
	struct frame frames[2] = { 0 };
	struct term term = { 0 };
	struct topts o;
	struct weightd *w = NULL;
	char path[108];
	bool live;
	int ret, cur = 0;

	(void)c;
	if ((ret = parse(argc, argv, &o)) >= 0)
		return ret;
	ret = weightd_attach(o.socket, &ao, &w);
	if (ret) {
		if (attach_socket_path(o.socket, path, sizeof(path)))
			snprintf(path, sizeof(path), "%s", o.socket ? o.socket : "(default)");
		if (ret == -ENOENT || ret == -ECONNREFUSED)
			ctl_err("top", "no weightd daemon at %s (start it with `weightd "
				"--foreground`)", path);
		else
			ctl_err("top", "cannot attach to the daemon at %s: %s", path,
				weightd_last_error());
		return CTL_FAIL;
	}
	live = !o.once && !o.json && isatty(STDOUT_FILENO);
	/* No SA_RESTART: a signal must cut the wait between frames short. */
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	sigaction(SIGWINCH, &sa, NULL);
	if (!o.once)
		term_setup(&term, live);

	for (bool first = true;; first = false) {
		struct frame *f = &frames[cur], *prev = &frames[cur ^ 1];
		struct pollfd p[2] = {
			{ .fd = weightd_fd(w), .events = POLLRDHUP },
			{ .fd = STDIN_FILENO, .events = POLLIN },
		};
		uint64_t deadline;

		ret = read_frame(w, prev, f);
		if (ret)
			break;
		if (!first && !o.json && !live)
			putchar('\n');
		draw(f, &o, weightd_socket_path(w), live);
		if (o.once)
			break;
		/* Wait for the next refresh, a key, a resize, a signal or the daemon's hang-up. */
		deadline = f->now_ns + (uint64_t)(o.interval_s * 1e9);
		while (!stop_sig && !winch) {
			uint64_t now = wd_now_ns();
			int n;

			if (now >= deadline)
				break;
			n = poll(p, term.raw ? 2 : 1, (int)((deadline - now + 999999) / 1000000));
			if (n > 0 && (p[0].revents & (POLLRDHUP | POLLHUP | POLLERR))) {
				ret = -ECONNRESET;
				break;
			}
			if (n > 0 && (p[1].revents & POLLIN) && quit_key())
				stop_sig = SIGINT;
		}
		winch = 0;
		if (ret || stop_sig)
			break;
		cur ^= 1;
	}
	term_restore(&term);
	if (ret == -ECONNRESET || ret == -ESHUTDOWN)
		ctl_err("top", "the daemon at %s went away", weightd_socket_path(w));
	else if (ret)
		ctl_err("top", "%s", weightd_last_error()[0] ? weightd_last_error() :
			strerror(-ret));
	frame_free(&frames[0]);
	frame_free(&frames[1]);
	weightd_detach(w);
	return ret ? CTL_FAIL : CTL_OK;
}
