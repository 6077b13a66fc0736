/*
 * weightctl status: whether a daemon answers on the socket, and what it runs with: its pid,
 * clients, models, host cache and pages, registry use, read path, catalog, GPUs and active
 * alerts.
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

/*
 * The daemon's read path in words: "io_uring, fixed buffers (N registered)" or why not, e.g.
 * io_uring refused to register 32 MiB of staging buffers: Cannot allocate memory; the
 * locked-memory limit (RLIMIT_MEMLOCK) is 8.00 MiB.
 */
static void io_path_text(const struct weightd_daemon_info *di, char *buf, size_t size)
{
	char b1[32], b2[32];

	if (di->flags & WEIGHTD_INFO_NO_LOADER) {
		snprintf(buf, size, "no io_uring loader");
		return;
	}
	if (di->flags & WEIGHTD_INFO_FIXED_BUFFERS) {
		snprintf(buf, size, "io_uring, fixed buffers (%s registered)%s",
			 ctl_human_bytes(di->staging_bytes, b1, sizeof(b1)),
			 di->flags & WEIGHTD_INFO_FIXED_FILES ? ", fixed files" : "");
		return;
	}
	snprintf(buf, size, "io_uring without fixed buffers: registering %s of staging buffers "
		 "failed (%s)%s%s%s", ctl_human_bytes(di->staging_bytes, b1, sizeof(b1)),
		 strerror(-di->fixed_buffers_error),
		 di->fixed_buffers_error == -ENOMEM ? "; the locked-memory limit (RLIMIT_MEMLOCK) is "
						       : "",
		 di->fixed_buffers_error != -ENOMEM ? "" :
		 di->memlock_limit == UINT64_MAX ? "unlimited" :
		 ctl_human_bytes(di->memlock_limit, b2, sizeof(b2)),
		 di->fixed_buffers_error == -ENOMEM ? ": raise it (LimitMEMLOCK=, ulimit -l)" : "");
}

static json_t *io_json(const struct weightd_daemon_info *di)
{
	char why[256];

	io_path_text(di, why, sizeof(why));
	return json_pack("{s:b, s:b, s:i, s:i, s:I, s:I, s:s}", "fixed_buffers",
			 !!(di->flags & WEIGHTD_INFO_FIXED_BUFFERS), "fixed_files",
			 !!(di->flags & WEIGHTD_INFO_FIXED_FILES), "fixed_buffers_errno",
			 -di->fixed_buffers_error, "fixed_files_errno", -di->fixed_files_error,
			 "memlock_limit", di->memlock_limit == UINT64_MAX ? (json_int_t)-1 :
			 (json_int_t)di->memlock_limit, "staging_bytes",
			 (json_int_t)di->staging_bytes, "path", why);
}

/*
 * The words for the host cache's pages. On 4 KiB pages, says so when shmem THP is off on this
 * machine (where weightctl runs, which is the daemon's in the usual case): the one setting
 * that gives the arena huge pages without reserving hugetlb pages (docs/config.md).
 */
static const char *pages_text(uint32_t kind)
{
	char buf[128] = "";
	FILE *f;

	if (kind == WEIGHTD_PAGES_HUGETLB)
		return "hugetlb";
	if (kind == WEIGHTD_PAGES_THP)
		return "transparent huge pages";
	f = fopen("/sys/kernel/mm/transparent_hugepage/shmem_enabled", "re");
	if (f) {
		if (!fgets(buf, sizeof(buf), f))
			buf[0] = '\0';
		fclose(f);
	}
	if (strstr(buf, "[never]") || strstr(buf, "[deny]"))
		return "4 KiB (no huge pages: shmem THP is off in "
		       "/sys/kernel/mm/transparent_hugepage/shmem_enabled; docs/config.md, "
		       "\"Huge pages\")";
	return "4 KiB (no huge pages on this machine)";
}

static void status_usage(FILE *out)
{
	fprintf(out,
		"usage: weightctl status [--socket PATH] [--json]\n\n"
		"Says whether a weightd daemon answers on the socket, and shows its pid, its\n"
		"clients, the models it publishes and the host cache it uses, with the size and\n"
		"kind of the pages behind it (4k, thp or hugetlb), how it reads model files\n"
		"(io_uring with fixed buffers, or why not: a locked-memory limit too small for\n"
		"them, for instance) and where its catalog is.\n\n"
		"  --socket PATH  the daemon's socket (default $WEIGHTD_SOCKET, else the per-user\n"
		"                 runtime directory)\n"
		"  --json         one JSON object\n\n"
		"A daemon that does not answer within $WEIGHTD_REQUEST_TIMEOUT_MS (default: the\n"
		"5 s hello timeout) is reported as \"not responding\".\n\n"
		"Exit status: 0 the daemon answers, 1 no daemon, not responding or it failed,\n"
		"2 usage error.\n");
}


static const char *gpu_kind(const struct weightd_device_info *g)
{
	return g->kind == WEIGHTD_DEVICE_EMULATED ? "emulated" : "cuda";
}

/*
 * How host -> VRAM copies run on @g, in words: "staged through page-locked slots, io_uring
 * fixed buffers", or what is degraded and why (the errno of the step that failed).
 */
static const char *copy_path(const struct weightd_device_info *g, char *buf, size_t size)
{
	size_t n = 0;

	if (g->flags & WEIGHTD_DEVICE_F_NO_STAGING) {
		snprintf(buf, size, "degraded: no staging ring (host copies from pageable memory, "
			 "no disk streaming)");
		return buf;
	}
	if (!(g->flags & (WEIGHTD_DEVICE_F_SLOTS_PAGEABLE | WEIGHTD_DEVICE_F_NO_FIXED_BUFFERS |
			  WEIGHTD_DEVICE_F_OFF_NODE))) {
		snprintf(buf, size, "staged through page-locked slots, io_uring fixed buffers");
		return buf;
	}
	n += (size_t)snprintf(buf + n, size - n, "degraded:");
	if (n < size && (g->flags & WEIGHTD_DEVICE_F_SLOTS_PAGEABLE))
		n += (size_t)snprintf(buf + n, size - n, " slots not page-locked (%s);",
				      strerror(-g->locked_err));
	if (n < size && (g->flags & WEIGHTD_DEVICE_F_NO_FIXED_BUFFERS))
		n += (size_t)snprintf(buf + n, size - n, " slots not io_uring fixed buffers (%s);",
				      strerror(-g->fixed_err));
	if (n < size && (g->flags & WEIGHTD_DEVICE_F_OFF_NODE))
		snprintf(buf + n, size - n, " slots not on the GPU's NUMA node;");
	return buf;
}

/*
 * cuda:0     cuda "NVIDIA H100" numa 0, 1.2 GiB in use of 70 GiB (device 80 GiB), 3 entries,
 *            then the hits, misses and evictions, on one line.
 */
static void print_gpu(const struct weightd_device_info *g)
{
	char tier[16], b1[32], b2[32], b3[32], numa[16], path[200];

	snprintf(tier, sizeof(tier), "cuda:%u", g->ordinal);
	if (g->numa_node >= 0)
		snprintf(numa, sizeof(numa), "numa %d", g->numa_node);
	else
		snprintf(numa, sizeof(numa), "numa none");
	printf("%-10s %s \"%s\" %s, %s in use of %s (device %s), %u entries, %llu hits, "
	       "%llu misses, %llu evictions\n", tier, gpu_kind(g), ctl_esc(g->name), numa,
	       ctl_human_bytes(g->used, b1, sizeof(b1)), ctl_human_bytes(g->budget, b2, sizeof(b2)),
	       ctl_human_bytes(g->total_bytes, b3, sizeof(b3)), g->entries,
	       (unsigned long long)g->hits, (unsigned long long)g->misses,
	       (unsigned long long)g->evictions);
	printf("%-10s host copies: %s\n", "", copy_path(g, path, sizeof(path)));
}

static json_t *gpu_json(const struct weightd_device_info *g)
{
	char path[200];

	return json_pack("{s:i, s:s, s:s, s:i, s:I, s:I, s:I, s:i, s:I, s:I, s:I, s:I, s:I, s:s, "
			 "s:i}",
			 "ordinal", (int)g->ordinal, "kind", gpu_kind(g), "name", g->name,
			 "numa_node", (int)g->numa_node, "total_bytes", (json_int_t)g->total_bytes,
			 "budget", (json_int_t)g->budget, "used", (json_int_t)g->used,
			 "entries", (int)g->entries, "hits", (json_int_t)g->hits,
			 "misses", (json_int_t)g->misses, "evictions", (json_int_t)g->evictions,
			 "evict_bytes", (json_int_t)g->evict_bytes,
			 "load_bytes", (json_int_t)g->load_bytes,
			 "copy_path", copy_path(g, path, sizeof(path)), "copy_flags", (int)g->flags);
}

/* What status shows, gathered before it is printed. */
struct status_view {
	struct weightd *w;
	struct weightd_stats st;
	struct weightd_device_info gpus[CTL_GPU_LIST_MAX];
	struct weightd_daemon_info di;
	struct weightd_registry_usage ru;
	char gpu_why[256], alert_line[256], info_why[256];
	json_t *alerts;
	int n_gpus, info_ret, models, pid;
};

/* Everything but the counters (v->st, read first): models, GPUs, alerts, registry, I/O. */
static void status_gather(struct status_view *v)
{
	struct weightd_metrics mt;

	v->models = ctl_count_models(v->w);
	v->pid = weightd_daemon_pid(v->w);
	v->n_gpus = weightd_devices(v->w, v->gpus, CTL_GPU_LIST_MAX, v->gpu_why,
				    sizeof(v->gpu_why));
	/* Active alerts (a rebuilt catalog, a budget nearly full): what an operator must see. */
	if (weightd_metrics(v->w, &mt) == 0) {
		for (unsigned int i = 0; i < WEIGHTD_ALERT_KINDS; i++) {
			size_t len = strlen(v->alert_line);

			if (!mt.alerts_active[i])
				continue;
			json_array_append_new(v->alerts, json_string(weightd_alert_name(i)));
			snprintf(v->alert_line + len, sizeof(v->alert_line) - len, "%s%s",
				 v->alert_line[0] ? ", " : "", weightd_alert_name(i));
		}
	}
	weightd_registry_usage(v->w, &v->ru);
	v->info_ret = weightd_daemon_info(v->w, &v->di);
	if (v->info_ret)
		snprintf(v->info_why, sizeof(v->info_why), "%s", weightd_last_error());
}

/* status --json: one object. Takes v->alerts. */
static void status_json(struct status_view *v)
{
	const struct weightd_stats *st = &v->st;
	const struct weightd_registry_usage *ru = &v->ru;
	json_t *ga = json_array(), *jo;

	for (int i = 0; i < v->n_gpus && i < CTL_GPU_LIST_MAX; i++)
		json_array_append_new(ga, gpu_json(&v->gpus[i]));
	jo = json_pack("{s:b, s:s, s:i, s:I, s:I, s:i, s:I, s:I, s:I, s:s, s:I, s:f, s:o, s:s, "
		       "s:o}",
		       "daemon", 1, "socket", weightd_socket_path(v->w), "pid", v->pid,
		       "clients", (json_int_t)st->clients, "pins", (json_int_t)st->pins_total,
		       "models", v->models, "host_budget", (json_int_t)st->host_budget,
		       "host_bytes", (json_int_t)st->host_bytes,
		       "host_page_size", (json_int_t)st->host_page_size,
		       "host_pages", weightd_pages_name(st->host_page_kind),
		       "requests", (json_int_t)st->requests_total,
		       "uptime_s", (double)st->uptime_ns / 1e9, "gpus", ga,
		       "gpu_tier", v->n_gpus > 0 ? "available" : v->n_gpus == 0 ? v->gpu_why :
		       weightd_last_error(), "alerts_active", v->alerts);
	v->alerts = NULL;
	/* Capacity use: the registry is sized at start (docs/security.md). */
	json_object_set_new(jo, "registry",
			    json_pack("{s:i, s:i, s:i, s:i, s:i, s:i, s:I, s:I}",
				      "models", (int)ru->models, "model_cap", (int)ru->model_cap,
				      "components", (int)ru->components,
				      "component_cap", (int)ru->component_cap,
				      "tensors", (int)ru->tensors, "tensor_cap", (int)ru->tensor_cap,
				      "names_used", (json_int_t)ru->names_used,
				      "names_size", (json_int_t)ru->names_size));
	if (v->info_ret) {
		json_object_set_new(jo, "io", json_pack("{s:s}", "error", v->info_why));
	} else {
		json_object_set_new(jo, "io", io_json(&v->di));
		json_object_set_new(jo, "state_dir", json_string(v->di.state_dir));
	}
	ctl_print_json(jo);
}

/* status: one line per subject. */
static void status_text(const struct status_view *v)
{
	const struct weightd_stats *st = &v->st;
	const struct weightd_registry_usage *ru = &v->ru;
	char b1[32], b2[32];

	printf("daemon     running, pid %d, up %.0f s\n", v->pid, (double)st->uptime_ns / 1e9);
	printf("socket     %s\n", weightd_socket_path(v->w));
	printf("clients    %llu (including this one)\n", (unsigned long long)st->clients);
	printf("models     %d published, %llu pins held\n", v->models,
	       (unsigned long long)st->pins_total);
	printf("host cache %s in use of %s\n", ctl_human_bytes(st->host_bytes, b1, 32),
	       st->host_budget ? ctl_human_bytes(st->host_budget, b2, 32) : "no budget set");
	printf("pages      %s, %s each\n", pages_text(st->host_page_kind),
	       ctl_human_bytes(st->host_page_size, b1, 32));
	printf("registry   %u/%u models, %u/%u components, %u/%u tensors, %s/%s of long "
	       "names\n", ru->models, ru->model_cap, ru->components, ru->component_cap,
	       ru->tensors, ru->tensor_cap, ctl_human_bytes(ru->names_used, b1, 32),
	       ctl_human_bytes(ru->names_size, b2, 32));
	printf("requests   %llu served, %llu failed\n", (unsigned long long)st->requests_total,
	       (unsigned long long)st->errors_total);
	if (v->info_ret) {
		printf("reads      unknown: %s\n", v->info_why);
	} else {
		char why[256];

		io_path_text(&v->di, why, sizeof(why));
		printf("reads      %s\n", why);
		printf("catalog    %s/catalog.db\n", v->di.state_dir);
	}
	if (v->n_gpus == 0)
		printf("GPU tier   not available: %s\n", v->gpu_why);
	else if (v->n_gpus < 0)
		printf("GPU tier   unknown: %s\n", weightd_last_error());
	for (int i = 0; i < v->n_gpus && i < CTL_GPU_LIST_MAX; i++)
		print_gpu(&v->gpus[i]);
	if (v->alert_line[0])
		printf("alerts     active: %s (weightctl top shows the events)\n", v->alert_line);
}

int ctl_status(struct ctl *c, int argc, char **argv)
{
	struct status_view v = { 0 };
	struct ctl_dopts o;
	int ret;

	(void)c;
	if ((ret = ctl_dparse(argc, argv, &o, "", status_usage)) >= 0)
		return ret;
	if (optind != argc) {
		status_usage(stderr);
		return CTL_USAGE;
	}
	v.w = ctl_open_daemon("status", &o);
	if (!v.w)
		return CTL_FAIL;
	v.alerts = json_array();
	ret = weightd_stats(v.w, &v.st);
	if (ret) {
		ret = ctl_failed("status", &o, ret);
		goto out;
	}
	status_gather(&v);
	if (o.json)
		status_json(&v);
	else
		status_text(&v);
	ret = CTL_OK;
out:
	json_decref(v.alerts);
	weightd_detach(v.w);
	return ret;
}
