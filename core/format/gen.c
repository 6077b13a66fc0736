/*
 * The synthetic model generator (see gen.h for the presets).
 *
 * Every preset runs twice over the same builders: a dry pass that only adds up tensor
 * bytes (to choose dimensions for a target size and to know the total for progress), and
 * a writing pass that builds each file's tensor list and hands it to st_write_file, which
 * streams pseudo-random data derived from (seed, tensor name). Dimensions are chosen by a
 * bisection over one scale factor, so the same options always give the same dimensions.
 *
 * The SD 1.x builders follow diffusers' module tree for UNet2DConditionModel,
 * AutoencoderKL and transformers' CLIPTextModel (block structure, layer counts and names
 * exactly as in the real checkpoints); only widths and the vocabulary scale. The UNet's
 * cross-attention keys and values keep their real input width 768 (the CLIP-L hidden
 * size) even when the text encoder is scaled down: that width is what identifies an SD 1.x
 * UNet, and these weights are never run, so the mismatch costs nothing.
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
#include "core/base/log.h"
#include "core/format/st_write.h"

#define MIB (1ull << 20)
#define DEFAULT_MODEL_BYTES (4 * MIB)
#define DEFAULT_FILE_BYTES 512
#define DEFAULT_FILES 10000
#define FILES_PER_DIR 100
#define NAME_MAX_LEN 256
#define DIFFUSERS_VERSION "0.21.0"

/* ---------------------------------------------------------------------------------------
 * Tensor lists
 */

struct tlist {
	struct st_write_tensor *t;
	size_t n, cap;
	enum st_dtype dtype;
	uint64_t esize;
	uint64_t bytes; /* tensor bytes added so far */
	bool dry;	/* count bytes only */
	int err;
};

static void tlist_init(struct tlist *l, enum st_dtype dtype, bool dry)
{
	memset(l, 0, sizeof(*l));
	l->dtype = dtype;
	l->esize = st_dtype_info(dtype)->bits / 8;
	l->dry = dry;
}

static void tlist_free(struct tlist *l)
{
	for (size_t i = 0; i < l->n; i++)
		free((char *)l->t[i].name);
	free(l->t);
	memset(l, 0, sizeof(*l));
}

static void add(struct tlist *l, uint32_t rank, const uint64_t *shape, const char *fmt, ...)
	WD_PRINTF(4, 5);

/* Appends a tensor of @l's dtype; errors stick in l->err so builders need not check. */
static void add(struct tlist *l, uint32_t rank, const uint64_t *shape, const char *fmt, ...)
{
	struct st_write_tensor *t;
	uint64_t nelem = 1;
	va_list ap;
	char *name;
	int len;

	for (uint32_t d = 0; d < rank; d++)
		nelem *= shape[d];
	l->bytes += nelem * l->esize;
	if (l->dry || l->err)
		return;
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 256;
		struct st_write_tensor *nt = realloc(l->t, cap * sizeof(*nt));

		if (!nt) {
			l->err = -ENOMEM;
			return;
		}
		l->t = nt;
		l->cap = cap;
	}
	va_start(ap, fmt);
	len = vasprintf(&name, fmt, ap);
	va_end(ap);
	if (len < 0) {
		l->err = -ENOMEM;
		return;
	}
	t = &l->t[l->n++];
	memset(t, 0, sizeof(*t));
	t->name = name;
	t->dtype = l->dtype;
	t->rank = rank;
	memcpy(t->shape, shape, rank * sizeof(shape[0]));
}

#define S(...) ((const uint64_t[]){ __VA_ARGS__ })
#define RANK(...) ((uint32_t)(sizeof(S(__VA_ARGS__)) / sizeof(uint64_t)))
#define ADD(l, fmt_arg, ...) add(l, RANK(__VA_ARGS__), S(__VA_ARGS__), "%s" fmt_arg, p)

/* Weight and bias of a norm layer of @c channels, named @p.weight and @p.bias. */
static void norm(struct tlist *l, const char *p, uint64_t c)
{
	ADD(l, ".weight", c);
	ADD(l, ".bias", c);
}

static void linear(struct tlist *l, const char *p, uint64_t out, uint64_t in, bool bias)
{
	ADD(l, ".weight", out, in);
	if (bias)
		ADD(l, ".bias", out);
}

static void conv(struct tlist *l, const char *p, uint64_t out, uint64_t in, uint64_t k)
{
	ADD(l, ".weight", out, in, k, k);
	ADD(l, ".bias", out);
}

/* Joins a prefix and a printf-style suffix into @buf (NAME_MAX_LEN bytes). */
static const char *at(char *buf, const char *fmt, ...) WD_PRINTF(2, 3);
static const char *at(char *buf, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, NAME_MAX_LEN, fmt, ap);
	va_end(ap);
	return buf;
}

/* ---------------------------------------------------------------------------------------
 * Stable Diffusion 1.x, diffusers layout
 */

#define SD_CTX 768	/* cross-attention width: CLIP ViT-L's hidden size */
#define SD_LATENT 4
#define SD_CLIP_LAYERS 12
#define SD_CLIP_POSITIONS 77

struct sd_dims {
	uint64_t unet_c;  /* block_out_channels = c, 2c, 4c, 4c (SD: 320) */
	uint64_t vae_c;	  /* block_out_channels = c, 2c, 4c, 4c (SD: 128) */
	uint64_t clip_h;  /* hidden size (SD: 768); intermediate 4h */
	uint64_t clip_vocab;
	uint64_t groups;  /* GroupNorm groups: 32 when every width allows it, else 8 */
};

static uint64_t round_to(double v, uint64_t m, uint64_t min)
{
	uint64_t r = (uint64_t)llround(v / (double)m) * m;

	return r < min ? min : r;
}

static struct sd_dims sd_dims_at(double s)
{
	struct sd_dims d;

	d.unet_c = round_to(320 * s, 8, 8);
	d.vae_c = round_to(128 * s, 8, 8);
	d.clip_h = round_to(768 * s, 8, 8);
	/* Never wider than CLIP-L, so that detection cannot mistake it for OpenCLIP H or G. */
	if (d.clip_h > 768)
		d.clip_h = 768;
	d.clip_vocab = round_to(49408 * s, 1, 256);
	d.groups = d.unet_c % 32 == 0 && d.vae_c % 32 == 0 ? 32 : 8;
	return d;
}

/* A ResnetBlock2D; @temb 0 for the VAE's blocks, which take no time embedding. */
static void resnet(struct tlist *l, const char *p, uint64_t in, uint64_t out, uint64_t temb)
{
	char b[NAME_MAX_LEN];

	norm(l, at(b, "%s.norm1", p), in);
	conv(l, at(b, "%s.conv1", p), out, in, 3);
	if (temb)
		linear(l, at(b, "%s.time_emb_proj", p), out, temb, true);
	norm(l, at(b, "%s.norm2", p), out);
	conv(l, at(b, "%s.conv2", p), out, out, 3);
	if (in != out)
		conv(l, at(b, "%s.conv_shortcut", p), out, in, 1);
}

/* SD 1.x's Transformer2DModel: conv proj_in/proj_out, one BasicTransformerBlock. */
static void transformer2d(struct tlist *l, const char *p, uint64_t c)
{
	char b[NAME_MAX_LEN];
	static const char *const qkv[] = { "to_q", "to_k", "to_v" };

	norm(l, at(b, "%s.norm", p), c);
	conv(l, at(b, "%s.proj_in", p), c, c, 1);
	for (int a = 1; a <= 2; a++) {
		for (int k = 0; k < 3; k++)
			linear(l, at(b, "%s.transformer_blocks.0.attn%d.%s", p, a, qkv[k]), c,
			       a == 2 && k > 0 ? SD_CTX : c, false);
		linear(l, at(b, "%s.transformer_blocks.0.attn%d.to_out.0", p, a), c, c, true);
	}
	/* GEGLU: one projection to twice the 4c inner width. */
	linear(l, at(b, "%s.transformer_blocks.0.ff.net.0.proj", p), 8 * c, c, true);
	linear(l, at(b, "%s.transformer_blocks.0.ff.net.2", p), c, 4 * c, true);
	for (int k = 1; k <= 3; k++)
		norm(l, at(b, "%s.transformer_blocks.0.norm%d", p, k), c);
	conv(l, at(b, "%s.proj_out", p), c, c, 1);
}

static void sd_unet(struct tlist *l, const struct sd_dims *d)
{
	const uint64_t ch[4] = { d->unet_c, 2 * d->unet_c, 4 * d->unet_c, 4 * d->unet_c };
	const uint64_t temb = 4 * d->unet_c;
	char b[NAME_MAX_LEN];
	const char *p;

	p = "conv_in";
	conv(l, p, ch[0], SD_LATENT, 3);
	linear(l, "time_embedding.linear_1", temb, ch[0], true);
	linear(l, "time_embedding.linear_2", temb, temb, true);
	/* CrossAttnDownBlock2D x3, then DownBlock2D. */
	for (int i = 0; i < 4; i++) {
		uint64_t in = i ? ch[i - 1] : ch[0];

		for (int j = 0; j < 2; j++) {
			resnet(l, at(b, "down_blocks.%d.resnets.%d", i, j), j ? ch[i] : in, ch[i],
			       temb);
			if (i < 3)
				transformer2d(l, at(b, "down_blocks.%d.attentions.%d", i, j),
					      ch[i]);
		}
		if (i < 3)
			conv(l, at(b, "down_blocks.%d.downsamplers.0.conv", i), ch[i], ch[i], 3);
	}
	resnet(l, "mid_block.resnets.0", ch[3], ch[3], temb);
	transformer2d(l, "mid_block.attentions.0", ch[3]);
	resnet(l, "mid_block.resnets.1", ch[3], ch[3], temb);
	/* UpBlock2D, then CrossAttnUpBlock2D x3; resnets also take the skip connections. */
	for (int i = 0; i < 4; i++) {
		uint64_t out = ch[3 - i], prev = ch[3 - (i ? i - 1 : 0)];
		uint64_t skip_in = ch[3 - (i < 3 ? i + 1 : 3)];

		for (int j = 0; j < 3; j++) {
			uint64_t skip = j == 2 ? skip_in : out;

			resnet(l, at(b, "up_blocks.%d.resnets.%d", i, j), (j ? out : prev) + skip,
			       out, temb);
			if (i > 0)
				transformer2d(l, at(b, "up_blocks.%d.attentions.%d", i, j), out);
		}
		if (i < 3)
			conv(l, at(b, "up_blocks.%d.upsamplers.0.conv", i), out, out, 3);
	}
	norm(l, "conv_norm_out", ch[0]);
	conv(l, "conv_out", SD_LATENT, ch[0], 3);
}

static void vae_mid(struct tlist *l, const char *p, uint64_t c)
{
	char b[NAME_MAX_LEN];

	resnet(l, at(b, "%s.mid_block.resnets.0", p), c, c, 0);
	norm(l, at(b, "%s.mid_block.attentions.0.group_norm", p), c);
	linear(l, at(b, "%s.mid_block.attentions.0.to_q", p), c, c, true);
	linear(l, at(b, "%s.mid_block.attentions.0.to_k", p), c, c, true);
	linear(l, at(b, "%s.mid_block.attentions.0.to_v", p), c, c, true);
	linear(l, at(b, "%s.mid_block.attentions.0.to_out.0", p), c, c, true);
	resnet(l, at(b, "%s.mid_block.resnets.1", p), c, c, 0);
}

static void sd_vae(struct tlist *l, const struct sd_dims *d)
{
	const uint64_t ch[4] = { d->vae_c, 2 * d->vae_c, 4 * d->vae_c, 4 * d->vae_c };
	char b[NAME_MAX_LEN];

	conv(l, "encoder.conv_in", ch[0], 3, 3);
	for (int i = 0; i < 4; i++) {
		uint64_t in = i ? ch[i - 1] : ch[0];

		resnet(l, at(b, "encoder.down_blocks.%d.resnets.0", i), in, ch[i], 0);
		resnet(l, at(b, "encoder.down_blocks.%d.resnets.1", i), ch[i], ch[i], 0);
		if (i < 3)
			conv(l, at(b, "encoder.down_blocks.%d.downsamplers.0.conv", i), ch[i],
			     ch[i], 3);
	}
	vae_mid(l, "encoder", ch[3]);
	norm(l, "encoder.conv_norm_out", ch[3]);
	conv(l, "encoder.conv_out", 2 * SD_LATENT, ch[3], 3);
	conv(l, "quant_conv", 2 * SD_LATENT, 2 * SD_LATENT, 1);
	conv(l, "post_quant_conv", SD_LATENT, SD_LATENT, 1);
	conv(l, "decoder.conv_in", ch[3], SD_LATENT, 3);
	vae_mid(l, "decoder", ch[3]);
	for (int i = 0; i < 4; i++) {
		uint64_t out = ch[3 - i], prev = ch[3 - (i ? i - 1 : 0)];

		for (int j = 0; j < 3; j++)
			resnet(l, at(b, "decoder.up_blocks.%d.resnets.%d", i, j), j ? out : prev,
			       out, 0);
		if (i < 3)
			conv(l, at(b, "decoder.up_blocks.%d.upsamplers.0.conv", i), out, out, 3);
	}
	norm(l, "decoder.conv_norm_out", ch[0]);
	conv(l, "decoder.conv_out", 3, ch[0], 3);
}

static void sd_clip(struct tlist *l, const struct sd_dims *d)
{
	const uint64_t h = d->clip_h;
	static const char *const proj[] = { "k_proj", "v_proj", "q_proj", "out_proj" };
	char b[NAME_MAX_LEN];
	const char *p;

	p = "text_model.embeddings.token_embedding";
	ADD(l, ".weight", d->clip_vocab, h);
	p = "text_model.embeddings.position_embedding";
	ADD(l, ".weight", SD_CLIP_POSITIONS, h);
	for (int i = 0; i < SD_CLIP_LAYERS; i++) {
		for (int k = 0; k < 4; k++)
			linear(l, at(b, "text_model.encoder.layers.%d.self_attn.%s", i, proj[k]), h,
			       h, true);
		norm(l, at(b, "text_model.encoder.layers.%d.layer_norm1", i), h);
		linear(l, at(b, "text_model.encoder.layers.%d.mlp.fc1", i), 4 * h, h, true);
		linear(l, at(b, "text_model.encoder.layers.%d.mlp.fc2", i), h, 4 * h, true);
		norm(l, at(b, "text_model.encoder.layers.%d.layer_norm2", i), h);
	}
	norm(l, "text_model.final_layer_norm", h);
}

static uint64_t sd_bytes(const struct sd_dims *d, enum st_dtype dtype)
{
	struct tlist l;

	tlist_init(&l, dtype, true);
	sd_unet(&l, d);
	sd_vae(&l, d);
	sd_clip(&l, d);
	return l.bytes;
}

/* ---------------------------------------------------------------------------------------
 * LLaMA, Hugging Face layout
 */

struct llama_dims {
	uint64_t hidden, ffn, layers, vocab, heads;
};

/* LLaMA 7B at s = 1: hidden 4096, FFN 11008 (= 43/16 x hidden), 32 layers, 32000 vocab. */
static struct llama_dims llama_dims_at(double s)
{
	struct llama_dims d;
	double layers = round(32 * s);

	d.hidden = round_to(4096 * s, 64, 64);
	d.ffn = round_to((double)d.hidden * 43 / 16, 64, 64);
	d.layers = layers < 2 ? 2 : layers > 80 ? 80 : (uint64_t)layers;
	d.vocab = round_to(32000 * s, 256, 256);
	d.heads = d.hidden / 64;
	return d;
}

static void llama_tensors(struct tlist *l, const struct llama_dims *d)
{
	const uint64_t h = d->hidden;
	static const char *const proj[] = { "q_proj", "k_proj", "v_proj", "o_proj" };
	char b[NAME_MAX_LEN];
	const char *p = "model.embed_tokens";

	ADD(l, ".weight", d->vocab, h);
	for (uint64_t i = 0; i < d->layers; i++) {
		unsigned long long n = (unsigned long long)i;

		p = at(b, "model.layers.%llu.input_layernorm", n);
		ADD(l, ".weight", h);
		/* Full multi-head attention: k and v are as wide as q, as in LLaMA 1 and 2. */
		for (int k = 0; k < 4; k++)
			linear(l, at(b, "model.layers.%llu.self_attn.%s", n, proj[k]), h, h, false);
		p = at(b, "model.layers.%llu.post_attention_layernorm", n);
		ADD(l, ".weight", h);
		linear(l, at(b, "model.layers.%llu.mlp.gate_proj", n), d->ffn, h, false);
		linear(l, at(b, "model.layers.%llu.mlp.up_proj", n), d->ffn, h, false);
		linear(l, at(b, "model.layers.%llu.mlp.down_proj", n), h, d->ffn, false);
	}
	p = "model.norm";
	ADD(l, ".weight", h);
	p = "lm_head";
	ADD(l, ".weight", d->vocab, h);
}

static uint64_t llama_bytes(const struct llama_dims *d, enum st_dtype dtype)
{
	struct tlist l;

	tlist_init(&l, dtype, true);
	llama_tensors(&l, d);
	return l.bytes;
}

/*
 * The largest scale in [2^-12, 16] whose model fits @target, by bisection (sizes grow
 * with the scale, in steps); the smallest scale when nothing fits.
 */
static double fit_scale(uint64_t target, enum st_dtype dtype, bool llama)
{
	double lo = 1.0 / 4096, hi = 16;

	for (int it = 0; it < 48; it++) {
		double mid = (lo + hi) / 2;
		uint64_t bytes;

		if (llama) {
			struct llama_dims d = llama_dims_at(mid);

			bytes = llama_bytes(&d, dtype);
		} else {
			struct sd_dims d = sd_dims_at(mid);

			bytes = sd_bytes(&d, dtype);
		}
		if (bytes <= target)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

static struct sd_dims sd_choose(uint64_t target, enum st_dtype dtype)
{
	return sd_dims_at(fit_scale(target, dtype, false));
}

/*
 * LLaMA dimensions for @target bytes; the bytes a step of the scale leaves over go into
 * the vocabulary (two hidden-wide rows per entry), so the size lands within one entry.
 */
static struct llama_dims llama_choose(uint64_t target, enum st_dtype dtype)
{
	struct llama_dims d = llama_dims_at(fit_scale(target, dtype, true));
	uint64_t bytes = llama_bytes(&d, dtype);
	uint64_t row = 2 * d.hidden * (st_dtype_info(dtype)->bits / 8);

	if (bytes < target)
		d.vocab += (target - bytes) / row;
	return d;
}

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
	tlist_init(&l, g->dtype, false);
	build(&l, d);
	snprintf(path, sizeof(path), "%s/%s/%s", dir, sub, file);
	rc = write_st(g, path, &l, g->seed);
	tlist_free(&l);
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

	rc = write_sd_component(g, dir, "unet", "diffusion_pytorch_model.safetensors", sd_unet, d);
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

	rc = write_sd_component(g, dir, "vae", "diffusion_pytorch_model.safetensors", sd_vae, d);
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

	rc = write_sd_component(g, dir, "text_encoder", "model.safetensors", sd_clip, d);
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
	tlist_init(&l, g->dtype, false);
	sd_vae(&l, d);
	rc = write_st(g, path, &l, g->seed);
	tlist_free(&l);
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
	tlist_init(&all, g->dtype, false);
	llama_tensors(&all, d);
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
		tlist_init(&part, g->dtype, false);
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
	tlist_free(&all);
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

	tlist_init(&l, g->dtype, false);
	add(&l, 2, S(rows, 16), "weight");
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
	tlist_free(&l);
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

		sd = sd_choose(half, g.dtype);
		ll = llama_choose(half, g.dtype);
		tlist_init(&vae, g.dtype, true);
		sd_vae(&vae, &sd);
		g.total = sd_bytes(&sd, g.dtype) + llama_bytes(&ll, g.dtype) + vae.bytes;
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
		sd = sd_choose(size ? size : DEFAULT_MODEL_BYTES, g.dtype);
		g.total = sd_bytes(&sd, g.dtype);
		rc = write_sd(&g, dir, &sd);
	} else if (!strcmp(preset, "llama")) {
		ll = llama_choose(size ? size : DEFAULT_MODEL_BYTES, g.dtype);
		g.total = llama_bytes(&ll, g.dtype);
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
