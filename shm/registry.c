/*
 * The registry segment, the daemon's side: creating it, adding models, components and
 * tensors (records under the seqlock, index entries, long names in the names area), updating
 * their state, and the header's generation, counters and heartbeat. The layout and the
 * publication rules are in shm/registry.h and docs/protocol.md; the readers' side is
 * shm/registry_view.c, the seqlock pair and the keys shm/registry_rec.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/common.h"
#include "shm/barrier.h"
#include "shm/registry.h"
#include "shm/registry_rec.h"

struct registry {
	struct shm_segment seg;
	struct wd_reg_hdr *hdr;
	uint64_t *counters;
	uint8_t *models;
	uint8_t *comps;
	uint8_t *tensors;
	uint64_t *index;
	struct wd_reg_metrics *metrics;
	char *names;			/* the names area */
	/* Private copies: the writer never trusts sizes read back from shared memory. */
	uint32_t model_cap, comp_cap, tensor_cap, index_cap;
	uint32_t n_models, n_comps, n_tensors;	/* added, published or not */
	uint64_t names_size, names_used;
};

/* ---- writer ---------------------------------------------------------------------------- */

static uint32_t next_pow2(uint64_t v)
{
	uint64_t p = 16;

	while (p < v)
		p <<= 1;
	return (uint32_t)p;
}

static uint64_t align_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) & ~(a - 1);
}

int registry_create(const struct registry_limits *lim, struct registry **out)
{
	struct registry *reg;
	struct wd_reg_hdr h;
	uint64_t off;
	int ret;

	*out = NULL;
	if (!lim || !lim->max_models || !lim->max_components || !lim->max_tensors ||
	    lim->max_models > MAX_MODELS || lim->max_components > MAX_COMPONENTS ||
	    lim->max_tensors > MAX_TENSORS)
		return -EINVAL;
	memset(&h, 0, sizeof(h));
	h.magic = WD_REGISTRY_MAGIC;
	h.version = WD_ABI_VERSION;
	h.hdr_size = sizeof(h);
	h.model_cap = lim->max_models;
	h.comp_cap = lim->max_components;
	h.tensor_cap = lim->max_tensors;
	/* Tensors are indexed twice (by component and by model); keep the table half empty. */
	h.index_cap = next_pow2(2 * ((uint64_t)h.model_cap + h.comp_cap + 2ull * h.tensor_cap));
	h.n_counters = WD_REG_COUNTERS;
	h.model_rec_size = sizeof(struct wd_reg_model);
	h.comp_rec_size = sizeof(struct wd_reg_component);
	h.tensor_rec_size = sizeof(struct wd_reg_tensor);
	off = sizeof(h);
	h.counters_off = off;
	off = align_up(off + 8ull * h.n_counters, WD_CACHELINE);
	h.model_off = off;
	off += (uint64_t)h.model_cap * sizeof(struct wd_reg_model);
	h.comp_off = off;
	off += (uint64_t)h.comp_cap * sizeof(struct wd_reg_component);
	h.tensor_off = off;
	off += (uint64_t)h.tensor_cap * sizeof(struct wd_reg_tensor);
	h.index_off = off;
	off += 8ull * h.index_cap;
	/* Appended last, so every region before it keeps the offset it always had. */
	off = align_up(off, WD_CACHELINE);
	h.metrics_off = off;
	h.metrics_size = sizeof(struct wd_reg_metrics);
	off += h.metrics_size;
	h.names_off = off = align_up(off, WD_CACHELINE);
	h.names_size = lim->names_bytes;
	if (!h.names_size) {
		h.names_size = (uint64_t)h.tensor_cap * REGISTRY_NAMES_PER_TENSOR;
		if (h.names_size < REGISTRY_NAMES_MIN)
			h.names_size = REGISTRY_NAMES_MIN;
	}
	off += h.names_size;
	h.seg_size = align_up(off, PAGE);

	reg = calloc(1, sizeof(*reg));
	if (!reg)
		return -ENOMEM;
	ret = shm_segment_create("weightd-registry", h.seg_size, SHM_SEG_PEERS_READ_ONLY,
				 &reg->seg);
	if (ret) {
		free(reg);
		return ret;
	}
	/* Fresh memfd pages are zero: every record's seq is 0 and every index slot empty. */
	memcpy(reg->seg.base, &h, sizeof(h));
	reg->hdr = reg->seg.base;
	reg->counters = (uint64_t *)((uint8_t *)reg->seg.base + h.counters_off);
	reg->models = (uint8_t *)reg->seg.base + h.model_off;
	reg->comps = (uint8_t *)reg->seg.base + h.comp_off;
	reg->tensors = (uint8_t *)reg->seg.base + h.tensor_off;
	reg->index = (uint64_t *)((uint8_t *)reg->seg.base + h.index_off);
	reg->metrics = (struct wd_reg_metrics *)((uint8_t *)reg->seg.base + h.metrics_off);
	reg->names = (char *)reg->seg.base + h.names_off;
	reg->names_size = h.names_size;
	reg->metrics->size = sizeof(struct wd_reg_metrics);
	reg->metrics->hist_buckets = WD_HIST_BUCKETS;
	reg->metrics->n_tiers = WD_TIER_MAX;
	reg->metrics->n_events = WD_EVENTS;
	reg->metrics->hist_base_ns = WD_HIST_BASE_NS;
	reg->model_cap = h.model_cap;
	reg->comp_cap = h.comp_cap;
	reg->tensor_cap = h.tensor_cap;
	reg->index_cap = h.index_cap;
	*out = reg;
	return 0;
}

void registry_destroy(struct registry *reg)
{
	if (!reg)
		return;
	shm_segment_close(&reg->seg);
	free(reg);
}

const struct shm_segment *registry_segment(const struct registry *reg)
{
	return &reg->seg;
}

int registry_client_fd(const struct registry *reg)
{
	return shm_segment_ro_fd(&reg->seg);
}

static void *w_model(struct registry *reg, uint32_t id)
{
	return reg->models + (size_t)id * sizeof(struct wd_reg_model);
}

static void *w_comp(struct registry *reg, uint32_t id)
{
	return reg->comps + (size_t)id * sizeof(struct wd_reg_component);
}

static void *w_tensor(struct registry *reg, uint32_t id)
{
	return reg->tensors + (size_t)id * sizeof(struct wd_reg_tensor);
}

static void *w_record(struct registry *reg, enum kind kind, uint32_t id)
{
	if (kind == K_MODEL)
		return w_model(reg, id);
	if (kind == K_COMP)
		return w_comp(reg, id);
	return w_tensor(reg, id);
}

/*
 * Finds where a key goes: returns 0 and the empty slot, or -EEXIST when the key is present
 * (keys of K_TENSOR_BY_MODEL may repeat: that is how readers detect ambiguity).
 */
static int index_probe(struct registry *reg, enum kind kind, uint32_t model, uint32_t comp,
		       const char *name, size_t len, uint64_t **slot, uint64_t *entry)
{
	uint64_t h = key_hash(kind, model, comp, name, len);
	uint32_t tag = (uint32_t)(h >> 32);
	uint32_t mask = reg->index_cap - 1;
	const struct names_ref nr = { reg->names, reg->names_size };
	union {
		struct wd_reg_model m;
		struct wd_reg_component c;
		struct wd_reg_tensor t;
	} img;

	for (uint32_t p = 0; p < reg->index_cap; p++) {
		uint64_t *s = &reg->index[(h + p) & mask];
		uint64_t e = READ_ONCE(*s);
		uint32_t ref = (uint32_t)e;

		if (!e) {
			*slot = s;
			*entry = (uint64_t)tag << 32;
			return 0;
		}
		if (kind == K_TENSOR_BY_MODEL || (uint32_t)(e >> 32) != tag ||
		    ref >> REF_KIND_SHIFT != (uint32_t)kind)
			continue;
		rec_fetch(&img, w_record(reg, kind, ref & REF_IDX_MASK), rec_size(kind));
		if (key_match(kind, &img, model, comp, name, len, &nr))
			return -EEXIST;
	}
	return -ENOSPC;
}

/*
 * Fills the slot found by index_probe(). The release store pairs with load_acquire() of the
 * slot in find() (registry_view.c): a reader that sees the entry sees the record written before it.
 */
static void index_set(uint64_t *slot, uint64_t entry, enum kind kind, uint32_t id)
{
	store_release(slot, entry | (uint64_t)kind << REF_KIND_SHIFT | id);
}

static int index_add(struct registry *reg, enum kind kind, uint32_t model, uint32_t comp,
		     const char *name, size_t len, uint32_t id)
{
	uint64_t *slot, entry;
	int ret = index_probe(reg, kind, model, comp, name, len, &slot, &entry);

	if (ret)
		return ret;
	index_set(slot, entry, kind, id);
	return 0;
}

int registry_add_model(struct registry *reg, const char *name, const char *arch,
		       uint64_t fingerprint, uint32_t *id)
{
	struct wd_reg_model m;
	uint64_t *slot, entry;
	size_t len, alen = 0;
	int ret;

	if (!name_ok(name, &len, WD_NAME_MAX) || (arch && !name_ok(arch, &alen, WD_ARCH_MAX)))
		return -ENAMETOOLONG;
	if (!len)
		return -EINVAL;
	ret = index_probe(reg, K_MODEL, WD_ID_NONE, WD_ID_NONE, name, len, &slot, &entry);
	if (ret)
		return ret;
	if (reg->n_models == reg->model_cap)
		return -ENOSPC;
	memset(&m, 0, sizeof(m));
	m.fingerprint = fingerprint;
	memcpy(m.name, name, len);
	if (arch)
		memcpy(m.arch, arch, alen);
	rec_store(w_model(reg, reg->n_models), &m, sizeof(m));
	index_set(slot, entry, K_MODEL, reg->n_models);
	if (id)
		*id = reg->n_models;
	reg->n_models++;
	return 0;
}

int registry_add_component(struct registry *reg, uint32_t model, const char *name,
			   uint64_t fingerprint, uint32_t *id)
{
	struct wd_reg_component c;
	struct wd_reg_model m;
	uint64_t *slot, entry;
	size_t len;
	int ret;

	if (model >= reg->n_models)
		return -ENOENT;
	if (!name_ok(name, &len, WD_NAME_MAX))
		return -ENAMETOOLONG;
	ret = index_probe(reg, K_COMP, model, WD_ID_NONE, name, len, &slot, &entry);
	if (ret)
		return ret;
	if (reg->n_comps == reg->comp_cap)
		return -ENOSPC;
	memset(&c, 0, sizeof(c));
	c.model = model;
	c.fingerprint = fingerprint;
	memcpy(c.name, name, len);
	rec_store(w_comp(reg, reg->n_comps), &c, sizeof(c));
	index_set(slot, entry, K_COMP, reg->n_comps);

	rec_fetch(&m, w_model(reg, model), sizeof(m));
	m.n_components++;
	rec_store(w_model(reg, model), &m, sizeof(m));
	if (id)
		*id = reg->n_comps;
	reg->n_comps++;
	return 0;
}

int registry_add_tensor(struct registry *reg, const struct registry_tensor_info *t,
			uint32_t *id)
{
	struct wd_reg_tensor rec;
	struct wd_reg_component c;
	struct wd_reg_model m;
	uint64_t *slot, entry;
	uint32_t tid = reg->n_tensors;
	size_t len;
	int ret;

	if (t->component >= reg->n_comps)
		return -ENOENT;
	if (t->rank > WD_SHAPE_MAX || (t->rank && !t->shape))
		return -EINVAL;
	if (!name_ok(t->name, &len, WD_LONG_NAME_MAX))
		return -ENAMETOOLONG;
	if (!len)
		return -EINVAL;
	rec_fetch(&c, w_comp(reg, t->component), sizeof(c));
	ret = index_probe(reg, K_TENSOR, c.model, t->component, t->name, len, &slot, &entry);
	if (ret)
		return ret;
	if (tid == reg->tensor_cap)
		return -ENOSPC;
	if (len >= WD_NAME_MAX && len + 1 > reg->names_size - reg->names_used)
		return -ENOSPC;
	memset(&rec, 0, sizeof(rec));
	rec.name_len = (uint32_t)len;
	if (len >= WD_NAME_MAX) {
		/*
		 * Written before the record: a reader reaches these bytes only through the
		 * record, whose publication (store_release of the count) orders them.
		 */
		memcpy(reg->names + reg->names_used, t->name, len + 1);
		rec.flags |= WD_REG_TENSOR_F_LONG_NAME;
		rec.name_off = reg->names_used;
		reg->names_used += len + 1;
		WRITE_ONCE(reg->hdr->names_used, reg->names_used);
	}
	rec.model = c.model;
	rec.component = t->component;
	rec.dtype = t->dtype;
	rec.rank = t->rank;
	for (unsigned int i = 0; i < t->rank; i++)
		rec.shape[i] = t->shape[i];
	rec.nbytes = t->nbytes;
	memcpy(rec.name, t->name, len < WD_NAME_MAX ? len : WD_NAME_MAX - 1);
	rec_store(w_tensor(reg, tid), &rec, sizeof(rec));
	index_set(slot, entry, K_TENSOR, tid);
	/* The table is sized for two entries per tensor, so this cannot run out of slots. */
	ret = index_add(reg, K_TENSOR_BY_MODEL, c.model, WD_ID_NONE, t->name, len, tid);
	if (ret)
		return ret;

	c.n_tensors++;
	c.nbytes += t->nbytes;
	rec_store(w_comp(reg, t->component), &c, sizeof(c));
	rec_fetch(&m, w_model(reg, c.model), sizeof(m));
	m.n_tensors++;
	m.nbytes += t->nbytes;
	rec_store(w_model(reg, c.model), &m, sizeof(m));
	if (id)
		*id = tid;
	reg->n_tensors++;
	return 0;
}

int registry_set_state(struct registry *reg, uint32_t component, uint32_t tier, uint32_t state,
		       int error)
{
	struct wd_reg_component c;

	if (component >= reg->n_comps)
		return -ENOENT;
	if (tier >= WD_TIER_MAX || state >= WD_STATE_COUNT)
		return -EINVAL;
	rec_fetch(&c, w_comp(reg, component), sizeof(c));
	c.tiers[tier].state = state;
	c.tiers[tier].error = state == WD_STATE_FAILED ? error : 0;
	if (state == WD_STATE_LOADING)
		c.tiers[tier].done = c.tiers[tier].total = 0;
	rec_store(w_comp(reg, component), &c, sizeof(c));
	return 0;
}

int registry_set_progress(struct registry *reg, uint32_t component, uint32_t tier,
			  uint64_t done, uint64_t total)
{
	struct wd_reg_component c;

	if (component >= reg->n_comps)
		return -ENOENT;
	if (tier >= WD_TIER_MAX)
		return -EINVAL;
	rec_fetch(&c, w_comp(reg, component), sizeof(c));
	c.tiers[tier].done = done;
	c.tiers[tier].total = total;
	rec_store(w_comp(reg, component), &c, sizeof(c));
	return 0;
}

int registry_set_last_load(struct registry *reg, uint32_t component, uint32_t tier,
			   uint64_t bytes, uint64_t ns, uint64_t wall_ns)
{
	struct wd_reg_component c;

	if (component >= reg->n_comps)
		return -ENOENT;
	if (tier >= WD_TIER_MAX)
		return -EINVAL;
	rec_fetch(&c, w_comp(reg, component), sizeof(c));
	c.last_load_bytes = bytes;
	c.last_load_ns = ns;
	c.last_load_wall_ns = wall_ns;
	c.last_load_tier = tier;
	rec_store(w_comp(reg, component), &c, sizeof(c));
	return 0;
}

int registry_set_tensor_location(struct registry *reg, uint32_t tensor, uint32_t resident,
				 uint64_t host_offset)
{
	struct wd_reg_tensor t;

	if (tensor >= reg->n_tensors)
		return -ENOENT;
	rec_fetch(&t, w_tensor(reg, tensor), sizeof(t));
	t.resident = resident;
	t.host_offset = host_offset;
	rec_store(w_tensor(reg, tensor), &t, sizeof(t));
	return 0;
}

int registry_set_tensor_host(struct registry *reg, uint32_t tensor, bool resident,
			     uint64_t host_offset, uint8_t dtype, uint64_t nbytes)
{
	struct wd_reg_tensor t;

	if (tensor >= reg->n_tensors)
		return -ENOENT;
	rec_fetch(&t, w_tensor(reg, tensor), sizeof(t));
	t.resident = resident ? t.resident | 1u << WD_TIER_HOST : t.resident & ~(1u << WD_TIER_HOST);
	t.host_offset = resident ? host_offset : UINT64_MAX;
	t.dtype = dtype;
	t.nbytes = nbytes;
	rec_store(w_tensor(reg, tensor), &t, sizeof(t));
	return 0;
}

int registry_set_tensor_tier(struct registry *reg, uint32_t tensor, uint32_t tier, bool resident)
{
	struct wd_reg_tensor t;

	if (tensor >= reg->n_tensors)
		return -ENOENT;
	if (tier == WD_TIER_HOST || tier >= WD_TIER_MAX)
		return -EINVAL;
	rec_fetch(&t, w_tensor(reg, tensor), sizeof(t));
	t.resident = resident ? t.resident | 1u << tier : t.resident & ~(1u << tier);
	rec_store(w_tensor(reg, tensor), &t, sizeof(t));
	return 0;
}

int registry_set_model_flags(struct registry *reg, uint32_t model, uint32_t flags)
{
	struct wd_reg_model m;

	if (model >= reg->n_models)
		return -ENOENT;
	rec_fetch(&m, w_model(reg, model), sizeof(m));
	m.flags = flags;
	rec_store(w_model(reg, model), &m, sizeof(m));
	return 0;
}

int registry_set_model_pins(struct registry *reg, uint32_t model, uint32_t pins)
{
	struct wd_reg_model m;

	if (model >= reg->n_models)
		return -ENOENT;
	rec_fetch(&m, w_model(reg, model), sizeof(m));
	m.pins = pins;
	rec_store(w_model(reg, model), &m, sizeof(m));
	return 0;
}

struct wd_reg_metrics *registry_metrics(struct registry *reg)
{
	return reg->metrics;
}

void registry_counter_add(struct registry *reg, unsigned int ctr, int64_t delta)
{
	/* One writer: a relaxed load and store suffice; readers see each value untorn. */
	if (ctr < WD_REG_COUNTERS)
		WRITE_ONCE(reg->counters[ctr], READ_ONCE(reg->counters[ctr]) + (uint64_t)delta);
}

void registry_publish(struct registry *reg)
{
	/*
	 * Pairs with load_acquire() of the counts in table_of() (registry_view.c): a reader
	 * that sees a count sees every record (and index entry) below it.
	 */
	store_release(&reg->hdr->model_count, reg->n_models);
	store_release(&reg->hdr->comp_count, reg->n_comps);
	store_release(&reg->hdr->tensor_count, reg->n_tensors);
	store_release(&reg->hdr->generation, READ_ONCE(reg->hdr->generation) + 1);
}

bool registry_has_room(const struct registry *reg, uint32_t models, uint64_t comps,
		       uint64_t tensors, uint64_t name_bytes)
{
	return models <= reg->model_cap - reg->n_models && comps <= reg->comp_cap - reg->n_comps &&
	       tensors <= reg->tensor_cap - reg->n_tensors &&
	       name_bytes <= reg->names_size - reg->names_used;
}

void registry_heartbeat(struct registry *reg)
{
	/* Only the control thread writes it; a reader only compares values, so relaxed. */
	WRITE_ONCE(reg->hdr->heartbeat, READ_ONCE(reg->hdr->heartbeat) + 1);
}

void registry_retire(struct registry *reg)
{
	store_release(&reg->hdr->flags, READ_ONCE(reg->hdr->flags) | WD_REG_F_RETIRED);
}

