/*
 * Structured logging to stderr, one line per event, logfmt style:
 *   ts=2026-11-23T09:31:28.123Z level=info mod=scan msg="..." key=value ...
 * Library code logs; it never prints to stdout and never exits.
 */
#ifndef WD_CORE_LOG_H
#define WD_CORE_LOG_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "core/base/common.h"

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_OFF };

/* Messages below the threshold are dropped. Default LOG_WARN; $WEIGHTD_LOG overrides. */
void log_set_level(enum log_level level);
enum log_level log_get_level(void);

/*
 * Writes one line. @mod names the subsystem ("scan", "catalog"); @fmt formats the rest
 * of the line after msg=, so callers write `log_msg(LOG_INFO, "scan", "\"done\" files=%u", n)`.
 */
void log_msg(enum log_level level, const char *mod, const char *fmt, ...) WD_PRINTF(3, 4);

/*
 * A rate limit for a log line that a peer can trigger at will (a refused connection, a
 * failed accept): at most @burst lines per @period_ms, the rest counted and reported with the
 * next line that goes out. Thread-safe. Initialise with LOG_LIMIT_INIT(burst, period_ms).
 */
struct log_limit {
	pthread_mutex_t lock;
	uint32_t burst, period_ms;
	uint64_t window_start_ns;
	uint32_t in_window;
	uint64_t suppressed;
};

#define LOG_LIMIT_INIT(b, ms) { .lock = PTHREAD_MUTEX_INITIALIZER, .burst = (b), .period_ms = (ms) }

/*
 * True when a line may be written now; then *@suppressed is how many were dropped since the
 * last line that went out (say so in the line: "suppressed=N").
 */
bool log_limit_ok(struct log_limit *l, uint64_t *suppressed);

/*
 * Copies @in to @out (@size bytes, always NUL-terminated when @size > 0) with every byte a
 * log line or a terminal could act on made visible: control characters (newline, ESC, DEL)
 * become \n, \r, \t or \xHH, and, with LOG_ESC_QUOTES in @flags, a double quote and a
 * backslash get a backslash (inside a quoted logfmt value; a whole message keeps its own
 * quotes). Names that come from disk or from a client (paths, model and tensor names) go
 * through this before they are logged or printed, so a directory called
 * "x\nlevel=error" cannot forge a log line and "\e[2J" cannot clear a terminal. Bytes >=
 * 0x80 pass unchanged (UTF-8 names stay readable). A result cut short ends with "...".
 * Returns @out, so it can sit in a printf argument list.
 */
#define LOG_ESC_QUOTES 1
const char *log_escape(const char *in, char *out, size_t size, int flags);

/* Room for a logged name: a log line is at most 2 KiB, so longer would be cut anyway. */
#define LOG_ESCAPE_MAX 1024

#define log_debug(mod, ...) log_msg(LOG_DEBUG, mod, __VA_ARGS__)
#define log_info(mod, ...) log_msg(LOG_INFO, mod, __VA_ARGS__)
#define log_warn(mod, ...) log_msg(LOG_WARN, mod, __VA_ARGS__)
#define log_error(mod, ...) log_msg(LOG_ERROR, mod, __VA_ARGS__)

#endif
