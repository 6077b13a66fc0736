/* weightctl unload: drop a model (or a component) from a tier. */
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

static void unload_usage(FILE *out)
{
	fprintf(out,
		"usage: weightctl unload [--socket PATH] [--tier host|cuda:N] [--component NAME]\n"
		"                        [--json] MODEL\n\n"
		"Asks the daemon to drop MODEL (or one component) from a tier (default host).\n"
		"A model that another client pins stays (exit 1, \"pinned by another client\").\n\n"
		"Exit status: 0 dropped, 1 refused or failed, 2 usage error.\n");
}

int ctl_unload(struct ctl *c, int argc, char **argv)
{
	struct ctl_dopts o;
	struct weightd *w;
	char tier[16];
	int ret, was;

	(void)c;
	if ((ret = ctl_dparse(argc, argv, &o, "tier component", unload_usage)) >= 0 ||
	    (ret = ctl_one_model(argc, argv, unload_usage)) >= 0)
		return ret;
	w = ctl_open_daemon("unload", &o);
	if (!w)
		return CTL_FAIL;
	/* The daemon answers success when there is nothing to drop; say which it was. */
	was = weightd_state(w, argv[optind], o.component, o.tier, NULL);
	ret = weightd_unload(w, argv[optind], o.component, o.tier);
	if (ret) {
		ret = ctl_failed("unload", &o, ret);
	} else {
		if (o.json) {
			json_t *j = ctl_target_json("unload", argv[optind], &o);

			json_object_set_new(j, "was_resident", json_boolean(was != WEIGHTD_ABSENT));
			ctl_print_json(j);
		} else if (was == WEIGHTD_ABSENT) {
			printf("%s: not resident on %s, nothing to unload\n", ctl_esc(argv[optind]),
			       weightd_tier_name(o.tier, tier, sizeof(tier)));
		} else {
			printf("%s: unloaded\n", ctl_esc(argv[optind]));
		}
		ret = CTL_OK;
	}
	weightd_detach(w);
	return ret;
}

