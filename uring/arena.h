/*
 * The host cache arena: one sealed memfd that holds every component resident in host
 * memory, mapped read-write by the daemon and read-only by clients.
 *
 * Why one segment: a client maps it once at attach time and resolves any resident tensor to
 * base + offset (the offset is published in the registry's tensor record), with no copy and
 * no per-model descriptor passing. Space inside it is managed by an extent allocator
 * (core/policy/extent.h) with ARENA_EXTENT_ALIGN granularity; a cache entry (one component, or a
 * converted copy of one) owns one extent, and its tensors sit inside that extent at
 * ARENA_TENSOR_ALIGN (or as the file aligns them, see uring/loader.h).
 *
 * Pages: hugetlb pages (MFD_HUGETLB) when the system has enough free huge pages for the
 * whole budget; otherwise ordinary shmem pages with MADV_HUGEPAGE, which gives transparent
 * huge pages when /sys/kernel/mm/transparent_hugepage/shmem_enabled allows it. Memory is
 * allocated on first touch, so an extent can be bound to a NUMA node (arena_bind_node())
 * before the loader writes it.
 *
 * Seals: F_SEAL_SHRINK | F_SEAL_GROW always, so a client's mapping can never fault with
 * SIGBUS; clients get an O_RDONLY descriptor (arena_ro_fd()). By default the file also
 * carries F_SEAL_FUTURE_WRITE after the daemon's own mapping exists, so that not even a
 * reopen through /proc/PID/fd can produce a writable mapping. The kernel refuses to punch
 * holes into such a file, so freed extents keep their pages (the arena's footprint is its
 * high-water mark, at most the budget). ARENA_F_RELEASE trades that: no future-write seal,
 * the file is chmod 0444 instead (which stops any client that is not root from reopening it
 * writable), and arena_free() returns the pages of a freed extent to the system.
 *
 * Thread-safety: arena_alloc(), arena_free() and arena_get_stats() take the arena's lock;
 * writing into an extent is the owner's business.
 */
#ifndef WD_URING_ARENA_H
#define WD_URING_ARENA_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/policy/extent.h"
#include "shm/segment.h"

#define ARENA_EXTENT_ALIGN 4096u	/* extent granularity: O_DIRECT reads can target any */
#define ARENA_TENSOR_ALIGN 64u		/* tensor alignment inside an extent (aligned layout) */

/* arena_options.flags */
#define ARENA_F_NO_HUGETLB 0x1u	/* do not try MFD_HUGETLB */
#define ARENA_F_RELEASE 0x2u	/* no future-write seal; arena_free() releases pages */

enum arena_pages {
	ARENA_PAGES_HUGETLB = 0,	/* MFD_HUGETLB, 2 MiB pages reserved up front */
	ARENA_PAGES_THP,		/* shmem with MADV_HUGEPAGE and shmem THP enabled */
	ARENA_PAGES_SMALL,		/* shmem, 4 KiB pages */
};

struct arena_options {
	uint64_t budget;	/* bytes of cache; rounded up to the page size */
	const char *name;	/* memfd name (shown in /proc/PID/maps); NULL: "weightd-host" */
	unsigned int flags;	/* ARENA_F_* */
};

struct arena {
	struct shm_segment seg;	/* fd (O_RDWR), base, size = budget rounded */
	struct extent_alloc ext;
	pthread_mutex_t lock;
	enum arena_pages pages;
	uint64_t page_size;	/* 4096 or the huge page size */
	unsigned int flags;
	/*
	 * One byte per ARENA_POPULATE_CHUNK: set once arena_populate() has allocated its pages
	 * (atomic bytes). Without ARENA_F_RELEASE pages never go back, so each chunk is
	 * populated at most once; arena_free() with it clears the chunks it releases.
	 */
	uint8_t *populated;
	/* arena_prefault_start(): its thread, how far it got (atomic), and its stop flag. */
	pthread_t prefault;
	bool prefaulting;
	uint64_t prefaulted;
	bool prefault_stop;
};

struct arena_stats {
	struct extent_stats ext;	/* used/free bytes, free extents, largest, fragmentation */
	enum arena_pages pages;
	uint64_t resident;		/* bytes of the memfd backed by memory (st_blocks) */
};

/*
 * Creates the arena. Returns 0 and sets *@out; -EINVAL for a zero budget or unknown flags;
 * -ENOMEM; or the negative errno of memfd_create(2), ftruncate(2), mmap(2) or fcntl(2).
 * Which kind of pages it got is logged (log_info) and kept in arena.pages.
 */
int arena_create(const struct arena_options *opt, struct arena **out);

/* Unmaps and closes the arena; clients' mappings stay valid. NULL is ignored. */
void arena_destroy(struct arena *a);

/*
 * Allocates an extent of at least @size bytes (rounded up to ARENA_EXTENT_ALIGN) and stores
 * its offset in *@off. Returns 0; -EINVAL for a zero @size; -ENOSPC when no free extent is
 * large enough (evict, then retry); -ENOMEM.
 */
int arena_alloc(struct arena *a, uint64_t size, uint64_t *off);

/*
 * Frees the extent at @off of @size bytes (as given to arena_alloc()). With ARENA_F_RELEASE
 * its whole pages go back to the system (a later load faults in zeroed pages). Returns 0;
 * -EINVAL for a range that is not allocated (double free, misaligned); -ENOMEM.
 */
int arena_free(struct arena *a, uint64_t off, uint64_t size);

/*
 * Binds [@off, @off + @len) (page-rounded outwards) to NUMA node @node with mbind(2)
 * MPOL_BIND, moving pages that already exist there (on a machine with more than one node). Call it before the loader touches a
 * fresh extent so that first touch allocates on @node. Returns 0; -EINVAL for a range outside
 * the arena or a negative node; or the negative errno of mbind(2) (-EINVAL for a node that
 * does not exist, -ENOSYS without NUMA support).
 */
int arena_bind_node(struct arena *a, uint64_t off, uint64_t len, int node);

/*
 * The NUMA node that holds the page at @off, faulting it in (for tests and reports).
 * Returns the node, or the negative errno of get_mempolicy(2).
 */
int arena_page_node(struct arena *a, uint64_t off);

/*
 * A new O_RDONLY, O_CLOEXEC descriptor of the arena for one client (to send with SCM_RIGHTS;
 * the caller closes it). Returns it or the negative errno of open(2).
 */
int arena_ro_fd(const struct arena *a);

#define ARENA_POPULATE_CHUNK (2u << 20)

/*
 * Allocates the pages of [@off, @off + @len) in bulk (MADV_POPULATE_WRITE), whole
 * ARENA_POPULATE_CHUNKs at a time, skipping the chunks populated before; stops early once
 * *@abort (may be NULL) is set. Faults and page clears then happen here, on the caller's CPU,
 * not in the reads that fill the extent. Returns 0, or the negative errno of madvise(2)
 * (the pages are then allocated by the first write instead).
 */
int arena_populate(struct arena *a, uint64_t off, uint64_t len, const bool *abort);

/*
 * Starts a thread that allocates (and the kernel clears) every page of the arena in bulk,
 * arena_populate() in 64 MiB steps from offset 0, so that loads into pages nothing has
 * touched yet no longer pay for that: on a machine without huge pages it costs far more than
 * the read (bench/RESULTS.md). The memory is the budget's, committed at once instead of as
 * loads arrive. Pages go where the daemon's default NUMA policy puts them; an extent bound
 * later (arena_bind_node()) moves them. arena_destroy() stops the thread. Returns 0, or the
 * negative errno of pthread_create().
 */
int arena_prefault_start(struct arena *a);

/* Bytes the prefault thread has populated so far (0 without one). */
uint64_t arena_prefaulted(const struct arena *a);

/* Fills @st (takes the lock). */
void arena_get_stats(struct arena *a, struct arena_stats *st);

/*
 * The size of the pages that back the arena: the huge page size for hugetlb, the PMD size
 * (/sys/kernel/mm/transparent_hugepage/hpage_pmd_size, 2 MiB on x86-64) for THP, else 4096.
 */
uint64_t arena_page_bytes(const struct arena *a);

/* "hugetlb", "thp", "4k". */
const char *arena_pages_name(enum arena_pages p);

/* Daemon-side pointer to arena offset @off (no bounds check: offsets come from extents). */
static inline void *arena_ptr(const struct arena *a, uint64_t off)
{
	return (char *)a->seg.base + off;
}

#endif
