/*
 * What the two cache tiers share (the host tier, core/tier/hostcache.h, and the device tier,
 * core/tier/devcache.h), and the narrow interface through which the daemon drives them.
 *
 * A tier takes its own struct (struct hostcache *, struct devcache *) and, when it is created,
 * a struct tier_env from the daemon: the registry and the daemon's read-only view of it, the
 * state lock, the lease table (client pins), the catalog handle, and a struct tier_sink of
 * callbacks for what only the daemon can do. The daemon's own structures (its clients, jobs
 * and pending completions) stay behind opaque handles: struct tier_client is a client, struct
 * tier_spare the final completion's entry a request allocated up front. No tier file includes
 * a header of core/daemon/ (the layer rule: core/tier is below core/daemon).
 *
 * The daemon's side is core/daemon/tiers.c: it builds the env and implements the sink.
 *
 * Locks: a tier's own lock comes after the daemon's clients_lock and before state_lock (the
 * device tier's lock before the host tier's; core/daemon/internal.h has the complete order).
 * Every field of the env marked "under state_lock" is read or written only with
 * *env->state_lock held. No sink callback takes a tier's lock. Each callback's comment says
 * from which threads it may be called and which locks the caller may hold:
 *
 *   callback      threads   caller may hold        takes
 *   post          any       its tier's lock        the client's completion list lock
 *   client_get    any       its tier's lock        -
 *   client_put    any       its tier's lock        (the last reference: unmaps the client)
 *   lease_of      any       state_lock (required)  -
 *   defer         any       nothing                the daemon's job lock (held alone)
 *   model_comps   any       its tier's lock        state_lock
 *   load_done     any       its tier's lock        the alert queue's lock
 *   device_error  any       anything               -
 *
 * How the host tier calls them: the loader thread posts progress and final completions and
 * notes finished loads (under the cache lock); the worker and the shards read model_comps
 * and take pins (tier_take_pin(): state_lock, then lease_of); the loader thread defers the
 * prefetches a finished load suggests, after dropping the cache lock.
 */
#ifndef WD_CORE_TIER_H
#define WD_CORE_TIER_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/base/common.h"
#include "core/tier/lease.h"
#include "shm/abi.h"
#include "shm/registry.h"

struct catalog;
struct evict_policy;

/* A client of the daemon, opaque to the tiers; the sink resolves it. */
struct tier_client;
/* A final completion's entry, allocated (malloc) by the daemon when it took the request, so
 * that the final completion can never be lost to an allocation failure. Opaque; see
 * tier_sink.post. */
struct tier_spare;

/* A load that ended successfully, for the daemon's metrics and alerts (tier_sink.load_done). */
struct tier_load_note {
	uint32_t tier;		/* WD_TIER_HOST or WD_TIER_CUDA(n) */
	const char *ckey;	/* the component's co-access key "model/component" */
	uint64_t bytes;		/* read from disk (host) or copied (device) */
	uint64_t ns;		/* how long the load took */
	bool whole_stored;	/* all tensors, as stored: a slow_load alert may judge it */
};

struct tier_sink {
	void *ctx;		/* passed back to every callback: the daemon */
	/*
	 * Hands a completion for @c to the thread that owns its completion ring (any thread, the
	 * tier's lock may be held). @final NULL: a progress entry, which replaces a progress
	 * entry of the same request still waiting; it may be dropped (-ENOMEM). Else *@final is
	 * the request's spare entry, which is used and set to NULL. @data (@len bytes, may be
	 * NULL) becomes the payload. Returns 0 or -ENOMEM.
	 */
	int (*post)(void *ctx, struct tier_client *c, const struct wd_cqe *cqe,
		    struct tier_spare **final, const void *data, size_t len);
	/* Takes and drops a reference on @c (any thread, the tier's lock may be held); a request
	 * holds one until its final completion is posted. */
	void (*client_get)(void *ctx, struct tier_client *c);
	void (*client_put)(void *ctx, struct tier_client *c);
	/* Called with state_lock held (any thread): @c's lease (its pins), or NULL once its
	 * lease ended (it disconnected: no new pins are accepted). */
	struct lease *(*lease_of)(void *ctx, struct tier_client *c);
	/*
	 * Queues request @sqe (no client, no payload) for the worker thread, which hands it back
	 * to the tier's job entry point (a prefetch: hostcache_load_job() with no client). Any
	 * thread, holding no lock at all (the daemon's job lock is never held with another).
	 * Returns 0, or -ECANCELED (stopping) / -ENOMEM.
	 */
	int (*defer)(void *ctx, const struct wd_sqe *sqe);
	/*
	 * The registry components of @model, [*@first, *@first + *@n). Any thread; takes
	 * state_lock, so the caller must not hold it (its tier's lock it may).
	 * Returns 0; -ESTALE when the model's files changed or vanished (first and n are set all
	 * the same); -ENOENT (and *@n 0) beyond the daemon's model table.
	 */
	int (*model_comps)(void *ctx, uint32_t model, uint32_t *first, uint32_t *n);
	/* A load completed (once per load, never per request). Any thread; the caller may hold
	 * its tier's lock, not state_lock. Records it in the tier's load histogram and, for a
	 * whole stored-form load on the host tier, queues the slow_load alert's verdict on it. */
	void (*load_done)(void *ctx, const struct tier_load_note *note);
	/* A device load failed in the GPU itself (allocation after the retry, a copy): one more
	 * in the metrics' "device" error class. Any thread. */
	void (*device_error)(void *ctx);
};

struct tier_env {
	struct registry *reg;		/* written under state_lock */
	struct registry_view *view;	/* the daemon's read-only reader over reg; any thread */
	pthread_mutex_t *state_lock;	/* registry writes, the lease table */
	struct lease_table *leases;	/* under state_lock */
	/* The catalog: the worker thread's handle (the worker may replace it when it rebuilds a
	 * corrupt catalog), so only read *cat on the worker, or before the threads start and
	 * after they stopped (create, destroy). */
	struct catalog **cat;
	/* --verify: hash every loaded tensor and check the file headers. A reload stores it:
	 * read it with __atomic_load_n(..., __ATOMIC_RELAXED). */
	const bool *verify;
	struct tier_sink sink;
};

/* What a tier's op on the shard did with a request. */
enum tier_outcome {
	TIER_DONE = 0,		/* *cqe and the payload are filled: publish them now */
	TIER_ASYNC = 1,		/* the worker must run it: the caller queues it */
};

/* A request the worker hands to a tier's job entry point (a LOAD that was not a hit, or
 * work the tier deferred through tier_sink.defer). The daemon's job stays its own. */
struct tier_job {
	struct tier_client *c;		/* the requester (the caller holds a reference); NULL:
					 * deferred work, no completion */
	struct tier_spare *spare;	/* the final completion's entry: the tier takes it and
					 * sets this to NULL; the caller frees what is left */
	const struct wd_sqe *sqe;
	const char *arg;		/* the payload, @arg_len bytes (NUL-terminated) */
	uint16_t arg_len;
};

/* ---- request forms: arg[0] and the payload of LOAD and DEVICE_MAP (docs/protocol.md) ---- */

/* A tensor selection (WD_LOAD_PREFIX / WD_LOAD_NAMES in arg[0]). */
enum tier_sel { TIER_SEL_ALL = 0, TIER_SEL_PREFIX = 1, TIER_SEL_NAMES = 2 };

/* What a request asks for in each component: the form of a cache entry. */
struct tier_form {
	uint8_t convert;	/* 0 (as stored), or the enum st_dtype F32 tensors become */
	uint8_t sel;		/* enum tier_sel */
	uint64_t sel_hash;	/* XXH3 of the selection payload: its identity in both tiers */
	const char *payload;	/* the selection (a prefix, or NUL-separated names) */
	uint16_t len;
};

/*
 * Reads the form of request @sqe (op @op, "load" or "device_map", names it in messages) from
 * arg[0] and the payload @arg (@len bytes). The payload is hostile. One set of rules for both
 * tiers, checked in this order:
 *   - no bit of arg[0] beyond WD_LOAD_ARG_ALL, arg[1..4] zero;
 *   - a dtype only with WD_LOAD_CONVERT, and F32 converts to F16 or BF16 only;
 *   - not WD_LOAD_PREFIX and WD_LOAD_NAMES together;
 *   - a selection needs the model by index (the payload is the selection), and a payload of
 *     1..WD_DATA_SLOT_SIZE bytes, without a NUL for a prefix.
 * Returns 0, or -EINVAL with the reason in @out (WD_DATA_SLOT_SIZE bytes, *@out_len bytes
 * written, no NUL counted).
 */
int tier_parse_form(const struct wd_sqe *sqe, const char *arg, uint16_t len, const char *op,
		    struct tier_form *f, char *out, uint16_t *out_len);

/* Whether @a and @b name the same form (conversion and selection). */
static inline bool tier_form_equal(const struct tier_form *a, const struct tier_form *b)
{
	return a->convert == b->convert && a->sel == b->sel && a->sel_hash == b->sel_hash;
}

/*
 * Writes a message into a completion's payload slot (@out has WD_DATA_SLOT_SIZE bytes,
 * truncated to fit); returns its length, the completion's data_len (no NUL is sent). The
 * daemon's own ops (core/daemon/ops.c) write their messages with it too.
 */
uint16_t tier_msg(char *out, const char *fmt, ...) WD_PRINTF(2, 3);

/*
 * The components a request targets: @comp alone, or every component of @model (the sink's
 * model_comps(); none for a model beyond the table). Takes state_lock (through the sink).
 */
void tier_targets(const struct tier_env *env, uint32_t model, uint32_t comp, uint32_t *first,
		  uint32_t *n);

/* ---- pins -------------------------------------------------------------------------------- */

/* Whether client pin @p covers component @comp of @model on @tier: the same tier and model,
 * and that component or the whole model. */
static inline bool tier_pin_covers(const struct lease_pin *p, uint32_t tier, uint32_t model,
				   uint32_t comp)
{
	return p->tier == tier && p->model == model &&
	       (p->component == WD_ID_NONE || p->component == comp);
}

/*
 * Under state_lock: how many client pins, over every lease of @t, @covers(@ent, pin) accepts
 * (each pin counted once). What a cache entry's eviction policy lease count must be.
 */
uint32_t tier_pins_count(const struct lease_table *t,
			 bool (*covers)(const void *ent, const struct lease_pin *p),
			 const void *ent);

/* Brings policy entry @key's lease count *@have to @want (evict_pin()/evict_unpin()). Under
 * the tier's lock, which guards @pol. */
void tier_pins_apply(struct evict_policy *pol, const char *key, uint32_t *have, uint32_t want);

/*
 * Pin @p for client @c, the WD_SQE_F_PIN of a LOAD that succeeded: added to its lease (once;
 * not when the client's lease already ended) and published in the registry's per-model pin
 * count and pin counter. Takes state_lock.
 */
void tier_take_pin(const struct tier_env *env, struct tier_client *c, const struct lease_pin *p);

/* ---- requests: one client request fanned out over several loads ------------------------- */

struct tier_request {
	struct tier_client *c;		/* holds a reference (sink client_get) */
	struct tier_spare *spare;	/* the final completion's entry; NULL: none */
	uint64_t user_data;
	uint8_t flags;			/* the request's WD_SQE_F_* */
	int pending;			/* loads not finished, plus one while fanning out */
	int err;			/* the first failure; 0: none */
	char msg[WD_DATA_SLOT_SIZE];	/* and its reason */
	uint64_t bytes;			/* aux0 of the completion: tensor bytes resident */
	uint64_t read_bytes;		/* aux1: read from disk for it */
	struct lease_pin pin;		/* taken on success with WD_SQE_F_PIN */
};

/* Records the request's failure: the first one wins (@msg NULL or empty: strerror(-@err)).
 * Under the lock of the tier that shares @r. */
void tier_req_fail(struct tier_request *r, int err, const char *msg);

/* One of @r's loads ended: true when it was the last one (the caller then finishes it with
 * tier_req_finish()). Under the lock of the tier that shares @r. */
static inline bool tier_req_done_one(struct tier_request *r)
{
	return --r->pending == 0;
}

/*
 * Posts @r's final completion (res the error, aux0 bytes, aux1 read_bytes, the message as
 * payload on failure), after taking its pin on success with WD_SQE_F_PIN, and drops its
 * client reference and spare. @r itself is the caller's to free. Takes state_lock for the pin.
 */
void tier_req_finish(const struct tier_env *env, struct tier_request *r);

#endif
