/* Growable arrays (core/base/array.h). */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/base/array.h"

int wd_grow(void *v, size_t *cap, size_t n, size_t size)
{
	void *nv;
	size_t c;

	if (n < *cap)
		return 0;
	c = *cap ? *cap * 2 : 16;
	if (c <= n)
		c = n + 1;
	if (size && c > SIZE_MAX / size)
		return -ENOMEM;
	nv = realloc(*(void **)v, c * size);
	if (!nv)
		return -ENOMEM;
	memset((char *)nv + *cap * size, 0, (c - *cap) * size);
	*(void **)v = nv;
	*cap = c;
	return 0;
}
