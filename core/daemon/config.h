/*
 * The daemon's configuration file (docs/config.md is the reference for users).
 *
 * Format: UTF-8 text, one setting per line, `key = value`. Blank lines and lines whose first
 * non-blank character is `#` or `;` are ignored (there are no trailing comments: a value runs
 * to the end of its line, so paths may contain `#`). An optional `[weightd]` section header
 * may precede the keys; any other section is an error. Keys are the daemon's long options
 * without the leading dashes, with `_` or `-` between words. A value may be written in
 * double quotes ("...", with \" and \\ as the only escapes) to keep leading or trailing
 * blanks, or a comma in a list. List keys (models, allow_user, allow_group, admin_user) take
 * comma-separated values and may be repeated, each line adding to the list; every other key
 * may appear once.
 *
 * Precedence, lowest first: built-in defaults (daemon_config_init()), then the file, then the
 * command line. A list given on the command line replaces the file's list rather than adding
 * to it, so `--models DIR` means exactly DIR.
 *
 * The parser is strict: an unknown key or section, a malformed line, a bad value, a second
 * setting of a scalar key or a list longer than the daemon holds is an error whose message
 * names the file, the line and the key, and nothing is applied.
 */
#ifndef WD_CORE_CONFIG_H
#define WD_CORE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/daemon/daemon.h"
#include "core/base/log.h"

#define CONFIG_ENV "WEIGHTD_CONFIG"	/* the file to read when --config is not given */
#define CONFIG_MAX_SIZE (1u << 20)	/* a bigger file is refused (-EFBIG) */
#define CONFIG_MAX_UID_LIMIT 1000000u	/* max_connections_per_uid, max_clients_per_uid */
#define CONFIG_MAX_REGISTRY_MODELS (1u << 18)	/* registry_models (x4 components <= 2^20) */
#define CONFIG_MAX_REGISTRY_TENSORS (1u << 26)	/* registry_tensors */

/* The keys, in the order docs/config.md lists them. */
enum config_key {
	CONFIG_MODELS,
	CONFIG_SCAN_AT_START,
	CONFIG_STATE_DIR,
	CONFIG_SOCKET,
	CONFIG_HOST_BUDGET,
	CONFIG_HOST_PREFAULT,
	CONFIG_KEEP_ALIVE,
	CONFIG_VERIFY,
	CONFIG_SPIN_US,
	CONFIG_ALLOW_USER,
	CONFIG_ALLOW_GROUP,
	CONFIG_ADMIN_USER,
	CONFIG_LOG_LEVEL,
	CONFIG_METRICS_LISTEN,
	CONFIG_DEVICE_BUDGET,
	CONFIG_ALERT_BUDGET_PCT,	/* the alert_* keys fill daemon_config.alerts */
	CONFIG_ALERT_SLOW_LOAD_PCT,
	CONFIG_ALERT_SLOW_LOAD_HISTORY,
	CONFIG_ALERT_ERROR_COUNT,
	CONFIG_ALERT_ERROR_WINDOW,
	CONFIG_ALERT_PIN_TTL,
	CONFIG_ALERT_INTERVAL,
	CONFIG_QUARANTINE_AFTER,	/* recovery (core/policy/recovery.h, core/daemon/psi.h) */
	CONFIG_MEMORY_PRESSURE,
	CONFIG_MEMORY_PRESSURE_TARGET,
	CONFIG_HELLO_TIMEOUT,		/* connection limits (docs/security.md) */
	CONFIG_MAX_CONNECTIONS_PER_UID,
	CONFIG_MAX_CLIENTS_PER_UID,
	CONFIG_REGISTRY_MODELS,		/* registry capacity at start */
	CONFIG_REGISTRY_TENSORS,
	CONFIG_KEY_COUNT
};
_Static_assert(CONFIG_KEY_COUNT <= 64, "config_file.set holds one bit per key");

/*
 * What a loaded file holds besides the fields of struct daemon_config, and the memory its
 * strings live in. The daemon_config's string fields (roots, state_dir, socket_path) point
 * into @text, so the struct must outlive every daemon_config it was applied to.
 */
struct config_file {
	char *text;			/* the file's bytes, decoded in place; owned */
	uint64_t set;			/* bit (1 << enum config_key) for each key in the file */
	uint32_t line[CONFIG_KEY_COUNT];	/* the line that first set each key */
	enum log_level log_level;	/* meaningful when CONFIG_LOG_LEVEL is set */
};

/*
 * The configuration file to read: @option (from --config) when not NULL; else $WEIGHTD_CONFIG
 * when set and not empty; else NULL, meaning no file (the daemon runs on defaults and its
 * command line).
 */
const char *config_path(const char *option);

/*
 * Reads the configuration file @path and applies its settings onto @cfg, which holds the
 * defaults (daemon_config_init()); list keys found in the file replace @cfg's lists. @cf
 * receives the storage of the strings @cfg now points to and the settings that have no field
 * in struct daemon_config (log_level); release it with config_file_free() once no
 * daemon_config uses it. User and group names are resolved to ids now (getpwnam, getgrnam).
 * On failure neither @cfg nor @cf is touched, and @err (@errlen bytes, may be 0) holds a
 * message of the form "PATH:LINE: KEY: why" (or "PATH: why" for the file as a whole).
 * Returns 0; -EINVAL for a syntax error, an unknown section or key, a bad or empty value, a
 * duplicate scalar key, a relative path, or too many values of a list key; -EFBIG when the
 * file exceeds CONFIG_MAX_SIZE; -ENOMEM; or the negative errno of open(2), fstat(2) or
 * read(2) (-ENOENT for a missing file, -EISDIR for a directory).
 */
int config_load(const char *path, struct daemon_config *cfg, struct config_file *cf, char *err,
		size_t errlen);

/* Releases what config_load() stored in @cf and zeroes it; a zeroed @cf is fine. */
void config_file_free(struct config_file *cf);

/* The key's name as written in the file ("host_budget"); NULL for an unknown key. */
const char *config_key_name(enum config_key key);

/* True when the loaded file set @key. */
static inline bool config_has(const struct config_file *cf, enum config_key key)
{
	return cf->set & (1ull << key);
}

#endif
