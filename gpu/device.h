/*
 * A GPU as the device tier drives it. Everything the daemon and the client library do with
 * a GPU goes through one table of operations, struct gpu_ops, with two implementations:
 *
 *   gpu/cuda_dev.c  the CUDA driver API (gpu/cuda.h, dlopen'ed): VMM allocations made with
 *                   cuMemCreate for POSIX file-descriptor handles, mapped with cuMemMap and
 *                   cuMemSetAccess; copies with cuMemcpyHtoDAsync on several streams (copy
 *                   engines, never kernels); events to know when a staging buffer is free.
 *   gpu/emu_dev.c   an emulated device for machines with no GPU (CI, development): "VRAM" is
 *                   a memfd, a device address is an address in the daemon's mapping of it,
 *                   a stream is a thread that copies in submission order, and the shareable
 *                   handle is the memfd itself. It is chosen only when $WEIGHTD_GPU_EMULATE
 *                   names a device count ("1", "2:8G" for two devices of 8 GiB), and the
 *                   daemon logs, reports in STATUS and says in `weightctl status` that the
 *                   GPU tier is emulated. Its purpose is to run the device tier's own logic
 *                   (admission, staging ring, fd export, client import, reference counts,
 *                   eviction and demotion) through the same interface as the GPU path, in
 *                   tests that can run everywhere. Figures measured on it are never GPU
 *                   figures.
 *
 * All functions return 0 or a negative errno and, on failure, write a one-line reason into
 * the caller's @why buffer (for CUDA: gpu_cu_err()'s "<what>: <CUDA_ERROR_NAME>: <text>").
 * A struct gpu_dev is used by one thread at a time, except that streams and events may be
 * used from the thread that created them while another thread allocates.
 *
 * Contexts, as the driver has them: each thread has a current context, and every operation
 * below marked [ctx] runs in the calling thread's current context, which must be @dev's
 * (ctx_enter() makes it so). Operations never change the thread's current context
 * themselves: a library inside a framework (PyTorch keeps its current device in the same
 * thread-local slot) brackets its calls with ctx_enter()/ctx_leave(), which restores what the
 * caller had. The emulated device refuses a [ctx] operation on a thread whose current context
 * is not @dev's, as the driver refuses one on a thread with none (CUDA_ERROR_INVALID_CONTEXT).
 *
 * fork(): CUDA state does not survive it. A child forked after the driver was initialised
 * (any count() or open()) cannot use any operation; start a helper with fork+exec or
 * posix_spawn instead. The emulated device refuses the same way (-EIO).
 */
#ifndef WD_GPU_DEVICE_H
#define WD_GPU_DEVICE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gpu/cuda.h"

struct gpu_dev;		/* one opened GPU (a CUDA primary context, or an emulated device) */
struct gpu_stream;	/* an in-order copy queue */
struct gpu_event;	/* a point in a stream's order */

/* One VRAM allocation, in the process that made or imported it. */
struct gpu_vram {
	uint64_t size;		/* bytes, a multiple of the device's granularity */
	uint64_t dptr;		/* device address in this process (CUdeviceptr; emulated: a
				 * host address) */
	int fd;			/* the shareable POSIX handle, owned by this struct; -1 once
				 * handed away or for an import */
	void *priv;		/* the implementation's handle (CUmemGenericAllocationHandle) */
};

/* What gpu_ops.caps reports: whether the device tier can use a device at all. */
#define GPU_COMPUTE_DEFAULT 0		/* CU_COMPUTEMODE_DEFAULT */
#define GPU_COMPUTE_PROHIBITED 2	/* CU_COMPUTEMODE_PROHIBITED */
#define GPU_COMPUTE_EXCLUSIVE_PROCESS 3	/* CU_COMPUTEMODE_EXCLUSIVE_PROCESS */
struct gpu_caps {
	bool vmm;		/* CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED */
	bool posix_fd;		/* CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED */
	int compute_mode;	/* GPU_COMPUTE_*: EXCLUSIVE_PROCESS makes every other process's
				 * context retain fail, so no client could import */
};

struct gpu_ops {
	const char *kind;	/* "cuda" or "emulated" */

	/* Number of devices this implementation can open (>= 0) or a negative errno. */
	int (*count)(char *why, size_t why_size);

	/* Opens device @ordinal of this process (retains its primary context); the calling
	 * thread's current context is left as it was. -EBUSY when the device is in
	 * EXCLUSIVE_PROCESS mode and another process holds it. */
	int (*open)(int ordinal, struct gpu_dev **out, char *why, size_t why_size);
	void (*close)(struct gpu_dev *dev);

	/* Makes @dev's context current on the calling thread, saving what was current in
	 * *@saved (possibly none); ctx_leave() puts @saved back. Pairs nest. */
	int (*ctx_enter)(struct gpu_dev *dev, void **saved, char *why, size_t why_size);
	void (*ctx_leave)(struct gpu_dev *dev, void *saved);

	/* This process's ordinal of the device whose gpu_device.id is @id (ordinals differ
	 * between processes: CUDA_VISIBLE_DEVICES, CUDA_DEVICE_ORDER, containers). -ENODEV
	 * when this process cannot see that device. */
	int (*find)(const char *id, int *ordinal, char *why, size_t why_size);

	/* What the device supports (VMM, POSIX fd handles, its compute mode). */
	int (*caps)(struct gpu_dev *dev, struct gpu_caps *caps, char *why, size_t why_size);

	/* Name, PCI bus id and total memory. */
	int (*info)(struct gpu_dev *dev, struct gpu_device *info, char *why, size_t why_size);

	/* [ctx] Free and total device memory now (cuMemGetInfo). Frees land late: re-read it
	 * after an eviction before the next admission. */
	int (*mem_info)(struct gpu_dev *dev, uint64_t *free_b, uint64_t *total_b, char *why,
			size_t why_size);

	/* Allocation granularity for gpu_ops.vram_alloc (recommended granularity). */
	uint64_t (*granularity)(struct gpu_dev *dev);

	/* [ctx] Allocates @size bytes (rounded up to the granularity) of VRAM that can be exported
	 * as a POSIX fd, maps it in this process with read-write access for the device. */
	int (*vram_alloc)(struct gpu_dev *dev, uint64_t size, struct gpu_vram *out, char *why,
			  size_t why_size);

	/* [ctx] Imports an allocation from @fd (the caller keeps @fd) of @size bytes, maps it in this
	 * process (read-write for the device), and fills @out (out->fd = -1). */
	int (*vram_import)(struct gpu_dev *dev, int fd, uint64_t size, struct gpu_vram *out,
			   char *why, size_t why_size);

	/* [ctx] Unmaps and releases; closes out->fd when it is still owned. */
	void (*vram_free)(struct gpu_dev *dev, struct gpu_vram *v);

	/* [ctx] Page-locks existing host memory so that copies from it run at pinned speed
	 * (cuMemHostRegister with CU_MEMHOSTREGISTER_PORTABLE: one registration serves every
	 * context of the process), and undoes it. A range registered already (by this or
	 * another device) gives -EEXIST (CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED): see
	 * gpu_host_register_once(). Registration faults in and pins every page at once. */
	int (*host_register)(struct gpu_dev *dev, void *p, size_t n, char *why, size_t why_size);
	void (*host_unregister)(struct gpu_dev *dev, void *p);

	/* [ctx] Pinned host memory (cuMemHostAlloc), and its release. The staging ring does not
	 * use it (io_uring may refuse to register that memory as fixed buffers). */
	int (*host_alloc)(struct gpu_dev *dev, size_t n, void **p, char *why, size_t why_size);
	void (*host_free)(struct gpu_dev *dev, void *p);

	/* [ctx] both. */
	int (*stream_create)(struct gpu_dev *dev, struct gpu_stream **s, char *why,
			     size_t why_size);
	void (*stream_destroy)(struct gpu_dev *dev, struct gpu_stream *s);

	/* [ctx] Queues a copy of @n bytes from host @src to device address @dst on @s. @src
	 * must stay unchanged until an event recorded after it has completed. From memory that
	 * is not page-locked the driver copies synchronously through its own buffer, at a
	 * fraction of the speed (the emulated device counts those copies). */
	int (*copy_h2d)(struct gpu_dev *dev, struct gpu_stream *s, uint64_t dst, const void *src,
			size_t n, char *why, size_t why_size);

	/* [ctx] Synchronous device-to-host copy (verification, tests, the read-back of `cat`). */
	int (*copy_d2h)(struct gpu_dev *dev, void *dst, uint64_t src, size_t n, char *why,
			size_t why_size);

	/* [ctx] Records an event after everything queued on @s so far. Events are created
	 * with blocking sync (CU_EVENT_BLOCKING_SYNC): event_wait() sleeps instead of spinning
	 * a core. */
	int (*event_record)(struct gpu_dev *dev, struct gpu_stream *s, struct gpu_event **ev,
			    char *why, size_t why_size);
	/* 0: complete; -EAGAIN: not yet; other negative errno: the stream failed. */
	int (*event_query)(struct gpu_dev *dev, struct gpu_event *ev, char *why,
			   size_t why_size);
	/* Waits for the event; 0 or the stream's error. */
	int (*event_wait)(struct gpu_dev *dev, struct gpu_event *ev, char *why,
			  size_t why_size);
	void (*event_destroy)(struct gpu_dev *dev, struct gpu_event *ev);

	/*
	 * [ctx] Queues on @s, after what is queued there, the conversion of @n F32 elements at device
	 * address @src into dtype @to (GPU_DTYPE_F16 or GPU_DTYPE_BF16) at @dst. The result is
	 * bit for bit what core/format/convert.h gives on the host (round to nearest even; NaN quietened
	 * with its sign and top payload bits), so a converted device copy equals the host tier's
	 * converted copy. @src must be 4-byte and @dst 2-byte aligned, both inside live
	 * allocations of this device, and the ranges must not overlap. Returns 0 (the result is
	 * there once an event recorded after it completes); -EINVAL for another @to, a
	 * misaligned or overlapping range; -EFAULT (emulated: outside an allocation); or the
	 * driver's error (loading or launching the kernel).
	 */
	int (*convert_f32)(struct gpu_dev *dev, struct gpu_stream *s, uint64_t dst, uint64_t src,
			   uint64_t n, unsigned int to, char *why, size_t why_size);
};

/* gpu_ops.convert_f32 targets, numbered as safetensors dtypes are (enum st_dtype). */
#define GPU_DTYPE_F16 9u
#define GPU_DTYPE_BF16 10u

/*
 * The implementation to use in this process: the emulated device when $WEIGHTD_GPU_EMULATE
 * is set (and valid), else CUDA when the driver loads and reports at least one GPU. Returns
 * the table, or NULL with @why saying why there is no GPU tier ("no CUDA driver (...)",
 * "built without CUDA headers", "no CUDA device: ...", or the reason a set
 * $WEIGHTD_GPU_EMULATE is malformed: a malformed value never falls through to CUDA).
 * The CUDA driver, once loaded, stays loaded for the life of the process.
 */
const struct gpu_ops *gpu_ops_pick(char *why, size_t why_size);

extern const struct gpu_ops gpu_cuda_ops;
extern const struct gpu_ops gpu_emu_ops;

/*
 * The PTX text of the CUDA device's conversion kernels, for an offline check with ptxas
 * (tests/test_ptx.c); NULL in a build without the CUDA headers (no CUDA device at all).
 */
const char *gpu_cuda_convert_ptx(void);

/*
 * The emulated device in detail (gpu_emu_ops):
 *   - $WEIGHTD_GPU_EMULATE is "N" or "N:SIZE" (1 <= N <= GPU_MAX_DEVICES; SIZE a whole number
 *     with an optional K/M/G/T suffix, as "8G",
 *     "512M", at least 2M, rounded up to the granularity; default 4G per device). A malformed
 *     value makes count()/open() fail with -EINVAL and the reason; unset gives -ENODEV.
 *     These are the machine's N devices; $WEIGHTD_GPU_EMULATE_VISIBLE ("2,0"), like
 *     CUDA_VISIBLE_DEVICES, says which of them this process sees, in its ordinal order (the
 *     list ends at its first entry that is not a device; "" hides them all).
 *   - info(): name "weightd emulated GPU N"; pci_bus_id is empty (no PCI device: placement
 *     falls back to the loader thread's node) unless $WEIGHTD_GPU_EMULATE_PCI lists bus ids,
 *     comma-separated, one per device (by machine index); id is that bus id, or
 *     "emulated-N" with N the machine index; find() resolves it in this process.
 *   - Granularity 2 MiB. vram_alloc: a sealed memfd (MFD_CLOEXEC, F_SEAL_SHRINK|GROW) of
 *     the rounded size, mapped read-write; dptr is that mapping's address and fd the memfd,
 *     which can be dup'ed and sent with SCM_RIGHTS. vram_import mmaps the fd (size must be a
 *     granule multiple, at most the file's size) and refuses (-EXDEV) an allocation of
 *     another device: this process would be reaching it through peer access.
 *   - mem_info: the per-device budget minus the bytes this process allocated (imports do not
 *     count). An emulated device does not see other processes' allocations.
 *   - Every copy must fall inside one live allocation or import of the same ordinal in this
 *     process: copy_h2d/copy_d2h return -EFAULT with the address otherwise, and a queued copy
 *     whose allocation was freed before it ran fails its stream with -EFAULT (sticky; later
 *     events report it, later copies are skipped).
 *   - A stream is a thread that executes copies (memcpy) in submission order; an event
 *     completes when the stream passes it. stream_destroy runs what is queued, then stops.
 *   - host_register mlock()s the range (so it costs what page-locking costs, and shows in
 *     VmLck) and refuses an overlap with a registered range (-EEXIST); host_alloc is
 *     page-aligned heap memory, counted as page-locked. A copy_h2d whose source is not
 *     inside page-locked memory is counted (pageable_copies).
 *   - The driver's rules, enforced: [ctx] operations need @dev's context current on the
 *     calling thread (-EINVAL, CUDA_ERROR_INVALID_CONTEXT); nothing works in a child forked
 *     after count()/open() (-EIO, CUDA_ERROR_NOT_INITIALIZED); $WEIGHTD_GPU_EMULATE_EXCLUSIVE
 *     (a name shared by the processes of one test) puts every device in EXCLUSIVE_PROCESS
 *     mode: a second process's open() fails with -EBUSY (CUDA_ERROR_DEVICE_UNAVAILABLE);
 *     $WEIGHTD_GPU_EMULATE_CAPS ("novmm", "nofd", comma-separated) takes capabilities away
 *     (caps() says so and vram_alloc fails with -EOPNOTSUPP). A refused void operation
 *     (vram_free, host_unregister, stream_destroy...) does nothing and is counted
 *     (gpu_emu_process_stats().refused).
 *   - convert_f32 is an op of the stream: its thread runs core/format/convert.c's routines over the
 *     two ranges (checked live when queued and again when run, as copies are).
 */

/* Counters of one emulated struct gpu_dev (copies executed by its streams). */
struct gpu_emu_stats {
	uint64_t copies;	/* copies executed */
	uint64_t bytes;		/* bytes copied host -> device */
	uint64_t src_changed;	/* copies whose source changed between copy_h2d and execution
				 * (only counted while check_src is on) */
	uint64_t max_queued;	/* deepest any of its streams' queues has been */
	uint64_t pageable_copies;	/* copy_h2d from memory that is not page-locked */
	uint64_t pageable_bytes;
};

/* Counters of the emulated driver in this process. */
struct gpu_emu_process_stats {
	uint64_t locked_bytes;		/* host bytes registered or host_alloc'ed now */
	uint64_t registrations;		/* host_register calls that succeeded */
	uint64_t refused;		/* operations refused by a rule (every kind, void ones
					 * included) */
};

/*
 * Test instrumentation of an emulated device: every executed copy first sleeps
 * @copy_delay_us (to make copies slow enough for overlap and reuse bugs to show), and with
 * @check_src each copy hashes its source when queued and again when executed, counting a
 * difference in gpu_emu_stats.src_changed: a staging buffer reused before the event after
 * its copy completed. Returns 0, or -EINVAL when @dev is not an emulated device.
 */
int gpu_emu_debug(struct gpu_dev *dev, unsigned int copy_delay_us, bool check_src);
int gpu_emu_stats(struct gpu_dev *dev, struct gpu_emu_stats *st);
void gpu_emu_process_stats(struct gpu_emu_process_stats *st);
/* The ordinal whose context is current on the calling thread, or -1 for none. */
int gpu_emu_current(void);

/*
 * gpu_ops.host_register() for a range that may be registered already: -EEXIST
 * (CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED) means a portable registration exists and
 * serves this device as well, so it is success with *@mine = false (the caller must not
 * unregister what it did not register). Other errors are returned.
 */
int gpu_host_register_once(const struct gpu_ops *ops, struct gpu_dev *dev, void *p, size_t n,
			   bool *mine, char *why, size_t why_size);

#endif
