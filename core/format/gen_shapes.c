/*
 * The model shapes of the synthetic model generator (gen.h lists the presets; gen.c writes
 * the files): the tensor list, and the builders that fill one with the tensors of a Stable
 * Diffusion 1.x pipeline or a LLaMA model at given dimensions, plus the choice of those
 * dimensions for a target size.
 *
 * Every builder runs twice over the same dimensions: on a dry list that only adds up tensor
 * bytes (to choose dimensions for a target size and to know the total for progress), and on
 * a writing list that keeps each tensor for st_write_file. Dimensions are chosen by a
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
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/format/gen_shapes.h"

#define NAME_MAX_LEN 256

/* ---------------------------------------------------------------------------------------
 * Tensor lists
 */


void gen_tlist_init(struct tlist *l, enum st_dtype dtype, bool dry)
{
	memset(l, 0, sizeof(*l));
	l->dtype = dtype;
	l->esize = st_dtype_info(dtype)->bits / 8;
	l->dry = dry;
}

void gen_tlist_free(struct tlist *l)
{
	for (size_t i = 0; i < l->n; i++)
		free((char *)l->t[i].name);
	free(l->t);
	memset(l, 0, sizeof(*l));
}

/* Appends a tensor of @l's dtype; errors stick in l->err so builders need not check. */
void gen_add(struct tlist *l, uint32_t rank, const uint64_t *shape, const char *fmt, ...)
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

#define RANK(...) ((uint32_t)(sizeof(S(__VA_ARGS__)) / sizeof(uint64_t)))
#define ADD(l, fmt_arg, ...) gen_add(l, RANK(__VA_ARGS__), S(__VA_ARGS__), "%s" fmt_arg, p)

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

void gen_sd_unet(struct tlist *l, const struct sd_dims *d)
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

void gen_sd_vae(struct tlist *l, const struct sd_dims *d)
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

void gen_sd_clip(struct tlist *l, const struct sd_dims *d)
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

uint64_t gen_sd_bytes(const struct sd_dims *d, enum st_dtype dtype)
{
	struct tlist l;

	gen_tlist_init(&l, dtype, true);
	gen_sd_unet(&l, d);
	gen_sd_vae(&l, d);
	gen_sd_clip(&l, d);
	return l.bytes;
}

/* ---------------------------------------------------------------------------------------
 * LLaMA, Hugging Face layout
 */


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

void gen_llama_tensors(struct tlist *l, const struct llama_dims *d)
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

uint64_t gen_llama_bytes(const struct llama_dims *d, enum st_dtype dtype)
{
	struct tlist l;

	gen_tlist_init(&l, dtype, true);
	gen_llama_tensors(&l, d);
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

			bytes = gen_llama_bytes(&d, dtype);
		} else {
			struct sd_dims d = sd_dims_at(mid);

			bytes = gen_sd_bytes(&d, dtype);
		}
		if (bytes <= target)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

struct sd_dims gen_sd_choose(uint64_t target, enum st_dtype dtype)
{
	return sd_dims_at(fit_scale(target, dtype, false));
}

/*
 * LLaMA dimensions for @target bytes; the bytes a step of the scale leaves over go into
 * the vocabulary (two hidden-wide rows per entry), so the size lands within one entry.
 */
struct llama_dims gen_llama_choose(uint64_t target, enum st_dtype dtype)
{
	struct llama_dims d = llama_dims_at(fit_scale(target, dtype, true));
	uint64_t bytes = gen_llama_bytes(&d, dtype);
	uint64_t row = 2 * d.hidden * (st_dtype_info(dtype)->bits / 8);

	if (bytes < target)
		d.vocab += (target - bytes) / row;
	return d;
}

