/*
 * Private to the io_uring loader (uring/loader*.c): the plan's ops and files, a load's
 * handle, a request slot and the loader itself, shared by the planner (loader_plan.c), the
 * read path (loader_read.c) and the threads (loader.c). Nothing outside uring/ includes it;
 * the API is uring/loader.h.
 */
#ifndef WD_URING_LOADER_INT_H
#define WD_URING_LOADER_INT_H

#include <liburing.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "core/base/common.h"
#include "core/format/model.h"
#include "core/format/st.h"
#include "uring/loader.h"

#define DIO_ALIGN 4096u
#define MAX_FILE_SLOTS 256u

enum op_kind { OP_ARENA, OP_STAGE };

/*
 * One read. OP_ARENA reads [foff, foff + len) to extent offset dst. OP_STAGE reads it into a
 * staging buffer and then copies (or converts) the bytes of tensors t_first .. t_first +
 * t_count - 1 that it covers. valid is how many bytes the file has from foff on (less than
 * len only for the rounded-up last O_DIRECT read of a file).
 */
struct load_op {
	uint32_t file;
	uint16_t kind;
	uint16_t direct;	/* read with the file's O_DIRECT descriptor */
	uint64_t foff;
	uint32_t len;
	uint32_t valid;
	uint64_t dst;
	uint32_t t_first;
	uint32_t t_count;
};

struct load_file {
	char *path;
	int fd;			/* buffered */
	int dfd;		/* O_DIRECT, -1 when the file system refuses it */
	bool direct;		/* dfd >= 0 */
	uint8_t *cached;	/* per RESIDENCY_GRANULE while planning: in the page cache */
	struct st_file st;
	struct model_fp fp;	/* at open */
	uint64_t *expect;	/* per st tensor; NULL when none was given */
};

struct load_handle {
	atomic_int refs;
	struct loader *l;
	struct load_plan *plan;
	uint64_t extent;
	struct load_callbacks cb;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	atomic_int state;	/* enum load_state; final values are written under lock */
	int rc;
	char msg[LOADER_MSG_MAX];
	atomic_uint_least64_t done;
	uint64_t total;
	atomic_bool cancel;
	uint64_t t_start, t_end;
	/* Loader thread only. */
	struct load_handle *next;
	uint32_t next_op;
	uint32_t inflight;
	bool failed;
	int fail_rc;
	/* The populate thread's, under loader.pop_lock. */
	struct load_handle *pop_next;
	bool pop_queued;
	bool pop_abort;		/* atomic: read by arena_populate() */
	int *slots;		/* registered file index per plan file and descriptor
				 * (2 * file: buffered, 2 * file + 1: O_DIRECT), or -1 */
};

struct req {
	struct load_handle *h;
	uint32_t op;
	uint32_t done;
	int buf;
	struct req *next_free;
	/* Transient failures (core/policy/recovery.h): retries so far, short reads so far, and when
	 * the next retry is due. */
	uint32_t tries;
	uint32_t shorts;
	uint64_t due_ns;
	struct req *next_retry;
};

struct loader {
	struct arena *arena;
	struct io_uring ring;
	uint32_t qd, chunk, n_staging;
	char *staging;
	bool fixed_bufs;
	uint32_t *free_bufs;
	uint32_t n_free_bufs;
	bool fixed_files;
	int bufs_err, files_err;	/* why io_uring refused them (loader_io_path()) */
	bool slot_used[MAX_FILE_SLOTS];
	struct req *reqs;
	struct req *free_reqs;
	uint32_t inflight;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct load_handle *pending, **pending_tail;
	bool stop;
	struct load_handle *active;	/* thread only */
	struct req *retry;		/* thread only: reads waiting out their backoff */
	uint32_t n_retry;		/* of l->inflight, how many are in @retry */
	int cpu;			/* where the thread last woke up; atomic */
	/*
	 * The populate thread: faults in each submitted extent's pages in bulk
	 * (MADV_POPULATE_WRITE), ahead of its reads and on another CPU, so that page allocation
	 * and clearing leave the read path (a read that gets there first faults the page itself).
	 */
	pthread_t pop_thread;
	pthread_mutex_t pop_lock;
	pthread_cond_t pop_cond;
	struct load_handle *pop_head, **pop_tail;
	struct load_handle *pop_cur;	/* being populated, or NULL */
	bool pop_stop;
};

static inline void setmsg(char *msg, size_t len, const char *fmt, ...) WD_PRINTF(3, 4);
static inline void setmsg(char *msg, size_t len, const char *fmt, ...)
{
	va_list ap;

	if (!msg || !len)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, len, fmt, ap);
	va_end(ap);
}

static inline uint64_t align_up(uint64_t x, uint64_t a)
{
	return (x + a - 1) & ~(a - 1);
}

/*
 * The read path (loader_read.c), run by the loader thread alone (loader.c's loader_main()).
 */

/* Marks @h running and registers its files' descriptors in free fixed-file slots. */
void loader_activate(struct loader *l, struct load_handle *h);
/* Gives back the fixed-file slots loader_activate() took for @h. */
void loader_release_slots(struct loader *l, struct load_handle *h);
/*
 * Starts @h's next op when a request slot (and a staging buffer if it needs one) is free.
 * Returns whether it started one.
 */
bool loader_start_one(struct loader *l, struct load_handle *h);
/*
 * Resubmits the reads whose backoff has passed (and drops those whose load failed or was
 * cancelled meanwhile). Returns the nanoseconds until the next one is due, 0 when none waits.
 */
uint64_t loader_resubmit_due(struct loader *l);
/* Takes the completion of @r with result @res (bytes read or -errno). */
void loader_complete(struct loader *l, struct req *r, int res);
/* After the last read: the files must be what they were when the load planned them. */
void loader_final_checks(struct loader *l, struct load_handle *h);

#endif
