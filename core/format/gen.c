/*
 * The synthetic model generator's writer (see gen.h for the presets): the folders, the
 * config and index JSONs, and the safetensors files of each preset, written through
 * st_write_file, which streams pseudo-random data derived from (seed, tensor name).
 *
 * Every preset runs twice over the same builders (core/format/gen_shapes.c, which also
 * says how the shapes follow the real checkpoints): a dry pass that only adds up tensor
 * bytes (to choose dimensions for a target size and to know the total for progress), and
 * a writing pass that builds each file's tensor list and hands it to st_write_file.
 */
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/base/common.h"
#include "core/format/gen.h"
#include "core/format/gen_shapes.h"
#include "core/base/log.h"
#include "core/format/st_write.h"

#define MIB (1ull << 20)
#define DEFAULT_MODEL_BYTES (4 * MIB)
#define DEFAULT_FILE_BYTES 512
#define DEFAULT_FILES 10000
#define FILES_PER_DIR 100
#define DIFFUSERS_VERSION "0.21.0"

/* ---------------------------------------------------------------------------------------
 * Writing
 */

struct gen {
	const struct gen_options *opt;
	enum st_dtype dtype;
	uint64_t seed;
	struct gen_report rep;
	uint64_t done, total; /* tensor bytes, for progress */
	/* The model being written, for on_model. */
	uint32_t model_files;
	uint64_t model_bytes;
};

static const char *torch_dtype(enum st_dtype dt)
{
	return dt == ST_BF16 ? "bfloat16" : dt == ST_F32 ? "float32" : "float16";
}

static int mkdir_p(const char *path)
{
	char buf[4096];
	size_t len = strlen(path);

	if (len == 0 || len >= sizeof(buf))
		return -EINVAL;
	memcpy(buf, path, len + 1);
	for (size_t i = 1; i <= len; i++) {
		if (buf[i] != '/' && buf[i] != '\0')
			continue;
		buf[i] = '\0';
		if (mkdir(buf, 0755) < 0 && errno != EEXIST)
			return -errno;
		buf[i] = path[i];
	}
	return 0;
}

static void account(struct gen *g, const char *path, bool st)
{
	struct stat sb;
	uint64_t size = stat(path, &sb) == 0 ? (uint64_t)sb.st_size : 0;

	g->rep.files++;
	g->rep.st_files += st;
	g->rep.bytes += size;
	g->model_files++;
	g->model_bytes += size;
}

/* Writes @text to @path through a temporary file and rename, as st_write_file does. */
static int write_text(struct gen *g, const char *path, const char *text)
{
	char *tmp;
	size_t len = strlen(text), off = 0;
	int fd, rc = 0;

	if (asprintf(&tmp, "%s.tmp.XXXXXX", path) < 0)
		return -ENOMEM;
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		rc = -errno;
		free(tmp);
		return rc;
	}
	if (fchmod(fd, 0644) < 0)
		rc = -errno;
	while (!rc && off < len) {
		ssize_t n = write(fd, text + off, len - off);

		if (n < 0 && errno != EINTR)
			rc = -errno;
		else if (n > 0)
			off += (size_t)n;
	}
	if (close(fd) < 0 && !rc)
		rc = -errno;
	if (!rc && rename(tmp, path) < 0)
		rc = -errno;
	if (rc)
		unlink(tmp);
	else
		account(g, path, false);
	free(tmp);
	return rc;
}

/* Serialises @j (and drops the reference) with sorted keys, indented like transformers. */
static int write_json(struct gen *g, const char *path, json_t *j)
{
	char *text;
	int rc;

	if (!j)
		return -ENOMEM;
	text = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS | JSON_REAL_PRECISION(6));
	json_decref(j);
	if (!text)
		return -ENOMEM;
	rc = write_text(g, path, text);
	free(text);
	return rc;
}

static void on_file_progress(void *arg, uint64_t bytes_done)
{
	struct gen *g = arg;

	g->opt->progress(g->opt->arg, g->done + bytes_done, g->total);
}

static int write_st(struct gen *g, const char *path, const struct tlist *l, uint64_t seed)
{
	static const struct st_kv meta[] = { { (char *)"format", (char *)"pt" } };
	uint64_t bytes = 0;
	int rc;

	if (l->err)
		return l->err;
	for (size_t i = 0; i < l->n; i++) {
		uint64_t nelem = 1;

		for (uint32_t d = 0; d < l->t[i].rank; d++)
			nelem *= l->t[i].shape[d];
		bytes += nelem * l->esize;
	}
	rc = st_write_file_progress(path, l->t, l->n, meta, ARRAY_SIZE(meta), seed,
				    g->opt->progress ? on_file_progress : NULL, g);
	if (rc) {
		log_warn("gen", "\"cannot write\" path=\"%s\" err=\"%s\"", path, strerror(-rc));
		return rc;
	}
	g->done += bytes;
	g->rep.tensor_bytes += bytes;
	account(g, path, true);
	return 0;
}

static void model_begin(struct gen *g)
{
	g->model_files = 0;
	g->model_bytes = 0;
}

static void model_end(struct gen *g, const char *path)
{
	const char *name = strrchr(path, '/');

	g->rep.models++;
	if (g->opt->on_model)
		g->opt->on_model(g->opt->arg, name && name[1] ? name + 1 : path, path,
				 g->model_files, g->model_bytes);
}

static json_t *int_array(const uint64_t *v, size_t n)
{
	json_t *a = json_array();

	for (size_t i = 0; a && i < n; i++)
		json_array_append_new(a, json_integer((json_int_t)v[i]));
	return a;
}

static json_t *str_array(const char *a, const char *b)
{
	return json_pack("[ss]", a, b);
}

typedef void (*builder_fn)(struct tlist *l, const struct sd_dims *d);

static int write_sd_component(struct gen *g, const char *dir, const char *sub,
			      const char *file, builder_fn build, const struct sd_dims *d)
{
	char path[4096];
	struct tlist l;
	int rc;

	snprintf(path, sizeof(path), "%s/%s", dir, sub);
	rc = mkdir_p(path);
	if (rc)
		return rc;
	gen_tlist_init(&l, g->dtype, false);
	build(&l, d);
	snprintf(path, sizeof(path), "%s/%s/%s", dir, sub, file);
	rc = write_st(g, path, &l, g->seed);
	gen_tlist_free(&l);
	return rc;
}

static int write_sd(struct gen *g, const char *dir, const struct sd_dims *d)
{
	const uint64_t uc[4] = { d->unet_c, 2 * d->unet_c, 4 * d->unet_c, 4 * d->unet_c };
	const uint64_t vc[4] = { d->vae_c, 2 * d->vae_c, 4 * d->vae_c, 4 * d->vae_c };
	char path[4096];
	json_t *j;
	int rc;

	model_begin(g);
	rc = mkdir_p(dir);
	if (rc)
		return rc;
	j = json_pack("{s:s, s:s, s:o, s:o, s:o, s:o}", "_class_name", "StableDiffusionPipeline",
		      "_diffusers_version", DIFFUSERS_VERSION,
		      "scheduler", str_array("diffusers", "PNDMScheduler"),
		      "text_encoder", str_array("transformers", "CLIPTextModel"),
		      "unet", str_array("diffusers", "UNet2DConditionModel"),
		      "vae", str_array("diffusers", "AutoencoderKL"));
	snprintf(path, sizeof(path), "%s/model_index.json", dir);
	rc = write_json(g, path, j);
	if (rc)
		return rc;

	rc = write_sd_component(g, dir, "unet", "diffusion_pytorch_model.safetensors", gen_sd_unet, d);
	if (rc)
		return rc;
	j = json_pack("{s:s, s:s, s:s, s:i, s:o, s:i, s:[ssss], s:i, s:i, s:i, s:i, s:i, "
		      "s:[ssss]}",
		      "_class_name", "UNet2DConditionModel", "_diffusers_version",
		      DIFFUSERS_VERSION, "act_fn", "silu", "attention_head_dim", 8,
		      "block_out_channels", int_array(uc, 4), "cross_attention_dim", SD_CTX,
		      "down_block_types", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
		      "CrossAttnDownBlock2D", "DownBlock2D", "in_channels", SD_LATENT,
		      "layers_per_block", 2, "norm_num_groups", (int)d->groups, "out_channels",
		      SD_LATENT, "sample_size", 64, "up_block_types", "UpBlock2D",
		      "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D");
	snprintf(path, sizeof(path), "%s/unet/config.json", dir);
	rc = write_json(g, path, j);
	if (rc)
		return rc;

	rc = write_sd_component(g, dir, "vae", "diffusion_pytorch_model.safetensors", gen_sd_vae, d);
	if (rc)
		return rc;
	j = json_pack("{s:s, s:s, s:s, s:o, s:[ssss], s:i, s:i, s:i, s:i, s:i, s:i, s:[ssss]}",
		      "_class_name", "AutoencoderKL", "_diffusers_version", DIFFUSERS_VERSION,
		      "act_fn", "silu", "block_out_channels", int_array(vc, 4),
		      "down_block_types", "DownEncoderBlock2D", "DownEncoderBlock2D",
		      "DownEncoderBlock2D", "DownEncoderBlock2D", "in_channels", 3,
		      "latent_channels", SD_LATENT, "layers_per_block", 2, "norm_num_groups",
		      (int)d->groups, "out_channels", 3, "sample_size", 512, "up_block_types",
		      "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D",
		      "UpDecoderBlock2D");
	snprintf(path, sizeof(path), "%s/vae/config.json", dir);
	rc = write_json(g, path, j);
	if (rc)
		return rc;

	rc = write_sd_component(g, dir, "text_encoder", "model.safetensors", gen_sd_clip, d);
	if (rc)
		return rc;
	j = json_pack("{s:[s], s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:s, s:I}", "architectures",
		      "CLIPTextModel", "model_type", "clip_text_model", "hidden_size",
		      (json_int_t)d->clip_h, "intermediate_size", (json_int_t)(4 * d->clip_h),
		      "max_position_embeddings", (json_int_t)SD_CLIP_POSITIONS,
		      "num_attention_heads", (json_int_t)(d->clip_h >= 64 ? d->clip_h / 64 : 1),
		      "num_hidden_layers", (json_int_t)SD_CLIP_LAYERS, "projection_dim",
		      (json_int_t)SD_CTX, "torch_dtype", torch_dtype(g->dtype), "vocab_size",
		      (json_int_t)d->clip_vocab);
	snprintf(path, sizeof(path), "%s/text_encoder/config.json", dir);
	rc = write_json(g, path, j);
	if (rc)
		return rc;

	/* A weightless component, as in every real diffusers folder. */
	snprintf(path, sizeof(path), "%s/scheduler", dir);
	rc = mkdir_p(path);
	if (rc)
		return rc;
	j = json_pack("{s:s, s:s, s:f, s:s, s:f, s:i, s:b, s:i}", "_class_name",
		      "PNDMScheduler", "_diffusers_version", DIFFUSERS_VERSION, "beta_end",
		      0.012, "beta_schedule", "scaled_linear", "beta_start", 0.00085,
		      "num_train_timesteps", 1000, "skip_prk_steps", 1, "steps_offset", 1);
	snprintf(path, sizeof(path), "%s/scheduler/scheduler_config.json", dir);
	rc = write_json(g, path, j);
	if (rc)
		return rc;
	model_end(g, dir);
	return 0;
}

/* The demo's single-file VAE: the same tensors, metadata and seed as sd-tiny's. */
static int write_vae_file(struct gen *g, const char *path, const struct sd_dims *d)
{
	struct tlist l;
	int rc;

	model_begin(g);
	gen_tlist_init(&l, g->dtype, false);
	gen_sd_vae(&l, d);
	rc = write_st(g, path, &l, g->seed);
	gen_tlist_free(&l);
	if (!rc)
		model_end(g, path);
	return rc;
}

/*
 * Shard of tensor @i of @n, given the bytes before it: proportional to bytes, never
 * skipping a shard, and leaving at least one tensor for every later shard.
 */
static uint32_t shard_of(size_t i, size_t n, uint64_t before, uint64_t total, uint32_t shards,
			 int64_t prev)
{
	int64_t s = total ? (int64_t)((double)before * shards / (double)total) : 0;

	if (s > prev + 1)
		s = prev + 1;
	if (s > (int64_t)shards - 1)
		s = shards - 1;
	if (s < (int64_t)shards - (int64_t)(n - i))
		s = (int64_t)shards - (int64_t)(n - i);
	if (s < 0)
		s = 0;
	return (uint32_t)s;
}

static int write_llama(struct gen *g, const char *dir, const struct llama_dims *d,
		       uint32_t shards)
{
	struct tlist all, part;
	uint32_t *of = NULL;
	json_t *map = NULL, *j;
	char path[4096], file[64];
	uint64_t before = 0;
	int64_t prev = -1;
	int rc;

	model_begin(g);
	rc = mkdir_p(dir);
	if (rc)
		return rc;
	gen_tlist_init(&all, g->dtype, false);
	gen_llama_tensors(&all, d);
	rc = all.err;
	if (!rc && shards > all.n)
		shards = (uint32_t)all.n;
	of = rc ? NULL : calloc(all.n, sizeof(*of));
	map = json_object();
	if (!rc && (!of || !map))
		rc = -ENOMEM;
	for (size_t i = 0; !rc && i < all.n; i++) {
		uint64_t nelem = 1;

		for (uint32_t k = 0; k < all.t[i].rank; k++)
			nelem *= all.t[i].shape[k];
		of[i] = shard_of(i, all.n, before, all.bytes, shards, prev);
		prev = of[i];
		before += nelem * all.esize;
	}
	/* Each shard is a tensor list that borrows the names of @all (not freed twice). */
	for (uint32_t s = 0; !rc && s < shards; s++) {
		gen_tlist_init(&part, g->dtype, false);
		part.t = calloc(all.n, sizeof(*part.t));
		if (!part.t) {
			rc = -ENOMEM;
			break;
		}
		if (shards == 1)
			snprintf(file, sizeof(file), "model.safetensors");
		else
			snprintf(file, sizeof(file), "model-%05u-of-%05u.safetensors", s + 1,
				 shards);
		for (size_t i = 0; i < all.n; i++) {
			if (of[i] != s)
				continue;
			part.t[part.n++] = all.t[i];
			if (json_object_set_new(map, all.t[i].name, json_string(file)))
				rc = -ENOMEM;
		}
		snprintf(path, sizeof(path), "%s/%s", dir, file);
		if (!rc)
			rc = write_st(g, path, &part, g->seed);
		free(part.t);
	}
	if (!rc && shards > 1) {
		j = json_pack("{s:{s:I}, s:O}", "metadata", "total_size", (json_int_t)all.bytes,
			      "weight_map", map);
		snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
		rc = write_json(g, path, j);
	}
	if (!rc) {
		j = json_pack("{s:[s], s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:s, s:b}",
			      "architectures", "LlamaForCausalLM", "model_type", "llama",
			      "hidden_size", (json_int_t)d->hidden, "intermediate_size",
			      (json_int_t)d->ffn, "num_hidden_layers", (json_int_t)d->layers,
			      "num_attention_heads", (json_int_t)d->heads, "num_key_value_heads",
			      (json_int_t)d->heads, "vocab_size", (json_int_t)d->vocab,
			      "max_position_embeddings", (json_int_t)2048, "rms_norm_eps", 1e-6,
			      "torch_dtype", torch_dtype(g->dtype), "tie_word_embeddings", 0);
		snprintf(path, sizeof(path), "%s/config.json", dir);
		rc = write_json(g, path, j);
	}
	json_decref(map);
	free(of);
	gen_tlist_free(&all);
	if (!rc)
		model_end(g, dir);
	return rc;
}

static uint64_t mix(uint64_t z)
{
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* Rows of 16 elements per file tensor, at least one. */
static uint64_t files_rows(uint64_t per_file, uint64_t esize)
{
	uint64_t rows = per_file / (16 * esize);

	return rows ? rows : 1;
}

static int write_files(struct gen *g, const char *dir, uint32_t count, uint64_t rows)
{
	char path[4096];
	struct tlist l;
	int rc = 0;

	gen_tlist_init(&l, g->dtype, false);
	gen_add(&l, 2, S(rows, 16), "weight");
	if (l.err)
		return l.err;
	for (uint32_t i = 0; !rc && i < count; i++) {
		if (i % FILES_PER_DIR == 0) {
			snprintf(path, sizeof(path), "%s/%03u", dir, i / FILES_PER_DIR);
			rc = mkdir_p(path);
			if (rc)
				break;
		}
		snprintf(path, sizeof(path), "%s/%03u/model-%05u.safetensors", dir,
			 i / FILES_PER_DIR, i);
		model_begin(g);
		/* A different seed per file, so that no two files have the same content. */
		rc = write_st(g, path, &l, g->seed ^ mix(i + 1));
		if (!rc)
			model_end(g, path);
	}
	gen_tlist_free(&l);
	return rc;
}

/* ---------------------------------------------------------------------------------------
 * Presets
 */

static const struct {
	const char *name;
	const char *summary;
} presets[] = {
	{ "demo", "sd-tiny/ (diffusers SD 1.x), llama-tiny/ (2 shards), vae-tiny.safetensors" },
	{ "sd", "a diffusers SD 1.x folder (unet, vae, text_encoder, scheduler) in DIR" },
	{ "llama", "a sharded LLaMA checkpoint (index, config, shards) in DIR" },
	{ "files", "COUNT single-tensor files in DIR/NNN/, 100 per subdirectory" },
};

const char *gen_preset_name(size_t i, const char **summary)
{
	if (i >= ARRAY_SIZE(presets))
		return NULL;
	if (summary)
		*summary = presets[i].summary;
	return presets[i].name;
}

int gen_parse_size(const char *s, uint64_t *out)
{
	char *end;
	double v, mult = 1;

	if (!s || !*s || *s == '-')
		return -EINVAL;
	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || !(v >= 0))
		return -EINVAL;
	switch (*end) {
	case 'k': case 'K': mult = 1024.0; end++; break;
	case 'm': case 'M': mult = 1024.0 * 1024; end++; break;
	case 'g': case 'G': mult = 1024.0 * 1024 * 1024; end++; break;
	case 't': case 'T': mult = 1024.0 * 1024 * 1024 * 1024; end++; break;
	default: break;
	}
	if (mult > 1 && *end == 'i')
		end++;
	if (*end == 'B' || *end == 'b')
		end++;
	if (*end || v * mult >= 18446744073709551616.0)
		return -EINVAL;
	*out = (uint64_t)(v * mult);
	return 0;
}

int gen_preset(const char *preset, const char *dir, const struct gen_options *opt)
{
	static const struct gen_options defaults;
	struct gen g = { .opt = opt ? opt : &defaults };
	uint32_t shards, count;
	struct sd_dims sd;
	struct llama_dims ll;
	char path[4096];
	uint64_t size;
	int rc;

	if (!preset || !dir || !*dir)
		return -EINVAL;
	opt = g.opt;
	g.dtype = opt->dtype == ST_BOOL ? ST_F16 : opt->dtype;
	if (g.dtype != ST_F16 && g.dtype != ST_BF16 && g.dtype != ST_F32)
		return -EINVAL;
	g.seed = opt->seed;
	shards = opt->shards ? opt->shards : 2;
	count = opt->count ? opt->count : DEFAULT_FILES;
	size = opt->size;

	if (!strcmp(preset, "demo")) {
		uint64_t half = size ? size / 2 : DEFAULT_MODEL_BYTES;
		struct tlist vae;

		sd = gen_sd_choose(half, g.dtype);
		ll = gen_llama_choose(half, g.dtype);
		gen_tlist_init(&vae, g.dtype, true);
		gen_sd_vae(&vae, &sd);
		g.total = gen_sd_bytes(&sd, g.dtype) + gen_llama_bytes(&ll, g.dtype) + vae.bytes;
		rc = mkdir_p(dir);
		if (!rc) {
			snprintf(path, sizeof(path), "%s/sd-tiny", dir);
			rc = write_sd(&g, path, &sd);
		}
		if (!rc) {
			snprintf(path, sizeof(path), "%s/llama-tiny", dir);
			rc = write_llama(&g, path, &ll, shards);
		}
		if (!rc) {
			snprintf(path, sizeof(path), "%s/vae-tiny.safetensors", dir);
			rc = write_vae_file(&g, path, &sd);
		}
	} else if (!strcmp(preset, "sd")) {
		sd = gen_sd_choose(size ? size : DEFAULT_MODEL_BYTES, g.dtype);
		g.total = gen_sd_bytes(&sd, g.dtype);
		rc = write_sd(&g, dir, &sd);
	} else if (!strcmp(preset, "llama")) {
		ll = gen_llama_choose(size ? size : DEFAULT_MODEL_BYTES, g.dtype);
		g.total = gen_llama_bytes(&ll, g.dtype);
		rc = write_llama(&g, dir, &ll, shards);
	} else if (!strcmp(preset, "files")) {
		uint64_t esize = st_dtype_info(g.dtype)->bits / 8;
		uint64_t rows = files_rows(size ? size / count : DEFAULT_FILE_BYTES, esize);

		g.total = (uint64_t)count * rows * 16 * esize;
		rc = mkdir_p(dir);
		if (!rc)
			rc = write_files(&g, dir, count, rows);
	} else {
		return -EINVAL;
	}
	if (opt->report)
		*opt->report = g.rep;
	if (!rc)
		log_info("gen", "\"done\" preset=%s dir=\"%s\" models=%u files=%u bytes=%llu",
			 preset, dir, g.rep.models, g.rep.files, (unsigned long long)g.rep.bytes);
	return rc;
}

