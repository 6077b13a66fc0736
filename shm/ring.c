/*
 * Ring segment setup and validation, and the doorbell's slow paths (park and wake on futexes).
 * The inline fast paths are in shm/ring.h; the protocol is described in docs/protocol.md.
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdbool.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "core/base/common.h"
#include "shm/ring.h"
#include "shm/segment.h"

/* Polling checks the clock once per this many probes of the tail, to keep the loop tight. */
#define SPIN_PROBES 64

/* The segment starts with its header, then the two ring control blocks. */
#define SQ_HDR_OFF ((uint64_t)WD_RING_ALIGN)
#define CQ_HDR_OFF (SQ_HDR_OFF + sizeof(struct wd_ring_hdr))
#define SLOTS_OFF (CQ_HDR_OFF + sizeof(struct wd_ring_hdr))
#define PAGE 4096u

static_assert(sizeof(struct wd_ring_seg_hdr) <= WD_RING_ALIGN, "segment header fits its block");

static bool valid_entries(uint32_t n)
{
	return n >= WD_RING_MIN && n <= WD_RING_MAX && (n & (n - 1)) == 0;
}

static uint64_t align_up(uint64_t v, uint64_t a)
{
	return (v + a - 1) & ~(a - 1);
}

int64_t ring_seg_size(const struct ring_seg_params *p, struct wd_ring_seg_hdr *layout)
{
	struct wd_ring_seg_hdr h;
	uint64_t off;

	if (!p || !valid_entries(p->sq_entries) || !valid_entries(p->cq_entries))
		return -EINVAL;
	memset(&h, 0, sizeof(h));
	h.magic = WD_RING_MAGIC;
	h.version = WD_ABI_VERSION;
	h.hdr_size = sizeof(h);
	h.client_id = p->client_id;
	h.sq_entries = p->sq_entries;
	h.cq_entries = p->cq_entries;
	h.sqe_size = sizeof(struct wd_sqe);
	h.cqe_size = sizeof(struct wd_cqe);
	h.data_slot_size = WD_DATA_SLOT_SIZE;
	h.status = WD_RING_OK;
	h.sq_off = SQ_HDR_OFF;
	h.cq_off = CQ_HDR_OFF;
	/* Sizes are bounded by WD_RING_MAX, so none of these sums can overflow 64 bits. */
	off = SLOTS_OFF;
	h.sq_entries_off = off;
	off = align_up(off + (uint64_t)p->sq_entries * sizeof(struct wd_sqe), WD_CACHELINE);
	h.sq_data_off = off;
	off = align_up(off + (uint64_t)p->sq_entries * WD_DATA_SLOT_SIZE, WD_CACHELINE);
	h.cq_entries_off = off;
	off = align_up(off + (uint64_t)p->cq_entries * sizeof(struct wd_cqe), WD_CACHELINE);
	h.cq_data_off = off;
	off += (uint64_t)p->cq_entries * WD_DATA_SLOT_SIZE;
	h.seg_size = align_up(off, PAGE);
	if (layout)
		*layout = h;
	return (int64_t)h.seg_size;
}

static void view_init(struct ring *r, uint8_t *base, uint64_t hdr_off, uint64_t slots_off,
		      uint64_t data_off, uint32_t entries, uint32_t entry_size, uint32_t pos,
		      uint32_t other)
{
	memset(r, 0, sizeof(*r));
	r->hdr = (struct wd_ring_hdr *)(base + hdr_off);
	r->entries = base + slots_off;
	r->data = base + data_off;
	r->size = entries;
	r->mask = entries - 1;
	r->entry_size = entry_size;
	r->pos = pos;
	r->published = pos;
	r->cached = other;
}

int ring_seg_format(void *base, size_t size, const struct ring_seg_params *p, struct ring *sq,
		    struct ring *cq)
{
	struct wd_ring_seg_hdr h;
	int64_t need = ring_seg_size(p, &h);
	struct wd_ring_hdr *sqh, *cqh;
	uint8_t *b = base;

	if (need < 0)
		return (int)need;
	if (!base || ((uintptr_t)base & (WD_CACHELINE - 1)) || size < (uint64_t)need)
		return -EINVAL;
	/*
	 * The segment is not shared yet, so plain stores are enough here; the descriptor's
	 * transfer over the socket (a syscall on each side) orders them before the client's reads.
	 */
	memset(b, 0, (size_t)need);
	memcpy(b, &h, sizeof(h));
	sqh = (struct wd_ring_hdr *)(b + h.sq_off);
	cqh = (struct wd_ring_hdr *)(b + h.cq_off);
	sqh->tail = sqh->head = p->start_index;
	cqh->tail = cqh->head = p->start_index;
	if (sq)
		view_init(sq, b, h.sq_off, h.sq_entries_off, h.sq_data_off, h.sq_entries,
			  sizeof(struct wd_sqe), p->start_index, p->start_index);
	if (cq)
		view_init(cq, b, h.cq_off, h.cq_entries_off, h.cq_data_off, h.cq_entries,
			  sizeof(struct wd_cqe), p->start_index, p->start_index);
	return 0;
}

int ring_seg_attach(void *base, size_t size, struct ring *sq, struct ring *cq,
		    uint32_t *client_id)
{
	struct wd_ring_seg_hdr h;
	uint8_t *b = base;
	uint32_t sq_tail, sq_head, cq_tail, cq_head;
	int ret;

	if (!base || ((uintptr_t)base & (WD_CACHELINE - 1)) || !sq || !cq)
		return -EINVAL;
	if (size < sizeof(h))
		return -EBADMSG;
	/* One copy of the header: every check below and every use after it sees the same bytes. */
	memcpy(&h, b, sizeof(h));
	if (h.magic != WD_RING_MAGIC)
		return -EBADMSG;
	if (h.version != WD_ABI_VERSION)
		return -EPROTONOSUPPORT;
	if (h.hdr_size != sizeof(h) || h.sqe_size != sizeof(struct wd_sqe) ||
	    h.cqe_size != sizeof(struct wd_cqe) || h.data_slot_size != WD_DATA_SLOT_SIZE ||
	    !valid_entries(h.sq_entries) || !valid_entries(h.cq_entries))
		return -EBADMSG;
	if (h.seg_size > size)
		return -EOVERFLOW;

	const struct shm_region rg[] = {
		{ 0, sizeof(h), WD_CACHELINE },
		{ h.sq_off, sizeof(struct wd_ring_hdr), WD_RING_ALIGN },
		{ h.cq_off, sizeof(struct wd_ring_hdr), WD_RING_ALIGN },
		{ h.sq_entries_off, (uint64_t)h.sq_entries * sizeof(struct wd_sqe), WD_CACHELINE },
		{ h.sq_data_off, (uint64_t)h.sq_entries * WD_DATA_SLOT_SIZE, WD_CACHELINE },
		{ h.cq_entries_off, (uint64_t)h.cq_entries * sizeof(struct wd_cqe), WD_CACHELINE },
		{ h.cq_data_off, (uint64_t)h.cq_entries * WD_DATA_SLOT_SIZE, WD_CACHELINE },
	};
	ret = shm_check_regions(rg, ARRAY_SIZE(rg), h.seg_size);
	if (ret)
		return ret;

	/*
	 * The client owns the SQ tail and the CQ head, so it adopts their current values. The
	 * acquire loads pair with the daemon's release stores of head (SQ) and tail (CQ), in case
	 * this is a re-attach to a ring that has been in use.
	 */
	sq_tail = READ_ONCE(((struct wd_ring_hdr *)(b + h.sq_off))->tail);
	sq_head = load_acquire(&((struct wd_ring_hdr *)(b + h.sq_off))->head);
	cq_head = READ_ONCE(((struct wd_ring_hdr *)(b + h.cq_off))->head);
	cq_tail = load_acquire(&((struct wd_ring_hdr *)(b + h.cq_off))->tail);
	if ((uint32_t)(sq_tail - sq_head) > h.sq_entries ||
	    (uint32_t)(cq_tail - cq_head) > h.cq_entries)
		return -EPROTO;

	view_init(sq, b, h.sq_off, h.sq_entries_off, h.sq_data_off, h.sq_entries,
		  sizeof(struct wd_sqe), sq_tail, sq_head);
	view_init(cq, b, h.cq_off, h.cq_entries_off, h.cq_data_off, h.cq_entries,
		  sizeof(struct wd_cqe), cq_head, cq_head);
	cq->stop = &((struct wd_ring_seg_hdr *)b)->status;
	if (client_id)
		*client_id = h.client_id;
	return 0;
}

void ring_seg_set_status(void *base, struct ring *cq, uint32_t status, int error)
{
	struct wd_ring_seg_hdr *h = base;

	WRITE_ONCE(h->error, error);
	/* Pairs with load_acquire(status) in ring_seg_status(): error is visible first. */
	store_release(&h->status, status);
	/*
	 * A client parked on the completion ring sleeps on its tail; wake it so its ring_wait()
	 * sees the stop word. smp_mb() orders the status store before the wake's check of the
	 * futex word, like ring_notify().
	 */
	smp_mb();
	if (cq)
		ring_wake(cq);
}

uint32_t ring_seg_status(const void *base, int *error)
{
	const struct wd_ring_seg_hdr *h = base;
	uint32_t status = load_acquire(&h->status);

	if (error)
		*error = READ_ONCE(h->error);
	return status;
}

int ring_sqe_check(const struct wd_sqe *sqe)
{
	if (sqe->opcode == 0 || sqe->opcode >= WD_OP_COUNT)
		return -EOPNOTSUPP;
	if ((sqe->flags & ~WD_SQE_F_ALL) || sqe->reserved || sqe->arg_len > WD_DATA_SLOT_SIZE ||
	    sqe->tier >= WD_TIER_MAX)
		return -EINVAL;
	return 0;
}

/* ---- doorbell ---------------------------------------------------------------------------- */

/*
 * The futex word is the tail, which lives in a MAP_SHARED mapping of a memfd: the futex
 * calls must be the shared (non-PRIVATE) variants so the kernel keys them on the page, not on
 * this process's address space.
 */
static int futex_wait(uint32_t *word, uint32_t expected, const struct timespec *rel)
{
	if (syscall(SYS_futex, word, FUTEX_WAIT, expected, rel, NULL, 0) < 0)
		return -errno;
	return 0;
}

int ring_wake(struct ring *r)
{
	/*
	 * Wake every waiter, not one: only the consumer should sleep here, but a hostile client
	 * could park its own thread on the daemon's word to swallow a single wake-up.
	 */
	long n = syscall(SYS_futex, &r->hdr->tail, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);

	return n < 0 ? -errno : (int)n;
}

static bool stopped(const struct ring *r)
{
	/* Pairs with store_release(status) in ring_seg_set_status(). */
	return r->stop && load_acquire(r->stop) != 0;
}

static uint64_t deadline_of(uint64_t now, int64_t timeout_ns)
{
	if (timeout_ns < 0 || (uint64_t)timeout_ns > UINT64_MAX - now)
		return UINT64_MAX;
	return now + (uint64_t)timeout_ns;
}

static struct timespec ns_to_ts(uint64_t ns)
{
	struct timespec ts = { .tv_sec = (time_t)(ns / 1000000000u),
			       .tv_nsec = (long)(ns % 1000000000u) };
	return ts;
}

/* Counts the rings that have entries or are broken; either needs the caller's attention. */
static unsigned int ready_count(struct ring *const *rings, unsigned int n)
{
	unsigned int ready = 0;

	for (unsigned int i = 0; i < n; i++)
		ready += ring_cons_avail(rings[i]) != 0;
	return ready;
}

static void set_waiting(struct ring *const *rings, unsigned int n, uint32_t v)
{
	for (unsigned int i = 0; i < n; i++)
		WRITE_ONCE(rings[i]->hdr->waiting, v);
}

/* Polls until a ring is ready, @spin_ns have passed, or @deadline; returns the ready count. */
static unsigned int spin(struct ring *const *rings, unsigned int n, uint64_t spin_ns,
			 uint64_t now, uint64_t deadline)
{
	uint64_t end = deadline_of(now, (int64_t)(spin_ns > INT64_MAX ? INT64_MAX : spin_ns));
	unsigned int ready;

	if (!spin_ns)
		return 0;
	if (end > deadline)
		end = deadline;
	for (;;) {
		for (int i = 0; i < SPIN_PROBES; i++) {
			ready = ready_count(rings, n);
			if (ready)
				return ready;
			cpu_relax();
		}
		if (wd_now_ns() >= end)
			return 0;
	}
}

/* One park: FUTEX_WAIT for a single ring, futex_waitv(2) for several. */
static int park(struct ring *const *rings, unsigned int n, uint64_t deadline)
{
	struct timespec ts, *tsp = NULL;

	if (n == 1) {
		if (deadline != UINT64_MAX) {
			uint64_t now = wd_now_ns();

			ts = ns_to_ts(deadline > now ? deadline - now : 0);
			tsp = &ts;
		}
		/* The ring is empty, so the tail we last saw equals our private cursor. */
		return futex_wait(&rings[0]->hdr->tail, rings[0]->pos, tsp);
	}

	struct futex_waitv w[RING_WAIT_MANY_MAX];

	memset(w, 0, sizeof(w[0]) * n);
	for (unsigned int i = 0; i < n; i++) {
		w[i].val = rings[i]->pos;
		w[i].uaddr = (uintptr_t)&rings[i]->hdr->tail;
		w[i].flags = FUTEX_32;
	}
	if (deadline != UINT64_MAX) {
		ts = ns_to_ts(deadline);	/* futex_waitv takes an absolute CLOCK_MONOTONIC time */
		tsp = &ts;
	}
	if (syscall(SYS_futex_waitv, w, n, 0, tsp, CLOCK_MONOTONIC) < 0)
		return -errno;
	return 0;
}

static int wait_rings(struct ring *const *rings, unsigned int n, uint64_t spin_ns,
		      int64_t timeout_ns)
{
	uint64_t now = wd_now_ns();
	uint64_t deadline = deadline_of(now, timeout_ns);
	unsigned int ready;
	int ret;

	ready = ready_count(rings, n);
	if (ready)
		return (int)ready;
	ready = spin(rings, n, spin_ns, now, deadline);
	if (ready)
		return (int)ready;
	for (;;) {
		/*
		 * Announce the sleep, then re-check. smp_mb() orders the store of waiting before the
		 * load of tail; it pairs with the smp_mb() in ring_notify(), which orders the
		 * producer's tail store before its load of waiting. So either we see the new tail
		 * here, or the producer sees waiting == 1 and wakes us; and if its wake-up comes
		 * before we sleep, the tail no longer equals the value FUTEX_WAIT expects and the
		 * kernel returns EAGAIN instead of sleeping.
		 */
		set_waiting(rings, n, 1);
		smp_mb();
		ready = ready_count(rings, n);
		if (ready) {
			ret = (int)ready;
			break;
		}
		if (n == 1 && stopped(rings[0])) {
			ret = -EPIPE;
			break;
		}
		if (wd_now_ns() >= deadline) {
			ret = -ETIMEDOUT;
			break;
		}
		ret = park(rings, n, deadline);
		/* EAGAIN: a tail moved before we slept; ETIMEDOUT: the loop re-checks first. */
		if (ret == -EINTR || (ret < 0 && ret != -EAGAIN && ret != -ETIMEDOUT))
			break;
	}
	set_waiting(rings, n, 0);
	return ret;
}

int ring_wait(struct ring *r, uint64_t spin_ns, int64_t timeout_ns)
{
	struct ring *const rings[1] = { r };
	int n = ring_cons_avail(r);

	if (n)
		return n;
	n = wait_rings(rings, 1, spin_ns, timeout_ns);
	/* A positive count means "ready": entries to take, or a broken ring to report. */
	return n > 0 ? ring_cons_avail(r) : n;
}

int ring_wait_many(struct ring *const *rings, unsigned int n, uint64_t spin_ns,
		   int64_t timeout_ns)
{
	if (n == 0)
		return -EINVAL;
	if (n > RING_WAIT_MANY_MAX)
		return -E2BIG;
	return wait_rings(rings, n, spin_ns, timeout_ns);
}
