/*
 * bench_ring: round-trip latency and throughput of the shared-memory rings, next to the
 * baselines they are judged against, all measured in the same run on the same two cores:
 *
 *   pingpong  two processes bouncing one value through two cache lines (the floor for polling)
 *   futex     two processes waking each other with FUTEX_WAKE/FUTEX_WAIT (the floor for parking)
 *   unix      a request/response over a Unix socketpair (what the rings replace)
 *   ring      a server process serving no-op (ping) requests over per-client SQ/CQ rings exactly
 *             as the daemon does (private cursors, validated entries, doorbells), in polling
 *             mode (large spin budget) and parked mode (spin budget 0)
 *
 *   daemon    weightd_ping() through libweightd to a real weightd process (BUILD/weightd,
 *             started here with its own socket and state directory), in polling mode (the
 *             client spins, the daemon's shard spins) and parked mode (neither spins)
 *
 * Throughput runs the same server with 1, 4, 16 and 64 client processes, each keeping a window
 * of requests in flight. The last line of output is one JSON object with every figure and the
 * ratios to the targets in DESIGN.md.
 *
 * Usage: bench_ring [--quick] [--daemon-only]
 *   --quick        fewer iterations, for smoke tests
 *   --daemon-only  the baselines and the real daemon only (no in-bench server, no throughput)
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "weightd.h"

#include "core/base/common.h"
#include "shm/barrier.h"
#include "shm/ring.h"
#include "shm/segment.h"

#define POLL_SPIN_NS (10ull * 1000 * 1000 * 1000)	/* "forever" for a latency run */
#define TPUT_WINDOW 16u
#define MAX_CLIENTS 64u

static uint32_t iters_poll = 300000, iters_park = 30000, warmup = 2000;
static uint64_t tput_ns = 500ull * 1000 * 1000;
static int cpu_server = -1, cpu_client = -1;

struct lat {
	double p50, p99, p999;	/* nanoseconds */
};

/* State shared between the bench processes (an anonymous MAP_SHARED page set). */
struct shared {
	uint32_t ping;
	uint8_t pad0[WD_RING_ALIGN - 4];
	uint32_t pong;
	uint8_t pad1[WD_RING_ALIGN - 4];
	uint32_t go;
	uint32_t stop;
	uint32_t server_stop;
	uint32_t ready;
	uint64_t done[MAX_CLIENTS];
	uint64_t samples[];	/* latency samples of the measuring client */
};

static void die(const char *what, int err)
{
	fprintf(stderr, "bench_ring: %s: %s\n", what, strerror(err));
	exit(1);
}

static void pin(int cpu)
{
	cpu_set_t set;

	if (cpu < 0)
		return;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set))
		die("sched_setaffinity", errno);
}

/* Picks the first two CPUs we may run on; with fewer, nothing is pinned. */
static void pick_cpus(void)
{
	cpu_set_t set;

	if (sched_getaffinity(0, sizeof(set), &set))
		return;
	for (int c = 0; c < CPU_SETSIZE; c++) {
		if (!CPU_ISSET(c, &set))
			continue;
		if (cpu_server < 0)
			cpu_server = c;
		else if (cpu_client < 0)
			cpu_client = c;
	}
	if (cpu_client < 0)
		cpu_server = -1;
}

static struct shared *shared_map(size_t samples)
{
	size_t size = sizeof(struct shared) + samples * sizeof(uint64_t);
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		die("mmap", errno);
	return p;
}

static void shared_unmap(struct shared *sh, size_t samples)
{
	munmap(sh, sizeof(struct shared) + samples * sizeof(uint64_t));
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

static struct lat percentiles(uint64_t *s, size_t n)
{
	struct lat l;

	qsort(s, n, sizeof(*s), cmp_u64);
	l.p50 = (double)s[n / 2];
	l.p99 = (double)s[(size_t)((double)n * 0.99)];
	l.p999 = (double)s[(size_t)((double)n * 0.999)];
	return l;
}

static pid_t spawn(int cpu)
{
	pid_t pid = fork();

	if (pid < 0)
		die("fork", errno);
	if (pid == 0)
		pin(cpu);
	return pid;
}

static void reap(pid_t pid)
{
	int status;

	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status)) {
		fprintf(stderr, "bench_ring: child %d failed (status %#x)\n", (int)pid, status);
		exit(1);
	}
}

static long futex(uint32_t *w, int op, uint32_t val)
{
	return syscall(SYS_futex, w, op, val, NULL, NULL, 0);
}

/* ---- baselines ------------------------------------------------------------------------- */

static struct lat bench_pingpong(uint32_t n)
{
	struct shared *sh = shared_map(n);
	pid_t pid = spawn(cpu_server);

	if (pid == 0) {
		for (uint32_t i = 1; i <= n + warmup; i++) {
			while (load_acquire(&sh->ping) != i)
				cpu_relax();
			store_release(&sh->pong, i);
		}
		_exit(0);
	}
	pin(cpu_client);
	for (uint32_t i = 1; i <= n + warmup; i++) {
		uint64_t t0 = wd_now_ns();

		store_release(&sh->ping, i);
		while (load_acquire(&sh->pong) != i)
			cpu_relax();
		if (i > warmup)
			sh->samples[i - warmup - 1] = wd_now_ns() - t0;
	}
	reap(pid);
	struct lat l = percentiles(sh->samples, n);

	shared_unmap(sh, n);
	return l;
}

static struct lat bench_futex(uint32_t n)
{
	struct shared *sh = shared_map(n);
	pid_t pid = spawn(cpu_server);

	if (pid == 0) {
		for (uint32_t i = 1; i <= n + warmup; i++) {
			uint32_t v;

			while ((v = load_acquire(&sh->ping)) != i)
				futex(&sh->ping, FUTEX_WAIT, v);
			store_release(&sh->pong, i);
			futex(&sh->pong, FUTEX_WAKE, 1);
		}
		_exit(0);
	}
	pin(cpu_client);
	for (uint32_t i = 1; i <= n + warmup; i++) {
		uint64_t t0 = wd_now_ns();
		uint32_t v;

		store_release(&sh->ping, i);
		futex(&sh->ping, FUTEX_WAKE, 1);
		while ((v = load_acquire(&sh->pong)) != i)
			futex(&sh->pong, FUTEX_WAIT, v);
		if (i > warmup)
			sh->samples[i - warmup - 1] = wd_now_ns() - t0;
	}
	reap(pid);
	struct lat l = percentiles(sh->samples, n);

	shared_unmap(sh, n);
	return l;
}

static void read_full(int fd, void *buf, size_t len)
{
	for (size_t off = 0; off < len;) {
		ssize_t r = read(fd, (char *)buf + off, len - off);

		if (r <= 0)
			die("unix socket read", r < 0 ? errno : EPIPE);
		off += (size_t)r;
	}
}

static void write_full(int fd, const void *buf, size_t len)
{
	for (size_t off = 0; off < len;) {
		ssize_t r = write(fd, (const char *)buf + off, len - off);

		if (r <= 0)
			die("unix socket write", r < 0 ? errno : EPIPE);
		off += (size_t)r;
	}
}

static struct lat bench_unix(uint32_t n)
{
	struct shared *sh = shared_map(n);
	struct wd_sqe req = { .opcode = WD_OP_PING };
	struct wd_cqe resp;
	int sv[2];
	pid_t pid;

	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv))
		die("socketpair", errno);
	pid = spawn(cpu_server);
	if (pid == 0) {
		close(sv[0]);
		for (uint32_t i = 0; i < n + warmup; i++) {
			read_full(sv[1], &req, sizeof(req));
			resp = (struct wd_cqe){ .user_data = req.user_data };
			write_full(sv[1], &resp, sizeof(resp));
		}
		_exit(0);
	}
	close(sv[1]);
	pin(cpu_client);
	for (uint32_t i = 0; i < n + warmup; i++) {
		uint64_t t0 = wd_now_ns();

		req.user_data = i;
		write_full(sv[0], &req, sizeof(req));
		read_full(sv[0], &resp, sizeof(resp));
		if (resp.user_data != i)
			die("unix socket reply out of order", EPROTO);
		if (i >= warmup)
			sh->samples[i - warmup] = wd_now_ns() - t0;
	}
	close(sv[0]);
	reap(pid);
	struct lat l = percentiles(sh->samples, n);

	shared_unmap(sh, n);
	return l;
}

/* ---- the ring server, as the daemon runs it ------------------------------------------- */

struct client_ring {
	struct shm_segment seg;
	struct ring d_sq, d_cq;	/* daemon views, built from trusted parameters */
	bool dead;
};

/*
 * Serves one client's ring: takes every ready request (copied out once, then validated),
 * answers it, and rings the client's doorbell once per batch. Only as many requests are taken
 * as the completion ring has room for, so a slow client only stalls itself.
 */
static void serve_client(struct client_ring *c)
{
	int avail = ring_cons_avail(&c->d_sq);
	int space;

	if (avail < 0) {
		ring_seg_set_status(c->seg.base, &c->d_cq, WD_RING_BROKEN, avail);
		c->dead = true;
		return;
	}
	space = ring_prod_space(&c->d_cq);
	if (space < 0) {
		ring_seg_set_status(c->seg.base, &c->d_cq, WD_RING_BROKEN, space);
		c->dead = true;
		return;
	}
	if (avail > space)
		avail = space;
	if (!avail)
		return;
	for (int k = 0; k < avail; k++) {
		struct wd_sqe s;
		struct wd_cqe *cqe = ring_prod_slot(&c->d_cq);
		int err;

		memcpy(&s, ring_cons_slot(&c->d_sq, (uint32_t)k), sizeof(s));
		err = ring_sqe_check(&s);
		*cqe = (struct wd_cqe){ .user_data = s.user_data };
		if (err)
			cqe->res = err;
		else if (s.opcode == WD_OP_PING)
			cqe->aux0 = s.arg[0];
		else
			cqe->res = -EOPNOTSUPP;	/* the bench server only answers pings */
		ring_prod_advance(&c->d_cq);
	}
	ring_cons_release(&c->d_sq, (uint32_t)avail);
	ring_prod_publish(&c->d_cq);
	ring_notify(&c->d_cq);
}

static void server_loop(struct client_ring *cl, unsigned int n, uint64_t spin_ns,
			const uint32_t *stop)
{
	struct ring *sqs[MAX_CLIENTS];

	for (unsigned int i = 0; i < n; i++)
		sqs[i] = &cl[i].d_sq;
	while (!load_acquire(stop)) {
		int r = ring_wait_many(sqs, n, spin_ns, 10 * 1000 * 1000);

		if (r == -ETIMEDOUT || r == -EINTR)
			continue;
		if (r < 0)
			die("ring_wait_many", -r);
		for (unsigned int i = 0; i < n; i++)
			if (!cl[i].dead)
				serve_client(&cl[i]);
	}
}

static struct client_ring *rings_create(unsigned int n)
{
	struct client_ring *cl = calloc(n, sizeof(*cl));
	struct ring_seg_params p = { .sq_entries = 64, .cq_entries = 64 };
	int64_t size = ring_seg_size(&p, NULL);

	if (!cl)
		die("calloc", ENOMEM);
	for (unsigned int i = 0; i < n; i++) {
		int ret;

		p.client_id = i;
		ret = shm_segment_create("bench-ring", (size_t)size, 0, &cl[i].seg);
		if (ret)
			die("shm_segment_create", -ret);
		ret = ring_seg_format(cl[i].seg.base, cl[i].seg.size, &p, &cl[i].d_sq, &cl[i].d_cq);
		if (ret)
			die("ring_seg_format", -ret);
	}
	return cl;
}

static void rings_destroy(struct client_ring *cl, unsigned int n)
{
	for (unsigned int i = 0; i < n; i++)
		shm_segment_close(&cl[i].seg);
	free(cl);
}

/* One client round trip: push a ping, ring the doorbell, wait for and check the answer. */
static void ping_once(struct ring *sq, struct ring *cq, uint64_t seq, uint64_t spin_ns)
{
	struct wd_sqe s = { .opcode = WD_OP_PING, .user_data = seq, .arg = { seq } };
	struct wd_cqe c;
	int ret;

	if ((ret = ring_sq_push(sq, &s)))
		die("ring_sq_push", -ret);
	ring_notify(sq);
	ret = ring_wait(cq, spin_ns, -1);
	if (ret < 0)
		die("ring_wait", -ret);
	if (ring_cq_pop(cq, &c) != 1 || c.user_data != seq || c.res || c.aux0 != seq)
		die("bad completion", EPROTO);
}

static struct lat bench_ring_latency(uint32_t n, uint64_t spin_ns)
{
	struct shared *sh = shared_map(n);
	struct client_ring *cl = rings_create(1);
	struct ring sq, cq;
	pid_t pid = spawn(cpu_server);

	if (pid == 0) {
		server_loop(cl, 1, spin_ns, &sh->server_stop);
		_exit(0);
	}
	pin(cpu_client);
	if (ring_seg_attach(cl[0].seg.base, cl[0].seg.size, &sq, &cq, NULL))
		die("ring_seg_attach", EPROTO);
	for (uint32_t i = 0; i < n + warmup; i++) {
		uint64_t t0 = wd_now_ns();

		ping_once(&sq, &cq, i, spin_ns);
		if (i >= warmup)
			sh->samples[i - warmup] = wd_now_ns() - t0;
	}
	store_release(&sh->server_stop, 1);
	reap(pid);
	struct lat l = percentiles(sh->samples, n);

	rings_destroy(cl, 1);
	shared_unmap(sh, n);
	return l;
}

/* A throughput client: keeps TPUT_WINDOW pings in flight until told to stop. */
static void tput_client(struct client_ring *c, struct shared *sh, unsigned int idx,
			uint64_t spin_ns)
{
	struct ring sq, cq;
	uint64_t sent = 0, done = 0, counted = 0;
	bool counting = false;
	struct wd_cqe cqe;

	if (ring_seg_attach(c->seg.base, c->seg.size, &sq, &cq, NULL))
		_exit(2);
	__atomic_fetch_add(&sh->ready, 1, __ATOMIC_ACQ_REL);
	while (!load_acquire(&sh->go))
		usleep(100);
	while (!load_acquire(&sh->stop)) {
		bool pushed = false;

		while (sent - done < TPUT_WINDOW) {
			struct wd_sqe *s = ring_prod_slot(&sq);

			if (!s)
				break;
			*s = (struct wd_sqe){ .opcode = WD_OP_PING, .user_data = sent };
			ring_prod_advance(&sq);
			sent++;
			pushed = true;
		}
		if (pushed) {
			ring_prod_publish(&sq);
			ring_notify(&sq);
		}
		int r = ring_wait(&cq, spin_ns, 10 * 1000 * 1000);

		if (r < 0 && r != -ETIMEDOUT && r != -EINTR)
			_exit(3);
		while (ring_cq_pop(&cq, &cqe) == 1) {
			if (cqe.user_data != done || cqe.res)
				_exit(4);
			done++;
		}
		if (!counting && load_acquire(&sh->go) == 2) {
			counting = true;
			counted = done;
		}
	}
	sh->done[idx] = done - counted;
	_exit(0);
}

static double bench_ring_tput(unsigned int n, uint64_t server_spin, uint64_t client_spin)
{
	struct shared *sh = shared_map(0);
	struct client_ring *cl = rings_create(n);
	pid_t server, clients[MAX_CLIENTS];
	uint64_t total = 0, t0, t1;

	server = spawn(cpu_server);
	if (server == 0) {
		server_loop(cl, n, server_spin, &sh->server_stop);
		_exit(0);
	}
	for (unsigned int i = 0; i < n; i++) {
		clients[i] = spawn(cpu_client);
		if (clients[i] == 0)
			tput_client(&cl[i], sh, i, client_spin);
	}
	while (load_acquire(&sh->ready) < n)
		usleep(1000);
	/* go = 1: run (warm up); go = 2: start counting; stop: end of the window. */
	store_release(&sh->go, 1);
	usleep(50000);
	t0 = wd_now_ns();
	store_release(&sh->go, 2);
	usleep((useconds_t)(tput_ns / 1000));
	t1 = wd_now_ns();
	store_release(&sh->stop, 1);
	for (unsigned int i = 0; i < n; i++)
		reap(clients[i]);
	store_release(&sh->server_stop, 1);
	reap(server);
	for (unsigned int i = 0; i < n; i++)
		total += sh->done[i];
	rings_destroy(cl, n);
	shared_unmap(sh, 0);
	/* Clients notice go = 2 and stop within a few microseconds of t0 and t1. */
	return (double)total * 1e9 / (double)(t1 - t0);
}

/* ---- the real daemon, through libweightd ----------------------------------------------- */

struct daemon_child {
	pid_t pid;
	char dir[PATH_MAX];
	char sock[108];
};

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	remove(path);
	return 0;
}

/* BUILD/weightd next to BUILD/bench/bench_ring, or NULL when it was not built. */
static const char *daemon_binary(void)
{
	static char path[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 16);
	char *slash;

	if (n <= 0)
		return NULL;
	path[n] = '\0';
	for (int i = 0; i < 2 && (slash = strrchr(path, '/')); i++)
		*slash = '\0';
	strcat(path, "/weightd");
	return access(path, X_OK) ? NULL : path;
}

/*
 * Starts weightd on the server CPU (its threads inherit the affinity) with a private socket
 * and state directory and shard spin budget @spin_us, and waits until it accepts clients.
 */
static void daemon_start(struct daemon_child *dc, const char *bin, unsigned int spin_us)
{
	const char *tmp = getenv("TMPDIR");
	char state[PATH_MAX + 8], models[PATH_MAX + 8], spin[16];
	uint64_t deadline;

	snprintf(dc->dir, sizeof(dc->dir), "%s/bench-ring.XXXXXX", tmp ? tmp : "/tmp");
	if (!mkdtemp(dc->dir))
		die("mkdtemp", errno);
	if ((size_t)snprintf(dc->sock, sizeof(dc->sock), "%s/sock", dc->dir) >= sizeof(dc->sock))
		die("socket path", ENAMETOOLONG);
	snprintf(state, sizeof(state), "%s/state", dc->dir);
	snprintf(models, sizeof(models), "%s/models", dc->dir);
	snprintf(spin, sizeof(spin), "%u", spin_us);
	if (mkdir(models, 0700))
		die("mkdir", errno);
	dc->pid = spawn(cpu_server);
	if (dc->pid == 0) {
		int fd = open("/dev/null", O_WRONLY);

		if (fd >= 0)
			dup2(fd, STDERR_FILENO);
		execl(bin, bin, "--foreground", "--socket", dc->sock, "--state-dir", state,
		      "--models", models, "--spin-us", spin, (char *)NULL);
		_exit(127);
	}
	deadline = wd_now_ns() + 10ull * 1000 * 1000 * 1000;
	for (;;) {
		struct weightd *w;
		int status;

		if (weightd_attach(dc->sock, NULL, &w) == 0) {
			weightd_detach(w);
			return;
		}
		if (waitpid(dc->pid, &status, WNOHANG) == dc->pid || wd_now_ns() > deadline) {
			fprintf(stderr, "bench_ring: weightd did not start: %s\n",
				weightd_last_error());
			exit(1);
		}
		usleep(10000);
	}
}

static void daemon_stop(struct daemon_child *dc)
{
	kill(dc->pid, SIGTERM);
	waitpid(dc->pid, NULL, 0);
	nftw(dc->dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
}

/*
 * weightd_ping() round trips. Polling: the client spins up to 10 s (never parks) and the
 * daemon's shard spins 1 s after each request; parked: both park at once (spin 0).
 */
static struct lat bench_daemon(const char *bin, uint32_t n, bool polling)
{
	struct weightd_attach_opts o = { .spin_us = polling ? 10u * 1000 * 1000 : 0,
					 .client_name = "bench_ring" };
	struct daemon_child dc;
	struct shared *sh = shared_map(n);
	struct weightd *w;
	int ret;

	daemon_start(&dc, bin, polling ? 1000u * 1000 : 0);
	pin(cpu_client);
	ret = weightd_attach(dc.sock, &o, &w);
	if (ret)
		die(weightd_last_error(), -ret);
	for (uint32_t i = 0; i < n + warmup; i++) {
		uint64_t t0 = wd_now_ns();

		ret = weightd_ping(w);
		if (ret)
			die(weightd_last_error(), -ret);
		if (i >= warmup)
			sh->samples[i - warmup] = wd_now_ns() - t0;
	}
	weightd_detach(w);
	daemon_stop(&dc);
	struct lat l = percentiles(sh->samples, n);

	shared_unmap(sh, n);
	return l;
}

static void print_lat(const char *name, struct lat l)
{
	printf("%-28s p50 %9.0f ns   p99 %9.0f ns   p99.9 %9.0f ns\n", name, l.p50, l.p99,
	       l.p999);
}

static void json_lat(const char *name, struct lat l, bool comma)
{
	printf("\"%s\":{\"p50_ns\":%.0f,\"p99_ns\":%.0f,\"p999_ns\":%.0f}%s", name, l.p50, l.p99,
	       l.p999, comma ? "," : "");
}

int main(int argc, char **argv)
{
	static const unsigned int tput_clients[] = { 1, 4, 16, 64 };
	double tput[ARRAY_SIZE(tput_clients)] = { 0 };
	struct lat pp, fx, ux, rp = { 0 }, rk = { 0 }, dp = { 0 }, dk = { 0 };
	uint64_t t_start = wd_now_ns();
	const char *daemon_bin = daemon_binary();
	bool daemon_only = false;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--quick")) {
			iters_poll = 20000;
			iters_park = 2000;
			warmup = 200;
			tput_ns = 100ull * 1000 * 1000;
		} else if (!strcmp(argv[i], "--daemon-only")) {
			daemon_only = true;
		} else {
			fprintf(stderr, "usage: bench_ring [--quick] [--daemon-only]\n");
			return 2;
		}
	}
	if (daemon_only && !daemon_bin) {
		fprintf(stderr, "bench_ring: --daemon-only, but no weightd next to this program\n");
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	pick_cpus();
	if (cpu_server >= 0)
		printf("pinning: server on cpu %d, client(s) on cpu %d\n", cpu_server, cpu_client);
	else
		printf("pinning: fewer than 2 CPUs allowed, not pinned\n");
	printf("latency: %u polled / %u parked round trips after %u warm-up\n", iters_poll,
	       iters_park, warmup);

	pp = bench_pingpong(iters_poll);
	print_lat("baseline cache-line pingpong", pp);
	if (!daemon_only) {
		rp = bench_ring_latency(iters_poll, POLL_SPIN_NS);
		print_lat("ring ping, polling", rp);
	}
	if (daemon_bin) {
		dp = bench_daemon(daemon_bin, iters_poll, true);
		print_lat("weightd_ping, polling", dp);
	}
	fx = bench_futex(iters_park);
	print_lat("baseline futex pingpong", fx);
	if (!daemon_only) {
		rk = bench_ring_latency(iters_park, 0);
		print_lat("ring ping, parked", rk);
	}
	if (daemon_bin) {
		dk = bench_daemon(daemon_bin, iters_park, false);
		print_lat("weightd_ping, parked", dk);
	} else {
		printf("weightd_ping: skipped, no weightd binary next to this program\n");
	}
	ux = bench_unix(iters_park);
	print_lat("baseline unix socket rpc", ux);

	/*
	 * Throughput: the server polls for 50 us before parking; clients park at once (with up to
	 * TPUT_WINDOW requests in flight each), since up to 64 of them share one core.
	 */
	for (size_t i = 0; i < ARRAY_SIZE(tput_clients) && !daemon_only; i++) {
		tput[i] = bench_ring_tput(tput_clients[i], 50000, 0);
		printf("throughput, %2u clients        %12.0f pings/s\n", tput_clients[i], tput[i]);
	}

	double r_poll = rp.p50 / pp.p50, r_park = rk.p50 / fx.p50, r_unix = ux.p50 / rp.p50;
	double d_poll = dp.p50 / pp.p50, d_park = dk.p50 / fx.p50, d_unix = ux.p50 / dp.p50;

	if (!daemon_only)
		printf("ratios: polling/pingpong %.2f (target <= 2), parked/futex %.2f (target <= "
		       "1.5), unix/polling %.1f (target >= 10)\n",
		       r_poll, r_park, r_unix);
	if (daemon_bin)
		printf("daemon ratios: polling/pingpong %.2f (target <= 2), parked/futex %.2f "
		       "(target <= 1.5), unix/polling %.1f (target >= 10)\n",
		       d_poll, d_park, d_unix);
	printf("{\"bench\":\"ring\",\"cpus\":[%d,%d],", cpu_server, cpu_client);
	json_lat("pingpong", pp, true);
	json_lat("futex", fx, true);
	json_lat("unix", ux, true);
	if (!daemon_only) {
		json_lat("ring_polling", rp, true);
		json_lat("ring_parked", rk, true);
		printf("\"throughput_ops\":{");
		for (size_t i = 0; i < ARRAY_SIZE(tput_clients); i++)
			printf("\"%u\":%.0f%s", tput_clients[i], tput[i],
			       i + 1 < ARRAY_SIZE(tput_clients) ? "," : "");
		printf("},\"ratios\":{\"polling_vs_pingpong\":%.3f,\"parked_vs_futex\":%.3f,"
		       "\"unix_vs_polling\":%.2f},",
		       r_poll, r_park, r_unix);
		printf("\"targets_met\":{\"polling\":%s,\"parked\":%s,\"vs_unix\":%s},",
		       r_poll <= 2.0 ? "true" : "false", r_park <= 1.5 ? "true" : "false",
		       r_unix >= 10.0 ? "true" : "false");
	}
	if (daemon_bin) {
		json_lat("daemon_polling", dp, true);
		json_lat("daemon_parked", dk, true);
		printf("\"daemon_ratios\":{\"polling_vs_pingpong\":%.3f,\"parked_vs_futex\":%.3f,"
		       "\"unix_vs_polling\":%.2f},",
		       d_poll, d_park, d_unix);
		printf("\"daemon_targets_met\":{\"polling\":%s,\"parked\":%s,\"vs_unix\":%s},",
		       d_poll <= 2.0 ? "true" : "false", d_park <= 1.5 ? "true" : "false",
		       d_unix >= 10.0 ? "true" : "false");
	}
	printf("\"elapsed_s\":%.1f}\n", (double)(wd_now_ns() - t_start) / 1e9);
	return 0;
}
