/*
 * libweightd: the client library of weightd, the per-host model residency manager.
 *
 * A process attaches to the daemon over its Unix socket and receives three shared-memory
 * segments: its own request/completion ring pair, the read-only registry of models,
 * components and tensors, and the read-only host cache that holds the resident tensors'
 * bytes (weightd_tensor_data() points into it). Name lookups (weightd_lookup(), weightd_tensor(), weightd_model())
 * read the registry directly and cost no round trip; every other call submits one request on
 * the ring and waits for its final completion. docs/protocol.md is the wire contract.
 *
 * Conventions:
 *  - Every function that can fail returns 0 (or a documented non-negative result) on success
 *    and a negative errno value on failure. Nothing in the library prints, logs or exits.
 *  - When a call fails, weightd_last_error() returns a message that says why, in the calling
 *    thread (the buffer is thread-local and valid until that thread's next call).
 *  - Thread safety: a handle may be shared between threads. Calls that go to the daemon hold
 *    the handle's mutex from submission to final completion, so requests on one handle run
 *    one at a time; threads that need parallel requests attach a handle each. Registry reads
 *    take no lock. Progress callbacks run in the calling thread with the mutex held: they
 *    must not call back into the same handle.
 *  - Lease: the attach socket stays open while the handle lives; pins belong to it and are
 *    released by the daemon when the handle is detached or the process dies.
 *  - A dead daemon: a waiting call returns -ECONNRESET within a second when the daemon's end
 *    of the socket closes (crash, kill -9), -ESHUTDOWN when the daemon marked the ring shut
 *    down (orderly exit). From then on every call on the handle returns the same error; the
 *    caller detaches it and attaches again, to a new daemon.
 *
 * Errors common to every request (listed once here, and in each contract as "request errors"):
 *   -ECONNRESET  the daemon went away (socket closed)
 *   -ESHUTDOWN   the daemon shut down in an orderly way
 *   -EPROTO      the daemon broke the ring protocol, or marked this ring broken
 *   -ECANCELED   the daemon cancelled the request while shutting down
 *   -EINVAL      a NULL handle or a bad argument (an empty name, a tier >= WEIGHTD_TIER_MAX)
 *   -ENAMETOOLONG  a name, key, value or path longer than the protocol allows (255 bytes)
 *
 * MODEL arguments: every function that takes @model accepts a registry name ("sd-tiny") or a
 * path of a model the daemon scanned, or of one of its files: absolute, or (with a slash in
 * it) relative to the working directory. weightd_lookup() documents how one is resolved. A
 * name published in the registry costs no round trip (and the registry reads --
 * weightd_tensor(), weightd_tensor_list(), weightd_tensor_table() -- never ask the daemon
 * about a name), a path one LOOKUP per call: resolve it once with weightd_lookup() and
 * weightd_model() to name the model by its name afterwards.
 */
#ifndef WEIGHTD_H
#define WEIGHTD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*
 * Marks an old name that still works (libweightd keeps exporting it) but has a successor: a
 * program that calls it gets a compiler warning naming the call to use. docs/names.md lists
 * every name with its deprecated aliases. Define WEIGHTD_NO_DEPRECATION_WARNINGS to silence
 * them all.
 */
#if (defined(__GNUC__) || defined(__clang__)) && !defined(WEIGHTD_NO_DEPRECATION_WARNINGS)
#define WEIGHTD_DEPRECATED(use) __attribute__((deprecated("use " use)))
#else
#define WEIGHTD_DEPRECATED(use)
#endif

/* Tiers: the shared host cache, then one per CUDA device. */
#define WEIGHTD_TIER_HOST 0u
#define WEIGHTD_TIER_CUDA(n) (1u + (n))
#define WEIGHTD_TIER_MAX 16u

/* Load state of a component on one tier (the registry's enum wd_state). */
enum weightd_state {
	WEIGHTD_ABSENT = 0,
	WEIGHTD_LOADING = 1,
	WEIGHTD_RESIDENT = 2,
	WEIGHTD_EVICTING = 3,
	WEIGHTD_FAILED = 4,
};

/* weightd_load() flags. */
#define WEIGHTD_LOAD_PIN 0x01u		/* take a pin as soon as the target is resident */
#define WEIGHTD_LOAD_NO_PROGRESS 0x02u	/* no progress callbacks, only the final result */

struct weightd;

struct weightd_attach_opts {
	/*
	 * How long a waiting call polls the completion ring before it parks on the doorbell,
	 * in microseconds. 0 parks at once (lowest CPU use); a few tens of microseconds make a
	 * round trip as fast as the hardware allows when the daemon answers quickly.
	 */
	uint32_t spin_us;
	/* Requested ring sizes, powers of two in [2, 32768]; 0 lets the daemon choose. */
	uint32_t sq_entries;
	uint32_t cq_entries;
	/* A label for the daemon's logs (up to 31 bytes kept); NULL: the program's name. */
	const char *client_name;
	/*
	 * How long weightd_attach() waits for the daemon's reply to the hello, in milliseconds;
	 * 0 means 5000.
	 */
	uint32_t attach_timeout_ms;
	/*
	 * How long a blocking call (a load, a scan, any request; the hello as well) waits while
	 * the daemon shows no sign of life, in milliseconds: no completion for the call and no
	 * heartbeat from the daemon's control thread (4 a second while it runs). Then the call
	 * returns -ETIMEDOUT with "... is not responding". A load that reports progress from a
	 * live daemon never times out, however long it takes. 0 means
	 * $WEIGHTD_REQUEST_TIMEOUT_MS when set (where 0 means never), else 30000; UINT32_MAX
	 * means never; values below 1000 count as 1000.
	 */
	uint32_t request_timeout_ms;
	/*
	 * A uid besides your own and root's that the daemon may run as (a dedicated
	 * "weightd" user); 0 means none. weightd_attach() checks the socket's peer with
	 * SO_PEERCRED and refuses (-EPERM) a daemon of any other uid; $WEIGHTD_DAEMON_UID
	 * (comma-separated uids) adds more. It also refuses a socket whose directory belongs
	 * to none of these uids (docs/security.md).
	 */
	uint32_t daemon_uid;
};

#define WEIGHTD_REQUEST_TIMEOUT_ENV "WEIGHTD_REQUEST_TIMEOUT_MS"

/* Called with the bytes (or items, for a scan) done so far and the total, 0 when unknown. */
typedef void (*weightd_progress_fn)(uint64_t done, uint64_t total, void *arg);

/*
 * The message that explains the last failed call in this thread ("" when none failed yet).
 */
const char *weightd_last_error(void);

/*
 * Connects to the daemon, sends the hello, receives and maps the ring and registry segments
 * and validates both headers.
 * @socket_path: the daemon's socket; NULL means $WEIGHTD_SOCKET, else the per-user runtime
 *   directory's weightd.sock (what `weightd` listens on by default).
 * @opts: may be NULL: spin 20 us, the daemon's ring sizes, the program's name.
 * @out: receives the handle, to release with weightd_detach().
 * Returns 0; -ENOENT (no socket file) or -ECONNREFUSED (a stale socket, no daemon listening);
 * -EACCES when the daemon refuses this user, -EINVAL when it refuses the hello (its message
 * is kept); -EPROTONOSUPPORT when the daemon or a segment speaks another ABI version (the
 * message names both); -EBADMSG when the reply or a segment header is malformed;
 * -EOVERFLOW when a segment region lies outside the mapping; -EPROTO when the ring cursors
 * already violate the protocol; -EBADF, -EPERM or -EMSGSIZE when a descriptor received is
 * not a memfd sealed against shrinking and growing, or is too small; -ECONNRESET when the
 * daemon hung up during the handshake; -ETIMEDOUT when no reply came within
 * opts->attach_timeout_ms; -ENAMETOOLONG for a socket path longer than a Unix socket
 * address holds; -EINVAL for a NULL @out or ring sizes that are not powers of two; -ENOMEM;
 * or the negative errno of socket(2), connect(2), recvmsg(2) or mmap(2). The client never
 * creates the socket's directory (the daemon does): a missing one reads as -ENOENT.
 */
int weightd_attach(const char *socket_path, const struct weightd_attach_opts *opts,
		   struct weightd **out);

/*
 * Closes the connection (which ends the lease: the daemon drops this handle's pins) and
 * unmaps the segments. @w may be NULL. No call may be in progress on @w.
 */
void weightd_detach(struct weightd *w);

/* The socket path @w is connected to. */
const char *weightd_socket_path(const struct weightd *w);

/* The id the daemon gave this client (also shown in the daemon's logs). */
uint32_t weightd_client_id(const struct weightd *w);

/*
 * The daemon's process id, as the kernel reports the socket peer (SO_PEERCRED).
 * Returns the pid (> 0), or the negative errno of getsockopt(2).
 */
int weightd_daemon_pid(const struct weightd *w);

/*
 * The attach socket, for an event loop that wants to notice a dead daemon without making
 * requests: it polls readable or hung up (POLLIN/POLLHUP) when the daemon goes away. The
 * caller must not read, write or close it. Returns the descriptor, or -EINVAL for NULL.
 */
int weightd_fd(const struct weightd *w);

/*
 * A no-op round trip through the daemon (latency probes, liveness checks).
 * Returns 0 or a request error.
 */
int weightd_ping(struct weightd *w);

/*
 * Resolves @model to its registry id, as every function that takes a MODEL does: a name
 * published in the registry is read there, with no round trip; anything else is asked of the
 * daemon (LOOKUP), which knows names published since and resolves the path of a model it
 * scanned, or of one of its files, through its catalog (symlinks resolved). A path with a
 * slash that does not start with one is relative to the caller's working directory, and is
 * made absolute here before it goes to the daemon.
 * Returns 0 and stores the id in @model_id (may be NULL); -ENOENT when the daemon knows no
 * such model or path; -ENAMETOOLONG when the absolute path is longer than 255 bytes;
 * -EBADMSG when the registry is corrupt; -EAGAIN when its record stayed under rewrite for
 * the whole retry budget; or a request error.
 */
int weightd_lookup(struct weightd *w, const char *model, uint32_t *model_id);

/* weightd_model_info.flags */
#define WEIGHTD_MODEL_STALE 0x1u	/* its files changed or vanished since it was published */

/* What the registry says about a model. */
struct weightd_model_info {
	uint32_t id;
	uint32_t n_components;
	uint32_t n_tensors;
	uint32_t flags;			/* WEIGHTD_MODEL_* */
	uint32_t pins;			/* pins all clients hold on it or its components */
	uint64_t nbytes;		/* sum of its tensors' bytes */
	uint64_t fingerprint;		/* content fingerprint from the catalog */
	char name[256];
	char arch[32];			/* detected architecture ("sd1", "llama"), or "" */
};

/* What the registry says about a component, with its state on every tier. */
struct weightd_component_info {
	uint32_t id;
	uint32_t model;			/* the owning model's id */
	uint32_t n_tensors;
	uint64_t nbytes;
	uint64_t fingerprint;
	char name[256];			/* "unet", "vae"; "" for a single-file model */
	struct {
		uint32_t state;		/* enum weightd_state */
		int32_t error;		/* negative errno when WEIGHTD_FAILED */
		uint64_t done;		/* bytes loaded so far while WEIGHTD_LOADING */
		uint64_t total;
	} tiers[WEIGHTD_TIER_MAX];
};

/* How full the daemon's registry is (its capacity is fixed when the daemon starts). */
struct weightd_registry_usage {
	uint32_t models, model_cap;
	uint32_t components, component_cap;
	uint32_t tensors, tensor_cap;
	uint64_t names_used, names_size;	/* the area for tensor names over 255 bytes */
};

/* Fills @out from the registry header, with no round trip. Returns 0 or -EINVAL. */
int weightd_registry_usage(struct weightd *w, struct weightd_registry_usage *out);

/*
 * Reads model @id (ids are dense from 0) or component @id from the registry, with no round
 * trip; iterate from 0 until -ENOENT to list them all.
 * Returns 0; -ENOENT past the last published record; -EAGAIN; -EBADMSG; -EINVAL (NULL).
 */
int weightd_model(struct weightd *w, uint32_t id, struct weightd_model_info *out);
int weightd_component(struct weightd *w, uint32_t id, struct weightd_component_info *out);

/* What the registry says about a tensor. */
struct weightd_tensor_info {
	uint32_t id;
	uint32_t model;
	uint32_t component;
	uint32_t dtype;			/* safetensors dtype, numbered as in protocol.md */
	char dtype_name[16];		/* "F16", "BF16", ... */
	uint32_t rank;
	uint64_t shape[16];
	uint64_t nbytes;
	uint32_t resident;		/* bit t set: resident on tier t */
	uint32_t host_state;		/* its component's enum weightd_state on host */
	uint64_t host_offset;		/* in the host cache, when bit 0 of resident is set */
};

/*
 * Resolves tensor @name of @model with no round trip (one LOOKUP for a model named by a
 * path). @component names the component ("unet"), or is NULL to search the whole model.
 * Returns 0 and fills @out; -ENOENT (no such model, component or tensor); -ENOTUNIQ when
 * @component is NULL and several components have a tensor of that name; -ENAMETOOLONG;
 * -EAGAIN; -EBADMSG; -EINVAL.
 */
int weightd_tensor(struct weightd *w, const char *model, const char *component,
		   const char *name, struct weightd_tensor_info *out);

/*
 * The size of a name field: model and component names are up to WEIGHTD_NAME_MAX - 1 bytes.
 * Tensor names are up to WEIGHTD_TENSOR_NAME_MAX - 1 bytes (the format sets no limit; the
 * registry keeps longer ones whole): weightd_tensor() resolves them, weightd_tensor_table()
 * and weightd_tensor_name() return them.
 */
#define WEIGHTD_NAME_MAX 256u
#define WEIGHTD_TENSOR_NAME_MAX 65536u

/*
 * Copies the full name of tensor @id (weightd_tensor_info.id) into @buf (@size bytes, with
 * the NUL). Returns its length; -ERANGE when @size is too small (the message says how much is
 * needed); -ENOENT; -EAGAIN; -EBADMSG; -EINVAL.
 */
int weightd_tensor_name(struct weightd *w, uint32_t id, char *buf, size_t size);

/*
 * Lists the tensors of @model (or of one @component; NULL for every component) with no round
 * trip, in registry order, as weightd_tensor() describes each: fills up to @max records into
 * @out and, when @names is not NULL, record i's NUL-terminated tensor name into
 * @names + i * WEIGHTD_NAME_MAX (so @names holds @max * WEIGHTD_NAME_MAX bytes). One call
 * replaces a name lookup per tensor, for a binding that wants every tensor of a pin.
 * Returns the number of tensors the target has; when that is more than @max only @max were
 * filled (call again with room for all). Errors: -ENOENT (no such model or component);
 * -ENAMETOOLONG (also when @names is given and a listed tensor's name is longer than a slot
 * holds: never cut, use weightd_tensor_name()); -EAGAIN; -EBADMSG (a corrupt record);
 * -EOVERFLOW; -EINVAL (NULL @w, or NULL @out with @max > 0).
 */
int weightd_tensor_list(struct weightd *w, const char *model, const char *component,
			struct weightd_tensor_info *out, char *names, uint32_t max);

/*
 * Makes @model (or one @component of it; NULL for every component) resident on @tier.
 * @flags: WEIGHTD_LOAD_*. @progress (may be NULL) is called with bytes done and total as the
 * daemon streams progress; @arg is passed through.
 * Returns 0 once resident (and pinned, with WEIGHTD_LOAD_PIN); -ENOENT for an unknown model
 * or component; -EFBIG when a component can never fit the tier's budget; -ENOSPC when pinned
 * entries leave no room; -ESTALE when a file changed since it was scanned; -ENOTSUP when
 * this daemon cannot load to that tier (the message says why); -EBADMSG for a corrupt file;
 * or a request error. weightd_load_ex() takes a form and reports what the load did.
 */
int weightd_load(struct weightd *w, const char *model, const char *component, unsigned int tier,
		 unsigned int flags, weightd_progress_fn progress, void *arg);

/* Dtypes a load can convert F32 tensors to (the safetensors dtype numbering of protocol.md). */
#define WEIGHTD_DTYPE_F16 9u
#define WEIGHTD_DTYPE_BF16 10u

/* What to load of each component, and in which form (weightd_load_ex()). */
struct weightd_load_opts {
	/*
	 * Store F32 tensors as WEIGHTD_DTYPE_F16 or WEIGHTD_DTYPE_BF16 (round to nearest even);
	 * other dtypes stay as stored. 0: everything as stored. A converted copy is a separate
	 * cache entry; the registry describes the copy loaded last (weightd_tensor() shows its
	 * dtype and size).
	 */
	unsigned int dtype;
	/* Only the tensors whose name starts with @prefix, or only those in @names (their
	 * names separated by one byte each must fit in 256 bytes). NULL: every tensor. */
	const char *prefix;
	const char *const *names;
	size_t n_names;
};

/* What a load did. */
struct weightd_load_result {
	uint64_t bytes;			/* tensor bytes resident for the target */
	uint64_t read_bytes;		/* bytes the loads it started or joined read from disk */
	int hit;			/* 1: everything was resident already (read_bytes 0) */
	uint64_t elapsed_ns;		/* from submission to the final completion */
};

/*
 * weightd_load() with a form (@opts, may be NULL: all tensors as stored) and a report
 * (@res, may be NULL). A selection needs a component or a model with a single component in
 * practice, since it applies to each target component (one that has no matching tensor is
 * an error). Several requesters of the same component share one load (one disk read).
 * Returns 0 once resident (and pinned with WEIGHTD_LOAD_PIN); -ENOENT (unknown model,
 * component, or a name in @opts->names no file has); -EFBIG when a component can never fit
 * the host budget ("component X needs N bytes, host budget is B"); -ENOSPC when pinned or
 * kept-alive entries leave no room; -ESTALE when a file changed since the daemon scanned it
 * (rescan, then load); -EBADMSG when a file is corrupt (or fails --verify); -ENOTSUP for a GPU
 * tier (the message says why); -ECANCELED when the daemon shut down during the load;
 * -EINVAL for bad @opts; or a request error.
 */
int weightd_load_ex(struct weightd *w, const char *model, const char *component,
		    unsigned int tier, unsigned int flags, const struct weightd_load_opts *opts,
		    weightd_progress_fn progress, void *arg, struct weightd_load_result *res);

/*
 * The bytes of tensor @t in the shared host cache, mapped read-only in this process (a
 * write faults with SIGSEGV). @t comes from weightd_tensor(), which reads the registry at
 * one instant: call it again after a load.
 * The pointer stays valid while the handle is attached, but the bytes it shows are @t's only
 * while its component stays resident: pin the component (weightd_pin(), WEIGHTD_LOAD_PIN)
 * for as long as you use them, or an eviction may reuse the memory for another component.
 * The address is aligned as the load laid the tensor out (64 bytes), an empty tensor gets a
 * valid address.
 * Returns the address, or NULL with errno (and weightd_last_error()) set: ENODATA when bit 0
 * (host) of t->resident is clear; EFAULT when t->host_offset + t->nbytes lies outside the
 * mapping (the registry is semi-trusted); EINVAL for a NULL argument.
 */
const void *weightd_tensor_data(struct weightd *w, const struct weightd_tensor_info *t);

/* ---- the GPU tier ---------------------------------------------------------------------- */

/* A component's VRAM allocation on one GPU, imported into this process. */
struct weightd_device_map;

/*
 * Maps component @component of @model (NULL: the model's only component), resident on GPU
 * @device (tier cuda:@device; LOAD it there first), into this process: the daemon sends the
 * allocation's file descriptor on the attach socket (DEVICE_MAP) and this call imports it
 * with the same device layer the daemon uses (the CUDA driver, or the emulated device when
 * the daemon runs one: the client then needs the same $WEIGHTD_GPU_EMULATE). The mapping
 * holds a reference: the daemon neither evicts nor frees the allocation until
 * weightd_device_unmap(), or until this client's connection closes (exit or crash). Mapping a
 * component twice from one handle holds one reference, which the first unmap drops.
 * @opts: the form of the copy to map, the one a LOAD to cuda:@device with the same form made
 *   (NULL: all tensors as stored). With @opts->dtype (WEIGHTD_DTYPE_F16 or
 *   WEIGHTD_DTYPE_BF16) a separate allocation in which F32 tensors are that dtype (converted
 *   on the GPU, bit for bit the host tier's conversion) and have half their size:
 *   weightd_device_read() reads that many bytes. With a selection (@opts->prefix or
 *   @opts->names, the load's) a separate allocation that holds only the selected tensors, in
 *   a compact layout of its own; the others are not in the mapping
 *   (weightd_tensor_device_info() answers -ENOENT).
 * @device is the daemon's ordinal (its tier cuda:@device). The daemon names the GPU by its
 * PCI bus id, and this process opens the GPU with that bus id, whatever its own ordinal for
 * it is (CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER and containers renumber GPUs):
 * weightd_device_ordinal() says which. Every CUDA call made for the mapping (here, in
 * weightd_device_read() and weightd_device_unmap()) leaves the calling thread's current
 * context as it found it.
 * Returns 0 and sets *@out; -ENOTSUP (no such GPU, or no GPU tier: the message says why);
 * -ENODATA (not resident there, or not in that form); -EINVAL (also for bad @opts); -ENOENT;
 * -EPROTO (a malformed message on the socket); -ETIMEDOUT; the import's error (-ENODEV: this
 * process cannot see that GPU, the message names its bus id; -EBUSY: it is in
 * EXCLUSIVE_PROCESS compute mode).
 * This is the one current device-map call (docs/names.md says why it keeps the _opts name).
 */
int weightd_device_map_opts(struct weightd *w, const char *model, const char *component,
			    unsigned int device, const struct weightd_load_opts *opts,
			    struct weightd_device_map **out);

/* Deprecated: weightd_device_map_opts() with NULL @opts. */
int weightd_device_map(struct weightd *w, const char *model, const char *component,
		       unsigned int device, struct weightd_device_map **out)
	WEIGHTD_DEPRECATED("weightd_device_map_opts");

/* Deprecated: weightd_device_map_opts() with a form whose only field is .dtype = @dtype. */
int weightd_device_map_ex(struct weightd *w, const char *model, const char *component,
			  unsigned int device, unsigned int dtype, struct weightd_device_map **out)
	WEIGHTD_DEPRECATED("weightd_device_map_opts");

/* This process's ordinal of the GPU @m is on (for DLPack, torch.device): -1 for NULL. */
int weightd_device_ordinal(const struct weightd_device_map *m);

/* The allocation: device address in this process (emulated: a host address), and bytes. */
uint64_t weightd_device_base(const struct weightd_device_map *m);
uint64_t weightd_device_size(const struct weightd_device_map *m);

/*
 * Device address of tensor @t (from weightd_tensor()) inside mapping @m: the allocation's
 * base plus the tensor's offset. Returns 0 and sets *@dptr; -ENOENT when @t is not a tensor
 * of the mapped component; -EINVAL for a NULL argument.
 */
int weightd_tensor_device_ptr(const struct weightd_device_map *m,
			      const struct weightd_tensor_info *t, uint64_t *dptr);

/*
 * Tensor @t as mapping @m holds it: its device address, its dtype there (the safetensors
 * numbering of protocol.md; in a converted copy an F32 tensor is WEIGHTD_DTYPE_F16 or
 * WEIGHTD_DTYPE_BF16, whatever form the registry shows for the host tier) and its size in
 * bytes. Any of @dptr, @dtype, @nbytes may be NULL. Returns 0; -ENOENT when @t is not a
 * tensor of the mapped component; -EINVAL for a NULL @m or @t.
 */
int weightd_tensor_device_info(const struct weightd_device_map *m,
			       const struct weightd_tensor_info *t, uint64_t *dptr,
			       unsigned int *dtype, uint64_t *nbytes);

/*
 * Copies tensor @t's bytes from the GPU into @dst (@size bytes, at least t->nbytes), with the
 * device layer's device-to-host copy. Returns 0, -ENOENT, -EINVAL (@size too small), or the
 * copy's error.
 */
int weightd_device_read(const struct weightd_device_map *m, const struct weightd_tensor_info *t,
			void *dst, size_t size);

/* Unmaps @m and drops its reference (UNPIN of the component on that GPU). NULL is ignored. */
void weightd_device_unmap(struct weightd *w, struct weightd_device_map *m);

#define WEIGHTD_DEVICE_CUDA 0u
#define WEIGHTD_DEVICE_EMULATED 1u

/* One GPU of the daemon's device tier. */
struct weightd_device_info {
	uint32_t ordinal;		/* cuda:ordinal */
	uint32_t kind;			/* WEIGHTD_DEVICE_* */
	int32_t numa_node;		/* local NUMA node; -1: unknown or emulated */
	uint32_t entries;		/* components cached on it */
	uint64_t total_bytes;
	uint64_t budget;		/* the daemon's --device-budget for it */
	uint64_t used;
	uint64_t hits, misses, evictions, evict_bytes;
	uint64_t load_bytes;		/* bytes copied into it */
	char name[40];
	uint32_t flags;			/* WEIGHTD_DEVICE_F_*: how host -> VRAM copies run */
	int16_t fixed_err;		/* NO_FIXED_BUFFERS: io_uring's -errno */
	int16_t locked_err;		/* SLOTS_PAGEABLE: page-locking's -errno */
};
#define WEIGHTD_DEVICE_F_NO_STAGING 0x1u	/* no staging ring (pageable copies, no disk
						 * streaming) */
#define WEIGHTD_DEVICE_F_SLOTS_PAGEABLE 0x2u	/* staging slots not page-locked */
#define WEIGHTD_DEVICE_F_NO_FIXED_BUFFERS 0x4u	/* slots not io_uring fixed buffers */
#define WEIGHTD_DEVICE_F_OFF_NODE 0x8u		/* slots not on the GPU's NUMA node */

/*
 * Asks the daemon for room on GPU @device (its cuda:@device): components on it that no client
 * maps or pins are evicted, highest eviction score first (demoted to the host cache where it
 * has room, as an admission would evict them), until @bytes are freed or nothing evictable
 * is left. For a process that ran out of VRAM next to the daemon's cache (whose default
 * budget is 90% of the GPU). Returns once the VRAM is released: the bytes freed (0: nothing
 * could be evicted; possibly more than @bytes, whole components go), or -ENOTSUP (no such
 * GPU, or no GPU tier), -EINVAL, or a request error.
 */
int64_t weightd_device_trim(struct weightd *w, unsigned int device, uint64_t bytes);

/*
 * The daemon's GPUs: up to @max into @out. Returns how many the daemon has (0: host-only,
 * with the reason in @why, @why_size bytes, when not NULL), or a negative errno.
 */
int weightd_devices(struct weightd *w, struct weightd_device_info *out, unsigned int max,
		    char *why, size_t why_size);

/* weightd_daemon_info.flags */
#define WEIGHTD_INFO_FIXED_BUFFERS 0x1u	/* io_uring reads into registered (fixed) buffers */
#define WEIGHTD_INFO_FIXED_FILES 0x2u	/* io_uring uses a registered file table */
#define WEIGHTD_INFO_NO_LOADER 0x8u	/* the daemon's host tier has no io_uring loader */

/* What the daemon runs with (INFO). */
struct weightd_daemon_info {
	uint32_t flags;			/* WEIGHTD_INFO_* */
	int32_t fixed_buffers_error;	/* negative errno io_uring refused the fixed buffers
					   with (-ENOMEM: RLIMIT_MEMLOCK too small), or 0 */
	int32_t fixed_files_error;	/* the same for the registered file table */
	uint32_t reserved;
	uint64_t memlock_limit;		/* the daemon's RLIMIT_MEMLOCK, bytes; UINT64_MAX: none */
	uint64_t staging_bytes;		/* the loader's staging buffers (what registering locks) */
	char state_dir[256];		/* its state directory: its catalog is catalog.db there */
};

/*
 * Asks the daemon how it runs: its I/O path (registered buffers and files, or why not) and
 * its state directory, where it keeps the catalog that `weightctl ls` shows.
 * Returns 0 and fills @out; -ENAMETOOLONG when the state directory is longer than a reply
 * holds (224 bytes; the other fields are filled); -EPROTO for a malformed reply;
 * -EINVAL (NULL); or a request error (-EOPNOTSUPP from a daemon older than this call).
 */
int weightd_daemon_info(struct weightd *w, struct weightd_daemon_info *out);

/* weightd_cache_entry.flags */
#define WEIGHTD_CACHE_LOADING 0x1u	/* being loaded; bytes are reserved */
#define WEIGHTD_CACHE_SUBSET 0x2u	/* a selection of the component's tensors */
#define WEIGHTD_CACHE_PREFETCHED 0x4u	/* prefetched (co-access) and not requested since */
#define WEIGHTD_CACHE_STALE 0x10u	/* holds the bytes of files that changed since (a rescan saw
					 * it); the next load of the component reads them again */
#define WEIGHTD_CACHE_SHARED 0x8u	/* one copy shared by several components (dedup) */

/* One entry of the host cache. */
struct weightd_cache_entry {
	uint32_t model;			/* a model and component it serves (the first bound) */
	uint32_t component;
	uint64_t bytes;			/* bytes of the host cache it occupies */
	uint64_t idle_ns;		/* since it was last requested */
	uint32_t pins;			/* client pins covering it */
	uint32_t dtype;			/* converted to this dtype; 0: as stored */
	uint32_t flags;			/* WEIGHTD_CACHE_* */
	uint32_t n_tensors;
	char model_name[256];		/* from the registry; "" if unknown */
	char component_name[256];
};

/*
 * Lists host cache entries from index @start, up to @max of them, into @out; *@n_out gets
 * how many were written. Returns the number of entries in the cache (>= 0) or a request
 * error.
 */
int weightd_cache_list(struct weightd *w, uint32_t start, struct weightd_cache_entry *out,
		       uint32_t max, uint32_t *n_out);

/* The host tier's counters (weightd_host_stats()). */
struct weightd_host_stats {
	uint64_t budget;		/* bytes the host cache may hold */
	uint64_t bytes;			/* bytes held now */
	uint64_t entries;
	uint64_t hits, misses;		/* component requests found resident / not */
	uint64_t evictions, evict_bytes;
	uint64_t prefetches, prefetch_hits;
	uint64_t loads;			/* loads started: each read its files from disk once */
	uint64_t read_bytes;		/* bytes those loads read */
	uint64_t coalesced;		/* requests that joined a load already running */
	uint64_t dedup_bytes;		/* bytes stored once instead of twice (identical content) */
	uint64_t refused;		/* admissions refused */
	uint64_t failed;		/* loads failed or cancelled */
	uint64_t cuda_bytes;		/* bytes on GPU tiers (0 in this build) */
	uint64_t mapped_bytes;		/* the host cache this client maps */
	/* Of read_bytes: read with O_DIRECT (not in the page cache when the load was planned),
	 * and read through the page cache (0 and 0 from a daemon too old to count them). */
	uint64_t read_direct_bytes, read_buffered_bytes;
};

/*
 * Fills @out with the host tier's part of a STATS reply: the host_* counters of
 * weightd_counters() (and `weightctl stats`), and the bytes of host cache this client maps.
 * Returns 0 or a request error.
 */
int weightd_host_stats(struct weightd *w, struct weightd_host_stats *out);

/* The old name of struct weightd_host_stats (the same fields), for weightd_cache_stats(). */
struct weightd_cache_stats {
	uint64_t budget, bytes, entries, hits, misses, evictions, evict_bytes;
	uint64_t prefetches, prefetch_hits, loads, read_bytes, coalesced, dedup_bytes;
	uint64_t refused, failed, cuda_bytes, mapped_bytes;
	uint64_t read_direct_bytes, read_buffered_bytes;
};

/* Deprecated: weightd_host_stats(), which says which counters it reads (not the CACHE op). */
int weightd_cache_stats(struct weightd *w, struct weightd_cache_stats *out)
	WEIGHTD_DEPRECATED("weightd_host_stats");

/*
 * Drops @model (or @component; NULL for all) from @tier.
 * Returns 0; -EBUSY when another client pins it; -ENOENT; or a request error.
 */
int weightd_unload(struct weightd *w, const char *model, const char *component,
		   unsigned int tier);

/*
 * Pins @model (or @component; NULL for all) on @tier for as long as this handle lives, or
 * until weightd_unpin(): the daemon will not evict it. Pins nest: two pins need two unpins.
 * Returns 0; -ENOENT for an unknown model or component; or a request error.
 */
int weightd_pin(struct weightd *w, const char *model, const char *component, unsigned int tier);

/*
 * Releases a pin this handle holds. Returns 0; -ENOENT when it holds none on that target;
 * or a request error.
 */
int weightd_unpin(struct weightd *w, const char *model, const char *component,
		  unsigned int tier);

/* The daemon's view of one target on one tier (weightd_state()). */
struct weightd_state_info {
	uint32_t state;			/* enum weightd_state */
	uint64_t done;			/* bytes loaded so far */
	uint64_t total;			/* bytes to load */
};

/*
 * Asks the daemon (STATE) for the state of @model (or @component; NULL for the whole model)
 * on @tier: for a whole model failed > loading > evicting > resident, and resident only when
 * every component is. Returns the state (enum weightd_state, >= 0) and fills @out (may be
 * NULL); -ENOENT; or a request error. `weightctl state` prints it.
 */
int weightd_state(struct weightd *w, const char *model, const char *component,
		  unsigned int tier, struct weightd_state_info *out);

/* The same fields as struct weightd_state_info, for the deprecated weightd_status(). */
struct weightd_status {
	uint32_t state;
	uint64_t done;
	uint64_t total;
};

/* Deprecated: weightd_state(), under the name `weightctl status` gives the daemon's status. */
int weightd_status(struct weightd *w, const char *model, const char *component,
		   unsigned int tier, struct weightd_status *out)
	WEIGHTD_DEPRECATED("weightd_state");

/*
 * Has the daemon discover models under directory @dir (absolute, up to 255 bytes; NULL
 * rescans the daemon's --models roots) and publish new ones in the registry. @progress sees
 * files done of files found.
 * Returns the number of models found (>= 0; a directory that is missing or unreadable is
 * one of the scan's problems, logged by the daemon, and yields 0; after a scan with
 * problems weightd_last_error() holds "scan: N problem(s); first: ..."); -EINVAL when @dir
 * is NULL and the daemon has no roots; -EPERM when @dir lies outside the daemon's model
 * roots and the caller is neither root nor the daemon's own user (docs/security.md); or a
 * request error.
 */
int weightd_scan(struct weightd *w, const char *dir, weightd_progress_fn progress, void *arg);

/* weightd_validate() flags. */
#define WEIGHTD_VALIDATE_DEEP 0x1u	/* also read every tensor's bytes (progress in bytes) */

/*
 * Has the daemon re-read and check the files of @model (or @component; NULL for all): the
 * headers, and with WEIGHTD_VALIDATE_DEEP every byte of tensor data.
 * Returns 0 when valid; -EBADMSG when not (weightd_last_error() names the file, tensor and
 * offset); -ENOENT; -EINVAL for unknown @flags; or a request error.
 */
int weightd_validate(struct weightd *w, const char *model, const char *component,
		     unsigned int flags, weightd_progress_fn progress, void *arg);

/*
 * Reads metadata @key of @model into @buf (@size bytes, NUL-terminated).
 * Returns the value's length (>= 0); -ENOENT when the model or the key does not exist;
 * -ERANGE when @buf cannot hold the value and its NUL; -EOVERFLOW when the value is longer
 * than one reply carries (256 bytes; `weightctl meta` reads it from the catalog); or a
 * request error.
 */
int weightd_meta_get(struct weightd *w, const char *model, const char *key, char *buf,
		     size_t size);

/*
 * Sets metadata @key of @model to @value; the key and value together take at most 254 bytes.
 * Returns 0; -ENOENT for an unknown model; -ENAMETOOLONG when they do not fit; or a request
 * error.
 */
int weightd_meta_set(struct weightd *w, const char *model, const char *key, const char *value);

/*
 * The daemon's counters: the one set that `weightctl stats` and the Prometheus endpoint
 * show, under the names weightd_counter_name() gives (docs/metrics.md says what each
 * counts). Fills @v[i] for i < @max (0 past what the daemon sent) and returns how many
 * values the daemon sent (possibly more than @max), or a request error; -EINVAL for a NULL
 * @w, or a NULL @v with @max > 0.
 */
int weightd_counters(struct weightd *w, uint64_t *v, unsigned int max);

/*
 * Counter @i's name ("host_hits"; /metrics exports it as weightd_NAME, with _total after a
 * counter's) and, in *@is_counter (may be NULL), 1 when it only grows, 0 for a gauge.
 * NULL for an index that is not one of the set (this client's own values, packed words,
 * or past the end): iterate i from 0 while i < the count weightd_counters() returned.
 */
const char *weightd_counter_name(unsigned int i, int *is_counter);

/* Counters from the daemon (STATS). */
struct weightd_stats {
	/* This client's lease, as the daemon counts it. */
	uint64_t requests;		/* requests this client made, the STATS itself included */
	uint64_t errors;		/* of which completed with an error */
	uint64_t pins;			/* pins this client holds now */
	/* The whole daemon. */
	uint64_t clients;		/* attached clients now (including this one) */
	uint64_t ring_segments;		/* live client ring segments */
	uint64_t pins_total;		/* pins held by all clients */
	uint64_t models;		/* models published in the registry */
	uint64_t uptime_ns;
	uint64_t host_budget;		/* bytes the host cache may use, 0 when unset */
	uint64_t host_bytes;		/* bytes of the host cache in use */
	uint64_t requests_total;	/* requests served to every client */
	uint64_t errors_total;
	/* The host tier's (the same values as weightd_host_stats() and /metrics,
	 * docs/metrics.md): loads started, bytes they read from disk, evictions and the bytes
	 * they freed, component requests found resident (hits) and not (misses). */
	uint64_t loads, load_bytes, evictions, evict_bytes, hits, misses;
	/* How many u64 values the daemon's reply held (newer daemons may send more). */
	uint32_t n_values;
	/* The host cache's pages: their size in bytes (0 from a daemon too old to say) and
	 * their kind, WEIGHTD_PAGES_*. */
	uint32_t host_page_kind;
	uint64_t host_page_size;
};

#define WEIGHTD_PAGES_SMALL 0u		/* 4 KiB pages */
#define WEIGHTD_PAGES_THP 1u		/* transparent huge pages (shmem THP) */
#define WEIGHTD_PAGES_HUGETLB 2u	/* hugetlb pages */

/* "4k", "thp", "hugetlb", or "?". */
const char *weightd_pages_name(uint32_t kind);

/*
 * Fills @out from a STATS request.
 * Returns 0 or a request error.
 */
int weightd_stats(struct weightd *w, struct weightd_stats *out);

/*
 * Asks the daemon to exit. The daemon answers, marks every ring shut down and exits;
 * afterwards every call on @w returns -ESHUTDOWN.
 * Returns 0; -EPERM when this client is not privileged; or a request error.
 */
int weightd_shutdown(struct weightd *w);

/* "absent", "loading", "resident", "evicting", "failed", or "?" for another value. */
const char *weightd_state_name(unsigned int state);

/* "host", "cuda:0", ... into @buf (@size bytes); returns @buf. */
const char *weightd_tier_name(unsigned int tier, char *buf, size_t size);

/* ---- bulk tensor table (bindings that want every tensor of a pin in one call) ---------- */

/* One host-resident tensor in a weightd_tensor_table() result. */
struct weightd_tensor_loc {
	uint64_t offset;		/* of its first byte from the table's base (0 when empty) */
	uint64_t nbytes;
	uint32_t dtype;			/* safetensors dtype, numbered as in protocol.md */
	uint32_t rank;			/* shape[rank..15] are 0 */
	uint32_t name_off;		/* its name is names[name_off], name_len bytes and a NUL */
	uint32_t name_len;
	uint64_t shape[16];
};

/* What a weightd_tensor_table() call found. */
struct weightd_tensor_table {
	const void *base;	/* the extent's start in this process's read-only mapping of the
				   host cache: page-aligned, at or below the lowest listed tensor;
				   NULL when no listed tensor has a byte */
	uint64_t nbytes;	/* bytes from base to the end of the highest listed tensor */
	uint64_t host_offset;	/* base's offset in the host cache (a multiple of the page size) */
	int32_t host_fd;	/* the host cache's read-only descriptor, owned by the handle
				   (valid until weightd_detach()): a binding may mmap the extent
				   itself, at host_offset, rather than use base */
	uint32_t n;		/* tensors listed (host-resident ones of the target) */
	uint32_t absent;	/* tensors of the target not listed: not resident on the host (or
				   not yet published) */
	uint32_t n_components;	/* components the listed tensors belong to */
	uint64_t names_len;	/* bytes of @names used (each name and its NUL) */
};

/*
 * Lists, with no round trip and in registry order, every tensor of @model (or of one
 * @component; NULL for every component) that is resident on the host tier: record i goes to
 * @out[i] (up to @max records) and its name, NUL-terminated, to @names + out[i].name_off (up
 * to @names_size bytes; names follow each other, so @names is one NUL-separated blob). Every
 * listed tensor lies inside the read-only host-cache mapping (checked here, as
 * weightd_tensor_data() does, against hostile registry contents), and @tab->base .. + nbytes is
 * the one extent that holds them all: tensor i is at base + out[i].offset (host-cache offset
 * host_offset + out[i].offset). The bytes stay
 * valid while the caller holds a pin on the target (WEIGHTD_LOAD_PIN, weightd_pin()); without
 * one the daemon may evict and reuse them.
 * Returns 0 and fills @tab; -ENOBUFS when @max records or @names_size bytes are too few:
 * @tab->n and @tab->names_len then say how many are needed (call again with that room);
 * -ENOENT (no such model or component); -EFAULT (the registry places a tensor outside the
 * host cache: the message names it and its offset); -ENAMETOOLONG; -EAGAIN; -EBADMSG (a
 * corrupt record); -EINVAL (NULL @w or @tab, or NULL @out or @names with room given).
 */
int weightd_tensor_table(struct weightd *w, const char *model, const char *component,
			 struct weightd_tensor_loc *out, uint32_t max, char *names,
			 size_t names_size, struct weightd_tensor_table *tab);

/* ---- metrics and events from the registry mapping (no round trip) -------------------- */

#define WEIGHTD_HIST_BUCKETS 28u	/* bucket i <= 1 us << i; the last: everything above */
#define WEIGHTD_ERR_CLASSES 6u		/* validation, io, admission, protocol, device, other */
#define WEIGHTD_ALERT_KINDS 5u		/* budget, slow_load, error_burst, pin_ttl, catalog */
#define WEIGHTD_NUMA_SLOTS 9u		/* nodes 0..7, then unbound */
#define WEIGHTD_EVENT_TEXT 88u

/* A latency histogram: non-cumulative bucket counts, and the sum of the values. */
struct weightd_hist {
	uint64_t count;
	uint64_t sum_ns;
	uint64_t bucket[WEIGHTD_HIST_BUCKETS];
};

/* The daemon's metrics block (docs/protocol.md, registry section). */
struct weightd_metrics {
	struct weightd_hist rtt;	/* shard pick-up to CQE publish, inline requests */
	struct weightd_hist load[WEIGHTD_TIER_MAX];	/* completed loads by tier */
	uint64_t errors[WEIGHTD_ERR_CLASSES];
	uint64_t alerts_total[WEIGHTD_ALERT_KINDS];
	uint64_t alerts_active[WEIGHTD_ALERT_KINDS];
	uint64_t numa_bytes[WEIGHTD_NUMA_SLOTS];	/* host cache bytes by placement node */
	uint64_t host_budget, host_used;
	uint64_t free_extents, largest_free;	/* host cache arena fragmentation */
	uint64_t updated_wall_ns;	/* when the host cache words were refreshed */
	uint64_t events;		/* events written so far (see weightd_events()) */
};

/*
 * Copies the metrics block from the registry this handle maps: relaxed reads of words that
 * only grow, so two histograms (or a count and its buckets) may be one update apart.
 * Returns 0; -ENODATA when the daemon's registry has no metrics block; -EINVAL.
 */
int weightd_metrics(struct weightd *w, struct weightd_metrics *out);

/* One alert event. */
struct weightd_event {
	uint64_t index;			/* 0-based, in the order the daemon wrote them */
	uint64_t wall_ns;		/* CLOCK_REALTIME */
	uint64_t value, limit;		/* measured and threshold, in the kind's unit */
	uint32_t kind;			/* weightd_alert_name() */
	uint32_t flags;			/* 1: raised, 2: cleared */
	char text[WEIGHTD_EVENT_TEXT];
};

/*
 * Copies up to @max of the most recent events (the registry keeps the last 64), oldest
 * first, into @out. Returns how many were copied (>= 0); -ENODATA without a metrics block;
 * -EBADMSG for a corrupt event record; -EINVAL.
 */
int weightd_events(struct weightd *w, struct weightd_event *out, size_t max);

/* "budget", "slow_load", "error_burst", "pin_ttl", "catalog", or "unknown". */
const char *weightd_alert_name(unsigned int kind);

/* "validation", "io", "admission", "protocol", "device", "other", or "unknown". */
const char *weightd_error_class_name(unsigned int cls);

#ifdef __cplusplus
}
#endif

#endif
