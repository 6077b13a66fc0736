/*
 * The emulated device (gpu/device.h): VRAM is a memfd, a stream is a thread.
 *
 * State that the real driver keeps per device and per process (the allocations, the bytes
 * allocated) is kept here per ordinal in a process-wide table, so that two struct gpu_dev
 * opened on the same ordinal see the same allocations, as two contexts of one process would
 * share the device's memory. Every copy is checked against the live allocations of its
 * ordinal twice: when it is queued (so that the caller gets -EFAULT with the address at once)
 * and again when the stream thread executes it, under the ordinal's read lock that
 * vram_free() takes for writing. An allocation freed while a copy into it was still queued
 * therefore fails the stream with -EFAULT instead of writing into unmapped memory, which is
 * the bug a real GPU would report as CUDA_ERROR_ILLEGAL_ADDRESS, late.
 *
 * The driver's rules that CI must catch before a real GPU does (gpu/device.h lists them) are
 * enforced here with the driver's errors: a thread-local current context, the pid that
 * initialised the emulated driver (a forked child is refused), the registered host ranges
 * (a second registration is refused), the process's visible devices, and the exclusive-
 * process compute mode (an abstract Unix socket per device, bound by the process that holds
 * its context: the kernel releases it when that process dies).
 */
#include "gpu/device.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <xxhash.h>

#include "core/format/convert.h"

#define EMU_GRANULARITY (2ull << 20)
#define EMU_DEFAULT_SIZE (4ull << 30)
#define EMU_MAGIC 0x454d5544u	/* "EMUD" */

/* One mapping of emulated VRAM in this process: an allocation or an import. */
struct emu_alloc {
	struct emu_alloc *next;
	uint64_t base;
	uint64_t size;
	bool imported;		/* imports do not count against this process's budget */
};

/* Per ordinal, process-wide: also its primary context (a thread's current context points
 * here). */
struct emu_ordinal {
	pthread_rwlock_t lock;	/* writers: alloc/import/free; readers: copies */
	struct emu_alloc *allocs;
	uint64_t allocated;	/* bytes of this process's allocations (not imports) */
	int phys;		/* the machine's device behind this ordinal */
	unsigned int retains;	/* open() minus close(), under emu_lock */
	int excl_fd;		/* EXCLUSIVE_PROCESS: the socket that holds the device; -1 */
};

static struct emu_ordinal ordinals[GPU_MAX_DEVICES];
static pthread_once_t ordinals_once = PTHREAD_ONCE_INIT;

static void ordinals_init(void)
{
	for (size_t i = 0; i < ARRAY_SIZE(ordinals); i++) {
		pthread_rwlock_init(&ordinals[i].lock, NULL);
		ordinals[i].excl_fd = -1;
	}
}

/* Page-locked host memory of the process: registered ranges and host_alloc'ed blocks. */
struct host_range {
	struct host_range *next;
	uintptr_t base;
	size_t n;
	bool alloc;		/* from host_alloc (freed with host_free, not unregistered) */
};

static pthread_mutex_t emu_lock = PTHREAD_MUTEX_INITIALIZER;	/* host ranges, retains */
static struct host_range *host_ranges;
static _Atomic pid_t emu_pid;		/* the process that initialised the driver; 0: none */
static _Thread_local struct emu_ordinal *cur_ctx;	/* the thread's current context */
static _Atomic uint64_t locked_bytes, registrations, refused;

/* A rule broken: counted, and for void operations said on stderr (nothing else can). */
static void refuse_void(const char *what, const char *why)
{
	atomic_fetch_add(&refused, 1);
	fprintf(stderr, "weightd emulated GPU: %s refused: %s\n", what, why);
}

/* CUDA state does not survive fork(): a child of the initialising process is refused. */
static bool forked(void)
{
	pid_t p = atomic_load(&emu_pid);

	return p && p != getpid();
}

static int init_check(const char *what, char *why, size_t why_size)
{
	pid_t zero = 0, me = getpid();

	if (atomic_compare_exchange_strong(&emu_pid, &zero, me) || zero == me)
		return 0;
	atomic_fetch_add(&refused, 1);
	snprintf(why, why_size, "%s: CUDA_ERROR_NOT_INITIALIZED: the emulated driver was "
		 "initialised in process %d, and this is a child forked after that (CUDA state "
		 "does not survive fork(); start helpers with fork+exec)", what, (int)zero);
	return -EIO;
}

struct gpu_dev {
	uint32_t magic;
	int ordinal;
	uint64_t budget;
	char pci_bus_id[32];
	char id[32];
	int phys;
	struct gpu_caps caps;
	struct emu_ordinal *ord;
	/* Instrumentation (gpu_emu_debug / gpu_emu_stats). */
	_Atomic unsigned int copy_delay_us;
	_Atomic bool check_src;
	_Atomic uint64_t copies, bytes, src_changed, max_queued, pageable_copies, pageable_bytes;
};

/* [ctx] operations: @dev's context must be current on this thread. */
static int need_ctx(struct gpu_dev *dev, const char *what, char *why, size_t why_size)
{
	if (forked())
		return init_check(what, why, why_size);
	if (cur_ctx == dev->ord)
		return 0;
	atomic_fetch_add(&refused, 1);
	snprintf(why, why_size, "%s on emulated cuda:%d: CUDA_ERROR_INVALID_CONTEXT: %s", what,
		 dev->ordinal, cur_ctx ? "another device's context is current on this thread" :
		 "no current context on this thread");
	return -EINVAL;
}

/* need_ctx() for an operation that cannot return an error. */
static bool void_ctx_ok(struct gpu_dev *dev, const char *what)
{
	char why[200];

	if (forked())
		return false;	/* a forked child: silently nothing, as the driver does */
	if (!need_ctx(dev, what, why, sizeof(why)))
		return true;
	atomic_fetch_sub(&refused, 1);	/* counted once, by refuse_void() */
	refuse_void(what, why);
	return false;
}

enum op_kind { OP_COPY, OP_EVENT, OP_CONVERT };

struct gpu_event {
	_Atomic int refs;	/* the caller's and, while queued, the stream's */
	_Atomic int state;	/* 0 pending, 1 done */
	int err;		/* the stream's error when it passed the event; read after state */
	char err_msg[160];	/* its message, copied so that it outlives the stream */
	struct gpu_stream *s;	/* used only while state is 0: stream_destroy completes all */
};

struct emu_op {
	struct emu_op *next;
	enum op_kind kind;
	uint64_t dst;
	const void *src;
	size_t n;		/* bytes of a copy; elements of a conversion */
	unsigned int to;	/* OP_CONVERT: the target dtype */
	uint64_t src_hash;	/* check_src: XXH3 of the source when queued */
	struct gpu_event *ev;
};

/*
 * A stream: a FIFO of ops executed by one thread. Ops are heap nodes: a queue with no fixed
 * depth is what CUDA offers (submission never blocks), and an emulator does not need to be
 * allocation-free.
 */
struct gpu_stream {
	struct gpu_dev *dev;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;	/* signalled on a new op, on stop, and when an event completes */
	struct emu_op *head, *tail;
	uint64_t queued;
	bool stop;
	int err;		/* sticky: the first failed copy */
	char err_msg[160];
};

static void event_put(struct gpu_event *ev)
{
	if (atomic_fetch_sub(&ev->refs, 1) == 1)
		free(ev);
}

/*
 * Parses $WEIGHTD_GPU_EMULATE: "N" or "N:SIZE" with 1 <= N <= GPU_MAX_DEVICES and SIZE a
 * wd_parse_bytes() size of at least one granule. Returns N or -EINVAL/-ENODEV with @why.
 */
static int parse_env(uint64_t *budget, char *why, size_t why_size)
{
	const char *env = getenv("WEIGHTD_GPU_EMULATE");
	char *end;
	long n;

	*budget = EMU_DEFAULT_SIZE;
	if (!env || !*env) {
		snprintf(why, why_size, "WEIGHTD_GPU_EMULATE is not set");
		return -ENODEV;
	}
	errno = 0;
	n = strtol(env, &end, 10);
	if (end == env || errno || n < 1 || n > GPU_MAX_DEVICES || (*end && *end != ':')) {
		snprintf(why, why_size,
			 "WEIGHTD_GPU_EMULATE=\"%s\": want a device count 1..%d, optionally "
			 "\":SIZE\" per device (\"2:8G\")", env, GPU_MAX_DEVICES);
		return -EINVAL;
	}
	if (*end == ':') {
		if (wd_parse_bytes(end + 1, budget) < 0 || *budget < EMU_GRANULARITY ||
		    *budget > (1ull << 50)) {
			snprintf(why, why_size,
				 "WEIGHTD_GPU_EMULATE=\"%s\": device size \"%s\" is not a size "
				 "between 2M and 1P (\"8G\", \"512M\")", env, end + 1);
			return -EINVAL;
		}
		*budget = (*budget + EMU_GRANULARITY - 1) & ~(EMU_GRANULARITY - 1);
	}
	return (int)n;
}

/* The @ordinal-th entry of $WEIGHTD_GPU_EMULATE_PCI ("0000:1b:00.0,0000:9a:00.0"), or "". */
static void pci_from_env(int ordinal, char *out, size_t size)
{
	const char *env = getenv("WEIGHTD_GPU_EMULATE_PCI");
	int i = 0;

	out[0] = '\0';
	while (env && *env) {
		size_t len = strcspn(env, ",");

		if (i++ == ordinal) {
			snprintf(out, size, "%.*s", (int)len, env);
			return;
		}
		env += len + (env[len] == ',');
	}
}

/*
 * The devices this process sees: map[ordinal] = machine index, from
 * $WEIGHTD_GPU_EMULATE_VISIBLE as CUDA reads CUDA_VISIBLE_DEVICES (unset: all @n in order;
 * the list ends at its first entry that is not a device index below @n, or a repeat).
 */
static int visible(int n, int *map)
{
	const char *env = getenv("WEIGHTD_GPU_EMULATE_VISIBLE");
	int k = 0;

	if (!env) {
		for (int i = 0; i < n; i++)
			map[i] = i;
		return n;
	}
	while (*env && k < n) {
		char *end;
		long v;
		bool dup = false;

		errno = 0;
		v = strtol(env, &end, 10);
		if (end == env || errno || v < 0 || v >= n || (*end && *end != ','))
			break;
		for (int i = 0; i < k; i++)
			dup |= map[i] == v;
		if (dup)
			break;
		map[k++] = (int)v;
		env = *end ? end + 1 : end;
	}
	return k;
}

/* The machine's device count and this process's view of it: the visible count or -errno. */
static int parse_visible(uint64_t *budget, int *map, char *why, size_t why_size)
{
	int n = parse_env(budget, why, why_size), k;

	if (n < 0)
		return n;
	k = visible(n, map);
	if (!k) {
		snprintf(why, why_size, "CUDA_ERROR_NO_DEVICE: WEIGHTD_GPU_EMULATE_VISIBLE=\"%s\" "
			 "shows none of the %d emulated devices", getenv("WEIGHTD_GPU_EMULATE_VISIBLE"),
			 n);
		return -ENODEV;
	}
	return k;
}

static void caps_from_env(struct gpu_caps *c)
{
	const char *env = getenv("WEIGHTD_GPU_EMULATE_CAPS");
	const char *excl = getenv("WEIGHTD_GPU_EMULATE_EXCLUSIVE");

	c->vmm = !(env && strstr(env, "novmm"));
	c->posix_fd = !(env && strstr(env, "nofd"));
	c->compute_mode = excl && *excl ? GPU_COMPUTE_EXCLUSIVE_PROCESS : GPU_COMPUTE_DEFAULT;
}

/* The identity of machine device @phys: its bus id when one is given, else "emulated-N". */
static void id_of(int phys, char *out, size_t size)
{
	pci_from_env(phys, out, size);
	if (!out[0])
		snprintf(out, size, "emulated-%d", phys);
}

static int emu_count(char *why, size_t why_size)
{
	uint64_t budget;
	int map[GPU_MAX_DEVICES];
	int rc = init_check("cuDeviceGetCount", why, why_size);

	return rc ? rc : parse_visible(&budget, map, why, why_size);
}

/*
 * EXCLUSIVE_PROCESS: the first retain in a process binds the device's abstract socket; a
 * bind that finds it taken means another process holds the device. Under emu_lock.
 */
static int take_exclusive(struct emu_ordinal *ord, int phys, int ordinal, char *why,
			  size_t why_size)
{
	const char *tok = getenv("WEIGHTD_GPU_EMULATE_EXCLUSIVE");
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	int fd, len;

	if (!tok || !*tok || ord->excl_fd >= 0)
		return 0;
	len = snprintf(a.sun_path + 1, sizeof(a.sun_path) - 1, "weightd-emu-excl/%s/%d", tok,
		       phys);
	fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(why, why_size, "emulated cuda:%d: socket: %s", ordinal, strerror(errno));
		return -errno;
	}
	if (bind(fd, (struct sockaddr *)&a, (socklen_t)(offsetof(struct sockaddr_un, sun_path) +
							1 + (size_t)len)) < 0) {
		close(fd);
		atomic_fetch_add(&refused, 1);
		snprintf(why, why_size, "cuDevicePrimaryCtxRetain on emulated cuda:%d: "
			 "CUDA_ERROR_DEVICE_UNAVAILABLE: the device is in EXCLUSIVE_PROCESS compute "
			 "mode and another process holds it", ordinal);
		return -EBUSY;
	}
	ord->excl_fd = fd;
	return 0;
}

static int emu_open(int ordinal, struct gpu_dev **out, char *why, size_t why_size)
{
	uint64_t budget;
	int map[GPU_MAX_DEVICES];
	int rc = init_check("cuDevicePrimaryCtxRetain", why, why_size);
	int n = rc ? rc : parse_visible(&budget, map, why, why_size);
	struct gpu_dev *dev;
	struct emu_ordinal *ord;

	if (n < 0)
		return n;
	if (ordinal < 0 || ordinal >= n) {
		snprintf(why, why_size, "emulated cuda:%d does not exist (CUDA_ERROR_INVALID_DEVICE: "
			 "this process sees %d device%s)", ordinal, n, n == 1 ? "" : "s");
		return -ENODEV;
	}
	pthread_once(&ordinals_once, ordinals_init);
	dev = calloc(1, sizeof(*dev));
	if (!dev) {
		snprintf(why, why_size, "emulated cuda:%d: out of memory", ordinal);
		return -ENOMEM;
	}
	ord = &ordinals[ordinal];
	pthread_mutex_lock(&emu_lock);
	rc = take_exclusive(ord, map[ordinal], ordinal, why, why_size);
	if (!rc) {
		ord->phys = map[ordinal];
		ord->retains++;
	}
	pthread_mutex_unlock(&emu_lock);
	if (rc) {
		free(dev);
		return rc;
	}
	dev->magic = EMU_MAGIC;
	dev->ordinal = ordinal;
	dev->phys = map[ordinal];
	dev->budget = budget;
	dev->ord = ord;
	caps_from_env(&dev->caps);
	pci_from_env(dev->phys, dev->pci_bus_id, sizeof(dev->pci_bus_id));
	id_of(dev->phys, dev->id, sizeof(dev->id));
	*out = dev;
	return 0;
}

static void emu_close(struct gpu_dev *dev)
{
	if (!dev)
		return;
	pthread_mutex_lock(&emu_lock);
	if (dev->ord->retains && !--dev->ord->retains && dev->ord->excl_fd >= 0) {
		close(dev->ord->excl_fd);
		dev->ord->excl_fd = -1;
	}
	pthread_mutex_unlock(&emu_lock);
	dev->magic = 0;
	free(dev);
}

static int emu_ctx_enter(struct gpu_dev *dev, void **saved, char *why, size_t why_size)
{
	int rc = forked() ? init_check("cuCtxSetCurrent", why, why_size) : 0;

	if (rc)
		return rc;
	*saved = cur_ctx;
	cur_ctx = dev->ord;
	return 0;
}

static void emu_ctx_leave(struct gpu_dev *dev, void *saved)
{
	if (!forked())
		cur_ctx = saved;
}

static int emu_find(const char *id, int *ordinal, char *why, size_t why_size)
{
	uint64_t budget;
	int map[GPU_MAX_DEVICES];
	int rc = init_check("cuDeviceGetByPCIBusId", why, why_size);
	int n = rc ? rc : parse_visible(&budget, map, why, why_size);

	if (n < 0)
		return n;
	for (int i = 0; i < n; i++) {
		char mine[32];

		id_of(map[i], mine, sizeof(mine));
		if (!strcmp(mine, id)) {
			*ordinal = i;
			return 0;
		}
	}
	snprintf(why, why_size, "cuDeviceGetByPCIBusId(\"%s\"): CUDA_ERROR_INVALID_DEVICE: this "
		 "process does not see that emulated device (WEIGHTD_GPU_EMULATE_VISIBLE=\"%s\")",
		 id, getenv("WEIGHTD_GPU_EMULATE_VISIBLE") ? getenv("WEIGHTD_GPU_EMULATE_VISIBLE") :
		 "(unset)");
	return -ENODEV;
}

static int emu_caps(struct gpu_dev *dev, struct gpu_caps *caps, char *why, size_t why_size)
{
	int rc = forked() ? init_check("cuDeviceGetAttribute", why, why_size) : 0;

	if (!rc)
		*caps = dev->caps;
	return rc;
}

static int emu_info(struct gpu_dev *dev, struct gpu_device *info, char *why, size_t why_size)
{
	memset(info, 0, sizeof(*info));
	info->ordinal = dev->ordinal;
	snprintf(info->name, sizeof(info->name), "weightd emulated GPU %d", dev->ordinal);
	snprintf(info->pci_bus_id, sizeof(info->pci_bus_id), "%s", dev->pci_bus_id);
	snprintf(info->id, sizeof(info->id), "%s", dev->id);
	info->total_bytes = dev->budget;
	return 0;
}

static int emu_mem_info(struct gpu_dev *dev, uint64_t *free_b, uint64_t *total_b, char *why,
			size_t why_size)
{
	uint64_t used;
	int rc = need_ctx(dev, "cuMemGetInfo", why, why_size);

	if (rc)
		return rc;
	pthread_rwlock_rdlock(&dev->ord->lock);
	used = dev->ord->allocated;
	pthread_rwlock_unlock(&dev->ord->lock);
	*total_b = dev->budget;
	*free_b = used < dev->budget ? dev->budget - used : 0;
	return 0;
}

static uint64_t emu_granularity(struct gpu_dev *dev)
{
	return EMU_GRANULARITY;
}

/* Records a mapping; the caller holds the write lock. */
static struct emu_alloc *track(struct emu_ordinal *ord, uint64_t base, uint64_t size,
			       bool imported)
{
	struct emu_alloc *a = calloc(1, sizeof(*a));

	if (!a)
		return NULL;
	a->base = base;
	a->size = size;
	a->imported = imported;
	a->next = ord->allocs;
	ord->allocs = a;
	if (!imported)
		ord->allocated += size;
	return a;
}

/* Whether [addr, addr + n) lies inside one live mapping; the caller holds the lock. */
static bool range_live(const struct emu_ordinal *ord, uint64_t addr, uint64_t n)
{
	for (const struct emu_alloc *a = ord->allocs; a; a = a->next)
		if (addr >= a->base && addr - a->base <= a->size && n <= a->size - (addr - a->base))
			return true;
	return false;
}

static int emu_vram_alloc(struct gpu_dev *dev, uint64_t size, struct gpu_vram *out, char *why,
			  size_t why_size)
{
	struct emu_ordinal *ord = dev->ord;
	uint64_t rounded;
	char name[32];
	void *p;
	int fd, rc;

	memset(out, 0, sizeof(*out));
	out->fd = -1;
	rc = need_ctx(dev, "cuMemCreate", why, why_size);
	if (rc)
		return rc;
	if (!dev->caps.vmm || !dev->caps.posix_fd) {
		snprintf(why, why_size, "%s on emulated cuda:%d: CUDA_ERROR_NOT_SUPPORTED: the device "
			 "has no %s", dev->caps.vmm ? "cuMemExportToShareableHandle" : "cuMemCreate",
			 dev->ordinal, dev->caps.vmm ? "POSIX fd handles" : "virtual memory management");
		return -EOPNOTSUPP;
	}
	if (size == 0 || size > (1ull << 50)) {
		snprintf(why, why_size, "vram_alloc on emulated cuda:%d: bad size %" PRIu64,
			 dev->ordinal, size);
		return -EINVAL;
	}
	rounded = (size + EMU_GRANULARITY - 1) & ~(EMU_GRANULARITY - 1);
	pthread_rwlock_wrlock(&ord->lock);
	if (ord->allocated + rounded > dev->budget) {
		snprintf(why, why_size, "vram_alloc of %" PRIu64 " bytes on emulated cuda:%d: out "
			 "of memory (%" PRIu64 " of %" PRIu64 " bytes free)", rounded, dev->ordinal,
			 dev->budget - ord->allocated, dev->budget);
		pthread_rwlock_unlock(&ord->lock);
		return -ENOMEM;
	}
	/* Reserve the bytes before the syscalls, so that a concurrent alloc sees them. */
	ord->allocated += rounded;
	pthread_rwlock_unlock(&ord->lock);

	snprintf(name, sizeof(name), "weightd-emu-vram%d", dev->phys);
	fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
	if (fd < 0) {
		rc = -errno;
		snprintf(why, why_size, "vram_alloc: memfd_create: %s", strerror(-rc));
		goto unreserve;
	}
	/* Sealed like the host arena: an importer's mapping can never fault with SIGBUS. */
	if (ftruncate(fd, (off_t)rounded) < 0 ||
	    fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0) {
		rc = -errno;
		snprintf(why, why_size, "vram_alloc: sizing the memfd to %" PRIu64 " bytes: %s",
			 rounded, strerror(-rc));
		close(fd);
		goto unreserve;
	}
	p = mmap(NULL, rounded, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		rc = -errno;
		snprintf(why, why_size, "vram_alloc: mmap of %" PRIu64 " bytes: %s", rounded,
			 strerror(-rc));
		close(fd);
		goto unreserve;
	}
	pthread_rwlock_wrlock(&ord->lock);
	ord->allocated -= rounded;	/* track() counts it again */
	out->priv = track(ord, (uint64_t)(uintptr_t)p, rounded, false);
	pthread_rwlock_unlock(&ord->lock);
	if (!out->priv) {
		munmap(p, rounded);
		close(fd);
		snprintf(why, why_size, "vram_alloc: out of memory");
		return -ENOMEM;
	}
	out->size = rounded;
	out->dptr = (uint64_t)(uintptr_t)p;
	out->fd = fd;
	return 0;

unreserve:
	pthread_rwlock_wrlock(&ord->lock);
	ord->allocated -= rounded;
	pthread_rwlock_unlock(&ord->lock);
	return rc;
}

static int emu_vram_import(struct gpu_dev *dev, int fd, uint64_t size, struct gpu_vram *out,
			   char *why, size_t why_size)
{
	struct stat st;
	char link[64], target[128];
	ssize_t len;
	void *p;
	int rc, phys;

	memset(out, 0, sizeof(*out));
	out->fd = -1;
	rc = need_ctx(dev, "cuMemImportFromShareableHandle", why, why_size);
	if (rc)
		return rc;
	if (fstat(fd, &st) < 0) {
		rc = -errno;
		snprintf(why, why_size, "vram_import of fd %d: %s", fd, strerror(-rc));
		return rc;
	}
	if (size == 0 || size % EMU_GRANULARITY || (uint64_t)st.st_size < size) {
		snprintf(why, why_size, "vram_import of fd %d on emulated cuda:%d: size %" PRIu64
			 " is not a granule multiple within the allocation's %" PRIu64 " bytes", fd,
			 dev->ordinal, size, (uint64_t)st.st_size);
		return -EINVAL;
	}
	/* Another device's allocation would be reached through peer access: refused. */
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	len = readlink(link, target, sizeof(target) - 1);
	target[len > 0 ? len : 0] = '\0';
	if (sscanf(target, "/memfd:weightd-emu-vram%d", &phys) == 1 && phys != dev->phys) {
		atomic_fetch_add(&refused, 1);
		snprintf(why, why_size, "vram_import of fd %d on emulated cuda:%d (device %s): the "
			 "allocation belongs to device emulated-%d (peer access is not emulated)", fd,
			 dev->ordinal, dev->id, phys);
		return -EXDEV;
	}
	p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		rc = -errno;
		snprintf(why, why_size, "vram_import of fd %d: mmap: %s", fd, strerror(-rc));
		return rc;
	}
	pthread_rwlock_wrlock(&dev->ord->lock);
	out->priv = track(dev->ord, (uint64_t)(uintptr_t)p, size, true);
	pthread_rwlock_unlock(&dev->ord->lock);
	if (!out->priv) {
		munmap(p, size);
		snprintf(why, why_size, "vram_import: out of memory");
		return -ENOMEM;
	}
	out->size = size;
	out->dptr = (uint64_t)(uintptr_t)p;
	return 0;
}

static void emu_vram_free(struct gpu_dev *dev, struct gpu_vram *v)
{
	struct emu_ordinal *ord = dev->ord;
	struct emu_alloc **pp;

	if (!v->priv) {
		if (v->fd >= 0)
			close(v->fd);
		v->fd = -1;
		return;
	}
	if (!void_ctx_ok(dev, "cuMemUnmap/cuMemRelease"))
		return;
	/* The write lock waits for a copy that is executing into this allocation. */
	pthread_rwlock_wrlock(&ord->lock);
	for (pp = &ord->allocs; *pp; pp = &(*pp)->next) {
		if (*pp == v->priv) {
			struct emu_alloc *a = *pp;

			*pp = a->next;
			if (!a->imported)
				ord->allocated -= a->size;
			free(a);
			break;
		}
	}
	munmap((void *)(uintptr_t)v->dptr, v->size);
	pthread_rwlock_unlock(&ord->lock);
	if (v->fd >= 0)
		close(v->fd);
	memset(v, 0, sizeof(*v));
	v->fd = -1;
}

/* Whether [p, p + n) lies inside one page-locked range. Under emu_lock. */
static struct host_range *locked_range(uintptr_t p, size_t n)
{
	for (struct host_range *r = host_ranges; r; r = r->next)
		if (p >= r->base && p - r->base <= r->n && n <= r->n - (p - r->base))
			return r;
	return NULL;
}

static int add_range(uintptr_t p, size_t n, bool alloc)
{
	struct host_range *r = calloc(1, sizeof(*r));

	if (!r)
		return -ENOMEM;
	r->base = p;
	r->n = n;
	r->alloc = alloc;
	r->next = host_ranges;
	host_ranges = r;
	atomic_fetch_add(&locked_bytes, n);
	return 0;
}

/* Unlinks the range starting at @p of the given kind; NULL when there is none. */
static struct host_range *take_range(uintptr_t p, bool alloc)
{
	for (struct host_range **pp = &host_ranges; *pp; pp = &(*pp)->next) {
		struct host_range *r = *pp;

		if (r->base == p && r->alloc == alloc) {
			*pp = r->next;
			atomic_fetch_sub(&locked_bytes, r->n);
			return r;
		}
	}
	return NULL;
}

static int emu_host_register(struct gpu_dev *dev, void *p, size_t n, char *why,
			     size_t why_size)
{
	uintptr_t a = (uintptr_t)p;
	int rc = need_ctx(dev, "cuMemHostRegister", why, why_size);

	if (rc)
		return rc;
	if (!p || !n) {
		snprintf(why, why_size, "host_register: empty range");
		return -EINVAL;
	}
	pthread_mutex_lock(&emu_lock);
	for (struct host_range *r = host_ranges; r; r = r->next) {
		if (a < r->base + r->n && r->base < a + n) {
			pthread_mutex_unlock(&emu_lock);
			atomic_fetch_add(&refused, 1);
			snprintf(why, why_size, "cuMemHostRegister of %zu bytes at %p on emulated "
				 "cuda:%d: CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED: it overlaps %zu "
				 "bytes at 0x%" PRIxPTR " page-locked already", n, p, dev->ordinal,
				 r->n, r->base);
			return -EEXIST;
		}
	}
	/* What registration costs on a GPU: every page faulted in and locked, now. */
	if (mlock(p, n) < 0) {
		rc = -errno;
		pthread_mutex_unlock(&emu_lock);
		snprintf(why, why_size, "cuMemHostRegister of %zu bytes on emulated cuda:%d: "
			 "CUDA_ERROR_OUT_OF_MEMORY: mlock: %s", n, dev->ordinal, strerror(-rc));
		return -ENOMEM;
	}
	rc = add_range(a, n, false);
	if (rc)
		munlock(p, n);
	pthread_mutex_unlock(&emu_lock);
	if (rc) {
		snprintf(why, why_size, "host_register: out of memory");
		return rc;
	}
	atomic_fetch_add(&registrations, 1);
	return 0;
}

static void emu_host_unregister(struct gpu_dev *dev, void *p)
{
	struct host_range *r;

	if (!void_ctx_ok(dev, "cuMemHostUnregister"))
		return;
	pthread_mutex_lock(&emu_lock);
	r = take_range((uintptr_t)p, false);
	if (r)
		munlock(p, r->n);
	pthread_mutex_unlock(&emu_lock);
	if (!r)
		refuse_void("cuMemHostUnregister", "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED");
	free(r);
}

static int emu_host_alloc(struct gpu_dev *dev, size_t n, void **p, char *why, size_t why_size)
{
	void *mem;
	int rc = need_ctx(dev, "cuMemHostAlloc", why, why_size);

	if (rc)
		return rc;
	/* Page-aligned like cuMemHostAlloc, so that O_DIRECT reads can target it. */
	if (!n || posix_memalign(&mem, 4096, n)) {
		snprintf(why, why_size, "host_alloc of %zu bytes: out of memory", n);
		return n ? -ENOMEM : -EINVAL;
	}
	pthread_mutex_lock(&emu_lock);
	rc = add_range((uintptr_t)mem, n, true);
	pthread_mutex_unlock(&emu_lock);
	if (rc) {
		free(mem);
		snprintf(why, why_size, "host_alloc: out of memory");
		return rc;
	}
	*p = mem;
	return 0;
}

static void emu_host_free(struct gpu_dev *dev, void *p)
{
	struct host_range *r;

	if (!void_ctx_ok(dev, "cuMemFreeHost"))
		return;
	pthread_mutex_lock(&emu_lock);
	r = take_range((uintptr_t)p, true);
	pthread_mutex_unlock(&emu_lock);
	if (!r) {
		refuse_void("cuMemFreeHost", "CUDA_ERROR_INVALID_VALUE: not from cuMemHostAlloc");
		return;
	}
	free(r);
	free(p);
}

/* Executes one copy on the stream thread; returns 0 or -EFAULT with s->err_msg. */
static int run_copy(struct gpu_stream *s, const struct emu_op *op)
{
	struct gpu_dev *dev = s->dev;
	unsigned int delay = atomic_load_explicit(&dev->copy_delay_us, memory_order_relaxed);
	int rc = 0;

	if (delay)
		usleep(delay);
	if (atomic_load_explicit(&dev->check_src, memory_order_relaxed) &&
	    XXH3_64bits(op->src, op->n) != op->src_hash)
		atomic_fetch_add(&dev->src_changed, 1);
	pthread_rwlock_rdlock(&dev->ord->lock);
	if (range_live(dev->ord, op->dst, op->n))
		memcpy((void *)(uintptr_t)op->dst, op->src, op->n);
	else
		rc = -EFAULT;
	pthread_rwlock_unlock(&dev->ord->lock);
	if (rc) {
		snprintf(s->err_msg, sizeof(s->err_msg), "emulated cuda:%d stream: copy of %zu "
			 "bytes to 0x%" PRIx64 " hit memory freed after the copy was queued",
			 dev->ordinal, op->n, op->dst);
		return rc;
	}
	atomic_fetch_add_explicit(&dev->copies, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&dev->bytes, op->n, memory_order_relaxed);
	return 0;
}

/* Executes one conversion on the stream thread; returns 0 or -EFAULT with s->err_msg. */
static int run_convert(struct gpu_stream *s, const struct emu_op *op)
{
	struct gpu_dev *dev = s->dev;
	int rc = 0;

	pthread_rwlock_rdlock(&dev->ord->lock);
	if (range_live(dev->ord, (uint64_t)(uintptr_t)op->src, 4 * (uint64_t)op->n) &&
	    range_live(dev->ord, op->dst, 2 * (uint64_t)op->n))
		rc = convert_run(ST_F32, (enum st_dtype)op->to, (void *)(uintptr_t)op->dst,
				 op->src, op->n);
	else
		rc = -EFAULT;
	pthread_rwlock_unlock(&dev->ord->lock);
	if (rc)
		snprintf(s->err_msg, sizeof(s->err_msg), "emulated cuda:%d stream: conversion of "
			 "%zu elements to 0x%" PRIx64 " hit memory freed after it was queued",
			 dev->ordinal, op->n, op->dst);
	return rc;
}

static void *stream_main(void *arg)
{
	struct gpu_stream *s = arg;

	pthread_mutex_lock(&s->lock);
	for (;;) {
		struct emu_op *op;

		while (!s->head && !s->stop)
			pthread_cond_wait(&s->cond, &s->lock);
		if (!s->head)
			break;	/* stopping and drained */
		op = s->head;
		pthread_mutex_unlock(&s->lock);

		if (op->kind != OP_EVENT) {
			/* After a failure nothing more runs, as on a faulted CUDA stream. */
			int rc = s->err ? 0 : op->kind == OP_COPY ? run_copy(s, op) :
				 run_convert(s, op);

			pthread_mutex_lock(&s->lock);
			if (rc && !s->err)
				s->err = rc;
		} else {
			pthread_mutex_lock(&s->lock);
			op->ev->err = s->err;
			if (s->err)
				memcpy(op->ev->err_msg, s->err_msg, sizeof(op->ev->err_msg));
			/* Pairs with the acquire load in event_query/event_wait. */
			atomic_store_explicit(&op->ev->state, 1, memory_order_release);
			event_put(op->ev);
			pthread_cond_broadcast(&s->cond);
		}
		s->head = op->next;
		if (!s->head)
			s->tail = NULL;
		s->queued--;
		free(op);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

static int emu_stream_create(struct gpu_dev *dev, struct gpu_stream **out, char *why,
			     size_t why_size)
{
	struct gpu_stream *s;
	int rc = need_ctx(dev, "cuStreamCreate", why, why_size);

	if (rc)
		return rc;
	s = calloc(1, sizeof(*s));
	if (!s) {
		snprintf(why, why_size, "stream_create: out of memory");
		return -ENOMEM;
	}
	s->dev = dev;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	rc = pthread_create(&s->thread, NULL, stream_main, s);
	if (rc) {
		snprintf(why, why_size, "stream_create: pthread_create: %s", strerror(rc));
		pthread_cond_destroy(&s->cond);
		pthread_mutex_destroy(&s->lock);
		free(s);
		return -rc;
	}
	*out = s;
	return 0;
}

/* Like cuStreamDestroy: work already queued still runs; then the thread ends. */
static void emu_stream_destroy(struct gpu_dev *dev, struct gpu_stream *s)
{
	if (!s || !void_ctx_ok(dev, "cuStreamDestroy"))
		return;
	pthread_mutex_lock(&s->lock);
	s->stop = true;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	pthread_join(s->thread, NULL);
	pthread_cond_destroy(&s->cond);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

static void enqueue(struct gpu_stream *s, struct emu_op *op)
{
	uint64_t q, max;

	pthread_mutex_lock(&s->lock);
	if (s->tail)
		s->tail->next = op;
	else
		s->head = op;
	s->tail = op;
	q = ++s->queued;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	max = atomic_load_explicit(&s->dev->max_queued, memory_order_relaxed);
	while (q > max && !atomic_compare_exchange_weak(&s->dev->max_queued, &max, q))
		;
}

static int emu_copy_h2d(struct gpu_dev *dev, struct gpu_stream *s, uint64_t dst,
			const void *src, size_t n, char *why, size_t why_size)
{
	struct emu_op *op;
	bool live, locked;
	int rc = need_ctx(dev, "cuMemcpyHtoDAsync", why, why_size);

	if (rc)
		return rc;
	if (s->dev->ord != dev->ord) {
		atomic_fetch_add(&refused, 1);
		snprintf(why, why_size, "cuMemcpyHtoDAsync on emulated cuda:%d: "
			 "CUDA_ERROR_INVALID_HANDLE: the stream belongs to cuda:%d", dev->ordinal,
			 s->dev->ordinal);
		return -EINVAL;
	}
	if (n == 0)
		return 0;
	if (!src) {
		snprintf(why, why_size, "copy_h2d: NULL source");
		return -EINVAL;
	}
	pthread_mutex_lock(&emu_lock);
	locked = locked_range((uintptr_t)src, n) != NULL;
	pthread_mutex_unlock(&emu_lock);
	if (!locked) {
		/* The driver stages such a copy through its own pinned buffer, synchronously. */
		atomic_fetch_add_explicit(&dev->pageable_copies, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&dev->pageable_bytes, n, memory_order_relaxed);
	}
	pthread_rwlock_rdlock(&dev->ord->lock);
	live = range_live(dev->ord, dst, n);
	pthread_rwlock_unlock(&dev->ord->lock);
	if (!live) {
		snprintf(why, why_size, "copy_h2d of %zu bytes to 0x%" PRIx64 " on emulated "
			 "cuda:%d: not inside one live allocation", n, dst, dev->ordinal);
		return -EFAULT;
	}
	op = calloc(1, sizeof(*op));
	if (!op) {
		snprintf(why, why_size, "copy_h2d: out of memory");
		return -ENOMEM;
	}
	op->kind = OP_COPY;
	op->dst = dst;
	op->src = src;
	op->n = n;
	if (atomic_load_explicit(&dev->check_src, memory_order_relaxed))
		op->src_hash = XXH3_64bits(src, n);
	enqueue(s, op);
	return 0;
}

static int emu_convert_f32(struct gpu_dev *dev, struct gpu_stream *s, uint64_t dst,
			   uint64_t src, uint64_t n, unsigned int to, char *why, size_t why_size)
{
	struct emu_op *op;
	bool live;
	int rc = need_ctx(dev, "cuLaunchKernel", why, why_size);

	if (rc)
		return rc;
	if (to != GPU_DTYPE_F16 && to != GPU_DTYPE_BF16) {
		snprintf(why, why_size, "convert_f32: unsupported target dtype %u", to);
		return -EINVAL;
	}
	if (src % 4 || dst % 2 || n > (SIZE_MAX >> 2) || (dst < src + 4 * n && src < dst + 2 * n)) {
		snprintf(why, why_size, "convert_f32 of %" PRIu64 " elements from 0x%" PRIx64
			 " to 0x%" PRIx64 ": misaligned or overlapping", n, src, dst);
		return -EINVAL;
	}
	if (!n)
		return 0;
	pthread_rwlock_rdlock(&dev->ord->lock);
	live = range_live(dev->ord, src, 4 * n) && range_live(dev->ord, dst, 2 * n);
	pthread_rwlock_unlock(&dev->ord->lock);
	if (!live) {
		snprintf(why, why_size, "convert_f32 of %" PRIu64 " elements from 0x%" PRIx64
			 " to 0x%" PRIx64 " on emulated cuda:%d: not inside live allocations", n,
			 src, dst, dev->ordinal);
		return -EFAULT;
	}
	op = calloc(1, sizeof(*op));
	if (!op) {
		snprintf(why, why_size, "convert_f32: out of memory");
		return -ENOMEM;
	}
	op->kind = OP_CONVERT;
	op->dst = dst;
	op->src = (const void *)(uintptr_t)src;
	op->n = (size_t)n;
	op->to = to;
	enqueue(s, op);
	return 0;
}

static int emu_copy_d2h(struct gpu_dev *dev, void *dst, uint64_t src, size_t n, char *why,
			size_t why_size)
{
	int rc = need_ctx(dev, "cuMemcpyDtoH", why, why_size);

	if (rc || n == 0)
		return rc;
	pthread_rwlock_rdlock(&dev->ord->lock);
	if (range_live(dev->ord, src, n))
		memcpy(dst, (const void *)(uintptr_t)src, n);
	else
		rc = -EFAULT;
	pthread_rwlock_unlock(&dev->ord->lock);
	if (rc)
		snprintf(why, why_size, "copy_d2h of %zu bytes from 0x%" PRIx64 " on emulated "
			 "cuda:%d: not inside one live allocation", n, src, dev->ordinal);
	return rc;
}

static int emu_event_record(struct gpu_dev *dev, struct gpu_stream *s, struct gpu_event **out,
			    char *why, size_t why_size)
{
	struct gpu_event *ev;
	struct emu_op *op;
	int rc = need_ctx(dev, "cuEventRecord", why, why_size);

	if (rc)
		return rc;
	ev = calloc(1, sizeof(*ev));
	op = calloc(1, sizeof(*op));
	if (!ev || !op) {
		free(ev);
		free(op);
		snprintf(why, why_size, "event_record: out of memory");
		return -ENOMEM;
	}
	atomic_init(&ev->refs, 2);
	atomic_init(&ev->state, 0);
	ev->s = s;
	op->kind = OP_EVENT;
	op->ev = ev;
	enqueue(s, op);
	*out = ev;
	return 0;
}

static int event_result(struct gpu_event *ev, char *why, size_t why_size)
{
	if (ev->err)
		snprintf(why, why_size, "%s", ev->err_msg);
	return ev->err;
}

static int emu_event_query(struct gpu_dev *dev, struct gpu_event *ev, char *why,
			   size_t why_size)
{
	if (forked())
		return init_check("cuEventQuery", why, why_size);
	/* Pairs with the release store on the stream thread: ev->err is visible after it. */
	if (!atomic_load_explicit(&ev->state, memory_order_acquire))
		return -EAGAIN;
	return event_result(ev, why, why_size);
}

static int emu_event_wait(struct gpu_dev *dev, struct gpu_event *ev, char *why,
			  size_t why_size)
{
	struct gpu_stream *s = ev->s;

	if (forked())
		return init_check("cuEventSynchronize", why, why_size);
	if (!atomic_load_explicit(&ev->state, memory_order_acquire)) {
		pthread_mutex_lock(&s->lock);
		while (!atomic_load_explicit(&ev->state, memory_order_acquire))
			pthread_cond_wait(&s->cond, &s->lock);
		pthread_mutex_unlock(&s->lock);
	}
	return event_result(ev, why, why_size);
}

static void emu_event_destroy(struct gpu_dev *dev, struct gpu_event *ev)
{
	if (ev)
		event_put(ev);
}

const struct gpu_ops gpu_emu_ops = {
	.kind = "emulated",
	.count = emu_count,
	.open = emu_open,
	.close = emu_close,
	.ctx_enter = emu_ctx_enter,
	.ctx_leave = emu_ctx_leave,
	.find = emu_find,
	.caps = emu_caps,
	.info = emu_info,
	.mem_info = emu_mem_info,
	.granularity = emu_granularity,
	.vram_alloc = emu_vram_alloc,
	.vram_import = emu_vram_import,
	.vram_free = emu_vram_free,
	.host_register = emu_host_register,
	.host_unregister = emu_host_unregister,
	.host_alloc = emu_host_alloc,
	.host_free = emu_host_free,
	.stream_create = emu_stream_create,
	.stream_destroy = emu_stream_destroy,
	.copy_h2d = emu_copy_h2d,
	.copy_d2h = emu_copy_d2h,
	.event_record = emu_event_record,
	.event_query = emu_event_query,
	.event_wait = emu_event_wait,
	.event_destroy = emu_event_destroy,
	.convert_f32 = emu_convert_f32,
};

int gpu_emu_debug(struct gpu_dev *dev, unsigned int copy_delay_us, bool check_src)
{
	if (!dev || dev->magic != EMU_MAGIC)
		return -EINVAL;
	atomic_store(&dev->copy_delay_us, copy_delay_us);
	atomic_store(&dev->check_src, check_src);
	return 0;
}

int gpu_emu_stats(struct gpu_dev *dev, struct gpu_emu_stats *st)
{
	if (!dev || dev->magic != EMU_MAGIC)
		return -EINVAL;
	st->copies = atomic_load(&dev->copies);
	st->bytes = atomic_load(&dev->bytes);
	st->src_changed = atomic_load(&dev->src_changed);
	st->max_queued = atomic_load(&dev->max_queued);
	st->pageable_copies = atomic_load(&dev->pageable_copies);
	st->pageable_bytes = atomic_load(&dev->pageable_bytes);
	return 0;
}

void gpu_emu_process_stats(struct gpu_emu_process_stats *st)
{
	st->locked_bytes = atomic_load(&locked_bytes);
	st->registrations = atomic_load(&registrations);
	st->refused = atomic_load(&refused);
}

int gpu_emu_current(void)
{
	return cur_ctx ? (int)(cur_ctx - ordinals) : -1;
}
