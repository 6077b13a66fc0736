/*
 * The safetensors writer and the synthetic model generator, checked with the project's
 * own reader (st_open, st_deep_check) and architecture detection on real files in a
 * temporary directory: layouts, names, shapes, sizes, determinism, sharding, and the
 * writer's refusals.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <cmocka.h>

#include "tests/helpers_tmp.h"
#include "core/format/arch.h"
#include "core/base/common.h"
#include "core/format/gen.h"
#include "core/format/st.h"
#include "core/format/st_write.h"

static char root[1024];

static int setup(void **state)
{
	(void)state;
	return td_tmpdir(root, sizeof(root), "test_gen");
}

static int teardown(void **state)
{
	(void)state;
	return td_rmtree(root);
}

static const char *path_in(char *buf, const char *fmt, ...) WD_PRINTF(2, 3);
static const char *path_in(char *buf, const char *fmt, ...)
{
	char rel[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(rel, sizeof(rel), fmt, ap);
	va_end(ap);
	snprintf(buf, 4096, "%s/%s", root, rel);
	return buf;
}

/* Opens and validates @path with st_open, failing the test with the reader's message. */
static void open_ok(const char *path, struct st_file *f)
{
	struct st_error err = { 0 };
	int rc = st_open(path, f, &err);

	if (rc) {
		fprintf(stderr, "st_open(%s) = %d: %s\n", path, rc, err.message);
		fail();
	}
}

/* xxh3 of a whole file; 0 when it cannot be read (never a real file's hash in practice). */
static uint64_t file_hash(const char *path)
{
	XXH3_state_t *s = XXH3_createState();
	char buf[65536];
	uint64_t h = 0;
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0 || !s)
		goto out;
	XXH3_64bits_reset(s);
	while ((n = read(fd, buf, sizeof(buf))) > 0)
		XXH3_64bits_update(s, buf, (size_t)n);
	h = n == 0 ? XXH3_64bits_digest(s) : 0;
out:
	if (fd >= 0)
		close(fd);
	XXH3_freeState(s);
	return h;
}

/* Every tensor finite (the generator promises no NaN/Inf), checked by the deep reader. */
static void deep_ok(const char *path, const struct st_file *f)
{
	struct st_deep_tensor *d = calloc(f->n_tensors + 1, sizeof(*d));
	struct st_error err = { 0 };
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	assert_non_null(d);
	assert_true(fd >= 0);
	assert_int_equal(st_deep_check(fd, f, d, &err), 0);
	for (uint32_t i = 0; i < f->n_tensors; i++) {
		if (d[i].nan || d[i].inf) {
			fprintf(stderr, "%s: tensor %s has %llu NaN and %llu Inf\n", path,
				f->tensors[i].name, (unsigned long long)d[i].nan,
				(unsigned long long)d[i].inf);
			fail();
		}
	}
	close(fd);
	free(d);
}

/* ---- the demo preset, file by file --------------------------------------------------- */

struct file_row {
	const char *rel;
	uint32_t tensors; /* as in the real SD 1.x diffusers checkpoints */
	const char *arch;
	const char *probe;     /* one tensor whose shape is fixed by the layout */
	uint32_t probe_rank;
	uint64_t probe_shape[4];
};

static const struct file_row demo_files[] = {
	{ "sd-tiny/unet/diffusion_pytorch_model.safetensors", 686, "sd1-unet",
	  "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight", 2, { 8, 768 } },
	{ "sd-tiny/vae/diffusion_pytorch_model.safetensors", 248, "vae", "quant_conv.weight", 4,
	  { 8, 8, 1, 1 } },
	{ "sd-tiny/text_encoder/model.safetensors", 196, "clip-text",
	  "text_model.embeddings.position_embedding.weight", 2, { 77, 0 } },
	{ "vae-tiny.safetensors", 248, "vae", "post_quant_conv.weight", 4, { 4, 4, 1, 1 } },
};

static void test_demo_layout(void **state)
{
	struct gen_report rep = { 0 };
	struct gen_options opt = { .report = &rep };
	char dir[4096], p[4096], q[4096];
	const char *archs[3];

	(void)state;
	path_in(dir, "demo");
	assert_int_equal(gen_preset("demo", dir, &opt), 0);
	assert_int_equal(rep.models, 3);
	assert_int_equal(rep.st_files, 6);
	assert_true(rep.tensor_bytes > 0 && rep.tensor_bytes <= 8 * 1024 * 1024);

	for (size_t i = 0; i < ARRAY_SIZE(demo_files); i++) {
		const struct file_row *r = &demo_files[i];
		const struct st_file *fp;
		const struct st_tensor *t;
		struct st_file f;

		open_ok(path_in(p, "demo/%s", r->rel), &f);
		fp = &f;
		if (f.n_tensors != r->tensors || strcmp(arch_detect(&fp, 1), r->arch)) {
			fprintf(stderr, "%s: %u tensors (want %u), arch %s (want %s)\n", r->rel,
				f.n_tensors, r->tensors, arch_detect(&fp, 1), r->arch);
			fail();
		}
		t = st_find(&f, r->probe);
		assert_non_null(t);
		assert_int_equal(t->rank, r->probe_rank);
		assert_int_equal(t->dtype, ST_F16);
		for (uint32_t d = 0; d < r->probe_rank; d++)
			if (r->probe_shape[d])
				assert_int_equal(t->shape[d], r->probe_shape[d]);
		assert_string_equal(st_meta_get(&f, "format"), "pt");
		assert_int_equal(f.data_start % 8, 0);
		deep_ok(p, &f);
		st_file_free(&f);
	}

	/* The diffusers folder names an SD 1.x model; its JSON files are there. */
	archs[0] = "sd1-unet";
	archs[1] = "vae";
	archs[2] = "clip-text";
	assert_string_equal(arch_model(archs, 3), "sd1");
	assert_int_equal(access(path_in(p, "demo/sd-tiny/model_index.json"), R_OK), 0);
	assert_int_equal(access(path_in(p, "demo/sd-tiny/scheduler/scheduler_config.json"), R_OK),
			 0);

	/* The single-file VAE is the same content as sd-tiny's (one component, twice). */
	path_in(q, "demo/sd-tiny/vae/diffusion_pytorch_model.safetensors");
	assert_int_equal(file_hash(path_in(p, "demo/vae-tiny.safetensors")), file_hash(q));
}

/* The sharded LLaMA: the index maps every tensor to the shard that holds it. */
static void check_llama(const char *dir, uint32_t shards, uint64_t *tensor_bytes)
{
	struct st_file f[8];
	const struct st_file *fp[8];
	json_error_t jerr;
	json_t *idx, *map;
	char p[4096];
	uint64_t total = 0;
	size_t mapped = 0;

	assert_true(shards >= 2 && shards <= 8);
	snprintf(p, sizeof(p), "%s/model.safetensors.index.json", dir);
	idx = json_load_file(p, JSON_REJECT_DUPLICATES, &jerr);
	if (!idx) {
		fprintf(stderr, "%s: %s\n", p, jerr.text);
		fail();
	}
	map = json_object_get(idx, "weight_map");
	assert_true(json_is_object(map));
	for (uint32_t s = 0; s < shards; s++) {
		char file[64];

		snprintf(file, sizeof(file), "model-%05u-of-%05u.safetensors", s + 1, shards);
		snprintf(p, sizeof(p), "%s/%s", dir, file);
		open_ok(p, &f[s]);
		fp[s] = &f[s];
		assert_true(f[s].n_tensors > 0);
		for (uint32_t t = 0; t < f[s].n_tensors; t++) {
			json_t *w = json_object_get(map, f[s].tensors[t].name);
			const char *where = json_string_value(w);

			if (!where || strcmp(where, file)) {
				fprintf(stderr, "tensor %s is in %s, index says %s\n",
					f[s].tensors[t].name, file, where ? where : "(absent)");
				fail();
			}
			mapped++;
		}
		total += st_data_bytes(&f[s]);
	}
	assert_int_equal(mapped, json_object_size(map));
	assert_int_equal(json_integer_value(json_object_get(json_object_get(idx, "metadata"),
							    "total_size")), total);
	assert_string_equal(arch_detect(fp, shards), "llama");
	assert_non_null(st_find(&f[0], "model.embed_tokens.weight"));
	assert_non_null(st_find(&f[shards - 1], "lm_head.weight"));
	for (uint32_t s = 0; s < shards; s++)
		st_file_free(&f[s]);
	json_decref(idx);
	*tensor_bytes = total;
}

static void test_demo_llama(void **state)
{
	char dir[4096];
	uint64_t bytes;

	(void)state;
	path_in(dir, "demo-llama");
	assert_int_equal(gen_preset("demo", dir, NULL), 0);
	check_llama(path_in(dir, "demo-llama/llama-tiny"), 2, &bytes);
	assert_true(bytes > 3 * 1024 * 1024 && bytes <= 4 * 1024 * 1024);
}

/* ---- sizes, dtypes, shard counts ----------------------------------------------------- */

struct size_row {
	const char *preset;
	uint64_t size;
	enum st_dtype dtype;
	uint32_t shards;
	uint64_t min_bytes; /* tensor bytes must land in [min_bytes, size] */
};

static const struct size_row size_rows[] = {
	{ "llama", 4u << 20, ST_F16, 2, (4u << 20) - 4096 },
	{ "llama", 24u << 20, ST_BF16, 3, (24u << 20) - 65536 },
	{ "llama", 6u << 20, ST_F32, 5, (6u << 20) - 65536 },
	{ "sd", 4u << 20, ST_F16, 0, 1u << 20 },
	{ "sd", 48u << 20, ST_BF16, 0, 24u << 20 },
	{ "sd", 8u << 20, ST_F32, 0, 2u << 20 },
};

static void test_sizes(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(size_rows); i++) {
		const struct size_row *r = &size_rows[i];
		struct gen_report rep = { 0 };
		struct gen_options opt = { .size = r->size, .dtype = r->dtype, .shards = r->shards,
					   .seed = 7, .report = &rep };
		char dir[4096], p[4096];
		uint64_t bytes = 0;

		path_in(dir, "size-%zu", i);
		assert_int_equal(gen_preset(r->preset, dir, &opt), 0);
		if (!strcmp(r->preset, "llama")) {
			check_llama(dir, r->shards, &bytes);
		} else {
			static const char *const comp[][2] = {
				{ "unet/diffusion_pytorch_model.safetensors", "sd1-unet" },
				{ "vae/diffusion_pytorch_model.safetensors", "vae" },
				{ "text_encoder/model.safetensors", "clip-text" },
			};
			const char *archs[3];

			for (size_t c = 0; c < 3; c++) {
				struct st_file f;
				const struct st_file *fp = &f;

				path_in(p, "size-%zu/%s", i, comp[c][0]);
				open_ok(p, &f);
				archs[c] = arch_detect(&fp, 1);
				assert_string_equal(archs[c], comp[c][1]);
				assert_int_equal(f.tensors[0].dtype, r->dtype);
				bytes += st_data_bytes(&f);
				st_file_free(&f);
			}
			assert_string_equal(arch_model(archs, 3), "sd1");
		}
		if (bytes != rep.tensor_bytes || bytes > r->size || bytes < r->min_bytes) {
			fprintf(stderr, "row %zu %s size %llu: %llu tensor bytes on disk, "
				"report %llu, want [%llu, %llu]\n", i, r->preset,
				(unsigned long long)r->size, (unsigned long long)bytes,
				(unsigned long long)rep.tensor_bytes,
				(unsigned long long)r->min_bytes, (unsigned long long)r->size);
			fail();
		}
	}
}

/* ---- determinism --------------------------------------------------------------------- */

static const char *const demo_rel[] = {
	"sd-tiny/model_index.json",
	"sd-tiny/unet/diffusion_pytorch_model.safetensors",
	"sd-tiny/unet/config.json",
	"sd-tiny/vae/diffusion_pytorch_model.safetensors",
	"sd-tiny/text_encoder/model.safetensors",
	"llama-tiny/model-00001-of-00002.safetensors",
	"llama-tiny/model-00002-of-00002.safetensors",
	"llama-tiny/model.safetensors.index.json",
	"llama-tiny/config.json",
	"vae-tiny.safetensors",
};

static void test_determinism(void **state)
{
	struct gen_options a = { .seed = 1 }, c = { .seed = 2 };
	char pa[4096], pb[4096], pc[4096];

	(void)state;
	assert_int_equal(gen_preset("demo", path_in(pa, "det-a"), &a), 0);
	assert_int_equal(gen_preset("demo", path_in(pb, "det-b"), &a), 0);
	assert_int_equal(gen_preset("demo", path_in(pc, "det-c"), &c), 0);
	/* A second run over an existing tree replaces files with the same bytes. */
	assert_int_equal(gen_preset("demo", path_in(pb, "det-b"), &a), 0);
	for (size_t i = 0; i < ARRAY_SIZE(demo_rel); i++) {
		uint64_t ha = file_hash(path_in(pa, "det-a/%s", demo_rel[i]));
		uint64_t hb = file_hash(path_in(pb, "det-b/%s", demo_rel[i]));
		uint64_t hc = file_hash(path_in(pc, "det-c/%s", demo_rel[i]));
		bool is_st = strstr(demo_rel[i], ".safetensors") &&
			     !strstr(demo_rel[i], ".index.json");

		/* Another seed changes tensor data only, never names, shapes or configs. */
		if (!ha || ha != hb || (is_st ? hc == ha : hc != ha)) {
			fprintf(stderr, "%s: seed 1 %016llx and %016llx, seed 2 %016llx\n",
				demo_rel[i], (unsigned long long)ha, (unsigned long long)hb,
				(unsigned long long)hc);
			fail();
		}
	}
}

/* ---- the discovery benchmark's files ------------------------------------------------- */

static void test_files_preset(void **state)
{
	struct gen_report rep = { 0 };
	struct gen_options opt = { .count = 250, .size = 250 * 1024, .report = &rep };
	static const struct {
		const char *sub;
		int files;
	} dirs[] = { { "000", 100 }, { "001", 100 }, { "002", 50 }, { "003", -1 } };
	char dir[4096], p[4096];
	uint64_t h0, h1;

	(void)state;
	assert_int_equal(gen_preset("files", path_in(dir, "files"), &opt), 0);
	assert_int_equal(rep.models, 250);
	assert_int_equal(rep.st_files, 250);
	assert_int_equal(rep.tensor_bytes, 250 * 1024);
	for (size_t i = 0; i < ARRAY_SIZE(dirs); i++) {
		DIR *d = opendir(path_in(p, "files/%s", dirs[i].sub));
		struct dirent *e;
		int n = 0;

		if (dirs[i].files < 0) {
			assert_null(d);
			continue;
		}
		assert_non_null(d);
		while ((e = readdir(d)))
			n += e->d_name[0] != '.';
		closedir(d);
		if (n != dirs[i].files) {
			fprintf(stderr, "files/%s holds %d entries, want %d\n", dirs[i].sub, n,
				dirs[i].files);
			fail();
		}
	}
	{
		struct st_file f;

		open_ok(path_in(p, "files/002/model-00249.safetensors"), &f);
		assert_int_equal(f.n_tensors, 1);
		assert_string_equal(f.tensors[0].name, "weight");
		assert_int_equal(st_data_bytes(&f), 1024);
		st_file_free(&f);
	}
	h0 = file_hash(path_in(p, "files/000/model-00000.safetensors"));
	h1 = file_hash(path_in(p, "files/000/model-00001.safetensors"));
	assert_true(h0 && h1 && h0 != h1);
}

static void test_bad_requests(void **state)
{
	struct gen_options bad_dtype = { .dtype = ST_I32 };
	char dir[4096];
	int fd;

	(void)state;
	path_in(dir, "bad");
	assert_int_equal(gen_preset("no-such-preset", dir, NULL), -EINVAL);
	assert_int_equal(gen_preset("demo", dir, &bad_dtype), -EINVAL);
	assert_int_equal(gen_preset("demo", "", NULL), -EINVAL);
	assert_int_equal(gen_preset(NULL, dir, NULL), -EINVAL);
	/* Nothing was created for a refused request. */
	assert_int_equal(access(dir, F_OK), -1);
	/* A path under a regular file cannot be created. */
	fd = open(path_in(dir, "plain-file"), O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(gen_preset("sd", path_in(dir, "plain-file/x"), NULL), -ENOTDIR);
	assert_non_null(gen_preset_name(0, NULL));
	assert_null(gen_preset_name(4, NULL));
}

/* ---- the writer directly ------------------------------------------------------------- */

static const uint8_t bytes7[7] = { 1, 2, 3, 4, 5, 6, 7 };
static const uint16_t halves[3] = { 0x3c00, 0xc000, 0x0000 }; /* 1.0, -2.0, 0.0 */

struct write_row {
	const char *label;
	struct st_write_tensor t[4];
	size_t n;
	int want_rc;
};

static const struct write_row write_rows[] = {
	{ "given data, then generated data at an odd offset",
	  { { "odd", ST_U8, 1, { 7 }, bytes7 }, { "h", ST_F16, 1, { 3 }, halves },
	    { "gen", ST_BF16, 2, { 5, 3 }, NULL } }, 3, 0 },
	{ "scalar, empty dimension, F4 and F6 with whole bytes",
	  { { "scalar", ST_F32, 0, { 0 }, NULL }, { "empty", ST_F16, 2, { 4, 0 }, NULL },
	    { "f4", ST_F4, 1, { 6 }, NULL }, { "f6", ST_F6_E2M3, 1, { 4 }, NULL } }, 4, 0 },
	{ "every float kind generated finite",
	  { { "a", ST_F64, 1, { 33 }, NULL }, { "b", ST_F8_E4M3, 1, { 99 }, NULL },
	    { "c", ST_F8_E5M2FNUZ, 1, { 77 }, NULL }, { "d", ST_C64, 1, { 9 }, NULL } }, 4, 0 },
	{ "duplicate name",
	  { { "w", ST_F16, 1, { 2 }, NULL }, { "w", ST_F16, 1, { 2 }, NULL } }, 2, -EINVAL },
	{ "__metadata__ as a tensor name", { { "__metadata__", ST_U8, 1, { 1 }, NULL } }, 1,
	  -EINVAL },
	{ "partial byte (three F4)", { { "f4", ST_F4, 1, { 3 }, NULL } }, 1, -EINVAL },
	{ "unknown dtype", { { "x", (enum st_dtype)ST_DTYPE_COUNT, 1, { 1 }, NULL } }, 1,
	  -EINVAL },
	{ "rank over the limit", { { "x", ST_U8, ST_MAX_RANK + 1, { 1 }, NULL } }, 1, -EINVAL },
	{ "element count overflow",
	  { { "x", ST_F32, 2, { 1ull << 40, 1ull << 40 }, NULL } }, 1, -EINVAL },
	{ "name that is not UTF-8", { { "bad\xff", ST_U8, 1, { 1 }, NULL } }, 1, -EINVAL },
};

/* Number of entries in @dir whose name starts with '.' other than . and .. (temp files). */
static int hidden_entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	assert_non_null(d);
	while ((e = readdir(d)))
		n += e->d_name[0] == '.' && strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
	closedir(d);
	return n;
}

static void test_writer_table(void **state)
{
	static const struct st_kv meta[] = { { (char *)"k", (char *)"v" } };
	char dir[4096], p[4096];

	(void)state;
	path_in(dir, "writer");
	assert_int_equal(mkdir(dir, 0755), 0);
	for (size_t i = 0; i < ARRAY_SIZE(write_rows); i++) {
		const struct write_row *r = &write_rows[i];
		struct st_file f;
		int rc;

		path_in(p, "writer/w%zu.safetensors", i);
		rc = st_write_file(p, r->t, r->n, meta, 1, 42);
		if (rc != r->want_rc) {
			fprintf(stderr, "row %zu '%s': st_write_file = %d, want %d\n", i, r->label,
				rc, r->want_rc);
			fail();
		}
		if (rc) {
			assert_int_equal(access(p, F_OK), -1);
			continue;
		}
		open_ok(p, &f);
		assert_int_equal(f.n_tensors, r->n);
		assert_int_equal(f.data_start % 8, 0);
		assert_string_equal(st_meta_get(&f, "k"), "v");
		for (size_t k = 0; k < r->n; k++) {
			const struct st_tensor *t = st_find(&f, r->t[k].name);

			assert_non_null(t);
			assert_int_equal(t->dtype, r->t[k].dtype);
			assert_int_equal(t->rank, r->t[k].rank);
			for (uint32_t d = 0; d < t->rank; d++)
				assert_int_equal(t->shape[d], r->t[k].shape[d]);
			/* Tensors are laid out in the order given. */
			assert_ptr_equal(t, &f.tensors[k]);
			if (r->t[k].data) {
				uint8_t buf[64];
				int fd = open(p, O_RDONLY | O_CLOEXEC);

				assert_true(fd >= 0);
				assert_int_equal(pread(fd, buf, st_tensor_nbytes(t),
						       (off_t)(f.data_start + t->begin)),
						 (ssize_t)st_tensor_nbytes(t));
				assert_memory_equal(buf, r->t[k].data, st_tensor_nbytes(t));
				close(fd);
			}
		}
		deep_ok(p, &f);
		st_file_free(&f);
	}
	assert_int_equal(hidden_entries(dir), 0);
	assert_int_equal(st_write_file(path_in(p, "writer/missing/x.safetensors"),
				       write_rows[0].t, 1, NULL, 0, 0), -ENOENT);
}

/* Generated data depends on (seed, name): same name same bytes, either changed differs. */
static void test_writer_data_key(void **state)
{
	static const struct {
		const char *name;
		uint64_t seed;
		bool same_as_first;
	} rows[] = { { "w", 5, true }, { "w", 6, false }, { "v", 5, false } };
	uint8_t first[256];
	char p[4096];

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		struct st_write_tensor t = { rows[i].name, ST_U8, 1, { 256 }, NULL };
		uint8_t buf[256];
		struct st_file f;
		int fd;

		assert_int_equal(st_write_file(path_in(p, "key%zu.safetensors", i), &t, 1, NULL, 0,
					       rows[i].seed), 0);
		open_ok(p, &f);
		fd = open(p, O_RDONLY | O_CLOEXEC);
		assert_true(fd >= 0);
		assert_int_equal(pread(fd, buf, sizeof(buf), (off_t)f.data_start), sizeof(buf));
		close(fd);
		st_file_free(&f);
		if (i == 0)
			memcpy(first, buf, sizeof(buf));
		else if (!memcmp(first, buf, sizeof(buf)) != rows[i].same_as_first)
			fail_msg("row %zu (%s, seed %llu): data %s the first row's", i,
				 rows[i].name, (unsigned long long)rows[i].seed,
				 rows[i].same_as_first ? "differs from" : "equals");
	}
}

struct size_parse_row {
	const char *in;
	int rc;
	uint64_t want;
};

static const struct size_parse_row size_parse_rows[] = {
	{ "4096", 0, 4096 },	     { "512K", 0, 512 << 10 },	{ "64M", 0, 64ull << 20 },
	{ "1G", 0, 1ull << 30 },     { "1.5G", 0, 3ull << 29 }, { "2GiB", 0, 2ull << 30 },
	{ "10MB", 0, 10ull << 20 },  { "1T", 0, 1ull << 40 },	{ "0", 0, 0 },
	{ "", -EINVAL, 0 },	     { "-1M", -EINVAL, 0 },	{ "12Q", -EINVAL, 0 },
	{ "M", -EINVAL, 0 },	     { "1G extra", -EINVAL, 0 }, { "99999999999T", -EINVAL, 0 },
};

static void test_parse_size(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(size_parse_rows); i++) {
		const struct size_parse_row *r = &size_parse_rows[i];
		uint64_t v = 0;
		int rc = gen_parse_size(r->in, &v);

		if (rc != r->rc || (!rc && v != r->want))
			fail_msg("gen_parse_size(\"%s\") = %d, %llu; want %d, %llu", r->in, rc,
				 (unsigned long long)v, r->rc, (unsigned long long)r->want);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_demo_layout),
		cmocka_unit_test(test_demo_llama),
		cmocka_unit_test(test_sizes),
		cmocka_unit_test(test_determinism),
		cmocka_unit_test(test_files_preset),
		cmocka_unit_test(test_bad_requests),
		cmocka_unit_test(test_writer_table),
		cmocka_unit_test(test_writer_data_key),
		cmocka_unit_test(test_parse_size),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
