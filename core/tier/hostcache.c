/*
 * The host tier of the daemon: cache entries in the arena, loads, admission and eviction,
 * and their publication in the registry. See core/tier/hostcache.h for the model and the threads.
 */
#include "core/tier/hostcache.h"
#include "core/base/file.h"
#include "core/base/memlimit.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/base/array.h"
#include "core/format/convert.h"
#include "core/policy/evict.h"
#include "core/base/fault.h"
#include "core/base/log.h"
#include "core/policy/placement.h"
#include "core/policy/recovery.h"
#include "gpu/cuda.h"
#include "uring/arena.h"
#include "uring/loader.h"

#define MOD "hostcache"
#define PROGRESS_NS (1000 * 1000)	/* at most one progress report per request per 1 ms */
#define NO_TID UINT32_MAX
#define PREFETCH_MIN_COUNT 2u		/* co-accesses before a component is prefetched */
#define PREFETCH_MAX 4u
#define SAVE_BATCH 64u			/* co-access pairs written to the catalog per drain */


/* A component bound to an entry, with its registry tensor ids in entry tensor order. */
struct bind {
	uint32_t model, comp;
	uint32_t *tids;
};

struct tinfo {
	char *name;
	uint64_t off, nbytes, src_bytes, xxh3;
	uint8_t dtype, src_dtype;
};

struct load;

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

/* ---- small helpers --------------------------------------------------------------------- */

/*
 * Binds a fresh extent to its NUMA node (core/policy/placement.h): @node, the node local to the GPU
 * the component is meant for, when it is >= 0; else the loader thread's node, since the
 * loader's reads are the pages' first touch. The bind comes before the loader writes, so
 * first touch allocates there. Returns the node, or -1 when nothing was bound (no topology,
 * or mbind refused: the pages then follow the default policy, which is logged, and the load
 * goes on).
 */
static int place_extent(struct hostcache *hc, const char *name, uint64_t off, uint64_t len,
			int node)
{
	struct placement_choice c = { .node = node, .reason = PLACE_GPU_LOCAL };
	int cpu = loader_cpu(hc->loader), ret = 0;

	if (!hc->pl)
		return -1;
	if (node < 0)
		ret = placement_choose(hc->pl, NULL, cpu >= 0 ? cpu : -1, &c);
	if (!ret)
		ret = arena_bind_node(hc->arena, off, len, c.node);
	if (ret) {
		log_warn(MOD, "\"host cache pages not bound to a NUMA node\" component=%s err=%d",
			 name, ret);
		return -1;
	}
	log_debug(MOD, "\"placed\" component=%s node=%d reason=%s", name, c.node,
		  placement_reason_name(c.reason));
	return c.node;
}

static const char *form_name(uint8_t convert)
{
	const struct st_dtype_info *di;

	if (!convert)
		return "stored";
	di = st_dtype_info((enum st_dtype)convert);
	return di ? di->name : "?";
}

static uint64_t round_extent(uint64_t n)
{
	if (n < ARENA_EXTENT_ALIGN)
		return ARENA_EXTENT_ALIGN;
	return (n + ARENA_EXTENT_ALIGN - 1) & ~(uint64_t)(ARENA_EXTENT_ALIGN - 1);
}

static bool form_equal(const struct entry *e, const struct tier_form *f)
{
	return e->convert == f->convert && e->sel == f->sel && e->sel_hash == f->sel_hash;
}

static struct bind *find_bind(const struct entry *e, uint32_t comp)
{
	for (uint32_t i = 0; i < e->n_binds; i++)
		if (e->binds[i].comp == comp)
			return &e->binds[i];
	return NULL;
}

static struct entry *find_id(struct hostcache *hc, uint64_t id)
{
	for (struct entry *e = hc->entries; e; e = e->next)
		if (e->id == id && !e->cancelled)
			return e;
	return NULL;
}

/* The entry that holds component @comp in form @f, or NULL. */
static struct entry *find_form(struct hostcache *hc, uint32_t comp, const struct tier_form *f)
{
	for (struct entry *e = hc->entries; e; e = e->next)
		if (!e->cancelled && form_equal(e, f) && find_bind(e, comp))
			return e;
	return NULL;
}

/* Whether a full entry of @comp is resident (a failed reload must not hide it). */
static bool has_resident(struct hostcache *hc, uint32_t comp)
{
	for (struct entry *e = hc->entries; e; e = e->next)
		if (e->resident && e->sel == TIER_SEL_ALL && find_bind(e, comp))
			return true;
	return false;
}

/* ---- registry publication (callers hold the cache lock; these take state_lock) --------- */

static void publish_bind(struct hostcache *hc, const struct entry *e, const struct bind *b)
{
	for (uint32_t i = 0; i < e->n_t; i++) {
		if (b->tids[i] == NO_TID)
			continue;
		registry_set_tensor_host(hc->env.reg, b->tids[i], true, e->off + e->t[i].off,
					 e->t[i].dtype, e->t[i].nbytes);
	}
}

/* The host state of @comp from the entries bound to it. Under state_lock. */
static void refresh_state(struct hostcache *hc, uint32_t comp)
{
	uint32_t state = WD_STATE_ABSENT;

	for (struct entry *e = hc->entries; e; e = e->next) {
		if (e->sel != TIER_SEL_ALL || e->cancelled || !find_bind(e, comp))
			continue;
		if (e->resident) {
			state = WD_STATE_RESIDENT;
			break;
		}
		state = WD_STATE_LOADING;
	}
	if (state != WD_STATE_LOADING)
		registry_set_state(hc->env.reg, comp, WD_TIER_HOST, state, 0);
}

/*
 * Takes @comp's tensors away from @e: not resident (and back to the file's dtype and size),
 * then republishes every other resident entry bound to @comp in creation order, so that a
 * tensor another form still holds stays resident. Under state_lock.
 */
static void unpublish_comp(struct hostcache *hc, struct entry *e, const struct bind *b)
{
	uint64_t seq = 0;

	for (uint32_t i = 0; i < e->n_t; i++) {
		if (b->tids[i] == NO_TID)
			continue;
		registry_set_tensor_host(hc->env.reg, b->tids[i], false, UINT64_MAX,
					 e->t[i].src_dtype, e->t[i].src_bytes);
	}
	for (;;) {
		struct entry *next = NULL;
		const struct bind *nb = NULL;

		for (struct entry *f = hc->entries; f; f = f->next) {
			const struct bind *fb;

			if (f == e || !f->resident || f->seq < seq || (next && f->seq > next->seq))
				continue;
			if ((fb = find_bind(f, b->comp)) && f->seq >= seq) {
				next = f;
				nb = fb;
			}
		}
		if (!next)
			break;
		publish_bind(hc, next, nb);
		seq = next->seq + 1;
	}
}

/* Binds @comp of @model to @e: looks its tensors up in the registry. Returns 0 or -ENOMEM. */
static int bind_comp(struct hostcache *hc, struct entry *e, uint32_t model, uint32_t comp)
{
	struct bind *b;

	if (find_bind(e, comp))
		return 0;
	b = realloc(e->binds, (e->n_binds + 1) * sizeof(*b));
	if (!b)
		return -ENOMEM;
	e->binds = b;
	b = &e->binds[e->n_binds];
	b->model = model;
	b->comp = comp;
	b->tids = malloc((e->n_t ? e->n_t : 1) * sizeof(uint32_t));
	if (!b->tids)
		return -ENOMEM;
	for (uint32_t i = 0; i < e->n_t; i++)
		if (registry_find_tensor(hc->env.view, model, comp, e->t[i].name, &b->tids[i], NULL))
			b->tids[i] = NO_TID;
	e->n_binds++;
	pthread_mutex_lock(hc->env.state_lock);
	if (e->resident) {
		publish_bind(hc, e, b);
		refresh_state(hc, comp);
	}
	pthread_mutex_unlock(hc->env.state_lock);
	return 0;
}

/* ---- entries --------------------------------------------------------------------------- */

static void free_entry(struct entry *e)
{
	for (uint32_t i = 0; i < e->n_t; i++)
		free(e->t[i].name);
	for (uint32_t i = 0; i < e->n_binds; i++)
		free(e->binds[i].tids);
	free(e->t);
	free(e->hdr);
	free(e->binds);
	free(e);
}

static void unlink_entry(struct hostcache *hc, struct entry *e)
{
	for (struct entry **pp = &hc->entries; *pp; pp = &(*pp)->next) {
		if (*pp == e) {
			*pp = e->next;
			return;
		}
	}
}

/*
 * Drops resident entry @e: unpublished from every component, its extent freed, removed from
 * the policy (@evicted: counted as an eviction). Under the cache lock.
 */
static void drop_entry(struct hostcache *hc, struct entry *e, bool evicted)
{
	unlink_entry(hc, e);
	pthread_mutex_lock(hc->env.state_lock);
	for (uint32_t i = 0; i < e->n_binds; i++) {
		unpublish_comp(hc, e, &e->binds[i]);
		refresh_state(hc, e->binds[i].comp);
	}
	registry_counter_add(hc->env.reg, WD_CTR_HOST_BYTES, -(int64_t)e->size);
	pthread_mutex_unlock(hc->env.state_lock);
	arena_free(hc->arena, e->off, e->size);
	evict_remove(hc->pol, e->key, evicted);
	log_info(MOD, "\"%s\" key=\"%s\" bytes=%" PRIu64, evicted ? "evicted" : "dropped", e->key,
		 e->size);
	free_entry(e);
}

static struct entry *find_key(struct hostcache *hc, const char *key)
{
	for (struct entry *e = hc->entries; e; e = e->next)
		if (e->resident && !strcmp(e->key, key))
			return e;
	return NULL;
}

/*
 * Brings the policy's lease counts in line with the client pins: an entry gets one lease per
 * client pin on the host tier that covers one of its components (or their whole model).
 * Run before choosing victims, so that pins taken or dropped on any thread count.
 */
/* Whether client pin @p covers one of host entry @ent's components (tier_pins_count()). */
static bool pin_covers_entry(const void *ent, const struct lease_pin *p)
{
	const struct entry *e = ent;

	for (uint32_t k = 0; k < e->n_binds; k++)
		if (tier_pin_covers(p, WD_TIER_HOST, e->binds[k].model, e->binds[k].comp))
			return true;
	return false;
}

static void sync_pins(struct hostcache *hc)
{
	pthread_mutex_lock(hc->env.state_lock);
	for (struct entry *e = hc->entries; e; e = e->next)
		if (e->resident)
			tier_pins_apply(hc->pol, e->key, &e->pins,
					tier_pins_count(hc->env.leases, pin_covers_entry, e));
	pthread_mutex_unlock(hc->env.state_lock);
}

/* What recovery_alloc_retry() works on for one extent (make_room, populate_extent). */
struct alloc_ctx {
	struct hostcache *hc;
	uint64_t bytes, off, now;
};

static int try_extent(void *arg)
{
	struct alloc_ctx *a = arg;
	int err = fault_take(FAULT_ALLOC);

	return err ? -err : arena_alloc(a->hc->arena, a->bytes, &a->off);
}

static int try_populate(void *arg)
{
	struct alloc_ctx *a = arg;

	return recovery_populate(arena_ptr(a->hc->arena, a->off), a->bytes);
}

/*
 * Evicts unpinned entries, highest eviction score first, until an extent of @bytes is free
 * (after -ENOSPC: fragmentation) or @bytes were freed (after -ENOMEM). Under the cache lock.
 * Returns the bytes evicted.
 */
static int64_t evict_for(void *arg, uint64_t bytes, int err)
{
	struct alloc_ctx *a = arg;
	struct hostcache *hc = a->hc;
	char key[EVICT_KEY_MAX];
	int64_t freed = 0;

	for (;;) {
		if (freed) {
			struct arena_stats st;

			arena_get_stats(hc->arena, &st);
			if (err == -ENOMEM ? (uint64_t)freed >= bytes : st.ext.largest_free >= bytes)
				break;
		}
		if (evict_next_victim(hc->pol, a->now, key))
			break;
		struct entry *e = find_key(hc, key);

		if (e) {
			freed += (int64_t)e->size;
			drop_entry(a->hc, e, true);
		} else {
			evict_remove(hc->pol, key, true);
		}
	}
	return freed;
}

/* Drops the entries evict_admit() chose (or forgets a key it has no entry for), frees @v. */
static void evict_victims(struct hostcache *hc, struct evict_victims *v)
{
	for (size_t i = 0; i < v->n; i++) {
		struct entry *e = find_key(hc, v->keys[i]);

		if (e)
			drop_entry(hc, e, true);
		else
			evict_remove(hc->pol, v->keys[i], true);
	}
	evict_victims_free(v);
}

/*
 * Makes room for @bytes and allocates the extent: admission (which may pick victims), the
 * victims dropped, then the allocation under the recovery policy (core/policy/recovery.h: when no
 * extent is large enough, evict more and retry once). Returns 0 with *@off set, or
 * -EFBIG/-ENOSPC with @msg.
 */
static int make_room(struct hostcache *hc, const char *name, uint64_t bytes, uint64_t *off,
		     char *msg)
{
	struct evict_victims v;
	struct alloc_ctx a = { .hc = hc, .bytes = bytes, .now = wd_now_ns() };
	int ret;

	sync_pins(hc);
	ret = evict_admit(hc->pol, name, bytes, a.now, &v, msg, WD_DATA_SLOT_SIZE);
	if (ret)
		return ret;
	evict_victims(hc, &v);
	ret = recovery_alloc_retry(&(struct recovery_alloc){
		.tier = "host", .name = name, .what = "an extent", .bytes = bytes,
		.try_alloc = try_extent, .evict = evict_for, .arg = &a }, msg, WD_DATA_SLOT_SIZE);
	if (ret)
		evict_unreserve(hc->pol, bytes);
	else
		*off = a.off;
	return ret;
}

/*
 * When memory is tight (recovery_populate_needed()), faults in the pages of a fresh extent
 * (after it was bound to its NUMA node), so that a lack of memory is an error now rather than
 * the OOM killer or SIGBUS in the loader; on -ENOMEM unpinned entries are evicted and it is
 * tried once more. Under the cache lock. Returns 0 or -errno with @msg.
 */
static int populate_extent(struct hostcache *hc, const char *name, uint64_t off, uint64_t bytes,
			   char *msg)
{
	struct alloc_ctx a = { .hc = hc, .bytes = bytes, .off = off, .now = wd_now_ns() };

	if (!recovery_populate_needed(bytes))
		return 0;
	return recovery_alloc_retry(&(struct recovery_alloc){
		.tier = "host", .name = name, .what = "pages", .bytes = bytes,
		.try_alloc = try_populate, .evict = evict_for, .arg = &a }, msg, WD_DATA_SLOT_SIZE);
}

/*
 * The policy key of a host entry: "<model>/<component>@<form>[selection]#<identity>". The
 * device tier's plan of a stored-form entry (hostcache_plan_layout()) must name it the same.
 */
static void entry_key(char *key, size_t size, const char *name, const struct tier_form *f,
		      uint64_t id)
{
	snprintf(key, size - 18, "%.280s@%s%s", name, form_name(f->convert),
		 f->sel == TIER_SEL_PREFIX ? "[prefix]" : f->sel == TIER_SEL_NAMES ? "[names]" : "");
	snprintf(key + strlen(key), 18, "#%016" PRIx64, id);
}

/* A hash of the fingerprints (dev, ino, size, mtime) of @cc's files: the quarantine's. */
static uint64_t files_fp(const struct catalog_component *cc)
{
	uint64_t h = 0;

	for (size_t k = 0; k < cc->n_files; k++)
		h = XXH3_64bits_withSeed(&cc->files[k].fp, sizeof(cc->files[k].fp), h);
	return h;
}

/* Whether @e, bound to @comp, holds the bytes of files that changed since (under the lock). */
static bool entry_stale(const struct hostcache *hc, const struct entry *e, uint32_t comp)
{
	return comp < hc->n_cur_qfp && hc->cur_qfp[comp] && e->qfp &&
	       hc->cur_qfp[comp] != e->qfp;
}

void hostcache_note_files(struct hostcache *hc, uint32_t comp, const struct catalog_component *cc)
{
	if (!hc)
		return; /* the publication at start comes before the host tier */
	pthread_mutex_lock(&hc->lock);
	if (comp >= hc->n_cur_qfp) {
		size_t n = comp + 1 > 2 * hc->n_cur_qfp ? comp + 1 : 2 * hc->n_cur_qfp;
		uint64_t *p = realloc(hc->cur_qfp, n * sizeof(*p));

		if (!p) {
			pthread_mutex_unlock(&hc->lock);
			return; /* unknown: such entries are not called stale */
		}
		memset(p + hc->n_cur_qfp, 0, (n - hc->n_cur_qfp) * sizeof(*p));
		hc->cur_qfp = p;
		hc->n_cur_qfp = n;
	}
	hc->cur_qfp[comp] = files_fp(cc);
	pthread_mutex_unlock(&hc->lock);
}

/* ---- requests -------------------------------------------------------------------------- */

static int hold_locked(struct hostcache *hc, uint32_t comp, struct hostcache_layout *out);

/* Posts @r's final completion and frees it. Under the cache lock. */
static void finish_req(struct hostcache *hc, struct req *r)
{
	if (r->then) {
		struct hostcache_layout l;
		int err = r->q.err;

		/* Held now, under the lock that made it resident: no eviction can come between. */
		if (!err && (err = hold_locked(hc, r->q.pin.component, &l)))
			snprintf(r->q.msg, sizeof(r->q.msg), "load: component %u went from the host "
				 "cache before it could be held (%s)", r->q.pin.component,
				 strerror(-err));
		r->then(r->then_ctx, r->then_arg, err, r->q.msg, r->q.read_bytes,
			err ? NULL : &l);
		hc->env.sink.client_put(hc->env.sink.ctx, r->q.c);
		free(r->q.spare);
		free(r);
		return;
	}
	tier_req_finish(&hc->env, &r->q);
	free(r);
}

static void req_fail(struct req *r, int err, const char *msg)
{
	tier_req_fail(&r->q, err, msg);
}

/* One of @r's loads ended (or its fan-out did): the last one finishes it. Under the lock. */
static void req_done_one(struct hostcache *hc, struct req *r)
{
	if (tier_req_done_one(&r->q))
		finish_req(hc, r);
}

static int attach_req(struct load *ld, struct req *r)
{
	if (wd_grow(&ld->reqs, &ld->cap_reqs, ld->n_reqs, sizeof(*ld->reqs)))
		return -ENOMEM;
	ld->reqs[ld->n_reqs++] = r;
	ld->had_reqs = true;
	r->q.pending++;
	r->total += ld->total;
	r->done += ld->done;
	r->q.read_bytes += ld->total;
	return 0;
}

/* ---- loader callbacks (loader thread) ------------------------------------------------- */

static void on_progress(void *arg, uint64_t done, uint64_t total)
{
	struct load *ld = arg;
	struct hostcache *hc = ld->hc;
	uint64_t now = wd_now_ns(), delta;

	pthread_mutex_lock(&hc->lock);
	delta = done > ld->done ? done - ld->done : 0;
	ld->done = done;
	for (uint32_t i = 0; i < ld->n_reqs; i++) {
		struct req *r = ld->reqs[i];
		struct wd_cqe cqe = { .user_data = r->q.user_data, .flags = WD_CQE_F_PROGRESS };

		r->done += delta;
		if ((r->q.flags & WD_SQE_F_NO_PROGRESS) || r->orphan ||
		    (now - r->last_post_ns < PROGRESS_NS && r->done < r->total))
			continue;
		r->last_post_ns = now;
		cqe.aux0 = r->done;
		cqe.aux1 = r->total;
		hc->env.sink.post(hc->env.sink.ctx, r->q.c, &cqe, NULL, NULL, 0);
	}
	if (now - ld->last_pub_ns >= PROGRESS_NS || done == total) {
		ld->last_pub_ns = now;
		pthread_mutex_lock(hc->env.state_lock);
		for (uint32_t i = 0; i < ld->e->n_binds; i++)
			if (ld->e->sel == TIER_SEL_ALL)
				registry_set_progress(hc->env.reg, ld->e->binds[i].comp, WD_TIER_HOST,
						      done, total);
		pthread_mutex_unlock(hc->env.state_lock);
	}
	pthread_mutex_unlock(&hc->lock);
}

static void hash_entry(struct hostcache *hc, struct entry *e)
{
	if (e->hashed)
		return;
	for (uint32_t i = 0; i < e->n_t; i++)
		e->t[i].xxh3 = XXH3_64bits(arena_ptr(hc->arena, e->off + e->t[i].off),
					   e->t[i].nbytes);
	e->hashed = true;
}

/*
 * A resident entry with the same content as freshly loaded @e: same form, same file headers
 * (catalog content hashes), and the same XXH3 for every tensor. Hashing costs a pass over
 * both entries' bytes, and is done only when the headers already match.
 */
static struct entry *find_same_bytes(struct hostcache *hc, struct entry *e)
{
	for (struct entry *f = hc->entries; f; f = f->next) {
		if (f == e || !f->resident || f->convert != e->convert || f->sel != e->sel ||
		    f->sel_hash != e->sel_hash || f->n_t != e->n_t || f->n_files != e->n_files ||
		    f->tensor_bytes != e->tensor_bytes ||
		    memcmp(f->hdr, e->hdr, e->n_files * sizeof(uint64_t)))
			continue;
		hash_entry(hc, e);
		hash_entry(hc, f);
		uint32_t i;

		for (i = 0; i < e->n_t; i++)
			if (e->t[i].xxh3 != f->t[i].xxh3 || e->t[i].nbytes != f->t[i].nbytes ||
			    strcmp(e->t[i].name, f->t[i].name))
				break;
		if (i == e->n_t)
			return f;
	}
	return NULL;
}

static void queue_prefetch(struct hostcache *hc, const char *key);
static void save_coaccess(struct hostcache *hc);

/* With --verify the loader hashed every tensor as it read it: keep those hashes. */
static void keep_verified_hashes(struct entry *e, const struct load_plan *plan)
{
	if (!(plan->flags & LOAD_F_VERIFY))
		return;
	for (uint32_t i = 0; i < e->n_t; i++)
		e->t[i].xxh3 = plan->tensors[i].xxh3;
	e->hashed = true;
}

/* Identical bytes are resident already (@twin): keep those, drop freshly loaded @e's extent
 * and bind its components to @twin. @e is freed by the caller. */
static void dedup_into(struct hostcache *hc, struct entry *e, struct entry *twin, uint64_t now)
{
	unlink_entry(hc, e);
	arena_free(hc->arena, e->off, e->size);
	evict_unreserve(hc->pol, e->size);
	hc->dedup_bytes += e->size;
	for (uint32_t i = 0; i < e->n_binds; i++)
		bind_comp(hc, twin, e->binds[i].model, e->binds[i].comp);
	log_info(MOD, "\"deduplicated\" key=\"%s\" into=\"%s\" bytes=%" PRIu64,
		 e->key, twin->key, e->size);
	twin->last_use_ns = now;
}

/* Freshly loaded @e becomes resident: it enters the eviction policy (with the keep-alive in
 * force now, which a reload may have changed, and its load rate), and its component's
 * failures in a row are forgotten. */
static void admit_loaded(struct hostcache *hc, struct entry *e, uint64_t read, uint64_t now,
			 uint64_t ns)
{
	e->resident = true;
	e->last_use_ns = now;
	evict_insert(hc->pol, e->key, e->size, now, e->prefetched);
	evict_set_ttl(hc->pol, e->key, hc->ttl_ns);
	quarantine_ok(hc->q, e->ckey);
	if (ns)
		evict_set_rate(hc->pol, e->key, (double)read * 1e9 / (double)ns);
}

/* Publishes resident @e: its tensors and state for every component bound to it, the host
 * bytes counter and each component's last load. Takes state_lock. */
static void publish_loaded(struct hostcache *hc, const struct entry *e, uint64_t read,
			   uint64_t ns)
{
	pthread_mutex_lock(hc->env.state_lock);
	for (uint32_t i = 0; i < e->n_binds; i++) {
		publish_bind(hc, e, &e->binds[i]);
		refresh_state(hc, e->binds[i].comp);
	}
	registry_counter_add(hc->env.reg, WD_CTR_HOST_BYTES, (int64_t)e->size);
	for (uint32_t i = 0; i < e->n_binds; i++)
		registry_set_last_load(hc->env.reg, e->binds[i].comp, WD_TIER_HOST, read, ns,
				       wd_wall_ns());
	pthread_mutex_unlock(hc->env.state_lock);
}

/* Tells the daemon (metrics, the slow_load alert) and the log that @e was loaded. */
static void note_loaded(struct hostcache *hc, const struct entry *e, uint64_t read, uint64_t ns)
{
	struct tier_load_note note = { .tier = WD_TIER_HOST, .ckey = e->ckey, .bytes = read,
				       .ns = ns,
				       .whole_stored = e->sel == TIER_SEL_ALL && !e->convert };

	hc->env.sink.load_done(hc->env.sink.ctx, &note);
	log_info(MOD, "\"loaded\" key=\"%s\" bytes=%" PRIu64 " read=%" PRIu64
		 " ms=%.1f gbps=%.2f", e->key, e->size, read, (double)ns / 1e6,
		 ns ? (double)read / (double)ns : 0.0);
}

/*
 * The load @ld succeeded: deduplicated into a resident twin, or made resident and
 * published. Every requester gets the entry's tensor bytes. Sets @prefetch_key (the
 * co-access key whose companions to prefetch) after a requested whole stored-form load.
 * Returns the twin (the caller frees ld->e), or NULL. Under the cache lock.
 */
static struct entry *load_succeeded(struct hostcache *hc, struct load *ld, uint64_t now,
				    uint64_t ns, char *prefetch_key)
{
	struct entry *e = ld->e, *twin;

	keep_verified_hashes(e, ld->plan);
	e->ld = NULL;
	twin = find_same_bytes(hc, e);
	if (twin) {
		dedup_into(hc, e, twin, now);
	} else {
		admit_loaded(hc, e, ld->total, now, ns);
		publish_loaded(hc, e, ld->total, ns);
		note_loaded(hc, e, ld->total, ns);
		if (!e->prefetched && e->sel == TIER_SEL_ALL && !e->convert)
			snprintf(prefetch_key, EVICT_KEY_MAX, "%s", e->ckey);
	}
	for (uint32_t i = 0; i < ld->n_reqs; i++)
		ld->reqs[i]->q.bytes += (twin ? twin : e)->tensor_bytes;
	return twin;
}

/*
 * The load @ld failed with @rc (@why): counted toward its component's quarantine, its
 * extent freed, the registry told (a whole-component load that was not cancelled leaves the
 * component failed unless another entry of it is resident), and its requesters failed. The
 * caller frees ld->e. Under the cache lock.
 */
static void load_failed(struct hostcache *hc, struct load *ld, int rc, const char *why)
{
	struct entry *e = ld->e;
	int st_err = rc;

	/* A prefetch counts only once a request joined it (attach_req()). */
	if (recovery_counts_toward_quarantine(rc, !e->prefetched || ld->n_reqs > 0) &&
	    quarantine_fail(hc->q, e->ckey, e->qfp, rc, why))
		st_err = -ENOTRECOVERABLE;
	hc->failed++;
	unlink_entry(hc, e);
	arena_free(hc->arena, e->off, e->size);
	evict_unreserve(hc->pol, e->size);
	pthread_mutex_lock(hc->env.state_lock);
	for (uint32_t i = 0; i < e->n_binds; i++) {
		refresh_state(hc, e->binds[i].comp);
		if (rc != -ECANCELED && e->sel == TIER_SEL_ALL &&
		    !has_resident(hc, e->binds[i].comp))
			registry_set_state(hc->env.reg, e->binds[i].comp, WD_TIER_HOST,
					   WD_STATE_FAILED, st_err);
	}
	pthread_mutex_unlock(hc->env.state_lock);
	for (uint32_t i = 0; i < ld->n_reqs; i++)
		req_fail(ld->reqs[i], rc, why);
}

/*
 * The loader's completion callback (loader thread): the named steps above, then every
 * requester's share of the load ends (the last one posts its completion), and after a
 * requested whole load its co-accessed companions are prefetched (outside the lock).
 */
static void on_done(void *arg, struct load_handle *h)
{
	struct load *ld = arg;
	struct hostcache *hc = ld->hc;
	struct entry *e = ld->e, *twin = NULL;
	int rc = load_wait(h, 0);
	uint64_t now = wd_now_ns(), ns = load_elapsed_ns(h);
	char key[EVICT_KEY_MAX] = "";

	pthread_mutex_lock(&hc->lock);
	if (rc == 0)
		twin = load_succeeded(hc, ld, now, ns, key);
	else
		load_failed(hc, ld, rc, load_error(h));
	for (uint32_t i = 0; i < ld->n_reqs; i++)
		req_done_one(hc, ld->reqs[i]);
	if (twin || rc)
		free_entry(e);
	pthread_mutex_unlock(&hc->lock);
	loader_plan_free(ld->plan);
	load_put(h);
	free(ld->reqs);
	free(ld);
	if (key[0])
		queue_prefetch(hc, key);
}

/* ---- the worker: planning and submitting ------------------------------------------------ */

/* The files of catalog component @cc that the loader reads, in order. */
static int spec_files(const struct catalog_component *cc, struct load_file_spec **out,
		      uint32_t *n)
{
	struct load_file_spec *fs = calloc(cc->n_files ? cc->n_files : 1, sizeof(*fs));

	*n = 0;
	if (!fs)
		return -ENOMEM;
	for (size_t k = 0; k < cc->n_files; k++) {
		if (cc->files[k].kind != MODEL_FILE_ST)
			continue;
		fs[*n].path = cc->files[k].path;
		fs[*n].expect_fp = &cc->files[k].fp;
		(*n)++;
	}
	*out = fs;
	return 0;
}

static uint64_t identity(const struct catalog_component *cc, const struct tier_form *f)
{
	uint64_t h = XXH3_64bits(&f->sel_hash, sizeof(f->sel_hash));
	uint8_t form[2] = { f->convert, f->sel };

	h = XXH3_64bits_withSeed(form, sizeof(form), h);
	for (size_t k = 0; k < cc->n_files; k++)
		if (cc->files[k].kind == MODEL_FILE_ST)
			h = XXH3_64bits_withSeed(&cc->files[k].fp, sizeof(cc->files[k].fp), h);
	return h;
}

/*
 * --verify: each file's header (8 + N bytes) must still hash to the catalog's content hash,
 * so a file rewritten with the same size and timestamps is caught before its bytes are used.
 */
static int check_headers(const struct catalog_component *cc, const char *name, char *msg)
{
	for (size_t k = 0; k < cc->n_files; k++) {
		const struct catalog_file *cf = &cc->files[k];
		size_t len = (size_t)(8 + cf->header_len);
		char *buf;
		ssize_t n;
		int fd;

		if (cf->kind != MODEL_FILE_ST)
			continue;
		buf = malloc(len);
		fd = wd_open_regular(AT_FDCWD, cf->path, 0, NULL);
		n = buf && fd >= 0 ? pread(fd, buf, len, 0) : -1;
		if (fd >= 0)
			close(fd);
		if (n != (ssize_t)len || XXH3_64bits(buf, len) != cf->content_hash) {
			free(buf);
			snprintf(msg, WD_DATA_SLOT_SIZE, "component %.60s: the header of %.100s no longer "
				 "matches the catalog's content hash (rescan the model)", name,
				 cf->path);
			return -ESTALE;
		}
		free(buf);
	}
	return 0;
}

/* Copies what the entry keeps of @p: tensor names, forms and offsets. */
static int fill_entry(struct entry *e, const struct load_plan *p,
		      const struct catalog_component *cc)
{
	e->t = calloc(p->n_tensors ? p->n_tensors : 1, sizeof(*e->t));
	e->hdr = calloc(cc->n_files ? cc->n_files : 1, sizeof(uint64_t));
	if (!e->t || !e->hdr)
		return -ENOMEM;
	for (uint32_t i = 0; i < p->n_tensors; i++) {
		const struct load_tensor *T = &p->tensors[i];

		e->t[i] = (struct tinfo){ .off = T->off, .nbytes = T->nbytes,
					  .src_bytes = T->src_bytes, .dtype = T->dtype,
					  .src_dtype = T->src_dtype };
		e->t[i].name = strdup(T->name);
		if (!e->t[i].name)
			return -ENOMEM;
		e->n_t++;
	}
	for (size_t k = 0; k < cc->n_files; k++)
		if (cc->files[k].kind == MODEL_FILE_ST)
			e->hdr[e->n_files++] = cc->files[k].content_hash;
	e->tensor_bytes = p->tensor_bytes;
	return 0;
}

/* NUL-separated names of a NAMES selection, as the loader wants them. */
static const char **split_names(const struct tier_form *f, char *copy, size_t *n)
{
	const char **v = calloc((size_t)f->len + 1, sizeof(char *));
	size_t i = 0;

	*n = 0;
	if (!v)
		return NULL;
	memcpy(copy, f->payload, f->len);
	copy[f->len] = '\0';
	while (i < f->len) {
		size_t l = strlen(copy + i);

		if (l)
			v[(*n)++] = copy + i;
		i += l + 1;
	}
	return v;
}

/* What start_component() builds on its way, step by step; released by start_free(). */
struct start {
	char name[WD_NAME_MAX * 2 + 2];		/* "model/component": the quarantine's key */
	char msg[WD_DATA_SLOT_SIZE];		/* why it was refused */
	char copy[WD_DATA_SLOT_SIZE + 1];	/* the selection, NUL-terminated */
	struct load_spec spec;
	struct load_file_spec *files;
	const char **names;
	struct load_plan *plan;
	struct entry *e;
	struct load *ld;
	uint64_t id, qfp, now, off, bytes;
};

static void start_free(struct start *st)
{
	if (st->e)
		free_entry(st->e);
	free(st->ld ? st->ld->reqs : NULL);
	free(st->ld);
	loader_plan_free(st->plan);
	free(st->files);
	free(st->names);
}

/* Gives back an extent make_room() reserved and allocated. Under the cache lock. */
static void release_extent(struct hostcache *hc, uint64_t off, uint64_t bytes)
{
	arena_free(hc->arena, off, bytes);
	evict_unreserve(hc->pol, bytes);
}

/*
 * An entry of the same identity exists: @comp is bound to it, and request @r (NULL: a
 * prefetch, which then has nothing to do) either counts it as a hit (resident) or joins its
 * load (coalescing). Returns 0 or -ENOMEM. Under the cache lock.
 */
static int join_existing(struct hostcache *hc, struct req *r, struct entry *e, uint32_t model,
			 uint32_t comp, uint64_t now)
{
	int ret = bind_comp(hc, e, model, comp);

	if (ret || !r)
		return ret;
	evict_lookup(hc->pol, e->key, now);
	if (e->resident) {
		evict_coaccess_record(hc->pol, e->ckey, now);
		e->last_use_ns = now;
		e->prefetched = false;
		r->q.bytes += e->tensor_bytes;
		return 0;
	}
	hc->coalesced++;
	return attach_req(e->ld, r);
}

/*
 * Plans the load of @cc in form @f: refused at once when the component is quarantined; the
 * files to read, the conversion and the selection; with --verify the headers checked; then
 * the loader's plan (st->plan). Returns 0 or -errno with st->msg. No lock held.
 */
static int plan_load(struct hostcache *hc, struct start *st, const struct catalog_component *cc,
		     const struct tier_form *f)
{
	bool verify = __atomic_load_n(hc->env.verify, __ATOMIC_RELAXED);
	uint32_t n_files;
	size_t n_names = 0;
	int ret;

	/* A component that keeps failing is refused at once until its files change. */
	ret = quarantine_check(hc->q, st->name, st->qfp, st->msg, sizeof(st->msg));
	if (!ret)
		ret = spec_files(cc, &st->files, &n_files);
	if (ret)
		return ret;
	st->spec = (struct load_spec){ .name = st->name, .files = st->files, .n_files = n_files,
				       .flags = verify ? LOAD_F_VERIFY : 0 };
	if (f->convert) {
		st->spec.flags |= LOAD_F_CONVERT;
		st->spec.convert_to = (enum st_dtype)f->convert;
	}
	if (f->sel == TIER_SEL_PREFIX) {
		memcpy(st->copy, f->payload, f->len);
		st->copy[f->len] = '\0';
		st->spec.prefix = st->copy;
	} else if (f->sel == TIER_SEL_NAMES) {
		st->names = split_names(f, st->copy, &n_names);
		if (!st->names)
			return -ENOMEM;
		st->spec.names = st->names;
		st->spec.n_names = n_names;
	}
	if (verify && (ret = check_headers(cc, st->name, st->msg)))
		return ret;
	return loader_plan(&st->spec, loader_chunk(hc->loader), &st->plan, st->msg,
			   sizeof(st->msg));
}

/* The new entry and its load, from the plan: identity, form, keys; a requested one is looked
 * up in the policy (a miss) and its co-access recorded. Returns 0 or -ENOMEM. Under the
 * cache lock. */
static int new_entry(struct hostcache *hc, struct start *st, const struct req *r,
		     const struct catalog_component *cc, const struct tier_form *f)
{
	struct entry *e;

	st->e = e = calloc(1, sizeof(*e));
	st->ld = calloc(1, sizeof(*st->ld));
	if (!e || !st->ld || fill_entry(e, st->plan, cc))
		return -ENOMEM;
	e->id = st->id;
	e->convert = f->convert;
	e->sel = f->sel;
	e->sel_hash = f->sel_hash;
	e->prefetched = !r;
	entry_key(e->key, sizeof(e->key), st->name, f, st->id);
	snprintf(e->ckey, sizeof(e->ckey), "%.*s", (int)sizeof(e->ckey) - 1, st->name);
	if (r) {
		evict_lookup(hc->pol, e->key, st->now);
		evict_coaccess_record(hc->pol, e->ckey, st->now);
	}
	return 0;
}

/* Admits the entry (evicting), allocates its extent, binds it to its NUMA node (a GPU's for
 * the device tier's loads) and, when memory is tight, faults it in. Returns 0 or -errno with
 * st->msg; on failure nothing stays reserved. Under the cache lock. */
static int reserve_extent(struct hostcache *hc, struct start *st, const struct req *r)
{
	struct entry *e = st->e;
	int ret;

	st->bytes = round_extent(st->plan->bytes);
	ret = make_room(hc, st->name, st->bytes, &st->off, st->msg);
	if (ret)
		return ret;
	e->off = st->off;
	e->size = st->bytes;
	e->node = place_extent(hc, st->name, st->off, st->bytes, r ? r->node : -1);
	ret = populate_extent(hc, st->name, st->off, st->bytes, st->msg);
	if (ret)
		release_extent(hc, st->off, st->bytes);
	return ret;
}

/*
 * Binds @comp of @model to the entry, attaches request @r and hands the plan to the loader.
 * Returns 0, or -errno with st->msg after undoing the attachment and releasing the extent.
 * Under the cache lock: the loader's callbacks wait until the entry is complete.
 */
static int submit_load(struct hostcache *hc, struct start *st, struct req *r, uint32_t model,
		       uint32_t comp)
{
	struct entry *e = st->e;
	struct load *ld = st->ld;
	int ret;

	e->qfp = st->qfp;
	e->seq = hc->next_seq++;
	e->ld = ld;
	ld->hc = hc;
	ld->e = e;
	ld->plan = st->plan;
	ld->total = st->plan->read_bytes;
	if (bind_comp(hc, e, model, comp) || (r && attach_req(ld, r))) {
		release_extent(hc, st->off, st->bytes);
		return -ENOMEM;
	}
	ret = loader_submit(hc->loader, st->plan, st->off, &(struct load_callbacks){
				    .progress = on_progress, .done = on_done, .arg = ld }, &ld->h);
	if (ret) {
		if (r) {
			r->q.pending--;
			r->total -= ld->total;
			r->q.read_bytes -= ld->total;
		}
		release_extent(hc, st->off, st->bytes);
		snprintf(st->msg, sizeof(st->msg), "component %.200s: cannot queue the load: %s",
			 st->name, strerror(-ret));
	}
	return ret;
}

/* The load is submitted: the entry joins the table (the load owns it and its plan from now
 * on), the counters, the registry shows @comp loading. Under the cache lock. */
static void publish_started(struct hostcache *hc, struct start *st, const struct req *r,
			    uint32_t comp)
{
	struct entry *e = st->e;
	const struct load_plan *plan = st->plan;

	e->next = hc->entries;
	hc->entries = e;
	hc->loads++;
	hc->read_bytes += plan->read_bytes;
	hc->read_direct += plan->direct_bytes;
	if (!r)
		hc->prefetch_started++;
	pthread_mutex_lock(hc->env.state_lock);
	if (e->sel == TIER_SEL_ALL) {
		registry_set_state(hc->env.reg, comp, WD_TIER_HOST, WD_STATE_LOADING, 0);
		registry_set_progress(hc->env.reg, comp, WD_TIER_HOST, 0, plan->read_bytes);
	}
	pthread_mutex_unlock(hc->env.state_lock);
	/* Under the lock: once it is dropped the load may end and free @e and @plan. */
	log_info(MOD, "\"load started\" key=\"%s\" bytes=%" PRIu64 " read=%" PRIu64 " files=%u "
		 "direct=%u tensors=%u%s", e->key, st->bytes, plan->read_bytes, plan->n_files,
		 plan->n_direct, plan->n_tensors, r ? "" : " prefetch=1");
	st->e = NULL;
	st->ld = NULL;
	st->plan = NULL;
}

/*
 * The load of @comp was refused with @ret: counted toward the quarantine, the registry shows
 * a whole-component load failed (not for a lack of room, which is no fault of the
 * component's) unless another entry of it is resident, and @r records why. No lock held.
 */
static void refuse_load(struct hostcache *hc, struct start *st, struct req *r, uint32_t comp,
			const struct tier_form *f, int ret)
{
	char en[LOG_ESCAPE_MAX], em[LOG_ESCAPE_MAX];
	/* The registry shows a quarantined component as failed with -ENOTRECOVERABLE. */
	int st_err = recovery_counts_toward_quarantine(ret, r != NULL) &&
		     quarantine_fail(hc->q, st->name, st->qfp, ret,
				     st->msg[0] ? st->msg : strerror(-ret)) ?
		     -ENOTRECOVERABLE : ret;

	if (f->sel == TIER_SEL_ALL && ret != -EFBIG && ret != -ENOSPC && ret != -ENOMEM) {
		pthread_mutex_lock(&hc->lock);
		if (!has_resident(hc, comp)) {
			pthread_mutex_lock(hc->env.state_lock);
			registry_set_state(hc->env.reg, comp, WD_TIER_HOST, WD_STATE_FAILED, st_err);
			pthread_mutex_unlock(hc->env.state_lock);
		}
		pthread_mutex_unlock(&hc->lock);
	}
	start_free(st);
	if (r) {
		pthread_mutex_lock(&hc->lock);
		req_fail(r, ret, st->msg[0] ? st->msg : NULL);
		pthread_mutex_unlock(&hc->lock);
	}
	log_info(MOD, "\"load refused\" component=\"%s\" err=%d msg=\"%s\"",
		 log_escape(st->name, en, sizeof(en), LOG_ESC_QUOTES), ret,
		 log_escape(st->msg, em, sizeof(em), LOG_ESC_QUOTES));
}

/*
 * Starts (or joins, or finds resident) the load of catalog component @cc, registry component
 * @comp of @model, in form @f, for request @r (NULL: a prefetch), in named steps: join an
 * entry of the same identity, else plan the load, make the entry, reserve its extent, submit
 * it and publish that it started; a refusal at any step ends in refuse_load(). Returns 0 or
 * a negative errno with the reason recorded in @r.
 */
static int start_component(struct hostcache *hc, struct req *r, uint32_t model, uint32_t comp,
			   const char *model_name, const struct catalog_component *cc,
			   const struct tier_form *f)
{
	struct start *st = calloc(1, sizeof(*st));
	struct entry *e;
	int ret;

	if (!st) {
		if (r) {
			pthread_mutex_lock(&hc->lock);
			req_fail(r, -ENOMEM, "load: out of memory");
			pthread_mutex_unlock(&hc->lock);
		}
		return -ENOMEM;
	}
	st->id = identity(cc, f);
	st->now = wd_now_ns();
	st->qfp = files_fp(cc);
	snprintf(st->name, sizeof(st->name), "%s%s%s", model_name, cc->name[0] ? "/" : "",
		 cc->name);
	pthread_mutex_lock(&hc->lock);
	e = find_id(hc, st->id);
	if (e) {
		ret = join_existing(hc, r, e, model, comp, st->now);
		if (ret && r)
			req_fail(r, ret, "load: out of memory");
		pthread_mutex_unlock(&hc->lock);
		free(st);
		return ret;
	}
	pthread_mutex_unlock(&hc->lock);

	ret = plan_load(hc, st, cc, f);
	if (ret)
		goto refuse;
	pthread_mutex_lock(&hc->lock);
	ret = new_entry(hc, st, r, cc, f);
	if (!ret)
		ret = reserve_extent(hc, st, r);
	if (!ret)
		ret = submit_load(hc, st, r, model, comp);
	if (!ret)
		publish_started(hc, st, r, comp);
	pthread_mutex_unlock(&hc->lock);
	if (ret)
		goto refuse;
	start_free(st);
	free(st);
	return 0;
refuse:
	refuse_load(hc, st, r, comp, f, ret);
	free(st);
	return ret;
}

/* The catalog component of @m that registry component @comp names, or NULL. */
static const struct catalog_component *cat_comp(struct hostcache *hc,
						const struct catalog_model *m, uint32_t comp)
{
	struct wd_reg_component rc;

	if (registry_read_component(hc->env.view, comp, &rc))
		return NULL;
	for (size_t k = 0; k < m->n_components; k++)
		if (!strcmp(m->components[k].name, rc.name))
			return &m->components[k];
	return NULL;
}

/*
 * A new request of client @c (NULL: a prefetch, which has none) for @comp of @model (or all
 * its components), holding a reference on @c and one pending count for its fan-out. NULL
 * when out of memory.
 */
static struct req *new_req(struct hostcache *hc, struct tier_client *c, uint64_t user_data,
			   uint8_t flags, uint32_t model, uint32_t comp, int node)
{
	struct req *r = calloc(1, sizeof(*r));

	if (!r)
		return NULL;
	hc->env.sink.client_get(hc->env.sink.ctx, c);
	r->q.c = c;
	r->q.user_data = user_data;
	r->q.flags = flags;
	r->q.pin = (struct lease_pin){ .model = model, .component = comp, .tier = WD_TIER_HOST };
	r->q.pending = 1;
	r->node = node;
	return r;
}

/* Fails @r (when not NULL) with @err and @msg. Takes the cache lock. */
static void req_fail_locked(struct hostcache *hc, struct req *r, int err, const char *msg)
{
	if (!r)
		return;
	pthread_mutex_lock(&hc->lock);
	req_fail(r, err, msg);
	pthread_mutex_unlock(&hc->lock);
}

/* The fan-out of @r ended: its last pending count goes. Takes the cache lock. */
static void req_fanned_out(struct hostcache *hc, struct req *r)
{
	pthread_mutex_lock(&hc->lock);
	req_done_one(hc, r);
	pthread_mutex_unlock(&hc->lock);
}

/*
 * The registry's record of @model and its catalog entry (worker thread). Returns 0, or
 * -errno with @out (WD_DATA_SLOT_SIZE bytes) saying why.
 */
static int read_model(struct hostcache *hc, uint32_t model, struct wd_reg_model *rm,
		      struct catalog_model *m, char *out)
{
	int ret = registry_read_model(hc->env.view, model, rm);

	if (!ret)
		ret = catalog_get_model(*hc->env.cat, rm->name, m);
	if (ret)
		snprintf(out, WD_DATA_SLOT_SIZE, "load: model %u: %s", model, strerror(-ret));
	return ret;
}

/* Starts the load of registry component @cid of model @model (@m in the catalog) for @r. */
static int start_one(struct hostcache *hc, struct req *r, uint32_t model, uint32_t cid,
		     const struct wd_reg_model *rm, const struct catalog_model *m,
		     const struct tier_form *f)
{
	const struct catalog_component *cc = cat_comp(hc, m, cid);
	char out[WD_DATA_SLOT_SIZE];

	if (!cc) {
		snprintf(out, sizeof(out), "load: %.150s: component %u is no longer in the "
			 "catalog (rescan)", rm->name, cid);
		req_fail_locked(hc, r, -ESTALE, out);
		return -ESTALE;
	}
	return start_component(hc, r, model, cid, rm->name, cc, f);
}

void hostcache_load_job(struct hostcache *hc, struct tier_job *j)
{
	const struct wd_sqe *sqe = j->sqe;
	struct wd_reg_model rm;
	struct catalog_model m;
	struct tier_form f;
	struct req *r = NULL;
	uint32_t first, n;
	uint16_t len = 0;
	char out[WD_DATA_SLOT_SIZE];
	int ret;

	if (tier_parse_form(sqe, j->arg, j->arg_len, "load", &f, out, &len))
		memset(&f, 0, sizeof(f));
	if (j->c) {
		r = new_req(hc, j->c, sqe->user_data, sqe->flags, sqe->model, sqe->component, -1);
		if (!r) {
			struct wd_cqe cqe = { .user_data = sqe->user_data, .res = -ENOMEM };

			hc->env.sink.post(hc->env.sink.ctx, j->c, &cqe, &j->spare, NULL, 0);
			return;
		}
		r->q.spare = j->spare;
		j->spare = NULL;
	}
	ret = read_model(hc, sqe->model, &rm, &m, out);
	if (ret) {
		if (r) {
			req_fail_locked(hc, r, ret, out);
			req_fanned_out(hc, r);
		}
		return;
	}
	tier_targets(&hc->env, sqe->model, sqe->component, &first, &n);
	for (uint32_t cid = first; cid < first + n; cid++)
		if (start_one(hc, r, sqe->model, cid, &rm, &m, &f))
			break;
	catalog_model_free(&m);
	if (r)
		req_fanned_out(hc, r);
	save_coaccess(hc);
}

/* ---- prefetch --------------------------------------------------------------------------- */

/*
 * The registry model and component that co-access key @ckey ("model/component", or the
 * model's name for a single-component model) names, and at most the extent a full load of
 * it needs.
 * Returns 0 or -ENOENT.
 */
static int resolve(struct hostcache *hc, const char *ckey, uint32_t *model, uint32_t *comp,
		   uint64_t *size)
{
	const struct tier_sink *sk = &hc->env.sink;
	uint32_t first, n;
	int ret = -ENOENT, mret = 0;

	/* Model by model (the sink takes state_lock for each): stale ones are skipped. */
	for (uint32_t m = 0; ret && (mret = sk->model_comps(sk->ctx, m, &first, &n)) != -ENOENT;
	     m++) {
		struct wd_reg_model rm;
		size_t len;

		if (mret || registry_read_model(hc->env.view, m, &rm))
			continue;
		len = strlen(rm.name);
		if (strncmp(ckey, rm.name, len) || (ckey[len] != '/' && ckey[len] != '\0'))
			continue;
		for (uint32_t c = first; c < first + n; c++) {
			struct wd_reg_component rc;
			const char *want = ckey[len] ? ckey + len + 1 : "";

			if (registry_read_component(hc->env.view, c, &rc) || strcmp(rc.name, want))
				continue;
			*model = m;
			*comp = c;
			/* At most one alignment gap per tensor: an upper bound of the extent. */
			*size = round_extent(rc.nbytes + (uint64_t)rc.n_tensors * ARENA_TENSOR_ALIGN);
			ret = 0;
			break;
		}
	}
	return ret;
}

static int seed_pair(const char *a, const char *b, uint64_t count, void *arg)
{
	struct hostcache *hc = arg;
	int ret = evict_coaccess_seed(hc->pol, a, b, count);

	/* A key too long for the policy is skipped: the others still count. */
	return ret == -ENAMETOOLONG || ret == -EINVAL ? 0 : ret;
}

/*
 * Writes the co-accesses recorded since the last call to the catalog, so that they survive a
 * restart. Runs on the thread that owns the catalog handle: the worker, after each load
 * job, or the daemon's thread at the end, once the worker has stopped. A failed write is
 * logged and those counts are lost: they are statistics, and the requests that made them
 * succeeded.
 */
static void save_coaccess(struct hostcache *hc)
{
	struct evict_coaccess_delta dl[SAVE_BATCH];
	uint64_t now = wd_wall_ns();
	size_t n;

	if (!hc->pol || !*hc->env.cat)
		return;
	do {
		pthread_mutex_lock(&hc->lock);
		n = evict_coaccess_drain(hc->pol, dl, SAVE_BATCH);
		pthread_mutex_unlock(&hc->lock);
		for (size_t i = 0; i < n; i++) {
			int ret = catalog_coaccess_add(*hc->env.cat, dl[i].a, dl[i].b, dl[i].n,
						       now);

			if (ret)
				log_warn(MOD, "\"co-access not saved\" a=\"%s\" b=\"%s\" n=%u err=%d",
					 dl[i].a, dl[i].b, dl[i].n, ret);
		}
	} while (n == SAVE_BATCH);
}

/*
 * After a requested full load of @key: components requested together with it at least
 * PREFETCH_MIN_COUNT times that are not resident are loaded too, as prefetches, when the
 * budget has room for them without evicting anything.
 */
static void queue_prefetch(struct hostcache *hc, const char *key)
{
	char sugg[PREFETCH_MAX][EVICT_KEY_MAX];
	uint32_t todo[PREFETCH_MAX][2];
	size_t n, k = 0;

	pthread_mutex_lock(&hc->lock);
	n = evict_coaccess_suggest(hc->pol, key, PREFETCH_MIN_COUNT, sugg, PREFETCH_MAX);
	pthread_mutex_unlock(&hc->lock);
	for (size_t i = 0; i < n; i++) {
		uint32_t model, comp;
		uint64_t size, room;
		bool busy = false;

		if (resolve(hc, sugg[i], &model, &comp, &size))
			continue;
		pthread_mutex_lock(&hc->lock);
		room = hc->budget - evict_used(hc->pol) - evict_reserved(hc->pol);
		for (struct entry *x = hc->entries; x; x = x->next)
			busy |= find_bind(x, comp) && (!x->resident || (x->sel == TIER_SEL_ALL &&
								    !x->convert));
		if (!busy && size <= room) {
			todo[k][0] = model;
			todo[k][1] = comp;
			k++;
		}
		pthread_mutex_unlock(&hc->lock);
	}
	for (size_t i = 0; i < k; i++) {
		struct wd_sqe sqe = { .opcode = WD_OP_LOAD, .model = todo[i][0],
				      .component = todo[i][1] };
		int ret = hc->env.sink.defer(hc->env.sink.ctx, &sqe);

		if (ret == -ENOMEM)
			return;
		if (!ret)
			log_info(MOD, "\"prefetch queued\" after=\"%s\" model=%u component=%u", key,
				 todo[i][0], todo[i][1]);
	}
}

/* ---- shard side ------------------------------------------------------------------------- */

enum tier_outcome hostcache_load(struct hostcache *hc, struct tier_client *c,
				 const struct wd_sqe *sqe, const char *arg, uint16_t arg_len,
				 uint32_t model, struct wd_cqe *cqe, char *out)
{
	uint64_t now = wd_now_ns(), bytes = 0;
	uint32_t first, n, hits = 0;
	struct entry *hit[64];
	struct tier_form f;
	int ret;

	if (sqe->tier != WD_TIER_HOST) {
		cqe->data_len = tier_msg(out, "load: GPU tier not available: %s", hc->gpu_why);
		cqe->res = -ENOTSUP;
		return TIER_DONE;
	}
	ret = tier_parse_form(sqe, arg, arg_len, "load", &f, out, &cqe->data_len);
	if (ret) {
		cqe->res = ret;
		return TIER_DONE;
	}
	tier_targets(&hc->env, model, sqe->component, &first, &n);
	if (!n || n > ARRAY_SIZE(hit))
		return TIER_ASYNC;
	pthread_mutex_lock(&hc->lock);
	for (uint32_t cid = first; cid < first + n; cid++) {
		struct entry *e = find_form(hc, cid, &f);

		/* A stale copy is not an answer: the worker loads the files as they are now. */
		if (!e || !e->resident || entry_stale(hc, e, cid))
			break;
		hit[hits++] = e;
	}
	if (hits != n) {
		pthread_mutex_unlock(&hc->lock);
		return TIER_ASYNC;
	}
	for (uint32_t i = 0; i < hits; i++) {
		/* A component listed twice (dedup) is one entry: count its bytes per component. */
		evict_lookup(hc->pol, hit[i]->key, now);
		evict_coaccess_record(hc->pol, hit[i]->ckey, now);
		hit[i]->last_use_ns = now;
		hit[i]->prefetched = false;
		bytes += hit[i]->tensor_bytes;
	}
	pthread_mutex_unlock(&hc->lock);
	if (sqe->flags & WD_SQE_F_PIN)
		tier_take_pin(&hc->env, c, &(struct lease_pin){ .model = model,
							       .component = sqe->component,
							       .tier = WD_TIER_HOST });
	cqe->res = 0;
	cqe->aux0 = bytes;
	cqe->aux1 = 0;
	return TIER_DONE;
}

/* An operator's UNLOAD clears the quarantine of registry components [@first, @first + @n). */
static void unquarantine(struct hostcache *hc, uint32_t first, uint32_t n)
{
	for (uint32_t cid = first; cid < first + n; cid++) {
		struct wd_reg_component rc;
		struct wd_reg_model rm;
		char key[WD_NAME_MAX * 2 + 2];	/* as start_component() names it */

		if (registry_read_component(hc->env.view, cid, &rc) ||
		    registry_read_model(hc->env.view, rc.model, &rm))
			continue;
		snprintf(key, sizeof(key), "%s%s%s", rm.name, rc.name[0] ? "/" : "", rc.name);
		if (quarantine_clear(hc->q, key)) {
			pthread_mutex_lock(hc->env.state_lock);
			registry_set_state(hc->env.reg, cid, WD_TIER_HOST, WD_STATE_ABSENT, 0);
			pthread_mutex_unlock(hc->env.state_lock);
		}
	}
}

int64_t hostcache_unload(struct hostcache *hc, uint32_t model, uint32_t comp, char *out,
			 uint16_t *out_len)
{
	uint32_t first, n;
	int64_t freed = 0;

	tier_targets(&hc->env, model, comp, &first, &n);
	unquarantine(hc, first, n);
	pthread_mutex_lock(&hc->lock);
	for (struct entry *e = hc->entries; e; e = e->next) {
		for (uint32_t cid = first; cid < first + n; cid++) {
			if (((!e->resident && !e->cancelled) || e->holds) && find_bind(e, cid)) {
				pthread_mutex_unlock(&hc->lock);
				*out_len = tier_msg(out, "unload: %s is %s; retry when it ends", e->key,
						   e->holds ? "being copied to a GPU" : "loading");
				return -EBUSY;
			}
		}
	}
	for (struct entry *e = hc->entries, *next; e; e = next) {
		next = e->next;
		for (uint32_t cid = first; cid < first + n; cid++) {
			struct bind *b;

			if (!e->resident || !(b = find_bind(e, cid)))
				continue;
			if (e->n_binds == 1) {
				freed += (int64_t)e->size;
				drop_entry(hc, e, false);
				break;
			}
			/* Shared with another component: only this binding goes. */
			pthread_mutex_lock(hc->env.state_lock);
			unpublish_comp(hc, e, b);
			free(b->tids);
			*b = e->binds[--e->n_binds];
			refresh_state(hc, cid);
			pthread_mutex_unlock(hc->env.state_lock);
		}
	}
	pthread_mutex_unlock(&hc->lock);
	return freed;
}

uint32_t hostcache_list(struct hostcache *hc, uint32_t start, void *out, uint16_t *n_out)
{
	struct wd_cache_entry *v = out;
	uint64_t now = wd_now_ns();
	uint32_t i = 0, n = 0;

	pthread_mutex_lock(&hc->lock);
	sync_pins(hc);
	for (struct entry *e = hc->entries; e; e = e->next, i++) {
		if (i < start || n >= WD_CACHE_PER_REPLY)
			continue;
		v[n] = (struct wd_cache_entry){
			.model = e->n_binds ? e->binds[0].model : WD_ID_NONE,
			.component = e->n_binds ? e->binds[0].comp : WD_ID_NONE,
			.bytes = e->size,
			.idle_ns = e->last_use_ns && now > e->last_use_ns ? now - e->last_use_ns : 0,
			.pins = (uint16_t)(e->pins > UINT16_MAX ? UINT16_MAX : e->pins),
			.dtype = e->convert ? e->convert : 0xff,
			.flags = (uint8_t)((e->resident ? 0 : WD_CACHE_F_LOADING) |
					   (e->sel ? WD_CACHE_F_SUBSET : 0) |
					   (e->prefetched ? WD_CACHE_F_PREFETCHED : 0) |
					   (e->n_binds > 1 ? WD_CACHE_F_SHARED : 0) |
					   (e->n_binds && entry_stale(hc, e, e->binds[0].comp) ?
					    WD_CACHE_F_STALE : 0)),
			.n_tensors = e->n_t,
		};
		n++;
	}
	pthread_mutex_unlock(&hc->lock);
	*n_out = (uint16_t)n;
	return i;
}

void hostcache_io_info(struct hostcache *hc, struct wd_info *info)
{
	struct loader_io io;

	if (!hc || !hc->loader) {
		info->flags |= WD_INFO_NO_LOADER;
		return;
	}
	/* Set once by loader_create(), before any client could attach: no lock needed. */
	loader_io_path(hc->loader, &io);
	info->flags |= (io.fixed_bufs ? WD_INFO_FIXED_BUFFERS : 0) |
		       (io.fixed_files ? WD_INFO_FIXED_FILES : 0);
	info->buffers_error = io.bufs_err;
	info->files_error = io.files_err;
	info->staging_bytes = io.staging_bytes;
}

void hostcache_stats(struct hostcache *hc, uint64_t *v)
{
	struct evict_counters ec;
	uint64_t n = 0;

	pthread_mutex_lock(&hc->lock);
	evict_get_counters(hc->pol, &ec);
	for (struct entry *e = hc->entries; e; e = e->next)
		n++;
	v[WD_STAT_HOST_BYTES] = evict_used(hc->pol);
	v[WD_STAT_HOST_ENTRIES] = n;
	v[WD_STAT_HOST_HITS] = ec.hits;
	v[WD_STAT_HOST_MISSES] = ec.misses;
	v[WD_STAT_HOST_EVICTIONS] = ec.evictions;
	v[WD_STAT_HOST_EVICT_BYTES] = ec.evict_bytes;
	v[WD_STAT_HOST_PREFETCHES] = hc->prefetch_started;
	v[WD_STAT_HOST_PREFETCH_HITS] = ec.prefetch_hits;
	v[WD_STAT_HOST_LOADS] = hc->loads;
	v[WD_STAT_HOST_READ_BYTES] = hc->read_bytes;
	v[WD_STAT_HOST_COALESCED] = hc->coalesced;
	v[WD_STAT_HOST_DEDUP_BYTES] = hc->dedup_bytes;
	v[WD_STAT_HOST_REFUSED] = ec.refused;
	v[WD_STAT_HOST_FAILED] = hc->failed;
	v[WD_STAT_IO_RETRIES] = recovery_counter(RECOVERY_IO_RETRIES);
	v[WD_STAT_ALLOC_RETRIES] = recovery_counter(RECOVERY_ALLOC_RETRIES);
	v[WD_STAT_PRESSURE_SHEDS] = recovery_counter(RECOVERY_PRESSURE_SHEDS);
	v[WD_STAT_QUARANTINED] = recovery_counter(RECOVERY_QUARANTINED);
	v[WD_STAT_CUDA_BYTES] = 0;
	v[WD_STAT_HOST_BUDGET] = hc->budget;
	v[WD_STAT_HOST_READ_DIRECT_BYTES] = hc->read_direct;
	v[WD_STAT_HOST_PAGES] = arena_page_bytes(hc->arena) |
				(hc->arena->pages == ARENA_PAGES_HUGETLB ? WD_PAGES_HUGETLB :
				 hc->arena->pages == ARENA_PAGES_THP ? WD_PAGES_THP : WD_PAGES_SMALL);
	pthread_mutex_unlock(&hc->lock);
}

void hostcache_client_gone(struct hostcache *hc, struct tier_client *c)
{
	if (!hc)
		return;
	pthread_mutex_lock(&hc->lock);
	for (struct entry *e = hc->entries; e; e = e->next) {
		struct load *ld = e->ld;
		bool anyone = false;

		if (!ld || e->cancelled)
			continue;
		for (uint32_t i = 0; i < ld->n_reqs; i++) {
			if (ld->reqs[i]->q.c == c)
				ld->reqs[i]->orphan = true;
			anyone |= !ld->reqs[i]->orphan;
		}
		if (ld->had_reqs && !anyone && ld->n_reqs) {
			/* Nobody waits for it any more: stop reading (the done callback cleans up). */
			e->cancelled = true;
			log_info(MOD, "\"load cancelled, its requesters are gone\" key=\"%s\"", e->key);
			load_cancel(ld->h);
		}
	}
	pthread_mutex_unlock(&hc->lock);
}

/* ---- lifecycle -------------------------------------------------------------------------- */

/* The arena, the loader, the eviction policy, the quarantine, the NUMA topology and the
 * saved co-access counts. Returns 0 or the error of the part that failed. */
static int start_parts(struct hostcache *hc, const struct hostcache_config *cfg)
{
	int ret;

	hc->budget = round_extent(hostcache_fit_budget(cfg->budget));
	ret = arena_create(&(struct arena_options){ .budget = hc->budget }, &hc->arena);
	if (ret) {
		log_error(MOD, "\"cannot create the host cache arena\" bytes=%" PRIu64 " err=%d",
			  hc->budget, ret);
		return ret;
	}
	ret = loader_create(hc->arena, NULL, &hc->loader);
	if (ret) {
		log_error(MOD, "\"cannot start the loader\" err=%d", ret);
		return ret;
	}
	/* Page allocation and clearing at start, not in the first loads (uring/arena.h). */
	if (cfg->prefault && (ret = arena_prefault_start(hc->arena)))
		log_warn(MOD, "\"cannot prefault the host cache\" err=%d", ret);
	ret = evict_create(&(struct evict_options){ .budget = hc->budget,
						   .default_ttl_ns = cfg->ttl_ns },
			   &hc->pol);
	if (ret)
		return ret;
	hc->ttl_ns = cfg->ttl_ns;
	ret = quarantine_create(cfg->quarantine_after, &hc->q);
	if (ret)
		return ret;
	/* PCI discovery only finds GPUs for the NVIDIA driver; without it, skip the slow part. */
	ret = placement_open_this_system(access("/sys/bus/pci/drivers/nvidia", F_OK) == 0,
					 &hc->pl);
	if (ret)
		log_warn(MOD, "\"no topology: host cache pages follow the default NUMA policy\" "
			 "err=%d", ret);
	else
		log_info(MOD, "\"NUMA placement\" nodes=%d", placement_node_count(hc->pl));
	ret = catalog_coaccess_load(*hc->env.cat, wd_wall_ns(), seed_pair, hc);
	if (ret)
		log_warn(MOD, "\"co-access statistics not loaded\" err=%d", ret);
	return 0;
}

/* Probes the CUDA driver once, to say why the GPU tier refuses loads (hc->gpu_why). */
static void probe_gpu(struct hostcache *hc)
{
	struct gpu_driver drv = { 0 };
	char why[160] = "";
	int ret = gpu_driver_open(&drv, why, sizeof(why));

	if (ret) {
		if (ret == -ENODEV && !strstr(why, "no CUDA driver"))
			snprintf(hc->gpu_why, sizeof(hc->gpu_why), "no CUDA driver (%s)", why);
		else
			snprintf(hc->gpu_why, sizeof(hc->gpu_why), "%s",
				 why[0] ? why : strerror(-ret));
	} else {
		snprintf(hc->gpu_why, sizeof(hc->gpu_why), "this build loads the host tier only "
			 "(a CUDA driver is present; the GPU loader is a later issue)");
		gpu_driver_close(&drv);
	}
}

int hostcache_create(const struct tier_env *env, const struct hostcache_config *cfg,
		     struct hostcache **out)
{
	struct hostcache *hc = calloc(1, sizeof(*hc));
	int ret;

	*out = NULL;
	if (!hc)
		return -ENOMEM;
	hc->env = *env;
	pthread_mutex_init(&hc->lock, NULL);
	ret = start_parts(hc, cfg);
	if (ret) {
		hostcache_destroy(hc);
		return ret;
	}
	probe_gpu(hc);
	log_info(MOD, "\"host cache ready\" budget=%" PRIu64 " pages=%s ttl_ns=%" PRIu64
		 " verify=%d", hc->budget, arena_pages_name(hc->arena->pages), cfg->ttl_ns,
		 __atomic_load_n(hc->env.verify, __ATOMIC_RELAXED));
	*out = hc;
	return 0;
}

void hostcache_stop(struct hostcache *hc)
{
	if (!hc || !hc->loader)
		return;
	loader_destroy(hc->loader);
	hc->loader = NULL;
}

void hostcache_destroy(struct hostcache *hc)
{
	if (!hc)
		return;
	hostcache_stop(hc);
	save_coaccess(hc);
	while (hc->entries) {
		struct entry *e = hc->entries;

		hc->entries = e->next;
		free_entry(e);
	}
	evict_destroy(hc->pol);
	quarantine_destroy(hc->q);
	free(hc->cur_qfp);
	placement_close(hc->pl);
	arena_destroy(hc->arena);
	pthread_mutex_destroy(&hc->lock);
	free(hc);
}

int hostcache_client_fd(struct hostcache *hc)
{
	return arena_ro_fd(hc->arena);
}

uint64_t hostcache_size(struct hostcache *hc)
{
	return hc->arena->seg.size;
}

/* ---- the device tier's use of the host tier (core/tier/devcache.c) ---------------------------- */

int hostcache_load_for(struct hostcache *hc, struct tier_client *c, uint64_t user_data,
		       uint8_t flags, uint32_t model, uint32_t comp, int node,
		       hostcache_then_fn then, void *ctx, void *arg)
{
	struct wd_reg_model rm;
	struct catalog_model m;
	struct tier_form f = { 0 };
	struct req *r = new_req(hc, c, user_data, flags & WD_SQE_F_NO_PROGRESS, model, comp, node);
	char out[WD_DATA_SLOT_SIZE];
	int ret;

	if (!r)
		return -ENOMEM;
	r->then = then;
	r->then_ctx = ctx;
	r->then_arg = arg;
	ret = read_model(hc, model, &rm, &m, out);
	if (ret) {
		req_fail_locked(hc, r, ret, out);
		req_fanned_out(hc, r);
		return 0;
	}
	start_one(hc, r, model, comp, &rm, &m, &f);
	catalog_model_free(&m);
	req_fanned_out(hc, r);
	save_coaccess(hc);
	return 0;
}

/* hostcache_hold() under the cache lock. */
static int hold_locked(struct hostcache *hc, uint32_t comp, struct hostcache_layout *out)
{
	struct tier_form f = { 0 };
	struct entry *e = NULL;
	struct bind *b;
	int ret = 0;

	memset(out, 0, sizeof(*out));
	/* The resident one: a reload of the same component may be queued next to it. */
	for (struct entry *x = hc->entries; x; x = x->next)
		if (!x->cancelled && x->resident && form_equal(x, &f) && find_bind(x, comp))
			e = x;
	if (!e || !e->resident || !(b = find_bind(e, comp))) {
		ret = -ENODATA;
		goto out;
	}
	out->t = calloc(e->n_t ? e->n_t : 1, sizeof(*out->t));
	if (!out->t) {
		ret = -ENOMEM;
		goto out;
	}
	for (uint32_t i = 0; i < e->n_t; i++)
		out->t[i] = (struct hostcache_tensor){ .tid = b->tids[i], .off = e->t[i].off,
						       .nbytes = e->t[i].nbytes,
						       .dtype = e->t[i].dtype };
	out->n_t = e->n_t;
	out->off = e->off;
	out->size = e->size;
	out->tensor_bytes = e->tensor_bytes;
	out->base = arena_ptr(hc->arena, e->off);
	snprintf(out->key, sizeof(out->key), "%s", e->key);
	snprintf(out->ckey, sizeof(out->ckey), "%s", e->ckey);
	out->id = e->id;
	e->holds++;
	evict_pin(hc->pol, e->key);
out:
	return ret;
}

int hostcache_hold(struct hostcache *hc, uint32_t comp, struct hostcache_layout *out)
{
	int ret;

	pthread_mutex_lock(&hc->lock);
	ret = hold_locked(hc, comp, out);
	pthread_mutex_unlock(&hc->lock);
	return ret;
}

void hostcache_unhold(struct hostcache *hc, const struct hostcache_layout *l)
{
	if (l->key[0]) {
		pthread_mutex_lock(&hc->lock);
		for (struct entry *e = hc->entries; e; e = e->next) {
			if (e->resident && e->holds && !strcmp(e->key, l->key)) {
				e->holds--;
				evict_unpin(hc->pol, e->key);
				break;
			}
		}
		pthread_mutex_unlock(&hc->lock);
	}
}

int hostcache_adopt_reserve(struct hostcache *hc, const struct hostcache_layout *l, void **dst,
			    char *msg, size_t msg_len)
{
	struct evict_victims v = { 0 };
	uint64_t now = wd_now_ns(), off = 0, avail, busy;
	char amsg[WD_DATA_SLOT_SIZE];
	bool allocated;
	int ret;

	*dst = NULL;
	pthread_mutex_lock(&hc->lock);
	if (find_id(hc, l->id)) {
		pthread_mutex_unlock(&hc->lock);
		snprintf(msg, msg_len, "%.200s is resident on the host already", l->key);
		return -EEXIST;
	}
	/* Demotion never evicts: it only keeps bytes that would otherwise be read again. The
	 * policy's reservations include a shrunk budget's standing one (hc->shrink), which
	 * hc->budget already leaves out. */
	busy = evict_used(hc->pol) + evict_reserved(hc->pol) - hc->shrink;
	avail = busy < hc->budget ? hc->budget - busy : 0;
	if (l->size > avail) {
		pthread_mutex_unlock(&hc->lock);
		snprintf(msg, msg_len, "the host budget has %" PRIu64 " bytes free, %" PRIu64
			 " needed, and demotion does not evict", avail, l->size);
		return -ENOSPC;
	}
	ret = evict_admit(hc->pol, l->key, l->size, now, &v, amsg, sizeof(amsg));
	if (ret) {
		evict_victims_free(&v);
		pthread_mutex_unlock(&hc->lock);
		snprintf(msg, msg_len, "%s", amsg);
		return ret;
	}
	/* With the room checked above there are no victims; were there any, they go as in
	 * make_room(), so that the policy and the entries agree. */
	evict_victims(hc, &v);
	ret = arena_alloc(hc->arena, l->size, &off);
	allocated = !ret;
	/* Faulted in now when memory is tight, so that a lack of it is an error here rather than
	 * SIGBUS in the device's copy. */
	if (!ret && recovery_populate_needed(l->size))
		ret = recovery_populate(arena_ptr(hc->arena, off), l->size);
	if (ret) {
		if (allocated)
			arena_free(hc->arena, off, l->size);
		evict_unreserve(hc->pol, l->size);
		pthread_mutex_unlock(&hc->lock);
		snprintf(msg, msg_len, "no host extent of %" PRIu64 " bytes: %s", l->size,
			 strerror(-ret));
		return ret;
	}
	*dst = arena_ptr(hc->arena, off);
	pthread_mutex_unlock(&hc->lock);
	return 0;
}

void hostcache_adopt_cancel(struct hostcache *hc, const struct hostcache_layout *l, void *dst)
{
	if (!dst)
		return;
	pthread_mutex_lock(&hc->lock);
	arena_free(hc->arena, (uint64_t)((uint8_t *)dst - (uint8_t *)arena_ptr(hc->arena, 0)),
		   l->size);
	evict_unreserve(hc->pol, l->size);
	pthread_mutex_unlock(&hc->lock);
}

int hostcache_adopt_commit(struct hostcache *hc, const struct hostcache_layout *l, uint32_t model,
			   uint32_t comp, void *dst)
{
	uint64_t now = wd_now_ns(), off;
	struct entry *e;

	pthread_mutex_lock(&hc->lock);
	off = (uint64_t)((uint8_t *)dst - (uint8_t *)arena_ptr(hc->arena, 0));
	if (find_id(hc, l->id)) {
		/* A load of the same form finished while the bytes were copied: keep that one. */
		arena_free(hc->arena, off, l->size);
		evict_unreserve(hc->pol, l->size);
		pthread_mutex_unlock(&hc->lock);
		return 0;
	}
	e = calloc(1, sizeof(*e));
	if (e)
		e->t = calloc(l->n_t ? l->n_t : 1, sizeof(*e->t));
	if (!e || !e->t) {
		arena_free(hc->arena, off, l->size);
		free(e);
		evict_unreserve(hc->pol, l->size);
		pthread_mutex_unlock(&hc->lock);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < l->n_t; i++) {
		struct wd_reg_tensor rt;

		if (l->t[i].tid == NO_TID || registry_read_tensor(hc->env.view, l->t[i].tid, &rt))
			continue;
		e->t[e->n_t] = (struct tinfo){ .off = l->t[i].off, .nbytes = l->t[i].nbytes,
					       .src_bytes = l->t[i].nbytes, .dtype = rt.dtype,
					       .src_dtype = rt.dtype, .name = strdup(rt.name) };
		if (!e->t[e->n_t].name)
			break;
		e->n_t++;
	}
	e->id = l->id;
	e->seq = hc->next_seq++;
	snprintf(e->key, sizeof(e->key), "%s", l->key);
	snprintf(e->ckey, sizeof(e->ckey), "%s", l->ckey);
	e->off = off;
	e->size = l->size;
	e->node = -1;		/* not bound: place_extent() never saw this extent */
	e->tensor_bytes = l->tensor_bytes;
	e->last_use_ns = now;
	e->resident = true;
	evict_insert(hc->pol, e->key, e->size, now, false);
	evict_set_ttl(hc->pol, e->key, hc->ttl_ns);	/* the keep-alive in force, as on_done() */
	e->next = hc->entries;
	hc->entries = e;
	bind_comp(hc, e, model, comp);
	pthread_mutex_lock(hc->env.state_lock);
	registry_counter_add(hc->env.reg, WD_CTR_HOST_BYTES, (int64_t)e->size);
	pthread_mutex_unlock(hc->env.state_lock);
	log_info(MOD, "\"adopted from a GPU\" key=\"%s\" bytes=%" PRIu64, e->key, e->size);
	pthread_mutex_unlock(&hc->lock);
	return 0;
}

bool hostcache_has(struct hostcache *hc, uint32_t comp)
{
	struct tier_form f = { 0 };
	struct entry *e;
	bool yes;

	pthread_mutex_lock(&hc->lock);
	e = find_form(hc, comp, &f);
	yes = e && e->resident;
	pthread_mutex_unlock(&hc->lock);
	return yes;
}

void hostcache_arena(struct hostcache *hc, void **base, uint64_t *size)
{
	*base = arena_ptr(hc->arena, 0);
	*size = hc->arena->seg.size;
}

void hostcache_publish_metrics(struct hostcache *hc)
{
	struct wd_reg_metrics *m = registry_metrics(hc->env.reg);
	uint64_t numa[WD_METRICS_NUMA + 1] = { 0 };
	struct arena_stats st;

	if (!hc)
		return;
	pthread_mutex_lock(&hc->lock);
	for (struct entry *e = hc->entries; e; e = e->next)
		if (e->resident)
			numa[e->node >= 0 && e->node < (int)WD_METRICS_NUMA ?
			     (unsigned int)e->node : WD_METRICS_NUMA] += e->size;
	arena_get_stats(hc->arena, &st);
	pthread_mutex_unlock(&hc->lock);
	/* The control thread is these words' only writer: relaxed stores (shm/regmetrics.h). */
	for (unsigned int i = 0; i <= WD_METRICS_NUMA; i++)
		WRITE_ONCE(m->numa_bytes[i], numa[i]);
	WRITE_ONCE(m->host_budget, hc->budget);
	WRITE_ONCE(m->host_used, st.ext.used);
	WRITE_ONCE(m->free_bytes, st.ext.free);
	WRITE_ONCE(m->free_extents, (uint64_t)st.ext.n_free);
	WRITE_ONCE(m->largest_free, st.ext.largest_free);
	WRITE_ONCE(m->updated_wall_ns, wd_wall_ns());
}

/* ---- recovery and reload (core/policy/recovery.h, core/daemon/psi.h) ---------------------------------- */

uint64_t hostcache_shed(struct hostcache *hc, uint64_t target, uint64_t *bytes)
{
	char key[EVICT_KEY_MAX];
	uint64_t now = wd_now_ns(), n = 0;

	*bytes = 0;
	pthread_mutex_lock(&hc->lock);
	sync_pins(hc);
	while (evict_used(hc->pol) > target && !evict_next_victim(hc->pol, now, key)) {
		struct entry *e = find_key(hc, key);

		if (e) {
			*bytes += e->size;
			n++;
			drop_entry(hc, e, true);
		} else {
			evict_remove(hc->pol, key, true);
		}
	}
	pthread_mutex_unlock(&hc->lock);
	recovery_count(RECOVERY_PRESSURE_SHEDS, n);
	return n;
}

uint64_t hostcache_budget(struct hostcache *hc)
{
	uint64_t b;

	pthread_mutex_lock(&hc->lock);
	b = hc->budget;
	pthread_mutex_unlock(&hc->lock);
	return b;
}

uint64_t hostcache_fit_budget(uint64_t budget)
{
	struct wd_memlimit ml;
	uint64_t cap;

	wd_memlimit_read(&ml);
	cap = wd_memlimit_budget_cap(&ml);
	if (!budget) /* the default: a quarter of what this daemon may use */
		return ml.limit != UINT64_MAX ? ml.limit / 4 : 1ull << 30;
	if (budget <= cap)
		return budget;
	log_warn(MOD, "\"host budget clamped: more than this daemon may use\" asked=%" PRIu64
		 " budget=%" PRIu64 " mem_total=%" PRIu64 " cgroup_limit=%" PRIu64
		 " cgroup_file=\"%s\"", budget, cap, ml.mem_total,
		 ml.cgroup_limit == UINT64_MAX ? 0 : ml.cgroup_limit,
		 ml.cgroup_file[0] ? ml.cgroup_file : "none");
	return cap;
}

int hostcache_set_budget(struct hostcache *hc, uint64_t budget, char *msg, size_t msg_len)
{
	uint64_t size = hc->arena->seg.size, now = wd_now_ns(), want;
	struct evict_victims v;
	char why[WD_DATA_SLOT_SIZE];
	int ret = 0;

	budget = round_extent(budget);
	if (budget > size || !budget) {
		snprintf(msg, msg_len, "host_budget: %" PRIu64 " bytes is more than the host cache "
			 "arena the daemon started with (%" PRIu64 " bytes): growing it needs a "
			 "restart", budget, size);
		return -EFBIG;
	}
	pthread_mutex_lock(&hc->lock);
	want = size - budget;
	if (want > hc->shrink) {
		/* Shrinking: reserve the difference, evicting unpinned entries to make room. */
		sync_pins(hc);
		ret = evict_admit(hc->pol, "(host budget shrink)", want - hc->shrink, now, &v, why,
				  sizeof(why));
		if (ret) {
			snprintf(msg, msg_len, "host_budget: cannot shrink to %" PRIu64 " bytes: %"
				 PRIu64 " bytes are in use and what is not evictable (pinned, loading "
				 "or within its keep-alive) does not fit", budget,
				 evict_used(hc->pol) + evict_reserved(hc->pol) - hc->shrink);
			pthread_mutex_unlock(&hc->lock);
			return -EBUSY;
		}
		evict_victims(hc, &v);
	} else if (want < hc->shrink) {
		evict_unreserve(hc->pol, hc->shrink - want);
	}
	hc->shrink = want;
	hc->budget = budget;
	pthread_mutex_unlock(&hc->lock);
	return 0;
}

void hostcache_set_ttl(struct hostcache *hc, uint64_t ttl_ns)
{
	pthread_mutex_lock(&hc->lock);
	hc->ttl_ns = ttl_ns;
	for (struct entry *e = hc->entries; e; e = e->next)
		if (e->resident)
			evict_set_ttl(hc->pol, e->key, ttl_ns);
	pthread_mutex_unlock(&hc->lock);
}

void hostcache_set_quarantine(struct hostcache *hc, uint32_t after)
{
	quarantine_set_after(hc->q, after);
}

int hostcache_plan_layout(struct hostcache *hc, uint32_t model, uint32_t comp,
			  struct hostcache_layout *out, struct hostcache_src **srcs, char *msg)
{
	struct tier_form f = { 0 };
	struct wd_reg_model rm;
	struct catalog_model m;
	const struct catalog_component *cc;
	struct load_file_spec *files = NULL;
	struct load_plan *plan = NULL;
	struct hostcache_src *src = NULL;
	char name[WD_NAME_MAX * 2 + 2];
	uint32_t n_files;
	int ret;

	memset(out, 0, sizeof(*out));
	*srcs = NULL;
	ret = registry_read_model(hc->env.view, model, &rm);
	if (!ret)
		ret = catalog_get_model(*hc->env.cat, rm.name, &m);
	if (ret) {
		snprintf(msg, WD_DATA_SLOT_SIZE, "load: model %u: %s", model, strerror(-ret));
		return ret;
	}
	cc = cat_comp(hc, &m, comp);
	if (!cc) {
		snprintf(msg, WD_DATA_SLOT_SIZE, "load: %.150s: component %u is no longer in the "
			 "catalog (rescan)", rm.name, comp);
		ret = -ESTALE;
		goto out;
	}
	snprintf(name, sizeof(name), "%s%s%s", rm.name, cc->name[0] ? "/" : "", cc->name);
	ret = spec_files(cc, &files, &n_files);
	if (!ret)
		ret = loader_plan(&(struct load_spec){ .name = name, .files = files,
						       .n_files = n_files },
				  loader_chunk(hc->loader), &plan, msg, WD_DATA_SLOT_SIZE);
	if (ret)
		goto out;
	out->t = calloc(plan->n_tensors ? plan->n_tensors : 1, sizeof(*out->t));
	src = calloc(plan->n_tensors ? plan->n_tensors : 1, sizeof(*src));
	if (!out->t || !src) {
		ret = -ENOMEM;
		goto out;
	}
	for (uint32_t i = 0; i < plan->n_tensors; i++) {
		const struct load_tensor *T = &plan->tensors[i];

		out->t[i] = (struct hostcache_tensor){ .off = T->off, .nbytes = T->nbytes,
						       .dtype = T->dtype };
		if (registry_find_tensor(hc->env.view, model, comp, T->name, &out->t[i].tid, NULL))
			out->t[i].tid = NO_TID;
		src[i] = (struct hostcache_src){ .path = strdup(files[T->file].path),
						 .off = T->src_off, .len = T->src_bytes };
		out->n_t++;
		if (!src[i].path) {
			ret = -ENOMEM;
			goto out;
		}
	}
	out->id = identity(cc, &f);
	entry_key(out->key, sizeof(out->key), name, &f, out->id);
	snprintf(out->ckey, sizeof(out->ckey), "%.*s", (int)sizeof(out->ckey) - 1, name);
	out->size = round_extent(plan->bytes);
	out->tensor_bytes = plan->tensor_bytes;
out:
	if (ret) {
		hostcache_src_free(src, out->n_t);
		src = NULL;
		free(out->t);
		memset(out, 0, sizeof(*out));
	}
	*srcs = src;
	loader_plan_free(plan);
	free(files);
	catalog_model_free(&m);
	return ret;
}

void hostcache_src_free(struct hostcache_src *src, uint32_t n)
{
	for (uint32_t i = 0; src && i < n; i++)
		free(src[i].path);
	free(src);
}
