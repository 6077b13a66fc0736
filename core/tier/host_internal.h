/*
 * What the files of the host tier share (core/tier/hostcache.h is its interface; each
 * host_*.c file says what it holds): the cache, its entries, their loads and the requests
 * waiting on them, and the functions one file offers the others (host_ prefix). Nothing
 * outside core/tier/host*.c includes it.
 *
 * Locking, as in hostcache.h: struct hostcache's lock guards the entry table, every entry,
 * every load and request, the eviction policy and the counters; state_lock (env.state_lock)
 * is taken inside it for registry writes and the lease table, never the other way round.
 */
#ifndef WD_CORE_TIER_HOST_INTERNAL_H
#define WD_CORE_TIER_HOST_INTERNAL_H

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "core/base/array.h"
#include "core/base/log.h"
#include "core/base/common.h"
#include "core/policy/evict.h"
#include "core/policy/recovery.h"
#include "core/tier/hostcache.h"
#include "core/tier/tier.h"
#include "uring/arena.h"
#include "uring/loader.h"

#define MOD "hostcache"
#define NO_TID UINT32_MAX

struct load;
struct placement;

/* A component bound to an entry, with its registry tensor ids in entry tensor order. */
struct bind {
	uint32_t model, comp;
	uint32_t *tids;
};

/* One tensor of an entry: where it is in the extent, and what it was in its file. */
struct tinfo {
	char *name;
	uint64_t off, nbytes, src_bytes, xxh3;
	uint8_t dtype, src_dtype;
};

/* A cache entry: one component's tensors in one form, in one extent (hostcache.h). */
struct entry {
	struct entry *next;
	uint64_t id;		/* identity: files' fingerprints + form */
	uint64_t seq;		/* creation order: later entries win publication */
	char key[EVICT_KEY_MAX];
	char ckey[EVICT_KEY_MAX];	/* "model/component": the stable co-access key */
	bool resident;
	bool cancelled;		/* its load was cancelled: not joinable */
	bool prefetched;
	bool hashed;		/* t[].xxh3 are valid */
	uint8_t convert, sel;
	uint64_t sel_hash;
	uint64_t off, size;	/* the extent */
	int node;		/* NUMA node its pages are bound to; -1: not bound */
	uint64_t tensor_bytes;
	uint64_t qfp;		/* its files' fingerprints, for the quarantine (core/policy/recovery.h) */
	uint64_t last_use_ns;
	uint32_t pins;		/* evict_pin() calls applied */
	uint32_t holds;		/* hostcache_hold(): the device tier copies from it */
	uint32_t n_t;
	struct tinfo *t;
	uint32_t n_files;
	uint64_t *hdr;		/* the files' catalog content hashes, for deduplication */
	uint32_t n_binds;
	struct bind *binds;
	struct load *ld;	/* while loading */
};

/* A request (LOAD, or the device tier's hostcache_load_for()) waiting on its loads. */
struct req {
	struct tier_request q;	/* q.pin: the request's model and component (WD_ID_NONE: all) */
	uint64_t done, total, last_post_ns;
	bool orphan;		/* its client disconnected */
	int node;		/* NUMA node for new extents (a GPU's); -1: the loader's */
	hostcache_then_fn then;	/* hostcache_load_for(): called instead of the completion */
	void *then_ctx, *then_arg;
};

/* A load in flight: the entry it fills, the loader's handle and plan, its requesters. */
struct load {
	struct hostcache *hc;
	struct entry *e;
	struct load_handle *h;
	struct load_plan *plan;
	struct req **reqs;
	size_t n_reqs, cap_reqs;
	bool had_reqs;
	uint64_t done, total, last_pub_ns;
};

/* The host tier. */
struct hostcache {
	struct tier_env env;	/* the daemon's registry, state lock, pins and sink */
	pthread_mutex_t lock;
	struct arena *arena;
	struct loader *loader;
	struct evict_policy *pol;
	struct placement *pl;	/* this machine's topology; NULL: pages are not bound */
	uint64_t budget;
	/* Recovery (core/policy/recovery.h): repeated failures, and a budget shrunk by a reload, held
	 * as a standing reservation of the policy (the arena cannot change size). */
	struct quarantine *q;
	uint64_t shrink;
	uint64_t ttl_ns;
	char gpu_why[160];
	struct entry *entries;
	uint64_t next_seq;
	/* Per registry component: its files' fingerprints (files_fp()) as the catalog had
	 * them at the last publication; 0 unknown. An entry loaded from other ones is stale. */
	uint64_t *cur_qfp;
	size_t n_cur_qfp;
	/* Counters the policy does not keep. */
	uint64_t loads, read_bytes, coalesced, dedup_bytes, failed, prefetch_started;
	uint64_t read_direct;	/* of read_bytes, read with O_DIRECT */
};

static inline uint64_t round_extent(uint64_t n)
{
	if (n < ARENA_EXTENT_ALIGN)
		return ARENA_EXTENT_ALIGN;
	return (n + ARENA_EXTENT_ALIGN - 1) & ~(uint64_t)(ARENA_EXTENT_ALIGN - 1);
}

static inline bool form_equal(const struct entry *e, const struct tier_form *f)
{
	return e->convert == f->convert && e->sel == f->sel && e->sel_hash == f->sel_hash;
}

/* ---- host_entries.c: the entry table, publication, identity, deduplication ------- */

/* hostcache_hold() under the cache lock: holds @comp's resident stored-form entry. */
int host_hold_locked(struct hostcache *hc, uint32_t comp, struct hostcache_layout *out);

struct bind *host_find_bind(const struct entry *e, uint32_t comp);
struct entry *host_find_id(struct hostcache *hc, uint64_t id);
struct entry *host_find_form(struct hostcache *hc, uint32_t comp, const struct tier_form *f);
bool host_has_resident(struct hostcache *hc, uint32_t comp);
void host_publish_bind(struct hostcache *hc, const struct entry *e, const struct bind *b);
void host_refresh_state(struct hostcache *hc, uint32_t comp);
void host_unpublish_comp(struct hostcache *hc, struct entry *e, const struct bind *b);
int host_bind_comp(struct hostcache *hc, struct entry *e, uint32_t model, uint32_t comp);
void host_free_entry(struct entry *e);
void host_unlink_entry(struct hostcache *hc, struct entry *e);
void host_drop_entry(struct hostcache *hc, struct entry *e, bool evicted);
struct entry *host_find_key(struct hostcache *hc, const char *key);
void host_entry_key(char *key, size_t size, const char *name, const struct tier_form *f,
		    uint64_t id);
uint64_t host_files_fp(const struct catalog_component *cc);
bool host_entry_stale(const struct hostcache *hc, const struct entry *e, uint32_t comp);
struct entry *host_find_same_bytes(struct hostcache *hc, struct entry *e);
uint64_t host_identity(const struct catalog_component *cc, const struct tier_form *f);
const struct catalog_component *host_cat_comp(struct hostcache *hc,
					      const struct catalog_model *m, uint32_t comp);

/* ---- host_admit.c: pins, admission, eviction, placement -------------------------- */

int host_place_extent(struct hostcache *hc, const char *name, uint64_t off, uint64_t len,
		      int node);
void host_sync_pins(struct hostcache *hc);
void host_drop_victims(struct hostcache *hc, struct evict_victims *v);
int host_make_room(struct hostcache *hc, const char *name, uint64_t bytes, uint64_t *off,
		   char *msg);
int host_populate_extent(struct hostcache *hc, const char *name, uint64_t off, uint64_t bytes,
			 char *msg);
void host_release_extent(struct hostcache *hc, uint64_t off, uint64_t bytes);

/* ---- host_req.c: the end of a request ------------------------------------------- */

void host_req_fail(struct req *r, int err, const char *msg);
void host_req_done_one(struct hostcache *hc, struct req *r);

/* ---- host_load.c: the load pipeline ---------------------------------------------- */

int host_spec_files(const struct catalog_component *cc, struct load_file_spec **out,
		    uint32_t *n);

/* ---- host_done.c: the loader callbacks ------------------------------------------- */

void host_on_progress(void *arg, uint64_t done, uint64_t total);
void host_on_done(void *arg, struct load_handle *h);

/* ---- host_prefetch.c: co-access and prefetch ------------------------------------- */

int host_seed_pair(const char *a, const char *b, uint64_t count, void *arg);
void host_save_coaccess(struct hostcache *hc);
void host_queue_prefetch(struct hostcache *hc, const char *key);


#endif
