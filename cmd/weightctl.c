/* weightctl: the operator's command line. Thin: finds the verb and runs it. */
#include <stdio.h>
#include <string.h>

#include "cmd/ctl.h"
#include "core/base/log.h"

static const struct ctl_verb verbs[] = {
	{ "scan", ctl_scan, "scan model roots into the catalog" },
	{ "ls", ctl_ls, "list the models in the catalog" },
	{ "info", ctl_info, "describe a model or file, tensor by tensor" },
	{ "validate", ctl_validate, "validate safetensors files (--deep reads all data)" },
	{ "meta", ctl_meta, "get or set user metadata (tags, notes)" },
	{ "gen", ctl_gen, "generate synthetic models for tests, demos and benchmarks" },
	{ "status", ctl_status, "is the daemon up: pid, socket, clients, models, host cache" },
	{ "ps", ctl_ps, "what is resident where, and the pins held" },
	{ "state", ctl_state, "one model's (or component's) state on a tier (daemon)" },
	{ "load", ctl_load, "make a model resident on a tier (daemon)" },
	{ "unload", ctl_unload, "drop a model from a tier (daemon)" },
	{ "pin", ctl_pin, "pin a model on a tier (--hold keeps it until Ctrl-C)" },
	{ "tensor-data", ctl_tensor_data, "write a resident tensor's bytes to stdout" },
	{ "cat", ctl_cat, "deprecated name of tensor-data" },
	{ "stats", ctl_stats, "the daemon's counters" },
	{ "top", ctl_top, "live view: tiers, budgets, resident models, loads and rates" },
	{ "bench", ctl_bench, "measure a model's loads against storage, memcpy and H2D limits" },
	{ "history", ctl_history, "past `weightctl bench` runs from the catalog" },
};

static void usage(FILE *out)
{
	fprintf(out, "usage: weightctl [--state-dir DIR] [-v] VERB [options] [args]\n\n"
		     "Verbs (each has --help):\n");
	for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++)
		fprintf(out, "  %-12s %s\n", verbs[i].name, verbs[i].summary);
	fprintf(out, "\nThe catalog verbs (scan, ls, info, meta, history, bench) use the catalog of\n"
		     "the daemon that answers on --socket (else $WEIGHTD_SOCKET, else the per-user\n"
		     "socket), so that they show what it serves; with no daemon, the state\n"
		     "directory's: --state-dir, else $WEIGHTD_STATE_DIR, else\n"
		     "$XDG_STATE_HOME/weightd, else ~/.local/state/weightd. --state-dir on the\n"
		     "command line names a catalog and wins. Each says on stderr which it read.\n");
}

int main(int argc, char **argv)
{
	struct ctl c = { 0 };
	int n = 0;

	/* --state-dir and -v are accepted anywhere before "--"; the rest goes to the verb. */
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--")) {
			while (i < argc)
				argv[n++ + 1] = argv[i++];
			break;
		}
		if (!strcmp(argv[i], "--state-dir") && i + 1 < argc) {
			c.state_dir_opt = argv[++i];
		} else if (!strncmp(argv[i], "--state-dir=", 12)) {
			c.state_dir_opt = argv[i] + 12;
		} else if (!strcmp(argv[i], "-v") || !strcmp(argv[i], "--verbose")) {
			log_set_level(LOG_INFO);
		} else {
			argv[n++ + 1] = argv[i];
		}
	}
	argc = n + 1;
	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
	    !strcmp(argv[1], "help")) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? CTL_USAGE : CTL_OK;
	}
	for (size_t i = 0; i < sizeof(verbs) / sizeof(verbs[0]); i++) {
		if (!strcmp(argv[1], verbs[i].name)) {
			int rc = verbs[i].run(&c, argc - 1, argv + 1);

			ctl_done(&c);
			return rc;
		}
	}
	fprintf(stderr, "weightctl: unknown verb '%s'\n", argv[1]);
	usage(stderr);
	return CTL_USAGE;
}
