/*
 * Shared-memory segments: sealed memfds that the daemon creates and maps read-write, and that
 * a client maps after receiving the descriptor over the attach socket.
 *
 * The seals are what make a mapping safe to use: a segment sealed against shrinking can never
 * make the other side's accesses fault with SIGBUS, and one sealed against growing keeps the
 * size both sides validated. F_SEAL_SEAL stops a client from adding seals of its own (a
 * write seal on its ring segment would break the daemon's writes).
 */
#ifndef WD_SHM_SEGMENT_H
#define WD_SHM_SEGMENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A mapped segment. The process that holds it owns fd and the mapping. */
struct shm_segment {
	int fd;
	void *base;
	size_t size;
	bool writable;		/* mapped PROT_READ | PROT_WRITE */
};

/*
 * shm_segment_create() flags. SHM_SEG_PEERS_READ_ONLY adds F_SEAL_FUTURE_WRITE after the
 * creator's own writable mapping exists: the creator keeps writing through that mapping, and
 * nobody (the creator included) can make a new writable mapping or write(2) to the file. The
 * registry segment uses it.
 */
#define SHM_SEG_PEERS_READ_ONLY 0x1u
/*
 * SHM_SEG_HUGETLB makes the memfd with MFD_HUGETLB (@size a multiple of the huge page size):
 * mmap(2) of a hugetlb file reserves its pages, so a shortage fails the call rather than
 * raising SIGBUS later. The host cache arena uses it when the system has the pages.
 */
#define SHM_SEG_HUGETLB 0x2u

/*
 * Daemon side: creates a memfd called @name (shown in /proc/PID/maps as "memfd:@name") of
 * @size bytes with MFD_ALLOW_SEALING | MFD_CLOEXEC (and MFD_HUGETLB), maps it read-write and shared, and seals it
 * with F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL (plus F_SEAL_FUTURE_WRITE for
 * SHM_SEG_PEERS_READ_ONLY). The memory reads as zeroes.
 * Returns 0 and fills @out; -EINVAL for a zero @size or unknown @flags; otherwise the negative
 * errno of memfd_create(2), ftruncate(2), mmap(2) or fcntl(2) (nothing is left open).
 */
int shm_segment_create(const char *name, size_t size, unsigned int flags,
		       struct shm_segment *out);

/*
 * Daemon side: returns a new descriptor for @seg's file opened O_RDONLY (through
 * /proc/self/fd), so that a client that receives it cannot map it writable whatever seals the
 * file has. The caller owns the new descriptor (O_CLOEXEC).
 * Returns the descriptor, or the negative errno of open(2).
 */
int shm_segment_ro_fd(const struct shm_segment *seg);

/*
 * Client side: maps the segment behind @fd. It must be a memfd sealed against shrinking and
 * growing, of at least @min_size bytes; it is mapped shared, read-write when @writable.
 * On success @out owns @fd (shm_segment_close() closes it); on failure the caller still does.
 * Returns 0; -EBADF when @fd is not a sealable memfd; -EPERM when F_SEAL_SHRINK or
 * F_SEAL_GROW is missing; -EMSGSIZE when the file is smaller than @min_size or larger than
 * the address space; or the negative errno of fstat(2) or mmap(2) (-EACCES/-EPERM for a
 * writable mapping of a read-only descriptor or a write-sealed file).
 */
int shm_segment_map(int fd, bool writable, size_t min_size, struct shm_segment *out);

/* Unmaps @seg and closes its descriptor; safe on a zeroed or already closed segment. */
void shm_segment_close(struct shm_segment *seg);

/* One region of a segment layout, as read from a header that may be corrupt. */
struct shm_region {
	uint64_t off;
	uint64_t len;
	uint64_t align;		/* power of two */
};

/*
 * Checks a layout read from a segment header: every region is aligned, lies inside
 * [0, @seg_size) without overflow, and overlaps no other region.
 * Returns 0, -EBADMSG (misaligned or overlapping) or -EOVERFLOW (out of bounds).
 */
int shm_check_regions(const struct shm_region *rg, size_t n, uint64_t seg_size);

#endif
