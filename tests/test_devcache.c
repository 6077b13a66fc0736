/*
 * The device tier end to end (core/tier/devcache.h): a real weightd with GPU tiers, clients that
 * map components' VRAM allocations through libweightd and read tensors back.
 *
 * By default the GPU is the emulated device ($WEIGHTD_GPU_EMULATE=1:64M, set here for the
 * daemon and for this process, which imports the allocations), so the tier's logic runs on
 * every machine. With WD_DEVCACHE_REAL=1 (`make test-gpu`) the same cases run on the real
 * CUDA driver, and the program SKIPs (77) with the reason when there is none.
 *
 * Cases:
 *   corpus      every corpus file loaded to cuda:0 reads back byte-identical (FNV-1a of
 *               each tensor against the reference's NAME.tensors.txt) through the imported
 *               mapping;
 *   two_maps    two processes map one component, one is killed with SIGKILL: the other still
 *               reads correct bytes, the model's pin count drops from 2 to 1, and the entry
 *               can be evicted only once both are gone;
 *   too_big     a component larger than the device budget is refused with -EFBIG;
 *   churn       eviction under churn demotes to the host tier (also when the host copy was
 *               unloaded: it is copied back), and re-promotion reads nothing from disk;
 *   stream      a component larger than the host budget streams disk -> VRAM through the
 *               staging ring, bypassing the host cache, and reads back correct; evicted, it
 *               is dropped without a device -> host copy (the host has no room for it);
 *   concurrent  four clients load a multi-component model at once: one disk read per
 *               component, and every device copy equals its host copy;
 *   hostile     malformed DEVICE_MAP/DEVICES requests on a raw ring get errors, a client
 *               that never reads its socket cannot block the daemon, which keeps serving;
 *   convert     a model with F32 tensors (one larger than the conversion's VRAM scratch area)
 *               loaded to cuda:0 as F16 and as BF16: each converted device copy, read back,
 *               is byte-identical to the host tier's converted copy; other dtypes stay as
 *               stored; the stored-form device copy is a separate entry; a selection
 *               converted holds only its tensors, equal to the host tier's same form;
 *   select      tensor selections (a prefix, a list of names) loaded to cuda:0: each is a
 *               separate device entry holding only the selected tensors, byte-identical to
 *               the reference, the others absent from its mapping (-ENOENT); a second load
 *               is a hit; a selection that names nothing, or a name no tensor has, fails
 *               with -ENOENT;
 *   shared      two models whose files are hard links of one file (one host entry): the
 *               second load to cuda:0 shares the first's allocation (GPU bytes used do not
 *               grow), a mapping of either reads the host bytes, a mapping of the second
 *               keeps the shared allocation from eviction, unloading the first hands it on
 *               to the second, and once nothing maps it, it can be evicted;
 *   vram_retry  injected VRAM allocation failures ($WEIGHTD_FAULT=vram:ENOMEM): with the only
 *               resident entry mapped the load fails saying nothing was evictable; unmapped,
 *               it is evicted, the allocation is retried once and the load succeeds
 *               (WD_STAT_ALLOC_RETRIES moves by one);
 *   copy_path   two GPUs: nothing of the host arena page-locked at start (VmLck), neither
 *               GPU's copy path degraded, a component on cuda:1 equals its host copy;
 *   ordinals    this process sees the daemon's cuda:1 as its cuda:0: the map resolves it by
 *               id, weightd_device_ordinal() is 0; a process that cannot see it is refused;
 *               map, read and unmap leave the thread's current context as it was;
 *   caps        a GPU without VMM or fd handles, or in EXCLUSIVE_PROCESS mode, is not used,
 *               and DEVICES says why;
 *   trim        weightd_device_trim() evicts unmapped entries (demoted to the host), keeps a
 *               mapped one, reports the bytes once released; -ENOTSUP for no such GPU.
 * The emulated device enforces the driver's rules (gpu/device.h): two_maps starts its
 * second client with fork+exec, since a child forked after the device layer was used in
 * this process cannot use it.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <sys/resource.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "weightd.h"

#include "core/base/common.h"
#include "gpu/device.h"
#include "shm/abi.h"
#include "shm/attach.h"
#include "shm/registry.h"
#include "shm/ring.h"
#include "shm/segment.h"
#include "tests/helpers_daemon.h"

#define EMULATE "1:64M"
#define WAIT_NS (10ull * 1000 * 1000 * 1000)

#define CHECK(cond, ...)                                                                   \
	do {                                                                               \
		if (!(cond)) {                                                             \
			fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                \
			fprintf(stderr, __VA_ARGS__);                                      \
			fprintf(stderr, "\n");                                             \
			if (cur)                                                           \
				td_daemon_dump_log(cur);                                   \
			fail();                                                            \
		}                                                                          \
	} while (0)

static const char *corpus;
static struct td_daemon *cur;	/* for failure messages */
static bool real;		/* WD_DEVCACHE_REAL: the CUDA driver, not the emulated device */

/* A case that needs the emulated device's knobs (two devices, visibility, capabilities). */
#define EMULATED_ONLY()                                                                    \
	do {                                                                               \
		if (real) {                                                                \
			printf("SKIP %s: needs the emulated device's settings\n", __func__);   \
			skip();                                                            \
		}                                                                          \
	} while (0)

/* ---- helpers ---------------------------------------------------------------------------- */

static uint64_t fnv1a(const void *p, size_t n)
{
	const uint8_t *b = p;
	uint64_t h = 0xcbf29ce484222325ull;

	for (size_t i = 0; i < n; i++) {
		h ^= b[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

/* Whether the daemon's log holds @needle. */
static bool log_has(const struct td_daemon *d, const char *needle)
{
	char line[2048];
	bool found = false;
	FILE *f = fopen(d->log, "r");

	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f))
		found = strstr(line, needle) != NULL;
	fclose(f);
	return found;
}

/* Starts a daemon serving the demo models and the models in @dir, with @extra options. */
static void start_dir(struct td_daemon *d, const char *dir, const char *const *extra)
{
	const char *args[8] = { "--models", dir };
	size_t n = 2;
	int ret;

	for (size_t i = 0; extra && extra[i] && n + 1 < ARRAY_SIZE(args); i++)
		args[n++] = extra[i];
	args[n] = NULL;
	memset(d, 0, sizeof(*d));
	ret = td_daemon_setup_args(d, args);
	cur = d;
	CHECK(ret == 0, "daemon start: %s", strerror(-ret));
}

/* Starts a daemon serving the demo models and the corpus. */
static void start(struct td_daemon *d, const char *const *extra)
{
	start_dir(d, corpus, extra);
}

static struct weightd *attach(const struct td_daemon *d)
{
	struct weightd *w = NULL;
	int ret = weightd_attach(d->socket, NULL, &w);

	CHECK(ret == 0, "attach: %s", weightd_last_error());
	return w;
}

static int load_gpu(struct weightd *w, const char *model)
{
	return weightd_load(w, model, NULL, WEIGHTD_TIER_CUDA(0), WEIGHTD_LOAD_NO_PROGRESS, NULL,
			    NULL);
}

static uint32_t model_pins(struct weightd *w, const char *model)
{
	struct weightd_model_info mi;
	uint32_t id;

	CHECK(weightd_lookup(w, model, &id) == 0, "lookup %s: %s", model, weightd_last_error());
	CHECK(weightd_model(w, id, &mi) == 0, "model %s: %s", model, weightd_last_error());
	return mi.pins;
}

static uint32_t gpu_state(struct weightd *w, const char *model)
{
	struct weightd_state_info st;
	int ret = weightd_state(w, model, NULL, WEIGHTD_TIER_CUDA(0), &st);

	CHECK(ret >= 0, "status %s: %s", model, weightd_last_error());
	return st.state;
}

static uint32_t host_state(struct weightd *w, const char *model)
{
	int ret = weightd_state(w, model, NULL, WEIGHTD_TIER_HOST, NULL);

	CHECK(ret >= 0, "status %s: %s", model, weightd_last_error());
	return (uint32_t)ret;
}

static uint64_t host_read_bytes(struct weightd *w)
{
	struct weightd_host_stats cs;

	CHECK(weightd_host_stats(w, &cs) == 0, "stats: %s", weightd_last_error());
	return cs.read_bytes;
}

/*
 * Reads every tensor of corpus model @model through mapping @m and compares it with the
 * reference listing NAME.tensors.txt. Returns the number of tensors checked.
 */
static unsigned int verify_model(struct weightd *w, const struct weightd_device_map *m,
				 const char *model)
{
	char path[4096], line[4096];
	unsigned int n = 0;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s.tensors.txt", corpus, model);
	f = fopen(path, "r");
	CHECK(f, "%s: %s", path, strerror(errno));
	while (fgets(line, sizeof(line), f)) {
		char *name = strtok(line, "\t"), *dtype = strtok(NULL, "\t"),
		     *shape = strtok(NULL, "\t"), *size = strtok(NULL, "\t"),
		     *hash = strtok(NULL, "\t\n");
		struct weightd_tensor_info ti;
		uint64_t want_size, want_hash, dptr = 0;
		void *buf;
		int ret;

		if (!name || !hash)
			continue;
		(void)dtype;
		(void)shape;
		want_size = strtoull(size, NULL, 10);
		want_hash = strtoull(hash, NULL, 16);
		ret = weightd_tensor(w, model, NULL, name, &ti);
		CHECK(ret == 0, "%s/%s: %s", model, name, weightd_last_error());
		CHECK(ti.nbytes == want_size, "%s/%s: %" PRIu64 " bytes, reference %" PRIu64, model,
		      name, ti.nbytes, want_size);
		CHECK(ti.resident & 1u << WEIGHTD_TIER_CUDA(0), "%s/%s: resident mask %#x lacks "
		      "cuda:0", model, name, ti.resident);
		ret = weightd_tensor_device_ptr(m, &ti, &dptr);
		CHECK(ret == 0 && dptr >= weightd_device_base(m) &&
		      dptr + ti.nbytes <= weightd_device_base(m) + weightd_device_size(m),
		      "%s/%s: device pointer %#" PRIx64 " (ret %d) outside [%#" PRIx64 ", +%" PRIu64
		      ")", model, name, dptr, ret, weightd_device_base(m), weightd_device_size(m));
		buf = malloc(ti.nbytes ? ti.nbytes : 1);
		CHECK(buf, "malloc");
		ret = weightd_device_read(m, &ti, buf, ti.nbytes);
		CHECK(ret == 0, "%s/%s: read back: %s", model, name, weightd_last_error());
		CHECK(fnv1a(buf, ti.nbytes) == want_hash, "%s/%s: FNV-1a %016" PRIx64 " read back "
		      "from cuda:0, reference %016" PRIx64, model, name, fnv1a(buf, ti.nbytes),
		      want_hash);
		free(buf);
		n++;
	}
	fclose(f);
	return n;
}

/* ---- cases ------------------------------------------------------------------------------ */

static void test_corpus(void **state)
{
	struct td_daemon d;
	struct weightd *w;
	char path[4096];
	FILE *ls;
	unsigned int files = 0, tensors = 0;

	(void)state;
	start(&d, NULL);
	w = attach(&d);
	snprintf(path, sizeof(path), "ls %s/*.safetensors", corpus);
	ls = popen(path, "r");
	CHECK(ls, "popen");
	while (fgets(path, sizeof(path), ls)) {
		char *base = strrchr(path, '/'), *dot;
		struct weightd_device_map *m = NULL;
		int ret;

		base = base ? base + 1 : path;
		dot = strstr(base, ".safetensors");
		if (!dot)
			continue;
		*dot = '\0';
		ret = load_gpu(w, base);
		CHECK(ret == 0, "load %s to cuda:0: %s", base, weightd_last_error());
		CHECK(gpu_state(w, base) == WEIGHTD_RESIDENT, "%s not resident on cuda:0", base);
		ret = weightd_device_map_opts(w, base, NULL, 0, NULL, &m);
		CHECK(ret == 0, "map %s: %s", base, weightd_last_error());
		tensors += verify_model(w, m, base);
		weightd_device_unmap(w, m);
		files++;
	}
	pclose(ls);
	CHECK(files >= 5, "only %u corpus files", files);
	{
		struct weightd_metrics mt;

		CHECK(weightd_metrics(w, &mt) == 0, "metrics: %s", weightd_last_error());
		CHECK(mt.load[WEIGHTD_TIER_CUDA(0)].count == files && mt.load[WEIGHTD_TIER_CUDA(0)].sum_ns,
		      "cuda:0 load histogram: %" PRIu64 " loads for %u files",
		      mt.load[WEIGHTD_TIER_CUDA(0)].count, files);
	}
	printf("corpus: %u files, %u tensors byte-identical from cuda:0\n", files, tensors);
	weightd_detach(w);
	td_daemon_teardown(&d);
	cur = NULL;
}

/* Every tensor of @model mapped by @m equals its host-tier copy (loaded and pinned here). */
static unsigned int equal_to_host(struct weightd *w, const struct weightd_device_map *m,
				 const char *model)
{
	struct weightd_tensor_info ti[64];
	unsigned int n = 0;
	int count;

	CHECK(weightd_load(w, model, NULL, WEIGHTD_TIER_HOST, WEIGHTD_LOAD_PIN |
			   WEIGHTD_LOAD_NO_PROGRESS, NULL, NULL) == 0, "host load %s: %s", model,
	      weightd_last_error());
	count = weightd_tensor_list(w, model, NULL, ti, NULL, 64);
	CHECK(count > 0 && count <= 64, "tensor list of %s: %d (%s)", model, count,
	      weightd_last_error());
	for (int t = 0; t < count; t++) {
		const void *host;
		void *buf;

		host = weightd_tensor_data(w, &ti[t]);
		buf = malloc(ti[t].nbytes ? ti[t].nbytes : 1);
		CHECK(host && buf, "host data of tensor %d", t);
		CHECK(weightd_device_read(m, &ti[t], buf, ti[t].nbytes) == 0, "read %d: %s", t,
		      weightd_last_error());
		CHECK(!memcmp(buf, host, ti[t].nbytes), "tensor %d of %s differs from the host copy",
		      t, model);
		free(buf);
		n++;
	}
	weightd_unpin(w, model, NULL, WEIGHTD_TIER_HOST);
	return n;
}

/* Bytes of locked memory of process @pid (VmLck), or -1. */
static long long vm_locked(pid_t pid)
{
	char path[64], line[256];
	long long kb = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmLck: %lld kB", &kb) == 1)
			break;
	fclose(f);
	return kb < 0 ? -1 : kb * 1024;
}

/*
 * Two GPUs, a 256 MiB host budget. At start nothing of the host arena is page-locked (the
 * daemon's VmLck holds the two staging rings, 2 x 64 MiB, not the arena: page-locking the
 * arena at device open used to fault in and pin the whole budget), neither GPU reports a
 * degraded copy path (a second registration of one range used to fail on cuda:1 and say
 * "pageable speed"), and a component copied through the staged path reads back equal.
 */
static void test_copy_path(void **state)
{
	const char *extra[] = { "--host-budget", "256M", NULL };
	struct weightd_device_info info[2];
	struct td_daemon d;
	struct weightd *w;
	struct weightd_device_map *m = NULL;
	char why[256] = "";
	long long locked;
	int n;

	(void)state;
	EMULATED_ONLY();
	setenv("WEIGHTD_GPU_EMULATE", "2:64M", 1);
	start(&d, extra);
	setenv("WEIGHTD_GPU_EMULATE", EMULATE, 1);
	w = attach(&d);
	n = weightd_devices(w, info, 2, why, sizeof(why));
	CHECK(n == 2, "devices: %d (%s)", n, why);
	locked = vm_locked(d.pid);
	CHECK(locked >= 0 && locked < (200ll << 20), "the daemon has %lld bytes page-locked at "
	      "start with a 256 MiB host budget: the arena is locked", locked);
	for (int i = 0; i < 2; i++) {
		/* Root (CI) has no RLIMIT_MEMLOCK; elsewhere the slots may be refused. */
		if (geteuid() && (info[i].flags & WEIGHTD_DEVICE_F_SLOTS_PAGEABLE))
			continue;
		CHECK(info[i].flags == 0, "cuda:%d copy path degraded: flags %#x (locked_err %d, "
		      "fixed_err %d)", i, info[i].flags, info[i].locked_err, info[i].fixed_err);
	}
	CHECK(weightd_load(w, "large_4MiB", NULL, WEIGHTD_TIER_CUDA(1),
			   WEIGHTD_LOAD_NO_PROGRESS, NULL, NULL) == 0, "load to cuda:1: %s",
	      weightd_last_error());
	setenv("WEIGHTD_GPU_EMULATE", "2:64M", 1);
	CHECK(weightd_device_map_opts(w, "large_4MiB", NULL, 1, NULL, &m) == 0, "map cuda:1: %s",
	      weightd_last_error());
	CHECK(equal_to_host(w, m, "large_4MiB") > 0, "no tensors");
	weightd_device_unmap(w, m);
	setenv("WEIGHTD_GPU_EMULATE", EMULATE, 1);
	weightd_detach(w);
	td_daemon_teardown(&d);
	cur = NULL;
}

static void *map_on_thread(void *arg)
{
	struct weightd *w = arg;
	struct weightd_device_map *m = NULL;
	intptr_t bad = 0;

	/* A thread with no current context (a GC thread running a DLPack deleter). */
	if (weightd_device_map_opts(w, "large_4MiB", NULL, 1, NULL, &m))
		return (void *)1;
	bad |= gpu_emu_current() != -1 ? 2 : 0;
	weightd_device_unmap(w, m);
	bad |= gpu_emu_current() != -1 ? 4 : 0;
	return (void *)bad;
}

/*
 * Ordinals are per process. The daemon sees two GPUs; this process sees only the daemon's
 * cuda:1 (as its own cuda:0, WEIGHTD_GPU_EMULATE_VISIBLE=1, as CUDA_VISIBLE_DEVICES=1 would):
 * the map resolves the GPU by the id the daemon sends and reports ordinal 0 for DLPack; a
 * process that does not see the GPU is refused with a message naming it. And the calling
 * thread's current context is left as it was by map, read and unmap, on a thread whose
 * current device is another GPU (PyTorch's cuda:0) and on a thread with none.
 */
static void test_ordinals(void **state)
{
	struct td_daemon d;
	struct weightd *w;
	struct weightd_device_map *m = NULL;
	struct gpu_dev *g0 = NULL;
	char why[256] = "";
	void *saved = NULL, *ret;
	pthread_t th;
	int rc;

	(void)state;
	EMULATED_ONLY();
	setenv("WEIGHTD_GPU_EMULATE", "2:64M", 1);
	start(&d, NULL);
	w = attach(&d);
	CHECK(weightd_load(w, "large_4MiB", NULL, WEIGHTD_TIER_CUDA(1),
			   WEIGHTD_LOAD_NO_PROGRESS, NULL, NULL) == 0, "load to cuda:1: %s",
	      weightd_last_error());

	setenv("WEIGHTD_GPU_EMULATE_VISIBLE", "1", 1);
	rc = weightd_device_map_opts(w, "large_4MiB", NULL, 1, NULL, &m);
	CHECK(rc == 0, "map of the daemon's cuda:1 seen here as cuda:0: %s", weightd_last_error());
	CHECK(weightd_device_ordinal(m) == 0, "local ordinal %d, want 0",
	      weightd_device_ordinal(m));
	CHECK(equal_to_host(w, m, "large_4MiB") > 0, "no tensors");
	weightd_device_unmap(w, m);
	m = NULL;

	setenv("WEIGHTD_GPU_EMULATE_VISIBLE", "0", 1);
	rc = weightd_device_map_opts(w, "large_4MiB", NULL, 1, NULL, &m);
	CHECK(rc == -ENODEV && strstr(weightd_last_error(), "emulated-1") &&
	      strstr(weightd_last_error(), "not visible"), "map of a GPU this process cannot see: "
	      "%d (%s)", rc, weightd_last_error());
	unsetenv("WEIGHTD_GPU_EMULATE_VISIBLE");

	/* The framework's current device is cuda:0; the map is on cuda:1. */
	CHECK(gpu_emu_ops.open(0, &g0, why, sizeof(why)) == 0, "open: %s", why);
	CHECK(gpu_emu_ops.ctx_enter(g0, &saved, why, sizeof(why)) == 0, "enter: %s", why);
	rc = weightd_device_map_opts(w, "large_4MiB", NULL, 1, NULL, &m);
	CHECK(rc == 0, "map: %s", weightd_last_error());
	CHECK(weightd_device_ordinal(m) == 1, "local ordinal %d", weightd_device_ordinal(m));
	CHECK(gpu_emu_current() == 0, "after map the current context is cuda:%d's",
	      gpu_emu_current());
	CHECK(equal_to_host(w, m, "large_4MiB") > 0, "no tensors");
	CHECK(gpu_emu_current() == 0, "after reads the current context is cuda:%d's",
	      gpu_emu_current());
	weightd_device_unmap(w, m);
	CHECK(gpu_emu_current() == 0, "after unmap the current context is cuda:%d's",
	      gpu_emu_current());
	gpu_emu_ops.ctx_leave(g0, saved);
	gpu_emu_ops.close(g0);
	CHECK(pthread_create(&th, NULL, map_on_thread, w) == 0, "pthread_create");
	pthread_join(th, &ret);
	CHECK(ret == NULL, "on a thread with no context: failure mask %ld", (long)(intptr_t)ret);

	setenv("WEIGHTD_GPU_EMULATE", EMULATE, 1);
	weightd_detach(w);
	td_daemon_teardown(&d);
	cur = NULL;
}

/*
 * Capability checks at device open: a GPU without VMM or POSIX fd handles, or in
 * EXCLUSIVE_PROCESS compute mode, is not used, and DEVICES (weightctl status) says why.
 */
static void test_caps(void **state)
{
	static const struct {
		const char *var, *value;
		const char *why;
	} rows[] = {
		{ "WEIGHTD_GPU_EMULATE_CAPS", "novmm", "virtual memory management" },
		{ "WEIGHTD_GPU_EMULATE_CAPS", "nofd", "POSIX file descriptor handles" },
		{ "WEIGHTD_GPU_EMULATE_EXCLUSIVE", "devcache-%d", "EXCLUSIVE_PROCESS" },
	};

	(void)state;
	EMULATED_ONLY();
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		struct weightd_device_info info;
		struct td_daemon d;
		struct weightd *w;
		char why[256] = "", value[64];
		int n;

		snprintf(value, sizeof(value), rows[i].value, (int)getpid());
		setenv(rows[i].var, value, 1);
		start(&d, NULL);
		unsetenv(rows[i].var);
		w = attach(&d);
		n = weightd_devices(w, &info, 1, why, sizeof(why));
		CHECK(n == 0 && strstr(why, rows[i].why), "row %zu (%s=%s): %d GPUs, why \"%s\", "
		      "want 0 naming \"%s\"", i, rows[i].var, value, n, why, rows[i].why);
		weightd_detach(w);
		td_daemon_teardown(&d);
		cur = NULL;
	}
}

/*
 * weightd_device_trim(): unmapped, unpinned entries go (demoted to the host tier), a mapped
 * one stays; the bytes freed are reported once the VRAM is released (DEVICES shows it); a
 * GPU the daemon does not have is -ENOTSUP.
 */
static void test_trim(void **state)
{
	struct weightd_device_info gi;
	struct td_daemon d;
	struct weightd *w;
	struct weightd_device_map *m = NULL;
	char why[256] = "";
	int64_t freed;
	int n;

	(void)state;
	if (!real)	/* one GPU, whatever an earlier failed case left set */
		setenv("WEIGHTD_GPU_EMULATE", EMULATE, 1);
	start(&d, NULL);
	w = attach(&d);
	CHECK(load_gpu(w, "all_dtypes") == 0 && load_gpu(w, "metadata_rich") == 0, "load: %s",
	      weightd_last_error());
	CHECK(weightd_unload(w, "metadata_rich", NULL, WEIGHTD_TIER_HOST) == 0, "host unload: %s",
	      weightd_last_error());
	CHECK(weightd_device_map_opts(w, "all_dtypes", NULL, 0, NULL, &m) == 0, "map: %s",
	      weightd_last_error());
	freed = weightd_device_trim(w, 0, 1);
	CHECK(freed > 0 && (real || freed == 2 << 20), "trim of 1 byte with one unmapped entry "
	      "(2 MiB emulated): %" PRId64, freed);
	CHECK(gpu_state(w, "metadata_rich") == WEIGHTD_ABSENT, "metadata_rich still on cuda:0");
	CHECK(host_state(w, "metadata_rich") == WEIGHTD_RESIDENT, "metadata_rich not demoted to "
	      "the host");
	CHECK(gpu_state(w, "all_dtypes") == WEIGHTD_RESIDENT, "the mapped entry was trimmed");
	freed = weightd_device_trim(w, 0, UINT64_MAX);
	CHECK(freed == 0, "trim with only a mapped entry left: %" PRId64, freed);
	weightd_device_unmap(w, m);
	freed = weightd_device_trim(w, 0, UINT64_MAX);
	CHECK(freed > 0 && (real || freed == 2 << 20), "trim after the unmap: %" PRId64, freed);
	n = weightd_devices(w, &gi, 1, why, sizeof(why));
	CHECK(n >= 1 && gi.used == 0, "cuda:0 (of %d GPUs) uses %" PRIu64 " bytes after "
	      "trimming everything", n, gi.used);
	freed = weightd_device_trim(w, 5, 1);
	CHECK(freed == -ENOTSUP, "trim of a GPU the daemon lacks: %" PRId64 " (%s)", freed,
	      weightd_last_error());
	weightd_detach(w);
	td_daemon_teardown(&d);
	cur = NULL;
}

static void test_two_maps(void **state)
{
	const char *extra[] = { "--device-budget", "7M", NULL };
	struct td_daemon d;
	struct weightd *w;
	struct weightd_device_map *m = NULL;
	int to_parent[2], status, ret;
	pid_t child;
	char c;

	(void)state;
	start(&d, extra);
	w = attach(&d);
	CHECK(load_gpu(w, "large_4MiB") == 0, "load: %s", weightd_last_error());
	CHECK(pipe(to_parent) == 0, "pipe");
	/*
	 * Process A maps the component, says so, and waits to be killed. It is started with
	 * fork+exec: this process has used the device layer already (test_corpus), and a child
	 * forked after that cannot (CUDA state does not survive fork()).
	 */
	{
		char fd_s[16];

		snprintf(fd_s, sizeof(fd_s), "%d", to_parent[1]);
		child = fork();
		CHECK(child >= 0, "fork");
		if (child == 0) {
			execl("/proc/self/exe", "test_devcache", "--child-map", d.socket,
			      "large_4MiB", fd_s, (char *)NULL);
			_exit(127);
		}
	}
	close(to_parent[1]);
	CHECK(read(to_parent[0], &c, 1) == 1, "child did not map");
	close(to_parent[0]);
	ret = weightd_device_map_opts(w, "large_4MiB", NULL, 0, NULL, &m);
	CHECK(ret == 0, "map: %s", weightd_last_error());
	CHECK(model_pins(w, "large_4MiB") == 2, "pins %u with two mappings",
	      model_pins(w, "large_4MiB"));
	/* Both map it: a load that needs its room is refused, nothing is evicted. */
	ret = load_gpu(w, "transformer_block");
	CHECK(ret == -ENOSPC, "load with both mapped: %d (%s), expected -ENOSPC", ret,
	      weightd_last_error());
	kill(child, SIGKILL);
	CHECK(waitpid(child, &status, 0) == child && WIFSIGNALED(status), "child status %#x",
	      status);
	for (int i = 0; i < 200 && model_pins(w, "large_4MiB") != 1; i++)
		usleep(10000);
	CHECK(model_pins(w, "large_4MiB") == 1, "pins %u after the kill",
	      model_pins(w, "large_4MiB"));
	CHECK(verify_model(w, m, "large_4MiB") > 0, "no tensors");
	ret = load_gpu(w, "transformer_block");
	CHECK(ret == -ENOSPC, "load with one mapping left: %d (%s)", ret, weightd_last_error());
	CHECK(gpu_state(w, "large_4MiB") == WEIGHTD_RESIDENT, "evicted while mapped");
	weightd_device_unmap(w, m);
	CHECK(model_pins(w, "large_4MiB") == 0, "pins %u after unmap", model_pins(w, "large_4MiB"));
	ret = load_gpu(w, "transformer_block");
	CHECK(ret == 0, "load after both are gone: %s", weightd_last_error());
	CHECK(gpu_state(w, "large_4MiB") == WEIGHTD_ABSENT, "large_4MiB still on cuda:0");
	weightd_detach(w);
	td_daemon_teardown(&d);
	cur = NULL;
}

static void test_too_big(void **state)
{
	const char *extra[] = { "--device-budget", "3M", NULL };
	struct td_daemon d;
	struct weightd *w;
	int ret;

	(void)state;
	start(&d, extra);
	w = attach(&d);
	ret = load_gpu(w, "large_4MiB");
	CHECK(ret == -EFBIG, "load of 4 MiB into a 3 MiB budget: %d (%s)", ret,
	      weightd_last_error());
	CHECK(strstr(weightd_last_error(), "cuda:0 budget is"), "message: %s",
	      weightd_last_error());
	CHECK(weightd_load(w, "transformer_block", NULL, WEIGHTD_TIER_CUDA(0),
			   WEIGHTD_LOAD_PIN | WEIGHTD_LOAD_NO_PROGRESS, NULL, NULL) == 0,
	      "a small model after the refusal: %s", weightd_last_error());
	CHECK(model_pins(w, "transformer_block") == 1, "LOAD with the pin flag: %u pins",
	      model_pins(w, "transformer_block"));
	CHECK(weightd_unload(w, "transformer_block", NULL, WEIGHTD_TIER_CUDA(0)) == -EBUSY ||
	      gpu_state(w, "transformer_block") == WEIGHTD_RESIDENT,
	      "a pinned component left cuda:0");
	weightd_detach(w);
	td_daemon_teardown(&d);
	cur = NULL;
}

static void test_churn(void **state)
{
	const char *extra[] = { "--device-budget", "7M", NULL };
	struct td_daemon d;
	struct weightd *w;
	struct weightd_device_map *m = NULL;
	uint64_t before;
	struct weightd_device_info gi;
	char why[128];

	(void)state;
	start(&d, extra);
	w = attach(&d);
	CHECK(load_gpu(w, "large_4MiB") == 0, "load: %s", weightd_last_error());
	CHECK(load_gpu(w, "transformer_block") == 0, "load: %s", weightd_last_error());
	CHECK(gpu_state(w, "large_4MiB") == WEIGHTD_ABSENT, "no eviction under churn");
	/* Demoted: the host copy is still there, promotion is a host -> device copy. */
	before = host_read_bytes(w);
	CHECK(load_gpu(w, "large_4MiB") == 0, "re-promotion: %s", weightd_last_error());
	CHECK(host_read_bytes(w) == before, "re-promotion read %" PRIu64 " bytes from disk",
	      host_read_bytes(w) - before);
	/* Now without a host copy: unload it from the host, evict it from the GPU. */
	CHECK(weightd_unload(w, "large_4MiB", NULL, WEIGHTD_TIER_HOST) >= 0, "unload: %s",
	      weightd_last_error());
	CHECK(host_state(w, "large_4MiB") == WEIGHTD_ABSENT, "still on the host after unload");
	CHECK(load_gpu(w, "transformer_block") == 0, "load: %s", weightd_last_error());
	CHECK(gpu_state(w, "large_4MiB") == WEIGHTD_ABSENT, "no eviction");
	CHECK(host_state(w, "large_4MiB") == WEIGHTD_RESIDENT, "evicted from cuda:0 without a "
	      "host copy, and not demoted to the host");
	before = host_read_bytes(w);
	CHECK(load_gpu(w, "large_4MiB") == 0, "re-promotion: %s", weightd_last_error());
	CHECK(host_read_bytes(w) == before, "re-promotion after demotion by copy read %" PRIu64
	      " bytes from disk", host_read_bytes(w) - before);
	CHECK(weightd_device_map_opts(w, "large_4MiB", NULL, 0, NULL, &m) == 0, "map: %s",
	      weightd_last_error());
	CHECK(verify_model(w, m, "large_4MiB") > 0, "no tensors");
	weightd_device_unmap(w, m);
	CHECK(weightd_devices(w, &gi, 1, why, sizeof(why)) == 1, "devices: %s", why);
	CHECK(gi.evictions >= 3 && gi.hits + gi.misses >= 5 && gi.budget == 7ull << 20,
	      "per-GPU counters: evictions %" PRIu64 " hits %" PRIu64 " misses %" PRIu64
	      " budget %" PRIu64, gi.evictions, gi.hits, gi.misses, gi.budget);
	weightd_detach(w);
	td_daemon_teardown(&d);
	cur = NULL;
}

static void test_stream(void **state)
{
	const char *extra[] = { "--host-budget", "1M", "--device-budget", "7M", NULL };
	struct td_daemon d;
	struct weightd *w;
	struct weightd_device_map *m = NULL;
	uint64_t before;

	(void)state;
	start(&d, extra);
	w = attach(&d);
	before = host_read_bytes(w);
	CHECK(load_gpu(w, "large_4MiB") == 0, "load of 4 MiB with a 1 MiB host budget: %s",
	      weightd_last_error());
	CHECK(host_state(w, "large_4MiB") == WEIGHTD_ABSENT, "it went through the host cache");
	CHECK(host_read_bytes(w) == before, "the host tier read %" PRIu64 " bytes",
	      host_read_bytes(w) - before);
	CHECK(weightd_device_map_opts(w, "large_4MiB", NULL, 0, NULL, &m) == 0, "map: %s",
	      weightd_last_error());
	CHECK(verify_model(w, m, "large_4MiB") > 0, "no tensors");
	weightd_device_unmap(w, m);
	/* Evicted by a load that needs its room: the host cannot take it back, so demotion
	 * must give up before copying anything off the GPU. */
	CHECK(load_gpu(w, "transformer_block") == 0, "load: %s", weightd_last_error());
	CHECK(gpu_state(w, "large_4MiB") == WEIGHTD_ABSENT, "not evicted");
	CHECK(host_state(w, "large_4MiB") == WEIGHTD_ABSENT, "demoted past the host budget");
	CHECK(log_has(&d, "not demoted: no room on the host, dropped without copying") &&
	      !log_has(&d, "\"demotion to the host\""), "demotion copied, or did not say why");
	weightd_detach(w);
	td_daemon_teardown(&d);
	cur = NULL;
}

struct loader_arg {
	const struct td_daemon *d;
	int ret;
	char err[256];
};

static void *load_thread(void *p)
{
	struct loader_arg *a = p;
	struct weightd *w = NULL;

	a->ret = weightd_attach(a->d->socket, NULL, &w);
	if (!a->ret)
		a->ret = load_gpu(w, "sd-tiny");
	snprintf(a->err, sizeof(a->err), "%s", weightd_last_error());
	weightd_detach(w);
	return NULL;
}

/*
 * Four clients load the multi-component demo model to cuda:0 at once: every component is read
 * from disk once (the host tier's coalescing, and device loads joined), and each component's
 * device copy matches its host copy tensor by tensor.
 */
static void test_concurrent(void **state)
{
	struct td_daemon d;
	struct weightd *w;
	struct weightd_model_info mi;
	struct weightd_host_stats cs;
	struct loader_arg args[4];
	pthread_t th[4];
	uint32_t id;
	unsigned int checked = 0;

	(void)state;
	start(&d, NULL);
	w = attach(&d);
	for (int i = 0; i < 4; i++) {
		args[i] = (struct loader_arg){ .d = &d };
		CHECK(pthread_create(&th[i], NULL, load_thread, &args[i]) == 0, "thread");
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		CHECK(args[i].ret == 0, "client %d: %d %s", i, args[i].ret, args[i].err);
	}
	CHECK(weightd_lookup(w, "sd-tiny", &id) == 0 && weightd_model(w, id, &mi) == 0,
	      "sd-tiny: %s", weightd_last_error());
	CHECK(weightd_host_stats(w, &cs) == 0, "stats");
	CHECK(cs.loads == mi.n_components, "%" PRIu64 " host loads for %u components",
	      cs.loads, mi.n_components);
	for (uint32_t c = 0;; c++) {
		struct weightd_component_info ci;
		static struct weightd_tensor_info ti[1024];
		struct weightd_device_map *m = NULL;
		int n;

		if (weightd_component(w, c, &ci))
			break;
		if (ci.model != id)
			continue;
		CHECK(ci.tiers[WEIGHTD_TIER_CUDA(0)].state == WEIGHTD_RESIDENT, "%s not on cuda:0",
		      ci.name);
		CHECK(weightd_device_map_opts(w, "sd-tiny", ci.name, 0, NULL, &m) == 0,
		      "map %s: %s", ci.name, weightd_last_error());
		n = weightd_tensor_list(w, "sd-tiny", ci.name, ti, NULL, ARRAY_SIZE(ti));
		CHECK(n > 0 && n <= (int)ARRAY_SIZE(ti), "%s: %d tensors", ci.name, n);
		for (int k = 0; k < n; k++) {
			const void *host = weightd_tensor_data(w, &ti[k]);
			void *buf = malloc(ti[k].nbytes ? ti[k].nbytes : 1);

			CHECK(host && buf, "%s tensor %u not on the host", ci.name, ti[k].id);
			CHECK(weightd_device_read(m, &ti[k], buf, ti[k].nbytes) == 0, "read: %s",
			      weightd_last_error());
			CHECK(!memcmp(buf, host, ti[k].nbytes), "%s tensor %u: device bytes differ "
			      "from the host cache's", ci.name, ti[k].id);
			free(buf);
			checked++;
		}
		weightd_device_unmap(w, m);
	}
	CHECK(checked > 0, "nothing checked");
	weightd_detach(w);
	td_daemon_teardown(&d);
	cur = NULL;
}

/* ---- a hostile client on a raw ring ------------------------------------------------------ */

struct raw {
	int fd;
	struct shm_segment seg;
	struct ring sq, cq;
	uint64_t ud;
};

static void raw_attach(const char *sock, struct raw *c)
{
	struct wd_hello h = { .magic = WD_HELLO_MAGIC, .version = WD_ABI_VERSION,
			      .hello_size = sizeof(h), .sqe_size = sizeof(struct wd_sqe),
			      .cqe_size = sizeof(struct wd_cqe), .sq_entries = 16 };
	struct wd_hello_reply rep;
	int fds[ATTACH_MAX_FDS], nfds = ATTACH_MAX_FDS, ret;
	ssize_t n;

	memset(c, 0, sizeof(*c));
	c->fd = attach_connect(sock);
	CHECK(c->fd >= 0, "connect: %s", strerror(-c->fd));
	CHECK(attach_send(c->fd, &h, sizeof(h), NULL, 0) == 0, "hello");
	n = attach_recv(c->fd, &rep, sizeof(rep), fds, &nfds);
	CHECK(n == (ssize_t)sizeof(rep) && rep.status == 0 && nfds == 3, "reply %zd status %d",
	      n, rep.status);
	close(fds[1]);
	close(fds[2]);
	ret = shm_segment_map(fds[0], true, rep.ring_seg_size, &c->seg);
	CHECK(ret == 0, "map: %s", strerror(-ret));
	ret = ring_seg_attach(c->seg.base, c->seg.size, &c->sq, &c->cq, NULL);
	CHECK(ret == 0, "ring_seg_attach: %s", strerror(-ret));
}

static int raw_call(struct raw *c, struct wd_sqe s, struct wd_cqe *out)
{
	void *slot;

	s.user_data = ++c->ud;
	slot = ring_prod_slot(&c->sq);
	CHECK(slot, "SQ full");
	memcpy(slot, &s, sizeof(s));
	ring_prod_advance(&c->sq);
	ring_prod_publish(&c->sq);
	ring_notify(&c->sq);
	for (;;) {
		int ret = ring_wait(&c->cq, 20000, WAIT_NS);

		CHECK(ret > 0, "wait: %d", ret);
		memcpy(out, ring_cons_slot(&c->cq, 0), sizeof(*out));
		ring_cons_release(&c->cq, 1);
		if (!(out->flags & WD_CQE_F_PROGRESS) && out->user_data == s.user_data)
			return out->res;
	}
}

static void raw_close(struct raw *c)
{
	shm_segment_close(&c->seg);
	close(c->fd);
}

struct hostile_case {
	const char *what;
	uint16_t tier;
	uint8_t flags;
	int model;		/* 0 large_4MiB, 1 sd-tiny (several components), 2 id 1000000 */
	int comp;		/* -1 none, 0 the model's first, 1 a component of another model */
	uint64_t arg0;
	int want;
};

static const struct hostile_case hostile_cases[] = {
	{ "host tier", 0, 0, 0, -1, 0, -EINVAL },
	{ "no such GPU", 6, 0, 0, -1, 0, -ENOTSUP },
	{ "unknown model id", 1, 0, 2, -1, 0, -ENOENT },
	{ "component of another model", 1, 0, 0, 1, 0, -EINVAL },
	{ "arg[0] set", 1, 0, 0, -1, 7, -EINVAL },
	{ "a selection without payload", 1, 0, 0, -1, WD_LOAD_PREFIX, -EINVAL },
	{ "prefix and names together", 1, 0, 0, -1, WD_LOAD_PREFIX | WD_LOAD_NAMES, -EINVAL },
	{ "conversion to I32", 1, 0, 0, -1, WD_LOAD_CONVERT | 6, -EINVAL },
	{ "unknown arg[0] bit", 1, 0, 0, -1, 1u << 20, -EINVAL },
	{ "a form not resident", 1, 0, 0, -1, WD_LOAD_CONVERT | 9, -ENODATA },
	{ "PIN flag", 1, WD_SQE_F_PIN, 0, -1, 0, -EINVAL },
	{ "several components, none named", 1, 0, 1, -1, 0, -EINVAL },
	{ "not resident on the GPU", 1, 0, 1, 0, 0, -ENODATA },
};

static void test_hostile(void **state)
{
	struct td_daemon d;
	struct weightd *w;
	struct raw c;
	struct wd_cqe cqe;
	uint32_t large, sd;
	struct weightd_component_info ci;
	uint32_t sd_first = WD_ID_NONE, large_comp = WD_ID_NONE;
	int ok = 0, refused = 0, ret;

	(void)state;
	start(&d, NULL);
	w = attach(&d);
	CHECK(load_gpu(w, "large_4MiB") == 0, "load: %s", weightd_last_error());
	CHECK(weightd_lookup(w, "large_4MiB", &large) == 0 && weightd_lookup(w, "sd-tiny", &sd) == 0,
	      "lookup: %s", weightd_last_error());
	for (uint32_t id = 0; weightd_component(w, id, &ci) == 0; id++) {
		if (ci.model == sd && sd_first == WD_ID_NONE)
			sd_first = id;
		if (ci.model == large)
			large_comp = id;
	}
	CHECK(sd_first != WD_ID_NONE && large_comp != WD_ID_NONE, "components not found");
	raw_attach(d.socket, &c);
	for (size_t i = 0; i < ARRAY_SIZE(hostile_cases); i++) {
		const struct hostile_case *hc = &hostile_cases[i];
		struct wd_sqe s = { .opcode = WD_OP_DEVICE_MAP, .tier = hc->tier, .flags = hc->flags,
				    .model = hc->model == 0 ? large : hc->model == 1 ? sd : 1000000,
				    .component = WD_ID_NONE, .arg = { hc->arg0 } };

		if (hc->comp == 0)
			s.component = hc->model == 1 ? sd_first : large_comp;
		else if (hc->comp == 1)
			s.component = sd_first;
		ret = raw_call(&c, s, &cqe);
		CHECK(ret == hc->want, "case \"%s\": res %d, expected %d", hc->what, ret, hc->want);
	}
	/* DEVICES with fields it does not take. */
	ret = raw_call(&c, (struct wd_sqe){ .opcode = WD_OP_DEVICES, .model = 3,
					   .component = WD_ID_NONE }, &cqe);
	CHECK(ret == -EINVAL, "DEVICES with a model: %d", ret);
	/* Valid maps whose messages this client never reads: the daemon must not block. */
	for (int i = 0; i < 2000; i++) {
		struct wd_sqe s = { .opcode = WD_OP_DEVICE_MAP, .tier = 1, .model = large,
				    .component = WD_ID_NONE };

		ret = raw_call(&c, s, &cqe);
		CHECK(ret == 0 || ret == -EAGAIN || ret == -ETOOMANYREFS || ret == -ENOBUFS,
		      "unread map %d: %d", i, ret);
		ok += ret == 0;
		refused += ret != 0;
		if (refused > 3)
			break;
	}
	CHECK(ok > 0, "no map succeeded");
	CHECK(weightd_ping(w) == 0, "daemon stopped serving: %s", weightd_last_error());
	CHECK(load_gpu(w, "transformer_block") == 0, "another client's load: %s",
	      weightd_last_error());
	raw_close(&c);
	/* The hostile client's reference went with its socket. */
	for (int i = 0; i < 200 && model_pins(w, "large_4MiB"); i++)
		usleep(10000);
	CHECK(model_pins(w, "large_4MiB") == 0, "pins %u after the hostile client left",
	      model_pins(w, "large_4MiB"));
	printf("hostile: %d unread maps accepted, then %d refused; daemon still serving\n", ok,
	       refused);
	weightd_detach(w);
	td_daemon_teardown(&d);
	cur = NULL;
}

/*
 * Writes @dir/f32mix.safetensors: "big" (F32, @n_big elements of bit patterns that cover
 * NaNs, infinities, subnormals and ties), "half" (F16, 6 elements) and "small" (F32, 3).
 */
static void write_f32_model(const char *dir, size_t n_big)
{
	char path[4096], hdr[512];
	uint64_t big = 4 * (uint64_t)n_big, hlen;
	static const uint32_t small[3] = { 0x3f801000, 0x7fc00001, 0x33000000 };
	static const uint16_t half[6] = { 0x3c00, 0xbc00, 0x7c00, 0x0001, 0x7e00, 0x5640 };
	FILE *f;
	int n;

	n = snprintf(hdr, sizeof(hdr), "{\"big\":{\"dtype\":\"F32\",\"shape\":[%zu],"
		     "\"data_offsets\":[0,%" PRIu64 "]},\"half\":{\"dtype\":\"F16\",\"shape\":[6],"
		     "\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]},\"small\":{\"dtype\":\"F32\","
		     "\"shape\":[3],\"data_offsets\":[%" PRIu64 ",%" PRIu64 "]}}", n_big, big, big,
		     big + 12, big + 12, big + 24);
	while (n % 8)
		hdr[n++] = ' ';
	hlen = (uint64_t)n;
	snprintf(path, sizeof(path), "%s/f32mix.safetensors", dir);
	f = fopen(path, "w");
	CHECK(f, "%s: %s", path, strerror(errno));
	CHECK(fwrite(&hlen, 8, 1, f) == 1 && fwrite(hdr, 1, hlen, f) == hlen, "write header");
	for (size_t i = 0; i < n_big; i++) {
		uint32_t x = (uint32_t)(i * 2654435761u);

		CHECK(fwrite(&x, 4, 1, f) == 1, "write data");
	}
	CHECK(fwrite(half, 2, 6, f) == 6 && fwrite(small, 4, 3, f) == 3, "write data");
	CHECK(fclose(f) == 0, "close %s", path);
}

static void test_convert(void **state)
{
	static const unsigned int dtypes[] = { WEIGHTD_DTYPE_F16, WEIGHTD_DTYPE_BF16 };
	const size_t n_big = 5u << 19;	/* 10 MiB of F32: more than one scratch area */
	char dir[] = "/tmp/wd-devconv.XXXXXX", path[4200];
	struct td_daemon d;
	struct weightd *w;
	struct weightd_device_map *m = NULL;
	struct weightd_tensor_info ti[8], stored;
	char names[8 * WEIGHTD_NAME_MAX];
	unsigned int checked = 0;
	int n, ret;

	(void)state;
	CHECK(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
	write_f32_model(dir, n_big);
	start_dir(&d, dir, NULL);
	w = attach(&d);
	CHECK(weightd_tensor(w, "f32mix", NULL, "big", &stored) == 0 &&
	      stored.nbytes == 4 * n_big, "f32mix/big: %s", weightd_last_error());
	for (size_t k = 0; k < ARRAY_SIZE(dtypes); k++) {
		struct weightd_load_opts o = { .dtype = dtypes[k] };

		ret = weightd_load_ex(w, "f32mix", NULL, WEIGHTD_TIER_CUDA(0),
				      WEIGHTD_LOAD_NO_PROGRESS, &o, NULL, NULL, NULL);
		CHECK(ret == 0, "load to cuda:0 as dtype %u: %s", dtypes[k], weightd_last_error());
		CHECK(weightd_device_map_opts(w, "f32mix", NULL, 0, &o, &m) == 0,
		      "map as dtype %u: %s", dtypes[k], weightd_last_error());
		/* The host tier's converted copy, loaded last: the registry describes it. */
		ret = weightd_load_ex(w, "f32mix", NULL, WEIGHTD_TIER_HOST, WEIGHTD_LOAD_NO_PROGRESS,
				      &o, NULL, NULL, NULL);
		CHECK(ret == 0, "host load as dtype %u: %s", dtypes[k], weightd_last_error());
		n = weightd_tensor_list(w, "f32mix", NULL, ti, names, ARRAY_SIZE(ti));
		CHECK(n == 3, "%d tensors", n);
		for (int i = 0; i < n; i++) {
			const char *name = names + i * WEIGHTD_NAME_MAX;
			const void *host = weightd_tensor_data(w, &ti[i]);
			void *buf = malloc(ti[i].nbytes);
			bool f32 = strcmp(name, "half") != 0;

			CHECK(host && buf, "%s: not on the host: %s", name, weightd_last_error());
			CHECK(ti[i].dtype == (f32 ? dtypes[k] : WEIGHTD_DTYPE_F16), "%s: host dtype %u",
			      name, ti[i].dtype);
			ret = weightd_device_read(m, &ti[i], buf, ti[i].nbytes);
			CHECK(ret == 0, "%s: device read of %" PRIu64 " bytes: %s", name,
			      ti[i].nbytes, weightd_last_error());
			CHECK(!memcmp(buf, host, ti[i].nbytes), "%s as dtype %u: the cuda:0 copy "
			      "differs from the host tier's converted copy", name, dtypes[k]);
			free(buf);
			checked++;
		}
		weightd_device_unmap(w, m);
	}
	/* As stored: a separate device entry, the F32 bytes as in the file. */
	CHECK(load_gpu(w, "f32mix") == 0, "load as stored: %s", weightd_last_error());
	CHECK(weightd_device_map_opts(w, "f32mix", NULL, 0, NULL, &m) == 0, "map: %s",
	      weightd_last_error());
	{
		uint32_t *buf = malloc(stored.nbytes);

		CHECK(buf && weightd_device_read(m, &stored, buf, stored.nbytes) == 0,
		      "read stored big: %s", weightd_last_error());
		for (size_t i = 0; i < n_big; i++)
			CHECK(buf[i] == (uint32_t)(i * 2654435761u), "stored big[%zu] = %08x", i,
			      buf[i]);
		free(buf);
	}
	weightd_device_unmap(w, m);
	{
		/* A selection converted: only "big", as F16, equal to the host tier's copy of the
		 * same form; "small" (F32 too) is not in the mapping. */
		struct weightd_load_opts o = { .dtype = WEIGHTD_DTYPE_F16, .prefix = "bi" };
		struct weightd_tensor_info big, small;
		uint64_t nbytes = 0;
		unsigned int dt = 0;
		const void *host;
		void *buf;

		ret = weightd_load_ex(w, "f32mix", NULL, WEIGHTD_TIER_CUDA(0),
				      WEIGHTD_LOAD_NO_PROGRESS, &o, NULL, NULL, NULL);
		CHECK(ret == 0, "selection as F16 on cuda:0: %s", weightd_last_error());
		CHECK(weightd_device_map_opts(w, "f32mix", NULL, 0, &o, &m) == 0,
		      "map of the selection as F16: %s", weightd_last_error());
		ret = weightd_load_ex(w, "f32mix", NULL, WEIGHTD_TIER_HOST, WEIGHTD_LOAD_NO_PROGRESS,
				      &o, NULL, NULL, NULL);
		CHECK(ret == 0, "host load of the selection as F16: %s", weightd_last_error());
		CHECK(weightd_tensor(w, "f32mix", NULL, "big", &big) == 0 &&
		      weightd_tensor(w, "f32mix", NULL, "small", &small) == 0, "tensors: %s",
		      weightd_last_error());
		CHECK(weightd_tensor_device_info(m, &small, NULL, NULL, NULL) == -ENOENT,
		      "unselected \"small\" is in the mapping");
		CHECK(weightd_tensor_device_info(m, &big, NULL, &dt, &nbytes) == 0 &&
		      dt == WEIGHTD_DTYPE_F16 && nbytes == 2 * n_big, "big in the mapping: dtype %u, "
		      "%" PRIu64 " bytes", dt, nbytes);
		host = weightd_tensor_data(w, &big);
		buf = malloc(nbytes);
		CHECK(host && buf && big.nbytes == nbytes, "host copy of big: %s",
		      weightd_last_error());
		CHECK(weightd_device_read(m, &big, buf, nbytes) == 0 && !memcmp(buf, host, nbytes),
		      "the selected F16 cuda:0 copy of big differs from the host tier's");
		free(buf);
		weightd_device_unmap(w, m);
		checked++;
	}
	printf("convert: %u tensors of converted cuda:0 copies equal the host tier's\n", checked);
	weightd_detach(w);
	td_daemon_teardown(&d);
	cur = NULL;
	snprintf(path, sizeof(path), "%s/f32mix.safetensors", dir);
	unlink(path);
	rmdir(dir);
}

struct select_case {
	const char *what;
	const char *prefix;		/* or */
	const char *names[4];		/* NULL-terminated */
	unsigned int want;		/* tensors selected; 0: the load fails with -ENOENT */
};

static const struct select_case select_cases[] = {
	{ "prefix", "blocks.1.", { NULL }, 5 },
	{ "prefix of one tensor", "blocks.2.mlp.fc2", { NULL }, 1 },
	{ "names", NULL, { "blocks.0.mlp.fc1.weight", "blocks.3.norm1.weight",
			   "blocks.1.attn.qkv.weight", NULL }, 3 },
	{ "prefix matching nothing", "nope.", { NULL }, 0 },
	{ "a name no tensor has", NULL, { "blocks.0.mlp.fc1.weight", "blocks.9.x", NULL }, 0 },
};

static bool selected(const struct select_case *sc, const char *name)
{
	if (sc->prefix)
		return !strncmp(name, sc->prefix, strlen(sc->prefix));
	for (size_t i = 0; sc->names[i]; i++)
		if (!strcmp(name, sc->names[i]))
			return true;
	return false;
}

/*
 * Checks mapping @m of selection @sc of transformer_block against the reference listing:
 * selected tensors read back byte-identical, the others are not in the mapping. Returns the
 * number of selected tensors found.
 */
static unsigned int verify_selection(struct weightd *w, const struct weightd_device_map *m,
				     const struct select_case *sc)
{
	char path[4096], line[4096];
	unsigned int n = 0;
	FILE *f;

	snprintf(path, sizeof(path), "%s/transformer_block.tensors.txt", corpus);
	f = fopen(path, "r");
	CHECK(f, "%s: %s", path, strerror(errno));
	while (fgets(line, sizeof(line), f)) {
		char *name = strtok(line, "\t"), *size, *hash;
		struct weightd_tensor_info ti;
		uint64_t dptr = 0, nbytes = 0;
		void *buf;
		int ret;

		strtok(NULL, "\t");
		strtok(NULL, "\t");
		size = strtok(NULL, "\t");
		hash = strtok(NULL, "\t\n");
		if (!name || !size || !hash)
			continue;
		CHECK(weightd_tensor(w, "transformer_block", NULL, name, &ti) == 0, "%s: %s", name,
		      weightd_last_error());
		ret = weightd_tensor_device_info(m, &ti, &dptr, NULL, &nbytes);
		if (!selected(sc, name)) {
			CHECK(ret == -ENOENT, "case \"%s\": unselected %s is in the mapping (%d)",
			      sc->what, name, ret);
			continue;
		}
		CHECK(ret == 0 && nbytes == strtoull(size, NULL, 10) &&
		      dptr >= weightd_device_base(m) &&
		      dptr + nbytes <= weightd_device_base(m) + weightd_device_size(m),
		      "case \"%s\": %s: ret %d, %" PRIu64 " bytes at %#" PRIx64 " in [%#" PRIx64
		      ", +%" PRIu64 ")", sc->what, name, ret, nbytes, dptr, weightd_device_base(m),
		      weightd_device_size(m));
		buf = malloc(nbytes ? nbytes : 1);
		CHECK(buf, "malloc");
		ret = weightd_device_read(m, &ti, buf, nbytes);
		CHECK(ret == 0 && fnv1a(buf, nbytes) == strtoull(hash, NULL, 16),
		      "case \"%s\": %s read back from cuda:0 (ret %d) differs from the reference",
		      sc->what, name, ret);
		free(buf);
		n++;
	}
	fclose(f);
	return n;
}

static void test_select(void **state)
{
	struct td_daemon d;
	struct weightd *w;
	struct weightd_device_map *m = NULL;
	unsigned int checked = 0;
	int ret;

	(void)state;
	start(&d, NULL);
	w = attach(&d);
	for (size_t i = 0; i < ARRAY_SIZE(select_cases); i++) {
		const struct select_case *sc = &select_cases[i];
		struct weightd_load_opts o = { .prefix = sc->prefix,
					       .names = sc->prefix ? NULL : sc->names };
		struct weightd_load_result res;
		unsigned int n;

		while (!sc->prefix && sc->names[o.n_names])
			o.n_names++;
		ret = weightd_load_ex(w, "transformer_block", NULL, WEIGHTD_TIER_CUDA(0),
				      WEIGHTD_LOAD_NO_PROGRESS, &o, NULL, NULL, &res);
		if (!sc->want) {
			CHECK(ret == -ENOENT, "case \"%s\": load %d (%s), expected -ENOENT",
			      sc->what, ret, weightd_last_error());
			continue;
		}
		CHECK(ret == 0, "case \"%s\": load: %s", sc->what, weightd_last_error());
		ret = weightd_device_map_opts(w, "transformer_block", NULL, 0, &o, &m);
		CHECK(ret == 0, "case \"%s\": map: %s", sc->what, weightd_last_error());
		n = verify_selection(w, m, sc);
		CHECK(n == sc->want, "case \"%s\": %u tensors in the mapping, expected %u",
		      sc->what, n, sc->want);
		weightd_device_unmap(w, m);
		/* The same selection again: the device entry is resident (a hit). */
		ret = weightd_load_ex(w, "transformer_block", NULL, WEIGHTD_TIER_CUDA(0),
				      WEIGHTD_LOAD_NO_PROGRESS, &o, NULL, NULL, &res);
		CHECK(ret == 0 && res.hit && res.read_bytes == 0, "case \"%s\": second load %d, "
		      "hit %d, read %" PRIu64, sc->what, ret, res.hit, res.read_bytes);
		checked += n;
	}
	/* Only selections were loaded to the GPU: the whole component is not mapped there. */
	ret = weightd_device_map_opts(w, "transformer_block", NULL, 0, NULL, &m);
	CHECK(ret == -ENODATA, "map of the whole component: %d (%s), expected -ENODATA", ret,
	      weightd_last_error());
	printf("select: %u selected tensors byte-identical from cuda:0, the others unmapped\n",
	       checked);
	weightd_detach(w);
	td_daemon_teardown(&d);
	cur = NULL;
}

static uint64_t gpu_used(struct weightd *w)
{
	struct weightd_device_info gi;
	char why[256] = "";

	CHECK(weightd_devices(w, &gi, 1, why, sizeof(why)) == 1, "devices: %s", why);
	return gi.used;
}

/* Every tensor of @model read through @m equals its host cache copy. Returns the count. */
static unsigned int same_as_host(struct weightd *w, const struct weightd_device_map *m,
				 const char *model)
{
	struct weightd_tensor_info ti[8];
	char names[8 * WEIGHTD_NAME_MAX];
	int n = weightd_tensor_list(w, model, NULL, ti, names, ARRAY_SIZE(ti));

	CHECK(n > 0, "%s: %d tensors: %s", model, n, weightd_last_error());
	for (int i = 0; i < n; i++) {
		const void *host = weightd_tensor_data(w, &ti[i]);
		void *buf = malloc(ti[i].nbytes ? ti[i].nbytes : 1);
		int ret;

		CHECK(host && buf, "%s/%s: not on the host: %s", model,
		      names + i * WEIGHTD_NAME_MAX, weightd_last_error());
		ret = weightd_device_read(m, &ti[i], buf, ti[i].nbytes);
		CHECK(ret == 0 && !memcmp(buf, host, ti[i].nbytes), "%s/%s: cuda:0 copy (read %d) "
		      "differs from the host copy", model, names + i * WEIGHTD_NAME_MAX, ret);
		free(buf);
	}
	return (unsigned int)n;
}

static void test_shared(void **state)
{
	const char *extra[] = { "--device-budget", "7M", NULL };
	char dir[] = "/tmp/wd-devshared.XXXXXX", a[4200], b[4200], cmd[8600];
	struct td_daemon d;
	struct weightd *w;
	struct weightd_device_map *m = NULL;
	struct weightd_load_result res;
	uint64_t used;
	int ret;

	(void)state;
	CHECK(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
	snprintf(a, sizeof(a), "%s/twin_a.safetensors", dir);
	snprintf(b, sizeof(b), "%s/twin_b.safetensors", dir);
	snprintf(cmd, sizeof(cmd), "cp %s/large_4MiB.safetensors %s", corpus, a);
	CHECK(system(cmd) == 0, "%s failed", cmd);
	CHECK(link(a, b) == 0, "link %s: %s", b, strerror(errno));
	/* 4 MiB of other content: with the 7 MiB budget it needs the twins' room. */
	write_f32_model(dir, 1u << 20);
	start_dir(&d, dir, extra);
	w = attach(&d);
	CHECK(load_gpu(w, "twin_a") == 0, "load twin_a: %s", weightd_last_error());
	used = gpu_used(w);
	ret = weightd_load_ex(w, "twin_b", NULL, WEIGHTD_TIER_CUDA(0), WEIGHTD_LOAD_NO_PROGRESS,
			      NULL, NULL, NULL, &res);
	CHECK(ret == 0 && res.read_bytes == 0, "load twin_b: %d (%s), read %" PRIu64, ret,
	      weightd_last_error(), res.read_bytes);
	/* Two copies cannot both fit the 7 MiB budget: both resident means one copy. */
	CHECK(gpu_state(w, "twin_a") == WEIGHTD_RESIDENT &&
	      gpu_state(w, "twin_b") == WEIGHTD_RESIDENT, "twin_a %u, twin_b %u on cuda:0",
	      gpu_state(w, "twin_a"), gpu_state(w, "twin_b"));
	CHECK(gpu_used(w) == used, "cuda:0 uses %" PRIu64 " bytes after twin_b, %" PRIu64
	      " before: a second copy", gpu_used(w), used);
	CHECK(weightd_device_map_opts(w, "twin_a", NULL, 0, NULL, &m) == 0, "map twin_a: %s",
	      weightd_last_error());
	CHECK(same_as_host(w, m, "twin_a") > 0, "no tensors");
	weightd_device_unmap(w, m);
	/* A mapping of the second model pins the one copy. */
	CHECK(weightd_device_map_opts(w, "twin_b", NULL, 0, NULL, &m) == 0, "map twin_b: %s",
	      weightd_last_error());
	ret = load_gpu(w, "f32mix");
	CHECK(ret == -ENOSPC, "load of f32mix with the shared copy mapped: %d (%s), expected "
	      "-ENOSPC", ret, weightd_last_error());
	CHECK(gpu_state(w, "twin_a") == WEIGHTD_RESIDENT &&
	      gpu_state(w, "twin_b") == WEIGHTD_RESIDENT, "the mapped shared copy was evicted");
	ret = weightd_unload(w, "twin_b", NULL, WEIGHTD_TIER_CUDA(0));
	CHECK(ret == -EBUSY, "unload of mapped twin_b: %d, expected -EBUSY", ret);
	/* The first model goes; the second keeps the allocation. */
	ret = weightd_unload(w, "twin_a", NULL, WEIGHTD_TIER_CUDA(0));
	CHECK(ret >= 0, "unload twin_a: %d (%s)", ret, weightd_last_error());
	CHECK(gpu_state(w, "twin_a") == WEIGHTD_ABSENT &&
	      gpu_state(w, "twin_b") == WEIGHTD_RESIDENT, "states after unloading twin_a: %u %u",
	      gpu_state(w, "twin_a"), gpu_state(w, "twin_b"));
	CHECK(gpu_used(w) == used, "cuda:0 uses %" PRIu64 " bytes, %" PRIu64 " before unloading "
	      "twin_a", gpu_used(w), used);
	CHECK(same_as_host(w, m, "twin_b") > 0, "no tensors");
	weightd_device_unmap(w, m);
	/* Unmapped, it is an ordinary victim. */
	CHECK(load_gpu(w, "f32mix") == 0, "load f32mix: %s", weightd_last_error());
	CHECK(gpu_state(w, "twin_b") == WEIGHTD_ABSENT, "twin_b not evicted");
	printf("shared: one cuda:0 copy (%" PRIu64 " bytes) for two models, pinned by either, "
	       "handed on at unload\n", used);
	weightd_detach(w);
	td_daemon_teardown(&d);
	cur = NULL;
	unlink(a);
	unlink(b);
	snprintf(a, sizeof(a), "%s/f32mix.safetensors", dir);
	unlink(a);
	rmdir(dir);
}

/* One value of the daemon's STATS vector, through the raw ring (the payload slot). */
static uint64_t raw_stat(struct raw *c, unsigned int idx)
{
	struct wd_sqe s = { .opcode = WD_OP_STATS, .model = WD_ID_NONE, .component = WD_ID_NONE,
			    .user_data = ++c->ud };
	uint64_t v = 0;
	void *slot = ring_prod_slot(&c->sq);

	CHECK(slot, "SQ full");
	memcpy(slot, &s, sizeof(s));
	ring_prod_advance(&c->sq);
	ring_prod_publish(&c->sq);
	ring_notify(&c->sq);
	for (;;) {
		struct wd_cqe cqe;
		int ret = ring_wait(&c->cq, 20000, WAIT_NS);

		CHECK(ret > 0, "wait: %d", ret);
		memcpy(&cqe, ring_cons_slot(&c->cq, 0), sizeof(cqe));
		if (!(cqe.flags & WD_CQE_F_PROGRESS) && cqe.user_data == s.user_data) {
			CHECK(cqe.res > (int32_t)idx && cqe.data_len >= (idx + 1) * sizeof(v),
			      "STATS: res %d, %u bytes", cqe.res, cqe.data_len);
			memcpy(&v, (const uint8_t *)ring_cons_data(&c->cq, 0) + idx * sizeof(v),
			       sizeof(v));
			ring_cons_release(&c->cq, 1);
			return v;
		}
		ring_cons_release(&c->cq, 1);
	}
}

static void test_vram_retry(void **state)
{
	struct td_daemon d;
	struct weightd *w;
	struct weightd_device_map *m = NULL;
	struct raw c;
	struct weightd_metrics mt;
	uint64_t before, dev_errors;
	int ret;

	(void)state;
	/* The first allocation passes (large_4MiB), the next two fail as if VRAM ran out. */
	setenv("WEIGHTD_FAULT", "vram:ENOMEM:2@1", 1);
	start(&d, NULL);
	unsetenv("WEIGHTD_FAULT");
	w = attach(&d);
	raw_attach(d.socket, &c);
	CHECK(load_gpu(w, "large_4MiB") == 0, "load: %s", weightd_last_error());
	CHECK(weightd_device_map_opts(w, "large_4MiB", NULL, 0, NULL, &m) == 0, "map: %s",
	      weightd_last_error());
	before = raw_stat(&c, WD_STAT_ALLOC_RETRIES);
	CHECK(weightd_metrics(w, &mt) == 0, "metrics: %s", weightd_last_error());
	dev_errors = mt.errors[4];
	ret = load_gpu(w, "transformer_block");
	CHECK(ret == -ENOMEM, "load with the only entry mapped: %d (%s), expected -ENOMEM", ret,
	      weightd_last_error());
	CHECK(strstr(weightd_last_error(), "nothing left to evict") &&
	      strstr(weightd_last_error(), "cuda:0"), "message: %s", weightd_last_error());
	CHECK(gpu_state(w, "large_4MiB") == WEIGHTD_RESIDENT, "a mapped entry was evicted");
	CHECK(raw_stat(&c, WD_STAT_ALLOC_RETRIES) == before, "a retry counted with nothing "
	      "evicted");
	CHECK(weightd_metrics(w, &mt) == 0 && mt.errors[4] == dev_errors + 1,
	      "device error class %" PRIu64 " -> %" PRIu64 " (%s)", dev_errors, mt.errors[4],
	      weightd_error_class_name(4));
	weightd_device_unmap(w, m);
	ret = load_gpu(w, "transformer_block");
	CHECK(ret == 0, "load after one injected failure with an evictable entry: %s",
	      weightd_last_error());
	CHECK(gpu_state(w, "large_4MiB") == WEIGHTD_ABSENT, "nothing was evicted for the retry");
	CHECK(gpu_state(w, "transformer_block") == WEIGHTD_RESIDENT, "not resident");
	CHECK(raw_stat(&c, WD_STAT_ALLOC_RETRIES) == before + 1, "alloc retries %" PRIu64
	      " -> %" PRIu64, before, raw_stat(&c, WD_STAT_ALLOC_RETRIES));
	raw_close(&c);
	weightd_detach(w);
	td_daemon_teardown(&d);
	cur = NULL;
}

/*
 * --child-map SOCKET MODEL FD (test_two_maps' process A, exec'ed): attaches, maps MODEL on
 * cuda:0, writes "m" to FD, and waits to be killed. Exit 3: the map failed (message on
 * stderr); 4: the write failed.
 */
static int child_map(const char *socket, const char *model, int fd)
{
	struct weightd *wa = NULL;
	struct weightd_device_map *ma = NULL;

	if (weightd_attach(socket, NULL, &wa) ||
	    weightd_device_map_opts(wa, model, NULL, 0, NULL, &ma)) {
		fprintf(stderr, "child: map %s: %s\n", model, weightd_last_error());
		return 3;
	}
	if (write(fd, "m", 1) != 1)
		return 4;
	pause();
	return 0;
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_corpus),
		cmocka_unit_test(test_two_maps),
		cmocka_unit_test(test_too_big),
		cmocka_unit_test(test_churn),
		cmocka_unit_test(test_stream),
		cmocka_unit_test(test_concurrent),
		cmocka_unit_test(test_hostile),
		cmocka_unit_test(test_convert),
		cmocka_unit_test(test_select),
		cmocka_unit_test(test_shared),
		cmocka_unit_test(test_vram_retry),
		cmocka_unit_test(test_copy_path),
		cmocka_unit_test(test_ordinals),
		cmocka_unit_test(test_caps),
		cmocka_unit_test(test_trim),
	};
	char why[256] = "";

	if (argc == 5 && !strcmp(argv[1], "--child-map"))
		return child_map(argv[2], argv[3], atoi(argv[4]));
	if (!td_have_daemon())
		return 77;
	corpus = getenv("WD_CORPUS");
	if (!corpus || access(corpus, R_OK)) {
		printf("SKIP: no corpus ($WD_CORPUS unset or unreadable)\n");
		return 77;
	}
	if (getenv("WD_DEVCACHE_REAL")) {
		real = true;
		unsetenv("WEIGHTD_GPU_EMULATE");
		if (!gpu_ops_pick(why, sizeof(why))) {
			printf("SKIP: no GPU for the real device tier: %s\n", why);
			return 77;
		}
		printf("device tier on the real driver (%s)\n", gpu_cuda_ops.kind);
	} else {
		setenv("WEIGHTD_GPU_EMULATE", EMULATE, 1);
	}
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
