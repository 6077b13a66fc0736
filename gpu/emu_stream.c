/*
 * The emulated device's streams (gpu/emu_int.h): a stream is a thread that runs a FIFO of
 * copies, conversions and events; every copy is checked against the live allocations when it
 * is queued and again when it runs, so that a copy into memory freed meanwhile fails the
 * stream with -EFAULT, as a real GPU would report CUDA_ERROR_ILLEGAL_ADDRESS.
 */
#include "gpu/device.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <xxhash.h>

#include "core/format/convert.h"
#include "gpu/emu_int.h"

enum op_kind { OP_COPY, OP_EVENT, OP_CONVERT };

struct gpu_event {
	_Atomic int refs;	/* the caller's and, while queued, the stream's */
	_Atomic int state;	/* 0 pending, 1 done */
	int err;		/* the stream's error when it passed the event; read after state */
	char err_msg[160];	/* its message, copied so that it outlives the stream */
	struct gpu_stream *s;	/* used only while state is 0: stream_destroy completes all */
};

struct emu_op {
	struct emu_op *next;
	enum op_kind kind;
	uint64_t dst;
	const void *src;
	size_t n;		/* bytes of a copy; elements of a conversion */
	unsigned int to;	/* OP_CONVERT: the target dtype */
	uint64_t src_hash;	/* check_src: XXH3 of the source when queued */
	struct gpu_event *ev;
};

/*
 * A stream: a FIFO of ops executed by one thread. Ops are heap nodes: a queue with no fixed
 * depth is what CUDA offers (submission never blocks), and an emulator does not need to be
 * allocation-free.
 */
struct gpu_stream {
	struct gpu_dev *dev;
	pthread_t thread;
	pthread_mutex_t lock;
	pthread_cond_t cond;	/* signalled on a new op, on stop, and when an event completes */
	struct emu_op *head, *tail;
	uint64_t queued;
	bool stop;
	int err;		/* sticky: the first failed copy */
	char err_msg[160];
};

static void event_put(struct gpu_event *ev)
{
	if (atomic_fetch_sub(&ev->refs, 1) == 1)
		free(ev);
}

/* Executes one copy on the stream thread; returns 0 or -EFAULT with s->err_msg. */
static int run_copy(struct gpu_stream *s, const struct emu_op *op)
{
	struct gpu_dev *dev = s->dev;
	unsigned int delay = atomic_load_explicit(&dev->copy_delay_us, memory_order_relaxed);
	int rc = 0;

	if (delay)
		usleep(delay);
	if (atomic_load_explicit(&dev->check_src, memory_order_relaxed) &&
	    XXH3_64bits(op->src, op->n) != op->src_hash)
		atomic_fetch_add(&dev->src_changed, 1);
	pthread_rwlock_rdlock(&dev->ord->lock);
	if (emu_range_live(dev->ord, op->dst, op->n))
		memcpy((void *)(uintptr_t)op->dst, op->src, op->n);
	else
		rc = -EFAULT;
	pthread_rwlock_unlock(&dev->ord->lock);
	if (rc) {
		snprintf(s->err_msg, sizeof(s->err_msg), "emulated cuda:%d stream: copy of %zu "
			 "bytes to 0x%" PRIx64 " hit memory freed after the copy was queued",
			 dev->ordinal, op->n, op->dst);
		return rc;
	}
	atomic_fetch_add_explicit(&dev->copies, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&dev->bytes, op->n, memory_order_relaxed);
	return 0;
}

/* Executes one conversion on the stream thread; returns 0 or -EFAULT with s->err_msg. */
static int run_convert(struct gpu_stream *s, const struct emu_op *op)
{
	struct gpu_dev *dev = s->dev;
	int rc = 0;

	pthread_rwlock_rdlock(&dev->ord->lock);
	if (emu_range_live(dev->ord, (uint64_t)(uintptr_t)op->src, 4 * (uint64_t)op->n) &&
	    emu_range_live(dev->ord, op->dst, 2 * (uint64_t)op->n))
		rc = convert_run(ST_F32, (enum st_dtype)op->to, (void *)(uintptr_t)op->dst,
				 op->src, op->n);
	else
		rc = -EFAULT;
	pthread_rwlock_unlock(&dev->ord->lock);
	if (rc)
		snprintf(s->err_msg, sizeof(s->err_msg), "emulated cuda:%d stream: conversion of "
			 "%zu elements to 0x%" PRIx64 " hit memory freed after it was queued",
			 dev->ordinal, op->n, op->dst);
	return rc;
}

static void *stream_main(void *arg)
{
	struct gpu_stream *s = arg;

	pthread_mutex_lock(&s->lock);
	for (;;) {
		struct emu_op *op;

		while (!s->head && !s->stop)
			pthread_cond_wait(&s->cond, &s->lock);
		if (!s->head)
			break;	/* stopping and drained */
		op = s->head;
		pthread_mutex_unlock(&s->lock);

		if (op->kind != OP_EVENT) {
			/* After a failure nothing more runs, as on a faulted CUDA stream. */
			int rc = s->err ? 0 : op->kind == OP_COPY ? run_copy(s, op) :
				 run_convert(s, op);

			pthread_mutex_lock(&s->lock);
			if (rc && !s->err)
				s->err = rc;
		} else {
			pthread_mutex_lock(&s->lock);
			op->ev->err = s->err;
			if (s->err)
				memcpy(op->ev->err_msg, s->err_msg, sizeof(op->ev->err_msg));
			/* Pairs with the acquire load in event_query/event_wait. */
			atomic_store_explicit(&op->ev->state, 1, memory_order_release);
			event_put(op->ev);
			pthread_cond_broadcast(&s->cond);
		}
		s->head = op->next;
		if (!s->head)
			s->tail = NULL;
		s->queued--;
		free(op);
	}
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

int emu_stream_create(struct gpu_dev *dev, struct gpu_stream **out, char *why,
			     size_t why_size)
{
	struct gpu_stream *s;
	int rc = emu_need_ctx(dev, "cuStreamCreate", why, why_size);

	if (rc)
		return rc;
	s = calloc(1, sizeof(*s));
	if (!s) {
		snprintf(why, why_size, "stream_create: out of memory");
		return -ENOMEM;
	}
	s->dev = dev;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	rc = pthread_create(&s->thread, NULL, stream_main, s);
	if (rc) {
		snprintf(why, why_size, "stream_create: pthread_create: %s", strerror(rc));
		pthread_cond_destroy(&s->cond);
		pthread_mutex_destroy(&s->lock);
		free(s);
		return -rc;
	}
	*out = s;
	return 0;
}

/* Like cuStreamDestroy: work already queued still runs; then the thread ends. */
void emu_stream_destroy(struct gpu_dev *dev, struct gpu_stream *s)
{
	if (!s || !emu_void_ctx_ok(dev, "cuStreamDestroy"))
		return;
	pthread_mutex_lock(&s->lock);
	s->stop = true;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	pthread_join(s->thread, NULL);
	pthread_cond_destroy(&s->cond);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

static void enqueue(struct gpu_stream *s, struct emu_op *op)
{
	uint64_t q, max;

	pthread_mutex_lock(&s->lock);
	if (s->tail)
		s->tail->next = op;
	else
		s->head = op;
	s->tail = op;
	q = ++s->queued;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	max = atomic_load_explicit(&s->dev->max_queued, memory_order_relaxed);
	while (q > max && !atomic_compare_exchange_weak(&s->dev->max_queued, &max, q))
		;
}

int emu_copy_h2d(struct gpu_dev *dev, struct gpu_stream *s, uint64_t dst,
			const void *src, size_t n, char *why, size_t why_size)
{
	struct emu_op *op;
	bool live, locked;
	int rc = emu_need_ctx(dev, "cuMemcpyHtoDAsync", why, why_size);

	if (rc)
		return rc;
	if (s->dev->ord != dev->ord) {
		atomic_fetch_add(&emu_refused, 1);
		snprintf(why, why_size, "cuMemcpyHtoDAsync on emulated cuda:%d: "
			 "CUDA_ERROR_INVALID_HANDLE: the stream belongs to cuda:%d", dev->ordinal,
			 s->dev->ordinal);
		return -EINVAL;
	}
	if (n == 0)
		return 0;
	if (!src) {
		snprintf(why, why_size, "copy_h2d: NULL source");
		return -EINVAL;
	}
	pthread_mutex_lock(&emu_lock);
	locked = emu_locked_range((uintptr_t)src, n) != NULL;
	pthread_mutex_unlock(&emu_lock);
	if (!locked) {
		/* The driver stages such a copy through its own pinned buffer, synchronously. */
		atomic_fetch_add_explicit(&dev->pageable_copies, 1, memory_order_relaxed);
		atomic_fetch_add_explicit(&dev->pageable_bytes, n, memory_order_relaxed);
	}
	pthread_rwlock_rdlock(&dev->ord->lock);
	live = emu_range_live(dev->ord, dst, n);
	pthread_rwlock_unlock(&dev->ord->lock);
	if (!live) {
		snprintf(why, why_size, "copy_h2d of %zu bytes to 0x%" PRIx64 " on emulated "
			 "cuda:%d: not inside one live allocation", n, dst, dev->ordinal);
		return -EFAULT;
	}
	op = calloc(1, sizeof(*op));
	if (!op) {
		snprintf(why, why_size, "copy_h2d: out of memory");
		return -ENOMEM;
	}
	op->kind = OP_COPY;
	op->dst = dst;
	op->src = src;
	op->n = n;
	if (atomic_load_explicit(&dev->check_src, memory_order_relaxed))
		op->src_hash = XXH3_64bits(src, n);
	enqueue(s, op);
	return 0;
}

int emu_convert_f32(struct gpu_dev *dev, struct gpu_stream *s, uint64_t dst,
			   uint64_t src, uint64_t n, unsigned int to, char *why, size_t why_size)
{
	struct emu_op *op;
	bool live;
	int rc = emu_need_ctx(dev, "cuLaunchKernel", why, why_size);

	if (rc)
		return rc;
	if (to != GPU_DTYPE_F16 && to != GPU_DTYPE_BF16) {
		snprintf(why, why_size, "convert_f32: unsupported target dtype %u", to);
		return -EINVAL;
	}
	if (src % 4 || dst % 2 || n > (SIZE_MAX >> 2) || (dst < src + 4 * n && src < dst + 2 * n)) {
		snprintf(why, why_size, "convert_f32 of %" PRIu64 " elements from 0x%" PRIx64
			 " to 0x%" PRIx64 ": misaligned or overlapping", n, src, dst);
		return -EINVAL;
	}
	if (!n)
		return 0;
	pthread_rwlock_rdlock(&dev->ord->lock);
	live = emu_range_live(dev->ord, src, 4 * n) && emu_range_live(dev->ord, dst, 2 * n);
	pthread_rwlock_unlock(&dev->ord->lock);
	if (!live) {
		snprintf(why, why_size, "convert_f32 of %" PRIu64 " elements from 0x%" PRIx64
			 " to 0x%" PRIx64 " on emulated cuda:%d: not inside live allocations", n,
			 src, dst, dev->ordinal);
		return -EFAULT;
	}
	op = calloc(1, sizeof(*op));
	if (!op) {
		snprintf(why, why_size, "convert_f32: out of memory");
		return -ENOMEM;
	}
	op->kind = OP_CONVERT;
	op->dst = dst;
	op->src = (const void *)(uintptr_t)src;
	op->n = (size_t)n;
	op->to = to;
	enqueue(s, op);
	return 0;
}

int emu_copy_d2h(struct gpu_dev *dev, void *dst, uint64_t src, size_t n, char *why,
			size_t why_size)
{
	int rc = emu_need_ctx(dev, "cuMemcpyDtoH", why, why_size);

	if (rc || n == 0)
		return rc;
	pthread_rwlock_rdlock(&dev->ord->lock);
	if (emu_range_live(dev->ord, src, n))
		memcpy(dst, (const void *)(uintptr_t)src, n);
	else
		rc = -EFAULT;
	pthread_rwlock_unlock(&dev->ord->lock);
	if (rc)
		snprintf(why, why_size, "copy_d2h of %zu bytes from 0x%" PRIx64 " on emulated "
			 "cuda:%d: not inside one live allocation", n, src, dev->ordinal);
	return rc;
}

int emu_event_record(struct gpu_dev *dev, struct gpu_stream *s, struct gpu_event **out,
			    char *why, size_t why_size)
{
	struct gpu_event *ev;
	struct emu_op *op;
	int rc = emu_need_ctx(dev, "cuEventRecord", why, why_size);

	if (rc)
		return rc;
	ev = calloc(1, sizeof(*ev));
	op = calloc(1, sizeof(*op));
	if (!ev || !op) {
		free(ev);
		free(op);
		snprintf(why, why_size, "event_record: out of memory");
		return -ENOMEM;
	}
	atomic_init(&ev->refs, 2);
	atomic_init(&ev->state, 0);
	ev->s = s;
	op->kind = OP_EVENT;
	op->ev = ev;
	enqueue(s, op);
	*out = ev;
	return 0;
}

static int event_result(struct gpu_event *ev, char *why, size_t why_size)
{
	if (ev->err)
		snprintf(why, why_size, "%s", ev->err_msg);
	return ev->err;
}

int emu_event_query(struct gpu_dev *dev, struct gpu_event *ev, char *why,
			   size_t why_size)
{
	if (emu_forked())
		return emu_init_check("cuEventQuery", why, why_size);
	/* Pairs with the release store on the stream thread: ev->err is visible after it. */
	if (!atomic_load_explicit(&ev->state, memory_order_acquire))
		return -EAGAIN;
	return event_result(ev, why, why_size);
}

int emu_event_wait(struct gpu_dev *dev, struct gpu_event *ev, char *why,
			  size_t why_size)
{
	struct gpu_stream *s = ev->s;

	if (emu_forked())
		return emu_init_check("cuEventSynchronize", why, why_size);
	if (!atomic_load_explicit(&ev->state, memory_order_acquire)) {
		pthread_mutex_lock(&s->lock);
		while (!atomic_load_explicit(&ev->state, memory_order_acquire))
			pthread_cond_wait(&s->cond, &s->lock);
		pthread_mutex_unlock(&s->lock);
	}
	return event_result(ev, why, why_size);
}

void emu_event_destroy(struct gpu_dev *dev, struct gpu_event *ev)
{
	if (ev)
		event_put(ev);
}

