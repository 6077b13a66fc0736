/*
 * libweightd: attach to the daemon and detach, the handle's accessors, and the thread's last
 * error. The public contract is include/weightd.h; the wire protocol is docs/protocol.md.
 * shm/client_internal.h lists the other files of the library, one concern each.
 *
 * Attaching connects to the daemon's socket (which stays open as the lease), sends the hello,
 * receives the ring, registry and host cache descriptors with the reply, and maps and checks
 * all three segments before the handle is returned. Nothing the daemon sends is trusted:
 * sizes, versions and descriptor counts are checked, and a refusal's message is copied with
 * its bytes made printable.
 */
#include <errno.h>
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
#include <unistd.h>

#include "weightd.h"

#include "core/base/common.h"
#include "core/format/st.h"
#include "shm/abi.h"
#include "shm/attach.h"
#include "shm/client_internal.h"
#include "shm/registry.h"
#include "shm/ring.h"
#include "shm/segment.h"

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

/* ---- errors ------------------------------------------------------------------------------ */

__thread char client_errbuf[256];

const char *weightd_last_error(void)
{
	return client_errbuf;
}

int client_fail(int err, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(client_errbuf, sizeof(client_errbuf), fmt, ap);
	va_end(ap);
	return err;
}

/* ---- attach ------------------------------------------------------------------------------ */

static int connect_to(const char *path, int *out)
{
	int fd = attach_connect(path);

	if (fd == -ENOENT || fd == -ECONNREFUSED)
		return client_fail(fd, "no weightd daemon at %s (%s)", path, strerror(-fd));
	if (fd < 0)
		return client_fail(fd, "cannot connect to %s: %s", path, strerror(-fd));
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

void client_copy_text(char *dst, size_t size, const void *src, size_t len)
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
		return client_fail(-errno, "poll on %s: %s", path, strerror(errno));
	if (ret == 0)
		return client_fail(-ETIMEDOUT,
				   "the weightd daemon at %s is not responding: it did not "
				   "answer the hello within %u ms",
				   path, timeout_ms);
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
		return client_fail((int)n, "receiving the hello reply from %s: %s", path,
				   strerror((int)-n));
	if (nfds < 0 || nfds > (int)ARRAY_SIZE(got))
		nfds = 0;
	ret = 0;
	if (n == 0)
		ret = client_fail(-ECONNRESET,
				  "the daemon at %s closed the connection during attach", path);
	else if ((size_t)n < offsetof(struct wd_hello_reply, status) + sizeof(rep->status) ||
		 rep->magic != WD_REPLY_MAGIC)
		ret = client_fail(-EBADMSG, "malformed hello reply from %s (%zd bytes, magic %#x)",
				  path, n, rep->magic);
	else if (rep->version != WD_ABI_VERSION)
		ret = client_fail(-EPROTONOSUPPORT, "client ABI %u, daemon ABI %u", WD_ABI_VERSION,
				  rep->version);
	else if ((size_t)n != sizeof(*rep) || rep->reply_size != sizeof(*rep))
		ret = client_fail(-EBADMSG,
				  "hello reply of %zd bytes (reply_size %u), expected %zu", n,
				  rep->reply_size, sizeof(*rep));
	else if (rep->status < 0) {
		client_copy_text(msg, sizeof(msg), rep->message, sizeof(rep->message));
		ret = client_fail(rep->status >= -4095 ? rep->status : -EBADMSG, "%s: %s", path,
				  msg[0] ? msg : strerror(-rep->status));
	} else if (rep->status > 0 || rep->n_fds != 3 || nfds != 3) {
		ret = client_fail(-EBADMSG,
				  "hello reply with status %d carried %d descriptors (n_fds %u)",
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
		return client_fail(ret, "cannot map the ring segment: %s", strerror(-ret));
	}
	ret = registry_attach(fds[1], &w->reg);
	if (ret) {
		memset(&w->reg, 0, sizeof(w->reg));
		close(fds[1]);
		close(fds[2]);
		return client_fail(ret, "cannot map the registry segment: %s", strerror(-ret));
	}
	/*
	 * The host cache is mapped read-only (the descriptor is O_RDONLY as well): tensors are
	 * shared with every other client, and a stray write must fault here, not corrupt them.
	 */
	ret = shm_segment_map(fds[2], false, rep->host_seg_size, &w->host_seg);
	if (ret) {
		close(fds[2]);
		return client_fail(ret, "cannot map the host cache (%llu bytes): %s",
				   (unsigned long long)rep->host_seg_size, strerror(-ret));
	}
	if (w->ring_seg.size < rep->ring_seg_size)
		return client_fail(-EBADMSG, "ring segment of %zu bytes, the reply announced %llu",
				   w->ring_seg.size, (unsigned long long)rep->ring_seg_size);
	ret = ring_seg_attach(w->ring_seg.base, w->ring_seg.size, &w->sq, &w->cq, &w->client_id);
	if (ret)
		return client_fail(ret, "invalid ring segment header: %s", strerror(-ret));
	if (w->client_id != rep->client_id)
		return client_fail(-EBADMSG, "ring segment of client %u, the reply says client %u",
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
			return client_fail(-EINVAL, "$%s=\"%s\": expected milliseconds (0: never)",
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

	client_errbuf[0] = '\0';
	if (!out)
		return client_fail(-EINVAL, "weightd_attach: NULL handle pointer");
	*out = NULL;
	if (opts)
		o = *opts;
	if (!ring_size_ok(o.sq_entries) || !ring_size_ok(o.cq_entries))
		return client_fail(-EINVAL,
				   "ring sizes must be powers of two in [%u, %u] (got %u, %u)",
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
		return client_fail(-ENOMEM, "out of memory");
	w->sock = -1;
	w->ring_seg.fd = -1;
	w->host_seg.fd = -1;
	w->spin_ns = (uint64_t)o.spin_us * 1000;
	w->timeout_ns = (uint64_t)timeout_ms * 1000000;
	pthread_mutex_init(&w->lock, NULL);
	ret = attach_resolve_path(socket_path, w->path, sizeof(w->path));
	if (ret < 0) {
		client_fail(ret, "cannot determine the daemon's socket path: %s", strerror(-ret));
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
			client_fail(ret, "%s", why);
			goto err;
		}
		ret = connect_to(w->path, &w->sock);
		if (ret)
			goto err;
		ret = attach_check_peer(w->sock, geteuid(), o.daemon_uid ? o.daemon_uid : (uid_t)-1,
					why, sizeof(why));
		if (ret) {
			client_fail(ret, "%s: %s", w->path, ret == -EPERM ? why : strerror(-ret));
			goto err;
		}
	}
	fill_hello(&hello, &o);
	ret = attach_send(w->sock, &hello, sizeof(hello), NULL, 0);
	if ((ret == -EPIPE || ret == -ECONNRESET) &&
	    recv_reply(w->sock, w->path, 0, &rep, fds) < 0 && rep.status < 0)
		goto err;	/* refused at accept (a per-uid limit): its reply says why */
	if (ret < 0) {
		client_fail(ret, "sending the hello to %s: %s", w->path, strerror(-ret));
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
		return client_fail(-EINVAL, "NULL handle");
	if (getsockopt(w->sock, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0)
		return client_fail(-errno, "SO_PEERCRED: %s", strerror(errno));
	return (int)cr.pid;
}

int weightd_fd(const struct weightd *w)
{
	return w ? w->sock : -EINVAL;
}

