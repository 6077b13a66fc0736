/*
 * The pinned staging ring: how bytes get from files, or from the host cache, into VRAM.
 *
 * One ring per GPU, created once: n_slots buffers of slot_bytes, anonymous memory (mmap)
 * bound to the GPU's local NUMA node (gpu/topo.h says which), page-locked with the device's
 * host_register (PORTABLE, so copies run at PCIe speed), and registered with an io_uring as
 * fixed buffers so that reads land in them with no page pinning per I/O. Fixed files are used
 * as well. Each of those steps may fail (a node the kernel refuses, RLIMIT_MEMLOCK, a kernel
 * that refuses the buffers): the ring still works, slower, and staging_stats says which
 * step failed with its errno (the daemon reports it in DEVICES, bench-gpu prints it).
 *
 * staging_load() pipelines reads and copies:
 *
 *   slot k:   [ read(s) ]->[ H2D copy on stream k % n_streams ]->[ event ]-> free
 *   slot k+1:      [ read(s) ]->[ H2D copy ... ]
 *
 * A slot is filled with as many consecutive pieces of the transfer list as fit (adjacent
 * ranges of one file are merged into one read; a range larger than a slot is split across
 * slots), read with io_uring, then copied with one copy_h2d per piece, and an event is
 * recorded after its copies. The slot is reused only once that event has completed, so
 * reads into the other slots overlap the copy of this one (double/triple buffering). Pieces
 * contiguous both in the slot and in VRAM are copied with one copy_h2d.
 *
 * O_DIRECT: when a transfer's fd was opened with O_DIRECT, or can be reopened with it
 * (through /proc/self/fd; refused by tmpfs and some overlays), reads are aligned to 4 KiB
 * around the requested range and the copy takes the requested bytes out of the slot; the
 * aligned read may run past the end of the file, which is fine as long as the requested
 * bytes are there. Otherwise reads are buffered, of exactly the requested bytes.
 *
 * staging_copy_host() copies host memory to VRAM in chunks of slot_bytes over the streams:
 * a range marked locked (page-locked by the caller) straight, any other range through the
 * slots (a memcpy into a page-locked slot, then the copy from there), so that no copy runs
 * from pageable memory, which the driver would copy synchronously at a fraction of the speed.
 * The memcpy of one chunk overlaps the device copies of the chunks before it.
 *
 * Thread-safety: a ring is used by one thread at a time (one load after another; a second
 * GPU has its own ring). Both calls return only after every copy they queued has completed
 * (or, on failure, has drained), so buffers and VRAM can be reused or freed at once. The one
 * exception is a failed event_record (the driver out of host memory): nothing then tells when
 * the copies queued before it finish, and the call fails without waiting for them.
 */
#ifndef WD_GPU_STAGING_H
#define WD_GPU_STAGING_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gpu/device.h"

#define STAGING_DEFAULT_SLOTS 4u
#define STAGING_DEFAULT_SLOT_BYTES (16u << 20)
#define STAGING_DEFAULT_STREAMS 2u
#define STAGING_MSG_MAX 512

struct staging_options {
	uint32_t n_slots;	/* 2..64; 0: STAGING_DEFAULT_SLOTS */
	uint32_t slot_bytes;	/* multiple of 4096, 64 KiB..1 GiB; 0: the default */
	uint32_t n_streams;	/* 1..16; 0: STAGING_DEFAULT_STREAMS */
	int node;		/* NUMA node for the slots (OS index); -1: no preference */
	bool no_direct;		/* buffered reads even where O_DIRECT works */
};

/* One file range to put at a device address. */
struct staging_transfer {
	int fd;			/* readable; the ring reopens it with O_DIRECT when it can */
	const char *name;	/* the file, for messages; NULL: /proc/self/fd's link is used */
	uint64_t off;		/* byte offset in the file (any alignment) */
	uint64_t len;		/* bytes (0 is allowed and does nothing) */
	uint64_t dst;		/* device address (inside one VRAM allocation) */
};

/* One host range to put at a device address. */
struct staging_host_copy {
	const void *src;
	uint64_t len;
	uint64_t dst;
	bool locked;		/* @src is page-locked (host_register): copied straight, not
				 * staged through the slots */
};

/* Called on the caller's thread as copies complete: bytes in VRAM so far, and in all. */
typedef void (*staging_progress_fn)(void *arg, uint64_t done, uint64_t total);

struct staging_call {
	staging_progress_fn progress;	/* may be NULL */
	void *arg;
	const atomic_bool *cancel;	/* may be NULL; when it turns true the call stops
					 * submitting, drains and returns -ECANCELED */
};

/* Counters since staging_create() (for tests, benchmarks and STATUS). */
struct staging_stats {
	uint64_t reads;			/* io_uring reads completed (including resubmissions) */
	uint64_t read_bytes;		/* bytes read (aligned O_DIRECT reads count in full) */
	uint64_t copies;		/* copy_h2d calls */
	uint64_t copy_bytes;		/* bytes copied to VRAM */
	uint64_t slot_fills;		/* times a slot was filled */
	uint64_t slot_reuse_early;	/* a slot refilled before its event completed: always 0
					 * unless the ring is broken (counted, never acted on) */
	uint64_t overlapped_reads;	/* reads submitted while another slot's copy was running */
	uint32_t max_busy_slots;	/* most slots reading or copying at once */
	uint32_t direct_files;		/* files read with O_DIRECT (summed over calls) */
	uint64_t staged_bytes;		/* host copies' bytes staged through the slots */
	bool fixed_buffers;		/* the slots are io_uring registered buffers */
	int fixed_buffers_err;		/* else why: io_uring_register_buffers' -errno */
	bool slots_locked;		/* the slots are page-locked (host_register) */
	int slots_err;			/* else why: host_register's -errno */
	int node_err;			/* mbind of the slots to @node: 0 or -errno */
	bool fixed_files;		/* a registered file table is used */
	int node;			/* the node the slots were placed on (-1: none asked) */
};

struct staging;

/*
 * Allocates the ring for @dev (opened with @ops): slots, streams and an io_uring. @opt may
 * be NULL. When opt->node >= 0 the slots are allocated and first touched under a preferred
 * NUMA policy for that node (the calling thread's policy is restored afterwards). Returns 0
 * and sets *@out; -EINVAL for a bad option; -ENOMEM; or the error of host_alloc,
 * stream_create or io_uring_queue_init, with @why saying which.
 */
int staging_create(const struct gpu_ops *ops, struct gpu_dev *dev,
		   const struct staging_options *opt, struct staging **out, char *why,
		   size_t why_size);

/* Frees the slots, destroys the streams and the ring. NULL is ignored. */
void staging_destroy(struct staging *st);

/*
 * Streams @n transfers from files into VRAM (see above). @call may be NULL. Returns 0 when
 * every byte is in VRAM; -ECANCELED; -EIO for a file that ends before a transfer does
 * ("<file>: short read at byte <off>: the file ends at <size>"); the read's negative errno
 * for a failed read (message naming the file and offset); a copy or event error of the
 * device; -EINVAL for a transfer that overflows (off + len) or has an invalid fd. On any
 * failure nothing is left queued, but VRAM holds a partial result.
 */
int staging_load(struct staging *st, const struct staging_transfer *t, size_t n,
		 const struct staging_call *call, char *why, size_t why_size);

/*
 * Copies @n host ranges to VRAM, chunked by slot_bytes over the ring's streams. Returns 0,
 * -ECANCELED, or the device's copy/event error (with @why).
 */
int staging_copy_host(struct staging *st, const struct staging_host_copy *c, size_t n,
		      const struct staging_call *call, char *why, size_t why_size);

void staging_get_stats(const struct staging *st, struct staging_stats *out);

#endif
