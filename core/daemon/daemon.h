/*
 * weightd, the daemon: lifecycle, threads and the client table.
 *
 * Threads (the files that hold each: core/daemon/internal.h):
 *   control   the thread that calls daemon_run(): one epoll set over the listening socket,
 *             every client socket (the lease), a signalfd for SIGTERM/SIGINT and SIGHUP
 *             (reload; when asked for), the memory-pressure (PSI) descriptor (core/daemon/psi.h)
 *             and an eventfd that daemon_stop() writes. It accepts, checks SO_PEERCRED,
 *             answers the handshake, tears a client down when its socket closes, applies
 *             reloads (daemon_reload()), sheds the host cache under memory pressure and
 *             evaluates the alerts on their timer.
 *   shards    serving threads. Each serves the rings of up to DAEMON_SHARD_CLIENTS clients
 *             (futex_waitv parks on at most 128 words, and each shard keeps one for its own
 *             wake-up ring, which the control and worker threads use to tell it that the
 *             client set changed or that a completion is waiting). A new client goes to the
 *             least loaded shard; a new shard thread starts when all are full, up to
 *             DAEMON_MAX_SHARDS. A shard spins for spin_us after the last request, then parks.
 *   worker    runs the ops that touch the catalog or the disk (scan, validate, metadata, and
 *             the planning of a LOAD that is not a hit), so a shard keeps answering pings
 *             while a scan runs. Its completions travel back through the owning shard, which
 *             stays the only producer on each client's CQ.
 *   others    the tiers' threads: the host tier's loader and populate threads (uring/loader.c)
 *             and its arena's prefault thread (uring/arena.h), the device tier's thread
 *             (core/tier/devcache.h); and the /metrics server's thread (libmicrohttpd,
 *             core/daemon/metrics.h) when it is on.
 *
 * Exclusion: a lock file next to the socket (SOCKET.lock, flock) is held for the daemon's
 * life. When it is held by another process start fails with -EADDRINUSE; when it is free
 * any socket file left at the path by a crashed daemon is unlinked and replaced.
 */
#ifndef WD_CORE_DAEMON_H
#define WD_CORE_DAEMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/daemon/alert.h"

#define DAEMON_MAX_ROOTS 32
#define DAEMON_MAX_IDS 32		/* allow-list and admin entries of each kind */
#define DAEMON_SHARD_CLIENTS 127u	/* RING_WAIT_MANY_MAX minus the shard's wake ring */
#define DAEMON_MAX_SHARDS 16u
#define DAEMON_DEFAULT_SPIN_US 50u
#define DAEMON_DEFAULT_SQ_ENTRIES 64u
#define DAEMON_HELLO_TIMEOUT_MS 5000u	/* a connection that sends no hello is dropped */
#define DAEMON_HEARTBEAT_MS 250	/* the registry heartbeat advances at least this often */
/*
 * Per-uid limits (docs/security.md): connections open at once (attached clients and those
 * still owing their hello), checked at accept; attached clients, checked at the hello. Half
 * of the DAEMON_MAX_SHARDS * DAEMON_SHARD_CLIENTS slots, so that one user cannot take all.
 */
#define DAEMON_DEFAULT_UID_CONNECTIONS 1024u
#define DAEMON_DEFAULT_UID_CLIENTS 1016u
#define DAEMON_DEFAULT_REGISTRY_MODELS 4096u
#define DAEMON_DEFAULT_REGISTRY_TENSORS 262144u
#define DAEMON_DEFAULT_PRESSURE_PCT 10u	/* PSI memory "some avg10" that sheds the cache */
#define DAEMON_DEFAULT_PRESSURE_TARGET_PCT 75u	/* ... down to this share of the budget */

struct daemon_config {
	const char *state_dir;		/* NULL: core/base/statedir.h rules */
	const char *socket_path;	/* NULL: shm/attach.h rules */
	const char *roots[DAEMON_MAX_ROOTS];	/* model roots; none: $WEIGHTD_MODELS or
						 * STATE_DIR/models */
	size_t n_roots;
	uint64_t host_budget;		/* bytes of host cache; 0: a quarter of the RAM */
	uint64_t host_ttl_ns;		/* keep-alive of host cache entries; 0: none */
	bool verify;			/* hash every loaded tensor, check file headers */
	uint32_t spin_us;		/* shard spin budget before parking */
	uid_t allow_uids[DAEMON_MAX_IDS];	/* none of either: the daemon's own uid only */
	size_t n_allow_uids;
	gid_t allow_gids[DAEMON_MAX_IDS];
	size_t n_allow_gids;
	uid_t admin_uids[DAEMON_MAX_IDS];	/* SHUTDOWN allowed; uid 0 always is */
	size_t n_admin_uids;
	bool handle_signals;		/* block SIGTERM/SIGINT/SIGPIPE and watch a signalfd */
	bool scan_at_start;		/* scan the roots (on the worker) once started */
	bool host_prefault;		/* populate the whole host cache at start */
	const char *metrics_listen;	/* NULL: no /metrics server; else ADDR:PORT or PORT
					 * (core/daemon/metrics.h) */
	/* Recovery (core/policy/recovery.h, core/daemon/psi.h). */
	uint32_t quarantine_after;	/* load failures in a row that quarantine a component;
					 * 0: never (default RECOVERY_QUARANTINE_AFTER) */
	uint32_t pressure_pct;		/* PSI "some avg10" percent that sheds the host cache;
					 * 0: off (default DAEMON_DEFAULT_PRESSURE_PCT) */
	uint32_t pressure_target_pct;	/* shed down to this percent of the host budget */
	const char *psi_path;		/* NULL: $WEIGHTD_PSI_PATH, else /proc/pressure/memory */
	/*
	 * SIGHUP (with handle_signals): the control thread calls @reload, which builds the new
	 * configuration and applies it with daemon_reload(). NULL: SIGHUP is logged and ignored.
	 */
	void (*reload)(struct daemon *d, void *arg);
	void *reload_arg;
	struct alert_config alerts;	/* thresholds (core/daemon/alert.h) */
	uint32_t hello_timeout_ms;	/* a connection without a hello by then is closed */
	uint32_t max_conns_per_uid;	/* connections of one uid at once; 0: no limit */
	uint32_t max_clients_per_uid;	/* attached clients of one uid; 0: no limit */
	/* Registry capacity at start (at least twice what the catalog holds); 0: the default. */
	uint32_t registry_models;	/* DAEMON_DEFAULT_REGISTRY_MODELS */
	uint32_t registry_tensors;	/* DAEMON_DEFAULT_REGISTRY_TENSORS */
	uint64_t device_budget;		/* bytes of each GPU's cache; 0: device_budget_pct */
	unsigned int device_budget_pct;	/* percent of each GPU's memory; 0 with device_budget
					 * 0: 100 - DEVCACHE_DEFAULT_HEADROOM_PCT (core/tier/devcache.h) */
	/*
	 * When set, a failing daemon_create() writes its cause there as one line (at most
	 * @error_size bytes with the NUL), for example which of the socket lock and the
	 * metrics address is taken when both fail with -EADDRINUSE. Left empty when the
	 * failure has no more to say than its errno.
	 */
	char *error;
	size_t error_size;
};

struct daemon;

/* Fills @cfg with the defaults (spin_us, scan_at_start; everything else empty). */
void daemon_config_init(struct daemon_config *cfg);

/*
 * Parses a user given as a number or a name (getpwnam) into @uid; daemon_parse_group() the
 * same for groups. Return 0 or -ENOENT for an unknown name (-EINVAL for an empty string).
 */
int daemon_parse_user(const char *s, uid_t *uid);
int daemon_parse_group(const char *s, gid_t *gid);

/*
 * Creates the daemon: resolves the state directory and the socket path, takes the lock
 * file, opens the catalog, builds and publishes the registry from it, and binds and listens
 * on the socket (mode 0660). No thread runs yet. @cfg is copied (the strings must outlive the
 * daemon). On success *@out owns everything; on failure nothing is left behind except the
 * directories it created.
 * Returns 0; -EADDRINUSE when another daemon holds the lock (it logs the holder's pid) or
 * when the metrics address is taken (cfg->error says which);
 * -ENAMETOOLONG; -ENOMEM; or the negative errno of the step that failed (statedir, open,
 * flock, catalog_open, registry_create, socket, bind, listen, signalfd, eventfd, epoll,
 * metrics_start()).
 */
int daemon_create(const struct daemon_config *cfg, struct daemon **out);

/*
 * Runs the control loop on the calling thread (starting the first shard and the worker)
 * until SIGTERM/SIGINT (with handle_signals), a privileged SHUTDOWN request, or
 * daemon_stop(). Then it shuts down cleanly: every ring is marked WD_RING_SHUTDOWN
 * (in-flight requests complete with -ECANCELED), clients are woken and their sockets closed,
 * and the socket file is unlinked. Returns 0 after a clean shutdown or the negative errno of
 * the failure that stopped the loop (epoll_wait, pthread_create).
 */
int daemon_run(struct daemon *d);

/* Asks a running daemon_run() to shut down; async-signal-safe and thread-safe. */
void daemon_stop(struct daemon *d);

/*
 * Applies a new configuration to a running daemon (the SIGHUP reload; docs/config.md). Call
 * it on the control thread (from the reload callback). What can change live is applied:
 * allow_user, allow_group and admin_user (new connections are checked against them; attached
 * clients stay), host_budget (shrinking evicts unpinned entries; when what is pinned does not
 * fit, or the arena would have to grow, the budget stays as it was and that is logged),
 * keep_alive, verify, spin_us, the quarantine and memory-pressure settings, and the model
 * roots (copied; the worker rescans them). socket, state_dir and metrics_listen need a
 * restart: a change is logged with the key's name and ignored. Strings in @cfg need not
 * outlive the call. Returns 0 when everything asked for was applied, else -EAGAIN (some
 * part was refused and logged; the rest applied).
 */
int daemon_reload(struct daemon *d, const struct daemon_config *cfg);

/* Releases everything daemon_create() made (after daemon_run() returned, or instead of it). */
void daemon_destroy(struct daemon *d);

/* The socket path and state directory the daemon resolved. */
const char *daemon_socket_path(const struct daemon *d);
const char *daemon_state_dir(const struct daemon *d);


#endif
