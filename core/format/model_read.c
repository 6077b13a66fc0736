/*
 * Model formats: describing a model's files, reading them, and checking that the layout
 * files (index JSON, model_index.json) agree with the safetensors they point at.
 *
 * The description step is separate from reading so that the scanner can describe a whole
 * tree first, decide which files changed, and read only those in parallel. Everything a
 * reader needs to judge a broken model ends up in model.error, one line per problem.
 *
 * This file holds the description (model_init, model_add_*), the reading (model_file_load)
 * and the checks of a whole model (model_finish); model_internal.h lists the other files.
 */
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
#include "core/format/model_internal.h"
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

