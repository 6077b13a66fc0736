/*
 * The wire ABI between weightd and its clients: the attach handshake on the Unix socket, the
 * layout of a client's ring segment, and the submission/completion entries with their op
 * codes. docs/protocol.md describes the same layout with offsets and the rules around it.
 *
 * Everything here lives in memory that two processes map, possibly built by different
 * compilers, so the rules are: fixed-width types only, explicit padding (reserved fields are
 * zero on write and checked on read where the reader is the daemon), offsets never pointers,
 * and a static_assert on the size and on every field offset. Changing any of it means bumping
 * WD_ABI_VERSION.
 */
#ifndef WD_SHM_ABI_H
#define WD_SHM_ABI_H

#include <assert.h>
#include <stddef.h>
#include <stdint.h>

#define WD_ABI_VERSION 5u	/* 5: registry heartbeat, names area for tensor names longer
				 * than 255 bytes (name_off/name_len in the tensor record);
				 * 4: DEVICE_MAP names the device (device_id), DEVICES flags,
				 * DEVICE_TRIM;
				 * 3: registry metrics block, last-load fields, DEVICE_MAP/DEVICES;
				 * 2: the attach reply carries the host cache (3 fds) */

/* Magics, stored little-endian, spell "WDHL", "WDRP", "WDRG" and "WDRY" in a hex dump. */
#define WD_HELLO_MAGIC 0x4c484457u
#define WD_REPLY_MAGIC 0x50524457u
#define WD_RING_MAGIC 0x47524457u
#define WD_REGISTRY_MAGIC 0x59524457u

/*
 * The ring cursors of the two sides sit WD_RING_ALIGN bytes apart rather than one 64-byte
 * line: Intel's adjacent-line prefetcher pulls cache lines in 128-byte pairs, so two cursors
 * 64 bytes apart still ping-pong between cores (DPDK adds a guard line for the same reason).
 */
#define WD_RING_ALIGN 128u

/* Each ring slot owns a payload area of this size (names, paths, metadata, results). */
#define WD_DATA_SLOT_SIZE 256u

/* Ring sizes a segment may have: powers of two in [WD_RING_MIN, WD_RING_MAX]. */
#define WD_RING_MIN 2u
#define WD_RING_MAX 32768u

/* Tiers: 0 is the shared host cache, 1 + n is cuda:n. */
#define WD_TIER_HOST 0u
#define WD_TIER_CUDA(n) (1u + (n))
#define WD_TIER_MAX 16u
/* A model or component field that names nothing (the name is in the payload instead). */
#define WD_ID_NONE 0xffffffffu

/* ------------------------------------------------------------------------------------------ */
/* Attach handshake (SOCK_SEQPACKET Unix socket; one message each way).                       */

/*
 * The first message a client sends. The daemon checks magic, version, hello_size, sqe_size and
 * cqe_size before anything else, so an old or foreign client gets a reply naming the mismatch
 * instead of a ring it would misread.
 */
struct wd_hello {
	uint32_t magic;		/* WD_HELLO_MAGIC */
	uint32_t version;	/* WD_ABI_VERSION the client was built with */
	uint32_t hello_size;	/* sizeof(struct wd_hello) */
	uint32_t sqe_size;	/* sizeof(struct wd_sqe) */
	uint32_t cqe_size;	/* sizeof(struct wd_cqe) */
	uint32_t sq_entries;	/* requested SQ size, power of two, 0 for the daemon's default */
	uint32_t cq_entries;	/* requested CQ size, power of two, 0 for 2 * sq_entries */
	uint32_t flags;		/* none defined; must be 0 */
	char client_name[32];	/* NUL-padded label for logs and `weightctl clients` */
};

/*
 * The daemon's answer. On status == 0 the same message carries three descriptors with
 * SCM_RIGHTS, in this order: the client's ring segment (read-write, sealed against shrink and
 * grow), the registry segment (opened read-only, sealed against future writes) and the host
 * cache arena (opened read-only, sealed against shrink and grow): every tensor resident on
 * the host tier lies at its registry host_offset inside that arena.
 */
struct wd_hello_reply {
	uint32_t magic;		/* WD_REPLY_MAGIC */
	uint32_t version;	/* WD_ABI_VERSION of the daemon */
	uint32_t reply_size;	/* sizeof(struct wd_hello_reply) */
	int32_t status;		/* 0, or a negative errno (see docs/protocol.md) */
	uint32_t client_id;	/* daemon-assigned, also in the ring segment header */
	uint32_t n_fds;		/* 3 on success, 0 on failure */
	uint64_t ring_seg_size;
	uint64_t registry_seg_size;
	uint64_t host_seg_size;	/* bytes of the host cache arena */
	char message[96];	/* NUL-terminated reason when status < 0 */
};

/* ------------------------------------------------------------------------------------------ */
/* Ring segment: one per client, created by the daemon, mapped read-write by both sides.      */

/* wd_ring_seg_hdr.status: the daemon marks a ring it stopped serving. */
enum wd_ring_status {
	WD_RING_OK = 0,
	WD_RING_BROKEN = 1,	/* the client wrote an invalid cursor; error says why */
	WD_RING_SHUTDOWN = 2,	/* the daemon is exiting; no more completions will come */
};

/*
 * At offset 0 of the ring segment. Written by the daemon before the descriptor is sent and
 * never changed afterwards, except status and error. The daemon never reads the geometry back:
 * it keeps its own copy, so a client that scribbles here only confuses itself.
 */
struct wd_ring_seg_hdr {
	uint32_t magic;		/* WD_RING_MAGIC */
	uint32_t version;	/* WD_ABI_VERSION */
	uint32_t hdr_size;	/* sizeof(struct wd_ring_seg_hdr) */
	uint32_t client_id;
	uint64_t seg_size;	/* bytes in the segment; every offset below is < seg_size */
	uint32_t sq_entries;	/* power of two */
	uint32_t cq_entries;	/* power of two */
	uint32_t sqe_size;	/* sizeof(struct wd_sqe) */
	uint32_t cqe_size;	/* sizeof(struct wd_cqe) */
	uint32_t data_slot_size; /* WD_DATA_SLOT_SIZE */
	uint32_t status;	/* enum wd_ring_status, written by the daemon */
	int32_t error;		/* negative errno once status != WD_RING_OK */
	uint32_t reserved0;
	uint64_t sq_off;	/* struct wd_ring_hdr of the submission ring */
	uint64_t sq_entries_off; /* struct wd_sqe[sq_entries] */
	uint64_t sq_data_off;	/* WD_DATA_SLOT_SIZE bytes per SQ slot */
	uint64_t cq_off;	/* struct wd_ring_hdr of the completion ring */
	uint64_t cq_entries_off; /* struct wd_cqe[cq_entries] */
	uint64_t cq_data_off;	/* WD_DATA_SLOT_SIZE bytes per CQ slot */
	uint8_t reserved1[24];
};

/*
 * The control block of one single-producer single-consumer ring.
 *
 * Invariants (all arithmetic modulo 2^32):
 *  - tail and head are free-running: they are incremented and never masked when stored; a
 *    slot is addressed as entries[index & (size - 1)]. The ring is empty when head == tail
 *    and full when tail - head == size, which is why the size is a power of two no larger
 *    than 2^31: then tail - head is exact across the 2^32 wrap.
 *  - 0 <= tail - head <= size at every instant. A side that reads the other side's cursor
 *    and finds this violated has a corrupt peer and stops using the ring (-EPROTO).
 *  - Slots [head, tail) belong to the consumer; slots [tail, head + size) to the producer.
 *    Payload slot i (data area) has the same owner as entry slot i.
 *
 * Ordering pairs:
 *  - producer: write entry, then store_release(tail)  <->  consumer: load_acquire(tail), then
 *    read entry. The consumer never sees a tail that covers an unwritten entry.
 *  - consumer: read entry, then store_release(head)   <->  producer: load_acquire(head), then
 *    overwrite the slot. The producer never reuses a slot the consumer is still reading.
 *  - doorbell: consumer stores waiting = 1, smp_mb(), re-reads tail; producer stores tail,
 *    smp_mb(), reads waiting. See shm/ring.h.
 *
 * Each written field has its own WD_RING_ALIGN-byte block: the producer writes only tail,
 * the consumer writes head and waiting. The futex word a sleeping consumer waits on is tail
 * itself, so FUTEX_WAIT compares against the exact value that ends the wait.
 */
struct wd_ring_hdr {
	uint32_t tail;		/* producer half: next index to be produced */
	uint8_t pad0[WD_RING_ALIGN - 4];
	uint32_t head;		/* consumer half: next index to be consumed */
	uint8_t pad1[WD_RING_ALIGN - 4];
	uint32_t waiting;	/* doorbell: 1 while the consumer parks (or is about to) */
	uint8_t pad2[WD_RING_ALIGN - 4];
};

/* ------------------------------------------------------------------------------------------ */
/* Entries.                                                                                   */

/*
 * Request op codes. 0 is never valid so that a zeroed or unwritten slot is rejected.
 * docs/protocol.md gives each op's arguments, payload and result.
 */
enum wd_op {
	WD_OP_PING = 1,		/* no-op; aux0 of the completion echoes arg[0] */
	WD_OP_LOOKUP = 2,	/* resolve a model name (payload) to its registry index */
	WD_OP_LOAD = 3,		/* make model/component resident on tier; streams progress */
	WD_OP_UNLOAD = 4,	/* drop model/component from tier (unless pinned by others) */
	WD_OP_PIN = 5,		/* keep model/component on tier while this lease lives */
	WD_OP_UNPIN = 6,	/* release a pin this client holds */
	WD_OP_STATE = 7,	/* state and progress of model/component on tier */
	WD_OP_SCAN = 8,		/* discover models under the directory in the payload */
	WD_OP_VALIDATE = 9,	/* re-read and check model/component; streams progress */
	WD_OP_META_GET = 10,	/* value of key (payload) of a model's metadata, into CQ payload */
	WD_OP_META_SET = 11,	/* payload "key\0value" */
	WD_OP_STATS = 12,	/* daemon and client counters (enum wd_stat) in the CQ payload */
	WD_OP_SHUTDOWN = 13,	/* stop the daemon (privileged clients only) */
	WD_OP_CACHE = 14,	/* list host cache entries (struct wd_cache_entry) from arg[0] */
	WD_OP_DEVICE_MAP = 15,	/* share component's VRAM allocation on tier: fd on the socket */
	WD_OP_DEVICES = 16,	/* GPU tiers (struct wd_device_info) from arg[0] */
	WD_OP_DEVICE_TRIM = 17,	/* evict unpinned, unmapped entries of tier until arg[0] bytes
				 * are freed; aux0 of the completion = bytes freed */
	WD_OP_INFO = 18,	/* the daemon's setup (struct wd_info) in the CQ payload */
	WD_OP_COUNT
};

/*
 * The old name of WD_OP_STATE (docs/names.md): `weightctl status` is the daemon's status, the
 * op reports one target's state. Same value, so the wire did not change. Deprecated.
 */
#define WD_OP_STATUS WD_OP_STATE

/*
 * LOAD arg[0]: what to load of each target component, and in which form.
 *   WD_LOAD_CONVERT  store F32 tensors as the dtype in bits 0..7 (enum st_dtype: F16 or BF16);
 *                    other dtypes are stored as they are. A separate cache entry.
 *   WD_LOAD_PREFIX   only the tensors whose name starts with the payload (arg_len bytes)
 *   WD_LOAD_NAMES    only the tensors named in the payload: names separated by NUL bytes
 * A selection (PREFIX or NAMES) needs the model by index: the payload is the selection.
 */
#define WD_LOAD_DTYPE_MASK 0xffu
#define WD_LOAD_CONVERT 0x100u
#define WD_LOAD_PREFIX 0x200u
#define WD_LOAD_NAMES 0x400u
#define WD_LOAD_ARG_ALL (WD_LOAD_DTYPE_MASK | WD_LOAD_CONVERT | WD_LOAD_PREFIX | WD_LOAD_NAMES)

/*
 * CACHE: one host cache entry, 32 bytes; the CQ payload carries up to 8 of them, from index
 * arg[0] on, and res is the number of entries in the cache.
 */
struct wd_cache_entry {
	uint32_t model;		/* a registry model the entry is bound to (the first) */
	uint32_t component;	/* and its component */
	uint64_t bytes;		/* extent bytes in the arena (reserved while loading) */
	uint64_t idle_ns;	/* since the last request for it (or since it was loaded) */
	uint16_t pins;		/* client pins covering it on the host tier */
	uint8_t dtype;		/* converted to this enum st_dtype; 0xff: as stored */
	uint8_t flags;		/* WD_CACHE_F_* */
	uint32_t n_tensors;
};
#define WD_CACHE_F_LOADING 0x1u		/* not resident yet (bytes reserved) */
#define WD_CACHE_F_SUBSET 0x2u		/* a selection of the component's tensors */
#define WD_CACHE_F_PREFETCHED 0x4u	/* loaded as a prefetch and not requested since */
#define WD_CACHE_F_SHARED 0x8u		/* bound to several components (deduplicated) */
#define WD_CACHE_F_STALE 0x10u		/* its files changed since it was loaded (a rescan saw it) */
#define WD_CACHE_PER_REPLY (WD_DATA_SLOT_SIZE / 32u)

/*
 * INFO: what the daemon runs with, for operators (`weightctl status`) and for clients that
 * read its catalog (`weightctl ls`). No arguments; res is 0 and the payload one struct
 * wd_info. The daemon's state directory holds its catalog (catalog.db): a client reads it
 * there itself, with its own permissions (the daemon opens nothing on a client's behalf).
 */
#define WD_INFO_FIXED_BUFFERS 0x1u	/* io_uring reads into registered (fixed) buffers */
#define WD_INFO_FIXED_FILES 0x2u	/* io_uring uses a registered file table */
#define WD_INFO_STATE_DIR_LONG 0x4u	/* the state directory did not fit state_dir[] */
#define WD_INFO_NO_LOADER 0x8u		/* the host tier has no io_uring loader */
#define WD_INFO_STATE_DIR_MAX 224u
struct wd_info {
	uint64_t memlock_limit;	/* RLIMIT_MEMLOCK (soft) of the daemon, bytes; UINT64_MAX: none */
	uint64_t staging_bytes;	/* the loader's staging buffers, registered or not */
	uint32_t flags;		/* WD_INFO_* */
	int32_t buffers_error;	/* negative errno io_uring refused the fixed buffers with, or 0 */
	int32_t files_error;	/* the same for the file table */
	uint32_t state_dir_len;	/* bytes of state_dir used (no NUL); 0 with STATE_DIR_LONG */
	char state_dir[WD_INFO_STATE_DIR_MAX];
};

/*
 * DEVICE_MAP. Before the final completion the daemon sends, on the client's attach socket,
 * one or more messages of a struct wd_devmap_msg followed by n struct wd_devmap_tensor; the
 * first carries the allocation's POSIX fd (SCM_RIGHTS). The completion has aux0 = allocation
 * bytes, aux1 = the token the messages carry, and a struct wd_devmap_reply in its payload.
 * The mapping holds a reference (a lease pin on model/component/tier) until UNPIN of the same
 * triple or the end of the lease; while any is held the allocation is never freed or evicted.
 */
#define WD_DEVMAP_MAGIC 0x4d444457u	/* "WDDM" */
#define WD_DEVMAP_PER_MSG 2048u		/* tensor entries per socket message, at most */

struct wd_devmap_msg {
	uint32_t magic;		/* WD_DEVMAP_MAGIC */
	uint32_t n;		/* struct wd_devmap_tensor entries following this header */
	uint64_t token;		/* the completion's aux1 */
	uint64_t size;		/* allocation bytes (a multiple of the device granularity) */
	uint32_t first;		/* index of this message's first entry among all of them */
	uint32_t total;		/* entries in all messages of this token */
};

struct wd_devmap_tensor {
	uint32_t tensor;	/* registry tensor index */
	uint32_t dtype;		/* enum st_dtype of its bytes in the allocation (a converted
				 * copy: F16/BF16 where the file has F32) */
	uint64_t offset;	/* of its bytes in the allocation */
	uint64_t nbytes;
};

#define WD_DEVICE_KIND_CUDA 0u
#define WD_DEVICE_KIND_EMULATED 1u

struct wd_devmap_reply {
	uint32_t ordinal;	/* the device (tier - 1): the DAEMON's ordinal, which need not be
				 * the client's for the same GPU */
	uint32_t kind;		/* WD_DEVICE_KIND_*: which gpu_ops the client imports with */
	uint32_t n_tensors;	/* entries sent on the socket */
	uint32_t n_msgs;	/* socket messages sent */
	uint32_t component;	/* the registry component mapped (UNPIN it to unmap) */
	uint32_t reserved;	/* 0 */
	char device_id[32];	/* the GPU as every process names it (gpu_device.id: the PCI bus
				 * id, "0000:3b:00.0"; emulated: "emulated-N"), NUL-terminated:
				 * the client resolves its own ordinal from it */
};

/*
 * DEVICES: one GPU tier, 128 bytes; the CQ payload carries up to 2 from index arg[0] on,
 * res is the number of GPUs (0 with a reason in aux0 = 0 when there is no GPU tier: the
 * payload then holds the reason as text).
 */
struct wd_device_info {
	uint32_t ordinal;
	uint32_t kind;		/* WD_DEVICE_KIND_* */
	int32_t numa_node;	/* local NUMA node of its PCI bus; -1: unknown or emulated */
	uint32_t entries;	/* device cache entries, loading ones included */
	uint64_t total_bytes;	/* device memory */
	uint64_t budget;	/* --device-budget for it */
	uint64_t used;		/* bytes of entries (and reservations) */
	uint64_t hits, misses, evictions, evict_bytes;
	uint64_t load_bytes;	/* bytes copied into it */
	char name[40];		/* truncated device name, NUL-terminated */
	uint32_t flags;		/* WD_DEVICE_F_*: how host -> VRAM copies run on it */
	int16_t fixed_err;	/* WD_DEVICE_F_NO_FIXED_BUFFERS: io_uring's -errno */
	int16_t locked_err;	/* WD_DEVICE_F_SLOTS_PAGEABLE: page-locking's -errno */
};
#define WD_DEVICE_F_NO_STAGING 0x1u	/* no staging ring: host copies run from pageable
					 * memory on one stream; nothing streams from disk */
#define WD_DEVICE_F_SLOTS_PAGEABLE 0x2u	/* staging slots not page-locked: pageable speed */
#define WD_DEVICE_F_NO_FIXED_BUFFERS 0x4u /* slots not io_uring fixed buffers */
#define WD_DEVICE_F_OFF_NODE 0x8u	/* slots not bound to the GPU's NUMA node */
#define WD_DEVICES_PER_REPLY (WD_DATA_SLOT_SIZE / 128u)

/* VALIDATE arg[0] bits. */
#define WD_VALIDATE_DEEP 0x1u	/* also read every tensor's bytes; progress in bytes */

/*
 * STATS: the CQ payload is a u64 array indexed by this enum (res = number of entries, so a
 * newer daemon may append entries and an older client reads the ones it knows).
 */
enum wd_stat {
	WD_STAT_CLIENTS = 0,	/* clients attached now */
	WD_STAT_PINS,		/* pins held by all clients */
	WD_STAT_RING_SEGS,	/* client ring segments still mapped by the daemon */
	WD_STAT_REQUESTS,	/* requests served, all clients */
	WD_STAT_ERRORS,		/* of those, completed with an error */
	WD_STAT_MODELS,		/* models published in the registry */
	WD_STAT_HOST_BUDGET,	/* --host-budget in bytes, 0 when unset */
	WD_STAT_UPTIME_NS,
	WD_STAT_MY_PINS,	/* pins the asking client holds */
	WD_STAT_MY_REQUESTS,	/* requests the asking client sent (this one included) */
	WD_STAT_MY_ERRORS,
	WD_STAT_HOST_BYTES,	/* bytes resident in the host cache (extents) */
	WD_STAT_HOST_ENTRIES,	/* host cache entries, loading ones included */
	WD_STAT_HOST_HITS,	/* component requests answered from the host cache */
	WD_STAT_HOST_MISSES,	/* component requests that had to wait for a load */
	WD_STAT_HOST_EVICTIONS,
	WD_STAT_HOST_EVICT_BYTES,
	WD_STAT_HOST_PREFETCHES,	/* entries loaded because of co-access statistics */
	WD_STAT_HOST_PREFETCH_HITS,	/* of those, requested afterwards */
	WD_STAT_HOST_LOADS,	/* loads started (each one reads its files once) */
	WD_STAT_HOST_READ_BYTES,	/* bytes read from disk by those loads */
	WD_STAT_HOST_COALESCED,	/* requests that joined a load already running */
	WD_STAT_HOST_DEDUP_BYTES,	/* bytes not stored twice: identical content shared */
	WD_STAT_HOST_REFUSED,	/* admissions refused (-EFBIG, -ENOSPC) */
	WD_STAT_HOST_FAILED,	/* loads that failed or were cancelled */
	WD_STAT_CUDA_BYTES,	/* bytes resident on the GPU tiers (0: no GPU tier yet) */
	WD_STAT_IO_RETRIES,	/* reads retried after EINTR, EAGAIN or a short read */
	WD_STAT_ALLOC_RETRIES,	/* allocations retried after evicting (core/policy/recovery.h) */
	WD_STAT_PRESSURE_SHEDS,	/* cache entries shed under memory pressure (PSI) */
	WD_STAT_QUARANTINED,	/* components quarantined after repeated load failures */
	WD_STAT_HOST_READ_DIRECT_BYTES,	/* of WD_STAT_HOST_READ_BYTES, read with O_DIRECT (the
					 * rest went through the page cache) */
	WD_STAT_HOST_PAGES,	/* the host cache's page size in bytes (a power of two, at
				 * least 4096), ORed with its WD_PAGES_* kind in bits 0-11 */
	WD_STAT_COUNT
};

/* WD_STAT_HOST_PAGES kinds (bits 0-11). */
#define WD_PAGES_SMALL 0u	/* 4 KiB shmem pages */
#define WD_PAGES_THP 1u		/* shmem transparent huge pages (MADV_HUGEPAGE) */
#define WD_PAGES_HUGETLB 2u	/* hugetlbfs pages reserved up front */

/* wd_sqe.flags */
#define WD_SQE_F_PIN 0x01u	/* LOAD: take a pin as soon as the target is resident */
#define WD_SQE_F_NO_PROGRESS 0x02u /* LOAD/VALIDATE: send only the final completion */
#define WD_SQE_F_ALL (WD_SQE_F_PIN | WD_SQE_F_NO_PROGRESS)

/*
 * A request: 64 bytes, one cache line. Variable-length arguments (a model name up to 255
 * bytes, a path, a metadata key) go in the payload slot that belongs to the same ring slot;
 * arg_len says how many of its bytes are used. Keeping the entry at one line makes a ping one
 * line of traffic, and a name costs extra lines only for the ops that carry one.
 */
struct wd_sqe {
	uint8_t opcode;		/* enum wd_op */
	uint8_t flags;		/* WD_SQE_F_* */
	uint16_t tier;		/* WD_TIER_* */
	uint16_t arg_len;	/* payload bytes, <= WD_DATA_SLOT_SIZE */
	uint16_t reserved;	/* must be 0 */
	uint64_t user_data;	/* opaque, copied into every completion of this request */
	uint32_t model;		/* registry model index, or WD_ID_NONE (name in payload) */
	uint32_t component;	/* registry component index, or WD_ID_NONE for all */
	uint64_t arg[5];	/* op-specific; unused ones are 0 */
};

/* wd_cqe.flags */
#define WD_CQE_F_PROGRESS 0x01u	/* not final: aux0 bytes done of aux1 total; more follow */

/*
 * A completion: 32 bytes, two per cache line. res is the result or a negative errno; a
 * request gets zero or more WD_CQE_F_PROGRESS completions and then exactly one final one.
 */
struct wd_cqe {
	uint64_t user_data;	/* from the request */
	int32_t res;		/* >= 0 op-specific result, < 0 negative errno */
	uint16_t flags;		/* WD_CQE_F_* */
	uint16_t data_len;	/* bytes of this slot's CQ payload in use */
	uint64_t aux0;		/* op-specific (progress: bytes done) */
	uint64_t aux1;		/* op-specific (progress: bytes total) */
};

/* ------------------------------------------------------------------------------------------ */
/* Layout checks: any change here is an ABI change.                                           */

static_assert(sizeof(struct wd_hello) == 64, "wd_hello size");
static_assert(offsetof(struct wd_hello, version) == 4, "wd_hello.version");
static_assert(offsetof(struct wd_hello, hello_size) == 8, "wd_hello.hello_size");
static_assert(offsetof(struct wd_hello, sqe_size) == 12, "wd_hello.sqe_size");
static_assert(offsetof(struct wd_hello, cqe_size) == 16, "wd_hello.cqe_size");
static_assert(offsetof(struct wd_hello, sq_entries) == 20, "wd_hello.sq_entries");
static_assert(offsetof(struct wd_hello, cq_entries) == 24, "wd_hello.cq_entries");
static_assert(offsetof(struct wd_hello, flags) == 28, "wd_hello.flags");
static_assert(offsetof(struct wd_hello, client_name) == 32, "wd_hello.client_name");

static_assert(sizeof(struct wd_hello_reply) == 144, "wd_hello_reply size");
static_assert(offsetof(struct wd_hello_reply, version) == 4, "wd_hello_reply.version");
static_assert(offsetof(struct wd_hello_reply, reply_size) == 8, "wd_hello_reply.reply_size");
static_assert(offsetof(struct wd_hello_reply, status) == 12, "wd_hello_reply.status");
static_assert(offsetof(struct wd_hello_reply, client_id) == 16, "wd_hello_reply.client_id");
static_assert(offsetof(struct wd_hello_reply, n_fds) == 20, "wd_hello_reply.n_fds");
static_assert(offsetof(struct wd_hello_reply, ring_seg_size) == 24, "reply.ring_seg_size");
static_assert(offsetof(struct wd_hello_reply, registry_seg_size) == 32, "reply.registry_size");
static_assert(offsetof(struct wd_hello_reply, host_seg_size) == 40, "reply.host_seg_size");
static_assert(offsetof(struct wd_hello_reply, message) == 48, "wd_hello_reply.message");

static_assert(sizeof(struct wd_cache_entry) == 32, "wd_cache_entry size");
static_assert(offsetof(struct wd_cache_entry, bytes) == 8, "cache.bytes");
static_assert(offsetof(struct wd_cache_entry, idle_ns) == 16, "cache.idle_ns");
static_assert(offsetof(struct wd_cache_entry, pins) == 24, "cache.pins");
static_assert(offsetof(struct wd_cache_entry, dtype) == 26, "cache.dtype");
static_assert(offsetof(struct wd_cache_entry, flags) == 27, "cache.flags");
static_assert(offsetof(struct wd_cache_entry, n_tensors) == 28, "cache.n_tensors");

static_assert(sizeof(struct wd_devmap_msg) == 32, "wd_devmap_msg size");
static_assert(offsetof(struct wd_devmap_msg, token) == 8, "devmap.token");
static_assert(offsetof(struct wd_devmap_msg, size) == 16, "devmap.size");
static_assert(offsetof(struct wd_devmap_msg, first) == 24, "devmap.first");
static_assert(sizeof(struct wd_devmap_tensor) == 24, "wd_devmap_tensor size");
static_assert(offsetof(struct wd_devmap_tensor, offset) == 8, "devmap_tensor.offset");
static_assert(sizeof(struct wd_devmap_reply) == 56, "wd_devmap_reply size");
static_assert(offsetof(struct wd_devmap_reply, device_id) == 24, "devmap_reply.device_id");
static_assert(offsetof(struct wd_devmap_reply, component) == 16, "devmap_reply.component");
static_assert(sizeof(struct wd_device_info) == 128, "wd_device_info size");
static_assert(offsetof(struct wd_device_info, total_bytes) == 16, "device.total_bytes");
static_assert(offsetof(struct wd_device_info, hits) == 40, "device.hits");
static_assert(offsetof(struct wd_device_info, load_bytes) == 72, "device.load_bytes");
static_assert(offsetof(struct wd_device_info, name) == 80, "device.name");
static_assert(offsetof(struct wd_device_info, flags) == 120, "device.flags");
static_assert(offsetof(struct wd_device_info, locked_err) == 126, "device.locked_err");

static_assert(sizeof(struct wd_ring_seg_hdr) == 128, "wd_ring_seg_hdr size");
static_assert(offsetof(struct wd_ring_seg_hdr, version) == 4, "seg.version");
static_assert(offsetof(struct wd_ring_seg_hdr, hdr_size) == 8, "seg.hdr_size");
static_assert(offsetof(struct wd_ring_seg_hdr, client_id) == 12, "seg.client_id");
static_assert(offsetof(struct wd_ring_seg_hdr, seg_size) == 16, "seg.seg_size");
static_assert(offsetof(struct wd_ring_seg_hdr, sq_entries) == 24, "seg.sq_entries");
static_assert(offsetof(struct wd_ring_seg_hdr, cq_entries) == 28, "seg.cq_entries");
static_assert(offsetof(struct wd_ring_seg_hdr, sqe_size) == 32, "seg.sqe_size");
static_assert(offsetof(struct wd_ring_seg_hdr, cqe_size) == 36, "seg.cqe_size");
static_assert(offsetof(struct wd_ring_seg_hdr, data_slot_size) == 40, "seg.data_slot_size");
static_assert(offsetof(struct wd_ring_seg_hdr, status) == 44, "seg.status");
static_assert(offsetof(struct wd_ring_seg_hdr, error) == 48, "seg.error");
static_assert(offsetof(struct wd_ring_seg_hdr, sq_off) == 56, "seg.sq_off");
static_assert(offsetof(struct wd_ring_seg_hdr, sq_entries_off) == 64, "seg.sq_entries_off");
static_assert(offsetof(struct wd_ring_seg_hdr, sq_data_off) == 72, "seg.sq_data_off");
static_assert(offsetof(struct wd_ring_seg_hdr, cq_off) == 80, "seg.cq_off");
static_assert(offsetof(struct wd_ring_seg_hdr, cq_entries_off) == 88, "seg.cq_entries_off");
static_assert(offsetof(struct wd_ring_seg_hdr, cq_data_off) == 96, "seg.cq_data_off");

static_assert(sizeof(struct wd_ring_hdr) == 3 * WD_RING_ALIGN, "wd_ring_hdr size");
static_assert(offsetof(struct wd_ring_hdr, tail) == 0, "ring.tail");
static_assert(offsetof(struct wd_ring_hdr, head) == WD_RING_ALIGN, "ring.head");
static_assert(offsetof(struct wd_ring_hdr, waiting) == 2 * WD_RING_ALIGN, "ring.waiting");

static_assert(sizeof(struct wd_sqe) == 64, "wd_sqe size");
static_assert(offsetof(struct wd_sqe, flags) == 1, "sqe.flags");
static_assert(offsetof(struct wd_sqe, tier) == 2, "sqe.tier");
static_assert(offsetof(struct wd_sqe, arg_len) == 4, "sqe.arg_len");
static_assert(offsetof(struct wd_sqe, reserved) == 6, "sqe.reserved");
static_assert(offsetof(struct wd_sqe, user_data) == 8, "sqe.user_data");
static_assert(offsetof(struct wd_sqe, model) == 16, "sqe.model");
static_assert(offsetof(struct wd_sqe, component) == 20, "sqe.component");
static_assert(offsetof(struct wd_sqe, arg) == 24, "sqe.arg");

static_assert(sizeof(struct wd_cqe) == 32, "wd_cqe size");
static_assert(offsetof(struct wd_cqe, res) == 8, "cqe.res");
static_assert(offsetof(struct wd_cqe, flags) == 12, "cqe.flags");
static_assert(offsetof(struct wd_cqe, data_len) == 14, "cqe.data_len");
static_assert(offsetof(struct wd_cqe, aux0) == 16, "cqe.aux0");
static_assert(offsetof(struct wd_cqe, aux1) == 24, "cqe.aux1");

static_assert(sizeof(struct wd_info) == WD_DATA_SLOT_SIZE, "wd_info fills one payload slot");
static_assert(offsetof(struct wd_info, flags) == 16, "info.flags");
static_assert(offsetof(struct wd_info, state_dir_len) == 28, "info.state_dir_len");
static_assert(offsetof(struct wd_info, state_dir) == 32, "info.state_dir");

static_assert(WD_DATA_SLOT_SIZE <= UINT16_MAX, "arg_len/data_len are 16-bit");
static_assert(WD_STAT_COUNT * 8 <= WD_DATA_SLOT_SIZE, "STATS fits one payload slot");

#endif
