/*
 * libFuzzer target for the safetensors header validator: the input is a whole file (its
 * size is the file size), so the fuzzer explores the length field, the JSON and the data
 * layout rules together. Any crash, sanitizer report, leak or hang is a bug; a rejection
 * is not. Each result is also checked for the invariants a caller relies on.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/format/st.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct st_file f;
	struct st_error err;
	int rc = st_parse_header("fuzz.safetensors", data, size, size, &f, &err);

	if (rc == 0) {
		/* Accepted: the tensors must tile the data exactly and be findable by name. */
		uint64_t cursor = 0;

		for (uint32_t i = 0; i < f.n_tensors; i++) {
			const struct st_tensor *t = &f.tensors[i];

			if (t->begin != cursor || st_find(&f, t->name) != t)
				abort();
			cursor = t->end;
		}
		if (f.data_start + cursor != size || err.code != ST_OK)
			abort();
	} else {
		/* Rejected: a real code, named in a one-line message that names the file. */
		if (err.code <= ST_OK || err.code >= ST_CODE_COUNT ||
		    !memchr(err.message, '\0', sizeof(err.message)) ||
		    strncmp(err.message, "fuzz.safetensors: ", 18) ||
		    !strstr(err.message, st_code_name(err.code)))
			abort();
		for (const char *c = err.message; *c; c++)
			if ((unsigned char)*c < 0x20)
				abort();
		if (f.tensors || f.meta || f.n_tensors)
			abort();
	}
	st_file_free(&f);
	return 0;
}
