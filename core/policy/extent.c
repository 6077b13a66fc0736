/* The extent allocator: a sorted, coalescing free list with best-fit allocation. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "core/policy/extent.h"

static int reserve(struct extent_alloc *ea, uint32_t need)
{
	struct extent *n;
	uint32_t cap;

	if (need <= ea->cap_free)
		return 0;
	cap = ea->cap_free ? ea->cap_free * 2 : 16;
	while (cap < need)
		cap *= 2;
	n = realloc(ea->free, cap * sizeof(*n));
	if (!n)
		return -ENOMEM;
	ea->free = n;
	ea->cap_free = cap;
	return 0;
}

int extent_init(struct extent_alloc *ea, uint64_t capacity, uint64_t align)
{
	memset(ea, 0, sizeof(*ea));
	if (!align || (align & (align - 1)))
		return -EINVAL;
	capacity &= ~(align - 1);
	if (!capacity)
		return -EINVAL;
	ea->capacity = capacity;
	ea->align = align;
	if (reserve(ea, 16))
		return -ENOMEM;
	ea->free[0] = (struct extent){ 0, capacity };
	ea->n_free = 1;
	return 0;
}

void extent_destroy(struct extent_alloc *ea)
{
	free(ea->free);
	memset(ea, 0, sizeof(*ea));
}

uint64_t extent_round(const struct extent_alloc *ea, uint64_t size)
{
	if (size > UINT64_MAX - (ea->align - 1))
		return 0;
	return (size + ea->align - 1) & ~(ea->align - 1);
}

int extent_alloc(struct extent_alloc *ea, uint64_t size, uint64_t *off)
{
	uint32_t best = UINT32_MAX;
	uint64_t len;

	if (!size)
		return -EINVAL;
	len = extent_round(ea, size);
	if (!len)
		return -ENOSPC;
	for (uint32_t i = 0; i < ea->n_free; i++) {
		if (ea->free[i].len < len)
			continue;
		if (best == UINT32_MAX || ea->free[i].len < ea->free[best].len)
			best = i;
		if (ea->free[i].len == len)
			break;
	}
	if (best == UINT32_MAX)
		return -ENOSPC;
	*off = ea->free[best].off;
	if (ea->free[best].len == len) {
		memmove(&ea->free[best], &ea->free[best + 1],
			(ea->n_free - best - 1) * sizeof(ea->free[0]));
		ea->n_free--;
	} else {
		ea->free[best].off += len;
		ea->free[best].len -= len;
	}
	ea->used += len;
	ea->n_used++;
	return 0;
}

/* Index of the first free extent whose offset is above @off (binary search). */
static uint32_t upper(const struct extent_alloc *ea, uint64_t off)
{
	uint32_t lo = 0, hi = ea->n_free;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (ea->free[mid].off <= off)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

int extent_free(struct extent_alloc *ea, uint64_t off, uint64_t size)
{
	struct extent *prev, *next;
	uint64_t len = extent_round(ea, size);
	uint32_t i;

	if (!size || !len || (off & (ea->align - 1)) || off > ea->capacity ||
	    len > ea->capacity - off || len > ea->used)
		return -EINVAL;
	i = upper(ea, off);
	prev = i ? &ea->free[i - 1] : NULL;
	next = i < ea->n_free ? &ea->free[i] : NULL;
	/* Overlap with free space means this range (or part of it) was never handed out. */
	if ((prev && prev->off + prev->len > off) || (next && off + len > next->off))
		return -EINVAL;
	if (prev && prev->off + prev->len == off) {
		prev->len += len;
		if (next && prev->off + prev->len == next->off) {
			prev->len += next->len;
			memmove(next, next + 1, (ea->n_free - i - 1) * sizeof(*next));
			ea->n_free--;
		}
	} else if (next && off + len == next->off) {
		next->off = off;
		next->len += len;
	} else {
		if (reserve(ea, ea->n_free + 1))
			return -ENOMEM;
		memmove(&ea->free[i + 1], &ea->free[i], (ea->n_free - i) * sizeof(ea->free[0]));
		ea->free[i] = (struct extent){ off, len };
		ea->n_free++;
	}
	ea->used -= len;
	ea->n_used--;
	return 0;
}

void extent_get_stats(const struct extent_alloc *ea, struct extent_stats *st)
{
	memset(st, 0, sizeof(*st));
	st->capacity = ea->capacity;
	st->used = ea->used;
	st->free = ea->capacity - ea->used;
	st->n_used = ea->n_used;
	st->n_free = ea->n_free;
	for (uint32_t i = 0; i < ea->n_free; i++)
		if (ea->free[i].len > st->largest_free)
			st->largest_free = ea->free[i].len;
	st->fragmentation = st->free ? 1.0 - (double)st->largest_free / (double)st->free : 0.0;
}
