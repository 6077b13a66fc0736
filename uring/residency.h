/*
 * Page cache residency: which parts of a file sit in the page cache, so that the loader reads
 * those buffered (a memory copy) and the rest with O_DIRECT (no copy through the page cache,
 * the disk's full speed). uring/loader_plan.c asks once per file when it plans a load.
 *
 * Methods, cheapest first (bench/bench_load.c measures both on the benchmark's files):
 *   cachestat(2)  Linux 6.5 and later: one system call per range, no mapping;
 *   mincore(2)    on a read-only mapping of the file: one call per file, a byte per page.
 * RESIDENCY_AUTO uses cachestat and falls back to mincore when the kernel lacks it (ENOSYS).
 */
#ifndef WD_URING_RESIDENCY_H
#define WD_URING_RESIDENCY_H

#include <stdint.h>

/* The unit of the loader's choice: each granule is read buffered or O_DIRECT as a whole. */
#define RESIDENCY_GRANULE (1u << 20)

enum residency_method {
	RESIDENCY_AUTO = 0,	/* cachestat, else mincore */
	RESIDENCY_CACHESTAT,
	RESIDENCY_MINCORE,
	RESIDENCY_NONE,		/* report nothing cached (every granule is read O_DIRECT) */
};

/*
 * Process-wide method for the next residency_map() calls (tests and benchmarks pick one;
 * the daemon keeps RESIDENCY_AUTO). Thread-safe.
 */
void residency_set_method(enum residency_method m);

/* The method RESIDENCY_AUTO resolved to after its first use, else the one set. */
enum residency_method residency_method_used(void);

/* "auto", "cachestat", "mincore", "none". */
const char *residency_method_name(enum residency_method m);

/*
 * Fills @cached[g] for each RESIDENCY_GRANULE granule g of the first @size bytes of the file
 * open at @fd (ceil(@size / RESIDENCY_GRANULE) bytes): 1 when at least half of its pages
 * are in the page cache, else 0. Returns 0; or the negative errno of the method's system
 * calls (then @cached says nothing is cached, and the caller may read it all O_DIRECT).
 */
int residency_map(int fd, uint64_t size, uint8_t *cached);

/* Bytes of [@off, @off + @len) of @fd in the page cache, by the current method. */
int residency_bytes(int fd, uint64_t off, uint64_t len, uint64_t *cached);

#endif
