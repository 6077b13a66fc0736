/*
 * Extent allocator: hands out aligned byte ranges of a fixed-size space (the host cache
 * arena) and takes them back, with no memory of its own inside that space.
 *
 * Free space is a list of extents sorted by offset; freeing coalesces with both
 * neighbours, so two adjacent free extents never exist and the free list has at most one
 * entry more than there are live allocations. Allocation is best fit (the smallest free
 * extent that fits; the lowest offset among equals), carved from that extent's start, which
 * keeps large extents whole for large components under load/evict churn. Both operations
 * are O(number of free extents); a cache holds one extent per resident component, so that
 * number stays in the hundreds.
 *
 * Every offset and size is a multiple of the allocator's alignment (a power of two, e.g.
 * 4096 so that O_DIRECT reads can target any extent start). Not thread-safe: the owner
 * (uring/arena.c) serializes calls.
 *
 * Fragmentation is reported as external fragmentation, 1 - largest free extent / free
 * bytes: 0 when all free space is one extent, close to 1 when it is scattered in crumbs.
 */
#ifndef WD_CORE_EXTENT_H
#define WD_CORE_EXTENT_H

#include <stdint.h>

struct extent {
	uint64_t off;
	uint64_t len;
};

struct extent_alloc {
	uint64_t capacity;	/* managed bytes: [0, capacity) */
	uint64_t align;
	uint64_t used;		/* bytes handed out */
	uint64_t n_used;	/* live allocations */
	struct extent *free;	/* sorted by off, never adjacent, never empty */
	uint32_t n_free;
	uint32_t cap_free;
};

struct extent_stats {
	uint64_t capacity;
	uint64_t used;
	uint64_t free;
	uint64_t largest_free;
	uint64_t n_used;
	uint32_t n_free;
	double fragmentation;	/* 1 - largest_free / free; 0 when nothing is free */
};

/*
 * Initializes @ea to manage [0, @capacity) rounded down to @align (a power of two).
 * Returns 0; -EINVAL when @align is not a power of two or the rounded capacity is 0;
 * -ENOMEM.
 */
int extent_init(struct extent_alloc *ea, uint64_t capacity, uint64_t align);

/* Releases the free list; @ea may be zeroed. */
void extent_destroy(struct extent_alloc *ea);

/* @size rounded up to the allocator's alignment (0 when that would overflow). */
uint64_t extent_round(const struct extent_alloc *ea, uint64_t size);

/*
 * Allocates extent_round(@size) bytes, best fit, and stores the offset in *@off.
 * Returns 0; -EINVAL for a zero @size; -ENOSPC when no free extent is large enough
 * (the free total may still be larger: fragmentation); -ENOMEM.
 */
int extent_alloc(struct extent_alloc *ea, uint64_t size, uint64_t *off);

/*
 * Returns the extent at @off of @size bytes (the size given to extent_alloc()) to the free
 * list, coalescing with its neighbours. Returns 0; -EINVAL when the range is misaligned,
 * outside the space, or overlaps free space (a double free); -ENOMEM when the free list
 * cannot grow (the extent stays allocated).
 */
int extent_free(struct extent_alloc *ea, uint64_t off, uint64_t size);

/* Fills @st with the current usage and fragmentation. */
void extent_get_stats(const struct extent_alloc *ea, struct extent_stats *st);

#endif
