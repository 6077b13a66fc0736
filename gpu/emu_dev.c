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
 *
 * This file: the emulated driver, devices ($WEIGHTD_GPU_EMULATE, visible devices,
 * capabilities), contexts and the ops table. The process-wide state and the rules every part
 * checks are gpu/emu_rules.c, memory gpu/emu_mem.c, streams and events gpu/emu_stream.c;
 * what they share is gpu/emu_int.h.
 */
#include "gpu/device.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "gpu/emu_int.h"

static struct emu_ordinal ordinals[GPU_MAX_DEVICES];
static pthread_once_t ordinals_once = PTHREAD_ONCE_INIT;

static void ordinals_init(void)
{
	for (size_t i = 0; i < ARRAY_SIZE(ordinals); i++) {
		pthread_rwlock_init(&ordinals[i].lock, NULL);
		ordinals[i].excl_fd = -1;
	}
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
	int rc = emu_init_check("cuDeviceGetCount", why, why_size);

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
		atomic_fetch_add(&emu_refused, 1);
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
	int rc = emu_init_check("cuDevicePrimaryCtxRetain", why, why_size);
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
	int rc = emu_forked() ? emu_init_check("cuCtxSetCurrent", why, why_size) : 0;

	if (rc)
		return rc;
	*saved = emu_cur_ctx;
	emu_cur_ctx = dev->ord;
	return 0;
}

static void emu_ctx_leave(struct gpu_dev *dev, void *saved)
{
	if (!emu_forked())
		emu_cur_ctx = saved;
}

static int emu_find(const char *id, int *ordinal, char *why, size_t why_size)
{
	uint64_t budget;
	int map[GPU_MAX_DEVICES];
	int rc = emu_init_check("cuDeviceGetByPCIBusId", why, why_size);
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
	int rc = emu_forked() ? emu_init_check("cuDeviceGetAttribute", why, why_size) : 0;

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
	int rc = emu_need_ctx(dev, "cuMemGetInfo", why, why_size);

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
	st->locked_bytes = atomic_load(&emu_locked_bytes);
	st->registrations = atomic_load(&emu_registrations);
	st->refused = atomic_load(&emu_refused);
}

int gpu_emu_current(void)
{
	return emu_cur_ctx ? (int)(emu_cur_ctx - ordinals) : -1;
}
