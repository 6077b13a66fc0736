/*
 * The daemon's lifecycle, threads and client table; see core/daemon/daemon.h for the thread model
 * and core/daemon/ops.h for the shared state and its locks.
 */
#include "core/daemon/daemon.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <inttypes.h>
#include <pwd.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/tier/devcache.h"
#include "core/daemon/alert.h"
#include "core/base/array.h"
#include "core/tier/hostcache.h"
#include "core/base/log.h"
#include "core/daemon/metrics.h"
#include "core/daemon/ops.h"
#include "core/policy/recovery.h"
#include "core/daemon/reload.h"
#include "core/base/statedir.h"
#include "shm/attach.h"

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
#define MAX_PEER_GROUPS 64

/*
 * Registry capacities: registry_models and registry_tensors (components: four per model), or
 * twice what the catalog holds when that is more. Records are never removed, so what a later
 * SCAN finds beyond that is refused and reported (daemon_publish()) until a restart.
 */
#define REG_COMPS_PER_MODEL 4u

enum conn_kind { CONN_LISTEN, CONN_SIGNAL, CONN_STOP, CONN_PENDING, CONN_CLIENT, CONN_ALERT,
		CONN_PSI };

/* One epoll registration of the control thread. */
struct conn {
	enum conn_kind kind;
	int fd;
	struct conn *next, *prev;	/* d->conns, for PENDING and CLIENT */
	struct ucred cred;
	gid_t groups[MAX_PEER_GROUPS];
	int n_groups;
	uint64_t deadline_ns;		/* PENDING: drop when no hello by then */
	struct client *c;		/* CLIENT */
};

/* Connections and attached clients of one uid (d->uid_use, control thread only). */
struct uid_use {
	uid_t uid;
	uint32_t conns, clients;
};

/*
 * Log lines that any local process can cause at will, one per connection: rate-limited, so
 * that a flood of connections cannot flood the log (each line says how many it stands for).
 */
static struct log_limit accept_limit = LOG_LIMIT_INIT(5, 10000);
static struct log_limit refuse_limit = LOG_LIMIT_INIT(20, 10000);
static struct log_limit hello_limit = LOG_LIMIT_INIT(5, 10000);

/* How long the listening socket is left unwatched when an accept fails for lack of fds. */
#define ACCEPT_PAUSE_NS (100ull * 1000 * 1000)
/* Connections owing a hello are swept at most this often (the sweep walks all of them). */
#define SWEEP_EVERY_NS (50ull * 1000 * 1000)

static struct conn listen_watch = { .kind = CONN_LISTEN };
static struct conn signal_watch = { .kind = CONN_SIGNAL };
static struct conn stop_watch = { .kind = CONN_STOP };
static struct conn alert_watch = { .kind = CONN_ALERT };
static struct conn psi_watch = { .kind = CONN_PSI };

/* ---- small parsers -------------------------------------------------------------------- */

void daemon_config_init(struct daemon_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->spin_us = DAEMON_DEFAULT_SPIN_US;
	cfg->scan_at_start = true;
	cfg->quarantine_after = RECOVERY_QUARANTINE_AFTER;
	cfg->pressure_pct = DAEMON_DEFAULT_PRESSURE_PCT;
	cfg->pressure_target_pct = DAEMON_DEFAULT_PRESSURE_TARGET_PCT;
	cfg->hello_timeout_ms = DAEMON_HELLO_TIMEOUT_MS;
	cfg->max_conns_per_uid = DAEMON_DEFAULT_UID_CONNECTIONS;
	cfg->max_clients_per_uid = DAEMON_DEFAULT_UID_CLIENTS;
	alert_config_init(&cfg->alerts);
}

static int parse_id(const char *s, unsigned long *out)
{
	char *end;

	if (!s || !*s)
		return -EINVAL;
	if (!isdigit((unsigned char)*s))
		return -ENOENT;
	errno = 0;
	*out = strtoul(s, &end, 10);
	if (errno || *end || *out > UINT32_MAX - 1)
		return -EINVAL;
	return 0;
}

int daemon_parse_user(const char *s, uid_t *uid)
{
	unsigned long v;
	struct passwd *pw;
	int ret = parse_id(s, &v);

	if (ret == 0) {
		*uid = (uid_t)v;
		return 0;
	}
	if (ret != -ENOENT)
		return ret;
	pw = getpwnam(s);
	if (!pw)
		return -ENOENT;
	*uid = pw->pw_uid;
	return 0;
}

int daemon_parse_group(const char *s, gid_t *gid)
{
	unsigned long v;
	struct group *gr;
	int ret = parse_id(s, &v);

	if (ret == 0) {
		*gid = (gid_t)v;
		return 0;
	}
	if (ret != -ENOENT)
		return ret;
	gr = getgrnam(s);
	if (!gr)
		return -ENOENT;
	*gid = gr->gr_gid;
	return 0;
}

const char *daemon_socket_path(const struct daemon *d)
{
	return d->sock_path;
}

const char *daemon_state_dir(const struct daemon *d)
{
	return d->state_dir;
}

/* ---- clients ------------------------------------------------------------------------- */

void daemon_client_get(struct client *c)
{
	atomic_fetch_add(&c->refs, 1);
}

static void free_pending(struct client *c)
{
	while (c->pend_head) {
		struct pending *p = c->pend_head;

		c->pend_head = p->next;
		free(p);
	}
	c->pend_tail = NULL;
}

void daemon_client_put(struct daemon *d, struct client *c)
{
	if (atomic_fetch_sub(&c->refs, 1) != 1)
		return;
	pthread_mutex_lock(&d->state_lock);
	lease_free(&d->leases, &c->lease);
	registry_counter_add(d->reg, WD_CTR_RING_SEGS, -1);
	pthread_mutex_unlock(&d->state_lock);
	shm_segment_close(&c->seg);
	if (c->fd >= 0)
		close(c->fd);
	free_pending(c);
	pthread_mutex_destroy(&c->pend_lock);
	free(c);
}

static void shard_wake(struct shard *s)
{
	pthread_mutex_lock(&s->wake_lock);
	if (ring_prod_space(&s->wake_prod) > 0) {
		uint32_t *tok = ring_prod_slot(&s->wake_prod);

		*tok = 1;
		ring_prod_advance(&s->wake_prod);
		ring_prod_publish(&s->wake_prod);
	}
	ring_notify(&s->wake_prod);
	pthread_mutex_unlock(&s->wake_lock);
}

int daemon_post(struct daemon *d, struct client *c, const struct wd_cqe *cqe,
		struct pending **final, const void *data, size_t len)
{
	struct pending *p;

	if (len > WD_DATA_SLOT_SIZE)
		len = WD_DATA_SLOT_SIZE;
	pthread_mutex_lock(&c->pend_lock);
	p = c->pend_tail;
	/* Coalesce: a newer progress report replaces one the shard has not delivered yet. */
	if (!final && p && !p->final && p->cqe.user_data == cqe->user_data) {
		p->cqe = *cqe;
		pthread_mutex_unlock(&c->pend_lock);
		return 0;
	}
	pthread_mutex_unlock(&c->pend_lock);
	if (final) {
		p = *final;
		*final = NULL;
	} else {
		p = malloc(sizeof(*p));
		if (!p)
			return -ENOMEM;
	}
	p->next = NULL;
	p->cqe = *cqe;
	p->final = final != NULL;
	p->cqe.data_len = (uint16_t)len;
	if (len)
		memcpy(p->data, data, len);
	pthread_mutex_lock(&c->pend_lock);
	if (c->pend_tail)
		c->pend_tail->next = p;
	else
		c->pend_head = p;
	c->pend_tail = p;
	atomic_fetch_add(&c->npending, 1);
	pthread_mutex_unlock(&c->pend_lock);
	shard_wake(c->shard);
	return 0;
}

/*
 * Copies the worker's completions into @c's CQ while there is room: a final one always fits
 * (its slot was reserved when the request was taken), a progress one only when a slot is
 * left beyond the reservations, else it is dropped. Returns how many were written; *@space
 * is decreased accordingly and *@errors increased by the finals that carry an error. Called by the CQ's only producer (the shard, or the control
 * thread once the shards are gone).
 */
static int deliver_pending(struct client *c, int *space, uint64_t *errors)
{
	int n = 0;

	pthread_mutex_lock(&c->pend_lock);
	while (c->pend_head) {
		struct pending *p = c->pend_head;

		if (p->final ? *space <= 0 : *space - (int)c->inflight <= 0) {
			if (p->final)
				break;
		} else {
			memcpy(ring_prod_slot(&c->cq), &p->cqe, sizeof(p->cqe));
			if (p->cqe.data_len)
				memcpy(ring_prod_data(&c->cq), p->data, p->cqe.data_len);
			ring_prod_advance(&c->cq);
			(*space)--;
			n++;
			if (p->final) {
				c->inflight--;
				if (p->cqe.res < 0) {
					c->errors++;
					(*errors)++;
					metrics_note_error(p->cqe.res);
				}
			}
		}
		c->pend_head = p->next;
		if (!c->pend_head)
			c->pend_tail = NULL;
		atomic_fetch_sub(&c->npending, 1);
		free(p);
	}
	pthread_mutex_unlock(&c->pend_lock);
	return n;
}

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

void daemon_flush_counters(struct shard *s)
{
	metrics_flush_local(s->d->reg);
	if (!s->flush_requests && !s->flush_errors)
		return;
	pthread_mutex_lock(&s->d->state_lock);
	registry_counter_add(s->d->reg, WD_CTR_REQUESTS, (int64_t)s->flush_requests);
	registry_counter_add(s->d->reg, WD_CTR_ERRORS, (int64_t)s->flush_errors);
	pthread_mutex_unlock(&s->d->state_lock);
	s->flush_requests = s->flush_errors = 0;
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
	produced = atomic_load(&c->npending) ? deliver_pending(c, &space, &s->flush_errors) : 0;
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

static int shard_start(struct daemon *d, struct shard *s, unsigned int idx)
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

/* Picks the least loaded shard, starting one when all are full. Under clients_lock. */
static struct shard *shard_pick(struct daemon *d)
{
	struct shard *best = NULL;

	for (unsigned int i = 0; i < d->n_shards; i++)
		if (d->shards[i].n_members < DAEMON_SHARD_CLIENTS &&
		    (!best || d->shards[i].n_members < best->n_members))
			best = &d->shards[i];
	if (best || d->n_shards == DAEMON_MAX_SHARDS)
		return best;
	if (shard_start(d, &d->shards[d->n_shards], d->n_shards)) {
		log_error(MOD, "\"cannot start a serving thread\" shard=%u", d->n_shards);
		return NULL;
	}
	log_info(MOD, "\"serving thread started\" shard=%u", d->n_shards);
	return &d->shards[d->n_shards++];
}

/* ---- registry publication -------------------------------------------------------------- */

struct pub_ctx {
	struct daemon *d;
	struct catalog_model *m;
	uint32_t first_comp;
	int err;
	struct publish_report *rep;
};

/* Counts a refusal of the registry in @rep, keeping the first one's cause and target. */
static void note_left(struct publish_report *rep, int err, const char *model, const char *tensor)
{
	if (!rep->err) {
		rep->err = err;
		if (tensor)
			snprintf(rep->first, sizeof(rep->first), "model %s, tensor %.64s%s (%zu "
				 "bytes)", model, tensor, strlen(tensor) > 64 ? "..." : "",
				 strlen(tensor));
		else
			snprintf(rep->first, sizeof(rep->first), "model %s", model);
	}
}

static int pub_tensor(const struct catalog_tensor *t, void *arg)
{
	struct pub_ctx *p = arg;
	struct registry_tensor_info ti = { .name = t->name, .shape = t->shape,
					   .nbytes = t->end - t->begin };
	uint32_t tid;
	size_t k;
	int ret;

	for (k = 0; k < p->m->n_components; k++)
		if (!strcmp(p->m->components[k].name, t->component))
			break;
	if (k == p->m->n_components)
		return 0;
	ti.component = p->first_comp + (uint32_t)k;
	ti.dtype = t->dtype < 0 ? 0xff : (uint8_t)t->dtype;
	ti.rank = (uint8_t)(t->rank > WD_SHAPE_MAX ? WD_SHAPE_MAX : t->rank);
	ret = registry_add_tensor(p->d->reg, &ti, &tid);
	if (ret == -EEXIST || ret == -ENAMETOOLONG || ret == -EINVAL || ret == -ENOSPC) {
		/* Never silent: counted, and reported by daemon_publish() and the SCAN reply. */
		p->rep->tensors_left++;
		note_left(p->rep, ret, p->m->name, t->name);
		return 0;
	}
	if (ret) {
		p->err = ret;
		return ret;
	}
	/* Absent on every tier: no host offset yet. */
	registry_set_tensor_location(p->d->reg, tid, 0, UINT64_MAX);
	return 0;
}

static uint64_t model_fingerprint(const struct catalog_model *m)
{
	XXH3_state_t *st = XXH3_createState();
	uint64_t h;

	if (!st)
		return 0;
	XXH3_64bits_reset(st);
	for (size_t i = 0; i < m->n_components; i++) {
		const struct catalog_component *c = &m->components[i];

		XXH3_64bits_update(st, c->name, strlen(c->name) + 1);
		for (size_t k = 0; k < c->n_files; k++) {
			XXH3_64bits_update(st, &c->files[k].content_hash, 8);
			XXH3_64bits_update(st, &c->files[k].fp.size, 8);
		}
	}
	h = XXH3_64bits_digest(st);
	XXH3_freeState(st);
	return h;
}

static uint64_t comp_fingerprint(const struct catalog_component *c)
{
	uint64_t h = 0;

	for (size_t k = 0; k < c->n_files; k++)
		h = XXH3_64bits_withSeed(&c->files[k].content_hash, 8, h);
	return h;
}

static int models_reserve(struct daemon *d, size_t n)
{
	struct model_ent *m;
	size_t cap;

	if (n <= d->cap_models)
		return 0;
	cap = d->cap_models ? 2 * d->cap_models : 64;
	while (cap < n)
		cap *= 2;
	m = realloc(d->models, cap * sizeof(*m));
	if (!m)
		return -ENOMEM;
	d->models = m;
	d->cap_models = cap;
	return 0;
}

/*
 * Adds @m to the registry and the model table. Under state_lock. A model whose name the
 * registry refuses is skipped; one that runs out of room part-way stays published with what
 * fit (it is counted in the model table either way, so indices keep matching the registry).
 * Returns 0 or a negative errno.
 */
static int add_model(struct daemon *d, struct catalog *cat, struct catalog_model *m,
		     uint64_t fp, struct publish_report *rep)
{
	struct pub_ctx p = { .d = d, .m = m, .rep = rep };
	char arch[WD_ARCH_MAX];
	uint32_t id, cid;
	int ret;

	ret = models_reserve(d, d->n_models + 1);
	if (ret)
		return ret;
	snprintf(arch, sizeof(arch), "%s", m->arch ? m->arch : "");
	ret = registry_add_model(d->reg, m->name, arch, fp, &id);
	if (ret)
		return ret;
	d->models[id] = (struct model_ent){ .fingerprint = fp };
	d->n_models = id + 1;
	for (size_t i = 0; i < m->n_components; i++) {
		ret = registry_add_component(d->reg, id, m->components[i].name,
					     comp_fingerprint(&m->components[i]), &cid);
		if (ret)
			return ret;
		if (i == 0)
			d->models[id].first_comp = p.first_comp = cid;
		d->models[id].n_comps++;
	}
	ret = catalog_model_tensors(cat, m->id, pub_tensor, &p);
	return p.err ? p.err : ret;
}

int daemon_publish(struct daemon *d, struct catalog *cat, struct publish_report *out)
{
	struct publish_report rep = { 0 };
	struct catalog_model_list list;
	bool *seen = NULL;
	size_t old_n;
	int ret, added = 0;

	ret = catalog_list_models(cat, &list);
	if (ret)
		return ret;
	pthread_mutex_lock(&d->state_lock);
	old_n = d->n_models;
	pthread_mutex_unlock(&d->state_lock);
	/* Only this thread adds models, so old_n stays the count of published ones. */
	seen = calloc(old_n + 1, sizeof(*seen));
	if (!seen) {
		catalog_model_list_free(&list);
		return -ENOMEM;
	}
	for (size_t i = 0; i < list.n; i++) {
		struct catalog_model m;
		uint32_t id, first = WD_ID_NONE;
		uint64_t fp;

		/* A large catalog takes a while (the worker publishes it after the start):
		 * SIGTERM must not wait for all of it. */
		if (atomic_load(&d->stopping))
			break;
		ret = catalog_get_model(cat, list.models[i].name, &m);
		if (ret) {
			log_warn(MOD, "\"cannot read model from catalog\" model=\"%s\" err=%d",
				 list.models[i].name, ret);
			continue;
		}
		fp = model_fingerprint(&m);
		pthread_mutex_lock(&d->state_lock);
		if (registry_find_model(&d->view, m.name, &id, NULL) == 0 && id < old_n) {
			struct model_ent *e = &d->models[id];
			bool stale = e->fingerprint != fp;

			seen[id] = true;
			if (stale != e->stale) {
				e->stale = stale;
				registry_set_model_flags(d->reg, id, stale ? WD_REG_MODEL_F_STALE : 0);
			}
			if (e->n_comps == m.n_components)
				first = e->first_comp;
		} else if (!registry_has_room(d->reg, 1, m.n_components, m.n_tensors, 0)) {
			/* Whole or not at all: a half-published model would serve "no such
			 * tensor" for what did not fit. */
			rep.models_left++;
			rep.tensors_left += m.n_tensors;
			note_left(&rep, -ENOSPC, m.name, NULL);
		} else {
			ret = add_model(d, cat, &m, fp, &rep);
			if (ret)
				log_warn(MOD, "\"model not fully published\" model=\"%s\" err=%d",
					 m.name, ret);
			added++;
		}
		pthread_mutex_unlock(&d->state_lock);
		/* Outside state_lock: the host tier takes its own lock first (core/tier/hostcache.h). */
		for (size_t k = 0; first != WD_ID_NONE && k < m.n_components; k++)
			hostcache_note_files(d, first + (uint32_t)k, &m.components[k]);
		catalog_model_free(&m);
	}
	pthread_mutex_lock(&d->state_lock);
	for (size_t id = 0; id < old_n; id++) {
		if (seen[id] || d->models[id].stale)
			continue;
		d->models[id].stale = true;
		registry_set_model_flags(d->reg, (uint32_t)id, WD_REG_MODEL_F_STALE);
	}
	ret = lease_table_grow(&d->leases, d->n_models);
	registry_publish(d->reg);
	pthread_mutex_unlock(&d->state_lock);
	free(seen);
	catalog_model_list_free(&list);
	if (rep.models_left || rep.tensors_left) {
		struct registry_usage u;

		registry_usage(&d->view, &u);
		log_warn(MOD, "\"not published: the registry refused them\" models=%u tensors=%"
			 PRIu64 " err=%d first=\"%s\" models_used=%u/%u components_used=%u/%u "
			 "tensors_used=%u/%u names_used=%" PRIu64 "/%" PRIu64 " hint=\"%s\"",
			 rep.models_left, rep.tensors_left, rep.err, rep.first, u.models,
			 u.model_cap, u.comps, u.comp_cap, u.tensors, u.tensor_cap, u.names_used,
			 u.names_size, rep.err == -ENOSPC ? "restart weightd: it sizes the "
			 "registry from the catalog" : "see docs/security.md");
	}
	if (out)
		*out = rep;
	return ret ? ret : added;
}

/* ---- worker ------------------------------------------------------------------------------ */

int daemon_queue_job(struct daemon *d, struct job *j)
{
	pthread_mutex_lock(&d->job_lock);
	if (d->worker_stop) {
		pthread_mutex_unlock(&d->job_lock);
		return -ECANCELED;
	}
	if (d->job_tail)
		d->job_tail->next = j;
	else
		d->job_head = j;
	d->job_tail = j;
	pthread_cond_signal(&d->job_cond);
	pthread_mutex_unlock(&d->job_lock);
	return 0;
}

/*
 * The worker's first step: PRAGMA quick_check of the catalog (seconds for a large one, which
 * is why it does not run before the daemon answers). A catalog that fails it is moved aside
 * and replaced with an empty one that the scan below fills; the control thread raises the
 * alert. The worker owns d->cat once the daemon runs (every job that reads the catalog runs
 * here), and nothing was published from it yet, so the swap races with nobody.
 */
static void check_catalog(struct daemon *d)
{
	char why[sizeof(d->catalog_why)];
	uint64_t t0 = wd_now_ns();
	int ret = catalog_quick_check(d->cat, why, sizeof(why));

	if (ret != -EBADMSG) {
		if (ret)
			log_warn(MOD, "\"cannot check the catalog\" err=%d", ret);
		else
			log_info(MOD, "\"catalog checked\" ms=%.1f", (wd_now_ns() - t0) / 1e6);
		return;
	}
	catalog_close(d->cat);
	d->cat = NULL;
	ret = catalog_move_aside(d->state_dir, d->catalog_aside, sizeof(d->catalog_aside));
	if (!ret)
		ret = catalog_open(d->state_dir, &d->cat);
	if (ret) {
		/* Keep serving from what is there; the operator sees why in the log. */
		log_error(MOD, "\"the catalog is corrupt and cannot be replaced\" check=\"%s\" "
			  "err=%d", why, ret);
		d->catalog_aside[0] = '\0';
		if (!d->cat && catalog_open(d->state_dir, &d->cat))
			d->cat = NULL;
		return;
	}
	snprintf(d->catalog_why, sizeof(d->catalog_why), "%s", why);
	log_error(MOD, "\"the catalog was corrupt: moved aside, rebuilding it from a scan "
		  "(tags and notes are in the old file)\" moved_to=%s check=\"%s\"",
		  d->catalog_aside, d->catalog_why);
	/* Pairs with the control thread's atomic_exchange(): it then reads the two strings. */
	atomic_store(&d->catalog_rebuilt, true);
}

static void *worker_main(void *arg)
{
	struct daemon *d = arg;

	if (!d->catalog_aside[0])
		check_catalog(d);
	if (!d->cat) {
		log_error(MOD, "\"no catalog: the worker stops\"");
		return NULL;
	}

	/*
	 * What the catalog held at start is published here rather than in daemon_create(),
	 * so that the control thread answers (status, attach) while a large catalog is read.
	 */
	int ret = daemon_publish(d, d->cat, NULL);

	if (ret < 0)
		log_error(MOD, "\"cannot publish the catalog\" err=%d", ret);
	else
		log_info(MOD, "\"catalog published\" models=%d", ret);
	/* A catalog rebuilt from scratch (catalog_open_repair()) is filled again at once. */
	if (d->cfg.scan_at_start || d->catalog_aside[0])
		ops_scan_roots(d);
	for (;;) {
		struct job *j;

		pthread_mutex_lock(&d->job_lock);
		while (!d->job_head && !d->worker_stop && !d->rescan)
			pthread_cond_wait(&d->job_cond, &d->job_lock);
		if (d->rescan && !d->worker_stop) {
			/* A reload changed the model roots (core/daemon/reload.h). */
			pthread_mutex_unlock(&d->job_lock);
			reload_take_roots(d);
			ops_scan_roots(d);
			continue;
		}
		j = d->job_head;
		if (!j) {
			pthread_mutex_unlock(&d->job_lock);
			break;
		}
		d->job_head = j->next;
		if (!d->job_head)
			d->job_tail = NULL;
		pthread_mutex_unlock(&d->job_lock);
		ops_run_job(d, j);
		/* A job with no client is the daemon's own (a prefetch). */
		if (j->c)
			daemon_client_put(d, j->c);
		free(j->spare);
		free(j);
	}
	return NULL;
}

/* ---- attach ------------------------------------------------------------------------------ */

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

/* Sends a refusal; the caller closes the connection. */
static void WD_PRINTF(3, 4) refuse(struct conn *cn, int status, const char *fmt, ...)
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
 *   when the control thread has been idle for SPARE_IDLE_MS (not right after a hello, when
 *   the new client's first requests want the CPU), so ring_seg_format() then writes pages
 *   that exist. A hello that asks for other sizes gets a segment made on the spot.
 */
#define SPARE_IDLE_MS 2

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

/* True when the control thread should make a spare ring segment once idle. */
static bool spare_wanted(const struct daemon *d)
{
	return !d->spare || (d->spare->ring.fd < 0 && !d->spare->failed);
}

/* Makes the spare ring segment; a failure only means the next hello makes its own. */
static void spare_ring_make(struct daemon *d)
{
	struct attach_spare *sp = spare_get(d);
	int64_t size = default_ring_size();

	if (!sp || sp->ring.fd >= 0 || size <= 0)
		return;
	/* Out of descriptors or memory: no retry every SPARE_IDLE_MS, the next hello re-arms. */
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
	if (sp->host_fd < 0 && (sp->host_fd = hostcache_client_fd(d)) < 0) {
		int ret = sp->host_fd;

		sp->host_fd = -1;
		return ret;
	}
	*reg_fd = sp->reg_fd;
	*host_fd = sp->host_fd;
	return 0;
}

static void spare_free(struct daemon *d)
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

/* The entry of @uid in d->uid_use, created with zero counts; NULL when out of memory. */
static struct uid_use *uid_use(struct daemon *d, uid_t uid)
{
	for (size_t i = 0; i < d->n_uid_use; i++)
		if (d->uid_use[i].uid == uid)
			return &d->uid_use[i];
	if (wd_grow(&d->uid_use, &d->cap_uid_use, d->n_uid_use + 1, sizeof(*d->uid_use)))
		return NULL;
	d->uid_use[d->n_uid_use] = (struct uid_use){ .uid = uid };
	return &d->uid_use[d->n_uid_use++];
}

/* A connection of @uid closed; @client: it was an attached client. */
static void uid_release(struct daemon *d, uid_t uid, bool client)
{
	for (size_t i = 0; i < d->n_uid_use; i++) {
		struct uid_use *u = &d->uid_use[i];

		if (u->uid != uid)
			continue;
		if (u->conns)
			u->conns--;
		if (client && u->clients)
			u->clients--;
		if (!u->conns)
			*u = d->uid_use[--d->n_uid_use];
		return;
	}
}

/*
 * Checks a hello and, when it is acceptable, creates the client: its ring segment, its
 * lease, its shard. Returns the client, or NULL after a refusal was sent.
 */
static struct client *handshake(struct daemon *d, struct conn *cn, const void *buf, ssize_t n)
{
	struct wd_hello h = { 0 };
	struct ring_seg_params p = { 0 };
	struct uid_use *use;
	struct wd_hello_reply r = { .magic = WD_REPLY_MAGIC, .version = WD_ABI_VERSION,
				    .reply_size = sizeof(r), .n_fds = 3 };
	struct client *c;
	struct shard *s;
	const char *what;
	int64_t size;
	int fds[3], ret;

	memcpy(&h, buf, (size_t)n < sizeof(h) ? (size_t)n : sizeof(h));
	if (!peer_allowed(d, cn)) {
		refuse(cn, -EACCES, "uid %u gid %u may not attach (see --allow-user, --allow-group)",
		       (unsigned)cn->cred.uid, (unsigned)cn->cred.gid);
		return NULL;
	}
	if (n < 8 || h.magic != WD_HELLO_MAGIC) {
		refuse(cn, -EBADMSG, "bad hello: magic 0x%08x, expected 0x%08x", h.magic,
		       WD_HELLO_MAGIC);
		return NULL;
	}
	if (h.version != WD_ABI_VERSION) {
		refuse(cn, -EPROTONOSUPPORT, "client ABI %u, daemon ABI %u", h.version,
		       WD_ABI_VERSION);
		return NULL;
	}
	if ((size_t)n != sizeof(h) || h.hello_size != sizeof(h) ||
	    h.sqe_size != sizeof(struct wd_sqe) || h.cqe_size != sizeof(struct wd_cqe)) {
		refuse(cn, -EBADMSG, "bad hello: %zd bytes, hello_size %u, sqe %u, cqe %u; daemon "
		       "expects %zu, %zu, %zu", n, h.hello_size, h.sqe_size, h.cqe_size,
		       sizeof(h), sizeof(struct wd_sqe), sizeof(struct wd_cqe));
		return NULL;
	}
	if (h.flags) {
		refuse(cn, -EINVAL, "bad hello: unknown flags 0x%x", h.flags);
		return NULL;
	}
	p.sq_entries = h.sq_entries ? h.sq_entries : DAEMON_DEFAULT_SQ_ENTRIES;
	p.cq_entries = h.cq_entries ? h.cq_entries :
		       (p.sq_entries * 2 > WD_RING_MAX ? WD_RING_MAX : p.sq_entries * 2);
	if (!pow2_in_range(p.sq_entries) || !pow2_in_range(p.cq_entries)) {
		refuse(cn, -EINVAL, "bad hello: sq_entries %u, cq_entries %u: powers of two in "
		       "[%u, %u] expected", h.sq_entries, h.cq_entries, WD_RING_MIN, WD_RING_MAX);
		return NULL;
	}
	use = uid_use(d, cn->cred.uid);
	if (use && d->cfg.max_clients_per_uid && use->clients >= d->cfg.max_clients_per_uid) {
		refuse(cn, -EUSERS, "uid %u already has %u attached clients, the most one user may "
		       "have (max_clients_per_uid)", (unsigned)cn->cred.uid, use->clients);
		return NULL;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		refuse(cn, -ENOMEM, "out of memory");
		return NULL;
	}
	atomic_init(&c->refs, 1);
	c->fd = -1;
	c->seg.fd = -1;
	c->pid = cn->cred.pid;
	c->uid = cn->cred.uid;
	c->gid = cn->cred.gid;
	c->n_groups = cn->n_groups < CLIENT_MAX_GROUPS ? cn->n_groups : CLIENT_MAX_GROUPS;
	memcpy(c->groups, cn->groups, (size_t)c->n_groups * sizeof(gid_t));
	sanitize_name(c->name, h.client_name, sizeof(h.client_name));
	pthread_mutex_init(&c->pend_lock, NULL);

	pthread_mutex_lock(&d->clients_lock);
	c->id = d->next_client_id++;
	s = shard_pick(d);
	pthread_mutex_unlock(&d->clients_lock);
	if (!s) {
		refuse(cn, -EUSERS, "too many clients (%u)",
		       DAEMON_MAX_SHARDS * DAEMON_SHARD_CLIENTS);
		goto fail;
	}
	p.client_id = c->id;
	size = ring_seg_size(&p, NULL);
	ret = size < 0 ? (int)size : ring_segment_take(d, (size_t)size, &c->seg);
	if (!ret)
		ret = ring_seg_format(c->seg.base, c->seg.size, &p, &c->sq, &c->cq);
	if (ret) {
		refuse(cn, ret, "cannot create the ring segment: %s", strerror(-ret));
		goto fail;
	}
	fds[0] = c->seg.fd;
	ret = attach_fds(d, &fds[1], &fds[2], &what);
	if (ret) {
		refuse(cn, ret, "cannot open %s: %s", what, strerror(-ret));
		goto fail;
	}
	r.client_id = c->id;
	r.ring_seg_size = c->seg.size;
	r.registry_seg_size = registry_segment(d->reg)->size;
	r.host_seg_size = hostcache_size(d);
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
		goto fail;
	}
	/* From here the client is live: the connection's socket is its lease. */
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
	use = uid_use(d, c->uid);	/* found: the connection is counted since its accept */
	if (use)
		use->clients++;
	shard_wake(s);
	log_info(MOD, "\"attach\" client=%u pid=%d uid=%u gid=%u name=\"%s\" sq=%u cq=%u "
		 "shard=%u", c->id, (int)c->pid, (unsigned)c->uid, (unsigned)c->gid, c->name,
		 p.sq_entries, p.cq_entries, s->idx);
	return c;
fail:
	shm_segment_close(&c->seg);
	pthread_mutex_destroy(&c->pend_lock);
	free(c);
	return NULL;
}

static void pins_changed(uint32_t model, void *arg)
{
	struct daemon *d = arg;

	registry_set_model_pins(d->reg, model, lease_model_pins(&d->leases, model));
}

static void conn_unlink(struct daemon *d, struct conn *cn)
{
	if (cn->prev)
		cn->prev->next = cn->next;
	else
		d->conns = cn->next;
	if (cn->next)
		cn->next->prev = cn->prev;
}

static void conn_close(struct daemon *d, struct conn *cn)
{
	uid_release(d, cn->cred.uid, false);
	if (cn->fd >= 0) {
		epoll_ctl(d->epoll_fd, EPOLL_CTL_DEL, cn->fd, NULL);
		close(cn->fd);
	}
	conn_unlink(d, cn);
	free(cn);
}

/*
 * Ends a client's lease: it leaves its shard, its pins are released, and the control
 * thread's reference is dropped (the socket closes when the last reference goes).
 */
static void detach(struct daemon *d, struct conn *cn, const char *why)
{
	struct client *c = cn->c;
	struct shard *s = c->shard;
	size_t pins;

	epoll_ctl(d->epoll_fd, EPOLL_CTL_DEL, c->fd, NULL);
	uid_release(d, c->uid, true);
	conn_unlink(d, cn);
	free(cn);
	pthread_mutex_lock(&d->clients_lock);
	for (unsigned int i = 0; i < s->n_members; i++) {
		if (s->members[i] != c)
			continue;
		s->members[i] = s->members[--s->n_members];
		break;
	}
	d->n_clients--;
	atomic_fetch_add(&s->gen, 1);
	pthread_mutex_lock(&d->state_lock);
	c->gone = true;
	pins = lease_release_all(&d->leases, &c->lease, pins_changed, d);
	registry_counter_add(d->reg, WD_CTR_PINS, -(int64_t)pins);
	registry_counter_add(d->reg, WD_CTR_CLIENTS, -1);
	pthread_mutex_unlock(&d->state_lock);
	pthread_mutex_unlock(&d->clients_lock);
	shard_wake(s);
	hostcache_client_gone(d, c);
	log_info(MOD, "\"detach\" client=%u pid=%d name=\"%s\" reason=%s pins_released=%zu "
		 "requests=%" PRIu64, c->id, (int)c->pid, c->name, why, pins, c->requests);
	daemon_client_put(d, c);
}

/*
 * No descriptor is left for accept(): the classic answer is a descriptor held in reserve.
 * It is closed, the waiting connection accepted and closed at once (its client sees the
 * connection reset and may retry), and the reserve taken again. Without a reserve (another
 * thread took the slot) the listening socket is left unwatched for ACCEPT_PAUSE_NS instead,
 * so that a level-triggered epoll does not spin on it. Returns true to go on accepting.
 */
static bool accept_without_fds(struct daemon *d, int err)
{
	uint64_t dropped;
	int fd;

	if (log_limit_ok(&accept_limit, &dropped))
		log_warn(MOD, "\"accept failed: out of file descriptors, dropping connections\" "
			 "err=%d connections=%u suppressed=%" PRIu64, err, d->n_clients, dropped);
	if (d->reserve_fd >= 0) {
		close(d->reserve_fd);
		d->reserve_fd = -1;
		fd = accept4(d->listen_fd, NULL, NULL, SOCK_CLOEXEC);
		if (fd >= 0)
			close(fd);
		d->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
		if (fd >= 0 && d->reserve_fd >= 0)
			return true;
	}
	struct epoll_event ev = { .events = 0, .data.ptr = &listen_watch };

	epoll_ctl(d->epoll_fd, EPOLL_CTL_MOD, d->listen_fd, &ev);
	d->listen_paused_until_ns = wd_now_ns() + ACCEPT_PAUSE_NS;
	return false;
}

/* Watches the listening socket again once a pause for lack of descriptors is over. */
static void accept_resume(struct daemon *d)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = &listen_watch };

	if (!d->listen_paused_until_ns || wd_now_ns() < d->listen_paused_until_ns)
		return;
	d->listen_paused_until_ns = 0;
	if (d->reserve_fd < 0)
		d->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	epoll_ctl(d->epoll_fd, EPOLL_CTL_MOD, d->listen_fd, &ev);
}

static void on_accept(struct daemon *d)
{
	for (;;) {
		struct epoll_event ev = { .events = EPOLLIN | EPOLLRDHUP };
		struct uid_use *use;
		uint64_t dropped;
		socklen_t len;
		struct conn *cn;
		int fd = accept4(d->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
			    errno == ENOMEM) {
				if (accept_without_fds(d, -errno))
					continue;
				return;
			}
			if (errno != EAGAIN && errno != EINTR && errno != ECONNABORTED &&
			    log_limit_ok(&accept_limit, &dropped))
				log_warn(MOD, "\"accept failed\" err=%d suppressed=%" PRIu64, -errno,
					 dropped);
			return;
		}
		cn = calloc(1, sizeof(*cn));
		if (!cn) {
			close(fd);
			continue;
		}
		cn->kind = CONN_PENDING;
		cn->fd = fd;
		len = sizeof(cn->cred);
		if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cn->cred, &len) < 0) {
			log_warn(MOD, "\"SO_PEERCRED failed\" err=%d", -errno);
			close(fd);
			free(cn);
			continue;
		}
		/* The per-uid cap, before anything else is spent on the connection. */
		use = uid_use(d, cn->cred.uid);
		if (!use || (d->cfg.max_conns_per_uid && use->conns >= d->cfg.max_conns_per_uid)) {
			if (use)
				refuse(cn, -EUSERS, "uid %u already has %u connections open, the most "
				       "one user may have (max_connections_per_uid)",
				       (unsigned)cn->cred.uid, use->conns);
			close(fd);
			free(cn);
			continue;
		}
		use->conns++;
		len = sizeof(cn->groups);
		if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, cn->groups, &len) == 0)
			cn->n_groups = (int)(len / sizeof(gid_t));
		cn->deadline_ns = wd_now_ns() + d->cfg.hello_timeout_ms * 1000000ull;
		ev.data.ptr = cn;
		if (epoll_ctl(d->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0) {
			uid_release(d, cn->cred.uid, false);
			close(fd);
			free(cn);
			continue;
		}
		cn->next = d->conns;
		if (d->conns)
			d->conns->prev = cn;
		d->conns = cn;
	}
}

static void on_pending(struct daemon *d, struct conn *cn)
{
	/* Room for more than a hello, so that an oversized one is seen whole and refused. */
	char buf[sizeof(struct wd_hello) * 2];
	ssize_t n = attach_recv(cn->fd, buf, sizeof(buf), NULL, NULL);

	if (n == -EAGAIN)
		return;
	if (n == -EMSGSIZE) {
		refuse(cn, -EBADMSG, "bad hello: longer than %zu bytes", sizeof(buf));
		conn_close(d, cn);
		return;
	}
	if (n <= 0) {
		conn_close(d, cn);
		return;
	}
	cn->c = handshake(d, cn, buf, n);
	if (!cn->c) {
		conn_close(d, cn);
		return;
	}
	cn->kind = CONN_CLIENT;
}

static void on_client(struct daemon *d, struct conn *cn, uint32_t events)
{
	char buf[64];
	ssize_t n;

	if (!(events & (EPOLLHUP | EPOLLERR | EPOLLRDHUP))) {
		/* A client sends nothing after its hello; drain whatever it sends, keep going. */
		n = recv(cn->c->fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EINTR)))
			return;
	}
	detach(d, cn, atomic_load(&cn->c->broken) ? "broken" : "hangup");
}

static void sweep_pending(struct daemon *d)
{
	uint64_t now = wd_now_ns(), dropped;

	accept_resume(d);
	if (now - d->last_sweep_ns < SWEEP_EVERY_NS)
		return;
	d->last_sweep_ns = now;
	for (struct conn *cn = d->conns, *next; cn; cn = next) {
		next = cn->next;
		if (cn->kind == CONN_PENDING && now >= cn->deadline_ns) {
			if (log_limit_ok(&hello_limit, &dropped))
				log_warn(MOD, "\"no hello, closing\" pid=%d uid=%u timeout_ms=%u "
					 "suppressed=%" PRIu64, (int)cn->cred.pid,
					 (unsigned)cn->cred.uid, d->cfg.hello_timeout_ms, dropped);
			conn_close(d, cn);
		}
	}
}

/* ---- lifecycle --------------------------------------------------------------------------- */

void daemon_stop(struct daemon *d)
{
	uint64_t one = 1;
	ssize_t n;

	do {
		n = write(d->stop_efd, &one, sizeof(one));
	} while (n < 0 && errno == EINTR);
}

/*
 * Raises the soft limit on open descriptors to the hard one: every client holds two (its
 * socket and its ring segment), and the default soft limit of 1024 would let a few hundred
 * clients exhaust it. The per-uid caps (on_accept()) keep one user from taking them all.
 */
static void raise_fd_limit(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
			log_warn(MOD, "\"cannot raise the descriptor limit\" err=%d", -errno);
	}
}

/* Writes the cause of a failing daemon_create() for its caller (daemon_config.error). */
static void __attribute__((format(printf, 2, 3))) set_error(struct daemon *d, const char *fmt,
							     ...)
{
	va_list ap;

	if (!d->cfg.error || !d->cfg.error_size)
		return;
	va_start(ap, fmt);
	vsnprintf(d->cfg.error, d->cfg.error_size, fmt, ap);
	va_end(ap);
}

static int take_lock(struct daemon *d)
{
	char pid[32];
	int n;

	n = snprintf(d->lock_path, sizeof(d->lock_path), "%s.lock", d->sock_path);
	if (n < 0 || (size_t)n >= sizeof(d->lock_path))
		return -ENAMETOOLONG;
	d->lock_fd = open(d->lock_path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (d->lock_fd < 0)
		return -errno;
	if (flock(d->lock_fd, LOCK_EX | LOCK_NB) < 0) {
		int err = -errno;

		if (err == -EWOULDBLOCK) {
			ssize_t r = pread(d->lock_fd, pid, sizeof(pid) - 1, 0);

			pid[r > 0 ? r : 0] = '\0';
			pid[strcspn(pid, "\n")] = '\0';
			log_error(MOD, "\"another weightd is running\" lock=%s pid=%s socket=%s",
				  d->lock_path, pid[0] ? pid : "?", d->sock_path);
			set_error(d, "another weightd (pid %s) is running on the socket %s: it "
				  "holds %s", pid[0] ? pid : "?", d->sock_path, d->lock_path);
			err = -EADDRINUSE;
		}
		close(d->lock_fd);
		d->lock_fd = -1;
		return err;
	}
	n = snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
	if (ftruncate(d->lock_fd, 0) == 0 && pwrite(d->lock_fd, pid, (size_t)n, 0) != n)
		log_warn(MOD, "\"cannot write pid to lock file\" lock=%s", d->lock_path);
	return 0;
}

static int open_listener(struct daemon *d)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct stat st;

	/* We hold the lock, so a socket file here is a crashed daemon's: replace it. */
	if (lstat(d->sock_path, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			log_error(MOD, "\"socket path exists and is not a socket\" path=%s",
				  d->sock_path);
			return -EEXIST;
		}
		log_info(MOD, "\"removing stale socket\" path=%s", d->sock_path);
		if (unlink(d->sock_path) < 0)
			return -errno;
	}
	strcpy(sa.sun_path, d->sock_path);
	d->listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (d->listen_fd < 0)
		return -errno;
	if (bind(d->listen_fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		return -errno;
	if (chmod(d->sock_path, 0660) < 0 || listen(d->listen_fd, 128) < 0)
		return -errno;
	return 0;
}

static int watch(struct daemon *d, int fd, struct conn *w)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = w };

	return epoll_ctl(d->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
}

static int create_registry(struct daemon *d)
{
	uint32_t models = d->cfg.registry_models ? d->cfg.registry_models :
			  DAEMON_DEFAULT_REGISTRY_MODELS;
	struct registry_limits lim = {
		.max_models = models,
		.max_components = models * REG_COMPS_PER_MODEL,
		.max_tensors = d->cfg.registry_tensors ? d->cfg.registry_tensors :
			       DAEMON_DEFAULT_REGISTRY_TENSORS,
	};
	uint64_t n_models, comps, tensors;
	int ret;

	/* Counts, not the models themselves: a large catalog must not delay the start. */
	ret = catalog_counts(d->cat, &n_models, &comps, &tensors);
	if (ret)
		return ret;
	/* Twice what the catalog holds, within the registry's own bounds (shm/registry.c). */
	if (2 * n_models > lim.max_models)
		lim.max_models = n_models >= (1u << 19) ? 1u << 20 : (uint32_t)(2 * n_models);
	if (2 * comps > lim.max_components)
		lim.max_components = comps >= (1u << 21) ? 1u << 22 : (uint32_t)(2 * comps);
	if (2 * tensors > lim.max_tensors)
		lim.max_tensors = tensors >= (1u << 25) ? 1u << 26 : (uint32_t)(2 * tensors);
	ret = registry_create(&lim, &d->reg);
	if (ret)
		return ret;
	/* Published by the worker once the daemon answers (worker_main()): with a large
	 * catalog that takes seconds, and `status` must answer at once. */
	return registry_view_init(&d->view, registry_segment(d->reg)->base,
				  registry_segment(d->reg)->size);
}

int daemon_create(const struct daemon_config *cfg, struct daemon **out)
{
	struct daemon *d = calloc(1, sizeof(*d));
	const char *env;
	int ret;

	if (!d)
		return -ENOMEM;
	d->cfg = *cfg;
	d->lock_fd = d->listen_fd = d->epoll_fd = d->sig_fd = d->stop_efd = -1;
	/* Taken first, so that it is there when descriptors run out (on_accept()). */
	d->reserve_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	raise_fd_limit();
	d->self_uid = geteuid();
	d->self_gid = getegid();
	d->start_ns = wd_now_ns();
	d->next_client_id = 1;
	pthread_mutex_init(&d->state_lock, NULL);
	pthread_mutex_init(&d->clients_lock, NULL);
	pthread_mutex_init(&d->job_lock, NULL);
	pthread_cond_init(&d->job_cond, NULL);
	lease_table_init(&d->leases);
	*out = NULL;

	ret = statedir_resolve(cfg->state_dir, d->state_dir, sizeof(d->state_dir));
	if (ret) {
		log_error(MOD, "\"cannot resolve the state directory\" err=%d", ret);
		goto fail;
	}
	ret = attach_socket_path(cfg->socket_path, d->sock_path, sizeof(d->sock_path));
	if (ret) {
		log_error(MOD, "\"cannot resolve the socket path\" err=%d", ret);
		goto fail;
	}
	{
		char why[512];

		/* Never bind where another user could swap the socket (docs/security.md). */
		ret = attach_check_dir(d->sock_path, geteuid(), (uid_t)-1, true, why, sizeof(why));
		if (ret) {
			log_error(MOD, "\"refusing the socket path\" path=%s err=%d why=\"%s\"",
				  d->sock_path, ret, ret == -EPERM ? why : strerror(-ret));
			goto fail;
		}
	}
	for (size_t i = 0; i < cfg->n_roots && i < DAEMON_MAX_ROOTS; i++)
		d->roots[d->n_roots++] = cfg->roots[i];
	if (!d->n_roots) {
		env = getenv("WEIGHTD_MODELS");
		if (env && *env)
			snprintf(d->default_root, sizeof(d->default_root), "%s", env);
		else
			snprintf(d->default_root, sizeof(d->default_root), "%s/models",
				 d->state_dir);
		d->roots[d->n_roots++] = d->default_root;
	}
	ret = take_lock(d);
	if (ret)
		goto fail;
	/* Not a database at all: replaced at once. The full check runs on the worker. */
	ret = catalog_open_repair(d->state_dir, false, &d->cat, d->catalog_aside,
				  sizeof(d->catalog_aside), d->catalog_why, sizeof(d->catalog_why));
	if (ret) {
		log_error(MOD, "\"cannot open the catalog\" dir=%s err=%d", d->state_dir, ret);
		set_error(d, "cannot open the catalog in %s: %s", d->state_dir, strerror(-ret));
		goto fail;
	}
	if (d->catalog_aside[0])
		log_error(MOD, "\"the catalog was corrupt: moved aside, rebuilding it from a scan "
			  "(tags and notes are in the old file)\" moved_to=%s check=\"%s\"",
			  d->catalog_aside, d->catalog_why);
	atomic_init(&d->catalog_rebuilt, false);
	ret = create_registry(d);
	if (ret) {
		log_error(MOD, "\"cannot build the registry\" err=%d", ret);
		goto fail;
	}
	ret = open_listener(d);
	if (ret) {
		log_error(MOD, "\"cannot listen\" path=%s err=%d", d->sock_path, ret);
		goto fail;
	}
	d->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	d->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (d->epoll_fd < 0 || d->stop_efd < 0) {
		ret = -errno;
		goto fail;
	}
	if (cfg->handle_signals) {
		sigset_t set;

		sigemptyset(&set);
		sigaddset(&set, SIGTERM);
		sigaddset(&set, SIGINT);
		/* SIGHUP reloads the configuration (cfg->reload, docs/config.md); taken here
		 * so that it never ends the daemon (its default action). */
		sigaddset(&set, SIGHUP);
		/* Blocked before any thread starts, so every thread inherits the mask. */
		pthread_sigmask(SIG_BLOCK, &set, NULL);
		signal(SIGPIPE, SIG_IGN);
		d->sig_fd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
		if (d->sig_fd < 0) {
			ret = -errno;
			goto fail;
		}
		ret = watch(d, d->sig_fd, &signal_watch);
		if (ret)
			goto fail;
	}
	/* After the signal mask: the loader thread must not take SIGTERM's default action. */
	ret = hostcache_create(d);
	if (ret)
		goto fail;
	reload_psi_start(d, &psi_watch);	/* unavailable PSI is logged, not an error */
	/* After the host tier: the GPUs page-lock its arena. */
	ret = devcache_create(d);
	if (ret)
		goto fail;
	ret = watch(d, d->listen_fd, &listen_watch);
	if (!ret)
		ret = watch(d, d->stop_efd, &stop_watch);
	if (!ret)
		ret = alert_create(d, &d->alerts);
	if (!ret)
		ret = watch(d, alert_fd(d->alerts), &alert_watch);
	if (!ret && d->catalog_aside[0])
		alert_catalog_rebuilt(d, d->catalog_aside, d->catalog_why);
	if (!ret && cfg->metrics_listen) {
		ret = metrics_start(d, cfg->metrics_listen, &d->metrics);
		if (ret == -EADDRINUSE)
			set_error(d, "the metrics address %s is already in use by another program "
				  "(--metrics-listen, metrics_listen in the config file)",
				  cfg->metrics_listen);
		else if (ret)
			set_error(d, "cannot serve /metrics on %s: %s", cfg->metrics_listen,
				  strerror(-ret));
	}
	if (ret)
		goto fail;
	log_info(MOD, "\"ready\" socket=%s state_dir=%s models=%zu roots=%zu spin_us=%u "
		 "host_budget=%" PRIu64, d->sock_path, d->state_dir, d->n_models, d->n_roots,
		 cfg->spin_us, d->cfg.host_budget);
	*out = d;
	return 0;
fail:
	daemon_destroy(d);
	return ret;
}

/*
 * The orderly end: no shard runs any more, queued worker requests are cancelled, the worker
 * finishes the one it runs, and then every client gets its owed completions, a SHUTDOWN mark
 * on its ring and a closed socket.
 */
static void shutdown_all(struct daemon *d)
{
	struct job *jobs;

	if (d->shut)
		return;
	d->shut = true;
	atomic_store(&d->stopping, true);
	for (unsigned int i = 0; i < d->n_shards; i++)
		shard_wake(&d->shards[i]);
	for (unsigned int i = 0; i < d->n_shards; i++)
		pthread_join(d->shards[i].thread, NULL);

	pthread_mutex_lock(&d->job_lock);
	d->worker_stop = true;
	jobs = d->job_head;
	d->job_head = d->job_tail = NULL;
	pthread_cond_broadcast(&d->job_cond);
	pthread_mutex_unlock(&d->job_lock);
	while (jobs) {
		struct job *j = jobs;
		struct wd_cqe cqe = { .user_data = j->sqe.user_data, .res = -ECANCELED };

		jobs = j->next;
		if (j->c) {
			daemon_post(d, j->c, &cqe, &j->spare, NULL, 0);
			daemon_client_put(d, j->c);
		}
		free(j->spare);
		free(j);
	}
	if (d->worker_started) {
		pthread_join(d->worker, NULL);
		d->worker_started = false;
	}
	/* Loads in flight end now (cancelled); their requesters' completions are queued. */
	hostcache_stop(d);
	/* After the loader: device loads waiting for cancelled host loads complete here. */
	devcache_stop(d);

	/* The shards are gone: this thread is now the only producer on every CQ. */
	while (d->conns) {
		struct conn *cn = d->conns;

		if (cn->kind == CONN_CLIENT) {
			struct client *c = cn->c;
			int space = ring_prod_space(&c->cq);
			uint64_t errors = 0;

			if (space > 0 && deliver_pending(c, &space, &errors)) {
				ring_prod_publish(&c->cq);
				ring_notify(&c->cq);
			}
			ring_seg_set_status(c->seg.base, &c->cq, WD_RING_SHUTDOWN, -ESHUTDOWN);
			shutdown(c->fd, SHUT_RDWR);
			detach(d, cn, "shutdown");
		} else {
			conn_close(d, cn);
		}
	}
}

int daemon_run(struct daemon *d)
{
	struct epoll_event ev[64];
	int ret = 0;

	pthread_mutex_lock(&d->clients_lock);
	ret = shard_start(d, &d->shards[0], 0);
	if (!ret)
		d->n_shards = 1;
	pthread_mutex_unlock(&d->clients_lock);
	if (ret)
		return ret;
	ret = -pthread_create(&d->worker, NULL, worker_main, d);
	if (ret) {
		shutdown_all(d);
		return ret;
	}
	d->worker_started = true;
	spare_ring_make(d);
	for (bool stop = false; !stop;) {
		bool want = spare_wanted(d);
		int n = epoll_wait(d->epoll_fd, ev, (int)ARRAY_SIZE(ev),
				   want ? SPARE_IDLE_MS : d->listen_paused_until_ns ? 100 :
				   DAEMON_HEARTBEAT_MS);

		/* Proof of life for waiting clients (shm/registry.h: heartbeat). */
		registry_heartbeat(d->reg);
		/* The worker replaced a corrupt catalog (check_catalog()): the alert is ours. */
		if (atomic_load(&d->catalog_rebuilt) && atomic_exchange(&d->catalog_rebuilt, false))
			alert_catalog_rebuilt(d, d->catalog_aside, d->catalog_why);

		if (n == 0 && want)
			spare_ring_make(d);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			ret = -errno;
			log_error(MOD, "\"epoll_wait failed\" err=%d", ret);
			break;
		}
		for (int i = 0; i < n; i++) {
			struct conn *cn = ev[i].data.ptr;

			switch (cn->kind) {
			case CONN_LISTEN:
				on_accept(d);
				break;
			case CONN_SIGNAL: {
				struct signalfd_siginfo si;

				if (read(d->sig_fd, &si, sizeof(si)) != sizeof(si))
					break;
				if (si.ssi_signo == SIGHUP) {
					if (d->cfg.reload) {
						log_info(MOD, "\"SIGHUP: reloading the configuration\"");
						d->cfg.reload(d, d->cfg.reload_arg);
					} else {
						log_warn(MOD, "\"SIGHUP ignored: no configuration to "
							      "reload\"");
					}
					break;
				}
				log_info(MOD, "\"signal, shutting down\" signo=%u", si.ssi_signo);
				stop = true;
				break;
			}
			case CONN_STOP:
				stop = true;
				break;
			case CONN_PENDING:
				on_pending(d, cn);
				break;
			case CONN_CLIENT:
				on_client(d, cn, ev[i].events);
				break;
			case CONN_PSI:
				reload_psi_event(d);
				break;
			case CONN_ALERT:
				alert_on_timer(d);
				break;
			}
		}
		sweep_pending(d);
	}
	log_info(MOD, "\"shutting down\" clients=%u", d->n_clients);
	metrics_stop(d->metrics);
	d->metrics = NULL;
	shutdown_all(d);
	if (unlink(d->sock_path) < 0 && errno != ENOENT)
		log_warn(MOD, "\"cannot remove socket\" path=%s err=%d", d->sock_path, -errno);
	d->sock_path[0] = '\0';
	log_info(MOD, "\"stopped\"");
	return ret;
}

void daemon_destroy(struct daemon *d)
{
	if (!d)
		return;
	/* Its thread reads the registry and the host tier: it goes before them. */
	metrics_stop(d->metrics);
	d->metrics = NULL;
	shutdown_all(d);
	for (unsigned int i = 0; i < d->n_shards; i++) {
		struct ring_seg_params p = { .sq_entries = WAKE_ENTRIES,
					     .cq_entries = WAKE_ENTRIES };

		munmap(d->shards[i].wake_mem, (size_t)ring_seg_size(&p, NULL));
		pthread_mutex_destroy(&d->shards[i].wake_lock);
	}
	if (d->listen_fd >= 0) {
		close(d->listen_fd);
		if (d->sock_path[0])
			unlink(d->sock_path);
	}
	if (d->epoll_fd >= 0)
		close(d->epoll_fd);
	if (d->sig_fd >= 0)
		close(d->sig_fd);
	if (d->stop_efd >= 0)
		close(d->stop_efd);
	if (d->reserve_fd >= 0)
		close(d->reserve_fd);
	free(d->uid_use);
	reload_cleanup(d);
	devcache_destroy(d);
	alert_destroy(d->alerts);
	spare_free(d);
	hostcache_destroy(d);
	registry_destroy(d->reg);
	catalog_close(d->cat);
	lease_table_free(&d->leases);
	free(d->models);
	if (d->lock_fd >= 0)
		close(d->lock_fd);
	pthread_mutex_destroy(&d->state_lock);
	pthread_mutex_destroy(&d->clients_lock);
	pthread_mutex_destroy(&d->job_lock);
	pthread_cond_destroy(&d->job_cond);
	free(d);
}
