/*
 * The registry segment: what the daemon knows about models, components and tensors, published
 * in shared memory so that clients resolve names with no round trip to the daemon.
 *
 * Only the daemon writes it; clients map it read-only (the descriptor they get is O_RDONLY and
 * the file carries F_SEAL_FUTURE_WRITE). Layout, all offsets from the start of the segment:
 *
 *   header (256 B) | counters (u64 x n_counters) | models | components | tensors | index
 *   | metrics | names
 *
 * Records have a fixed size and start with a 64-bit sequence counter (seqlock): odd while the
 * daemon rewrites the record, even when stable. A reader copies the record and accepts the
 * copy only if the counter was even and unchanged around the copy, so it never sees a torn
 * record. Each record also carries an XXH3 checksum of its body, which the reader verifies
 * (registry_read_*() and the lookups; registry_read_tensor_loc() reads a few fields in place and
 * leaves the checking of those to its caller).
 *
 * The index is one open-addressing hash table (linear probing, power-of-two capacity, at most
 * half full) of 64-bit entries: tag (high 32 bits of the key's hash) << 32 | ref, where ref is
 * kind << 29 | record index, and 0 means empty. Entries are only ever added, never moved or
 * removed, so a reader probing concurrently with an insert sees either the empty slot or the
 * complete entry. A record becomes visible when the header's count for its kind covers it:
 * registry_publish() stores the counts with release semantics, and readers ignore index
 * entries beyond the count they loaded with acquire semantics.
 *
 * A tensor name longer than WD_NAME_MAX - 1 bytes (the format does not limit names) is kept
 * whole in the names area, an append-only heap of NUL-terminated strings: the record has
 * WD_REG_TENSOR_F_LONG_NAME set, name_off and name_len locate the full name, and its name
 * field holds the first WD_NAME_MAX - 1 bytes (for display only). Names are written there
 * before the record that points at them, and never change afterwards.
 *
 * Readers treat the segment as semi-trusted: every offset, capacity, count, index entry and
 * name read from it is bounds-checked, and a corrupt segment yields -EBADMSG, never a crash.
 */
#ifndef WD_SHM_REGISTRY_H
#define WD_SHM_REGISTRY_H

#include <stdbool.h>
#include <stdint.h>

#include "shm/abi.h"
#include "shm/regmetrics.h"
#include "shm/segment.h"

#define WD_NAME_MAX 256u	/* name fields, NUL-terminated: names up to 255 bytes */
#define WD_LONG_NAME_MAX 65536u	/* tensor names in the names area: up to 65535 bytes */
#define WD_ARCH_MAX 32u
#define WD_SHAPE_MAX 16u	/* ranks up to ST_MAX_RANK */
#define WD_REG_COUNTERS 64u	/* counter slots; enum wd_counter names the used ones */

/* wd_reg_hdr.flags */
#define WD_REG_F_RETIRED 0x1u	/* replaced by a newer registry: re-attach to get it */

/*
 * wd_reg_model.flags. Records are never removed or renamed (indices stay valid for the life of
 * the daemon), so a model that a later scan found changed or gone is flagged instead.
 */
#define WD_REG_MODEL_F_STALE 0x1u	/* the files changed or vanished since it was published */

/* wd_reg_tensor.flags */
#define WD_REG_TENSOR_F_LONG_NAME 0x1u	/* the full name is in the names area (name_off) */

/* Load state of a component on one tier. */
enum wd_state {
	WD_STATE_ABSENT = 0,
	WD_STATE_LOADING = 1,	/* progress in done/total */
	WD_STATE_RESIDENT = 2,
	WD_STATE_EVICTING = 3,
	WD_STATE_FAILED = 4,	/* error holds the negative errno */
	WD_STATE_COUNT
};

/* Host-wide counters in the counters area. */
enum wd_counter {
	WD_CTR_CLIENTS = 0,	/* attached clients now */
	WD_CTR_REQUESTS,	/* requests served */
	WD_CTR_ERRORS,		/* requests that completed with an error */
	/*
	 * Slots 3..8 held loads, load bytes, evictions, evict bytes, hits and misses: copies of
	 * the host tier's STATS counters (two of them never counted). They are not written any
	 * more: the STATS counters are the one set (shm/stats.h); kept so the layout stays.
	 */
	WD_CTR_UNUSED_3,
	WD_CTR_UNUSED_4,
	WD_CTR_UNUSED_5,
	WD_CTR_UNUSED_6,
	WD_CTR_UNUSED_7,
	WD_CTR_UNUSED_8,
	WD_CTR_HOST_BYTES,	/* bytes of the host cache in use */
	WD_CTR_PINS,		/* pins held by all attached clients */
	WD_CTR_RING_SEGS,	/* client ring segments the daemon still maps */
	WD_CTR_COUNT
};

struct wd_reg_hdr {
	uint32_t magic;		/* WD_REGISTRY_MAGIC */
	uint32_t version;	/* WD_ABI_VERSION */
	uint32_t hdr_size;	/* sizeof(struct wd_reg_hdr) */
	uint32_t flags;		/* WD_REG_F_* */
	uint64_t seg_size;
	uint64_t generation;	/* incremented by every registry_publish() */
	uint32_t model_cap;
	uint32_t model_count;	/* published records; release-stored by the daemon */
	uint32_t comp_cap;
	uint32_t comp_count;
	uint32_t tensor_cap;
	uint32_t tensor_count;
	uint32_t index_cap;	/* power of two */
	uint32_t n_counters;	/* WD_REG_COUNTERS */
	uint32_t model_rec_size;	/* sizeof(struct wd_reg_model) */
	uint32_t comp_rec_size;	/* sizeof(struct wd_reg_component) */
	uint32_t tensor_rec_size;	/* sizeof(struct wd_reg_tensor) */
	uint32_t reserved0;
	uint64_t counters_off;
	uint64_t model_off;
	uint64_t comp_off;
	uint64_t tensor_off;
	uint64_t index_off;
	uint64_t metrics_off;	/* struct wd_reg_metrics (shm/regmetrics.h); 0: none */
	uint64_t metrics_size;	/* sizeof(struct wd_reg_metrics) */
	/*
	 * Incremented by the daemon's control thread at least every DAEMON_HEARTBEAT_MS while
	 * it runs (registry_heartbeat()). A client waiting on a request takes a change as
	 * proof of life: a daemon that is stopped (SIGSTOP) or wedged leaves it still, and
	 * the client's call ends with -ETIMEDOUT (include/weightd.h, request_timeout_ms).
	 */
	uint64_t heartbeat;
	uint64_t names_off;	/* the names area (long tensor names) */
	uint64_t names_size;	/* its bytes */
	uint64_t names_used;	/* bytes of it in use (published or not); relaxed */
	uint8_t reserved1[88];
};

/* Every record starts with seq and check; check is XXH3-64 of the bytes after it. */
struct wd_reg_model {
	uint64_t seq;
	uint64_t check;
	uint32_t n_components;
	uint32_t n_tensors;
	uint32_t flags;		/* WD_REG_MODEL_F_* */
	uint32_t pins;		/* pins all clients hold on the model or its components */
	uint64_t nbytes;	/* sum of its tensors' bytes */
	uint64_t fingerprint;	/* content fingerprint from the catalog */
	uint8_t reserved1[16];
	char name[WD_NAME_MAX];
	char arch[WD_ARCH_MAX];	/* "sdxl", "llama", ... */
	uint8_t reserved2[32];
};

struct wd_reg_tier {
	uint32_t state;		/* enum wd_state */
	int32_t error;		/* negative errno when WD_STATE_FAILED */
	uint64_t done;		/* bytes loaded so far (WD_STATE_LOADING) */
	uint64_t total;		/* bytes to load */
};

struct wd_reg_component {
	uint64_t seq;
	uint64_t check;
	uint32_t model;		/* owning model's index */
	uint32_t n_tensors;
	uint64_t nbytes;
	uint64_t fingerprint;
	uint8_t reserved0[24];
	char name[WD_NAME_MAX];	/* "unet", "vae", or "" for a single-component model */
	struct wd_reg_tier tiers[WD_TIER_MAX];
	/* The last completed load of the component, on any tier (0 bytes: none yet). */
	uint64_t last_load_bytes;	/* bytes that load read */
	uint64_t last_load_ns;		/* how long it took (load start to completion) */
	uint64_t last_load_wall_ns;	/* CLOCK_REALTIME when it completed */
	uint32_t last_load_tier;	/* WD_TIER_* */
	uint32_t reserved2;
	uint8_t reserved1[32];
};

struct wd_reg_tensor {
	uint64_t seq;
	uint64_t check;
	uint32_t model;
	uint32_t component;
	uint8_t dtype;		/* enum st_dtype (core/format/st.h) */
	uint8_t rank;		/* <= WD_SHAPE_MAX */
	uint16_t flags;
	uint32_t resident;	/* bit t set: resident on tier t */
	uint64_t nbytes;
	uint64_t host_offset;	/* offset within the host cache segment when bit 0 is set */
	uint64_t shape[WD_SHAPE_MAX];
	char name[WD_NAME_MAX];	/* the name; with WD_REG_TENSOR_F_LONG_NAME its first bytes */
	uint64_t name_off;	/* WD_REG_TENSOR_F_LONG_NAME: the name's offset in the names area */
	uint32_t name_len;	/* the full name's length in bytes (without the NUL) */
	uint32_t reserved0;
	uint8_t reserved[64];
};

static_assert(sizeof(struct wd_reg_hdr) == 256, "wd_reg_hdr size");
static_assert(offsetof(struct wd_reg_hdr, seg_size) == 16, "reg.seg_size");
static_assert(offsetof(struct wd_reg_hdr, generation) == 24, "reg.generation");
static_assert(offsetof(struct wd_reg_hdr, model_cap) == 32, "reg.model_cap");
static_assert(offsetof(struct wd_reg_hdr, model_count) == 36, "reg.model_count");
static_assert(offsetof(struct wd_reg_hdr, comp_cap) == 40, "reg.comp_cap");
static_assert(offsetof(struct wd_reg_hdr, comp_count) == 44, "reg.comp_count");
static_assert(offsetof(struct wd_reg_hdr, tensor_cap) == 48, "reg.tensor_cap");
static_assert(offsetof(struct wd_reg_hdr, tensor_count) == 52, "reg.tensor_count");
static_assert(offsetof(struct wd_reg_hdr, index_cap) == 56, "reg.index_cap");
static_assert(offsetof(struct wd_reg_hdr, n_counters) == 60, "reg.n_counters");
static_assert(offsetof(struct wd_reg_hdr, model_rec_size) == 64, "reg.model_rec_size");
static_assert(offsetof(struct wd_reg_hdr, comp_rec_size) == 68, "reg.comp_rec_size");
static_assert(offsetof(struct wd_reg_hdr, tensor_rec_size) == 72, "reg.tensor_rec_size");
static_assert(offsetof(struct wd_reg_hdr, counters_off) == 80, "reg.counters_off");
static_assert(offsetof(struct wd_reg_hdr, model_off) == 88, "reg.model_off");
static_assert(offsetof(struct wd_reg_hdr, comp_off) == 96, "reg.comp_off");
static_assert(offsetof(struct wd_reg_hdr, tensor_off) == 104, "reg.tensor_off");
static_assert(offsetof(struct wd_reg_hdr, index_off) == 112, "reg.index_off");
static_assert(offsetof(struct wd_reg_hdr, metrics_off) == 120, "reg.metrics_off");
static_assert(offsetof(struct wd_reg_hdr, metrics_size) == 128, "reg.metrics_size");
static_assert(offsetof(struct wd_reg_hdr, heartbeat) == 136, "reg.heartbeat");
static_assert(offsetof(struct wd_reg_hdr, names_off) == 144, "reg.names_off");
static_assert(offsetof(struct wd_reg_hdr, names_size) == 152, "reg.names_size");
static_assert(offsetof(struct wd_reg_hdr, names_used) == 160, "reg.names_used");

static_assert(sizeof(struct wd_reg_model) == 384, "wd_reg_model size");
static_assert(offsetof(struct wd_reg_model, check) == 8, "model.check");
static_assert(offsetof(struct wd_reg_model, n_components) == 16, "model.n_components");
static_assert(offsetof(struct wd_reg_model, n_tensors) == 20, "model.n_tensors");
static_assert(offsetof(struct wd_reg_model, flags) == 24, "model.flags");
static_assert(offsetof(struct wd_reg_model, pins) == 28, "model.pins");
static_assert(offsetof(struct wd_reg_model, nbytes) == 32, "model.nbytes");
static_assert(offsetof(struct wd_reg_model, fingerprint) == 40, "model.fingerprint");
static_assert(offsetof(struct wd_reg_model, name) == 64, "model.name");
static_assert(offsetof(struct wd_reg_model, arch) == 320, "model.arch");

static_assert(sizeof(struct wd_reg_tier) == 24, "wd_reg_tier size");
static_assert(offsetof(struct wd_reg_tier, error) == 4, "tier.error");
static_assert(offsetof(struct wd_reg_tier, done) == 8, "tier.done");
static_assert(offsetof(struct wd_reg_tier, total) == 16, "tier.total");

static_assert(sizeof(struct wd_reg_component) == 768, "wd_reg_component size");
static_assert(offsetof(struct wd_reg_component, check) == 8, "comp.check");
static_assert(offsetof(struct wd_reg_component, model) == 16, "comp.model");
static_assert(offsetof(struct wd_reg_component, n_tensors) == 20, "comp.n_tensors");
static_assert(offsetof(struct wd_reg_component, nbytes) == 24, "comp.nbytes");
static_assert(offsetof(struct wd_reg_component, fingerprint) == 32, "comp.fingerprint");
static_assert(offsetof(struct wd_reg_component, name) == 64, "comp.name");
static_assert(offsetof(struct wd_reg_component, tiers) == 320, "comp.tiers");
static_assert(offsetof(struct wd_reg_component, last_load_bytes) == 704, "comp.last_load_bytes");
static_assert(offsetof(struct wd_reg_component, last_load_tier) == 728, "comp.last_load_tier");

static_assert(sizeof(struct wd_reg_tensor) == 512, "wd_reg_tensor size");
static_assert(offsetof(struct wd_reg_tensor, check) == 8, "tensor.check");
static_assert(offsetof(struct wd_reg_tensor, model) == 16, "tensor.model");
static_assert(offsetof(struct wd_reg_tensor, component) == 20, "tensor.component");
static_assert(offsetof(struct wd_reg_tensor, dtype) == 24, "tensor.dtype");
static_assert(offsetof(struct wd_reg_tensor, rank) == 25, "tensor.rank");
static_assert(offsetof(struct wd_reg_tensor, flags) == 26, "tensor.flags");
static_assert(offsetof(struct wd_reg_tensor, resident) == 28, "tensor.resident");
static_assert(offsetof(struct wd_reg_tensor, nbytes) == 32, "tensor.nbytes");
static_assert(offsetof(struct wd_reg_tensor, host_offset) == 40, "tensor.host_offset");
static_assert(offsetof(struct wd_reg_tensor, shape) == 48, "tensor.shape");
static_assert(offsetof(struct wd_reg_tensor, name) == 176, "tensor.name");
static_assert(offsetof(struct wd_reg_tensor, name_off) == 432, "tensor.name_off");
static_assert(offsetof(struct wd_reg_tensor, name_len) == 440, "tensor.name_len");

/* ---- daemon side: the writer ---------------------------------------------------------- */

struct registry;

struct registry_limits {
	uint32_t max_models;		/* 1 .. 2^20 */
	uint32_t max_components;	/* 1 .. 2^22 */
	uint32_t max_tensors;		/* 1 .. 2^26 */
	uint64_t names_bytes;		/* names area; 0: REGISTRY_NAMES_PER_TENSOR per tensor,
					 * at least REGISTRY_NAMES_MIN */
};

#define REGISTRY_NAMES_PER_TENSOR 32u
#define REGISTRY_NAMES_MIN (1u << 20)

/* What the daemon knows about a tensor when it registers it. */
struct registry_tensor_info {
	uint32_t component;	/* index from registry_add_component() */
	const char *name;	/* up to WD_LONG_NAME_MAX - 1 bytes */
	uint8_t dtype;		/* enum st_dtype */
	uint8_t rank;		/* <= WD_SHAPE_MAX */
	const uint64_t *shape;	/* rank dims (may be NULL when rank is 0) */
	uint64_t nbytes;
};

/*
 * Creates a registry segment sized for @lim (a sealed memfd named "weightd-registry") and
 * maps it read-write. Returns 0 and stores the handle in @out; -EINVAL when a limit is 0 or
 * too large; -ENOMEM; or the negative errno of shm_segment_create().
 */
int registry_create(const struct registry_limits *lim, struct registry **out);

/* Unmaps and closes the registry; clients' own mappings stay valid. NULL is ignored. */
void registry_destroy(struct registry *reg);

/* The registry's segment (daemon-owned, read-write). */
const struct shm_segment *registry_segment(const struct registry *reg);

/*
 * A fresh O_RDONLY descriptor of the registry for one client, to send with SCM_RIGHTS; the
 * caller closes it after sending. Returns the descriptor or a negative errno from open(2).
 */
int registry_client_fd(const struct registry *reg);

/*
 * Adds a model called @name (with detected architecture @arch, may be NULL, and catalog
 * fingerprint @fingerprint). The model is invisible to readers until registry_publish().
 * @id receives its index. Returns 0; -ENAMETOOLONG when @name (or @arch) does not fit;
 * -EINVAL for an empty name; -EEXIST when a model has that name; -ENOSPC when max_models
 * are registered.
 */
int registry_add_model(struct registry *reg, const char *name, const char *arch,
		       uint64_t fingerprint, uint32_t *id);

/*
 * Adds component @name ("" for a single-component model) to model @model. @id receives its
 * index. Returns 0; -ENOENT when @model does not exist; -ENAMETOOLONG; -EEXIST when the
 * model already has a component of that name; -ENOSPC.
 */
int registry_add_component(struct registry *reg, uint32_t model, const char *name,
			   uint64_t fingerprint, uint32_t *id);

/*
 * Adds a tensor to a component (and counts its bytes into the component and model). The
 * tensor is indexed under its component and under its model, so readers can resolve it with
 * or without naming the component. A name longer than WD_NAME_MAX - 1 bytes goes to the names
 * area. @id receives its index. Returns 0; -ENOENT for an unknown component; -EINVAL for a
 * rank above WD_SHAPE_MAX, an empty name, or a missing shape; -ENAMETOOLONG for a name of
 * WD_LONG_NAME_MAX bytes or more; -EEXIST when the component has a tensor of that name;
 * -ENOSPC when max_tensors are registered or the names area is full.
 */
int registry_add_tensor(struct registry *reg, const struct registry_tensor_info *t,
			uint32_t *id);

/*
 * Sets the state of @component on @tier to @state (enum wd_state) with @error (a negative
 * errno for WD_STATE_FAILED, else 0). Entering WD_STATE_LOADING resets progress to 0 of 0.
 * Returns 0, -ENOENT for an unknown component, -EINVAL for a bad tier or state.
 */
int registry_set_state(struct registry *reg, uint32_t component, uint32_t tier, uint32_t state,
		       int error);

/* Records load progress of @component on @tier. Returns 0, -ENOENT or -EINVAL (bad tier). */
int registry_set_progress(struct registry *reg, uint32_t component, uint32_t tier,
			  uint64_t done, uint64_t total);

/*
 * Records where tensor @tensor lives: @resident is a bitmask of tiers, @host_offset its
 * offset in the host cache (meaningful when bit WD_TIER_HOST is set).
 * Returns 0 or -ENOENT.
 */
int registry_set_tensor_location(struct registry *reg, uint32_t tensor, uint32_t resident,
				 uint64_t host_offset);

/*
 * Records tensor @tensor's host copy in one seqlocked write, so that a reader never sees an
 * offset with another copy's dtype or size: when @resident, at @host_offset in dtype @dtype
 * with @nbytes (the file's form, or the converted one); else gone from the host (offset
 * UINT64_MAX) with the file's @dtype and @nbytes restored. The other tiers' bits are kept.
 * Returns 0 or -ENOENT.
 */
int registry_set_tensor_host(struct registry *reg, uint32_t tensor, bool resident,
			     uint64_t host_offset, uint8_t dtype, uint64_t nbytes);

/* Sets or clears GPU tier @tier's bit of tensor @tensor's resident mask. Returns 0, -ENOENT
 * or -EINVAL (a tier out of range). */
int registry_set_tensor_tier(struct registry *reg, uint32_t tensor, uint32_t tier,
			     bool resident);

/*
 * Sets the flags (WD_REG_MODEL_F_*) and the pin count of model @model; the record is
 * rewritten under its seqlock. Returns 0 or -ENOENT for an unknown model.
 */
int registry_set_model_flags(struct registry *reg, uint32_t model, uint32_t flags);
int registry_set_model_pins(struct registry *reg, uint32_t model, uint32_t pins);

/*
 * Records the last completed load of @component: @bytes read on @tier in @ns nanoseconds,
 * completed at @wall_ns (CLOCK_REALTIME). Returns 0, -ENOENT or -EINVAL (bad tier).
 */
int registry_set_last_load(struct registry *reg, uint32_t component, uint32_t tier,
			   uint64_t bytes, uint64_t ns, uint64_t wall_ns);

/*
 * The metrics block (shm/regmetrics.h) for the daemon's writers; it lives as long as @reg.
 */
struct wd_reg_metrics *registry_metrics(struct registry *reg);

/*
 * True when @models models, @comps components and @tensors tensors (with @name_bytes bytes of
 * names longer than WD_NAME_MAX - 1, NULs included) still fit, so that a model is published
 * whole or not at all.
 */
bool registry_has_room(const struct registry *reg, uint32_t models, uint64_t comps,
		       uint64_t tensors, uint64_t name_bytes);

/* Capacity use, for logs and `weightctl status` (clients read the header: registry_usage()). */
struct registry_usage {
	uint32_t models, model_cap, comps, comp_cap, tensors, tensor_cap;
	uint64_t names_used, names_size;
};

/* Adds @delta to counter @ctr (enum wd_counter); unknown counters are ignored. */
void registry_counter_add(struct registry *reg, unsigned int ctr, int64_t delta);

/*
 * Makes every record added so far visible to readers and increments the generation.
 * Records added between two publishes appear together.
 */
void registry_publish(struct registry *reg);

/* Advances the heartbeat word (wd_reg_hdr.heartbeat); the control thread's, at least every
 * second, so that clients can tell a live daemon from a stopped one. */
void registry_heartbeat(struct registry *reg);

/* Marks the registry as replaced, so readers know to re-attach (WD_REG_F_RETIRED). */
void registry_retire(struct registry *reg);

/* ---- client side: the reader -------------------------------------------------------- */

/* A validated read-only view. Geometry is copied out of the header once, at attach. */
struct registry_view {
	const uint8_t *base;
	uint64_t size;
	struct shm_segment seg;		/* the mapping when attached by descriptor */
	uint32_t model_cap, comp_cap, tensor_cap, index_cap, n_counters;
	uint64_t counters_off, model_off, comp_off, tensor_off, index_off;
	uint64_t metrics_off;		/* 0: the segment has no metrics block */
	uint64_t names_off, names_size;	/* the names area (long tensor names) */
};

/*
 * Maps the registry behind @fd read-only and validates it (see registry_view_init()). On
 * success the view owns @fd. Returns 0, an error from shm_segment_map(), or one from
 * registry_view_init().
 */
int registry_attach(int fd, struct registry_view *v);

/*
 * Validates a registry already mapped at @base (@size bytes) and fills @v; @base must stay
 * mapped while @v is used. Returns 0; -EBADMSG for a wrong magic, header size, record size,
 * capacity or misaligned or overlapping region; -EPROTONOSUPPORT for another ABI version;
 * -EOVERFLOW when a region lies outside @size; -EINVAL for NULL arguments.
 */
int registry_view_init(struct registry_view *v, const void *base, uint64_t size);

/* Unmaps a view made by registry_attach(); a view over caller memory is just forgotten. */
void registry_detach(struct registry_view *v);

/* The generation (acquire): it changes whenever the daemon publishes new records. */
uint64_t registry_generation(const struct registry_view *v);

/* The heartbeat word (relaxed): it changes while the daemon's control thread runs. */
uint64_t registry_heartbeat_read(const struct registry_view *v);

/* True when the daemon has replaced this registry with a newer one. */
bool registry_retired(const struct registry_view *v);

/*
 * The segment's metrics block (shm/regmetrics.h), validated at attach: in bounds, aligned and
 * of this build's size. NULL when the segment has none. Read it only with the accessors of
 * shm/regmetrics.h (relaxed loads, seqlocked events).
 */
const struct wd_reg_metrics *registry_view_metrics(const struct registry_view *v);

/* Published records and capacities, from the header (relaxed loads). */
void registry_usage(const struct registry_view *v, struct registry_usage *u);

/* Value of counter @ctr, 0 for a counter outside the segment's counter area. */
uint64_t registry_counter(const struct registry_view *v, unsigned int ctr);

/*
 * Name lookups. Each copies the record into @out (may be NULL) and its index into @id (may
 * be NULL). The copy is consistent (seqlock) and its checksum verified.
 * Return 0; -ENOENT when no published record matches; -ENAMETOOLONG for a name longer than
 * WD_NAME_MAX - 1 bytes (WD_LONG_NAME_MAX - 1 for a tensor's); -EAGAIN when the record stayed
 * under rewrite for the whole retry
 * budget; -EBADMSG when the segment is corrupt (index entry out of bounds, checksum or
 * name mismatch).
 */
int registry_find_model(const struct registry_view *v, const char *name, uint32_t *id,
			struct wd_reg_model *out);
int registry_find_component(const struct registry_view *v, uint32_t model, const char *name,
			    uint32_t *id, struct wd_reg_component *out);
/*
 * @component may be WD_ID_NONE to search the whole model; then -ENOTUNIQ is also returned
 * when two components of the model have a tensor of that name.
 */
int registry_find_tensor(const struct registry_view *v, uint32_t model, uint32_t component,
			 const char *name, uint32_t *id, struct wd_reg_tensor *out);

/*
 * Reads one record by index. Return 0; -ENOENT for an index not published; -EAGAIN;
 * -EBADMSG (checksum mismatch, or the header's count exceeds its capacity).
 */
int registry_read_model(const struct registry_view *v, uint32_t id, struct wd_reg_model *out);
int registry_read_component(const struct registry_view *v, uint32_t id,
			    struct wd_reg_component *out);
int registry_read_tensor(const struct registry_view *v, uint32_t id, struct wd_reg_tensor *out);

/*
 * The full name of tensor record @t (a copy read from @v): its name field, or for
 * WD_REG_TENSOR_F_LONG_NAME the string in the names area, which stays valid while @v is
 * mapped. *@len gets its length. NULL when the record points outside the names area or the
 * name there is not NUL-terminated at name_len (a corrupt segment).
 */
const char *registry_tensor_name(const struct registry_view *v, const struct wd_reg_tensor *t,
				 size_t *len);

/*
 * The fields of a tensor record that place a view of its bytes, as registry_read_tensor_loc()
 * reads them. shape[] holds rank entries (the rest is not written); name is NUL-terminated,
 * name_len bytes long.
 */
struct registry_tensor_loc {
	uint32_t model;
	uint32_t component;
	uint8_t dtype;
	uint8_t rank;
	uint32_t resident;
	uint64_t nbytes;
	uint64_t host_offset;
	uint32_t name_len;
	uint64_t shape[WD_SHAPE_MAX];
	char name[WD_NAME_MAX];
	const char *long_name;	/* the full name in the names area when it is longer than
				 * WD_NAME_MAX - 1 bytes (name then holds its first bytes), else
				 * NULL; name_len is the full length either way */
};

/*
 * Reads the fields of published tensor record @id that a bulk listing needs (owner, dtype,
 * rank, residency, size, host offset, the rank dimensions in use and the name) in place,
 * under the record's seqlock: only those words are loaded (typically 3 of the record's 8
 * cache lines), not the whole record, and the checksum is not computed -- it needs every
 * byte. The copy is consistent (the seqlock); its content is checked only as far as this
 * function can (rank <= WD_SHAPE_MAX, the name NUL-terminated in its field): a caller that
 * derives memory accesses from it must bound them itself, as it must for a forged record
 * whose checksum is right. Returns 0; -ENOENT for an index not published; -EAGAIN when the
 * record stayed under rewrite for the whole retry budget; -EBADMSG for a rank above
 * WD_SHAPE_MAX, an unterminated name, or a header count above its capacity.
 */
int registry_read_tensor_loc(const struct registry_view *v, uint32_t id,
			     struct registry_tensor_loc *out);
static_assert(offsetof(struct wd_reg_tensor, name) % 8 == 0, "the name is read in words");

#endif
