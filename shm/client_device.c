/*
 * libweightd: the GPU tier from the client's side. DEVICE_MAP has the daemon send a
 * component's VRAM allocation (its fd and tensor table, on the attach socket), which is
 * imported here with the device layer the daemon uses (gpu/device.h); then device addresses,
 * device-to-host reads and the unmap. DEVICES lists the daemon's GPUs, DEVICE_TRIM frees VRAM.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "weightd.h"

#include "core/base/common.h"
#include "shm/abi.h"
#include "shm/attach.h"
#include "shm/client_internal.h"
#include "gpu/device.h"

static_assert(sizeof(struct weightd_device_info) == sizeof(struct wd_device_info),
	      "weightd_device_info mirrors wd_device_info");
static_assert(WEIGHTD_DEVICE_EMULATED == WD_DEVICE_KIND_EMULATED, "device kinds");

#define DEVMAP_TIMEOUT_MS 5000

struct weightd_device_map {
	const struct gpu_ops *ops;
	struct gpu_dev *dev;
	struct gpu_vram v;
	uint32_t ordinal, model, component;	/* ordinal: the daemon's (its tier) */
	int local;			/* this process's ordinal of the same GPU */
	uint32_t n;
	struct wd_devmap_tensor *t;	/* sorted by tensor index */
};

/*
 * The device layer's calls run in the mapping's context, made current around each call and
 * the caller's restored after it: the caller may be PyTorch, whose current device lives in
 * the same per-thread slot, or a garbage collector's thread running a DLPack deleter.
 */
static int import(struct weightd_device_map *m, int fd, uint64_t size, char *why,
		  size_t why_size)
{
	void *saved;
	int ret = m->ops->ctx_enter(m->dev, &saved, why, why_size);

	if (ret)
		return ret;
	ret = m->ops->vram_import(m->dev, fd, size, &m->v, why, why_size);
	m->ops->ctx_leave(m->dev, saved);
	return ret;
}

/*
 * The daemon's messages for one DEVICE_MAP arrive on the socket before its completion; one
 * map at a time per process keeps two threads from taking each other's messages.
 */
static pthread_mutex_t devmap_lock = PTHREAD_MUTEX_INITIALIZER;

static int cmp_tensor(const void *a, const void *b)
{
	const struct wd_devmap_tensor *x = a, *y = b;

	return x->tensor < y->tensor ? -1 : x->tensor > y->tensor;
}

/*
 * Receives the table and the fd of @token (@total entries, allocation @size) into @m and
 * *@fd. Messages of another token (a map whose completion was lost) are dropped.
 */
static int recv_table(struct weightd *w, uint64_t token, uint32_t total, uint64_t size,
		      struct weightd_device_map *m, int *fd)
{
	size_t cap = sizeof(struct wd_devmap_msg) + WD_DEVMAP_PER_MSG *
		     sizeof(struct wd_devmap_tensor);
	uint8_t *buf = malloc(cap);
	uint32_t got = 0;
	bool have_fd = false;
	int ret = 0;

	*fd = -1;
	m->t = calloc(total ? total : 1, sizeof(*m->t));
	if (!buf || !m->t) {
		free(buf);
		return client_fail(-ENOMEM, "device map: out of memory");
	}
	while (!have_fd || got < total) {
		struct pollfd p = { .fd = w->sock, .events = POLLIN };
		struct wd_devmap_msg h;
		int fds[ATTACH_MAX_FDS], nfds = ATTACH_MAX_FDS;
		ssize_t n;

		if (poll(&p, 1, DEVMAP_TIMEOUT_MS) <= 0) {
			ret = client_fail(-ETIMEDOUT,
					  "device map: no allocation from the daemon on the "
					  "socket within %d ms",
					  DEVMAP_TIMEOUT_MS);
			break;
		}
		n = attach_recv(w->sock, buf, cap, fds, &nfds);
		if (n <= 0) {
			ret = client_fail(n ? (int)n : -ECONNRESET, "device map: socket: %s",
					  n ? strerror((int)-n) : "closed by the daemon");
			break;
		}
		memcpy(&h, buf, (size_t)n < sizeof(h) ? (size_t)n : sizeof(h));
		if ((size_t)n < sizeof(h) || h.magic != WD_DEVMAP_MAGIC || h.token != token) {
			for (int i = 0; i < nfds; i++)
				close(fds[i]);
			continue;
		}
		if (h.n > WD_DEVMAP_PER_MSG || (size_t)n != sizeof(h) + h.n * sizeof(*m->t) ||
		    h.first != got || h.total != total || h.size != size ||
		    h.n > total - got || nfds != (have_fd ? 0 : 1)) {
			for (int i = 0; i < nfds; i++)
				close(fds[i]);
			ret = client_fail(-EPROTO,
					  "device map: malformed message from the daemon (%zd "
					  "bytes, %u entries from %u of %u, %d fds)",
					  n, h.n, h.first, h.total, nfds);
			break;
		}
		if (nfds) {
			*fd = fds[0];
			have_fd = true;
		}
		memcpy(m->t + got, buf + sizeof(h), h.n * sizeof(*m->t));
		got += h.n;
	}
	free(buf);
	if (ret) {
		if (*fd >= 0)
			close(*fd);
		*fd = -1;
		return ret;
	}
	m->n = total;
	qsort(m->t, m->n, sizeof(*m->t), cmp_tensor);
	for (uint32_t i = 0; i < m->n; i++)
		if (m->t[i].offset > size || m->t[i].nbytes > size - m->t[i].offset)
			return client_fail(-EPROTO,
					   "device map: tensor %u lies outside the allocation",
					   m->t[i].tensor);
	return 0;
}

static void unpin_ids(struct weightd *w, uint32_t model, uint32_t comp, uint32_t ordinal)
{
	struct request rq = { .sqe = { .opcode = WD_OP_UNPIN, .tier = (uint16_t)WD_TIER_CUDA(ordinal),
				       .model = model, .component = comp } };
	struct reply rp;

	client_submit_wait(w, &rq, &rp);
}

int weightd_device_map_opts(struct weightd *w, const char *model, const char *component,
			    unsigned int device, const struct weightd_load_opts *opts,
			    struct weightd_device_map **out)
{
	unsigned int dtype = opts ? opts->dtype : 0;
	struct request rq = { .sqe = { .opcode = WD_OP_DEVICE_MAP,
				       .tier = (uint16_t)WD_TIER_CUDA(device),
				       .arg = { dtype ? WD_LOAD_CONVERT | (dtype & WD_LOAD_DTYPE_MASK)
						      : 0 } } };
	char sel[WD_DATA_SLOT_SIZE];
	struct weightd_device_map *m;
	struct wd_devmap_reply rep;
	struct reply rp;
	char why[160] = "";
	int ret, fd = -1;

	if (!w || !out)
		return client_fail(-EINVAL, "NULL argument");
	*out = NULL;
	if (device >= WD_TIER_MAX - 1)
		return client_fail(-EINVAL, "device %u out of range (0..%u)", device,
				   WD_TIER_MAX - 2);
	if (dtype > WD_LOAD_DTYPE_MASK)
		return client_fail(-EINVAL, "dtype %u out of range", dtype);
	ret = client_set_target(w, &rq, model, component);
	if (ret)
		return ret;
	if (opts && (opts->prefix || opts->names)) {
		ret = client_pack_selection(opts, sel, &rq.sqe.arg[0]);
		if (ret < 0)
			return ret;
		rq.payload = sel;
		rq.payload_len = (size_t)ret;
	}
	m = calloc(1, sizeof(*m));
	if (!m)
		return client_fail(-ENOMEM, "out of memory");
	m->v.fd = -1;
	pthread_mutex_lock(&devmap_lock);
	ret = client_submit_wait(w, &rq, &rp);
	if (!ret)
		ret = client_result(&rp, "device map", model);
	if (ret < 0)
		goto out;
	m->ordinal = device;
	m->model = rq.sqe.model;
	if (rp.data_len != sizeof(rep)) {
		ret = client_fail(-EPROTO, "device map: a %u-byte reply", rp.data_len);
		/* The pin the daemon took is on the component: released here when it was named,
		 * else at detach (the reply that would say which one is what is broken). */
		m->component = rq.sqe.component;
		if (m->component != WD_ID_NONE)
			goto unpin;
		goto out;
	}
	memcpy(&rep, rp.data, sizeof(rep));
	m->component = rep.component;
	/* The kind picks the device layer this process imports with: never guess it. */
	if (rep.ordinal != device || rep.kind > WD_DEVICE_KIND_EMULATED) {
		ret = client_fail(-EPROTO,
				  "device map: a reply for device %u of kind %u, asked for "
				  "device %u",
				  rep.ordinal, rep.kind, device);
		goto unpin;
	}
	ret = recv_table(w, rp.aux1, rep.n_tensors, rp.aux0, m, &fd);
	if (ret)
		goto unpin;
	m->ops = rep.kind == WD_DEVICE_KIND_EMULATED ? &gpu_emu_ops : &gpu_cuda_ops;
	/* Ordinals are per process: the bus id says which GPU this process must open. */
	rep.device_id[sizeof(rep.device_id) - 1] = '\0';
	ret = m->ops->find(rep.device_id, &m->local, why, sizeof(why));
	if (ret) {
		ret = client_fail(ret,
				  "device map: the daemon's cuda:%u (%s %s) is not visible in this "
				  "process (CUDA_VISIBLE_DEVICES, or the container's devices): %s",
				  rep.ordinal, m->ops->kind, rep.device_id, why);
		goto unpin;
	}
	ret = m->ops->open(m->local, &m->dev, why, sizeof(why));
	if (ret) {
		m->dev = NULL;
		ret = client_fail(ret,
				  "device map: cannot open %s device %s (cuda:%d here, cuda:%u in "
				  "the daemon) in this process: %s",
				  m->ops->kind, rep.device_id, m->local, rep.ordinal, why);
		goto unpin;
	}
	ret = import(m, fd, rp.aux0, why, sizeof(why));
	if (ret) {
		m->v.fd = -1;
		ret = client_fail(ret, "device map: cannot import the allocation: %s", why);
		goto unpin;
	}
	close(fd);
	pthread_mutex_unlock(&devmap_lock);
	*out = m;
	return 0;
unpin:
	unpin_ids(w, m->model, m->component, m->ordinal);
out:
	pthread_mutex_unlock(&devmap_lock);
	if (fd >= 0)
		close(fd);
	if (m->dev)
		m->ops->close(m->dev);
	free(m->t);
	free(m);
	return ret < 0 ? ret : -EPROTO;
}

/* Deprecated aliases (docs/names.md): still exported for the programs built with them. */
int weightd_device_map(struct weightd *w, const char *model, const char *component,
		       unsigned int device, struct weightd_device_map **out)
{
	return weightd_device_map_opts(w, model, component, device, NULL, out);
}

int weightd_device_map_ex(struct weightd *w, const char *model, const char *component,
			  unsigned int device, unsigned int dtype, struct weightd_device_map **out)
{
	struct weightd_load_opts o = { .dtype = dtype };

	return weightd_device_map_opts(w, model, component, device, &o, out);
}

int weightd_device_ordinal(const struct weightd_device_map *m)
{
	return m ? m->local : -1;
}

uint64_t weightd_device_base(const struct weightd_device_map *m)
{
	return m ? m->v.dptr : 0;
}

uint64_t weightd_device_size(const struct weightd_device_map *m)
{
	return m ? m->v.size : 0;
}

static const struct wd_devmap_tensor *find_entry(const struct weightd_device_map *m,
						 const struct weightd_tensor_info *t)
{
	struct wd_devmap_tensor key = { .tensor = t->id };

	if (t->component != m->component)
		return NULL;
	return bsearch(&key, m->t, m->n, sizeof(*m->t), cmp_tensor);
}

int weightd_tensor_device_ptr(const struct weightd_device_map *m,
			      const struct weightd_tensor_info *t, uint64_t *dptr)
{
	const struct wd_devmap_tensor *e;

	if (!m || !t || !dptr)
		return client_fail(-EINVAL, "NULL argument");
	e = find_entry(m, t);
	if (!e)
		return client_fail(-ENOENT, "tensor %u is not in the mapped component %u", t->id,
				   m->component);
	*dptr = m->v.dptr + e->offset;
	return 0;
}

int weightd_tensor_device_info(const struct weightd_device_map *m,
			       const struct weightd_tensor_info *t, uint64_t *dptr,
			       unsigned int *dtype, uint64_t *nbytes)
{
	const struct wd_devmap_tensor *e;

	if (!m || !t)
		return client_fail(-EINVAL, "NULL argument");
	e = find_entry(m, t);
	if (!e)
		return client_fail(-ENOENT, "tensor %u is not in the mapped component %u", t->id,
				   m->component);
	if (dptr)
		*dptr = m->v.dptr + e->offset;
	if (dtype)
		*dtype = e->dtype;
	if (nbytes)
		*nbytes = e->nbytes;
	return 0;
}

int weightd_device_read(const struct weightd_device_map *m, const struct weightd_tensor_info *t,
			void *dst, size_t size)
{
	const struct wd_devmap_tensor *e;
	char why[160] = "";
	void *saved;
	int ret;

	if (!m || !t || (!dst && size))
		return client_fail(-EINVAL, "NULL argument");
	e = find_entry(m, t);
	if (!e)
		return client_fail(-ENOENT, "tensor %u is not in the mapped component %u", t->id,
				   m->component);
	if (size < e->nbytes)
		return client_fail(-EINVAL, "buffer of %zu bytes for a tensor of %" PRIu64, size,
				   (uint64_t)e->nbytes);
	if (!e->nbytes)
		return 0;
	ret = m->ops->ctx_enter(m->dev, &saved, why, sizeof(why));
	if (!ret) {
		ret = m->ops->copy_d2h(m->dev, dst, m->v.dptr + e->offset, e->nbytes, why,
				       sizeof(why));
		m->ops->ctx_leave(m->dev, saved);
	}
	return ret ? client_fail(ret, "device read: %s", why) : 0;
}

void weightd_device_unmap(struct weightd *w, struct weightd_device_map *m)
{
	char why[160];
	void *saved;

	if (!m)
		return;
	/* Also on a DLPack deleter's thread: that thread's context is put back. */
	if (!m->ops->ctx_enter(m->dev, &saved, why, sizeof(why))) {
		m->ops->vram_free(m->dev, &m->v);
		m->ops->ctx_leave(m->dev, saved);
	}
	m->ops->close(m->dev);
	if (w)
		unpin_ids(w, m->model, m->component, m->ordinal);
	free(m->t);
	free(m);
}

int weightd_devices(struct weightd *w, struct weightd_device_info *out, unsigned int max,
		    char *why, size_t why_size)
{
	uint32_t total = 0, got = 0;

	if (!w || (!out && max))
		return client_fail(-EINVAL, "NULL argument");
	if (why && why_size)
		why[0] = '\0';
	do {
		struct request rq = { .sqe = { .opcode = WD_OP_DEVICES, .model = WD_ID_NONE,
					       .component = WD_ID_NONE, .arg = { got } } };
		struct reply rp;
		int ret = client_submit_wait(w, &rq, &rp);
		uint32_t n;

		if (!ret)
			ret = client_result(&rp, "devices", NULL);
		if (ret < 0)
			return ret;
		total = (uint32_t)ret;
		if (!total) {
			if (why && why_size)
				client_copy_text(why, why_size, rp.data, rp.data_len);
			return 0;
		}
		n = (uint32_t)(rp.aux0 <= WD_DEVICES_PER_REPLY ? rp.aux0 : 0);
		if (rp.data_len != n * sizeof(struct wd_device_info) || !n)
			return client_fail(-EPROTO, "devices: a reply of %u bytes for %u entries",
					   rp.data_len, n);
		for (uint32_t i = 0; i < n && got + i < max; i++) {
			memcpy(&out[got + i], rp.data + i * sizeof(struct wd_device_info),
			       sizeof(*out));
			out[got + i].name[sizeof(out->name) - 1] = '\0';
		}
		got += n;
	} while (got < total && got < max);
	return (int)total;
}

int64_t weightd_device_trim(struct weightd *w, unsigned int device, uint64_t bytes)
{
	struct request rq = { .sqe = { .opcode = WD_OP_DEVICE_TRIM, .model = WD_ID_NONE,
				       .component = WD_ID_NONE,
				       .tier = (uint16_t)WD_TIER_CUDA(device), .arg = { bytes } } };
	struct reply rp;
	int ret;

	if (!w)
		return client_fail(-EINVAL, "NULL argument");
	if (device >= WD_TIER_MAX - 1)
		return client_fail(-EINVAL, "device %u out of range (0..%u)", device,
				   WD_TIER_MAX - 2);
	ret = client_submit_wait(w, &rq, &rp);
	if (!ret)
		ret = client_result(&rp, "device trim", NULL);
	if (ret < 0)
		return ret;
	return rp.aux0 > INT64_MAX ? INT64_MAX : (int64_t)rp.aux0;
}

