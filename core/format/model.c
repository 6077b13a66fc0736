/*
 * Model formats: describing a model's files, reading them, and checking that the layout
 * files (index JSON, model_index.json) agree with the safetensors they point at.
 *
 * The description step is separate from reading so that the scanner can describe a whole
 * tree first, decide which files changed, and read only those in parallel. Everything a
 * reader needs to judge a broken model ends up in model.error, one line per problem.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/format/arch.h"
#include "core/base/common.h"
#include "core/format/model.h"
#include "core/base/file.h"

/* An index or model_index.json larger than this is refused rather than read into memory. */
#define JSON_MAX_BYTES (64u << 20)
/* Problems listed per component before the rest are only counted. */
#define ERR_MAX_LINES 32

static const char *const format_names[] = {
	[MODEL_SINGLE] = "safetensors",
	[MODEL_SHARDED] = "sharded",
	[MODEL_DIFFUSERS] = "diffusers",
};

const char *model_format_name(int format)
{
	if (format < 0 || format >= (int)ARRAY_SIZE(format_names))
		return "unknown";
	return format_names[format];
}

int model_format_from_name(const char *name)
{
	for (size_t i = 0; i < ARRAY_SIZE(format_names); i++)
		if (!strcmp(name, format_names[i]))
			return (int)i;
	return -1;
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);

	return n >= m && !memcmp(s + n - m, suffix, m);
}

static const char *base_name(const char *path)
{
	const char *s = strrchr(path, '/');

	return s ? s + 1 : path;
}

/* Growing text of one-line problems, capped at ERR_MAX_LINES lines plus a count. */
struct errlist {
	char *buf;
	size_t len;
	size_t cap;
	unsigned lines;
	unsigned dropped;
	bool nomem;
};

static void errlist_vadd(struct errlist *e, const char *prefix, const char *fmt, va_list ap)
{
	char line[ST_MSG_MAX + 256];
	int n = 0;

	if (e->lines >= ERR_MAX_LINES) {
		e->dropped++;
		return;
	}
	if (prefix && *prefix)
		n = snprintf(line, sizeof(line), "%s: ", prefix);
	vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	n = (int)strlen(line);
	if (e->len + (size_t)n + 2 > e->cap) {
		size_t cap = e->cap ? e->cap * 2 : 256;
		char *b;

		while (cap < e->len + (size_t)n + 2)
			cap *= 2;
		b = realloc(e->buf, cap);
		if (!b) {
			e->nomem = true;
			return;
		}
		e->buf = b;
		e->cap = cap;
	}
	if (e->len)
		e->buf[e->len++] = '\n';
	memcpy(e->buf + e->len, line, (size_t)n + 1);
	e->len += (size_t)n;
	e->lines++;
}

static void errlist_add(struct errlist *e, const char *prefix, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void errlist_add(struct errlist *e, const char *prefix, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	errlist_vadd(e, prefix, fmt, ap);
	va_end(ap);
}

/* Ends the list: appends the count of dropped lines and hands the text over. */
static char *errlist_take(struct errlist *e)
{
	char *s;

	if (e->dropped) {
		unsigned d = e->dropped;

		e->dropped = 0;
		e->lines = 0; /* let the summary line through */
		errlist_add(e, NULL, "... and %u more problems", d);
	}
	s = e->buf;
	e->buf = NULL;
	e->len = e->cap = 0;
	e->lines = 0;
	return s;
}

int model_init(struct model *m, enum model_format format, const char *name, const char *path)
{
	memset(m, 0, sizeof(*m));
	m->format = format;
	m->arch = "unknown";
	m->name = strdup(name);
	m->path = strdup(path);
	if (!m->name || !m->path) {
		model_free(m);
		return -ENOMEM;
	}
	return 0;
}

int model_add_component(struct model *m, const char *name)
{
	struct model_component *c;

	c = realloc(m->components, (m->n_components + 1) * sizeof(*c));
	if (!c)
		return -ENOMEM;
	m->components = c;
	c = &m->components[m->n_components];
	memset(c, 0, sizeof(*c));
	c->index_file = -1;
	c->first = m->n_files;
	c->arch = "unknown";
	c->name = strdup(name);
	if (!c->name)
		return -ENOMEM;
	return (int)m->n_components++;
}

int model_add_file(struct model *m, enum model_file_kind kind, const char *path,
		   const struct model_fp *fp)
{
	struct model_component *c = m->n_components ? &m->components[m->n_components - 1] : NULL;
	struct model_file *f;

	if (kind != MODEL_FILE_MODEL_INDEX) {
		if (!c)
			return -EINVAL;
		/* A component's safetensors files must be one run of the array. */
		if (kind == MODEL_FILE_ST && c->n_files && c->first + c->n_files != m->n_files)
			return -EINVAL;
	}
	f = realloc(m->files, (m->n_files + 1) * sizeof(*f));
	if (!f)
		return -ENOMEM;
	m->files = f;
	f = &m->files[m->n_files];
	memset(f, 0, sizeof(*f));
	f->kind = kind;
	if (fp)
		f->fp = *fp;
	f->path = strdup(path);
	if (!f->path)
		return -ENOMEM;
	if (kind == MODEL_FILE_ST) {
		if (!c->n_files)
			c->first = m->n_files;
		c->n_files++;
	} else if (kind == MODEL_FILE_INDEX) {
		c->index_file = (int)m->n_files;
	}
	return (int)m->n_files++;
}

int model_add_missing(struct model *m, const char *path)
{
	int i = model_add_file(m, MODEL_FILE_ST, path, NULL);
	struct model_file *f;

	if (i < 0)
		return i;
	f = &m->files[i];
	f->loaded = true;
	f->missing = true;
	f->rc = -ENOENT;
	st_error_set(&f->err, -ENOENT, ST_ERR_IO, path, NULL, UINT64_MAX, NULL,
		     "the index names this shard but it does not exist");
	return i;
}

int model_fail(struct model *m, const char *fmt, ...)
{
	struct errlist e = { .buf = m->error, .len = m->error ? strlen(m->error) : 0 };
	va_list ap;

	e.cap = e.len ? e.len + 1 : 0;
	va_start(ap, fmt);
	errlist_vadd(&e, NULL, fmt, ap);
	va_end(ap);
	m->error = e.buf;
	m->valid = false;
	return e.nomem ? -ENOMEM : 0;
}

/* Reads all of @fd (@size bytes by fstat) into a new buffer. Returns 0 or -errno. */
static int read_all(int fd, uint64_t size, char **out)
{
	char *buf = malloc(size ? size : 1);
	ssize_t r;

	if (!buf)
		return -ENOMEM;
	r = st_pread_full(fd, buf, size, 0);
	if (r < 0 || (uint64_t)r < size) {
		free(buf);
		return r < 0 ? (int)r : -EIO; /* a short file: it shrank under us */
	}
	*out = buf;
	return 0;
}

static int load_json(struct model_file *f, int fd)
{
	char *buf = NULL;
	int rc;

	if (f->fp.size > JSON_MAX_BYTES)
		return st_error_set(&f->err, -EINVAL, ST_ERR_HEADER_TOO_LARGE, f->path, NULL,
				    UINT64_MAX, NULL, "%llu bytes is more than the %u accepted",
				    (unsigned long long)f->fp.size, JSON_MAX_BYTES);
	rc = read_all(fd, f->fp.size, &buf);
	if (rc < 0)
		return st_error_set(&f->err, rc, ST_ERR_IO, f->path, NULL, UINT64_MAX, NULL,
				    "read: %s", strerror(-rc));
	f->content_hash = XXH3_64bits(buf, f->fp.size);
	if (f->kind == MODEL_FILE_INDEX)
		rc = model_index_parse(f->path, buf, f->fp.size, &f->index, &f->err);
	else
		rc = model_diffusers_parse(f->path, buf, f->fp.size, &f->names, &f->n_names,
					   &f->err);
	free(buf);
	return rc;
}

int model_file_load(struct model_file *f)
{
	struct stat sb;
	int fd, rc;

	if (f->loaded && f->missing)
		return f->rc;
	f->loaded = true;
	fd = wd_open_regular(AT_FDCWD, f->path, 0, &sb);
	if (fd == -EINVAL) {
		f->rc = st_error_set(&f->err, -EINVAL, ST_ERR_IO, f->path, NULL, UINT64_MAX,
				     NULL, "not a regular file (%s)", wd_file_kind(sb.st_mode));
		return f->rc;
	}
	if (fd < 0) {
		rc = fd;
		f->rc = st_error_set(&f->err, rc, ST_ERR_IO, f->path, NULL, UINT64_MAX, NULL,
				     "open: %s", strerror(-rc));
		return f->rc;
	}
	model_fp_of(&sb, &f->fp);
	if (f->kind == MODEL_FILE_ST) {
		rc = st_open_fd(fd, f->path, &f->st, &f->err);
		if (rc == 0)
			f->content_hash = f->st.header_hash;
	} else {
		rc = load_json(f, fd);
	}
	close(fd);
	f->rc = rc;
	return rc;
}

/* The shard name of @f relative to the directory of the index at @index_path, or NULL. */
static const char *shard_rel(const struct model_file *f, const char *index_path)
{
	size_t dl = (size_t)(base_name(index_path) - index_path); /* includes the '/' */

	if (strncmp(f->path, index_path, dl))
		return NULL;
	return f->path + dl;
}

/* The shard file of component @c that the index calls @shard, or NULL. */
static const struct model_file *find_shard(const struct model *m, const struct model_component *c,
					   const struct model_index *idx, const char *index_path,
					   const char *shard)
{
	/* Shards are described in the index's (sorted) order, so try the direct position. */
	if (c->n_files == idx->n_shards) {
		size_t lo = 0, hi = idx->n_shards;

		while (lo < hi) {
			size_t mid = (lo + hi) / 2;
			int d = strcmp(idx->shards[mid], shard);

			if (!d) {
				const struct model_file *f = model_comp_file(m, c, mid);
				const char *rel = shard_rel(f, index_path);

				if (rel && !strcmp(rel, shard))
					return f;
				break;
			}
			if (d < 0)
				lo = mid + 1;
			else
				hi = mid;
		}
	}
	for (size_t i = 0; i < c->n_files; i++) {
		const struct model_file *f = model_comp_file(m, c, i);
		const char *rel = shard_rel(f, index_path);

		if (rel && !strcmp(rel, shard))
			return f;
	}
	return NULL;
}

/* Checks that a sharded component's index and shards agree, tensor by tensor. */
static void check_shards(const struct model *m, const struct model_component *c,
			 const struct model_file *ixf, struct errlist *e)
{
	const struct model_index *idx = &ixf->index;
	uint64_t total = 0;
	bool all_valid = true;
	const char *key;
	json_t *v;

	for (size_t i = 0; i < c->n_files; i++) {
		const struct model_file *f = model_comp_file(m, c, i);
		const char *rel = shard_rel(f, ixf->path);

		if (!f->loaded || f->rc) {
			all_valid = false;
			continue;
		}
		total += st_data_bytes(&f->st);
		for (uint32_t t = 0; t < f->st.n_tensors; t++) {
			const char *name = f->st.tensors[t].name;
			const char *mapped = json_string_value(json_object_get(idx->weight_map,
									       name));

			if (!mapped)
				errlist_add(e, NULL,
					    "%s: tensor \"%s\" is in this shard but not in the "
					    "weight_map of %s", f->path, name, ixf->path);
			else if (!rel || strcmp(mapped, rel))
				errlist_add(e, NULL,
					    "%s: tensor \"%s\" is in this shard but %s maps it "
					    "to %s", f->path, name, ixf->path, mapped);
		}
	}
	json_object_foreach(idx->weight_map, key, v) {
		const char *shard = json_string_value(v);
		const struct model_file *f = find_shard(m, c, idx, ixf->path, shard);

		if (!f)
			errlist_add(e, NULL, "%s: tensor \"%s\" is mapped to %s, which is not "
				    "part of the model", ixf->path, key, shard);
		else if (f->loaded && !f->rc && !st_find(&f->st, key))
			errlist_add(e, NULL, "%s: tensor \"%s\" is mapped to this shard by %s "
				    "but is not in it", f->path, key, ixf->path);
	}
	if (idx->has_total_size && all_valid && total != idx->total_size)
		errlist_add(e, NULL, "%s: metadata.total_size is %llu but the shards hold %llu "
			    "bytes of tensor data", ixf->path,
			    (unsigned long long)idx->total_size, (unsigned long long)total);
}

static int merge_meta(struct model *m, const struct st_file *st)
{
	for (uint32_t i = 0; i < st->n_meta; i++) {
		struct st_kv *kv;
		bool seen = false;

		for (size_t j = 0; j < m->n_meta && !seen; j++)
			seen = !strcmp(m->meta[j].key, st->meta[i].key);
		if (seen)
			continue;
		kv = realloc(m->meta, (m->n_meta + 1) * sizeof(*kv));
		if (!kv)
			return -ENOMEM;
		m->meta = kv;
		kv = &m->meta[m->n_meta];
		kv->key = strdup(st->meta[i].key);
		kv->value = strdup(st->meta[i].value);
		m->n_meta++;
		if (!kv->key || !kv->value)
			return -ENOMEM;
	}
	return 0;
}

static int finish_component(struct model *m, struct model_component *c, struct errlist *me)
{
	const struct st_file **sts = calloc(c->n_files ? c->n_files : 1, sizeof(*sts));
	struct model_file *ixf = c->index_file >= 0 ? &m->files[c->index_file] : NULL;
	struct errlist e = { 0 };
	size_t n_ok = 0;
	int rc = 0;

	if (!sts)
		return -ENOMEM;
	c->n_tensors = c->params = c->bytes = 0;
	memset(c->dtype_bytes, 0, sizeof(c->dtype_bytes));
	free(c->error);
	c->error = NULL;
	if (ixf) {
		if (!ixf->loaded)
			errlist_add(&e, NULL, "%s: not read", ixf->path);
		else if (ixf->rc)
			errlist_add(&e, NULL, "%s", ixf->err.message);
	}
	for (size_t i = 0; i < c->n_files; i++) {
		struct model_file *f = model_comp_file(m, c, i);

		if (!f->loaded) {
			errlist_add(&e, NULL, "%s: not read", f->path);
			continue;
		}
		if (f->rc) {
			errlist_add(&e, NULL, "%s", f->err.message);
			continue;
		}
		c->n_tensors += f->st.n_tensors;
		c->params += st_param_count(&f->st);
		c->bytes += st_data_bytes(&f->st);
		for (uint32_t t = 0; t < f->st.n_tensors; t++)
			c->dtype_bytes[f->st.tensors[t].dtype] +=
				st_tensor_nbytes(&f->st.tensors[t]);
		sts[n_ok++] = &f->st;
		if (!rc)
			rc = merge_meta(m, &f->st);
	}
	if (ixf && ixf->loaded && !ixf->rc)
		check_shards(m, c, ixf, &e);
	if (!c->n_files && !(ixf && ixf->rc))
		errlist_add(&e, NULL, "no safetensors files");
	c->arch = n_ok ? arch_detect(sts, n_ok) : "unknown";
	free(sts);
	c->valid = e.len == 0;
	if (e.nomem)
		rc = -ENOMEM;
	c->error = errlist_take(&e);
	/* The model's error lists every component's problems, each line prefixed. */
	for (const char *line = c->error; line && *line;) {
		size_t l = strcspn(line, "\n");

		errlist_add(me, c->name, "%.*s", (int)l, line);
		line += l + (line[l] == '\n');
	}
	return rc;
}

int model_finish(struct model *m)
{
	const char **archs = calloc(m->n_components ? m->n_components : 1, sizeof(*archs));
	struct errlist me = { .buf = m->error, .len = m->error ? strlen(m->error) : 0 };
	int rc = 0;

	if (!archs)
		return -ENOMEM;
	me.cap = me.len ? me.len + 1 : 0;
	m->n_tensors = m->params = m->bytes = 0;
	for (size_t i = 0; i < m->n_meta; i++) {
		free(m->meta[i].key);
		free(m->meta[i].value);
	}
	free(m->meta);
	m->meta = NULL;
	m->n_meta = 0;
	for (size_t i = 0; i < m->n_components; i++) {
		struct model_component *c = &m->components[i];
		int r = finish_component(m, c, &me);

		if (r && !rc)
			rc = r;
		archs[i] = c->arch;
		m->n_tensors += c->n_tensors;
		m->params += c->params;
		m->bytes += c->bytes;
	}
	m->arch = m->n_components ? arch_model(archs, m->n_components) : "unknown";
	free(archs);
	if (!m->n_components && !me.len)
		errlist_add(&me, NULL, "no component holds safetensors files");
	if (me.nomem)
		rc = -ENOMEM;
	m->error = errlist_take(&me);
	m->valid = m->error == NULL;
	return rc;
}

static void file_free(struct model_file *f)
{
	free(f->path);
	st_file_free(&f->st);
	model_index_free(&f->index);
	for (size_t i = 0; i < f->n_names; i++)
		free(f->names[i]);
	free(f->names);
}

void model_free(struct model *m)
{
	if (!m)
		return;
	for (size_t i = 0; i < m->n_files; i++)
		file_free(&m->files[i]);
	for (size_t i = 0; i < m->n_components; i++) {
		free(m->components[i].name);
		free(m->components[i].error);
	}
	for (size_t i = 0; i < m->n_meta; i++) {
		free(m->meta[i].key);
		free(m->meta[i].value);
	}
	free(m->files);
	free(m->components);
	free(m->meta);
	free(m->name);
	free(m->path);
	free(m->error);
	memset(m, 0, sizeof(*m));
}

/* ---- layout helpers ---- */

int model_name_kind(const char *name)
{
	if (!strcmp(name, "model_index.json"))
		return MODEL_FILE_MODEL_INDEX;
	if (ends_with(name, ".json")) {
		const char *p = strstr(name, ".safetensors.index.");

		/* NAME.safetensors.index.json or NAME.safetensors.index.VARIANT.json */
		if (p && p > name)
			return MODEL_FILE_INDEX;
		return -1;
	}
	if (ends_with(name, ".safetensors") && strlen(name) > strlen(".safetensors"))
		return MODEL_FILE_ST;
	return -1;
}

/*
 * The variant of a file name into @buf: "fp16" for model.fp16.safetensors and for
 * model.safetensors.index.fp16.json, "" for the plain names. Also returns the stem
 * length (the part before the first '.') through @stem_len.
 */
static void name_variant(const char *name, int kind, char *buf, size_t size, size_t *stem_len)
{
	const char *dot = strchr(name, '.');
	const char *from, *to;

	*stem_len = dot ? (size_t)(dot - name) : strlen(name);
	if (kind == MODEL_FILE_INDEX) {
		from = strstr(name, ".safetensors.index.") + strlen(".safetensors.index.");
		to = name + strlen(name) - strlen(".json");
		from = from > to ? to : from;
	} else {
		to = name + strlen(name) - strlen(".safetensors");
		from = dot && dot < to ? dot + 1 : to;
	}
	snprintf(buf, size, "%.*s", (int)(to - from), from);
}

/* Orders variants by preference: none, then fp16, then by name. */
static int variant_cmp(const char *a, const char *b)
{
	int ra = !*a ? 0 : !strcmp(a, "fp16") ? 1 : 2;
	int rb = !*b ? 0 : !strcmp(b, "fp16") ? 1 : 2;

	if (ra != rb)
		return ra - rb;
	return strcmp(a, b);
}

static int known_stem(const char *name, size_t stem_len)
{
	static const char *const known[] = { "diffusion_pytorch_model", "model" };

	for (size_t i = 0; i < ARRAY_SIZE(known); i++)
		if (strlen(known[i]) == stem_len && !strncmp(name, known[i], stem_len))
			return (int)i;
	return -1;
}

size_t model_choose(const char *const *names, size_t n, size_t *pick, bool *is_index)
{
	char best[256] = "", var[256];
	bool have = false, want_index = false;
	size_t np = 0, stem;
	int best_known = 99;

	*is_index = false;
	for (size_t i = 0; i < n; i++)
		if (model_name_kind(names[i]) == MODEL_FILE_INDEX)
			want_index = true;
	for (size_t i = 0; i < n; i++) {
		int k = model_name_kind(names[i]);

		if (k != (want_index ? MODEL_FILE_INDEX : MODEL_FILE_ST))
			continue;
		name_variant(names[i], k, var, sizeof(var), &stem);
		if (!have || variant_cmp(var, best) < 0)
			snprintf(best, sizeof(best), "%s", var);
		have = true;
	}
	if (!have)
		return 0;
	/* Among the best variant, a well-known stem wins alone; else everything. */
	for (size_t i = 0; i < n; i++) {
		int k = model_name_kind(names[i]), kn;

		if (k != (want_index ? MODEL_FILE_INDEX : MODEL_FILE_ST))
			continue;
		name_variant(names[i], k, var, sizeof(var), &stem);
		if (strcmp(var, best))
			continue;
		kn = known_stem(names[i], stem);
		if (kn >= 0 && kn < best_known)
			best_known = kn;
	}
	for (size_t i = 0; i < n; i++) {
		int k = model_name_kind(names[i]);

		if (k != (want_index ? MODEL_FILE_INDEX : MODEL_FILE_ST))
			continue;
		name_variant(names[i], k, var, sizeof(var), &stem);
		if (strcmp(var, best))
			continue;
		if (best_known != 99 && known_stem(names[i], stem) != best_known)
			continue;
		pick[np++] = i;
	}
	/* Several indexes of one variant and no known stem: take the first by name. */
	if (want_index && np > 1) {
		size_t first = pick[0];

		for (size_t i = 1; i < np; i++)
			if (strcmp(names[pick[i]], names[first]) < 0)
				first = pick[i];
		pick[0] = first;
		np = 1;
	}
	/* Picks come out in name order so that callers describe files deterministically. */
	for (size_t i = 1; i < np; i++)
		for (size_t j = i; j > 0 && strcmp(names[pick[j - 1]], names[pick[j]]) > 0; j--) {
			size_t t = pick[j];

			pick[j] = pick[j - 1];
			pick[j - 1] = t;
		}
	*is_index = want_index;
	return np;
}

/* Writes the display name of directory @dir (its last component, or ORG/NAME for a
 * Hugging Face cache snapshot). */
static void dir_name(const char *dir, size_t len, char *buf, size_t size)
{
	const char *comp[3] = { NULL };
	size_t clen[3] = { 0 };
	size_t end = len;

	while (end > 1 && dir[end - 1] == '/')
		end--;
	/* The last three components: REV, "snapshots", "models--ORG--NAME". */
	for (int k = 0; k < 3 && end > 0; k++) {
		size_t s = end;

		while (s > 0 && dir[s - 1] != '/')
			s--;
		comp[k] = dir + s;
		clen[k] = end - s;
		end = s;
		while (end > 0 && dir[end - 1] == '/')
			end--;
	}
	if (comp[2] && clen[1] == 9 && !strncmp(comp[1], "snapshots", 9) && clen[2] > 8 &&
	    !strncmp(comp[2], "models--", 8)) {
		size_t o = 0;

		for (size_t i = 8; i < clen[2] && o + 1 < size; i++) {
			if (i + 1 < clen[2] && comp[2][i] == '-' && comp[2][i + 1] == '-') {
				buf[o++] = '/';
				i++;
			} else {
				buf[o++] = comp[2][i];
			}
		}
		buf[o] = '\0';
		return;
	}
	if (!comp[0] || !clen[0]) {
		snprintf(buf, size, "root");
		return;
	}
	snprintf(buf, size, "%.*s", (int)clen[0], comp[0]);
}

void model_default_name(enum model_format format, const char *path, char *buf, size_t size)
{
	static const char *const generic[] = {
		"model", "diffusion_pytorch_model", "pytorch_model", "consolidated",
		"weights", "adapter_model",
	};
	const char *base = base_name(path);
	size_t dir_len = (size_t)(base - path);

	if (format == MODEL_DIFFUSERS) {
		dir_name(path, strlen(path), buf, size);
		return;
	}
	if (format == MODEL_SINGLE) {
		size_t stem = strcspn(base, ".");
		size_t full = ends_with(base, ".safetensors") ? strlen(base) - 12 : strlen(base);
		bool is_generic = false;

		for (size_t i = 0; i < ARRAY_SIZE(generic); i++)
			if (strlen(generic[i]) == stem && !strncmp(base, generic[i], stem))
				is_generic = true;
		if (!is_generic || !dir_len) {
			snprintf(buf, size, "%.*s", (int)full, base);
			return;
		}
	}
	dir_name(path, dir_len ? dir_len - 1 : 0, buf, size);
}

int model_shard_path(const char *index_path, const char *shard, char *out, size_t size)
{
	size_t dl = (size_t)(base_name(index_path) - index_path);
	const char *p = shard;
	int n;

	if (!*shard || *shard == '/')
		return -EINVAL;
	while (*p) {
		size_t l = strcspn(p, "/");

		if (l == 2 && p[0] == '.' && p[1] == '.')
			return -EINVAL;
		p += l;
		while (*p == '/')
			p++;
	}
	n = snprintf(out, size, "%.*s%s", (int)dl, index_path, shard);
	if (n < 0 || (size_t)n >= size)
		return -ENAMETOOLONG;
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int json_fail(const char *path, const json_error_t *je, const char *what,
		     struct st_error *err)
{
	int code = json_error_code(je) == json_error_duplicate_key ? ST_ERR_DUPLICATE_KEY
								   : ST_ERR_JSON;

	if (json_error_code(je) == json_error_out_of_memory)
		return st_error_set(err, -ENOMEM, ST_ERR_NOMEM, path, NULL, UINT64_MAX, NULL,
				    "out of memory");
	return st_error_set(err, -EINVAL, code, path, NULL, (uint64_t)je->position, what,
			    "%.*s", st_json_error_len(je->text), je->text);
}

void model_index_free(struct model_index *idx)
{
	for (size_t i = 0; i < idx->n_shards; i++)
		free(idx->shards[i]);
	free(idx->shards);
	json_decref(idx->root);
	memset(idx, 0, sizeof(*idx));
}

int model_index_parse(const char *path, const char *buf, size_t len, struct model_index *out,
		      struct st_error *err)
{
	json_error_t je;
	json_t *meta, *ts, *v;
	const char *key;
	char tmp[16];
	size_t n = 0;
	int rc = 0;

	memset(out, 0, sizeof(*out));
	out->root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
	if (!out->root)
		return json_fail(path, &je, "index", err);
	out->weight_map = json_object_get(out->root, "weight_map");
	if (!json_is_object(out->root) || !json_is_object(out->weight_map)) {
		rc = st_error_set(err, -EINVAL, ST_ERR_ENTRY, path, NULL, UINT64_MAX, NULL,
				  "the index has no \"weight_map\" object");
		goto fail;
	}
	if (!json_object_size(out->weight_map)) {
		rc = st_error_set(err, -EINVAL, ST_ERR_ENTRY, path, NULL, UINT64_MAX, NULL,
				  "the weight_map is empty");
		goto fail;
	}
	out->shards = calloc(json_object_size(out->weight_map), sizeof(char *));
	if (!out->shards) {
		rc = st_error_set(err, -ENOMEM, ST_ERR_NOMEM, path, NULL, UINT64_MAX, NULL,
				  "out of memory");
		goto fail;
	}
	json_object_foreach(out->weight_map, key, v) {
		const char *s = json_string_value(v);

		if (!s || model_shard_path(path, s, tmp, 1) == -EINVAL) {
			rc = st_error_set(err, -EINVAL, ST_ERR_ENTRY, path, key, UINT64_MAX, NULL,
					  "the weight_map value must be a file name inside the "
					  "index's directory");
			goto fail;
		}
		out->shards[n++] = (char *)s; /* borrowed until deduplicated below */
	}
	qsort(out->shards, n, sizeof(char *), cmp_str); /* n >= 1: the map is not empty */
	for (size_t i = 0; i < n; i++) {
		if (out->n_shards && !strcmp(out->shards[out->n_shards - 1], out->shards[i]))
			continue;
		out->shards[out->n_shards++] = out->shards[i];
	}
	for (size_t i = 0; i < out->n_shards; i++) {
		out->shards[i] = strdup(out->shards[i]);
		if (!out->shards[i]) {
			/* Later entries are still borrowed: forget them before freeing. */
			out->n_shards = i;
			rc = st_error_set(err, -ENOMEM, ST_ERR_NOMEM, path, NULL, UINT64_MAX,
					  NULL, "out of memory");
			goto fail;
		}
	}
	meta = json_object_get(out->root, "metadata");
	ts = json_object_get(meta, "total_size");
	if (ts) {
		double d = json_number_value(ts);

		if (json_is_integer(ts) && json_integer_value(ts) >= 0) {
			out->total_size = (uint64_t)json_integer_value(ts);
		} else if (json_is_real(ts) && d >= 0 && d < 1.8e19 && d == (double)(uint64_t)d) {
			out->total_size = (uint64_t)d;
		} else {
			rc = st_error_set(err, -EINVAL, ST_ERR_ENTRY, path, NULL, UINT64_MAX, NULL,
					  "metadata.total_size is not a non-negative integer");
			goto fail;
		}
		out->has_total_size = true;
	}
	return 0;
fail:
	if (n && out->n_shards == 0 && out->shards) {
		/* Only borrowed pointers: nothing to free but the array. */
		free(out->shards);
		out->shards = NULL;
	}
	model_index_free(out);
	return rc;
}

int model_diffusers_parse(const char *path, const char *buf, size_t len, char ***names,
			  size_t *n, struct st_error *err)
{
	json_error_t je;
	json_t *root, *v;
	const char *key;
	char **out;
	size_t k = 0;
	int rc = 0;

	*names = NULL;
	*n = 0;
	root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
	if (!root)
		return json_fail(path, &je, "model_index", err);
	if (!json_is_object(root)) {
		json_decref(root);
		return st_error_set(err, -EINVAL, ST_ERR_NOT_OBJECT, path, NULL, UINT64_MAX, NULL,
				    "model_index.json is not a JSON object");
	}
	out = calloc(json_object_size(root) + 1, sizeof(*out));
	if (!out) {
		json_decref(root);
		return st_error_set(err, -ENOMEM, ST_ERR_NOMEM, path, NULL, UINT64_MAX, NULL,
				    "out of memory");
	}
	json_object_foreach(root, key, v) {
		if (key[0] == '_' || !json_is_array(v) || json_array_size(v) != 2)
			continue;
		if (json_is_null(json_array_get(v, 0)) && json_is_null(json_array_get(v, 1)))
			continue;
		if (!*key || strchr(key, '/') || !strcmp(key, ".") || !strcmp(key, "..")) {
			rc = st_error_set(err, -EINVAL, ST_ERR_ENTRY, path, key, UINT64_MAX, NULL,
					  "a component name must be a plain folder name");
			break;
		}
		out[k] = strdup(key);
		if (!out[k]) {
			rc = st_error_set(err, -ENOMEM, ST_ERR_NOMEM, path, NULL, UINT64_MAX,
					  NULL, "out of memory");
			break;
		}
		k++;
	}
	json_decref(root);
	if (rc) {
		for (size_t i = 0; i < k; i++)
			free(out[i]);
		free(out);
		return rc;
	}
	if (k)
		qsort(out, k, sizeof(*out), cmp_str);
	*names = out;
	*n = k;
	return 0;
}

/* ---- model_open(): one path, read sequentially ---- */

/* Lists the safetensors and index file names of directory @dir. */
static int list_folder(const char *dir, char ***names, size_t *n)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char **v = NULL;
	size_t k = 0;

	*names = NULL;
	*n = 0;
	if (!d)
		return -errno;
	while ((de = readdir(d))) {
		int kind = model_name_kind(de->d_name);
		char **nv;

		if (kind != MODEL_FILE_ST && kind != MODEL_FILE_INDEX)
			continue;
		nv = realloc(v, (k + 1) * sizeof(*v));
		if (!nv || !(nv[k] = strdup(de->d_name))) {
			v = nv ? nv : v;
			for (size_t i = 0; i < k; i++)
				free(v[i]);
			free(v);
			closedir(d);
			return -ENOMEM;
		}
		v = nv;
		k++;
	}
	closedir(d);
	if (k)
		qsort(v, k, sizeof(*v), cmp_str);
	*names = v;
	*n = k;
	return 0;
}

static void free_names(char **v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i]);
	free(v);
}

/* Adds the index at @index_path and its shards to the last component, reading the index. */
static int open_sharded(struct model *m, const char *index_path)
{
	char path[4096];
	struct model_file *ixf;
	int i = model_add_file(m, MODEL_FILE_INDEX, index_path, NULL);

	if (i < 0)
		return i;
	ixf = &m->files[i];
	if (model_file_load(ixf) == -ENOMEM)
		return -ENOMEM;
	if (ixf->rc)
		return 0; /* model_finish() reports it */
	for (size_t s = 0; s < m->files[i].index.n_shards; s++) {
		struct stat sb;
		int r = model_shard_path(index_path, m->files[i].index.shards[s], path,
					 sizeof(path));

		if (r < 0)
			return r;
		if (stat(path, &sb) < 0 && errno == ENOENT)
			r = model_add_missing(m, path);
		else
			r = model_add_file(m, MODEL_FILE_ST, path, NULL);
		if (r < 0)
			return r;
	}
	return 0;
}

/* Adds the component files chosen in folder @dir (one index, or single files). */
static int open_folder(struct model *m, const char *dir, char **names, size_t n)
{
	size_t *pick = calloc(n ? n : 1, sizeof(*pick));
	char path[4096];
	bool is_index;
	size_t np;
	int rc = 0;

	if (!pick)
		return -ENOMEM;
	np = model_choose((const char *const *)names, n, pick, &is_index);
	for (size_t i = 0; i < np && !rc; i++) {
		if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, names[pick[i]]) >=
		    sizeof(path)) {
			rc = -ENAMETOOLONG;
			break;
		}
		if (is_index)
			rc = open_sharded(m, path);
		else
			rc = model_add_file(m, MODEL_FILE_ST, path, NULL) < 0 ? -ENOMEM : 0;
	}
	free(pick);
	return rc;
}

static int open_diffusers(struct model *m, const char *dir)
{
	char path[4096];
	struct model_file *mi;
	int i, rc;

	snprintf(path, sizeof(path), "%s/model_index.json", dir);
	i = model_add_file(m, MODEL_FILE_MODEL_INDEX, path, NULL);
	if (i < 0)
		return i;
	rc = model_file_load(&m->files[i]);
	if (rc == -ENOMEM)
		return rc;
	mi = &m->files[i];
	if (rc)
		return model_fail(m, "%s", mi->err.message);
	for (size_t c = 0; c < m->files[i].n_names; c++) {
		const char *comp = m->files[i].names[c];
		char **names;
		size_t n;

		if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, comp) >= sizeof(path))
			return -ENAMETOOLONG;
		rc = list_folder(path, &names, &n);
		if (rc == -ENOMEM)
			return rc;
		if (rc < 0 || !n) {
			free_names(names, n);
			continue; /* a folder without safetensors (scheduler, tokenizer) */
		}
		rc = model_add_component(m, comp);
		if (rc >= 0)
			rc = open_folder(m, path, names, n);
		free_names(names, n);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* Decides the format of @path and describes the model. */
static int describe_path(const char *path, struct model *m)
{
	char name[512], buf[4096];
	struct stat sb;
	int rc;

	if (stat(path, &sb) < 0)
		return -errno;
	if (S_ISDIR(sb.st_mode)) {
		char **names;
		size_t n, pick1;
		bool is_index;

		snprintf(buf, sizeof(buf), "%s/model_index.json", path);
		if (access(buf, F_OK) == 0) {
			model_default_name(MODEL_DIFFUSERS, path, name, sizeof(name));
			rc = model_init(m, MODEL_DIFFUSERS, name, path);
			return rc ? rc : open_diffusers(m, path);
		}
		rc = list_folder(path, &names, &n);
		if (rc < 0)
			return rc;
		{
			size_t *pick = calloc(n ? n : 1, sizeof(*pick));
			size_t np;

			if (!pick) {
				free_names(names, n);
				return -ENOMEM;
			}
			np = model_choose((const char *const *)names, n, pick, &is_index);
			pick1 = pick[0];
			free(pick);
			if (np != 1) {
				free_names(names, n);
				return -EINVAL;
			}
		}
		rc = snprintf(buf, sizeof(buf), "%s/%s", path, names[pick1]) >= (int)sizeof(buf)
			     ? -ENAMETOOLONG
			     : 0;
		free_names(names, n);
		return rc ? rc : describe_path(buf, m);
	}
	if (!S_ISREG(sb.st_mode))
		return -EINVAL;
	switch (model_name_kind(base_name(path))) {
	case MODEL_FILE_MODEL_INDEX: {
		size_t dl = (size_t)(base_name(path) - path);

		snprintf(buf, sizeof(buf), "%.*s", (int)(dl > 1 ? dl - 1 : dl), path);
		return describe_path(buf, m);
	}
	case MODEL_FILE_INDEX:
		model_default_name(MODEL_SHARDED, path, name, sizeof(name));
		rc = model_init(m, MODEL_SHARDED, name, path);
		if (!rc)
			rc = model_add_component(m, "") < 0 ? -ENOMEM : 0;
		return rc ? rc : open_sharded(m, path);
	default:
		model_default_name(MODEL_SINGLE, path, name, sizeof(name));
		rc = model_init(m, MODEL_SINGLE, name, path);
		if (!rc)
			rc = model_add_component(m, "") < 0 ? -ENOMEM : 0;
		if (!rc)
			rc = model_add_file(m, MODEL_FILE_ST, path, NULL) < 0 ? -ENOMEM : 0;
		return rc;
	}
}

int model_open(const char *path, struct model *m)
{
	char abs[4096];
	size_t len;
	int rc;

	memset(m, 0, sizeof(*m));
	if (!realpath(path, abs))
		return -errno;
	len = strlen(abs);
	while (len > 1 && abs[len - 1] == '/')
		abs[--len] = '\0';
	rc = describe_path(abs, m);
	for (size_t i = 0; !rc && i < m->n_files; i++)
		if (!m->files[i].loaded && model_file_load(&m->files[i]) == -ENOMEM)
			rc = -ENOMEM;
	if (!rc)
		rc = model_finish(m);
	if (rc)
		model_free(m);
	return rc;
}
