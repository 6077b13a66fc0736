/*
 * What the files of the device tier share (core/tier/dev*.c), and no one else: its structs,
 * its constants and the functions one of its files offers the others. The model, the threads
 * and the flow of a load are described in core/tier/devcache.h; the locks at struct devcache
 * below.
 *
 *   devcache.c     the tier's life: --device-budget, create/stop/destroy
 *   dev_open.c     opening the GPUs, on the device thread
 *   dev_entry.c    the entry table and the requests waiting on its loads
 *   dev_form.c     the layout of a form on the GPU (converted, selected)
 *   dev_thread.c   the device thread and its queue
 *   dev_load.c     LOAD: the shard's hit and the worker's part
 *   dev_fill.c     filling an entry on the device thread, and making it resident
 *   dev_copy.c     host -> VRAM copies, with conversion on the GPU
 *   dev_evict.c    admission, VRAM allocation, eviction and demotion
 *   dev_alias.c    one copy per content: aliases of a resident entry
 *   dev_share.c    DEVICE_MAP, DEVICES, DEVICE_TRIM and the bytes resident
 *   dev_unload.c   UNLOAD on a GPU tier
 */
#ifndef WD_CORE_DEV_INTERNAL_H
#define WD_CORE_DEV_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/policy/evict.h"
#include "core/tier/devcache.h"
#include "core/tier/hostcache.h"
#include "gpu/device.h"

#define MOD "devcache"
#define COPY_CHUNK (64ull << 20)	/* bytes per copy between progress reports */
#define MEMINFO_TRIES 100		/* mem_info re-reads after an eviction, 10 ms apart */
#define SCRATCH_MAX (8ull << 20)	/* F32 bytes staged in VRAM per conversion step */
#define TENSOR_ALIGN 64u		/* tensor offsets in a converted copy, as the host's */
#define NO_TID UINT32_MAX

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

struct dentry {
	struct dentry *next;
	struct dgpu *g;
	uint32_t model, comp;
	uint8_t conv;			/* 0: as stored; else F32 tensors as this dtype (F16,
					 * BF16): a separate entry, converted on the GPU */
	uint8_t sel;			/* enum tier_sel; TIER_SEL_PREFIX/NAMES: only the tensors
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
					 * dev_pkey(): an alias's pins hold its owner */
	struct dentry *owner;		/* NULL, or the resident entry of another component whose
					 * allocation this one shares: the same host entry (same
					 * files, hostcache_layout.id) in the same form, stored on
					 * the GPU once. An alias has no VRAM and no policy entry
					 * of its own; its table has its own tensor ids. */
	uint32_t n_aliases;		/* entries whose owner this is */
	struct tier_request **waiters;
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
	struct dentry *evicted;		/* trim: entries detached by dev_evict_detach(), to finish */
	struct trim_wait *trim;		/* trim: signalled once they are finished */
};

/* A DEVICE_TRIM waiting on its shard for the device thread to finish its evictions. */
struct trim_wait {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool done;
};

/*
 * The tier. Who touches what, and under which lock:
 *   @lock      the entry list and every entry's fields once it is linked (resident, pins,
 *              owner, n_aliases, waiters), the policies (g[].pol), g[].load_bytes and
 *              @token. Taken on the shards (LOAD hits, DEVICE_MAP, DEVICES, DEVICE_TRIM,
 *              UNLOAD), on the worker (devcache_load_job()) and on the device thread, never
 *              across a copy: an eviction detaches its victims under it and demotes them after
 *              dropping it (dev_evict.c). A loading entry's @v, @l and @size are the device
 *              thread's until make_resident() (dev_fill.c) or dev_alias_resident() publishes
 *              them under it.
 *   @qlock     the queue (@qhead, @qtail), @stop and @ready; @qcond signals both new work
 *              and @ready. Never held while taking another lock.
 *   @ops, @why, @n and g[] (but pol and load_bytes): written by the device thread while it
 *              opens the devices, before it sets @ready under @qlock; read-only afterwards.
 *   @thread, @started: the daemon's thread (create, stop, destroy).
 *   @env, @cfg, @hc: set at create, read-only afterwards; what @env points to has the
 *              locking of core/tier/tier.h (the registry and the leases under *state_lock).
 * Lock order: @lock, then *env.state_lock (the registry and the lease table:
 * dev_set_state(), dev_sync_pins(), tier_take_pin()); @lock, then what the sink's post and
 * client_put take (a client's completion list: dev_req_done_one()); @lock, then @qlock
 * (dev_free_later()). The sink's model_comps and load_done are called with @lock at most,
 * never with state_lock. The host cache's lock comes after @lock in the daemon's order, but
 * the tier calls the host tier (hostcache_*) only without @lock held, and the host tier never
 * takes @lock: its completion callback, dev_host_ready(), runs under the host cache's lock and
 * only takes @qlock. A trim_wait's lock is taken alone.
 */
struct devcache {
	pthread_mutex_t lock;		/* entries, policies, pins */
	const struct gpu_ops *ops;
	char why[200];			/* why there is no GPU tier */
	unsigned int n;
	struct dgpu g[GPU_MAX_DEVICES];
	struct dentry *entries;
	uint64_t token;			/* the last DEVICE_MAP's token */

	pthread_t thread;		/* the device thread (dev_thread.c) */
	bool started;
	pthread_mutex_t qlock;
	pthread_cond_t qcond;
	struct dwork *qhead, *qtail;
	bool stop;
	bool ready;			/* the thread finished opening the devices */

	struct tier_env env;		/* the daemon's interface (core/tier/tier.h) */
	struct devcache_config cfg;
	struct hostcache *hc;		/* the host tier it loads through and demotes to */
};

/* What dev_staging_progress() reports to: the entry being filled. */
struct progress_arg {
	struct devcache *dc;
	struct dentry *e;
};

/* The GPU that tier @tier names (cuda:N is tier N + 1), or NULL. */
static inline struct dgpu *dev_gpu_of(struct devcache *dc, uint32_t tier)
{
	if (tier == WD_TIER_HOST || tier - 1 >= dc->n)
		return NULL;
	return &dc->g[tier - 1];
}

/* The policy key that stands for @e: its owner's for an alias. */
static inline const char *dev_pkey(const struct dentry *e)
{
	return e->owner ? e->owner->key : e->key;
}

/* ---- dev_entry.c: entries and requests ----------------------------------------------------- */

struct dentry *dev_find(struct devcache *dc, const struct dgpu *g, uint32_t comp,
			const struct tier_form *f);
struct dentry *dev_find_key(struct devcache *dc, const struct dgpu *g, const char *key);
void dev_set_state(struct devcache *dc, const struct dentry *e, uint32_t state, int err);
void dev_sync_pins(struct devcache *dc);
void dev_free_entry(struct dentry *e);
void dev_unlink_entry(struct devcache *dc, struct dentry *e);
void dev_req_done_one(struct devcache *dc, struct tier_request *r);
int dev_add_waiter(struct dentry *e, struct tier_request *r);
void dev_fail_entry(struct devcache *dc, struct dentry *e, int err, const char *msg);
int dev_no_gpu(struct devcache *dc, uint32_t tier, const char *op, struct wd_cqe *cqe,
	       char *out);

/* ---- dev_form.c: the layouts of forms ------------------------------------------------------- */

bool dev_converts(const struct hostcache_tensor *t, uint8_t conv);
int dev_convert_layout(const struct hostcache_layout *l, uint8_t conv,
		       struct hostcache_layout *out, uint64_t *scratch_off, uint64_t *scratch);
int dev_select_layout(struct devcache *dc, const struct dentry *e,
		      const struct hostcache_layout *l, struct hostcache_layout *out, char *msg);

/* ---- dev_thread.c: the device thread and its queue ------------------------------------------ */

void dev_queue_work(struct devcache *dc, struct dwork *w);
void dev_free_later(struct devcache *dc, struct dgpu *g, struct gpu_vram *v);
void *dev_thread_main(void *arg);
void dev_host_ready(void *ctx, void *arg, int err, const char *msg,
		    uint64_t read_bytes, struct hostcache_layout *held);

/* ---- dev_open.c: opening the GPUs (device thread) -------------------------------------------- */

void dev_open_devices(struct devcache *dc);

/* ---- dev_fill.c: filling an entry (device thread) ------------------------------------------- */

void dev_fill(struct devcache *dc, struct dentry *e, int err, const char *hmsg,
	      uint64_t read_bytes, struct hostcache_layout *held);
void dev_stream_fill(struct devcache *dc, struct dentry *e, struct dwork *w);

/* ---- dev_copy.c: host -> VRAM (device thread) ----------------------------------------------- */

void dev_staging_progress(void *arg, uint64_t done, uint64_t total);
int dev_copy_in(struct devcache *dc, struct dentry *e, uint64_t dptr, const uint8_t *src,
		uint64_t n, char *msg);
int dev_convert_in(struct devcache *dc, struct dentry *e, const struct gpu_vram *v,
		   const struct hostcache_layout *l, const struct hostcache_layout *cl,
		   uint64_t scratch_off, uint64_t scratch, char *msg);

/* ---- dev_evict.c: admission, allocation, eviction and demotion ------------------------------ */

void dev_evict_detach(struct devcache *dc, struct dentry *e, struct dentry **later);
void dev_evict_finish(struct devcache *dc, struct dentry *list);
/*
 * Under dc->lock: detaches unpinned, unmapped entries of @g (pins synced first), highest
 * eviction score first, until @bytes were detached or none is left, onto *@later for
 * dev_evict_finish(). Returns the bytes detached; *@n (if not NULL) counts the entries.
 */
int64_t dev_evict_until(struct devcache *dc, struct dgpu *g, uint64_t bytes,
			struct dentry **later, unsigned int *n);
int dev_admit(struct devcache *dc, struct dgpu *g, struct dentry *e, uint64_t bytes, char *msg);
int dev_alloc_vram(struct devcache *dc, struct dgpu *g, struct dentry *e, uint64_t size,
		   struct gpu_vram *v, char *msg);

/* ---- dev_alias.c: one copy per content ------------------------------------------------------ */

struct dentry *dev_find_twin(struct devcache *dc, const struct dentry *e, uint64_t id);
void dev_alias_resident(struct devcache *dc, struct dentry *e, struct dentry *owner,
			struct hostcache_layout *l, uint64_t read_bytes);
void dev_hand_on(struct devcache *dc, struct dentry *e);

#endif
