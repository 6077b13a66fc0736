/*
 * The shards: the serving threads. Each serves the rings of up to DAEMON_SHARD_CLIENTS
 * clients (core/daemon/daemon.h says why that many): it delivers the worker's completions,
 * takes requests and answers the inline ops (core/daemon/ops.h), then parks on its clients'
 * SQ tails and on its own wake-up ring, which the control thread and the worker push into
 * when the client set changed or a completion waits (daemon_shard_wake()).
 */
#include <errno.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include "core/base/log.h"
#include "core/daemon/internal.h"
#include "core/daemon/metrics.h"
#include "core/daemon/ops.h"

#define MOD "daemon"
#define WAKE_ENTRIES 2u
#define STALL_POLL_NS (1000 * 1000)		/* a client with a full CQ is polled every 1 ms */
#define IDLE_PARK_NS (500ll * 1000 * 1000)	/* a parked shard re-checks this often */
/*
 * How long a shard keeps polling after a client joined it: a new process's first request
 * (a load, a pin) follows its attach within a fraction of a millisecond, and a parked
 * shard takes a futex wake-up to notice it (50-100 us on a VM whose idle vCPU must be
 * woken). It polls in slices of NEW_CLIENT_SLICE_NS with a sched_yield() between them, so
 * that it never holds a CPU that another thread is waiting for.
 */
#define NEW_CLIENT_SPIN_NS (500ull * 1000)
#define NEW_CLIENT_SLICE_NS (20ull * 1000)

/* Stops serving @c: marks its ring broken and hangs up, so the control thread detaches it. */
static void break_client(struct client *c, int err, const char *what)
{
	log_warn(MOD, "\"broken ring, disconnecting\" client=%u pid=%d name=\"%s\" ring=%s err=%d",
		 c->id, (int)c->pid, c->name, what, err);
	ring_seg_set_status(c->seg.base, &c->cq, WD_RING_BROKEN, err);
	metrics_note_error(-EPROTO);
	atomic_store(&c->broken, true);
	shutdown(c->fd, SHUT_RDWR);
}

/*
 * Serves one client: delivers the worker's completions, then takes as many requests as the
 * CQ has room for (minus the slots reserved for worker requests still running), copying
 * each entry and its payload out of the ring exactly once and validating the copies. One
 * publish and one doorbell per batch. Returns true when the client still has work that
 * this pass could not take (full CQ): the shard then polls it instead of parking on it.
 */
static bool serve_client(struct shard *s, struct client *c)
{
	char arg[WD_DATA_SLOT_SIZE];
	int space, avail, take = 0, produced, answered = 0;
	uint64_t t0 = 0;
	bool more;

	space = ring_prod_space(&c->cq);
	if (space < 0) {
		break_client(c, space, "cq");
		return false;
	}
	produced = atomic_load(&c->npending) ?
		   daemon_deliver_pending(c, &space, &s->flush_errors) : 0;
	avail = ring_cons_avail(&c->sq);
	if (avail < 0) {
		break_client(c, avail, "sq");
		return false;
	}
	/* One clock read per batch, not per request: the round-trip histogram's start. */
	if (avail > 0)
		t0 = wd_now_ns();
	while (take < avail && space - (int)c->inflight > 0) {
		struct wd_cqe cqe;
		struct wd_sqe sqe;
		char *out = ring_prod_data(&c->cq);
		int err;

		/* The single read of the entry: everything below looks at the copy. */
		memcpy(&sqe, ring_cons_slot(&c->sq, (uint32_t)take), sizeof(sqe));
		cqe = (struct wd_cqe){ .user_data = sqe.user_data };
		c->requests++;
		s->flush_requests++;
		err = ring_sqe_check(&sqe);
		if (err) {
			cqe.res = err;
		} else {
			memcpy(arg, ring_cons_data(&c->sq, (uint32_t)take), sqe.arg_len);
			if (ops_dispatch(s->d, c, &sqe, arg, sqe.arg_len, &cqe, out) == OPS_ASYNC) {
				c->inflight++;
				take++;
				continue;
			}
		}
		take++;
		if (cqe.res < 0) {
			c->errors++;
			s->flush_errors++;
			metrics_note_error(cqe.res);
		}
		answered++;
		memcpy(ring_prod_slot(&c->cq), &cqe, sizeof(cqe));
		ring_prod_advance(&c->cq);
		space--;
		produced++;
	}
	if (take)
		ring_cons_release(&c->sq, (uint32_t)take);
	if (produced) {
		ring_prod_publish(&c->cq);
		ring_notify(&c->cq);
	}
	if (answered)
		metrics_note_rtt(wd_now_ns() - t0, (uint32_t)answered);
	more = take < avail || atomic_load(&c->npending);
	return more;
}

static void *shard_main(void *arg)
{
	struct shard *s = arg;
	struct daemon *d = s->d;
	struct client *local[DAEMON_SHARD_CLIENTS];
	struct ring *wait[RING_WAIT_MANY_MAX];
	uint64_t gen = UINT64_MAX, spin_ns = (uint64_t)d->cfg.spin_us * 1000, hot_until = 0;
	unsigned int n = 0;
	bool waitv = true;

	while (!atomic_load(&d->stopping)) {
		unsigned int nw = 0;
		bool stalled = false;
		int ret, k;

		/* A reload may change spin_us (relaxed: any recent value will do). */
		spin_ns = (uint64_t)__atomic_load_n(&d->cfg.spin_us, __ATOMIC_RELAXED) * 1000;

		if (atomic_load(&s->gen) != gen) {
			unsigned int before = n;

			pthread_mutex_lock(&d->clients_lock);
			for (unsigned int i = 0; i < n; i++)
				daemon_client_put(d, local[i]);
			gen = atomic_load(&s->gen);
			n = s->n_members;
			for (unsigned int i = 0; i < n; i++) {
				local[i] = s->members[i];
				daemon_client_get(local[i]);
			}
			pthread_mutex_unlock(&d->clients_lock);
			if (n > before)
				hot_until = wd_now_ns() + NEW_CLIENT_SPIN_NS;
		}
		k = ring_cons_avail(&s->wake_cons);
		if (k > 0)
			ring_cons_release(&s->wake_cons, (uint32_t)k);
		wait[nw++] = &s->wake_cons;
		for (unsigned int i = 0; i < n; i++) {
			if (atomic_load(&local[i]->broken))
				continue;
			if (serve_client(s, local[i]))
				stalled = true;
			else if (!atomic_load(&local[i]->broken))
				wait[nw++] = &local[i]->sq;
		}
		daemon_flush_counters(s);
		if (atomic_load(&d->stopping))
			break;
		if (waitv) {
			uint64_t spin = spin_ns, now = hot_until ? wd_now_ns() : 0;
			int64_t timeout = stalled ? STALL_POLL_NS : IDLE_PARK_NS;
			bool hot = now && now < hot_until;

			/*
			 * A client that just attached: its first request is due, so the thread
			 * polls in slices instead of parking, and yields the CPU between slices
			 * (on a machine with few CPUs the control thread or a client may be
			 * waiting for this one).
			 */
			if (hot) {
				spin = hot_until - now < NEW_CLIENT_SLICE_NS ? hot_until - now
									      : NEW_CLIENT_SLICE_NS;
				timeout = 0;
			} else {
				hot_until = 0;
			}
			ret = ring_wait_many(wait, nw, spin, timeout);
			if (hot && ret == -ETIMEDOUT)
				sched_yield();
			if (ret == -ENOSYS) {
				/*
				 * No futex_waitv (Linux < 5.16): park on the wake ring alone and poll
				 * the clients every millisecond instead.
				 */
				log_warn(MOD, "\"futex_waitv unavailable, polling clients every 1 ms\"");
				waitv = false;
			} else if (ret < 0 && ret != -ETIMEDOUT && ret != -EINTR) {
				log_error(MOD, "\"ring_wait_many failed\" shard=%u err=%d", s->idx, ret);
				waitv = false;
			}
		} else {
			ring_wait(&s->wake_cons, spin_ns, STALL_POLL_NS);
		}
	}
	pthread_mutex_lock(&d->clients_lock);
	for (unsigned int i = 0; i < n; i++)
		daemon_client_put(d, local[i]);
	pthread_mutex_unlock(&d->clients_lock);
	return NULL;
}

int daemon_shard_start(struct daemon *d, struct shard *s, unsigned int idx)
{
	struct ring_seg_params p = { .sq_entries = WAKE_ENTRIES, .cq_entries = WAKE_ENTRIES };
	struct ring unused_sq, unused_cq;
	int64_t size = ring_seg_size(&p, NULL);
	int ret;

	s->d = d;
	s->idx = idx;
	s->wake_mem = mmap(NULL, (size_t)size, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (s->wake_mem == MAP_FAILED) {
		s->wake_mem = NULL;
		return -errno;
	}
	/*
	 * The wake ring reuses the ring segment format in private memory: the shard consumes
	 * its SQ (the view ring_seg_format() gives) and the other threads produce into it
	 * through the view ring_seg_attach() gives, serialized by wake_lock.
	 */
	ret = ring_seg_format(s->wake_mem, (size_t)size, &p, &s->wake_cons, &unused_cq);
	if (!ret)
		ret = ring_seg_attach(s->wake_mem, (size_t)size, &s->wake_prod, &unused_sq, NULL);
	if (ret)
		goto fail;
	/* The shard must not stop on the segment's status word: nothing ever sets it here. */
	s->wake_cons.stop = NULL;
	pthread_mutex_init(&s->wake_lock, NULL);
	atomic_store(&s->gen, 0);
	ret = -pthread_create(&s->thread, NULL, shard_main, s);
	if (ret) {
		pthread_mutex_destroy(&s->wake_lock);
		goto fail;
	}
	s->started = true;
	return 0;
fail:
	munmap(s->wake_mem, (size_t)size);
	s->wake_mem = NULL;
	return ret;
}

struct shard *daemon_shard_pick(struct daemon *d)
{
	struct shard *best = NULL;

	for (unsigned int i = 0; i < d->n_shards; i++)
		if (d->shards[i].n_members < DAEMON_SHARD_CLIENTS &&
		    (!best || d->shards[i].n_members < best->n_members))
			best = &d->shards[i];
	if (best || d->n_shards == DAEMON_MAX_SHARDS)
		return best;
	if (daemon_shard_start(d, &d->shards[d->n_shards], d->n_shards)) {
		log_error(MOD, "\"cannot start a serving thread\" shard=%u", d->n_shards);
		return NULL;
	}
	log_info(MOD, "\"serving thread started\" shard=%u", d->n_shards);
	return &d->shards[d->n_shards++];
}

void daemon_shards_free(struct daemon *d)
{
	for (unsigned int i = 0; i < d->n_shards; i++) {
		struct ring_seg_params p = { .sq_entries = WAKE_ENTRIES,
					     .cq_entries = WAKE_ENTRIES };

		munmap(d->shards[i].wake_mem, (size_t)ring_seg_size(&p, NULL));
		pthread_mutex_destroy(&d->shards[i].wake_lock);
	}
}
