/*
 * Recovery policy: what the daemon does when something fails that may succeed if tried
 * again, and when to stop trying. The mechanisms live where the failures happen (the loader,
 * the host cache, the daemon's control thread); the decisions and their numbers live here.
 *
 *   transient reads   the io_uring loader retries a read that completed with -EINTR or
 *                     -EAGAIN: one read gets at most RECOVERY_IO_TRIES retries, the k-th
 *                     after recovery_backoff_ns(k) (1 ms doubling, at most 100 ms: 31 ms in
 *                     all for 5). A read that returned fewer bytes than asked without
 *                     reaching the end of the file is resubmitted at once for the bytes
 *                     still missing (bytes are flowing: no wait), at most
 *                     RECOVERY_SHORT_READS times, so that a file system that serves large
 *                     reads in pieces still loads. A permanent error (-EIO, any other errno,
 *                     or a read that returns 0 bytes before the expected length: the file
 *                     was truncated) fails the load at once with the file and the byte
 *                     offset.
 *   allocation        recovery_alloc_retry(): when an allocation fails with -ENOSPC (no free
 *                     extent large enough: fragmentation) or -ENOMEM (the pages could not be
 *                     faulted in), evict unpinned entries and retry once, then fail with a
 *                     message that says what was tried. The host tier uses it for extents and
 *                     for populating them; the device tier (core/tier/dev_evict.c) for VRAM.
 *   memory pressure   core/daemon/psi.h: shed unpinned cache entries when the kernel reports memory
 *                     pressure.
 *   quarantine        a component whose loads fail RECOVERY_QUARANTINE_AFTER times in a row
 *                     is refused at once (-ENOTRECOVERABLE) until one of its files changes
 *                     (its fingerprint differs) or an operator unloads it.
 *
 * Counters: each recovery is counted process-wide (a process runs one daemon); they are read
 * into the STATS vector (WD_STAT_IO_RETRIES ...) and /metrics.
 */
#ifndef WD_CORE_RECOVERY_H
#define WD_CORE_RECOVERY_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RECOVERY_IO_TRIES 5u			/* retries of one read after EINTR/EAGAIN */
#define RECOVERY_SHORT_READS 64u		/* short reads of one read (up to 4 MiB) */
#define RECOVERY_BACKOFF_MIN_NS 1000000ull	/* the first retry's wait: 1 ms */
#define RECOVERY_BACKOFF_MAX_NS 100000000ull	/* no wait is longer: 100 ms */
#define RECOVERY_QUARANTINE_AFTER 3u		/* failures in a row; 0 turns quarantine off */
#define RECOVERY_REASON_MAX 200

enum recovery_counter {
	RECOVERY_IO_RETRIES = 0,	/* reads resubmitted after a transient error/short read */
	RECOVERY_ALLOC_RETRIES,		/* allocations retried after evicting */
	RECOVERY_PRESSURE_SHEDS,	/* entries shed under memory pressure */
	RECOVERY_QUARANTINED,		/* components put in quarantine */
	RECOVERY_COUNTER_COUNT
};

/* Adds @n to counter @c; thread-safe (relaxed atomics: counters order nothing). */
void recovery_count(enum recovery_counter c, uint64_t n);
/* The counter's value. */
uint64_t recovery_counter(enum recovery_counter c);

/* The wait before retry number @attempt (1-based): 1 ms << (attempt - 1), at most 100 ms. */
uint64_t recovery_backoff_ns(unsigned int attempt);

/* Whether a read that completed with @err (a negative errno) may succeed when retried. */
static inline bool recovery_io_transient(int err)
{
	return err == -EINTR || err == -EAGAIN;
}

/*
 * One allocation under the retry policy. @try_alloc performs it (0, or a negative errno);
 * @evict frees room in the tier for @bytes after @err (-ENOSPC: until a large enough extent
 * is free; -ENOMEM: at least @bytes) by evicting unpinned entries, least valuable first, and
 * returns the bytes it evicted (0: nothing was evictable) or a negative errno.
 */
struct recovery_alloc {
	const char *tier;	/* for messages: "host", "cuda:0" */
	const char *name;	/* the component, for messages */
	const char *what;	/* what is allocated: "an extent", "pages", "VRAM" */
	uint64_t bytes;
	int (*try_alloc)(void *arg);
	int64_t (*evict)(void *arg, uint64_t bytes, int err);
	void *arg;
};

/*
 * Runs @ra->try_alloc; when it fails with -ENOSPC or -ENOMEM, runs @ra->evict once and, when
 * that evicted something, @ra->try_alloc once more (counted in RECOVERY_ALLOC_RETRIES).
 * Returns 0, or the final error with @msg (@msg_len bytes, may be NULL) saying which
 * component needed how many bytes of which tier and what eviction achieved:
 *   "component C: cannot allocate N bytes of host cache (an extent): No space left on device,
 *    even after evicting M bytes of unpinned entries" (or "..., and nothing left to evict
 *    (the rest is pinned or in use)")
 * Other errors of @try_alloc, and errors of @evict, are returned as they are.
 */
int recovery_alloc_retry(const struct recovery_alloc *ra, char *msg, size_t msg_len);

/*
 * Whether a fresh extent of @bytes should be faulted in before it is written: when the
 * available memory is less than twice @bytes (MemAvailable, or what the daemon's memory
 * cgroup still allows when that is less: core/base/memlimit.h), or a FAULT_POPULATE fault is
 * armed. Faulting in up front costs time the loader otherwise overlaps with its
 * copies (measured: about 0.4 s per GiB more on the development VM), so it is paid only when
 * memory is tight enough for the difference between a clean -ENOMEM and the OOM killer or
 * SIGBUS to matter.
 */
bool recovery_populate_needed(uint64_t bytes);

/*
 * Faults in [@addr, @addr + @len) for writing (MADV_POPULATE_WRITE), so that running out of
 * memory is an error here rather than SIGBUS later in the loader. Returns 0 (also when the
 * kernel does not know the advice: first touch then allocates, as before), or -ENOMEM when
 * the pages cannot be had (-EFAULT from hugetlb pages is reported as -ENOMEM too). The
 * FAULT_POPULATE injection point is here.
 */
int recovery_populate(void *addr, size_t len);

/*
 * Quarantine of components whose loads keep failing. Keyed by the component's stable key
 * ("model/component"); @fp is a hash of its files' fingerprints (dev, ino, size, mtime) as
 * the catalog has them: a different @fp means the files changed, which clears the record.
 * Thread-safe (an internal lock).
 */
struct quarantine;

/* Creates a table that quarantines after @after failures in a row (0: never). */
int quarantine_create(uint32_t after, struct quarantine **out);
void quarantine_destroy(struct quarantine *q);

/* Changes the threshold (a reload); records already quarantined stay so. */
void quarantine_set_after(struct quarantine *q, uint32_t after);

/*
 * Before a load of @key with files @fp: returns 0 when it may go on (a record with another
 * @fp is cleared and logged), or -ENOTRECOVERABLE with @msg (@msg_len bytes):
 * "quarantined: REASON (N failures; clears when the file changes)".
 */
int quarantine_check(struct quarantine *q, const char *key, uint64_t fp, char *msg,
		     size_t msg_len);

/*
 * A load of @key with files @fp failed with @err and message @why. Returns true when this
 * failure put it in quarantine (counted in RECOVERY_QUARANTINED and logged).
 */
bool quarantine_fail(struct quarantine *q, const char *key, uint64_t fp, int err,
		     const char *why);

/* A load of @key succeeded: its failure count starts again from zero. */
void quarantine_ok(struct quarantine *q, const char *key);

/* Forgets @key (an operator's unload); returns true when it was quarantined. */
bool quarantine_clear(struct quarantine *q, const char *key);

/* Components in quarantine now. */
size_t quarantine_count(struct quarantine *q);

/*
 * Whether a load failure with @err says something about the component (its files), and so
 * counts toward quarantine: not a full cache (-ENOSPC, -EFBIG), a lack of memory, a
 * cancellation or a refusal of the quarantine itself. @requested is false for a load that
 * no client asked for (a co-access prefetch that no request joined): such a failure never
 * counts, because the daemon chose the moment (the files may be mid-rewrite, the operator
 * may have just unloaded them) and a client that asks next must get its own tries.
 */
bool recovery_counts_toward_quarantine(int err, bool requested);

#endif
