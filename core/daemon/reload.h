/*
 * The daemon's live reconfiguration (SIGHUP, daemon_reload() in core/daemon/daemon.h) and its
 * memory-pressure watch (core/daemon/psi.h), both run by the control thread. Internal to
 * the daemon (core/daemon/daemon.c, control.c, worker.c call it); the contract users see is
 * docs/config.md's "Reload (SIGHUP)".
 *
 * Roots: the control thread copies a reload's roots into d->new_roots and sets d->rescan
 * under job_lock; the worker, the only reader of d->roots after start, takes them with
 * reload_take_roots() between jobs and rescans, so no lock is needed around d->roots.
 */
#ifndef WD_CORE_RELOAD_H
#define WD_CORE_RELOAD_H

struct daemon;

/*
 * Starts watching memory pressure when d->cfg.pressure_pct is not 0: opens the PSI file and
 * adds its descriptor to the control thread's epoll set with @tag as data.ptr (the caller's
 * struct conn). When PSI is unavailable it logs that once and stays off. A second call (a
 * reload) replaces the monitor.
 */
void reload_psi_start(struct daemon *d, void *tag);

/* An event on the PSI descriptor: when pressure is over the threshold, shed the host cache
 * down to pressure_target_pct of its budget (hostcache_shed()) and log what went. */
void reload_psi_event(struct daemon *d);

/* Worker side: installs the roots a reload queued (see above). */
void reload_take_roots(struct daemon *d);

/* Frees what the reload and the PSI watch hold (from daemon_destroy()). */
void reload_cleanup(struct daemon *d);

#endif
