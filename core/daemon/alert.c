/*
 * Alerts (core/daemon/alert.h): the timer's evaluation of each kind, and the events it writes
 * into the registry's recent-events ring. The slow-load verdicts read and write the load
 * history through the alerts' own catalog connection, which only the control thread uses
 * (not the worker's: core/daemon/internal.h, "Catalog connections").
 */
#include "core/daemon/alert.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "core/catalog/catalog.h"
#include "core/base/common.h"
#include "core/policy/evict.h"
#include "core/tier/hostcache.h"
#include "core/base/log.h"
#include "core/daemon/internal.h"
#include "shm/regmetrics.h"

#define MOD "alert"
#define QUEUE_MAX 256u		/* loads waiting for the next tick */
#define SLOW_MAX 64u		/* components whose latest load was slow, tracked for the gauge */
#define SAMPLES_MAX 4096u	/* error-count samples kept for the burst window */

static const char *const kind_names[WD_ALERT_COUNT] = WD_ALERT_NAMES;

struct queued_load {
	char key[EVICT_KEY_MAX];
	uint64_t bytes, ns, at_ns;
};

/* A pin seen by the timer: its holder, the triple, and when the timer first saw it. */
struct tracked_pin {
	uint32_t client;
	pid_t pid;
	struct lease_pin p;
	uint64_t first_ns;
	bool alerted, seen;
};

struct sample {
	uint64_t t_ns, errors;
};

struct alerts {
	struct alert_config cfg;
	int tfd;
	struct catalog *cat;		/* the control thread's own handle */
	pthread_mutex_t lock;		/* the queue: loader thread in, control thread out */
	struct queued_load q[QUEUE_MAX];
	unsigned int n_q;
	uint64_t dropped;
	/* Control thread only from here on. */
	bool budget_on, burst_on, pins_on;
	char slow[SLOW_MAX][EVICT_KEY_MAX];
	unsigned int n_slow;
	struct tracked_pin *pins;
	size_t n_pins, cap_pins;
	struct sample samples[SAMPLES_MAX];
	unsigned int s_first, s_n;
	uint64_t n_events;		/* private copy of the ring's head */
};

const char *alert_kind_name(unsigned int kind)
{
	return kind < WD_ALERT_COUNT ? kind_names[kind] : "unknown";
}

void alert_config_init(struct alert_config *c)
{
	*c = (struct alert_config){
		.budget_pct = 90,
		.slow_load_pct = 25,
		.slow_load_history = 10,
		.slow_load_min = 3,
		.error_count = 50,
		.error_window_ns = 60ull * 1000000000,
		.pin_ttl_ns = 3600ull * 1000000000,
		.interval_ns = 1000000000,
	};
}

int alert_fd(const struct alerts *a)
{
	return a->tfd;
}

/* ---- events -------------------------------------------------------------------------- */

/*
 * Appends an event to the registry's ring and logs it; @flags WD_EVENT_F_RAISED also counts
 * it in alerts_total. The control thread is the ring's only writer, so it keeps the head in
 * private memory and never reads shared memory back.
 */
static void WD_PRINTF(6, 7) emit(struct daemon *d, unsigned int kind, uint32_t flags,
				 uint64_t value, uint64_t limit, const char *fmt, ...)
{
	struct alerts *a = d->alerts;
	struct wd_reg_metrics *m = registry_metrics(d->reg);
	struct wd_event ev = { .kind = kind, .flags = flags, .value = value, .limit = limit };
	uint64_t n = a->n_events, *dst = (uint64_t *)&m->events[n % WD_EVENTS];
	const uint64_t *src = (const uint64_t *)&ev;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(ev.text, sizeof(ev.text), fmt, ap);
	va_end(ap);
	ev.wall_ns = wd_wall_ns();
	WRITE_ONCE(dst[0], 2 * n + 1);
	/* Pairs with smp_rmb() in regm_event_read(): a reader that sees a new word sees seq odd. */
	smp_wmb();
	for (size_t i = 1; i < sizeof(ev) / 8; i++)
		WRITE_ONCE(dst[i], src[i]);
	/* Pairs with load_acquire(seq) in regm_event_read(). */
	store_release(&dst[0], 2 * n + 2);
	a->n_events = n + 1;
	/* Pairs with the reader's load_acquire(event_head): the record below it is complete. */
	store_release(&m->event_head, n + 1);
	if (flags & WD_EVENT_F_RAISED) {
		regm_add(&m->alerts_total[kind], 1);
		log_warn(MOD, "\"alert raised\" kind=%s value=%" PRIu64 " limit=%" PRIu64
			 " text=\"%s\"", kind_names[kind], value, limit, ev.text);
	} else {
		log_info(MOD, "\"alert cleared\" kind=%s value=%" PRIu64 " limit=%" PRIu64
			 " text=\"%s\"", kind_names[kind], value, limit, ev.text);
	}
}

static void set_active(struct daemon *d, unsigned int kind, uint64_t n)
{
	/* The control thread is the gauge's only writer (shm/regmetrics.h). */
	WRITE_ONCE(registry_metrics(d->reg)->alerts_active[kind], n);
}

void alert_catalog_rebuilt(struct daemon *d, const char *aside, const char *why)
{
	struct alerts *a = d->alerts;
	const char *base = strrchr(aside, '/');

	/* This handle still points at the file that was moved aside: take the new one. */
	catalog_close(a->cat);
	a->cat = NULL;
	if (catalog_open(d->state_dir, &a->cat))
		a->cat = NULL;

	emit(d, WD_ALERT_CATALOG, WD_EVENT_F_RAISED, 1, 0, "catalog corrupt (%s), rebuilt; "
	     "old file %s", why, base ? base + 1 : aside);
	set_active(d, WD_ALERT_CATALOG, 1);
}

/* ---- budget ---------------------------------------------------------------------------- */

static void eval_budget(struct daemon *d)
{
	struct alerts *a = d->alerts;
	const struct wd_reg_metrics *m = registry_metrics(d->reg);
	uint64_t used = registry_counter(&d->view, WD_CTR_HOST_BYTES);
	uint64_t budget = READ_ONCE(m->host_budget);
	uint64_t pct = budget ? used * 100 / budget : 0;
	bool on;

	if (!a->cfg.budget_pct || !budget)
		return;
	on = (unsigned __int128)used * 100 > (unsigned __int128)budget * a->cfg.budget_pct;
	if (on && !a->budget_on)
		emit(d, WD_ALERT_BUDGET, WD_EVENT_F_RAISED, pct, a->cfg.budget_pct,
		     "host cache %" PRIu64 "%% full (%" PRIu64 " of %" PRIu64 " bytes), above %u%%",
		     pct, used, budget, a->cfg.budget_pct);
	else if (!on && a->budget_on)
		emit(d, WD_ALERT_BUDGET, WD_EVENT_F_CLEARED, pct, a->cfg.budget_pct,
		     "host cache back to %" PRIu64 "%% full, at or below %u%%", pct,
		     a->cfg.budget_pct);
	a->budget_on = on;
	set_active(d, WD_ALERT_BUDGET, on);
}

/* ---- error bursts ---------------------------------------------------------------------- */

static uint64_t errors_total(struct daemon *d)
{
	const struct wd_reg_metrics *m = registry_metrics(d->reg);
	uint64_t n = 0;

	for (unsigned int i = 0; i < WD_ERRC_COUNT; i++)
		n += READ_ONCE(m->errors[i]);
	return n;
}

static void push_sample(struct alerts *a, uint64_t now, uint64_t errors)
{
	if (a->s_n == SAMPLES_MAX) {
		/* Full: the oldest goes, which only makes the window's start coarser. */
		a->s_first = (a->s_first + 1) % SAMPLES_MAX;
		a->s_n--;
	}
	a->samples[(a->s_first + a->s_n) % SAMPLES_MAX] = (struct sample){ now, errors };
	a->s_n++;
}

static void eval_burst(struct daemon *d, uint64_t now)
{
	struct alerts *a = d->alerts;
	uint64_t total = errors_total(d), base, in_window;
	bool on;

	if (!a->cfg.error_count)
		return;
	/*
	 * The base is the newest sample at least one window old (or the oldest there is): the
	 * errors since then are the errors of the last window, to one interval.
	 */
	while (a->s_n > 1 &&
	       a->samples[(a->s_first + 1) % SAMPLES_MAX].t_ns + a->cfg.error_window_ns <= now) {
		a->s_first = (a->s_first + 1) % SAMPLES_MAX;
		a->s_n--;
	}
	base = a->s_n ? a->samples[a->s_first].errors : total;
	in_window = total >= base ? total - base : 0;
	push_sample(a, now, total);
	on = in_window > a->cfg.error_count;
	if (on && !a->burst_on)
		emit(d, WD_ALERT_ERROR_BURST, WD_EVENT_F_RAISED, in_window, a->cfg.error_count,
		     "%" PRIu64 " errors in the last %.0f s, more than %u", in_window,
		     (double)a->cfg.error_window_ns / 1e9, a->cfg.error_count);
	else if (!on && a->burst_on)
		emit(d, WD_ALERT_ERROR_BURST, WD_EVENT_F_CLEARED, in_window, a->cfg.error_count,
		     "error rate back to %" PRIu64 " in the last %.0f s", in_window,
		     (double)a->cfg.error_window_ns / 1e9);
	a->burst_on = on;
	set_active(d, WD_ALERT_ERROR_BURST, on);
}

/* ---- slow loads ----------------------------------------------------------------------- */

void alert_note_load(struct daemon *d, const char *key, uint64_t bytes, uint64_t ns)
{
	struct alerts *a = d->alerts;

	if (!a || !ns || !key[0])
		return;
	pthread_mutex_lock(&a->lock);
	if (a->n_q < QUEUE_MAX) {
		struct queued_load *q = &a->q[a->n_q++];

		snprintf(q->key, sizeof(q->key), "%s", key);
		q->bytes = bytes;
		q->ns = ns;
		q->at_ns = wd_wall_ns();
	} else {
		a->dropped++;
	}
	pthread_mutex_unlock(&a->lock);
}

static int cmp_double(const void *x, const void *y)
{
	double a = *(const double *)x, b = *(const double *)y;

	return a < b ? -1 : a > b;
}

static double median(double *v, unsigned int n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Marks @key slow (@slow) or not in the tracked set; returns whether it was slow before. */
static bool track_slow(struct alerts *a, const char *key, bool slow)
{
	for (unsigned int i = 0; i < a->n_slow; i++) {
		if (strcmp(a->slow[i], key))
			continue;
		if (!slow)
			memcpy(a->slow[i], a->slow[--a->n_slow], EVICT_KEY_MAX);
		return true;
	}
	if (slow && a->n_slow < SLOW_MAX)
		snprintf(a->slow[a->n_slow++], EVICT_KEY_MAX, "%s", key);
	return false;
}

/* Judges one load against its component's history, then adds it to that history. */
static void judge_load(struct daemon *d, const struct queued_load *q, double *rates)
{
	struct alerts *a = d->alerts;
	double rate = (double)q->bytes * 1e9 / (double)q->ns, med, limit;
	unsigned int n = 0;
	int ret;

	if (!a->cat)
		return;	/* reopening it after a rebuild failed (alert_catalog_rebuilt()) */
	ret = catalog_load_rates(a->cat, q->key, a->cfg.slow_load_history, rates, &n);
	if (ret)
		log_warn(MOD, "\"cannot read the load history\" key=\"%s\" err=%d", q->key, ret);
	if (!ret && a->cfg.slow_load_pct && n >= a->cfg.slow_load_min && n) {
		med = median(rates, n);
		limit = med * a->cfg.slow_load_pct / 100.0;
		if (rate < limit) {
			track_slow(a, q->key, true);
			emit(d, WD_ALERT_SLOW_LOAD, WD_EVENT_F_RAISED, (uint64_t)rate, (uint64_t)limit,
			     "%.40s loaded at %.3g MB/s, below %u%% of its median %.3g MB/s",
			     q->key, rate / 1e6, a->cfg.slow_load_pct, med / 1e6);
		} else if (track_slow(a, q->key, false)) {
			emit(d, WD_ALERT_SLOW_LOAD, WD_EVENT_F_CLEARED, (uint64_t)rate,
			     (uint64_t)limit, "%.40s loaded at %.3g MB/s again", q->key,
			     rate / 1e6);
		}
	}
	ret = catalog_load_add(a->cat, q->key, q->at_ns, q->bytes, q->ns,
			       a->cfg.slow_load_history ? a->cfg.slow_load_history : 1);
	if (ret)
		log_warn(MOD, "\"cannot record the load\" key=\"%s\" err=%d", q->key, ret);
}

static void eval_loads(struct daemon *d)
{
	struct alerts *a = d->alerts;
	struct queued_load *batch;
	unsigned int n;
	uint64_t dropped;
	double *rates;

	pthread_mutex_lock(&a->lock);
	n = a->n_q;
	dropped = a->dropped;
	a->dropped = 0;
	batch = n ? malloc(n * sizeof(*batch)) : NULL;
	if (batch) {
		memcpy(batch, a->q, n * sizeof(*batch));
		a->n_q = 0;
	}
	pthread_mutex_unlock(&a->lock);
	if (dropped)
		log_warn(MOD, "\"loads not judged: queue full\" dropped=%" PRIu64, dropped);
	if (!batch)
		return;
	rates = malloc((a->cfg.slow_load_history + 1) * sizeof(*rates));
	for (unsigned int i = 0; rates && i < n; i++)
		judge_load(d, &batch[i], rates);
	free(rates);
	free(batch);
	set_active(d, WD_ALERT_SLOW_LOAD, a->n_slow);
}

/* ---- pins held too long ----------------------------------------------------------------- */

static struct tracked_pin *find_pin(struct alerts *a, uint32_t client, const struct lease_pin *p)
{
	for (size_t i = 0; i < a->n_pins; i++) {
		struct tracked_pin *t = &a->pins[i];

		if (t->client == client && t->p.model == p->model &&
		    t->p.component == p->component && t->p.tier == p->tier)
			return t;
	}
	return NULL;
}

static void eval_pins(struct daemon *d, uint64_t now)
{
	struct alerts *a = d->alerts;
	uint64_t over = 0;
	size_t k = 0;

	if (!a->cfg.pin_ttl_ns)
		return;
	for (size_t i = 0; i < a->n_pins; i++)
		a->pins[i].seen = false;
	pthread_mutex_lock(&d->state_lock);
	for (struct lease *l = d->leases.head; l; l = l->next) {
		/* Every lease in the table is the one embedded in a client. */
		const struct client *c = (const struct client *)((const char *)l -
								  offsetof(struct client, lease));

		for (size_t i = 0; i < l->n; i++) {
			struct tracked_pin *t = find_pin(a, c->id, &l->pins[i]);

			if (!t && a->n_pins == a->cap_pins) {
				size_t cap = a->cap_pins ? 2 * a->cap_pins : 16;
				struct tracked_pin *np = realloc(a->pins, cap * sizeof(*np));

				if (!np)
					continue;
				a->pins = np;
				a->cap_pins = cap;
			}
			if (!t) {
				t = &a->pins[a->n_pins++];
				*t = (struct tracked_pin){ .client = c->id, .pid = c->pid,
							   .p = l->pins[i], .first_ns = now };
			}
			t->seen = true;
		}
	}
	pthread_mutex_unlock(&d->state_lock);
	for (size_t i = 0; i < a->n_pins; i++) {
		struct tracked_pin *t = &a->pins[i];
		struct wd_reg_model mo;

		if (!t->seen)
			continue;
		a->pins[k++] = *t;
		t = &a->pins[k - 1];
		if (now - t->first_ns <= a->cfg.pin_ttl_ns)
			continue;
		over++;
		if (t->alerted)
			continue;
		t->alerted = true;
		if (registry_read_model(&d->view, t->p.model, &mo))
			snprintf(mo.name, sizeof(mo.name), "#%u", t->p.model);
		emit(d, WD_ALERT_PIN_TTL, WD_EVENT_F_RAISED, (now - t->first_ns) / 1000000000,
		     a->cfg.pin_ttl_ns / 1000000000,
		     "client %u (pid %d) has pinned %.40s for %.0f s, over %.0f s", t->client,
		     (int)t->pid, mo.name, (double)(now - t->first_ns) / 1e9,
		     (double)a->cfg.pin_ttl_ns / 1e9);
	}
	a->n_pins = k;
	if (!over && a->pins_on)
		emit(d, WD_ALERT_PIN_TTL, WD_EVENT_F_CLEARED, 0, a->cfg.pin_ttl_ns / 1000000000,
		     "no pin held longer than %.0f s", (double)a->cfg.pin_ttl_ns / 1e9);
	a->pins_on = over > 0;
	set_active(d, WD_ALERT_PIN_TTL, over);
}

/* ---- the timer ------------------------------------------------------------------------ */

void alert_on_timer(struct daemon *d)
{
	uint64_t expirations, now;

	/* Nonblocking: a spurious wake-up reads nothing and evaluates anyway, which is harmless. */
	if (read(d->alerts->tfd, &expirations, sizeof(expirations)) < 0 && errno != EAGAIN)
		log_warn(MOD, "\"timerfd read failed\" err=%d", -errno);
	now = wd_now_ns();
	hostcache_publish_metrics(d->hc);
	eval_budget(d);
	eval_burst(d, now);
	eval_loads(d);
	eval_pins(d, now);
}

int alert_create(struct daemon *d, struct alerts **out)
{
	const struct alert_config *cfg = &d->cfg.alerts;
	struct itimerspec its = { 0 };
	struct alerts *a;
	int ret;

	*out = NULL;
	if (cfg->interval_ns < ALERT_MIN_INTERVAL_NS || cfg->slow_load_history > ALERT_HISTORY_MAX)
		return -EINVAL;
	a = calloc(1, sizeof(*a));
	if (!a)
		return -ENOMEM;
	a->cfg = *cfg;
	pthread_mutex_init(&a->lock, NULL);
	a->tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	if (a->tfd < 0) {
		ret = -errno;
		goto fail;
	}
	its.it_interval.tv_sec = (time_t)(cfg->interval_ns / 1000000000);
	its.it_interval.tv_nsec = (long)(cfg->interval_ns % 1000000000);
	its.it_value = its.it_interval;
	if (timerfd_settime(a->tfd, 0, &its, NULL) < 0) {
		ret = -errno;
		goto fail;
	}
	ret = catalog_open(d->state_dir, &a->cat);
	if (ret)
		goto fail;
	push_sample(a, wd_now_ns(), 0);
	/* Readers see the host cache's state from the start, not after the first tick. */
	hostcache_publish_metrics(d->hc);
	*out = a;
	return 0;
fail:
	alert_destroy(a);
	return ret;
}

void alert_destroy(struct alerts *a)
{
	if (!a)
		return;
	if (a->tfd >= 0)
		close(a->tfd);
	catalog_close(a->cat);
	pthread_mutex_destroy(&a->lock);
	free(a->pins);
	free(a);
}
