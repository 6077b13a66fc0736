/*
 * Load-time dtype conversion: F32 tensors stored as F16 or BF16 in the host cache.
 *
 * Rounding is round-to-nearest-even, as IEEE 754 and every framework's cast do. NaN stays
 * NaN (quietened, sign and the top payload bits kept), infinities stay infinite, finite F32
 * values beyond the F16 range become infinities, tiny values become F16 subnormals or
 * signed zero. Bytes are little-endian, as in safetensors files; sources need no alignment.
 */
#ifndef WD_CORE_CONVERT_H
#define WD_CORE_CONVERT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/format/st.h"

/* Whether a tensor of dtype @from can be converted to @to (F32 -> F16, F32 -> BF16). */
bool convert_supported(enum st_dtype from, enum st_dtype to);

/* One element. */
uint16_t convert_f32_to_f16(uint32_t bits);
uint16_t convert_f32_to_bf16(uint32_t bits);

/*
 * Converts @n elements of dtype @from at @src (any alignment) into @dst as dtype @to.
 * Returns 0, or -EINVAL when convert_supported(@from, @to) is false.
 */
int convert_run(enum st_dtype from, enum st_dtype to, void *dst, const void *src, size_t n);

#endif
