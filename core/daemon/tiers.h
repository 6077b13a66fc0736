/*
 * The daemon's side of the cache tiers' interface (core/tier/tier.h): the struct tier_env it
 * gives them (its registry, view, state lock, lease table, catalog handle and --verify) and
 * the sink of callbacks through which they post completions, hold clients, defer work to
 * the worker, read the model table and report finished loads to the metrics and alerts.
 */
#ifndef WD_CORE_DAEMON_TIERS_H
#define WD_CORE_DAEMON_TIERS_H

#include "core/daemon/internal.h"
#include "core/tier/tier.h"

struct devcache_config;
struct hostcache_config;

/* Fills @env with @d's interface for a tier; what it points into lives as long as @d. */
void daemon_tier_env(struct daemon *d, struct tier_env *env);

/* A client as the tiers see it (an opaque handle), and back. */
static inline struct tier_client *tier_client_of(struct client *c)
{
	return (struct tier_client *)c;
}

/* The host tier's configuration from the daemon's (hostcache_create()). */
void daemon_host_config(const struct daemon *d, struct hostcache_config *hcfg);

/* The device tier's configuration from the daemon's (devcache_create()). */
void daemon_device_config(const struct daemon *d, struct devcache_config *dcfg);

/* Worker thread: runs LOAD job @j (a client's, or a prefetch the host tier deferred) on the
 * tier it names; the final completion's spare goes to the tier. */
void daemon_tier_load_job(struct daemon *d, struct job *j);

#endif
