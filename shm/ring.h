/*
 * Single-producer single-consumer rings in a shared segment, and their doorbells.
 *
 * A client's ring segment (layout in shm/abi.h and docs/protocol.md) holds two rings: the
 * submission ring (client produces struct wd_sqe, daemon consumes) and the completion ring
 * (daemon produces struct wd_cqe, client consumes). Each side drives a ring through a
 * struct ring: a process-private view that holds the geometry and this side's own cursor.
 * Nothing in a struct ring is ever read back from shared memory except the other side's
 * cursor, which is read once per refill and validated; that is what makes the daemon immune
 * to a client that writes garbage into its own segment (the damage stays in that ring, and
 * the daemon sees -EPROTO and drops the client).
 *
 * Fast paths (push, pop, notify) are inline here and make no syscall; the doorbell's park and
 * wake paths and the segment setup live in shm/ring.c.
 */
#ifndef WD_SHM_RING_H
#define WD_SHM_RING_H

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "core/base/common.h"
#include "shm/abi.h"
#include "shm/barrier.h"

/*
 * One side's view of one ring. Lives in private memory of the process that uses it.
 * For a producer, pos is the next slot to fill (it may run ahead of the published tail while
 * a batch is being written) and cached is the last head it read. For a consumer, pos is the
 * next slot to consume and cached is the last tail it read.
 */
struct ring {
	struct wd_ring_hdr *hdr;	/* shared control block */
	uint8_t *entries;		/* shared slot array, size * entry_size bytes */
	uint8_t *data;			/* shared payload slots, WD_DATA_SLOT_SIZE each */
	uint32_t size;			/* slots, a power of two */
	uint32_t mask;			/* size - 1 */
	uint32_t entry_size;		/* bytes per slot */
	uint32_t pos;			/* this side's private cursor */
	uint32_t published;		/* producer: tail as last stored */
	uint32_t cached;		/* the other side's cursor as last read and validated */
	int error;			/* 0, or -EPROTO once the peer broke the invariants */
	const uint32_t *stop;		/* consumer: non-zero here ends ring_wait(), or NULL */
};

/* Parameters of a ring segment, chosen by the daemon (from the client's hello). */
struct ring_seg_params {
	uint32_t sq_entries;	/* power of two in [WD_RING_MIN, WD_RING_MAX] */
	uint32_t cq_entries;	/* power of two in [WD_RING_MIN, WD_RING_MAX] */
	uint32_t client_id;
	uint32_t start_index;	/* initial value of all cursors (tests start near 2^32) */
};

/* ---- segment setup (shm/ring.c) ---------------------------------------------------------- */

/*
 * Computes the size of a ring segment for @p and, when @layout is not NULL, the header the
 * daemon will write (every offset filled in). Returns the size in bytes, or -EINVAL when an
 * entry count is not a power of two in [WD_RING_MIN, WD_RING_MAX].
 */
int64_t ring_seg_size(const struct ring_seg_params *p, struct wd_ring_seg_hdr *layout);

/*
 * Daemon side: writes the segment header and both ring headers into @base (@size bytes, at
 * least ring_seg_size(@p)), zeroes the slots, and fills @sq (consumer view of the submission
 * ring) and @cq (producer view of the completion ring). The views are computed from @p alone,
 * never from the segment, so they stay valid whatever the client writes later. Call it before
 * the segment's descriptor leaves the daemon.
 * Returns 0, or -EINVAL (bad @p, @size too small, @base not 64-byte aligned).
 */
int ring_seg_format(void *base, size_t size, const struct ring_seg_params *p, struct ring *sq,
		    struct ring *cq);

/*
 * Client side: validates the header of a ring segment mapped at @base (@size bytes as the
 * mapping reports) and fills @sq (producer view of the submission ring) and @cq (consumer view
 * of the completion ring), taking the current cursors as the starting positions.
 * @client_id, when not NULL, receives the id the daemon assigned.
 * Returns 0; -EBADMSG when the magic or a size field is wrong; -EPROTONOSUPPORT when the
 * version differs from WD_ABI_VERSION; -EOVERFLOW when a region lies outside @size;
 * -EPROTO when the cursors violate the ring invariants; -EINVAL for a NULL or misaligned base.
 */
int ring_seg_attach(void *base, size_t size, struct ring *sq, struct ring *cq,
		    uint32_t *client_id);

/*
 * Daemon side: records in the segment header that the daemon stopped serving this ring
 * (@status, a WD_RING_* value) and why (@error, a negative errno), then wakes a client parked
 * on the completion ring @cq so it notices. The client reads it with ring_seg_status().
 */
void ring_seg_set_status(void *base, struct ring *cq, uint32_t status, int error);

/*
 * Client side: returns the segment's status (WD_RING_*) and stores its error in @error when
 * not NULL.
 */
uint32_t ring_seg_status(const void *base, int *error);

/*
 * Daemon side: checks one request copied out of a submission ring. Every field is checked
 * against the ABI: a known opcode, known flags, zero reserved field, arg_len within a payload
 * slot, a tier below WD_TIER_MAX. Returns 0, -EOPNOTSUPP for an unknown opcode, or -EINVAL.
 */
int ring_sqe_check(const struct wd_sqe *sqe);

/* ---- doorbell (shm/ring.c) --------------------------------------------------------------- */

/*
 * Consumer side: waits until @r holds at least one entry. It first polls for up to @spin_ns
 * nanoseconds (0: no polling), then parks on a futex: it sets hdr->waiting, issues smp_mb(),
 * re-checks the tail, and sleeps in FUTEX_WAIT on the tail word with the value it last saw,
 * so a push that lands between the check and the sleep makes FUTEX_WAIT return at once.
 * @timeout_ns < 0 waits forever; 0 only polls once.
 * Returns the number of entries available (> 0); -ETIMEDOUT; -EINTR when a signal arrived;
 * -EPROTO when the producer broke the ring invariants; -EPIPE when the ring is empty and
 * r->stop points to a non-zero word (a client's completion ring whose segment the daemon
 * marked broken or shut down: ring_seg_attach() points stop at the header's status).
 */
int ring_wait(struct ring *r, uint64_t spin_ns, int64_t timeout_ns);

/* The most rings ring_wait_many() can park on (the kernel's FUTEX_WAITV_MAX). */
#define RING_WAIT_MANY_MAX 128u

/*
 * Consumer side, for a server with many rings (the daemon's submission rings): waits until at
 * least one of @rings[0..@n) has an entry or is broken. Polls all of them for @spin_ns, then
 * sets every ring's waiting flag, issues smp_mb(), re-checks, and parks on all the tail words
 * at once with futex_waitv(2). Flags are cleared again before it returns.
 * Returns the number of rings that are non-empty or broken (> 0); -ETIMEDOUT; -EINTR;
 * -E2BIG when @n exceeds RING_WAIT_MANY_MAX; -ENOSYS when the kernel lacks futex_waitv
 * (Linux < 5.16) and @n > 1; -EINVAL when @n is 0.
 */
int ring_wait_many(struct ring *const *rings, unsigned int n, uint64_t spin_ns,
		   int64_t timeout_ns);

/*
 * Producer side, slow path of ring_notify(): wakes the consumer parked on @r's tail.
 * Returns the number of waiters woken (0 or 1), or a negative errno from FUTEX_WAKE.
 */
int ring_wake(struct ring *r);

/* ---- fast paths ------------------------------------------------------------------------- */

static inline int ring_fail(struct ring *r)
{
	r->error = -EPROTO;
	return -EPROTO;
}

/* Returns 0 while the ring is usable, -EPROTO once the peer broke its invariants. */
static inline int ring_error(const struct ring *r)
{
	return r->error;
}

/* Address of the slot for free-running index @idx (masked here, never when stored). */
static inline void *ring_slot(const struct ring *r, uint32_t idx)
{
	return r->entries + (size_t)(idx & r->mask) * r->entry_size;
}

/* Address of the payload slot that belongs to index @idx. */
static inline void *ring_slot_data(const struct ring *r, uint32_t idx)
{
	return r->data + (size_t)(idx & r->mask) * WD_DATA_SLOT_SIZE;
}

/*
 * Producer: number of free slots, reading the consumer's head only when the cached value says
 * the ring is full. Returns >= 0, or -EPROTO when the head read is outside
 * [last head seen, last tail published], which no honest consumer can produce.
 */
static inline int ring_prod_space(struct ring *r)
{
	uint32_t used = r->pos - r->cached;
	uint32_t head;

	if (unlikely(r->error))
		return r->error;
	if (used < r->size)
		return (int)(r->size - used);
	/* Pairs with the consumer's store_release(head) in ring_cons_release(). */
	head = load_acquire(&r->hdr->head);
	if (unlikely((uint32_t)(head - r->cached) > (uint32_t)(r->published - r->cached)))
		return ring_fail(r);
	r->cached = head;
	return (int)(r->size - (r->pos - head));
}

/*
 * Producer: the slot at the private cursor, to be filled and then ring_prod_advance()d, or
 * NULL when the ring is full or broken (ring_error() tells which).
 */
static inline void *ring_prod_slot(struct ring *r)
{
	if (ring_prod_space(r) <= 0)
		return NULL;
	return ring_slot(r, r->pos);
}

/* Producer: the payload slot that belongs to the slot ring_prod_slot() returned. */
static inline void *ring_prod_data(struct ring *r)
{
	return ring_slot_data(r, r->pos);
}

/* Producer: moves the private cursor past the slot just filled; nothing is published yet. */
static inline void ring_prod_advance(struct ring *r)
{
	r->pos++;
}

/*
 * Producer: makes every advanced slot visible to the consumer. The release store orders the
 * slot writes before the new tail; it pairs with load_acquire(tail) in ring_cons_avail().
 */
static inline void ring_prod_publish(struct ring *r)
{
	store_release(&r->hdr->tail, r->pos);
	r->published = r->pos;
}

/*
 * Producer: after a publish, wakes the consumer if it announced that it parks. smp_mb() orders
 * the tail store before the load of waiting; it pairs with the smp_mb() between the store of
 * waiting and the re-check of the tail in ring_wait(). READ_ONCE() because the flag carries no
 * data: any non-zero value, even garbage from a hostile peer, costs one harmless FUTEX_WAKE.
 */
static inline void ring_notify(struct ring *r)
{
	smp_mb();
	if (READ_ONCE(r->hdr->waiting))
		ring_wake(r);
}

/*
 * Producer: copies @entry (entry_size bytes) into the next slot and publishes it.
 * Returns 0, -EAGAIN when the ring is full, or -EPROTO when it is broken. Does not notify.
 */
static inline int ring_push(struct ring *r, const void *entry)
{
	void *slot = ring_prod_slot(r);

	if (!slot)
		return r->error ? r->error : -EAGAIN;
	memcpy(slot, entry, r->entry_size);
	ring_prod_advance(r);
	ring_prod_publish(r);
	return 0;
}

/*
 * Consumer: number of entries ready, reading the producer's tail only when the cached value
 * is used up. Returns >= 0, or -EPROTO when the tail read is behind the last one seen or more
 * than size ahead of the head, which no honest producer can produce.
 */
static inline int ring_cons_avail(struct ring *r)
{
	uint32_t tail, n;

	if (unlikely(r->error))
		return r->error;
	n = r->cached - r->pos;
	if (n)
		return (int)n;
	/* Pairs with the producer's store_release(tail) in ring_prod_publish(). */
	tail = load_acquire(&r->hdr->tail);
	n = tail - r->pos;
	if (unlikely(n > r->size))
		return ring_fail(r);
	r->cached = tail;
	return (int)n;
}

/* Consumer: the @i-th ready slot (@i < ring_cons_avail()), still owned by the consumer. */
static inline const void *ring_cons_slot(const struct ring *r, uint32_t i)
{
	return ring_slot(r, r->pos + i);
}

/* Consumer: the payload slot of the @i-th ready slot. */
static inline const void *ring_cons_data(const struct ring *r, uint32_t i)
{
	return ring_slot_data(r, r->pos + i);
}

/*
 * Consumer: hands @n consumed slots back to the producer. The release store orders this
 * side's reads of those slots before the new head; it pairs with load_acquire(head) in
 * ring_prod_space(). @n must not exceed what ring_cons_avail() returned.
 */
static inline void ring_cons_release(struct ring *r, uint32_t n)
{
	r->pos += n;
	store_release(&r->hdr->head, r->pos);
}

/*
 * Consumer: copies the oldest entry into @out (entry_size bytes) and releases its slot.
 * Returns 1 when an entry was copied, 0 when the ring is empty, -EPROTO when it is broken.
 * The copy is the single read of the entry: callers validate @out, never the slot.
 */
static inline int ring_pop(struct ring *r, void *out)
{
	int n = ring_cons_avail(r);

	if (n <= 0)
		return n;
	memcpy(out, ring_cons_slot(r, 0), r->entry_size);
	ring_cons_release(r, 1);
	return 1;
}

/* Typed wrappers: the client pushes requests and pops completions; the daemon the reverse. */
static inline int ring_sq_push(struct ring *sq, const struct wd_sqe *sqe)
{
	return ring_push(sq, sqe);
}

static inline int ring_sq_pop(struct ring *sq, struct wd_sqe *sqe)
{
	return ring_pop(sq, sqe);
}

static inline int ring_cq_push(struct ring *cq, const struct wd_cqe *cqe)
{
	return ring_push(cq, cqe);
}

static inline int ring_cq_pop(struct ring *cq, struct wd_cqe *cqe)
{
	return ring_pop(cq, cqe);
}

#endif
