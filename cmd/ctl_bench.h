/*
 * weightctl bench's two files: ctl_bench.c measures and records a run, ctl_bench_report.c
 * prints it (text, or a chart).
 */
#ifndef WD_CMD_CTL_BENCH_H
#define WD_CMD_CTL_BENCH_H

#include <stdbool.h>

#include <jansson.h>

/* A load faster than its baseline by more than this says the baseline was wrong. */
#define SUSPECT_RATIO 1.05

/* A bar chart of the bandwidths in report @r with gnuplot, into @png; false when gnuplot
 * failed. */
bool ctl_bench_plot(const char *png, json_t *r);

/* Report @r as text on stdout: each figure, and each load against its baseline. */
void ctl_bench_print(json_t *r);

#endif
