#include "core/base/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static const char *const level_names[] = { "debug", "info", "warn", "error" };
static enum log_level threshold = LOG_WARN;
static pthread_once_t env_once = PTHREAD_ONCE_INIT;

static void read_env(void)
{
	const char *e = getenv("WEIGHTD_LOG");

	if (!e)
		return;
	for (size_t i = 0; i < ARRAY_SIZE(level_names); i++)
		if (!strcmp(e, level_names[i]))
			threshold = (enum log_level)i;
	if (!strcmp(e, "off"))
		threshold = LOG_OFF;
}

void log_set_level(enum log_level level)
{
	pthread_once(&env_once, read_env);
	threshold = level;
}

enum log_level log_get_level(void)
{
	pthread_once(&env_once, read_env);
	return threshold;
}

void log_msg(enum log_level level, const char *mod, const char *fmt, ...)
{
	char line[2048];
	struct timespec ts;
	struct tm tm;
	va_list ap;
	int n;

	if (level < log_get_level() || level >= LOG_OFF)
		return;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n = snprintf(line, sizeof(line), "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s mod=%s msg=",
		     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
		     tm.tm_sec, ts.tv_nsec / 1000000, level_names[level], mod);
	va_start(ap, fmt);
	if (n > 0 && (size_t)n < sizeof(line))
		vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
	va_end(ap);
	/*
	 * A control character in a value would end the line or drive the reader's terminal:
	 * callers escape names with log_escape(), and this pass catches what one missed
	 * (a strerror() text never has any, so nothing legitimate is lost).
	 */
	size_t len = strnlen(line, sizeof(line) - 2);

	for (size_t i = 0; i < len; i++)
		if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f)
			line[i] = '?';
	/* One fputs per line so lines from different threads do not interleave. */

	line[len] = '\n';
	line[len + 1] = '\0';
	fputs(line, stderr);
}

bool log_limit_ok(struct log_limit *l, uint64_t *suppressed)
{
	struct timespec ts;
	uint64_t now;
	bool ok;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	now = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	pthread_mutex_lock(&l->lock);
	if (now - l->window_start_ns >= (uint64_t)l->period_ms * 1000000ull) {
		l->window_start_ns = now;
		l->in_window = 0;
	}
	ok = l->in_window < l->burst;
	if (ok) {
		l->in_window++;
		*suppressed = l->suppressed;
		l->suppressed = 0;
	} else {
		l->suppressed++;
	}
	pthread_mutex_unlock(&l->lock);
	return ok;
}

const char *log_escape(const char *in, char *out, size_t size, int flags)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;

	if (!size)
		return out;
	for (const unsigned char *p = (const unsigned char *)(in ? in : ""); *p; p++) {
		char e[5];
		size_t n;

		if (*p == '\n' || *p == '\r' || *p == '\t') {
			e[0] = '\\';
			e[1] = *p == '\n' ? 'n' : *p == '\r' ? 'r' : 't';
			n = 2;
		} else if (*p < 0x20 || *p == 0x7f) {
			e[0] = '\\';
			e[1] = 'x';
			e[2] = hex[*p >> 4];
			e[3] = hex[*p & 15];
			n = 4;
		} else if ((flags & LOG_ESC_QUOTES) && (*p == '"' || *p == '\\')) {
			e[0] = '\\';
			e[1] = (char)*p;
			n = 2;
		} else {
			e[0] = (char)*p;
			n = 1;
		}
		if (o + n + 1 > size) {
			/* Cut short: mark it, on a whole escape. */
			while (o && o + 4 > size)
				o--;
			if (o + 4 <= size) {
				memcpy(out + o, "...", 3);
				o += 3;
			}
			break;
		}
		memcpy(out + o, e, n);
		o += n;
	}
	out[o] = '\0';
	return out;
}
