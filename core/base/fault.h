/*
 * Fault injection for tests: makes the next N events of one kind fail, so that the recovery
 * paths (core/policy/recovery.h) run on real files and real syscalls.
 *
 * It is compiled into every build and inert unless armed. Arming:
 *
 *   $WEIGHTD_FAULT="POINT:ERR:N[@K][,...]"   read once, at the first fault_take()
 *   fault_arm(point, err, n), fault_arm_after()  from a test program
 *
 * "@K" lets the first K events at that point pass before the N faults (so that a test can
 * fail the second allocation, once something is resident to evict).
 *
 * Points (enum fault_point) and what an injected fault does there:
 *
 *   read      a read completion of the io_uring loader (uring/loader_read.c). ERR is EINTR,
 *             EAGAIN or EIO (the completion is reported as -ERR, whatever the kernel read),
 *             or SHORT: the completion reports only the first byte it read (the first 4096
 *             for an O_DIRECT file), so the loader must resubmit the rest.
 *   alloc     a host cache extent allocation (core/tier/host_admit.c): arena_alloc() is reported
 *             as failed with -ERR (ENOSPC or ENOMEM) without being called.
 *   populate  faulting in a fresh extent (recovery_populate()): reported as -ERR (ENOMEM).
 *   vram      a VRAM allocation of the device tier (core/tier/dev_evict.c, right before
 *             gpu_ops.vram_alloc): reported as failed with -ERR (ENOMEM or ENOSPC) without
 *             allocating, as a GPU that is out of memory would; the tier then evicts and
 *             retries once (recovery_alloc_retry()).
 *
 * Each armed point has a count: every event at that point takes one fault until the count
 * reaches zero, after which the point is inert again. Counts are atomics, so arming and
 * taking are safe from any thread; the environment is parsed under a once-flag.
 *
 * Example: WEIGHTD_FAULT=read:EAGAIN:3 weightd ...  fails the next three reads with EAGAIN,
 * which the loader retries (core/policy/recovery.h says how often and how long it waits).
 */
#ifndef WD_CORE_FAULT_H
#define WD_CORE_FAULT_H

#include <stdint.h>

#define FAULT_ENV "WEIGHTD_FAULT"
#define FAULT_SHORT 100000	/* ERR value of a short read (no errno has this value) */

enum fault_point {
	FAULT_READ = 0,
	FAULT_ALLOC,
	FAULT_POPULATE,
	FAULT_VRAM,
	FAULT_POINT_COUNT
};

/*
 * Arms @point: the next @n events there fail with -@err (a positive errno, or FAULT_SHORT for
 * FAULT_READ). @n == 0 disarms it. Replaces what was armed at @point.
 */
void fault_arm(enum fault_point point, int err, uint32_t n);

/* fault_arm(), after letting @skip events at @point pass. */
void fault_arm_after(enum fault_point point, int err, uint32_t n, uint32_t skip);

/*
 * Parses a $WEIGHTD_FAULT-style @spec and arms what it names. Returns 0, or -EINVAL for an
 * unknown point or error name, a missing or zero count, or trailing junk (nothing is armed
 * then).
 */
int fault_arm_spec(const char *spec);

/*
 * Called at an injection point: returns 0 when no fault is armed there (the normal case, one
 * relaxed atomic load), else consumes one and returns the armed error as a positive value
 * (an errno, or FAULT_SHORT).
 */
int fault_take(enum fault_point point);

/* How many faults are still armed at @point. */
uint32_t fault_left(enum fault_point point);

#endif
