/*
 * Creating and destroying the daemon (daemon_create(), daemon_destroy()): the state
 * directory, the socket and its lock file, the catalog, the registry, the control thread's
 * descriptors, the tiers, the alerts and the metrics server, each a named step of
 * daemon_create(). Also the configuration's defaults and the user and group parsers.
 * The threads start in daemon_run() (core/daemon/control.c).
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/base/log.h"
#include "core/base/statedir.h"
#include "core/daemon/alert.h"
#include "core/daemon/internal.h"
#include "core/daemon/metrics.h"
#include "core/daemon/reload.h"
#include "core/daemon/tiers.h"
#include "core/policy/recovery.h"
#include "core/tier/devcache.h"
#include "core/tier/hostcache.h"
#include "shm/attach.h"

#define MOD "daemon"

/*
 * Registry capacities: registry_models and registry_tensors (components: four per model), or
 * twice what the catalog holds when that is more. Records are never removed, so what a later
 * SCAN finds beyond that is refused and reported (daemon_publish()) until a restart.
 */
#define REG_COMPS_PER_MODEL 4u

void daemon_config_init(struct daemon_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->spin_us = DAEMON_DEFAULT_SPIN_US;
	cfg->scan_at_start = true;
	cfg->quarantine_after = RECOVERY_QUARANTINE_AFTER;
	cfg->pressure_pct = DAEMON_DEFAULT_PRESSURE_PCT;
	cfg->pressure_target_pct = DAEMON_DEFAULT_PRESSURE_TARGET_PCT;
	cfg->hello_timeout_ms = DAEMON_HELLO_TIMEOUT_MS;
	cfg->max_conns_per_uid = DAEMON_DEFAULT_UID_CONNECTIONS;
	cfg->max_clients_per_uid = DAEMON_DEFAULT_UID_CLIENTS;
	alert_config_init(&cfg->alerts);
}

static int parse_id(const char *s, unsigned long *out)
{
	char *end;

	if (!s || !*s)
		return -EINVAL;
	if (!isdigit((unsigned char)*s))
		return -ENOENT;
	errno = 0;
	*out = strtoul(s, &end, 10);
	if (errno || *end || *out > UINT32_MAX - 1)
		return -EINVAL;
	return 0;
}

int daemon_parse_user(const char *s, uid_t *uid)
{
	unsigned long v;
	struct passwd *pw;
	int ret = parse_id(s, &v);

	if (ret == 0) {
		*uid = (uid_t)v;
		return 0;
	}
	if (ret != -ENOENT)
		return ret;
	pw = getpwnam(s);
	if (!pw)
		return -ENOENT;
	*uid = pw->pw_uid;
	return 0;
}

int daemon_parse_group(const char *s, gid_t *gid)
{
	unsigned long v;
	struct group *gr;
	int ret = parse_id(s, &v);

	if (ret == 0) {
		*gid = (gid_t)v;
		return 0;
	}
	if (ret != -ENOENT)
		return ret;
	gr = getgrnam(s);
	if (!gr)
		return -ENOENT;
	*gid = gr->gr_gid;
	return 0;
}

const char *daemon_socket_path(const struct daemon *d)
{
	return d->sock_path;
}

const char *daemon_state_dir(const struct daemon *d)
{
	return d->state_dir;
}

/*
 * Raises the soft limit on open descriptors to the hard one: every client holds two (its
 * socket and its ring segment), and the default soft limit of 1024 would let a few hundred
 * clients exhaust it. The per-uid caps (on_accept(), core/daemon/control.c) keep one user
 * from taking them all.
 */
static void raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			log_warn(MOD, "\"cannot raise the descriptor limit\" err=%d", -errno);
	}
}

/* Writes the cause of a failing daemon_create() for its caller (daemon_config.error). */
static void __attribute__((format(printf, 2, 3))) set_error(struct daemon *d, const char *fmt,
							     ...)
{
	va_list ap;

	if (!d->cfg.error || !d->cfg.error_size)
		return;
	va_start(ap, fmt);
	vsnprintf(d->cfg.error, d->cfg.error_size, fmt, ap);
	va_end(ap);
}

static int take_lock(struct daemon *d)
{
	char pid[32];
	int n;

	n = snprintf(d->lock_path, sizeof(d->lock_path), "%s.lock", d->sock_path);
	if (n < 0 || (size_t)n >= sizeof(d->lock_path))
		return -ENAMETOOLONG;
	d->lock_fd = open(d->lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (d->lock_fd < 0)
		return -errno;
	if (flock(d->lock_fd, LOCK_EX | LOCK_NB) < 0) {
		int err = -errno;

		if (err == -EWOULDBLOCK) {
			ssize_t r = pread(d->lock_fd, pid, sizeof(pid) - 1, 0);

			pid[r > 0 ? r : 0] = '\0';
			pid[strcspn(pid, "\n")] = '\0';
			log_error(MOD, "\"another weightd is running\" lock=%s pid=%s socket=%s",
				  d->lock_path, pid[0] ? pid : "?", d->sock_path);
			set_error(d, "another weightd (pid %s) is running on the socket %s: it "
				  "holds %s", pid[0] ? pid : "?", d->sock_path, d->lock_path);
			err = -EADDRINUSE;
		}
		close(d->lock_fd);
		d->lock_fd = -1;
		return err;
	}
	n = snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
	if (ftruncate(d->lock_fd, 0) == 0 && pwrite(d->lock_fd, pid, (size_t)n, 0) != n)
		log_warn(MOD, "\"cannot write pid to lock file\" lock=%s", d->lock_path);
	return 0;
}

static int open_listener(struct daemon *d)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat st;

	/* We hold the lock, so a socket file here is a crashed daemon's: replace it. */
	if (lstat(d->sock_path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			log_error(MOD, "\"socket path exists and is not a socket\" path=%s",
				  d->sock_path);
			return -EEXIST;
		}
		log_info(MOD, "\"removing stale socket\" path=%s", d->sock_path);
		if (unlink(d->sock_path) < 0)
			return -errno;
	}
	strcpy(sa.sun_path, d->sock_path);
	d->listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (d->listen_fd < 0)
		return -errno;
	if (bind(d->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return -errno;
	if (chmod(d->sock_path, 0660) < 0 || listen(d->listen_fd, 128) < 0)
		return -errno;
	return 0;
}

static int create_registry(struct daemon *d)
{
	uint32_t models = d->cfg.registry_models ? d->cfg.registry_models :
			  DAEMON_DEFAULT_REGISTRY_MODELS;
	struct registry_limits lim = {
		.max_models = models,
		.max_components = models * REG_COMPS_PER_MODEL,
		.max_tensors = d->cfg.registry_tensors ? d->cfg.registry_tensors :
			       DAEMON_DEFAULT_REGISTRY_TENSORS,
	};
	uint64_t n_models, comps, tensors;
	int ret;

	/* Counts, not the models themselves: a large catalog must not delay the start. */
	ret = catalog_counts(d->cat, &n_models, &comps, &tensors);
	if (ret)
		return ret;
	/* Twice what the catalog holds, within the registry's own bounds (shm/registry.c). */
	if (2 * n_models > lim.max_models)
		lim.max_models = n_models >= (1u << 19) ? 1u << 20 : (uint32_t)(2 * n_models);
	if (2 * comps > lim.max_components)
		lim.max_components = comps >= (1u << 21) ? 1u << 22 : (uint32_t)(2 * comps);
	if (2 * tensors > lim.max_tensors)
		lim.max_tensors = tensors >= (1u << 25) ? 1u << 26 : (uint32_t)(2 * tensors);
	ret = registry_create(&lim, &d->reg);
	if (ret)
		return ret;
	/* Published by the worker once the daemon answers (core/daemon/worker.c): with a large
	 * catalog that takes seconds, and `status` must answer at once. */
	return registry_view_init(&d->view, registry_segment(d->reg)->base,
				  registry_segment(d->reg)->size);
}

/* A daemon with its locks made and no descriptor open but the reserve; NULL without memory. */
static struct daemon *daemon_alloc(const struct daemon_config *cfg)
{
	struct daemon *d = calloc(1, sizeof(*d));

	if (!d)
		return NULL;
	d->cfg = *cfg;
	d->lock_fd = d->listen_fd = d->epoll_fd = d->sig_fd = d->stop_efd = -1;
	/* Taken first, so that it is there when descriptors run out (on_accept() in control.c). */
	d->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	raise_fd_limit();
	d->self_uid = geteuid();
	d->self_gid = getegid();
	d->start_ns = wd_now_ns();
	d->next_client_id = 1;
	pthread_mutex_init(&d->state_lock, NULL);
	pthread_mutex_init(&d->clients_lock, NULL);
	pthread_mutex_init(&d->job_lock, NULL);
	pthread_cond_init(&d->job_cond, NULL);
	lease_table_init(&d->leases);
	return d;
}

/*
 * Resolves the state directory and the socket path (refusing one in a directory another
 * user could write), and the model roots: the configured ones, else $WEIGHTD_MODELS, else
 * STATE_DIR/models. Returns 0 or a negative errno (logged).
 */
static int resolve_paths(struct daemon *d, const struct daemon_config *cfg)
{
	char why[512];
	const char *env;
	int ret;

	ret = statedir_resolve(cfg->state_dir, d->state_dir, sizeof(d->state_dir));
	if (ret) {
		log_error(MOD, "\"cannot resolve the state directory\" err=%d", ret);
		return ret;
	}
	ret = attach_socket_path(cfg->socket_path, d->sock_path, sizeof(d->sock_path));
	if (ret) {
		log_error(MOD, "\"cannot resolve the socket path\" err=%d", ret);
		return ret;
	}
	/* Never bind where another user could swap the socket (docs/security.md). */
	ret = attach_check_dir(d->sock_path, geteuid(), (uid_t)-1, true, why, sizeof(why));
	if (ret) {
		log_error(MOD, "\"refusing the socket path\" path=%s err=%d why=\"%s\"",
			  d->sock_path, ret, ret == -EPERM ? why : strerror(-ret));
		return ret;
	}
	for (size_t i = 0; i < cfg->n_roots && i < DAEMON_MAX_ROOTS; i++)
		d->roots[d->n_roots++] = cfg->roots[i];
	if (!d->n_roots) {
		env = getenv("WEIGHTD_MODELS");
		if (env && *env)
			snprintf(d->default_root, sizeof(d->default_root), "%s", env);
		else
			snprintf(d->default_root, sizeof(d->default_root), "%s/models",
				 d->state_dir);
		d->roots[d->n_roots++] = d->default_root;
	}
	return 0;
}

/* Opens the catalog. Returns 0 or a negative errno (logged, and in cfg.error). */
static int open_catalog(struct daemon *d)
{
	int ret;

	/* Not a database at all: replaced at once. The full check runs on the worker. */
	ret = catalog_open_repair(d->state_dir, false, &d->cat, d->catalog_aside,
				  sizeof(d->catalog_aside), d->catalog_why, sizeof(d->catalog_why));
	if (ret) {
		log_error(MOD, "\"cannot open the catalog\" dir=%s err=%d", d->state_dir, ret);
		set_error(d, "cannot open the catalog in %s: %s", d->state_dir, strerror(-ret));
		return ret;
	}
	if (d->catalog_aside[0])
		log_error(MOD, "\"the catalog was corrupt: moved aside, rebuilding it from a scan "
			  "(tags and notes are in the old file)\" moved_to=%s check=\"%s\"",
			  d->catalog_aside, d->catalog_why);
	atomic_init(&d->catalog_rebuilt, false);
	return 0;
}

/*
 * Takes SIGTERM, SIGINT and SIGHUP from their default actions into a signalfd the control
 * thread watches, and ignores SIGPIPE. Returns 0 or a negative errno.
 */
static int watch_signals(struct daemon *d)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	/* SIGHUP reloads the configuration (cfg->reload, docs/config.md); taken here so that
	 * it never ends the daemon (its default action). */
	sigaddset(&set, SIGHUP);
	/* Blocked before any thread starts, so every thread inherits the mask. */
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);
	d->sig_fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
	if (d->sig_fd < 0)
		return -errno;
	return daemon_watch(d, d->sig_fd, CONN_SIGNAL);
}

/*
 * Starts what the daemon serves with, in this order: the host tier, the PSI watch, the GPU
 * tiers, the control thread's listening socket and stop eventfd, the alerts, and the metrics
 * server. Returns 0 or a negative errno (cfg.error says which address is taken).
 */
static int start_services(struct daemon *d)
{
	struct hostcache_config hcfg;
	struct devcache_config dcfg;
	struct tier_env tenv;
	int ret;

	/* After the signal mask: the loader thread must not take SIGTERM's default action. */
	daemon_host_config(d, &hcfg);
	daemon_tier_env(d, &tenv);
	ret = hostcache_create(&tenv, &hcfg, &d->hc);
	if (ret)
		return ret;
	d->cfg.host_budget = hostcache_budget(d->hc);	/* as fitted and rounded */
	/* Unavailable PSI is logged, not an error. */
	reload_psi_start(d, daemon_watch_tag(CONN_PSI));
	/* After the host tier: the device tier loads through it and demotes into it. */
	daemon_device_config(d, &dcfg);
	ret = devcache_create(&tenv, &dcfg, d->hc, &d->dc);
	if (ret)
		return ret;
	ret = daemon_watch(d, d->listen_fd, CONN_LISTEN);
	if (!ret)
		ret = daemon_watch(d, d->stop_efd, CONN_STOP);
	if (!ret)
		ret = alert_create(d, &d->alerts);
	if (!ret)
		ret = daemon_watch(d, alert_fd(d->alerts), CONN_ALERT);
	if (!ret && d->catalog_aside[0])
		alert_catalog_rebuilt(d, d->catalog_aside, d->catalog_why);
	if (!ret && d->cfg.metrics_listen) {
		ret = metrics_start(d, d->cfg.metrics_listen, &d->metrics);
		if (ret == -EADDRINUSE)
			set_error(d, "the metrics address %s is already in use by another program "
				  "(--metrics-listen, metrics_listen in the config file)",
				  d->cfg.metrics_listen);
		else if (ret)
			set_error(d, "cannot serve /metrics on %s: %s", d->cfg.metrics_listen,
				  strerror(-ret));
	}
	return ret;
}

int daemon_create(const struct daemon_config *cfg, struct daemon **out)
{
	struct daemon *d = daemon_alloc(cfg);
	int ret;

	if (!d)
		return -ENOMEM;
	*out = NULL;
	ret = resolve_paths(d, cfg);
	if (!ret)
		ret = take_lock(d);
	if (!ret)
		ret = open_catalog(d);
	if (ret)
		goto fail;
	ret = create_registry(d);
	if (ret) {
		log_error(MOD, "\"cannot build the registry\" err=%d", ret);
		goto fail;
	}
	ret = open_listener(d);
	if (ret) {
		log_error(MOD, "\"cannot listen\" path=%s err=%d", d->sock_path, ret);
		goto fail;
	}
	d->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	d->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (d->epoll_fd < 0 || d->stop_efd < 0) {
		ret = -errno;
		goto fail;
	}
	if (cfg->handle_signals)
		ret = watch_signals(d);
	if (!ret)
		ret = start_services(d);
	if (ret)
		goto fail;
	log_info(MOD, "\"ready\" socket=%s state_dir=%s models=%zu roots=%zu spin_us=%u "
		 "host_budget=%" PRIu64, d->sock_path, d->state_dir, d->n_models, d->n_roots,
		 cfg->spin_us, d->cfg.host_budget);
	*out = d;
	return 0;
fail:
	daemon_destroy(d);
	return ret;
}

void daemon_destroy(struct daemon *d)
{
	if (!d)
		return;
	/* Its thread reads the registry and the host tier: it goes before them. */
	metrics_stop(d->metrics);
	d->metrics = NULL;
	daemon_shutdown(d);
	daemon_shards_free(d);
	if (d->listen_fd >= 0) {
		close(d->listen_fd);
		if (d->sock_path[0])
			unlink(d->sock_path);
	}
	if (d->epoll_fd >= 0)
		close(d->epoll_fd);
	if (d->sig_fd >= 0)
		close(d->sig_fd);
	if (d->stop_efd >= 0)
		close(d->stop_efd);
	if (d->reserve_fd >= 0)
		close(d->reserve_fd);
	free(d->uid_use);
	reload_cleanup(d);
	devcache_destroy(d->dc);
	d->dc = NULL;
	alert_destroy(d->alerts);
	daemon_spare_free(d);
	hostcache_destroy(d->hc);
	d->hc = NULL;
	registry_destroy(d->reg);
	catalog_close(d->cat);
	lease_table_free(&d->leases);
	free(d->models);
	if (d->lock_fd >= 0)
		close(d->lock_fd);
	pthread_mutex_destroy(&d->state_lock);
	pthread_mutex_destroy(&d->clients_lock);
	pthread_mutex_destroy(&d->job_lock);
	pthread_cond_destroy(&d->job_cond);
	free(d);
}
