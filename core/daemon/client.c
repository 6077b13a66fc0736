/*
 * Clients: their references (daemon_client_get/put(); the last one frees the client) and the
 * completions the worker and the loader hand to a client's shard (daemon_post()), which the
 * shard copies into the client's CQ (daemon_deliver_pending()). The client table itself
 * (shard membership, under clients_lock) is kept by core/daemon/hello.c and control.c.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/daemon/internal.h"
#include "core/daemon/metrics.h"

void daemon_client_get(struct client *c)
{
	atomic_fetch_add(&c->refs, 1);
}

static void free_pending(struct client *c)
{
	while (c->pend_head) {
		struct pending *p = c->pend_head;

		c->pend_head = p->next;
		free(p);
	}
	c->pend_tail = NULL;
}

void daemon_client_put(struct daemon *d, struct client *c)
{
	if (atomic_fetch_sub(&c->refs, 1) != 1)
		return;
	pthread_mutex_lock(&d->state_lock);
	lease_free(&d->leases, &c->lease);
	registry_counter_add(d->reg, WD_CTR_RING_SEGS, -1);
	pthread_mutex_unlock(&d->state_lock);
	shm_segment_close(&c->seg);
	if (c->fd >= 0)
		close(c->fd);
	free_pending(c);
	pthread_mutex_destroy(&c->pend_lock);
	free(c);
}

int daemon_post(struct daemon *d, struct client *c, const struct wd_cqe *cqe,
		struct pending **final, const void *data, size_t len)
{
	struct pending *p;

	if (len > WD_DATA_SLOT_SIZE)
		len = WD_DATA_SLOT_SIZE;
	pthread_mutex_lock(&c->pend_lock);
	p = c->pend_tail;
	/* Coalesce: a newer progress report replaces one the shard has not delivered yet. */
	if (!final && p && !p->final && p->cqe.user_data == cqe->user_data) {
		p->cqe = *cqe;
		pthread_mutex_unlock(&c->pend_lock);
		return 0;
	}
	pthread_mutex_unlock(&c->pend_lock);
	if (final) {
		p = *final;
		*final = NULL;
	} else {
		p = malloc(sizeof(*p));
		if (!p)
			return -ENOMEM;
	}
	p->next = NULL;
	p->cqe = *cqe;
	p->final = final != NULL;
	p->cqe.data_len = (uint16_t)len;
	if (len)
		memcpy(p->data, data, len);
	pthread_mutex_lock(&c->pend_lock);
	if (c->pend_tail)
		c->pend_tail->next = p;
	else
		c->pend_head = p;
	c->pend_tail = p;
	atomic_fetch_add(&c->npending, 1);
	pthread_mutex_unlock(&c->pend_lock);
	daemon_shard_wake(c->shard);
	return 0;
}

int daemon_deliver_pending(struct client *c, int *space, uint64_t *errors)
{
	int n = 0;

	pthread_mutex_lock(&c->pend_lock);
	while (c->pend_head) {
		struct pending *p = c->pend_head;

		if (p->final ? *space <= 0 : *space - (int)c->inflight <= 0) {
			if (p->final)
				break;
		} else {
			memcpy(ring_prod_slot(&c->cq), &p->cqe, sizeof(p->cqe));
			if (p->cqe.data_len)
				memcpy(ring_prod_data(&c->cq), p->data, p->cqe.data_len);
			ring_prod_advance(&c->cq);
			(*space)--;
			n++;
			if (p->final) {
				c->inflight--;
				if (p->cqe.res < 0) {
					c->errors++;
					(*errors)++;
					metrics_note_error(p->cqe.res);
				}
			}
		}
		c->pend_head = p->next;
		if (!c->pend_head)
			c->pend_tail = NULL;
		atomic_fetch_sub(&c->npending, 1);
		free(p);
	}
	pthread_mutex_unlock(&c->pend_lock);
	return n;
}
