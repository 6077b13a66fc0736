/* F32 -> F16 / BF16 conversion with round-to-nearest-even. */
#include <errno.h>
#include <string.h>

#include "core/format/convert.h"

bool convert_supported(enum st_dtype from, enum st_dtype to)
{
	return from == ST_F32 && (to == ST_F16 || to == ST_BF16);
}

uint16_t convert_f32_to_f16(uint32_t x)
{
	uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
	uint32_t abs = x & 0x7fffffffu;
	uint32_t base, rem;

	if (abs > 0x7f800000u) /* NaN: quiet bit set, top 9 payload bits kept */
		return sign | 0x7e00 | (uint16_t)((abs >> 13) & 0x1ff);
	/* 65520 lies halfway between the largest F16 (65504, odd mantissa) and 2^16: even wins. */
	if (abs >= 0x477ff000u)
		return sign | 0x7c00;
	if (abs < 0x38800000u) {
		/* Below 2^-14: an F16 subnormal counts units of 2^-24. */
		uint32_t e = abs >> 23, m = (abs & 0x7fffffu) | 0x800000u, shift, half;

		if (e < 102) /* below 2^-25: rounds to zero */
			return sign;
		shift = 126 - e;
		half = 1u << (shift - 1);
		base = m >> shift;
		rem = m & ((1u << shift) - 1);
		if (rem > half || (rem == half && (base & 1)))
			base++;
		return sign | (uint16_t)base;
	}
	/* Rebias the exponent from 127 to 15; a mantissa carry correctly bumps the exponent. */
	base = (abs - (112u << 23)) >> 13;
	rem = abs & 0x1fffu;
	if (rem > 0x1000u || (rem == 0x1000u && (base & 1)))
		base++;
	return sign | (uint16_t)base;
}

uint16_t convert_f32_to_bf16(uint32_t x)
{
	if ((x & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((x >> 16) | 0x40);
	return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}

int convert_run(enum st_dtype from, enum st_dtype to, void *dst, const void *src, size_t n)
{
	const unsigned char *s = src;
	unsigned char *d = dst;
	uint32_t x;
	uint16_t h;

	if (!convert_supported(from, to))
		return -EINVAL;
	if (to == ST_F16) {
		for (size_t i = 0; i < n; i++) {
			memcpy(&x, s + 4 * i, 4);
			h = convert_f32_to_f16(x);
			memcpy(d + 2 * i, &h, 2);
		}
	} else {
		for (size_t i = 0; i < n; i++) {
			memcpy(&x, s + 4 * i, 4);
			h = convert_f32_to_bf16(x);
			memcpy(d + 2 * i, &h, 2);
		}
	}
	return 0;
}
