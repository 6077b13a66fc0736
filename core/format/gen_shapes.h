/*
 * What the two halves of the generator share (core/format/gen_shapes.c builds the tensor
 * lists of each model shape, core/format/gen.c writes them): the tensor list and the
 * dimensions of the Stable Diffusion 1.x and LLaMA shapes.
 */
#ifndef WD_FORMAT_GEN_SHAPES_H
#define WD_FORMAT_GEN_SHAPES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/base/common.h"
#include "core/format/st.h"
#include "core/format/st_write.h"

/*
 * The tensors of one file being built. A dry list only adds up bytes (to choose dimensions
 * for a target size and to know the total for progress); a writing list keeps each tensor.
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

void gen_tlist_init(struct tlist *l, enum st_dtype dtype, bool dry);
void gen_tlist_free(struct tlist *l);
/* Appends a tensor of @l's dtype; errors stick in l->err so builders need not check. */
void gen_add(struct tlist *l, uint32_t rank, const uint64_t *shape, const char *fmt, ...)
	WD_PRINTF(4, 5);
/* A shape literal: S(rows, 16). */
#define S(...) ((const uint64_t[]){ __VA_ARGS__ })

/* ---- Stable Diffusion 1.x, diffusers layout ---- */

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

/* The tensors of the UNet, the VAE and the CLIP text encoder at dimensions @d. */
void gen_sd_unet(struct tlist *l, const struct sd_dims *d);
void gen_sd_vae(struct tlist *l, const struct sd_dims *d);
void gen_sd_clip(struct tlist *l, const struct sd_dims *d);
/* The tensor bytes of the whole pipeline at @d. */
uint64_t gen_sd_bytes(const struct sd_dims *d, enum st_dtype dtype);
/* The largest dimensions whose pipeline fits @target bytes. */
struct sd_dims gen_sd_choose(uint64_t target, enum st_dtype dtype);

/* ---- LLaMA, Hugging Face layout ---- */

struct llama_dims {
	uint64_t hidden, ffn, layers, vocab, heads;
};

void gen_llama_tensors(struct tlist *l, const struct llama_dims *d);
uint64_t gen_llama_bytes(const struct llama_dims *d, enum st_dtype dtype);
/*
 * LLaMA dimensions for @target bytes; the bytes a step of the scale leaves over go into
 * the vocabulary (two hidden-wide rows per entry), so the size lands within one entry.
 */
struct llama_dims gen_llama_choose(uint64_t target, enum st_dtype dtype);

#endif
