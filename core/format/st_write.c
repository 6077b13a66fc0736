/*
 * The safetensors writer.
 *
 * Layout of what we write: the 8-byte little-endian header length N, a compact JSON
 * header (the optional __metadata__ first, then the tensors in the caller's order) right
 * padded with spaces so that 8 + N is a multiple of 8, then every tensor's bytes back to
 * back in the same order. The file appears under its final name only when complete: it
 * is written as a hidden temporary file in the same directory and renamed over @path.
 *
 * Tensors given without data get pseudo-random bytes that depend only on (seed, name,
 * dtype, size): a counter-based splitmix64 stream keyed by xxh3(name) ^ seed, so two runs
 * with the same inputs write byte-identical files and any chunk can be produced without
 * producing the ones before it. Float elements have one exponent bit (or the sign bit for
 * the FNUZ formats, whose NaN is the negative zero pattern) cleared so that no generated
 * value is NaN or Inf, and BOOL elements are 0 or 1: generated files pass a deep check.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/base/common.h"
#include "core/base/log.h"
#include "core/format/st_write.h"

#define CHUNK (1u << 20)
#define GOLDEN 0x9e3779b97f4a7c15ull

/* The splitmix64 output function: a bijective mix of a 64-bit counter. */
static inline uint64_t mix64(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/*
 * The AND mask applied to every generated 64-bit word of a tensor of dtype @dt. Element
 * widths of 8, 16, 32 and 64 bits divide 64, and words are counted from the tensor's
 * first byte, so each lane of the mask lines up with one element.
 */
static uint64_t dtype_mask(enum st_dtype dt)
{
	switch (dt) {
	case ST_BOOL:
		return 0x0101010101010101ull;
	case ST_F16:
	case ST_BF16:
		return ~0x4000400040004000ull;
	case ST_F32:
	case ST_C64:
		return ~0x4000000040000000ull;
	case ST_F64:
		return ~0x4000000000000000ull;
	case ST_F8_E4M3:
	case ST_F8_E5M2:
	case ST_F8_E8M0:
		return ~0x4040404040404040ull;
	case ST_F8_E4M3FNUZ:
	case ST_F8_E5M2FNUZ:
		return ~0x8080808080808080ull;
	default:
		/* Integers, and F6/F4 which have no NaN or Inf encodings. */
		return ~0ull;
	}
}

/* Fills @dst with bytes [@off, @off + @len) of the stream keyed by @key, masked by @mask. */
static void fill(uint64_t key, uint64_t mask, uint64_t off, uint8_t *dst, size_t len)
{
	uint64_t i = off / 8;
	size_t r = off % 8;
	uint64_t w;

	if (r) {
		size_t take = 8 - r < len ? 8 - r : len;

		w = htole64(mix64(key + (i + 1) * GOLDEN) & mask);
		memcpy(dst, (uint8_t *)&w + r, take);
		dst += take;
		len -= take;
		i++;
	}
	for (; len >= 8; len -= 8, dst += 8, i++) {
		w = htole64(mix64(key + (i + 1) * GOLDEN) & mask);
		memcpy(dst, &w, 8);
	}
	if (len) {
		w = htole64(mix64(key + (i + 1) * GOLDEN) & mask);
		memcpy(dst, &w, len);
	}
}

/* write(2) until all of @len is written; returns 0 or a negative errno. */
static int write_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	while (len) {
		ssize_t n = write(fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Size in bytes of tensor @t, or -EINVAL (bad dtype or rank, overflow, partial byte). */
static int tensor_nbytes(const struct st_write_tensor *t, uint64_t *out)
{
	uint64_t nelem = 1, bits;

	if (!t->name || (unsigned)t->dtype >= ST_DTYPE_COUNT || t->rank > ST_MAX_RANK)
		return -EINVAL;
	for (uint32_t d = 0; d < t->rank; d++) {
		if (t->shape[d] > INT64_MAX || __builtin_mul_overflow(nelem, t->shape[d], &nelem))
			return -EINVAL;
	}
	if (__builtin_mul_overflow(nelem, (uint64_t)st_dtype_info(t->dtype)->bits, &bits))
		return -EINVAL;
	if (bits % 8)
		return -EINVAL;
	*out = bits / 8;
	return 0;
}

/* Adds one tensor entry to @root; -EINVAL for a duplicate or invalid name, -ENOMEM. */
static int add_entry(json_t *root, const struct st_write_tensor *t, uint64_t begin, uint64_t end)
{
	json_t *e, *shape, *offs;
	int bad;

	if (!strcmp(t->name, "__metadata__") || json_object_get(root, t->name))
		return -EINVAL;
	e = json_object();
	shape = json_array();
	offs = json_array();
	if (!e || !shape || !offs) {
		json_decref(e);
		json_decref(shape);
		json_decref(offs);
		return -ENOMEM;
	}
	for (uint32_t d = 0; d < t->rank; d++)
		json_array_append_new(shape, json_integer((json_int_t)t->shape[d]));
	json_array_append_new(offs, json_integer((json_int_t)begin));
	json_array_append_new(offs, json_integer((json_int_t)end));
	/* Each set takes its value's reference even when it fails, so none may be skipped. */
	bad = json_object_set_new(e, "dtype", json_string(st_dtype_info(t->dtype)->name));
	bad |= json_object_set_new(e, "shape", shape);
	bad |= json_object_set_new(e, "data_offsets", offs);
	if (bad || json_array_size(shape) != t->rank || json_array_size(offs) != 2) {
		json_decref(e);
		return -ENOMEM;
	}
	/* jansson refuses keys that are not valid UTF-8; that is the caller's error. */
	if (json_object_set_new(root, t->name, e))
		return -EINVAL;
	return 0;
}

/*
 * Builds the padded header: 8 length bytes, then the JSON and the spaces. On success
 * *@out is a malloc'd buffer of *@out_len bytes and 0 is returned.
 */
static int build_header(const struct st_write_tensor *tensors, size_t n, const struct st_kv *meta,
			size_t n_meta, const uint64_t *sizes, uint8_t **out, size_t *out_len)
{
	json_t *root = json_object();
	uint64_t off = 0, hlen_le;
	size_t jlen, hlen;
	uint8_t *buf;
	char *json;
	int rc = 0;

	if (!root)
		return -ENOMEM;
	if (n_meta) {
		json_t *m = json_object();

		if (!m || json_object_set_new(root, "__metadata__", m)) {
			json_decref(root);
			return -ENOMEM;
		}
		for (size_t i = 0; i < n_meta && !rc; i++) {
			json_t *v = NULL;

			if (meta[i].key && meta[i].value)
				v = json_string(meta[i].value);

			if (!v || json_object_get(m, meta[i].key) ||
			    json_object_set_new(m, meta[i].key, v))
				rc = -EINVAL;
		}
	}
	for (size_t i = 0; i < n && !rc; i++) {
		rc = add_entry(root, &tensors[i], off, off + sizes[i]);
		off += sizes[i];
	}
	if (rc) {
		json_decref(root);
		return rc;
	}
	/* jansson keeps insertion order, so the header lists tensors in file order. */
	json = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(root);
	if (!json)
		return -ENOMEM;
	jlen = strlen(json);
	hlen = (jlen + 7) & ~(size_t)7;
	buf = malloc(8 + hlen);
	if (!buf) {
		free(json);
		return -ENOMEM;
	}
	hlen_le = htole64((uint64_t)hlen);
	memcpy(buf, &hlen_le, 8);
	memcpy(buf + 8, json, jlen);
	memset(buf + 8 + jlen, ' ', hlen - jlen);
	free(json);
	*out = buf;
	*out_len = 8 + hlen;
	return 0;
}

/* Streams every tensor's bytes to @fd through @chunk (CHUNK bytes). */
static int write_data(int fd, const struct st_write_tensor *tensors, size_t n,
		      const uint64_t *sizes, uint64_t seed, uint8_t *chunk,
		      void (*progress)(void *arg, uint64_t bytes_done), void *arg)
{
	uint64_t done = 0;
	size_t used = 0;
	int rc;

	for (size_t i = 0; i < n; i++) {
		const struct st_write_tensor *t = &tensors[i];
		uint64_t key = XXH3_64bits(t->name, strlen(t->name)) ^ seed;
		uint64_t mask = dtype_mask(t->dtype);

		for (uint64_t pos = 0; pos < sizes[i];) {
			size_t take = CHUNK - used;

			if (take > sizes[i] - pos)
				take = (size_t)(sizes[i] - pos);
			if (t->data)
				memcpy(chunk + used, (const uint8_t *)t->data + pos, take);
			else
				fill(key, mask, pos, chunk + used, take);
			used += take;
			pos += take;
			if (used == CHUNK) {
				rc = write_all(fd, chunk, used);
				if (rc)
					return rc;
				done += used;
				used = 0;
				if (progress)
					progress(arg, done);
			}
		}
	}
	if (used) {
		rc = write_all(fd, chunk, used);
		if (rc)
			return rc;
		done += used;
		if (progress)
			progress(arg, done);
	}
	return 0;
}

/* "DIR/.BASE.XXXXXX" next to @path, so that rename() stays within one file system. */
static char *temp_name(const char *path)
{
	char *copy1 = strdup(path), *copy2 = strdup(path), *out = NULL;

	if (copy1 && copy2) {
		const char *dir = dirname(copy1), *base = basename(copy2);

		if (asprintf(&out, "%s/.%s.XXXXXX", dir, base) < 0)
			out = NULL;
	}
	free(copy1);
	free(copy2);
	return out;
}

int st_write_file_progress(const char *path, const struct st_write_tensor *tensors, size_t n,
			   const struct st_kv *meta, size_t n_meta, uint64_t seed,
			   void (*progress)(void *arg, uint64_t bytes_done), void *arg)
{
	uint8_t *header = NULL, *chunk = NULL;
	uint64_t *sizes = NULL;
	char *tmp = NULL;
	size_t hlen;
	int fd = -1, rc;

	if (!path || (n && !tensors) || (n_meta && !meta))
		return -EINVAL;
	sizes = calloc(n ? n : 1, sizeof(*sizes));
	if (!sizes)
		return -ENOMEM;
	for (size_t i = 0; i < n; i++) {
		rc = tensor_nbytes(&tensors[i], &sizes[i]);
		if (rc)
			goto out;
	}
	rc = build_header(tensors, n, meta, n_meta, sizes, &header, &hlen);
	if (rc)
		goto out;
	chunk = malloc(CHUNK);
	tmp = temp_name(path);
	if (!chunk || !tmp) {
		rc = -ENOMEM;
		goto out;
	}
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		rc = -errno;
		goto out;
	}
	/* mkostemp creates 0600; generated models are meant to be shared read-only. */
	if (fchmod(fd, 0644) < 0) {
		rc = -errno;
		goto out;
	}
	rc = write_all(fd, header, hlen);
	if (!rc)
		rc = write_data(fd, tensors, n, sizes, seed, chunk, progress, arg);
	if (rc)
		goto out;
	/*
	 * No fsync: these files are reproducible from their inputs, so losing them in a crash
	 * costs nothing, and fsync would dominate generating thousands of small files.
	 */
	rc = close(fd);
	fd = -1;
	if (rc < 0) {
		rc = -errno;
		goto out;
	}
	if (rename(tmp, path) < 0) {
		rc = -errno;
		goto out;
	}
	free(tmp);
	tmp = NULL;
out:
	if (fd >= 0)
		close(fd);
	if (tmp && rc) {
		unlink(tmp);
		log_debug("st_write", "\"write failed\" path=\"%s\" err=%d", path, rc);
	}
	free(tmp);
	free(chunk);
	free(header);
	free(sizes);
	return rc;
}

int st_write_file(const char *path, const struct st_write_tensor *tensors, size_t n,
		  const struct st_kv *meta, size_t n_meta, uint64_t seed)
{
	return st_write_file_progress(path, tensors, n, meta, n_meta, seed, NULL, NULL);
}
