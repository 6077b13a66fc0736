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
#include <sys/stat.h>
#include <unistd.h>

#include <xxhash.h>

#include "core/convert.h"

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

/* Per ordinal, process-wide. */
struct emu_ordinal {
	pthread_rwlock_t lock;	/* writers: alloc/import/free; readers: copies */
	struct emu_alloc *allocs;
	uint64_t allocated;	/* bytes of this process's allocations (not imports) */
};

static struct emu_ordinal ordinals[GPU_MAX_DEVICES];
static pthread_once_t ordinals_once = PTHREAD_ONCE_INIT;

static void ordinals_init(void)
{
	for (size_t i = 0; i < ARRAY_SIZE(ordinals); i++)
		pthread_rwlock_init(&ordinals[i].lock, NULL);
}

struct gpu_dev {
	uint32_t magic;
	int ordinal;
	uint64_t budget;
	char pci_bus_id[32];
	struct emu_ordinal *ord;
	/* Instrumentation (gpu_emu_debug / gpu_emu_stats). */
	_Atomic unsigned int copy_delay_us;
	_Atomic bool check_src;
	_Atomic uint64_t copies, bytes, src_changed, max_queued;
};

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

static int emu_count(char *why, size_t why_size)
{
	uint64_t budget;

	return parse_env(&budget, why, why_size);
}

static int emu_open(int ordinal, struct gpu_dev **out, char *why, size_t why_size)
{
	uint64_t budget;
	int n = parse_env(&budget, why, why_size);
	struct gpu_dev *dev;

	if (n < 0)
		return n;
	if (ordinal < 0 || ordinal >= n) {
		snprintf(why, why_size, "emulated cuda:%d does not exist (WEIGHTD_GPU_EMULATE "
			 "has %d device%s)", ordinal, n, n == 1 ? "" : "s");
		return -ENODEV;
	}
	pthread_once(&ordinals_once, ordinals_init);
	dev = calloc(1, sizeof(*dev));
	if (!dev) {
		snprintf(why, why_size, "emulated cuda:%d: out of memory", ordinal);
		return -ENOMEM;
	}
	dev->magic = EMU_MAGIC;
	dev->ordinal = ordinal;
	dev->budget = budget;
	dev->ord = &ordinals[ordinal];
	pci_from_env(ordinal, dev->pci_bus_id, sizeof(dev->pci_bus_id));
	*out = dev;
	return 0;
}

static void emu_close(struct gpu_dev *dev)
{
	if (!dev)
		return;
	dev->magic = 0;
	free(dev);
}

static int emu_info(struct gpu_dev *dev, struct gpu_device *info, char *why, size_t why_size)
{
	memset(info, 0, sizeof(*info));
	info->ordinal = dev->ordinal;
	snprintf(info->name, sizeof(info->name), "weightd emulated GPU %d", dev->ordinal);
	snprintf(info->pci_bus_id, sizeof(info->pci_bus_id), "%s", dev->pci_bus_id);
	info->total_bytes = dev->budget;
	return 0;
}

static int emu_mem_info(struct gpu_dev *dev, uint64_t *free_b, uint64_t *total_b, char *why,
			size_t why_size)
{
	uint64_t used;

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

	snprintf(name, sizeof(name), "weightd-emu-vram%d", dev->ordinal);
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
	void *p;
	int rc;

	memset(out, 0, sizeof(*out));
	out->fd = -1;
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

static int emu_host_register(struct gpu_dev *dev, void *p, size_t n, char *why,
			     size_t why_size)
{
	/* Nothing to pin: the emulated device copies with memcpy from any host memory. */
	if (!p || !n) {
		snprintf(why, why_size, "host_register: empty range");
		return -EINVAL;
	}
	return 0;
}

static void emu_host_unregister(struct gpu_dev *dev, void *p)
{
}

static int emu_host_alloc(struct gpu_dev *dev, size_t n, void **p, char *why, size_t why_size)
{
	void *mem;

	/* Page-aligned like cuMemHostAlloc, so that O_DIRECT reads can target it. */
	if (!n || posix_memalign(&mem, 4096, n)) {
		snprintf(why, why_size, "host_alloc of %zu bytes: out of memory", n);
		return n ? -ENOMEM : -EINVAL;
	}
	*p = mem;
	return 0;
}

static void emu_host_free(struct gpu_dev *dev, void *p)
{
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
	struct gpu_stream *s = calloc(1, sizeof(*s));
	int rc;

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
	if (!s)
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
	bool live;

	if (n == 0)
		return 0;
	if (!src) {
		snprintf(why, why_size, "copy_h2d: NULL source");
		return -EINVAL;
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
	int rc = 0;

	if (n == 0)
		return 0;
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
	struct gpu_event *ev = calloc(1, sizeof(*ev));
	struct emu_op *op = calloc(1, sizeof(*op));

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
	/* Pairs with the release store on the stream thread: ev->err is visible after it. */
	if (!atomic_load_explicit(&ev->state, memory_order_acquire))
		return -EAGAIN;
	return event_result(ev, why, why_size);
}

static int emu_event_wait(struct gpu_dev *dev, struct gpu_event *ev, char *why,
			  size_t why_size)
{
	struct gpu_stream *s = ev->s;

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
	return 0;
}
