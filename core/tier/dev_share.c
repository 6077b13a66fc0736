/*
 * What clients see of the GPUs, on the shard: DEVICE_MAP (a lease pin, the allocation's fd and
 * its tensor table on the client's socket), DEVICES (each GPU's state, budget and copy path),
 * DEVICE_TRIM (evictions on demand, waiting for the device thread to finish them) and the
 * bytes resident on all GPUs (WD_STAT_CUDA_BYTES).
 */
#include "core/tier/dev_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/base/log.h"
#include "gpu/staging.h"

/* sendmsg() that never blocks the shard: a client that does not read its socket fails. */
static int send_nb(int sock, const void *buf, size_t len, int fd)
{
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = { .iov_base = (void *)buf, .iov_len = len };
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
	ssize_t n;

	if (fd >= 0) {
		struct cmsghdr *cm;

		memset(cbuf, 0, sizeof(cbuf));
		mh.msg_control = cbuf;
		mh.msg_controllen = sizeof(cbuf);
		cm = CMSG_FIRSTHDR(&mh);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	}
	do
		n = sendmsg(sock, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return -errno;
	return (size_t)n == len ? 0 : -EMSGSIZE;
}

/* Sends @e's fd and tensor table for @token. Returns the number of messages or -errno. */
static int send_table(int sock, const struct dentry *e, uint64_t token, uint32_t *n_tensors)
{
	size_t cap = sizeof(struct wd_devmap_msg) + WD_DEVMAP_PER_MSG *
		     sizeof(struct wd_devmap_tensor);
	uint8_t *buf = malloc(cap);
	uint32_t total = 0, sent = 0, i = 0;
	int msgs = 0, ret = 0;

	if (!buf)
		return -ENOMEM;
	for (uint32_t k = 0; k < e->l.n_t; k++)
		total += e->l.t[k].tid != NO_TID;
	do {
		struct wd_devmap_msg *h = (struct wd_devmap_msg *)buf;
		struct wd_devmap_tensor *t = (struct wd_devmap_tensor *)(h + 1);
		uint32_t n = 0;

		for (; i < e->l.n_t && n < WD_DEVMAP_PER_MSG; i++) {
			const struct hostcache_tensor *ht = &e->l.t[i];

			if (ht->tid == NO_TID)
				continue;
			t[n++] = (struct wd_devmap_tensor){ .tensor = ht->tid, .dtype = ht->dtype,
							    .offset = ht->off, .nbytes = ht->nbytes };
		}
		*h = (struct wd_devmap_msg){ .magic = WD_DEVMAP_MAGIC, .n = n, .token = token,
					     .size = e->v.size, .first = sent, .total = total };
		ret = send_nb(sock, buf, sizeof(*h) + n * sizeof(*t), msgs ? -1 : e->v.fd);
		sent += n;
		msgs++;
	} while (!ret && sent < total);
	free(buf);
	*n_tensors = total;
	return ret ? ret : msgs;
}

/*
 * The checks of a DEVICE_MAP: a GPU tier that exists, no flags, a well-formed form (into @f)
 * and one component (into *@comp). Returns its GPU, or NULL with @cqe and @out filled.
 */
static struct dgpu *map_target(struct devcache *dc, const struct wd_sqe *sqe, const char *arg,
			       uint16_t arg_len, uint32_t model, struct tier_form *f,
			       uint32_t *comp, struct wd_cqe *cqe, char *out)
{
	struct dgpu *g = dev_gpu_of(dc, sqe->tier);
	uint32_t n;

	if (sqe->tier == WD_TIER_HOST) {
		cqe->data_len = tier_msg(out, "device_map: the host tier is mapped at attach; name "
					 "a GPU tier");
		cqe->res = -EINVAL;
		return NULL;
	}
	if (!g) {
		dev_no_gpu(dc, sqe->tier, "device_map", cqe, out);
		return NULL;
	}
	if (sqe->flags) {
		cqe->data_len = tier_msg(out, "device_map: flags must be 0");
		cqe->res = -EINVAL;
		return NULL;
	}
	cqe->res = tier_parse_form(sqe, arg, arg_len, "device_map", f, out, &cqe->data_len);
	if (cqe->res)
		return NULL;
	tier_targets(&dc->env, model, sqe->component, comp, &n);
	if (n != 1) {
		cqe->data_len = tier_msg(out, "device_map: name one component (the model has %u)",
					 n);
		cqe->res = -EINVAL;
		return NULL;
	}
	return g;
}

/* Adds the mapping's pin @p to @c's lease and publishes the model's pin count. Returns
 * lease_pin()'s result (0: a new pin), or -ECONNRESET when @c's lease ended. */
static int pin_map(struct devcache *dc, struct tier_client *c, const struct lease_pin *p)
{
	struct lease *l;
	int ret;

	pthread_mutex_lock(dc->env.state_lock);
	l = dc->env.sink.lease_of(dc->env.sink.ctx, c);
	ret = !l ? -ECONNRESET : lease_pin(dc->env.leases, l, p);
	if (ret == 0) {
		registry_set_model_pins(dc->env.reg, p->model,
					lease_model_pins(dc->env.leases, p->model));
		registry_counter_add(dc->env.reg, WD_CTR_PINS, 1);
	}
	pthread_mutex_unlock(dc->env.state_lock);
	return ret;
}

/* Takes back the new pin @p of a mapping that could not be sent. */
static void unpin_map(struct devcache *dc, struct tier_client *c, const struct lease_pin *p)
{
	struct lease *l;

	pthread_mutex_lock(dc->env.state_lock);
	l = dc->env.sink.lease_of(dc->env.sink.ctx, c);
	if (l && !lease_unpin(dc->env.leases, l, p)) {
		registry_set_model_pins(dc->env.reg, p->model,
					lease_model_pins(dc->env.leases, p->model));
		registry_counter_add(dc->env.reg, WD_CTR_PINS, -1);
	}
	pthread_mutex_unlock(dc->env.state_lock);
}

void devcache_map(struct devcache *dc, struct tier_client *c, int sock,
		  const struct wd_sqe *sqe, const char *arg, uint16_t arg_len, uint32_t model,
		  struct wd_cqe *cqe, char *out)
{
	struct wd_devmap_reply rep = { 0 };
	struct dentry *e;
	struct dgpu *g;
	uint32_t first;
	struct tier_form f;
	int ret, msgs;

	g = map_target(dc, sqe, arg, arg_len, model, &f, &first, cqe, out);
	if (!g)
		return;
	pthread_mutex_lock(&dc->lock);
	e = dev_find(dc, g, first, &f);
	if (!e || !e->resident) {
		pthread_mutex_unlock(&dc->lock);
		cqe->data_len = tier_msg(out, "device_map: component %u is not resident on cuda:%d "
					 "in that form (LOAD it there first)", first, g->ordinal);
		cqe->res = -ENODATA;
		return;
	}
	ret = pin_map(dc, c, &(struct lease_pin){ .model = model, .component = first,
						  .tier = sqe->tier });
	if (ret < 0) {
		pthread_mutex_unlock(&dc->lock);
		cqe->res = ret;
		return;
	}
	msgs = send_table(sock, e, ++dc->token, &rep.n_tensors);
	if (msgs < 0) {
		if (ret == 0)
			unpin_map(dc, c, &(struct lease_pin){ .model = model, .component = first,
							      .tier = sqe->tier });
		pthread_mutex_unlock(&dc->lock);
		cqe->data_len = tier_msg(out, "device_map: cannot send the allocation on the "
					 "socket: %s", strerror(-msgs));
		cqe->res = msgs;
		return;
	}
	dev_sync_pins(dc);
	rep.ordinal = (uint32_t)g->ordinal;
	rep.kind = strcmp(dc->ops->kind, "emulated") ? WD_DEVICE_KIND_CUDA :
		   WD_DEVICE_KIND_EMULATED;
	rep.n_msgs = (uint32_t)msgs;
	rep.component = first;
	snprintf(rep.device_id, sizeof(rep.device_id), "%s", g->info.id);
	cqe->aux0 = e->v.size;
	cqe->aux1 = dc->token;
	pthread_mutex_unlock(&dc->lock);
	memcpy(out, &rep, sizeof(rep));
	cqe->data_len = sizeof(rep);
	cqe->res = 0;
}

/* How host -> VRAM copies run on @g: the staging ring's state, for DEVICES. */
static void copy_path(const struct dgpu *g, struct wd_device_info *v)
{
	struct staging_stats st;

	if (!g->st) {
		v->flags = WD_DEVICE_F_NO_STAGING;
		return;
	}
	staging_get_stats(g->st, &st);
	if (!st.slots_locked) {
		v->flags |= WD_DEVICE_F_SLOTS_PAGEABLE;
		v->locked_err = (int16_t)st.slots_err;
	}
	if (!st.fixed_buffers) {
		v->flags |= WD_DEVICE_F_NO_FIXED_BUFFERS;
		v->fixed_err = (int16_t)st.fixed_buffers_err;
	}
	if (st.node_err)
		v->flags |= WD_DEVICE_F_OFF_NODE;
}

uint32_t devcache_list(struct devcache *dc, uint32_t start, void *out, uint16_t *n_out,
		       uint16_t *text_len)
{
	struct wd_device_info *v = out;
	uint16_t k = 0;

	*n_out = 0;
	*text_len = 0;
	if (!dc->n) {
		*text_len = tier_msg(out, "%s", dc->why);
		return 0;
	}
	pthread_mutex_lock(&dc->lock);
	dev_sync_pins(dc);
	for (uint32_t i = start; i < dc->n && k < WD_DEVICES_PER_REPLY; i++) {
		const struct dgpu *g = &dc->g[i];
		struct evict_counters ec;
		uint32_t entries = 0;

		for (struct dentry *e = dc->entries; e; e = e->next)
			entries += e->g == g;
		evict_get_counters(g->pol, &ec);
		memset(&v[k], 0, sizeof(v[k]));
		v[k].ordinal = (uint32_t)g->ordinal;
		v[k].kind = strcmp(dc->ops->kind, "emulated") ? WD_DEVICE_KIND_CUDA :
			    WD_DEVICE_KIND_EMULATED;
		v[k].numa_node = g->numa;
		v[k].entries = entries;
		v[k].total_bytes = g->info.total_bytes;
		v[k].budget = g->budget;
		v[k].used = evict_used(g->pol) + evict_reserved(g->pol);
		v[k].hits = ec.hits;
		v[k].misses = ec.misses;
		v[k].evictions = ec.evictions;
		v[k].evict_bytes = ec.evict_bytes;
		v[k].load_bytes = g->load_bytes;
		snprintf(v[k].name, sizeof(v[k].name), "%s", g->info.name);
		copy_path(g, &v[k]);
		k++;
	}
	pthread_mutex_unlock(&dc->lock);
	*n_out = k;
	return dc->n;
}

int64_t devcache_trim(struct devcache *dc, uint32_t tier, uint64_t bytes, char *out,
		      uint16_t *out_len)
{
	struct dgpu *g = dc ? dev_gpu_of(dc, tier) : NULL;
	struct trim_wait tw = { .done = false };
	struct dentry *later = NULL;
	struct dwork *w;
	int64_t freed;
	unsigned int n = 0;

	if (!g) {
		*out_len = tier_msg(out, "device_trim: no GPU tier %u (%u GPUs%s%s)", tier,
				    dc ? dc->n : 0, dc && !dc->n ? ": " : "",
				    dc && !dc->n ? dc->why : "");
		return -ENOTSUP;
	}
	w = calloc(1, sizeof(*w));
	if (!w) {
		*out_len = tier_msg(out, "device_trim: out of memory");
		return -ENOMEM;
	}
	pthread_mutex_lock(&dc->lock);
	freed = dev_evict_until(dc, g, bytes, &later, &n);
	pthread_mutex_unlock(&dc->lock);
	if (!later) {
		free(w);
		return 0;
	}
	/* Demotion copies and frees run on the device thread, in the GPU's context; the reply
	 * waits for them, so that the client finds the room free when it retries. */
	pthread_mutex_init(&tw.lock, NULL);
	pthread_cond_init(&tw.cond, NULL);
	w->trim = &tw;
	w->g = g;
	w->evicted = later;
	dev_queue_work(dc, w);
	pthread_mutex_lock(&tw.lock);
	while (!tw.done)
		pthread_cond_wait(&tw.cond, &tw.lock);
	pthread_mutex_unlock(&tw.lock);
	pthread_cond_destroy(&tw.cond);
	pthread_mutex_destroy(&tw.lock);
	log_info(MOD, "\"trimmed\" tier=cuda:%d asked=%" PRIu64 " freed=%" PRId64 " entries=%u",
		 g->ordinal, bytes, freed, n);
	return freed;
}

uint64_t devcache_bytes(struct devcache *dc)
{
	uint64_t n = 0;

	if (!dc)
		return 0;
	pthread_mutex_lock(&dc->lock);
	for (unsigned int i = 0; i < dc->n; i++)
		n += evict_used(dc->g[i].pol);
	pthread_mutex_unlock(&dc->lock);
	return n;
}
