/*
 * The daemon's private header: the state its files share, and the services one file of
 * core/daemon/ gives the others.
 *
 * The daemon is split by concern, one file each:
 *   daemon.c   create and destroy (daemon_create(), daemon_destroy()), the small parsers
 *   control.c  the control thread: the epoll loop (daemon_run()), signals, accept, the
 *              per-uid connection limits, detach, the orderly shutdown
 *   hello.c    the handshake: checking a hello and making the client (ring segment, reply),
 *              the per-uid table the limits count in
 *   shard.c    the serving threads and their wake-up rings
 *   client.c   client references and the completions the worker hands to a shard
 *   threads.c  what the threads do to each other: wake a shard, flush its counters, queue a
 *              job for the worker, stop the control thread
 *   worker.c   the worker thread, taking jobs from its queue
 *   publish.c  publishing the catalog into the registry (daemon_publish())
 *   ops.c      the ops a shard answers, and the routing of the others (core/daemon/ops.h)
 *   jobs.c     the ops the worker runs
 *   tiers.c    the cache tiers' interface (core/tier/tier.h): their env and sink
 *   reload.c, psi.c: reload and memory pressure; alert.c, metrics.c: the alerts and the
 *   /metrics server; config.c: the configuration file. Pins (the lease table) are in
 *   core/tier/lease.c, below the tiers that count them.
 * Thread model: core/daemon/daemon.h.
 *
 * Only the daemon's own files include this header: the tiers take the narrow interface of
 * core/tier/tier.h (core/daemon/tiers.c builds it).
 *
 * Locks: the complete order for the daemon and its tiers (the tiers' headers point here).
 * A thread that holds one of these takes only locks further down the list:
 *   1. clients_lock (struct daemon): the client table and shard membership. Under it: a
 *      shard's member snapshot, detach, a hello's join; the last daemon_client_put() of a
 *      client then takes state_lock.
 *   2. the device tier's lock (struct devcache.lock, core/tier/dev_internal.h): device
 *      entries, their policies and pins. Under it the device tier takes state_lock (pins,
 *      states), posts completions through its sink (pend_lock) and queues device work
 *      (qlock). It comes before the host cache's lock, but the two are never held together:
 *      the device tier calls the host tier only without it, and the host tier never takes it.
 *   3. the host cache's lock (struct hostcache.lock, core/tier/host_internal.h): cache entries,
 *      loads, the eviction policy. Under it the host tier takes state_lock, posts completions
 *      (pend_lock, then wake_lock), queues a finished load for the alerts (the alert lock),
 *      hands finished loads to the device tier (qlock), and calls the loader and the arena.
 *   4. state_lock (struct daemon): registry writes, the lease table, the model table. Under
 *      it daemon_publish() reads the worker's catalog connection (catalog_model_tensors()).
 *   5. a client's pend_lock: its pending completions (daemon_post(), which drops it before
 *      it wakes the shard, and daemon_deliver_pending()).
 *   Leaves: nothing is taken while one of these is held.
 *      a shard's wake_lock (daemon_shard_wake());
 *      the device tier's queue lock (qlock) and a DEVICE_TRIM's wait lock
 *      (core/tier/dev_internal.h);
 *      the alerts' lock (struct alerts.lock, core/daemon/alert.c: the queue of finished loads);
 *      the layers below: the loader's locks (uring/loader_int.h: the loader's, its populate
 *      queue's, a load handle's) and the arena's (uring/arena.h); the loader runs its
 *      callbacks with none of them held.
 *   job_lock (struct daemon: the worker's queue, the reload's roots) is never held with
 *   another: daemon_queue_job() is called with no lock held.
 *   The metrics module has no lock: the shards' sums are thread-private and the metrics block
 *   is written with atomics; its server thread takes only the host cache's lock
 *   (hostcache_stats()).
 * Catalog connections (SQLite, opened without SQLite's own mutex, so each is used by one
 * thread at a time): d->cat is daemon_create()'s until the threads start, then the worker's
 * alone (jobs, publishing, the host tier's catalog reads and co-access writes), and
 * daemon_destroy()'s once the worker is joined; the alerts keep a second connection of their
 * own (core/daemon/alert.c), used by the control thread only, for the load history. The two
 * meet only at the database's own file locks (WAL, a busy timeout), and the control thread
 * holds no daemon lock when it uses its connection.
 */
#ifndef WD_CORE_DAEMON_INTERNAL_H
#define WD_CORE_DAEMON_INTERNAL_H

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "core/base/common.h"
#include "core/catalog/catalog.h"
#include "core/daemon/daemon.h"
#include "core/tier/lease.h"
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

	struct catalog *cat;		/* the worker's connection (see "Catalog connections") */
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
	bool shut;			/* daemon_shutdown() ran */

	struct conn *conns;		/* control thread only: every open connection */
	/* Control thread only (core/daemon/control.c): connections and clients per uid, for the
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
	/* Recovery and reload (core/daemon/reload.c): the PSI monitor (NULL: off), the model roots a
	 * reload gave (owned copies, handed to the worker under job_lock with @rescan). */
	struct psi *psi;
	char *new_roots[DAEMON_MAX_ROOTS], *roots_owned[DAEMON_MAX_ROOTS];
	size_t n_new_roots;
	bool rescan;
	struct metrics_server *metrics;	/* the /metrics server (core/daemon/metrics.h), or NULL */
	struct alerts *alerts;		/* alert timer and state (core/daemon/alert.h) */
	struct devcache *dc;		/* the GPU tiers (core/tier/devcache.h) */
	struct attach_spare *spare;	/* core/daemon/hello.c: what a hello's reply needs, made ahead */
	/* Set when the catalog was corrupt, by daemon_create() (not a database) or by the
	 * worker's check (check_catalog() in worker.c; catalog_rebuilt tells the control thread):
	 * where the old file went and SQLite's complaint; empty otherwise. */
	char catalog_aside[PATH_MAX + 48];
	char catalog_why[256];
	atomic_bool catalog_rebuilt;
};

/* ---- the control thread's connections (core/daemon/control.c, core/daemon/hello.c) --------- */

#define MAX_PEER_GROUPS 64

enum conn_kind { CONN_LISTEN, CONN_SIGNAL, CONN_STOP, CONN_PENDING, CONN_CLIENT, CONN_ALERT,
		CONN_PSI };

/* One epoll registration of the control thread. */
struct conn {
	enum conn_kind kind;
	int fd;
	struct conn *next, *prev;	/* d->conns, for PENDING and CLIENT */
	struct ucred cred;
	gid_t groups[MAX_PEER_GROUPS];
	int n_groups;
	uint64_t deadline_ns;		/* PENDING: drop when no hello by then */
	struct client *c;		/* CLIENT */
};

/* Connections and attached clients of one uid (d->uid_use, control thread only). */
struct uid_use {
	uid_t uid;
	uint32_t conns, clients;
};

/* ---- core/daemon/client.c: client references and pending completions ------------------ */

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

/*
 * Copies the worker's completions into @c's CQ while there is room: a final one always fits
 * (its slot was reserved when the request was taken), a progress one only when a slot is
 * left beyond the reservations, else it is dropped. Returns how many were written; *@space
 * is decreased accordingly and *@errors increased by the finals that carry an error. Called
 * by the CQ's only producer (the shard, or the control thread once the shards are gone).
 */
int daemon_deliver_pending(struct client *c, int *space, uint64_t *errors);

/* ---- core/daemon/threads.c: what the threads do to each other --------------------------- */

/* Pushes a token into @s's wake-up ring, so that it looks at its clients again. */
void daemon_shard_wake(struct shard *s);

/* Writes the shard's unflushed request and error counts into the registry. */
void daemon_flush_counters(struct shard *s);

/* Queues @j for the worker (it owns @j afterwards): the shards, and the tiers' defer.
 * Returns 0 or -ECANCELED (the worker stopped). */
int daemon_queue_job(struct daemon *d, struct job *j);

/* Asks the control thread to shut down (the SHUTDOWN op). */
void daemon_stop(struct daemon *d);

/* ---- core/daemon/shard.c: the serving threads ----------------------------------------- */

/* Starts shard @idx (its wake-up ring and its thread). Returns 0 or a negative errno. */
int daemon_shard_start(struct daemon *d, struct shard *s, unsigned int idx);

/* Picks the least loaded shard, starting one when all are full; NULL when none is left.
 * Under clients_lock. */
struct shard *daemon_shard_pick(struct daemon *d);

/* Unmaps the shards' wake-up rings (their threads were joined). */
void daemon_shards_free(struct daemon *d);

/* ---- core/daemon/worker.c: the worker and its job queue -------------------------------- */

/* Starts the worker thread. Returns 0 or the negative errno of pthread_create(). */
int daemon_worker_start(struct daemon *d);

/*
 * Stops the worker: the queued jobs are cancelled (their clients get -ECANCELED), the one
 * it runs finishes, and the thread is joined.
 */
void daemon_worker_stop(struct daemon *d);

/* ---- core/daemon/publish.c: the catalog into the registry ----------------------------- */

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

/* ---- core/daemon/hello.c: the handshake ---------------------------------------------- */

/*
 * Checks the hello in @buf (@n bytes) from connection @cn and, when it is acceptable,
 * creates the client: its ring segment, its lease, its shard. Returns the client, or NULL
 * after a refusal was sent.
 */
struct client *daemon_hello(struct daemon *d, struct conn *cn, const void *buf, ssize_t n);

/* Sends a refusal (a hello reply with @status and the message); the caller closes @cn. */
void daemon_refuse(struct conn *cn, int status, const char *fmt, ...) WD_PRINTF(3, 4);

/* The entry of @uid in d->uid_use (connections counted at accept by the control thread,
 * clients at the hello), created with zero counts; NULL when out of memory. */
struct uid_use *daemon_uid_use(struct daemon *d, uid_t uid);

/*
 * The spare ring segment the next hello takes (hello.c says why): the control thread makes
 * it once it has been idle for DAEMON_SPARE_IDLE_MS, when daemon_spare_wanted() says so.
 */
#define DAEMON_SPARE_IDLE_MS 2
bool daemon_spare_wanted(const struct daemon *d);
void daemon_spare_make(struct daemon *d);
void daemon_spare_free(struct daemon *d);

/* ---- core/daemon/control.c: the control thread ---------------------------------------- */

/*
 * The orderly end: no shard runs any more, queued worker requests are cancelled, the worker
 * finishes the one it runs, the tiers stop, and then every client gets its owed completions,
 * a SHUTDOWN mark on its ring and a closed socket. Runs once; daemon_run() and
 * daemon_destroy() call it.
 */
void daemon_shutdown(struct daemon *d);


/* The epoll tag of the control thread's descriptor of @kind (not PENDING or CLIENT). */
void *daemon_watch_tag(enum conn_kind kind);

/* Adds @fd to the control thread's epoll set under the tag of @kind. Returns 0 or -errno. */
int daemon_watch(struct daemon *d, int fd, enum conn_kind kind);

#endif
