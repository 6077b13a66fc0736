/*
 * The io_uring loader: streams a component's safetensors files into an extent of the host
 * cache arena (uring/arena.h).
 *
 * A load has three steps, so that the daemon's policy sits between planning and reading:
 *
 *   1. loader_plan()   opens the files, checks their fingerprints against the catalog's,
 *                      parses the headers, applies the tensor selection and the dtype
 *                      conversion, chooses O_DIRECT or buffered I/O per granule of each
 *                      file by where its bytes are (see "I/O" below), and lays the
 *                      tensors out: plan->bytes is exactly the extent size the load needs
 *                      (the admission estimate), plan->tensors[i].off each tensor's offset
 *                      inside the extent.
 *   2. the caller      makes room (core/policy/evict.h), arena_alloc(plan->bytes), optionally
 *                      arena_bind_node() (core/policy/placement.h says which node).
 *   3. loader_submit() queues the plan for the loader thread, which reads it with every
 *                      other queued load in one io_uring; the returned handle reports
 *                      progress, can be cancelled, and can be waited on by any number of
 *                      threads (several requesters of one component share one load).
 *
 * I/O: each RESIDENCY_GRANULE (1 MiB) of a file that allows O_DIRECT is read buffered when
 * the page cache holds most of it (uring/residency.h: cachestat(2), else mincore(2)), else
 * O_DIRECT: a warm file costs one memory copy, a cold one reads at the disk's speed with no
 * copy through the page cache, and a partly cached file takes both paths. plan->direct_bytes
 * and plan->buffered_bytes count each. LOAD_F_NO_DIRECT, a file system that refuses O_DIRECT
 * (tmpfs) and a file with a converted tensor read everything buffered.
 *
 * Layouts (load_spec.flags):
 *   aligned (default)  every tensor starts at a multiple of ARENA_TENSOR_ALIGN (64) inside
 *                      the extent, packed in file order. Tensors of 1 MiB and more of an
 *                      O_DIRECT file whose file offset is 64-byte aligned start at an extent
 *                      offset congruent to it modulo 4 KiB (under 4 KiB of padding each), so
 *                      that both paths read them straight into their slots; only their
 *                      partial first and last blocks go through a staging buffer. Small
 *                      tensors are read in groups through registered staging buffers and
 *                      copied out (buffered, or aligned O_DIRECT chunks).
 *   LOAD_F_FILE_LAYOUT each file's data region is read, O_DIRECT or buffered, straight into
 *                      the extent at an offset congruent to its file offset modulo 4 KiB: no
 *                      copy at all, and tensors are aligned only as the file aligns them.
 *                      A subset or a dtype conversion always uses the aligned layout.
 *
 * Integrity: each file's fingerprint (dev, ino, size, mtime_ns) is taken when it is opened
 * (and compared with load_file_spec.expect_fp when given) and taken again, from the open
 * descriptor and from the path, after its last read; any difference, or a read that ends
 * early, fails the load with -ESTALE and a message naming the file, so that torn data is
 * never reported as loaded. LOAD_F_VERIFY hashes every tensor in the arena (XXH3-64) and
 * compares it with the expected hash when one is given.
 *
 * Errors: functions return 0 or a negative errno; the load's message (load_error()) names
 * the component, the file and the tensor.
 */
#ifndef WD_URING_LOADER_H
#define WD_URING_LOADER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/format/model.h"
#include "core/format/st.h"
#include "uring/arena.h"

#define LOADER_DEFAULT_QD 32u
#define LOADER_DEFAULT_CHUNK (4u << 20)
#define LOADER_DEFAULT_STAGING 32u
#define LOADER_MSG_MAX 512

/* load_spec.flags */
#define LOAD_F_VERIFY 0x1u	/* hash every tensor in the arena; compare with expect_xxh3 */
#define LOAD_F_NO_DIRECT 0x2u	/* buffered I/O even where O_DIRECT works */
#define LOAD_F_FILE_LAYOUT 0x4u	/* zero-copy file layout (see above) */
#define LOAD_F_CONVERT 0x8u	/* store F32 tensors as load_spec.convert_to */

struct load_file_spec {
	const char *path;
	const struct model_fp *expect_fp;	/* NULL: no catalog fingerprint to compare */
	const uint64_t *expect_xxh3;		/* per tensor in header (data) order; NULL: none */
};

struct load_spec {
	const char *name;		/* the component, for messages ("sd-tiny/unet") */
	size_t n_files;
	const struct load_file_spec *files;
	/*
	 * Selection: a tensor is loaded when its name starts with @prefix or equals one of
	 * @names; with neither given, every tensor is. A name in @names that no file has is an
	 * error (-ENOENT).
	 */
	const char *prefix;
	const char *const *names;
	size_t n_names;
	enum st_dtype convert_to;	/* ST_F16 or ST_BF16, with LOAD_F_CONVERT */
	unsigned int flags;		/* LOAD_F_* */
};

/* One tensor of a plan, in file order (files in spec order, tensors by data offset). */
struct load_tensor {
	const char *name;		/* owned by the plan */
	uint32_t file;			/* index into load_spec.files */
	uint32_t index;			/* index into that file's st_file.tensors */
	uint8_t dtype;			/* enum st_dtype in the arena (after conversion) */
	uint8_t src_dtype;		/* enum st_dtype in the file */
	uint32_t rank;
	const uint64_t *shape;		/* rank dims, owned by the plan */
	uint64_t src_off;		/* absolute byte offset in the file */
	uint64_t src_bytes;
	uint64_t nbytes;		/* bytes in the arena */
	uint64_t off;			/* offset inside the extent */
	uint64_t xxh3;			/* LOAD_F_VERIFY: hash of the arena bytes, after the load */
};

struct load_op;
struct load_file;

struct load_plan {
	char *name;
	unsigned int flags;
	uint32_t n_files;
	struct load_file *files;	/* private */
	uint32_t n_tensors;
	struct load_tensor *tensors;
	uint64_t bytes;			/* extent size to allocate (0: nothing to read) */
	uint64_t tensor_bytes;		/* sum of tensors' nbytes */
	uint64_t read_bytes;		/* bytes the loader reads from the files */
	uint64_t direct_bytes;		/* of those, read with O_DIRECT */
	uint64_t buffered_bytes;	/* of those, read through the page cache */
	uint32_t n_direct;		/* files with at least one O_DIRECT read */
	uint32_t n_ops;
	struct load_op *ops;		/* private */
};

/*
 * Plans a load of @spec (see the header comment). @chunk is the read size (a multiple of
 * 4096; 0: LOADER_DEFAULT_CHUNK) and must equal the loader's. On failure @msg (when not
 * NULL, @msg_len bytes) says what went wrong. Returns 0 and sets *@out; -EINVAL for a bad
 * spec (no files, an unsupported conversion) or an invalid safetensors file (the st_ message
 * is copied); -ENOENT for a missing file or a selected name no file has; -ESTALE when a
 * file's fingerprint differs from expect_fp; -ENOMEM; or the negative errno of open/fstat.
 */
int loader_plan(const struct load_spec *spec, uint32_t chunk, struct load_plan **out,
		char *msg, size_t msg_len);

/* Releases a plan (closes its files). Not while a handle that uses it is running. */
void loader_plan_free(struct load_plan *plan);

/* The index of tensor @name in @plan, or -1. Linear; for tests and small tools. */
int loader_plan_find(const struct load_plan *plan, const char *name);

struct loader_options {
	uint32_t qd;		/* submission queue depth; 0: LOADER_DEFAULT_QD */
	uint32_t chunk;		/* read size, multiple of 4096; 0: LOADER_DEFAULT_CHUNK */
	uint32_t n_staging;	/* registered staging buffers of @chunk bytes; 0: default */
};

struct loader;

/*
 * Creates a loader that fills @arena: an io_uring with @opt's depth, registered staging
 * buffers and a registered file table (each falls back to the unregistered form, logged,
 * when the kernel refuses), and one loader thread. @opt may be NULL. Returns 0 and sets
 * *@out; -EINVAL for a bad option; -ENOMEM; or the negative errno of io_uring_queue_init
 * or pthread_create.
 */
int loader_create(struct arena *arena, const struct loader_options *opt, struct loader **out);

/* Cancels every queued and running load, waits for their I/O, stops the thread. */
void loader_destroy(struct loader *l);

/*
 * The CPU the loader thread last woke up on (it records sched_getcpu() each time it takes
 * new loads), or -1 before its first wake-up: placement puts a component's pages on that
 * CPU's NUMA node when no GPU claims them (core/policy/placement.h).
 */
int loader_cpu(const struct loader *l);

/* The read size the loader was created with. */
uint32_t loader_chunk(const struct loader *l);

/*
 * How the loader reads: whether io_uring took its staging buffers and its file table as
 * registered (fixed) ones, and if not the error it refused them with. Registering buffers
 * locks them in memory, so an unprivileged daemon under a small RLIMIT_MEMLOCK (8 MiB by
 * default) gets -ENOMEM and reads through unregistered buffers instead: correct, slower.
 */
struct loader_io {
	bool fixed_bufs, fixed_files;
	int bufs_err, files_err;	/* negative errno of the registration, or 0 */
	uint64_t staging_bytes;
};
void loader_io_path(const struct loader *l, struct loader_io *out);

enum load_state {
	LOAD_QUEUED = 0,
	LOAD_RUNNING,
	LOAD_DONE,
	LOAD_FAILED,
	LOAD_CANCELLED,
};

struct load_handle;

/* Called by the loader thread: progress after each completed read; done once, at the end. */
typedef void (*load_progress_fn)(void *arg, uint64_t done, uint64_t total);
typedef void (*load_done_fn)(void *arg, struct load_handle *h);

struct load_callbacks {
	load_progress_fn progress;	/* may be NULL */
	load_done_fn done;		/* may be NULL; the handle is still referenced */
	void *arg;
};

/*
 * Queues @plan to be read into the arena extent at @extent_off (at least plan->bytes long,
 * allocated by the caller, who keeps owning it and frees it if the load fails). The plan
 * must outlive the handle's work (until load_wait() returns). @cb may be NULL. Returns 0 and
 * sets *@out (one reference, released with load_put()); -EINVAL when the extent is misaligned
 * or outside the arena or the plan's chunk differs from the loader's; -ENOMEM; -ESHUTDOWN
 * when the loader is being destroyed.
 */
int loader_submit(struct loader *l, struct load_plan *plan, uint64_t extent_off,
		  const struct load_callbacks *cb, struct load_handle **out);

/*
 * Waits until the load ends or @timeout_ns passes (negative: no limit). Returns the load's
 * result: 0 (LOAD_DONE), -ECANCELED, the load's error (-ESTALE: a file changed or was
 * truncated; -EBADMSG: a hash mismatch; -EIO ...), or -ETIMEDOUT when it is still running.
 */
int load_wait(struct load_handle *h, int64_t timeout_ns);

/* Asks the loader to stop this load; in-flight reads drain first. Safe at any time. */
void load_cancel(struct load_handle *h);

enum load_state load_state(const struct load_handle *h);
/* Bytes read so far and bytes to read. */
void load_progress(const struct load_handle *h, uint64_t *done, uint64_t *total);
/* The failure message ("" while running or after success); valid until load_put(). */
const char *load_error(const struct load_handle *h);
/* Load duration in nanoseconds (from the start of its first read to its end). */
uint64_t load_elapsed_ns(const struct load_handle *h);
/* The plan and extent the handle loads. */
struct load_plan *load_handle_plan(const struct load_handle *h);
uint64_t load_handle_extent(const struct load_handle *h);

/* Reference counting: a coalesced requester takes a reference while it waits. */
struct load_handle *load_get(struct load_handle *h);
void load_put(struct load_handle *h);

/*
 * Synchronous convenience for tools, tests and benchmarks: loader_submit() and load_wait().
 * Returns what load_wait() returns, or loader_submit()'s error; @msg (when not NULL)
 * receives load_error().
 */
int loader_run(struct loader *l, struct load_plan *plan, uint64_t extent_off,
	       const struct load_callbacks *cb, char *msg, size_t msg_len);

#endif
