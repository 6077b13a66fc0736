/*
 * The daemon's device tier: one cache per GPU (cuda:N), filled from the host tier, shared
 * with clients as exported VRAM allocations, and kept within a per-GPU budget by the same
 * eviction policy as the host cache (core/policy/evict.h, one instance per GPU).
 *
 * Everything goes through struct gpu_ops (gpu/device.h), so the same code runs on a CUDA GPU
 * and on the emulated device ($WEIGHTD_GPU_EMULATE). With neither, the daemon is host-only:
 * it logs why once, and LOAD/DEVICE_MAP on a GPU tier answer -ENOTSUP with that reason
 * ("load: GPU tier not available: no CUDA driver (...)").
 *
 * A device entry is one component on one GPU in one form, in one VRAM allocation: as stored
 * (all tensors, the same layout as the host cache entry it was copied from: a tensor's device
 * address is the allocation's base plus its offset in the host entry), or converted (F32
 * tensors as F16/BF16, converted by the GPU after a pinned copy of the stored bytes, in a
 * layout of its own). A selection (WD_LOAD_PREFIX/NAMES) is a separate entry as well, keyed
 * "...#sel:<XXH3 of the payload>": only the selected tensors, copied one by one out of the
 * whole stored-form host entry into a compact layout of their own (converted too when the
 * form asks for it); selections and converted entries are never demoted.
 *
 * One copy per content: an entry whose host entry (struct hostcache_layout.id: the same files,
 * or byte-identical ones the host tier bound together) is already resident on the GPU in the
 * same form for another component becomes an alias of it: no copy of its own, the owner's
 * allocation with its own tensor ids. Its pins count on the owner's policy entry, so a pin of
 * either keeps the allocation; evicting the owner drops its aliases; unloading the owner
 * hands the allocation on to an alias.
 *
 * Load path (LOAD with tier cuda:N):
 *   shard   devcache_load() (dev_load.c): validates the tier, answers a hit inline when
 *           every target component is resident on the GPU, else the request goes to the
 *           worker.
 *   worker  devcache_load_job() (dev_load.c): per component, joins a device load already
 *           running or starts one: the component is first made resident in the host cache
 *           through the host tier's own load (hostcache_load_for(): coalescing, admission,
 *           progress completions to the requester come with it).
 *   device  the tier's thread (dev_thread.c, the only thread that calls gpu_ops after
 *           start; dev_fill.c): holds the host entry (hostcache_hold()), admits the
 *           allocation against the GPU's budget (refusing with -EFBIG what can never fit,
 *           else evicting unpinned, unmapped entries by score and re-reading mem_info,
 *           because frees land late), allocates (an allocation that fails for lack of memory
 *           evicts and is retried once: core/policy/recovery.h), copies host -> VRAM through
 *           the GPU's staging ring or on its stream (converting on the GPU for a converted
 *           form), reports the load (tier_sink.load_done: the cuda:N histogram), and
 *           completes the requesters.
 *
 * Sharing (DEVICE_MAP, docs/protocol.md): the client gets the allocation's fd on its attach
 * socket and a table of tensor offsets; the mapping is a lease pin on (model, component,
 * cuda:N), so a client that dies releases it. An entry with any pin covering it is never
 * evicted or unloaded.
 *
 * Eviction demotes: the host copy normally still is resident (the device copy was made from
 * it); when it is not, a host extent is reserved if the host budget has room without evicting,
 * and only then are the bytes copied back device -> host into it, so that the next promotion
 * is a host -> device copy. Converted and selected entries are dropped (the host keeps the
 * stored form).
 *
 * The tier takes its own struct and the daemon's narrow interface (struct tier_env and its
 * sink, core/tier/tier.h): the registry, the view, state_lock, the lease table, and the
 * callbacks that post completions, hold clients and report loads and device errors. It
 * shares with the host tier the decoding of a form (tier_parse_form()), the pins and the
 * request bookkeeping (struct tier_request).
 *
 * Locking: the tier's lock comes before state_lock and the locks the sink's callbacks take,
 * and is never held together with the host cache's lock: the tier calls the host tier only
 * without it, and the host tier's completion callback only queues work for the device
 * thread, under a separate queue lock. What each lock guards, and the tier's order, are at
 * struct devcache (core/tier/dev_internal.h); the complete order of the daemon and both
 * tiers is in core/daemon/internal.h. An eviction demotes its victims after dropping the
 * lock (core/tier/dev_evict.c), so that the shards' DEVICE_MAP, DEVICES and LOAD hits do not
 * wait on the device -> host copy.
 *
 * Files: devcache.c (life), dev_entry.c, dev_form.c, dev_thread.c, dev_load.c, dev_fill.c,
 * dev_copy.c, dev_evict.c, dev_alias.c, dev_share.c, dev_unload.c; core/tier/dev_internal.h
 * says what each holds.
 */
#ifndef WD_CORE_DEVCACHE_H
#define WD_CORE_DEVCACHE_H

#include <stdbool.h>
#include <stdint.h>

#include "core/tier/tier.h"
#include "shm/abi.h"

struct devcache;
struct hostcache;

/* Headroom left to other processes by the default --device-budget (percent of the total). */
#define DEVCACHE_DEFAULT_HEADROOM_PCT 10u

/* The device tier's configuration (--device-budget). */
struct devcache_config {
	uint64_t budget;		/* bytes per GPU; 0: @budget_pct */
	unsigned int budget_pct;	/* percent of each GPU's memory; 0: 100 minus
					 * DEVCACHE_DEFAULT_HEADROOM_PCT */
};

/*
 * Parses a --device-budget value: bytes with an optional K/M/G/T suffix, or a percentage of
 * each GPU's memory ("90%", 1..100). Sets exactly one of *@bytes and *@pct. Returns 0 or
 * -EINVAL (-ERANGE on overflow).
 */
int devcache_parse_budget(const char *s, uint64_t *bytes, unsigned int *pct);

/*
 * Creates the device tier over host tier @hc, with the daemon's interface @env (copied:
 * core/tier/tier.h) and @cfg: picks the gpu_ops (gpu_ops_pick), opens every device on the
 * tier's thread, reads its info, sets its budget (cfg->budget bytes, or cfg->budget_pct
 * percent of its memory; default: total minus DEVCACHE_DEFAULT_HEADROOM_PCT percent) and
 * makes its stream, its eviction policy and its pinned staging ring (the host cache arena
 * itself is never page-locked). Call it after hostcache_create(). No GPU is not an error:
 * the tier is then empty and says why. Returns 0 and sets *@out, or -ENOMEM / the error of
 * pthread_create (*@out is then set all the same, for devcache_destroy()).
 */
int devcache_create(const struct tier_env *env, const struct devcache_config *cfg,
		    struct hostcache *hc, struct devcache **out);

/* Fails every device load still waiting (-ECANCELED) and stops the thread. After
 * hostcache_stop(), whose cancelled loads it completes. NULL @dc is ignored. */
void devcache_stop(struct devcache *dc);

/* Frees the VRAM, the staging rings and the streams, and closes the devices; NULL @dc is
 * ignored. Before hostcache_destroy(). */
void devcache_destroy(struct devcache *dc);

/* Number of GPUs in the tier (0: host-only, or NULL @dc). */
unsigned int devcache_count(const struct devcache *dc);

/*
 * LOAD with a GPU tier, on the shard, for client @c: -ENOTSUP with the reason when there is
 * no such GPU, -EINVAL for a malformed form (arg[0]: 0 or WD_LOAD_CONVERT | dtype (F16/BF16),
 * optionally with WD_LOAD_PREFIX or WD_LOAD_NAMES and the selection as the payload @arg,
 * @arg_len bytes, the model by index; tier_parse_form()), a hit answered inline (TIER_DONE),
 * else TIER_ASYNC (the caller queues the job).
 */
enum tier_outcome devcache_load(struct devcache *dc, struct tier_client *c,
				const struct wd_sqe *sqe, const char *arg, uint16_t arg_len,
				uint32_t model, struct wd_cqe *cqe, char *out);

/* Worker side of a GPU LOAD (j->c is never NULL here); the final completion is posted
 * later from the device thread. Takes j->spare. */
void devcache_load_job(struct devcache *dc, struct tier_job *j);

/*
 * DEVICE_MAP on the shard, for client @c whose attach socket is @sock: takes the lease pin,
 * sends the fd and the tensor table on @sock (non-blocking: a client that does not read its
 * socket gets -EAGAIN), and fills @cqe. arg[0] and the payload name the form as for LOAD.
 * Errors: -ENOTSUP (no such GPU), -EINVAL (bad arguments, or a model of several components
 * without one named), -ENODATA (not resident on that GPU in that form), -ECONNRESET, the
 * sendmsg errno. A selection's payload is @arg (@arg_len bytes), the same bytes as its
 * LOAD's.
 */
void devcache_map(struct devcache *dc, struct tier_client *c, int sock,
		  const struct wd_sqe *sqe, const char *arg, uint16_t arg_len, uint32_t model,
		  struct wd_cqe *cqe, char *out);

/*
 * UNLOAD on a GPU tier: drops the device entries of @model (@comp, or all components) on
 * GPU @tier - 1. Returns the bytes released, or -EBUSY with a message when one is loading or
 * pinned/mapped by any client.
 */
int64_t devcache_unload(struct devcache *dc, uint32_t tier, uint32_t model, uint32_t comp,
			char *out, uint16_t *out_len);

/* The DEVICES op: up to WD_DEVICES_PER_REPLY struct wd_device_info from @start into @out.
 * Returns the number of GPUs; with none, writes the reason as text and sets *@n_out = 0 and
 * *@text_len. */
uint32_t devcache_list(struct devcache *dc, uint32_t start, void *out, uint16_t *n_out,
		       uint16_t *text_len);

/*
 * DEVICE_TRIM on the shard: evicts unpinned, unmapped entries of GPU @tier - 1, highest
 * eviction score first, until @bytes were freed or none is left, as an admission would
 * (demoted to the host tier where there is room). Returns once the device thread has
 * demoted them and released their VRAM: the bytes freed (0: nothing evictable), or -ENOTSUP
 * with a message in @out when @tier names no GPU (or @dc is NULL).
 */
int64_t devcache_trim(struct devcache *dc, uint32_t tier, uint64_t bytes, char *out,
		      uint16_t *out_len);

/* Bytes resident on all GPUs (WD_STAT_CUDA_BYTES); 0 for NULL @dc. */
uint64_t devcache_bytes(struct devcache *dc);

#endif
