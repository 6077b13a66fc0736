/*
 * Model formats on real files: single files, sharded checkpoints (valid and broken in
 * every way the index and its shards can disagree), diffusers folders, plus the pure
 * layout helpers (name kinds, variant choice, default names, shard paths).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/helpers_tmp.h"
#include "core/base/common.h"
#include "core/format/model.h"
#include "core/format/st_write.h"
#include "core/base/statedir.h"

static char tmp_root[4096];
static unsigned case_no;

/* ---- file helpers ---- */

/* snprintf() that fails the test instead of truncating. */
static void fmt(char *buf, size_t size, const char *f, ...) __attribute__((format(printf, 3, 4)));
static void fmt(char *buf, size_t size, const char *f, ...)
{
	va_list ap;
	int n;

	va_start(ap, f);
	n = vsnprintf(buf, size, f, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= size)
		fail_msg("path too long: %s", buf);
}

static void mkpath(char *out, size_t size, const char *dir, const char *rel)
{
	fmt(out, size, "%s/%s", dir, rel);
}

/* Writes a safetensors file at DIR/REL whose tensors are @names (comma-separated), each
 * an F16 vector of @dim elements. */
static void write_st(const char *dir, const char *rel, const char *names, uint64_t dim)
{
	struct st_write_tensor t[32];
	char path[4096], buf[1024], *save = NULL;
	size_t n = 0;

	mkpath(path, sizeof(path), dir, rel);
	fmt(buf, sizeof(buf), "%s", path);
	*strrchr(buf, '/') = '\0';
	assert_int_equal(mkdir_p(buf, 0755), 0);
	fmt(buf, sizeof(buf), "%s", names);
	for (char *s = strtok_r(buf, ",", &save); s; s = strtok_r(NULL, ",", &save)) {
		memset(&t[n], 0, sizeof(t[n]));
		t[n].name = s;
		t[n].dtype = ST_F16;
		t[n].rank = 1;
		t[n].shape[0] = dim;
		n++;
	}
	struct st_kv meta[] = { { "format", "pt" } };
	int rc = st_write_file(path, t, n, meta, 1, 7);

	if (rc)
		fail_msg("st_write_file(%s) = %d", path, rc);
}

static void write_text(const char *dir, const char *rel, const char *text)
{
	char path[4096], buf[4096];
	FILE *f;

	mkpath(path, sizeof(path), dir, rel);
	fmt(buf, sizeof(buf), "%s", path);
	*strrchr(buf, '/') = '\0';
	assert_int_equal(mkdir_p(buf, 0755), 0);
	f = fopen(path, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
}

/* ---- fixtures: each builds one layout in @d and returns the path to open ---- */

static const char *fx_single(const char *d)
{
	write_st(d, "tiny.safetensors", "a,b,c", 4);
	return "tiny.safetensors";
}

static const char *fx_single_invalid(const char *d)
{
	write_text(d, "broken.safetensors", "not a safetensors file at all");
	return "broken.safetensors";
}

#define INDEX_OK                                                                           \
	"{\"metadata\": {\"total_size\": 32}, \"weight_map\": {"                          \
	"\"a\": \"model-00001-of-00002.safetensors\","                                    \
	"\"b\": \"model-00001-of-00002.safetensors\","                                    \
	"\"c\": \"model-00002-of-00002.safetensors\","                                    \
	"\"d\": \"model-00002-of-00002.safetensors\"}}"

static void two_shards(const char *d)
{
	write_st(d, "llm/model-00001-of-00002.safetensors", "a,b", 4);
	write_st(d, "llm/model-00002-of-00002.safetensors", "c,d", 4);
}

static const char *fx_sharded(const char *d)
{
	two_shards(d);
	write_text(d, "llm/model.safetensors.index.json", INDEX_OK);
	return "llm";
}

static const char *fx_sharded_missing(const char *d)
{
	write_st(d, "llm/model-00001-of-00002.safetensors", "a,b", 4);
	write_text(d, "llm/model.safetensors.index.json", INDEX_OK);
	return "llm/model.safetensors.index.json";
}

static const char *fx_sharded_wrong_shard(const char *d)
{
	two_shards(d);
	/* "c" lives in shard 2 but the index says shard 1. */
	write_text(d, "llm/model.safetensors.index.json",
		   "{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\","
		   "\"b\": \"model-00001-of-00002.safetensors\","
		   "\"c\": \"model-00001-of-00002.safetensors\","
		   "\"d\": \"model-00002-of-00002.safetensors\"}}");
	return "llm";
}

static const char *fx_sharded_unmapped(const char *d)
{
	two_shards(d);
	/* "d" is in shard 2 but not in the weight_map; "e" is mapped but exists nowhere. */
	write_text(d, "llm/model.safetensors.index.json",
		   "{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\","
		   "\"b\": \"model-00001-of-00002.safetensors\","
		   "\"c\": \"model-00002-of-00002.safetensors\","
		   "\"e\": \"model-00002-of-00002.safetensors\"}}");
	return "llm";
}

static const char *fx_sharded_total(const char *d)
{
	two_shards(d);
	write_text(d, "llm/model.safetensors.index.json",
		   "{\"metadata\": {\"total_size\": 999}, \"weight_map\": {"
		   "\"a\": \"model-00001-of-00002.safetensors\","
		   "\"b\": \"model-00001-of-00002.safetensors\","
		   "\"c\": \"model-00002-of-00002.safetensors\","
		   "\"d\": \"model-00002-of-00002.safetensors\"}}");
	return "llm";
}

static const char *fx_sharded_dupkey(const char *d)
{
	two_shards(d);
	write_text(d, "llm/model.safetensors.index.json",
		   "{\"weight_map\": {\"a\": \"model-00001-of-00002.safetensors\","
		   "\"a\": \"model-00002-of-00002.safetensors\"}}");
	return "llm";
}

static const char *fx_sharded_escape(const char *d)
{
	two_shards(d);
	write_text(d, "llm/model.safetensors.index.json",
		   "{\"weight_map\": {\"a\": \"../elsewhere.safetensors\"}}");
	return "llm";
}

static const char *fx_sharded_bad_shard(const char *d)
{
	write_st(d, "llm/model-00001-of-00002.safetensors", "a,b", 4);
	write_text(d, "llm/model-00002-of-00002.safetensors", "garbage garbage garbage");
	write_text(d, "llm/model.safetensors.index.json", INDEX_OK);
	return "llm";
}

static const char *fx_diffusers(const char *d)
{
	write_text(d, "sd/model_index.json",
		   "{\"_class_name\": \"StableDiffusionPipeline\","
		   "\"_diffusers_version\": \"0.27\","
		   "\"unet\": [\"diffusers\", \"UNet2DConditionModel\"],"
		   "\"vae\": [\"diffusers\", \"AutoencoderKL\"],"
		   "\"text_encoder\": [\"transformers\", \"CLIPTextModel\"],"
		   "\"scheduler\": [\"diffusers\", \"PNDMScheduler\"],"
		   "\"safety_checker\": [null, null],"
		   "\"requires_safety_checker\": false}");
	/* unet: a plain file and a variant; the plain one wins. */
	write_st(d, "sd/unet/diffusion_pytorch_model.safetensors", "u1,u2", 8);
	write_st(d, "sd/unet/diffusion_pytorch_model.fp16.safetensors", "u1", 8);
	/* vae: only variants; fp16 wins over bf16. */
	write_st(d, "sd/vae/diffusion_pytorch_model.fp16.safetensors", "v1,v2,v3", 2);
	write_st(d, "sd/vae/diffusion_pytorch_model.bf16.safetensors", "v1", 2);
	/* text_encoder: sharded inside the folder. */
	write_st(d, "sd/text_encoder/model-00001-of-00002.safetensors", "a,b", 4);
	write_st(d, "sd/text_encoder/model-00002-of-00002.safetensors", "c,d", 4);
	write_text(d, "sd/text_encoder/model.safetensors.index.json", INDEX_OK);
	write_text(d, "sd/scheduler/scheduler_config.json", "{}");
	return "sd";
}

static const char *fx_diffusers_broken_index(const char *d)
{
	write_text(d, "sd/model_index.json", "{\"unet\": [\"diffusers\", \"UNet\"");
	write_st(d, "sd/unet/diffusion_pytorch_model.safetensors", "u1", 8);
	return "sd";
}

static const char *fx_diffusers_empty(const char *d)
{
	write_text(d, "sd/model_index.json", "{\"unet\": [\"diffusers\", \"UNet\"]}");
	write_text(d, "sd/unet/diffusion_pytorch_model.bin", "pickle");
	return "sd/model_index.json";
}

struct open_case {
	const char *label;
	const char *(*fixture)(const char *dir);
	int rc;
	int format;
	bool valid;
	size_t n_components;
	uint64_t n_tensors;
	uint64_t bytes;
	const char *comps;    /* component names "name:nfiles" joined by ',' */
	const char *errors[3]; /* substrings the error must contain */
};

static const struct open_case open_cases[] = {
	{ "single", fx_single, 0, MODEL_SINGLE, true, 1, 3, 24, ":1", { NULL } },
	{ "single-invalid", fx_single_invalid, 0, MODEL_SINGLE, false, 1, 0, 0, ":1",
	  { "broken.safetensors" } },
	{ "sharded", fx_sharded, 0, MODEL_SHARDED, true, 1, 4, 32, ":2", { NULL } },
	{ "sharded-missing-shard", fx_sharded_missing, 0, MODEL_SHARDED, false, 1, 2, 16, ":2",
	  { "model-00002-of-00002.safetensors", "does not exist" } },
	{ "sharded-wrong-shard", fx_sharded_wrong_shard, 0, MODEL_SHARDED, false, 1, 4, 32, ":2",
	  { "tensor \"c\" is in this shard but", "tensor \"c\" is mapped to this shard" } },
	{ "sharded-unmapped", fx_sharded_unmapped, 0, MODEL_SHARDED, false, 1, 4, 32, ":2",
	  { "tensor \"d\" is in this shard but not in the weight_map",
	    "tensor \"e\" is mapped to this shard" } },
	{ "sharded-total-size", fx_sharded_total, 0, MODEL_SHARDED, false, 1, 4, 32, ":2",
	  { "total_size is 999 but the shards hold 32" } },
	{ "sharded-duplicate-key", fx_sharded_dupkey, 0, MODEL_SHARDED, false, 1, 0, 0, ":0",
	  { "duplicate_key" } },
	{ "sharded-escaping-shard", fx_sharded_escape, 0, MODEL_SHARDED, false, 1, 0, 0, ":0",
	  { "inside the index's directory" } },
	{ "sharded-invalid-shard", fx_sharded_bad_shard, 0, MODEL_SHARDED, false, 1, 2, 16, ":2",
	  { "model-00002-of-00002.safetensors" } },
	{ "diffusers", fx_diffusers, 0, MODEL_DIFFUSERS, true, 3, 9, 8 * 2 * 2 + 3 * 2 * 2 + 32,
	  "text_encoder:2,unet:1,vae:1", { NULL } },
	{ "diffusers-broken-model-index", fx_diffusers_broken_index, 0, MODEL_DIFFUSERS, false, 0,
	  0, 0, "", { "model_index.json" } },
	{ "diffusers-no-safetensors", fx_diffusers_empty, 0, MODEL_DIFFUSERS, false, 0, 0, 0, "",
	  { "no component" } },
};

static void comps_str(const struct model *m, char *buf, size_t size)
{
	size_t o = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < m->n_components && o < size; i++)
		o += (size_t)snprintf(buf + o, size - o, "%s%s:%zu", i ? "," : "",
				      m->components[i].name, m->components[i].n_files);
}

static void test_open_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(open_cases); i++) {
		const struct open_case *c = &open_cases[i];
		char dir[4096], path[4096], comps[512];
		struct model m;
		int rc;

		fmt(dir, sizeof(dir), "%s/open-%u-%s", tmp_root, case_no++, c->label);
		assert_int_equal(mkdir_p(dir, 0755), 0);
		mkpath(path, sizeof(path), dir, c->fixture(dir));
		rc = model_open(path, &m);
		if (rc != c->rc)
			fail_msg("case %s: model_open = %d, want %d", c->label, rc, c->rc);
		if (rc)
			continue;
		comps_str(&m, comps, sizeof(comps));
		if (getenv("TEST_VERBOSE"))
			print_message("%s: %s\n", c->label, m.error ? m.error : "valid");
		if ((int)m.format != c->format || m.valid != c->valid ||
		    m.n_components != c->n_components || m.n_tensors != c->n_tensors ||
		    m.bytes != c->bytes || strcmp(comps, c->comps))
			fail_msg("case %s: format %d valid %d components %zu (%s) tensors %llu "
				 "bytes %llu; want %d %d %zu (%s) %llu %llu; error:\n%s",
				 c->label, m.format, m.valid, m.n_components, comps,
				 (unsigned long long)m.n_tensors, (unsigned long long)m.bytes,
				 c->format, c->valid, c->n_components, c->comps,
				 (unsigned long long)c->n_tensors, (unsigned long long)c->bytes,
				 m.error ? m.error : "(none)");
		if (c->valid && m.error)
			fail_msg("case %s: valid model has error %s", c->label, m.error);
		if (!c->valid && !m.error)
			fail_msg("case %s: invalid model without an error", c->label);
		for (size_t e = 0; e < ARRAY_SIZE(c->errors) && c->errors[e]; e++)
			if (!strstr(m.error, c->errors[e]))
				fail_msg("case %s: error lacks \"%s\":\n%s", c->label, c->errors[e],
					 m.error);
		if (c->valid && m.n_meta != 1)
			fail_msg("case %s: merged metadata has %zu keys, want 1", c->label,
				 m.n_meta);
		model_free(&m);
	}
}

/* The diffusers fixture's details: which files were chosen, dtype bytes, params. */
static void test_diffusers_choice(void **state)
{
	char dir[4096], path[4096];
	struct model m;

	(void)state;
	fmt(dir, sizeof(dir), "%s/choice", tmp_root);
	assert_int_equal(mkdir_p(dir, 0755), 0);
	mkpath(path, sizeof(path), dir, fx_diffusers(dir));
	assert_int_equal(model_open(path, &m), 0);
	assert_true(m.valid);
	for (size_t i = 0; i < m.n_components; i++) {
		const struct model_component *c = &m.components[i];
		const char *want = "text_encoder/model-00001-of-00002.safetensors";
		const char *got = model_comp_file(&m, c, 0)->path;

		if (!strcmp(c->name, "unet"))
			want = "unet/diffusion_pytorch_model.safetensors";
		else if (!strcmp(c->name, "vae"))
			want = "vae/diffusion_pytorch_model.fp16.safetensors";

		if (!strstr(got, want))
			fail_msg("component %s chose %s, want %s", c->name, got, want);
		if (c->dtype_bytes[ST_F16] != c->bytes || c->params * 2 != c->bytes)
			fail_msg("component %s: F16 bytes %llu, bytes %llu, params %llu", c->name,
				 (unsigned long long)c->dtype_bytes[ST_F16],
				 (unsigned long long)c->bytes, (unsigned long long)c->params);
		if (!strcmp(c->name, "text_encoder") && c->index_file < 0)
			fail_msg("text_encoder has no index file");
	}
	assert_string_equal(m.name, "sd");
	model_free(&m);
}

struct kind_case {
	const char *name;
	int kind;
};

static void test_name_kind(void **state)
{
	static const struct kind_case cases[] = {
		{ "model.safetensors", MODEL_FILE_ST },
		{ "model.fp16.safetensors", MODEL_FILE_ST },
		{ ".safetensors", -1 },
		{ "model.safetensors.index.json", MODEL_FILE_INDEX },
		{ "diffusion_pytorch_model.safetensors.index.fp16.json", MODEL_FILE_INDEX },
		{ "model_index.json", MODEL_FILE_MODEL_INDEX },
		{ "config.json", -1 },
		{ "model.bin", -1 },
		{ "model.safetensors.bak", -1 },
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++)
		if (model_name_kind(cases[i].name) != cases[i].kind)
			fail_msg("model_name_kind(%s) = %d, want %d", cases[i].name,
				 model_name_kind(cases[i].name), cases[i].kind);
}

struct choose_case {
	const char *names[6];
	const char *want; /* chosen names joined by ',' */
	bool is_index;
};

static void test_choose(void **state)
{
	static const struct choose_case cases[] = {
		{ { "diffusion_pytorch_model.safetensors",
		    "diffusion_pytorch_model.fp16.safetensors" },
		  "diffusion_pytorch_model.safetensors", false },
		{ { "diffusion_pytorch_model.bf16.safetensors",
		    "diffusion_pytorch_model.fp16.safetensors" },
		  "diffusion_pytorch_model.fp16.safetensors", false },
		{ { "x.bf16.safetensors", "x.a8.safetensors" }, "x.a8.safetensors", false },
		{ { "model.safetensors", "model-00001-of-00002.safetensors",
		    "model.safetensors.index.json" },
		  "model.safetensors.index.json", true },
		{ { "diffusion_pytorch_model.safetensors.index.fp16.json",
		    "diffusion_pytorch_model.safetensors.index.json" },
		  "diffusion_pytorch_model.safetensors.index.json", true },
		{ { "b.safetensors", "a.safetensors", "config.json" },
		  "a.safetensors,b.safetensors", false },
		{ { "model.safetensors", "extra.safetensors" }, "model.safetensors", false },
		{ { "config.json", "model.bin" }, "", false },
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		const struct choose_case *c = &cases[i];
		size_t n = 0, pick[6], np;
		char got[512] = "";
		bool is_index;

		while (n < 6 && c->names[n])
			n++;
		np = model_choose(c->names, n, pick, &is_index);
		for (size_t k = 0; k < np; k++)
			snprintf(got + strlen(got), sizeof(got) - strlen(got), "%s%s", k ? "," : "",
				 c->names[pick[k]]);
		if (strcmp(got, c->want) || (np && is_index != c->is_index))
			fail_msg("case %zu: chose \"%s\" (index %d), want \"%s\" (index %d)", i,
				 got, is_index, c->want, c->is_index);
	}
}

struct name_case {
	int format;
	const char *path;
	const char *want;
};

static void test_default_name(void **state)
{
	static const struct name_case cases[] = {
		{ MODEL_SINGLE, "/m/sd_xl_base_1.0.safetensors", "sd_xl_base_1.0" },
		{ MODEL_SINGLE, "/m/flux-vae/model.safetensors", "flux-vae" },
		{ MODEL_SINGLE, "/m/vae/diffusion_pytorch_model.fp16.safetensors", "vae" },
		{ MODEL_SHARDED, "/m/Llama-3-8B/model.safetensors.index.json", "Llama-3-8B" },
		{ MODEL_DIFFUSERS, "/m/sdxl-base", "sdxl-base" },
		{ MODEL_SHARDED,
		  "/hf/hub/models--meta-llama--Llama-3-8B/snapshots/abc123/"
		  "model.safetensors.index.json",
		  "meta-llama/Llama-3-8B" },
		{ MODEL_SINGLE, "/hf/models--org--tiny/snapshots/r1/model.safetensors",
		  "org/tiny" },
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		char buf[256];

		model_default_name(cases[i].format, cases[i].path, buf, sizeof(buf));
		if (strcmp(buf, cases[i].want))
			fail_msg("model_default_name(%s) = \"%s\", want \"%s\"", cases[i].path, buf,
				 cases[i].want);
	}
}

static void test_shard_path(void **state)
{
	static const struct {
		const char *shard;
		int rc;
		const char *want;
	} cases[] = {
		{ "a.safetensors", 0, "/m/x/a.safetensors" },
		{ "sub/a.safetensors", 0, "/m/x/sub/a.safetensors" },
		{ "../a.safetensors", -EINVAL, NULL },
		{ "sub/../../a", -EINVAL, NULL },
		{ "/etc/passwd", -EINVAL, NULL },
		{ "", -EINVAL, NULL },
		{ "..a.safetensors", 0, "/m/x/..a.safetensors" },
	};

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		char buf[256];
		int rc = model_shard_path("/m/x/model.safetensors.index.json", cases[i].shard, buf,
					  sizeof(buf));

		if (rc != cases[i].rc || (!rc && strcmp(buf, cases[i].want)))
			fail_msg("model_shard_path(%s) = %d \"%s\"", cases[i].shard, rc,
				 rc ? "" : buf);
	}
}

static void test_open_errors(void **state)
{
	char dir[4096], path[4096];
	struct model m;

	(void)state;
	fmt(dir, sizeof(dir), "%s/errors", tmp_root);
	assert_int_equal(mkdir_p(dir, 0755), 0);
	mkpath(path, sizeof(path), dir, "nothing-here");
	assert_int_equal(model_open(path, &m), -ENOENT);
	/* A directory with two unrelated files and no index is no single model. */
	write_st(dir, "two/a.safetensors", "a", 1);
	write_st(dir, "two/b.safetensors", "b", 1);
	mkpath(path, sizeof(path), dir, "two");
	assert_int_equal(model_open(path, &m), -EINVAL);
	mkpath(path, sizeof(path), dir, "empty");
	assert_int_equal(mkdir_p(path, 0755), 0);
	assert_int_equal(model_open(path, &m), -EINVAL);
}

static int setup(void **state)
{
	(void)state;
	return td_tmpdir(tmp_root, sizeof(tmp_root), "test_model");
}

static int teardown(void **state)
{
	(void)state;
	return td_rmtree(tmp_root);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_open_table),   cmocka_unit_test(test_diffusers_choice),
		cmocka_unit_test(test_name_kind),    cmocka_unit_test(test_choose),
		cmocka_unit_test(test_default_name), cmocka_unit_test(test_shard_path),
		cmocka_unit_test(test_open_errors),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
