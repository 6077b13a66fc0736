/*
 * Private to the registry (shm/registry.c, the daemon's writer; shm/registry_view.c, the
 * readers): what both sides must agree on. The record seqlock (rec_store() and rec_load(),
 * each labelled with its partner), the records' checksum, the index keys (hash and match) and
 * the tensor names, short and long. Inline: a reader runs them on every lookup. The layout
 * is in shm/abi.h and shm/registry.h.
 */
#ifndef WD_SHM_REGISTRY_REC_H
#define WD_SHM_REGISTRY_REC_H

#include <errno.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <xxhash.h>

#include "core/base/common.h"
#include "shm/barrier.h"
#include "shm/registry.h"

/* Index entry: tag << 32 | kind << REF_KIND_SHIFT | record index; 0 is an empty slot. */
#define REF_KIND_SHIFT 29
#define REF_IDX_MASK ((1u << REF_KIND_SHIFT) - 1)

/* Seqlock reads retry this often before giving up with -EAGAIN, yielding every 64 tries. */
#define READ_RETRIES 100000u

#define MAX_MODELS (1u << 20)
#define MAX_COMPONENTS (1u << 22)
#define MAX_TENSORS (1u << 26)
#define PAGE 4096u

enum kind { K_MODEL = 1, K_COMP = 2, K_TENSOR = 3, K_TENSOR_BY_MODEL = 4 };

/* Where long tensor names live, for key_match(): the writer's area or a reader's mapping. */
struct names_ref {
	const char *base;
	uint64_t size;
};

/* ---- records and the seqlock --------------------------------------------------------- */

/* The checksum covers everything after seq and check. */
static inline uint64_t rec_check(const void *rec, size_t size)
{
	return XXH3_64bits((const uint8_t *)rec + 16, size - 16);
}

/*
 * Writes the private image @img over the shared record @dst under the seqlock. The writer is
 * the only one that stores to dst, so its own read of seq needs no ordering.
 */
static inline void rec_store(void *dst, void *img, size_t size)
{
	uint64_t *d = dst, *s = img;
	uint64_t seq = READ_ONCE(d[0]);

	s[1] = rec_check(img, size);
	WRITE_ONCE(d[0], seq + 1);
	/* Pairs with smp_rmb() in rec_load(): a reader that sees any new word sees seq odd. */
	smp_wmb();
	for (size_t i = 1; i < size / 8; i++)
		WRITE_ONCE(d[i], s[i]);
	/* Pairs with load_acquire(seq) in rec_load(): the even value covers the new words. */
	store_release(&d[0], seq + 2);
}

/*
 * The writer's own view of a record it wrote. Nobody else stores to the segment, and readers
 * only load, so a plain copy is exact and races with nothing.
 */
static inline void rec_fetch(void *img, const void *src, size_t size)
{
	memcpy(img, src, size);
}

/*
 * Copies a record consistently. Every word is read with READ_ONCE (a relaxed atomic load) so
 * the concurrent rewrite is not a data race in the C11 sense; the seq check makes the copy
 * all-or-nothing. Returns 0, -EAGAIN after READ_RETRIES attempts that saw the record under
 * rewrite, or -EBADMSG when a stable copy fails its checksum.
 */
static inline int rec_load(const void *src, size_t size, void *dst)
{
	const uint64_t *s = src;
	uint64_t *d = dst;

	for (unsigned int tries = 0; tries < READ_RETRIES; tries++) {
		/* Pairs with the writer's store_release(seq) that ended the last update. */
		uint64_t s1 = load_acquire(&s[0]);

		if (!(s1 & 1)) {
			for (size_t i = 1; i < size / 8; i++)
				d[i] = READ_ONCE(s[i]);
			/* Pairs with the writer's smp_wmb() after it made seq odd. */
			smp_rmb();
			if (READ_ONCE(s[0]) == s1) {
				d[0] = s1;
				return rec_check(dst, size) == d[1] ? 0 : -EBADMSG;
			}
		}
		if ((tries & 63) == 63)
			sched_yield();
		else
			cpu_relax();
	}
	return -EAGAIN;
}

static inline bool name_ok(const char *name, size_t *len, size_t max)
{
	*len = strnlen(name, max);
	return *len < max;
}

/* A name field from the segment matches @name (@len bytes) and is NUL-terminated. */
static inline bool name_eq(const char *field, const char *name, size_t len)
{
	return len < WD_NAME_MAX && field[len] == '\0' && memcmp(field, name, len) == 0;
}

/*
 * The full name of tensor record @t (a consistent copy): its field, or its string in the
 * names area @nr, bounds-checked (the area is never rewritten, so no seqlock is needed).
 */
static inline const char *tensor_name(const struct wd_reg_tensor *t, const struct names_ref *nr,
			       size_t *len)
{
	if (!(t->flags & WD_REG_TENSOR_F_LONG_NAME)) {
		*len = strnlen(t->name, WD_NAME_MAX);
		return *len < WD_NAME_MAX ? t->name : NULL;
	}
	if (t->name_len >= WD_LONG_NAME_MAX || t->name_off >= nr->size ||
	    t->name_len >= nr->size - t->name_off || nr->base[t->name_off + t->name_len] != '\0')
		return NULL;
	*len = t->name_len;
	return nr->base + t->name_off;
}

static inline bool tensor_name_eq(const struct wd_reg_tensor *t, const struct names_ref *nr,
			   const char *name, size_t len)
{
	size_t n;
	const char *full = tensor_name(t, nr, &n);

	return full && n == len && memcmp(full, name, len) == 0;
}

static inline uint64_t key_hash(enum kind kind, uint32_t model, uint32_t comp, const char *name,
			 size_t len)
{
	uint64_t seed = ((uint64_t)kind << 58) ^ ((uint64_t)model << 26) ^ comp;

	return XXH3_64bits_withSeed(name, len, seed);
}

/* The record a key names matches the key; the record is a consistent private copy. */
static inline bool key_match(enum kind kind, const void *rec, uint32_t model, uint32_t comp,
		      const char *name, size_t len, const struct names_ref *nr)
{
	const struct wd_reg_model *m = rec;
	const struct wd_reg_component *c = rec;
	const struct wd_reg_tensor *t = rec;

	switch (kind) {
	case K_MODEL:
		return name_eq(m->name, name, len);
	case K_COMP:
		return c->model == model && name_eq(c->name, name, len);
	case K_TENSOR:
		return t->model == model && t->component == comp &&
		       tensor_name_eq(t, nr, name, len);
	case K_TENSOR_BY_MODEL:
		return t->model == model && tensor_name_eq(t, nr, name, len);
	}
	return false;
}

/* The size of a record of @kind (K_TENSOR_BY_MODEL keys tensor records). */
static inline size_t rec_size(enum kind kind)
{
	if (kind == K_MODEL)
		return sizeof(struct wd_reg_model);
	if (kind == K_COMP)
		return sizeof(struct wd_reg_component);
	return sizeof(struct wd_reg_tensor);
}

#endif
