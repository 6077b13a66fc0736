/*
 * libweightd: the requests on models and on the daemon, each one round trip through
 * client_submit_wait(): LOAD (with its form), UNLOAD, PIN, UNPIN, STATE, SCAN, VALIDATE,
 * META_GET/META_SET, CACHE (the host cache's entries), SHUTDOWN and INFO.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "weightd.h"

#include "core/base/common.h"
#include "shm/abi.h"
#include "shm/client_internal.h"

int weightd_load(struct weightd *w, const char *model, const char *component, unsigned int tier,
		 unsigned int flags, weightd_progress_fn progress, void *arg)
{
	return weightd_load_ex(w, model, component, tier, flags, NULL, progress, arg, NULL);
}

/* Packs a selection (prefix, or NUL-separated names) into @buf; returns its length or -errno. */
int client_pack_selection(const struct weightd_load_opts *o, char *buf, uint64_t *arg0)
{
	size_t len = 0;

	if (o->prefix && o->names)
		return client_fail(-EINVAL, "load: a prefix and a list of names together");
	if (o->prefix) {
		len = strlen(o->prefix);
		if (!len || len > WD_DATA_SLOT_SIZE)
			return client_fail(len ? -ENAMETOOLONG : -EINVAL,
					   "load: prefix of %zu bytes "
					   "(1..%u)",
					   len, WD_DATA_SLOT_SIZE);
		memcpy(buf, o->prefix, len);
		*arg0 |= WD_LOAD_PREFIX;
	} else if (o->names) {
		if (!o->n_names)
			return client_fail(-EINVAL, "load: an empty list of tensor names");
		for (size_t i = 0; i < o->n_names; i++) {
			size_t l = o->names[i] ? strlen(o->names[i]) : 0;

			if (!l)
				return client_fail(-EINVAL, "load: empty tensor name in the list");
			if (len + l + (i ? 1 : 0) > WD_DATA_SLOT_SIZE)
				return client_fail(-ENAMETOOLONG,
						   "load: the tensor names take more than %u "
						   "bytes (load a prefix, or in several calls)",
						   WD_DATA_SLOT_SIZE);
			if (i)
				buf[len++] = '\0';
			memcpy(buf + len, o->names[i], l);
			len += l;
		}
		*arg0 |= WD_LOAD_NAMES;
	}
	return (int)len;
}

int weightd_load_ex(struct weightd *w, const char *model, const char *component,
		    unsigned int tier, unsigned int flags, const struct weightd_load_opts *opts,
		    weightd_progress_fn progress, void *arg, struct weightd_load_result *res)
{
	struct request rq = { .sqe = { .opcode = WD_OP_LOAD, .tier = (uint16_t)tier },
			      .progress = progress, .arg = arg };
	char sel[WD_DATA_SLOT_SIZE];
	struct reply rp;
	uint64_t t0 = wd_now_ns();
	int ret;

	if (!w)
		return client_fail(-EINVAL, "NULL handle");
	if (flags & ~(WEIGHTD_LOAD_PIN | WEIGHTD_LOAD_NO_PROGRESS))
		return client_fail(-EINVAL, "unknown load flags %#x", flags);
	if ((ret = client_check_tier(tier)) || (ret = client_set_target(w, &rq, model, component)))
		return ret;
	if (opts && opts->dtype) {
		if (opts->dtype != WEIGHTD_DTYPE_F16 && opts->dtype != WEIGHTD_DTYPE_BF16)
			return client_fail(-EINVAL,
					   "load: conversion to dtype %u is not supported "
					   "(WEIGHTD_DTYPE_F16 or WEIGHTD_DTYPE_BF16)",
					   opts->dtype);
		rq.sqe.arg[0] = WD_LOAD_CONVERT | opts->dtype;
	}
	if (opts && (opts->prefix || opts->names)) {
		ret = client_pack_selection(opts, sel, &rq.sqe.arg[0]);
		if (ret < 0)
			return ret;
		rq.payload = sel;
		rq.payload_len = (size_t)ret;
	}
	rq.sqe.flags = (uint8_t)((flags & WEIGHTD_LOAD_PIN ? WD_SQE_F_PIN : 0) |
				 (flags & WEIGHTD_LOAD_NO_PROGRESS ? WD_SQE_F_NO_PROGRESS : 0));
	if ((ret = client_submit_wait(w, &rq, &rp)))
		return ret;
	ret = client_result(&rp, "load", model);
	if (ret < 0)
		return ret;
	if (res)
		*res = (struct weightd_load_result){ .bytes = rp.aux0, .read_bytes = rp.aux1,
						     .hit = rp.aux1 == 0,
						     .elapsed_ns = wd_now_ns() - t0 };
	return 0;
}

int weightd_cache_list(struct weightd *w, uint32_t start, struct weightd_cache_entry *out,
		       uint32_t max, uint32_t *n_out)
{
	struct request rq = { .sqe = { .opcode = WD_OP_CACHE, .model = WD_ID_NONE,
				       .component = WD_ID_NONE } };
	struct weightd_model_info mi;
	struct weightd_component_info ci;
	struct reply rp;
	uint32_t n = 0;
	int ret;

	if (!w || (!out && max) || !n_out)
		return client_fail(-EINVAL, "NULL argument");
	*n_out = 0;
	for (;;) {
		struct wd_cache_entry e[WD_CACHE_PER_REPLY];
		uint32_t got;

		rq.sqe.arg[0] = start + n;
		if ((ret = client_submit_wait(w, &rq, &rp)))
			return ret;
		if ((ret = client_result(&rp, "cache", NULL)) < 0)
			return ret;
		got = rp.data_len / sizeof(e[0]);
		if (got > WD_CACHE_PER_REPLY)
			return client_fail(-EPROTO, "cache: %u payload bytes", rp.data_len);
		memcpy(e, rp.data, got * sizeof(e[0]));
		for (uint32_t i = 0; i < got && n < max; i++, n++) {
			struct weightd_cache_entry *o = &out[n];

			*o = (struct weightd_cache_entry){
				.model = e[i].model, .component = e[i].component,
				.bytes = e[i].bytes, .idle_ns = e[i].idle_ns, .pins = e[i].pins,
				.dtype = e[i].dtype == 0xff ? 0 : e[i].dtype, .flags = e[i].flags,
				.n_tensors = e[i].n_tensors,
			};
			if (weightd_model(w, e[i].model, &mi) == 0)
				snprintf(o->model_name, sizeof(o->model_name), "%s", mi.name);
			if (weightd_component(w, e[i].component, &ci) == 0)
				snprintf(o->component_name, sizeof(o->component_name), "%s",
					 ci.name);
		}
		if (!got || n >= max || start + n >= (uint32_t)ret)
			break;
	}
	*n_out = n;
	client_errbuf[0] = '\0';
	return ret;
}

static int target_simple(struct weightd *w, uint8_t op, const char *what, const char *model,
			 const char *component, unsigned int tier)
{
	struct reply rp;
	int ret = client_target_op(w, op, model, component, tier, 0, &rp);

	if (ret)
		return ret;
	ret = client_result(&rp, what, model);
	return ret < 0 ? ret : 0;
}

int weightd_unload(struct weightd *w, const char *model, const char *component,
		   unsigned int tier)
{
	return target_simple(w, WD_OP_UNLOAD, "unload", model, component, tier);
}

int weightd_pin(struct weightd *w, const char *model, const char *component, unsigned int tier)
{
	return target_simple(w, WD_OP_PIN, "pin", model, component, tier);
}

int weightd_unpin(struct weightd *w, const char *model, const char *component,
		  unsigned int tier)
{
	return target_simple(w, WD_OP_UNPIN, "unpin", model, component, tier);
}

int weightd_state(struct weightd *w, const char *model, const char *component,
		  unsigned int tier, struct weightd_state_info *out)
{
	struct reply rp;
	int ret = client_target_op(w, WD_OP_STATE, model, component, tier, 0, &rp);

	if (ret)
		return ret;
	ret = client_result(&rp, "state", model);
	if (ret >= 0 && out)
		*out = (struct weightd_state_info){ .state = (uint32_t)ret, .done = rp.aux0,
						    .total = rp.aux1 };
	return ret;
}

/* Deprecated alias (docs/names.md): still exported for the programs built with it. */
int weightd_status(struct weightd *w, const char *model, const char *component,
		   unsigned int tier, struct weightd_status *out)
{
	struct weightd_state_info st;
	int ret = weightd_state(w, model, component, tier, &st);

	if (ret >= 0 && out)
		*out = (struct weightd_status){ .state = st.state, .done = st.done,
						.total = st.total };
	return ret;
}

int weightd_scan(struct weightd *w, const char *dir, weightd_progress_fn progress, void *arg)
{
	struct reply rp;
	struct request rq = { .sqe = { .opcode = WD_OP_SCAN, .model = WD_ID_NONE,
				       .component = WD_ID_NONE },
			      .progress = progress, .arg = arg };
	int ret;

	if (!w)
		return client_fail(-EINVAL, "NULL handle");
	if (dir && (ret = client_check_name(dir, "directory")))
		return ret;
	rq.payload = dir;
	rq.payload_len = dir ? strlen(dir) : 0;
	ret = client_submit_wait(w, &rq, &rp);
	if (ret)
		return ret;
	client_errbuf[0] = '\0';
	if (rp.res >= 0 && rp.data_len) /* a scan that found problems names the first one */
		client_copy_text(client_errbuf, sizeof(client_errbuf), rp.data, rp.data_len);
	return client_result(&rp, "scan", dir);
}

int weightd_validate(struct weightd *w, const char *model, const char *component,
		     unsigned int flags, weightd_progress_fn progress, void *arg)
{
	struct request rq = { .sqe = { .opcode = WD_OP_VALIDATE }, .progress = progress,
			      .arg = arg };
	int ret;

	if (!w)
		return client_fail(-EINVAL, "NULL handle");
	if (flags & ~WEIGHTD_VALIDATE_DEEP)
		return client_fail(-EINVAL, "unknown validate flags %#x", flags);
	rq.sqe.arg[0] = flags & WEIGHTD_VALIDATE_DEEP ? WD_VALIDATE_DEEP : 0;
	if ((ret = client_set_target(w, &rq, model, component)))
		return ret;
	ret = client_simple(w, &rq, "validate", model);
	return ret < 0 ? ret : 0;
}

/* META_GET and META_SET name the model by id: resolve it locally or with LOOKUP. */
static int meta_model(struct weightd *w, const char *model, const char *key, uint32_t *id)
{
	int ret;

	if (!w)
		return client_fail(-EINVAL, "NULL handle");
	if ((ret = client_check_name(key, "metadata key")))
		return ret;
	return weightd_lookup(w, model, id);
}

int weightd_meta_get(struct weightd *w, const char *model, const char *key, char *buf,
		     size_t size)
{
	struct request rq = { .sqe = { .opcode = WD_OP_META_GET, .component = WD_ID_NONE } };
	struct reply rp;
	int ret;

	if (!buf && size)
		return client_fail(-EINVAL, "NULL buffer");
	if ((ret = meta_model(w, model, key, &rq.sqe.model)))
		return ret;
	rq.payload = key;
	rq.payload_len = strlen(key);
	if ((ret = client_submit_wait(w, &rq, &rp)))
		return ret;
	ret = client_result(&rp, "meta get", key);
	if (ret < 0)
		return ret;
	if (ret > rp.data_len)
		return client_fail(-EOVERFLOW,
				   "meta get %s: the value has %d bytes, more than a reply "
				   "carries (%u)",
				   key, ret, WD_DATA_SLOT_SIZE);
	if (ret < rp.data_len)
		return client_fail(-EPROTO, "meta get %s: value of %d bytes, %u in the payload",
				   key, ret, rp.data_len);
	if ((size_t)ret >= size)
		return client_fail(-ERANGE, "meta get %s: value of %d bytes does not fit in %zu",
				   key, ret, size);
	memcpy(buf, rp.data, (size_t)ret);
	buf[ret] = '\0';
	return ret;
}

int weightd_meta_set(struct weightd *w, const char *model, const char *key, const char *value)
{
	struct request rq = { .sqe = { .opcode = WD_OP_META_SET, .component = WD_ID_NONE } };
	char payload[WD_DATA_SLOT_SIZE];
	size_t klen, vlen;
	int ret;

	if (!value)
		return client_fail(-EINVAL, "NULL value");
	if ((ret = meta_model(w, model, key, &rq.sqe.model)))
		return ret;
	klen = strlen(key);
	vlen = strlen(value);
	if (klen + 1 + vlen > sizeof(payload))
		return client_fail(-ENAMETOOLONG,
				   "meta set %s: key and value take %zu bytes, at most %zu", key,
				   klen + 1 + vlen, sizeof(payload));
	memcpy(payload, key, klen);
	payload[klen] = '\0';
	memcpy(payload + klen + 1, value, vlen);
	rq.payload = payload;
	rq.payload_len = klen + 1 + vlen;
	ret = client_simple(w, &rq, "meta set", key);
	return ret < 0 ? ret : 0;
}


int weightd_shutdown(struct weightd *w)
{
	struct request rq = { .sqe = { .opcode = WD_OP_SHUTDOWN } };
	int ret;

	if (!w)
		return client_fail(-EINVAL, "NULL handle");
	rq.sqe.model = rq.sqe.component = WD_ID_NONE;
	ret = client_simple(w, &rq, "shutdown", NULL);
	return ret < 0 ? ret : 0;
}


static_assert(WEIGHTD_INFO_FIXED_BUFFERS == WD_INFO_FIXED_BUFFERS &&
	      WEIGHTD_INFO_FIXED_FILES == WD_INFO_FIXED_FILES &&
	      WEIGHTD_INFO_NO_LOADER == WD_INFO_NO_LOADER, "info flags");

int weightd_daemon_info(struct weightd *w, struct weightd_daemon_info *out)
{
	struct request rq = { .sqe = { .opcode = WD_OP_INFO, .model = WD_ID_NONE,
				       .component = WD_ID_NONE } };
	struct wd_info info;
	struct reply rp;
	int ret;

	if (!w || !out)
		return client_fail(-EINVAL, "NULL argument");
	if ((ret = client_submit_wait(w, &rq, &rp)) || (ret = client_result(&rp, "info", NULL)) < 0)
		return ret;
	if (rp.data_len != sizeof(info))
		return client_fail(-EPROTO, "info: a reply of %u bytes, want %zu", rp.data_len,
				   sizeof(info));
	memcpy(&info, rp.data, sizeof(info));
	if (info.state_dir_len > sizeof(info.state_dir) ||
	    memchr(info.state_dir, '\0', info.state_dir_len))
		return client_fail(-EPROTO, "info: a state directory of %u bytes",
				   info.state_dir_len);
	memset(out, 0, sizeof(*out));
	out->flags = info.flags & (WD_INFO_FIXED_BUFFERS | WD_INFO_FIXED_FILES | WD_INFO_NO_LOADER);
	out->fixed_buffers_error = info.buffers_error;
	out->fixed_files_error = info.files_error;
	out->memlock_limit = info.memlock_limit;
	out->staging_bytes = info.staging_bytes;
	if (info.flags & WD_INFO_STATE_DIR_LONG)
		return client_fail(-ENAMETOOLONG,
				   "info: the daemon's state directory is longer than %u "
				   "bytes",
				   WD_INFO_STATE_DIR_MAX);
	memcpy(out->state_dir, info.state_dir, info.state_dir_len);
	return 0;
}

