/*
 * Live reconfiguration (daemon_reload()), the handing of new model roots to the worker, and
 * the memory-pressure watch that sheds the host cache (core/daemon/reload.h).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "core/daemon/daemon.h"
#include "core/tier/hostcache.h"
#include "core/base/log.h"
#include "core/daemon/internal.h"
#include "core/daemon/psi.h"
#include "core/policy/recovery.h"
#include "core/daemon/reload.h"
#include "uring/arena.h"

#define MOD "daemon"

/* The control thread's epoll tag for the PSI descriptor (the same for every daemon). */
static void *psi_tag;

static void psi_stop(struct daemon *d)
{
	if (!d->psi)
		return;
	epoll_ctl(d->epoll_fd, EPOLL_CTL_DEL, psi_fd(d->psi), NULL);
	psi_close(d->psi);
	d->psi = NULL;
}

void reload_psi_start(struct daemon *d, void *tag)
{
	struct psi_options o = { .path = d->cfg.psi_path, .some_pct = d->cfg.pressure_pct };
	struct epoll_event ev;
	int ret;

	psi_tag = tag;
	psi_stop(d);
	if (!d->cfg.pressure_pct) {
		log_info(MOD, "\"memory pressure watch off\" pressure=0");
		return;
	}
	ret = psi_open(&o, &d->psi);
	if (ret) {
		log_info(MOD, "\"memory pressure watch off: PSI unavailable\" path=%s err=%d",
			 getenv(PSI_PATH_ENV) ? getenv(PSI_PATH_ENV) :
			 o.path ? o.path : PSI_DEFAULT_PATH, ret);
		return;
	}
	ev = (struct epoll_event){ .events = psi_events(d->psi), .data.ptr = tag };
	if (epoll_ctl(d->epoll_fd, EPOLL_CTL_ADD, psi_fd(d->psi), &ev) < 0) {
		log_warn(MOD, "\"memory pressure watch off\" err=%d", -errno);
		psi_close(d->psi);
		d->psi = NULL;
		return;
	}
	log_info(MOD, "\"memory pressure watch\" path=%s mode=%s some_avg10>=%u target=%u%%",
		 psi_path(d->psi), psi_triggered(d->psi) ? "trigger" : "poll", d->cfg.pressure_pct,
		 d->cfg.pressure_target_pct);
}

void reload_psi_event(struct daemon *d)
{
	double avg10 = 0;
	uint64_t budget, target, bytes, n;
	int ret;

	if (!d->psi)
		return;
	ret = psi_poll(d->psi, &avg10);
	if (ret < 0) {
		/* Once, not every tick: the watch stops. */
		log_warn(MOD, "\"memory pressure watch off: cannot read PSI\" path=%s err=%d",
			 psi_path(d->psi), ret);
		psi_stop(d);
		return;
	}
	if (!ret)
		return;
	budget = hostcache_budget(d->hc);
	target = budget / 100 * d->cfg.pressure_target_pct;
	n = hostcache_shed(d->hc, target, &bytes);
	if (n)
		log_warn(MOD, "\"memory pressure: host cache shed\" some_avg10=%.2f threshold=%u "
			 "entries=%" PRIu64 " bytes=%" PRIu64 " target=%" PRIu64, avg10,
			 d->cfg.pressure_pct, n, bytes, target);
}

void reload_take_roots(struct daemon *d)
{
	pthread_mutex_lock(&d->job_lock);
	if (d->rescan) {
		for (size_t i = 0; i < DAEMON_MAX_ROOTS; i++) {
			free(d->roots_owned[i]);
			d->roots_owned[i] = d->new_roots[i];
			d->new_roots[i] = NULL;
			if (i < d->n_new_roots)
				d->roots[i] = d->roots_owned[i];
		}
		d->n_roots = d->n_new_roots;
		d->rescan = false;
	}
	pthread_mutex_unlock(&d->job_lock);
}

void reload_cleanup(struct daemon *d)
{
	if (d->psi) {
		psi_close(d->psi);
		d->psi = NULL;
	}
	for (size_t i = 0; i < DAEMON_MAX_ROOTS; i++) {
		free(d->roots_owned[i]);
		free(d->new_roots[i]);
		d->roots_owned[i] = d->new_roots[i] = NULL;
	}
}

static bool same_str(const char *a, const char *b)
{
	return a == b || (a && b && !strcmp(a, b));
}

/* Whether @roots differ from the roots queued by an earlier reload, else those in use; under
 * job_lock. */
static bool roots_differ(struct daemon *d, const char *const *roots, size_t n)
{
	const char *const *cur = d->rescan ? (const char *const *)d->new_roots : d->roots;
	size_t n_cur = d->rescan ? d->n_new_roots : d->n_roots;

	if (n != n_cur)
		return true;
	for (size_t i = 0; i < n; i++)
		if (strcmp(roots[i], cur[i]))
			return true;
	return false;
}

/* Queues @roots for the worker (reload_take_roots()). Returns 0 or -ENOMEM. */
static int queue_roots(struct daemon *d, const char *const *roots, size_t n)
{
	char *copy[DAEMON_MAX_ROOTS] = { 0 };

	for (size_t i = 0; i < n; i++) {
		copy[i] = strdup(roots[i]);
		if (!copy[i]) {
			for (size_t k = 0; k < i; k++)
				free(copy[k]);
			return -ENOMEM;
		}
	}
	pthread_mutex_lock(&d->job_lock);
	for (size_t i = 0; i < DAEMON_MAX_ROOTS; i++) {
		free(d->new_roots[i]);
		d->new_roots[i] = copy[i];
	}
	d->n_new_roots = n;
	d->rescan = true;
	pthread_cond_signal(&d->job_cond);
	pthread_mutex_unlock(&d->job_lock);
	return 0;
}

static void needs_restart(const char *key, const char *old, const char *now)
{
	log_warn(MOD, "\"reload: %s needs a restart; keeping the running value\" old=\"%s\" "
		 "new=\"%s\"", key, old ? old : "(default)", now ? now : "(default)");
}

int daemon_reload(struct daemon *d, const struct daemon_config *cfg)
{
	struct daemon_config *cur = &d->cfg;
	const char *roots[DAEMON_MAX_ROOTS];
	size_t n_roots = 0;
	uint64_t budget = cfg->host_budget;
	char msg[512];
	bool changed;
	int ret = 0;

	if (!same_str(cfg->socket_path, cur->socket_path))
		needs_restart("socket", cur->socket_path, cfg->socket_path);
	if (!same_str(cfg->state_dir, cur->state_dir))
		needs_restart("state_dir", cur->state_dir, cfg->state_dir);
	if (!same_str(cfg->metrics_listen, cur->metrics_listen))
		needs_restart("metrics_listen", cur->metrics_listen, cfg->metrics_listen);
	/* The alert thresholds and the GPU budgets are read when their tiers start. */
	if (memcmp(&cfg->alerts, &cur->alerts, sizeof(cfg->alerts)))
		needs_restart("alert_*", "(running)", "(changed)");
	if (cfg->device_budget != cur->device_budget ||
	    cfg->device_budget_pct != cur->device_budget_pct)
		needs_restart("device_budget", "(running)", "(changed)");
	if (cfg->registry_models != cur->registry_models ||
	    cfg->registry_tensors != cur->registry_tensors)
		needs_restart("registry_*", "(running)", "(changed)");

	/* Who may attach and who may shut down: the control thread checks them at attach. */
	memcpy(cur->allow_uids, cfg->allow_uids, sizeof(cur->allow_uids));
	cur->n_allow_uids = cfg->n_allow_uids;
	memcpy(cur->allow_gids, cfg->allow_gids, sizeof(cur->allow_gids));
	cur->n_allow_gids = cfg->n_allow_gids;
	memcpy(cur->admin_uids, cfg->admin_uids, sizeof(cur->admin_uids));
	__atomic_store_n(&cur->n_admin_uids, cfg->n_admin_uids, __ATOMIC_RELAXED);
	/* Connection limits: the control thread checks them at accept and at the hello. */
	cur->hello_timeout_ms = cfg->hello_timeout_ms;
	cur->max_conns_per_uid = cfg->max_conns_per_uid;
	cur->max_clients_per_uid = cfg->max_clients_per_uid;

	/* Checked against the memory this daemon may use, as at start (clamped, logged). */
	budget = hostcache_fit_budget(budget);
	budget = (budget + ARENA_EXTENT_ALIGN - 1) / ARENA_EXTENT_ALIGN * ARENA_EXTENT_ALIGN;
	if (budget != hostcache_budget(d->hc)) {
		uint64_t old = hostcache_budget(d->hc);

		if (hostcache_set_budget(d->hc, budget, msg, sizeof(msg))) {
			log_warn(MOD, "\"reload: host_budget refused; keeping the running value\" "
				 "old=%" PRIu64 " msg=\"%s\"", old, msg);
			ret = -EAGAIN;
		} else {
			/* What the tier rounded it to (hostcache_set_budget()). */
			cur->host_budget = hostcache_budget(d->hc);
			log_info(MOD, "\"reload: host_budget\" old=%" PRIu64 " new=%" PRIu64, old,
				 budget);
		}
	}
	if (cfg->host_ttl_ns != cur->host_ttl_ns) {
		hostcache_set_ttl(d->hc, cfg->host_ttl_ns);
		cur->host_ttl_ns = cfg->host_ttl_ns;
	}
	__atomic_store_n(&cur->verify, cfg->verify, __ATOMIC_RELAXED);
	__atomic_store_n(&cur->spin_us, cfg->spin_us, __ATOMIC_RELAXED);
	if (cfg->quarantine_after != cur->quarantine_after) {
		hostcache_set_quarantine(d->hc, cfg->quarantine_after);
		cur->quarantine_after = cfg->quarantine_after;
	}
	cur->pressure_target_pct = cfg->pressure_target_pct;
	if (!same_str(cfg->psi_path, cur->psi_path))
		needs_restart("psi_path", cur->psi_path, cfg->psi_path);
	if (cfg->pressure_pct != cur->pressure_pct) {
		cur->pressure_pct = cfg->pressure_pct;
		reload_psi_start(d, psi_tag);
	}

	for (size_t i = 0; i < cfg->n_roots && i < DAEMON_MAX_ROOTS; i++)
		roots[n_roots++] = cfg->roots[i];
	if (!n_roots) {
		/* As daemon_create() does; only set when the daemon started with roots. */
		const char *env = getenv("WEIGHTD_MODELS");

		if (!d->default_root[0] && env && *env)
			snprintf(d->default_root, sizeof(d->default_root), "%s", env);
		else if (!d->default_root[0])
			snprintf(d->default_root, sizeof(d->default_root), "%s/models", d->state_dir);
		roots[n_roots++] = d->default_root;
	}
	pthread_mutex_lock(&d->job_lock);
	changed = roots_differ(d, roots, n_roots);
	pthread_mutex_unlock(&d->job_lock);
	if (changed) {
		if (queue_roots(d, roots, n_roots)) {
			log_warn(MOD, "\"reload: models not changed: out of memory\"");
			ret = -EAGAIN;
		} else {
			log_info(MOD, "\"reload: models changed, rescanning\" roots=%zu", n_roots);
		}
	}
	log_info(MOD, "\"configuration reloaded\" host_budget=%" PRIu64 " keep_alive_ns=%" PRIu64
		 " spin_us=%u verify=%d allow_users=%zu allow_groups=%zu admins=%zu%s",
		 hostcache_budget(d->hc), cur->host_ttl_ns, cur->spin_us, cur->verify,
		 cur->n_allow_uids, cur->n_allow_gids, cur->n_admin_uids,
		 ret ? " (partly refused, see above)" : "");
	return ret;
}
