/*
 * weightctl verbs that talk to a running daemon through libweightd: status, ps, load,
 * unload, pin, cat, stats. Each accepts --socket PATH (else $WEIGHTD_SOCKET, else the per-user
 * default), --json (one JSON object on stdout) and --help.
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <poll.h>
#include <limits.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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
	bool pin;
	unsigned int dtype;
	const char *prefix;
};

enum { OPT_SOCKET = 0x100, OPT_TIER, OPT_COMPONENT, OPT_HOLD, OPT_ALL, OPT_PIN, OPT_DTYPE,
       OPT_PREFIX };

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
		{ "pin", no_argument, NULL, OPT_PIN },
		{ "dtype", required_argument, NULL, OPT_DTYPE },
		{ "prefix", required_argument, NULL, OPT_PREFIX },
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
	} else if (ret == -ETIMEDOUT) {
		/* Stopped (SIGSTOP) or wedged: the socket is there, nothing answers. */
		if (o->json)
			print_json(json_pack("{s:b, s:s, s:s, s:s}", "daemon", 0, "socket", path,
					     "error", "not responding", "message",
					     weightd_last_error()));
		ctl_err(verb, "%s", weightd_last_error());
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
/* scan --daemon                                                                      */

int ctl_scan_daemon(const char *socket, const char *dir, bool json)
{
	struct dopts o = { .socket = socket, .json = json };
	char abs[PATH_MAX];
	struct weightd *w;
	int ret;

	/* The daemon resolves paths in its own working directory: send an absolute one. */
	if (dir && !realpath(dir, abs)) {
		ctl_err("scan", "%s: %s", ctl_esc(dir), strerror(errno));
		return CTL_FAIL;
	}
	w = open_daemon("scan", &o);
	if (!w)
		return CTL_FAIL;
	ret = weightd_scan(w, dir ? abs : NULL, NULL, NULL);
	if (ret < 0) {
		ret = failed("scan", &o, ret);
	} else {
		const char *m = weightd_last_error();

		if (json)
			print_json(json_pack("{s:b, s:i, s:s}", "ok", 1, "models", ret, "problems",
					     m));
		else
			printf("%d models under %s%s%s\n", ret, dir ? ctl_esc(abs) : "the roots",
			       *m ? "; " : "", *m ? ctl_esc(m) : "");
		ret = *m ? CTL_FAIL : CTL_OK;
	}
	weightd_detach(w);
	return ret;
}

/* ---------------------------------------------------------------------------------- */
/* status                                                                             */

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

#define GPU_LIST_MAX 16

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

int ctl_status(struct ctl *c, int argc, char **argv)
{
	struct weightd_device_info gpus[GPU_LIST_MAX];
	struct weightd_daemon_info di;
	char gpu_why[256] = "", alert_line[256] = "", info_why[256] = "";
	json_t *alerts = NULL;
	struct weightd_metrics mt;
	struct weightd_registry_usage ru = { 0 };
	int n_gpus, info_ret;
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
	alerts = json_array();
	ret = weightd_stats(w, &st);
	if (ret) {
		ret = failed("status", &o, ret);
		goto out;
	}
	models = count_models(w);
	pid = weightd_daemon_pid(w);
	n_gpus = weightd_devices(w, gpus, GPU_LIST_MAX, gpu_why, sizeof(gpu_why));
	/* Active alerts (a rebuilt catalog, a budget nearly full): what an operator must see. */
	if (weightd_metrics(w, &mt) == 0) {
		for (unsigned int i = 0; i < WEIGHTD_ALERT_KINDS; i++) {
			if (!mt.alerts_active[i])
				continue;
			json_array_append_new(alerts, json_string(weightd_alert_name(i)));
			snprintf(alert_line + strlen(alert_line),
				 sizeof(alert_line) - strlen(alert_line), "%s%s",
				 alert_line[0] ? ", " : "", weightd_alert_name(i));
		}
	}
	weightd_registry_usage(w, &ru);
	info_ret = weightd_daemon_info(w, &di);
	if (info_ret)
		snprintf(info_why, sizeof(info_why), "%s", weightd_last_error());
	if (o.json) {
		json_t *ga = json_array();

		for (int i = 0; i < n_gpus && i < GPU_LIST_MAX; i++)
			json_array_append_new(ga, gpu_json(&gpus[i]));
		json_t *jo = json_pack("{s:b, s:s, s:i, s:I, s:I, s:i, s:I, s:I, s:I, s:s, s:I, s:f, "
				     "s:o, s:s, s:o}",
				     "daemon", 1, "socket", weightd_socket_path(w), "pid", pid,
				     "clients", (json_int_t)st.clients, "pins",
				     (json_int_t)st.pins_total, "models", models, "host_budget",
				     (json_int_t)st.host_budget, "host_bytes",
				     (json_int_t)st.host_bytes, "host_page_size",
				     (json_int_t)st.host_page_size, "host_pages",
				     weightd_pages_name(st.host_page_kind), "requests",
				     (json_int_t)st.requests_total, "uptime_s",
				     (double)st.uptime_ns / 1e9, "gpus", ga, "gpu_tier",
				     n_gpus > 0 ? "available" : n_gpus == 0 ? gpu_why :
				     weightd_last_error(), "alerts_active", alerts);

		alerts = NULL;
		/* Capacity use: the registry is sized at start (docs/security.md). */
		json_object_set_new(jo, "registry",
				    json_pack("{s:i, s:i, s:i, s:i, s:i, s:i, s:I, s:I}",
					      "models", (int)ru.models, "model_cap",
					      (int)ru.model_cap, "components", (int)ru.components,
					      "component_cap", (int)ru.component_cap, "tensors",
					      (int)ru.tensors, "tensor_cap", (int)ru.tensor_cap,
					      "names_used", (json_int_t)ru.names_used,
					      "names_size", (json_int_t)ru.names_size));
		if (info_ret) {
			json_object_set_new(jo, "io", json_pack("{s:s}", "error", info_why));
		} else {
			json_object_set_new(jo, "io", io_json(&di));
			json_object_set_new(jo, "state_dir", json_string(di.state_dir));
		}
		print_json(jo);
	} else {
		printf("daemon     running, pid %d, up %.0f s\n", pid, (double)st.uptime_ns / 1e9);
		printf("socket     %s\n", weightd_socket_path(w));
		printf("clients    %llu (including this one)\n",
		       (unsigned long long)st.clients);
		printf("models     %d published, %llu pins held\n", models,
		       (unsigned long long)st.pins_total);
		printf("host cache %s in use of %s\n", ctl_human_bytes(st.host_bytes, b1, 32),
		       st.host_budget ? ctl_human_bytes(st.host_budget, b2, 32) : "no budget set");
		printf("pages      %s, %s each\n", pages_text(st.host_page_kind),
		       ctl_human_bytes(st.host_page_size, b1, 32));
		printf("registry   %u/%u models, %u/%u components, %u/%u tensors, %s/%s of long "
		       "names\n", ru.models, ru.model_cap, ru.components, ru.component_cap,
		       ru.tensors, ru.tensor_cap, ctl_human_bytes(ru.names_used, b1, 32),
		       ctl_human_bytes(ru.names_size, b2, 32));
		printf("requests   %llu served, %llu failed\n",
		       (unsigned long long)st.requests_total, (unsigned long long)st.errors_total);
		if (info_ret) {
			printf("reads      unknown: %s\n", info_why);
		} else {
			char why[256];

			io_path_text(&di, why, sizeof(why));
			printf("reads      %s\n", why);
			printf("catalog    %s/catalog.db\n", di.state_dir);
		}
		if (n_gpus == 0)
			printf("GPU tier   not available: %s\n", gpu_why);
		else if (n_gpus < 0)
			printf("GPU tier   unknown: %s\n", weightd_last_error());
		for (int i = 0; i < n_gpus && i < GPU_LIST_MAX; i++)
			print_gpu(&gpus[i]);
		if (alert_line[0])
			printf("alerts     active: %s (weightctl top shows the events)\n",
			       alert_line);
	}
	ret = CTL_OK;
out:
	json_decref(alerts);
	weightd_detach(w);
	return ret;
}

/* ---------------------------------------------------------------------------------- */
/* ps                                                                                 */

static void ps_usage(FILE *out)
{
	fprintf(out,
		"usage: weightctl ps [--socket PATH] [--all] [--json]\n\n"
		"Shows what is resident: one line per host cache entry (a component in one form:\n"
		"as stored or converted, all tensors or a subset), with its size, the client pins\n"
		"that cover it and how long ago it was last requested; then the components that\n"
		"are loading or failed on any tier, and pinned models with nothing resident.\n"
		"--all also lists components on disk only.\n\n"
		"Exit status: 0, 1 no daemon or it failed, 2 usage error.\n");
}

static const char *form_of(const struct weightd_cache_entry *e, char *buf, size_t size)
{
	snprintf(buf, size, "%s%s", e->dtype == WEIGHTD_DTYPE_F16 ? "F16" :
		 e->dtype == WEIGHTD_DTYPE_BF16 ? "BF16" : "stored",
		 e->flags & WEIGHTD_CACHE_SUBSET ? "/subset" : "");
	return buf;
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

static const char *ago(uint64_t ns, char *buf, size_t size)
{
	double s = (double)ns / 1e9;

	if (s < 60)
		snprintf(buf, size, "%.1fs ago", s);
	else if (s < 3600)
		snprintf(buf, size, "%.0fm ago", s / 60);
	else
		snprintf(buf, size, "%.1fh ago", s / 3600);
	return buf;
}

int ctl_ps(struct ctl *c, int argc, char **argv)
{
	struct weightd_device_info gpus[GPU_LIST_MAX];
	int n_gpus;
	struct weightd_component_info ci;
	struct weightd_model_info mi;
	struct weightd_cache_entry ce[64];
	struct weightd_stats st;
	json_t *rows = json_array();
	struct dopts o;
	struct weightd *w;
	char tier[16], size[32], form[32], when[32];
	uint32_t n = 0, start = 0;
	int ret, total, shown = 0;

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
		printf("%-24s %-14s %-7s %-9s %-12s %12s %5s  %s\n", "MODEL", "COMPONENT", "TIER",
		       "STATE", "FORM", "SIZE", "PINS", "LAST USE");
	/* The host cache, entry by entry. */
	do {
		total = weightd_cache_list(w, start, ce, (uint32_t)(sizeof(ce) / sizeof(ce[0])), &n);
		if (total < 0) {
			json_decref(rows);
			ret = failed("ps", &o, total);
			goto out;
		}
		for (uint32_t i = 0; i < n; i++) {
			const struct weightd_cache_entry *e = &ce[i];
			const char *state = e->flags & WEIGHTD_CACHE_LOADING ? "loading" : "resident";
			bool stale = e->flags & WEIGHTD_CACHE_STALE;

			shown++;
			form_of(e, form, sizeof(form));
			if (o.json) {
				json_array_append_new(rows, json_pack(
					"{s:s, s:s, s:s, s:s, s:s, s:I, s:i, s:f, s:i, s:b, s:b}",
					"model", e->model_name, "component", e->component_name,
					"tier", "host", "state", state, "form", form,
					"bytes", (json_int_t)e->bytes, "pins", (int)e->pins,
					"idle_s", (double)e->idle_ns / 1e9, "tensors",
					(int)e->n_tensors, "shared",
					(e->flags & WEIGHTD_CACHE_SHARED) != 0, "prefetched",
					(e->flags & WEIGHTD_CACHE_PREFETCHED) != 0));
				json_object_set_new(json_array_get(rows, json_array_size(rows) - 1),
						    "stale", json_boolean(stale));
				continue;
			}
			printf("%-24s %-14s %-7s %-9s %-12s %12s %5u  %s%s%s%s\n", ctl_esc(e->model_name),
			       e->component_name[0] ? ctl_esc(e->component_name) : "-", "host", state, form,
			       ctl_human_bytes(e->bytes, size, sizeof(size)), e->pins,
			       ago(e->idle_ns, when, sizeof(when)),
			       e->flags & WEIGHTD_CACHE_SHARED ? " (shared)" : "",
			       e->flags & WEIGHTD_CACHE_PREFETCHED ? " (prefetched)" : "",
			       stale ? " (stale: its files changed; the next load reads them)" : "");
		}
		start += n;
	} while (n && start < (uint32_t)total);
	/* Everything else the registry knows: other tiers, failures, pins on absent models. */
	for (uint32_t id = 0; weightd_component(w, id, &ci) == 0; id++) {
		bool any = false;

		if (weightd_model(w, ci.model, &mi)) {
			memset(&mi, 0, sizeof(mi));
			snprintf(mi.name, sizeof(mi.name), "#%u", ci.model);
		}
		for (unsigned int t = 0; t <= WEIGHTD_TIER_MAX; t++) {
			const char *state;

			if (t == WEIGHTD_TIER_MAX) {
				if (any || (!o.all && !mi.pins) ||
				    ci.tiers[WEIGHTD_TIER_HOST].state == WEIGHTD_RESIDENT)
					continue;
				snprintf(tier, sizeof(tier), "disk");
				state = "absent";
			} else {
				/* Resident and loading host components are listed above. */
				if (ci.tiers[t].state == WEIGHTD_ABSENT ||
				    (t == WEIGHTD_TIER_HOST &&
				     ci.tiers[t].state != WEIGHTD_FAILED)) {
					any |= ci.tiers[t].state != WEIGHTD_ABSENT;
					continue;
				}
				weightd_tier_name(t, tier, sizeof(tier));
				state = weightd_state_name(ci.tiers[t].state);
				/* The daemon marks a quarantined component failed with
				 * -ENOTRECOVERABLE (core/policy/recovery.h). */
				if (ci.tiers[t].state == WEIGHTD_FAILED &&
				    ci.tiers[t].error == -ENOTRECOVERABLE)
					state = "quarantined";
			}
			any = true;
			shown++;
			if (o.json) {
				json_t *r = json_pack("{s:s, s:s, s:s, s:s, s:I, s:i}", "model",
						      mi.name, "component", ci.name, "tier", tier,
						      "state", state, "bytes", (json_int_t)ci.nbytes,
						      "model_pins", (int)mi.pins);
				int err = t < WEIGHTD_TIER_MAX ? ci.tiers[t].error : 0;

				if (err)
					json_object_set_new(r, "error",
							    json_string(strerror(-err)));
				json_array_append_new(rows, r);
				continue;
			}
			printf("%-24s %-14s %-7s %-9s %-12s %12s %5u  %s\n", ctl_esc(mi.name),
			       ci.name[0] ? ctl_esc(ci.name) : "-", tier, state, "-",
			       ctl_human_bytes(ci.nbytes, size, sizeof(size)), mi.pins,
			       t < WEIGHTD_TIER_MAX && ci.tiers[t].state == WEIGHTD_FAILED ?
			       (ci.tiers[t].error == -ENOTRECOVERABLE ? "load refused until its "
				"files change or `weightctl unload`" :
				strerror(-ci.tiers[t].error)) : "-");
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
		n_gpus = weightd_devices(w, gpus, GPU_LIST_MAX, NULL, 0);
		for (int i = 0; i < n_gpus && i < GPU_LIST_MAX; i++)
			printf("cuda:%u %s in use of %s budget, %u entries\n", gpus[i].ordinal,
			       ctl_human_bytes(gpus[i].used, size, sizeof(size)),
			       ctl_human_bytes(gpus[i].budget, form, sizeof(form)),
			       gpus[i].entries);
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

static bool hold(struct weightd *w);
static void on_stop(int sig);

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
	struct sigaction sa = { .sa_handler = on_stop };
	struct weightd_load_result res = { 0 };
	struct weightd_load_opts lo = { 0 };
	struct ctl_progress prog;
	struct dopts o;
	struct weightd *w;
	const char *model;
	char label[300], abs[PATH_MAX], b1[32], b2[32];
	double secs, gbps;
	uint32_t id;
	bool stale;
	int ret;

	(void)c;
	if ((ret = parse(argc, argv, &o, "tier component pin hold dtype prefix", load_usage)) >= 0 ||
	    (ret = one_model(argc, argv, load_usage)) >= 0)
		return ret;
	if (o.hold && !o.pin) {
		ctl_err("load", "--hold needs --pin");
		return CTL_USAGE;
	}
	model = argv[optind];
	w = open_daemon("load", &o);
	if (!w)
		return CTL_FAIL;
	/* A name the registry has wins; otherwise an existing path is registered. */
	if (weightd_lookup(w, model, NULL) == -ENOENT && strchr(model, '/')) {
		ret = register_path(w, model, abs, sizeof(abs));
		if (ret) {
			ret = failed("load", &o, ret);
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
		ret = failed("load", &o, ret);
		goto out;
	}
	ctl_progress_end(&prog, res.read_bytes ? res.read_bytes : res.bytes,
			 res.read_bytes ? res.read_bytes : res.bytes);
	secs = (double)res.elapsed_ns / 1e9;
	gbps = secs > 0 ? (double)(res.read_bytes ? res.read_bytes : res.bytes) / secs / 1e9 : 0;
	if (o.json) {
		json_t *j = target_json("load", argv[optind], &o);

		json_object_set_new(j, "stale", json_boolean(stale));
		json_object_set_new(j, "bytes", json_integer((json_int_t)res.bytes));
		json_object_set_new(j, "read_bytes", json_integer((json_int_t)res.read_bytes));
		json_object_set_new(j, "seconds", json_real(secs));
		json_object_set_new(j, "gbps", json_real(gbps));
		json_object_set_new(j, "hit", json_boolean(res.hit));
		json_object_set_new(j, "pinned", json_boolean(o.pin));
		print_json(j);
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
		sigaction(SIGINT, &sa, NULL);
		sigaction(SIGTERM, &sa, NULL);
		if (!hold(w)) {
			ctl_err("load", "the daemon at %s went away; the pin is gone",
				weightd_socket_path(w));
			ret = CTL_FAIL;
		}
	}
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
	was = weightd_state(w, argv[optind], o.component, o.tier, NULL);
	ret = weightd_unload(w, argv[optind], o.component, o.tier);
	if (ret) {
		ret = failed("unload", &o, ret);
	} else {
		if (o.json) {
			json_t *j = target_json("unload", argv[optind], &o);

			json_object_set_new(j, "was_resident", json_boolean(was != WEIGHTD_ABSENT));
			print_json(j);
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
			       ctl_esc(model), tier);
		ret = CTL_OK;
		goto out;
	}
	if (!o.json)
		printf("pinned %s on %s; holding the pin until Ctrl-C\n", ctl_esc(model), tier);
	fflush(stdout);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	if (hold(w)) {
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

/* ---------------------------------------------------------------------------------- */
/* cat                                                                                */

static void cat_usage(FILE *out)
{
	fprintf(out,
		"usage: weightctl cat [--socket PATH] [--component NAME] [--tier host|cuda:N]\n"
		"                     MODEL TENSOR\n\n"
		"Writes the raw bytes of TENSOR, as the shared host cache holds them (not read\n"
		"from the file), to stdout. The tensor must be resident: `weightctl load MODEL`\n"
		"first. A converted load (--dtype) shows the converted bytes. With --tier cuda:N\n"
		"the bytes are read back from that GPU's copy (the command maps the component's\n"
		"VRAM allocation, as a client would, and copies device to host).\n\n"
		"Exit status: 0, 1 not resident, unknown or failed, 2 usage error.\n");
}

/* cat --tier cuda:N: maps the tensor's component on that GPU and copies it back. */
static int cat_device(struct weightd *w, const char *model, const struct dopts *o,
		      const struct weightd_tensor_info *ti)
{
	struct weightd_component_info ci;
	struct weightd_device_map *m;
	char *buf = NULL;
	int ret;

	ret = weightd_component(w, ti->component, &ci);
	if (!ret)
		ret = weightd_device_map_opts(w, model, ci.name[0] ? ci.name : NULL, o->tier - 1,
					      NULL, &m);
	if (ret)
		return failed("cat", o, ret);
	buf = malloc(ti->nbytes ? ti->nbytes : 1);
	ret = buf ? weightd_device_read(m, ti, buf, ti->nbytes) : -ENOMEM;
	if (ret) {
		ctl_err("cat", "%s", ret == -ENOMEM ? "out of memory" : weightd_last_error());
		ret = CTL_FAIL;
	} else if (ti->nbytes && fwrite(buf, 1, ti->nbytes, stdout) != ti->nbytes) {
		ctl_err("cat", "writing to stdout: %s", strerror(errno));
		ret = CTL_FAIL;
	} else {
		ret = fflush(stdout) ? CTL_FAIL : CTL_OK;
	}
	free(buf);
	weightd_device_unmap(w, m);
	return ret;
}

int ctl_cat(struct ctl *c, int argc, char **argv)
{
	struct weightd_tensor_info ti;
	struct dopts o;
	struct weightd *w;
	const char *model, *tensor;
	const char *p;
	size_t done = 0;
	int ret;

	(void)c;
	if ((ret = parse(argc, argv, &o, "component tier", cat_usage)) >= 0)
		return ret;
	if (optind + 2 != argc) {
		ctl_err("cat", "wants MODEL and TENSOR");
		cat_usage(stderr);
		return CTL_USAGE;
	}
	model = argv[optind];
	tensor = argv[optind + 1];
	w = open_daemon("cat", &o);
	if (!w)
		return CTL_FAIL;
	ret = weightd_tensor(w, model, o.component, tensor, &ti);
	if (ret) {
		ret = failed("cat", &o, ret);
		goto out;
	}
	if (o.tier != WEIGHTD_TIER_HOST) {
		ret = cat_device(w, model, &o, &ti);
		goto out;
	}
	p = weightd_tensor_data(w, &ti);
	if (!p) {
		if (errno == ENODATA)
			ctl_err("cat", "%s: tensor %s is not resident in the host cache; run "
				"`weightctl load %s%s%s` first", model, tensor, model,
				o.component ? " --component " : "", o.component ? o.component : "");
		else
			ctl_err("cat", "%s", weightd_last_error());
		ret = CTL_FAIL;
		goto out;
	}
	while (done < ti.nbytes) {
		size_t n = fwrite(p + done, 1, ti.nbytes - done, stdout);

		if (!n) {
			ctl_err("cat", "writing to stdout: %s", strerror(errno));
			ret = CTL_FAIL;
			goto out;
		}
		done += n;
	}
	ret = fflush(stdout) ? CTL_FAIL : CTL_OK;
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
		"Prints the daemon's counters, one set: clients, pins, requests, the host cache's\n"
		"(host_*: hits, misses, evictions, prefetches, loads and bytes read from disk,\n"
		"coalesced requests, deduplicated bytes), recovery and the GPU tiers' bytes. Each\n"
		"has the name it has in /metrics, without the weightd_ prefix and a counter's\n"
		"_total suffix; docs/metrics.md says what each counts.\n\n"
		"Exit status: 0, 1 no daemon or it failed, 2 usage error.\n");
}

int ctl_stats(struct ctl *c, int argc, char **argv)
{
	enum { COUNTERS_MAX = 64 };
	struct weightd_stats st;
	uint64_t v[COUNTERS_MAX];
	struct dopts o;
	struct weightd *w;
	json_t *j;
	int ret, n;

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
	n = weightd_counters(w, v, COUNTERS_MAX);
	ret = n < 0 ? n : weightd_stats(w, &st);
	if (ret < 0) {
		ret = failed("stats", &o, ret);
		goto out;
	}
	j = json_object();
	for (unsigned int i = 0; i < (unsigned int)n && i < COUNTERS_MAX; i++) {
		const char *name = weightd_counter_name(i, NULL);

		if (!name)
			continue;
		if (o.json)
			json_object_set_new(j, name, json_integer((json_int_t)v[i]));
		else
			printf("%-28s %llu\n", name, (unsigned long long)v[i]);
	}
	if (o.json) {
		json_object_set_new(j, "uptime_seconds", json_real((double)st.uptime_ns / 1e9));
		print_json(j);
	} else {
		printf("%-28s %.3f\n", "uptime_seconds", (double)st.uptime_ns / 1e9);
		json_decref(j);
	}
	ret = CTL_OK;
out:
	weightd_detach(w);
	return ret;
}
