/*
 * Structured logging to stderr, one line per event, logfmt style:
 *   ts=2026-11-23T09:31:28.123Z level=info mod=scan msg="..." key=value ...
 * Library code logs; it never prints to stdout and never exits.
 */
#ifndef WD_CORE_LOG_H
#define WD_CORE_LOG_H

#include "core/common.h"

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_OFF };

/* Messages below the threshold are dropped. Default LOG_WARN; $WEIGHTD_LOG overrides. */
void log_set_level(enum log_level level);
enum log_level log_get_level(void);

/*
 * Writes one line. @mod names the subsystem ("scan", "catalog"); @fmt formats the rest
 * of the line after msg=, so callers write `log_msg(LOG_INFO, "scan", "\"done\" files=%u", n)`.
 */
void log_msg(enum log_level level, const char *mod, const char *fmt, ...) WD_PRINTF(3, 4);

#define log_debug(mod, ...) log_msg(LOG_DEBUG, mod, __VA_ARGS__)
#define log_info(mod, ...) log_msg(LOG_INFO, mod, __VA_ARGS__)
#define log_warn(mod, ...) log_msg(LOG_WARN, mod, __VA_ARGS__)
#define log_error(mod, ...) log_msg(LOG_ERROR, mod, __VA_ARGS__)

#endif
