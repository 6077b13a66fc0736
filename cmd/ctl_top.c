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
 *
 * This file reads the frames and runs the loop; cmd/ctl_top_render.c draws a frame, as text
 * or as JSON.
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
#include "cmd/ctl_top.h"
#include "core/base/log.h"
#include "core/base/common.h"
#include "shm/attach.h"

#define MAX_INTERVAL_S 3600.0





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
		json_t *j = ctl_top_render_json(f, sock);
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
		ctl_top_render_text(f, o, sock, &s);
		fputs("\033[J", s.out);
		fclose(s.out);
		fwrite(buf, 1, len, stdout);
		free(buf);
	} else {
		struct screen s = { .out = stdout };

		ctl_top_render_text(f, o, sock, &s);
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
