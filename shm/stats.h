/*
 * The daemon's one set of counters: the STATS vector (enum wd_stat in shm/abi.h), each entry
 * with one name, kind and meaning. `weightctl stats` (text and --json) prints an entry under
 * its name; the Prometheus endpoint exports it as "weightd_" NAME, with "_total" after a
 * counter's name. Both walk this table, so the two cannot drift apart; docs/metrics.md lists
 * it for readers.
 */
#ifndef WD_SHM_STATS_H
#define WD_SHM_STATS_H

#include <stdbool.h>

#include "shm/abi.h"

struct wd_stat_info {
	const char *name;	/* NULL: not part of the set (per-client or packed values) */
	bool counter;		/* only grows; else a gauge */
	const char *help;	/* one sentence */
};

/* Indexed by enum wd_stat. */
extern const struct wd_stat_info wd_stat_info[WD_STAT_COUNT];

#endif
