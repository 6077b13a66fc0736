/*
 * libweightd: MODEL arguments to registry ids (LOOKUP when the registry does not have the
 * name) and a request's target (model and component ids: client_set_target(), then the
 * round trip of client_request.c); and the registry reads that cost no round trip: models,
 * components, tensors, a tensor's bytes in the host cache, and the bulk tensor table. The
 * registry is semi-trusted: every record is copied under its seqlock and checked (rank,
 * dtype, sizes, offsets inside this process's mappings) before anything is built from it.
 */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "weightd.h"

#include "core/base/common.h"
#include "core/format/st.h"
#include "shm/abi.h"
#include "shm/barrier.h"
#include "shm/client_internal.h"
#include "shm/registry.h"

/* One LOOKUP round trip for @model (a name or an absolute path). */
static int lookup_daemon(struct weightd *w, const char *model, uint32_t *id)
{
	struct request rq = { .sqe = { .opcode = WD_OP_LOOKUP, .model = WD_ID_NONE,
				       .component = WD_ID_NONE } };
	int ret;

	rq.payload = model;
	rq.payload_len = strlen(model);
	ret = client_simple(w, &rq, "lookup", model);
	if (ret < 0)
		return ret;
	*id = (uint32_t)ret;
	return 0;
}

/*
 * Where a MODEL argument of the API becomes a registry id; every call that names a model
 * comes here. A name published in the registry is read there, with no round trip. Anything
 * else goes to the daemon (LOOKUP), which knows names published since this client last
 * looked and resolves a path -- of a model it scanned or of one of its files -- through its
 * catalog (catalog_resolve(), the one rule for paths). The daemon's working directory is not
 * the caller's: a path with a slash that does not start with one is made absolute here first.
 * With @paths_only (the registry reads, which promise no round trip for a name) a name with
 * no slash that the registry lacks is -ENOENT at once.
 */
static int lookup_id_ex(struct weightd *w, const char *model, uint32_t *id, bool paths_only)
{
	char cwd[PATH_MAX], abs[PATH_MAX + WD_NAME_MAX + 1];
	const char *ask = model;
	int ret;

	ret = client_check_name(model, "model name");
	if (ret)
		return ret;
	ret = registry_find_model(&w->reg, model, id, NULL);
	if (ret != -ENOENT) {
		if (ret)
			return client_fail(ret, "registry lookup of model %s: %s", model,
					   strerror(-ret));
		return 0;
	}
	if (model[0] != '/' && strchr(model, '/')) {
		if (!realpath(model, abs)) {
			if (!getcwd(cwd, sizeof(cwd)))
				return client_fail(-errno,
						   "model path %s: the working directory: %s",
						   model, strerror(errno));
			snprintf(abs, sizeof(abs), "%s/%s", cwd, model);
		}
		if (strlen(abs) >= WD_NAME_MAX)
			return client_fail(-ENAMETOOLONG, "model path %s (%s) longer than %u bytes",
					   model, abs, WD_NAME_MAX - 1);
		ask = abs;
	} else if (paths_only && model[0] != '/') {
		return client_fail(-ENOENT, "model %s: not in the registry", model);
	}
	ret = lookup_daemon(w, ask, id);
	if (ret == -ENOENT)
		return client_fail(ret,
				   "model %s: not in the registry, and not the path of a model the "
				   "daemon scanned",
				   model);
	return ret;
}

int client_lookup_id(struct weightd *w, const char *model, uint32_t *id)
{
	return lookup_id_ex(w, model, id, false);
}

/* For the registry reads: a name is looked up in the registry only, a path by the daemon. */
int client_find_model(struct weightd *w, const char *model, uint32_t *id, struct wd_reg_model *rec)
{
	int ret = lookup_id_ex(w, model, id, true);

	if (ret || !rec)
		return ret;
	ret = registry_read_model(&w->reg, *id, rec);
	if (ret)
		return client_fail(ret, "model %s (id %u): %s", model, *id,
				   ret == -ENOENT ? "not in the registry" : strerror(-ret));
	return 0;
}

int weightd_lookup(struct weightd *w, const char *model, uint32_t *model_id)
{
	uint32_t id;
	int ret;

	if (!w)
		return client_fail(-EINVAL, "NULL handle");
	ret = client_lookup_id(w, model, &id);
	if (ret)
		return ret;
	if (model_id)
		*model_id = id;
	return 0;
}

/* ---- registry reads ---------------------------------------------------------------------- */

static void copy_name(char *dst, size_t size, const char *src, size_t src_size)
{
	size_t n = strnlen(src, src_size);

	if (n >= size)
		n = size - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

static int registry_error(int ret, const char *what, uint32_t id)
{
	if (ret == -ENOENT)
		return client_fail(ret, "no %s %u in the registry", what, id);
	return client_fail(ret, "reading %s %u from the registry: %s", what, id, strerror(-ret));
}

int weightd_model(struct weightd *w, uint32_t id, struct weightd_model_info *out)
{
	struct wd_reg_model m;
	int ret;

	if (!w || !out)
		return client_fail(-EINVAL, "NULL argument");
	ret = registry_read_model(&w->reg, id, &m);
	if (ret)
		return registry_error(ret, "model", id);
	*out = (struct weightd_model_info){
		.id = id,
		.n_components = m.n_components,
		.n_tensors = m.n_tensors,
		.flags = m.flags,
		.pins = m.pins,
		.nbytes = m.nbytes,
		.fingerprint = m.fingerprint,
	};
	copy_name(out->name, sizeof(out->name), m.name, sizeof(m.name));
	copy_name(out->arch, sizeof(out->arch), m.arch, sizeof(m.arch));
	return 0;
}

int weightd_component(struct weightd *w, uint32_t id, struct weightd_component_info *out)
{
	struct wd_reg_component c;
	int ret;

	if (!w || !out)
		return client_fail(-EINVAL, "NULL argument");
	ret = registry_read_component(&w->reg, id, &c);
	if (ret)
		return registry_error(ret, "component", id);
	*out = (struct weightd_component_info){
		.id = id,
		.model = c.model,
		.n_tensors = c.n_tensors,
		.nbytes = c.nbytes,
		.fingerprint = c.fingerprint,
	};
	copy_name(out->name, sizeof(out->name), c.name, sizeof(c.name));
	for (unsigned int t = 0; t < WD_TIER_MAX; t++) {
		out->tiers[t].state = c.tiers[t].state;
		out->tiers[t].error = c.tiers[t].error;
		out->tiers[t].done = c.tiers[t].done;
		out->tiers[t].total = c.tiers[t].total;
	}
	return 0;
}

/* Copies registry record @t (index @id) into @out, host_state aside. -EBADMSG if corrupt. */
static int fill_tensor_info(uint32_t id, const struct wd_reg_tensor *t,
			    struct weightd_tensor_info *out)
{
	const struct st_dtype_info *dt;

	if (t->rank > WD_SHAPE_MAX || t->dtype >= ST_DTYPE_COUNT)
		return client_fail(-EBADMSG, "registry tensor %u has rank %u, dtype %u", id,
				   t->rank, t->dtype);
	*out = (struct weightd_tensor_info){
		.id = id,
		.model = t->model,
		.component = t->component,
		.dtype = t->dtype,
		.rank = t->rank,
		.nbytes = t->nbytes,
		.resident = t->resident,
		.host_offset = t->host_offset,
	};
	memcpy(out->shape, t->shape, sizeof(uint64_t) * t->rank);
	dt = st_dtype_info((enum st_dtype)t->dtype);
	copy_name(out->dtype_name, sizeof(out->dtype_name), dt ? dt->name : "?", 16);
	return 0;
}

int weightd_tensor(struct weightd *w, const char *model, const char *component,
		   const char *name, struct weightd_tensor_info *out)
{
	struct wd_reg_component c;
	struct wd_reg_tensor t;
	uint32_t mid, cid = WD_ID_NONE, tid;
	int ret;

	if (!w || !out)
		return client_fail(-EINVAL, "NULL argument");
	if ((ret = client_check_tensor_name(name)) ||
	    (ret = client_find_model(w, model, &mid, NULL)))
		return ret;
	if (component) {
		if ((ret = client_check_name(component, "component name")))
			return ret;
		ret = registry_find_component(&w->reg, mid, component, &cid, NULL);
		if (ret)
			return client_fail(ret, "model %s, component %s: %s", model, component,
					   ret == -ENOENT ? "no such component" : strerror(-ret));
	}
	ret = registry_find_tensor(&w->reg, mid, cid, name, &tid, &t);
	if (ret == -ENOTUNIQ)
		return client_fail(ret,
				   "model %s: tensor %s exists in several components; name one",
				   model, name);
	if (ret)
		return client_fail(ret, "model %s: tensor %s: %s", model, name,
				   ret == -ENOENT ? "no such tensor" : strerror(-ret));
	if ((ret = fill_tensor_info(tid, &t, out)))
		return ret;
	ret = registry_read_component(&w->reg, t.component, &c);
	out->host_state = ret ? WEIGHTD_ABSENT : c.tiers[WD_TIER_HOST].state;
	return 0;
}

int weightd_registry_usage(struct weightd *w, struct weightd_registry_usage *out)
{
	struct registry_usage u;

	if (!w || !out)
		return client_fail(-EINVAL, "NULL argument");
	registry_usage(&w->reg, &u);
	*out = (struct weightd_registry_usage){
		.models = u.models, .model_cap = u.model_cap,
		.components = u.comps, .component_cap = u.comp_cap,
		.tensors = u.tensors, .tensor_cap = u.tensor_cap,
		.names_used = u.names_used, .names_size = u.names_size,
	};
	return 0;
}

int weightd_tensor_name(struct weightd *w, uint32_t id, char *buf, size_t size)
{
	struct wd_reg_tensor t;
	const char *name;
	size_t len;
	int ret;

	if (!w || (!buf && size))
		return client_fail(-EINVAL, "NULL argument");
	ret = registry_read_tensor(&w->reg, id, &t);
	if (ret)
		return registry_error(ret, "tensor", id);
	name = registry_tensor_name(&w->reg, &t, &len);
	if (!name)
		return client_fail(
			-EBADMSG, "tensor %u: its name lies outside the registry's names area", id);
	if (len + 1 > size)
		return client_fail(-ERANGE,
				   "tensor %u: its name takes %zu bytes and a NUL, room for %zu",
				   id, len, size);
	memcpy(buf, name, len + 1);
	return (int)len;
}

int weightd_tensor_list(struct weightd *w, const char *model, const char *component,
			struct weightd_tensor_info *out, char *names, uint32_t max)
{
	struct wd_reg_component c;
	struct wd_reg_tensor t;
	uint32_t mid, cid = WD_ID_NONE, state_cid = WD_ID_NONE, state = WEIGHTD_ABSENT;
	uint32_t n = 0;
	int ret;

	if (!w || (!out && max))
		return client_fail(-EINVAL, "NULL argument");
	if ((ret = client_find_model(w, model, &mid, NULL)))
		return ret;
	if (component) {
		if ((ret = client_check_name(component, "component name")))
			return ret;
		ret = registry_find_component(&w->reg, mid, component, &cid, NULL);
		if (ret)
			return client_fail(ret, "model %s, component %s: %s", model, component,
					   ret == -ENOENT ? "no such component" : strerror(-ret));
	}
	/*
	 * The registry has no per-component list: one pass over the published tensor records
	 * (each a consistent seqlock copy) finds the target's, where a name lookup per tensor
	 * would cost a hash probe and a library call each.
	 */
	for (uint32_t id = 0;; id++) {
		ret = registry_read_tensor(&w->reg, id, &t);
		if (ret == -ENOENT)
			break;
		if (ret)
			return client_fail(ret, "reading tensor %u from the registry: %s", id,
					   strerror(-ret));
		if (t.model != mid || (cid != WD_ID_NONE && t.component != cid))
			continue;
		if (n < max) {
			if ((ret = fill_tensor_info(id, &t, &out[n])))
				return ret;
			/* Tensors of one component are adjacent: read its state once per run. */
			if (t.component != state_cid) {
				state_cid = t.component;
				ret = registry_read_component(&w->reg, t.component, &c);
				state = ret ? WEIGHTD_ABSENT : c.tiers[WD_TIER_HOST].state;
			}
			out[n].host_state = state;
			if (names && (t.flags & WD_REG_TENSOR_F_LONG_NAME))
				return client_fail(-ENAMETOOLONG, "model %s: tensor %u has a name of "
						   "%u bytes, more than the %u of a "
						   "weightd_tensor_list() slot; weightd_tensor_name() "
						   "or weightd_tensor_table() give it whole",
						   model, id, t.name_len, WEIGHTD_NAME_MAX - 1);
			if (names)
				copy_name(names + (size_t)n * WEIGHTD_NAME_MAX, WEIGHTD_NAME_MAX,
					  t.name, sizeof(t.name));
		}
		if (n == INT32_MAX)
			return client_fail(-EOVERFLOW, "model %s lists more than %d tensors", model,
					   INT32_MAX);
		n++;
	}
	return (int)n;
}


const void *weightd_tensor_data(struct weightd *w, const struct weightd_tensor_info *t)
{
	if (!w || !t) {
		client_fail(-EINVAL, "NULL argument");
		errno = EINVAL;
		return NULL;
	}
	if (!(t->resident & (1u << WD_TIER_HOST))) {
		client_fail(-ENODATA, "tensor %u is not resident in the host cache (load it first)",
			    t->id);
		errno = ENODATA;
		return NULL;
	}
	/* The registry is semi-trusted: the whole tensor must lie inside our mapping. */
	if (!w->host_seg.base || t->host_offset > w->host_seg.size ||
	    t->nbytes > w->host_seg.size - t->host_offset) {
		client_fail(-EFAULT,
			    "tensor %u: host offset %llu + %llu bytes lies outside the host cache "
			    "(%zu bytes)",
			    t->id, (unsigned long long)t->host_offset,
			    (unsigned long long)t->nbytes, w->host_seg.size);
		errno = EFAULT;
		return NULL;
	}
	return (const char *)w->host_seg.base + t->host_offset;
}


/* ---- bulk tensor table ------------------------------------------------------------------- */

static_assert(sizeof(((struct weightd_tensor_loc *)0)->shape) == WD_SHAPE_MAX * sizeof(uint64_t),
	      "tensor_loc rank");

/*
 * The model and component fields of published tensor record @id, read without the seqlock:
 * a record never changes owner once published (records are never removed or renamed, only
 * their location and form are rewritten, with the same owner words), so a relaxed read of
 * the two words is exact for a stable segment. It only filters: a record it selects is then
 * copied consistently and checked, so a hostile segment can at worst hide tensors here.
 */
static void peek_owner(const struct registry_view *v, uint32_t id, uint32_t *model,
		       uint32_t *component)
{
	const struct wd_reg_tensor *t = (const struct wd_reg_tensor *)(v->base + v->tensor_off) + id;

	*model = READ_ONCE(t->model);
	*component = READ_ONCE(t->component);
}

/*
 * A fresh process reads the registry's records from memory, not from its caches, and the
 * hardware prefetcher does not follow a stride of whole records across pages: the pass
 * asks for the lines registry_read_tensor_loc() reads of the record TABLE_PREFETCH ahead
 * (its head with the first dimensions, and the start of its name). Measured on 1,000
 * records in a fresh process: 170 -> 130 us. A prefetch never faults, so the address may
 * lie past the published records.
 */
#define TABLE_PREFETCH 8u

static void prefetch_tensor(const struct registry_view *v, uint32_t id)
{
	const char *r = (const char *)(v->base + v->tensor_off) +
			(size_t)id * sizeof(struct wd_reg_tensor);

	__builtin_prefetch(r);
	__builtin_prefetch(r + offsetof(struct wd_reg_tensor, name) / 64 * 64);
	__builtin_prefetch(r + offsetof(struct wd_reg_tensor, name) / 64 * 64 + 64);
}

/* The bytes @t's shape and dtype make (dtype < ST_DTYPE_COUNT); UINT64_MAX on overflow or a
 * fraction of a byte, which no nbytes equals. */
static uint64_t shape_bytes(const struct registry_tensor_loc *t)
{
	uint64_t bits = st_dtype_info((enum st_dtype)t->dtype)->bits;

	for (unsigned int d = 0; d < t->rank; d++)
		if (__builtin_mul_overflow(bits, t->shape[d], &bits))
			return UINT64_MAX;
	return bits % 8 ? UINT64_MAX : bits / 8;
}

/* What one weightd_tensor_table() pass has gathered so far. */
struct table_pass {
	struct weightd_tensor_loc *out;
	uint32_t max;
	char *names;
	size_t names_size;
	uint64_t lo, hi;		/* the host-cache extent of the listed bytes */
	uint64_t names_len;		/* name bytes needed, NULs included */
	uint32_t n;			/* tensors listed (or that would be, past @max) */
	uint32_t last_comp, n_comps;
};

/*
 * Checks host-resident record @t (tensor @id of @model) against everything that could make
 * a view of it unsafe: rank, dtype, shape x dtype = nbytes, and its bytes inside this
 * process's mapping of the host cache. Returns 0, -EBADMSG or -EFAULT with the message.
 */
static int check_loc(const struct weightd *w, const char *model, uint32_t id,
		     const struct registry_tensor_loc *t)
{
	uint64_t need;

	if (t->rank > WD_SHAPE_MAX || t->dtype >= ST_DTYPE_COUNT)
		return client_fail(-EBADMSG, "registry tensor %u (%.64s) has rank %u, dtype %u",
				   id, t->name, t->rank, t->dtype);
	/* A view is shaped from shape and dtype: they must account for nbytes exactly. */
	need = shape_bytes(t);
	if (need != t->nbytes)
		return client_fail(-EBADMSG, "model %s: tensor %s: shape and dtype %u make %llu "
				   "bytes, the registry says %llu", model, t->name, t->dtype,
				   (unsigned long long)need, (unsigned long long)t->nbytes);
	/* The registry is semi-trusted: every byte listed must lie inside our mapping. */
	if (!w->host_seg.base || t->host_offset > w->host_seg.size ||
	    t->nbytes > w->host_seg.size - t->host_offset)
		return client_fail(-EFAULT, "model %s: tensor %s: host offset %llu + %llu bytes "
				   "lies outside the host cache (%zu bytes)", model, t->name,
				   (unsigned long long)t->host_offset,
				   (unsigned long long)t->nbytes, w->host_seg.size);
	return 0;
}

/*
 * Adds checked record @t to the pass: widens the extent, counts its component, and writes
 * its record and name while there is room (the counts go on past it, so that -ENOBUFS can
 * say how much is needed). Returns 0 or -EOVERFLOW.
 */
static int add_loc(struct table_pass *p, const char *model, const struct registry_tensor_loc *t)
{
	size_t len = t->name_len;

	if (t->nbytes) {
		uint64_t end = t->host_offset + t->nbytes;

		p->lo = t->host_offset < p->lo ? t->host_offset : p->lo;
		p->hi = end > p->hi ? end : p->hi;
	}
	if (t->component != p->last_comp) {
		/* Tensors of one component are adjacent: this counts components exactly
		 * unless the registry interleaves them, where it over-counts (safe). */
		p->last_comp = t->component;
		p->n_comps++;
	}
	if (p->n < p->max && p->names_len + len + 1 <= p->names_size) {
		struct weightd_tensor_loc *o = &p->out[p->n];

		*o = (struct weightd_tensor_loc){
			.offset = t->host_offset,	/* made relative by finish_table() */
			.nbytes = t->nbytes,
			.dtype = t->dtype,
			.rank = t->rank,
			.name_off = (uint32_t)p->names_len,
			.name_len = (uint32_t)len,
		};
		memcpy(o->shape, t->shape, sizeof(uint64_t) * t->rank);
		memcpy(p->names + p->names_len, t->long_name ? t->long_name : t->name, len);
		p->names[p->names_len + len] = '\0';
	}
	p->names_len += len + 1;
	if (p->names_len > UINT32_MAX)
		return client_fail(-EOVERFLOW, "model %s: the tensor names take more than 4 GiB",
				   model);
	p->n++;
	return 0;
}

/* Fills @tab from a complete pass: the counts, and the extent (page-aligned) with every
 * record's offset made relative to its base. Returns 0, or -ENOBUFS when the room was short. */
static int finish_table(struct weightd *w, const char *model, struct table_pass *p,
			struct weightd_tensor_table *tab)
{
	uint64_t lo = 0;

	tab->n = p->n;
	tab->n_components = p->n_comps;
	tab->names_len = p->names_len;
	if (p->n > p->max || p->names_len > p->names_size)
		return client_fail(-ENOBUFS, "model %s: %u tensors and %llu name bytes need "
				   "listing, room for %u and %zu", model, p->n,
				   (unsigned long long)p->names_len, p->max, p->names_size);
	tab->host_fd = w->host_seg.fd;
	if (p->hi) {
		/* Page-aligned, so that a binding can map the extent at host_offset itself. */
		lo = p->lo & ~((uint64_t)sysconf(_SC_PAGESIZE) - 1);
		tab->base = (const char *)w->host_seg.base + lo;
		tab->nbytes = p->hi - lo;
		tab->host_offset = lo;
	}
	for (uint32_t i = 0; i < p->n; i++)
		p->out[i].offset = p->out[i].nbytes ? p->out[i].offset - lo : 0;
	return 0;
}

int weightd_tensor_table(struct weightd *w, const char *model, const char *component,
			 struct weightd_tensor_loc *out, uint32_t max, char *names,
			 size_t names_size, struct weightd_tensor_table *tab)
{
	struct table_pass p = { .out = out, .max = max, .names = names,
				.names_size = names_size, .lo = UINT64_MAX,
				.last_comp = WD_ID_NONE };
	const struct wd_reg_hdr *h;
	struct wd_reg_model m;
	struct wd_reg_component c;
	struct registry_tensor_loc t;
	uint32_t mid, cid = WD_ID_NONE, want, count, seen = 0, absent = 0;
	int ret;

	if (!w || !tab || (!out && max) || (!names && names_size))
		return client_fail(-EINVAL, "NULL argument");
	memset(tab, 0, sizeof(*tab));
	if ((ret = client_find_model(w, model, &mid, &m)))
		return ret;
	want = m.n_tensors;
	if (component) {
		if ((ret = client_check_name(component, "component name")))
			return ret;
		ret = registry_find_component(&w->reg, mid, component, &cid, &c);
		if (ret)
			return client_fail(ret, "model %s, component %s: %s", model, component,
					   ret == -ENOENT ? "no such component" : strerror(-ret));
		want = c.n_tensors;
	}
	/*
	 * One pass over the published tensor records, as weightd_tensor_list() makes, but only
	 * the target's are read (the owner words filter the rest), and the pass ends once the
	 * target's count is reached: the daemon adds a component's tensors together, so a model
	 * early in the registry costs no scan of the models after it.
	 *
	 * Each record is read in place under its seqlock, only the words a view needs
	 * (registry_read_tensor_loc()): no copy of the 512-byte record and no checksum, which
	 * would need all of it. Nothing is lost to that: the checksum guards against a record
	 * damaged in a way the seqlock cannot see, and every field used here is checked
	 * (check_loc()) against what can make a view unsafe -- rank, dtype, shape x dtype =
	 * nbytes, and the bytes inside this process's mapping of the host cache -- so a damaged
	 * or forged record (a forger can compute a checksum as well) yields at worst a wrong view
	 * of host-cache bytes, never one outside the mapping.
	 */
	h = (const struct wd_reg_hdr *)w->reg.base;
	/* Pairs with store_release() of the counts in registry_publish(). */
	count = load_acquire(&h->tensor_count);
	if (count > w->reg.tensor_cap)
		return client_fail(-EBADMSG, "the registry publishes %u tensors, it has room for "
				   "%u", count, w->reg.tensor_cap);
	for (uint32_t id = 0; id < count && seen < want; id++) {
		uint32_t tm, tc;

		prefetch_tensor(&w->reg, id + TABLE_PREFETCH);
		peek_owner(&w->reg, id, &tm, &tc);
		if (tm != mid || (cid != WD_ID_NONE && tc != cid))
			continue;
		ret = registry_read_tensor_loc(&w->reg, id, &t);
		if (ret)
			return client_fail(ret, "reading tensor %u from the registry: %s", id,
					   strerror(-ret));
		if (t.model != mid || (cid != WD_ID_NONE && t.component != cid))
			continue;
		seen++;
		if (!(t.resident & (1u << WD_TIER_HOST))) {
			absent++;
			continue;
		}
		if ((ret = check_loc(w, model, id, &t)) || (ret = add_loc(&p, model, &t)))
			return ret;
	}
	tab->absent = absent + (want > seen ? want - seen : 0);
	return finish_table(w, model, &p, tab);
}

/*
 * Fills the target of a model/component request with registry ids: the model is resolved in
 * the registry (or with a LOOKUP round trip when it is not published there yet), the
 * component in the registry only. Requests always carry ids, never names, because the
 * daemon's worker ops (VALIDATE, META_*) accept only ids.
 */
int client_set_target(struct weightd *w, struct request *rq, const char *model,
		      const char *component)
{
	uint32_t id;
	int ret;

	rq->sqe.model = WD_ID_NONE;
	rq->sqe.component = WD_ID_NONE;
	ret = client_lookup_id(w, model, &id);
	if (ret)
		return ret;
	rq->sqe.model = id;
	if (!component)
		return 0;
	ret = client_check_name(component, "component name");
	if (ret)
		return ret;
	ret = registry_find_component(&w->reg, id, component, &rq->sqe.component, NULL);
	if (ret)
		return client_fail(ret, "model %s, component %s: %s", model, component,
				   ret == -ENOENT ? "no such component" : strerror(-ret));
	return 0;
}

int client_target_op(struct weightd *w, uint8_t op, const char *model, const char *component,
		     unsigned int tier, uint8_t flags, struct reply *rp)
{
	struct request rq = { .sqe = { .opcode = op, .tier = (uint16_t)tier, .flags = flags } };
	int ret;

	if (!w)
		return client_fail(-EINVAL, "NULL handle");
	ret = client_check_tier(tier);
	if (ret)
		return ret;
	ret = client_set_target(w, &rq, model, component);
	if (ret)
		return ret;
	return client_submit_wait(w, &rq, rp);
}
