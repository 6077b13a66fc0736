/*
 * Private to the emulated device (gpu/emu_*.c): an ordinal's process-wide state, a device,
 * the process-wide lock and counters, and the driver's rules that every part checks. The
 * parts: gpu/emu_rules.c (the process-wide state and the rules, below the others),
 * gpu/emu_dev.c (the driver, devices and contexts, the ops table), gpu/emu_mem.c
 * (VRAM allocations and imports, page-locked host memory), gpu/emu_stream.c (streams, copies,
 * conversions, events). The API is gpu/device.h.
 */
#ifndef WD_GPU_EMU_INT_H
#define WD_GPU_EMU_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gpu/device.h"

#define EMU_GRANULARITY (2ull << 20)
#define EMU_DEFAULT_SIZE (4ull << 30)
#define EMU_MAGIC 0x454d5544u	/* "EMUD" */

/* One mapping of emulated VRAM in this process: an allocation or an import. */
struct emu_alloc {
	struct emu_alloc *next;
	uint64_t base;
	uint64_t size;
	bool imported;		/* imports do not count against this process's budget */
};

/* Per ordinal, process-wide: also its primary context (a thread's current context points
 * here). */
struct emu_ordinal {
	pthread_rwlock_t lock;	/* writers: alloc/import/free; readers: copies */
	struct emu_alloc *allocs;
	uint64_t allocated;	/* bytes of this process's allocations (not imports) */
	int phys;		/* the machine's device behind this ordinal */
	unsigned int retains;	/* open() minus close(), under emu_lock */
	int excl_fd;		/* EXCLUSIVE_PROCESS: the socket that holds the device; -1 */
};


struct gpu_dev {
	uint32_t magic;
	int ordinal;
	uint64_t budget;
	char pci_bus_id[32];
	char id[32];
	int phys;
	struct gpu_caps caps;
	struct emu_ordinal *ord;
	/* Instrumentation (gpu_emu_debug / gpu_emu_stats). */
	_Atomic unsigned int copy_delay_us;
	_Atomic bool check_src;
	_Atomic uint64_t copies, bytes, src_changed, max_queued, pageable_copies, pageable_bytes;
};

/* Host ranges (gpu/emu_mem.c) and ordinals' retains and exclusive holds (gpu/emu_dev.c). */
extern pthread_mutex_t emu_lock;
/* The thread's current context (gpu/emu_rules.c; emu_ctx_enter()/leave() in gpu/emu_dev.c). */
extern _Thread_local struct emu_ordinal *emu_cur_ctx;
/* Page-locked bytes, host registrations, and rules broken (gpu_emu_process_stats()). */
extern _Atomic uint64_t emu_locked_bytes, emu_registrations, emu_refused;

/* The driver's rules (gpu/emu_rules.c). */

/* A rule broken: counted, and for void operations said on stderr (nothing else can). */
void emu_refuse_void(const char *what, const char *why);
/* CUDA state does not survive fork(): a child of the initialising process is refused. */
bool emu_forked(void);
/* The first call initialises the emulated driver in this process; a forked child: -EIO. */
int emu_init_check(const char *what, char *why, size_t why_size);
/* [ctx] operations: @dev's context must be current on this thread (-EINVAL with @why). */
int emu_need_ctx(struct gpu_dev *dev, const char *what, char *why, size_t why_size);
/* emu_need_ctx() for an operation that cannot return an error. */
bool emu_void_ctx_ok(struct gpu_dev *dev, const char *what);

/* Memory (gpu/emu_mem.c). */

struct host_range;
/* Whether [addr, addr + n) lies inside one live mapping; the caller holds ord->lock. */
bool emu_range_live(const struct emu_ordinal *ord, uint64_t addr, uint64_t n);
/* Whether [p, p + n) lies inside one page-locked range. Under emu_lock. */
struct host_range *emu_locked_range(uintptr_t p, size_t n);
int emu_vram_alloc(struct gpu_dev *dev, uint64_t size, struct gpu_vram *out, char *why,
		   size_t why_size);
int emu_vram_import(struct gpu_dev *dev, int fd, uint64_t size, struct gpu_vram *out,
		    char *why, size_t why_size);
void emu_vram_free(struct gpu_dev *dev, struct gpu_vram *v);
int emu_host_register(struct gpu_dev *dev, void *p, size_t n, char *why, size_t why_size);
void emu_host_unregister(struct gpu_dev *dev, void *p);
int emu_host_alloc(struct gpu_dev *dev, size_t n, void **p, char *why, size_t why_size);
void emu_host_free(struct gpu_dev *dev, void *p);

/* Streams and events (gpu/emu_stream.c). */

int emu_stream_create(struct gpu_dev *dev, struct gpu_stream **out, char *why,
		      size_t why_size);
void emu_stream_destroy(struct gpu_dev *dev, struct gpu_stream *s);
int emu_copy_h2d(struct gpu_dev *dev, struct gpu_stream *s, uint64_t dst, const void *src,
		 size_t n, char *why, size_t why_size);
int emu_copy_d2h(struct gpu_dev *dev, void *dst, uint64_t src, size_t n, char *why,
		 size_t why_size);
int emu_convert_f32(struct gpu_dev *dev, struct gpu_stream *s, uint64_t dst, uint64_t src,
		    uint64_t n, unsigned int to, char *why, size_t why_size);
int emu_event_record(struct gpu_dev *dev, struct gpu_stream *s, struct gpu_event **out,
		     char *why, size_t why_size);
int emu_event_query(struct gpu_dev *dev, struct gpu_event *ev, char *why, size_t why_size);
int emu_event_wait(struct gpu_dev *dev, struct gpu_event *ev, char *why, size_t why_size);
void emu_event_destroy(struct gpu_dev *dev, struct gpu_event *ev);

#endif
