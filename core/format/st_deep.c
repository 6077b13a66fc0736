/*
 * Deep validation of a safetensors file whose header st_open() already accepted: every
 * data byte is read once, in ST_DEEP_CHUNK pieces, and fed to a per-tensor xxh3-64 and to
 * a NaN/Inf counter for the float dtypes.
 *
 * The validated header guarantees that the tensors, in f->tensors order, tile the data
 * region [8 + N, file size) exactly, so one sequential pass with one streaming hash state
 * visits each tensor in turn. Tensors start at any byte offset (the format does not align
 * them) and span chunk boundaries, so element values are loaded with memcpy and an element
 * cut by a chunk boundary is completed in a small carry buffer.
 */
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/base/common.h"
#include "core/format/st.h"

/* The element being counted, when a chunk boundary cut it. */
struct carry {
	uint8_t bytes[8];
	unsigned len;
};

/*
 * Bytes per counted value: 0 for dtypes that cannot hold NaN or Inf (integers, BOOL, F6
 * and F4, which have no such encodings). C64 is counted as a stream of F32 parts, so a
 * complex element contributes its real and imaginary part separately.
 */
static unsigned value_size(enum st_dtype dt)
{
	switch (dt) {
	case ST_F16:
	case ST_BF16:
		return 2;
	case ST_F32:
	case ST_C64:
		return 4;
	case ST_F64:
		return 8;
	case ST_F8_E4M3:
	case ST_F8_E5M2:
	case ST_F8_E8M0:
	case ST_F8_E4M3FNUZ:
	case ST_F8_E5M2FNUZ:
		return 1;
	default:
		return 0;
	}
}

/*
 * The counting loops below test the magnitude bits of each value (sign cleared) against the
 * all-ones exponent: equal is Inf, above is NaN; that is the IEEE rule, and F8_E5M2 follows
 * it. They run in blocks of BLOCK values with 32-bit counters and a fixed trip count,
 * which compilers vectorize even at -O2 (GCC's cheap cost model refuses loops of unknown
 * length), and finish the last partial block one value at a time.
 */
#define BLOCK 64

static inline uint16_t load16(const uint8_t *p)
{
	uint16_t v;

	memcpy(&v, p, 2); /* memcpy: the data is not aligned */
	return le16toh(v);
}

static inline uint32_t load32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return le32toh(v);
}

static inline uint64_t load64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, 8);
	return le64toh(v);
}

/* IEEE-like 16-bit values (F16: exponent bits 0x7c00, BF16: 0x7f80). */
static void count16(const uint8_t *p, size_t n, uint16_t exp, struct st_deep_tensor *o)
{
	size_t i = 0;

	for (; i + BLOCK <= n; i += BLOCK) {
		uint32_t nan = 0, inf = 0;

		for (size_t j = 0; j < BLOCK; j++) {
			uint16_t v = load16(p + 2 * (i + j)) & 0x7fff;

			nan += v > exp;
			inf += v == exp;
		}
		o->nan += nan;
		o->inf += inf;
	}
	for (; i < n; i++) {
		uint16_t v = load16(p + 2 * i) & 0x7fff;

		o->nan += v > exp;
		o->inf += v == exp;
	}
}

/* F32, and C64 as pairs of F32. */
static void count32(const uint8_t *p, size_t n, struct st_deep_tensor *o)
{
	const uint32_t exp = 0x7f800000u;
	size_t i = 0;

	for (; i + BLOCK <= n; i += BLOCK) {
		uint32_t nan = 0, inf = 0;

		for (size_t j = 0; j < BLOCK; j++) {
			uint32_t v = load32(p + 4 * (i + j)) & 0x7fffffffu;

			nan += v > exp;
			inf += v == exp;
		}
		o->nan += nan;
		o->inf += inf;
	}
	for (; i < n; i++) {
		uint32_t v = load32(p + 4 * i) & 0x7fffffffu;

		o->nan += v > exp;
		o->inf += v == exp;
	}
}

static void count64(const uint8_t *p, size_t n, struct st_deep_tensor *o)
{
	const uint64_t exp = 0x7ff0000000000000ull;
	size_t i = 0;

	for (; i + BLOCK <= n; i += BLOCK) {
		uint32_t nan = 0, inf = 0;

		for (size_t j = 0; j < BLOCK; j++) {
			uint64_t v = load64(p + 8 * (i + j)) & 0x7fffffffffffffffull;

			nan += v > exp;
			inf += v == exp;
		}
		o->nan += nan;
		o->inf += inf;
	}
	for (; i < n; i++) {
		uint64_t v = load64(p + 8 * i) & 0x7fffffffffffffffull;

		o->nan += v > exp;
		o->inf += v == exp;
	}
}

/*
 * 8-bit values: (v & @mask) above @exp is NaN and equal to it is Inf, when @has_inf;
 * without Inf, (v & @mask) equal to @exp is the NaN.
 */
static void count8(const uint8_t *p, size_t n, uint8_t mask, uint8_t exp, bool has_inf,
		   struct st_deep_tensor *o)
{
	size_t i = 0;

	for (; i + BLOCK <= n; i += BLOCK) {
		uint32_t above = 0, equal = 0;

		for (size_t j = 0; j < BLOCK; j++) {
			uint8_t v = p[i + j] & mask;

			above += v > exp;
			equal += v == exp;
		}
		o->nan += has_inf ? above : equal;
		o->inf += has_inf ? equal : 0;
	}
	for (; i < n; i++) {
		uint8_t v = p[i] & mask;

		o->nan += has_inf ? v > exp : v == exp;
		o->inf += has_inf && v == exp;
	}
}

/* Counts NaN and Inf among @n values at @p (n x value_size(dt) bytes, any alignment). */
static void count_values(enum st_dtype dt, const uint8_t *p, size_t n, struct st_deep_tensor *o)
{
	switch (dt) {
	case ST_F16:
		count16(p, n, 0x7c00, o);
		break;
	case ST_BF16:
		count16(p, n, 0x7f80, o);
		break;
	case ST_F32:
	case ST_C64:
		count32(p, n, o);
		break;
	case ST_F64:
		count64(p, n, o);
		break;
	case ST_F8_E4M3:
		/* The "fn" variant: no Inf; S.1111.111 is the only NaN. */
		count8(p, n, 0x7f, 0x7f, false, o);
		break;
	case ST_F8_E5M2:
		/* IEEE-like: exponent 11111 with mantissa 00 is Inf, anything else NaN. */
		count8(p, n, 0x7f, 0x7c, true, o);
		break;
	case ST_F8_E4M3FNUZ:
	case ST_F8_E5M2FNUZ:
		/* "fnuz": no Inf, no negative zero; the negative-zero pattern 0x80 is NaN. */
		count8(p, n, 0xff, 0x80, false, o);
		break;
	case ST_F8_E8M0:
		/* An exponent-only scale: 0xff is NaN and nothing is Inf. */
		count8(p, n, 0xff, 0xff, false, o);
		break;
	default:
		break;
	}
}

/* Counts @len bytes of a tensor's data that follow the bytes already seen, in any cut. */
static void count_bytes(enum st_dtype dt, const uint8_t *p, size_t len, struct carry *c,
			struct st_deep_tensor *o)
{
	unsigned vs = value_size(dt);
	size_t whole;

	if (!vs)
		return;
	if (c->len) {
		size_t take = vs - c->len < len ? vs - c->len : len;

		memcpy(c->bytes + c->len, p, take);
		c->len += (unsigned)take;
		p += take;
		len -= take;
		if (c->len < vs)
			return;
		count_values(dt, c->bytes, 1, o);
		c->len = 0;
	}
	whole = len / vs;
	count_values(dt, p, whole, o);
	c->len = (unsigned)(len - whole * vs);
	memcpy(c->bytes, p + whole * vs, c->len);
}

/* What one st_deep_check() call is walking: the tensor being read and its hash state. */
struct walk {
	const struct st_file *f;
	struct st_deep_tensor *out;
	XXH3_state_t *hash;
	struct carry carry;
	uint32_t ti; /* the tensor the next data byte belongs to */
};

/* Finishes every tensor that ends at data offset @pos (zero-size ones included). */
static void settle(struct walk *w, uint64_t pos)
{
	while (w->ti < w->f->n_tensors && w->f->tensors[w->ti].end <= pos) {
		w->out[w->ti].xxh3 = XXH3_64bits_digest(w->hash);
		XXH3_64bits_reset(w->hash);
		w->carry.len = 0;
		w->ti++;
	}
}

/* Feeds a chunk that starts at data offset @pos to the tensors it covers. */
static void feed(struct walk *w, const uint8_t *buf, size_t len, uint64_t pos)
{
	size_t o = 0;

	settle(w, pos);
	while (o < len && w->ti < w->f->n_tensors) {
		const struct st_tensor *t = &w->f->tensors[w->ti];
		uint64_t left = t->end - (pos + o);
		size_t take = left < len - o ? (size_t)left : len - o;

		XXH3_64bits_update(w->hash, buf + o, take);
		count_bytes(t->dtype, buf + o, take, &w->carry, &w->out[w->ti]);
		o += take;
		settle(w, pos + o);
	}
}

int st_deep_check(int fd, const struct st_file *f, struct st_deep_tensor *out,
		  struct st_error *err)
{
	return st_deep_check_progress(fd, f, out, err, NULL, NULL);
}

int st_deep_check_progress(int fd, const struct st_file *f, struct st_deep_tensor *out,
			   struct st_error *err,
			   void (*progress)(uint64_t done, uint64_t total, void *arg), void *arg)
{
	const char *path = f->path ? f->path : "(fd)";
	uint64_t total = st_data_bytes(f), pos = 0;
	struct walk w = { .f = f, .out = out };
	size_t cap = total < ST_DEEP_CHUNK ? (size_t)total : ST_DEEP_CHUNK;
	struct stat sb;
	uint8_t *buf;
	int rc = 0;

	if (err) {
		err->code = ST_OK;
		err->offset = UINT64_MAX;
		err->tensor[0] = '\0';
		err->message[0] = '\0';
	}
	memset(out, 0, f->n_tensors * sizeof(*out));
	if (fstat(fd, &sb) < 0)
		return st_error_set(err, -errno, ST_ERR_IO, path, NULL, UINT64_MAX, NULL,
				    "fstat: %s", strerror(errno));
	if ((uint64_t)sb.st_size != f->file_size)
		return st_error_set(err, -EINVAL, ST_ERR_FILE_SIZE, path, NULL, UINT64_MAX, NULL,
				    "the file has %llu bytes now, %llu when its header was read",
				    (unsigned long long)sb.st_size,
				    (unsigned long long)f->file_size);
	buf = malloc(cap ? cap : 1);
	w.hash = XXH3_createState();
	if (!buf || !w.hash) {
		rc = st_error_set(err, -ENOMEM, ST_ERR_NOMEM, path, NULL, UINT64_MAX, NULL,
				  "out of memory for the read buffer");
		goto out;
	}
	XXH3_64bits_reset(w.hash);
	/* One pass, front to back: tell the kernel so that it reads ahead generously. */
	posix_fadvise(fd, (off_t)f->data_start, (off_t)total, POSIX_FADV_SEQUENTIAL);

	while (pos < total) {
		size_t len = total - pos < cap ? (size_t)(total - pos) : cap;
		ssize_t got = st_pread_full(fd, buf, len, f->data_start + pos);

		if (got < 0) {
			rc = st_error_set(err, (int)got, ST_ERR_IO, path, NULL, f->data_start + pos,
					  "data", "read: %s", strerror((int)-got));
			goto out;
		}
		if ((size_t)got < len) {
			rc = st_error_set(err, -EINVAL, ST_ERR_FILE_SIZE, path, NULL,
					  f->data_start + pos + (uint64_t)got, "data",
					  "the file ended early; it shrank while being read");
			goto out;
		}
		feed(&w, buf, len, pos);
		pos += len;
		if (progress)
			progress(pos, total, arg);
	}
	/* Zero-size tensors at the very end, or every tensor of a file with no data. */
	settle(&w, total);
out:
	XXH3_freeState(w.hash);
	free(buf);
	return rc;
}
