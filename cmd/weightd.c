/* weightd: the daemon's main(). Thin: parses options, then core/daemon/daemon.h does the work. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/daemon/config.h"
#include "core/daemon/daemon.h"
#include "core/tier/devcache.h"
#include "core/base/log.h"
#include "core/daemon/metrics.h"
#include "core/policy/recovery.h"
#include "gpu/cuda.h"
#include "shm/abi.h"

enum { OPT_MODELS = 256, OPT_BUDGET, OPT_STATE, OPT_SOCKET, OPT_SPIN, OPT_LOG, OPT_ALLOW_USER,
       OPT_ALLOW_GROUP, OPT_ADMIN, OPT_NO_SCAN,
       OPT_VERIFY, OPT_KEEP_ALIVE, OPT_CONFIG, OPT_METRICS, OPT_DEVICE_BUDGET,
       OPT_QUARANTINE, OPT_PRESSURE, OPT_PRESSURE_TARGET, OPT_PREFAULT, OPT_HELLO_TIMEOUT,
       OPT_UID_CONNS, OPT_UID_CLIENTS, OPT_REG_MODELS, OPT_REG_TENSORS };

static const struct option options[] = {
	{ "foreground", no_argument, NULL, 'f' },
	{ "models", required_argument, NULL, OPT_MODELS },
	{ "host-budget", required_argument, NULL, OPT_BUDGET },
	{ "host-prefault", no_argument, NULL, OPT_PREFAULT },
	{ "state-dir", required_argument, NULL, OPT_STATE },
	{ "socket", required_argument, NULL, OPT_SOCKET },
	{ "spin-us", required_argument, NULL, OPT_SPIN },
	{ "log-level", required_argument, NULL, OPT_LOG },
	{ "allow-user", required_argument, NULL, OPT_ALLOW_USER },
	{ "allow-group", required_argument, NULL, OPT_ALLOW_GROUP },
	{ "admin-user", optional_argument, NULL, OPT_ADMIN },
	{ "no-scan", no_argument, NULL, OPT_NO_SCAN },
	{ "verify", no_argument, NULL, OPT_VERIFY },
	{ "keep-alive", required_argument, NULL, OPT_KEEP_ALIVE },
	{ "config", required_argument, NULL, OPT_CONFIG },
	{ "metrics-listen", required_argument, NULL, OPT_METRICS },
	{ "device-budget", required_argument, NULL, OPT_DEVICE_BUDGET },
	{ "quarantine-after", required_argument, NULL, OPT_QUARANTINE },
	{ "memory-pressure", required_argument, NULL, OPT_PRESSURE },
	{ "memory-pressure-target", required_argument, NULL, OPT_PRESSURE_TARGET },
	{ "hello-timeout-ms", required_argument, NULL, OPT_HELLO_TIMEOUT },
	{ "max-connections-per-uid", required_argument, NULL, OPT_UID_CONNS },
	{ "max-clients-per-uid", required_argument, NULL, OPT_UID_CLIENTS },
	{ "registry-models", required_argument, NULL, OPT_REG_MODELS },
	{ "registry-tensors", required_argument, NULL, OPT_REG_TENSORS },
	{ "help", no_argument, NULL, 'h' },
	{ "version", no_argument, NULL, 'V' },
	{ 0 }
};

static void usage(FILE *out)
{
	fprintf(out,
		"usage: weightd [--foreground] [options]\n\n"
		"  -f, --foreground        stay in the foreground (otherwise detach once ready)\n"
		"  --config FILE           settings file (docs/config.md); default\n"
		"                          $WEIGHTD_CONFIG, else none. The command line overrides\n"
		"                          the file; a list option (--models, --allow-user, ...)\n"
		"                          replaces the file's list\n"
		"  --models DIR            model root (repeatable); default $WEIGHTD_MODELS,\n"
		"                          else STATE_DIR/models; scanned at start and by SCAN\n"
		"  --no-scan               do not scan the roots at start\n"
		"  --host-budget BYTES     host cache budget (K/M/G/T suffixes); default a\n"
		"                          quarter of the RAM (or of the memory cgroup's\n"
		"                          limit); more than either allows, less a\n"
		"                          headroom, is clamped with a warning\n"
		"  --host-prefault         allocate the whole host cache at start, in the\n"
		"                          background, so that no load waits for fresh pages\n"
		"  --device-budget B|P%%    cache budget of each GPU: bytes, or a percentage of its\n"
		"                          memory; default 90%% (10%% headroom for other processes)\n"
		"  --keep-alive SECONDS    a loaded component is not evicted for this long after\n"
		"                          its last request (default 0)\n"
		"  --verify                hash every loaded tensor (XXH3) and check each file's\n"
		"                          header against the catalog's content hash at load time\n"
		"  --state-dir DIR         catalog and runtime files; default $WEIGHTD_STATE_DIR,\n"
		"                          else $XDG_STATE_HOME/weightd, else ~/.local/state/weightd\n"
		"  --socket PATH           attach socket; default $WEIGHTD_SOCKET, else\n"
		"                          $XDG_RUNTIME_DIR/weightd/weightd.sock, else\n"
		"                          /run/user/UID/weightd/weightd.sock, else\n"
		"                          /tmp/weightd-UID/weightd.sock\n"
		"  --spin-us N             serving threads spin N microseconds before parking\n"
		"                          (default %u)\n"
		"  --allow-user UID|NAME   may attach (repeatable); default: the daemon's own user\n"
		"  --allow-group GID|NAME  members may attach (repeatable)\n"
		"  --admin-user[=UID|NAME] may send SHUTDOWN (repeatable); without a value, the\n"
		"                          daemon's own user; uid 0 always may\n"
		"  --metrics-listen ADDR:PORT\n"
		"                          serve Prometheus metrics at http://ADDR:PORT/metrics;\n"
		"                          PORT alone is 127.0.0.1:PORT; [IPV6]:PORT works too\n"
		"  --quarantine-after N    refuse a component after N load failures in a row\n"
		"                          until its files change (default %u; 0: never)\n"
		"  --memory-pressure PCT   shed the host cache when PSI memory \"some avg10\" reaches\n"
		"                          PCT (default %u; 0: off)\n"
		"  --memory-pressure-target PCT\n"
		"                          ... down to PCT%% of the host budget (default %u)\n"
		"  --hello-timeout-ms MS   close a connection that sends no hello by then\n"
		"                          (default %u)\n"
		"  --max-connections-per-uid N\n"
		"                          connections one uid may hold open (default %u; 0: no\n"
		"                          limit); refused at accept\n"
		"  --max-clients-per-uid N attached clients one uid may have (default %u; 0: no\n"
		"                          limit)\n"
		"  --registry-models N     registry capacity at start: models (default %u, 4\n"
		"                          components each) ...\n"
		"  --registry-tensors N    ... and tensors (default %u); at least twice what the\n"
		"                          catalog holds. A scan finding more is refused, named\n"
		"                          and counted until a restart\n"
		"  --log-level LEVEL       debug, info (default), warn, error, off\n"
		"  -V, --version           version, ABI and build features (GPU tier)\n"
		"  -h, --help              this text\n\n"
		"SIGTERM or SIGINT shuts down cleanly: every client ring is marked shut down and\n"
		"the socket is removed. SIGHUP reloads the configuration file and the command\n"
		"line (docs/config.md says what can change without a restart).\n",
		DAEMON_DEFAULT_SPIN_US, RECOVERY_QUARANTINE_AFTER, DAEMON_DEFAULT_PRESSURE_PCT,
		DAEMON_DEFAULT_PRESSURE_TARGET_PCT, DAEMON_HELLO_TIMEOUT_MS,
		DAEMON_DEFAULT_UID_CONNECTIONS, DAEMON_DEFAULT_UID_CLIENTS,
		DAEMON_DEFAULT_REGISTRY_MODELS, DAEMON_DEFAULT_REGISTRY_TENSORS);
}

static int bad(const char *opt, const char *val, const char *why)
{
	fprintf(stderr, "weightd: %s %s: %s\n", opt, val, why);
	return 2;
}

static int parse_level(const char *s, enum log_level *out)
{
	static const char *const names[] = { "debug", "info", "warn", "error", "off" };

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		if (!strcmp(s, names[i])) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	return -EINVAL;
}

/*
 * Detaches: the parent waits until the child reports that the daemon is ready (or why it is
 * not) and exits with that status, so `weightd && weightctl status` works.
 */
static int detach_and_wait(int *report)
{
	int pfd[2];
	pid_t pid;
	char rc = 1;

	if (pipe(pfd) < 0)
		return -errno;
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid > 0) {
		close(pfd[1]);
		if (read(pfd[0], &rc, 1) != 1)
			rc = 1;
		_exit(rc);
	}
	close(pfd[0]);
	setsid();
	if (chdir("/") < 0)
		return -errno;
	if (!freopen("/dev/null", "r", stdin) || !freopen("/dev/null", "w", stdout))
		return -errno;
	*report = pfd[1];
	return 0;
}

/* What the command line and the configuration file settle, besides struct daemon_config. */
struct settings {
	enum log_level level;
	bool foreground;
};

/*
 * Finds --config (and --help, --version) before the other options are applied, since the file must
 * come first for the command line to override it. Errors are left to the second pass.
 */
static const char *find_config(int argc, char **argv, bool *help, bool *version)
{
	const char *path = NULL;
	int opt;

	opterr = 0;
	optind = 0;
	while ((opt = getopt_long(argc, argv, "fhV", options, NULL)) != -1) {
		if (opt == OPT_CONFIG)
			path = optarg;
		*help |= opt == 'h';
		*version |= opt == 'V';
	}
	opterr = 1;
	return path;
}

/*
 * A list option on the command line replaces the file's list: the first time @opt names one
 * that the file set (not yet in @replaced), the list is emptied.
 */
static void replace_file_list(int opt, const struct config_file *cf, struct daemon_config *cfg,
			      uint32_t *replaced)
{
	static const struct {
		int opt;
		enum config_key key;
	} lists[] = {
		{ OPT_MODELS, CONFIG_MODELS }, { OPT_ALLOW_USER, CONFIG_ALLOW_USER },
		{ OPT_ALLOW_GROUP, CONFIG_ALLOW_GROUP }, { OPT_ADMIN, CONFIG_ADMIN_USER },
	};

	for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++) {
		if (opt != lists[i].opt || !config_has(cf, lists[i].key) ||
		    (*replaced & (1u << lists[i].key)))
			continue;
		*replaced |= 1u << lists[i].key;
		if (opt == OPT_MODELS)
			cfg->n_roots = 0;
		else if (opt == OPT_ALLOW_USER)
			cfg->n_allow_uids = 0;
		else if (opt == OPT_ALLOW_GROUP)
			cfg->n_allow_gids = 0;
		else
			cfg->n_admin_uids = 0;
	}
}

/* The options with a number in a range. Returns -1 to go on, else the exit status. */
static int apply_number(int opt, struct daemon_config *cfg)
{
	uint64_t v;

	switch (opt) {
	case OPT_KEEP_ALIVE:
		if (wd_parse_bytes(optarg, &v) || v > 365ull * 24 * 3600)
			return bad("--keep-alive", optarg, "expected seconds");
		cfg->host_ttl_ns = v * 1000000000ull;
		return -1;
	case OPT_QUARANTINE:
	case OPT_PRESSURE:
	case OPT_PRESSURE_TARGET: {
		uint64_t max = opt == OPT_QUARANTINE ? 1000 : 100;
		uint64_t min = opt == OPT_PRESSURE_TARGET ? 1 : 0;
		const char *name = opt == OPT_QUARANTINE ? "--quarantine-after" :
				   opt == OPT_PRESSURE ? "--memory-pressure" :
				   "--memory-pressure-target";

		if (wd_parse_bytes(optarg, &v) || strpbrk(optarg, "KMGTkmgt") || v < min ||
		    v > max)
			return bad(name, optarg, opt == OPT_QUARANTINE ? "expected 0..1000" :
				   opt == OPT_PRESSURE ? "expected 0..100" : "expected 1..100");
		if (opt == OPT_QUARANTINE)
			cfg->quarantine_after = (uint32_t)v;
		else if (opt == OPT_PRESSURE)
			cfg->pressure_pct = (uint32_t)v;
		else
			cfg->pressure_target_pct = (uint32_t)v;
		return -1;
	}
	case OPT_HELLO_TIMEOUT:
		if (wd_parse_bytes(optarg, &v) || v < 10 || v > 3600 * 1000)
			return bad("--hello-timeout-ms", optarg,
				   "expected milliseconds (10..3600000)");
		cfg->hello_timeout_ms = (uint32_t)v;
		return -1;
	case OPT_UID_CONNS:
	case OPT_UID_CLIENTS:
		if (wd_parse_bytes(optarg, &v) || v > CONFIG_MAX_UID_LIMIT)
			return bad(opt == OPT_UID_CONNS ? "--max-connections-per-uid" :
				   "--max-clients-per-uid", optarg,
				   "expected a count (0..1000000; 0: no limit)");
		if (opt == OPT_UID_CONNS)
			cfg->max_conns_per_uid = (uint32_t)v;
		else
			cfg->max_clients_per_uid = (uint32_t)v;
		return -1;
	case OPT_REG_MODELS:
	case OPT_REG_TENSORS: {
		uint64_t max = opt == OPT_REG_MODELS ? CONFIG_MAX_REGISTRY_MODELS :
			       CONFIG_MAX_REGISTRY_TENSORS;

		if (wd_parse_bytes(optarg, &v) || v < 16 || v > max)
			return bad(opt == OPT_REG_MODELS ? "--registry-models" :
				   "--registry-tensors", optarg, "out of range");
		if (opt == OPT_REG_MODELS)
			cfg->registry_models = (uint32_t)v;
		else
			cfg->registry_tensors = (uint32_t)v;
		return -1;
	}
	case OPT_SPIN:
		if (wd_parse_bytes(optarg, &v) || v > 10 * 1000 * 1000)
			return bad("--spin-us", optarg, "expected microseconds (0..10000000)");
		cfg->spin_us = (uint32_t)v;
		return -1;
	}
	return -1;
}

/* The options that name users and groups. Returns -1 to go on, else the exit status. */
static int apply_id(int opt, struct daemon_config *cfg)
{
	switch (opt) {
	case OPT_ALLOW_USER:
		if (cfg->n_allow_uids == DAEMON_MAX_IDS ||
		    daemon_parse_user(optarg, &cfg->allow_uids[cfg->n_allow_uids++]))
			return bad("--allow-user", optarg, "unknown user (or too many)");
		return -1;
	case OPT_ALLOW_GROUP:
		if (cfg->n_allow_gids == DAEMON_MAX_IDS ||
		    daemon_parse_group(optarg, &cfg->allow_gids[cfg->n_allow_gids++]))
			return bad("--allow-group", optarg, "unknown group (or too many)");
		return -1;
	case OPT_ADMIN:
		if (cfg->n_admin_uids == DAEMON_MAX_IDS)
			return bad("--admin-user", optarg ? optarg : "", "too many");
		if (!optarg)
			cfg->admin_uids[cfg->n_admin_uids++] = geteuid();
		else if (daemon_parse_user(optarg, &cfg->admin_uids[cfg->n_admin_uids++]))
			return bad("--admin-user", optarg, "unknown user");
		return -1;
	}
	return -1;
}

/* Applies command-line option @opt. Returns -1 to go on, else the exit status. */
static int apply_option(int opt, struct daemon_config *cfg, struct settings *set)
{
	switch (opt) {
	case 'f':
		set->foreground = true;
		return -1;
	case OPT_CONFIG:
		return -1;
	case OPT_MODELS:
		if (cfg->n_roots == DAEMON_MAX_ROOTS)
			return bad("--models", optarg, "too many roots");
		cfg->roots[cfg->n_roots++] = optarg;
		return -1;
	case OPT_NO_SCAN:
		cfg->scan_at_start = false;
		return -1;
	case OPT_VERIFY:
		cfg->verify = true;
		return -1;
	case OPT_PREFAULT:
		cfg->host_prefault = true;
		return -1;
	case OPT_DEVICE_BUDGET:
		if (devcache_parse_budget(optarg, &cfg->device_budget, &cfg->device_budget_pct))
			return bad("--device-budget", optarg,
				   "expected BYTES[K|M|G|T] or a percentage (1%..100%)");
		return -1;
	case OPT_BUDGET:
		if (wd_parse_bytes(optarg, &cfg->host_budget))
			return bad("--host-budget", optarg, "expected BYTES[K|M|G|T]");
		return -1;
	case OPT_STATE:
		cfg->state_dir = optarg;
		return -1;
	case OPT_SOCKET:
		cfg->socket_path = optarg;
		return -1;
	case OPT_METRICS: {
		struct sockaddr_storage ss;
		socklen_t len;

		if (metrics_parse_listen(optarg, &ss, &len))
			return bad("--metrics-listen", optarg,
				   "expected PORT, A.B.C.D:PORT or [IPV6]:PORT");
		cfg->metrics_listen = optarg;
		return -1;
	}
	case OPT_LOG:
		if (parse_level(optarg, &set->level))
			return bad("--log-level", optarg, "expected debug|info|warn|error|off");
		return -1;
	case OPT_KEEP_ALIVE:
	case OPT_QUARANTINE:
	case OPT_PRESSURE:
	case OPT_PRESSURE_TARGET:
	case OPT_HELLO_TIMEOUT:
	case OPT_UID_CONNS:
	case OPT_UID_CLIENTS:
	case OPT_REG_MODELS:
	case OPT_REG_TENSORS:
	case OPT_SPIN:
		return apply_number(opt, cfg);
	case OPT_ALLOW_USER:
	case OPT_ALLOW_GROUP:
	case OPT_ADMIN:
		return apply_id(opt, cfg);
	default:
		usage(stderr);
		return 2;
	}
}

/*
 * Settles the configuration: defaults, then the file (--config, else $WEIGHTD_CONFIG), then
 * the command line. @cf receives the file's storage, which @cfg's strings point into; it must
 * outlive the daemon. The process environment is read, never changed, so this can run again
 * (to reload) with the same arguments. Returns -1 to go on, else the exit status (messages
 * printed).
 */
static int build_config(int argc, char **argv, struct daemon_config *cfg, struct config_file *cf,
			struct settings *set)
{
	bool help = false, version = false;
	const char *conf = config_path(find_config(argc, argv, &help, &version));
	uint32_t replaced = 0;
	char err[512];
	int opt, ret;

	daemon_config_init(cfg);
	cfg->handle_signals = true;
	*set = (struct settings){ .level = LOG_INFO };
	*cf = (struct config_file){ 0 };
	if (getenv("WEIGHTD_LOG"))
		set->level = log_get_level();
	if (help) {
		usage(stdout);
		return 0;
	}
	if (version) {
		printf("weightd %s (shared-memory ABI %u)\nGPU tier: %s\n", WD_VERSION,
		       WD_ABI_VERSION, GPU_TIER_BUILD);
		return 0;
	}
	if (conf && (ret = config_load(conf, cfg, cf, err, sizeof(err)))) {
		fprintf(stderr, "weightd: %s\n", err);
		return 2;
	}
	if (config_has(cf, CONFIG_LOG_LEVEL))
		set->level = cf->log_level;
	optind = 0;
	while ((opt = getopt_long(argc, argv, "fhV", options, NULL)) != -1) {
		replace_file_list(opt, cf, cfg, &replaced);
		ret = apply_option(opt, cfg, set);
		if (ret >= 0)
			return ret;
	}
	if (optind < argc) {
		fprintf(stderr, "weightd: unexpected argument \"%s\"\n", argv[optind]);
		return 2;
	}
	return -1;
}

/* The command line, kept for a reload. */
struct reload_args {
	int argc;
	char **argv;
};

/*
 * SIGHUP, on the daemon's control thread: settles the configuration again exactly as at start
 * (defaults, the file, the command line) and hands it to daemon_reload(). A file or option
 * with an error changes nothing: build_config() printed why (stderr is the log).
 */
static void reload(struct daemon *d, void *arg)
{
	struct reload_args *ra = arg;
	struct daemon_config cfg;
	struct config_file cf;
	struct settings set;

	if (build_config(ra->argc, ra->argv, &cfg, &cf, &set) >= 0) {
		log_warn("weightd", "\"reload rejected: the configuration has an error (above); "
			 "the running configuration stays\"");
		config_file_free(&cf);
		return;
	}
	log_set_level(set.level);
	daemon_reload(d, &cfg);
	/* daemon_reload() copied what it keeps. */
	config_file_free(&cf);
}

int main(int argc, char **argv)
{
	struct reload_args ra = { argc, argv };
	struct daemon_config cfg;
	struct config_file cf;
	struct settings set;
	struct daemon *d;
	char why[512] = "";
	int ret, report = -1;

	ret = build_config(argc, argv, &cfg, &cf, &set);
	if (ret >= 0) {
		config_file_free(&cf);
		return ret;
	}
	log_set_level(set.level);
	if (!set.foreground && (ret = detach_and_wait(&report))) {
		fprintf(stderr, "weightd: cannot detach: %s\n", strerror(-ret));
		return 1;
	}
	cfg.reload = reload;
	cfg.reload_arg = &ra;
	cfg.error = why;
	cfg.error_size = sizeof(why);
	ret = daemon_create(&cfg, &d);
	if (report >= 0) {
		char rc = ret ? 1 : 0;

		if (write(report, &rc, 1) != 1)
			ret = ret ? ret : -EPIPE;
		close(report);
	}
	if (ret) {
		fprintf(stderr, "weightd: cannot start: %s\n", why[0] ? why : strerror(-ret));
		config_file_free(&cf);
		return 1;
	}
	ret = daemon_run(d);
	daemon_destroy(d);
	config_file_free(&cf);
	return ret ? 1 : 0;
}
