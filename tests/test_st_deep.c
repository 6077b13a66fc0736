/*
 * Deep validation: per-tensor xxh3 and NaN/Inf counts, read back from real files.
 *
 * Small hand-labelled rows pin down each float encoding (which bit patterns are NaN or
 * Inf in F16, BF16, F32, F64, C64 and the five F8 types, and that F6, F4 and integers
 * count nothing), each written at several misalignments of the data. A large file with
 * tensors longer than ST_DEEP_CHUNK, starting at odd offsets and with elements cut by
 * chunk boundaries, is compared with a reference computed here by other means (libm's
 * isnan/isinf, XXH3_64bits over the whole tensor). Error rows cover a file that changed
 * size and descriptors that cannot be read.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <xxhash.h>

#include "core/base/common.h"
#include "core/format/st.h"

struct wtensor {
	const char *name;
	const char *dtype;
	const char *shape;
	const void *data;
	size_t len;
};

/* A private temporary directory, removed at the end of main(). */
static char tmp_dirname[256];

static const char *tmp_path(const char *name)
{
	static char path[512];
	const char *base = getenv("TMPDIR");

	if (!tmp_dirname[0]) {
		snprintf(tmp_dirname, sizeof(tmp_dirname), "%s/test_st_deep.XXXXXX",
			 base && *base ? base : "/tmp");
		assert_non_null(mkdtemp(tmp_dirname));
	}
	snprintf(path, sizeof(path), "%s/%s", tmp_dirname, name);
	return path;
}

/*
 * Writes a safetensors file with the tensors laid out back to back in the given order and
 * @pad spaces after the JSON, which moves every tensor's file offset by @pad.
 */
static void write_st(const char *path, const struct wtensor *t, size_t n, size_t pad)
{
	char hdr[4096];
	size_t hl = 0;
	uint64_t off = 0, len;
	uint8_t field[8];
	int fd;

	hl += (size_t)snprintf(hdr + hl, sizeof(hdr) - hl, "{");
	for (size_t i = 0; i < n; i++) {
		hl += (size_t)snprintf(hdr + hl, sizeof(hdr) - hl,
				       "%s\"%s\":{\"dtype\":\"%s\",\"shape\":%s,"
				       "\"data_offsets\":[%llu,%llu]}",
				       i ? "," : "", t[i].name, t[i].dtype, t[i].shape,
				       (unsigned long long)off,
				       (unsigned long long)(off + t[i].len));
		off += t[i].len;
	}
	hl += (size_t)snprintf(hdr + hl, sizeof(hdr) - hl, "}");
	assert_true(hl + pad < sizeof(hdr));
	memset(hdr + hl, ' ', pad);
	len = hl + pad;
	for (int i = 0; i < 8; i++)
		field[i] = (uint8_t)(len >> (8 * i));

	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, field, 8), 8);
	assert_int_equal(write(fd, hdr, len), (ssize_t)len);
	for (size_t i = 0; i < n; i++)
		if (t[i].len)
			assert_int_equal(write(fd, t[i].data, t[i].len), (ssize_t)t[i].len);
	assert_int_equal(close(fd), 0);
}

/* Opens, validates and deep-checks @path; the results are in file order. */
static struct st_deep_tensor *deep(const char *path, struct st_file *f)
{
	struct st_deep_tensor *out;
	struct st_error err;
	int fd;

	if (st_open(path, f, &err))
		fail_msg("%s rejected: %s", path, err.message);
	out = calloc(f->n_tensors + 1, sizeof(*out));
	assert_non_null(out);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	if (st_deep_check(fd, f, out, &err))
		fail_msg("%s: deep check failed: %s", path, err.message);
	close(fd);
	return out;
}

/* The result for tensor @name, which the header's validation sorted into file order. */
static const struct st_deep_tensor *result(const struct st_file *f,
					   const struct st_deep_tensor *out, const char *name)
{
	const struct st_tensor *t = st_find(f, name);

	assert_non_null(t);
	return &out[t - f->tensors];
}

struct enc_row {
	const char *dtype;
	const char *shape;
	uint8_t bytes[40];
	size_t len;
	uint64_t nan, inf;
};

/* Little-endian byte spellings of the values each row lists. */
static const struct enc_row enc_rows[] = {
	/* F32: 1.0, qNaN, -NaN with payload, +Inf, -Inf, largest finite, smallest subnormal */
	{ "F32", "[7]",
	  { 0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0xc0, 0x7f, 0x01, 0x00, 0xc0, 0xff,
	    0x00, 0x00, 0x80, 0x7f, 0x00, 0x00, 0x80, 0xff, 0xff, 0xff, 0x7f, 0x7f,
	    0x01, 0x00, 0x00, 0x00 },
	  28, 2, 2 },
	/* F16: NaN 0x7e00, -Inf 0xfc00, Inf 0x7c00, 65504 0x7bff, sNaN 0x7c01, -sNaN 0xfc01 */
	{ "F16", "[6]", { 0x00, 0x7e, 0x00, 0xfc, 0x00, 0x7c, 0xff, 0x7b, 0x01, 0x7c, 0x01, 0xfc },
	  12, 3, 2 },
	/* BF16: NaN 0x7fc0, -Inf 0xff80, Inf 0x7f80, max 0x7f7f, NaN 0xff81, 1.0 0x3f80 */
	{ "BF16", "[2,3]",
	  { 0xc0, 0x7f, 0x80, 0xff, 0x80, 0x7f, 0x7f, 0x7f, 0x81, 0xff, 0x80, 0x3f },
	  12, 2, 2 },
	/* F64: NaN, +Inf, -Inf, 1.0 */
	{ "F64", "[4]",
	  { 0, 0, 0, 0, 0, 0, 0xf8, 0x7f, 0, 0, 0, 0, 0, 0, 0xf0, 0x7f,
	    0, 0, 0, 0, 0, 0, 0xf0, 0xff, 0, 0, 0, 0, 0, 0, 0xf0, 0x3f },
	  32, 1, 2 },
	/* C64, counted per part: (NaN, 1.0), (Inf, NaN), (0, -Inf) */
	{ "C64", "[3]",
	  { 0x00, 0x00, 0xc0, 0x7f, 0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x80, 0x7f,
	    0x00, 0x00, 0xc0, 0x7f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0xff },
	  24, 2, 2 },
	/* F8_E4M3 (fn): 0x7f and 0xff are NaN; 0x7e (448), 0x78 (256) and 0x80 are finite */
	{ "F8_E4M3", "[5]", { 0x7f, 0xff, 0x7e, 0x78, 0x80 }, 5, 2, 0 },
	/* F8_E5M2: 0x7c Inf, 0xfc -Inf, 0x7d 0x7e 0xff NaN, 0x7b finite */
	{ "F8_E5M2", "[6]", { 0x7c, 0xfc, 0x7d, 0x7e, 0xff, 0x7b }, 6, 3, 2 },
	/* F8_E4M3FNUZ: only 0x80 is NaN; 0x7f and 0xff are finite, 0x00 is zero */
	{ "F8_E4M3FNUZ", "[4]", { 0x80, 0x7f, 0xff, 0x00 }, 4, 1, 0 },
	/* F8_E5M2FNUZ: only 0x80 is NaN; 0x7c and 0xfc are finite */
	{ "F8_E5M2FNUZ", "[4]", { 0x80, 0x7c, 0xfc, 0x80 }, 4, 2, 0 },
	/* F8_E8M0: 0xff is NaN; 0xfe and 0x00 are finite scales */
	{ "F8_E8M0", "[3]", { 0xff, 0xfe, 0x00 }, 3, 1, 0 },
	/* Encodings with no NaN or Inf, all bits set */
	{ "F6_E2M3", "[4]", { 0xff, 0xff, 0xff }, 3, 0, 0 },
	{ "F6_E3M2", "[4]", { 0xff, 0xff, 0xff }, 3, 0, 0 },
	{ "F4", "[2]", { 0xff }, 1, 0, 0 },
	/* Integers with float NaN/Inf bit patterns count nothing */
	{ "I32", "[2]", { 0x00, 0x00, 0xc0, 0x7f, 0x00, 0x00, 0x80, 0x7f }, 8, 0, 0 },
	{ "U16", "[2]", { 0x00, 0x7e, 0x00, 0x7c }, 4, 0, 0 },
	{ "BOOL", "[2]", { 0x01, 0x00 }, 2, 0, 0 },
};

/* Each encoding's NaN/Inf rules, at data offsets 0 to 7 (so every alignment is seen). */
static void test_encodings(void **state)
{
	static const uint8_t junk[8] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff };

	for (size_t i = 0; i < ARRAY_SIZE(enc_rows); i++) {
		const struct enc_row *r = &enc_rows[i];

		for (size_t shift = 0; shift < 8; shift++) {
			char shape[16];
			struct wtensor t[] = {
				{ "lead", "U8", shape, junk, shift },
				{ "x", r->dtype, r->shape, r->bytes, r->len },
				{ "trail", "F32", "[2]", junk, 8 },
			};
			const char *path = tmp_path("enc.safetensors");
			const struct st_deep_tensor *x, *trail;
			struct st_deep_tensor *out;
			struct st_file f;

			snprintf(shape, sizeof(shape), "[%zu]", shift);
			write_st(path, t, ARRAY_SIZE(t), shift % 3);
			out = deep(path, &f);
			x = result(&f, out, "x");
			trail = result(&f, out, "trail");
			if (x->nan != r->nan || x->inf != r->inf)
				fail_msg("%s %s at data offset %zu: nan %llu inf %llu, "
					 "want %llu %llu",
					 r->dtype, r->shape, shift, (unsigned long long)x->nan,
					 (unsigned long long)x->inf, (unsigned long long)r->nan,
					 (unsigned long long)r->inf);
			if (x->xxh3 != XXH3_64bits(r->bytes, r->len) ||
			    result(&f, out, "lead")->xxh3 != XXH3_64bits(junk, shift))
				fail_msg("%s at data offset %zu: xxh3 %016llx, want %016llx",
					 r->dtype, shift, (unsigned long long)x->xxh3,
					 (unsigned long long)XXH3_64bits(r->bytes, r->len));
			/* 0xffffffff is a NaN in F32: the next tensor's counts stay its own. */
			if (trail->nan != 2 || trail->inf != 0)
				fail_msg("%s at %zu: trailing F32 has nan %llu inf %llu, want 2 0",
					 r->dtype, shift, (unsigned long long)trail->nan,
					 (unsigned long long)trail->inf);
			free(out);
			st_file_free(&f);
		}
	}
	unlink(tmp_path("enc.safetensors"));
}

static uint64_t rng_next(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void fill_random(uint8_t *p, size_t n, uint64_t seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(rng_next(&seed) >> 32);
}

/* Reference counts by other means than the library's bit tests. */
static void ref_f32(const uint8_t *p, size_t n, uint64_t *nan, uint64_t *inf)
{
	for (size_t i = 0; i < n; i++) {
		float v;

		memcpy(&v, p + 4 * i, 4);
		*nan += isnan(v) != 0;
		*inf += isinf(v) != 0;
	}
}

static void ref_bf16(const uint8_t *p, size_t n, uint64_t *nan, uint64_t *inf)
{
	for (size_t i = 0; i < n; i++) {
		uint32_t bits = (uint32_t)p[2 * i] << 16 | (uint32_t)p[2 * i + 1] << 24;
		float v;

		memcpy(&v, &bits, 4);
		*nan += isnan(v) != 0;
		*inf += isinf(v) != 0;
	}
}

static void ref_f16(const uint8_t *p, size_t n, uint64_t *nan, uint64_t *inf)
{
	for (size_t i = 0; i < n; i++) {
		unsigned h = p[2 * i] | p[2 * i + 1] << 8;
		unsigned exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;

		*nan += exponent == 31 && mantissa != 0;
		*inf += exponent == 31 && mantissa == 0;
	}
}

/*
 * Tensors longer than a chunk, at odd offsets, with elements cut by chunk boundaries: the
 * F32 tensor starts at data offset 3, so the chunk boundary at ST_DEEP_CHUNK falls one
 * byte into an element, which the test makes an Inf so that losing it shows.
 */
static void test_large_and_misaligned(void **state)
{
	const size_t n32 = ST_DEEP_CHUNK / 2 + 1001, n16 = ST_DEEP_CHUNK / 4 + 7;
	const size_t nbf = ST_DEEP_CHUNK / 2 + 3;
	const uint32_t inf_bits = 0x7f800000u;
	uint8_t head[3] = { 1, 2, 3 }, tail[5] = { 9, 8, 7, 6, 5 };
	uint8_t *f32 = malloc(4 * n32), *f16 = malloc(2 * n16), *bf = malloc(2 * nbf);
	char s32[32], s16[32], sbf[32];
	const char *path = tmp_path("large.safetensors");
	uint64_t want_nan[3] = { 0 }, want_inf[3] = { 0 };
	struct st_deep_tensor *out;
	struct st_file f;
	size_t cut;

	assert_true(f32 && f16 && bf);
	fill_random(f32, 4 * n32, 1);
	fill_random(f16, 2 * n16, 2);
	fill_random(bf, 2 * nbf, 3);
	/* The element straddling the first chunk boundary (data offset ST_DEEP_CHUNK). */
	cut = (ST_DEEP_CHUNK - 3) / 4;
	memcpy(f32 + 4 * cut, &inf_bits, 4);
	memcpy(f32 + 4 * (cut + 1), &inf_bits, 4);
	memcpy(f32, &inf_bits, 4);
	ref_f32(f32, n32, &want_nan[0], &want_inf[0]);
	ref_f16(f16, n16, &want_nan[1], &want_inf[1]);
	ref_bf16(bf, nbf, &want_nan[2], &want_inf[2]);
	snprintf(s32, sizeof(s32), "[%zu]", n32);
	snprintf(s16, sizeof(s16), "[%zu]", n16);
	snprintf(sbf, sizeof(sbf), "[%zu]", nbf);
	{
		struct wtensor t[] = {
			{ "empty.first", "F32", "[0]", NULL, 0 },
			{ "head", "U8", "[3]", head, 3 },
			{ "big.f32", "F32", s32, f32, 4 * n32 },
			{ "empty.mid", "F16", "[4,0]", NULL, 0 },
			{ "mid.f16", "F16", s16, f16, 2 * n16 },
			{ "big.bf16", "BF16", sbf, bf, 2 * nbf },
			{ "tail", "U8", "[5]", tail, 5 },
			{ "empty.last", "BF16", "[0]", NULL, 0 },
		};
		static const char *const floats[] = { "big.f32", "mid.f16", "big.bf16" };

		write_st(path, t, ARRAY_SIZE(t), 1);
		out = deep(path, &f);
		assert_true(st_data_bytes(&f) > 3 * (uint64_t)ST_DEEP_CHUNK);
		for (size_t i = 0; i < ARRAY_SIZE(t); i++) {
			const struct st_deep_tensor *r = result(&f, out, t[i].name);
			uint64_t want = XXH3_64bits(t[i].data, t[i].len);

			if (r->xxh3 != want)
				fail_msg("%s (%zu bytes): xxh3 %016llx, want %016llx", t[i].name,
					 t[i].len, (unsigned long long)r->xxh3,
					 (unsigned long long)want);
		}
		for (size_t i = 0; i < ARRAY_SIZE(floats); i++) {
			const struct st_deep_tensor *r = result(&f, out, floats[i]);

			if (r->nan != want_nan[i] || r->inf != want_inf[i])
				fail_msg("%s: nan %llu inf %llu, reference %llu %llu", floats[i],
					 (unsigned long long)r->nan, (unsigned long long)r->inf,
					 (unsigned long long)want_nan[i],
					 (unsigned long long)want_inf[i]);
		}
		print_message("large: f32 nan %llu inf %llu, f16 nan %llu inf %llu, bf16 nan %llu "
			      "inf %llu\n",
			      (unsigned long long)want_nan[0], (unsigned long long)want_inf[0],
			      (unsigned long long)want_nan[1], (unsigned long long)want_inf[1],
			      (unsigned long long)want_nan[2], (unsigned long long)want_inf[2]);
		assert_true(want_inf[0] >= 3 && want_nan[0] > 0 && want_nan[1] > 0);
	}
	free(out);
	st_file_free(&f);
	free(f32);
	free(f16);
	free(bf);
	unlink(path);
}

/* Files with no data at all: every tensor's hash is that of zero bytes. */
static void test_no_data(void **state)
{
	struct wtensor t[] = {
		{ "a", "F32", "[0]", NULL, 0 },
		{ "b", "I64", "[3,0,2]", NULL, 0 },
	};
	const char *path = tmp_path("nodata.safetensors");
	struct st_deep_tensor *out;
	struct st_file f;

	write_st(path, t, ARRAY_SIZE(t), 0);
	out = deep(path, &f);
	for (uint32_t i = 0; i < f.n_tensors; i++)
		if (out[i].xxh3 != XXH3_64bits(NULL, 0) || out[i].nan || out[i].inf)
			fail_msg("%s: xxh3 %016llx nan %llu inf %llu, want the empty hash",
				 f.tensors[i].name, (unsigned long long)out[i].xxh3,
				 (unsigned long long)out[i].nan, (unsigned long long)out[i].inf);
	free(out);
	st_file_free(&f);

	write_st(path, NULL, 0, 4);
	out = deep(path, &f);
	assert_int_equal(f.n_tensors, 0);
	free(out);
	st_file_free(&f);
	unlink(path);
}

struct fail_row {
	const char *what;
	int flags;	  /* how the descriptor is opened; -1: an invalid descriptor */
	off_t new_size;	  /* -1: unchanged; else truncate to this before the check */
	int want_rc;
	int want_code;
	bool want_offset;
};

/* A file that changed size after its header was read, and descriptors that cannot read. */
static void test_failures(void **state)
{
	static const uint8_t data[16] = { 0 };
	static const struct fail_row rows[] = {
		{ "grown", O_RDONLY, 1000, -EINVAL, ST_ERR_FILE_SIZE, false },
		{ "shrunk", O_RDONLY, 20, -EINVAL, ST_ERR_FILE_SIZE, false },
		{ "bad fd", -1, -1, -EBADF, ST_ERR_IO, false },
		{ "write-only fd", O_WRONLY, -1, -EBADF, ST_ERR_IO, true },
	};
	struct wtensor t[] = { { "w", "F32", "[4]", data, 16 } };
	const char *path = tmp_path("fail.safetensors");

	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		const struct fail_row *r = &rows[i];
		struct st_deep_tensor out[1];
		struct st_error err;
		struct st_file f;
		int fd = -1, rc;

		write_st(path, t, 1, 0);
		if (st_open(path, &f, &err))
			fail_msg("%s: %s", r->what, err.message);
		if (r->new_size >= 0)
			assert_int_equal(truncate(path, r->new_size), 0);
		if (r->flags >= 0)
			fd = open(path, r->flags | O_CLOEXEC);
		rc = st_deep_check(fd, &f, out, &err);
		if (rc != r->want_rc || err.code != r->want_code ||
		    (err.offset != UINT64_MAX) != r->want_offset || !strstr(err.message, path))
			fail_msg("%s: rc %d code %s offset %llu, want rc %d code %s: %s", r->what,
				 rc, st_code_name(err.code), (unsigned long long)err.offset,
				 r->want_rc, st_code_name(r->want_code), err.message);
		if (r->want_offset && err.offset != f.data_start)
			fail_msg("%s: offset %llu, want the data start %llu", r->what,
				 (unsigned long long)err.offset, (unsigned long long)f.data_start);
		if (fd >= 0)
			close(fd);
		st_file_free(&f);
	}
	unlink(path);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_encodings),
		cmocka_unit_test(test_large_and_misaligned),
		cmocka_unit_test(test_no_data),
		cmocka_unit_test(test_failures),
	};

	int failed = cmocka_run_group_tests(tests, NULL, NULL);

	if (tmp_dirname[0])
		rmdir(tmp_dirname); /* empty unless a failed test left its file to look at */
	return failed ? 1 : 0;
}
