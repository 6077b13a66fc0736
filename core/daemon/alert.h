/*
 * Alerts: conditions an operator should hear about, evaluated by the daemon's control thread
 * on a timer (a timerfd in its epoll set), never on a request's path.
 *
 * Kinds (enum wd_alert_kind in shm/regmetrics.h), each with its configuration key
 * (docs/config.md):
 *   budget       host cache bytes in use above budget_pct percent of the budget. Active while
 *                it stays there; raised when it crosses up, cleared when it falls back.
 *   slow_load    a completed full load of a component ran below slow_load_pct percent of the
 *                median rate of that component's previous loads (the last slow_load_history
 *                recorded in the catalog's load_history table; at least slow_load_min of them,
 *                else no verdict). The loader thread only queues the load (alert_note_load());
 *                the timer judges it and then records it in the catalog. Active while the
 *                component's latest load was slow.
 *   error_burst  more than error_count failed completions (all classes, registry metrics
 *                block) within the last error_window. Active while that holds.
 *   pin_ttl      a client has held a pin for longer than pin_ttl. A pin's age is counted from
 *                the first timer tick that saw it, so it is exact to one interval. Active
 *                while such pins exist; raised once per pin.
 *   catalog      the catalog failed its check at start (PRAGMA quick_check on the worker, or
 *                not a database at all): it was moved aside and rebuilt from a scan. Raised
 *                once by the control thread; active for the daemon's life, since tags and
 *                notes stay in the old file until an operator looks at it.
 *
 * Each raise is a log line (log_warn, module "alert"), a count in the metrics block
 * (alerts_total[kind], exported as weightd_alerts_total{kind=...}), the active gauge
 * (alerts_active[kind]) and an event record in the registry's recent-events ring, which
 * `weightctl top` shows. A clear is a log line (log_info) and an event.
 */
#ifndef WD_CORE_ALERT_H
#define WD_CORE_ALERT_H

#include <stdint.h>

struct daemon;
struct alerts;

struct alert_config {
	uint32_t budget_pct;		/* 90; 0 turns the kind off */
	uint32_t slow_load_pct;		/* 25; 0 turns the kind off */
	uint32_t slow_load_history;	/* 10: past loads whose median is the reference */
	uint32_t slow_load_min;		/* 3: fewer past loads give no verdict */
	uint32_t error_count;		/* 50: more than this many errors ... */
	uint64_t error_window_ns;	/* ... within 60 s; error_count 0 turns the kind off */
	uint64_t pin_ttl_ns;		/* 1 h; 0 turns the kind off */
	uint64_t interval_ns;		/* 1 s: how often the timer evaluates */
};

#define ALERT_MIN_INTERVAL_NS (10ull * 1000 * 1000)	/* 10 ms */
#define ALERT_HISTORY_MAX 1000u		/* slow_load_history upper bound */

/* "budget", "slow_load", "error_burst", "pin_ttl" (the metric label), or "unknown". */
const char *alert_kind_name(unsigned int kind);

/* Fills @c with the defaults above. */
void alert_config_init(struct alert_config *c);

/*
 * Creates the alert state of @d (d->cfg.alerts): its timerfd (armed, periodic) and its own
 * catalog handle, which only the control thread uses. Returns 0 and sets *@out; -EINVAL for
 * an interval below ALERT_MIN_INTERVAL_NS or a history above ALERT_HISTORY_MAX; -ENOMEM; the
 * negative errno of timerfd_create(2)/timerfd_settime(2); or catalog_open()'s error.
 */
int alert_create(struct daemon *d, struct alerts **out);

/*
 * Control thread: raises the catalog alert (the corrupt catalog is now @aside; @why is
 * SQLite's complaint) and reopens the alerts' own catalog handle on the new file.
 */
void alert_catalog_rebuilt(struct daemon *d, const char *aside, const char *why);

/* Frees @a (NULL is ignored); pending loads not yet judged are dropped. */
void alert_destroy(struct alerts *a);

/* The timerfd to watch for EPOLLIN. */
int alert_fd(const struct alerts *a);

/*
 * Control thread, when alert_fd() is readable: reads the timer, refreshes the host cache
 * state in the metrics block (hostcache_publish_metrics()) and evaluates every kind.
 */
void alert_on_timer(struct daemon *d);

/*
 * Any thread (the loader's completion callback): a full load of @key ("model/component")
 * read @bytes in @ns. Queued for the next tick (a bounded queue: when it is full the load is
 * not judged and a counter says so in the log). Does nothing when d->alerts is NULL.
 */
void alert_note_load(struct daemon *d, const char *key, uint64_t bytes, uint64_t ns);

#endif
