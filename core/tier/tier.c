/*
 * What both cache tiers share: the decoding of a request's form (arg[0] and the payload of
 * LOAD and DEVICE_MAP), the components a request targets, client pins and the bookkeeping of
 * a request fanned out over several loads. See core/tier/tier.h.
 */
#include "core/tier/tier.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "core/format/convert.h"
#include "core/policy/evict.h"

uint16_t tier_msg(char *out, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(out, WD_DATA_SLOT_SIZE, fmt, ap);
	va_end(ap);
	if (n < 0)
		return 0;
	return (uint16_t)(n >= (int)WD_DATA_SLOT_SIZE ? (int)WD_DATA_SLOT_SIZE - 1 : n);
}

/* The selection part of tier_parse_form(): arg[0] & (PREFIX | NAMES) is set. */
static int parse_selection(const struct wd_sqe *sqe, uint64_t a, const char *arg, uint16_t len,
			   const char *op, struct tier_form *f, char *out, uint16_t *out_len)
{
	if (sqe->model == WD_ID_NONE) {
		*out_len = tier_msg(out, "%s: a tensor selection needs the model by index (the "
				    "payload is the selection)", op);
		return -EINVAL;
	}
	if (!len || len > WD_DATA_SLOT_SIZE || !arg ||
	    ((a & WD_LOAD_PREFIX) && memchr(arg, '\0', len))) {
		*out_len = tier_msg(out, "%s: empty or malformed tensor selection", op);
		return -EINVAL;
	}
	f->sel = (a & WD_LOAD_PREFIX) ? TIER_SEL_PREFIX : TIER_SEL_NAMES;
	f->sel_hash = XXH3_64bits(arg, len);
	f->payload = arg;
	f->len = len;
	return 0;
}

int tier_parse_form(const struct wd_sqe *sqe, const char *arg, uint16_t len, const char *op,
		    struct tier_form *f, char *out, uint16_t *out_len)
{
	uint64_t a = sqe->arg[0];
	uint8_t to = (uint8_t)(a & WD_LOAD_DTYPE_MASK);

	memset(f, 0, sizeof(*f));
	if (a & ~(uint64_t)WD_LOAD_ARG_ALL || sqe->arg[1] || sqe->arg[2] || sqe->arg[3] ||
	    sqe->arg[4]) {
		*out_len = tier_msg(out, "%s: unknown bits in arg[0] (%#" PRIx64 ") or arg[1..4]",
				    op, a);
		return -EINVAL;
	}
	if (a & WD_LOAD_CONVERT) {
		if (!convert_supported(ST_F32, (enum st_dtype)to)) {
			*out_len = tier_msg(out, "%s: F32 converts to F16 (%u) or BF16 (%u), not "
					    "dtype %u", op, (unsigned int)ST_F16,
					    (unsigned int)ST_BF16, to);
			return -EINVAL;
		}
		f->convert = to;
	} else if (to) {
		*out_len = tier_msg(out, "%s: a dtype in arg[0] without WD_LOAD_CONVERT", op);
		return -EINVAL;
	}
	if ((a & WD_LOAD_PREFIX) && (a & WD_LOAD_NAMES)) {
		*out_len = tier_msg(out, "%s: WD_LOAD_PREFIX and WD_LOAD_NAMES together", op);
		return -EINVAL;
	}
	if (a & (WD_LOAD_PREFIX | WD_LOAD_NAMES))
		return parse_selection(sqe, a, arg, len, op, f, out, out_len);
	return 0;
}

void tier_targets(const struct tier_env *env, uint32_t model, uint32_t comp, uint32_t *first,
		  uint32_t *n)
{
	*first = 0;
	*n = 0;
	if (comp != WD_ID_NONE) {
		*first = comp;
		*n = 1;
		return;
	}
	env->sink.model_comps(env->sink.ctx, model, first, n);
}

/* ---- pins -------------------------------------------------------------------------------- */

uint32_t tier_pins_count(const struct lease_table *t,
			 bool (*covers)(const void *ent, const struct lease_pin *p),
			 const void *ent)
{
	uint32_t want = 0;

	for (const struct lease *l = t->head; l; l = l->next)
		for (size_t i = 0; i < l->n; i++)
			if (covers(ent, &l->pins[i]))
				want++;
	return want;
}

void tier_pins_apply(struct evict_policy *pol, const char *key, uint32_t *have, uint32_t want)
{
	for (; *have < want; (*have)++)
		evict_pin(pol, key);
	for (; *have > want; (*have)--)
		evict_unpin(pol, key);
}

void tier_take_pin(const struct tier_env *env, struct tier_client *c, const struct lease_pin *p)
{
	struct lease *l;

	pthread_mutex_lock(env->state_lock);
	l = env->sink.lease_of(env->sink.ctx, c);
	if (l && lease_pin(env->leases, l, p) == 0) {
		registry_set_model_pins(env->reg, p->model, lease_model_pins(env->leases, p->model));
		registry_counter_add(env->reg, WD_CTR_PINS, 1);
	}
	pthread_mutex_unlock(env->state_lock);
}

/* ---- requests ---------------------------------------------------------------------------- */

void tier_req_fail(struct tier_request *r, int err, const char *msg)
{
	if (r->err)
		return;
	r->err = err;
	snprintf(r->msg, sizeof(r->msg), "%s", msg && *msg ? msg : strerror(-err));
}

void tier_req_finish(const struct tier_env *env, struct tier_request *r)
{
	struct wd_cqe cqe = { .user_data = r->user_data, .res = r->err, .aux0 = r->bytes,
			      .aux1 = r->read_bytes };
	size_t len = r->err ? strnlen(r->msg, sizeof(r->msg) - 1) : 0;

	if (!r->err && (r->flags & WD_SQE_F_PIN))
		tier_take_pin(env, r->c, &r->pin);
	env->sink.post(env->sink.ctx, r->c, &cqe, &r->spare, r->msg, len);
	env->sink.client_put(env->sink.ctx, r->c);
	/* Left when the daemon did not take it (it takes it whenever it posts a final one). */
	free(r->spare);
	r->spare = NULL;
}
