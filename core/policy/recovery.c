/* Recovery policy (core/policy/recovery.h): retries, allocation retry, quarantine. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "core/base/memlimit.h"
#include "core/base/fault.h"
#include "core/base/log.h"
#include "core/policy/recovery.h"

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define MOD "recovery"

static atomic_uint_least64_t counters[RECOVERY_COUNTER_COUNT];

void recovery_count(enum recovery_counter c, uint64_t n)
{
	if ((unsigned int)c < RECOVERY_COUNTER_COUNT)
		atomic_fetch_add_explicit(&counters[c], n, memory_order_relaxed);
}

uint64_t recovery_counter(enum recovery_counter c)
{
	if ((unsigned int)c >= RECOVERY_COUNTER_COUNT)
		return 0;
	return atomic_load_explicit(&counters[c], memory_order_relaxed);
}

uint64_t recovery_backoff_ns(unsigned int attempt)
{
	uint64_t ns = RECOVERY_BACKOFF_MIN_NS;

	for (unsigned int i = 1; i < attempt && ns < RECOVERY_BACKOFF_MAX_NS; i++)
		ns *= 2;
	return ns < RECOVERY_BACKOFF_MAX_NS ? ns : RECOVERY_BACKOFF_MAX_NS;
}

bool recovery_counts_toward_quarantine(int err, bool requested)
{
	if (!requested)
		return false;
	switch (err) {
	case 0:
	case -ENOSPC:
	case -EFBIG:
	case -ENOMEM:
	case -ECANCELED:
	case -ESHUTDOWN:
	case -EBUSY:
	case -ENOTRECOVERABLE:
		return false;
	default:
		return true;
	}
}

/* ---- allocation ------------------------------------------------------------------------ */

int recovery_alloc_retry(const struct recovery_alloc *ra, char *msg, size_t msg_len)
{
	int ret = ra->try_alloc(ra->arg);
	int64_t freed;

	if (ret != -ENOSPC && ret != -ENOMEM)
		return ret;
	freed = ra->evict(ra->arg, ra->bytes, ret);
	if (freed < 0)
		return (int)freed;
	if (freed > 0) {
		int first = ret;

		recovery_count(RECOVERY_ALLOC_RETRIES, 1);
		ret = ra->try_alloc(ra->arg);
		log_info(MOD, "\"allocation retried after evicting\" tier=%s component=\"%s\" "
			 "what=\"%s\" bytes=%" PRIu64 " err=%d evicted=%" PRId64 " result=%d",
			 ra->tier, ra->name, ra->what, ra->bytes, first, freed, ret);
		if (!ret)
			return 0;
	}
	if (msg && msg_len && freed)
		snprintf(msg, msg_len, "component %.100s: cannot allocate %" PRIu64 " bytes of %s "
			 "cache (%s): %s, even after evicting %" PRId64 " bytes of unpinned entries",
			 ra->name, ra->bytes, ra->tier, ra->what, strerror(-ret), freed);
	else if (msg && msg_len)
		snprintf(msg, msg_len, "component %.100s: cannot allocate %" PRIu64 " bytes of %s "
			 "cache (%s): %s, and nothing left to evict (the rest is pinned or in use)",
			 ra->name, ra->bytes, ra->tier, ra->what, strerror(-ret));
	return ret;
}

bool recovery_populate_needed(uint64_t bytes)
{
	char line[128];
	unsigned long long kb = 0;
	bool found = false;
	FILE *f;

	if (fault_left(FAULT_POPULATE))
		return true;
	f = fopen("/proc/meminfo", "re");
	if (!f)
		return false;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
			found = true;
			break;
		}
	fclose(f);
	if (!found || kb >= UINT64_MAX / 2048)
		return false;
	{
		/* In a memory cgroup, what it still allows may be far less than MemAvailable. */
		struct wd_memlimit ml;
		uint64_t avail = kb * 1024;

		wd_memlimit_read(&ml);
		if (ml.cgroup_limit != UINT64_MAX)
			avail = ml.cgroup_usage < ml.cgroup_limit ?
				(avail < ml.cgroup_limit - ml.cgroup_usage ? avail :
				 ml.cgroup_limit - ml.cgroup_usage) : 0;
		return avail < bytes * 2;
	}
}

int recovery_populate(void *addr, size_t len)
{
	int err = fault_take(FAULT_POPULATE);

	if (err)
		return -err;
	if (!len || madvise(addr, len, MADV_POPULATE_WRITE) == 0)
		return 0;
	err = errno;
	/* EINVAL: a kernel before 5.14 does not know the advice; first touch allocates. */
	if (err == EINVAL)
		return 0;
	if (err == EFAULT || err == EHWPOISON)
		return -ENOMEM;
	return -err;
}

/* ---- quarantine ------------------------------------------------------------------------ */

struct qrec {
	struct qrec *next;
	char *key;
	uint64_t fp;
	uint32_t fails;
	bool quarantined;
	char reason[RECOVERY_REASON_MAX];
};

struct quarantine {
	pthread_mutex_t lock;
	uint32_t after;
	struct qrec *recs;
};

int quarantine_create(uint32_t after, struct quarantine **out)
{
	struct quarantine *q = calloc(1, sizeof(*q));

	*out = NULL;
	if (!q)
		return -ENOMEM;
	pthread_mutex_init(&q->lock, NULL);
	q->after = after;
	*out = q;
	return 0;
}

void quarantine_destroy(struct quarantine *q)
{
	if (!q)
		return;
	while (q->recs) {
		struct qrec *r = q->recs;

		q->recs = r->next;
		free(r->key);
		free(r);
	}
	pthread_mutex_destroy(&q->lock);
	free(q);
}

void quarantine_set_after(struct quarantine *q, uint32_t after)
{
	pthread_mutex_lock(&q->lock);
	q->after = after;
	pthread_mutex_unlock(&q->lock);
}

static struct qrec **find(struct quarantine *q, const char *key)
{
	struct qrec **pp;

	for (pp = &q->recs; *pp; pp = &(*pp)->next)
		if (!strcmp((*pp)->key, key))
			break;
	return pp;
}

static void unlink_rec(struct qrec **pp)
{
	struct qrec *r = *pp;

	*pp = r->next;
	free(r->key);
	free(r);
}

int quarantine_check(struct quarantine *q, const char *key, uint64_t fp, char *msg,
		     size_t msg_len)
{
	struct qrec **pp, *r;
	int ret = 0;

	pthread_mutex_lock(&q->lock);
	pp = find(q, key);
	r = *pp;
	if (r && r->fp != fp) {
		/* The files changed since the failures: whatever failed may be fixed. */
		if (r->quarantined)
			log_info(MOD, "\"quarantine cleared: the files changed\" component=\"%s\"",
				 key);
		unlink_rec(pp);
	} else if (r && r->quarantined) {
		ret = -ENOTRECOVERABLE;
		if (msg && msg_len)
			snprintf(msg, msg_len, "quarantined: %s (%u failures; clears when the file "
				 "changes)", r->reason, r->fails);
	}
	pthread_mutex_unlock(&q->lock);
	return ret;
}

bool quarantine_fail(struct quarantine *q, const char *key, uint64_t fp, int err,
		     const char *why)
{
	struct qrec **pp, *r;
	bool now = false;

	pthread_mutex_lock(&q->lock);
	pp = find(q, key);
	r = *pp;
	if (r && r->fp != fp) {
		unlink_rec(pp);
		r = NULL;
	}
	if (!r) {
		r = calloc(1, sizeof(*r));
		if (!r || !(r->key = strdup(key))) {
			free(r);
			pthread_mutex_unlock(&q->lock);
			return false;
		}
		r->fp = fp;
		r->next = q->recs;
		q->recs = r;
	}
	r->fails++;
	if (snprintf(r->reason, sizeof(r->reason), "%s", why && *why ? why : strerror(-err)) >=
	    (int)sizeof(r->reason))
		memcpy(r->reason + sizeof(r->reason) - 4, "...", 4);	/* say it was cut */
	if (!r->quarantined && q->after && r->fails >= q->after) {
		r->quarantined = true;
		now = true;
		/* Logged under the lock: @r may be freed by another thread once it is dropped. */
		log_warn(MOD, "\"component quarantined\" component=\"%s\" failures=%u err=%d "
			 "reason=\"%s\"", key, r->fails, err, r->reason);
	}
	pthread_mutex_unlock(&q->lock);
	if (now)
		recovery_count(RECOVERY_QUARANTINED, 1);
	return now;
}

void quarantine_ok(struct quarantine *q, const char *key)
{
	struct qrec **pp;

	pthread_mutex_lock(&q->lock);
	pp = find(q, key);
	if (*pp)
		unlink_rec(pp);
	pthread_mutex_unlock(&q->lock);
}

bool quarantine_clear(struct quarantine *q, const char *key)
{
	struct qrec **pp;
	bool was = false;

	pthread_mutex_lock(&q->lock);
	pp = find(q, key);
	if (*pp) {
		was = (*pp)->quarantined;
		unlink_rec(pp);
	}
	pthread_mutex_unlock(&q->lock);
	if (was)
		log_info(MOD, "\"quarantine cleared by the operator\" component=\"%s\"", key);
	return was;
}

size_t quarantine_count(struct quarantine *q)
{
	size_t n = 0;

	pthread_mutex_lock(&q->lock);
	for (struct qrec *r = q->recs; r; r = r->next)
		n += r->quarantined;
	pthread_mutex_unlock(&q->lock);
	return n;
}
