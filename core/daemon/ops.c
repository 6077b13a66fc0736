/*
 * The ops a shard runs: one function per op code, and ops_dispatch(), which answers them at
 * once or queues a job for the worker (core/daemon/jobs.c). See core/daemon/ops.h for where
 * each runs and docs/protocol.md for the encodings. Every op validates its own arguments
 * (ring_sqe_check() already vetted the generic fields) and answers with a negative errno and,
 * where that alone would leave the user guessing, a one-line message in the CQ payload.
 */
#include "core/daemon/ops.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "core/base/cred.h"
#include "core/tier/devcache.h"
#include "core/base/file.h"
#include "core/tier/hostcache.h"
#include "core/tier/tier.h"
#include "core/daemon/tiers.h"
#include "core/base/log.h"
#include "core/catalog/scan.h"
#include "core/format/st.h"

static int fail(struct wd_cqe *cqe, int err)
{
	cqe->res = err;
	return err;
}

int ops_resolve(struct daemon *d, const struct wd_sqe *sqe, const char *arg, uint16_t len,
		uint32_t *model, struct wd_reg_model *rec)
{
	struct wd_reg_component c;
	char name[WD_NAME_MAX];
	int ret;

	if (sqe->model == WD_ID_NONE) {
		if (!len || memchr(arg, '\0', len))
			return -EINVAL;
		if (len >= WD_NAME_MAX)
			return -ENAMETOOLONG;
		memcpy(name, arg, len);
		name[len] = '\0';
		ret = registry_find_model(&d->view, name, model, rec);
	} else {
		*model = sqe->model;
		ret = registry_read_model(&d->view, sqe->model, rec);
	}
	if (ret)
		return ret;
	if (sqe->component == WD_ID_NONE)
		return 0;
	ret = registry_read_component(&d->view, sqe->component, &c);
	if (ret)
		return ret;
	return c.model == *model ? 0 : -EINVAL;
}

static const char *tier_name(uint32_t tier, char *buf, size_t size)
{
	if (tier == WD_TIER_HOST)
		snprintf(buf, size, "host");
	else
		snprintf(buf, size, "cuda:%u", tier - 1);
	return buf;
}

/* Reports a failed ops_resolve() with the name that was asked for. */
static int resolve_failed(struct wd_cqe *cqe, char *out, const char *op, const struct wd_sqe *sqe,
			  const char *arg, uint16_t len, int err)
{
	if (sqe->model == WD_ID_NONE)
		cqe->data_len = tier_msg(out, "%s: model \"%.*s\": %s", op,
					(int)(len > 200 ? 200 : len), arg, strerror(-err));
	else
		cqe->data_len = tier_msg(out, "%s: model %u component %d: %s", op, sqe->model,
					sqe->component == WD_ID_NONE ? -1 : (int)sqe->component,
					strerror(-err));
	return fail(cqe, err);
}

static void op_ping(const struct wd_sqe *sqe, struct wd_cqe *cqe)
{
	cqe->aux0 = sqe->arg[0];
}

/*
 * LOOKUP: a name is resolved here; an absolute path that names no published model goes to
 * the worker, which asks the catalog which model the path (or a file of it) belongs to.
 */
static enum ops_outcome op_lookup(struct daemon *d, const struct wd_sqe *sqe, const char *arg,
				  uint16_t len, struct wd_cqe *cqe, char *out)
{
	struct wd_reg_model m;
	uint32_t id;
	int ret = ops_resolve(d, sqe, arg, len, &id, &m);

	if (ret == -ENOENT && sqe->model == WD_ID_NONE && len && arg[0] == '/')
		return OPS_ASYNC;
	if (ret) {
		resolve_failed(cqe, out, "lookup", sqe, arg, len, ret);
		return OPS_DONE;
	}
	cqe->res = (int32_t)id;
	cqe->aux0 = registry_generation(&d->view);
	cqe->aux1 = m.flags;
	return OPS_DONE;
}

/*
 * LOAD: the target is resolved here; the host tier answers a hit inline or has the request
 * queued for the worker (*@job then holds the request with the model index filled in).
 */
static enum ops_outcome op_load(struct daemon *d, struct client *c, const struct wd_sqe *sqe,
				const char *arg, uint16_t len, struct wd_cqe *cqe, char *out,
				struct wd_sqe *job)
{
	struct wd_reg_model m;
	uint32_t id;
	bool sel = sqe->arg[0] & (WD_LOAD_PREFIX | WD_LOAD_NAMES);
	/* With a selection the payload is the selection, never a name. */
	int ret = sel && sqe->model == WD_ID_NONE ? 0 : ops_resolve(d, sqe, arg, len, &id, &m);

	if (sel && sqe->model == WD_ID_NONE)
		id = WD_ID_NONE;
	if (ret) {
		resolve_failed(cqe, out, "load", sqe, arg, len, ret);
		return OPS_DONE;
	}
	if (sqe->tier != WD_TIER_HOST && d->dc) {
		/* The device tier (core/tier/devcache.h) loads through the host tier itself. */
		if (devcache_load(d->dc, tier_client_of(c), sqe, arg, len, id, cqe, out) ==
		    TIER_DONE)
			return OPS_DONE;
	} else if (hostcache_load(d->hc, tier_client_of(c), sqe, arg, len, id, cqe, out) ==
		   TIER_DONE) {
		return OPS_DONE;
	}
	*job = *sqe;
	job->model = id;
	return OPS_ASYNC;
}

static void op_cache(struct daemon *d, const struct wd_sqe *sqe, struct wd_cqe *cqe, char *out)
{
	uint16_t n = 0;
	uint32_t total = hostcache_list(d->hc, sqe->arg[0] > UINT32_MAX ? UINT32_MAX :
					(uint32_t)sqe->arg[0], out, &n);

	cqe->res = (int32_t)(total > INT32_MAX ? INT32_MAX : total);
	cqe->data_len = (uint16_t)(n * sizeof(struct wd_cache_entry));
}

/* DEVICE_MAP: the component's VRAM allocation for this client (core/tier/devcache.h). */
static void op_device_map(struct daemon *d, struct client *c, const struct wd_sqe *sqe,
			  const char *arg, uint16_t len, struct wd_cqe *cqe, char *out)
{
	struct wd_reg_model m;
	uint32_t id;
	int ret = ops_resolve(d, sqe, arg, len, &id, &m);

	if (ret) {
		resolve_failed(cqe, out, "device_map", sqe, arg, len, ret);
		return;
	}
	if (!d->dc) {
		cqe->data_len = tier_msg(out, "device_map: GPU tier not available");
		fail(cqe, -ENOTSUP);
		return;
	}
	devcache_map(d->dc, tier_client_of(c), c->fd, sqe, arg, len, id, cqe, out);
}

/* DEVICES: the GPU tiers from arg[0]; with none, res 0 and the reason as text. */
static void op_devices(struct daemon *d, const struct wd_sqe *sqe, struct wd_cqe *cqe,
		       char *out)
{
	uint16_t n = 0, text = 0;
	uint32_t total;

	if (sqe->model != WD_ID_NONE || sqe->component != WD_ID_NONE || sqe->tier ||
	    sqe->arg[1] || sqe->arg[2] || sqe->arg[3] || sqe->arg[4] || sqe->flags) {
		cqe->data_len = tier_msg(out, "devices: only arg[0] (the first index) may be set");
		fail(cqe, -EINVAL);
		return;
	}
	if (!d->dc) {
		cqe->data_len = tier_msg(out, "GPU tier not available");
		cqe->res = 0;
		return;
	}
	total = devcache_list(d->dc, sqe->arg[0] > UINT32_MAX ? UINT32_MAX : (uint32_t)sqe->arg[0],
			      out, &n, &text);
	cqe->res = (int32_t)total;
	cqe->aux0 = n;
	cqe->data_len = text ? text : (uint16_t)(n * sizeof(struct wd_device_info));
}

/* DEVICE_TRIM: tier cuda:N, arg[0] bytes to free; aux0 = bytes freed. */
static void op_device_trim(struct daemon *d, const struct wd_sqe *sqe, struct wd_cqe *cqe,
			   char *out)
{
	uint16_t len = 0;
	int64_t freed;

	if (sqe->model != WD_ID_NONE || sqe->component != WD_ID_NONE ||
	    sqe->tier == WD_TIER_HOST || sqe->arg[1] || sqe->arg[2] || sqe->arg[3] ||
	    sqe->arg[4] || sqe->flags) {
		cqe->data_len = tier_msg(out, "device_trim: a GPU tier and arg[0] (bytes) only");
		fail(cqe, -EINVAL);
		return;
	}
	freed = devcache_trim(d->dc, sqe->tier, sqe->arg[0], out, &len);
	if (freed < 0) {
		cqe->data_len = len;
		fail(cqe, (int)freed);
		return;
	}
	cqe->res = 0;
	cqe->aux0 = (uint64_t)freed;
}

/* The aggregate state of model @id (all components, or @comp) on @tier. */
static uint32_t model_state(struct daemon *d, uint32_t id, uint32_t comp, uint32_t tier,
			    uint64_t *done, uint64_t *total)
{
	uint32_t first, n, seen = 0, resident = 0, state = WD_STATE_ABSENT;
	int rank[WD_STATE_COUNT] = { [WD_STATE_ABSENT] = 0, [WD_STATE_RESIDENT] = 1,
				     [WD_STATE_EVICTING] = 2, [WD_STATE_LOADING] = 3,
				     [WD_STATE_FAILED] = 4 };

	*done = *total = 0;
	if (comp != WD_ID_NONE) {
		first = comp;
		n = 1;
	} else {
		pthread_mutex_lock(&d->state_lock);
		first = id < d->n_models ? d->models[id].first_comp : 0;
		n = id < d->n_models ? d->models[id].n_comps : 0;
		pthread_mutex_unlock(&d->state_lock);
	}
	for (uint32_t i = first; i < first + n; i++) {
		struct wd_reg_component c;
		const struct wd_reg_tier *t;

		if (registry_read_component(&d->view, i, &c))
			continue;
		t = &c.tiers[tier];
		seen++;
		if (t->state >= WD_STATE_COUNT)
			continue;
		if (t->state == WD_STATE_RESIDENT) {
			resident++;
			*done += c.nbytes;
			*total += c.nbytes;
		} else {
			*done += t->done;
			*total += t->total ? t->total : c.nbytes;
		}
		if (rank[t->state] > rank[state])
			state = t->state;
	}
	/* Partly resident counts as absent: a client can use the model only when all of it is. */
	if (state == WD_STATE_RESIDENT && resident != seen)
		state = WD_STATE_ABSENT;
	return state;
}

static void op_state(struct daemon *d, const struct wd_sqe *sqe, const char *arg, uint16_t len,
		     struct wd_cqe *cqe, char *out)
{
	struct wd_reg_model m;
	uint32_t id;
	int ret = ops_resolve(d, sqe, arg, len, &id, &m);

	if (ret) {
		resolve_failed(cqe, out, "state", sqe, arg, len, ret);
		return;
	}
	cqe->res = (int32_t)model_state(d, id, sqe->component, sqe->tier, &cqe->aux0, &cqe->aux1);
}

static void op_unload(struct daemon *d, struct client *c, const struct wd_sqe *sqe,
		      const char *arg, uint16_t len, struct wd_cqe *cqe, char *out)
{
	struct wd_reg_model m;
	uint64_t done, total;
	uint32_t id, state;
	char tn[16];
	bool busy;
	int ret = ops_resolve(d, sqe, arg, len, &id, &m);

	if (ret) {
		resolve_failed(cqe, out, "unload", sqe, arg, len, ret);
		return;
	}
	pthread_mutex_lock(&d->state_lock);
	busy = lease_pinned_by_other(&d->leases, &c->lease, id, sqe->component, sqe->tier);
	pthread_mutex_unlock(&d->state_lock);
	if (busy) {
		cqe->data_len = tier_msg(out, "unload: %s is pinned on %s by another client", m.name,
					tier_name(sqe->tier, tn, sizeof(tn)));
		fail(cqe, -EBUSY);
		return;
	}
	state = model_state(d, id, sqe->component, sqe->tier, &done, &total);
	if (sqe->tier != WD_TIER_HOST && d->dc && devcache_count(d->dc)) {
		int64_t freed = devcache_unload(d->dc, sqe->tier, id, sqe->component, out,
						&cqe->data_len);

		if (freed < 0) {
			fail(cqe, (int)freed);
			return;
		}
		if (freed > 0) {
			cqe->aux0 = (uint64_t)freed;
			return;
		}
	}
	if (sqe->tier == WD_TIER_HOST) {
		int64_t freed = hostcache_unload(d->hc, id, sqe->component, out, &cqe->data_len);

		if (freed < 0) {
			fail(cqe, (int)freed);
			return;
		}
		if (freed > 0 || state != WD_STATE_ABSENT) {
			cqe->aux0 = (uint64_t)freed;
			return;
		}
	}
	/* Nothing to drop (no GPU tier holds anything yet): success, zero bytes released. */
	cqe->aux0 = 0;
	cqe->data_len = tier_msg(out, "unload: %s is not resident on %s", m.name,
				tier_name(sqe->tier, tn, sizeof(tn)));
}

static void set_pins(struct daemon *d, uint32_t model)
{
	registry_set_model_pins(d->reg, model, lease_model_pins(&d->leases, model));
}

static void op_pin(struct daemon *d, struct client *c, const struct wd_sqe *sqe, const char *arg,
		   uint16_t len, struct wd_cqe *cqe, char *out, bool pin)
{
	struct lease_pin p = { .component = sqe->component, .tier = sqe->tier };
	const char *op = pin ? "pin" : "unpin";
	struct wd_reg_model m;
	char tn[16];
	int ret = ops_resolve(d, sqe, arg, len, &p.model, &m);

	if (ret) {
		resolve_failed(cqe, out, op, sqe, arg, len, ret);
		return;
	}
	pthread_mutex_lock(&d->state_lock);
	if (c->gone)
		ret = -ECONNRESET;
	else if (pin)
		ret = lease_pin(&d->leases, &c->lease, &p);
	else
		ret = lease_unpin(&d->leases, &c->lease, &p);
	if (ret == 0) {
		set_pins(d, p.model);
		registry_counter_add(d->reg, WD_CTR_PINS, pin ? 1 : -1);
	}
	cqe->aux0 = lease_count(&c->lease);
	cqe->aux1 = lease_model_pins(&d->leases, p.model);
	pthread_mutex_unlock(&d->state_lock);
	if (ret == -ENOENT)
		cqe->data_len = tier_msg(out, "unpin: %s is not pinned on %s by this client", m.name,
					tier_name(sqe->tier, tn, sizeof(tn)));
	cqe->res = ret > 0 ? 0 : ret;
}

static void op_stats(struct daemon *d, struct client *c, struct wd_cqe *cqe, char *out)
{
	uint64_t v[WD_STAT_COUNT];

	daemon_flush_counters(c->shard);
	v[WD_STAT_CLIENTS] = registry_counter(&d->view, WD_CTR_CLIENTS);
	v[WD_STAT_PINS] = registry_counter(&d->view, WD_CTR_PINS);
	v[WD_STAT_RING_SEGS] = registry_counter(&d->view, WD_CTR_RING_SEGS);
	v[WD_STAT_REQUESTS] = registry_counter(&d->view, WD_CTR_REQUESTS);
	v[WD_STAT_ERRORS] = registry_counter(&d->view, WD_CTR_ERRORS);
	v[WD_STAT_MODELS] = load_acquire(&((const struct wd_reg_hdr *)d->view.base)->model_count);
	v[WD_STAT_HOST_BUDGET] = d->cfg.host_budget;
	v[WD_STAT_UPTIME_NS] = wd_now_ns() - d->start_ns;
	pthread_mutex_lock(&d->state_lock);
	v[WD_STAT_MY_PINS] = lease_count(&c->lease);
	pthread_mutex_unlock(&d->state_lock);
	v[WD_STAT_MY_REQUESTS] = c->requests;
	v[WD_STAT_MY_ERRORS] = c->errors;
	hostcache_stats(d->hc, v);
	v[WD_STAT_CUDA_BYTES] = devcache_bytes(d->dc);
	memcpy(out, v, sizeof(v));
	cqe->data_len = sizeof(v);
	cqe->res = WD_STAT_COUNT;
}

/* INFO: the daemon's I/O path, its locked-memory limit and its state directory. */
static void op_info(struct daemon *d, struct wd_cqe *cqe, char *out)
{
	struct wd_info info = { 0 };
	const char *dir = d->state_dir;
	char abs[PATH_MAX];
	struct rlimit lim;
	size_t n;

	/* A client's working directory is not the daemon's: say where, absolutely. */
	if (dir[0] != '/' && realpath(dir, abs))
		dir = abs;
	n = strlen(dir);

	info.memlock_limit = getrlimit(RLIMIT_MEMLOCK, &lim) ? 0 :
			     lim.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t)lim.rlim_cur;
	hostcache_io_info(d->hc, &info);
	if (n <= sizeof(info.state_dir)) {
		memcpy(info.state_dir, dir, n);
		info.state_dir_len = (uint32_t)n;
	} else {
		info.flags |= WD_INFO_STATE_DIR_LONG;
	}
	memcpy(out, &info, sizeof(info));
	cqe->data_len = sizeof(info);
	cqe->res = 0;
}

static bool privileged(const struct daemon *d, uid_t uid)
{
	if (uid == 0)
		return true;
	for (size_t i = 0; i < d->cfg.n_admin_uids; i++)
		if (d->cfg.admin_uids[i] == uid)
			return true;
	return false;
}

static void op_shutdown(struct daemon *d, struct client *c, struct wd_cqe *cqe, char *out)
{
	if (!privileged(d, c->uid)) {
		cqe->data_len = tier_msg(out, "shutdown: uid %u is not an admin user (start weightd "
					"with --admin-user)", (unsigned)c->uid);
		fail(cqe, -EPERM);
		return;
	}
	log_info("daemon", "\"shutdown requested\" client=%u uid=%u", c->id, (unsigned)c->uid);
	daemon_stop(d);
}

enum ops_outcome ops_dispatch(struct daemon *d, struct client *c, const struct wd_sqe *sqe,
			      const char *arg, uint16_t arg_len, struct wd_cqe *cqe, char *out)
{
	struct wd_sqe job_sqe;
	struct job *j;

	switch (sqe->opcode) {
	case WD_OP_PING:
		op_ping(sqe, cqe);
		return OPS_DONE;
	case WD_OP_LOOKUP:
		if (op_lookup(d, sqe, arg, arg_len, cqe, out) == OPS_DONE)
			return OPS_DONE;
		break;
	case WD_OP_LOAD:
		if (op_load(d, c, sqe, arg, arg_len, cqe, out, &job_sqe) == OPS_DONE)
			return OPS_DONE;
		sqe = &job_sqe;
		break;
	case WD_OP_CACHE:
		op_cache(d, sqe, cqe, out);
		return OPS_DONE;
	case WD_OP_DEVICE_MAP:
		op_device_map(d, c, sqe, arg, arg_len, cqe, out);
		return OPS_DONE;
	case WD_OP_DEVICES:
		op_devices(d, sqe, cqe, out);
		return OPS_DONE;
	case WD_OP_DEVICE_TRIM:
		op_device_trim(d, sqe, cqe, out);
		return OPS_DONE;
	case WD_OP_UNLOAD:
		op_unload(d, c, sqe, arg, arg_len, cqe, out);
		return OPS_DONE;
	case WD_OP_PIN:
	case WD_OP_UNPIN:
		op_pin(d, c, sqe, arg, arg_len, cqe, out, sqe->opcode == WD_OP_PIN);
		return OPS_DONE;
	case WD_OP_STATE:
		op_state(d, sqe, arg, arg_len, cqe, out);
		return OPS_DONE;
	case WD_OP_STATS:
		op_stats(d, c, cqe, out);
		return OPS_DONE;
	case WD_OP_SHUTDOWN:
		op_shutdown(d, c, cqe, out);
		return OPS_DONE;
	case WD_OP_INFO:
		op_info(d, cqe, out);
		return OPS_DONE;
	case WD_OP_SCAN:
	case WD_OP_VALIDATE:
	case WD_OP_META_GET:
	case WD_OP_META_SET:
		break;
	default:
		fail(cqe, -EOPNOTSUPP);
		return OPS_DONE;
	}
	j = calloc(1, sizeof(*j));
	if (j)
		j->spare = malloc(sizeof(*j->spare));
	if (!j || !j->spare) {
		free(j);
		fail(cqe, -ENOMEM);
		return OPS_DONE;
	}
	daemon_client_get(c);
	j->c = c;
	j->sqe = *sqe;
	j->arg_len = arg_len;
	memcpy(j->arg, arg, arg_len);
	j->arg[arg_len] = '\0';
	if (daemon_queue_job(d, j)) {
		daemon_client_put(d, c);
		free(j->spare);
		free(j);
		fail(cqe, -ECANCELED);
		return OPS_DONE;
	}
	return OPS_ASYNC;
}
