/*
 * libweightd: one request's round trip, and the checks every request's arguments go through.
 *
 * One request is in flight per handle at a time: client_submit_wait() holds the handle's
 * mutex from the push to the final completion. That keeps completion matching trivial (the
 * only completions that can arrive carry our user_data; anything else is a stale leftover and
 * is dropped) and makes a handle safe to share between threads.
 *
 * Waiting never trusts the daemon to still exist. The park on the completion ring is bounded
 * (PARK_SLICE_NS); between two parks the ring segment's status word and the attach socket
 * are checked, so a daemon that exits in order (status WD_RING_SHUTDOWN, which also wakes the
 * parked waiter at once) or dies (its end of the socket closes: POLLHUP) is noticed within one
 * slice. The error is sticky: a handle whose daemon is gone stays failed until detached.
 *
 * A daemon that is there but makes no progress (stopped with SIGSTOP, wedged) is noticed by
 * the registry heartbeat (shm/registry.h), which its control thread advances every 250 ms:
 * when neither a completion for the call nor a heartbeat came for the handle's request
 * timeout, the call returns -ETIMEDOUT (not sticky: the daemon may come back). A long load
 * that sends progress, from a live daemon, never times out.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "weightd.h"

#include "shm/abi.h"
#include "shm/client_internal.h"
#include "shm/registry.h"
#include "shm/ring.h"

/*
 * The longest a waiting call sleeps before it looks at the socket again. It bounds how late
 * a kill -9 of the daemon is noticed (the dead daemon cannot ring the doorbell); the cost is
 * one poll(2) per slice while a request takes longer than that.
 */
#define PARK_SLICE_NS (150ull * 1000 * 1000)

/*
 * Is the daemon still serving this ring? Looks at the ring status the daemon writes (an
 * orderly shutdown, or a ring it declared broken) before the socket, so that a daemon that
 * marks the ring and then closes the socket is reported as a shutdown, not a crash.
 * Returns 0, -ESHUTDOWN, -ECONNRESET, or the ring's error (-EPROTO when it has none).
 */
static int daemon_state(struct weightd *w)
{
	struct pollfd p = { .fd = w->sock, .events = POLLIN | POLLRDHUP };
	uint32_t status;
	int err = 0;
	char c;

	status = ring_seg_status(w->ring_seg.base, &err);
	if (status == WD_RING_SHUTDOWN)
		return client_fail(-ESHUTDOWN, "the weightd daemon at %s shut down", w->path);
	if (status != WD_RING_OK) {
		err = err < 0 && err >= -4095 ? err : -EPROTO;
		return client_fail(err, "the weightd daemon at %s stopped serving this client: %s",
				   w->path, strerror(-err));
	}
	if (poll(&p, 1, 0) <= 0)
		return 0;
	if (!(p.revents & (POLLHUP | POLLRDHUP | POLLERR | POLLNVAL))) {
		/* Readable but not hung up: data from the daemon; EOF shows as a 0-byte peek. */
		ssize_t n = recv(w->sock, &c, 1, MSG_PEEK | MSG_DONTWAIT);

		if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EINTR)))
			return 0;
	}
	return client_fail(-ECONNRESET, "the weightd daemon at %s went away (connection closed)",
			   w->path);
}

/*
 * Liveness of the daemon while one call waits: the last time a sign of life came (a
 * completion for the call, or a new heartbeat value in the registry).
 */
struct liveness {
	uint64_t beat;
	uint64_t alive_ns;
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void live_start(const struct weightd *w, struct liveness *l)
{
	l->beat = registry_heartbeat_read(&w->reg);
	l->alive_ns = now_ns();
}

/*
 * Returns 0 while the daemon shows life, or -ETIMEDOUT (with the message) once it showed
 * none for the handle's request timeout.
 */
static int live_check(const struct weightd *w, struct liveness *l, const char *what)
{
	uint64_t beat = registry_heartbeat_read(&w->reg), now = now_ns();

	if (beat != l->beat) {
		l->beat = beat;
		l->alive_ns = now;
		return 0;
	}
	if (!w->timeout_ns || now - l->alive_ns < w->timeout_ns)
		return 0;
	return client_fail(-ETIMEDOUT,
			   "the weightd daemon at %s is not responding: no progress on %s "
			   "for %llu ms (is it stopped? see $%s)",
			   w->path, what, (unsigned long long)(w->timeout_ns / 1000000),
			   WEIGHTD_REQUEST_TIMEOUT_ENV);
}

/* Marks the handle dead with @err (sticky), keeping the message, and returns @err. */
static int set_dead(struct weightd *w, int err)
{
	w->dead = err;
	snprintf(w->dead_msg, sizeof(w->dead_msg), "%s", client_errbuf);
	return err;
}

/* Waits for a free SQ slot; only a stalled or dead daemon leaves the ring full. */
static int wait_sq_space(struct weightd *w)
{
	const struct timespec nap = { .tv_nsec = 200 * 1000 };
	struct liveness live;

	live_start(w, &live);
	for (;;) {
		int ret = ring_prod_space(&w->sq);

		if (ret > 0)
			return 0;
		if (ret < 0)
			return set_dead(w,
					client_fail(ret, "the daemon broke the submission ring"));
		ret = daemon_state(w);
		if (ret)
			return set_dead(w, ret);
		ret = live_check(w, &live, "a free submission slot");
		if (ret)
			return ret;
		nanosleep(&nap, NULL);
	}
}

/*
 * Takes every completion that is ready, up to and including the final one of request @ud.
 * Returns 1 when that final completion was copied into @rp, 0 when it has not arrived yet,
 * or -EPROTO. Completions of other requests can only be leftovers and are dropped.
 */
static int reap(struct weightd *w, uint64_t ud, const struct request *rq, struct reply *rp,
		struct liveness *live)
{
	int n = ring_cons_avail(&w->cq);

	if (n < 0)
		return client_fail(n, "the daemon broke the completion ring");
	if (n > 0 && live)
		live->alive_ns = now_ns();	/* a completion: progress */
	for (; n > 0; n--) {
		struct wd_cqe c;

		/* One copy: everything below looks at @c, never at the shared slot. */
		memcpy(&c, ring_cons_slot(&w->cq, 0), sizeof(c));
		if (c.user_data == ud && (c.flags & WD_CQE_F_PROGRESS)) {
			if (rq->progress)
				rq->progress(c.aux0, c.aux1, rq->arg);
		} else if (c.user_data == ud) {
			if (c.data_len > WD_DATA_SLOT_SIZE) {
				ring_cons_release(&w->cq, 1);
				return client_fail(-EPROTO, "completion with %u payload bytes",
						   c.data_len);
			}
			rp->res = c.res;
			rp->aux0 = c.aux0;
			rp->aux1 = c.aux1;
			rp->data_len = c.data_len;
			/* The payload slot belongs to us until the release below. */
			memcpy(rp->data, ring_cons_data(&w->cq, 0), c.data_len);
			ring_cons_release(&w->cq, 1);
			return 1;
		}
		ring_cons_release(&w->cq, 1);
	}
	return 0;
}

/*
 * Submits @rq and waits for its final completion, passing progress completions to
 * rq->progress. Returns 0 with the daemon's answer in @rp (rp->res may be negative), or a
 * transport error: the handle's sticky error, -EPROTO, -ECONNRESET, -ESHUTDOWN.
 */
int client_submit_wait(struct weightd *w, struct request *rq, struct reply *rp)
{
	struct wd_sqe *slot;
	struct liveness live;
	uint64_t ud;
	bool first = true;
	int ret;

	pthread_mutex_lock(&w->lock);
	if (w->dead) {
		ret = client_fail(w->dead, "%s", w->dead_msg);
		goto out;
	}
	/* An orderly shutdown leaves the status behind; report it before queueing anything. */
	if (ring_seg_status(w->ring_seg.base, NULL) != WD_RING_OK) {
		ret = set_dead(w, daemon_state(w));
		goto out;
	}
	ret = wait_sq_space(w);
	if (ret)
		goto out;
	ud = ++w->seq;
	slot = ring_prod_slot(&w->sq);
	rq->sqe.user_data = ud;
	rq->sqe.arg_len = (uint16_t)rq->payload_len;
	if (rq->payload_len)
		memcpy(ring_prod_data(&w->sq), rq->payload, rq->payload_len);
	memcpy(slot, &rq->sqe, sizeof(*slot));
	ring_prod_advance(&w->sq);
	ring_prod_publish(&w->sq);
	ring_notify(&w->sq);
	live_start(w, &live);
	for (;;) {
		ret = reap(w, ud, rq, rp, &live);
		if (ret > 0) {
			ret = 0;
			break;
		}
		if (ret < 0) {
			set_dead(w, ret);
			break;
		}
		ret = ring_wait(&w->cq, first ? w->spin_ns : 0, PARK_SLICE_NS);
		first = false;
		if (ret > 0)
			continue;
		if (ret == -EPROTO) {
			set_dead(w, client_fail(ret, "the daemon broke the completion ring"));
			break;
		}
		/* -ETIMEDOUT, -EINTR or -EPIPE (status set): is the daemon still there? */
		ret = daemon_state(w);
		if (ret) {
			/* A completion that raced with the shutdown still counts. */
			if (reap(w, ud, rq, rp, NULL) > 0) {
				ret = 0;
				break;
			}
			set_dead(w, ret);
			break;
		}
		/* The request stays queued; its completion, if it ever comes, is dropped. */
		ret = live_check(w, &live, "this request");
		if (ret)
			break;
	}
out:
	pthread_mutex_unlock(&w->lock);
	return ret;
}

/*
 * Turns a final completion into the call's result: res >= 0 passes through; an error records
 * the daemon's message (CQ payload) or strerror as the last error.
 */
int client_result(const struct reply *rp, const char *what, const char *name)
{
	char msg[WD_DATA_SLOT_SIZE + 1];

	if (rp->res >= 0)
		return rp->res;
	if (rp->data_len) {
		/* The daemon's messages name the op and the target themselves. */
		client_copy_text(msg, sizeof(msg), rp->data, rp->data_len);
		return client_fail(rp->res, "%s", msg);
	}
	return client_fail(rp->res, "%s%s%s: %s", what, name ? " " : "", name ? name : "",
			   strerror(-rp->res));
}

int client_check_name(const char *s, const char *what)
{
	if (!s || !*s)
		return client_fail(-EINVAL, "empty %s", what);
	if (strlen(s) >= WD_NAME_MAX)
		return client_fail(-ENAMETOOLONG, "%s longer than %u bytes", what, WD_NAME_MAX - 1);
	return 0;
}

/* Tensor names have no limit in the format; the registry keeps up to 65,535 bytes whole. */
int client_check_tensor_name(const char *s)
{
	if (!s || !*s)
		return client_fail(-EINVAL, "empty tensor name");
	if (strlen(s) >= WD_LONG_NAME_MAX)
		return client_fail(-ENAMETOOLONG, "tensor name longer than %u bytes",
				   WD_LONG_NAME_MAX - 1);
	return 0;
}

int client_check_tier(unsigned int tier)
{
	if (tier >= WD_TIER_MAX)
		return client_fail(-EINVAL, "tier %u out of range (0..%u)", tier, WD_TIER_MAX - 1);
	return 0;
}

/* Runs a request whose answer is just res; returns res or an error. */
int client_simple(struct weightd *w, struct request *rq, const char *what, const char *name)
{
	struct reply rp;
	int ret = client_submit_wait(w, rq, &rp);

	return ret ? ret : client_result(&rp, what, name);
}

int weightd_ping(struct weightd *w)
{
	/* A per-thread cookie the daemon must echo; w->seq belongs to the lock holder. */
	static __thread uint64_t cookie;
	struct request rq = { .sqe = { .opcode = WD_OP_PING } };
	struct reply rp;
	int ret;

	if (!w)
		return client_fail(-EINVAL, "NULL handle");
	rq.sqe.arg[0] = ++cookie;
	ret = client_submit_wait(w, &rq, &rp);
	if (ret)
		return ret;
	if (rp.res < 0)
		return client_result(&rp, "ping", NULL);
	if (rp.aux0 != rq.sqe.arg[0])
		return client_fail(-EPROTO, "ping answered with %llu, sent %llu",
				   (unsigned long long)rp.aux0, (unsigned long long)rq.sqe.arg[0]);
	return 0;
}
