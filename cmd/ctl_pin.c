/* weightctl pin: pin a model (or a component) on a tier, for the command or until Ctrl-C. */
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

int ctl_pin(struct ctl *c, int argc, char **argv)
{
	struct ctl_dopts o;
	struct weightd *w;
	const char *model;
	char tier[16];
	int ret;

	(void)c;
	if ((ret = ctl_dparse(argc, argv, &o, "tier component hold", pin_usage)) >= 0 ||
	    (ret = ctl_one_model(argc, argv, pin_usage)) >= 0)
		return ret;
	model = argv[optind];
	w = ctl_open_daemon("pin", &o);
	if (!w)
		return CTL_FAIL;
	weightd_tier_name(o.tier, tier, sizeof(tier));
	ret = weightd_pin(w, model, o.component, o.tier);
	if (ret) {
		ret = ctl_failed("pin", &o, ret);
		goto out;
	}
	if (o.json) {
		json_t *j = ctl_target_json("pin", model, &o);

		json_object_set_new(j, "held", json_boolean(o.hold));
		ctl_print_json(j);
		fflush(stdout);
	}
	if (!o.hold) {
		if (!o.json)
			printf("pinned %s on %s, released again as this command exits: a pin lives "
			       "as long as the client connection that took it (use --hold to keep "
			       "it until Ctrl-C)\n",
			       ctl_esc(model), tier);
		ret = CTL_OK;
		goto out;
	}
	if (!o.json)
		printf("pinned %s on %s; holding the pin until Ctrl-C\n", ctl_esc(model), tier);
	fflush(stdout);
	if (ctl_hold(w)) {
		if (!o.json)
			printf("released %s\n", ctl_esc(model));
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

