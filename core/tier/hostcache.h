/*
 * The daemon's host tier: the shared host cache arena, the io_uring loader that fills it, and
 * the policy that decides what stays (core/policy/evict.h). It turns LOAD, UNLOAD and CACHE requests
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
 * (core/policy/evict.h); the worker writes the new counts to the catalog after each load job and the
 * daemon's thread writes the rest at the end, and hostcache_create() loads them back, so the
 * statistics survive a restart. After a requested full load, the components most often
 * requested with it are prefetched when the budget has room for them without evicting.
 *
 * Where things run:
 *   shard   hostcache_load(): a LOAD whose every component is resident in the requested
 *           form is answered inline (a hit), without the worker or the catalog;
 *           hostcache_unload(), hostcache_list(), hostcache_stats().
 *   worker  hostcache_load_job(): reads the catalog, plans each component (opens the files,
 *           checks their fingerprints against the catalog), admits it (evicting), allocates
 *           an extent and submits it to the loader; a component already loading is joined
 *           (request coalescing: one disk read, every requester waits on it). The
 *           prefetches a finished load suggests come back here too: the loader thread
 *           defers them to the worker (tier_sink.defer). The device tier's
 *           hostcache_load_for() and hostcache_plan_layout() run here as well.
 *   loader  progress and completion callbacks: publish progress and the final state, and
 *           post the requesters' completions through the daemon's sink (tier_sink.post in
 *           core/tier/tier.h), so that each client's shard stays the only producer on its
 *           completion ring; a finished load is noted there too (tier_sink.load_done: the
 *           daemon's metrics and slow_load alert).
 *   control hostcache_client_gone(): a load whose every requester has disconnected is
 *           cancelled; the reload and memory-pressure calls; hostcache_publish_metrics().
 *   device  the device tier's thread: hostcache_hold()/hostcache_unhold() and demotion
 *           (hostcache_adopt_*()).
 *
 * The daemon drives the tier through core/tier/tier.h: hostcache_create() takes a struct
 * tier_env (the registry and the daemon's view of it, state_lock, the lease table, the
 * catalog handle, --verify and the sink of callbacks); clients are opaque struct tier_client
 * handles. Nothing here sees the daemon's own structures.
 *
 * Locking: the cache's own lock is taken after clients_lock (and after the device tier's
 * lock) and before state_lock (registry writes, the lease table); nothing that holds
 * state_lock takes the cache lock. The complete lock order of the daemon and both tiers is in
 * core/daemon/internal.h.
 *
 * Files (one concern each): hostcache.c (lifecycle and the shard side), host_entries.c (the
 * entry table, deduplication and publication in the registry), host_admit.c (admission,
 * eviction and the budget), host_load.c (the load pipeline: requests, planning and
 * submitting), host_req.c (a request's end), host_done.c (the loader's callbacks), host_prefetch.c (co-access and
 * prefetch), host_device.c (services for the device tier); host_internal.h holds what they
 * share.
 */
#ifndef WD_CORE_HOSTCACHE_H
#define WD_CORE_HOSTCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/catalog/catalog.h"
#include "core/tier/tier.h"
#include "shm/abi.h"

struct hostcache;

/* The configuration the host tier starts with (a reload changes it with the setters below). */
struct hostcache_config {
	uint64_t budget;		/* bytes; 0: the default (hostcache_fit_budget()) */
	uint64_t ttl_ns;		/* keep-alive of entries; 0: none */
	bool prefault;			/* populate the whole arena at start */
	uint32_t quarantine_after;	/* load failures in a row that quarantine; 0: never */
};

/*
 * Creates the host tier: an arena of @cfg->budget bytes fitted by hostcache_fit_budget() and
 * rounded to the extent alignment (hostcache_budget() says what it became), the loader
 * thread and the eviction policy, with the daemon's interface @env (copied; what it points
 * to must outlive the tier). It loads the saved co-access counts from *env->cat, and probes
 * the CUDA driver once, to say why the GPU tier refuses loads.
 * Returns 0 and sets *@out; -ENOMEM; or the error of arena_create(), loader_create(),
 * evict_create() or quarantine_create() (nothing is left behind).
 */
int hostcache_create(const struct tier_env *env, const struct hostcache_config *cfg,
		     struct hostcache **out);

/*
 * Stops the loader: every queued and running load is cancelled and its requesters get their
 * final completion (-ECANCELED). Call it after the shards and the worker stopped.
 */
void hostcache_stop(struct hostcache *hc);

/* Frees what hostcache_create() made (after writing the co-access counts not yet saved); NULL
 * is ignored. */
void hostcache_destroy(struct hostcache *hc);

/* A new read-only descriptor of the arena for one client (the caller closes it), or -errno. */
int hostcache_client_fd(struct hostcache *hc);

/* The arena's size in bytes: what a client maps. */
uint64_t hostcache_size(struct hostcache *hc);

/*
 * The LOAD op on the shard, for client @c. Validates the tier (-ENOTSUP with the reason for a
 * GPU tier), the selection and conversion arguments (arg[0], payload @arg of @arg_len bytes;
 * tier_parse_form()) and, when every target component of @model is resident in the
 * requested form, answers the request inline (a hit, pinning it with WD_SQE_F_PIN). Returns
 * TIER_DONE with *@cqe and @out (WD_DATA_SLOT_SIZE bytes) filled, or TIER_ASYNC when the
 * request must go to the worker (the caller queues it).
 */
enum tier_outcome hostcache_load(struct hostcache *hc, struct tier_client *c,
				 const struct wd_sqe *sqe, const char *arg, uint16_t arg_len,
				 uint32_t model, struct wd_cqe *cqe, char *out);

/* Worker side of LOAD (see above), or of a prefetch the tier deferred (j->c NULL); takes
 * j->spare and posts the final completion later, from any thread. */
void hostcache_load_job(struct hostcache *hc, struct tier_job *j);

/*
 * UNLOAD on the host tier of @model (@comp, or WD_ID_NONE for all its components), after the
 * caller checked pins. Drops every entry bound to the target (an entry shared with another
 * component only loses this binding). Returns the bytes released (>= 0), or -EBUSY with a
 * message in @out (*@out_len bytes) when one of them is still loading.
 */
int64_t hostcache_unload(struct hostcache *hc, uint32_t model, uint32_t comp, char *out,
			 uint16_t *out_len);

/*
 * The CACHE op: writes up to WD_DATA_SLOT_SIZE / sizeof(struct wd_cache_entry) entries,
 * starting at index @start, into @out. Returns the number of entries in the cache and sets
 * *@n_out to the number written.
 */
uint32_t hostcache_list(struct hostcache *hc, uint32_t start, void *out, uint16_t *n_out);

/* Fills the WD_STAT_HOST_* and WD_STAT_CUDA_* entries of @v (WD_STAT_COUNT values). */
void hostcache_stats(struct hostcache *hc, uint64_t *v);

/* The INFO op's view of the loader: the WD_INFO_* I/O flags and errors of @info. */
void hostcache_io_info(struct hostcache *hc, struct wd_info *info);

/*
 * Stores the host cache's state into the registry's metrics block (shm/regmetrics.h): budget,
 * bytes used, free extents and the largest one (arena_get_stats()), and resident bytes per
 * NUMA node as placement bound each entry (its placement decision, not a page walk). Takes
 * the cache lock; the control thread calls it once per alert interval.
 */
void hostcache_publish_metrics(struct hostcache *hc);

/* Client @c disconnected: cancels the loads that only it was waiting for. */
void hostcache_client_gone(struct hostcache *hc, struct tier_client *c);

/*
 * Recovery and reload (core/policy/recovery.h, core/daemon/psi.h, docs/config.md).
 *
 * hostcache_shed() evicts unpinned entries, highest eviction score first, until at most
 * @target bytes are in use (memory pressure); returns how many it evicted and their bytes in
 * *@bytes (counted in RECOVERY_PRESSURE_SHEDS).
 *
 * hostcache_set_budget() changes the budget live. The arena keeps the size it started with
 * (its memfd is sealed against growing), so the budget can grow back up to that size only
 * (-EFBIG beyond it: needs a restart). Shrinking reserves the difference in the policy,
 * evicting unpinned entries; when what is pinned, loading or within its keep-alive does not
 * fit, nothing changes and it returns -EBUSY. @msg (@msg_len bytes) says why on failure.
 * hostcache_budget() is the budget in force.
 *
 * hostcache_fit_budget() is the budget to use for a configured @budget (0: the default, a
 * quarter of the memory this daemon may use): at most min(MemTotal, the memory cgroup's
 * limit) less a headroom (wd_memlimit_budget_cap() in core/base/memlimit.h). A larger one is clamped to that, with a
 * warning that names the limit and where it came from; start and reload both use it.
 *
 * hostcache_set_ttl() sets the keep-alive of every resident and future entry;
 * hostcache_set_quarantine() the failures in a row that quarantine a component (0: never).
 */
uint64_t hostcache_shed(struct hostcache *hc, uint64_t target, uint64_t *bytes);
uint64_t hostcache_budget(struct hostcache *hc);
int hostcache_set_budget(struct hostcache *hc, uint64_t budget, char *msg, size_t msg_len);
uint64_t hostcache_fit_budget(uint64_t budget);

/*
 * Tells the host tier the current fingerprints of registry component @comp's files, as the
 * catalog @cc has them (daemon_publish() after every scan). A resident entry loaded from
 * other fingerprints is stale: a LOAD is then not answered from it (the worker loads the
 * files as they are now), and the cache listing flags it WD_CACHE_F_STALE. Takes the cache
 * lock: never call it with state_lock held.
 */
void hostcache_note_files(struct hostcache *hc, uint32_t comp, const struct catalog_component *cc);
void hostcache_set_ttl(struct hostcache *hc, uint64_t ttl_ns);
void hostcache_set_quarantine(struct hostcache *hc, uint32_t after);

/* ---- what the device tier (core/tier/devcache.h) uses ------------------------------------------ */

struct hostcache_tensor {
	uint32_t tid;		/* registry tensor index (UINT32_MAX: not in this component) */
	uint64_t off, nbytes;	/* in the extent */
	uint8_t dtype;		/* enum st_dtype of those bytes */
};

/* A resident host entry's extent and tensor layout, held by hostcache_hold(). */
struct hostcache_layout {
	char key[320];		/* the host entry's policy key */
	char ckey[320];		/* and its co-access key */
	uint64_t id;		/* its identity (files' fingerprints and form) */
	const void *base;	/* the extent in the daemon's mapping */
	uint64_t off, size, tensor_bytes;
	uint32_t n_t;
	struct hostcache_tensor *t;
};

/* Called, under the cache lock, when a hostcache_load_for() load ends, with that call's @ctx
 * and @arg: @err 0 or -errno with @msg, and the bytes read from disk for it (0: it was
 * resident). On success @held is the entry, already held as by hostcache_hold() (the callee
 * owns it: hostcache_unhold() and free(held->t) when done). It must not block or take the
 * cache lock: hand the work to another thread. */
typedef void (*hostcache_then_fn)(void *ctx, void *arg, int err, const char *msg,
				  uint64_t read_bytes, struct hostcache_layout *held);

/*
 * Worker thread: makes component @comp of @model resident on the host tier as stored (all
 * tensors, no conversion), starting, joining (coalescing) or finding its load like a LOAD of
 * client @c, whose progress completions carry @user_data (none with WD_SQE_F_NO_PROGRESS in
 * @flags). @then(@ctx, @arg) runs exactly once, when the component is resident or its load failed
 * (-EFBIG/-ENOSPC when the host budget cannot take it). Returns 0, or -ENOMEM when nothing
 * was started (@then is then not called). A new extent is bound to NUMA node @node, the
 * one local to the GPU the component is meant for (core/policy/placement.h); -1: the loader
 * thread's node.
 */
int hostcache_load_for(struct hostcache *hc, struct tier_client *c, uint64_t user_data,
		       uint8_t flags, uint32_t model, uint32_t comp, int node,
		       hostcache_then_fn then, void *ctx, void *arg);

/*
 * Holds the resident stored-form entry of @comp so that it is neither evicted nor unloaded
 * (-EBUSY) while the device tier copies from it, and describes it in @out. Returns 0,
 * -ENODATA when no such entry is resident, or -ENOMEM. Release with hostcache_unhold().
 */
int hostcache_hold(struct hostcache *hc, uint32_t comp, struct hostcache_layout *out);
/* Ends the hold of @l (its tensor table stays: free(l->t) when done with it). */
void hostcache_unhold(struct hostcache *hc, const struct hostcache_layout *l);

/*
 * Demotion from a GPU, in two steps, so that nothing is copied off it that the host cannot
 * keep: hostcache_adopt_reserve() checks the room (without evicting) and reserves an extent
 * of l->size bytes, writable at *@dst in the daemon's mapping; the caller fills it (copy_d2h)
 * and then either hostcache_adopt_commit() makes it @l's resident entry for @comp of @model
 * (0, or -ENOMEM; also 0 when a load of the same form finished meanwhile: the reserved
 * extent is freed), or hostcache_adopt_cancel() gives the extent back.
 * Reserve returns 0; -EEXIST when the entry is resident already (nothing to do); -ENOSPC
 * when the host budget has no room without evicting or no extent is free; -ENOMEM; with
 * @msg (@msg_len bytes) saying why.
 */
int hostcache_adopt_reserve(struct hostcache *hc, const struct hostcache_layout *l, void **dst,
			    char *msg, size_t msg_len);
int hostcache_adopt_commit(struct hostcache *hc, const struct hostcache_layout *l, uint32_t model,
			   uint32_t comp, void *dst);
void hostcache_adopt_cancel(struct hostcache *hc, const struct hostcache_layout *l, void *dst);

/* Whether the stored-form entry of @comp is resident on the host tier. */
bool hostcache_has(struct hostcache *hc, uint32_t comp);

/* Where a tensor's bytes are in its file (hostcache_plan_layout()). */
struct hostcache_src {
	char *path;
	uint64_t off, len;
};

/*
 * Worker thread: plans component @comp of @model as a stored-form host load would, without
 * admitting or reading anything: @out gets the layout a host entry would have (its id, keys,
 * size and tensor offsets; base NULL) and *@srcs, for each of its tensors, where the bytes
 * are in which file. For the device tier's disk -> VRAM path when the host budget cannot
 * take the component. Returns 0, or loader_plan()'s error with @msg (WD_DATA_SLOT_SIZE
 * bytes). Free with free(out->t) and hostcache_src_free(*srcs, out->n_t).
 */
int hostcache_plan_layout(struct hostcache *hc, uint32_t model, uint32_t comp,
			  struct hostcache_layout *out, struct hostcache_src **srcs, char *msg);
void hostcache_src_free(struct hostcache_src *src, uint32_t n);

/* The arena in the daemon's mapping (for cuMemHostRegister). */
void hostcache_arena(struct hostcache *hc, void **base, uint64_t *size);

#endif
