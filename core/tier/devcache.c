/*
 * The device tier of the daemon: per-GPU caches of components in exported VRAM allocations.
 * See core/tier/devcache.h for the model, the threads and the locks.
 */
#include "core/tier/devcache.h"
#include "core/base/file.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/base/array.h"
#include "core/policy/evict.h"
#include "core/base/fault.h"
#include "core/tier/hostcache.h"
#include "core/base/log.h"
#include "core/daemon/metrics.h"
#include "core/policy/placement.h"
#include "core/policy/recovery.h"
#include "core/format/st.h"
#include "gpu/device.h"
#include "gpu/staging.h"

#define MOD "devcache"
#define COPY_CHUNK (64ull << 20)	/* bytes per copy between progress reports */
#define MEMINFO_TRIES 100		/* mem_info re-reads after an eviction, 10 ms apart */
#define SCRATCH_MAX (8ull << 20)	/* F32 bytes staged in VRAM per conversion step */
#define TENSOR_ALIGN 64u		/* tensor offsets in a converted copy, as the host's */
#define NO_TID UINT32_MAX

/* A tensor selection (WD_LOAD_PREFIX / WD_LOAD_NAMES in arg[0]), as the host tier's. */
enum sel_kind { SEL_ALL = 0, SEL_PREFIX = 1, SEL_NAMES = 2 };

struct dgpu {
	int ordinal;
	struct gpu_dev *dev;
	struct gpu_device info;
	int numa;			/* -1: unknown or emulated */
	uint64_t budget;
	struct evict_policy *pol;
	struct gpu_stream *stream;	/* copies when there is no staging ring */
	struct staging *st;		/* the pinned staging ring (NULL: it could not be made) */
	uint64_t load_bytes;		/* bytes copied into it */
};

struct dreq {
	struct client *c;
	uint64_t user_data;
	struct pending *spare;
	uint8_t flags;
	int pending;		/* device loads not finished, plus one while fanning out */
	int err;
	char msg[WD_DATA_SLOT_SIZE];
	uint64_t bytes;
	uint64_t read_bytes;	/* read from disk by the host loads it started or joined */
	struct lease_pin pin;	/* taken on success with WD_SQE_F_PIN */
};

struct dentry {
	struct dentry *next;
	struct dgpu *g;
	uint32_t model, comp;
	uint8_t conv;			/* 0: as stored; else F32 tensors as this dtype (F16,
					 * BF16): a separate entry, converted on the GPU */
	uint8_t sel;			/* enum sel_kind; SEL_PREFIX/SEL_NAMES: only the tensors
					 * of selection @sel_arg (a separate entry, its tensors
					 * copied out of the whole host entry) */
	uint64_t sel_hash;		/* XXH3 of @sel_arg, as the host tier's form identity */
	uint16_t sel_len;
	char sel_arg[WD_DATA_SLOT_SIZE + 1];
	char key[EVICT_KEY_MAX];	/* "cuda:N/model/component", "...@F16" when converted,
					 * "...#sel:<hash>" for a selection */
	bool resident;
	struct gpu_vram v;		/* while resident (and while being filled, on the thread) */
	uint64_t size, tensor_bytes;
	struct hostcache_layout l;	/* the host entry it was copied from: the same tensor
					 * offsets, and what demotion needs to rebuild it */
	uint32_t pins;			/* evict_pin() calls applied (lease pins covering it), on
					 * pkey(): an alias's pins hold its owner */
	struct dentry *owner;		/* NULL, or the resident entry of another component whose
					 * allocation this one shares: the same host entry (same
					 * files, hostcache_layout.id) in the same form, stored on
					 * the GPU once. An alias has no VRAM and no policy entry
					 * of its own; its table has its own tensor ids. */
	uint32_t n_aliases;		/* entries whose owner this is */
	struct dreq **waiters;
	size_t n_waiters, cap_waiters;
};

/* Work for the device thread: fill entry @e (host load ended with @err), or free @v. */
struct dwork {
	struct dwork *next;
	struct dentry *e;
	int err;
	char msg[WD_DATA_SLOT_SIZE];
	uint64_t read_bytes;
	bool stream;			/* disk -> VRAM: @l and @src say what goes where */
	bool held;			/* host -> VRAM: @l is the held host entry */
	struct hostcache_layout l;
	struct hostcache_src *src;
	struct dgpu *g;			/* free_vram, trim: the device of @v, of @evicted */
	struct gpu_vram v;
	bool free_vram;
	struct dentry *evicted;		/* trim: entries detached by evict_detach(), to finish */
	struct trim_wait *trim;		/* trim: signalled once they are finished */
};

/* A DEVICE_TRIM waiting on its shard for the device thread to finish its evictions. */
struct trim_wait {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool done;
};

struct devcache {
	pthread_mutex_t lock;		/* entries, policies, pins */
	const struct gpu_ops *ops;
	char why[200];			/* why there is no GPU tier */
	unsigned int n;
	struct dgpu g[GPU_MAX_DEVICES];
	struct dentry *entries;
	uint64_t token;

	pthread_t thread;
	bool started;
	pthread_mutex_t qlock;
	pthread_cond_t qcond;
	struct dwork *qhead, *qtail;
	bool stop;
	bool ready;			/* the thread finished opening the devices */
};

/* ---- small helpers --------------------------------------------------------------------- */

int devcache_parse_budget(const char *s, uint64_t *bytes, unsigned int *pct)
{
	size_t len = s ? strlen(s) : 0;

	*bytes = 0;
	*pct = 0;
	if (!len)
		return -EINVAL;
	if (s[len - 1] == '%') {
		char *end;
		unsigned long v;

		errno = 0;
		v = strtoul(s, &end, 10);
		if (end != s + len - 1 || end == s || errno || v < 1 || v > 100)
			return -EINVAL;
		*pct = (unsigned int)v;
		return 0;
	}
	return wd_parse_bytes(s, bytes);
}

static struct dgpu *gpu_of(struct devcache *dc, uint32_t tier)
{
	if (tier == WD_TIER_HOST || tier - 1 >= dc->n)
		return NULL;
	return &dc->g[tier - 1];
}

/* The form of a device entry a request names (parse_form()). */
struct dform {
	uint8_t conv;			/* 0, or the dtype F32 tensors become */
	uint8_t sel;			/* enum sel_kind */
	uint64_t sel_hash;
	const char *payload;		/* the selection (prefix, or NUL-separated names) */
	uint16_t len;
};

/* The policy key that stands for @e: its owner's for an alias. */
static const char *pkey(const struct dentry *e)
{
	return e->owner ? e->owner->key : e->key;
}

static struct dentry *find(struct devcache *dc, const struct dgpu *g, uint32_t comp,
			   const struct dform *f)
{
	for (struct dentry *e = dc->entries; e; e = e->next)
		if (e->g == g && e->comp == comp && e->conv == f->conv && e->sel == f->sel &&
		    e->sel_hash == f->sel_hash)
			return e;
	return NULL;
}

/* The resident entry of @g whose policy key is @key (an eviction victim), or NULL. Under
 * dc->lock. */
static struct dentry *find_key(struct devcache *dc, const struct dgpu *g, const char *key)
{
	for (struct dentry *e = dc->entries; e; e = e->next)
		if (e->g == g && e->resident && !strcmp(e->key, key))
			return e;
	return NULL;
}

/*
 * The form a LOAD or DEVICE_MAP on a GPU tier asks for, from arg[0] and the payload @arg
 * (@len bytes; docs/protocol.md §4.4): f->conv = 0 (as stored) or the dtype F32 tensors
 * become; f->sel a tensor selection (WD_LOAD_PREFIX: the payload is a prefix; WD_LOAD_NAMES:
 * NUL-separated names), identified by the XXH3 of the payload as on the host tier. The
 * payload is hostile: a selection needs one that is not empty, and a prefix without NUL.
 * Returns 0, or -EINVAL with the reason.
 */
static int parse_form(const struct wd_sqe *sqe, const char *arg, uint16_t len, const char *op,
		      struct dform *f, struct wd_cqe *cqe, char *out)
{
	uint64_t a = sqe->arg[0];
	uint32_t dt = (uint32_t)(a & WD_LOAD_DTYPE_MASK);

	memset(f, 0, sizeof(*f));
	if (sqe->arg[1] || sqe->arg[2] || sqe->arg[3] || sqe->arg[4] || (a & ~WD_LOAD_ARG_ALL)) {
		cqe->data_len = ops_msg(out, "%s: unknown bits in arg[0] or arg[1..4] set", op);
		cqe->res = -EINVAL;
		return -EINVAL;
	}
	if ((a & WD_LOAD_PREFIX) && (a & WD_LOAD_NAMES)) {
		cqe->data_len = ops_msg(out, "%s: WD_LOAD_PREFIX and WD_LOAD_NAMES together", op);
		cqe->res = -EINVAL;
		return -EINVAL;
	}
	if (a & (WD_LOAD_PREFIX | WD_LOAD_NAMES)) {
		if (sqe->model == WD_ID_NONE || !len || len > WD_DATA_SLOT_SIZE || !arg ||
		    ((a & WD_LOAD_PREFIX) && memchr(arg, '\0', len))) {
			cqe->data_len = ops_msg(out, "%s: empty or malformed tensor selection (the "
						"model goes by index, the payload is the selection)",
						op);
			cqe->res = -EINVAL;
			return -EINVAL;
		}
		f->sel = (a & WD_LOAD_PREFIX) ? SEL_PREFIX : SEL_NAMES;
		f->sel_hash = XXH3_64bits(arg, len);
		f->payload = arg;
		f->len = len;
	}
	if (!(a & WD_LOAD_CONVERT)) {
		if (dt) {
			cqe->data_len = ops_msg(out, "%s: a dtype without WD_LOAD_CONVERT", op);
			cqe->res = -EINVAL;
			return -EINVAL;
		}
		return 0;
	}
	if (dt != GPU_DTYPE_F16 && dt != GPU_DTYPE_BF16) {
		cqe->data_len = ops_msg(out, "%s: F32 converts to F16 (%u) or BF16 (%u), not %u", op,
					GPU_DTYPE_F16, GPU_DTYPE_BF16, dt);
		cqe->res = -EINVAL;
		return -EINVAL;
	}
	f->conv = (uint8_t)dt;
	return 0;
}

/* The components a request targets: @comp, or all of @model's. */
static void targets(struct daemon *d, uint32_t model, uint32_t comp, uint32_t *first,
		    uint32_t *n)
{
	*first = 0;
	*n = 0;
	if (comp != WD_ID_NONE) {
		*first = comp;
		*n = 1;
		return;
	}
	pthread_mutex_lock(&d->state_lock);
	if (model < d->n_models) {
		*first = d->models[model].first_comp;
		*n = d->models[model].n_comps;
	}
	pthread_mutex_unlock(&d->state_lock);
}

static void set_state(struct daemon *d, const struct dentry *e, uint32_t state, int err)
{
	/* The registry has one state per component and tier: while another form of it stays
	 * resident on this GPU, the end of this one does not make it absent. */
	if (state != WD_STATE_RESIDENT && state != WD_STATE_LOADING)
		for (const struct dentry *x = d->dc->entries; x; x = x->next)
			if (x != e && x->g == e->g && x->comp == e->comp && x->resident)
				return;
	pthread_mutex_lock(&d->state_lock);
	registry_set_state(d->reg, e->comp, WD_TIER_CUDA((uint32_t)e->g->ordinal), state, err);
	if (state != WD_STATE_LOADING)
		for (uint32_t k = 0; k < e->l.n_t; k++)
			if (e->l.t[k].tid != NO_TID)
				registry_set_tensor_tier(d->reg, e->l.t[k].tid,
							 WD_TIER_CUDA((uint32_t)e->g->ordinal),
							 state == WD_STATE_RESIDENT);
	pthread_mutex_unlock(&d->state_lock);
}

/*
 * Brings each entry's policy lease count in line with the client pins (DEVICE_MAP and PIN)
 * on its GPU's tier that cover its component or its whole model. Under dc->lock.
 */
static void sync_pins(struct daemon *d)
{
	struct devcache *dc = d->dc;

	pthread_mutex_lock(&d->state_lock);
	for (struct dentry *e = dc->entries; e; e = e->next) {
		uint32_t want = 0, tier = WD_TIER_CUDA((uint32_t)e->g->ordinal);

		if (!e->resident)
			continue;
		for (const struct lease *l = d->leases.head; l; l = l->next)
			for (size_t i = 0; i < l->n; i++)
				if (l->pins[i].tier == tier && l->pins[i].model == e->model &&
				    (l->pins[i].component == WD_ID_NONE ||
				     l->pins[i].component == e->comp))
					want++;
		for (; e->pins < want; e->pins++)
			evict_pin(e->g->pol, pkey(e));
		for (; e->pins > want; e->pins--)
			evict_unpin(e->g->pol, pkey(e));
	}
	pthread_mutex_unlock(&d->state_lock);
}

static void queue_work(struct devcache *dc, struct dwork *w)
{
	pthread_mutex_lock(&dc->qlock);
	if (dc->qtail)
		dc->qtail->next = w;
	else
		dc->qhead = w;
	dc->qtail = w;
	pthread_cond_signal(&dc->qcond);
	pthread_mutex_unlock(&dc->qlock);
}

/* Hands @v to the device thread to be freed (only that thread calls gpu_ops). */
static void free_later(struct devcache *dc, struct dgpu *g, struct gpu_vram *v)
{
	struct dwork *w = calloc(1, sizeof(*w));

	if (!w) {
		/* Leaking the allocation is better than freeing it on a foreign thread. */
		log_error(MOD, "\"VRAM allocation leaked: out of memory\" bytes=%" PRIu64, v->size);
		return;
	}
	w->free_vram = true;
	w->g = g;
	w->v = *v;
	memset(v, 0, sizeof(*v));
	v->fd = -1;
	queue_work(dc, w);
}

static void free_dentry(struct dentry *e)
{
	free(e->l.t);
	free(e->waiters);
	free(e);
}

static void unlink_dentry(struct devcache *dc, struct dentry *e)
{
	for (struct dentry **pp = &dc->entries; *pp; pp = &(*pp)->next) {
		if (*pp == e) {
			*pp = e->next;
			return;
		}
	}
}

/* ---- requests -------------------------------------------------------------------------- */

static void req_fail(struct dreq *r, int err, const char *msg)
{
	if (r->err)
		return;
	r->err = err;
	snprintf(r->msg, sizeof(r->msg), "%s", msg && *msg ? msg : strerror(-err));
}

/* A pin of a LOAD with WD_SQE_F_PIN, once resident (as the host tier's). Takes state_lock. */
static void take_pin(struct daemon *d, struct client *c, const struct lease_pin *p)
{
	pthread_mutex_lock(&d->state_lock);
	if (!c->gone && lease_pin(&d->leases, &c->lease, p) == 0) {
		registry_set_model_pins(d->reg, p->model, lease_model_pins(&d->leases, p->model));
		registry_counter_add(d->reg, WD_CTR_PINS, 1);
	}
	pthread_mutex_unlock(&d->state_lock);
}

/* Under dc->lock (or before the request is shared). */
static void req_done_one(struct daemon *d, struct dreq *r)
{
	struct wd_cqe cqe;
	size_t len;

	if (--r->pending)
		return;
	if (!r->err && (r->flags & WD_SQE_F_PIN))
		take_pin(d, r->c, &r->pin);
	cqe = (struct wd_cqe){ .user_data = r->user_data, .res = r->err, .aux0 = r->bytes,
			       .aux1 = r->read_bytes };
	len = r->err ? strnlen(r->msg, sizeof(r->msg) - 1) : 0;
	daemon_post(d, r->c, &cqe, &r->spare, r->msg, len);
	daemon_client_put(d, r->c);
	free(r->spare);
	free(r);
}

static int add_waiter(struct dentry *e, struct dreq *r)
{
	if (wd_grow(&e->waiters, &e->cap_waiters, e->n_waiters, sizeof(*e->waiters)))
		return -ENOMEM;
	e->waiters[e->n_waiters++] = r;
	r->pending++;
	return 0;
}

/* The load of @e failed: its requesters get @err, the entry goes. Under dc->lock. */
static void fail_entry(struct daemon *d, struct dentry *e, int err, const char *msg)
{
	log_info(MOD, "\"device load failed\" key=\"%s\" err=%d msg=\"%s\"", e->key, err,
		 msg ? msg : "");
	unlink_dentry(d->dc, e);
	set_state(d, e, err == -ECANCELED ? WD_STATE_ABSENT : WD_STATE_FAILED, err);
	for (uint32_t i = 0; i < e->n_waiters; i++) {
		req_fail(e->waiters[i], err, msg);
		req_done_one(d, e->waiters[i]);
	}
	free_dentry(e);
}

/* ---- eviction and demotion -------------------------------------------------------------- */

/*
 * Copies resident entry @e back into a new host cache entry when the host tier no longer
 * holds the component. The host extent is reserved first (hostcache_adopt_reserve(): room
 * without evicting), so that nothing is copied off the GPU that the host cannot keep; the
 * bytes then go device -> host straight into it. On the device thread (copy_d2h). Failure
 * only costs a disk read later.
 */
static void demote(struct daemon *d, struct dentry *e)
{
	struct devcache *dc = d->dc;
	char why[160] = "", hmsg[WD_DATA_SLOT_SIZE] = "";
	void *dst = NULL;
	int ret;

	/* A converted copy or a selection cannot rebuild the stored form the host tier keeps. */
	if (e->conv || e->sel || hostcache_has(d, e->comp))
		return;
	ret = hostcache_adopt_reserve(d, &e->l, &dst, hmsg, sizeof(hmsg));
	if (ret == -EEXIST)
		return;
	if (ret) {
		log_info(MOD, "\"not demoted: no room on the host, dropped without copying\" "
			 "key=\"%s\" bytes=%" PRIu64 " err=%d why=\"%s\"", e->key, e->l.size, ret,
			 hmsg);
		return;
	}
	ret = dc->ops->copy_d2h(e->g->dev, dst, e->v.dptr, e->l.size, why, sizeof(why));
	if (ret)
		hostcache_adopt_cancel(d, &e->l, dst);
	else
		ret = hostcache_adopt_commit(d, &e->l, e->model, e->comp, dst);
	log_info(MOD, "\"demotion to the host\" key=\"%s\" bytes=%" PRIu64 " err=%d%s%s",
		 e->key, e->l.size, ret, why[0] ? " why=" : "", why);
}

/*
 * Evicts resident owner @e, in two steps, so that the device -> host copy of a demotion does
 * not hold dc->lock (the shards' DEVICE_MAP, DEVICES and LOAD hits take it):
 * evict_detach(), under dc->lock, takes it out of the list, the registry and the policy
 * (nothing can find or map it any more) and puts it on *@later; evict_finish(), on the
 * device thread without dc->lock, demotes each entry of that list, frees its VRAM and the
 * entry. Between the two the policy no longer counts its bytes while the GPU still holds
 * them: the callers re-read mem_info after evict_finish() for that reason.
 */
static void evict_detach(struct daemon *d, struct dentry *e, struct dentry **later)
{
	struct devcache *dc = d->dc;

	/* The policy let it go, so no pin covers any alias either: they go with it. */
	for (struct dentry *x = dc->entries, *next; x && e->n_aliases; x = next) {
		next = x->next;
		if (x->owner != e)
			continue;
		unlink_dentry(dc, x);
		set_state(d, x, WD_STATE_ABSENT, 0);
		log_info(MOD, "\"dropped with its owner\" key=\"%s\" owner=\"%s\"", x->key,
			 e->key);
		e->n_aliases--;
		free_dentry(x);
	}
	unlink_dentry(dc, e);
	set_state(d, e, WD_STATE_ABSENT, 0);
	evict_remove(e->g->pol, e->key, true);
	log_info(MOD, "\"evicted\" key=\"%s\" bytes=%" PRIu64, e->key, e->size);
	e->next = *later;
	*later = e;
}

static void evict_finish(struct daemon *d, struct dentry *list)
{
	while (list) {
		struct dentry *e = list;

		list = e->next;
		demote(d, e);
		d->dc->ops->vram_free(e->g->dev, &e->v);
		free_dentry(e);
	}
}

/*
 * Admission of @bytes on @g for @e: refused at once when it can never fit (-EFBIG), else
 * unpinned, unmapped entries are evicted by score until the policy has room, and the GPU's
 * free memory is re-read (frees land late) until the allocation can be made. Device thread.
 */
static int admit(struct daemon *d, struct dgpu *g, struct dentry *e, uint64_t bytes, char *msg)
{
	struct devcache *dc = d->dc;
	struct evict_victims v;
	struct dentry *later = NULL;
	uint64_t now = wd_now_ns(), free_b = 0, total_b = 0;
	char name[EVICT_KEY_MAX];
	int ret;

	snprintf(name, sizeof(name), "%s", strchr(e->key, '/') ? strchr(e->key, '/') + 1 : e->key);
	pthread_mutex_lock(&dc->lock);
	sync_pins(d);
	ret = evict_admit(g->pol, name, bytes, now, &v, msg, WD_DATA_SLOT_SIZE);
	if (ret) {
		pthread_mutex_unlock(&dc->lock);
		return ret;
	}
	for (size_t i = 0; i < v.n; i++) {
		struct dentry *x = find_key(dc, g, v.keys[i]);

		if (x)
			evict_detach(d, x, &later);
		else
			evict_remove(g->pol, v.keys[i], true);
	}
	evict_victims_free(&v);
	pthread_mutex_unlock(&dc->lock);
	evict_finish(d, later);
	for (int i = 0; i < MEMINFO_TRIES; i++) {
		char why[160];

		ret = dc->ops->mem_info(g->dev, &free_b, &total_b, why, sizeof(why));
		if (ret) {
			snprintf(msg, WD_DATA_SLOT_SIZE, "cuda:%d: %s", g->ordinal, why);
			break;
		}
		if (free_b >= bytes)
			return 0;
		usleep(10000);
	}
	if (!ret) {
		ret = -ENOSPC;
		snprintf(msg, WD_DATA_SLOT_SIZE, "component %.100s needs %" PRIu64 " bytes, cuda:%d "
			 "has %" PRIu64 " free (other processes use the rest)", name, bytes,
			 g->ordinal, free_b);
	}
	pthread_mutex_lock(&dc->lock);
	evict_unreserve(g->pol, bytes);
	pthread_mutex_unlock(&dc->lock);
	return ret;
}

/* What recovery_alloc_retry() works on for one VRAM allocation (alloc_vram()). */
struct valloc_ctx {
	struct daemon *d;
	struct dgpu *g;
	uint64_t size;
	struct gpu_vram *v;
	char why[160];
};

static int try_vram(void *arg)
{
	struct valloc_ctx *a = arg;
	int err = fault_take(FAULT_VRAM);

	if (err) {
		snprintf(a->why, sizeof(a->why), "vram_alloc: injected fault (%s)", FAULT_ENV);
		return -err;
	}
	return a->d->dc->ops->vram_alloc(a->g->dev, a->size, a->v, a->why, sizeof(a->why));
}

/*
 * The allocation failed with @err: evicts unpinned, unmapped entries of the GPU, highest
 * score first, until @bytes were freed or nothing is left, then re-reads mem_info until the
 * GPU reports the room (frees land late). Device thread. Returns the bytes evicted.
 */
static int64_t evict_vram(void *arg, uint64_t bytes, int err)
{
	struct valloc_ctx *a = arg;
	struct devcache *dc = a->d->dc;
	uint64_t now = wd_now_ns(), free_b = 0, total_b = 0;
	char key[EVICT_KEY_MAX], why[160];
	struct dentry *later = NULL;
	int64_t freed = 0;

	(void)err;
	pthread_mutex_lock(&dc->lock);
	sync_pins(a->d);
	while ((uint64_t)freed < bytes && !evict_next_victim(a->g->pol, now, key)) {
		struct dentry *x = find_key(dc, a->g, key);

		if (x) {
			freed += (int64_t)x->size;
			evict_detach(a->d, x, &later);
		} else {
			evict_remove(a->g->pol, key, true);
		}
	}
	pthread_mutex_unlock(&dc->lock);
	evict_finish(a->d, later);
	for (int i = 0; freed && i < MEMINFO_TRIES; i++) {
		if (dc->ops->mem_info(a->g->dev, &free_b, &total_b, why, sizeof(why)) ||
		    free_b >= bytes)
			break;
		usleep(10000);
	}
	return freed;
}

/*
 * Allocates @size bytes of VRAM on @g for @e under the recovery policy (core/policy/recovery.h): an
 * allocation that fails with -ENOMEM/-ENOSPC evicts unpinned, unmapped entries of the GPU and
 * is retried once. The FAULT_VRAM injection point is here. Returns 0, or the error with @msg
 * naming the entry, the bytes and what eviction achieved. Device thread.
 */
static int alloc_vram(struct daemon *d, struct dgpu *g, struct dentry *e, uint64_t size,
		      struct gpu_vram *v, char *msg)
{
	struct valloc_ctx a = { .d = d, .g = g, .size = size, .v = v };
	char tier[16], rmsg[WD_DATA_SLOT_SIZE] = "";
	int ret;

	snprintf(tier, sizeof(tier), "cuda:%d", g->ordinal);
	ret = recovery_alloc_retry(&(struct recovery_alloc){
		.tier = tier, .name = e->key, .what = "VRAM", .bytes = size,
		.try_alloc = try_vram, .evict = evict_vram, .arg = &a }, rmsg, sizeof(rmsg));
	if (ret && rmsg[0])
		snprintf(msg, WD_DATA_SLOT_SIZE, "%.190s; %.60s", rmsg, a.why);
	else if (ret)
		snprintf(msg, WD_DATA_SLOT_SIZE, "%.60s: cuda:%d: %.150s", e->key, g->ordinal,
			 a.why);
	return ret;
}

/* ---- the device thread ------------------------------------------------------------------ */

static void post_progress(struct daemon *d, struct dentry *e, uint64_t done, uint64_t total)
{
	pthread_mutex_lock(&d->dc->lock);
	for (uint32_t i = 0; i < e->n_waiters; i++) {
		struct dreq *r = e->waiters[i];
		struct wd_cqe cqe = { .user_data = r->user_data, .flags = WD_CQE_F_PROGRESS,
				      .aux0 = done, .aux1 = total };

		if (!(r->flags & WD_SQE_F_NO_PROGRESS))
			daemon_post(d, r->c, &cqe, NULL, NULL, 0);
	}
	pthread_mutex_unlock(&d->dc->lock);
	pthread_mutex_lock(&d->state_lock);
	registry_set_progress(d->reg, e->comp, WD_TIER_CUDA((uint32_t)e->g->ordinal), done, total);
	pthread_mutex_unlock(&d->state_lock);
}

struct progress_arg {
	struct daemon *d;
	struct dentry *e;
};

static void staging_progress(void *arg, uint64_t done, uint64_t total)
{
	struct progress_arg *pa = arg;

	post_progress(pa->d, pa->e, done, total);
}

/*
 * Host -> VRAM: @n bytes of @src (in the host cache arena, which is not page-locked: pinning
 * all of it at start would fault in and lock the whole budget, and would defeat the NUMA
 * placement of its extents) to @dptr, staged through the ring's page-locked slots, or in
 * chunks on the device's own stream, from pageable memory, when it has no ring.
 */
static int copy_in(struct daemon *d, struct dentry *e, uint64_t dptr, const uint8_t *src,
		   uint64_t n, char *msg)
{
	const struct gpu_ops *ops = d->dc->ops;
	struct dgpu *g = e->g;
	char why[STAGING_MSG_MAX] = "";
	int ret = 0;

	if (g->st) {
		struct progress_arg pa = { d, e };
		struct staging_host_copy c = { .src = src, .len = n, .dst = dptr };

		ret = staging_copy_host(g->st, &c, 1, &(struct staging_call){
						.progress = staging_progress, .arg = &pa },
					why, sizeof(why));
		if (ret)
			snprintf(msg, WD_DATA_SLOT_SIZE, "%.60s: copy to cuda:%d: %.150s", e->key,
				 g->ordinal, why);
		return ret;
	}
	for (uint64_t off = 0; off < n && !ret;) {
		uint64_t len = n - off < COPY_CHUNK ? n - off : COPY_CHUNK;
		struct gpu_event *ev = NULL;

		ret = ops->copy_h2d(g->dev, g->stream, dptr + off, src + off, len, why, sizeof(why));
		if (!ret)
			ret = ops->event_record(g->dev, g->stream, &ev, why, sizeof(why));
		if (!ret)
			ret = ops->event_wait(g->dev, ev, why, sizeof(why));
		if (ev)
			ops->event_destroy(g->dev, ev);
		off += len;
		if (!ret)
			post_progress(d, e, off, n);
	}
	if (ret)
		snprintf(msg, WD_DATA_SLOT_SIZE, "%.60s: copy to cuda:%d: %.150s", e->key,
			 g->ordinal, why);
	return ret;
}

/* Waits for everything queued on @g's own stream. */
static int stream_wait(struct daemon *d, struct dgpu *g, char *why, size_t why_size)
{
	const struct gpu_ops *ops = d->dc->ops;
	struct gpu_event *ev = NULL;
	int ret = ops->event_record(g->dev, g->stream, &ev, why, why_size);

	if (!ret)
		ret = ops->event_wait(g->dev, ev, why, why_size);
	if (ev)
		ops->event_destroy(g->dev, ev);
	return ret;
}

/*
 * @n bytes of host memory to @dst, complete when this returns with a ring (staged through its
 * slots), queued on @g's own stream without one (then from pageable memory).
 */
static int host_copy(struct daemon *d, struct dgpu *g, uint64_t dst, const uint8_t *src,
		     uint64_t n, char *why, size_t why_size)
{
	if (g->st)
		return staging_copy_host(g->st, &(struct staging_host_copy){
						 .src = src, .len = n, .dst = dst }, 1, NULL,
					 why, why_size);
	return d->dc->ops->copy_h2d(g->dev, g->stream, dst, src, n, why, why_size);
}

/* Whether tensor @t of a stored-form layout is converted to @conv (F32, whole elements). */
static bool converts(const struct hostcache_tensor *t, uint8_t conv)
{
	return conv && t->dtype == ST_F32 && t->nbytes % 4 == 0;
}

/*
 * The layout of a converted device copy of stored-form entry @l: tensors in the same order,
 * each at a TENSOR_ALIGN offset, F32 ones at half their size in dtype @conv, the others as
 * stored. After the tensors, at *@scratch_off, *@scratch bytes (a multiple of 4, at most
 * SCRATCH_MAX) where F32 bytes are staged before the GPU converts them. @out gets its own
 * tensor table (free(out->t)). Returns 0 or -ENOMEM.
 */
static int convert_layout(const struct hostcache_layout *l, uint8_t conv,
			  struct hostcache_layout *out, uint64_t *scratch_off, uint64_t *scratch)
{
	uint64_t off = 0, biggest = 0;

	*out = *l;
	out->base = NULL;
	out->tensor_bytes = 0;
	out->t = calloc(l->n_t ? l->n_t : 1, sizeof(*out->t));
	if (!out->t)
		return -ENOMEM;
	for (uint32_t i = 0; i < l->n_t; i++) {
		const struct hostcache_tensor *t = &l->t[i];
		bool c = converts(t, conv);
		uint64_t nb = c ? t->nbytes / 2 : t->nbytes;

		off = (off + TENSOR_ALIGN - 1) / TENSOR_ALIGN * TENSOR_ALIGN;
		out->t[i] = (struct hostcache_tensor){ .tid = t->tid, .off = off, .nbytes = nb,
						       .dtype = c ? conv : t->dtype };
		off += nb;
		out->tensor_bytes += nb;
		if (c && t->nbytes > biggest)
			biggest = t->nbytes;
	}
	out->size = off;
	*scratch_off = (off + TENSOR_ALIGN - 1) / TENSOR_ALIGN * TENSOR_ALIGN;
	*scratch = biggest < SCRATCH_MAX ? biggest : SCRATCH_MAX;
	return 0;
}

/*
 * Host -> VRAM with conversion, all on the device's stream (in order, so the scratch area
 * is reused only after the conversion that reads it has run): each F32 tensor is copied as
 * stored into the scratch area, from the page-locked host copy (the pinned fast path), in
 * pieces of at most @scratch bytes, and converted by the GPU into its place in @cl; the
 * other tensors are copied to their place as they are. Device thread.
 */
static int convert_in(struct daemon *d, struct dentry *e, const struct gpu_vram *v,
		      const struct hostcache_layout *l, const struct hostcache_layout *cl,
		      uint64_t scratch_off, uint64_t scratch, char *msg)
{
	const struct gpu_ops *ops = d->dc->ops;
	struct dgpu *g = e->g;
	struct gpu_event *ev = NULL;
	const uint8_t *base = l->base;
	char why[STAGING_MSG_MAX] = "";
	int ret = 0;

	for (uint32_t i = 0; i < l->n_t && !ret; i++) {
		const struct hostcache_tensor *t = &l->t[i];
		uint64_t dst = v->dptr + cl->t[i].off;

		if (!converts(t, e->conv)) {
			ret = host_copy(d, g, dst, base + t->off, t->nbytes, why, sizeof(why));
			continue;
		}
		for (uint64_t done = 0; done < t->nbytes && !ret;) {
			uint64_t len = t->nbytes - done < scratch ? t->nbytes - done : scratch;

			/* The conversion queued before must have read the scratch area. */
			if (done || i)
				ret = stream_wait(d, g, why, sizeof(why));
			if (!ret)
				ret = host_copy(d, g, v->dptr + scratch_off, base + t->off + done,
						len, why, sizeof(why));
			if (!ret)
				ret = ops->convert_f32(g->dev, g->stream, dst + done / 2,
						       v->dptr + scratch_off, len / 4, e->conv, why,
						       sizeof(why));
			done += len;
		}
	}
	/* Wait even after a failure: nothing queued may outlive the allocation or the hold. */
	if (!ops->event_record(g->dev, g->stream, &ev, ret ? NULL : why, ret ? 0 : sizeof(why))) {
		int wret = ops->event_wait(g->dev, ev, ret ? NULL : why, ret ? 0 : sizeof(why));

		if (!ret)
			ret = wret;
		ops->event_destroy(g->dev, ev);
	} else if (!ret) {
		ret = -EIO;
	}
	if (ret)
		snprintf(msg, WD_DATA_SLOT_SIZE, "%.60s: copy and conversion on cuda:%d: %.150s",
			 e->key, g->ordinal, why);
	else
		post_progress(d, e, cl->size, cl->size);
	return ret;
}

/*
 * The tensors of stored-form entry @l that @e's selection names, into @out: the same offsets
 * in the host extent (out->base is l->base), its own table (free(out->t)). Tensor names come
 * from the registry (the daemon's own writes). A prefix must match at least one tensor; every
 * name of a list must be a tensor of the component, as on the host tier. Returns 0, -ENOENT
 * or -ENOMEM with @msg (WD_DATA_SLOT_SIZE bytes).
 */
static int select_layout(struct daemon *d, const struct dentry *e,
			 const struct hostcache_layout *l, struct hostcache_layout *out, char *msg)
{
	bool *used = NULL;
	uint32_t n = 0;

	*out = *l;
	out->tensor_bytes = 0;
	out->t = calloc(l->n_t ? l->n_t : 1, sizeof(*out->t));
	if (e->sel == SEL_NAMES)
		used = calloc(e->sel_len + 1u, sizeof(*used));
	if (!out->t || (e->sel == SEL_NAMES && !used)) {
		free(out->t);
		out->t = NULL;
		free(used);
		snprintf(msg, WD_DATA_SLOT_SIZE, "%.150s: out of memory", e->key);
		return -ENOMEM;
	}
	for (uint32_t i = 0; i < l->n_t; i++) {
		struct wd_reg_tensor rt;
		bool take = false;

		if (l->t[i].tid == NO_TID || registry_read_tensor(&d->view, l->t[i].tid, &rt))
			continue;
		rt.name[sizeof(rt.name) - 1] = '\0';
		if (e->sel == SEL_PREFIX) {
			take = !strncmp(rt.name, e->sel_arg, e->sel_len);
		} else {
			/* Names are NUL-separated in sel_arg (NUL-terminated after sel_len). */
			for (size_t k = 0; k < e->sel_len; k += strlen(e->sel_arg + k) + 1) {
				if (!strcmp(rt.name, e->sel_arg + k)) {
					take = true;
					used[k] = true;
				}
			}
		}
		if (take) {
			out->t[n++] = l->t[i];
			out->tensor_bytes += l->t[i].nbytes;
		}
	}
	out->n_t = n;
	for (size_t k = 0; e->sel == SEL_NAMES && k < e->sel_len;
	     k += strlen(e->sel_arg + k) + 1) {
		if (e->sel_arg[k] && !used[k]) {
			snprintf(msg, WD_DATA_SLOT_SIZE, "load: %.80s: no tensor \"%.100s\" in the "
				 "component", e->key, e->sel_arg + k);
			free(used);
			free(out->t);
			out->t = NULL;
			return -ENOENT;
		}
	}
	free(used);
	if (!n) {
		snprintf(msg, WD_DATA_SLOT_SIZE, "load: %.150s: no tensor matches the selection",
			 e->key);
		free(out->t);
		out->t = NULL;
		return -ENOENT;
	}
	return 0;
}

static void make_resident(struct daemon *d, struct dentry *e, struct hostcache_layout *l,
			  const struct gpu_vram *v, uint64_t size, uint64_t t0, uint64_t read_bytes);

/*
 * The resident entry on @e's GPU, in @e's form, made from host entry @id for another
 * component (a component shared by two models: the host tier bound both to one entry), or
 * NULL. Aliases are skipped: their owner is found instead. Under dc->lock.
 */
static struct dentry *find_twin(struct devcache *dc, const struct dentry *e, uint64_t id)
{
	for (struct dentry *x = dc->entries; x; x = x->next)
		if (x != e && x->g == e->g && x->resident && !x->owner && x->comp != e->comp &&
		    x->conv == e->conv && x->sel == e->sel && x->sel_hash == e->sel_hash &&
		    x->l.id == id)
			return x;
	return NULL;
}

/*
 * @e becomes an alias of @owner: resident without a copy, sharing its allocation, with
 * layout @l (@e takes its table: the same offsets as the owner's, @e's component's tensor
 * ids). Its requesters are answered; a use of the owner's policy entry. Device thread,
 * under dc->lock.
 */
static void alias_resident(struct daemon *d, struct dentry *e, struct dentry *owner,
			   struct hostcache_layout *l, uint64_t read_bytes)
{
	e->l = *l;
	l->t = NULL;
	e->owner = owner;
	owner->n_aliases++;
	e->v = owner->v;
	e->size = owner->size;
	e->tensor_bytes = e->l.tensor_bytes;
	e->resident = true;
	evict_lookup(e->g->pol, owner->key, wd_now_ns());
	set_state(d, e, WD_STATE_RESIDENT, 0);
	for (uint32_t i = 0; i < e->n_waiters; i++) {
		e->waiters[i]->bytes += e->tensor_bytes;
		e->waiters[i]->read_bytes += read_bytes;
		req_done_one(d, e->waiters[i]);
	}
	e->n_waiters = 0;
	log_info(MOD, "\"resident: shares the allocation of identical content\" key=\"%s\" "
		 "owner=\"%s\" bytes=%" PRIu64, e->key, owner->key, e->size);
}

/* The host load of @e ended with @err: copy it to the GPU and complete its requesters. */
static void fill(struct daemon *d, struct dentry *e, int err, const char *hmsg,
		 uint64_t read_bytes, struct hostcache_layout *held)
{
	struct devcache *dc = d->dc;
	struct dgpu *g = e->g;
	struct hostcache_layout l = { 0 }, cl = { 0 };
	struct gpu_vram v = { .fd = -1 };
	char msg[WD_DATA_SLOT_SIZE] = "";
	uint64_t t0 = wd_now_ns(), gran, size, need, scratch_off = 0, scratch = 0;
	int ret = err;

	if (ret) {
		snprintf(msg, sizeof(msg), "%s", hmsg);
		goto fail;
	}
	if (held) {
		l = *held;
		memset(held, 0, sizeof(*held));
	} else {
		ret = hostcache_hold(d, e->comp, &l);
	}
	if (ret) {
		snprintf(msg, sizeof(msg), "%.150s: the host copy went before the GPU copy could start "
			 "(retry)", e->key);
		ret = -EAGAIN;
		goto fail;
	}
	gran = dc->ops->granularity(g->dev);
	need = l.size;
	if (e->sel) {
		struct hostcache_layout sl;

		/* From here on @l describes the selected tensors only; the hold is the
		 * extent's, which the copy keeps. */
		ret = select_layout(d, e, &l, &sl, msg);
		if (ret) {
			hostcache_unhold(d, &l);
			free(l.t);
			goto fail;
		}
		free(l.t);
		l.t = sl.t;
		l.n_t = sl.n_t;
		l.tensor_bytes = sl.tensor_bytes;
	}
	if (e->conv || e->sel) {
		/* A compact layout of its own; with conv 0 nothing is converted and the
		 * scratch area is empty. */
		ret = convert_layout(&l, e->conv, &cl, &scratch_off, &scratch);
		if (ret) {
			snprintf(msg, sizeof(msg), "%.150s: out of memory", e->key);
			hostcache_unhold(d, &l);
			free(l.t);
			goto fail;
		}
		need = scratch_off + scratch;
	}
	{
		/* The same content (one host entry) already on this GPU in this form, for
		 * another model's component: share its allocation instead of a second copy. */
		struct dentry *twin;

		pthread_mutex_lock(&dc->lock);
		twin = find_twin(dc, e, l.id);
		if (twin)
			alias_resident(d, e, twin, e->conv || e->sel ? &cl : &l, read_bytes);
		pthread_mutex_unlock(&dc->lock);
		if (twin) {
			hostcache_unhold(d, &l);
			free(l.t);
			free(cl.t);
			return;
		}
	}
	size = gran ? (need + gran - 1) / gran * gran : need;
	ret = admit(d, g, e, size, msg);
	if (!ret) {
		ret = alloc_vram(d, g, e, size, &v, msg);
		if (ret) {
			metrics_note_device_error(d->reg);
			pthread_mutex_lock(&dc->lock);
			evict_unreserve(g->pol, size);
			pthread_mutex_unlock(&dc->lock);
		}
	}
	if (!ret) {
		ret = e->conv || e->sel ?
		      convert_in(d, e, &v, &l, &cl, scratch_off, scratch, msg) :
		      copy_in(d, e, v.dptr, l.base, l.size, msg);
		if (ret) {
			metrics_note_device_error(d->reg);
			dc->ops->vram_free(g->dev, &v);
			pthread_mutex_lock(&dc->lock);
			evict_unreserve(g->pol, size);
			pthread_mutex_unlock(&dc->lock);
		}
	}
	hostcache_unhold(d, &l);
	if (ret) {
		free(l.t);
		free(cl.t);
		goto fail;
	}
	if (e->conv || e->sel) {
		/* The device copy's own layout; the host entry's table is no longer needed. */
		free(l.t);
		l = cl;
	}
	make_resident(d, e, &l, &v, size, t0, read_bytes);
	return;
fail:
	pthread_mutex_lock(&dc->lock);
	fail_entry(d, e, ret, msg);
	pthread_mutex_unlock(&dc->lock);
}

/*
 * The copy into @v (@size bytes, from layout @l, which @e takes over) is complete: @e becomes
 * resident and its requesters are answered. Device thread.
 */
static void make_resident(struct daemon *d, struct dentry *e, struct hostcache_layout *l,
			  const struct gpu_vram *v, uint64_t size, uint64_t t0, uint64_t read_bytes)
{
	struct devcache *dc = d->dc;
	struct dgpu *g = e->g;
	uint64_t now;

	/* The device copy has the host entry's layout: keep it for the tensor offsets. */
	e->l = *l;
	l->t = NULL;
	e->tensor_bytes = e->l.tensor_bytes;
	pthread_mutex_lock(&dc->lock);
	now = wd_now_ns();
	e->v = *v;
	e->size = size;
	e->resident = true;
	g->load_bytes += size;
	evict_insert(g->pol, e->key, size, now, false);
	if (now > t0)
		evict_set_rate(g->pol, e->key, (double)size * 1e9 / (double)(now - t0));
	set_state(d, e, WD_STATE_RESIDENT, 0);
	/* The load histogram of cuda:N and the component's last load (/metrics, `weightctl
	 * top`): one observation per device load, from the start of the copy to resident. */
	pthread_mutex_lock(&d->state_lock);
	metrics_note_load(d->reg, WD_TIER_CUDA((uint32_t)g->ordinal), now - t0);
	registry_set_last_load(d->reg, e->comp, WD_TIER_CUDA((uint32_t)g->ordinal), e->l.size,
			       now - t0, wd_wall_ns());
	pthread_mutex_unlock(&d->state_lock);
	for (uint32_t i = 0; i < e->n_waiters; i++) {
		e->waiters[i]->bytes += e->tensor_bytes;
		e->waiters[i]->read_bytes += read_bytes;
		req_done_one(d, e->waiters[i]);
	}
	e->n_waiters = 0;
	pthread_mutex_unlock(&dc->lock);
	log_info(MOD, "\"resident\" key=\"%s\" bytes=%" PRIu64 " read=%" PRIu64 " ms=%.1f",
		 e->key, size, read_bytes, (double)(now - t0) / 1e6);
}

/*
 * Disk -> VRAM through the staging ring, for a component the host budget cannot take: the
 * same layout a host entry would have, read from the files that w->src names. Device thread.
 */
static void stream_fill(struct daemon *d, struct dentry *e, struct dwork *w)
{
	struct devcache *dc = d->dc;
	struct dgpu *g = e->g;
	struct gpu_vram v = { .fd = -1 };
	struct staging_transfer *t = NULL;
	int *fds = NULL;
	char msg[WD_DATA_SLOT_SIZE] = "", why[STAGING_MSG_MAX] = "";
	uint64_t t0 = wd_now_ns(), gran, size, total = 0;
	uint32_t n = w->l.n_t;
	int ret = 0;

	if (!g->st) {
		snprintf(msg, sizeof(msg), "%.100s does not fit the host budget and cuda:%d has no "
			 "staging ring to stream it from disk", e->key, g->ordinal);
		ret = -ENOSPC;
		goto fail;
	}
	t = calloc(n ? n : 1, sizeof(*t));
	fds = calloc(n ? n : 1, sizeof(*fds));
	if (!t || !fds) {
		ret = -ENOMEM;
		goto fail;
	}
	for (uint32_t i = 0; i < n; i++)
		fds[i] = -1; /* the failure path closes every fds[i] >= 0 */
	for (uint32_t i = 0; i < n; i++) {
		/* Tensors of one file share its descriptor. */
		for (uint32_t k = 0; k < i && fds[i] < 0; k++)
			if (!strcmp(w->src[k].path, w->src[i].path))
				fds[i] = dup(fds[k]);
		if (fds[i] < 0) {
			struct stat sb;

			fds[i] = wd_open_regular(AT_FDCWD, w->src[i].path, 0, &sb);
			if (fds[i] < 0) {
				ret = fds[i];
				snprintf(msg, sizeof(msg), "%.200s: %s", w->src[i].path,
					 ret == -EINVAL ? wd_file_kind(sb.st_mode) : strerror(-ret));
				fds[i] = -1;
				goto fail;
			}
		}
	}
	gran = dc->ops->granularity(g->dev);
	size = gran ? (w->l.size + gran - 1) / gran * gran : w->l.size;
	ret = admit(d, g, e, size, msg);
	if (ret)
		goto fail;
	ret = alloc_vram(d, g, e, size, &v, msg);
	if (ret) {
		metrics_note_device_error(d->reg);
		pthread_mutex_lock(&dc->lock);
		evict_unreserve(g->pol, size);
		pthread_mutex_unlock(&dc->lock);
		goto fail;
	}
	for (uint32_t i = 0; i < n; i++) {
		t[i] = (struct staging_transfer){ .fd = fds[i], .name = w->src[i].path,
						  .off = w->src[i].off, .len = w->src[i].len,
						  .dst = v.dptr + w->l.t[i].off };
		total += w->src[i].len;
	}
	{
		struct progress_arg pa = { d, e };

		ret = staging_load(g->st, t, n, &(struct staging_call){
					   .progress = staging_progress, .arg = &pa },
				   why, sizeof(why));
	}
	if (ret) {
		/* Not counted as a device error: the file's reads fail here as well. */
		snprintf(msg, sizeof(msg), "%.50s: disk -> cuda:%d: %.160s", e->key, g->ordinal,
			 why);
		dc->ops->vram_free(g->dev, &v);
		pthread_mutex_lock(&dc->lock);
		evict_unreserve(g->pol, size);
		pthread_mutex_unlock(&dc->lock);
		goto fail;
	}
	for (uint32_t i = 0; i < n; i++)
		close(fds[i]);
	free(fds);
	free(t);
	log_info(MOD, "\"streamed from disk\" key=\"%s\" bytes=%" PRIu64, e->key, total);
	make_resident(d, e, &w->l, &v, size, t0, total);
	return;
fail:
	for (uint32_t i = 0; fds && i < n; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	free(fds);
	free(t);
	pthread_mutex_lock(&dc->lock);
	fail_entry(d, e, ret, msg);
	pthread_mutex_unlock(&dc->lock);
}

/*
 * Whether the device tier can use device @i at all: VMM allocations exported as POSIX fds
 * are how clients map its memory, and in EXCLUSIVE_PROCESS mode the daemon's context would
 * make every client's context retain fail. Returns 0, or -EOPNOTSUPP/-EBUSY with @why.
 */
static int usable(const struct gpu_ops *ops, struct gpu_dev *dev, int i, char *why,
		  size_t why_size)
{
	struct gpu_caps c;
	int ret = ops->caps(dev, &c, why, why_size);

	if (ret)
		return ret;
	if (!c.vmm || !c.posix_fd) {
		snprintf(why, why_size, "cuda:%d has no %s, which clients need to map its memory",
			 i, !c.vmm ? "virtual memory management (cuMemCreate)" :
			 "POSIX file descriptor handles (cuMemExportToShareableHandle)");
		return -EOPNOTSUPP;
	}
	if (c.compute_mode == GPU_COMPUTE_EXCLUSIVE_PROCESS ||
	    c.compute_mode == GPU_COMPUTE_PROHIBITED) {
		snprintf(why, why_size, "cuda:%d is in compute mode %s: %s (nvidia-smi -i %d -c "
			 "DEFAULT)", i, c.compute_mode == GPU_COMPUTE_PROHIBITED ? "PROHIBITED" :
			 "EXCLUSIVE_PROCESS", c.compute_mode == GPU_COMPUTE_PROHIBITED ?
			 "no process may use it" : "with the daemon holding it, no client could "
			 "open it to map its memory", i);
		return -EBUSY;
	}
	return 0;
}

static void open_devices(struct daemon *d)
{
	struct devcache *dc = d->dc;
	struct placement *pl = NULL;
	char why[160] = "";
	int n;

	dc->ops = gpu_ops_pick(why, sizeof(why));
	if (!dc->ops) {
		snprintf(dc->why, sizeof(dc->why), "%s", why[0] ? why : "no GPU implementation");
		return;
	}
	n = dc->ops->count(why, sizeof(why));
	if (n <= 0) {
		snprintf(dc->why, sizeof(dc->why), "%s", n < 0 ? why : "no GPU found");
		return;
	}
	if (n > GPU_MAX_DEVICES || n > (int)WD_TIER_MAX - 1)
		n = (int)WD_TIER_MAX - 1;
	if (strcmp(dc->ops->kind, "emulated"))
		placement_open_this_system(true, &pl);
	for (int i = 0; i < n; i++) {
		struct dgpu *g = &dc->g[dc->n];
		uint64_t pct = d->cfg.device_budget_pct ? d->cfg.device_budget_pct :
			       100u - DEVCACHE_DEFAULT_HEADROOM_PCT;
		char tier[16];
		void *saved = NULL;
		bool entered = false;
		int ret;

		memset(g, 0, sizeof(*g));
		g->ordinal = i;
		g->numa = -1;
		ret = dc->ops->open(i, &g->dev, why, sizeof(why));
		if (!ret)
			ret = usable(dc->ops, g->dev, i, why, sizeof(why));
		if (!ret)
			ret = dc->ops->info(g->dev, &g->info, why, sizeof(why));
		if (!ret)
			ret = dc->ops->ctx_enter(g->dev, &saved, why, sizeof(why));
		entered = !ret;
		if (!ret)
			ret = dc->ops->stream_create(g->dev, &g->stream, why, sizeof(why));
		if (ret) {
			log_warn(MOD, "\"GPU not used\" ordinal=%d err=%d why=\"%s\"", i, ret, why);
			if (entered)
				dc->ops->ctx_leave(g->dev, saved);
			if (g->dev)
				dc->ops->close(g->dev);
			/* Ordinals are tier numbers: a device that fails to open ends the list. */
			snprintf(dc->why, sizeof(dc->why), "cuda:%d not used: %s", i, why);
			break;
		}
		g->budget = d->cfg.device_budget ? d->cfg.device_budget :
			    g->info.total_bytes / 100 * pct;
		if (g->budget > g->info.total_bytes)
			g->budget = g->info.total_bytes;
		snprintf(tier, sizeof(tier), "cuda:%d", i);
		if (!g->budget || evict_create(&(struct evict_options){ .budget = g->budget,
									.tier = tier }, &g->pol)) {
			log_warn(MOD, "\"GPU not used: zero budget or no memory\" ordinal=%d", i);
			dc->ops->stream_destroy(g->dev, g->stream);
			dc->ops->ctx_leave(g->dev, saved);
			dc->ops->close(g->dev);
			snprintf(dc->why, sizeof(dc->why), "cuda:%d not used: zero budget", i);
			break;
		}
		if (pl && g->info.pci_bus_id[0]) {
			int node = placement_pci_node(pl, g->info.pci_bus_id, NULL);

			g->numa = node >= 0 ? node : -1;
		}
		ret = staging_create(dc->ops, g->dev, &(struct staging_options){ .node = g->numa },
				     &g->st, why, sizeof(why));
		if (ret) {
			g->st = NULL;
			log_warn(MOD, "\"no staging ring: host copies use one stream, components "
				 "larger than the host budget cannot be loaded\" ordinal=%d err=%d "
				 "why=\"%s\"", i, ret, why);
		}
		dc->ops->ctx_leave(g->dev, saved);
		dc->n++;
		log_info(MOD, "\"GPU ready\" tier=%s kind=%s name=\"%s\" pci=\"%s\" numa=%d "
			 "total=%" PRIu64 " budget=%" PRIu64, tier, dc->ops->kind, g->info.name,
			 g->info.pci_bus_id, g->numa, g->info.total_bytes, g->budget);
	}
	placement_close(pl);
	if (!dc->n)
		snprintf(dc->why, sizeof(dc->why), "no GPU could be opened (%s)", why);
}

static void *thread_main(void *arg)
{
	struct daemon *d = arg;
	struct devcache *dc = d->dc;
	struct dgpu *cur;
	void *saved = NULL;

	open_devices(d);
	pthread_mutex_lock(&dc->qlock);
	dc->ready = true;
	pthread_cond_broadcast(&dc->qcond);
	for (;;) {
		struct dwork *w;

		while (!dc->qhead && !dc->stop)
			pthread_cond_wait(&dc->qcond, &dc->qlock);
		w = dc->qhead;
		if (!w)
			break;
		dc->qhead = w->next;
		if (!dc->qhead)
			dc->qtail = NULL;
		pthread_mutex_unlock(&dc->qlock);
		{
			/* Every device operation of this item runs in its GPU's context. */
			struct dgpu *g = w->free_vram || w->trim ? w->g : w->e->g;
			char why[160];

			if (dc->ops->ctx_enter(g->dev, &saved, why, sizeof(why)))
				log_error(MOD, "\"cannot make the GPU's context current\" ordinal=%d "
					  "why=\"%s\"", g->ordinal, why);
			cur = g;
		}
		if (w->trim) {
			/* Even when stopping: the shard waits for it. */
			evict_finish(d, w->evicted);
			pthread_mutex_lock(&w->trim->lock);
			w->trim->done = true;
			pthread_cond_signal(&w->trim->cond);
			pthread_mutex_unlock(&w->trim->lock);
		} else if (w->free_vram)
			dc->ops->vram_free(w->g->dev, &w->v);
		else if (w->stream && !dc->stop)
			stream_fill(d, w->e, w);
		else if (dc->stop || w->stream)
			fill(d, w->e, -ECANCELED, "load: the daemon is shutting down", 0, NULL);
		else
			fill(d, w->e, w->err, w->msg, w->read_bytes, w->held ? &w->l : NULL);
		if (w->held && w->l.key[0]) {
			/* Not consumed (shutdown): give the hold back. */
			hostcache_unhold(d, &w->l);
		}
		free(w->l.t);
		hostcache_src_free(w->src, w->l.n_t);
		free(w);
		dc->ops->ctx_leave(cur->dev, saved);
		pthread_mutex_lock(&dc->qlock);
	}
	pthread_mutex_unlock(&dc->qlock);
	return NULL;
}

/* hostcache_then_fn: runs under the host cache's lock, so it only queues. */
static void host_ready(struct daemon *d, void *arg, int err, const char *msg,
		       uint64_t read_bytes, struct hostcache_layout *held)
{
	struct dwork *w = calloc(1, sizeof(*w));

	if (!w) {
		/* Under the cache lock, so the hold cannot be given back here: the host entry
		 * stays unevictable, and the device entry stays loading with its requesters
		 * unanswered. A failed allocation this small means the daemon is going down. */
		if (held)
			free(held->t);
		log_error(MOD, "\"device load lost: out of memory\"");
		return;
	}
	w->e = arg;
	w->err = err;
	w->read_bytes = read_bytes;
	if (held) {
		w->l = *held;
		w->held = true;
	}
	snprintf(w->msg, sizeof(w->msg), "%s", err && msg ? msg : "");
	queue_work(d->dc, w);
}

/* ---- lifecycle -------------------------------------------------------------------------- */

int devcache_create(struct daemon *d)
{
	struct devcache *dc = calloc(1, sizeof(*dc));
	int ret;

	if (!dc)
		return -ENOMEM;
	pthread_mutex_init(&dc->lock, NULL);
	pthread_mutex_init(&dc->qlock, NULL);
	pthread_cond_init(&dc->qcond, NULL);
	d->dc = dc;
	ret = pthread_create(&dc->thread, NULL, thread_main, d);
	if (ret)
		return -ret;
	dc->started = true;
	pthread_mutex_lock(&dc->qlock);
	while (!dc->ready)
		pthread_cond_wait(&dc->qcond, &dc->qlock);
	pthread_mutex_unlock(&dc->qlock);
	if (!dc->n)
		log_info(MOD, "\"GPU tier not available: host-only\" why=\"%s\"", dc->why);
	return 0;
}

unsigned int devcache_count(struct daemon *d)
{
	return d->dc ? d->dc->n : 0;
}

void devcache_stop(struct daemon *d)
{
	struct devcache *dc = d->dc;

	if (!dc || !dc->started)
		return;
	pthread_mutex_lock(&dc->qlock);
	dc->stop = true;
	pthread_cond_broadcast(&dc->qcond);
	pthread_mutex_unlock(&dc->qlock);
	pthread_join(dc->thread, NULL);
	dc->started = false;
}

void devcache_destroy(struct daemon *d)
{
	struct devcache *dc = d->dc;
	if (!dc)
		return;
	devcache_stop(d);
	for (unsigned int i = 0; i < dc->n; i++) {
		struct dgpu *g = &dc->g[i];
		void *saved = NULL;
		char why[160];

		/* On the caller's thread: each GPU's context around its own frees. */
		if (dc->ops->ctx_enter(g->dev, &saved, why, sizeof(why)))
			log_error(MOD, "\"cannot make the GPU's context current\" ordinal=%d "
				  "why=\"%s\"", g->ordinal, why);
		for (struct dentry **pp = &dc->entries; *pp;) {
			struct dentry *e = *pp;

			if (e->g != g) {
				pp = &e->next;
				continue;
			}
			*pp = e->next;
			if (e->resident && !e->owner)	/* an alias shares its owner's allocation */
				dc->ops->vram_free(e->g->dev, &e->v);
			free_dentry(e);
		}
		staging_destroy(g->st);
		dc->ops->stream_destroy(g->dev, g->stream);
		dc->ops->ctx_leave(g->dev, saved);
		evict_destroy(g->pol);
		dc->ops->close(g->dev);
	}
	while (dc->entries) {
		struct dentry *e = dc->entries;

		dc->entries = e->next;
		free_dentry(e);
	}
	pthread_cond_destroy(&dc->qcond);
	pthread_mutex_destroy(&dc->qlock);
	pthread_mutex_destroy(&dc->lock);
	free(dc);
	d->dc = NULL;
}

/* ---- shard side ------------------------------------------------------------------------- */

/* -ENOTSUP and the reason when @tier names no GPU of the tier. */
static int no_gpu(struct devcache *dc, uint32_t tier, const char *op, struct wd_cqe *cqe,
		  char *out)
{
	if (!dc->n)
		cqe->data_len = ops_msg(out, "%s: GPU tier not available: %s", op, dc->why);
	else
		cqe->data_len = ops_msg(out, "%s: no GPU cuda:%u (this host has %u, %s)", op,
					tier - 1, dc->n, dc->ops->kind);
	cqe->res = -ENOTSUP;
	return -ENOTSUP;
}

enum ops_outcome devcache_load(struct daemon *d, struct client *c, const struct wd_sqe *sqe,
			       const char *arg, uint16_t arg_len, uint32_t model,
			       struct wd_cqe *cqe, char *out)
{
	struct devcache *dc = d->dc;
	struct dgpu *g = gpu_of(dc, sqe->tier);
	uint32_t first, n, hits = 0;
	uint64_t bytes = 0, now = wd_now_ns();
	struct dform f;

	if (!g) {
		no_gpu(dc, sqe->tier, "load", cqe, out);
		return OPS_DONE;
	}
	if (parse_form(sqe, arg, arg_len, "load", &f, cqe, out))
		return OPS_DONE;
	if (model == WD_ID_NONE) {
		cqe->data_len = ops_msg(out, "load: a GPU tier needs the model by index");
		cqe->res = -EINVAL;
		return OPS_DONE;
	}
	targets(d, model, sqe->component, &first, &n);
	if (!n)
		return OPS_ASYNC;
	pthread_mutex_lock(&dc->lock);
	for (uint32_t cid = first; cid < first + n; cid++) {
		struct dentry *e = find(dc, g, cid, &f);

		if (!e || !e->resident)
			break;
		hits++;
	}
	if (hits == n) {
		for (uint32_t cid = first; cid < first + n; cid++) {
			struct dentry *e = find(dc, g, cid, &f);

			evict_lookup(g->pol, pkey(e), now);
			bytes += e->tensor_bytes;
		}
	}
	pthread_mutex_unlock(&dc->lock);
	if (hits != n)
		return OPS_ASYNC;
	if (sqe->flags & WD_SQE_F_PIN)
		take_pin(d, c, &(struct lease_pin){ .model = model, .component = sqe->component,
						    .tier = sqe->tier });
	cqe->res = 0;
	cqe->aux0 = bytes;
	return OPS_DONE;
}

/*
 * A component that can never fit the host budget is streamed disk -> VRAM instead of going
 * through the host cache: plans it (worker thread: the catalog) and queues the device thread.
 * Returns whether it took the component (failures are completed through the entry).
 */
static bool stream_instead(struct daemon *d, struct dentry *e, uint64_t nbytes,
			   uint32_t n_tensors)
{
	struct dwork *w;
	int ret;

	/* At most one alignment gap per tensor: the smallest extent it could need. */
	if (nbytes + (uint64_t)n_tensors * 64 <= hostcache_budget(d))
		return false;
	if (e->conv || e->sel) {
		char msg[WD_DATA_SLOT_SIZE];

		/* The conversion and the selection read the stored bytes from the host copy. */
		snprintf(msg, sizeof(msg), "load: %.100s does not fit the host budget, and a "
			 "converted or selected GPU copy is made from the host copy: load it "
			 "whole, as stored", e->key);
		pthread_mutex_lock(&d->dc->lock);
		fail_entry(d, e, -EFBIG, msg);
		pthread_mutex_unlock(&d->dc->lock);
		return true;
	}
	w = calloc(1, sizeof(*w));
	if (!w) {
		pthread_mutex_lock(&d->dc->lock);
		fail_entry(d, e, -ENOMEM, "load: out of memory");
		pthread_mutex_unlock(&d->dc->lock);
		return true;
	}
	ret = hostcache_plan_layout(d, e->model, e->comp, &w->l, &w->src, w->msg);
	if (ret) {
		pthread_mutex_lock(&d->dc->lock);
		fail_entry(d, e, ret, w->msg);
		pthread_mutex_unlock(&d->dc->lock);
		free(w);
		return true;
	}
	log_info(MOD, "\"larger than the host budget: streaming disk -> VRAM\" key=\"%s\" "
		 "bytes=%" PRIu64, e->key, w->l.size);
	w->e = e;
	w->stream = true;
	queue_work(d->dc, w);
	return true;
}

void devcache_load_job(struct daemon *d, struct job *j)
{
	struct devcache *dc = d->dc;
	struct dgpu *g = gpu_of(dc, j->sqe.tier);
	struct dreq *r = calloc(1, sizeof(*r));
	uint32_t first, n;
	uint64_t now = wd_now_ns();
	struct dform f;
	char fmsg[WD_DATA_SLOT_SIZE];
	struct wd_cqe fcqe = { 0 };
	/* Checked on the shard before the job was queued; parsed again for the payload's
	 * place in the job. */
	int fret = parse_form(&j->sqe, j->arg, j->arg_len, "load", &f, &fcqe, fmsg);

	if (!r || !g || fret) {
		struct wd_cqe cqe = { .user_data = j->sqe.user_data,
				      .res = !r ? -ENOMEM : !g ? -ENOTSUP : fret };

		free(r);
		daemon_post(d, j->c, &cqe, &j->spare, NULL, 0);
		return;
	}
	daemon_client_get(j->c);
	r->c = j->c;
	r->user_data = j->sqe.user_data;
	r->spare = j->spare;
	j->spare = NULL;
	r->flags = j->sqe.flags;
	r->pending = 1;
	r->pin = (struct lease_pin){ .model = j->sqe.model, .component = j->sqe.component,
				     .tier = j->sqe.tier };
	targets(d, j->sqe.model, j->sqe.component, &first, &n);
	if (!n)
		req_fail(r, -ENOENT, "load: the model has no component");
	for (uint32_t cid = first; cid < first + n; cid++) {
		struct dentry *e;
		struct wd_reg_model rm;
		struct wd_reg_component rc;
		bool start = false;
		int ret = 0;

		pthread_mutex_lock(&dc->lock);
		e = find(dc, g, cid, &f);
		if (e && e->resident) {
			evict_lookup(g->pol, pkey(e), now);
			r->bytes += e->tensor_bytes;
		} else if (e) {
			evict_lookup(g->pol, e->key, now);
			ret = add_waiter(e, r);
		} else if ((e = calloc(1, sizeof(*e)))) {
			evict_lookup(g->pol, "", now);	/* a miss */
			e->g = g;
			e->model = j->sqe.model;
			e->comp = cid;
			e->conv = f.conv;
			e->sel = f.sel;
			e->sel_hash = f.sel_hash;
			e->sel_len = f.len;
			if (f.len)
				memcpy(e->sel_arg, f.payload, f.len);
			e->v.fd = -1;
			if (registry_read_model(&d->view, e->model, &rm) ||
			    registry_read_component(&d->view, cid, &rc))
				ret = -ENOENT;
			snprintf(e->key, sizeof(e->key), "cuda:%d/%.150s%s%.150s%s", g->ordinal,
				 ret ? "?" : rm.name, !ret && rc.name[0] ? "/" : "",
				 ret ? "" : rc.name, f.conv == GPU_DTYPE_F16 ? "@F16" :
				 f.conv == GPU_DTYPE_BF16 ? "@BF16" : "");
			if (f.sel) {
				size_t kl = strlen(e->key);

				snprintf(e->key + kl, sizeof(e->key) - kl, "#sel:%016" PRIx64,
					 f.sel_hash);
			}
			if (!ret)
				ret = add_waiter(e, r);
			if (ret) {
				free_dentry(e);
			} else {
				e->next = dc->entries;
				dc->entries = e;
				start = true;
			}
		} else {
			ret = -ENOMEM;
		}
		pthread_mutex_unlock(&dc->lock);
		if (ret) {
			pthread_mutex_lock(&dc->lock);
			req_fail(r, ret, NULL);
			pthread_mutex_unlock(&dc->lock);
			break;
		}
		if (!start)
			continue;
		set_state(d, e, WD_STATE_LOADING, 0);
		log_info(MOD, "\"device load started\" key=\"%s\"", e->key);
		if (stream_instead(d, e, rc.nbytes, rc.n_tensors))
			continue;
		ret = hostcache_load_for(d, j->c, r->user_data, r->flags, e->model, cid,
					 e->g->numa, host_ready, e);
		if (ret) {
			pthread_mutex_lock(&dc->lock);
			fail_entry(d, e, ret, "load: out of memory");
			pthread_mutex_unlock(&dc->lock);
		}
	}
	pthread_mutex_lock(&dc->lock);
	req_done_one(d, r);
	pthread_mutex_unlock(&dc->lock);
}

/* sendmsg() that never blocks the shard: a client that does not read its socket fails. */
static int send_nb(int sock, const void *buf, size_t len, int fd)
{
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t n;

	if (fd >= 0) {
		struct cmsghdr *cm;

		memset(cbuf, 0, sizeof(cbuf));
		mh.msg_control = cbuf;
		mh.msg_controllen = sizeof(cbuf);
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	}
	do
		n = sendmsg(sock, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	return (size_t)n == len ? 0 : -EMSGSIZE;
}

/* Sends @e's fd and tensor table for @token. Returns the number of messages or -errno. */
static int send_table(int sock, const struct dentry *e, uint64_t token, uint32_t *n_tensors)
{
	size_t cap = sizeof(struct wd_devmap_msg) + WD_DEVMAP_PER_MSG *
		     sizeof(struct wd_devmap_tensor);
	uint8_t *buf = malloc(cap);
	uint32_t total = 0, sent = 0, i = 0;
	int msgs = 0, ret = 0;

	if (!buf)
		return -ENOMEM;
	for (uint32_t k = 0; k < e->l.n_t; k++)
		total += e->l.t[k].tid != NO_TID;
	do {
		struct wd_devmap_msg *h = (struct wd_devmap_msg *)buf;
		struct wd_devmap_tensor *t = (struct wd_devmap_tensor *)(h + 1);
		uint32_t n = 0;

		for (; i < e->l.n_t && n < WD_DEVMAP_PER_MSG; i++) {
			const struct hostcache_tensor *ht = &e->l.t[i];

			if (ht->tid == NO_TID)
				continue;
			t[n++] = (struct wd_devmap_tensor){ .tensor = ht->tid, .dtype = ht->dtype,
							    .offset = ht->off, .nbytes = ht->nbytes };
		}
		*h = (struct wd_devmap_msg){ .magic = WD_DEVMAP_MAGIC, .n = n, .token = token,
					     .size = e->v.size, .first = sent, .total = total };
		ret = send_nb(sock, buf, sizeof(*h) + n * sizeof(*t), msgs ? -1 : e->v.fd);
		sent += n;
		msgs++;
	} while (!ret && sent < total);
	free(buf);
	*n_tensors = total;
	return ret ? ret : msgs;
}

void devcache_map(struct daemon *d, struct client *c, const struct wd_sqe *sqe,
		  const char *arg, uint16_t arg_len, uint32_t model, struct wd_cqe *cqe, char *out)
{
	struct devcache *dc = d->dc;
	struct dgpu *g = gpu_of(dc, sqe->tier);
	struct lease_pin p = { .model = model, .component = sqe->component, .tier = sqe->tier };
	struct wd_devmap_reply rep = { 0 };
	struct dentry *e;
	uint32_t first, n;
	struct dform f;
	int ret, msgs;

	if (sqe->tier == WD_TIER_HOST) {
		cqe->data_len = ops_msg(out, "device_map: the host tier is mapped at attach; name a "
					"GPU tier");
		cqe->res = -EINVAL;
		return;
	}
	if (!g) {
		no_gpu(dc, sqe->tier, "device_map", cqe, out);
		return;
	}
	if (sqe->flags) {
		cqe->data_len = ops_msg(out, "device_map: flags must be 0");
		cqe->res = -EINVAL;
		return;
	}
	if (parse_form(sqe, arg, arg_len, "device_map", &f, cqe, out))
		return;
	targets(d, model, sqe->component, &first, &n);
	if (n != 1) {
		cqe->data_len = ops_msg(out, "device_map: name one component (the model has %u)", n);
		cqe->res = -EINVAL;
		return;
	}
	p.component = first;
	pthread_mutex_lock(&dc->lock);
	e = find(dc, g, first, &f);
	if (!e || !e->resident) {
		pthread_mutex_unlock(&dc->lock);
		cqe->data_len = ops_msg(out, "device_map: component %u is not resident on cuda:%d "
					"in that form (LOAD it there first)", first, g->ordinal);
		cqe->res = -ENODATA;
		return;
	}
	pthread_mutex_lock(&d->state_lock);
	ret = c->gone ? -ECONNRESET : lease_pin(&d->leases, &c->lease, &p);
	if (ret == 0) {
		registry_set_model_pins(d->reg, model, lease_model_pins(&d->leases, model));
		registry_counter_add(d->reg, WD_CTR_PINS, 1);
	}
	pthread_mutex_unlock(&d->state_lock);
	if (ret < 0) {
		pthread_mutex_unlock(&dc->lock);
		cqe->res = ret;
		return;
	}
	msgs = send_table(c->fd, e, ++dc->token, &rep.n_tensors);
	if (msgs < 0) {
		if (ret == 0) {
			pthread_mutex_lock(&d->state_lock);
			if (!lease_unpin(&d->leases, &c->lease, &p)) {
				registry_set_model_pins(d->reg, model,
							lease_model_pins(&d->leases, model));
				registry_counter_add(d->reg, WD_CTR_PINS, -1);
			}
			pthread_mutex_unlock(&d->state_lock);
		}
		pthread_mutex_unlock(&dc->lock);
		cqe->data_len = ops_msg(out, "device_map: cannot send the allocation on the socket: "
					"%s", strerror(-msgs));
		cqe->res = msgs;
		return;
	}
	sync_pins(d);
	rep.ordinal = (uint32_t)g->ordinal;
	rep.kind = strcmp(dc->ops->kind, "emulated") ? WD_DEVICE_KIND_CUDA :
		   WD_DEVICE_KIND_EMULATED;
	rep.n_msgs = (uint32_t)msgs;
	rep.component = first;
	snprintf(rep.device_id, sizeof(rep.device_id), "%s", g->info.id);
	cqe->aux0 = e->v.size;
	cqe->aux1 = dc->token;
	pthread_mutex_unlock(&dc->lock);
	memcpy(out, &rep, sizeof(rep));
	cqe->data_len = sizeof(rep);
	cqe->res = 0;
}

/*
 * Owner @e (unlinked, its policy entry removed) goes while other components still share its
 * allocation: one of its aliases becomes the owner (the allocation, the policy entry under
 * its own key; the others follow it). The pins of the aliases are applied again to the new
 * key by the caller's sync_pins(). Under dc->lock.
 */
static void hand_on(struct daemon *d, struct dentry *e)
{
	struct devcache *dc = d->dc;
	struct dentry *a = NULL;

	for (struct dentry *x = dc->entries; x; x = x->next) {
		if (x->owner != e)
			continue;
		x->pins = 0;	/* those were applied to @e's key, which is gone */
		if (!a) {
			a = x;
			a->owner = NULL;
			a->n_aliases = e->n_aliases - 1;
		} else {
			x->owner = a;
		}
	}
	if (!a)
		return;
	evict_insert(a->g->pol, a->key, a->size, wd_now_ns(), false);
	log_info(MOD, "\"unloaded: allocation handed on\" key=\"%s\" to=\"%s\" bytes=%" PRIu64,
		 e->key, a->key, a->size);
}

int64_t devcache_unload(struct daemon *d, uint32_t tier, uint32_t model, uint32_t comp,
			char *out, uint16_t *out_len)
{
	struct devcache *dc = d->dc;
	struct dgpu *g = gpu_of(dc, tier);
	uint32_t first, n;
	int64_t freed = 0;

	if (!g)
		return 0;
	targets(d, model, comp, &first, &n);
	pthread_mutex_lock(&dc->lock);
	sync_pins(d);
	for (struct dentry *e = dc->entries; e; e = e->next) {
		if (e->g != g || e->comp < first || e->comp >= first + n)
			continue;
		if (!e->resident || e->pins) {
			pthread_mutex_unlock(&dc->lock);
			*out_len = ops_msg(out, "unload: %s is %s; retry later", e->key,
					   e->resident ? "mapped or pinned by a client" : "loading");
			return -EBUSY;
		}
	}
	/* Aliases first: an owner whose aliases all go too is then freed, not handed on. */
	for (struct dentry *e = dc->entries, *next; e; e = next) {
		next = e->next;
		if (e->g != g || e->comp < first || e->comp >= first + n || !e->owner)
			continue;
		e->owner->n_aliases--;
		unlink_dentry(dc, e);
		set_state(d, e, WD_STATE_ABSENT, 0);
		log_info(MOD, "\"unloaded\" key=\"%s\" shared=\"%s\"", e->key, e->owner->key);
		free_dentry(e);
	}
	for (struct dentry *e = dc->entries, *next; e; e = next) {
		next = e->next;
		if (e->g != g || e->comp < first || e->comp >= first + n)
			continue;
		unlink_dentry(dc, e);
		set_state(d, e, WD_STATE_ABSENT, 0);
		evict_remove(g->pol, e->key, false);
		if (e->n_aliases) {
			hand_on(d, e);
			/* The list changed: start over (entries in range are only owners now). */
			next = dc->entries;
		} else {
			freed += (int64_t)e->size;
			log_info(MOD, "\"unloaded\" key=\"%s\" bytes=%" PRIu64, e->key, e->size);
			free_later(dc, g, &e->v);
		}
		free_dentry(e);
	}
	sync_pins(d);
	pthread_mutex_unlock(&dc->lock);
	return freed;
}

/* How host -> VRAM copies run on @g: the staging ring's state, for DEVICES. */
static void copy_path(const struct dgpu *g, struct wd_device_info *v)
{
	struct staging_stats st;

	if (!g->st) {
		v->flags = WD_DEVICE_F_NO_STAGING;
		return;
	}
	staging_get_stats(g->st, &st);
	if (!st.slots_locked) {
		v->flags |= WD_DEVICE_F_SLOTS_PAGEABLE;
		v->locked_err = (int16_t)st.slots_err;
	}
	if (!st.fixed_buffers) {
		v->flags |= WD_DEVICE_F_NO_FIXED_BUFFERS;
		v->fixed_err = (int16_t)st.fixed_buffers_err;
	}
	if (st.node_err)
		v->flags |= WD_DEVICE_F_OFF_NODE;
}

uint32_t devcache_list(struct daemon *d, uint32_t start, void *out, uint16_t *n_out,
		       uint16_t *text_len)
{
	struct devcache *dc = d->dc;
	struct wd_device_info *v = out;
	uint16_t k = 0;

	*n_out = 0;
	*text_len = 0;
	if (!dc->n) {
		*text_len = ops_msg(out, "%s", dc->why);
		return 0;
	}
	pthread_mutex_lock(&dc->lock);
	sync_pins(d);
	for (uint32_t i = start; i < dc->n && k < WD_DEVICES_PER_REPLY; i++) {
		const struct dgpu *g = &dc->g[i];
		struct evict_counters ec;
		uint32_t entries = 0;

		for (struct dentry *e = dc->entries; e; e = e->next)
			entries += e->g == g;
		evict_get_counters(g->pol, &ec);
		memset(&v[k], 0, sizeof(v[k]));
		v[k].ordinal = (uint32_t)g->ordinal;
		v[k].kind = strcmp(dc->ops->kind, "emulated") ? WD_DEVICE_KIND_CUDA :
			    WD_DEVICE_KIND_EMULATED;
		v[k].numa_node = g->numa;
		v[k].entries = entries;
		v[k].total_bytes = g->info.total_bytes;
		v[k].budget = g->budget;
		v[k].used = evict_used(g->pol) + evict_reserved(g->pol);
		v[k].hits = ec.hits;
		v[k].misses = ec.misses;
		v[k].evictions = ec.evictions;
		v[k].evict_bytes = ec.evict_bytes;
		v[k].load_bytes = g->load_bytes;
		snprintf(v[k].name, sizeof(v[k].name), "%s", g->info.name);
		copy_path(g, &v[k]);
		k++;
	}
	pthread_mutex_unlock(&dc->lock);
	*n_out = k;
	return dc->n;
}

int64_t devcache_trim(struct daemon *d, uint32_t tier, uint64_t bytes, char *out,
		      uint16_t *out_len)
{
	struct devcache *dc = d->dc;
	struct dgpu *g = dc ? gpu_of(dc, tier) : NULL;
	struct trim_wait tw = { .done = false };
	char key[EVICT_KEY_MAX];
	struct dentry *later = NULL;
	struct dwork *w;
	uint64_t now = wd_now_ns();
	int64_t freed = 0;
	unsigned int n = 0;

	if (!g) {
		*out_len = ops_msg(out, "device_trim: no GPU tier %u (%u GPUs%s%s)", tier,
				   dc ? dc->n : 0, dc && !dc->n ? ": " : "", dc && !dc->n ? dc->why : "");
		return -ENOTSUP;
	}
	w = calloc(1, sizeof(*w));
	if (!w) {
		*out_len = ops_msg(out, "device_trim: out of memory");
		return -ENOMEM;
	}
	pthread_mutex_lock(&dc->lock);
	sync_pins(d);
	while ((uint64_t)freed < bytes && !evict_next_victim(g->pol, now, key)) {
		struct dentry *x = find_key(dc, g, key);

		if (x) {
			freed += (int64_t)x->size;
			evict_detach(d, x, &later);
			n++;
		} else {
			evict_remove(g->pol, key, true);
		}
	}
	pthread_mutex_unlock(&dc->lock);
	if (!later) {
		free(w);
		return 0;
	}
	/* Demotion copies and frees run on the device thread, in the GPU's context; the reply
	 * waits for them, so that the client finds the room free when it retries. */
	pthread_mutex_init(&tw.lock, NULL);
	pthread_cond_init(&tw.cond, NULL);
	w->trim = &tw;
	w->g = g;
	w->evicted = later;
	queue_work(dc, w);
	pthread_mutex_lock(&tw.lock);
	while (!tw.done)
		pthread_cond_wait(&tw.cond, &tw.lock);
	pthread_mutex_unlock(&tw.lock);
	pthread_cond_destroy(&tw.cond);
	pthread_mutex_destroy(&tw.lock);
	log_info(MOD, "\"trimmed\" tier=cuda:%d asked=%" PRIu64 " freed=%" PRId64 " entries=%u",
		 g->ordinal, bytes, freed, n);
	return freed;
}

uint64_t devcache_bytes(struct daemon *d)
{
	struct devcache *dc = d->dc;
	uint64_t n = 0;

	if (!dc)
		return 0;
	pthread_mutex_lock(&dc->lock);
	for (unsigned int i = 0; i < dc->n; i++)
		n += evict_used(dc->g[i].pol);
	pthread_mutex_unlock(&dc->lock);
	return n;
}
