/*
 * The persistent catalog: what discovery found, kept in SQLite at STATE_DIR/catalog.db.
 *
 * The database runs in WAL mode (synchronous=NORMAL, foreign keys on, a busy timeout so
 * that a second weightctl waits instead of failing) and its schema is versioned with
 * PRAGMA user_version. Tables:
 *   roots            the directories ever scanned
 *   files            every file that makes up a model (safetensors and layout JSON) with
 *                    its fingerprint (dev, ino, size, mtime_ns, content hash), validity
 *                    and error, tensor count and data bytes
 *   tensors          per file: name, dtype, shape text, data_begin, data_end, so that a
 *                    model can be described tensor by tensor without reading the files
 *   models           name (unique), path, root, format, arch, valid, error, totals
 *   components       per model: name, arch, tensors, params, bytes, bytes per dtype
 *   component_files  which files make a component, in order
 *   model_meta       user metadata (tags, notes) keyed by model NAME, so that it outlives
 *                    rescans, restarts and even a model that disappears for a while
 *   co_access        components requested together (v2); each count as of at_ns, the
 *                    wall-clock time it was last updated, so that it can fade (v4)
 *   load_history     completed host loads by "model/component": when, bytes, duration; the
 *                    last few per key, for the slow-load alert (core/daemon/alert.h) (v3)
 *   bench_runs       `weightctl bench` results: model, when, the figures as JSON (v3)
 *
 * One scan's results are applied by catalog_apply() in a single BEGIN IMMEDIATE ...
 * COMMIT, so a process killed mid-scan leaves the previous catalog intact.
 *
 * Every function returns 0 or a negative errno; SQLite failures are logged once with
 * sqlite3_errmsg() and mapped: busy/locked -EBUSY, out of memory -ENOMEM, read-only
 * -EROFS, disk full -ENOSPC, corrupt or not a database -EBADMSG, a newer schema
 * -EPROTONOSUPPORT, I/O and everything else the system errno or -EIO. A catalog handle
 * is used by one thread at a time.
 *
 * Models are named on the command line by name or by path (PATH_OR_MODEL): a model's
 * name, its path (file, index JSON or directory, relative paths resolved), or the path of
 * any of its files. catalog_resolve() implements that rule for every call taking @model.
 */
#ifndef WD_CORE_CATALOG_H
#define WD_CORE_CATALOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/format/model.h"
#include "core/format/st.h"

#define CATALOG_SCHEMA_VERSION 5
#define CATALOG_FILE "catalog.db"

/* User metadata conventions: a tag is the key "tag:NAME" with an empty value. */
#define CATALOG_TAG_PREFIX "tag:"
#define CATALOG_NOTE_KEY "note"

struct catalog;

/*
 * Opens (creating when needed) @state_dir/catalog.db; @state_dir is created (0700) if it
 * does not exist. Creates or checks the schema. Returns 0 with *@out set, -ENOMEM, the
 * errno of mkdir, -EPROTONOSUPPORT when the file has a newer schema version, or a mapped
 * SQLite error (-EBADMSG for a file that is not a database).
 */
int catalog_open(const char *state_dir, struct catalog **out);

/*
 * Runs SQLite's `PRAGMA quick_check` (every page and b-tree of the file, without the index
 * cross-checks of integrity_check, so O(size) and quick enough for every daemon start).
 * Returns 0 when the file is sound; -EBADMSG when it is not, with SQLite's first complaint
 * in @why (@why_size bytes; may be 0); or another mapped SQLite error.
 */
int catalog_quick_check(struct catalog *cat, char *why, size_t why_size);

/*
 * Moves @state_dir/catalog.db, with its WAL and shared-memory files, aside to
 * catalog.db.corrupt-YYYYMMDDTHHMMSSZ in the same directory (kept for the operator) and writes
 * the new path into @aside. Close every handle first. Returns 0 or the errno of rename(2).
 */
int catalog_move_aside(const char *state_dir, char *aside, size_t aside_size);

/*
 * catalog_open() for the daemon: a file that is not a database (-EBADMSG from the open) or,
 * with @check, fails catalog_quick_check() is moved aside (catalog_move_aside()) and replaced
 * with an empty catalog, which the caller must fill again by scanning. Then @aside holds the
 * moved file's path and @why the complaint; both are empty when the catalog was sound.
 * Returns catalog_open()'s values, or the errno of rename(2).
 */
int catalog_open_repair(const char *state_dir, bool check, struct catalog **out, char *aside,
			size_t aside_size, char *why, size_t why_size);

/* Closes the handle; NULL is allowed. */
void catalog_close(struct catalog *cat);

/* The database file's path. */
const char *catalog_db_path(const struct catalog *cat);

/* ---- reading ---- */

struct catalog_file {
	int64_t id;
	char *path;
	int kind;		/* enum model_file_kind */
	struct model_fp fp;
	uint64_t content_hash;
	uint64_t header_len;	/* N; the data starts at 8 + N */
	bool valid;
	int error_code;		/* enum st_code; 0 when valid */
	char *error_message;	/* NULL when valid; names the file, rule, tensor, offset */
	uint64_t error_offset;	/* byte offset of the rejection; UINT64_MAX when none */
	char *error_tensor;	/* the tensor it concerns; NULL when none */
	uint64_t n_tensors;
	uint64_t data_bytes;
	uint64_t params;
	int64_t scanned_at_ns;	/* wall clock */
};

struct catalog_component {
	int64_t id;
	char *name;		/* "" for single-file and sharded models */
	char *arch;
	char *index_path;	/* the index JSON of a sharded component; NULL otherwise */
	bool valid;
	char *error;		/* one line per problem; NULL when valid */
	uint64_t n_tensors;
	uint64_t params;
	uint64_t bytes;
	uint64_t dtype_bytes[ST_DTYPE_COUNT];
	size_t n_files;		/* filled by catalog_get_model() only */
	struct catalog_file *files;
};

struct catalog_model {
	int64_t id;
	char *name;
	char *path;
	char *root;		/* the scan root it was found under */
	int format;		/* enum model_format */
	char *arch;
	bool valid;
	char *error;		/* one line per problem, "component: reason"; NULL if valid */
	uint64_t n_tensors;
	uint64_t params;
	uint64_t bytes;
	int64_t scanned_at_ns;
	size_t n_meta;		/* __metadata__ merged over the files */
	struct st_kv *meta;
	size_t n_user;		/* model_meta rows, sorted by key */
	struct st_kv *user;
	size_t n_components;
	struct catalog_component *components;
};

struct catalog_model_list {
	size_t n;
	struct catalog_model *models; /* sorted by name */
};

/*
 * How many models, components and tensors the catalog holds (three aggregate queries, no
 * rows read out: what the daemon sizes its registry with). Returns 0 or a mapped SQLite error.
 */
int catalog_counts(struct catalog *cat, uint64_t *models, uint64_t *components,
		   uint64_t *tensors);

/*
 * Lists every model with its components (without their files) and user metadata.
 * Returns 0, -ENOMEM or a mapped SQLite error; @out is empty on error.
 */
int catalog_list_models(struct catalog *cat, struct catalog_model_list *out);
void catalog_model_list_free(struct catalog_model_list *list);

/*
 * Loads the model @model names (see catalog_resolve()) with its components, their files
 * and its user metadata. Returns 0, -ENOENT when no model matches, -ENOMEM, or a mapped
 * SQLite error.
 */
int catalog_get_model(struct catalog *cat, const char *model, struct catalog_model *out);
void catalog_model_free(struct catalog_model *m);

/*
 * Finds the model named by @model: an exact name, else an exact model path, else the
 * model whose path or member file is realpath(@model) (or @model made absolute).
 * Writes its id and (when @name is not NULL) its name into @name (@size bytes).
 * Returns 0, -ENOENT, -ENAMETOOLONG, or a mapped SQLite error.
 */
int catalog_resolve(struct catalog *cat, const char *model, int64_t *id, char *name,
		    size_t size);

struct catalog_tensor {
	const char *component;	/* component name */
	const char *file;	/* file path */
	uint64_t data_start;	/* 8 + N of that file: the tensor is at data_start + begin */
	const char *name;
	int dtype;		/* enum st_dtype; -1 if the stored name is unknown */
	const char *dtype_name;
	uint32_t rank;
	uint64_t shape[ST_MAX_RANK];
	const char *shape_text;	/* "[a, b]" */
	uint64_t begin;
	uint64_t end;
};

/*
 * Calls @cb for each tensor of model @model_id, component by component, file by file, in
 * file order. The pointers are valid during the call only. A non-zero return of @cb stops
 * the walk and is returned. Returns 0, that value, -ENOMEM or a mapped SQLite error.
 */
int catalog_model_tensors(struct catalog *cat, int64_t model_id,
			  int (*cb)(const struct catalog_tensor *t, void *arg), void *arg);

/*
 * Calls @cb for every scan root (path, last scan time in wall-clock ns), in path order.
 * Returns 0, @cb's non-zero value, or a mapped SQLite error.
 */
int catalog_roots(struct catalog *cat, int (*cb)(const char *path, int64_t scanned_at_ns,
						 void *arg),
		  void *arg);

/* ---- user metadata (keyed by model name; @model as in catalog_resolve()) ---- */

/*
 * Reads key @key of @model into *@value (malloc'd; the caller frees). Returns 0, -ENOENT
 * when the model or the key does not exist, -ENOMEM, or a mapped SQLite error.
 */
int catalog_meta_get(struct catalog *cat, const char *model, const char *key, char **value);
/* Sets @key to @value (replacing). Returns 0, -ENOENT (no such model), -EINVAL (empty
 * key), -EILSEQ (key or value not valid UTF-8), or a mapped SQLite error. */
int catalog_meta_set(struct catalog *cat, const char *model, const char *key, const char *value);
/* True when @s (NUL-terminated) is valid UTF-8, as metadata keys and values must be. */
bool catalog_meta_text_ok(const char *s);
/* Removes @key. Returns 0, -ENOENT when the model or the key does not exist, or a mapped
 * SQLite error. */
int catalog_meta_unset(struct catalog *cat, const char *model, const char *key);
/* Calls @cb(key, value) for each key of @model in key order. Returns 0, -ENOENT, @cb's
 * non-zero value, or a mapped SQLite error. */
int catalog_meta_list(struct catalog *cat, const char *model,
		      int (*cb)(const char *key, const char *value, void *arg), void *arg);

/* Tags and the note are metadata keys (CATALOG_TAG_PREFIX, CATALOG_NOTE_KEY). Tag names
 * must be non-empty without whitespace (-EINVAL). Errors as the calls above. */
int catalog_tag_add(struct catalog *cat, const char *model, const char *tag);
int catalog_tag_remove(struct catalog *cat, const char *model, const char *tag);
int catalog_note_set(struct catalog *cat, const char *model, const char *note);

/* ---- the scanner's interface ---- */

/* A stored file as the scanner needs it to decide what changed. */
struct catalog_fp_row {
	int64_t id;
	char *path;
	int kind;		/* enum model_file_kind */
	struct model_fp fp;
	bool valid;
	/* For a valid layout JSON: its derived list, one name per line (an index's shard
	 * names, or model_index.json's component folders), so that an unchanged layout is
	 * understood without reading it again. NULL otherwise. */
	char *json_info;
};

struct catalog_model_row {
	int64_t id;
	char *path;
	char *name;
	bool valid;
	uint64_t sig;		/* the scanner's signature of the model's files and layout */
};

/* Everything the catalog holds under one scan root. */
struct catalog_scope {
	bool root_known;	/* the root has a row in roots */
	size_t n_files;
	struct catalog_fp_row *files;
	size_t n_models;
	struct catalog_model_row *models;
};

/*
 * Loads, in one read transaction and two indexed range queries, the files and models
 * whose path is @root or lies under @root/ . Returns 0, -ENOMEM or a mapped SQLite error.
 */
int catalog_scope_load(struct catalog *cat, const char *root, struct catalog_scope *out);
void catalog_scope_free(struct catalog_scope *s);

struct catalog_put_model {
	struct model *m;	/* finished; m->name may be changed to the name it got */
	int64_t id;		/* the row the scan's snapshot had (0: none); the row is found
				 * again by path inside the transaction, so a model another
				 * scan added meanwhile is updated, keeping its name */
	uint64_t sig;
	const char *root;
};

/*
 * One scan's changes. Files to put are loaded model files (rc 0 or -EINVAL) whose db_id
 * is the row to update or 0 to insert; their db_id is set. Models to put reference their
 * files through db_id (files without one, such as unreadable shards, are left out).
 */
struct catalog_changes {
	const char *const *roots;	/* scanned roots: inserted if new, scanned_at updated */
	size_t n_roots;
	const int64_t *del_models;
	size_t n_del_models;
	const int64_t *del_files;
	size_t n_del_files;
	struct model_file *const *put_files;
	size_t n_put_files;
	struct catalog_put_model *put_models;
	size_t n_put_models;
};

/*
 * Applies @ch in one transaction (BEGIN IMMEDIATE ... COMMIT): deletes, then file rows
 * (with their tensors), then models with their components. A new model gets its default
 * name, or NAME-XXXXXXXX (a hash of its path) when another model has it. On any failure
 * the transaction is rolled back and nothing changes. Returns 0, -ENOMEM, or a mapped
 * SQLite error (-EBUSY when another writer held the lock past the busy timeout).
 */
int catalog_apply(struct catalog *cat, const struct catalog_changes *ch);

/* ---- co-access statistics (components requested together, keyed "model/component") ---- */

/*
 * Co-access counts fade: a pair's count halves every EVICT_COACCESS_HALF_LIFE_NS of wall-
 * clock time (core/policy/evict.h: the daemon's counts in memory fade alike), so that prefetch
 * follows how the models are used now rather than how they were used months ago. The decay
 * is applied when a pair is updated and when the counts are read; times are wall-clock
 * nanoseconds (wd_wall_ns()), since they outlive the process.
 */

/*
 * Adds @n to the count of the unordered pair (@a, @b) as of @now_ns, after decaying the
 * count it had, creating the pair. Returns 0, -EINVAL (an empty key, @a equal to @b, @n
 * zero or above INT64_MAX, or @now_ns above INT64_MAX), or a mapped SQLite error.
 */
int catalog_coaccess_add(struct catalog *cat, const char *a, const char *b, uint64_t n,
			 uint64_t now_ns);

/*
 * Calls @cb for every pair (a < b by strcmp) with its count decayed to @now_ns and rounded,
 * most frequent first, skipping pairs that faded below one; stops at and returns the first
 * nonzero value @cb returns. Returns 0, -ENOMEM, or a mapped SQLite error.
 */
int catalog_coaccess_load(struct catalog *cat, uint64_t now_ns,
			  int (*cb)(const char *a, const char *b, uint64_t count, void *arg),
			  void *arg);

/* ---- load history and bench runs (schema version 3) --------------------------------------- */

/*
 * Records a completed load of @key ("model/component"): @bytes in @ns nanoseconds, finished
 * at @at_ns (CLOCK_REALTIME), then drops all but the key's last @keep loads. Returns 0,
 * -EINVAL (empty key, zero @ns or @keep, a value above INT64_MAX), or a mapped SQLite error.
 */
int catalog_load_add(struct catalog *cat, const char *key, uint64_t at_ns, uint64_t bytes,
		     uint64_t ns, unsigned int keep);

/*
 * The rates (bytes per second) of the last @n loads of @key, newest first, into @rates;
 * *@n_out receives how many there were. Returns 0 or a mapped SQLite error.
 */
int catalog_load_rates(struct catalog *cat, const char *key, unsigned int n, double *rates,
		       unsigned int *n_out);

/*
 * Stores one `weightctl bench` run of @model at @at_ns with its @figures (a JSON text).
 * Returns 0, -EINVAL, or a mapped SQLite error.
 */
int catalog_bench_add(struct catalog *cat, const char *model, uint64_t at_ns,
		      const char *figures);

/*
 * Calls @cb for every bench run of @model (every model when NULL), oldest first, stopping at
 * and returning the first nonzero value it returns. Returns 0 or a mapped SQLite error.
 */
int catalog_bench_list(struct catalog *cat, const char *model,
		       int (*cb)(int64_t id, const char *model, uint64_t at_ns,
				 const char *figures, void *arg),
		       void *arg);

#endif
