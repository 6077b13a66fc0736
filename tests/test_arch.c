/*
 * Architecture detection: one row per architecture (with the real names and dimensions
 * of the model it stands for, a handful of its tensors), plus rows that must not be
 * recognised. Headers are built in memory as struct st_file values: detection reads
 * only names and shapes, so no file with gigabytes of data is needed.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/format/arch.h"
#include "core/base/common.h"

struct tdef {
	const char *name;
	uint32_t rank;
	uint64_t shape[4];
};

#define T(n, r, ...) { n, r, { __VA_ARGS__ } }
#define MAX_T 12

struct row {
	const char *label;
	struct tdef t[MAX_T];
	size_t split; /* tensors before this index go to a first shard; 0: one file */
	const char *want_arch;
	const char *want_model;
};

static const struct row rows[] = {
	{ "sd1 unet, diffusers",
	  { T("conv_in.weight", 4, 320, 4, 3, 3),
	    T("down_blocks.0.resnets.0.conv1.weight", 4, 320, 320, 3, 3),
	    T("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight", 2, 320, 768),
	    T("mid_block.resnets.0.conv1.weight", 4, 1280, 1280, 3, 3),
	    T("up_blocks.3.resnets.2.conv2.weight", 4, 320, 320, 3, 3),
	    T("time_embedding.linear_1.weight", 2, 1280, 320) },
	  0, "sd1-unet", "sd1" },
	{ "sd1 unet, ldm keys only",
	  { T("model.diffusion_model.input_blocks.0.0.weight", 4, 320, 4, 3, 3),
	    T("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", 2,
	      320, 768),
	    T("model.diffusion_model.out.2.weight", 4, 4, 320, 3, 3) },
	  0, "sd1-unet", "sd1" },
	{ "sd2 unet (OpenCLIP-H context 1024)",
	  { T("down_blocks.0.resnets.0.conv1.weight", 4, 320, 320, 3, 3),
	    T("down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight", 2, 320, 1024) },
	  0, "sd2-unet", "sd2" },
	{ "sdxl unet, diffusers",
	  { T("add_embedding.linear_1.weight", 2, 1280, 2816),
	    T("down_blocks.0.resnets.0.conv1.weight", 4, 320, 320, 3, 3),
	    T("down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight", 2, 640, 2048) },
	  0, "sdxl-unet", "sdxl" },
	{ "sdxl unet, ldm keys",
	  { T("model.diffusion_model.label_emb.0.0.weight", 2, 1280, 2816),
	    T("model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight", 2,
	      640, 2048) },
	  0, "sdxl-unet", "sdxl" },
	{ "sdxl refiner unet (context 1280)",
	  { T("model.diffusion_model.label_emb.0.0.weight", 2, 1536, 2560),
	    T("model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight", 2,
	      768, 1280) },
	  0, "sdxl-refiner-unet", "sdxl-refiner" },
	{ "unet without cross-attention",
	  { T("down_blocks.0.resnets.0.conv1.weight", 4, 128, 128, 3, 3),
	    T("conv_in.weight", 4, 128, 3, 3, 3) },
	  0, "unet", "unet" },
	{ "sd1 whole ldm checkpoint",
	  { T("model.diffusion_model.input_blocks.0.0.weight", 4, 320, 4, 3, 3),
	    T("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", 2,
	      320, 768),
	    T("first_stage_model.encoder.down.0.block.0.conv1.weight", 4, 128, 128, 3, 3),
	    T("first_stage_model.quant_conv.weight", 4, 8, 8, 1, 1),
	    T("cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj.weight",
	      2, 768, 768),
	    T("cond_stage_model.transformer.text_model.final_layer_norm.weight", 1, 768) },
	  0, "sd1", "sd1" },
	{ "sdxl whole ldm checkpoint",
	  { T("model.diffusion_model.label_emb.0.0.weight", 2, 1280, 2816),
	    T("model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight", 2,
	      640, 2048),
	    T("first_stage_model.decoder.up.0.block.0.conv1.weight", 4, 128, 128, 3, 3),
	    T("conditioner.embedders.0.transformer.text_model.encoder.layers.0.mlp.fc1.weight", 2,
	      3072, 768),
	    T("conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight", 2,
	      3840, 1280) },
	  0, "sdxl", "sdxl" },
	{ "sd3 transformer, diffusers",
	  { T("pos_embed.proj.weight", 4, 1536, 16, 2, 2),
	    T("pos_embed.pos_embed", 3, 1, 36864, 1536),
	    T("context_embedder.weight", 2, 1536, 4096),
	    T("transformer_blocks.0.attn.add_q_proj.weight", 2, 1536, 1536),
	    T("transformer_blocks.0.attn.to_q.weight", 2, 1536, 1536) },
	  0, "sd3-transformer", "sd3" },
	{ "sd3 mmdit, sai keys",
	  { T("model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", 2, 4608, 1536),
	    T("model.diffusion_model.context_embedder.weight", 2, 1536, 4096) },
	  0, "sd3-transformer", "sd3" },
	{ "flux transformer, bfl keys",
	  { T("double_blocks.0.img_attn.qkv.weight", 2, 9216, 3072),
	    T("single_blocks.37.linear1.weight", 2, 21504, 3072),
	    T("img_in.weight", 2, 3072, 64) },
	  0, "flux-transformer", "flux" },
	{ "flux transformer, diffusers (has add_q_proj, no pos_embed)",
	  { T("context_embedder.weight", 2, 3072, 4096),
	    T("transformer_blocks.0.attn.add_q_proj.weight", 2, 3072, 3072),
	    T("single_transformer_blocks.0.attn.to_q.weight", 2, 3072, 3072),
	    T("x_embedder.weight", 2, 3072, 64) },
	  0, "flux-transformer", "flux" },
	{ "vae, diffusers",
	  { T("encoder.conv_in.weight", 4, 128, 3, 3, 3),
	    T("encoder.down_blocks.0.resnets.0.conv1.weight", 4, 128, 128, 3, 3),
	    T("decoder.up_blocks.0.resnets.0.conv1.weight", 4, 512, 512, 3, 3),
	    T("quant_conv.weight", 4, 8, 8, 1, 1),
	    T("post_quant_conv.weight", 4, 4, 4, 1, 1) },
	  0, "vae", "vae" },
	{ "vae, original ldm keys",
	  { T("encoder.down.0.block.0.conv1.weight", 4, 128, 128, 3, 3),
	    T("decoder.up.3.block.2.conv2.weight", 4, 128, 128, 3, 3),
	    T("quant_conv.weight", 4, 8, 8, 1, 1) },
	  0, "vae", "vae" },
	{ "clip-l text encoder",
	  { T("text_model.embeddings.token_embedding.weight", 2, 49408, 768),
	    T("text_model.encoder.layers.0.self_attn.q_proj.weight", 2, 768, 768),
	    T("text_model.encoder.layers.11.mlp.fc1.weight", 2, 3072, 768),
	    T("text_model.final_layer_norm.weight", 1, 768) },
	  0, "clip-text", "clip-text" },
	{ "clip-g text encoder (hidden from the token embedding)",
	  { T("text_model.embeddings.token_embedding.weight", 2, 49408, 1280),
	    T("text_model.encoder.layers.31.self_attn.q_proj.weight", 2, 1280, 1280),
	    T("text_projection.weight", 2, 1280, 1280) },
	  0, "clip-text-g", "clip-text-g" },
	{ "clip-h text encoder",
	  { T("text_model.encoder.layers.0.self_attn.q_proj.weight", 2, 1024, 1024),
	    T("text_model.final_layer_norm.weight", 1, 1024) },
	  0, "clip-text-h", "clip-text-h" },
	{ "t5 v1.1 xxl encoder",
	  { T("shared.weight", 2, 32128, 4096),
	    T("encoder.block.0.layer.0.SelfAttention.q.weight", 2, 4096, 4096),
	    T("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", 2, 32, 64),
	    T("encoder.block.23.layer.1.DenseReluDense.wi_0.weight", 2, 10240, 4096),
	    T("encoder.final_layer_norm.weight", 1, 4096) },
	  0, "t5-encoder", "t5-encoder" },
	{ "t5 with its decoder",
	  { T("shared.weight", 2, 32128, 512),
	    T("encoder.block.0.layer.0.SelfAttention.q.weight", 2, 512, 512),
	    T("decoder.block.0.layer.0.SelfAttention.q.weight", 2, 512, 512) },
	  0, "t5", "t5" },
	{ "llama 2 7b",
	  { T("model.embed_tokens.weight", 2, 32000, 4096),
	    T("model.layers.0.self_attn.q_proj.weight", 2, 4096, 4096),
	    T("model.layers.0.self_attn.k_proj.weight", 2, 4096, 4096),
	    T("model.layers.0.mlp.gate_proj.weight", 2, 11008, 4096),
	    T("model.layers.31.self_attn.q_proj.weight", 2, 4096, 4096),
	    T("model.norm.weight", 1, 4096), T("lm_head.weight", 2, 32000, 4096) },
	  0, "llama", "llama" },
	{ "mistral 7b v0.1",
	  { T("model.embed_tokens.weight", 2, 32000, 4096),
	    T("model.layers.0.self_attn.q_proj.weight", 2, 4096, 4096),
	    T("model.layers.0.self_attn.k_proj.weight", 2, 1024, 4096),
	    T("model.layers.0.mlp.gate_proj.weight", 2, 14336, 4096),
	    T("model.layers.31.self_attn.q_proj.weight", 2, 4096, 4096),
	    T("lm_head.weight", 2, 32000, 4096) },
	  0, "mistral", "mistral" },
	{ "mistral 7b v0.3, sharded over two files",
	  { T("model.embed_tokens.weight", 2, 32768, 4096),
	    T("model.layers.0.self_attn.q_proj.weight", 2, 4096, 4096),
	    T("model.layers.0.self_attn.k_proj.weight", 2, 1024, 4096),
	    T("model.layers.0.mlp.gate_proj.weight", 2, 14336, 4096),
	    T("model.layers.31.self_attn.q_proj.weight", 2, 4096, 4096),
	    T("lm_head.weight", 2, 32768, 4096) },
	  4, "mistral", "mistral" },
	{ "llama 3 8b (mistral's shapes, 128k vocabulary)",
	  { T("model.embed_tokens.weight", 2, 128256, 4096),
	    T("model.layers.0.self_attn.q_proj.weight", 2, 4096, 4096),
	    T("model.layers.0.self_attn.k_proj.weight", 2, 1024, 4096),
	    T("model.layers.0.mlp.gate_proj.weight", 2, 14336, 4096),
	    T("model.layers.31.self_attn.q_proj.weight", 2, 4096, 4096),
	    T("lm_head.weight", 2, 128256, 4096) },
	  0, "llama", "llama" },
	{ "mistral's shapes but 16 layers",
	  { T("model.embed_tokens.weight", 2, 32000, 4096),
	    T("model.layers.0.self_attn.q_proj.weight", 2, 4096, 4096),
	    T("model.layers.0.self_attn.k_proj.weight", 2, 1024, 4096),
	    T("model.layers.0.mlp.gate_proj.weight", 2, 14336, 4096),
	    T("model.layers.15.self_attn.q_proj.weight", 2, 4096, 4096) },
	  0, "llama", "llama" },
	{ "llama layout, tied embeddings (no lm_head), sharded",
	  { T("model.embed_tokens.weight", 2, 2048, 128),
	    T("model.layers.0.self_attn.q_proj.weight", 2, 128, 128),
	    T("model.layers.1.self_attn.q_proj.weight", 2, 128, 128) },
	  1, "llama", "llama" },
	{ "qwen2 (attention biases)",
	  { T("model.embed_tokens.weight", 2, 151936, 3584),
	    T("model.layers.0.self_attn.q_proj.weight", 2, 3584, 3584),
	    T("model.layers.0.self_attn.q_proj.bias", 1, 3584),
	    T("lm_head.weight", 2, 151936, 3584) },
	  0, "qwen2", "qwen2" },
	/* Rows that must not be recognised. */
	{ "no tensors", { { NULL, 0, { 0 } } }, 0, "unknown", "unknown" },
	{ "one anonymous tensor", { T("weight", 2, 16, 16) }, 0, "unknown", "unknown" },
	{ "bert encoder",
	  { T("bert.embeddings.word_embeddings.weight", 2, 30522, 768),
	    T("bert.encoder.layer.0.attention.self.query.weight", 2, 768, 768) },
	  0, "unknown", "unknown" },
	{ "llm attention without embeddings or head",
	  { T("model.layers.0.self_attn.q_proj.weight", 2, 4096, 4096) },
	  0, "unknown", "unknown" },
	{ "layer index that is not a number",
	  { T("model.embed_tokens.weight", 2, 32000, 4096),
	    T("model.layers.x.self_attn.q_proj.weight", 2, 4096, 4096) },
	  0, "unknown", "unknown" },
	{ "down_blocks not at the root (prefixed) is no unet",
	  { T("unet.down_blocks.0.resnets.0.conv1.weight", 4, 320, 320, 3, 3) },
	  0, "unknown", "unknown" },
	{ "attn2 context alone is no unet",
	  { T("blocks.0.attn2.to_k.weight", 2, 320, 768) }, 0, "unknown", "unknown" },
	{ "ldm unet + vae without text encoder is a unet",
	  { T("model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", 2,
	      320, 768),
	    T("first_stage_model.encoder.down.0.block.0.conv1.weight", 4, 128, 128, 3, 3) },
	  0, "sd1-unet", "sd1" },
};

static size_t row_len(const struct row *r)
{
	size_t n = 0;

	while (n < MAX_T && r->t[n].name)
		n++;
	return n;
}

/* Fills @f with tensors [@from, @to) of @r; the names point into the table. */
static void build(const struct row *r, size_t from, size_t to, struct st_file *f)
{
	memset(f, 0, sizeof(*f));
	f->n_tensors = (uint32_t)(to - from);
	f->tensors = calloc(to - from + 1, sizeof(*f->tensors));
	assert_non_null(f->tensors);
	for (size_t i = from; i < to; i++) {
		struct st_tensor *t = &f->tensors[i - from];

		t->name = (char *)r->t[i].name;
		t->dtype = ST_F16;
		t->rank = r->t[i].rank;
		t->nelem = 1;
		for (uint32_t d = 0; d < t->rank; d++) {
			t->shape[d] = r->t[i].shape[d];
			t->nelem *= t->shape[d];
		}
	}
}

static void dump(const struct row *r)
{
	for (size_t i = 0; i < row_len(r); i++) {
		fprintf(stderr, "    %s [", r->t[i].name);
		for (uint32_t d = 0; d < r->t[i].rank; d++)
			fprintf(stderr, "%s%llu", d ? ", " : "",
				(unsigned long long)r->t[i].shape[d]);
		fprintf(stderr, "]%s\n",
			r->split && i + 1 == r->split ? "  <- end of shard 1" : "");
	}
}

static void test_detect_table(void **state)
{
	int failures = 0;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		const struct row *r = &rows[i];
		size_t n = row_len(r);
		struct st_file files[2];
		const struct st_file *ptrs[2] = { &files[0], &files[1] };
		size_t nf = r->split ? 2 : 1;
		const char *got, *model;

		build(r, 0, r->split ? r->split : n, &files[0]);
		if (r->split)
			build(r, r->split, n, &files[1]);
		got = arch_detect(ptrs, nf);
		model = arch_model(&got, 1);
		if (!got || strcmp(got, r->want_arch) || strcmp(model, r->want_model)) {
			fprintf(stderr, "row %zu '%s': arch_detect = %s (want %s), arch_model = %s "
				"(want %s); tensors:\n", i, r->label, got ? got : "(null)",
				r->want_arch, model, r->want_model);
			dump(r);
			failures++;
		}
		free(files[0].tensors);
		if (r->split)
			free(files[1].tensors);
	}
	assert_int_equal(failures, 0);
}

/* A sharded checkpoint is one component: splitting it must not change the answer. */
static void test_split_invariance(void **state)
{
	int failures = 0;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		const struct row *r = &rows[i];
		size_t n = row_len(r);

		for (size_t s = 1; s < n; s++) {
			struct st_file files[2];
			const struct st_file *ptrs[2] = { &files[0], &files[1] };
			const char *got;

			build(r, 0, s, &files[0]);
			build(r, s, n, &files[1]);
			got = arch_detect(ptrs, 2);
			if (strcmp(got, r->want_arch)) {
				fprintf(stderr, "row %zu '%s' split at %zu: %s (want %s)\n", i,
					r->label, s, got, r->want_arch);
				failures++;
			}
			free(files[0].tensors);
			free(files[1].tensors);
		}
	}
	assert_int_equal(failures, 0);
}

static void test_detect_edge_inputs(void **state)
{
	const struct st_file *none[1] = { NULL };

	(void)state;
	assert_string_equal(arch_detect(NULL, 0), "unknown");
	assert_string_equal(arch_detect(none, 1), "unknown");
}

struct model_row {
	const char *label;
	const char *archs[5];
	const char *want;
};

static const struct model_row model_rows[] = {
	{ "sd1 diffusers folder", { "clip-text", "sd1-unet", "vae" }, "sd1" },
	{ "sdxl diffusers folder", { "vae", "clip-text", "clip-text-g", "sdxl-unet" }, "sdxl" },
	{ "sd3 diffusers folder", { "clip-text", "clip-text-g", "t5-encoder", "sd3-transformer",
				    "vae" }, "sd3" },
	{ "flux diffusers folder", { "clip-text", "t5-encoder", "flux-transformer", "vae" },
	  "flux" },
	{ "sd2 folder", { "sd2-unet", "clip-text-h", "vae" }, "sd2" },
	{ "whole sdxl checkpoint", { "sdxl" }, "sdxl" },
	{ "sharded llama", { "llama" }, "llama" },
	{ "single vae file", { "vae" }, "vae" },
	{ "two agreeing components", { "mistral", "mistral" }, "mistral" },
	{ "unknown components are ignored", { "unknown", "t5-encoder" }, "t5-encoder" },
	{ "mixed non-denoisers", { "vae", "clip-text" }, "unknown" },
	{ "nothing known", { "unknown", "unknown" }, "unknown" },
	{ "no components", { NULL }, "unknown" },
	{ "an arch arch_detect never produces", { "gpt2" }, "unknown" },
};

static void test_model_table(void **state)
{
	int failures = 0;

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(model_rows); i++) {
		const struct model_row *r = &model_rows[i];
		size_t n = 0;
		const char *got;

		while (n < ARRAY_SIZE(r->archs) && r->archs[n])
			n++;
		got = arch_model(r->archs, n);
		if (!got || strcmp(got, r->want)) {
			fprintf(stderr, "model row %zu '%s': %s (want %s) from", i, r->label,
				got ? got : "(null)", r->want);
			for (size_t k = 0; k < n; k++)
				fprintf(stderr, " %s", r->archs[k]);
			fputc('\n', stderr);
			failures++;
		}
	}
	assert_int_equal(failures, 0);
}

/* The name arch_model() returns is static, not the caller's (possibly freed) string. */
static void test_model_returns_static(void **state)
{
	char *heap = strdup("llama");
	const char *archs[1] = { heap };
	const char *got;

	(void)state;
	assert_non_null(heap);
	got = arch_model(archs, 1);
	assert_string_equal(got, "llama");
	assert_ptr_not_equal(got, heap);
	free(heap);
	assert_string_equal(got, "llama");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_detect_table),
		cmocka_unit_test(test_split_invariance),
		cmocka_unit_test(test_detect_edge_inputs),
		cmocka_unit_test(test_model_table),
		cmocka_unit_test(test_model_returns_static),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
