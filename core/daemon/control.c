/*
 * The control thread: daemon_run()'s epoll loop over the listening socket, every client's
 * socket (its lease), the signalfd (SIGTERM/SIGINT, SIGHUP's reload), the PSI descriptor, the
 * alert timer and daemon_stop()'s eventfd. It accepts connections under the per-uid limits,
 * hands each hello to core/daemon/hello.c, detaches a client when its socket closes, closes
 * connections that owe a hello too long, and runs the orderly shutdown.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/base/log.h"
#include "core/daemon/alert.h"
#include "core/daemon/internal.h"
#include "core/daemon/metrics.h"
#include "core/daemon/reload.h"
#include "core/daemon/tiers.h"
#include "core/tier/devcache.h"
#include "core/tier/hostcache.h"
#include "shm/attach.h"

#define MOD "daemon"

/*
 * Log lines that any local process can cause at will, one per connection: rate-limited, so
 * that a flood of connections cannot flood the log (each line says how many it stands for).
 */
static struct log_limit accept_limit = LOG_LIMIT_INIT(5, 10000);
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

void *daemon_watch_tag(enum conn_kind kind)
{
	switch (kind) {
	case CONN_LISTEN:
		return &listen_watch;
	case CONN_SIGNAL:
		return &signal_watch;
	case CONN_STOP:
		return &stop_watch;
	case CONN_ALERT:
		return &alert_watch;
	case CONN_PSI:
		return &psi_watch;
	default:
		return NULL;
	}
}

int daemon_watch(struct daemon *d, int fd, enum conn_kind kind)
{
	struct epoll_event ev = { .events = EPOLLIN, .data.ptr = daemon_watch_tag(kind) };

	return epoll_ctl(d->epoll_fd, EPOLL_CTL_ADD, fd, &ev) < 0 ? -errno : 0;
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
	daemon_shard_wake(s);
	hostcache_client_gone(d->hc, tier_client_of(c));
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
		use = daemon_uid_use(d, cn->cred.uid);
		if (!use || (d->cfg.max_conns_per_uid && use->conns >= d->cfg.max_conns_per_uid)) {
			if (use)
				daemon_refuse(cn, -EUSERS, "uid %u already has %u connections open, "
					      "the most one user may have "
					      "(max_connections_per_uid)", (unsigned)cn->cred.uid,
					      use->conns);
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
		daemon_refuse(cn, -EBADMSG, "bad hello: longer than %zu bytes", sizeof(buf));
		conn_close(d, cn);
		return;
	}
	if (n <= 0) {
		conn_close(d, cn);
		return;
	}
	cn->c = daemon_hello(d, cn, buf, n);
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

/*
 * The orderly end: no shard runs any more, queued worker requests are cancelled, the worker
 * finishes the one it runs, and then every client gets its owed completions, a SHUTDOWN mark
 * on its ring and a closed socket.
 */
void daemon_shutdown(struct daemon *d)
{
	if (d->shut)
		return;
	d->shut = true;
	atomic_store(&d->stopping, true);
	for (unsigned int i = 0; i < d->n_shards; i++)
		daemon_shard_wake(&d->shards[i]);
	for (unsigned int i = 0; i < d->n_shards; i++)
		pthread_join(d->shards[i].thread, NULL);

	daemon_worker_stop(d);
	/* Loads in flight end now (cancelled); their requesters' completions are queued. */
	hostcache_stop(d->hc);
	/* After the loader: device loads waiting for cancelled host loads complete here. */
	devcache_stop(d->dc);

	/* The shards are gone: this thread is now the only producer on every CQ. */
	while (d->conns) {
		struct conn *cn = d->conns;

		if (cn->kind == CONN_CLIENT) {
			struct client *c = cn->c;
			int space = ring_prod_space(&c->cq);
			uint64_t errors = 0;

			if (space > 0 && daemon_deliver_pending(c, &space, &errors)) {
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
	ret = daemon_shard_start(d, &d->shards[0], 0);
	if (!ret)
		d->n_shards = 1;
	pthread_mutex_unlock(&d->clients_lock);
	if (ret)
		return ret;
	ret = daemon_worker_start(d);
	if (ret) {
		daemon_shutdown(d);
		return ret;
	}
	daemon_spare_make(d);
	for (bool stop = false; !stop;) {
		bool want = daemon_spare_wanted(d);
		int n = epoll_wait(d->epoll_fd, ev, (int)ARRAY_SIZE(ev),
				   want ? DAEMON_SPARE_IDLE_MS : d->listen_paused_until_ns ? 100 :
				   DAEMON_HEARTBEAT_MS);

		/* Proof of life for waiting clients (shm/registry.h: heartbeat). */
		registry_heartbeat(d->reg);
		/* The worker replaced a corrupt catalog (check_catalog(), worker.c): the alert is ours. */
		if (atomic_load(&d->catalog_rebuilt) && atomic_exchange(&d->catalog_rebuilt, false))
			alert_catalog_rebuilt(d, d->catalog_aside, d->catalog_why);

		if (n == 0 && want)
			daemon_spare_make(d);
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
	daemon_shutdown(d);
	if (unlink(d->sock_path) < 0 && errno != ENOENT)
		log_warn(MOD, "\"cannot remove socket\" path=%s err=%d", d->sock_path, -errno);
	d->sock_path[0] = '\0';
	log_info(MOD, "\"stopped\"");
	return ret;
}
