/*
 * weightctl load: make a model (or a component, or a selection of its tensors, in a form)
 * resident on a tier, with a progress bar, optionally pinned and held.
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

static void load_usage(FILE *out)
{
	fprintf(out,
		"usage: weightctl load [--socket PATH] [--tier host|cuda:N] [--component NAME]\n"
		"                      [--dtype F16|BF16] [--prefix P] [--pin [--hold]] [--json]\n"
		"                      MODEL\n\n"
		"Asks the daemon to make MODEL (or one component) resident on a tier (default\n"
		"host), with a progress bar (bytes, GB/s, ETA) on a terminal, and prints a summary:\n"
		"bytes, seconds, GB/s, and whether it was a hit (already resident). MODEL is a\n"
		"model name or a path; a path the daemon does not know yet is scanned first.\n"
		"  --dtype F16|BF16  store F32 tensors converted (a separate cache entry)\n"
		"  --prefix P        only the tensors whose name starts with P\n"
		"  --pin             pin it (never evicted) while this command's connection lives;\n"
		"                    with --hold the command keeps it until Ctrl-C\n"
		"The model stays resident after the command ends (until evicted or unloaded).\n\n"
		"Exit status: 0 resident, 1 the daemon refused or failed (the reason is printed),\n"
		"2 usage error.\n");
}

static void load_progress(uint64_t done, uint64_t total, void *arg)
{
	ctl_progress_update(arg, done, total);
}


/* Whether a host cache entry of model @id holds the bytes of files that changed since. */
static bool has_stale_copy(struct weightd *w, uint32_t id)
{
	struct weightd_cache_entry ce[64];
	uint32_t start = 0, n = 0;
	int total;

	do {
		total = weightd_cache_list(w, start, ce, sizeof(ce) / sizeof(ce[0]), &n);
		if (total < 0)
			return false;
		for (uint32_t i = 0; i < n; i++)
			if (ce[i].model == id && (ce[i].flags & WEIGHTD_CACHE_STALE))
				return true;
		start += n;
	} while (n && start < (uint32_t)total);
	return false;
}

/*
 * A MODEL that is an existing path and that the daemon does not know: has the daemon scan
 * it (a file, or a model directory), so that LOAD can name it by path. Returns 0, or the
 * error of the lookup or the scan.
 */
static int register_path(struct weightd *w, const char *arg, char *abs, size_t size)
{
	struct stat sb;
	uint32_t id;
	int ret;

	if (stat(arg, &sb) < 0 || !realpath(arg, abs) || strlen(abs) >= size)
		return -ENOENT;
	ret = weightd_lookup(w, abs, &id);
	if (ret != -ENOENT)
		return ret;
	ret = weightd_scan(w, abs, NULL, NULL);
	if (ret < 0)
		return ret;
	return weightd_lookup(w, abs, &id);
}

int ctl_load(struct ctl *c, int argc, char **argv)
{
	struct weightd_load_result res = { 0 };
	struct weightd_load_opts lo = { 0 };
	struct ctl_progress prog;
	struct ctl_dopts o;
	struct weightd *w;
	const char *model;
	char label[300], abs[PATH_MAX], b1[32], b2[32];
	double secs, gbps;
	uint32_t id;
	bool stale;
	int ret;

	(void)c;
	if ((ret = ctl_dparse(argc, argv, &o, "tier component pin hold dtype prefix", load_usage)) >= 0 ||
	    (ret = ctl_one_model(argc, argv, load_usage)) >= 0)
		return ret;
	if (o.hold && !o.pin) {
		ctl_err("load", "--hold needs --pin");
		return CTL_USAGE;
	}
	model = argv[optind];
	w = ctl_open_daemon("load", &o);
	if (!w)
		return CTL_FAIL;
	/* A name the registry has wins; otherwise an existing path is registered. */
	if (weightd_lookup(w, model, NULL) == -ENOENT && strchr(model, '/')) {
		ret = register_path(w, model, abs, sizeof(abs));
		if (ret) {
			ret = ctl_failed("load", &o, ret);
			goto out;
		}
		model = abs;
	}
	lo.dtype = o.dtype;
	lo.prefix = o.prefix;
	/* Said after the load: it replaces a copy older than the files. */
	stale = weightd_lookup(w, model, &id) == 0 && has_stale_copy(w, id);
	snprintf(label, sizeof(label), "load %s", ctl_esc(argv[optind]));
	ctl_progress_begin(&prog, label, true);
	ret = weightd_load_ex(w, model, o.component, o.tier, o.pin ? WEIGHTD_LOAD_PIN : 0, &lo,
			      load_progress, &prog, &res);
	if (ret) {
		if (prog.last_ns)
			fputc('\n', stderr);
		ret = ctl_failed("load", &o, ret);
		goto out;
	}
	ctl_progress_end(&prog, res.read_bytes ? res.read_bytes : res.bytes,
			 res.read_bytes ? res.read_bytes : res.bytes);
	secs = (double)res.elapsed_ns / 1e9;
	gbps = secs > 0 ? (double)(res.read_bytes ? res.read_bytes : res.bytes) / secs / 1e9 : 0;
	if (o.json) {
		json_t *j = ctl_target_json("load", argv[optind], &o);

		json_object_set_new(j, "stale", json_boolean(stale));
		json_object_set_new(j, "bytes", json_integer((json_int_t)res.bytes));
		json_object_set_new(j, "read_bytes", json_integer((json_int_t)res.read_bytes));
		json_object_set_new(j, "seconds", json_real(secs));
		json_object_set_new(j, "gbps", json_real(gbps));
		json_object_set_new(j, "hit", json_boolean(res.hit));
		json_object_set_new(j, "pinned", json_boolean(o.pin));
		ctl_print_json(j);
	} else {
		printf("%s%s%s: %s resident in %.3f s, %.2f GB/s, %s\n", ctl_esc(argv[optind]),
		       o.component ? "/" : "", o.component ? ctl_esc(o.component) : "",
		       ctl_human_bytes(res.bytes, b1, sizeof(b1)), secs, gbps,
		       res.hit ? "hit (already resident)" : "miss");
		if (stale)
			printf("stale: the resident copy was older than its files (changed since "
			       "it was loaded); this load used the files as they are now\n");
		if (res.read_bytes)
			printf("read %s from disk\n", ctl_human_bytes(res.read_bytes, b2,
								      sizeof(b2)));
	}
	fflush(stdout);
	ret = CTL_OK;
	if (o.pin && o.hold) {
		if (!o.json)
			printf("pinned; holding the pin until Ctrl-C\n");
		fflush(stdout);
		if (!ctl_hold(w)) {
			ctl_err("load", "the daemon at %s went away; the pin is gone",
				weightd_socket_path(w));
			ret = CTL_FAIL;
		}
	}
out:
	weightd_detach(w);
	return ret;
}

