/*
 * weightctl internals: the verb table's signature and the helpers verbs share.
 * Each verb lives in cmd/ctl_<verb>.c (tensor-data in ctl_tensor_data.c; the two largest
 * also in a second file with a private header: ctl_top_render.c, ctl_bench_report.c), parses
 * its own options (every verb has --help), calls the library, and formats the result. The files that hold no verb hold what several share:
 * ctl_common.c (every verb), ctl_catalog.c (the verbs that read the catalog) and
 * ctl_daemon.c (the verbs that talk to a running daemon); this header declares them.
 * Exit codes: 0 success, 1 the operation failed or found invalid input, 2 usage error.
 */
#ifndef WD_CMD_CTL_H
#define WD_CMD_CTL_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#define CTL_OK 0
#define CTL_FAIL 1
#define CTL_USAGE 2

struct weightd;

/* Where the catalog a verb reads comes from (ctl_catalog_dir()). */
enum ctl_cat_source {
	CTL_CAT_NONE = 0,	/* not chosen yet */
	CTL_CAT_OPTION,		/* --state-dir on the command line */
	CTL_CAT_DAEMON,		/* the running daemon's (its INFO reply names its state dir) */
	CTL_CAT_STATE_DIR,	/* no daemon answers: $WEIGHTD_STATE_DIR, XDG, ~/.local/state */
};

struct ctl {
	const char *state_dir_opt; /* --state-dir, given anywhere on the command line */
	char state_dir[4096];	   /* resolved by ctl_state_dir() */
	/* The catalog verbs' catalog, chosen once by ctl_catalog_dir(). */
	enum ctl_cat_source cat_source;
	char cat_dir[4096];
	char cat_socket[108];	/* the socket asked (and, with CTL_CAT_DAEMON, answering) */
	int cat_pid;		/* the daemon's pid with CTL_CAT_DAEMON */
	struct weightd *w;	/* the daemon's handle with CTL_CAT_DAEMON, detached at exit */
};

struct ctl_verb {
	const char *name;
	int (*run)(struct ctl *c, int argc, char **argv); /* argv[0] is the verb */
	const char *summary;
};

/* Resolves (and creates) the state directory; prints the error and returns NULL on failure. */
const char *ctl_state_dir(struct ctl *c);

/*
 * The state directory whose catalog the catalog verbs (ls, info, meta, scan, history, bench)
 * read: --state-dir when given on the command line; else, whenever a daemon answers on
 * @socket (NULL: $WEIGHTD_SOCKET, else the per-user default), the daemon's own (it says
 * where in its INFO reply), so that `ls` shows what the daemon serves; else, when none
 * answers, ctl_state_dir(). Unless @quiet, says on stderr which one it is. A daemon whose
 * catalog this user may not open (a root daemon's, say), or that refuses this user, is an
 * error with the way out in the message, not a silent switch to another catalog.
 * Returns the directory, or NULL after printing why.
 */
const char *ctl_catalog_dir(struct ctl *c, const char *verb, const char *socket, bool quiet);

/* {"source": "daemon"|"state_dir"|"option", "path": DIR/catalog.db[, "socket", "pid"]}:
 * the choice ctl_catalog_dir() made, for a verb's --json (a jansson json_t *). */
struct json_t *ctl_catalog_json(const struct ctl *c);

/* Releases what ctl_catalog_dir() holds (the daemon handle). */
void ctl_done(struct ctl *c);

/* Prints @j as one compact line on stdout and releases it (a verb's --json output). */
void ctl_print_json(struct json_t *j);

/* Prints "weightctl VERB: <msg>" to stderr. */
void ctl_err(const char *verb, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/*
 * @s made safe to print on a terminal: control characters, quotes and backslashes escaped
 * (log_escape()). Every name from disk or from the daemon that human output shows goes
 * through this; --json output is escaped by jansson instead. The result lives until eight
 * more calls on this thread.
 */
const char *ctl_esc(const char *s);

/*
 * A progress line on stderr (only when stderr is a terminal, or when forced with
 * $WEIGHTD_PROGRESS=1): "label  done/total  rate  ETA", redrawn in place at most
 * 10 times a second. @unit_bytes chooses between byte units (GB/s) and plain counts.
 */
struct ctl_progress {
	const char *label;
	bool unit_bytes;
	bool enabled;
	uint64_t start_ns;
	uint64_t last_ns;
};
void ctl_progress_begin(struct ctl_progress *p, const char *label, bool unit_bytes);
void ctl_progress_update(struct ctl_progress *p, uint64_t done, uint64_t total);
void ctl_progress_end(struct ctl_progress *p, uint64_t done, uint64_t total);

/* Formats @bytes as "1.23 GiB" into @buf. */
const char *ctl_human_bytes(uint64_t bytes, char *buf, size_t size);

/* ---- the verbs that read the catalog (cmd/ctl_catalog.c) -------------------------- */

/*
 * Parses the common "--json / --socket / --help" options; returns -1 to go on, else an exit
 * code.
 */
int ctl_parse_simple(int argc, char **argv, bool *json, const char **socket,
		     void (*usage)(FILE *));

struct catalog;
/* The catalog ctl_catalog_dir() chooses (the running daemon's, else the state dir's), opened;
 * NULL after printing why. */
struct catalog *ctl_open_catalog(struct ctl *c, const char *verb, const char *socket,
				 bool json);

struct st_kv;
struct catalog_model;
/* Key/value pairs (a model's metadata) as one JSON object. */
struct json_t *ctl_kv_json(const struct st_kv *kv, size_t n);
/* A catalog model as JSON (ls, info): its fields, bytes by dtype, components, metadata, and
 * with @with_files its files. */
struct json_t *ctl_model_json(const struct catalog_model *m, bool with_files);

/* ---- the verbs that talk to a running daemon (cmd/ctl_daemon.c) -------------------- */

/* Options every daemon verb shares, plus the ones only some use. */
struct ctl_dopts {
	const char *socket;
	const char *component;
	unsigned int tier;
	bool json;
	bool hold;
	bool all;
	bool pin;
	unsigned int dtype;
	const char *prefix;
};

/* How many GPUs status and ps list. */
#define CTL_GPU_LIST_MAX 16

/*
 * Parses the options of a daemon verb. @extra lists which of --tier, --component, --hold,
 * --all, --pin, --dtype, --prefix the verb takes. Returns -1 to go on (optind at the first
 * operand), else an exit code.
 */
int ctl_dparse(int argc, char **argv, struct ctl_dopts *o, const char *extra,
	       void (*usage)(FILE *));

/* -1 when exactly one operand (MODEL) follows the options, else CTL_USAGE after saying so. */
int ctl_one_model(int argc, char **argv, void (*usage)(FILE *));

/*
 * Attaches to the daemon. When none runs, says so in the words an operator needs (and as
 * {"daemon": false, ...} with --json) and returns NULL.
 */
struct weightd *ctl_open_daemon(const char *verb, const struct ctl_dopts *o);

/* Reports a failed call (text on stderr, and an error object with --json); CTL_FAIL. */
int ctl_failed(const char *verb, const struct ctl_dopts *o, int ret);

/* The number of models the registry publishes. */
int ctl_count_models(struct weightd *w);

/* {"ok": true, "verb", "model", "component", "tier"}: a target verb's --json answer. */
struct json_t *ctl_target_json(const char *verb, const char *model, const struct ctl_dopts *o);

/* Waits for SIGINT/SIGTERM (handled from here on), or for the daemon to hang up. Returns
 * true on a signal. */
bool ctl_hold(struct weightd *w);

/* ---- the verbs, one file each -------------------------------------------------------- */

int ctl_scan(struct ctl *c, int argc, char **argv);
/* `weightctl scan --daemon`: SCAN through the daemon at @socket (NULL: the default). */
int ctl_scan_daemon(const char *socket, const char *dir, bool json);
int ctl_ls(struct ctl *c, int argc, char **argv);
int ctl_info(struct ctl *c, int argc, char **argv);
int ctl_validate(struct ctl *c, int argc, char **argv);
int ctl_meta(struct ctl *c, int argc, char **argv);
int ctl_gen(struct ctl *c, int argc, char **argv);
int ctl_status(struct ctl *c, int argc, char **argv);
int ctl_ps(struct ctl *c, int argc, char **argv);
int ctl_load(struct ctl *c, int argc, char **argv);
int ctl_unload(struct ctl *c, int argc, char **argv);
int ctl_pin(struct ctl *c, int argc, char **argv);
int ctl_state(struct ctl *c, int argc, char **argv);
int ctl_tensor_data(struct ctl *c, int argc, char **argv);
/* `weightctl cat`: the deprecated name of tensor-data (ctl_tensor_data.c). */
int ctl_cat(struct ctl *c, int argc, char **argv);
int ctl_stats(struct ctl *c, int argc, char **argv);
/* The live view (ctl_top.c, its rendering in ctl_top_render.c). */
int ctl_top(struct ctl *c, int argc, char **argv);
/* Load benchmark (ctl_bench.c) and its recorded runs (ctl_history.c). */
int ctl_bench(struct ctl *c, int argc, char **argv);
int ctl_history(struct ctl *c, int argc, char **argv);

#endif
