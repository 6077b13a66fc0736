/*
 * The daemon's request handlers: core/daemon/ops.c runs the ops a shard answers at once and
 * routes the others; core/daemon/jobs.c runs the ops queued for the worker. The state they
 * work on is in core/daemon/internal.h, the daemon's private header.
 *
 * Where each op runs:
 *   on the shard (inline, answered in the same batch): PING, LOOKUP (by name), LOAD when
 *   every target is resident (a hit), UNLOAD, PIN, UNPIN, STATUS, STATS, CACHE, SHUTDOWN.
 *   They read the registry through the daemon's own read-only view and take the state lock
 *   only to change pins.
 *   on the worker (queued as a struct job, answered later): SCAN, VALIDATE, META_GET,
 *   META_SET, and a LOAD that is not a hit (core/tier/hostcache.h: it plans and submits the
 *   load; the loader thread posts the final completion). They use the worker's catalog
 *   connection (d->cat), which no other thread uses while the worker runs (the alerts have
 *   their own: core/daemon/internal.h, "Catalog connections"), and post progress and final
 *   completions back with daemon_post().
 */
#ifndef WD_CORE_OPS_H
#define WD_CORE_OPS_H

#include <stdint.h>

#include "core/base/common.h"
#include "core/daemon/internal.h"
#include "shm/abi.h"

enum ops_outcome {
	OPS_DONE = 0,		/* *cqe and the payload are filled: publish them now */
	OPS_ASYNC = 1,		/* queued for the worker: the final completion comes later */
};

/*
 * Runs request @sqe of client @c on its shard. @arg is the request's payload, copied out of
 * the ring once (@arg_len bytes, already checked <= WD_DATA_SLOT_SIZE). On OPS_DONE, *@cqe
 * holds the completion (user_data set, data_len the bytes written to @out, which has
 * WD_DATA_SLOT_SIZE bytes: the CQ payload slot of the completion). A request that failed
 * validation in ring_sqe_check() is not passed here.
 */
enum ops_outcome ops_dispatch(struct daemon *d, struct client *c, const struct wd_sqe *sqe,
			      const char *arg, uint16_t arg_len, struct wd_cqe *cqe, char *out);

/*
 * Resolves a request's target (on the shard or the worker): a model named by index
 * (sqe->model) or by name in the payload (sqe->model == WD_ID_NONE), and an optional
 * component that must belong to it.
 * Returns 0, -EINVAL (no name, a NUL inside it, a component of another model),
 * -ENAMETOOLONG, or -ENOENT (no such published model or component).
 */
int ops_resolve(struct daemon *d, const struct wd_sqe *sqe, const char *arg, uint16_t len,
		uint32_t *model, struct wd_reg_model *rec);


/* Runs a queued job on the worker thread (core/daemon/jobs.c), posting its completions with
 * daemon_post(). */
void ops_run_job(struct daemon *d, struct job *j);

/* Scans the daemon's configured roots on the worker (startup scan), then publishes
 * (core/daemon/jobs.c). */
void ops_scan_roots(struct daemon *d);

#endif
