/*
 * The configuration file parser (core/daemon/config.c), on real files.
 *
 * The main table has one row per case: the file's text, the result config_load() must
 * return, and either the settings it must produce (a canonical dump of every field that
 * differs from daemon_config_init(), so a failure prints the whole state) or a fragment of
 * the error message, which must also start with the file's path. Every key has valid and
 * invalid rows; comments, blanks, CRLF, quoting, sections, unknown keys, duplicate scalar
 * keys, list limits and numeric overflow have rows too. Further tests cover whole-file
 * errors (missing, directory, too big), that a bad file changes nothing, that a list in the
 * file replaces the caller's, and config_path()'s option/environment order.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "core/base/common.h"
#include "core/daemon/config.h"

struct row {
	const char *name;
	const char *text;
	size_t len;		/* 0: strlen(text); set for texts with NUL bytes */
	int want;		/* 0 or the negative errno */
	const char *dump;	/* want == 0: the settings that differ from the defaults */
	const char *err;	/* want != 0: a fragment the message must contain */
};

static char dir[256];

static void write_file(const char *path, const char *text, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, len), (ssize_t)len);
	close(fd);
}

static void add(char *buf, size_t size, const char *fmt, ...) WD_PRINTF(3, 4);
static void add(char *buf, size_t size, const char *fmt, ...)
{
	size_t n = strlen(buf);
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf + n, size - n, fmt, ap);
	va_end(ap);
}

static void add_ids(char *buf, size_t size, const char *name, const unsigned int *ids, size_t n)
{
	if (!n)
		return;
	add(buf, size, " %s=", name);
	for (size_t i = 0; i < n; i++)
		add(buf, size, "%s%u", i ? "," : "", ids[i]);
}

/* Every setting that differs from the defaults, as "key=value ..." in the keys' order. */
static void dump(const struct daemon_config *c, const struct config_file *cf, char *buf,
		 size_t size)
{
	struct daemon_config d;

	daemon_config_init(&d);
	buf[0] = '\0';
	if (c->n_roots) {
		add(buf, size, " models=");
		for (size_t i = 0; i < c->n_roots; i++)
			add(buf, size, "%s%s", i ? "|" : "", c->roots[i]);
	}
	if (c->scan_at_start != d.scan_at_start)
		add(buf, size, " scan_at_start=%d", c->scan_at_start);
	if (c->state_dir)
		add(buf, size, " state_dir=%s", c->state_dir);
	if (c->socket_path)
		add(buf, size, " socket=%s", c->socket_path);
	if (c->host_budget != d.host_budget)
		add(buf, size, " host_budget=%llu", (unsigned long long)c->host_budget);
	if (c->host_ttl_ns != d.host_ttl_ns)
		add(buf, size, " host_ttl_ns=%llu", (unsigned long long)c->host_ttl_ns);
	if (c->verify != d.verify)
		add(buf, size, " verify=%d", c->verify);
	if (c->host_prefault != d.host_prefault)
		add(buf, size, " host_prefault=%d", c->host_prefault);
	if (c->spin_us != d.spin_us)
		add(buf, size, " spin_us=%u", c->spin_us);
	add_ids(buf, size, "allow_user", c->allow_uids, c->n_allow_uids);
	add_ids(buf, size, "allow_group", c->allow_gids, c->n_allow_gids);
	add_ids(buf, size, "admin_user", c->admin_uids, c->n_admin_uids);
	if (config_has(cf, CONFIG_LOG_LEVEL))
		add(buf, size, " log_level=%d", (int)cf->log_level);
	if (c->metrics_listen)
		add(buf, size, " metrics_listen=%s", c->metrics_listen);
	if (c->device_budget)
		add(buf, size, " device_budget=%llu", (unsigned long long)c->device_budget);
	if (c->device_budget_pct)
		add(buf, size, " device_budget_pct=%u", c->device_budget_pct);
	if (c->quarantine_after != d.quarantine_after)
		add(buf, size, " quarantine_after=%u", c->quarantine_after);
	if (c->pressure_pct != d.pressure_pct)
		add(buf, size, " memory_pressure=%u", c->pressure_pct);
	if (c->pressure_target_pct != d.pressure_target_pct)
		add(buf, size, " memory_pressure_target=%u", c->pressure_target_pct);
	if (c->hello_timeout_ms != d.hello_timeout_ms)
		add(buf, size, " hello_timeout_ms=%u", c->hello_timeout_ms);
	if (c->max_conns_per_uid != d.max_conns_per_uid)
		add(buf, size, " max_connections_per_uid=%u", c->max_conns_per_uid);
	if (c->max_clients_per_uid != d.max_clients_per_uid)
		add(buf, size, " max_clients_per_uid=%u", c->max_clients_per_uid);
	if (c->registry_models != d.registry_models)
		add(buf, size, " registry_models=%u", c->registry_models);
	if (c->registry_tensors != d.registry_tensors)
		add(buf, size, " registry_tensors=%u", c->registry_tensors);
	if (buf[0] == ' ')
		memmove(buf, buf + 1, strlen(buf));
}

/* A list of @n comma-separated copies of @item after "key = ". */
static char *repeat(const char *key, const char *item, int n)
{
	size_t size = strlen(key) + 8 + (size_t)n * (strlen(item) + 2);
	char *s = malloc(size);

	assert_non_null(s);
	snprintf(s, size, "%s = ", key);
	for (int i = 0; i < n; i++)
		add(s, size, "%s%s", i ? ", " : "", item);
	return s;
}

#define NUL_TEXT "spin_us = 1\nmodels = /a\0b\n"
#define X10 "xxxxxxxxxx"
#define X100 X10 X10 X10 X10 X10 X10 X10 X10 X10 X10

static const struct row rows[] = {
	/* Layout: comments, blanks, sections, line endings. */
	{ "empty file", "", 0, 0, "", NULL },
	{ "comments and blanks", "# a comment\n\n   \t\n; another\n   # indented\n", 0, 0, "",
	  NULL },
	{ "section header", "[weightd]\nmodels = /m\n", 0, 0, "models=/m", NULL },
	{ "section with blanks", "  [ weightd ]  \nspin_us = 7\n", 0, 0, "spin_us=7", NULL },
	{ "unknown section", "[metrics]\nlisten = :9464\n", 0, -EINVAL, NULL,
	  ":1: unknown section [metrics]" },
	{ "unterminated section", "[weightd\n", 0, -EINVAL, NULL, ":1: a section header must end" },
	{ "CRLF line ends", "models = /a\r\nspin_us = 5\r\n", 0, 0, "models=/a spin_us=5", NULL },
	{ "tabs around key and value", "\tmodels\t=\t/a\t\n", 0, 0, "models=/a", NULL },
	{ "no blanks around =", "spin_us=3", 0, 0, "spin_us=3", NULL },
	{ "no final newline", "spin_us = 9", 0, 0, "spin_us=9", NULL },
	{ "dash spelling of a key", "host-budget = 1G\n", 0, 0, "host_budget=1073741824", NULL },
	{ "# inside a value is data", "models = /a#b\n", 0, 0, "models=/a#b", NULL },
	{ "no =", "models /a\n", 0, -EINVAL, NULL, ":1: expected \"key = value\"" },
	{ "no key", " = /a\n", 0, -EINVAL, NULL, ":1: expected \"key = value\"" },
	{ "bad key character", "host.budget = 1G\n", 0, -EINVAL, NULL,
	  ":1: expected \"key = value\"" },
	{ "unknown key", "# ok\nfrobnicate = 1\n", 0, -EINVAL, NULL,
	  ":2: frobnicate: unknown key" },
	{ "keys are lower case", "MODELS = /a\n", 0, -EINVAL, NULL, ":1: MODELS: unknown key" },
	{ "overlong key", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa = 1\n", 0, -EINVAL, NULL,
	  ":1: unknown key (names are at most 32 bytes)" },
	{ "placeholder key that does not exist", "metrics_path = /metrics\n", 0, -EINVAL, NULL,
	  ":1: metrics_path: unknown key" },
	{ "metrics_listen without a host before the colon", "metrics_listen = :9464\n", 0,
	  -EINVAL, NULL, ":1: metrics_listen: \":9464\" is not a listen address" },
	{ "NUL byte", NUL_TEXT, sizeof(NUL_TEXT) - 1, -EINVAL, NULL, ":2: NUL byte" },
	{ "error after valid lines names its line", "spin_us = 1\n\n# x\nverify = maybe\n", 0,
	  -EINVAL, NULL, ":4: verify: \"maybe\" is not a boolean" },

	/* Values: quoting and lists. */
	{ "empty value", "models =\n", 0, -EINVAL, NULL, ":1: models: empty value" },
	{ "blank value", "state_dir =   \t\n", 0, -EINVAL, NULL, ":1: state_dir: empty value" },
	{ "list of models", "models = /a, /b\nmodels=/c\n", 0, 0, "models=/a|/b|/c", NULL },
	{ "quoted item with a comma", "models = \"/x,y\" , /z\n", 0, 0, "models=/x,y|/z", NULL },
	{ "quoted escapes", "state_dir = \"/s \\\"q\\\" \\\\\"\n", 0, 0, "state_dir=/s \"q\" \\",
	  NULL },
	{ "quoted trailing blank kept", "state_dir = \"/s \"\n", 0, 0, "state_dir=/s ", NULL },
	{ "quoted leading blank is not absolute", "state_dir = \" /s\"\n", 0, -EINVAL, NULL,
	  ":1: state_dir: \" /s\" is not an absolute path" },
	{ "unterminated quote", "state_dir = \"/s\n", 0, -EINVAL, NULL,
	  ":1: state_dir: unterminated quoted value" },
	{ "bad escape", "state_dir = \"/s\\n\"\n", 0, -EINVAL, NULL,
	  ":1: state_dir: bad escape \\n" },
	{ "text after a quoted scalar", "state_dir = \"/a\", \"/b\"\n", 0, -EINVAL, NULL,
	  ":1: state_dir: unexpected text after the closing quote" },
	{ "empty list item", "models = /a,,/b\n", 0, -EINVAL, NULL, ":1: models: empty value" },
	{ "trailing comma", "models = /a,\n", 0, -EINVAL, NULL, ":1: models: empty value" },
	{ "comma in a scalar is data", "state_dir = /a,b\n", 0, 0, "state_dir=/a,b", NULL },

	/* Every key, valid and invalid. */
	{ "models relative", "models = models\n", 0, -EINVAL, NULL,
	  ":1: models: \"models\" is not an absolute path" },
	{ "scan_at_start no", "scan_at_start = no\n", 0, 0, "scan_at_start=0", NULL },
	{ "scan_at_start OFF", "scan_at_start = OFF\n", 0, 0, "scan_at_start=0", NULL },
	{ "scan_at_start true", "scan_at_start = true\n", 0, 0, "", NULL },
	{ "scan_at_start bad", "scan_at_start = 2\n", 0, -EINVAL, NULL,
	  ":1: scan_at_start: \"2\" is not a boolean" },
	{ "state_dir", "state_dir = /var/lib/weightd\n", 0, 0, "state_dir=/var/lib/weightd", NULL },
	{ "state_dir relative", "state_dir = ./state\n", 0, -EINVAL, NULL,
	  ":1: state_dir: \"./state\" is not an absolute path" },
	{ "socket", "socket = /run/weightd/weightd.sock\n", 0, 0,
	  "socket=/run/weightd/weightd.sock", NULL },
	{ "socket 107 bytes", "socket = /" X100 "xxxxxx\n", 0, 0, "socket=/" X100 "xxxxxx", NULL },
	{ "socket 108 bytes", "socket = /" X100 "xxxxxxx\n", 0, -EINVAL, NULL,
	  ":1: socket: a socket path holds at most 107 bytes, not 108" },
	{ "socket relative", "socket = weightd.sock\n", 0, -EINVAL, NULL,
	  ":1: socket: \"weightd.sock\" is not an absolute path" },
	{ "host_budget G", "host_budget = 64G\n", 0, 0, "host_budget=68719476736", NULL },
	{ "device_budget bytes", "device_budget = 70G\n", 0, 0, "device_budget=75161927680",
	  NULL },
	{ "device_budget percent", "device_budget = 85%\n", 0, 0, "device_budget_pct=85", NULL },
	{ "device_budget 100%", "device-budget = 100%\n", 0, 0, "device_budget_pct=100", NULL },
	{ "device_budget 0%", "device_budget = 0%\n", 0, -EINVAL, NULL,
	  ":1: device_budget: \"0%\" is neither a byte count" },
	{ "device_budget 101%", "device_budget = 101%\n", 0, -EINVAL, NULL,
	  ":1: device_budget: \"101%\" is neither" },
	{ "device_budget junk", "device_budget = 9x%\n", 0, -EINVAL, NULL,
	  ":1: device_budget: \"9x%\" is neither" },
	{ "quarantine_after 5", "quarantine_after = 5\n", 0, 0, "quarantine_after=5", NULL },
	{ "quarantine_after 0 is never", "quarantine-after = 0\n", 0, 0, "quarantine_after=0",
	  NULL },
	{ "quarantine_after 1001", "quarantine_after = 1001\n", 0, -EINVAL, NULL,
	  ":1: quarantine_after: \"1001\" is not a number in 0..1000" },
	{ "memory_pressure off", "memory_pressure = 0\n", 0, 0, "memory_pressure=0", NULL },
	{ "memory_pressure 101", "memory_pressure = 101\n", 0, -EINVAL, NULL,
	  ":1: memory_pressure: \"101\" is not a number in 0..100" },
	{ "memory_pressure_target", "memory_pressure_target = 50\n", 0, 0,
	  "memory_pressure_target=50", NULL },
	{ "memory_pressure_target 0", "memory_pressure_target = 0\n", 0, -EINVAL, NULL,
	  ":1: memory_pressure_target: \"0\" is not a number in 1..100" },
	{ "memory_pressure junk", "memory_pressure = 5%\n", 0, -EINVAL, NULL,
	  ":1: memory_pressure: \"5%\" is not a number" },
	{ "hello_timeout", "hello_timeout = 1500ms\n", 0, 0, "hello_timeout_ms=1500", NULL },
	{ "hello_timeout too short", "hello_timeout = 5ms\n", 0, -EINVAL, NULL,
	  ":1: hello_timeout: \"5ms\" is out of range (10ms..1h)" },
	{ "hello_timeout junk", "hello_timeout = soon\n", 0, -EINVAL, NULL,
	  ":1: hello_timeout: \"soon\" is not a duration" },
	{ "max_connections_per_uid", "max_connections_per_uid = 16\n", 0, 0,
	  "max_connections_per_uid=16", NULL },
	{ "max_clients_per_uid off", "max-clients-per-uid = 0\n", 0, 0, "max_clients_per_uid=0",
	  NULL },
	{ "registry_tensors", "registry_tensors = 2048\n", 0, 0, "registry_tensors=2048", NULL },
	{ "registry_models too small", "registry_models = 8\n", 0, -EINVAL, NULL,
	  ":1: registry_models: \"8\" is not a number in 16..262144" },
	{ "max_clients_per_uid too big", "max_clients_per_uid = 1000001\n", 0, -EINVAL, NULL,
	  ":1: max_clients_per_uid: \"1000001\" is not a number in 0..1000000" },
	{ "host_budget m", "host_budget = 512m\n", 0, 0, "host_budget=536870912", NULL },
	{ "host_budget KiB", "host_budget = 1KiB\n", 0, 0, "host_budget=1024", NULL },
	{ "host_budget plain", "host_budget = 1048576\n", 0, 0, "host_budget=1048576", NULL },
	{ "host_budget 0 is the default", "host_budget = 0\n", 0, 0, "", NULL },
	{ "host_budget bad suffix", "host_budget = 12Q\n", 0, -EINVAL, NULL,
	  ":1: host_budget: \"12Q\" is not a byte count" },
	{ "host_budget negative", "host_budget = -1\n", 0, -EINVAL, NULL,
	  ":1: host_budget: \"-1\" is not a byte count" },
	{ "host_budget overflow with suffix", "host_budget = 16777216T\n", 0, -EINVAL, NULL,
	  ":1: host_budget: \"16777216T\" is out of range" },
	{ "host_budget overflow digits", "host_budget = 18446744073709551616\n", 0, -EINVAL, NULL,
	  ":1: host_budget: \"18446744073709551616\" is out of range" },
	{ "keep_alive seconds", "keep_alive = 90s\n", 0, 0, "host_ttl_ns=90000000000", NULL },
	{ "keep_alive bare number is seconds", "keep_alive = 30\n", 0, 0,
	  "host_ttl_ns=30000000000", NULL },
	{ "keep_alive minutes", "keep_alive = 10m\n", 0, 0, "host_ttl_ns=600000000000", NULL },
	{ "keep_alive hours", "keep_alive = 2h\n", 0, 0, "host_ttl_ns=7200000000000", NULL },
	{ "keep_alive days", "keep_alive = 1d\n", 0, 0, "host_ttl_ns=86400000000000", NULL },
	{ "keep_alive milliseconds", "keep_alive = 500ms\n", 0, 0, "host_ttl_ns=500000000",
	  NULL },
	{ "keep_alive 0 is none", "keep_alive = 0\n", 0, 0, "", NULL },
	{ "keep_alive bad unit", "keep_alive = 5y\n", 0, -EINVAL, NULL,
	  ":1: keep_alive: \"5y\" is not a duration" },
	{ "keep_alive blank before unit", "keep_alive = 5 s\n", 0, -EINVAL, NULL,
	  ":1: keep_alive: \"5 s\" is not a duration" },
	{ "keep_alive overflow", "keep_alive = 18446744073709551615d\n", 0, -EINVAL, NULL,
	  ":1: keep_alive: \"18446744073709551615d\" is out of range" },
	{ "keep_alive a year", "keep_alive = 365d\n", 0, 0, "host_ttl_ns=31536000000000000", NULL },
	{ "keep_alive above a year", "keep_alive = 31536001s\n", 0, -EINVAL, NULL,
	  ":1: keep_alive: \"31536001s\" is out of range (at most 365d)" },
	{ "verify yes", "verify = yes\n", 0, 0, "verify=1", NULL },
	{ "verify 1", "verify = 1\n", 0, 0, "verify=1", NULL },
	{ "verify On", "verify = On\n", 0, 0, "verify=1", NULL },
	{ "verify bad", "verify = y\n", 0, -EINVAL, NULL, ":1: verify: \"y\" is not a boolean" },
	{ "host_prefault yes", "host_prefault = yes\n", 0, 0, "host_prefault=1", NULL },
	{ "host_prefault no", "host_prefault = no\n", 0, 0, "", NULL },
	{ "host_prefault bad", "host_prefault = 2\n", 0, -EINVAL, NULL,
	  ":1: host_prefault: \"2\" is not a boolean" },
	{ "spin_us 0", "spin_us = 0\n", 0, 0, "spin_us=0", NULL },
	{ "spin_us max", "spin_us = 10000000\n", 0, 0, "spin_us=10000000", NULL },
	{ "spin_us above max", "spin_us = 10000001\n", 0, -EINVAL, NULL,
	  ":1: spin_us: \"10000001\" is out of range (0..10000000)" },
	{ "spin_us overflow", "spin_us = 99999999999999999999999\n", 0, -EINVAL, NULL,
	  ":1: spin_us: \"99999999999999999999999\" is out of range" },
	{ "spin_us suffix", "spin_us = 5K\n", 0, -EINVAL, NULL,
	  ":1: spin_us: \"5K\" is not a number of microseconds" },
	{ "spin_us negative", "spin_us = -5\n", 0, -EINVAL, NULL,
	  ":1: spin_us: \"-5\" is not a number" },
	{ "allow_user names and ids", "allow_user = root, 1234\nallow_user = 7\n", 0, 0,
	  "allow_user=0,1234,7", NULL },
	{ "allow_user unknown", "allow_user = no-such-user-wd\n", 0, -EINVAL, NULL,
	  ":1: allow_user: unknown user \"no-such-user-wd\"" },
	{ "allow_group", "allow_group = root, 4321\n", 0, 0, "allow_group=0,4321", NULL },
	{ "allow_group unknown", "allow_group = no-such-group-wd\n", 0, -EINVAL, NULL,
	  ":1: allow_group: unknown group \"no-such-group-wd\"" },
	{ "admin_user", "admin_user = 0\n", 0, 0, "admin_user=0", NULL },
	{ "admin_user unknown", "admin_user = no-such-user-wd\n", 0, -EINVAL, NULL,
	  ":1: admin_user: unknown user" },
	{ "log_level debug", "log_level = debug\n", 0, 0, "log_level=0", NULL },
	{ "log_level off", "log_level = off\n", 0, 0, "log_level=4", NULL },
	{ "log_level bad", "log_level = verbose\n", 0, -EINVAL, NULL,
	  ":1: log_level: \"verbose\" is not a level" },
	{ "metrics_listen port only", "metrics_listen = 9464\n", 0, 0, "metrics_listen=9464",
	  NULL },
	{ "metrics_listen IPv4", "metrics_listen = 127.0.0.1:9464\n", 0, 0,
	  "metrics_listen=127.0.0.1:9464", NULL },
	{ "metrics_listen IPv6", "metrics-listen = [::1]:9464\n", 0, 0,
	  "metrics_listen=[::1]:9464", NULL },
	{ "metrics_listen port 0", "metrics_listen = 0\n", 0, -EINVAL, NULL,
	  ":1: metrics_listen: \"0\" is not a listen address" },
	{ "metrics_listen port too big", "metrics_listen = 127.0.0.1:65536\n", 0, -EINVAL, NULL,
	  ":1: metrics_listen: \"127.0.0.1:65536\" is not a listen address" },
	{ "metrics_listen host name", "metrics_listen = localhost:9464\n", 0, -EINVAL, NULL,
	  ":1: metrics_listen: \"localhost:9464\" is not a listen address" },
	{ "metrics_listen IPv6 without brackets", "metrics_listen = ::1:9464\n", 0, -EINVAL, NULL,
	  ":1: metrics_listen: \"::1:9464\" is not a listen address" },

	/* Duplicates: scalars once, lists repeatable. */
	{ "duplicate scalar", "socket = /a\n\nsocket = /b\n", 0, -EINVAL, NULL,
	  ":3: socket: set twice (first on line 1)" },
	{ "duplicate scalar under two spellings", "host_budget = 1G\nhost-budget = 2G\n", 0,
	  -EINVAL, NULL, ":2: host_budget: set twice (first on line 1)" },
	{ "duplicate scalar with the same value", "verify = yes\nverify = yes\n", 0, -EINVAL, NULL,
	  ":2: verify: set twice" },

	/* A full file, as docs/config.md shows it. */
	{ "full example",
	  "# /etc/weightd/weightd.conf\n[weightd]\nmodels = /srv/models, /data/hf\n"
	  "scan_at_start = yes\nstate_dir = /var/lib/weightd\nsocket = /run/weightd/weightd.sock\n"
	  "host_budget = 64G\nkeep_alive = 30m\nverify = no\nspin_us = 50\nallow_user = root\n"
	  "allow_group = root\nadmin_user = root\nlog_level = info\n", 0, 0,
	  "models=/srv/models|/data/hf state_dir=/var/lib/weightd socket=/run/weightd/weightd.sock "
	  "host_budget=68719476736 host_ttl_ns=1800000000000 allow_user=0 allow_group=0 "
	  "admin_user=0 log_level=1", NULL },
};

static void test_rows(void **state)
{
	char path[320], msg[512], got[2048];
	int failures = 0;

	(void)state;
	snprintf(path, sizeof(path), "%s/weightd.conf", dir);
	for (size_t i = 0; i < ARRAY_SIZE(rows); i++) {
		const struct row *r = &rows[i];
		struct daemon_config cfg;
		struct config_file cf = { 0 };
		int ret;

		write_file(path, r->text, r->len ? r->len : strlen(r->text));
		daemon_config_init(&cfg);
		ret = config_load(path, &cfg, &cf, msg, sizeof(msg));
		dump(&cfg, &cf, got, sizeof(got));
		if (ret != r->want) {
			fprintf(stderr, "row '%s': returned %d, want %d; message \"%s\"; "
				"settings \"%s\"\n", r->name, ret, r->want, msg, got);
			failures++;
		} else if (!ret && strcmp(got, r->dump)) {
			fprintf(stderr, "row '%s': settings\n    \"%s\"\n  want\n    \"%s\"\n",
				r->name, got, r->dump);
			failures++;
		} else if (ret && (strncmp(msg, path, strlen(path)) || !strstr(msg, r->err))) {
			fprintf(stderr, "row '%s': message \"%s\" lacks \"%s\" (or the path)\n",
				r->name, msg, r->err);
			failures++;
		} else if (!ret && msg[0]) {
			fprintf(stderr, "row '%s': success left a message \"%s\"\n", r->name, msg);
			failures++;
		}
		config_file_free(&cf);
	}
	assert_int_equal(failures, 0);
}

/* Lists are capped at what struct daemon_config holds; one more is an error, not a cut. */
static void test_list_limits(void **state)
{
	static const struct {
		const char *key, *item;
		int n, want;
	} cases[] = {
		{ "models", "/m", DAEMON_MAX_ROOTS, 0 },
		{ "models", "/m", DAEMON_MAX_ROOTS + 1, -EINVAL },
		{ "allow_user", "0", DAEMON_MAX_IDS, 0 },
		{ "allow_user", "0", DAEMON_MAX_IDS + 1, -EINVAL },
		{ "allow_group", "0", DAEMON_MAX_IDS + 1, -EINVAL },
		{ "admin_user", "0", DAEMON_MAX_IDS + 1, -EINVAL },
	};
	char path[320], msg[512];

	(void)state;
	snprintf(path, sizeof(path), "%s/limits.conf", dir);
	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		struct daemon_config cfg;
		struct config_file cf = { 0 };
		char *text = repeat(cases[i].key, cases[i].item, cases[i].n);
		int ret;

		write_file(path, text, strlen(text));
		free(text);
		daemon_config_init(&cfg);
		ret = config_load(path, &cfg, &cf, msg, sizeof(msg));
		if (ret != cases[i].want || (ret && !strstr(msg, "too many values")))
			fail_msg("%s x %d: returned %d, want %d (\"%s\")", cases[i].key, cases[i].n,
				 ret, cases[i].want, msg);
		config_file_free(&cf);
	}
}

/* Whole-file errors: the message names the path and says what is wrong with the file. */
static void test_file_errors(void **state)
{
	char missing[320], big[320], msg[512];
	struct daemon_config cfg;
	struct config_file cf = { 0 };
	size_t size = CONFIG_MAX_SIZE + 1;
	char *text = malloc(size);
	int ret;

	(void)state;
	snprintf(missing, sizeof(missing), "%s/missing.conf", dir);
	snprintf(big, sizeof(big), "%s/big.conf", dir);
	daemon_config_init(&cfg);
	ret = config_load(missing, &cfg, &cf, msg, sizeof(msg));
	assert_int_equal(ret, -ENOENT);
	if (strncmp(msg, missing, strlen(missing)) || !strstr(msg, "cannot open"))
		fail_msg("missing file: \"%s\"", msg);
	ret = config_load(dir, &cfg, &cf, msg, sizeof(msg));
	assert_int_equal(ret, -EISDIR);
	assert_non_null(strstr(msg, "is a directory"));

	/* Comment lines only, so that nothing but the size can be wrong with it. */
	assert_non_null(text);
	memset(text, '#', size);
	for (size_t i = 79; i < size; i += 80)
		text[i] = '\n';
	write_file(big, text, size);
	ret = config_load(big, &cfg, &cf, msg, sizeof(msg));
	if (ret != -EFBIG || !strstr(msg, "larger than"))
		fail_msg("big file: %d \"%s\"", ret, msg);
	write_file(big, text, size - 1);
	ret = config_load(big, &cfg, &cf, msg, sizeof(msg));
	if (ret)
		fail_msg("file of exactly CONFIG_MAX_SIZE: %d \"%s\"", ret, msg);
	config_file_free(&cf);
	free(text);

	/* A NULL error buffer of size 0 is allowed. */
	assert_int_equal(config_load(missing, &cfg, &cf, NULL, 0), -ENOENT);
	assert_int_equal(config_load(NULL, &cfg, &cf, msg, sizeof(msg)), -EINVAL);
}

/* A bad file changes nothing; a list in a good file replaces the caller's list. */
static void test_apply_semantics(void **state)
{
	char path[320], msg[512], before_dump[1024], after_dump[1024];
	struct daemon_config cfg, before;
	struct config_file cf = { 0 }, cf_before;
	static const char bad[] = "models = /file\nspin_us = 1\nsocket = /s\nnope = 1\n";
	static const char good[] = "models = /file1, /file2\nallow_user = 5\n";

	(void)state;
	snprintf(path, sizeof(path), "%s/apply.conf", dir);
	daemon_config_init(&cfg);
	cfg.roots[cfg.n_roots++] = "/caller";
	cfg.allow_uids[cfg.n_allow_uids++] = 99;
	cfg.host_budget = 4096;
	before = cfg;
	cf_before = cf;
	write_file(path, bad, sizeof(bad) - 1);
	assert_int_equal(config_load(path, &cfg, &cf, msg, sizeof(msg)), -EINVAL);
	dump(&before, &cf_before, before_dump, sizeof(before_dump));
	dump(&cfg, &cf, after_dump, sizeof(after_dump));
	if (memcmp(&cfg, &before, sizeof(cfg)) || cf.text || cf.set)
		fail_msg("a bad file changed the config: \"%s\" -> \"%s\"", before_dump,
			 after_dump);

	write_file(path, good, sizeof(good) - 1);
	assert_int_equal(config_load(path, &cfg, &cf, msg, sizeof(msg)), 0);
	dump(&cfg, &cf, after_dump, sizeof(after_dump));
	assert_string_equal(after_dump, "models=/file1|/file2 host_budget=4096 allow_user=5");
	/* The strings live in the config_file, not in a buffer of the caller's. */
	assert_true(cfg.roots[0] >= cf.text && cfg.roots[0] < cf.text + sizeof(good));
	assert_true(config_has(&cf, CONFIG_MODELS) && config_has(&cf, CONFIG_ALLOW_USER));
	assert_false(config_has(&cf, CONFIG_SOCKET));
	assert_int_equal(cf.line[CONFIG_ALLOW_USER], 2);
	config_file_free(&cf);
	assert_null(cf.text);
	config_file_free(&cf);
	config_file_free(NULL);
}

static void test_path_and_names(void **state)
{
	static const char *const names[CONFIG_KEY_COUNT] = {
		"models", "scan_at_start", "state_dir", "socket", "host_budget", "host_prefault",
		"keep_alive",
		"verify", "spin_us", "allow_user", "allow_group", "admin_user", "log_level",
		"metrics_listen", "device_budget", "alert_budget_pct", "alert_slow_load_pct",
		"alert_slow_load_history", "alert_error_count", "alert_error_window",
		"alert_pin_ttl", "alert_interval", "quarantine_after", "memory_pressure",
		"memory_pressure_target", "hello_timeout", "max_connections_per_uid",
		"max_clients_per_uid", "registry_models", "registry_tensors",
	};

	(void)state;
	unsetenv(CONFIG_ENV);
	assert_null(config_path(NULL));
	assert_string_equal(config_path("/opt/a.conf"), "/opt/a.conf");
	setenv(CONFIG_ENV, "", 1);
	assert_null(config_path(NULL));
	setenv(CONFIG_ENV, "/etc/weightd/weightd.conf", 1);
	assert_string_equal(config_path(NULL), "/etc/weightd/weightd.conf");
	assert_string_equal(config_path("/opt/a.conf"), "/opt/a.conf");
	unsetenv(CONFIG_ENV);
	for (int k = 0; k < CONFIG_KEY_COUNT; k++)
		assert_string_equal(config_key_name((enum config_key)k), names[k]);
	assert_null(config_key_name(CONFIG_KEY_COUNT));
}

static int setup(void **state)
{
	const char *tmp = getenv("TMPDIR");

	(void)state;
	snprintf(dir, sizeof(dir), "%s/test_config.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
	static const char *const files[] = { "weightd.conf", "limits.conf", "big.conf",
					     "apply.conf" };
	char path[320];

	(void)state;
	for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
		unlink(path);
	}
	return rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rows),
		cmocka_unit_test(test_list_limits),
		cmocka_unit_test(test_file_errors),
		cmocka_unit_test(test_apply_semantics),
		cmocka_unit_test(test_path_and_names),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
