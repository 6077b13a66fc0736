/*
 * Private to the pinned staging ring (gpu/staging*.c): its slots and the ring itself, shared
 * by the setup and host copies (staging.c) and the disk-to-VRAM pipeline (staging_load.c).
 * The API is gpu/staging.h.
 */
#ifndef WD_GPU_STAGING_INT_H
#define WD_GPU_STAGING_INT_H

#include <liburing.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "gpu/staging.h"

#define DIO_ALIGN 4096u
#define PIECE_ALIGN 64u		/* buffered pieces packed into a slot start at this */
#define MAX_PIECES 64u		/* reads and copies per slot */
/* Reads are cut at this size so that one slot keeps several requests in flight: a storage
 * device reaches its bandwidth only with enough of them queued (uring/rawread.h uses
 * 32 x 4 MiB). */
#define READ_MAX (4u << 20)
#define RING_QD 256u
#define MAX_FIXED_FILES 64u
#define MAX_HOST_EVENTS 64u
/* While reads and copies are both in flight, how long a wait for a read may block before
 * the copies' events are polled again. */
#define POLL_NS 100000ll

enum slot_state { SLOT_FREE, SLOT_READING, SLOT_COPYING };

struct sread {
	uint32_t slot;
	uint32_t file;		/* index into the call's file table */
	uint64_t off;		/* file offset of the read */
	uint32_t len;		/* bytes asked for (aligned up for O_DIRECT) */
	uint32_t need;		/* bytes that must arrive (the pieces' end) */
	uint32_t got;
	uint32_t buf_off;	/* inside the slot */
};

struct scopy {
	uint32_t buf_off;
	uint32_t n;
	uint64_t dst;
};

struct slot {
	char *buf;
	enum slot_state state;
	struct gpu_event *ev;	/* recorded after the slot's copies; NULL when free */
	uint64_t seq;		/* fill order: the oldest copying slot is waited on first */
	uint64_t bytes;		/* bytes its copies put in VRAM */
	uint32_t reads_left;
	uint32_t n_reads, n_copies;
	struct sread reads[MAX_PIECES];
	struct scopy copies[MAX_PIECES];
};

struct staging {
	const struct gpu_ops *ops;
	struct gpu_dev *dev;
	uint32_t n_slots, slot_bytes, n_streams;
	bool no_direct;
	char *mem;			/* n_slots * slot_bytes, mmap'ed (alloc_slots()) */
	size_t mem_bytes;
	bool registered;		/* mem is page-locked by this ring's host_register */
	struct slot *slots;
	struct gpu_stream **streams;
	struct io_uring ring;
	bool ring_ok;
	uint64_t seq;
	uint32_t rr;			/* next stream, round robin */
	uint32_t host_slot;		/* next slot for a staged host copy, round robin */
	struct staging_stats stats;
};

/* The caller asked to stop (staging_call.cancel). */
static inline bool cancelled(const struct staging_call *call)
{
	return call && call->cancel &&
	       atomic_load_explicit((atomic_bool *)call->cancel, memory_order_relaxed);
}

#endif
