/* Sealed memfd segments: creation on the daemon side, mapping on the client side. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shm/segment.h"

#define BASE_SEALS (F_SEAL_SHRINK | F_SEAL_GROW)

static void reset(struct shm_segment *seg)
{
	seg->fd = -1;
	seg->base = NULL;
	seg->size = 0;
	seg->writable = false;
}

int shm_segment_create(const char *name, size_t size, unsigned int flags,
		       struct shm_segment *out)
{
	int seals = BASE_SEALS | F_SEAL_SEAL;
	void *base;
	int fd, ret;

	reset(out);
	if (!size || (flags & ~(SHM_SEG_PEERS_READ_ONLY | SHM_SEG_HUGETLB)) ||
	    size > (size_t)INT64_MAX)
		return -EINVAL;
	fd = memfd_create(name, MFD_ALLOW_SEALING | MFD_CLOEXEC |
				(flags & SHM_SEG_HUGETLB ? MFD_HUGETLB : 0));
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)size) < 0)
		goto fail;
	base = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (base == MAP_FAILED)
		goto fail;
	/* The future-write seal must come after our own writable mapping, which it spares. */
	if (flags & SHM_SEG_PEERS_READ_ONLY)
		seals |= F_SEAL_FUTURE_WRITE;
	if (fcntl(fd, F_ADD_SEALS, seals) < 0) {
		ret = -errno;
		munmap(base, size);
		close(fd);
		return ret;
	}
	out->fd = fd;
	out->base = base;
	out->size = size;
	out->writable = true;
	return 0;
fail:
	ret = -errno;
	close(fd);
	return ret;
}

int shm_segment_ro_fd(const struct shm_segment *seg)
{
	char path[64];
	int fd;

	snprintf(path, sizeof(path), "/proc/self/fd/%d", seg->fd);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

int shm_segment_map(int fd, bool writable, size_t min_size, struct shm_segment *out)
{
	struct stat st;
	void *base;
	int seals;

	reset(out);
	seals = fcntl(fd, F_GET_SEALS);
	if (seals < 0)
		return errno == EINVAL ? -EBADF : -errno;
	if ((seals & BASE_SEALS) != BASE_SEALS)
		return -EPERM;
	if (fstat(fd, &st) < 0)
		return -errno;
	if (st.st_size < 0 || (uint64_t)st.st_size < min_size || (uint64_t)st.st_size > SIZE_MAX)
		return -EMSGSIZE;
	if (st.st_size == 0)
		return -EMSGSIZE;
	base = mmap(NULL, (size_t)st.st_size, writable ? PROT_READ | PROT_WRITE : PROT_READ,
		    MAP_SHARED, fd, 0);
	if (base == MAP_FAILED)
		return -errno;
	out->fd = fd;
	out->base = base;
	out->size = (size_t)st.st_size;
	out->writable = writable;
	return 0;
}

void shm_segment_close(struct shm_segment *seg)
{
	if (seg->base)
		munmap(seg->base, seg->size);
	if (seg->fd >= 0)
		close(seg->fd);
	reset(seg);
}

int shm_check_regions(const struct shm_region *rg, size_t n, uint64_t seg_size)
{
	for (size_t i = 0; i < n; i++) {
		if (rg[i].off & (rg[i].align - 1))
			return -EBADMSG;
		if (rg[i].off > seg_size || rg[i].len > seg_size - rg[i].off)
			return -EOVERFLOW;
		/* Both regions are in bounds now, so these sums cannot overflow. */
		for (size_t j = 0; j < i; j++)
			if (rg[i].off < rg[j].off + rg[j].len && rg[j].off < rg[i].off + rg[i].len)
				return -EBADMSG;
	}
	return 0;
}
