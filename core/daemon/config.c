/*
 * The configuration file parser (core/daemon/config.h has the format; docs/config.md the keys).
 *
 * The file is read whole (it is small: CONFIG_MAX_SIZE at most) into one buffer that becomes
 * the storage of every string the daemon_config points to afterwards: lines are cut with NUL
 * bytes and quoted values decoded in place, which never makes them longer. Settings are
 * applied to a private copy of the daemon_config and copied out only when the whole file is
 * valid, so a bad file leaves the caller's configuration as it was (what a SIGHUP reload
 * needs: a typo must not half-apply).
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/daemon/config.h"
#include "core/tier/devcache.h"
#include "core/daemon/metrics.h"

/* How a key's value is parsed. */
enum kind {
	K_PATH,		/* an absolute path */
	K_SOCKET,	/* an absolute path that fits a sockaddr_un */
	K_BOOL,
	K_BYTES,	/* wd_parse_bytes(): 64G, 512M, 1048576 */
	K_DURATION,	/* 30s, 10m, 2h, 1d, 500ms; a bare number is seconds; <= MAX_KEEP_ALIVE */
	K_MICROS,	/* a decimal count of microseconds, at most MAX_SPIN_US */
	K_LEVEL,	/* debug, info, warn, error, off */
	K_USER,		/* a user name or uid */
	K_GROUP,	/* a group name or gid */
	K_LISTEN,	/* PORT, A.B.C.D:PORT or [IPV6]:PORT: metrics_parse_listen() */
	K_BUDGET,	/* K_BYTES, or a percentage "90%": devcache_parse_budget() */
	K_ALERT_NUM,	/* a decimal count; bounds per key in alert_num() */
	K_ALERT_DUR,	/* a duration as K_DURATION; bounds per key in alert_dur() */
	K_RECOVERY_NUM,	/* a decimal count; bounds per key in recovery_num() */
	K_LIMIT_NUM,	/* a decimal count 0..1000000 (0: no limit); limit_num() */
	K_LIMIT_DUR,	/* a duration, 10ms..1h; the hello timeout */
	K_REGISTRY,	/* a decimal count, 16..the key's maximum; registry capacity */
};

struct keydef {
	const char *name;
	enum kind kind;
	bool list;	/* comma-separated values, the key repeatable */
};

static const struct keydef keys[CONFIG_KEY_COUNT] = {
	[CONFIG_MODELS] = { "models", K_PATH, true },
	[CONFIG_SCAN_AT_START] = { "scan_at_start", K_BOOL, false },
	[CONFIG_STATE_DIR] = { "state_dir", K_PATH, false },
	[CONFIG_SOCKET] = { "socket", K_SOCKET, false },
	[CONFIG_HOST_BUDGET] = { "host_budget", K_BYTES, false },
	[CONFIG_HOST_PREFAULT] = { "host_prefault", K_BOOL, false },
	[CONFIG_KEEP_ALIVE] = { "keep_alive", K_DURATION, false },
	[CONFIG_VERIFY] = { "verify", K_BOOL, false },
	[CONFIG_SPIN_US] = { "spin_us", K_MICROS, false },
	[CONFIG_ALLOW_USER] = { "allow_user", K_USER, true },
	[CONFIG_ALLOW_GROUP] = { "allow_group", K_GROUP, true },
	[CONFIG_ADMIN_USER] = { "admin_user", K_USER, true },
	[CONFIG_LOG_LEVEL] = { "log_level", K_LEVEL, false },
	[CONFIG_METRICS_LISTEN] = { "metrics_listen", K_LISTEN, false },
	[CONFIG_DEVICE_BUDGET] = { "device_budget", K_BUDGET, false },
	[CONFIG_ALERT_BUDGET_PCT] = { "alert_budget_pct", K_ALERT_NUM, false },
	[CONFIG_ALERT_SLOW_LOAD_PCT] = { "alert_slow_load_pct", K_ALERT_NUM, false },
	[CONFIG_ALERT_SLOW_LOAD_HISTORY] = { "alert_slow_load_history", K_ALERT_NUM, false },
	[CONFIG_ALERT_ERROR_COUNT] = { "alert_error_count", K_ALERT_NUM, false },
	[CONFIG_ALERT_ERROR_WINDOW] = { "alert_error_window", K_ALERT_DUR, false },
	[CONFIG_ALERT_PIN_TTL] = { "alert_pin_ttl", K_ALERT_DUR, false },
	[CONFIG_ALERT_INTERVAL] = { "alert_interval", K_ALERT_DUR, false },
	[CONFIG_QUARANTINE_AFTER] = { "quarantine_after", K_RECOVERY_NUM, false },
	[CONFIG_MEMORY_PRESSURE] = { "memory_pressure", K_RECOVERY_NUM, false },
	[CONFIG_MEMORY_PRESSURE_TARGET] = { "memory_pressure_target", K_RECOVERY_NUM, false },
	[CONFIG_HELLO_TIMEOUT] = { "hello_timeout", K_LIMIT_DUR, false },
	[CONFIG_MAX_CONNECTIONS_PER_UID] = { "max_connections_per_uid", K_LIMIT_NUM, false },
	[CONFIG_MAX_CLIENTS_PER_UID] = { "max_clients_per_uid", K_LIMIT_NUM, false },
	[CONFIG_REGISTRY_MODELS] = { "registry_models", K_REGISTRY, false },
	[CONFIG_REGISTRY_TENSORS] = { "registry_tensors", K_REGISTRY, false },
};

/* The same bound as weightd --spin-us: ten seconds of spinning is already absurd. */
#define MAX_SPIN_US 10000000ull
/* The same bound as weightd --keep-alive: a year. */
#define MAX_KEEP_ALIVE_NS (365ull * 86400 * 1000000000)
#define KEY_MAX 32u

/* One file being parsed. */
struct parser {
	const char *path;
	unsigned int line;
	const char *key;	/* the key of the current line, for messages; NULL before it */
	char *err;
	size_t errlen;
	struct daemon_config cfg;	/* the working copy, committed on success */
	struct config_file cf;
};

/* Formats "PATH:LINE: KEY: why" into the caller's buffer and returns @ret. */
static int WD_PRINTF(3, 4) fail(struct parser *p, int ret, const char *fmt, ...)
{
	size_t n = 0;
	va_list ap;
	int k;

	if (!p->errlen)
		return ret;
	if (p->line && p->key)
		k = snprintf(p->err, p->errlen, "%s:%u: %s: ", p->path, p->line, p->key);
	else if (p->line)
		k = snprintf(p->err, p->errlen, "%s:%u: ", p->path, p->line);
	else
		k = snprintf(p->err, p->errlen, "%s: ", p->path);
	if (k > 0)
		n = (size_t)k < p->errlen ? (size_t)k : p->errlen - 1;
	va_start(ap, fmt);
	vsnprintf(p->err + n, p->errlen - n, fmt, ap);
	va_end(ap);
	return ret;
}

static bool blank(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f';
}

static char *skip_blanks(char *s)
{
	while (blank(*s))
		s++;
	return s;
}

/* Cuts trailing blanks off the string that starts at @s and ends before @end. */
static void trim_end(char *s, char *end)
{
	while (end > s && blank(end[-1]))
		end--;
	*end = '\0';
}

/*
 * Takes the next value from *@cur: a quoted string (decoded in place) or the text up to the
 * next comma (lists) or the end of the line (scalars), without surrounding blanks. Leaves
 * *@cur after the separating comma, or at the terminating NUL, and sets *@more when a comma
 * was found (so another value must follow). Returns 0 and sets *@out, or -EINVAL (the
 * message says why).
 */
static int next_value(struct parser *p, char **cur, bool list, char **out, bool *more)
{
	char *s = skip_blanks(*cur), *w, *e;

	if (*s == '"') {
		char *r = s + 1;

		w = s;
		for (;;) {
			if (!*r)
				return fail(p, -EINVAL, "unterminated quoted value");
			if (*r == '"')
				break;
			if (*r == '\\') {
				if (r[1] != '"' && r[1] != '\\')
					return fail(p, -EINVAL, "bad escape \\%c in a quoted value "
					    "(only \\\" and \\\\ exist)", r[1] ? r[1] : ' ');
				r++;
			}
			*w++ = *r++;
		}
		e = skip_blanks(r + 1);
		if (*e && !(list && *e == ','))
			return fail(p, -EINVAL, "unexpected text after the closing quote: %s", e);
		*w = '\0';
		*more = *e == ',';
		*cur = *e ? e + 1 : e;
		*out = s;
		return 0;
	}
	e = list ? strchrnul(s, ',') : s + strlen(s);
	*more = *e == ',';
	*cur = *e ? e + 1 : e;
	trim_end(s, e);
	if (!*s)
		return fail(p, -EINVAL, "empty value");
	*out = s;
	return 0;
}

static int parse_bool(const char *s, bool *out)
{
	static const char *const yes[] = { "true", "yes", "on", "1" };
	static const char *const no[] = { "false", "no", "off", "0" };

	for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
		if (!strcasecmp(s, yes[i]) || !strcasecmp(s, no[i])) {
			*out = !strcasecmp(s, yes[i]);
			return 0;
		}
	}
	return -EINVAL;
}

/* A decimal number with no sign, no blanks and no suffix; -ERANGE past UINT64_MAX. */
static int parse_u64(const char *s, const char **end, uint64_t *out)
{
	uint64_t v = 0;

	if (!isdigit((unsigned char)*s))
		return -EINVAL;
	for (; isdigit((unsigned char)*s); s++) {
		unsigned int d = (unsigned int)(*s - '0');

		if (v > (UINT64_MAX - d) / 10)
			return -ERANGE;
		v = v * 10 + d;
	}
	*end = s;
	*out = v;
	return 0;
}

static int parse_duration(const char *s, uint64_t *ns)
{
	static const struct {
		const char *unit;
		uint64_t ns;
	} units[] = {
		{ "", 1000000000ull }, { "ms", 1000000ull }, { "s", 1000000000ull },
		{ "m", 60000000000ull }, { "h", 3600000000000ull }, { "d", 86400000000000ull },
	};
	const char *end;
	uint64_t v;
	int ret = parse_u64(s, &end, &v);

	if (ret)
		return ret;
	for (size_t i = 0; i < ARRAY_SIZE(units); i++) {
		if (strcmp(end, units[i].unit))
			continue;
		if (v > UINT64_MAX / units[i].ns)
			return -ERANGE;
		*ns = v * units[i].ns;
		return 0;
	}
	return -EINVAL;
}

static int parse_level(const char *s, enum log_level *out)
{
	static const char *const names[] = { "debug", "info", "warn", "error", "off" };

	for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
		if (!strcmp(s, names[i])) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	return -EINVAL;
}

/* Appends @id to a list of @n entries (at most DAEMON_MAX_IDS). */
static int append_id(struct parser *p, unsigned int *list, size_t *n, unsigned int id)
{
	if (*n == DAEMON_MAX_IDS)
		return fail(p, -EINVAL, "too many values (at most %u)", DAEMON_MAX_IDS);
	list[(*n)++] = id;
	return 0;
}

/* An alert_* count: percentages 0..100 (0 turns the alert off), a history 1..1000. */
static int alert_num(struct parser *p, enum config_key k, const char *v)
{
	struct alert_config *a = &p->cfg.alerts;
	uint64_t max = k == CONFIG_ALERT_SLOW_LOAD_HISTORY ? ALERT_HISTORY_MAX :
		       k == CONFIG_ALERT_ERROR_COUNT ? UINT32_MAX : 100;
	uint64_t min = k == CONFIG_ALERT_SLOW_LOAD_HISTORY ? 1 : 0;
	const char *end;
	uint64_t u;
	int ret = parse_u64(v, &end, &u);

	if (ret || *end || u < min || u > max)
		return fail(p, -EINVAL, "\"%s\" is not a number in %llu..%llu", v,
			    (unsigned long long)min, (unsigned long long)max);
	if (k == CONFIG_ALERT_BUDGET_PCT)
		a->budget_pct = (uint32_t)u;
	else if (k == CONFIG_ALERT_SLOW_LOAD_PCT)
		a->slow_load_pct = (uint32_t)u;
	else if (k == CONFIG_ALERT_SLOW_LOAD_HISTORY)
		a->slow_load_history = (uint32_t)u;
	else
		a->error_count = (uint32_t)u;
	return 0;
}

/* An alert_* duration: the interval at least 10ms, the pin TTL 0 (off) or more. */
static int alert_dur(struct parser *p, enum config_key k, const char *v)
{
	struct alert_config *a = &p->cfg.alerts;
	uint64_t u;
	int ret = parse_duration(v, &u);

	if (ret == -ERANGE || (!ret && u > MAX_KEEP_ALIVE_NS))
		return fail(p, -EINVAL, "\"%s\" is out of range (at most 365d)", v);
	if (ret)
		return fail(p, -EINVAL, "\"%s\" is not a duration (N[ms|s|m|h|d])", v);
	if ((k == CONFIG_ALERT_INTERVAL && u < ALERT_MIN_INTERVAL_NS) ||
	    (k == CONFIG_ALERT_ERROR_WINDOW && !u))
		return fail(p, -EINVAL, "\"%s\" is too short (at least %s)", v,
			    k == CONFIG_ALERT_INTERVAL ? "10ms" : "1ms");
	if (k == CONFIG_ALERT_INTERVAL)
		a->interval_ns = u;
	else if (k == CONFIG_ALERT_ERROR_WINDOW)
		a->error_window_ns = u;
	else
		a->pin_ttl_ns = u;
	return 0;
}

/*
 * A recovery count: quarantine_after 0 (never) to 1000 failures; memory_pressure 0 (off) to
 * 100 percent of PSI "some avg10"; memory_pressure_target 1 to 100 percent of the budget.
 */
static int recovery_num(struct parser *p, enum config_key k, const char *v)
{
	uint64_t max = k == CONFIG_QUARANTINE_AFTER ? 1000 : 100;
	uint64_t min = k == CONFIG_MEMORY_PRESSURE_TARGET ? 1 : 0;
	const char *end;
	uint64_t u;
	int ret = parse_u64(v, &end, &u);

	if (ret || *end || u < min || u > max)
		return fail(p, -EINVAL, "\"%s\" is not a number in %llu..%llu", v,
			    (unsigned long long)min, (unsigned long long)max);
	if (k == CONFIG_QUARANTINE_AFTER)
		p->cfg.quarantine_after = (uint32_t)u;
	else if (k == CONFIG_MEMORY_PRESSURE)
		p->cfg.pressure_pct = (uint32_t)u;
	else
		p->cfg.pressure_target_pct = (uint32_t)u;
	return 0;
}

/* A per-uid connection or client limit: 0 (none) to CONFIG_MAX_UID_LIMIT. */
static int limit_num(struct parser *p, enum config_key k, const char *v)
{
	const char *end;
	uint64_t u;
	int ret = parse_u64(v, &end, &u);

	if (ret || *end || u > CONFIG_MAX_UID_LIMIT)
		return fail(p, -EINVAL, "\"%s\" is not a number in 0..%u (0: no limit)", v,
			    CONFIG_MAX_UID_LIMIT);
	if (k == CONFIG_MAX_CONNECTIONS_PER_UID)
		p->cfg.max_conns_per_uid = (uint32_t)u;
	else
		p->cfg.max_clients_per_uid = (uint32_t)u;
	return 0;
}

/* A registry capacity: 16 to CONFIG_MAX_REGISTRY_MODELS or _TENSORS. */
static int registry_num(struct parser *p, enum config_key k, const char *v)
{
	uint64_t max = k == CONFIG_REGISTRY_MODELS ? CONFIG_MAX_REGISTRY_MODELS :
		       CONFIG_MAX_REGISTRY_TENSORS;
	const char *end;
	uint64_t u;
	int ret = parse_u64(v, &end, &u);

	if (ret || *end || u < 16 || u > max)
		return fail(p, -EINVAL, "\"%s\" is not a number in 16..%llu", v,
			    (unsigned long long)max);
	if (k == CONFIG_REGISTRY_MODELS)
		p->cfg.registry_models = (uint32_t)u;
	else
		p->cfg.registry_tensors = (uint32_t)u;
	return 0;
}

/* The hello timeout: 10ms to an hour. */
static int limit_dur(struct parser *p, const char *v)
{
	uint64_t u;
	int ret = parse_duration(v, &u);

	if (ret == -EINVAL)
		return fail(p, -EINVAL, "\"%s\" is not a duration (N[ms|s|m|h|d])", v);
	if (ret || u < 10000000ull || u > 3600000000000ull)
		return fail(p, -EINVAL, "\"%s\" is out of range (10ms..1h)", v);
	p->cfg.hello_timeout_ms = (uint32_t)(u / 1000000);
	return 0;
}

/* Parses one value @v of key @k and stores it in the working copy. */
static int apply(struct parser *p, enum config_key k, char *v)
{
	struct daemon_config *c = &p->cfg;
	const char *end;
	uint64_t u;
	uid_t uid;
	gid_t gid;
	bool b;
	int ret;

	switch (keys[k].kind) {
	case K_PATH:
	case K_SOCKET:
		/* The daemon chdir()s to / when it detaches: a relative path would move. */
		if (v[0] != '/')
			return fail(p, -EINVAL, "\"%s\" is not an absolute path", v);
		if (strlen(v) >= PATH_MAX)
			return fail(p, -EINVAL, "path longer than %d bytes", PATH_MAX - 1);
		if (keys[k].kind == K_SOCKET &&
		    strlen(v) >= sizeof(((struct sockaddr_un *)NULL)->sun_path))
			return fail(p, -EINVAL, "a socket path holds at most %zu bytes, not %zu",
				    sizeof(((struct sockaddr_un *)NULL)->sun_path) - 1, strlen(v));
		if (k == CONFIG_MODELS) {
			if (c->n_roots == DAEMON_MAX_ROOTS)
				return fail(p, -EINVAL, "too many values (at most %u)",
					    DAEMON_MAX_ROOTS);
			c->roots[c->n_roots++] = v;
		} else if (k == CONFIG_STATE_DIR) {
			c->state_dir = v;
		} else {
			c->socket_path = v;
		}
		return 0;
	case K_BOOL:
		if (parse_bool(v, &b))
			return fail(p, -EINVAL, "\"%s\" is not a boolean (true/false, yes/no, "
				    "on/off, 1/0)", v);
		if (k == CONFIG_VERIFY)
			c->verify = b;
		else if (k == CONFIG_HOST_PREFAULT)
			c->host_prefault = b;
		else
			c->scan_at_start = b;
		return 0;
	case K_BYTES:
		ret = wd_parse_bytes(v, &u);
		if (ret == -ERANGE)
			return fail(p, -EINVAL, "\"%s\" is out of range (at most 2^64-1 bytes)", v);
		if (ret)
			return fail(p, -EINVAL, "\"%s\" is not a byte count (BYTES[K|M|G|T])", v);
		c->host_budget = u;
		return 0;
	case K_BUDGET: {
		unsigned int pct;

		ret = devcache_parse_budget(v, &u, &pct);
		if (ret)
			return fail(p, -EINVAL, "\"%s\" is neither a byte count (BYTES[K|M|G|T]) nor "
				    "a percentage (1%%..100%%)", v);
		c->device_budget = u;
		c->device_budget_pct = pct;
		return 0;
	}
	case K_DURATION:
		ret = parse_duration(v, &u);
		if (ret == -ERANGE || (!ret && u > MAX_KEEP_ALIVE_NS))
			return fail(p, -EINVAL, "\"%s\" is out of range (at most 365d)", v);
		if (ret)
			return fail(p, -EINVAL, "\"%s\" is not a duration (N[ms|s|m|h|d])", v);
		c->host_ttl_ns = u;
		return 0;
	case K_MICROS:
		ret = parse_u64(v, &end, &u);
		if (ret == -ERANGE || (!ret && !*end && u > MAX_SPIN_US))
			return fail(p, -EINVAL, "\"%s\" is out of range (0..%llu)", v, MAX_SPIN_US);
		if (ret || *end)
			return fail(p, -EINVAL, "\"%s\" is not a number of microseconds", v);
		c->spin_us = (uint32_t)u;
		return 0;
	case K_LEVEL:
		if (parse_level(v, &p->cf.log_level))
			return fail(p, -EINVAL, "\"%s\" is not a level (debug, info, warn, error, "
				    "off)", v);
		return 0;
	case K_USER:
		if (daemon_parse_user(v, &uid))
			return fail(p, -EINVAL, "unknown user \"%s\"", v);
		if (k == CONFIG_ALLOW_USER)
			return append_id(p, c->allow_uids, &c->n_allow_uids, uid);
		return append_id(p, c->admin_uids, &c->n_admin_uids, uid);
	case K_GROUP:
		if (daemon_parse_group(v, &gid))
			return fail(p, -EINVAL, "unknown group \"%s\"", v);
		return append_id(p, c->allow_gids, &c->n_allow_gids, gid);
	case K_LISTEN: {
		struct sockaddr_storage ss;
		socklen_t len;

		if (metrics_parse_listen(v, &ss, &len))
			return fail(p, -EINVAL, "\"%s\" is not a listen address (PORT, "
				    "A.B.C.D:PORT or [IPV6]:PORT, port 1..65535)", v);
		c->metrics_listen = v;
		return 0;
	}
	case K_ALERT_NUM:
		return alert_num(p, k, v);
	case K_RECOVERY_NUM:
		return recovery_num(p, k, v);
	case K_ALERT_DUR:
		return alert_dur(p, k, v);
	case K_LIMIT_NUM:
		return limit_num(p, k, v);
	case K_LIMIT_DUR:
		return limit_dur(p, v);
	case K_REGISTRY:
		return registry_num(p, k, v);
	}
	return fail(p, -EINVAL, "internal error: key without a kind");
}

/* Empties the working copy's list for list key @k (the file replaces the defaults). */
static void clear_list(struct daemon_config *c, enum config_key k)
{
	switch (k) {
	case CONFIG_MODELS: c->n_roots = 0; break;
	case CONFIG_ALLOW_USER: c->n_allow_uids = 0; break;
	case CONFIG_ALLOW_GROUP: c->n_allow_gids = 0; break;
	case CONFIG_ADMIN_USER: c->n_admin_uids = 0; break;
	default: break;
	}
}

/* Parses one line (NUL-terminated, no newline). */
static int parse_line(struct parser *p, char *s)
{
	char name[KEY_MAX + 1], *cur;
	size_t n = 0;
	int k = -1, ret;

	p->key = NULL;
	s = skip_blanks(s);
	trim_end(s, s + strlen(s));
	if (!*s || *s == '#' || *s == ';')
		return 0;
	if (*s == '[') {
		size_t len = strlen(s);

		if (s[len - 1] != ']')
			return fail(p, -EINVAL, "a section header must end with ']'");
		s[len - 1] = '\0';
		s = skip_blanks(s + 1);
		trim_end(s, s + strlen(s));
		if (strcmp(s, "weightd"))
			return fail(p, -EINVAL, "unknown section [%s] (only [weightd] exists)", s);
		return 0;
	}
	for (cur = s; isalnum((unsigned char)*cur) || *cur == '_' || *cur == '-'; cur++) {
		if (n == KEY_MAX)
			return fail(p, -EINVAL, "unknown key (names are at most %u bytes)",
				    KEY_MAX);
		name[n++] = *cur == '-' ? '_' : *cur;
	}
	name[n] = '\0';
	cur = skip_blanks(cur);
	if (!n || *cur != '=')
		return fail(p, -EINVAL, "expected \"key = value\", found \"%s\"", s);
	for (int i = 0; i < CONFIG_KEY_COUNT; i++)
		if (!strcmp(name, keys[i].name))
			k = i;
	p->key = k < 0 ? name : keys[k].name;
	if (k < 0)
		return fail(p, -EINVAL, "unknown key");
	if (config_has(&p->cf, (enum config_key)k) && !keys[k].list)
		return fail(p, -EINVAL, "set twice (first on line %u)", p->cf.line[k]);
	if (!config_has(&p->cf, (enum config_key)k)) {
		p->cf.set |= 1ull << k;
		p->cf.line[k] = p->line;
		clear_list(&p->cfg, (enum config_key)k);
	}
	cur++;
	for (bool more = true; more;) {
		char *v = NULL;

		if ((ret = next_value(p, &cur, keys[k].list, &v, &more)) ||
		    (ret = apply(p, (enum config_key)k, v)))
			return ret;
	}
	return 0;
}

/* Reads the whole file into a NUL-terminated buffer of at most CONFIG_MAX_SIZE bytes. */
static int read_file(struct parser *p, char **out, size_t *len)
{
	size_t cap = 4096, n = 0;
	struct stat st;
	char *buf;
	int fd, ret = 0;

	fd = open(p->path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fail(p, -errno, "cannot open: %s", strerror(errno));
	if (fstat(fd, &st) < 0) {
		ret = fail(p, -errno, "cannot stat: %s", strerror(errno));
		goto out;
	}
	if (S_ISDIR(st.st_mode)) {
		ret = fail(p, -EISDIR, "is a directory, not a configuration file");
		goto out;
	}
	/* A pipe or /dev/fd reports size 0, so the loop grows the buffer as it reads. */
	if (S_ISREG(st.st_mode) && st.st_size > 0 && (uint64_t)st.st_size <= CONFIG_MAX_SIZE)
		cap = (size_t)st.st_size + 1;
	buf = malloc(cap);
	if (!buf) {
		ret = fail(p, -ENOMEM, "out of memory");
		goto out;
	}
	for (;;) {
		ssize_t r;

		/* Room for CONFIG_MAX_SIZE + 1 bytes and the NUL, to notice a bigger file. */
		if (n + 1 == cap) {
			size_t ncap = cap * 2 > CONFIG_MAX_SIZE + 2 ? CONFIG_MAX_SIZE + 2 : cap * 2;
			char *nb = n > CONFIG_MAX_SIZE ? NULL : realloc(buf, ncap);

			if (!nb) {
				free(buf);
				ret = n > CONFIG_MAX_SIZE ?
					fail(p, -EFBIG, "larger than %u bytes", CONFIG_MAX_SIZE) :
					fail(p, -ENOMEM, "out of memory");
				goto out;
			}
			buf = nb;
			cap = ncap;
		}
		r = read(fd, buf + n, cap - 1 - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			free(buf);
			ret = fail(p, -errno, "cannot read: %s", strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	if (n > CONFIG_MAX_SIZE) {
		free(buf);
		ret = fail(p, -EFBIG, "larger than %u bytes", CONFIG_MAX_SIZE);
		goto out;
	}
	buf[n] = '\0';
	*out = buf;
	*len = n;
out:
	close(fd);
	return ret;
}

const char *config_path(const char *option)
{
	const char *env;

	if (option)
		return option;
	env = getenv(CONFIG_ENV);
	return env && *env ? env : NULL;
}

int config_load(const char *path, struct daemon_config *cfg, struct config_file *cf, char *err,
		size_t errlen)
{
	struct parser p = { .path = path ? path : "(null)", .err = err, .errlen = errlen };
	char *text = NULL, *s, *nul;
	size_t len = 0;
	int ret;

	if (errlen)
		err[0] = '\0';
	if (!path || !cfg || !cf)
		return fail(&p, -EINVAL, "no file or configuration given");
	if ((ret = read_file(&p, &text, &len)))
		return ret;
	p.cfg = *cfg;
	p.cf.text = text;
	/* A NUL byte would end a line early and hide the rest of it: refuse the file. */
	nul = memchr(text, '\0', len);
	if (nul) {
		p.line = 1;
		for (const char *c = text; c < nul; c++)
			p.line += *c == '\n';
		ret = fail(&p, -EINVAL, "NUL byte in the file");
		goto fail;
	}
	for (s = text; *s;) {
		char *nl = strchrnul(s, '\n');
		bool last = !*nl;

		*nl = '\0';
		p.line++;
		if ((ret = parse_line(&p, s)))
			goto fail;
		s = last ? nl : nl + 1;
	}
	*cfg = p.cfg;
	*cf = p.cf;
	return 0;
fail:
	free(text);
	return ret;
}

void config_file_free(struct config_file *cf)
{
	if (!cf)
		return;
	free(cf->text);
	*cf = (struct config_file){ 0 };
}

const char *config_key_name(enum config_key key)
{
	return (unsigned int)key < CONFIG_KEY_COUNT ? keys[key].name : NULL;
}
