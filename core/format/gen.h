/*
 * Synthetic model generator: writes model folders with the real tensor names and layouts
 * of Stable Diffusion 1.x (diffusers) and LLaMA (Hugging Face sharded) checkpoints, with
 * dimensions scaled to a chosen size and deterministic pseudo-random data, for tests,
 * demos and benchmarks. Same preset, directory layout and options => byte-identical files.
 *
 * Presets (gen_preset_name() lists them):
 *   "demo"   DIR/sd-tiny/ (diffusers: model_index.json, unet/, vae/, text_encoder/,
 *            scheduler/), DIR/llama-tiny/ (two shards + model.safetensors.index.json +
 *            config.json) and DIR/vae-tiny.safetensors, a single-file model that is
 *            byte-identical to sd-tiny's VAE (a shared component, for deduplication).
 *   "sd"     the diffusers SD 1.x folder, written into DIR itself.
 *   "llama"  the sharded LLaMA checkpoint, written into DIR itself.
 *   "files"  @count single-tensor files DIR/NNN/model-NNNNN.safetensors, 100 per
 *            subdirectory, for the discovery benchmark.
 *
 * The SD models keep the features architecture detection reads (cross-attention context
 * 768 in every attn2.to_k weight, CLIP hidden size at most 768), so arch_detect() calls
 * the UNet "sd1-unet" and the model "sd1", and the LLaMA checkpoint "llama", at every size.
 */
#ifndef WD_CORE_GEN_H
#define WD_CORE_GEN_H

#include <stddef.h>
#include <stdint.h>

#include "core/format/st.h"

struct gen_report {
	uint32_t models;       /* models written (a diffusers folder is one model) */
	uint32_t files;	       /* files written: safetensors and JSON */
	uint32_t st_files;     /* of which safetensors files */
	uint64_t bytes;	       /* size of every file written */
	uint64_t tensor_bytes; /* tensor data bytes (what a loader moves) */
};

/*
 * Options; a zero field means the preset's default, so `struct gen_options o = { 0 }`
 * is valid.
 */
struct gen_options {
	/*
	 * Target tensor bytes of the whole preset. "sd" and "llama" scale their dimensions
	 * (and LLaMA's layer count) to the largest model that fits, "demo" splits it between
	 * its models, "files" spreads it over the files. 0: 4 MiB per model ("files": 512
	 * bytes per file). Below the smallest model a preset can build, that model is written.
	 */
	uint64_t size;
	uint64_t seed;
	enum st_dtype dtype; /* ST_F16, ST_BF16 or ST_F32; 0 (ST_BOOL) means ST_F16 */
	uint32_t count;	     /* "files": how many; 0: 10,000 */
	uint32_t shards;     /* "llama"/"demo": LLaMA shard count; 0: 2 */
	/* Called as data is written: tensor bytes done and the preset's total. */
	void (*progress)(void *arg, uint64_t done, uint64_t total);
	/* Called after each model: its name, its path, its file count and bytes. */
	void (*on_model)(void *arg, const char *name, const char *path, uint32_t files,
			 uint64_t bytes);
	void *arg;
	struct gen_report *report; /* filled when not NULL (also on failure: what was written) */
};

/*
 * Writes preset @preset into directory @dir (created with its parents when missing;
 * existing files of the same names are replaced atomically). @opt may be NULL (all
 * defaults). Returns 0, -EINVAL for an unknown preset or dtype or a size/count that
 * cannot be represented, -ENOMEM, or a negative errno from mkdir/open/write/rename.
 */
int gen_preset(const char *preset, const char *dir, const struct gen_options *opt);

/*
 * The @i-th preset's name, or NULL past the last; *@summary (when not NULL) receives a
 * one-line description.
 */
const char *gen_preset_name(size_t i, const char **summary);

/*
 * Parses a size such as "4096", "512K", "64M", "1G", "1.5G" (binary units, an optional
 * trailing "B"/"iB") into *@out. Returns 0 or -EINVAL.
 */
int gen_parse_size(const char *s, uint64_t *out);

#endif
