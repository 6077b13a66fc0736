/*
 * The registry segment, the readers' side (clients and the daemon's own views): checking a
 * mapping's header (registry_view_init()), consistent copies of records under the seqlock,
 * and lookups by name through the index. Everything read from the segment is checked before
 * use: a reader trusts no size or offset it did not bound. The writer is shm/registry.c.
 */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/common.h"
#include "shm/barrier.h"
#include "shm/registry.h"
#include "shm/registry_rec.h"

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
	/* Pairs with store_release(generation) in registry_publish() (registry.c). */
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

	/* Pairs with store_release() of the counts in registry_publish() (registry.c). */
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
		/* Pairs with store_release() of the slot in index_set() (registry.c). */
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

