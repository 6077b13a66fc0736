/*
 * libweightd: attach to the daemon, submit requests on the client's ring and wait for their
 * completions, and read the registry. The public contract is include/weightd.h; the wire
 * protocol is docs/protocol.md.
 *
 * One request is in flight per handle at a time: submit_wait() holds the handle's mutex from
 * the push to the final completion. That keeps completion matching trivial (the only
 * completions that can arrive carry our user_data; anything else is a stale leftover and is
 * dropped) and makes a handle safe to share between threads.
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
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "weightd.h"

#include "core/base/common.h"
#include "core/format/st.h"
#include "shm/abi.h"
#include "shm/attach.h"
#include "shm/barrier.h"
#include "shm/registry.h"
#include "shm/ring.h"
#include "shm/segment.h"
#include "shm/stats.h"
#include "gpu/device.h"

/*
 * The longest a waiting call sleeps before it looks at the socket again. It bounds how late
 * a kill -9 of the daemon is noticed (the dead daemon cannot ring the doorbell); the cost is
 * one poll(2) per slice while a request takes longer than that.
 */
#define PARK_SLICE_NS (150ull * 1000 * 1000)
#define DEFAULT_SPIN_US 20u
#define DEFAULT_ATTACH_TIMEOUT_MS 5000u
#define DEFAULT_REQUEST_TIMEOUT_MS 30000u
#define MIN_REQUEST_TIMEOUT_MS 1000u	/* four heartbeats: never less */

/* The public header repeats a few ABI constants so that it needs no internal header. */
static_assert(WEIGHTD_TIER_MAX == WD_TIER_MAX, "tier count");
static_assert(WEIGHTD_TIER_CUDA(0) == WD_TIER_CUDA(0), "cuda tier numbering");
static_assert((int)WEIGHTD_ABSENT == (int)WD_STATE_ABSENT &&
		      (int)WEIGHTD_LOADING == (int)WD_STATE_LOADING &&
		      (int)WEIGHTD_RESIDENT == (int)WD_STATE_RESIDENT &&
		      (int)WEIGHTD_EVICTING == (int)WD_STATE_EVICTING &&
		      (int)WEIGHTD_FAILED == (int)WD_STATE_FAILED,
	      "state numbering");
static_assert(WEIGHTD_PAGES_SMALL == WD_PAGES_SMALL && WEIGHTD_PAGES_THP == WD_PAGES_THP &&
		      WEIGHTD_PAGES_HUGETLB == WD_PAGES_HUGETLB, "page kind numbering");
static_assert(WEIGHTD_MODEL_STALE == WD_REG_MODEL_F_STALE, "model flags");
static_assert(WEIGHTD_DTYPE_F16 == ST_F16 && WEIGHTD_DTYPE_BF16 == ST_BF16, "dtype numbering");
static_assert(WEIGHTD_CACHE_LOADING == WD_CACHE_F_LOADING &&
		      WEIGHTD_CACHE_SUBSET == WD_CACHE_F_SUBSET &&
		      WEIGHTD_CACHE_PREFETCHED == WD_CACHE_F_PREFETCHED &&
		      WEIGHTD_CACHE_SHARED == WD_CACHE_F_SHARED &&
		      WEIGHTD_CACHE_STALE == WD_CACHE_F_STALE, "cache entry flags");
static_assert(sizeof(((struct weightd_tensor_info *)0)->shape) ==
		      WD_SHAPE_MAX * sizeof(uint64_t), "tensor rank");

struct weightd {
	pthread_mutex_t lock;	/* held from submission to final completion */
	int sock;		/* the attach socket: the lease */
	uint32_t client_id;
	uint64_t spin_ns;
	uint64_t timeout_ns;	/* no sign of life for this long: -ETIMEDOUT; 0: never */
	int dead;		/* 0, or the sticky error once the daemon is gone */
	char dead_msg[256];	/* and the message that came with it */
	uint64_t seq;		/* user_data of the last request */
	struct shm_segment ring_seg;
	struct shm_segment host_seg;	/* the host cache arena, mapped read-only */
	struct registry_view reg;
	struct ring sq;		/* producer view of the submission ring */
	struct ring cq;		/* consumer view of the completion ring */
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

/* ---- errors ------------------------------------------------------------------------------ */

static __thread char last_error[256];

const char *weightd_last_error(void)
{
	return last_error;
}

/* Records why the current call fails and returns @err, so callers write `return fail(...)`. */
static int WD_PRINTF(2, 3) fail(int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(last_error, sizeof(last_error), fmt, ap);
	va_end(ap);
	return err;
}

/* ---- attach ------------------------------------------------------------------------------ */

static int connect_to(const char *path, int *out)
{
	int fd = attach_connect(path);

	if (fd == -ENOENT || fd == -ECONNREFUSED)
		return fail(fd, "no weightd daemon at %s (%s)", path, strerror(-fd));
	if (fd < 0)
		return fail(fd, "cannot connect to %s: %s", path, strerror(-fd));
	*out = fd;
	return 0;
}

static void fill_hello(struct wd_hello *h, const struct weightd_attach_opts *o)
{
	const char *name = o->client_name ? o->client_name : program_invocation_short_name;

	*h = (struct wd_hello){
		.magic = WD_HELLO_MAGIC,
		.version = WD_ABI_VERSION,
		.hello_size = sizeof(*h),
		.sqe_size = sizeof(struct wd_sqe),
		.cqe_size = sizeof(struct wd_cqe),
		.sq_entries = o->sq_entries,
		.cq_entries = o->cq_entries,
	};
	if (name)
		strncpy(h->client_name, name, sizeof(h->client_name) - 1);
}

static bool ring_size_ok(uint32_t n)
{
	return n == 0 || (n >= WD_RING_MIN && n <= WD_RING_MAX && !(n & (n - 1)));
}

/* Copies a message field from the peer: bounded, NUL-terminated, non-printables replaced. */
static void copy_text(char *dst, size_t size, const void *src, size_t len)
{
	const unsigned char *s = src;
	size_t n = 0;

	for (size_t i = 0; i < len && s[i] && n + 1 < size; i++)
		dst[n++] = (char)(s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?');
	dst[n] = '\0';
}

/*
 * Receives the hello reply and its descriptors, waiting at most @timeout_ms. On success
 * fds[0], fds[1] and fds[2] are the ring, registry and host cache descriptors, owned by the
 * caller.
 */
static int recv_reply(int sock, const char *path, uint32_t timeout_ms,
		      struct wd_hello_reply *rep, int fds[3])
{
	struct pollfd p = { .fd = sock, .events = POLLIN };
	int got[4], nfds = ARRAY_SIZE(got), ret;
	char msg[sizeof(rep->message) + 1];
	ssize_t n;

	memset(rep, 0, sizeof(*rep));
	ret = poll(&p, 1, (int)timeout_ms);
	if (ret < 0)
		return fail(-errno, "poll on %s: %s", path, strerror(errno));
	if (ret == 0)
		return fail(-ETIMEDOUT, "the weightd daemon at %s is not responding: it did not "
			    "answer the hello within %u ms", path, timeout_ms);
	n = attach_recv(sock, rep, sizeof(*rep), got, &nfds);
	/*
	 * A daemon that refuses a connection at accept (a per-uid limit) writes its reply and
	 * closes before reading the hello: the kernel reports that as a reset first, and the
	 * reply is still queued behind it.
	 */
	if (n == -ECONNRESET) {
		nfds = ARRAY_SIZE(got);
		n = attach_recv(sock, rep, sizeof(*rep), got, &nfds);
		if (n <= 0)
			n = -ECONNRESET;
	}
	if (n < 0)
		return fail((int)n, "receiving the hello reply from %s: %s", path,
			    strerror((int)-n));
	if (nfds < 0 || nfds > (int)ARRAY_SIZE(got))
		nfds = 0;
	ret = 0;
	if (n == 0)
		ret = fail(-ECONNRESET, "the daemon at %s closed the connection during attach",
			   path);
	else if ((size_t)n < offsetof(struct wd_hello_reply, status) + sizeof(rep->status) ||
		 rep->magic != WD_REPLY_MAGIC)
		ret = fail(-EBADMSG, "malformed hello reply from %s (%zd bytes, magic %#x)", path,
			   n, rep->magic);
	else if (rep->version != WD_ABI_VERSION)
		ret = fail(-EPROTONOSUPPORT, "client ABI %u, daemon ABI %u", WD_ABI_VERSION,
			   rep->version);
	else if ((size_t)n != sizeof(*rep) || rep->reply_size != sizeof(*rep))
		ret = fail(-EBADMSG, "hello reply of %zd bytes (reply_size %u), expected %zu", n,
			   rep->reply_size, sizeof(*rep));
	else if (rep->status < 0) {
		copy_text(msg, sizeof(msg), rep->message, sizeof(rep->message));
		ret = fail(rep->status >= -4095 ? rep->status : -EBADMSG, "%s: %s", path,
			   msg[0] ? msg : strerror(-rep->status));
	} else if (rep->status > 0 || rep->n_fds != 3 || nfds != 3) {
		ret = fail(-EBADMSG, "hello reply with status %d carried %d descriptors (n_fds %u)",
			   rep->status, nfds, rep->n_fds);
	}
	if (ret) {
		for (int i = 0; i < nfds; i++)
			close(got[i]);
		return ret;
	}
	fds[0] = got[0];
	fds[1] = got[1];
	fds[2] = got[2];
	return 0;
}

static int map_segments(struct weightd *w, const struct wd_hello_reply *rep, int fds[3])
{
	int ret;

	ret = shm_segment_map(fds[0], true, sizeof(struct wd_ring_seg_hdr), &w->ring_seg);
	if (ret) {
		close(fds[0]);
		close(fds[1]);
		close(fds[2]);
		return fail(ret, "cannot map the ring segment: %s", strerror(-ret));
	}
	ret = registry_attach(fds[1], &w->reg);
	if (ret) {
		memset(&w->reg, 0, sizeof(w->reg));
		close(fds[1]);
		close(fds[2]);
		return fail(ret, "cannot map the registry segment: %s", strerror(-ret));
	}
	/*
	 * The host cache is mapped read-only (the descriptor is O_RDONLY as well): tensors are
	 * shared with every other client, and a stray write must fault here, not corrupt them.
	 */
	ret = shm_segment_map(fds[2], false, rep->host_seg_size, &w->host_seg);
	if (ret) {
		close(fds[2]);
		return fail(ret, "cannot map the host cache (%llu bytes): %s",
			    (unsigned long long)rep->host_seg_size, strerror(-ret));
	}
	if (w->ring_seg.size < rep->ring_seg_size)
		return fail(-EBADMSG, "ring segment of %zu bytes, the reply announced %llu",
			    w->ring_seg.size, (unsigned long long)rep->ring_seg_size);
	ret = ring_seg_attach(w->ring_seg.base, w->ring_seg.size, &w->sq, &w->cq, &w->client_id);
	if (ret)
		return fail(ret, "invalid ring segment header: %s", strerror(-ret));
	if (w->client_id != rep->client_id)
		return fail(-EBADMSG, "ring segment of client %u, the reply says client %u",
			    w->client_id, rep->client_id);
	return 0;
}

/*
 * The request timeout in milliseconds (0: never) from the attach option @opt, else
 * $WEIGHTD_REQUEST_TIMEOUT_MS, else the default. Returns 0 or -EINVAL for a bad value.
 */
static int request_timeout(uint32_t opt, uint32_t *out)
{
	const char *env = getenv(WEIGHTD_REQUEST_TIMEOUT_ENV);
	unsigned long long v = opt;
	char *end;

	if (!opt && env && *env) {
		errno = 0;
		v = strtoull(env, &end, 10);
		if (errno || *end || v > UINT32_MAX)
			return fail(-EINVAL, "$%s=\"%s\": expected milliseconds (0: never)",
				    WEIGHTD_REQUEST_TIMEOUT_ENV, env);
		if (!v) {
			*out = 0;
			return 0;
		}
	}
	if (!v)
		v = DEFAULT_REQUEST_TIMEOUT_MS;
	if (v == UINT32_MAX) {
		*out = 0;
		return 0;
	}
	*out = v < MIN_REQUEST_TIMEOUT_MS ? MIN_REQUEST_TIMEOUT_MS : (uint32_t)v;
	return 0;
}

int weightd_attach(const char *socket_path, const struct weightd_attach_opts *opts,
		   struct weightd **out)
{
	struct weightd_attach_opts o = { .spin_us = DEFAULT_SPIN_US };
	struct wd_hello_reply rep;
	struct wd_hello hello;
	struct weightd *w;
	uint32_t timeout_ms = 0;
	int fds[3] = { -1, -1, -1 }, ret;

	last_error[0] = '\0';
	if (!out)
		return fail(-EINVAL, "weightd_attach: NULL handle pointer");
	*out = NULL;
	if (opts)
		o = *opts;
	if (!ring_size_ok(o.sq_entries) || !ring_size_ok(o.cq_entries))
		return fail(-EINVAL, "ring sizes must be powers of two in [%u, %u] (got %u, %u)",
			    WD_RING_MIN, WD_RING_MAX, o.sq_entries, o.cq_entries);
	ret = request_timeout(o.request_timeout_ms, &timeout_ms);
	if (ret)
		return ret;
	if (!o.attach_timeout_ms)
		o.attach_timeout_ms = DEFAULT_ATTACH_TIMEOUT_MS;
	/* The hello is a request too: a stopped daemon must not hold it longer. */
	if (timeout_ms && o.attach_timeout_ms > timeout_ms)
		o.attach_timeout_ms = timeout_ms;
	w = calloc(1, sizeof(*w));
	if (!w)
		return fail(-ENOMEM, "out of memory");
	w->sock = -1;
	w->ring_seg.fd = -1;
	w->host_seg.fd = -1;
	w->spin_ns = (uint64_t)o.spin_us * 1000;
	w->timeout_ns = (uint64_t)timeout_ms * 1000000;
	pthread_mutex_init(&w->lock, NULL);
	ret = attach_resolve_path(socket_path, w->path, sizeof(w->path));
	if (ret < 0) {
		fail(ret, "cannot determine the daemon's socket path: %s", strerror(-ret));
		goto err;
	}
	{
		char why[512];

		/*
		 * Whose socket is it? Refuse a directory another user owns (one could have
		 * made /tmp/weightd-UID first) and a daemon of an unexpected uid behind it.
		 */
		ret = attach_check_dir(w->path, geteuid(), o.daemon_uid ? o.daemon_uid : (uid_t)-1,
				       false, why, sizeof(why));
		if (ret == -EPERM) {
			fail(ret, "%s", why);
			goto err;
		}
		ret = connect_to(w->path, &w->sock);
		if (ret)
			goto err;
		ret = attach_check_peer(w->sock, geteuid(), o.daemon_uid ? o.daemon_uid : (uid_t)-1,
					why, sizeof(why));
		if (ret) {
			fail(ret, "%s: %s", w->path, ret == -EPERM ? why : strerror(-ret));
			goto err;
		}
	}
	fill_hello(&hello, &o);
	ret = attach_send(w->sock, &hello, sizeof(hello), NULL, 0);
	if ((ret == -EPIPE || ret == -ECONNRESET) &&
	    recv_reply(w->sock, w->path, 0, &rep, fds) < 0 && rep.status < 0)
		goto err;	/* refused at accept (a per-uid limit): its reply says why */
	if (ret < 0) {
		fail(ret, "sending the hello to %s: %s", w->path, strerror(-ret));
		goto err;
	}
	ret = recv_reply(w->sock, w->path, o.attach_timeout_ms, &rep, fds);
	if (ret)
		goto err;
	ret = map_segments(w, &rep, fds);
	if (ret)
		goto err;
	*out = w;
	return 0;
err:
	weightd_detach(w);
	return ret;
}

void weightd_detach(struct weightd *w)
{
	if (!w)
		return;
	if (w->sock >= 0)
		close(w->sock);
	if (w->reg.base)
		registry_detach(&w->reg);
	shm_segment_close(&w->ring_seg);
	shm_segment_close(&w->host_seg);
	pthread_mutex_destroy(&w->lock);
	free(w);
}

const char *weightd_socket_path(const struct weightd *w)
{
	return w ? w->path : "";
}

uint32_t weightd_client_id(const struct weightd *w)
{
	return w ? w->client_id : WD_ID_NONE;
}

int weightd_daemon_pid(const struct weightd *w)
{
	struct ucred cr;
	socklen_t len = sizeof(cr);

	if (!w)
		return fail(-EINVAL, "NULL handle");
	if (getsockopt(w->sock, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0)
		return fail(-errno, "SO_PEERCRED: %s", strerror(errno));
	return (int)cr.pid;
}

int weightd_fd(const struct weightd *w)
{
	return w ? w->sock : -EINVAL;
}

/* ---- requests ---------------------------------------------------------------------------- */

struct request {
	struct wd_sqe sqe;		/* opcode, flags, tier, model, component, arg */
	const void *payload;
	size_t payload_len;
	weightd_progress_fn progress;
	void *arg;
};

struct reply {
	int32_t res;
	uint64_t aux0, aux1;
	uint16_t data_len;
	uint8_t data[WD_DATA_SLOT_SIZE];
};

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
		return fail(-ESHUTDOWN, "the weightd daemon at %s shut down", w->path);
	if (status != WD_RING_OK) {
		err = err < 0 && err >= -4095 ? err : -EPROTO;
		return fail(err, "the weightd daemon at %s stopped serving this client: %s",
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
	return fail(-ECONNRESET, "the weightd daemon at %s went away (connection closed)",
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
	return fail(-ETIMEDOUT, "the weightd daemon at %s is not responding: no progress on %s "
		    "for %llu ms (is it stopped? see $%s)", w->path, what,
		    (unsigned long long)(w->timeout_ns / 1000000), WEIGHTD_REQUEST_TIMEOUT_ENV);
}

/* Marks the handle dead with @err (sticky), keeping the message, and returns @err. */
static int set_dead(struct weightd *w, int err)
{
	w->dead = err;
	snprintf(w->dead_msg, sizeof(w->dead_msg), "%s", last_error);
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
			return set_dead(w, fail(ret, "the daemon broke the submission ring"));
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
		return fail(n, "the daemon broke the completion ring");
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
				return fail(-EPROTO, "completion with %u payload bytes",
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
static int submit_wait(struct weightd *w, struct request *rq, struct reply *rp)
{
	struct wd_sqe *slot;
	struct liveness live;
	uint64_t ud;
	bool first = true;
	int ret;

	pthread_mutex_lock(&w->lock);
	if (w->dead) {
		ret = fail(w->dead, "%s", w->dead_msg);
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
			set_dead(w, fail(ret, "the daemon broke the completion ring"));
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
static int result(const struct reply *rp, const char *what, const char *name)
{
	char msg[WD_DATA_SLOT_SIZE + 1];

	if (rp->res >= 0)
		return rp->res;
	if (rp->data_len) {
		/* The daemon's messages name the op and the target themselves. */
		copy_text(msg, sizeof(msg), rp->data, rp->data_len);
		return fail(rp->res, "%s", msg);
	}
	return fail(rp->res, "%s%s%s: %s", what, name ? " " : "", name ? name : "",
		    strerror(-rp->res));
}

static int check_name(const char *s, const char *what)
{
	if (!s || !*s)
		return fail(-EINVAL, "empty %s", what);
	if (strlen(s) >= WD_NAME_MAX)
		return fail(-ENAMETOOLONG, "%s longer than %u bytes", what, WD_NAME_MAX - 1);
	return 0;
}

/* Tensor names have no limit in the format; the registry keeps up to 65,535 bytes whole. */
static int check_tensor_name(const char *s)
{
	if (!s || !*s)
		return fail(-EINVAL, "empty tensor name");
	if (strlen(s) >= WD_LONG_NAME_MAX)
		return fail(-ENAMETOOLONG, "tensor name longer than %u bytes", WD_LONG_NAME_MAX - 1);
	return 0;
}

static int check_tier(unsigned int tier)
{
	if (tier >= WD_TIER_MAX)
		return fail(-EINVAL, "tier %u out of range (0..%u)", tier, WD_TIER_MAX - 1);
	return 0;
}

static int lookup_id(struct weightd *w, const char *model, uint32_t *id);

/*
 * Fills the target of a model/component request with registry ids: the model is resolved in
 * the registry (or with a LOOKUP round trip when it is not published there yet), the
 * component in the registry only. Requests always carry ids, never names, because the
 * daemon's worker ops (VALIDATE, META_*) accept only ids.
 */
static int set_target(struct weightd *w, struct request *rq, const char *model,
		      const char *component)
{
	uint32_t id;
	int ret;

	rq->sqe.model = WD_ID_NONE;
	rq->sqe.component = WD_ID_NONE;
	ret = lookup_id(w, model, &id);
	if (ret)
		return ret;
	rq->sqe.model = id;
	if (!component)
		return 0;
	ret = check_name(component, "component name");
	if (ret)
		return ret;
	ret = registry_find_component(&w->reg, id, component, &rq->sqe.component, NULL);
	if (ret)
		return fail(ret, "model %s, component %s: %s", model, component,
			    ret == -ENOENT ? "no such component" : strerror(-ret));
	return 0;
}

/* Runs a request whose answer is just res; returns res or an error. */
static int simple(struct weightd *w, struct request *rq, const char *what, const char *name)
{
	struct reply rp;
	int ret = submit_wait(w, rq, &rp);

	return ret ? ret : result(&rp, what, name);
}

static int target_op(struct weightd *w, uint8_t op, const char *model, const char *component,
		     unsigned int tier, uint8_t flags, struct reply *rp)
{
	struct request rq = { .sqe = { .opcode = op, .tier = (uint16_t)tier, .flags = flags } };
	int ret;

	if (!w)
		return fail(-EINVAL, "NULL handle");
	ret = check_tier(tier);
	if (ret)
		return ret;
	ret = set_target(w, &rq, model, component);
	if (ret)
		return ret;
	return submit_wait(w, &rq, rp);
}

int weightd_ping(struct weightd *w)
{
	/* A per-thread cookie the daemon must echo; w->seq belongs to the lock holder. */
	static __thread uint64_t cookie;
	struct request rq = { .sqe = { .opcode = WD_OP_PING } };
	struct reply rp;
	int ret;

	if (!w)
		return fail(-EINVAL, "NULL handle");
	rq.sqe.arg[0] = ++cookie;
	ret = submit_wait(w, &rq, &rp);
	if (ret)
		return ret;
	if (rp.res < 0)
		return result(&rp, "ping", NULL);
	if (rp.aux0 != rq.sqe.arg[0])
		return fail(-EPROTO, "ping answered with %llu, sent %llu",
			    (unsigned long long)rp.aux0, (unsigned long long)rq.sqe.arg[0]);
	return 0;
}

/* One LOOKUP round trip for @model (a name or an absolute path). */
static int lookup_daemon(struct weightd *w, const char *model, uint32_t *id)
{
	struct request rq = { .sqe = { .opcode = WD_OP_LOOKUP, .model = WD_ID_NONE,
				       .component = WD_ID_NONE } };
	int ret;

	rq.payload = model;
	rq.payload_len = strlen(model);
	ret = simple(w, &rq, "lookup", model);
	if (ret < 0)
		return ret;
	*id = (uint32_t)ret;
	return 0;
}

/*
 * Where a MODEL argument of the API becomes a registry id; every call that names a model
 * comes here. A name published in the registry is read there, with no round trip. Anything
 * else goes to the daemon (LOOKUP), which knows names published since this client last
 * looked and resolves a path -- of a model it scanned or of one of its files -- through its
 * catalog (catalog_resolve(), the one rule for paths). The daemon's working directory is not
 * the caller's: a path with a slash that does not start with one is made absolute here first.
 * With @paths_only (the registry reads, which promise no round trip for a name) a name with
 * no slash that the registry lacks is -ENOENT at once.
 */
static int lookup_id_ex(struct weightd *w, const char *model, uint32_t *id, bool paths_only)
{
	char cwd[PATH_MAX], abs[PATH_MAX + WD_NAME_MAX + 1];
	const char *ask = model;
	int ret;

	ret = check_name(model, "model name");
	if (ret)
		return ret;
	ret = registry_find_model(&w->reg, model, id, NULL);
	if (ret != -ENOENT) {
		if (ret)
			return fail(ret, "registry lookup of model %s: %s", model, strerror(-ret));
		return 0;
	}
	if (model[0] != '/' && strchr(model, '/')) {
		if (!realpath(model, abs)) {
			if (!getcwd(cwd, sizeof(cwd)))
				return fail(-errno, "model path %s: the working directory: %s", model,
					    strerror(errno));
			snprintf(abs, sizeof(abs), "%s/%s", cwd, model);
		}
		if (strlen(abs) >= WD_NAME_MAX)
			return fail(-ENAMETOOLONG, "model path %s (%s) longer than %u bytes", model,
				    abs, WD_NAME_MAX - 1);
		ask = abs;
	} else if (paths_only && model[0] != '/') {
		return fail(-ENOENT, "model %s: not in the registry", model);
	}
	ret = lookup_daemon(w, ask, id);
	if (ret == -ENOENT)
		return fail(ret, "model %s: not in the registry, and not the path of a model the "
			    "daemon scanned", model);
	return ret;
}

static int lookup_id(struct weightd *w, const char *model, uint32_t *id)
{
	return lookup_id_ex(w, model, id, false);
}

/* For the registry reads: a name is looked up in the registry only, a path by the daemon. */
static int find_model(struct weightd *w, const char *model, uint32_t *id,
		      struct wd_reg_model *rec)
{
	int ret = lookup_id_ex(w, model, id, true);

	if (ret || !rec)
		return ret;
	ret = registry_read_model(&w->reg, *id, rec);
	if (ret)
		return fail(ret, "model %s (id %u): %s", model, *id,
			    ret == -ENOENT ? "not in the registry" : strerror(-ret));
	return 0;
}

int weightd_lookup(struct weightd *w, const char *model, uint32_t *model_id)
{
	uint32_t id;
	int ret;

	if (!w)
		return fail(-EINVAL, "NULL handle");
	ret = lookup_id(w, model, &id);
	if (ret)
		return ret;
	if (model_id)
		*model_id = id;
	return 0;
}

/* ---- registry reads ---------------------------------------------------------------------- */

static void copy_name(char *dst, size_t size, const char *src, size_t src_size)
{
	size_t n = strnlen(src, src_size);

	if (n >= size)
		n = size - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

static int registry_error(int ret, const char *what, uint32_t id)
{
	if (ret == -ENOENT)
		return fail(ret, "no %s %u in the registry", what, id);
	return fail(ret, "reading %s %u from the registry: %s", what, id, strerror(-ret));
}

int weightd_model(struct weightd *w, uint32_t id, struct weightd_model_info *out)
{
	struct wd_reg_model m;
	int ret;

	if (!w || !out)
		return fail(-EINVAL, "NULL argument");
	ret = registry_read_model(&w->reg, id, &m);
	if (ret)
		return registry_error(ret, "model", id);
	*out = (struct weightd_model_info){
		.id = id,
		.n_components = m.n_components,
		.n_tensors = m.n_tensors,
		.flags = m.flags,
		.pins = m.pins,
		.nbytes = m.nbytes,
		.fingerprint = m.fingerprint,
	};
	copy_name(out->name, sizeof(out->name), m.name, sizeof(m.name));
	copy_name(out->arch, sizeof(out->arch), m.arch, sizeof(m.arch));
	return 0;
}

int weightd_component(struct weightd *w, uint32_t id, struct weightd_component_info *out)
{
	struct wd_reg_component c;
	int ret;

	if (!w || !out)
		return fail(-EINVAL, "NULL argument");
	ret = registry_read_component(&w->reg, id, &c);
	if (ret)
		return registry_error(ret, "component", id);
	*out = (struct weightd_component_info){
		.id = id,
		.model = c.model,
		.n_tensors = c.n_tensors,
		.nbytes = c.nbytes,
		.fingerprint = c.fingerprint,
	};
	copy_name(out->name, sizeof(out->name), c.name, sizeof(c.name));
	for (unsigned int t = 0; t < WD_TIER_MAX; t++) {
		out->tiers[t].state = c.tiers[t].state;
		out->tiers[t].error = c.tiers[t].error;
		out->tiers[t].done = c.tiers[t].done;
		out->tiers[t].total = c.tiers[t].total;
	}
	return 0;
}

/* Copies registry record @t (index @id) into @out, host_state aside. -EBADMSG if corrupt. */
static int fill_tensor_info(uint32_t id, const struct wd_reg_tensor *t,
			    struct weightd_tensor_info *out)
{
	const struct st_dtype_info *dt;

	if (t->rank > WD_SHAPE_MAX || t->dtype >= ST_DTYPE_COUNT)
		return fail(-EBADMSG, "registry tensor %u has rank %u, dtype %u", id, t->rank,
			    t->dtype);
	*out = (struct weightd_tensor_info){
		.id = id,
		.model = t->model,
		.component = t->component,
		.dtype = t->dtype,
		.rank = t->rank,
		.nbytes = t->nbytes,
		.resident = t->resident,
		.host_offset = t->host_offset,
	};
	memcpy(out->shape, t->shape, sizeof(uint64_t) * t->rank);
	dt = st_dtype_info((enum st_dtype)t->dtype);
	copy_name(out->dtype_name, sizeof(out->dtype_name), dt ? dt->name : "?", 16);
	return 0;
}

int weightd_tensor(struct weightd *w, const char *model, const char *component,
		   const char *name, struct weightd_tensor_info *out)
{
	struct wd_reg_component c;
	struct wd_reg_tensor t;
	uint32_t mid, cid = WD_ID_NONE, tid;
	int ret;

	if (!w || !out)
		return fail(-EINVAL, "NULL argument");
	if ((ret = check_tensor_name(name)) || (ret = find_model(w, model, &mid, NULL)))
		return ret;
	if (component) {
		if ((ret = check_name(component, "component name")))
			return ret;
		ret = registry_find_component(&w->reg, mid, component, &cid, NULL);
		if (ret)
			return fail(ret, "model %s, component %s: %s", model, component,
				    ret == -ENOENT ? "no such component" : strerror(-ret));
	}
	ret = registry_find_tensor(&w->reg, mid, cid, name, &tid, &t);
	if (ret == -ENOTUNIQ)
		return fail(ret, "model %s: tensor %s exists in several components; name one",
			    model, name);
	if (ret)
		return fail(ret, "model %s: tensor %s: %s", model, name,
			    ret == -ENOENT ? "no such tensor" : strerror(-ret));
	if ((ret = fill_tensor_info(tid, &t, out)))
		return ret;
	ret = registry_read_component(&w->reg, t.component, &c);
	out->host_state = ret ? WEIGHTD_ABSENT : c.tiers[WD_TIER_HOST].state;
	return 0;
}

int weightd_registry_usage(struct weightd *w, struct weightd_registry_usage *out)
{
	struct registry_usage u;

	if (!w || !out)
		return fail(-EINVAL, "NULL argument");
	registry_usage(&w->reg, &u);
	*out = (struct weightd_registry_usage){
		.models = u.models, .model_cap = u.model_cap,
		.components = u.comps, .component_cap = u.comp_cap,
		.tensors = u.tensors, .tensor_cap = u.tensor_cap,
		.names_used = u.names_used, .names_size = u.names_size,
	};
	return 0;
}

int weightd_tensor_name(struct weightd *w, uint32_t id, char *buf, size_t size)
{
	struct wd_reg_tensor t;
	const char *name;
	size_t len;
	int ret;

	if (!w || (!buf && size))
		return fail(-EINVAL, "NULL argument");
	ret = registry_read_tensor(&w->reg, id, &t);
	if (ret)
		return registry_error(ret, "tensor", id);
	name = registry_tensor_name(&w->reg, &t, &len);
	if (!name)
		return fail(-EBADMSG, "tensor %u: its name lies outside the registry's names area",
			    id);
	if (len + 1 > size)
		return fail(-ERANGE, "tensor %u: its name takes %zu bytes and a NUL, room for %zu",
			    id, len, size);
	memcpy(buf, name, len + 1);
	return (int)len;
}

int weightd_tensor_list(struct weightd *w, const char *model, const char *component,
			struct weightd_tensor_info *out, char *names, uint32_t max)
{
	struct wd_reg_component c;
	struct wd_reg_tensor t;
	uint32_t mid, cid = WD_ID_NONE, state_cid = WD_ID_NONE, state = WEIGHTD_ABSENT;
	uint32_t n = 0;
	int ret;

	if (!w || (!out && max))
		return fail(-EINVAL, "NULL argument");
	if ((ret = find_model(w, model, &mid, NULL)))
		return ret;
	if (component) {
		if ((ret = check_name(component, "component name")))
			return ret;
		ret = registry_find_component(&w->reg, mid, component, &cid, NULL);
		if (ret)
			return fail(ret, "model %s, component %s: %s", model, component,
				    ret == -ENOENT ? "no such component" : strerror(-ret));
	}
	/*
	 * The registry has no per-component list: one pass over the published tensor records
	 * (each a consistent seqlock copy) finds the target's, where a name lookup per tensor
	 * would cost a hash probe and a library call each.
	 */
	for (uint32_t id = 0;; id++) {
		ret = registry_read_tensor(&w->reg, id, &t);
		if (ret == -ENOENT)
			break;
		if (ret)
			return fail(ret, "reading tensor %u from the registry: %s", id,
				    strerror(-ret));
		if (t.model != mid || (cid != WD_ID_NONE && t.component != cid))
			continue;
		if (n < max) {
			if ((ret = fill_tensor_info(id, &t, &out[n])))
				return ret;
			/* Tensors of one component are adjacent: read its state once per run. */
			if (t.component != state_cid) {
				state_cid = t.component;
				ret = registry_read_component(&w->reg, t.component, &c);
				state = ret ? WEIGHTD_ABSENT : c.tiers[WD_TIER_HOST].state;
			}
			out[n].host_state = state;
			if (names && (t.flags & WD_REG_TENSOR_F_LONG_NAME))
				return fail(-ENAMETOOLONG, "model %s: tensor %u has a name of %u "
					    "bytes, more than the %u of a weightd_tensor_list() "
					    "slot; weightd_tensor_name() or weightd_tensor_table() "
					    "give it whole", model, id, t.name_len,
					    WEIGHTD_NAME_MAX - 1);
			if (names)
				copy_name(names + (size_t)n * WEIGHTD_NAME_MAX, WEIGHTD_NAME_MAX,
					  t.name, sizeof(t.name));
		}
		if (n == INT32_MAX)
			return fail(-EOVERFLOW, "model %s lists more than %d tensors", model,
				    INT32_MAX);
		n++;
	}
	return (int)n;
}

/* ---- operations -------------------------------------------------------------------------- */

int weightd_load(struct weightd *w, const char *model, const char *component, unsigned int tier,
		 unsigned int flags, weightd_progress_fn progress, void *arg)
{
	return weightd_load_ex(w, model, component, tier, flags, NULL, progress, arg, NULL);
}

/* Packs a selection (prefix, or NUL-separated names) into @buf; returns its length or -errno. */
static int pack_selection(const struct weightd_load_opts *o, char *buf, uint64_t *arg0)
{
	size_t len = 0;

	if (o->prefix && o->names)
		return fail(-EINVAL, "load: a prefix and a list of names together");
	if (o->prefix) {
		len = strlen(o->prefix);
		if (!len || len > WD_DATA_SLOT_SIZE)
			return fail(len ? -ENAMETOOLONG : -EINVAL, "load: prefix of %zu bytes "
				    "(1..%u)", len, WD_DATA_SLOT_SIZE);
		memcpy(buf, o->prefix, len);
		*arg0 |= WD_LOAD_PREFIX;
	} else if (o->names) {
		if (!o->n_names)
			return fail(-EINVAL, "load: an empty list of tensor names");
		for (size_t i = 0; i < o->n_names; i++) {
			size_t l = o->names[i] ? strlen(o->names[i]) : 0;

			if (!l)
				return fail(-EINVAL, "load: empty tensor name in the list");
			if (len + l + (i ? 1 : 0) > WD_DATA_SLOT_SIZE)
				return fail(-ENAMETOOLONG, "load: the tensor names take more than %u "
					    "bytes (load a prefix, or in several calls)",
					    WD_DATA_SLOT_SIZE);
			if (i)
				buf[len++] = '\0';
			memcpy(buf + len, o->names[i], l);
			len += l;
		}
		*arg0 |= WD_LOAD_NAMES;
	}
	return (int)len;
}

int weightd_load_ex(struct weightd *w, const char *model, const char *component,
		    unsigned int tier, unsigned int flags, const struct weightd_load_opts *opts,
		    weightd_progress_fn progress, void *arg, struct weightd_load_result *res)
{
	struct request rq = { .sqe = { .opcode = WD_OP_LOAD, .tier = (uint16_t)tier },
			      .progress = progress, .arg = arg };
	char sel[WD_DATA_SLOT_SIZE];
	struct reply rp;
	uint64_t t0 = wd_now_ns();
	int ret;

	if (!w)
		return fail(-EINVAL, "NULL handle");
	if (flags & ~(WEIGHTD_LOAD_PIN | WEIGHTD_LOAD_NO_PROGRESS))
		return fail(-EINVAL, "unknown load flags %#x", flags);
	if ((ret = check_tier(tier)) || (ret = set_target(w, &rq, model, component)))
		return ret;
	if (opts && opts->dtype) {
		if (opts->dtype != WEIGHTD_DTYPE_F16 && opts->dtype != WEIGHTD_DTYPE_BF16)
			return fail(-EINVAL, "load: conversion to dtype %u is not supported "
				    "(WEIGHTD_DTYPE_F16 or WEIGHTD_DTYPE_BF16)", opts->dtype);
		rq.sqe.arg[0] = WD_LOAD_CONVERT | opts->dtype;
	}
	if (opts && (opts->prefix || opts->names)) {
		ret = pack_selection(opts, sel, &rq.sqe.arg[0]);
		if (ret < 0)
			return ret;
		rq.payload = sel;
		rq.payload_len = (size_t)ret;
	}
	rq.sqe.flags = (uint8_t)((flags & WEIGHTD_LOAD_PIN ? WD_SQE_F_PIN : 0) |
				 (flags & WEIGHTD_LOAD_NO_PROGRESS ? WD_SQE_F_NO_PROGRESS : 0));
	if ((ret = submit_wait(w, &rq, &rp)))
		return ret;
	ret = result(&rp, "load", model);
	if (ret < 0)
		return ret;
	if (res)
		*res = (struct weightd_load_result){ .bytes = rp.aux0, .read_bytes = rp.aux1,
						     .hit = rp.aux1 == 0,
						     .elapsed_ns = wd_now_ns() - t0 };
	return 0;
}

const void *weightd_tensor_data(struct weightd *w, const struct weightd_tensor_info *t)
{
	if (!w || !t) {
		fail(-EINVAL, "NULL argument");
		errno = EINVAL;
		return NULL;
	}
	if (!(t->resident & (1u << WD_TIER_HOST))) {
		fail(-ENODATA, "tensor %u is not resident in the host cache (load it first)", t->id);
		errno = ENODATA;
		return NULL;
	}
	/* The registry is semi-trusted: the whole tensor must lie inside our mapping. */
	if (!w->host_seg.base || t->host_offset > w->host_seg.size ||
	    t->nbytes > w->host_seg.size - t->host_offset) {
		fail(-EFAULT, "tensor %u: host offset %llu + %llu bytes lies outside the host cache "
		     "(%zu bytes)", t->id, (unsigned long long)t->host_offset,
		     (unsigned long long)t->nbytes, w->host_seg.size);
		errno = EFAULT;
		return NULL;
	}
	return (const char *)w->host_seg.base + t->host_offset;
}

int weightd_cache_list(struct weightd *w, uint32_t start, struct weightd_cache_entry *out,
		       uint32_t max, uint32_t *n_out)
{
	struct request rq = { .sqe = { .opcode = WD_OP_CACHE, .model = WD_ID_NONE,
				       .component = WD_ID_NONE } };
	struct weightd_model_info mi;
	struct weightd_component_info ci;
	struct reply rp;
	uint32_t n = 0;
	int ret;

	if (!w || (!out && max) || !n_out)
		return fail(-EINVAL, "NULL argument");
	*n_out = 0;
	for (;;) {
		struct wd_cache_entry e[WD_CACHE_PER_REPLY];
		uint32_t got;

		rq.sqe.arg[0] = start + n;
		if ((ret = submit_wait(w, &rq, &rp)))
			return ret;
		if ((ret = result(&rp, "cache", NULL)) < 0)
			return ret;
		got = rp.data_len / sizeof(e[0]);
		if (got > WD_CACHE_PER_REPLY)
			return fail(-EPROTO, "cache: %u payload bytes", rp.data_len);
		memcpy(e, rp.data, got * sizeof(e[0]));
		for (uint32_t i = 0; i < got && n < max; i++, n++) {
			struct weightd_cache_entry *o = &out[n];

			*o = (struct weightd_cache_entry){
				.model = e[i].model, .component = e[i].component,
				.bytes = e[i].bytes, .idle_ns = e[i].idle_ns, .pins = e[i].pins,
				.dtype = e[i].dtype == 0xff ? 0 : e[i].dtype, .flags = e[i].flags,
				.n_tensors = e[i].n_tensors,
			};
			if (weightd_model(w, e[i].model, &mi) == 0)
				snprintf(o->model_name, sizeof(o->model_name), "%s", mi.name);
			if (weightd_component(w, e[i].component, &ci) == 0)
				snprintf(o->component_name, sizeof(o->component_name), "%s",
					 ci.name);
		}
		if (!got || n >= max || start + n >= (uint32_t)ret)
			break;
	}
	*n_out = n;
	last_error[0] = '\0';
	return ret;
}

/*
 * Sends STATS and copies the reply's counters into @v (enum wd_stat order; entries the
 * daemon did not send stay 0). Returns how many values the daemon sent (possibly more than
 * WD_STAT_COUNT) or the request's error.
 */
static int fetch_stats(struct weightd *w, uint64_t v[WD_STAT_COUNT])
{
	struct request rq = { .sqe = { .opcode = WD_OP_STATS, .model = WD_ID_NONE,
				       .component = WD_ID_NONE } };
	struct reply rp;
	size_t n;
	int ret;

	if ((ret = submit_wait(w, &rq, &rp)))
		return ret;
	if ((ret = result(&rp, "stats", NULL)) < 0)
		return ret;
	/* res counts the entries; a newer daemon may send more than this library knows. */
	n = rp.data_len / sizeof(uint64_t);
	if ((size_t)ret < n)
		n = (size_t)ret;
	memcpy(v, rp.data, (n < WD_STAT_COUNT ? n : WD_STAT_COUNT) * sizeof(uint64_t));
	return (int)n;
}

int weightd_cache_stats(struct weightd *w, struct weightd_cache_stats *out)
{
	uint64_t v[WD_STAT_COUNT] = { 0 };
	int ret;

	if (!w || !out)
		return fail(-EINVAL, "NULL argument");
	if ((ret = fetch_stats(w, v)) < 0)
		return ret;
	*out = (struct weightd_cache_stats){
		.budget = v[WD_STAT_HOST_BUDGET],
		.bytes = v[WD_STAT_HOST_BYTES],
		.entries = v[WD_STAT_HOST_ENTRIES],
		.hits = v[WD_STAT_HOST_HITS],
		.misses = v[WD_STAT_HOST_MISSES],
		.evictions = v[WD_STAT_HOST_EVICTIONS],
		.evict_bytes = v[WD_STAT_HOST_EVICT_BYTES],
		.prefetches = v[WD_STAT_HOST_PREFETCHES],
		.prefetch_hits = v[WD_STAT_HOST_PREFETCH_HITS],
		.loads = v[WD_STAT_HOST_LOADS],
		.read_bytes = v[WD_STAT_HOST_READ_BYTES],
		.coalesced = v[WD_STAT_HOST_COALESCED],
		.dedup_bytes = v[WD_STAT_HOST_DEDUP_BYTES],
		.refused = v[WD_STAT_HOST_REFUSED],
		.failed = v[WD_STAT_HOST_FAILED],
		.cuda_bytes = v[WD_STAT_CUDA_BYTES],
		.mapped_bytes = w->host_seg.size,
		.read_direct_bytes = v[WD_STAT_HOST_READ_DIRECT_BYTES],
		.read_buffered_bytes = v[WD_STAT_HOST_READ_BYTES] - v[WD_STAT_HOST_READ_DIRECT_BYTES],
	};
	return 0;
}

static int target_simple(struct weightd *w, uint8_t op, const char *what, const char *model,
			 const char *component, unsigned int tier)
{
	struct reply rp;
	int ret = target_op(w, op, model, component, tier, 0, &rp);

	if (ret)
		return ret;
	ret = result(&rp, what, model);
	return ret < 0 ? ret : 0;
}

int weightd_unload(struct weightd *w, const char *model, const char *component,
		   unsigned int tier)
{
	return target_simple(w, WD_OP_UNLOAD, "unload", model, component, tier);
}

int weightd_pin(struct weightd *w, const char *model, const char *component, unsigned int tier)
{
	return target_simple(w, WD_OP_PIN, "pin", model, component, tier);
}

int weightd_unpin(struct weightd *w, const char *model, const char *component,
		  unsigned int tier)
{
	return target_simple(w, WD_OP_UNPIN, "unpin", model, component, tier);
}

int weightd_status(struct weightd *w, const char *model, const char *component,
		   unsigned int tier, struct weightd_status *out)
{
	struct reply rp;
	int ret = target_op(w, WD_OP_STATUS, model, component, tier, 0, &rp);

	if (ret)
		return ret;
	ret = result(&rp, "status", model);
	if (ret >= 0 && out)
		*out = (struct weightd_status){ .state = (uint32_t)ret, .done = rp.aux0,
						.total = rp.aux1 };
	return ret;
}

int weightd_scan(struct weightd *w, const char *dir, weightd_progress_fn progress, void *arg)
{
	struct reply rp;
	struct request rq = { .sqe = { .opcode = WD_OP_SCAN, .model = WD_ID_NONE,
				       .component = WD_ID_NONE },
			      .progress = progress, .arg = arg };
	int ret;

	if (!w)
		return fail(-EINVAL, "NULL handle");
	if (dir && (ret = check_name(dir, "directory")))
		return ret;
	rq.payload = dir;
	rq.payload_len = dir ? strlen(dir) : 0;
	ret = submit_wait(w, &rq, &rp);
	if (ret)
		return ret;
	last_error[0] = '\0';
	if (rp.res >= 0 && rp.data_len) /* a scan that found problems names the first one */
		copy_text(last_error, sizeof(last_error), rp.data, rp.data_len);
	return result(&rp, "scan", dir);
}

int weightd_validate(struct weightd *w, const char *model, const char *component,
		     unsigned int flags, weightd_progress_fn progress, void *arg)
{
	struct request rq = { .sqe = { .opcode = WD_OP_VALIDATE }, .progress = progress,
			      .arg = arg };
	int ret;

	if (!w)
		return fail(-EINVAL, "NULL handle");
	if (flags & ~WEIGHTD_VALIDATE_DEEP)
		return fail(-EINVAL, "unknown validate flags %#x", flags);
	rq.sqe.arg[0] = flags & WEIGHTD_VALIDATE_DEEP ? WD_VALIDATE_DEEP : 0;
	if ((ret = set_target(w, &rq, model, component)))
		return ret;
	ret = simple(w, &rq, "validate", model);
	return ret < 0 ? ret : 0;
}

/* META_GET and META_SET name the model by id: resolve it locally or with LOOKUP. */
static int meta_model(struct weightd *w, const char *model, const char *key, uint32_t *id)
{
	int ret;

	if (!w)
		return fail(-EINVAL, "NULL handle");
	if ((ret = check_name(key, "metadata key")))
		return ret;
	return weightd_lookup(w, model, id);
}

int weightd_meta_get(struct weightd *w, const char *model, const char *key, char *buf,
		     size_t size)
{
	struct request rq = { .sqe = { .opcode = WD_OP_META_GET, .component = WD_ID_NONE } };
	struct reply rp;
	int ret;

	if (!buf && size)
		return fail(-EINVAL, "NULL buffer");
	if ((ret = meta_model(w, model, key, &rq.sqe.model)))
		return ret;
	rq.payload = key;
	rq.payload_len = strlen(key);
	if ((ret = submit_wait(w, &rq, &rp)))
		return ret;
	ret = result(&rp, "meta get", key);
	if (ret < 0)
		return ret;
	if (ret > rp.data_len)
		return fail(-EOVERFLOW, "meta get %s: the value has %d bytes, more than a reply "
			    "carries (%u)", key, ret, WD_DATA_SLOT_SIZE);
	if (ret < rp.data_len)
		return fail(-EPROTO, "meta get %s: value of %d bytes, %u in the payload", key, ret,
			    rp.data_len);
	if ((size_t)ret >= size)
		return fail(-ERANGE, "meta get %s: value of %d bytes does not fit in %zu", key,
			    ret, size);
	memcpy(buf, rp.data, (size_t)ret);
	buf[ret] = '\0';
	return ret;
}

int weightd_meta_set(struct weightd *w, const char *model, const char *key, const char *value)
{
	struct request rq = { .sqe = { .opcode = WD_OP_META_SET, .component = WD_ID_NONE } };
	char payload[WD_DATA_SLOT_SIZE];
	size_t klen, vlen;
	int ret;

	if (!value)
		return fail(-EINVAL, "NULL value");
	if ((ret = meta_model(w, model, key, &rq.sqe.model)))
		return ret;
	klen = strlen(key);
	vlen = strlen(value);
	if (klen + 1 + vlen > sizeof(payload))
		return fail(-ENAMETOOLONG, "meta set %s: key and value take %zu bytes, at most %zu",
			    key, klen + 1 + vlen, sizeof(payload));
	memcpy(payload, key, klen);
	payload[klen] = '\0';
	memcpy(payload + klen + 1, value, vlen);
	rq.payload = payload;
	rq.payload_len = klen + 1 + vlen;
	ret = simple(w, &rq, "meta set", key);
	return ret < 0 ? ret : 0;
}

int weightd_counters(struct weightd *w, uint64_t *v, unsigned int max)
{
	uint64_t all[WD_STAT_COUNT] = { 0 };
	int ret;

	if (!w || (!v && max))
		return fail(-EINVAL, "NULL argument");
	if ((ret = fetch_stats(w, all)) < 0)
		return ret;
	for (unsigned int i = 0; i < max; i++)
		v[i] = i < WD_STAT_COUNT ? all[i] : 0;
	return ret;
}

const char *weightd_counter_name(unsigned int i, int *is_counter)
{
	if (i >= WD_STAT_COUNT || !wd_stat_info[i].name)
		return NULL;
	if (is_counter)
		*is_counter = wd_stat_info[i].counter;
	return wd_stat_info[i].name;
}

int weightd_stats(struct weightd *w, struct weightd_stats *out)
{
	uint64_t v[WD_STAT_COUNT] = { 0 };
	int ret;

	if (!w || !out)
		return fail(-EINVAL, "NULL argument");
	if ((ret = fetch_stats(w, v)) < 0)
		return ret;
	*out = (struct weightd_stats){
		.requests = v[WD_STAT_MY_REQUESTS],
		.errors = v[WD_STAT_MY_ERRORS],
		.pins = v[WD_STAT_MY_PINS],
		.clients = v[WD_STAT_CLIENTS],
		.ring_segments = v[WD_STAT_RING_SEGS],
		.pins_total = v[WD_STAT_PINS],
		.models = v[WD_STAT_MODELS],
		.uptime_ns = v[WD_STAT_UPTIME_NS],
		.host_budget = v[WD_STAT_HOST_BUDGET],
		.requests_total = v[WD_STAT_REQUESTS],
		.errors_total = v[WD_STAT_ERRORS],
		/* The STATS counters are the one set (shm/stats.h): the same values as
		 * weightd_cache_stats() and /metrics. */
		.host_bytes = v[WD_STAT_HOST_BYTES],
		.loads = v[WD_STAT_HOST_LOADS],
		.load_bytes = v[WD_STAT_HOST_READ_BYTES],
		.evictions = v[WD_STAT_HOST_EVICTIONS],
		.evict_bytes = v[WD_STAT_HOST_EVICT_BYTES],
		.hits = v[WD_STAT_HOST_HITS],
		.misses = v[WD_STAT_HOST_MISSES],
		.n_values = (uint32_t)ret,
		.host_page_kind = (uint32_t)(v[WD_STAT_HOST_PAGES] & 0xfff),
		.host_page_size = v[WD_STAT_HOST_PAGES] & ~(uint64_t)0xfff,
	};
	return 0;
}

const char *weightd_pages_name(uint32_t kind)
{
	switch (kind) {
	case WEIGHTD_PAGES_SMALL:
		return "4k";
	case WEIGHTD_PAGES_THP:
		return "thp";
	case WEIGHTD_PAGES_HUGETLB:
		return "hugetlb";
	}
	return "?";
}

int weightd_shutdown(struct weightd *w)
{
	struct request rq = { .sqe = { .opcode = WD_OP_SHUTDOWN } };
	int ret;

	if (!w)
		return fail(-EINVAL, "NULL handle");
	rq.sqe.model = rq.sqe.component = WD_ID_NONE;
	ret = simple(w, &rq, "shutdown", NULL);
	return ret < 0 ? ret : 0;
}

const char *weightd_state_name(unsigned int state)
{
	static const char *const names[] = { "absent", "loading", "resident", "evicting",
					     "failed" };

	return state < ARRAY_SIZE(names) ? names[state] : "?";
}

const char *weightd_tier_name(unsigned int tier, char *buf, size_t size)
{
	if (tier == WD_TIER_HOST)
		snprintf(buf, size, "host");
	else
		snprintf(buf, size, "cuda:%u", tier - 1);
	return buf;
}

/* ---- bulk tensor table ------------------------------------------------------------------- */

static_assert(sizeof(((struct weightd_tensor_loc *)0)->shape) == WD_SHAPE_MAX * sizeof(uint64_t),
	      "tensor_loc rank");

/*
 * The model and component fields of published tensor record @id, read without the seqlock:
 * a record never changes owner once published (records are never removed or renamed, only
 * their location and form are rewritten, with the same owner words), so a relaxed read of
 * the two words is exact for a stable segment. It only filters: a record it selects is then
 * copied consistently and checked, so a hostile segment can at worst hide tensors here.
 */
static void peek_owner(const struct registry_view *v, uint32_t id, uint32_t *model,
		       uint32_t *component)
{
	const struct wd_reg_tensor *t = (const struct wd_reg_tensor *)(v->base + v->tensor_off) + id;

	*model = READ_ONCE(t->model);
	*component = READ_ONCE(t->component);
}

/*
 * A fresh process reads the registry's records from memory, not from its caches, and the
 * hardware prefetcher does not follow a stride of whole records across pages: the pass
 * asks for the lines registry_read_tensor_loc() reads of the record TABLE_PREFETCH ahead
 * (its head with the first dimensions, and the start of its name). Measured on 1,000
 * records in a fresh process: 170 -> 130 us. A prefetch never faults, so the address may
 * lie past the published records.
 */
#define TABLE_PREFETCH 8u

static void prefetch_tensor(const struct registry_view *v, uint32_t id)
{
	const char *r = (const char *)(v->base + v->tensor_off) +
			(size_t)id * sizeof(struct wd_reg_tensor);

	__builtin_prefetch(r);
	__builtin_prefetch(r + offsetof(struct wd_reg_tensor, name) / 64 * 64);
	__builtin_prefetch(r + offsetof(struct wd_reg_tensor, name) / 64 * 64 + 64);
}

/* The bytes @t's shape and dtype make (dtype < ST_DTYPE_COUNT); UINT64_MAX on overflow or a
 * fraction of a byte, which no nbytes equals. */
static uint64_t shape_bytes(const struct registry_tensor_loc *t)
{
	uint64_t bits = st_dtype_info((enum st_dtype)t->dtype)->bits;

	for (unsigned int d = 0; d < t->rank; d++)
		if (__builtin_mul_overflow(bits, t->shape[d], &bits))
			return UINT64_MAX;
	return bits % 8 ? UINT64_MAX : bits / 8;
}

int weightd_tensor_table(struct weightd *w, const char *model, const char *component,
			 struct weightd_tensor_loc *out, uint32_t max, char *names,
			 size_t names_size, struct weightd_tensor_table *tab)
{
	const struct wd_reg_hdr *h;
	struct wd_reg_model m;
	struct wd_reg_component c;
	struct registry_tensor_loc t;
	uint64_t lo = UINT64_MAX, hi = 0, names_len = 0;
	uint32_t mid, cid = WD_ID_NONE, want, count, seen = 0, n = 0, absent = 0;
	uint32_t last_comp = WD_ID_NONE, n_comps = 0;
	int ret;

	if (!w || !tab || (!out && max) || (!names && names_size))
		return fail(-EINVAL, "NULL argument");
	memset(tab, 0, sizeof(*tab));
	if ((ret = find_model(w, model, &mid, &m)))
		return ret;
	want = m.n_tensors;
	if (component) {
		if ((ret = check_name(component, "component name")))
			return ret;
		ret = registry_find_component(&w->reg, mid, component, &cid, &c);
		if (ret)
			return fail(ret, "model %s, component %s: %s", model, component,
				    ret == -ENOENT ? "no such component" : strerror(-ret));
		want = c.n_tensors;
	}
	/*
	 * One pass over the published tensor records, as weightd_tensor_list() makes, but only
	 * the target's are read (the owner words filter the rest), and the pass ends once the
	 * target's count is reached: the daemon adds a component's tensors together, so a model
	 * early in the registry costs no scan of the models after it.
	 *
	 * Each record is read in place under its seqlock, only the words a view needs
	 * (registry_read_tensor_loc()): no copy of the 512-byte record and no checksum, which
	 * would need all of it. Nothing is lost to that: the checksum guards against a record
	 * damaged in a way the seqlock cannot see, and every field used here is checked
	 * below against what can make a view unsafe -- rank, dtype, shape x dtype = nbytes, and
	 * the bytes inside this process's mapping of the host cache -- so a damaged or forged
	 * record (a forger can compute a checksum as well) yields at worst a wrong view of
	 * host-cache bytes, never one outside the mapping.
	 */
	h = (const struct wd_reg_hdr *)w->reg.base;
	/* Pairs with store_release() of the counts in registry_publish(). */
	count = load_acquire(&h->tensor_count);
	if (count > w->reg.tensor_cap)
		return fail(-EBADMSG, "the registry publishes %u tensors, it has room for %u", count,
			    w->reg.tensor_cap);
	for (uint32_t id = 0; id < count && seen < want; id++) {
		uint32_t tm, tc;
		uint64_t end;

		prefetch_tensor(&w->reg, id + TABLE_PREFETCH);
		peek_owner(&w->reg, id, &tm, &tc);
		if (tm != mid || (cid != WD_ID_NONE && tc != cid))
			continue;
		ret = registry_read_tensor_loc(&w->reg, id, &t);
		if (ret)
			return fail(ret, "reading tensor %u from the registry: %s", id,
				    strerror(-ret));
		if (t.model != mid || (cid != WD_ID_NONE && t.component != cid))
			continue;
		seen++;
		if (!(t.resident & (1u << WD_TIER_HOST))) {
			absent++;
			continue;
		}
		if (t.rank > WD_SHAPE_MAX || t.dtype >= ST_DTYPE_COUNT)
			return fail(-EBADMSG, "registry tensor %u (%.64s) has rank %u, dtype %u", id,
				    t.name, t.rank, t.dtype);
		/* A view is shaped from shape and dtype: they must account for nbytes exactly. */
		uint64_t need = shape_bytes(&t);

		if (need != t.nbytes)
			return fail(-EBADMSG, "model %s: tensor %s: shape and dtype %u make %llu bytes, "
				    "the registry says %llu", model, t.name, t.dtype,
				    (unsigned long long)need, (unsigned long long)t.nbytes);
		/* The registry is semi-trusted: every byte listed must lie inside our mapping. */
		if (!w->host_seg.base || t.host_offset > w->host_seg.size ||
		    t.nbytes > w->host_seg.size - t.host_offset)
			return fail(-EFAULT, "model %s: tensor %s: host offset %llu + %llu bytes lies "
				    "outside the host cache (%zu bytes)", model, t.name,
				    (unsigned long long)t.host_offset,
				    (unsigned long long)t.nbytes, w->host_seg.size);
		if (t.nbytes) {
			end = t.host_offset + t.nbytes;
			lo = t.host_offset < lo ? t.host_offset : lo;
			hi = end > hi ? end : hi;
		}
		if (t.component != last_comp) {
			/* Tensors of one component are adjacent: this counts components exactly
			 * unless the registry interleaves them, where it over-counts (safe). */
			last_comp = t.component;
			n_comps++;
		}
		size_t len = t.name_len;

		if (n < max && names_len + len + 1 <= names_size) {
			out[n] = (struct weightd_tensor_loc){
				.offset = t.host_offset,	/* made relative below */
				.nbytes = t.nbytes,
				.dtype = t.dtype,
				.rank = t.rank,
				.name_off = (uint32_t)names_len,
				.name_len = (uint32_t)len,
			};
			memcpy(out[n].shape, t.shape, sizeof(uint64_t) * t.rank);
			memcpy(names + names_len, t.long_name ? t.long_name : t.name, len);
			names[names_len + len] = '\0';
		}
		names_len += len + 1;
		if (names_len > UINT32_MAX)
			return fail(-EOVERFLOW, "model %s: the tensor names take more than 4 GiB",
				    model);
		n++;
	}
	tab->n = n;
	tab->absent = absent + (want > seen ? want - seen : 0);
	tab->n_components = n_comps;
	tab->names_len = names_len;
	if (n > max || names_len > names_size)
		return fail(-ENOBUFS, "model %s: %u tensors and %llu name bytes need listing, room "
			    "for %u and %zu", model, n, (unsigned long long)names_len, max,
			    names_size);
	tab->host_fd = w->host_seg.fd;
	if (hi) {
		/* Page-aligned, so that a binding can map the extent at host_offset itself. */
		lo &= ~((uint64_t)sysconf(_SC_PAGESIZE) - 1);
		tab->base = (const char *)w->host_seg.base + lo;
		tab->nbytes = hi - lo;
		tab->host_offset = lo;
	} else {
		lo = 0;
	}
	for (uint32_t i = 0; i < n; i++)
		out[i].offset = out[i].nbytes ? out[i].offset - lo : 0;
	return 0;
}

/* ---- the GPU tier ------------------------------------------------------------------------ */

static_assert(sizeof(struct weightd_device_info) == sizeof(struct wd_device_info),
	      "weightd_device_info mirrors wd_device_info");
static_assert(WEIGHTD_DEVICE_EMULATED == WD_DEVICE_KIND_EMULATED, "device kinds");

#define DEVMAP_TIMEOUT_MS 5000

struct weightd_device_map {
	const struct gpu_ops *ops;
	struct gpu_dev *dev;
	struct gpu_vram v;
	uint32_t ordinal, model, component;	/* ordinal: the daemon's (its tier) */
	int local;			/* this process's ordinal of the same GPU */
	uint32_t n;
	struct wd_devmap_tensor *t;	/* sorted by tensor index */
};

/*
 * The device layer's calls run in the mapping's context, made current around each call and
 * the caller's restored after it: the caller may be PyTorch, whose current device lives in
 * the same per-thread slot, or a garbage collector's thread running a DLPack deleter.
 */
static int import(struct weightd_device_map *m, int fd, uint64_t size, char *why,
		  size_t why_size)
{
	void *saved;
	int ret = m->ops->ctx_enter(m->dev, &saved, why, why_size);

	if (ret)
		return ret;
	ret = m->ops->vram_import(m->dev, fd, size, &m->v, why, why_size);
	m->ops->ctx_leave(m->dev, saved);
	return ret;
}

/*
 * The daemon's messages for one DEVICE_MAP arrive on the socket before its completion; one
 * map at a time per process keeps two threads from taking each other's messages.
 */
static pthread_mutex_t devmap_lock = PTHREAD_MUTEX_INITIALIZER;

static int cmp_tensor(const void *a, const void *b)
{
	const struct wd_devmap_tensor *x = a, *y = b;

	return x->tensor < y->tensor ? -1 : x->tensor > y->tensor;
}

/*
 * Receives the table and the fd of @token (@total entries, allocation @size) into @m and
 * *@fd. Messages of another token (a map whose completion was lost) are dropped.
 */
static int recv_table(struct weightd *w, uint64_t token, uint32_t total, uint64_t size,
		      struct weightd_device_map *m, int *fd)
{
	size_t cap = sizeof(struct wd_devmap_msg) + WD_DEVMAP_PER_MSG *
		     sizeof(struct wd_devmap_tensor);
	uint8_t *buf = malloc(cap);
	uint32_t got = 0;
	bool have_fd = false;
	int ret = 0;

	*fd = -1;
	m->t = calloc(total ? total : 1, sizeof(*m->t));
	if (!buf || !m->t) {
		free(buf);
		return fail(-ENOMEM, "device map: out of memory");
	}
	while (!have_fd || got < total) {
		struct pollfd p = { .fd = w->sock, .events = POLLIN };
		struct wd_devmap_msg h;
		int fds[ATTACH_MAX_FDS], nfds = ATTACH_MAX_FDS;
		ssize_t n;

		if (poll(&p, 1, DEVMAP_TIMEOUT_MS) <= 0) {
			ret = fail(-ETIMEDOUT, "device map: no allocation from the daemon on the "
				   "socket within %d ms", DEVMAP_TIMEOUT_MS);
			break;
		}
		n = attach_recv(w->sock, buf, cap, fds, &nfds);
		if (n <= 0) {
			ret = fail(n ? (int)n : -ECONNRESET, "device map: socket: %s",
				   n ? strerror((int)-n) : "closed by the daemon");
			break;
		}
		memcpy(&h, buf, (size_t)n < sizeof(h) ? (size_t)n : sizeof(h));
		if ((size_t)n < sizeof(h) || h.magic != WD_DEVMAP_MAGIC || h.token != token) {
			for (int i = 0; i < nfds; i++)
				close(fds[i]);
			continue;
		}
		if (h.n > WD_DEVMAP_PER_MSG || (size_t)n != sizeof(h) + h.n * sizeof(*m->t) ||
		    h.first != got || h.total != total || h.size != size ||
		    h.n > total - got || nfds != (have_fd ? 0 : 1)) {
			for (int i = 0; i < nfds; i++)
				close(fds[i]);
			ret = fail(-EPROTO, "device map: malformed message from the daemon (%zd "
				   "bytes, %u entries from %u of %u, %d fds)", n, h.n, h.first,
				   h.total, nfds);
			break;
		}
		if (nfds) {
			*fd = fds[0];
			have_fd = true;
		}
		memcpy(m->t + got, buf + sizeof(h), h.n * sizeof(*m->t));
		got += h.n;
	}
	free(buf);
	if (ret) {
		if (*fd >= 0)
			close(*fd);
		*fd = -1;
		return ret;
	}
	m->n = total;
	qsort(m->t, m->n, sizeof(*m->t), cmp_tensor);
	for (uint32_t i = 0; i < m->n; i++)
		if (m->t[i].offset > size || m->t[i].nbytes > size - m->t[i].offset)
			return fail(-EPROTO, "device map: tensor %u lies outside the allocation",
				    m->t[i].tensor);
	return 0;
}

static void unpin_ids(struct weightd *w, uint32_t model, uint32_t comp, uint32_t ordinal)
{
	struct request rq = { .sqe = { .opcode = WD_OP_UNPIN, .tier = (uint16_t)WD_TIER_CUDA(ordinal),
				       .model = model, .component = comp } };
	struct reply rp;

	submit_wait(w, &rq, &rp);
}

int weightd_device_map(struct weightd *w, const char *model, const char *component,
		       unsigned int device, struct weightd_device_map **out)
{
	return weightd_device_map_ex(w, model, component, device, 0, out);
}

int weightd_device_map_ex(struct weightd *w, const char *model, const char *component,
			  unsigned int device, unsigned int dtype, struct weightd_device_map **out)
{
	struct weightd_load_opts o = { .dtype = dtype };

	return weightd_device_map_opts(w, model, component, device, &o, out);
}

int weightd_device_map_opts(struct weightd *w, const char *model, const char *component,
			    unsigned int device, const struct weightd_load_opts *opts,
			    struct weightd_device_map **out)
{
	unsigned int dtype = opts ? opts->dtype : 0;
	struct request rq = { .sqe = { .opcode = WD_OP_DEVICE_MAP,
				       .tier = (uint16_t)WD_TIER_CUDA(device),
				       .arg = { dtype ? WD_LOAD_CONVERT | (dtype & WD_LOAD_DTYPE_MASK)
						      : 0 } } };
	char sel[WD_DATA_SLOT_SIZE];
	struct weightd_device_map *m;
	struct wd_devmap_reply rep;
	struct reply rp;
	char why[160] = "";
	int ret, fd = -1;

	if (!w || !out)
		return fail(-EINVAL, "NULL argument");
	*out = NULL;
	if (device >= WD_TIER_MAX - 1)
		return fail(-EINVAL, "device %u out of range (0..%u)", device, WD_TIER_MAX - 2);
	if (dtype > WD_LOAD_DTYPE_MASK)
		return fail(-EINVAL, "dtype %u out of range", dtype);
	ret = set_target(w, &rq, model, component);
	if (ret)
		return ret;
	if (opts && (opts->prefix || opts->names)) {
		ret = pack_selection(opts, sel, &rq.sqe.arg[0]);
		if (ret < 0)
			return ret;
		rq.payload = sel;
		rq.payload_len = (size_t)ret;
	}
	m = calloc(1, sizeof(*m));
	if (!m)
		return fail(-ENOMEM, "out of memory");
	m->v.fd = -1;
	pthread_mutex_lock(&devmap_lock);
	ret = submit_wait(w, &rq, &rp);
	if (!ret)
		ret = result(&rp, "device map", model);
	if (ret < 0)
		goto out;
	m->ordinal = device;
	m->model = rq.sqe.model;
	if (rp.data_len != sizeof(rep)) {
		ret = fail(-EPROTO, "device map: a %u-byte reply", rp.data_len);
		/* The pin the daemon took is on the component: released here when it was named,
		 * else at detach (the reply that would say which one is what is broken). */
		m->component = rq.sqe.component;
		if (m->component != WD_ID_NONE)
			goto unpin;
		goto out;
	}
	memcpy(&rep, rp.data, sizeof(rep));
	m->component = rep.component;
	/* The kind picks the device layer this process imports with: never guess it. */
	if (rep.ordinal != device || rep.kind > WD_DEVICE_KIND_EMULATED) {
		ret = fail(-EPROTO, "device map: a reply for device %u of kind %u, asked for "
			   "device %u", rep.ordinal, rep.kind, device);
		goto unpin;
	}
	ret = recv_table(w, rp.aux1, rep.n_tensors, rp.aux0, m, &fd);
	if (ret)
		goto unpin;
	m->ops = rep.kind == WD_DEVICE_KIND_EMULATED ? &gpu_emu_ops : &gpu_cuda_ops;
	/* Ordinals are per process: the bus id says which GPU this process must open. */
	rep.device_id[sizeof(rep.device_id) - 1] = '\0';
	ret = m->ops->find(rep.device_id, &m->local, why, sizeof(why));
	if (ret) {
		ret = fail(ret, "device map: the daemon's cuda:%u (%s %s) is not visible in this "
			   "process (CUDA_VISIBLE_DEVICES, or the container's devices): %s",
			   rep.ordinal, m->ops->kind, rep.device_id, why);
		goto unpin;
	}
	ret = m->ops->open(m->local, &m->dev, why, sizeof(why));
	if (ret) {
		m->dev = NULL;
		ret = fail(ret, "device map: cannot open %s device %s (cuda:%d here, cuda:%u in "
			   "the daemon) in this process: %s", m->ops->kind, rep.device_id, m->local,
			   rep.ordinal, why);
		goto unpin;
	}
	ret = import(m, fd, rp.aux0, why, sizeof(why));
	if (ret) {
		m->v.fd = -1;
		ret = fail(ret, "device map: cannot import the allocation: %s", why);
		goto unpin;
	}
	close(fd);
	pthread_mutex_unlock(&devmap_lock);
	*out = m;
	return 0;
unpin:
	unpin_ids(w, m->model, m->component, m->ordinal);
out:
	pthread_mutex_unlock(&devmap_lock);
	if (fd >= 0)
		close(fd);
	if (m->dev)
		m->ops->close(m->dev);
	free(m->t);
	free(m);
	return ret < 0 ? ret : -EPROTO;
}

int weightd_device_ordinal(const struct weightd_device_map *m)
{
	return m ? m->local : -1;
}

uint64_t weightd_device_base(const struct weightd_device_map *m)
{
	return m ? m->v.dptr : 0;
}

uint64_t weightd_device_size(const struct weightd_device_map *m)
{
	return m ? m->v.size : 0;
}

static const struct wd_devmap_tensor *find_entry(const struct weightd_device_map *m,
						 const struct weightd_tensor_info *t)
{
	struct wd_devmap_tensor key = { .tensor = t->id };

	if (t->component != m->component)
		return NULL;
	return bsearch(&key, m->t, m->n, sizeof(*m->t), cmp_tensor);
}

int weightd_tensor_device_ptr(const struct weightd_device_map *m,
			      const struct weightd_tensor_info *t, uint64_t *dptr)
{
	const struct wd_devmap_tensor *e;

	if (!m || !t || !dptr)
		return fail(-EINVAL, "NULL argument");
	e = find_entry(m, t);
	if (!e)
		return fail(-ENOENT, "tensor %u is not in the mapped component %u", t->id,
			    m->component);
	*dptr = m->v.dptr + e->offset;
	return 0;
}

int weightd_tensor_device_info(const struct weightd_device_map *m,
			       const struct weightd_tensor_info *t, uint64_t *dptr,
			       unsigned int *dtype, uint64_t *nbytes)
{
	const struct wd_devmap_tensor *e;

	if (!m || !t)
		return fail(-EINVAL, "NULL argument");
	e = find_entry(m, t);
	if (!e)
		return fail(-ENOENT, "tensor %u is not in the mapped component %u", t->id,
			    m->component);
	if (dptr)
		*dptr = m->v.dptr + e->offset;
	if (dtype)
		*dtype = e->dtype;
	if (nbytes)
		*nbytes = e->nbytes;
	return 0;
}

int weightd_device_read(const struct weightd_device_map *m, const struct weightd_tensor_info *t,
			void *dst, size_t size)
{
	const struct wd_devmap_tensor *e;
	char why[160] = "";
	void *saved;
	int ret;

	if (!m || !t || (!dst && size))
		return fail(-EINVAL, "NULL argument");
	e = find_entry(m, t);
	if (!e)
		return fail(-ENOENT, "tensor %u is not in the mapped component %u", t->id,
			    m->component);
	if (size < e->nbytes)
		return fail(-EINVAL, "buffer of %zu bytes for a tensor of %" PRIu64, size,
			    (uint64_t)e->nbytes);
	if (!e->nbytes)
		return 0;
	ret = m->ops->ctx_enter(m->dev, &saved, why, sizeof(why));
	if (!ret) {
		ret = m->ops->copy_d2h(m->dev, dst, m->v.dptr + e->offset, e->nbytes, why,
				       sizeof(why));
		m->ops->ctx_leave(m->dev, saved);
	}
	return ret ? fail(ret, "device read: %s", why) : 0;
}

void weightd_device_unmap(struct weightd *w, struct weightd_device_map *m)
{
	char why[160];
	void *saved;

	if (!m)
		return;
	/* Also on a DLPack deleter's thread: that thread's context is put back. */
	if (!m->ops->ctx_enter(m->dev, &saved, why, sizeof(why))) {
		m->ops->vram_free(m->dev, &m->v);
		m->ops->ctx_leave(m->dev, saved);
	}
	m->ops->close(m->dev);
	if (w)
		unpin_ids(w, m->model, m->component, m->ordinal);
	free(m->t);
	free(m);
}

int weightd_devices(struct weightd *w, struct weightd_device_info *out, unsigned int max,
		    char *why, size_t why_size)
{
	uint32_t total = 0, got = 0;

	if (!w || (!out && max))
		return fail(-EINVAL, "NULL argument");
	if (why && why_size)
		why[0] = '\0';
	do {
		struct request rq = { .sqe = { .opcode = WD_OP_DEVICES, .model = WD_ID_NONE,
					       .component = WD_ID_NONE, .arg = { got } } };
		struct reply rp;
		int ret = submit_wait(w, &rq, &rp);
		uint32_t n;

		if (!ret)
			ret = result(&rp, "devices", NULL);
		if (ret < 0)
			return ret;
		total = (uint32_t)ret;
		if (!total) {
			if (why && why_size)
				copy_text(why, why_size, rp.data, rp.data_len);
			return 0;
		}
		n = (uint32_t)(rp.aux0 <= WD_DEVICES_PER_REPLY ? rp.aux0 : 0);
		if (rp.data_len != n * sizeof(struct wd_device_info) || !n)
			return fail(-EPROTO, "devices: a reply of %u bytes for %u entries",
				    rp.data_len, n);
		for (uint32_t i = 0; i < n && got + i < max; i++) {
			memcpy(&out[got + i], rp.data + i * sizeof(struct wd_device_info),
			       sizeof(*out));
			out[got + i].name[sizeof(out->name) - 1] = '\0';
		}
		got += n;
	} while (got < total && got < max);
	return (int)total;
}

int64_t weightd_device_trim(struct weightd *w, unsigned int device, uint64_t bytes)
{
	struct request rq = { .sqe = { .opcode = WD_OP_DEVICE_TRIM, .model = WD_ID_NONE,
				       .component = WD_ID_NONE,
				       .tier = (uint16_t)WD_TIER_CUDA(device), .arg = { bytes } } };
	struct reply rp;
	int ret;

	if (!w)
		return fail(-EINVAL, "NULL argument");
	if (device >= WD_TIER_MAX - 1)
		return fail(-EINVAL, "device %u out of range (0..%u)", device, WD_TIER_MAX - 2);
	ret = submit_wait(w, &rq, &rp);
	if (!ret)
		ret = result(&rp, "device trim", NULL);
	if (ret < 0)
		return ret;
	return rp.aux0 > INT64_MAX ? INT64_MAX : (int64_t)rp.aux0;
}

static_assert(WEIGHTD_INFO_FIXED_BUFFERS == WD_INFO_FIXED_BUFFERS &&
	      WEIGHTD_INFO_FIXED_FILES == WD_INFO_FIXED_FILES &&
	      WEIGHTD_INFO_NO_LOADER == WD_INFO_NO_LOADER, "info flags");

int weightd_daemon_info(struct weightd *w, struct weightd_daemon_info *out)
{
	struct request rq = { .sqe = { .opcode = WD_OP_INFO, .model = WD_ID_NONE,
				       .component = WD_ID_NONE } };
	struct wd_info info;
	struct reply rp;
	int ret;

	if (!w || !out)
		return fail(-EINVAL, "NULL argument");
	if ((ret = submit_wait(w, &rq, &rp)) || (ret = result(&rp, "info", NULL)) < 0)
		return ret;
	if (rp.data_len != sizeof(info))
		return fail(-EPROTO, "info: a reply of %u bytes, want %zu", rp.data_len,
			    sizeof(info));
	memcpy(&info, rp.data, sizeof(info));
	if (info.state_dir_len > sizeof(info.state_dir) ||
	    memchr(info.state_dir, '\0', info.state_dir_len))
		return fail(-EPROTO, "info: a state directory of %u bytes", info.state_dir_len);
	memset(out, 0, sizeof(*out));
	out->flags = info.flags & (WD_INFO_FIXED_BUFFERS | WD_INFO_FIXED_FILES | WD_INFO_NO_LOADER);
	out->fixed_buffers_error = info.buffers_error;
	out->fixed_files_error = info.files_error;
	out->memlock_limit = info.memlock_limit;
	out->staging_bytes = info.staging_bytes;
	if (info.flags & WD_INFO_STATE_DIR_LONG)
		return fail(-ENAMETOOLONG, "info: the daemon's state directory is longer than %u "
			    "bytes", WD_INFO_STATE_DIR_MAX);
	memcpy(out->state_dir, info.state_dir, info.state_dir_len);
	return 0;
}

/* ---- metrics and events ----------------------------------------------------------------- */

static_assert(WEIGHTD_HIST_BUCKETS == WD_HIST_BUCKETS, "histogram buckets");
static_assert(WEIGHTD_ERR_CLASSES == WD_ERRC_COUNT, "error classes");
static_assert(WEIGHTD_ALERT_KINDS == WD_ALERT_COUNT, "alert kinds");
static_assert(WEIGHTD_NUMA_SLOTS == WD_METRICS_NUMA + 1, "NUMA slots");
static_assert(WEIGHTD_EVENT_TEXT == WD_EVENT_TEXT, "event text");
static_assert(sizeof(struct weightd_hist) == sizeof(struct wd_hist), "histogram layout");

int weightd_metrics(struct weightd *w, struct weightd_metrics *out)
{
	const struct wd_reg_metrics *m;

	if (!w || !out)
		return fail(-EINVAL, "weightd_metrics: NULL argument");
	m = registry_view_metrics(&w->reg);
	if (!m)
		return fail(-ENODATA, "the daemon's registry has no metrics block");
	memset(out, 0, sizeof(*out));
	regm_hist_read(&m->rtt, (struct wd_hist *)&out->rtt);
	for (unsigned int t = 0; t < WEIGHTD_TIER_MAX; t++)
		regm_hist_read(&m->load[t], (struct wd_hist *)&out->load[t]);
	for (unsigned int i = 0; i < WEIGHTD_ERR_CLASSES; i++)
		out->errors[i] = READ_ONCE(m->errors[i]);
	for (unsigned int i = 0; i < WEIGHTD_ALERT_KINDS; i++) {
		out->alerts_total[i] = READ_ONCE(m->alerts_total[i]);
		out->alerts_active[i] = READ_ONCE(m->alerts_active[i]);
	}
	for (unsigned int i = 0; i < WEIGHTD_NUMA_SLOTS; i++)
		out->numa_bytes[i] = READ_ONCE(m->numa_bytes[i]);
	out->host_budget = READ_ONCE(m->host_budget);
	out->host_used = READ_ONCE(m->host_used);
	out->free_extents = READ_ONCE(m->free_extents);
	out->largest_free = READ_ONCE(m->largest_free);
	out->updated_wall_ns = READ_ONCE(m->updated_wall_ns);
	/* Pairs with the daemon's store_release(event_head) after it wrote the event. */
	out->events = load_acquire(&m->event_head);
	return 0;
}

int weightd_events(struct weightd *w, struct weightd_event *out, size_t max)
{
	const struct wd_reg_metrics *m;
	uint64_t head, first;
	size_t n = 0;

	if (!w || (!out && max))
		return fail(-EINVAL, "weightd_events: NULL argument");
	m = registry_view_metrics(&w->reg);
	if (!m)
		return fail(-ENODATA, "the daemon's registry has no metrics block");
	/* Pairs with the daemon's store_release(event_head) after it wrote the event. */
	head = load_acquire(&m->event_head);
	first = head > WD_EVENTS ? head - WD_EVENTS : 0;
	if (head - first > max)
		first = head - max;
	for (uint64_t i = first; i < head; i++) {
		struct wd_event ev = { 0 };
		int ret = -EAGAIN;

		/* A record rewritten under us is retried a few times, then skipped (overtaken). */
		for (int tries = 0; tries < 100 && ret == -EAGAIN; tries++)
			ret = regm_event_read(m, i, &ev);
		if (ret == -EBADMSG)
			return fail(ret, "registry event %llu is corrupt", (unsigned long long)i);
		if (ret)
			continue;
		out[n] = (struct weightd_event){ .index = i, .wall_ns = ev.wall_ns,
						 .value = ev.value, .limit = ev.limit,
						 .kind = ev.kind, .flags = ev.flags };
		memcpy(out[n].text, ev.text, sizeof(out[n].text));
		n++;
	}
	return (int)n;
}

const char *weightd_alert_name(unsigned int kind)
{
	static const char *const names[WEIGHTD_ALERT_KINDS] = WD_ALERT_NAMES;

	return kind < WEIGHTD_ALERT_KINDS ? names[kind] : "unknown";
}

const char *weightd_error_class_name(unsigned int cls)
{
	static const char *const names[WEIGHTD_ERR_CLASSES] = WD_ERRC_NAMES;

	return cls < WEIGHTD_ERR_CLASSES ? names[cls] : "unknown";
}
