/*
 * The emulated device's memory (gpu/emu_int.h): VRAM allocations and imports (memfds mapped
 * at their device address, tracked per ordinal so that every copy can be checked against the
 * live mappings), and the process's page-locked host memory (registered ranges and
 * host_alloc'ed blocks, a second registration refused as the driver does).
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

#include "gpu/emu_int.h"

/* Page-locked host memory of the process: registered ranges and host_alloc'ed blocks. */
struct host_range {
	struct host_range *next;
	uintptr_t base;
	size_t n;
	bool alloc;		/* from host_alloc (freed with host_free, not unregistered) */
};

static struct host_range *host_ranges;	/* under emu_lock */

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
bool emu_range_live(const struct emu_ordinal *ord, uint64_t addr, uint64_t n)
{
	for (const struct emu_alloc *a = ord->allocs; a; a = a->next)
		if (addr >= a->base && addr - a->base <= a->size && n <= a->size - (addr - a->base))
			return true;
	return false;
}

int emu_vram_alloc(struct gpu_dev *dev, uint64_t size, struct gpu_vram *out, char *why,
			  size_t why_size)
{
	struct emu_ordinal *ord = dev->ord;
	uint64_t rounded;
	char name[32];
	void *p;
	int fd, rc;

	memset(out, 0, sizeof(*out));
	out->fd = -1;
	rc = emu_need_ctx(dev, "cuMemCreate", why, why_size);
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

int emu_vram_import(struct gpu_dev *dev, int fd, uint64_t size, struct gpu_vram *out,
			   char *why, size_t why_size)
{
	struct stat st;
	char link[64], target[128];
	ssize_t len;
	void *p;
	int rc, phys;

	memset(out, 0, sizeof(*out));
	out->fd = -1;
	rc = emu_need_ctx(dev, "cuMemImportFromShareableHandle", why, why_size);
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
		atomic_fetch_add(&emu_refused, 1);
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

void emu_vram_free(struct gpu_dev *dev, struct gpu_vram *v)
{
	struct emu_ordinal *ord = dev->ord;
	struct emu_alloc **pp;

	if (!v->priv) {
		if (v->fd >= 0)
			close(v->fd);
		v->fd = -1;
		return;
	}
	if (!emu_void_ctx_ok(dev, "cuMemUnmap/cuMemRelease"))
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
struct host_range *emu_locked_range(uintptr_t p, size_t n)
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
	atomic_fetch_add(&emu_locked_bytes, n);
	return 0;
}

/* Unlinks the range starting at @p of the given kind; NULL when there is none. */
static struct host_range *take_range(uintptr_t p, bool alloc)
{
	for (struct host_range **pp = &host_ranges; *pp; pp = &(*pp)->next) {
		struct host_range *r = *pp;

		if (r->base == p && r->alloc == alloc) {
			*pp = r->next;
			atomic_fetch_sub(&emu_locked_bytes, r->n);
			return r;
		}
	}
	return NULL;
}

int emu_host_register(struct gpu_dev *dev, void *p, size_t n, char *why,
			     size_t why_size)
{
	uintptr_t a = (uintptr_t)p;
	int rc = emu_need_ctx(dev, "cuMemHostRegister", why, why_size);

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
			atomic_fetch_add(&emu_refused, 1);
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
	atomic_fetch_add(&emu_registrations, 1);
	return 0;
}

void emu_host_unregister(struct gpu_dev *dev, void *p)
{
	struct host_range *r;

	if (!emu_void_ctx_ok(dev, "cuMemHostUnregister"))
		return;
	pthread_mutex_lock(&emu_lock);
	r = take_range((uintptr_t)p, false);
	if (r)
		munlock(p, r->n);
	pthread_mutex_unlock(&emu_lock);
	if (!r)
		emu_refuse_void("cuMemHostUnregister", "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED");
	free(r);
}

int emu_host_alloc(struct gpu_dev *dev, size_t n, void **p, char *why, size_t why_size)
{
	void *mem;
	int rc = emu_need_ctx(dev, "cuMemHostAlloc", why, why_size);

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

void emu_host_free(struct gpu_dev *dev, void *p)
{
	struct host_range *r;

	if (!emu_void_ctx_ok(dev, "cuMemFreeHost"))
		return;
	pthread_mutex_lock(&emu_lock);
	r = take_range((uintptr_t)p, true);
	pthread_mutex_unlock(&emu_lock);
	if (!r) {
		emu_refuse_void("cuMemFreeHost", "CUDA_ERROR_INVALID_VALUE: not from cuMemHostAlloc");
		return;
	}
	free(r);
	free(p);
}

