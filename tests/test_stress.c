/*
 * Multi-process tests against a real build/weightd (tests/helpers_daemon.c):
 *
 *   concurrent   16 client processes run mixed operations at once; every one succeeds
 *   kill9        200 times a random client is killed with SIGKILL at a random point
 *                (attaching, pinning, pinging); the daemon survives and, once every client
 *                is gone, holds zero pins and no ring segment but the observer's
 *   hostile      a client writes garbage over its own ring segment 100,000 times (random
 *                bytes, random requests, random cursors, doorbells); the daemon survives and
 *                clients next to it see no error
 *   restart      the daemon is killed (SIGKILL) under live clients, which get -ECONNRESET
 *                within a second and re-attach to a new daemon; then SIGTERM gives -ESHUTDOWN
 *
 * Every wait is bounded; a stuck child is killed and reported.
 */
#include <errno.h>
#include <inttypes.h>
#include <linux/futex.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "weightd.h"

#include "core/base/common.h"
#include "shm/abi.h"
#include "shm/attach.h"
#include "shm/barrier.h"
#include "shm/segment.h"
#include "tests/helpers_daemon.h"

#define CHECK(cond, ...) TD_CHECK(&daemon_, cond, __VA_ARGS__)

#define SEC 1000000000ull
#define MAX_CHILDREN 16

static struct td_daemon daemon_;

/* State shared with the children (an anonymous MAP_SHARED mapping). */
struct slot {
	uint64_t ops;		/* operations completed */
	int32_t err;		/* first error a client saw, 0 while none */
	uint32_t attaches;
	uint64_t err_ns;	/* CLOCK_MONOTONIC when it saw err */
	char msg[200];		/* weightd_last_error() of the failure */
};

struct shared {
	uint32_t stop;		/* children exit when non-zero */
	uint32_t phase;		/* restart test: bumped each time a new daemon is up */
	struct slot slot[MAX_CHILDREN];
};

static struct shared *sh;

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static struct weightd *attach_retry(int spin_us, uint64_t timeout_ns)
{
	struct weightd_attach_opts o = { .spin_us = (uint32_t)spin_us, .client_name = "stress" };
	uint64_t deadline = wd_now_ns() + timeout_ns;
	struct weightd *w;

	while (weightd_attach(daemon_.socket, &o, &w)) {
		if (wd_now_ns() > deadline)
			return NULL;
		usleep(5000);
	}
	return w;
}

/* Records a child's failure in its slot (first one wins) and exits. */
static void child_fail(struct slot *s, int err, const char *what)
{
	if (!s->err) {
		snprintf(s->msg, sizeof(s->msg), "%s: %s", what, weightd_last_error());
		s->err_ns = wd_now_ns();
		store_release(&s->err, err);
	}
	_exit(1);
}

/*
 * Waits for the children in @pids to exit, at most @timeout_ns in all; stragglers are
 * killed. Failures are printed, except deaths by SIGKILL when @quiet_kill (the caller sent
 * it). Returns how many exited with status 0.
 */
static int reap_all(pid_t *pids, int n, uint64_t timeout_ns, bool quiet_kill)
{
	uint64_t deadline = wd_now_ns() + timeout_ns;
	int ok = 0, left = 0, status;

	for (int i = 0; i < n; i++)
		left += pids[i] > 0;

	while (left) {
		for (int i = 0; i < n; i++) {
			if (pids[i] <= 0 || waitpid(pids[i], &status, WNOHANG) != pids[i])
				continue;
			ok += WIFEXITED(status) && WEXITSTATUS(status) == 0;
			if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0) &&
			    !(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL && quiet_kill))
				fprintf(stderr, "child %d (pid %d) ended with status %#x: %s\n", i,
					(int)pids[i], status, sh->slot[i].msg);
			pids[i] = 0;
			left--;
		}
		if (!left)
			break;
		if (wd_now_ns() > deadline) {
			for (int i = 0; i < n; i++) {
				if (pids[i] <= 0)
					continue;
				fprintf(stderr, "child %d (pid %d) still running; killing it\n", i,
					(int)pids[i]);
				kill(pids[i], SIGKILL);
				waitpid(pids[i], &status, 0);
				pids[i] = 0;
			}
			break;
		}
		usleep(2000);
	}
	return ok;
}

/*
 * Polls STATS until nobody but the observer is attached and nothing is pinned, for up to
 * @timeout_ns (the daemon notices a dead client's socket asynchronously).
 */
static void expect_quiet(uint64_t timeout_ns)
{
	struct weightd *w = attach_retry(0, 2 * SEC);
	struct weightd_stats st = { 0 };
	uint64_t deadline = wd_now_ns() + timeout_ns;
	int ret = -1;

	CHECK(w, "observer cannot attach");
	for (;;) {
		ret = weightd_stats(w, &st);
		if (ret || (st.pins_total == 0 && st.ring_segments == 1 && st.clients == 1) ||
		    wd_now_ns() > deadline)
			break;
		usleep(10000);
	}
	CHECK(ret == 0 && st.pins_total == 0 && st.ring_segments == 1 && st.clients == 1,
	      "stats %d: pins %" PRIu64 ", ring segments %" PRIu64 ", clients %" PRIu64
	      " (want 0, 1, 1: the observer alone)",
	      ret, st.pins_total, st.ring_segments, st.clients);
	CHECK(weightd_ping(w) == 0, "daemon does not answer a ping");
	weightd_detach(w);
	CHECK(waitpid(daemon_.pid, NULL, WNOHANG) == 0, "daemon pid %d is gone", (int)daemon_.pid);
}

/* ---- 1. concurrent mixed operations ------------------------------------------------------ */

#define N_CONCURRENT 16
#define CONCURRENT_ROUNDS 120

static void mixed_client(int idx)
{
	struct slot *s = &sh->slot[idx];
	static const char *const models[] = { "sd-tiny", "llama-tiny", "vae-tiny" };
	struct weightd *w = attach_retry(idx % 2 ? 20 : 0, 10 * SEC);
	char key[32], val[64], got[64];
	uint64_t rnd = 0x9e3779b97f4a7c15ull * (uint64_t)(idx + 1);

	if (!w)
		child_fail(s, -ETIMEDOUT, "attach");
	snprintf(key, sizeof(key), "stress-%d", idx);
	for (int i = 0; i < CONCURRENT_ROUNDS; i++) {
		const char *m = models[xorshift(&rnd) % 3];
		struct weightd_stats st;
		struct weightd_state_info ss;
		uint32_t id;
		int ret = 0;

		switch ((i + idx) % 7) {
		case 0: ret = weightd_ping(w); break;
		case 1: ret = weightd_lookup(w, m, &id); break;
		case 2:
			ret = weightd_pin(w, m, NULL, WEIGHTD_TIER_HOST);
			if (!ret)
				ret = weightd_unpin(w, m, NULL, WEIGHTD_TIER_HOST);
			break;
		case 3:
			ret = weightd_stats(w, &st);
			if (!ret && st.requests < (uint64_t)i)
				ret = -EPROTO;
			break;
		case 4:
			snprintf(val, sizeof(val), "value-%d-%d", idx, i);
			ret = weightd_meta_set(w, m, key, val);
			if (!ret)
				ret = weightd_meta_get(w, m, key, got, sizeof(got));
			if (ret >= 0)
				ret = strcmp(got, val) ? -EPROTO : 0;
			break;
		case 5: ret = weightd_state(w, m, NULL, WEIGHTD_TIER_HOST, &ss); break;
		case 6: {
			struct weightd_model_info mi;

			ret = weightd_lookup(w, m, &id);
			if (!ret)
				ret = weightd_model(w, id, &mi);
			if (!ret && strcmp(mi.name, m))
				ret = -EPROTO;
			break;
		}
		}
		if (ret < 0)
			child_fail(s, ret, "mixed op");
		s->ops++;
	}
	weightd_detach(w);
	_exit(0);
}

static void test_concurrent(void **state)
{
	pid_t pids[N_CONCURRENT];
	uint64_t t0 = wd_now_ns();
	int ok;

	(void)state;
	memset(sh, 0, sizeof(*sh));
	for (int i = 0; i < N_CONCURRENT; i++) {
		pids[i] = fork();
		if (pids[i] == 0)
			mixed_client(i);
	}
	ok = reap_all(pids, N_CONCURRENT, 40 * SEC, false);
	for (int i = 0; i < N_CONCURRENT; i++)
		CHECK(sh->slot[i].err == 0 && sh->slot[i].ops == CONCURRENT_ROUNDS,
		      "client %d: %" PRIu64 " ops, error %d: %s", i, sh->slot[i].ops,
		      sh->slot[i].err, sh->slot[i].msg);
	CHECK(ok == N_CONCURRENT, "%d of %d clients succeeded", ok, N_CONCURRENT);
	printf("concurrent: %d clients x %d mixed ops in %.2f s\n", N_CONCURRENT,
	       CONCURRENT_ROUNDS, (double)(wd_now_ns() - t0) / 1e9);
	expect_quiet(5 * SEC);
}

/* ---- 2. SIGKILL at random points --------------------------------------------------------- */

#define KILL_SLOTS 6
#define KILL_ROUNDS 200

static void pinning_client(int idx)
{
	static const char *const models[] = { "sd-tiny", "llama-tiny", "vae-tiny" };
	struct weightd *w = attach_retry(0, 10 * SEC);
	uint64_t rnd = (uint64_t)getpid() * 0x9e3779b97f4a7c15ull;

	(void)idx;
	if (!w)
		_exit(2);
	for (;;) {
		const char *m = models[xorshift(&rnd) % 3];

		/* Pins are left held on purpose part of the time: the lease must drop them. */
		if (weightd_pin(w, m, NULL, WEIGHTD_TIER_HOST) || weightd_ping(w))
			_exit(3);
		if (xorshift(&rnd) % 2 && weightd_unpin(w, m, NULL, WEIGHTD_TIER_HOST))
			_exit(4);
	}
}

static void test_kill9(void **state)
{
	pid_t pids[KILL_SLOTS];
	uint64_t rnd = 0x1234567u, t0 = wd_now_ns();
	int status, early = 0, first_status = 0;

	(void)state;
	memset(sh, 0, sizeof(*sh));
	for (int i = 0; i < KILL_SLOTS; i++) {
		pids[i] = fork();
		if (pids[i] == 0)
			pinning_client(i);
	}
	for (int round = 0; round < KILL_ROUNDS; round++) {
		int i = (int)(xorshift(&rnd) % KILL_SLOTS);

		usleep((useconds_t)(xorshift(&rnd) % 3000));
		kill(pids[i], SIGKILL);
		CHECK(waitpid(pids[i], &status, 0) == pids[i], "waitpid %d", (int)pids[i]);
		/* A client that exited by itself failed a request: that must not happen. */
		if (!(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)) {
			if (!early++)
				first_status = status;
			fprintf(stderr, "round %d: client exited by itself, status %#x\n", round,
				status);
		}
		pids[i] = fork();
		if (pids[i] == 0)
			pinning_client(i);
	}
	for (int i = 0; i < KILL_SLOTS; i++) {
		kill(pids[i], SIGKILL);
		waitpid(pids[i], &status, 0);
	}
	/* Exit 2: no attach within 10 s; 3: a pin or ping failed; 4: an unpin failed. */
	CHECK(early == 0, "%d clients failed a request instead of being killed (the first: "
	      "status %#x)", early, first_status);
	printf("kill9: %d SIGKILLs in %.2f s\n", KILL_ROUNDS, (double)(wd_now_ns() - t0) / 1e9);
	expect_quiet(5 * SEC);
}

/* ---- 3. a hostile client ------------------------------------------------------------------ */

#define HOSTILE_ITERS 100000
#define N_BYSTANDERS 2

struct raw_client {
	int sock;
	struct shm_segment seg;
	struct wd_ring_seg_hdr h;	/* geometry as received, before any scribbling */
};

/* Attaches by hand, as a client that does not use libweightd would. */
static int raw_attach(struct raw_client *rc)
{
	struct wd_hello hello = { .magic = WD_HELLO_MAGIC, .version = WD_ABI_VERSION,
				  .hello_size = sizeof(hello), .sqe_size = sizeof(struct wd_sqe),
				  .cqe_size = sizeof(struct wd_cqe), .client_name = "hostile" };
	struct wd_hello_reply rep;
	int fds[2], nfds = 2;
	ssize_t n;

	rc->sock = attach_connect(daemon_.socket);
	if (rc->sock < 0)
		return rc->sock;
	if (attach_send(rc->sock, &hello, sizeof(hello), NULL, 0))
		goto err;
	n = attach_recv(rc->sock, &rep, sizeof(rep), fds, &nfds);
	if (n != sizeof(rep) || rep.status || nfds != 2)
		goto err;
	close(fds[1]);
	if (shm_segment_map(fds[0], true, sizeof(rc->h), &rc->seg)) {
		close(fds[0]);
		goto err;
	}
	memcpy(&rc->h, rc->seg.base, sizeof(rc->h));
	return 0;
err:
	close(rc->sock);
	return -EPROTO;
}

static void raw_detach(struct raw_client *rc)
{
	shm_segment_close(&rc->seg);
	close(rc->sock);
}

static bool hung_up(int sock)
{
	struct pollfd p = { .fd = sock, .events = POLLIN | POLLRDHUP };

	return poll(&p, 1, 0) > 0 && (p.revents & (POLLHUP | POLLRDHUP | POLLERR));
}

static void hostile_client(int idx)
{
	struct slot *s = &sh->slot[idx];
	struct raw_client rc;
	uint64_t rnd = 0xdeadbeefcafef00dull;
	uint32_t tail = 0;

	if (raw_attach(&rc))
		child_fail(s, -EPROTO, "hostile attach");
	for (uint32_t i = 0; i < HOSTILE_ITERS; i++) {
		uint8_t *b = rc.seg.base;
		struct wd_ring_hdr *sq = (struct wd_ring_hdr *)(b + rc.h.sq_off);
		struct wd_ring_hdr *cq = (struct wd_ring_hdr *)(b + rc.h.cq_off);
		uint64_t r = xorshift(&rnd), mode = r % 64;

		if (mode < 32) {
			/*
			 * Random bytes anywhere but the request slots (random requests are the
			 * next mode's job, where SHUTDOWN is filtered out: the test runs as root,
			 * and a well-formed SHUTDOWN would be obeyed).
			 */
			uint64_t off = xorshift(&rnd) % rc.h.seg_size;
			uint64_t len = 1 + r % 16;

			uint64_t sqe_end = rc.h.sq_entries_off +
					   rc.h.sq_entries * sizeof(struct wd_sqe) + 16;

			if (off >= rc.h.sq_entries_off && off < sqe_end)
				off = rc.h.sq_data_off;
			for (uint64_t k = 0; k < len && off + k < rc.h.seg_size; k++)
				b[off + k] = (uint8_t)xorshift(&rnd);
		} else if (mode < 62) {
			/* A random request behind a valid tail, and the CQ drained blindly. */
			uint8_t e[sizeof(struct wd_sqe)];

			for (size_t k = 0; k < sizeof(e); k++)
				e[k] = (uint8_t)xorshift(&rnd);
			e[0] = (uint8_t)(e[0] % (WD_OP_COUNT + 2));
			if (e[0] == WD_OP_SHUTDOWN)
				e[0] = WD_OP_PING;
			memcpy(b + rc.h.sq_entries_off +
				       (tail & (rc.h.sq_entries - 1)) * sizeof(struct wd_sqe),
			       e, sizeof(e));
			tail = READ_ONCE(sq->tail) + 1;
			if ((uint32_t)(tail - READ_ONCE(sq->head)) > rc.h.sq_entries)
				tail = READ_ONCE(sq->head) + 1;
			store_release(&sq->tail, tail);
			store_release(&cq->head, READ_ONCE(cq->tail));
		} else if (mode == 62) {
			store_release(&sq->tail, (uint32_t)xorshift(&rnd));
		} else {
			store_release(&cq->head, (uint32_t)xorshift(&rnd));
		}
		/* Ring the daemon's doorbell every time, whatever state the ring is in. */
		syscall(SYS_futex, &sq->tail, FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
		/* Let the daemon's shard run now and then, so it reads what was written. */
		if ((i & 127) == 127)
			usleep(20);
		if ((i & 63) == 63 && hung_up(rc.sock)) {
			/* The daemon dropped this client for its garbage: come back for more. */
			raw_detach(&rc);
			if (raw_attach(&rc))
				child_fail(s, -EPROTO, "hostile re-attach");
			tail = 0;
			s->attaches++;
		}
		s->ops++;
	}
	raw_detach(&rc);
	s->err_ns = wd_now_ns();
	_exit(0);
}

static void bystander(int idx)
{
	struct slot *s = &sh->slot[idx];
	struct weightd *w = attach_retry(idx % 2 ? 20 : 0, 10 * SEC);
	uint32_t id;
	int ret;

	if (!w)
		child_fail(s, -ETIMEDOUT, "attach");
	while (!load_acquire(&sh->stop)) {
		ret = weightd_ping(w);
		if (!ret)
			ret = weightd_lookup(w, "sd-tiny", &id);
		if (!ret && (s->ops & 15) == 0) {
			ret = weightd_pin(w, "vae-tiny", NULL, WEIGHTD_TIER_HOST);
			if (!ret)
				ret = weightd_unpin(w, "vae-tiny", NULL, WEIGHTD_TIER_HOST);
		}
		if (ret)
			child_fail(s, ret, "bystander");
		s->ops++;
	}
	weightd_detach(w);
	_exit(0);
}

static void test_hostile(void **state)
{
	pid_t pids[1 + N_BYSTANDERS];
	uint64_t t0 = wd_now_ns();
	int ok, status;

	(void)state;
	memset(sh, 0, sizeof(*sh));
	for (int i = 0; i < 1 + N_BYSTANDERS; i++) {
		pids[i] = fork();
		if (pids[i] == 0) {
			if (i == 0)
				hostile_client(i);
			bystander(i);
		}
	}
	/* Wait for the hostile client alone, then stop the bystanders. */
	for (;;) {
		if (waitpid(pids[0], &status, WNOHANG) == pids[0])
			break;
		if (wd_now_ns() - t0 > 40 * SEC) {
			kill(pids[0], SIGKILL);
			waitpid(pids[0], &status, 0);
			break;
		}
		usleep(5000);
	}
	pids[0] = 0;
	store_release(&sh->stop, 1);
	ok = reap_all(pids, 1 + N_BYSTANDERS, 10 * SEC, false);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0 && sh->slot[0].ops == HOSTILE_ITERS,
	      "hostile client: status %#x after %" PRIu64 " iterations: %s", status,
	      sh->slot[0].ops, sh->slot[0].msg);
	for (int i = 1; i <= N_BYSTANDERS; i++)
		CHECK(sh->slot[i].err == 0 && sh->slot[i].ops > 0,
		      "bystander %d: %" PRIu64 " ops, error %d: %s", i, sh->slot[i].ops,
		      sh->slot[i].err, sh->slot[i].msg);
	CHECK(ok == N_BYSTANDERS, "%d of %d bystanders succeeded", ok, N_BYSTANDERS);
	printf("hostile: %d iterations in %.2f s, %u re-attaches after being dropped, bystanders "
	       "did %" PRIu64 " + %" PRIu64 " request rounds, %.2f s in all\n",
	       HOSTILE_ITERS, (double)(sh->slot[0].err_ns - t0) / 1e9, sh->slot[0].attaches,
	       sh->slot[1].ops, sh->slot[2].ops, (double)(wd_now_ns() - t0) / 1e9);
	expect_quiet(5 * SEC);
}

/* ---- 4. the daemon dies and comes back ---------------------------------------------------- */

#define N_RESTART 4

/*
 * Pings until the daemon goes away, records the error and when it came, then re-attaches
 * when the parent says a new daemon is up; repeats until told to stop.
 */
static void restart_client(int idx)
{
	struct slot *s = &sh->slot[idx];
	uint32_t phase = load_acquire(&sh->phase);
	int ret;

	for (;;) {
		struct weightd *w = attach_retry(idx % 2 ? 20 : 0, 10 * SEC);

		if (!w)
			_exit(2);
		s->attaches++;
		/* -ECANCELED: a ping in flight when the daemon began shutting down. */
		while ((ret = weightd_ping(w)) == 0 || ret == -ECANCELED) {
			s->ops += ret == 0;
			usleep(300);
		}
		s->err_ns = wd_now_ns();
		snprintf(s->msg, sizeof(s->msg), "%s", weightd_last_error());
		store_release(&s->err, ret);
		/* Every later call fails the same way at once. */
		if (weightd_ping(w) != ret)
			_exit(3);
		weightd_detach(w);
		while (load_acquire(&sh->phase) == phase && !load_acquire(&sh->stop))
			usleep(1000);
		if (load_acquire(&sh->stop))
			_exit(0);
		phase = load_acquire(&sh->phase);
		WRITE_ONCE(s->err, 0);
	}
}

/* Waits until every restart client has made @min_ops pings since @base. */
static void wait_pinging(const uint64_t *base, uint64_t min_ops)
{
	uint64_t deadline = wd_now_ns() + 10 * SEC;

	for (int i = 0; i < N_RESTART; i++) {
		while (READ_ONCE(sh->slot[i].ops) < base[i] + min_ops && wd_now_ns() < deadline)
			usleep(1000);
		CHECK(READ_ONCE(sh->slot[i].ops) >= base[i] + min_ops,
		      "client %d made %" PRIu64 " pings (attached %u times)", i,
		      sh->slot[i].ops - base[i], sh->slot[i].attaches);
	}
}

/* Kills the daemon with @sig and checks that every client saw @want within a second. */
static void kill_and_check(int sig, int want)
{
	uint64_t t_kill = wd_now_ns();

	td_daemon_kill(&daemon_, sig, 5000);
	for (int i = 0; i < N_RESTART; i++) {
		while (!load_acquire(&sh->slot[i].err) && wd_now_ns() - t_kill < 3 * SEC)
			usleep(1000);
		struct slot *s = &sh->slot[i];
		double secs = (double)(s->err_ns - t_kill) / 1e9;

		CHECK(s->err == want && s->err_ns - t_kill < SEC,
		      "signal %d, client %d: error %d (want %d) after %.3f s: %s", sig, i, s->err,
		      want, s->err ? secs : -1.0, s->msg);
		printf("signal %2d: client %d saw %s after %.0f ms\n", sig, i, strerror(-s->err),
		       secs * 1000);
	}
}

static void test_restart(void **state)
{
	pid_t pids[N_RESTART];
	uint64_t base[N_RESTART] = { 0 };

	(void)state;
	memset(sh, 0, sizeof(*sh));
	for (int i = 0; i < N_RESTART; i++) {
		pids[i] = fork();
		if (pids[i] == 0)
			restart_client(i);
	}
	wait_pinging(base, 50);
	kill_and_check(SIGKILL, -ECONNRESET);

	CHECK(td_daemon_start(&daemon_) == 0, "restart after SIGKILL");
	for (int i = 0; i < N_RESTART; i++)
		base[i] = sh->slot[i].ops;
	store_release(&sh->phase, 1);
	wait_pinging(base, 50);
	kill_and_check(SIGTERM, -ESHUTDOWN);

	CHECK(td_daemon_start(&daemon_) == 0, "restart after SIGTERM");
	for (int i = 0; i < N_RESTART; i++)
		base[i] = sh->slot[i].ops;
	store_release(&sh->phase, 2);
	wait_pinging(base, 20);
	store_release(&sh->stop, 1);
	/* The clients are pinging a live daemon: end them, they only exit between phases. */
	for (int i = 0; i < N_RESTART; i++)
		kill(pids[i], SIGKILL);
	reap_all(pids, N_RESTART, 5 * SEC, true);
	for (int i = 0; i < N_RESTART; i++)
		CHECK(sh->slot[i].attaches == 3, "client %d attached %u times, want 3", i,
		      sh->slot[i].attaches);
	expect_quiet(5 * SEC);
}

static int group_setup(void **state)
{
	(void)state;
	sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED)
		return -1;
	return td_group_setup(&daemon_, NULL);
}

static int group_teardown(void **state)
{
	(void)state;
	td_daemon_teardown(&daemon_);
	munmap(sh, sizeof(*sh));
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_concurrent),
		cmocka_unit_test(test_kill9),
		cmocka_unit_test(test_hostile),
		cmocka_unit_test(test_restart),
	};

	if (!td_have_daemon())
		return 77;
	if (getenv("WD_TEST_FILTER"))
		cmocka_set_test_filter(getenv("WD_TEST_FILTER"));
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
