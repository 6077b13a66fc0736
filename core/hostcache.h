/*
 * The daemon's host tier: the shared host cache arena, the io_uring loader that fills it, and
 * the policy that decides what stays (core/evict.h). It turns LOAD, UNLOAD and CACHE requests
 * into cache entries and publishes where each tensor lives in the registry.
 *
 * A cache entry is one component's tensors in one form (as stored, or converted to F16/BF16;
 * all tensors, or a subset by prefix or names), in one extent of the arena. Its identity is a
 * hash of the component's files' fingerprints (dev, ino, size, mtime), the form and the
 * selection, so two models whose components are the same files (a hard link, a symlinked
 * blob as in the Hugging Face cache) share one entry before anything is read. After a load,
 * an entry whose files have the same headers (catalog content hashes) and the same tensor
 * bytes (XXH3 of every tensor) as a resident entry is dropped and its components bound to the
 * resident one: byte-identical copies are stored once even when they are different files.
 * Every component bound to an entry gets the entry's offsets in its tensor records.
 *
 * Co-access: every requested component is recorded under its stable key "model/component"
 * (core/evict.h); the worker writes the new counts to the catalog after each load job and the
 * daemon's thread writes the rest at the end, and hostcache_create() loads them back, so the
 * statistics survive a restart. After a requested full load, the components most often
 * requested with it are prefetched when the budget has room for them without evicting.
 *
 * Where things run:
 *   shard   hostcache_try_hit(): a LOAD whose every component is resident in the requested
 *           form is answered inline (a hit), without the worker or the catalog;
 *           hostcache_unload(), hostcache_list(), hostcache_stats().
 *   worker  hostcache_load_job(): reads the catalog, plans each component (opens the files,
 *           checks their fingerprints against the catalog), admits it (evicting), allocates
 *           an extent and submits it to the loader; a component already loading is joined
 *           (request coalescing: one disk read, every requester waits on it).
 *   loader  progress and completion callbacks: publish progress and the final state, and
 *           post the requesters' completions with daemon_post(), so that each client's shard
 *           stays the only producer on its completion ring.
 *   control hostcache_client_gone(): a load whose every requester has disconnected is
 *           cancelled.
 *
 * Locking: the cache's own lock is taken after clients_lock and before state_lock (registry
 * writes, the lease table); nothing that holds state_lock takes the cache lock.
 */
#ifndef WD_CORE_HOSTCACHE_H
#define WD_CORE_HOSTCACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/ops.h"

struct hostcache;

/*
 * Creates the host tier of @d: an arena of d->cfg.host_budget bytes (a quarter of the
 * machine's memory when unset), the loader thread and the eviction policy. It
 * also probes the CUDA driver once, to say why the GPU tier refuses loads.
 * Returns 0 and sets d->hc; -ENOMEM; or the error of arena_create(), loader_create() or
 * evict_create().
 */
int hostcache_create(struct daemon *d);

/*
 * Stops the loader: every queued and running load is cancelled and its requesters get their
 * final completion (-ECANCELED). Call it after the shards and the worker stopped.
 */
void hostcache_stop(struct daemon *d);

/* Frees what hostcache_create() made; NULL d->hc is ignored. */
void hostcache_destroy(struct daemon *d);

/* A new read-only descriptor of the arena for one client (the caller closes it), or -errno. */
int hostcache_client_fd(struct daemon *d);

/* The arena's size in bytes: what a client maps. */
uint64_t hostcache_size(struct daemon *d);

/*
 * The LOAD op on the shard. Validates the tier (-ENOTSUP with the reason for a GPU tier), the
 * selection and conversion arguments (arg[0], payload; docs/protocol.md) and, when every
 * target component is resident in the requested form, answers the request inline (a hit,
 * pinning it with WD_SQE_F_PIN). Returns OPS_DONE with *@cqe filled, or OPS_ASYNC when the
 * request was queued for the worker.
 */
enum ops_outcome hostcache_load(struct daemon *d, struct client *c, const struct wd_sqe *sqe,
				const char *arg, uint16_t arg_len, uint32_t model,
				struct wd_cqe *cqe, char *out);

/* Worker side of LOAD (see above); posts the final completion later, from any thread. */
void hostcache_load_job(struct daemon *d, struct job *j);

/*
 * UNLOAD on the host tier of @model (@comp, or WD_ID_NONE for all its components), after the
 * caller checked pins. Drops every entry bound to the target (an entry shared with another
 * component only loses this binding). Returns the bytes released (>= 0), or -EBUSY with a
 * message in @out (*@out_len bytes) when one of them is still loading.
 */
int64_t hostcache_unload(struct daemon *d, uint32_t model, uint32_t comp, char *out,
			 uint16_t *out_len);

/*
 * The CACHE op: writes up to WD_DATA_SLOT_SIZE / sizeof(struct wd_cache_entry) entries,
 * starting at index @start, into @out. Returns the number of entries in the cache and sets
 * *@n_out to the number written.
 */
uint32_t hostcache_list(struct daemon *d, uint32_t start, void *out, uint16_t *n_out);

/* Fills the WD_STAT_HOST_* and WD_STAT_CUDA_* entries of @v (WD_STAT_COUNT values). */
void hostcache_stats(struct daemon *d, uint64_t *v);

/* Client @c disconnected: cancels the loads that only it was waiting for. */
void hostcache_client_gone(struct daemon *d, struct client *c);

#endif
