/*
 * libFuzzer target for the layout JSON parsers: an HF sharded index
 * (*.safetensors.index.json, weight_map) and a diffusers model_index.json. Both come from
 * files anyone can drop into a model root. The first input byte chooses the parser.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "core/format/model.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct st_error err;

	if (size < 1)
		return 0;
	if (data[0] & 1) {
		struct model_index idx = { 0 };

		if (model_index_parse("fuzz.safetensors.index.json", (const char *)data + 1,
				      size - 1, &idx, &err) == 0)
			model_index_free(&idx);
	} else {
		char **names = NULL;
		size_t n = 0;

		if (model_diffusers_parse("model_index.json", (const char *)data + 1, size - 1,
					  &names, &n, &err) == 0) {
			for (size_t i = 0; i < n; i++)
				free(names[i]);
			free(names);
		}
	}
	return 0;
}
