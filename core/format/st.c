/*
 * safetensors header reader and validator.
 *
 * The work happens in three passes over a header that is already in memory: the JSON text
 * is checked and parsed by jansson (which rejects bad UTF-8 and duplicate keys for us),
 * each entry is checked on its own (fields, dtype, shape, offsets, size), and then the
 * tensors, sorted by offset, are checked to tile the data region exactly. Each pass reports
 * the first rule broken, with the code, tensor and byte offset DESIGN.md asks for.
 *
 * Nothing here trusts the length field: it is compared with ST_MAX_HEADER and with the
 * file size before a single header byte is read or allocated, and every size computed from
 * the header is checked for overflow.
 *
 * This file holds the reader (the length checks, the three passes, st_open) and the
 * accessors of a parsed file; the error codes and the message formatter are in st_error.c.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/base/common.h"
#include "core/format/st.h"
#include "core/format/st_internal.h"

/* What one st_parse_header() call is working on, so that helpers can report rejections. */
struct parse {
	const char *path;
	const char *hdr; /* the N header bytes (file offset 8) */
	size_t hdr_len;
	uint64_t data_start;
	struct st_error *err;
};

/* The word a message uses for a JSON value's type: "entry is a string, not an object". */
static const char *json_kind(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT:
		return "an object";
	case JSON_ARRAY:
		return "an array";
	case JSON_STRING:
		return "a string";
	case JSON_INTEGER:
		return "an integer";
	case JSON_REAL:
		return "a real number";
	case JSON_TRUE:
		return "true";
	case JSON_FALSE:
		return "false";
	case JSON_NULL:
		return "null";
	}
	return "an unknown value";
}

/*
 * The file offset of the top-level key @name in the header, for messages about its entry.
 * The header is valid JSON by the time this runs, so a small scanner that tracks strings and
 * nesting finds the key exactly. A key written with escapes is compared as raw text and is
 * not found; UINT64_MAX then.
 */
static uint64_t entry_offset(const struct parse *p, const char *name)
{
	size_t nlen = strlen(name);
	const char *h = p->hdr;
	size_t n = p->hdr_len;
	bool expect_key = false;
	int depth = 0;

	for (size_t i = 0; i < n; i++) {
		char c = h[i];

		if (c == '"') {
			size_t j = i + 1;
			bool escaped = false;

			while (j < n && h[j] != '"') {
				if (h[j] == '\\') {
					escaped = true;
					j++;
				}
				j++;
			}
			if (depth == 1 && expect_key && !escaped && j - i - 1 == nlen &&
			    j < n && !memcmp(h + i + 1, name, nlen))
				return 8 + i;
			expect_key = false;
			i = j;
		} else if (c == '{' || c == '[') {
			depth++;
			expect_key = c == '{' && depth == 1;
		} else if (c == '}' || c == ']') {
			depth--;
		} else if (c == ',') {
			expect_key = depth == 1;
		}
	}
	return UINT64_MAX;
}

/*
 * A rejection of the entry @name (a tensor, or __metadata__ with @tensor false), located at
 * its key in the header, or at the header's start when the key cannot be found.
 */
static int WD_PRINTF(5, 6) entry_reject(const struct parse *p, int code, const char *name,
					bool tensor, const char *fmt, ...)
{
	uint64_t off = entry_offset(p, name);
	va_list ap;
	int rc;

	va_start(ap, fmt);
	rc = st_verror(p->err, -EINVAL, code, p->path, tensor ? name : NULL,
		       off == UINT64_MAX ? 8 : off, off == UINT64_MAX ? "header" : "header entry",
		       fmt, ap);
	va_end(ap);
	return rc;
}

/*
 * Checks that the header starts with '{', is valid UTF-8 JSON, has no duplicate keys and
 * is followed by nothing but spaces, and parses it. Returns the root object or NULL with
 * *@rc set (-EINVAL or -ENOMEM) and the error filled.
 */
static json_t *parse_json(const struct parse *p, int *rc)
{
	const char *h = p->hdr;
	size_t n = p->hdr_len, m = n;
	json_error_t je;
	json_t *root;
	int code;

	if (n == 0 || h[0] != '{') {
		*rc = st_error_set(p->err, -EINVAL, ST_ERR_HEADER_START, p->path, NULL, 8, "header",
				   n ? "the header does not start with '{'" :
				       "the header is empty (N = 0), not a JSON object");
		return NULL;
	}
	/* The format allows right-padding with spaces; jansson need not see them. */
	while (m > 0 && h[m - 1] == ' ')
		m--;
	root = json_loadb(h, m, JSON_REJECT_DUPLICATES, &je);
	if (!root) {
		uint64_t at = 8 + (je.position > 0 ? (uint64_t)je.position : 0);

		switch (json_error_code(&je)) {
		case json_error_out_of_memory:
			*rc = st_error_set(p->err, -ENOMEM, ST_ERR_NOMEM, p->path, NULL, at,
					   "header", "out of memory parsing the header");
			return NULL;
		case json_error_duplicate_key:
			code = ST_ERR_DUPLICATE_KEY;
			break;
		case json_error_invalid_utf8:
			code = ST_ERR_UTF8;
			break;
		default:
			code = ST_ERR_JSON;
			break;
		}
		*rc = st_error_set(p->err, -EINVAL, code, p->path, NULL, at, "header", "%.*s",
				   st_json_error_len(je.text), je.text);
		return NULL;
	}
	/*
	 * jansson accepts any JSON whitespace after the value, but only spaces may pad a
	 * safetensors header: the object must be the last thing before them.
	 */
	if (h[m - 1] != '}') {
		size_t close = m - 1;

		while (close > 0 && h[close] != '}')
			close--;
		/* Point at the first byte after the object that is not a space. */
		close++;
		while (h[close] == ' ')
			close++;
		json_decref(root);
		*rc = st_error_set(p->err, -EINVAL, ST_ERR_JSON, p->path, NULL, 8 + close, "header",
				   "byte 0x%02x follows the object; only spaces may pad the header",
				   (unsigned char)h[close]);
		return NULL;
	}
	if (!json_is_object(root)) {
		/* Unreachable while the '{' check above holds; kept so the walk below is safe. */
		json_decref(root);
		*rc = st_error_set(p->err, -EINVAL, ST_ERR_NOT_OBJECT, p->path, NULL, 8, "header",
				   "the header is not a JSON object");
		return NULL;
	}
	return root;
}

/* Reads a non-negative JSON integer; false for anything else (reals, strings, -1). */
static bool get_uint(const json_t *v, uint64_t *out)
{
	json_int_t x;

	if (!json_is_integer(v))
		return false;
	x = json_integer_value(v);
	if (x < 0)
		return false;
	*out = (uint64_t)x;
	return true;
}

/* Describes a value that get_uint() refused, for messages: "-1", "a real number". */
static void describe_bad_uint(const json_t *v, char *buf, size_t size)
{
	if (json_is_integer(v))
		snprintf(buf, size, "%lld", (long long)json_integer_value(v));
	else
		snprintf(buf, size, "%s", json_kind(v));
}

static int parse_shape(const struct parse *p, const char *name, const json_t *shape,
		       struct st_tensor *t)
{
	char what[32];
	size_t rank;

	if (!json_is_array(shape))
		return entry_reject(p, ST_ERR_SHAPE, name, true, "shape is %s, not an array",
				    json_kind(shape));
	rank = json_array_size(shape);
	if (rank > ST_MAX_RANK)
		return entry_reject(p, ST_ERR_RANK, name, true, "rank %zu exceeds the limit of %d",
				    rank, ST_MAX_RANK);
	t->rank = (uint32_t)rank;
	for (size_t i = 0; i < rank; i++) {
		const json_t *d = json_array_get(shape, i);

		if (!get_uint(d, &t->shape[i])) {
			describe_bad_uint(d, what, sizeof(what));
			return entry_reject(p, ST_ERR_SHAPE, name, true,
					    "dimension %zu is %s, not a non-negative integer", i,
					    what);
		}
	}
	return 0;
}

static int parse_offsets(const struct parse *p, const char *name, const json_t *offs,
			 struct st_tensor *t)
{
	char what[32];

	if (!json_is_array(offs))
		return entry_reject(p, ST_ERR_OFFSETS, name, true,
				    "data_offsets is %s, not an array [begin, end]",
				    json_kind(offs));
	if (json_array_size(offs) != 2)
		return entry_reject(p, ST_ERR_OFFSETS, name, true,
				    "data_offsets has %zu values, not 2 [begin, end]",
				    json_array_size(offs));
	for (size_t i = 0; i < 2; i++) {
		const json_t *o = json_array_get(offs, i);

		if (!get_uint(o, i ? &t->end : &t->begin)) {
			describe_bad_uint(o, what, sizeof(what));
			return entry_reject(p, ST_ERR_OFFSETS, name, true,
					    "data_offsets %s is %s, not a non-negative integer",
					    i ? "end" : "begin", what);
		}
	}
	if (t->begin > t->end)
		return entry_reject(p, ST_ERR_OFFSETS, name, true,
				    "data_offsets begin %llu > end %llu",
				    (unsigned long long)t->begin, (unsigned long long)t->end);
	return 0;
}

/*
 * Checks that the entry's byte range holds exactly nelem x bits / 8 bytes. A shape with a
 * zero dimension holds no elements whatever its other dimensions are, so it is never an
 * overflow; otherwise the product is checked step by step.
 */
static int check_size(const struct parse *p, const char *name, struct st_tensor *t)
{
	const struct st_dtype_info *di = st_dtype_info(t->dtype);
	uint64_t nelem = 1, bits;
	bool empty = false;

	for (uint32_t i = 0; i < t->rank; i++)
		empty |= t->shape[i] == 0;
	if (empty) {
		nelem = 0;
	} else {
		for (uint32_t i = 0; i < t->rank; i++)
			if (__builtin_mul_overflow(nelem, t->shape[i], &nelem))
				return entry_reject(p, ST_ERR_OVERFLOW, name, true,
						    "the element count overflows 64 bits at "
						    "dimension %u",
						    i);
	}
	if (__builtin_mul_overflow(nelem, (uint64_t)di->bits, &bits))
		return entry_reject(p, ST_ERR_OVERFLOW, name, true,
				    "%llu elements x %u bits overflows 64 bits",
				    (unsigned long long)nelem, di->bits);
	if (bits % 8)
		return entry_reject(p, ST_ERR_PARTIAL_BYTE, name, true,
				    "%llu elements of %s are %llu bits, not whole bytes",
				    (unsigned long long)nelem, di->name, (unsigned long long)bits);
	t->nelem = nelem;
	if (t->end - t->begin != bits / 8)
		return st_error_set(p->err, -EINVAL, ST_ERR_SIZE_MISMATCH, p->path, name,
				    p->data_start + t->begin, "data",
				    "data_offsets [%llu, %llu] hold %llu bytes but %llu elements "
				    "of %s need %llu",
				    (unsigned long long)t->begin, (unsigned long long)t->end,
				    (unsigned long long)(t->end - t->begin),
				    (unsigned long long)nelem, di->name,
				    (unsigned long long)(bits / 8));
	return 0;
}

/* Validates one tensor entry and fills @t (name included) from it. */
static int parse_entry(const struct parse *p, const char *name, const json_t *v,
		       struct st_tensor *t)
{
	static const char *const fields[] = { "dtype", "shape", "data_offsets" };
	const json_t *dtype, *shape, *offs;
	const char *key;
	json_t *val;
	char dname[64];
	int dt, rc;

	if (!json_is_object(v))
		return entry_reject(p, ST_ERR_ENTRY, name, true, "the entry is %s, not an object",
				    json_kind(v));
	for (size_t i = 0; i < ARRAY_SIZE(fields); i++)
		if (!json_object_get(v, fields[i]))
			return entry_reject(p, ST_ERR_ENTRY, name, true,
					    "the field \"%s\" is missing", fields[i]);
	json_object_foreach((json_t *)v, key, val) {
		if (strcmp(key, "dtype") && strcmp(key, "shape") && strcmp(key, "data_offsets")) {
			st_escape(dname, sizeof(dname), key, 48, true);
			return entry_reject(p, ST_ERR_ENTRY, name, true, "unknown field \"%s\"",
					    dname);
		}
	}
	dtype = json_object_get(v, "dtype");
	shape = json_object_get(v, "shape");
	offs = json_object_get(v, "data_offsets");

	if (!json_is_string(dtype))
		return entry_reject(p, ST_ERR_DTYPE, name, true, "dtype is %s, not a string",
				    json_kind(dtype));
	dt = st_dtype_from_name(json_string_value(dtype));
	if (dt < 0) {
		st_escape(dname, sizeof(dname), json_string_value(dtype), 48, true);
		return entry_reject(p, ST_ERR_DTYPE, name, true, "unknown dtype \"%s\"", dname);
	}
	t->dtype = (enum st_dtype)dt;
	rc = parse_shape(p, name, shape, t);
	if (!rc)
		rc = parse_offsets(p, name, offs, t);
	if (!rc)
		rc = check_size(p, name, t);
	if (rc)
		return rc;
	t->name = strdup(name);
	if (!t->name)
		return st_error_set(p->err, -ENOMEM, ST_ERR_NOMEM, p->path, name, UINT64_MAX, NULL,
				    "out of memory");
	return 0;
}

static int parse_metadata(const struct parse *p, const json_t *m, struct st_file *out)
{
	const char *key;
	json_t *val;
	char ekey[64];

	if (!json_is_object(m))
		return entry_reject(p, ST_ERR_METADATA, "__metadata__", false,
				    "__metadata__ is %s, not an object", json_kind(m));
	out->meta = calloc(json_object_size(m) ? json_object_size(m) : 1, sizeof(*out->meta));
	if (!out->meta)
		return st_error_set(p->err, -ENOMEM, ST_ERR_NOMEM, p->path, NULL, UINT64_MAX, NULL,
				    "out of memory");
	json_object_foreach((json_t *)m, key, val) {
		struct st_kv *kv = &out->meta[out->n_meta];

		if (!json_is_string(val)) {
			st_escape(ekey, sizeof(ekey), key, 48, true);
			return entry_reject(p, ST_ERR_METADATA, "__metadata__", false,
					    "__metadata__ value of \"%s\" is %s, not a string",
					    ekey, json_kind(val));
		}
		kv->key = strdup(key);
		kv->value = strdup(json_string_value(val));
		out->n_meta++;
		if (!kv->key || !kv->value)
			return st_error_set(p->err, -ENOMEM, ST_ERR_NOMEM, p->path, NULL,
					    UINT64_MAX, NULL, "out of memory");
	}
	return 0;
}

/* File order: by begin, then end (a zero-size tensor before one that starts with it). */
static int cmp_offset(const void *a, const void *b)
{
	const struct st_tensor *x = a, *y = b;

	if (x->begin != y->begin)
		return x->begin < y->begin ? -1 : 1;
	if (x->end != y->end)
		return x->end < y->end ? -1 : 1;
	return strcmp(x->name, y->name);
}

static int cmp_name(const void *a, const void *b, void *arg)
{
	const struct st_tensor *t = arg;

	return strcmp(t[*(const uint32_t *)a].name, t[*(const uint32_t *)b].name);
}

/*
 * Checks that the tensors, sorted by offset, start at 0 and tile the data region with no
 * gap and no overlap up to exactly the end of the file.
 */
static int check_layout(const struct parse *p, const struct st_file *f)
{
	uint64_t cursor = 0, data_len = f->file_size - f->data_start;
	char prev[136];

	for (uint32_t i = 0; i < f->n_tensors; i++) {
		const struct st_tensor *t = &f->tensors[i];

		if (i == 0 && t->begin != 0)
			return st_error_set(p->err, -EINVAL, ST_ERR_DATA_START, p->path, t->name,
					    p->data_start + t->begin, "data",
					    "the first tensor starts at data offset %llu, not 0",
					    (unsigned long long)t->begin);
		if (i > 0)
			st_escape(prev, sizeof(prev), f->tensors[i - 1].name, 128, true);
		if (t->begin > cursor)
			return st_error_set(p->err, -EINVAL, ST_ERR_GAP, p->path, t->name,
					    p->data_start + cursor, "data",
					    "data offsets [%llu, %llu) between tensor \"%s\" and "
					    "this one belong to no tensor",
					    (unsigned long long)cursor,
					    (unsigned long long)t->begin, prev);
		if (t->begin < cursor)
			return st_error_set(p->err, -EINVAL, ST_ERR_OVERLAP, p->path, t->name,
					    p->data_start + t->begin, "data",
					    "data_offsets [%llu, %llu] overlap tensor \"%s\", "
					    "which ends at %llu",
					    (unsigned long long)t->begin,
					    (unsigned long long)t->end, prev,
					    (unsigned long long)cursor);
		cursor = t->end;
	}
	if (cursor != data_len)
		return st_error_set(p->err, -EINVAL, ST_ERR_FILE_SIZE, p->path, NULL,
				    p->data_start + cursor, "data end",
				    "the tensors end at byte %llu (8 + N + %llu) but the file has "
				    "%llu bytes",
				    (unsigned long long)(p->data_start + cursor),
				    (unsigned long long)cursor, (unsigned long long)f->file_size);
	return 0;
}

static int parse_entries(const struct parse *p, json_t *root, struct st_file *out)
{
	size_t n = json_object_size(root);
	const char *key;
	json_t *val;
	int rc;

	if (json_object_get(root, "__metadata__"))
		n--;
	/* n is bounded by the header size (an entry takes dozens of bytes), so is this. */
	out->tensors = calloc(n ? n : 1, sizeof(*out->tensors));
	out->by_name = calloc(n ? n : 1, sizeof(*out->by_name));
	if (!out->tensors || !out->by_name)
		return st_error_set(p->err, -ENOMEM, ST_ERR_NOMEM, p->path, NULL, UINT64_MAX, NULL,
				    "out of memory for %zu tensors", n);
	json_object_foreach(root, key, val) {
		if (!strcmp(key, "__metadata__"))
			rc = parse_metadata(p, val, out);
		else
			rc = parse_entry(p, key, val, &out->tensors[out->n_tensors]);
		if (rc)
			return rc;
		if (strcmp(key, "__metadata__"))
			out->n_tensors++;
	}
	qsort(out->tensors, out->n_tensors, sizeof(*out->tensors), cmp_offset);
	for (uint32_t i = 0; i < out->n_tensors; i++)
		out->by_name[i] = i;
	qsort_r(out->by_name, out->n_tensors, sizeof(*out->by_name), cmp_name, out->tensors);
	return check_layout(p, out);
}

static uint64_t load_le64(const void *buf)
{
	const uint8_t *b = buf;
	uint64_t v = 0;

	for (int i = 7; i >= 0; i--)
		v = v << 8 | b[i];
	return v;
}

static void clear_error(struct st_error *err)
{
	if (!err)
		return;
	err->code = ST_OK;
	err->offset = UINT64_MAX;
	err->tensor[0] = '\0';
	err->message[0] = '\0';
}

/*
 * The checks on the length field alone: they need only the first 8 bytes and the file size,
 * so st_open_fd() runs them before it allocates anything for the header.
 */
static int check_length(const char *path, const void *buf, size_t len, uint64_t file_size,
			uint64_t *n_out, struct st_error *err)
{
	uint64_t n;

	if (file_size < 8)
		return st_error_set(err, -EINVAL, ST_ERR_TOO_SMALL, path, NULL, 0, "file",
				    "the file has %llu bytes, fewer than the 8-byte header length",
				    (unsigned long long)file_size);
	if (len < 8)
		return st_error_set(err, -EINVAL, ST_ERR_IO, path, NULL, 0, "file",
				    "only %zu of the file's first 8 bytes were given", len);
	n = load_le64(buf);
	if (n > ST_MAX_HEADER)
		return st_error_set(err, -EINVAL, ST_ERR_HEADER_TOO_LARGE, path, NULL, 0,
				    "length field",
				    /* Never the value: it is the file's first 8 bytes, and the
				     * file may be one the reader of this message cannot read. */
				    "the header length field exceeds the limit of %llu bytes",
				    ST_MAX_HEADER);
	/* file_size >= 8 here, so the subtraction cannot wrap, where 8 + n could. */
	if (n > file_size - 8)
		return st_error_set(err, -EINVAL, ST_ERR_HEADER_BOUNDS, path, NULL, 8, "header",
				    "the header length field points past the end of the "
				    "%llu-byte file", (unsigned long long)file_size);
	*n_out = n;
	return 0;
}

int st_parse_header(const char *path, const void *buf, size_t len, uint64_t file_size,
		    struct st_file *out, struct st_error *err)
{
	struct parse p = { .path = path ? path : "(buffer)", .err = err };
	json_t *root;
	uint64_t n = 0;
	int rc;

	memset(out, 0, sizeof(*out));
	clear_error(err);
	rc = check_length(p.path, buf, len, file_size, &n, err);
	if (rc)
		return rc;
	if (n > len - 8)
		return st_error_set(err, -EINVAL, ST_ERR_IO, p.path, NULL, 8, "header",
				    "only %zu of the header's %llu bytes were given", len - 8,
				    (unsigned long long)n);
	p.hdr = (const char *)buf + 8;
	p.hdr_len = n;
	p.data_start = 8 + n;

	root = parse_json(&p, &rc);
	if (!root)
		return rc;
	out->file_size = file_size;
	out->header_len = n;
	out->data_start = 8 + n;
	rc = parse_entries(&p, root, out);
	json_decref(root);
	if (rc) {
		st_file_free(out);
		return rc;
	}
	out->header_hash = XXH3_64bits(buf, 8 + n);
	return 0;
}

ssize_t st_pread_full(int fd, void *buf, size_t len, uint64_t off)
{
	size_t got = 0;

	while (got < len) {
		ssize_t r = pread(fd, (char *)buf + got, len - got, (off_t)(off + got));

		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			break;
		got += (size_t)r;
	}
	return (ssize_t)got;
}

static int io_error(struct st_error *err, const char *path, int rc, const char *what)
{
	char buf[128];

	return st_error_set(err, rc, ST_ERR_IO, path, NULL, UINT64_MAX, NULL, "%s: %s", what,
			    strerror_r(-rc, buf, sizeof(buf)));
}

int st_open_fd(int fd, const char *path, struct st_file *out, struct st_error *err)
{
	uint8_t head[8];
	struct stat sb;
	uint64_t size, n = 0;
	ssize_t got;
	char *buf;
	int rc;

	memset(out, 0, sizeof(*out));
	clear_error(err);
	if (!path)
		path = "(fd)";
	if (fstat(fd, &sb) < 0)
		return io_error(err, path, -errno, "fstat");
	if (S_ISDIR(sb.st_mode))
		return io_error(err, path, -EISDIR, "open");
	if (!S_ISREG(sb.st_mode))
		return st_error_set(err, -EINVAL, ST_ERR_IO, path, NULL, UINT64_MAX, NULL,
				    "not a regular file");
	size = (uint64_t)sb.st_size;

	got = st_pread_full(fd, head, size < 8 ? size : 8, 0);
	if (got < 0)
		return io_error(err, path, (int)got, "read");
	/* A short read means the file shrank since fstat; check_length() reports it. */
	rc = check_length(path, head, (size_t)got, size, &n, err);
	if (rc)
		return rc;

	buf = malloc(8 + n);
	if (!buf)
		return st_error_set(err, -ENOMEM, ST_ERR_NOMEM, path, NULL, 8, "header",
				    "out of memory for a %llu-byte header", (unsigned long long)n);
	memcpy(buf, head, 8);
	got = st_pread_full(fd, buf + 8, n, 8);
	if (got < 0) {
		free(buf);
		return io_error(err, path, (int)got, "read");
	}
	if ((uint64_t)got < n) {
		free(buf);
		return st_error_set(err, -EIO, ST_ERR_IO, path, NULL, 8 + (uint64_t)got, "header",
				    "the file ended after %zd of the header's %llu bytes; it "
				    "shrank while being read",
				    got, (unsigned long long)n);
	}
	rc = st_parse_header(path, buf, 8 + n, size, out, err);
	free(buf);
	if (rc)
		return rc;
	out->path = strdup(path);
	if (!out->path) {
		st_file_free(out);
		return st_error_set(err, -ENOMEM, ST_ERR_NOMEM, path, NULL, UINT64_MAX, NULL,
				    "out of memory");
	}
	return 0;
}

int st_open(const char *path, struct st_file *out, struct st_error *err)
{
	int fd, rc;

	memset(out, 0, sizeof(*out));
	clear_error(err);
	/* O_NONBLOCK so that a FIFO at @path cannot block the open; it is refused below. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
	if (fd < 0)
		return io_error(err, path, -errno, "open");
	rc = st_open_fd(fd, path, out, err);
	close(fd);
	return rc;
}

void st_file_free(struct st_file *f)
{
	if (!f)
		return;
	free(f->path);
	/* parse_entry() sets a name last, so an entry that failed holds no allocation. */
	for (uint32_t i = 0; i < f->n_tensors; i++)
		free(f->tensors[i].name);
	free(f->tensors);
	free(f->by_name);
	for (uint32_t i = 0; i < f->n_meta; i++) {
		free(f->meta[i].key);
		free(f->meta[i].value);
	}
	free(f->meta);
	memset(f, 0, sizeof(*f));
}

const struct st_tensor *st_find(const struct st_file *f, const char *name)
{
	uint32_t lo = 0, hi = f->n_tensors;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		const struct st_tensor *t = &f->tensors[f->by_name[mid]];
		int c = strcmp(name, t->name);

		if (!c)
			return t;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

const char *st_meta_get(const struct st_file *f, const char *key)
{
	for (uint32_t i = 0; i < f->n_meta; i++)
		if (!strcmp(f->meta[i].key, key))
			return f->meta[i].value;
	return NULL;
}

uint64_t st_data_bytes(const struct st_file *f)
{
	/* Sorted and tiled: the last tensor ends where the data ends. */
	return f->n_tensors ? f->tensors[f->n_tensors - 1].end : 0;
}

uint64_t st_param_count(const struct st_file *f)
{
	uint64_t sum = 0;

	for (uint32_t i = 0; i < f->n_tensors; i++)
		sum += f->tensors[i].nelem;
	return sum;
}

void st_shape_str(const struct st_tensor *t, char *buf, size_t size)
{
	size_t o;

	if (!size)
		return;
	o = (size_t)snprintf(buf, size, "[");
	for (uint32_t i = 0; i < t->rank && o < size; i++)
		o += (size_t)snprintf(buf + o, size - o, "%s%llu", i ? ", " : "",
				      (unsigned long long)t->shape[i]);
	if (o < size)
		snprintf(buf + o, size - o, "]");
}
