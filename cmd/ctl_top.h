/*
 * weightctl top's two files: ctl_top.c reads the frames (registry and STATS) and runs the
 * loop, ctl_top_render.c draws a frame. What they share: the options and one frame.
 */
#ifndef WD_CMD_CTL_TOP_H
#define WD_CMD_CTL_TOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <jansson.h>

#include "weightd.h"

#define TOP_EVENTS 8		/* recent events shown (the registry keeps 64) */

/* top's options. */
struct topts {
	const char *socket;
	double interval_s;
	bool once;
	bool json;
};

/* One component on one tier that is not absent, in this frame. */
struct entry {
	uint32_t model, comp, tier, state;
	int32_t error;
	uint64_t nbytes, done, total;
	double rate;		/* bytes/s while loading; NAN until two frames saw it */
	const char *comp_name;
};

/* Per-tier totals of one frame. */
struct tier_sum {
	bool seen;
	uint32_t resident, loading, failed;
	uint64_t bytes;		/* nbytes of the components resident on it */
	double rate;		/* sum of the loading rates known */
};

/* One refresh: the registry's models and components, the STATS counters, the metrics
 * block, and the rates since the previous frame. */
struct frame {
	uint64_t now_ns;
	double dt;		/* seconds since the previous frame; 0 for the first */
	int pid;
	struct weightd_stats st;
	struct weightd_model_info *models;
	size_t n_models, cap_models;
	struct weightd_component_info *comps;
	size_t n_comps, cap_comps;
	struct entry *ents;
	size_t n_ents, cap_ents;
	struct tier_sum tiers[WEIGHTD_TIER_MAX];
	double req_rate, load_rate;	/* NAN for the first frame */
	bool have_metrics;		/* the registry has a metrics block: met, events */
	struct weightd_metrics met;
	struct weightd_event events[TOP_EVENTS];
	size_t n_events;
};

/*
 * The frame as text lines into @out. On a terminal (@cols > 0) each line is cut to the width
 * and ends with "erase to end of line", and the frame is cut to @rows lines.
 */
struct screen {
	FILE *out;
	int cols, rows, line;
	bool ansi;
	size_t hidden;
};

/* The frame as text into @s: header, tiers, models, loads, metrics and events. */
void ctl_top_render_text(const struct frame *f, const struct topts *o, const char *sock,
			 struct screen *s);

/* The frame as one JSON object (NULL when out of memory). */
json_t *ctl_top_render_json(const struct frame *f, const char *sock);

#endif
