/*
 * The worker: the thread that runs the ops that touch the catalog or the disk (scan,
 * validate, metadata, a LOAD that is not a hit; core/daemon/ops.h), so that a shard keeps
 * answering while they run. At its start it checks the catalog, publishes it and scans the
 * roots; then it takes jobs from the queue (daemon_queue_job()) and the reload's rescans.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>

#include "core/base/log.h"
#include "core/daemon/internal.h"
#include "core/daemon/ops.h"
#include "core/daemon/reload.h"

#define MOD "daemon"

/*
 * The worker's first step: PRAGMA quick_check of the catalog (seconds for a large one, which
 * is why it does not run before the daemon answers). A catalog that fails it is moved aside
 * and replaced with an empty one that the scan below fills; the control thread raises the
 * alert. The worker owns d->cat once the daemon runs (every job that reads the catalog runs
 * here), and nothing was published from it yet, so the swap races with nobody.
 */
static void check_catalog(struct daemon *d)
{
	char why[sizeof(d->catalog_why)];
	uint64_t t0 = wd_now_ns();
	int ret = catalog_quick_check(d->cat, why, sizeof(why));

	if (ret != -EBADMSG) {
		if (ret)
			log_warn(MOD, "\"cannot check the catalog\" err=%d", ret);
		else
			log_info(MOD, "\"catalog checked\" ms=%.1f", (wd_now_ns() - t0) / 1e6);
		return;
	}
	catalog_close(d->cat);
	d->cat = NULL;
	ret = catalog_move_aside(d->state_dir, d->catalog_aside, sizeof(d->catalog_aside));
	if (!ret)
		ret = catalog_open(d->state_dir, &d->cat);
	if (ret) {
		/* Keep serving from what is there; the operator sees why in the log. */
		log_error(MOD, "\"the catalog is corrupt and cannot be replaced\" check=\"%s\" "
			  "err=%d", why, ret);
		d->catalog_aside[0] = '\0';
		if (!d->cat && catalog_open(d->state_dir, &d->cat))
			d->cat = NULL;
		return;
	}
	snprintf(d->catalog_why, sizeof(d->catalog_why), "%s", why);
	log_error(MOD, "\"the catalog was corrupt: moved aside, rebuilding it from a scan "
		  "(tags and notes are in the old file)\" moved_to=%s check=\"%s\"",
		  d->catalog_aside, d->catalog_why);
	/* Pairs with the control thread's atomic_exchange(): it then reads the two strings. */
	atomic_store(&d->catalog_rebuilt, true);
}

static void *worker_main(void *arg)
{
	struct daemon *d = arg;

	if (!d->catalog_aside[0])
		check_catalog(d);
	if (!d->cat) {
		log_error(MOD, "\"no catalog: the worker stops\"");
		return NULL;
	}

	/*
	 * What the catalog held at start is published here rather than in daemon_create(),
	 * so that the control thread answers (status, attach) while a large catalog is read.
	 */
	int ret = daemon_publish(d, d->cat, NULL);

	if (ret < 0)
		log_error(MOD, "\"cannot publish the catalog\" err=%d", ret);
	else
		log_info(MOD, "\"catalog published\" models=%d", ret);
	/* A catalog rebuilt from scratch (catalog_open_repair()) is filled again at once. */
	if (d->cfg.scan_at_start || d->catalog_aside[0])
		ops_scan_roots(d);
	for (;;) {
		struct job *j;

		pthread_mutex_lock(&d->job_lock);
		while (!d->job_head && !d->worker_stop && !d->rescan)
			pthread_cond_wait(&d->job_cond, &d->job_lock);
		if (d->rescan && !d->worker_stop) {
			/* A reload changed the model roots (core/daemon/reload.h). */
			pthread_mutex_unlock(&d->job_lock);
			reload_take_roots(d);
			ops_scan_roots(d);
			continue;
		}
		j = d->job_head;
		if (!j) {
			pthread_mutex_unlock(&d->job_lock);
			break;
		}
		d->job_head = j->next;
		if (!d->job_head)
			d->job_tail = NULL;
		pthread_mutex_unlock(&d->job_lock);
		ops_run_job(d, j);
		/* A job with no client is the daemon's own (a prefetch). */
		if (j->c)
			daemon_client_put(d, j->c);
		free(j->spare);
		free(j);
	}
	return NULL;
}

int daemon_worker_start(struct daemon *d)
{
	int ret = -pthread_create(&d->worker, NULL, worker_main, d);

	if (!ret)
		d->worker_started = true;
	return ret;
}

void daemon_worker_stop(struct daemon *d)
{
	struct job *jobs;

	pthread_mutex_lock(&d->job_lock);
	d->worker_stop = true;
	jobs = d->job_head;
	d->job_head = d->job_tail = NULL;
	pthread_cond_broadcast(&d->job_cond);
	pthread_mutex_unlock(&d->job_lock);
	while (jobs) {
		struct job *j = jobs;
		struct wd_cqe cqe = { .user_data = j->sqe.user_data, .res = -ECANCELED };

		jobs = j->next;
		if (j->c) {
			daemon_post(d, j->c, &cqe, &j->spare, NULL, 0);
			daemon_client_put(d, j->c);
		}
		free(j->spare);
		free(j);
	}
	if (d->worker_started) {
		pthread_join(d->worker, NULL);
		d->worker_started = false;
	}
}
