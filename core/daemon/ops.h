/*
 * The daemon's request handlers, and the daemon state they work on.
 *
 * core/daemon/daemon.c owns the lifecycle (threads, sockets, the client table); core/daemon/ops.c holds
 * one function per op code. They share the structures below, which no other module sees.
 *
 * Where each op runs:
 *   on the shard (inline, answered in the same batch): PING, LOOKUP (by name), LOAD when
 *   every target is resident (a hit), UNLOAD, PIN, UNPIN, STATUS, STATS, CACHE, SHUTDOWN. They read the registry through the daemon's own
 *   read-only view and take the state lock only to change pins.
 *   on the worker (queued as a struct job, answered later): SCAN, VALIDATE, META_GET,
 *   META_SET, and a LOAD that is not a hit (core/tier/hostcache.h: it plans and submits the load;
 *   the loader thread posts the final completion). They use the catalog, which only the worker touches once the daemon runs, and
 *   post progress and final completions back with daemon_post().
 *
 * Locks, always taken in this order: clients_lock (client table, shard membership), the
 * host cache's lock (core/tier/hostcache.h: cache entries, loads, the eviction policy),
 * state_lock (registry writes, lease table, model table), a client's pend_lock, a shard's
 * wake_lock. job_lock is never held with another.
 */
#ifndef WD_CORE_OPS_H
#define WD_CORE_OPS_H

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/catalog/catalog.h"
#include "core/daemon/daemon.h"
#include "core/daemon/lease.h"
#include "shm/abi.h"
#include "shm/registry.h"
#include "shm/ring.h"
#include "shm/segment.h"

/* A completion the worker produced, waiting for the shard to copy it into the CQ. */
struct pending {
	struct pending *next;
	struct wd_cqe cqe;
	bool final;
	char data[WD_DATA_SLOT_SIZE];
};

struct shard;
struct conn;

#define CLIENT_MAX_GROUPS 64

struct client {
	atomic_int refs;		/* control thread, shard snapshot, queued jobs */
	uint32_t id;
	int fd;				/* the lease socket; closed when the last ref goes */
	pid_t pid;
	uid_t uid;
	gid_t gid;
	gid_t groups[CLIENT_MAX_GROUPS]; /* supplementary groups (SO_PEERGROUPS), for SCAN */
	int n_groups;
	char name[33];			/* from the hello, sanitized for logs */
	struct shm_segment seg;		/* the ring segment (daemon's read-write mapping) */
	struct ring sq, cq;		/* daemon views, built from trusted parameters only */
	struct shard *shard;
	atomic_bool broken;		/* the shard stopped serving this ring */
	/* Under the daemon's state_lock. */
	struct lease lease;
	bool gone;			/* the lease ended: no new pins are accepted */
	/* Shard-private. */
	uint32_t inflight;		/* worker requests whose final completion is owed */
	uint64_t requests;
	uint64_t errors;
	/* Filled by the worker, drained by the shard. */
	pthread_mutex_t pend_lock;
	struct pending *pend_head, *pend_tail;
	atomic_uint npending;		/* entries in the list; read without the lock as a hint */
};

struct shard {
	struct daemon *d;
	unsigned int idx;
	pthread_t thread;
	bool started;
	/*
	 * The wake-up ring: a private ring whose tail the shard parks on next to its clients'
	 * SQ tails. Producers (control thread, worker) push a token under wake_lock; a full
	 * ring already guarantees a wake-up, so a failed push is fine.
	 */
	void *wake_mem;
	struct ring wake_cons, wake_prod;
	pthread_mutex_t wake_lock;
	/* Membership, under clients_lock; gen changes whenever it does. */
	struct client *members[DAEMON_SHARD_CLIENTS];
	unsigned int n_members;
	atomic_uint_fast64_t gen;
	/* Shard-private counters, flushed into the registry before each park. */
	uint64_t flush_requests, flush_errors;
};

/* A request the worker runs. */
struct job {
	struct job *next;
	struct client *c;		/* holds a reference */
	struct pending *spare;		/* the final completion's entry, allocated up front */
	struct wd_sqe sqe;
	uint16_t arg_len;
	char arg[WD_DATA_SLOT_SIZE + 1];	/* NUL-terminated copy of the payload */
};

/* What the daemon knows about a published model, indexed like the registry's models. */
struct model_ent {
	uint32_t first_comp;		/* its components are contiguous in the registry */
	uint32_t n_comps;
	uint64_t fingerprint;
	bool stale;
};

struct daemon {
	struct daemon_config cfg;
	char state_dir[PATH_MAX];
	char sock_path[108];
	char lock_path[PATH_MAX];
	char default_root[PATH_MAX + 16];
	const char *roots[DAEMON_MAX_ROOTS];
	size_t n_roots;
	uid_t self_uid;
	gid_t self_gid;
	int lock_fd, listen_fd, epoll_fd, sig_fd, stop_efd;
	uint64_t start_ns;

	struct catalog *cat;		/* the worker's (and daemon_create()'s) only */
	struct registry *reg;
	struct registry_view view;	/* the daemon's own reader over reg */

	pthread_mutex_t state_lock;
	struct lease_table leases;
	struct model_ent *models;
	size_t n_models, cap_models;

	pthread_mutex_t clients_lock;
	struct shard shards[DAEMON_MAX_SHARDS];
	unsigned int n_shards;
	uint32_t next_client_id;
	unsigned int n_clients;
	atomic_bool stopping;
	bool shut;			/* shutdown_all() ran */

	struct conn *conns;		/* control thread only: every open connection */
	/* Control thread only (core/daemon/daemon.c): connections and clients per uid, for the
	 * per-uid limits; the descriptor kept in reserve for an accept at EMFILE; the last
	 * sweep of the connections that owe a hello. */
	struct uid_use *uid_use;
	size_t n_uid_use, cap_uid_use;
	int reserve_fd;
	uint64_t listen_paused_until_ns, last_sweep_ns;

	pthread_t worker;
	bool worker_started;
	pthread_mutex_t job_lock;
	pthread_cond_t job_cond;
	struct job *job_head, *job_tail;
	bool worker_stop;

	struct hostcache *hc;		/* the host tier (core/tier/hostcache.h) */
	/* Recovery and reload (core/daemon/daemon.c): the PSI monitor (NULL: off), the model roots a
	 * reload gave (owned copies, handed to the worker under job_lock with @rescan). */
	struct psi *psi;
	char *new_roots[DAEMON_MAX_ROOTS], *roots_owned[DAEMON_MAX_ROOTS];
	size_t n_new_roots;
	bool rescan;
	struct metrics_server *metrics;	/* the /metrics server (core/daemon/metrics.h), or NULL */
	struct alerts *alerts;		/* alert timer and state (core/daemon/alert.h) */
	struct devcache *dc;		/* the GPU tiers (core/tier/devcache.h) */
	struct attach_spare *spare;	/* core/daemon/daemon.c: what a hello's reply needs, made ahead */
	/* Set when the catalog was corrupt, by daemon_create() (not a database) or by the
	 * worker's check (check_catalog(), then catalog_rebuilt tells the control thread):
	 * where the old file went and SQLite's complaint; empty otherwise. */
	char catalog_aside[PATH_MAX + 48];
	char catalog_why[256];
	atomic_bool catalog_rebuilt;
};

/* ---- provided by core/daemon/daemon.c for the ops ------------------------------------------ */

/* Takes and drops a reference on @c; the last drop unmaps its segment and closes its socket. */
void daemon_client_get(struct client *c);
void daemon_client_put(struct daemon *d, struct client *c);

/*
 * Worker side: hands a completion for @c to its shard. @final is NULL for a progress entry,
 * which replaces a progress entry of the same request still waiting (a slow client sees
 * fewer updates, never a stale one after a fresh one); for the final completion it points to
 * the job's spare entry, which is used (and set to NULL) so that the final one can never be
 * lost to an allocation failure. @data (@len bytes, may be NULL) becomes the CQ payload.
 * Returns 0, or -ENOMEM when a progress entry could not be allocated (it is dropped).
 */
int daemon_post(struct daemon *d, struct client *c, const struct wd_cqe *cqe,
		struct pending **final, const void *data, size_t len);

/* Shard side: queues @j for the worker (it owns @j afterwards). Returns 0 or -ECANCELED. */
int daemon_queue_job(struct daemon *d, struct job *j);

/* What a daemon_publish() could not put in the registry: it was full, or refused a name. */
struct publish_report {
	uint32_t models_left;		/* models not published at all (no room for them whole) */
	uint64_t tensors_left;		/* tensors not published, those of models_left included */
	int err;			/* the first refusal (-ENOSPC, -ENAMETOOLONG, -EEXIST) */
	char first[192];		/* and what it refused: "model M" or "model M, tensor T" */
};

/*
 * Publishes the catalog into the registry: adds every model not yet there (with its
 * components and tensors), flags as stale the published models whose files changed or
 * vanished, and calls registry_publish(). A model is added whole or not at all when the
 * registry has no room for it; what is left out is logged in one line and counted in @rep
 * (may be NULL). Takes the state lock. Returns the number of models added, or a negative
 * errno from the catalog (-ENOMEM, SQLite errors).
 */
int daemon_publish(struct daemon *d, struct catalog *cat, struct publish_report *rep);

/* Asks the control thread to shut down (the SHUTDOWN op). */
void daemon_stop(struct daemon *d);

/* Writes the shard's unflushed request and error counts into the registry. */
void daemon_flush_counters(struct shard *s);

/* ---- core/daemon/ops.c ---------------------------------------------------------------------- */

/*
 * Writes a message into a completion's payload slot (@out has WD_DATA_SLOT_SIZE bytes,
 * truncated to fit); returns its length, the completion's data_len (no NUL is sent).
 */
uint16_t ops_msg(char *out, const char *fmt, ...) WD_PRINTF(2, 3);

enum ops_outcome {
	OPS_DONE = 0,		/* *cqe and the payload are filled: publish them now */
	OPS_ASYNC = 1,		/* queued for the worker: the final completion comes later */
};

/*
 * Runs request @sqe of client @c on its shard. @arg is the request's payload, copied out of
 * the ring once (@arg_len bytes, already checked <= WD_DATA_SLOT_SIZE). On OPS_DONE, *@cqe
 * holds the completion (user_data set, data_len the bytes written to @out, which has
 * WD_DATA_SLOT_SIZE bytes: the CQ payload slot of the completion). A request that failed
 * validation in ring_sqe_check() is not passed here.
 */
enum ops_outcome ops_dispatch(struct daemon *d, struct client *c, const struct wd_sqe *sqe,
			      const char *arg, uint16_t arg_len, struct wd_cqe *cqe, char *out);

/* Runs a queued job on the worker thread, posting its completions with daemon_post(). */
void ops_run_job(struct daemon *d, struct job *j);

/* Scans the daemon's configured roots on the worker (startup scan), then publishes. */
void ops_scan_roots(struct daemon *d);

#endif
