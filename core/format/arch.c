/*
 * Architecture detection from tensor names and shapes.
 *
 * Only headers are read, so this runs during discovery. Every tensor name of every file
 * of a component is matched against the patterns below ('*' matches any run of
 * characters, '#' a decimal number, everything else itself), which set features; the
 * decision rules then run in order and the first that holds names the component.
 *
 * Features (pattern -> feature; "shape" says which dimension is recorded):
 *
 *   model.diffusion_model.*                     ldm_unet      (ldm/sgm single-file layout)
 *   first_stage_model.*                         ldm_vae
 *   cond_stage_model.* | conditioner.embedders.* | text_encoders.*       ldm_text
 *   *input_blocks.#.*  | down_blocks.#.resnets.*                         unet
 *   *attn2.to_k.weight (rank 2)                 unet_ctx = shape[1]  (cross-attention dim)
 *   add_embedding.* | *label_emb.*              unet_add      (SDXL size/crop conditioning)
 *   *double_blocks.#.* | *single_blocks.#.* | single_transformer_blocks.#.*      flux
 *   *joint_blocks.#.*                           sd3
 *   transformer_blocks.#.attn.add_q_proj.weight mmdit_add_q   (SD3 and Flux diffusers)
 *   context_embedder.weight                     mmdit_ctx
 *   pos_embed.*                                 mmdit_pos     (SD3 has it, Flux has not)
 *   *encoder.down_blocks.#.* | *encoder.down.#.* | *decoder.up_blocks.#.* |
 *   *decoder.up.#.* | *quant_conv.weight        vae
 *   *text_model.encoder.layers.#.*              clip
 *   *text_model.final_layer_norm.weight         clip_hidden = shape[0]
 *   *text_model.embeddings.token_embedding.weight    clip_hidden = shape[1] (if unset)
 *   *encoder.block.#.layer.0.SelfAttention.q.weight  t5
 *   *decoder.block.#.*                          t5_decoder
 *   model.layers.#.self_attn.q_proj.weight      llm, layers = max # + 1, hidden = shape[1]
 *   model.layers.#.self_attn.q_proj.bias        llm_qbias
 *   model.layers.#.self_attn.k_proj.weight      kv_out = shape[0]
 *   model.layers.#.mlp.gate_proj.weight         ffn = shape[0]
 *   model.embed_tokens.weight                   llm_embed, vocab = shape[0], hidden = shape[1]
 *   lm_head.weight                              llm_head, vocab = shape[0] (if unset)
 *
 * Decision rules, first match wins:
 *
 *   1. ldm_unet and ldm_vae and ldm_text: a whole single-file checkpoint; the answer is
 *      the model name of its denoiser (rule 2 on the same features): "sd1", "sd2",
 *      "sdxl", "sdxl-refiner", "sd3" or "flux" ("unknown" for an unrecognised denoiser).
 *   2. Denoisers:
 *      flux                                     -> "flux-transformer"
 *      sd3, or mmdit_add_q + mmdit_ctx + mmdit_pos   -> "sd3-transformer"
 *      unet and unet_ctx == 2048                -> "sdxl-unet"
 *      unet and unet_add and unet_ctx == 1280   -> "sdxl-refiner-unet"
 *      unet and unet_add                        -> "sdxl-unet"
 *      unet and unet_ctx == 768                 -> "sd1-unet"
 *      unet and unet_ctx == 1024                -> "sd2-unet"
 *      unet                                     -> "unet" (a UNet of no known family)
 *   3. vae                                      -> "vae"
 *   4. clip: clip_hidden 1280 -> "clip-text-g" (OpenCLIP bigG, SDXL's second encoder),
 *      1024 -> "clip-text-h" (OpenCLIP ViT-H, SD2), anything else -> "clip-text"
 *      (CLIP ViT-L is 768; scaled-down test models land here too).
 *   5. t5 -> "t5-encoder", or "t5" when t5_decoder says the decoder is there too.
 *   6. llm and (llm_embed or llm_head):
 *      llm_qbias                                -> "qwen2" (LLaMA and Mistral have no
 *                                                  attention biases; Qwen2 has q/k/v biases)
 *      hidden 4096, layers 32, kv_out 1024, ffn 14336, vocab 32000 or 32768 -> "mistral"
 *      otherwise                                -> "llama"
 *   7. otherwise                                -> "unknown"
 *
 * LLaMA and Mistral share one tensor layout, so weights alone cannot always tell them
 * apart. The rule above recognises Mistral 7B (v0.1 to v0.3: 8 KV heads of 128, FFN 14336,
 * a 32k vocabulary). Llama 3 8B has the same hidden size, depth, KV width and FFN but a
 * 128,256-entry vocabulary, so the vocabulary decides; anything else of that layout,
 * including Mistral fine-tunes with an extended vocabulary, is reported as "llama". The
 * sliding-window attention that distinguishes Mistral is configuration, not weights.
 */
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "core/format/arch.h"
#include "core/base/common.h"

enum feature {
	F_LDM_UNET,
	F_LDM_VAE,
	F_LDM_TEXT,
	F_UNET,
	F_UNET_CTX,
	F_UNET_ADD,
	F_FLUX,
	F_SD3,
	F_MMDIT_ADD_Q,
	F_MMDIT_CTX,
	F_MMDIT_POS,
	F_VAE,
	F_CLIP,
	F_CLIP_NORM,
	F_CLIP_TOKEN,
	F_T5,
	F_T5_DEC,
	F_LLM_Q,
	F_LLM_QBIAS,
	F_LLM_K,
	F_LLM_GATE,
	F_LLM_EMBED,
	F_LLM_HEAD,
	F_COUNT
};

struct rule {
	const char *pattern;
	enum feature feature;
};

/* The feature table documented at the top of this file, in the same order. */
static const struct rule rules[] = {
	{ "model.diffusion_model.*", F_LDM_UNET },
	{ "first_stage_model.*", F_LDM_VAE },
	{ "cond_stage_model.*", F_LDM_TEXT },
	{ "conditioner.embedders.*", F_LDM_TEXT },
	{ "text_encoders.*", F_LDM_TEXT },
	{ "*input_blocks.#.*", F_UNET },
	{ "down_blocks.#.resnets.*", F_UNET },
	{ "*attn2.to_k.weight", F_UNET_CTX },
	{ "add_embedding.*", F_UNET_ADD },
	{ "*label_emb.*", F_UNET_ADD },
	{ "*double_blocks.#.*", F_FLUX },
	{ "*single_blocks.#.*", F_FLUX },
	{ "single_transformer_blocks.#.*", F_FLUX },
	{ "*joint_blocks.#.*", F_SD3 },
	{ "transformer_blocks.#.attn.add_q_proj.weight", F_MMDIT_ADD_Q },
	{ "context_embedder.weight", F_MMDIT_CTX },
	{ "pos_embed.*", F_MMDIT_POS },
	{ "*encoder.down_blocks.#.*", F_VAE },
	{ "*encoder.down.#.*", F_VAE },
	{ "*decoder.up_blocks.#.*", F_VAE },
	{ "*decoder.up.#.*", F_VAE },
	{ "*quant_conv.weight", F_VAE },
	{ "*text_model.encoder.layers.#.*", F_CLIP },
	{ "*text_model.final_layer_norm.weight", F_CLIP_NORM },
	{ "*text_model.embeddings.token_embedding.weight", F_CLIP_TOKEN },
	{ "*encoder.block.#.layer.0.SelfAttention.q.weight", F_T5 },
	{ "*decoder.block.#.*", F_T5_DEC },
	{ "model.layers.#.self_attn.q_proj.weight", F_LLM_Q },
	{ "model.layers.#.self_attn.q_proj.bias", F_LLM_QBIAS },
	{ "model.layers.#.self_attn.k_proj.weight", F_LLM_K },
	{ "model.layers.#.mlp.gate_proj.weight", F_LLM_GATE },
	{ "model.embed_tokens.weight", F_LLM_EMBED },
	{ "lm_head.weight", F_LLM_HEAD },
};

struct features {
	bool has[F_COUNT];
	int64_t unet_ctx;
	int64_t clip_hidden;
	int64_t llm_hidden;
	int64_t llm_layers;
	int64_t llm_vocab;
	int64_t llm_kv_out;
	int64_t llm_ffn;
};

/*
 * Glob match of @s against @p: '*' any run (possibly empty), '#' one or more digits,
 * anything else itself. The value of the first '#' is stored in *@num when @num is not
 * NULL. Names are short and patterns have at most two '*', so backtracking is cheap.
 */
static bool match(const char *p, const char *s, int64_t *num)
{
	for (;; p++, s++) {
		if (*p == '*') {
			for (;; s++) {
				if (match(p + 1, s, num))
					return true;
				if (!*s)
					return false;
			}
		}
		if (*p == '#') {
			int64_t v = 0;

			if (*s < '0' || *s > '9')
				return false;
			for (; *s >= '0' && *s <= '9'; s++)
				v = v < INT64_MAX / 10 ? v * 10 + (*s - '0') : INT64_MAX;
			if (num) {
				*num = v;
				num = NULL;
			}
			s--;
			continue;
		}
		if (*p != *s)
			return false;
		if (!*p)
			return true;
	}
}

static int64_t dim(const struct st_tensor *t, uint32_t rank, uint32_t d)
{
	return t->rank == rank && t->shape[d] <= INT64_MAX ? (int64_t)t->shape[d] : -1;
}

static void collect(const struct st_tensor *t, struct features *f)
{
	for (size_t r = 0; r < ARRAY_SIZE(rules); r++) {
		int64_t n = -1;

		if (!match(rules[r].pattern, t->name, &n))
			continue;
		f->has[rules[r].feature] = true;
		switch (rules[r].feature) {
		case F_UNET_CTX:
			if (f->unet_ctx < 0)
				f->unet_ctx = dim(t, 2, 1);
			break;
		case F_CLIP_NORM:
			f->clip_hidden = dim(t, 1, 0);
			break;
		case F_CLIP_TOKEN:
			if (f->clip_hidden < 0)
				f->clip_hidden = dim(t, 2, 1);
			break;
		case F_LLM_Q:
			if (n + 1 > f->llm_layers)
				f->llm_layers = n + 1;
			if (f->llm_hidden < 0)
				f->llm_hidden = dim(t, 2, 1);
			break;
		case F_LLM_K:
			if (f->llm_kv_out < 0)
				f->llm_kv_out = dim(t, 2, 0);
			break;
		case F_LLM_GATE:
			if (f->llm_ffn < 0)
				f->llm_ffn = dim(t, 2, 0);
			break;
		case F_LLM_EMBED:
			f->llm_vocab = dim(t, 2, 0);
			f->llm_hidden = dim(t, 2, 1);
			break;
		case F_LLM_HEAD:
			if (f->llm_vocab < 0)
				f->llm_vocab = dim(t, 2, 0);
			break;
		default:
			break;
		}
	}
}

/* Rule 2: the denoiser, or NULL when these features describe none. */
static const char *denoiser(const struct features *f)
{
	if (f->has[F_FLUX])
		return "flux-transformer";
	if (f->has[F_SD3] || (f->has[F_MMDIT_ADD_Q] && f->has[F_MMDIT_CTX] && f->has[F_MMDIT_POS]))
		return "sd3-transformer";
	if (!f->has[F_UNET])
		return NULL;
	if (f->unet_ctx == 2048)
		return "sdxl-unet";
	if (f->has[F_UNET_ADD])
		return f->unet_ctx == 1280 ? "sdxl-refiner-unet" : "sdxl-unet";
	if (f->unet_ctx == 768)
		return "sd1-unet";
	if (f->unet_ctx == 1024)
		return "sd2-unet";
	return "unet";
}

static const char *llm(const struct features *f)
{
	if (f->has[F_LLM_QBIAS])
		return "qwen2";
	if (f->llm_hidden == 4096 && f->llm_layers == 32 && f->llm_kv_out == 1024 &&
	    f->llm_ffn == 14336 && (f->llm_vocab == 32000 || f->llm_vocab == 32768))
		return "mistral";
	return "llama";
}

/* Component arch -> model name for the denoisers; NULL for anything else. */
static const char *denoiser_model(const char *arch)
{
	static const char *const map[][2] = {
		{ "sd1-unet", "sd1" },	   { "sd2-unet", "sd2" },
		{ "sdxl-unet", "sdxl" },   { "sdxl-refiner-unet", "sdxl-refiner" },
		{ "sd3-transformer", "sd3" }, { "flux-transformer", "flux" },
		{ "unet", "unet" },
		/* Whole checkpoints (rule 1) are already model names. */
		{ "sd1", "sd1" },	   { "sd2", "sd2" },
		{ "sdxl", "sdxl" },	   { "sdxl-refiner", "sdxl-refiner" },
		{ "sd3", "sd3" },	   { "flux", "flux" },
	};

	for (size_t i = 0; i < ARRAY_SIZE(map); i++)
		if (!strcmp(arch, map[i][0]))
			return map[i][1];
	return NULL;
}

/*
 * The static spelling of a non-denoiser arch, so that arch_model() never returns a
 * pointer into its caller's strings (which may come from a database row); an arch this
 * file never produces is "unknown".
 */
static const char *static_name(const char *arch)
{
	static const char *const known[] = { "vae",	   "clip-text", "clip-text-g",
					     "clip-text-h", "t5-encoder", "t5",
					     "llama",	   "mistral",	"qwen2" };

	for (size_t i = 0; i < ARRAY_SIZE(known); i++)
		if (!strcmp(arch, known[i]))
			return known[i];
	return "unknown";
}

const char *arch_detect(const struct st_file *const *files, size_t n_files)
{
	struct features f = { .unet_ctx = -1, .clip_hidden = -1, .llm_hidden = -1,
			      .llm_layers = -1, .llm_vocab = -1, .llm_kv_out = -1,
			      .llm_ffn = -1 };
	const char *d;

	for (size_t i = 0; i < n_files; i++) {
		if (!files || !files[i])
			continue;
		for (uint32_t t = 0; t < files[i]->n_tensors; t++)
			if (files[i]->tensors[t].name)
				collect(&files[i]->tensors[t], &f);
	}
	d = denoiser(&f);
	if (f.has[F_LDM_UNET] && f.has[F_LDM_VAE] && f.has[F_LDM_TEXT]) {
		const char *m = d ? denoiser_model(d) : NULL;

		return m && strcmp(m, "unet") ? m : "unknown";
	}
	if (d)
		return d;
	if (f.has[F_VAE])
		return "vae";
	if (f.has[F_CLIP]) {
		if (f.clip_hidden == 1280)
			return "clip-text-g";
		if (f.clip_hidden == 1024)
			return "clip-text-h";
		return "clip-text";
	}
	if (f.has[F_T5])
		return f.has[F_T5_DEC] ? "t5" : "t5-encoder";
	if (f.has[F_LLM_Q] && (f.has[F_LLM_EMBED] || f.has[F_LLM_HEAD]))
		return llm(&f);
	return "unknown";
}

/*
 * Model naming: the first component that is a denoiser names the model (its family:
 * "sd1", "sd2", "sdxl", "sdxl-refiner", "sd3", "flux", or "unet" for a UNet of no known
 * family); without one, components that all agree (ignoring "unknown") name it, so a
 * single-component model is named after its component; a mix of different
 * non-denoiser components, or nothing known, is "unknown".
 */
const char *arch_model(const char *const *component_archs, size_t n)
{
	const char *agreed = NULL;
	bool mixed = false;

	for (size_t i = 0; i < n; i++) {
		const char *a = component_archs ? component_archs[i] : NULL;
		const char *m;

		if (!a || !strcmp(a, "unknown"))
			continue;
		m = denoiser_model(a);
		if (m)
			return m;
		if (!agreed)
			agreed = a;
		else if (strcmp(agreed, a))
			mixed = true;
	}
	return agreed && !mixed ? static_name(agreed) : "unknown";
}
