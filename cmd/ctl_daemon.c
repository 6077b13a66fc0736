/*
 * What the weightctl verbs that talk to a running daemon share (status, ps, load, unload,
 * pin, state, tensor-data, stats, and scan --daemon): their options, attaching with the
 * message an operator needs when no daemon answers, reporting a failed call, and holding a
 * pin until Ctrl-C. Each verb lives in its own cmd/ctl_<verb>.c.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "weightd.h"

#include "cmd/ctl.h"
#include "shm/attach.h"

enum { OPT_SOCKET = 0x100, OPT_TIER, OPT_COMPONENT, OPT_HOLD, OPT_ALL, OPT_PIN, OPT_DTYPE,
       OPT_PREFIX };

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
int ctl_dparse(int argc, char **argv, struct ctl_dopts *o, const char *extra,
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
		{ "pin", no_argument, NULL, OPT_PIN },
		{ "dtype", required_argument, NULL, OPT_DTYPE },
		{ "prefix", required_argument, NULL, OPT_PREFIX },
		{ 0 },
	};
	int opt;

	*o = (struct ctl_dopts){ .tier = WEIGHTD_TIER_HOST };
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
		case OPT_PIN: name = "pin"; break;
		case OPT_DTYPE: name = "dtype"; break;
		case OPT_PREFIX: name = "prefix"; break;
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
		if (opt == OPT_DTYPE) {
			if (!strcmp(optarg, "F16")) {
				o->dtype = WEIGHTD_DTYPE_F16;
			} else if (!strcmp(optarg, "BF16")) {
				o->dtype = WEIGHTD_DTYPE_BF16;
			} else {
				ctl_err(argv[0], "--dtype wants F16 or BF16, not '%s'", optarg);
				return CTL_USAGE;
			}
		}
		if (opt == OPT_COMPONENT)
			o->component = optarg;
		if (opt == OPT_PREFIX)
			o->prefix = optarg;
		o->pin |= opt == OPT_PIN;
		o->hold |= opt == OPT_HOLD;
		o->all |= opt == OPT_ALL;
	}
	return -1;
}

/*
 * Attaches to the daemon. When none runs, says so in the words an operator needs (and as
 * {"daemon": false, ...} with --json) and returns NULL.
 */
struct weightd *ctl_open_daemon(const char *verb, const struct ctl_dopts *o)
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
			ctl_print_json(json_pack("{s:b, s:s, s:s}", "daemon", 0, "socket", path,
					     "error", "no daemon"));
		ctl_err(verb, "no weightd daemon at %s (start it with `weightd --foreground`)",
			path);
	} else if (ret == -ETIMEDOUT) {
		/* Stopped (SIGSTOP) or wedged: the socket is there, nothing answers. */
		if (o->json)
			ctl_print_json(json_pack("{s:b, s:s, s:s, s:s}", "daemon", 0, "socket", path,
					     "error", "not responding", "message",
					     weightd_last_error()));
		ctl_err(verb, "%s", weightd_last_error());
	} else {
		if (o->json)
			ctl_print_json(json_pack("{s:b, s:s, s:s}", "daemon", 0, "socket", path,
					     "error", weightd_last_error()));
		ctl_err(verb, "cannot attach to the daemon at %s: %s", path, weightd_last_error());
	}
	return NULL;
}

/* Reports a failed call (text on stderr, and an error object with --json). */
int ctl_failed(const char *verb, const struct ctl_dopts *o, int ret)
{
	const char *m = weightd_last_error();
	size_t n = strlen(verb);

	if (o->json)
		ctl_print_json(json_pack("{s:b, s:i, s:s, s:s}", "ok", 0, "errno", -ret, "error",
				     strerror(-ret), "message", m));
	/* The daemon's messages start with the op's name, which ctl_err() prints already. */
	if (!strncmp(m, verb, n) && m[n] == ':' && m[n + 1] == ' ')
		m += n + 2;
	ctl_err(verb, "%s", m);
	return CTL_FAIL;
}

int ctl_count_models(struct weightd *w)
{
	struct weightd_model_info m;
	int n = 0;

	while (weightd_model(w, (uint32_t)n, &m) == 0)
		n++;
	return n;
}

int ctl_one_model(int argc, char **argv, void (*usage)(FILE *))
{
	if (optind + 1 != argc) {
		ctl_err(argv[0], "wants exactly one MODEL");
		usage(stderr);
		return CTL_USAGE;
	}
	return -1;
}

json_t *ctl_target_json(const char *verb, const char *model, const struct ctl_dopts *o)
{
	char tier[16];

	return json_pack("{s:b, s:s, s:s, s:s?, s:s}", "ok", 1, "verb", verb, "model", model,
			 "component", o->component, "tier",
			 weightd_tier_name(o->tier, tier, sizeof(tier)));
}

static void on_stop(int sig)
{
	(void)sig;
}

/* Waits for SIGINT/SIGTERM, or for the daemon to hang up. Returns true on a signal. */
bool ctl_hold(struct weightd *w)
{
	struct sigaction sa = { .sa_handler = on_stop };
	struct pollfd p = { .fd = weightd_fd(w), .events = POLLIN | POLLRDHUP };
	sigset_t block, orig;
	bool got_signal;

	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
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
