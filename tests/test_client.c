/*
 * libweightd against a real build/weightd child process (tests/helpers_daemon.c): attach and
 * its failures (no daemon, a stale socket, and a fake daemon that answers the hello wrongly),
 * ping, registry lookups checked against the safetensors files themselves, pins and their
 * release with the lease, load, state (and the deprecated names of docs/names.md), metadata,
 * stats, a handle shared by threads, the weightctl daemon verbs, and an orderly SHUTDOWN
 * request.
 */
#include <errno.h>
#include <limits.h>
#include <inttypes.h>
#include <pthread.h>
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
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>

#include "weightd.h"

#include "core/base/common.h"
#include "core/format/st.h"
#include "shm/abi.h"
#include "shm/attach.h"
#include "tests/helpers_daemon.h"

#define CHECK(cond, ...) TD_CHECK(NULL, cond, __VA_ARGS__)

static struct td_daemon daemon_;

static struct weightd *attach_ok(void)
{
	int ret;
	struct weightd *w = td_attach(&daemon_, "test_client", 20, 0, &ret);

	if (ret)
		td_daemon_dump_log(&daemon_);
	CHECK(ret == 0 && w, "weightd_attach(%s) = %d", daemon_.socket, ret);
	return w;
}

/* ---- attach failures with no daemon ------------------------------------------------------ */

static void test_attach_no_daemon(void **state)
{
	char missing[200], stale[120], longp[300];
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	int fd;

	(void)state;
	snprintf(missing, sizeof(missing), "%s/missing.sock", daemon_.root);
	snprintf(stale, sizeof(stale), "%s/stale.sock", daemon_.root);
	memset(longp, 'x', 200);
	longp[0] = '/';
	longp[200] = '\0';
	/* A socket file nobody listens on, as a crashed daemon leaves it. */
	fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
	CHECK(strlen(stale) < sizeof(sa.sun_path), "path %s too long", stale);
	memcpy(sa.sun_path, stale, strlen(stale) + 1);
	CHECK(fd >= 0 && bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0, "bind %s", stale);
	close(fd);

	const struct {
		const char *path;
		struct weightd_attach_opts opts;
		int want;
		const char *msg;
	} rows[] = {
		{ missing, { 0 }, -ENOENT, "no weightd daemon at" },
		{ stale, { 0 }, -ECONNREFUSED, "no weightd daemon at" },
		{ longp, { 0 }, -ENAMETOOLONG, "" },
		{ daemon_.socket, { .sq_entries = 3 }, -EINVAL, "powers of two" },
		{ daemon_.socket, { .cq_entries = 65536 }, -EINVAL, "powers of two" },
	};
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		struct weightd *w = (struct weightd *)1;
		int ret = weightd_attach(rows[i].path, &rows[i].opts, &w);

		CHECK(ret == rows[i].want && w == NULL, "row %zu (%s): got %d, want %d", i,
		      rows[i].path, ret, rows[i].want);
		CHECK(strstr(weightd_last_error(), rows[i].msg), "row %zu: message '%s' lacks '%s'",
		      i, weightd_last_error(), rows[i].msg);
	}
	CHECK(weightd_attach(missing, NULL, NULL) == -EINVAL, "NULL out");
	unlink(stale);
}

/* ---- attach failures against a fake daemon ----------------------------------------------- */

enum fake_mode {
	FAKE_VERSION,		/* a reply from a daemon of the next ABI version */
	FAKE_MAGIC,
	FAKE_REFUSED,		/* status -EACCES with a message */
	FAKE_NO_FDS,		/* status 0 but no descriptors */
	FAKE_SHORT,		/* 8 bytes */
	FAKE_CLOSE,		/* hang up without a reply */
	FAKE_SILENT,		/* never answer */
	FAKE_NOT_MEMFD,		/* status 0 with three pipe descriptors */
};

struct fake {
	int listen_fd;
	enum fake_mode mode;
	struct wd_hello hello;	/* what the client sent */
	ssize_t hello_len;
};

static void *fake_daemon(void *arg)
{
	struct fake *f = arg;
	struct wd_hello_reply rep = { .magic = WD_REPLY_MAGIC, .version = WD_ABI_VERSION,
				      .reply_size = sizeof(rep), .client_id = 7 };
	int c = accept(f->listen_fd, NULL, NULL), pfd[2] = { -1, -1 }, nfds = 0;
	char sink[8];

	if (c < 0)
		return NULL;
	f->hello_len = attach_recv(c, &f->hello, sizeof(f->hello), NULL, &nfds);
	switch (f->mode) {
	case FAKE_VERSION: rep.version = WD_ABI_VERSION + 1; break;
	case FAKE_MAGIC: rep.magic = 0x12345678; break;
	case FAKE_REFUSED:
		rep.status = -EACCES;
		snprintf(rep.message, sizeof(rep.message), "uid 4242 is not in the allow-list");
		break;
	case FAKE_NO_FDS: rep.n_fds = 3; break;
	case FAKE_NOT_MEMFD:
		rep.n_fds = 3;
		if (pipe(pfd))
			return NULL;
		break;
	default: break;
	}
	if (f->mode == FAKE_SHORT)
		attach_send(c, &rep, 8, NULL, 0);
	else if (f->mode == FAKE_NOT_MEMFD)
		attach_send(c, &rep, sizeof(rep), (int[]){ pfd[0], pfd[1], pfd[0] }, 3);
	else if (f->mode != FAKE_CLOSE && f->mode != FAKE_SILENT)
		attach_send(c, &rep, sizeof(rep), NULL, 0);
	if (f->mode == FAKE_SILENT)
		while (recv(c, sink, sizeof(sink), 0) > 0)
			;
	if (pfd[0] >= 0) {
		close(pfd[0]);
		close(pfd[1]);
	}
	close(c);
	return NULL;
}

static void test_attach_bad_reply(void **state)
{
	static const struct {
		enum fake_mode mode;
		int want;
		const char *msg;
	} rows[] = {
		{ FAKE_VERSION, -EPROTONOSUPPORT, NULL },	/* names both versions */
		{ FAKE_MAGIC, -EBADMSG, "malformed hello reply" },
		{ FAKE_REFUSED, -EACCES, "uid 4242 is not in the allow-list" },
		{ FAKE_NO_FDS, -EBADMSG, "carried 0 descriptors" },
		{ FAKE_SHORT, -EBADMSG, "malformed hello reply" },
		{ FAKE_CLOSE, -ECONNRESET, "closed the connection" },
		{ FAKE_SILENT, -ETIMEDOUT, "did not answer" },
		{ FAKE_NOT_MEMFD, -EBADF, "cannot map the ring segment" },
	};
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	char versions[64];

	(void)state;
	snprintf(versions, sizeof(versions), "client ABI %u, daemon ABI %u", WD_ABI_VERSION,
		 WD_ABI_VERSION + 1);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s/fake.sock", daemon_.root);
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		struct weightd_attach_opts o = { .attach_timeout_ms = 200, .client_name = "row" };
		struct fake f = { .mode = rows[i].mode };
		struct weightd *w = NULL;
		pthread_t th;
		int ret;

		unlink(sa.sun_path);
		f.listen_fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
		CHECK(f.listen_fd >= 0 && !bind(f.listen_fd, (struct sockaddr *)&sa, sizeof(sa)) &&
			      !listen(f.listen_fd, 4),
		      "fake daemon socket %s", sa.sun_path);
		pthread_create(&th, NULL, fake_daemon, &f);
		ret = weightd_attach(sa.sun_path, &o, &w);
		pthread_join(th, NULL);
		close(f.listen_fd);
		CHECK(ret == rows[i].want && !w, "row %zu (mode %d): got %d (%s), want %d", i,
		      rows[i].mode, ret, weightd_last_error(), rows[i].want);
		const char *want_msg = rows[i].msg ? rows[i].msg : versions;

		CHECK(strstr(weightd_last_error(), want_msg), "row %zu: '%s' lacks '%s'", i,
		      weightd_last_error(), want_msg);
		/* The hello the library sent is the ABI's, whatever the answer. */
		CHECK(f.hello_len == sizeof(struct wd_hello) && f.hello.magic == WD_HELLO_MAGIC &&
			      f.hello.version == WD_ABI_VERSION &&
			      f.hello.sqe_size == sizeof(struct wd_sqe) &&
			      f.hello.cqe_size == sizeof(struct wd_cqe) &&
			      !strcmp(f.hello.client_name, "row"),
		      "row %zu: hello of %zd bytes, magic %#x, version %u, name '%.32s'", i,
		      f.hello_len, f.hello.magic, f.hello.version, f.hello.client_name);
	}
	unlink(sa.sun_path);
}

/* ---- requests ---------------------------------------------------------------------------- */

static void test_attach_identity(void **state)
{
	struct weightd *w = attach_ok(), *w2 = attach_ok();

	(void)state;
	CHECK(weightd_daemon_pid(w) == daemon_.pid, "peer pid %d, daemon pid %d",
	      weightd_daemon_pid(w), (int)daemon_.pid);
	CHECK(!strcmp(weightd_socket_path(w), daemon_.socket), "socket path '%s'",
	      weightd_socket_path(w));
	CHECK(weightd_client_id(w) != weightd_client_id(w2), "two clients share id %u",
	      weightd_client_id(w));
	CHECK(weightd_fd(w) >= 0, "fd %d", weightd_fd(w));
	weightd_detach(w2);
	weightd_detach(w);
}

static void test_ping_and_stats(void **state)
{
	struct weightd *w = attach_ok();
	struct weightd_stats s0, s1;
	int ret;

	(void)state;
	CHECK((ret = weightd_stats(w, &s0)) == 0, "stats: %d", ret);
	for (int i = 0; i < 1000; i++) {
		ret = weightd_ping(w);
		CHECK(ret == 0, "ping %d: %d", i, ret);
	}
	CHECK((ret = weightd_stats(w, &s1)) == 0, "stats: %d", ret);
	/* The first STATS request is counted by the time the second one reports. */
	CHECK(s1.requests == s0.requests + 1001, "requests %" PRIu64 " then %" PRIu64,
	      s0.requests, s1.requests);
	CHECK(s1.errors == s0.errors, "errors %" PRIu64 " then %" PRIu64, s0.errors, s1.errors);
	CHECK(s1.clients >= 1 && s1.ring_segments >= 1, "clients %" PRIu64 ", rings %" PRIu64,
	      s1.clients, s1.ring_segments);
	CHECK(s1.models == 3, "models %" PRIu64, s1.models);
	weightd_detach(w);
}

static void test_lookup(void **state)
{
	static char toolong[300];
	struct weightd *w = attach_ok();
	struct weightd_model_info mi;

	(void)state;
	memset(toolong, 'm', sizeof(toolong) - 1);
	const struct {
		const char *name;
		int want;
	} rows[] = {
		{ "sd-tiny", 0 },    { "llama-tiny", 0 }, { "vae-tiny", 0 },
		{ "no-such", -ENOENT }, { "", -EINVAL },     { toolong, -ENAMETOOLONG },
		{ NULL, -EINVAL },
	};
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		uint32_t id = WD_ID_NONE;
		int ret = weightd_lookup(w, rows[i].name, &id);

		CHECK(ret == rows[i].want, "row %zu (%.20s): got %d, want %d", i,
		      rows[i].name ? rows[i].name : "NULL", ret, rows[i].want);
		if (ret)
			continue;
		CHECK(weightd_model(w, id, &mi) == 0 && !strcmp(mi.name, rows[i].name),
		      "row %zu: id %u names '%s'", i, id, mi.name);
	}
	weightd_detach(w);
}

/* Every model and component the demo preset has, as the registry lists them. */
static void test_registry_listing(void **state)
{
	struct weightd *w = attach_ok();
	struct weightd_model_info mi;
	struct weightd_component_info ci;
	char seen[512] = "";
	uint32_t n = 0;
	int ret;

	(void)state;
	for (n = 0; (ret = weightd_model(w, n, &mi)) == 0; n++) {
		uint64_t bytes = 0;
		uint32_t comps = 0, tensors = 0;

		for (uint32_t c = 0; weightd_component(w, c, &ci) == 0; c++) {
			if (ci.model != n)
				continue;
			comps++;
			tensors += ci.n_tensors;
			bytes += ci.nbytes;
			if (strlen(seen) + strlen(mi.name) + strlen(ci.name) + 3 < sizeof(seen))
				strcat(strcat(strcat(strcat(seen, mi.name), "/"), ci.name), " ");
		}
		CHECK(comps == mi.n_components && tensors == mi.n_tensors && bytes == mi.nbytes,
		      "model %s: %u components, %u tensors, %" PRIu64 " bytes; components add up "
		      "to %u, %u, %" PRIu64,
		      mi.name, mi.n_components, mi.n_tensors, mi.nbytes, comps, tensors, bytes);
	}
	CHECK(ret == -ENOENT && n == 3, "listing ended at %u with %d", n, ret);
	static const char *const want[] = { "sd-tiny/unet ", "sd-tiny/vae ",
					    "sd-tiny/text_encoder ", "vae-tiny/", "llama-tiny/" };
	for (size_t i = 0; i < ARRAY_SIZE(want); i++)
		CHECK(strstr(seen, want[i]), "components '%s' lack '%s'", seen, want[i]);
	weightd_detach(w);
}

/* Each tensor's registry record matches the header of the file it comes from. */
static void test_tensor_matches_file(void **state)
{
	static const struct {
		const char *model, *component, *file;
	} rows[] = {
		{ "sd-tiny", "vae", "sd-tiny/vae/diffusion_pytorch_model.safetensors" },
		{ "sd-tiny", "text_encoder", "sd-tiny/text_encoder/model.safetensors" },
		{ "vae-tiny", NULL, "vae-tiny.safetensors" },
	};
	struct weightd *w = attach_ok();

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		struct st_file f = { 0 };
		struct st_error err;
		char path[512];
		int ret;

		snprintf(path, sizeof(path), "%s/%s", daemon_.models, rows[i].file);
		CHECK(st_open(path, &f, &err) == 0, "st_open %s", path);
		for (uint32_t t = 0; t < f.n_tensors; t++) {
			const struct st_tensor *st = &f.tensors[t];
			struct weightd_tensor_info ti;

			ret = weightd_tensor(w, rows[i].model, rows[i].component, st->name, &ti);
			CHECK(ret == 0, "row %zu: tensor %s: %d", i, st->name, ret);
			CHECK(ti.dtype == (uint32_t)st->dtype && ti.rank == st->rank &&
				      ti.nbytes == st->end - st->begin &&
				      !memcmp(ti.shape, st->shape, st->rank * sizeof(uint64_t)) &&
				      !strcmp(ti.dtype_name, st_dtype_info(st->dtype)->name),
			      "row %zu: %s: registry dtype %s rank %u nbytes %" PRIu64
			      ", file dtype %s rank %u nbytes %" PRIu64,
			      i, st->name, ti.dtype_name, ti.rank, ti.nbytes,
			      st_dtype_info(st->dtype)->name, st->rank, st->end - st->begin);
		}
		CHECK(f.n_tensors > 0, "row %zu: %s has no tensors", i, path);
		st_file_free(&f);
	}

	struct weightd_tensor_info ti;
	const struct {
		const char *model, *component, *name;
		int want;
	} bad[] = {
		{ "sd-tiny", "vae", "no.such.tensor", -ENOENT },
		{ "sd-tiny", "no-such-component", "x", -ENOENT },
		{ "no-such-model", NULL, "x", -ENOENT },
		{ "sd-tiny", NULL, "", -EINVAL },
	};
	for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
		int ret = weightd_tensor(w, bad[i].model, bad[i].component, bad[i].name, &ti);

		CHECK(ret == bad[i].want, "bad row %zu: got %d, want %d", i, ret, bad[i].want);
	}
	weightd_detach(w);
}

static uint64_t pins_now(struct weightd *w)
{
	struct weightd_stats s;

	CHECK(weightd_stats(w, &s) == 0, "stats");
	return s.pins_total;
}

static void test_pins(void **state)
{
	struct weightd *w = attach_ok(), *other = attach_ok();
	struct weightd_model_info mi;
	uint32_t id;
	uint64_t base = pins_now(w);

	(void)state;
	const struct {
		int op;		/* 1 pin, 0 unpin */
		const char *model, *component;
		unsigned int tier;
		int want;
		uint64_t pins;	/* pins held by this client afterwards */
	} rows[] = {
		{ 1, "sd-tiny", NULL, WEIGHTD_TIER_HOST, 0, 1 },
		{ 1, "sd-tiny", NULL, WEIGHTD_TIER_HOST, 0, 1 },	/* already held: no-op */
		{ 1, "sd-tiny", "vae", WEIGHTD_TIER_HOST, 0, 2 },
		{ 0, "sd-tiny", "vae", WEIGHTD_TIER_HOST, 0, 1 },
		{ 0, "sd-tiny", "vae", WEIGHTD_TIER_HOST, -ENOENT, 1 },
		{ 1, "no-such", NULL, WEIGHTD_TIER_HOST, -ENOENT, 1 },
		{ 1, "sd-tiny", NULL, WEIGHTD_TIER_MAX, -EINVAL, 1 },
		{ 1, "llama-tiny", NULL, WEIGHTD_TIER_HOST, 0, 2 },
		{ 0, "sd-tiny", NULL, WEIGHTD_TIER_HOST, 0, 1 },
		{ 0, "sd-tiny", NULL, WEIGHTD_TIER_HOST, -ENOENT, 1 },
	};
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		struct weightd_stats s;
		int ret = rows[i].op ? weightd_pin(w, rows[i].model, rows[i].component,
						   rows[i].tier)
				     : weightd_unpin(w, rows[i].model, rows[i].component,
						     rows[i].tier);

		CHECK(ret == rows[i].want, "row %zu (%s %s/%s): got %d, want %d", i,
		      rows[i].op ? "pin" : "unpin", rows[i].model,
		      rows[i].component ? rows[i].component : "*", ret, rows[i].want);
		CHECK(weightd_stats(w, &s) == 0 && s.pins == rows[i].pins &&
			      s.pins_total == base + rows[i].pins,
		      "row %zu: client pins %" PRIu64 ", all %" PRIu64 "; want %" PRIu64, i,
		      s.pins, s.pins_total, rows[i].pins);
	}
	/* The registry shows the pin on the model to every client. */
	CHECK(weightd_lookup(other, "llama-tiny", &id) == 0 && weightd_model(other, id, &mi) == 0 &&
		      mi.pins == 1,
	      "llama-tiny pins in the registry: %u", mi.pins);
	/* Another client may not unload what this one pins. */
	int ret = weightd_unload(other, "llama-tiny", NULL, WEIGHTD_TIER_HOST);

	CHECK(ret == -EBUSY, "unload of a model pinned by another client: %d", ret);
	/* Detaching ends the lease: the daemon drops the pin when it sees the socket close. */
	weightd_detach(w);
	uint64_t deadline = wd_now_ns() + 2000000000ull;

	while (pins_now(other) != base && wd_now_ns() < deadline)
		usleep(5000);
	CHECK(pins_now(other) == base, "pins %" PRIu64 " two seconds after the lease ended",
	      pins_now(other));
	weightd_detach(other);
}

/*
 * The deprecated names of docs/names.md still work, with the same answers as the names that
 * replaced them: a program built against 0.1 keeps running (the symbols are exported, the
 * op number is the same), and one compiled again gets a warning, silenced here.
 */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
static_assert(WD_OP_STATUS == WD_OP_STATE && WD_OP_STATE == 7, "STATE keeps STATUS's number");
static void test_deprecated_aliases(void **state)
{
	struct weightd *w = attach_ok();
	struct weightd_state_info now;
	struct weightd_status old;
	struct weightd_host_stats hs;
	struct weightd_cache_stats cs;
	struct weightd_device_map *m = NULL, *m2 = NULL;
	int a, b;

	(void)state;
	a = weightd_state(w, "vae-tiny", NULL, WEIGHTD_TIER_HOST, &now);
	b = weightd_status(w, "vae-tiny", NULL, WEIGHTD_TIER_HOST, &old);
	CHECK(a >= 0 && a == b && old.state == now.state && old.total == now.total,
	      "weightd_state %d (total %llu), weightd_status %d (total %llu)", a,
	      (unsigned long long)now.total, b, (unsigned long long)old.total);
	a = weightd_state(w, "no-such", NULL, WEIGHTD_TIER_HOST, NULL);
	b = weightd_status(w, "no-such", NULL, WEIGHTD_TIER_HOST, NULL);
	CHECK(a == -ENOENT && b == -ENOENT, "unknown model: state %d, status %d", a, b);
	a = weightd_host_stats(w, &hs);
	b = weightd_cache_stats(w, &cs);
	CHECK(a == 0 && b == 0 && cs.budget == hs.budget && cs.mapped_bytes == hs.mapped_bytes &&
	      cs.read_buffered_bytes + cs.read_direct_bytes == cs.read_bytes,
	      "host_stats %d, cache_stats %d (budget %llu vs %llu)", a, b,
	      (unsigned long long)hs.budget, (unsigned long long)cs.budget);
	CHECK(weightd_cache_stats(w, NULL) == -EINVAL, "NULL out");
	/* No GPU tier here: the three device-map calls fail the same way. */
	a = weightd_device_map_opts(w, "vae-tiny", NULL, 0, NULL, &m);
	b = weightd_device_map(w, "vae-tiny", NULL, 0, &m2);
	CHECK(a < 0 && a == b && !m && !m2, "device_map_opts %d, device_map %d", a, b);
	b = weightd_device_map_ex(w, "vae-tiny", NULL, 0, WEIGHTD_DTYPE_F16, &m2);
	CHECK(a == b && !m2, "device_map_opts %d, device_map_ex %d", a, b);
	weightd_detach(w);
}
#pragma GCC diagnostic pop

/* Loading: resident, or the daemon's own reason why it cannot (surfaced, not invented). */
static void test_load_and_status(void **state)
{
	struct weightd *w = attach_ok();
	struct weightd_state_info st;
	int ret, calls = 0;

	(void)state;
	ret = weightd_state(w, "no-such", NULL, WEIGHTD_TIER_HOST, &st);
	CHECK(ret == -ENOENT, "status of an unknown model: %d", ret);
	ret = weightd_state(w, "vae-tiny", NULL, WEIGHTD_TIER_HOST, &st);
	CHECK(ret >= 0 && ret == (int)st.state, "status vae-tiny: %d (state %u)", ret, st.state);
	ret = weightd_load(w, "vae-tiny", NULL, WEIGHTD_TIER_HOST, 0, NULL, &calls);
	if (ret == 0) {
		ret = weightd_state(w, "vae-tiny", NULL, WEIGHTD_TIER_HOST, &st);
		CHECK(ret == WEIGHTD_RESIDENT, "state after load: %d", ret);
	} else {
		CHECK((ret == -ENOTSUP || ret == -EOPNOTSUPP) && strlen(weightd_last_error()) > 10,
		      "load: %d, message '%s'", ret, weightd_last_error());
	}
	/*
	 * One set of counters: weightd_stats(), weightd_host_stats() and weightd_counters()
	 * show the same host hits and misses (the load above was a miss), each counter named
	 * once.
	 */
	{
		struct weightd_host_stats cs;
		struct weightd_stats s;
		uint64_t v[64];
		int n = weightd_counters(w, v, 64), hits = -1, misses = -1;

		CHECK(n > 0 && weightd_stats(w, &s) == 0 && weightd_host_stats(w, &cs) == 0,
		      "counters: %d %s", n, weightd_last_error());
		for (int i = 0; i < n && i < 64; i++) {
			const char *name = weightd_counter_name((unsigned int)i, NULL);

			for (int k = 0; name && k < i; k++) {
				const char *other = weightd_counter_name((unsigned int)k, NULL);

				CHECK(!other || strcmp(name, other), "counter name %s twice", name);
			}
			if (name && !strcmp(name, "host_hits"))
				hits = i;
			if (name && !strcmp(name, "host_misses"))
				misses = i;
		}
		CHECK(hits >= 0 && misses >= 0 && v[misses] >= 1 && s.misses == v[misses] &&
		      cs.misses == v[misses] && s.hits == v[hits] && cs.hits == v[hits],
		      "misses: stats %" PRIu64 ", cache %" PRIu64 ", counters %" PRIu64 "; hits %"
		      PRIu64 ", %" PRIu64, s.misses, cs.misses, misses >= 0 ? v[misses] : 0,
		      s.hits, cs.hits);
		CHECK(weightd_counter_name(9999, NULL) == NULL, "a name past the end");
	}
	ret = weightd_load(w, "vae-tiny", NULL, WEIGHTD_TIER_HOST, 0x80, NULL, NULL);
	CHECK(ret == -EINVAL, "load with an unknown flag: %d", ret);
	ret = weightd_load(w, "no-such", NULL, WEIGHTD_TIER_HOST, 0, NULL, NULL);
	CHECK(ret == -ENOENT || ret == -ENOTSUP || ret == -EOPNOTSUPP, "load no-such: %d", ret);
	weightd_detach(w);
}

/*
 * MODEL is a registry name or a path (absolute, relative to the working directory, of the
 * model or of one of its files) in every call that names a model: each spelling reaches the
 * same model through the same calls as its name.
 */
static void test_model_by_path(void **state)
{
	char cwd[PATH_MAX], abs_file[PATH_MAX], abs_dir[PATH_MAX], sd_file[PATH_MAX];
	char names[WEIGHTD_NAME_MAX], meta[64];
	struct weightd *w = attach_ok();
	struct weightd_tensor_info ti, list[1];
	struct weightd_tensor_loc loc[1];
	struct weightd_tensor_table tab;
	char tnames[WEIGHTD_NAME_MAX];
	uint32_t want_vae, want_sd, id;
	int n_want, ret;

	(void)state;
	CHECK(getcwd(cwd, sizeof(cwd)) && chdir(daemon_.models) == 0, "chdir %s",
	      daemon_.models);
	snprintf(abs_file, sizeof(abs_file), "%s/vae-tiny.safetensors", daemon_.models);
	snprintf(abs_dir, sizeof(abs_dir), "%s/sd-tiny", daemon_.models);
	snprintf(sd_file, sizeof(sd_file), "%s/sd-tiny/unet/diffusion_pytorch_model.safetensors",
		 daemon_.models);
	CHECK(weightd_lookup(w, "vae-tiny", &want_vae) == 0 &&
	      weightd_lookup(w, "sd-tiny", &want_sd) == 0, "lookup by name: %s",
	      weightd_last_error());
	CHECK(weightd_meta_set(w, "vae-tiny", "note", "by path") == 0, "meta set: %s",
	      weightd_last_error());
	n_want = weightd_tensor_list(w, "vae-tiny", NULL, list, names, 1);
	CHECK(n_want > 0, "tensor list by name: %d %s", n_want, weightd_last_error());
	const struct {
		const char *model;
		uint32_t *id;
	} rows[] = {
		{ "vae-tiny", &want_vae },		{ abs_file, &want_vae },
		{ "vae-tiny.safetensors", &want_vae },	{ "./vae-tiny.safetensors", &want_vae },
		{ "sd-tiny/../vae-tiny.safetensors", &want_vae },
		{ abs_dir, &want_sd },			{ sd_file, &want_sd },
		{ "sd-tiny/unet/diffusion_pytorch_model.safetensors", &want_sd },
	};
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		const char *m = rows[i].model;
		bool vae = rows[i].id == &want_vae;

		/* A bare file name with no slash is a name, not a path: no such model. */
		if (!strchr(m, '/') && strcmp(m, "vae-tiny")) {
			ret = weightd_lookup(w, m, &id);
			CHECK(ret == -ENOENT, "row %zu: %s without a slash: %d", i, m, ret);
			continue;
		}
		ret = weightd_lookup(w, m, &id);
		CHECK(ret == 0 && id == *rows[i].id, "row %zu: lookup %s: %d id %u, want %u %s", i,
		      m, ret, id, *rows[i].id, weightd_last_error());
		ret = weightd_load(w, m, vae ? NULL : "vae", WEIGHTD_TIER_HOST, 0, NULL, NULL);
		CHECK(ret == 0, "row %zu: load %s: %d %s", i, m, ret, weightd_last_error());
		ret = weightd_state(w, m, vae ? NULL : "vae", WEIGHTD_TIER_HOST, NULL);
		CHECK(ret == WEIGHTD_RESIDENT, "row %zu: status %s: %d %s", i, m, ret,
		      weightd_last_error());
		ret = weightd_pin(w, m, vae ? NULL : "vae", WEIGHTD_TIER_HOST);
		CHECK(ret == 0, "row %zu: pin %s: %d %s", i, m, ret, weightd_last_error());
		ret = weightd_unpin(w, m, vae ? NULL : "vae", WEIGHTD_TIER_HOST);
		CHECK(ret == 0, "row %zu: unpin %s: %d %s", i, m, ret, weightd_last_error());
		if (!vae)
			continue;
		ret = weightd_tensor(w, m, NULL, names, &ti);
		CHECK(ret == 0 && ti.model == want_vae, "row %zu: tensor %s of %s: %d %s", i, names,
		      m, ret, weightd_last_error());
		ret = weightd_tensor_list(w, m, NULL, list, NULL, 1);
		CHECK(ret == n_want, "row %zu: tensor list of %s: %d, want %d %s", i, m, ret,
		      n_want, weightd_last_error());
		ret = weightd_tensor_table(w, m, NULL, loc, 1, tnames, sizeof(tnames), &tab);
		CHECK((ret == 0 || ret == -ENOBUFS) && tab.n + tab.absent == (uint32_t)n_want,
		      "row %zu: tensor table of %s: %d, %u listed + %u absent, want %d %s", i, m,
		      ret, tab.n, tab.absent, n_want, weightd_last_error());
		ret = weightd_meta_get(w, m, "note", meta, sizeof(meta));
		CHECK(ret == 7 && !strcmp(meta, "by path"), "row %zu: meta get of %s: %d %s", i, m,
		      ret, weightd_last_error());
		ret = weightd_unload(w, m, NULL, WEIGHTD_TIER_HOST);
		CHECK(ret == 0, "row %zu: unload %s: %d %s", i, m, ret, weightd_last_error());
	}
	ret = weightd_tensor(w, "/no/such/model.safetensors", NULL, names, &ti);
	CHECK(ret == -ENOENT && strstr(weightd_last_error(), "not in the registry"),
	      "an unknown path: %d %s", ret, weightd_last_error());
	CHECK(chdir(cwd) == 0, "chdir back");
	weightd_detach(w);
}

static void test_meta(void **state)
{
	static char big[300];
	struct weightd *w = attach_ok();
	char buf[64], tiny[4];
	int ret;

	(void)state;
	memset(big, 'v', sizeof(big) - 1);
	ret = weightd_meta_set(w, "sd-tiny", "note", "from test_client");
	CHECK(ret == 0, "meta set: %d", ret);
	ret = weightd_meta_get(w, "sd-tiny", "note", buf, sizeof(buf));
	CHECK(ret == 16 && !strcmp(buf, "from test_client"), "meta get: %d '%s'", ret, buf);

	const struct {
		const char *model, *key;
		char *buf;
		size_t size;
		int want;
	} rows[] = {
		{ "sd-tiny", "no-such-key", buf, sizeof(buf), -ENOENT },
		{ "sd-tiny", "note", tiny, sizeof(tiny), -ERANGE },
		{ "no-such", "note", buf, sizeof(buf), -ENOENT },
		{ "sd-tiny", "", buf, sizeof(buf), -EINVAL },
	};
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		ret = weightd_meta_get(w, rows[i].model, rows[i].key, rows[i].buf, rows[i].size);
		CHECK(ret == rows[i].want, "get row %zu: got %d, want %d", i, ret, rows[i].want);
	}
	ret = weightd_meta_set(w, "sd-tiny", "note", big);
	CHECK(ret == -ENAMETOOLONG, "meta set of %zu bytes: %d", strlen(big), ret);
	ret = weightd_meta_set(w, "no-such", "note", "x");
	CHECK(ret == -ENOENT, "meta set on an unknown model: %d", ret);
	/* Invalid UTF-8 is refused by the daemon, and nothing is stored. */
	ret = weightd_meta_set(w, "sd-tiny", "note", "bad\xff\xfe");
	CHECK(ret == -EILSEQ && strstr(weightd_last_error(), "not valid UTF-8"),
	      "meta set of invalid UTF-8: %d (%s)", ret, weightd_last_error());
	ret = weightd_meta_get(w, "sd-tiny", "note", buf, sizeof(buf));
	CHECK(ret == 16 && !strcmp(buf, "from test_client"), "meta get after: %d '%s'", ret, buf);
	weightd_detach(w);
}

struct prog {
	unsigned int calls;
	uint64_t done, total;
	bool backwards;		/* done ever went down */
};

static void on_progress(uint64_t done, uint64_t total, void *arg)
{
	struct prog *p = arg;

	p->backwards |= p->calls && done < p->done;
	p->calls++;
	p->done = done;
	p->total = total;
}

/* Copies @src to @dst. */
static int copy_file(const char *src, const char *dst)
{
	char buf[65536];
	FILE *in = fopen(src, "rb"), *out = fopen(dst, "wb");
	size_t n;
	int ret = in && out ? 0 : -1;

	while (!ret && (n = fread(buf, 1, sizeof(buf), in)) > 0)
		ret = fwrite(buf, 1, n, out) == n ? 0 : -1;
	if (in)
		fclose(in);
	if (out && fclose(out))
		ret = -1;
	return ret;
}

/*
 * SCAN publishes new models; VALIDATE checks them, deep with byte progress, and names a
 * corrupt file.
 */
static void test_scan_validate(void **state)
{
	struct weightd *w = attach_ok();
	char dir[200], src[400], dst[400];
	struct prog p = { 0 };
	uint32_t id;
	int ret;
	FILE *f;

	(void)state;
	snprintf(dir, sizeof(dir), "%s/extra", daemon_.root);
	snprintf(src, sizeof(src), "%s/vae-tiny.safetensors", daemon_.models);
	snprintf(dst, sizeof(dst), "%s/vae-extra.safetensors", dir);
	CHECK(mkdir(dir, 0700) == 0 && copy_file(src, dst) == 0, "copy %s to %s", src, dst);

	ret = weightd_lookup(w, "vae-extra", &id);
	CHECK(ret == -ENOENT, "vae-extra before the scan: %d", ret);
	ret = weightd_scan(w, dir, on_progress, &p);
	CHECK(ret == 1, "scan %s: %d models", dir, ret);
	ret = weightd_lookup(w, "vae-extra", &id);
	CHECK(ret == 0, "vae-extra after the scan: %d", ret);
	ret = weightd_scan(w, NULL, NULL, NULL);
	CHECK(ret >= TD_DEMO_MODELS, "rescan of the roots: %d", ret);
	/* A root that cannot be read is one of the scan's problems: it finds nothing there. */
	ret = weightd_scan(w, "/nonexistent/weightd/models", NULL, NULL);
	CHECK(ret == 0, "scan of a missing directory: %d", ret);

	ret = weightd_validate(w, "vae-extra", NULL, 0, NULL, NULL);
	CHECK(ret == 0, "validate vae-extra: %d", ret);
	memset(&p, 0, sizeof(p));
	ret = weightd_validate(w, "vae-extra", NULL, WEIGHTD_VALIDATE_DEEP, on_progress, &p);
	CHECK(ret == 0 && p.calls > 0 && !p.backwards && p.done == p.total && p.total > 0,
	      "deep validate: %d, %u progress calls, last %" PRIu64 " of %" PRIu64, ret, p.calls,
	      p.done, p.total);
	memset(&p, 0, sizeof(p));
	ret = weightd_validate(w, "vae-extra", NULL, WEIGHTD_VALIDATE_DEEP | WEIGHTD_LOAD_PIN << 4,
			       on_progress, &p);
	CHECK(ret == -EINVAL && p.calls == 0, "validate with an unknown flag: %d", ret);

	/* Break the JSON header where it starts (byte 8): the daemon must name the file. */
	f = fopen(dst, "r+b");
	CHECK(f && fseek(f, 8, SEEK_SET) == 0 && fputc('X', f) == 'X' && fclose(f) == 0,
	      "corrupt %s", dst);
	ret = weightd_validate(w, "vae-extra", NULL, 0, NULL, NULL);
	CHECK(ret == -EBADMSG && strstr(weightd_last_error(), "vae-extra.safetensors"),
	      "validate of a corrupt file: %d, message '%s'", ret, weightd_last_error());
	weightd_detach(w);
}

/* One handle shared by threads: the mutex serializes requests, none is lost or mixed up. */
#define N_THREADS 4
#define N_THREAD_PINGS 500

static void *pinger(void *arg)
{
	intptr_t bad = 0;

	for (int i = 0; i < N_THREAD_PINGS; i++)
		bad += weightd_ping(arg) != 0;
	return (void *)bad;
}

static void test_threads_share_handle(void **state)
{
	struct weightd *w = attach_ok();
	struct weightd_stats s0, s1;
	pthread_t th[N_THREADS];

	(void)state;
	CHECK(weightd_stats(w, &s0) == 0, "stats");
	for (int i = 0; i < N_THREADS; i++)
		pthread_create(&th[i], NULL, pinger, w);
	for (int i = 0; i < N_THREADS; i++) {
		void *bad;

		pthread_join(th[i], &bad);
		CHECK(bad == NULL, "thread %d: %ld pings failed", i, (long)(intptr_t)bad);
	}
	CHECK(weightd_stats(w, &s1) == 0, "stats");
	CHECK(s1.requests == s0.requests + 1 + N_THREADS * N_THREAD_PINGS,
	      "requests %" PRIu64 " -> %" PRIu64, s0.requests, s1.requests);
	weightd_detach(w);
}

/* ---- weightctl --------------------------------------------------------------------------- */

static void test_weightctl_verbs(void **state)
{
	char ctl[512], missing[200], out[8192], err[8192];
	json_error_t jerr;

	(void)state;
	snprintf(ctl, sizeof(ctl), "%s/weightctl", td_build_dir());
	snprintf(missing, sizeof(missing), "%s/missing.sock", daemon_.root);
	const struct {
		const char *args[8];
		int want_rc;
		const char *want_out;	/* substring of stdout, or NULL */
		const char *want_err;	/* substring of stderr, or NULL */
		const char *json_key;	/* with --json: a key the object must have */
	} rows[] = {
		{ { "status", "--socket", daemon_.socket }, 0, "daemon     running", NULL, NULL },
		{ { "status", "--json", "--socket", daemon_.socket }, 0, "\"daemon\":true", NULL,
		  "clients" },
		{ { "status", "--socket", missing }, 1, NULL, "no weightd daemon at", NULL },
		{ { "ps", "--socket", missing }, 1, NULL, "start it with `weightd --foreground`",
		  NULL },
		{ { "ps", "--all", "--socket", daemon_.socket }, 0, "sd-tiny", NULL, NULL },
		{ { "ps", "--json", "--socket", daemon_.socket }, 0, "\"components\"", NULL,
		  "pins" },
		{ { "stats", "--json", "--socket", daemon_.socket }, 0, "\"ring_segments\"", NULL,
		  "requests" },
		{ { "pin", "--socket", daemon_.socket, "vae-tiny" }, 0, "as long as the client",
		  NULL, NULL },
		{ { "pin", "--socket", daemon_.socket, "no-such" }, 1, NULL, "weightctl pin:",
		  NULL },
		{ { "unload", "--socket", daemon_.socket, "no-such" }, 1, NULL, "weightctl unload",
		  NULL },
		{ { "load", "--tier", "gpu", "vae-tiny" }, 2, NULL, "--tier wants", NULL },
		{ { "load", "--socket", daemon_.socket }, 2, NULL, "exactly one MODEL", NULL },
		{ { "status", "--hold" }, 2, NULL, "does not apply", NULL },
	};
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		char *argv[10] = { ctl };
		int rc;

		for (int a = 0; a < 8 && rows[i].args[a]; a++)
			argv[a + 1] = (char *)rows[i].args[a];
		rc = td_run(argv, 10000, out, err, sizeof(out));
		CHECK(rc == rows[i].want_rc,
		      "row %zu (%s): exit %d, want %d\nstdout: %s\nstderr: %s", i, rows[i].args[0],
		      rc, rows[i].want_rc, out, err);
		CHECK(!rows[i].want_out || strstr(out, rows[i].want_out),
		      "row %zu: stdout lacks '%s':\n%s", i, rows[i].want_out, out);
		CHECK(!rows[i].want_err || strstr(err, rows[i].want_err),
		      "row %zu: stderr lacks '%s':\n%s", i, rows[i].want_err, err);
		if (rows[i].json_key) {
			json_t *j = json_loads(out, 0, &jerr);

			CHECK(j && json_object_get(j, rows[i].json_key),
			      "row %zu: not a JSON object with '%s': %s", i, rows[i].json_key, out);
			json_decref(j);
		}
	}
	/* load prints the daemon's answer: resident, or its reason, with exit status 0 or 1. */
	char *argv[] = { ctl, "load", "--socket", daemon_.socket, "vae-tiny", NULL };
	int rc = td_run(argv, 10000, out, err, sizeof(out));

	CHECK((rc == 0 && strstr(out, "resident")) || (rc == 1 && strstr(err, "weightctl load:")),
	      "load: exit %d\nstdout: %s\nstderr: %s", rc, out, err);
	for (const char *const *v = (const char *const[]){ "status", "ps", "load", "unload",
							    "pin", "stats", "state",
							    "tensor-data", NULL };
	     *v; v++) {
		char *hargv[] = { ctl, (char *)*v, "--help", NULL };

		rc = td_run(hargv, 10000, out, err, sizeof(out));
		CHECK(rc == 0 && strstr(out, "usage: weightctl") && strstr(out, *v),
		      "%s --help: exit %d: %s", *v, rc, out);
	}
}

/* `weightctl pin --hold` keeps its pin until SIGINT, then releases it and exits 0. */
static void test_weightctl_pin_hold(void **state)
{
	struct weightd *w = attach_ok();
	char ctl[512];
	uint64_t base = pins_now(w), deadline;
	pid_t pid;
	int status;

	(void)state;
	snprintf(ctl, sizeof(ctl), "%s/weightctl", td_build_dir());
	pid = fork();
	if (pid == 0) {
		execl(ctl, ctl, "pin", "--hold", "--socket", daemon_.socket, "sd-tiny",
		      (char *)NULL);
		_exit(127);
	}
	deadline = wd_now_ns() + 5000000000ull;
	while (pins_now(w) != base + 1 && wd_now_ns() < deadline)
		usleep(2000);
	CHECK(pins_now(w) == base + 1, "pins %" PRIu64 " while weightctl holds one",
	      pins_now(w));
	/* Still held a while later: the command does not exit on its own. */
	usleep(100000);
	CHECK(waitpid(pid, &status, WNOHANG) == 0 && pins_now(w) == base + 1,
	      "weightctl pin --hold ended early or dropped the pin");
	kill(pid, SIGINT);
	CHECK(waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
	      "weightctl pin --hold after SIGINT: status %#x", status);
	deadline = wd_now_ns() + 2000000000ull;
	while (pins_now(w) != base && wd_now_ns() < deadline)
		usleep(2000);
	CHECK(pins_now(w) == base, "pins %" PRIu64 " after weightctl exited", pins_now(w));
	weightd_detach(w);
}

/* Last: a SHUTDOWN request stops the daemon in order (root is always privileged). */
static void test_shutdown(void **state)
{
	struct weightd *w = attach_ok(), *bystander = attach_ok();
	int ret, status;

	(void)state;
	ret = weightd_shutdown(w);
	if (getuid() != 0) {
		CHECK(ret == -EPERM || ret == 0, "shutdown as uid %u: %d", getuid(), ret);
		if (ret == -EPERM) {
			weightd_detach(bystander);
			weightd_detach(w);
			return;
		}
	}
	CHECK(ret == 0, "shutdown: %d", ret);
	uint64_t t0 = wd_now_ns();

	/*
	 * The daemon stops asynchronously after it answered: a ping may still be served, or be
	 * cancelled in flight, but within a second the ring is marked shut down.
	 */
	while (((ret = weightd_ping(bystander)) == 0 || ret == -ECANCELED) &&
	       wd_now_ns() - t0 < 2000000000ull)
		usleep(1000);
	CHECK(ret == -ESHUTDOWN, "ping after shutdown: %d", ret);
	CHECK(wd_now_ns() - t0 < 1000000000ull, "noticed after %.3f s",
	      (double)(wd_now_ns() - t0) / 1e9);
	CHECK(weightd_ping(bystander) == -ESHUTDOWN, "the error is sticky");
	status = td_daemon_kill(&daemon_, 0, 5000);
	CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "daemon exit status %#x", status);
	weightd_detach(bystander);
	weightd_detach(w);
}

static int group_setup(void **state)
{
	(void)state;
	return td_group_setup(&daemon_, NULL);
}

static int group_teardown(void **state)
{
	(void)state;
	td_daemon_teardown(&daemon_);
	return 0;
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_attach_no_daemon),
		cmocka_unit_test(test_attach_bad_reply),
		cmocka_unit_test(test_attach_identity),
		cmocka_unit_test(test_ping_and_stats),
		cmocka_unit_test(test_lookup),
		cmocka_unit_test(test_registry_listing),
		cmocka_unit_test(test_tensor_matches_file),
		cmocka_unit_test(test_pins),
		cmocka_unit_test(test_load_and_status),
		cmocka_unit_test(test_deprecated_aliases),
		cmocka_unit_test(test_meta),
		cmocka_unit_test(test_model_by_path),
		cmocka_unit_test(test_scan_validate),
		cmocka_unit_test(test_threads_share_handle),
		cmocka_unit_test(test_weightctl_verbs),
		cmocka_unit_test(test_weightctl_pin_hold),
		cmocka_unit_test(test_shutdown),
	};

	if (!td_have_daemon())
		return 77;
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
