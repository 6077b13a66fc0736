/*
 * Architecture detection from tensor names and shapes. Heuristics only read headers,
 * never data, so they run during discovery.
 */
#ifndef WD_CORE_ARCH_H
#define WD_CORE_ARCH_H

#include <stddef.h>

#include "core/format/st.h"

/*
 * Detects what one component is from the headers of its files (one file, or every shard
 * of a sharded checkpoint). Returns a static string, one of:
 *   "sd1-unet", "sdxl-unet", "sd3-transformer", "flux-transformer", "vae",
 *   "clip-text", "clip-text-g", "t5-encoder", "llama", "mistral", "unknown"
 * (and whatever else arch.c documents). Never NULL.
 */
const char *arch_detect(const struct st_file *const *files, size_t n_files);

/*
 * Names a whole model from its components' detected architectures, e.g. a diffusers
 * folder whose unet is "sdxl-unet" is "sdxl"; one with "flux-transformer" is "flux".
 * A single-component model is named after its component ("llama"). Never NULL.
 */
const char *arch_model(const char *const *component_archs, size_t n);

#endif
