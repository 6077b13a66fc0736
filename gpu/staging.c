/*
 * The pinned staging ring (gpu/staging.h), its setup and its host copies: the slots (bound to
 * the GPU's NUMA node, page-locked, io_uring fixed buffers), the copy streams and the ring,
 * and staging_copy_host(), which sends host memory to VRAM (pageable memory through the
 * slots). The disk-to-VRAM pipeline is gpu/staging_load.c.
 */
#include "gpu/staging.h"

#include <errno.h>
#include <inttypes.h>
#include <numaif.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "core/base/log.h"
#include "gpu/staging_int.h"

/*
 * The slots: anonymous memory from mmap, bound to @node (MPOL_BIND with MPOL_MF_STRICT, before
 * the first touch, so that a refusal is seen rather than silently ignored), touched, then
 * page-locked with host_register (PORTABLE). Not cuMemHostAlloc: io_uring may refuse to
 * register the driver's memory as fixed buffers (EOPNOTSUPP), and that refusal used to turn
 * into slow unregistered reads with nothing said. Each step that fails is recorded in the
 * stats and logged; only a failed mmap fails the ring.
 */
static int alloc_slots(struct staging *st, size_t bytes, int node, char *why, size_t why_size)
{
	unsigned long mask[16] = { 0 };
	unsigned long maxnode = sizeof(mask) * 8;
	char rwhy[STAGING_MSG_MAX] = "";
	bool mine = false;
	void *p;
	int rc;

	if (node >= 0 && (unsigned long)node >= maxnode) {
		snprintf(why, why_size, "staging: NUMA node %d out of range", node);
		return -EINVAL;
	}
	p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED) {
		rc = -errno;
		snprintf(why, why_size, "staging: mmap of %zu bytes: %s", bytes, strerror(-rc));
		return rc;
	}
	st->mem = p;
	st->mem_bytes = bytes;
	if (node >= 0) {
		mask[node / (8 * sizeof(long))] = 1ul << (node % (8 * sizeof(long)));
		st->stats.node_err = mbind(p, bytes, MPOL_BIND, mask, maxnode, MPOL_MF_STRICT) < 0 ?
				     -errno : 0;
		if (st->stats.node_err == -EINVAL) {
			/* Not a node of this machine: the caller's mistake, not a degradation. */
			snprintf(why, why_size, "staging: binding the slots to NUMA node %d: %s",
				 node, strerror(EINVAL));
			return -EINVAL;
		}
		if (st->stats.node_err)
			log_warn("staging", "\"staging slots not bound to the GPU's node\" node=%d "
				 "err=%d", node, st->stats.node_err);
	}
	memset(p, 0, bytes);
	rc = gpu_host_register_once(st->ops, st->dev, p, bytes, &mine, rwhy, sizeof(rwhy));
	st->registered = mine;
	st->stats.slots_locked = rc == 0;
	st->stats.slots_err = rc;
	if (rc)
		log_warn("staging", "\"staging slots not page-locked: copies run at pageable speed\" "
			 "err=%d why=\"%s\"", rc, rwhy);
	return 0;
}

int staging_create(const struct gpu_ops *ops, struct gpu_dev *dev,
		   const struct staging_options *opt, struct staging **out, char *why,
		   size_t why_size)
{
	struct staging_options o = opt ? *opt : (struct staging_options){ .node = -1 };
	struct iovec *iov = NULL;
	struct staging *st;
	int rc;

	*out = NULL;
	if (!o.n_slots)
		o.n_slots = STAGING_DEFAULT_SLOTS;
	if (!o.slot_bytes)
		o.slot_bytes = STAGING_DEFAULT_SLOT_BYTES;
	if (!o.n_streams)
		o.n_streams = STAGING_DEFAULT_STREAMS;
	if (o.n_slots < 2 || o.n_slots > 64 || o.slot_bytes % DIO_ALIGN ||
	    o.slot_bytes < (64u << 10) || o.slot_bytes > (1u << 30) || o.n_streams > 16) {
		snprintf(why, why_size, "staging: bad options: %u slots of %u bytes, %u streams "
			 "(want 2..64 slots, 64K..1G multiple of 4K, 1..16 streams)", o.n_slots,
			 o.slot_bytes, o.n_streams);
		return -EINVAL;
	}
	st = calloc(1, sizeof(*st));
	if (!st)
		goto nomem;
	st->ops = ops;
	st->dev = dev;
	st->n_slots = o.n_slots;
	st->slot_bytes = o.slot_bytes;
	st->n_streams = o.n_streams;
	st->no_direct = o.no_direct;
	st->stats.node = o.node;
	st->slots = calloc(o.n_slots, sizeof(*st->slots));
	st->streams = calloc(o.n_streams, sizeof(*st->streams));
	iov = calloc(o.n_slots, sizeof(*iov));
	if (!st->slots || !st->streams || !iov) {
		staging_destroy(st);
		free(iov);
		goto nomem;
	}
	rc = alloc_slots(st, (size_t)o.n_slots * o.slot_bytes, o.node, why, why_size);
	if (rc)
		goto fail;
	for (uint32_t i = 0; i < o.n_streams; i++) {
		rc = ops->stream_create(dev, &st->streams[i], why, why_size);
		if (rc)
			goto fail;
	}
	rc = io_uring_queue_init(RING_QD, &st->ring, 0);
	if (rc < 0) {
		snprintf(why, why_size, "staging: io_uring_queue_init: %s", strerror(-rc));
		goto fail;
	}
	st->ring_ok = true;
	for (uint32_t i = 0; i < o.n_slots; i++) {
		st->slots[i].buf = st->mem + (size_t)i * o.slot_bytes;
		iov[i].iov_base = st->slots[i].buf;
		iov[i].iov_len = o.slot_bytes;
	}
	/* Both are optimisations: without them reads pin pages per I/O and look files up. */
	rc = io_uring_register_buffers(&st->ring, iov, o.n_slots);
	st->stats.fixed_buffers = rc == 0;
	st->stats.fixed_buffers_err = rc;
	if (rc)
		log_warn("staging", "\"staging slots are not io_uring fixed buffers: reads pin "
			 "pages one by one\" err=%d (%s)", rc, strerror(-rc));
	rc = io_uring_register_files_sparse(&st->ring, MAX_FIXED_FILES);
	st->stats.fixed_files = rc == 0;
	if (rc)
		log_info("staging", "\"unregistered files\" rc=%d", rc);
	free(iov);
	*out = st;
	return 0;
nomem:
	snprintf(why, why_size, "staging: out of memory");
	return -ENOMEM;
fail:
	free(iov);
	staging_destroy(st);
	return rc;
}

void staging_destroy(struct staging *st)
{
	if (!st)
		return;
	if (st->ring_ok)
		io_uring_queue_exit(&st->ring);
	for (uint32_t i = 0; st->slots && i < st->n_slots; i++)
		if (st->slots[i].ev)
			st->ops->event_destroy(st->dev, st->slots[i].ev);
	for (uint32_t i = 0; st->streams && i < st->n_streams; i++)
		if (st->streams[i])
			st->ops->stream_destroy(st->dev, st->streams[i]);
	if (st->registered)
		st->ops->host_unregister(st->dev, st->mem);
	if (st->mem)
		munmap(st->mem, st->mem_bytes);
	free(st->slots);
	free(st->streams);
	free(st);
}

void staging_get_stats(const struct staging *st, struct staging_stats *out)
{
	*out = st->stats;
}

int staging_copy_host(struct staging *st, const struct staging_host_copy *hc, size_t n,
		      const struct staging_call *call, char *why, size_t why_size)
{
	struct gpu_event *ev[MAX_HOST_EVENTS];
	uint64_t ev_bytes[MAX_HOST_EVENTS];
	uint64_t done = 0, total = 0, reported = 0;
	uint32_t head = 0, count = 0;
	int rc = 0;

	if (why_size)
		why[0] = '\0';
	for (size_t i = 0; i < n; i++) {
		if (hc[i].len && (!hc[i].src || hc[i].dst + hc[i].len < hc[i].dst)) {
			snprintf(why, why_size, "staging: host copy %zu: %s", i,
				 hc[i].src ? "destination overflows" : "NULL source");
			return -EINVAL;
		}
		total += hc[i].len;
	}
	for (size_t i = 0; i < n && !rc; i++) {
		for (uint64_t off = 0; off < hc[i].len && !rc;) {
			uint64_t len = hc[i].len - off < st->slot_bytes ? hc[i].len - off :
									  st->slot_bytes;
			struct gpu_stream *s = st->streams[st->rr++ % st->n_streams];
			const char *src;
			uint32_t tail;

			if (cancelled(call)) {
				snprintf(why, why_size, "cancelled after %" PRIu64 " of %" PRIu64
					 " bytes", done, total);
				rc = -ECANCELED;
				break;
			}
			/* A staged chunk reuses the slot of the staged chunk n_slots before it: with
			 * fewer than n_slots chunks in flight, that one has completed. */
			while (count == MAX_HOST_EVENTS || (!hc[i].locked && count >= st->n_slots)) {
				/* Wait for the oldest chunk. */
				rc = st->ops->event_wait(st->dev, ev[head], why, why_size);
				st->ops->event_destroy(st->dev, ev[head]);
				done += ev_bytes[head];
				head = (head + 1) % MAX_HOST_EVENTS;
				count--;
				if (rc)
					break;
			}
			if (rc)
				break;
			src = (const char *)hc[i].src + off;
			if (!hc[i].locked) {
				char *buf = st->slots[st->host_slot++ % st->n_slots].buf;

				/* Pageable memory: through a page-locked slot, so that the copy
				 * engine runs at full speed and the copy stays asynchronous. */
				memcpy(buf, src, len);
				src = buf;
				st->stats.staged_bytes += len;
			}
			rc = st->ops->copy_h2d(st->dev, s, hc[i].dst + off, src, len, why, why_size);
			if (rc)
				break;
			st->stats.copies++;
			st->stats.copy_bytes += len;
			tail = (head + count) % MAX_HOST_EVENTS;
			rc = st->ops->event_record(st->dev, s, &ev[tail], why, why_size);
			if (rc)
				break;
			ev_bytes[tail] = len;
			count++;
			off += len;
			/* Completed chunks, oldest first, without blocking. */
			while (count && st->ops->event_query(st->dev, ev[head], NULL, 0) != -EAGAIN) {
				rc = st->ops->event_wait(st->dev, ev[head], why, why_size);
				st->ops->event_destroy(st->dev, ev[head]);
				done += rc ? 0 : ev_bytes[head];
				head = (head + 1) % MAX_HOST_EVENTS;
				count--;
				if (rc)
					break;
			}
			if (call && call->progress && done != reported)
				call->progress(call->arg, reported = done, total);
		}
	}
	/* Drain: every queued copy must finish before the caller may touch its memory. */
	while (count) {
		int erc = st->ops->event_wait(st->dev, ev[head], rc ? NULL : why,
					      rc ? 0 : why_size);

		st->ops->event_destroy(st->dev, ev[head]);
		if (erc && !rc)
			rc = erc;
		done += erc ? 0 : ev_bytes[head];
		head = (head + 1) % MAX_HOST_EVENTS;
		count--;
	}
	if (call && call->progress && done != reported && !rc)
		call->progress(call->arg, done, total);
	return rc;
}

