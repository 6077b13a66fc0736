/*
 * test_daemon: the real weightd binary (build/weightd next to this test's directory) run as a
 * child process with a temporary state directory, socket and model root, spoken to with the
 * raw protocol (shm/attach.h + shm/ring.h + shm/registry.h), no client library:
 * the attach handshake and its refusals (ABI mismatch, malformed hellos, a peer outside the
 * allow-list), ping, scan + lookup, the not-available load, pins released when the socket
 * closes, every other op's happy and error paths, a hostile client scribbling over its own
 * ring while another keeps pinging, recovery from a daemon killed with SIGKILL, and a clean
 * SIGTERM exit. Every case runs under alarm() so a hang fails instead of blocking.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/base/common.h"
#include "core/format/gen.h"
#include "shm/abi.h"
#include "shm/attach.h"
#include "shm/registry.h"
#include "shm/ring.h"
#include "shm/segment.h"

#define CASE_SECONDS 60
#define WAIT_NS (5ll * 1000 * 1000 * 1000)

#define CHECK(cond, ...)                                                                   \
	do {                                                                               \
		if (!(cond))                                                               \
			fail_msg(__VA_ARGS__);                                             \
	} while (0)

static char tmp_root[PATH_MAX];
static char weightd_bin[PATH_MAX + 16];
static char skip_reason[256];
static int case_no;
/* Daemons this process started and has not reaped: a failed case kills them in teardown. */
static pid_t live[4];

static void live_add(pid_t pid)
{
	for (size_t i = 0; i < ARRAY_SIZE(live); i++)
		if (!live[i]) {
			live[i] = pid;
			return;
		}
}

static void live_del(pid_t pid)
{
	for (size_t i = 0; i < ARRAY_SIZE(live); i++)
		if (live[i] == pid)
			live[i] = 0;
}

struct dproc {
	pid_t pid;
	char dir[PATH_MAX];
	char sock[PATH_MAX];
	char state[PATH_MAX];
	char models[PATH_MAX];
};

struct tclient {
	int fd;
	struct wd_hello_reply reply;
	struct shm_segment seg;
	struct ring sq, cq;
	struct registry_view reg;
	bool reg_ok;
	uint64_t next_ud;
};

struct result {
	struct wd_cqe cqe;
	char data[WD_DATA_SLOT_SIZE + 1];
	unsigned int progress;
};

static void fmt(char *buf, size_t size, const char *f, ...) WD_PRINTF(3, 4);
static void fmt(char *buf, size_t size, const char *f, ...)
{
	va_list ap;
	int n;

	va_start(ap, f);
	n = vsnprintf(buf, size, f, ap);
	va_end(ap);
	CHECK(n >= 0 && (size_t)n < size, "path too long: %s", buf);
}

static void on_alarm(int sig)
{
	static const char m[] = "test_daemon: a case ran past its time limit\n";
	ssize_t r = write(2, m, sizeof(m) - 1);

	(void)sig;
	(void)r;
	for (size_t i = 0; i < ARRAY_SIZE(live); i++)
		if (live[i])
			kill(live[i], SIGKILL);
	_exit(1);
}

/* ---- the daemon process ---------------------------------------------------------------- */

static bool can_connect(const char *path)
{
	int fd = attach_connect(path);

	if (fd < 0)
		return false;
	close(fd);
	return true;
}

/* Starts build/weightd with extra options @extra (NULL-terminated) and waits for its socket. */
static void dproc_start_in(struct dproc *p, const char *const *extra)
{
	const char *argv[32] = { weightd_bin, "--foreground", "--log-level", "warn",
				 "--state-dir", p->state, "--socket", p->sock, "--models",
				 p->models, "--no-scan" };
	size_t n = 11;
	uint64_t t0 = wd_now_ns();

	for (size_t i = 0; extra && extra[i] && n < ARRAY_SIZE(argv) - 1; i++)
		argv[n++] = extra[i];
	argv[n] = NULL;
	p->pid = fork();
	CHECK(p->pid >= 0, "fork: %s", strerror(errno));
	if (p->pid == 0) {
		execv(weightd_bin, (char *const *)argv);
		_exit(127);
	}
	live_add(p->pid);
	while (!can_connect(p->sock)) {
		int st;

		CHECK(waitpid(p->pid, &st, WNOHANG) == 0, "weightd exited early (status %#x)", st);
		CHECK(wd_now_ns() - t0 < (uint64_t)WAIT_NS, "weightd did not listen on %s",
		      p->sock);
		usleep(5000);
	}
}

static void dproc_init(struct dproc *p)
{
	memset(p, 0, sizeof(*p));
	fmt(p->dir, sizeof(p->dir), "%s/case%d", tmp_root, ++case_no);
	fmt(p->sock, sizeof(p->sock), "%s/sock/weightd.sock", p->dir);
	fmt(p->state, sizeof(p->state), "%s/state", p->dir);
	fmt(p->models, sizeof(p->models), "%s/models", p->dir);
	CHECK(mkdir(p->dir, 0755) == 0, "mkdir %s: %s", p->dir, strerror(errno));
}

static void dproc_start(struct dproc *p, const char *const *extra)
{
	dproc_init(p);
	dproc_start_in(p, extra);
}

/* Waits for the daemon to exit and returns its wait status. */
static int dproc_wait(struct dproc *p)
{
	int st = 0;

	CHECK(waitpid(p->pid, &st, 0) == p->pid, "waitpid: %s", strerror(errno));
	live_del(p->pid);
	p->pid = 0;
	return st;
}

static void dproc_stop(struct dproc *p)
{
	int st;

	if (!p->pid)
		return;
	kill(p->pid, SIGTERM);
	st = dproc_wait(p);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "weightd exit status %#x after SIGTERM", st);
}

/* ---- a raw client ------------------------------------------------------------------------ */

static struct wd_hello hello_default(void)
{
	struct wd_hello h = { .magic = WD_HELLO_MAGIC, .version = WD_ABI_VERSION,
			      .hello_size = sizeof(h), .sqe_size = sizeof(struct wd_sqe),
			      .cqe_size = sizeof(struct wd_cqe), .sq_entries = 16 };

	snprintf(h.client_name, sizeof(h.client_name), "test_daemon");
	return h;
}

/* Sends @h (@len bytes) and reads the reply. Returns the reply's status. */
static int attach_raw(const char *sock, const void *h, size_t len, struct tclient *c)
{
	int fds[ATTACH_MAX_FDS], nfds = ATTACH_MAX_FDS, ret;
	ssize_t n;

	memset(c, 0, sizeof(*c));
	c->seg.fd = -1;
	c->fd = attach_connect(sock);
	CHECK(c->fd >= 0, "connect %s: %s", sock, strerror(-c->fd));
	ret = attach_send(c->fd, h, len, NULL, 0);
	CHECK(ret == 0 || ret == -EPIPE, "send hello: %s", strerror(-ret));
	n = attach_recv(c->fd, &c->reply, sizeof(c->reply), fds, &nfds);
	CHECK(n == (ssize_t)sizeof(c->reply), "reply: %zd bytes (%s)", n,
	      n < 0 ? strerror((int)-n) : "short");
	CHECK(c->reply.magic == WD_REPLY_MAGIC && c->reply.reply_size == sizeof(c->reply),
	      "reply magic %#x size %u", c->reply.magic, c->reply.reply_size);
	if (c->reply.status) {
		CHECK(nfds == 0, "a refusal carried %d descriptors", nfds);
		return c->reply.status;
	}
	CHECK(nfds == 3 && c->reply.n_fds == 3, "success with %d descriptors", nfds);
	close(fds[2]);
	ret = shm_segment_map(fds[0], true, c->reply.ring_seg_size, &c->seg);
	CHECK(ret == 0, "map ring segment: %s", strerror(-ret));
	ret = ring_seg_attach(c->seg.base, c->seg.size, &c->sq, &c->cq, NULL);
	CHECK(ret == 0, "ring_seg_attach: %s", strerror(-ret));
	ret = registry_attach(fds[1], &c->reg);
	CHECK(ret == 0, "registry_attach: %s", strerror(-ret));
	c->reg_ok = true;
	return 0;
}

static void tclient_attach(const char *sock, struct tclient *c)
{
	struct wd_hello h = hello_default();
	int ret = attach_raw(sock, &h, sizeof(h), c);

	CHECK(ret == 0, "attach refused: %d %s", ret, c->reply.message);
}

static void tclient_close(struct tclient *c)
{
	if (c->reg_ok)
		registry_detach(&c->reg);
	c->reg_ok = false;
	shm_segment_close(&c->seg);
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

/*
 * Submits one request (payload @arg, @len bytes) and waits for its final completion,
 * counting progress completions. Returns the final res.
 */
static int call(struct tclient *c, struct wd_sqe s, const void *arg, size_t len,
		struct result *out)
{
	struct result local;
	void *slot;
	int ret;

	if (!out)
		out = &local;
	memset(out, 0, sizeof(*out));
	s.user_data = ++c->next_ud;
	s.arg_len = (uint16_t)len;
	slot = ring_prod_slot(&c->sq);
	CHECK(slot, "SQ full or broken (%d)", ring_error(&c->sq));
	memcpy(slot, &s, sizeof(s));
	if (len)
		memcpy(ring_prod_data(&c->sq), arg, len);
	ring_prod_advance(&c->sq);
	ring_prod_publish(&c->sq);
	ring_notify(&c->sq);
	for (;;) {
		ret = ring_wait(&c->cq, 20000, WAIT_NS);
		CHECK(ret > 0, "waiting for op %u: %d (ring status %u)", s.opcode, ret,
		      ring_seg_status(c->seg.base, NULL));
		memcpy(&out->cqe, ring_cons_slot(&c->cq, 0), sizeof(out->cqe));
		if (out->cqe.data_len <= WD_DATA_SLOT_SIZE)
			memcpy(out->data, ring_cons_data(&c->cq, 0), out->cqe.data_len);
		ring_cons_release(&c->cq, 1);
		CHECK(out->cqe.user_data == s.user_data, "completion for %llu, expected %llu",
		      (unsigned long long)out->cqe.user_data, (unsigned long long)s.user_data);
		if (out->cqe.flags & WD_CQE_F_PROGRESS) {
			out->progress++;
			continue;
		}
		return out->cqe.res;
	}
}

static struct wd_sqe sqe_of(uint8_t op, uint32_t model)
{
	return (struct wd_sqe){ .opcode = op, .model = model, .component = WD_ID_NONE };
}

static uint64_t stat_of(struct tclient *c, unsigned int which)
{
	struct result r;
	uint64_t v[WD_STAT_COUNT];
	int ret = call(c, sqe_of(WD_OP_STATS, WD_ID_NONE), NULL, 0, &r);

	CHECK(ret == WD_STAT_COUNT && r.cqe.data_len == sizeof(v), "stats: res %d len %u", ret,
	      r.cqe.data_len);
	memcpy(v, r.data, sizeof(v));
	return v[which];
}

static void gen_models(const char *dir)
{
	int ret = gen_preset("demo", dir, NULL);

	CHECK(ret == 0, "gen_preset demo %s: %s", dir, strerror(-ret));
}

/* Scans the daemon's models dir; returns the number of models found. */
static int scan(struct tclient *c, const char *dir, struct result *r)
{
	return call(c, sqe_of(WD_OP_SCAN, WD_ID_NONE), dir, strlen(dir), r);
}

static uint32_t lookup(struct tclient *c, const char *name)
{
	struct result r;
	int ret = call(c, sqe_of(WD_OP_LOOKUP, WD_ID_NONE), name, strlen(name), &r);

	CHECK(ret >= 0, "lookup %s: %d %s", name, ret, r.data);
	return (uint32_t)ret;
}

/* ---- cases ------------------------------------------------------------------------------- */

static void test_attach_ok(void **state)
{
	struct dproc p;
	struct tclient c;
	const struct wd_ring_seg_hdr *h;

	dproc_start(&p, NULL);
	tclient_attach(p.sock, &c);
	h = c.seg.base;
	CHECK(c.reply.client_id > 0 && h->client_id == c.reply.client_id,
	      "client id reply %u segment %u", c.reply.client_id, h->client_id);
	CHECK(h->sq_entries == 16 && h->cq_entries == 32, "ring sizes %u/%u", h->sq_entries,
	      h->cq_entries);
	CHECK(registry_counter(&c.reg, WD_CTR_CLIENTS) == 1, "clients counter %llu",
	      (unsigned long long)registry_counter(&c.reg, WD_CTR_CLIENTS));
	CHECK(stat_of(&c, WD_STAT_RING_SEGS) == 1, "ring segments live");
	tclient_close(&c);
	dproc_stop(&p);
}

struct hello_case {
	const char *what;
	void (*mutate)(struct wd_hello *h, size_t *len);
	int status;
	const char *message;	/* substring of the reply's message; NULL: the versions */
};

static void m_version(struct wd_hello *h, size_t *len) { h->version = WD_ABI_VERSION + 1; }
static void m_magic(struct wd_hello *h, size_t *len) { h->magic = 0x12345678; }
static void m_sqe(struct wd_hello *h, size_t *len) { h->sqe_size = 128; }
static void m_short(struct wd_hello *h, size_t *len) { *len = 32; }
static void m_flags(struct wd_hello *h, size_t *len) { h->flags = 4; }
static void m_entries(struct wd_hello *h, size_t *len) { h->sq_entries = 3; }
static void m_huge(struct wd_hello *h, size_t *len) { h->cq_entries = 1u << 20; }

static const struct hello_case hello_cases[] = {
	{ "next ABI version", m_version, -EPROTONOSUPPORT, NULL },	/* names both versions */
	{ "bad magic", m_magic, -EBADMSG, "magic 0x12345678" },
	{ "sqe size 128", m_sqe, -EBADMSG, "sqe 128" },
	{ "short hello", m_short, -EBADMSG, "32 bytes" },
	{ "unknown flags", m_flags, -EINVAL, "flags" },
	{ "sq_entries 3", m_entries, -EINVAL, "powers of two" },
	{ "cq_entries 2^20", m_huge, -EINVAL, "powers of two" },
};

static void test_hello_rejected(void **state)
{
	char versions[64];
	struct dproc p;

	snprintf(versions, sizeof(versions), "client ABI %u, daemon ABI %u", WD_ABI_VERSION + 1,
		 WD_ABI_VERSION);
	dproc_start(&p, NULL);
	for (size_t i = 0; i < ARRAY_SIZE(hello_cases); i++) {
		const struct hello_case *hc = &hello_cases[i];
		const char *want = hc->message ? hc->message : versions;
		struct wd_hello h = hello_default();
		size_t len = sizeof(h);
		struct tclient c;
		int ret;

		hc->mutate(&h, &len);
		ret = attach_raw(p.sock, &h, len, &c);
		CHECK(ret == hc->status && strstr(c.reply.message, want),
		      "%s: status %d message \"%s\", expected %d \"%s\"", hc->what, ret,
		      c.reply.message, hc->status, want);
		tclient_close(&c);
	}
	/* The daemon still serves a well-formed client after all of that. */
	struct tclient ok;
	struct wd_sqe s = sqe_of(WD_OP_PING, WD_ID_NONE);

	tclient_attach(p.sock, &ok);
	CHECK(call(&ok, s, NULL, 0, NULL) == 0, "ping after refusals");
	tclient_close(&ok);
	dproc_stop(&p);
}

/* A child that drops to uid/gid 65534 connects; the default allow-list is root only. */
static void test_not_allowed(void **state)
{
	struct dproc p;
	char sockdir[] = "/tmp/wdt-allow.XXXXXX";
	pid_t pid;
	int st;

	if (geteuid() != 0) {
		snprintf(skip_reason, sizeof(skip_reason),
			 "allow-list case needs root to run a peer as uid 65534");
		skip();
	}
	/*
	 * The socket goes in a directory of its own under /tmp that the unprivileged peer can
	 * reach, and is made writable for it, so that the refusal is the daemon's, not connect's.
	 */
	CHECK(mkdtemp(sockdir) && chmod(sockdir, 0755) == 0, "mkdtemp: %s", strerror(errno));
	dproc_init(&p);
	fmt(p.sock, sizeof(p.sock), "%s/weightd.sock", sockdir);
	dproc_start_in(&p, NULL);
	CHECK(chmod(p.sock, 0666) == 0, "chmod: %s", strerror(errno));
	pid = fork();
	CHECK(pid >= 0, "fork");
	if (pid == 0) {
		struct wd_hello h = hello_default();
		struct wd_hello_reply r;
		int fds[2], nfds = 2, fd;
		ssize_t n;

		if (setresgid(65534, 65534, 65534) || setgroups(0, NULL) ||
		    setresuid(65534, 65534, 65534))
			_exit(10);
		fd = attach_connect(p.sock);
		if (fd < 0)
			_exit(11);
		attach_send(fd, &h, sizeof(h), NULL, 0);
		n = attach_recv(fd, &r, sizeof(r), fds, &nfds);
		if (n != sizeof(r))
			_exit(12);
		if (r.status != -EACCES || nfds != 0 || !strstr(r.message, "uid 65534"))
			_exit(13);
		/* The daemon hangs up after the refusal. */
		n = attach_recv(fd, &r, sizeof(r), NULL, NULL);
		_exit(n == 0 ? 0 : 14);
	}
	CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st), "child status %#x", st);
	CHECK(WEXITSTATUS(st) == 0, "unprivileged peer: step %d failed (10 setresuid, 11 connect, "
	      "12 reply, 13 not -EACCES, 14 no hangup)", WEXITSTATUS(st));
	dproc_stop(&p);
	fmt(p.sock, sizeof(p.sock), "%s/weightd.sock.lock", sockdir);
	unlink(p.sock);
	rmdir(sockdir);
}

static void test_ping(void **state)
{
	struct dproc p;
	struct tclient c;
	struct result r;

	uint64_t t0;

	dproc_start(&p, NULL);
	tclient_attach(p.sock, &c);
	t0 = wd_now_ns();
	for (uint64_t i = 0; i < 2000; i++) {
		struct wd_sqe s = sqe_of(WD_OP_PING, WD_ID_NONE);

		s.arg[0] = 0xabcdef0000ull + i;
		CHECK(call(&c, s, NULL, 0, &r) == 0 && r.cqe.aux0 == s.arg[0],
		      "ping %llu: res %d aux0 %#llx", (unsigned long long)i, r.cqe.res,
		      (unsigned long long)r.cqe.aux0);
	}
	printf("2000 pings through weightd: %.1f us per round trip (mean)\n",
	       (double)(wd_now_ns() - t0) / 2000 / 1000);
	CHECK(stat_of(&c, WD_STAT_MY_REQUESTS) == 2001, "my requests %llu",
	      (unsigned long long)stat_of(&c, WD_STAT_MY_REQUESTS));
	tclient_close(&c);
	dproc_stop(&p);
}

/* Scan, lookup, and every op's answer on a scanned model, row by row. */
static void test_ops(void **state)
{
	struct dproc p;
	struct tclient c;
	struct result r;
	struct wd_reg_model m;
	uint32_t llama, id;
	int ret;

	dproc_init(&p);
	gen_models(p.models);
	dproc_start_in(&p, NULL);
	tclient_attach(p.sock, &c);

	ret = scan(&c, p.models, &r);
	CHECK(ret == 3 && r.progress >= 1, "scan: res %d (3 models expected), %u progress, \"%s\"",
	      ret, r.progress, r.data);
	llama = lookup(&c, "llama-tiny");
	CHECK(registry_find_model(&c.reg, "llama-tiny", &id, &m) == 0 && id == llama &&
	      m.n_tensors > 0 && m.nbytes > 0, "registry has llama-tiny at %u (lookup %u), %u tensors",
	      id, llama, m.n_tensors);
	CHECK(lookup(&c, "sd-tiny") != llama, "two models, one index");
	ret = call(&c, sqe_of(WD_OP_LOOKUP, WD_ID_NONE), "nope", 4, &r);
	CHECK(ret == -ENOENT && strstr(r.data, "nope"), "lookup nope: %d \"%s\"", ret, r.data);

	struct wd_sqe st = sqe_of(WD_OP_STATE, llama);

	ret = call(&c, st, NULL, 0, &r);
	CHECK(ret == WD_STATE_ABSENT && r.cqe.aux0 == 0 && r.cqe.aux1 == m.nbytes,
	      "status: %d %llu/%llu (model bytes %llu)", ret, (unsigned long long)r.cqe.aux0,
	      (unsigned long long)r.cqe.aux1, (unsigned long long)m.nbytes);
	ret = call(&c, sqe_of(WD_OP_UNLOAD, llama), NULL, 0, &r);
	CHECK(ret == 0 && strstr(r.data, "not resident"), "unload: %d \"%s\"", ret, r.data);

	/* Load: progress, then the bytes resident and read; again: a hit; then unload. */
	ret = call(&c, sqe_of(WD_OP_LOAD, llama), NULL, 0, &r);
	CHECK(ret == 0 && r.cqe.aux0 == m.nbytes && r.cqe.aux1 >= m.nbytes && r.progress >= 1,
	      "load: %d bytes %llu read %llu (model %llu), %u progress \"%s\"", ret,
	      (unsigned long long)r.cqe.aux0, (unsigned long long)r.cqe.aux1,
	      (unsigned long long)m.nbytes, r.progress, r.data);
	ret = call(&c, sqe_of(WD_OP_LOAD, WD_ID_NONE), "llama-tiny", 10, &r);
	CHECK(ret == 0 && r.cqe.aux1 == 0 && r.progress == 0, "load by name, a hit: %d read %llu",
	      ret, (unsigned long long)r.cqe.aux1);
	ret = call(&c, st, NULL, 0, &r);
	CHECK(ret == WD_STATE_RESIDENT, "status after load: %d", ret);
	struct wd_sqe gpu = sqe_of(WD_OP_LOAD, llama);

	gpu.tier = WD_TIER_CUDA(0);
	ret = call(&c, gpu, NULL, 0, &r);
	CHECK(ret == -ENOTSUP && strstr(r.data, "GPU tier not available"), "load on cuda:0: %d "
	      "\"%s\"", ret, r.data);
	ret = call(&c, sqe_of(WD_OP_UNLOAD, llama), NULL, 0, &r);
	CHECK(ret == 0 && r.cqe.aux0 > 0, "unload: %d, %llu bytes released \"%s\"", ret,
	      (unsigned long long)r.cqe.aux0, r.data);
	ret = call(&c, st, NULL, 0, &r);
	CHECK(ret == WD_STATE_ABSENT, "status after unload: %d", ret);

	ret = call(&c, sqe_of(WD_OP_VALIDATE, llama), NULL, 0, &r);
	CHECK(ret == 0 && r.cqe.aux0 == 2, "validate: %d files %llu \"%s\"", ret,
	      (unsigned long long)r.cqe.aux0, r.data);
	struct wd_sqe deep = sqe_of(WD_OP_VALIDATE, llama);

	deep.arg[0] = WD_VALIDATE_DEEP;
	ret = call(&c, deep, NULL, 0, &r);
	CHECK(ret == 0 && r.cqe.aux1 == m.nbytes && r.progress >= 1,
	      "deep validate: %d bytes %llu of %llu, %u progress", ret,
	      (unsigned long long)r.cqe.aux1, (unsigned long long)m.nbytes, r.progress);

	ret = call(&c, sqe_of(WD_OP_META_SET, llama), "note\0hello", 10, &r);
	CHECK(ret == 0, "meta set: %d \"%s\"", ret, r.data);
	ret = call(&c, sqe_of(WD_OP_META_GET, llama), "note", 4, &r);
	CHECK(ret == 5 && !memcmp(r.data, "hello", 5), "meta get: %d \"%s\"", ret, r.data);
	ret = call(&c, sqe_of(WD_OP_META_GET, llama), "missing", 7, &r);
	CHECK(ret == -ENOENT, "meta get missing: %d", ret);

	/* Malformed requests get error completions, and the ring keeps working. */
	struct {
		const char *what;
		struct wd_sqe s;
		int res;
	} bad[] = {
		{ "opcode 0", { .opcode = 0 }, -EOPNOTSUPP },
		{ "opcode 200", { .opcode = 200 }, -EOPNOTSUPP },
		{ "reserved", { .opcode = WD_OP_PING, .reserved = 1 }, -EINVAL },
		{ "tier 16", { .opcode = WD_OP_STATE, .tier = 16, .model = llama }, -EINVAL },
		{ "model beyond", { .opcode = WD_OP_STATE, .model = 999999,
				    .component = WD_ID_NONE }, -ENOENT },
		{ "component of another model", { .opcode = WD_OP_PIN, .model = llama,
						  .component = 0 }, -EINVAL },
		{ "meta by name", { .opcode = WD_OP_META_GET, .model = WD_ID_NONE }, -EINVAL },
		{ "validate flags", { .opcode = WD_OP_VALIDATE, .model = llama,
				      .component = WD_ID_NONE, .arg = { 8 } }, -EINVAL },
	};
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		/* Component 0 belongs to the first model published; make sure it is not llama. */
		if (bad[i].s.opcode == WD_OP_PIN && llama == 0)
			bad[i].s.component = m.n_components;
		ret = call(&c, bad[i].s, "k", bad[i].s.opcode == WD_OP_META_GET, &r);
		CHECK(ret == bad[i].res, "%s: res %d, expected %d (\"%s\")", bad[i].what, ret,
		      bad[i].res, r.data);
	}
	CHECK(stat_of(&c, WD_STAT_ERRORS) >= ARRAY_SIZE(bad) + 3, "errors counted");
	CHECK(stat_of(&c, WD_STAT_MODELS) == 3, "models published");
	tclient_close(&c);
	dproc_stop(&p);
}

/* Pins belong to the socket: closing it releases them. */
static void test_pin_release(void **state)
{
	struct dproc p;
	struct tclient a, b;
	struct wd_reg_model m;
	struct result r;
	uint32_t id;
	uint64_t t0;
	int ret;

	dproc_init(&p);
	gen_models(p.models);
	dproc_start_in(&p, NULL);
	tclient_attach(p.sock, &a);
	tclient_attach(p.sock, &b);
	CHECK(scan(&a, p.models, &r) == 3, "scan: %d", r.cqe.res);
	id = lookup(&a, "sd-tiny");

	ret = call(&a, sqe_of(WD_OP_UNPIN, id), NULL, 0, &r);
	CHECK(ret == -ENOENT && strstr(r.data, "not pinned"), "unpin unpinned: %d \"%s\"", ret,
	      r.data);
	CHECK(call(&a, sqe_of(WD_OP_PIN, id), NULL, 0, &r) == 0, "pin: %d", r.cqe.res);
	CHECK(call(&a, sqe_of(WD_OP_PIN, id), NULL, 0, &r) == 0 && r.cqe.aux0 == 1,
	      "pin again is a no-op: %d, %llu held", r.cqe.res, (unsigned long long)r.cqe.aux0);
	struct wd_sqe cuda = sqe_of(WD_OP_PIN, WD_ID_NONE);

	cuda.tier = WD_TIER_CUDA(0);
	CHECK(call(&a, cuda, "sd-tiny", 7, &r) == 0 && r.cqe.aux0 == 2, "pin on cuda:0 by name");
	CHECK(stat_of(&b, WD_STAT_PINS) == 2, "daemon pins %llu",
	      (unsigned long long)stat_of(&b, WD_STAT_PINS));
	CHECK(registry_read_model(&b.reg, id, &m) == 0 && m.pins == 2, "registry pins %u", m.pins);
	ret = call(&b, sqe_of(WD_OP_UNLOAD, id), NULL, 0, &r);
	CHECK(ret == -EBUSY, "unload of a model another client pinned: %d \"%s\"", ret, r.data);

	tclient_close(&a);
	t0 = wd_now_ns();
	while (stat_of(&b, WD_STAT_PINS) != 0 || stat_of(&b, WD_STAT_CLIENTS) != 1) {
		CHECK(wd_now_ns() - t0 < 2000000000ull, "pins %llu clients %llu 2 s after close",
		      (unsigned long long)stat_of(&b, WD_STAT_PINS),
		      (unsigned long long)stat_of(&b, WD_STAT_CLIENTS));
		usleep(2000);
	}
	CHECK(registry_read_model(&b.reg, id, &m) == 0 && m.pins == 0, "registry pins %u", m.pins);
	CHECK(registry_counter(&b.reg, WD_CTR_PINS) == 0, "pins counter");
	tclient_close(&b);
	dproc_stop(&p);
}

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Whether the daemon hung up on @c (without waiting). */
static bool hung_up(struct tclient *c, int timeout_ms)
{
	struct pollfd pf = { .fd = c->fd, .events = POLLIN };

	return poll(&pf, 1, timeout_ms) == 1 && (pf.revents & (POLLHUP | POLLIN));
}

/*
 * A hostile client attacks the daemon through its own ring segment 100,000 times, ringing
 * the doorbell each time: raw random bytes anywhere (cursors, entries, payloads, header),
 * and, every other time, a correctly published entry full of random bytes (so the request
 * validation path and the full-CQ path see garbage, not just the cursor checks). Whenever
 * the daemon drops it, it attaches again and goes on. A second client pings every 100
 * iterations and must see nothing but correct answers.
 */
static void test_hostile_client(void **state)
{
	struct dproc p;
	struct tclient h, good;
	uint64_t seed = 0x9e3779b97f4a7c15ull;
	unsigned int drops = 0, garbage_entries = 0;

	dproc_start(&p, NULL);
	tclient_attach(p.sock, &h);
	tclient_attach(p.sock, &good);
	for (uint32_t i = 0; i < 100000; i++) {
		uint64_t r = xorshift(&seed);
		uint8_t *base = h.seg.base;
		size_t off = (size_t)(r % (h.seg.size - 8));

		if (i % 2 == 0) {
			uint8_t *slot = ring_prod_slot(&h.sq);

			/* A full SQ (the daemon stalls on our full CQ) falls through to scribbling. */
			if (slot) {
				for (size_t k = 0; k < sizeof(struct wd_sqe); k += 8) {
					xorshift(&seed);
					memcpy(slot + k, &seed, 8);
				}
				/* Half of them carry a valid opcode, so ops see garbage arguments. */
				if (r & 1)
					slot[0] = (uint8_t)(1 + r % (WD_OP_COUNT - 1));
				ring_prod_advance(&h.sq);
				ring_prod_publish(&h.sq);
				garbage_entries++;
			} else {
				memcpy(base + off, &seed, 8);
			}
		} else {
			/* Every fourth write aims at the cursors and the segment header. */
			if (i % 4 == 1)
				off = (size_t)(r % 1024) & ~(size_t)3;
			memcpy(base + off, &seed, 8);
		}
		ring_wake(&h.sq);
		if (i % 100 == 0) {
			struct wd_sqe s = sqe_of(WD_OP_PING, WD_ID_NONE);
			struct result res;

			s.arg[0] = i;
			CHECK(call(&good, s, NULL, 0, &res) == 0 && res.cqe.aux0 == i,
			      "good client ping %u: %d", i, res.cqe.res);
			if (hung_up(&h, 0)) {
				drops++;
				tclient_close(&h);
				tclient_attach(p.sock, &h);
			}
		}
	}
	CHECK(drops > 0 && garbage_entries > 1000, "%u drops, %u garbage entries", drops,
	      garbage_entries);
	CHECK(call(&good, sqe_of(WD_OP_PING, WD_ID_NONE), NULL, 0, NULL) == 0, "final ping");
	tclient_close(&h);
	tclient_close(&good);
	CHECK(kill(p.pid, 0) == 0, "daemon died");
	printf("hostile client: dropped and re-attached %u times, %u garbage entries\n", drops,
	       garbage_entries);
	dproc_stop(&p);
}

/* SIGKILL leaves the socket file and the lock file; the next daemon recovers both. */
static void test_stale_socket(void **state)
{
	struct dproc p;
	struct tclient c;
	struct stat st;
	int ws, ret;
	uint64_t t0;

	dproc_start(&p, NULL);
	tclient_attach(p.sock, &c);
	kill(p.pid, SIGKILL);
	ws = dproc_wait(&p);
	CHECK(WIFSIGNALED(ws), "status %#x", ws);
	/* The client sees its daemon die within a second: the lease socket hangs up. */
	t0 = wd_now_ns();
	struct pollfd pf = { .fd = c.fd, .events = POLLIN };

	ret = poll(&pf, 1, 1000);
	CHECK(ret == 1 && (pf.revents & (POLLHUP | POLLIN)), "no hangup after %llu ms",
	      (unsigned long long)((wd_now_ns() - t0) / 1000000));
	tclient_close(&c);
	CHECK(lstat(p.sock, &st) == 0 && S_ISSOCK(st.st_mode), "stale socket left behind");
	CHECK(!can_connect(p.sock), "nobody listens on the stale socket");

	dproc_start_in(&p, NULL);
	tclient_attach(p.sock, &c);
	CHECK(call(&c, sqe_of(WD_OP_PING, WD_ID_NONE), NULL, 0, NULL) == 0, "ping after restart");
	tclient_close(&c);
	dproc_stop(&p);
}

static void test_second_daemon(void **state)
{
	struct dproc p;
	struct tclient c;
	pid_t pid;
	int st;

	dproc_start(&p, NULL);
	pid = fork();
	CHECK(pid >= 0, "fork");
	if (pid == 0) {
		int fd = open("/dev/null", O_WRONLY);

		dup2(fd, 2);
		execl(weightd_bin, weightd_bin, "--foreground", "--state-dir", p.state, "--socket",
		      p.sock, "--no-scan", (char *)NULL);
		_exit(127);
	}
	CHECK(waitpid(pid, &st, 0) == pid && WIFEXITED(st) && WEXITSTATUS(st) == 1,
	      "second daemon status %#x", st);
	tclient_attach(p.sock, &c);
	CHECK(call(&c, sqe_of(WD_OP_PING, WD_ID_NONE), NULL, 0, NULL) == 0, "first still serves");
	tclient_close(&c);
	dproc_stop(&p);
}

/* SIGTERM: exit code 0, socket removed, attached clients see SHUTDOWN and a hangup. */
static void test_sigterm(void **state)
{
	struct dproc p;
	struct tclient c;
	struct stat st;
	int err = 0, ws;

	dproc_start(&p, NULL);
	tclient_attach(p.sock, &c);
	CHECK(call(&c, sqe_of(WD_OP_PING, WD_ID_NONE), NULL, 0, NULL) == 0, "ping");
	kill(p.pid, SIGTERM);
	ws = dproc_wait(&p);
	CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "exit status %#x", ws);
	CHECK(lstat(p.sock, &st) < 0 && errno == ENOENT, "socket still there");
	CHECK(ring_seg_status(c.seg.base, &err) == WD_RING_SHUTDOWN && err == -ESHUTDOWN,
	      "ring status %u err %d", ring_seg_status(c.seg.base, NULL), err);
	CHECK(ring_wait(&c.cq, 0, 1000000000) == -EPIPE, "a parked client is released");
	tclient_close(&c);
}

/* SHUTDOWN: refused to non-admins, accepted from root (or an --admin-user). */
static void test_shutdown_op(void **state)
{
	struct dproc p;
	struct tclient c;
	struct result r;
	int ws;

	dproc_start(&p, NULL);
	tclient_attach(p.sock, &c);
	if (geteuid() != 0) {
		CHECK(call(&c, sqe_of(WD_OP_SHUTDOWN, WD_ID_NONE), NULL, 0, &r) == -EPERM &&
		      strstr(r.data, "admin"), "shutdown without --admin-user: %d \"%s\"",
		      r.cqe.res, r.data);
		tclient_close(&c);
		dproc_stop(&p);
		const char *const admin[] = { "--admin-user", NULL };

		dproc_start(&p, admin);
		tclient_attach(p.sock, &c);
	}
	CHECK(call(&c, sqe_of(WD_OP_SHUTDOWN, WD_ID_NONE), NULL, 0, &r) == 0, "shutdown: %d \"%s\"",
	      r.cqe.res, r.data);
	ws = dproc_wait(&p);
	CHECK(WIFEXITED(ws) && WEXITSTATUS(ws) == 0, "exit status %#x", ws);
	CHECK(ring_seg_status(c.seg.base, NULL) == WD_RING_SHUTDOWN, "ring not marked shut down");
	tclient_close(&c);
}

static int setup(void **state)
{
	signal(SIGALRM, on_alarm);
	alarm(CASE_SECONDS);
	return 0;
}

static int teardown(void **state)
{
	for (size_t i = 0; i < ARRAY_SIZE(live); i++) {
		if (!live[i])
			continue;
		kill(live[i], SIGKILL);
		waitpid(live[i], NULL, 0);
		live[i] = 0;
	}
	alarm(0);
	return 0;
}

static void find_binary(void)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	char *slash;

	if (n <= 0) {
		fprintf(stderr, "readlink /proc/self/exe failed\n");
		exit(1);
	}
	self[n] = '\0';
	slash = strrchr(self, '/');
	*slash = '\0';		/* BUILD/tests */
	slash = strrchr(self, '/');
	*slash = '\0';		/* BUILD */
	snprintf(weightd_bin, sizeof(weightd_bin), "%s/weightd", self);
	if (access(weightd_bin, X_OK)) {
		fprintf(stderr, "%s is missing: build it first (make %s)\n", weightd_bin,
			weightd_bin);
		exit(1);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_attach_ok, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hello_rejected, setup, teardown),
		cmocka_unit_test_setup_teardown(test_not_allowed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ping, setup, teardown),
		cmocka_unit_test_setup_teardown(test_ops, setup, teardown),
		cmocka_unit_test_setup_teardown(test_pin_release, setup, teardown),
		cmocka_unit_test_setup_teardown(test_hostile_client, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stale_socket, setup, teardown),
		cmocka_unit_test_setup_teardown(test_second_daemon, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sigterm, setup, teardown),
		cmocka_unit_test_setup_teardown(test_shutdown_op, setup, teardown),
	};
	const char *tmp = getenv("TMPDIR");
	char cmd[PATH_MAX + 16];
	int failed;

	find_binary();
	fmt(tmp_root, sizeof(tmp_root), "%s/test_daemon.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(tmp_root)) {
		perror("mkdtemp");
		return 1;
	}
	failed = cmocka_run_group_tests(tests, NULL, NULL);
	fmt(cmd, sizeof(cmd), "rm -rf '%s'", tmp_root);
	if (system(cmd) != 0)
		fprintf(stderr, "could not remove %s\n", tmp_root);
	if (failed)
		return 1;
	if (skip_reason[0]) {
		printf("SKIP: %s (every other case passed)\n", skip_reason);
		return 77;
	}
	return 0;
}
