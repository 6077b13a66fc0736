/*
 * Baseline reads for benchmarks: what reading a set of files costs with nothing of weightd in
 * the way, so that a load can be reported as a fraction of it (bench/bench_load.c,
 * `weightctl bench`).
 *
 * rawread_files() reads whole files into one caller buffer with io_uring, RAWREAD_QD reads of
 * RAWREAD_CHUNK bytes in flight, buffered or O_DIRECT. rawread_drop_cache() makes the next
 * read of the files cold: globally with /proc/sys/vm/drop_caches when that write is allowed
 * (root), else per file with posix_fadvise(POSIX_FADV_DONTNEED), which drops the clean pages
 * of files this user can open (pages another process keeps dirty or locked stay).
 */
#ifndef WD_URING_RAWREAD_H
#define WD_URING_RAWREAD_H

#include <stdbool.h>
#include <stdint.h>

#define RAWREAD_QD 32u
#define RAWREAD_CHUNK (4u << 20)

/* How the caches were dropped. */
enum rawread_drop {
	RAWREAD_DROP_NONE = 0,		/* nothing could be dropped */
	RAWREAD_DROP_CACHES,		/* /proc/sys/vm/drop_caches (every file of the system) */
	RAWREAD_DROP_FADVISE,		/* posix_fadvise(DONTNEED) on each file */
};

/* "none", "drop_caches", "fadvise_dontneed". */
const char *rawread_drop_name(enum rawread_drop d);

/*
 * Drops the page cache of the @n files @paths (sync(2) first). @allow_global lets it write
 * /proc/sys/vm/drop_caches. Returns what it did; RAWREAD_DROP_NONE when no file could be
 * opened.
 */
enum rawread_drop rawread_drop_cache(const char *const *paths, unsigned int n,
				     bool allow_global);

/*
 * Reads file i of @paths (@sizes[i] bytes) whole into @buf + @bases[i]. With @direct the files
 * are opened O_DIRECT: @buf and every base must be 4096-aligned, and the buffer must have
 * room for each size rounded up to 4096. Stores the wall time in *@secs.
 * Returns 0; -EINVAL (O_DIRECT refused by the file system: EINVAL from open or a read); the
 * negative errno of io_uring_queue_init(), open(2) or a failed read; -EIO on a short read.
 */
int rawread_files(const char *const *paths, const uint64_t *sizes, const uint64_t *bases,
		  unsigned int n, void *buf, bool direct, double *secs);

/*
 * The same with pread(2) of RAWREAD_CHUNK bytes by @jobs threads (1 to 8) that take the
 * chunks of all files in turn, buffered (the psync baseline of fio). Returns 0; -EINVAL for a
 * bad @jobs; the negative errno of open(2), pread(2) or pthread_create(); -EIO on a short read.
 */
int rawread_files_psync(const char *const *paths, const uint64_t *sizes, const uint64_t *bases,
			unsigned int n, void *buf, unsigned int jobs, double *secs);

/* What rawread_best_warm() measured: the best seconds of each method. */
struct rawread_warm {
	double uring;		/* io_uring, QD RAWREAD_QD, one thread */
	double psync1, psync2;	/* pread(2) by one and by two threads */
	double best;		/* the least of the three */
	const char *best_name;	/* "io_uring", "psync x1" or "psync x2" */
};

/*
 * The best warm read of the @n files @paths (as for rawread_files()) into @buf, the page
 * cache kept: one read first to fill the cache, then each method @runs times. This is the
 * warm baseline of bench/bench_load.c and `weightctl bench`. Returns 0 or the first error.
 */
int rawread_best_warm(const char *const *paths, const uint64_t *sizes, const uint64_t *bases,
		      unsigned int n, void *buf, unsigned int runs, struct rawread_warm *out);

/*
 * memcpy bandwidth: the best of @runs copies of @bytes between two buffers faulted in first.
 * Returns bytes per second, or a negative value when the buffers cannot be allocated.
 */
double rawread_memcpy_bps(uint64_t bytes, unsigned int runs);

#define RAWREAD_MAX_FILES 64

/* A benchmark's files, laid out for rawread_files(): file i at bases[i] (4096-aligned). */
struct rawread_set {
	unsigned int n;
	char *paths[RAWREAD_MAX_FILES];
	uint64_t sizes[RAWREAD_MAX_FILES], bases[RAWREAD_MAX_FILES];
	uint64_t total_file;	/* bytes of the files */
	uint64_t total_alloc;	/* bytes of a buffer that holds them all at their bases */
};

/*
 * The benchmarks' checkpoint: a generated LLaMA-like model of @size tensor bytes in 4 shards
 * (core/format/gen.h), written into @dir the first time (a stamp file, .complete, marks a whole one;
 * progress goes to stderr), and its safetensors files in name order in @set. Returns 0;
 * -ENOENT when @dir holds none; -ENOMEM; or the error of gen_preset() or stat(2).
 * Free @set with rawread_set_free().
 */
int rawread_bench_model(const char *dir, uint64_t size, struct rawread_set *set);
void rawread_set_free(struct rawread_set *set);

#endif
