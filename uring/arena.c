/* The host cache arena: a sealed memfd, its pages, its NUMA binding and its extents. */
#include <errno.h>
#include <fcntl.h>
#include <numaif.h>
#include <numa.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/base/common.h"
#include "core/base/log.h"
#include "uring/arena.h"

#define HUGE_2M (2u << 20)

/* Free huge pages of the default size, in bytes, from /proc/meminfo (0 when unknown). */
static uint64_t free_huge_bytes(uint64_t *page)
{
	uint64_t nfree = 0, kb = 0;
	char line[256];
	FILE *f = fopen("/proc/meminfo", "re");

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		sscanf(line, "HugePages_Free: %lu", &nfree);
		sscanf(line, "Hugepagesize: %lu kB", &kb);
	}
	fclose(f);
	*page = kb * 1024;
	return nfree * kb * 1024;
}

#define SHMEM_ENABLED "/sys/kernel/mm/transparent_hugepage/shmem_enabled"

/*
 * Whether shmem THP is on for a MADV_HUGEPAGE mapping (shmem_enabled is not never/deny).
 * @mode gets the selected value ("never", "advise", ...; "unknown" when unreadable).
 */
static bool shmem_thp_enabled(char *mode, size_t size)
{
	char buf[256] = "";
	FILE *f = fopen(SHMEM_ENABLED, "re");
	const char *lb, *rb;
	bool on;

	snprintf(mode, size, "unknown");
	if (!f)
		return false;
	on = fgets(buf, sizeof(buf), f) && !strstr(buf, "[never]") && !strstr(buf, "[deny]");
	fclose(f);
	lb = strchr(buf, '[');
	rb = lb ? strchr(lb, ']') : NULL;
	if (rb)
		snprintf(mode, size, "%.*s", (int)(rb - lb - 1), lb + 1);
	return on;
}

int arena_create(const struct arena_options *opt, struct arena **out)
{
	/* Sealed against resizing; without ARENA_F_RELEASE, against writable mappings too. */
	unsigned int seg = opt->flags & ARENA_F_RELEASE ? 0 : SHM_SEG_PEERS_READ_ONLY;
	uint64_t hpage = 0, hfree, size;
	const char *name = opt->name ? opt->name : "weightd-host";
	struct arena *a;
	int rc = -EINVAL;

	*out = NULL;
	if (!opt->budget || (opt->flags & ~(ARENA_F_NO_HUGETLB | ARENA_F_RELEASE)) ||
	    opt->budget > (UINT64_MAX >> 2))
		return -EINVAL;
	a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	a->seg.fd = -1;
	a->flags = opt->flags;
	hfree = free_huge_bytes(&hpage);
	if (!(opt->flags & ARENA_F_NO_HUGETLB) && hpage) {
		size = (opt->budget + hpage - 1) / hpage * hpage;
		if (hfree >= size) {
			rc = shm_segment_create(name, size, seg | SHM_SEG_HUGETLB, &a->seg);
			if (rc == 0) {
				a->pages = ARENA_PAGES_HUGETLB;
				a->page_size = hpage;
			} else {
				log_info("arena", "\"hugetlb memfd failed, using shmem\" rc=%d", rc);
			}
		} else {
			log_info("arena", "\"not enough free huge pages, using shmem\" "
				 "free_bytes=%lu need=%lu", hfree, size);
		}
	}
	if (a->seg.fd < 0) {
		char mode[32];

		size = (opt->budget + 4095) & ~(uint64_t)4095;
		rc = shm_segment_create(name, size, seg, &a->seg);
		if (rc)
			goto fail;
		a->page_size = 4096;
		/* Advice only: without shmem THP the kernel keeps 4 KiB pages and says nothing. */
		if (madvise(a->seg.base, size, MADV_HUGEPAGE) == 0 &&
		    shmem_thp_enabled(mode, sizeof(mode))) {
			a->pages = ARENA_PAGES_THP;
		} else {
			a->pages = ARENA_PAGES_SMALL;
			/*
			 * Said at warn level: every client then maps the cache one 4 KiB page at a
			 * time (a warm second process pays ~0.2 s per GiB to populate them), where
			 * huge pages map it in 2 MiB steps (docs/config.md, "Huge pages").
			 */
			if (!strcmp(mode, "never") || !strcmp(mode, "deny"))
				log_warn("arena", "\"4 KiB pages: shmem THP is off\" shmem_enabled=%s "
					 "fix=\"echo advise >" SHMEM_ENABLED "\" see=\"docs/config.md "
					 "Huge pages, deploy/weightd-thp.tmpfiles\"", mode);
		}
	}
	if ((opt->flags & ARENA_F_RELEASE) && fchmod(a->seg.fd, 0444) < 0) {
		rc = -errno;
		goto fail;
	}
	rc = extent_init(&a->ext, a->seg.size, ARENA_EXTENT_ALIGN);
	if (rc)
		goto fail;
	a->populated = calloc(a->seg.size / ARENA_POPULATE_CHUNK + 1, 1);
	if (!a->populated) {
		extent_destroy(&a->ext);
		rc = -ENOMEM;
		goto fail;
	}
	pthread_mutex_init(&a->lock, NULL);
	log_info("arena", "\"host cache arena\" bytes=%zu pages=%s release=%d", a->seg.size,
		 arena_pages_name(a->pages), !!(opt->flags & ARENA_F_RELEASE));
	*out = a;
	return 0;
fail:
	shm_segment_close(&a->seg);
	free(a);
	return rc;
}

#define PREFAULT_STEP (64ull << 20)

int arena_populate(struct arena *a, uint64_t off, uint64_t len, const bool *abort)
{
	uint64_t c0 = off / ARENA_POPULATE_CHUNK, end = off + len;

	if (off > a->seg.size || len > a->seg.size - off)
		return -EINVAL;
	for (uint64_t c = c0; c * ARENA_POPULATE_CHUNK < end; c++) {
		uint64_t lo = c * ARENA_POPULATE_CHUNK, n = ARENA_POPULATE_CHUNK;

		if (abort && __atomic_load_n(abort, __ATOMIC_RELAXED))
			return 0;
		if (__atomic_load_n(&a->populated[c], __ATOMIC_RELAXED))
			continue;
		if (n > a->seg.size - lo)
			n = a->seg.size - lo;
		/* Chunks are multiples of 2 MiB, so a huge page's advice starts on its boundary. */
		if (madvise(arena_ptr(a, lo), n, MADV_POPULATE_WRITE) < 0)
			return -errno;
		__atomic_store_n(&a->populated[c], 1, __ATOMIC_RELAXED);
	}
	return 0;
}

static void *prefault_main(void *arg)
{
	struct arena *a = arg;
	uint64_t t0 = wd_now_ns(), o;
	int err = 0;

	for (o = 0; o < a->seg.size && !__atomic_load_n(&a->prefault_stop, __ATOMIC_RELAXED);
	     o += PREFAULT_STEP) {
		uint64_t len = a->seg.size - o < PREFAULT_STEP ? a->seg.size - o : PREFAULT_STEP;

		err = -arena_populate(a, o, len, &a->prefault_stop);
		if (err)
			break;
		__atomic_store_n(&a->prefaulted, o + len, __ATOMIC_RELAXED);
	}
	if (err)
		log_warn("arena", "\"prefault stopped\" bytes=%lu errno=%d", o, err);
	else
		log_info("arena", "\"prefaulted\" bytes=%lu secs=%.3f", o,
			 (double)(wd_now_ns() - t0) / 1e9);
	return NULL;
}

int arena_prefault_start(struct arena *a)
{
	int rc;

	if (a->prefaulting)
		return 0;
	rc = -pthread_create(&a->prefault, NULL, prefault_main, a);
	a->prefaulting = rc == 0;
	return rc;
}

uint64_t arena_prefaulted(const struct arena *a)
{
	return __atomic_load_n(&a->prefaulted, __ATOMIC_RELAXED);
}

void arena_destroy(struct arena *a)
{
	if (!a)
		return;
	if (a->prefaulting) {
		__atomic_store_n(&a->prefault_stop, true, __ATOMIC_RELAXED);
		pthread_join(a->prefault, NULL);
	}
	extent_destroy(&a->ext);
	pthread_mutex_destroy(&a->lock);
	shm_segment_close(&a->seg);
	free(a->populated);
	free(a);
}

int arena_alloc(struct arena *a, uint64_t size, uint64_t *off)
{
	int rc;

	pthread_mutex_lock(&a->lock);
	rc = extent_alloc(&a->ext, size, off);
	pthread_mutex_unlock(&a->lock);
	return rc;
}

int arena_free(struct arena *a, uint64_t off, uint64_t size)
{
	uint64_t len, lo, hi;
	int rc;

	pthread_mutex_lock(&a->lock);
	len = extent_round(&a->ext, size);
	rc = extent_free(&a->ext, off, size);
	pthread_mutex_unlock(&a->lock);
	if (rc || !(a->flags & ARENA_F_RELEASE))
		return rc;
	/*
	 * Only whole pages that lie inside the freed extent can go: a huge page shared with a
	 * neighbouring extent still holds that neighbour's data.
	 */
	lo = (off + a->page_size - 1) / a->page_size * a->page_size;
	hi = (off + len) / a->page_size * a->page_size;
	if (hi > lo && fallocate(a->seg.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
				 (off_t)lo, (off_t)(hi - lo)) < 0)
		log_warn("arena", "\"cannot release freed pages\" off=%lu len=%lu errno=%d", lo,
			 hi - lo, errno);
	/* The chunks that lost pages are populated again by the next load that needs them. */
	for (uint64_t c = lo / ARENA_POPULATE_CHUNK; hi > lo && c * ARENA_POPULATE_CHUNK < hi; c++)
		__atomic_store_n(&a->populated[c], 0, __ATOMIC_RELAXED);
	return 0;
}

int arena_bind_node(struct arena *a, uint64_t off, uint64_t len, int node)
{
	unsigned long mask[16] = { 0 };
	const unsigned long bits = sizeof(unsigned long) * 8;
	uint64_t lo, hi;

	if (node < 0 || (unsigned long)node >= bits * ARRAY_SIZE(mask) || off > a->seg.size ||
	    len > a->seg.size - off || !len)
		return -EINVAL;
	mask[node / bits] |= 1ul << (node % bits);
	lo = off / a->page_size * a->page_size;
	hi = (off + len + a->page_size - 1) / a->page_size * a->page_size;
	/*
	 * maxnode counts one more than the mask's bits: the kernel drops the last one. Moving
	 * pages walks every one of them (55 ms for 1 GiB of 4 KiB pages, on the load's path);
	 * with one node there is nowhere else they could be, so only the policy is set.
	 */
	if (mbind((char *)a->seg.base + lo, hi - lo, MPOL_BIND, mask, bits * ARRAY_SIZE(mask) + 1,
		  numa_max_node() > 0 ? MPOL_MF_MOVE : 0) < 0)
		return -errno;
	return 0;
}

int arena_page_node(struct arena *a, uint64_t off)
{
	volatile char *p = (char *)a->seg.base + off;
	int node = -1;

	(void)*p;
	if (get_mempolicy(&node, NULL, 0, (void *)p, MPOL_F_NODE | MPOL_F_ADDR) < 0)
		return -errno;
	return node;
}

int arena_ro_fd(const struct arena *a)
{
	return shm_segment_ro_fd(&a->seg);
}

void arena_get_stats(struct arena *a, struct arena_stats *st)
{
	struct stat sb;

	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&a->lock);
	extent_get_stats(&a->ext, &st->ext);
	pthread_mutex_unlock(&a->lock);
	st->pages = a->pages;
	if (fstat(a->seg.fd, &sb) == 0)
		st->resident = (uint64_t)sb.st_blocks * 512;
}

uint64_t arena_page_bytes(const struct arena *a)
{
	unsigned long long pmd = 0;
	FILE *f;

	if (a->pages != ARENA_PAGES_THP)
		return a->page_size;
	f = fopen("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size", "re");
	if (f) {
		if (fscanf(f, "%llu", &pmd) != 1)
			pmd = 0;
		fclose(f);
	}
	return pmd ? pmd : HUGE_2M;
}

const char *arena_pages_name(enum arena_pages p)
{
	switch (p) {
	case ARENA_PAGES_HUGETLB:
		return "hugetlb";
	case ARENA_PAGES_THP:
		return "thp";
	case ARENA_PAGES_SMALL:
		return "4k";
	}
	return "unknown";
}
