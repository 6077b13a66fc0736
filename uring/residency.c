/* Page cache residency of a file's ranges: cachestat(2), else mincore(2) on a mapping. */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "uring/residency.h"

#define PAGE 4096u

/* Debian 12's kernel headers predate cachestat (Linux 6.5): its ABI, spelled out. */
#ifndef __NR_cachestat
#define __NR_cachestat 451
#endif
struct wd_cachestat_range {
	uint64_t off, len;
};
struct wd_cachestat {
	uint64_t nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted;
};

static _Atomic int method = RESIDENCY_AUTO;

void residency_set_method(enum residency_method m)
{
	atomic_store(&method, (int)m);
}

enum residency_method residency_method_used(void)
{
	return (enum residency_method)atomic_load(&method);
}

const char *residency_method_name(enum residency_method m)
{
	switch (m) {
	case RESIDENCY_AUTO:
		return "auto";
	case RESIDENCY_CACHESTAT:
		return "cachestat";
	case RESIDENCY_MINCORE:
		return "mincore";
	case RESIDENCY_NONE:
		return "none";
	}
	return "?";
}

/* Pages of [off, off + len) in the page cache by cachestat(2). */
static int by_cachestat(int fd, uint64_t off, uint64_t len, uint64_t *pages)
{
	struct wd_cachestat_range r = { off, len };
	struct wd_cachestat cs;

	if (syscall(__NR_cachestat, fd, &r, &cs, 0) < 0)
		return -errno;
	*pages = cs.nr_cache;
	return 0;
}

/* The mincore(2) vector of the first @size bytes of @fd: one byte per page, bit 0 = cached. */
static int mincore_vec(int fd, uint64_t size, unsigned char **out)
{
	uint64_t npages = (size + PAGE - 1) / PAGE;
	unsigned char *vec = malloc(npages ? npages : 1);
	void *m;
	int rc = 0;

	*out = NULL;
	if (!vec)
		return -ENOMEM;
	m = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
	if (m == MAP_FAILED) {
		free(vec);
		return -errno;
	}
	if (mincore(m, size, vec) < 0)
		rc = -errno;
	munmap(m, size);
	if (rc) {
		free(vec);
		return rc;
	}
	*out = vec;
	return 0;
}

/* Resolves RESIDENCY_AUTO on first use: cachestat when this kernel has it. */
static enum residency_method resolve(int fd)
{
	int m = atomic_load(&method);
	uint64_t unused;

	if (m != RESIDENCY_AUTO)
		return (enum residency_method)m;
	m = by_cachestat(fd, 0, PAGE, &unused) == -ENOSYS ? RESIDENCY_MINCORE
							   : RESIDENCY_CACHESTAT;
	atomic_store(&method, m);
	return (enum residency_method)m;
}

int residency_bytes(int fd, uint64_t off, uint64_t len, uint64_t *cached)
{
	uint64_t first = off / PAGE, last = (off + len + PAGE - 1) / PAGE, pages = 0;
	unsigned char *vec;
	int rc;

	*cached = 0;
	if (!len)
		return 0;
	switch (resolve(fd)) {
	case RESIDENCY_CACHESTAT:
		rc = by_cachestat(fd, off, len, &pages);
		break;
	case RESIDENCY_MINCORE:
		rc = mincore_vec(fd, off + len, &vec);
		if (rc)
			break;
		for (uint64_t p = first; p < last; p++)
			pages += vec[p] & 1;
		free(vec);
		break;
	default:
		return 0;
	}
	if (rc)
		return rc;
	*cached = pages * PAGE > len ? len : pages * PAGE;
	return 0;
}

int residency_map(int fd, uint64_t size, uint8_t *cached)
{
	uint64_t n = (size + RESIDENCY_GRANULE - 1) / RESIDENCY_GRANULE, total = 0;
	const uint64_t per = RESIDENCY_GRANULE / PAGE;
	unsigned char *vec = NULL;
	int rc = 0;

	memset(cached, 0, n);
	if (!size)
		return 0;
	switch (resolve(fd)) {
	case RESIDENCY_CACHESTAT:
		/* One call for the whole file settles the common cases: all warm, all cold. */
		rc = by_cachestat(fd, 0, size, &total);
		if (rc || !total)
			return rc;
		if (total >= (size + PAGE - 1) / PAGE) {
			memset(cached, 1, n);
			return 0;
		}
		for (uint64_t g = 0; g < n; g++) {
			uint64_t off = g * RESIDENCY_GRANULE, pages = 0;
			uint64_t len = size - off < RESIDENCY_GRANULE ? size - off : RESIDENCY_GRANULE;

			rc = by_cachestat(fd, off, len, &pages);
			if (rc) {
				memset(cached, 0, n);
				return rc;
			}
			cached[g] = pages * 2 >= (len + PAGE - 1) / PAGE;
		}
		return 0;
	case RESIDENCY_MINCORE:
		rc = mincore_vec(fd, size, &vec);
		if (rc)
			return rc;
		for (uint64_t g = 0; g < n; g++) {
			uint64_t p0 = g * per, p1 = p0 + per, np = (size + PAGE - 1) / PAGE, in = 0;

			if (p1 > np)
				p1 = np;
			for (uint64_t p = p0; p < p1; p++)
				in += vec[p] & 1;
			cached[g] = in * 2 >= p1 - p0;
		}
		free(vec);
		return 0;
	default:
		return 0;
	}
}
