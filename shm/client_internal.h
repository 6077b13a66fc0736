/*
 * libweightd's private header: the handle, the request and reply of one round trip, and the
 * helpers the client files share. Not installed; nothing outside shm/client*.c includes it.
 *
 * The library is split by concern:
 *   client.c           attach and detach: the connection, the segments, the last error
 *   client_request.c   submitting a request on the ring and waiting for its completion
 *                      (liveness, a dead daemon), the argument checks, PING
 *   client_registry.c  MODEL names to ids (LOOKUP), a request's target, and the registry
 *                      reads: models, components, tensors, a tensor's bytes, the bulk
 *                      tensor table
 *   client_ops.c       the requests on models and the daemon: LOAD, UNLOAD, PIN, UNPIN,
 *                      STATE, SCAN, VALIDATE, META_*, CACHE, SHUTDOWN, INFO
 *   client_device.c    the GPU tier: DEVICE_MAP and the import, device reads, DEVICES, TRIM
 *   client_stats.c     STATS (counters, host tier), the metrics block and events, and the
 *                      names of enum values
 * The helpers below carry the client_ prefix: the objects also go into the daemon's internal
 * archive, where a plain name could clash; libweightd.so exports none of them
 * (shm/libweightd.map).
 */
#ifndef WD_SHM_CLIENT_INTERNAL_H
#define WD_SHM_CLIENT_INTERNAL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/un.h>

#include "weightd.h"

#include "core/base/common.h"
#include "shm/abi.h"
#include "shm/registry.h"
#include "shm/ring.h"
#include "shm/segment.h"

struct weightd {
	pthread_mutex_t lock;	/* held from submission to final completion */
	int sock;		/* the attach socket: the lease */
	uint32_t client_id;
	uint64_t spin_ns;
	uint64_t timeout_ns;	/* no sign of life for this long: -ETIMEDOUT; 0: never */
	int dead;		/* 0, or the sticky error once the daemon is gone */
	char dead_msg[256];	/* and the message that came with it */
	uint64_t seq;		/* user_data of the last request */
	struct shm_segment ring_seg;
	struct shm_segment host_seg;	/* the host cache arena, mapped read-only */
	struct registry_view reg;
	struct ring sq;		/* producer view of the submission ring */
	struct ring cq;		/* consumer view of the completion ring */
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

/* One request: the entry to submit, its payload, and where its progress goes. */
struct request {
	struct wd_sqe sqe;		/* opcode, flags, tier, model, component, arg */
	const void *payload;
	size_t payload_len;
	weightd_progress_fn progress;
	void *arg;
};

/* The final completion of a request, copied out of the ring. */
struct reply {
	int32_t res;
	uint64_t aux0, aux1;
	uint16_t data_len;
	uint8_t data[WD_DATA_SLOT_SIZE];
};

/* ---- errors (client.c) ------------------------------------------------------------------- */

/* What weightd_last_error() returns: the calling thread's message of its last failed call. */
extern __thread char client_errbuf[256];

/* Records why the current call fails and returns @err, so callers write `return fail(...)`. */
int WD_PRINTF(2, 3) client_fail(int err, const char *fmt, ...);

/* Copies a message field from the peer: bounded, NUL-terminated, non-printables replaced. */
void client_copy_text(char *dst, size_t size, const void *src, size_t len);

/* ---- requests (client_request.c) --------------------------------------------------------- */

/*
 * Submits @rq and waits for its final completion, passing progress completions to
 * rq->progress. Returns 0 with the daemon's answer in @rp (rp->res may be negative), or a
 * transport error: the handle's sticky error, -EPROTO, -ECONNRESET, -ESHUTDOWN.
 */
int client_submit_wait(struct weightd *w, struct request *rq, struct reply *rp);

/*
 * Turns a final completion into the call's result: res >= 0 passes through; an error records
 * the daemon's message (CQ payload) or strerror as the last error.
 */
int client_result(const struct reply *rp, const char *what, const char *name);

/* Argument checks: 0, or the error with its message (-EINVAL, -ENAMETOOLONG). */
int client_check_name(const char *s, const char *what);
int client_check_tensor_name(const char *s);
int client_check_tier(unsigned int tier);

/* Runs a request whose answer is just res; returns res or an error. */
int client_simple(struct weightd *w, struct request *rq, const char *what, const char *name);

/* ---- names to ids (client_registry.c) ---------------------------------------------------- */

/* @model (a name or a path) to its registry id; a LOOKUP round trip when the registry lacks
 * it. */
int client_lookup_id(struct weightd *w, const char *model, uint32_t *id);

/* For the registry reads: a name is looked up in the registry only, a path by the daemon;
 * @rec (may be NULL) receives the model's record. */
int client_find_model(struct weightd *w, const char *model, uint32_t *id,
		      struct wd_reg_model *rec);

/* Fills rq->sqe's model and component with registry ids (client_registry.c says how). */
int client_set_target(struct weightd *w, struct request *rq, const char *model,
		      const char *component);

/* A request on model/component/tier: resolves the target, submits, waits. */
int client_target_op(struct weightd *w, uint8_t op, const char *model, const char *component,
		     unsigned int tier, uint8_t flags, struct reply *rp);

/* ---- load forms (client_ops.c) ----------------------------------------------------------- */

/* Packs a selection (prefix, or NUL-separated names) into @buf (WD_DATA_SLOT_SIZE bytes) and
 * its flag into *@arg0; returns its length or -errno. */
int client_pack_selection(const struct weightd_load_opts *o, char *buf, uint64_t *arg0);

#endif
