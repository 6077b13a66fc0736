/*
 * weightctl verbs that talk to a running daemon through libweightd: status, ps, load,
 * unload, pin, stats. Each accepts --socket PATH (else $WEIGHTD_SOCKET, else the per-user
 * default), --json (one JSON object on stdout) and --help.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "weightd.h"

#include "cmd/ctl.h"
#include "shm/attach.h"

/* Options every daemon verb shares, plus the ones only some use. */
struct dopts {
	const char *socket;
	const char *component;
	unsigned int tier;
	bool json;
	bool hold;
	bool all;
};

enum { OPT_SOCKET = 0x100, OPT_TIER, OPT_COMPONENT, OPT_HOLD, OPT_ALL };

static void print_json(json_t *j)
{
	char *s = json_dumps(j, JSON_COMPACT);

	if (s)
		puts(s);
	free(s);
	json_decref(j);
}

/* "host", "cuda:N" or a tier number. Returns 0 or -EINVAL. */
static int parse_tier(const char *s, unsigned int *tier)
{
	char *end;
	unsigned long n;

	if (!strcmp(s, "host")) {
		*tier = WEIGHTD_TIER_HOST;
		return 0;
	}
	if (!strncmp(s, "cuda:", 5)) {
		n = strtoul(s + 5, &end, 10);
		if (end == s + 5 || *end || n + 1 >= WEIGHTD_TIER_MAX)
			return -EINVAL;
		*tier = WEIGHTD_TIER_CUDA((unsigned int)n);
		return 0;
	}
	return -EINVAL;
}

/*
 * Parses the options of a daemon verb. @extra lists which of --tier, --component, --hold,
 * --all the verb takes. Returns -1 to go on (optind at the first operand), else an exit code.
 */
static int parse(int argc, char **argv, struct dopts *o, const char *extra,
		 void (*usage)(FILE *))
{
	static const struct option longopts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ "socket", required_argument, NULL, OPT_SOCKET },
		{ "tier", required_argument, NULL, OPT_TIER },
		{ "component", required_argument, NULL, OPT_COMPONENT },
		{ "hold", no_argument, NULL, OPT_HOLD },
		{ "all", no_argument, NULL, OPT_ALL },
		{ 0 },
	};
	int opt;

	*o = (struct dopts){ .tier = WEIGHTD_TIER_HOST };
	optind = 1;
	while ((opt = getopt_long(argc, argv, "jh", longopts, NULL)) != -1) {
		const char *name = NULL;

		switch (opt) {
		case 'j': o->json = true; continue;
		case 'h': usage(stdout); return CTL_OK;
		case OPT_SOCKET: o->socket = optarg; continue;
		case OPT_TIER: name = "tier"; break;
		case OPT_COMPONENT: name = "component"; break;
		case OPT_HOLD: name = "hold"; break;
		case OPT_ALL: name = "all"; break;
		default: usage(stderr); return CTL_USAGE;
		}
		if (!strstr(extra, name)) {
			ctl_err(argv[0], "--%s does not apply to this verb", name);
			usage(stderr);
			return CTL_USAGE;
		}
		if (opt == OPT_TIER && parse_tier(optarg, &o->tier)) {
			ctl_err(argv[0], "--tier wants host or cuda:N (N < %u), not '%s'",
				WEIGHTD_TIER_MAX - 1, optarg);
			return CTL_USAGE;
		}
		if (opt == OPT_COMPONENT)
			o->component = optarg;
		o->hold |= opt == OPT_HOLD;
		o->all |= opt == OPT_ALL;
	}
	return -1;
}

/*
 * Attaches to the daemon. When none runs, says so in the words an operator needs (and as
 * {"daemon": false, ...} with --json) and returns NULL.
 */
static struct weightd *open_daemon(const char *verb, const struct dopts *o)
{
	struct weightd_attach_opts ao = { .spin_us = 20, .client_name = "weightctl" };
	struct weightd *w = NULL;
	char path[108];
	int ret;

	ret = weightd_attach(o->socket, &ao, &w);
	if (!ret)
		return w;
	if (attach_socket_path(o->socket, path, sizeof(path)))
		snprintf(path, sizeof(path), "%s", o->socket ? o->socket : "(default socket)");
	if (ret == -ENOENT || ret == -ECONNREFUSED) {
		if (o->json)
			print_json(json_pack("{s:b, s:s, s:s}", "daemon", 0, "socket", path,
					     "error", "no daemon"));
		ctl_err(verb, "no weightd daemon at %s (start it with `weightd --foreground`)",
			path);
	} else {
		if (o->json)
			print_json(json_pack("{s:b, s:s, s:s}", "daemon", 0, "socket", path,
					     "error", weightd_last_error()));
		ctl_err(verb, "cannot attach to the daemon at %s: %s", path, weightd_last_error());
	}
	return NULL;
}

/* Reports a failed call (text on stderr, and an error object with --json). */
static int failed(const char *verb, const struct dopts *o, int ret)
{
	const char *m = weightd_last_error();
	size_t n = strlen(verb);

	if (o->json)
		print_json(json_pack("{s:b, s:i, s:s, s:s}", "ok", 0, "errno", -ret, "error",
				     strerror(-ret), "message", m));
	/* The daemon's messages start with the op's name, which ctl_err() prints already. */
	if (!strncmp(m, verb, n) && m[n] == ':' && m[n + 1] == ' ')
		m += n + 2;
	ctl_err(verb, "%s", m);
	return CTL_FAIL;
}

static int count_models(struct weightd *w)
{
	struct weightd_model_info m;
	int n = 0;

	while (weightd_model(w, (uint32_t)n, &m) == 0)
		n++;
	return n;
}

/* ---------------------------------------------------------------------------------- */
/* status                                                                             */

static void status_usage(FILE *out)
{
	fprintf(out,
		"usage: weightctl status [--socket PATH] [--json]\n\n"
		"Says whether a weightd daemon answers on the socket, and shows its pid, its\n"
		"clients, the models it publishes and the host cache it uses.\n\n"
		"  --socket PATH  the daemon's socket (default $WEIGHTD_SOCKET, else the per-user\n"
		"                 runtime directory)\n"
		"  --json         one JSON object\n\n"
		"Exit status: 0 the daemon answers, 1 no daemon or it failed, 2 usage error.\n");
}

int ctl_status(struct ctl *c, int argc, char **argv)
{
	struct weightd_stats st;
	struct dopts o;
	struct weightd *w;
	char b1[32], b2[32];
	int ret, models, pid;

	(void)c;
	if ((ret = parse(argc, argv, &o, "", status_usage)) >= 0)
		return ret;
	if (optind != argc) {
		status_usage(stderr);
		return CTL_USAGE;
	}
	w = open_daemon("status", &o);
	if (!w)
		return CTL_FAIL;
	ret = weightd_stats(w, &st);
	if (ret) {
		ret = failed("status", &o, ret);
		goto out;
	}
	models = count_models(w);
	pid = weightd_daemon_pid(w);
	if (o.json) {
		print_json(json_pack("{s:b, s:s, s:i, s:I, s:I, s:i, s:I, s:I, s:I, s:f}",
				     "daemon", 1, "socket", weightd_socket_path(w), "pid", pid,
				     "clients", (json_int_t)st.clients, "pins",
				     (json_int_t)st.pins_total, "models", models, "host_budget",
				     (json_int_t)st.host_budget, "host_bytes",
				     (json_int_t)st.host_bytes, "requests",
				     (json_int_t)st.requests_total, "uptime_s",
				     (double)st.uptime_ns / 1e9));
	} else {
		printf("daemon     running, pid %d, up %.0f s\n", pid, (double)st.uptime_ns / 1e9);
		printf("socket     %s\n", weightd_socket_path(w));
		printf("clients    %llu (including this one)\n",
		       (unsigned long long)st.clients);
		printf("models     %d published, %llu pins held\n", models,
		       (unsigned long long)st.pins_total);
		printf("host cache %s in use of %s\n", ctl_human_bytes(st.host_bytes, b1, 32),
		       st.host_budget ? ctl_human_bytes(st.host_budget, b2, 32) : "no budget set");
		printf("requests   %llu served, %llu failed\n",
		       (unsigned long long)st.requests_total, (unsigned long long)st.errors_total);
	}
	ret = CTL_OK;
out:
	weightd_detach(w);
	return ret;
}

/* ---------------------------------------------------------------------------------- */
/* ps                                                                                 */

static void ps_usage(FILE *out)
{
	fprintf(out,
		"usage: weightctl ps [--socket PATH] [--all] [--json]\n\n"
		"Shows what is resident where: one line per component and tier that is loading,\n"
		"resident, evicting or failed, read from the daemon's registry, with the pins\n"
		"all clients hold on its model (PINS). Pinned models are listed even when\n"
		"nothing of them is resident. --all also lists components on disk only.\n\n"
		"Exit status: 0, 1 no daemon or it failed, 2 usage error.\n");
}

int ctl_ps(struct ctl *c, int argc, char **argv)
{
	struct weightd_component_info ci;
	struct weightd_model_info mi;
	struct weightd_stats st;
	json_t *rows = json_array();
	struct dopts o;
	struct weightd *w;
	char tier[16], size[32];
	int ret, shown = 0;

	(void)c;
	if ((ret = parse(argc, argv, &o, "all", ps_usage)) >= 0 || optind != argc) {
		json_decref(rows);
		if (ret < 0)
			ps_usage(stderr);
		return ret >= 0 ? ret : CTL_USAGE;
	}
	w = open_daemon("ps", &o);
	if (!w) {
		json_decref(rows);
		return CTL_FAIL;
	}
	ret = weightd_stats(w, &st);
	if (ret) {
		json_decref(rows);
		ret = failed("ps", &o, ret);
		goto out;
	}
	if (!o.json)
		printf("%-24s %-14s %-7s %-9s %12s %5s  %s\n", "MODEL", "COMPONENT", "TIER",
		       "STATE", "SIZE", "PINS", "PROGRESS");
	for (uint32_t id = 0; weightd_component(w, id, &ci) == 0; id++) {
		bool any = false;

		if (weightd_model(w, ci.model, &mi)) {
			memset(&mi, 0, sizeof(mi));
			snprintf(mi.name, sizeof(mi.name), "#%u", ci.model);
		}
		for (unsigned int t = 0; t <= WEIGHTD_TIER_MAX; t++) {
			const char *state;
			uint64_t done = 0, total = 0;

			/*
			 * Tier WEIGHTD_TIER_MAX stands for "on disk only": shown with --all, and
			 * for a pinned model, whose pin matters even when nothing is resident.
			 */
			if (t == WEIGHTD_TIER_MAX) {
				if (any || (!o.all && !mi.pins))
					continue;
				snprintf(tier, sizeof(tier), "disk");
				state = "absent";
			} else {
				if (ci.tiers[t].state == WEIGHTD_ABSENT)
					continue;
				weightd_tier_name(t, tier, sizeof(tier));
				state = weightd_state_name(ci.tiers[t].state);
				done = ci.tiers[t].done;
				total = ci.tiers[t].total;
			}
			any = true;
			shown++;
			if (o.json) {
				json_t *r = json_pack("{s:s, s:s, s:s, s:s, s:I, s:I, s:I, s:i}",
						      "model", mi.name, "component", ci.name,
						      "tier", tier, "state", state, "bytes",
						      (json_int_t)ci.nbytes, "done",
						      (json_int_t)done, "total", (json_int_t)total,
						      "model_pins", (int)mi.pins);
				int err = t < WEIGHTD_TIER_MAX ? ci.tiers[t].error : 0;

				if (err)
					json_object_set_new(r, "error",
							    json_string(strerror(-err)));
				json_array_append_new(rows, r);
				continue;
			}
			printf("%-24s %-14s %-7s %-9s %12s %5u  ", mi.name,
			       ci.name[0] ? ci.name : "-", tier, state,
			       ctl_human_bytes(ci.nbytes, size, sizeof(size)), mi.pins);
			if (t < WEIGHTD_TIER_MAX && ci.tiers[t].state == WEIGHTD_LOADING && total)
				printf("%.0f%%", 100.0 * (double)done / (double)total);
			else if (t < WEIGHTD_TIER_MAX && ci.tiers[t].state == WEIGHTD_FAILED)
				printf("%s", strerror(-ci.tiers[t].error));
			putchar('\n');
		}
	}
	if (o.json) {
		print_json(json_pack("{s:o, s:I, s:I}", "components", rows, "pins",
				     (json_int_t)st.pins_total, "clients", (json_int_t)st.clients));
	} else {
		json_decref(rows);
		if (!shown)
			printf("(nothing resident or pinned%s)\n",
			       o.all ? ", no models published" : "");
		printf("%llu pins held by %llu clients (this one included)\n",
		       (unsigned long long)st.pins_total, (unsigned long long)st.clients);
	}
	ret = CTL_OK;
out:
	weightd_detach(w);
	return ret;
}

/* ---------------------------------------------------------------------------------- */
/* load, unload                                                                       */

static void load_usage(FILE *out)
{
	fprintf(out,
		"usage: weightctl load [--socket PATH] [--tier host|cuda:N] [--component NAME]\n"
		"                      [--json] MODEL\n\n"
		"Asks the daemon to make MODEL (or one component) resident on a tier (default\n"
		"host), with a progress bar on a terminal. The model stays resident after the\n"
		"command ends (until evicted or unloaded).\n\n"
		"Exit status: 0 resident, 1 the daemon refused or failed (the reason is printed),\n"
		"2 usage error.\n");
}

static void unload_usage(FILE *out)
{
	fprintf(out,
		"usage: weightctl unload [--socket PATH] [--tier host|cuda:N] [--component NAME]\n"
		"                        [--json] MODEL\n\n"
		"Asks the daemon to drop MODEL (or one component) from a tier (default host).\n"
		"A model that another client pins stays (exit 1, \"pinned by another client\").\n\n"
		"Exit status: 0 dropped, 1 refused or failed, 2 usage error.\n");
}

static void load_progress(uint64_t done, uint64_t total, void *arg)
{
	ctl_progress_update(arg, done, total);
}

static int one_model(int argc, char **argv, void (*usage)(FILE *))
{
	if (optind + 1 != argc) {
		ctl_err(argv[0], "wants exactly one MODEL");
		usage(stderr);
		return CTL_USAGE;
	}
	return -1;
}

static json_t *target_json(const char *verb, const char *model, const struct dopts *o)
{
	char tier[16];

	return json_pack("{s:b, s:s, s:s, s:s?, s:s}", "ok", 1, "verb", verb, "model", model,
			 "component", o->component, "tier",
			 weightd_tier_name(o->tier, tier, sizeof(tier)));
}

int ctl_load(struct ctl *c, int argc, char **argv)
{
	struct weightd_status st = { 0 };
	struct ctl_progress prog;
	struct dopts o;
	struct weightd *w;
	const char *model;
	char label[300];
	int ret;

	(void)c;
	if ((ret = parse(argc, argv, &o, "tier component", load_usage)) >= 0 ||
	    (ret = one_model(argc, argv, load_usage)) >= 0)
		return ret;
	model = argv[optind];
	w = open_daemon("load", &o);
	if (!w)
		return CTL_FAIL;
	snprintf(label, sizeof(label), "load %s", model);
	ctl_progress_begin(&prog, label, true);
	ret = weightd_load(w, model, o.component, o.tier, 0, load_progress, &prog);
	if (ret) {
		if (prog.last_ns)
			fputc('\n', stderr);
		ret = failed("load", &o, ret);
		goto out;
	}
	weightd_status(w, model, o.component, o.tier, &st);
	ctl_progress_end(&prog, st.total, st.total);
	if (o.json) {
		json_t *j = target_json("load", model, &o);

		json_object_set_new(j, "state", json_string(weightd_state_name(st.state)));
		json_object_set_new(j, "bytes", json_integer((json_int_t)st.total));
		print_json(j);
	} else {
		printf("%s%s%s: %s\n", model, o.component ? "/" : "",
		       o.component ? o.component : "", weightd_state_name(st.state));
	}
	ret = CTL_OK;
out:
	weightd_detach(w);
	return ret;
}

int ctl_unload(struct ctl *c, int argc, char **argv)
{
	struct dopts o;
	struct weightd *w;
	char tier[16];
	int ret, was;

	(void)c;
	if ((ret = parse(argc, argv, &o, "tier component", unload_usage)) >= 0 ||
	    (ret = one_model(argc, argv, unload_usage)) >= 0)
		return ret;
	w = open_daemon("unload", &o);
	if (!w)
		return CTL_FAIL;
	/* The daemon answers success when there is nothing to drop; say which it was. */
	was = weightd_status(w, argv[optind], o.component, o.tier, NULL);
	ret = weightd_unload(w, argv[optind], o.component, o.tier);
	if (ret) {
		ret = failed("unload", &o, ret);
	} else {
		if (o.json) {
			json_t *j = target_json("unload", argv[optind], &o);

			json_object_set_new(j, "was_resident", json_boolean(was != WEIGHTD_ABSENT));
			print_json(j);
		} else if (was == WEIGHTD_ABSENT) {
			printf("%s: not resident on %s, nothing to unload\n", argv[optind],
			       weightd_tier_name(o.tier, tier, sizeof(tier)));
		} else {
			printf("%s: unloaded\n", argv[optind]);
		}
		ret = CTL_OK;
	}
	weightd_detach(w);
	return ret;
}

/* ---------------------------------------------------------------------------------- */
/* pin                                                                                */

static void pin_usage(FILE *out)
{
	fprintf(out,
		"usage: weightctl pin [--socket PATH] [--tier host|cuda:N] [--component NAME]\n"
		"                     [--hold] [--json] MODEL\n\n"
		"Pins MODEL (or one component) on a tier so that the daemon never evicts it.\n"
		"A pin belongs to the client connection that took it and ends with it. Without\n"
		"--hold the command checks that the pin can be taken and exits, which releases\n"
		"it; with --hold it keeps the connection, and the pin, until Ctrl-C or SIGTERM\n"
		"(or until the daemon goes away, which exits 1).\n\n"
		"Exit status: 0, 1 the daemon refused or failed, 2 usage error.\n");
}

/* Waits for SIGINT/SIGTERM, or for the daemon to hang up. Returns true on a signal. */
static bool hold(struct weightd *w)
{
	struct pollfd p = { .fd = weightd_fd(w), .events = POLLIN | POLLRDHUP };
	sigset_t block, orig;
	bool got_signal;

	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	sigprocmask(SIG_BLOCK, &block, &orig);
	/* The signals stay blocked except inside ppoll(), so neither can be missed. */
	sigdelset(&orig, SIGINT);
	sigdelset(&orig, SIGTERM);
	for (;;) {
		int ret = ppoll(&p, 1, NULL, &orig);

		if (ret > 0) {
			got_signal = false;
			break;
		}
		if (ret < 0 && errno == EINTR) {
			got_signal = true;
			break;
		}
	}
	return got_signal;
}

static void on_stop(int sig)
{
	(void)sig;
}

int ctl_pin(struct ctl *c, int argc, char **argv)
{
	struct sigaction sa = { .sa_handler = on_stop };
	struct dopts o;
	struct weightd *w;
	const char *model;
	char tier[16];
	int ret;

	(void)c;
	if ((ret = parse(argc, argv, &o, "tier component hold", pin_usage)) >= 0 ||
	    (ret = one_model(argc, argv, pin_usage)) >= 0)
		return ret;
	model = argv[optind];
	w = open_daemon("pin", &o);
	if (!w)
		return CTL_FAIL;
	weightd_tier_name(o.tier, tier, sizeof(tier));
	ret = weightd_pin(w, model, o.component, o.tier);
	if (ret) {
		ret = failed("pin", &o, ret);
		goto out;
	}
	if (o.json) {
		json_t *j = target_json("pin", model, &o);

		json_object_set_new(j, "held", json_boolean(o.hold));
		print_json(j);
		fflush(stdout);
	}
	if (!o.hold) {
		if (!o.json)
			printf("pinned %s on %s, released again as this command exits: a pin lives "
			       "as long as the client connection that took it (use --hold to keep "
			       "it until Ctrl-C)\n",
			       model, tier);
		ret = CTL_OK;
		goto out;
	}
	if (!o.json)
		printf("pinned %s on %s; holding the pin until Ctrl-C\n", model, tier);
	fflush(stdout);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	if (hold(w)) {
		if (!o.json)
			printf("released %s\n", model);
		ret = CTL_OK;
	} else {
		ctl_err("pin", "the daemon at %s went away; the pin is gone",
			weightd_socket_path(w));
		ret = CTL_FAIL;
	}
out:
	weightd_detach(w);
	return ret;
}

/* ---------------------------------------------------------------------------------- */
/* stats                                                                              */

static void stats_usage(FILE *out)
{
	fprintf(out,
		"usage: weightctl stats [--socket PATH] [--json]\n\n"
		"Prints the daemon's counters: clients, ring segments, pins, requests, loads,\n"
		"evictions, cache hits and bytes.\n\n"
		"Exit status: 0, 1 no daemon or it failed, 2 usage error.\n");
}

int ctl_stats(struct ctl *c, int argc, char **argv)
{
	struct weightd_stats st;
	struct dopts o;
	struct weightd *w;
	int ret;

	(void)c;
	if ((ret = parse(argc, argv, &o, "", stats_usage)) >= 0)
		return ret;
	if (optind != argc) {
		stats_usage(stderr);
		return CTL_USAGE;
	}
	w = open_daemon("stats", &o);
	if (!w)
		return CTL_FAIL;
	ret = weightd_stats(w, &st);
	if (ret) {
		ret = failed("stats", &o, ret);
		goto out;
	}
	const struct {
		const char *name;
		uint64_t v;
	} rows[] = {
		{ "clients", st.clients },
		{ "ring_segments", st.ring_segments },
		{ "pins", st.pins_total },
		{ "models", st.models },
		{ "requests", st.requests_total },
		{ "errors", st.errors_total },
		{ "loads", st.loads },
		{ "load_bytes", st.load_bytes },
		{ "evictions", st.evictions },
		{ "evict_bytes", st.evict_bytes },
		{ "hits", st.hits },
		{ "misses", st.misses },
		{ "host_bytes", st.host_bytes },
		{ "host_budget", st.host_budget },
		{ "uptime_ns", st.uptime_ns },
	};
	json_t *j = json_object();

	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		if (o.json)
			json_object_set_new(j, rows[i].name, json_integer((json_int_t)rows[i].v));
		else
			printf("%-14s %llu\n", rows[i].name, (unsigned long long)rows[i].v);
	}
	if (o.json)
		print_json(j);
	else
		json_decref(j);
	ret = CTL_OK;
out:
	weightd_detach(w);
	return ret;
}
