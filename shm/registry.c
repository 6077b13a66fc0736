/*
 * The registry segment: the daemon's writer and the clients' seqlock reader. Layout and the
 * publication rules are in shm/registry.h and docs/protocol.md.
 */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "core/base/common.h"
#include "shm/barrier.h"
#include "shm/registry.h"

/* Index entry: tag << 32 | kind << REF_KIND_SHIFT | record index; 0 is an empty slot. */
#define REF_KIND_SHIFT 29
#define REF_IDX_MASK ((1u << REF_KIND_SHIFT) - 1)

/* Seqlock reads retry this often before giving up with -EAGAIN, yielding every 64 tries. */
#define READ_RETRIES 100000u

#define MAX_MODELS (1u << 20)
#define MAX_COMPONENTS (1u << 22)
#define MAX_TENSORS (1u << 26)
#define PAGE 4096u

enum kind { K_MODEL = 1, K_COMP = 2, K_TENSOR = 3, K_TENSOR_BY_MODEL = 4 };

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

/* Where long tensor names live, for key_match(): the writer's area or a reader's mapping. */
struct names_ref {
	const char *base;
	uint64_t size;
};

/* ---- records and the seqlock --------------------------------------------------------- */

/* The checksum covers everything after seq and check. */
static uint64_t rec_check(const void *rec, size_t size)
{
	return XXH3_64bits((const uint8_t *)rec + 16, size - 16);
}

/*
 * Writes the private image @img over the shared record @dst under the seqlock. The writer is
 * the only one that stores to dst, so its own read of seq needs no ordering.
 */
static void rec_store(void *dst, void *img, size_t size)
{
	uint64_t *d = dst, *s = img;
	uint64_t seq = READ_ONCE(d[0]);

	s[1] = rec_check(img, size);
	WRITE_ONCE(d[0], seq + 1);
	/* Pairs with smp_rmb() in rec_load(): a reader that sees any new word sees seq odd. */
	smp_wmb();
	for (size_t i = 1; i < size / 8; i++)
		WRITE_ONCE(d[i], s[i]);
	/* Pairs with load_acquire(seq) in rec_load(): the even value covers the new words. */
	store_release(&d[0], seq + 2);
}

/*
 * The writer's own view of a record it wrote. Nobody else stores to the segment, and readers
 * only load, so a plain copy is exact and races with nothing.
 */
static void rec_fetch(void *img, const void *src, size_t size)
{
	memcpy(img, src, size);
}

/*
 * Copies a record consistently. Every word is read with READ_ONCE (a relaxed atomic load) so
 * the concurrent rewrite is not a data race in the C11 sense; the seq check makes the copy
 * all-or-nothing. Returns 0, -EAGAIN after READ_RETRIES attempts that saw the record under
 * rewrite, or -EBADMSG when a stable copy fails its checksum.
 */
static int rec_load(const void *src, size_t size, void *dst)
{
	const uint64_t *s = src;
	uint64_t *d = dst;

	for (unsigned int tries = 0; tries < READ_RETRIES; tries++) {
		/* Pairs with the writer's store_release(seq) that ended the last update. */
		uint64_t s1 = load_acquire(&s[0]);

		if (!(s1 & 1)) {
			for (size_t i = 1; i < size / 8; i++)
				d[i] = READ_ONCE(s[i]);
			/* Pairs with the writer's smp_wmb() after it made seq odd. */
			smp_rmb();
			if (READ_ONCE(s[0]) == s1) {
				d[0] = s1;
				return rec_check(dst, size) == d[1] ? 0 : -EBADMSG;
			}
		}
		if ((tries & 63) == 63)
			sched_yield();
		else
			cpu_relax();
	}
	return -EAGAIN;
}

static bool name_ok(const char *name, size_t *len, size_t max)
{
	*len = strnlen(name, max);
	return *len < max;
}

/* A name field from the segment matches @name (@len bytes) and is NUL-terminated. */
static bool name_eq(const char *field, const char *name, size_t len)
{
	return len < WD_NAME_MAX && field[len] == '\0' && memcmp(field, name, len) == 0;
}

/*
 * The full name of tensor record @t (a consistent copy): its field, or its string in the
 * names area @nr, bounds-checked (the area is never rewritten, so no seqlock is needed).
 */
static const char *tensor_name(const struct wd_reg_tensor *t, const struct names_ref *nr,
			       size_t *len)
{
	if (!(t->flags & WD_REG_TENSOR_F_LONG_NAME)) {
		*len = strnlen(t->name, WD_NAME_MAX);
		return *len < WD_NAME_MAX ? t->name : NULL;
	}
	if (t->name_len >= WD_LONG_NAME_MAX || t->name_off >= nr->size ||
	    t->name_len >= nr->size - t->name_off || nr->base[t->name_off + t->name_len] != '\0')
		return NULL;
	*len = t->name_len;
	return nr->base + t->name_off;
}

static bool tensor_name_eq(const struct wd_reg_tensor *t, const struct names_ref *nr,
			   const char *name, size_t len)
{
	size_t n;
	const char *full = tensor_name(t, nr, &n);

	return full && n == len && memcmp(full, name, len) == 0;
}

static uint64_t key_hash(enum kind kind, uint32_t model, uint32_t comp, const char *name,
			 size_t len)
{
	uint64_t seed = ((uint64_t)kind << 58) ^ ((uint64_t)model << 26) ^ comp;

	return XXH3_64bits_withSeed(name, len, seed);
}

/* The record a key names matches the key; the record is a consistent private copy. */
static bool key_match(enum kind kind, const void *rec, uint32_t model, uint32_t comp,
		      const char *name, size_t len, const struct names_ref *nr)
{
	const struct wd_reg_model *m = rec;
	const struct wd_reg_component *c = rec;
	const struct wd_reg_tensor *t = rec;

	switch (kind) {
	case K_MODEL:
		return name_eq(m->name, name, len);
	case K_COMP:
		return c->model == model && name_eq(c->name, name, len);
	case K_TENSOR:
		return t->model == model && t->component == comp &&
		       tensor_name_eq(t, nr, name, len);
	case K_TENSOR_BY_MODEL:
		return t->model == model && tensor_name_eq(t, nr, name, len);
	}
	return false;
}

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

static size_t rec_size(enum kind kind)
{
	if (kind == K_MODEL)
		return sizeof(struct wd_reg_model);
	if (kind == K_COMP)
		return sizeof(struct wd_reg_component);
	return sizeof(struct wd_reg_tensor);
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
 * slot in find(): a reader that sees the entry sees the record written before it.
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
	 * Pairs with load_acquire() of the counts in the reader: a reader that sees a count sees
	 * every record (and index entry) below it.
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

/* ---- reader ---------------------------------------------------------------------------- */

int registry_view_init(struct registry_view *v, const void *base, uint64_t size)
{
	struct wd_reg_hdr h;
	int ret;

	if (!v || !base || ((uintptr_t)base & (WD_CACHELINE - 1)))
		return -EINVAL;
	memset(v, 0, sizeof(*v));
	v->seg.fd = -1;
	if (size < sizeof(h))
		return -EBADMSG;
	/* One copy of the header: checks and uses below all see the same bytes. */
	memcpy(&h, base, sizeof(h));
	if (h.magic != WD_REGISTRY_MAGIC)
		return -EBADMSG;
	if (h.version != WD_ABI_VERSION)
		return -EPROTONOSUPPORT;
	if (h.hdr_size != sizeof(h) || h.model_rec_size != sizeof(struct wd_reg_model) ||
	    h.comp_rec_size != sizeof(struct wd_reg_component) ||
	    h.tensor_rec_size != sizeof(struct wd_reg_tensor) || !h.model_cap || !h.comp_cap ||
	    !h.tensor_cap || h.model_cap > MAX_MODELS || h.comp_cap > MAX_COMPONENTS ||
	    h.tensor_cap > MAX_TENSORS || !h.index_cap || (h.index_cap & (h.index_cap - 1)) ||
	    h.n_counters > WD_REG_COUNTERS)
		return -EBADMSG;
	if (h.seg_size > size)
		return -EOVERFLOW;
	const struct shm_region rg[] = {
		{ 0, sizeof(h), WD_CACHELINE },
		{ h.counters_off, 8ull * h.n_counters, 8 },
		{ h.model_off, (uint64_t)h.model_cap * sizeof(struct wd_reg_model), WD_CACHELINE },
		{ h.comp_off, (uint64_t)h.comp_cap * sizeof(struct wd_reg_component), WD_CACHELINE },
		{ h.tensor_off, (uint64_t)h.tensor_cap * sizeof(struct wd_reg_tensor),
		  WD_CACHELINE },
		{ h.index_off, 8ull * h.index_cap, 8 },
	};
	ret = shm_check_regions(rg, ARRAY_SIZE(rg), h.seg_size);
	if (ret)
		return ret;
	if (h.metrics_off) {
		const struct shm_region all[] = {
			rg[0], rg[1], rg[2], rg[3], rg[4], rg[5],
			{ h.metrics_off, h.metrics_size, WD_CACHELINE },
		};

		if (h.metrics_size != sizeof(struct wd_reg_metrics))
			return -EBADMSG;
		ret = shm_check_regions(all, ARRAY_SIZE(all), h.seg_size);
		if (ret)
			return ret;
	}
	if (h.names_size) {
		const struct shm_region all[] = {
			rg[0], rg[1], rg[2], rg[3], rg[4], rg[5],
			{ h.names_off, h.names_size, 1 },
		};

		ret = shm_check_regions(all, ARRAY_SIZE(all), h.seg_size);
		if (ret)
			return ret;
	}
	v->base = base;
	v->size = size;
	v->model_cap = h.model_cap;
	v->comp_cap = h.comp_cap;
	v->tensor_cap = h.tensor_cap;
	v->index_cap = h.index_cap;
	v->n_counters = h.n_counters;
	v->counters_off = h.counters_off;
	v->model_off = h.model_off;
	v->comp_off = h.comp_off;
	v->tensor_off = h.tensor_off;
	v->index_off = h.index_off;
	v->metrics_off = h.metrics_off;
	v->names_off = h.names_off;
	v->names_size = h.names_size;
	return 0;
}

int registry_attach(int fd, struct registry_view *v)
{
	struct shm_segment seg;
	int ret = shm_segment_map(fd, false, sizeof(struct wd_reg_hdr), &seg);

	if (ret)
		return ret;
	ret = registry_view_init(v, seg.base, seg.size);
	if (ret) {
		/* The caller keeps @fd on failure: unmap without closing it. */
		seg.fd = -1;
		shm_segment_close(&seg);
		return ret;
	}
	v->seg = seg;
	return 0;
}

void registry_detach(struct registry_view *v)
{
	shm_segment_close(&v->seg);
	memset(v, 0, sizeof(*v));
	v->seg.fd = -1;
}

static const struct wd_reg_hdr *vhdr(const struct registry_view *v)
{
	return (const struct wd_reg_hdr *)v->base;
}

uint64_t registry_generation(const struct registry_view *v)
{
	/* Pairs with store_release(generation) in registry_publish(). */
	return load_acquire(&vhdr(v)->generation);
}

void registry_usage(const struct registry_view *v, struct registry_usage *u)
{
	const struct wd_reg_hdr *h = vhdr(v);

	u->models = READ_ONCE(h->model_count);
	u->comps = READ_ONCE(h->comp_count);
	u->tensors = READ_ONCE(h->tensor_count);
	u->model_cap = v->model_cap;
	u->comp_cap = v->comp_cap;
	u->tensor_cap = v->tensor_cap;
	u->names_used = READ_ONCE(h->names_used);
	u->names_size = v->names_size;
}

uint64_t registry_heartbeat_read(const struct registry_view *v)
{
	return READ_ONCE(vhdr(v)->heartbeat);
}

bool registry_retired(const struct registry_view *v)
{
	return load_acquire(&vhdr(v)->flags) & WD_REG_F_RETIRED;
}

const struct wd_reg_metrics *registry_view_metrics(const struct registry_view *v)
{
	return v->metrics_off ? (const struct wd_reg_metrics *)(v->base + v->metrics_off) : NULL;
}

uint64_t registry_counter(const struct registry_view *v, unsigned int ctr)
{
	if (ctr >= v->n_counters)
		return 0;
	return READ_ONCE(((const uint64_t *)(v->base + v->counters_off))[ctr]);
}

/* Geometry of the table that holds records of @kind, from the view's private copy. */
struct table {
	const uint8_t *recs;
	uint32_t cap;
	uint32_t count;
	size_t size;
};

static int table_of(const struct registry_view *v, enum kind kind, struct table *t)
{
	const struct wd_reg_hdr *h = vhdr(v);
	uint32_t count;

	/* Pairs with store_release() of the counts in registry_publish(). */
	if (kind == K_MODEL) {
		t->recs = v->base + v->model_off;
		t->cap = v->model_cap;
		count = load_acquire(&h->model_count);
	} else if (kind == K_COMP) {
		t->recs = v->base + v->comp_off;
		t->cap = v->comp_cap;
		count = load_acquire(&h->comp_count);
	} else {
		t->recs = v->base + v->tensor_off;
		t->cap = v->tensor_cap;
		count = load_acquire(&h->tensor_count);
	}
	t->size = rec_size(kind);
	if (count > t->cap)
		return -EBADMSG;
	t->count = count;
	return 0;
}

/* Content checks on a consistent copy: names terminated, ranks in range. */
static int rec_sane(enum kind kind, const void *rec)
{
	const struct wd_reg_model *m = rec;
	const struct wd_reg_component *c = rec;
	const struct wd_reg_tensor *t = rec;

	switch (kind) {
	case K_MODEL:
		return memchr(m->name, 0, WD_NAME_MAX) && memchr(m->arch, 0, WD_ARCH_MAX) ? 0
											 : -EBADMSG;
	case K_COMP:
		return memchr(c->name, 0, WD_NAME_MAX) ? 0 : -EBADMSG;
	default:
		return memchr(t->name, 0, WD_NAME_MAX) && t->rank <= WD_SHAPE_MAX ? 0 : -EBADMSG;
	}
}

static int read_rec(const struct table *t, enum kind kind, uint32_t id, void *out)
{
	int ret = rec_load(t->recs + (size_t)id * t->size, t->size, out);

	return ret ? ret : rec_sane(kind, out);
}

static int read_by_id(const struct registry_view *v, enum kind kind, uint32_t id, void *out)
{
	struct table t;
	int ret = table_of(v, kind, &t);

	if (ret)
		return ret;
	if (id >= t.count)
		return -ENOENT;
	return read_rec(&t, kind, id, out);
}

int registry_read_model(const struct registry_view *v, uint32_t id, struct wd_reg_model *out)
{
	return read_by_id(v, K_MODEL, id, out);
}

int registry_read_component(const struct registry_view *v, uint32_t id,
			    struct wd_reg_component *out)
{
	return read_by_id(v, K_COMP, id, out);
}

int registry_read_tensor(const struct registry_view *v, uint32_t id, struct wd_reg_tensor *out)
{
	return read_by_id(v, K_TENSOR, id, out);
}

static struct names_ref view_names(const struct registry_view *v)
{
	return (struct names_ref){ (const char *)v->base + v->names_off, v->names_size };
}

const char *registry_tensor_name(const struct registry_view *v, const struct wd_reg_tensor *t,
				 size_t *len)
{
	const struct names_ref nr = view_names(v);

	return tensor_name(t, &nr, len);
}

/* True when one of the 8 bytes of @w is 0 (the classic has-zero-byte test). */
static bool word_has_nul(uint64_t w)
{
	return ((w - 0x0101010101010101ull) & ~w & 0x8080808080808080ull) != 0;
}

int registry_read_tensor_loc(const struct registry_view *v, uint32_t id,
			     struct registry_tensor_loc *out)
{
	const struct wd_reg_tensor *t;
	struct table tb;
	int ret = table_of(v, K_TENSOR, &tb);

	if (ret)
		return ret;
	if (id >= tb.count)
		return -ENOENT;
	t = (const struct wd_reg_tensor *)(tb.recs + (size_t)id * tb.size);
	for (unsigned int tries = 0; tries < READ_RETRIES; tries++) {
		/* Pairs with the writer's store_release(seq) that ended the last update. */
		uint64_t s1 = load_acquire(&t->seq);
		const uint64_t *src = (const uint64_t *)t->name;
		unsigned int rank, nw = 0;
		uint64_t name_off = 0;
		uint32_t name_len = 0;
		uint16_t flags;
		bool nul = false;

		if (!(s1 & 1)) {
			/*
			 * The words are read with READ_ONCE (relaxed atomic loads) because the
			 * daemon may be rewriting them; anything read here is used only after the
			 * sequence check below proves it belongs to one stable version.
			 */
			out->model = READ_ONCE(t->model);
			out->component = READ_ONCE(t->component);
			out->dtype = READ_ONCE(t->dtype);
			out->rank = READ_ONCE(t->rank);
			out->resident = READ_ONCE(t->resident);
			out->nbytes = READ_ONCE(t->nbytes);
			out->host_offset = READ_ONCE(t->host_offset);
			flags = READ_ONCE(t->flags);
			if (flags & WD_REG_TENSOR_F_LONG_NAME) {
				name_off = READ_ONCE(t->name_off);
				name_len = READ_ONCE(t->name_len);
			}
			rank = out->rank <= WD_SHAPE_MAX ? out->rank : WD_SHAPE_MAX;
			for (unsigned int d = 0; d < rank; d++)
				out->shape[d] = READ_ONCE(t->shape[d]);
			/* The name word by word, up to and including the word with its NUL. */
			while (nw < WD_NAME_MAX / 8 && !nul) {
				uint64_t w = READ_ONCE(src[nw]);

				memcpy(out->name + 8 * nw++, &w, 8);
				nul = word_has_nul(w);
			}
			/* Pairs with the writer's smp_wmb() after it made seq odd. */
			smp_rmb();
			if (READ_ONCE(t->seq) == s1) {
				if (out->rank > WD_SHAPE_MAX || !nul)
					return -EBADMSG;
				out->name_len = (uint32_t)strnlen(out->name, 8 * nw);
				out->long_name = NULL;
				if (flags & WD_REG_TENSOR_F_LONG_NAME) {
					struct wd_reg_tensor img = { .flags = flags,
								     .name_off = name_off,
								     .name_len = name_len };
					const struct names_ref nr = view_names(v);
					size_t len;

					out->long_name = tensor_name(&img, &nr, &len);
					if (!out->long_name)
						return -EBADMSG;
					out->name_len = (uint32_t)len;
				}
				return 0;
			}
		}
		if ((tries & 63) == 63)
			sched_yield();
		else
			cpu_relax();
	}
	return -EAGAIN;
}

union any_rec {
	struct wd_reg_model m;
	struct wd_reg_component c;
	struct wd_reg_tensor t;
};

/*
 * Probes the index for a key. The probe is bounded by the table size (a hostile segment can
 * fill every slot), every entry's record index is checked against the table's capacity and
 * published count, and the record's own fields must match the key. For K_TENSOR_BY_MODEL the
 * probe continues past the first match to report -ENOTUNIQ.
 */
static int find(const struct registry_view *v, enum kind kind, uint32_t model, uint32_t comp,
		const char *name, uint32_t *id, void *out)
{
	const uint64_t *index = (const uint64_t *)(v->base + v->index_off);
	enum kind rec_kind = kind == K_TENSOR_BY_MODEL ? K_TENSOR : kind;
	uint32_t mask = v->index_cap - 1;
	union any_rec buf, hit;
	const struct names_ref nr = view_names(v);
	uint32_t found = WD_ID_NONE;
	struct table t;
	uint64_t h;
	uint32_t tag;
	size_t len;
	int ret;

	if (!name)
		return -EINVAL;
	if (!name_ok(name, &len, rec_kind == K_TENSOR ? WD_LONG_NAME_MAX : WD_NAME_MAX))
		return -ENAMETOOLONG;
	ret = table_of(v, rec_kind, &t);
	if (ret)
		return ret;
	h = key_hash(kind, model, comp, name, len);
	tag = (uint32_t)(h >> 32);
	for (uint32_t p = 0; p < v->index_cap; p++) {
		/* Pairs with store_release() of the slot in index_set(). */
		uint64_t e = load_acquire(&index[(h + p) & mask]);
		uint32_t ref = (uint32_t)e, idx = ref & REF_IDX_MASK;

		if (!e)
			break;
		if ((uint32_t)(e >> 32) != tag || ref >> REF_KIND_SHIFT != (uint32_t)kind)
			continue;
		if (idx >= t.cap)
			return -EBADMSG;
		if (idx >= t.count)
			continue;	/* added but not yet published */
		ret = read_rec(&t, rec_kind, idx, &buf);
		if (ret)
			return ret;
		if (!key_match(kind, &buf, model, comp, name, len, &nr))
			continue;
		if (found != WD_ID_NONE)
			return -ENOTUNIQ;
		found = idx;
		hit = buf;
		if (kind != K_TENSOR_BY_MODEL)
			break;
	}
	if (found == WD_ID_NONE)
		return -ENOENT;
	if (id)
		*id = found;
	if (out)
		memcpy(out, &hit, t.size);
	return 0;
}

int registry_find_model(const struct registry_view *v, const char *name, uint32_t *id,
			struct wd_reg_model *out)
{
	return find(v, K_MODEL, WD_ID_NONE, WD_ID_NONE, name, id, out);
}

int registry_find_component(const struct registry_view *v, uint32_t model, const char *name,
			    uint32_t *id, struct wd_reg_component *out)
{
	return find(v, K_COMP, model, WD_ID_NONE, name, id, out);
}

int registry_find_tensor(const struct registry_view *v, uint32_t model, uint32_t component,
			 const char *name, uint32_t *id, struct wd_reg_tensor *out)
{
	if (component == WD_ID_NONE)
		return find(v, K_TENSOR_BY_MODEL, model, WD_ID_NONE, name, id, out);
	return find(v, K_TENSOR, model, component, name, id, out);
}
