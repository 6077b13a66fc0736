/*
 * The io_uring loader: its two threads and a load's handle. loader_plan() (loader_plan.c)
 * turns a component into a list of reads (ops); the loader thread (loader_main()) keeps up to
 * qd of them in flight across every running load, through the read path of loader_read.c,
 * and finishes each load with its integrity checks; the populate thread faults in each
 * submitted extent's pages ahead of its reads. Also: loader_create()/loader_destroy() and
 * the submission of a plan.
 */
#include <errno.h>
#include <liburing.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "core/base/log.h"
#include "uring/loader_int.h"

/* ---- handles ------------------------------------------------------------------------- */

struct load_handle *load_get(struct load_handle *h)
{
	atomic_fetch_add_explicit(&h->refs, 1, memory_order_relaxed);
	return h;
}

void load_put(struct load_handle *h)
{
	if (!h)
		return;
	/* acq_rel: the last owner must see every write the others made before dropping. */
	if (atomic_fetch_sub_explicit(&h->refs, 1, memory_order_acq_rel) != 1)
		return;
	pthread_mutex_destroy(&h->lock);
	pthread_cond_destroy(&h->cond);
	free(h->slots);
	free(h);
}

enum load_state load_state(const struct load_handle *h)
{
	return (enum load_state)atomic_load_explicit(&h->state, memory_order_acquire);
}

void load_progress(const struct load_handle *h, uint64_t *done, uint64_t *total)
{
	*done = atomic_load_explicit(&h->done, memory_order_relaxed);
	*total = h->total;
}

const char *load_error(const struct load_handle *h)
{
	return load_state(h) >= LOAD_DONE ? h->msg : "";
}

uint64_t load_elapsed_ns(const struct load_handle *h)
{
	return load_state(h) >= LOAD_DONE && h->t_end > h->t_start ? h->t_end - h->t_start : 0;
}

struct load_plan *load_handle_plan(const struct load_handle *h)
{
	return h->plan;
}

uint64_t load_handle_extent(const struct load_handle *h)
{
	return h->extent;
}

void load_cancel(struct load_handle *h)
{
	atomic_store_explicit(&h->cancel, true, memory_order_relaxed);
}

int load_wait(struct load_handle *h, int64_t timeout_ns)
{
	struct timespec ts;
	int rc;

	if (timeout_ns >= 0) {
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_sec += timeout_ns / 1000000000;
		ts.tv_nsec += timeout_ns % 1000000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
	}
	pthread_mutex_lock(&h->lock);
	while (load_state(h) < LOAD_DONE) {
		if (timeout_ns < 0) {
			pthread_cond_wait(&h->cond, &h->lock);
		} else if (pthread_cond_timedwait(&h->cond, &h->lock, &ts) == ETIMEDOUT) {
			pthread_mutex_unlock(&h->lock);
			return -ETIMEDOUT;
		}
	}
	rc = h->rc;
	pthread_mutex_unlock(&h->lock);
	return rc;
}

/* ---- the populate thread ------------------------------------------------------------ */

static void *populate_main(void *arg)
{
	struct loader *l = arg;
	struct arena *a = l->arena;

	pthread_mutex_lock(&l->pop_lock);
	for (;;) {
		struct load_handle *h;

		while (!l->pop_stop && !l->pop_head)
			pthread_cond_wait(&l->pop_cond, &l->pop_lock);
		if (l->pop_stop)
			break;
		h = l->pop_head;
		l->pop_head = h->pop_next;
		if (!l->pop_head)
			l->pop_tail = &l->pop_head;
		h->pop_queued = false;
		l->pop_cur = h;
		pthread_mutex_unlock(&l->pop_lock);
		/* Failure is no error: the reads fault the pages in themselves. */
		arena_populate(a, h->extent, h->plan->bytes, &h->pop_abort);
		pthread_mutex_lock(&l->pop_lock);
		l->pop_cur = NULL;
		pthread_cond_broadcast(&l->pop_cond);
	}
	pthread_mutex_unlock(&l->pop_lock);
	return NULL;
}

/* Stops the populate thread (every load has finished, so its queue is empty). */
static void populate_stop(struct loader *l)
{
	pthread_mutex_lock(&l->pop_lock);
	l->pop_stop = true;
	pthread_cond_broadcast(&l->pop_cond);
	pthread_mutex_unlock(&l->pop_lock);
	pthread_join(l->pop_thread, NULL);
}

static void populate_queue(struct loader *l, struct load_handle *h)
{
	if (!h->plan->bytes)
		return;
	pthread_mutex_lock(&l->pop_lock);
	h->pop_queued = true;
	*l->pop_tail = h;
	l->pop_tail = &h->pop_next;
	pthread_cond_broadcast(&l->pop_cond);
	pthread_mutex_unlock(&l->pop_lock);
}

/*
 * Before a load reports its end: the populate thread lets go of its extent (which its owner
 * may free, or punch holes into, as soon as it knows the result).
 */
static void populate_forget(struct loader *l, struct load_handle *h)
{
	pthread_mutex_lock(&l->pop_lock);
	if (h->pop_queued) {
		struct load_handle **pp = &l->pop_head;

		while (*pp != h)
			pp = &(*pp)->pop_next;
		*pp = h->pop_next;
		if (!*pp)
			l->pop_tail = pp;
		h->pop_queued = false;
	}
	__atomic_store_n(&h->pop_abort, true, __ATOMIC_RELAXED);
	while (l->pop_cur == h)
		pthread_cond_wait(&l->pop_cond, &l->pop_lock);
	pthread_mutex_unlock(&l->pop_lock);
}

/* ---- the loader thread --------------------------------------------------------------- */

static void finish(struct loader *l, struct load_handle *h)
{
	bool cancelled = atomic_load_explicit(&h->cancel, memory_order_relaxed) && !h->failed &&
			 h->next_op < h->plan->n_ops;
	enum load_state st;
	int rc;

	populate_forget(l, h);
	if (!h->failed && !cancelled)
		loader_final_checks(l, h);
	loader_release_slots(l, h);
	if (cancelled) {
		rc = -ECANCELED;
		st = LOAD_CANCELLED;
		snprintf(h->msg, sizeof(h->msg), "component %s: load cancelled", h->plan->name);
	} else if (h->failed) {
		rc = h->fail_rc;
		st = LOAD_FAILED;
		char en[LOG_ESCAPE_MAX], em[LOG_ESCAPE_MAX];

		log_warn("loader", "\"load failed\" component=\"%s\" rc=%d msg=\"%s\"",
			 log_escape(h->plan->name, en, sizeof(en), LOG_ESC_QUOTES), rc,
			 log_escape(h->msg, em, sizeof(em), LOG_ESC_QUOTES));
	} else {
		rc = 0;
		st = LOAD_DONE;
	}
	pthread_mutex_lock(&h->lock);
	h->t_end = wd_now_ns();
	h->rc = rc;
	/* release: pairs with load_state()'s acquire, so a reader of the state sees rc/msg. */
	atomic_store_explicit(&h->state, st, memory_order_release);
	pthread_cond_broadcast(&h->cond);
	pthread_mutex_unlock(&h->lock);
	if (h->cb.done)
		h->cb.done(h->cb.arg, h);
	load_put(h);
}

static void *loader_main(void *arg)
{
	struct loader *l = arg;

	for (;;) {
		struct load_handle **pp, *h;
		struct io_uring_cqe *cqe;
		unsigned int head, seen = 0;
		bool stop, more;

		pthread_mutex_lock(&l->lock);
		while (!l->stop && !l->pending && !l->active)
			pthread_cond_wait(&l->cond, &l->lock);
		__atomic_store_n(&l->cpu, sched_getcpu(), __ATOMIC_RELAXED);
		while ((h = l->pending)) {
			l->pending = h->next;
			h->next = l->active;
			l->active = h;
			loader_activate(l, h);
		}
		l->pending_tail = &l->pending;
		stop = l->stop;
		pthread_mutex_unlock(&l->lock);
		if (stop) {
			for (h = l->active; h; h = h->next)
				load_cancel(h);
		}
		if (!l->active && stop)
			break;
		/* One op per load per round, so that concurrent loads share the queue. */
		do {
			more = false;
			for (h = l->active; h; h = h->next)
				more |= loader_start_one(l, h);
		} while (more);
		if (l->inflight) {
			uint64_t wait_ns = l->n_retry ? loader_resubmit_due(l) : 0;
			int rc;

			if (wait_ns) {
				/* Some reads wait out a backoff: wake up when the first is due. */
				struct __kernel_timespec ts = { .tv_sec = (long long)(wait_ns / 1000000000),
								.tv_nsec = (long long)(wait_ns % 1000000000) };
				struct io_uring_cqe *unused;

				rc = io_uring_submit_and_wait_timeout(&l->ring, &unused, 1, &ts, NULL);
				if (rc == -ETIME)
					rc = 0;
			} else {
				rc = l->inflight > l->n_retry ? io_uring_submit_and_wait(&l->ring, 1) : 0;
			}
			if (rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY)
				log_error("loader", "\"io_uring_submit_and_wait failed\" rc=%d", rc);
			io_uring_for_each_cqe(&l->ring, head, cqe) {
				loader_complete(l, io_uring_cqe_get_data(cqe), cqe->res);
				seen++;
			}
			io_uring_cq_advance(&l->ring, seen);
		}
		for (pp = &l->active; (h = *pp);) {
			bool cancel = atomic_load_explicit(&h->cancel, memory_order_relaxed);

			if (!h->inflight && (h->failed || cancel || h->next_op >= h->plan->n_ops)) {
				*pp = h->next;
				finish(l, h);
			} else {
				pp = &h->next;
			}
		}
	}
	return NULL;
}

int loader_create(struct arena *arena, const struct loader_options *opt, struct loader **out)
{
	struct loader_options o = opt ? *opt : (struct loader_options){ 0 };
	struct iovec *iov = NULL;
	struct loader *l;
	int rc;

	*out = NULL;
	if (!o.qd)
		o.qd = LOADER_DEFAULT_QD;
	if (!o.chunk)
		o.chunk = LOADER_DEFAULT_CHUNK;
	if (!o.n_staging)
		o.n_staging = LOADER_DEFAULT_STAGING;
	if (o.qd > 4096 || o.chunk % DIO_ALIGN || o.chunk < (64u << 10) || o.chunk > (1u << 30) ||
	    o.n_staging > 1024)
		return -EINVAL;
	l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->arena = arena;
	l->cpu = -1;
	l->qd = o.qd;
	l->chunk = o.chunk;
	l->n_staging = o.n_staging;
	l->reqs = calloc(o.qd, sizeof(*l->reqs));
	l->free_bufs = calloc(o.n_staging, sizeof(uint32_t));
	iov = calloc(o.n_staging, sizeof(*iov));
	if (!l->reqs || !l->free_bufs || !iov) {
		rc = -ENOMEM;
		goto fail;
	}
	l->staging = mmap(NULL, (size_t)o.n_staging * o.chunk, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
	if (l->staging == MAP_FAILED) {
		l->staging = NULL;
		rc = -errno;
		goto fail;
	}
	rc = io_uring_queue_init(o.qd, &l->ring, 0);
	if (rc < 0) {
		l->ring.ring_fd = -1;
		goto fail;
	}
	for (uint32_t i = 0; i < o.n_staging; i++) {
		iov[i].iov_base = l->staging + (size_t)i * o.chunk;
		iov[i].iov_len = o.chunk;
		l->free_bufs[i] = o.n_staging - 1 - i;
	}
	l->n_free_bufs = o.n_staging;
	rc = io_uring_register_buffers(&l->ring, iov, o.n_staging);
	l->fixed_bufs = rc == 0;
	l->bufs_err = rc;
	if (rc) {
		struct rlimit lim = { 0 };

		getrlimit(RLIMIT_MEMLOCK, &lim);
		/* Not silent: reads still work, through unregistered buffers, but slower. */
		log_warn("loader", "\"io_uring refused the fixed staging buffers, reading through "
			 "unregistered ones\" rc=%d err=\"%s\" bytes=%zu memlock_limit=%lld%s", rc,
			 strerror(-rc), (size_t)o.n_staging * o.chunk,
			 lim.rlim_cur == RLIM_INFINITY ? -1LL : (long long)lim.rlim_cur,
			 rc == -ENOMEM ? " hint=\"raise RLIMIT_MEMLOCK (LimitMEMLOCK= in "
					 "weightd.service, ulimit -l)\"" : "");
	}
	{
		/* Bounded workers (regular file reads) at most one per CPU; unbounded: default. */
		long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
		unsigned int workers[2] = { ncpu > 0 ? (unsigned int)ncpu : 1, 0 };

		if (io_uring_register_iowq_max_workers(&l->ring, workers) < 0)
			log_info("loader", "\"io-wq worker limit not set\"");
	}
	rc = io_uring_register_files_sparse(&l->ring, MAX_FILE_SLOTS);
	l->fixed_files = rc == 0;
	l->files_err = rc;
	if (rc)
		log_info("loader", "\"unregistered files\" rc=%d", rc);
	for (uint32_t i = 0; i < o.qd; i++) {
		l->reqs[i].next_free = l->free_reqs;
		l->free_reqs = &l->reqs[i];
	}
	pthread_mutex_init(&l->lock, NULL);
	pthread_cond_init(&l->cond, NULL);
	pthread_mutex_init(&l->pop_lock, NULL);
	pthread_cond_init(&l->pop_cond, NULL);
	l->pending_tail = &l->pending;
	l->pop_tail = &l->pop_head;
	rc = -pthread_create(&l->pop_thread, NULL, populate_main, l);
	if (!rc) {
		rc = -pthread_create(&l->thread, NULL, loader_main, l);
		if (rc) {
			populate_stop(l);
		}
	}
	if (rc) {
		pthread_mutex_destroy(&l->lock);
		pthread_cond_destroy(&l->cond);
		pthread_mutex_destroy(&l->pop_lock);
		pthread_cond_destroy(&l->pop_cond);
		goto fail;
	}
	free(iov);
	*out = l;
	return 0;
fail:
	if (l->ring.ring_fd > 0)
		io_uring_queue_exit(&l->ring);
	if (l->staging)
		munmap(l->staging, (size_t)o.n_staging * o.chunk);
	free(iov);
	free(l->reqs);
	free(l->free_bufs);
	free(l);
	return rc;
}

void loader_destroy(struct loader *l)
{
	if (!l)
		return;
	pthread_mutex_lock(&l->lock);
	l->stop = true;
	pthread_cond_signal(&l->cond);
	pthread_mutex_unlock(&l->lock);
	pthread_join(l->thread, NULL);
	populate_stop(l);
	io_uring_queue_exit(&l->ring);
	munmap(l->staging, (size_t)l->n_staging * l->chunk);
	pthread_mutex_destroy(&l->lock);
	pthread_cond_destroy(&l->cond);
	pthread_mutex_destroy(&l->pop_lock);
	pthread_cond_destroy(&l->pop_cond);
	free(l->reqs);
	free(l->free_bufs);
	free(l);
}

int loader_cpu(const struct loader *l)
{
	return __atomic_load_n(&l->cpu, __ATOMIC_RELAXED);
}

uint32_t loader_chunk(const struct loader *l)
{
	return l->chunk;
}

void loader_io_path(const struct loader *l, struct loader_io *out)
{
	*out = (struct loader_io){ .fixed_bufs = l->fixed_bufs, .fixed_files = l->fixed_files,
				   .bufs_err = l->bufs_err, .files_err = l->files_err,
				   .staging_bytes = (uint64_t)l->n_staging * l->chunk };
}

int loader_submit(struct loader *l, struct load_plan *plan, uint64_t extent_off,
		  const struct load_callbacks *cb, struct load_handle **out)
{
	struct arena *a = l->arena;
	struct load_handle *h;
	pthread_condattr_t ca;

	*out = NULL;
	if (extent_off % ARENA_EXTENT_ALIGN || extent_off > a->seg.size ||
	    plan->bytes > a->seg.size - extent_off)
		return -EINVAL;
	for (uint32_t i = 0; i < plan->n_ops; i++)
		if (plan->ops[i].kind == OP_STAGE && plan->ops[i].len > l->chunk)
			return -EINVAL;
	h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->slots = calloc(plan->n_files ? 2 * plan->n_files : 1, sizeof(int));
	if (!h->slots) {
		free(h);
		return -ENOMEM;
	}
	atomic_init(&h->refs, 2); /* the caller's and the loader thread's */
	h->l = l;
	h->plan = plan;
	h->extent = extent_off;
	if (cb)
		h->cb = *cb;
	h->total = plan->read_bytes;
	pthread_mutex_init(&h->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&h->cond, &ca);
	pthread_condattr_destroy(&ca);
	atomic_init(&h->state, LOAD_QUEUED);
	pthread_mutex_lock(&l->lock);
	if (l->stop) {
		pthread_mutex_unlock(&l->lock);
		atomic_init(&h->refs, 1);
		load_put(h);
		return -ESHUTDOWN;
	}
	*l->pending_tail = h;
	l->pending_tail = &h->next;
	/* Under l->lock: the loader thread cannot finish (and forget) @h before it is queued. */
	populate_queue(l, h);
	pthread_cond_signal(&l->cond);
	pthread_mutex_unlock(&l->lock);
	*out = h;
	return 0;
}

int loader_run(struct loader *l, struct load_plan *plan, uint64_t extent_off,
	       const struct load_callbacks *cb, char *msg, size_t msg_len)
{
	struct load_handle *h;
	int rc = loader_submit(l, plan, extent_off, cb, &h);

	if (rc) {
		setmsg(msg, msg_len, "component %s: cannot queue the load: %s", plan->name,
		       strerror(-rc));
		return rc;
	}
	rc = load_wait(h, -1);
	setmsg(msg, msg_len, "%s", load_error(h));
	load_put(h);
	return rc;
}

