/*
 * The handshake: a new connection's hello is checked (the allow-lists, the ABI, the ring
 * sizes, the per-uid limit of attached clients) and, when acceptable, the client is made: its
 * ring segment, the reply with the descriptors it maps, its lease and its shard. Also what a
 * reply needs that can be made ahead (the spare, below).
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/base/array.h"
#include "core/base/log.h"
#include "core/daemon/internal.h"
#include "core/tier/hostcache.h"
#include "shm/attach.h"

#define MOD "daemon"

/*
 * Refusals are log lines that any local process can cause at will, one per connection:
 * rate-limited, so that a flood of connections cannot flood the log (each line says how many
 * it stands for).
 */
static struct log_limit refuse_limit = LOG_LIMIT_INIT(20, 10000);

struct uid_use *daemon_uid_use(struct daemon *d, uid_t uid)
{
	for (size_t i = 0; i < d->n_uid_use; i++)
		if (d->uid_use[i].uid == uid)
			return &d->uid_use[i];
	if (wd_grow(&d->uid_use, &d->cap_uid_use, d->n_uid_use + 1, sizeof(*d->uid_use)))
		return NULL;
	d->uid_use[d->n_uid_use] = (struct uid_use){ .uid = uid };
	return &d->uid_use[d->n_uid_use++];
}

static bool peer_allowed(const struct daemon *d, const struct conn *cn)
{
	const struct daemon_config *cfg = &d->cfg;

	if (!cfg->n_allow_uids && !cfg->n_allow_gids)
		return cn->cred.uid == d->self_uid;
	for (size_t i = 0; i < cfg->n_allow_uids; i++)
		if (cfg->allow_uids[i] == cn->cred.uid)
			return true;
	for (size_t i = 0; i < cfg->n_allow_gids; i++) {
		if (cfg->allow_gids[i] == cn->cred.gid)
			return true;
		for (int k = 0; k < cn->n_groups; k++)
			if (cfg->allow_gids[i] == cn->groups[k])
				return true;
	}
	return false;
}

static bool pow2_in_range(uint32_t v)
{
	return v >= WD_RING_MIN && v <= WD_RING_MAX && !(v & (v - 1));
}

void daemon_refuse(struct conn *cn, int status, const char *fmt, ...)
{
	struct wd_hello_reply r = { .magic = WD_REPLY_MAGIC, .version = WD_ABI_VERSION,
				    .reply_size = sizeof(r), .status = status };
	uint64_t dropped;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(r.message, sizeof(r.message), fmt, ap);
	va_end(ap);
	if (log_limit_ok(&refuse_limit, &dropped))
		log_warn(MOD, "\"attach refused\" pid=%d uid=%u status=%d reason=\"%s\" "
			 "suppressed=%" PRIu64, (int)cn->cred.pid, (unsigned)cn->cred.uid, status,
			 r.message, dropped);
	attach_send(cn->fd, &r, sizeof(r), NULL, 0);
}

static void sanitize_name(char *dst, const char *src, size_t n)
{
	size_t i;

	for (i = 0; i < n && src[i]; i++)
		dst[i] = isprint((unsigned char)src[i]) && src[i] != '"' && src[i] != '\\' ?
			 src[i] : '?';
	dst[i] = '\0';
}

/*
 * What the reply to a hello carries that does not depend on the client, made ahead: a fresh
 * process waits for that reply, and making these on its behalf took most of the daemon's
 * ~190 us per hello (measured: creating and faulting in the ring segment ~80 us, opening
 * the two read-only descriptors through /proc/self/fd ~50 us).
 *
 * - reg_fd, host_fd: read-only descriptors of the registry and the host cache, opened at the
 *   first hello and sent to every client. SCM_RIGHTS gives each client its own descriptor
 *   of this one open file description; a client can map, fstat and read the seals through
 *   it, and nothing it could set on the shared description (file flags, offset, OFD locks)
 *   is used by the daemon, which maps through its own read-write descriptors, or by other
 *   clients, which only map. Neither segment is ever replaced while the daemon runs.
 * - ring: the next client's ring segment at the default ring sizes, created and faulted in
 *   when the control thread has been idle for DAEMON_SPARE_IDLE_MS (not right after a hello, when
 *   the new client's first requests want the CPU), so ring_seg_format() then writes pages
 *   that exist. A hello that asks for other sizes gets a segment made on the spot.
 */

struct attach_spare {
	int reg_fd, host_fd;		/* -1 until the first hello */
	struct shm_segment ring;	/* fd -1: none ready */
	bool failed;			/* the last try failed: none until the next hello */
};

static int64_t default_ring_size(void)
{
	struct ring_seg_params p = { .sq_entries = DAEMON_DEFAULT_SQ_ENTRIES };

	p.cq_entries = p.sq_entries * 2 > WD_RING_MAX ? WD_RING_MAX : p.sq_entries * 2;
	return ring_seg_size(&p, NULL);
}

static struct attach_spare *spare_get(struct daemon *d)
{
	if (!d->spare) {
		d->spare = calloc(1, sizeof(*d->spare));
		if (!d->spare)
			return NULL;
		d->spare->reg_fd = d->spare->host_fd = -1;
		d->spare->ring.fd = -1;
	}
	return d->spare;
}

bool daemon_spare_wanted(const struct daemon *d)
{
	return !d->spare || (d->spare->ring.fd < 0 && !d->spare->failed);
}

/* A failure only means that the next hello makes its own. */
void daemon_spare_make(struct daemon *d)
{
	struct attach_spare *sp = spare_get(d);
	int64_t size = default_ring_size();

	if (!sp || sp->ring.fd >= 0 || size <= 0)
		return;
	/* Out of descriptors or memory: no retry every DAEMON_SPARE_IDLE_MS, the next hello re-arms. */
	sp->failed = shm_segment_create("weightd-ring", (size_t)size, 0, &sp->ring) != 0;
	if (sp->failed) {
		sp->ring.fd = -1;
		return;
	}
	/* Faults every page in now (a memfd allocates on first write); format writes them again. */
	memset(sp->ring.base, 0, sp->ring.size);
}

/*
 * The ring segment of @size bytes for a new client: the spare when it has that size, else
 * a new one. Returns 0 or the negative errno of shm_segment_create().
 */
static int ring_segment_take(struct daemon *d, size_t size, struct shm_segment *out)
{
	struct attach_spare *sp = d->spare;

	if (sp)
		sp->failed = false;
	if (sp && sp->ring.fd >= 0 && sp->ring.size == size) {
		*out = sp->ring;
		memset(&sp->ring, 0, sizeof(sp->ring));
		sp->ring.fd = -1;
		return 0;
	}
	return shm_segment_create("weightd-ring", size, 0, out);
}

/*
 * The read-only registry and host cache descriptors to send (owned by the spare: the caller
 * does not close them). Returns 0, -ENOMEM, or the negative errno of the open, with the
 * message for the refusal in @what.
 */
static int attach_fds(struct daemon *d, int *reg_fd, int *host_fd, const char **what)
{
	struct attach_spare *sp = spare_get(d);

	*what = "the registry";
	if (!sp)
		return -ENOMEM;
	if (sp->reg_fd < 0 && (sp->reg_fd = registry_client_fd(d->reg)) < 0) {
		int ret = sp->reg_fd;

		sp->reg_fd = -1;
		return ret;
	}
	*what = "the host cache";
	if (sp->host_fd < 0 && (sp->host_fd = hostcache_client_fd(d->hc)) < 0) {
		int ret = sp->host_fd;

		sp->host_fd = -1;
		return ret;
	}
	*reg_fd = sp->reg_fd;
	*host_fd = sp->host_fd;
	return 0;
}

void daemon_spare_free(struct daemon *d)
{
	struct attach_spare *sp = d->spare;

	if (!sp)
		return;
	if (sp->reg_fd >= 0)
		close(sp->reg_fd);
	if (sp->host_fd >= 0)
		close(sp->host_fd);
	shm_segment_close(&sp->ring);
	free(sp);
	d->spare = NULL;
}

/*
 * Checks hello @h (@n bytes were received) from @cn: the peer may attach, the hello is one of
 * this ABI, the ring sizes it asks for are valid (they go to @p, defaults applied), and its
 * uid is under the limit of attached clients. Returns true, or false after a refusal was sent.
 */
static bool hello_ok(struct daemon *d, struct conn *cn, const struct wd_hello *h, ssize_t n,
		     struct ring_seg_params *p)
{
	struct uid_use *use;

	if (!peer_allowed(d, cn)) {
		daemon_refuse(cn, -EACCES, "uid %u gid %u may not attach (see --allow-user, "
			      "--allow-group)", (unsigned)cn->cred.uid, (unsigned)cn->cred.gid);
		return false;
	}
	if (n < 8 || h->magic != WD_HELLO_MAGIC) {
		daemon_refuse(cn, -EBADMSG, "bad hello: magic 0x%08x, expected 0x%08x", h->magic,
			      WD_HELLO_MAGIC);
		return false;
	}
	if (h->version != WD_ABI_VERSION) {
		daemon_refuse(cn, -EPROTONOSUPPORT, "client ABI %u, daemon ABI %u", h->version,
			      WD_ABI_VERSION);
		return false;
	}
	if ((size_t)n != sizeof(*h) || h->hello_size != sizeof(*h) ||
	    h->sqe_size != sizeof(struct wd_sqe) || h->cqe_size != sizeof(struct wd_cqe)) {
		daemon_refuse(cn, -EBADMSG, "bad hello: %zd bytes, hello_size %u, sqe %u, cqe %u; "
			      "daemon expects %zu, %zu, %zu", n, h->hello_size, h->sqe_size,
			      h->cqe_size, sizeof(*h), sizeof(struct wd_sqe),
			      sizeof(struct wd_cqe));
		return false;
	}
	if (h->flags) {
		daemon_refuse(cn, -EINVAL, "bad hello: unknown flags 0x%x", h->flags);
		return false;
	}
	p->sq_entries = h->sq_entries ? h->sq_entries : DAEMON_DEFAULT_SQ_ENTRIES;
	p->cq_entries = h->cq_entries ? h->cq_entries :
			(p->sq_entries * 2 > WD_RING_MAX ? WD_RING_MAX : p->sq_entries * 2);
	if (!pow2_in_range(p->sq_entries) || !pow2_in_range(p->cq_entries)) {
		daemon_refuse(cn, -EINVAL, "bad hello: sq_entries %u, cq_entries %u: powers of two "
			      "in [%u, %u] expected", h->sq_entries, h->cq_entries, WD_RING_MIN,
			      WD_RING_MAX);
		return false;
	}
	use = daemon_uid_use(d, cn->cred.uid);
	if (use && d->cfg.max_clients_per_uid && use->clients >= d->cfg.max_clients_per_uid) {
		daemon_refuse(cn, -EUSERS, "uid %u already has %u attached clients, the most one "
			      "user may have (max_clients_per_uid)", (unsigned)cn->cred.uid,
			      use->clients);
		return false;
	}
	return true;
}

/* A new client for connection @cn, from its hello @h; NULL when out of memory. */
static struct client *client_new(const struct conn *cn, const struct wd_hello *h)
{
	struct client *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	atomic_init(&c->refs, 1);
	c->fd = -1;
	c->seg.fd = -1;
	c->pid = cn->cred.pid;
	c->uid = cn->cred.uid;
	c->gid = cn->cred.gid;
	c->n_groups = cn->n_groups < CLIENT_MAX_GROUPS ? cn->n_groups : CLIENT_MAX_GROUPS;
	memcpy(c->groups, cn->groups, (size_t)c->n_groups * sizeof(gid_t));
	sanitize_name(c->name, h->client_name, sizeof(h->client_name));
	pthread_mutex_init(&c->pend_lock, NULL);
	return c;
}

/*
 * Gives @c its ring segment (the sizes in @p) and sends the reply that carries it with the
 * registry and host cache descriptors. Returns 0, or a negative errno after a refusal was
 * sent or the reply failed (logged); the caller then frees @c.
 */
static int hello_reply(struct daemon *d, struct conn *cn, struct client *c,
		       struct ring_seg_params *p)
{
	struct wd_hello_reply r = { .magic = WD_REPLY_MAGIC, .version = WD_ABI_VERSION,
				    .reply_size = sizeof(r), .n_fds = 3 };
	const char *what;
	int64_t size;
	int fds[3], ret;

	p->client_id = c->id;
	size = ring_seg_size(p, NULL);
	ret = size < 0 ? (int)size : ring_segment_take(d, (size_t)size, &c->seg);
	if (!ret)
		ret = ring_seg_format(c->seg.base, c->seg.size, p, &c->sq, &c->cq);
	if (ret) {
		daemon_refuse(cn, ret, "cannot create the ring segment: %s", strerror(-ret));
		return ret;
	}
	fds[0] = c->seg.fd;
	ret = attach_fds(d, &fds[1], &fds[2], &what);
	if (ret) {
		daemon_refuse(cn, ret, "cannot open %s: %s", what, strerror(-ret));
		return ret;
	}
	r.client_id = c->id;
	r.ring_seg_size = c->seg.size;
	r.registry_seg_size = registry_segment(d->reg)->size;
	r.host_seg_size = hostcache_size(d->hc);
	/* Counted before the reply, so the client's first look at the registry includes it. */
	pthread_mutex_lock(&d->state_lock);
	registry_counter_add(d->reg, WD_CTR_CLIENTS, 1);
	registry_counter_add(d->reg, WD_CTR_RING_SEGS, 1);
	pthread_mutex_unlock(&d->state_lock);
	ret = attach_send(cn->fd, &r, sizeof(r), fds, 3);
	if (ret) {
		log_warn(MOD, "\"attach reply failed\" pid=%d err=%d", (int)c->pid, ret);
		pthread_mutex_lock(&d->state_lock);
		registry_counter_add(d->reg, WD_CTR_CLIENTS, -1);
		registry_counter_add(d->reg, WD_CTR_RING_SEGS, -1);
		pthread_mutex_unlock(&d->state_lock);
		return ret;
	}
	return 0;
}

/*
 * The client is live from here: the connection's socket becomes its lease, and it joins
 * shard @s and the per-uid count of attached clients.
 */
static void client_join(struct daemon *d, struct conn *cn, struct client *c, struct shard *s,
			const struct ring_seg_params *p)
{
	struct uid_use *use;

	c->fd = cn->fd;
	cn->fd = -1;
	pthread_mutex_lock(&d->clients_lock);
	c->shard = s;
	pthread_mutex_lock(&d->state_lock);
	lease_init(&d->leases, &c->lease);
	pthread_mutex_unlock(&d->state_lock);
	s->members[s->n_members++] = c;
	d->n_clients++;
	atomic_fetch_add(&s->gen, 1);
	pthread_mutex_unlock(&d->clients_lock);
	use = daemon_uid_use(d, c->uid);	/* found: the connection is counted since its accept */
	if (use)
		use->clients++;
	daemon_shard_wake(s);
	log_info(MOD, "\"attach\" client=%u pid=%d uid=%u gid=%u name=\"%s\" sq=%u cq=%u "
		 "shard=%u", c->id, (int)c->pid, (unsigned)c->uid, (unsigned)c->gid, c->name,
		 p->sq_entries, p->cq_entries, s->idx);
}

struct client *daemon_hello(struct daemon *d, struct conn *cn, const void *buf, ssize_t n)
{
	struct wd_hello h = { 0 };
	struct ring_seg_params p = { 0 };
	struct client *c;
	struct shard *s;

	memcpy(&h, buf, (size_t)n < sizeof(h) ? (size_t)n : sizeof(h));
	if (!hello_ok(d, cn, &h, n, &p))
		return NULL;
	c = client_new(cn, &h);
	if (!c) {
		daemon_refuse(cn, -ENOMEM, "out of memory");
		return NULL;
	}
	pthread_mutex_lock(&d->clients_lock);
	c->id = d->next_client_id++;
	s = daemon_shard_pick(d);
	pthread_mutex_unlock(&d->clients_lock);
	if (!s) {
		daemon_refuse(cn, -EUSERS, "too many clients (%u)",
			      DAEMON_MAX_SHARDS * DAEMON_SHARD_CLIENTS);
		goto fail;
	}
	if (hello_reply(d, cn, c, &p))
		goto fail;
	client_join(d, cn, c, s, &p);
	return c;
fail:
	shm_segment_close(&c->seg);
	pthread_mutex_destroy(&c->pend_lock);
	free(c);
	return NULL;
}
