/*
 * The safetensors dtype table: each dtype's header spelling, its width in bits and the
 * kind of value it holds. The widths are what make the size rule exact: a tensor's byte
 * size is nelem x bits / 8, and for the sub-byte types (F6 at 6 bits, F4 at 4 bits) the
 * product must come out as a whole number of bytes.
 */
#include <string.h>

#include "core/base/common.h"
#include "core/format/st.h"

/* Indexed by enum st_dtype; the static_assert below keeps the two in step. */
static const struct st_dtype_info dtypes[] = {
	[ST_BOOL] = { "BOOL", 8, ST_KIND_BOOL },
	[ST_U8] = { "U8", 8, ST_KIND_UINT },
	[ST_I8] = { "I8", 8, ST_KIND_INT },
	[ST_U16] = { "U16", 16, ST_KIND_UINT },
	[ST_I16] = { "I16", 16, ST_KIND_INT },
	[ST_U32] = { "U32", 32, ST_KIND_UINT },
	[ST_I32] = { "I32", 32, ST_KIND_INT },
	[ST_U64] = { "U64", 64, ST_KIND_UINT },
	[ST_I64] = { "I64", 64, ST_KIND_INT },
	[ST_F16] = { "F16", 16, ST_KIND_FLOAT },
	[ST_BF16] = { "BF16", 16, ST_KIND_FLOAT },
	[ST_F32] = { "F32", 32, ST_KIND_FLOAT },
	[ST_F64] = { "F64", 64, ST_KIND_FLOAT },
	/* C64 is a pair of F32 (real, imaginary), 64 bits in all. */
	[ST_C64] = { "C64", 64, ST_KIND_COMPLEX },
	[ST_F8_E4M3] = { "F8_E4M3", 8, ST_KIND_FLOAT },
	[ST_F8_E5M2] = { "F8_E5M2", 8, ST_KIND_FLOAT },
	[ST_F8_E8M0] = { "F8_E8M0", 8, ST_KIND_FLOAT },
	[ST_F8_E4M3FNUZ] = { "F8_E4M3FNUZ", 8, ST_KIND_FLOAT },
	[ST_F8_E5M2FNUZ] = { "F8_E5M2FNUZ", 8, ST_KIND_FLOAT },
	[ST_F6_E2M3] = { "F6_E2M3", 6, ST_KIND_FLOAT },
	[ST_F6_E3M2] = { "F6_E3M2", 6, ST_KIND_FLOAT },
	[ST_F4] = { "F4", 4, ST_KIND_FLOAT },
};

_Static_assert(ARRAY_SIZE(dtypes) == ST_DTYPE_COUNT, "one dtypes[] row per enum st_dtype");

const struct st_dtype_info *st_dtype_info(enum st_dtype dt)
{
	return &dtypes[dt];
}

int st_dtype_from_name(const char *name)
{
	/* 22 short strings: a linear scan is cheaper than anything cleverer. */
	for (size_t i = 0; i < ARRAY_SIZE(dtypes); i++)
		if (!strcmp(dtypes[i].name, name))
			return (int)i;
	return -1;
}
