/*
 * A safetensors writer: our second writer (the first is the reference implementation
 * that wrote ../shared/corpus). Used by the synthetic model generator and by tests.
 */
#ifndef WD_CORE_ST_WRITE_H
#define WD_CORE_ST_WRITE_H

#include <stddef.h>
#include <stdint.h>

#include "core/format/st.h"

struct st_write_tensor {
	const char *name;
	enum st_dtype dtype;
	uint32_t rank;
	uint64_t shape[ST_MAX_RANK];
	const void *data; /* NULL: deterministic pseudo-random bytes from (seed, name) */
};

/*
 * Writes a valid safetensors file at @path (via a temporary file and rename, so readers
 * never see a partial file). Tensors are laid out in the given order; the header is
 * padded with spaces so that the data starts at a multiple of 8. @meta may be NULL.
 * Returns 0 or a negative errno (-EINVAL for a tensor whose size is not a whole number
 * of bytes, or a duplicate name).
 */
int st_write_file(const char *path, const struct st_write_tensor *tensors, size_t n,
		  const struct st_kv *meta, size_t n_meta, uint64_t seed);

/*
 * Same as st_write_file(), and calls @progress (when not NULL) after every chunk of at
 * most 1 MiB with the number of tensor data bytes written so far and @arg, so that a
 * caller writing gigabytes can draw a progress line.
 */
int st_write_file_progress(const char *path, const struct st_write_tensor *tensors, size_t n,
			   const struct st_kv *meta, size_t n_meta, uint64_t seed,
			   void (*progress)(void *arg, uint64_t bytes_done), void *arg);

#endif
