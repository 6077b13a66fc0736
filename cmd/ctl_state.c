/*
 * weightctl state: one model's (or component's) load state on one tier, as the daemon sees
 * it (STATE, weightd_state()). `weightctl status` is the daemon's own status.
 */
#include <stdio.h>
#include <unistd.h>

#include <jansson.h>

#include "weightd.h"

#include "cmd/ctl.h"

static void usage(FILE *out)
{
	fprintf(out,
		"usage: weightctl state [--socket PATH] [--tier host|cuda:N] [--component NAME]\n"
		"                       [--json] MODEL\n\n"
		"Asks the daemon for the state of MODEL (or one component) on a tier (default\n"
		"host): absent, loading, resident, evicting or failed, with the bytes loaded so\n"
		"far of the total. For a whole model the worst of its components counts (failed,\n"
		"then loading, then evicting); it is resident only when every component is.\n"
		"The C call is weightd_state(); `weightctl status` is the daemon's status.\n\n"
		"Exit status: 0 (whatever the state), 1 no daemon, an unknown model or a failed\n"
		"request, 2 usage error.\n");
}

int ctl_state(struct ctl *c, int argc, char **argv)
{
	struct weightd_state_info st;
	struct ctl_dopts o;
	struct weightd *w;
	const char *model;
	char tier[16], b1[32], b2[32];
	int ret;

	(void)c;
	if ((ret = ctl_dparse(argc, argv, &o, "tier component", usage)) >= 0 ||
	    (ret = ctl_one_model(argc, argv, usage)) >= 0)
		return ret;
	model = argv[optind];
	w = ctl_open_daemon("state", &o);
	if (!w)
		return CTL_FAIL;
	ret = weightd_state(w, model, o.component, o.tier, &st);
	if (ret < 0) {
		ret = ctl_failed("state", &o, ret);
		goto out;
	}
	if (o.json) {
		json_t *j = ctl_target_json("state", model, &o);

		json_object_set_new(j, "state", json_string(weightd_state_name(st.state)));
		json_object_set_new(j, "done", json_integer((json_int_t)st.done));
		json_object_set_new(j, "total", json_integer((json_int_t)st.total));
		ctl_print_json(j);
	} else {
		printf("%s%s%s on %s: %s, %s of %s\n", ctl_esc(model), o.component ? "/" : "",
		       o.component ? ctl_esc(o.component) : "",
		       weightd_tier_name(o.tier, tier, sizeof(tier)), weightd_state_name(st.state),
		       ctl_human_bytes(st.done, b1, sizeof(b1)),
		       ctl_human_bytes(st.total, b2, sizeof(b2)));
	}
	ret = CTL_OK;
out:
	weightd_detach(w);
	return ret;
}
