/*
 * What the daemon's threads do to each other, below every file that runs one (so that the
 * shards, the worker, the control thread and the tiers' sink can all call it, and it calls
 * none of them): wake a shard (its wake-up ring), flush a shard's counters into the registry
 * (the shard before it parks, the STATS op before it answers), queue a job for the worker,
 * and ask the control thread to stop (its eventfd).
 */
#include <errno.h>
#include <stdint.h>
#include <unistd.h>

#include "core/daemon/internal.h"
#include "core/daemon/metrics.h"

void daemon_shard_wake(struct shard *s)
{
	pthread_mutex_lock(&s->wake_lock);
	if (ring_prod_space(&s->wake_prod) > 0) {
		uint32_t *tok = ring_prod_slot(&s->wake_prod);

		*tok = 1;
		ring_prod_advance(&s->wake_prod);
		ring_prod_publish(&s->wake_prod);
	}
	ring_notify(&s->wake_prod);
	pthread_mutex_unlock(&s->wake_lock);
}

void daemon_flush_counters(struct shard *s)
{
	metrics_flush_local(s->d->reg);
	if (!s->flush_requests && !s->flush_errors)
		return;
	pthread_mutex_lock(&s->d->state_lock);
	registry_counter_add(s->d->reg, WD_CTR_REQUESTS, (int64_t)s->flush_requests);
	registry_counter_add(s->d->reg, WD_CTR_ERRORS, (int64_t)s->flush_errors);
	pthread_mutex_unlock(&s->d->state_lock);
	s->flush_requests = s->flush_errors = 0;
}

int daemon_queue_job(struct daemon *d, struct job *j)
{
	pthread_mutex_lock(&d->job_lock);
	if (d->worker_stop) {
		pthread_mutex_unlock(&d->job_lock);
		return -ECANCELED;
	}
	if (d->job_tail)
		d->job_tail->next = j;
	else
		d->job_head = j;
	d->job_tail = j;
	pthread_cond_signal(&d->job_cond);
	pthread_mutex_unlock(&d->job_lock);
	return 0;
}

void daemon_stop(struct daemon *d)
{
	uint64_t one = 1;
	ssize_t n;

	do {
		n = write(d->stop_efd, &one, sizeof(one));
	} while (n < 0 && errno == EINTR);
}
